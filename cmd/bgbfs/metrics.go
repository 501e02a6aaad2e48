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

// daemonMetrics are the metrics a daemon's components are built with. The
// block cache, the disk tier and the member view register theirs once
// built, with the same Registerer.
type daemonMetrics struct {
	s3              *s3backend.Metrics
	fuse            *bgfs.Metrics
	readAheadWindow func(bytes int64)
}

// newDaemonMetrics registers with reg the process's metrics and those the
// components are built with.
func newDaemonMetrics(reg prometheus.Registerer) daemonMetrics {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return daemonMetrics{
		s3:              s3backend.NewMetrics(reg),
		fuse:            bgfs.NewMetrics(reg),
		readAheadWindow: cache.ReadAheadWindows(reg),
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
	{"npz_member_reads", "bgbfs_npz_member_reads_total", nil},
	{"npz_returned_bytes", "bgbfs_npz_returned_bytes_total", nil},
	{"npz_inflated_bytes", "bgbfs_npz_inflated_bytes_total", nil},
	{"npz_index_inflated_bytes", "bgbfs_npz_index_inflated_bytes_total", nil},
	{"npz_decoded_hits", "bgbfs_npz_decoded_hits_total", nil},
	{"npz_decoded_read_bytes", "bgbfs_npz_decoded_read_bytes_total", nil},
	{"npz_decoded_written_bytes", "bgbfs_npz_decoded_written_bytes_total", nil},
	{"npz_decoded_writes_skipped", "bgbfs_npz_decoded_writes_skipped_total", nil},
	{"npz_decoded_damaged", "bgbfs_npz_decoded_damaged_total", nil},
	{"npz_decoded_verified", "bgbfs_npz_decoded_verified_total", nil},
	{"npz_decoded_stamps_trusted", "bgbfs_npz_decoded_stamps_trusted_total", nil},
	{"npz_decoded_verify_failed", "bgbfs_npz_decoded_verify_failed_total", nil},
	{"npz_passthrough_opens", "bgbfs_npz_passthrough_opens_total", nil},
}

func eq(want string) func(string) bool { return func(v string) bool { return v == want } }

// writeStats renders the main counters of g as "name value" lines, for
// people and scripts that do not speak Prometheus.
func writeStats(g prometheus.Gatherer, w http.ResponseWriter) {
	families, err := g.Gather()
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

// serveMetrics serves the metrics of g on addr: /metrics (Prometheus) and
// /stats (plain). It returns a function that stops the server.
func serveMetrics(addr string, g prometheus.Gatherer, logger *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) { writeStats(g, w) })
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
