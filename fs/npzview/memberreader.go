package npzview

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/s3backend"
)

const (
	// heldSpanFactor bounds the decoded spans one open holds, and the
	// length of a span worth holding, in checkpoint spans.
	heldSpanFactor = 4
	// headRegion is the start of a member that is read without an index
	// (inflating from the start of the stream) while none is at hand:
	// numpy reads an array's header on every np.load, the kernel asks for
	// 64 KiB to answer it (st_blksize is 16 KiB), and a pass that only
	// wants every array's shape must not inflate every member whole.
	headRegion = 64 << 10
)

// MemberReader reads the content of one member of one archive version for
// one open file. A stored member is a range of the archive; a deflated one
// is inflated through its index, span by span in parallel, holding the
// last spans decoded (the kernel reads one window as several requests,
// and around it), and fetching ahead the compressed bytes of the row a
// loader is reading. It knows nothing of FUSE. It is safe for concurrent
// use; Close ends its background work.
type MemberReader struct {
	view   *View
	obj    s3backend.Version
	member npz.Member
	// src reads the archive; it never reads ahead on its own (reads of
	// one member are scattered: a window here, a window there).
	src *cache.Reader
	// life ends at Close: inflations that outlive the read that started
	// them (others may wait for them) stop with it, and Close waits for
	// them (they read through src).
	life *cache.Lifetime
	// inflating makes concurrent reads of one span inflate it once.
	inflating singleflight.Group

	mu sync.Mutex
	// dataOff is where the member's data starts in the archive (-1: not
	// read yet).
	dataOff int64
	// index, once found, serves this open's reads even if the view's
	// cache lets it go.
	index *npz.Index
	// layout is the member's .npy row layout, once its header was read.
	layout *npz.NPYLayout
	// spans are the latest spans this open decoded, oldest first; their
	// bytes are held in the view's span budget.
	spans     []decodedSpan
	spanBytes int64
	// dataRead is set once a read went past the head; rowEnd is
	// where the kernel stops reading past the row that read fell in (0:
	// unknown).
	dataRead bool
	rowEnd   int64
	// decoded is the member's decoded file in the cache dir, once
	// opened.
	decoded *sharedDecoded
	// aheadOff and aheadEnd are the archive bytes this open asked to
	// fetch ahead: the kernel's later reads of the same window ask for
	// them again, and asking the cache (a lookup per block, the
	// read-ahead budget taken and given back) cost as much as a
	// fetch-free read's other bookkeeping.
	aheadOff, aheadEnd int64
}

// decodedSpan is the content [start, stop) after an access point; more,
// if the span goes on past stop, inflates the rest.
type decodedSpan struct {
	start, stop int64
	data        []byte
	// buf holds data; the list of held spans holds a reference to it.
	buf  *spanBuffer
	more *npz.SpanInflater
	// held is what the span's memory was counted as when it was held.
	held int64
}

// newMemberReader returns a reader of member m of archive obj.
func newMemberReader(view *View, obj s3backend.Version, m npz.Member) *MemberReader {
	src := view.blocks.OpenRandom(obj)
	if view.decoded != nil && m.Method != npz.Stored {
		// What it reads of the member is kept decoded. (A stored
		// member's reads are ranges of the archive, kept as blocks.)
		src.NotKeptOnDisk(m.HeaderOffset, m.CompressedSize)
	}
	return &MemberReader{view: view, obj: obj, member: m, src: src, life: cache.NewLifetime(view.life.Context()), dataOff: -1}
}

// errReaderClosed is an inflation that starts after the reader was closed.
var errReaderClosed = errors.New("member file closed")

// Close stops the inflations still running, waits for them (they read
// through src), and releases what the reader holds.
func (r *MemberReader) Close() {
	r.life.Close()
	r.mu.Lock()
	for len(r.spans) > 0 {
		r.dropLocked(len(r.spans) - 1)
	}
	f := r.decoded
	r.decoded = nil
	r.mu.Unlock()
	if f != nil {
		r.releaseDecodedFile(f)
	}
	r.src.Close()
}

