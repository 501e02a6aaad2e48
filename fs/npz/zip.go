// Package npz gives random access to the members of zip archives such as
// numpy's .npz files, read through an io.ReaderAt (in bgbfs, ranged GETs
// through the block cache).
//
// ReadDirectory reads an archive's directory in one read of its tail.
// A stored member is read in place, from Member.DataOffset on. A deflated
// member is inflated once by BuildIndex, which records an access point
// (a block boundary's bit offset and the 32 KiB of output before it)
// about every span bytes of output, as zlib's zran example does; a later
// ReadAt inflates only from the nearest access point to the end of the
// bytes asked for.
package npz

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/bgbfs/bgbfs/fs/fsname"
)

// Compression methods.
const (
	Stored   uint16 = 0
	Deflated uint16 = 8
)

var (
	// ErrFormat marks an archive whose structure is malformed.
	ErrFormat = errors.New("npz: malformed zip archive")
	// ErrUnsupported marks a member that cannot be served as a file, or
	// an archive using zip features this package does not implement.
	ErrUnsupported = errors.New("npz: unsupported member")
	// ErrCorrupt marks a deflate stream that cannot be decoded.
	ErrCorrupt = errors.New("npz: corrupt deflate stream")
	// ErrChecksum marks a member whose content disagrees with the CRC-32
	// or size in its directory entry.
	ErrChecksum = errors.New("npz: checksum mismatch")
)

const (
	sigEOCD         = 0x06054b50
	sigZip64Locator = 0x07064b50
	sigZip64EOCD    = 0x06064b50
	sigCentral      = 0x02014b50
	sigLocal        = 0x04034b50

	eocdLen         = 22
	zip64LocatorLen = 20
	zip64EOCDLen    = 56
	centralLen      = 46
	localLen        = 30
	maxCommentLen   = 0xFFFF
	zip64ExtraID    = 0x0001

	// maxDirSize bounds the memory a directory can make us allocate.
	// An .npz's directory is a few hundred bytes; 16 MiB holds about
	// 200,000 entries.
	maxDirSize = 16 << 20

	// maxDeflateRatio is the most output a deflate stream can produce per
	// input byte: a 258-byte match coded in 2 bits.
	maxDeflateRatio = 1032

	maxNameLen = fsname.MaxLen
)

// Member is one entry of an archive's central directory.
type Member struct {
	Name             string
	Method           uint16 // Stored or Deflated
	CompressedSize   int64
	UncompressedSize int64
	CRC32            uint32
	HeaderOffset     int64 // archive offset of the local file header

	// dirOffset is where the central directory starts, which member
	// data must end before; 0 for a Member not from ReadDirectory.
	dirOffset int64
}

// MemberError says why a member cannot be served as a file.
type MemberError struct {
	Name string
	Err  error
}

func (e *MemberError) Error() string { return fmt.Sprintf("member %q: %v", e.Name, e.Err) }
func (e *MemberError) Unwrap() error { return e.Err }

// Directory is the readable content of an archive.
type Directory struct {
	// Members are the entries that can be served as files, in
	// directory order.
	Members []Member
	// Unusable are the entries that cannot: encrypted, compressed with
	// a method other than stored or deflate, named with a '/' or NUL,
	// named "", "." or "..", named longer than 255 bytes, or sharing
	// their name with another entry (every entry with that name is
	// unusable, since none is more right than another). Each wraps
	// ErrUnsupported. They do not make the archive fail, so a directory
	// entry or stray file in an otherwise good archive hides only itself.
	Unusable []*MemberError
}

// ReadDirectory reads the directory of the zip archive r of size bytes:
// the end of central directory record, the Zip64 locator and end record
// when present, and the central directory, usually all in one read of the
// last 64 KiB + 22 bytes. It fails with an error wrapping ErrFormat if the
// structure is malformed (bad signatures, truncated records, counts,
// sizes or offsets that do not fit in the file), and with one wrapping
// ErrUnsupported for multi-disk archives and central directories over
// 16 MiB. Data prepended to an archive (self-extractors) is malformed
// here: member offsets would not be archive offsets.
func ReadDirectory(r io.ReaderAt, size int64) (*Directory, error) {
	if size < eocdLen {
		return nil, fmt.Errorf("%w: %d bytes is too small for a zip archive", ErrFormat, size)
	}
	t, err := readTail(r, size)
	if err != nil {
		return nil, err
	}
	end, err := t.endRecords()
	if err != nil {
		return nil, err
	}
	if err := end.check(); err != nil {
		return nil, err
	}
	cd, err := t.region(int64(end.cdOff), int(end.cdSize), "central directory")
	if err != nil {
		return nil, err
	}
	return parseDirectory(cd, end.entries, int64(end.cdOff))
}

