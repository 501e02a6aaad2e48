package fs

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
)

// eegLike returns n bytes of float32 noise, which deflate barely
// compresses, like the EEG windows the view is for.
func eegLike(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, 0, n+4)
	for len(b) < n {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(float32(rng.NormFloat64())))
	}
	return b[:n]
}

func zipOf(t *testing.T, method uint16, members map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := zip.NewWriter(&buf)
	for _, name := range []string{"windows.npy", "labels.npy"} {
		f, err := w.CreateHeader(&zip.FileHeader{Name: name, Method: method})
		if err != nil {
			t.Fatal(err)
		}
		f.Write(members[name])
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// memberFixture is a tree over one archive in a memstore.Store, with the view on.
type memberFixture struct {
	tree    *tree
	dir     *memberDirNode
	members map[string][]byte
	store   *memstore.Faulty
}

// coldCache gives the tree a new, empty block cache over the same store:
// indexes built so far stay in the view, but every block must be fetched
// again, through whatever the store does now.
func (f *memberFixture) coldCache(t *testing.T) {
	t.Helper()
	blocks, err := cache.New(f.store, memberCacheOptions)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(blocks.Close)
	f.tree.Blocks = blocks
}

var memberCacheOptions = cache.Options{CacheSize: 64 << 20, BlockSize: 256 << 10, PartSize: 1 << 20, MaxReadAhead: 4 << 20, MaxParallel: 4}

func newMemberFixture(t *testing.T, method uint16, arch func([]byte) []byte) *memberFixture {
	t.Helper()
	return newMemberFixtureOf(t, method, map[string][]byte{"windows.npy": eegLike(5<<20+12345, 1), "labels.npy": eegLike(100_000, 2)}, arch)
}

// newMemberFixtureOf is newMemberFixture with the members given.
func newMemberFixtureOf(t *testing.T, method uint16, members map[string][]byte, arch func([]byte) []byte) *memberFixture {
	t.Helper()
	data := zipOf(t, method, members)
	if arch != nil {
		data = arch(data)
	}
	mem := memstore.New()
	mem.Put("p/a.npz", data)
	info, _ := mem.Info("p/a.npz")
	store := &memstore.Faulty{Store: mem}
	blocks, err := cache.New(store, memberCacheOptions)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(blocks.Close)
	view, err := NewNPZView(64<<10, 32<<20, 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(view.Close)
	tr := &tree{Config: Config{Lister: store, Blocks: blocks, Prefix: "p/", MetadataTTL: time.Hour, Logger: slog.New(slog.DiscardHandler), NPZ: view}}
	archive := dirEntry{name: "a.npz", key: "p/a.npz", size: info.Size, etag: info.ETag}
	return &memberFixture{tree: tr, dir: &memberDirNode{tree: tr, parent: tr.newDirNode("p/"), archive: archive}, members: members, store: store}
}

// member returns the fixture archive's member name.
func (f *memberFixture) member(t *testing.T, name string) npz.Member {
	t.Helper()
	dir, err := f.dir.directory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range dir.Members {
		if m.Name == name {
			return m
		}
	}
	t.Fatalf("no member %q", name)
	return npz.Member{}
}

func (f *memberFixture) open(t *testing.T, name string) (*memberHandle, syscall.Errno) {
	t.Helper()
	fh, _, errno := (&memberNode{tree: f.tree, dir: f.dir, member: f.member(t, name)}).Open(context.Background(), syscall.O_RDONLY)
	if errno != 0 {
		return nil, errno
	}
	return fh.(*memberHandle), 0
}

// index returns the index of the member h reads, building it if needed.
func (f *memberFixture) index(t *testing.T, h *memberHandle) *npz.Index {
	t.Helper()
	x, err := h.reader.indexFor(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func readMember(h *memberHandle, n int, off int64) ([]byte, syscall.Errno) {
	res, errno := h.Read(context.Background(), make([]byte, n), off)
	if errno != 0 {
		return nil, errno
	}
	b, _ := res.Bytes(nil)
	return b, 0
}

func TestMemberReads(t *testing.T) {
	for _, tt := range []struct {
		name   string
		method uint16
	}{{"stored", zip.Store}, {"deflated", zip.Deflate}} {
		t.Run(tt.name, func(t *testing.T) {
			f := newMemberFixture(t, tt.method, nil)
			for name, want := range f.members {
				h, errno := f.open(t, name)
				if errno != 0 {
					t.Fatalf("open %s: %v", name, errno)
				}
				var attr fuse.Attr
				(&memberNode{tree: f.tree, dir: f.dir, member: h.node.member}).attr(&attr)
				if attr.Size != uint64(len(want)) {
					t.Errorf("%s: size %d, want %d", name, attr.Size, len(want))
				}
				rng := rand.New(rand.NewPCG(3, uint64(len(want))))
				reads := []struct{ off, n int64 }{{0, 128}, {0, 1 << 20}, {int64(len(want)) - 5, 4096}, {int64(len(want)), 10}}
				for range 60 {
					reads = append(reads, struct{ off, n int64 }{rng.Int64N(int64(len(want))), 1 + rng.Int64N(1<<20)})
				}
				// Many reads at once, as the kernel sends them: spans
				// decoded once must serve all of them right.
				var wg sync.WaitGroup
				for _, r := range reads {
					wg.Add(1)
					go func() {
						defer wg.Done()
						got, errno := readMember(h, int(r.n), r.off)
						end := min(r.off+r.n, int64(len(want)))
						if errno != 0 || !bytes.Equal(got, want[min(r.off, end):end]) {
							t.Errorf("%s: read %d at %d: %v, %d bytes, wrong content", name, r.n, r.off, errno, len(got))
						}
					}()
				}
				wg.Wait()
				h.Release(context.Background())
			}
		})
	}
}

// npyOf returns a .npy file of rows rows of rowBytes float32 noise each.
func npyOf(rows, rowBytes int) []byte {
	header := fmt.Sprintf("{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", rows, rowBytes/4)
	for (10+len(header)+1)%64 != 0 {
		header += " "
	}
	header += "\n"
	b := append([]byte("\x93NUMPY\x01\x00"), byte(len(header)), byte(len(header)>>8))
	b = append(b, header...)
	return append(b, eegLike(rows*rowBytes, 7)...)
}

// A loader's first read falls in one row of an array; the span holding
// the end of that row (plus the kernel's overshoot) is inflated only that
// far. Reads past that point in the same span must still get the right
// bytes, from the whole span inflated again.
func TestMemberRowEndSpan(t *testing.T) {
	const rowBytes = 300 << 10
	want := npyOf(12, rowBytes)
	layout, err := npz.ParseNPYHeader(want)
	if err != nil {
		t.Fatal(err)
	}
	var rowStart, rowEnd int64 // of the row chosen below
	first := func(t *testing.T, f *memberFixture, h *memberHandle) {
		// The header, as numpy reads it first; then pick a row whose
		// end, with the overshoot, falls well inside a span.
		if _, errno := readMember(h, 128, 0); errno != 0 {
			t.Fatalf("read the header: %v", errno)
		}
		x := f.index(t, h)
		for row := int64(1); row < 10; row++ { // row 0 is in the head region
			rowStart = layout.DataOffset + row*rowBytes
			rowEnd = rowStart + rowBytes + f.tree.NPZ.kernelOvershoot()
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
			f := newMemberFixtureOf(t, zip.Deflate, map[string][]byte{"windows.npy": want, "labels.npy": eegLike(1000, 2)}, nil)
			h, errno := f.open(t, "windows.npy")
			if errno != 0 {
				t.Fatalf("open: %v", errno)
			}
			defer h.Release(context.Background())
			check := func(off, n int64) {
				t.Helper()
				got, errno := readMember(h, int(n), off)
				if errno != 0 || !bytes.Equal(got, want[off:off+n]) {
					t.Fatalf("read %d at %d: %v, %d bytes, wrong content", n, off, errno, len(got))
				}
			}
			first(t, f, h)
			check(rowStart, 4096)
			if h.reader.rowEnd != rowEnd {
				t.Fatalf("row end %d, want %d: the first read did not find its row", h.reader.rowEnd, rowEnd)
			}
			a, b := f.index(t, h).Span(rowEnd - 1)
			check(a, rowEnd-a)
			for _, r := range tt.reads(a, b) {
				check(r[0], r[1])
			}
		})
	}
}

// A read of a compressed member's head (numpy's header read) inflates
// from the start of the stream and builds no index; the first read past
// it indexes the member (checking its CRC-32) once, and later opens find
// the index.
func TestMemberIndexIsBuiltOnce(t *testing.T) {
	f := newMemberFixture(t, zip.Deflate, nil)
	want := f.members["windows.npy"]
	for i := range 3 {
		h, _ := f.open(t, "windows.npy")
		if got, errno := readMember(h, 64<<10, 0); errno != 0 || !bytes.Equal(got, want[:64<<10]) {
			t.Fatalf("open %d: header read: %v", i, errno)
		}
		if s := f.tree.NPZ.Stats(); i == 0 && s.IndexBuilds != 0 {
			t.Fatalf("the header read built an index: %+v", s)
		}
		off := int64(len(want) - 300_000)
		if got, errno := readMember(h, 200_000, off); errno != 0 || !bytes.Equal(got, want[off:off+200_000]) {
			t.Fatalf("open %d: read at %d: %v", i, off, errno)
		}
		h.Release(context.Background())
	}
	if s := f.tree.NPZ.Stats(); s.IndexBuilds != 1 || s.IndexHits != 2 || s.IndexBytes == 0 {
		t.Errorf("stats %+v: want one build, then a hit per open", s)
	}
}

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
			f := newMemberFixture(t, zip.Deflate, tt.arch)
			_, err := f.dir.directory(context.Background())
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
			h, _ := f.open(t, "windows.npy")
			defer h.Release(context.Background())
			// Before the damage (past the head, so the member is
			// indexed), the head, after the damage; the later answers
			// come from the broken-member memo. No byte past the head
			// of a member that fails its CRC-32 is ever returned, and
			// none of the head once it is known to.
			for _, off := range []int64{100 << 10, 0, 4<<20 + 1} {
				if _, errno := readMember(h, 64<<10, off); errno != syscall.EIO {
					t.Errorf("read at %d of a corrupt member: errno %v, want EIO", off, errno)
				}
			}
			if s := f.tree.NPZ.Stats(); s.IndexBuilds != 1 || s.IndexBuildErrors != 1 {
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
	f := newMemberFixture(t, zip.Deflate, nil)
	want := f.members["windows.npy"]
	h, _ := f.open(t, "windows.npy")
	x := f.index(t, h)
	h.Release(context.Background())
	// A span boundary well past the index's head, and the read across it.
	_, boundary := x.Span(int64(len(x.Head())) + 256<<10)
	next, nextStop := x.Span(boundary)
	off := boundary - 8<<10
	n := int(8<<10 + (nextStop-next)/8)
	changed := 0
	for i := range 20 {
		f.coldCache(t)
		f.store.Delay.Store(int64(storeDelay))
		h, _ := f.open(t, "windows.npy")
		dest := bytes.Repeat([]byte{0xAA}, n)
		ctx, cancel := context.WithCancel(context.Background())
		stop := time.AfterFunc(20*time.Millisecond, cancel)
		res, errno := h.Read(ctx, dest, off)
		stop.Stop()
		cancel()
		returned := bytes.Clone(dest)
		// Long enough for every GET and inflation the read started.
		time.Sleep(3 * storeDelay)
		if !bytes.Equal(dest, returned) {
			changed++
		}
		if errno == 0 {
			got, _ := res.Bytes(nil)
			if !bytes.Equal(got, want[off:off+int64(n)]) {
				t.Errorf("read %d: wrong bytes", i)
			}
		} else if errno != syscall.EINTR {
			t.Errorf("read %d: errno %v, want EINTR or success", i, errno)
		}
		h.Release(context.Background())
	}
	if changed > 0 {
		t.Errorf("the buffer changed after Read returned in %d of 20 reads", changed)
	}
}

// A read whose spans all fail must answer, however many spans it covers.
// With an access point before every row, spans are as short as half the
// checkpoint span, and a read covers more of them than len/span: the
// per-read error channel, sized for spans of a whole checkpoint span, was
// full before every goroutine had sent its error, and the read hung.
func TestFailingMemberReadAnswers(t *testing.T) {
	const rowBytes = 32 << 10
	want := npyOf(64, rowBytes)
	f := newMemberFixtureOf(t, zip.Deflate, map[string][]byte{"windows.npy": want, "labels.npy": eegLike(1000, 2)}, nil)
	h, _ := f.open(t, "windows.npy")
	x := f.index(t, h)
	h.Release(context.Background())
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
	h, _ = f.open(t, "windows.npy")
	defer h.Release(context.Background())
	answered := make(chan syscall.Errno, 1)
	go func() {
		_, errno := readMember(h, n, off)
		answered <- errno
	}()
	select {
	case errno := <-answered:
		if errno != syscall.EIO {
			t.Errorf("read with every GET failing: errno %v, want EIO", errno)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("read of %d spans with every GET failing: no reply after 10 s", spans)
	}
}

// No lock is held across the GET of an archive's zip directory: while one
// lookup in NAME.npz.d waits for it, another whose request is interrupted
// returns EINTR at once instead of queueing behind the first.
func TestMemberDirLookupInterruptedWhileDirectoryLoads(t *testing.T) {
	f := newMemberFixture(t, zip.Deflate, nil)
	gate := make(chan struct{})
	f.store.Gate.Store(&gate)
	first := make(chan syscall.Errno, 1)
	go func() {
		_, errno := f.dir.Lookup(context.Background(), "missing.npy", &fuse.EntryOut{})
		first <- errno
	}()
	for f.store.Gets.Load() == 0 { // the first lookup's GET is under way
		time.Sleep(time.Millisecond)
	}
	interrupted, cancel := context.WithCancel(context.Background())
	cancel()
	second := make(chan syscall.Errno, 1)
	go func() {
		_, errno := f.dir.Lookup(interrupted, "also-missing.npy", &fuse.EntryOut{})
		second <- errno
	}()
	select {
	case errno := <-second:
		if errno != syscall.EINTR {
			t.Errorf("interrupted lookup while the directory loads: errno %v, want EINTR", errno)
		}
	case <-time.After(5 * time.Second):
		t.Error("interrupted lookup still waiting after 5 s behind the one loading the directory")
		defer func() { <-second }()
	}
	close(gate)
	if errno := <-first; errno != syscall.ENOENT {
		t.Errorf("lookup of a missing member: errno %v, want ENOENT", errno)
	}
	// The interrupted lookup did not spoil the load the first one waited
	// for: one GET of the tail served it, and serves the next lookup.
	if _, errno := f.dir.Lookup(context.Background(), "missing.npy", &fuse.EntryOut{}); errno != syscall.ENOENT {
		t.Errorf("lookup after the load: errno %v, want ENOENT", errno)
	}
	if gets := f.store.Gets.Load(); gets != 1 {
		t.Errorf("%d GETs for the zip directory, want 1", gets)
	}
}

// Unmount closes the view while index builds are running. The builds
// must stop with it rather than read on (starting fetches in a cache
// being closed, setting into a closed index cache), and the reads waiting
// for them must answer.
func TestNPZViewCloseStopsIndexBuilds(t *testing.T) {
	f := newMemberFixture(t, zip.Deflate, nil)
	h, _ := f.open(t, "windows.npy") // reads the zip directory first
	defer h.Release(context.Background())
	gate := make(chan struct{})
	defer close(gate)
	f.store.Gate.Store(&gate)
	before := f.store.Gets.Load()
	answered := make(chan syscall.Errno, 1)
	go func() {
		_, errno := readMember(h, 128, 1<<20) // builds the index
		answered <- errno
	}()
	for f.store.Gets.Load() == before { // the build's first GET is under way
		time.Sleep(time.Millisecond)
	}
	f.tree.NPZ.Close()
	select {
	case errno := <-answered:
		if errno == 0 {
			t.Error("read answered from a build the view's Close stopped")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("view closed: the read waiting for an index build still has no answer after 10 s (the build goes on)")
	}
}

// TestRememberedDirectoriesBoundedByBytes: the zip directories the view
// remembers take at most maxDirBytes however large each is; a directory
// too large to be worth it is not remembered; small ones are. (They were
// bounded by count: 16,384 directories of up to 16 MiB each.)
func TestRememberedDirectoriesBoundedByBytes(t *testing.T) {
	v, err := NewNPZView(1<<20, MinNPZIndexBytes, 64<<20)
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
		v.rememberDirectory(cache.Object{Key: fmt.Sprintf("big%d.npz", i), ETag: "e", Size: 1}, dir(5000, 100))
		if n := held(); n > maxDirBytes {
			t.Fatalf("after %d directories of 5,000 members the view holds %d bytes of them, over %d", i+1, n, maxDirBytes)
		}
	}
	huge := cache.Object{Key: "huge.npz", ETag: "e", Size: 1}
	v.rememberDirectory(huge, dir(50000, 200))
	if v.knownDirectory(huge) != nil {
		t.Error("a directory of 50,000 members (11 MB) was remembered")
	}
	small := cache.Object{Key: "small.npz", ETag: "e", Size: 1}
	v.rememberDirectory(small, dir(2, 10))
	if v.knownDirectory(small) == nil {
		t.Error("a directory of 2 members was not remembered")
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

// hugeFixture is a member fixture whose windows.npy is size zeros in one
// deflate block (zerosInOneBlock).
func hugeFixture(t *testing.T, size int) *memberFixture {
	t.Helper()
	zeros := make([]byte, size)
	raw := zerosInOneBlock(size)
	var buf bytes.Buffer
	w := zip.NewWriter(&buf)
	for name, data := range map[string][]byte{"windows.npy": zeros, "labels.npy": nil} {
		hdr := &zip.FileHeader{Name: name, Method: zip.Deflate, CRC32: crc32.ChecksumIEEE(data), UncompressedSize64: uint64(len(data))}
		body := raw
		if data == nil {
			body = zerosInOneBlock(1)
			hdr.CRC32, hdr.UncompressedSize64 = crc32.ChecksumIEEE([]byte{0}), 1
		}
		hdr.CompressedSize64 = uint64(len(body))
		f, err := w.CreateRaw(hdr)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(body)
	}
	w.Close()
	return newMemberFixtureOf(t, zip.Store, map[string][]byte{"windows.npy": zeros, "labels.npy": {0}}, func([]byte) []byte { return buf.Bytes() })
}

// TestMemberReadInterruptedInAHugeBlock: a read deep into one huge
// deflate block (a span far larger than any kept) inflates from the
// block's start: seconds for a crafted member of gigabytes. Interrupted,
// it answers EINTR without waiting for that work, which goes on in the
// background for a read that asks again. (The read ignored the interrupt
// and answered once the inflation was done.) The 32 MB of zeros here
// inflate in a few milliseconds on a fast core, so the block's bytes are
// made to arrive late instead: the background work then surely outlasts
// the interrupt, however fast the inflater is.
func TestMemberReadInterruptedInAHugeBlock(t *testing.T) {
	const size = 1 + 258*(32<<20/258)
	const storeDelay = 300 * time.Millisecond
	f := hugeFixture(t, size)
	h, _ := f.open(t, "windows.npy")
	x := f.index(t, h)
	h.Release(context.Background())
	if start, stop := x.Span(size - 1<<20); stop-start < size/2 {
		t.Fatalf("fixture: the span at the end is [%d, %d): not one huge block", start, stop)
	}
	f.coldCache(t)
	f.store.delay.Store(int64(storeDelay))
	h, _ = f.open(t, "windows.npy")
	defer h.Release(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(time.Millisecond, cancel)
	start := time.Now()
	_, errno := h.Read(ctx, make([]byte, 128<<10), size-1<<20)
	took := time.Since(start)
	t.Logf("the interrupted read answered %v in %v", errno, took)
	if errno != syscall.EINTR || took >= storeDelay {
		t.Errorf("an interrupted read answered %v after %v; want EINTR before the block arrives (%v)", errno, took, storeDelay)
	}
	got, errno := readMember(h, 128<<10, size-1<<20)
	if errno != 0 || !bytes.Equal(got, make([]byte, 128<<10)) {
		t.Errorf("the read asked again: %v, or wrong bytes", errno)
	}
}
