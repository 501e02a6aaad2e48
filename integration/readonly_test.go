package integration

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// TestReadOnly checks that every kind of modification fails with EROFS,
// that nothing changed afterwards, and that the mount is flagged ro.
func TestReadOnly(t *testing.T) {
	d := env.dataset(t)
	m := mountData(t, "")
	mp := m.Mountpoint
	const fileKey = "misc/hello.txt"
	file := filepath.Join(mp, "misc", "hello.txt")
	dir := filepath.Join(mp, "misc")
	emptyDir := filepath.Join(mp, "misc", "emptydir")
	newPath := filepath.Join(dir, "new-entry")

	past := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	cases := []struct {
		name string
		op   func() error
	}{
		{"create", openOp(newPath, os.O_CREATE|os.O_WRONLY|os.O_EXCL)},
		{"create in root", openOp(filepath.Join(mp, "new-entry"), os.O_CREATE|os.O_WRONLY)},
		{"open O_WRONLY", openOp(file, os.O_WRONLY)},
		{"open O_RDWR", openOp(file, os.O_RDWR)},
		{"open O_WRONLY|O_APPEND", openOp(file, os.O_WRONLY|os.O_APPEND)},
		{"open O_WRONLY|O_TRUNC", openOp(file, os.O_WRONLY|os.O_TRUNC)},
		{"truncate", func() error { return syscall.Truncate(file, 0) }},
		{"unlink", func() error { return syscall.Unlink(file) }},
		{"mkdir", func() error { return syscall.Mkdir(newPath, 0o755) }},
		{"rmdir empty", func() error { return syscall.Rmdir(emptyDir) }},
		{"rmdir non-empty", func() error { return syscall.Rmdir(dir) }},
		{"rename", func() error { return syscall.Rename(file, newPath) }},
		{"rename directory", func() error { return syscall.Rename(emptyDir, newPath) }},
		{"chmod", func() error { return syscall.Chmod(file, 0o644) }},
		{"chown", func() error { return syscall.Chown(file, 1000, 1000) }},
		{"utimes", func() error { return os.Chtimes(file, past, past) }},
		{"symlink", func() error { return syscall.Symlink("hello.txt", newPath) }},
		{"link", func() error { return syscall.Link(file, newPath) }},
		{"setxattr", func() error { return syscall.Setxattr(file, "user.bgbfs", []byte("x"), 0) }},
		{"removexattr", func() error { return syscall.Removexattr(file, "user.bgbfs") }},
		{"mknod fifo", func() error { return syscall.Mknod(newPath, syscall.S_IFIFO|0o644, 0) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.op()
			if !errors.Is(err, syscall.EROFS) {
				t.Errorf("got %v, want EROFS", errnoOf(err))
			}
		})
	}

	// Nothing changed.
	if _, err := os.Lstat(newPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: lstat gave %v, want it not to exist", newPath, err)
	}
	if sum, _, err := hashFile(file); err != nil || sum != d.Objects[fileKey].SHA256() {
		t.Errorf("%s changed or became unreadable: %v", file, err)
	}
	if fi, err := os.Stat(emptyDir); err != nil || !fi.IsDir() {
		t.Errorf("%s: %v", emptyDir, err)
	}

	info, ok := testbed.MountedAt(mp)
	if !ok {
		t.Fatalf("%s is not in /proc/self/mountinfo", mp)
	}
	if !info.ReadOnly() {
		t.Errorf("mountinfo options of %s are %v, want ro", mp, info.Options)
	}
}
