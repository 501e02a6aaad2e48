package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// TestReadSHA256 reads every file of the bucket through the mount and
// compares its SHA-256 with the source, the >4 GiB object included.
func TestReadSHA256(t *testing.T) {
	d := env.dataset(t)
	m := mountData(t, "")

	t.Run("all_but_big", func(t *testing.T) {
		var keys []string
		for _, k := range d.Keys() {
			if o := d.Objects[k]; !o.IsMarker() && o.Pattern == nil {
				keys = append(keys, k)
			}
		}
		start := time.Now()
		var mu sync.Mutex
		var bad []string
		parallel(len(keys), 4, func(i int) {
			o := d.Objects[keys[i]]
			sum, n, err := hashFile(filepath.Join(m.Mountpoint, filepath.FromSlash(o.Key)))
			var msg string
			switch {
			case err != nil:
				msg = fmt.Sprintf("%s: %v", o.Key, errnoOf(err))
			case n != o.Size():
				msg = fmt.Sprintf("%s: read %d bytes, want %d", o.Key, n, o.Size())
			case sum != o.SHA256():
				msg = fmt.Sprintf("%s: sha256 %s, want %s", o.Key, sum, o.SHA256())
			}
			if msg != "" {
				mu.Lock()
				bad = append(bad, msg)
				mu.Unlock()
			}
		})
		for i, msg := range bad {
			if i == 20 {
				t.Errorf("... %d more", len(bad)-20)
				break
			}
			t.Error(msg)
		}
		t.Logf("hashed %d files through the mount in %v", len(keys), time.Since(start).Round(time.Millisecond))
	})

	t.Run("big", func(t *testing.T) {
		o := d.Big()
		start := time.Now()
		sum, n, err := hashFile(filepath.Join(m.Mountpoint, filepath.FromSlash(o.Key)))
		elapsed := time.Since(start)
		if err != nil {
			t.Fatalf("%s: %v after %d bytes", o.Key, errnoOf(err), n)
		}
		if n != o.Size() {
			t.Errorf("%s: read %d bytes, want %d", o.Key, n, o.Size())
		}
		if sum != o.SHA256() {
			t.Errorf("%s: sha256 %s, want %s", o.Key, sum, o.SHA256())
		}
		t.Logf("hashed %s (%d bytes) through the mount in %v (%.0f MB/s)",
			o.Key, n, elapsed.Round(time.Millisecond), float64(n)/1e6/elapsed.Seconds())
	})
}

// readCase is one pread: a file, an offset and a length.
type readCase struct {
	obj *sourceObject
	off int64
	n   int
	why string
}

// readSizes are the lengths the random reads draw from, besides uniform
// ones: around page, block and kernel request sizes.
func readSizes() []int {
	return []int{1, 2, 7, 511, 4095, 4096, 4097, 65535, 65536, 131072, 131073, 1 << 20, 1<<20 + 3, 3<<20 + 11, 8 << 20}
}

// randomReads makes count reads over the npz files, the sized files and
// the big object, with at least count/10 each crossing 4 GiB and crossing
// the end of a file, and some entirely past the end.
func randomReads(rng *rand.Rand, d *dataset, count int) []readCase {
	var small []*sourceObject
	for _, k := range d.Keys() {
		o := d.Objects[k]
		if o.Pattern == nil && o.Size() > 0 && (filepath.Ext(k) == ".npz" || filepath.Dir(k) == "misc/sizes") {
			small = append(small, o)
		}
	}
	big := d.Big()
	spans := big.Pattern.PatternSpans()
	sizes := readSizes()
	length := func() int {
		if rng.IntN(3) == 0 {
			return 1 + rng.IntN(2<<20)
		}
		return sizes[rng.IntN(len(sizes))]
	}
	out := make([]readCase, 0, count)
	for i := range count {
		n := length()
		switch {
		case i%10 == 0: // crossing 4 GiB: bytes 4 GiB-1 and 4 GiB both in range
			n = max(n, 2)
			out = append(out, readCase{big, testbed.FourGiB - 1 - int64(rng.IntN(n-1)), n, "crosses 4 GiB"})
		case i%10 == 1: // crossing the end of a file
			o := big
			if rng.IntN(2) == 0 {
				o = small[rng.IntN(len(small))]
			}
			n = max(n, 2)
			out = append(out, readCase{o, max(0, o.Size()-int64(1+rng.IntN(n-1))), n, "crosses EOF"})
		case i%50 == 2: // entirely past the end
			o := small[rng.IntN(len(small))]
			out = append(out, readCase{o, o.Size() + int64(rng.IntN(3)), n, "past EOF"})
		case i%10 == 3: // straddling the edge of a non-zero span of the big object
			s := spans[rng.IntN(len(spans))]
			edge := s[rng.IntN(2)]
			out = append(out, readCase{big, max(0, edge-int64(rng.IntN(n))), n, "pattern edge"})
		case i%10 < 7: // anywhere in the big object
			out = append(out, readCase{big, rng.Int64N(big.Size()), n, "random big"})
		default: // anywhere in a small file
			o := small[rng.IntN(len(small))]
			out = append(out, readCase{o, rng.Int64N(o.Size()), n, "random small"})
		}
	}
	return out
}

