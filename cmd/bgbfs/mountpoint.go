package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/bgbfs/bgbfs/cmd/bgbfs/mountinfo"
)

// checkMountpoint resolves the mountpoint and refuses one that cannot take
// a new mount, before anything is mounted.
func checkMountpoint(mp string) (string, error) {
	abs, err := filepath.Abs(mp)
	if err != nil {
		return "", fmt.Errorf("mountpoint %s: %w", mp, err)
	}
	st, err := os.Stat(abs)
	switch {
	case errors.Is(err, syscall.ENOTCONN):
		return "", deadMount(mp)
	case errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("mountpoint %s does not exist", mp)
	case err != nil:
		return "", fmt.Errorf("mountpoint %s: %w", mp, err)
	case !st.IsDir():
		return "", fmt.Errorf("mountpoint %s is not a directory", mp)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	stack, err := mountinfo.At(abs)
	if err != nil {
		return "", err
	}
	if err := refuseMountedOn(mp, stack, func() error {
		var sfs syscall.Statfs_t
		return syscall.Statfs(abs, &sfs)
	}); err != nil {
		return "", err
	}
	return abs, nil
}

// refuseMountedOn decides on the mounts already on the mountpoint, bottom
// first, and a probe of the top one. A bind mount or volume is fine: in a
// container the mountpoint usually is one, bgbfs mounts on top of it, and
// unmounting takes off only bgbfs's mount. A FUSE mount on top is refused:
// a live one would be hidden, still serving its open files; a dead one
// (its daemon gone, the probe failing with ENOTCONN) would stay under the
// new one, and needs unmounting first.
func refuseMountedOn(mp string, stack []mountinfo.Mount, probe func() error) error {
	if len(stack) == 0 {
		return nil
	}
	top := stack[len(stack)-1]
	if !top.FUSE() {
		return nil
	}
	if errors.Is(probe(), syscall.ENOTCONN) {
		return deadMount(mp)
	}
	return fmt.Errorf("mountpoint %s is already mounted by %s (%s); unmount it first", mp, top.FSType, top.Source)
}

func deadMount(mp string) error {
	return fmt.Errorf("mountpoint %s is a dead FUSE mount (its daemon exited); run: bgbfs unmount %s", mp, mp)
}

// findMount returns the mount on top of path, or nil.
func findMount(path string) (*mountinfo.Mount, error) {
	m, ok, err := mountinfo.Top(path)
	if err != nil || !ok {
		return nil, err
	}
	return &m, nil
}
