package integration

// What bgbfs does with S3 answers that are not what it asked for: a
// proxy that ignores Range, a range other than the one asked, a server
// that checks the range before If-Match, objects listed without an ETag,
// and keys that XML cannot carry.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// objectKey is the key of a path-style object request.
func objectKey(r *http.Request) string {
	_, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	return key
}

// TestGetAnswerChecked puts a proxy between bgbfs and MinIO that answers
// GETs with other bytes than asked for, and checks that a read fails with
// EIO and a log line saying why, never returning those bytes.
func TestGetAnswerChecked(t *testing.T) {
	srv := env.server(t)
	admin := srv.Admin()
	ctx := context.Background()
	bucket := newBucket(t, srv, "bgbfs-answers")
	const key, size = "blob.bin", 3<<20 + 17
	data := seededBytes(key, size)
	if err := admin.PutBytes(ctx, bucket, key, data); err != nil {
		t.Fatal(err)
	}
	etag := etagOf(t, admin, bucket, key)

	for _, tt := range []struct {
		name string
		// answer writes the bad answer to a GET of [from, to].
		answer  func(w http.ResponseWriter, from, to int)
		wantLog string
	}{
		{"range ignored", func(w http.ResponseWriter, from, to int) {
			w.Header().Set("ETag", etag)
			w.Header().Set("Content-Length", strconv.Itoa(size))
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(data)
		}, "not 206"},
		{"other range", func(w http.ResponseWriter, from, to int) {
			from, to = from+4096, min(to+4096, size-1)
			w.Header().Set("ETag", etag)
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, to, size))
			w.Header().Set("Content-Length", strconv.Itoa(to-from+1))
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(data[from : to+1])
		}, "Content-Range"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			proxy := newProxy(t, srv.Endpoint)
			m := mount(t, mountSpec{
				Source:   "s3://" + bucket + "/",
				Endpoint: proxy.URL,
				Creds:    rootCreds(srv),
				Args:     []string{"--cache-size", "0", "--kernel-read-ahead", "128KiB"},
			})
			p := filepath.Join(m.Mountpoint, key)
			if _, err := os.Stat(p); err != nil {
				t.Fatal(err)
			}
			proxy.SetHook(func(op testbed.Op, w http.ResponseWriter, r *http.Request) bool {
				var from, to int
				if op != testbed.OpGetObject || objectKey(r) != key {
					return false
				}
				if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &from, &to); err != nil {
					return false
				}
				tt.answer(w, from, min(to, size-1))
				return true
			})
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			buf := make([]byte, 64<<10)
			n, err := f.ReadAt(buf, 1<<20)
			switch {
			case n > 0:
				t.Errorf("pread at 1 MiB returned %d bytes (equal to the object's there: %v), want EIO", n, bytes.Equal(buf[:n], data[1<<20:1<<20+n]))
			case !isErrno(err, syscall.EIO):
				t.Errorf("pread at 1 MiB: %v, want EIO", errnoOf(err))
			}
			if !pollUntil(5*time.Second, func() bool { return strings.Contains(m.Stderr(), tt.wantLog) }) {
				t.Errorf("no log line mentions %q:\n%s", tt.wantLog, lastBytes(m.Stderr(), 3000))
			}
		})
	}
}

