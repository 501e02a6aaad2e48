package cache

import (
	"bytes"
	"errors"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pairFixture is objectFixture kept as a pair in pages.
func newPairFixture(t *testing.T, size int) *objectFixture {
	o := newObjectFixture(t, size)
	o.name = o.id.Name(DecodedArea + "pairs/")
	return o
}

func (o *objectFixture) writePair(t *testing.T, from, to int64) {
	t.Helper()
	w, err := o.d.CreateObjectPair(o.name, o.id, int64(len(o.data)), MinUnitSize)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteAt(o.data[from:to], from); err != nil {
		t.Fatal(err)
	}
}

// readPair reads [from, to) of the pair: whether it holds them, and the
// error; wrong bytes fail the test.
func (o *objectFixture) readPair(t *testing.T, from, to int64) (bool, error) {
	t.Helper()
	r, err := o.d.OpenObjectPair(o.name, o.id, int64(len(o.data)), MinUnitSize)
	if err != nil {
		return false, err
	}
	defer r.Close()
	p := make([]byte, to-from)
	held, err := r.ReadAt(p, from)
	if held && !bytes.Equal(p, o.data[from:to]) {
		t.Fatalf("[%d, %d): wrong bytes returned", from, to)
	}
	return held, err
}

// TestObjectPairLayout: the data file is exactly the byte string (its
// length is the size, whatever is written), the records are beside it,
// units written read back, a pair is complete once every unit is
// written, and a pair is made whole again when a writer finds only its
// records (a maker that died between the two links).
func TestObjectPairLayout(t *testing.T) {
	o := newPairFixture(t, 10*MinUnitSize+77) // 11 pages, the last short
	size := int64(len(o.data))
	if _, err := o.readPair(t, 0, MinUnitSize); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("read before any write: %v, want ErrNotExist", err)
	}
	o.writePair(t, 2*MinUnitSize, 4*MinUnitSize)
	for _, tt := range []struct {
		name string
		want int64
	}{{o.name, size}, {o.name + RecordsSuffix, pairRecordsLen(size, MinUnitSize)}} {
		fi, err := os.Stat(filepath.Join(o.root, tt.name))
		if err != nil || fi.Size() != tt.want {
			t.Errorf("%s: %v, %v; want %d bytes", tt.name, fi, err, tt.want)
		}
	}
	missing := func() int64 {
		r, err := o.d.OpenObjectPair(o.name, o.id, size, MinUnitSize)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		n, err := r.MissingUnits()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, tt := range []struct {
		from, to int64
		held     bool
	}{{2 * MinUnitSize, 4 * MinUnitSize, true}, {MinUnitSize, 3 * MinUnitSize, false}, {10 * MinUnitSize, size, false}} {
		if held, err := o.readPair(t, tt.from, tt.to); held != tt.held || err != nil {
			t.Errorf("read [%d, %d) = %v, %v; want held %v", tt.from, tt.to, held, err, tt.held)
		}
	}
	if n := missing(); n != 9 {
		t.Errorf("a pair of 2 pages of 11 misses %d units; want 9", n)
	}
	o.writePair(t, 0, size)
	if n := missing(); n != 0 {
		t.Error("a pair of every page is not complete")
	}
	data, err := os.ReadFile(filepath.Join(o.root, o.name))
	if err != nil || !bytes.Equal(data, o.data) {
		t.Errorf("the data file is not the byte string: %d bytes, %v", len(data), err)
	}
}

// TestObjectPairDamage: a pair with a half missing, of the wrong length,
// of another header, or with a unit changed on disk is never read as
// holding its bytes; a whole file damaged is removed and a writer makes
// the pair anew.
func TestObjectPairDamage(t *testing.T) {
	const size = 5*MinUnitSize + 1
	for _, tt := range []struct {
		name string
		harm func(data, records string)
		// openErr is what opening the harmed pair fails with (nil: it
		// opens, and its read fails with readErr).
		openErr, readErr error
	}{
		{"data trimmed", func(data, _ string) { os.Truncate(data, MinUnitSize) }, ErrDamaged, nil},
		{"records trimmed", func(_, records string) { os.Truncate(records, MinUnitSize) }, ErrDamaged, nil},
		{"old layout", func(data, records string) {
			os.Remove(records)
			os.WriteFile(data, make([]byte, 3*MinUnitSize), 0o644)
		}, iofs.ErrNotExist, nil},
		{"header of another format", func(_, records string) {
			f, _ := os.OpenFile(records, os.O_RDWR, 0)
			f.WriteAt([]byte{1}, int64(len(objectMagic)))
			f.Close()
		}, ErrDamaged, nil},
		{"records file removed", func(_, records string) { os.Remove(records) }, iofs.ErrNotExist, nil},
		{"data file removed", func(data, _ string) { os.Remove(data) }, iofs.ErrNotExist, nil},
		{"byte flipped", func(data, _ string) {
			f, _ := os.OpenFile(data, os.O_RDWR, 0)
			f.WriteAt([]byte{0xff}, 7)
			f.Close()
		}, nil, ErrDamaged},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := newPairFixture(t, size)
			o.writePair(t, 0, size)
			data := filepath.Join(o.root, o.name)
			tt.harm(data, data+RecordsSuffix)
			r, err := o.d.OpenObjectPair(o.name, o.id, size, MinUnitSize)
			if !errors.Is(err, tt.openErr) || (err == nil) != (tt.openErr == nil) {
				t.Fatalf("open: %v, want %v", err, tt.openErr)
			}
			if err == nil {
				held, err := r.ReadAt(make([]byte, size), 0)
				r.Close()
				if held || !errors.Is(err, tt.readErr) {
					t.Fatalf("read: %v, %v; want not held, %v", held, err, tt.readErr)
				}
			}
			// Made anew (or whole again): every page written reads back,
			// and the data file has the size.
			o.writePair(t, 0, size)
			if held, err := o.readPair(t, 0, size); !held || err != nil {
				t.Errorf("after writing again: %v, %v; want held", held, err)
			}
			if fi, err := os.Stat(data); err != nil || fi.Size() != size {
				t.Errorf("data file after writing again: %v, %v", fi, err)
			}
		})
	}
}

