package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bgbfs/bgbfs/cmd/bgbfs/mountinfo"
)

// Bounds used by the mount runner.
const (
	MountTimeout   = 20 * time.Second // bgbfs mount until the mount shows up
	UnmountTimeout = 15 * time.Second // SIGTERM until the daemon exits
)

// FSType is what a bgbfs mount shows in /proc/self/mountinfo.
const FSType = "fuse.bgbfs"

// Creds are static S3 credentials passed to bgbfs in its environment.
type Creds struct {
	AccessKey string
	SecretKey string
}

// CleanEnv is the environment bgbfs runs with: the test's own minus
// anything that could point it at other credentials, config or proxies
// (AWS_*, BGBFS_*, BGB_* such as BGB_LIMIT_FILES, *_PROXY), with instance metadata disabled, shared
// config files emptied, and creds (if any) as AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY.
func CleanEnv(creds *Creds) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		uk := strings.ToUpper(k)
		if strings.HasPrefix(uk, "AWS_") || strings.HasPrefix(uk, "BGBFS_") || strings.HasPrefix(uk, "BGB_") || strings.HasSuffix(uk, "_PROXY") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE="+os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE="+os.DevNull,
	)
	if creds != nil {
		env = append(env, "AWS_ACCESS_KEY_ID="+creds.AccessKey, "AWS_SECRET_ACCESS_KEY="+creds.SecretKey)
	}
	return env
}

// MountOptions say how to run `bgbfs mount`.
type MountOptions struct {
	Bin        string // the bgbfs binary
	Source     string // s3://BUCKET[/PREFIX/]
	Mountpoint string // an existing directory
	// Endpoint, if set, adds --endpoint-url Endpoint --force-path-style
	// --region us-east-1.
	Endpoint string
	Creds    *Creds   // nil runs without credentials in the environment
	Args     []string // further flags, placed before the positional arguments
	// Env is added to CleanEnv(Creds), e.g. BGB_LIMIT_FILES=3.
	Env []string
	// LogPath receives the daemon's stderr (stdout goes to LogPath.stdout).
	// Empty means a temporary file, removed by Unmount.
	LogPath string
	Timeout time.Duration // for the mount to appear; 0 means MountTimeout
}

// MountArgs is the command line (without the binary) Mount runs.
func (o MountOptions) MountArgs() []string {
	args := []string{"mount"}
	if o.Endpoint != "" {
		args = append(args, "--endpoint-url", o.Endpoint, "--force-path-style", "--region", "us-east-1")
	}
	args = append(args, o.Args...)
	return append(args, o.Source, o.Mountpoint)
}

// Mounted is a running `bgbfs mount` whose mount is up.
type Mounted struct {
	Mountpoint string // absolute, as in mountinfo
	LogPath    string
	Args       []string

	proc       *Process
	mountID    string // this mount's ID in mountinfo
	removeLog  bool
	mu         sync.Mutex
	signaled   bool
	unmounted  bool
	unmountErr error
}

