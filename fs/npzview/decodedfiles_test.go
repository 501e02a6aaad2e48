package npzview

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/fs/npz/npztest"
	"github.com/bgbfs/bgbfs/s3backend"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// decodedFixture is an archive in a memstore.Faulty and a local cache
// dir that views over it keep decoded members in; each view is a new
// daemon's: its own block cache, nothing in memory.
type decodedFixture struct {
	store *memstore.Faulty
	mem   *memstore.Store
	root  string
	dir   *cache.Dir
	stop  func() // the latest view's
	span  int64  // the views' checkpoint span
}

func newDecodedFixture(t *testing.T, data []byte) *decodedFixture {
	t.Helper()
	mem := memstore.New()
	mem.Put("p/a.npz", data)
	root := t.TempDir()
	dir, err := cache.OpenDir(root, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dir.Close)
	return &decodedFixture{store: &memstore.Faulty{Store: mem}, mem: mem, root: root, dir: dir, span: 64 << 10}
}

// view returns a new view of the archive as it is now in the store, and
// the archive. The view before it stops first, as a daemon's would
// before the next starts: its fetches ahead and writes end.
func (d *decodedFixture) view(t *testing.T) (*View, *Archive) {
	t.Helper()
	if d.stop != nil {
		d.stop()
	}
	view, a, stop := d.newView(t)
	d.stop = stop
	return view, a
}

// newView returns a new view of the archive as it is now in the store,
// the archive, and what stops the view (also run when the test ends):
// another daemon's, beside the fixture's latest.
func (d *decodedFixture) newView(t *testing.T) (*View, *Archive, func()) {
	t.Helper()
	blocks, err := cache.New(d.store, viewCacheOptions)
	if err != nil {
		t.Fatal(err)
	}
	view, err := New(blocks, Config{Span: d.span, IndexBytes: 32 << 20, SpanBytes: 16 << 20, Decoded: &DecodedFiles{Dir: d.dir, Source: "e/b"}})
	if err != nil {
		t.Fatal(err)
	}
	stop := sync.OnceFunc(func() {
		blocks.Close()
		view.Close()
	})
	t.Cleanup(stop)
	info, _ := d.mem.Info("p/a.npz")
	obj := s3backend.Version{Key: info.Key, ETag: info.ETag, Size: info.Size, LastModified: info.LastModified}
	return view, view.Archive(obj, func(string, string) {}), stop
}

// open opens member name of a through view, closed when the test ends.
func openMember(t *testing.T, a *Archive, name string) *MemberReader {
	t.Helper()
	members, err := a.Members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if m.Name == name {
			r := a.Open(m)
			t.Cleanup(r.Close)
			return r
		}
	}
	t.Fatalf("no member %q", name)
	return nil
}

// readAll reads each of reads from r and fails the test on wrong bytes.
func readAll(t *testing.T, r *MemberReader, reads [][2]int64, want []byte) {
	t.Helper()
	for _, rd := range reads {
		got, err := readMember(r, int(rd[1]), rd[0])
		end := min(rd[0]+rd[1], int64(len(want)))
		if err != nil || !bytes.Equal(got, want[rd[0]:end]) {
			t.Fatalf("read of %d at %d: %v, or wrong bytes", rd[1], rd[0], err)
		}
	}
}

// kernelLike are reads of a member of size bytes as the kernel makes
// them for a loader: numpy's header read, then whole pages of two
// windows, in runs of 128 KiB that do not start on 64 KiB, and the end.
func kernelLike(size int64) [][2]int64 {
	reads := [][2]int64{{0, headRegion}}
	for _, start := range []int64{300 << 10, 1<<20 + 12<<10} {
		for off := start; off < start+600<<10; off += 128 << 10 {
			reads = append(reads, [2]int64{off, 128 << 10})
		}
	}
	last := (size - 1) / 4096 * 4096
	return append(reads, [2]int64{last - 128<<10, size - (last - 128<<10)})
}

