package main

// Workload j: eight processes at once, each np.load(path)["windows"] of
// every eighth of workload i's archives (100 of EEG-like float32, 2.48 GB:
// the access pattern and size of the report that measured 1.31x), on a
// fresh mount with the defaults and on one with --npz-members. numpy
// reads the end of each archive first (end record, Zip64 locator, central
// directory), then the member from the start, and closes before the end;
// the cache fills, and whatever it refuses or evicts may be fetched twice.
// Its fetched ÷ read is the bytes at workload i's proxy over the archives'
// bytes.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

const (
	// ampLoaders is the number of numpy processes of workload j.
	ampLoaders = 8
	// ampLoad loads the windows of each archive named on its command line.
	ampLoad = `
import sys
import numpy as np
for p in sys.argv[1:]:
    np.load(p)["windows"]
`
	ampBound = 1.05
	// ampMembers ends the label of the rows on a --npz-members mount
	// (smaller blocks and kernel read-ahead: the report measured 1.45x).
	ampMembers = ", --npz-members mount"
)

// ampSet is what workload j reads: workload i's archives.
type ampSet struct {
	names []string // under train/, sorted
	total int64    // their bytes
}

// runAmp measures workload j under one profile: with the binary under
// test and, given --baseline-bin, with that one too, alternating, each
// --amp-rounds times on a fresh mount of each kind.
func (b *bench) runAmp(ctx context.Context, profile string) {
	if !b.wants("j") {
		return
	}
	fail := func(err error) {
		b.rows = append(b.rows, row{workload: "j", profile: profile, system: "bgbfs", err: err.Error()})
	}
	e, err := b.eegData(ctx)
	if err != nil {
		fail(err)
		return
	}
	if b.amp == nil {
		entries, err := os.ReadDir(e.src)
		if err != nil {
			fail(err)
			return
		}
		set := &ampSet{total: int64(e.archives)}
		for _, d := range entries {
			if strings.HasSuffix(d.Name(), ".npz") {
				set.names = append(set.names, d.Name())
			}
		}
		slices.Sort(set.names)
		b.amp = set
	}
	endpoint := e.counting.URL
	if profile == "s3like" {
		shaper, err := testbed.NewShapingProxy(e.counting.URL, s3Latency, s3ConnRate)
		if err != nil {
			fail(err)
			return
		}
		defer shaper.Close()
		endpoint = shaper.URL
	}
	type binary struct{ label, path string }
	bins := []binary{{"bgbfs", b.bin}}
	if b.cfg.baselineBin != "" {
		// The baseline first in each round: if the machine warms up, it
		// favours the later run, which should not be the one under test.
		bins = []binary{{"bgbfs baseline (" + filepath.Base(b.cfg.baselineBin) + ")", b.cfg.baselineBin}, bins[0]}
	}
	for range b.cfg.ampRounds {
		for _, mode := range []struct {
			label string
			args  []string
		}{{"", nil}, {ampMembers, []string{"--npz-members"}}} {
			for _, bin := range bins {
				if ctx.Err() != nil {
					return
				}
				label := bin.label + mode.label
				m, err := b.mountAmp(bin.path, endpoint, mode.args...)
				if err != nil {
					b.rows = append(b.rows, row{workload: "j", profile: profile, system: label, err: err.Error()})
					continue
				}
				b.ampMeasure(profile, label, m.pid, func() (measurement, error) { return b.ampLoad(ctx, m.mp) })
				m.stop()
			}
		}
	}
}

// mountAmp mounts workload i's bucket with bin, the defaults and args,
// and lists the archives, so that only reads reach the proxy.
func (b *bench) mountAmp(bin, endpoint string, args ...string) (*mounted, error) {
	mp, err := os.MkdirTemp(b.work, "mnt-amp-")
	if err != nil {
		return nil, err
	}
	m, err := testbed.Mount(testbed.MountOptions{
		Bin: bin, Source: "s3://" + eegBucket + "/", Mountpoint: mp, Endpoint: endpoint,
		Creds: &testbed.Creds{AccessKey: b.eeg.srv.AccessKey, SecretKey: b.eeg.srv.SecretKey}, Args: args,
	})
	if err != nil {
		os.Remove(mp)
		return nil, err
	}
	stop := func() { _ = m.Unmount(); os.Remove(mp) }
	if _, err := os.ReadDir(filepath.Join(m.Mountpoint, "train")); err != nil {
		stop()
		return nil, err
	}
	return &mounted{mp: m.Mountpoint, pid: m.Pid(), stop: stop}, nil
}

// ampMeasure runs one row of workload j with the page cache dropped,
// counting at workload i's proxy once it is quiet (fetches the daemon
// makes after the loaders return count too) and sampling the daemon's RSS.
func (b *bench) ampMeasure(profile, system string, pid int, f func() (measurement, error)) {
	fmt.Fprintf(os.Stderr, "bench: %s j %s\n", profile, system)
	r := row{workload: "j", profile: profile, system: system}
	if err := dropCaches(); err != nil {
		r.err = err.Error()
		b.rows = append(b.rows, r)
		return
	}
	counting := b.eeg.counting
	counting.WaitQuiet(300*time.Millisecond, 10*time.Second)
	counting.Reset()
	rss := testbed.SampleRSS(pid, 20*time.Millisecond)
	m, err := f()
	counting.WaitQuiet(300*time.Millisecond, 30*time.Second)
	c := counting.Counts()
	r.m, r.gets, r.fetched = m, c.GetObject, c.GetObjectBytes
	r.rss, _ = rss.Stop()
	if err != nil {
		r.err = err.Error()
	}
	b.rows = append(b.rows, r)
}

// ampLoad runs the loaders over the archives under mp and reports the
// archives' bytes per second.
func (b *bench) ampLoad(ctx context.Context, mp string) (measurement, error) {
	var wg sync.WaitGroup
	errs := make([]error, ampLoaders)
	start := time.Now()
	for w := range ampLoaders {
		args := []string{"-c", ampLoad}
		for i := w; i < len(b.amp.names); i += ampLoaders {
			args = append(args, filepath.Join(mp, "train", b.amp.names[i]))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := exec.CommandContext(ctx, testbed.Python, args...).CombinedOutput(); err != nil {
				lines := strings.Split(strings.TrimSpace(string(out)), "\n")
				errs[w] = fmt.Errorf("loader %d: %w: %s", w, err, lines[len(lines)-1])
			}
		}()
	}
	wg.Wait()
	return mbps(b.amp.total, time.Since(start)), errors.Join(errs...)
}

// ampTargets is the target for workload j under profile p, for
// every run of the binary under test, on both mounts.
func (b *bench) ampTargets(p string) []target {
	var out []target
	for _, r := range b.rows {
		mount := map[string]string{"bgbfs": "", "bgbfs" + ampMembers: ", --npz-members"}
		suffix, ours := mount[r.system]
		if r.workload != "j" || r.profile != p || !ours || r.err != "" || r.m.bytesRead == 0 {
			continue
		}
		ratio := float64(r.fetched) / float64(r.m.bytesRead)
		out = append(out, target{fmt.Sprintf("(j%s) bytes fetched ÷ bytes read ≤ %.2f", suffix, ampBound), p, fmt.Sprintf("%.3f", ratio), verdict(ratio <= ampBound)})
	}
	return out
}
