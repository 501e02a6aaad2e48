package cache

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bgbfs/bgbfs/s3backend"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
)

// tierBlock is the block size of most disk tier tests: two units.
const tierBlock = 2 * UnitSize

// blocksOf splits [off, off+n) of an object of size bytes into block
// buffers, as the memory cache asks for them.
func blocksOf(bs, off, n, size int64) [][]byte {
	var bufs [][]byte
	for o := off; o < off+n && o < size; o += bs {
		bufs = append(bufs, make([]byte, min(bs, size-o)))
	}
	return bufs
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.N(256))
	}
	return b
}

// newTier returns a disk tier of blockSize over store in the dir at root,
// for the store named source.
func newTier(t *testing.T, store s3backend.ObjectStore, root string, blockSize int64, source string) *DiskTier {
	t.Helper()
	dir, err := OpenDir(root, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dir.Close)
	tier, err := NewDiskTier(store, dir, blockSize, source, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tier.Wait)
	return tier
}

func newDiskTierForTest(t *testing.T, data []byte) (*DiskTier, *rangeStore, s3backend.Version, string) {
	t.Helper()
	store, v := storeOf(data)
	root := t.TempDir()
	return newTier(t, store, root, tierBlock, "endpoint/bucket"), store, v, root
}

// storeOf is a store holding data as "obj", and its version.
func storeOf(data []byte) (*rangeStore, s3backend.Version) {
	mem := memstore.New()
	mem.Put("obj", data)
	info, _ := mem.Info("obj")
	return &rangeStore{slowStore: &slowStore{Store: mem}}, s3backend.Version{Key: "obj", ETag: info.ETag, Size: info.Size}
}

// read reads [off, off+n) of v through tier in whole blocks, as the
// memory cache does, and fails the test on an error or wrong bytes.
func read(t *testing.T, tier *DiskTier, v s3backend.Version, off, n int64, want []byte) {
	t.Helper()
	bufs := blocksOf(tier.blockSize, off, n, v.Size)
	got, err := tier.ReadAt(context.Background(), v, off, bufs...)
	if err != nil || int64(got) != min(n, v.Size-off) || !bytes.Equal(bytes.Join(bufs, nil), want[off:off+int64(got)]) {
		t.Fatalf("read of %d bytes at %d = %d, %v, or wrong bytes", n, off, got, err)
	}
}

// TestDiskTierReads: blocks read once from the store are read from disk
// after, byte for byte; a run with some blocks on disk fetches only the
// others; reads that are not whole blocks go to the store.
func TestDiskTierReads(t *testing.T) {
	const b = tierBlock
	data := randomBytes(10*b + b/2 + 7) // ten blocks and a short one
	for _, tt := range []struct {
		name       string
		warm       [][2]int64 // [off, n) reads before
		off, n     int64
		wantRanges [][2]int64 // the store's GETs for the read
	}{
		{"cold", nil, 0, 3 * b, [][2]int64{{0, 3 * b}}},
		{"all on disk", [][2]int64{{0, 3 * b}}, 0, 3 * b, nil},
		{"last short block on disk", [][2]int64{{10 * b, b}}, 10 * b, b, nil},
		{"holes", [][2]int64{{b, b}, {4 * b, b}}, 0, 6 * b, [][2]int64{{0, b}, {2 * b, 4 * b}, {5 * b, 6 * b}}},
		{"not whole blocks", [][2]int64{{0, 3 * b}}, 10, 2 * b, [][2]int64{{10, 2*b + 10}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tier, store, v, _ := newDiskTierForTest(t, data)
			for _, w := range tt.warm {
				read(t, tier, v, w[0], w[1], data)
			}
			tier.Wait()
			store.ranges = nil
			n := min(tt.n, v.Size-tt.off)
			if tt.off%b != 0 {
				buf := make([]byte, tt.n)
				if _, err := tier.ReadAt(context.Background(), v, tt.off, buf); err != nil || !bytes.Equal(buf, data[tt.off:tt.off+tt.n]) {
					t.Fatalf("read = %v, or wrong bytes", err)
				}
			} else {
				read(t, tier, v, tt.off, n, data)
			}
			if got := store.ranges; !equalRanges(got, tt.wantRanges) {
				t.Errorf("GETs %v, want %v", got, tt.wantRanges)
			}
		})
	}
}

