package npzview

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/bgbfs/bgbfs/fs/npz/npztest"
)

func TestMemberReaderReadAt(t *testing.T) {
	want := npztest.NPY(20, 300<<10, 7)
	for _, tt := range []struct {
		name   string
		method uint16
	}{{"stored", npztest.Stored}, {"deflated", npztest.Deflated}} {
		t.Run(tt.name, func(t *testing.T) {
			f := newViewFixtureOf(t, tt.method, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}, nil)
			r := f.reader(t, "windows.npy")
			size := int64(len(want))
			rng := rand.New(rand.NewPCG(1, 2))
			reads := []struct{ off, n int64 }{{0, 128}, {0, 64 << 10}, {100, 4000}, {size - 5, 4096}, {size, 10}, {0, size}}
			for range 40 {
				reads = append(reads, struct{ off, n int64 }{rng.Int64N(size), 1 + rng.Int64N(1<<20)})
			}
			var wg sync.WaitGroup
			for _, rd := range reads {
				wg.Go(func() {
					p := make([]byte, rd.n)
					n, err := r.ReadAt(context.Background(), p, rd.off)
					end := min(rd.off+rd.n, size)
					wantN := max(end-rd.off, 0)
					switch {
					case int64(n) != wantN || !bytes.Equal(p[:n], want[min(rd.off, end):end]):
						t.Errorf("ReadAt(%d at %d) = %d, %v; want %d right bytes", rd.n, rd.off, n, err, wantN)
					case wantN < rd.n && !errors.Is(err, io.EOF):
						t.Errorf("ReadAt(%d at %d) short without io.EOF: %v", rd.n, rd.off, err)
					case wantN == rd.n && err != nil:
						t.Errorf("ReadAt(%d at %d): %v", rd.n, rd.off, err)
					}
				})
			}
			wg.Wait()
		})
	}
}

// A pass that reads only each array's header (the trainer's dataset
// index: np.load(..., mmap_mode="r").shape) must cost a small read of the
// archive, not an index build (a full download and inflate).
func TestMemberReaderHeadWithoutIndex(t *testing.T) {
	want := npztest.NPY(20, 300<<10, 7)
	f := newViewFixtureOf(t, npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}, nil)
	if _, err := f.archive.Members(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := f.store.Fetched.Load()
	r := f.reader(t, "windows.npy")
	p := make([]byte, headRegion)
	if n, err := r.ReadAt(context.Background(), p, 0); n != len(p) || err != nil || !bytes.Equal(p, want[:len(p)]) {
		t.Fatalf("head read = %d, %v", n, err)
	}
	if s := f.view.Stats(); s.IndexBuilds != 0 {
		t.Errorf("the head read built an index: %+v", s)
	}
	if got := f.store.Fetched.Load() - before; got > 1<<20 {
		t.Errorf("the head read fetched %d bytes of a %d-byte member", got, len(want))
	}
	if r.layout == nil || r.layout.RowBytes != 300<<10 {
		t.Errorf("layout after the head read: %+v", r.layout)
	}
	// The first read past the head builds the index, once.
	q := make([]byte, 4096)
	off := int64(10 * 300 << 10)
	if _, err := r.ReadAt(context.Background(), q, off); err != nil || !bytes.Equal(q, want[off:off+4096]) {
		t.Fatalf("read past the head: %v", err)
	}
	if s := f.view.Stats(); s.IndexBuilds != 1 {
		t.Errorf("stats %+v: want one build", s)
	}
}

