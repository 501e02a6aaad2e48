// Command bench measures bgbfs side by side with raw S3 (the ceiling), the
// local disk, and — when installed — s3fs and rclone mount, on one MinIO
// with one numpy-written dataset, under two network profiles: plain
// loopback, and "S3-like" (a shaping proxy adding latency per request and
// capping each response's throughput). Requests and bytes are counted at a
// proxy in front of MinIO, never taken from the systems measured.
//
//	go run ./integration/bench --out BENCHMARKS.md
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

type config struct {
	files, windows, samples, randomReads int
	// Workload h: archives the size of the real ones.
	npzFiles, npzWindows, npzSamples, npzWholeSamples int
	// Workload i: the member view at the bucket's scale.
	eegFiles, eegWindows, eegSamples, eegWholeSamples int
	eegCache, eegIndexSize                            string
	// eegInMemory runs only workload i's unlimited-memory rows.
	eegInMemory bool
	// eegDecoded runs only workload i's two --cache-dir epochs.
	eegDecoded bool
	// Workload j: np.load of workload i's archives by 8 processes at once.
	ampRounds                    int
	baselineBin                  string
	profiles, systems, workloads []string
	out                          string
	keep                         bool
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == smallChildArg {
		os.Exit(runSmallChild())
	}
	var c config
	var profiles, systems, workloads string
	flag.IntVar(&c.files, "files", 8, "npz files in the dataset (the 8-file workload needs 8)")
	flag.IntVar(&c.windows, "windows", 28, "windows per file: 1.17 MB each before compression")
	flag.IntVar(&c.samples, "samples", 120, "samples the trainer workload reads")
	flag.IntVar(&c.randomReads, "random-reads", 200, "1 MiB random preads in workload d")
	flag.StringVar(&profiles, "profiles", "loopback,s3like", "network profiles")
	flag.StringVar(&systems, "systems", "raw,bgbfs,s3fs,rclone", "systems to measure (local is always the reference)")
	flag.IntVar(&c.npzFiles, "npz-files", 4, "archives of workload h")
	flag.IntVar(&c.npzWindows, "npz-windows", 73, "windows per archive of workload h (73: the real mean, 85 MB)")
	flag.IntVar(&c.npzSamples, "npz-samples", 200, "samples of workload h through the member view, warm")
	flag.IntVar(&c.npzWholeSamples, "npz-whole-samples", 40, "samples of workload h through the plain .npz")
	flag.IntVar(&c.eegFiles, "eeg-files", 100, "archives of workload i (EEG-like float32; made once under integration/.work/bench-eeg/)")
	flag.IntVar(&c.eegWindows, "eeg-windows", 24, "windows per archive of workload i")
	flag.IntVar(&c.eegSamples, "eeg-samples", 400, "shuffled samples of each steady row of workload i, and of its local .npy ceiling")
	flag.IntVar(&c.eegWholeSamples, "eeg-whole-samples", 40, "samples of workload i through the plain .npz")
	flag.StringVar(&c.eegCache, "eeg-cache-size", "64MiB", "bgbfs --cache-size of workload i's view and whole-member rows: far smaller than the data")
	flag.StringVar(&c.eegIndexSize, "eeg-index-size", "32MiB", "bgbfs --npz-index-size of workload i's view rows: too small for 32 KiB of raw history per window of every archive")
	flag.BoolVar(&c.eegInMemory, "eeg-in-memory", false, "workload i: only the unlimited-memory rows (every block in memory), with --baseline-bin that binary's first")
	flag.BoolVar(&c.eegDecoded, "eeg-decoded", false, "workload i: only the two epochs with a local --cache-dir (windows kept decoded, then read back by a new daemon)")
	flag.IntVar(&c.ampRounds, "amp-rounds", 1, "runs of workload j per binary and mount")
	flag.StringVar(&c.baselineBin, "baseline-bin", "", "another bgbfs binary (e.g. built from main) to run workload j with too, alternating with the one under test, workload n's bgbfs index, and workload i's restart rows (with --eeg-in-memory, its in-memory rows)")
	flag.StringVar(&workloads, "workloads", "a,b,c,d,e,f,g,h,i,j,k,l,n,inflate", "workloads to run (h or i alone, with --systems bgbfs: only the .npz member view rows; j: np.load of i's archives by 8 processes; k: the disk tier, epochs 1 and 2 of i's archives with --cache-dir, S3-like profile only; l: ls -l of 100,000 objects, bgbfs and the SDK; n: bgbfs index over 6,500 small archives, with --systems bgbfs; inflate: one numpy-written member inflated by bgbfs's inflater, libdeflate-gunzip and igzip, no mount; m, not run unless named: a --cache-dir of the bucket's file count by layout, its walk, start-up and metadata I/O at the bound, loopback only)")
	flag.StringVar(&c.out, "out", "", "write the results into this markdown file")
	flag.BoolVar(&c.keep, "keep", false, "keep the generated data")
	flag.Parse()
	c.profiles = strings.Split(profiles, ",")
	c.systems = strings.Split(systems, ",")
	c.workloads = strings.Split(workloads, ",")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c config) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root: the benchmark mounts filesystems and drops the page cache")
	}
	repo, err := testbed.RepoRoot()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp(filepath.Join(repo, "integration"), ".bench-")
	if err != nil {
		return err
	}
	if !c.keep {
		defer os.RemoveAll(work)
	}
	bin, err := testbed.BgbfsBinary(repo, work)
	if err != nil {
		return err
	}
	minioBin, err := testbed.MinIOBinary(repo)
	if err != nil {
		return err
	}
	srv, err := testbed.StartMinIO(minioBin, filepath.Join(work, "minio"))
	if err != nil {
		return err
	}
	defer srv.Stop()

	fmt.Fprintln(os.Stderr, "bench: generating and uploading the dataset")
	ds, err := makeDataset(ctx, repo, work, srv, c)
	if err != nil {
		return err
	}
	b := &bench{cfg: c, repoRoot: repo, bin: bin, work: work, srv: srv, ds: ds}
	defer b.cleanup()
	started := time.Now()
	if err := b.runAll(ctx); err != nil {
		return err
	}
	report := b.report(started)
	fmt.Print(report)
	if c.out != "" {
		// The analysis of the misses is written by people: keep it.
		if old, err := os.ReadFile(c.out); err == nil {
			if i := strings.Index(string(old), analysisHeading); i >= 0 {
				report += "\n" + string(old[i:])
			}
		}
		return os.WriteFile(c.out, []byte(report), 0o644)
	}
	return nil
}

// analysisHeading starts the hand-written part of BENCHMARKS.md, which a
// new run keeps.
const analysisHeading = "## Why targets are missed"
