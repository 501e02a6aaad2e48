package s3backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// stallingServer answers GETs of one object and listings, stalling each
// request as stall says for its number (from 1): "headers" sends nothing,
// "body" sends the headers and half the body, then nothing; "" answers.
// A stalled request is held until the client gives up.
type stallingServer struct {
	data     []byte
	stall    func(n int64) string
	requests atomic.Int64
}

func (s *stallingServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.requests.Add(1)
	mode := s.stall(n)
	if mode == "headers" {
		<-r.Context().Done()
		return
	}
	var body []byte
	if r.URL.Query().Get("list-type") == "2" {
		body = []byte(`<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>bucket</Name><Prefix>p/</Prefix><KeyCount>1</KeyCount><IsTruncated>false</IsTruncated><Contents><Key>p/a</Key><Size>1</Size><ETag>"e"</ETag></Contents></ListBucketResult>`)
		w.Header().Set("Content-Type", "application/xml")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
	} else {
		var from, to int
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &from, &to); err != nil {
			http.Error(w, "need a range", http.StatusBadRequest)
			return
		}
		to = min(to, len(s.data)-1)
		body = s.data[from : to+1]
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, to, len(s.data)))
		w.WriteHeader(http.StatusPartialContent)
	}
	if mode != "body" {
		w.Write(body)
		return
	}
	w.Write(body[:len(body)/2])
	w.(http.Flusher).Flush()
	<-r.Context().Done()
}

// logRecords keeps the records logged to it, with when they came.
type logRecords struct {
	mu      sync.Mutex
	records []slog.Record
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	r.Time = time.Now()
	l.records = append(l.records, r.Clone())
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// stalls returns the "S3 request stalled" records, each as its time and
// its attributes.
func (l *logRecords) stalls() (at []time.Time, attrs []map[string]string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.records {
		if r.Message != "S3 request stalled" {
			continue
		}
		m := map[string]string{}
		r.Attrs(func(a slog.Attr) bool {
			m[a.Key] = a.Value.String()
			return true
		})
		at = append(at, r.Time)
		attrs = append(attrs, m)
	}
	return at, attrs
}

func newStallingClient(t *testing.T, url string, attempts int, timeout time.Duration, logs *logRecords) *Client {
	return newClientFor(t, Config{Endpoint: url, MaxAttempts: attempts, RequestTimeout: timeout, Logger: slog.New(logs)})
}

// TestStalledRequests: a request that stalls, before its headers or in
// its body, is abandoned after the request timeout, logged at once
// (naming the operation, the key and what it waited for), and retried
// from the same budget of attempts as a refused one: a GET whose attempts
// stall in turns before the headers and in the body makes the configured
// attempts in all, not that many per kind.
func TestStalledRequests(t *testing.T) {
	const (
		attempts = 3
		timeout  = 300 * time.Millisecond
		// slack for a loaded machine: the bounds are for correctness.
		slack = time.Second
	)
	data := make([]byte, 256<<10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	always := func(mode string) func(int64) string { return func(int64) string { return mode } }
	for _, tt := range []struct {
		name       string
		list       bool
		stall      func(n int64) string
		waitingFor string // of the first stall
	}{
		{"GET, no headers", false, always("headers"), "response headers"},
		{"GET, body stalls", false, always("body"), "body bytes"},
		{"GET, headers and body stall in turns", false, func(n int64) string { return []string{"headers", "body"}[n%2] }, "body bytes"},
		{"LIST, no headers", true, always("headers"), "response headers"},
		{"LIST, body stalls", true, always("body"), "body bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := &stallingServer{data: data, stall: tt.stall}
			ts := httptest.NewServer(srv)
			defer ts.Close()
			logs := &logRecords{}
			c := newStallingClient(t, ts.URL, attempts, timeout, logs)
			start := time.Now()
			var err error
			if tt.list {
				_, err = c.List(context.Background(), ListRequest{Prefix: "p/", Delimiter: "/"})
			} else {
				_, err = c.ReadAt(context.Background(), Version{Key: "dir/key", ETag: `"v1"`, Size: int64(len(data))}, 0, make([]byte, len(data)))
			}
			took := time.Since(start)
			if !errors.Is(err, errStalled) || !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "gave up after 3 attempts") {
				t.Errorf("err = %v; want a stall, unreachable, after 3 attempts", err)
			}
			if n := srv.requests.Load(); n != attempts {
				t.Errorf("%d requests, want %d (the attempts)", n, attempts)
			}
			// Three stalls and two backoffs of at most 50 and 100 ms.
			if bound := attempts*timeout + 150*time.Millisecond + slack; took > bound {
				t.Errorf("failed after %v, want at most %v", took, bound)
			}
			at, attrs := logs.stalls()
			if len(at) == 0 {
				t.Fatal("no stall logged")
			}
			if first := at[0].Sub(start); first > timeout+slack {
				t.Errorf("first stall logged after %v, want within %v", first, timeout+slack)
			}
			wantOp, wantKey := "GetObject", "dir/key"
			if tt.list {
				wantOp, wantKey = "ListObjectsV2", "p/"
			}
			a := attrs[0]
			if a["op"] != wantOp || a["key"] != wantKey || a["waiting_for"] != tt.waitingFor || a["attempt"] != "1" || a["max_attempts"] != "3" {
				t.Errorf("stall line %v; want op %s, key %s, waiting for %s, attempt 1 of 3", a, wantOp, wantKey, tt.waitingFor)
			}
			// One line a second at most: the later stalls of this
			// request came within it.
			if len(at) != 1 {
				t.Errorf("%d stall lines in %v, want 1: %v", len(at), took, attrs)
			}
		})
	}
}

