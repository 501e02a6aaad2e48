package main

// Workload i: the member view at the real bucket's scale. The
// real bucket holds ~6,500 archives of EEG windows; a trainer reads one
// shuffled window at a time from any of them, reopening the file for
// every sample. Whether the view helps there depends on what it keeps per
// archive, so this workload uses many archives (--eeg-files, 100) of
// EEG-like float32 (random walks, which deflate shrinks ~1.13x as it does
// the real recordings), 8 loader processes, a --cache-size (64MiB) far
// smaller than the data, and an --npz-index-size (32MiB) that could not
// hold 32 KiB of raw history per window of every archive (75 MiB).
//
// The archives, their uncompressed copies (the ceiling) and the MinIO
// holding them are made once under integration/.work/bench-eeg/ and
// reused by later runs (`make clean` removes them): generating, inflating
// and uploading 2.5 GB takes minutes on 2 cores. The workload therefore
// has its own MinIO, counting proxy and shaping proxy, set up as the
// shared ones are.
//
// Every row but the dataset pass and the ceiling checks each window it
// read against the uncompressed copy (trainer.py --verify): a wrong byte
// fails the row. The page cache is dropped before each row, and every
// sample drops what it read from it (trainer.py --forget), as with data
// far larger than memory.

import (
	"archive/zip"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

const (
	eegBucket  = "eeg"
	eegSeed    = 13
	eegLoaders = 8
	// The real bucket, for the extrapolation of index memory.
	realArchives = 6500
	realWindows  = 73
	// rawHistory is what an access point held before compact indexes:
	// 32 KiB of uncompressed history.
	rawHistory = 32 << 10

	eegShapes        = "bgbfs view: dataset pass (shape of every archive)"
	eegWhole         = "bgbfs: np.load(path)[\"windows\"][i]"
	eegFirst         = "bgbfs view: first touch"
	eegSteady        = "bgbfs view: steady"
	eegUnlimitedWarm = "bgbfs view, unlimited memory: first touch"
	eegUnlimited     = "bgbfs view, unlimited memory: steady"
	eegCeiling       = "local .npy, mmap_mode=\"r\" (ceiling)"
	// eegCeilingEpoch is the ceiling for epoch 2 from the dir: a whole
	// epoch in epoch 2's order, nothing dropped while it runs (see
	// decodedEpoch2).
	eegCeilingEpoch = "local .npy, mmap_mode=\"r\": a whole epoch in epoch 2's order, pages kept"
	// eegCeilingEpochAgain is the same epoch once more, after epoch 3:
	// the bgbfs epochs are compared with the mean of the two, so that a
	// machine that slows down or speeds up during the run does not tilt
	// the ratio.
	eegCeilingEpochAgain = "local .npy, mmap_mode=\"r\": the same epoch again, after epoch 3"
	// eegFUSEFloor is the same epoch read through go-fuse's own loopback
	// example over the local copies: every file passed through to the
	// kernel (FUSE passthrough), nothing else done. What it costs over
	// the local epoch is what any go-fuse daemon costs per open on this
	// machine (numpy's 3 opens a sample, each an OPEN, an IOCTL for
	// Python's isatty and a RELEASE), which bgbfs's epoch 3 pays too.
	eegFUSEFloor = "local .npy through go-fuse's loopback example (FUSE passthrough): the same epoch"
	// The decoded windows a daemon keeps in a local --cache-dir: one
	// daemon reads every window once, shuffled (epoch 1), so every
	// member is whole in the dir; a new one with the same dir reads
	// every window again in another order (epoch 2), its members read by
	// the kernel directly once checked (FUSE passthrough); another new
	// one does the same with --npz-passthrough=false, every read served
	// by the daemon.
	eegDecoded1      = "bgbfs view, local --cache-dir: epoch 1 (windows kept decoded)"
	eegDecoded2      = "bgbfs view, local --cache-dir: epoch 2 from the dir's decoded windows, after a restart"
	eegDecoded2NoFP  = "bgbfs view, local --cache-dir, --npz-passthrough=false: epoch 2 from the dir's decoded windows, after a restart"
	eegDecodedSeed1  = "31"
	eegDecodedSeed2  = "32"
	eegDecodedSeedNo = "33"
	// eegDecoded3 is another epoch on epoch 2's daemon: every member's
	// check is known to it (epoch 2's first open of each read its
	// stamp, or checked it whole), so this one shows the kernel's reads
	// and the opens alone.
	eegDecoded3     = "bgbfs view, local --cache-dir: epoch 3, on epoch 2's daemon (every member checked)"
	eegDecodedSeed3 = "34"
)

// eegSet is workload i's data and the servers in front of it.
type eegSet struct {
	dir   string // integration/.work/bench-eeg/<files>x<windows>-seed<seed>
	src   string // the archives and manifest.json
	npy   string // NAME.npz.d/windows.npy, uncompressed, and manifest.json
	files int
	// The windows members, summed over the archives.
	compressed, uncompressed float64
	archives                 float64 // bytes of all the archives
	// Every deflated member (windows and labels): what `bgbfs index`
	// inflates.
	deflated                                      float64
	deflatedMembers                               int
	srv                                           *testbed.MinIO
	counting                                      *testbed.CountingProxy
	ceilingDone                                   bool
	ceilingEpochDone, ceilingAgainDone, floorDone bool
	// daemon is what each row's daemon said (at /stats), by row key.
	daemon map[string]daemonStats
	// index is the part about kept indexes: `bgbfs index` runs and the view after a
	// restart with their output.
	index *eegIndexSet
}

// daemonStats are a row's member-view counters from the daemon: builds
// and loads from --cache-dir during the row, and the index memory held at
// its end; reads of member files (FUSE reads), the bytes of compressed
// members they returned, the bytes inflated for them and for index
// builds; and the daemon's CPU seconds (user + sys, from /proc).
type daemonStats struct {
	builds, loads, indexBytes                int64
	reads, returned, inflated, indexInflated int64
	cpu                                      float64
}

// counterDelta is what the counters say happened between before and after.
func counterDelta(before, after map[string]int64, cpu rowCPU) daemonStats {
	d := func(name string) int64 { return after[name] - before[name] }
	return daemonStats{
		builds: d("npz_index_builds"), loads: d("npz_index_loads"), indexBytes: after["npz_index_bytes"],
		reads: d("npz_member_reads"), returned: d("npz_returned_bytes"), inflated: d("npz_inflated_bytes"), indexInflated: d("npz_index_inflated_bytes"),
		cpu: cpu.daemonUser + cpu.daemonSys,
	}
}

// printDecodedCounters says on stderr what a row's daemon did with decoded
// members in its --cache-dir, if anything: a write skipped in epoch 1 is
// a miss (and a fetch) in epoch 2.
func printDecodedCounters(system string, before, after map[string]int64) {
	names := []string{"npz_decoded_hits", "npz_decoded_read_bytes", "npz_decoded_written_bytes", "npz_decoded_writes_skipped", "npz_decoded_damaged",
		"npz_decoded_verified", "npz_decoded_stamps_trusted", "npz_decoded_verify_failed", "npz_passthrough_opens"}
	var line strings.Builder
	for _, n := range names {
		if d := after[n] - before[n]; d != 0 {
			fmt.Fprintf(&line, " %s=%d", n, d)
		}
	}
	if line.Len() > 0 {
		fmt.Fprintf(os.Stderr, "bench: %s:%s\n", system, line.String())
	}
}

func eegKey(profile, system string) string { return profile + "\x00" + system }

// compressedWindow is the mean compressed size of one window.
func (e *eegSet) compressedWindow(windows int) float64 {
	return e.compressed / float64(e.files*windows)
}

// eegData makes (once) and serves workload i's data.
func (b *bench) eegData(ctx context.Context) (*eegSet, error) {
	if b.eeg != nil {
		return b.eeg, nil
	}
	c := b.cfg
	dir := filepath.Join(b.repo(), "integration", ".work", "bench-eeg", fmt.Sprintf("%dx%d-seed%d", c.eegFiles, c.eegWindows, eegSeed))
	e := &eegSet{dir: dir, src: filepath.Join(dir, "src", "train"), npy: filepath.Join(dir, "npy"), daemon: map[string]daemonStats{}}
	ready := filepath.Join(dir, "ready")
	if _, err := os.Stat(ready); err != nil {
		fmt.Fprintf(os.Stderr, "bench: generating the archives of workload i in %s (once; later runs reuse them)\n", dir)
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
		spec := testbed.NPZSpec{Train: c.eegFiles, Windows: c.eegWindows, Seed: eegSeed, CompressedOnly: true, Walk: true, Jobs: runtime.NumCPU()}
		if err := testbed.GenNPZ(b.repo(), filepath.Join(dir, "src"), spec); err != nil {
			return nil, err
		}
		if err := writeUncompressed(e.src, e.npy); err != nil {
			return nil, err
		}
		if err := os.WriteFile(ready, []byte("generated\n"), 0o644); err != nil {
			return nil, err
		}
	}
	if err := e.measureArchives(); err != nil {
		return nil, err
	}
	if e.files != c.eegFiles {
		return nil, fmt.Errorf("%s holds %d archives, want %d: remove it to make them again", e.src, e.files, c.eegFiles)
	}
	minioBin, err := testbed.MinIOBinary(b.repo())
	if err != nil {
		return nil, err
	}
	srv, err := testbed.StartMinIO(minioBin, filepath.Join(dir, "minio"))
	if err != nil {
		return nil, err
	}
	b.cleanups = append(b.cleanups, srv.Stop)
	if err := e.upload(ctx, srv.Admin()); err != nil {
		return nil, err
	}
	counting, err := testbed.NewCountingProxy(srv.Endpoint)
	if err != nil {
		return nil, err
	}
	b.cleanups = append(b.cleanups, func() { counting.Close() })
	e.counting = counting
	e.srv = srv
	b.eeg = e
	return e, nil
}

// writeUncompressed writes the windows member of every archive in src as
// dst/NAME.npz.d/windows.npy (the bytes the member view serves), and
// dst/manifest.json: the training team's local copy, and what the rows
// are verified against. archive/zip checks each member's CRC-32.
func writeUncompressed(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		path := filepath.Join(src, e.Name())
		if e.Name() == "manifest.json" {
			if err := copyFile(path, filepath.Join(dst, e.Name())); err != nil {
				return err
			}
			continue
		}
		if !strings.HasSuffix(e.Name(), ".npz") {
			continue
		}
		if err := extractMember(path, "windows.npy", filepath.Join(dst, e.Name()+".d", "windows.npy")); err != nil {
			return err
		}
	}
	return nil
}

