package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/cmd/bgbfs/mountinfo"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// The smoke-test view (--limit-files, BGB_LIMIT_FILES, --limit-pattern),
// checked against a bucket laid out like the training cache: a train/
// directory of 5,000 matching names with sidecars sorting before and after
// them and a subdirectory sorting last, a dev/ directory of numpy-written
// files, and a root sidecar. What each mount shows is compared with a
// model of SEMANTICS.md ("The smoke-test view"); listing costs are counted
// at a CountingProxy.

const (
	smokeBucket   = "bgbfs-smoke"
	smokeTrainNPZ = 5000
	smokeDevNPZ   = 7
	// listPage is how many keys and common prefixes one ListObjectsV2
	// page holds (S3's and MinIO's default and maximum).
	listPage = 1000
	// npzPattern is the default --limit-pattern.
	npzPattern = "*.npz"
)

type smokeData struct {
	Bucket   string
	Objects  map[string][]byte // key → content
	LocalDev string            // the local copy of dev/ (gen_npz.py's output)
}

// smokeEntry is one name directly in a directory.
type smokeEntry struct {
	Name  string
	IsDir bool
}

// Entries returns what a complete delimited listing of dir ("" is the
// root) holds, in byte-wise order: files and subdirectories.
func (s *smokeData) Entries(dir string) []smokeEntry {
	prefix := ""
	if dir != "" {
		prefix = dir + "/"
	}
	seen := map[string]bool{}
	var out []smokeEntry
	for k := range s.Objects {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		name, _, isDir := strings.Cut(rest, "/")
		if !seen[name] {
			seen[name] = true
			out = append(out, smokeEntry{name, isDir})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Matching returns the file names of dir that match pattern, sorted.
func (s *smokeData) Matching(dir, pattern string) []string {
	var out []string
	for _, e := range s.Entries(dir) {
		if ok, _ := path.Match(pattern, e.Name); ok && !e.IsDir {
			out = append(out, e.Name)
		}
	}
	return out
}

// smokeFixture returns the smoke-view bucket, uploading it on first use.
func smokeFixture(t testing.TB) *smokeData {
	t.Helper()
	srv := env.server(t)
	return env.smoke.get(t, "smoke-view bucket", func() (*smokeData, error) {
		return buildSmoke(srv, filepath.Join(env.work, "smoke-src"))
	})
}

func buildSmoke(srv *testbed.MinIO, dir string) (*smokeData, error) {
	s := &smokeData{Bucket: smokeBucket, Objects: map[string][]byte{}, LocalDev: filepath.Join(dir, "dev")}
	for i := range smokeTrainNPZ {
		k := fmt.Sprintf("train/aaaa%05d_windows.npz", i)
		s.Objects[k] = seededBytes(k, 24+i%40)
	}
	// '_' sorts before 'a', "manifest.json" and "zzsub" after "aaaa…".
	s.Objects["train/_dataset_index.json"] = []byte(`{"files": 5000, "windows": 15000}` + "\n")
	s.Objects["train/manifest.json"] = []byte(`[{"cache_file": "aaaa00000_windows.npz", "window_idx": 0}]` + "\n")
	s.Objects["train/zzsub/inner.txt"] = []byte("in a subdirectory that sorts after every npz\n")
	s.Objects[".cache_metadata.json"] = []byte(`{"version": 1, "source": "tusz", "smoke": true}` + "\n")
	if err := testbed.GenNPZ(env.repo, dir, testbed.NPZSpec{Train: 0, Dev: smokeDevNPZ, Windows: 1, Seed: 4242}); err != nil {
		return nil, err
	}
	files, err := os.ReadDir(s.LocalDev)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(s.LocalDev, f.Name()))
		if err != nil {
			return nil, err
		}
		s.Objects["dev/"+f.Name()] = b
	}
	if n := len(s.Matching("dev", npzPattern)); n != smokeDevNPZ {
		return nil, fmt.Errorf("gen_npz.py wrote %d dev npz files, want %d", n, smokeDevNPZ)
	}
	var objs []testbed.Object
	for k, v := range s.Objects {
		objs = append(objs, testbed.Object{Key: k, Data: v})
	}
	if err := putBucket(srv, s.Bucket, objs, 16); err != nil {
		return nil, err
	}
	return s, nil
}

// smokeView models what readdir of a directory shows under a limit of n
// matching files (-1: no limit). A limited directory is listed page by
// page (listPage entries each, files and subdirectories together, in
// byte-wise order) only until the pages read hold n matching files. Of
// the entries read, readdir shows the first n matching files, every
// other file and every subdirectory. It also returns the pages listed.
func smokeView(all []smokeEntry, n int, pattern string) (names []string, pages int) {
	matches := func(e smokeEntry) bool {
		ok, _ := path.Match(pattern, e.Name)
		return ok && !e.IsDir
	}
	read := len(all)
	pages = max(1, (len(all)+listPage-1)/listPage)
	if n >= 0 {
		pages = 1
		for pages*listPage < len(all) {
			count := 0
			for _, e := range all[:pages*listPage] {
				if matches(e) {
					count++
				}
			}
			if count >= n {
				break
			}
			pages++
		}
		read = min(len(all), pages*listPage)
	}
	seen := 0
	for _, e := range all[:read] {
		if matches(e) {
			if seen >= n && n >= 0 {
				continue
			}
			seen++
		}
		names = append(names, e.Name)
	}
	return names, pages
}

// mountSmoke mounts the whole smoke bucket through endpoint with extra
// environment entries (VAR=value).
func mountSmoke(t testing.TB, s *smokeData, endpoint string, args []string, extraEnv ...string) *testbed.Mounted {
	t.Helper()
	return mount(t, mountSpec{
		Source:   "s3://" + s.Bucket + "/",
		Endpoint: endpoint,
		Creds:    rootCreds(env.server(t)),
		Args:     args,
		Env:      extraEnv,
	})
}

// diffNames describes how got differs from want.
func diffNames(got, want []string) string {
	var missing, extra []string
	for _, w := range want {
		if !slices.Contains(got, w) {
			missing = append(missing, w)
		}
	}
	for _, g := range got {
		if !slices.Contains(want, g) {
			extra = append(extra, g)
		}
	}
	clip := func(s []string) []string {
		if len(s) > 10 {
			return append(s[:10:10], fmt.Sprintf("... %d more", len(s)-10))
		}
		return s
	}
	return fmt.Sprintf("%d names, want %d; missing %q; unexpected %q", len(got), len(want), clip(missing), clip(extra))
}

// TestSmokeViewEnvLimit mounts with BGB_LIMIT_FILES=3 and checks readdir
// of train/ (the first 3 npz and the sidecar before them, for one LIST),
// find and du, dev/, the sidecars past the listed page by name, ENOENT for
// the hidden files with no request, and np.load of a visible file.
func TestSmokeViewEnvLimit(t *testing.T) {
	s := smokeFixture(t)
	srv := env.server(t)
	proxy := newProxy(t, srv.Endpoint)
	m := mountSmoke(t, s, proxy.URL, []string{"--metadata-ttl", "10m"}, "BGB_LIMIT_FILES=3")
	mp := m.Mountpoint
	trainNPZ := s.Matching("train", npzPattern)
	devNPZ := s.Matching("dev", npzPattern)

	t.Run("readdir_train_one_LIST", func(t *testing.T) {
		proxy.Reset()
		got, err := dirNames(filepath.Join(mp, "train"))
		if err != nil {
			t.Fatal(err)
		}
		c, reqs := proxy.Take()
		want := append([]string{"_dataset_index.json"}, trainNPZ[:3]...)
		if !slices.Equal(got, want) {
			t.Errorf("readdir train: %q, want %q", got, want)
		}
		t.Logf("readdir of train (%d objects) with BGB_LIMIT_FILES=3: %v", smokeTrainNPZ+3, c)
		if c.ListObjectsV2 != 1 || c.Total() != 1 {
			t.Errorf("readdir of the limited train/ cost %v, want exactly 1 ListObjectsV2; requests:\n%s", c, testbed.FormatRequests(reqs, 20))
		}
	})

	t.Run("dev", func(t *testing.T) {
		got, err := dirNames(filepath.Join(mp, "dev"))
		if err != nil {
			t.Fatal(err)
		}
		if want := append(slices.Clone(devNPZ[:3]), "manifest.json"); !slices.Equal(got, want) {
			t.Errorf("readdir dev: %q, want %q", got, want)
		}
	})

	t.Run("find_and_du", func(t *testing.T) {
		want := []string{".", ".cache_metadata.json", "dev", "dev/manifest.json", "train", "train/_dataset_index.json"}
		for _, n := range devNPZ[:3] {
			want = append(want, "dev/"+n)
		}
		for _, n := range trainNPZ[:3] {
			want = append(want, "train/"+n)
		}
		sort.Strings(want)
		rel := func(p string) string {
			r, err := filepath.Rel(mp, p)
			if err != nil {
				t.Fatal(err)
			}
			return filepath.ToSlash(r)
		}
		out, err := exec.Command("find", mp).Output()
		if err != nil {
			t.Fatalf("find: %v", err)
		}
		var found []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			found = append(found, rel(l))
		}
		sort.Strings(found)
		if !slices.Equal(found, want) {
			t.Errorf("find: %s", diffNames(found, want))
		}
		out, err = exec.Command("du", "-a", mp).Output()
		if err != nil {
			t.Fatalf("du -a: %v", err)
		}
		var du []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			_, p, ok := strings.Cut(l, "\t")
			if !ok {
				t.Fatalf("du -a line %q", l)
			}
			du = append(du, rel(p))
		}
		sort.Strings(du)
		if !slices.Equal(du, want) {
			t.Errorf("du -a: %s", diffNames(du, want))
		}
	})

	t.Run("sidecars_past_the_page_by_name", func(t *testing.T) {
		// Keep train/ open so that drop_caches cannot make the kernel
		// forget its inode: what is measured is bgbfs's own lookup cache.
		dir, err := os.Open(filepath.Join(mp, "train"))
		if err != nil {
			t.Fatal(err)
		}
		defer dir.Close()
		cases := []struct {
			name  string
			isDir bool
		}{{"manifest.json", false}, {"zzsub", true}}
		for _, c := range cases {
			p := filepath.Join(mp, "train", c.name)
			proxy.Reset()
			fi, err := os.Stat(p)
			cost, reqs := proxy.Take()
			if err != nil {
				t.Errorf("stat train/%s: %v; requests:\n%s", c.name, errnoOf(err), testbed.FormatRequests(reqs, 10))
				continue
			}
			t.Logf("first stat of train/%s: %v", c.name, cost)
			if fi.IsDir() != c.isDir {
				t.Errorf("train/%s: directory %v, want %v", c.name, fi.IsDir(), c.isDir)
			}
			if cost.ListObjectsV2 < 1 || cost.ListObjectsV2 > 2 || cost.Total() != cost.ListObjectsV2 {
				t.Errorf("first stat of train/%s cost %v, want 1 or 2 small LISTs and nothing else; requests:\n%s",
					c.name, cost, testbed.FormatRequests(reqs, 10))
			}
		}
		got, err := os.ReadFile(filepath.Join(mp, "train", "manifest.json"))
		if err != nil || !bytes.Equal(got, s.Objects["train/manifest.json"]) {
			t.Errorf("train/manifest.json: %q, %v; want the source's %d bytes", got, err, len(s.Objects["train/manifest.json"]))
		}
		got, err = os.ReadFile(filepath.Join(mp, "train", "zzsub", "inner.txt"))
		if err != nil || !bytes.Equal(got, s.Objects["train/zzsub/inner.txt"]) {
			t.Errorf("train/zzsub/inner.txt: %q, %v", got, err)
		}

		// Within the TTL the answers are cached: no request once the
		// kernel has forgotten the names.
		dropDentries(t)
		proxy.Reset()
		for _, c := range cases {
			if _, err := os.Stat(filepath.Join(mp, "train", c.name)); err != nil {
				t.Errorf("second stat of train/%s: %v", c.name, errnoOf(err))
			}
		}
		if c, reqs := proxy.Take(); c.Total() != 0 {
			t.Errorf("stat of the sidecars again within the TTL cost %v, want nothing; requests:\n%s", c, testbed.FormatRequests(reqs, 10))
		}
	})

	t.Run("hidden_are_ENOENT", func(t *testing.T) {
		cases := []struct {
			name    string
			maxList int64 // LISTs the lookup may cost
		}{
			{trainNPZ[3], 0}, // 4th: on the page read, beyond the limit
			// The last npz of the page read, and the 5,000th, past the
			// page: a directory of that name (keys under "NAME/", listed
			// after the page) would be shown, so one one-key LIST asks.
			{trainNPZ[998], 1},
			{trainNPZ[smokeTrainNPZ-1], 1},
			{"zzz_no_such_sidecar.json", 2}, // a non-matching name past the page is asked for
			{"_no_such_early_name.json", 0}, // a name inside the page read that is not there
		}
		for _, c := range cases {
			p := filepath.Join(mp, "train", c.name)
			proxy.Reset()
			_, errStat := os.Stat(p)
			f, errOpen := os.Open(p)
			if errOpen == nil {
				f.Close()
			}
			cost, reqs := proxy.Take()
			if !isENOENT(errStat) || !isENOENT(errOpen) {
				t.Errorf("train/%s: stat %v, open %v; want ENOENT for both", c.name, errStat, errOpen)
			}
			if cost.ListObjectsV2 > c.maxList || cost.Total() != cost.ListObjectsV2 {
				t.Errorf("stat and open of train/%s cost %v, want at most %d LISTs and nothing else; requests:\n%s",
					c.name, cost, c.maxList, testbed.FormatRequests(reqs, 10))
			}
		}
	})

	t.Run("numpy_visible_dev_file", func(t *testing.T) {
		name := devNPZ[2] // the last visible one
		out, err := exec.Command(testbed.Python, "-c", numpyCompare,
			filepath.Join(mp, "dev", name), filepath.Join(s.LocalDev, name)).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "OK" {
			t.Errorf("np.load of dev/%s through the limited mount: %v\n%s", name, err, out)
		}
	})
}

