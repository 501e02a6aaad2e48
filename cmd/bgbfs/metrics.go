package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/bgbfs/bgbfs/cache"
	bgfs "github.com/bgbfs/bgbfs/fs"
	"github.com/bgbfs/bgbfs/fs/npzview"
	"github.com/bgbfs/bgbfs/s3backend"
)

// daemonMetrics is every metric of one daemon, in one registry.
type daemonMetrics struct {
	reg     *namedRegistry
	s3      *s3backend.Metrics
	fuse    *bgfs.Metrics
	windows prometheus.Histogram
}

func newDaemonMetrics() *daemonMetrics {
	reg := &namedRegistry{Registry: prometheus.NewRegistry()}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &daemonMetrics{
		reg:  reg,
		s3:   s3backend.NewMetrics(reg),
		fuse: bgfs.NewMetrics(reg),
		windows: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bgbfs_readahead_window_bytes",
			Help:    "Read-ahead window of a file each time it fetches ahead.",
			Buckets: prometheus.ExponentialBuckets(256<<10, 2, 12),
		}),
	}
	reg.MustRegister(m.windows)
	return m
}

// namedRegistry is a registry that can list the names of the metrics
// registered, samples or not: README's table of them is tested against it.
type namedRegistry struct {
	*prometheus.Registry
	mu         sync.Mutex
	collectors []prometheus.Collector
}

func (r *namedRegistry) Register(c prometheus.Collector) error {
	if err := r.Registry.Register(c); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.collectors = append(r.collectors, c)
	return nil
}

func (r *namedRegistry) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// fqName finds a metric's name in its description, which has no getter.
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// names returns the names of the metrics registered, sorted.
func (r *namedRegistry) names() []string {
	r.mu.Lock()
	collectors := slices.Clone(r.collectors)
	r.mu.Unlock()
	descs := make(chan *prometheus.Desc)
	go func() {
		for _, c := range collectors {
			c.Describe(descs)
		}
		close(descs)
	}()
	var out []string
	for d := range descs {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			out = append(out, m[1])
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// watchCache exposes the block cache's own counters.
func (m *daemonMetrics) watchCache(blocks *cache.BlockCache) {
	registerStats(m.reg, blocks.Stats,
		stat[cache.Stats]{"bgbfs_cache_hits_total", "Blocks a read found cached, held by read-ahead, or already being fetched.", false, func(s cache.Stats) int64 { return s.Hits }},
		stat[cache.Stats]{"bgbfs_cache_misses_total", "Blocks a read had to fetch.", false, func(s cache.Stats) int64 { return s.Misses }},
		stat[cache.Stats]{"bgbfs_cache_evictions_total", "Blocks dropped from the cache to make room.", false, func(s cache.Stats) int64 { return s.Evictions }},
		stat[cache.Stats]{"bgbfs_cache_bytes", "Bytes of cached blocks.", true, func(s cache.Stats) int64 { return s.BytesCached }},
		stat[cache.Stats]{"bgbfs_readahead_bytes", "Bytes read-ahead holds beyond the cached blocks.", true, func(s cache.Stats) int64 { return s.BytesAhead }},
		stat[cache.Stats]{"bgbfs_readahead_fetched_bytes_total", "Bytes read-ahead asked S3 for.", false, func(s cache.Stats) int64 { return s.FetchedAhead }},
	)
}

// watchDisk exposes the disk tier's counters.
func (m *daemonMetrics) watchDisk(t *cache.DiskTier) {
	registerStats(m.reg, t.Stats,
		stat[cache.DiskStats]{"bgbfs_disk_hits_total", "Blocks read from --cache-dir instead of S3.", false, func(s cache.DiskStats) int64 { return s.Hits }},
		stat[cache.DiskStats]{"bgbfs_disk_misses_total", "Blocks not in --cache-dir, fetched from S3.", false, func(s cache.DiskStats) int64 { return s.Misses }},
		stat[cache.DiskStats]{"bgbfs_disk_written_bytes_total", "Block bytes written to --cache-dir.", false, func(s cache.DiskStats) int64 { return s.BytesWritten }},
		stat[cache.DiskStats]{"bgbfs_disk_writes_skipped_total", "Blocks fetched but not written to --cache-dir (backlog full, dir full of files in use, or its writes paused).", false, func(s cache.DiskStats) int64 { return s.WritesSkipped }},
		stat[cache.DiskStats]{"bgbfs_disk_checksum_failures_total", "Damage found in --cache-dir (object files not whole, units failing their CRC-32C), dropped and fetched again.", false, func(s cache.DiskStats) int64 { return s.ChecksumFailures }},
		stat[cache.DiskStats]{"bgbfs_disk_evictions_total", "Files this process removed from --cache-dir (least recently used, or damaged).", false, func(s cache.DiskStats) int64 { return s.Evictions }},
		stat[cache.DiskStats]{"bgbfs_disk_bytes", "Disk space the files of --cache-dir take (blocks and indexes), as this process last summed it plus its writes since.", true, func(s cache.DiskStats) int64 { return s.BytesUsed }},
	)
}

// watchNPZ exposes the member view's index counters.
func (m *daemonMetrics) watchNPZ(v *npzview.View) {
	registerStats(m.reg, v.Stats,
		stat[npzview.Stats]{"bgbfs_npz_index_builds_total", "Compressed .npz members inflated whole to index them.", false, func(s npzview.Stats) int64 { return s.IndexBuilds }},
		stat[npzview.Stats]{"bgbfs_npz_index_build_errors_total", "Index builds that failed (corrupt member, or S3 errors).", false, func(s npzview.Stats) int64 { return s.IndexBuildErrors }},
		stat[npzview.Stats]{"bgbfs_npz_index_hits_total", "Reads of compressed members that found their index built.", false, func(s npzview.Stats) int64 { return s.IndexHits }},
		stat[npzview.Stats]{"bgbfs_npz_index_bytes", "Memory of the member indexes held.", true, func(s npzview.Stats) int64 { return s.IndexBytes }},
		stat[npzview.Stats]{"bgbfs_npz_index_loads_total", "Member indexes read from --cache-dir instead of built.", false, func(s npzview.Stats) int64 { return s.IndexLoads }},
		stat[npzview.Stats]{"bgbfs_npz_index_saves_total", "Member indexes written to --cache-dir.", false, func(s npzview.Stats) int64 { return s.IndexSaves }},
		stat[npzview.Stats]{"bgbfs_npz_index_files_ignored_total", "Index files in --cache-dir not trusted (corrupt, truncated, another format or archive version) and built again.", false, func(s npzview.Stats) int64 { return s.IndexFilesIgnored }},
	)
}

// stat is one counter or gauge read from a component's Stats snapshot.
type stat[S any] struct {
	name, help string
	gauge      bool
	get        func(S) int64
}

func registerStats[S any](reg prometheus.Registerer, snapshot func() S, stats ...stat[S]) {
	for _, st := range stats {
		read := func() float64 { return float64(st.get(snapshot())) }
		if st.gauge {
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: st.name, Help: st.help}, read))
		} else {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: st.name, Help: st.help}, read))
		}
	}
}

