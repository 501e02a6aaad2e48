package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// signatureMarkers are the parts of a signed request that must never be
// logged: the Authorization header and its scheme, presigned-URL query
// parameters and the session-token header.
var signatureMarkers = regexp.MustCompile(`(?i)authorization|AWS4-HMAC-SHA256|signature=|x-amz-signature|credential=|x-amz-credential|x-amz-security-token|signedheaders=`)

// leaks lists what of secrets and signatureMarkers appears in a log.
func leaks(log string, secrets map[string]string) []string {
	var out []string
	for what, s := range secrets {
		if s != "" && strings.Contains(log, s) {
			i := strings.Index(log, s)
			out = append(out, fmt.Sprintf("the %s appears: ...%s...", what, log[max(0, i-120):min(len(log), i+len(s)+40)]))
		}
	}
	for _, loc := range signatureMarkers.FindAllStringIndex(log, 5) {
		out = append(out, fmt.Sprintf("%q appears: ...%s...", log[loc[0]:loc[1]], log[max(0, loc[0]-120):min(len(log), loc[1]+80)]))
	}
	return out
}

func randomToken(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// TestSecretsNotInLogs runs a full cycle (mount, list, read, a read that
// fails with S3 errors, unmount) with --log-level debug through a proxy
// that injects faults, and two failed starts (rejected credentials, one
// with a session token), and checks that neither the access key id, the
// secret key, the session token nor any part of a request signature
// appears in anything bgbfs printed.
func TestSecretsNotInLogs(t *testing.T) {
	d := env.dataset(t)
	srv := env.server(t)
	proxy, faults := faultProxy(t, srv.Endpoint, testbed.FaultPlan{Seed: 5})
	m := mount(t, mountSpec{
		Source:   "s3://" + d.Bucket + "/" + npzPrefix,
		Endpoint: proxy.URL,
		Creds:    rootCreds(srv),
		Args:     []string{"--log-level", "debug", "--max-attempts", "2", "--cache-size", "0"},
	})
	tree := walkTree(t, m.Mountpoint)
	if len(tree) == 0 {
		t.Fatalf("the mount lists nothing")
	}
	// One file is left unread, for a read that must reach S3 later.
	unread := "dev/" + firstNPZ(d, "dev")
	for rel, e := range tree {
		if e.IsDir || rel == unread {
			continue
		}
		got, err := os.ReadFile(filepath.Join(m.Mountpoint, filepath.FromSlash(rel)))
		if err != nil || !bytes.Equal(got, d.Objects[npzPrefix+rel].Data) {
			t.Errorf("reading %s: %d bytes, %v", rel, len(got), errnoOf(err))
		}
	}
	if _, err := os.Stat(filepath.Join(m.Mountpoint, "no-such-file")); !isErrno(err, syscall.ENOENT) {
		t.Errorf("stat of a missing name: %v, want ENOENT", errnoOf(err))
	}
	// A read that fails after retries: the cause is logged at error.
	faults.SetPlan(testbed.FaultPlan{Seed: 5, Rate: 1, Ops: []testbed.Op{testbed.OpGetObject},
		Kinds: map[testbed.FaultKind]int{testbed.FaultInternalError: 1, testbed.FaultSlowDown: 1}})
	f, err := os.Open(filepath.Join(m.Mountpoint, filepath.FromSlash(unread)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 4096), 0); !isErrno(err, syscall.EIO) {
		t.Errorf("read with every GET failing: %v, want EIO", errnoOf(err))
	}
	f.Close()
	faults.SetRate(0)
	t.Logf("faults: %s; proxy: %v", faults.Summary(), proxy.Counts())
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	stdout, _ := os.ReadFile(m.LogPath + ".stdout")
	log := m.Stderr() + string(stdout)
	debug, errs := strings.Count(log, "level=DEBUG"), strings.Count(log, "level=ERROR")
	t.Logf("full cycle at --log-level debug: %d bytes of log, %d lines at DEBUG, %d at ERROR", len(log), debug, errs)
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "level=ERROR") {
			t.Logf("daemon: %s", line)
			break
		}
	}
	if errs == 0 {
		t.Errorf("the failed read logged nothing at ERROR: the test did not exercise the error path")
	}
	secrets := map[string]string{"access key id": srv.AccessKey, "secret key": srv.SecretKey}
	for _, l := range leaks(log, secrets) {
		t.Errorf("mount log: %s", l)
	}

	// Failed starts, with a session token in the environment.
	token := randomToken("BGBFS-DUMMY-SESSION-TOKEN-")
	badSecret := randomToken("wrong-secret-")
	unknownKey := strings.ToUpper(randomToken("AKIABGBFSTEST"))[:20]
	starts := []struct {
		name  string
		creds testbed.Creds
		token string
	}{
		{"wrong secret", testbed.Creds{AccessKey: srv.AccessKey, SecretKey: badSecret}, ""},
		{"wrong secret with a session token", testbed.Creds{AccessKey: srv.AccessKey, SecretKey: badSecret}, token},
		{"unknown access key with a session token", testbed.Creds{AccessKey: unknownKey, SecretKey: badSecret}, token},
		{"right keys with a session token", testbed.Creds{AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}, token},
	}
	for _, s := range starts {
		mp := newMountpoint(t)
		runEnv := testbed.CleanEnv(&s.creds)
		if s.token != "" {
			runEnv = append(runEnv, "AWS_SESSION_TOKEN="+s.token)
		}
		args := slices.Concat([]string{"mount", "--log-level", "debug"}, endpointArgs(srv.Endpoint), []string{"s3://" + d.Bucket + "/" + npzPrefix, mp})
		res := testbed.Run(env.bgbfs, args, runEnv, 2*failFastLimit)
		if _, mounted := testbed.MountedAt(mp); mounted {
			_ = testbed.ForceUnmount(mp)
			t.Errorf("%s: bgbfs mounted", s.name)
		}
		t.Logf("%s: exit %d, stderr %q", s.name, res.ExitCode, res.Stderr)
		if res.ExitCode == 0 {
			t.Errorf("%s: exit 0, want a failure", s.name)
		}
		secrets := map[string]string{"access key id": s.creds.AccessKey, "secret key": s.creds.SecretKey, "session token": s.token}
		for _, l := range leaks(res.Stdout+res.Stderr, secrets) {
			t.Errorf("%s: %s", s.name, l)
		}
	}
}

