package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// metricFamilies must all be served at /metrics once a mount is up (the
// labelled ones once a series exists, which the test makes sure of).
var metricFamilies = []string{
	"bgbfs_s3_requests_total",
	"bgbfs_s3_request_duration_seconds_bucket",
	"bgbfs_s3_request_duration_seconds_sum",
	"bgbfs_s3_request_duration_seconds_count",
	"bgbfs_s3_retries_total",
	"bgbfs_s3_bytes_fetched_total",
	"bgbfs_cache_hits_total",
	"bgbfs_cache_misses_total",
	"bgbfs_cache_evictions_total",
	"bgbfs_cache_bytes",
	"bgbfs_readahead_bytes",
	"bgbfs_readahead_window_bytes_bucket",
	"bgbfs_readahead_window_bytes_count",
	"bgbfs_fuse_operation_duration_seconds_bucket",
	"bgbfs_fuse_operation_duration_seconds_count",
	"bgbfs_open_files",
	"go_goroutines",
	"process_resident_memory_bytes",
}

// statsNames are the lines /stats must have.
var statsNames = []string{
	"s3_list_requests", "s3_get_requests", "s3_failed_requests", "s3_retries", "s3_bytes_fetched",
	"cache_hits", "cache_misses", "cache_evictions", "cache_bytes_held", "readahead_bytes_held", "open_files",
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t testing.TB) string {
	t.Helper()
	port, err := testbed.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(port)
}

// scrapeStats fetches /stats and parses its "name value" lines; every
// line must be exactly that.
func scrapeStats(t testing.TB, addr string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, line := range strings.Split(strings.TrimRight(fetchURL(t, "http://"+addr+"/stats"), "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			t.Fatalf("/stats line %q is not \"name value\"", line)
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			t.Fatalf("/stats line %q: %v", line, err)
		}
		if _, dup := out[f[0]]; dup {
			t.Fatalf("/stats has %s twice", f[0])
		}
		out[f[0]] = v
	}
	return out
}

