package npzview

// Where access points go and how far reads are fetched ahead follow from
// how the kernel reads a member file that a loader maps: around the page
// the loader touches, half its read-ahead before it, and on past the row.
// "bgbfs index" places access points by the same rules as a mount, so
// that a mount can use the indexes it writes.

const (
	// defaultKernelReadAhead is the kernel's own read-ahead, used until
	// the mount says it set another (View.SetKernelReadAhead).
	defaultKernelReadAhead = 128 << 10
	pageSize               = 4096
)

// IndexPlacement is how an index's access points were placed: the span
// and the row lead BuildIndex was given. "bgbfs index" skips archives
// indexed with the placement it would use.
type IndexPlacement struct {
	Span, RowLead int64
}

// RowLead is where an index puts each row's access point for a mount
// whose kernel read-ahead is kernelReadAhead: where the kernel's first
// read of the row starts (half its read-ahead before the page a loader
// touches), and two pages more, so that reading a window inflates from
// just before it.
func RowLead(kernelReadAhead int64) int64 { return kernelReadAhead/2 + 2*pageSize }

// SetKernelReadAhead tells the view the kernel's read-ahead on the mount
// (what --kernel-read-ahead set, or the kernel's 128 KiB if it could not
// be set): it places access points and fetches for windows by it.
func (v *View) SetKernelReadAhead(bytes int64) {
	if bytes > 0 {
		v.kernelReadAhead.Store(bytes)
	}
}

// rowLead is RowLead for the mount's kernel read-ahead.
func (v *View) rowLead() int64 { return RowLead(v.kernelReadAhead.Load()) }

// kernelOvershoot is how far past the end of what a loader touches the
// kernel reads on: its read-ahead plus the pages its reads are out of
// step with the row by (measured 264-268 KiB past a row's end with
// mmap_mode="r" and a read-ahead of 256 KiB), with room to spare.
func (v *View) kernelOvershoot() int64 { return v.kernelReadAhead.Load() + 64<<10 }
