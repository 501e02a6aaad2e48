package npzview

import (
	"bytes"
	"compress/flate"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/fs/npz/npztest"
	"github.com/bgbfs/bgbfs/s3backend"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
)

// viewFixture is a view over one archive, p/a.npz, in a memstore.Faulty.
type viewFixture struct {
	view    *View
	archive *Archive
	members map[string][]byte
	store   *memstore.Faulty
}

var viewCacheOptions = cache.Options{CacheSize: 64 << 20, BlockSize: 256 << 10, PartSize: 1 << 20, MaxReadAhead: 4 << 20, MaxParallel: 4}

// coldCache gives the view a new, empty block cache over the same store:
// indexes built so far stay in the view, but every block must be fetched
// again, through whatever the store does now.
func (f *viewFixture) coldCache(t *testing.T) {
	t.Helper()
	blocks, err := cache.New(f.store, viewCacheOptions)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(blocks.Close)
	f.view.blocks = blocks
}

// archiveOf writes members, windows.npy then labels.npy, into an archive
// by method.
func archiveOf(method uint16, members map[string][]byte) []byte {
	var entries []npztest.Entry
	for _, name := range []string{"windows.npy", "labels.npy"} {
		entries = append(entries, npztest.Entry{Name: name, Method: method, Data: members[name], Level: flate.DefaultCompression})
	}
	return npztest.Zip(entries, npztest.Options{})
}

func newViewFixture(t *testing.T, method uint16, arch func([]byte) []byte) *viewFixture {
	t.Helper()
	return newViewFixtureOf(t, method, map[string][]byte{"windows.npy": npztest.Floats(5<<20+12345, 1), "labels.npy": npztest.Floats(100_000, 2)}, arch)
}

// newViewFixtureOf is newViewFixture with the members given.
func newViewFixtureOf(t *testing.T, method uint16, members map[string][]byte, arch func([]byte) []byte) *viewFixture {
	t.Helper()
	data := archiveOf(method, members)
	if arch != nil {
		data = arch(data)
	}
	return newViewFixtureOfArchive(t, data, members)
}

// newViewFixtureOfArchive is a view fixture of the archive data, whose
// members are members.
func newViewFixtureOfArchive(t *testing.T, data []byte, members map[string][]byte) *viewFixture {
	t.Helper()
	return newViewFixtureWith(t, data, members, Config{Span: 64 << 10, IndexBytes: 32 << 20, SpanBytes: 16 << 20})
}

// newViewFixtureWith is newViewFixtureOfArchive with the view's Config.
func newViewFixtureWith(t *testing.T, data []byte, members map[string][]byte, c Config) *viewFixture {
	t.Helper()
	mem := memstore.New()
	mem.Put("p/a.npz", data)
	info, _ := mem.Info("p/a.npz")
	store := &memstore.Faulty{Store: mem}
	blocks, err := cache.New(store, viewCacheOptions)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(blocks.Close)
	view, err := New(blocks, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(view.Close)
	obj := s3backend.Version{Key: info.Key, ETag: info.ETag, Size: info.Size, LastModified: info.LastModified}
	return &viewFixture{view: view, archive: view.Archive(obj, func(string, string) {}), members: members, store: store}
}

// member returns the fixture archive's member name.
func (f *viewFixture) member(t *testing.T, name string) Member {
	t.Helper()
	members, err := f.archive.Members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if m.Name == name {
			return m
		}
	}
	t.Fatalf("no member %q", name)
	return Member{}
}

// reader opens a MemberReader on member name, closed when the test ends.
func (f *viewFixture) reader(t *testing.T, name string) *MemberReader {
	t.Helper()
	r := f.archive.Open(f.member(t, name))
	t.Cleanup(r.Close)
	return r
}

