package integration

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// The load of the memory test with --npz-members: 64 files open at once,
// 48 of them .npz archives read at random 1 MiB at a time and 16 the
// windows.npy of an archive's .d read a window at a time, for about 40 s.
const (
	memArchiveReaders = 48
	memWindowReaders  = 16
	memReadsPerOpen   = 4
	memLoadFor        = 40 * time.Second
	memCacheSize      = 128 << 20
	// The indexes of the 100 archives take 0.1 MB: 16 MiB holds them as
	// the default 256 MiB would, but brings the runtime's memory limit
	// (which counts the whole index size) close to what the load holds,
	// so that the garbage collector lets the heap grow to the limit, as
	// the load did with 6,500 archives' worth of room.
	memIndexSize = 16 << 20
	memSpan      = 1 << 20 // the default --npz-checkpoint-span
	// memRowBytes is a window of the scale bucket: 19 x 15360 float32.
	memRowBytes = 19 * 15360 * 4
)

// memoryBound is the peak RSS that README.md ("Bounded memory") and
// RELIABILITY.md ("Memory") state: --cache-size + 100 MiB, plus with
// --npz-members --npz-index-size and 64 checkpoint spans.
func memoryBound(cacheSize, indexSize, span int64) int64 {
	return cacheSize + 100<<20 + indexSize + 64*span
}

// TestNPZMemberMemoryBound holds the memory bound under the load that
// broke the README's arithmetic (peak RSS 517 MiB against 512 MiB, which
// was the runtime's memory limit: the garbage collector lets the heap
// grow to the limit, and RSS also holds what the limit does not count,
// the program's own code and data): with --cache-size 128MiB
// --npz-members, 48 readers of random MiBs of the archives and 16 readers
// of windows through the member view, 64 files open at once, with the page
// cache dropped every 3 s so that the reads reach the daemon. The
// daemon's peak RSS (VmHWM from /proc) must stay within the bound; every
// byte read is checked.
func TestNPZMemberMemoryBound(t *testing.T) {
	d := scaleBucket(t)
	srv := env.server(t)
	addr := freeAddr(t)
	m := mount(t, mountSpec{
		Source: "s3://" + d.Bucket + "/", Endpoint: srv.Endpoint, Creds: rootCreds(srv),
		Args: []string{"--npz-members", "--cache-size", fmt.Sprint(memCacheSize), "--npz-index-size", fmt.Sprint(memIndexSize), "--metrics-addr", addr},
	})
	train := filepath.Join(m.Mountpoint, "train")
	if _, err := os.ReadDir(train); err != nil {
		t.Fatal(err)
	}
	// The windows of a few archives, to check window reads against.
	checked := map[string][]byte{}
	for _, name := range d.Names[:16] {
		local := filepath.Join(d.Local, name)
		b, err := os.ReadFile(local)
		if err != nil {
			t.Fatal(err)
		}
		a, err := parseMemberArchive(name, local, b)
		if err != nil {
			t.Fatal(err)
		}
		checked[name] = a.Member("windows.npy").Data
	}

	rss := testbed.SampleRSS(m.Pid(), 50*time.Millisecond)
	stopDrops := dropPageCacheEvery(3 * time.Second)
	var wg sync.WaitGroup
	var archiveReads, windowReads, failures atomic.Int64
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 10 {
			t.Errorf(format, args...)
		}
	}
	until := time.Now().Add(memLoadFor)
	for r := range memArchiveReaders + memWindowReaders {
		rng := rand.New(rand.NewPCG(uint64(r), 0x6d656d))
		wg.Go(func() {
			for time.Now().Before(until) && failures.Load() == 0 {
				name := d.Names[rng.IntN(len(d.Names))]
				if r < memArchiveReaders {
					archiveReads.Add(readArchiveAtRandom(rng, filepath.Join(train, name), filepath.Join(d.Local, name), fail))
				} else {
					windowReads.Add(readWindowsAtRandom(rng, filepath.Join(train, name+".d", "windows.npy"), checked[name], fail))
				}
			}
		})
	}
	wg.Wait()
	stopDrops()
	sampled, samples := rss.Stop()
	_, hwm, err := testbed.ProcMemory(m.Pid())
	if err != nil {
		t.Fatal(err)
	}
	stats := scrapeMetrics(t, addr)
	bound := memoryBound(memCacheSize, memIndexSize, memSpan)
	t.Logf("%d random MiBs of archives and %d windows in %v; peak RSS (VmHWM) %d MiB, sampled %d MiB (%d samples); bound %d MiB; "+
		"at the end: Go heap in use %.0f MiB, Go runtime memory %.0f MiB, memory limit %.0f MiB, index memory %.1f MB",
		archiveReads.Load(), windowReads.Load(), memLoadFor, hwm>>20, sampled>>20, samples, bound>>20,
		stats.Sum("go_memstats_heap_inuse_bytes")/(1<<20), stats.Sum("go_memstats_sys_bytes")/(1<<20),
		stats.Sum("go_gc_gomemlimit_bytes")/(1<<20), stats.Sum("bgbfs_npz_index_bytes")/1e6)
	if archiveReads.Load() == 0 || windowReads.Load() == 0 {
		t.Fatal("the load made no reads")
	}
	if hwm > bound {
		t.Errorf("peak RSS %d MiB with --cache-size %d MiB --npz-members; want at most %d MiB", hwm>>20, memCacheSize>>20, bound>>20)
	}
}