// statsLines are the plain counters of /stats: name, metric, and the
// label values a series must have to count (nil counts every series).
var statsLines = []struct {
	name, metric string
	match        map[string]func(string) bool
}{
	{"s3_list_requests", "bgbfs_s3_requests_total", map[string]func(string) bool{"op": eq("ListObjectsV2")}},
	{"s3_get_requests", "bgbfs_s3_requests_total", map[string]func(string) bool{"op": eq("GetObject")}},
	{"s3_failed_requests", "bgbfs_s3_requests_total", map[string]func(string) bool{"outcome": func(v string) bool { return v != "ok" }}},
	{"s3_retries", "bgbfs_s3_retries_total", nil},
	{"s3_bytes_fetched", "bgbfs_s3_bytes_fetched_total", nil},
	{"cache_hits", "bgbfs_cache_hits_total", nil},
	{"cache_misses", "bgbfs_cache_misses_total", nil},
	{"cache_evictions", "bgbfs_cache_evictions_total", nil},
	{"cache_bytes_held", "bgbfs_cache_bytes", nil},
	{"readahead_bytes_held", "bgbfs_readahead_bytes", nil},
	{"readahead_bytes_fetched", "bgbfs_readahead_fetched_bytes_total", nil},
	{"open_files", "bgbfs_open_files", nil},
	{"disk_hits", "bgbfs_disk_hits_total", nil},
	{"disk_misses", "bgbfs_disk_misses_total", nil},
	{"disk_written_bytes", "bgbfs_disk_written_bytes_total", nil},
	{"disk_writes_skipped", "bgbfs_disk_writes_skipped_total", nil},
	{"disk_checksum_failures", "bgbfs_disk_checksum_failures_total", nil},
	{"disk_evictions", "bgbfs_disk_evictions_total", nil},
	{"disk_bytes", "bgbfs_disk_bytes", nil},
	{"npz_index_builds", "bgbfs_npz_index_builds_total", nil},
	{"npz_index_hits", "bgbfs_npz_index_hits_total", nil},
	{"npz_index_bytes", "bgbfs_npz_index_bytes", nil},
	{"npz_index_loads", "bgbfs_npz_index_loads_total", nil},
	{"npz_index_saves", "bgbfs_npz_index_saves_total", nil},
	{"npz_index_files_ignored", "bgbfs_npz_index_files_ignored_total", nil},
}

func eq(want string) func(string) bool { return func(v string) bool { return v == want } }

// writeStats renders the main counters as "name value" lines, for people
// and scripts that do not speak Prometheus.
func (m *daemonMetrics) writeStats(w http.ResponseWriter, _ *http.Request) {
	families, err := m.reg.Gather()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for _, line := range statsLines {
		i := slices.IndexFunc(families, func(f *dto.MetricFamily) bool { return f.GetName() == line.metric })
		total := 0.0
		if i >= 0 {
			for _, series := range families[i].GetMetric() {
				if matches(series, line.match) {
					total += series.GetCounter().GetValue() + series.GetGauge().GetValue()
				}
			}
		}
		fmt.Fprintf(w, "%s %.0f\n", line.name, total)
	}
}

func matches(series *dto.Metric, match map[string]func(string) bool) bool {
	for name, ok := range match {
		i := slices.IndexFunc(series.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == name })
		if i < 0 || !ok(series.GetLabel()[i].GetValue()) {
			return false
		}
	}
	return true
}

// serve serves /metrics (Prometheus) and /stats (plain) on addr. It
// returns a function that stops the server.
func (m *daemonMetrics) serve(addr string, logger *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /stats", m.writeStats)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics server stopped", "err", err)
		}
	}()
	logger.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}
