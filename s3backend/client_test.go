package s3backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// faultyServer answers ranged GETs of one object, misbehaving on the
// first `faults` requests in the way its mode says.
type faultyServer struct {
	data   []byte
	etag   string
	mode   string
	faults int64
	gets   atomic.Int64
}

func (s *faultyServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.gets.Add(1)
	if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/bucket/key") {
		http.Error(w, "unexpected request", http.StatusBadRequest)
		return
	}
	if m := r.Header.Get("If-Match"); m != "" && m != s.etag {
		w.WriteHeader(http.StatusPreconditionFailed)
		fmt.Fprint(w, `<Error><Code>PreconditionFailed</Code><Message>etag</Message></Error>`)
		return
	}
	var from, to int
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &from, &to); err != nil {
		http.Error(w, "need a range", http.StatusBadRequest)
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
	w.Header().Set("ETag", s.etag)
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
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	c, err := New(context.Background(), Config{
		Bucket: "bucket", Endpoint: url, ForcePathStyle: true,
		// Long enough that a loaded machine never trips it by accident;
		// the stall case waits it out once.
		MaxAttempts: 4, RequestTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
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
			n, err := c.ReadAt(context.Background(), "key", `"v1"`, 1000, a, b)
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
	if _, err := c.ReadAt(context.Background(), "key", `"v1"`, 0, make([]byte, 5)); !errors.Is(err, ErrStale) {
		t.Errorf("changed object: err = %v, want ErrStale", err)
	}
	buf := make([]byte, 100)
	n, err := c.ReadAt(context.Background(), "key", `"v2"`, 6, buf)
	if n != 5 || string(buf[:n]) != "world" {
		t.Errorf("read to the end = %d %q, %v", n, buf[:n], err)
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
