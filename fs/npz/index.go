package npz

import (
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"sort"
	"unsafe"
)

// DefaultSpan is the output distance between access points BuildIndex
// uses for a span of 0: a read then inflates little more than 1 MiB it
// does not return, and an 85 MB member costs about 2.7 MB of windows.
const DefaultSpan = 1 << 20

const (
	// BuildIndex reads the compressed data in large chunks: through the
	// block cache and read-ahead, few large reads are cheapest.
	buildReadSize = 4 << 20
	// Output is produced in chunks this large between slides of the
	// 32 KiB history.
	outSpace = 256 << 10
	// ReadAt's first read is its estimate of what it needs plus this
	// margin; if that falls short it reads on in readChunk steps,
	// never past the next access point.
	readMargin = 16 << 10
	readChunk  = 256 << 10
	// headKeep is how much of the start of the content an index keeps:
	// numpy reads an array's header on every open (the kernel asks for
	// 64 KiB when st_blksize is 16 KiB), and keeping it saves a fetch
	// and an inflate per open.
	headKeep = 64 << 10
)

// Index gives random access to a deflated member's content. It holds the
// access points found by BuildIndex and nothing tied to a reader, so it
// can outlive the reader it was built from and serve any reader of the
// same archive. It is read-only: ReadAt may be called concurrently.
type Index struct {
	member  Member
	dataOff int64
	points  []point // sorted by out; points[0] is the stream start
	head    []byte  // the first headKeep bytes of the content (fewer if shorter)
	memory  int64
}

// point is a block boundary: the decoder state there is just the
// position and the window.
type point struct {
	out    int64  // uncompressed offset
	bit    int64  // offset in the compressed stream, in bits
	window []byte // the min(out, 32 KiB) bytes of output before out
}

// BuildIndex inflates the deflated member m of r once, reading its
// compressed data sequentially in 4 MiB reads, and records an access
// point at the first block boundary at least span bytes of output after
// the previous one (DefaultSpan if span <= 0). Block boundaries are the
// only places where the decoder's state is just the window; zlib's
// blocks hold 16-100 KiB of output, so points land a little past every
// span. It checks the content's size and CRC-32 against the directory
// (errors wrap ErrChecksum) and returns errors wrapping ErrCorrupt for
// an undecodable stream.
//
// If rowLead > 0 and the member is an .npy array whose rows are from half
// a span to four spans long, the points go instead at the last block
// boundary at least rowLead before each row's start: a reader of one row
// (one training window) then inflates from just before it, instead of
// from wherever the last point fell, on average half a span earlier.
func BuildIndex(r io.ReaderAt, m Member, span, rowLead int64) (*Index, error) {
	if m.Method != Deflated {
		return nil, fmt.Errorf("%w: %q is not deflated (method %d)", ErrUnsupported, m.Name, m.Method)
	}
	off, err := m.DataOffset(r)
	if err != nil {
		return nil, err
	}
	x, err := buildIndex(r, m, off, span, rowLead)
	if err != nil {
		return nil, fmt.Errorf("indexing %q: %w", m.Name, err)
	}
	return x, nil
}

// buildIndex indexes the stream of m that starts at archive offset off.
func buildIndex(r io.ReaderAt, m Member, off, span, rowLead int64) (*Index, error) {
	if span <= 0 {
		span = DefaultSpan
	}
	f := newInflater(r, off, m.CompressedSize, int(min(outSpace, m.UncompressedSize+1)), buildReadSize, buildReadSize)
	x := &Index{member: m, dataOff: off, points: []point{{}}}
	rows := rowPoints{lead: rowLead, span: span, checked: rowLead <= 0}
	var base int64 // uncompressed offset of f.out[0]
	done := 0      // f.out[:done] has been checksummed
	var crc uint32
	stop := f.stopMax()
	for f.state != streamDone {
		if f.state == atHeader && !f.final {
			rows.boundary(x, f, base+int64(f.w))
		}
		if f.w >= stop {
			x.keepHead(base, f.out[done:f.w], done)
			crc = crc32.Update(crc, crc32.IEEETable, f.out[done:f.w])
			base += int64(f.slide())
			done = f.w
		}
		if err := f.step(stop); err != nil {
			return nil, err
		}
		if base+int64(f.w) > m.UncompressedSize {
			return nil, fmt.Errorf("%w: content is longer than the %d bytes in the directory", ErrChecksum, m.UncompressedSize)
		}
	}
	x.keepHead(base, f.out[done:f.w], done)
	crc = crc32.Update(crc, crc32.IEEETable, f.out[done:f.w])
	if n := base + int64(f.w); n != m.UncompressedSize {
		return nil, fmt.Errorf("%w: content is %d bytes, the directory says %d", ErrChecksum, n, m.UncompressedSize)
	}
	if crc != m.CRC32 {
		return nil, fmt.Errorf("%w: content has CRC-32 %08x, the directory says %08x", ErrChecksum, crc, m.CRC32)
	}
	x.points = slices.Clip(x.points)
	x.head = slices.Clip(x.head)
	x.memory = int64(unsafe.Sizeof(*x)) + int64(len(m.Name)) + int64(cap(x.points))*int64(unsafe.Sizeof(point{})) + int64(cap(x.head))
	for _, p := range x.points {
		x.memory += int64(cap(p.window))
	}
	return x, nil
}

