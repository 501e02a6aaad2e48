package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// setKernelReadAhead sets how far the kernel reads ahead on the mount.
// go-fuse can only lower the kernel's 128 KiB default; the mount's
// backing-device entry in sysfs can raise it (root only).
func setKernelReadAhead(mp string, bytes int64) error {
	var st syscall.Stat_t
	if err := syscall.Stat(mp, &st); err != nil {
		return fmt.Errorf("stat %s: %w", mp, err)
	}
	path := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(path, []byte(strconv.FormatInt(bytes>>10, 10)), 0); err != nil {
		return fmt.Errorf("set %s: %w", path, err)
	}
	return nil
}
