package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// expectedTree turns a full bucket listing into the tree a mount must
// show: every key a file, every "name/" marker and every prefix of a key a
// directory.
func expectedTree(objs []testbed.ListedObject) (files map[string]testbed.ListedObject, dirs map[string]bool) {
	files, dirs = map[string]testbed.ListedObject{}, map[string]bool{}
	for _, o := range objs {
		p := o.Key
		if strings.HasSuffix(p, "/") {
			p = strings.TrimSuffix(p, "/")
			dirs[p] = true
		} else {
			files[p] = o
		}
		for _, d := range parentDirs(p) {
			dirs[d] = true
		}
	}
	return files, dirs
}

// TestListing walks a mount of the whole bucket and compares it with the
// bucket's own listing: the same paths, markers as directories, equal
// sizes, mtimes equal to LastModified to the second, default modes.
func TestListing(t *testing.T) {
	d := env.dataset(t)
	srv := env.server(t)
	listed, err := srv.Admin().ListAll(context.Background(), d.Bucket, "")
	if err != nil {
		t.Fatal(err)
	}
	// The bucket holds what the fixture put there, or this test proves little.
	var keys []string
	for _, o := range listed {
		keys = append(keys, o.Key)
	}
	if want := d.Keys(); !slices.Equal(keys, want) {
		t.Fatalf("the bucket lists %d keys, the fixture uploaded %d", len(keys), len(want))
	}
	files, dirs := expectedTree(listed)

	m := mountData(t, "")
	got := walkTree(t, m.Mountpoint)

	var missing, extra []string
	for p := range files {
		if _, ok := got[p]; !ok {
			missing = append(missing, p)
		}
	}
	for p := range dirs {
		if _, ok := got[p]; !ok {
			missing = append(missing, p+"/")
		}
	}
	for p := range got {
		if _, ok := files[p]; !ok && !dirs[p] {
			extra = append(extra, p)
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	if len(missing) > 0 {
		t.Errorf("%d paths missing from the mount, e.g. %q", len(missing), missing[:min(10, len(missing))])
	}
	if len(extra) > 0 {
		t.Errorf("%d paths in the mount but not in the bucket, e.g. %q", len(extra), extra[:min(10, len(extra))])
	}

	var bad int
	report := func(format string, args ...any) {
		if bad++; bad <= 20 {
			t.Errorf(format, args...)
		}
	}
	for p, o := range files {
		e, ok := got[p]
		if !ok {
			continue
		}
		switch {
		case !e.Mode.IsRegular():
			report("%s: mode %v, want a regular file", p, e.Mode)
		case e.Size != o.Size:
			report("%s: size %d, want %d", p, e.Size, o.Size)
		case e.Mtime.Unix() != o.LastModified.Unix():
			report("%s: mtime %v, want LastModified %v", p, e.Mtime.UTC(), o.LastModified.UTC())
		case e.Mode.Perm() != 0o444:
			report("%s: permissions %v, want the default 0444", p, e.Mode.Perm())
		}
	}
	for p := range dirs {
		e, ok := got[p]
		if !ok {
			continue
		}
		switch {
		case !e.IsDir:
			report("%s: mode %v, want a directory", p, e.Mode)
		case e.Mode.Perm() != 0o555:
			report("%s: permissions %v, want the default 0555", p, e.Mode.Perm())
		}
	}
	if bad > 20 {
		t.Errorf("... and %d more mismatches", bad-20)
	}

	// Spot checks that name the layout's special cases.
	for _, p := range []string{"misc/emptydir", "misc/marked", "many", "cache/tusz/train"} {
		if e, ok := got[p]; !ok || !e.IsDir {
			t.Errorf("%s should be a directory in the mount", p)
		}
	}
	if n := countChildren(got, "misc/emptydir"); n != 0 {
		t.Errorf("misc/emptydir has %d entries, want 0", n)
	}
	if n := countChildren(got, manyDir); n != manyCount {
		t.Errorf("%s has %d entries, want %d", manyDir, n, manyCount)
	}
	t.Logf("walked %d paths (%d files, %d directories)", len(got), len(files), len(dirs))
}

// countChildren counts the direct children of dir in a walk.
func countChildren(tree map[string]entry, dir string) int {
	n := 0
	for p := range tree {
		if rest, ok := strings.CutPrefix(p, dir+"/"); ok && !strings.Contains(rest, "/") {
			n++
		}
	}
	return n
}

// listHold is a proxy hook that holds every ListObjectsV2 of one prefix,
// while on, until released.
type listHold struct {
	prefix  string
	mu      sync.Mutex
	release chan struct{} // nil: not holding
	held    atomic.Int64  // LISTs of prefix that were held
}

func (h *listHold) hook(op testbed.Op, w http.ResponseWriter, r *http.Request) bool {
	if op != testbed.OpListObjectsV2 || r.URL.Query().Get("prefix") != h.prefix {
		return false
	}
	h.mu.Lock()
	release := h.release
	h.mu.Unlock()
	if release != nil {
		h.held.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	return false
}

// hold starts holding; the returned func releases what is held and stops.
func (h *listHold) hold() (release func()) {
	ch := make(chan struct{})
	h.mu.Lock()
	h.release = ch
	h.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			h.mu.Lock()
			h.release = nil
			h.mu.Unlock()
			close(ch)
		})
	}
}

