package npz

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"sort"
	"sync"
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
	// ReadAt's first read is its estimate of what it needs plus this
	// margin; if that falls short it reads on in readChunk steps,
	// never past the next access point.
	readMargin = 16 << 10
	readChunk  = 256 << 10
	// headKeep is how much of the start of the content an index keeps
	// at most: enough for an .npy header, which places the access points
	// and tells readers where rows lie. Of an .npy member only the header
	// is kept: at thousands of archives, every byte per index counts.
	headKeep = 4 << 10
)

// Index gives random access to a deflated member's content. It holds the
// access points found by BuildIndex and nothing tied to a reader, so it
// can outlive the reader it was built from and serve any reader of the
// same archive. It is read-only: ReadAt may be called concurrently.
type Index struct {
	member  Member
	dataOff int64
	points  []point // sorted by out; points[0] is the stream start
	head    []byte  // the first headKeep bytes of the content, or an .npy header
	memory  int64
	// span and rowLead are what BuildIndex was given: they placed the
	// points, and a reader of an index kept on disk may want to know.
	span, rowLead int64
	// fullWindows counts points whose sparse window failed its check
	// and were stored whole.
	fullWindows int
}

// point is a block boundary: the decoder state there is just the
// position and the window.
type point struct {
	out int64 // uncompressed offset
	bit int64 // offset in the compressed stream, in bits
	// window is the min(out, 32 KiB) bytes of output before out, with
	// the bytes no match after out copies zeroed, deflated.
	window []byte
}

// history returns the window a decoder starting at p needs.
func (p point) history() ([]byte, error) {
	return p.historyInto(make([]byte, p.historySize()), nil)
}

// historySize is the length of p's window.
func (p point) historySize() int64 { return min(p.out, windowSize) }

// historyInto inflates p's window into h, historySize bytes, with a
// decompressor bufs lends if it has one: a new one for every span a
// reader opens allocated and zeroed its tables and its own 32 KiB
// window, a few percent of the daemon's CPU with every block in memory.
func (p point) historyInto(h []byte, bufs *Buffers) ([]byte, error) {
	if len(h) == 0 {
		return h, nil
	}
	w := bufs.windowReader(p.window)
	_, err := io.ReadFull(w.zr, h)
	bufs.keepWindowReader(w)
	if err != nil {
		return nil, fmt.Errorf("%w: access point window at %d: %w", ErrCorrupt, p.out, err)
	}
	return h, nil
}

// windowReader inflates an access point's deflated window.
type windowReader struct {
	src bytes.Reader
	zr  io.ReadCloser
}

// windowReader returns a decompressor reading window, b's if it has one.
func (b *Buffers) windowReader(window []byte) *windowReader {
	if b != nil {
		if w, ok := b.windows.Get().(*windowReader); ok {
			w.src.Reset(window)
			if w.zr.(flate.Resetter).Reset(&w.src, nil) == nil {
				return w
			}
		}
	}
	w := &windowReader{}
	w.src.Reset(window)
	w.zr = flate.NewReader(&w.src)
	return w
}

// keepWindowReader puts w back in b for the next window.
func (b *Buffers) keepWindowReader(w *windowReader) {
	if b != nil {
		w.src.Reset(nil)
		b.windows.Put(w)
	}
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
	return buildIndexChecked(r, m, off, span, rowLead, nil)
}

