package cache

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"

	"github.com/bgbfs/bgbfs/s3backend"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
)

// slowStore counts GETs and bytes, and makes each GET take a while so
// that concurrent readers really overlap.
type slowStore struct {
	*memstore.Store
	delay time.Duration
	gets  atomic.Int64
	bytes atomic.Int64
	// inFlight is the bytes of GETs under way; peak its highest.
	inFlight, peak atomic.Int64
}

func (s *slowStore) ReadAt(ctx context.Context, v s3backend.Version, off int64, bufs ...[]byte) (int, error) {
	s.gets.Add(1)
	var asked int64
	for _, b := range bufs {
		asked += int64(len(b))
	}
	now := s.inFlight.Add(asked)
	for p := s.peak.Load(); now > p && !s.peak.CompareAndSwap(p, now); p = s.peak.Load() {
	}
	defer s.inFlight.Add(-asked)
	time.Sleep(s.delay)
	n, err := s.Store.ReadAt(ctx, v, off, bufs...)
	s.bytes.Add(int64(n))
	return n, err
}

const kib, mib = 1 << 10, 1 << 20

func testOptions(cacheSize int64) Options {
	return Options{CacheSize: cacheSize, BlockSize: 64 * kib, PartSize: 256 * kib, MaxReadAhead: 1 * mib, MaxParallel: 8}
}

func setup(t *testing.T, size int, opt Options) (*BlockCache, *slowStore, s3backend.Version, []byte) {
	t.Helper()
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, uint64(size)))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	mem := memstore.New()
	mem.Put("obj", data)
	store := &slowStore{Store: mem, delay: time.Millisecond}
	c, err := New(store, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	info, _ := mem.Info("obj")
	return c, store, s3backend.Version{Key: "obj", ETag: info.ETag, Size: info.Size}, data
}

func TestSequentialReadFetchesEachByteOnce(t *testing.T) {
	for _, tt := range []struct {
		name      string
		size      int
		readSize  int
		cacheSize int64
	}{
		{"small reads", 3*mib + 17, 4 * kib, 4 * mib},
		{"large reads", 5*mib + 1, 128 * kib, 4 * mib},
		{"cache smaller than the file", 8 * mib, 128 * kib, 512 * kib},
		{"one short block", 100, 4 * kib, 1 * mib},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, store, obj, data := setup(t, tt.size, testOptions(tt.cacheSize))
			r := c.Open(obj)
			defer r.Close()
			got := make([]byte, 0, len(data))
			buf := make([]byte, tt.readSize)
			for off := int64(0); off < obj.Size; {
				n, err := r.ReadAt(context.Background(), buf, off)
				if err != nil {
					t.Fatalf("read at %d: %v", off, err)
				}
				got = append(got, buf[:n]...)
				off += int64(n)
				if used := c.Stats().BytesCached + c.Stats().BytesAhead; used > tt.cacheSize {
					t.Fatalf("holding %d bytes, over the cache size %d", used, tt.cacheSize)
				}
			}
			if !bytes.Equal(got, data) {
				t.Fatal("bytes differ from the source")
			}
			// Read-ahead may run past what was read by less than a window.
			if fetched := store.bytes.Load(); fetched > int64(len(data))+testOptions(0).MaxReadAhead {
				t.Errorf("fetched %d bytes to read %d", fetched, len(data))
			}
			// Parts are a quarter of the window the read-ahead share of the
			// cache allows.
			o := testOptions(0)
			part := min(o.PartSize, max(o.BlockSize, min(o.MaxReadAhead, tt.cacheSize/aheadShare)/4))
			parts := int64(len(data))/part + 1
			if gets := store.gets.Load(); gets > parts+10 {
				t.Errorf("%d GETs for %d bytes; want about %d (whole parts)", gets, len(data), parts)
			}
		})
	}
}

