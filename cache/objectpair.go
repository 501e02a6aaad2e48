package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// An object pair keeps a byte string as two files, so that the data file
// is exactly the byte string, and can be handed to the kernel as it is
// (FUSE passthrough reads a backing file up to its own length, not the
// FUSE file's):
//
//	AREA/XX/<id>         the bytes, unit k at k×unit, sparse; its
//	                     length is the byte string's size
//	AREA/XX/<id>.units   the header (as an object file's, of format
//	                     pairFormat) in its first 4 KiB, then the 8-byte
//	                     record of each unit, as an object file's
//
// Both are made under temporary names and linked, the records file
// first: a data file without its records file is left over (its records
// were removed, or the pair was half trimmed) and is removed before a
// pair is made anew; a records file without its data file is a pair
// being made (or whose maker died), which a maker completes by linking a
// data file. Since every writer of an ID writes the same bytes, a pair
// made by two processes at once is consistent whichever halves they
// link. A pair is removed records first, so that no reader finds records
// that vouch for a data file being removed.
const (
	RecordsSuffix = ".units"
	pairFormat    = 2
)

// pairRecordsLen is the length of the records file of a pair.
func pairRecordsLen(size, unit int64) int64 {
	return objectHeaderPage + (size+unit-1)/unit*recordSize
}

// FileIdentity tells files apart: a file removed and made anew under the
// same name is another file.
type FileIdentity struct{ Dev, Ino uint64 }

// IdentityOf is the identity of the file fi describes.
func IdentityOf(fi iofs.FileInfo) FileIdentity {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return FileIdentity{Dev: uint64(st.Dev), Ino: st.Ino}
	}
	return FileIdentity{}
}

