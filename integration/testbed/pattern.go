package testbed

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"sort"
)

// PatternObject is a deterministic, mostly-zero byte stream of a given
// size that can be regenerated at any offset without storing it: the
// content of a multi-GiB test object. Non-zero bytes are a hash of their
// offset, so a read served from the wrong place never matches. They lie in:
//   - the first 64 bytes of every MiB,
//   - 4 KiB either side of every 64 MiB boundary (where upload parts join),
//   - 2 MiB either side of 4 GiB (where 32-bit offsets overflow),
//   - the last MiB of the object.
type PatternObject struct {
	size    int64
	regions []span // sorted, disjoint, within [0, size)
}

type span struct{ start, end int64 }

// FourGiB is 1<<32, the offset that 32-bit arithmetic gets wrong.
const FourGiB int64 = 1 << 32

// NewPatternObject describes a pattern object of size bytes.
func NewPatternObject(size int64) *PatternObject {
	const mib = 1 << 20
	var rs []span
	add := func(s, e int64) {
		s, e = max(s, 0), min(e, size)
		if s < e {
			rs = append(rs, span{s, e})
		}
	}
	for off := int64(0); off < size; off += mib {
		add(off, off+64)
	}
	for off := int64(0); off <= size; off += 64 * mib {
		add(off-4096, off+4096)
	}
	add(FourGiB-2*mib, FourGiB+2*mib)
	add(size-mib, size)
	sort.Slice(rs, func(i, j int) bool { return rs[i].start < rs[j].start })
	merged := rs[:0]
	for _, r := range rs {
		if n := len(merged); n > 0 && r.start <= merged[n-1].end {
			merged[n-1].end = max(merged[n-1].end, r.end)
			continue
		}
		merged = append(merged, r)
	}
	return &PatternObject{size: size, regions: merged}
}

// Size is the object's length in bytes.
func (p *PatternObject) Size() int64 { return p.size }

// PatternSpans returns the [start, end) ranges holding non-zero bytes, for
// picking interesting reads.
func (p *PatternObject) PatternSpans() [][2]int64 {
	out := make([][2]int64, len(p.regions))
	for i, r := range p.regions {
		out[i] = [2]int64{r.start, r.end}
	}
	return out
}

// ReadAt fills b with the bytes at off, as io.ReaderAt: short reads only
// at the end, with io.EOF.
func (p *PatternObject) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if off >= p.size {
		return 0, io.EOF
	}
	n := len(b)
	var err error
	if int64(n) > p.size-off {
		n = int(p.size - off)
		err = io.EOF
	}
	b = b[:n]
	clear(b)
	end := off + int64(n)
	i := sort.Search(len(p.regions), func(i int) bool { return p.regions[i].end > off })
	for ; i < len(p.regions) && p.regions[i].start < end; i++ {
		s, e := max(p.regions[i].start, off), min(p.regions[i].end, end)
		fillPattern(b[s-off:e-off], s)
	}
	return n, err
}

// fillPattern writes the pattern bytes for offsets [off, off+len(b)).
func fillPattern(b []byte, off int64) {
	var word [8]byte
	for i := 0; i < len(b); {
		o := off + int64(i)
		binary.LittleEndian.PutUint64(word[:], mix64(uint64(o)>>3))
		i += copy(b[i:], word[o&7:])
	}
}

// mix64 is splitmix64's output function: a bijective hash of the word
// index, so neighbouring words look unrelated.
func mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// SHA256 hashes the whole object (hex), generating it on the fly.
func (p *PatternObject) SHA256() string {
	h := sha256.New()
	_, _ = io.Copy(h, io.NewSectionReader(p, 0, p.size))
	return hex.EncodeToString(h.Sum(nil))
}
