package npz

import (
	"bytes"
	"compress/flate"
	"errors"
	"math/bits"
	"math/rand/v2"
	"strings"
	"testing"
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
		"float32": floatData(1<<20, 5),
	}
}

func TestInflateMatchesFlate(t *testing.T) {
	for name, data := range testInputs() {
		for _, level := range []int{flate.HuffmanOnly, flate.NoCompression, flate.BestSpeed, 4, flate.DefaultCompression, flate.BestCompression} {
			stream := deflate(t, data, level)
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