func extractMember(archive, member, to string) error {
	z, err := zip.OpenReader(archive)
	if err != nil {
		return err
	}
	defer z.Close()
	r, err := z.Open(member)
	if err != nil {
		return fmt.Errorf("%s: %w", archive, err)
	}
	defer r.Close()
	return writeAtomically(to, r)
}

func copyFile(from, to string) error {
	f, err := os.Open(from)
	if err != nil {
		return err
	}
	defer f.Close()
	return writeAtomically(to, f)
}

func writeAtomically(to string, r io.Reader) error {
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(to), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", to, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), to)
}

// measureArchives reads the sizes of the archives and their windows
// members from the zip directories.
func (e *eegSet) measureArchives() error {
	entries, err := os.ReadDir(e.src)
	if err != nil {
		return err
	}
	for _, d := range entries {
		if !strings.HasSuffix(d.Name(), ".npz") {
			continue
		}
		path := filepath.Join(e.src, d.Name())
		z, err := zip.OpenReader(path)
		if err != nil {
			return err
		}
		for _, f := range z.File {
			if f.Name == "windows.npy" {
				e.compressed += float64(f.CompressedSize64)
				e.uncompressed += float64(f.UncompressedSize64)
			}
			if f.Method == zip.Deflate {
				e.deflated += float64(f.CompressedSize64)
				e.deflatedMembers++
			}
		}
		z.Close()
		fi, err := d.Info()
		if err != nil {
			return err
		}
		e.archives += float64(fi.Size())
		e.files++
	}
	if e.compressed == 0 {
		return fmt.Errorf("no windows.npy in the archives of %s", e.src)
	}
	return nil
}

