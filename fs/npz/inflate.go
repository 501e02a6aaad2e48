package npz

import (
	"encoding/binary"
	"fmt"
	"io"
)

const (
	windowSize = 32 << 10 // deflate's maximum distance
	maxMatch   = 258
	// out holds the window and the output decoded between slides. Its
	// size is a power of two, so the decode loop can index it with a
	// mask instead of a bounds check; the spare bytes past it let a
	// two-byte store at any masked index stay in bounds.
	outSize  = 1 << 17
	outMask  = outSize - 1
	outSpare = 8
	// outSlack is the room out keeps past stopMax: the decode loop checks
	// the output limit once per group of up to four literal lookups (two
	// literals each) or one match, and copies matches in 8-byte words
	// that may overrun their end by up to 15 bytes.
	outSlack = 8 + maxMatch + 16 + 30
)

type outBuffer [outSize + outSpare]byte

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

	out *outBuffer
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

	// lit and dist are the current block's tables: the fixed ones, or
	// t's dynLit and dynDist, rebuilt for every dynamic block.
	lit  *litTable
	dist *distTable
	t    *decodeTables
}

// decodeTables is what an inflater builds for each dynamic block (about
// 28 KB). Buffers lends them as it lends out and buf: an inflater is made
// for every span a read inflates, and tables of its own landed on fresh
// heap pages each time, whose first writes (page faults) cost more than
// building the tables.
type decodeTables struct {
	dynLit  litTable
	dynDist distTable
	clen    clenTable
	firsts  literalCodes // scratch for pairLiterals
	pairs   pairScratch
	lengths [maxLit + maxDist]uint8
}

// newInflater returns an inflater over the stream at archive offset base,
// of which it may read limit bytes. first and after size its reads from
// src.
func newInflater(src io.ReaderAt, base, limit int64, first, after int) *inflater {
	return newInflaterWith(src, base, limit, first, after, nil)
}

// newInflaterWith is newInflater with its buffers from bufs, if it has
// them.
func newInflaterWith(src io.ReaderAt, base, limit int64, first, after int, bufs *Buffers) *inflater {
	f := &inflater{
		src:   src,
		base:  base,
		limit: limit,
		chunk: max(first, 1),
		after: max(after, 1),
		pin:   -1,
	}
	bufs.lend(f, first)
	if f.out == nil {
		f.out = new(outBuffer)
	}
	if f.t == nil {
		f.t = new(decodeTables)
	}
	return f
}

// stopMax is the largest stopAt step accepts: whatever the decode loop
// starts below it still fits in out.
func (f *inflater) stopMax() int { return outSize - outSlack }

// seek positions f at a block boundary bit of the stream, with the
// window of output that precedes it.
func (f *inflater) seek(bit int64, window []byte) error {
	f.next = bit >> 3
	f.buf, f.pos = f.buf[:0], 0
	f.bits, f.nbits, f.pad = 0, 0, 0
	f.w = copy(f.out[:outSize], window)
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
	f.w = copy(f.out[:], f.out[drop:f.w])
	f.outBase += int64(drop)
	return drop
}

// load moves the input from the next unconsumed bit on to the front of
// buf and appends the next chunk from src. It reports false at limit or
// on a read error.
func (f *inflater) load() bool {
	if f.err != nil || f.next >= f.limit {
		return false
	}
	// Keep the bytes the bits held in bits came from too: the decode
	// loop reads the input from the next unconsumed bit.
	from := max(0, f.pos-int(f.nbits+7)>>3)
	if f.pin >= 0 {
		from = int(max(0, min(int64(from), f.pin-f.bufStart())))
	}
	keep := copy(f.buf[:cap(f.buf)], f.buf[from:])
	f.pos -= from
	n := int(min(int64(f.chunk), f.limit-f.next))
	if cap(f.buf) < keep+n {
		// Room for the kept input to grow a little (a pinned stretch, or
		// the bytes the bit buffer holds) without a new buffer per read.
		nb := make([]byte, keep, inBufferCap(keep+n+n/4))
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
	if err := buildTable(f.t.clen[:], cl[:], clenSyms[:], clenTableBits, nil); err != nil {
		return fmt.Errorf("code length code: %w", err)
	}
	lengths := f.t.lengths[:nlit+ndist]
	if err := f.readLengths(lengths); err != nil {
		return err
	}
	if lengths[256] == 0 {
		return fmt.Errorf("%w: dynamic block has no end-of-block code", ErrCorrupt)
	}
	if err := buildTable(f.t.dynLit[:], lengths[:nlit], litSyms[:], litTableBits, &f.t.firsts); err != nil {
		return fmt.Errorf("literal/length code: %w", err)
	}
	pairLiterals(&f.t.dynLit, &f.t.firsts, &f.t.pairs)
	if err := buildTable(f.t.dynDist[:], lengths[nlit:], distSyms[:], distTableBits, nil); err != nil {
		return fmt.Errorf("distance code: %w", err)
	}
	f.lit, f.dist = &f.t.dynLit, &f.t.dynDist
	return nil
}

// readLengths reads the code lengths of a dynamic block's codes with the
// code length code in f.t.clen.
func (f *inflater) readLengths(lengths []uint8) error {
	// The bit buffer in locals: a few hundred codes per block, and
	// blocks of float data are short.
	bits, nbits := f.bits, f.nbits
	for i := 0; i < len(lengths); {
		if nbits < clenTableBits+7 {
			f.bits, f.nbits = bits, nbits
			f.refill()
			bits, nbits = f.bits, f.nbits
		}
		e := f.t.clen[bits&(clenTableLen-1)]
		if e&exceptFlag != 0 {
			return fmt.Errorf("%w: invalid code length code", ErrCorrupt)
		}
		bits >>= e & 63
		nbits -= uint(e & 63)
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
			rep, val = 3+int(bits&3), lengths[i-1]
			bits >>= 2
			nbits -= 2
		case 17:
			rep = 3 + int(bits&7)
			bits >>= 3
			nbits -= 3
		default:
			rep = 11 + int(bits&0x7F)
			bits >>= 7
			nbits -= 7
		}
		if i+rep > len(lengths) {
			return fmt.Errorf("%w: code length repeat runs past the %d lengths", ErrCorrupt, len(lengths))
		}
		for range rep {
			lengths[i] = val
			i++
		}
	}
	f.bits, f.nbits = bits, nbits
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

// copiedSince reports whether byte b was copied by a match at or after
// since. b must be within refRing of the output's end.
func (t *refTracker) copiedSince(b, since int64) bool {
	return t.last[b&(refRing-1)] >= since
}
