package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	iofs "io/fs"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/semaphore"

	"github.com/bgbfs/bgbfs/s3backend"
)

// DiskTier is an ObjectStore that keeps the blocks read through it in a
// Dir, so that a later read (the next epoch, the next job, another mount
// of the bucket on the machine) reads them from local disk instead of S3.
// It sits under the memory cache, which asks it for runs of whole blocks,
// and over the store that talks to S3.
//
// A block file is named by a hash of the bucket, key, version tag (ETag)
// and size, and the block's index: a block of another version of the
// object is never looked at. It holds the block's bytes and a trailer
// that repeats that hash and index and ends in a CRC-32C of the file,
// checked on every read; a file that fails is removed, logged and counted,
// and the block is fetched again. Blocks fetched from S3 are written in
// the background, from copies: a read never waits for the disk, and when
// DiskWriteBacklog bytes already wait to be written a block is not
// written (it is fetched again next time). A write that fails (full disk, read-only, I/O error) turns the
// Dir's writes off; a read that fails other than by a missing or damaged
// file turns the tier off: reads go on from S3.
type DiskTier struct {
	next      s3backend.ObjectStore
	dir       *Dir
	blockSize int64
	bucket    string
	logger    *slog.Logger
	// pending bounds the bytes of block copies waiting to be written;
	// writers bounds the writes under way, so that a burst queues
	// instead of opening hundreds of files at once.
	pending *Budget
	writers *semaphore.Weighted
	writes  sync.WaitGroup
	// off is set once a read from the disk failed.
	off atomic.Bool

	hits, misses, checksumFailures, bytesWritten, writesSkipped atomic.Int64
}

// diskWriters bounds the block files being written at once;
// DiskWriteBacklog the bytes of copies waiting for them. A read that
// finds the backlog full does not wait: its blocks are not written, and
// are fetched again next time (counted as writes skipped). 64 MiB holds
// a burst of read-ahead at 1 GB/s for longer than a disk takes to catch
// up; it is memory beside --cache-size.
const (
	diskWriters      = 8
	DiskWriteBacklog = 64 << 20
)

// blockTrailer is what a block file holds after the block: a magic, the
// hash of the object version, the block index, and the CRC-32C of all
// before it.
const (
	blockMagic   = "BGBFSBK1"
	blockTrailer = len(blockMagic) + 16 + 8 + 4
)

// NewDiskTier keeps the blocks of blockSize bytes of bucket read through
// next in dir.
func NewDiskTier(next s3backend.ObjectStore, dir *Dir, blockSize int64, bucket string, logger *slog.Logger) *DiskTier {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &DiskTier{next: next, dir: dir, blockSize: blockSize, bucket: bucket, logger: logger,
		pending: NewBudget(max(DiskWriteBacklog, 4*blockSize)), writers: semaphore.NewWeighted(diskWriters)}
}

