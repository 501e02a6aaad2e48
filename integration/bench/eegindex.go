package main

// Workload i, kept indexes: member indexes kept in --cache-dir and built
// ahead by `bgbfs index`. Beside workload i's rows, under each profile:
//
//   - `bgbfs index` over the workload's bucket into a fresh local dir,
//     with --jobs as many as the cores and with --jobs 1, and into a fresh
//     prefix of a second bucket of the same MinIO (s3:// dir); its rate is
//     the compressed bytes of every deflated member over the wall time of
//     the process. Beside it what bounds it: whole-archive GETs of the
//     same bytes through the same profile, as many streams as jobs (the
//     network), and npz.BuildIndex in this process over the archives in
//     memory on one core (the inflater). MinIO's files are read into the
//     page cache first, so that both GET rows see the network path and not
//     the virtual disk.
//   - the view after a restart with a filled dir: a new daemon mounted
//     with --cache-dir (the local dir `bgbfs index --jobs CORES` filled,
//     then the s3:// one), page cache dropped, the trainer's first
//     restartSamples samples of one shuffled epoch (most archives are
//     touched for the first time: each needs its archive file loaded),
//     then the next restartSamples of the same epoch on the same daemon:
//     equal-sized runs of different windows, so start-up costs fall
//     equally on both. With --baseline-bin, the same rows with that
//     binary first, on dirs its own `bgbfs index` filled.
//
// The index rows also say how busy the whole machine was: on 2 cores
// MinIO and the proxies serving 2.5 GB compete with the inflating, and
// so do other tenants of a shared machine.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/fs/npzview"
	"github.com/bgbfs/bgbfs/integration/testbed"
)

const (
	// eegIndexBucket holds the s3:// dirs, a prefix per run and profile.
	eegIndexBucket = "eeg-idx"
	// What `bgbfs index` places access points for by default, as the
	// view rows' mounts read them: --npz-checkpoint-span 1MiB,
	// --kernel-read-ahead 128KiB.
	eegIndexSpan      = 1 << 20
	eegIndexReadAhead = 128 << 10

	eegInflater = "npz.BuildIndex in-process, 1 core (the inflater)"
	// restartSamples is the size of each of the two runs after a
	// restart.
	restartSamples = 384
)

var (
	eegRestartLocal     = fmt.Sprintf("bgbfs view, restart with a filled local dir: first %d samples", restartSamples)
	eegRestartLocalWarm = fmt.Sprintf("bgbfs view, restart with a filled local dir: next %d samples", restartSamples)
	eegRestartS3        = fmt.Sprintf("bgbfs view, restart with a filled s3:// dir: first %d samples", restartSamples)
	eegRestartS3Warm    = fmt.Sprintf("bgbfs view, restart with a filled s3:// dir: next %d samples", restartSamples)
)

func eegIndexLocal(jobs int) string { return fmt.Sprintf("bgbfs index --jobs %d, local dir", jobs) }
func eegIndexS3(jobs int) string    { return fmt.Sprintf("bgbfs index --jobs %d, s3:// dir", jobs) }
func eegRawGets(streams int) string {
	if streams == 1 {
		return "raw S3: whole-archive GETs, 1 stream"
	}
	return fmt.Sprintf("raw S3: whole-archive GETs, %d streams", streams)
}

// eegIndexSet is what the index rows of workload i found besides the
// row itself, by row key.
type eegIndexSet struct {
	runs         map[string]eegIndexRun
	inflaterDone bool
}

// eegIndexRun is one `bgbfs index` run or one of its references.
type eegIndexRun struct {
	jobs    int     // --jobs, or GET streams; 1 for the inflater
	seconds float64 // wall time
	// CPU seconds of the process (bgbfs index, or this one for the
	// inflater), and of the whole machine (every process, other
	// tenants' too) over the row.
	cpu, machineCPU float64
	// runDelay is the seconds its threads were ready to run and waited
	// for a core (bgbfs index only; from /proc, sampled).
	runDelay float64
	// The dir after a run: its bytes and its index files.
	dirBytes int64
	idxFiles int
}

// eegIndexJobs are the --jobs of the index rows: the cores, 1, and twice
// the cores.
func eegIndexJobs() []int {
	cores := runtime.NumCPU()
	out := []int{cores}
	if cores > 1 {
		out = append(out, 1)
	}
	return append(out, 2*cores)
}

