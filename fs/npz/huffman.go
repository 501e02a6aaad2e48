package npz

import (
	"fmt"
	"math/bits"
)

// A decoding table maps the next tableBits input bits (LSB first, so the
// bit-reversed code) to a uint32 entry that says what to do with no
// further lookup: the bits to consume, and the literal, or the length or
// distance base with its count of extra bits. Codes longer than tableBits
// go through a subtable placed after the main table, sized for the codes
// sharing that prefix: one lookup for the common short codes, two for the
// rare long ones, and tables small enough to rebuild for every block, as
// libdeflate's are.
//
// Entry layout of a literal:
//
//	bits 0-7    bits to consume: the code's length, or the two codes'
//	bits 8-15   the literal
//	bits 16-23  the second literal, if any
//	bits 30-31  how many literals: 1 or 2
//
// and of every other entry (how many literals: 0):
//
//	bits 0-7    bits to consume: the code, plus for a length or distance
//	            its extra bits (a subtable entry counts the bits past the
//	            main table's)
//	bits 8-11   length and distance entries: the code's length (the extra
//	            bits follow it); links: the subtable's index width
//	bit 13      end of block
//	bit 14      link to a subtable
//	bit 15      exceptional: end of block, link, or an invalid code
//	bits 16-29  length base, code-length symbol, or a link's subtable
//	            start; bits 16-31 in a distance table: distance base
//
// A literal's fields are where the decode loop takes them with one shift
// each. Bits 12 and 13 are clear wherever bits 8-11 are read, so a shift
// by (e>>8)&63 needs no other mask.
const (
	litCount   = 30     // shift of a literal entry's literal count
	withLen    = 1 << 7 // in a template, never in a table: the entry has the code's length in bits 8-11
	eobFlag    = 1 << 13
	linkFlag   = 1 << 14
	exceptFlag = 1 << 15
	valueShift = 16
	invalid    = exceptFlag // an unassigned code, or symbols 286-287 and 30-31

	maxCodeLen = 15

	// Table sizes: a main table of 1<<bits entries and room for the
	// largest set of subtables any complete code needs (zlib's "enough"
	// program: enough 288 11 15 and enough 32 8 15).
	litTableBits  = 11
	litTableLen   = 2342
	distTableBits = 8
	distTableLen  = 402
	clenTableBits = 7 // the longest code-length code: no subtables
	clenTableLen  = 1 << clenTableBits

	numLitSyms  = 288 // including the two unusable fixed-code symbols
	numDistSyms = 32
	maxLit      = 286 // HLIT limit
	maxDist     = 30  // HDIST limit
	numCLSyms   = 19
)

type (
	litTable  [litTableLen]uint32
	distTable [distTableLen]uint32
	clenTable [clenTableLen]uint32
)

// Symbol templates (each entry but its code length) and the fixed
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
			lit[s] = 1<<litCount | uint32(s)<<8
		case s == 256:
			lit[s] = exceptFlag | eobFlag
		case s < maxLit:
			lit[s] = withLen | lenBase[s-257]<<valueShift | lenExtra[s-257]
		default:
			lit[s] = invalid
		}
	}
	for s := range dist {
		if s < maxDist {
			dist[s] = withLen | distBase[s]<<valueShift | distExtra[s]
		} else {
			dist[s] = invalid
		}
	}
	for s := range clen {
		clen[s] = withLen | uint32(s)<<valueShift
	}
	return
}

// entryFor is the table entry of a symbol whose template is sym and whose
// code has n bits left to consume at its table.
func entryFor(sym uint32, n int) uint32 {
	switch {
	case sym == invalid:
		return sym // nothing to consume
	case sym&withLen != 0:
		return sym&^withLen + uint32(n)<<8 + uint32(n)
	}
	return sym + uint32(n)
}

func fixedTables() (*litTable, *distTable) {
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
	// No pairs of literals: their codes are 8 and 9 bits long.
	lit, dist := new(litTable), new(distTable)
	if err := buildTable(lit[:], l[:], litSyms[:], litTableBits, nil); err != nil {
		panic(err) // the fixed code is complete by construction
	}
	if err := buildTable(dist[:], d[:], distSyms[:], distTableBits, nil); err != nil {
		panic(err)
	}
	return lit, dist
}