// Mount runs `bgbfs mount` and waits until a new fuse.bgbfs mount shows up
// on the mountpoint. If the daemon exits first or the wait times out, it
// cleans up and returns an error carrying the daemon's stderr.
func Mount(o MountOptions) (*Mounted, error) {
	mp, err := filepath.Abs(o.Mountpoint)
	if err != nil {
		return nil, err
	}
	if real, err := filepath.EvalSymlinks(mp); err == nil {
		mp = real
	}
	o.Mountpoint = mp
	timeout := o.Timeout
	if timeout == 0 {
		timeout = MountTimeout
	}
	m := &Mounted{Mountpoint: mp, LogPath: o.LogPath, Args: o.MountArgs()}
	if m.LogPath == "" {
		f, err := os.CreateTemp("", "bgbfs-mount-*.log")
		if err != nil {
			return nil, err
		}
		f.Close()
		m.LogPath, m.removeLog = f.Name(), true
	}
	stderr, err := os.Create(m.LogPath)
	if err != nil {
		return nil, err
	}
	defer stderr.Close()
	stdout, err := os.Create(m.LogPath + ".stdout")
	if err != nil {
		return nil, err
	}
	defer stdout.Close()

	before, err := mountinfo.At(mp)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(o.Bin, m.Args...)
	cmd.Env = append(CleanEnv(o.Creds), o.Env...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// If the test binary dies, SIGTERM lets bgbfs unmount itself.
	m.proc, err = StartProcess(cmd, syscall.SIGTERM)
	if err != nil {
		return nil, fmt.Errorf("start bgbfs: %w", err)
	}

	deadline := time.Now().Add(timeout)
	for {
		if info, ok := newMount(mp, before); ok {
			if info.FSType != FSType {
				_ = m.Unmount()
				return nil, fmt.Errorf("bgbfs mounted %s with fstype %q, want %q", mp, info.FSType, FSType)
			}
			m.mountID = info.ID
			return m, nil
		}
		if m.proc.Exited() {
			err := fmt.Errorf("bgbfs %s exited with status %d before mounting; stderr:\n%s",
				strings.Join(m.Args, " "), m.proc.ExitCode(), tail(m.LogPath, 8000))
			_ = ForceUnmount(mp)
			m.cleanupLogs()
			return nil, err
		}
		if time.Now().After(deadline) {
			m.proc.Kill()
			_ = ForceUnmount(mp)
			err := fmt.Errorf("bgbfs %s: mount did not appear within %v; stderr:\n%s",
				strings.Join(m.Args, " "), timeout, tail(m.LogPath, 8000))
			m.cleanupLogs()
			return nil, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newMount finds a mount on mp that is not among before.
func newMount(mp string, before []mountinfo.Mount) (mountinfo.Mount, bool) {
	now, err := mountinfo.At(mp)
	if err != nil {
		return mountinfo.Mount{}, false
	}
	for i := len(now) - 1; i >= 0; i-- {
		if !slices.ContainsFunc(before, func(b mountinfo.Mount) bool { return b.ID == now[i].ID }) {
			return now[i], true
		}
	}
	return mountinfo.Mount{}, false
}

func (m *Mounted) cleanupLogs() {
	if m.removeLog {
		os.Remove(m.LogPath)
		os.Remove(m.LogPath + ".stdout")
	}
}

// Pid is the daemon's process id.
func (m *Mounted) Pid() int { return m.proc.Pid() }

// Alive reports whether the daemon is still running.
func (m *Mounted) Alive() bool { return !m.proc.Exited() }

// Stderr returns what the daemon has written to stderr so far.
func (m *Mounted) Stderr() string {
	b, err := os.ReadFile(m.LogPath)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return string(b)
}

// WaitMounted waits until the daemon logs that it has mounted: the mount
// shows up in mountinfo before the daemon has finished setting it up (the
// kernel's read-ahead, for one, is raised after). It needs the daemon to
// log at info level.
func (m *Mounted) WaitMounted(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !strings.Contains(m.Stderr(), "msg=mounted ") {
		if m.proc.Exited() || time.Now().After(deadline) {
			return fmt.Errorf("bgbfs did not log msg=mounted within %v; stderr:\n%s", timeout, tail(m.LogPath, 4000))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// Signal sends sig to the daemon.
func (m *Mounted) Signal(sig os.Signal) error {
	m.mu.Lock()
	m.signaled = true
	m.mu.Unlock()
	return m.proc.Signal(sig)
}

// Kill sends SIGKILL and waits, leaving the FUSE mount dead in place.
func (m *Mounted) Kill() {
	m.mu.Lock()
	m.signaled = true
	m.mu.Unlock()
	m.proc.Kill()
}

// WaitExit waits up to timeout for the daemon to exit and returns its exit
// status (-1: killed by a signal).
func (m *Mounted) WaitExit(timeout time.Duration) (code int, exited bool) {
	if !m.proc.Wait(timeout) {
		return 0, false
	}
	return m.proc.ExitCode(), true
}

// Unmount stops the daemon with SIGTERM and checks that it exits 0 within
// UnmountTimeout with the mount gone; failing that it kills the daemon and
// detaches the mount with fusermount3 -u -z. It returns an error for
// anything that needed force, for a daemon that had died on its own, and
// for a mount left behind. Calling it again returns the first result.
func (m *Mounted) Unmount() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.unmounted {
		return m.unmountErr
	}
	m.unmounted = true
	var errs []error
	switch {
	case m.proc.Exited() && !m.signaled:
		errs = append(errs, fmt.Errorf("bgbfs had exited on its own with status %d", m.proc.ExitCode()))
	case !m.proc.Exited():
		m.signaled = true
		if err := m.proc.Signal(syscall.SIGTERM); err != nil {
			errs = append(errs, fmt.Errorf("SIGTERM: %w", err))
		}
		if !m.proc.Wait(UnmountTimeout) {
			errs = append(errs, fmt.Errorf("bgbfs did not exit within %v of SIGTERM; killed", UnmountTimeout))
			m.proc.Kill()
		} else if code := m.proc.ExitCode(); code != 0 {
			errs = append(errs, fmt.Errorf("bgbfs exited with status %d after SIGTERM", code))
		}
	}
	if m.stillMounted() {
		if m.proc.ExitCode() == 0 {
			errs = append(errs, errors.New("bgbfs exited 0 but left its mount in place"))
		}
		if err := ForceUnmount(m.Mountpoint); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		m.unmountErr = fmt.Errorf("unmount %s: %w; stderr tail:\n%s", m.Mountpoint, errors.Join(errs...), tail(m.LogPath, 4000))
	}
	m.cleanupLogs()
	return m.unmountErr
}

// stillMounted reports whether this daemon's mount is still in mountinfo.
func (m *Mounted) stillMounted() bool {
	ms, _ := mountinfo.At(m.Mountpoint)
	return slices.ContainsFunc(ms, func(i mountinfo.Mount) bool { return m.mountID == "" || i.ID == m.mountID })
}

// Info returns this mount's mountinfo line, if it is still mounted.
func (m *Mounted) Info() (mountinfo.Mount, bool) {
	ms, _ := mountinfo.At(m.Mountpoint)
	for _, i := range ms {
		if i.ID == m.mountID {
			return i, true
		}
	}
	return mountinfo.Mount{}, false
}

// RunResult is the outcome of one short bgbfs command.
type RunResult struct {
	ExitCode int // -1: killed by a signal
	Stdout   string
	Stderr   string
	Elapsed  time.Duration
	TimedOut bool // still running at the timeout, then stopped
	// LeftBehind reports processes of the command's process group still
	// running after it exited (a daemonised child); they are killed.
	LeftBehind bool
}

// StderrLines returns the non-empty lines of Stderr.
func (r RunResult) StderrLines() []string {
	var out []string
	for _, l := range strings.Split(r.Stderr, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// Run runs bin with args in env (see CleanEnv) and returns its exit code,
// output and elapsed time. A command still running at timeout gets
// SIGTERM, then SIGKILL 5 s later, and TimedOut is set.
func Run(bin string, args, env []string, timeout time.Duration) RunResult {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	p, err := StartProcess(cmd, syscall.SIGTERM)
	if err != nil {
		return RunResult{ExitCode: -1, Stderr: err.Error()}
	}
	res := RunResult{}
	if !p.Wait(timeout) {
		res.TimedOut = true
		_ = p.Signal(syscall.SIGTERM)
		if !p.Wait(5 * time.Second) {
			p.Kill()
		}
	}
	res.Elapsed = time.Since(start)
	res.ExitCode = p.ExitCode()
	if syscall.Kill(-p.Pid(), 0) == nil {
		res.LeftBehind = true
		_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	}
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	return res
}
