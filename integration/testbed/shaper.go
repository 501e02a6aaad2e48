package testbed

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

// ShapingProxy makes loopback behave like S3 from a cloud machine: every
// request waits Latency before it is forwarded, and every response body
// flows at most BytesPerSecond, so that throughput comes from concurrency
// as it does against S3. Chain it in front of a CountingProxy.
type ShapingProxy struct {
	URL string
	srv *http.Server
}

// NewShapingProxy forwards to target (http://host:port) with the given
// latency per request and throughput cap per response.
func NewShapingProxy(target string, latency time.Duration, bytesPerSecond float64) (*ShapingProxy, error) {
	tu, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(tu)
			pr.Out.Host = pr.In.Host // keep the signed Host
		},
		Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 256, IdleConnTimeout: 30 * time.Second},
		ModifyResponse: func(resp *http.Response) error {
			resp.Body = &paced{r: resp.Body, rate: bytesPerSecond, start: time.Now(), ctx: resp.Request.Context()}
			return nil
		},
		FlushInterval: -1,
	}
	p := &ShapingProxy{URL: "http://" + ln.Addr().String()}
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-time.After(latency):
			case <-r.Context().Done():
				return
			}
			rp.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 30 * time.Second,
	}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// Close stops the proxy.
func (p *ShapingProxy) Close() error { return p.srv.Close() }

// paced is a response body that never runs ahead of its rate.
type paced struct {
	r     io.ReadCloser
	rate  float64
	start time.Time
	sent  int64
	ctx   context.Context
}

func (p *paced) Read(b []byte) (int, error) {
	// Small reads keep the pacing smooth.
	if len(b) > 64<<10 {
		b = b[:64<<10]
	}
	n, err := p.r.Read(b)
	p.sent += int64(n)
	due := p.start.Add(time.Duration(float64(p.sent) / p.rate * float64(time.Second)))
	if wait := time.Until(due); wait > 0 {
		select {
		case <-time.After(wait):
		case <-p.ctx.Done():
			return n, p.ctx.Err()
		}
	}
	return n, err
}

func (p *paced) Close() error { return p.r.Close() }