// ReadAt reads len(p) bytes of the content at off, fewer only at its end
// (with io.EOF). Nothing writes into p once it has returned.
func (r *MemberReader) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	h, err := r.read(ctx, p, off, false)
	if h == nil {
		return 0, err
	}
	n := h.copyTo(p)
	h.Release()
	return n, err
}

// HeldRead is content a member file read without copying it out of the
// spans it was decoded into: its slices, in order, are the bytes read,
// valid until Release (then a span's buffer may be written with another
// span). It is for a reply written to the kernel straight from them.
type HeldRead struct {
	slices [][]byte
	bufs   []*spanBuffer
	n      int
}

// Slices are the bytes read, in order.
func (h *HeldRead) Slices() [][]byte { return h.slices }

// Len is the number of bytes read.
func (h *HeldRead) Len() int { return h.n }

// Release gives back the span buffers h reads from; the slices must not
// be read after it. A second Release does nothing.
func (h *HeldRead) Release() {
	for _, b := range h.bufs {
		b.release()
	}
	h.bufs = nil
}

// copyTo copies the bytes read into p (in place for slices of p), and
// returns their number.
func (h *HeldRead) copyTo(p []byte) int {
	n := 0
	for _, s := range h.slices {
		if len(s) > 0 && &s[0] == &p[n] {
			n += len(s) // read into p already
			continue
		}
		n += copy(p[n:], s)
	}
	return n
}

// ReadHeld reads len(p) bytes of the content at off, fewer only at its
// end (with io.EOF), as ReadAt does, but answers what it finds in
// decoded spans with references to them instead of copies into p (p
// holds the rest): the caller releases the result once it no longer
// reads it. Nothing writes into p once it has returned. On an error
// other than io.EOF the result is nil.
func (r *MemberReader) ReadHeld(ctx context.Context, p []byte, off int64) (*HeldRead, error) {
	h, err := r.read(ctx, p, off, true)
	if h == nil && (err == nil || err == io.EOF) {
		h = &HeldRead{}
	}
	return h, err
}

// read is ReadAt, and with refs set ReadHeld.
func (r *MemberReader) read(ctx context.Context, p []byte, off int64, refs bool) (*HeldRead, error) {
	if off < 0 {
		return nil, cache.ErrNegativeOffset
	}
	size := r.member.UncompressedSize
	if off >= size {
		return nil, io.EOF
	}
	var eof error
	if rest := size - off; int64(len(p)) > rest {
		p, eof = p[:rest], io.EOF
	}
	r.view.memberReads.Add(1)
	if r.member.Method == npz.Stored {
		if err := r.readStored(ctx, p, off); err != nil {
			return nil, err
		}
		return &HeldRead{slices: [][]byte{p}, n: len(p)}, eof
	}
	h, err := r.readDeflated(ctx, p, off, refs)
	if err != nil {
		return nil, err
	}
	r.view.returned.Add(int64(len(p)))
	return h, eof
}

// dataOffset returns where the member's data starts, reading its local
// header the first time.
func (r *MemberReader) dataOffset(ctx context.Context) (int64, error) {
	r.mu.Lock()
	off := r.dataOff
	r.mu.Unlock()
	if off >= 0 {
		return off, nil
	}
	off, err := r.member.DataOffset(s3backend.BindContext(ctx, r.src))
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	r.dataOff = off
	r.mu.Unlock()
	return off, nil
}

func (r *MemberReader) readStored(ctx context.Context, p []byte, off int64) error {
	dataOff, err := r.dataOffset(ctx)
	if err != nil {
		return err
	}
	// As for a compressed member, one checkpoint span ahead.
	r.src.Prefetch(dataOff+off, int64(len(p))+r.view.span)
	n, err := r.src.ReadAt(ctx, p, dataOff+off)
	if err == nil && n < len(p) {
		err = fmt.Errorf("archive ended %d bytes into stored member %q", off+int64(n), r.member.Name)
	}
	return err
}

