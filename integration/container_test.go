package integration

// bgbfs in containers, run by podman on the test bed's own store (see
// testbed/podman.go): the image is the Dockerfile's final stage, built on
// local bases; the sidecar is the README's Kubernetes manifest under
// `podman kube play`.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/bgbfs/bgbfs/cmd/bgbfs/mountinfo"
	"github.com/bgbfs/bgbfs/integration/testbed"
)

// trainerImage is a training image made as the README says: fuse3, numpy
// and bgbfs copied from the bgbfs image, with readCache as its program.
// Its packages are a base of their own, built beside the bgbfs image.
const (
	trainerImage     = "localhost/trainer:latest"
	trainerBaseImage = "localhost/bgbfs-testbed-trainer-base:latest"
)

// sidecarMountpoint is where the README's sidecar mounts, inside the
// shared volume at /cache.
const sidecarMountpoint = "/cache/tusz"

// containerLimit bounds one container run and one wait for a pod.
const containerLimit = 2 * time.Minute

var trainerBaseContainerfile = "FROM " + testbed.BaseImage + `
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 python3-numpy \
 && rm -rf /var/lib/apt/lists/*
`

var trainerContainerfile = "FROM " + trainerBaseImage + `
COPY --from=` + testbed.BgbfsImage + ` /usr/local/bin/bgbfs /usr/local/bin/bgbfs
COPY read-cache /usr/local/bin/read-cache
ENTRYPOINT ["python3", "/usr/local/bin/read-cache"]
CMD ["` + sidecarMountpoint + `", "--stay"]
`

// readCache is the trainer's program: `read-cache ROOT THEN` waits up to
// 2 minutes for ROOT/train to list, prints the SHA-256 of every file under ROOT,
// then npzDigest's lines (np.load of every array), then READ-DONE; then
// it exits with status THEN, or stays up if THEN is --stay.
var readCache = `#!/usr/bin/python3
import hashlib, os, signal, sys, time
# As a container's first process it gets no default action for SIGTERM.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
root, then = sys.argv[1], sys.argv[2]
def mounted():
    # A listing reaches the filesystem; a stat may be answered from the
    # kernel's cache of a mount that is gone.
    try:
        return len(os.listdir(os.path.join(root, "train"))) > 0
    except OSError:
        return False
deadline = time.time() + 120
while not mounted():
    if time.time() > deadline:
        print("NOT-MOUNTED", root, flush=True)
        sys.exit(98)
    time.sleep(0.1)
def fail(e):
    raise e
rels = []
for d, _, names in os.walk(root, onerror=fail):
    rels += [os.path.relpath(os.path.join(d, n), root) for n in names]
for rel in sorted(rels):
    with open(os.path.join(root, rel), "rb") as f:
        print("SHA", rel, hashlib.sha256(f.read()).hexdigest())
` + npzDigest + `
print("READ-DONE", flush=True)
if then == "--stay":
    while True:
        time.sleep(3600)
sys.exit(int(then))
`

// containerImages returns the test bed's podman with the bgbfs and
// trainer images built, building them on first use.
func containerImages(t *testing.T) *testbed.Podman {
	t.Helper()
	return env.containers.get(t, "the container images", func() (*testbed.Podman, error) {
		p, err := testbed.OpenPodman(filepath.Join(env.repo, ".tools", "containers"))
		if err != nil {
			return nil, err
		}
		if err := p.EnsureBase(t.Logf); err != nil {
			return p, err
		}
		var g errgroup.Group
		g.Go(func() error { return p.BuildBgbfs(env.repo, t.Logf) })
		g.Go(func() error { return p.BuildImage(t.Logf, trainerBaseImage, trainerBaseContainerfile, nil) })
		if err := g.Wait(); err != nil {
			return p, err
		}
		return p, p.BuildImage(t.Logf, trainerImage, trainerContainerfile, map[string]string{"read-cache": readCache})
	})
}