// A restart reads what an earlier daemon read from the dir: no GET, no
// inflating, the right bytes, for reads of the same pages and for reads
// within them that are not whole pages; a read that reaches past what
// was kept inflates as before.
func TestDecodedMembersServeLaterReads(t *testing.T) {
	want := npztest.NPY(12, 150<<10, 3)
	d := newDecodedFixture(t, archiveOf(npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}))
	size := int64(len(want))
	reads := kernelLike(size)

	view, a := d.view(t)
	readAll(t, openMember(t, a, "windows.npy"), reads, want)
	view.decoded.wait()
	if s := view.Stats().Decoded; s.BytesWritten == 0 || s.Hits != 0 {
		t.Fatalf("first daemon: %+v; want bytes written, no hits", s)
	}

	for _, tt := range []struct {
		name  string
		reads [][2]int64
		hits  bool
	}{
		{"the same reads", reads, true},
		{"inside them, not whole pages", [][2]int64{{100, 5000}, {300<<10 + 77, 200 << 10}, {size - 10, 10}}, true},
		{"past what was kept", [][2]int64{{950 << 10, 64 << 10}}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			view, a := d.view(t)
			r := openMember(t, a, "windows.npy")
			gets := d.store.Gets.Load()
			readAll(t, r, tt.reads, want)
			s := view.Stats()
			switch newGets := d.store.Gets.Load() - gets; {
			case tt.hits && (newGets != 0 || s.InflatedBytes != 0 || s.IndexBuilds != 0 || s.Decoded.Hits != int64(len(tt.reads))):
				t.Errorf("%d GETs, stats %+v; want every read from the dir, nothing fetched or inflated", newGets, s)
			case !tt.hits && (newGets == 0 || s.Decoded.Hits != 0):
				t.Errorf("%d GETs, stats %+v; want the read fetched and inflated", newGets, s)
			}
		})
	}
}

// The head that an open returns before the member's index is at hand is
// not checked, and not written then; once the index is built (by a read
// of any open), the head is inflated again through it and kept.
func TestDecodedHeadKeptOnceChecked(t *testing.T) {
	want := npztest.NPY(12, 150<<10, 3)
	d := newDecodedFixture(t, archiveOf(npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}))
	head := [][2]int64{{0, headRegion}}

	view, a := d.view(t)
	r := openMember(t, a, "windows.npy")
	readAll(t, r, head, want)
	view.decoded.wait()
	if s := view.Stats(); s.Decoded.BytesWritten != 0 || s.IndexBuilds != 0 {
		t.Fatalf("after a head read without an index: %+v; want nothing written", s)
	}
	readAll(t, openMember(t, a, "windows.npy"), [][2]int64{{500 << 10, 128 << 10}}, want)
	// The head is kept in the background (keepHead), after the index
	// build: a restart before it is written would find it missing.
	id := view.decoded.id(r.obj, r.member)
	deadline := time.Now().Add(10 * time.Second)
	for !headHeld(d, id, int64(len(want))) {
		if time.Now().After(deadline) {
			t.Fatal("the head was never kept")
		}
		time.Sleep(10 * time.Millisecond)
		view.decoded.wait()
	}

	view, a = d.view(t)
	r = openMember(t, a, "windows.npy")
	gets := d.store.Gets.Load()
	readAll(t, r, head, want)
	if n, s := d.store.Gets.Load()-gets, view.Stats(); n != 0 || s.Decoded.Hits != 1 {
		t.Errorf("head after a restart: %d GETs, %+v; want it from the dir", n, s)
	}
}

// headHeld reports whether the dir holds the head of decoded file id.
func headHeld(d *decodedFixture, id cache.ObjectID, size int64) bool {
	f, err := d.dir.OpenObjectPair(id.Name(decodedArea), id, size, decodedUnit)
	if err != nil {
		return false
	}
	defer f.Close()
	held, err := f.ReadAt(make([]byte, min(headRegion, size)), 0)
	return held && err == nil
}

