package integration

// Helpers that set up the S3 side: buckets, a MinIO of a test's own,
// counting and faulting proxies, credentials.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

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

// rootCreds are the MinIO root credentials.
func rootCreds(srv *testbed.MinIO) *testbed.Creds {
	return &testbed.Creds{AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}
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
