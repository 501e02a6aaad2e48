package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// staleTTL is the metadata TTL of the staleness mounts.
const staleTTL = time.Second

// ifMatchLog records the If-Match header of every GetObject by key.
type ifMatchLog struct {
	mu   sync.Mutex
	seen map[string][]string
}

func (l *ifMatchLog) hook(op testbed.Op, w http.ResponseWriter, r *http.Request) bool {
	if op == testbed.OpGetObject {
		key := objectKey(r)
		l.mu.Lock()
		l.seen[key] = append(l.seen[key], r.Header.Get("If-Match"))
		l.mu.Unlock()
	}
	return false
}

// take returns the If-Match headers of the GETs of key since the last
// take, and forgets them.
func (l *ifMatchLog) take(key string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.seen[key]
	delete(l.seen, key)
	return out
}

// etagOf returns the ETag S3 lists for bucket/key.
func etagOf(t testing.TB, admin *testbed.S3Admin, bucket, key string) string {
	t.Helper()
	objs, err := admin.ListAll(context.Background(), bucket, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.Key == key {
			return o.ETag
		}
	}
	t.Fatalf("s3://%s/%s is not listed", bucket, key)
	return ""
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// waitPastTTL sleeps past the metadata TTL and makes the kernel forget
// its dentries, so the next lookup reaches bgbfs. A listing less than two
// TTLs old still answers then (while it is listed again in the
// background), unless a read found an object in it changed (ESTALE).
func waitPastTTL(t testing.TB) {
	t.Helper()
	time.Sleep(staleTTL + staleTTL/2)
	dropDentries(t)
}

// waitPastTwiceTTL is waitPastTTL until the listing is too old to answer
// at all: the next lookup waits for a new listing.
func waitPastTwiceTTL(t testing.TB) {
	t.Helper()
	time.Sleep(2*staleTTL + staleTTL/2)
	dropDentries(t)
}

// TestStaleHandle overwrites (same size, smaller, larger) or deletes an
// object while a file on it is open through a mount without a block cache,
// and checks that reads of ranges not read before, which must go to S3,
// fail with ESTALE or EIO and never return bytes of the new version; that
// every GET for the open handle carried If-Match with the ETag of open;
// and that a new open after the metadata TTL sees the new object exactly
// (or ENOENT for a deleted one).
func TestStaleHandle(t *testing.T) {
	srv := env.server(t)
	admin := srv.Admin()
	ctx := context.Background()
	bucket := newBucket(t, srv, "bgbfs-stale")
	const size = 16 << 20
	cases := []struct {
		name string
		key  string
		v2   []byte // nil: deleted
	}{
		{"same_size", "same.bin", seededBytes("v2/same.bin", size)},
		{"shrunk", "shrunk.bin", seededBytes("v2/shrunk.bin", 10<<20+123)},
		{"grown", "grown.bin", seededBytes("v2/grown.bin", 20<<20+7)},
		{"deleted", "deleted.bin", nil},
	}
	v1 := map[string][]byte{}
	for _, c := range cases {
		v1[c.key] = seededBytes("v1/"+c.key, size)
		if err := admin.PutBytes(ctx, bucket, c.key, v1[c.key]); err != nil {
			t.Fatal(err)
		}
	}
	proxy := newProxy(t, srv.Endpoint)
	rec := &ifMatchLog{seen: map[string][]string{}}
	proxy.SetHook(rec.hook)
	m := mount(t, mountSpec{
		Source:   "s3://" + bucket + "/",
		Endpoint: proxy.URL,
		Creds:    rootCreds(srv),
		Args:     []string{"--cache-size", "0", "--metadata-ttl", staleTTL.String()},
	})

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(m.Mountpoint, c.key)
			old := v1[c.key]
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if msg := checkPread(f, bytes.NewReader(old), size, 0, 4096); msg != "" {
				t.Fatalf("first read: %s", msg)
			}
			etag1 := etagOf(t, admin, bucket, c.key)
			for _, h := range rec.take(c.key) {
				if h != etag1 {
					t.Errorf("a GET before the change carried If-Match %q, want %q", h, etag1)
				}
			}

			if c.v2 != nil {
				if err := admin.PutBytes(ctx, bucket, c.key, c.v2); err != nil {
					t.Fatal(err)
				}
				if etag2 := etagOf(t, admin, bucket, c.key); etag2 == etag1 {
					t.Fatalf("test bed: the new version has the old ETag %s", etag1)
				}
			} else if _, err := admin.Client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(c.key)}); err != nil {
				t.Fatal(err)
			}

			// Ranges never read on this handle: each must reach S3.
			checkStale := func(when string) {
				t.Helper()
				var errnos []string
				for _, off := range []int64{12 << 20, 6<<20 + 4096, 15<<20 + 12345} {
					buf := make([]byte, 64<<10)
					n, err := f.ReadAt(buf, off)
					switch {
					case n > 0 && !bytes.Equal(buf[:n], old[off:off+int64(n)]):
						t.Errorf("%s: pread(off=%d) on the open handle returned %d bytes that are not the version opened (%v)", when, off, n, errnoOf(err))
					case err == nil:
						t.Errorf("%s: pread(off=%d) on the open handle succeeded after the object changed; want ESTALE or EIO", when, off)
					case !isErrno(err, syscall.ESTALE, syscall.EIO):
						t.Errorf("%s: pread(off=%d) on the open handle: %v, want ESTALE or EIO", when, off, errnoOf(err))
					default:
						var errno syscall.Errno
						if errors.As(err, &errno) {
							errnos = append(errnos, errno.Error())
						}
					}
				}
				t.Logf("%s: the open handle's reads failed with %q", when, errnos)
				got := rec.take(c.key)
				if len(got) == 0 {
					t.Errorf("%s: the reads on the open handle made no GET: the test read cached data", when)
				}
				for _, h := range got {
					if h != etag1 {
						t.Errorf("%s: a GET for the open handle carried If-Match %q, want the ETag of open %q", when, h, etag1)
					}
				}
			}
			checkStale("right after the change")

			// The ESTALE above makes the next lookup wait for a new
			// listing, however young the previous one (the fs unit test
			// TestStaleListingAnswersDuringRefresh checks that alone).
			waitPastTTL(t)
			if c.v2 == nil {
				if _, err := os.Stat(p); !isErrno(err, syscall.ENOENT) {
					t.Errorf("stat after the TTL: %v, want ENOENT", errnoOf(err))
				}
				if _, err := os.Open(p); !isErrno(err, syscall.ENOENT) {
					t.Errorf("open after the TTL: %v, want ENOENT", errnoOf(err))
				}
			} else {
				fi, err := os.Stat(p)
				if err != nil || fi.Size() != int64(len(c.v2)) {
					t.Errorf("stat after the TTL: %v, size %v; want size %d", errnoOf(err), sizeOf(fi), len(c.v2))
				}
				sum, n, err := hashFile(p)
				if err != nil || n != int64(len(c.v2)) || sum != sha256Hex(c.v2) {
					t.Errorf("a new open after the TTL read %d bytes (%v), sha256 %s; want the new version, %d bytes, %s",
						n, errnoOf(err), sum, len(c.v2), sha256Hex(c.v2))
				}
				rec.take(c.key) // the new open's GETs
			}
			// The handle opened before stays on its version.
			checkStale("after a new open saw the change")
		})
	}
}

