package integration

// Helpers that mount bgbfs for a test.

import (
	"os"
	"path/filepath"
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
	// Timeout bounds the wait for the mount to appear; 0 means
	// testbed.MountTimeout (a race build starts slower).
	Timeout time.Duration
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
		Timeout:    s.Timeout,
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
