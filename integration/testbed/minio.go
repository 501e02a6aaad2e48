package testbed

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// MinIOStartTimeout bounds the wait for a started server to report live.
const MinIOStartTimeout = 30 * time.Second

// MinIO is a MinIO server child process. Its data directory and ports
// survive Stop, so Start brings the same server back (for outage tests).
type MinIO struct {
	Bin       string
	DataDir   string
	LogPath   string
	Addr      string // 127.0.0.1:port of the S3 API
	Endpoint  string // http://Addr
	AccessKey string
	SecretKey string

	consoleAddr string

	mu   sync.Mutex
	proc *Process
}

// StartMinIO starts bin as a single-drive server with data in dir/data and
// its output in dir/minio.log, on free loopback ports with generated root
// credentials, and waits until it is live.
func StartMinIO(bin, dir string) (*MinIO, error) {
	dataDir := filepath.Join(dir, "data")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, err
	}
	apiPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	consolePort, err := FreePort()
	if err != nil {
		return nil, err
	}
	m := &MinIO{
		Bin:         bin,
		DataDir:     dataDir,
		LogPath:     filepath.Join(dir, "minio.log"),
		Addr:        "127.0.0.1:" + strconv.Itoa(apiPort),
		consoleAddr: "127.0.0.1:" + strconv.Itoa(consolePort),
		AccessKey:   "bgbfs-" + randomHex(6),
		SecretKey:   randomHex(20),
	}
	m.Endpoint = "http://" + m.Addr
	if err := m.Start(); err != nil {
		return nil, err
	}
	return m, nil
}

// Pid is the server's process id, or 0 when it is not running.
func (m *MinIO) Pid() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil || m.proc.Exited() {
		return 0
	}
	return m.proc.Pid()
}

// Start starts the server (again) on the same ports and data directory
// and waits until GET /minio/health/live answers 200 and the server does
// not call itself offline.
func (m *MinIO) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil && !m.proc.Exited() {
		return errors.New("minio is already running")
	}
	logf, err := os.OpenFile(m.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(m.Bin, "server", "--address", m.Addr, "--console-address", m.consoleAddr, m.DataDir)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+m.AccessKey,
		"MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := StartProcess(cmd, syscall.SIGKILL)
	if err != nil {
		return fmt.Errorf("start minio: %w", err)
	}
	m.proc = p

	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(MinIOStartTimeout)
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("minio exited during start-up (%v); log:\n%s", p.err, tail(m.LogPath, 4000))
		}
		resp, err := client.Get(m.Endpoint + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			// Live is not yet serving: until its object layer is up,
			// MinIO says so in this header and answers S3 requests 503
			// XMinioServerNotInitialized (seconds on a loaded machine).
			if resp.StatusCode == http.StatusOK && resp.Header.Get("X-Minio-Server-Status") != "offline" {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.Kill()
	return fmt.Errorf("minio not live at %s after %v; log:\n%s", m.Endpoint, MinIOStartTimeout, tail(m.LogPath, 4000))
}

// Stop kills the server and waits for it to exit. Stopping a stopped
// server does nothing.
func (m *MinIO) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil {
		m.proc.Kill()
	}
}

// Restart is Stop then Start.
func (m *MinIO) Restart() error {
	m.Stop()
	return m.Start()
}

// Admin returns an admin client with the root credentials.
func (m *MinIO) Admin() *S3Admin {
	return NewS3Admin(m.Endpoint, m.AccessKey, m.SecretKey)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}