// TestSmokeViewFlags checks --limit-files per directory and as a
// default, its precedence over BGB_LIMIT_FILES, an empty variable, a
// limit spanning listing pages and --limit-pattern: readdir of the root,
// train/ and dev/ against the model, and the LISTs train/ cost.
func TestSmokeViewFlags(t *testing.T) {
	s := smokeFixture(t)
	srv := env.server(t)
	cases := []struct {
		name    string
		env     []string
		args    []string
		pattern string         // "" is *.npz
		limits  map[string]int // by directory ("" root); absent means no limit
	}{
		{
			name:   "per-directory flags",
			args:   []string{"--limit-files", "train=2", "--limit-files", "dev=1"},
			limits: map[string]int{"train": 2, "dev": 1},
		},
		{
			name:   "flag default beats env",
			env:    []string{"BGB_LIMIT_FILES=3"},
			args:   []string{"--limit-files", "1"},
			limits: map[string]int{"": 1, "train": 1, "dev": 1},
		},
		{
			name:   "per-directory flag, env ignored",
			env:    []string{"BGB_LIMIT_FILES=3"},
			args:   []string{"--limit-files", "train=2"},
			limits: map[string]int{"train": 2},
		},
		{
			name:   "default and per-directory flags",
			args:   []string{"--limit-files", "2", "--limit-files", "dev=5"},
			limits: map[string]int{"": 2, "train": 2, "dev": 5},
		},
		{
			name:   "zero",
			args:   []string{"--limit-files", "0"},
			limits: map[string]int{"": 0, "train": 0, "dev": 0},
		},
		{
			name:   "empty env is no limit",
			env:    []string{"BGB_LIMIT_FILES="},
			limits: map[string]int{},
		},
		{
			name:   "limit spanning two pages",
			args:   []string{"--limit-files", "train=1500"},
			limits: map[string]int{"train": 1500},
		},
		{
			name:    "limit-pattern",
			args:    []string{"--limit-files", "dev=0", "--limit-pattern", "*.json"},
			pattern: "*.json",
			limits:  map[string]int{"dev": 0},
		},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			pattern := c.pattern
			if pattern == "" {
				pattern = npzPattern
			}
			proxy := newProxy(t, srv.Endpoint)
			m := mountSmoke(t, s, proxy.URL, append([]string{"--metadata-ttl", "10m"}, c.args...), c.env...)
			for _, dir := range []string{"", "train", "dev"} {
				n, limited := c.limits[dir]
				if !limited {
					n = -1
				}
				want, pages := smokeView(s.Entries(dir), n, pattern)
				proxy.Reset()
				got, err := dirNames(filepath.Join(m.Mountpoint, dir))
				if err != nil {
					t.Fatalf("readdir %q: %v", dir, err)
				}
				cost := proxy.Reset()
				if !slices.Equal(got, want) {
					t.Errorf("readdir %q (limit %d, pattern %s): %s", dir, n, pattern, diffNames(got, want))
				}
				if dir == "train" {
					t.Logf("readdir train (limit %d): %d names, %v", n, len(got), cost)
					if cost.ListObjectsV2 != int64(pages) || cost.Total() != cost.ListObjectsV2 {
						t.Errorf("readdir train (limit %d) cost %v, want exactly %d ListObjectsV2", n, cost, pages)
					}
				}
				// The first matching file beyond the limit is ENOENT.
				if matching := s.Matching(dir, pattern); n >= 0 && n < len(matching) {
					if _, err := os.Stat(filepath.Join(m.Mountpoint, dir, matching[n])); !isENOENT(err) {
						t.Errorf("stat %s/%s (beyond the limit %d): %v, want ENOENT", dir, matching[n], n, err)
					}
				}
			}
		})
	}
}