// readDeflated reads the content at off, len(p) bytes, span by span:
// into p, or with refs set, as references to the spans holding it where
// they can be kept.
func (r *MemberReader) readDeflated(ctx context.Context, p []byte, off int64, refs bool) (*HeldRead, error) {
	whole := &HeldRead{slices: [][]byte{p}, n: len(p)}
	end := off + int64(len(p))
	if end <= headRegion {
		if err := r.readHead(ctx, p, off); err != nil {
			return nil, err
		}
		return whole, nil
	}
	if r.readDecoded(p, off) {
		return whole, nil
	}
	// No byte past the head is returned before the whole member has
	// been inflated once and found to match its CRC-32: building the
	// index does that.
	x, err := r.indexFor(ctx)
	if err != nil {
		return nil, err
	}
	h, err := r.readIndexed(ctx, x, off, end)
	if err != nil {
		return nil, err
	}
	if r.view.decoded != nil {
		r.keepBetweenSpans(x, h.slices, off, end)
	}
	if refs {
		return h, nil
	}
	h.copyTo(p)
	h.Release()
	return whole, nil
}

// keepBetweenSpans keeps what inflating the spans of the read [off, end)
// did not (inflate keeps each span's whole units): the unit across each
// span boundary, of which either span holds only part, and the pieces of
// outsize spans, inflated apart. slices are the read, one per span, in
// order (readIndexed).
func (r *MemberReader) keepBetweenSpans(x *npz.Index, slices [][]byte, off, end int64) {
	var unit []byte
	pos := off
	for i, piece := range slices {
		if start, stop := x.Span(pos); stop-start > heldSpanFactor*r.view.span {
			r.keepDecoded(piece, pos)
		}
		from := pos / decodedUnit * decodedUnit
		if to := min(from+decodedUnit, r.member.UncompressedSize); i > 0 && from != pos && from >= off && to <= end {
			if unit == nil {
				unit = make([]byte, decodedUnit)
			}
			gather(unit[:to-from], slices, off, from)
			r.keepDecoded(unit[:to-from], from)
		}
		pos += int64(len(piece))
	}
}

// gather copies into dst the bytes at from of the content that slices
// hold from off on.
func gather(dst []byte, slices [][]byte, off, from int64) {
	to := from + int64(len(dst))
	for _, s := range slices {
		if lo, hi := max(off, from), min(off+int64(len(s)), to); lo < hi {
			copy(dst[lo-from:], s[lo-off:hi-off])
		}
		off += int64(len(s))
	}
}

