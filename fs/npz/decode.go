package npz

import (
	"encoding/binary"
	"fmt"
	"unsafe"
)

// runEnd says why decodeRun returned.
type runEnd uint8

const (
	runStopped     runEnd = iota // out reached stopAt
	runInput                     // fewer than 8 bytes of input left
	runBlockEnd                  // end of block
	runBadLitLen                 // an invalid literal/length code
	runBadDist                   // an invalid distance code
	runBadDistance               // a distance before the start of the history
)

// huffman decodes a compressed block into out until stopAt or the end of
// the block. decodeRun does the work straight from buf; when it stops
// short of the end of buf (at most 15 bytes before) it loads the next
// chunk, and at the end of the data it decodes the last bytes from a copy
// padded with zeros, long enough that decodeRun gets past them.
func (f *inflater) huffman(stopAt int) error {
	if f.nbits < f.pad {
		return nil // past the end already: step reports it
	}
	// load keeps the bytes the bit buffer holds bits of: the next
	// unconsumed bit is still in buf.
	bit := f.pos*8 - int(f.nbits) + int(f.pad)
	for {
		next, w, end, d := f.decodeRun(f.buf, bit, stopAt)
		f.w = w
		if end != runInput {
			f.setBit(next)
			return f.ended(end, d)
		}
		f.pos, f.bits, f.nbits, f.pad = next>>3, 0, 0, 0
		if f.load() {
			bit = f.pos*8 + next&7
			continue
		}
		if f.err != nil {
			return nil // step reports it
		}
		var tail [15 + 17]byte // past 15 bytes of data, decodeRun's stop is at least 137 bits in
		n := copy(tail[:], f.buf[f.pos:])
		next, f.w, end, d = f.decodeRun(tail[:], next&7, stopAt)
		if next > n*8 {
			// The block runs past the data.
			f.pos, f.pad = len(f.buf), 1
			return nil
		}
		f.setBit(f.pos*8 + next)
		return f.ended(end, d)
	}
}

// ended records why decodeRun stopped, and makes its error: decodeRun
// itself makes none, since a call inside its loop would make the compiler
// spill the loop's registers.
func (f *inflater) ended(end runEnd, d int) error {
	switch end {
	case runBlockEnd:
		f.state = atHeader
	case runBadLitLen:
		return fmt.Errorf("%w: invalid literal/length code", ErrCorrupt)
	case runBadDist:
		return fmt.Errorf("%w: invalid distance code", ErrCorrupt)
	case runBadDistance:
		return fmt.Errorf("%w: distance %d reaches before the %d bytes of history", ErrCorrupt, d, f.w)
	}
	return nil
}

// setBit makes the bit at offset bit of buf the next to decode.
func (f *inflater) setBit(bit int) {
	f.pos, f.bits, f.nbits, f.pad = bit>>3, 0, 0, 0
	if skip := uint(bit & 7); skip > 0 {
		f.refill()
		f.take(skip)
	}
}

