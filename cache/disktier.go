package cache

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"

	"github.com/bgbfs/bgbfs/s3backend"
)

// DiskTier is an ObjectStore that keeps the blocks read through it in a
// Dir, so that a later read (the next epoch, the next job, another mount
// of the bucket on the machine) reads them from local disk instead of S3.
// It sits under the memory cache, which asks it for runs of whole blocks,
// and over the store that talks to S3.
//
// The bytes of an object version are kept in one object file (see
// ObjectFile), in units of UnitSize that do not depend on the block
// size: mounts of other block sizes share the file, each reading what
// the others wrote. The file is named by a hash of the store (endpoint
// and bucket), the key, the version tag (ETag) and the size: a block of
// another version, or of another store, is never looked at. Each unit is
// checked against its CRC-32C on every read; a unit that fails is
// dropped, logged and counted, and its block is fetched again. Blocks
// fetched from S3 are written in the background, from copies: a read
// never waits for the disk, and when DiskWriteBacklog bytes already wait
// to be written a block is not written (it is fetched again next time).
// A failure pauses the dir's reads or writes for a while (Dir): reads go
// on from S3.
type DiskTier struct {
	next      s3backend.ObjectStore
	dir       *Dir
	blockSize int64
	source    string
	logger    *slog.Logger
	// writes writes block copies in the background.
	writes *WriteBehind

	hits, misses, checksumFailures, bytesWritten, writesSkipped atomic.Int64
}

