package main

// Workload m: a --cache-dir at the bucket's scale, by layout. It is not
// in the default run (it makes about 4 million files): name it with
// --workloads m.
//
// On an ext4 file system of its own (a sparse image on a loop device, so
// that its metadata is a disk's, not tmpfs's), it makes the files a dir
// holding the whole bucket has, with the names bgbfs gives them, for the
// bucket's 6,499 archives (names like the real ones, sizes drawn to its
// median 65.7 MB and range 5.2-200.9 MB, 449 GB in all), empty or
// sparse:
//   - this build's layout: one object file per archive (made by
//     cache.Dir itself: its header written, its units holes);
//   - the layout before it: one file per block, <32 hex>-<index>, at
//     128 KiB blocks (3.4 M files; --npz-members) and at 1 MiB (430 k);
//   - for every layout, the member indexes bgbfs index writes: an .idx
//     per member and a .done per archive, of their real sizes;
//   - and one file of a page, the least recently used (half an hour ago)
//     and the first a walk meets: at the bound, the trim has a page to
//     free and only that file to consider (empty files add nothing to
//     what it frees, so without it the trim's second walk would keep
//     every empty file it meets).
//
// For each layout it measures:
//   - one walk of the dir: cache.OpenDir's walk (which sums what the dir
//     holds; a trim walks once more to pick what to remove), timed in
//     this process until its sum is in, with the page cache dropped
//     (cold) and again (warm), and the Go heap it took at its peak;
//   - start-up: how long a mount takes to be ready on that dir, against
//     an empty dir on the same file system (the walk runs in the
//     background, so the dir's size costs the start nothing);
//   - steady metadata I/O at the bound: a mount with --cache-dir-size at
//     what the dir holds and every file used within the hour (so the dir
//     is full and takes no blocks, and looks again for idle files every
//     30 s while reads miss it), with a reader missing the dir all along;
//     the daemon's getdents64, newfstatat/statx, openat, unlinkat and
//     utimensat calls per minute (counted in the kernel by perf stat) and
//     the loop device's reads per minute (its /sys/block stat).

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/integration/testbed"
)

const (
	dirScaleTrain, dirScaleDev = 4667, 1832
	dirScaleBytes              = 449e9
	dirScaleSource             = "aws/brain-go-brr-eeg-data-20250919"
	// dirScaleImage is the image's length (sparse) and dirScaleInodes
	// its inodes: every layout's files at once.
	dirScaleImage  = 32 << 30
	dirScaleInodes = 4_400_000
	// dirScaleSteady is how long the steady I/O is counted, after
	// dirScaleSettle for the mount's first walks.
	dirScaleSteady = 2 * time.Minute
	dirScaleSettle = 40 * time.Second
	// oldBlockTrailer is what the layout before added to each block.
	oldBlockTrailer = 36
)

// dirScaleArchive is one archive of the bucket as the dir names it.
type dirScaleArchive struct {
	key, etag string
	size      int64
}

// dirScaleLayout is one layout of the dir: blockSize 0 is this build's.
type dirScaleLayout struct {
	label     string
	blockSize int64
}

var dirScaleLayouts = []dirScaleLayout{
	{"object files, 64 KiB units (this build)", 0},
	{"block files, 128 KiB blocks (the layout before)", 128 << 10},
	{"block files, 1 MiB blocks (the layout before)", 1 << 20},
}

// dirScaleResult is what workload m measured of one layout.
type dirScaleResult struct {
	layout                dirScaleLayout
	files, indexFiles     int
	made                  time.Duration
	walkCold, walkWarm    time.Duration
	walkHeap              int64
	readyFull, readyEmpty time.Duration
	perMinute             map[string]float64
	devReads, devSectors  float64 // per minute
	readPerMinute         float64 // bytes the reader read
	heldBytes             int64
	err                   string
}

// dirScaleCalls are the syscalls counted at the bound.
var dirScaleCalls = []string{"getdents64", "newfstatat", "statx", "openat", "unlinkat", "utimensat"}

