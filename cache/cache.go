// Package cache sits between the filesystem and the object store: it turns
// reads on open files into ranged GETs, keeps the blocks it fetched in a
// bounded in-memory cache, and reads ahead for readers that read in order.
package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"golang.org/x/sync/semaphore"

	"github.com/bgbfs/bgbfs/s3backend"
)

// ErrClosed is a read of a cache that was closed: the filesystem is being
// unmounted, and nothing more is fetched.
var ErrClosed = errors.New("block cache closed: the filesystem is being unmounted")

// Options size the cache and the read-ahead.
type Options struct {
	// CacheSize bounds the bytes of blocks held: cached, read ahead, and
	// being fetched for reads. 0 turns caching and read-ahead off: every
	// read is one ranged GET of what was asked.
	CacheSize int64
	// BlockSize is the unit of caching.
	BlockSize int64
	// PartSize is the largest ranged GET read-ahead makes.
	PartSize int64
	// MaxReadAhead is the largest read-ahead window of one reader.
	MaxReadAhead int64
	// MaxParallel bounds the GETs in flight, all readers together.
	MaxParallel int
	// FetchTimeout bounds a fetch from its start (its wait for memory
	// and for a request slot included): past it, the fetch fails and the
	// next read that needs its blocks fetches them again. A fetch may be
	// shared by readers and by read-ahead that nobody waits for, so it
	// does not end with a reader's deadline, only with its own. 0 means
	// no bound.
	FetchTimeout time.Duration
	// ReorderWindow is how far apart reads of one sequential stream may
	// arrive out of order: the kernel sends its read-ahead as parallel
	// requests, so this should be at least the kernel's read-ahead. Reads
	// this close to the stream also count as in order (a short skip is
	// not random access). 0 means 1 MiB.
	ReorderWindow int64
	Logger        *slog.Logger
	// ObserveWindow, if set, is told the read-ahead window of a reader
	// each time it starts fetching ahead.
	ObserveWindow func(bytes int64)
}

// Validate checks that the options make sense together.
func (o Options) Validate() error {
	switch {
	case o.CacheSize < 0:
		return errors.New("cache size must not be negative")
	case o.BlockSize < 4096 || o.BlockSize > 64<<20:
		return fmt.Errorf("block size %d must be from 4KiB to 64MiB", o.BlockSize)
	case o.PartSize < o.BlockSize:
		return fmt.Errorf("part size %d must be at least the block size %d", o.PartSize, o.BlockSize)
	case o.MaxReadAhead < 0:
		return errors.New("max read-ahead must not be negative")
	case o.MaxParallel < 1:
		return errors.New("max parallel requests must be at least 1")
	case o.FetchTimeout < 0:
		return errors.New("fetch timeout must not be negative")
	case o.CacheSize > 0 && o.CacheSize < 4*o.BlockSize:
		return fmt.Errorf("cache size %d must be 0 or at least 4 blocks (%d)", o.CacheSize, 4*o.BlockSize)
	}
	return nil
}

// CacheSize is split three ways: 1/aheadShare at most for read-ahead,
// 1/demandShare (at least a block) for blocks being fetched because a read
// needs them now, the rest for cached blocks. Without a bound on the
// second, 64 readers missing at once held 40 MiB beyond a 64 MiB cache.
// The cached blocks also have the room read-ahead does not hold at the
// moment: the read-ahead share set apart for good kept a third of the
// blocks of data that fit in the cache out of it (BENCHMARKS.md, "Every
// block in memory, kept").
const (
	aheadShare  = 4
	demandShare = 8
)