// TestObjectPairTrimmedWhole: a trim that removes either half of a pair
// (the idlest file) removes the other with it, even in use, so that no
// half is left alone; another pair stays.
func TestObjectPairTrimmedWhole(t *testing.T) {
	for _, half := range []string{"", RecordsSuffix} {
		t.Run("idlest half "+half, func(t *testing.T) {
			root := t.TempDir()
			d, err := OpenDir(root, 1<<40, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			waitTrim(t, d)
			var names []string
			for _, key := range []string{"a", "b"} {
				id := NewObjectID(key)
				name := id.Name(DecodedArea + "pairs/")
				w, err := d.CreateObjectPair(name, id, 2*MinUnitSize, MinUnitSize)
				if err != nil {
					t.Fatal(err)
				}
				w.WriteAt(make([]byte, 2*MinUnitSize), 0)
				w.Close()
				names = append(names, name)
			}
			if err := d.trim(); err != nil {
				t.Fatal(err)
			}
			// Over the bound by a little: the idlest file goes, the half
			// of pair a the case names; a's other half is in use.
			d.limit = d.Used()
			at := time.Now().Add(-3 * time.Hour)
			os.Chtimes(filepath.Join(root, names[0]+half), at, at)
			if err := d.trim(); err != nil {
				t.Fatal(err)
			}
			want := []string{names[1], names[1] + RecordsSuffix}
			slices.Sort(want)
			if got := files(t, root); !slices.Equal(got, want) {
				t.Errorf("after the trim the dir holds %q; want %q (pair a removed whole)", got, want)
			}
		})
	}
}

// HashData reads from the page cache what it holds whole, and the rest
// around it: a check of a file whose pages a reader has just read (or
// the daemon just wrote) reads nothing from the disk, and a check of a
// file not in the cache leaves it out of the cache. Disk reads are the
// kernel's count for this process (/proc/self/io read_bytes).
func TestObjectPairHashDataReadsCachedPagesOnce(t *testing.T) {
	size := 4*hashChunk + 3*objectHeaderPage + 77
	o := newPairFixture(t, size)
	o.writePair(t, 0, int64(size))
	path := filepath.Join(o.root, o.name)
	data, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer data.Close()
	if err := data.Sync(); err != nil { // written back: DONTNEED drops clean pages only
		t.Fatal(err)
	}
	if f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0); err != nil {
		t.Skipf("the test dir's file system refuses O_DIRECT: %v", err)
	} else {
		f.Close()
	}
	if _, err := cachedPages(data, 0, int64(size)); err != nil {
		t.Skipf("no cachestat(2) here: %v", err)
	}
	if _, err := diskReadBytes(); err != nil {
		t.Skipf("no I/O accounting here: %v", err)
	}
	pages := uint64((size + objectHeaderPage - 1) / objectHeaderPage)
	for _, tc := range []struct {
		name       string
		cached     bool
		wantDisk   bool   // the check reads the disk
		wantCached uint64 // pages cached after the check
	}{
		{"evicted", false, true, 0},
		{"cached", true, false, pages},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := unix.Fadvise(int(data.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
				t.Fatal(err)
			}
			if tc.cached {
				if _, err := io.Copy(io.Discard, io.NewSectionReader(data, 0, int64(size))); err != nil {
					t.Fatal(err)
				}
			}
			r, err := o.d.OpenObjectPair(o.name, o.id, int64(size), MinUnitSize)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			before, _ := diskReadBytes()
			var got bytes.Buffer
			if err := r.HashData(&got); err != nil || !bytes.Equal(got.Bytes(), o.data) {
				t.Fatalf("HashData wrote %d bytes, %v; want the data", got.Len(), err)
			}
			after, _ := diskReadBytes()
			if read := after - before; (read >= int64(size)) != tc.wantDisk {
				t.Errorf("the check read %d bytes from the disk (file of %d); want the whole file read: %v", read, size, tc.wantDisk)
			}
			if n, _ := cachedPages(data, 0, int64(size)); n != tc.wantCached {
				t.Errorf("%d of %d pages cached after the check, want %d", n, pages, tc.wantCached)
			}
		})
	}
}

// diskReadBytes is what this process has read from storage so far.
func diskReadBytes() (int64, error) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "read_bytes: "); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, errors.New("no read_bytes in /proc/self/io")
}

// HashData hashes the data file whole, whatever its size against the
// O_DIRECT reads' alignment; a data file cut short is damage.
func TestObjectPairHashData(t *testing.T) {
	for _, size := range []int{1, MinUnitSize, 3*hashChunk + 77, 2 * hashChunk} {
		o := newPairFixture(t, size)
		o.writePair(t, 0, int64(size))
		r, err := o.d.OpenObjectPair(o.name, o.id, int64(size), MinUnitSize)
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := r.HashData(&got); err != nil || !bytes.Equal(got.Bytes(), o.data) {
			t.Errorf("size %d: HashData wrote %d bytes, %v; want the data", size, got.Len(), err)
		}
		os.Truncate(filepath.Join(o.root, o.name), int64(size/2))
		if err := r.HashData(&got); !errors.Is(err, ErrDamaged) {
			t.Errorf("size %d, cut short: %v, want ErrDamaged", size, err)
		}
		r.Close()
	}
}
