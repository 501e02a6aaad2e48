package main

// Workload n, `bgbfs index` over many small archives: a dataset of
// thousands of archives of about 210 KB (np.savez_compressed of a few
// small float32 windows and their labels), where each archive costs
// round trips rather than inflating. Under each profile:
//
//   - whole-archive GETs of every archive, as many in flight as `bgbfs
//     index` allows itself (npzview.IndexRequests): the network's rate;
//   - `bgbfs index` with the default --jobs (the cores) into a fresh local
//     dir, and the same with --baseline-bin if given (the binary before);
//   - and, once, npz.BuildIndex over the distinct archives in memory on
//     one core (the inflater): its MB per CPU-s.
//
// numpy writes smallDistinct distinct archives; each is uploaded under
// several keys (smallKeys in all), which is the same work for `bgbfs
// index` (an index is of a key and version) and far quicker to make. The
// archives and their MinIO are made once under
// integration/.work/bench-small/ and reused.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/fs/npzview"
	"github.com/bgbfs/bgbfs/integration/testbed"
)

const (
	smallWorkload = "n"
	smallBucket   = "small"
	smallDistinct = 300
	smallKeys     = 6500
	smallSeed     = 17

	smallInflater = "unpinned: npz.BuildIndex in-process, 1 core (the inflater)"
)

// smallGen writes smallDistinct archives of 2 windows of 19 channels x
// 1536 float32 samples (random walks, as workload i's) and their labels.
const smallGen = `
import sys, os, numpy as np
out, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(seed)
for i in range(n):
    steps = rng.standard_normal((2, 19, 1536), dtype=np.float32)
    w = np.cumsum(steps, axis=2, dtype=np.float32)
    labels = (rng.random((2, 1536)) < 0.1).astype(np.float32)
    tmp = os.path.join(out, ".tmp-%05d.npz" % i)
    np.savez_compressed(tmp, windows=w, labels=labels)
    os.rename(tmp, os.path.join(out, "a%05d.npz" % i))
`

func smallIndexSystem(jobs int, baseline bool) string {
	if baseline {
		return fmt.Sprintf("unpinned: bgbfs index --jobs %d (before), local dir", jobs)
	}
	return fmt.Sprintf("unpinned: bgbfs index --jobs %d, local dir", jobs)
}

func smallRawGets() string {
	return fmt.Sprintf("unpinned: raw S3: whole-archive GETs, %d in flight", npzview.IndexRequests)
}

// smallSet is workload n's data, its servers and its runs.
type smallSet struct {
	dir, src string // src holds the distinct archives
	srv      *testbed.MinIO
	counting *testbed.CountingProxy
	keys     []string
	sizes    []int64
	// Over every key: the archives' bytes, and their deflated members'
	// compressed bytes and count.
	archives, deflated float64
	deflatedMembers    int
	runs               map[string]eegIndexRun
	split              *coreSplit // the split rows' cores, once run
}

// smallData makes (once) and serves workload n's data.
func (b *bench) smallData(ctx context.Context) (*smallSet, error) {
	if b.small != nil {
		return b.small, nil
	}
	dir := filepath.Join(b.repo(), "integration", ".work", "bench-small", fmt.Sprintf("%dx%d-seed%d", smallDistinct, smallKeys, smallSeed))
	s := &smallSet{dir: dir, src: filepath.Join(dir, "src"), runs: map[string]eegIndexRun{}}
	ready := filepath.Join(dir, "ready")
	if _, err := os.Stat(ready); err != nil {
		fmt.Fprintf(os.Stderr, "bench: generating the archives of workload n in %s (once)\n", dir)
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
		if out, err := exec.Command(testbed.Python, "-c", smallGen, s.src, fmt.Sprint(smallDistinct), fmt.Sprint(smallSeed)).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("generating small archives: %w: %s", err, out)
		}
		if err := os.WriteFile(ready, []byte("generated\n"), 0o644); err != nil {
			return nil, err
		}
	}
	distinct, err := measureDeflated(s.src)
	if err != nil {
		return nil, err
	}
	for i := range smallKeys {
		a := distinct[i%len(distinct)]
		s.keys = append(s.keys, fmt.Sprintf("train/k%05d-%s", i, a.name))
		s.sizes = append(s.sizes, a.size)
		s.archives += float64(a.size)
		s.deflated += float64(a.deflated)
		s.deflatedMembers += a.members
	}
	minioBin, err := testbed.MinIOBinary(b.repo())
	if err != nil {
		return nil, err
	}
	if s.srv, err = testbed.StartMinIO(minioBin, filepath.Join(dir, "minio")); err != nil {
		return nil, err
	}
	b.cleanups = append(b.cleanups, s.srv.Stop)
	if err := s.upload(ctx, distinct); err != nil {
		return nil, err
	}
	if s.counting, err = testbed.NewCountingProxy(s.srv.Endpoint); err != nil {
		return nil, err
	}
	b.cleanups = append(b.cleanups, func() { s.counting.Close() })
	b.small = s
	return s, nil
}

