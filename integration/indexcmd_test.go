package integration

// `bgbfs index`: builds the index of every deflated member of
// every .npz under a prefix into a --cache-dir (a local directory or an
// s3:// prefix), one summary line on stdout, exit 1 naming the archives
// that failed; archives already indexed are skipped without a GET; a
// mount with the same --cache-dir then builds nothing.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// indexRunLimit bounds one `bgbfs index` run over the fixture.
const indexRunLimit = 3 * time.Minute

// indexArgs is the command line of `bgbfs index` against endpoint.
func indexArgs(endpoint, source, cacheDir string, extra ...string) []string {
	args := []string{"index", "--endpoint-url", endpoint, "--force-path-style", "--region", "us-east-1", "--cache-dir", cacheDir}
	args = append(args, extra...)
	return append(args, source)
}

// runIndex runs `bgbfs index` to its end with the MinIO root credentials.
func runIndex(t testing.TB, endpoint, source, cacheDir string, extra ...string) testbed.RunResult {
	t.Helper()
	res := testbed.Run(env.bgbfs, indexArgs(endpoint, source, cacheDir, extra...), testbed.CleanEnv(rootCreds(env.server(t))), indexRunLimit)
	if res.TimedOut {
		t.Fatalf("bgbfs index %s did not finish within %v; stderr:\n%s", source, indexRunLimit, lastBytes(res.Stderr, 3000))
	}
	return res
}

// indexRun is a `bgbfs index` running in the background.
type indexRun struct {
	*bgCmd
	stdout, stderr *bytes.Buffer // read only once it has exited
}

