package cache

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/s3backend"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
)

// TestBlocksThatFitAreAllKept streams objects through the cache in order
// (as index builds read whole members), then reads them again at random
// (as the member view reads windows), and counts at the store that the
// second pass fetched nothing: while the blocks fit in the cache beside
// what read-ahead and fetches hold, none is let go or refused. The data
// is larger than what the cache once kept for blocks alone (CacheSize
// less the read-ahead and fetch shares, 5/8 of it), which fetched a
// third of the windows again in the in-memory benchmark row.
func TestBlocksThatFitAreAllKept(t *testing.T) {
	for _, tt := range []struct {
		name      string
		cacheSize int64
		objects   int
		objSize   int
	}{
		{"data 3/4 of the cache", 64 * mib, 12, 4 * mib},
		{"data 3/4 of the cache, odd sizes", 64 * mib, 7, 7*mib - 12345},
		{"data 1/2 of the cache", 64 * mib, 8, 4 * mib},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mem := memstore.New()
			rng := rand.New(rand.NewPCG(7, uint64(tt.objSize)))
			objs := make([]s3backend.Version, tt.objects)
			data := make([][]byte, tt.objects)
			for i := range objs {
				data[i] = make([]byte, tt.objSize)
				for j := range data[i] {
					data[i][j] = byte(rng.Uint32())
				}
				key := fmt.Sprintf("obj%d", i)
				mem.Put(key, data[i])
				info, _ := mem.Info(key)
				objs[i] = s3backend.Version{Key: key, ETag: info.ETag, Size: info.Size}
			}
			store := &slowStore{Store: mem, delay: 100 * time.Microsecond}
			c, err := New(store, testOptions(tt.cacheSize))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			ctx := context.Background()
			buf := make([]byte, 128*kib)
			for i, obj := range objs {
				r := c.Open(obj)
				for off := int64(0); off < obj.Size; off += int64(len(buf)) {
					n, err := r.ReadAt(ctx, buf, off)
					if err != nil {
						t.Fatalf("%s at %d: %v", obj.Key, off, err)
					}
					if !bytes.Equal(buf[:n], data[i][off:off+int64(n)]) {
						t.Fatalf("%s at %d: bytes differ from the source", obj.Key, off)
					}
					if s := c.Stats(); s.BytesCached+s.BytesAhead > tt.cacheSize {
						t.Fatalf("holding %d cached + %d ahead, over the cache size %d", s.BytesCached, s.BytesAhead, tt.cacheSize)
					}
				}
				r.Close()
			}
			gets, fetched := store.gets.Load(), store.bytes.Load()
			for range 4 * tt.objects {
				i := rng.IntN(tt.objects)
				r := c.OpenRandom(objs[i])
				off := rng.Int64N(objs[i].Size - int64(len(buf)))
				n, err := r.ReadAt(ctx, buf, off)
				r.Close()
				if err != nil || !bytes.Equal(buf[:n], data[i][off:off+int64(n)]) {
					t.Fatalf("%s at %d: %v or bytes differ from the source", objs[i].Key, off, err)
				}
			}
			if g, b := store.gets.Load()-gets, store.bytes.Load()-fetched; g != 0 {
				t.Errorf("the second pass made %d GETs of %d bytes; every block fits in the cache (%d of %d bytes, evictions %d)",
					g, b, tt.objects*tt.objSize, tt.cacheSize, c.Stats().Evictions)
			}
		})
	}
}
