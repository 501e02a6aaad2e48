package npz

import (
	"bytes"
	"compress/flate"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/bgbfs/bgbfs/fs/npz/npztest"
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
	f.Add(npztest.Floats(2000, 1), int8(0), uint16(5000), uint64(3))
	f.Add(npztest.Floats(1000, 2), int8(-2), uint16(1), uint64(4))
	f.Add(npztest.Deflate([]byte("a stream fed raw"), 6), int8(6), uint16(2), uint64(5))
	f.Add(dynamicAAAA().code(0, 1).code(3, 2).code(0, 1).code(2, 2).bytes(), int8(6), uint16(0), uint64(6))
	writers := fuzzWriters{}
	f.Fuzz(func(t *testing.T, data []byte, level int8, span uint16, seed uint64) {
		if len(data) > 32<<10 {
			// Larger inputs add little here (the unit tests cover
			// long streams) and take the fuzzer minutes to minimize.
			return
		}
		stream := writers.deflate(t, data, level)
		got, err := inflateAll(stream)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("level %d: round trip failed: %v", level, err)
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

// fuzzWriters are compress/flate writers by level, reused (inputs run one
// at a time in each process): a new one costs about 1 MB, more than the
// rest of a run.
type fuzzWriters map[int]*flate.Writer

// deflate compresses data at a level chosen by level: -1 .. 9, and
// HuffmanOnly for a negative level.
func (ws fuzzWriters) deflate(t *testing.T, data []byte, level int8) []byte {
	lvl := int(level)%11 - 1
	if level < 0 {
		lvl = flate.HuffmanOnly
	}
	w, ok := ws[lvl]
	if !ok {
		w, _ = flate.NewWriter(nil, lvl)
		ws[lvl] = w
	}
	var buf bytes.Buffer
	w.Reset(&buf)
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
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

// FuzzInflateCorrupt damages valid streams: data compressed at a level
// chosen by level, with the bits at offsets drawn from flips inverted and
// the stream cut short by cut bytes. Random bytes rarely get past a
// dynamic block's header; these reach every path of the decode loop with
// codes that are valid up to the damage. The inflater must reject the
// result exactly when compress/flate does and otherwise decode the same
// bytes, which ReadAt through an index must return too.
func FuzzInflateCorrupt(f *testing.F) {
	f.Add([]byte("hello, hello, hello, hello"), int8(6), []byte{0, 40}, uint16(0))
	f.Add(npztest.Floats(4000, 1), int8(6), []byte{1, 2, 3, 4}, uint16(0))
	f.Add(walkData(8000, 2), int8(9), []byte{}, uint16(3))
	f.Add(bytes.Repeat([]byte("abcab"), 2000), int8(1), []byte{0, 200, 7, 7}, uint16(1))
	f.Add(npztest.Floats(2000, 3), int8(-2), []byte{255, 255}, uint16(0))
	writers := fuzzWriters{}
	f.Fuzz(func(t *testing.T, data []byte, level int8, flips []byte, cut uint16) {
		if len(data) > 32<<10 || len(flips) > 16 {
			return
		}
		stream := writers.deflate(t, data, level)
		for i := 0; i+1 < len(flips); i += 2 {
			bit := (int(flips[i])<<8 | int(flips[i+1])) % (len(stream) * 8)
			stream[bit>>3] ^= 1 << (bit & 7)
		}
		stream = stream[:len(stream)-int(cut)%len(stream)]

		want, stdErr := stdInflate(stream)
		got, err := inflateAll(stream)
		switch {
		case (err == nil) != (stdErr == nil):
			t.Fatalf("inflater says %v, compress/flate says %v", err, stdErr)
		case err == nil && !bytes.Equal(got, want):
			t.Fatalf("output differs from compress/flate")
		case err == nil:
			checkFuzzIndex(t, stream, want, 0, uint64(cut))
		case !errors.Is(err, ErrCorrupt):
			t.Fatalf("error %v is not ErrCorrupt", err)
		}
	})
}