// A damaged unit is never returned: the read inflates its bytes again
// (fetching them), logs and counts the damage, and writes them again.
func TestDecodedDamagedUnitRefetched(t *testing.T) {
	want := npztest.NPY(12, 150<<10, 3)
	d := newDecodedFixture(t, archiveOf(npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}))
	reads := kernelLike(int64(len(want)))
	view, a := d.view(t)
	r := openMember(t, a, "windows.npy")
	readAll(t, r, reads, want)
	view.decoded.wait()

	// One byte of the first window, on disk.
	id := view.decoded.id(r.obj, r.member)
	f, err := os.OpenFile(filepath.Join(d.root, id.Name(decodedArea)), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	at := int64(300<<10 + 5000)
	if _, err := f.WriteAt([]byte{want[at] ^ 0x40}, at); err != nil {
		t.Fatal(err)
	}
	f.Close()

	view, a = d.view(t)
	r = openMember(t, a, "windows.npy")
	gets := d.store.Gets.Load()
	readAll(t, r, reads, want)
	view.decoded.wait()
	if n, s := d.store.Gets.Load()-gets, view.Stats().Decoded; n == 0 || s.Damaged != 1 || s.BytesWritten == 0 {
		t.Errorf("over a damaged unit: %d GETs, %+v; want it fetched, counted once and written again", n, s)
	}

	view, a = d.view(t)
	r = openMember(t, a, "windows.npy")
	gets = d.store.Gets.Load()
	readAll(t, r, reads, want)
	if n, s := d.store.Gets.Load()-gets, view.Stats().Decoded; n != 0 || s.Damaged != 0 {
		t.Errorf("after it was written again: %d GETs, %+v; want every read from the dir", n, s)
	}
}

// A new version of the archive (another ETag; members of the same
// sizes) never reads the old version's decoded file.
func TestDecodedNewVersionNotServedOld(t *testing.T) {
	old := npztest.NPY(12, 150<<10, 3)
	labels := npztest.Floats(1000, 2)
	d := newDecodedFixture(t, archiveOf(npztest.Deflated, map[string][]byte{"windows.npy": old, "labels.npy": labels}))
	reads := kernelLike(int64(len(old)))
	view, a := d.view(t)
	readAll(t, openMember(t, a, "windows.npy"), reads, old)
	view.decoded.wait()

	renewed := npztest.NPY(12, 150<<10, 4)
	d.mem.Put("p/a.npz", archiveOf(npztest.Deflated, map[string][]byte{"windows.npy": renewed, "labels.npy": labels}))
	view, a = d.view(t)
	readAll(t, openMember(t, a, "windows.npy"), reads, renewed)
	if s := view.Stats().Decoded; s.Hits != 0 {
		t.Errorf("the new version: %+v; want no read from the old version's file", s)
	}
}

// The kernel reads on past a row's end as far as its read-ahead takes it,
// and not always as far each time: epoch 2, read from the dir, runs
// ahead further than epoch 1, which waited on fetches. What the first
// daemon keeps reaches as far as the kernel may read past the row (the
// stretch fetched with the window anyway), so that such a read of the
// next daemon is still answered from the dir, with no GET.
func TestDecodedKeepsPastRowEnd(t *testing.T) {
	want := npztest.NPY(4, 600<<10, 5)
	d := newDecodedFixture(t, archiveOf(npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}))
	d.span = 1 << 20
	l, err := npz.ParseNPYHeader(want)
	if err != nil {
		t.Fatal(err)
	}
	// Row 1, as the kernel reads it for a loader that maps it: around
	// the page the loader touches first, then on in 128 KiB, stopping
	// half its read-ahead past the row.
	rowStart, rowEnd := l.DataOffset+l.RowBytes, l.DataOffset+2*l.RowBytes
	var epoch1 [][2]int64
	for off := rowStart/pageSize*pageSize - 64<<10; off < rowEnd+64<<10; off += 128 << 10 {
		epoch1 = append(epoch1, [2]int64{off, 128 << 10})
	}
	// Epoch 2 runs on 204 KiB past the row (the bench saw 160 and 200).
	past := [2]int64{rowEnd/pageSize*pageSize + 76<<10, 128 << 10}
	epoch2 := append([][2]int64{{0, headRegion}}, append(slices.Clone(epoch1), past)...)

	view, a := d.view(t)
	readAll(t, openMember(t, a, "windows.npy"), append([][2]int64{{0, headRegion}}, epoch1...), want)
	view.decoded.wait()

	view, a = d.view(t)
	r := openMember(t, a, "windows.npy")
	gets := d.store.Gets.Load()
	readAll(t, r, epoch2, want)
	if n, s := d.store.Gets.Load()-gets, view.Stats(); n != 0 || s.Decoded.Hits != int64(len(epoch2)) {
		t.Errorf("epoch 2, reading %d KiB past the row: %d GETs, %d of %d reads from the dir; want all, no GET",
			(past[0]+past[1]-rowEnd)>>10, n, s.Decoded.Hits, len(epoch2))
	}
}

