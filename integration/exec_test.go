package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// execLimit bounds one `bgbfs exec` whose command is quick: mount, run,
// unmount.
const execLimit = 60 * time.Second

// execArgs is the command line of `bgbfs exec` (without the binary) that
// mounts the operations bucket on mp and runs command.
func execArgs(endpoint string, d *opsData, mp string, command ...string) []string {
	return slices.Concat([]string{"exec"}, endpointArgs(endpoint), []string{d.Source(), mp, "--"}, command)
}

// checkExecDone checks what must hold after any `bgbfs exec` has exited:
// nothing mounted on mp, no bgbfs left serving it, no process of its group
// left running.
func checkExecDone(t *testing.T, mp string, res testbed.RunResult) {
	t.Helper()
	if res.TimedOut {
		t.Errorf("bgbfs exec still running after %v; stderr:\n%s", execLimit, res.Stderr)
	}
	if res.LeftBehind {
		t.Errorf("processes of bgbfs exec were still running after it exited")
	}
	requireNotMounted(t, mp)
	requireNoDaemon(t, mp, 5*time.Second)
}

// TestExecRunsCommand runs numpy in the command of bgbfs exec: it lists
// the mount and loads every npz file, and its digest of the arrays equals
// the same script's on the local source. bgbfs exits 0 with the command,
// passes the command's stdout through, and leaves nothing mounted.
func TestExecRunsCommand(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	want := localDigest(t, d)
	mp := newMountpoint(t)
	cleanupMountpoint(t, mp)

	args := execArgs(srv.Endpoint, d, mp, testbed.Python, "-c", npzDigest, mp)
	res := testbed.Run(env.bgbfs, args, testbed.CleanEnv(rootCreds(srv)), execLimit)
	t.Logf("bgbfs exec ... python3: exit %d after %v", res.ExitCode, res.Elapsed.Round(time.Millisecond))
	if res.ExitCode != 0 {
		t.Errorf("exit status %d, want 0; stderr:\n%s", res.ExitCode, lastBytes(res.Stderr, 4000))
	}
	if res.Stdout != want {
		t.Errorf("the command's output through the mount differs from the local source's:\ngot:\n%s\nwant:\n%s\nstderr:\n%s",
			res.Stdout, want, lastBytes(res.Stderr, 4000))
	}
	if n := strings.Count(want, "\nNPZ "); n != opsTrain+opsDev {
		t.Errorf("test bed: the digest covers %d npz files, want %d", n, opsTrain+opsDev)
	}
	checkExecDone(t, mp, res)
}

// TestExecExitStatus checks bgbfs exec exits with its command's status,
// as a shell reports it for a command killed by a signal (128+N). Each
// command first checks the mount is live.
func TestExecExitStatus(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	// Exit 99 means the mount was not there while the command ran.
	const live = `test -s "$0/train/manifest.json" || exit 99; `
	cases := []struct {
		name   string
		script string
		want   int
	}{
		{"exit_0", live + `exit 0`, 0},
		{"exit_7", live + `exit 7`, 7},
		{"SIGKILL", live + `kill -KILL $$`, 128 + int(syscall.SIGKILL)},
		{"SIGTERM", live + `kill -TERM $$`, 128 + int(syscall.SIGTERM)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mp := newMountpoint(t)
			cleanupMountpoint(t, mp)
			args := execArgs(srv.Endpoint, d, mp, "/bin/sh", "-c", c.script, mp)
			res := testbed.Run(env.bgbfs, args, testbed.CleanEnv(rootCreds(srv)), execLimit)
			t.Logf("bgbfs exec ... sh -c %q: exit %d after %v", c.script, res.ExitCode, res.Elapsed.Round(time.Millisecond))
			if res.ExitCode != c.want {
				t.Errorf("exit status %d, want %d; stderr:\n%s", res.ExitCode, c.want, lastBytes(res.Stderr, 4000))
			}
			checkExecDone(t, mp, res)
		})
	}
}

