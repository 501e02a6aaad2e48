package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/bgbfs/bgbfs/cache"
	bgfs "github.com/bgbfs/bgbfs/fs"
	"github.com/bgbfs/bgbfs/s3backend"
)

// daemonMetrics is every metric of one daemon, in one registry.
type daemonMetrics struct {
	reg     *prometheus.Registry
	s3      *s3backend.Metrics
	fuse    *bgfs.Metrics
	windows prometheus.Histogram
}

func newDaemonMetrics() *daemonMetrics {
	reg := prometheus.NewRegistry()
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

// watchCache exposes the block cache's own counters.
func (m *daemonMetrics) watchCache(blocks *cache.BlockCache) {
	stat := func(f func(cache.Stats) int64) func() float64 {
		return func() float64 { return float64(f(blocks.Stats())) }
	}
	m.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "bgbfs_cache_hits_total", Help: "Blocks a read found cached, held by read-ahead, or already being fetched."},
			stat(func(s cache.Stats) int64 { return s.Hits })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "bgbfs_cache_misses_total", Help: "Blocks a read had to fetch."},
			stat(func(s cache.Stats) int64 { return s.Misses })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "bgbfs_cache_evictions_total", Help: "Blocks dropped from the cache to make room."},
			stat(func(s cache.Stats) int64 { return s.Evictions })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "bgbfs_cache_bytes", Help: "Bytes of cached blocks."},
			stat(func(s cache.Stats) int64 { return s.BytesCached })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "bgbfs_readahead_bytes", Help: "Bytes read-ahead holds beyond the cached blocks."},
			stat(func(s cache.Stats) int64 { return s.BytesAhead })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "bgbfs_readahead_fetched_bytes_total", Help: "Bytes read-ahead asked S3 for."},
			stat(func(s cache.Stats) int64 { return s.FetchedAhead })),
	)
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