// listsOf counts the ListObjectsV2 requests of prefix.
func listsOf(reqs []testbed.Request, prefix string) int {
	n := 0
	for _, r := range reqs {
		if u, err := url.ParseRequestURI(r.URI); err == nil && r.Op == testbed.OpListObjectsV2 && u.Query().Get("prefix") == prefix {
			n++
		}
	}
	return n
}

// refreshBuckets numbers the buckets TestSmokeViewRefresh makes, so that
// -count=N runs against one MinIO do not collide.
var refreshBuckets atomic.Int64

// TestSmokeViewRefresh checks that the view is the same on repeated
// listings and after a TTL refresh, and that a new matching object that
// sorts first shows up after the TTL and pushes the previous 3rd out.
func TestSmokeViewRefresh(t *testing.T) {
	srv := env.server(t)
	ctx := context.Background()
	admin := srv.Admin()
	bucket := fmt.Sprintf("bgbfs-smoke-refresh-%d", refreshBuckets.Add(1))
	if err := admin.CreateBucket(ctx, bucket); err != nil {
		t.Fatal(err)
	}
	// More than a page of matching names, a sidecar after them.
	const count = 1200
	var objs []testbed.Object
	var names []string
	for i := range count {
		name := fmt.Sprintf("aaaa%05d_windows.npz", i)
		names = append(names, name)
		objs = append(objs, testbed.Object{Key: "train/" + name, Data: seededBytes(name, 40)})
	}
	objs = append(objs, testbed.Object{Key: "train/manifest.json", Data: []byte("[]\n")})
	if err := admin.PutMany(ctx, bucket, objs, 16); err != nil {
		t.Fatal(err)
	}
	proxy := newProxy(t, srv.Endpoint)
	const ttl = time.Second
	m := mount(t, mountSpec{
		Source:   "s3://" + bucket + "/",
		Endpoint: proxy.URL,
		Creds:    rootCreds(srv),
		Args:     []string{"--metadata-ttl", ttl.String()},
		Env:      []string{"BGB_LIMIT_FILES=3"},
	})
	train := filepath.Join(m.Mountpoint, "train")
	readdir := func(what string) []string {
		t.Helper()
		got, err := dirNames(train)
		if err != nil {
			t.Fatalf("%s: readdir: %v", what, err)
		}
		return got
	}
	afterTTL := func() {
		time.Sleep(ttl + ttl/2)
		dropDentries(t)
	}

	want := names[:3]
	if got := readdir("first listing"); !slices.Equal(got, want) {
		t.Errorf("first listing: %q, want %q", got, want)
	}
	if got := readdir("repeated listing"); !slices.Equal(got, want) {
		t.Errorf("repeated listing: %q, want %q", got, want)
	}
	afterTTL()
	proxy.Reset()
	if got := readdir("after the TTL"); !slices.Equal(got, want) {
		t.Errorf("after the TTL: %q, want %q", got, want)
	}
	// The root is listed again too (its listing is as old); train/ must
	// be, in one page.
	if c, reqs := proxy.Take(); listsOf(reqs, "train/") != 1 {
		t.Errorf("readdir after the TTL cost %v with %d LISTs of train/, want 1 (listed again, one page); requests:\n%s",
			c, listsOf(reqs, "train/"), testbed.FormatRequests(reqs, 10))
	}

	first := "aaa_first_windows.npz" // '_' < 'a': sorts before every other name
	firstData := []byte("the new first file\n")
	if err := admin.PutBytes(ctx, bucket, "train/"+first, firstData); err != nil {
		t.Fatal(err)
	}
	afterTTL()
	want = []string{first, names[0], names[1]}
	if got := readdir("after adding " + first); !slices.Equal(got, want) {
		t.Errorf("after adding %s and the TTL: %q, want %q", first, got, want)
	}
	if _, err := os.Stat(filepath.Join(train, names[2])); !isENOENT(err) {
		t.Errorf("stat of the previous 3rd file %s: %v, want ENOENT", names[2], err)
	}
	if got, err := os.ReadFile(filepath.Join(train, first)); err != nil || !bytes.Equal(got, firstData) {
		t.Errorf("reading %s: %q, %v", first, got, err)
	}
}

