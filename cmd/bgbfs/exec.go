package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"golang.org/x/term"
)

// exitError carries a status for main to exit with, without a message:
// "bgbfs exec" exits with its command's status.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// forwardedSignals reach the command: a container runtime or a scheduler
// stops bgbfs, and bgbfs must stop the command before it unmounts.
var forwardedSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// runExec mounts, runs a command with the mount live, unmounts when the
// command ends, and returns the command's exit status.
func runExec(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseMountArgs(args, os.Getenv, stdout, true)
	if err != nil {
		return err
	}
	m, err := startMount(ctx, o, stderr)
	if err != nil {
		return err
	}
	defer m.close()
	if _, err := os.Stat(m.mp); err != nil { // the mount answers
		_ = m.unmount()
		return fmt.Errorf("mount %s does not answer: %w", m.mp, err)
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, forwardedSignals...)
	defer signal.Stop(sigs)
	cmd := exec.Command(o.command[0], o.command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		_ = m.unmount()
		return fmt.Errorf("exec %s: %w", o.command[0], err)
	}
	m.logger.Info("command started", "command", o.command[0], "pid", cmd.Process.Pid)
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	// A terminal's Ctrl-C already reaches the command, which shares our
	// process group; passing SIGINT on as well would deliver it twice.
	fromTerminal := term.IsTerminal(int(os.Stdin.Fd()))
	var werr error
wait:
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGINT && fromTerminal {
				continue
			}
			m.logger.Info("passing signal to the command", "signal", sig.String())
			_ = cmd.Process.Signal(sig)
		case werr = <-waited:
			break wait
		}
	}
	code := 0
	var ee *exec.ExitError
	switch {
	case werr == nil:
	case errors.As(werr, &ee):
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal()) // as a shell reports it
		}
	default:
		code = 1
	}
	m.logger.Info("command ended: unmounting", "status", code)
	if err := m.unmount(); err != nil {
		return err
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}
