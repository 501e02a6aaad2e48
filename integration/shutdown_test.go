package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/cmd/bgbfs/mountinfo"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// shutdownLimit is how long SIGTERM may take to unmount and exit under
// load: with files open the daemon waits its 5 s unmount grace
// (cmd/bgbfs unmountGrace) for the kernel to let go, then unmounts lazily
// and exits; the rest is room for a loaded machine.
const shutdownLimit = 15 * time.Second

// procReadBytes returns the bytes a process has read (rchar of
// /proc/PID/io), or -1.
func procReadBytes(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "rchar: "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return -1
}

// TestShutdownDuringReads sends SIGTERM while four processes stream big
// files through the mount: the daemon must unmount (lazily, files being
// open) and exit 0 within 10 s, the mount must be gone from the mount
// table, the readers must not hang (each ends with ECONNABORTED or
// ENOTCONN, or at its end of file), and the mountpoint must be an empty
// directory again once they have gone.
func TestShutdownDuringReads(t *testing.T) {
	m := mountData(t, "")
	big := filepath.Join(m.Mountpoint, filepath.FromSlash(bigKey))
	var readers []*exec.Cmd
	exited := make(chan error, 8)
	for i, skip := range []int{0, 1024, 2048, 3072} { // MiB into the >4 GiB object
		cmd := exec.Command("dd", "if="+big, "of=/dev/null", "bs=1M", "skip="+strconv.Itoa(skip), "status=none")
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		readers = append(readers, cmd)
		go func() {
			err := cmd.Wait()
			if err != nil {
				err = fmt.Errorf("reader %d: %w: %s", i, err, strings.TrimSpace(errb.String()))
			}
			exited <- err
		}()
	}
	t.Cleanup(func() {
		for _, c := range readers {
			if c.ProcessState == nil {
				_ = c.Process.Kill()
			}
		}
	})
	// Wait until every reader is streaming.
	deadline := time.Now().Add(20 * time.Second)
	for _, c := range readers {
		for procReadBytes(c.Process.Pid) < 16<<20 {
			if time.Now().After(deadline) {
				t.Fatalf("reader %d read only %d bytes in 20 s", c.Process.Pid, procReadBytes(c.Process.Pid))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var before int64
	for _, c := range readers {
		before += procReadBytes(c.Process.Pid)
	}
	time.Sleep(500 * time.Millisecond)
	var during int64
	for _, c := range readers {
		during += procReadBytes(c.Process.Pid)
	}
	t.Logf("readers streaming at %.0f MB/s when SIGTERM is sent", float64(during-before)/0.5/1e6)
	if during == before {
		t.Fatalf("the readers are not reading")
	}

	start := time.Now()
	if err := m.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, ok := m.WaitExit(shutdownLimit)
	took := time.Since(start)
	if !ok {
		// Ask the Go runtime where it is stuck before the cleanup kills it.
		_ = m.Signal(syscall.SIGQUIT)
		m.WaitExit(5 * time.Second)
		var logLines []string
		for _, l := range strings.Split(m.Stderr(), "\n") {
			if strings.HasPrefix(l, "time=") && !strings.Contains(l, "msg=mounted") {
				logLines = append(logLines, l)
			}
		}
		t.Fatalf("bgbfs still running %v after SIGTERM under load; its log:\n%s\nits goroutines:\n%s",
			shutdownLimit, strings.Join(logLines, "\n"), goroutineDump(m.Stderr()))
	}
	t.Logf("SIGTERM to exit under load: %v, exit status %d", took.Round(time.Millisecond), code)
	if code != 0 {
		t.Errorf("bgbfs exited with status %d after SIGTERM, want 0", code)
	}
	if took > shutdownLimit {
		t.Errorf("bgbfs took %v to exit after SIGTERM under load, want at most %v", took.Round(time.Millisecond), shutdownLimit)
	}
	requireNotMounted(t, m.Mountpoint)

	// The readers end (an error, or the end of their file), none hangs.
	var errs []string
	for range readers {
		select {
		case err := <-exited:
			if err != nil {
				errs = append(errs, err.Error())
			}
		case <-time.After(shutdownLimit):
			t.Fatalf("a reader still runs %v after bgbfs exited", shutdownLimit)
		}
	}
	t.Logf("readers after the unmount: %d ended with an error: %q", len(errs), errs)
	// What RELIABILITY.md says they see: a read waiting for an answer when
	// the daemon exits gets ECONNABORTED (the kernel aborts the requests
	// in flight), a later one ENOTCONN.
	// (dd then fails to close the file with ENOTCONN.)
	seen := map[syscall.Errno]int{}
	for _, e := range errs {
		read, _, _ := strings.Cut(strings.ToLower(e), "\n")
		switch {
		case strings.Contains(read, syscall.ECONNABORTED.Error()):
			seen[syscall.ECONNABORTED]++
		case strings.Contains(read, syscall.ENOTCONN.Error()):
			seen[syscall.ENOTCONN]++
		default:
			t.Errorf("a reader ended with %q, want ECONNABORTED or ENOTCONN", e)
		}
	}
	t.Logf("readers' errors: ECONNABORTED %d, ENOTCONN %d", seen[syscall.ECONNABORTED], seen[syscall.ENOTCONN])
	if names, err := os.ReadDir(m.Mountpoint); err != nil || len(names) != 0 {
		t.Errorf("the mountpoint should be an empty directory again: %d entries, %v", len(names), errnoOf(err))
	}
	stderr := m.Stderr()
	for _, line := range strings.Split(stderr, "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") || strings.Contains(line, "unmount") {
			t.Logf("daemon: %s", line)
		}
	}
}

// TestSecondMountRefused runs a second `bgbfs mount` on a mountpoint that
// a first daemon is serving while a file on it is being read: the second
// must refuse in one line naming the cause, exit non-zero, mount nothing,
// and leave the first mount and its open file working. On a dead mount
// (daemon killed) it must refuse with a line that names `bgbfs unmount`.
func TestSecondMountRefused(t *testing.T) {
	d := env.dataset(t)
	srv := env.server(t)
	source := "s3://" + d.Bucket + "/" + npzPrefix
	args := func(mp string) []string {
		return slices.Concat([]string{"mount"}, endpointArgs(srv.Endpoint), []string{source, mp})
	}
	refuse := func(t *testing.T, mp string, keywords ...string) {
		t.Helper()
		before, _ := mountinfo.At(mp)
		res := testbed.Run(env.bgbfs, args(mp), testbed.CleanEnv(rootCreds(srv)), 2*failFastLimit)
		t.Cleanup(func() {
			if after, _ := mountinfo.At(mp); len(after) > len(before) {
				_ = testbed.ForceUnmount(mp) // wrongly mounted on top
			}
		})
		t.Logf("second bgbfs mount: exit %d after %v; stderr %q", res.ExitCode, res.Elapsed.Round(time.Millisecond), res.Stderr)
		if res.ExitCode == 0 || res.TimedOut || res.LeftBehind {
			t.Errorf("second mount: exit %d, timed out %v, left processes behind %v; want a non-zero exit", res.ExitCode, res.TimedOut, res.LeftBehind)
		}
		if res.Elapsed > failFastLimit {
			t.Errorf("second mount took %v to refuse, want under %v", res.Elapsed, failFastLimit)
		}
		lines := res.StderrLines()
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "bgbfs: ") {
			t.Errorf("second mount: stderr %q, want exactly one line starting %q", res.Stderr, "bgbfs: ")
		} else if l := strings.ToLower(lines[0]); !slices.ContainsFunc(keywords, func(k string) bool { return strings.Contains(l, k) }) {
			t.Errorf("second mount: %q names none of %q", lines[0], keywords)
		}
		if after, _ := mountinfo.At(mp); len(after) != len(before) {
			t.Errorf("mounts on %s went from %d to %d", mp, len(before), len(after))
		}
	}

	t.Run("busy", func(t *testing.T) {
		m := mountData(t, npzPrefix)
		key := "train/" + firstNPZ(d, "train")
		want := d.Objects[npzPrefix+key].Data
		f, err := os.Open(filepath.Join(m.Mountpoint, filepath.FromSlash(key)))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		half := int64(len(want) / 2)
		if msg := checkPread(f, bytes.NewReader(want), int64(len(want)), 0, int(half)); msg != "" {
			t.Fatalf("reading %s: %s", key, msg)
		}
		refuse(t, m.Mountpoint, "already mounted")
		if !m.Alive() {
			t.Fatalf("the first daemon died")
		}
		if msg := checkPread(f, bytes.NewReader(want), int64(len(want)), half, len(want)-int(half)); msg != "" {
			t.Errorf("the open file after the refused mount: %s", msg)
		}
		checkServes(t, d, m.Mountpoint)
	})

	t.Run("dead", func(t *testing.T) {
		m := mountData(t, npzPrefix)
		mp := m.Mountpoint
		checkServes(t, d, mp)
		m.Kill()
		refuse(t, mp, "bgbfs unmount")
		res := testbed.Run(env.bgbfs, []string{"unmount", mp}, testbed.CleanEnv(nil), 15*time.Second)
		if res.ExitCode != 0 {
			t.Fatalf("bgbfs unmount %s: exit %d, %q", mp, res.ExitCode, res.Stderr)
		}
		m2 := mount(t, mountSpec{Source: source, Endpoint: srv.Endpoint, Creds: rootCreds(srv), Mountpoint: mp})
		checkServes(t, d, m2.Mountpoint)
	})
}

// firstNPZ is the first .npz file name in a split of the dataset.
func firstNPZ(d *dataset, split string) string {
	for _, k := range d.Keys() {
		if rest, ok := strings.CutPrefix(k, npzPrefix+split+"/"); ok && strings.HasSuffix(rest, ".npz") {
			return rest
		}
	}
	return ""
}

// goroutineDump condenses the goroutine stacks a SIGQUIT made the daemon
// print: for each distinct stack, its state and its bgbfs frames (main,
// fs, cache, s3backend and go-fuse), with a count of goroutines.
func goroutineDump(stderr string) string {
	i := strings.Index(stderr, "\ngoroutine ")
	if i < 0 {
		return "(no goroutine dump in stderr)"
	}
	counts := map[string]int{}
	var order []string
	for _, g := range strings.Split(stderr[i+1:], "\n\n") {
		lines := strings.Split(g, "\n")
		if !strings.HasPrefix(lines[0], "goroutine ") {
			continue
		}
		state := lines[0]
		if a, b := strings.Index(state, "["), strings.Index(state, "]"); a >= 0 && b > a {
			state = state[a : b+1]
		}
		var frames []string
		for _, l := range lines[1:] {
			if strings.HasPrefix(l, "\t") || strings.HasPrefix(l, "created by") {
				continue
			}
			fn := l
			if i := strings.LastIndex(l, "("); i > 0 {
				fn = l[:i] // without the arguments
			}
			if strings.HasPrefix(fn, "main.") || strings.Contains(fn, "bgbfs/bgbfs/") || strings.Contains(fn, "go-fuse") ||
				strings.HasPrefix(fn, "sync.") {
				frames = append(frames, "  "+fn)
			}
		}
		if len(frames) == 0 {
			continue
		}
		key := state + "\n" + strings.Join(frames, "\n")
		if counts[key] == 0 {
			order = append(order, key)
		}
		counts[key]++
	}
	var b strings.Builder
	for _, k := range order {
		fmt.Fprintf(&b, "%d goroutine(s) %s\n", counts[k], k)
	}
	return lastBytes(b.String(), 12000)
}

// TestExecExitsWhileIndexesBuild runs `bgbfs exec --npz-members` whose
// command starts a reader of every compressed member of the member bucket
// (cold: each first read builds the member's index, inflating it whole
// through a slow S3), kills the readers while the builds run, and exits
// 7. The builds outlive the reads that started them, so the unmount and
// the closing of the block and index caches happen while they fetch. bgbfs
// must exit with the command's status, with no panic or fatal error in
// its log, leaving nothing mounted.
func TestExecExitsWhileIndexesBuild(t *testing.T) {
	d := memberFixture(t)
	srv := env.server(t)
	counting := newProxy(t, srv.Endpoint)
	// 500 kB/s per response: a build of a 17 MB member takes many seconds.
	shaper, err := testbed.NewShapingProxy(counting.URL, 5*time.Millisecond, 500e3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = shaper.Close() })
	var members []string
	for _, a := range d.Viewable() {
		for _, m := range a.Members {
			if m.Deflated && m.Size > 128<<10 {
				members = append(members, a.Rel+memberDirSuffix+"/"+m.Name)
			}
		}
	}
	mp := newMountpoint(t)
	cleanupMountpoint(t, mp)
	// Every reader reads the last byte: a first read past the head of a
	// member waits for its index (reads of the first 64 KiB need none).
	script := `mp=$0; pids=; for f in "$@"; do tail -c 1 "$mp/$f" > /dev/null 2>&1 & pids="$pids $!"; done; ` +
		`sleep 1; kill -KILL $pids 2>/dev/null; wait; exit 7`
	args := slices.Concat([]string{"exec"}, endpointArgs(shaper.URL),
		[]string{"--npz-members", "--log-level", "debug", "--metadata-ttl", "10m", "s3://" + d.Bucket + "/" + memberDataPrefix, mp, "--", "/bin/sh", "-c", script, mp}, members)
	res := testbed.Run(env.bgbfs, args, testbed.CleanEnv(rootCreds(srv)), execLimit)
	t.Logf("bgbfs exec --npz-members ... (%d readers killed while indexes build, then exit 7): exit %d after %v",
		len(members), res.ExitCode, res.Elapsed.Round(time.Millisecond))
	if res.ExitCode != 7 {
		t.Errorf("exit status %d, want 7 (the command's); stderr:\n%s", res.ExitCode, lastBytes(res.Stderr, 6000))
	}
	for _, bad := range []string{"panic:", "fatal error:", "WaitGroup", "DATA RACE"} {
		if strings.Contains(res.Stderr, bad) {
			t.Errorf("%q in the log of bgbfs exec:\n%s", bad, lastBytes(res.Stderr, 6000))
			break
		}
	}
	checkExecDone(t, mp, res)

	// The test bed did what it meant to: reads were still waiting for
	// their index builds when the readers were killed (their requests were
	// interrupted), and the files were closed, so the unmount was clean and
	// the caches were closed under the builds (not skipped, as they are
	// when the process exits with files still open).
	waiting := 0
	for _, line := range strings.Split(res.Stderr, "\n") {
		if strings.Contains(line, `msg="request interrupted" op=read`) && strings.Contains(line, memberDirSuffix+"/") {
			waiting++
		}
	}
	t.Logf("member reads interrupted while waiting for their index: %d; at the proxy: %s", waiting, counting.Counts())
	if waiting == 0 {
		t.Errorf("test bed: no member read was waiting for its index when the readers were killed; the builds were over before the unmount")
	}
	if strings.Contains(res.Stderr, "files still open after unmount") {
		t.Errorf("test bed: files were still open at unmount; the caches were never closed")
	}
}

