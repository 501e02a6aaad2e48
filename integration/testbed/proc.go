package testbed

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Process is a started child whose exit is collected by one goroutine, so
// any number of callers can poll or wait for it with a bound: the one way
// the test bed, the tests, the demo and the benchmark run a child.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // cmd.Wait's result; read only after done is closed
}

// StartProcess starts cmd in its own process group (a terminal's Ctrl-C
// does not reach it behind its starter's back), with deathSig sent to it
// if the starting process dies first.
func StartProcess(cmd *exec.Cmd, deathSig syscall.Signal) (*Process, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Done is closed once the child has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the child's exit as exec.Cmd.Wait reports it; only once Done.
func (p *Process) Err() error { return p.err }

// Pid is the child's process id, and its process group's.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the child has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait reports whether the process exited within timeout.
func (p *Process) Wait(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// ExitCode is the exit status, -1 if killed by a signal, or -2 while
// still running.
func (p *Process) ExitCode() int {
	if !p.Exited() {
		return -2
	}
	return exitCodeOf(p.err)
}

func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// Signal sends sig to the child, if it is still running.
func (p *Process) Signal(sig os.Signal) error {
	if p.Exited() {
		return nil
	}
	err := p.cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// Kill sends SIGKILL to the whole process group and waits for the exit.
func (p *Process) Kill() {
	if p.Exited() {
		return
	}
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	_ = p.cmd.Process.Kill()
	<-p.done
}

// tail returns up to the last n bytes of a log file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
