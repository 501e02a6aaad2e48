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

// blocksOf splits [off, off+n) of an object of size bytes into block
// buffers, as the memory cache asks for them.
func blocksOf(bs, off, n, size int64) [][]byte {
	var bufs [][]byte
	for o := off; o < off+n && o < size; o += bs {
		bufs = append(bufs, make([]byte, min(bs, size-o)))
	}
	return bufs
}

func newDiskTierForTest(t *testing.T, data []byte) (*DiskTier, *rangeStore, s3backend.Version, string) {
	t.Helper()
	mem := memstore.New()
	mem.Put("obj", data)
	info, _ := mem.Info("obj")
	v := s3backend.Version{Key: "obj", ETag: info.ETag, Size: info.Size}
	store := &rangeStore{slowStore: &slowStore{Store: mem}}
	root := t.TempDir()
	dir, err := OpenDir(root, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dir.Close)
	tier := NewDiskTier(store, dir, 1000, "bucket", nil)
	t.Cleanup(tier.Wait)
	return tier, store, v, root
}

// TestDiskTierReads: blocks read once from the store are read from disk
// after, byte for byte; a run with some blocks on disk fetches only the
// others; reads that are not whole blocks go to the store.
func TestDiskTierReads(t *testing.T) {
	ctx := context.Background()
	data := make([]byte, 10500) // ten blocks of 1000 and one of 500
	for i := range data {
		data[i] = byte(rand.N(256))
	}
	for _, tt := range []struct {
		name       string
		warm       [][2]int64 // [off, n) reads before
		off, n     int64
		wantRanges [][2]int64 // the store's GETs for the read
	}{
		{"cold", nil, 0, 3000, [][2]int64{{0, 3000}}},
		{"all on disk", [][2]int64{{0, 3000}}, 0, 3000, nil},
		{"last short block on disk", [][2]int64{{10000, 500}}, 10000, 500, nil},
		{"holes", [][2]int64{{1000, 1000}, {4000, 1000}}, 0, 6000, [][2]int64{{0, 1000}, {2000, 4000}, {5000, 6000}}},
		{"not whole blocks", [][2]int64{{0, 3000}}, 10, 2000, [][2]int64{{10, 2010}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tier, store, v, _ := newDiskTierForTest(t, data)
			for _, w := range tt.warm {
				if _, err := tier.ReadAt(ctx, v, w[0], blocksOf(1000, w[0], w[1], v.Size)...); err != nil {
					t.Fatal(err)
				}
			}
			tier.Wait()
			store.ranges = nil
			bufs := blocksOf(1000, tt.off, tt.n, v.Size)
			if tt.off%1000 != 0 {
				bufs = [][]byte{make([]byte, tt.n)}
			}
			n, err := tier.ReadAt(ctx, v, tt.off, bufs...)
			if err != nil || int64(n) != tt.n || !bytes.Equal(bytes.Join(bufs, nil), data[tt.off:tt.off+tt.n]) {
				t.Fatalf("read %d bytes at %d = %d, %v, or wrong bytes", tt.n, tt.off, n, err)
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

// TestDiskTierDamagedBlocks: a block file with a flipped byte, cut short,
// grown, or of another block is caught, removed, counted, and the block
// is fetched again and written again.
func TestDiskTierDamagedBlocks(t *testing.T) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789"), 300)
	for _, tt := range []struct {
		name string
		edit func(b0, b1 []byte) []byte // block 0's file from both files
	}{
		{"flipped byte", func(b0, _ []byte) []byte { b0[500] ^= 1; return b0 }},
		{"flipped trailer", func(b0, _ []byte) []byte { b0[len(b0)-10] ^= 1; return b0 }},
		{"truncated", func(b0, _ []byte) []byte { return b0[:len(b0)-1] }},
		{"grown", func(b0, _ []byte) []byte { return append(b0, 0) }},
		{"another block's file", func(_, b1 []byte) []byte { return b1 }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tier, store, v, root := newDiskTierForTest(t, data)
			if _, err := tier.ReadAt(ctx, v, 0, blocksOf(1000, 0, 2000, v.Size)...); err != nil {
				t.Fatal(err)
			}
			tier.Wait()
			vh := tier.versionHash(v)
			p0, p1 := filepath.Join(root, blockName(vh, 0)), filepath.Join(root, blockName(vh, 1))
			b0, _ := os.ReadFile(p0)
			b1, _ := os.ReadFile(p1)
			os.WriteFile(p0, tt.edit(b0, b1), 0o644)
			store.ranges = nil
			bufs := blocksOf(1000, 0, 1000, v.Size)
			if _, err := tier.ReadAt(ctx, v, 0, bufs...); err != nil || !bytes.Equal(bufs[0], data[:1000]) {
				t.Fatalf("read = %v, or wrong bytes", err)
			}
			if s := tier.Stats(); s.ChecksumFailures != 1 || len(store.ranges) != 1 {
				t.Errorf("%d checksum failures, GETs %v; want 1 and the block fetched again", s.ChecksumFailures, store.ranges)
			}
			tier.Wait()
			if b, _ := os.ReadFile(p0); !bytes.Equal(b, b0Clean(t, tier, v, data)) {
				t.Error("the block was not written again")
			}
		})
	}
}

// b0Clean is block 0's file as the tier writes it.
func b0Clean(t *testing.T, tier *DiskTier, v s3backend.Version, data []byte) []byte {
	tr := makeTrailer(tier.versionHash(v), 0, data[:1000])
	return append(bytes.Clone(data[:1000]), tr[:]...)
}

// TestDiskTierVersions: a block of another version of the object (another
// ETag or size) is never read for this one.
func TestDiskTierVersions(t *testing.T) {
	ctx := context.Background()
	tier, store, v, _ := newDiskTierForTest(t, bytes.Repeat([]byte("a"), 2000))
	tier.ReadAt(ctx, v, 0, blocksOf(1000, 0, 2000, v.Size)...)
	tier.Wait()
	store.Store.Put("obj", bytes.Repeat([]byte("b"), 2000))
	info, _ := store.Store.Info("obj")
	v2 := s3backend.Version{Key: "obj", ETag: info.ETag, Size: info.Size}
	bufs := blocksOf(1000, 0, 2000, v2.Size)
	if _, err := tier.ReadAt(ctx, v2, 0, bufs...); err != nil || !bytes.Equal(bytes.Join(bufs, nil), bytes.Repeat([]byte("b"), 2000)) {
		t.Fatalf("read of the new version = %v, or old bytes", err)
	}
	// A handle still on the old version reads the old version's blocks,
	// as from the memory cache: bytes of one version, never mixed.
	bufs = blocksOf(1000, 0, 1000, v.Size)
	if _, err := tier.ReadAt(ctx, v, 0, bufs...); err != nil || !bytes.Equal(bufs[0], bytes.Repeat([]byte("a"), 1000)) {
		t.Errorf("read of the old version = %v, %q...", err, bufs[0][:8])
	}
}

// TestDiskTierWritesOff: with the dir's writes off, reads are right from
// the store and nothing is written.
func TestDiskTierWritesOff(t *testing.T) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("x"), 3000)
	tier, store, v, root := newDiskTierForTest(t, data)
	os.WriteFile(filepath.Join(root, "blocks"), nil, 0o644) // a file where the blocks' directory goes
	for range 2 {
		bufs := blocksOf(1000, 0, 3000, v.Size)
		if _, err := tier.ReadAt(ctx, v, 0, bufs...); err != nil || !bytes.Equal(bytes.Join(bufs, nil), data) {
			t.Fatalf("read = %v, or wrong bytes", err)
		}
		tier.Wait()
	}
	if s := tier.Stats(); s.BytesWritten != 0 || s.WritesSkipped < 3 || store.gets.Load() != 2 {
		t.Errorf("stats %+v, %d GETs; want nothing written, writes skipped, both reads from the store", s, store.gets.Load())
	}
	if err := tier.dir.WriteErr(); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("dir write error %v", err)
	}
}