func sizeOf(fi os.FileInfo) any {
	if fi == nil {
		return "?"
	}
	return fi.Size()
}

// TestStaleCached overwrites an object that was read whole through a
// mount with the default block cache (and the kernel's page cache, kept
// across opens): rereading the old handle may return cached bytes of the
// old version or fail, never bytes of the new one; a new open after two
// TTLs reads exactly the new version, not cached blocks of the old.
func TestStaleCached(t *testing.T) {
	srv := env.server(t)
	admin := srv.Admin()
	ctx := context.Background()
	bucket := newBucket(t, srv, "bgbfs-stalecache")
	const key, size = "data/cached.npz", 8<<20 + 99 // .npz: prefetched at open
	old, neu := seededBytes("v1/"+key, size), seededBytes("v2/"+key, size)
	if err := admin.PutBytes(ctx, bucket, key, old); err != nil {
		t.Fatal(err)
	}
	m := mount(t, mountSpec{
		Source:   "s3://" + bucket + "/",
		Endpoint: srv.Endpoint,
		Creds:    rootCreds(srv),
		Args:     []string{"--metadata-ttl", staleTTL.String()},
	})
	p := filepath.Join(m.Mountpoint, filepath.FromSlash(key))
	if sum, _, err := hashFile(p); err != nil || sum != sha256Hex(old) {
		t.Fatalf("first read: %s, %v", sum, err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := admin.PutBytes(ctx, bucket, key, neu); err != nil {
		t.Fatal(err)
	}

	reread := func(when string) {
		t.Helper()
		var cached, failed int
		for off := int64(0); off < size; off += 1 << 20 {
			buf := make([]byte, 1<<20)
			n, err := f.ReadAt(buf, off)
			if n > 0 && !bytes.Equal(buf[:n], old[off:off+int64(n)]) {
				if bytes.Equal(buf[:n], neu[off:off+int64(n)]) {
					t.Errorf("%s: the old handle returned bytes of the new version at %d", when, off)
				} else {
					t.Errorf("%s: the old handle returned bytes of neither version at %d", when, off)
				}
			}
			switch {
			case err == nil || (n > 0 && off+int64(n) == size):
				cached++
			case isErrno(err, syscall.ESTALE, syscall.EIO):
				failed++
			default:
				t.Errorf("%s: old handle at %d: %v, want the old bytes, ESTALE or EIO", when, off, errnoOf(err))
			}
		}
		t.Logf("%s: the old handle read %d MiB of the old version and failed on %d", when, cached, failed)
	}
	reread("after the overwrite")
	// No read failed, so only the age of the listing makes it go.
	waitPastTwiceTTL(t)
	if sum, n, err := hashFile(p); err != nil || sum != sha256Hex(neu) {
		var which string
		switch sum {
		case sha256Hex(old):
			which = " (the old version)"
		}
		t.Errorf("a new open after the TTL read %d bytes, %v, sha256 %s%s; want the new version %s", n, errnoOf(err), sum, which, sha256Hex(neu))
	}
	reread("after a new open saw the change")

	// And the new version is what a plain S3 GET returns, for the record.
	if got, err := admin.GetBytes(ctx, bucket, key); err != nil || !bytes.Equal(got, neu) {
		t.Fatalf("test bed: S3 does not hold the new version: %v", err)
	}
}
