package npz

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/bgbfs/bgbfs/fs/npz/npztest"
)

// testInputs are contents that exercise different block types and match
// shapes once compressed.
func testInputs() map[string][]byte {
	rng := rand.New(rand.NewPCG(3, 4))
	random := make([]byte, 300<<10)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	var text strings.Builder
	for text.Len() < 400<<10 {
		text.WriteString([]string{"the ", "quick ", "brown ", "fox ", "jumps\n", "npz ", "window "}[rng.IntN(7)])
	}
	runs := make([]byte, 0, 200<<10)
	for len(runs) < 200<<10 {
		runs = append(runs, bytes.Repeat([]byte{byte(rng.IntN(4))}, 1+rng.IntN(2000))...)
	}
	return map[string][]byte{
		"empty":   nil,
		"one":     {42},
		"zeros":   make([]byte, 1<<20),
		"random":  random,
		"text":    []byte(text.String()),
		"runs":    runs, // overlapping matches with distance 1
		"float32": npztest.Floats(1<<20, 5),
	}
}

func TestInflateMatchesFlate(t *testing.T) {
	for name, data := range testInputs() {
		for _, level := range []int{flate.HuffmanOnly, flate.NoCompression, flate.BestSpeed, 4, flate.DefaultCompression, flate.BestCompression} {
			stream := npztest.Deflate(data, level)
			got, err := inflateAll(stream)
			if err != nil {
				t.Errorf("%s level %d: %v", name, level, err)
				continue
			}
			if !bytes.Equal(got, data) {
				t.Errorf("%s level %d: output differs (%d bytes, want %d)", name, level, len(got), len(data))
			}
		}
	}
}

// bitWriter writes deflate streams bit by bit, to craft ones no
// compressor would produce.
type bitWriter struct {
	b   []byte
	acc uint64
	n   uint
}

func (w *bitWriter) bits(v uint64, n uint) *bitWriter {
	w.acc |= v << w.n
	w.n += n
	for w.n >= 8 {
		w.b = append(w.b, byte(w.acc))
		w.acc >>= 8
		w.n -= 8
	}
	return w
}

// code writes an n-bit Huffman code, most significant bit first.
func (w *bitWriter) code(c uint64, n uint) *bitWriter {
	return w.bits(uint64(bits.Reverse16(uint16(c))>>(16-n)), n)
}

func (w *bitWriter) align() *bitWriter {
	if w.n > 0 {
		w.bits(0, 8-w.n)
	}
	return w
}

func (w *bitWriter) bytes() []byte {
	out := w.b
	if w.n > 0 {
		out = append(out, byte(w.acc))
	}
	return out
}

// fixed codes of RFC 1951 section 3.2.6.
func (w *bitWriter) fixedLit(s int) *bitWriter {
	switch {
	case s < 144:
		return w.code(uint64(0x30+s), 8)
	case s < 256:
		return w.code(uint64(0x190+s-144), 9)
	case s < 280:
		return w.code(uint64(s-256), 7)
	}
	return w.code(uint64(0xC0+s-280), 8)
}

// dynamicAAAA is a dynamic block whose codes zlib would emit for a tiny
// input: literal/length lengths 'a':1, 256:2, 257:2 and a single
// one-bit distance code, an incomplete code that deflate allows.
func dynamicAAAA() *bitWriter {
	w := &bitWriter{}
	w.bits(1, 1).bits(2, 2)             // final, dynamic
	w.bits(1, 5).bits(0, 5).bits(14, 4) // HLIT 258, HDIST 1, HCLEN 18
	// Code length code: symbols 0, 1, 2 and 18 of length 2.
	for _, s := range clenOrder[:18] {
		l := uint64(0)
		if s == 0 || s == 1 || s == 2 || s == 18 {
			l = 2
		}
		w.bits(l, 3)
	}
	c := map[int]uint64{0: 0, 1: 1, 2: 2, 18: 3}
	w.code(c[18], 2).bits(97-11, 7) // 97 zeros
	w.code(c[1], 2)                 // 'a'
	w.code(c[18], 2).bits(127, 7)   // 138 zeros
	w.code(c[18], 2).bits(20-11, 7) // 20 zeros: 97+1+158 = 256
	w.code(c[2], 2).code(c[2], 2)   // 256, 257
	w.code(c[1], 2)                 // distance 0
	return w
}

