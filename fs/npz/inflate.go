package npz

import (
	"encoding/binary"
	"fmt"
	"io"
)

const (
	windowSize = 32 << 10 // deflate's maximum distance
	maxMatch   = 258
)

type blockState uint8

const (
	atHeader blockState = iota // at a block boundary: the only resumable state an index records
	inStored
	inHuffman
	streamDone
)

// order of the code length code lengths in a dynamic block header.
var clenOrder = [numCLSyms]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}

// inflater is a resumable RFC 1951 decoder. It reads the compressed
// stream from src in chunks and decodes into out, where out[:w] holds
// the history matches may refer to followed by the output not yet taken
// by the caller. The caller drives it with step, takes output, and calls
// slide to make room, keeping the last 32 KiB.
//
// It can start at any block boundary given the bit offset and the
// preceding window, which is what makes random access through an Index
// possible.
type inflater struct {
	src   io.ReaderAt
	base  int64 // archive offset of stream byte 0
	limit int64 // stream bytes that may be read: the end of the member, or of what a ReadAt needs
	next  int64 // stream offset of the byte after buf
	chunk int   // size of the next read from src
	after int   // size of reads after the next one
	buf   []byte
	pos   int
	err   error // read error, reported by step

	// bits holds nbits unconsumed input bits, LSB first. Bits above
	// nbits may hold copies of the next input bits (see refill), never
	// anything else. pad counts zero bits appended at the end of the
	// readable input so lookahead never fails; consuming one of them
	// (nbits < pad) means the stream is truncated.
	bits  uint64
	nbits uint
	pad   uint

	out []byte
	w   int
	// outBase is the content offset of out[0] (for reference tracking).
	outBase int64
	// refs, if set, is told of every match, so an index build can find
	// which bytes of history a stretch of output copies.
	refs *refTracker
	// pin, if not negative, is a stream offset from which load keeps the
	// input, consumed or not, so that it can be decoded again (an index
	// build checks each access point by decoding from it).
	pin int64

	state  blockState
	final  bool
	stored int // bytes left in the current stored block

	lit, dist       []uint32
	dynLit, dynDist []uint32 // storage for dynamic tables, reused across blocks
	clen            []uint32
	lengths         [maxLit + maxDist]uint8
}

// newInflater returns an inflater over the stream at archive offset base,
// of which it may read limit bytes, with room for outSpace bytes of new
// output beyond the window. first and after size its reads from src.
func newInflater(src io.ReaderAt, base, limit int64, outSpace, first, after int) *inflater {
	return &inflater{
		src:   src,
		base:  base,
		limit: limit,
		chunk: max(first, 1),
		after: max(after, 1),
		out:   make([]byte, windowSize+outSpace+maxMatch),
		pin:   -1,
	}
}

// stopMax is the largest stopAt step accepts: a match started below it
// still fits in out.
func (f *inflater) stopMax() int { return len(f.out) - maxMatch }

// seek positions f at a block boundary bit of the stream, with the
// window of output that precedes it.
func (f *inflater) seek(bit int64, window []byte) error {
	f.next = bit >> 3
	f.buf, f.pos = f.buf[:0], 0
	f.bits, f.nbits, f.pad = 0, 0, 0
	f.w = copy(f.out, window)
	f.outBase = 0
	f.state, f.final = atHeader, false
	if skip := uint(bit & 7); skip > 0 {
		f.refill()
		if f.err != nil {
			return f.err
		}
		if f.nbits < skip+f.pad {
			return fmt.Errorf("%w: access point at bit %d is past the end of the data", ErrCorrupt, bit)
		}
		f.bits >>= skip
		f.nbits -= skip
	}
	return nil
}

// bitPos is the stream offset, in bits, of the next unconsumed bit.
func (f *inflater) bitPos() int64 {
	return f.next*8 - int64(len(f.buf)-f.pos)*8 - int64(f.nbits) + int64(f.pad)
}

// slide drops all but the last window of output from out and returns
// the number of bytes dropped.
func (f *inflater) slide() int {
	drop := f.w - windowSize
	if drop <= 0 {
		return 0
	}
	f.w = copy(f.out, f.out[drop:f.w])
	f.outBase += int64(drop)
	return drop
}