// upload puts every file of src the bucket lacks (or holds at another
// size) under train/: after the first run, nothing.
func (e *eegSet) upload(ctx context.Context, admin *testbed.S3Admin) error {
	if err := ensureBucket(ctx, admin, eegBucket); err != nil {
		return err
	}
	listed, err := admin.ListAll(ctx, eegBucket, "train/")
	if err != nil {
		return err
	}
	have := map[string]int64{}
	for _, o := range listed {
		have[o.Key] = o.Size
	}
	entries, err := os.ReadDir(e.src)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	uploads := 0
	for _, d := range entries {
		fi, err := d.Info()
		if err != nil {
			return err
		}
		key := "train/" + d.Name()
		if size, ok := have[key]; ok && size == fi.Size() {
			continue
		}
		if uploads == 0 {
			fmt.Fprintln(os.Stderr, "bench: uploading the archives of workload i (once)")
		}
		uploads++
		g.Go(func() error { return admin.PutFile(gctx, eegBucket, key, filepath.Join(e.src, d.Name())) })
	}
	return g.Wait()
}

// ensureBucket creates bucket unless it is there (from an earlier run).
func ensureBucket(ctx context.Context, admin *testbed.S3Admin, bucket string) error {
	err := admin.CreateBucket(ctx, bucket)
	var owned *types.BucketAlreadyOwnedByYou
	var exists *types.BucketAlreadyExists
	if errors.As(err, &owned) || errors.As(err, &exists) {
		return nil
	}
	return err
}