// Reads of one open at once, some answered from the dir and some not:
// one that misses must not close the decoded file under another that is
// reading it (a failed read pauses the dir's reads, and every read after
// it would fetch and inflate).
func TestDecodedConcurrentHitsAndMisses(t *testing.T) {
	want := npztest.NPY(12, 150<<10, 3)
	d := newDecodedFixture(t, archiveOf(npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}))
	held := [2]int64{300 << 10, 128 << 10}
	view, a := d.view(t)
	readAll(t, openMember(t, a, "windows.npy"), [][2]int64{{0, headRegion}, held}, want)
	view.decoded.wait()

	view, a = d.view(t)
	r := openMember(t, a, "windows.npy")
	var g sync.WaitGroup
	done := make(chan struct{})
	for range 3 {
		g.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				if got, err := readMember(r, int(held[1]), held[0]); err != nil || !bytes.Equal(got, want[held[0]:held[0]+held[1]]) {
					t.Errorf("read of the held pages: %v, or wrong bytes", err)
					return
				}
			}
		})
	}
	// Pages not held, each the first read of its span.
	for off := int64(500 << 10); off < int64(len(want)); off += 64 << 10 {
		readAll(t, r, [][2]int64{{off, pageSize}}, want)
	}
	close(done)
	g.Wait()

	hits := view.Stats().Decoded.Hits
	readAll(t, openMember(t, a, "windows.npy"), [][2]int64{held}, want)
	if n := view.Stats().Decoded.Hits - hits; n != 1 {
		t.Errorf("held pages, read by a new open after the misses: %d reads from the dir; want 1", n)
	}
}

// A head the archive file kept (bgbfs index checked it against the
// index) is written to the dir as it is, once the index is at hand: no
// fetch, no inflating.
func TestDecodedHeadFromArchiveFile(t *testing.T) {
	want := npztest.NPY(12, 150<<10, 3)
	data := archiveOf(npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)})
	// An index built elsewhere (as bgbfs index would).
	_, a := newDecodedFixture(t, data).view(t)
	built := openMember(t, a, "windows.npy")
	readAll(t, built, [][2]int64{{500 << 10, 128 << 10}}, want)
	x, err := built.indexFor(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	d := newDecodedFixture(t, data)
	view, a := d.view(t)
	r := openMember(t, a, "windows.npy")
	view.holdHead(indexKey(r.obj, r.member), want[:headRegion])
	gets := d.store.Gets.Load()
	view.keepHead(r.obj, r.member, x)
	d.stop() // waits for keepHead and the writes it started
	if n := d.store.Gets.Load() - gets; n != 0 {
		t.Errorf("writing a head the archive file kept: %d GETs, want 0", n)
	}

	view, a = d.view(t)
	r = openMember(t, a, "windows.npy")
	gets = d.store.Gets.Load()
	readAll(t, r, [][2]int64{{0, headRegion}}, want)
	if n, s := d.store.Gets.Load()-gets, view.Stats(); n != 0 || s.Decoded.Hits != 1 {
		t.Errorf("head after a restart: %d GETs, %+v; want it from the dir", n, s)
	}
}

