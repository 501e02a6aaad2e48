package main

// Workload h: the trainer's random access to one window, through the plain
// .npz (numpy inflates the whole windows member for every sample) and
// through bgbfs's member view (--npz-members: NAME.npz.d/windows.npy read
// with mmap_mode="r"), with a cold and with a warm index. Every sample
// drops what it read from the page cache (trainer.py --forget): the real
// bucket is 449 GB, far more than a machine's memory, and the four
// archives here would otherwise be served from it after the first pass.
// Every window read is checked against the local copy (trainer.py
// --verify, after the timed run): a wrong byte fails the row.

import (
	"archive/zip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

const (
	// windowBytes is one float32 window of 19 channels x 15360 samples.
	windowBytes = 19 * 15360 * 4
	npzPrefix   = "npz/"
	// npzCache is the --cache-size of the h rows, the same for both paths:
	// half holds the indexes (about 2.7 MB per 85 MB member), the rest is
	// far smaller than the data, as on the real 449 GB bucket.
	npzCache = "128MiB"

	npzWhole = "bgbfs, np.load(path)[\"windows\"][i]"
	// npzWholeView is the whole-member path on the mount with the view
	// on: its smaller blocks and kernel read-ahead, and the half of the
	// cache its indexes take, cost the plain path some speed.
	npzWholeView = npzWhole + ", --npz-members mount"
	npzCold      = "bgbfs view, cold index"
	npzWarm      = "bgbfs view, warm index"
)

// npzSet is the dataset of workload h: archives the size of the real ones.
type npzSet struct {
	files int
	local string // the local copy of train/, to check the windows read
	// compressedWindow is the mean compressed size of one window: the
	// windows member's compressed size over its windows.
	compressedWindow float64
	meanSize         float64
}

func (b *bench) npzDataset(ctx context.Context) (*npzSet, error) {
	if b.npz != nil {
		return b.npz, nil
	}
	fmt.Fprintln(os.Stderr, "bench: generating and uploading the archives of workload h")
	src := filepath.Join(b.work, "npzsrc")
	if err := testbed.GenNPZ(b.repo(), src, testbed.NPZSpec{Train: b.cfg.npzFiles, Windows: b.cfg.npzWindows, Seed: 9, CompressedOnly: true}); err != nil {
		return nil, err
	}
	dir := filepath.Join(src, "train")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	set := &npzSet{local: dir}
	var compressed, windows, total float64
	admin := b.srv.Admin()
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if err := admin.PutFile(ctx, b.ds.bucket, npzPrefix+"train/"+e.Name(), path); err != nil {
			return nil, err
		}
		if !strings.HasSuffix(e.Name(), ".npz") {
			continue
		}
		z, err := zip.OpenReader(path)
		if err != nil {
			return nil, err
		}
		for _, f := range z.File {
			if f.Name == "windows.npy" {
				compressed += float64(f.CompressedSize64)
				windows += float64(f.UncompressedSize64) / windowBytes
			}
		}
		z.Close()
		fi, err := e.Info()
		if err != nil {
			return nil, err
		}
		total += float64(fi.Size())
		set.files++
	}
	if set.files == 0 || windows == 0 {
		return nil, fmt.Errorf("no archives with windows.npy in %s", dir)
	}
	set.compressedWindow = compressed / windows
	set.meanSize = total / float64(set.files)
	b.npz = set
	return set, nil
}