// load moves the unread input to the front of buf and appends the next
// chunk from src. It reports false at limit or on a read error.
func (f *inflater) load() bool {
	if f.err != nil || f.next >= f.limit {
		return false
	}
	from := f.pos
	if f.pin >= 0 {
		from = int(max(0, min(int64(f.pos), f.pin-f.bufStart())))
	}
	keep := copy(f.buf[:cap(f.buf)], f.buf[from:])
	f.pos -= from
	n := int(min(int64(f.chunk), f.limit-f.next))
	if cap(f.buf) < keep+n {
		nb := make([]byte, keep, keep+n)
		copy(nb, f.buf[:keep])
		f.buf = nb
	}
	f.buf = f.buf[:keep+n]
	if err := readFull(f.src, f.buf[keep:], f.base+f.next, "compressed data"); err != nil {
		f.err = err
		f.buf = f.buf[:keep]
		return false
	}
	f.next += int64(n)
	f.chunk = f.after
	return true
}

// bufStart is the stream offset of buf[0].
func (f *inflater) bufStart() int64 { return f.next - int64(len(f.buf)) }

// buffered returns the input held from stream offset off up to next, and
// whether it is all held (pin keeps it).
func (f *inflater) buffered(off int64) ([]byte, bool) {
	start := f.bufStart()
	if off < start || off > f.next {
		return nil, false
	}
	return f.buf[off-start:], true
}

// refill tops up bits to at least 56 bits. The fast path loads 8 bytes
// at once and counts only the whole bytes that fit; the bytes it loaded
// but did not count are the next input, so loading them again later (an
// OR of identical bits) is harmless.
func (f *inflater) refill() {
	if f.pos+8 <= len(f.buf) {
		f.bits |= binary.LittleEndian.Uint64(f.buf[f.pos:]) << f.nbits
		f.pos += int(63-f.nbits) >> 3
		f.nbits |= 56
		return
	}
	f.refillSlow()
}

func (f *inflater) refillSlow() {
	if len(f.buf)-f.pos < 8 && f.load() && f.pos+8 <= len(f.buf) {
		f.refill()
		return
	}
	for f.nbits < 56 {
		if f.pos < len(f.buf) {
			f.bits |= uint64(f.buf[f.pos]) << f.nbits
			f.pos++
		} else {
			f.pad += 8
		}
		f.nbits += 8
	}
}

// need makes at least n (at most 56) bits available.
func (f *inflater) need(n uint) {
	if f.nbits < n {
		f.refill()
	}
}

func (f *inflater) take(n uint) uint32 {
	v := uint32(f.bits & (1<<n - 1))
	f.bits >>= n
	f.nbits -= n
	return v
}

// step decodes until out holds stopAt bytes, the current block ends or
// the stream ends, so the caller sees every block boundary in state
// atHeader.
func (f *inflater) step(stopAt int) error {
	start := f.bitPos()
	var err error
	for err == nil && f.w < stopAt {
		switch f.state {
		case atHeader:
			err = f.header()
			continue
		case inStored:
			err = f.copyStored(stopAt)
		case inHuffman:
			err = f.huffman(stopAt)
		}
		break
	}
	if f.err != nil {
		return f.err
	}
	if f.nbits < f.pad {
		return fmt.Errorf("%w: stream truncated (block at bit %d runs past byte %d)", ErrCorrupt, start, f.limit)
	}
	return err
}

func (f *inflater) header() error {
	if f.final {
		f.state = streamDone
		return nil
	}
	f.need(3)
	f.final = f.take(1) == 1
	switch f.take(2) {
	case 0:
		f.take(f.nbits & 7) // stored blocks start at a byte boundary
		f.need(32)
		n, nn := f.take(16), f.take(16)
		if n != ^nn&0xFFFF {
			return fmt.Errorf("%w: stored block length %d does not match its complement %d", ErrCorrupt, n, nn)
		}
		f.stored = int(n)
		f.state = inStored
	case 1:
		f.lit, f.dist = fixedLit, fixedDist
		f.state = inHuffman
	case 2:
		if err := f.dynamicHeader(); err != nil {
			return err
		}
		f.state = inHuffman
	default:
		return fmt.Errorf("%w: reserved block type 3", ErrCorrupt)
	}
	return nil
}

