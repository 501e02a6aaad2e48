package integration

// The member view's bytes: every member read through the view equals the
// member as archive/zip and numpy read it locally.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// memberRead is one pread of a member file.
type memberRead struct {
	file int // index into the open member files
	off  int64
	n    int
}

// memberReads draws count preads over a member of size bytes: a fifth
// cross an access point (every span bytes of output), some are exactly
// one window at a window boundary (window members, whose data starts at
// hdr), a tenth cross the end of the member and some start at or past
// it; the rest are random offsets and lengths.
func memberReads(rng *rand.Rand, file int, size, span, hdr int64, windows bool, count int) []memberRead {
	var sizes []int
	for _, n := range readSizes() {
		if n <= 3<<20+11 {
			sizes = append(sizes, n)
		}
	}
	out := make([]memberRead, 0, count)
	for i := range count {
		n := sizes[rng.IntN(len(sizes))]
		var off int64
		switch {
		case i%10 == 1 && size > 1:
			n = max(n, 2)
			off = max(0, size-int64(1+rng.IntN(n-1)))
		case i%20 == 3:
			off = size + int64(rng.IntN(3))
		case i%5 == 0 && size > span:
			k := 1 + rng.Int64N(size/span)
			off = max(0, k*span-1-rng.Int64N(4096))
			n = 2 + rng.IntN(int(2*span))
		case i%7 == 2 && windows:
			k := rng.Int64N((size - hdr) / memberWindowBytes)
			off, n = hdr+k*memberWindowBytes, memberWindowBytes
		default:
			off = rng.Int64N(max(size, 1))
		}
		out = append(out, memberRead{file, off, n})
	}
	return out
}

// memberOpen is a member file opened through the mount, with its content.
type memberOpen struct {
	path   string
	member *memberFile
	f      *os.File
}

// openMembers opens every member of every viewable archive.
func openMembers(t *testing.T, d *memberData, mp string) []memberOpen {
	t.Helper()
	var out []memberOpen
	for _, a := range d.Viewable() {
		for _, mf := range a.Members {
			p := filepath.Join(mp, filepath.FromSlash(a.Rel+memberDirSuffix), mf.Name)
			f, err := os.Open(p)
			if err != nil {
				t.Fatalf("open %s: %v", p, errnoOf(err))
			}
			t.Cleanup(func() { f.Close() })
			out = append(out, memberOpen{path: a.Rel + memberDirSuffix + "/" + mf.Name, member: mf, f: f})
		}
	}
	return out
}

// runMemberReads makes the preads on 4 goroutines and reports every read
// that did not return exactly the member's bytes.
func runMemberReads(t *testing.T, files []memberOpen, reads []memberRead) {
	t.Helper()
	var mu sync.Mutex
	var bad []string
	var total int64
	start := time.Now()
	parallel(len(reads), 4, func(i int) {
		r := reads[i]
		mo := files[r.file]
		msg := checkPread(mo.f, bytes.NewReader(mo.member.Data), mo.member.Size, r.off, r.n)
		mu.Lock()
		defer mu.Unlock()
		total += int64(max(0, min(int64(r.n), mo.member.Size-r.off)))
		if msg != "" {
			bad = append(bad, fmt.Sprintf("pread(%s, off=%d, len=%d) of %d bytes: %s", mo.path, r.off, r.n, mo.member.Size, msg))
		}
	})
	sort.Strings(bad)
	for i, msg := range bad {
		if i == 25 {
			t.Errorf("... %d more", len(bad)-25)
			break
		}
		t.Error(msg)
	}
	t.Logf("%d preads over %d members, %d bytes in %v, %d wrong", len(reads), len(files), total, time.Since(start).Round(time.Millisecond), len(bad))
}

// memberNumpyCheck loads members through the view with numpy and compares
// them with the arrays numpy loads from the local archive: the spec (a
// JSON file, argv[1]) lists the member file, the local archive, the array
// name, and for mmap checks the window indices to compare.
const memberNumpyCheck = `
import json, sys
import numpy as np
for c in json.load(open(sys.argv[1])):
    with np.load(c["npz"]) as z:
        want = z[c["key"]]
    if c["indices"] is not None:
        got = np.load(c["path"], mmap_mode="r")
        if not isinstance(got, np.memmap):
            sys.exit("MISMATCH %s: np.load(mmap_mode='r') gave %s, not a memmap" % (c["path"], type(got)))
    else:
        got = np.load(c["path"])
    if got.dtype != want.dtype or got.shape != want.shape:
        sys.exit("MISMATCH %s: %s %s, want %s %s" % (c["path"], got.dtype, got.shape, want.dtype, want.shape))
    if c["indices"] is not None:
        for i in c["indices"]:
            if not np.array_equal(np.asarray(got[i]), want[i]):
                sys.exit("MISMATCH %s: window %d differs" % (c["path"], i))
    elif not np.array_equal(got, want) or got.flags.f_contiguous != want.flags.f_contiguous:
        sys.exit("MISMATCH %s: content or order differs" % c["path"])
    print("OK", c["path"], flush=True)
`