// archiveTail is the last 64 KiB + 22 bytes of an archive (all of a
// small one), where the end records and usually the central directory
// are, and a reader of the archive for what lies before it.
type archiveTail struct {
	r    io.ReaderAt
	tail []byte
	off  int64 // of tail in the archive
}

func readTail(r io.ReaderAt, size int64) (archiveTail, error) {
	off := max(0, size-(eocdLen+maxCommentLen))
	t := archiveTail{r: r, tail: make([]byte, size-off), off: off}
	return t, readFull(r, t.tail, off, "end of archive")
}

// region returns the n bytes at off: from the tail, or read.
func (t archiveTail) region(off int64, n int, what string) ([]byte, error) {
	if off >= t.off {
		return t.tail[off-t.off : off-t.off+int64(n)], nil
	}
	b := make([]byte, n)
	return b, readFull(t.r, b, off, what)
}

// endRecords is what the end of central directory record says, with the
// Zip64 end record's values where there is one.
type endRecords struct {
	disk, cdDisk                        uint32
	entriesHere, entries, cdSize, cdOff uint64
	// dirEnd is where the central directory must end: at the first end
	// record.
	dirEnd int64
}

// endRecords finds and reads the end of central directory record and,
// if a Zip64 locator precedes it, the Zip64 end record.
func (t archiveTail) endRecords() (endRecords, error) {
	i := findEOCD(t.tail)
	if i < 0 {
		return endRecords{}, fmt.Errorf("%w: no end of central directory record", ErrFormat)
	}
	eocdOff := t.off + int64(i)
	e := t.tail[i:]
	end := endRecords{
		disk:        uint32(le16(e[4:])),
		cdDisk:      uint32(le16(e[6:])),
		entriesHere: uint64(le16(e[8:])),
		entries:     uint64(le16(e[10:])),
		cdSize:      uint64(le32(e[12:])),
		cdOff:       uint64(le32(e[16:])),
		dirEnd:      eocdOff,
	}
	locOff := eocdOff - zip64LocatorLen
	if locOff < 0 {
		return end, nil
	}
	loc, err := t.region(locOff, zip64LocatorLen, "Zip64 locator")
	if err != nil || le32(loc) != sigZip64Locator {
		return end, err
	}
	return t.zip64End(end, loc, locOff)
}

// zip64End reads the Zip64 end record the locator loc at locOff points
// to, and returns end with its values.
func (t archiveTail) zip64End(end endRecords, loc []byte, locOff int64) (endRecords, error) {
	z64Off := le64(loc[8:])
	if le32(loc[4:]) != 0 || le32(loc[16:]) > 1 {
		return end, fmt.Errorf("%w: multi-disk archives", ErrUnsupported)
	}
	if z64Off > uint64(locOff) || uint64(locOff)-z64Off < zip64EOCDLen {
		return end, fmt.Errorf("%w: Zip64 end record offset %d outside the archive", ErrFormat, z64Off)
	}
	z, err := t.region(int64(z64Off), zip64EOCDLen, "Zip64 end record")
	if err != nil {
		return end, err
	}
	if le32(z) != sigZip64EOCD {
		return end, fmt.Errorf("%w: bad Zip64 end record signature at offset %d", ErrFormat, z64Off)
	}
	if n := le64(z[4:]); n < zip64EOCDLen-12 || n > uint64(locOff)-z64Off-12 {
		return end, fmt.Errorf("%w: Zip64 end record length %d", ErrFormat, n)
	}
	// Fields of the classic record that are not saturated must agree
	// with their Zip64 versions.
	z64 := [...]struct{ classic, sat, v uint64 }{
		{uint64(end.disk), 0xFFFF, uint64(le32(z[16:]))},
		{uint64(end.cdDisk), 0xFFFF, uint64(le32(z[20:]))},
		{end.entriesHere, 0xFFFF, le64(z[24:])},
		{end.entries, 0xFFFF, le64(z[32:])},
		{end.cdSize, 0xFFFFFFFF, le64(z[40:])},
		{end.cdOff, 0xFFFFFFFF, le64(z[48:])},
	}
	for _, f := range z64 {
		if f.classic != f.sat && f.classic != f.v {
			return end, fmt.Errorf("%w: end of central directory record and Zip64 end record disagree", ErrFormat)
		}
	}
	return endRecords{
		disk: uint32(z64[0].v), cdDisk: uint32(z64[1].v),
		entriesHere: z64[2].v, entries: z64[3].v, cdSize: z64[4].v, cdOff: z64[5].v,
		dirEnd: int64(z64Off),
	}, nil
}