// readWhole reads all of member name of a in runs of 128 KiB, and waits
// until its decoded file is complete (the head is written once the
// index is at hand, in the background).
func (d *decodedFixture) readWhole(t *testing.T, view *View, a *Archive, name string, want []byte) Member {
	t.Helper()
	r := openMember(t, a, name)
	var reads [][2]int64
	for off := int64(0); off < int64(len(want)); off += 128 << 10 {
		reads = append(reads, [2]int64{off, 128 << 10})
	}
	readAll(t, r, reads, want)
	id := view.decoded.id(r.obj, r.member)
	deadline := time.Now().Add(10 * time.Second)
	for {
		view.decoded.wait()
		f, err := d.dir.OpenObjectPair(id.Name(decodedArea), id, int64(len(want)), decodedUnit)
		if err == nil {
			missing, err := f.MissingUnits()
			f.Close()
			if err == nil && missing == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the decoded file never became complete")
		}
		time.Sleep(10 * time.Millisecond)
	}
	members, _ := a.Members(context.Background())
	return members[slices.IndexFunc(members, func(m Member) bool { return m.Name == name })]
}

// pollDirect calls DirectFile until it returns a file or the view's
// checks have ended for good (passed or failed, counted), for up to
// a few seconds.
func pollDirect(view *View, a *Archive, m Member) *os.File {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if f := a.DirectFile(context.Background(), m); f != nil {
			return f
		}
		if view.Stats().Decoded.VerifyFailed > 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// DirectFile hands out a member's decoded data file only once it is
// complete and checked whole against the member's CRC-32, on a mount
// that turned it on; a file that fails the check is removed, logged as
// damaged, and read the old way; one replaced on disk after its check
// is not handed out.
func TestDecodedDirectFile(t *testing.T) {
	want := npztest.NPY(12, 150<<10, 3)
	for _, tt := range []struct {
		name string
		// whole reads the member whole before; off leaves direct files
		// off; harm changes the dir before the restart.
		whole, off bool
		// noRoom leaves no open file to hold a checked member with.
		noRoom bool
		harm   func(t *testing.T, data string)
		// direct is whether DirectFile returns the file; verified and
		// failed the checks counted.
		direct           bool
		verified, failed int64
	}{
		{name: "complete", whole: true, direct: true, verified: 1},
		{name: "incomplete", direct: false},
		{name: "direct files off", whole: true, off: true, direct: false},
		{name: "no open file left to hold", whole: true, noRoom: true, direct: false},
		{name: "a byte flipped", whole: true, harm: func(t *testing.T, data string) {
			f, err := os.OpenFile(data, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte{want[200<<10] ^ 1}, 200<<10)
			f.Close()
		}, direct: false, failed: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newDecodedFixture(t, archiveOf(npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}))
			view, a := d.view(t)
			var m Member
			if tt.whole {
				m = d.readWhole(t, view, a, "windows.npy", want)
			} else {
				readAll(t, openMember(t, a, "windows.npy"), kernelLike(int64(len(want))), want)
				view.decoded.wait()
			}
			id := view.decoded.id(a.obj, m.member)
			if tt.harm != nil {
				tt.harm(t, filepath.Join(d.root, id.Name(decodedArea)))
			}
			view, a = d.view(t)
			view.SetDirectFiles(!tt.off)
			if tt.noRoom {
				view.decoded.heldMax = 0
			}
			members, err := a.Members(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			m = members[slices.IndexFunc(members, func(m Member) bool { return m.Name == "windows.npy" })]
			f := pollDirect(view, a, m)
			if (f != nil) != tt.direct {
				t.Fatalf("DirectFile = %v; want a file: %v", f, tt.direct)
			}
			if f != nil {
				got, err := io.ReadAll(io.NewSectionReader(f, 0, int64(len(want)))) // descriptors of one file share an offset
				f.Close()
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("the direct file is not the member: %d bytes, %v", len(got), err)
				}
			}
			s := view.Stats().Decoded
			if s.Verified != tt.verified || s.VerifyFailed != tt.failed || s.Damaged != tt.failed {
				t.Errorf("stats %+v; want %d verified, %d failed and damaged", s, tt.verified, tt.failed)
			}
			if tt.failed > 0 {
				if _, err := os.Stat(filepath.Join(d.root, id.Name(decodedArea))); err == nil {
					t.Error("the file that failed its check is still there")
				}
				// Read the old way: right bytes, fetched.
				gets := d.store.Gets.Load()
				readAll(t, openMember(t, a, "windows.npy"), [][2]int64{{200 << 10, 4096}}, want)
				if d.store.Gets.Load() == gets {
					t.Error("after the failed check a read was not fetched")
				}
			}
			if tt.direct {
				// Made anew on disk, then damaged: what is handed out is
				// the file checked (held open), or nothing, never the
				// new one.
				data := filepath.Join(d.root, id.Name(decodedArea))
				os.Remove(data + cache.RecordsSuffix)
				os.Remove(data)
				d.readWhole(t, view, a, "windows.npy", want)
				f, err := os.OpenFile(data, os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.WriteAt([]byte{want[100] ^ 1}, 100)
				f.Close()
				if f := a.DirectFile(context.Background(), m); f != nil {
					got, err := io.ReadAll(io.NewSectionReader(f, 0, int64(len(want)))) // descriptors of one file share an offset
					f.Close()
					if err != nil || !bytes.Equal(got, want) {
						t.Errorf("after the pair was made anew and damaged, the file handed out is not the member (%d bytes, %v)", len(got), err)
					}
				}
			}
		})
	}
}