// runEEGIndex adds the index rows of workload i under profile, whose
// endpoint is endpoint; view are the view rows' mount flags.
func (b *bench) runEEGIndex(ctx context.Context, profile, endpoint string, view, verify []string) {
	e := b.eeg
	if e.index == nil {
		e.index = &eegIndexSet{runs: map[string]eegIndexRun{}}
	}
	if !e.index.inflaterDone {
		e.index.inflaterDone = true
		b.eegInflaterRow()
	}
	if ctx.Err() != nil {
		return
	}
	if !b.eegRawGetRows(ctx, profile, endpoint) {
		return
	}
	localDirs := b.eegIndexLocalRows(ctx, profile, endpoint)
	s3Dirs, ok := b.eegIndexS3Rows(ctx, profile, endpoint)
	if !ok {
		return
	}
	cores := runtime.NumCPU()
	b.eegRestartRows(ctx, profile, endpoint, view, verify, localDirs[cores], s3Dirs[cores])
}

// eegIndexFail adds a row of workload i's index rows that failed.
func (b *bench) eegIndexFail(profile, system string, err error) {
	b.rows = append(b.rows, row{workload: "i", profile: profile, system: system, err: err.Error()})
}

// eegInflaterRow measures the inflater alone, once for every profile.
func (b *bench) eegInflaterRow() {
	e := b.eeg
	b.eegRow("local", eegInflater, nil, false, func() (measurement, error) {
		m, run, err := inflaterSpeed(e.src)
		e.index.runs[eegKey("local", eegInflater)] = run
		return m, err
	})
}

// eegRawGetRows measures whole-archive GETs of the workload's archives,
// as many streams as each --jobs of the index rows, with MinIO's files in
// the page cache; false if the rows after cannot run.
func (b *bench) eegRawGetRows(ctx context.Context, profile, endpoint string) bool {
	e := b.eeg
	keys, sizes, err := e.archiveObjects()
	if err != nil {
		b.eegIndexFail(profile, eegRawGets(runtime.NumCPU()), err)
		return false
	}
	if err := readAll(filepath.Join(e.srv.DataDir, eegBucket)); err != nil {
		b.eegIndexFail(profile, eegRawGets(runtime.NumCPU()), fmt.Errorf("reading MinIO's files into the page cache: %w", err))
		return false
	}
	raw := &rawClient{s3: testbed.NewS3Admin(endpoint, e.srv.AccessKey, e.srv.SecretKey).Client, bucket: eegBucket}
	// --jobs as many as the cores (the default), 1 to show the scaling,
	// and twice the cores: whether more jobs than cores hide the waits of
	// each job's requests.
	for _, streams := range eegIndexJobs() {
		system := eegRawGets(streams)
		b.eegRow(profile, system, nil, false, func() (measurement, error) {
			machineBefore := machineCPU()
			start := time.Now()
			n, err := raw.wholeObjects(ctx, keys, sizes, streams)
			elapsed := time.Since(start)
			e.index.runs[eegKey(profile, system)] = eegIndexRun{jobs: streams, seconds: elapsed.Seconds(), machineCPU: machineCPU() - machineBefore}
			return mbps(n, elapsed), err
		})
	}
	return true
}

// eegIndexLocalRows runs `bgbfs index` into a fresh local dir for each
// --jobs, and returns the dirs by jobs.
func (b *bench) eegIndexLocalRows(ctx context.Context, profile, endpoint string) map[int]string {
	localDirs := map[int]string{}
	for _, jobs := range eegIndexJobs() {
		dir := filepath.Join(b.work, fmt.Sprintf("idx-%s-jobs%d", profile, jobs))
		localDirs[jobs] = dir
		system := eegIndexLocal(jobs)
		b.eegRow(profile, system, nil, false, func() (measurement, error) {
			return b.eegIndex(ctx, profile, system, endpoint, dir, jobs, func() (int64, int, error) { return dirSize(dir) })
		})
	}
	return localDirs
}

