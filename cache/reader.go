package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/bgbfs/bgbfs/s3backend"
)

// ErrNegativeOffset is a read before the start of a file.
var ErrNegativeOffset = errors.New("negative offset")

// Reader reads one object version for one open file handle, and reads
// ahead when its reads come in order. It is safe for concurrent use: the
// kernel may issue several reads on one handle at once.
type Reader struct {
	c   *BlockCache
	obj s3backend.Version

	mu      sync.Mutex
	reading bool // counted in c.readers
	random  bool // never reads ahead (OpenRandom)
	// notOnDisk is what of the object the reader's user keeps in
	// another form (NotKeptOnDisk).
	notOnDisk byteRange
	next      int64 // end of the furthest read in the current stream
	// start is where the current stream began: read-ahead held from
	// before it was jumped over, not passed (zip readers come back).
	start  int64
	window int64 // read-ahead window, 0 when reads look random
	streak int64 // bytes read in order since the window last grew
	ahead  int64 // read-ahead has been started up to here
	// held are read-ahead fetches not yet passed by the reader, oldest
	// first; their bytes are taken from c.ahead.
	held      []heldFetch
	heldBytes int64
	// pinnedBytes are the bytes of held fetches that making room for
	// read-ahead does not let go, outside the reader's window.
	pinnedBytes int64
}

// Open returns a Reader for one open file handle.
func (c *BlockCache) Open(obj s3backend.Version) *Reader {
	return &Reader{c: c, obj: obj}
}

// Hold starts fetching the blocks of [off, off+n) that are neither cached
// nor being fetched, like Prefetch, and keeps them, and those of them the
// reader holds already, until it is closed: read-ahead does not let them
// go to make room. It is for a reader that will come back to them, such
// as one of a zip archive, which readers open at the end first and then
// read from the start: fetched at open, both ends arrive in one round
// trip, and read-ahead through the archive does not fetch the tail again.
func (r *Reader) Hold(off, n int64) { r.prefetch(off, n, true) }

// OpenRandom returns a Reader that never reads ahead: each read fetches
// just the blocks it covers. It is for readers that know their reads are
// scattered, such as reads of one window inside a compressed .npz member,
// where reads that look in order are still not followed by more.
func (c *BlockCache) OpenRandom(obj s3backend.Version) *Reader {
	return &Reader{c: c, obj: obj, random: true}
}

// NotKeptOnDisk tells r, before its first read, that its user keeps
// what it makes of the bytes [off, off+n) of the object in the cache dir
// (the member view keeps the decoded content of a compressed member, not
// its compressed bytes): the disk tier serves the blocks it holds, but
// does not write the blocks wholly inside that range that r's fetches
// bring, so that the dir does not hold one thing twice. The blocks at its
// edges, which hold other bytes too (a zip directory, another member),
// are written as any. A block that a fetch of r brings is not written
// for another reader waiting for it either. It returns r.
func (r *Reader) NotKeptOnDisk(off, n int64) *Reader {
	r.notOnDisk = byteRange{off, n}
	return r
}

// byteRange is the bytes [off, off+n) of an object.
type byteRange struct{ off, n int64 }

// holds reports whether [off, end) lies in r.
func (r byteRange) holds(off, end int64) bool { return r.n > 0 && off >= r.off && end <= r.off+r.n }

// Prefetch starts fetching the blocks of [off, off+n) that are neither
// cached nor being fetched, in parallel GETs of at most 1 MiB (on S3 a
// GET's first byte costs far more than its next megabyte, but several
// small GETs arrive sooner than one large one), and returns at once. The
// reader holds them, as it holds read-ahead, until it needs the room or is
// closed (a random reader) or reads past them: the cache could refuse or
// evict them before they are read. It is for a reader that knows what it
// will read next (the compressed bytes behind the next stretch of an .npz
// member) and would otherwise pay a round trip for each request the
// kernel sends, one after the other.
func (r *Reader) Prefetch(off, n int64) { r.prefetch(off, n, false) }

// prefetch is Prefetch, and with pin set, Hold.
func (r *Reader) prefetch(off, n int64, pin bool) {
	off, end := max(off, 0), min(off+n, r.obj.Size)
	if r.c.blocks == nil || off >= end {
		return
	}
	bs := r.c.opt.BlockSize
	first, last := off/bs, (end-1)/bs
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropFailedLocked()
	r.prefetchLocked(first, last, max(1, prefetchGET/bs))
	if !pin {
		return
	}
	for i, h := range r.held {
		if !h.pinned && h.f.first <= last && h.f.end() > first {
			r.held[i].pinned = true
			r.pinnedBytes += h.charge
		}
	}
}

