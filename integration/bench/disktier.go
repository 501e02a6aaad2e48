package main

// Workload k: the disk tier (--cache-dir), S3-like profile only. The
// training team's answer to slow epochs was a copy of the bucket on each
// node's local disk; with --cache-dir, epoch 1 fetches from S3 and keeps
// the blocks on local disk, and epoch 2 should read at local-disk speed.
//
// It reads workload i's archives (its MinIO, counting proxy and a shaping
// proxy of its own), with --cache-size 64MiB so that memory cannot hold
// them: every epoch 2 read the memory cache misses has to come from the
// dir or from S3. Each row starts with the page cache dropped (so the
// dir's block files and the local copies are read from the disk, not
// from memory), and every sample drops what it read (trainer.py
// --forget); epoch 2 runs on the same daemon as epoch 1, once its
// background writes are done.
//
//   - whole member: np.load(path)["windows"][i] on a mount without
//     --npz-members, one window of every archive per epoch (each sample
//     inflates the whole member, so one per archive reads all the data
//     once, as a true epoch of it would 24 times); beside the same loader
//     over the local .npz files.
//   - member view (--npz-members): every window of the first
//     diskViewFiles archives once per epoch, shuffled anew each epoch;
//     beside the same loader over local uncompressed .npy copies.
//   - half: the whole-member epochs again on a fresh dir bounded
//     (--cache-dir-size) to half the bytes epoch 1 fetched.
//   - sequential: one diskBigFile file read once from S3, pushed out of
//     memory by reading another, and read again from the dir; beside the
//     same file on local disk, cold. Both reads take a CRC-32C of the
//     bytes, which must match.
//
// Requests and bytes are counted at the proxy; disk hits, misses, bytes
// written and writes skipped are the daemon's (/stats), taken once the
// proxy is quiet and the writes have settled.

