package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// daemonReadyEnv tells a re-executed bgbfs that it is the background half
// of --daemon, and which file descriptor reports readiness to the parent.
const daemonReadyEnv = "BGBFS_DAEMON_READY_FD"

// daemonStartTimeout bounds how long the parent waits for the mount.
const daemonStartTimeout = 60 * time.Second

// startDaemon runs this command again in the background, in its own
// session, and returns once the background process has mounted (nil) or
// failed (its one-line reason). The child's logs go to --log-file, or are
// dropped: the parent's stderr closes when it exits.
func startDaemon(args []string, stderr io.Writer) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--daemon: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("--daemon: %w", err)
	}
	defer r.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("--daemon: %w", err)
	}
	defer devnull.Close()
	cmd := exec.Command(self, append([]string{"mount"}, args...)...)
	cmd.Env = append(os.Environ(), daemonReadyEnv+"=3")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("--daemon: start: %w", err)
	}
	w.Close()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case s := <-line:
		switch {
		case s == "ready":
			_ = cmd.Process.Release()
			return nil
		case strings.HasPrefix(s, "error: "):
			_ = cmd.Wait()
			return errors.New(strings.TrimPrefix(s, "error: "))
		}
		_ = cmd.Wait()
		return errors.New("the background bgbfs exited before mounting (see --log-file)")
	case <-time.After(daemonStartTimeout):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("the background bgbfs did not mount within %v", daemonStartTimeout)
	}
}

// notifyDaemonParent tells the foreground half of --daemon that the mount
// is ready (err nil) or why it failed. Outside --daemon it does nothing.
func notifyDaemonParent(err error) {
	if os.Getenv(daemonReadyEnv) != "3" {
		return
	}
	f := os.NewFile(3, "daemon-ready")
	if f == nil {
		return
	}
	defer f.Close()
	if err != nil {
		fmt.Fprintf(f, "error: %s\n", oneLine(err.Error()))
		return
	}
	fmt.Fprintln(f, "ready")
	os.Unsetenv(daemonReadyEnv)
}
