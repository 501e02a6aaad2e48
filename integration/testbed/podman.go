package testbed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bgbfs/bgbfs/cmd/bgbfs/mountinfo"
)

// The container tests run podman on a store of their own, kept in the
// repository's git-ignored tool folder (.tools/containers): its images
// are the cache that makes a second run fast, its names (bgbfs:latest,
// the emptyDir volume of a pod) cannot clash with anything else on the
// machine, and its volume folder can be made a shared mount, which
// Kubernetes' Bidirectional propagation needs of an emptyDir (kubelet's
// folder is shared on a systemd machine; this one's / is private).
//
// What this machine needs, and users do not: runc (crun refuses its
// cgroup layout), and ulimits at or under the current ones (podman's
// default nofile is above them and there is no CAP_SYS_RESOURCE). Both
// go in the store's containers.conf, so that `podman kube play` and the
// restarts podman makes by itself get them too.

// Image names in the test bed's store.
const (
	// BgbfsImage is the Dockerfile's final stage, built on BaseImage.
	BgbfsImage = "localhost/bgbfs:latest"
	// BaseImage stands in for debian:bookworm-slim: a minbase rootfs
	// made by mmdebstrap from Debian's repositories.
	BaseImage = "localhost/bgbfs-testbed-debian:" + baseKey
	// goImagePrefix names the Go toolchain image, a copy of the host's
	// GOROOT on BaseImage, standing in for golang:1.26-bookworm.
	goImagePrefix = "localhost/bgbfs-testbed-go:"
)

// baseKey names the base rootfs; change it with baseCommand.
const baseKey = "bookworm-minbase-1"

// baseCommand makes the base rootfs tarball (its path appended).
var baseCommand = []string{"mmdebstrap", "--variant=minbase", "--format=tar", "--quiet", "bookworm"}

// podmanTimeout bounds one podman command that is not a build.
const podmanTimeout = 2 * time.Minute

// buildTimeout bounds one step of building the images.
const buildTimeout = 15 * time.Minute

// Podman runs podman on the test bed's store.
type Podman struct {
	dir     string   // .tools/containers
	Volumes string   // volume_path, a shared mount between OpenPodman and Close
	env     []string // os.Environ with CONTAINERS_CONF and CONTAINERS_STORAGE_CONF
}

// OpenPodman prepares the store under dir: its configuration, the shared
// volume folder, and no container, pod, volume or mount left from an
// earlier run. It fails with what to install when podman cannot run.
func OpenPodman(dir string) (*Podman, error) {
	for _, tool := range []string{"podman", "runc", "conmon", "fusermount3"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("the container tests need %s (Debian: apt-get install podman runc mmdebstrap uidmap fuse-overlayfs catatonit fuse3): %w", tool, err)
		}
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("the container tests need /dev/fuse: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	p := &Podman{dir: abs, Volumes: filepath.Join(abs, "volumes")}
	sum := sha256.Sum256([]byte(abs))
	// Per-boot state, as podman keeps it under /run; one folder per store.
	run := filepath.Join("/run", "bgbfs-testbed-"+hex.EncodeToString(sum[:6]))
	for _, d := range []string{p.Volumes, filepath.Join(abs, "storage"), filepath.Join(abs, "go-build"), run} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	nofile, nproc, err := ulimits()
	if err != nil {
		return nil, err
	}
	// The default static_dir (storage/libpod) is kept: the cleanup
	// command conmon runs when a container exits is given the store's
	// paths on its command line, and derives static_dir from them.
	containersConf := fmt.Sprintf(`[containers]
default_ulimits = ["nofile=%d:%d", "nproc=%d:%d"]

[engine]
runtime = "runc"
lock_type = "file"
volume_path = %q
tmp_dir = %q
`, nofile, nofile, nproc, nproc, p.Volumes, filepath.Join(run, "libpod"))
	storageConf := fmt.Sprintf(`[storage]
driver = "overlay"
graphroot = %q
runroot = %q
`, filepath.Join(abs, "storage"), filepath.Join(run, "storage"))
	confPath, storagePath := filepath.Join(abs, "containers.conf"), filepath.Join(abs, "storage.conf")
	if err := os.WriteFile(confPath, []byte(containersConf), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(storagePath, []byte(storageConf), 0o644); err != nil {
		return nil, err
	}
	p.env = append(withoutVars(os.Environ(), "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF"),
		"CONTAINERS_CONF="+confPath, "CONTAINERS_STORAGE_CONF="+storagePath)

	if err := p.removeAll(); err != nil {
		return nil, err
	}
	if err := shareFolder(p.Volumes); err != nil {
		return nil, err
	}
	out, err := p.Run(podmanTimeout, "info", "--format", "{{.Host.OCIRuntime.Name}}")
	if err == nil && strings.TrimSpace(out) != "runc" {
		err = fmt.Errorf("podman runs %q, want runc", strings.TrimSpace(out))
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("podman cannot run here: %w", err), p.Close())
	}
	return p, nil
}

// Close removes every container, pod and volume of the store, detaches
// any mount left in the volume folder, and unmounts the folder's shared
// bind. Images stay: they are the cache.
func (p *Podman) Close() error {
	err := p.removeAll()
	if _, ok := MountedAt(p.Volumes); ok {
		if uerr := syscall.Unmount(p.Volumes, syscall.MNT_DETACH); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmount %s: %w", p.Volumes, uerr))
		}
	}
	return err
}