import (
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

const (
	diskCacheSize = "64MiB"
	// diskViewFiles is the archives of one member-view epoch: every
	// window of each (24), 960 samples.
	diskViewFiles = 40
	// The sequential rows: a file far above the memory cache, and the
	// other data read to push it out of memory.
	diskBigFile   = 512 << 20
	diskEvictFile = 160 << 20
	diskBucket    = "disktier"

	diskLocalWhole = `local .npz, np.load(path)["windows"][i]`
	diskWhole      = `whole member, --cache-dir`
	diskHalf       = `whole member, --cache-dir-size half`
	diskLocalView  = `local .npy, mmap_mode="r"`
	diskView       = `view, --cache-dir`
	diskLocalSeq   = `local file, cold`
	diskSeqFirst   = `sequential, --cache-dir: first read (S3)`
	diskSeqAgain   = `sequential, --cache-dir: re-read evicted from memory`
)

func epochLabel(path string, epoch int) string { return fmt.Sprintf("%s: epoch %d", path, epoch) }

// diskCounters are the daemon's disk-tier counters shown per row: the
// first ones as increases during the row, disk_bytes as held at its end.
var diskCounters = []string{"disk_hits", "disk_misses", "disk_written_bytes", "disk_writes_skipped", "disk_checksum_failures", "disk_evictions", "disk_bytes"}

// diskSet is what workload k measured beside the rows: per row, the
// daemon's counters and the bytes of the data the row covers.
type diskSet struct {
	daemon                map[string]map[string]int64
	data                  map[string]float64
	cpu                   map[string]rowCPU
	wholeFiles, viewFiles int
	halfSize              int64
}

// runDiskTier measures workload k under profile (S3-like only); endpoint
// is the shared MinIO's, shaped, for the sequential rows.
func (b *bench) runDiskTier(ctx context.Context, profile, endpoint string) {
	if !b.wants("k") || profile != "s3like" {
		return
	}
	fail := func(system string, err error) {
		b.rows = append(b.rows, row{workload: "k", profile: profile, system: system, err: err.Error()})
	}
	e, err := b.eegData(ctx)
	if err != nil {
		fail(diskWhole, err)
		return
	}
	shaper, err := testbed.NewShapingProxy(e.counting.URL, s3Latency, s3ConnRate)
	if err != nil {
		fail(diskWhole, err)
		return
	}
	defer shaper.Close()
	sizes, err := archiveSizes(e.src)
	if err != nil {
		fail(diskWhole, err)
		return
	}
	d := &diskSet{daemon: map[string]map[string]int64{}, data: map[string]float64{}, cpu: map[string]rowCPU{}, wholeFiles: len(sizes), viewFiles: min(diskViewFiles, len(sizes))}
	b.disk = d
	var wholeData, viewData float64
	for i, s := range sizes {
		wholeData += float64(s)
		if i < d.viewFiles {
			viewData += float64(s)
		}
	}
	verify := []string{"--verify", e.npy}
	whole := []string{"--forget", "--each-file-once"}
	view := []string{"--view", "--forget", "--epoch", "--files", strconv.Itoa(d.viewFiles)}
	seed := func(args []string, epoch int) []string {
		return append(slices.Clone(args), "--seed", strconv.Itoa(epoch))
	}

	// Two epochs on one daemon with a fresh dir; returns epoch 1's row.
	epochs := func(path string, data float64, loader []string, mountArgs ...string) (row, bool) {
		dir, err := os.MkdirTemp(b.work, "cache-dir-")
		if err != nil {
			fail(epochLabel(path, 1), err)
			return row{}, false
		}
		defer os.RemoveAll(dir)
		m, err := b.eegMount(shaper.URL, append(mountArgs, "--cache-dir", dir)...)
		if err != nil {
			fail(epochLabel(path, 1), err)
			return row{}, false
		}
		defer m.stop()
		train := filepath.Join(m.mp, "train")
		first := b.diskMeasure(profile, epochLabel(path, 1), e.counting, m, data,
			b.eegTrainer(ctx, train, append(seed(loader, 1), verify...)...))
		b.diskMeasure(profile, epochLabel(path, 2), e.counting, m, data,
			b.eegTrainer(ctx, train, append(seed(loader, 2), verify...)...))
		return first, first.err == ""
	}

	// (a) The whole-member path; the local rows read epoch 2's samples.
	b.diskMeasure("local", diskLocalWhole, e.counting, nil, wholeData, b.eegTrainer(ctx, e.src, seed(whole, 2)...))
	first, ok := epochs(diskWhole, wholeData, whole, "--cache-size", diskCacheSize)
	// (b) The member view.
	b.diskMeasure("local", diskLocalView, e.counting, nil, viewData, b.eegTrainer(ctx, e.npy, seed(view, 2)...))
	epochs(diskView, viewData, view, "--npz-members", "--cache-size", diskCacheSize, "--npz-index-size", b.cfg.eegIndexSize)
	// (c) Half the data on disk: bounded to half of what epoch 1 fetched.
	if ok && first.fetched > 0 {
		d.halfSize = first.fetched / 2
		epochs(diskHalf, wholeData, whole, "--cache-size", diskCacheSize, "--cache-dir-size", strconv.FormatInt(d.halfSize, 10))
	}
	// (d) A sequential re-read evicted from memory but on disk.
	if err := b.diskSequential(ctx, profile, endpoint); err != nil {
		fail(diskSeqFirst, err)
	}
}

// archiveSizes returns the sizes of the .npz files in dir, by name.
func archiveSizes(dir string) ([]int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var sizes []int64
	for _, e := range entries { // ReadDir sorts by name, as trainer.py --files does
		if !strings.HasSuffix(e.Name(), ".npz") {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return nil, err
		}
		sizes = append(sizes, fi.Size())
	}
	if len(sizes) == 0 {
		return nil, fmt.Errorf("no .npz in %s", dir)
	}
	return sizes, nil
}

// diskSequential measures the sequential rows: the big file on local
// disk, cold; its first read through a mount with --cache-dir; and its
// re-read once other data pushed it out of the memory cache.
func (b *bench) diskSequential(ctx context.Context, profile, endpoint string) error {
	local := filepath.Join(b.work, "disk-seq")
	big, other := filepath.Join(local, "big.bin"), filepath.Join(local, "other.bin")
	if err := writeRandomFile(big, diskBigFile, 17); err != nil {
		return err
	}
	if err := writeRandomFile(other, diskEvictFile, 19); err != nil {
		return err
	}
	defer os.RemoveAll(local)
	admin := b.srv.Admin()
	if err := admin.CreateBucket(ctx, diskBucket); err != nil {
		return err
	}
	for _, p := range []string{big, other} {
		if err := admin.PutFile(ctx, diskBucket, filepath.Base(p), p); err != nil {
			return err
		}
	}

	var want uint32
	b.diskMeasure("local", diskLocalSeq, b.counting, nil, diskBigFile, func() (measurement, error) {
		var m measurement
		var err error
		m, want, err = readTimed(big)
		return m, err
	})
	dir, err := os.MkdirTemp(b.work, "cache-dir-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	m, err := b.mountWithStats("s3://"+diskBucket+"/", endpoint, &testbed.Creds{AccessKey: b.srv.AccessKey, SecretKey: b.srv.SecretKey},
		"--cache-size", diskCacheSize, "--cache-dir", dir)
	if err != nil {
		return err
	}
	defer m.stop()
	same := func(path string) func() (measurement, error) {
		return func() (measurement, error) {
			r, got, err := readTimed(path)
			if err == nil && got != want {
				err = fmt.Errorf("CRC-32C %08x of %s, want %08x as on local disk", got, path, want)
			}
			return r, err
		}
	}
	b.diskMeasure(profile, diskSeqFirst, b.counting, m, diskBigFile, same(filepath.Join(m.mp, "big.bin")))
	// Push the file out of the memory cache (and let its blocks be written).
	if _, _, err := readTimed(filepath.Join(m.mp, "other.bin")); err != nil {
		return err
	}
	b.counting.WaitQuiet(300*time.Millisecond, 30*time.Second)
	waitDiskWrites(m, time.Minute)
	b.diskMeasure(profile, diskSeqAgain, b.counting, m, diskBigFile, same(filepath.Join(m.mp, "big.bin")))
	return nil
}

// writeRandomFile writes size seeded random bytes to path.
func writeRandomFile(path string, size int64, seed uint64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	rng := rand.NewChaCha8([32]byte{byte(seed)})
	return writeAtomically(path, io.LimitReader(rng, size))
}

// readTimed reads path to the end in 1 MiB reads, taking the CRC-32C of
// its bytes on the way (far faster than the reads measured).
func readTimed(path string) (measurement, uint32, error) {
	start := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return measurement{}, 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var sum uint32
	var total int64
	for {
		n, err := f.Read(buf)
		sum = crc32.Update(sum, castagnoli, buf[:n])
		total += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return measurement{}, 0, err
		}
	}
	return mbps(total, time.Since(start)), sum, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// mountWithStats mounts source with its metrics served (eegMount is it
// for workload i's bucket).
func (b *bench) mountWithStats(source, endpoint string, creds *testbed.Creds, args ...string) (*eegMounted, error) {
	return b.mountBinWithStats(b.bin, source, endpoint, creds, args...)
}

// mountBinWithStats is mountWithStats with binary bin.
func (b *bench) mountBinWithStats(bin, source, endpoint string, creds *testbed.Creds, args ...string) (*eegMounted, error) {
	mp, err := os.MkdirTemp(b.work, "mnt-")
	if err != nil {
		return nil, err
	}
	port, err := testbed.FreePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	m, err := testbed.Mount(testbed.MountOptions{
		Bin: bin, Source: source, Mountpoint: mp, Endpoint: endpoint, Creds: creds,
		Args: append([]string{"--metrics-addr", addr}, args...),
	})
	if err != nil {
		os.Remove(mp)
		return nil, err
	}
	return &eegMounted{
		mounted: &mounted{mp: m.Mountpoint, pid: m.Pid(), stop: func() { _ = m.Unmount(); os.Remove(mp) }},
		stats:   "http://" + addr + "/stats",
	}, nil
}

// waitDiskWrites waits (up to timeout) until the daemon's block writes
// have settled: bytes written and writes skipped unchanged for a second.
// It returns the counters then (nil if /stats did not answer).
func waitDiskWrites(m *eegMounted, timeout time.Duration) map[string]int64 {
	var last map[string]int64
	steady := 0
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		c, err := m.daemonCounters()
		if err != nil {
			return last
		}
		if last != nil && c["disk_written_bytes"] == last["disk_written_bytes"] && c["disk_writes_skipped"] == last["disk_writes_skipped"] {
			if steady++; steady >= 4 {
				return c
			}
		} else {
			steady = 0
		}
		last = c
	}
	return last
}