// podmanRun runs `podman run --rm` with the S3 credentials in podman's
// environment (passed on by name) and returns its stdout, stderr and exit
// status.
func podmanRun(t *testing.T, p *testbed.Podman, creds *testbed.Creds, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), containerLimit)
	defer cancel()
	full := slices.Concat([]string{"run", "--rm", "--network", "host",
		"-e", "AWS_ACCESS_KEY_ID", "-e", "AWS_SECRET_ACCESS_KEY"}, args)
	cmd := withCreds(p.Command(ctx, full...), creds)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("podman %s: %v", strings.Join(full, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("podman %s still running after %v", strings.Join(full, " "), containerLimit)
	}
	return out.String(), errb.String(), code
}

// withCreds puts S3 credentials in a podman command's environment, for
// its `-e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY` to pass on.
func withCreds(cmd *exec.Cmd, creds *testbed.Creds) *exec.Cmd {
	cmd.Env = append(cmd.Env, "AWS_ACCESS_KEY_ID="+creds.AccessKey, "AWS_SECRET_ACCESS_KEY="+creds.SecretKey)
	return cmd
}

// shaLines is what `find . -type f | sort | xargs sha256sum` prints in
// the mounted operations bucket.
func shaLines(d *opsData) string {
	var b strings.Builder
	for _, rel := range opsFiles(d) {
		fmt.Fprintf(&b, "%x  ./%s\n", sha256.Sum256(d.Objects[opsPrefix+rel]), rel)
	}
	return b.String()
}

// opsFiles returns the paths of the operations bucket's files under its
// prefix, sorted.
func opsFiles(d *opsData) []string {
	var rels []string
	for k := range d.Objects {
		rels = append(rels, strings.TrimPrefix(k, opsPrefix))
	}
	sort.Strings(rels)
	return rels
}

// readCacheOutput is what readCache prints over the operations bucket.
func readCacheOutput(t testing.TB, d *opsData) string {
	t.Helper()
	var b strings.Builder
	for _, rel := range opsFiles(d) {
		fmt.Fprintf(&b, "SHA %s %x\n", rel, sha256.Sum256(d.Objects[opsPrefix+rel]))
	}
	b.WriteString(localDigest(t, d))
	b.WriteString("READ-DONE\n")
	return b.String()
}

// TestContainerExec runs `bgbfs exec` inside a container, in the bgbfs
// image and in the trainer image, on the image's /cache and on a volume:
// the command reads every file right (and loads every array with numpy in
// the trainer), its exit status is the container's, and bgbfs unmounts
// before the container ends, leaving nothing mounted on the host.
func TestContainerExec(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	p := containerImages(t)
	endpoint := endpointArgs(srv.Endpoint)
	for _, c := range []struct {
		name   string
		run    []string // podman run's own flags and the image
		tail   []string // after `exec <endpoint> SOURCE /cache --`
		want   string
		status int
	}{
		{
			name: "bgbfs_image",
			run:  []string{testbed.BgbfsImage},
			tail: []string{"sh", "-c", `cd "$0" && find . -type f | LC_ALL=C sort | xargs sha256sum; exit 7`, "/cache"},
			want: shaLines(d), status: 7,
		},
		{
			name: "trainer_image_on_a_volume",
			run:  []string{"--volume", "cachevol:/cache", "--entrypoint", "/usr/local/bin/bgbfs", trainerImage},
			tail: []string{"python3", "/usr/local/bin/read-cache", "/cache", "3"},
			want: readCacheOutput(t, d), status: 3,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := slices.Concat([]string{"--device", "/dev/fuse", "--cap-add", "SYS_ADMIN"}, c.run,
				[]string{"exec"}, endpoint, []string{d.Source(), "/cache", "--"}, c.tail)
			start := time.Now()
			stdout, stderr, code := podmanRun(t, p, rootCreds(srv), args...)
			t.Logf("podman run ... %s: exit %d after %v", strings.Join(c.tail, " "), code, time.Since(start).Round(time.Millisecond))
			if code != c.status {
				t.Errorf("exit status %d, want the command's %d; stderr:\n%s", code, c.status, lastBytes(stderr, 4000))
			}
			if stdout != c.want {
				t.Errorf("the command's output in the container:\n%s\nwant:\n%s\nstderr:\n%s", stdout, c.want, lastBytes(stderr, 4000))
			}
			for _, line := range []string{"msg=mounted", "msg=\"command ended: unmounting\"", "msg=unmounted"} {
				if !strings.Contains(stderr, line) {
					t.Errorf("bgbfs's log in the container has no %s:\n%s", line, lastBytes(stderr, 4000))
				}
			}
			requireNothingUnder(t, p.Volumes)
		})
	}
}