// TestNPZMemberContent reads every member of every archive through the
// view with --npz-checkpoint-span 64KiB and compares it with what
// archive/zip reads locally: random preads on a fresh mount (the first
// read of a compressed member indexes it), whole sequential reads, random
// preads again from the page cache dropped, then numpy: np.load of every
// member, and np.load(mmap_mode="r")[i] of windows and labels for several
// i, against np.load of the local archive.
func TestNPZMemberContent(t *testing.T) {
	d := memberFixture(t)
	dropPageCache(t)
	m := mountMembers(t, d, env.server(t).Endpoint, memberDataPrefix, nil, "--npz-members", "--npz-checkpoint-span", "64KiB")
	mp := m.Mountpoint
	stop := watchdog(t, m, 10*time.Minute, "TestNPZMemberContent")
	defer stop()

	kinds := map[bool]int{}
	for _, a := range d.Viewable() {
		for _, mf := range a.Members {
			kinds[mf.Deflated]++
		}
	}
	if kinds[true] == 0 || kinds[false] == 0 {
		t.Fatalf("fixture: want deflated and stored members, got %v", kinds)
	}

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0x6e707a))
	draw := func(files []memberOpen) []memberRead {
		var reads []memberRead
		for i, mo := range files {
			hdr, err := npyDataOffset(mo.member.Data)
			if err != nil {
				t.Fatalf("%s: %v", mo.path, err)
			}
			count := 20
			if mo.member.Size > 4<<20 {
				count = 150
			} else if mo.member.Size > memberTestSpan {
				count = 50
			}
			isWindows := path.Base(mo.path) == "windows.npy"
			reads = append(reads, memberReads(rng, i, mo.member.Size, memberTestSpan, hdr, isWindows, count)...)
		}
		rng.Shuffle(len(reads), func(i, j int) { reads[i], reads[j] = reads[j], reads[i] })
		return reads
	}

	t.Run("cold_preads", func(t *testing.T) {
		files := openMembers(t, d, mp)
		runMemberReads(t, files, draw(files))
	})

	t.Run("sequential", func(t *testing.T) {
		dropPageCache(t)
		for _, a := range d.Viewable() {
			for _, mf := range a.Members {
				p := filepath.Join(mp, filepath.FromSlash(a.Rel+memberDirSuffix), mf.Name)
				sum, n, err := readSequential(p, oneMiB)
				if err != nil || n != mf.Size || sum != sha256Hex(mf.Data) {
					t.Errorf("%s: read %d of %d bytes, err %v, sha256 matches %v", p, n, mf.Size, errnoOf(err), sum == sha256Hex(mf.Data))
				}
			}
			// The archive itself is unchanged by the view.
			if sum, n, err := hashFile(filepath.Join(mp, filepath.FromSlash(a.Rel))); err != nil || sum != sha256Hex(a.Data) {
				t.Errorf("%s: read %d bytes, %v; the archive differs from the source", a.Rel, n, err)
			}
		}
	})

	t.Run("warm_preads", func(t *testing.T) {
		dropPageCache(t)
		files := openMembers(t, d, mp)
		runMemberReads(t, files, draw(files))
	})

	t.Run("numpy", func(t *testing.T) {
		dropPageCache(t)
		type check struct {
			Path    string `json:"path"`
			NPZ     string `json:"npz"`
			Key     string `json:"key"`
			Indices []int  `json:"indices"`
		}
		var checks []check
		windows := 0
		for _, a := range d.Viewable() {
			for _, mf := range a.Members {
				c := check{
					Path: filepath.Join(mp, filepath.FromSlash(a.Rel+memberDirSuffix), mf.Name),
					NPZ:  a.Local,
					Key:  strings.TrimSuffix(mf.Name, ".npy"),
				}
				if mf.Name == "windows.npy" || mf.Name == "labels.npy" {
					hdr, _ := npyDataOffset(mf.Data)
					per := int64(memberWindowBytes)
					if mf.Name == "labels.npy" {
						per = 15360 * 4
					}
					n := int((mf.Size - hdr) / per)
					c.Indices = []int{0, n - 1}
					if n > 2 {
						c.Indices = append(c.Indices, n/2, 1+rng.IntN(n-2))
					}
					if mf.Name == "windows.npy" {
						windows += len(c.Indices)
					}
				}
				checks = append(checks, c)
			}
		}
		spec := filepath.Join(t.TempDir(), "checks.json")
		b, _ := json.Marshal(checks)
		if err := os.WriteFile(spec, b, 0o644); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		out, err := exec.Command(testbed.Python, "-c", memberNumpyCheck, spec).CombinedOutput()
		if err != nil {
			t.Fatalf("numpy through the view: %v\n%s", err, lastBytes(string(out), 4000))
		}
		if ok := strings.Count(string(out), "OK "); ok != len(checks) {
			t.Errorf("numpy checked %d members, want %d:\n%s", ok, len(checks), out)
		}
		t.Logf("numpy loaded %d members (%d windows through mmap) in %v", len(checks), windows, time.Since(start).Round(time.Millisecond))
	})

	if !m.Alive() {
		t.Errorf("the daemon died")
	}
}
