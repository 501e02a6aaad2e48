package npz

import (
	"fmt"
	"math/bits"
)

// A decoding table maps the next rootBits input bits (LSB first, so the
// bit-reversed code) to a uint32 entry. Codes longer than rootBits go
// through a second-level table sized for the longest code sharing that
// prefix, as in zlib: one lookup for the common short codes, two for the
// rare long ones, and tables small enough to rebuild for every block.
//
// Entry layout:
//
//	bits 0-3   code length: bits to consume (a subtable entry holds the
//	           full length, so nothing is consumed at the root)
//	bits 4-7   extra bits to read after the code, or for a link the
//	           subtable's index width
//	bits 8-10  kind
//	bits 16-31 literal byte, length or distance base, code-length symbol,
//	           or a link's subtable offset
const (
	entryLenMask = 0xF
	extraShift   = 4
	kindLit      = 0 << 8
	kindBase     = 1 << 8
	kindEOB      = 2 << 8
	kindLink     = 3 << 8
	kindBad      = 4 << 8
	kindMask     = 7 << 8
	valueShift   = 16

	maxCodeLen = 15
	litRoot    = 10
	distRoot   = 8
	clenRoot   = 7

	numLitSyms  = 288 // including the two unusable fixed-code symbols
	numDistSyms = 32
	maxLit      = 286 // HLIT limit
	maxDist     = 30  // HDIST limit
	numCLSyms   = 19
)

// Symbol templates (everything but the code length) and the fixed
// Huffman tables, computed once at package initialisation and never
// written afterwards.
var (
	litSyms, distSyms, clenSyms = symbolTemplates()
	fixedLit, fixedDist         = fixedTables()
)

func symbolTemplates() (lit [numLitSyms]uint32, dist [numDistSyms]uint32, clen [numCLSyms]uint32) {
	// RFC 1951 section 3.2.5.
	lenBase := [29]uint32{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
		35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	lenExtra := [29]uint32{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
		3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	distBase := [30]uint32{1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193,
		257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577}
	distExtra := [30]uint32{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
		7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}
	for s := range lit {
		switch {
		case s < 256:
			lit[s] = kindLit | uint32(s)<<valueShift
		case s == 256:
			lit[s] = kindEOB
		case s < maxLit:
			lit[s] = kindBase | lenBase[s-257]<<valueShift | lenExtra[s-257]<<extraShift
		default:
			lit[s] = kindBad
		}
	}
	for s := range dist {
		if s < maxDist {
			dist[s] = kindBase | distBase[s]<<valueShift | distExtra[s]<<extraShift
		} else {
			dist[s] = kindBad
		}
	}
	for s := range clen {
		clen[s] = kindLit | uint32(s)<<valueShift
	}
	return
}

func fixedTables() (lit, dist []uint32) {
	var l [numLitSyms]uint8
	for s := range l {
		switch {
		case s < 144:
			l[s] = 8
		case s < 256:
			l[s] = 9
		case s < 280:
			l[s] = 7
		default:
			l[s] = 8
		}
	}
	var d [numDistSyms]uint8
	for s := range d {
		d[s] = 5
	}
	lit, err := buildTable(nil, l[:], litSyms[:], litRoot)
	if err != nil {
		panic(err) // the fixed code is complete by construction
	}
	dist, err = buildTable(nil, d[:], distSyms[:], distRoot)
	if err != nil {
		panic(err)
	}
	return lit, dist
}

// buildTable builds the decoding table of the canonical Huffman code with
// the given code lengths (each at most 15) into dst's storage. Like
// compress/flate and zlib it rejects over-subscribed codes and incomplete
// ones, except a code of a single one-bit symbol (which zlib emits for a
// block using one distance) and the empty code (a block without
// matches); unassigned entries decode as errors.
func buildTable(dst []uint32, lengths []uint8, syms []uint32, root uint) ([]uint32, error) {
	var count [maxCodeLen + 1]int
	for _, l := range lengths {
		count[l]++
	}
	count[0] = 0
	left, maxLen := 1, 0
	for l := 1; l <= maxCodeLen; l++ {
		left = left<<1 - count[l]
		if left < 0 {
			return nil, fmt.Errorf("%w: over-subscribed Huffman code", ErrCorrupt)
		}
		if count[l] > 0 {
			maxLen = l
		}
	}
	if left > 0 && maxLen != 0 && !(maxLen == 1 && count[1] == 1) {
		return nil, fmt.Errorf("%w: incomplete Huffman code", ErrCorrupt)
	}
	var next [maxCodeLen + 2]int
	code := 0
	for l := 1; l <= maxCodeLen; l++ {
		code = (code + count[l-1]) << 1
		next[l] = code
	}

	size := 1 << root
	mask := size - 1
	// Width of each root slot's subtable: the longest code with that
	// prefix, less root.
	var sub [1 << litRoot]uint8
	if maxLen > int(root) {
		nx := next
		for _, l := range lengths {
			if int(l) <= int(root) {
				continue
			}
			rev := reverse(nx[l], l)
			nx[l]++
			if w := l - uint8(root); w > sub[rev&mask] {
				sub[rev&mask] = w
			}
		}
	}
	total := size
	for p := 0; p < size; p++ {
		if sub[p] > 0 {
			total += 1 << sub[p]
		}
	}
	if cap(dst) < total {
		dst = make([]uint32, total)
	}
	dst = dst[:total]
	for i := range dst {
		dst[i] = kindBad
	}
	off := size
	for p := 0; p < size; p++ {
		if sub[p] > 0 {
			dst[p] = kindLink | uint32(off)<<valueShift | uint32(sub[p])<<extraShift
			off += 1 << sub[p]
		}
	}
	for s, l := range lengths {
		if l == 0 {
			continue
		}
		rev := reverse(next[l], l)
		next[l]++
		e := syms[s] | uint32(l)
		if int(l) <= int(root) {
			for i := rev; i < size; i += 1 << l {
				dst[i] = e
			}
			continue
		}
		link := dst[rev&mask]
		base := int(link >> valueShift)
		width := 1 << ((link >> extraShift) & 0xF)
		for i := rev >> root; i < width; i += 1 << (l - uint8(root)) {
			dst[base+i] = e
		}
	}
	return dst, nil
}

// reverse returns the low n bits of code in reverse order: deflate packs
// Huffman codes starting from their most significant bit.
func reverse(code int, n uint8) int {
	return int(bits.Reverse16(uint16(code)) >> (16 - n))
}