// readArchiveAtRandom opens an archive through the mount and reads
// memReadsPerOpen random MiBs of it, checked against the local copy; it
// returns the reads made.
func readArchiveAtRandom(rng *rand.Rand, mounted, local string, fail func(string, ...any)) int64 {
	f, err := os.Open(mounted)
	if err != nil {
		fail("open %s: %v", mounted, err)
		return 0
	}
	defer f.Close()
	want, err := os.Open(local)
	if err != nil {
		fail("open %s: %v", local, err)
		return 0
	}
	defer want.Close()
	st, err := want.Stat()
	if err != nil {
		fail("stat %s: %v", local, err)
		return 0
	}
	for range memReadsPerOpen {
		if msg := checkPread(f, want, st.Size(), rng.Int64N(max(1, st.Size()-1<<20)), 1<<20); msg != "" {
			fail("%s: %s", mounted, msg)
			return 0
		}
	}
	return memReadsPerOpen
}

// readWindowsAtRandom opens windows.npy through the member view and reads
// memReadsPerOpen windows at random, as numpy does after reading the
// header, checked against want if it is not nil; it returns the reads
// made.
func readWindowsAtRandom(rng *rand.Rand, mounted string, want []byte, fail func(string, ...any)) int64 {
	f, err := os.Open(mounted)
	if err != nil {
		fail("open %s: %v", mounted, err)
		return 0
	}
	defer f.Close()
	head := make([]byte, 4096)
	if _, err := f.ReadAt(head, 0); err != nil {
		fail("%s: header: %v", mounted, err)
		return 0
	}
	off, err := npyDataOffset(head)
	if err != nil {
		fail("%s: %v", mounted, err)
		return 0
	}
	st, err := f.Stat()
	if err != nil {
		fail("stat %s: %v", mounted, err)
		return 0
	}
	rows := (st.Size() - off) / memRowBytes
	for range memReadsPerOpen {
		at := off + rng.Int64N(rows)*memRowBytes
		if want != nil {
			if msg := checkPread(f, bytes.NewReader(want), int64(len(want)), at, memRowBytes); msg != "" {
				fail("%s: %s", mounted, msg)
				return 0
			}
			continue
		}
		if _, err := f.ReadAt(make([]byte, memRowBytes), at); err != nil {
			fail("%s: window at %d: %v", mounted, at, err)
			return 0
		}
	}
	return memReadsPerOpen
}
