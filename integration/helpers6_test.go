package integration

// Helpers of the operations tests (issue 6): bgbfs exec, --daemon,
// mount(8) and fstab, metrics and logs.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// The small bucket of the operations tests: a window cache of a few npz
// files under opsPrefix, so these tests do not wait for the main dataset
// (whose >4 GiB object takes a while to upload).
const (
	opsBucket = "bgbfs-ops"
	opsPrefix = "cache/"
	opsTrain  = 4
	opsDev    = 2
)

type opsData struct {
	Bucket  string
	Local   string            // gen_npz.py's output: train/ and dev/
	Objects map[string][]byte // key → content
}

// Source is the s3:// URL of the window cache.
func (d *opsData) Source() string { return "s3://" + d.Bucket + "/" + opsPrefix }

// File returns the content of a file under the mounted prefix.
func (d *opsData) File(t testing.TB, rel string) []byte {
	t.Helper()
	b, ok := d.Objects[opsPrefix+rel]
	if !ok {
		t.Fatalf("test bed: no object %s%s", opsPrefix, rel)
	}
	return b
}

// NPZ returns the npz file names of a split, sorted.
func (d *opsData) NPZ(split string) []string {
	var out []string
	for k := range d.Objects {
		if rest, ok := strings.CutPrefix(k, opsPrefix+split+"/"); ok && strings.HasSuffix(rest, ".npz") && !strings.Contains(rest, "/") {
			out = append(out, rest)
		}
	}
	sort.Strings(out)
	return out
}

// opsFixture returns the operations bucket, uploading it on first use.
func opsFixture(t testing.TB) *opsData {
	t.Helper()
	srv := env.server(t)
	return env.ops.get(t, "operations bucket", func() (*opsData, error) {
		return buildOps(srv, filepath.Join(env.work, "ops-src"))
	})
}

func buildOps(srv *testbed.MinIO, dir string) (*opsData, error) {
	d := &opsData{Bucket: opsBucket, Local: dir, Objects: map[string][]byte{}}
	if err := testbed.GenNPZ(env.repo, dir, testbed.NPZSpec{Train: opsTrain, Dev: opsDev, Windows: 3, Seed: 6006}); err != nil {
		return nil, err
	}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		d.Objects[opsPrefix+filepath.ToSlash(rel)] = b
		return nil
	})
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	admin := srv.Admin()
	if err := admin.CreateBucket(ctx, d.Bucket); err != nil {
		return nil, err
	}
	var objs []testbed.Object
	for k, v := range d.Objects {
		objs = append(objs, testbed.Object{Key: k, Data: v})
	}
	if err := admin.PutMany(ctx, d.Bucket, objs, 8); err != nil {
		return nil, err
	}
	return d, nil
}

// npzDigest lists ROOT/train and ROOT/dev and prints, per npz file, a
// SHA-256 over every member's name, dtype, shape and bytes as numpy.load
// returns them: run on the mount and on the local source, the outputs
// must be equal.
const npzDigest = `
import hashlib, os, sys
import numpy as np
root = sys.argv[1]
for split in ("train", "dev"):
    names = sorted(os.listdir(os.path.join(root, split)))
    print("LIST", split, " ".join(names))
    for n in names:
        if not n.endswith(".npz"):
            continue
        h = hashlib.sha256()
        with np.load(os.path.join(root, split, n)) as z:
            for k in sorted(z.files):
                a = z[k]
                h.update(("%s %s %s;" % (k, a.dtype, a.shape)).encode())
                h.update(np.ascontiguousarray(a).tobytes())
        print("NPZ", split, n, h.hexdigest())
`

// localDigest runs npzDigest on the local source.
func localDigest(t testing.TB, d *opsData) string {
	t.Helper()
	out, err := exec.Command(testbed.Python, "-c", npzDigest, d.Local).CombinedOutput()
	if err != nil {
		t.Fatalf("npz digest of the local source: %v\n%s", err, out)
	}
	return string(out)
}

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

// checkOneErrorLine checks a failed start's stderr: exactly one line, starting
// with "bgbfs: " and naming one of keywords (case-insensitive).
func checkOneErrorLine(t testing.TB, stderr string, keywords ...string) {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(stderr, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		t.Errorf("stderr has %d lines, want exactly 1:\n%s", len(lines), stderr)
		return
	}
	if !strings.HasPrefix(lines[0], "bgbfs: ") {
		t.Errorf("stderr line %q does not start with %q", lines[0], "bgbfs: ")
	}
	lower := strings.ToLower(lines[0])
	if !slices.ContainsFunc(keywords, func(k string) bool { return strings.Contains(lower, k) }) {
		t.Errorf("stderr line %q names none of %q", lines[0], keywords)
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

// metricsSnapshot is one scrape of /metrics: the value of every series,
// keyed by name and sorted labels as `name{a="x",b="y"}`.
type metricsSnapshot map[string]float64

// scrapeMetrics fetches and parses http://addr/metrics.
func scrapeMetrics(t testing.TB, addr string) metricsSnapshot {
	t.Helper()
	body := fetchURL(t, "http://"+addr+"/metrics")
	snap := metricsSnapshot{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, err := parseSample(line)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		snap[key] = value
	}
	return snap
}

// parseSample reads `name{labels} value` (or `name value`) and returns
// the series key with its labels sorted, and the value.
func parseSample(line string) (string, float64, error) {
	name, rest := line, ""
	var labels []string
	if i := strings.IndexByte(line, '{'); i >= 0 {
		j := strings.LastIndexByte(line, '}')
		if j < i {
			return "", 0, fmt.Errorf("unbalanced braces")
		}
		name, rest = line[:i], strings.TrimSpace(line[j+1:])
		inner := line[i+1 : j]
		// Label values here never hold commas or escaped quotes.
		for _, l := range strings.Split(inner, ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels = append(labels, l)
			}
		}
	} else {
		f := strings.Fields(line)
		if len(f) < 2 {
			return "", 0, fmt.Errorf("no value")
		}
		name, rest = f[0], f[1]
	}
	f := strings.Fields(rest)
	if len(f) < 1 {
		return "", 0, fmt.Errorf("no value")
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return "", 0, err
	}
	sort.Strings(labels)
	key := name
	if len(labels) > 0 {
		key += "{" + strings.Join(labels, ",") + "}"
	}
	return key, v, nil
}

// Sum adds the series of metric name whose labels include every one of
// match (each `k="v"`).
func (s metricsSnapshot) Sum(name string, match ...string) float64 {
	total := 0.0
	for key, v := range s {
		n, labels, _ := strings.Cut(key, "{")
		if n != name {
			continue
		}
		have := strings.Split(strings.TrimSuffix(labels, "}"), ",")
		if slices.ContainsFunc(match, func(m string) bool { return !slices.Contains(have, m) }) {
			continue
		}
		total += v
	}
	return total
}

// Has reports whether any series of metric name is present.
func (s metricsSnapshot) Has(name string) bool {
	for key := range s {
		if n, _, _ := strings.Cut(key, "{"); n == name {
			return true
		}
	}
	return false
}

// fetchURL returns the body of a 200 response, failing the test otherwise.
func fetchURL(t testing.TB, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}

// fileLines returns the non-empty lines of a file.
func fileLines(t testing.TB, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) != "" {
			out = append(out, sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
