package npzview

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	iofs "io/fs"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/fs/npz/npztest"
	"github.com/bgbfs/bgbfs/s3backend"
)

// memDir is a StateDir in memory.
type memDir struct {
	mu    sync.Mutex
	files map[string][]byte
}

func (d *memDir) Load(_ context.Context, name string) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b, ok := d.files[name]
	if !ok {
		return nil, iofs.ErrNotExist
	}
	return bytes.Clone(b), nil
}

func (d *memDir) Store(_ context.Context, name string, data []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.files == nil {
		d.files = map[string][]byte{}
	}
	d.files[name] = bytes.Clone(data)
	return nil
}

func (d *memDir) Remove(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.files, name)
}

// names are the files in the dir, sorted.
func (d *memDir) names() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Sorted(maps.Keys(d.files))
}

// indexedArchive is a zip with one deflated member of random bytes, its
// directory entry and its index.
func indexedArchive(t *testing.T) ([]byte, npz.Member, *npz.Index) {
	t.Helper()
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(rand.N(16))
	}
	archive := npztest.Zip([]npztest.Entry{{Name: "windows.npy", Method: npztest.Deflated, Data: data, Level: flate.DefaultCompression}}, npztest.Options{})
	dir, err := npz.ReadDirectory(bytes.NewReader(archive), int64(len(archive)))
	if err != nil {
		t.Fatal(err)
	}
	m := dir.Members[0]
	x, err := npz.BuildIndex(bytes.NewReader(archive), m, 1<<20, 0)
	if err != nil {
		t.Fatal(err)
	}
	return archive, m, x
}

// TestIndexFilesTrustOnlyTheirOwn: an index file is used only if it is
// whole, in this format, and of the archive version and member asked for;
// each other case says why.
func TestIndexFilesTrustOnlyTheirOwn(t *testing.T) {
	ctx := context.Background()
	archive, m, x := indexedArchive(t)
	obj := s3backend.Version{Key: "train/a.npz", ETag: `"v1"`, Size: int64(len(archive))}
	name := indexID{"bucket", obj, m.Name}.name(indexFileSuffix)
	// resealed fixes the CRC-32C after an edit, so only the edit is wrong.
	resealed := func(b []byte) []byte {
		b = b[:len(b)-4]
		return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	}
	for _, tt := range []struct {
		name   string
		edit   func(dir *memDir, file []byte) // changes what is stored under name
		obj    s3backend.Version
		member npz.Member
		reason string // "" loads
	}{
		{"good", nil, obj, m, ""},
		{"a byte flipped", func(d *memDir, b []byte) { b[len(b)/2] ^= 1; d.files[name] = b }, obj, m, "checksum mismatch"},
		{"truncated", func(d *memDir, b []byte) { d.files[name] = b[:len(b)-100] }, obj, m, "checksum mismatch"},
		{"cut to the header", func(d *memDir, b []byte) { d.files[name] = b[:10] }, obj, m, "too short"},
		{"another format version", func(d *memDir, b []byte) {
			binary.LittleEndian.PutUint32(b[len(indexFileMagic):], npz.IndexFormat+1)
			d.files[name] = resealed(b)
		}, obj, m, "format version 2"},
		{"not an index", func(d *memDir, b []byte) { copy(b, "NOTINDEX"); d.files[name] = resealed(b) }, obj, m, "bad magic"},
		{"another archive version under this name", func(d *memDir, b []byte) {
			v2 := obj
			v2.ETag = `"v2"`
			body := b[len(indexID{"bucket", obj, m.Name}.encode(nil))-4 : len(b)-4]
			d.files[name] = indexID{"bucket", v2, m.Name}.encode(body)
		}, obj, m, "another archive version"},
		{"the member's CRC differs", nil, obj, func() npz.Member { o := m; o.CRC32 ^= 1; return o }(), "another member"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := &memDir{}
			files := IndexFiles{Dir: dir, Source: "bucket"}
			if err := files.Save(ctx, obj, m, x); err != nil {
				t.Fatal(err)
			}
			if tt.edit != nil {
				tt.edit(dir, bytes.Clone(dir.files[name]))
			}
			y, err := files.Load(ctx, tt.obj, tt.member)
			if tt.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				got, want := make([]byte, 4096), make([]byte, 4096)
				y.ReadAt(bytes.NewReader(archive), got, 2<<20)
				x.ReadAt(bytes.NewReader(archive), want, 2<<20)
				if !bytes.Equal(got, want) {
					t.Error("the loaded index reads other bytes than the built one")
				}
				return
			}
			if !errors.Is(err, ErrIndexFileBad) || !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("load = %v; want ErrIndexFileBad saying %q", err, tt.reason)
			}
		})
	}
	// Another ETag, bucket or member is another file: not found.
	files := IndexFiles{Dir: &memDir{}, Source: "bucket"}
	files.Save(ctx, obj, m, x)
	for _, o := range []s3backend.Version{{Key: obj.Key, ETag: `"v2"`, Size: obj.Size}, {Key: obj.Key, ETag: obj.ETag, Size: obj.Size + 1}, {Key: "train/b.npz", ETag: obj.ETag, Size: obj.Size}} {
		if _, err := files.Load(ctx, o, m); !errors.Is(err, iofs.ErrNotExist) {
			t.Errorf("load for %+v: %v, want ErrNotExist", o, err)
		}
	}
	if _, err := (IndexFiles{Dir: files.Dir, Source: "other"}).Load(ctx, obj, m); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("load for another bucket: %v, want ErrNotExist", err)
	}
}

