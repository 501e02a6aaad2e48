package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// mounted is a FUSE filesystem under test: its mountpoint, the daemon's
// pid (for RSS) and how to stop it.
type mounted struct {
	mp   string
	pid  int
	stop func()
}

// mountSystem mounts the dataset's prefix with system ("bgbfs", "s3fs",
// "rclone") against endpoint, fresh: a new daemon with nothing cached.
func (b *bench) mountSystem(ctx context.Context, system, endpoint string, extra ...string) (*mounted, error) {
	mp, err := os.MkdirTemp(b.work, "mnt-"+system+"-")
	if err != nil {
		return nil, err
	}
	creds := &testbed.Creds{AccessKey: b.srv.AccessKey, SecretKey: b.srv.SecretKey}
	switch system {
	case "bgbfs":
		m, err := testbed.Mount(testbed.MountOptions{
			Bin: b.bin, Source: "s3://" + b.ds.bucket + "/" + b.ds.prefix, Mountpoint: mp,
			Endpoint: endpoint, Creds: creds, Args: extra,
		})
		if err != nil {
			return nil, err
		}
		return &mounted{mp: m.Mountpoint, pid: m.Pid(), stop: func() { _ = m.Unmount(); os.Remove(mp) }}, nil
	case "s3fs":
		pw := filepath.Join(b.work, "s3fs-passwd")
		if err := os.WriteFile(pw, []byte(creds.AccessKey+":"+creds.SecretKey+"\n"), 0o600); err != nil {
			return nil, err
		}
		cmd := exec.Command("s3fs", b.ds.bucket+":/"+strings.TrimSuffix(b.ds.prefix, "/"), mp, "-f",
			"-o", "url="+endpoint+",use_path_request_style,passwd_file="+pw+",ro,endpoint=us-east-1")
		return startDaemon(cmd, mp, testbed.CleanEnv(nil))
	case "rclone":
		cmd := exec.Command("rclone", "mount", ":s3:"+b.ds.bucket+"/"+strings.TrimSuffix(b.ds.prefix, "/"), mp,
			"--read-only", "--s3-provider", "Minio", "--s3-endpoint", endpoint, "--s3-region", "us-east-1",
			"--s3-access-key-id", creds.AccessKey, "--s3-secret-access-key", creds.SecretKey, "--s3-force-path-style")
		return startDaemon(cmd, mp, testbed.CleanEnv(nil))
	}
	return nil, fmt.Errorf("unknown system %q", system)
}

// startDaemon runs a peer's FUSE daemon in the foreground of its own
// process and waits for its mount.
func startDaemon(cmd *exec.Cmd, mp string, env []string) (*mounted, error) {
	cmd.Env = env // CleanEnv drops AWS_CA_BUNDLE, which Debian's rclone cannot use
	log, err := os.CreateTemp("", "peer-*.log")
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = log, log
	proc, err := testbed.StartProcess(cmd, syscall.SIGTERM)
	if err != nil {
		log.Close()
		return nil, fmt.Errorf("%s: %w", cmd.Path, err)
	}
	stop := func() {
		_ = exec.Command("fusermount3", "-u", "-z", mp).Run()
		_ = proc.Signal(syscall.SIGTERM)
		if !proc.Wait(10 * time.Second) {
			proc.Kill()
		}
		log.Close()
		os.Remove(log.Name())
		os.Remove(mp)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, ok := testbed.MountedAt(mp); ok {
			return &mounted{mp: mp, pid: proc.Pid(), stop: stop}, nil
		}
		select {
		case <-proc.Done():
			out, _ := os.ReadFile(log.Name())
			stop()
			return nil, fmt.Errorf("%s exited before mounting: %s", filepath.Base(cmd.Path), strings.TrimSpace(string(out)))
		case <-time.After(50 * time.Millisecond):
		}
	}
	stop()
	return nil, fmt.Errorf("%s did not mount within 30s", filepath.Base(cmd.Path))
}

// dropCaches makes the next read of every file cold.
func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
}
