package integration

// The .npz member view at the real bucket's ratio: many archives (100)
// and memory far smaller than whole 32 KiB windows per access point would
// need, EEG-like data (float32 random walks, deflate 1.13x) written by
// numpy, eight loaders.

import (
	"archive/zip"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

const (
	scaleArchives = 100
	scaleWindows  = 2
	scaleLoaders  = 8
)

// scaleData is the bucket of the scale tests.
type scaleData struct {
	Bucket string
	Local  string   // the local copy of train/
	Names  []string // archive names, sorted
	// windowsCompressed is the compressed size of every windows.npy.
	windowsCompressed int64
}

// scaleBucket returns the scale bucket, uploading it on first use.
func scaleBucket(t testing.TB) *scaleData {
	t.Helper()
	srv := env.server(t)
	return env.scale.get(t, "the scale bucket", func() (*scaleData, error) {
		local := filepath.Join(env.work, "scale")
		if err := testbed.GenNPZ(env.repo, local, testbed.NPZSpec{Train: scaleArchives, Windows: scaleWindows, Seed: 1313, CompressedOnly: true, Walk: true, Jobs: 2}); err != nil {
			return nil, err
		}
		d := &scaleData{Bucket: "bgbfs-npzscale", Local: filepath.Join(local, "train")}
		entries, err := os.ReadDir(d.Local)
		if err != nil {
			return nil, err
		}
		admin := srv.Admin()
		if err := admin.CreateBucket(context.Background(), d.Bucket); err != nil {
			return nil, err
		}
		for _, e := range entries {
			if !strings.HasSuffix(e.Name(), ".npz") {
				continue
			}
			p := filepath.Join(d.Local, e.Name())
			z, err := zip.OpenReader(p)
			if err != nil {
				return nil, err
			}
			for _, f := range z.File {
				if f.Name == "windows.npy" {
					d.windowsCompressed += int64(f.CompressedSize64)
				}
			}
			z.Close()
			d.Names = append(d.Names, e.Name())
			if err := admin.PutFile(context.Background(), d.Bucket, "train/"+e.Name(), p); err != nil {
				return nil, err
			}
		}
		slices.Sort(d.Names)
		return d, nil
	})
}

// scaleLoader reads, for each "ARCHIVE WINDOW" line on stdin, the window
// through the member view (argv[1] is the mounted train/) or, with
// "shapes", only the array's shape; it compares with the local copy
// (argv[2]) and prints OK.
const scaleLoader = `
import os, sys
import numpy as np
mnt, local, mode = sys.argv[1], sys.argv[2], sys.argv[3]
for line in sys.stdin:
    name, i = line.split()
    view = np.load(os.path.join(mnt, name + ".d", "windows.npy"), mmap_mode="r")
    if mode == "shapes":
        assert view.shape == (2, 19, 15360), (name, view.shape)
        continue
    got = np.array(view[int(i)])
    with np.load(os.path.join(local, name)) as f:
        want = f["windows"][int(i)]
    assert np.array_equal(got, want), (name, i)
print("OK")
`

// runScaleLoaders has scaleLoaders processes share the samples.
func runScaleLoaders(t *testing.T, d *scaleData, mnt, mode string, samples [][2]string) {
	t.Helper()
	var wg sync.WaitGroup
	for w := range scaleLoaders {
		var in strings.Builder
		for i := w; i < len(samples); i += scaleLoaders {
			fmt.Fprintf(&in, "%s %s\n", samples[i][0], samples[i][1])
		}
		wg.Go(func() {
			cmd := exec.Command(testbed.Python, "-c", scaleLoader, mnt, d.Local, mode)
			cmd.Stdin = strings.NewReader(in.String())
			out, err := cmd.CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "OK" {
				t.Errorf("loader %d (%s): %v\n%s", w, mode, err, lastBytes(string(out), 2000))
			}
		})
	}
	wg.Wait()
}

// TestNPZMemberShapesWithoutIndex is the trainer's dataset pass through the
// view: eight processes read the shape of every archive's windows array on
// a fresh mount. Headers are read without building indexes: at most 3 GETs
// and 1 MiB per archive, counted at the proxy (building an index fetches
// and inflates the whole member).
func TestNPZMemberShapesWithoutIndex(t *testing.T) {
	d := scaleBucket(t)
	srv := env.server(t)
	proxy := newProxy(t, srv.Endpoint)
	m := mount(t, mountSpec{Source: "s3://" + d.Bucket + "/", Endpoint: proxy.URL, Creds: rootCreds(srv), Args: []string{"--npz-members"}})
	train := filepath.Join(m.Mountpoint, "train")
	if _, err := os.ReadDir(train); err != nil {
		t.Fatal(err)
	}
	proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
	proxy.Reset()
	var samples [][2]string
	for _, n := range d.Names {
		samples = append(samples, [2]string{n, "0"})
	}
	runScaleLoaders(t, d, train, "shapes", samples)
	proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
	c := proxy.Reset()
	n := int64(len(d.Names))
	t.Logf("shapes of %d archives (%d bytes of compressed windows): %v; %.1f GETs and %.0f KiB per archive",
		n, d.windowsCompressed, c, float64(c.GetObject)/float64(n), float64(c.GetObjectBytes)/float64(n)/1024)
	if c.GetObject > 3*n || c.GetObjectBytes > n<<20 {
		t.Errorf("the dataset pass cost %d GETs and %d bytes for %d archives; want at most 3 GETs and 1 MiB each", c.GetObject, c.GetObjectBytes, n)
	}
}

// TestNPZMemberManyArchivesSmallMemory reads every window of 100 archives
// twice, in shuffled order, with eight loaders, through a mount whose
// memory is far smaller than indexes with whole windows would take (32 KiB
// of history per access point and a 64 KiB head: over 20 MiB for these archives,
// against --npz-index-size 1MiB and --cache-size 8MiB). Every window must
// be right; every index is built once, in the first pass, and none again
// in the second (counted by the daemon's metrics); and the second pass
// fetches at most twice each window's compressed size (counted at the
// proxy).
func TestNPZMemberManyArchivesSmallMemory(t *testing.T) {
	d := scaleBucket(t)
	srv := env.server(t)
	proxy := newProxy(t, srv.Endpoint)
	addr := freeAddr(t)
	m := mount(t, mountSpec{
		Source: "s3://" + d.Bucket + "/", Endpoint: proxy.URL, Creds: rootCreds(srv),
		Args: []string{"--npz-members", "--cache-size", "8MiB", "--npz-index-size", "1MiB", "--metrics-addr", addr},
	})
	train := filepath.Join(m.Mountpoint, "train")
	var samples [][2]string
	for _, n := range d.Names {
		for i := range scaleWindows {
			samples = append(samples, [2]string{n, fmt.Sprint(i)})
		}
	}
	builds := func() float64 { return scrapeMetrics(t, addr).Sum("bgbfs_npz_index_builds_total") }
	for epoch := 1; epoch <= 2; epoch++ {
		rng := rand.New(rand.NewPCG(uint64(epoch), 77))
		rng.Shuffle(len(samples), func(i, j int) { samples[i], samples[j] = samples[j], samples[i] })
		dropPageCache(t)
		before := builds()
		proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
		proxy.Reset()
		runScaleLoaders(t, d, train, "windows", samples)
		proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
		c := proxy.Reset()
		built := builds() - before
		perWindow := float64(c.GetObjectBytes) / float64(len(samples))
		compressedWindow := float64(d.windowsCompressed) / float64(len(samples))
		t.Logf("epoch %d: %d windows, %d index builds, %v: %.2f MB per window, %.2fx its compressed size",
			epoch, len(samples), int(built), c, perWindow/1e6, perWindow/compressedWindow)
		switch {
		case epoch == 1 && built != float64(len(d.Names)):
			t.Errorf("epoch 1 built %d indexes for %d archives: want each once", int(built), len(d.Names))
		case epoch == 2 && built != 0:
			t.Errorf("epoch 2 built %d indexes again: they did not all stay in --npz-index-size", int(built))
		case epoch == 2 && perWindow > 2*compressedWindow:
			t.Errorf("epoch 2 fetched %.2f MB per window, more than twice its compressed size %.2f MB", perWindow/1e6, compressedWindow/1e6)
		}
	}
	t.Logf("index memory held: %.0f bytes for %d archives", scrapeMetrics(t, addr).Sum("bgbfs_npz_index_bytes"), len(d.Names))
}
