package npz

import (
	"bytes"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/bgbfs/bgbfs/fs/npz/npztest"
)

// TestIndexEncodingRoundTrip checks that a decoded index is the index
// that was encoded and reads the same bytes, with its memory accounted.
func TestIndexEncodingRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name     string
		rows     int
		rowBytes int
		lead     int64
	}{
		{"row points", 12, 300 << 10, 40 << 10},
		{"span points", 200, 4 << 10, 0},
		{"one point", 1, 1 << 10, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := npztest.NPY(tt.rows, tt.rowBytes, 11)
			stream := npztest.Deflate(data, 6)
			m := Member{Name: "windows.npy", Method: Deflated, CompressedSize: int64(len(stream)), UncompressedSize: int64(len(data)), CRC32: crc32.ChecksumIEEE(data)}
			x, err := buildIndex(bytes.NewReader(stream), m, 0, 256<<10, tt.lead)
			if err != nil {
				t.Fatal(err)
			}
			b, err := x.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			y, err := UnmarshalIndex(b, m)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(x, y) {
				t.Fatalf("decoded index differs from the encoded one:\n%+v\n%+v", x, y)
			}
			if y.MemoryBytes() <= 0 || y.MemoryBytes() != x.MemoryBytes() {
				t.Errorf("decoded index holds %d bytes, built %d", y.MemoryBytes(), x.MemoryBytes())
			}
			checkReadAt(t, y, bytes.NewReader(stream), data, rand.New(rand.NewPCG(5, 6)), 50)
		})
	}
}

// TestIndexDecodingRefuses checks that a truncated or padded encoding, or
// one of another member, is refused with the error that says which.
func TestIndexDecodingRefuses(t *testing.T) {
	data := npztest.NPY(12, 300<<10, 3)
	stream := npztest.Deflate(data, 6)
	m := Member{Name: "windows.npy", Method: Deflated, CompressedSize: int64(len(stream)), UncompressedSize: int64(len(data)), CRC32: crc32.ChecksumIEEE(data)}
	x, err := buildIndex(bytes.NewReader(stream), m, 0, 256<<10, 40<<10)
	if err != nil {
		t.Fatal(err)
	}
	b, err := x.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	for n := range len(b) {
		if _, err := UnmarshalIndex(b[:n], m); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("encoding cut to %d of %d bytes: %v, want ErrCorrupt", n, len(b), err)
		}
	}
	if _, err := UnmarshalIndex(append(b, 0), m); !errors.Is(err, ErrCorrupt) {
		t.Errorf("encoding with a byte more: %v, want ErrCorrupt", err)
	}
	other := func(edit func(*Member)) Member { o := m; edit(&o); return o }
	for name, o := range map[string]Member{
		"name":              other(func(o *Member) { o.Name = "labels.npy" }),
		"size":              other(func(o *Member) { o.UncompressedSize++ }),
		"compressed size":   other(func(o *Member) { o.CompressedSize-- }),
		"CRC-32":            other(func(o *Member) { o.CRC32 ^= 1 }),
		"local header past": other(func(o *Member) { o.HeaderOffset = 1 << 20 }),
	} {
		_, err := UnmarshalIndex(b, o)
		want := ErrIndexMismatch
		if name == "local header past" {
			want = ErrCorrupt
		}
		if !errors.Is(err, want) {
			t.Errorf("member with another %s: %v, want %v", name, err, want)
		}
	}
}

// TestDirectoryEncodingRoundTrip: a directory decodes to what was
// encoded, unusable entries included, and a decoded member reads as the
// original (its data offset is checked against the directory's start).
func TestDirectoryEncodingRoundTrip(t *testing.T) {
	arch := npztest.Zip([]npztest.Entry{
		{Name: "windows.npy", Method: Deflated, Data: npztest.NPY(4, 64<<10, 1), Level: 6},
		{Name: "labels.npy", Method: Stored, Data: []byte("labels")},
		{Name: "a/b", Method: Stored, Data: []byte("x")},
	}, npztest.Options{Zip64End: true})
	dir, err := ReadDirectory(bytes.NewReader(arch), int64(len(arch)))
	if err != nil {
		t.Fatal(err)
	}
	b, err := dir.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalDirectory(b, int64(len(arch)))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Members, dir.Members) {
		t.Errorf("members %+v, want %+v", got.Members, dir.Members)
	}
	if len(got.Unusable) != 1 || got.Unusable[0].Name != "a/b" || got.Unusable[0].Error() != dir.Unusable[0].Error() || !errors.Is(got.Unusable[0], ErrUnsupported) {
		t.Errorf("unusable %v, want %v", got.Unusable, dir.Unusable)
	}
	for _, m := range got.Members {
		if _, err := m.DataOffset(bytes.NewReader(arch)); err != nil {
			t.Errorf("decoded member %q: %v", m.Name, err)
		}
	}
	for n := range len(b) {
		if _, err := UnmarshalDirectory(b[:n], int64(len(arch))); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("encoding cut to %d of %d bytes: %v, want ErrCorrupt", n, len(b), err)
		}
	}
	if _, err := UnmarshalDirectory(b, dir.Members[0].dirOffset-1); !errors.Is(err, ErrCorrupt) {
		t.Errorf("directory of an archive larger than this one: %v, want ErrCorrupt", err)
	}
}