// DiskStats is a snapshot of the disk tier's counters.
type DiskStats struct {
	// Hits and Misses count blocks asked of the tier: read from disk, or
	// fetched from S3.
	Hits, Misses int64
	// ChecksumFailures counts block files found damaged (and removed).
	ChecksumFailures int64
	// BytesWritten counts block bytes written to disk; WritesSkipped the
	// blocks not written because the writers were busy or writes are off.
	BytesWritten, WritesSkipped int64
	// Evictions counts files this process removed from the dir (blocks
	// and indexes, least recently used or damaged); BytesUsed is what the
	// dir holds, as far as this process knows.
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

// versionHash names an object version among all a dir may hold.
func (t *DiskTier) versionHash(v s3backend.Version) []byte {
	h := sha256.New()
	for _, f := range []string{t.bucket, v.Key, v.Tag(), strconv.FormatInt(v.Size, 10)} {
		h.Write(binary.AppendUvarint(nil, uint64(len(f))))
		h.Write([]byte(f))
	}
	return h.Sum(nil)[:16]
}

func blockName(vh []byte, idx int64) string {
	s := hex.EncodeToString(vh)
	return BlocksArea + s[:2] + "/" + s + "-" + strconv.FormatInt(idx, 10)
}

// ReadAt implements ObjectStore. A read of whole blocks (as the memory
// cache makes) is served from disk where the blocks are there, and from
// next for the runs that are not; any other read goes to next.
func (t *DiskTier) ReadAt(ctx context.Context, v s3backend.Version, off int64, bufs ...[]byte) (int, error) {
	if t.off.Load() || !t.wholeBlocks(v, off, bufs) {
		return t.next.ReadAt(ctx, v, off, bufs...)
	}
	vh := t.versionHash(v)
	first := off / t.blockSize
	n := 0
	for i := 0; i < len(bufs); {
		if t.readBlock(vh, first+int64(i), bufs[i]) {
			t.hits.Add(1)
			n += len(bufs[i])
			i++
			continue
		}
		// The run of blocks missing from disk ends at the next block on
		// it, which is read (into its own buffer) on the way.
		j, found := i+1, false
		for ; j < len(bufs); j++ {
			if found = t.readBlock(vh, first+int64(j), bufs[j]); found {
				break
			}
		}
		t.misses.Add(int64(j - i))
		m, err := t.next.ReadAt(ctx, v, (first+int64(i))*t.blockSize, bufs[i:j]...)
		n += m
		if err != nil && !errors.Is(err, io.EOF) {
			return n, err
		}
		t.writeBlocks(vh, first+int64(i), bufs[i:j], m)
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

// readBlock fills buf with block idx from disk if the dir holds it whole
// and its checksum and trailer are right.
func (t *DiskTier) readBlock(vh []byte, idx int64, buf []byte) bool {
	name := blockName(vh, idx)
	f, size, err := t.dir.Open(name)
	if errors.Is(err, iofs.ErrNotExist) {
		return false
	}
	if err != nil {
		t.turnOff(err)
		return false
	}
	defer f.Close()
	var trailer [blockTrailer]byte
	if size != int64(len(buf)+blockTrailer) {
		t.damaged(name, fmt.Sprintf("%d bytes, want %d", size, len(buf)+blockTrailer))
		return false
	}
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.turnOff(err)
		return false
	}
	if _, err := f.ReadAt(trailer[:], int64(len(buf))); err != nil {
		t.turnOff(err)
		return false
	}
	sum := crc32.Update(crc32.Checksum(buf, castagnoli), castagnoli, trailer[:blockTrailer-4])
	want := makeTrailer(vh, idx, buf)
	if sum != binary.LittleEndian.Uint32(trailer[blockTrailer-4:]) || !bytes.Equal(trailer[:], want[:]) {
		t.damaged(name, "checksum mismatch")
		return false
	}
	return true
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func makeTrailer(vh []byte, idx int64, data []byte) [blockTrailer]byte {
	var tr [blockTrailer]byte
	copy(tr[:], blockMagic)
	copy(tr[len(blockMagic):], vh)
	binary.LittleEndian.PutUint64(tr[len(blockMagic)+16:], uint64(idx))
	sum := crc32.Update(crc32.Checksum(data, castagnoli), castagnoli, tr[:blockTrailer-4])
	binary.LittleEndian.PutUint32(tr[blockTrailer-4:], sum)
	return tr
}

// damaged drops a block file that failed its check: it is fetched again.
func (t *DiskTier) damaged(name, why string) {
	t.checksumFailures.Add(1)
	t.logger.Warn("cache dir: damaged block file removed; fetching the block again", "file", name, "reason", why)
	t.dir.Remove(name)
}

func (t *DiskTier) turnOff(err error) {
	if t.off.CompareAndSwap(false, true) {
		t.logger.Warn("cache dir unreadable: blocks read from S3 only", "dir", t.dir, "err", err)
	}
}

// writeBlocks writes the first n bytes' worth of whole blocks of bufs,
// blocks first.. of the version vh, in the background, from copies.
func (t *DiskTier) writeBlocks(vh []byte, first int64, bufs [][]byte, n int) {
	for i, b := range bufs {
		if n < len(b) {
			return
		}
		n -= len(b)
		// A full dir keeps a stable part of the data; the rest comes from
		// S3 each time (see Dir).
		if t.dir.WriteErr() != nil || !t.dir.TakesBlocks() {
			t.writesSkipped.Add(1)
			continue
		}
		idx := first + int64(i)
		size := int64(len(b) + blockTrailer)
		if !t.pending.TryTake(size) {
			t.writesSkipped.Add(1)
			continue
		}
		tr := makeTrailer(vh, idx, b)
		data := make([]byte, 0, size)
		data = append(append(data, b...), tr[:]...)
		t.writes.Add(1)
		go func() {
			defer t.writes.Done()
			defer t.pending.Give(size)
			_ = t.writers.Acquire(context.Background(), 1) // cannot fail
			defer t.writers.Release(1)
			if t.dir.Store(context.Background(), blockName(vh, idx), data) == nil {
				t.bytesWritten.Add(int64(len(b)))
			} else {
				t.writesSkipped.Add(1)
			}
		}()
	}
}
