// Package npzview shows the members of .npz archives as files: an
// archive's zip directory lists them, a stored member is a range of the
// archive, and a deflated one is read through an index of access points
// (built by inflating it once, or read from a cache dir where it was
// stored) that lets a read inflate only a little before what it returns.
// It reads archives through the block cache and knows nothing of FUSE.
package npzview

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/ristretto/v2"
	"golang.org/x/sync/singleflight"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/s3backend"
)

// View shows the members of .npz archives as files, and holds the
// indexes that give random access into compressed members. It is safe
// for concurrent use.
type View struct {
	// blocks reads the archives.
	blocks *cache.BlockCache
	span   int64
	// indexes holds built indexes within a byte bound; ristretto may
	// refuse one, which then serves the reads that asked for it and is
	// built again next time.
	indexes *ristretto.Cache[string, *npz.Index]
	// life ends when the view is closed. Work that no one request owns
	// (index builds, zip directory reads, span inflations others may wait
	// for) runs under it instead of the request's context, and stops
	// with it at unmount. It counts index builds, which Set into indexes:
	// Close waits for them before it closes indexes.
	life *cache.Lifetime
	// building makes concurrent first reads of one member inflate it once.
	building singleflight.Group
	// spanBudget bounds the decoded spans all open member files hold.
	spanBudget *cache.Budget
	// buffers are the inflaters' buffers, reused from read to read;
	// spanBuffers the decoded spans', reused once no read copies from
	// them.
	buffers     *npz.Buffers
	spanBuffers *spanBuffers

	mu sync.Mutex
	// broken holds the members whose data is corrupt (bad CRC, undecodable
	// stream): the archive version cannot change, so building again would
	// only inflate the whole member again to fail the same way.
	broken map[string]error
	// dirs holds the zip directories read (a few hundred bytes each
	// for an .npz), so that a member directory the kernel forgot and
	// looks up again costs no GET of the archive's tail; dirBytes is
	// about what they take (directoryBytes).
	dirs     map[string]*npz.Directory
	dirBytes int64
	// heads holds the starts of members' content (headRegion bytes)
	// that archive files keep (SavedArchive.Heads) or that reads
	// inflated through the member's index, by indexKey, for the header
	// reads of later opens; headBytes is what they take.
	heads     map[string][]byte
	headBytes int64

	// files, if set, saves indexes across runs: a build first looks
	// there, and (with saveFiles) writes what it built.
	files     *IndexFiles
	saveFiles bool
	// decoded, if set, keeps decoded members in a local cache dir.
	decoded *decodedStore
	logger  *slog.Logger
	// filesOff is set once a save failed other than by the dir's own
	// pause: indexes are held in memory only.
	filesOff atomic.Bool
	// loadFailed is set once a dir could not be read (not a missing or
	// untrusted file: an I/O or S3 failure).
	loadFailed atomic.Bool

	builds, hits, buildErrors atomic.Int64
	// memberReads counts reads of member files; returned the bytes of
	// compressed members they returned, inflated the bytes inflated to
	// answer them (from the access point before each), and
	// buildInflated those index builds inflated.
	memberReads, returned, inflated atomic.Int64
	buildInflated                   atomic.Int64
	loads, filesIgnored, filesSaved atomic.Int64
	// wrapInflaterSource, if set, wraps what reads of member files
	// inflate from: tests count the compressed bytes those inflations
	// read, beside the view's own count of bytes inflated.
	wrapInflaterSource func(io.ReaderAt) io.ReaderAt
	// onPrefetch, if set, is told of every stretch of an archive reads
	// of member files ask the block cache to fetch ahead.
	onPrefetch func(off, n int64)
	// kernelReadAhead is the kernel's read-ahead on the mount, which says
	// how far around a window the kernel reads.
	kernelReadAhead atomic.Int64
}

// maxBroken bounds the broken-member memo, and maxDirBytes the memory of
// the held directories (the bucket's 6,500 archives take about
// 2 MB); each is cleared when full, which only costs reading again. A
// directory larger than maxDirBytes/8 (an archive of tens of thousands of
// members; one may take 16 MiB) is not held.
const (
	maxBroken   = 1024
	maxDirBytes = 8 << 20
)

// maxHeadBytes bounds the memory of the held heads of members (64 KiB
// each): a head is wanted by every np.load of its member (each reads the
// array's header through a new open). It is cleared when full, which
// only costs a later open inflating the head again (and, after a
// restart, fetching the member's first blocks).
const maxHeadBytes = 16 << 20

