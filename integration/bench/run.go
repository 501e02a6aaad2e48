package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// S3-like network: what a cloud machine sees of S3, roughly.
const (
	s3Latency    = 20 * time.Millisecond
	s3ConnRate   = 90e6 // bytes per second per connection
	smallCacheMB = 256
)

type bench struct {
	cfg      config
	repoRoot string
	bin      string
	work     string
	srv      *testbed.MinIO
	ds       *dataset
	counting *testbed.CountingProxy
	rows     []row
	cleanups []func()
	npz      *npzSet // workload h's archives, once made
	amp      *ampSet // workload j's archives, once listed
	// Workload l's directory is uploaded once per run.
	bigDirReady   bool
	bigDirResults []bigDirResult
	eeg           *eegSet   // workload i's archives and their MinIO, once made
	small         *smallSet // workload n's archives and their MinIO, once made

	// disk is workload k's disk counters, once run.
	disk *diskSet
	// inflate is workload inflate's stream and figures, once run.
	inflate *inflateSet
	// dirScale is workload m's results, by layout.
	dirScale []dirScaleResult
}

// row is one measurement of one workload on one system under one profile.
type row struct {
	workload, profile, system string
	m                         measurement
	gets, fetched, rss        int64
	lists                     int64
	err                       string
}

func (b *bench) repo() string { return b.repoRoot }

func (b *bench) cleanup() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
}

func (b *bench) wants(workload string) bool { return slices.Contains(b.cfg.workloads, workload) }

func (b *bench) runAll(ctx context.Context) error {
	counting, err := testbed.NewCountingProxy(b.srv.Endpoint)
	if err != nil {
		return err
	}
	b.counting = counting
	b.cleanups = append(b.cleanups, func() { counting.Close() })
	b.runLocal(ctx)
	b.runInflate(ctx)
	for _, profile := range b.cfg.profiles {
		endpoint := counting.URL
		if profile == "s3like" {
			shaper, err := testbed.NewShapingProxy(counting.URL, s3Latency, s3ConnRate)
			if err != nil {
				return err
			}
			b.cleanups = append(b.cleanups, func() { shaper.Close() })
			endpoint = shaper.URL
		}
		for _, system := range b.cfg.systems {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			switch system {
			case "raw":
				b.runRaw(ctx, profile, endpoint)
			case "bgbfs":
				b.runMounted(ctx, profile, "bgbfs", "bgbfs", endpoint, nil, "a", "b", "c", "d", "e", "f", "g")
				small := []string{"--cache-size", fmt.Sprintf("%dMiB", smallCacheMB)}
				b.runMounted(ctx, profile, "bgbfs", fmt.Sprintf("bgbfs %dMiB cache", smallCacheMB), endpoint, small, "b", "e")
			default:
				if !slices.ContainsFunc(b.cfg.workloads, func(w string) bool { return w >= "a" && w <= "g" }) {
					continue // h and l are bgbfs's own
				}
				if _, err := exec.LookPath(system); err != nil {
					b.rows = append(b.rows, row{workload: "all", profile: profile, system: system, err: "not installed"})
					continue
				}
				b.runMounted(ctx, profile, system, system, endpoint, nil, "a", "b", "c", "d", "e", "f", "g")
			}
		}
		if slices.Contains(b.cfg.systems, "bgbfs") {
			b.runNPZView(ctx, profile, endpoint)
			b.runBigDir(ctx, profile, endpoint)
			b.runEEG(ctx, profile)
			b.runSmallIndex(ctx, profile)
			b.runAmp(ctx, profile)
			b.runDiskTier(ctx, profile, endpoint)
			b.runDirScale(ctx, profile, endpoint)
		}
	}
	return nil
}

// measure runs one workload, counting at the proxy and sampling the
// daemon's RSS (pid 0: none).
func (b *bench) measure(workload, profile, system string, pid int, f func() (measurement, error)) {
	fmt.Fprintf(os.Stderr, "bench: %s %s %s\n", profile, system, workload)
	b.counting.Reset()
	var s *testbed.RSSSampler
	if pid > 0 {
		s = testbed.SampleRSS(pid, 20*time.Millisecond)
	}
	m, err := f()
	c := b.counting.Counts()
	r := row{workload: workload, profile: profile, system: system, m: m, gets: c.GetObject, fetched: c.GetObjectBytes, lists: c.ListObjectsV2}
	if s != nil {
		r.rss, _ = s.Stop()
	}
	if err != nil {
		r.err = err.Error()
	}
	b.rows = append(b.rows, r)
}