// TestMountPermissions checks the access rules of a mount: without
// --allow-other the mount carries no allow_other and other users cannot
// enter it at all; the kernel enforces the modes shown
// (default_permissions): with --allow-other, a file of mode 0400 owned by
// root is unreadable for uid 65534 and one of mode 0444 is readable.
func TestMountPermissions(t *testing.T) {
	d := env.dataset(t)
	srv := env.server(t)
	const rel = "train/manifest.json"
	want := d.Objects[npzPrefix+rel].Data
	pub := publicDir(t)
	mountAt := func(name string, args ...string) *testbed.Mounted {
		mp := filepath.Join(pub, name)
		if err := os.Mkdir(mp, 0o755); err != nil {
			t.Fatal(err)
		}
		return mount(t, mountSpec{
			Source: "s3://" + d.Bucket + "/" + npzPrefix, Endpoint: srv.Endpoint, Creds: rootCreds(srv),
			Args: args, Mountpoint: mp,
		})
	}
	options := func(m *testbed.Mounted) []string {
		info, ok := m.Info()
		if !ok {
			t.Fatalf("%s is not in mountinfo", m.Mountpoint)
		}
		return slices.Concat(info.Options, info.SuperOptions)
	}

	t.Run("default", func(t *testing.T) {
		m := mountAt("default")
		opts := options(m)
		t.Logf("mount options: %s", strings.Join(opts, ","))
		if slices.Contains(opts, "allow_other") {
			t.Errorf("allow_other is on without --allow-other")
		}
		if !slices.Contains(opts, "default_permissions") {
			t.Errorf("default_permissions is missing: the kernel would not enforce the modes")
		}
		if _, stderr, err := asNobody(10*time.Second, "ls", m.Mountpoint); err == nil || !strings.Contains(stderr, "Permission denied") {
			t.Errorf("uid %d listing a mount without allow_other: %v, %q; want Permission denied", nobody, err, stderr)
		}
		if got, err := os.ReadFile(filepath.Join(m.Mountpoint, rel)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("the mounting user (root) reading %s: %v", rel, errnoOf(err))
		}
	})

	t.Run("allow_other_0400_root", func(t *testing.T) {
		m := mountAt("private", "--allow-other", "--file-mode", "0400", "--uid", "0", "--gid", "0")
		if !slices.Contains(options(m), "allow_other") {
			t.Errorf("--allow-other did not set allow_other")
		}
		p := filepath.Join(m.Mountpoint, rel)
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o400 {
			t.Errorf("stat %s: %v, %v; want mode 0400", rel, fi.Mode(), err)
		}
		if out, stderr, err := asNobody(10*time.Second, "ls", filepath.Dir(p)); err != nil || !strings.Contains(string(out), "manifest.json") {
			t.Errorf("uid %d listing a 0555 directory: %v, %q", nobody, err, stderr)
		}
		if out, stderr, err := asNobody(10*time.Second, "cat", p); err == nil || len(out) > 0 || !strings.Contains(stderr, "Permission denied") {
			t.Errorf("uid %d reading a 0400 root file: %v, %d bytes, %q; want Permission denied", nobody, err, len(out), stderr)
		}
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
			t.Errorf("root reading the 0400 file: %v", errnoOf(err))
		}
	})

	t.Run("allow_other_0444", func(t *testing.T) {
		m := mountAt("public", "--allow-other", "--file-mode", "0444", "--uid", "0", "--gid", "0")
		p := filepath.Join(m.Mountpoint, rel)
		if out, stderr, err := asNobody(10*time.Second, "cat", p); err != nil || !bytes.Equal(out, want) {
			t.Errorf("uid %d reading a 0444 file: %v, %d bytes (want %d), %q", nobody, err, len(out), len(want), stderr)
		}
	})
}