// startIndexRun starts `bgbfs index` of bin in the background.
func startIndexRun(t testing.TB, bin, endpoint, source, cacheDir string, extra ...string) *indexRun {
	t.Helper()
	cmd := exec.Command(bin, indexArgs(endpoint, source, cacheDir, extra...)...)
	cmd.Env = testbed.CleanEnv(rootCreds(env.server(t)))
	r := &indexRun{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	cmd.Stdout, cmd.Stderr = r.stdout, r.stderr
	r.bgCmd = startBgCmd(t, cmd)
	return r
}

// indexSummary is `bgbfs index`'s summary line, e.g. "indexed 12 archives
// (24 members, 33.1 MB compressed) in 4.2s, 7.9 MB/s; 3 current; 1 failed".
type indexSummary struct {
	Line             string
	Indexed, Members int
	Current, Failed  int // 0 when the line leaves them out
}

var (
	summaryHead    = regexp.MustCompile(`^indexed (\d+) archives? \((\d+) members?`)
	summaryCurrent = regexp.MustCompile(`; (\d+) current\b`)
	summaryFailed  = regexp.MustCompile(`; (\d+) failed\b`)
)

// parseIndexSummary checks that stdout is exactly one summary line and
// reads it.
func parseIndexSummary(t testing.TB, stdout string) indexSummary {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(stdout, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("bgbfs index wrote %d lines on stdout (not a terminal), want one summary line:\n%s", len(lines), stdout)
	}
	s := indexSummary{Line: lines[0]}
	m := summaryHead.FindStringSubmatch(s.Line)
	if m == nil {
		t.Fatalf("summary line %q does not start %q", s.Line, "indexed N archives (M members")
	}
	s.Indexed, _ = strconv.Atoi(m[1])
	s.Members, _ = strconv.Atoi(m[2])
	if m := summaryCurrent.FindStringSubmatch(s.Line); m != nil {
		s.Current, _ = strconv.Atoi(m[1])
	}
	if m := summaryFailed.FindStringSubmatch(s.Line); m != nil {
		s.Failed, _ = strconv.Atoi(m[1])
	}
	return s
}

// TestIndexCommand runs `bgbfs index` over the fixture's prefix into a
// local DIR through a CountingProxy:
//   - it exits 0 with one summary line counting every archive and every
//     deflated member, writes one .done file per archive (its directory
//     and indexes) and no member index file, and fetches each member once
//     (at most 10% more than the archives' bytes);
//   - run again, it exits 0 reporting every archive current, with no GET
//     of the data bucket;
//   - a mount with that DIR then reads rows of both members of every
//     archive right without building any index.
//
// With --limit-files 2 it indexes two archives only. Over a prefix where
// one archive's windows.npy deflate data is damaged, it exits 1, names
// that archive on stderr, says how many failed, and indexes the others.
func TestIndexCommand(t *testing.T) {
	d := idxFixture(t)
	srv := env.server(t)
	proxy := newProxy(t, srv.Endpoint)
	source := "s3://" + d.Bucket + "/" + idxTrainPrefix
	n := len(d.Archives)

	t.Run("all", func(t *testing.T) {
		dir := t.TempDir()
		proxy.WaitQuiet(200*time.Millisecond, 10*time.Second)
		proxy.Reset()
		res := runIndex(t, proxy.URL, source, dir)
		c := proxy.Reset()
		t.Logf("first run: exit %d in %v; stdout %q; %v", res.ExitCode, res.Elapsed.Round(time.Millisecond), res.Stdout, c)
		if res.ExitCode != 0 {
			t.Fatalf("bgbfs index exited %d; stderr:\n%s", res.ExitCode, lastBytes(res.Stderr, 3000))
		}
		s := parseIndexSummary(t, res.Stdout)
		if s.Indexed != n || s.Members != d.DeflatedMembers || s.Current != 0 || s.Failed != 0 {
			t.Errorf("summary %q: want %d archives, %d members, none current or failed", s.Line, n, d.DeflatedMembers)
		}
		if idx := checkIndexDir(t, dir); len(idx) != 0 {
			t.Errorf("%d member index files in DIR, want none: the .done files hold the indexes", len(idx))
		}
		if done := idxFilesUnder(t, dir, ".done"); len(done) != n {
			t.Errorf("%d .done markers in DIR, want %d (one per archive)", len(done), n)
		}
		if limit := d.ArchiveBytes + d.ArchiveBytes/10; c.GetObjectBytes > limit {
			t.Errorf("bgbfs index fetched %d bytes for archives of %d bytes in all: members fetched more than once?", c.GetObjectBytes, d.ArchiveBytes)
		}

		proxy.WaitQuiet(200*time.Millisecond, 10*time.Second)
		proxy.Reset()
		res = runIndex(t, proxy.URL, source, dir)
		c, reqs := proxy.Take()
		t.Logf("second run: exit %d in %v; stdout %q; %v", res.ExitCode, res.Elapsed.Round(time.Millisecond), res.Stdout, c)
		if res.ExitCode != 0 {
			t.Fatalf("bgbfs index exited %d; stderr:\n%s", res.ExitCode, lastBytes(res.Stderr, 3000))
		}
		s = parseIndexSummary(t, res.Stdout)
		if s.Indexed != 0 || s.Current != n || s.Failed != 0 {
			t.Errorf("summary %q of a run over an indexed prefix: want 0 indexed, %d current", s.Line, n)
		}
		if gets := getsOf(reqs, d.Bucket); len(gets) != 0 {
			t.Errorf("the run over an indexed prefix made %d GETs of the data bucket, want none:\n%s", len(gets), testbed.FormatRequests(gets, 20))
		}

		// Through the endpoint bgbfs index used: what the dir holds is
		// of the store that endpoint names.
		m := mountIdx(t, idxMountSpec{CacheDir: dir, Endpoint: proxy.URL})
		readRows(t, m.Mountpoint, d.Archives, "windows.npy", func(i int) int64 { return int64(i % idxWindows) })
		readRows(t, m.Mountpoint, d.Archives, "labels.npy", func(i int) int64 { return int64((i + 1) % idxWindows) })
		mc := m.Counts(t)
		t.Logf("mount after bgbfs index: %v", mc)
		if mc.Builds != 0 {
			t.Errorf("a mount on the DIR bgbfs index filled built %v indexes, want 0", mc.Builds)
		}
		if mc.Loads < float64(2*n) {
			t.Errorf("the mount loaded %v indexes, want at least %d (both members of every archive were read)", mc.Loads, 2*n)
		}
		m.Unmount(t)

		// The archive file bgbfs index wrote holds each zip directory: a
		// mount reading the first window of every archive (far from its
		// end) never reads an archive's tail. Its dir holds what bgbfs
		// index wrote and no blocks (the mount above kept some).
		indexOnly := t.TempDir()
		if out, err := exec.Command("cp", "-r", filepath.Join(dir, "indexes"), indexOnly).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v: %s", err, out)
		}
		m = mountIdx(t, idxMountSpec{CacheDir: indexOnly, Endpoint: proxy.URL})
		proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
		proxy.Reset()
		readRows(t, m.Mountpoint, d.Archives, "windows.npy", func(int) int64 { return 0 })
		proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
		_, mreqs := proxy.Take()
		gets := getsOf(mreqs, d.Bucket)
		t.Logf("first windows of %d archives after bgbfs index: %d GETs", n, len(gets))
		for _, r := range gets {
			for _, a := range d.Archives {
				path, _, _ := strings.Cut(r.URI, "?")
				if strings.HasSuffix(path, "/"+a.Name) && strings.HasSuffix(r.Range, fmt.Sprintf("-%d", len(a.Data)-1)) {
					t.Errorf("the mount read the tail of %s (%s): its zip directory is in the dir", a.Name, r.Range)
				}
			}
		}
	})

	t.Run("limit-files", func(t *testing.T) {
		dir := t.TempDir()
		res := runIndex(t, srv.Endpoint, source, dir, "--limit-files", "2")
		t.Logf("exit %d; stdout %q", res.ExitCode, res.Stdout)
		if res.ExitCode != 0 {
			t.Fatalf("bgbfs index --limit-files 2 exited %d; stderr:\n%s", res.ExitCode, lastBytes(res.Stderr, 3000))
		}
		if s := parseIndexSummary(t, res.Stdout); s.Indexed != 2 {
			t.Errorf("summary %q: want 2 archives indexed", s.Line)
		}
		if done := idxFilesUnder(t, dir, ".done"); len(done) != 2 {
			t.Errorf("%d .done markers with --limit-files 2, want 2: %q", len(done), done)
		}
		if idx := checkIndexDir(t, dir); len(idx) != 0 {
			t.Errorf("%d member index files with --limit-files 2, want none", len(idx))
		}
	})

	t.Run("damaged archive", func(t *testing.T) {
		dir := t.TempDir()
		badSource := "s3://" + d.Bucket + "/" + idxBadPrefix
		res := runIndex(t, srv.Endpoint, badSource, dir)
		t.Logf("exit %d; stdout %q; stderr:\n%s", res.ExitCode, res.Stdout, res.Stderr)
		if res.ExitCode != 1 {
			t.Errorf("bgbfs index over a damaged archive exited %d, want 1", res.ExitCode)
		}
		lines := res.StderrLines()
		want := "bgbfs: index " + badSource + d.BadName + ": "
		var named []string
		for _, l := range lines {
			if strings.HasPrefix(l, "bgbfs: index ") {
				named = append(named, l)
			}
		}
		if len(named) != 1 || !strings.HasPrefix(named[0], want) || len(strings.TrimPrefix(named[0], want)) == 0 {
			t.Errorf("stderr lines naming failed archives: %q; want one, %q followed by the reason", named, want)
		}
		wantLast := "bgbfs: 1 of " + strconv.Itoa(len(d.Bad)) + " archives failed"
		if len(lines) == 0 || lines[len(lines)-1] != wantLast {
			t.Errorf("stderr's last line is not %q:\n%s", wantLast, res.Stderr)
		}
		if s := parseIndexSummary(t, res.Stdout); s.Indexed != len(d.Bad)-1 || s.Failed != 1 {
			t.Errorf("summary %q: want %d indexed, 1 failed", s.Line, len(d.Bad)-1)
		}
		if done := idxFilesUnder(t, dir, ".done"); len(done) != len(d.Bad)-1 {
			t.Errorf("%d .done markers, want %d (the archives that are whole): %q", len(done), len(d.Bad)-1, done)
		}
		if idx := checkIndexDir(t, dir); len(idx) != 0 {
			t.Errorf("%d member index files, want none", len(idx))
		}
	})
}