// dirScaleArchives draws the bucket's archives: the same every run.
func dirScaleArchives() []dirScaleArchive {
	rng := rand.New(rand.NewPCG(6499, 449))
	// Log-normal sizes with the bucket's median and mean (75 MB), kept
	// within its range, then scaled to its total.
	mu, sigma := math.Log(65.7e6), math.Sqrt(2*math.Log(75/65.7))
	var out []dirScaleArchive
	var total float64
	for i := range dirScaleTrain + dirScaleDev {
		split := "train"
		if i >= dirScaleTrain {
			split = "dev"
		}
		name := make([]byte, 8)
		for j := range name {
			name[j] = byte('a' + rng.IntN(26))
		}
		key := fmt.Sprintf("cache/tusz/%s/%s_s%03d_t%03d_windows.npz", split, name, 1+rng.IntN(12), rng.IntN(20))
		size := min(200.9e6, max(5.2e6, math.Exp(mu+sigma*rng.NormFloat64())))
		sum := md5.Sum([]byte(key))
		out = append(out, dirScaleArchive{key: key, etag: `"` + hex.EncodeToString(sum[:]) + `"`, size: int64(size)})
		total += size
	}
	for i := range out {
		out[i].size = int64(float64(out[i].size) * dirScaleBytes / total)
	}
	return out
}

func (a dirScaleArchive) id(fields ...string) cache.ObjectID {
	return cache.NewObjectID(append([]string{dirScaleSource, a.key, a.etag, strconv.FormatInt(a.size, 10)}, fields...)...)
}

// runDirScale measures workload m through endpoint (a mount reads the
// bench's dataset through it, missing the dir).
func (b *bench) runDirScale(ctx context.Context, profile, endpoint string) {
	if !b.wants("m") || profile != "loopback" {
		return
	}
	fmt.Fprintln(os.Stderr, "bench: workload m: making an ext4 image")
	fsRoot, dev, cleanup, err := b.dirScaleImage()
	if err != nil {
		b.dirScale = []dirScaleResult{{err: err.Error()}}
		return
	}
	defer cleanup()
	archives := dirScaleArchives()
	for _, l := range dirScaleLayouts {
		if ctx.Err() != nil {
			return
		}
		r := dirScaleResult{layout: l}
		if err := b.dirScaleOne(ctx, &r, archives, filepath.Join(fsRoot, fmt.Sprintf("dir-%d", l.blockSize)), fsRoot, dev, endpoint); err != nil {
			r.err = err.Error()
		}
		b.dirScale = append(b.dirScale, r)
	}
}

// dirScaleImage makes and mounts the image; it returns the mount's root,
// its loop device's name (loopN) and what undoes it all.
func (b *bench) dirScaleImage() (root, dev string, cleanup func(), err error) {
	img := filepath.Join(b.work, "dirscale.img")
	root = filepath.Join(b.work, "dirscale")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", "", nil, err
	}
	f, err := os.Create(img)
	if err == nil {
		err = f.Truncate(dirScaleImage)
		f.Close()
	}
	if err != nil {
		return "", "", nil, err
	}
	run := func(name string, args ...string) error {
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run("mkfs.ext4", "-F", "-q", "-N", strconv.Itoa(dirScaleInodes), "-E", "lazy_itable_init=1,lazy_journal_init=1", img); err != nil {
		return "", "", nil, err
	}
	if err := run("mount", "-o", "loop", img, root); err != nil {
		return "", "", nil, err
	}
	cleanup = func() {
		if err := run("umount", root); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
		os.Remove(img)
	}
	out, err := exec.Command("findmnt", "-n", "-o", "SOURCE", root).Output()
	if err != nil {
		cleanup()
		return "", "", nil, fmt.Errorf("findmnt %s: %w", root, err)
	}
	return root, filepath.Base(strings.TrimSpace(string(out))), cleanup, nil
}

// dirScaleOne makes one layout's dir at root and measures it: its walk,
// a mount's start-up on it, and a mount's steady metadata I/O at the
// bound.
func (b *bench) dirScaleOne(ctx context.Context, r *dirScaleResult, archives []dirScaleArchive, root, fsRoot, dev, endpoint string) error {
	if err := makeLayout(r, archives, root); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: workload m: walking %d files\n", r.files+r.indexFiles)
	var err error
	if r.walkCold, r.heldBytes, r.walkHeap, err = walkDir(root, true); err != nil {
		return err
	}
	if r.walkWarm, _, _, err = walkDir(root, false); err != nil {
		return err
	}
	m, err := b.dirScaleStartUp(r, root, filepath.Join(fsRoot, "empty"), endpoint)
	if err != nil {
		return err
	}
	defer m.stop()
	if err := waitFirstWalk(m); err != nil {
		return err
	}
	return b.dirScaleSteady(ctx, r, m, dev)
}

