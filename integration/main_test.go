// Package integration holds the end-to-end tests of bgbfs: the real binary
// mounted against a real MinIO server (and, for keys MinIO refuses, an
// in-process gofakes3), exercised through the kernel's FUSE mount.
package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// suite is what every test shares: the binaries, a work directory, and
// the lazily started MinIO and datasets (building them is the slow part,
// so it happens once per `go test` run and only if a test needs it). Each
// lazily built part is a lazy field here, got through its own method or
// function.
type suite struct {
	repo  string
	work  string // integration/.work/run-*, removed at the end
	bgbfs string // the binary under test

	minio  lazy[*testbed.MinIO]
	data   lazy[*dataset]
	policy lazy[*policyBucket]

	// Buckets of single features, built on first use.
	readPath lazy[*readPathData]
	smoke    lazy[*smokeData]
	ops      lazy[*opsData]
	members  lazy[*memberData]
	idx      lazy[*idxData]
	scale    lazy[*scaleData]

	// containers is podman on the test bed's store, with the images
	// built; closed at the end (it holds a shared mount).
	containers lazy[*testbed.Podman]
}

// lazy is a fixture built once, on first use; every test that needs it
// fails if building it failed.
type lazy[T any] struct {
	once sync.Once
	v    T
	err  error
}

func (l *lazy[T]) get(t testing.TB, what string, build func() (T, error)) T {
	t.Helper()
	l.once.Do(func() {
		start := time.Now()
		l.v, l.err = build()
		t.Logf("%s built in %v", what, time.Since(start).Round(time.Millisecond))
	})
	if l.err != nil {
		t.Fatalf("building %s: %v", what, l.err)
	}
	return l.v
}

// env is set once by TestMain before any test runs and never reassigned;
// the lazily built parts inside are each built once, by their lazy.
var env *suite

func TestMain(m *testing.M) {
	s, err := newSuite()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	env = s
	code := m.Run()
	s.close()
	os.Exit(code)
}

func newSuite() (*suite, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the end-to-end tests mount FUSE filesystems and drop kernel caches: run them as root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("/dev/fuse is needed: %v", err)
	}
	repo, err := testbed.RepoRoot()
	if err != nil {
		return nil, err
	}
	base := filepath.Join(repo, "integration", ".work")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(base, "run-")
	if err != nil {
		return nil, err
	}
	bin, err := testbed.BgbfsBinary(repo, work)
	if err != nil {
		os.RemoveAll(work)
		return nil, err
	}
	return &suite{repo: repo, work: work, bgbfs: bin}, nil
}

func (s *suite) close() {
	if s.minio.v != nil {
		s.minio.v.Stop()
	}
	if s.containers.v != nil {
		if err := s.containers.v.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "integration: closing podman's store:", err)
		}
	}
	if err := os.RemoveAll(s.work); err != nil {
		fmt.Fprintln(os.Stderr, "integration: cleaning up:", err)
	}
}

// server returns the shared MinIO, starting it on first use. A missing
// MinIO binary fails the test: a silently skipped suite proves nothing.
func (s *suite) server(t testing.TB) *testbed.MinIO {
	t.Helper()
	return s.minio.get(t, "MinIO", func() (*testbed.MinIO, error) {
		bin, err := testbed.MinIOBinary(s.repo)
		if err != nil {
			return nil, err
		}
		return testbed.StartMinIO(bin, filepath.Join(s.work, "minio"))
	})
}

// dataset returns the main bucket, uploading it on first use.
func (s *suite) dataset(t testing.TB) *dataset {
	t.Helper()
	srv := s.server(t)
	return s.data.get(t, "the test bucket", func() (*dataset, error) {
		return buildDataset(t, s.repo, filepath.Join(s.work, "src"), srv)
	})
}

// policyBucket returns the bucket with an anonymous-read policy on
// public/ only, creating it on first use.
func (s *suite) policyBucket(t testing.TB) *policyBucket {
	t.Helper()
	srv := s.server(t)
	return s.policy.get(t, "the policy bucket", func() (*policyBucket, error) {
		return buildPolicyBucket(srv)
	})
}