// check reports end records that this reader cannot use: another disk's,
// a central directory that does not end at them or is too large, or more
// entries than it can hold.
func (end endRecords) check() error {
	if end.disk != 0 || end.cdDisk != 0 || end.entriesHere != end.entries {
		return fmt.Errorf("%w: multi-disk archives", ErrUnsupported)
	}
	if end.cdOff > uint64(end.dirEnd) || end.cdSize != uint64(end.dirEnd)-end.cdOff {
		// Every writer puts the central directory right before the end
		// records; a gap means wrong offsets or data prepended to
		// the archive, which archive offsets would then not locate.
		return fmt.Errorf("%w: central directory at %d, %d bytes, does not end at the end records at %d", ErrFormat, end.cdOff, end.cdSize, end.dirEnd)
	}
	if end.cdSize > maxDirSize {
		return fmt.Errorf("%w: central directory of %d bytes is larger than %d", ErrUnsupported, end.cdSize, maxDirSize)
	}
	if end.entries > end.cdSize/centralLen {
		return fmt.Errorf("%w: %d entries cannot fit in a central directory of %d bytes", ErrFormat, end.entries, end.cdSize)
	}
	return nil
}

// parseDirectory parses the entries of the central directory cd, at
// cdOff in the archive: members with a name that cannot be a file name,
// or that another member has too, are unusable.
func parseDirectory(cd []byte, entries uint64, cdOff int64) (*Directory, error) {
	dir := &Directory{Members: make([]Member, 0, entries)}
	seen := make(map[string]int, entries) // name -> index in Members, or -1 once unusable
	for k := range entries {
		m, rest, problem, err := parseCentral(cd, cdOff)
		if err != nil {
			return nil, fmt.Errorf("central directory entry %d: %w", k, err)
		}
		cd = rest
		if problem == "" {
			problem = fsname.Problem(m.Name)
		}
		if problem == "" {
			if j, dup := seen[m.Name]; dup {
				problem = "duplicate name"
				if j >= 0 {
					dir.Members[j].Name = "" // removed below
					dir.Unusable = append(dir.Unusable, &MemberError{m.Name, fmt.Errorf("%w: duplicate name", ErrUnsupported)})
				}
			}
		}
		if problem != "" {
			seen[m.Name] = -1
			dir.Unusable = append(dir.Unusable, &MemberError{m.Name, fmt.Errorf("%w: %s", ErrUnsupported, problem)})
			continue
		}
		seen[m.Name] = len(dir.Members)
		dir.Members = append(dir.Members, m)
	}
	// Drop members found to be duplicates after they were added; their
	// names were cleared, and no usable member has an empty name.
	usable := dir.Members[:0]
	for _, m := range dir.Members {
		if m.Name != "" {
			usable = append(usable, m)
		}
	}
	dir.Members = usable
	return dir, nil
}

// findEOCD returns the offset in tail of the last end of central
// directory signature whose comment fits in tail, or -1.
func findEOCD(tail []byte) int {
	for i := len(tail) - eocdLen; i >= 0; i-- {
		if le32(tail[i:]) == sigEOCD && i+eocdLen+int(le16(tail[i+20:])) <= len(tail) {
			return i
		}
	}
	return -1
}