// TestArchiveDone: an archive is done only for the placement it was
// indexed with, and only its own version.
func TestArchiveDone(t *testing.T) {
	ctx := context.Background()
	files := IndexFiles{Dir: &memDir{}, Source: "bucket"}
	obj := s3backend.Version{Key: "a.npz", ETag: `"v1"`, Size: 100}
	p := IndexPlacement{Span: 1 << 20, RowLead: RowLead(128 << 10)}
	if done, err := files.Done(ctx, obj, p); done || err != nil {
		t.Fatalf("done before MarkDone: %v, %v", done, err)
	}
	if err := files.MarkDone(ctx, obj, p, SavedArchive{Dir: &npz.Directory{}}); err != nil {
		t.Fatal(err)
	}
	v2 := obj
	v2.ETag = `"v2"`
	for _, tt := range []struct {
		name string
		obj  s3backend.Version
		p    IndexPlacement
		want bool
	}{
		{"same", obj, p, true},
		{"another span", obj, IndexPlacement{Span: 2 << 20, RowLead: p.RowLead}, false},
		{"another read-ahead", obj, IndexPlacement{Span: p.Span, RowLead: RowLead(256 << 10)}, false},
		{"another version", v2, p, false},
	} {
		if done, err := files.Done(ctx, tt.obj, tt.p); done != tt.want || err != nil {
			t.Errorf("%s: done = %v, %v; want %v", tt.name, done, err, tt.want)
		}
	}
}

// countingDir counts the loads that reach the dir.
type countingDir struct {
	memDir
	loads int
}

func (d *countingDir) Load(ctx context.Context, name string) ([]byte, error) {
	d.loads++
	return d.memDir.Load(ctx, name)
}

// TestIndexFilesListed: with the dir's names listed, a name
// it lacks is not asked for, and one it holds is read.
func TestIndexFilesListed(t *testing.T) {
	ctx := context.Background()
	dir := &countingDir{}
	obj := s3backend.Version{Key: "a.npz", ETag: `"v1"`, Size: 100}
	p := IndexPlacement{Span: 1 << 20, RowLead: RowLead(128 << 10)}
	files := IndexFiles{Dir: dir, Source: "b", Listed: map[string]bool{}}
	if done, err := files.Done(ctx, obj, p); done || err != nil || dir.loads != 0 {
		t.Fatalf("done %v, %v, %d loads; want not done and no load", done, err, dir.loads)
	}
	if err := files.MarkDone(ctx, obj, p, SavedArchive{Dir: &npz.Directory{}}); err != nil {
		t.Fatal(err)
	}
	for name := range dir.files {
		files.Listed[name] = true
	}
	if done, err := files.Done(ctx, obj, p); !done || err != nil || dir.loads != 1 {
		t.Errorf("done %v, %v, %d loads; want done after one load", done, err, dir.loads)
	}
}

