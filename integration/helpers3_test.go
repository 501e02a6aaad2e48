package integration

// Helpers of the reliability, load, shutdown and security tests.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// newBucket creates a bucket with a unique name starting with base.
func newBucket(t testing.TB, srv *testbed.MinIO, base string) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := base + "-" + hex.EncodeToString(b)
	if err := srv.Admin().CreateBucket(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	return name
}

// putBucket creates bucket on srv holding objs, uploaded by workers
// parallel uploads: the fixtures' common last step.
func putBucket(srv *testbed.MinIO, bucket string, objs []testbed.Object, workers int) error {
	ctx := context.Background()
	admin := srv.Admin()
	if err := admin.CreateBucket(ctx, bucket); err != nil {
		return err
	}
	return admin.PutMany(ctx, bucket, objs, workers)
}

// openOp returns an operation that opens path with flag (closing it if
// that succeeds), for tables of refused changes.
func openOp(path string, flag int) func() error {
	return func() error {
		f, err := os.OpenFile(path, flag, 0o644)
		if err == nil {
			f.Close()
		}
		return err
	}
}

// ownMinIO starts a MinIO server of the test's own, for tests that stop
// it: the shared one must stay up for the others.
func ownMinIO(t testing.TB) *testbed.MinIO {
	t.Helper()
	bin, err := testbed.MinIOBinary(env.repo)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(env.work, "minio-own-")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := testbed.StartMinIO(bin, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Stop()
		if t.Failed() {
			if b, err := os.ReadFile(srv.LogPath); err == nil {
				t.Logf("own MinIO log:\n%s", lastBytes(string(b), 3000))
			}
		}
		_ = os.RemoveAll(dir)
	})
	return srv
}

// faultProxy puts a CountingProxy with a fault injector (rate 0 until the
// test raises it) in front of target.
func faultProxy(t testing.TB, target string, plan testbed.FaultPlan) (*testbed.CountingProxy, *testbed.Faults) {
	t.Helper()
	proxy := newProxy(t, target)
	faults, err := testbed.NewFaults(target, plan)
	if err != nil {
		t.Fatal(err)
	}
	proxy.SetHook(faults.Hook)
	t.Cleanup(func() {
		proxy.SetHook(nil)
		faults.Close()
	})
	return proxy, faults
}

// checkPread reads n bytes at off from f and compares them with src (of
// size bytes); it returns "" or what was wrong.
func checkPread(f *os.File, src io.ReaderAt, size, off int64, n int) string {
	got := make([]byte, n)
	k, err := f.ReadAt(got, off)
	wantN := int(max(0, min(int64(n), size-off)))
	want := make([]byte, wantN)
	if wantN > 0 {
		if _, err := src.ReadAt(want, off); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Sprintf("reading the source: %v", err)
		}
	}
	switch {
	case k != wantN:
		return fmt.Sprintf("got %d bytes (err %v), want %d", k, errnoOf(err), wantN)
	case wantN < n && !errors.Is(err, io.EOF):
		return fmt.Sprintf("short read of %d bytes ended with %v, want EOF", k, err)
	case wantN == n && err != nil:
		return fmt.Sprintf("error %v", errnoOf(err))
	case !bytes.Equal(got[:k], want):
		return fmt.Sprintf("content differs from the source at byte %d of the range", firstDiff(got[:k], want))
	}
	return ""
}

// nobody is the unprivileged uid and gid the permission tests run as.
const nobody = 65534

// publicDir makes a fresh directory that every user can reach and list
// (t.TempDir's are 0700), removed at the end of the test: register it
// before mounting in it, so that the unmount runs first.
func publicDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgbfs-public-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Only remove what is no longer mounted.
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() && p != dir {
				if _, mounted := testbed.MountedAt(p); mounted {
					t.Errorf("%s is still mounted at the end of the test", p)
					return filepath.SkipAll
				}
			}
			return nil
		})
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("removing %s: %v", dir, err)
		}
	})
	return dir
}

// asNobody runs a command as uid and gid 65534 with no supplementary
// groups, with a timeout.
func asNobody(timeout time.Duration, name string, args ...string) (stdout []byte, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append([]string{"--reuid", strconv.Itoa(nobody), "--regid", strconv.Itoa(nobody), "--clear-groups", "--", name}, args...)
	cmd := exec.CommandContext(ctx, "setpriv", full...)
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C", "HOME=/"}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = 2 * time.Second
	err = cmd.Run()
	return out.Bytes(), errb.String(), err
}

// isErrno reports whether err is one of errnos.
func isErrno(err error, errnos ...syscall.Errno) bool {
	for _, e := range errnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// watchdog sends SIGQUIT to the daemon if stop is not called within d:
// hung filesystem calls then return (ENOTCONN) and the daemon's goroutine
// stacks land in its stderr, which the mount's cleanup shows.
func watchdog(t testing.TB, m *testbed.Mounted, d time.Duration, what string) (stop func()) {
	timer := time.AfterFunc(d, func() {
		t.Errorf("%s did not finish within %v (deadlock?): sending SIGQUIT to bgbfs for a goroutine dump", what, d)
		_ = m.Signal(syscall.SIGQUIT)
	})
	return func() { timer.Stop() }
}
