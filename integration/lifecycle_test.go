package integration

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// lifecycleFile is read to prove a mount of npzPrefix works.
const lifecycleFile = "train/manifest.json"

func checkServes(t testing.TB, d *dataset, mp string) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(mp, filepath.FromSlash(lifecycleFile)))
	if err != nil {
		t.Fatalf("reading %s through the mount: %v", lifecycleFile, errnoOf(err))
	}
	if !bytes.Equal(got, d.Objects[npzPrefix+lifecycleFile].Data) {
		t.Fatalf("%s through the mount differs from the source", lifecycleFile)
	}
}

// TestLifecycleSignals checks SIGTERM and SIGINT each unmount and exit 0.
func TestLifecycleSignals(t *testing.T) {
	d := env.dataset(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			m := mountData(t, npzPrefix)
			checkServes(t, d, m.Mountpoint)
			if err := m.Signal(sig); err != nil {
				t.Fatal(err)
			}
			code, exited := m.WaitExit(testbed.UnmountTimeout)
			if !exited {
				t.Fatalf("bgbfs still running %v after %v", testbed.UnmountTimeout, sig)
			}
			if code != 0 {
				t.Errorf("bgbfs exited with status %d after %v, want 0", code, sig)
			}
			requireNotMounted(t, m.Mountpoint)
			if names, err := os.ReadDir(m.Mountpoint); err != nil || len(names) != 0 {
				t.Errorf("the mountpoint should be an empty directory again: %d entries, %v", len(names), err)
			}
		})
	}
}

// TestLifecycleKill9 kills the daemon with SIGKILL: the mountpoint is then
// dead (ENOTCONN) until `bgbfs unmount` clears it, after which a new mount
// on it works.
//
// The kernel answers stat from attributes it cached while the daemon was
// alive, so the mount uses a 1 s metadata TTL (which bounds the kernel's
// attribute and entry timeouts too) and the checks wait past it.
func TestLifecycleKill9(t *testing.T) {
	d := env.dataset(t)
	const ttl = time.Second
	m := mountData(t, npzPrefix, "--metadata-ttl", ttl.String())
	mp := m.Mountpoint
	checkServes(t, d, mp)

	m.Kill()
	time.Sleep(ttl + ttl/2)
	checks := []struct {
		name string
		op   func() error
	}{
		{"stat mountpoint", func() error { _, err := os.Stat(mp); return err }},
		{"stat file", func() error { _, err := os.Stat(filepath.Join(mp, filepath.FromSlash(lifecycleFile))); return err }},
		{"readdir mountpoint", func() error { _, err := os.ReadDir(mp); return err }},
		{"statfs", func() error { var st syscall.Statfs_t; return syscall.Statfs(mp, &st) }},
	}
	for _, c := range checks {
		if err := c.op(); !errors.Is(err, syscall.ENOTCONN) {
			t.Errorf("%s after kill -9: %v, want ENOTCONN", c.name, errnoOf(err))
		}
	}
	if _, ok := testbed.MountedAt(mp); !ok {
		t.Fatalf("the dead mount should still be in mountinfo after kill -9")
	}

	res := testbed.Run(env.bgbfs, []string{"unmount", mp}, testbed.CleanEnv(nil), 15*time.Second)
	if res.ExitCode != 0 {
		t.Errorf("bgbfs unmount %s: exit %d, stderr %q", mp, res.ExitCode, res.Stderr)
	}
	requireNotMounted(t, mp)
	if fi, err := os.Stat(mp); err != nil || !fi.IsDir() {
		t.Fatalf("after bgbfs unmount the mountpoint is not a usable directory: %v", errnoOf(err))
	}

	srv := env.server(t)
	m2 := mount(t, mountSpec{
		Source:     "s3://" + d.Bucket + "/" + npzPrefix,
		Endpoint:   srv.Endpoint,
		Creds:      rootCreds(srv),
		Mountpoint: mp,
	})
	checkServes(t, d, m2.Mountpoint)
}