func equalRanges(a, b [][2]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestDiskTierSharesAcrossBlockSizes: mounts of different block sizes on
// one dir read each other's bytes, and only right bytes: an object whose
// last block in one size is as long as a whole block in the other (1 MiB
// + 128 KiB), read by one, then by the other without a GET. (A dir that
// named blocks by index alone gave the 1 MiB mount bytes [128 KiB, 256
// KiB) at 1 MiB.)
func TestDiskTierSharesAcrossBlockSizes(t *testing.T) {
	for _, size := range []int{1<<20 + 128<<10, 3<<20 + 256<<10, 5<<20 + 7, 100} {
		for _, order := range [][2]int64{{128 << 10, 1 << 20}, {1 << 20, 128 << 10}} {
			data := randomBytes(size)
			store, v := storeOf(data)
			root := t.TempDir()
			first, second := newTier(t, store, root, order[0], "e/b"), newTier(t, store, root, order[1], "e/b")
			read(t, first, v, 0, v.Size, data)
			first.Wait()
			store.ranges = nil
			read(t, second, v, 0, v.Size, data)
			if len(store.ranges) != 0 {
				t.Errorf("size %d, block sizes %v: the second tier fetched %v of what the first wrote", size, order, store.ranges)
			}
			if s := second.Stats(); s.ChecksumFailures != 0 || s.Hits == 0 {
				t.Errorf("size %d, block sizes %v: second tier %+v", size, order, s)
			}
		}
	}
}

// TestDiskTierSources: objects of two stores (endpoints) with the same
// bucket, key, ETag and size are kept apart: a tier never reads what one
// of another store wrote.
func TestDiskTierSources(t *testing.T) {
	a, b := bytes.Repeat([]byte("a"), 3*tierBlock), bytes.Repeat([]byte("b"), 3*tierBlock)
	storeA, v := storeOf(a)
	storeB, vb := storeOf(b)
	root := t.TempDir()
	// The second store gives its object the first's ETag (a tag that is
	// not a hash of the content).
	retag := sameTagStore{storeB, vb.ETag}
	tierA, tierB := newTier(t, storeA, root, tierBlock, "one.example:9000/bucket"), newTier(t, retag, root, tierBlock, "two.example:9000/bucket")
	read(t, tierA, v, 0, v.Size, a)
	tierA.Wait()
	read(t, tierB, v, 0, v.Size, b) // the same Version, listed by the other store
	if storeB.gets.Load() == 0 {
		t.Error("the second store's object was read from what the first store's tier wrote")
	}
}

// sameTagStore reads its objects whatever ETag a read asks for, as
// etag's.
type sameTagStore struct {
	*rangeStore
	etag string
}

func (s sameTagStore) ReadAt(ctx context.Context, v s3backend.Version, off int64, bufs ...[]byte) (int, error) {
	v.ETag = s.etag
	return s.rangeStore.ReadAt(ctx, v, off, bufs...)
}

// TestDiskTierDamaged: an object file cut, grown or with a bad header,
// and a unit with a flipped byte, a flipped record or the bytes of
// another unit, are caught and counted; only the damaged blocks are
// fetched again, and written again.
func TestDiskTierDamaged(t *testing.T) {
	data := randomBytes(4 * tierBlock)
	_, records, length := objectLayout(int64(len(data)))
	tail := records - objectHeaderPage
	for _, tt := range []struct {
		name       string
		edit       func(f []byte) []byte
		wantRanges [][2]int64
	}{
		{"flipped byte", func(f []byte) []byte { f[UnitSize+500] ^= 1; return f }, [][2]int64{{0, tierBlock}}},
		{"flipped record", func(f []byte) []byte { f[records+3*recordSize+1] ^= 1; return f }, [][2]int64{{tierBlock, 2 * tierBlock}}},
		{"record without mark", func(f []byte) []byte { f[records+2*recordSize+5] ^= 1; return f }, [][2]int64{{tierBlock, 2 * tierBlock}}},
		{"another unit's bytes", func(f []byte) []byte { copy(f[2*UnitSize:3*UnitSize], f[5*UnitSize:]); return f }, [][2]int64{{tierBlock, 2 * tierBlock}}},
		{"cut", func(f []byte) []byte { return f[:length-1] }, [][2]int64{{0, 4 * tierBlock}}},
		{"grown", func(f []byte) []byte { return append(f, 0) }, [][2]int64{{0, 4 * tierBlock}}},
		{"bad header", func(f []byte) []byte { f[tail+30] ^= 1; return f }, [][2]int64{{0, 4 * tierBlock}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tier, store, v, root := newDiskTierForTest(t, data)
			read(t, tier, v, 0, v.Size, data)
			tier.Wait()
			p := filepath.Join(root, tier.objectID(v).Name(BlocksArea))
			f, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(p, tt.edit(f), 0o644)
			store.ranges = nil
			read(t, tier, v, 0, v.Size, data)
			if s := tier.Stats(); s.ChecksumFailures != 1 || !equalRanges(store.ranges, tt.wantRanges) {
				t.Errorf("%d checksum failures, GETs %v; want 1 and %v", s.ChecksumFailures, store.ranges, tt.wantRanges)
			}
			tier.Wait()
			store.ranges = nil
			read(t, tier, v, 0, v.Size, data)
			if len(store.ranges) != 0 {
				t.Errorf("after the damaged blocks were fetched again, the tier still fetched %v: not written again", store.ranges)
			}
		})
	}
}

// TestDiskTierVersions: a block of another version of the object (another
// ETag or size) is never read for this one.
func TestDiskTierVersions(t *testing.T) {
	a := bytes.Repeat([]byte("a"), 2*tierBlock)
	tier, store, v, _ := newDiskTierForTest(t, a)
	read(t, tier, v, 0, v.Size, a)
	tier.Wait()
	b := bytes.Repeat([]byte("b"), 2*tierBlock)
	store.Store.Put("obj", b)
	info, _ := store.Store.Info("obj")
	v2 := s3backend.Version{Key: "obj", ETag: info.ETag, Size: info.Size}
	read(t, tier, v2, 0, v2.Size, b)
	// A handle still on the old version reads the old version's blocks,
	// as from the memory cache: bytes of one version, never mixed.
	read(t, tier, v, 0, tierBlock, a)
}

// TestDiskTierWritesPaused: with the dir's writes paused (a file where
// the blocks' directory goes), reads are right from the store and
// nothing is written.
func TestDiskTierWritesPaused(t *testing.T) {
	data := bytes.Repeat([]byte("x"), 3*tierBlock)
	tier, store, v, root := newDiskTierForTest(t, data)
	os.WriteFile(filepath.Join(root, "blocks"), nil, 0o644) // a file where the blocks' directory goes
	for range 2 {
		read(t, tier, v, 0, v.Size, data)
		tier.Wait()
	}
	if s := tier.Stats(); s.BytesWritten != 0 || s.WritesSkipped < 3 || store.gets.Load() != 2 {
		t.Errorf("stats %+v, %d GETs; want nothing written, writes skipped, both reads from the store", s, store.gets.Load())
	}
	if err := tier.dir.WriteErr(); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("dir write error %v", err)
	}
}

