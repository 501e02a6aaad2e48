package npzview

import (
	"bytes"
	"compress/flate"
	"context"
	"io"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npz/npztest"
	"github.com/bgbfs/bgbfs/s3backend"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
)

// TestForwardReaderAt: reads at increasing offsets are served from one
// stream, skipping what lies between; a read behind the stream fails
// instead of returning other bytes; the end is io.EOF.
func TestForwardReaderAt(t *testing.T) {
	data := []byte("0123456789abcdefghij")
	r := &forwardReaderAt{r: bytes.NewReader(data[5:]), pos: 5} // a stream from offset 5
	for _, tt := range []struct {
		off     int64
		n       int
		want    string
		wantErr string
	}{
		{5, 3, "567", ""},
		{8, 2, "89", ""},
		{12, 3, "cde", ""}, // skips ab
		{10, 1, "", "behind the stream"},
		{18, 5, "ij", "EOF"},
	} {
		p := make([]byte, tt.n)
		n, err := r.ReadAt(p, tt.off)
		if string(p[:n]) != tt.want || (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("ReadAt(%d bytes at %d) = %q, %v; want %q, %q", tt.n, tt.off, p[:n], err, tt.want, tt.wantErr)
		}
		if tt.wantErr == "EOF" && err != io.EOF {
			t.Errorf("short read at the end: %v, want io.EOF", err)
		}
	}
}

// TestArchiveIndexer: "bgbfs index" indexes every deflated member of an
// archive (not a stored one, nor one whose index a mount saved already)
// and marks the archive done, fetching it whole in one GET if the limits
// allow and streaming it otherwise; the dir then holds the archive's
// file and no member index file (the one a mount saved is removed); a
// mount reads the archive's directory and indexes from that one file,
// without a GET of the archive's tail or an index build. A corrupt
// member fails the archive, which stays not done.
func TestArchiveIndexer(t *testing.T) {
	ctx := context.Background()
	windows, labels, notes := npztest.NPY(40, 64<<10, 1), npztest.NPY(40, 4, 2), []byte("stored as is")
	entries := []npztest.Entry{
		{Name: "windows.npy", Method: npztest.Deflated, Data: windows, Level: flate.DefaultCompression},
		{Name: "labels.npy", Method: npztest.Deflated, Data: labels, Level: flate.DefaultCompression},
		{Name: "notes.txt", Method: npztest.Stored, Data: notes},
	}
	good := npztest.Zip(entries, npztest.Options{})
	placement := IndexPlacement{Span: 256 << 10, RowLead: RowLead(128 << 10)}
	for _, tt := range []struct {
		name string
		// archive is the archive's bytes; prepare, if set, readies the
		// dir before "bgbfs index" runs.
		archive func() []byte
		prepare func(t *testing.T, files IndexFiles, a s3backend.Version)
		// built is the members whose index the run builds; fails, that
		// the run fails.
		built []string
		fails bool
	}{
		{name: "fresh dir", archive: func() []byte { return good }, built: []string{"windows.npy", "labels.npy"}},
		{name: "labels indexed by a mount", archive: func() []byte { return good }, built: []string{"windows.npy"},
			prepare: func(t *testing.T, files IndexFiles, a s3backend.Version) {
				f := newViewFixtureOfArchive(t, good, nil)
				f.view.files, f.view.saveFiles = &files, true
				r := f.reader(t, "labels.npy")
				f.index(t, r)
				r.Close()
				f.view.Close() // waits for the save
				if _, err := files.Load(ctx, a, f.member(t, "labels.npy").member); err != nil {
					t.Fatalf("the mount's index of labels.npy: %v", err)
				}
			}},
		{name: "corrupt member", archive: func() []byte {
			b := bytes.Clone(good)
			b[len(b)/3] ^= 0x40 // inside the deflated windows.npy
			return b
		}, fails: true},
	} {
		for _, fetch := range []struct {
			name   string
			limits *IndexLimits
			gets   int64 // of the archive by the index run; -1: memstore's stream reads in pieces
		}{
			{"streamed", nil, -1},
			{"whole", NewIndexLimits(2, 8*int64(len(good))), 1}, // one GET
		} {
			t.Run(tt.name+"/"+fetch.name, func(t *testing.T) {
				testArchiveIndexer(t, tt.archive(), tt.prepare, fetch.limits, fetch.gets, tt.built, tt.fails, windows, placement)
			})
		}
	}
}

