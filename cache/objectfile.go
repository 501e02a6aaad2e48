package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// UnitSize is the unit in which a Dir keeps the bytes of an object (or
// bytes derived from one): each unit is written whole and has a CRC-32C
// of its own. It does not depend on a mount's --block-size: mounts with
// any block size that is a multiple of it read and write the same units.
const UnitSize = 64 << 10

// An object file holds some of the units of one byte string of a known
// size (an object version, or bytes derived from one), named
// AREA/XX/<32 hex digits of its ObjectID>, in units of UnitSize (or of
// the unit openObjectUnits was given, which the header says):
//
//	[0, size)           the bytes, unit k at k×unit; a unit not
//	                    written is a hole (the file is sparse)
//	[tail, tail+4 KiB)  the header: magic, format, unit size, size, ID,
//	                    and a CRC-32C of those; tail is size rounded up
//	                    to 4 KiB, so that no page holds data and header
//	[tail+4 KiB, end)   a record of 8 bytes per unit: the CRC-32C of
//	                    the ID, the unit's index and its bytes, and a
//	                    mark; zero for a unit not written
//
// The bytes lie at their own offsets. (A file past their end holds the
// header and records, so it cannot be handed to the kernel as the byte
// string: an object pair, objectpair.go, keeps them in a file beside.)
// A file appears whole: it is made under
// a temporary name with its header and length, then linked to its name.
// A writer writes a unit's bytes before its record, so that no process
// sees a record before its unit. Every writer of a unit writes the same
// bytes (an ID names one immutable byte string), so writers of one file
// may race. A reader checks each unit against its record: a unit torn by
// a crash between its bytes and its record (there is no fsync), damaged
// on disk or copied from elsewhere is never returned.
const (
	objectMagic  = "BGBFSOB1"
	objectFormat = 1
	// objectHeaderLen is what of the header's page is written.
	objectHeaderLen  = len(objectMagic) + 4 + 4 + 8 + 16 + 4
	objectHeaderPage = 4096
	recordSize       = 8
	recordMark       = 0x54494e55 // "UNIT"
)

// ErrDamaged wraps what a file of the dir fails: an object file that is
// not a whole file of its ID (it is removed), or units whose CRC-32C does
// not match their record (their records are cleared).
var ErrDamaged = errors.New("damaged")

// ObjectID names a byte string among all a Dir may hold.
type ObjectID [16]byte

// NewObjectID is the ID of the byte string that fields say what it is
// of: a hash of them, each prefixed by its length.
func NewObjectID(fields ...string) ObjectID {
	h := sha256.New()
	for _, f := range fields {
		h.Write(binary.AppendUvarint(nil, uint64(len(f))))
		h.Write([]byte(f))
	}
	var id ObjectID
	copy(id[:], h.Sum(nil))
	return id
}

// Name is the name of id's file in area, spread over 256 directories.
func (id ObjectID) Name(area string) string {
	s := hex.EncodeToString(id[:])
	return area + s[:2] + "/" + s
}

// ObjectFile is an object file of a Dir, or a pair of files (see
// OpenObjectPair), open for reading or writing. Its methods are safe for
// concurrent use.
type ObjectFile struct {
	d    *Dir
	f    *os.File
	name string
	id   ObjectID
	size int64
	unit int64 // UnitSize, or what openObjectUnits was given
	tail int64 // where the header starts
	// rf holds the records: f itself, or a pair's records file; they
	// start at recBase in it.
	rf       *os.File
	recBase  int64
	pair     bool
	writable bool
	// data is f's identity, for a pair.
	data FileIdentity
}

// objectLayout returns where an object file of a byte string of size
// bytes has its header and records, and its length.
func objectLayout(size int64) (tail, records, length int64) {
	return objectLayoutUnits(size, UnitSize)
}

// objectLayoutUnits is objectLayout for units of unit bytes.
func objectLayoutUnits(size, unit int64) (tail, records, length int64) {
	tail = (size + objectHeaderPage - 1) / objectHeaderPage * objectHeaderPage
	records = tail + objectHeaderPage
	return tail, records, records + (size+unit-1)/unit*recordSize
}

func objectHeader(id ObjectID, size int64) []byte { return objectHeaderUnits(id, size, UnitSize) }

func objectHeaderUnits(id ObjectID, size, unit int64) []byte {
	return objectHeaderFormat(id, size, unit, objectFormat)
}