// diskMeasure runs one row of workload k with the page cache dropped,
// counting at counting; m is nil for a local row. data is the bytes the
// row covers, for fetched ÷ data.
func (b *bench) diskMeasure(profile, system string, counting *testbed.CountingProxy, m *eegMounted, data float64, f func() (measurement, error)) row {
	fmt.Fprintf(os.Stderr, "bench: %s k %s\n", profile, system)
	r := row{workload: "k", profile: profile, system: system}
	if err := dropCaches(); err != nil {
		r.err = err.Error()
		b.rows = append(b.rows, r)
		return r
	}
	var before map[string]int64
	var rss *testbed.RSSSampler
	if m != nil {
		before = waitDiskWrites(m, time.Minute)
		rss = testbed.SampleRSS(m.pid, 20*time.Millisecond)
	}
	counting.WaitQuiet(300*time.Millisecond, 10*time.Second)
	counting.Reset()
	pid := 0
	if m != nil {
		pid = m.pid
	}
	cpuBefore := sampleCPU(pid)
	meas, err := f()
	cpu := sampleCPU(pid).since(cpuBefore)
	counting.WaitQuiet(300*time.Millisecond, 30*time.Second)
	c := counting.Counts()
	r.m, r.gets, r.fetched = meas, c.GetObject, c.GetObjectBytes
	if err != nil {
		r.err = err.Error()
	}
	key := eegKey(profile, system)
	b.disk.data[key] = data
	b.disk.cpu[key] = cpu
	if m != nil {
		r.rss, _ = rss.Stop()
		if after := waitDiskWrites(m, time.Minute); after != nil && before != nil {
			delta := map[string]int64{}
			for _, name := range diskCounters {
				delta[name] = after[name] - before[name]
			}
			delta["disk_bytes"] = after["disk_bytes"]
			b.disk.daemon[key] = delta
		}
	}
	b.rows = append(b.rows, r)
	return r
}