// decodeRun decodes the block from bit offset bit of in into out until
// stopAt, the end of the block, an error, or fewer than 15 bytes left in
// in past the bits it holds. It returns the offset of the next bit to
// decode, the new end of the output, why it stopped, and for a distance
// too far back, the distance.
//
// It is the hot path of every read and of every index build, measured by
// BenchmarkInflate, and is one long function on purpose: the bit buffer,
// the positions and the tables live in registers for the whole run,
// which a call per symbol or per match would spill (so would a call on
// any path through the loop, even a rare one). It does what libdeflate's
// decode loop does, in Go:
//
//   - A refill ORs the 8 bytes at pos in above the bits left, and
//     advances pos by the whole bytes that fit: at least 56 bits, with
//     no branch. pos is known a whole group of lookups before the load,
//     so the load does not wait on the lookups, and input not yet in the
//     nearest cache costs nothing on the chain of dependent lookups (a
//     refill from the bit offset, whose address is the sum of the code
//     lengths just decoded, did wait: 5-9% slower, the most with the
//     input past the L2 cache). Its one check is against lastPos; the
//     load itself is unchecked (load64).
//   - 56 bits hold five main-table codes (at most 11 bits each), or one
//     length and distance with their extra bits (at most 20 and 28):
//     after each refill the loop decodes up to four literal lookups and
//     looks up the code after them before the refill, or one match, with
//     no check of the bits left.
//   - A literal/length table entry carries one or two literals, or the
//     length base with its extra bit count, and the bits to consume in
//     all; so does a distance entry.
//   - Literals are stored with no bounds check (store16): the output is
//     checked against stopAt once per group of literals or per match:
//     out has room past stopMax for the largest group and for match
//     copies in 8-byte words that overrun the match's end.
func (f *inflater) decodeRun(in []byte, bit, stopAt int) (int, int, runEnd, int) {
	out, w := f.out, f.w
	// The literal steps store through outp without a check. Each group
	// of them starts at w < stopAt <= stopMax and stores at most 8
	// bytes, so every store is below stopMax+8, inside out; w is never
	// negative (it starts at f.w and only grows).
	outp := unsafe.Pointer(out)
	stopAt = min(stopAt, f.stopMax())
	lit := f.lit
	// lastPos is the last byte offset with 8 bytes of in from it: the
	// only check a refill needs. pos is the next byte to load: it is
	// never negative (load64's bounds rest on it), and only grows.
	lastPos := len(in) - 8
	pos := bit >> 3
	if bit < 0 || pos+7 > lastPos {
		return bit, w, runInput, 0
	}
	// bits holds the input from the next bit on: its low byte of nbits
	// counts the valid bits (the rest of nbits is what subtracting
	// whole table entries leaves there, never read), and the bits
	// above them are the input that follows, or zeros.
	bits, pos, nbits := refill(in, load64(in, pos)>>(bit&7), pos+7, uint(56-bit&7))
	e := lit[bits&(1<<litTableBits-1)]
	for w < stopAt {
		// Literals come in runs (float data is mostly literals): an
		// inner loop with few live values keeps them in registers.
		for e>>litCount != 0 {
			// Up to four lookups of one or two literals each, and the
			// code after them, on this refill. Written out four times:
			// a loop, or a function inlined four times, makes the
			// compiler keep the bit buffer on the stack.
			bits >>= e & 63
			nbits -= uint(e)
			v := uint16(e >> 8)
			store16(outp, w, v)
			w += int(e >> litCount)
			e = lit[bits&(1<<litTableBits-1)]
			if e>>litCount != 0 {
				bits >>= e & 63
				nbits -= uint(e)
				v := uint16(e >> 8)
				store16(outp, w, v)
				w += int(e >> litCount)
				e = lit[bits&(1<<litTableBits-1)]
				if e>>litCount != 0 {
					bits >>= e & 63
					nbits -= uint(e)
					v := uint16(e >> 8)
					store16(outp, w, v)
					w += int(e >> litCount)
					e = lit[bits&(1<<litTableBits-1)]
					if e>>litCount != 0 {
						bits >>= e & 63
						nbits -= uint(e)
						v := uint16(e >> 8)
						store16(outp, w, v)
						w += int(e >> litCount)
						e = lit[bits&(1<<litTableBits-1)]
					}
				}
			}
			if pos > lastPos {
				return pos*8 - int(uint8(nbits)), w, runInput, 0
			}
			bits, pos, nbits = refill(in, bits, pos, nbits)
			if w >= stopAt {
				return pos*8 - int(nbits), w, runStopped, 0
			}
		}
		if e&exceptFlag != 0 {
			if e&linkFlag != 0 {
				// A code longer than the main table's bits.
				bits >>= e & 63
				nbits -= uint(e)
				e = lit[int(e>>valueShift)+int(bits&(1<<(e>>8&63)-1))]
				if e>>litCount != 0 {
					bits >>= e & 63
					nbits -= uint(e)
					out[w&outMask] = byte(e >> 8)
					w++
					if pos > lastPos {
						return pos*8 - int(uint8(nbits)), w, runInput, 0
					}
					bits, pos, nbits = refill(in, bits, pos, nbits)
					e = lit[bits&(1<<litTableBits-1)]
					continue
				}
			}
			if e&eobFlag != 0 {
				return pos*8 - int(uint8(nbits-uint(e))), w, runBlockEnd, 0
			}
			if e&exceptFlag != 0 {
				return pos*8 - int(uint8(nbits)), w, runBadLitLen, 0
			}
		}
		// A length: its base, plus the extra bits after the code.
		saved := bits
		bits >>= e & 63
		nbits -= uint(e)
		length := int(e>>valueShift) + int(saved&(1<<(e&63)-1)>>(e>>8&63))

		dist := f.dist
		e = dist[bits&(1<<distTableBits-1)]
		if e&exceptFlag != 0 {
			if e&linkFlag == 0 {
				return pos*8 - int(uint8(nbits)), w, runBadDist, 0
			}
			bits >>= e & 63
			nbits -= uint(e)
			e = dist[int(e>>valueShift)+int(bits&(1<<(e>>8&63)-1))]
			if e&exceptFlag != 0 {
				return pos*8 - int(uint8(nbits)), w, runBadDist, 0
			}
		}
		saved = bits
		bits >>= e & 63
		nbits -= uint(e)
		d := int(e>>valueShift) + int(saved&(1<<(e&63)-1)>>(e>>8&63))
		if d > w {
			return pos*8 - int(uint8(nbits)), w, runBadDistance, d
		}
		if refs := f.refs; refs != nil {
			// The match at output offset at copies from d back: mark
			// the history bytes it reads. Of an overlapping match
			// (d < length) only the first d bytes are history; the
			// rest is its own output.
			at := f.outBase + int64(w)
			for b := at - int64(d); b < at-int64(d)+int64(min(d, length)); b++ {
				refs.last[b&(refRing-1)] = at
			}
		}
		src := w - d
		switch {
		case d >= 8:
			// Words never read what the same word writes: copy in
			// 8-byte steps, past the match's end (out has room).
			binary.LittleEndian.PutUint64(out[w:], binary.LittleEndian.Uint64(out[src:]))
			binary.LittleEndian.PutUint64(out[w+8:], binary.LittleEndian.Uint64(out[src+8:]))
			for i := 16; i < length; i += 8 {
				binary.LittleEndian.PutUint64(out[w+i:], binary.LittleEndian.Uint64(out[src+i:]))
			}
		case d == 1:
			v := uint64(out[src]) * 0x0101010101010101
			for i := 0; i < length; i += 8 {
				binary.LittleEndian.PutUint64(out[w+i:], v)
			}
		default:
			// A short period: byte by byte (copy would be a call).
			for i := range length {
				out[w+i] = out[src+i]
			}
		}
		w += length
		if pos > lastPos {
			return pos*8 - int(uint8(nbits)), w, runInput, 0
		}
		bits, pos, nbits = refill(in, bits, pos, nbits)
		e = lit[bits&(1<<litTableBits-1)]
	}
	return pos*8 - int(uint8(nbits)), w, runStopped, 0
}