// TestIndexCommandS3CacheDir runs `bgbfs index --cache-dir
// s3://OTHER/idx/`: one .done object per archive lands in that bucket (no
// member index object); a
// mount with the same --cache-dir then reads every archive right without
// building an index, and writes nothing there.
func TestIndexCommandS3CacheDir(t *testing.T) {
	d := idxFixture(t)
	srv := env.server(t)
	ctx := context.Background()
	other := newBucket(t, srv, "bgbfs-idxcache")
	cacheDir := "s3://" + other + "/idx/"
	n := len(d.Archives)

	res := runIndex(t, srv.Endpoint, "s3://"+d.Bucket+"/"+idxTrainPrefix, cacheDir)
	t.Logf("exit %d in %v; stdout %q", res.ExitCode, res.Elapsed.Round(time.Millisecond), res.Stdout)
	if res.ExitCode != 0 {
		t.Fatalf("bgbfs index --cache-dir %s exited %d; stderr:\n%s", cacheDir, res.ExitCode, lastBytes(res.Stderr, 3000))
	}
	if s := parseIndexSummary(t, res.Stdout); s.Indexed != n {
		t.Errorf("summary %q: want %d archives indexed", s.Line, n)
	}
	listed := func() []testbed.ListedObject {
		objs, err := srv.Admin().ListAll(ctx, other, "")
		if err != nil {
			t.Fatal(err)
		}
		return objs
	}
	before := listed()
	var idx, done int
	for _, o := range before {
		switch {
		case !strings.HasPrefix(o.Key, "idx/"):
			t.Errorf("object %s outside the cache prefix idx/", o.Key)
		case strings.HasSuffix(o.Key, ".idx"):
			idx++
			b, err := srv.Admin().GetBytes(ctx, other, o.Key)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkIndexFile(b); err != nil {
				t.Errorf("index object %s: %v", o.Key, err)
			}
		case strings.HasSuffix(o.Key, ".done"):
			done++
		}
	}
	t.Logf("%d objects in %s: %d .idx, %d .done", len(before), cacheDir, idx, done)
	if idx != 0 || done != n {
		t.Errorf("%d .idx and %d .done objects in %s, want 0 and %d", idx, done, cacheDir, n)
	}

	m := mountIdx(t, idxMountSpec{CacheDir: cacheDir})
	readRows(t, m.Mountpoint, d.Archives, "windows.npy", func(i int) int64 { return int64((i + 2) % idxWindows) })
	c := m.Counts(t)
	t.Logf("mount with --cache-dir %s: %v", cacheDir, c)
	if c.Builds != 0 {
		t.Errorf("the mount built %v indexes, want 0: they were all in %s", c.Builds, cacheDir)
	}
	if c.Loads < float64(n) {
		t.Errorf("the mount loaded %v indexes, want at least %d", c.Loads, n)
	}
	m.Unmount(t)
	after := listed()
	if len(after) != len(before) {
		t.Errorf("the mount changed %s: %d objects before, %d after", cacheDir, len(before), len(after))
	}
	for i := range min(len(before), len(after)) {
		if before[i].Key != after[i].Key || before[i].ETag != after[i].ETag {
			t.Errorf("the mount changed %s: %s (%s) became %s (%s)", cacheDir, before[i].Key, before[i].ETag, after[i].Key, after[i].ETag)
			break
		}
	}
}