// runMounted runs the workloads on fresh mounts of system: cold means the
// page cache dropped and the daemon new.
func (b *bench) runMounted(ctx context.Context, profile, system, label, endpoint string, extra []string, workloads ...string) {
	fresh := func(workload string, cold bool, f func(m *mounted) (measurement, error), then ...func(m *mounted)) {
		if !b.wants(workload) || !slices.Contains(workloads, workload) {
			return
		}
		m, err := b.mountSystem(ctx, system, endpoint, extra...)
		if err != nil {
			b.rows = append(b.rows, row{workload: workload, profile: profile, system: label, err: err.Error()})
			return
		}
		defer m.stop()
		if cold {
			if err := dropCaches(); err != nil {
				b.rows = append(b.rows, row{workload: workload, profile: profile, system: label, err: err.Error()})
				return
			}
		}
		b.measure(workload, profile, label, m.pid, func() (measurement, error) { return f(m) })
		for _, g := range then {
			g(m)
		}
	}
	train := func(m *mounted) string { return filepath.Join(m.mp, "train") }
	first := b.ds.files[0]
	fresh("a", true, func(m *mounted) (measurement, error) {
		start := time.Now()
		n, err := readFile(filepath.Join(train(m), first))
		return mbps(n, time.Since(start)), err
	}, func(m *mounted) {
		if slices.Contains(workloads, "c") && b.wants("c") {
			b.measure("c", profile, label, m.pid, func() (measurement, error) {
				start := time.Now()
				n, err := readFile(filepath.Join(train(m), first))
				return mbps(n, time.Since(start)), err
			})
		}
	})
	fresh("b", true, func(m *mounted) (measurement, error) {
		var paths []string
		for _, f := range b.ds.files[:8] {
			paths = append(paths, filepath.Join(train(m), f))
		}
		start := time.Now()
		n, err := readFiles(paths)
		return mbps(n, time.Since(start)), err
	})
	fresh("d", true, func(m *mounted) (measurement, error) { return b.randomReads(train(m), b.cfg.randomReads) })
	fresh("e", true, func(m *mounted) (measurement, error) { return b.trainer(ctx, train(m)) })
	fresh("f", false, func(m *mounted) (measurement, error) { return listLong(ctx, filepath.Join(m.mp, "many")) })
	fresh("g", true, func(m *mounted) (measurement, error) { return firstByte(filepath.Join(train(m), b.ds.files[1])) })
}

// runLocal measures the local copy: the reference for c and e.
func (b *bench) runLocal(ctx context.Context) {
	first := filepath.Join(b.ds.local, b.ds.files[0])
	if b.wants("a") {
		_ = dropCaches()
		b.measure("a", "local", "local disk", 0, func() (measurement, error) {
			start := time.Now()
			n, err := readFile(first)
			return mbps(n, time.Since(start)), err
		})
	}
	if b.wants("c") {
		_, _ = readFile(first)
		b.measure("c", "local", "local disk", 0, func() (measurement, error) {
			start := time.Now()
			n, err := readFile(first)
			return mbps(n, time.Since(start)), err
		})
	}
	if b.wants("e") {
		_ = dropCaches()
		b.measure("e", "local", "local disk", 0, func() (measurement, error) { return b.trainer(ctx, b.ds.local) })
	}
}

// runRaw measures the SDK directly: parallel ranged GETs, no FUSE.
func (b *bench) runRaw(ctx context.Context, profile, endpoint string) {
	raw := &rawClient{s3: testbed.NewS3Admin(endpoint, b.srv.AccessKey, b.srv.SecretKey).Client, bucket: b.ds.bucket}
	first := b.ds.files[0]
	if b.wants("a") {
		b.measure("a", profile, "raw S3", 0, func() (measurement, error) {
			start := time.Now()
			n, err := raw.readObjects(ctx, []string{b.ds.key(first)}, []int64{b.ds.sizes[first]}, 16)
			return mbps(n, time.Since(start)), err
		})
	}
	if b.wants("b") {
		b.measure("b", profile, "raw S3", 0, func() (measurement, error) {
			var keys []string
			var sizes []int64
			for _, f := range b.ds.files[:8] {
				keys, sizes = append(keys, b.ds.key(f)), append(sizes, b.ds.sizes[f])
			}
			start := time.Now()
			n, err := raw.readObjects(ctx, keys, sizes, 32)
			return mbps(n, time.Since(start)), err
		})
	}
	if b.wants("d") {
		b.measure("d", profile, "raw S3", 0, func() (measurement, error) { return raw.randomReads(ctx, b.ds, b.cfg.randomReads) })
	}
	if b.wants("f") {
		b.measure("f", profile, "raw S3", 0, func() (measurement, error) { return raw.list(ctx, b.ds.prefix+"many/") })
	}
	if b.wants("g") {
		b.measure("g", profile, "raw S3", 0, func() (measurement, error) { return raw.firstByte(ctx, b.ds.key(b.ds.files[1])) })
	}
}
