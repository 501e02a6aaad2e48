package main

// Workload n with the cores split: the server side (MinIO, and this
// process, which runs the counting and shaping proxies) pinned to one
// core, the client side (the raw GETs, `bgbfs index`, the inflater) to
// another, each client in a child process of its own. On a machine of few
// cores that share MinIO with the client, min(raw GETs, jobs × inflater)
// is not a bound `bgbfs index` can reach: the raw GETs' rate is the whole
// machine serving GETs, while `bgbfs index` must share it with its
// inflating. Split, the server has the same core in every row and the
// client the same one. Go's runtime.NumCPU follows the affinity, so
// `bgbfs index` without --jobs runs with --jobs 1 on the client's core.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bgbfs/bgbfs/fs/npzview"
	"github.com/bgbfs/bgbfs/integration/testbed"
)

// smallChildArg, as the first argument, makes this program one client of
// the split rows (runSmallChild) instead of the benchmark.
const smallChildArg = "-small-split-child"

// coreSplit is the cores of the split rows, and the affinity to restore.
type coreSplit struct {
	server, client int
	all            unix.CPUSet
}

// newCoreSplit takes the first core this process may run on for the
// server and the last for the client; false with fewer than two.
func newCoreSplit() (*coreSplit, bool) {
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil || all.Count() < 2 {
		return nil, false
	}
	s := &coreSplit{server: -1, all: all}
	for c := range len(all) * 64 {
		if all.IsSet(c) {
			if s.server < 0 {
				s.server = c
			}
			s.client = c
		}
	}
	return s, true
}

func oneCore(c int) unix.CPUSet {
	var set unix.CPUSet
	set.Set(c)
	return set
}

// setProcessAffinity sets every thread of pid to set, again until no new
// thread appears (a thread started meanwhile by one not yet set would
// keep the old affinity).
func setProcessAffinity(pid int, set unix.CPUSet) error {
	done := map[int]bool{}
	for range 10 {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return err
		}
		fresh := false
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || done[tid] {
				continue
			}
			fresh = true
			if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("affinity of thread %d of %d: %w", tid, pid, err)
			}
			done[tid] = true
		}
		if !fresh {
			return nil
		}
	}
	return nil
}

// pinServer pins MinIO and this process to the server's core and
// returns what undoes it.
func (s *coreSplit) pinServer(minio int) (restore func(), err error) {
	restore = func() {
		for _, pid := range []int{minio, os.Getpid()} {
			if err := setProcessAffinity(pid, s.all); err != nil {
				fmt.Fprintf(os.Stderr, "bench: restoring the affinity of %d: %v\n", pid, err)
			}
		}
	}
	for _, pid := range []int{minio, os.Getpid()} {
		if err := setProcessAffinity(pid, oneCore(s.server)); err != nil {
			restore()
			return nil, err
		}
	}
	return restore, nil
}

// clientCommand is name with args, run on the client's core.
func (s *coreSplit) clientCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "taskset", append([]string{"-c", strconv.Itoa(s.client), name}, args...)...)
}

// smallChildJob is what runSmallChild is asked to do, on its stdin.
type smallChildJob struct {
	// "raw-gets": GET each of Keys whole, Streams in flight, from
	// Endpoint's Bucket.
	// "inflater": npz.BuildIndex over the archives in Src on one core.
	Mode                                   string
	Endpoint, AccessKey, SecretKey, Bucket string
	Keys                                   []string
	Sizes                                  []int64
	Streams                                int
	Src                                    string
}

// smallChildResult is what runSmallChild answers on its stdout.
type smallChildResult struct {
	Bytes   int64
	Seconds float64
	// The inflater's figures: MB/s over the time spent indexing, and
	// its process's CPU meanwhile.
	MBps, CPU float64
}