// makeLayout makes the files of r's layout at root, and counts them.
func makeLayout(r *dirScaleResult, archives []dirScaleArchive, root string) error {
	fmt.Fprintf(os.Stderr, "bench: workload m: making the dir of %s\n", r.layout.label)
	start := time.Now()
	var err error
	if err := makeOldestFile(root); err != nil {
		return err
	}
	if r.indexFiles, err = makeIndexFiles(root, archives); err != nil {
		return err
	}
	if r.layout.blockSize == 0 {
		r.files, err = makeObjectFiles(root, archives)
	} else {
		r.files, err = makeBlockFiles(root, archives, r.layout.blockSize)
	}
	if err != nil {
		return err
	}
	r.made = time.Since(start)
	syscall.Sync()
	return nil
}

// dirScaleStartUp times a mount's start on an empty dir and on the full
// one at root, and returns the mount on the full one, its --cache-dir-size
// at the bound.
func (b *bench) dirScaleStartUp(r *dirScaleResult, root, empty, endpoint string) (*eegMounted, error) {
	creds := &testbed.Creds{AccessKey: b.srv.AccessKey, SecretKey: b.srv.SecretKey}
	source := "s3://" + b.ds.bucket + "/" + b.ds.prefix
	ready := func(dir string, args ...string) (*eegMounted, time.Duration, error) {
		if err := dropCaches(); err != nil {
			return nil, 0, err
		}
		start := time.Now()
		m, err := b.mountWithStats(source, endpoint, creds, append([]string{"--cache-dir", dir, "--cache-size", "16MiB"}, args...)...)
		return m, time.Since(start), err
	}
	m, d, err := ready(empty)
	if err != nil {
		return nil, err
	}
	m.stop()
	r.readyEmpty = d
	// The bound: what the dir holds, less half a page, over the 90% a
	// trim aims for: the trim has half a page to free, and nothing idle.
	bound := int64(float64(r.heldBytes-2048) / 0.9)
	m, r.readyFull, err = ready(root, "--cache-dir-size", strconv.FormatInt(bound, 10))
	return m, err
}

// waitFirstWalk waits until the mount's first walk has summed the dir
// (and found it full): before, the dir would take a reader's blocks.
func waitFirstWalk(m *eegMounted) error {
	for deadline := time.Now().Add(30 * time.Minute); ; time.Sleep(time.Second) {
		c, err := m.daemonCounters()
		if err != nil {
			return err
		}
		if c["disk_bytes"] > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("the mount's first walk did not end in 30 minutes")
		}
	}
}

// dirScaleSteady counts the daemon's metadata calls and the device's
// reads for dirScaleSteady, after dirScaleSettle, while a reader misses
// the dir all along.
func (b *bench) dirScaleSteady(ctx context.Context, r *dirScaleResult, m *eegMounted, dev string) error {
	readCtx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	var reading sync.WaitGroup
	var read atomic.Int64
	var readErr atomic.Pointer[error]
	reading.Go(func() { b.readRoundAndRound(readCtx, m, &read, &readErr) })
	defer reading.Wait()
	defer stopReading()
	fmt.Fprintf(os.Stderr, "bench: workload m: counting the daemon's metadata calls for %v\n", dirScaleSteady)
	select {
	case <-time.After(dirScaleSettle):
	case <-ctx.Done():
		return ctx.Err()
	}
	before, err := diskStat(dev)
	if err != nil {
		return err
	}
	readBefore := read.Load()
	counts, err := countSyscalls(ctx, m.pid, dirScaleSteady)
	if err != nil {
		return err
	}
	after, err := diskStat(dev)
	if err != nil {
		return err
	}
	if p := readErr.Load(); p != nil {
		return fmt.Errorf("the reader: %w", *p)
	}
	r.readPerMinute = float64(read.Load()-readBefore) / dirScaleSteady.Minutes()
	fmt.Fprintf(os.Stderr, "bench: workload m: %v; the reader read %.0f MB a minute\n", counts, r.readPerMinute/1e6)
	per := dirScaleSteady.Minutes()
	r.perMinute = map[string]float64{}
	for k, v := range counts {
		r.perMinute[k] = float64(v) / per
	}
	r.devReads, r.devSectors = float64(after[0]-before[0])/per, float64(after[2]-before[2])/per
	return nil
}

