package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

func runUnmount(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlagSet("unmount", "bgbfs unmount [flags] MOUNTPOINT", stdout)
	lazy := fs.BoolP("lazy", "z", false, "detach now even if files are open; the kernel drops the mount when they close")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{fmt.Sprintf("unmount takes 1 argument, MOUNTPOINT; got %d", fs.NArg())}
	}
	mp, err := filepath.Abs(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("mountpoint %s: %w", fs.Arg(0), err)
	}
	// A dead mount cannot be stat'ed, so resolve symlinks only on the parent.
	if dir, err := filepath.EvalSymlinks(filepath.Dir(mp)); err == nil {
		mp = filepath.Join(dir, filepath.Base(mp))
	}
	m, err := findMount(mp)
	if err != nil {
		return err
	}
	if m == nil {
		return fmt.Errorf("%s is not mounted", fs.Arg(0))
	}
	if !m.FUSE() {
		return fmt.Errorf("%s is a %s mount, not bgbfs", fs.Arg(0), m.FSType)
	}
	if *lazy {
		return detach(mp)
	}
	return unmount(ctx, mp)
}

// unmount unmounts a FUSE mountpoint, live or with a dead daemon. It uses
// fusermount3 (setuid, so it works for the user who mounted) and, as root,
// falls back to umount(2).
func unmount(ctx context.Context, mp string) error {
	out, err := exec.CommandContext(ctx, "fusermount3", "-u", mp).CombinedOutput()
	if err == nil {
		return nil
	}
	if os.Geteuid() == 0 {
		if uerr := syscall.Unmount(mp, 0); uerr == nil {
			return nil
		} else if errors.Is(uerr, syscall.EBUSY) {
			return fmt.Errorf("unmount %s: files are open (close them, or use --lazy)", mp)
		}
	}
	return fmt.Errorf("unmount %s: %s", mp, strings.TrimSpace(string(out)))
}

// detach unmounts lazily: the mountpoint is free at once and the kernel
// ends the filesystem when its last open file closes.
func detach(mp string) error {
	if os.Geteuid() == 0 {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err == nil {
			return nil
		}
	}
	out, err := exec.Command("fusermount3", "-u", "-z", mp).CombinedOutput()
	if err != nil {
		return fmt.Errorf("detach %s: %s", mp, strings.TrimSpace(string(out)))
	}
	return nil
}