// TestReadRandomRanges compares 1,000 random preads through the mount with
// the source, including reads across 4 GiB and across and past the end.
func TestReadRandomRanges(t *testing.T) {
	d := env.dataset(t)
	m := mountData(t, "")
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	reads := randomReads(rand.New(rand.NewPCG(seed, 0x6267626673)), d, 1000)

	files := map[string]*os.File{}
	for _, r := range reads {
		if files[r.obj.Key] == nil {
			f, err := os.Open(filepath.Join(m.Mountpoint, filepath.FromSlash(r.obj.Key)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			files[r.obj.Key] = f
		}
	}

	start := time.Now()
	var mu sync.Mutex
	var failures []string
	var crossed4G, crossedEOF, bytesRead int64
	parallel(len(reads), 4, func(i int) {
		r := reads[i]
		got := make([]byte, r.n)
		n, err := files[r.obj.Key].ReadAt(got, r.off)
		wantN := int(max(0, min(int64(r.n), r.obj.Size()-r.off)))
		want := make([]byte, wantN)
		if wantN > 0 {
			if _, err := r.obj.ReaderAt().ReadAt(want, r.off); err != nil && !errors.Is(err, io.EOF) {
				panic(err)
			}
		}
		var msg string
		switch {
		case n != wantN:
			msg = fmt.Sprintf("got %d bytes (err %v), want %d", n, err, wantN)
		case wantN < r.n && !errors.Is(err, io.EOF):
			msg = fmt.Sprintf("short read of %d bytes ended with %v, want EOF", n, err)
		case wantN == r.n && err != nil:
			msg = fmt.Sprintf("error %v", errnoOf(err))
		case !bytes.Equal(got[:n], want):
			msg = fmt.Sprintf("content differs from the source at byte %d of the range", firstDiff(got[:n], want))
		}
		mu.Lock()
		defer mu.Unlock()
		bytesRead += int64(n)
		if r.off < testbed.FourGiB && r.off+int64(n) > testbed.FourGiB {
			crossed4G++
		}
		if wantN < r.n {
			crossedEOF++
		}
		if msg != "" {
			failures = append(failures, fmt.Sprintf("pread(%s, off=%d, len=%d) [%s]: %s", r.obj.Key, r.off, r.n, r.why, msg))
		}
	})
	for i, f := range failures {
		if i == 20 {
			t.Errorf("... %d more failures", len(failures)-20)
			break
		}
		t.Error(f)
	}
	if len(failures) > 0 {
		t.Errorf("%d of %d reads wrong (seed %d)", len(failures), len(reads), seed)
	}
	if crossed4G < 50 || crossedEOF < 50 {
		t.Errorf("only %d reads crossed 4 GiB and %d the end of a file; the test needs at least 50 of each", crossed4G, crossedEOF)
	}
	t.Logf("%d reads, %d bytes, %d across 4 GiB, %d short at EOF, in %v",
		len(reads), bytesRead, crossed4G, crossedEOF, time.Since(start).Round(time.Millisecond))
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
