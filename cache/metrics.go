package cache

import "github.com/prometheus/client_golang/prometheus"

// RegisterMetrics registers the block cache's counters with reg, each
// read from Stats when scraped.
func (c *BlockCache) RegisterMetrics(reg prometheus.Registerer) {
	RegisterStats(reg, c.Stats,
		Counter("bgbfs_cache_hits_total", "Blocks a read found cached, held by read-ahead, or already being fetched.", func(s Stats) int64 { return s.Hits }),
		Counter("bgbfs_cache_misses_total", "Blocks a read had to fetch.", func(s Stats) int64 { return s.Misses }),
		Counter("bgbfs_cache_evictions_total", "Blocks dropped from the cache to make room.", func(s Stats) int64 { return s.Evictions }),
		Gauge("bgbfs_cache_bytes", "Bytes of cached blocks.", func(s Stats) int64 { return s.BytesCached }),
		Gauge("bgbfs_readahead_bytes", "Bytes read-ahead holds beyond the cached blocks.", func(s Stats) int64 { return s.BytesAhead }),
		Counter("bgbfs_readahead_fetched_bytes_total", "Bytes read-ahead asked S3 for.", func(s Stats) int64 { return s.FetchedAhead }),
	)
}

// RegisterMetrics registers the disk tier's counters with reg, each read
// from Stats when scraped.
func (t *DiskTier) RegisterMetrics(reg prometheus.Registerer) {
	RegisterStats(reg, t.Stats,
		Counter("bgbfs_disk_hits_total", "Blocks read from --cache-dir instead of S3.", func(s DiskStats) int64 { return s.Hits }),
		Counter("bgbfs_disk_misses_total", "Blocks not in --cache-dir, fetched from S3.", func(s DiskStats) int64 { return s.Misses }),
		Counter("bgbfs_disk_written_bytes_total", "Block bytes written to --cache-dir.", func(s DiskStats) int64 { return s.BytesWritten }),
		Counter("bgbfs_disk_writes_skipped_total", "Blocks fetched but not written to --cache-dir (backlog full, dir full of files in use, or its writes paused).", func(s DiskStats) int64 { return s.WritesSkipped }),
		Counter("bgbfs_disk_checksum_failures_total", "Damage found in --cache-dir (object files not whole, units failing their CRC-32C), dropped and fetched again.", func(s DiskStats) int64 { return s.ChecksumFailures }),
		Counter("bgbfs_disk_evictions_total", "Files this process removed from --cache-dir (least recently used, or damaged).", func(s DiskStats) int64 { return s.Evictions }),
		Gauge("bgbfs_disk_bytes", "Disk space the files of --cache-dir take (blocks and indexes), as this process last summed it plus its writes since.", func(s DiskStats) int64 { return s.BytesUsed }),
	)
}

// ReadAheadWindows registers the histogram of read-ahead windows with reg
// and returns what Options.ObserveWindow takes to fill it. The histogram
// exists before the cache does: the cache is built with the function.
func ReadAheadWindows(reg prometheus.Registerer) func(bytes int64) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "bgbfs_readahead_window_bytes",
		Help:    "Read-ahead window of a file each time it fetches ahead.",
		Buckets: prometheus.ExponentialBuckets(256<<10, 2, 12),
	})
	reg.MustRegister(h)
	return func(n int64) { h.Observe(float64(n)) }
}

// Stat is one counter or gauge read from a component's Stats snapshot.
// The cache's own metrics are made of them, and so are those of other
// components that count in a Stats snapshot as the cache does.
type Stat[S any] struct {
	name, help string
	gauge      bool
	get        func(S) int64
}

// Counter is a counter read from a snapshot with get.
func Counter[S any](name, help string, get func(S) int64) Stat[S] {
	return Stat[S]{name: name, help: help, get: get}
}

// Gauge is a gauge read from a snapshot with get.
func Gauge[S any](name, help string, get func(S) int64) Stat[S] {
	return Stat[S]{name: name, help: help, gauge: true, get: get}
}

// RegisterStats registers each of stats with reg, read from a snapshot
// taken when scraped.
func RegisterStats[S any](reg prometheus.Registerer, snapshot func() S, stats ...Stat[S]) {
	for _, st := range stats {
		read := func() float64 { return float64(st.get(snapshot())) }
		if st.gauge {
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: st.name, Help: st.help}, read))
		} else {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: st.name, Help: st.help}, read))
		}
	}
}
