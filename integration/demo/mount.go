package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/bgbfs/bgbfs/cmd/bgbfs/mountinfo"
	"github.com/bgbfs/bgbfs/integration/testbed"
)

// bgbfsProc is a running `bgbfs mount` subprocess.
type bgbfsProc struct {
	proc *testbed.Process
	dir  string // mountpoint, symlinks resolved, as mountinfo shows it
}

// startBgbfs runs `bgbfs mount` against the in-process endpoint. It is not
// tied to a context on purpose: killing bgbfs would leave a dead mount
// behind, so it is only ever stopped by stop, which unmounts.
func startBgbfs(bin, endpointURL, dir string) (*bgbfsProc, error) {
	cmd := exec.Command(bin, "mount",
		"--endpoint-url", endpointURL,
		"--force-path-style",
		"--npz-members",
		"s3://"+bucket+"/"+prefix,
		dir)
	// A developer's AWS_PROFILE, AWS_CA_BUNDLE or region must not leak
	// into a mount of a loopback endpoint, nor may ~/.aws files.
	cmd.Env = append(testbed.CleanEnv(&testbed.Creds{AccessKey: "bgbfs-demo", SecretKey: "bgbfs-demo-secret"}), "AWS_REGION=us-east-1")
	cmd.Stdout = os.Stderr // bgbfs output is diagnostics, not the demo's story
	cmd.Stderr = os.Stderr
	// In its own process group, a terminal's Ctrl-C does not interrupt
	// bgbfs behind our back: we choose when to unmount. If the demo itself
	// is killed, bgbfs still gets SIGTERM and a chance to unmount.
	proc, err := testbed.StartProcess(cmd, syscall.SIGTERM)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	return &bgbfsProc{proc: proc, dir: dir}, nil
}

// waitMounted polls /proc/self/mountinfo until the mount shows up with
// fstype fuse.bgbfs, bgbfs exits, ctx ends or the timeout passes.
func (p *bgbfsProc) waitMounted(ctx context.Context, timeout time.Duration) error {
	deadline := time.After(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	seen := ""
	for {
		fstype, err := mountFSType(p.dir)
		if err != nil {
			return err
		}
		if fstype == "fuse.bgbfs" {
			return nil
		}
		if fstype != "" {
			seen = fstype
		}
		select {
		case <-p.proc.Done():
			return fmt.Errorf("bgbfs exited before the mount appeared: %w", exitErr(p.proc.Err()))
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			if seen != "" {
				return fmt.Errorf("%s is mounted as %q, want fuse.bgbfs", p.dir, seen)
			}
			return fmt.Errorf("%s not mounted after %s", p.dir, timeout)
		case <-tick.C:
		}
	}
}

// stop asks bgbfs to unmount and exit with SIGTERM. If it does not exit in
// time, or exits leaving the mount behind, a lazy fusermount3 unmount
// detaches the mountpoint so the demo never strands a mount. It is safe to
// call whether or not bgbfs is still running.
func (p *bgbfsProc) stop() error {
	var errs []error
	if !p.proc.Exited() {
		// Whoever noticed an exit has reported it; only the mount is left.
		if err := p.proc.Signal(syscall.SIGTERM); err != nil {
			errs = append(errs, fmt.Errorf("signal bgbfs: %w", err))
		}
		if p.proc.Wait(10 * time.Second) {
			if err := p.proc.Err(); err != nil {
				errs = append(errs, fmt.Errorf("bgbfs on SIGTERM: %w", exitErr(err)))
			}
		} else {
			errs = append(errs, errors.New("bgbfs did not exit within 10s of SIGTERM"))
			// Detaching the mount makes a healthy FUSE server see the
			// session end and return; a wedged one is killed below.
			errs = append(errs, lazyUnmount(p.dir))
			if !p.proc.Wait(5 * time.Second) {
				p.proc.Kill()
			}
		}
	}
	if fstype, err := mountFSType(p.dir); err != nil {
		errs = append(errs, err)
	} else if fstype != "" {
		errs = append(errs, fmt.Errorf("bgbfs exited but %s is still mounted", p.dir), lazyUnmount(p.dir))
	}
	return errors.Join(errs...)
}

func lazyUnmount(dir string) error {
	out, err := exec.Command("fusermount3", "-u", "-z", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("fusermount3 -u -z %s: %w: %s", dir, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// exitErr turns a nil Wait result (bgbfs exited 0) into an error too: for
// a foreground mount command, exiting at all is unexpected.
func exitErr(err error) error {
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}

// mountFSType returns the fstype of the topmost mount at dir according to
// /proc/self/mountinfo, or "" if dir is not a mountpoint.
func mountFSType(dir string) (string, error) {
	m, _, err := mountinfo.Top(dir)
	return m.FSType, err
}