// TestIndexCommandKeepsOneCopy counts the index files and bytes in a
// local DIR: after `bgbfs index` into a fresh DIR (one .done file per
// archive, no member file), and after a mount that built and saved the
// index of every member then `bgbfs index` over the same DIR (the
// mount's files taken into the .done files and removed: the same files
// and bytes as the fresh run). A mount over that DIR then builds no
// index and reads every row of both members right.
func TestIndexCommandKeepsOneCopy(t *testing.T) {
	d := idxFixture(t)
	srv := env.server(t)
	source := "s3://" + d.Bucket + "/" + idxTrainPrefix
	n := len(d.Archives)
	indexIn := func(dir string) (idx, done int, bytes int64) {
		t.Helper()
		res := runIndex(t, srv.Endpoint, source, dir)
		if res.ExitCode != 0 {
			t.Fatalf("bgbfs index exited %d; stderr:\n%s", res.ExitCode, lastBytes(res.Stderr, 3000))
		}
		t.Logf("bgbfs index into %s: %s", dir, strings.TrimSpace(res.Stdout))
		return indexFilesIn(t, dir)
	}

	fresh := t.TempDir()
	idx, done, freshBytes := indexIn(fresh)
	t.Logf("after bgbfs index into a fresh DIR: %d .idx, %d .done, %d bytes of index files", idx, done, freshBytes)
	if idx != 0 || done != n {
		t.Errorf("a fresh DIR after bgbfs index holds %d .idx and %d .done files, want 0 and %d", idx, done, n)
	}

	used := t.TempDir()
	m := mountIdx(t, idxMountSpec{CacheDir: used})
	readRows(t, m.Mountpoint, d.Archives, "windows.npy", func(i int) int64 { return int64(i % idxWindows) })
	readRows(t, m.Mountpoint, d.Archives, "labels.npy", func(i int) int64 { return int64(i % idxWindows) })
	m.WaitSaves(t, float64(d.DeflatedMembers))
	m.Unmount(t)
	idx, done, mountBytes := indexFilesIn(t, used)
	t.Logf("after a mount that built every index: %d .idx, %d .done, %d bytes", idx, done, mountBytes)
	if idx != d.DeflatedMembers || done != 0 {
		t.Fatalf("the mount left %d .idx and %d .done files, want %d and 0 (or the rest proves nothing)", idx, done, d.DeflatedMembers)
	}
	idx, done, usedBytes := indexIn(used)
	t.Logf("then after bgbfs index: %d .idx, %d .done, %d bytes", idx, done, usedBytes)
	if idx != 0 || done != n || usedBytes != freshBytes {
		t.Errorf("after a mount and bgbfs index DIR holds %d .idx and %d .done files of %d bytes; want 0 and %d of %d bytes, as bgbfs index alone writes",
			idx, done, usedBytes, n, freshBytes)
	}

	for _, dir := range []string{fresh, used} {
		m := mountIdx(t, idxMountSpec{CacheDir: dir})
		for _, member := range []string{"windows.npy", "labels.npy"} {
			for row := range int64(idxWindows) {
				readRows(t, m.Mountpoint, d.Archives, member, func(int) int64 { return row })
			}
		}
		c := m.Counts(t)
		t.Logf("a mount over %s, every row read: %v", dir, c)
		if c.Builds != 0 || c.Loads < float64(d.DeflatedMembers) {
			t.Errorf("a mount over the DIR bgbfs index filled: %v; want 0 builds and at least %d loads", c, d.DeflatedMembers)
		}
		m.Unmount(t)
	}
}

// indexFilesIn counts the member index files (.idx) and archive files
// (.done) under dir's index area, and their bytes.
func indexFilesIn(t testing.TB, dir string) (idx, done int, bytes int64) {
	t.Helper()
	for suffix, count := range map[string]*int{".idx": &idx, ".done": &done} {
		files := idxFilesUnder(t, dir, suffix)
		*count = len(files)
		for _, rel := range files {
			fi, err := os.Stat(filepath.Join(dir, rel))
			if err != nil {
				t.Fatal(err)
			}
			bytes += fi.Size()
		}
	}
	return idx, done, bytes
}