// prefetchGET is the largest GET Prefetch makes: loaders reading random
// windows through the .npz member view got more samples a second with
// 1 MiB GETs than with one GET a block, on loopback (MinIO's per-request
// cost on the same cores) and through the S3-like proxy (BENCHMARKS.md,
// "Figures behind design choices": prefetch GET size).
const prefetchGET = 1 << 20

// ReadAt reads len(p) bytes at off, fewer only at the end of the object.
// It finds each block the range covers (held by read-ahead, cached, or
// to be fetched), fetches the missing ones in runs, and copies from each
// as it arrives.
func (r *Reader) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	p, err := r.clip(p, off)
	if err != nil || len(p) == 0 {
		return 0, err
	}
	if r.c.blocks == nil {
		return r.readUncached(ctx, p, off)
	}
	end := off + int64(len(p))
	bs := r.c.opt.BlockSize
	first, last := off/bs, (end-1)/bs

	r.mu.Lock()
	r.dropFailedLocked()
	r.observeLocked(off, end)
	held := r.heldFor(first, last)
	// Start reading ahead before waiting for this read's own blocks, so
	// that both are in flight in the same round trip.
	r.readAheadLocked(end)
	r.mu.Unlock()

	blocks, waits := r.locate(first, last, held)
	r.fetchMissing(first, blocks, waits)
	n, err := r.copyBlocks(ctx, p, off, first, blocks, waits)
	if err != nil {
		return n, err
	}
	if !r.random {
		// A random reader's prefetches are for reads that may come in
		// any order: they are held until it needs the room or closes.
		r.mu.Lock()
		r.releasePassedLocked()
		r.mu.Unlock()
	}
	return n, nil
}

// clip checks off and cuts p to the end of the object.
func (r *Reader) clip(p []byte, off int64) ([]byte, error) {
	if off < 0 {
		return nil, ErrNegativeOffset
	}
	if off >= r.obj.Size {
		return nil, io.EOF
	}
	if rest := r.obj.Size - off; int64(len(p)) > rest {
		p = p[:rest]
	}
	return p, nil
}

// readUncached reads p at off straight from the store: with caching off.
func (r *Reader) readUncached(ctx context.Context, p []byte, off int64) (int, error) {
	n, err := r.c.store.ReadAt(ctx, r.obj, off, p)
	switch {
	case n == len(p):
		err = nil
	case err == nil || err == io.EOF:
		// p ends within the listed size: a read that ends before
		// is no end of file (an error wrapping io.EOF is not either).
		err = fmt.Errorf("object %q ended at %d bytes, before its listed size %d", r.obj.Key, off+int64(n), r.obj.Size)
	}
	return n, err
}

// locate finds blocks [first, last]: a fetch to wait for where read-ahead
// holds one (held), the bytes where the cache has them, neither where the
// block is missing.
func (r *Reader) locate(first, last int64, held []*fetch) (blocks [][]byte, waits []*fetch) {
	blocks = make([][]byte, last-first+1)
	waits = make([]*fetch, last-first+1)
	for idx := first; idx <= last; idx++ {
		i := idx - first
		if f := held[i]; f != nil {
			waits[i] = f
			r.c.hits.Add(1)
		} else if b, ok := r.c.cached(r.obj, idx); ok {
			blocks[i] = b
			r.c.hits.Add(1)
		}
	}
	return blocks, waits
}

// fetchMissing starts a fetch of each run of missing blocks, blocks[0]
// being block first, and sets their waits; blocks at hand are not asked
// for again, even if the cache refused them.
func (r *Reader) fetchMissing(first int64, blocks [][]byte, waits []*fetch) {
	last := int64(len(blocks)) - 1
	for i := int64(0); i <= last; {
		if blocks[i] != nil || waits[i] != nil {
			i++
			continue
		}
		j := i
		for j+1 <= last && blocks[j+1] == nil && waits[j+1] == nil {
			j++
		}
		fetched, _ := r.c.startFetches(r.obj, first+i, first+j, j-i+1, true, r.notOnDisk)
		for k, f := range fetched {
			r.c.misses.Add(1)
			waits[i+int64(k)] = f // nil if cached since we looked: block() finds it
		}
		i = j + 1
	}
}

// copyBlocks copies into p, read at off, the part of each block it
// covers, waiting for each block in turn.
func (r *Reader) copyBlocks(ctx context.Context, p []byte, off, first int64, blocks [][]byte, waits []*fetch) (int, error) {
	bs := r.c.opt.BlockSize
	end := off + int64(len(p))
	n := 0
	for i := range blocks {
		idx := first + int64(i)
		b := blocks[i]
		if b == nil {
			var err error
			b, err = r.block(ctx, idx, waits[i])
			if err != nil {
				return n, err
			}
		}
		lo := max(off, idx*bs) - idx*bs
		hi := min(end, idx*bs+int64(len(b))) - idx*bs
		n += copy(p[n:], b[lo:hi])
	}
	return n, nil
}

