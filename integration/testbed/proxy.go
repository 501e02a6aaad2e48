package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Op is an S3 operation as classified by the CountingProxy.
type Op string

// The operations the proxy tells apart. Path-style addressing is assumed
// (bgbfs is run with --force-path-style against the proxy).
const (
	OpListObjectsV2 Op = "ListObjectsV2"
	OpGetObject     Op = "GetObject"
	OpHeadObject    Op = "HeadObject"
	OpHeadBucket    Op = "HeadBucket"
	OpOther         Op = "Other"
)

// Classify names the S3 operation of a path-style request from its method,
// path and query.
func Classify(r *http.Request) Op {
	path := strings.TrimPrefix(r.URL.Path, "/")
	if path == "" {
		return OpOther // ListBuckets and the like
	}
	bucket, key, hasSlash := strings.Cut(path, "/")
	onBucket := bucket != "" && (!hasSlash || key == "")
	q := r.URL.Query()
	switch {
	case onBucket && r.Method == http.MethodGet && q.Get("list-type") == "2":
		return OpListObjectsV2
	case onBucket && r.Method == http.MethodHead && len(q) == 0:
		return OpHeadBucket
	case onBucket:
		return OpOther
	case r.Method == http.MethodGet && !hasSubresource(q):
		return OpGetObject
	case r.Method == http.MethodHead && !hasSubresource(q):
		return OpHeadObject
	}
	return OpOther
}

// hasSubresource reports a query naming a sub-resource (?acl, ?tagging,
// ?uploadId...), which makes a GET/HEAD on a key something other than a
// plain object read. partNumber and versionId still read the object.
func hasSubresource(q url.Values) bool {
	for k := range q {
		switch k {
		case "partNumber", "versionId", "response-content-type", "response-content-disposition",
			"response-cache-control", "response-content-encoding", "response-content-language",
			"response-expires", "x-id":
		default:
			return true
		}
	}
	return false
}

// Counts are the requests a CountingProxy saw per operation, and the
// response body bytes it passed back for GetObject.
type Counts struct {
	ListObjectsV2  int64
	GetObject      int64
	HeadObject     int64
	HeadBucket     int64
	Other          int64
	GetObjectBytes int64
}

// Total is the number of requests of any kind.
func (c Counts) Total() int64 {
	return c.ListObjectsV2 + c.GetObject + c.HeadObject + c.HeadBucket + c.Other
}

func (c Counts) String() string {
	return fmt.Sprintf("ListObjectsV2=%d GetObject=%d (%d body bytes) HeadObject=%d HeadBucket=%d Other=%d",
		c.ListObjectsV2, c.GetObject, c.GetObjectBytes, c.HeadObject, c.HeadBucket, c.Other)
}

// Request is one request the proxy saw, for diagnostics.
type Request struct {
	Time   time.Time
	Op     Op
	Method string
	URI    string // path and query as received
	Range  string // the Range header, if any
}

func (r Request) String() string {
	s := fmt.Sprintf("%s %s %s", r.Op, r.Method, r.URI)
	if r.Range != "" {
		s += " Range:" + r.Range
	}
	return s
}

// Hook runs for every request before it is forwarded (after counting).
// Returning true means the hook wrote the response itself and the request
// is not forwarded: this is where later tests inject faults or latency.
type Hook func(op Op, w http.ResponseWriter, r *http.Request) (handled bool)

// maxLoggedRequests bounds the request log between resets.
const maxLoggedRequests = 20000

// CountingProxy is a reverse proxy on 127.0.0.1 in front of an S3
// endpoint that counts requests by operation. It forwards the incoming
// Host header unchanged, so SigV4 signatures made for the proxy's address
// still verify at the server.
type CountingProxy struct {
	URL    string // http://127.0.0.1:port, for --endpoint-url
	target *url.URL
	srv    *http.Server
	hook   atomic.Pointer[Hook]
	edit   atomic.Pointer[ResponseEdit]
	// silence, while set, is closed when the proxy speaks again.
	silence atomic.Pointer[chan struct{}]

	mu       sync.Mutex
	counts   Counts
	log      []Request
	inFlight int // requests whose responses are not yet fully sent
}

type opKey struct{}

// NewCountingProxy starts a proxy forwarding to target (http://host:port).
func NewCountingProxy(target string) (*CountingProxy, error) {
	tu, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	if tu.Scheme != "http" || tu.Host == "" {
		return nil, fmt.Errorf("proxy target %q: want http://host:port", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &CountingProxy{URL: "http://" + ln.Addr().String(), target: tu}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(tu)
			pr.Out.Host = pr.In.Host // keep the signed Host
		},
		Transport: &http.Transport{
			Proxy:               nil,
			DisableCompression:  true, // forward Accept-Encoding exactly as sent
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     30 * time.Second,
		},
		ModifyResponse: func(resp *http.Response) error {
			op, _ := resp.Request.Context().Value(opKey{}).(Op)
			if e := p.edit.Load(); e != nil {
				if err := (*e)(op, resp); err != nil {
					return err
				}
			}
			if op == OpGetObject {
				resp.Body = &countingBody{ReadCloser: resp.Body, p: p}
			}
			return nil
		},
	}
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			op := Classify(r)
			p.record(op, r)
			defer p.finished()
			if quiet := p.silence.Load(); quiet != nil {
				p.holdSilent(*quiet, w, r)
				return
			}
			if h := p.hook.Load(); h != nil && (*h)(op, w, r) {
				return
			}
			rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), opKey{}, op)))
		}),
		ReadHeaderTimeout: 30 * time.Second,
	}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

