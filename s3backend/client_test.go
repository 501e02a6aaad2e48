package s3backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// faultyServer answers ranged GETs of one object, misbehaving on the
// first `faults` requests in the way its mode says.
type faultyServer struct {
	data []byte
	// etag "" is a server that has none; the object was then last
	// modified at modified.
	etag     string
	modified time.Time
	mode     string
	faults   int64
	gets     atomic.Int64
	// header is the last request's headers.
	header atomic.Pointer[http.Header]
}

func (s *faultyServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.gets.Add(1)
	h := r.Header.Clone()
	s.header.Store(&h)
	if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/bucket/key") {
		http.Error(w, "unexpected request", http.StatusBadRequest)
		return
	}
	var from, to int
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &from, &to); err != nil {
		http.Error(w, "need a range", http.StatusBadRequest)
		return
	}
	if s.mode == "range-first" && from >= len(s.data) {
		// Checks the range before the precondition, as some servers do.
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		fmt.Fprint(w, `<Error><Code>InvalidRange</Code><Message>range</Message></Error>`)
		return
	}
	unmodifiedSince, _ := http.ParseTime(r.Header.Get("If-Unmodified-Since"))
	if m := r.Header.Get("If-Match"); (m != "" && m != s.etag) || (!unmodifiedSince.IsZero() && s.modified.Truncate(time.Second).After(unmodifiedSince)) {
		w.WriteHeader(http.StatusPreconditionFailed)
		fmt.Fprint(w, `<Error><Code>PreconditionFailed</Code><Message>etag</Message></Error>`)
		return
	}
	to = min(to, len(s.data)-1)
	body := s.data[from : to+1]
	faulty := n <= s.faults
	if faulty && s.mode == "503" {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `<Error><Code>SlowDown</Code><Message>slow down</Message></Error>`)
		return
	}
	if s.etag != "" {
		w.Header().Set("ETag", s.etag)
	}
	if !s.modified.IsZero() {
		w.Header().Set("Last-Modified", s.modified.UTC().Format(http.TimeFormat))
	}
	switch s.mode {
	case "ignore-range":
		// A proxy that drops the Range header: the whole object.
		w.Header().Set("Content-Length", strconv.Itoa(len(s.data)))
		w.WriteHeader(http.StatusOK)
		w.Write(s.data)
		return
	case "shifted-range":
		from, to, body = from+1, to+1, s.data[from+1:to+2]
	case "resized":
		// The same ETag, yet another size: never trusted.
		s.data = append(s.data, "more"...)
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, to, len(s.data)))
	w.WriteHeader(http.StatusPartialContent)
	if !faulty {
		w.Write(body)
		return
	}
	w.Write(body[:len(body)/2])
	w.(http.Flusher).Flush()
	switch s.mode {
	case "truncate":
		// Returning with the body short makes the server close the
		// connection: the client sees an unexpected EOF.
	case "stall":
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	}
}

func newTestClient(t *testing.T, url string) *Client {
	// Long enough that a loaded machine never trips it by accident; the
	// stall case waits it out once.
	return newClientFor(t, Config{Endpoint: url, MaxAttempts: 4, RequestTimeout: 2 * time.Second})
}

// newClientFor returns a client of bucket "bucket" at c.Endpoint, path
// style, with test credentials.
func newClientFor(t *testing.T, c Config) *Client {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	c.Bucket, c.ForcePathStyle = "bucket", true
	client, err := New(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func TestReadAtRecovers(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 100000)
	for _, tt := range []struct {
		mode     string
		faults   int64
		wantErr  error
		wantGets int64
	}{
		{mode: "none", wantGets: 1},
		{mode: "truncate", faults: 2, wantGets: 3},
		{mode: "stall", faults: 1, wantGets: 2},
		{mode: "503", faults: 2, wantGets: 3},
		{mode: "truncate", faults: 100, wantErr: errors.New("gave up"), wantGets: 4},
	} {
		t.Run(fmt.Sprintf("%s×%d", tt.mode, tt.faults), func(t *testing.T) {
			srv := &faultyServer{data: data, etag: `"v1"`, mode: tt.mode, faults: tt.faults}
			ts := httptest.NewServer(srv)
			defer ts.Close()
			c := newTestClient(t, ts.URL)
			a, b := make([]byte, 300000), make([]byte, 200001)
			n, err := c.ReadAt(context.Background(), Version{Key: "key", ETag: `"v1"`, Size: int64(len(data))}, 1000, a, b)
			if tt.wantErr != nil {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr.Error()) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
			} else {
				if err != nil || n != len(a)+len(b) {
					t.Fatalf("ReadAt = %d, %v", n, err)
				}
				if !bytes.Equal(append(a, b...), data[1000:1000+n]) {
					t.Fatal("bytes differ from the source")
				}
			}
			if got := srv.gets.Load(); got != tt.wantGets {
				t.Errorf("%d GETs, want %d", got, tt.wantGets)
			}
		})
	}
}