// TestShutdownWithMountHeldElsewhere stops a daemon whose mount a process
// in another mount namespace still holds a copy of, as a container (or a
// build) started while the mount was up does: the unmount takes the mount
// from this namespace, but the kernel keeps the filesystem, and its FUSE
// connection, for the other. SIGTERM must still end the daemon, exit 0
// within the limit, with the mount gone here; the other namespace's copy
// is then a dead mount (ENOTCONN).
func TestShutdownWithMountHeldElsewhere(t *testing.T) {
	srv := env.server(t)
	bucket := newBucket(t, srv, "bgbfs-held")
	if err := srv.Admin().PutBytes(t.Context(), bucket, "a.txt", []byte("a\n")); err != nil {
		t.Fatal(err)
	}
	m := mount(t, mountSpec{Source: "s3://" + bucket + "/", Endpoint: srv.Endpoint, Creds: rootCreds(srv)})
	if b, err := os.ReadFile(filepath.Join(m.Mountpoint, "a.txt")); err != nil || string(b) != "a\n" {
		t.Fatalf("read through the mount: %q, %v", b, err)
	}
	holder := exec.Command("unshare", "--mount", "--propagation", "private", "sleep", "300")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = holder.Process.Kill()
		_ = holder.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", holder.Process.Pid))
		if bytes.Contains(b, []byte(" "+m.Mountpoint+" ")) && strings.Contains(holderComm(holder.Process.Pid), "sleep") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("test bed: the other namespace does not show %s", m.Mountpoint)
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	if err := m.Unmount(); err != nil {
		t.Errorf("SIGTERM with the mount held in another namespace: %v", err)
	}
	t.Logf("SIGTERM to exit: %v", time.Since(start).Round(time.Millisecond))
	requireNotMounted(t, m.Mountpoint)
}