// parseCentral parses the central directory entry at the start of b,
// which lies at archive offset cdOff+consumed (for bounds: member data
// must lie before the central directory). A problem is a reason the
// member is unusable; an error, a malformed entry.
func parseCentral(b []byte, cdOff int64) (m Member, rest []byte, problem string, err error) {
	if len(b) < centralLen {
		return m, nil, "", fmt.Errorf("%w: truncated central directory", ErrFormat)
	}
	if le32(b) != sigCentral {
		return m, nil, "", fmt.Errorf("%w: bad central directory entry signature", ErrFormat)
	}
	flags := le16(b[8:])
	m.Method = le16(b[10:])
	m.CRC32 = le32(b[16:])
	csize, usize := uint64(le32(b[20:])), uint64(le32(b[24:]))
	nameLen, extraLen, commentLen := int(le16(b[28:])), int(le16(b[30:])), int(le16(b[32:]))
	diskStart := uint64(le16(b[34:]))
	off := uint64(le32(b[42:]))
	n := centralLen + nameLen + extraLen + commentLen
	if n > len(b) {
		return m, nil, "", fmt.Errorf("%w: truncated central directory", ErrFormat)
	}
	m.Name = string(b[centralLen : centralLen+nameLen])
	extra := b[centralLen+nameLen : centralLen+nameLen+extraLen]
	rest = b[n:]

	// Zip64 extended information: each field is present only when its
	// classic field is saturated, in this order.
	for len(extra) >= 4 {
		id, size := le16(extra), int(le16(extra[2:]))
		if size > len(extra)-4 {
			break // tolerate trailing padding, as other readers do
		}
		data := extra[4 : 4+size]
		extra = extra[4+size:]
		if id != zip64ExtraID {
			continue
		}
		for _, f := range [...]struct {
			v    *uint64
			sat  uint64
			size int
		}{{&usize, 0xFFFFFFFF, 8}, {&csize, 0xFFFFFFFF, 8}, {&off, 0xFFFFFFFF, 8}, {&diskStart, 0xFFFF, 4}} {
			if *f.v != f.sat {
				continue
			}
			if len(data) < f.size {
				return m, nil, "", fmt.Errorf("%w: %q: Zip64 extra field too short", ErrFormat, m.Name)
			}
			if f.size == 8 {
				*f.v = le64(data)
			} else {
				*f.v = uint64(le32(data))
			}
			data = data[f.size:]
		}
		break
	}

	if diskStart != 0 {
		return m, nil, "", fmt.Errorf("%w: %q starts on disk %d", ErrUnsupported, m.Name, diskStart)
	}
	// Member data lies between its local header and the directory.
	if off > uint64(cdOff) || csize > uint64(cdOff)-off || uint64(cdOff)-off-csize < localLen {
		return m, nil, "", fmt.Errorf("%w: %q: %d bytes at offset %d do not fit before the central directory at %d", ErrFormat, m.Name, csize, off, cdOff)
	}
	m.CompressedSize, m.UncompressedSize, m.HeaderOffset = int64(csize), int64(usize), int64(off)
	m.dirOffset = cdOff
	switch {
	case flags&0x41 != 0:
		problem = "encrypted"
	case m.Method == Stored:
		if csize != usize {
			return m, nil, "", fmt.Errorf("%w: stored member %q has compressed size %d but size %d", ErrFormat, m.Name, csize, usize)
		}
	case m.Method == Deflated:
		if usize/maxDeflateRatio > csize {
			return m, nil, "", fmt.Errorf("%w: %q claims %d bytes inflated from %d, more than deflate can encode", ErrFormat, m.Name, usize, csize)
		}
	default:
		problem = fmt.Sprintf("compression method %d", m.Method)
	}
	return m, rest, problem, nil
}

// DataOffset reads m's local file header and returns the archive offset
// of m's first data byte. The local header's extra field need not match
// the central directory's (numpy writes a Zip64 extra field in local
// headers only), but its name must. For a Member from ReadDirectory it
// also checks that the data ends before the central directory.
func (m Member) DataOffset(r io.ReaderAt) (int64, error) {
	b := make([]byte, localLen+len(m.Name))
	if err := readFull(r, b, m.HeaderOffset, "local file header of "+m.Name); err != nil {
		return 0, err
	}
	if le32(b) != sigLocal {
		return 0, fmt.Errorf("%w: bad local file header signature for %q at offset %d", ErrFormat, m.Name, m.HeaderOffset)
	}
	nameLen, extraLen := int(le16(b[26:])), int(le16(b[28:]))
	if nameLen != len(m.Name) || string(b[localLen:]) != m.Name {
		return 0, fmt.Errorf("%w: local file header at offset %d names another member than %q", ErrFormat, m.HeaderOffset, m.Name)
	}
	off := m.HeaderOffset + localLen + int64(nameLen) + int64(extraLen)
	if m.dirOffset > 0 && off+m.CompressedSize > m.dirOffset {
		return 0, fmt.Errorf("%w: data of %q, %d bytes at offset %d, runs into the central directory at %d", ErrFormat, m.Name, m.CompressedSize, off, m.dirOffset)
	}
	return off, nil
}

// clip limits a read of p at off to a content of size bytes, returning
// io.EOF if that shortens it.
func clip(p []byte, off, size int64) ([]byte, error) {
	switch {
	case off < 0:
		return nil, fmt.Errorf("npz: negative offset %d", off)
	case off >= size:
		if len(p) == 0 {
			return nil, nil
		}
		return nil, io.EOF
	case int64(len(p)) > size-off:
		return p[:size-off], io.EOF
	}
	return p, nil
}

// readFull reads len(p) bytes at off, turning a short read into an error
// (a ReaderAt may return io.EOF with a full read at the end).
func readFull(r io.ReaderAt, p []byte, off int64, what string) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("npz: reading %s (%d bytes at offset %d): %w", what, len(p), off, err)
}

func le16(b []byte) uint16 { return binary.LittleEndian.Uint16(b) }
func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
func le64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }
