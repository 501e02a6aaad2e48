package integration

// A mountpoint that is itself a bind mount, as a container's volume is
// (docker -v, a Kubernetes emptyDir): bgbfs mounts over it, refuses only
// a FUSE mount already on top, and its unmount takes off its own mount
// and nothing under it.

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/cmd/bgbfs/mountinfo"
	"github.com/bgbfs/bgbfs/integration/testbed"
)

// volumeMarker is a file of the bound folder, seen at the mountpoint
// whenever bgbfs is not mounted over it.
const volumeMarker = "volume-marker"

// bindMountpoint makes a folder holding volumeMarker and binds it onto a
// fresh mountpoint, unbound at the end of the test (after the mounts the
// test makes on top, whose cleanups run first). It returns the mountpoint
// and the IDs of the mounts on it.
func bindMountpoint(t *testing.T) (string, []string) {
	t.Helper()
	vol := t.TempDir()
	if err := os.WriteFile(filepath.Join(vol, volumeMarker), []byte("volume\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mp := newMountpoint(t)
	if err := syscall.Mount(vol, mp, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind %s on %s: %v", vol, mp, err)
	}
	bound := mountIDs(t, mp)
	t.Cleanup(func() {
		for range mountIDs(t, mp) {
			_ = syscall.Unmount(mp, syscall.MNT_DETACH)
		}
	})
	if len(bound) != 1 {
		t.Fatalf("mounts on %s after the bind: %v, want 1", mp, bound)
	}
	return mp, bound
}

// mountIDs returns the IDs of the mounts on mp, bottom first.
func mountIDs(t testing.TB, mp string) []string {
	t.Helper()
	ms, err := mountinfo.At(mp)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.ID+" "+m.FSType)
	}
	return ids
}

// checkOnlyVolume checks that the mounts on mp are the bind alone again,
// showing the bound folder.
func checkOnlyVolume(t *testing.T, mp string, bound []string) {
	t.Helper()
	if now := mountIDs(t, mp); !slices.Equal(now, bound) {
		t.Errorf("mounts on %s: %v, want the bind alone: %v", mp, now, bound)
	}
	if b, err := os.ReadFile(filepath.Join(mp, volumeMarker)); err != nil || string(b) != "volume\n" {
		t.Errorf("the bound folder is not seen at %s again: %q, %v", mp, b, err)
	}
}

// mountOverBind starts `bgbfs mount` of the operations bucket on mp and
// checks it serves; a daemon still running at the end is stopped.
func mountOverBind(t *testing.T, d *opsData, mp string) *testbed.Mounted {
	t.Helper()
	srv := env.server(t)
	m, err := testbed.Mount(testbed.MountOptions{
		Bin:        env.bgbfs,
		Source:     d.Source(),
		Mountpoint: mp,
		Endpoint:   srv.Endpoint,
		Creds:      rootCreds(srv),
		LogPath:    filepath.Join(t.TempDir(), "bgbfs.stderr"),
	})
	if err != nil {
		t.Fatalf("mount over the bind mount on %s: %v", mp, err)
	}
	t.Cleanup(func() {
		if m.Alive() {
			if err := m.Unmount(); err != nil {
				t.Error(err)
			}
		}
		if t.Failed() {
			t.Logf("bgbfs stderr:\n%s", lastBytes(m.Stderr(), 4000))
		}
	})
	const rel = "train/manifest.json"
	if b, err := os.ReadFile(filepath.Join(mp, rel)); err != nil || string(b) != string(d.File(t, rel)) {
		t.Fatalf("%s through the mount over the bind: %v", rel, err)
	}
	return m
}

// refuseMount runs a second `bgbfs mount` on mp and checks it refuses in
// one line naming one of keywords, mounting nothing.
func refuseMount(t *testing.T, d *opsData, mp string, keywords ...string) {
	t.Helper()
	srv := env.server(t)
	before := mountIDs(t, mp)
	args := slices.Concat([]string{"mount"}, endpointArgs(srv.Endpoint), []string{d.Source(), mp})
	res := testbed.Run(env.bgbfs, args, testbed.CleanEnv(rootCreds(srv)), 2*failFastLimit)
	t.Logf("second bgbfs mount: exit %d; stderr %q", res.ExitCode, res.Stderr)
	if after := mountIDs(t, mp); !slices.Equal(after, before) {
		_ = testbed.ForceUnmount(mp)
		t.Fatalf("a second mount changed the mounts on %s from %v to %v", mp, before, after)
	}
	if res.ExitCode == 0 {
		t.Errorf("a second mount on %s exited 0", mp)
	}
	checkOneErrorLine(t, res.Stderr, keywords...)
}

