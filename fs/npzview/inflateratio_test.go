package npzview

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/fs/npz/npztest"
)

// countingReaderAt counts the bytes read through it.
type countingReaderAt struct {
	r     io.ReaderAt
	bytes *atomic.Int64
}

func (c countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.bytes.Add(int64(n))
	return n, err
}

// kernelReads are the reads the kernel sends for one sample of a loader
// that opens the member, reads its .npy header (np.load) and copies row
// row out of its mapping, with read-ahead ra, as traced on this kernel:
// the header's read (32 KiB, for st_blksize 16 KiB), the read-ahead around the row's
// first page, then around its last page (memcpy touches the end of what
// it copies early), then the middle in order, and a little past the
// read around the end.
func kernelReads(l npz.NPYLayout, size, row, ra int64) [][2]int64 {
	read := func(off, n int64) [2]int64 { return [2]int64{off, min(n, size-off)} }
	start := l.DataOffset + row*l.RowBytes
	end := start + l.RowBytes
	first := max(start/pageSize*pageSize-ra/2, 0)
	last := max((end-1)/pageSize*pageSize-ra/2, first+ra)
	reads := [][2]int64{{0, 32 << 10}, read(first, ra)}
	if last < size {
		reads = append(reads, read(last, ra))
	}
	for off := first + ra; off < last; off += ra {
		reads = append(reads, read(off, min(ra, last-off)))
	}
	if after := last + ra; after < size {
		reads = append(reads, read(after, 2*pageSize))
	}
	return reads
}

// readingOn are the reads of a kernel that reads a row in order and on
// past its end by a read-ahead or more (as measured with a read-ahead of
// 256 KiB: 264-268 KiB past the row), in read-ahead units from the
// read-ahead around the row's first page; then the header's read.
func readingOn(l npz.NPYLayout, size, row, ra int64) [][2]int64 {
	reads := [][2]int64{{0, 64 << 10}}
	start := l.DataOffset + row*l.RowBytes
	end := start + l.RowBytes
	for off := max(start/pageSize*pageSize-ra/2, 0); off < min(end+ra, size); off += ra {
		reads = append(reads, [2]int64{off, min(ra, size-off)})
	}
	return reads
}

// Shuffled windows read as the kernel reads them for an mmap-ing loader
// inflate at most 1.1 times the bytes they return, by the view's own
// count and by the compressed bytes its inflations read (counted here,
// at the archive): nothing is inflated twice, and little before or past
// what the kernel asks.
func TestShuffledWindowsInflateLittleMore(t *testing.T) {
	for _, tt := range []struct {
		name  string
		reads func(l npz.NPYLayout, size, row, ra int64) [][2]int64
	}{
		{"as traced", kernelReads},
		{"reading on past the row", readingOn},
	} {
		t.Run(tt.name, func(t *testing.T) { testShuffledWindows(t, tt.reads) })
	}
}

func testShuffledWindows(t *testing.T, reads func(l npz.NPYLayout, size, row, ra int64) [][2]int64) {
	const (
		rows     = 10
		rowBytes = 19 * 15360 * 4 // one EEG window
		ra       = defaultKernelReadAhead
	)
	want := npztest.NPY(rows, rowBytes, 11)
	members := map[string][]byte{"windows.npy": want, "labels.npy": npztest.Floats(1000, 2)}
	f := newViewFixtureWith(t, archiveOf(npztest.Deflated, members), members, Config{Span: npz.DefaultSpan, IndexBytes: 32 << 20, SpanBytes: SpanBytes(npz.DefaultSpan)})
	var compressedRead atomic.Int64
	f.view.wrapInflaterSource = func(r io.ReaderAt) io.ReaderAt { return countingReaderAt{r, &compressedRead} }
	layout, err := npz.ParseNPYHeader(want)
	if err != nil {
		t.Fatal(err)
	}
	m := f.member(t, "windows.npy")
	size := int64(len(want))
	// Each index build inflates the member whole; the ratio is that of
	// reads once the index is built (a mount that used it before, or
	// "bgbfs index").
	r := f.archive.Open(m)
	if _, err := r.indexFor(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.Close()
	before := f.view.Stats()
	compressedRead.Store(0)

	var asked int64
	rng := rand.New(rand.NewPCG(3, 4))
	for epoch := range 2 {
		for _, row := range rng.Perm(rows) {
			r := f.archive.Open(m)
			for _, rd := range reads(layout, size, int64(row), ra) {
				got, err := readMember(r, int(rd[1]), rd[0])
				if err != nil || !bytes.Equal(got, want[rd[0]:rd[0]+rd[1]]) {
					t.Fatalf("epoch %d row %d: read %d at %d: %v, %d bytes, wrong content", epoch, row, rd[1], rd[0], err, len(got))
				}
				asked += rd[1]
			}
			r.Close()
		}
	}

	s := f.view.Stats()
	returned, inflated := s.ReturnedBytes-before.ReturnedBytes, s.InflatedBytes-before.InflatedBytes
	if returned != asked {
		t.Fatalf("the view counts %d bytes returned; the reads asked %d", returned, asked)
	}
	if ratio := float64(inflated) / float64(returned); ratio > 1.1 {
		t.Errorf("inflated %d bytes for %d returned: %.3f×, want ≤ 1.1×", inflated, returned, ratio)
	}
	// The same from the compressed side: what the inflations read, over
	// what the bytes returned take compressed (16 KiB of margin per
	// inflation aside), is the view's count if that is true.
	deflateRatio := float64(m.member.CompressedSize) / float64(m.Size)
	if ratio := float64(compressedRead.Load()) / (float64(returned) * deflateRatio); ratio > 1.1+0.05 {
		t.Errorf("inflations read %d compressed bytes for %d returned (%.3f of them compressed): %.3f×, want ≤ 1.15×", compressedRead.Load(), returned, deflateRatio, ratio)
	}
	if counted := float64(compressedRead.Load()) / deflateRatio; counted < 0.95*float64(inflated) || counted > 1.1*float64(inflated) {
		t.Errorf("inflations read %d compressed bytes, about %.0f inflated; the view counts %d", compressedRead.Load(), counted, inflated)
	}
	t.Logf("returned %d, inflated %d (%.3f×), compressed read %d, member reads %d", returned, inflated, float64(inflated)/float64(returned), compressedRead.Load(), s.MemberReads-before.MemberReads)
}