func (p *CountingProxy) record(op Op, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch op {
	case OpListObjectsV2:
		p.counts.ListObjectsV2++
	case OpGetObject:
		p.counts.GetObject++
	case OpHeadObject:
		p.counts.HeadObject++
	case OpHeadBucket:
		p.counts.HeadBucket++
	default:
		p.counts.Other++
	}
	p.inFlight++
	if len(p.log) < maxLoggedRequests {
		p.log = append(p.log, Request{Time: time.Now(), Op: op, Method: r.Method, URI: r.URL.RequestURI(), Range: r.Header.Get("Range")})
	}
}

func (p *CountingProxy) finished() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inFlight--
}

// WaitQuiet waits until no request is in flight and nothing has been
// counted for quiet, or timeout has passed; it reports whether it got
// there. Tests that count what one action cost call it before and after
// the action: reads the kernel or bgbfs make on their own after a
// syscall returns (read-ahead, prefetch) then land in the right count
// however slow the machine, instead of after a fixed sleep.
func (p *CountingProxy) WaitQuiet(quiet, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	var last Counts
	lastChange := time.Now()
	for {
		p.mu.Lock()
		c, busy := p.counts, p.inFlight > 0
		p.mu.Unlock()
		now := time.Now()
		if busy || c != last {
			last, lastChange = c, now
		} else if now.Sub(lastChange) >= quiet {
			return true
		}
		if now.After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type countingBody struct {
	io.ReadCloser
	p *CountingProxy
}

func (b *countingBody) Read(buf []byte) (int, error) {
	n, err := b.ReadCloser.Read(buf)
	if n > 0 {
		b.p.mu.Lock()
		b.p.counts.GetObjectBytes += int64(n)
		b.p.mu.Unlock()
	}
	return n, err
}

// Counts returns the counts since the last Reset.
func (p *CountingProxy) Counts() Counts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts
}

// Requests returns the requests seen since the last Reset (the first
// 20,000 of them).
func (p *CountingProxy) Requests() []Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Request(nil), p.log...)
}

// Reset zeroes the counts and the request log and returns the counts as
// they were.
func (p *CountingProxy) Reset() Counts {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.counts
	p.counts = Counts{}
	p.log = nil
	return c
}

// Take returns the counts and the request log since the last reset and
// resets both, atomically.
func (p *CountingProxy) Take() (Counts, []Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, log := p.counts, p.log
	p.counts, p.log = Counts{}, nil
	return c, log
}

// FormatRequests lists requests one per line for messages, the first max
// of them.
func FormatRequests(reqs []Request, max int) string {
	var b strings.Builder
	for i, r := range reqs {
		if i == max {
			fmt.Fprintf(&b, "  ... %d more\n", len(reqs)-max)
			break
		}
		b.WriteString("  " + r.String() + "\n")
	}
	return b.String()
}

// ResponseEdit changes a response from the server before the proxy passes
// it on: this is where tests make a well-behaved server look like a
// misbehaving one (no ETags, say). It may replace resp.Body; it must keep
// the headers consistent with what it does to it.
type ResponseEdit func(op Op, resp *http.Response) error

// SetResponseEdit installs e (nil removes it).
func (p *CountingProxy) SetResponseEdit(e ResponseEdit) {
	if e == nil {
		p.edit.Store(nil)
		return
	}
	p.edit.Store(&e)
}

// SetHook installs h (nil removes it).
func (p *CountingProxy) SetHook(h Hook) {
	if h == nil {
		p.hook.Store(nil)
		return
	}
	p.hook.Store(&h)
}

// SetSilent makes the proxy an S3 that has gone silent, as behind a
// network partition or a stuck load balancer: while on, it accepts
// connections and requests (and counts them) but answers nothing, not even
// headers, until the client gives up or the proxy speaks again; then it
// closes the connection without an answer. Off, it forwards as before.
func (p *CountingProxy) SetSilent(on bool) {
	if !on {
		if quiet := p.silence.Swap(nil); quiet != nil {
			close(*quiet)
		}
		return
	}
	quiet := make(chan struct{})
	if !p.silence.CompareAndSwap(nil, &quiet) {
		return // silent already
	}
}

// holdSilent keeps a request unanswered while the proxy is silent.
func (p *CountingProxy) holdSilent(quiet <-chan struct{}, w http.ResponseWriter, r *http.Request) {
	select {
	case <-quiet:
	case <-r.Context().Done():
	}
	closeConn(w, false)
}

// Close stops the proxy and drops open connections.
func (p *CountingProxy) Close() error {
	err := p.srv.Close()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
