package s3backend

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the S3 side's Prometheus metrics.
type Metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	retries  prometheus.Counter
	bytes    prometheus.Counter
}

// NewMetrics registers the S3 metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgbfs_s3_requests_total",
			Help: "S3 requests by operation and outcome, each counted once however often it was retried.",
		}, []string{"op", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bgbfs_s3_request_duration_seconds",
			Help:    "Time from the start of an S3 request to its end, retries and body transfer included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"op"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgbfs_s3_retries_total",
			Help: "HTTP attempts beyond the first: retries of throttling, 5xx, connection errors and stalled attempts, and resumed bodies.",
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgbfs_s3_bytes_fetched_total",
			Help: "Object bytes received from S3.",
		}),
	}
	reg.MustRegister(m.requests, m.latency, m.retries, m.bytes)
	return m
}

// InstrumentedStore records every request that passes through it to the
// store below in Metrics.
type InstrumentedStore struct {
	next ObjectStore
	m    *Metrics
}

// Instrument wraps next.
func Instrument(next ObjectStore, m *Metrics) *InstrumentedStore {
	return &InstrumentedStore{next: next, m: m}
}

// List implements ObjectStore.
func (s *InstrumentedStore) List(ctx context.Context, req ListRequest) (ListPage, error) {
	start := time.Now()
	page, err := s.next.List(ctx, req)
	s.record("ListObjectsV2", start, err)
	return page, err
}

// ReadAt implements ObjectStore.
func (s *InstrumentedStore) ReadAt(ctx context.Context, v Version, off int64, bufs ...[]byte) (int, error) {
	start := time.Now()
	n, err := s.next.ReadAt(ctx, v, off, bufs...)
	s.m.bytes.Add(float64(n))
	recorded := err
	if err == io.EOF {
		recorded = nil // the end of the object, read up to it
	}
	s.record("GetObject", start, recorded)
	return n, err
}

func (s *InstrumentedStore) record(op string, start time.Time, err error) {
	s.m.latency.WithLabelValues(op).Observe(time.Since(start).Seconds())
	s.m.requests.WithLabelValues(op, outcome(err)).Inc()
}

func outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	case errors.Is(err, ErrStale):
		return "stale"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrAccessDenied), errors.Is(err, ErrBadCredentials), errors.Is(err, ErrNoCredentials):
		return "denied"
	case errors.Is(err, ErrUnreachable):
		return "unreachable"
	}
	return "error"
}