// rowPoints places access points during BuildIndex: every span bytes of
// output, or, once the .npy header is known and its rows suit, just
// before each row.
type rowPoints struct {
	lead, span int64
	checked    bool // the header has been looked at
	on         bool // points go before rows
	layout     NPYLayout
	next       int64 // the row whose point comes next
	// cand is the latest block boundary at most lead before row next's
	// start and not far before it; candWindow holds its window.
	cand       point
	candWindow []byte
}

// candidateZone is how far before a row's target a block boundary is
// still kept as a candidate: zlib's blocks hold 16-100 KiB of output.
const candidateZone = 256 << 10

// start looks for the .npy header at the start of the content, head; a
// failure is final only once head is as long as it will be (last).
func (p *rowPoints) start(head []byte, last bool) {
	l, err := ParseNPYHeader(head)
	if err != nil && !last && len(head) < headKeep {
		return // maybe just not all there yet
	}
	p.checked = true
	if err != nil || l.RowBytes < p.span/2 || l.RowBytes > 4*p.span || l.Rows < 2 {
		return
	}
	p.on, p.layout, p.next = true, l, 1
}

// target is where the point before row i should be at most.
func (p *rowPoints) target(i int64) int64 {
	return p.layout.DataOffset + i*p.layout.RowBytes - p.lead
}

// boundary considers the block boundary at content offset pos, where f
// stands.
func (p *rowPoints) boundary(x *Index, f *inflater, pos int64) {
	if !p.checked {
		// The header is in the first few KiB of output, before any span
		// ends: until the first slide, f.out holds all the output.
		if pos == int64(f.w) {
			p.start(f.out[:f.w], false)
		} else {
			p.start(x.head, true)
		}
		if !p.checked {
			return
		}
	}
	last := x.points[len(x.points)-1].out
	add := func(pt point) {
		if pt.out > last {
			x.points = append(x.points, pt)
			last = pt.out
		}
	}
	history := f.out[max(0, f.w-windowSize):f.w]
	here := func() point {
		return point{out: pos, bit: f.bitPos(), window: slices.Clone(history)}
	}
	if !p.on || p.next >= p.layout.Rows {
		// Every span; and past the last row no span longer than that.
		if pos-last >= p.span {
			add(here())
		}
		return
	}
	for p.next < p.layout.Rows && pos > p.target(p.next) {
		// Passed row next's target: its point is the last candidate,
		// or, if no boundary fell near enough before it, this one.
		if p.cand.out > last {
			add(point{out: p.cand.out, bit: p.cand.bit, window: slices.Clone(p.candWindow)})
		} else {
			add(here())
		}
		p.cand = point{}
		p.next++
	}
	if p.next >= p.layout.Rows {
		return
	}
	if pos >= p.target(p.next)-candidateZone {
		p.cand = point{out: pos, bit: f.bitPos()}
		p.candWindow = append(p.candWindow[:0], history...)
	}
}

// Span returns the stretch of content [start, end) between the access
// points around off: a ReadAt of exactly that stretch inflates nothing it
// does not return, so callers that keep what they read keep spans.
func (x *Index) Span(off int64) (start, end int64) {
	i := sort.Search(len(x.points), func(k int) bool { return x.points[k].out > off }) - 1
	start, end = x.points[max(i, 0)].out, x.member.UncompressedSize
	if i+1 < len(x.points) {
		end = x.points[i+1].out
	}
	return start, end
}