// removeAll removes the store's containers, pods and volumes, and the
// mounts left under the volume folder (a sidecar killed with SIGKILL
// leaves a dead one there).
func (p *Podman) removeAll() error {
	var errs []error
	for _, args := range [][]string{
		{"pod", "rm", "--all", "--force", "--time", "0"},
		{"rm", "--all", "--force", "--time", "0"},
	} {
		if _, err := p.Run(podmanTimeout, args...); err != nil {
			errs = append(errs, err)
		}
	}
	if err := UnmountUnder(p.Volumes); err != nil {
		errs = append(errs, err)
	}
	if _, err := p.Run(podmanTimeout, "volume", "prune", "--force"); err != nil {
		errs = append(errs, err)
	}
	// Each change of the sources leaves the layers of the images it
	// replaced; those older than a day go, so the store does not grow
	// without bound and the day's reruns keep their cache.
	if _, err := p.Run(podmanTimeout, "image", "prune", "--force", "--filter", "until=24h"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// UnmountUnder detaches every mount strictly under dir, deepest first.
func UnmountUnder(dir string) error {
	all, err := mountinfo.Read()
	if err != nil {
		return err
	}
	prefix := mountinfo.Clean(dir) + "/"
	var mps []string
	for _, m := range all {
		if strings.HasPrefix(m.Mountpoint, prefix) {
			mps = append(mps, m.Mountpoint)
		}
	}
	slices.SortFunc(mps, func(a, b string) int {
		if len(a) != len(b) {
			return len(b) - len(a)
		}
		return strings.Compare(a, b)
	})
	var errs []error
	for _, mp := range slices.Compact(mps) {
		if err := ForceUnmount(mp); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// shareFolder makes dir a mount point of its own with shared propagation,
// as kubelet's pod folders are.
func shareFolder(dir string) error {
	if _, ok := MountedAt(dir); !ok {
		if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s on itself: %w", dir, err)
		}
	}
	if err := syscall.Mount("", dir, "", syscall.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", dir, err)
	}
	return nil
}

// ulimits returns the limits on open files and processes that containers
// can be given: the soft limits, processes no more than pid_max, which is
// what podman lowers its own limit to. Podman's defaults exceed them, and
// raising is not permitted here.
func ulimits() (nofile, nproc uint64, err error) {
	const rlimitNproc = 6 // RLIMIT_NPROC, which package syscall does not name
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, 0, fmt.Errorf("getrlimit nofile: %w", err)
	}
	nofile = r.Cur
	if err := syscall.Getrlimit(rlimitNproc, &r); err != nil {
		return 0, 0, fmt.Errorf("getrlimit nproc: %w", err)
	}
	nproc = r.Cur
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		return 0, 0, err
	}
	pidMax, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("pid_max: %w", err)
	}
	return nofile, min(nproc, pidMax), nil
}