// holderComm is the command name of pid (once unshare has exec'd sleep).
func holderComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return string(b)
}

// TestShutdownWhileMountedElsewhere: a second mount of the same
// filesystem (a bind of the mountpoint, as a container holds when it
// bound the mountpoint after bgbfs had mounted) keeps the kernel's side
// alive after bgbfs unmounts its own. SIGTERM must still end the daemon
// within shutdownLimit with status 0, its own mount gone; the copy left
// behind is then dead (ENOTCONN), which the log says may happen.
func TestShutdownWhileMountedElsewhere(t *testing.T) {
	d := opsFixture(t)
	srv := env.server(t)
	m := mount(t, mountSpec{Source: d.Source(), Endpoint: srv.Endpoint, Creds: rootCreds(srv)})
	copyAt := newMountpoint(t)
	if err := syscall.Mount(m.Mountpoint, copyAt, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind %s on %s: %v", m.Mountpoint, copyAt, err)
	}
	t.Cleanup(func() {
		if _, ok := testbed.MountedAt(copyAt); ok {
			if err := syscall.Unmount(copyAt, syscall.MNT_DETACH); err != nil {
				t.Errorf("unmount the copy at %s: %v", copyAt, err)
			}
		}
	})
	const rel = "train/manifest.json"
	if b, err := os.ReadFile(filepath.Join(copyAt, rel)); err != nil || !bytes.Equal(b, d.File(t, rel)) {
		t.Fatalf("the copy does not serve %s: %v", rel, err)
	}

	start := time.Now()
	err := m.Unmount() // SIGTERM, then up to testbed.UnmountTimeout for exit 0
	elapsed := time.Since(start)
	t.Logf("SIGTERM to exit: %v", elapsed.Round(time.Millisecond))
	if err != nil {
		t.Fatalf("with a copy of the mount elsewhere: %v", err)
	}
	if elapsed > shutdownLimit {
		t.Errorf("SIGTERM took %v to end the daemon, want under %v", elapsed, shutdownLimit)
	}
	requireNotMounted(t, m.Mountpoint)
	if !strings.Contains(m.Stderr(), "still mounted elsewhere") {
		t.Errorf("the log does not say the filesystem was still mounted elsewhere:\n%s", m.Stderr())
	}
	// Listing reaches the daemon (a stat could be answered from the
	// kernel's attribute cache).
	if _, err := os.ReadDir(filepath.Join(copyAt, "train")); !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("listing through the copy after bgbfs exited: %v, want ENOTCONN", err)
	}
}
