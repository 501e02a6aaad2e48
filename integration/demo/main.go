// Command demo shows bgbfs end to end on one machine in under a minute: it
// serves a small numpy dataset from an in-process S3 endpoint, mounts it with
// the bgbfs binary, lists it and loads a file with numpy through the mount,
// then stays mounted until Ctrl-C so you can poke at it yourself.
//
//	go run ./integration/demo --bgbfs bin/bgbfs [--mountpoint DIR] [--no-wait]
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

const (
	python = "/usr/bin/python3" // the system numpy; a virtualenv may lack it
	// The dataset is tiny on purpose (about 2 MB a file): the demo shows the
	// layout and the read path, benchmarks live elsewhere.
	nTrain, nDev, nWindows, seed = 4, 2, 2, 1
	mountTimeout                 = 20 * time.Second
)

type options struct {
	bgbfs      string
	mountpoint string
	noWait     bool
}

func main() {
	var o options
	pflag.StringVar(&o.bgbfs, "bgbfs", "", "path to the bgbfs binary (required)")
	pflag.StringVar(&o.mountpoint, "mountpoint", "", "directory to mount on (default: a new temporary directory)")
	pflag.BoolVar(&o.noWait, "no-wait", false, "unmount and exit once the demo has run instead of waiting for Ctrl-C")
	pflag.Parse()
	if o.bgbfs == "" || pflag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: go run ./integration/demo --bgbfs PATH [--mountpoint DIR] [--no-wait]")
		pflag.PrintDefaults()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	// Before stop: stop cancels ctx too.
	interrupted := ctx.Err() != nil
	stop()
	if err != nil {
		if interrupted {
			err = fmt.Errorf("interrupted: %w", err)
		}
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

// run is the demo: serve a dataset, mount it, show it, and stay mounted
// until Ctrl-C (or not, with --no-wait); it undoes all of it on the way
// out.
func run(ctx context.Context, o options) (err error) {
	start := time.Now()
	bin, root, err := checkSetup(ctx, o.bgbfs)
	if err != nil {
		return err
	}
	dataDir, err := os.MkdirTemp("", "bgbfs-demo-data-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dataDir)) }()

	step("Starting an in-process S3 endpoint (gofakes3)")
	ep, err := startEndpoint()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, ep.Close()) }()
	fmt.Printf("%s, bucket %s\n", ep.URL, bucket)
	if err := serveDataset(ctx, ep, root, dataDir); err != nil {
		return err
	}

	mnt, removeMnt, err := prepareMountpoint(o.mountpoint)
	if err != nil {
		return err
	}
	// Registered before the unmount below, so it runs after it.
	defer func() { err = errors.Join(err, removeMnt()) }()
	step("Mounting with bgbfs")
	fmt.Printf("$ %s mount --endpoint-url %s --force-path-style --npz-members s3://%s/%s %s\n",
		bin, ep.URL, bucket, prefix, shellQuote(mnt))
	mountStart := time.Now()
	p, err := startBgbfs(bin, ep.URL, mnt)
	if err != nil {
		return err
	}
	defer func() {
		step("Stopping bgbfs (SIGTERM) and unmounting")
		err = errors.Join(err, p.stop())
	}()
	if err := p.waitMounted(ctx, mountTimeout); err != nil {
		return err
	}
	fmt.Printf("mounted (fuse.bgbfs) in %s\n", time.Since(mountStart).Round(time.Millisecond))

	if err := show(ctx, mnt, dataDir); err != nil {
		return err
	}
	fmt.Printf("\ndemo ready %s after start\n", time.Since(start).Round(100*time.Millisecond))
	if o.noWait {
		return nil
	}
	return stayMounted(ctx, p)
}

// checkSetup checks what the demo needs before it starts anything: the
// bgbfs binary (returned as an absolute path), numpy and fusermount3, and
// the repository (its root returned).
func checkSetup(ctx context.Context, bgbfs string) (bin, root string, err error) {
	bin, err = filepath.Abs(bgbfs)
	if err != nil {
		return "", "", fmt.Errorf("bgbfs path: %w", err)
	}
	if _, err := os.Stat(bin); err != nil {
		return "", "", fmt.Errorf("bgbfs binary: %w (build it with `make build`)", err)
	}
	if err := checkPrereqs(ctx); err != nil {
		return "", "", err
	}
	root, err = testbed.RepoRoot()
	if err != nil {
		return "", "", fmt.Errorf("%w: run the demo inside the bgbfs repository", err)
	}
	return bin, root, nil
}

// serveDataset has numpy write the dataset into dataDir and uploads it,
// with its .cache_metadata.json, to ep.
func serveDataset(ctx context.Context, ep *endpoint, root, dataDir string) error {
	step("Generating a small dataset with numpy")
	if err := generate(ctx, root, dataDir); err != nil {
		return err
	}
	n, size, err := ep.uploadTree(dataDir)
	if err != nil {
		return err
	}
	err = ep.putCacheMetadata(map[string]any{
		"generator": "integration/testdata/gen_npz.py",
		"seed":      seed,
		"files":     map[string]int{"train": nTrain, "dev": nDev},
		"windows":   nWindows,
	})
	if err != nil {
		return err
	}
	fmt.Printf("uploaded %d objects (%.1f MB) + .cache_metadata.json to s3://%s/%s\n",
		n, float64(size)/1e6, bucket, prefix)
	return nil
}

// stayMounted waits for Ctrl-C, or for bgbfs to exit on its own (an
// error).
func stayMounted(ctx context.Context, p *bgbfsProc) error {
	fmt.Println("Mounted until you press Ctrl-C.")
	select {
	case <-ctx.Done():
		fmt.Println()
		return nil
	case <-p.proc.Done():
		return fmt.Errorf("bgbfs exited while mounted: %w", exitErr(p.proc.Err()))
	}
}

// checkPrereqs fails early, in one line, on what a fresh machine lacks.
func checkPrereqs(ctx context.Context) error {
	const hint = "install them with: sudo apt-get install -y python3-numpy fuse3"
	if err := exec.CommandContext(ctx, python, "-c", "import numpy").Run(); err != nil {
		return fmt.Errorf("%s cannot import numpy (%w); %s", python, err, hint)
	}
	// bgbfs needs fusermount3 when not root, and the demo's fallback unmount
	// always does.
	if _, err := exec.LookPath("fusermount3"); err != nil {
		return fmt.Errorf("fusermount3 not found; %s", hint)
	}
	return nil
}

// generate has numpy itself write the .npz files, so the bytes bgbfs serves
// are exactly what np.savez_compressed produces in production (Zip64,
// deflated members), not a Go imitation of them.
func generate(ctx context.Context, root, out string) error {
	script := filepath.Join(root, "integration", "testdata", "gen_npz.py")
	if _, err := os.Stat(script); err != nil {
		return fmt.Errorf("dataset generator: %w", err)
	}
	cmd := exec.CommandContext(ctx, python, script, "--out", out,
		"--train", fmt.Sprint(nTrain), "--dev", fmt.Sprint(nDev),
		"--windows", fmt.Sprint(nWindows), "--seed", fmt.Sprint(seed))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("generate dataset with %s: %w", script, err)
	}
	return nil
}

