package integration

// Decoded members read by the kernel directly (FUSE passthrough): once
// numpy read every window of some archives through a mount with a local
// --cache-dir, their decoded members are whole on disk; a later mount
// checks each against its CRC-32 and then hands it to the kernel, so that
// numpy's reads (np.load whole, and with mmap_mode="r" a window at a
// time) get the bytes numpy wrote with no GET (counted at a
// CountingProxy) and without the daemon reading them (its rchar, from
// /proc, grows by far less than the bytes read). A later daemon of the
// same boot trusts those checks instead of reading each file whole
// again. A data file damaged on disk fails the check: right bytes,
// fetched again, and a log line.
// Page-cached and passthrough opens of one member never fail an open,
// whatever their order. --npz-passthrough=false serves every read
// through the daemon.

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	passthroughArchives = 3
	metricVerified      = "bgbfs_npz_decoded_verified_total"
	metricVerifyFailed  = "bgbfs_npz_decoded_verify_failed_total"
	metricStampsTrusted = "bgbfs_npz_decoded_stamps_trusted_total"
	metricPassthrough   = "bgbfs_npz_passthrough_opens_total"
	passthroughOnMsg    = "decoded members served by FUSE passthrough"
	passthroughOffMsg   = "decoded members served by bgbfs, not by FUSE passthrough"
	refusedMsg          = "the kernel refused its file for FUSE passthrough"
)

// windowsScript reads every window of windows.npy of each archive named:
// mode "rows" opens the member per window (np.load with mmap_mode="r",
// as a loader does), "whole" loads it whole (np.load). It prints
// "NAME ROW CRC32" per window.
const windowsScript = `
import sys, zlib
import numpy as np
mode, mp = sys.argv[1], sys.argv[2]
for name in sys.argv[3:]:
    p = mp + "/" + name + ".d/windows.npy"
    if mode == "whole":
        a = np.load(p)
        rows = [a[i] for i in range(a.shape[0])]
    else:
        n = np.load(p, mmap_mode="r").shape[0]
        rows = [np.array(np.load(p, mmap_mode="r")[i]) for i in range(n)]
    for i, w in enumerate(rows):
        print(name, i, zlib.crc32(np.ascontiguousarray(w)))
`

// readWindows reads every window of each archive's windows.npy through
// mp with numpy (mode as windowsScript's), checks each against what numpy
// wrote, and returns the bytes of the windows read.
func readWindows(mp string, archives []*idxArchive, mode string) (int64, error) {
	args := []string{"-c", windowsScript, mode, mp}
	want := map[string]string{}
	for _, a := range archives {
		args = append(args, a.Name)
		m, rowBytes, hdr := a.Member("windows.npy")
		for row := int64(0); hdr+(row+1)*rowBytes <= int64(len(m.Data)); row++ {
			want[a.Name+" "+strconv.FormatInt(row, 10)] = strconv.FormatUint(uint64(crc32.ChecksumIEEE(m.Data[hdr+row*rowBytes:hdr+(row+1)*rowBytes])), 10)
		}
	}
	out, err := exec.Command("/usr/bin/python3", args...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("numpy reads (%s): %w\n%s", mode, err, lastBytes(string(out), 3000))
	}
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || want[f[0]+" "+f[1]] != f[2] {
			return 0, fmt.Errorf("numpy read (%s) %q: want CRC-32 %s", mode, line, want[f[0]+" "+f[1]])
		}
		seen++
	}
	if seen != len(want) {
		return 0, fmt.Errorf("numpy read (%s) %d windows, want %d", mode, seen, len(want))
	}
	return int64(seen) * memberWindowBytes, nil
}

