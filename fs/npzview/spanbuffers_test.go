package npzview

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npz/npztest"
)

func TestSpanBuffers(t *testing.T) {
	const span = 300 << 10
	for _, tt := range []struct {
		name   string
		budget int64
		// before runs on a buffer got for span bytes and released
		// once; then the next get of next bytes must (or must not)
		// return it.
		before    func(b *spanBuffer)
		next      int64
		reused    bool
		idleAfter int // buffers free once the first is released
	}{
		{name: "released: reused", budget: 4 * span, next: span, reused: true, idleAfter: 1},
		{name: "released: reused for a shorter span", budget: 4 * span, next: span / 2, reused: true, idleAfter: 1},
		{name: "a reference still held: not reused", budget: 4 * span, before: func(b *spanBuffer) { b.acquire() }, next: span, idleAfter: 0},
		{name: "taken and given back: reused", budget: 4 * span, before: func(b *spanBuffer) { b.acquire(); b.release() }, next: span, reused: true, idleAfter: 1},
		{name: "a longer span: a new buffer", budget: 4 * span, next: 2 * span, idleAfter: 1},
		{name: "no room in the budget: not kept", budget: span, next: span, idleAfter: 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			budget := cache.NewBudget(tt.budget)
			p := newSpanBuffers(budget)
			b := p.get(span)
			if len(b.data) < span || len(b.data)%spanBufferRound != 0 {
				t.Fatalf("get(%d): %d bytes", span, len(b.data))
			}
			if tt.before != nil {
				tt.before(b)
			}
			// A held span besides, in the budget.
			if !budget.TryTake(span) {
				t.Fatal("budget too small for the test")
			}
			b.release()
			if n, _ := p.idle(); n != tt.idleAfter {
				t.Errorf("%d buffers free after the release, want %d", n, tt.idleAfter)
			}
			next := p.get(tt.next)
			if got := next == b; got != tt.reused {
				t.Errorf("get(%d) returned the released buffer: %v, want %v", tt.next, got, tt.reused)
			}
			if len(next.data) < int(tt.next) || next.refs.Load() != 1 {
				t.Errorf("get(%d): %d bytes, %d references", tt.next, len(next.data), next.refs.Load())
			}
		})
	}
}

func TestSpanBufferReleasedTooOften(t *testing.T) {
	b := newSpanBuffers(cache.NewBudget(1 << 20)).get(1000)
	b.release()
	defer func() {
		if recover() == nil {
			t.Error("a second release did not panic")
		}
	}()
	b.release()
}

// A read copying out of a held span keeps its buffer from being reused
// when the span is dropped meanwhile: another open's inflation must not
// write into it until the read is done. Without the read's reference the
// buffer would go back to the pool at the drop, and the other open's
// spans would overwrite what the read copies.
func TestHeldSpanReadOutlivesItsDrop(t *testing.T) {
	want := npztest.NPY(20, 300<<10, 7)
	f := newViewFixtureOf(t, npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}, nil)
	r := f.reader(t, "windows.npy")
	x := f.index(t, r)
	off := int64(5 * 300 << 10)
	if _, err := readMember(r, 4096, off); err != nil {
		t.Fatal(err)
	}
	start, stop := x.Span(off)
	// A read that found the span held, and is about to copy from it.
	data, buf, ok := r.heldSpan(start, off+4096)
	if !ok {
		t.Fatal("the span just read is not held")
	}
	r.dropSpan(start)
	// Another open inflates every other span.
	other := f.reader(t, "windows.npy")
	for pos := stop; pos < x.Size(); {
		s, e := x.Span(pos)
		if _, err := readMember(other, int(e-s), s); err != nil {
			t.Fatal(err)
		}
		pos = e
	}
	if !bytes.Equal(data[off-start:off-start+4096], want[off:off+4096]) {
		t.Fatal("a span's buffer was written while a read still copied from it")
	}
	buf.release()
	// Once the read is done, the buffer is reused.
	if got := f.view.spanBuffers.get(stop - start); got != buf {
		t.Errorf("the buffer was not reused once the read released it (%d bytes got, %d released)", len(got.data), len(buf.data))
	}
}

// Many opens read at once, each from several goroutines, while spans are
// dropped, held and their buffers reused: every read gets the right
// bytes (run with -race: a buffer written while read is a race), and once
// every open is closed no span is held and the free buffers fit in the
// budget.
func TestSpanBuffersUnderConcurrentReads(t *testing.T) {
	want := npztest.NPY(24, 300<<10, 3)
	f := newViewFixtureWith(t, archiveOf(npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}),
		nil, Config{Span: 64 << 10, IndexBytes: 32 << 20, SpanBytes: 2 << 20})
	var wg sync.WaitGroup
	for i := range 6 {
		r := f.archive.Open(f.member(t, "windows.npy"))
		wg.Go(func() {
			defer r.Close()
			var reads sync.WaitGroup
			for j := range 3 {
				reads.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(i), uint64(j)))
					for range 20 {
						n := 1 + rng.Int64N(400<<10)
						off := headRegion + rng.Int64N(int64(len(want))-headRegion-n)
						got, err := readMember(r, int(n), off)
						if err != nil || !bytes.Equal(got, want[off:off+n]) {
							t.Errorf("open %d: read of %d at %d: %v, wrong bytes", i, n, off, err)
							return
						}
					}
				})
			}
			reads.Wait()
		})
	}
	wg.Wait()
	if n := f.view.spanBudget.InUse(); n != 0 {
		t.Errorf("%d bytes of spans held after every open closed", n)
	}
	if n, bytes := f.view.spanBuffers.idle(); n == 0 || bytes > f.view.spanBudget.Total() {
		t.Errorf("%d buffers of %d bytes free, budget %d", n, bytes, f.view.spanBudget.Total())
	}
}

