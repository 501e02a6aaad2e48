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
// the block. decodeRun does the work straight from buf; when fewer than 8
// bytes are left there it loads the next chunk, and at the end of the
// data it decodes the last bytes from a copy padded with zeros.
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
		var tail [8 + 16]byte
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
// stopAt, the end of the block, an error, or fewer than 8 bytes left in
// in. It returns the offset of the next bit to decode, the new end of the
// output, why it stopped, and for a distance too far back, the distance.
//
// It is the hot path of every read and of every index build, measured by
// BenchmarkInflate, and is one long function on purpose: the bit buffer,
// the positions and the tables live in registers for the whole run,
// which a call per symbol or per match would spill (so would a call on
// any path through the loop, even a rare one). It does what libdeflate's
// decode loop does, in Go, with the bit buffer kept another way:
//
//   - A refill is one unaligned 8-byte load at the byte of the next bit,
//     shifted by the bit within the byte: at least 57 bits, with no
//     branch, and its address depends only on the bit offset (a sum of
//     code lengths), not on the bits left in the buffer. Its one check
//     is against lastBit; the load itself is unchecked (load64).
//   - 57 bits hold five main-table codes (at most 11 bits each), or one
//     length and distance with their extra bits (at most 20 and 28):
//     after each refill the loop decodes up to four literal lookups and
//     looks up the code after them before the refill that consumes it,
//     or one match, with no check of the bits left.
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
	// lastBit is the last bit offset whose byte has 8 bytes of in from
	// it: the only check a refill needs.
	lastBit := (len(in)-8)*8 + 7
	if bit < 0 || bit > lastBit { // never below 0 (load64's bounds rest on it); it only grows from here
		return bit, w, runInput, 0
	}
	bits := load64(in, bit>>3) >> (bit & 7)
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
			bit += int(uint8(e))
			v := uint16(e >> 8)
			store16(outp, w, v)
			w += int(e >> litCount)
			e = lit[bits&(1<<litTableBits-1)]
			if e>>litCount != 0 {
				bits >>= e & 63
				bit += int(uint8(e))
				v := uint16(e >> 8)
				store16(outp, w, v)
				w += int(e >> litCount)
				e = lit[bits&(1<<litTableBits-1)]
				if e>>litCount != 0 {
					bits >>= e & 63
					bit += int(uint8(e))
					v := uint16(e >> 8)
					store16(outp, w, v)
					w += int(e >> litCount)
					e = lit[bits&(1<<litTableBits-1)]
					if e>>litCount != 0 {
						bits >>= e & 63
						bit += int(uint8(e))
						v := uint16(e >> 8)
						store16(outp, w, v)
						w += int(e >> litCount)
						e = lit[bits&(1<<litTableBits-1)]
					}
				}
			}
			if bit > lastBit {
				return bit, w, runInput, 0
			}
			bits = load64(in, bit>>3) >> (bit & 7)
			if w >= stopAt {
				return bit, w, runStopped, 0
			}
		}
		if e&exceptFlag != 0 {
			if e&linkFlag != 0 {
				// A code longer than the main table's bits.
				bits >>= e & 63
				bit += int(uint8(e))
				e = lit[int(e>>valueShift)+int(bits&(1<<(e>>8&63)-1))]
				if e>>litCount != 0 {
					bit += int(uint8(e))
					out[w&outMask] = byte(e >> 8)
					w++
					if bit > lastBit {
						return bit, w, runInput, 0
					}
					bits = load64(in, bit>>3) >> (bit & 7)
					e = lit[bits&(1<<litTableBits-1)]
					continue
				}
			}
			if e&eobFlag != 0 {
				return bit + int(uint8(e)), w, runBlockEnd, 0
			}
			if e&exceptFlag != 0 {
				return bit, w, runBadLitLen, 0
			}
		}
		// A length: its base, plus the extra bits after the code.
		saved := bits
		bits >>= e & 63
		bit += int(uint8(e))
		length := int(e>>valueShift) + int(saved&(1<<(e&63)-1)>>(e>>8&63))

		dist := f.dist
		e = dist[bits&(1<<distTableBits-1)]
		if e&exceptFlag != 0 {
			if e&linkFlag == 0 {
				return bit, w, runBadDist, 0
			}
			bits >>= e & 63
			bit += int(uint8(e))
			e = dist[int(e>>valueShift)+int(bits&(1<<(e>>8&63)-1))]
			if e&exceptFlag != 0 {
				return bit, w, runBadDist, 0
			}
		}
		bit += int(uint8(e))
		d := int(e>>valueShift) + int(bits&(1<<(e&63)-1)>>(e>>8&63))
		if d > w {
			return bit, w, runBadDistance, d
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
		if bit > lastBit {
			return bit, w, runInput, 0
		}
		bits = load64(in, bit>>3) >> (bit & 7)
		e = lit[bits&(1<<litTableBits-1)]
	}
	return bit, w, runStopped, 0
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
// in (bit <= lastBit) just before, which the compiler cannot see, and its
// checks of the slice and of the load cost a quarter of a literal step's
// instructions and a register in the loop. i is never negative:
// decodeRun checks its starting bit offset, and offsets only grow.
func load64(in []byte, i int) uint64 {
	return binary.LittleEndian.Uint64((*[8]byte)(unsafe.Add(unsafe.Pointer(unsafe.SliceData(in)), i))[:])
}
