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
		return "", fmt.Errorf("mountpoint %s is a dead FUSE mount (its daemon exited); run: bgbfs unmount %s", mp, mp)
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
	m, err := findMount(abs)
	if err != nil {
		return "", err
	}
	if m != nil {
		var sfs syscall.Statfs_t
		if err := syscall.Statfs(abs, &sfs); errors.Is(err, syscall.ENOTCONN) {
			return "", fmt.Errorf("mountpoint %s is a dead FUSE mount (its daemon exited); run: bgbfs unmount %s", mp, mp)
		}
		return "", fmt.Errorf("mountpoint %s is already mounted (%s from %s)", mp, m.FSType, m.Source)
	}
	return abs, nil
}

// findMount returns the mount on top of path, or nil.
func findMount(path string) (*mountinfo.Mount, error) {
	m, ok, err := mountinfo.Top(path)
	if err != nil || !ok {
		return nil, err
	}
	return &m, nil
}
