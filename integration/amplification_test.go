package integration

import (
	"archive/zip"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// Scale of TestNumpyLoadsFetchEachByteOnce: many archives and a cache far
// smaller than them, as on the real bucket (2.48 GB of archives read
// through a 1 GiB cache in the report; 449 GB in all).
const (
	ampArchives = 24
	ampWindows  = 8 // about 8.7 MB per archive: 208 MB in all
	ampLoaders  = 8
	// ampCacheSize keeps 40 MiB of blocks, a fifth of the archives (the
	// report: 640 MiB of blocks for 2.48 GB), so the cache is full and
	// refuses or evicts blocks during the run.
	ampCacheSize = "64MiB"
	// ampBound is fetched ÷ the archives' bytes.
	ampBound = 1.05
)

// ampLoad loads windows from each archive named on the command line, as
// the trainer does, and checks it against the local copy in argv[1].
const ampLoad = `
import os, sys
import numpy as np
local = sys.argv[1]
for p in sys.argv[2:]:
    got = np.load(p)["windows"]
    want = np.load(os.path.join(local, os.path.basename(p)))["windows"]
    assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), p
print("OK")
`

// archiveRegions are the byte ranges of one archive that np.load(p)
// ["windows"] reads: the windows member (local header and data) and the
// end (central directory, Zip64 locator, end record).
type archiveRegions struct {
	size int64
	// windowsEnd ends the windows member, which starts the file (its
	// local header at 0); endFrom starts the central directory.
	windowsEnd, endFrom int64
}

func readRegions(path string) (archiveRegions, error) {
	z, err := zip.OpenReader(path)
	if err != nil {
		return archiveRegions{}, err
	}
	defer z.Close()
	fi, err := os.Stat(path)
	if err != nil {
		return archiveRegions{}, err
	}
	r := archiveRegions{size: fi.Size(), windowsEnd: -1}
	for _, f := range z.File {
		off, err := f.DataOffset()
		if err != nil {
			return r, err
		}
		end := off + int64(f.CompressedSize64)
		if f.Name == "windows.npy" {
			if off > 4096 {
				return r, fmt.Errorf("%s: windows.npy starts at %d, not at the start", path, off)
			}
			r.windowsEnd = end
		}
		// The central directory follows the last member's data.
		r.endFrom = max(r.endFrom, end)
	}
	if r.windowsEnd < 0 {
		return r, fmt.Errorf("%s has no windows.npy", path)
	}
	return r, nil
}

// fetchBreakdown sorts the bytes fetched for one archive: read by numpy
// and fetched once, fetched but never read, and fetched more than once.
type fetchBreakdown struct {
	fetched, once, unread, again int64
}

func (b *fetchBreakdown) add(o fetchBreakdown) {
	b.fetched += o.fetched
	b.once += o.once
	b.unread += o.unread
	b.again += o.again
}

// breakdown counts, per byte of the archive, how often the GETs in
// ranges fetched it.
func breakdown(reg archiveRegions, ranges [][2]int64) fetchBreakdown {
	// Count per 4 KiB page: exact enough, and cheap.
	const page = 4096
	counts := make([]int32, (reg.size+page-1)/page)
	var b fetchBreakdown
	for _, r := range ranges {
		b.fetched += r[1] - r[0] + 1
		for p := r[0] / page; p <= r[1]/page; p++ {
			counts[p]++
		}
	}
	for p, n := range counts {
		if n == 0 {
			continue
		}
		lo := int64(p) * page
		bytes := min(reg.size, lo+page) - lo
		needed := lo < reg.windowsEnd || lo+page > reg.endFrom
		switch {
		case !needed:
			b.unread += int64(n) * bytes
		default:
			b.once += bytes
			b.again += int64(n-1) * bytes
		}
	}
	return b
}

// TestNumpyLoadsFetchEachByteOnce has eight processes np.load the windows
// of many archives at once through a fresh mount with a cache far smaller
// than the archives, behind the benchmark's S3-like shaper, and checks at
// the proxy that bgbfs fetched at most ampBound times the archives'
// bytes: numpy reads the end of each archive first, then from the start,
// and closes before the end; the tail block, the head block and the
// read-ahead must each be fetched once. The breakdown logged says where
// any extra bytes went.
func TestNumpyLoadsFetchEachByteOnce(t *testing.T) {
	srv := env.server(t)
	local := filepath.Join(t.TempDir(), "npz")
	if err := testbed.GenNPZ(env.repo, local, testbed.NPZSpec{Train: ampArchives, Windows: ampWindows, Seed: 1616, CompressedOnly: true}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(local, "train")
	bucket := newBucket(t, srv, "bgbfs-amp")
	var names []string
	regions := map[string]archiveRegions{}
	var total int64
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".npz") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if err := srv.Admin().PutFile(context.Background(), bucket, "train/"+e.Name(), p); err != nil {
			t.Fatal(err)
		}
		reg, err := readRegions(p)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, e.Name())
		regions[e.Name()] = reg
		total += reg.size
	}
	slices.Sort(names)

	proxy := newProxy(t, srv.Endpoint)
	shaper, err := testbed.NewShapingProxy(proxy.URL, 20*time.Millisecond, 90e6)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shaper.Close() })
	m := mount(t, mountSpec{
		Source: "s3://" + bucket + "/", Endpoint: shaper.URL, Creds: rootCreds(srv),
		Args: []string{"--cache-size", ampCacheSize},
	})
	// List first, so only the reads reach the proxy.
	if _, err := os.ReadDir(filepath.Join(m.Mountpoint, "train")); err != nil {
		t.Fatal(err)
	}
	dropPageCache(t)
	proxy.Reset()

	start := time.Now()
	var wg sync.WaitGroup
	for w := range ampLoaders {
		var mine []string
		for i := w; i < len(names); i += ampLoaders {
			mine = append(mine, filepath.Join(m.Mountpoint, "train", names[i]))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := exec.Command(testbed.Python, append([]string{"-c", ampLoad, dir}, mine...)...).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "OK" {
				t.Errorf("loader %d: %v\n%s", w, err, lastBytes(string(out), 2000))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
	c, reqs := proxy.Take()

	perArchive := map[string][][2]int64{}
	for _, r := range getRequests(reqs) {
		a, b, ok := httpRange(r.Range)
		if !ok {
			t.Errorf("GET without a byte range: %s", r)
			continue
		}
		name := path.Base(strings.SplitN(r.URI, "?", 2)[0])
		perArchive[name] = append(perArchive[name], [2]int64{a, b})
	}
	var all fetchBreakdown
	var worst []string
	for _, n := range names {
		b := breakdown(regions[n], perArchive[n])
		all.add(b)
		if b.fetched > regions[n].size {
			worst = append(worst, fmt.Sprintf("%s: %d GETs, %d bytes of %d (%d unread, %d again)", n, len(perArchive[n]), b.fetched, regions[n].size, b.unread, b.again))
		}
	}
	ratio := float64(c.GetObjectBytes) / float64(total)
	t.Logf("%d loaders, %d archives, %d bytes, cache %s: %v in %v; fetched %.3f× the archives' bytes: %d needed once, %d never read, %d fetched again",
		ampLoaders, len(names), total, ampCacheSize, c, elapsed.Round(time.Millisecond), ratio, all.once, all.unread, all.again)
	for i, w := range worst {
		if i == 10 {
			t.Logf("... %d more archives fetched more than their size", len(worst)-10)
			break
		}
		t.Log(w)
	}
	if c.GetObjectBytes < total/2 {
		t.Fatalf("only %d bytes fetched at the proxy for %d bytes of archives loaded by a fresh mount: is the proxy in the path?", c.GetObjectBytes, total)
	}
	if ratio > ampBound {
		t.Errorf("fetched %d bytes for %d bytes of archives: %.3f×, want at most %.2f× (%d bytes never read, %d fetched more than once)",
			c.GetObjectBytes, total, ratio, ampBound, all.unread, all.again)
		// The GETs of a few archives fetched more than once, in order.
		shown := 0
		for _, n := range names {
			if breakdown(regions[n], perArchive[n]).again == 0 || shown == 3 {
				continue
			}
			shown++
			var lines []string
			for _, r := range getRequests(reqs) {
				if strings.Contains(r.URI, "/"+n) {
					lines = append(lines, r.Time.Format("05.000")+" "+r.Range)
				}
			}
			t.Logf("GETs of %s (%d bytes):\n%s", n, regions[n].size, strings.Join(lines, "\n"))
		}
	}
}