// buildIndexChecked is buildIndex with a hook that may spoil each sparse
// window before it is checked: tests use it to see the check catch a
// window that lacks a byte a match needs.
func buildIndexChecked(r io.ReaderAt, m Member, off, span, rowLead int64, spoil func([]byte)) (*Index, error) {
	if span <= 0 {
		span = DefaultSpan
	}
	f := newInflater(r, off, m.CompressedSize, buildReadSize, buildReadSize)
	x := &Index{member: m, dataOff: off, span: span, rowLead: rowLead}
	b := &indexBuilder{f: f, x: x, spoil: spoil}
	b.chosen = []*pendingPoint{{point: point{}}} // the stream start needs no window
	rows := rowPoints{lead: rowLead, span: span, checked: rowLead <= 0}
	var base int64 // uncompressed offset of f.out[0]
	done := 0      // f.out[:done] has been checksummed
	var crc uint32
	stop := f.stopMax()
	for f.state != streamDone {
		if f.state == atHeader && !f.final {
			if err := rows.boundary(b, base+int64(f.w)); err != nil {
				return nil, err
			}
		}
		// Before a slide can drop the output that checks them.
		if err := b.finishDue(false); err != nil {
			return nil, err
		}
		if f.w >= stop {
			b.keepHistories()
			x.keepHead(base, f.out[done:f.w], done)
			crc = crc32.Update(crc, crc32.IEEETable, f.out[done:f.w])
			base += int64(f.slide())
			done = f.w
		}
		stepTo := stop
		if b.pendingSparse() {
			// A point's window is read off the reference tracker
			// 32 KiB of output after it, before the tracker's ring
			// wraps: step in short strides meanwhile.
			stepTo = min(stop, f.w+windowSize)
		}
		if err := f.step(stepTo); err != nil {
			return nil, err
		}
		if base+int64(f.w) > m.UncompressedSize {
			return nil, fmt.Errorf("%w: content is longer than the %d bytes in the directory", ErrChecksum, m.UncompressedSize)
		}
	}
	if err := b.finishDue(true); err != nil {
		return nil, err
	}
	x.keepHead(base, f.out[done:f.w], done)
	crc = crc32.Update(crc, crc32.IEEETable, f.out[done:f.w])
	if n := base + int64(f.w); n != m.UncompressedSize {
		return nil, fmt.Errorf("%w: content is %d bytes, the directory says %d", ErrChecksum, n, m.UncompressedSize)
	}
	if crc != m.CRC32 {
		return nil, fmt.Errorf("%w: content has CRC-32 %08x, the directory says %08x", ErrChecksum, crc, m.CRC32)
	}
	x.points = make([]point, len(b.chosen))
	for i, pp := range b.chosen {
		if i > 0 && !pp.done {
			return nil, fmt.Errorf("internal error: access point at %d has no window", pp.out)
		}
		x.points[i] = pp.point
		x.fullWindows += pp.full
	}
	if l, err := ParseNPYHeader(x.head); err == nil && l.DataOffset < int64(len(x.head)) {
		x.head = x.head[:l.DataOffset]
	}
	x.head = slices.Clip(x.head)
	x.setMemory()
	return x, nil
}

// setMemory works out what the index holds in memory.
func (x *Index) setMemory() {
	x.memory = int64(unsafe.Sizeof(*x)) + int64(len(x.member.Name)) + int64(cap(x.points))*int64(unsafe.Sizeof(point{})) + int64(cap(x.head))
	for _, p := range x.points {
		x.memory += int64(cap(p.window))
	}
}

// pendingPoint is a block boundary that is, or may become, an access
// point, while its window is worked out.
type pendingPoint struct {
	point
	// history is the whole window before out, histLen bytes, once
	// copied: until the inflater slides its output (most candidates are
	// dropped before), historyOf reads it there. Once 32 KiB of output
	// have passed (sparse set), sparseWindow is it with the bytes no
	// match copies zeroed.
	history      []byte
	histLen      int
	sparse       bool
	sparseWindow []byte
	// checkLen and checkCRC are the length and CRC-32 of the output
	// after out that decoding from the sparse window must reproduce.
	checkLen int
	checkCRC uint32
	// chosen is set when it is an access point, dropped when it will
	// not be one; done when its window is stored.
	chosen, dropped, done bool
	// full is 1 if the sparse window failed its check and the window
	// was stored whole (never seen; kept for tests).
	full int
}

// indexBuilder turns the block boundaries BuildIndex passes into access
// points with sparse windows. Every block boundary near a row start is a
// candidate until a later one replaces it; a candidate that lives until
// the inflater slides its output costs a copy of its history, and only
// chosen points get a pass over it, are checked and stored.
type indexBuilder struct {
	f *inflater
	x *Index
	// open are the boundaries not yet chosen and stored nor dropped, in
	// order: the input from the first of them on is kept.
	open   []*pendingPoint
	chosen []*pendingPoint
	// zw compresses windows; zbuf receives them.
	zw   *flate.Writer
	zbuf bytes.Buffer
	// spoil, if set, changes each sparse window before its check.
	spoil func([]byte)
}

