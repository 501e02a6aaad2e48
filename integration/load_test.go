package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// The load test's shape.
const (
	loadFiles      = 100
	loadMinSize    = 2 << 20
	loadMaxSize    = 8 << 20
	loadProcs      = 64
	loadPreads     = 24 // random preads per process, each on a fresh open
	loadStreams    = 1  // whole files read in order per process
	loadCacheSize  = 64 << 20
	loadRSSHeadway = 100 << 20 // allowed beyond --cache-size
	loadDeadline   = 4 * time.Minute
)

// loadReader is the reader process: it reads [path, offset, length]
// triples from stdin (length -1: the whole file, in order, 1 MiB at a
// time) and prints "ok LEN SHA256" or "err ERRNO" for each. Every read
// opens the file afresh, as the trainer does per sample.
const loadReader = `
import hashlib, json, os, sys
out = []
for path, off, n in json.load(sys.stdin):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            if n < 0:
                h, total = hashlib.sha256(), 0
                while True:
                    b = os.read(fd, 1 << 20)
                    if not b:
                        break
                    h.update(b)
                    total += len(b)
                out.append("ok %d %s" % (total, h.hexdigest()))
            else:
                b = os.pread(fd, n, off)
                out.append("ok %d %s" % (len(b), hashlib.sha256(b).hexdigest()))
        finally:
            os.close(fd)
    except OSError as e:
        out.append("err %d" % e.errno)
sys.stdout.write("\n".join(out) + "\n")
`

// loadRead is one read a reader process makes.
type loadRead struct {
	file int
	off  int64
	n    int // -1: the whole file
}

// raceBinary builds bgbfs with the race detector into the suite's work
// directory, or takes $BGBFS_RACE_BIN.
func raceBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("BGBFS_RACE_BIN"); p != "" {
		return p
	}
	out := filepath.Join(env.work, "bgbfs-race")
	if _, err := os.Stat(out); err == nil {
		return out
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-race", "-o", out, "./cmd/bgbfs")
	cmd.Dir = env.repo
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build -race ./cmd/bgbfs: %v\n%s", err, b)
	}
	t.Logf("built the race binary in %v", time.Since(start).Round(time.Millisecond))
	return out
}

// TestLoadRace runs 64 reader processes doing random preads (each on a
// fresh open) and whole-file reads over 100 files of 2-8 MiB through a
// race-detector build of bgbfs with a 64 MiB cache, and checks every
// byte (each process hashes its reads, the test compares with the
// source), no data race reported, completion within a deadline, a clean
// exit 0 on SIGTERM, and the daemon's peak RSS: at most --cache-size +
// 100 MiB, asserted on the normal build if the race build (whose shadow
// memory counts in its RSS) exceeds it.
func TestLoadRace(t *testing.T) {
	srv := env.server(t)
	bucket := newBucket(t, srv, "bgbfs-load")
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0x6c6f6164))

	files := make([][]byte, loadFiles)
	objs := make([]testbed.Object, loadFiles)
	var total int64
	for i := range files {
		n := loadMinSize + rng.IntN(loadMaxSize-loadMinSize+1)
		files[i] = seededBytes(fmt.Sprintf("load-%d-%d", seed, i), n)
		objs[i] = testbed.Object{Key: loadKey(i), Data: files[i]}
		total += int64(n)
	}
	start := time.Now()
	if err := srv.Admin().PutMany(context.Background(), bucket, objs, 8); err != nil {
		t.Fatal(err)
	}
	t.Logf("uploaded %d files, %d MiB, in %v", loadFiles, total>>20, time.Since(start).Round(time.Millisecond))

	plans := make([][]loadRead, loadProcs)
	for p := range plans {
		for range loadPreads {
			f := rng.IntN(loadFiles)
			size := len(files[f])
			var n int
			switch rng.IntN(4) {
			case 0:
				n = 1 + rng.IntN(8192)
			case 1:
				n = 1 << 20
			default:
				n = 1 + rng.IntN(2<<20)
			}
			off := rng.Int64N(int64(size))
			if rng.IntN(10) == 0 { // across the end
				off = max(0, int64(size-n/2))
			}
			plans[p] = append(plans[p], loadRead{f, off, n})
		}
		for range loadStreams {
			plans[p] = append(plans[p], loadRead{rng.IntN(loadFiles), 0, -1})
		}
		rng.Shuffle(len(plans[p]), func(i, j int) { plans[p][i], plans[p][j] = plans[p][j], plans[p][i] })
	}

	raceBin := raceBinary(t)
	peak, stderr := runLoad(t, "race build", raceBin, bucket, files, plans)
	if n := strings.Count(stderr, "WARNING: DATA RACE"); n > 0 {
		i := strings.Index(stderr, "WARNING: DATA RACE")
		t.Errorf("the race detector reported %d data races; the first:\n%s", n, stderr[i:min(len(stderr), i+6000)])
	}
	bound := int64(loadCacheSize + loadRSSHeadway)
	if peak <= bound {
		return
	}
	t.Logf("the race build peaked at %d MiB, over the %d MiB bound (race shadow memory counts): checking the bound on the normal build",
		peak>>20, bound>>20)
	peak, _ = runLoad(t, "normal build", env.bgbfs, bucket, files, plans)
	if peak > bound {
		t.Errorf("bgbfs peaked at %d MiB of RSS under load with --cache-size %d MiB; want at most %d MiB",
			peak>>20, loadCacheSize>>20, bound>>20)
	}
}