// index returns the index of the member r reads, building it if needed.
func (f *viewFixture) index(t *testing.T, r *MemberReader) *npz.Index {
	t.Helper()
	x, err := r.indexFor(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// readMember reads n bytes at off.
func readMember(r *MemberReader, n int, off int64) ([]byte, error) {
	return readMemberCtx(context.Background(), r, n, off)
}

// readMemberCtx reads n bytes at off, or fewer at the end.
func readMemberCtx(ctx context.Context, r *MemberReader, n int, off int64) ([]byte, error) {
	p := make([]byte, n)
	k, err := r.ReadAt(ctx, p, off)
	if err == io.EOF {
		err = nil
	}
	return p[:k], err
}

// A loader's first read falls in one row of an array; the span holding
// the end of that row (plus the kernel's overshoot) is inflated only that
// far. Reads past that point in the same span must still get the right
// bytes, from the whole span inflated again.
func TestMemberRowEndSpan(t *testing.T) {
	const rowBytes = 300 << 10
	want := npztest.NPY(12, rowBytes, 7)
	layout, err := npz.ParseNPYHeader(want)
	if err != nil {
		t.Fatal(err)
	}
	var rowStart, rowEnd int64 // of the row chosen below
	first := func(t *testing.T, f *viewFixture, r *MemberReader) {
		// The header, as numpy reads it first; then pick a row whose
		// end, with the overshoot, falls well inside a span.
		if _, err := readMember(r, 128, 0); err != nil {
			t.Fatalf("read the header: %v", err)
		}
		x := f.index(t, r)
		for row := int64(1); row < 10; row++ { // row 0 is in the head region
			rowStart = layout.DataOffset + row*rowBytes
			rowEnd = rowStart + rowBytes + f.view.kernelOvershoot()
			if a, b := x.Span(rowEnd - 1); rowEnd-a > (b-a)/4 && rowEnd < b {
				return
			}
		}
		t.Fatal("no row ends inside a span")
	}
	for _, tt := range []struct {
		name string
		// reads, {offset, length}, after a first read at the row's start
		// and one from a, the start of the span [a, b) holding rowEnd,
		// to rowEnd.
		reads func(a, b int64) [][2]int64
	}{
		{"up to the row's end, twice", func(a, b int64) [][2]int64 { return [][2]int64{{rowEnd - 4096, 4096}} }},
		{"past the row's end", func(a, b int64) [][2]int64 { return [][2]int64{{rowEnd, b - rowEnd}} }},
		{"across the row's end", func(a, b int64) [][2]int64 { return [][2]int64{{rowEnd - 100, 200}} }},
		{"the whole span", func(a, b int64) [][2]int64 { return [][2]int64{{a, b - a}} }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newViewFixtureOf(t, npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}, nil)
			r := f.reader(t, "windows.npy")
			check := func(off, n int64) {
				t.Helper()
				got, err := readMember(r, int(n), off)
				if err != nil || !bytes.Equal(got, want[off:off+n]) {
					t.Fatalf("read %d at %d: %v, %d bytes, wrong content", n, off, err, len(got))
				}
			}
			first(t, f, r)
			check(rowStart, 4096)
			if r.rowEnd != rowEnd {
				t.Fatalf("row end %d, want %d: the first read did not find its row", r.rowEnd, rowEnd)
			}
			a, b := f.index(t, r).Span(rowEnd - 1)
			check(a, rowEnd-a)
			for _, rd := range tt.reads(a, b) {
				check(rd[0], rd[1])
			}
		})
	}
}

// A read of a compressed member's head (numpy's header read) inflates
// from the start of the stream and builds no index; the first read past
// it indexes the member (checking its CRC-32) once, and later opens find
// the index.
func TestMemberIndexIsBuiltOnce(t *testing.T) {
	f := newViewFixture(t, npztest.Deflated, nil)
	want := f.members["windows.npy"]
	for i := range 3 {
		r := f.archive.Open(f.member(t, "windows.npy"))
		if got, err := readMember(r, 64<<10, 0); err != nil || !bytes.Equal(got, want[:64<<10]) {
			t.Fatalf("open %d: header read: %v", i, err)
		}
		if s := f.view.Stats(); i == 0 && s.IndexBuilds != 0 {
			t.Fatalf("the header read built an index: %+v", s)
		}
		off := int64(len(want) - 300_000)
		if got, err := readMember(r, 200_000, off); err != nil || !bytes.Equal(got, want[off:off+200_000]) {
			t.Fatalf("open %d: read at %d: %v", i, off, err)
		}
		r.Close()
	}
	if s := f.view.Stats(); s.IndexBuilds != 1 || s.IndexHits != 2 || s.IndexBytes == 0 {
		t.Errorf("stats %+v: want one build, then a hit per open", s)
	}
}