// here makes a candidate access point of the block boundary at content
// offset pos, where the inflater stands.
func (b *indexBuilder) here(pos int64) *pendingPoint {
	f := b.f
	if f.refs == nil {
		// Matches from here on are what the window is for; a member
		// too short for any point never pays for the tracker.
		f.refs = newRefTracker()
	}
	pp := &pendingPoint{point: point{out: pos, bit: f.bitPos()}, histLen: min(f.w, windowSize)}
	b.open = append(b.open, pp)
	b.pinInput()
	return pp
}

// historyOf returns the history of pp, from the inflater's output if it
// is not copied yet.
func (b *indexBuilder) historyOf(pp *pendingPoint) []byte {
	if pp.history != nil {
		return pp.history
	}
	end := pp.out - b.f.outBase
	return b.f.out[end-int64(pp.histLen) : end]
}

// keepHistories copies the histories of the open boundaries out of the
// inflater's output, before it slides.
func (b *indexBuilder) keepHistories() {
	for _, pp := range b.open {
		if pp.history == nil && !pp.dropped && !pp.done {
			pp.history = slices.Clone(b.historyOf(pp))
		}
	}
}

// choose makes pp an access point, if it comes after the last one, and
// stores its window once it is known.
func (b *indexBuilder) choose(pp *pendingPoint) (bool, error) {
	if pp.out <= b.last() {
		return false, nil
	}
	pp.chosen = true
	b.chosen = append(b.chosen, pp)
	if pp.sparse {
		return true, b.store(pp)
	}
	return true, nil
}

// drop forgets a candidate that will not be a point.
func (b *indexBuilder) drop(pp *pendingPoint) {
	pp.dropped, pp.history, pp.sparseWindow = true, nil, nil
}

// last is the content offset of the latest access point.
func (b *indexBuilder) last() int64 { return b.chosen[len(b.chosen)-1].out }

// pinInput forgets finished candidates and keeps the compressed input
// from the earliest open one on, for store to decode again.
func (b *indexBuilder) pinInput() {
	b.open = slices.DeleteFunc(b.open, func(pp *pendingPoint) bool { return pp.dropped || pp.done })
	b.f.pin = -1
	if len(b.open) > 0 {
		b.f.pin = b.open[0].bit >> 3
	}
}

// pendingSparse reports whether a boundary still waits for its window to
// be read off the reference tracker.
func (b *indexBuilder) pendingSparse() bool {
	for _, pp := range b.open {
		if !pp.sparse && !pp.dropped {
			return true
		}
	}
	return false
}

// finishDue reads off the windows of the boundaries that 32 KiB of output
// have passed (or all of them, at the end of the stream), and stores those
// of chosen points. At the end, candidates never chosen are dropped.
func (b *indexBuilder) finishDue(all bool) error {
	f := b.f
	end := f.outBase + int64(f.w)
	for _, pp := range b.open {
		if pp.sparse || pp.dropped {
			continue
		}
		if !all && pp.out+windowSize > end {
			break
		}
		b.makeSparse(pp, min(end, pp.out+windowSize))
		if pp.chosen {
			if err := b.store(pp); err != nil {
				return err
			}
		}
	}
	if all {
		for _, pp := range b.open {
			if !pp.chosen {
				b.drop(pp)
			}
		}
	}
	b.pinInput()
	return nil
}

// makeSparse zeroes the bytes of pp's history that no match in the output
// up to upto (32 KiB after pp, or the end) copies, and notes that output's
// CRC-32, which the inflater's output still holds. Float data is mostly
// literals: a few hundred of the 32,768 bytes are used.
func (b *indexBuilder) makeSparse(pp *pendingPoint, upto int64) {
	f := b.f
	start := pp.out - int64(pp.histLen)
	pp.sparseWindow = slices.Clone(b.historyOf(pp))
	for i := range pp.sparseWindow {
		if !f.refs.copiedSince(start+int64(i), pp.out) {
			pp.sparseWindow[i] = 0
		}
	}
	out := f.out[pp.out-f.outBase : upto-f.outBase]
	pp.sparse, pp.checkLen, pp.checkCRC = true, len(out), crc32.ChecksumIEEE(out)
}