func loadKey(i int) string { return fmt.Sprintf("load/f-%03d.bin", i) }

// runLoad mounts bin, runs the reader processes and checks their answers,
// unmounts with SIGTERM, and returns the daemon's peak RSS and its stderr.
func runLoad(t *testing.T, name, bin, bucket string, files [][]byte, plans [][]loadRead) (int64, string) {
	t.Helper()
	srv := env.server(t)
	mp := newMountpoint(t)
	m, err := testbed.Mount(testbed.MountOptions{
		Bin:        bin,
		Source:     "s3://" + bucket + "/",
		Mountpoint: mp,
		Endpoint:   srv.Endpoint,
		Creds:      rootCreds(srv),
		Args:       []string{"--cache-size", strconv.Itoa(loadCacheSize)},
		LogPath:    filepath.Join(t.TempDir(), "bgbfs.stderr"),
		Timeout:    time.Minute, // a race build starts slower
	})
	if err != nil {
		t.Fatal(err)
	}
	unmounted := false
	t.Cleanup(func() {
		if !unmounted {
			_ = m.Unmount()
		}
	})
	rss := testbed.SampleRSS(m.Pid(), 50*time.Millisecond)
	script := filepath.Join(t.TempDir(), "reader.py")
	if err := os.WriteFile(script, []byte(loadReader), 0o644); err != nil {
		t.Fatal(err)
	}

	// Keep the kernel's page cache from answering repeated ranges, so the
	// load reaches bgbfs.
	stopDrops := dropPageCacheEvery(3 * time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), loadDeadline)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	var reads, bytesRead int64
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, fmt.Sprintf(format, args...))
	}
	for p, plan := range plans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			triples := make([][3]any, len(plan))
			for i, r := range plan {
				triples[i] = [3]any{filepath.Join(mp, filepath.FromSlash(loadKey(r.file))), r.off, r.n}
			}
			in, _ := json.Marshal(triples)
			cmd := exec.CommandContext(ctx, testbed.Python, script)
			cmd.Stdin = bytes.NewReader(in)
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			cmd.WaitDelay = 5 * time.Second
			if err := cmd.Run(); err != nil {
				fail("reader %d: %v (deadline %v); stderr: %s", p, err, loadDeadline, lastBytes(errb.String(), 500))
				return
			}
			sc := bufio.NewScanner(&out)
			i := 0
			for ; sc.Scan(); i++ {
				if i >= len(plan) {
					fail("reader %d: more answers than reads", p)
					return
				}
				r := plan[i]
				data := files[r.file]
				want := data
				if r.n >= 0 {
					want = data[min(int64(len(data)), r.off):min(int64(len(data)), r.off+int64(r.n))]
				}
				fields := strings.Fields(sc.Text())
				mu.Lock()
				reads++
				mu.Unlock()
				if len(fields) != 3 || fields[0] != "ok" {
					fail("reader %d: read %d of %s at %d (len %d): %s", p, i, loadKey(r.file), r.off, r.n, sc.Text())
					continue
				}
				if fields[1] != strconv.Itoa(len(want)) || fields[2] != sha256Hex(want) {
					fail("reader %d: read %d of %s at %d (len %d): got %s bytes, sha256 %s; want %d bytes, %s",
						p, i, loadKey(r.file), r.off, r.n, fields[1], fields[2], len(want), sha256Hex(want))
					continue
				}
				mu.Lock()
				bytesRead += int64(len(want))
				mu.Unlock()
			}
			if i != len(plan) {
				fail("reader %d: %d answers for %d reads", p, i, len(plan))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopDrops()
	if ctx.Err() != nil {
		t.Errorf("%s: the readers did not finish within %v (deadlock?): sending SIGQUIT for a goroutine dump", name, loadDeadline)
		_ = m.Signal(syscall.SIGQUIT)
		m.WaitExit(10 * time.Second)
	}
	peak, samples := rss.Stop()

	// SIGTERM: a clean unmount and exit 0.
	termStart := time.Now()
	err = m.Unmount()
	unmounted = true
	if err != nil {
		t.Errorf("%s: %v", name, err)
	}
	stderr := m.Stderr()
	for i, f := range failures {
		if i == 20 {
			t.Errorf("... %d more failures", len(failures)-20)
			break
		}
		t.Errorf("%s: %s", name, f)
	}
	if t.Failed() {
		t.Logf("%s stderr:\n%s", name, lastBytes(stderr, 8000))
	}
	t.Logf("%s: %d processes made %d reads (%d MiB) in %v; peak RSS %d MiB (%d samples); SIGTERM to exit in %v",
		name, len(plans), reads, bytesRead>>20, elapsed.Round(time.Millisecond), peak>>20, samples, time.Since(termStart).Round(time.Millisecond))
	return peak, stderr
}
