package testbed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

func TestPatternObject(t *testing.T) {
	const size = 70<<20 + 123
	p := NewPatternObject(size)
	whole := make([]byte, size)
	if n, err := p.ReadAt(whole, 0); n != size || err != nil {
		t.Fatalf("ReadAt whole: %d, %v", n, err)
	}
	// Byte-by-byte reference for a few places, and ranged reads agree with
	// the whole.
	nonzero := 0
	for _, b := range whole {
		if b != 0 {
			nonzero++
		}
	}
	if nonzero == 0 || nonzero > size/10 {
		t.Errorf("%d non-zero bytes of %d: want some, and mostly zeros", nonzero, size)
	}
	for _, r := range [][2]int64{{0, 1}, {63, 2}, {1 << 20, 64}, {64<<20 - 4097, 8194}, {size - 5, 5}, {size - 5, 10}, {12345, 3 << 20}} {
		buf := make([]byte, r[1])
		n, err := p.ReadAt(buf, r[0])
		wantN := int(min(r[1], size-r[0]))
		if n != wantN || (wantN < len(buf)) != (err == io.EOF) {
			t.Errorf("ReadAt(%d, %d) = %d, %v", r[0], r[1], n, err)
		}
		if !bytes.Equal(buf[:n], whole[r[0]:r[0]+int64(n)]) {
			t.Errorf("ReadAt(%d, %d) differs from the whole", r[0], r[1])
		}
	}
	sum := sha256.Sum256(whole)
	if got := p.SHA256(); got != hex.EncodeToString(sum[:]) {
		t.Errorf("SHA256 %s, want %s", got, hex.EncodeToString(sum[:]))
	}
	// Around 4 GiB there is pattern on both sides.
	big := NewPatternObject(FourGiB + 5<<20)
	buf := make([]byte, 16)
	big.ReadAt(buf, FourGiB-8)
	if bytes.Equal(buf[:8], make([]byte, 8)) || bytes.Equal(buf[8:], make([]byte, 8)) {
		t.Errorf("no pattern around 4 GiB: %x", buf)
	}
}

func TestClassify(t *testing.T) {
	cases := []struct {
		method, target string
		want           Op
	}{
		{"GET", "/b?list-type=2&prefix=a%2F&delimiter=%2F", OpListObjectsV2},
		{"GET", "/b/?list-type=2", OpListObjectsV2},
		{"GET", "/b?prefix=a", OpOther}, // ListObjects v1
		{"GET", "/b?location", OpOther},
		{"HEAD", "/b", OpHeadBucket},
		{"GET", "/b/a/c.npz", OpGetObject},
		{"GET", "/b/a/c.npz?x-id=GetObject", OpGetObject},
		{"GET", "/b/a/c.npz?partNumber=2", OpGetObject},
		{"GET", "/b/a/c.npz?acl", OpOther},
		{"HEAD", "/b/a/c.npz", OpHeadObject},
		{"PUT", "/b/a", OpOther},
		{"GET", "/", OpOther},
	}
	for _, c := range cases {
		r := httptest.NewRequest(c.method, c.target, nil)
		if got := Classify(r); got != c.want {
			t.Errorf("%s %s: %s, want %s", c.method, c.target, got, c.want)
		}
	}
}