// TestCorruptMembers: a broken archive's directory, or a member whose
// data is damaged, fails with a data error (which the filesystem answers
// with EIO), not with bytes.
func TestCorruptMembers(t *testing.T) {
	flipInWindows := func(b []byte) []byte {
		b = bytes.Clone(b)
		b[len(b)/3] ^= 0x40 // inside the deflated windows.npy
		return b
	}
	for _, tt := range []struct {
		name     string
		arch     func([]byte) []byte
		dirError bool
	}{
		{"flipped byte in compressed data", flipInWindows, false},
		{"truncated", func(b []byte) []byte { return b[:len(b)-5000] }, true},
		{"no end record", func(b []byte) []byte {
			b = bytes.Clone(b)
			copy(b[bytes.LastIndex(b, []byte("PK\x05\x06")):], "XXXX")
			return b
		}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newViewFixture(t, npztest.Deflated, tt.arch)
			_, err := f.archive.Members(context.Background())
			if tt.dirError {
				if err == nil {
					t.Fatal("directory read of a broken archive succeeded")
				}
				if !isDataError(err) {
					t.Errorf("error %v is not a data error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r := f.reader(t, "windows.npy")
			// Before the damage (past the head, so the member is
			// indexed), the head, after the damage; the later answers
			// come from the broken-member memo. No byte past the head
			// of a member that fails its CRC-32 is ever returned, and
			// none of the head once it is known to.
			for _, off := range []int64{100 << 10, 0, 4<<20 + 1} {
				if _, err := readMember(r, 64<<10, off); !isDataError(err) {
					t.Errorf("read at %d of a corrupt member: %v, want a data error", off, err)
				}
			}
			if s := f.view.Stats(); s.IndexBuilds != 1 || s.IndexBuildErrors != 1 {
				t.Errorf("stats %+v: want one failed build", s)
			}
		})
	}
}

// An interrupted member read must leave the caller's buffer alone once it
// has returned: go-fuse reuses the buffer for the next request's reply. A
// read over the tail of one span (inflated in a goroutine) and the head
// of the next (read directly, and failing fast when interrupted) could
// return while the goroutine still had its copy to do.
func TestMemberReadLeavesBufferAfterReturn(t *testing.T) {
	const storeDelay = 100 * time.Millisecond
	f := newViewFixture(t, npztest.Deflated, nil)
	want := f.members["windows.npy"]
	r := f.archive.Open(f.member(t, "windows.npy"))
	x := f.index(t, r)
	r.Close()
	// A span boundary well past the index's head, and the read across it.
	_, boundary := x.Span(int64(len(x.Head())) + 256<<10)
	next, nextStop := x.Span(boundary)
	off := boundary - 8<<10
	n := int(8<<10 + (nextStop-next)/8)
	changed := 0
	for i := range 20 {
		f.coldCache(t)
		f.store.Delay.Store(int64(storeDelay))
		r := f.archive.Open(f.member(t, "windows.npy"))
		dest := bytes.Repeat([]byte{0xAA}, n)
		ctx, cancel := context.WithCancel(context.Background())
		stop := time.AfterFunc(20*time.Millisecond, cancel)
		got, err := r.ReadAt(ctx, dest, off)
		stop.Stop()
		cancel()
		returned := bytes.Clone(dest)
		// Long enough for every GET and inflation the read started.
		time.Sleep(3 * storeDelay)
		if !bytes.Equal(dest, returned) {
			changed++
		}
		if err == nil {
			if !bytes.Equal(dest[:got], want[off:off+int64(n)]) {
				t.Errorf("read %d: wrong bytes", i)
			}
		} else if !errors.Is(err, context.Canceled) {
			t.Errorf("read %d: %v, want context.Canceled or success", i, err)
		}
		r.Close()
	}
	if changed > 0 {
		t.Errorf("the buffer changed after ReadAt returned in %d of 20 reads", changed)
	}
}

// A read whose spans all fail must answer, however many spans it covers.
// With an access point before every row, spans are as short as half the
// checkpoint span, and a read covers more of them than len/span: the
// per-read error channel, sized for spans of a whole checkpoint span, was
// full before every goroutine had sent its error, and the read hung.
func TestFailingMemberReadAnswers(t *testing.T) {
	const rowBytes = 32 << 10
	want := npztest.NPY(64, rowBytes, 7)
	f := newViewFixtureOf(t, npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}, nil)
	r := f.archive.Open(f.member(t, "windows.npy"))
	x := f.index(t, r)
	r.Close()
	const n = 256 << 10
	off := int64(len(x.Head())) + 100<<10
	spans := 0
	for pos := off; pos < off+n; {
		_, stop := x.Span(pos)
		spans++
		pos = stop
	}
	t.Logf("a read of %d bytes at %d covers %d spans", n, off, spans)

	f.coldCache(t)
	f.store.Failing.Store(true)
	r = f.reader(t, "windows.npy")
	answered := make(chan error, 1)
	go func() {
		_, err := readMember(r, n, off)
		answered <- err
	}()
	select {
	case err := <-answered:
		if !errors.Is(err, memstore.ErrInjected) {
			t.Errorf("read with every GET failing: %v, want the GETs' failure", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("read of %d spans with every GET failing: no reply after 10 s", spans)
	}
}

// Unmount closes the view while index builds are running. The builds
// must stop with it rather than read on (starting fetches in a cache
// being closed, setting into a closed index cache), and the reads waiting
// for them must answer.
func TestNPZViewCloseStopsIndexBuilds(t *testing.T) {
	f := newViewFixture(t, npztest.Deflated, nil)
	r := f.reader(t, "windows.npy") // reads the zip directory first
	gate := make(chan struct{})
	defer close(gate)
	f.store.Gate.Store(&gate)
	before := f.store.Gets.Load()
	answered := make(chan error, 1)
	go func() {
		_, err := readMember(r, 128, 1<<20) // builds the index
		answered <- err
	}()
	for f.store.Gets.Load() == before { // the build's first GET is under way
		time.Sleep(time.Millisecond)
	}
	f.view.Close()
	select {
	case err := <-answered:
		if err == nil {
			t.Error("read answered from a build the view's Close stopped")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("view closed: the read waiting for an index build still has no answer after 10 s (the build goes on)")
	}
}

// TestHeldDirectoriesBoundedByBytes: the zip directories the view
// holds take at most maxDirBytes however large each is; a directory
// too large to be worth it is not held; small ones are. (They were
// bounded by count: 16,384 directories of up to 16 MiB each.)
func TestHeldDirectoriesBoundedByBytes(t *testing.T) {
	v, err := New(nil, Config{Span: 1 << 20, IndexBytes: MinIndexBytes, SpanBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	dir := func(members, nameLen int) *npz.Directory {
		d := &npz.Directory{}
		for i := range members {
			d.Members = append(d.Members, npz.Member{Name: fmt.Sprintf("%0*d.npy", nameLen, i)})
		}
		return d
	}
	held := func() (n int64) {
		v.mu.Lock()
		defer v.mu.Unlock()
		for k, d := range v.dirs {
			n += directoryBytes(len(k), d)
		}
		return n
	}
	for i := range 200 {
		v.holdDirectory(s3backend.Version{Key: fmt.Sprintf("big%d.npz", i), ETag: "e", Size: 1}, dir(5000, 100))
		if n := held(); n > maxDirBytes {
			t.Fatalf("after %d directories of 5,000 members the view holds %d bytes of them, over %d", i+1, n, maxDirBytes)
		}
	}
	huge := s3backend.Version{Key: "huge.npz", ETag: "e", Size: 1}
	v.holdDirectory(huge, dir(50000, 200))
	if v.heldDirectory(huge) != nil {
		t.Error("a directory of 50,000 members (11 MB) was held")
	}
	small := s3backend.Version{Key: "small.npz", ETag: "e", Size: 1}
	v.holdDirectory(small, dir(2, 10))
	if v.heldDirectory(small) == nil {
		t.Error("a directory of 2 members was not held")
	}
}

// zerosInOneBlock is raw deflate data of n zeros (n-1 a multiple of 258)
// in one fixed-Huffman block: a literal 0, then matches of 258 bytes at
// distance 1. Deflate does not bound a block's length, and an index
// places access points between blocks only: the whole member is one span.
func zerosInOneBlock(n int) []byte {
	var out []byte
	var acc uint64
	var bits uint
	put := func(v uint64, n uint) { // LSB first
		acc |= v << bits
		for bits += n; bits >= 8; bits -= 8 {
			out = append(out, byte(acc))
			acc >>= 8
		}
	}
	code := func(c uint64, n uint) { // a Huffman code, MSB first
		var r uint64
		for i := range n {
			r |= (c >> i & 1) << (n - 1 - i)
		}
		put(r, n)
	}
	put(1, 1)     // BFINAL
	put(1, 2)     // fixed Huffman codes
	code(0x30, 8) // literal 0
	for range (n - 1) / 258 {
		code(0xC5, 8) // length 258 (code 285)
		code(0, 5)    // distance 1
	}
	code(0, 7) // end of block
	put(0, 7)  // flush
	return out
}

// hugeFixture is a view fixture whose windows.npy is size zeros in one
// deflate block (zerosInOneBlock).
func hugeFixture(t *testing.T, size int) *viewFixture {
	t.Helper()
	zeros := make([]byte, size)
	members := map[string][]byte{"windows.npy": zeros, "labels.npy": {0}}
	data := npztest.Zip([]npztest.Entry{
		{Name: "windows.npy", Method: npztest.Deflated, Data: zeros, Raw: zerosInOneBlock(size)},
		{Name: "labels.npy", Method: npztest.Deflated, Data: members["labels.npy"], Raw: zerosInOneBlock(1)},
	}, npztest.Options{})
	return newViewFixtureOfArchive(t, data, members)
}

// TestMemberReadInterruptedInAHugeBlock: a read deep into one huge
// deflate block (a span far larger than any held) inflates from the
// block's start: seconds for a crafted member of gigabytes. Interrupted,
// it returns without waiting for that work, which goes on in the
// background for a read that asks again. (The read ignored the interrupt
// and answered once the inflation was done.) The 32 MB of zeros here
// inflate in a few milliseconds on a fast core, so the block's bytes are
// made to arrive late instead: the background work then surely outlasts
// the interrupt, however fast the inflater is.
func TestMemberReadInterruptedInAHugeBlock(t *testing.T) {
	const size = 1 + 258*(32<<20/258)
	const storeDelay = 300 * time.Millisecond
	f := hugeFixture(t, size)
	r := f.archive.Open(f.member(t, "windows.npy"))
	x := f.index(t, r)
	r.Close()
	if start, stop := x.Span(size - 1<<20); stop-start < size/2 {
		t.Fatalf("fixture: the span at the end is [%d, %d): not one huge block", start, stop)
	}
	f.coldCache(t)
	f.store.Delay.Store(int64(storeDelay))
	r = f.reader(t, "windows.npy")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(time.Millisecond, cancel)
	start := time.Now()
	_, err := readMemberCtx(ctx, r, 128<<10, size-1<<20)
	took := time.Since(start)
	t.Logf("the interrupted read answered %v in %v", err, took)
	if !errors.Is(err, context.Canceled) || took >= storeDelay {
		t.Errorf("an interrupted read answered %v after %v; want context.Canceled before the block arrives (%v)", err, took, storeDelay)
	}
	got, err := readMember(r, 128<<10, size-1<<20)
	if err != nil || !bytes.Equal(got, make([]byte, 128<<10)) {
		t.Errorf("the read asked again: %v, or wrong bytes", err)
	}
}