// archiveFile is one archive file's name and sizes.
type archiveFile struct {
	name           string
	size, deflated int64 // the file, and its deflated members compressed
	members        int   // deflated members
}

// measureDeflated reads the zip directory of every .npz in dir.
func measureDeflated(dir string) ([]archiveFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []archiveFile
	for _, d := range entries {
		if !strings.HasSuffix(d.Name(), ".npz") || strings.HasPrefix(d.Name(), ".") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, d.Name()))
		if err != nil {
			return nil, err
		}
		a := archiveFile{name: d.Name(), size: int64(len(data))}
		zd, err := npz.ReadDirectory(bytes.NewReader(data), a.size)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.Name(), err)
		}
		for _, m := range zd.Members {
			if m.Method == npz.Deflated {
				a.deflated += m.CompressedSize
				a.members++
			}
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no archives in %s", dir)
	}
	return out, nil
}

// upload puts every key the bucket lacks.
func (s *smallSet) upload(ctx context.Context, distinct []archiveFile) error {
	admin := s.srv.Admin()
	if err := ensureBucket(ctx, admin, smallBucket); err != nil {
		return err
	}
	listed, err := admin.ListAll(ctx, smallBucket, "train/")
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, o := range listed {
		have[o.Key] = true
	}
	data := map[string][]byte{}
	for _, a := range distinct {
		if data[a.name], err = os.ReadFile(filepath.Join(s.src, a.name)); err != nil {
			return err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	if len(have) < len(s.keys) {
		fmt.Fprintln(os.Stderr, "bench: uploading the archives of workload n (once)")
	}
	for i, key := range s.keys {
		if have[key] {
			continue
		}
		g.Go(func() error { return admin.PutBytes(gctx, smallBucket, key, data[distinct[i%len(distinct)].name]) })
	}
	return g.Wait()
}

// runSmallIndex measures workload n under profile.
func (b *bench) runSmallIndex(ctx context.Context, profile string) {
	if !b.wants(smallWorkload) {
		return
	}
	fail := func(system string, err error) {
		b.rows = append(b.rows, row{workload: smallWorkload, profile: profile, system: system, err: err.Error()})
	}
	s, err := b.smallData(ctx)
	if err != nil {
		fail(smallRawGets(), err)
		return
	}
	if _, ok := s.runs[eegKey("local", smallInflater)]; !ok {
		b.smallRow("local", smallInflater, func() (measurement, eegIndexRun, error) { return inflaterSpeed(s.src) })
	}
	endpoint := s.counting.URL
	if profile == "s3like" {
		shaper, err := testbed.NewShapingProxy(s.counting.URL, s3Latency, s3ConnRate)
		if err != nil {
			fail(smallRawGets(), err)
			return
		}
		defer shaper.Close()
		endpoint = shaper.URL
	}
	if err := readAll(filepath.Join(s.srv.DataDir, smallBucket)); err != nil {
		fail(smallRawGets(), fmt.Errorf("reading MinIO's files into the page cache: %w", err))
		return
	}
	raw := &rawClient{s3: testbed.NewS3Admin(endpoint, s.srv.AccessKey, s.srv.SecretKey).Client, bucket: smallBucket}
	b.smallRow(profile, smallRawGets(), func() (measurement, eegIndexRun, error) {
		machineBefore := machineCPU()
		start := time.Now()
		n, err := raw.wholeObjects(ctx, s.keys, s.sizes, npzview.IndexRequests)
		elapsed := time.Since(start)
		return mbps(n, elapsed), eegIndexRun{jobs: npzview.IndexRequests, seconds: elapsed.Seconds(), machineCPU: machineCPU() - machineBefore}, err
	})
	jobs := runtime.NumCPU()
	bins := []struct {
		bin      string
		baseline bool
	}{{b.bin, false}}
	if b.cfg.baselineBin != "" {
		bins = append(bins, struct {
			bin      string
			baseline bool
		}{b.cfg.baselineBin, true})
	}
	for _, bin := range bins {
		system := smallIndexSystem(jobs, bin.baseline)
		dir := filepath.Join(b.work, fmt.Sprintf("small-idx-%s-%v", profile, bin.baseline))
		b.smallRow(profile, system, func() (measurement, eegIndexRun, error) {
			run, err := indexCommand(ctx, bin.bin, endpoint, testbed.Creds{AccessKey: s.srv.AccessKey, SecretKey: s.srv.SecretKey},
				"s3://"+smallBucket+"/train/", dir, jobs, len(s.keys), s.deflatedMembers)
			if err != nil {
				return measurement{}, run, err
			}
			run.dirBytes, run.idxFiles, err = dirSize(dir)
			return mbps(int64(s.deflated), time.Duration(run.seconds*float64(time.Second))), run, err
		})
	}
	b.runSmallSplit(ctx, profile, endpoint)
}

// smallRow runs one row of workload n, counting at its proxy.
func (b *bench) smallRow(profile, system string, f func() (measurement, eegIndexRun, error)) {
	s := b.small
	fmt.Fprintf(os.Stderr, "bench: %s n %s\n", profile, system)
	r := row{workload: smallWorkload, profile: profile, system: system}
	s.counting.WaitQuiet(300*time.Millisecond, 10*time.Second)
	s.counting.Reset()
	m, run, err := f()
	s.counting.WaitQuiet(300*time.Millisecond, 30*time.Second)
	c := s.counting.Counts()
	r.m, r.gets, r.fetched = m, c.GetObject, c.GetObjectBytes
	if err != nil {
		r.err = err.Error()
	} else {
		s.runs[eegKey(profile, system)] = run
	}
	b.rows = append(b.rows, r)
}

// smallTargets are workload n's targets under profile p: `bgbfs index`
// at 0.8x min(raw GETs, jobs x inflater), both in compressed member
// bytes per second; and, since on a small machine MinIO and the proxies
// serving the GETs use the same cores as the inflating, at 0.8x the
// machine's bound: the CPU the raw GETs took of the whole machine plus
// the index process's own, over the cores.
func (b *bench) smallTargets(p string) []target {
	s := b.small
	if s == nil {
		return nil
	}
	raw, ok1 := b.find(smallWorkload, p, smallRawGets())
	rawRun, ok2 := s.runs[eegKey(p, smallRawGets())]
	inf, ok3 := b.find(smallWorkload, "local", smallInflater)
	infRun := s.runs[eegKey("local", smallInflater)]
	out := b.smallSplitTarget(p)
	if !ok1 || !ok2 || !ok3 || infRun.cpu == 0 {
		return out
	}
	network := raw.m.value * s.deflated / s.archives
	perCore := inf.m.value * infRun.seconds / infRun.cpu // MB per CPU-s
	for _, baseline := range []bool{false, true} {
		system := smallIndexSystem(runtime.NumCPU(), baseline)
		r, ok := b.find(smallWorkload, p, system)
		if !ok {
			continue
		}
		run := s.runs[eegKey(p, system)]
		jobs := min(run.jobs, runtime.NumCPU())
		ratio := r.m.value / min(network, float64(jobs)*perCore)
		out = append(out, target{fmt.Sprintf("(n) %s ≥ 0.8× min(raw GETs, jobs × inflater)", system), p,
			fmt.Sprintf("%.2f× (%.1f vs min(%.1f, %d × %.1f) MB/s)", ratio, r.m.value, network, jobs, perCore), verdict(ratio >= 0.8)})
		machine := s.deflated / 1e6 / ((rawRun.machineCPU + run.cpu) / float64(runtime.NumCPU()))
		ratio = r.m.value / machine
		out = append(out, target{fmt.Sprintf("(n) %s ≥ 0.8× the machine's CPU bound ((raw GETs' machine CPU + its own) ÷ cores)", system), p,
			fmt.Sprintf("%.2f× (%.1f vs %.1f MB/s: (%.1f + %.1f) CPU-s ÷ %d cores)", ratio, r.m.value, machine, rawRun.machineCPU, run.cpu, runtime.NumCPU()), verdict(ratio >= 0.8)})
	}
	return out
}

// smallSection details workload n.
func (b *bench) smallSection() string {
	s := b.small
	if s == nil {
		return ""
	}
	var out strings.Builder
	fmt.Fprintf(&out, "\nWorkload n, `bgbfs index` over many small archives: %d archives of %.0f KB on average (%d distinct, written by `np.savez_compressed`: 2 windows of 19 × 1536 float32 random walks and their labels; each uploaded under %d keys), %d deflated members, %.1f MB compressed of %.1f MB of archives, in a MinIO of their own (files read into the page cache first). "+
		"Rows: whole-archive GETs of every archive, %d in flight (as many as `bgbfs index` has at most; MB/s of archive bytes); `bgbfs index` with the default `--jobs` into a fresh local dir (MB/s of compressed member bytes over the process's wall time), and the same with the binary before the change (`--baseline-bin`); `npz.BuildIndex` on one core over the distinct archives in memory (the inflater; MB per CPU-s). Waited for a core: the time `bgbfs index`'s threads were ready to run and queued for a core (/proc/PID/task/*/schedstat, sampled every 100 ms). Machine cores busy: the CPU time of every process over the row's wall time (MinIO and the proxies too). \"unpinned\" rows run every process on every core; \"split\" rows pin the server side (MinIO, and the benchmark's process with the counting and shaping proxies) to one core and each client (the raw GETs and the inflater in a child of the benchmark, `bgbfs index` without `--jobs`, whose default, the cores it may use, is then 1) to another, so that what bounds `bgbfs index` and what it is compared with have the same cores.\n\n",
		len(s.keys), s.archives/float64(len(s.keys))/1e3, smallDistinct, smallKeys/smallDistinct, s.deflatedMembers, s.deflated/1e6, s.archives/1e6, npzview.IndexRequests)
	out.WriteString("| profile | run | jobs or in flight | seconds | MB/s | CPU s | MB per CPU-s | waited for a core s | machine cores busy | GETs | dir size | per archive |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range b.rows {
		run, ok := s.runs[eegKey(r.profile, r.system)]
		if r.workload != smallWorkload || r.err != "" || !ok {
			continue
		}
		cpu, perCPU, waited, busy, dir, perArchive := "", "", "", "", "", ""
		if run.runDelay > 0 {
			waited = fmt.Sprintf("%.1f", run.runDelay)
		}
		if run.cpu > 0 {
			cpu, perCPU = fmt.Sprintf("%.1f", run.cpu), fmt.Sprintf("%.1f", s.deflated/1e6/run.cpu)
			if r.system == smallInflater || r.system == smallSplitInflater { // over the distinct archives only
				perCPU = fmt.Sprintf("%.1f", r.m.value*run.seconds/run.cpu)
			}
		}
		if run.machineCPU > 0 {
			busy = fmt.Sprintf("%.2f", run.machineCPU/run.seconds)
		}
		if run.dirBytes > 0 {
			dir, perArchive = fmt.Sprintf("%.0f KiB", float64(run.dirBytes)/1024), fmt.Sprintf("%.2f KiB", float64(run.dirBytes)/float64(len(s.keys))/1024)
		}
		fmt.Fprintf(&out, "| %s | %s | %d | %.1f | %.1f | %s | %s | %s | %s | %d | %s | %s |\n",
			r.profile, r.system, run.jobs, run.seconds, r.m.value, cpu, perCPU, waited, busy, r.gets, dir, perArchive)
	}
	return out.String()
}

// indexCommand runs `bgbfs index --jobs jobs` of bin over source into
// cacheDir and checks its summary: every one of archives indexed, with
// members members. The run has its wall time and CPU, and the machine's.
func indexCommand(ctx context.Context, bin, endpoint string, creds testbed.Creds, source, cacheDir string, jobs, archives, members int) (eegIndexRun, error) {
	return indexCommandWith(ctx, exec.CommandContext, bin, endpoint, creds, source, cacheDir, jobs, archives, members)
}

// indexCommandWith is indexCommand with the command made by command
// (on a core of its own, say); jobs 0 leaves --jobs to its default.
func indexCommandWith(ctx context.Context, command func(context.Context, string, ...string) *exec.Cmd, bin, endpoint string, creds testbed.Creds, source, cacheDir string, jobs, archives, members int) (eegIndexRun, error) {
	args := []string{"index", "--endpoint-url", endpoint, "--force-path-style", "--region", "us-east-1", "--cache-dir", cacheDir}
	if jobs > 0 {
		args = append(args, "--jobs", fmt.Sprint(jobs))
	}
	cmd := command(ctx, bin, append(args, source)...)
	cmd.Env = testbed.CleanEnv(&creds)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	machineBefore := machineCPU()
	start := time.Now()
	err := cmd.Start()
	var waited float64
	if err == nil {
		stopWatch := watchRunDelay(cmd.Process.Pid)
		err = cmd.Wait()
		waited = stopWatch()
	}
	run := eegIndexRun{jobs: jobs, seconds: time.Since(start).Seconds(), machineCPU: machineCPU() - machineBefore, runDelay: waited}
	if err != nil {
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		return run, fmt.Errorf("bgbfs index: %w: %s", err, lines[len(lines)-1])
	}
	run.cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	summary := strings.TrimSpace(stdout.String())
	// Every archive indexed in this run: the dir was fresh.
	if want := fmt.Sprintf("indexed %d archives (%d members,", archives, members); !strings.HasPrefix(summary, want) {
		return run, fmt.Errorf("bgbfs index said %q, want %q…", summary, want)
	}
	return run, nil
}
