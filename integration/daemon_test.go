package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// checkMountServes checks mp is a bgbfs mount right now and reads rel
// through it, comparing with the source.
func checkMountServes(t testing.TB, d *opsData, mp, rel string) {
	t.Helper()
	info, ok := testbed.MountedAt(mp)
	if !ok {
		t.Fatalf("%s is not mounted", mp)
	}
	if info.FSType != testbed.FSType {
		t.Fatalf("%s is mounted with fstype %q, want %q", mp, info.FSType, testbed.FSType)
	}
	got, err := os.ReadFile(filepath.Join(mp, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatalf("reading %s through the mount: %v", rel, errnoOf(err))
	}
	if !bytes.Equal(got, d.File(t, rel)) {
		t.Fatalf("%s through the mount differs from the source (%d bytes, want %d)", rel, len(got), len(d.File(t, rel)))
	}
}

// TestDaemonMount runs bgbfs mount --daemon: it returns 0 only once the
// mount is ready (it is in mountinfo and a file reads correctly the moment
// the command returns), one background bgbfs keeps serving after the
// command has exited, and bgbfs unmount ends it.
func TestDaemonMount(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	mp := newMountpoint(t)
	cleanupMountpoint(t, mp)
	logFile := filepath.Join(t.TempDir(), "daemon.log")
	args := slices.Concat([]string{"mount", "--daemon", "--log-file", logFile}, endpointArgs(srv.Endpoint), []string{d.Source(), mp})
	res := testbed.Run(env.bgbfs, args, testbed.CleanEnv(rootCreds(srv)), 2*testbed.MountTimeout)
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("daemon log:\n%s", lastBytes(string(b), 4000))
		}
	}()
	t.Logf("bgbfs %s: exit %d after %v", strings.Join(args, " "), res.ExitCode, res.Elapsed.Round(time.Millisecond))
	if res.ExitCode != 0 {
		t.Fatalf("exit status %d, want 0; stderr %q", res.ExitCode, res.Stderr)
	}
	// Checked before anything else: the mount must be ready at return.
	checkMountServes(t, d, mp, "train/manifest.json")
	if res.Stderr != "" {
		t.Errorf("a successful --daemon start wrote to stderr: %q", res.Stderr)
	}
	if res.LeftBehind {
		t.Errorf("the background bgbfs stayed in the command's process group (not detached)")
	}
	pids := bgbfsProcs(mp)
	if len(pids) != 1 {
		t.Fatalf("%d bgbfs processes serve %s (%v), want 1", len(pids), mp, pids)
	}
	pid := pids[0]

	// Still serving a while after the foreground command is gone.
	time.Sleep(500 * time.Millisecond)
	if !procAlive(pid) {
		t.Fatalf("the background bgbfs %d exited after the foreground command returned", pid)
	}
	for _, name := range d.NPZ("train")[:2] {
		checkMountServes(t, d, mp, "train/"+name)
	}

	un := testbed.Run(env.bgbfs, []string{"unmount", mp}, testbed.CleanEnv(nil), 15*time.Second)
	if un.ExitCode != 0 {
		t.Errorf("bgbfs unmount %s: exit %d, stderr %q", mp, un.ExitCode, un.Stderr)
	}
	requireNotMounted(t, mp)
	if !pollUntil(testbed.UnmountTimeout, func() bool { return !procAlive(pid) }) {
		t.Errorf("the background bgbfs %d still runs %v after bgbfs unmount", pid, testbed.UnmountTimeout)
	}
	requireNoDaemon(t, mp, time.Second)
	log, _ := os.ReadFile(logFile)
	for _, want := range []string{"msg=mounted", "unmounted"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("the --log-file of the background bgbfs has no %q", want)
		}
	}
}

// TestDaemonStartFailure checks bgbfs mount --daemon that cannot mount
// exits non-zero within 15 s with the reason in one line, leaving nothing
// mounted and no bgbfs running.
func TestDaemonStartFailure(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	cases := []struct {
		name     string
		source   string
		creds    *testbed.Creds
		keywords []string
	}{
		{"bucket_missing", "s3://bgbfs-no-such-bucket/", rootCreds(srv), []string{"bucket"}},
		{"credentials_rejected", d.Source(), &testbed.Creds{AccessKey: srv.AccessKey, SecretKey: "wrong-" + srv.SecretKey}, []string{"credential"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mp := newMountpoint(t)
			cleanupMountpoint(t, mp)
			args := slices.Concat([]string{"mount", "--daemon"}, endpointArgs(srv.Endpoint), []string{c.source, mp})
			res := testbed.Run(env.bgbfs, args, testbed.CleanEnv(c.creds), 2*failFastLimit)
			t.Logf("bgbfs %s: exit %d after %v; stderr %q", strings.Join(args, " "), res.ExitCode, res.Elapsed.Round(time.Millisecond), res.Stderr)
			if res.ExitCode == 0 {
				t.Errorf("exit status 0, want non-zero")
			}
			if res.TimedOut || res.Elapsed >= failFastLimit {
				t.Errorf("took %v (timed out: %v), want under %v", res.Elapsed, res.TimedOut, failFastLimit)
			}
			checkOneErrorLine(t, res.Stderr, c.keywords...)
			if strings.Contains(res.Stderr, srv.SecretKey) {
				t.Errorf("stderr holds the secret key")
			}
			requireNotMounted(t, mp)
			requireNoDaemon(t, mp, 2*time.Second)
		})
	}
}