// requireNothingUnder fails if anything is mounted under dir (the test
// bed's volume folder), and detaches it.
func requireNothingUnder(t testing.TB, dir string) {
	t.Helper()
	if ms := mountsUnder(t, dir); len(ms) > 0 {
		t.Errorf("mounted under %s: %v", dir, ms)
		if err := testbed.UnmountUnder(dir); err != nil {
			t.Error(err)
		}
	}
}

// mountsUnder lists the mounts strictly under dir as "mountpoint fstype".
func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	all, err := mountinfo.Read()
	if err != nil {
		t.Fatal(err)
	}
	prefix := mountinfo.Clean(dir) + "/"
	var out []string
	for _, m := range all {
		if strings.HasPrefix(m.Mountpoint, prefix) {
			out = append(out, m.Mountpoint+" "+m.FSType)
		}
	}
	return out
}

// readmeManifest returns the README's Kubernetes manifest, made to run
// here: the pod on the host's network (MinIO is on loopback), the test's
// endpoint and bucket in place of the real one, credentials in the
// sidecar's environment. Everything else is the README's.
func readmeManifest(t *testing.T, srv *testbed.MinIO, d *opsData) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "**Kubernetes sidecar.**")
	_, rest, ok2 := strings.Cut(rest, "```yaml\n")
	manifest, _, ok3 := strings.Cut(rest, "```\n")
	if !ok || !ok2 || !ok3 {
		t.Fatal("README.md has no ```yaml block after **Kubernetes sidecar.**")
	}
	creds := rootCreds(srv)
	for _, r := range []struct{ old, new string }{
		{"\nspec:\n", "\nspec:\n  hostNetwork: true\n"},
		{"s3://brain-go-brr-eeg-data-20250919/cache/tusz/", strings.Join(endpointArgs(srv.Endpoint), " ") + " " + d.Source()},
		{"      image: bgbfs:latest\n", "      image: bgbfs:latest\n" + fmt.Sprintf(
			"      env: [{name: AWS_ACCESS_KEY_ID, value: %q}, {name: AWS_SECRET_ACCESS_KEY, value: %q}]\n", creds.AccessKey, creds.SecretKey)},
	} {
		if n := strings.Count(manifest, r.old); n != 1 {
			t.Fatalf("README's manifest has %q %d times, want once:\n%s", r.old, n, manifest)
		}
		manifest = strings.Replace(manifest, r.old, r.new, 1)
	}
	for _, want := range []string{"name: train\n", "emptyDir: {}", "privileged: true", "mountPropagation: Bidirectional",
		"mountPropagation: HostToContainer", "runAsUser: 1000", "image: trainer:latest", "--allow-other", " " + sidecarMountpoint + "\n"} {
		if !strings.Contains(manifest, want) {
			t.Fatalf("README's manifest has no %q; the test expects it:\n%s", want, manifest)
		}
	}
	return manifest
}

// The containers `podman kube play` makes of the manifest, and its
// emptyDir volume.
const (
	sidecarContainer = "train-bgbfs"
	trainerContainer = "train-trainer"
	cacheVolume      = "cache"
)