// readRoundAndRound reads the bench's files through m, round and round,
// each dropped from the page cache after its read, until ctx ends; it
// counts the bytes in read and keeps the first error in readErr.
func (b *bench) readRoundAndRound(ctx context.Context, m *eegMounted, read *atomic.Int64, readErr *atomic.Pointer[error]) {
	for i := 0; ctx.Err() == nil; i++ {
		n, err := readDropped(filepath.Join(m.mp, "train", b.ds.files[i%len(b.ds.files)]))
		read.Add(n)
		if err != nil && ctx.Err() == nil {
			readErr.Store(&err)
			return
		}
	}
}

// makeOldestFile writes a file of a page, used half an hour ago, where a
// walk meets it first.
func makeOldestFile(root string) error {
	p := filepath.Join(root, "blocks", "00", strings.Repeat("0", 32))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
		return err
	}
	at := time.Now().Add(-30 * time.Minute)
	return os.Chtimes(p, at, at)
}

// makeIndexFiles writes the indexes of every archive: two members'
// .idx and the archive's .done, of about their real sizes.
func makeIndexFiles(root string, archives []dirScaleArchive) (int, error) {
	n := 0
	for _, a := range archives {
		for _, f := range []struct {
			member, suffix string
			size           int
		}{{"windows.npy", ".idx", 20 << 10}, {"labels.npy", ".idx", 3 << 10}, {"", ".done", 24 << 10}} {
			p := filepath.Join(root, filepath.FromSlash(a.id(f.member, "format 1").Name(cache.IndexesArea+"npz/")+f.suffix))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return n, err
			}
			if err := os.WriteFile(p, make([]byte, f.size), 0o644); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// makeObjectFiles makes this build's object file of every archive,
// through cache.Dir: header written, no unit.
func makeObjectFiles(root string, archives []dirScaleArchive) (int, error) {
	d, err := cache.OpenDir(root, 1<<60, nil)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	for i, a := range archives {
		id := a.id()
		f, err := d.CreateObject(id.Name(cache.BlocksArea), id, a.size)
		if err != nil {
			return i, err
		}
		f.Close()
	}
	return len(archives), nil
}

// makeBlockFiles makes a sparse file of every block of every archive, by
// the layout before: blocks/XX/<32 hex>-<index>, the block and a trailer.
func makeBlockFiles(root string, archives []dirScaleArchive, blockSize int64) (int, error) {
	var g errgroup.Group
	g.SetLimit(runtime.NumCPU())
	var mu sync.Mutex
	n := 0
	for _, a := range archives {
		g.Go(func() error {
			name := a.id().Name(cache.BlocksArea)
			dir := filepath.Join(root, filepath.Dir(filepath.FromSlash(name)))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			blocks := (a.size + blockSize - 1) / blockSize
			for i := range blocks {
				f, err := os.OpenFile(filepath.Join(root, filepath.FromSlash(name))+"-"+strconv.FormatInt(i, 10), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
				if err != nil {
					return err
				}
				err = f.Truncate(min(blockSize, a.size-i*blockSize) + oldBlockTrailer)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
			}
			mu.Lock()
			n += int(blocks)
			mu.Unlock()
			return nil
		})
	}
	return n, g.Wait()
}

// walkDir times one walk of the dir at root (cache.OpenDir's, which ends
// when the dir's size is in), cold or warm, and returns the disk space it
// found and the Go heap it took at its peak.
func walkDir(root string, cold bool) (took time.Duration, held, heap int64, err error) {
	if cold {
		if err := dropCaches(); err != nil {
			return 0, 0, 0, err
		}
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapInuse, ms.HeapInuse
	start := time.Now()
	d, err := cache.OpenDir(root, 0, nil)
	if err != nil {
		return 0, 0, 0, err
	}
	defer d.Close()
	for d.Used() == 0 {
		time.Sleep(20 * time.Millisecond)
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
		if time.Since(start) > 30*time.Minute {
			return 0, 0, 0, errors.New("the walk did not end in 30 minutes")
		}
	}
	return time.Since(start), d.Used(), int64(peak - base), nil
}

// readDropped reads path whole and drops it from the page cache.
func readDropped(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := io.CopyBuffer(io.Discard, f, make([]byte, 1<<20))
	if err == nil {
		err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	}
	return n, err
}

// countSyscalls counts dirScaleCalls made by the process pid (its threads
// too) for d, with perf stat.
func countSyscalls(ctx context.Context, pid int, d time.Duration) (map[string]int64, error) {
	args := []string{"stat", "-x", ",", "-p", strconv.Itoa(pid)}
	for _, c := range dirScaleCalls {
		args = append(args, "-e", "syscalls:sys_enter_"+c)
	}
	args = append(args, "--", "sleep", strconv.Itoa(int(d.Seconds())))
	out, err := exec.CommandContext(ctx, "perf", args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("perf stat: %v: %s", err, out)
	}
	counts := map[string]int64{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue
		}
		for _, c := range dirScaleCalls {
			if f[2] == "syscalls:sys_enter_"+c {
				counts[c], _ = strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	if len(counts) != len(dirScaleCalls) || counts["openat"] == 0 {
		return nil, fmt.Errorf("perf stat counted nothing (the reader missed the dir all along: the daemon opens files): %q", out)
	}
	return counts, nil
}

// diskStat returns the reads completed, reads merged and sectors read of
// the block device dev so far.
func diskStat(dev string) ([3]int64, error) {
	b, err := os.ReadFile("/sys/block/" + dev + "/stat")
	if err != nil {
		return [3]int64{}, err
	}
	f := strings.Fields(string(b))
	var out [3]int64
	for i := range out {
		out[i], _ = strconv.ParseInt(f[i], 10, 64)
	}
	return out, nil
}

// dirScaleSection is workload m's table.
func (b *bench) dirScaleSection() string {
	if len(b.dirScale) == 0 {
		return ""
	}
	var s strings.Builder
	fmt.Fprintf(&s, "\n## m. The cache dir at the bucket's scale\n\nThe files a `--cache-dir` holding the whole bucket has (%d archives, %.0f GB; their names as bgbfs gives them; empty or sparse; the indexes of `bgbfs index` with them), on an ext4 image of their own on a loop device, by layout. Walk: `cache.OpenDir`'s walk, which sums the dir (a trim walks once more to pick what to remove), timed until its sum is in, with the page cache dropped and again warm; heap: the Go heap it took at its peak. Ready: a mount's start until mounted, on that dir and on an empty one, page cache dropped. At the bound: a mount with `--cache-dir-size` a little under what the dir holds and every file used within the hour, so the dir takes no blocks and looks for idle files every 30 s while reads miss it (a reader misses all along, from the end of the mount's first walk); the daemon's calls per minute counted by `perf stat` over %v, after %v for its first walks, and the loop device's reads per minute.\n\n",
		dirScaleTrain+dirScaleDev, dirScaleBytes/1e9, dirScaleSteady, dirScaleSettle)
	s.WriteString("| layout | files (blocks + indexes) | made in | walk, cold | walk, warm | walk heap | ready: full dir / empty | at the bound, per minute: getdents64 / newfstatat+statx / openat / unlinkat / utimensat | device reads per minute (sectors) | read by the reader per minute |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range b.dirScale {
		if r.err != "" {
			fmt.Fprintf(&s, "| %s | %s | | | | | | | | |\n", r.layout.label, oneLine(r.err))
			continue
		}
		p := r.perMinute
		fmt.Fprintf(&s, "| %s | %d + %d | %v | %v | %v | %.1f MiB | %v / %v | %.0f / %.0f / %.0f / %.0f / %.0f | %.0f (%.0f) | %.0f MB |\n",
			r.layout.label, r.files, r.indexFiles, r.made.Round(time.Second), r.walkCold.Round(10*time.Millisecond), r.walkWarm.Round(10*time.Millisecond),
			float64(r.walkHeap)/(1<<20), r.readyFull.Round(time.Millisecond), r.readyEmpty.Round(time.Millisecond),
			p["getdents64"], p["newfstatat"]+p["statx"], p["openat"], p["unlinkat"], p["utimensat"], r.devReads, r.devSectors, r.readPerMinute/1e6)
	}
	return s.String()
}