// readIndexed reads the content [off, end) through the index x, as
// references to the spans holding it (or to buffers of its own).
func (r *MemberReader) readIndexed(ctx context.Context, x *npz.Index, off, end int64) (*HeldRead, error) {
	r.prefetch(x, off, end)
	maxSpan := heldSpanFactor * r.view.span
	r.mu.Lock()
	rowEnd := r.rowEnd
	r.mu.Unlock()
	// The spans a read covers are independent: inflate them in parallel,
	// each goroutine setting its own piece.
	var pieces []heldPiece
	for pos := off; pos < end; {
		_, stop := x.Span(pos)
		pieces = append(pieces, heldPiece{})
		pos = min(end, stop)
	}
	g, gctx := errgroup.WithContext(ctx)
	for pos, i := off, 0; pos < end; i++ {
		start, stop := x.Span(pos)
		at, upto := pos, min(end, stop)
		piece := &pieces[i]
		pos = upto
		// A span is inflated whole when a read first needs it: the
		// kernel reads the rest of the window from it next, while its
		// compressed bytes, fetched ahead, are still cached. The span
		// holding the end of the loader's window, or past it, is
		// inflated only as far as a read asks: the kernel reads around
		// the row's last page (memcpy touches it early) and stops about
		// half its read-ahead past the row, short of the rowEnd the
		// prefetch allows for. So is a short read near the start of a
		// span (an array's header) unless the kernel is known to read
		// on. The span's inflater is held with what it inflated: a
		// later read past it goes on from there.
		limit := stop
		if (start < rowEnd && rowEnd < stop) || (rowEnd > 0 && upto > rowEnd) ||
			(upto-start <= (stop-start)/4 && rowEnd <= upto) {
			limit = upto
		}
		if r.view.decoded != nil && start < rowEnd && rowEnd < stop && upto < rowEnd {
			// Kept decoded, the span goes on to rowEnd (its compressed
			// bytes are fetched with the window): the kernel's reads
			// past the row reach further on some epochs than on others,
			// and a later epoch's read that touched a page not kept
			// would fetch and inflate.
			limit = min(stop, (rowEnd+decodedUnit-1)/decodedUnit*decodedUnit)
		}
		if data, buf, ok := r.heldSpan(start, upto); ok {
			*piece = heldPiece{data[at-start : upto-start], buf}
		} else if stop-start > maxSpan {
			// An outsize span (one huge deflate block) is not worth
			// holding: inflate just what is asked, in the background
			// like a span (inflating up to it may take seconds of CPU,
			// which an interrupt must not wait for).
			g.Go(func() error {
				data, err := cache.WaitShared(gctx, &r.inflating, "piece-"+strconv.FormatInt(at, 10)+"-"+strconv.FormatInt(upto, 10), func() ([]byte, error) {
					return r.inflatePiece(x, at, upto)
				})
				if err != nil {
					return err
				}
				*piece = heldPiece{data: data}
				return nil
			})
		} else {
			g.Go(func() error {
				data, buf, err := r.span(gctx, x, start, upto, limit)
				if err != nil {
					return err
				}
				*piece = heldPiece{data[at-start : upto-start], buf}
				return nil
			})
		}
	}
	err := g.Wait()
	h := &HeldRead{slices: make([][]byte, 0, len(pieces)), n: int(end - off)}
	for _, c := range pieces {
		h.slices = append(h.slices, c.data)
		if c.buf != nil {
			h.bufs = append(h.bufs, c.buf)
		}
	}
	if err != nil {
		h.Release()
		return nil, err
	}
	return h, nil
}

// heldPiece is the content one span gives a read, and the reference to
// the buffer holding it (nil: a buffer nothing writes again).
type heldPiece struct {
	data []byte
	buf  *spanBuffer
}

// readHead fills p, which ends within headRegion, from the index if one
// is held in memory, else by inflating from the start of the stream
// without building one: a loader that opens an array only to read its
// shape costs one small read of the archive, not a full inflate. Its header tells where rows lie for the reads to come. Without
// an index these bytes may be returned before the member's CRC-32 has been
// checked (SEMANTICS.md says so); an undecodable stream still fails.
func (r *MemberReader) readHead(ctx context.Context, p []byte, off int64) error {
	if err := r.view.brokenMember(indexKey(r.obj, r.member)); err != nil {
		return err
	}
	if r.readDecoded(p, off) {
		// Read before, decoded: nothing fetched or inflated.
	} else if h := r.view.savedHead(r.obj, r.member); off+int64(len(p)) <= int64(len(h)) {
		// The archive file bgbfs index wrote kept it, or an earlier
		// open inflated it through the index: numpy's header read of
		// every np.load fetches and inflates nothing.
		copy(p, h[off:])
		r.keepDecoded(p, off)
	} else if x := r.heldIndex(); x != nil {
		h, err := r.inflateHeadRegion(ctx, x, off+int64(len(p)))
		if err != nil {
			return err
		}
		copy(p, h[off:])
		r.keepDecoded(p, off)
	} else if err := r.inflateHead(ctx, p, off); err != nil {
		return err
	}
	if off == 0 {
		if l, err := npz.ParseNPYHeader(p); err == nil {
			r.mu.Lock()
			r.layout = &l
			r.mu.Unlock()
		}
	}
	return nil
}