// block waits for block idx from f, or, without f, finds or fetches it.
// A failed fetch is not tried again here: the store has retried it.
func (r *Reader) block(ctx context.Context, idx int64, f *fetch) ([]byte, error) {
	if f != nil {
		return f.wait(ctx, idx)
	}
	if b, ok := r.c.cached(r.obj, idx); ok {
		return b, nil
	}
	// The cache may drop a block between two looks; a few tries settle it.
	for range 3 {
		retry, _ := r.c.startFetches(r.obj, idx, idx, 1, true, r.notOnDisk)
		if retry[0] != nil {
			return retry[0].wait(ctx, idx)
		}
		if b, ok := r.c.cached(r.obj, idx); ok {
			return b, nil
		}
	}
	return nil, errors.New("block vanished from the cache while being read")
}

// observeLocked updates the access pattern with a read of [off, end).
func (r *Reader) observeLocked(off, end int64) {
	firstRead := !r.reading
	if firstRead {
		r.reading = true
		r.c.readers.Add(1)
	}
	bs, slack := r.c.opt.BlockSize, r.c.opt.ReorderWindow
	sequential := off >= r.next-slack && off <= max(r.next, r.ahead)+slack
	if !sequential {
		// A jump: start over with no window. Held read-ahead stays
		// until the reader passes it or it must make room: zip readers
		// jump to the tail and back.
		r.window, r.streak = 0, 0
		r.start, r.next = off, end
		r.ahead = alignUp(end, bs)
		return
	}
	if off > r.next+slack {
		// A skip into what was read ahead: still in order, but what lies
		// between was not read, so it is not passed (np.load's jump to
		// the central directory of an archive smaller than the window).
		r.start = off
	}
	if end > r.next {
		r.streak += end - max(off, r.next)
		r.next = end
	}
	switch {
	case r.window == 0 && firstRead && off == 0:
		// A file read from its start is most likely read through
		// (numpy, cat, a copy): fetch several parts in parallel from
		// the first read instead of ramping up from one block, as a
		// direct S3 client would.
		r.window = max(r.c.opt.MaxReadAhead/2, min(r.c.opt.PartSize, r.c.opt.MaxReadAhead))
	case r.window == 0:
		r.window = bs
	case r.streak >= bs:
		// Grow at most once per block read in order: reach the maximum
		// after a few MiB, and not on a few stray small reads.
		r.window = min(2*r.window, r.c.opt.MaxReadAhead)
		r.streak = 0
	}
}

// readAheadLocked starts fetches so that the window after end is covered.
func (r *Reader) readAheadLocked(end int64) {
	if r.random || r.window == 0 || r.c.opt.MaxReadAhead == 0 || end < r.next-r.c.opt.ReorderWindow {
		return
	}
	c := r.c
	bs := c.opt.BlockSize
	window := min(r.window, r.windowCap())
	from := max(r.ahead, alignUp(end, bs))
	to := min(alignUp(end+window, bs), alignUp(r.obj.Size, bs))
	// Parts of a quarter of the window keep three or four GETs in flight
	// as the reader moves: with one part as large as the window, the next
	// GET could start only once the reader had reached the end of the last
	// one, and it would wait a whole round trip there.
	part := min(c.opt.PartSize, max(alignUp(window/4, bs), bs))
	objEnd := alignUp(r.obj.Size, bs)
	if from < to && c.opt.ObserveWindow != nil {
		c.opt.ObserveWindow(window)
	}
	for from < to {
		partEnd := min(from+part, to)
		if partEnd-from < part && partEnd < objEnd {
			// Top up in whole parts: fewer, larger GETs.
			break
		}
		if first, last := from/bs, (partEnd-1)/bs; !r.prefetchLocked(first, last, last-first+1) {
			break
		}
		from = partEnd
		r.ahead = partEnd
	}
}

// windowCap shares the read-ahead budget among the readers reading now.
func (r *Reader) windowCap() int64 {
	readers := max(r.c.readers.Load(), 1)
	return max(r.c.opt.BlockSize, min(r.c.opt.MaxReadAhead, r.c.ahead.Total()/readers))
}

// prefetchLocked starts fetching blocks [first, last] that the reader does
// not hold already, in GETs of at most blocksPerGET blocks, as read-ahead
// held by this reader. It reports false when the budget has no room.
// Held blocks are skipped even when the fetch that brought them is done:
// the cache may have refused or evicted them, and then asking the cache
// again would fetch them twice.
func (r *Reader) prefetchLocked(first, last, blocksPerGET int64) bool {
	last = min(last, (r.obj.Size-1)/r.c.opt.BlockSize)
	if first > last {
		return true
	}
	held := r.heldFor(first, last)
	for i := int64(0); i <= last-first; {
		if held[i] != nil {
			i++
			continue
		}
		j := i
		for j+1 <= last-first && held[j+1] == nil {
			j++
		}
		if !r.fetchAheadLocked(first+i, first+j, blocksPerGET) {
			return false
		}
		i = j + 1
	}
	return true
}

