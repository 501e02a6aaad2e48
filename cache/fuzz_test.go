package cache

import (
	"bytes"
	"context"
	"testing"

	"github.com/bgbfs/bgbfs/s3backend"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
)

// FuzzReadAt checks the range and block arithmetic: any read, at any
// offset and length, of an object of any size, through any block size,
// returns exactly the source's bytes.
func FuzzReadAt(f *testing.F) {
	f.Add(uint32(100), uint16(4096), int64(0), uint32(100))
	f.Add(uint32(1<<20+1), uint16(4096), int64(1<<20), uint32(4096))
	f.Add(uint32(8192), uint16(4096), int64(4095), uint32(2))
	f.Add(uint32(10), uint16(4096), int64(20), uint32(5))
	f.Fuzz(func(t *testing.T, size uint32, block uint16, off int64, n uint32) {
		size %= 1 << 21
		bs := int64(block%16+1) * 4096
		n %= 1 << 20
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i*7 + i>>8)
		}
		mem := memstore.New()
		mem.Put("k", data)
		info, _ := mem.Info("k")
		c, err := New(mem, Options{CacheSize: 16 * bs, BlockSize: bs, PartSize: 2 * bs, MaxReadAhead: 4 * bs, MaxParallel: 4})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r := openZip(c, s3backend.Version{Key: "k", ETag: info.ETag, Size: info.Size})
		defer r.Close()
		buf := make([]byte, n)
		got, err := r.ReadAt(context.Background(), buf, off)
		if off < 0 {
			if err == nil {
				t.Fatalf("ReadAt at %d succeeded", off)
			}
			return
		}
		var want []byte
		if off < int64(size) {
			want = data[off:min(int64(size), off+int64(n))]
		}
		if err != nil && len(want) > 0 {
			t.Fatalf("ReadAt(%d, %d) of %d bytes: %v", off, n, size, err)
		}
		if !bytes.Equal(buf[:got], want) {
			t.Fatalf("ReadAt(%d, %d) of %d bytes returned %d wrong bytes", off, n, size, got)
		}
	})
}
