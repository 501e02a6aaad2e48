package integration

// Helpers that start, watch and clean up processes: background commands,
// bgbfs daemons, their mountpoints.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// bgbfsProcs returns the pids of running (not zombie) processes of the
// bgbfs binary under test with mp among their arguments.
func bgbfsProcs(mp string) []int {
	bin, err := filepath.EvalSymlinks(env.bgbfs)
	if err != nil {
		bin = env.bgbfs
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || strings.TrimSuffix(exe, " (deleted)") != bin {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		if slices.Contains(strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00"), mp) && !isZombie(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// isZombie reports a process that has exited but not been reaped (or is
// gone).
func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return true
	}
	return s[i+2] == 'Z' || s[i+2] == 'X'
}

// procAlive reports whether pid is running (not a zombie).
func procAlive(pid int) bool {
	return syscall.Kill(pid, 0) == nil && !isZombie(pid)
}

// pollUntil polls cond every 20 ms until it holds or timeout passes.
func pollUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cleanupMountpoint registers a cleanup that detaches anything still
// mounted on mp and kills any bgbfs process still serving it, failing the
// test if there was something to clean (unless it already failed).
func cleanupMountpoint(t testing.TB, mp string) {
	t.Helper()
	t.Cleanup(func() {
		if _, ok := testbed.MountedAt(mp); ok {
			t.Errorf("cleanup: %s was still mounted", mp)
			if err := testbed.ForceUnmount(mp); err != nil {
				t.Error(err)
			}
		}
		for _, pid := range bgbfsProcs(mp) {
			t.Errorf("cleanup: bgbfs process %d serving %s was still running: killed", pid, mp)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// requireNoDaemon fails if a bgbfs process for mp is still running after
// timeout.
func requireNoDaemon(t testing.TB, mp string, timeout time.Duration) {
	t.Helper()
	if !pollUntil(timeout, func() bool { return len(bgbfsProcs(mp)) == 0 }) {
		t.Errorf("bgbfs processes %v serving %s still running %v later", bgbfsProcs(mp), mp, timeout)
	}
}

// bgCmd is a command a test started in the background.
type bgCmd = testbed.Process

// startBgCmd starts cmd in its own process group (SIGKILLed if the test
// process dies) and kills the group at the end of the test if it is
// still running.
func startBgCmd(t testing.TB, cmd *exec.Cmd) *bgCmd {
	t.Helper()
	cmd.WaitDelay = 2 * time.Second
	p, err := testbed.StartProcess(cmd, syscall.SIGKILL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

// watchdog sends SIGQUIT to the daemon if stop is not called within d:
// hung filesystem calls then return (ENOTCONN) and the daemon's goroutine
// stacks land in its stderr, which the mount's cleanup shows.
func watchdog(t testing.TB, m *testbed.Mounted, d time.Duration, what string) (stop func()) {
	timer := time.AfterFunc(d, func() {
		t.Errorf("%s did not finish within %v (deadlock?): sending SIGQUIT to bgbfs for a goroutine dump", what, d)
		_ = m.Signal(syscall.SIGQUIT)
	})
	return func() { timer.Stop() }
}