func TestInflateCrafted(t *testing.T) {
	tests := []struct {
		name   string
		stream []byte
		want   string // output, if err is ""
		err    string
	}{
		{"empty input", nil, "", "truncated"},
		{"stored", (&bitWriter{}).bits(1, 3).align().bits(3, 16).bits(^uint64(3)&0xFFFF, 16).bits('x', 8).bits('y', 8).bits('z', 8).bytes(), "xyz", ""},
		{"empty stored then fixed", (&bitWriter{}).bits(0, 3).align().bits(0, 16).bits(0xFFFF, 16).bits(1, 1).bits(1, 2).fixedLit('q').fixedLit(256).bytes(), "q", ""},
		{"trailing garbage ignored", append((&bitWriter{}).bits(1, 1).bits(1, 2).fixedLit('a').fixedLit(256).bytes(), 0xFF, 0xFF, 0xFF), "a", ""},
		{"overlapping match", (&bitWriter{}).bits(1, 1).bits(1, 2).fixedLit('a').fixedLit('b').fixedLit(258).code(1, 5).fixedLit(256).bytes(), "ababab", ""},
		{"single distance code", dynamicAAAA().code(0, 1).code(3, 2).code(0, 1).code(2, 2).bytes(), "aaaa", ""},
		{"unused half of single distance code", dynamicAAAA().code(0, 1).code(3, 2).code(1, 1).code(2, 2).bytes(), "", "invalid distance code"},
		{"reserved block type", (&bitWriter{}).bits(1, 1).bits(3, 2).bytes(), "", "reserved block type"},
		{"stored length mismatch", (&bitWriter{}).bits(1, 3).align().bits(5, 16).bits(5, 16).bytes(), "", "complement"},
		{"stored truncated", (&bitWriter{}).bits(1, 3).align().bits(10, 16).bits(^uint64(10)&0xFFFF, 16).bits('x', 8).bytes(), "", "truncated"},
		{"fixed block truncated", (&bitWriter{}).bits(1, 1).bits(1, 2).fixedLit('a').bytes(), "", "truncated"},
		{"not final, then nothing", (&bitWriter{}).bits(0, 1).bits(1, 2).fixedLit(256).bytes(), "", "truncated"},
		{"distance too far back", (&bitWriter{}).bits(1, 1).bits(1, 2).fixedLit('a').fixedLit(257).code(1, 5).fixedLit(256).bytes(), "", "distance 2"},
		{"distance code 30", (&bitWriter{}).bits(1, 1).bits(1, 2).fixedLit('a').fixedLit(257).code(30, 5).fixedLit(256).bytes(), "", "invalid distance code"},
		{"length code 286", (&bitWriter{}).bits(1, 1).bits(1, 2).fixedLit('a').fixedLit(286).bytes(), "", "invalid literal/length code"},
		{"too many literal codes", (&bitWriter{}).bits(1, 1).bits(2, 2).bits(30, 5).bits(0, 5).bits(0, 4).bytes(), "", "287 literal/length"},
		{"too many distance codes", (&bitWriter{}).bits(1, 1).bits(2, 2).bits(0, 5).bits(30, 5).bits(0, 4).bytes(), "", "31 distance"},
		{"over-subscribed code length code", func() []byte {
			w := (&bitWriter{}).bits(1, 1).bits(2, 2).bits(0, 5).bits(0, 5).bits(15, 4)
			for range 19 {
				w.bits(1, 3)
			}
			return w.bytes()
		}(), "", "over-subscribed"},
		{"incomplete code length code", (&bitWriter{}).bits(1, 1).bits(2, 2).bits(0, 5).bits(0, 5).bits(0, 4).bits(2, 3).bits(2, 3).bits(0, 3).bits(0, 3).bytes(), "", "incomplete"},
		{"repeat with nothing before", (&bitWriter{}).bits(1, 1).bits(2, 2).bits(0, 5).bits(0, 5).bits(0, 4).
			bits(1, 3).bits(0, 3).bits(0, 3).bits(1, 3). // 16:1, 0:1
			code(1, 1).bits(0, 2).bytes(), "", "none before"},
		{"repeat past the end", (&bitWriter{}).bits(1, 1).bits(2, 2).bits(1, 5).bits(0, 5).bits(0, 4).
			bits(0, 3).bits(0, 3).bits(1, 3).bits(1, 3). // 18:1, 0:1
			code(1, 1).bits(127, 7).code(1, 1).bits(127, 7).bytes(), "", "runs past"},
		{"no end-of-block code", (&bitWriter{}).bits(1, 1).bits(2, 2).bits(1, 5).bits(0, 5).bits(0, 4).
			bits(0, 3).bits(0, 3).bits(1, 3).bits(1, 3).
			code(1, 1).bits(127, 7).code(1, 1).bits(120-11, 7).bytes(), "", "no end-of-block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := inflateAll(tt.stream)
			std, stdErr := stdInflate(tt.stream)
			if tt.err == "" {
				if err != nil || string(got) != tt.want {
					t.Fatalf("got %q, %v; want %q", got, err, tt.want)
				}
				if stdErr != nil || string(std) != tt.want {
					t.Errorf("compress/flate disagrees: %q, %v", std, stdErr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %q, %v; want an ErrCorrupt containing %q", got, err, tt.err)
			}
			if stdErr == nil {
				t.Errorf("compress/flate accepts it: %q", std)
			}
		})
	}
}

// completeLengths returns code lengths of at most 15 bits for n symbols
// forming a complete code, most of them long, in an order shuffled by
// seed: symbols of every kind land on long codes that need subtables.
func completeLengths(n int, seed uint64) []uint8 {
	l := make([]uint8, n)
	for i := range l {
		l[i] = maxCodeLen
	}
	// Shorten codes while the code space has room (units of 2^-15).
	room := 1<<maxCodeLen - n
	for i := range l {
		for l[i] > 1 && room >= 1<<(maxCodeLen-l[i]) {
			room -= 1 << (maxCodeLen - l[i])
			l[i]--
		}
	}
	rng := rand.New(rand.NewPCG(seed, 9))
	rng.Shuffle(n, func(i, j int) { l[i], l[j] = l[j], l[i] })
	return l
}

// canonical returns the canonical Huffman codes of lengths.
func canonical(lengths []uint8) []uint64 {
	var count [maxCodeLen + 1]int
	for _, l := range lengths {
		count[l]++
	}
	count[0] = 0
	var next [maxCodeLen + 1]uint64
	for l, code := 1, uint64(0); l <= maxCodeLen; l++ {
		code = (code + uint64(count[l-1])) << 1
		next[l] = code
	}
	codes := make([]uint64, len(lengths))
	for s, l := range lengths {
		if l > 0 {
			codes[s] = next[l]
			next[l]++
		}
	}
	return codes
}

// everyCode writes a block body that uses every literal, every length
// code with its smallest and largest extra bits, and every distance code
// with its smallest and largest extra bits, after 32 KiB of literals so
// that every distance reaches back into the output.
func everyCode(w *bitWriter, lit func(int), dist func(int)) {
	lenBase := []int{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	lenExtra := []uint{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	distExtra := []uint{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}
	for i := range windowSize {
		lit((i*7 + i/256) & 0xFF)
	}
	for s := range lenBase {
		for _, top := range []bool{false, true} {
			for d := range distExtra {
				lit(257 + s)
				if top {
					w.bits(1<<lenExtra[s]-1, lenExtra[s])
				} else {
					w.bits(0, lenExtra[s])
				}
				dist(d)
				if top {
					w.bits(1<<distExtra[d]-1, distExtra[d])
				} else {
					w.bits(0, distExtra[d])
				}
				lit(s + d) // a literal between matches
			}
		}
	}
	lit(256)
}

// TestInflateEveryCode decodes blocks using every literal, length and
// distance code with the extreme extra bits, in a fixed block and in a
// dynamic block whose codes are mostly 15 bits long (so that literals,
// lengths, the end of block and distances go through subtables), and
// compares with compress/flate.
func TestInflateEveryCode(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		w := (&bitWriter{}).bits(0, 1).bits(1, 2) // not final, fixed
		everyCode(w, func(s int) { w.fixedLit(s) }, func(d int) { w.code(uint64(d), 5) })

		litLen, distLen := completeLengths(maxLit, seed), completeLengths(maxDist, seed+100)
		if litLen[256] == 0 {
			t.Fatal("no end-of-block code")
		}
		w.bits(1, 1).bits(2, 2) // final, dynamic
		w.bits(maxLit-257, 5).bits(maxDist-1, 5).bits(numCLSyms-4, 4)
		// Code length code: 0-15 all 4 bits long, 16-18 unused.
		for _, s := range clenOrder {
			if s < 16 {
				w.bits(4, 3)
			} else {
				w.bits(0, 3)
			}
		}
		for _, l := range append(append([]uint8(nil), litLen...), distLen...) {
			w.code(uint64(l), 4)
		}
		litCodes, distCodes := canonical(litLen), canonical(distLen)
		everyCode(w, func(s int) { w.code(litCodes[s], uint(litLen[s])) }, func(d int) { w.code(distCodes[d], uint(distLen[d])) })
		stream := w.bytes()

		want, err := stdInflate(stream)
		if err != nil {
			t.Fatalf("seed %d: compress/flate: %v", seed, err)
		}
		got, err := inflateAll(stream)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("seed %d: got %d bytes, %v; compress/flate %d bytes", seed, len(got), err, len(want))
		}
		x := streamIndex(t, stream, want, 1)
		checkReadAt(t, x, bytes.NewReader(stream), want, rand.New(rand.NewPCG(seed, 1)), 20)
	}
}

// TestInflateTruncated cuts a stream after every byte: the inflater must
// report each cut as compress/flate does, never panic, and return what
// compress/flate returns before the error.
func TestInflateTruncated(t *testing.T) {
	data := testInputs()["text"][:6<<10]
	for _, level := range []int{flate.NoCompression, flate.BestSpeed, flate.DefaultCompression} {
		stream := npztest.Deflate(data, level)
		for n := range len(stream) {
			got, err := inflateAll(stream[:n])
			if err == nil || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("level %d: %d of %d bytes: %v", level, n, len(stream), err)
			}
			if !bytes.HasPrefix(data, got) {
				t.Fatalf("level %d: %d of %d bytes: output is not a prefix of the content", level, n, len(stream))
			}
		}
	}
}