func (f *inflater) dynamicHeader() error {
	f.need(14)
	nlit := int(f.take(5)) + 257
	ndist := int(f.take(5)) + 1
	nclen := int(f.take(4)) + 4
	if nlit > maxLit || ndist > maxDist {
		return fmt.Errorf("%w: dynamic block declares %d literal/length and %d distance codes", ErrCorrupt, nlit, ndist)
	}
	var cl [numCLSyms]uint8
	for i := range nclen {
		f.need(3)
		cl[clenOrder[i]] = uint8(f.take(3))
	}
	var err error
	if f.clen, err = buildTable(f.clen, cl[:], clenSyms[:], clenRoot); err != nil {
		return fmt.Errorf("code length code: %w", err)
	}
	lengths := f.lengths[:nlit+ndist]
	for i := 0; i < len(lengths); {
		f.need(clenRoot + 7)
		e := f.clen[f.bits&(1<<clenRoot-1)]
		if e&kindMask == kindBad {
			return fmt.Errorf("%w: invalid code length code", ErrCorrupt)
		}
		f.take(uint(e & entryLenMask))
		sym := e >> valueShift
		if sym < 16 {
			lengths[i] = uint8(sym)
			i++
			continue
		}
		var rep int
		var val uint8
		switch sym {
		case 16:
			if i == 0 {
				return fmt.Errorf("%w: repeat of a code length with none before it", ErrCorrupt)
			}
			rep, val = 3+int(f.take(2)), lengths[i-1]
		case 17:
			rep = 3 + int(f.take(3))
		default:
			rep = 11 + int(f.take(7))
		}
		if i+rep > len(lengths) {
			return fmt.Errorf("%w: code length repeat runs past the %d lengths", ErrCorrupt, len(lengths))
		}
		for range rep {
			lengths[i] = val
			i++
		}
	}
	if lengths[256] == 0 {
		return fmt.Errorf("%w: dynamic block has no end-of-block code", ErrCorrupt)
	}
	if f.dynLit, err = buildTable(f.dynLit, lengths[:nlit], litSyms[:], litRoot); err != nil {
		return fmt.Errorf("literal/length code: %w", err)
	}
	if f.dynDist, err = buildTable(f.dynDist, lengths[nlit:], distSyms[:], distRoot); err != nil {
		return fmt.Errorf("distance code: %w", err)
	}
	f.lit, f.dist = f.dynLit, f.dynDist
	return nil
}

func (f *inflater) copyStored(stopAt int) error {
	for f.stored > 0 && f.w < stopAt {
		if f.nbits >= 8 {
			// Whole bytes already in the accumulator come first.
			f.out[f.w] = byte(f.take(8))
			f.w++
			f.stored--
			continue
		}
		f.bits = 0 // drop the lookahead copies: buf is read directly now
		if f.pos == len(f.buf) && !f.load() {
			if f.err != nil {
				return f.err
			}
			return fmt.Errorf("%w: stream truncated inside a stored block", ErrCorrupt)
		}
		n := copy(f.out[f.w:min(stopAt, f.w+f.stored)], f.buf[f.pos:])
		f.pos += n
		f.w += n
		f.stored -= n
	}
	if f.stored == 0 {
		f.state = atHeader
	}
	return nil
}

