package testbed

import (
	"fmt"
	"os/exec"
	"time"

	"github.com/bgbfs/bgbfs/cmd/bgbfs/mountinfo"
)

// MountedAt returns the top mount on mountpoint, if any.
func MountedAt(mountpoint string) (mountinfo.Mount, bool) {
	m, ok, err := mountinfo.Top(mountpoint)
	return m, ok && err == nil
}

// ForceUnmount detaches whatever is mounted on mountpoint (lazily, so a
// dead or busy FUSE mount goes too) until nothing is left there.
func ForceUnmount(mountpoint string) error {
	mp := mountinfo.Clean(mountpoint)
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