// eegMounted is a bgbfs mount of workload i's bucket with its metrics
// served at stats.
type eegMounted struct {
	*mounted
	stats string // http://127.0.0.1:PORT/stats
}

func (b *bench) eegMount(endpoint string, args ...string) (*eegMounted, error) {
	return b.eegMountBin(b.bin, endpoint, args...)
}

// eegMountBin mounts workload i's bucket with binary bin.
func (b *bench) eegMountBin(bin, endpoint string, args ...string) (*eegMounted, error) {
	return b.mountBinWithStats(bin, "s3://"+eegBucket+"/", endpoint, &testbed.Creds{AccessKey: b.eeg.srv.AccessKey, SecretKey: b.eeg.srv.SecretKey}, args...)
}

// daemonCounters reads the daemon's /stats ("name value" lines).
func (m *eegMounted) daemonCounters() (map[string]int64, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(m.stats)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", m.stats, resp.Status)
	}
	out := map[string]int64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(value, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %w", m.stats, sc.Text(), err)
		}
		out[name] = n
	}
	return out, sc.Err()
}

// eegMeasure runs one row of workload i with the page cache dropped
// first, counting at its proxy; m is nil for the local ceiling. The counts
// are taken once the proxy is quiet, so fetches the daemon makes after the
// loaders return count too.
func (b *bench) eegMeasure(profile, system string, m *eegMounted, f func() (measurement, error)) {
	b.eegRow(profile, system, m, true, f)
}

// eegRow is eegMeasure, dropping the page cache first only if drop.
func (b *bench) eegRow(profile, system string, m *eegMounted, drop bool, f func() (measurement, error)) {
	e := b.eeg
	fmt.Fprintf(os.Stderr, "bench: %s i %s\n", profile, system)
	r := row{workload: "i", profile: profile, system: system}
	if drop {
		if err := dropCaches(); err != nil {
			r.err = err.Error()
			b.rows = append(b.rows, r)
			return
		}
	}
	var before map[string]int64
	var rss *testbed.RSSSampler
	var cpuBefore cpuSample
	if m != nil {
		before, _ = m.daemonCounters()
		rss = testbed.SampleRSS(m.pid, 20*time.Millisecond)
		cpuBefore = sampleCPU(m.pid)
	}
	e.counting.WaitQuiet(300*time.Millisecond, 10*time.Second)
	e.counting.Reset()
	meas, err := f()
	e.counting.WaitQuiet(300*time.Millisecond, 30*time.Second)
	c := e.counting.Counts()
	r.m, r.gets, r.fetched = meas, c.GetObject, c.GetObjectBytes
	if err != nil {
		r.err = err.Error()
	}
	if m != nil {
		cpu := sampleCPU(m.pid).since(cpuBefore)
		r.rss, _ = rss.Stop()
		if after, err := m.daemonCounters(); err == nil && before != nil {
			e.daemon[eegKey(profile, system)] = counterDelta(before, after, cpu)
			printDecodedCounters(system, before, after)
		}
	}
	b.rows = append(b.rows, r)
}

// eegTrainer runs trainer.py with eegLoaders processes over dir; the rate
// is in samples/s and the bytes read are the windows returned.
func (b *bench) eegTrainer(ctx context.Context, dir string, args ...string) func() (measurement, error) {
	return func() (measurement, error) {
		r, samples, err := b.runTrainer(ctx, dir, append([]string{"--workers", strconv.Itoa(eegLoaders)}, args...)...)
		r.bytesRead = int64(samples) * windowBytes
		return r, err
	}
}

// eegStep is a daemon of workload i and the rows measured on it.
type eegStep struct {
	system string
	args   []string
	bin    string // the binary, if not the one under test
	rows   func(m *eegMounted)
}

