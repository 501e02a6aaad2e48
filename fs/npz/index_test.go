package npz

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/bgbfs/bgbfs/fs/npz/npztest"
)

// countingReader counts the bytes read through it.
type countingReader struct {
	r     io.ReaderAt
	bytes atomic.Int64
	reads atomic.Int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.bytes.Add(int64(len(p)))
	c.reads.Add(1)
	return c.r.ReadAt(p, off)
}

// streamIndex indexes a raw deflate stream of data, as if it were a
// member starting at offset 0.
func streamIndex(t testing.TB, stream, data []byte, span int64) *Index {
	t.Helper()
	m := Member{Name: "m", Method: Deflated, CompressedSize: int64(len(stream)), UncompressedSize: int64(len(data)), CRC32: crc32.ChecksumIEEE(data)}
	x, err := buildIndex(bytes.NewReader(stream), m, 0, span, 0)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// checkReadAt compares reads through x with data: the whole content,
// reads across every access point, reads at the end, and random ones.
func checkReadAt(t *testing.T, x *Index, r io.ReaderAt, data []byte, rng *rand.Rand, random int) {
	t.Helper()
	size := int64(len(data))
	check := func(off int64, n int) {
		t.Helper()
		p := make([]byte, n)
		got, err := x.ReadAt(r, p, off)
		want := max(0, min(int64(n), size-off))
		switch {
		case int64(got) != want:
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v; want %d bytes", n, off, got, err, want)
		case want > 0 && !bytes.Equal(p[:got], data[off:off+want]):
			t.Fatalf("ReadAt(%d bytes at %d): wrong content", n, off)
		case want < int64(n) && err != io.EOF:
			t.Fatalf("ReadAt(%d bytes at %d) short read with error %v, want io.EOF", n, off, err)
		case want == int64(n) && err != nil:
			t.Fatalf("ReadAt(%d bytes at %d): %v", n, off, err)
		}
	}
	check(0, len(data))
	check(0, len(data)+10)
	check(size, 1)
	check(size+100, 1)
	check(max(0, size-1), 5)
	for _, p := range x.points {
		check(max(0, p.out-3), 6)
		check(p.out, 1)
	}
	for range random {
		off := rng.Int64N(size + 1)
		check(off, rng.IntN(int(min(size-off, 300<<10))+1))
	}
}

func TestIndexReadAt(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for name, data := range testInputs() {
		if len(data) == 0 {
			continue
		}
		for _, level := range []int{flate.NoCompression, flate.BestSpeed, flate.DefaultCompression, flate.HuffmanOnly} {
			stream := npztest.Deflate(data, level)
			for _, span := range []int64{1, 1000, 64 << 10, DefaultSpan} {
				x := streamIndex(t, stream, data, span)
				if x.Size() != int64(len(data)) {
					t.Fatalf("Size %d", x.Size())
				}
				checkReadAt(t, x, bytes.NewReader(stream), data, rng, 50)
				// Points are at least span apart, windows as long
				// as the history available, at most 32 KiB, each
				// byte the content's or zeroed.
				if x.fullWindows != 0 {
					t.Errorf("%s level %d span %d: %d sparse windows failed their check", name, level, span, x.fullWindows)
				}
				// Each window again through decompressors a
				// Buffers lends, one after the other.
				bufs := new(Buffers)
				for i, p := range x.points[1:] {
					h, err := p.history()
					if err != nil || p.out-x.points[i].out < span || len(h) != int(min(p.out, windowSize)) {
						t.Fatalf("%s level %d span %d: bad point %d: out %d (previous %d), window %d, %v", name, level, span, i+1, p.out, x.points[i].out, len(h), err)
					}
					if lent, err := p.historyInto(make([]byte, p.historySize()), bufs); err != nil || !bytes.Equal(lent, h) {
						t.Fatalf("%s level %d span %d: point %d: window through a lent decompressor differs (%v)", name, level, span, i+1, err)
					}
					for k, c := range h {
						if want := data[p.out-int64(len(h))+int64(k)]; c != 0 && c != want {
							t.Fatalf("%s level %d span %d: point %d: window byte %d is %#x, the content's is %#x", name, level, span, i+1, k, c, want)
						}
					}
				}
			}
		}
	}
}

// TestCompactIndex measures an index of an EEG-like windows member (rows
// of 19 x 15360 float32 random walks, deflate ratio about 1.13 like the
// real data) with the access points the member view asks for: its windows
// must be at least 50x smaller than the 32 KiB of raw history per point
// (and the 64 KiB head) indexes kept before they were sparse.
func TestCompactIndex(t *testing.T) {
	const rows, rowBytes = 12, 19 * 15360 * 4
	data := append(npztest.NPYHeader("<f4", rows, 19, 15360), walkData(rows*rowBytes, 5)...)
	stream := npztest.Deflate(data, 6)
	if ratio := float64(len(data)) / float64(len(stream)); ratio < 1.10 || ratio > 1.16 {
		t.Fatalf("test data deflates %.3fx, not like EEG (1.13x)", ratio)
	}
	m := Member{Name: "windows.npy", Method: Deflated, CompressedSize: int64(len(stream)), UncompressedSize: int64(len(data)), CRC32: crc32.ChecksumIEEE(data)}
	const span, lead = 1 << 20, 136 << 10 // as fs asks
	x, err := buildIndex(bytes.NewReader(stream), m, 0, span, lead)
	if err != nil {
		t.Fatal(err)
	}
	if x.Points() < rows {
		t.Fatalf("%d points for %d rows", x.Points(), rows)
	}
	var windows int64
	for _, p := range x.points {
		windows += int64(len(p.window))
	}
	before := int64(x.Points()-1)*windowSize + 64<<10
	t.Logf("%d points, %d bytes of windows (%.0f per point), index %d bytes (%.0f per point); raw windows and head: %d bytes, %.0fx more",
		x.Points(), windows, float64(windows)/float64(x.Points()-1), x.MemoryBytes(), float64(x.MemoryBytes())/float64(x.Points()), before, float64(before)/float64(x.MemoryBytes()))
	if x.MemoryBytes() > before/50 {
		t.Errorf("index of %d bytes, want at most 1/50 of %d", x.MemoryBytes(), before)
	}
	if x.fullWindows != 0 {
		t.Errorf("%d sparse windows failed their check", x.fullWindows)
	}
	checkReadAt(t, x, bytes.NewReader(stream), data, rand.New(rand.NewPCG(8, 9)), 30)
}

// TestSparseWindowChecked spoils every sparse window (zeroes its last
// used byte) before the build checks it: the check must catch each spoiled
// window that a decoder needs, store those whole, and reads stay right.
func TestSparseWindowChecked(t *testing.T) {
	data := testInputs()["text"]
	stream := npztest.Deflate(data, 6)
	m := Member{Name: "m", Method: Deflated, CompressedSize: int64(len(stream)), UncompressedSize: int64(len(data)), CRC32: crc32.ChecksumIEEE(data)}
	spoiled := 0
	x, err := buildIndexChecked(bytes.NewReader(stream), m, 0, 64<<10, 0, func(w []byte) {
		for i := len(w) - 1; i >= 0; i-- {
			if w[i] != 0 {
				w[i] = 0
				spoiled++
				return
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if spoiled == 0 || x.fullWindows != spoiled {
		t.Errorf("%d windows spoiled, %d caught by the check; want all of at least one", spoiled, x.fullWindows)
	}
	checkReadAt(t, x, bytes.NewReader(stream), data, rand.New(rand.NewPCG(2, 2)), 30)
}

// The start of the content (an array header) is read from the index,
// without reading the archive.
func TestIndexKeepsTheHead(t *testing.T) {
	for _, size := range []int{100, headKeep - 1, headKeep, 3 << 20} {
		data := npztest.Floats(size, uint64(size))
		stream := npztest.Deflate(data, 6)
		x := streamIndex(t, stream, data, 64<<10)
		for _, r := range []struct{ off, n int }{{0, min(size, 128)}, {0, min(size, headKeep)}, {10, min(size, headKeep) - 10}} {
			c := &countingReader{r: bytes.NewReader(stream)}
			p := make([]byte, r.n)
			if n, err := x.ReadAt(c, p, int64(r.off)); n != r.n || (err != nil && err != io.EOF) || !bytes.Equal(p, data[r.off:r.off+r.n]) {
				t.Fatalf("size %d: ReadAt(%d at %d) = %d, %v", size, r.n, r.off, n, err)
			}
			if c.reads.Load() != 0 {
				t.Errorf("size %d: ReadAt(%d at %d) read the archive %d times", size, r.n, r.off, c.reads.Load())
			}
			if want := int64(min(size, headKeep)); int64(len(x.Head())) != want {
				t.Errorf("size %d: HeadLen %d, want %d", size, int64(len(x.Head())), want)
			}
		}
	}
}

// TestIndexReadAtReadsLittle checks a window-sized read decodes from
// one access point and reads only what it needs of the compressed data.
func TestIndexReadAtReadsLittle(t *testing.T) {
	data := npztest.Floats(12<<20, 11)
	stream := npztest.Deflate(data, 6)
	x := streamIndex(t, stream, data, DefaultSpan)
	rng := rand.New(rand.NewPCG(5, 6))
	const window = 19 * 15360 * 4
	for range 20 {
		off := rng.Int64N(int64(len(data)) - window)
		c := &countingReader{r: bytes.NewReader(stream)}
		p := make([]byte, window)
		if _, err := x.ReadAt(c, p, off); err != nil || !bytes.Equal(p, data[off:off+window]) {
			t.Fatalf("ReadAt at %d: %v", off, err)
		}
		// What a decoder must read: from the access point to about
		// the end of the range, at this stream's ratio.
		i := 0
		for i+1 < len(x.points) && x.points[i+1].out <= off {
			i++
		}
		ratio := float64(len(stream)) / float64(len(data))
		need := int64(float64(off+window-x.points[i].out) * ratio)
		if got := c.bytes.Load(); got > need+readChunk+readMargin || got < need*9/10 {
			t.Errorf("ReadAt of %d bytes at %d read %d compressed bytes in %d reads; needs about %d", window, off, got, c.reads.Load(), need)
		}
	}
}

func TestIndexConcurrentReadAt(t *testing.T) {
	data := npztest.Floats(3<<20, 12)
	stream := npztest.Deflate(data, 6)
	x := streamIndex(t, stream, data, 128<<10)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 0))
			for range 30 {
				off := rng.Int64N(int64(len(data)))
				p := make([]byte, rng.IntN(200<<10)+1)
				n, err := x.ReadAt(bytes.NewReader(stream), p, off)
				if (err != nil && err != io.EOF) || !bytes.Equal(p[:n], data[off:off+int64(n)]) {
					t.Errorf("ReadAt(%d at %d) = %d, %v", len(p), off, n, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestBuildIndexChecks(t *testing.T) {
	data := npztest.Floats(1<<20, 13)
	stream := npztest.Deflate(data, 6)
	good := Member{Name: "m", Method: Deflated, CompressedSize: int64(len(stream)), UncompressedSize: int64(len(data)), CRC32: crc32.ChecksumIEEE(data)}
	flipped := bytes.Clone(stream)
	flipped[len(flipped)/2] ^= 0x10
	tests := []struct {
		name   string
		stream []byte
		edit   func(*Member)
		want   error
	}{
		{"wrong CRC", stream, func(m *Member) { m.CRC32 ^= 1 }, ErrChecksum},
		{"size too small", stream, func(m *Member) { m.UncompressedSize-- }, ErrChecksum},
		{"size too large", stream, func(m *Member) { m.UncompressedSize++ }, ErrChecksum},
		{"compressed size short", stream, func(m *Member) { m.CompressedSize -= 100 }, ErrCorrupt},
		{"data cut", stream[:len(stream)-100], func(m *Member) {}, io.ErrUnexpectedEOF},
		{"flipped bit", flipped, func(m *Member) {}, nil}, // ErrCorrupt or ErrChecksum
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := good
			tt.edit(&m)
			_, err := buildIndex(bytes.NewReader(tt.stream), m, 0, 0, 0)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) ||
				(tt.want == nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrChecksum)) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// TestIndexHugeBlock checks a stream that is one 1 MiB fixed-code block:
// no boundary to place points at, so reads decode from the start.
func TestIndexHugeBlock(t *testing.T) {
	data := npztest.Floats(1<<20, 14)
	w := (&bitWriter{}).bits(1, 1).bits(1, 2)
	for _, c := range data {
		w.fixedLit(int(c))
	}
	stream := w.fixedLit(256).bytes()
	x := streamIndex(t, stream, data, 64<<10)
	if x.Points() != 1 {
		t.Errorf("%d points in a one-block stream", x.Points())
	}
	checkReadAt(t, x, bytes.NewReader(stream), data, rand.New(rand.NewPCG(1, 3)), 5)
}

func TestMethodChecks(t *testing.T) {
	arch := npztest.Zip([]npztest.Entry{{Name: "s", Method: Stored, Data: []byte("x")}, {Name: "d", Method: Deflated, Data: []byte("y")}}, npztest.Options{})
	r := bytes.NewReader(arch)
	dir, err := ReadDirectory(r, int64(len(arch)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := BuildIndex(r, dir.Members[0], 0, 0); !errors.Is(err, ErrUnsupported) {
		t.Errorf("BuildIndex of a stored member: %v", err)
	}
}

func TestIndexSpans(t *testing.T) {
	data := npztest.Floats(5<<20, 21)
	stream := npztest.Deflate(data, 6)
	x := streamIndex(t, stream, data, 256<<10)
	if x.Points() < 10 {
		t.Fatalf("%d access points in 5 MiB at a 256 KiB span", x.Points())
	}
	// Spans tile the content: each starts where the previous ended, and
	// reading one exactly reads from its own access point onwards only.
	var prevEnd int64
	for prevEnd < int64(len(data)) {
		start, end := x.Span(prevEnd)
		if start != prevEnd || end <= start {
			t.Fatalf("Span(%d) = [%d, %d)", prevEnd, start, end)
		}
		if s2, e2 := x.Span(end - 1); s2 != start || e2 != end {
			t.Fatalf("Span(%d) = [%d, %d), Span(%d) = [%d, %d)", start, start, end, end-1, s2, e2)
		}
		// SourceRange bounds what the read reads: a reader that
		// fails outside it must not fail the read.
		src, srcLen := x.SourceRange(start, end)
		if srcLen > int64(len(stream))/8 {
			t.Fatalf("SourceRange of span [%d, %d) is %d bytes of a %d-byte stream", start, end, srcLen, len(stream))
		}
		bounded := io.NewSectionReader(bytes.NewReader(stream), 0, src+srcLen)
		p := make([]byte, end-start)
		if n, err := x.ReadAt(offsetFloor{bounded, src}, p, start); n != len(p) || (err != nil && err != io.EOF) || !bytes.Equal(p, data[start:end]) {
			t.Fatalf("ReadAt of span [%d, %d) within source [%d, +%d): %d, %v", start, end, src, srcLen, n, err)
		}
		prevEnd = end
	}
}

// offsetFloor fails reads before from.
type offsetFloor struct {
	r    io.ReaderAt
	from int64
}

func (o offsetFloor) ReadAt(p []byte, off int64) (int, error) {
	if off < o.from {
		return 0, fmt.Errorf("read at %d, before %d", off, o.from)
	}
	return o.r.ReadAt(p, off)
}

// TestRowPoints checks where BuildIndex puts access points with a row
// lead: just before each row when rows are from half a span to four spans
// long, every span otherwise; and that reads through either index are
// right.
func TestRowPoints(t *testing.T) {
	const span, lead = 256 << 10, 40 << 10
	for _, tt := range []struct {
		name     string
		rows     int
		rowBytes int
		lead     int64
		aligned  bool
	}{
		{"rows a little longer than the span", 12, 300 << 10, lead, true},
		{"rows of half a span", 20, span / 2, lead, true},
		{"rows of four spans", 3, 4 * span, lead, true},
		{"short rows", 200, 4 << 10, lead, false},
		{"long rows", 2, 5 * span, lead, false},
		{"no lead", 12, 300 << 10, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := npztest.NPY(tt.rows, tt.rowBytes, 7)
			stream := npztest.Deflate(data, 6)
			m := Member{Name: "windows.npy", Method: Deflated, CompressedSize: int64(len(stream)), UncompressedSize: int64(len(data)), CRC32: crc32.ChecksumIEEE(data)}
			x, err := buildIndex(bytes.NewReader(stream), m, 0, span, tt.lead)
			if err != nil {
				t.Fatal(err)
			}
			l, err := ParseNPYHeader(data)
			if err != nil {
				t.Fatal(err)
			}
			if tt.aligned {
				// Up to the last row, one point per row after the first,
				// at most lead before the row's start and within a block
				// or two of it; within the last row, every span.
				lastTarget := l.DataOffset + int64(tt.rows-1)*l.RowBytes - tt.lead
				n := 0
				for _, p := range x.points {
					if p.out <= lastTarget {
						n++
					}
				}
				if n != tt.rows {
					t.Errorf("%d points up to the last row, want %d (the stream start and one before each later row)", n, tt.rows)
				}
				for i := 1; i < n && i < tt.rows; i++ {
					target := l.DataOffset + int64(i)*l.RowBytes - tt.lead
					if p := x.points[i].out; p > target || p < target-candidateZone {
						t.Errorf("point %d at %d; want in [%d, %d] (row %d starts at %d)", i, p, target-candidateZone, target, i, l.DataOffset+int64(i)*l.RowBytes)
					}
				}
			} else {
				for i := 1; i < len(x.points); i++ {
					if gap := x.points[i].out - x.points[i-1].out; gap < span || gap > span+candidateZone {
						t.Errorf("points %d and %d are %d apart; want a span (%d) and at most a block more", i-1, i, gap, span)
					}
				}
			}
			checkReadAt(t, x, bytes.NewReader(stream), data, rand.New(rand.NewPCG(3, 4)), 200)
		})
	}
}

// Inflaters made from one Buffers reuse each other's buffers and Huffman
// tables, left as the last block built them: streams whose blocks build
// different tables (a walk's dynamic codes, text's, fixed codes), read
// in turns through one Buffers, must each read right.
func TestBuffersReusedAcrossStreams(t *testing.T) {
	inputs := testInputs()
	type stream struct {
		name   string
		data   []byte
		stream []byte
		x      *Index
	}
	var streams []stream
	for _, s := range []struct {
		name  string
		data  []byte
		level int
	}{
		{"walk", walkData(1<<20, 9), flate.DefaultCompression},
		{"text", inputs["text"], flate.BestCompression},
		{"walk, Huffman only", walkData(600<<10, 3), flate.HuffmanOnly},
		{"random", inputs["random"], flate.BestSpeed},
	} {
		if len(s.data) == 0 {
			t.Fatalf("no %s input", s.name)
		}
		st := npztest.Deflate(s.data, s.level)
		streams = append(streams, stream{s.name, s.data, st, streamIndex(t, st, s.data, 128<<10)})
	}
	bufs := new(Buffers)
	rng := rand.New(rand.NewPCG(5, 6))
	for round := range 200 {
		s := streams[round%len(streams)]
		n := 1 + rng.IntN(200<<10)
		off := rng.Int64N(int64(len(s.data)))
		p := make([]byte, n)
		got, _, err := s.x.ReadAtInflating(bytes.NewReader(s.stream), p, off, bufs)
		want := s.data[off:min(off+int64(n), int64(len(s.data)))]
		if (err != nil && !errors.Is(err, io.EOF)) || got != len(want) || !bytes.Equal(p[:got], want) {
			t.Fatalf("round %d, %s: %d bytes at %d: got %d, %v, right: %v", round, s.name, n, off, got, err, bytes.Equal(p[:got], want))
		}
	}
}