// TestGetShrunkRangeFirst: a server that checks the range before If-Match
// answers 416 to a read past the new end of an object that shrank while
// open. That is a changed object (ESTALE), not the end of the file.
func TestGetShrunkRangeFirst(t *testing.T) {
	srv := env.server(t)
	admin := srv.Admin()
	ctx := context.Background()
	bucket := newBucket(t, srv, "bgbfs-shrunk")
	const key, size, newSize = "shrinks.bin", 4 << 20, 1 << 20
	data := seededBytes(key, size)
	if err := admin.PutBytes(ctx, bucket, key, data); err != nil {
		t.Fatal(err)
	}
	proxy := newProxy(t, srv.Endpoint)
	m := mount(t, mountSpec{
		Source:   "s3://" + bucket + "/",
		Endpoint: proxy.URL,
		Creds:    rootCreds(srv),
		Args:     []string{"--cache-size", "0", "--kernel-read-ahead", "128KiB"},
	})
	f, err := os.Open(filepath.Join(m.Mountpoint, key))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if msg := checkPread(f, bytes.NewReader(data), size, 0, 4096); msg != "" {
		t.Fatal(msg)
	}
	if err := admin.PutBytes(ctx, bucket, key, seededBytes("v2", newSize)); err != nil {
		t.Fatal(err)
	}
	var answered416 atomic.Int64
	proxy.SetHook(func(op testbed.Op, w http.ResponseWriter, r *http.Request) bool {
		var from int
		if op != testbed.OpGetObject || objectKey(r) != key {
			return false
		}
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &from); err != nil || from < newSize {
			return false
		}
		answered416.Add(1)
		testbed.WriteS3Error(w, r, http.StatusRequestedRangeNotSatisfiable, "InvalidRange", "The requested range is not satisfiable")
		return true
	})
	buf := make([]byte, 64<<10)
	n, err := f.ReadAt(buf, 3<<20)
	if n > 0 || !isErrno(err, syscall.ESTALE) {
		t.Errorf("pread past the new end: %d bytes, %v; want ESTALE", n, errnoOf(err))
	}
	if answered416.Load() == 0 {
		t.Error("test bed: no GET was answered 416")
	}
}

// etagElement is an ETag in a ListObjectsV2 answer.
var etagElement = regexp.MustCompile(`<ETag>[^<]*</ETag>`)

