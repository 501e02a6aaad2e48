package fs

import (
	"bytes"
	"compress/flate"
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npz/npztest"
	"github.com/bgbfs/bgbfs/fs/npzview"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
)

// memberFixture is a tree over one archive, p/a.npz holding windows.npy
// and labels.npy, in a memstore.Faulty, with the member view on.
type memberFixture struct {
	tree    *tree
	dir     *memberDirNode
	members map[string][]byte
	store   *memstore.Faulty
}

func newMemberFixture(t *testing.T, method uint16) *memberFixture {
	t.Helper()
	members := map[string][]byte{"windows.npy": npztest.Floats(5<<20+12345, 1), "labels.npy": npztest.Floats(100_000, 2)}
	var entries []npztest.Entry
	for _, name := range []string{"windows.npy", "labels.npy"} {
		entries = append(entries, npztest.Entry{Name: name, Method: method, Data: members[name], Level: flate.DefaultCompression})
	}
	mem := memstore.New()
	mem.Put("p/a.npz", npztest.Zip(entries, npztest.Options{}))
	info, _ := mem.Info("p/a.npz")
	store := &memstore.Faulty{Store: mem}
	blocks, err := cache.New(store, cache.Options{CacheSize: 64 << 20, BlockSize: 256 << 10, PartSize: 1 << 20, MaxReadAhead: 4 << 20, MaxParallel: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(blocks.Close)
	view, err := npzview.New(blocks, npzview.Config{Span: 64 << 10, IndexBytes: 32 << 20, SpanBytes: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(view.Close)
	tr := &tree{Config: Config{Lister: store, Blocks: blocks, Prefix: "p/", MetadataTTL: time.Hour, Logger: slog.New(slog.DiscardHandler), NPZ: view}}
	archive := dirEntry{name: "a.npz", key: "p/a.npz", size: info.Size, etag: info.ETag}
	return &memberFixture{tree: tr, dir: tr.newMemberDirNode(tr.newDirNode("p/"), archive), members: members, store: store}
}

// member returns the fixture archive's member name.
func (f *memberFixture) member(t *testing.T, name string) npzview.Member {
	t.Helper()
	members, err := f.dir.members.Members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if m.Name == name {
			return m
		}
	}
	t.Fatalf("no member %q", name)
	return npzview.Member{}
}

func (f *memberFixture) open(t *testing.T, name string) (*memberHandle, syscall.Errno) {
	t.Helper()
	fh, _, errno := (&memberNode{tree: f.tree, dir: f.dir, member: f.member(t, name)}).Open(context.Background(), syscall.O_RDONLY)
	if errno != 0 {
		return nil, errno
	}
	return fh.(*memberHandle), 0
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
	}{{"stored", npztest.Stored}, {"deflated", npztest.Deflated}} {
		t.Run(tt.name, func(t *testing.T) {
			f := newMemberFixture(t, tt.method)
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

// No lock is held across the GET of an archive's zip directory: while one
// lookup in NAME.npz.d waits for it, another whose request is interrupted
// returns EINTR at once instead of queueing behind the first.
func TestMemberDirLookupInterruptedWhileDirectoryLoads(t *testing.T) {
	f := newMemberFixture(t, npztest.Deflated)
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

// openKinds never lets the kinds of open mix on one member: a file that
// may be read directly is used only while no page-cached open is live,
// and every open is passthrough while one is (sharing the first one's
// file, whether or not it was given one); the shared file is handed back
// to close after the last passthrough open.
func TestOpenKinds(t *testing.T) {
	newFile := func() *os.File {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	a, b := newFile(), newFile()
	type step struct {
		// open (with file, or nil) or release (of the kind direct);
		// refused makes the kernel refuse file as a backing file.
		release, direct, refused bool
		file                     *os.File
		// want is the file the open reads directly, or the file a
		// release hands back; unused the file an open leaves.
		want, unused *os.File
	}
	for _, tt := range []struct {
		name  string
		steps []step
	}{
		{"no file: page-cached", []step{{file: nil, want: nil}, {release: true, direct: false, want: nil}}},
		{"a file, none live: passthrough", []step{{file: a, want: a}, {release: true, direct: true, want: a}}},
		{"a file while a cached open lives: cached", []step{{file: nil}, {file: a, want: nil, unused: a}, {release: true}, {file: b, want: nil, unused: b}, {release: true}, {release: true}, {file: b, want: b}}},
		{"no file while a passthrough open lives: passthrough, shared", []step{{file: a, want: a}, {file: nil, want: a}, {release: true, direct: true, want: nil}, {release: true, direct: true, want: a}}},
		{"a second file while one is shared: the first", []step{{file: a, want: a}, {file: b, want: a, unused: b}, {release: true, direct: true}, {release: true, direct: true, want: a}, {file: b, want: b}}},
		{"a file the kernel refuses: cached", []step{{file: a, refused: true, want: nil, unused: a}, {file: b, want: nil, unused: b}, {release: true}, {release: true}, {file: b, want: b}}},
		{"refused while a passthrough open lives: not tried, shared", []step{{file: a, want: a}, {file: b, refused: true, want: a, unused: b}, {release: true, direct: true}, {release: true, direct: true, want: a}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var k openKinds
			for i, s := range tt.steps {
				if s.release {
					if last := k.release(s.direct); last != s.want {
						t.Fatalf("step %d: release handed back %v, want %v", i, last, s.want)
					}
					continue
				}
				direct, unused := k.open(s.file, func(*os.File) bool { return !s.refused })
				if direct != s.want || unused != s.unused {
					t.Fatalf("step %d: open(%v) = %v, %v; want %v, %v", i, s.file, direct, unused, s.want, s.unused)
				}
			}
		})
	}
}