// eegIndexS3Rows runs `bgbfs index` into a fresh prefix of a second
// bucket for as many jobs as cores and twice that, and returns the s3://
// dirs by jobs; false if the bucket could not be made.
func (b *bench) eegIndexS3Rows(ctx context.Context, profile, endpoint string) (map[int]string, bool) {
	e := b.eeg
	cores := runtime.NumCPU()
	admin := testbed.NewS3Admin(e.srv.Endpoint, e.srv.AccessKey, e.srv.SecretKey)
	if err := ensureBucket(ctx, admin, eegIndexBucket); err != nil {
		b.eegIndexFail(profile, eegIndexS3(cores), err)
		return nil, false
	}
	s3Dirs := map[int]string{}
	for _, jobs := range []int{cores, 2 * cores} {
		// A prefix of its own per run, profile and jobs: fresh, and
		// nothing to delete between runs.
		prefix := fmt.Sprintf("%s/%s/jobs%d/", filepath.Base(b.work), profile, jobs)
		s3Dirs[jobs] = "s3://" + eegIndexBucket + "/" + prefix
		system := eegIndexS3(jobs)
		b.eegRow(profile, system, nil, false, func() (measurement, error) {
			return b.eegIndex(ctx, profile, system, endpoint, s3Dirs[jobs], jobs, func() (int64, int, error) {
				objs, err := admin.ListAll(ctx, eegIndexBucket, prefix)
				var n int64
				files := 0
				for _, o := range objs {
					n += o.Size
					if strings.HasSuffix(o.Key, ".idx") {
						files++
					}
				}
				return n, files, err
			})
		})
	}
	return s3Dirs, true
}

// eegRestartRows measures the view on new daemons mounted with the dirs
// `bgbfs index --jobs CORES` filled: the first restartSamples samples of
// a shuffled epoch, then the next restartSamples. With a baseline
// binary, its rows come first, on dirs it fills itself (another format
// may not read the same files).
func (b *bench) eegRestartRows(ctx context.Context, profile, endpoint string, view, verify []string, localDir, s3Dir string) {
	cores := runtime.NumCPU()
	type restart struct{ bin, label, first, next, dir, filledBy string }
	var runs []restart
	if base := b.cfg.baselineBin; base != "" {
		label := "bgbfs baseline (" + filepath.Base(base) + ")"
		runs = append(runs,
			restart{base, label, baselineRow(label, eegRestartLocal), baselineRow(label, eegRestartLocalWarm), filepath.Join(b.work, "idx-baseline-"+profile), ""},
			restart{base, label, baselineRow(label, eegRestartS3), baselineRow(label, eegRestartS3Warm), "s3://" + eegIndexBucket + "/" + filepath.Base(b.work) + "/" + profile + "/baseline/", ""})
	}
	runs = append(runs,
		restart{b.bin, "", eegRestartLocal, eegRestartLocalWarm, localDir, eegIndexLocal(cores)},
		restart{b.bin, "", eegRestartS3, eegRestartS3Warm, s3Dir, eegIndexS3(cores)})
	for _, r := range runs {
		if ctx.Err() != nil {
			return
		}
		if r.filledBy != "" {
			if _, ok := b.find("i", profile, r.filledBy); !ok {
				b.eegIndexFail(profile, r.first, fmt.Errorf("no filled dir: %s failed", r.filledBy))
				continue
			}
		} else if _, err := indexCommand(ctx, r.bin, endpoint, testbed.Creds{AccessKey: b.eeg.srv.AccessKey, SecretKey: b.eeg.srv.SecretKey},
			"s3://"+eegBucket+"/train/", r.dir, cores, b.eeg.files, b.eeg.deflatedMembers); err != nil {
			b.eegIndexFail(profile, r.first, fmt.Errorf("%s index: %w", r.label, err))
			continue
		}
		m, err := b.eegMountBin(r.bin, endpoint, append(slices.Clone(view), "--cache-dir", r.dir)...)
		if err != nil {
			b.eegIndexFail(profile, r.first, err)
			continue
		}
		train := filepath.Join(m.mp, "train")
		for i, system := range []string{r.first, r.next} {
			args := []string{"--view", "--forget", "--epoch", "--seed", "25", "--first", strconv.Itoa(i * restartSamples), "--samples", strconv.Itoa(restartSamples)}
			b.eegMeasure(profile, system, m, b.eegTrainer(ctx, train, append(args, verify...)...))
		}
		m.stop()
	}
}

// baselineRow names row system of the baseline binary labelled label.
func baselineRow(label, system string) string {
	return label + strings.TrimPrefix(system, "bgbfs")
}

// machineCPU is the CPU time every core of the machine has spent busy
// since boot, in seconds (/proc/stat: all but idle and iowait), or 0 if
// it cannot be read.
func machineCPU() float64 {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(stat), "\n")
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0
	}
	var busy float64
	// user nice system idle iowait irq softirq steal
	for i, f := range fields[1:9] {
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return 0
		}
		busy += n
	}
	const userHZ = 100 // the kernel's USER_HZ: /proc/stat counts in 1/100 s
	return busy / userHZ
}