// TestUnprivilegedMount mounts as uid 65534 (through fusermount3), reads
// as that user, and unmounts with `bgbfs unmount` as that user.
func TestUnprivilegedMount(t *testing.T) {
	d := env.dataset(t)
	srv := env.server(t)
	devFuseForEveryone(t)
	pub := publicDir(t)
	// A copy of the binary the user can reach, and a wrapper that drops
	// privileges before running it.
	bin := filepath.Join(pub, "bgbfs")
	wrapper := wrapBinary(t, pub, "bgbfs-as-nobody", "", asNobodyRunner)
	mp := filepath.Join(pub, "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(mp, nobody, nobody); err != nil {
		t.Fatal(err)
	}

	m, err := testbed.Mount(testbed.MountOptions{
		Bin:        wrapper,
		Source:     "s3://" + d.Bucket + "/" + npzPrefix,
		Mountpoint: mp,
		Endpoint:   srv.Endpoint,
		Creds:      rootCreds(srv),
		LogPath:    filepath.Join(t.TempDir(), "bgbfs.stderr"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m.Alive() {
			if err := m.Unmount(); err != nil {
				t.Error(err)
			}
		}
		if _, mounted := testbed.MountedAt(mp); mounted {
			t.Errorf("%s still mounted at the end", mp)
			_ = testbed.ForceUnmount(mp)
		}
		if t.Failed() {
			t.Logf("bgbfs (as uid %d) stderr:\n%s", nobody, lastBytes(m.Stderr(), 4000))
		}
	})
	if uid := procUID(m.Pid()); uid != nobody {
		t.Errorf("the daemon runs as uid %d, want %d", uid, nobody)
	}
	info, _ := m.Info()
	t.Logf("mountinfo: %s %s %s", info.FSType, strings.Join(info.Options, ","), strings.Join(info.SuperOptions, ","))
	if !slices.Contains(info.SuperOptions, "user_id="+strconv.Itoa(nobody)) {
		t.Errorf("mount options %q do not name user_id=%d", info.SuperOptions, nobody)
	}

	const rel = "train/manifest.json"
	want := d.Objects[npzPrefix+rel].Data
	out, stderr, err := asNobody(20*time.Second, "cat", filepath.Join(mp, rel))
	if err != nil || !bytes.Equal(out, want) {
		t.Errorf("uid %d reading %s: %v, %d bytes (want %d), %q", nobody, rel, err, len(out), len(want), stderr)
	}
	if out, _, err := asNobody(10*time.Second, "ls", filepath.Join(mp, "train")); err != nil || !strings.Contains(string(out), "manifest.json") {
		t.Errorf("uid %d listing train: %v, %q", nobody, err, out)
	}
	// Without allow_other, not even root may enter another user's mount.
	if _, err := os.ReadDir(mp); !isErrno(err, syscall.EACCES) {
		t.Errorf("root listing uid %d's mount: %v, want EACCES", nobody, errnoOf(err))
	}

	out, stderr, err = asNobody(20*time.Second, bin, "unmount", mp)
	if err != nil {
		t.Fatalf("bgbfs unmount as uid %d: %v, %q %q", nobody, err, out, stderr)
	}
	code, exited := m.WaitExit(testbed.UnmountTimeout)
	if !exited || code != 0 {
		t.Errorf("after bgbfs unmount the daemon: exited %v with status %d; want exit 0", exited, code)
	}
	requireNotMounted(t, mp)
}

// procUID is the real uid of a process, or -1.
func procUID(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			fields := strings.Fields(rest)
			if len(fields) > 0 {
				uid, _ := strconv.Atoi(fields[0])
				return uid
			}
		}
	}
	return -1
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// devFuseForEveryone makes /dev/fuse read-write for all (0666, the mode
// distributions give it) for the test if it is not: fusermount3 opens it
// with the calling user's privileges. The original mode comes back at
// the end.
func devFuseForEveryone(t testing.TB) {
	t.Helper()
	const dev = "/dev/fuse"
	fi, err := os.Stat(dev)
	if err != nil {
		t.Fatal(err)
	}
	mode := fi.Mode().Perm()
	if mode&0o006 == 0o006 {
		return
	}
	if err := os.Chmod(dev, 0o666); err != nil {
		t.Fatalf("chmod 0666 %s: %v", dev, err)
	}
	t.Logf("%s had mode %#o, which fusermount3 cannot open for an unprivileged user: 0666 for this test", dev, mode)
	t.Cleanup(func() {
		if err := os.Chmod(dev, mode); err != nil {
			t.Errorf("restoring the mode of %s: %v", dev, err)
		}
	})
}