func objectHeaderFormat(id ObjectID, size, unit int64, format uint32) []byte {
	b := append([]byte(objectMagic), binary.LittleEndian.AppendUint32(nil, format)...)
	b = binary.LittleEndian.AppendUint32(b, uint32(unit))
	b = binary.LittleEndian.AppendUint64(b, uint64(size))
	b = append(b, id[:]...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// OpenObject opens the file name of the byte string id of size bytes
// for reading. It returns an error wrapping io/fs.ErrNotExist if the dir
// does not hold it, ErrDamaged if the file there is not a whole file of
// id (it is removed), ErrDirNotReadable if it cannot be read. It counts
// as a use of the file.
func (d *Dir) OpenObject(name string, id ObjectID, size int64) (*ObjectFile, error) {
	return d.openObjectUnits(name, id, size, UnitSize)
}

// MinUnitSize is the smallest unit an object file may have: a page, the
// unit in which the kernel reads a file.
const MinUnitSize = objectHeaderPage

// openObjectUnits is OpenObject for a file of units of unit bytes, a
// power of two from MinUnitSize to UnitSize: bytes derived from an
// object that are written as the kernel read them, page by page, keep
// smaller units than the blocks fetched from S3. A file of the same
// name with other units is not a file of id (it is removed).
func (d *Dir) openObjectUnits(name string, id ObjectID, size, unit int64) (*ObjectFile, error) {
	p, err := d.objectPath(name, unit)
	if err != nil {
		return nil, err
	}
	f, fi, err := d.openFile(p, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	o := &ObjectFile{d: d, f: f, rf: f, name: name, id: id, size: size, unit: unit}
	if err := o.check(fi.Size()); err != nil {
		f.Close()
		return nil, err
	}
	d.touch(p, fi)
	return o, nil
}

// CreateObject opens the file name of the byte string id of size bytes
// for writing, making it if the dir holds none (or only a damaged one).
// It fails with ErrDirNotWritable while writes are paused, and
// ErrDirFull while the dir takes no blocks.
func (d *Dir) CreateObject(name string, id ObjectID, size int64) (*ObjectFile, error) {
	return d.createObjectUnits(name, id, size, UnitSize)
}

// createObjectUnits is CreateObject for a file of units of unit bytes
// (see openObjectUnits).
func (d *Dir) createObjectUnits(name string, id ObjectID, size, unit int64) (*ObjectFile, error) {
	p, err := d.objectPath(name, unit)
	if err != nil {
		return nil, err
	}
	if err := d.writes.blocked(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	o := &ObjectFile{d: d, name: name, id: id, size: size, unit: unit, writable: true}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err == nil {
		o.f, o.rf = f, f
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil {
			if err = o.check(fi.Size()); err == nil {
				return o, nil
			}
		}
		f.Close()
		if !errors.Is(err, ErrDamaged) { // an I/O error: reads are paused
			return nil, err
		}
		err = syscall.ENOENT // removed as damaged: made anew
	}
	switch {
	case errors.Is(err, os.ErrPermission):
		// A file of another owner (written by root before the dir was
		// given to its owner): not ours to write; others are.
		return nil, err
	case !isNotExist(err):
		d.writes.fail(err)
		return nil, fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	// The header's page, and the first page of records.
	const made = 2 * objectHeaderPage
	if err := d.reserve(made, true); err != nil {
		return nil, err
	}
	f, err = d.createObject(p, id, size, unit)
	if errors.Is(err, syscall.ENOENT) {
		// A directory of the path was removed under the write: once more.
		f, err = d.createObject(p, id, size, unit)
	}
	if err := d.wrote(made, err); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	o.f, o.rf = f, f
	o.tail, o.recBase, _ = objectLayoutUnits(size, unit)
	return o, nil
}

// createObject makes the object file at p: a temporary file with its
// length and header, linked to p (or, if another process linked one
// first, that one opened).
func (d *Dir) createObject(p string, id ObjectID, size, unit int64) (*os.File, error) {
	return d.linkNew(p, func(f *os.File) error {
		tail, _, length := objectLayoutUnits(size, unit)
		if err := f.Truncate(length); err != nil {
			return err
		}
		_, err := f.WriteAt(objectHeaderUnits(id, size, unit), tail)
		return err
	})
}

// linkNew makes a file at p: a temporary file filled by fill, linked to
// p (or, if another process linked one first, that one opened), open
// for reading and writing.
func (d *Dir) linkNew(p string, fill func(*os.File) error) (*os.File, error) {
	f, err := d.createTemp(filepath.Dir(p))
	if err != nil {
		return nil, err
	}
	err = fill(f)
	if err == nil {
		err = os.Link(f.Name(), p)
	}
	os.Remove(f.Name())
	if err == nil {
		return f, nil
	}
	f.Close()
	if errors.Is(err, os.ErrExist) {
		return os.OpenFile(p, os.O_RDWR, 0)
	}
	return nil, err
}

// check checks that the open file, of length bytes, is a whole object
// file of the ID and size; one that is not is removed.
func (o *ObjectFile) check(length int64) error {
	tail, _, want := objectLayoutUnits(o.size, o.unit)
	o.tail = tail
	if length != want {
		return o.damagedFile(fmt.Sprintf("%d bytes, want %d", length, want))
	}
	hdr := make([]byte, objectHeaderLen)
	if _, err := o.f.ReadAt(hdr, tail); err != nil {
		return o.readFailed(err)
	}
	if !bytes.Equal(hdr, objectHeaderUnits(o.id, o.size, o.unit)) {
		return o.damagedFile("header not of this object version (or not whole)")
	}
	o.recBase = tail + objectHeaderPage
	return nil
}

// damagedFile removes the damaged file. Two reads may find it at once:
// the one that removes it reports the damage, the other a missing file.
func (o *ObjectFile) damagedFile(why string) error {
	name := o.name
	if o.pair {
		name += RecordsSuffix // removed first, and the data file with it
	}
	if !o.d.remove(name) {
		return fmt.Errorf("cache dir: %s: %w (removed as damaged by another read)", o.name, iofs.ErrNotExist)
	}
	return fmt.Errorf("%w: %s: %s (removed)", ErrDamaged, o.name, why)
}

// readFailed turns a failed read of the file into an error: one that
// ends early is damage (the file was cut), another pauses reads.
func (o *ObjectFile) readFailed(err error) error {
	if errors.Is(err, io.EOF) {
		return o.damagedFile("shorter than its length")
	}
	o.d.reads.fail(err)
	return fmt.Errorf("%w: %w", ErrDirNotReadable, err)
}

// Close closes the file.
func (o *ObjectFile) Close() error {
	err := o.f.Close()
	if o.pair {
		if rerr := o.rf.Close(); err == nil {
			err = rerr
		}
	}
	return err
}

// units returns the units [k0, k1) that the bytes [off, off+n) are, or an
// error if they are not whole units (the last may end at the end).
func (o *ObjectFile) units(off int64, n int) (k0, k1 int64, err error) {
	end := off + int64(n)
	if off < 0 || off%o.unit != 0 || n <= 0 || end > o.size || (end%o.unit != 0 && end != o.size) {
		return 0, 0, fmt.Errorf("cache dir: [%d, %d) of %d bytes is not whole units of %d", off, end, o.size, o.unit)
	}
	return off / o.unit, (end + o.unit - 1) / o.unit, nil
}

// objectPath is the path of the object file (or pair) name of units of
// unit bytes.
func (d *Dir) objectPath(name string, unit int64) (string, error) {
	if err := checkUnit(unit); err != nil {
		return "", err
	}
	return d.path(name)
}

// checkUnit checks a unit size asked of openObjectUnits or
// createObjectUnits.
func checkUnit(unit int64) error {
	if unit < MinUnitSize || unit > UnitSize || unit&(unit-1) != 0 {
		return fmt.Errorf("cache dir: unit of %d bytes is not a power of two from %d to %d", unit, MinUnitSize, UnitSize)
	}
	return nil
}

// Unit is the size of the file's units.
func (o *ObjectFile) Unit() int64 { return o.unit }

// unitCRC is the CRC-32C of the ID, the unit's index and its bytes.
func unitCRC(id ObjectID, k int64, data []byte) uint32 {
	var pre [24]byte
	copy(pre[:], id[:])
	binary.LittleEndian.PutUint64(pre[16:], uint64(k))
	return crc32.Update(crc32.Checksum(pre[:], castagnoli), castagnoli, data)
}

// records reads the records of units [k0, k1).
func (o *ObjectFile) records(k0, k1 int64) ([]byte, error) {
	recs := make([]byte, (k1-k0)*recordSize)
	if _, err := o.rf.ReadAt(recs, o.recBase+k0*recordSize); err != nil {
		return nil, o.readFailed(err)
	}
	return recs, nil
}

func marked(rec []byte) bool { return binary.LittleEndian.Uint32(rec[4:]) == recordMark }

// ReadAt fills p with the bytes at off, which must be whole units (the
// last may end at the end), and reports whether the file holds them all.
// Units whose bytes fail their record are ErrDamaged, and their records
// are cleared so that they are written again.
func (o *ObjectFile) ReadAt(p []byte, off int64) (bool, error) {
	k0, k1, err := o.units(off, len(p))
	if err != nil {
		return false, err
	}
	recs, err := o.records(k0, k1)
	if err != nil {
		return false, err
	}
	for i := 0; i < len(recs); i += recordSize {
		if !marked(recs[i:]) {
			k := k0 + int64(i/recordSize)
			if binary.LittleEndian.Uint64(recs[i:]) != 0 && o.clear(k, recs[i:i+recordSize]) {
				return false, fmt.Errorf("%w: %s: unit %d has a record without its mark", ErrDamaged, o.name, k)
			}
			return false, nil
		}
	}
	if _, err := o.f.ReadAt(p, off); err != nil {
		return false, o.readFailed(err)
	}
	var bad []int64
	held := true
	for k := k0; k < k1; k++ {
		data := p[(k-k0)*o.unit : min(int64(len(p)), (k-k0+1)*o.unit)]
		rec := recs[(k-k0)*recordSize : (k-k0+1)*recordSize]
		if unitCRC(o.id, k, data) != binary.LittleEndian.Uint32(rec) {
			held = false
			if o.clear(k, rec) { // else found by another read meanwhile
				bad = append(bad, k)
			}
		}
	}
	if len(bad) > 0 {
		return false, fmt.Errorf("%w: %s: units %v fail their CRC-32C", ErrDamaged, o.name, bad)
	}
	return held, nil
}

// HeldUnits reports, for each unit of the bytes at off (whole units, the
// last may end at the end), whether its record says the file holds it;
// its bytes are checked only when read.
func (o *ObjectFile) HeldUnits(off int64, n int) ([]bool, error) {
	k0, k1, err := o.units(off, n)
	if err != nil {
		return nil, err
	}
	recs, err := o.records(k0, k1)
	if err != nil {
		return nil, err
	}
	held := make([]bool, k1-k0)
	for i := range held {
		held[i] = marked(recs[i*recordSize:])
	}
	return held, nil
}

// clear zeroes the record rec of unit k, found damaged, so that the unit
// reads as missing and is written again; it reports whether the record
// was still rec, that is whether this read is the one to report the
// damage (two reads may find it at once). A user that does not write the
// dir leaves the record, and reports the damage each time.
func (o *ObjectFile) clear(k int64, rec []byte) bool {
	if o.d.writes.current() != nil {
		return true
	}
	name := o.name
	if o.pair {
		name += RecordsSuffix
	}
	p, err := o.d.path(name)
	if err != nil {
		return true
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return true
	}
	defer f.Close()
	records := o.recBase
	now := make([]byte, recordSize)
	if _, err := f.ReadAt(now, records+k*recordSize); err != nil || !bytes.Equal(now, rec) {
		return err != nil
	}
	f.WriteAt(make([]byte, recordSize), records+k*recordSize)
	return true
}

// WriteAt writes the units of p, the bytes at off (whole units, the last
// may end at the end), that the file does not hold yet, and returns the
// bytes written. Each unit's bytes are written before its record. It
// fails with ErrDirFull while the dir takes no blocks.
func (o *ObjectFile) WriteAt(p []byte, off int64) (int64, error) {
	if !o.writable {
		return 0, fmt.Errorf("cache dir: %s is open for reading", o.name)
	}
	k0, k1, err := o.units(off, len(p))
	if err != nil {
		return 0, err
	}
	recs, err := o.records(k0, k1)
	if err != nil {
		return 0, err
	}
	// Runs of units to write: [k, next) of those not held.
	var runs [][2]int64
	var n int64
	for k := k0; k < k1; k++ {
		if marked(recs[(k-k0)*recordSize:]) {
			continue
		}
		if len(runs) > 0 && runs[len(runs)-1][1] == k {
			runs[len(runs)-1][1] = k + 1
		} else {
			runs = append(runs, [2]int64{k, k + 1})
		}
		n += min(o.unit, o.size-k*o.unit)
	}
	if n == 0 {
		return 0, nil
	}
	// The disk space the units take: whole pages (the last unit may be
	// short).
	space := (n + objectHeaderPage - 1) / objectHeaderPage * objectHeaderPage
	if err := o.d.reserve(space, true); err != nil {
		return 0, err
	}
	err = nil
	for _, r := range runs {
		from, to := (r[0]-k0)*o.unit, min(int64(len(p)), (r[1]-k0)*o.unit)
		if _, err = o.f.WriteAt(p[from:to], off+from); err != nil {
			break
		}
	}
	for _, r := range runs {
		if err != nil {
			break
		}
		rec := recs[(r[0]-k0)*recordSize : (r[1]-k0)*recordSize]
		for k := r[0]; k < r[1]; k++ {
			data := p[(k-k0)*o.unit : min(int64(len(p)), (k-k0+1)*o.unit)]
			binary.LittleEndian.PutUint32(rec[(k-r[0])*recordSize:], unitCRC(o.id, k, data))
			binary.LittleEndian.PutUint32(rec[(k-r[0])*recordSize+4:], recordMark)
		}
		_, err = o.rf.WriteAt(rec, o.recBase+r[0]*recordSize)
	}
	if err := o.d.wrote(space, err); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	return n, nil
}
