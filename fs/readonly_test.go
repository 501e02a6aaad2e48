package fs

import (
	"context"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// The kernel mount is "ro", so these calls never reach the tree through a
// real mount; the tree must refuse them on its own all the same.
func TestMutationsAreRefused(t *testing.T) {
	ctx := context.Background()
	tr := &tree{}
	d := tr.newDirNode("")
	f := &fileNode{tree: tr}
	var eo fuse.EntryOut
	var ao fuse.AttrOut
	calls := []struct {
		name string
		call func() syscall.Errno
	}{
		{"dir setattr", func() syscall.Errno { return d.Setattr(ctx, nil, &fuse.SetAttrIn{}, &ao) }},
		{"create", func() syscall.Errno { _, _, _, e := d.Create(ctx, "x", 0, 0o644, &eo); return e }},
		{"mkdir", func() syscall.Errno { _, e := d.Mkdir(ctx, "x", 0o755, &eo); return e }},
		{"mknod", func() syscall.Errno { _, e := d.Mknod(ctx, "x", 0o644, 0, &eo); return e }},
		{"unlink", func() syscall.Errno { return d.Unlink(ctx, "x") }},
		{"rmdir", func() syscall.Errno { return d.Rmdir(ctx, "x") }},
		{"rename", func() syscall.Errno { return d.Rename(ctx, "x", d, "y", 0) }},
		{"symlink", func() syscall.Errno { _, e := d.Symlink(ctx, "t", "x", &eo); return e }},
		{"link", func() syscall.Errno { _, e := d.Link(ctx, f, "x", &eo); return e }},
		{"dir setxattr", func() syscall.Errno { return d.Setxattr(ctx, "user.a", []byte("v"), 0) }},
		{"dir removexattr", func() syscall.Errno { return d.Removexattr(ctx, "user.a") }},
		{"file setattr", func() syscall.Errno { return f.Setattr(ctx, nil, &fuse.SetAttrIn{}, &ao) }},
		{"file setxattr", func() syscall.Errno { return f.Setxattr(ctx, "user.a", []byte("v"), 0) }},
		{"file removexattr", func() syscall.Errno { return f.Removexattr(ctx, "user.a") }},
		{"fallocate", func() syscall.Errno { return f.Allocate(ctx, nil, 0, 10, 0) }},
		{"copy_file_range", func() syscall.Errno { _, e := f.CopyFileRange(ctx, nil, 0, nil, nil, 0, 10, 0); return e }},
		{"open for writing", func() syscall.Errno { _, _, e := f.Open(ctx, syscall.O_WRONLY); return e }},
		{"open read-write", func() syscall.Errno { _, _, e := f.Open(ctx, syscall.O_RDWR); return e }},
		{"open with truncate", func() syscall.Errno { _, _, e := f.Open(ctx, syscall.O_RDONLY|syscall.O_TRUNC); return e }},
	}
	for _, c := range calls {
		if got := c.call(); got != syscall.EROFS {
			t.Errorf("%s = %v, want EROFS", c.name, got)
		}
	}
}