// diskWriters bounds the object files being written at once;
// DiskWriteBacklog the bytes of copies waiting for them, whatever the
// block size (one block of the largest, 64 MiB, fills it). A read that
// finds the backlog full does not wait: its blocks are not written, and
// are fetched again next time (counted as writes skipped). 64 MiB holds
// a burst of read-ahead at 1 GB/s for longer than a disk takes to catch
// up; it is memory beside --cache-size.
const (
	diskWriters      = 8
	DiskWriteBacklog = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// NewDiskTier keeps the blocks of blockSize bytes (a multiple of
// UnitSize) of the objects read through next in dir; source names the
// store next reads (its endpoint and bucket), which what the dir keeps
// is of.
func NewDiskTier(next s3backend.ObjectStore, dir *Dir, blockSize int64, source string, logger *slog.Logger) (*DiskTier, error) {
	if blockSize <= 0 || blockSize%UnitSize != 0 || blockSize > DiskWriteBacklog {
		return nil, fmt.Errorf("block size %d is not a multiple of the cache dir's unit, %d bytes, up to %d", blockSize, UnitSize, DiskWriteBacklog)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &DiskTier{next: next, dir: dir, blockSize: blockSize, source: source, logger: logger,
		writes: NewWriteBehind(DiskWriteBacklog, diskWriters)}, nil
}

// DiskStats is a snapshot of the disk tier's counters.
type DiskStats struct {
	// Hits and Misses count blocks asked of the tier: read from disk, or
	// fetched from S3.
	Hits, Misses int64
	// ChecksumFailures counts damage found: object files not whole, and
	// units whose CRC-32C failed.
	ChecksumFailures int64
	// BytesWritten counts block bytes written to disk; WritesSkipped the
	// blocks not written because the backlog was full, the dir full of
	// files in use, or its writes paused.
	BytesWritten, WritesSkipped int64
	// Evictions counts files this process removed from the dir (object
	// files and indexes, least recently used or damaged); BytesUsed is
	// the disk space the dir takes, as far as this process knows.
	Evictions, BytesUsed int64
}

// Stats returns the counters so far.
func (t *DiskTier) Stats() DiskStats {
	return DiskStats{
		Hits:             t.hits.Load(),
		Misses:           t.misses.Load(),
		ChecksumFailures: t.checksumFailures.Load(),
		BytesWritten:     t.bytesWritten.Load(),
		WritesSkipped:    t.writesSkipped.Load(),
		Evictions:        t.dir.Removed(),
		BytesUsed:        t.dir.Used(),
	}
}

// Wait waits for the background writes started so far.
func (t *DiskTier) Wait() { t.writes.Wait() }

// List implements ObjectStore: listings are not kept.
func (t *DiskTier) List(ctx context.Context, req s3backend.ListRequest) (s3backend.ListPage, error) {
	return t.next.List(ctx, req)
}

// objectID names an object version among all a dir may hold.
func (t *DiskTier) objectID(v s3backend.Version) ObjectID {
	return NewObjectID(t.source, v.Key, v.Tag(), strconv.FormatInt(v.Size, 10))
}

// ReadAt implements ObjectStore. A read of whole blocks (as the memory
// cache makes) is served from disk where the blocks are there, and from
// next for the runs that are not; any other read goes to next.
func (t *DiskTier) ReadAt(ctx context.Context, v s3backend.Version, off int64, bufs ...[]byte) (int, error) {
	if !t.wholeBlocks(v, off, bufs) {
		return t.next.ReadAt(ctx, v, off, bufs...)
	}
	id := t.objectID(v)
	name := id.Name(BlocksArea)
	f, err := t.dir.OpenObject(name, id, v.Size)
	if errors.Is(err, ErrDamaged) {
		t.damaged(err)
	}
	if f != nil {
		defer f.Close()
	}
	first := off / t.blockSize
	onDisk := func(i int) bool {
		if f == nil {
			return false
		}
		ok, err := f.ReadAt(bufs[i], (first+int64(i))*t.blockSize)
		if errors.Is(err, ErrDamaged) {
			t.damaged(err)
		}
		return ok
	}
	n := 0
	for i := 0; i < len(bufs); {
		if onDisk(i) {
			t.hits.Add(1)
			n += len(bufs[i])
			i++
			continue
		}
		// The run of blocks missing from disk ends at the next block on
		// it, which is read (into its own buffer) on the way.
		j, found := i+1, false
		for ; j < len(bufs); j++ {
			if found = onDisk(j); found {
				break
			}
		}
		t.misses.Add(int64(j - i))
		m, err := t.next.ReadAt(ctx, v, (first+int64(i))*t.blockSize, bufs[i:j]...)
		n += m
		if err != nil && !errors.Is(err, io.EOF) {
			return n, err
		}
		t.writeKept(ctx, v, id, first+int64(i), bufs[i:j], m)
		if err != nil {
			return n, err // io.EOF: the object ended before its listed size
		}
		i = j
		if found {
			t.hits.Add(1)
			n += len(bufs[j])
			i++
		}
	}
	return n, nil
}

// notOnDiskKey marks the context of a fetch with the byteRange whose
// blocks the disk tier does not write (Reader.NotKeptOnDisk).
type notOnDiskKey struct{}

// writeKept is writeBlocks for the blocks of bufs not wholly inside the
// range the fetch's reader keeps in another form: the run of those inside
// is left out.
func (t *DiskTier) writeKept(ctx context.Context, v s3backend.Version, id ObjectID, first int64, bufs [][]byte, n int) {
	skip, _ := ctx.Value(notOnDiskKey{}).(byteRange)
	a, b := len(bufs), len(bufs) // bufs[a:b] are inside skip
	for k, buf := range bufs {
		if start := (first + int64(k)) * t.blockSize; skip.holds(start, start+int64(len(buf))) {
			a, b = min(a, k), k+1
		}
	}
	if a == len(bufs) {
		t.writeBlocks(v, id, first, bufs, n)
		return
	}
	t.writeBlocks(v, id, first, bufs[:a], n)
	for _, buf := range bufs[:b] {
		n -= len(buf)
	}
	t.writeBlocks(v, id, first+int64(b), bufs[b:], n)
}

// wholeBlocks reports whether bufs are the whole blocks of v from off on.
func (t *DiskTier) wholeBlocks(v s3backend.Version, off int64, bufs [][]byte) bool {
	if off%t.blockSize != 0 || len(bufs) == 0 {
		return false
	}
	for i, b := range bufs {
		start := off + int64(i)*t.blockSize
		if int64(len(b)) != min(t.blockSize, v.Size-start) || len(b) == 0 {
			return false
		}
	}
	return true
}

// damaged counts and logs damage found in the dir: what it was is
// dropped, and fetched again.
func (t *DiskTier) damaged(err error) {
	t.checksumFailures.Add(1)
	t.logger.Warn("cache dir: damaged data dropped; fetching it again", "dir", t.dir, "reason", err)
}

// writeBlocks writes the first n bytes' worth of whole blocks of bufs,
// blocks first.. of the version v, in the background, from one copy.
func (t *DiskTier) writeBlocks(v s3backend.Version, id ObjectID, first int64, bufs [][]byte, n int) {
	var whole int
	for whole < len(bufs) && n >= len(bufs[whole]) {
		n -= len(bufs[whole])
		whole++
	}
	bufs = bufs[:whole]
	// A full dir keeps a stable part of the data; the rest comes from S3
	// each time (see Dir).
	if len(bufs) == 0 || t.dir.WriteErr() != nil || !t.dir.TakesBlocks() {
		t.writesSkipped.Add(int64(len(bufs)))
		return
	}
	taken := t.writes.Start(bufs, func(data []byte, taken int) {
		name := id.Name(BlocksArea)
		f, err := t.dir.CreateObject(name, id, v.Size)
		if err != nil {
			t.writesSkipped.Add(int64(taken))
			return
		}
		defer f.Close()
		// Block by block: a dir near its bound takes what fits.
		for i, b := range bufs[:taken] {
			at := int64(i) * t.blockSize
			written, err := f.WriteAt(data[at:at+int64(len(b))], (first+int64(i))*t.blockSize)
			if err != nil {
				t.writesSkipped.Add(int64(taken - i))
				return
			}
			t.bytesWritten.Add(written)
		}
	})
	t.writesSkipped.Add(int64(len(bufs) - taken))
}
