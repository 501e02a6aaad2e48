package integration

import (
	"bytes"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/cmd/bgbfs/mountinfo"
)

// TestDemoCtrlC runs the README's first command, `make demo`, as a terminal
// would (in its own process group), and presses Ctrl-C once the demo says
// it is mounted: after the clean unmount nothing reads as a failure (no
// "make: ***" line, no "demo:" error), make itself ends by the interrupt,
// and nothing stays mounted.
func TestDemoCtrlC(t *testing.T) {
	var out syncBuffer
	// -o build: bin/bgbfs is the binary the suite tests (make integration
	// built it); the demo recipe itself runs as a newcomer runs it.
	cmd := exec.Command("make", "--no-print-directory", "-o", "build", "demo")
	cmd.Dir = env.repo
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("make demo: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	const ready = "Mounted until you press Ctrl-C."
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(out.String(), ready) {
		select {
		case err := <-done:
			t.Fatalf("make demo ended before it was ready (%v):\n%s", err, out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			t.Fatalf("make demo not ready after 3 minutes:\n%s", out.String())
		}
	}
	mnt := demoMountpoint(t, out.String())
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatalf("Ctrl-C: %v", err)
	}
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Fatalf("make demo still running a minute after Ctrl-C:\n%s", out.String())
	}
	text := out.String()
	for _, bad := range []string{"make: ***", "Error", "demo: "} {
		if strings.Contains(text, bad) {
			t.Errorf("output after Ctrl-C contains %q:\n%s", bad, text)
		}
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("make demo after Ctrl-C: %v, want an end by SIGINT", err)
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Errorf("make demo after Ctrl-C: %v, want an end by SIGINT (status 130 in a shell)", err)
	}
	if !strings.Contains(text, "Stopping bgbfs (SIGTERM) and unmounting") {
		t.Errorf("the demo did not unmount on Ctrl-C:\n%s", text)
	}
	if _, ok, _ := mountinfo.Top(mnt); ok {
		t.Errorf("%s still mounted after the demo ended", mnt)
	}
}

// demoMountpoint is the mountpoint the demo printed in its mount command.
func demoMountpoint(t *testing.T, out string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == "$" && strings.HasSuffix(f[1], "bgbfs") && f[2] == "mount" {
			return strings.Trim(f[len(f)-1], "'")
		}
	}
	t.Fatalf("no mount command in the demo's output:\n%s", out)
	return ""
}

// syncBuffer is a bytes.Buffer that a command's output and the test may
// use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