// diskTargets are workload k's targets (S3-like profile only).
func (b *bench) diskTargets(p string) []target {
	d := b.disk
	if d == nil || p != "s3like" {
		return nil
	}
	var out []target
	find := func(system string) (row, bool) {
		if strings.HasPrefix(system, "local") {
			return b.find("k", "local", system)
		}
		return b.find("k", p, system)
	}
	atLeast := func(name, system, ref string, least float64) {
		r, ok1 := find(system)
		l, ok2 := find(ref)
		if !ok1 || !ok2 || l.m.value == 0 {
			return
		}
		x := r.m.value / l.m.value
		out = append(out, target{name, p, fmt.Sprintf("%.2f× (%.1f vs %.1f %s)", x, r.m.value, l.m.value, r.m.unit), verdict(x >= least)})
	}
	noGets := func(name, system string) {
		if r, ok := find(system); ok {
			out = append(out, target{name, p, fmt.Sprintf("%d GETs, %.1f MB", r.gets, float64(r.fetched)/1e6), verdict(r.gets == 0)})
		}
	}
	atLeast("(k) whole member, epoch 2 with --cache-dir ≥ 0.8× the loader on local .npz", epochLabel(diskWhole, 2), diskLocalWhole, 0.8)
	noGets("(k) whole member, epoch 2 with --cache-dir: nothing from S3", epochLabel(diskWhole, 2))
	atLeast("(k) view, epoch 2 with --cache-dir ≥ 0.8× the loader on local uncompressed .npy", epochLabel(diskView, 2), diskLocalView, 0.8)
	noGets("(k) view, epoch 2 with --cache-dir: nothing from S3", epochLabel(diskView, 2))

	half2, ok1 := find(epochLabel(diskHalf, 2))
	half1, ok2 := find(epochLabel(diskHalf, 1))
	full2, ok3 := find(epochLabel(diskWhole, 2))
	if ok1 && ok2 && ok3 {
		between := half1.m.value < half2.m.value && half2.m.value < full2.m.value
		out = append(out, target{"(k) half the data on disk: epoch 2 between epoch 1 (S3) and epoch 2 with all on disk", p,
			fmt.Sprintf("%.2f, %.2f, %.2f samples/s", half1.m.value, half2.m.value, full2.m.value), verdict(between)})
	}
	if ok1 {
		data := d.data[eegKey(p, epochLabel(diskHalf, 2))]
		x := float64(half2.fetched) / data
		out = append(out, target{"(k) half the data on disk: epoch 2 fetched ÷ data ≈ 0.5 (0.4–0.6)", p,
			fmt.Sprintf("%.2f (%.0f of %.0f MB)", x, float64(half2.fetched)/1e6, data/1e6), verdict(x >= 0.4 && x <= 0.6)})
	}
	atLeast("(k) sequential re-read from --cache-dir ≥ 0.8× the same file on local disk, cold", diskSeqAgain, diskLocalSeq, 0.8)
	noGets("(k) sequential re-read from --cache-dir: nothing from S3", diskSeqAgain)
	return out
}

