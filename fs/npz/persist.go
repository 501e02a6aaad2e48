package npz

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/bgbfs/bgbfs/fs/fsname"
)

// IndexFormat is the version of the encoding MarshalBinary writes. It
// changes whenever the encoding or the meaning of a point does: an index
// of another format is built again, never decoded.
const IndexFormat = 1

// ErrIndexMismatch marks an encoded index that decodes but belongs to
// another member than the one it is decoded for.
var ErrIndexMismatch = errors.New("npz: index is of another member")

// maxEncodedWindow bounds a point's deflated window when decoding: a
// stored 32 KiB window deflates to a little over 32 KiB at worst.
const maxEncodedWindow = 64 << 10

// MarshalBinary encodes the index: the member it is of (name, sizes,
// CRC-32 and data offset), the head it keeps, and its access points, in
// varints. It has no checksum of its own: callers that keep it on a disk
// add one.
func (x *Index) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 64+len(x.member.Name)+len(x.head)+len(x.points)*16+x.windowBytes())
	b = binary.AppendUvarint(b, uint64(len(x.member.Name)))
	b = append(b, x.member.Name...)
	b = binary.AppendUvarint(b, uint64(x.member.CompressedSize))
	b = binary.AppendUvarint(b, uint64(x.member.UncompressedSize))
	b = binary.LittleEndian.AppendUint32(b, x.member.CRC32)
	b = binary.AppendUvarint(b, uint64(x.dataOff))
	b = binary.AppendUvarint(b, uint64(x.span))
	b = binary.AppendUvarint(b, uint64(x.rowLead))
	b = binary.AppendUvarint(b, uint64(x.fullWindows))
	b = binary.AppendUvarint(b, uint64(len(x.head)))
	b = append(b, x.head...)
	b = binary.AppendUvarint(b, uint64(len(x.points)))
	var out, bit int64
	for _, p := range x.points {
		b = binary.AppendUvarint(b, uint64(p.out-out))
		b = binary.AppendUvarint(b, uint64(p.bit-bit))
		b = binary.AppendUvarint(b, uint64(len(p.window)))
		b = append(b, p.window...)
		out, bit = p.out, p.bit
	}
	return b, nil
}

func (x *Index) windowBytes() int {
	n := 0
	for _, p := range x.points {
		n += len(p.window)
	}
	return n
}