// store checks that decoding from pp with its sparse window reproduces the
// output the build saw, and stores the window deflated (a few hundred
// bytes instead of 32 KiB); the whole window if the check fails.
func (b *indexBuilder) store(pp *pendingPoint) error {
	window := pp.sparseWindow
	if b.spoil != nil {
		b.spoil(window)
	}
	if !b.decodesAsBuilt(pp, window) {
		window = b.historyOf(pp)
		pp.full = 1
	}
	b.zbuf.Reset()
	if b.zw == nil {
		var err error
		if b.zw, err = flate.NewWriter(&b.zbuf, flate.BestCompression); err != nil {
			return err
		}
	} else {
		b.zw.Reset(&b.zbuf)
	}
	if _, err := b.zw.Write(window); err != nil {
		return err
	}
	if err := b.zw.Close(); err != nil {
		return err
	}
	pp.window = slices.Clone(b.zbuf.Bytes())
	pp.history, pp.sparseWindow, pp.done = nil, nil, true
	return nil
}

// decodesAsBuilt decodes from pp with window, reading the input the
// builder kept, and compares the output with what the build saw.
func (b *indexBuilder) decodesAsBuilt(pp *pendingPoint, window []byte) bool {
	f := b.f
	in, ok := f.buffered(pp.bit >> 3)
	if !ok {
		return false
	}
	// The check's output needs about as much input at worst (stored
	// blocks): read that first, not all the builder holds.
	v := newInflater(sliceAt{b: in, off: pp.bit >> 3}, 0, f.next, min(len(in), pp.checkLen+4<<10), 64<<10)
	if v.seek(pp.bit, window) != nil {
		return false
	}
	h := len(window)
	for v.w < h+pp.checkLen && v.state != streamDone {
		if v.step(h+pp.checkLen) != nil {
			return false
		}
	}
	return v.w >= h+pp.checkLen && crc32.ChecksumIEEE(v.out[h:h+pp.checkLen]) == pp.checkCRC
}

// sliceAt reads b, which holds the bytes at [off, off+len(b)).
type sliceAt struct {
	b   []byte
	off int64
}