// TestListingServedDuringRefresh checks stale-while-revalidate end to
// end: once a directory's listing is past the metadata TTL, lookups, stat
// and readdir in it are answered from the previous listing while the
// proxy holds the one LIST that refreshes it, and a key added in S3 is
// visible once that LIST is let through.
func TestListingServedDuringRefresh(t *testing.T) {
	srv := env.server(t)
	admin := srv.Admin()
	ctx := context.Background()
	bucket := newBucket(t, srv, "bgbfs-swr")
	var objs []testbed.Object
	var want []string
	for i := range 20 {
		name := fmt.Sprintf("f%03d.bin", i)
		want = append(want, name)
		objs = append(objs, testbed.Object{Key: "dir/" + name, Data: seededBytes(name, 100+i)})
	}
	if err := admin.PutMany(ctx, bucket, objs, 8); err != nil {
		t.Fatal(err)
	}
	proxy := newProxy(t, srv.Endpoint)
	h := &listHold{prefix: "dir/"}
	proxy.SetHook(h.hook)
	// Past the TTL, a listing answers until it is twice as old: 5 s
	// leaves the checks below seconds of room on a slow machine.
	const ttl = 5 * time.Second
	m := mount(t, mountSpec{
		Source:   "s3://" + bucket + "/",
		Endpoint: proxy.URL,
		Creds:    rootCreds(srv),
		Args:     []string{"--metadata-ttl", ttl.String()},
	})
	dir := filepath.Join(m.Mountpoint, "dir")
	if got, err := dirNames(dir); err != nil || !slices.Equal(got, want) {
		t.Fatalf("first readdir: %q, %v; want %q", got, err, want)
	}
	listed := time.Now()
	newData := []byte("added after the listing\n")
	if err := admin.PutBytes(ctx, bucket, "dir/new.bin", newData); err != nil {
		t.Fatal(err)
	}
	time.Sleep(ttl + ttl/10)
	dropDentries(t)

	release := h.hold()
	t.Cleanup(release)
	proxy.Reset()
	// Runs check in the background; fails if it is not answered while
	// the LIST is held.
	answered := func(what string, check func() error) {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- check() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s while the refresh is held: %v", what, err)
			}
		case <-time.After(ttl):
			release()
			t.Fatalf("%s was not answered while the LIST refreshing dir/ was held", what)
		}
	}
	statSize := func(name string, size int) func() error {
		return func() error {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				return err
			}
			if fi.Size() != int64(size) {
				return fmt.Errorf("size %d, want %d", fi.Size(), size)
			}
			return nil
		}
	}
	answered("stat dir/f000.bin", statSize("f000.bin", 100))
	if !pollUntil(10*time.Second, func() bool { return h.held.Load() > 0 }) {
		t.Fatalf("the lookup after the TTL started no LIST of dir/; requests:\n%s", testbed.FormatRequests(proxy.Requests(), 20))
	}
	// The refresh is now held at the proxy: everything else is answered
	// from the previous listing.
	answered("stat dir/f019.bin", statSize("f019.bin", 119))
	answered("stat dir/new.bin", func() error {
		if _, err := os.Stat(filepath.Join(dir, "new.bin")); !isENOENT(err) {
			return fmt.Errorf("%v, want ENOENT from the previous listing", errnoOf(err))
		}
		return nil
	})
	answered("readdir dir", func() error {
		got, err := dirNames(dir)
		if err == nil && !slices.Equal(got, want) {
			err = fmt.Errorf("%q, want the previous listing %q", got, want)
		}
		return err
	})
	if age := time.Since(listed); age >= 2*ttl {
		t.Logf("the checks ended %v after the listing, past twice the TTL: the machine is too slow for this test's margins", age)
	}
	if n := h.held.Load(); n != 1 {
		t.Errorf("%d LISTs of dir/ were held, want the one background refresh", n)
	}

	release()
	if !proxy.WaitQuiet(200*time.Millisecond, 30*time.Second) {
		t.Fatal("the proxy never went quiet after the LIST was released")
	}
	if c, reqs := proxy.Take(); listsOf(reqs, "dir/") != 1 {
		t.Errorf("the lookups past the TTL made %d LISTs of dir/, want 1; %v:\n%s", listsOf(reqs, "dir/"), c, testbed.FormatRequests(reqs, 20))
	}
	if err := statSize("new.bin", len(newData))(); err != nil {
		t.Errorf("stat dir/new.bin after the refresh landed: %v", err)
	}
	if got, err := dirNames(dir); err != nil || !slices.Contains(got, "new.bin") || len(got) != len(want)+1 {
		t.Errorf("readdir after the refresh landed: %q, %v; want %d names with new.bin", got, err, len(want)+1)
	}
}