// unmountCommand runs `bgbfs unmount mp` and checks it exits 0.
func unmountCommand(t *testing.T, mp string) {
	t.Helper()
	res := testbed.Run(env.bgbfs, []string{"unmount", mp}, testbed.CleanEnv(nil), 15*time.Second)
	if res.ExitCode != 0 {
		t.Fatalf("bgbfs unmount %s: exit %d, stderr %q", mp, res.ExitCode, res.Stderr)
	}
}

// TestMountOverBindMount mounts over a bind-mounted folder; a second
// mount there is refused as already mounted, and `bgbfs unmount` takes
// off bgbfs's mount only: the daemon exits 0 and the folder shows again.
func TestMountOverBindMount(t *testing.T) {
	d := opsFixture(t)
	mp, bound := bindMountpoint(t)
	m := mountOverBind(t, d, mp)
	if now := mountIDs(t, mp); len(now) != 2 || now[0] != bound[0] || !strings.HasSuffix(now[1], " "+testbed.FSType) {
		t.Errorf("mounts on %s: %v, want the bind and bgbfs on top", mp, now)
	}
	refuseMount(t, d, mp, "already mounted by "+testbed.FSType)
	unmountCommand(t, mp)
	if code, exited := m.WaitExit(testbed.UnmountTimeout); !exited || code != 0 {
		t.Errorf("the daemon after bgbfs unmount: exited %v, status %d; want exit 0", exited, code)
	}
	checkOnlyVolume(t, mp, bound)
	if res := testbed.Run(env.bgbfs, []string{"unmount", mp}, testbed.CleanEnv(nil), 15*time.Second); res.ExitCode == 0 {
		t.Errorf("bgbfs unmount of the bind itself exited 0: %q", res.Stderr)
	} else {
		checkOneErrorLine(t, res.Stderr, "not bgbfs")
	}
	checkOnlyVolume(t, mp, bound)
}

// TestDeadMountOverBindMount kills the daemon of a mount over a bind: a
// new mount is refused with the `bgbfs unmount` hint, which takes off the
// dead mount only, after which mounting works again.
func TestDeadMountOverBindMount(t *testing.T) {
	d := opsFixture(t)
	mp, bound := bindMountpoint(t)
	m := mountOverBind(t, d, mp)
	m.Kill()
	refuseMount(t, d, mp, "dead fuse mount (its daemon exited); run: bgbfs unmount")
	unmountCommand(t, mp)
	checkOnlyVolume(t, mp, bound)
	again := mountOverBind(t, d, mp)
	if err := again.Unmount(); err != nil {
		t.Error(err)
	}
	checkOnlyVolume(t, mp, bound)
}

// TestExecOverBindMount runs `bgbfs exec` on a bind-mounted folder: the
// command sees the bucket, its status comes back, and afterwards the
// bind alone is left.
func TestExecOverBindMount(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	mp, bound := bindMountpoint(t)
	// Exit 99: the bucket was not there; 98: the folder was not hidden.
	script := `test -s "$0/train/manifest.json" || exit 99; test -e "$0/` + volumeMarker + `" && exit 98; exit 5`
	res := testbed.Run(env.bgbfs, execArgs(srv.Endpoint, d, mp, "/bin/sh", "-c", script, mp), testbed.CleanEnv(rootCreds(srv)), execLimit)
	t.Logf("bgbfs exec over the bind: exit %d after %v", res.ExitCode, res.Elapsed.Round(time.Millisecond))
	if res.ExitCode != 5 {
		t.Errorf("exit status %d, want the command's 5; stderr:\n%s", res.ExitCode, lastBytes(res.Stderr, 4000))
	}
	if res.TimedOut || res.LeftBehind {
		t.Errorf("bgbfs exec timed out (%v) or left processes behind (%v)", res.TimedOut, res.LeftBehind)
	}
	checkOnlyVolume(t, mp, bound)
	requireNoDaemon(t, mp, 5*time.Second)
}