// A reply written from held spans (ReadHeld) keeps their buffers from
// being reused until it is released, however long the kernel takes: the
// span dropped, the open closed, and another open inflating every span
// meanwhile must leave its bytes as they were. Nothing is written into
// the caller's buffer for the bytes the spans answer, and once released
// no reference is left.
func TestHeldReadOutlivesItsSpansAndOpen(t *testing.T) {
	want := npztest.NPY(20, 300<<10, 7)
	f := newViewFixtureOf(t, npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}, nil)
	r := f.reader(t, "windows.npy")
	x := f.index(t, r)
	// A read across a span's end, after the head: two pieces or more.
	_, stop := x.Span(5 * 300 << 10)
	off, n := stop-4096, 128<<10
	dest := bytes.Repeat([]byte{0xa5}, n)
	h, err := r.ReadHeld(context.Background(), dest, off)
	if err != nil {
		t.Fatal(err)
	}
	if h.Len() != n || len(h.Slices()) < 2 || len(h.bufs) != len(h.Slices()) {
		t.Fatalf("%d bytes in %d slices on %d buffers, want %d in 2 or more, each on a buffer", h.Len(), len(h.Slices()), len(h.bufs), n)
	}
	if !bytes.Equal(dest, bytes.Repeat([]byte{0xa5}, n)) {
		t.Error("the caller's buffer was written though held spans answered the read")
	}
	r.Close()
	other := f.reader(t, "windows.npy")
	for pos := int64(headRegion); pos < x.Size(); {
		s, e := x.Span(pos)
		if _, err := readMember(other, int(e-s), s); err != nil {
			t.Fatal(err)
		}
		pos = e
	}
	if got := bytes.Join(h.Slices(), nil); !bytes.Equal(got, want[off:off+int64(n)]) {
		t.Fatal("a span's buffer was written while a held read still had it")
	}
	bufs := slices.Clone(h.bufs)
	h.Release()
	h.Release() // a second release does nothing
	for _, b := range bufs {
		if refs := b.refs.Load(); refs != 0 {
			t.Errorf("a buffer has %d references once the read and its open released it", refs)
		}
	}
}

// ReadHeld returns the same bytes as ReadAt wherever it reads: in the
// head, across spans, at the end, past it.
func TestReadHeldMatchesReadAt(t *testing.T) {
	want := npztest.NPY(20, 300<<10, 9)
	f := newViewFixtureOf(t, npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}, nil)
	r := f.reader(t, "windows.npy")
	size := int64(len(want))
	for _, tt := range []struct {
		name string
		off  int64
		n    int
	}{
		{"head", 0, 4096},
		{"past the head", headRegion + 100, 128 << 10},
		{"a window", 3 * 300 << 10, 300 << 10},
		{"the end, short", size - 1000, 4096},
		{"past the end", size, 4096},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dest := make([]byte, tt.n)
			h, err := r.ReadHeld(context.Background(), dest, tt.off)
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			defer h.Release()
			wantN := int(max(0, min(int64(tt.n), size-tt.off)))
			if wantEOF := tt.off+int64(tt.n) >= size; (err == io.EOF) != wantEOF {
				t.Errorf("error %v, want io.EOF: %v", err, wantEOF)
			}
			if got := bytes.Join(h.Slices(), nil); h.Len() != wantN || !bytes.Equal(got, want[min(tt.off, size):min(tt.off, size)+int64(wantN)]) {
				t.Errorf("%d bytes (Len %d), want %d from the source", len(got), h.Len(), wantN)
			}
		})
	}
}

// A window's spans are a long one and short ones: a short span takes the
// smallest free buffer that fits, leaving the long one for the next long
// span, which would otherwise take fresh memory.
func TestSpanBuffersSmallestThatFits(t *testing.T) {
	const long, short = 1 << 20, 200 << 10
	p := newSpanBuffers(cache.NewBudget(8 * long))
	longBuf, shortBuf := p.get(long), p.get(short)
	longBuf.release()
	shortBuf.release()
	if got := p.get(short); got != shortBuf {
		t.Errorf("get(%d) took a buffer of %d bytes; want the free one of %d", short, len(got.data), len(shortBuf.data))
	}
	if got := p.get(long); got != longBuf {
		t.Errorf("get(%d) made a new buffer; want the free one of %d bytes", long, len(longBuf.data))
	}
}