// runSmallChild runs one client job of the split rows; its exit status.
func runSmallChild() int {
	var job smallChildJob
	if err := json.NewDecoder(os.Stdin).Decode(&job); err != nil {
		fmt.Fprintln(os.Stderr, "bench child: reading the job:", err)
		return 2
	}
	var res smallChildResult
	switch job.Mode {
	case "raw-gets":
		raw := &rawClient{s3: testbed.NewS3Admin(job.Endpoint, job.AccessKey, job.SecretKey).Client, bucket: job.Bucket}
		start := time.Now()
		n, err := raw.wholeObjects(context.Background(), job.Keys, job.Sizes, job.Streams)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			return 1
		}
		res.Bytes, res.Seconds = n, time.Since(start).Seconds()
	case "inflater":
		m, run, err := inflaterSpeed(job.Src)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			return 1
		}
		res.Bytes, res.Seconds, res.MBps, res.CPU = m.bytesRead, run.seconds, m.value, run.cpu
	default:
		fmt.Fprintf(os.Stderr, "bench child: unknown mode %q\n", job.Mode)
		return 2
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return 1
	}
	return 0
}

// runChild runs job in a child of this program on the client's core; the
// child's answer, its CPU time and the machine's over its run.
func (s *coreSplit) runChild(ctx context.Context, job smallChildJob) (smallChildResult, eegIndexRun, error) {
	self, err := os.Executable()
	if err != nil {
		return smallChildResult{}, eegIndexRun{}, err
	}
	in, err := json.Marshal(job)
	if err != nil {
		return smallChildResult{}, eegIndexRun{}, err
	}
	cmd := s.clientCommand(ctx, self, smallChildArg)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(in), &stdout, &stderr
	machineBefore := machineCPU()
	start := time.Now()
	err = cmd.Run()
	run := eegIndexRun{jobs: 1, seconds: time.Since(start).Seconds(), machineCPU: machineCPU() - machineBefore}
	if err != nil {
		return smallChildResult{}, run, fmt.Errorf("%s child: %w: %s", job.Mode, err, strings.TrimSpace(stderr.String()))
	}
	run.cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	var res smallChildResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return res, run, fmt.Errorf("%s child said %q: %w", job.Mode, stdout.String(), err)
	}
	return res, run, nil
}

// Split rows' names.
const (
	smallSplitInflater    = "split: npz.BuildIndex, 1 core, on the client's core (the inflater)"
	smallSplitIndex       = "split: bgbfs index, default --jobs (1: its one core), local dir"
	smallSplitIndexBefore = "split: bgbfs index (before), default --jobs (1: its one core), local dir"
)

func smallSplitRawGets() string {
	return fmt.Sprintf("split: raw S3: whole-archive GETs, %d in flight, on the client's core", npzview.IndexRequests)
}

// runSmallSplit adds workload n's split rows under profile, whose
// endpoint is endpoint.
func (b *bench) runSmallSplit(ctx context.Context, profile, endpoint string) {
	s := b.small
	split, ok := newCoreSplit()
	if !ok {
		return
	}
	restore, err := split.pinServer(s.srv.Pid())
	if err != nil {
		b.rows = append(b.rows, row{workload: smallWorkload, profile: profile, system: smallSplitIndex, err: err.Error()})
		return
	}
	defer restore()
	s.split = split
	if _, ok := s.runs[eegKey("local", smallSplitInflater)]; !ok {
		b.smallRow("local", smallSplitInflater, func() (measurement, eegIndexRun, error) {
			res, run, err := split.runChild(ctx, smallChildJob{Mode: "inflater", Src: s.src})
			run.seconds, run.cpu = res.Seconds, res.CPU // the child's time indexing, not its start and reading
			return measurement{value: res.MBps, unit: "MB/s", bytesRead: res.Bytes}, run, err
		})
	}
	b.smallRow(profile, smallSplitRawGets(), func() (measurement, eegIndexRun, error) {
		res, run, err := split.runChild(ctx, smallChildJob{Mode: "raw-gets", Endpoint: endpoint, AccessKey: s.srv.AccessKey, SecretKey: s.srv.SecretKey,
			Bucket: smallBucket, Keys: s.keys, Sizes: s.sizes, Streams: npzview.IndexRequests})
		run.jobs = npzview.IndexRequests
		if res.Seconds > 0 {
			run.seconds = res.Seconds // the GETs, not the child's start
		}
		return mbps(res.Bytes, time.Duration(run.seconds*float64(time.Second))), run, err
	})
	bins := map[string]string{smallSplitIndex: b.bin}
	if b.cfg.baselineBin != "" {
		bins[smallSplitIndexBefore] = b.cfg.baselineBin
	}
	for _, system := range []string{smallSplitIndexBefore, smallSplitIndex} {
		bin, ok := bins[system]
		if !ok {
			continue
		}
		dir := filepath.Join(b.work, fmt.Sprintf("small-idx-split-%s-%v", profile, system == smallSplitIndexBefore))
		b.smallRow(profile, system, func() (measurement, eegIndexRun, error) {
			run, err := indexCommandWith(ctx, split.clientCommand, bin, endpoint, testbed.Creds{AccessKey: s.srv.AccessKey, SecretKey: s.srv.SecretKey},
				"s3://"+smallBucket+"/train/", dir, 0, len(s.keys), s.deflatedMembers)
			if err != nil {
				return measurement{}, run, err
			}
			run.jobs = 1
			run.dirBytes, run.idxFiles, err = dirSize(dir)
			return mbps(int64(s.deflated), time.Duration(run.seconds*float64(time.Second))), run, err
		})
	}
}