// playSidecar starts the README's pod and waits until the trainer has
// read every file, checking what it read. It returns the host's folder of
// the shared volume. The pod is removed at the end of the test.
func playSidecar(t *testing.T, p *testbed.Podman, d *opsData) string {
	t.Helper()
	srv := env.server(t)
	file := filepath.Join(t.TempDir(), "pod.yaml")
	if err := os.WriteFile(file, []byte(readmeManifest(t, srv, d)), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sidecar log:\n%s\ntrainer log:\n%s", lastBytes(p.Logs(sidecarContainer), 4000), lastBytes(p.Logs(trainerContainer), 4000))
		}
		if _, err := p.Run(containerLimit, "pod", "rm", "--force", "--time", "20", "train"); err != nil {
			t.Error(err)
		}
		requireNothingUnder(t, p.Volumes)
	})
	start := time.Now()
	if _, err := p.Run(containerLimit, "kube", "play", file); err != nil {
		t.Fatal(err)
	}
	want := readCacheOutput(t, d)
	var logs string
	if !pollUntil(containerLimit, func() bool {
		logs = p.Logs(trainerContainer)
		return strings.Contains(logs, "READ-DONE") || strings.Contains(logs, "NOT-MOUNTED")
	}) {
		t.Fatalf("the trainer did not finish reading within %v; its log:\n%s", containerLimit, logs)
	}
	t.Logf("podman kube play to the trainer's last read: %v", time.Since(start).Round(time.Millisecond))
	if logs != want {
		t.Fatalf("the trainer's reads through the sidecar's mount:\n%s\nwant:\n%s", logs, want)
	}
	if uid, err := p.Run(containerLimit, "exec", trainerContainer, "id", "-u"); err != nil || strings.TrimSpace(uid) != "1000" {
		t.Errorf("the trainer runs as uid %q (%v), want 1000", uid, err)
	}
	vol, err := p.Run(containerLimit, "volume", "inspect", "--format", "{{.Mountpoint}}", cacheVolume)
	if err != nil {
		t.Fatal(err)
	}
	vol = strings.TrimSpace(vol)
	if ms := mountsUnder(t, vol); len(ms) != 1 || ms[0] != filepath.Join(vol, "tusz")+" "+testbed.FSType {
		t.Errorf("mounts under the volume's folder on the host: %v, want bgbfs's on tusz alone", ms)
	}
	return vol
}

// containerMounts returns the lines of a container's mount table at or
// under /cache.
func containerMounts(t *testing.T, p *testbed.Podman, container string) []string {
	t.Helper()
	out, err := p.Run(containerLimit, "exec", container, "cat", "/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if m, ok := mountinfo.ParseLine(l); ok && (m.Mountpoint == "/cache" || strings.HasPrefix(m.Mountpoint, "/cache/")) {
			lines = append(lines, m.Mountpoint+" "+m.FSType+" "+strings.Join(m.SuperOptions, ","))
		}
	}
	return lines
}

// TestContainerSidecar runs the README's sidecar pod: a trainer running
// as uid 1000 reads every file through the sidecar's mount, and stopping
// the sidecar with SIGTERM unmounts it everywhere: on the host and in the
// trainer, which sees an empty directory again and nothing dead.
func TestContainerSidecar(t *testing.T) {
	d := opsFixture(t)
	p := containerImages(t)
	vol := playSidecar(t, p, d)
	if ms := containerMounts(t, p, trainerContainer); len(ms) != 2 || !strings.HasPrefix(ms[1], sidecarMountpoint+" "+testbed.FSType+" ") || !strings.Contains(ms[1], "allow_other") {
		t.Errorf("the trainer's mounts at /cache: %q, want the volume and bgbfs (allow_other) on %s", ms, sidecarMountpoint)
	}

	start := time.Now()
	if _, err := p.Run(containerLimit, "stop", "--time", "30", sidecarContainer); err != nil {
		t.Fatal(err)
	}
	t.Logf("podman stop (SIGTERM) of the sidecar: %v", time.Since(start).Round(time.Millisecond))
	if code, err := p.Inspect(sidecarContainer, "{{.State.ExitCode}}"); err != nil || code != "0" {
		t.Errorf("the sidecar exited with %q (%v), want 0", code, err)
	}
	log := p.Logs(sidecarContainer)
	if !strings.Contains(log, "msg=unmounted") || strings.Contains(log, "exiting anyway") {
		t.Errorf("the sidecar's log does not show a clean unmount:\n%s", lastBytes(log, 4000))
	}
	if ms := mountsUnder(t, vol); len(ms) > 0 {
		t.Errorf("still mounted under the volume's folder on the host: %v", ms)
	}
	if ms := containerMounts(t, p, trainerContainer); len(ms) != 1 {
		t.Errorf("the trainer's mounts at /cache after the sidecar stopped: %q, want the volume alone", ms)
	}
	if out, err := p.Run(containerLimit, "exec", trainerContainer, "ls", "-A", sidecarMountpoint); err != nil || out != "" {
		t.Errorf("ls %s in the trainer after the sidecar stopped: %q, %v; want an empty directory", sidecarMountpoint, out, err)
	}
}

