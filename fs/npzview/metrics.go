package npzview

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgbfs/bgbfs/cache"
)

// RegisterMetrics registers the view's index counters with reg, each read
// from Stats when scraped.
func (v *View) RegisterMetrics(reg prometheus.Registerer) {
	cache.RegisterStats(reg, v.Stats,
		cache.Counter("bgbfs_npz_index_builds_total", "Compressed .npz members inflated whole to index them.", func(s Stats) int64 { return s.IndexBuilds }),
		cache.Counter("bgbfs_npz_index_build_errors_total", "Index builds that failed (corrupt member, or S3 errors).", func(s Stats) int64 { return s.IndexBuildErrors }),
		cache.Counter("bgbfs_npz_index_hits_total", "Reads of compressed members that found their index built.", func(s Stats) int64 { return s.IndexHits }),
		cache.Gauge("bgbfs_npz_index_bytes", "Memory of the member indexes held.", func(s Stats) int64 { return s.IndexBytes }),
		cache.Counter("bgbfs_npz_index_loads_total", "Member indexes read from --cache-dir instead of built.", func(s Stats) int64 { return s.IndexLoads }),
		cache.Counter("bgbfs_npz_index_saves_total", "Member indexes written to --cache-dir.", func(s Stats) int64 { return s.IndexSaves }),
		cache.Counter("bgbfs_npz_member_reads_total", "Reads of member files (one per FUSE read).", func(s Stats) int64 { return s.MemberReads }),
		cache.Counter("bgbfs_npz_returned_bytes_total", "Bytes of compressed members returned by reads of member files.", func(s Stats) int64 { return s.ReturnedBytes }),
		cache.Counter("bgbfs_npz_inflated_bytes_total", "Bytes inflated to answer reads of compressed members, from the access point before each read.", func(s Stats) int64 { return s.InflatedBytes }),
		cache.Counter("bgbfs_npz_index_inflated_bytes_total", "Bytes inflated by index builds (whole members).", func(s Stats) int64 { return s.IndexInflatedBytes }),
		cache.Counter("bgbfs_npz_decoded_hits_total", "Reads of compressed members answered from their decoded content in --cache-dir (no fetch, no inflating).", func(s Stats) int64 { return s.Decoded.Hits }),
		cache.Counter("bgbfs_npz_decoded_read_bytes_total", "Bytes of compressed members read from their decoded content in --cache-dir.", func(s Stats) int64 { return s.Decoded.HitBytes }),
		cache.Counter("bgbfs_npz_decoded_written_bytes_total", "Decoded bytes of compressed members written to --cache-dir.", func(s Stats) int64 { return s.Decoded.BytesWritten }),
		cache.Counter("bgbfs_npz_decoded_writes_skipped_total", "Writes of decoded bytes to --cache-dir not made (backlog full, dir full or paused).", func(s Stats) int64 { return s.Decoded.WritesSkipped }),
		cache.Counter("bgbfs_npz_decoded_verified_total", "Complete decoded members in --cache-dir checked whole against their CRC-32, then read by the kernel directly (FUSE passthrough).", func(s Stats) int64 { return s.Decoded.Verified }),
		cache.Counter("bgbfs_npz_decoded_stamps_trusted_total", "Of the decoded members verified, those a mount of this boot had checked and that have not changed since (their check not repeated).", func(s Stats) int64 { return s.Decoded.StampsTrusted }),
		cache.Counter("bgbfs_npz_decoded_verify_failed_total", "Complete decoded members in --cache-dir that failed the check against their CRC-32 (removed, and inflated again).", func(s Stats) int64 { return s.Decoded.VerifyFailed }),
		cache.Counter("bgbfs_npz_decoded_damaged_total", "Decoded files or units in --cache-dir found damaged (dropped, and inflated again).", func(s Stats) int64 { return s.Decoded.Damaged }),
		cache.Counter("bgbfs_npz_index_files_ignored_total", "Index files in --cache-dir not trusted (corrupt, truncated, another format or archive version) and built again.", func(s Stats) int64 { return s.IndexFilesIgnored }),
	)
}