func (s sliceAt) ReadAt(p []byte, at int64) (int, error) {
	if at < s.off || at-s.off > int64(len(s.b)) {
		return 0, fmt.Errorf("read at %d outside [%d, %d)", at, s.off, s.off+int64(len(s.b)))
	}
	n := copy(p, s.b[at-s.off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
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
	// start and not far before it.
	cand *pendingPoint
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

// boundary considers the block boundary at content offset pos, where the
// builder's inflater stands.
func (p *rowPoints) boundary(b *indexBuilder, pos int64) error {
	f, x := b.f, b.x
	if !p.checked {
		// The header is in the first few KiB of output, before any span
		// ends: until the first slide, f.out holds all the output.
		if pos == int64(f.w) {
			p.start(f.out[:f.w], false)
		} else {
			p.start(x.head, true)
		}
		if !p.checked {
			return nil
		}
	}
	if !p.on || p.next >= p.layout.Rows {
		// Every span; and past the last row no span longer than that.
		if pos-b.last() >= p.span {
			_, err := b.choose(b.here(pos))
			return err
		}
		return nil
	}
	for p.next < p.layout.Rows && pos > p.target(p.next) {
		// Passed row next's target: its point is the last candidate,
		// or, if no boundary fell near enough before it, this one.
		ok := false
		if p.cand != nil {
			var err error
			if ok, err = b.choose(p.cand); err != nil {
				return err
			}
			if !ok {
				b.drop(p.cand)
			}
		}
		if !ok && pos > b.last() {
			if _, err := b.choose(b.here(pos)); err != nil {
				return err
			}
		}
		p.cand = nil
		p.next++
	}
	if p.next < p.layout.Rows && pos >= p.target(p.next)-candidateZone {
		if p.cand != nil {
			b.drop(p.cand)
		}
		p.cand = b.here(pos)
	}
	return nil
}

// ReadFromStart reads len(p) bytes of the deflated member m's content at
// off, inflating from the start of its stream (at archive offset dataOff)
// without an index, and returns io.EOF if the content ends first. It is
// for reads near the start, such as an .npy header, which need little of
// the stream: no CRC-32 is checked, since the member is not read whole.
func ReadFromStart(r io.ReaderAt, m Member, dataOff int64, p []byte, off int64) (int, error) {
	x, err := StartIndex(m, dataOff)
	if err != nil {
		return 0, err
	}
	return x.ReadAt(r, p, off)
}

// StartIndex returns an index of the deflated member m, whose stream
// starts at archive offset dataOff, with no access point but the
// stream's start: its reads inflate from there, as ReadFromStart's do.
func StartIndex(m Member, dataOff int64) (*Index, error) {
	if m.Method != Deflated {
		return nil, fmt.Errorf("%w: %q is not deflated (method %d)", ErrUnsupported, m.Name, m.Method)
	}
	return &Index{member: m, dataOff: dataOff, points: []point{{}}}, nil
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

// SourceRange returns the archive bytes [off, off+n) that reads of the
// content [start, end), span by span, read: from the access point at or
// before start up to, in the span holding end, as much as a ReadAt that
// ends at end reads first (its estimate from the span's compression
// ratio), or the next access point if end is one. A reader that fetches
// this range ahead has what the reads will want, and no more.
func (x *Index) SourceRange(start, end int64) (off, n int64) {
	i := sort.Search(len(x.points), func(k int) bool { return x.points[k].out > start }) - 1
	from := x.points[max(i, 0)].bit / 8
	k := sort.Search(len(x.points), func(k int) bool { return x.points[k].out >= end }) - 1
	k = max(k, 0)
	_, limit, first := x.firstRead(k, end)
	to := min(limit, x.points[k].bit/8+first)
	if k+1 < len(x.points) && x.points[k+1].out == end {
		to = limit
	}
	return x.dataOff + from, max(to, from) - from
}

// firstRead sizes the first read of compressed bytes a decoder starting at
// point i makes to produce the content up to end: the stream bytes from
// point i to the next point after end (or the stream's end) are limit, and
// first is an estimate from the compression ratio of that stretch plus a
// margin, so that one read usually suffices.
func (x *Index) firstRead(i int, end int64) (need, limit, first int64) {
	pt := x.points[i]
	j := sort.Search(len(x.points), func(k int) bool { return x.points[k].out >= end })
	limit = x.member.CompressedSize // stream bytes this read may need
	cin, cout := limit-pt.bit/8, x.member.UncompressedSize-pt.out
	if j < len(x.points) {
		limit = (x.points[j].bit + 7) / 8
		cin, cout = limit-pt.bit/8, x.points[j].out-pt.out
	}
	need = end - pt.out
	first = int64(float64(cin)*float64(need)/float64(max(cout, 1))) + readMargin
	return need, limit, min(first, limit-pt.bit/8)
}

// keepHead appends to x.head what it lacks of out, new output whose first
// byte is at content offset base+at.
func (x *Index) keepHead(base int64, out []byte, at int) {
	if pos := base + int64(at); pos == int64(len(x.head)) && pos < headKeep {
		x.head = append(x.head, out[:min(int64(len(out)), headKeep-pos)]...)
	}
}

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
	n, _, err := x.ReadAtInflating(r, p, off, nil)
	return n, err
}

// ReadAtInflating is ReadAt, and says how many bytes of content the
// inflater produced for it (none when the head the index keeps served
// it): from the access point on, the stretch before off included. Its
// inflater's buffers come from bufs, if not nil, and go back there.
func (x *Index) ReadAtInflating(r io.ReaderAt, p []byte, off int64, bufs *Buffers) (n int, inflated int64, err error) {
	q, eof := clip(p, off, x.member.UncompressedSize)
	if len(q) == 0 {
		return 0, 0, eof
	}
	if end := off + int64(len(q)); end <= int64(len(x.head)) {
		return copy(q, x.head[off:end]), 0, eof
	}
	n, inflated, err = x.read(r, q, off, bufs)
	if err != nil {
		return n, inflated, fmt.Errorf("reading %q at %d: %w", x.member.Name, off, err)
	}
	return n, inflated, eof
}

func (x *Index) read(r io.ReaderAt, q []byte, off int64, bufs *Buffers) (n int, inflated int64, err error) {
	end := off + int64(len(q))
	i := sort.Search(len(x.points), func(k int) bool { return x.points[k].out > off }) - 1
	c, err := x.openStream(r, i, end, end, bufs)
	if err != nil {
		return 0, 0, err
	}
	defer c.release()
	err = c.produce(end, func(at int64, out []byte) {
		if lo, hi := max(off, at), min(end, at+int64(len(out))); hi > lo {
			n += copy(q[lo-off:hi-off], out[lo-at:hi-at])
		}
	})
	return n, c.inflated(), err
}

// contentStream inflates the content from an access point on.
type contentStream struct {
	f    *inflater
	bufs *Buffers // where f's buffers go back to, or nil
	from int64    // the access point's content offset
	base int64    // content offset of f.out[0]
	done int      // f.out[:done] is history or already produced
}

// openStream starts inflating from access point i, reading the stream
// no further than the next access point after limitEnd, in a first read
// sized for the content up to end.
func (x *Index) openStream(r io.ReaderAt, i int, end, limitEnd int64, bufs *Buffers) (*contentStream, error) {
	pt := x.points[i]
	_, limit, _ := x.firstRead(i, limitEnd)
	_, _, first := x.firstRead(i, end)
	first = min(first, buildReadSize) // a huge read is made in chunks, not one buffer
	f := newInflaterWith(r, x.dataOff, limit, int(first), readChunk, bufs)
	c := &contentStream{f: f, bufs: bufs, from: pt.out}
	// The window is inflated where seek puts it, at the start of out.
	history, err := pt.historyInto(f.out[:pt.historySize()], bufs)
	if err != nil {
		c.release()
		return nil, err
	}
	if err := f.seek(pt.bit, history); err != nil {
		c.release()
		return nil, err
	}
	c.base, c.done = pt.out-int64(f.w), f.w
	return c, nil
}

// release gives c's buffers back; c is not used after.
func (c *contentStream) release() {
	c.bufs.take(c.f)
	c.f = nil
}

// Buffers lends inflaters the buffers they decode into and read the
// compressed stream into, and takes them back when they are done: a
// reader of many windows then reuses warm memory instead of touching a
// megabyte of new pages for each. It is safe for concurrent use; a nil
// *Buffers lends nothing.
type Buffers struct {
	out sync.Pool
	// in holds input buffers by size class: class c holds buffers of at
	// least minInClass<<c bytes, so any buffer a class gives has room
	// (one pool of mixed sizes gave small ones to large reads, which
	// then made new buffers).
	in [inClasses]sync.Pool
	// windows holds decompressors of access points' windows.
	windows sync.Pool
	// tables holds inflaters' *decodeTables.
	tables sync.Pool
}

const (
	minInClass = 64 << 10
	inClasses  = 9 // up to 16 MiB; larger buffers are not kept
)

// inClass is the class of a buffer of capacity n (room, the class whose
// buffers all have n bytes or more; else the class it can be kept in),
// or -1.
func inClass(n int, room bool) int {
	c := 0
	for minInClass<<c < n {
		c++
	}
	if !room && minInClass<<c > n {
		c--
	}
	if c >= inClasses {
		return -1
	}
	return c
}

// inBufferCap is the capacity of a new input buffer for n bytes: its
// class's size, so that it is lent again to reads as large.
func inBufferCap(n int) int {
	if c := inClass(n, true); c >= 0 {
		return minInClass << c
	}
	return n
}

// lend gives f an output buffer and an input buffer with room for first
// bytes and a quarter more, if b has them.
func (b *Buffers) lend(f *inflater, first int) {
	if b == nil {
		return
	}
	if out, ok := b.out.Get().(*outBuffer); ok {
		f.out = out
	}
	// Left as the last block built them: every dynamic block builds
	// its tables whole before they are used.
	if t, ok := b.tables.Get().(*decodeTables); ok {
		f.t = t
	}
	if c := inClass(first+first/4, true); c >= 0 {
		if in, ok := b.in[c].Get().(*[]byte); ok {
			f.buf = (*in)[:0]
		}
	}
}

// take puts f's buffers back in b.
func (b *Buffers) take(f *inflater) {
	if b == nil || f == nil {
		return
	}
	b.out.Put(f.out)
	b.tables.Put(f.t)
	if c := inClass(cap(f.buf), false); c >= 0 {
		in := f.buf[:0]
		b.in[c].Put(&in)
	}
	f.out, f.buf, f.t, f.lit, f.dist = nil, nil, nil, nil, nil
}

// inflated is how much content c has inflated.
func (c *contentStream) inflated() int64 { return c.base + int64(c.f.w) - c.from }

// produce inflates on up to content offset end, handing each stretch
// of new output to emit with its content offset; out is not emit's to
// keep.
func (c *contentStream) produce(end int64, emit func(at int64, out []byte)) error {
	f := c.f
	for c.base+int64(c.done) < end {
		if c.base+int64(f.w) < end { // not inflated by an earlier call
			if err := f.step(int(min(int64(f.stopMax()), end-c.base))); err != nil {
				return err
			}
		}
		// A match may run past end: that output is the next call's.
		if hi := int(min(int64(f.w), end-c.base)); hi > c.done {
			emit(c.base+int64(c.done), f.out[c.done:hi])
			c.done = hi
		}
		if c.base+int64(f.w) >= end {
			return nil
		}
		if f.state == streamDone {
			return fmt.Errorf("%w: stream ends at %d, before the indexed size", ErrCorrupt, c.base+int64(f.w))
		}
		if f.w >= f.stopMax() {
			d := f.slide()
			c.base += int64(d)
			c.done -= d
		}
	}
	return nil
}

// SpanInflater inflates the span of content that starts at one access
// point, as far as it is asked, and on from there when asked for more:
// a reader that inflated part of a span for one read does not inflate it
// again for the next. It is not safe for concurrent use.
type SpanInflater struct {
	x           *Index
	bufs        *Buffers
	start, stop int64
	// data is the content inflated so far, [start, start+len(data)); it
	// only grows, within its capacity (the span), so slices of it handed
	// out never change.
	data []byte
	c    *contentStream
	// err, once set, is what every later call returns: the span's
	// inflation cannot go on.
	err error
}

// SpanInflater returns an inflater of the span of content [start, stop)
// that Span gives for start, which must be an access point's offset. It
// inflates into into if that has room for the span (the caller's to
// reuse once done with the inflater and what it returned), else into a
// new buffer.
func (x *Index) SpanInflater(start int64, bufs *Buffers, into []byte) (*SpanInflater, error) {
	s, stop := x.Span(start)
	if s != start {
		return nil, fmt.Errorf("content offset %d of %q is not an access point (the span holding it starts at %d)", start, x.member.Name, s)
	}
	if int64(cap(into)) < stop-start {
		into = make([]byte, 0, stop-start)
	}
	return &SpanInflater{x: x, bufs: bufs, start: start, stop: stop, data: into[: 0 : stop-start]}, nil
}

// Inflate inflates the span up to content offset upto (at most its end)
// reading through r, and returns the content from the span's start to
// there or further, and how many bytes it inflated for this call. After
// an error the SpanInflater is spent: start another.
func (s *SpanInflater) Inflate(r io.ReaderAt, upto int64) (data []byte, inflated int64, err error) {
	upto = min(upto, s.stop)
	if s.start+int64(len(s.data)) >= upto {
		return s.data, 0, nil
	}
	if s.err != nil {
		return nil, 0, s.err
	}
	if s.c == nil {
		i := sort.Search(len(s.x.points), func(k int) bool { return s.x.points[k].out > s.start }) - 1
		if s.c, err = s.x.openStream(r, i, upto, s.stop, s.bufs); err != nil {
			s.err = fmt.Errorf("reading %q at %d: %w", s.x.member.Name, s.start, err)
			return nil, 0, s.err
		}
	}
	s.c.f.src = r
	before := s.c.inflated()
	err = s.c.produce(upto, func(_ int64, out []byte) { s.data = append(s.data, out...) })
	if err != nil {
		inflated = s.c.inflated() - before
		s.c.release()
		s.c = nil
		s.err = fmt.Errorf("reading %q at %d: %w", s.x.member.Name, s.start+int64(len(s.data)), err)
		return nil, inflated, s.err
	}
	inflated = s.c.inflated() - before
	if s.start+int64(len(s.data)) >= s.stop {
		s.c.release() // the span is whole: its buffers go back
		s.c = nil
	}
	return s.data, inflated, nil
}

// Release gives the buffers of s's inflater back, if it still has them
// (a span inflated whole gave them back already): s is spent after it.
// The content it returned is the caller's.
func (s *SpanInflater) Release() {
	if s.c != nil {
		s.c.release()
		s.c = nil
	}
	if s.err == nil {
		s.err = errSpanReleased
	}
}

var errSpanReleased = errors.New("span inflater used after Release")

// MemoryBytes is what s holds: room for the whole span and, until it is
// inflated whole, the inflater's buffers.
func (s *SpanInflater) MemoryBytes() int64 {
	n := int64(cap(s.data))
	if s.c != nil {
		n += int64(len(s.c.f.out)) + int64(cap(s.c.f.buf))
	}
	return n
}