// runEEG measures workload i under one profile (and, the first time, the
// local ceiling).
func (b *bench) runEEG(ctx context.Context, profile string) {
	if !b.wants("i") {
		return
	}
	fail := func(system string, err error) {
		b.rows = append(b.rows, row{workload: "i", profile: profile, system: system, err: err.Error()})
	}
	e, err := b.eegData(ctx)
	if err != nil {
		fail(eegShapes, err)
		return
	}
	c := b.cfg
	samples := strconv.Itoa(c.eegSamples)
	verify := []string{"--verify", e.npy}

	if !e.ceilingDone {
		e.ceilingDone = true
		// What the training team does today: the same loader, on local
		// uncompressed copies (NAME.npz.d/windows.npy, as the view names them).
		b.eegMeasure("local", eegCeiling, nil, b.eegTrainer(ctx, e.npy, "--view", "--forget", "--samples", samples))
	}

	endpoint := e.counting.URL
	if profile == "s3like" {
		shaper, err := testbed.NewShapingProxy(e.counting.URL, s3Latency, s3ConnRate)
		if err != nil {
			fail(eegShapes, err)
			return
		}
		defer shaper.Close()
		endpoint = shaper.URL
	}
	train := func(m *eegMounted) string { return filepath.Join(m.mp, "train") }
	view := []string{"--npz-members", "--cache-size", c.eegCache, "--npz-index-size", c.eegIndexSize}
	// Epochs 1 and 2 with a local dir: the same shuffled windows, each
	// daemon new.
	decodedDir := filepath.Join(b.work, "decoded-"+profile)
	if err := os.RemoveAll(decodedDir); err != nil {
		fail(eegDecoded1, err)
		return
	}
	decoded := append(slices.Clone(view), "--cache-dir", decodedDir)
	// A whole epoch each: every window once, in the seed's order.
	decodedEpoch := func(seed string) []string {
		return append([]string{"--view", "--forget", "--epoch", "--seed", seed}, verify...)
	}
	// Epoch 2 keeps the pages it reads, and so does its local ceiling:
	// a passthrough member's POSIX_FADV_DONTNEED does not reach its
	// backing file in the dir (Linux 6.18), so with --forget the kernel
	// would keep what the passthrough rows read past each window, and
	// the local row drop it. Each window is still read once.
	decodedEpoch2 := func(seed string) []string {
		return append([]string{"--view", "--epoch", "--seed", seed}, verify...)
	}
	// Unlimited: blocks and indexes each bounded above all the archives.
	all := fmt.Sprintf("%dMiB", int64(e.archives)>>20+512)
	unlimited := []string{"--npz-members", "--cache-size", all, "--npz-index-size", all}

	// Each step is a new daemon: its first reads are its first use.
	steps := []eegStep{
		{eegShapes, view, "", func(m *eegMounted) {
			b.eegMeasure(profile, eegShapes, m, func() (measurement, error) {
				r, files, err := b.runTrainer(ctx, train(m), "--workers", strconv.Itoa(eegLoaders), "--view", "--shapes")
				if err != nil || r.value == 0 {
					return measurement{}, err
				}
				return measurement{value: float64(files) / r.value, unit: "s"}, nil
			})
		}},
		{eegWhole, []string{"--cache-size", c.eegCache}, "", func(m *eegMounted) {
			b.eegMeasure(profile, eegWhole, m, b.eegTrainer(ctx, train(m), append([]string{"--forget", "--samples", strconv.Itoa(c.eegWholeSamples)}, verify...)...))
		}},
		{eegFirst, view, "", func(m *eegMounted) {
			b.eegMeasure(profile, eegFirst, m, b.eegTrainer(ctx, train(m), append([]string{"--view", "--forget", "--each-file-once"}, verify...)...))
			b.eegMeasure(profile, eegSteady, m, b.eegTrainer(ctx, train(m), append([]string{"--view", "--forget", "--samples", samples}, verify...)...))
		}},
		{eegDecoded1, decoded, "", func(m *eegMounted) {
			b.eegMeasure(profile, eegDecoded1, m, b.eegTrainer(ctx, train(m), decodedEpoch(eegDecodedSeed1)...))
		}},
		{eegDecoded2, decoded, "", func(m *eegMounted) {
			if !e.ceilingEpochDone {
				e.ceilingEpochDone = true
				// --verify as epoch 2 does: the CRC-32 of every window
				// is CPU the loaders spend on either side.
				b.eegMeasure("local", eegCeilingEpoch, nil, b.eegTrainer(ctx, e.npy, decodedEpoch2(eegDecodedSeed2)...))
			}
			b.eegMeasure(profile, eegDecoded2, m, b.eegTrainer(ctx, train(m), decodedEpoch2(eegDecodedSeed2)...))
			b.eegMeasure(profile, eegDecoded3, m, b.eegTrainer(ctx, train(m), decodedEpoch2(eegDecodedSeed3)...))
			if !e.floorDone {
				e.floorDone = true
				b.eegFloor(ctx, decodedEpoch2(eegDecodedSeed2))
			}
			if !e.ceilingAgainDone {
				e.ceilingAgainDone = true
				b.eegMeasure("local", eegCeilingEpochAgain, nil, b.eegTrainer(ctx, e.npy, decodedEpoch2(eegDecodedSeed2)...))
			}
		}},
		{eegDecoded2NoFP, append(slices.Clone(decoded), "--npz-passthrough=false"), "", func(m *eegMounted) {
			b.eegMeasure(profile, eegDecoded2NoFP, m, b.eegTrainer(ctx, train(m), decodedEpoch2(eegDecodedSeedNo)...))
		}},
		{eegUnlimitedWarm, unlimited, "", func(m *eegMounted) {
			b.eegMeasure(profile, eegUnlimitedWarm, m, b.eegTrainer(ctx, train(m), append([]string{"--view", "--forget", "--each-file-once"}, verify...)...))
			b.eegMeasure(profile, eegUnlimited, m, b.eegTrainer(ctx, train(m), append([]string{"--view", "--forget", "--samples", samples}, verify...)...))
		}},
	}
	if c.eegInMemory {
		// The daemon's CPU with nothing fetched, side by side with the
		// baseline's in one run.
		inMemory := steps[len(steps)-1]
		steps = steps[:0]
		if base := c.baselineBin; base != "" {
			label := "bgbfs baseline (" + filepath.Base(base) + ")"
			warm, steady := baselineRow(label, eegUnlimitedWarm), baselineRow(label, eegUnlimited)
			steps = append(steps, eegStep{warm, unlimited, base, func(m *eegMounted) {
				b.eegMeasure(profile, warm, m, b.eegTrainer(ctx, train(m), append([]string{"--view", "--forget", "--each-file-once"}, verify...)...))
				b.eegMeasure(profile, steady, m, b.eegTrainer(ctx, train(m), append([]string{"--view", "--forget", "--samples", samples}, verify...)...))
			}})
		}
		steps = append(steps, inMemory)
	}
	if c.eegDecoded {
		steps = slices.DeleteFunc(steps, func(s eegStep) bool {
			return s.system != eegDecoded1 && s.system != eegDecoded2 && s.system != eegDecoded2NoFP
		})
	}
	for _, s := range steps {
		if ctx.Err() != nil {
			return
		}
		bin := s.bin
		if bin == "" {
			bin = b.bin
		}
		m, err := b.eegMountBin(bin, endpoint, s.args...)
		if err != nil {
			fail(s.system, err)
			continue
		}
		s.rows(m)
		m.stop()
	}
	if !c.eegInMemory && !c.eegDecoded {
		b.runEEGIndex(ctx, profile, endpoint, view, verify)
	}
}