// TestArchiveFile: the archive file saves the zip directory, the
// member indexes and their heads, which read as the originals; a file
// written before heads were kept reads without them; a head that is not
// the start of its member's content makes the file untrusted; an
// archive file of placement only (no directory) is as good as none.
func TestArchiveFile(t *testing.T) {
	ctx := context.Background()
	archive, m, x := indexedArchive(t)
	dir, err := npz.ReadDirectory(bytes.NewReader(archive), int64(len(archive)))
	if err != nil {
		t.Fatal(err)
	}
	obj := s3backend.Version{Key: "a.npz", ETag: `"v1"`, Size: int64(len(archive))}
	files := IndexFiles{Dir: &memDir{}, Source: "b"}
	if _, err := files.LoadArchive(ctx, obj); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("no archive file: %v, want ErrNotExist", err)
	}
	head := make([]byte, SavedHeadBytes)
	if _, err := x.ReadAt(bytes.NewReader(archive), head, 0); err != nil {
		t.Fatal(err)
	}
	p := IndexPlacement{Span: 1 << 20, RowLead: RowLead(128 << 10)}
	if err := files.MarkDone(ctx, obj, p, SavedArchive{Dir: dir, Indexes: map[string]*npz.Index{m.Name: x}, Heads: map[string][]byte{m.Name: head}}); err != nil {
		t.Fatal(err)
	}
	saved, err := files.LoadArchive(ctx, obj)
	if err != nil {
		t.Fatal(err)
	}
	if len(saved.Dir.Members) != 1 || saved.Dir.Members[0].Name != m.Name || saved.Dir.Members[0].CRC32 != m.CRC32 {
		t.Errorf("directory %+v, want %+v", saved.Dir.Members, dir.Members)
	}
	if !bytes.Equal(saved.Heads[m.Name], head) {
		t.Errorf("head of %d bytes read back, want the %d saved", len(saved.Heads[m.Name]), len(head))
	}
	y := saved.Indexes[m.Name]
	if y == nil {
		t.Fatal("no index of the member")
	}
	got, want := make([]byte, 8192), make([]byte, 8192)
	y.ReadAt(bytes.NewReader(archive), got, 1<<20)
	x.ReadAt(bytes.NewReader(archive), want, 1<<20)
	if !bytes.Equal(got, want) {
		t.Error("the saved index reads other bytes")
	}
	if done, _ := files.Done(ctx, obj, p); !done {
		t.Error("not done after MarkDone")
	}
	other := obj
	other.Size++
	if _, err := files.LoadArchive(ctx, other); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("archive of another size: %v, want ErrNotExist", err)
	}
	checkArchiveFileHeads(t, files, obj, p, SavedArchive{Dir: dir, Indexes: map[string]*npz.Index{m.Name: x}}, head)
}

// checkArchiveFileHeads checks the archive file of obj written without
// heads (as before they were kept: nothing after the indexes) and with a
// head that is not its member's.
func checkArchiveFileHeads(t *testing.T, files IndexFiles, obj s3backend.Version, p IndexPlacement, s SavedArchive, head []byte) {
	ctx := context.Background()
	id := indexID{files.Source, obj, ""}
	name := id.name(archiveDoneSuffix)
	if err := files.MarkDone(ctx, obj, p, s); err != nil {
		t.Fatal(err)
	}
	mem := files.Dir.(*memDir)
	body, err := id.decode(mem.files[name])
	if err != nil || body[len(body)-1] != 0 {
		t.Fatalf("archive file without heads: %v, last byte of the body %d, want the head count 0", err, body[len(body)-1])
	}
	mem.files[name] = id.encode(body[:len(body)-1])
	saved, err := files.LoadArchive(ctx, obj)
	if err != nil || len(saved.Heads) != 0 || len(saved.Indexes) != 1 {
		t.Errorf("archive file written before heads were kept: %d indexes, %d heads, %v; want 1, 0, nil", len(saved.Indexes), len(saved.Heads), err)
	}
	for _, m := range s.Dir.Members {
		wrong := bytes.Clone(head)
		wrong[0] ^= 1
		s.Heads = map[string][]byte{m.Name: wrong}
		if err := files.MarkDone(ctx, obj, p, s); err != nil {
			t.Fatal(err)
		}
		if _, err := files.LoadArchive(ctx, obj); !errors.Is(err, ErrIndexFileBad) {
			t.Errorf("archive file with a head not of its member: %v, want ErrIndexFileBad", err)
		}
	}
}