func withoutVars(env []string, names ...string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return slices.Contains(names, k)
	})
}

// Command is podman with args on the test bed's store.
func (p *Podman) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "podman", args...)
	cmd.Env = slices.Clone(p.env)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Run runs podman with args and returns its stdout; the error carries
// the command and its stderr.
func (p *Podman) Run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := p.Command(ctx, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("podman %s: %w\n%s", strings.Join(args, " "), err, lastLines(stderr.String(), 40))
	}
	return stdout.String(), nil
}

// Inspect returns one field of a container, by a Go template.
func (p *Podman) Inspect(container, format string) (string, error) {
	out, err := p.Run(podmanTimeout, "inspect", "--type", "container", "--format", format, container)
	return strings.TrimSpace(out), err
}

// Logs returns what a container wrote to stdout and stderr.
func (p *Podman) Logs(container string) string {
	cmd := p.Command(context.Background(), "logs", container)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(podman logs %s: %v)\n%s", container, err, out)
	}
	return string(out)
}

// BuildBgbfs builds the repository's Dockerfile into BgbfsImage with its
// base images swapped for local ones (its two build arguments): Debian
// from mmdebstrap for the final stage, that plus the host's Go for the
// build stage. Modules come from the host's module cache (as a file://
// GOPROXY), compiled packages from a build cache in the tool folder.
// Everything else is the Dockerfile's, so the image is the final stage a
// user's `docker build .` makes. logf reports each step and its time.
func (p *Podman) BuildBgbfs(repo string, logf func(format string, args ...any)) error {
	if err := p.EnsureBase(logf); err != nil {
		return err
	}
	goImage, err := p.ensureGo(logf)
	if err != nil {
		return err
	}
	if err := checkDefaultBases(filepath.Join(repo, "Dockerfile")); err != nil {
		return err
	}
	modCache, err := goEnv("GOMODCACHE")
	if err != nil {
		return err
	}
	// The same `go mod download` as the Dockerfile's, on the host, so
	// the module cache holds whatever the image's build asks for.
	start := time.Now()
	dl := exec.Command("go", "mod", "download")
	dl.Dir = repo
	if out, err := dl.CombinedOutput(); err != nil {
		return fmt.Errorf("go mod download: %w\n%s", err, out)
	}
	logf("go mod download on the host: %v", time.Since(start).Round(time.Millisecond))
	return p.build(logf, BgbfsImage, repo,
		"--file", filepath.Join(repo, "Dockerfile"),
		"--build-arg", "GO_IMAGE="+goImage,
		"--build-arg", "BASE_IMAGE="+BaseImage,
		"--build-arg", "GOPROXY=file:///goproxy",
		"--volume", filepath.Join(modCache, "cache", "download")+":/goproxy:ro",
		"--volume", filepath.Join(p.dir, "go-build")+":/root/.cache/go-build")
}

// checkDefaultBases checks that the Dockerfile's default bases are the
// public images the local ones stand in for: Debian bookworm slim, and Go
// of the host's minor version on bookworm.
func checkDefaultBases(dockerfile string) error {
	b, err := os.ReadFile(dockerfile)
	if err != nil {
		return err
	}
	version, err := goEnv("GOVERSION")
	if err != nil {
		return err
	}
	minor := strings.Join(strings.SplitN(strings.TrimPrefix(version, "go"), ".", 3)[:2], ".")
	for _, want := range []string{"ARG BASE_IMAGE=debian:bookworm-slim\n", "ARG GO_IMAGE=golang:" + minor + "-bookworm\n"} {
		if !strings.Contains(string(b), want) {
			return fmt.Errorf("%s has no %q: the test bed's local bases stand in for that", dockerfile, strings.TrimSpace(want))
		}
	}
	return nil
}