// eegIndex runs `bgbfs index --jobs jobs` of the workload's bucket into
// cacheDir and measures it: compressed bytes of every deflated member per
// second of the process's wall time. size says how big the dir is after.
func (b *bench) eegIndex(ctx context.Context, profile, system, endpoint, cacheDir string, jobs int, size func() (int64, int, error)) (measurement, error) {
	e := b.eeg
	run, err := indexCommand(ctx, b.bin, endpoint, testbed.Creds{AccessKey: e.srv.AccessKey, SecretKey: e.srv.SecretKey},
		"s3://"+eegBucket+"/train/", cacheDir, jobs, e.files, e.deflatedMembers)
	if err != nil {
		return measurement{}, err
	}
	if run.dirBytes, run.idxFiles, err = size(); err != nil {
		return measurement{}, err
	}
	if run.idxFiles != 0 {
		return measurement{}, fmt.Errorf("%s holds %d member index files, want none: the archives' .done files hold the indexes", cacheDir, run.idxFiles)
	}
	e.index.runs[eegKey(profile, system)] = run
	return mbps(int64(e.deflated), time.Duration(run.seconds*float64(time.Second))), nil
}

// inflaterSpeed indexes every deflated member of every archive with
// npz.BuildIndex on one core (GOMAXPROCS 1, nothing else running in this
// process meanwhile), each archive read into memory first: the rate, in
// compressed bytes per second of the time spent indexing; the run has
// that time and the process's CPU time meanwhile (indexing and its
// garbage collection, with reading the archives in).
func inflaterSpeed(src string) (measurement, eegIndexRun, error) {
	run := eegIndexRun{jobs: 1}
	entries, err := os.ReadDir(src)
	if err != nil {
		return measurement{}, run, err
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	rowLead := npzview.RowLead(eegIndexReadAhead)
	var compressed int64
	var spent time.Duration
	cpuBefore, machineBefore, loopStart := processCPU(), machineCPU(), time.Now()
	for _, d := range entries {
		if !strings.HasSuffix(d.Name(), ".npz") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, d.Name()))
		if err != nil {
			return measurement{}, run, err
		}
		archive := bytes.NewReader(data)
		dir, err := npz.ReadDirectory(archive, int64(len(data)))
		if err != nil {
			return measurement{}, run, fmt.Errorf("%s: %w", d.Name(), err)
		}
		for _, m := range dir.Members {
			if m.Method != npz.Deflated {
				continue
			}
			start := time.Now()
			if _, err := npz.BuildIndex(archive, m, eegIndexSpan, rowLead); err != nil {
				return measurement{}, run, fmt.Errorf("%s: %w", d.Name(), err)
			}
			spent += time.Since(start)
			compressed += m.CompressedSize
		}
	}
	run.cpu, run.machineCPU = processCPU()-cpuBefore, machineCPU()-machineBefore
	// The machine's CPU is over the whole loop, reading included: as
	// cores busy, over the same time.
	run.machineCPU *= spent.Seconds() / time.Since(loopStart).Seconds()
	if spent == 0 {
		return measurement{}, run, fmt.Errorf("no deflated members in %s", src)
	}
	run.seconds = spent.Seconds()
	return mbps(compressed, spent), run, nil
}

// processCPU is the CPU time this process has used, in seconds.
func processCPU() float64 {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return 0
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano()).Seconds()
}

// archiveObjects are the keys and sizes of the workload's archives.
func (e *eegSet) archiveObjects() ([]string, []int64, error) {
	entries, err := os.ReadDir(e.src)
	if err != nil {
		return nil, nil, err
	}
	var keys []string
	var sizes []int64
	for _, d := range entries {
		if !strings.HasSuffix(d.Name(), ".npz") {
			continue
		}
		fi, err := d.Info()
		if err != nil {
			return nil, nil, err
		}
		keys, sizes = append(keys, "train/"+d.Name()), append(sizes, fi.Size())
	}
	return keys, sizes, nil
}

// wholeObjects GETs each object whole, in one request, streams at a time:
// what `bgbfs index` asks of the network, without the inflating.
func (r *rawClient) wholeObjects(ctx context.Context, keys []string, sizes []int64, streams int) (int64, error) {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(streams)
	got := make([]int64, len(keys))
	for i, key := range keys {
		g.Go(func() error {
			n, err := r.get(gctx, key, 0, sizes[i]-1, make([]byte, 256<<10))
			got[i] = n
			if err == nil && n != sizes[i] {
				err = fmt.Errorf("GET %s: %d bytes, want %d", key, n, sizes[i])
			}
			return err
		})
	}
	err := g.Wait()
	var total int64
	for _, n := range got {
		total += n
	}
	return total, err
}