// BlockCache hands out Readers over an ObjectStore and holds the blocks
// they fetched. It is safe for concurrent use.
type BlockCache struct {
	store s3backend.ObjectStore
	opt   Options
	// blocks is nil when caching is off.
	blocks *ristretto.Cache[string, []byte]
	// requests is a semaphore of MaxParallel GETs.
	requests chan struct{}
	// ahead is the byte budget of read-ahead, shared by all readers.
	ahead *Budget
	// demand bounds the bytes of fetches that reads wait for (read-ahead
	// is bounded by ahead); demandBytes is its size.
	demand      *semaphore.Weighted
	demandBytes int64
	// readers counts open Readers that have read, to share ahead fairly.
	readers atomic.Int64

	mu sync.Mutex
	// inflight maps a block key to the fetch bringing it, so concurrent
	// misses on one block make one GET.
	inflight map[string]*fetch
	// life is the context of every GET, and counts the running fetches:
	// Close cancels it, so that an unmount does not wait for GETs nobody
	// will read, and waits for them; no fetch starts after it.
	life *Lifetime

	hits, misses, evictions, fetchedAhead atomic.Int64
}

// New returns a cache reading from store.
func New(store s3backend.ObjectStore, opt Options) (*BlockCache, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.ReorderWindow <= 0 {
		opt.ReorderWindow = 1 << 20
	}
	c := &BlockCache{
		store:    store,
		opt:      opt,
		requests: make(chan struct{}, opt.MaxParallel),
		inflight: map[string]*fetch{},
		life:     NewLifetime(context.Background()),
	}
	if opt.CacheSize == 0 {
		return c, nil
	}
	c.ahead = NewBudget(opt.CacheSize / aheadShare)
	c.demandBytes = max(opt.CacheSize/demandShare, opt.BlockSize)
	c.demand = semaphore.NewWeighted(c.demandBytes)
	blockBytes := opt.CacheSize - c.demandBytes
	blocks, err := ristretto.NewCache(&ristretto.Config[string, []byte]{
		NumCounters: max(10*blockBytes/opt.BlockSize, 1000),
		MaxCost:     blockBytes,
		BufferItems: 64,
		Metrics:     true,
		// Cost is the block's length: the bound is in bytes of data.
		IgnoreInternalCost: true,
		OnEvict:            func(*ristretto.Item[[]byte]) { c.evictions.Add(1) },
	})
	if err != nil {
		return nil, fmt.Errorf("create block cache: %w", err)
	}
	c.blocks = blocks
	// Read-ahead takes its room from the cached blocks' as it takes it
	// from its budget, before it fetches: the blocks it brings are set
	// into the cache with the room already made, and the cached blocks,
	// read-ahead and demand fetches together stay within CacheSize. (A
	// held block is counted twice while the cache holds it too: read-ahead
	// holds little for long, and it is the cache that may drop it.)
	c.ahead.watch = func(used int64) { blocks.UpdateMaxCost(blockBytes - used) }
	return c, nil
}

// Close stops new fetches (reads that need one fail with ErrClosed),
// cancels running ones and waits for them to end, then releases the
// cache's memory and goroutines. Index builds and read-ahead may still be
// reading when the filesystem is unmounted: a fetch started during or
// after the close of the block cache would Set into it, which can panic.
func (c *BlockCache) Close() {
	c.life.Close()
	if c.blocks != nil {
		c.blocks.Close()
	}
}

// Stats is a snapshot of the cache's counters.
type Stats struct {
	// Hits and Misses count blocks a read needed: found (cached, held by
	// read-ahead, or already being fetched) or fetched for it.
	Hits, Misses int64
	// Evictions counts blocks dropped to make room.
	Evictions int64
	// BytesCached is the size of the cached blocks; BytesAhead what
	// read-ahead holds beyond them. Their sum stays within CacheSize.
	BytesCached, BytesAhead int64
	// FetchedAhead counts the bytes that read-ahead asked for.
	FetchedAhead int64
}

// Stats returns the counters so far.
func (c *BlockCache) Stats() Stats {
	s := Stats{
		Hits:         c.hits.Load(),
		Misses:       c.misses.Load(),
		Evictions:    c.evictions.Load(),
		FetchedAhead: c.fetchedAhead.Load(),
	}
	if c.blocks != nil {
		m := c.blocks.Metrics
		s.BytesCached = int64(m.CostAdded()) - int64(m.CostEvicted())
		s.BytesAhead = c.ahead.InUse()
	}
	return s
}