// BuildImage builds containerfile, with files beside it, into tag.
func (p *Podman) BuildImage(logf func(format string, args ...any), tag, containerfile string, files map[string]string) error {
	ctxDir, err := os.MkdirTemp("", "bgbfs-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(ctxDir)
	if err := os.WriteFile(filepath.Join(ctxDir, "Containerfile"), []byte(containerfile), 0o644); err != nil {
		return err
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(ctxDir, name), []byte(content), 0o755); err != nil {
			return err
		}
	}
	return p.build(logf, tag, ctxDir)
}

// build runs podman build; bases are never pulled (there is no registry
// here), and RUN steps reach Debian's repositories through the host's
// network.
func (p *Podman) build(logf func(format string, args ...any), tag, contextDir string, args ...string) error {
	start := time.Now()
	// --jobs 2: the stages run side by side (the final stage's apt-get
	// beside the build stage's compile).
	full := slices.Concat([]string{"build", "--quiet", "--jobs", "2", "--pull=never", "--network", "host", "--tag", tag}, args, []string{contextDir})
	if _, err := p.Run(buildTimeout, full...); err != nil {
		return err
	}
	logf("podman build %s: %v", tag, time.Since(start).Round(time.Millisecond))
	return nil
}

// EnsureBase imports the base rootfs as BaseImage, making the rootfs
// with mmdebstrap first if the tool folder does not hold it. Call it
// before building in parallel on BaseImage.
func (p *Podman) EnsureBase(logf func(format string, args ...any)) error {
	if p.imageExists(BaseImage) {
		return nil
	}
	tarball := filepath.Join(p.dir, "debian-"+baseKey+".tar")
	if _, err := os.Stat(tarball); err != nil {
		if _, err := exec.LookPath(baseCommand[0]); err != nil {
			return fmt.Errorf("the base image is made by mmdebstrap (apt-get install mmdebstrap): %w", err)
		}
		start := time.Now()
		tmp := tarball + ".partial"
		args := append(slices.Clone(baseCommand[1:]), tmp)
		cmd := exec.Command(baseCommand[0], args...)
		if out, err := cmd.CombinedOutput(); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, lastLines(string(out), 40))
		}
		if err := os.Rename(tmp, tarball); err != nil {
			return err
		}
		logf("%s: %v", strings.Join(baseCommand, " "), time.Since(start).Round(time.Millisecond))
	}
	start := time.Now()
	if _, err := p.Run(buildTimeout, "import", "--quiet", tarball, BaseImage); err != nil {
		return err
	}
	logf("podman import %s: %v", BaseImage, time.Since(start).Round(time.Millisecond))
	return nil
}

// ensureGo builds the Go toolchain image from the host's GOROOT, once per
// Go version, and returns its name.
func (p *Podman) ensureGo(logf func(format string, args ...any)) (string, error) {
	version, err := goEnv("GOVERSION")
	if err != nil {
		return "", err
	}
	image := goImagePrefix + version
	if p.imageExists(image) {
		return image, nil
	}
	goroot, err := goEnv("GOROOT")
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "bgbfs-goimage-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	containerfile := filepath.Join(dir, "Containerfile")
	err = os.WriteFile(containerfile, []byte("FROM "+BaseImage+"\n"+
		"COPY . /usr/local/go\n"+
		"ENV PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin GOTOOLCHAIN=local\n"), 0o644)
	if err != nil {
		return "", err
	}
	return image, p.build(logf, image, goroot, "--file", containerfile)
}

func (p *Podman) imageExists(name string) bool {
	_, err := p.Run(podmanTimeout, "image", "exists", name)
	return err == nil
}

func goEnv(name string) (string, error) {
	out, err := exec.Command("go", "env", name).Output()
	if err != nil {
		return "", fmt.Errorf("go env %s: %w", name, err)
	}
	v := strings.TrimSpace(string(out))
	if v == "" {
		return "", fmt.Errorf("go env %s is empty", name)
	}
	return v, nil
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