// fetchAheadLocked starts fetching blocks [first, last], none of them
// held, as read-ahead held by this reader; false when the budget has no
// room.
func (r *Reader) fetchAheadLocked(first, last, blocksPerGET int64) bool {
	c := r.c
	var want int64
	for idx := first; idx <= last; idx++ {
		want += c.blockLen(r.obj, idx)
	}
	// Make room in this reader's own share first, oldest first. Keeping
	// held what the reader has not read yet instead (the cache may refuse
	// a block, which is then fetched again) was tried: it fetched a little
	// less, but readers waiting for room kept the budget from others,
	// whose reads then fetched outside it, and RSS peaked higher
	// (BENCHMARKS.md, "Figures behind design choices": read-ahead let go
	// oldest first).
	for r.heldBytes-r.pinnedBytes+want > r.windowCap()+c.opt.BlockSize {
		i := slices.IndexFunc(r.held, func(h heldFetch) bool { return !h.pinned })
		if i < 0 {
			break
		}
		r.releaseLocked(i)
	}
	if !c.ahead.TryTake(want) {
		return false
	}
	fetches, started := c.startFetches(r.obj, first, last, blocksPerGET, false, r.notOnDisk)
	for _, f := range started {
		c.fetchedAhead.Add(f.size)
	}
	// Hold each fetch once, charged for the blocks of [first, last] it
	// brings; blocks already cached cost nothing.
	var charged int64
	for i, f := range fetches {
		if f == nil {
			continue
		}
		n := c.blockLen(r.obj, first+int64(i))
		if k := len(r.held) - 1; k >= 0 && r.held[k].f == f {
			r.held[k].charge += n
		} else {
			r.held = append(r.held, heldFetch{f: f, charge: n})
		}
		charged += n
	}
	r.heldBytes += charged
	c.ahead.Give(want - charged)
	return true
}

// heldFetch is a fetch a reader keeps for read-ahead, and the bytes of
// the budget it is charged.
type heldFetch struct {
	f      *fetch
	charge int64
	pinned bool // see pinnedBytes
}

// heldFor returns, for each block in [first, last], the held read-ahead
// fetch that covers it, or nil.
func (r *Reader) heldFor(first, last int64) []*fetch {
	out := make([]*fetch, last-first+1)
	for _, h := range r.held {
		for idx := max(first, h.f.first); idx <= last && h.f.covers(idx); idx++ {
			out[idx-first] = h.f
		}
	}
	return out
}

// releasePassedLocked lets go of held fetches that the reader has read
// past in order: that end before it, minus the window in which reads
// arrive out of order, and after the start of its stream. Those it jumped
// over stay held: np.load reads at 0 (reading ahead through the archive),
// jumps to the central directory at the end, then comes back to read the
// member from the start; let go at the jump, the blocks were fetched
// again whenever the cache had refused or evicted them (BENCHMARKS.md,
// "Figures behind design choices": read-ahead a reader jumped over).
func (r *Reader) releasePassedLocked() {
	bs := r.c.opt.BlockSize
	for i := 0; i < len(r.held); {
		f := r.held[i].f
		if end := f.end() * bs; end <= r.next-r.c.opt.ReorderWindow && end > r.start {
			r.releaseLocked(i)
			continue
		}
		i++
	}
}

// dropFailedLocked lets go of held fetches that have failed, so that the
// next read or prefetch of their blocks fetches them again: S3 may be back
// by then, and a stored error would fail every later read of the handle.
// Read-ahead is moved back to the first block it lost, to fetch it again
// in parts as the reader reaches it.
func (r *Reader) dropFailedLocked() {
	for i := 0; i < len(r.held); {
		f := r.held[i].f
		select {
		case <-f.done:
			if f.err != nil {
				r.releaseLocked(i)
				r.ahead = min(r.ahead, f.first*r.c.opt.BlockSize)
				continue
			}
		default:
		}
		i++
	}
}

func (r *Reader) releaseLocked(i int) {
	h := r.held[i]
	r.held = append(r.held[:i], r.held[i+1:]...)
	r.heldBytes -= h.charge
	if h.pinned {
		r.pinnedBytes -= h.charge
	}
	r.c.ahead.Give(h.charge)
}

// Close releases what the reader holds.
func (r *Reader) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.held) > 0 {
		r.releaseLocked(0)
	}
	if r.reading {
		r.reading = false
		r.c.readers.Add(-1)
	}
}

func alignUp(n, to int64) int64 { return (n + to - 1) / to * to }