// TestMetrics scrapes /metrics and /stats around reads through a mount
// whose S3 traffic passes a CountingProxy: the GetObject count and bytes
// the daemon reports grow by exactly what the proxy saw, the FUSE read
// and open counts grow, a re-read served from the cache adds hits and no
// GETs, and open files count a held file.
func TestMetrics(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	proxy := newProxy(t, srv.Endpoint)
	addr := freeAddr(t)
	m := mount(t, mountSpec{Source: d.Source(), Endpoint: proxy.URL, Creds: rootCreds(srv), Args: []string{"--metrics-addr", addr}})
	mp := m.Mountpoint
	name := "train/" + d.NPZ("train")[0]
	path := filepath.Join(mp, filepath.FromSlash(name))
	want := d.File(t, name)

	// Settle the listing first, so the window below holds only the read.
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stat %s: %v", name, errnoOf(err))
	}
	proxy.Reset()
	before := scrapeMetrics(t, addr)
	statsBefore := scrapeStats(t, addr)
	for _, f := range []string{"bgbfs_s3_retries_total", "bgbfs_s3_bytes_fetched_total", "bgbfs_cache_hits_total", "bgbfs_cache_misses_total", "go_goroutines"} {
		if !before.Has(f) {
			t.Errorf("/metrics has no %s before any read", f)
		}
	}
	if v := before.Sum("bgbfs_open_files"); v != 0 {
		t.Errorf("bgbfs_open_files = %v before any open, want 0", v)
	}

	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("reading %s through the mount: %d bytes, %v (want %d bytes, equal)", name, len(got), err, len(want))
	}
	// Counters move when a request ends: wait until the daemon's count
	// matches the proxy's, within a bound.
	get := func(s metricsSnapshot, outcome string) float64 {
		if outcome == "" {
			return s.Sum("bgbfs_s3_requests_total", `op="GetObject"`)
		}
		return s.Sum("bgbfs_s3_requests_total", `op="GetObject"`, `outcome="`+outcome+`"`)
	}
	var after metricsSnapshot
	var seen testbed.Counts
	pollUntil(5*time.Second, func() bool {
		after = scrapeMetrics(t, addr)
		seen = proxy.Counts()
		return get(after, "ok")-get(before, "ok") == float64(seen.GetObject) &&
			after.Sum("bgbfs_s3_bytes_fetched_total")-before.Sum("bgbfs_s3_bytes_fetched_total") == float64(seen.GetObjectBytes)
	})
	t.Logf("proxy during the read: %s", seen)
	if seen.GetObject == 0 || seen.GetObjectBytes < int64(len(want)) {
		t.Fatalf("test bed: the proxy saw %d GETs and %d body bytes for a cold read of %d bytes", seen.GetObject, seen.GetObjectBytes, len(want))
	}
	if dOK, dAll := get(after, "ok")-get(before, "ok"), get(after, "")-get(before, ""); dOK != float64(seen.GetObject) || dAll != dOK {
		t.Errorf("bgbfs_s3_requests_total{op=GetObject,outcome=ok} grew by %v (all outcomes: %v), want %d, the GETs the proxy saw", dOK, dAll, seen.GetObject)
	}
	if dc := after.Sum("bgbfs_s3_request_duration_seconds_count", `op="GetObject"`) - before.Sum("bgbfs_s3_request_duration_seconds_count", `op="GetObject"`); dc != float64(seen.GetObject) {
		t.Errorf("bgbfs_s3_request_duration_seconds_count{op=GetObject} grew by %v, want %d", dc, seen.GetObject)
	}
	if db := after.Sum("bgbfs_s3_bytes_fetched_total") - before.Sum("bgbfs_s3_bytes_fetched_total"); db != float64(seen.GetObjectBytes) {
		t.Errorf("bgbfs_s3_bytes_fetched_total grew by %v, want %d, the GetObject body bytes the proxy passed", db, seen.GetObjectBytes)
	}
	if dr := after.Sum("bgbfs_s3_retries_total") - before.Sum("bgbfs_s3_retries_total"); dr != 0 {
		t.Errorf("bgbfs_s3_retries_total grew by %v without any fault", dr)
	}
	fuseOps := func(s metricsSnapshot, op string) float64 {
		return s.Sum("bgbfs_fuse_operation_duration_seconds_count", `op="`+op+`"`)
	}
	if fuseOps(after, "read") <= fuseOps(before, "read") {
		t.Errorf("bgbfs_fuse_operation_duration_seconds_count{op=read} did not grow (%v → %v)", fuseOps(before, "read"), fuseOps(after, "read"))
	}
	if fuseOps(after, "open") <= fuseOps(before, "open") {
		t.Errorf("bgbfs_fuse_operation_duration_seconds_count{op=open} did not grow (%v → %v)", fuseOps(before, "open"), fuseOps(after, "open"))
	}
	// A read-only file has nothing to flush: the first close's FLUSH is
	// answered ENOSYS, and the kernel sends no other for the mount.
	for range 5 {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if n := fuseOps(scrapeMetrics(t, addr), "flush"); n != 1 {
		t.Errorf("the kernel sent %v FLUSH requests for 6 closes, want 1 (then no more for the mount)", n)
	}
	// Every block the read needed counts once per read call as a hit
	// (cached, held by read-ahead, being fetched) or a miss (fetched for
	// the read): a cold sequential read is mostly read-ahead's hits.
	blocks := float64((int64(len(want)) + 1<<20 - 1) >> 20)
	looked := func(s metricsSnapshot) float64 {
		return s.Sum("bgbfs_cache_hits_total") + s.Sum("bgbfs_cache_misses_total")
	}
	if dl := looked(after) - looked(before); dl < blocks {
		t.Errorf("bgbfs_cache_hits_total + bgbfs_cache_misses_total grew by %v on a read of %v blocks", dl, blocks)
	}
	if after.Sum("bgbfs_cache_bytes") <= 0 {
		t.Errorf("bgbfs_cache_bytes is %v after a read with the cache on", after.Sum("bgbfs_cache_bytes"))
	}
	for _, f := range metricFamilies {
		if !after.Has(f) {
			t.Errorf("/metrics has no %s", f)
		}
	}

	// /stats: plain lines agreeing with /metrics.
	stats := scrapeStats(t, addr)
	for _, n := range statsNames {
		if _, ok := stats[n]; !ok {
			t.Errorf("/stats has no %s line", n)
		}
	}
	if g := stats["s3_get_requests"] - statsBefore["s3_get_requests"]; g != float64(seen.GetObject) {
		t.Errorf("/stats s3_get_requests grew by %v, want %d", g, seen.GetObject)
	}
	if b := stats["s3_bytes_fetched"] - statsBefore["s3_bytes_fetched"]; b != float64(seen.GetObjectBytes) {
		t.Errorf("/stats s3_bytes_fetched grew by %v, want %d", b, seen.GetObjectBytes)
	}
	if stats["s3_list_requests"] != after.Sum("bgbfs_s3_requests_total", `op="ListObjectsV2"`) {
		t.Errorf("/stats s3_list_requests %v differs from /metrics %v", stats["s3_list_requests"], after.Sum("bgbfs_s3_requests_total", `op="ListObjectsV2"`))
	}

	// A re-read the cache holds: hits, no GET. The kernel's page cache
	// is dropped so the reads reach bgbfs.
	dropPageCache(t)
	proxy.Reset()
	before = scrapeMetrics(t, addr)
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("re-reading %s: %d bytes, %v", name, len(got), err)
	}
	after = scrapeMetrics(t, addr)
	if c := proxy.Counts(); c.GetObject != 0 {
		t.Errorf("a re-read within the cache made %d GETs", c.GetObject)
	}
	if after.Sum("bgbfs_cache_hits_total") <= before.Sum("bgbfs_cache_hits_total") {
		t.Errorf("bgbfs_cache_hits_total did not grow on a re-read from the cache (%v)", after.Sum("bgbfs_cache_hits_total"))
	}
	if fuseOps(after, "read") <= fuseOps(before, "read") {
		t.Errorf("the re-read did not reach bgbfs (no FUSE read counted): the test did not test the cache")
	}

	// Open files: 1 while held, back to 0 after close (the kernel sends
	// RELEASE asynchronously, hence the wait).
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var openHeld float64
	pollUntil(5*time.Second, func() bool {
		openHeld = scrapeMetrics(t, addr).Sum("bgbfs_open_files")
		return openHeld == 1
	})
	if openHeld != 1 {
		t.Errorf("bgbfs_open_files = %v while one file is open, want 1", openHeld)
	}
	if s := scrapeStats(t, addr)["open_files"]; s != 1 {
		t.Errorf("/stats open_files = %v while one file is open, want 1", s)
	}
	if _, err := io.ReadFull(f, make([]byte, 100)); err != nil {
		t.Errorf("reading the held file: %v", err)
	}
	f.Close()
	var openAfter float64
	pollUntil(5*time.Second, func() bool {
		openAfter = scrapeMetrics(t, addr).Sum("bgbfs_open_files")
		return openAfter == 0
	})
	if openAfter != 0 {
		t.Errorf("bgbfs_open_files = %v 5 s after the last close, want 0", openAfter)
	}
	if t.Failed() {
		t.Logf("proxy requests:\n%s", testbed.FormatRequests(proxy.Requests(), 50))
	}
}

