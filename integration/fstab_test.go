package integration

// mount(8), mount.fuse3 and /etc/fstab.
//
// mount -t fuse 'PROG#SOURCE' MOUNTPOINT -o OPTS runs /sbin/mount.fuse3,
// which runs `/bin/sh -c "'PROG' 'SOURCE' 'MOUNTPOINT' '-o' 'OPTS'"` and
// waits for it (-t fuse.PROG with SOURCE does the same). mount(8) runs the
// helper without PATH, HOME and SHELL in its environment (mount.fuse3 sets
// HOME again, from the passwd entry of the user it runs as); the rest of
// the caller's environment, AWS_* included, passes through. Without PATH,
// /bin/sh (dash) finds PROG only in its default path
// (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin), so these
// tests name the binary by its absolute path in the PROG#SOURCE form.
// TestMountHelperEnvironment records what the helper's child gets.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// mountCmdLimit bounds one mount(8) or umount(8) run.
const mountCmdLimit = 40 * time.Second

// mountBinary is util-linux mount(8), found at test time.
func mountBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s(8) is needed: %v", name, err)
	}
	return p
}

// fuseSource is the first field of mount -t fuse for bgbfs: the absolute
// path of the binary, '#', the s3:// URL.
func fuseSource(source string) string { return env.bgbfs + "#" + source }

// helperOptions are the -o options of the mount(8) tests: the endpoint,
// the smoke-test view of 2 files per directory, a smaller cache, and the
// generic options an fstab line usually carries.
func helperOptions(endpoint, logFile string) string {
	return strings.Join([]string{
		"endpoint_url=" + endpoint, "force_path_style", "region=us-east-1",
		"limit_files=2", "cache_size=64MiB", "allow_other", "nosuid", "nodev", "_netdev",
		"log_file=" + logFile,
	}, ",")
}

// minimalHelperOptions leave out allow_other, nosuid and nodev (so
// mount.fuse3, run by root, passes dev,suid): the mount must still be
// nosuid and nodev, and without allow_other.
func minimalHelperOptions(endpoint, logFile string) string {
	return strings.Join([]string{
		"endpoint_url=" + endpoint, "force_path_style", "limit_files=2", "log_file=" + logFile,
	}, ",")
}

// checkHelperMount checks a mount made through mount(8): mounted as
// fuse.bgbfs, read-only, nosuid, nodev, with allow_other or not, the smoke-test
// view of 2 npz files in train/, files reading correctly, one background
// bgbfs serving it; then umount(8) ends the mount and that process (or,
// with bySignal, SIGTERM to that process, as at a system shutdown: it
// then runs without PATH, as mount(8) started it, and must unmount).
func checkHelperMount(t *testing.T, d *opsData, mp, logFile string, allowOther, bySignal bool, res testbed.RunResult) {
	t.Helper()
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("bgbfs log_file:\n%s", lastBytes(string(b), 4000))
		}
	}()
	t.Logf("mount: exit %d after %v; stdout %q; stderr %q", res.ExitCode, res.Elapsed.Round(time.Millisecond), res.Stdout, res.Stderr)
	if res.ExitCode != 0 || res.TimedOut {
		t.Fatalf("mount failed: exit %d (timed out: %v); stderr:\n%s", res.ExitCode, res.TimedOut, res.Stderr)
	}
	// Ready the moment mount(8) returns.
	checkMountServes(t, d, mp, "train/manifest.json")
	info, _ := testbed.MountedAt(mp)
	t.Logf("mountinfo: %s %s %s %s", info.FSType, info.Source, strings.Join(info.Options, ","), strings.Join(info.SuperOptions, ","))
	all := slices.Concat(info.Options, info.SuperOptions)
	for _, o := range []string{"nosuid", "nodev"} {
		if !slices.Contains(info.Options, o) {
			t.Errorf("mountinfo options of %s lack %s: %v", mp, o, info.Options)
		}
	}
	if slices.Contains(all, "allow_other") != allowOther {
		t.Errorf("mountinfo options of %s: allow_other present is %v, want %v: %v %v", mp, !allowOther, allowOther, info.Options, info.SuperOptions)
	}
	if !info.ReadOnly() {
		t.Errorf("mountinfo options of %s are %v, want ro (mount(8) passed rw)", mp, info.Options)
	}
	names, err := dirNames(filepath.Join(mp, "train"))
	if err != nil {
		t.Fatalf("listing train/: %v", errnoOf(err))
	}
	var npz []string
	for _, n := range names {
		if strings.HasSuffix(n, ".npz") {
			npz = append(npz, n)
		}
	}
	if want := d.NPZ("train")[:2]; !slices.Equal(npz, want) {
		t.Errorf("train/ shows npz files %q with limit_files=2, want %q", npz, want)
	}
	if !slices.Contains(names, "manifest.json") {
		t.Errorf("train/ lacks manifest.json (the limit counts only *.npz): %q", names)
	}
	for _, n := range npz {
		checkMountServes(t, d, mp, "train/"+n)
	}
	if _, err := os.Stat(filepath.Join(mp, "train", d.NPZ("train")[2])); !isENOENT(err) {
		t.Errorf("stat of the third npz, hidden by limit_files=2: %v, want ENOENT", errnoOf(err))
	}
	pids := bgbfsProcs(mp)
	if len(pids) != 1 {
		t.Fatalf("%d bgbfs processes serve %s (%v), want 1", len(pids), mp, pids)
	}
	if res.LeftBehind {
		t.Errorf("a process of the mount command's group outlived it (the daemon should be in its own session)")
	}

	if bySignal {
		if err := syscall.Kill(pids[0], syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if !pollUntil(testbed.UnmountTimeout, func() bool { return !procAlive(pids[0]) }) {
			t.Errorf("bgbfs %d still runs %v after SIGTERM", pids[0], testbed.UnmountTimeout)
		}
		requireNotMounted(t, mp)
		return
	}
	un := testbed.Run(mountBinary(t, "umount"), []string{mp}, testbed.CleanEnv(nil), mountCmdLimit)
	if un.ExitCode != 0 {
		t.Errorf("umount %s: exit %d, stderr %q", mp, un.ExitCode, un.Stderr)
	}
	requireNotMounted(t, mp)
	if !pollUntil(testbed.UnmountTimeout, func() bool { return !procAlive(pids[0]) }) {
		t.Errorf("bgbfs %d still runs %v after umount %s", pids[0], testbed.UnmountTimeout, mp)
	}
}