// runNPZView measures workload h under one profile.
func (b *bench) runNPZView(ctx context.Context, profile, endpoint string) {
	if !b.wants("h") {
		return
	}
	fail := func(system string, err error) {
		b.rows = append(b.rows, row{workload: "h", profile: profile, system: system, err: err.Error()})
	}
	if _, err := b.npzDataset(ctx); err != nil {
		fail(npzWhole, err)
		return
	}
	mount := func(extra ...string) (*mounted, error) {
		mp, err := os.MkdirTemp(b.work, "mnt-npz-")
		if err != nil {
			return nil, err
		}
		m, err := testbed.Mount(testbed.MountOptions{
			Bin: b.bin, Source: "s3://" + b.ds.bucket + "/" + npzPrefix, Mountpoint: mp, Endpoint: endpoint,
			Creds: &testbed.Creds{AccessKey: b.srv.AccessKey, SecretKey: b.srv.SecretKey},
			Args:  append([]string{"--cache-size", npzCache}, extra...),
		})
		if err != nil {
			return nil, err
		}
		if err := dropCaches(); err != nil {
			_ = m.Unmount()
			return nil, err
		}
		return &mounted{mp: m.Mountpoint, pid: m.Pid(), stop: func() { _ = m.Unmount(); os.Remove(mp) }}, nil
	}
	trainer := func(m *mounted, args ...string) func() (measurement, error) {
		args = append(args, "--verify", b.npz.local)
		return func() (measurement, error) {
			r, samples, err := b.runTrainer(ctx, filepath.Join(m.mp, "train"), args...)
			// Read: the windows the loader returned.
			r.bytesRead = int64(samples) * windowBytes
			return r, err
		}
	}

	// The whole-member path, as the trainer reads today: on a mount with
	// the defaults, the best it gets, and on one with the view on.
	for _, w := range []struct {
		system string
		args   []string
	}{{npzWhole, nil}, {npzWholeView, []string{"--npz-members"}}} {
		m, err := mount(w.args...)
		if err != nil {
			fail(w.system, err)
			return
		}
		b.measure("h", profile, w.system, m.pid, trainer(m, "--forget", "--samples", fmt.Sprint(b.cfg.npzWholeSamples)))
		m.stop()
	}

	// The member view on a new daemon: the first window of each file
	// builds its index; then, every index built and the page cache
	// dropped, random windows.
	m, err := mount("--npz-members")
	if err != nil {
		fail(npzCold, err)
		return
	}
	defer m.stop()
	b.measure("h", profile, npzCold, m.pid, trainer(m, "--forget", "--view", "--each-file-once"))
	if err := dropCaches(); err != nil {
		fail(npzWarm, err)
		return
	}
	b.measure("h", profile, npzWarm, m.pid, trainer(m, "--forget", "--view", "--samples", fmt.Sprint(b.cfg.npzSamples)))
}

// npzTargets are the targets for workload h under profile p.
func (b *bench) npzTargets(p string) []target {
	var out []target
	whole, ok1 := b.find("h", p, npzWhole)
	warm, ok2 := b.find("h", p, npzWarm)
	if ok1 && ok2 {
		r := warm.m.value / whole.m.value
		out = append(out, target{"(h) warm-index window reads ≥ 20× the samples/s of the whole-member path", p, fmt.Sprintf("%.1f×", r), verdict(r >= 20)})
	}
	if ok2 && warm.m.bytesRead > 0 && b.npz != nil {
		perWindow := float64(warm.fetched) / (float64(warm.m.bytesRead) / windowBytes)
		r := perWindow / b.npz.compressedWindow
		out = append(out, target{fmt.Sprintf("(h) bytes fetched per window ≤ 4× its compressed size (%.2f MB)", b.npz.compressedWindow/1e6), p,
			fmt.Sprintf("%.2f MB = %.2f×", perWindow/1e6, r), verdict(r <= 4)})
	}
	return out
}

// npzPerWindow is workload h per window read: the bytes fetched for each
// (at the proxy) against the window's compressed size, for every row.
func (b *bench) npzPerWindow() string {
	if b.npz == nil {
		return ""
	}
	var s strings.Builder
	fmt.Fprintf(&s, "\nWorkload h per window read: bytes fetched (at the proxy) over the windows the loader got, against one window's compressed size (%.2f MB). The cold row's fetch includes inflating each whole member once to index it.\n\n", b.npz.compressedWindow/1e6)
	s.WriteString("| profile | path | windows | samples/s | fetched per window | ÷ compressed window |\n|---|---|---|---|---|---|\n")
	for _, r := range b.rows {
		if r.workload != "h" || r.err != "" || r.m.bytesRead == 0 {
			continue
		}
		windows := float64(r.m.bytesRead) / windowBytes
		perWindow := float64(r.fetched) / windows
		fmt.Fprintf(&s, "| %s | %s | %.0f | %.1f | %.2f MB | %.2f× |\n", r.profile, r.system, windows, r.m.value, perWindow/1e6, perWindow/b.npz.compressedWindow)
	}
	return s.String()
}