// TestMinIOAndProxy starts MinIO, reaches it through the counting proxy
// with SigV4 intact, counts operations and bytes, and survives a restart.
func TestMinIOAndProxy(t *testing.T) {
	repo, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := MinIOBinary(repo)
	if err != nil {
		t.Fatal(err)
	}
	m, err := StartMinIO(bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	ctx := context.Background()
	if err := m.Admin().CreateBucket(ctx, "bkt"); err != nil {
		t.Fatal(err)
	}
	objs := []Object{{"k/one", []byte("1")}, {"k/two", bytes.Repeat([]byte("2"), 1000)}}
	if err := m.Admin().PutMany(ctx, "bkt", objs, 2); err != nil {
		t.Fatal(err)
	}

	p, err := NewCountingProxy(m.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	via := NewS3Admin(p.URL, m.AccessKey, m.SecretKey)
	listed, err := via.ListAll(ctx, "bkt", "k/")
	if err != nil || len(listed) != 2 {
		t.Fatalf("list through the proxy: %v, %v", listed, err)
	}
	got, err := via.GetBytes(ctx, "bkt", "k/two")
	if err != nil || len(got) != 1000 {
		t.Fatalf("get through the proxy: %d bytes, %v", len(got), err)
	}
	if _, err := via.Client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String("bkt"), Key: aws.String("k/one")}); err != nil {
		t.Fatal(err)
	}
	if _, err := via.Client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String("bkt")}); err != nil {
		t.Fatal(err)
	}
	c, reqs := p.Take()
	want := Counts{ListObjectsV2: 1, GetObject: 1, HeadObject: 1, HeadBucket: 1, GetObjectBytes: 1000}
	if c != want {
		t.Errorf("counts %v, want %v; requests:\n%s", c, want, FormatRequests(reqs, 10))
	}
	if c := p.Counts(); c.Total() != 0 {
		t.Errorf("counts after Take: %v", c)
	}

	// A hook can answer instead of the server.
	p.SetHook(func(op Op, w http.ResponseWriter, r *http.Request) bool {
		if op == OpGetObject {
			http.Error(w, "injected", http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	shortCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := via.GetBytes(shortCtx, "bkt", "k/one"); err == nil {
		t.Errorf("GetObject succeeded despite the hook")
	}
	p.SetHook(nil)

	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Admin().GetBytes(ctx, "bkt", "k/one"); err != nil || string(got) != "1" {
		t.Errorf("after restart: %q, %v", got, err)
	}
}

// TestProxyWaitQuiet checks that WaitQuiet returns only once a slow
// response has been sent whole and the proxy has then been idle.
func TestProxyWaitQuiet(t *testing.T) {
	release := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("first half "))
		w.(http.Flusher).Flush()
		<-release
		w.Write([]byte("second half"))
	}))
	defer backend.Close()
	p, err := NewCountingProxy(backend.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.Get(p.URL + "/bucket/key")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	if p.WaitQuiet(50*time.Millisecond, 300*time.Millisecond) {
		t.Error("WaitQuiet reported quiet while a response was still being sent")
	}
	close(release)
	<-done
	start := time.Now()
	if !p.WaitQuiet(50*time.Millisecond, 5*time.Second) {
		t.Fatal("WaitQuiet timed out with nothing in flight")
	}
	if waited := time.Since(start); waited < 50*time.Millisecond {
		t.Errorf("WaitQuiet returned after %v, before the quiet period", waited)
	}
}

// TestProxySilent checks that a silent proxy accepts a request and answers
// nothing while silent, closes it without an answer when it speaks again,
// and forwards the next request.
func TestProxySilent(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("answer"))
	}))
	defer backend.Close()
	p, err := NewCountingProxy(backend.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	get := func() (string, error) {
		resp, err := http.Get(p.URL + "/bucket/key")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	p.SetSilent(true)
	p.SetSilent(true) // twice is once
	type result struct {
		body string
		err  error
	}
	held := make(chan result, 1)
	go func() {
		b, err := get()
		held <- result{b, err}
	}()
	select {
	case r := <-held:
		t.Fatalf("a silent proxy answered: %q, %v", r.body, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	if n := p.Counts().GetObject; n != 1 {
		t.Errorf("the silent proxy counted %d GetObject, want 1", n)
	}
	p.SetSilent(false)
	select {
	case r := <-held:
		if r.err == nil {
			t.Errorf("the held request got an answer %q when the proxy spoke again; want its connection closed", r.body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the held request was not let go when the proxy spoke again")
	}
	if b, err := get(); err != nil || b != "answer" {
		t.Errorf("after silence: %q, %v; want the backend's answer", b, err)
	}
}