// TestPairLiterals checks every main-table entry of literal/length
// tables after pairLiterals against a decode of the canonical codes
// themselves: a literal whose code leaves room for a whole literal code
// after it decodes both, any other entry is as buildTable made it. The
// codes are those of TestInflateEveryCode (mostly 15 bits, a few short)
// and float-like ones (a few short codes among many of 8 and 9 bits, as
// zlib writes for float data).
func TestPairLiterals(t *testing.T) {
	floatLike := func(seed uint64) []uint8 {
		l := make([]uint8, maxLit)
		for i := range l {
			l[i] = 9
		}
		room := 1<<maxCodeLen - maxLit<<(maxCodeLen-9)
		rng := rand.New(rand.NewPCG(seed, 7))
		shorten := func(s, times int) {
			for ; times > 0 && l[s] > 1 && room >= 1<<(maxCodeLen-l[s]); times-- {
				room -= 1 << (maxCodeLen - l[s])
				l[s]--
			}
		}
		for range 5 { // the exponent bytes
			shorten(rng.IntN(256), 2+rng.IntN(6))
		}
		for range 4 * maxLit {
			shorten(rng.IntN(maxLit), 1)
		}
		return l
	}
	var cases [][]uint8
	for seed := range uint64(20) {
		cases = append(cases, completeLengths(maxLit, seed), floatLike(seed))
	}
	for c, lengths := range cases {
		var table litTable
		var firsts literalCodes
		var scratch pairScratch
		if err := buildTable(table[:], lengths, litSyms[:], litTableBits, &firsts); err != nil {
			continue // incomplete: not a table pairLiterals sees
		}
		single := table
		pairLiterals(&table, &firsts, &scratch)
		codes := canonical(lengths)
		// decode returns the symbol whose code is the low bits of i.
		decode := func(i int) (sym, n int) {
			for s, l := range lengths {
				if l > 0 && uint64(i)&(1<<l-1) == bits.Reverse64(codes[s])>>(64-l) {
					return s, int(l)
				}
			}
			return -1, 0
		}
		pairs := 0
		for i := range 1 << litTableBits {
			want := single[i]
			if s1, n1 := decode(i); s1 >= 0 && s1 < 256 && n1 < litTableBits {
				if s2, n2 := decode(i >> n1); s2 >= 0 && s2 < 256 && n1+n2 <= litTableBits {
					want = 2<<litCount | uint32(s2)<<16 | uint32(s1)<<8 | uint32(n1+n2)
					pairs++
				}
			}
			if table[i] != want {
				t.Fatalf("case %d: entry %d is %#x, want %#x", c, i, table[i], want)
			}
		}
		if pairs == 0 {
			t.Errorf("case %d: no pairs: the case tests nothing", c)
		}
	}
}

// TestStepStaysInsideOut asks step for more output than out holds: the
// decode loop's literal stores are unchecked, and stay inside out only
// because it stops at stopMax whatever it is asked, so each call must
// end there with the output still right.
func TestStepStaysInsideOut(t *testing.T) {
	data := walkData(3*outSize, 9) // literals, mostly: long groups
	stream := npztest.Deflate(data, flate.DefaultCompression)
	got, err := inflateAsking(stream, outSize+outSpare, func(f *inflater) error {
		if f.w > f.stopMax()+maxMatch {
			return fmt.Errorf("step ran to %d, past stopMax %d and a match", f.w, f.stopMax())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("output differs (%d bytes, want %d)", len(got), len(data))
	}
}