// prepareMountpoint returns the mountpoint with symlinks resolved (the form
// /proc/self/mountinfo uses) and a function that removes it again if the
// demo created it. Removal is a plain rmdir, never recursive: should an
// unmount have failed, nothing inside a live mount is touched.
func prepareMountpoint(flagDir string) (string, func() error, error) {
	noop := func() error { return nil }
	var dir string
	created := false
	if flagDir == "" {
		d, err := os.MkdirTemp("", "bgbfs-demo-mnt-")
		if err != nil {
			return "", noop, fmt.Errorf("temp mountpoint: %w", err)
		}
		dir, created = d, true
	} else {
		d, err := filepath.Abs(flagDir)
		if err != nil {
			return "", noop, fmt.Errorf("mountpoint: %w", err)
		}
		if err := os.Mkdir(d, 0o755); err == nil {
			created = true
		} else if !errors.Is(err, os.ErrExist) {
			return "", noop, fmt.Errorf("mountpoint: %w", err)
		}
		dir = d
	}
	remove := noop
	if created {
		remove = func() error {
			if err := os.Remove(dir); err != nil {
				return fmt.Errorf("remove mountpoint: %w", err)
			}
			return nil
		}
	}
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", noop, errors.Join(fmt.Errorf("mountpoint: %w", err), remove())
	}
	if fi, err := os.Stat(resolved); err != nil || !fi.IsDir() {
		return "", noop, errors.Join(fmt.Errorf("mountpoint %s is not a directory", resolved), remove())
	}
	if fstype, err := mountFSType(resolved); err != nil || fstype != "" {
		return "", noop, errors.Join(err, fmt.Errorf("%s is already a mountpoint (%s)", resolved, fstype), remove())
	}
	return resolved, remove, nil
}

