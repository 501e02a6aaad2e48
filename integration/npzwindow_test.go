package integration

// What reading one window of a compressed member costs, counted at a
// CountingProxy.

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// memberWindowProbe loads a window member with np.load(mmap_mode="r"),
// says READY, then for each index read from stdin copies that window out
// of the map and prints its SHA-256: the test counts at the proxy what
// each window costs, apart from the open and the header.
const memberWindowProbe = `
import hashlib, sys
import numpy as np
a = np.load(sys.argv[1], mmap_mode="r")
print("READY", a.shape[0], flush=True)
for line in sys.stdin:
    i = int(line)
    w = np.array(a[i])
    print("WINDOW", i, hashlib.sha256(w.tobytes()).hexdigest(), flush=True)
`

// TestNPZMemberWindowBytes counts, at a CountingProxy, the bytes S3 sends
// for one training window read through numpy's mmap of NAME.npz.d/windows.npy,
// with the default --npz-checkpoint-span (1 MiB) and the block size and
// kernel read-ahead --npz-members picks.
//
//   - deflated (np.savez_compressed): the mount has --cache-size 4MiB:
//     half of it holds member indexes (the index of this 18.7 MB member at
//     a 1 MiB span is about 0.6 MB), the other half 2 MiB of blocks, so
//     once the archive has gone through, the block cache holds little of
//     it and the bytes counted are what one window costs. The member is
//     read whole through the view (its index is built), the page cache is
//     dropped, then each window must cost at most 4x its compressed size,
//     taken as the member's compress_size/file_size x 1,167,360 (the data
//     is uniform, so every window compresses alike). What it costs: the
//     window, up to a span before it (inflated from its access point), the
//     kernel's mmap read-around, the span bgbfs prefetches after a read, and
//     a block at each end.
//   - stored (np.savez): on a fresh mount with the default cache, each
//     window must cost at most 2x the window plus 2 blocks: the window, the
//     read-around, and the blocks its ends fall in.
//
// The windows measured are three or more apart, so that what is read
// ahead for one is not counted as free for the next; every window's bytes
// are checked against the source.
func TestNPZMemberWindowBytes(t *testing.T) {
	d := memberFixture(t)
	srv := env.server(t)
	// The kernel reads on after a fault returns and bgbfs prefetches after
	// a read: each window's count waits until the proxy has been idle this
	// long (at most settleLimit).
	const readAround, settleLimit = 300 * time.Millisecond, 10 * time.Second
	settle := func(t *testing.T, proxy *testbed.CountingProxy) {
		t.Helper()
		if !proxy.WaitQuiet(readAround, settleLimit) {
			t.Logf("the proxy was still busy after %v", settleLimit)
		}
	}

	// probe reads the windows indices of the member w (data at hdr) at p
	// through numpy's mmap, one at a time, and checks what each cost at the
	// proxy against bound; unit is the size the figures are given in (a
	// window, or a window's compressed bytes).
	probe := func(t *testing.T, proxy *testbed.CountingProxy, p string, hdr int64, w *memberFile, indices []int, unit int64, unitName string, bound int64) {
		t.Helper()
		cmd := exec.Command(testbed.Python, "-c", memberWindowProbe, p)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		bg := startBgCmd(t, cmd)
		lines := bufio.NewScanner(stdout)
		next := func() []string {
			t.Helper()
			if !lines.Scan() {
				stdin.Close()
				bg.Wait(5 * time.Second)
				t.Fatalf("the numpy probe stopped: %v\n%s", lines.Err(), stderr.String())
			}
			return strings.Fields(lines.Text())
		}
		n := int((w.Size - hdr) / memberWindowBytes)
		if f := next(); len(f) != 2 || f[0] != "READY" || f[1] != strconv.Itoa(n) {
			t.Fatalf("numpy probe: %q, want READY %d", f, n)
		}
		settle(t, proxy)
		proxy.Reset()
		var sum, least int64
		for _, i := range indices {
			fmt.Fprintln(stdin, i)
			f := next()
			settle(t, proxy)
			c, reqs := proxy.Take()
			off := hdr + int64(i)*memberWindowBytes
			want := sha256Hex(w.Data[off : off+memberWindowBytes])
			if len(f) != 3 || f[0] != "WINDOW" || f[1] != strconv.Itoa(i) || f[2] != want {
				t.Errorf("window %d through numpy's mmap: %q, want sha256 %s", i, f, want)
			}
			gets := getRequests(reqs)
			_, overlap, largest, _ := rangeStats(gets)
			// How far the GETs reach before and after the window's bytes
			// in the archive (its data starts near the member's offset).
			lo, hi := int64(-1), int64(-1)
			for _, g := range gets {
				if a, z, ok := httpRange(g.Range); ok {
					if lo < 0 || a < lo {
						lo = a
					}
					hi = max(hi, z+1)
				}
			}
			t.Logf("window %d (bytes %d..%d of the member): %d GETs of archive bytes %d..%d (largest %d bytes, %d bytes asked twice), %d bytes = %.2fx %s, bound %d",
				i, off, off+memberWindowBytes, c.GetObject, lo, hi, largest, overlap, c.GetObjectBytes, float64(c.GetObjectBytes)/float64(unit), unitName, bound)
			if c.GetObjectBytes > bound {
				t.Errorf("window %d cost %d bytes from S3, more than the bound %d; GETs:\n%s", i, c.GetObjectBytes, bound, testbed.FormatRequests(gets, 40))
			}
			if c.ListObjectsV2 != 0 || c.HeadObject != 0 {
				t.Errorf("window %d: %v, want only GETs", i, c)
			}
			sum += c.GetObjectBytes
			least += unit
		}
		stdin.Close()
		if !bg.Wait(10 * time.Second) {
			t.Errorf("the numpy probe did not exit")
		}
		t.Logf("%d windows: %d bytes from S3 in all, %.2fx %s each on average", len(indices), sum, float64(sum)/float64(len(indices))/float64(unit), unitName)
		// The cache did not answer for S3: the measurement means something.
		if sum < least {
			t.Errorf("only %d bytes fetched for %d windows: the block cache served them, the test proves nothing", sum, len(indices))
		}
	}

	t.Run("deflated", func(t *testing.T) {
		a := d.Archives[memberCompressedRel]
		w := a.Member("windows.npy")
		hdr, err := npyDataOffset(w.Data)
		if err != nil || !w.Deflated {
			t.Fatalf("fixture: %s windows.npy: deflated %v, %v", a.Rel, w.Deflated, err)
		}
		ratio := float64(w.CompressedSize) / float64(w.Size)
		window := int64(ratio * memberWindowBytes)
		t.Logf("%s windows.npy: %d bytes deflated to %d (%.3fx); one window ~ %d compressed bytes", a.Rel, w.Size, w.CompressedSize, 1/ratio, window)
		proxy := newProxy(t, srv.Endpoint)
		m := mountMembers(t, d, proxy.URL, memberDataPrefix, nil, "--npz-members", "--cache-size", "4MiB")
		p := filepath.Join(m.Mountpoint, filepath.FromSlash(a.Rel+memberDirSuffix), "windows.npy")
		stop := watchdog(t, m, 5*time.Minute, "reading windows through the view")
		defer stop()
		proxy.Reset()
		sum, n, err := hashFile(p)
		if err != nil || n != w.Size || sum != sha256Hex(w.Data) {
			t.Fatalf("warming the index: read %d of %d bytes, %v, sha256 matches %v", n, w.Size, err, sum == sha256Hex(w.Data))
		}
		t.Logf("first read of the whole member (builds the index): %v; the archive is %d bytes", proxy.Counts(), len(a.Data))
		dropPageCache(t)
		probe(t, proxy, p, hdr, w, []int{2, 5, 8, 11, 15}, window, "its compressed size", 4*window)
	})

	// A stored member needs no index: a fresh mount with the default
	// cache is cold. The bound allows the kernel's read-around (about a
	// window), a block at each end, and the one checkpoint span (1 MiB by
	// default) the view prefetches past each request so that the kernel's
	// chain of requests for one window costs one round trip.
	t.Run("stored", func(t *testing.T) {
		a := d.Archives[memberStoredRel]
		w := a.Member("windows.npy")
		hdr, err := npyDataOffset(w.Data)
		if err != nil || w.Deflated {
			t.Fatalf("fixture: %s windows.npy: deflated %v, %v", a.Rel, w.Deflated, err)
		}
		proxy := newProxy(t, srv.Endpoint)
		dropPageCache(t)
		m := mountMembers(t, d, proxy.URL, memberDataPrefix, nil, "--npz-members")
		p := filepath.Join(m.Mountpoint, filepath.FromSlash(a.Rel+memberDirSuffix), "windows.npy")
		stop := watchdog(t, m, 5*time.Minute, "reading windows through the view")
		defer stop()
		probe(t, proxy, p, hdr, w, []int{2, 5, 9}, memberWindowBytes, "the window", 2*memberWindowBytes+2*memberViewBlock+1<<20)
	})
}