// OpenObjectPair opens the pair name (see RecordsSuffix) of the byte
// string id of size bytes, in units of unit bytes, for reading. It
// returns an error wrapping io/fs.ErrNotExist if the dir does not hold
// both halves, ErrDamaged if they are not a whole pair of id (it is
// removed), ErrDirNotReadable if it cannot be read. It counts as a use
// of both files.
func (d *Dir) OpenObjectPair(name string, id ObjectID, size, unit int64) (*ObjectFile, error) {
	p, err := d.objectPath(name, unit)
	if err != nil {
		return nil, err
	}
	rf, rfi, err := d.openFile(p+RecordsSuffix, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	f, fi, err := d.openFile(p, os.O_RDONLY)
	if err != nil {
		rf.Close()
		return nil, err
	}
	o := &ObjectFile{d: d, f: f, rf: rf, recBase: objectHeaderPage, pair: true, name: name, id: id, size: size, unit: unit, data: IdentityOf(fi)}
	if err := o.checkPair(fi.Size(), rfi.Size()); err != nil {
		o.Close()
		return nil, err
	}
	d.touch(p, fi)
	d.touch(p+RecordsSuffix, rfi)
	return o, nil
}

// CreateObjectPair is OpenObjectPair for writing, making the pair (or
// the half missing) if the dir does not hold a whole one. It fails with
// ErrDirNotWritable while writes are paused, and ErrDirFull while the
// dir takes no blocks.
func (d *Dir) CreateObjectPair(name string, id ObjectID, size, unit int64) (*ObjectFile, error) {
	p, err := d.objectPath(name, unit)
	if err != nil {
		return nil, err
	}
	if err := d.writes.blocked(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	o := &ObjectFile{d: d, name: name, id: id, size: size, unit: unit, recBase: objectHeaderPage, pair: true, writable: true}
	rf, err := os.OpenFile(p+RecordsSuffix, os.O_RDWR, 0)
	if err == nil {
		o.rf = rf
		err = o.openPairData(p)
		if err == nil {
			return o, nil
		}
		if !errors.Is(err, ErrDamaged) { // an I/O error: reads are paused
			return nil, err
		}
		err = syscall.ENOENT // removed as damaged: made anew
	}
	switch {
	case errors.Is(err, os.ErrPermission):
		return nil, err // a pair of another owner: not ours to write
	case !isNotExist(err):
		d.writes.fail(err)
		return nil, fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	// A data file left without its records is stale.
	if rerr := os.Remove(p); rerr == nil {
		d.removed.Add(1)
	}
	// The records file's first two pages.
	const made = 2 * objectHeaderPage
	if err := d.reserve(made, true); err != nil {
		return nil, err
	}
	rf, err = d.createPairRecords(p+RecordsSuffix, id, size, unit)
	if errors.Is(err, syscall.ENOENT) {
		// A directory of the path was removed under the write: once more.
		rf, err = d.createPairRecords(p+RecordsSuffix, id, size, unit)
	}
	if err := d.wrote(made, err); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	o.rf = rf
	if err := o.openPairData(p); err != nil {
		if errors.Is(err, ErrDamaged) {
			return nil, err
		}
		d.writes.fail(err)
		return nil, fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	return o, nil
}

// createPairRecords makes a pair's records file at p.
func (d *Dir) createPairRecords(p string, id ObjectID, size, unit int64) (*os.File, error) {
	return d.linkNew(p, func(f *os.File) error {
		if err := f.Truncate(pairRecordsLen(size, unit)); err != nil {
			return err
		}
		_, err := f.WriteAt(objectHeaderFormat(id, size, unit, pairFormat), 0)
		return err
	})
}

// openPairData opens for writing the data file at p of a pair whose
// records file o holds open, linking a new one if it is missing, and
// checks the pair. On failure o.rf is closed.
func (o *ObjectFile) openPairData(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if isNotExist(err) {
		// Records without their data: a pair being made, or whose
		// maker died, has no unit written yet; one with units written
		// lost its data file, and the records vouch for nothing.
		var written bool
		if written, err = o.anyWritten(); err == nil && written {
			err = o.damagedFile("records without their data file")
		}
		if err == nil {
			f, err = o.d.linkNew(p, func(f *os.File) error { return f.Truncate(o.size) })
		}
	}
	if err != nil {
		o.rf.Close()
		return err
	}
	o.f = f
	fi, err := f.Stat()
	if err == nil {
		var rfi iofs.FileInfo
		if rfi, err = o.rf.Stat(); err == nil {
			o.data = IdentityOf(fi)
			err = o.checkPair(fi.Size(), rfi.Size())
		}
	}
	if err != nil {
		o.Close()
	}
	return err
}

// checkPair checks that the open halves, of lengths dataLen and
// recordsLen, are a whole pair of the ID and size; one that is not is
// removed.
func (o *ObjectFile) checkPair(dataLen, recordsLen int64) error {
	if dataLen != o.size {
		return o.damagedFile(fmt.Sprintf("data file of %d bytes, want %d", dataLen, o.size))
	}
	if want := pairRecordsLen(o.size, o.unit); recordsLen != want {
		return o.damagedFile(fmt.Sprintf("records file of %d bytes, want %d", recordsLen, want))
	}
	hdr := make([]byte, objectHeaderLen)
	if _, err := o.rf.ReadAt(hdr, 0); err != nil {
		return o.readFailed(err)
	}
	if !bytes.Equal(hdr, objectHeaderFormat(o.id, o.size, o.unit, pairFormat)) {
		return o.damagedFile("header not of this object version (or not whole)")
	}
	return nil
}

// anyWritten reports whether the record of any unit is set.
func (o *ObjectFile) anyWritten() (bool, error) {
	recs, err := o.records(0, (o.size+o.unit-1)/o.unit)
	if err != nil {
		return false, err
	}
	for i := 0; i < len(recs); i += recordSize {
		if marked(recs[i:]) {
			return true, nil
		}
	}
	return false, nil
}

// MissingUnits returns how many units' records are not set: 0 when the
// file holds the whole byte string (its bytes are checked only when
// read).
func (o *ObjectFile) MissingUnits() (int64, error) {
	recs, err := o.records(0, (o.size+o.unit-1)/o.unit)
	if err != nil {
		return 0, err
	}
	var missing int64
	for i := 0; i < len(recs); i += recordSize {
		if !marked(recs[i:]) {
			missing++
		}
	}
	return missing, nil
}

// HashData writes the whole data file of a pair, as it is on disk or in
// the page cache (unchecked), to h: for a check of the whole byte string
// against a checksum of its own. A stretch the kernel holds whole in its
// page cache is read from there: a passthrough reader of the file reads
// those same pages, so the check then costs a copy, not a second read of
// the disk beside the reader's (an epoch after a restart read the disk
// twice). Other stretches are read around the page cache where the file
// system allows (O_DIRECT): the bytes are read once more by whoever reads
// them next, but this process does not pay for filling the cache with
// them (zeroing and copying pages was the better part of its cost).
func (o *ObjectFile) HashData(h io.Writer) error {
	buf := alignedBuffer(hashChunk)
	var direct *os.File
	if f, err := os.OpenFile(o.f.Name(), os.O_RDONLY|syscall.O_DIRECT, 0); err == nil {
		defer f.Close()
		if fi, err := f.Stat(); err == nil && IdentityOf(fi) == o.data {
			direct = f
		}
	}
	for off := int64(0); off < o.size; {
		left := min(int64(len(buf)), o.size-off)
		src := io.ReaderAt(o.f)
		if direct != nil && off%objectHeaderPage == 0 && !pagesCached(o.f, off, left) {
			src = direct
		}
		n, err := src.ReadAt(buf, off)
		if n == 0 && err != nil && src == direct && !errors.Is(err, io.EOF) {
			direct = nil // the file system refused this O_DIRECT read: read the rest through the cache
			continue
		}
		if n == 0 && err != nil {
			if errors.Is(err, io.EOF) {
				return o.damagedFile("data file shorter than its length")
			}
			return fmt.Errorf("%w: %w", ErrDirNotReadable, err)
		}
		n = int(min(int64(n), left))
		h.Write(buf[:n])
		off += int64(n)
	}
	return nil
}

// pagesCached reports whether the page cache holds every page of f's
// n bytes at off; false where it cannot tell.
func pagesCached(f *os.File, off, n int64) bool {
	cached, err := cachedPages(f, off, n)
	return err == nil && cached >= uint64((off+n-1)/objectHeaderPage-off/objectHeaderPage+1)
}

// cachedPages is how many pages of f's n bytes at off the page cache
// holds (cachestat(2), Linux 6.5).
func cachedPages(f *os.File, off, n int64) (uint64, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var st unix.Cachestat_t
	r := unix.CachestatRange{Off: uint64(off), Len: uint64(n)}
	if cerr := rc.Control(func(fd uintptr) { err = unix.Cachestat(uint(fd), &r, &st, 0) }); cerr != nil {
		return 0, cerr
	}
	return st.Cache, err
}

// hashChunk is what HashData reads at once.
const hashChunk = 1 << 20

// alignedBuffer returns n bytes starting on a page boundary, as O_DIRECT
// reads want.
func alignedBuffer(n int) []byte {
	b := make([]byte, n+objectHeaderPage)
	skip := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) % objectHeaderPage); r != 0 {
		skip = objectHeaderPage - r
	}
	return b[skip : skip+n : skip+n]
}

// DataIdentity is the identity of a pair's data file.
func (o *ObjectFile) DataIdentity() FileIdentity { return o.data }

// Drop removes the file (a pair whole) as damaged: its bytes failed a
// check of the whole byte string. It returns the error saying so.
func (o *ObjectFile) Drop(why string) error { return o.damagedFile(why) }

// DupData returns the data file of a pair, open for reading on a
// descriptor of its own (closed on exec), whatever is done to o then.
func (o *ObjectFile) DupData() (*os.File, error) { return DupFile(o.f) }

// DupFile returns f on a descriptor of its own, closed on exec.
func DupFile(f *os.File) (*os.File, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, dupErr := -1, error(nil)
	if err := sc.Control(func(raw uintptr) { fd, dupErr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, dupErr
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// PairDataIdentity returns the identity of the data file of the pair
// name, as it is now (the same as one held open means that file is still
// the pair's). It counts as a use of both files.
func (d *Dir) PairDataIdentity(name string) (FileIdentity, error) {
	p, err := d.path(name)
	if err != nil {
		return FileIdentity{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return FileIdentity{}, err
	}
	d.touch(p, fi)
	if rfi, err := os.Stat(p + RecordsSuffix); err == nil {
		d.touch(p+RecordsSuffix, rfi)
	}
	return IdentityOf(fi), nil
}

// removeFile removes the file at p; either half of a pair takes the
// other with it, its records file first.
func removeFile(p string) error {
	data, isRecords := strings.CutSuffix(p, RecordsSuffix)
	if !isRecords {
		_ = os.Remove(p + RecordsSuffix) // a pair's records, if p is its data file
		return os.Remove(p)
	}
	err := os.Remove(p)
	_ = os.Remove(data)
	return err
}