// eegTargets are the targets of workload i under profile p.
func (b *bench) eegTargets(p string) []target {
	e := b.eeg
	if e == nil {
		return nil
	}
	var out []target
	steady, okSteady := b.find("i", p, eegSteady)
	ratio := func(name string, other row, atLeast float64) {
		r := steady.m.value / other.m.value
		out = append(out, target{name, p, fmt.Sprintf("%.2f× (%.1f vs %.1f samples/s)", r, steady.m.value, other.m.value), verdict(r >= atLeast)})
	}
	if okSteady {
		if u, ok := b.find("i", p, eegUnlimited); ok {
			ratio("(i) view steady ≥ 0.9× the view with unlimited memory", u, 0.9)
		}
		if w, ok := b.find("i", p, eegWhole); ok {
			ratio("(i) view steady ≥ 10× the whole-member path", w, 10)
		}
		if l, ok := b.find("i", "local", eegCeiling); ok && p == "s3like" {
			ratio("(i) view steady ≥ 0.5× local uncompressed .npy (the ceiling)", l, 0.5)
		}
		if steady.m.bytesRead > 0 {
			perWindow := float64(steady.fetched) / (float64(steady.m.bytesRead) / windowBytes)
			r := perWindow / e.compressedWindow(b.cfg.eegWindows)
			out = append(out, target{fmt.Sprintf("(i) view steady: bytes fetched per window ≤ 1.5× its compressed size (%.2f MB)", e.compressedWindow(b.cfg.eegWindows)/1e6), p,
				fmt.Sprintf("%.2f MB = %.2f×", perWindow/1e6, r), verdict(r <= 1.5)})
		}
	}
	// The local epoch: the mean of its runs before epoch 2 and after
	// epoch 3.
	local, haveLocal := 0.0, false
	if l, ok := b.find("i", "local", eegCeilingEpoch); ok {
		local, haveLocal = l.m.value, true
		if l2, ok := b.find("i", "local", eegCeilingEpochAgain); ok && l2.m.value > 0 {
			local = (l.m.value + l2.m.value) / 2
		}
	}
	if d2, ok := b.find("i", p, eegDecoded2); ok && d2.m.bytesRead > 0 {
		if haveLocal {
			r := d2.m.value / local
			out = append(out, target{"(i) epoch 2 from the dir's decoded windows ≥ 0.9× local uncompressed .npy (the same epoch, mean of the two local runs)", p, fmt.Sprintf("%.2f× (%.1f vs %.1f samples/s)", r, d2.m.value, local), verdict(r >= 0.9)})
		}
		windows := float64(d2.m.bytesRead) / windowBytes
		if d, ok := e.daemon[eegKey(p, eegDecoded2)]; ok {
			ms := 1000 * d.cpu / windows
			out = append(out, target{"(i) epoch 2 from the dir's decoded windows: ≤ 1 ms of daemon CPU per window", p, fmt.Sprintf("%.2f ms", ms), verdict(ms <= 1)})
		}
		out = append(out, target{"(i) epoch 2 from the dir's decoded windows: no GET", p, fmt.Sprintf("%d GETs, %.1f MB", d2.gets, float64(d2.fetched)/1e6), verdict(d2.gets == 0)})
		if d3, ok := b.find("i", p, eegDecoded3); ok && d3.m.value > 0 {
			if haveLocal {
				r := d3.m.value / local
				out = append(out, target{"(i) epoch 3 on epoch 2's daemon (members checked) ≥ 0.9× local uncompressed .npy (an epoch, mean of the two local runs)", p, fmt.Sprintf("%.2f× (%.1f vs %.1f samples/s)", r, d3.m.value, local), verdict(r >= 0.9)})
			}
			if f, ok := b.find("i", "local", eegFUSEFloor); ok && f.m.value > 0 && haveLocal {
				r := d3.m.value / f.m.value
				out = append(out, target{fmt.Sprintf("(i) epoch 3 ≥ 0.9× the same epoch through go-fuse's loopback example (passthrough, %.2f× the local epoch): bgbfs's cost beyond FUSE's per open", f.m.value/local), p, fmt.Sprintf("%.2f× (%.1f vs %.1f samples/s)", r, d3.m.value, f.m.value), verdict(r >= 0.9)})
			}
		}
	}
	if pass, ok := b.find("i", p, eegShapes); ok {
		gets := float64(pass.gets) / float64(e.files)
		mib := float64(pass.fetched) / float64(e.files) / (1 << 20)
		out = append(out,
			target{"(i) dataset pass: ≤ 3 GETs per archive", p, fmt.Sprintf("%.2f", gets), verdict(gets <= 3)},
			target{"(i) dataset pass: ≤ 1 MiB fetched per archive", p, fmt.Sprintf("%.2f MiB", mib), verdict(mib <= 1)})
	}
	return append(out, b.eegIndexTargets(p)...)
}