// inflateHead inflates p at off from the start of the member's stream,
// with no index: the bytes are not checked (the member has not been
// inflated whole), and nothing is kept.
func (r *MemberReader) inflateHead(ctx context.Context, p []byte, off int64) error {
	dataOff, err := r.dataOffset(ctx)
	if err != nil {
		return err
	}
	x, err := npz.StartIndex(r.member, dataOff)
	if err != nil {
		return err
	}
	_, inflated, err := x.ReadAtInflating(r.archiveBytes(ctx), p, off, r.view.buffers)
	r.view.inflated.Add(inflated)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// inflateHeadRegion inflates the member's first end bytes (whole pages,
// at most headRegion, or the member if shorter) through its index x
// (whose build checked the member), and keeps them in the view for the
// header reads of later opens: numpy reads the header on every np.load,
// through a new open, and the kernel asks for the pages around it; the
// index alone keeps too little of the head to answer that. Only what was
// asked is inflated and kept: with many more members than the view
// holds heads of (at the bucket's 13,000 members), most header reads
// miss, and each would otherwise inflate the whole region.
func (r *MemberReader) inflateHeadRegion(ctx context.Context, x *npz.Index, end int64) ([]byte, error) {
	const page = 4 << 10
	end = (end + page - 1) / page * page
	h := make([]byte, min(end, headRegion, r.member.UncompressedSize))
	_, inflated, err := x.ReadAtInflating(r.archiveBytes(ctx), h, 0, r.view.buffers)
	r.view.inflated.Add(inflated)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	r.view.holdHead(indexKey(r.obj, r.member), h)
	return h, nil
}

// archiveBytes is what inflating a piece of the member reads the
// archive's compressed bytes through.
func (r *MemberReader) archiveBytes(ctx context.Context) io.ReaderAt {
	src := s3backend.BindContext(ctx, r.src)
	if r.view.wrapInflaterSource != nil {
		return r.view.wrapInflaterSource(src)
	}
	return src
}

// heldIndex returns the member's index if this open holds it or the
// view has it, without building it.
func (r *MemberReader) heldIndex() *npz.Index {
	r.mu.Lock()
	x := r.index
	r.mu.Unlock()
	if x == nil {
		if x = r.view.viewIndex(r.obj, r.member); x != nil {
			r.holdIndex(x)
		}
	}
	return x
}

// indexFor returns the member's index: the one this open holds, the
// view's, or a newly built one.
func (r *MemberReader) indexFor(ctx context.Context) (*npz.Index, error) {
	if x := r.heldIndex(); x != nil {
		return x, nil
	}
	x, err := r.view.index(ctx, r.obj, r.member)
	if err != nil {
		return nil, err
	}
	r.holdIndex(x)
	return x, nil
}

func (r *MemberReader) holdIndex(x *npz.Index) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.index = x
	if r.layout == nil {
		if l, err := npz.ParseNPYHeader(x.Head()); err == nil {
			r.layout = &l
		}
	}
}

// prefetch starts fetching the compressed bytes of the spans [off, end)
// covers and of the stretch the next requests will want. The kernel reads
// one window as a chain of requests, each sent when the one before is
// answered: fetching ahead makes that one round trip instead of one per
// request. The first read past the head of an open (numpy opens the file
// for every sample) is the kernel reading around the page the loader
// touched first; if the member is an array whose rows are known from its
// .npy header, the fetch reaches to the end of that row, the window the
// loader is about to read, and later reads within it fetch nothing more.
// Otherwise, and for reads past that row, it reaches one span further.
func (r *MemberReader) prefetch(x *npz.Index, off, end int64) {
	from, _ := x.Span(off)
	_, to := x.Span(end - 1)
	r.mu.Lock()
	first, rowEnd, layout := !r.dataRead, r.rowEnd, r.layout
	r.dataRead = true
	r.mu.Unlock()
	if first && layout != nil {
		// The page the loader touched is the middle one; the row it
		// starts may begin up to a page after the page's start.
		touched := off + (end-off)/2 + pageSize - 1
		if row := (touched - layout.DataOffset) / layout.RowBytes; touched >= layout.DataOffset && row < layout.Rows {
			// The kernel reads on a little past the row's end. With a
			// decoded dir, one read-ahead further: a later epoch read
			// from the dir runs ahead of the loader further than this
			// one, which waits on fetches (seen 200 KiB past a row with
			// a read-ahead of 128 KiB), and what it reads that this
			// epoch did not keep is fetched again.
			overshoot := r.view.kernelOvershoot()
			if r.view.decoded != nil {
				overshoot += r.view.kernelReadAhead.Load()
			}
			rowEnd = min(layout.DataOffset+(row+1)*layout.RowBytes+overshoot, x.Size())
			r.mu.Lock()
			r.rowEnd = rowEnd
			r.mu.Unlock()
		}
	}
	// The window, fetched with the first read: up to rowEnd, as far as
	// the span holding it is inflated (not that span's end: the next
	// row's bytes would be fetched for nothing).
	if first && rowEnd > end {
		to = rowEnd
	} else if to < x.Size() {
		_, to = x.Span(to)
	}
	if rowEnd > 0 && end <= rowEnd {
		to = min(to, rowEnd)
	}
	off, n := x.SourceRange(from, to)
	for _, a := range r.notAskedAhead(off, off+n) {
		if r.view.onPrefetch != nil {
			r.view.onPrefetch(a.off, a.n)
		}
		r.src.Prefetch(a.off, a.n)
	}
}