// diskSection describes workload k and details its rows with the
// daemon's disk counters.
func (b *bench) diskSection() string {
	d := b.disk
	if d == nil {
		return ""
	}
	var s strings.Builder
	fmt.Fprintf(&s, "\nWorkload k, the disk tier: workload i's archives through a mount with `--cache-size %s --cache-dir DIR` (a fresh DIR on the local disk per mount), S3-like profile, %d loader processes. "+
		"The whole-member epoch is `np.load(path)[\"windows\"][i]` of one shuffled window of each of the %d archives on a mount without `--npz-members` (each sample inflates the whole member, so it reads every byte once); "+
		"the view epoch is every window of the first %d archives once, shuffled anew each epoch, through `NAME.npz.d/windows.npy` (`--npz-members --npz-index-size %s`). "+
		"Epoch 2 runs on the same daemon as epoch 1 once its block writes have settled; every row starts with the page cache dropped, and every sample drops what it read (`--forget`); every window read through bgbfs is compared with the local copy. "+
		"The local rows run the same loader over the local `.npz` files and their uncompressed `.npy` copies (epoch 2's samples). "+
		"The half row bounds a fresh DIR with `--cache-dir-size %s` (half of what whole-member epoch 1 fetched). "+
		"The sequential rows read a %d MiB file (1 MiB reads) from S3, then a %d MiB file to push it out of memory, then it again; the local row reads the same file on local disk. "+
		"Fetched ÷ data is the bytes fetched from S3 (at the proxy) over the bytes of the archives (or file) the row covers; the disk columns are the daemon's /stats over the row (disk bytes: held at its end).\n\n",
		diskCacheSize, eegLoaders, d.wholeFiles, d.viewFiles, b.cfg.eegIndexSize, sizeMB(d.halfSize), diskBigFile>>20, diskEvictFile>>20)
	s.WriteString("| profile | row | samples | result | GETs | fetched | fetched ÷ data | disk hits | disk misses | disk written | writes skipped | disk evictions | disk bytes | daemon CPU user + sys | machine CPU busy |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range b.rows {
		if r.workload != "k" || r.err != "" {
			continue
		}
		key := eegKey(r.profile, r.system)
		samples := ""
		if r.m.unit == "samples/s" {
			samples = strconv.FormatInt(r.m.bytesRead/windowBytes, 10)
		}
		ratio := ""
		if data := d.data[key]; data > 0 {
			ratio = fmt.Sprintf("%.2f", float64(r.fetched)/data)
		}
		var cols []string
		if c, ok := d.daemon[key]; ok {
			hits := strconv.FormatInt(c["disk_hits"], 10)
			if c["disk_checksum_failures"] > 0 {
				hits += fmt.Sprintf(" (%d checksum failures)", c["disk_checksum_failures"])
			}
			cols = []string{hits, strconv.FormatInt(c["disk_misses"], 10), sizeMB(c["disk_written_bytes"]),
				strconv.FormatInt(c["disk_writes_skipped"], 10), strconv.FormatInt(c["disk_evictions"], 10), sizeMB(c["disk_bytes"])}
		} else {
			cols = make([]string, 6)
		}
		c := d.cpu[key]
		daemonCPU := ""
		if c.daemonUser+c.daemonSys > 0 {
			daemonCPU = fmt.Sprintf("%.1f + %.1f s", c.daemonUser, c.daemonSys)
		}
		cols = append(cols, daemonCPU, fmt.Sprintf("%.0f%% of %.1f s", 100*c.busy, c.seconds))
		fmt.Fprintf(&s, "| %s | %s | %s | %.1f %s | %d | %s | %s | %s |\n", r.profile, r.system, samples, r.m.value, r.m.unit, r.gets, sizeMB(r.fetched), ratio, strings.Join(cols, " | "))
	}
	return s.String()
}