// memberNamed returns member name of a.
func memberNamed(t *testing.T, a *Archive, name string) Member {
	t.Helper()
	members, err := a.Members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(members, func(m Member) bool { return m.Name == name })
	if i < 0 {
		t.Fatalf("no member %q", name)
	}
	return members[i]
}

// newDirectFixture is a decoded fixture whose view hands out direct
// files, its member windows.npy, and that member's content.
func newDirectFixture(t *testing.T) (*decodedFixture, *View, *Archive, Member, []byte) {
	t.Helper()
	want := npztest.NPY(12, 150<<10, 3)
	d := newDecodedFixture(t, archiveOf(npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}))
	view, a := d.view(t)
	view.SetDirectFiles(true)
	return d, view, a, memberNamed(t, a, "windows.npy"), want
}

// The write that completes a member's decoded file starts its check,
// with no open after it (in a shuffled epoch the read of a member's last
// window is often its last open): the file is checked and stamped, so
// that a restart trusts it.
func TestDecodedCheckedOnceWrittenWhole(t *testing.T) {
	d, view, a, m, want := newDirectFixture(t)
	if f := a.DirectFile(context.Background(), m); f != nil { // the first open: counts
		t.Fatal("DirectFile of a member never read returned a file")
	}
	var reads [][2]int64
	for off := int64(0); off < int64(len(want)); off += 128 << 10 {
		reads = append(reads, [2]int64{off, 128 << 10})
	}
	readAll(t, openMember(t, a, "windows.npy"), reads, want)
	deadline := time.Now().Add(10 * time.Second)
	for view.Stats().Decoded.Verified < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the member written whole was never checked: %+v", view.Stats().Decoded)
		}
		time.Sleep(10 * time.Millisecond)
	}
	view, a = d.view(t) // a restart
	view.SetDirectFiles(true)
	m = memberNamed(t, a, "windows.npy")
	f := pollDirect(view, a, m)
	if f == nil {
		t.Fatal("the member checked by the last mount is not handed out")
	}
	f.Close()
	if s := view.Stats().Decoded; s.StampsTrusted != 1 {
		t.Errorf("after a restart: %+v; want the last mount's check trusted", s)
	}
}