// TestExecForwardsSignal sends SIGTERM to bgbfs exec (not to its process
// group): bgbfs passes it to the command, whose trap prints got-term and
// exits 5; bgbfs then unmounts and exits 5.
func TestExecForwardsSignal(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	mp := newMountpoint(t)
	cleanupMountpoint(t, mp)
	marker := filepath.Join(t.TempDir(), "trap-set")
	// The marker is made once the trap is in place and the mount is live.
	script := `trap "echo got-term; exit 5" TERM; test -s "$0/train/manifest.json" || exit 99; : > "$1"; while :; do sleep 0.1; done`

	var stdout, stderr strings.Builder
	cmd := exec.Command(env.bgbfs, execArgs(srv.Endpoint, d, mp, "/bin/sh", "-c", script, mp, marker)...)
	cmd.Env = testbed.CleanEnv(rootCreds(srv))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr // stdin: /dev/null, not a terminal
	p := startBgCmd(t, cmd)

	if !pollUntil(30*time.Second, func() bool {
		_, err := os.Stat(marker)
		return err == nil || p.Wait(0)
	}) || p.Wait(0) {
		t.Fatalf("the command did not start within 30 s (bgbfs exited: %v, status %d); stderr:\n%s", p.Wait(0), p.ExitCode(), stderr.String())
	}
	if _, ok := testbed.MountedAt(mp); !ok {
		t.Fatalf("%s is not mounted while the command runs", mp)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !p.Wait(15 * time.Second) {
		t.Fatalf("bgbfs exec still running 15 s after SIGTERM; stdout %q; stderr:\n%s", stdout.String(), stderr.String())
	}
	if code := p.ExitCode(); code != 5 {
		t.Errorf("exit status %d after SIGTERM, want 5 (the trap's); stderr:\n%s", code, lastBytes(stderr.String(), 4000))
	}
	if !strings.Contains(stdout.String(), "got-term") {
		t.Errorf("the command did not print got-term (SIGTERM not passed on?); stdout %q", stdout.String())
	}
	requireNotMounted(t, mp)
	requireNoDaemon(t, mp, 5*time.Second)
}

// TestExecStartFailure checks a bgbfs exec that cannot mount (missing
// bucket) fails fast with one line, never runs the command, and leaves
// nothing mounted.
func TestExecStartFailure(t *testing.T) {
	srv := env.server(t)
	mp := newMountpoint(t)
	cleanupMountpoint(t, mp)
	marker := filepath.Join(t.TempDir(), "ran")
	args := slices.Concat([]string{"exec"}, endpointArgs(srv.Endpoint),
		[]string{"s3://bgbfs-no-such-bucket/", mp, "--", "/bin/sh", "-c", `: > "$0"`, marker})
	res := testbed.Run(env.bgbfs, args, testbed.CleanEnv(rootCreds(srv)), 2*failFastLimit)
	t.Logf("bgbfs %s: exit %d after %v; stderr %q", strings.Join(args, " "), res.ExitCode, res.Elapsed.Round(time.Millisecond), res.Stderr)
	if res.ExitCode == 0 {
		t.Errorf("exit status 0, want non-zero")
	}
	if res.Elapsed >= failFastLimit {
		t.Errorf("took %v, want under %v", res.Elapsed, failFastLimit)
	}
	checkOneErrorLine(t, res.Stderr, "bucket")
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("the command ran although nothing was mounted")
	}
	checkExecDone(t, mp, res)
}

// TestExecUsage checks bgbfs exec without a command is a usage error
// (exit 2, one line) that mounts nothing.
func TestExecUsage(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	for _, c := range []struct {
		name string
		tail []string
	}{
		{"no_dashdash", nil},
		{"nothing_after_dashdash", []string{"--"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			mp := newMountpoint(t)
			cleanupMountpoint(t, mp)
			args := slices.Concat([]string{"exec"}, endpointArgs(srv.Endpoint), []string{d.Source(), mp}, c.tail)
			res := testbed.Run(env.bgbfs, args, testbed.CleanEnv(rootCreds(srv)), 2*failFastLimit)
			t.Logf("bgbfs %s: exit %d; stderr %q", strings.Join(args, " "), res.ExitCode, res.Stderr)
			if res.ExitCode != 2 {
				t.Errorf("exit status %d, want 2 (usage)", res.ExitCode)
			}
			checkOneErrorLine(t, res.Stderr, "command", "usage")
			checkExecDone(t, mp, res)
		})
	}
}