// directoryBytes is about what dir takes in memory, held under a
// key of keyLen bytes.
func directoryBytes(keyLen int, dir *npz.Directory) int64 {
	const entry = 96 // a Member or a MemberError, its pointers and map share
	n := int64(keyLen + entry)
	for _, m := range dir.Members {
		n += entry + int64(len(m.Name))
	}
	for _, u := range dir.Unusable {
		n += entry + int64(len(u.Name)+len(u.Err.Error()))
	}
	return n
}

// MinIndexBytes is the least memory for indexes that holds one of a
// few access points at its largest: an index holds at most 4 KiB of its
// member's start and, per access point, a window that is usually tens of
// bytes but is stored whole (32 KiB) when its sparse form fails its
// check. With less, such an index is never held, and every read of its
// member inflates the member whole again.
const MinIndexBytes = 128 << 10

// heldSpans is how many checkpoint spans of decoded content all open
// member files hold together: the kernel reads a window as several
// requests, and a span decoded for the first is held for the next; eight
// loaders with a couple of files open each, at heldSpanFactor spans a
// file, need about this many.
const heldSpans = 64

// SpanBytes is the memory decoded spans of members take at most, for
// checkpoint span span.
func SpanBytes(span int64) int64 { return heldSpans * span }

// Config is what a View is told.
type Config struct {
	// Span is the output distance between access points of a compressed
	// member; IndexBytes bounds the indexes held together and SpanBytes
	// the decoded spans of all open member files together (SpanBytes
	// says how much for a span). The command validates them
	// (--npz-checkpoint-span from 64 KiB to 64 MiB, --npz-index-size at
	// least MinIndexBytes); the view trusts them.
	Span, IndexBytes, SpanBytes int64
	// Files, if set, is where the view looks for indexes before it
	// builds them and, with WriteFiles, writes the ones it builds (in the
	// background: a read does not wait for the write).
	Files      *IndexFiles
	WriteFiles bool
	// Decoded, if set, is where the view keeps what reads of compressed
	// members returned, decoded, for later reads; the compressed blocks
	// read for them are then not kept on disk.
	Decoded *DecodedFiles
	Logger  *slog.Logger
}