// holdOpen runs in the trainer: it opens and reads a file, says HELD,
// waits for a line on stdin, then drops the file's cached pages and reads
// it again through the same descriptor, printing READ-OK or the error.
const holdOpen = `
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.read(fd, 1 << 20)
print("HELD", flush=True)
sys.stdin.readline()
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
try:
    os.pread(fd, 4096, 0)
    print("READ-OK", flush=True)
except OSError as e:
    print("READ-ERR", errno.errorcode.get(e.errno, e.errno), flush=True)
`

// TestContainerSidecarKilled kills the README's sidecar with SIGKILL (as
// the OOM killer does) while the trainer holds a file open: that file's
// reads fail with ENOTCONN; the pod's restart policy starts the sidecar
// again, whose command detaches the dead mount and mounts anew; the
// trainer, not restarted, reads every file right again, and the host
// holds the new mount alone, nothing dead.
func TestContainerSidecarKilled(t *testing.T) {
	d := opsFixture(t)
	p := containerImages(t)
	vol := playSidecar(t, p, d)

	ctx, cancel := context.WithTimeout(context.Background(), containerLimit)
	defer cancel()
	holder := p.Command(ctx, "exec", "--interactive", trainerContainer, "python3", "-c", holdOpen,
		filepath.Join(sidecarMountpoint, "train", "manifest.json"))
	stdin, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var holderErr bytes.Buffer
	holder.Stderr = &holderErr
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Wait() }()
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || lines.Text() != "HELD" {
		t.Fatalf("the trainer's holder: %q; stderr %s", lines.Text(), holderErr.String())
	}

	pidText, err := p.Inspect(sidecarContainer, "{{.State.Pid}}")
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(pidText)
	if err != nil || pid <= 0 {
		t.Fatalf("the sidecar's pid: %q, %v", pidText, err)
	}
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "bgbfs" {
		t.Fatalf("the sidecar's process %d is %q, want bgbfs", pid, comm)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !pollUntil(30*time.Second, func() bool { return !procAlive(pid) }) {
		t.Fatalf("the sidecar's bgbfs %d still runs 30 s after SIGKILL", pid)
	}

	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	if !lines.Scan() || lines.Text() != "READ-ERR ENOTCONN" {
		t.Errorf("reading the file the trainer held open after the SIGKILL: %q, want READ-ERR ENOTCONN; stderr %s", lines.Text(), holderErr.String())
	}

	out, err := p.Run(containerLimit, "exec", trainerContainer, "python3", "/usr/local/bin/read-cache", sidecarMountpoint, "0")
	if err != nil || out != readCacheOutput(t, d) {
		t.Errorf("the trainer's reads after the sidecar's restart: %v\n%s\nwant:\n%s", err, out, readCacheOutput(t, d))
	}
	if n, err := p.Inspect(sidecarContainer, "{{.RestartCount}}"); err != nil || n != "1" {
		t.Errorf("the sidecar was restarted %q times (%v), want 1", n, err)
	}
	if log := p.Logs(sidecarContainer); strings.Count(log, "msg=mounted") != 2 {
		t.Errorf("the sidecar's log has %d mounts, want 2 (before and after the restart):\n%s", strings.Count(log, "msg=mounted"), lastBytes(log, 4000))
	}
	tusz := filepath.Join(vol, "tusz")
	if ms := mountsUnder(t, vol); len(ms) != 1 || ms[0] != tusz+" "+testbed.FSType {
		t.Errorf("mounts under the volume's folder on the host after the restart: %v, want the new one alone", ms)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(tusz, &st); err != nil {
		t.Errorf("statfs %s on the host after the restart: %v", tusz, err)
	}
}

// TestContainerNonRoot runs bgbfs in its image as the user bgbfs with
// --allow-other: another uid in the container reads every file; without
// --allow-other it is refused. SIGTERM unmounts, exit 0.
func TestContainerNonRoot(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	p := containerImages(t)
	devFuseForEveryone(t)
	for _, c := range []struct {
		name       string
		allowOther bool
	}{{"allow_other", true}, {"private", false}} {
		t.Run(c.name, func(t *testing.T) {
			name := "nonroot-" + c.name
			args := []string{"run", "--detach", "--name", name, "--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN",
				"--user", "bgbfs", "-e", "AWS_ACCESS_KEY_ID", "-e", "AWS_SECRET_ACCESS_KEY", testbed.BgbfsImage, "mount"}
			if c.allowOther {
				args = append(args, "--allow-other")
			}
			args = slices.Concat(args, endpointArgs(srv.Endpoint), []string{d.Source(), "/cache"})
			ctx, cancel := context.WithTimeout(context.Background(), containerLimit)
			defer cancel()
			if out, err := withCreds(p.Command(ctx, args...), rootCreds(srv)).CombinedOutput(); err != nil {
				t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("bgbfs log:\n%s", lastBytes(p.Logs(name), 4000))
				}
				if _, err := p.Run(containerLimit, "rm", "--force", "--time", "20", name); err != nil {
					t.Error(err)
				}
			})
			if !pollUntil(containerLimit, func() bool { return strings.Contains(p.Logs(name), "msg=mounted") }) {
				t.Fatalf("bgbfs as the user bgbfs did not mount within %v:\n%s", containerLimit, p.Logs(name))
			}
			ms := containerMounts(t, p, name)
			if len(ms) != 1 || !strings.HasPrefix(ms[0], "/cache "+testbed.FSType+" ") || !strings.Contains(ms[0], "user_id=1000") ||
				strings.Contains(ms[0], "allow_other") != c.allowOther {
				t.Errorf("the mount in the container: %q, want bgbfs's by uid 1000, allow_other %v", ms, c.allowOther)
			}
			if c.allowOther {
				out, err := p.Run(containerLimit, "exec", "--user", "65534:65534", name, "sh", "-c", `cd /cache && find . -type f | LC_ALL=C sort | xargs sha256sum`)
				if err != nil || out != shaLines(d) {
					t.Errorf("uid 65534 reading through the mount of uid 1000: %v\n%s\nwant:\n%s", err, out, shaLines(d))
				}
			} else if out, err := p.Run(containerLimit, "exec", "--user", "65534:65534", name, "ls", "/cache"); err == nil || !strings.Contains(err.Error(), "Permission denied") {
				t.Errorf("uid 65534 listing the mount of uid 1000 without --allow-other: %q, %v; want Permission denied", out, err)
			}
			if _, err := p.Run(containerLimit, "stop", "--time", "30", name); err != nil {
				t.Fatal(err)
			}
			if code, err := p.Inspect(name, "{{.State.ExitCode}}"); err != nil || code != "0" {
				t.Errorf("bgbfs exited with %q (%v) after SIGTERM, want 0", code, err)
			}
			if log := p.Logs(name); !strings.Contains(log, "msg=unmounted") {
				t.Errorf("bgbfs's log has no msg=unmounted:\n%s", lastBytes(log, 4000))
			}
		})
	}
}