// readAll reads every file under dir once.
func readAll(dir string) error {
	buf := make([]byte, 1<<20)
	return filepath.WalkDir(dir, func(path string, d iofs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.CopyBuffer(io.Discard, f, buf)
		return err
	})
}

// dirSize is the bytes of every regular file under dir, and how many are
// index files (*.idx).
func dirSize(dir string) (int64, int, error) {
	var n int64
	files := 0
	err := filepath.WalkDir(dir, func(path string, d iofs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n += fi.Size()
		if strings.HasSuffix(d.Name(), ".idx") {
			files++
		}
		return nil
	})
	return n, files, err
}

// eegIndexBound is what should bound `bgbfs index --jobs jobs` under
// profile: the rate of the same compressed bytes at the GET rate of as
// many streams, and jobs inflaters (at most one per core); with both
// rates in MB/s of compressed member bytes. An inflater's speed is per
// second of CPU: on a shared machine its wall-clock rate says as much
// about the other tenants as about it.
func (b *bench) eegIndexBound(profile string, jobs int) (network, inflating float64, ok bool) {
	e := b.eeg
	raw, ok1 := b.find("i", profile, eegRawGets(jobs))
	inf, ok2 := e.index.runs[eegKey("local", eegInflater)]
	if !ok1 || !ok2 || inf.cpu == 0 {
		return 0, 0, false
	}
	// The GET rows move whole archives; the index's rate counts only
	// the members' compressed bytes, a little less.
	network = raw.m.value * e.deflated / e.archives
	inflating = float64(min(jobs, runtime.NumCPU())) * e.deflated / 1e6 / inf.cpu
	return network, inflating, true
}

// eegIndexTargets are the index targets for workload i under profile p.
func (b *bench) eegIndexTargets(p string) []target {
	e := b.eeg
	if e == nil || e.index == nil {
		return nil
	}
	var out []target
	cores := runtime.NumCPU()
	var systems []string
	for _, jobs := range eegIndexJobs() {
		systems = append(systems, eegIndexLocal(jobs))
	}
	systems = append(systems, eegIndexS3(cores), eegIndexS3(2*cores))
	inflater := e.index.runs[eegKey("local", eegInflater)]
	for _, system := range systems {
		r, ok := b.find("i", p, system)
		if !ok {
			continue
		}
		run := e.index.runs[eegKey(p, system)]
		network, inflating, ok := b.eegIndexBound(p, run.jobs)
		if !ok {
			continue
		}
		bound := min(network, inflating)
		ratio := r.m.value / bound
		out = append(out, target{fmt.Sprintf("(i) %s ≥ 0.8× min(raw GETs, jobs × inflater)", system), p,
			fmt.Sprintf("%.2f× (%.1f vs min(%.1f, %d × %.1f) MB/s)", ratio, r.m.value, network, min(run.jobs, cores), inflating/float64(min(run.jobs, cores))),
			verdict(ratio >= 0.8)})
		if run.cpu > 0 && inflater.cpu > 0 {
			ratio := inflater.cpu / run.cpu // the same bytes inflated
			out = append(out, target{fmt.Sprintf("(i) %s: MB per CPU-s ≥ 0.8× the inflater's", system), p,
				fmt.Sprintf("%.2f× (%.1f vs %.1f)", ratio, e.deflated/1e6/run.cpu, e.deflated/1e6/inflater.cpu), verdict(ratio >= 0.8)})
		}
	}
	without, okWithout := b.find("i", p, eegFirst)
	for _, restart := range [][2]string{{eegRestartLocal, eegRestartLocalWarm}, {eegRestartS3, eegRestartS3Warm}} {
		first, ok1 := b.find("i", p, restart[0])
		steady, ok2 := b.find("i", p, restart[1])
		if !ok1 || !ok2 {
			continue
		}
		ratio := first.m.value / steady.m.value
		measured := fmt.Sprintf("%.2f× (%.1f vs %.1f samples/s", ratio, first.m.value, steady.m.value)
		if okWithout {
			measured += fmt.Sprintf("; first touch without a dir %.1f", without.m.value)
		}
		out = append(out, target{fmt.Sprintf("(i) %s ≥ 0.9× the next %d", restart[0], restartSamples), p, measured + ")", verdict(ratio >= 0.9)})
		if d, ok := e.daemon[eegKey(p, restart[0])]; ok {
			// The first samples touch most archives (not always all);
			// an archive file bgbfs index wrote loads all its members'
			// indexes at once (windows and labels).
			out = append(out, target{fmt.Sprintf("(i) %s: 0 index builds, the indexes loaded", restart[0]), p,
				fmt.Sprintf("%d builds, %d loads, %d archives", d.builds, d.loads, e.files),
				verdict(d.builds == 0 && d.loads > 0)})
		}
	}
	return out
}