// TestMetricsAddrBusy checks a --metrics-addr already in use fails the
// start with one line naming it, with nothing mounted.
func TestMetricsAddrBusy(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	mp := newMountpoint(t)
	cleanupMountpoint(t, mp)
	mountsBefore := bgbfsMounts(t)
	for _, daemon := range []bool{false, true} {
		t.Run(fmt.Sprintf("daemon=%v", daemon), func(t *testing.T) {
			args := []string{"mount"}
			if daemon {
				args = append(args, "--daemon")
			}
			args = slices.Concat(args, endpointArgs(srv.Endpoint), []string{"--metrics-addr", addr, d.Source(), mp})
			res := testbed.Run(env.bgbfs, args, testbed.CleanEnv(rootCreds(srv)), 2*failFastLimit)
			t.Logf("bgbfs %s: exit %d after %v; stderr %q", strings.Join(args, " "), res.ExitCode, res.Elapsed.Round(time.Millisecond), res.Stderr)
			if res.ExitCode == 0 {
				t.Errorf("exit status 0 with --metrics-addr %s in use, want non-zero", addr)
			}
			if res.TimedOut || res.Elapsed >= failFastLimit {
				t.Errorf("took %v, want under %v", res.Elapsed, failFastLimit)
			}
			checkOneErrorLine(t, res.Stderr, "metrics-addr")
			requireNotMounted(t, mp)
			requireNoDaemon(t, mp, 2*time.Second)
			if added := addedMounts(bgbfsMounts(t), mountsBefore); len(added) > 0 {
				t.Errorf("fuse.bgbfs mounts %v appeared (before: %v)", added, mountsBefore)
			}
		})
	}
}
