package testbed

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/bgbfs/bgbfs/internal/mountinfo"
)

// MountInfo is one line of /proc/self/mountinfo.
type MountInfo = mountinfo.Mount

// Mounts parses /proc/self/mountinfo.
func Mounts() ([]MountInfo, error) { return mountinfo.Read() }

// MountsAt returns the mounts on mountpoint, bottom first (the last one is
// what path lookups see).
func MountsAt(mountpoint string) ([]MountInfo, error) {
	all, err := Mounts()
	if err != nil {
		return nil, err
	}
	mp := cleanMountpoint(mountpoint)
	var out []MountInfo
	for _, m := range all {
		if m.Mountpoint == mp {
			out = append(out, m)
		}
	}
	return out, nil
}

// MountedAt returns the top mount on mountpoint, if any.
func MountedAt(mountpoint string) (MountInfo, bool) {
	ms, err := MountsAt(mountpoint)
	if err != nil || len(ms) == 0 {
		return MountInfo{}, false
	}
	return ms[len(ms)-1], true
}

// cleanMountpoint makes mountpoint absolute and resolves symlinks in its
// parent (the kernel reports resolved paths; the mountpoint itself may be
// a dead FUSE mount that cannot be resolved).
func cleanMountpoint(mountpoint string) string {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return filepath.Clean(mountpoint)
	}
	if parent, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		return filepath.Join(parent, filepath.Base(abs))
	}
	return abs
}

// ForceUnmount detaches whatever is mounted on mountpoint (lazily, so a
// dead or busy FUSE mount goes too) until nothing is left there.
func ForceUnmount(mountpoint string) error {
	mp := cleanMountpoint(mountpoint)
	for range 8 {
		if _, ok := MountedAt(mp); !ok {
			return nil
		}
		out, err := exec.Command("fusermount3", "-u", "-z", mp).CombinedOutput()
		if err != nil {
			if out2, err2 := exec.Command("umount", "-l", mp).CombinedOutput(); err2 != nil {
				return fmt.Errorf("fusermount3 -u -z %s: %v: %s; umount -l: %v: %s", mp, err, out, err2, out2)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, ok := MountedAt(mp); ok {
		return fmt.Errorf("%s is still mounted after forced unmounts", mp)
	}
	return nil
}