// SourceRange returns the archive bytes [off, off+n) that a ReadAt of the
// content [start, end) may read: from the access point at or before start
// to the first one at or after end.
func (x *Index) SourceRange(start, end int64) (off, n int64) {
	i := sort.Search(len(x.points), func(k int) bool { return x.points[k].out > start }) - 1
	j := sort.Search(len(x.points), func(k int) bool { return x.points[k].out >= end })
	from, to := x.points[max(i, 0)].bit/8, x.member.CompressedSize
	if j < len(x.points) {
		to = (x.points[j].bit + 7) / 8
	}
	return x.dataOff + from, to - from
}

// keepHead appends to x.head what it lacks of out, new output whose first
// byte is at content offset base+at.
func (x *Index) keepHead(base int64, out []byte, at int) {
	if pos := base + int64(at); pos == int64(len(x.head)) && pos < headKeep {
		x.head = append(x.head, out[:min(int64(len(out)), headKeep-pos)]...)
	}
}

// HeadLen is how much of the start of the content the index keeps: reads
// that end there read nothing from the archive.
func (x *Index) HeadLen() int64 { return int64(len(x.head)) }

// Head returns the start of the content the index keeps. It must not be
// modified.
func (x *Index) Head() []byte { return x.head }

// Size returns the member's uncompressed size.
func (x *Index) Size() int64 { return x.member.UncompressedSize }

// Points returns the number of access points, including the one at the
// start of the stream.
func (x *Index) Points() int { return len(x.points) }

// MemoryBytes returns the memory the index holds, almost all of it one
// 32 KiB window per access point.
func (x *Index) MemoryBytes() int64 { return x.memory }

// ReadAt reads len(p) bytes of the member's content at off from r, which
// must read the same archive the index was built from, and returns
// io.EOF if the content ends first. It inflates from the last access
// point at or before off and stops as soon as p is full; it reads the
// compressed bytes from that point on, in a first read sized by the
// local compression ratio and more only if that falls short, and never
// beyond the next access point after the end of p.
//
// Every call starts afresh from an access point: reading a range in
// small pieces (as the kernel splits FUSE reads into 128 KiB requests)
// inflates the stretch before each piece again, so callers should read
// larger ranges and keep them.
func (x *Index) ReadAt(r io.ReaderAt, p []byte, off int64) (int, error) {
	q, eof := clip(p, off, x.member.UncompressedSize)
	if len(q) == 0 {
		return 0, eof
	}
	if end := off + int64(len(q)); end <= int64(len(x.head)) {
		return copy(q, x.head[off:end]), eof
	}
	n, err := x.read(r, q, off)
	if err != nil {
		return n, fmt.Errorf("reading %q at %d: %w", x.member.Name, off, err)
	}
	return n, eof
}

func (x *Index) read(r io.ReaderAt, q []byte, off int64) (int, error) {
	end := off + int64(len(q))
	i := sort.Search(len(x.points), func(k int) bool { return x.points[k].out > off }) - 1
	j := sort.Search(len(x.points), func(k int) bool { return x.points[k].out >= end })
	pt := x.points[i]
	limit := x.member.CompressedSize // stream bytes this read may need
	cin, cout := limit-pt.bit/8, x.member.UncompressedSize-pt.out
	if j < len(x.points) {
		limit = (x.points[j].bit + 7) / 8
		cin, cout = limit-pt.bit/8, x.points[j].out-pt.out
	}
	need := end - pt.out
	first := int64(float64(cin)*float64(need)/float64(cout)) + readMargin
	first = min(first, limit-pt.bit/8, buildReadSize) // a huge p is read in chunks, not one buffer

	f := newInflater(r, x.dataOff, limit, int(min(need, outSpace)), int(first), readChunk)
	if err := f.seek(pt.bit, pt.window); err != nil {
		return 0, err
	}
	base := pt.out - int64(f.w) // uncompressed offset of f.out[0]
	done := f.w                 // f.out[:done] is history or already copied
	n := 0
	for {
		if err := f.step(int(min(int64(f.stopMax()), end-base))); err != nil {
			return n, err
		}
		if lo, hi := max(off, base+int64(done)), min(end, base+int64(f.w)); hi > lo {
			n += copy(q[lo-off:hi-off], f.out[lo-base:hi-base])
		}
		done = f.w
		if base+int64(f.w) >= end {
			return n, nil
		}
		if f.state == streamDone {
			return n, fmt.Errorf("%w: stream ends at %d, before the indexed size", ErrCorrupt, base+int64(f.w))
		}
		if f.w >= f.stopMax() {
			base += int64(f.slide())
			done = f.w
		}
	}
}