// notAskedAhead returns the parts of the archive bytes [off, end) this
// open has not asked to fetch ahead yet, and counts them as asked. Only
// one stretch is remembered: an open reads one window, in order or
// around it. A part asked before whose fetch failed, or whose blocks the
// cache dropped since, is fetched by the read that needs it.
func (r *MemberReader) notAskedAhead(off, end int64) []byteRange {
	if off >= end {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.aheadOff >= r.aheadEnd || end < r.aheadOff || off > r.aheadEnd {
		r.aheadOff, r.aheadEnd = off, end
		return []byteRange{{off, end - off}}
	}
	var parts []byteRange
	if off < r.aheadOff {
		parts = append(parts, byteRange{off, r.aheadOff - off})
		r.aheadOff = off
	}
	if end > r.aheadEnd {
		parts = append(parts, byteRange{r.aheadEnd, end - r.aheadEnd})
		r.aheadEnd = end
	}
	return parts
}

// byteRange is the bytes [off, off+n).
type byteRange struct{ off, n int64 }

// span returns the content from the access point at start on, at least
// up to upto, inflating it up to limit (upto or further, at most the
// next access point) unless this open holds it, and the reference to
// release once the caller has copied from it (nil: none needed).
// Concurrent requests for one span inflate it once, in the background: a
// request that is interrupted stops waiting, and the others still get
// the span. A request that needs more than the inflation it waited for
// ended with goes on from there.
func (r *MemberReader) span(ctx context.Context, x *npz.Index, start, upto, limit int64) ([]byte, *spanBuffer, error) {
	key := "span-" + strconv.FormatInt(start, 10)
	for {
		if data, buf, ok := r.heldSpan(start, upto); ok {
			return data, buf, nil
		}
		got, err := cache.WaitShared(ctx, &r.inflating, key, func() (inflatedSpan, error) { return r.inflate(x, start, limit) })
		if err != nil {
			return nil, nil, err
		}
		// A span that was held is read under a reference heldSpan
		// takes: it may have been dropped since, and its buffer reused.
		if !got.held && start+int64(len(got.data)) >= upto {
			return got.data, nil, nil
		}
	}
}

// inflatedSpan is what an inflation of a span ended with: its content,
// unless held, in which case it is read from the open's held spans.
type inflatedSpan struct {
	data []byte
	held bool
}

// inflate inflates the span at start up to limit, going on from what
// this open holds of it, and holds the result if the view's span budget
// has room. A failure is not held: the next read tries again.
func (r *MemberReader) inflate(x *npz.Index, start, limit int64) (inflatedSpan, error) {
	if !r.life.Start(1) {
		return inflatedSpan{}, errReaderClosed
	}
	defer r.life.Done()
	if _, buf, ok := r.heldSpan(start, limit); ok { // inflated since the caller looked
		buf.release()
		return inflatedSpan{held: true}, nil
	}
	_, stop := x.Span(start)
	s, buf := r.heldInflater(start)
	if s == nil {
		buf = r.view.spanBuffers.get(stop - start)
		var err error
		if s, err = x.SpanInflater(start, r.view.buffers, buf.data); err != nil {
			buf.release()
			return inflatedSpan{}, err
		}
	}
	data, inflated, err := s.Inflate(r.archiveBytes(r.life.Context()), limit)
	r.view.inflated.Add(inflated)
	if err != nil {
		r.dropSpan(start)
		buf.release()
		return inflatedSpan{}, err
	}
	// Kept decoded (copied now, while this inflation holds the
	// buffer) as far as it was inflated, past what this read asks: the
	// kernel may read a few pages more next epoch.
	r.keepDecoded(data, start)
	held := decodedSpan{start: start, stop: start + int64(len(data)), data: data, buf: buf}
	if held.stop < stop {
		held.more = s
	}
	buf.inflater = held.more
	if r.hold(held) {
		buf.release()
		return inflatedSpan{held: true}, nil
	}
	// Not held: the reads waiting for it copy from data without a
	// reference, so this one is never released and the buffer is never
	// written again (the garbage collector takes it).
	return inflatedSpan{data: data}, nil
}

// inflatePiece inflates [start, stop) into a buffer of its own, not held.
func (r *MemberReader) inflatePiece(x *npz.Index, start, stop int64) ([]byte, error) {
	if !r.life.Start(1) {
		return nil, errReaderClosed
	}
	defer r.life.Done()
	data := make([]byte, stop-start)
	_, inflated, err := x.ReadAtInflating(r.archiveBytes(r.life.Context()), data, start, r.view.buffers)
	r.view.inflated.Add(inflated)
	if err != nil {
		return nil, err
	}
	return data, nil
}

// hold puts s in memory for the next requests, in place of what this
// open held of the same span, dropping its oldest spans beyond
// heldSpanFactor spans; with no room left in the view's budget (many
// files open at once), it is not held. It says whether s is held; if so
// the list took a reference to s.buf (the caller holds one).
func (r *MemberReader) hold(s decodedSpan) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropSpanLocked(s.start)
	n := s.memory()
	s.held = n
	for len(r.spans) > 0 && r.spanBytes+n > heldSpanFactor*r.view.span {
		r.dropLocked(0)
	}
	if r.life.Closed() || !r.view.spanBudget.TryTake(n) {
		return false
	}
	s.buf.acquire()
	r.spans = append(r.spans, s)
	r.spanBytes += n
	return true
}

