package integration

// The first open of a member after a restart with a dir `bgbfs index`
// filled: the dir's archive file holds the zip directory, the member
// indexes and what numpy's header read wants, so the first np.load of
// windows.npy (mmap_mode="r") and one row of it fetch from the archive
// only the bytes of that row's stretch: nothing of the member's head, of
// the archive's tail (its zip directory) or of the other member. GETs are
// counted at a CountingProxy; the rows read are compared with the member
// as numpy wrote it.

import (
	"fmt"
	"hash/crc32"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// firstOpenScript reads, in one process, row ROW of windows.npy of each
// archive named on the command line (np.load with mmap_mode="r", as a
// loader does), printing "NAME CRC32" per archive.
const firstOpenScript = `
import sys, zlib
import numpy as np
mp, row = sys.argv[1], int(sys.argv[2])
for name in sys.argv[3:]:
    w = np.array(np.load(mp + "/" + name + ".d/windows.npy", mmap_mode="r")[row])
    print(name, zlib.crc32(np.ascontiguousarray(w)))
`

// TestIndexRestartFirstOpen fills a dir with `bgbfs index` (a local dir,
// then an s3:// one), mounts it fresh and reads the next-to-last window of every
// archive's windows.npy through numpy: no GET of an archive touches the
// first MiB of the member's data (the .npy header numpy reads at every
// np.load, which the kernel reads as 64 KiB or more of content) or
// anything after the member (the labels member, the zip directory).
func TestIndexRestartFirstOpen(t *testing.T) {
	d := idxFixture(t)
	srv := env.server(t)
	proxy := newProxy(t, srv.Endpoint)
	source := "s3://" + d.Bucket + "/" + idxTrainPrefix
	other := newBucket(t, srv, "bgbfs-idxrestart")
	for _, c := range []struct{ name, dir string }{{"local dir", t.TempDir()}, {"s3 dir", "s3://" + other + "/idx/"}} {
		dir := c.dir
		t.Run(c.name, func(t *testing.T) {
			if res := runIndex(t, proxy.URL, source, dir); res.ExitCode != 0 {
				t.Fatalf("bgbfs index exited %d; stderr:\n%s", res.ExitCode, lastBytes(res.Stderr, 3000))
			}
			m := mountIdx(t, idxMountSpec{CacheDir: dir, Endpoint: proxy.URL})
			proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
			proxy.Reset()
			firstOpens(t, m.Mountpoint, d.Archives, idxWindows-2)
			proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
			c, reqs := proxy.Take()
			t.Logf("first opens of %d archives: %v; %v", len(d.Archives), c, m.Counts(t))
			checkWindowOnlyGets(t, d, getsOf(reqs, d.Bucket))
			if mc := m.Counts(t); mc.Builds != 0 {
				t.Errorf("the mount built %v indexes, want 0: bgbfs index put them all in the dir", mc.Builds)
			}
			m.Unmount(t)
		})
	}
}

// firstOpens reads row of windows.npy of each archive with numpy, one
// after another in one process, and checks each row's CRC-32.
func firstOpens(t testing.TB, mp string, archives []*idxArchive, row int64) {
	t.Helper()
	args := []string{"-c", firstOpenScript, mp, strconv.FormatInt(row, 10)}
	want := map[string]string{}
	for _, a := range archives {
		args = append(args, a.Name)
		m, rowBytes, hdr := a.Member("windows.npy")
		want[a.Name] = strconv.FormatUint(uint64(crc32.ChecksumIEEE(m.Data[hdr+row*rowBytes:hdr+(row+1)*rowBytes])), 10)
	}
	out, err := exec.Command("/usr/bin/python3", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("numpy reads: %v\n%s", err, lastBytes(string(out), 3000))
	}
	got := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		name, crc, _ := strings.Cut(line, " ")
		if w, ok := want[name]; !ok || crc != w {
			t.Errorf("numpy read %q, want CRC-32 %s of row %d of %s", line, w, row, name)
		}
		got++
	}
	if got != len(archives) {
		t.Errorf("numpy read %d rows, want %d:\n%s", got, len(archives), out)
	}
}

// checkWindowOnlyGets fails the test for every GET of an archive that
// reaches into the first MiB of its windows.npy data or past that
// member's data.
func checkWindowOnlyGets(t testing.TB, d *idxData, gets []testbed.Request) {
	t.Helper()
	byName := map[string]*idxArchive{}
	for _, a := range d.Archives {
		byName[a.Name] = a
	}
	var bad []string
	for _, g := range gets {
		path, _, _ := strings.Cut(g.URI, "?")
		a := byName[filepath.Base(path)]
		first, last, ok := httpRange(g.Range)
		if a == nil || !ok {
			bad = append(bad, fmt.Sprintf("%s %s: not a ranged GET of an archive", g.URI, g.Range))
			continue
		}
		dataOff, err := zipDataOffset(a.Data, "windows.npy")
		if err != nil {
			t.Fatal(err)
		}
		head, end := dataOff+1<<20, dataOff+a.Windows.CompressedSize
		if first < head || last >= end {
			bad = append(bad, fmt.Sprintf("%s bytes %d-%d: the member's data is %d-%d, the window far past its first MiB", a.Name, first, last, dataOff, end-1))
		}
	}
	t.Logf("%d GETs of the archives", len(gets))
	if len(bad) > 0 {
		t.Errorf("%d of %d GETs outside the window's stretch of windows.npy:\n%s", len(bad), len(gets), strings.Join(bad[:min(len(bad), 20)], "\n"))
	}
}