// TestSmokeViewBadEnv runs bgbfs mount with BGB_LIMIT_FILES values that
// are not whole numbers 0 or more: each must exit non-zero within 15 s
// with one stderr line naming the variable and the value, and mount
// nothing.
func TestSmokeViewBadEnv(t *testing.T) {
	s := smokeFixture(t)
	srv := env.server(t)
	for _, value := range []string{"abc", "-1", "2.5"} {
		t.Run(value, func(t *testing.T) {
			mp := newMountpoint(t)
			args := slices.Concat([]string{"mount"}, endpointArgs(srv.Endpoint), []string{"s3://" + s.Bucket + "/", mp})
			before, _ := mountinfo.At(mp)
			t.Cleanup(func() {
				if after, _ := mountinfo.At(mp); len(after) > len(before) {
					_ = testbed.ForceUnmount(mp)
				}
			})
			res := testbed.Run(env.bgbfs, args, append(testbed.CleanEnv(rootCreds(srv)), "BGB_LIMIT_FILES="+value), failFastLimit+5*time.Second)
			t.Logf("BGB_LIMIT_FILES=%s: exit %d after %v; stderr %q", value, res.ExitCode, res.Elapsed.Round(time.Millisecond), res.Stderr)
			if res.ExitCode == 0 || res.TimedOut || res.Elapsed >= failFastLimit {
				t.Errorf("exit %d after %v (timed out %v); want a non-zero exit within %v", res.ExitCode, res.Elapsed, res.TimedOut, failFastLimit)
			}
			if res.LeftBehind {
				t.Errorf("processes of the command were still running after it exited")
			}
			lines := res.StderrLines()
			if len(lines) != 1 {
				t.Errorf("stderr has %d lines, want 1:\n%s", len(lines), res.Stderr)
			} else if !strings.Contains(lines[0], "BGB_LIMIT_FILES") || !strings.Contains(lines[0], value) {
				t.Errorf("stderr line %q does not name BGB_LIMIT_FILES and %q", lines[0], value)
			}
			if after, _ := mountinfo.At(mp); len(after) != len(before) {
				t.Errorf("mounts on %s went from %d to %d", mp, len(before), len(after))
			}
		})
	}
}