// New returns a member view of the archives blocks reads.
func New(blocks *cache.BlockCache, c Config) (*View, error) {
	indexBytes := c.IndexBytes
	idx, err := ristretto.NewCache(&ristretto.Config[string, *npz.Index]{
		// An index of an 85 MB member of EEG windows is about 23 KB,
		// of its labels member 1 KB; ristretto wants ten counters per
		// item it may hold.
		NumCounters:        max(10*indexBytes/(4<<10), 1000),
		MaxCost:            indexBytes,
		BufferItems:        64,
		Metrics:            true,
		IgnoreInternalCost: true,
	})
	if err != nil {
		return nil, fmt.Errorf("create npz index cache: %w", err)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	spanBudget := cache.NewBudget(c.SpanBytes)
	v := &View{
		blocks: blocks, span: c.Span, indexes: idx, spanBudget: spanBudget, buffers: new(npz.Buffers), spanBuffers: newSpanBuffers(spanBudget),
		life: cache.NewLifetime(context.Background()), broken: map[string]error{}, dirs: map[string]*npz.Directory{}, heads: map[string][]byte{},
		files: c.Files, saveFiles: c.WriteFiles, logger: c.Logger,
	}
	if c.Decoded != nil {
		v.decoded = newDecodedStore(*c.Decoded, c.Logger)
		v.decoded.startCheck = v.startVerify
	}
	v.kernelReadAhead.Store(defaultKernelReadAhead)
	return v, nil
}

// errViewClosed is work asked of the view after Close.
var errViewClosed = errors.New("npz member view closed: the filesystem is being unmounted")

// Close stops the view's background work, waits for index builds to end,
// and releases the index cache.
func (v *View) Close() {
	v.life.Close()
	v.decoded.wait()
	v.decoded.closeChecked()
	v.indexes.Close()
}

// Stats is a snapshot of the member view's counters.
type Stats struct {
	// IndexBuilds counts members inflated whole to index them;
	// IndexBuildErrors those that failed. IndexHits counts reads that
	// found their index built.
	IndexBuilds, IndexBuildErrors, IndexHits int64
	// IndexBytes is the memory of the indexes held.
	IndexBytes int64
	// IndexLoads counts indexes read from the cache dir, IndexSaves
	// those written to it, and IndexFilesIgnored the files in it that
	// were not trusted (corrupt, truncated, of another format or of
	// another archive version).
	IndexLoads, IndexSaves, IndexFilesIgnored int64
	// MemberReads counts reads of member files (one per FUSE read).
	// ReturnedBytes are the bytes of compressed members those reads
	// returned, InflatedBytes those inflated to answer them (from the
	// access point before each read: InflatedBytes ÷ ReturnedBytes is
	// what a read costs over what it needs), and IndexInflatedBytes
	// those index builds inflated.
	MemberReads, ReturnedBytes, InflatedBytes, IndexInflatedBytes int64
	// Decoded counts the decoded members kept in the cache dir.
	Decoded DecodedStats
}

// Stats returns the counters so far.
func (v *View) Stats() Stats {
	m := v.indexes.Metrics
	return Stats{
		IndexBuilds:        v.builds.Load(),
		IndexBuildErrors:   v.buildErrors.Load(),
		IndexHits:          v.hits.Load(),
		IndexBytes:         int64(m.CostAdded()) - int64(m.CostEvicted()),
		IndexLoads:         v.loads.Load(),
		IndexSaves:         v.filesSaved.Load(),
		IndexFilesIgnored:  v.filesIgnored.Load(),
		MemberReads:        v.memberReads.Load(),
		ReturnedBytes:      v.returned.Load(),
		InflatedBytes:      v.inflated.Load(),
		IndexInflatedBytes: v.buildInflated.Load(),
		Decoded:            v.decoded.stats(),
	}
}

func (v *View) heldDirectory(obj s3backend.Version) *npz.Directory {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.dirs[obj.Key+"\x00"+obj.Tag()]
}

func (v *View) holdDirectory(obj s3backend.Version, dir *npz.Directory) {
	key := obj.Key + "\x00" + obj.Tag()
	n := directoryBytes(len(key), dir)
	if n > maxDirBytes/8 {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.dirs[key]; ok {
		return
	}
	if v.dirBytes+n > maxDirBytes {
		clear(v.dirs)
		v.dirBytes = 0
	}
	v.dirs[key] = dir
	v.dirBytes += n
}

func indexKey(obj s3backend.Version, m npz.Member) string {
	return obj.Key + "\x00" + obj.Tag() + "\x00" + m.Name
}

// viewIndex returns the index of member m of archive obj if the view
// holds it in memory.
func (v *View) viewIndex(obj s3backend.Version, m npz.Member) *npz.Index {
	x, ok := v.indexes.Get(indexKey(obj, m))
	if !ok {
		return nil
	}
	v.hits.Add(1)
	return x
}

// index returns the index of the deflated member m of archive obj,
// building it if it is not held. The build reads the member through its
// own sequential reader and does not stop when ctx is cancelled (other
// reads may be waiting for it), only when the view is closed.
func (v *View) index(ctx context.Context, obj s3backend.Version, m npz.Member) (*npz.Index, error) {
	key := indexKey(obj, m)
	if x, ok := v.indexes.Get(key); ok {
		v.hits.Add(1)
		return x, nil
	}
	if err := v.brokenMember(key); err != nil {
		return nil, err
	}
	return cache.WaitShared(ctx, &v.building, key, func() (*npz.Index, error) { return v.build(obj, m, key) })
}

// savedArchive returns the zip directory of archive obj that "bgbfs index"
// saved in the cache dir, and holds the member indexes saved with it in
// memory; nil if there is none (or it is not to be trusted, logged).
func (v *View) savedArchive(obj s3backend.Version) *npz.Directory {
	if v.files == nil {
		return nil
	}
	if !v.life.Start(1) { // Sets into indexes come before Close's
		return nil
	}
	defer v.life.Done()
	saved, err := v.files.LoadArchive(v.life.Context(), obj)
	if err != nil {
		v.fileError(obj, "", err)
		return nil
	}
	for _, m := range saved.Dir.Members {
		if x := saved.Indexes[m.Name]; x != nil {
			v.hold(indexKey(obj, m), x)
			v.loads.Add(1)
		}
		if h := saved.Heads[m.Name]; h != nil {
			v.holdHead(indexKey(obj, m), h)
		}
	}
	return saved.Dir
}

// holdHead keeps h, the start of the content of the member under key.
func (v *View) holdHead(key string, h []byte) {
	n := int64(len(key) + len(h))
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.headBytes+n > maxHeadBytes {
		clear(v.heads)
		v.headBytes = 0
	}
	if old, ok := v.heads[key]; ok {
		v.headBytes -= int64(len(key) + len(old))
	}
	v.heads[key] = h
	v.headBytes += n
}

// savedHead returns the start of the content of member m of obj that
// its archive file kept, if the view holds it; it must not be modified.
func (v *View) savedHead(obj s3backend.Version, m npz.Member) []byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.heads[indexKey(obj, m)]
}

func (v *View) brokenMember(key string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.broken[key]
}

// build builds the index of member m under key, unless a build that ended
// since the caller looked left it held or found it broken.
func (v *View) build(obj s3backend.Version, m npz.Member, key string) (*npz.Index, error) {
	if x, ok := v.indexes.Get(key); ok {
		v.hits.Add(1)
		return x, nil
	}
	if err := v.brokenMember(key); err != nil {
		return nil, err
	}
	if !v.life.Start(1) {
		return nil, errViewClosed
	}
	defer v.life.Done()

	if x := v.loadIndex(obj, m); x != nil {
		v.hold(key, x)
		v.keepHead(obj, m, x)
		return x, nil
	}
	v.builds.Add(1)
	r := v.blocks.Open(obj)
	if v.decoded != nil {
		// The index is kept, and the content decoded as it is read:
		// the member's compressed blocks are not.
		r.NotKeptOnDisk(m.HeaderOffset, m.CompressedSize)
	}
	x, err := npz.BuildIndex(s3backend.BindContext(v.life.Context(), r), m, v.span, v.rowLead())
	r.Close()
	if err == nil {
		// A build inflates the whole member: it checks its size.
		v.buildInflated.Add(m.UncompressedSize)
	}
	if err != nil {
		v.buildErrors.Add(1)
		if isDataError(err) {
			v.mu.Lock()
			if len(v.broken) >= maxBroken {
				clear(v.broken)
			}
			v.broken[key] = err
			v.mu.Unlock()
		}
		return nil, err
	}
	v.hold(key, x)
	v.keepHead(obj, m, x)
	if v.files != nil && v.saveFiles && !v.filesOff.Load() {
		if v.life.Start(1) { // Close waits for it
			go v.saveIndex(obj, m, x)
		}
	}
	return x, nil
}

// hold puts x in memory, in the view's bounded index cache.
func (v *View) hold(key string, x *npz.Index) {
	v.indexes.Set(key, x, x.MemoryBytes())
	// Sets are applied asynchronously: wait, so that a read arriving once
	// this build is over finds the index.
	v.indexes.Wait()
}

// loadIndex returns the index of member m of obj saved in the cache dir,
// or nil (logging why if a file was there but not used).
func (v *View) loadIndex(obj s3backend.Version, m npz.Member) *npz.Index {
	if v.files == nil {
		return nil
	}
	x, err := v.files.Load(v.life.Context(), obj, m)
	if err != nil {
		v.fileError(obj, m.Name, err)
		return nil
	}
	v.loads.Add(1)
	return x
}

// fileError says why a file of the cache dir was not used: nothing if
// there is none, a warning if it is not to be trusted, and if the dir
// cannot be read, a warning the first time (an unreachable s3:// dir
// would say so for every archive) and then debug lines.
func (v *View) fileError(obj s3backend.Version, member string, err error) {
	switch {
	case errors.Is(err, iofs.ErrNotExist):
	case errors.Is(err, ErrIndexFileBad):
		v.filesIgnored.Add(1)
		v.logger.Warn("npz index file ignored", "archive", obj.Key, "member", member, "reason", strings.TrimPrefix(err.Error(), ErrIndexFileBad.Error()+": "), "dir", v.files.Dir)
	case v.life.Context().Err() == nil:
		level := slog.LevelDebug
		if v.loadFailed.CompareAndSwap(false, true) {
			level = slog.LevelWarn
		}
		v.logger.Log(v.life.Context(), level, "npz index file unreadable; building the index", "archive", obj.Key, "member", member, "err", err, "dir", v.files.Dir)
	}
}

// saveIndex writes x into the cache dir. A local dir says itself when
// its writes pause and resume (a full disk, another user's dir), and
// tries again later; any other failure turns saving off, with one log
// line.
func (v *View) saveIndex(obj s3backend.Version, m npz.Member, x *npz.Index) {
	defer v.life.Done()
	err := v.files.Save(v.life.Context(), obj, m, x)
	switch {
	case err == nil:
		v.filesSaved.Add(1)
	case errors.Is(err, cache.ErrDirNotWritable), errors.Is(err, cache.ErrDirFull), v.life.Context().Err() != nil:
	case v.filesOff.CompareAndSwap(false, true):
		v.logger.Warn("cache dir not writable: member indexes held in memory only", "dir", v.files.Dir, "err", err)
	}
}

// isDataError reports whether err says the archive's bytes are wrong, as
// opposed to a failure to fetch them.
func isDataError(err error) bool {
	return errors.Is(err, npz.ErrFormat) || errors.Is(err, npz.ErrCorrupt) ||
		errors.Is(err, npz.ErrChecksum) || errors.Is(err, npz.ErrUnsupported)
}