// loadScript opens one .npz through the mount the way the trainer does
// (np.load, read whole members), prints what is inside and checks the bytes
// against the file numpy wrote locally.
const loadScript = `
import sys, time, zlib
import numpy as np

def load(path):
    t = time.perf_counter()
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    return arrays, time.perf_counter() - t

got, secs = load(sys.argv[1])
for k, a in got.items():
    print(f"  {k:8} shape={a.shape} dtype={a.dtype} crc32={zlib.crc32(a.tobytes()):08x}")
print(f"  np.load + inflate all members: {secs * 1000:.1f} ms")
want, _ = load(sys.argv[2])
same = got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
print("  identical to the file numpy wrote:", "yes" if same else "NO")
sys.exit(0 if same else 1)
`

// windowScript reads one window the way a loader using the member view
// does (--npz-members: NAME.npz.d/windows.npy, memory-mapped) and checks it
// against the file numpy wrote locally.
const windowScript = `
import sys, time
import numpy as np

path, local = sys.argv[1], sys.argv[2]
with np.load(local) as f:
    want = f["windows"]
i = want.shape[0] - 1
t = time.perf_counter()
got = np.array(np.load(path + ".d/windows.npy", mmap_mode="r")[i])
secs = time.perf_counter() - t
print(f"  window {i} of {want.shape[0]}: shape={got.shape} dtype={got.dtype} in {secs * 1000:.1f} ms"
      " (the first access indexes the member: later windows cost less)")
same = np.array_equal(got, want[i])
print("  identical to the window numpy wrote:", "yes" if same else "NO")
sys.exit(0 if same else 1)
`

// oneLiner is the same check, short enough to paste into a terminal.
const oneLiner = `import sys,zlib,numpy as np; f=np.load(sys.argv[1]); ` +
	`[print(k, a.shape, a.dtype, "crc32=%08x" % zlib.crc32(a.tobytes())) for k in f.files for a in [f[k]]]`

func show(ctx context.Context, mnt, dataDir string) error {
	step("Listing the mount")
	if err := shown(ctx, "", "ls", "-la", mnt); err != nil {
		return err
	}
	for _, split := range []string{"train", "dev"} {
		if err := shown(ctx, "", "ls", "-l", filepath.Join(mnt, split)); err != nil {
			return err
		}
	}

	entries, err := os.ReadDir(filepath.Join(mnt, "train"))
	if err != nil {
		return fmt.Errorf("read train through the mount: %w", err)
	}
	var npz []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".npz") {
			npz = append(npz, e.Name())
		}
	}
	if len(npz) == 0 {
		return errors.New("no .npz files in train through the mount")
	}
	sort.Strings(npz)
	file := filepath.Join(mnt, "train", npz[0])

	step("Loading " + npz[0] + " with numpy through the mount")
	t := time.Now()
	local := filepath.Join(dataDir, "train", npz[0])
	display := fmt.Sprintf("%s -c <load script> %s %s", python, shellQuote(file), shellQuote(local))
	if err := shown(ctx, display, python, "-c", loadScript, file, local); err != nil {
		return err
	}
	fmt.Printf("  python3 wall time, interpreter start and the local comparison included: %s\n",
		time.Since(t).Round(time.Millisecond))

	step("Reading one window of " + npz[0] + " through its member view (" + npz[0] + ".d/)")
	if err := shown(ctx, "", "ls", "-l", file+".d"); err != nil {
		return err
	}
	display = fmt.Sprintf("%s -c <window script> %s %s", python, shellQuote(file), shellQuote(local))
	if err := shown(ctx, display, python, "-c", windowScript, file, local); err != nil {
		return err
	}

	step("Try it yourself in another terminal while mounted")
	fmt.Printf("  ls -l %s\n", shellQuote(filepath.Join(mnt, "train")))
	fmt.Printf("  head -c 200 %s; echo\n", shellQuote(filepath.Join(mnt, "train", "manifest.json")))
	fmt.Printf("  %s -c '%s' %s\n", python, oneLiner, shellQuote(file))
	fmt.Printf("  %s -c 'import numpy as np; print(np.load(\"%s.d/windows.npy\", mmap_mode=\"r\")[0][:2, :5])'\n", python, file)
	return nil
}

// shown prints a command the way a shell prompt would (display, if set,
// stands in for a long one), then runs it with output to the terminal,
// bounded so a hung mount cannot hang the demo.
func shown(ctx context.Context, display, name string, args ...string) error {
	if display == "" {
		display = name
		for _, a := range args {
			display += " " + shellQuote(a)
		}
	}
	fmt.Printf("$ %s\n", display)
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func step(title string) { fmt.Printf("\n==> %s\n", title) }

// shellQuote single-quotes s when a shell would otherwise split or expand it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+=:,@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