// buildTable builds into table the decoding table of the canonical
// Huffman code with the given code lengths (each at most 15), whose main
// table has tableBits index bits; syms are the symbols' entry templates.
// If firsts is not nil it receives the literal codes shorter than the
// main table's bits, for pairLiterals.
// Like compress/flate and zlib it rejects over-subscribed codes and
// incomplete ones, except a code of a single one-bit symbol (which zlib
// emits for a block using one distance) and the empty code (a block
// without matches); unassigned codes decode as invalid entries.
//
// As libdeflate does, it enumerates the codes in canonical order, so the
// codes of each length are consecutive bit-reversed integers, and fills a
// main table of 1<<len entries for the codes of length len, doubling the
// table by copying its first half each time len grows: one store per code
// and a few memmoves, instead of a strided fill per code.
func buildTable(table []uint32, lengths []uint8, syms []uint32, tableBits int, firsts *literalCodes) error {
	if firsts != nil {
		firsts.n = 0
	}
	var c codeCounts
	c.add(lengths)
	count := c.all
	// The code space the codes use, in units of 2^-15 of the whole.
	used, maxLen := 0, 0
	for l := 1; l <= maxCodeLen; l++ {
		used += int(count[l]) << (maxCodeLen - l)
		if count[l] > 0 {
			maxLen = l
		}
	}
	size := 1 << tableBits
	switch {
	case used > 1<<maxCodeLen:
		return fmt.Errorf("%w: over-subscribed Huffman code", ErrCorrupt)
	case used == 0:
		fillInvalid(table[:size])
		return nil
	case used < 1<<maxCodeLen:
		if maxLen != 1 || count[1] != 1 {
			return fmt.Errorf("%w: incomplete Huffman code", ErrCorrupt)
		}
		// One one-bit code, 0: the other half decodes as invalid.
		for s, l := range lengths {
			if l == 1 {
				table[0], table[1] = entryFor(syms[s], 1), invalid
			}
		}
		doubleTo(table, 2, size)
		return nil
	}
	var sorted [numLitSyms]uint16
	c.sort(lengths, &sorted)

	next := int(count[0]) // index in sorted of the next symbol
	code := 0             // its code, bit-reversed
	l := 1                // its length
	end := 1 << l         // the main table as filled so far
	for count[l] == 0 {
		l++
		if l <= tableBits {
			end <<= 1
		}
	}
	for l <= tableBits {
		for n := count[l]; n > 0; n-- {
			e := entryFor(syms[sorted[next]], l)
			table[code] = e
			next++
			if firsts != nil && e>>litCount != 0 && l < tableBits {
				firsts.code[firsts.n&0xFF], firsts.entry[firsts.n&0xFF] = uint16(code), e
				firsts.n++
			}
			if code == end-1 { // the last code: all ones
				doubleTo(table, end, size)
				return nil
			}
			code = nextCode(code, l)
		}
		for {
			l++
			if l <= tableBits {
				copy(table[end:2*end], table[:end])
				end <<= 1
			}
			if count[l] > 0 {
				break
			}
		}
	}
	return fillSubtables(table, syms, sorted[next:], count, code, l, tableBits)
}

// codeCounts counts code lengths, each quarter of the symbols apart: one
// count array incremented symbol after symbol waits on its own last store
// when lengths repeat, as they do; four interleaved do not.
type codeCounts struct {
	q        int                       // symbols per quarter; the last takes the rest
	quarters [4][maxCodeLen + 1]uint16 // the lengths in each quarter
	all      [maxCodeLen + 1]uint16    // the lengths of all symbols
}

func (c *codeCounts) add(lengths []uint8) {
	q := len(lengths) / 4
	c.q = q
	for i := range q {
		c.quarters[0][lengths[i]&maxCodeLen]++
		c.quarters[1][lengths[q+i]&maxCodeLen]++
		c.quarters[2][lengths[2*q+i]&maxCodeLen]++
		c.quarters[3][lengths[3*q+i]&maxCodeLen]++
	}
	for _, l := range lengths[4*q:] {
		c.quarters[3][l&maxCodeLen]++
	}
	for l := range c.all {
		c.all[l] = c.quarters[0][l] + c.quarters[1][l] + c.quarters[2][l] + c.quarters[3][l]
	}
}

// sort puts the symbols in canonical order (by code length, then by
// value) in sorted, after the unused ones: each quarter from its own
// offsets, interleaved for the same reason as the counts.
func (c *codeCounts) sort(lengths []uint8, sorted *[numLitSyms]uint16) {
	var offset [4][maxCodeLen + 1]uint16
	at := uint16(0)
	for l := range c.all {
		for k := range c.quarters {
			offset[k][l] = at
			at += c.quarters[k][l]
		}
	}
	q := c.q
	for i := range q {
		for k := range 4 {
			l := lengths[k*q+i] & maxCodeLen
			sorted[offset[k][l]%numLitSyms] = uint16(k*q + i)
			offset[k][l]++
		}
	}
	for i, l := range lengths[4*q:] {
		sorted[offset[3][l&maxCodeLen]%numLitSyms] = uint16(4*q + i)
		offset[3][l&maxCodeLen]++
	}
}

