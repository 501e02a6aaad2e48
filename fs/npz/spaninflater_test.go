package npz

import (
	"bytes"
	"compress/flate"
	"errors"
	"testing"

	"github.com/bgbfs/bgbfs/fs/npz/npztest"
)

// A span inflated in steps gets the same content as one ReadAt of it,
// inflates each byte once (its counts add up to the span), and hands out
// slices that later steps leave alone; a step asked past the span stops
// at its end, and a step that fails leaves nothing half-done to trust.
func TestSpanInflater(t *testing.T) {
	data := walkData(3<<20+777, 5)
	stream := npztest.Deflate(data, flate.DefaultCompression)
	x := streamIndex(t, stream, data, 512<<10)
	if x.Points() < 3 {
		t.Fatalf("%d access points, want several", x.Points())
	}
	start, stop := x.Span(x.points[1].out)
	bufs := new(Buffers) // shared by the cases, one after the other: reused
	// A buffer used before, with room for the span: what it held must not
	// show through.
	used := bytes.Repeat([]byte{0xa5}, int(stop-start)+4096)
	for _, tt := range []struct {
		name  string
		steps []int64 // upto, as offsets from start
		into  []byte
	}{
		{"whole", []int64{stop - start}, nil},
		{"in steps", []int64{1, 4096, 4096, 100_000, 100_001, stop - start}, nil},
		{"past the end", []int64{50_000, stop - start + 1<<20}, nil},
		{"one step short of the end", []int64{stop - start - 1}, nil},
		{"into a used buffer, in steps", []int64{4096, 100_000, stop - start}, used},
		{"into a buffer too small", []int64{stop - start}, make([]byte, 1000)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := x.SpanInflater(start, bufs, tt.into)
			if err != nil {
				t.Fatal(err)
			}
			var inflated int64
			var firsts [][]byte
			for _, upto := range tt.steps {
				got, n, err := s.Inflate(&countingReader{r: bytes.NewReader(stream)}, start+upto)
				if err != nil {
					t.Fatalf("Inflate to %d: %v", start+upto, err)
				}
				inflated += n
				want := min(start+upto, stop)
				if int64(len(got)) < want-start || !bytes.Equal(got, data[start:start+int64(len(got))]) {
					t.Fatalf("Inflate to %d: %d bytes from %d, wrong", want, len(got), start)
				}
				if int64(cap(got)) > stop-start {
					t.Fatalf("Inflate to %d: room for %d bytes, past the span's %d", want, cap(got), stop-start)
				}
				firsts = append(firsts, got)
			}
			if last := firsts[len(firsts)-1]; int64(cap(tt.into)) >= stop-start && &last[0] != &tt.into[0] {
				t.Error("inflated into a buffer of its own, not the one given with room for the span")
			}
			for i, got := range firsts {
				if !bytes.Equal(got, data[start:start+int64(len(got))]) {
					t.Fatalf("the content step %d returned changed later", i)
				}
			}
			last := firsts[len(firsts)-1]
			if end := start + int64(len(last)); inflated < end-start || inflated > end-start+maxMatch {
				t.Errorf("inflated %d bytes in all for %d of content", inflated, end-start)
			}
		})
	}
	if _, err := x.SpanInflater(start+1, nil, nil); err == nil {
		t.Error("SpanInflater at a content offset that is no access point: no error")
	}
	s, err := x.SpanInflater(start, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Inflate(failingReader{}, stop); err == nil || !errors.Is(err, errTestRead) {
		t.Errorf("Inflate through a failing reader: %v, want its error", err)
	}
}

var errTestRead = errors.New("test read failure")

type failingReader struct{}

func (failingReader) ReadAt([]byte, int64) (int, error) { return 0, errTestRead }

// An input buffer kept in a class is lent only to reads it has room for.
func TestInClass(t *testing.T) {
	for _, tt := range []struct {
		n          int
		room, kept int // inClass(n, true), inClass(n, false)
	}{
		{1, 0, -1},
		{minInClass - 1, 0, -1},
		{minInClass, 0, 0},
		{minInClass + 1, 1, 0},
		{2 * minInClass, 1, 1},
		{1 << 20, 4, 4},
		{1<<20 + 1<<18, 5, 4},
		{minInClass << (inClasses - 1), inClasses - 1, inClasses - 1},
		{minInClass<<(inClasses-1) + 1, -1, inClasses - 1},
		{minInClass << inClasses, -1, -1},
	} {
		if room, kept := inClass(tt.n, true), inClass(tt.n, false); room != tt.room || kept != tt.kept {
			t.Errorf("inClass(%d) = %d to lend, %d to keep; want %d, %d", tt.n, room, kept, tt.room, tt.kept)
		}
	}
	// A buffer made for n bytes is kept in the class reads of n are
	// lent from.
	for n := 1; n < minInClass<<inClasses; n = n*9/8 + 1 {
		if c, k := inClass(n, true), inClass(inBufferCap(n), false); c >= 0 && c != k {
			t.Fatalf("a buffer made for %d bytes (%d) is kept in class %d, reads of %d are lent from class %d", n, inBufferCap(n), k, n, c)
		}
	}
	for n := 1; n < minInClass<<inClasses; n = n*9/8 + 1 {
		for capacity := 1; capacity < minInClass<<inClasses; capacity = capacity*9/8 + 1 {
			if c := inClass(n, true); c >= 0 && c == inClass(capacity, false) && capacity < n {
				t.Fatalf("a buffer of %d bytes kept in class %d, lent for %d", capacity, c, n)
			}
		}
	}
}

// A span inflater released part way gives its buffers back and inflates
// no more; what it returned before stays as it was.
func TestSpanInflaterRelease(t *testing.T) {
	data := walkData(2<<20, 6)
	stream := npztest.Deflate(data, flate.DefaultCompression)
	x := streamIndex(t, stream, data, 512<<10)
	start, stop := x.Span(x.points[1].out)
	s, err := x.SpanInflater(start, new(Buffers), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := s.Inflate(bytes.NewReader(stream), start+100_000)
	if err != nil {
		t.Fatal(err)
	}
	s.Release()
	if s.c != nil {
		t.Error("the inflater kept its buffers after Release")
	}
	if _, _, err := s.Inflate(bytes.NewReader(stream), stop); err == nil {
		t.Error("Inflate after Release: no error")
	}
	if !bytes.Equal(got, data[start:start+int64(len(got))]) {
		t.Error("the content returned before Release changed")
	}
	s.Release() // twice: nothing more to give
}