func blockKey(obj s3backend.Version, idx int64) string {
	return obj.Key + "\x00" + obj.Tag() + "\x00" + strconv.FormatInt(idx, 10)
}

// blockLen is the length of block idx of obj: BlockSize but for the last.
func (c *BlockCache) blockLen(obj s3backend.Version, idx int64) int64 {
	return min(c.opt.BlockSize, obj.Size-idx*c.opt.BlockSize)
}

// fetch is one ranged GET of a run of whole blocks.
type fetch struct {
	obj   s3backend.Version
	first int64 // index of the first block
	count int64 // number of blocks
	size  int64 // their bytes
	// demand is set for a fetch a read waits for, unset for read-ahead,
	// which its reader has paid for already.
	demand bool
	// notOnDisk is the byte range that the fetch's reader keeps in
	// another form (NotKeptOnDisk): the disk tier does not write the
	// blocks wholly inside it.
	notOnDisk byteRange
	// blocks has one buffer per block. They are made when the GET starts,
	// not when it is queued: fetches waiting for a free request then hold
	// no memory, and the bytes in flight stay within MaxParallel GETs.
	blocks [][]byte
	done   chan struct{}
	err    error // set before done is closed
}

func (f *fetch) covers(idx int64) bool {
	return idx >= f.first && idx < f.first+f.count
}

// end is the index after the last block.
func (f *fetch) end() int64 { return f.first + f.count }

// wait returns block idx once the fetch is done.
func (f *fetch) wait(ctx context.Context, idx int64) ([]byte, error) {
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if f.err != nil {
		return nil, f.err
	}
	return f.blocks[idx-f.first], nil
}

// cached returns a block from the cache without counting a hit or miss.
func (c *BlockCache) cached(obj s3backend.Version, idx int64) ([]byte, bool) {
	return c.cachedKey(blockKey(obj, idx))
}

// cachedKey is cached with the block's key made already.
func (c *BlockCache) cachedKey(key string) ([]byte, bool) {
	if c.blocks == nil {
		return nil, false
	}
	return c.blocks.Get(key)
}