// Decoded spans held by all open readers stay within the view's budget;
// a reader that finds no room still reads right, and Close gives back
// what it held.
func TestMemberReaderSpanBudget(t *testing.T) {
	want := npztest.NPY(20, 300<<10, 7)
	f := newViewFixtureOf(t, npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}, nil)
	// Room for four spans of 64 KiB: twelve readers want far more.
	view, err := New(f.view.blocks, Config{Span: 64 << 10, IndexBytes: 32 << 20, SpanBytes: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(view.Close)
	f.view = view
	f.archive = view.Archive(f.archive.obj, func(string, string) {})
	budget := view.spanBudget
	var readers []*MemberReader
	var wg sync.WaitGroup
	var mu sync.Mutex
	peak := int64(0)
	for i := range 12 {
		r := f.reader(t, "windows.npy")
		readers = append(readers, r)
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 9))
			for range 10 {
				off := 64<<10 + rng.Int64N(int64(len(want))-(64<<10)-(512<<10))
				p := make([]byte, 512<<10)
				if _, err := r.ReadAt(context.Background(), p, off); err != nil || !bytes.Equal(p, want[off:off+int64(len(p))]) {
					t.Errorf("reader %d: read at %d: %v", i, off, err)
					return
				}
				mu.Lock()
				peak = max(peak, budget.InUse())
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if peak == 0 || peak > budget.Total() {
		t.Errorf("decoded spans peaked at %d bytes, budget %d", peak, budget.Total())
	}
	for _, r := range readers {
		r.Close()
	}
	if n := budget.InUse(); n != 0 {
		t.Errorf("%d bytes of decoded spans still held after every reader closed", n)
	}
}

// numpy reads an array's header through a new open on every np.load.
// Once the member's index is held, the first open's header read inflates
// the head and the view keeps it: later opens' header reads inflate
// nothing, and get the right bytes.
func TestMemberHeadInflatedOnce(t *testing.T) {
	want := npztest.NPY(20, 300<<10, 7)
	f := newViewFixtureOf(t, npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}, nil)
	f.index(t, f.reader(t, "windows.npy"))
	for _, tt := range []struct {
		name        string
		off, n      int64
		wantInflate bool
	}{
		// The kernel's header read of an np.load: 32 KiB at 0.
		{"first open", 0, 32 << 10, true},
		{"second open", 0, 32 << 10, false},
		{"a smaller read", 0, 16 << 10, false},
		{"within the head", 100, 8 << 10, false},
		// Past what was kept: inflated (and kept) again, up to its end.
		{"a larger read", 0, headRegion, true},
		{"the larger read again", 0, headRegion, false},
	} {
		r := f.reader(t, "windows.npy")
		before := f.view.Stats().InflatedBytes
		got, err := readMember(r, int(tt.n), tt.off)
		if err != nil || !bytes.Equal(got, want[tt.off:tt.off+tt.n]) {
			t.Fatalf("%s: header read at %d: %v (right bytes: %v)", tt.name, tt.off, err, bytes.Equal(got, want[tt.off:tt.off+tt.n]))
		}
		inflated := f.view.Stats().InflatedBytes - before
		if (inflated > 0) != tt.wantInflate {
			t.Errorf("%s: header read inflated %d bytes, want inflating: %v", tt.name, inflated, tt.wantInflate)
		}
		// Only what was asked, not the whole head region: most header
		// reads miss when members far outnumber the heads held.
		if inflated > tt.off+tt.n+4<<10 {
			t.Errorf("%s: a %d-byte header read inflated %d bytes", tt.name, tt.n, inflated)
		}
		if tt.off == 0 && (r.layout == nil || r.layout.RowBytes != 300<<10) {
			t.Errorf("%s: layout after the header read: %+v", tt.name, r.layout)
		}
	}
}

// The kernel reads one window as a chain of requests; the first asks the
// block cache to fetch the window's compressed bytes ahead. The others,
// and the same reads again, ask for nothing more: with every block
// cached, each ask was a lookup per block for nothing.
func TestMemberReadsAskAheadOnce(t *testing.T) {
	const rowBytes = 300 << 10
	want := npztest.NPY(20, rowBytes, 7)
	f := newViewFixtureOf(t, npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}, nil)
	x := f.index(t, f.reader(t, "windows.npy"))
	var mu sync.Mutex
	var asked []byteRange
	f.view.onPrefetch = func(off, n int64) {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, byteRange{off, n})
	}
	r := f.reader(t, "windows.npy")
	if _, err := readMember(r, headRegion, 0); err != nil {
		t.Fatal(err)
	}
	// Row 7, in the kernel's 128 KiB reads, from its first page on.
	rowStart := int64(len(want)) - 20*rowBytes + 7*rowBytes
	var reads []int64
	for off := rowStart &^ (128<<10 - 1); off < rowStart+rowBytes; off += 128 << 10 {
		reads = append(reads, off)
	}
	askedBy := func() int64 {
		mu.Lock()
		defer mu.Unlock()
		var n int64
		for i, a := range asked {
			for _, b := range asked[:i] {
				if a.off < b.off+b.n && b.off < a.off+a.n {
					t.Errorf("asked for archive bytes %d+%d again (asked %d+%d before)", a.off, a.n, b.off, b.n)
				}
			}
			n += a.n
		}
		asked = asked[:0]
		return n
	}
	for pass := range 2 {
		for _, off := range reads {
			got, err := readMember(r, 128<<10, off)
			if err != nil || !bytes.Equal(got, want[off:off+int64(len(got))]) {
				t.Fatalf("pass %d: read at %d: %v", pass, off, err)
			}
		}
		n := askedBy()
		if pass == 0 {
			if _, compressed := x.SourceRange(rowStart, rowStart+rowBytes); n < compressed {
				t.Errorf("the window's reads asked for %d bytes ahead, less than its %d compressed bytes", n, compressed)
			}
		} else if n != 0 {
			t.Errorf("reading the window again asked for %d bytes ahead, want 0", n)
		}
	}
}

func TestGather(t *testing.T) {
	slices := [][]byte{[]byte("abc"), []byte("de"), nil, []byte("fghi")}
	for _, tc := range []struct {
		from int64
		n    int
		want string
	}{
		{10, 9, "abcdefghi"},
		{11, 3, "bcd"},
		{13, 2, "de"},
		{12, 4, "cdef"},
		{17, 2, "hi"},
		{15, 1, "f"},
	} {
		got := make([]byte, tc.n)
		gather(got, slices, 10, tc.from)
		if string(got) != tc.want {
			t.Errorf("gather %d bytes at %d: %q, want %q", tc.n, tc.from, got, tc.want)
		}
	}
}
