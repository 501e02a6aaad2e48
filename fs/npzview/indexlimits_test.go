package npzview

import "testing"

// A buffer given back is reused only for an archive whose hold of the
// budget covers the buffer's capacity, so that reused buffers never
// hold more memory than the budget counts.
func TestArchiveBufferReuse(t *testing.T) {
	for _, c := range []struct {
		name        string
		first, next int64
		reused      bool
	}{
		{"same size", 200 << 10, 200 << 10, true},
		{"a little bigger, same rounding", 200 << 10, 250 << 10, true},
		{"bigger than the buffer", 200 << 10, 300 << 10, false},
		{"far smaller: would hold more than counted", 4 << 20, 200 << 10, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			// A sync.Pool may drop what it is given (the race detector
			// drops some on purpose): reused is whether any of a few
			// tries reused.
			got := false
			for range 20 {
				l := NewIndexLimits(1, 64<<20)
				b := l.archiveBuffer(c.first)
				l.reuse(b)
				next := l.archiveBuffer(c.next)
				if int64(cap(*next)) < c.next {
					t.Fatalf("buffer of %d bytes for %d", cap(*next), c.next)
				}
				got = got || next == b
			}
			if got != c.reused {
				t.Fatalf("reused %v, want %v (first %d, next %d)", got, c.reused, c.first, c.next)
			}
		})
	}
}