// testArchiveIndexer is one case of TestArchiveIndexer.
func testArchiveIndexer(t *testing.T, archiveBytes []byte, prepare func(*testing.T, IndexFiles, s3backend.Version),
	limits *IndexLimits, wantGets int64, wantBuilt []string, fails bool, windows []byte, placement IndexPlacement) {
	ctx := context.Background()
	mem := memstore.New()
	mem.Put("p/a.npz", archiveBytes)
	info, _ := mem.Info("p/a.npz")
	a := s3backend.Version{Key: info.Key, ETag: info.ETag, Size: info.Size, LastModified: info.LastModified}
	dir := &memDir{}
	files := IndexFiles{Dir: dir, Source: "test"}
	if prepare != nil {
		prepare(t, files, a)
	}
	var built, builtBytes atomic.Int64
	source := &memstore.Faulty{Store: mem}
	ix := ArchiveIndexer{Source: source, Files: files, Placement: placement, Limits: limits, Built: func(n int64) {
		built.Add(1)
		builtBytes.Add(n)
	}}
	err := ix.IndexArchive(ctx, a)
	if current, cerr := ix.Current(ctx, a); cerr != nil || current == fails {
		t.Errorf("after the run (err %v): current %v, %v", err, current, cerr)
	}
	if fails {
		if !isDataError(err) {
			t.Errorf("indexing a corrupt archive: %v, want a data error", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if other := (ArchiveIndexer{Files: files, Placement: IndexPlacement{Span: 1 << 20, RowLead: placement.RowLead}}); func() bool { c, _ := other.Current(ctx, a); return c }() {
		t.Error("an archive indexed with a 256 KiB span is current for a run with a 1 MiB span")
	}
	if built.Load() != int64(len(wantBuilt)) || builtBytes.Load() == 0 {
		t.Errorf("built %d indexes (%d compressed bytes), want %q", built.Load(), builtBytes.Load(), wantBuilt)
	}
	if n := source.Gets.Load(); wantGets >= 0 && n != wantGets {
		t.Errorf("the run made %d GETs of the archive, want %d", n, wantGets)
	}
	if names := dir.names(); len(names) != 1 || !strings.HasSuffix(names[0], archiveDoneSuffix) {
		t.Errorf("the dir holds %q, want the archive's file alone (one copy of each index)", names)
	}

	// A mount with the dir.
	store := &memstore.Faulty{Store: mem}
	blocks, err := cache.New(store, viewCacheOptions)
	if err != nil {
		t.Fatal(err)
	}
	defer blocks.Close()
	view, err := New(blocks, Config{Span: placement.Span, IndexBytes: 32 << 20, SpanBytes: 16 << 20, Files: &files})
	if err != nil {
		t.Fatal(err)
	}
	defer view.Close()
	archive := view.Archive(a, func(string, string) {})
	members, err := archive.Members(ctx)
	if err != nil || len(members) != 3 {
		t.Fatalf("members: %v, %v", members, err)
	}
	if n := store.Gets.Load(); n != 0 {
		t.Errorf("%d GETs of the archive to read its directory, want none (the done file has it)", n)
	}
	r := archive.Open(members[0])
	defer r.Close()
	// numpy's header read at open, which the kernel turns into a read of
	// the head: the archive file holds it for each member the run built.
	head := make([]byte, SavedHeadBytes)
	if _, err := r.ReadAt(ctx, head, 0); err != nil || !bytes.Equal(head, windows[:SavedHeadBytes]) {
		t.Fatalf("read of the head: %v, or wrong bytes", err)
	}
	if n := store.Gets.Load(); n != 0 {
		t.Errorf("%d GETs of the archive to read the head of windows.npy, want none (the archive file has it)", n)
	}
	off := int64(len(windows) - 100_000)
	p := make([]byte, 4096)
	if _, err := r.ReadAt(ctx, p, off); err != nil || !bytes.Equal(p, windows[off:off+4096]) {
		t.Fatalf("read at %d: %v, or wrong bytes", off, err)
	}
	if s := view.Stats(); s.IndexBuilds != 0 || s.IndexLoads != 2 {
		t.Errorf("stats %+v: want both indexes loaded, none built", s)
	}
}