// TestStallLinesRateLimited: many requests that stall at once make one
// line; the next line, a second later, counts those left out.
func TestStallLinesRateLimited(t *testing.T) {
	const readers = 8
	srv := &stallingServer{data: make([]byte, 4096), stall: func(int64) string { return "headers" }}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	logs := &logRecords{}
	c := newStallingClient(t, ts.URL, 1, 200*time.Millisecond, logs)
	read := func() {
		_, _ = c.ReadAt(context.Background(), Version{Key: "k", ETag: `"v1"`, Size: 4096}, 0, make([]byte, 4096))
	}
	var wg sync.WaitGroup
	for range readers {
		wg.Go(read)
	}
	wg.Wait()
	if at, _ := logs.stalls(); len(at) != 1 {
		t.Fatalf("%d readers stalling at once logged %d lines, want 1", readers, len(at))
	}
	time.Sleep(stallReportEvery)
	read()
	at, attrs := logs.stalls()
	if len(at) != 2 || attrs[1]["other_stalls_not_logged"] != strconv.Itoa(readers-1) || attrs[1]["next"] != "giving up" {
		t.Errorf("after a second, a stall logged %d lines in all, the last %v; want 2, counting %d not logged, giving up (1 attempt)", len(at), attrs[len(attrs)-1], readers-1)
	}
}

// TestDeadlineEndsAttempts: a caller's deadline ends a request at once,
// not after the attempts, and is not retried.
func TestDeadlineEndsAttempts(t *testing.T) {
	srv := &stallingServer{data: make([]byte, 4096), stall: func(int64) string { return "headers" }}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c := newStallingClient(t, ts.URL, 10, 400*time.Millisecond, &logRecords{})
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.ReadAt(ctx, Version{Key: "k", ETag: `"v1"`, Size: 4096}, 0, make([]byte, 4096))
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		t.Errorf("err = %v, want the deadline's", err)
	}
	if took > 600*time.Millisecond+time.Second {
		t.Errorf("returned %v after a 600ms deadline", took)
	}
	if n := srv.requests.Load(); n > 2 {
		t.Errorf("%d requests within a deadline of one and a half request timeouts, want at most 2", n)
	}
}

// TestConnectionClosedBeforeAnswer: a server that closes each connection
// before it answers (a proxy letting go of requests it held) fails the
// read after the attempts, through the instrumented store too; the error
// wraps io.EOF, which must not pass for the end of the object (an
// instrumented read once returned 0 bytes and no error, and zeros were
// cached as the object's bytes).
func TestConnectionClosedBeforeAnswer(t *testing.T) {
	var requests atomic.Int64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	defer ts.Close()
	c := newStallingClient(t, ts.URL, 3, time.Second, &logRecords{})
	store := Instrument(c, NewMetrics(prometheus.NewRegistry()))
	buf := make([]byte, 4096)
	n, err := store.ReadAt(context.Background(), Version{Key: "k", ETag: `"v1"`, Size: 1 << 20}, 8192, buf)
	if err == nil || err == io.EOF || n != 0 {
		t.Fatalf("ReadAt = %d, %v; want 0 bytes and an error other than the end of the object", n, err)
	}
	if got := requests.Load(); got != 3 {
		t.Errorf("%d requests, want 3 (the attempts)", got)
	}
}
