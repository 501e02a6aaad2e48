package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// jsonLog is one parsed --log-format json line.
type jsonLog map[string]any

func (l jsonLog) msg() string { s, _ := l["msg"].(string); return s }

// parseJSONLog parses every line as one JSON object with time, level and
// msg, failing the test for any that is not.
func parseJSONLog(t testing.TB, lines []string) []jsonLog {
	t.Helper()
	var out []jsonLog
	for i, line := range lines {
		var l jsonLog
		dec := json.NewDecoder(strings.NewReader(line))
		if err := dec.Decode(&l); err != nil {
			t.Errorf("log line %d is not a JSON object: %v\n%s", i+1, err, line)
			continue
		}
		if dec.More() {
			t.Errorf("log line %d holds more than one JSON value:\n%s", i+1, line)
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := l[k]; !ok {
				t.Errorf("log line %d has no %q:\n%s", i+1, k, line)
			}
		}
		out = append(out, l)
	}
	return out
}

// withMsg returns the entries whose msg is msg.
func withMsg(logs []jsonLog, msg string) []jsonLog {
	var out []jsonLog
	for _, l := range logs {
		if l.msg() == msg {
			out = append(out, l)
		}
	}
	return out
}

// checkLifecycleLog checks a JSON log of a mount that read a file and was
// then stopped with SIGTERM: one "mounted" line with the options in force,
// one "unmounted" line, and no secret anywhere.
func checkLifecycleLog(t testing.TB, lines []string, d *opsData, mp, secret string) {
	t.Helper()
	if len(lines) == 0 {
		t.Fatalf("no log lines")
	}
	for i, line := range lines {
		if strings.Contains(line, secret) {
			t.Errorf("log line %d holds the secret key", i+1)
		}
	}
	logs := parseJSONLog(t, lines)
	mounted := withMsg(logs, "mounted")
	for _, line := range lines {
		if strings.Contains(line, `"msg":"mounted"`) {
			t.Logf("%d log lines; the mounted line: %s", len(lines), line)
		}
	}
	if len(mounted) != 1 {
		t.Errorf("%d log lines with msg \"mounted\", want 1", len(mounted))
	} else {
		want := map[string]any{
			"source":       d.Source(),
			"mountpoint":   mp,
			"cache_size":   float64(64 << 20),
			"metadata_ttl": "42s",
			"limit_files":  "3 of *.npz",
		}
		for k, v := range want {
			if got, ok := mounted[0][k]; !ok || got != v {
				t.Errorf("the mounted line has %s=%#v (present: %v), want %#v", k, got, ok, v)
			}
		}
		for _, k := range []string{"endpoint", "region", "block_size", "part_size", "max_read_ahead", "max_parallel_requests", "uid", "gid", "file_mode", "dir_mode", "allow_other", "max_attempts", "request_timeout"} {
			if _, ok := mounted[0][k]; !ok {
				t.Errorf("the mounted line has no %s", k)
			}
		}
	}
	if n := len(withMsg(logs, "unmounted")); n != 1 {
		t.Errorf("%d log lines with msg \"unmounted\", want 1", n)
	}
	if len(logs) > 0 && logs[len(logs)-1].msg() != "unmounted" {
		t.Errorf("the last log line is %q, want \"unmounted\"", logs[len(logs)-1].msg())
	}
}

// logTestArgs are the flags both log tests mount with: options to find in
// the mounted line, and debug level so that every line that could leak a
// secret is written.
var logTestArgs = []string{"--log-format", "json", "--log-level", "debug", "--cache-size", "64MiB", "--metadata-ttl", "42s", "--limit-files", "3"}

// readAndStop reads a file through m, then stops it with SIGTERM and
// checks it exits 0.
func readAndStop(t testing.TB, d *opsData, m *testbed.Mounted) {
	t.Helper()
	name := "train/" + d.NPZ("train")[0]
	got, err := os.ReadFile(filepath.Join(m.Mountpoint, filepath.FromSlash(name)))
	if err != nil || !bytes.Equal(got, d.File(t, name)) {
		t.Errorf("reading %s through the mount: %d bytes, %v", name, len(got), err)
	}
	if err := m.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, exited := m.WaitExit(testbed.UnmountTimeout)
	if !exited || code != 0 {
		t.Fatalf("after SIGTERM: exited %v, status %d; want exit 0", exited, code)
	}
}

// TestLogsJSON checks --log-format json: every stderr line is one JSON
// object, one "mounted" line carries the options in force, one
// "unmounted" line follows SIGTERM, and the secret key is in none.
func TestLogsJSON(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	m := mount(t, mountSpec{Source: d.Source(), Endpoint: srv.Endpoint, Creds: rootCreds(srv), Args: logTestArgs})
	readAndStop(t, d, m)
	lines := fileLines(t, m.LogPath)
	checkLifecycleLog(t, lines, d, m.Mountpoint, srv.SecretKey)
	if t.Failed() {
		t.Logf("stderr:\n%s", lastBytes(m.Stderr(), 6000))
	}
}

// TestLogsFile checks --log-file: the log is appended to the file (what
// was there stays first) and nothing goes to stderr.
func TestLogsFile(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	logFile := filepath.Join(t.TempDir(), "bgbfs.log")
	const earlier = `{"msg":"written before bgbfs started"}`
	if err := os.WriteFile(logFile, []byte(earlier+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := mount(t, mountSpec{Source: d.Source(), Endpoint: srv.Endpoint, Creds: rootCreds(srv),
		Args: append([]string{"--log-file", logFile}, logTestArgs...)})
	readAndStop(t, d, m)
	if s := m.Stderr(); strings.TrimSpace(s) != "" {
		t.Errorf("with --log-file, bgbfs wrote to stderr:\n%s", s)
	}
	lines := fileLines(t, logFile)
	if len(lines) == 0 || lines[0] != earlier {
		t.Fatalf("the log file does not start with what was in it before (not appended): %q", lines)
	}
	checkLifecycleLog(t, lines[1:], d, m.Mountpoint, srv.SecretKey)
	if t.Failed() {
		b, _ := os.ReadFile(logFile)
		t.Logf("log file:\n%s", lastBytes(string(b), 6000))
	}
}