// refill is decodeRun's refill: bits with the 8 bytes at pos ORed in
// above its valid bits (the low byte of nbits), pos past the bytes that
// fit whole, and their count, at least 56. pos <= len(in)-8 (unchecked).
func refill(in []byte, bits uint64, pos int, nbits uint) (uint64, int, uint) {
	n := uint(uint8(nbits))
	return bits | load64(in, pos)<<(n&63), pos + int(63-n)>>3, n | 56
}

// store16 stores v little-endian at out[w], out[w+1] without a bounds
// check: decodeRun's literal steps, whose bound is the output limit it
// checks once per group. The check and the mask that kept the index in
// bounds were two of a literal step's fifteen instructions.
func store16(out unsafe.Pointer, w int, v uint16) {
	binary.LittleEndian.PutUint16((*[2]byte)(unsafe.Add(out, w))[:], v)
}

// load64 returns the 8 bytes of in from i, little-endian, without the
// bounds checks of in[i:]: every refill of decodeRun checks that they are
// in (pos <= lastPos) just before, which the compiler cannot see, and its
// checks of the slice and of the load cost a quarter of a literal step's
// instructions and a register in the loop. i is never negative:
// decodeRun checks its starting bit offset, and positions only grow.
func load64(in []byte, i int) uint64 {
	return binary.LittleEndian.Uint64((*[8]byte)(unsafe.Add(unsafe.Pointer(unsafe.SliceData(in)), i))[:])
}