// TestMountHelper mounts with mount -t fuse 'ABS/bgbfs#s3://...' MP -o
// ..., credentials in the environment of mount(8).
// With the fewest options, the mount is still nosuid and nodev although
// mount.fuse3 asks for dev,suid; that one is stopped with SIGTERM.
func TestMountHelper(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	for _, c := range []struct {
		name       string
		options    func(endpoint, logFile string) string
		allowOther bool
		bySignal   bool
	}{
		{"fstab_style", helperOptions, true, false},
		{"minimal_SIGTERM", minimalHelperOptions, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			mp := newMountpoint(t)
			cleanupMountpoint(t, mp)
			logFile := filepath.Join(t.TempDir(), "bgbfs.log")
			args := []string{"-t", "fuse", fuseSource(d.Source()), mp, "-o", c.options(srv.Endpoint, logFile)}
			t.Logf("mount %s", strings.Join(args, " "))
			res := testbed.Run(mountBinary(t, "mount"), args, testbed.CleanEnv(rootCreds(srv)), mountCmdLimit)
			checkHelperMount(t, d, mp, logFile, c.allowOther, c.bySignal, res)
		})
	}
}

// TestMountFstab mounts from an fstab line with mount --fstab FILE MP.
// The credentials come from a shared credentials file named by
// AWS_SHARED_CREDENTIALS_FILE in mount's environment and a profile=
// option, with no keys in the environment: this shows what passes through
// mount(8) and mount.fuse3.
func TestMountFstab(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	mp := newMountpoint(t)
	cleanupMountpoint(t, mp)
	dir := t.TempDir()
	logFile := filepath.Join(dir, "bgbfs.log")
	credsFile := filepath.Join(dir, "credentials")
	creds := fmt.Sprintf("[bgbfs-e2e]\naws_access_key_id = %s\naws_secret_access_key = %s\n", srv.AccessKey, srv.SecretKey)
	if err := os.WriteFile(credsFile, []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
	fstab := filepath.Join(dir, "fstab")
	line := fmt.Sprintf("%s %s fuse %s,profile=bgbfs-e2e 0 0\n",
		fstabEscape(fuseSource(d.Source())), fstabEscape(mp), helperOptions(srv.Endpoint, logFile))
	if err := os.WriteFile(fstab, []byte("# bgbfs test\n"+line), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("fstab: %s", strings.TrimSpace(line))
	environ := slices.DeleteFunc(testbed.CleanEnv(nil), func(kv string) bool {
		return strings.HasPrefix(kv, "AWS_SHARED_CREDENTIALS_FILE=")
	})
	environ = append(environ, "AWS_SHARED_CREDENTIALS_FILE="+credsFile)
	res := testbed.Run(mountBinary(t, "mount"), []string{"--fstab", fstab, mp}, environ, mountCmdLimit)
	checkHelperMount(t, d, mp, logFile, true, false, res)
}

// fstabEscape escapes whitespace and backslashes in an fstab field.
func fstabEscape(s string) string {
	return strings.NewReplacer(`\`, `\134`, " ", `\040`, "\t", `\011`, "\n", `\012`).Replace(s)
}

// TestMountHelperUnknownOption checks an -o option bgbfs does not know
// fails mount(8) with bgbfs's one-line message, mounting nothing.
func TestMountHelperUnknownOption(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	mp := newMountpoint(t)
	cleanupMountpoint(t, mp)
	opts := "endpoint_url=" + srv.Endpoint + ",force_path_style,no_such_option"
	args := []string{"-t", "fuse", fuseSource(d.Source()), mp, "-o", opts}
	res := testbed.Run(mountBinary(t, "mount"), args, testbed.CleanEnv(rootCreds(srv)), mountCmdLimit)
	t.Logf("mount %s: exit %d after %v; stderr %q", strings.Join(args, " "), res.ExitCode, res.Elapsed.Round(time.Millisecond), res.Stderr)
	if res.ExitCode == 0 {
		t.Errorf("mount exited 0 with an unknown option")
	}
	if res.Elapsed >= failFastLimit {
		t.Errorf("took %v, want under %v", res.Elapsed, failFastLimit)
	}
	checkOneErrorLine(t, res.Stderr, "no_such_option")
	requireNotMounted(t, mp)
	requireNoDaemon(t, mp, 2*time.Second)
}

// TestMountHelperEnvironment records the environment mount(8) and
// mount.fuse3 give the filesystem program, with a stand-in program that
// writes it down and fails: the AWS_* variables bgbfs reads must pass
// through unchanged. PATH and HOME are logged (see the top of this file).
func TestMountHelperEnvironment(t *testing.T) {
	dir := t.TempDir()
	mp := newMountpoint(t)
	cleanupMountpoint(t, mp)
	out := filepath.Join(dir, "env.out")
	prog := filepath.Join(dir, "fakefs")
	script := fmt.Sprintf("#!/bin/sh\n{ printf 'ARGS'; printf ' [%%s]' \"$@\"; echo; echo \"SHELLPATH=$PATH\"; env; } > %s\nexit 3\n", shellQuote(out))
	if err := os.WriteFile(prog, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	passed := map[string]string{
		"AWS_ACCESS_KEY_ID":           "AKIDEXAMPLE",
		"AWS_SECRET_ACCESS_KEY":       "not-a-secret",
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "credentials"),
		"AWS_CONFIG_FILE":             filepath.Join(dir, "config"),
		"AWS_PROFILE":                 "bgbfs-e2e",
	}
	environ := slices.DeleteFunc(testbed.CleanEnv(nil), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		_, ours := passed[k]
		return ours || k == "HOME" || k == "PATH"
	})
	for k, v := range passed {
		environ = append(environ, k+"="+v)
	}
	environ = append(environ, "HOME="+dir, "PATH="+dir+":/usr/sbin:/usr/bin:/sbin:/bin")
	res := testbed.Run(mountBinary(t, "mount"), []string{"-t", "fuse", prog + "#s3://bucket/prefix/", mp, "-o", "ro,allow_other"}, environ, mountCmdLimit)
	if res.ExitCode == 0 {
		t.Errorf("mount exited 0 although the program failed")
	}
	requireNotMounted(t, mp)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("the stand-in program did not run: %v; mount stderr %q", err, res.Stderr)
	}
	got := map[string]string{}
	var argsLine, shellPath string
	for _, l := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(l, "ARGS"):
			argsLine = l
		case strings.HasPrefix(l, "SHELLPATH="):
			shellPath = strings.TrimPrefix(l, "SHELLPATH=")
		default:
			if k, v, ok := strings.Cut(l, "="); ok {
				got[k] = v
			}
		}
	}
	wantArgs := fmt.Sprintf("ARGS [s3://bucket/prefix/] [%s] [-o] ", mp)
	if !strings.HasPrefix(argsLine, wantArgs) {
		t.Errorf("the program got %q, want it to start %q", argsLine, wantArgs)
	}
	for k, v := range passed {
		if got[k] != v {
			t.Errorf("%s reached the program as %q, want %q", k, got[k], v)
		}
	}
	pathEnv, hasPath := got["PATH"]
	t.Logf("program arguments: %s", argsLine)
	t.Logf("PATH in the environment: %q (present: %v); PATH in /bin/sh: %q", pathEnv, hasPath, shellPath)
	t.Logf("HOME: %q (mount's caller had %q)", got["HOME"], dir)
	if !bytes.Contains(b, []byte("AWS_ACCESS_KEY_ID=")) {
		t.Errorf("the environment reaching the program has no AWS_ACCESS_KEY_ID:\n%s", b)
	}
}