// bytesRead is what the kernel counts this process read through
// read-like calls (rchar).
func bytesRead(t *testing.T) int64 {
	const name = "rchar"
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skip("no /proc/self/io:", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+": "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/self/io", name)
	return 0
}

// In the epoch that writes a member, opens of it read its records once
// (the kernel's count of the bytes the process read), start no check and
// wait for none, even with every check slot taken: the mount counts the
// units it writes. Once that count says complete, an open gets the file.
func TestDecodedDirectFileIncompleteCostsNothing(t *testing.T) {
	d, view, a, m, want := newDirectFixture(t)
	if f := a.DirectFile(context.Background(), m); f != nil {
		t.Fatal("DirectFile of a member never read returned a file")
	}
	readAll(t, openMember(t, a, "windows.npy"), kernelLike(int64(len(want))), want)
	view.decoded.wait()

	before := bytesRead(t)
	for i := range 3 {
		if i > 0 {
			time.Sleep(1100 * time.Millisecond)
		}
		if f := a.DirectFile(context.Background(), m); f != nil {
			t.Fatal("DirectFile of an incomplete member returned a file")
		}
		view.decoded.verifiers.Wait()
	}
	records := (m.member.UncompressedSize + decodedUnit - 1) / decodedUnit * 8
	if n := bytesRead(t) - before; n >= records {
		t.Errorf("3 opens of an incomplete member read %d bytes; its records are %d", n, records)
	}

	// Every check slot taken: an open that waited for a check of its
	// own would wait checkWait.
	release := make(chan struct{})
	for range decodedVerifiers {
		view.decoded.verifiers.Go(func() error { <-release; return nil })
	}
	time.Sleep(1100 * time.Millisecond)
	start := time.Now()
	f := a.DirectFile(context.Background(), m)
	took := time.Since(start)
	close(release)
	if f != nil {
		t.Fatal("DirectFile of an incomplete member returned a file")
	}
	if took >= checkWait/2 {
		t.Errorf("an open of an incomplete member waited %v", took)
	}

	d.readWhole(t, view, a, "windows.npy", want)
	f = pollDirect(view, a, m)
	if f == nil {
		t.Fatal("the member this mount wrote whole is not handed out")
	}
	f.Close()
	if s := view.Stats().Decoded; s.Verified != 1 {
		t.Errorf("stats %+v; want 1 verified", s)
	}
}

// The count errs towards complete, and the check corrects it: a unit
// whose record was cleared after this mount wrote it (as another
// process finding it damaged does), before the write that completes the
// count, makes the check find the file incomplete, no file is handed
// out, and once a read writes the unit again the file is checked and
// handed out.
func TestDecodedDirectFileCountCorrected(t *testing.T) {
	d, view, a, m, want := newDirectFixture(t)
	a.DirectFile(context.Background(), m)
	var reads [][2]int64
	for off := int64(0); off < int64(len(want)); off += 128 << 10 {
		reads = append(reads, [2]int64{off, 128 << 10})
	}
	last := len(reads) - 1
	r := openMember(t, a, "windows.npy")
	readAll(t, r, reads[:last], want)
	view.decoded.wait()
	id := view.decoded.id(a.obj, m.member)
	records := filepath.Join(d.root, id.Name(decodedArea)) + cache.RecordsSuffix
	rf, err := os.OpenFile(records, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	const unit = 100
	if _, err := rf.WriteAt(make([]byte, 8), 4096+unit*8); err != nil {
		t.Fatal(err)
	}
	rf.Close()
	readAll(t, r, reads[last:], want) // completes the count: the check starts
	view.decoded.wait()
	if f := pollDirect(view, a, m); f != nil {
		f.Close()
		t.Fatal("a file missing a unit was handed out")
	}
	if s := view.Stats().Decoded; s.Verified != 0 || s.VerifyFailed != 0 {
		t.Fatalf("stats %+v; want nothing verified or failed", s)
	}
	readAll(t, openMember(t, a, "windows.npy"), [][2]int64{{unit * decodedUnit, decodedUnit}}, want)
	view.decoded.wait()
	f := pollDirect(view, a, m)
	if f == nil {
		t.Fatal("the file completed again is not handed out")
	}
	f.Close()
}

// Units another process writes are learned once this mount has written
// nothing to the member for recountIdle: a mount that only read a member
// others completed gets the file.
func TestDecodedDirectFileLearnsOthersWrites(t *testing.T) {
	d, view, a, m, want := newDirectFixture(t)
	if f := a.DirectFile(context.Background(), m); f != nil {
		t.Fatal("DirectFile of a member never read returned a file")
	}
	other, oa, _ := d.newView(t)
	d.readWhole(t, other, oa, "windows.npy", want)
	if f := a.DirectFile(context.Background(), m); f != nil {
		f.Close()
		t.Fatal("within recountIdle, the other process's units were counted")
	}
	view.decoded.mu.Lock()
	view.decoded.recountIdle = 0
	view.decoded.mu.Unlock()
	f := pollDirect(view, a, m)
	if f == nil {
		t.Fatal("the member another process completed is not handed out after recountIdle")
	}
	f.Close()
}

// An epoch that reads a member whole keeps every unit, those across
// the boundaries of its spans too (which no span's inflating keeps), so
// that the next epoch makes no GET.
func TestDecodedEpochKeepsEveryUnit(t *testing.T) {
	want := npztest.NPY(12, 150<<10, 3)
	d := newDecodedFixture(t, archiveOf(npztest.Deflated, map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}))
	view, a := d.view(t)
	d.readWhole(t, view, a, "windows.npy", want)
	_, a = d.view(t)
	r := openMember(t, a, "windows.npy")
	gets := d.store.Gets.Load()
	var reads [][2]int64
	for off := int64(0); off < int64(len(want)); off += 128 << 10 {
		reads = append(reads, [2]int64{off, 128 << 10})
	}
	readAll(t, r, reads, want)
	if n := d.store.Gets.Load() - gets; n != 0 {
		t.Errorf("the next epoch made %d GETs", n)
	}
}

// countingBacking is the kernel's side of TryBacking: it counts the
// files asked for and those registered, and refuses them all if refuse
// is set.
type countingBacking struct {
	asked, registered, unregistered atomic.Int64
	refuse                          bool
}

func (b *countingBacking) RegisterBackingFd(*fuse.BackingMap) (int32, syscall.Errno) {
	b.asked.Add(1)
	if b.refuse {
		return 0, syscall.EINVAL
	}
	return int32(b.registered.Add(1)), 0
}

func (b *countingBacking) UnregisterBackingFd(int32) syscall.Errno {
	b.unregistered.Add(1)
	return 0
}

// A checked file the kernel took as a backing file once is not tried
// again on later opens (each try is two ioctls, and numpy opens a member
// about four times a sample); a file it refuses is tried, and refused,
// every time.
func TestTryBackingOncePerFile(t *testing.T) {
	for _, tt := range []struct {
		name      string
		refuse    bool
		wantAsked int64
	}{
		{"taken", false, 1},
		{"refused", true, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d, view, a, m, want := newDirectFixture(t)
			d.readWhole(t, view, a, "windows.npy", want)
			if f := pollDirect(view, a, m); f == nil {
				t.Fatal("the member read whole is not handed out")
			} else {
				f.Close()
			}
			kernel := &countingBacking{refuse: tt.refuse}
			view.SetBackingFiles(kernel)
			for i := range 4 {
				f := a.DirectFile(context.Background(), m)
				if f == nil {
					t.Fatalf("open %d: no checked file", i)
				}
				if got := a.TryBacking(f, m); got == tt.refuse {
					t.Errorf("open %d: TryBacking = %v", i, got)
				}
				f.Close()
			}
			if got := kernel.asked.Load(); got != tt.wantAsked {
				t.Errorf("the kernel was asked %d times, want %d", got, tt.wantAsked)
			}
			if kernel.unregistered.Load() != kernel.registered.Load() {
				t.Errorf("registered %d, unregistered %d", kernel.registered.Load(), kernel.unregistered.Load())
			}
		})
	}
}