// fillSubtables places the codes longer than tableBits, starting with code
// (bit-reversed) of length l and the symbols in sorted, in subtables after
// the main table: one per tableBits prefix, wide enough for the longest
// code with that prefix.
func fillSubtables(table []uint32, syms []uint32, sorted []uint16, count [maxCodeLen + 1]uint16, code, l, tableBits int) error {
	mask := 1<<tableBits - 1
	end := 1 << tableBits
	prefix, start, width := -1, 0, 0
	left := int(count[l]) // codes of length l not yet placed
	for i := 0; ; i++ {
		if code&mask != prefix {
			// The codes with this prefix are consecutive: the subtable
			// must hold the rest of length l, then longer ones until
			// they fill it.
			prefix, start, width = code&mask, end, l-tableBits
			for need := left; need < 1<<width; {
				width++
				need = need<<1 + int(count[tableBits+width])
			}
			end = start + 1<<width
			table[prefix] = exceptFlag | linkFlag | uint32(start)<<valueShift | uint32(width)<<8 | uint32(tableBits)
		}
		e := entryFor(syms[sorted[i]], l-tableBits)
		for j := start + code>>tableBits; j < end; j += 1 << (l - tableBits) {
			table[j] = e
		}
		if code == 1<<l-1 {
			return nil
		}
		code = nextCode(code, l)
		left--
		for left == 0 {
			l++
			left = int(count[l])
		}
	}
}

// literalCodes are the literal codes shorter than the main table's bits,
// as buildTable places them: by length, shortest first.
type literalCodes struct {
	n     int
	code  [256]uint16 // bit-reversed
	entry [256]uint32
}

// pairScratch is pairLiterals' scratch space.
type pairScratch struct {
	// single is a copy of the main table, whose entries still hold one
	// literal each.
	single [1 << litTableBits]uint32
	// at and add list the seconds that fit after a first code of one
	// length n: at the j of the entries c + j<<n of a code c, add the
	// second's bits and literal.
	at  [1 << (litTableBits - 1)]uint16
	add [1 << (litTableBits - 1)]uint32
}

// pairLiterals makes each main-table entry of a literal whose code leaves
// room for the next literal's code decode both: float data is mostly
// literals, and one lookup for two (a short exponent byte and the next
// mantissa byte, say) shortens the chain of dependent lookups the decode
// loop waits on. firsts are the literal codes that may come first.
//
// A literal code c of length n fills the entries c + j<<n; the one at j
// pairs with the code single[j] decodes if that is a literal whose code
// fits in the table's bits past n. Which j pair depends only on n, so
// they are listed once per length and every code of that length then
// stores its pairs with no test: a block of float data has a hundred or
// more 8-bit literal codes, of which each has 8 entries to try and about
// one that pairs, and the table is built again for each of the ~5,000
// blocks of a member.
func pairLiterals(t *litTable, firsts *literalCodes, p *pairScratch) {
	if firsts.n == 0 {
		return
	}
	// Only the entries a second code is read from: below 1<<room of the
	// shortest first code.
	shortest := int(firsts.entry[0] & 63)
	copy(p.single[:1<<(litTableBits-shortest)], t[:])
	for k := 0; k < firsts.n; {
		n := int(firsts.entry[k] & 63)
		room := litTableBits - n
		if room < shortest {
			return // so are the rest: they are no shorter
		}
		m := 0
		for j, second := range p.single[:1<<room] {
			if second>>litCount != 0 && int(second&63) <= room {
				p.at[m&(len(p.at)-1)] = uint16(j)
				p.add[m&(len(p.add)-1)] = second&63 | (second&0xFF00)<<8
				m++
			}
		}
		at, add := p.at[:m], p.add[:m]
		for ; k < firsts.n && int(firsts.entry[k]&63) == n; k++ {
			first := firsts.entry[k]
			pair := 2<<litCount | first&0xFF00 | uint32(n)
			code := int(firsts.code[k])
			for i, j := range at {
				t[(code+int(j)<<n)&(1<<litTableBits-1)] = pair + add[i]
			}
		}
	}
}

// nextCode returns the canonical code after code, both l bits long and
// bit-reversed: adding one to a reversed code sets its highest clear bit
// and clears the bits above it.
func nextCode(code, l int) int {
	bit := 1 << (bits.Len(uint(code^(1<<l-1))) - 1)
	return code&(bit-1) | bit
}

// doubleTo repeats table[:n] up to size entries.
func doubleTo(table []uint32, n, size int) {
	for ; n < size; n <<= 1 {
		copy(table[n:2*n], table[:n])
	}
}

func fillInvalid(t []uint32) {
	for i := range t {
		t[i] = invalid
	}
}