// withoutETags makes MinIO look like a server that keeps no ETags: none
// in listings, none on GETs (and If-Match, which such a server could not
// honour, is never sent by bgbfs for these objects).
func withoutETags(op testbed.Op, resp *http.Response) error {
	resp.Header.Del("ETag")
	if op != testbed.OpListObjectsV2 || resp.StatusCode != http.StatusOK {
		return nil
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	body = etagElement.ReplaceAll(body, nil)
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	return nil
}

// TestObjectsWithoutETag: objects listed without an ETag are pinned by
// size and modification time. An overwrite of the same size is never
// read through a handle opened on the old version, and a new open after
// the TTL reads the new version, not blocks cached from the old.
func TestObjectsWithoutETag(t *testing.T) {
	srv := env.server(t)
	admin := srv.Admin()
	ctx := context.Background()
	bucket := newBucket(t, srv, "bgbfs-noetag")
	const size = 4 << 20
	v1 := map[string][]byte{"open.bin": seededBytes("v1/open", size), "cached.bin": seededBytes("v1/cached", size)}
	for k, b := range v1 {
		if err := admin.PutBytes(ctx, bucket, k, b); err != nil {
			t.Fatal(err)
		}
	}
	proxy := newProxy(t, srv.Endpoint)
	proxy.SetResponseEdit(withoutETags)
	var ifMatch atomic.Int64
	proxy.SetHook(func(op testbed.Op, w http.ResponseWriter, r *http.Request) bool {
		if op == testbed.OpGetObject && r.Header.Get("If-Match") != "" {
			ifMatch.Add(1)
		}
		return false
	})
	spec := mountSpec{Source: "s3://" + bucket + "/", Endpoint: proxy.URL, Creds: rootCreds(srv)}
	uncached, cached := spec, spec
	// The kernel reads ahead no further than its own default, so the
	// reads after the overwrite reach bgbfs.
	uncached.Args = []string{"--cache-size", "0", "--kernel-read-ahead", "128KiB", "--metadata-ttl", staleTTL.String()}
	cached.Args = []string{"--metadata-ttl", staleTTL.String()}
	mu, mc := mount(t, uncached), mount(t, cached)

	f, err := os.Open(filepath.Join(mu.Mountpoint, "open.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if msg := checkPread(f, bytes.NewReader(v1["open.bin"]), size, 0, 4096); msg != "" {
		t.Fatal(msg)
	}
	if got, err := os.ReadFile(filepath.Join(mc.Mountpoint, "cached.bin")); err != nil || !bytes.Equal(got, v1["cached.bin"]) {
		t.Fatalf("first read of cached.bin: %v, equal %v", err, bytes.Equal(got, v1["cached.bin"]))
	}
	// Same size, a later modification time (HTTP dates have whole seconds).
	time.Sleep(1100 * time.Millisecond)
	v2 := map[string][]byte{"open.bin": seededBytes("v2/open", size), "cached.bin": seededBytes("v2/cached", size)}
	for k, b := range v2 {
		if err := admin.PutBytes(ctx, bucket, k, b); err != nil {
			t.Fatal(err)
		}
	}

	buf := make([]byte, 64<<10)
	for _, off := range []int64{1 << 20, 3<<20 + 4096} {
		n, err := f.ReadAt(buf, off)
		switch {
		case n > 0 && bytes.Equal(buf[:n], v2["open.bin"][off:off+int64(n)]):
			t.Errorf("pread(off=%d) on a handle opened on v1 returned bytes of v2", off)
		case n > 0 || !isErrno(err, syscall.ESTALE, syscall.EIO):
			t.Errorf("pread(off=%d) after the overwrite: %d bytes, %v; want ESTALE or EIO", off, n, errnoOf(err))
		}
	}

	waitPastTTL(t)
	got, err := os.ReadFile(filepath.Join(mc.Mountpoint, "cached.bin"))
	if err != nil || !bytes.Equal(got, v2["cached.bin"]) {
		t.Errorf("a new open after the TTL: %v; read v2: %v, read v1: %v", errnoOf(err), bytes.Equal(got, v2["cached.bin"]), bytes.Equal(got, v1["cached.bin"]))
	}
	if n := ifMatch.Load(); n > 0 {
		t.Errorf("%d GETs of objects listed without an ETag carried If-Match", n)
	}
}

// TestControlCharacterKeys: keys holding control characters, which XML
// 1.0 cannot carry, are listed one by one (the listing is URL-encoded):
// the directory still lists, the other keys are readable, and such names
// are shown exactly as they are (a CR stays a CR).
func TestControlCharacterKeys(t *testing.T) {
	srv := env.server(t)
	admin := srv.Admin()
	ctx := context.Background()
	bucket := newBucket(t, srv, "bgbfs-ctl")
	objs := map[string][]byte{
		"plain.txt":     []byte("plain\n"),
		"soh\x01.txt":   []byte("start of heading\n"),
		"cr\rname.txt":  []byte("carriage return\n"),
		"us\x1f.txt":    []byte("unit separator\n"),
		"tab\there.txt": []byte("tab\n"),
		"sub/in.txt":    []byte("below\n"),
		"sub/\x02.bin":  []byte("start of text\n"),
		"zz-last.txt":   []byte("after them\n"),
	}
	for k, b := range objs {
		if err := admin.PutBytes(ctx, bucket, k, b); err != nil {
			t.Fatalf("MinIO refused key %q: %v", k, err)
		}
	}
	m := mount(t, mountSpec{Source: "s3://" + bucket + "/", Endpoint: srv.Endpoint, Creds: rootCreds(srv)})
	var want []string
	for k := range objs {
		want = append(want, strings.Split(k, "/")[0])
	}
	slices.Sort(want)
	want = slices.Compact(want)
	names, err := dirNames(m.Mountpoint)
	if err != nil {
		t.Fatalf("readdir of the root: %v", err)
	}
	if !slices.Equal(names, want) {
		t.Errorf("root lists %q, want %q", names, want)
	}
	for k, b := range objs {
		got, err := os.ReadFile(filepath.Join(m.Mountpoint, k))
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("read %q: %q, %v; want %q", k, got, errnoOf(err), b)
		}
	}
}