func sizeMB(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// rowCPU is where a row's CPU time went: the daemon's user and system
// seconds, and the share of the machine's CPUs busy over the row's
// seconds. On 2 cores a loader that inflates competes with the daemon.
type rowCPU struct {
	daemonUser, daemonSys float64
	busy, seconds         float64
}

// cpuSample is the CPU counters at one moment: the machine's busy
// seconds (all cores) and a process's user and system seconds.
type cpuSample struct {
	at              time.Time
	busy, user, sys float64
}

// sampleCPU reads the counters now; pid 0 reads the machine's only.
// Counters it cannot read stay 0.
func sampleCPU(pid int) cpuSample {
	s := cpuSample{at: time.Now(), busy: machineCPU()}
	if pid > 0 {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			// Fields after the command name (which may hold spaces): state is
			// field 3, utime 14, stime 15, in USER_HZ (1/100 s).
			if i := strings.LastIndexByte(string(b), ')'); i >= 0 {
				f := strings.Fields(string(b[i+1:]))
				if len(f) > 12 {
					user, _ := strconv.ParseFloat(f[11], 64)
					sys, _ := strconv.ParseFloat(f[12], 64)
					s.user, s.sys = user/100, sys/100
				}
			}
		}
	}
	return s
}

func (s cpuSample) since(before cpuSample) rowCPU {
	r := rowCPU{daemonUser: s.user - before.user, daemonSys: s.sys - before.sys, seconds: s.at.Sub(before.at).Seconds()}
	if r.seconds > 0 {
		r.busy = (s.busy - before.busy) / (r.seconds * float64(runtime.NumCPU()))
	}
	return r
}