// memory is what s holds: its content, or, while it can go on, its
// inflater (its buffers and the whole span's room).
func (s decodedSpan) memory() int64 {
	if s.more != nil {
		return s.more.MemoryBytes()
	}
	return s.stop - s.start
}

func (r *MemberReader) dropSpan(start int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropSpanLocked(start)
}

func (r *MemberReader) dropSpanLocked(start int64) {
	if i := slices.IndexFunc(r.spans, func(s decodedSpan) bool { return s.start == start }); i >= 0 {
		r.dropLocked(i)
	}
}

func (r *MemberReader) dropLocked(i int) {
	old := r.spans[i]
	r.spans = slices.Delete(r.spans, i, i+1)
	r.spanBytes -= old.held
	r.view.spanBudget.Give(old.held)
	old.buf.release()
}

// heldSpan returns the content from the access point at start on, if
// this open has it inflated at least up to upto, with a reference to its
// buffer: the caller releases it once it has copied what it wants.
func (r *MemberReader) heldSpan(start, upto int64) ([]byte, *spanBuffer, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, s := range r.spans {
		if s.start == start && s.stop >= upto {
			// Most recently used last.
			r.spans = append(append(r.spans[:i:i], r.spans[i+1:]...), s)
			s.buf.acquire()
			return s.data, s.buf, true
		}
	}
	return nil, nil, false
}

// heldInflater returns the inflater of the span at start this open
// holds part of, to go on from where it stopped, with a reference to the
// buffer it inflates into; nil if there is none. Only the inflation of
// that span (one at a time) uses it.
func (r *MemberReader) heldInflater(start int64) (*npz.SpanInflater, *spanBuffer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.spans {
		if s.start == start && s.more != nil {
			s.buf.acquire()
			return s.more, s.buf
		}
	}
	return nil, nil
}