// TestSmokeViewSideBySide mounts the bucket twice, in full and limited
// to 3, and checks the limited view is the first 3 matching names of the
// full one in each directory, with the same bytes and attributes, and
// that what only the full view shows is ENOENT in the limited one.
func TestSmokeViewSideBySide(t *testing.T) {
	s := smokeFixture(t)
	srv := env.server(t)
	full := mountSmoke(t, s, srv.Endpoint, nil)
	limited := mountSmoke(t, s, srv.Endpoint, []string{"--limit-files", "3"})

	for _, dir := range []string{"", "dev", "train"} {
		fullNames, err := dirNames(filepath.Join(full.Mountpoint, dir))
		if err != nil {
			t.Fatal(err)
		}
		limNames, err := dirNames(filepath.Join(limited.Mountpoint, dir))
		if err != nil {
			t.Fatal(err)
		}
		if want := s.Entries(dir); len(fullNames) != len(want) {
			t.Errorf("full view of %q: %d names, the bucket has %d", dir, len(fullNames), len(want))
		}
		var fullNPZ, limNPZ, limOther []string
		for _, n := range fullNames {
			if strings.HasSuffix(n, ".npz") {
				fullNPZ = append(fullNPZ, n)
			}
		}
		for _, n := range limNames {
			if strings.HasSuffix(n, ".npz") {
				limNPZ = append(limNPZ, n)
			} else {
				limOther = append(limOther, n)
			}
		}
		wantNPZ := fullNPZ[:min(3, len(fullNPZ))]
		if !slices.Equal(limNPZ, wantNPZ) {
			t.Errorf("%q: limited view shows npz %q, want the full view's first 3 %q", dir, limNPZ, wantNPZ)
		}
		for _, n := range limOther {
			if !slices.Contains(fullNames, n) {
				t.Errorf("%q: the limited view shows %q, the full one does not", dir, n)
			}
		}
		// Everything the limited view shows is the same file in both.
		for _, n := range limNames {
			fp, lp := filepath.Join(full.Mountpoint, dir, n), filepath.Join(limited.Mountpoint, dir, n)
			fi, err1 := os.Stat(fp)
			li, err2 := os.Stat(lp)
			if err1 != nil || err2 != nil {
				t.Errorf("%s/%s: stat full %v, limited %v", dir, n, err1, err2)
				continue
			}
			if fi.IsDir() != li.IsDir() || fi.Size() != li.Size() || (!fi.IsDir() && !fi.ModTime().Equal(li.ModTime())) || fi.Mode() != li.Mode() {
				t.Errorf("%s/%s: full %v %d %v %v, limited %v %d %v %v", dir, n,
					fi.Mode(), fi.Size(), fi.ModTime(), fi.IsDir(), li.Mode(), li.Size(), li.ModTime(), li.IsDir())
			}
			if fi.IsDir() {
				continue
			}
			fb, err1 := os.ReadFile(fp)
			lb, err2 := os.ReadFile(lp)
			key := strings.TrimPrefix(dir+"/"+n, "/")
			if err1 != nil || err2 != nil || !bytes.Equal(fb, lb) || !bytes.Equal(lb, s.Objects[key]) {
				t.Errorf("%s: contents differ between the views or from the source (full %v, limited %v)", key, err1, err2)
			}
		}
		// What only the full view shows is ENOENT in the limited one.
		for _, n := range fullNPZ[min(3, len(fullNPZ)):min(6, len(fullNPZ))] {
			if _, err := os.Stat(filepath.Join(full.Mountpoint, dir, n)); err != nil {
				t.Errorf("full view: stat %s/%s: %v", dir, n, err)
			}
			if _, err := os.Open(filepath.Join(limited.Mountpoint, dir, n)); !isENOENT(err) {
				t.Errorf("limited view: open %s/%s: %v, want ENOENT", dir, n, err)
			}
		}
	}
}
