package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// TestRequestCountListing counts, at a proxy in front of MinIO, what
// `ls -l` of the 5,000-object directory costs (5 ListObjectsV2 pages of
// 1,000 and nothing else), and that a stat within the metadata TTL after
// the kernel forgot its dentries costs no request at all.
func TestRequestCountListing(t *testing.T) {
	d := env.dataset(t)
	srv := env.server(t)
	proxy := newProxy(t, srv.Endpoint)
	m := mount(t, mountSpec{
		Source:   "s3://" + d.Bucket + "/" + manyDir + "/",
		Endpoint: proxy.URL,
		Creds:    rootCreds(srv),
		Args:     []string{"--metadata-ttl", "10m"},
	})
	// The proxy really is in the path.
	if proxy.Counts().Total() == 0 {
		t.Fatalf("mounting made no request through the proxy")
	}
	proxy.Reset()

	cmd := exec.Command("ls", "-l", m.Mountpoint)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ls -l: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if n := len(lines) - 1; n != manyCount { // minus the "total" line
		t.Errorf("ls -l listed %d entries, want %d", n, manyCount)
	}
	c, reqs := proxy.Take()
	t.Logf("ls -l of %d entries: %v", manyCount, c)
	if c.ListObjectsV2 != manyCount/1000 || c.HeadObject != 0 || c.Total() != c.ListObjectsV2 {
		t.Errorf("ls -l cost %v; want exactly %d ListObjectsV2 and nothing else; requests:\n%s",
			c, manyCount/1000, testbed.FormatRequests(reqs, 30))
	}

	dropDentries(t)
	proxy.Reset()
	name := "file-01234.dat"
	fi, err := os.Stat(filepath.Join(m.Mountpoint, name))
	if err != nil {
		t.Fatal(err)
	}
	if want := d.Objects[manyDir+"/"+name].Size(); fi.Size() != want {
		t.Errorf("%s: size %d, want %d", name, fi.Size(), want)
	}
	if c, reqs := proxy.Take(); c.Total() != 0 {
		t.Errorf("stat after drop_caches within the TTL cost %v, want no request; requests:\n%s", c, testbed.FormatRequests(reqs, 30))
	}
}

// TestRequestCountSubdirectory is the same check one level down: the
// kernel forgets a subdirectory's inode on drop_caches, and its listing
// must outlive that (the mount root is never forgotten, so the test above
// cannot see it).
func TestRequestCountSubdirectory(t *testing.T) {
	d := env.dataset(t)
	srv := env.server(t)
	proxy := newProxy(t, srv.Endpoint)
	m := mount(t, mountSpec{
		Source:   "s3://" + d.Bucket + "/",
		Endpoint: proxy.URL,
		Creds:    rootCreds(srv),
		Args:     []string{"--metadata-ttl", "10m"},
	})
	dir := filepath.Join(m.Mountpoint, manyDir)
	if _, err := os.ReadDir(dir); err != nil {
		t.Fatal(err)
	}
	dropDentries(t)
	proxy.Reset()
	name := "file-04321.dat"
	if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	if c, reqs := proxy.Take(); c.Total() != 0 {
		t.Errorf("stat in a listed subdirectory after drop_caches cost %v, want no request; requests:\n%s", c, testbed.FormatRequests(reqs, 30))
	}
}