// eegFloor reads the local epoch (trainer arguments args) through
// go-fuse's loopback example (see eegFUSEFloor), built from the go-fuse
// module bgbfs uses.
func (b *bench) eegFloor(ctx context.Context, args []string) {
	e := b.eeg
	fail := func(err error) {
		b.rows = append(b.rows, row{workload: "i", profile: "local", system: eegFUSEFloor, err: err.Error()})
	}
	bin := filepath.Join(b.work, "gofuse-loopback")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/hanwen/go-fuse/v2/example/loopback").CombinedOutput(); err != nil {
		fail(fmt.Errorf("go build of go-fuse's loopback example: %w: %s", err, out))
		return
	}
	mp, err := os.MkdirTemp(b.work, "mnt-loopback-")
	if err != nil {
		fail(err)
		return
	}
	m, err := startDaemon(exec.Command(bin, "-q", "-ro", mp, e.npy), mp, os.Environ())
	if err != nil {
		fail(err)
		return
	}
	defer m.stop()
	b.eegMeasure("local", eegFUSEFloor, nil, b.eegTrainer(ctx, mp, args...))
}

// eegSection describes workload i and details its rows: per window read,
// the dataset pass per archive, and the index memory with its
// extrapolation to the real bucket.
func (b *bench) eegSection() string {
	e := b.eeg
	if e == nil {
		return ""
	}
	c := b.cfg
	cw := e.compressedWindow(c.eegWindows)
	var s strings.Builder
	fmt.Fprintf(&s, "\nWorkload i, the member view at bucket scale: %d `.npz` archives of EEG-like float32 (per channel a random walk kept at full float32 precision), each %d windows (%.1f MB) and labels, written by `np.savez_compressed`; the windows members deflate %.3f× (measured over all), one window is %.2f MB compressed. "+
		"%d loader processes (a multiprocessing pool) read shuffled (archive, window) samples across all archives, reopening the file for each. "+
		"The view rows mount with `--npz-members --cache-size %s --npz-index-size %s` (%d archives × %d windows × 32 KiB of raw history would need %.0f MiB for indexes); the unlimited-memory rows with both sizes above the data; the whole-member row with `--cache-size %s` and no view. "+
		"Each row starts with the page cache dropped and every sample drops what it read (`--forget`). First touch reads one window of every archive on a new daemon; steady reads %d samples on the same daemon afterwards. "+
		"The ceiling reads the same windows from local uncompressed copies with `np.load(..., mmap_mode=\"r\")[i]`. Every window read through bgbfs is compared with the local copy. The data is generated once into `%s` and kept across runs, in its own MinIO.\n\n",
		e.files, c.eegWindows, e.archives/float64(e.files)/1e6, e.uncompressed/e.compressed, cw/1e6,
		eegLoaders, c.eegCache, c.eegIndexSize, e.files, c.eegWindows, float64(e.files*c.eegWindows*rawHistory)/(1<<20), c.eegCache,
		c.eegSamples, relPath(b.repo(), e.dir))

	s.WriteString("| profile | path | samples | samples/s | GETs | fetched per window | ÷ compressed window | index builds | index loads | index memory held | daemon CPU per window | inflated ÷ returned (reads; with builds) | FUSE reads per window |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range b.rows {
		if r.workload != "i" || r.err != "" || r.m.bytesRead == 0 || r.m.unit != "samples/s" {
			continue
		}
		windows := float64(r.m.bytesRead) / windowBytes
		perWindow := float64(r.fetched) / windows
		builds, loads, held, cpu, ratio, reads := "", "", "", "0 (no daemon)", "—", "—"
		if d, ok := e.daemon[eegKey(r.profile, r.system)]; ok {
			builds, loads, held = strconv.FormatInt(d.builds, 10), strconv.FormatInt(d.loads, 10), fmt.Sprintf("%.0f KiB", float64(d.indexBytes)/1024)
			cpu = fmt.Sprintf("%.1f ms", 1000*d.cpu/windows)
			if d.returned > 0 {
				ratio = fmt.Sprintf("%.3f; %.2f", float64(d.inflated)/float64(d.returned), float64(d.inflated+d.indexInflated)/float64(d.returned))
				reads = fmt.Sprintf("%.1f", float64(d.reads)/windows)
			}
		}
		fmt.Fprintf(&s, "| %s | %s | %.0f | %.1f | %d | %.2f MB | %.2f× | %s | %s | %s | %s | %s | %s |\n", r.profile, r.system, windows, r.m.value, r.gets, perWindow/1e6, perWindow/cw, builds, loads, held, cpu, ratio, reads)
	}

	s.WriteString("\nThe dataset pass: `np.load(p + \".d/windows.npy\", mmap_mode=\"r\").shape[0]` for every archive, 8 processes, a new daemon.\n\n")
	s.WriteString("| profile | seconds | GETs | fetched | GETs per archive | fetched per archive | index builds |\n|---|---|---|---|---|---|---|\n")
	for _, r := range b.rows {
		if r.workload != "i" || r.system != eegShapes || r.err != "" {
			continue
		}
		builds := ""
		if d, ok := e.daemon[eegKey(r.profile, r.system)]; ok {
			builds = strconv.FormatInt(d.builds, 10)
		}
		fmt.Fprintf(&s, "| %s | %.1f | %d | %.1f MB | %.2f | %.2f MiB | %s |\n", r.profile, r.m.value, r.gets, float64(r.fetched)/1e6,
			float64(r.gets)/float64(e.files), float64(r.fetched)/float64(e.files)/(1<<20), builds)
	}

	// Index memory: every archive indexed once, nothing evicted.
	for _, p := range c.profiles {
		d, ok := e.daemon[eegKey(p, eegUnlimitedWarm)]
		if !ok || d.builds == 0 {
			continue
		}
		archives := min(d.builds, int64(e.files))
		perArchive := float64(d.indexBytes) / float64(archives)
		perWindow := perArchive / float64(c.eegWindows)
		real := perWindow * realWindows * realArchives
		old := float64(rawHistory) * realWindows * realArchives
		fmt.Fprintf(&s, "\nIndex memory (%s, the unlimited-memory daemon after every archive's first touch: %d builds, %.0f KiB held): %.1f KiB per archive of %d windows, %.0f bytes per window. "+
			"For the real bucket (%d archives of %d windows) that is %.1f MiB, against %.1f GiB for 32 KiB of raw history per window.\n",
			p, d.builds, float64(d.indexBytes)/1024, perArchive/1024, c.eegWindows, perWindow, realArchives, realWindows, real/(1<<20), old/(1<<30))
		break
	}
	s.WriteString(b.eegIndexSection())
	return s.String()
}

func relPath(base, p string) string {
	if r, err := filepath.Rel(base, p); err == nil {
		return r
	}
	return p
}
