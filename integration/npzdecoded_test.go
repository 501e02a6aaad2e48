package integration

// Decoded members kept in a local --cache-dir: the windows a daemon read
// of compressed members are written there decoded, and a later daemon
// with the same dir reads them with no GET (counted at a CountingProxy),
// the bytes numpy wrote; the compressed blocks behind them are not kept
// too; a damaged unit on disk is never returned (its bytes are fetched
// and inflated again, and a line says so).

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	decodedArchives = 6
	// decodedRows are the windows read of each archive's windows.npy.
	decodedRowA, decodedRowB = 1, 4
	decodedDamageMsg         = "damaged decoded member dropped"
)

// dirAreaBytes is the disk space the files under dir/area take.
func dirAreaBytes(t testing.TB, dir, area string) (files int, bytes int64) {
	t.Helper()
	err := filepath.WalkDir(filepath.Join(dir, area), func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		files++
		bytes += fi.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return files, bytes
}

func TestNPZDecodedMembersRestart(t *testing.T) {
	d := idxFixture(t)
	archives := d.Archives[:decodedArchives]
	srv := env.server(t)
	proxy := newProxy(t, srv.Endpoint)
	dir := t.TempDir()
	readRows := func(m *idxMount) {
		t.Helper()
		dropPageCache(t)
		proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
		proxy.Reset()
		firstOpens(t, m.Mountpoint, archives, decodedRowA)
		firstOpens(t, m.Mountpoint, archives, decodedRowB)
		proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
	}

	// Epoch 1: every window fetched and inflated, and written decoded
	// (unmounting waits for the writes).
	m := mountIdx(t, idxMountSpec{CacheDir: dir, Endpoint: proxy.URL})
	readRows(m)
	first := proxy.Counts()
	m.Unmount(t)
	if first.GetObject == 0 {
		t.Fatalf("the first daemon made no GET: %+v", first)
	}
	files, decoded := dirAreaBytes(t, dir, "decoded")
	_, blocks := dirAreaBytes(t, dir, "blocks")
	t.Logf("epoch 1: %+v; dir: %d decoded files, %d bytes; blocks %d bytes", first, files, decoded, blocks)
	if files != 2*decodedArchives || decoded < 2*decodedArchives*memberWindowBytes {
		t.Errorf("%d decoded files of %d bytes in the dir; want a pair (data, records) per archive, holding its 2 windows (%d bytes each)", files, decoded, memberWindowBytes)
	}
	// The zip directories' blocks (the archives' tails) are kept, not
	// the windows' compressed bytes nor those the index builds read:
	// each archive's windows.npy is 6.2 MB deflated.
	if limit := int64(decodedArchives) * 2 << 20; blocks > limit {
		t.Errorf("the dir keeps %d bytes of blocks for %d archives, want at most %d: the windows are kept both ways", blocks, decodedArchives, limit)
	}

	// Epoch 2 on a new daemon: no GET, the same bytes.
	m = mountIdx(t, idxMountSpec{CacheDir: dir, Endpoint: proxy.URL})
	readRows(m)
	if c, reqs := proxy.Take(); c.GetObject != 0 {
		for _, g := range getsOf(reqs, d.Bucket) {
			t.Logf("GET %s %s", g.URI, g.Range)
		}
		t.Errorf("epoch 2 after a restart: %+v; want no GET", c)
	}
	m.Unmount(t)

	// A byte of a row damaged in every decoded file: the rows are still
	// right (fetched and inflated again), and the damage is logged.
	_, rowBytes, hdr := archives[0].Member("windows.npy")
	at := hdr + decodedRowB*rowBytes + 5000
	err := filepath.WalkDir(filepath.Join(dir, "decoded"), func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || strings.HasSuffix(p, ".units") { // the data files only
			return err
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, at); err != nil {
			return err
		}
		b[0] ^= 0x10
		_, err = f.WriteAt(b, at)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	m = mountIdx(t, idxMountSpec{CacheDir: dir, Endpoint: proxy.URL})
	readRows(m)
	if c := proxy.Counts(); c.GetObject == 0 {
		t.Errorf("over damaged units: %+v; want the damaged windows fetched again", c)
	}
	m.Unmount(t)
	if n := strings.Count(m.Stderr(), decodedDamageMsg); n == 0 {
		t.Errorf("no %q line for the damaged units; stderr:\n%s", decodedDamageMsg, lastBytes(m.Stderr(), 3000))
	}
}