func TestReadAtStaleAndEnd(t *testing.T) {
	srv := &faultyServer{data: []byte("hello world"), etag: `"v2"`}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c := newTestClient(t, ts.URL)
	if _, err := c.ReadAt(context.Background(), Version{Key: "key", ETag: `"v1"`, Size: 11}, 0, make([]byte, 5)); !errors.Is(err, ErrStale) {
		t.Errorf("changed object: err = %v, want ErrStale", err)
	}
	buf := make([]byte, 100)
	n, err := c.ReadAt(context.Background(), Version{Key: "key", ETag: `"v2"`, Size: 11}, 6, buf)
	if n != 5 || string(buf[:n]) != "world" {
		t.Errorf("read to the end = %d %q, %v", n, buf[:n], err)
	}
}

// TestReadAtChecksTheAnswer: a GET's answer is used only if it is the
// range and the version asked for.
func TestReadAtChecksTheAnswer(t *testing.T) {
	data := []byte("0123456789abcdefghij")
	mtime := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name string
		srv  *faultyServer
		// v is what the listing said; the read is of bytes [5, 10).
		v       Version
		wantErr error // nil: the bytes are read
	}{
		{"good", &faultyServer{etag: `"e"`}, Version{ETag: `"e"`, Size: 20}, nil},
		{"proxy ignores Range", &faultyServer{etag: `"e"`, mode: "ignore-range"}, Version{ETag: `"e"`, Size: 20}, ErrBadResponse},
		{"other range", &faultyServer{etag: `"e"`, mode: "shifted-range"}, Version{ETag: `"e"`, Size: 20}, ErrBadResponse},
		{"size changed, same ETag", &faultyServer{etag: `"e"`, mode: "resized"}, Version{ETag: `"e"`, Size: 20}, ErrStale},
		{"listed larger than it is", &faultyServer{etag: `"e"`}, Version{ETag: `"e"`, Size: 25}, ErrStale},
		{"no ETag, same version", &faultyServer{modified: mtime}, Version{Size: 20, LastModified: mtime}, nil},
		{"no ETag, rewritten later", &faultyServer{modified: mtime.Add(time.Minute)}, Version{Size: 20, LastModified: mtime}, ErrStale},
		{"no ETag, older version served", &faultyServer{modified: mtime.Add(-time.Minute)}, Version{Size: 20, LastModified: mtime}, ErrStale},
		{"no ETag, other size", &faultyServer{modified: mtime}, Version{Size: 21, LastModified: mtime}, ErrStale},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := tt.srv
			srv.data = slices.Clone(data)
			ts := httptest.NewServer(srv)
			defer ts.Close()
			c := newTestClient(t, ts.URL)
			v := tt.v
			v.Key = "key"
			buf := make([]byte, 5)
			n, err := c.ReadAt(context.Background(), v, 5, buf)
			switch {
			case tt.wantErr == nil && (err != nil || string(buf[:n]) != "56789"):
				t.Fatalf("ReadAt = %d %q, %v; want 5 \"56789\"", n, buf[:n], err)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("ReadAt = %d %q, %v; want %v", n, buf[:n], err, tt.wantErr)
			}
			if tt.wantErr == ErrBadResponse && srv.gets.Load() != 1 {
				t.Errorf("%d GETs: a server that answers with other bytes is not asked again", srv.gets.Load())
			}
			h := *srv.header.Load()
			if v.ETag == "" && (h.Get("If-Match") != "" || h.Get("If-Unmodified-Since") != mtime.Format(http.TimeFormat)) {
				t.Errorf("no-ETag GET sent If-Match %q, If-Unmodified-Since %q; want none and %q", h.Get("If-Match"), h.Get("If-Unmodified-Since"), mtime.Format(http.TimeFormat))
			}
		})
	}
}

// TestReadAtShrunk: a server that checks the range before If-Match answers
// 416 for an object that shrank since it was listed: that is a changed
// object, not the end of the file.
func TestReadAtShrunk(t *testing.T) {
	srv := &faultyServer{data: []byte("short"), etag: `"v2"`, mode: "range-first"}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c := newTestClient(t, ts.URL)
	n, err := c.ReadAt(context.Background(), Version{Key: "key", ETag: `"v1"`, Size: 100}, 50, make([]byte, 10))
	if !errors.Is(err, ErrStale) {
		t.Errorf("read past the new end of a shrunk object = %d, %v; want ErrStale", n, err)
	}
}

func TestSkipBytes(t *testing.T) {
	bufs := [][]byte{make([]byte, 3), make([]byte, 4), make([]byte, 5)}
	for _, tt := range []struct {
		n    int
		want []int
	}{
		{0, []int{3, 4, 5}}, {2, []int{1, 4, 5}}, {3, []int{4, 5}}, {8, []int{4}}, {12, nil},
	} {
		var got []int
		for _, b := range skipBytes(bufs, tt.n) {
			got = append(got, len(b))
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("skipBytes(%d) lengths = %v, want %v", tt.n, got, tt.want)
		}
	}
	if len(bufs[0]) != 3 {
		t.Error("skipBytes changed its input")
	}
}

// TestEndpointWithoutRegion: a client for an endpoint with no region
// configured signs for us-east-1, which S3-compatible servers accept.
func TestEndpointWithoutRegion(t *testing.T) {
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	if got := newTestClient(t, "http://127.0.0.1:9").Region(); got != "us-east-1" {
		t.Errorf("region %q, want us-east-1", got)
	}
}