// huffman decodes a compressed block into out until stopAt or the end of
// the block. It keeps the bit buffer in locals: the loop is the hot path
// of every read.
func (f *inflater) huffman(stopAt int) error {
	out, w := f.out, f.w
	bits, nbits := f.bits, f.nbits
	lit, dist := f.lit, f.dist
	var err error
	for w < stopAt {
		// A refill leaves at least 56 bits: enough for several
		// literals (at most 15 bits each) before the next one.
		if nbits < maxCodeLen {
			if f.pos+8 <= len(f.buf) {
				bits |= binary.LittleEndian.Uint64(f.buf[f.pos:]) << nbits
				f.pos += int(63-nbits) >> 3
				nbits |= 56
			} else {
				f.bits, f.nbits = bits, nbits
				f.refillSlow()
				bits, nbits = f.bits, f.nbits
			}
		}
		e := lit[bits&(1<<litRoot-1)]
		if e&kindMask == kindLink {
			e = lit[e>>valueShift+uint32(bits>>litRoot)&(1<<(e>>extraShift&0xF)-1)]
		}
		n := uint(e & entryLenMask)
		bits >>= n
		nbits -= n
		switch e & kindMask {
		case kindLit:
			out[w] = byte(e >> valueShift)
			w++
			// Literals come in runs (float data is mostly literals):
			// while the bits for a root-table code are at hand, decode
			// the next one here. out has room for a match past stopAt,
			// so a literal past it is safe; callers take what they need.
			for nbits >= litRoot {
				e = lit[bits&(1<<litRoot-1)]
				if e&kindMask != kindLit {
					break
				}
				n = uint(e & entryLenMask)
				bits >>= n
				nbits -= n
				out[w] = byte(e >> valueShift)
				w++
			}
			continue
		case kindBase:
		case kindEOB:
			f.state = atHeader
			f.bits, f.nbits, f.w = bits, nbits, w
			return nil
		default:
			err = fmt.Errorf("%w: invalid literal/length code", ErrCorrupt)
		}
		if err != nil {
			break
		}
		// The rest of the pair: 5 extra length bits, 15+13 of distance.
		if nbits < 33 {
			if f.pos+8 <= len(f.buf) {
				bits |= binary.LittleEndian.Uint64(f.buf[f.pos:]) << nbits
				f.pos += int(63-nbits) >> 3
				nbits |= 56
			} else {
				f.bits, f.nbits = bits, nbits
				f.refillSlow()
				bits, nbits = f.bits, f.nbits
			}
		}
		x := uint(e>>extraShift) & 0xF
		length := int(e>>valueShift) + int(bits&(1<<x-1))
		bits >>= x
		nbits -= x

		e = dist[bits&(1<<distRoot-1)]
		if e&kindMask == kindLink {
			e = dist[e>>valueShift+uint32(bits>>distRoot)&(1<<(e>>extraShift&0xF)-1)]
		}
		if e&kindMask != kindBase {
			err = fmt.Errorf("%w: invalid distance code", ErrCorrupt)
			break
		}
		n = uint(e & entryLenMask)
		bits >>= n
		nbits -= n
		x = uint(e>>extraShift) & 0xF
		d := int(e>>valueShift) + int(bits&(1<<x-1))
		bits >>= x
		nbits -= x
		if d > w {
			err = fmt.Errorf("%w: distance %d reaches before the %d bytes of history", ErrCorrupt, d, w)
			break
		}
		if f.refs != nil {
			f.refs.mark(f.outBase+int64(w), d, length)
		}
		if d >= length {
			copy(out[w:w+length], out[w-d:])
			w += length
			continue
		}
		// Overlapping match: the pattern repeats with period d, so
		// each copy can take everything written since the source
		// start, doubling the copied run.
		end, src := w+length, w-d
		for w < end {
			w += copy(out[w:end], out[src:w])
		}
	}
	f.bits, f.nbits, f.w = bits, nbits, w
	return err
}

// refRing is how many bytes of output a refTracker remembers: an access
// point's use of its history is known 32 KiB of output after it, and it
// must be read off before the ring wraps onto the history (checked 32 KiB
// later still, with room to spare).
const refRing = 128 << 10

// refTracker remembers, for each of the last refRing bytes of output, the
// latest output offset whose match copied it. A byte of the history of an
// access point at out is needed by a decoder starting there only if a
// match at out or later copies it; rapidgzip keeps such "sparse" windows.
type refTracker struct {
	last []int64
}

func newRefTracker() *refTracker {
	t := &refTracker{last: make([]int64, refRing)}
	for i := range t.last {
		t.last[i] = -1
	}
	return t
}

// mark records a match at output offset at copying length bytes from
// distance d back. Of an overlapping match (d < length) only the first d
// bytes are history; the rest is its own output.
func (t *refTracker) mark(at int64, d, length int) {
	from := at - int64(d)
	for b := from; b < from+int64(min(d, length)); b++ {
		t.last[b&(refRing-1)] = at
	}
}

// copiedSince reports whether byte b was copied by a match at or after
// since. b must be within refRing of the output's end.
func (t *refTracker) copiedSince(b, since int64) bool {
	return t.last[b&(refRing-1)] >= since
}
