package fs

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the filesystem side's Prometheus metrics. A nil *Metrics
// records nothing.
type Metrics struct {
	ops         *prometheus.HistogramVec
	openHandles prometheus.Gauge
	// passthroughOpens counts opens of member files the kernel reads
	// directly (FUSE passthrough).
	passthroughOpens prometheus.Counter
}

// NewMetrics registers the FUSE metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ops: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bgbfs_fuse_operation_duration_seconds",
			Help:    "Time bgbfs spent answering FUSE operations, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 18),
		}, []string{"op"}),
		openHandles: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bgbfs_open_files",
			Help: "Files open through the mount.",
		}),
		passthroughOpens: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgbfs_npz_passthrough_opens_total",
			Help: "Opens of member files whose decoded content in --cache-dir the kernel reads directly (FUSE passthrough), not through bgbfs.",
		}),
	}
	reg.MustRegister(m.ops, m.openHandles, m.passthroughOpens)
	return m
}

// observe records one operation that started at start: call it deferred.
func (m *Metrics) observe(op string, start time.Time) {
	if m != nil {
		m.ops.WithLabelValues(op).Observe(time.Since(start).Seconds())
	}
}

func (m *Metrics) opened(delta float64) {
	if m != nil {
		m.openHandles.Add(delta)
	}
}

func (m *Metrics) passthroughOpened() {
	if m != nil {
		m.passthroughOpens.Inc()
	}
}