// eegIndexSection details `bgbfs index` and its references.
func (b *bench) eegIndexSection() string {
	e := b.eeg
	if e.index == nil {
		return ""
	}
	var s strings.Builder
	cores := runtime.NumCPU()
	fmt.Fprintf(&s, "\n`bgbfs index` over workload i's bucket: every deflated member of the %d archives (%d members, %.1f MB compressed of %.1f MB of archives), into a fresh local dir with `--jobs %d` (the cores, the default), `--jobs 1` and `--jobs %d`, and into a fresh prefix of a second bucket of the same MinIO (`--cache-dir s3://%s/…`) with `--jobs %d` and `--jobs %d`; "+
		"MB/s are compressed member bytes over the process's wall time, per core over min(jobs, cores). "+
		"Beside them what bounds them: whole-archive GETs of the same archives through the same profile, one GET per archive, as many streams as jobs (MB/s of archive bytes), and `npz.BuildIndex` in the benchmark's process on one core (GOMAXPROCS 1) over each archive read into memory first (the inflater alone). "+
		"MinIO's files are read into the page cache before these rows, so that the GETs see the network path and not the disk. "+
		"MB per CPU-s is the compressed bytes over the CPU time of the process that inflated (bgbfs index; the benchmark's own process for the inflater), and the targets take the inflater's speed per core as its MB per CPU-s (its wall-clock rate on a shared machine depends on the other tenants); machine cores busy is the CPU time of every process on the machine over the row's wall time (MinIO, the proxies, and other tenants of a shared machine too): near the number of cores, the row was short of CPU, not waiting. "+
		"The view after a restart (rows in the table above) mounts a new daemon with the view's flags and `--cache-dir` the dir `--jobs %d` filled, drops the page cache, and reads the first %d samples of one shuffled epoch (most archives touched for the first time: each loads its archive file), then, page cache dropped again, the next %d samples of the same epoch on the same daemon: equal-sized runs of different windows, so start-up costs fall equally on both; with `--baseline-bin`, the same rows with that binary first, on dirs its own `bgbfs index` filled.\n\n",
		e.files, e.deflatedMembers, e.deflated/1e6, e.archives/1e6, cores, 2*cores, eegIndexBucket, cores, 2*cores, cores, restartSamples, restartSamples)
	s.WriteString("| profile | run | jobs or streams | seconds | MB/s | per core | CPU s | MB per CPU-s | machine cores busy | GETs | fetched ÷ compressed | dir size | per archive |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range b.rows {
		run, ok := e.index.runs[eegKey(r.profile, r.system)]
		if r.workload != "i" || r.err != "" || !ok {
			continue
		}
		perCore := r.m.value / float64(min(run.jobs, cores))
		cpu, perCPU, busy, dir, perArchive := "", "", "", "", ""
		if run.cpu > 0 {
			cpu, perCPU = fmt.Sprintf("%.1f", run.cpu), fmt.Sprintf("%.1f", e.deflated/1e6/run.cpu)
		}
		if run.machineCPU > 0 {
			busy = fmt.Sprintf("%.2f", run.machineCPU/run.seconds)
		}
		if run.dirBytes > 0 {
			dir, perArchive = fmt.Sprintf("%.0f KiB", float64(run.dirBytes)/1024), fmt.Sprintf("%.1f KiB", float64(run.dirBytes)/float64(e.files)/1024)
		}
		fetched := ""
		if r.profile != "local" {
			fetched = fmt.Sprintf("%.3f", float64(r.fetched)/e.deflated)
		}
		fmt.Fprintf(&s, "| %s | %s | %d | %.1f | %.1f | %.1f | %s | %s | %s | %d | %s | %s | %s |\n",
			r.profile, r.system, run.jobs, run.seconds, r.m.value, perCore, cpu, perCPU, busy, r.gets, fetched, dir, perArchive)
	}
	return s.String()
}
