package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// failFastLimit is how long bgbfs may take to give up before mounting.
const failFastLimit = 15 * time.Second

// mountSpec says what to mount; zero fields take defaults.
type mountSpec struct {
	Source     string // s3://BUCKET[/PREFIX/]
	Endpoint   string // S3 endpoint (MinIO, a proxy, gofakes3)
	Creds      *testbed.Creds
	Args       []string
	Mountpoint string   // "" means a fresh directory
	Env        []string // added to the clean environment, e.g. BGB_LIMIT_FILES=3
	Bin        string   // "" means the binary under test
}

// newMountpoint makes an empty directory DIR/mnt in a fresh DIR, so the
// mountpoint's parent holds nothing else.
func newMountpoint(t testing.TB) string {
	t.Helper()
	mp := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	return mp
}

// mount runs `bgbfs mount` and registers its unmount, which must be clean
// (SIGTERM, exit 0, mount gone) or the test fails. On failure the
// daemon's stderr goes to the test log.
func mount(t testing.TB, s mountSpec) *testbed.Mounted {
	t.Helper()
	if s.Mountpoint == "" {
		s.Mountpoint = newMountpoint(t)
	}
	if s.Bin == "" {
		s.Bin = env.bgbfs
	}
	logPath := filepath.Join(t.TempDir(), "bgbfs.stderr")
	m, err := testbed.Mount(testbed.MountOptions{
		Bin:        s.Bin,
		Source:     s.Source,
		Mountpoint: s.Mountpoint,
		Endpoint:   s.Endpoint,
		Creds:      s.Creds,
		Args:       s.Args,
		Env:        s.Env,
		LogPath:    logPath,
	})
	if err != nil {
		t.Fatalf("mount (env %q): %v", s.Env, err)
	}
	t.Cleanup(func() {
		err := m.Unmount()
		if err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("%s %s (env %q)\nstderr:\n%s", s.Bin, strings.Join(m.Args, " "), s.Env, lastBytes(m.Stderr(), 6000))
		}
	})
	return m
}

// rootCreds are the MinIO root credentials.
func rootCreds(srv *testbed.MinIO) *testbed.Creds {
	return &testbed.Creds{AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}
}

// mountData mounts s3://bgbfs-e2e/<prefix> from MinIO with root
// credentials (prefix "" mounts the whole bucket).
func mountData(t testing.TB, prefix string, args ...string) *testbed.Mounted {
	t.Helper()
	d := env.dataset(t)
	srv := env.server(t)
	return mount(t, mountSpec{
		Source:   "s3://" + d.Bucket + "/" + prefix,
		Endpoint: srv.Endpoint,
		Creds:    rootCreds(srv),
		Args:     args,
	})
}

// newProxy starts a CountingProxy in front of target for this test.
func newProxy(t testing.TB, target string) *testbed.CountingProxy {
	t.Helper()
	p, err := testbed.NewCountingProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// entry is what a walk of the mount saw at one path.
type entry struct {
	IsDir bool
	Size  int64
	Mode  fs.FileMode
	Mtime time.Time
}

// walkTree walks root with lstat on every entry and returns the entries
// by slash-separated relative path (root itself excluded). It fails the
// test on walk errors, on names a directory should never return and on
// duplicates within a directory.
func walkTree(t testing.TB, root string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	var walk func(rel string)
	walk = func(rel string) {
		dir := filepath.Join(root, filepath.FromSlash(rel))
		f, err := os.Open(dir)
		if err != nil {
			t.Errorf("open %s: %v", dir, err)
			return
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			t.Errorf("readdir %s: %v", dir, err)
			return
		}
		sort.Strings(names)
		for i, name := range names {
			if name == "" || name == "." || name == ".." || strings.Contains(name, "/") || len(name) > 255 {
				t.Errorf("readdir %s returned the invalid name %q", dir, name)
				continue
			}
			if i > 0 && names[i-1] == name {
				t.Errorf("readdir %s returned %q twice", dir, name)
				continue
			}
			p := name
			if rel != "" {
				p = rel + "/" + name
			}
			fi, err := os.Lstat(filepath.Join(dir, name))
			if err != nil {
				t.Errorf("lstat %s: %v", p, err)
				continue
			}
			out[p] = entry{IsDir: fi.IsDir(), Size: fi.Size(), Mode: fi.Mode(), Mtime: fi.ModTime()}
			if fi.IsDir() {
				walk(p)
			}
		}
	}
	walk("")
	return out
}

// hashFile returns the hex SHA-256 and length of a file.
func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		return "", n, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// dropDentries makes the kernel forget cached dentries and inodes, so the
// next lookup reaches the filesystem.
func dropDentries(t testing.TB) {
	t.Helper()
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2\n"), 0); err != nil {
		t.Fatalf("drop caches: %v", err)
	}
}

// requireNotMounted fails if anything is mounted on mp.
func requireNotMounted(t testing.TB, mp string) {
	t.Helper()
	if info, ok := testbed.MountedAt(mp); ok {
		t.Errorf("%s is still mounted (%s from %s)", mp, info.FSType, info.Source)
	}
}

// lastBytes returns the end of s, marked when cut.
func lastBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// errnoOf describes err with its errno, for messages.
func errnoOf(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return fmt.Sprintf("%v (errno %d)", err, int(errno))
	}
	return fmt.Sprint(err)
}

// parallel runs fn(i) for i in [0, n) on workers goroutines.
func parallel(n, workers int, fn func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				fn(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}