// UnmarshalIndex decodes an index MarshalBinary encoded, for member m as
// the archive's directory lists it now. It fails with ErrIndexMismatch if
// the index is of a member with another name, size or CRC-32, and with
// ErrCorrupt if the encoding is malformed or its points could not be of
// m's stream. It cannot tell a well-formed index of damaged windows: the
// caller checks the bytes it was stored with.
func UnmarshalIndex(b []byte, m Member) (*Index, error) {
	d := decoder{b: b}
	name := string(d.bytes(maxNameLen))
	x := &Index{member: m}
	csize, usize := d.int(), d.int()
	crc := d.uint32()
	x.dataOff, x.span, x.rowLead = d.int(), d.int(), d.int()
	x.fullWindows = int(d.int())
	x.head = d.bytes(headKeep)
	n := d.int()
	if d.err == nil && n > int64(len(d.b)) {
		d.fail("%d points in %d bytes", n, len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	if name != m.Name || csize != m.CompressedSize || usize != m.UncompressedSize || crc != m.CRC32 {
		return nil, fmt.Errorf("%w: index of %q (%d bytes, %d compressed, CRC-32 %08x), member %q (%d bytes, %d compressed, CRC-32 %08x)",
			ErrIndexMismatch, name, usize, csize, crc, m.Name, m.UncompressedSize, m.CompressedSize, m.CRC32)
	}
	x.points = make([]point, 0, n)
	var out, bit int64
	for i := int64(0); i < n && d.err == nil; i++ {
		do, db := d.int(), d.int()
		w := d.bytes(maxEncodedWindow)
		if i > 0 && do == 0 {
			d.fail("point %d repeats offset %d", i, out)
		}
		out, bit = out+do, bit+db
		x.points = append(x.points, point{out: out, bit: bit, window: w})
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d bytes after the points", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	if err := x.checkShape(); err != nil {
		return nil, err
	}
	x.setMemory()
	return x, nil
}

// checkShape makes sure a decoded index could have been built from its
// member: a point at the stream start, points inside the content and the
// stream, a head no longer than the content.
func (x *Index) checkShape() error {
	m := x.member
	switch {
	case len(x.points) == 0 || x.points[0].out != 0 || x.points[0].bit != 0:
		return fmt.Errorf("%w: index has no point at the stream start", ErrCorrupt)
	case int64(len(x.head)) > m.UncompressedSize:
		return fmt.Errorf("%w: index head of %d bytes, content of %d", ErrCorrupt, len(x.head), m.UncompressedSize)
	case x.dataOff < m.HeaderOffset || x.dataOff > m.HeaderOffset+localLen+2*0xFFFF:
		return fmt.Errorf("%w: index says the data starts at %d, the local header is at %d", ErrCorrupt, x.dataOff, m.HeaderOffset)
	}
	last := x.points[len(x.points)-1]
	if last.out > m.UncompressedSize || last.bit > 8*m.CompressedSize {
		return fmt.Errorf("%w: index point at %d (bit %d) is past the member's end", ErrCorrupt, last.out, last.bit)
	}
	return nil
}

// decoder reads the varints of an encoded index; its first failure sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: index encoding: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) int() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || v > 1<<62 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return int64(v)
}

func (d *decoder) uint32() uint32 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 4 {
		d.fail("truncated")
		return 0
	}
	v := binary.LittleEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *decoder) bytes(max int64) []byte {
	n := d.int()
	if d.err != nil {
		return nil
	}
	if n > max || n > int64(len(d.b)) {
		d.fail("field of %d bytes (at most %d, %d left)", n, max, len(d.b))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return append([]byte(nil), v...)
}

// MarshalBinary encodes the directory: each member's name, method, sizes,
// CRC-32 and local header offset, where the central directory starts, and
// the names of the unusable entries with why. A mount that keeps it does
// not read the archive's tail again.
func (d *Directory) MarshalBinary() ([]byte, error) {
	var b []byte
	b = binary.AppendUvarint(b, uint64(len(d.Members)))
	for _, m := range d.Members {
		b = binary.AppendUvarint(b, uint64(len(m.Name)))
		b = append(b, m.Name...)
		b = binary.AppendUvarint(b, uint64(m.Method))
		b = binary.AppendUvarint(b, uint64(m.CompressedSize))
		b = binary.AppendUvarint(b, uint64(m.UncompressedSize))
		b = binary.LittleEndian.AppendUint32(b, m.CRC32)
		b = binary.AppendUvarint(b, uint64(m.HeaderOffset))
		b = binary.AppendUvarint(b, uint64(m.dirOffset))
	}
	b = binary.AppendUvarint(b, uint64(len(d.Unusable)))
	for _, u := range d.Unusable {
		for _, s := range []string{u.Name, strings.TrimPrefix(u.Err.Error(), ErrUnsupported.Error()+": ")} {
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
	}
	return b, nil
}

// UnmarshalDirectory decodes a directory MarshalBinary encoded, of an
// archive of size bytes, checking what ReadDirectory checks of each
// member: a usable name, a method this package reads, and data that lies
// inside the archive before the central directory.
func UnmarshalDirectory(b []byte, size int64) (*Directory, error) {
	d := decoder{b: b}
	n := d.int()
	if d.err == nil && n > int64(len(b)) {
		d.fail("%d members in %d bytes", n, len(b))
	}
	dir := &Directory{}
	seen := map[string]bool{}
	for i := int64(0); i < n && d.err == nil; i++ {
		m := Member{Name: string(d.bytes(maxNameLen))}
		m.Method = uint16(d.int())
		m.CompressedSize, m.UncompressedSize = d.int(), d.int()
		m.CRC32 = d.uint32()
		m.HeaderOffset, m.dirOffset = d.int(), d.int()
		switch {
		case d.err != nil:
		case fsname.Problem(m.Name) != "" || seen[m.Name]:
			d.fail("member name %q", m.Name)
		case m.Method != Stored && m.Method != Deflated:
			d.fail("member %q has method %d", m.Name, m.Method)
		case m.dirOffset > size || m.HeaderOffset+localLen+int64(len(m.Name)) > m.dirOffset || m.CompressedSize > m.dirOffset:
			d.fail("member %q at %d (%d bytes) does not fit before the directory at %d of %d", m.Name, m.HeaderOffset, m.CompressedSize, m.dirOffset, size)
		case m.Method == Stored && m.CompressedSize != m.UncompressedSize:
			d.fail("stored member %q of %d bytes stores %d", m.Name, m.UncompressedSize, m.CompressedSize)
		}
		seen[m.Name] = true
		dir.Members = append(dir.Members, m)
	}
	u := d.int()
	if d.err == nil && u > int64(len(d.b)) {
		d.fail("%d unusable entries in %d bytes", u, len(d.b))
	}
	for i := int64(0); i < u && d.err == nil; i++ {
		name, why := string(d.bytes(1<<16)), string(d.bytes(1<<16))
		dir.Unusable = append(dir.Unusable, &MemberError{Name: name, Err: fmt.Errorf("%w: %s", ErrUnsupported, why)})
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d bytes after the directory", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	return dir, nil
}