func mustReadWindows(t testing.TB, mp string, archives []*idxArchive, mode string) int64 {
	t.Helper()
	n, err := readWindows(mp, archives, mode)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// decodedDataFiles returns, for each archive, the data file in dir whose
// bytes are its windows.npy exactly (a complete decoded member, of the
// member's length), or fails the test.
func decodedDataFiles(t testing.TB, dir string, archives []*idxArchive) map[string]string {
	t.Helper()
	found := map[string]string{}
	err := filepath.WalkDir(filepath.Join(dir, "decoded"), func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || strings.HasSuffix(p, ".units") {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, a := range archives {
			if bytes.Equal(data, a.Windows.Data) {
				found[a.Name] = p
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != len(archives) {
		t.Fatalf("%d of %d archives have a data file in the dir that is their windows.npy exactly", len(found), len(archives))
	}
	return found
}

// metric scrapes one counter of m.
func (m *idxMount) metric(t testing.TB, name string) float64 {
	t.Helper()
	snap := scrapeMetrics(t, m.Addr)
	if !snap.Has(name) {
		t.Fatalf("/metrics has no %s", name)
	}
	return snap.Sum(name)
}

// waitMetric waits until counter name of m reaches n.
func (m *idxMount) waitMetric(t testing.TB, name string, n float64) {
	t.Helper()
	if !pollUntil(20*time.Second, func() bool { return m.metric(t, name) >= n }) {
		t.Fatalf("%s stayed at %v, want %v; stderr:\n%s", name, m.metric(t, name), n, lastBytes(m.Stderr(), 3000))
	}
}

// waitLog waits until the daemon logged a line holding msg (said just
// after the mount is up).
func (m *idxMount) waitLog(msg string) bool {
	return pollUntil(10*time.Second, func() bool { return strings.Contains(m.Stderr(), msg) })
}

// touchMembers opens and reads the start of each archive's windows.npy:
// a first open, which starts the mount's check of its decoded file.
func touchMembers(t testing.TB, mp string, archives []*idxArchive) {
	t.Helper()
	for _, a := range archives {
		b := make([]byte, 4096)
		f, err := os.Open(filepath.Join(mp, a.Name+".d", "windows.npy"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.Read(b)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// epochOne reads every window of the archives through a mount with
// cache dir dir, so that every member is whole in the dir (unmounting
// waits for the writes), and returns their data files. Each member is
// checked once its file is complete, with no open after that (the read
// of a member's last window is its last open here).
func epochOne(t *testing.T, dir, endpoint string, archives []*idxArchive) map[string]string {
	t.Helper()
	m := mountIdx(t, idxMountSpec{CacheDir: dir, Endpoint: endpoint})
	if !m.waitLog(passthroughOnMsg) {
		t.Fatalf("no %q line at start (this test runs as root on Linux 6.9 or later); stderr:\n%s", passthroughOnMsg, lastBytes(m.Stderr(), 3000))
	}
	mustReadWindows(t, m.Mountpoint, archives, "rows")
	m.waitMetric(t, metricVerified, float64(len(archives)))
	m.Unmount(t)
	return decodedDataFiles(t, dir, archives)
}

func TestNPZPassthrough(t *testing.T) {
	d := idxFixture(t)
	archives := d.Archives[:passthroughArchives]
	srv := env.server(t)
	proxy := newProxy(t, srv.Endpoint)
	dir := t.TempDir()

	files := epochOne(t, dir, proxy.URL, archives)

	// Epoch 2 on a new daemon: once checked, every member is read by
	// the kernel from its file: no GET, and the daemon reads next to
	// nothing.
	m := mountIdx(t, idxMountSpec{CacheDir: dir, Endpoint: proxy.URL})
	t.Run("read by the kernel", func(t *testing.T) {
		// An open made before the mount turned passthrough on (just
		// after it appeared in mountinfo) starts no check.
		if !m.waitLog(passthroughOnMsg) {
			t.Fatalf("no %q line; stderr:\n%s", passthroughOnMsg, lastBytes(m.Stderr(), 3000))
		}
		touchMembers(t, m.Mountpoint, archives)
		m.waitMetric(t, metricVerified, passthroughArchives)
		dropPageCache(t)
		proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
		proxy.Reset()
		before := procReadBytes(m.Pid())
		read := mustReadWindows(t, m.Mountpoint, archives, "rows")
		read += mustReadWindows(t, m.Mountpoint, archives, "whole")
		daemonRead := procReadBytes(m.Pid()) - before
		t.Logf("%d bytes of windows read; the daemon read %d bytes; %v", read, daemonRead, proxy.Counts())
		if c := proxy.Counts(); c.GetObject != 0 {
			t.Errorf("epoch 2: %+v; want no GET", c)
		}
		if daemonRead > read/20 {
			t.Errorf("the daemon read %d bytes while numpy read %d of windows: the reads went through it", daemonRead, read)
		}
		if n := m.metric(t, metricPassthrough); n == 0 {
			t.Errorf("%s = 0", metricPassthrough)
		}
	})

	// A new daemon of the same boot trusts the checks the last one
	// stamped: its first opens are passthrough without it reading each
	// member's file whole again (it did before: an epoch after a restart
	// read the disk twice).
	t.Run("restart trusts this boot's checks", func(t *testing.T) {
		m.Unmount(t)
		dropPageCache(t)
		m = mountIdx(t, idxMountSpec{CacheDir: dir, Endpoint: proxy.URL})
		if !m.waitLog(passthroughOnMsg) {
			t.Fatalf("no %q line; stderr:\n%s", passthroughOnMsg, lastBytes(m.Stderr(), 3000))
		}
		before := procReadBytes(m.Pid())
		touchMembers(t, m.Mountpoint, archives)
		m.waitMetric(t, metricVerified, passthroughArchives)
		daemonRead := procReadBytes(m.Pid()) - before
		var whole int64
		for _, a := range archives {
			whole += int64(len(a.Windows.Data))
		}
		t.Logf("checks of %d members' files (%d bytes): the daemon read %d bytes", passthroughArchives, whole, daemonRead)
		if daemonRead > whole/10 {
			t.Errorf("the daemon read %d bytes to check %d bytes of files the last mount checked", daemonRead, whole)
		}
		if n := m.metric(t, metricStampsTrusted); n != passthroughArchives {
			t.Errorf("%s = %v, want %d", metricStampsTrusted, n, passthroughArchives)
		}
		mustReadWindows(t, m.Mountpoint, archives, "rows")
		if n := m.metric(t, metricPassthrough); n == 0 {
			t.Errorf("%s = 0", metricPassthrough)
		}
	})

	// A page-cached open held while the member becomes complete, is
	// checked, and after: opens from several processes at once never
	// fail, whatever kind each gets; once it is closed, opens are
	// passthrough.
	t.Run("mixed opens", func(t *testing.T) {
		m.Unmount(t)
		one := archives[1:2]
		// One page's record cleared: the member is not complete, and
		// its first open is page-cached.
		_, rowBytes, hdr := one[0].Member("windows.npy")
		at := hdr + 3*rowBytes + 100
		rec, err := os.OpenFile(files[one[0].Name]+".units", os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = rec.WriteAt(make([]byte, 8), 4096+at/4096*8)
		rec.Close()
		if err != nil {
			t.Fatal(err)
		}
		m = mountIdx(t, idxMountSpec{CacheDir: dir, Endpoint: proxy.URL})
		held, err := os.Open(filepath.Join(m.Mountpoint, one[0].Name+".d", "windows.npy"))
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		// Read through the held open: inflated again and kept, so that
		// the member becomes complete.
		if _, err := held.ReadAt(make([]byte, rowBytes), hdr+3*rowBytes); err != nil {
			t.Fatal(err)
		}
		readConcurrently := func(what string) {
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					if _, err := readWindows(m.Mountpoint, one, "rows"); err != nil {
						t.Errorf("%s: %v", what, err)
					}
				})
			}
			wg.Wait()
		}
		readConcurrently("while the member becomes complete and is checked")
		// An open once the member is known complete starts the check.
		if !pollUntil(20*time.Second, func() bool { touchMembers(t, m.Mountpoint, one); return m.metric(t, metricVerified) >= 1 }) {
			t.Fatalf("the member was never checked; stderr:\n%s", lastBytes(m.Stderr(), 3000))
		}
		readConcurrently("checked, a page-cached open held")
		if n := m.metric(t, metricPassthrough); n != 0 {
			t.Errorf("%v passthrough opens while a page-cached open was held, want 0", n)
		}
		held.Close()
		readConcurrently("checked, no page-cached open held")
		if n := m.metric(t, metricPassthrough); n == 0 {
			t.Errorf("no passthrough open once the page-cached one was closed")
		}
	})
	m.Unmount(t)

	// A byte of one data file changed on disk: the check fails, the
	// file is dropped (logged), and the member is fetched again.
	t.Run("damaged data file", func(t *testing.T) {
		p := files[archives[0].Name]
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		at := archives[0].WindowsHdr + 2*memberWindowBytes + 77
		if _, err := f.WriteAt([]byte{archives[0].Windows.Data[at] ^ 0x20}, at); err != nil {
			t.Fatal(err)
		}
		f.Close()
		m := mountIdx(t, idxMountSpec{CacheDir: dir, Endpoint: proxy.URL})
		// Opens start the check: poll, since an open made before the
		// mount turned passthrough on (just after it appeared in
		// mountinfo) starts none.
		if !pollUntil(20*time.Second, func() bool {
			touchMembers(t, m.Mountpoint, archives)
			return m.metric(t, metricVerifyFailed) >= 1
		}) {
			t.Fatalf("the damaged member was never checked; stderr:\n%s", lastBytes(m.Stderr(), 3000))
		}
		if n := m.metric(t, metricVerifyFailed); n != 1 {
			t.Errorf("%v failed checks, want 1", n)
		}
		dropPageCache(t)
		proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
		proxy.Reset()
		mustReadWindows(t, m.Mountpoint, archives, "rows")
		if c := proxy.Counts(); c.GetObject == 0 {
			t.Errorf("after a failed check: %+v; want the member fetched again", c)
		}
		m.Unmount(t)
		if !strings.Contains(m.Stderr(), decodedDamageMsg) {
			t.Errorf("no %q line; stderr:\n%s", decodedDamageMsg, lastBytes(m.Stderr(), 3000))
		}
	})

	// Passthrough off: the daemon reads every byte for the kernel.
	t.Run("off", func(t *testing.T) {
		m := mountIdx(t, idxMountSpec{CacheDir: dir, Endpoint: proxy.URL, Args: []string{"--npz-passthrough=false"}})
		defer m.Unmount(t)
		if !m.waitLog(passthroughOffMsg) {
			t.Errorf("no %q line at start; stderr:\n%s", passthroughOffMsg, lastBytes(m.Stderr(), 3000))
		}
		dropPageCache(t)
		before := procReadBytes(m.Pid())
		read := mustReadWindows(t, m.Mountpoint, archives, "rows")
		daemonRead := procReadBytes(m.Pid()) - before
		t.Logf("%d bytes of windows read; the daemon read %d bytes", read, daemonRead)
		if daemonRead < read/2 {
			t.Errorf("the daemon read %d bytes while numpy read %d of windows: want it to serve them", daemonRead, read)
		}
		if n := m.metric(t, metricPassthrough); n != 0 {
			t.Errorf("%s = %v with --npz-passthrough=false", metricPassthrough, n)
		}
	})
}

// A decoded file the kernel refuses as a backing file (here: on an
// overlayfs, a stacked file system, while the dir's own files are not)
// is served by bgbfs, logged; the other members stay passthrough, and
// an open of one whose passthrough open is held still succeeds (go-fuse,
// left to register the refused file, would have answered that open
// page-cached and turned passthrough off for the mount, and the kernel
// would have refused the mixed open: EIO).
func TestNPZPassthroughRefusedFile(t *testing.T) {
	d := idxFixture(t)
	archives := d.Archives[:passthroughArchives]
	srv := env.server(t)
	dir := t.TempDir()
	files := epochOne(t, dir, srv.Endpoint, archives)
	// Two archives whose files are in different directories: the
	// refused one's is put on an overlayfs.
	var kept, refused *idxArchive
	for _, a := range archives[1:] {
		if filepath.Dir(files[a.Name]) != filepath.Dir(files[archives[0].Name]) {
			kept, refused = archives[0], a
		}
	}
	if refused == nil {
		t.Skip("every archive's decoded file is in one directory")
	}
	over := filepath.Dir(files[refused.Name])
	upper, work := t.TempDir(), t.TempDir()
	if out, err := exec.Command("mount", "-t", "overlay", "overlay", "-o", "lowerdir="+over+",upperdir="+upper+",workdir="+work, over).CombinedOutput(); err != nil {
		t.Skipf("no overlayfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", over).Run() })

	m := mountIdx(t, idxMountSpec{CacheDir: dir, Endpoint: srv.Endpoint})
	defer m.Unmount(t)
	if !m.waitLog(passthroughOnMsg) {
		t.Fatalf("no %q line; stderr:\n%s", passthroughOnMsg, lastBytes(m.Stderr(), 3000))
	}
	keptOne := []*idxArchive{kept}
	if !pollUntil(20*time.Second, func() bool { touchMembers(t, m.Mountpoint, keptOne); return m.metric(t, metricPassthrough) >= 1 }) {
		t.Fatalf("the kept member was never opened passthrough; stderr:\n%s", lastBytes(m.Stderr(), 3000))
	}
	held, err := os.Open(filepath.Join(m.Mountpoint, kept.Name+".d", "windows.npy"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, err := held.Read(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	passthrough := m.metric(t, metricPassthrough)
	refusedOne := []*idxArchive{refused}
	if !pollUntil(20*time.Second, func() bool { touchMembers(t, m.Mountpoint, refusedOne); return m.metric(t, metricVerified) >= 2 }) {
		t.Fatalf("the member on the overlayfs was never checked; stderr:\n%s", lastBytes(m.Stderr(), 3000))
	}
	touchMembers(t, m.Mountpoint, refusedOne)
	mustReadWindows(t, m.Mountpoint, refusedOne, "rows")
	if n := m.metric(t, metricPassthrough); n != passthrough {
		t.Errorf("%v passthrough opens of the member whose file the kernel refuses, want 0", n-passthrough)
	}
	if !strings.Contains(m.Stderr(), refusedMsg) {
		t.Errorf("no %q line; stderr:\n%s", refusedMsg, lastBytes(m.Stderr(), 3000))
	}
	// The kept member: opened again while its passthrough open is held,
	// and after.
	mustReadWindows(t, m.Mountpoint, keptOne, "rows")
	held.Close()
	before := m.metric(t, metricPassthrough)
	mustReadWindows(t, m.Mountpoint, keptOne, "rows")
	if m.metric(t, metricPassthrough) == before {
		t.Error("the kept member's opens are no longer passthrough")
	}
}