// startFetches makes sure every block in [first, last] is cached or being
// fetched, starting GETs (of at most maxBlocks blocks each) for runs that
// are neither; demand says a read waits for them (not read-ahead), and
// notOnDisk what of them the disk tier is not to keep. It returns a
// fetch for each block not in the cache, in order, or nil for the blocks
// found cached; and the fetches it started.
func (c *BlockCache) startFetches(obj s3backend.Version, first, last, maxBlocks int64, demand bool, notOnDisk byteRange) (perBlock, started []*fetch) {
	out := make([]*fetch, last-first+1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.life.Closed() {
		return closedFetches(out), nil
	}
	var run *fetch
	for idx := first; idx <= last; idx++ {
		key := blockKey(obj, idx)
		if f := c.inflight[key]; f != nil {
			out[idx-first], run = f, nil
			continue
		}
		if _, ok := c.cachedKey(key); ok {
			run = nil
			continue
		}
		if run == nil || run.count >= maxBlocks {
			run = &fetch{obj: obj, first: idx, demand: demand, notOnDisk: notOnDisk, done: make(chan struct{})}
			started = append(started, run)
		}
		run.count++
		run.size += c.blockLen(obj, idx)
		c.inflight[key] = run
		out[idx-first] = run
	}
	if !c.life.Start(len(started)) {
		// Closed while the runs were planned: none starts.
		for _, f := range started {
			for idx := f.first; idx < f.end(); idx++ {
				delete(c.inflight, blockKey(obj, idx))
			}
		}
		return closedFetches(out), nil
	}
	for _, f := range started {
		go c.run(f)
	}
	return out, started
}

// closedFetches fills out with one failed fetch: after Close every block
// is missing and stays missing.
func closedFetches(out []*fetch) []*fetch {
	closed := &fetch{done: make(chan struct{}), err: ErrClosed}
	close(closed.done)
	for i := range out {
		out[i] = closed
	}
	return out
}

// ErrFetchTimeout is a fetch that did not end within Options.FetchTimeout.
var ErrFetchTimeout = errors.New("not fetched within the fetch timeout")

// run performs one fetch. It does not depend on any reader's context
// (other readers may be waiting for the same blocks, and read-ahead has
// none), only on the cache's and its own deadline: a reader that gives up
// stops waiting, the fetch goes on for the others, and nobody's fetch
// runs forever.
func (c *BlockCache) run(f *fetch) {
	defer c.life.Done()
	ctx, cancel := c.life.Context(), context.CancelFunc(func() {})
	if c.opt.FetchTimeout > 0 {
		ctx, cancel = context.WithTimeoutCause(c.life.Context(), c.opt.FetchTimeout, ErrFetchTimeout)
	}
	defer cancel()
	n, release, err := c.fetchBytes(ctx, f)
	defer release()
	switch {
	case err == nil:
	case c.life.Context().Err() != nil:
		err = ErrClosed // cancelled by Close
	case context.Cause(ctx) == ErrFetchTimeout:
		err = fmt.Errorf("%q bytes %d-%d: %w (%v): %w", f.obj.Key, f.first*c.opt.BlockSize, f.first*c.opt.BlockSize+f.size-1, ErrFetchTimeout, c.opt.FetchTimeout, err)
	}
	if (err == nil || err == io.EOF) && int64(n) != f.size {
		// Blocks are never cached short: their buffers are zeros past n.
		err = fmt.Errorf("object %q ended at %d bytes, before its listed size %d", f.obj.Key, f.first*c.opt.BlockSize+int64(n), f.obj.Size)
	} else if err == io.EOF {
		err = nil
	}
	f.err = err
	if err != nil {
		// Nobody reads the buffers of a failed fetch; readers holding
		// it keep only its error until they drop it.
		f.blocks = nil
	}
	if err == nil && c.blocks != nil {
		for i, b := range f.blocks {
			c.blocks.Set(blockKey(f.obj, f.first+int64(i)), b, int64(len(b)))
		}
		// Sets are applied asynchronously: wait, so that a reader who
		// misses the inflight entry below finds the blocks cached (unless
		// the cache refused them, which only costs a GET).
		c.blocks.Wait()
	}
	c.mu.Lock()
	for idx := f.first; idx < f.end(); idx++ {
		key := blockKey(f.obj, idx)
		if c.inflight[key] == f {
			delete(c.inflight, key)
		}
	}
	c.mu.Unlock()
	close(f.done)
}

// fetchBytes waits for the fetch's memory (for a read's fetch: read-ahead
// has paid already) and a request slot, then makes its GET into buffers
// of its own. It returns with the slot given back and the memory still
// taken: release gives it back, once the blocks are in the cache.
func (c *BlockCache) fetchBytes(ctx context.Context, f *fetch) (n int, release func(), err error) {
	release = func() {}
	if f.demand {
		// The budget before the request slot: a fetch that holds a slot
		// never waits for budget, so the slots always come free. One
		// fetch larger than the whole budget goes alone.
		size := min(f.size, c.demandBytes)
		if err := c.demand.Acquire(ctx, size); err != nil {
			return 0, release, err
		}
		release = func() { c.demand.Release(size) }
	}
	select {
	case c.requests <- struct{}{}:
	case <-ctx.Done():
		return 0, release, ctx.Err()
	}
	defer func() { <-c.requests }()
	f.blocks = make([][]byte, f.count)
	for i := range f.blocks {
		f.blocks[i] = make([]byte, c.blockLen(f.obj, f.first+int64(i)))
	}
	if f.notOnDisk.n > 0 {
		ctx = context.WithValue(ctx, notOnDiskKey{}, f.notOnDisk)
	}
	n, err = c.store.ReadAt(ctx, f.obj, f.first*c.opt.BlockSize, f.blocks...)
	return n, release, err
}