func TestRandomAndConcurrentReadsMatchSource(t *testing.T) {
	c, _, obj, data := setup(t, 6*mib+123, testOptions(2*mib))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := c.Open(obj)
			if w%2 == 0 {
				r = openZip(c, obj)
			}
			defer r.Close()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range 200 {
				off := rng.Int64N(obj.Size)
				n := 1 + rng.IntN(300*kib)
				buf := make([]byte, n)
				got, err := r.ReadAt(context.Background(), buf, off)
				if err != nil {
					errs <- err
					return
				}
				want := data[off:min(off+int64(n), obj.Size)]
				if !bytes.Equal(buf[:got], want) {
					errs <- errors.New("bytes differ")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestDemandFetchesStayWithinTheirShare has many readers miss at once
// and checks, at the store, that the bytes being fetched for them never
// exceed their share of the cache (CacheSize/demandShare): without it each
// of MaxParallel GETs would hold a read's worth. A read larger than the
// whole share still completes, fetched alone.
func TestDemandFetchesStayWithinTheirShare(t *testing.T) {
	for _, tt := range []struct {
		name     string
		readSize int
		readers  int
	}{
		{"reads smaller than the share", 200 * kib, 16},
		{"reads larger than the share", 1 * mib, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			opt := testOptions(4 * mib) // share: 512 KiB; 8 GETs at once
			c, store, obj, data := setup(t, 16*mib, opt)
			store.delay = 5 * time.Millisecond
			share := opt.CacheSize / demandShare
			var wg sync.WaitGroup
			for w := range tt.readers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := c.OpenRandom(obj)
					defer r.Close()
					rng := rand.New(rand.NewPCG(uint64(w), 11))
					buf := make([]byte, tt.readSize)
					for range 10 {
						off := rng.Int64N(obj.Size - int64(len(buf)))
						if _, err := r.ReadAt(context.Background(), buf, off); err != nil || !bytes.Equal(buf, data[off:off+int64(len(buf))]) {
							t.Errorf("read at %d: %v", off, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			// A read spans at most one block more than its length.
			limit := max(share, int64(tt.readSize)+opt.BlockSize)
			if peak := store.peak.Load(); peak > limit {
				t.Errorf("%d readers of %d KiB had %d KiB being fetched at once; want at most %d KiB",
					tt.readers, tt.readSize/kib, peak/kib, limit/kib)
			}
		})
	}
}

func TestConcurrentMissesShareOneGet(t *testing.T) {
	c, store, obj, data := setup(t, 64*kib, testOptions(1*mib))
	store.delay = 50 * time.Millisecond
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := c.Open(obj)
			defer r.Close()
			buf := make([]byte, 1000)
			if _, err := r.ReadAt(context.Background(), buf, 5000); err != nil || !bytes.Equal(buf, data[5000:6000]) {
				t.Errorf("read: %v", err)
			}
		}()
	}
	wg.Wait()
	if gets := store.gets.Load(); gets != 1 {
		t.Errorf("16 concurrent misses on one block made %d GETs, want 1", gets)
	}
}

func TestZipOpenFetchesHeadAndTail(t *testing.T) {
	c, store, obj, data := setup(t, 2*mib, testOptions(4*mib))
	r := openZip(c, obj)
	defer r.Close()
	// The reader asks for the end-of-central-directory first, then the head.
	for _, off := range []int64{obj.Size - 22, obj.Size - 4096, 0} {
		buf := make([]byte, 22)
		if _, err := r.ReadAt(context.Background(), buf, off); err != nil || !bytes.Equal(buf, data[off:off+22]) {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	if gets := store.gets.Load(); gets != 2 {
		t.Errorf("%d GETs for head and tail, want 2 (both started at open)", gets)
	}
}

func TestChangedObjectIsStale(t *testing.T) {
	c, store, obj, _ := setup(t, 300*kib, testOptions(1*mib))
	store.Put("obj", []byte("a new version"))
	r := c.Open(obj)
	defer r.Close()
	_, err := r.ReadAt(context.Background(), make([]byte, 10), 0)
	if !errors.Is(err, s3backend.ErrStale) {
		t.Fatalf("err = %v, want ErrStale", err)
	}
}

func TestCacheOffReadsExactlyWhatIsAsked(t *testing.T) {
	c, store, obj, data := setup(t, 1*mib, testOptions(0))
	r := openZip(c, obj)
	defer r.Close()
	buf := make([]byte, 1000)
	for i, off := range []int64{0, 1000, 500000} {
		if _, err := r.ReadAt(context.Background(), buf, off); err != nil || !bytes.Equal(buf, data[off:off+1000]) {
			t.Fatalf("read at %d: %v", off, err)
		}
		if gets, n := store.gets.Load(), store.bytes.Load(); gets != int64(i+1) || n != int64(1000*(i+1)) {
			t.Fatalf("after %d reads: %d GETs, %d bytes", i+1, gets, n)
		}
	}
}

func TestValidate(t *testing.T) {
	good := testOptions(1 * mib)
	for _, tt := range []struct {
		name string
		edit func(*Options)
		ok   bool
	}{
		{"defaults", func(*Options) {}, true},
		{"cache off", func(o *Options) { o.CacheSize = 0 }, true},
		{"negative cache", func(o *Options) { o.CacheSize = -1 }, false},
		{"tiny block", func(o *Options) { o.BlockSize = 100 }, false},
		{"part below block", func(o *Options) { o.PartSize = o.BlockSize / 2 }, false},
		{"no parallelism", func(o *Options) { o.MaxParallel = 0 }, false},
		{"cache below 4 blocks", func(o *Options) { o.CacheSize = 3 * o.BlockSize }, false},
	} {
		o := good
		tt.edit(&o)
		if err := o.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

// The kernel sends its read-ahead as parallel requests, which arrive out of
// order; within the reorder window that must not look like random access.
func TestOutOfOrderReadsStaySequential(t *testing.T) {
	opt := testOptions(16 * mib)
	opt.ReorderWindow = 4 * 64 * kib
	c, store, obj, data := setup(t, 8*mib, opt)
	r := c.Open(obj)
	defer r.Close()
	buf := make([]byte, 64*kib)
	chunks := int(obj.Size) / len(buf)
	for group := 0; group < chunks; group += 4 {
		for _, k := range []int{3, 0, 2, 1} { // each group of four arrives shuffled
			off := int64(group+k) * int64(len(buf))
			if _, err := r.ReadAt(context.Background(), buf, off); err != nil || !bytes.Equal(buf, data[off:off+int64(len(buf))]) {
				t.Fatalf("read at %d: %v", off, err)
			}
		}
	}
	parts := obj.Size / opt.PartSize
	if gets := store.gets.Load(); gets > parts+12 {
		t.Errorf("%d GETs for %d bytes read in shuffled groups; want about %d whole parts", gets, obj.Size, parts)
	}
	if fetched := store.bytes.Load(); fetched > obj.Size+opt.MaxReadAhead {
		t.Errorf("fetched %d bytes for %d", fetched, obj.Size)
	}
}

// A random-access reader fetches only the blocks its reads cover, even
// when its reads come in order.
func TestOpenRandomNeverReadsAhead(t *testing.T) {
	opt := testOptions(16 * mib)
	c, store, obj, data := setup(t, 8*mib, opt)
	r := c.OpenRandom(obj)
	defer r.Close()
	buf := make([]byte, 256*kib)
	for off := int64(0); off < 2*mib; off += int64(len(buf)) {
		if _, err := r.ReadAt(context.Background(), buf, off); err != nil || !bytes.Equal(buf, data[off:off+int64(len(buf))]) {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	c.Close() // waits for any fetch a read-ahead would have started
	if fetched := store.bytes.Load(); fetched != 2*mib {
		t.Errorf("fetched %d bytes for 2 MiB read in order; want exactly the 2 blocks", fetched)
	}
}

// Prefetch fetches what is missing of a range in GETs of at most 1 MiB,
// without waiting, and a read of the range then costs no GET.
func TestPrefetch(t *testing.T) {
	opt := testOptions(16 * mib)
	c, store, obj, data := setup(t, 4*mib, opt)
	r := c.OpenRandom(obj)
	defer r.Close()
	buf := make([]byte, 64*kib)
	if _, err := r.ReadAt(context.Background(), buf, 0); err != nil {
		t.Fatal(err)
	}
	r.Prefetch(0, 512*kib) // block 0 is cached: 7 blocks to fetch
	r.Prefetch(0, 512*kib) // all cached or held: nothing more
	c.life.running.Wait()
	if gets, fetched := store.gets.Load(), store.bytes.Load(); gets != 2 || fetched != 512*kib {
		t.Errorf("%d GETs, %d bytes; want block 0, then one GET of the 7 others", gets, fetched)
	}
	if held := c.Stats().BytesAhead; held != 448*kib {
		t.Errorf("the reader holds %d bytes of prefetched blocks, want the 7 fetched", held)
	}
	got := make([]byte, 448*kib)
	if _, err := r.ReadAt(context.Background(), got, 64*kib); err != nil || !bytes.Equal(got, data[64*kib:512*kib]) {
		t.Fatalf("read after prefetch: %v", err)
	}
	if gets := store.gets.Load(); gets != 2 {
		t.Errorf("read of prefetched blocks made %d more GETs", gets-2)
	}
	// Reading on past them does not let them go: a random reader's
	// reads may come back. Closing does.
	if _, err := r.ReadAt(context.Background(), buf, 3*mib); err != nil {
		t.Fatal(err)
	}
	if held := c.Stats().BytesAhead; held != 448*kib {
		t.Errorf("after reading past them, %d bytes held, want 448 KiB", held)
	}
	r.Close()
	if held := c.Stats().BytesAhead; held != 0 {
		t.Errorf("after Close, %d bytes held", held)
	}
	// A longer range goes out as GETs of 1 MiB.
	r2 := c.OpenRandom(obj)
	defer r2.Close()
	before := store.gets.Load()
	r2.Prefetch(1*mib, 2*mib)
	c.life.running.Wait()
	if gets := store.gets.Load() - before; gets != 2 {
		t.Errorf("prefetching 2 MiB made %d GETs, want 2 of 1 MiB", gets)
	}
}

// outageStore fails every GET while down is set, as S3 does during an
// outage, and serves them again once it is cleared.
type outageStore struct {
	*slowStore
	down atomic.Bool
	// failed counts the GETs that failed.
	failed atomic.Int64
}

var errOutage = errors.New("S3 is down")

func (s *outageStore) ReadAt(ctx context.Context, v s3backend.Version, off int64, bufs ...[]byte) (int, error) {
	if s.down.Load() {
		s.failed.Add(1)
		return 0, errOutage
	}
	return s.slowStore.ReadAt(ctx, v, off, bufs...)
}

// TestFailedFetchesAreFetchedAgain starts read-ahead or prefetches while
// every GET fails, lets the store recover, and reads on through the same
// Reader: each read must fetch the blocks again, not return the error
// its failed read-ahead stored, and the budget must not stay charged for
// the failed fetches.
func TestFailedFetchesAreFetchedAgain(t *testing.T) {
	const readSize = 64 * kib
	for _, tt := range []struct {
		name string
		// duringOutage opens a reader and starts fetches that fail.
		duringOutage func(c *BlockCache, obj s3backend.Version) *Reader
		// again, if set, runs once the store is back, before the reads,
		// and must make GETs.
		again func(r *Reader)
		// after are the reads, in order, once the store is back.
		after func(obj s3backend.Version) []int64
	}{
		{
			name: "sequential reader's read-ahead",
			duringOutage: func(c *BlockCache, obj s3backend.Version) *Reader {
				r := c.Open(obj)
				// Read from the start: read-ahead starts with the read,
				// and both fail.
				if _, err := r.ReadAt(context.Background(), make([]byte, readSize), 0); err == nil {
					t.Fatal("read during the outage succeeded")
				}
				return r
			},
			after: func(s3backend.Version) []int64 {
				// Read on in order from where the failed read stopped.
				var offs []int64
				for i := range int64(8) {
					offs = append(offs, i*readSize)
				}
				return offs
			},
		},
		{
			name: "zip archive's head and tail fetched at open",
			duringOutage: func(c *BlockCache, obj s3backend.Version) *Reader {
				return openZip(c, obj)
			},
			after: func(obj s3backend.Version) []int64 {
				// The end of central directory, again and again, then
				// the head, as zipfile reads.
				tail := obj.Size - readSize
				return []int64{tail, tail, tail, tail, tail, 0}
			},
		},
		{
			name: "random reader's prefetch",
			duringOutage: func(c *BlockCache, obj s3backend.Version) *Reader {
				r := c.OpenRandom(obj)
				r.Prefetch(256*kib, 512*kib)
				return r
			},
			// Prefetch of the same range fetches what failed again, so
			// that the reads find it held.
			again: func(r *Reader) { r.Prefetch(256*kib, 512*kib) },
			after: func(s3backend.Version) []int64 {
				return []int64{256 * kib, 320 * kib, 384 * kib, 448 * kib, 512 * kib}
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, slow, obj, data := setup(t, 2*mib+12345, testOptions(8*mib))
			store := &outageStore{slowStore: slow}
			c.store = store
			store.down.Store(true)
			r := tt.duringOutage(c, obj)
			defer r.Close()
			c.life.running.Wait()
			if store.failed.Load() == 0 {
				t.Fatal("no fetch was tried during the outage")
			}
			store.down.Store(false)

			if tt.again != nil {
				tt.again(r)
				c.life.running.Wait()
				if slow.gets.Load() == 0 {
					t.Error("no GET after the outage: the blocks whose fetch failed were skipped")
				}
			}
			for i, off := range tt.after(obj) {
				buf := make([]byte, readSize)
				n, err := r.ReadAt(context.Background(), buf, off)
				if err != nil {
					t.Fatalf("read %d at %d after the store recovered: %v", i+1, off, err)
				}
				if !bytes.Equal(buf[:n], data[off:off+int64(n)]) {
					t.Fatalf("read %d at %d: bytes differ from the source", i+1, off)
				}
			}
			// What the reader holds is what the budget is charged, and
			// none of it is a failed fetch.
			r.mu.Lock()
			var charged int64
			for _, h := range r.held {
				select {
				case <-h.f.done:
					if h.f.err != nil {
						t.Errorf("the reader still holds a failed fetch of blocks %d-%d: %v", h.f.first, h.f.end()-1, h.f.err)
					}
				default:
				}
				charged += h.charge
			}
			r.mu.Unlock()
			if inUse := c.ahead.InUse(); inUse != charged {
				t.Errorf("read-ahead budget in use %d, want the %d bytes of the fetches held", inUse, charged)
			}
		})
	}
}

// rangeStore records the byte ranges of its GETs.
type rangeStore struct {
	*slowStore
	mu     sync.Mutex
	ranges [][2]int64 // [off, end)
}

func (s *rangeStore) ReadAt(ctx context.Context, v s3backend.Version, off int64, bufs ...[]byte) (int, error) {
	var n int64
	for _, b := range bufs {
		n += int64(len(b))
	}
	s.mu.Lock()
	s.ranges = append(s.ranges, [2]int64{off, off + n})
	s.mu.Unlock()
	return s.slowStore.ReadAt(ctx, v, off, bufs...)
}

// fetchedTwice is the number of bytes of [0, size) that two or more GETs
// asked for, counting every extra time.
func (s *rangeStore) fetchedTwice(size int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	count := make([]int32, size)
	var extra int64
	for _, r := range s.ranges {
		for i := r[0]; i < min(r[1], size); i++ {
			if count[i]++; count[i] > 1 {
				extra++
			}
		}
	}
	return extra
}

// refuseAllBlocks swaps c's block cache for one that admits nothing, as
// ristretto's admission policy refuses most new blocks once it is full
// (8 loaders streaming archives through a 1 GiB cache).
func refuseAllBlocks(t *testing.T, c *BlockCache) {
	t.Helper()
	refusing, err := ristretto.NewCache(&ristretto.Config[string, []byte]{
		NumCounters: 1000, MaxCost: 1, BufferItems: 64, IgnoreInternalCost: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.blocks.Close()
	c.blocks = refusing
}

// TestZipReadsFetchEachByteOnce reads an archive through openZip
// as numpy's np.load(path)["windows"] does (a few bytes at 0 for the
// magic, the end of central directory and the central directory at the
// end, then the member from the start, closing before the last block),
// with a cache that keeps blocks and with one that refuses them, and
// checks at the store that no byte was fetched twice: the reader holds
// what it fetched ahead, so whether the cache keeps it must not matter.
func TestZipReadsFetchEachByteOnce(t *testing.T) {
	// The defaults scaled down 16 times: blocks of 64 KiB, parts of 512
	// KiB, read-ahead up to 4 MiB, a 24-block archive.
	opt := Options{CacheSize: 64 * mib, BlockSize: 64 * kib, PartSize: 512 * kib, MaxReadAhead: 4 * mib, MaxParallel: 8, ReorderWindow: 256 * kib}
	const size = 24*64*kib - 1000
	const kernelRead = 32 * kib
	numpy := func(size int64) [][2]int64 {
		reads := [][2]int64{{0, 4 * kib}, {size - 22, 22}, {size - 5000, 5000}}
		for off := int64(0); off < size-64*kib; off += kernelRead {
			reads = append(reads, [2]int64{off, kernelRead})
		}
		return reads
	}
	for _, tt := range []struct {
		name   string
		refuse bool
		reads  func(size int64) [][2]int64
	}{
		{"np.load, cache keeps blocks", false, numpy},
		{"np.load, cache refuses blocks", true, numpy},
		{"zipfile (tail first), cache refuses blocks", true, func(size int64) [][2]int64 { return numpy(size)[1:] }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, slow, obj, data := setup(t, size, opt)
			store := &rangeStore{slowStore: slow}
			c.store = store
			if tt.refuse {
				refuseAllBlocks(t, c)
			}
			r := openZip(c, obj)
			for _, rd := range tt.reads(obj.Size) {
				off, n := rd[0], min(rd[1], obj.Size-rd[0])
				buf := make([]byte, n)
				if _, err := r.ReadAt(context.Background(), buf, off); err != nil || !bytes.Equal(buf, data[off:off+n]) {
					t.Fatalf("read of %d at %d: %v", n, off, err)
				}
			}
			r.Close()
			c.life.running.Wait()
			if twice := store.fetchedTwice(obj.Size); twice > 0 {
				t.Errorf("%d of the %d bytes were fetched more than once (%d bytes in %d GETs: %v)", twice, obj.Size, slow.bytes.Load(), len(store.ranges), store.ranges)
			}
			if held := c.ahead.InUse(); held != 0 {
				t.Errorf("%d bytes of read-ahead still charged after Close", held)
			}
		})
	}
}

// openZip opens obj as fs opens a zip archive: both ends held.
func openZip(c *BlockCache, obj s3backend.Version) *Reader {
	r := c.Open(obj)
	r.Hold(0, 1)
	r.Hold(obj.Size-1, 1)
	return r
}
