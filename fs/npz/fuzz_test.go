package npz

import (
	"bytes"
	"compress/flate"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"testing"
)

// FuzzInflate checks the inflater and the index against compress/flate.
// data is compressed at a level chosen by level and must round-trip;
// data is also taken as a raw deflate stream, which the inflater must
// reject exactly when compress/flate does and otherwise decode to the
// same bytes. For every stream that decodes, ReadAt through an index
// with a span chosen by span must return the slices of the output at
// offsets and lengths drawn from seed.
func FuzzInflate(f *testing.F) {
	f.Add([]byte(""), int8(6), uint16(0), uint64(0))
	f.Add([]byte("hello, hello, hello, hello"), int8(9), uint16(3), uint64(1))
	f.Add(bytes.Repeat([]byte{0}, 3000), int8(1), uint16(100), uint64(2))
	f.Add(floatData(2000, 1), int8(0), uint16(5000), uint64(3))
	f.Add(floatData(1000, 2), int8(-2), uint16(1), uint64(4))
	f.Add(deflate(f, []byte("a stream fed raw"), 6), int8(6), uint16(2), uint64(5))
	f.Add(dynamicAAAA().code(0, 1).code(3, 2).code(0, 1).code(2, 2).bytes(), int8(6), uint16(0), uint64(6))
	// Writers are reused (inputs run one at a time in each process):
	// a new one costs about 1 MB, more than the rest of a run.
	writers := map[int]*flate.Writer{}
	f.Fuzz(func(t *testing.T, data []byte, level int8, span uint16, seed uint64) {
		if len(data) > 32<<10 {
			// Larger inputs add little here (the unit tests cover
			// long streams) and take the fuzzer minutes to minimize.
			return
		}
		lvl := int(level)%11 - 1 // -1 .. 9, and -2 via HuffmanOnly below
		if level < 0 {
			lvl = flate.HuffmanOnly
		}
		w, ok := writers[lvl]
		if !ok {
			w, _ = flate.NewWriter(nil, lvl)
			writers[lvl] = w
		}
		var buf bytes.Buffer
		w.Reset(&buf)
		w.Write(data)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		stream := buf.Bytes()
		got, err := inflateAll(stream)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("level %d: round trip failed: %v", lvl, err)
		}
		checkFuzzIndex(t, stream, data, span, seed)

		want, stdErr := stdInflate(data)
		got, err = inflateAll(data)
		switch {
		case (err == nil) != (stdErr == nil):
			t.Fatalf("raw stream: inflater says %v, compress/flate says %v", err, stdErr)
		case err == nil && !bytes.Equal(got, want):
			t.Fatalf("raw stream: output differs from compress/flate")
		case err == nil:
			checkFuzzIndex(t, data, want, span, seed)
		}
	})
}

func checkFuzzIndex(t *testing.T, stream, data []byte, span uint16, seed uint64) {
	m := Member{Name: "m", Method: Deflated, CompressedSize: int64(len(stream)), UncompressedSize: int64(len(data)), CRC32: crc32.ChecksumIEEE(data)}
	// At most about 64 access points: a stream of small blocks
	// inflating to megabytes would otherwise hold a 32 KiB window per
	// block and make each run slow.
	x, err := buildIndex(bytes.NewReader(stream), m, 0, max(int64(span)+1, int64(len(data))/64), 0)
	if err != nil {
		t.Fatalf("BuildIndex: %v", err)
	}
	rng := rand.New(rand.NewPCG(seed, 0))
	for range 8 {
		off := rng.Int64N(int64(len(data)) + 2)
		p := make([]byte, rng.IntN(len(data)+2))
		n, err := x.ReadAt(bytes.NewReader(stream), p, off)
		want := data[min(off, int64(len(data))):min(off+int64(len(p)), int64(len(data)))]
		if !bytes.Equal(p[:n], want) || (n < len(p) && err != io.EOF) || (n == len(p) && err != nil) {
			t.Fatalf("ReadAt(%d at %d) = %d, %v; want %d bytes", len(p), off, n, err, len(want))
		}
	}
}