// TestDiskTierBacklogBound: the copies waiting to be written are bounded
// by DiskWriteBacklog whatever the block size (it was 4 blocks when
// larger: 256 MiB at 64 MiB blocks, beyond the memory the mount allows
// for them), and the largest block still fits.
func TestDiskTierBacklogBound(t *testing.T) {
	for _, bs := range []int64{UnitSize, 1 << 20, 16 << 20, 64 << 20} {
		tier, err := NewDiskTier(memstore.New(), nil, bs, "e/b", nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := tier.writes.pending.Total(); got != DiskWriteBacklog {
			t.Errorf("block size %d: backlog of %d bytes, want %d", bs, got, DiskWriteBacklog)
		}
	}
	data := randomBytes(64 << 20)
	store, v := storeOf(data)
	tier := newTier(t, store, t.TempDir(), 64<<20, "e/b")
	read(t, tier, v, 0, v.Size, data)
	tier.Wait()
	if s := tier.Stats(); s.BytesWritten != 64<<20 {
		t.Errorf("a block of 64 MiB: %+v; want it written", s)
	}
	for _, bs := range []int64{4096, UnitSize + 4096, 128 << 20} {
		if _, err := NewDiskTier(memstore.New(), nil, bs, "e/b", nil); err == nil {
			t.Errorf("block size %d: taken, want refused", bs)
		}
	}
}

// TestDiskTierReadsResumeAfterTooManyFiles: a read that finds the
// process out of file descriptors (EMFILE, for real) is served from the
// store, and once descriptors are free the tier reads from disk again.
// (EMFILE turned the tier off: every later read went to the store.)
func TestDiskTierReadsResumeAfterTooManyFiles(t *testing.T) {
	data := randomBytes(4 * tierBlock)
	tier, store, v, _ := newDiskTierForTest(t, data)
	read(t, tier, v, 0, v.Size, data)
	tier.Wait()
	store.ranges = nil
	withFewFiles(t, func() { read(t, tier, v, 0, v.Size, data) })
	if len(store.ranges) == 0 {
		t.Fatal("a read out of file descriptors was served without the store: the test proves nothing")
	}
	if !pollFor(dirRetryMax, func() bool {
		store.ranges = nil
		read(t, tier, v, 0, v.Size, data)
		return len(store.ranges) == 0
	}) {
		t.Errorf("reads still go to the store (%v) once descriptors are free", store.ranges)
	}
}

// TestDiskTierNotKeptOnDisk: of the blocks fetched for a reader marked
// NotKeptOnDisk, those wholly inside its range are not written to the
// dir, those at its edges and outside it are; an unmarked reader's are;
// a marked reader still reads what the dir holds.
func TestDiskTierNotKeptOnDisk(t *testing.T) {
	const B = tierBlock
	data := randomBytes(8 * B)
	for _, tt := range []struct {
		name         string
		keep         [2]int64 // off, n for NotKeptOnDisk; n 0: unmarked
		from, blocks int64
		written      int64 // blocks
	}{
		{"unmarked", [2]int64{0, 0}, 0, 4, 4},
		{"all inside", [2]int64{0, 8 * B}, 1, 4, 0},
		{"edges half out", [2]int64{B / 2, 2 * B}, 0, 4, 3},
		{"inside a run", [2]int64{2 * B, 2 * B}, 1, 5, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			store, v := storeOf(data)
			tier := newTier(t, store, t.TempDir(), B, "e/b")
			newCache := func() *BlockCache {
				c, err := New(tier, Options{CacheSize: 64 << 20, BlockSize: B, PartSize: 1 << 20, MaxReadAhead: 4 << 20, MaxParallel: 4})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(c.Close)
				return c
			}
			read := func(c *BlockCache) {
				t.Helper()
				r := c.OpenRandom(v)
				if tt.keep[1] > 0 {
					r.NotKeptOnDisk(tt.keep[0], tt.keep[1])
				}
				defer r.Close()
				off, n := tt.from*B, tt.blocks*B
				p := make([]byte, n)
				if got, err := r.ReadAt(context.Background(), p, off); got != int(n) || err != nil || !bytes.Equal(p, data[off:off+n]) {
					t.Fatalf("read of %d at %d = %d, %v", n, off, got, err)
				}
			}
			read(newCache())
			tier.Wait()
			if s := tier.Stats(); s.BytesWritten != tt.written*B || s.Misses != tt.blocks {
				t.Errorf("%+v; want %d blocks fetched, %d written", s, tt.blocks, tt.written)
			}
			// A new memory cache: what was written is read from disk.
			before := tier.Stats()
			read(newCache())
			if s := tier.Stats(); s.Hits-before.Hits != tt.written || s.Misses-before.Misses != tt.blocks-tt.written {
				t.Errorf("again: %+v, before %+v; want the %d written read from disk", s, before, tt.written)
			}
		})
	}
}
