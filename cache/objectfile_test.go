package cache

import (
	"bytes"
	"errors"
	iofs "io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// objectFixture is a byte string of size bytes and a dir to keep it in.
type objectFixture struct {
	d    *Dir
	root string
	id   ObjectID
	name string
	data []byte
}

func newObjectFixture(t *testing.T, size int) *objectFixture {
	t.Helper()
	root := t.TempDir()
	d, err := OpenDir(root, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	id := NewObjectID("store", "key", "etag", "size")
	return &objectFixture{d: d, root: root, id: id, name: id.Name(BlocksArea), data: randomBytes(size)}
}

func (o *objectFixture) path() string { return filepath.Join(o.root, o.name) }

// write writes units [k0, k1) through d and returns the bytes written.
func (o *objectFixture) write(t *testing.T, d *Dir, k0, k1 int64) int64 {
	t.Helper()
	f, err := d.CreateObject(o.name, o.id, int64(len(o.data)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	end := min(int64(len(o.data)), k1*UnitSize)
	n, err := f.WriteAt(o.data[k0*UnitSize:end], k0*UnitSize)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// read reads units [k0, k1) through d: whether the dir holds them, and
// the error; wrong bytes fail the test.
func (o *objectFixture) read(t *testing.T, d *Dir, k0, k1 int64) (bool, error) {
	t.Helper()
	f, err := d.OpenObject(o.name, o.id, int64(len(o.data)))
	if err != nil {
		return false, err
	}
	defer f.Close()
	end := min(int64(len(o.data)), k1*UnitSize)
	p := make([]byte, end-k0*UnitSize)
	ok, err := f.ReadAt(p, k0*UnitSize)
	if ok && !bytes.Equal(p, o.data[k0*UnitSize:end]) {
		t.Fatalf("units [%d, %d): wrong bytes returned", k0, k1)
	}
	return ok, err
}

// TestObjectFileUnits: units written are read back, units not written
// are missing, a write of units partly held writes only the others, the
// file takes the disk space of what it holds (it is sparse), and reads
// and writes must be whole units.
func TestObjectFileUnits(t *testing.T) {
	o := newObjectFixture(t, 40*UnitSize+123) // 41 units, the last short
	if _, err := o.read(t, o.d, 0, 1); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("read before any write: %v, want ErrNotExist", err)
	}
	if n := o.write(t, o.d, 2, 4); n != 2*UnitSize {
		t.Errorf("wrote %d bytes of 2 units", n)
	}
	if n := o.write(t, o.d, 40, 41); n != 123 {
		t.Errorf("wrote %d bytes of the last unit, want 123", n)
	}
	for _, tt := range []struct {
		k0, k1 int64
		held   bool
	}{{2, 4, true}, {2, 3, true}, {3, 4, true}, {40, 41, true}, {0, 1, false}, {1, 3, false}, {3, 5, false}} {
		if held, err := o.read(t, o.d, tt.k0, tt.k1); held != tt.held || err != nil {
			t.Errorf("units [%d, %d): held %v, %v; want %v", tt.k0, tt.k1, held, err, tt.held)
		}
	}
	if n := o.write(t, o.d, 1, 5); n != 2*UnitSize {
		t.Errorf("a write of units 1-4 with 2-3 held wrote %d bytes, want 2 units", n)
	}
	fi, err := os.Stat(o.path())
	if err != nil {
		t.Fatal(err)
	}
	if used := diskBytes(fi); used > 5*UnitSize+3*objectHeaderPage {
		t.Errorf("the file of 5 units takes %d bytes of disk (%d long): not sparse", used, fi.Size())
	}
	f, err := o.d.CreateObject(o.name, o.id, int64(len(o.data)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, r := range [][2]int64{{1, UnitSize}, {0, UnitSize - 1}, {0, 41 * UnitSize}, {40 * UnitSize, 124}} {
		if _, err := f.WriteAt(make([]byte, r[1]), r[0]); err == nil {
			t.Errorf("a write of %d bytes at %d: taken, want refused (not whole units)", r[1], r[0])
		}
		if _, err := f.ReadAt(make([]byte, r[1]), r[0]); err == nil {
			t.Errorf("a read of %d bytes at %d: taken, want refused (not whole units)", r[1], r[0])
		}
	}
}

// TestObjectFileCrashBetweenBytesAndRecord: a unit whose bytes were
// written without its record (a crash between the two) is missing; a
// record whose bytes never reached the disk (a crash, no fsync: a hole,
// or old bytes) fails the CRC-32C, is dropped, and the unit can be
// written again. Neither is ever returned.
func TestObjectFileCrashBetweenBytesAndRecord(t *testing.T) {
	o := newObjectFixture(t, 8*UnitSize)
	o.write(t, o.d, 0, 1) // makes the file
	f, err := os.OpenFile(o.path(), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(o.data[3*UnitSize:4*UnitSize], 3*UnitSize) // bytes, no record
	f.Close()
	if held, err := o.read(t, o.d, 3, 4); held || err != nil {
		t.Errorf("a unit without its record: held %v, %v; want missing", held, err)
	}
	for _, lost := range []func(f *os.File){
		func(f *os.File) { f.WriteAt(make([]byte, UnitSize), 5*UnitSize) },                       // a hole
		func(f *os.File) { f.WriteAt(o.data[6*UnitSize:7*UnitSize], 5*UnitSize) },                // other bytes
		func(f *os.File) { f.WriteAt(o.data[5*UnitSize:5*UnitSize+100], 5*UnitSize+UnitSize/2) }, // torn
	} {
		o.write(t, o.d, 5, 6)
		f, err := os.OpenFile(o.path(), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		lost(f)
		f.Close()
		if held, err := o.read(t, o.d, 5, 6); held || !errors.Is(err, ErrDamaged) {
			t.Errorf("a record without its bytes: held %v, %v; want ErrDamaged", held, err)
		}
		if held, err := o.read(t, o.d, 5, 6); held || err != nil {
			t.Errorf("after the damage was found: held %v, %v; want missing", held, err)
		}
	}
	o.write(t, o.d, 5, 6)
	if held, err := o.read(t, o.d, 5, 6); !held || err != nil {
		t.Errorf("written again: held %v, %v", held, err)
	}
}

// TestObjectFileDamagedFile: a file of the wrong length or with a header
// not of its ID is ErrDamaged and removed; the next write makes it anew.
func TestObjectFileDamagedFile(t *testing.T) {
	for name, edit := range map[string]func(p string){
		"cut":   func(p string) { os.Truncate(p, 100) },
		"grown": func(p string) { f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0); f.Write([]byte{0}); f.Close() },
		"bad header": func(p string) {
			f, _ := os.OpenFile(p, os.O_WRONLY, 0)
			f.WriteAt([]byte("X"), 4*UnitSize+9)
			f.Close()
		},
		"another ID": func(p string) {
			f, _ := os.OpenFile(p, os.O_WRONLY, 0)
			f.WriteAt(objectHeader(NewObjectID("other"), 4*UnitSize), 4*UnitSize)
			f.Close()
		},
	} {
		t.Run(name, func(t *testing.T) {
			o := newObjectFixture(t, 4*UnitSize)
			o.write(t, o.d, 0, 4)
			edit(o.path())
			if held, err := o.read(t, o.d, 0, 1); held || !errors.Is(err, ErrDamaged) {
				t.Fatalf("held %v, %v; want ErrDamaged", held, err)
			}
			if _, err := os.Stat(o.path()); !os.IsNotExist(err) {
				t.Errorf("the damaged file is still there: %v", err)
			}
			o.write(t, o.d, 0, 4)
			if held, err := o.read(t, o.d, 0, 4); !held || err != nil {
				t.Errorf("made anew: held %v, %v", held, err)
			}
		})
	}
}

// TestObjectFileConcurrentWriters: two dirs on one directory (as two
// processes have: their own descriptors, nothing shared in memory) write
// random runs of units of one object at once, while readers of both read
// random runs: every read is the right bytes or missing, never damaged,
// and at the end every unit is held.
func TestObjectFileConcurrentWriters(t *testing.T) {
	const units = 64
	o := newObjectFixture(t, units*UnitSize-1000)
	other, err := OpenDir(o.root, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var writers, readers sync.WaitGroup
	var hits, misses atomic.Int64
	var stop atomic.Bool
	for w := range 8 {
		d := []*Dir{o.d, other}[w%2]
		writers.Add(1)
		readers.Add(1)
		go func() {
			defer writers.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range 40 {
				k0 := rng.Int64N(units)
				o.write(t, d, k0, min(units, k0+1+rng.Int64N(8)))
			}
		}()
		go func() {
			defer readers.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			for !stop.Load() {
				k0 := rng.Int64N(units)
				held, err := o.read(t, d, k0, min(units, k0+1+rng.Int64N(8)))
				switch {
				case err != nil && !errors.Is(err, iofs.ErrNotExist):
					t.Errorf("a read while others write: %v", err)
					return
				case held:
					hits.Add(1)
				default:
					misses.Add(1)
				}
			}
		}()
	}
	writers.Wait()
	stop.Store(true)
	readers.Wait()
	o.write(t, o.d, 0, units)
	for _, d := range []*Dir{o.d, other} {
		if held, err := o.read(t, d, 0, units); !held || err != nil {
			t.Errorf("every unit written: held %v, %v", held, err)
		}
	}
	t.Logf("reads during the writes: %d held, %d missing", hits.Load(), misses.Load())
}

// TestObjectFileRemovedWhileOpen: a file another process's trim removes
// while this one has it open still reads right through the open file;
// what is written to it then is lost (it is no longer in the dir), and
// the next open by name finds no file, or the new one.
func TestObjectFileRemovedWhileOpen(t *testing.T) {
	o := newObjectFixture(t, 4*UnitSize)
	o.write(t, o.d, 0, 2)
	r, err := o.d.OpenObject(o.name, o.id, 4*UnitSize)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := o.d.CreateObject(o.name, o.id, 4*UnitSize)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := os.Remove(o.path()); err != nil { // the other process's trim
		t.Fatal(err)
	}
	p := make([]byte, 2*UnitSize)
	if held, err := r.ReadAt(p, 0); !held || err != nil || !bytes.Equal(p, o.data[:2*UnitSize]) {
		t.Errorf("read through the open file after its removal: %v, %v, or wrong bytes", held, err)
	}
	if n, err := w.WriteAt(o.data[2*UnitSize:], 2*UnitSize); n != 2*UnitSize || err != nil {
		t.Errorf("write to the open file after its removal: %d, %v", n, err)
	}
	if _, err := o.read(t, o.d, 2, 4); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("open by name after the removal: %v, want ErrNotExist", err)
	}
	o.write(t, o.d, 2, 4)
	if held, err := o.read(t, o.d, 0, 2); held || err != nil {
		t.Errorf("units of the removed file in the new one: held %v, %v", held, err)
	}
	if held, err := o.read(t, o.d, 2, 4); !held || err != nil {
		t.Errorf("the new file: held %v, %v", held, err)
	}
}

// TestDirCountsObjectFilesByDiskSpace: a dir sums the disk space its
// object files take, not their lengths: a file of a 1 GiB object with a
// unit held takes a few pages, and a bound of 1 MiB keeps it.
func TestDirCountsObjectFilesByDiskSpace(t *testing.T) {
	root := t.TempDir()
	d, err := OpenDir(root, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	id := NewObjectID("big")
	f, err := d.CreateObject(id.Name(BlocksArea), id, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randomBytes(UnitSize), 512<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	d.startTrim()
	waitTrim(t, d)
	if used := d.Used(); used < UnitSize || used > UnitSize+4*objectHeaderPage {
		t.Errorf("Used = %d for one unit of a 1 GiB object", used)
	}
	if _, err := os.Stat(filepath.Join(root, id.Name(BlocksArea))); err != nil {
		t.Errorf("the trim removed a file far within the bound: %v", err)
	}
}

// TestObjectFileSmallUnits: a file of page units keeps each page with
// its own check, reads and writes must be whole pages, a file of the same
// name with other units is not that file, and a unit size that is not a
// power of two from a page to UnitSize is refused.
func TestObjectFileSmallUnits(t *testing.T) {
	o := newObjectFixture(t, 10*MinUnitSize+77) // 11 pages, the last short
	size := int64(len(o.data))
	w, err := o.d.createObjectUnits(o.name, o.id, size, MinUnitSize)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := w.WriteAt(o.data[3*MinUnitSize:5*MinUnitSize], 3*MinUnitSize); n != 2*MinUnitSize || err != nil {
		t.Fatalf("write of pages 3-4 = %d, %v", n, err)
	}
	if n, err := w.WriteAt(o.data[10*MinUnitSize:], 10*MinUnitSize); n != 77 || err != nil {
		t.Fatalf("write of the short last page = %d, %v", n, err)
	}
	w.Close()
	r, err := o.d.openObjectUnits(o.name, o.id, size, MinUnitSize)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		from, to int64
		held     bool
	}{{3 * MinUnitSize, 5 * MinUnitSize, true}, {4 * MinUnitSize, 5 * MinUnitSize, true}, {10 * MinUnitSize, size, true}, {2 * MinUnitSize, 4 * MinUnitSize, false}, {5 * MinUnitSize, 6 * MinUnitSize, false}} {
		p := make([]byte, tt.to-tt.from)
		held, err := r.ReadAt(p, tt.from)
		if held != tt.held || err != nil || (held && !bytes.Equal(p, o.data[tt.from:tt.to])) {
			t.Errorf("read [%d, %d) = %v, %v; want held %v with its bytes", tt.from, tt.to, held, err, tt.held)
		}
	}
	if _, err := r.ReadAt(make([]byte, 100), 3*MinUnitSize); err == nil {
		t.Error("a read of part of a page succeeded")
	}
	if held, err := r.HeldUnits(2*MinUnitSize, int(size-2*MinUnitSize)); err != nil || !slices.Equal(held, []bool{false, true, true, false, false, false, false, false, true}) {
		t.Errorf("held units from page 2 on = %v, %v; want pages 3, 4 and 10", held, err)
	}
	r.Close()
	// Damage in one page loses that page only.
	f, err := os.OpenFile(o.path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{o.data[4*MinUnitSize+9] ^ 1}, 4*MinUnitSize+9)
	f.Close()
	r, err = o.d.openObjectUnits(o.name, o.id, size, MinUnitSize)
	if err != nil {
		t.Fatal(err)
	}
	if held, err := r.ReadAt(make([]byte, 2*MinUnitSize), 3*MinUnitSize); held || !errors.Is(err, ErrDamaged) {
		t.Errorf("read over a damaged page = %v, %v; want ErrDamaged", held, err)
	}
	if held, err := r.ReadAt(make([]byte, MinUnitSize), 3*MinUnitSize); !held || err != nil {
		t.Errorf("the page beside the damaged one = %v, %v; want held", held, err)
	}
	r.Close()
	if _, err := o.d.OpenObject(o.name, o.id, size); !errors.Is(err, ErrDamaged) {
		t.Errorf("opened with the dir's own units: %v; want ErrDamaged", err)
	}
	for _, unit := range []int64{0, 2048, 3 * MinUnitSize, 2 * UnitSize} {
		if _, err := o.d.createObjectUnits(o.name, o.id, size, unit); err == nil {
			t.Errorf("units of %d bytes taken", unit)
		}
	}
}