// smallSplitTarget is the split's target under profile p: `bgbfs index`
// with the default --jobs at 0.8x min(raw GETs, jobs x inflater), all
// three on the client's core.
func (b *bench) smallSplitTarget(p string) []target {
	s := b.small
	raw, ok1 := b.find(smallWorkload, p, smallSplitRawGets())
	inf, ok2 := b.find(smallWorkload, "local", smallSplitInflater)
	infRun := s.runs[eegKey("local", smallSplitInflater)]
	if !ok1 || !ok2 || infRun.cpu == 0 {
		return nil
	}
	network := raw.m.value * s.deflated / s.archives
	perCore := inf.m.value * infRun.seconds / infRun.cpu
	// On its one core the client pays for its GETs too: the raw GETs'
	// client CPU and the inflater's for the same bytes, one after the
	// other, is the most that core can index.
	rawCPU := s.runs[eegKey(p, smallSplitRawGets())].cpu
	inflateCPU := s.deflated / 1e6 / perCore
	coreBound := s.deflated / 1e6 / (rawCPU + inflateCPU)
	var out []target
	for _, system := range []string{smallSplitIndex, smallSplitIndexBefore} {
		r, ok := b.find(smallWorkload, p, system)
		if !ok {
			continue
		}
		jobs := s.runs[eegKey(p, system)].jobs
		ratio := r.m.value / min(network, float64(jobs)*perCore)
		out = append(out, target{fmt.Sprintf("(n) %s ≥ 0.8× min(raw GETs, jobs × inflater), server (MinIO, proxies) on core %d, clients on core %d", system, s.split.server, s.split.client), p,
			fmt.Sprintf("%.2f× (%.1f vs min(%.1f, %d × %.1f) MB/s)", ratio, r.m.value, network, jobs, perCore), verdict(ratio >= 0.8)})
		run := s.runs[eegKey(p, system)]
		ratio = r.m.value / min(network, coreBound)
		out = append(out, target{fmt.Sprintf("(n) %s ≥ 0.8× min(raw GETs, its core's bound: compressed MB ÷ (the raw GETs' client CPU + the inflater's CPU for them))", system), p,
			fmt.Sprintf("%.2f× (%.1f vs min(%.1f, %.1f MB/s: %.1f + %.1f CPU-s); it ran %.1f CPU-s in %.1f s, and waited for its core %.1f s)", ratio, r.m.value, network, coreBound, rawCPU, inflateCPU, run.cpu, run.seconds, run.runDelay), verdict(ratio >= 0.8)})
	}
	return out
}

// watchRunDelay samples, until the returned function is called, the time
// the threads of pid waited on a run queue (/proc/PID/task/TID/schedstat,
// second field); that function returns their sum, in seconds, as last
// seen of each thread.
func watchRunDelay(pid int) (stop func() float64) {
	delays := map[string]int64{}
	sample := func() {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
		for _, t := range tasks {
			data, err := os.ReadFile(t)
			fields := strings.Fields(string(data))
			if err != nil || len(fields) < 2 {
				continue
			}
			if ns, err := strconv.ParseInt(fields[1], 10, 64); err == nil {
				delays[t] = ns
			}
		}
	}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			sample()
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() float64 {
		close(done)
		<-finished
		var total int64
		for _, ns := range delays {
			total += ns
		}
		return float64(total) / 1e9
	}
}
