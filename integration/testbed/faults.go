package testbed

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// FaultKind is one way the Faults injector makes a request go wrong.
type FaultKind string

// The faults the injector knows. Error responses and holds apply to any
// request; body faults need a response body and pass a request through
// untouched when the server's answer has none (a 412, a 404, an empty
// range).
const (
	// FaultInternalError answers 500 with an S3 InternalError body.
	FaultInternalError FaultKind = "500-InternalError"
	// FaultSlowDown answers 503 with an S3 SlowDown body (throttling).
	FaultSlowDown FaultKind = "503-SlowDown"
	// FaultReset forwards the request, sends the headers and part of the
	// body, then resets the connection (RST).
	FaultReset FaultKind = "reset-mid-body"
	// FaultTruncate forwards the request, sends the headers with the full
	// Content-Length and half the body, then closes the connection (FIN).
	FaultTruncate FaultKind = "truncated-body"
	// FaultStallBody forwards the request, sends the headers and part of
	// the body, then sends nothing for FaultPlan.Stall (or until the client
	// gives up) and closes the connection.
	FaultStallBody FaultKind = "stall-mid-body"
	// FaultHold sends nothing at all for FaultPlan.Stall (or until the
	// client gives up), then closes the connection.
	FaultHold FaultKind = "hold-no-headers"
	// FaultLatency waits FaultPlan.Latency, then forwards normally.
	FaultLatency FaultKind = "latency"
)

// FaultPlan says which requests the injector faults and how.
type FaultPlan struct {
	// Seed makes the sequence of decisions reproducible: the n-th eligible
	// request gets the same fate for the same seed (which request is n-th
	// depends on the client's timing).
	Seed uint64
	// Ops are the operations that may be faulted; empty means GetObject
	// and ListObjectsV2.
	Ops []Op
	// Rate is the fraction of eligible requests faulted, 0 to 1.
	Rate float64
	// Kinds weighs the faults: a faulted request gets kind k with
	// probability Kinds[k]/sum. Empty means error responses only, 500 and
	// 503 equally.
	Kinds map[FaultKind]int
	// Max caps how many faults of a kind are injected (absent or 0: no
	// cap); a request drawn for a kind at its cap passes untouched.
	Max map[FaultKind]int
	// Stall is how long FaultStallBody and FaultHold keep the client
	// waiting: longer than the client's request timeout. 0 means 60 s.
	Stall time.Duration
	// Latency is the delay of FaultLatency; 0 means 200 ms.
	Latency time.Duration
}

// InjectedFault is one fault the injector applied, for diagnostics.
type InjectedFault struct {
	Time  time.Time
	Op    Op
	Kind  FaultKind
	URI   string
	Range string
	Note  string // where a body was cut, how long a stall lasted
}

func (f InjectedFault) String() string {
	s := fmt.Sprintf("%s %s %s %s", f.Time.Format("15:04:05.000"), f.Kind, f.Op, f.URI)
	if f.Range != "" {
		s += " Range:" + f.Range
	}
	if f.Note != "" {
		s += " (" + f.Note + ")"
	}
	return s
}

// maxLoggedFaults bounds the injector's log.
const maxLoggedFaults = 10000

// Faults injects faults into S3 requests as a CountingProxy hook:
//
//	faults := testbed.NewFaults(target, plan)
//	proxy.SetHook(faults.Hook)
//
// For a body fault it forwards the request to target itself (with the
// Host header unchanged, so the signature still verifies) and mangles the
// response; other requests go back to the proxy. It counts what it
// injected. Close releases stalled requests.
type Faults struct {
	target *url.URL
	client *http.Client
	closed chan struct{}
	once   sync.Once

	mu       sync.Mutex
	plan     FaultPlan
	rng      *rand.Rand
	eligible int64
	injected map[FaultKind]int64
	log      []InjectedFault
}

// NewFaults returns an injector that forwards to target (http://host:port,
// the proxy's own target).
func NewFaults(target string, plan FaultPlan) (*Faults, error) {
	tu, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	if tu.Scheme != "http" || tu.Host == "" {
		return nil, fmt.Errorf("fault target %q: want http://host:port", target)
	}
	f := &Faults{
		target: tu,
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:               nil,
				DisableCompression:  true,
				MaxIdleConnsPerHost: 64,
				IdleConnTimeout:     30 * time.Second,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		closed:   make(chan struct{}),
		injected: map[FaultKind]int64{},
	}
	f.SetPlan(plan)
	return f, nil
}

// SetPlan replaces the plan and reseeds the decisions; the counts stay.
func (f *Faults) SetPlan(p FaultPlan) {
	if len(p.Ops) == 0 {
		p.Ops = []Op{OpGetObject, OpListObjectsV2}
	}
	if len(p.Kinds) == 0 {
		p.Kinds = map[FaultKind]int{FaultInternalError: 1, FaultSlowDown: 1}
	}
	if p.Stall <= 0 {
		p.Stall = 60 * time.Second
	}
	if p.Latency <= 0 {
		p.Latency = 200 * time.Millisecond
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.plan = p
	f.rng = rand.New(rand.NewPCG(p.Seed, p.Seed^0x6661756c7473))
}

// SetRate changes only the fault rate (0 turns faults off).
func (f *Faults) SetRate(rate float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.plan.Rate = rate
}

// Close releases requests held by stalls; the injector then faults nothing.
func (f *Faults) Close() {
	f.once.Do(func() { close(f.closed) })
	f.SetRate(0)
}

// Injected returns how many faults of each kind were applied.
func (f *Faults) Injected() map[FaultKind]int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[FaultKind]int64, len(f.injected))
	for k, v := range f.injected {
		out[k] = v
	}
	return out
}

// Total is the number of faults applied, of every kind.
func (f *Faults) Total() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for _, v := range f.injected {
		n += v
	}
	return n
}

// Eligible is the number of requests of the plan's operations seen.
func (f *Faults) Eligible() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.eligible
}

// Log returns the faults applied (the first 10,000).
func (f *Faults) Log() []InjectedFault {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.log)
}

// Summary is "N of M eligible requests faulted: kind=n ..." for messages.
func (f *Faults) Summary() string {
	inj := f.Injected()
	kinds := make([]string, 0, len(inj))
	var total int64
	for k, v := range inj {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, v))
		total += v
	}
	sort.Strings(kinds)
	return fmt.Sprintf("%d faults in %d eligible requests: %s", total, f.Eligible(), strings.Join(kinds, " "))
}

// fate is what decide drew for one request.
type fate struct {
	kind FaultKind // "" passes the request on
	plan FaultPlan
	cut  float64 // where in its body a body fault cuts, 0 to 1
}

// decide draws the fate of one request.
func (f *Faults) decide(op Op) fate {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.plan
	if !slices.Contains(p.Ops, op) {
		return fate{plan: p}
	}
	f.eligible++
	// Always draw all three numbers, so a request's fate depends only on
	// its position in the sequence.
	u, cut := f.rng.Float64(), f.rng.Float64()
	kinds := make([]FaultKind, 0, len(p.Kinds))
	total := 0
	for k, w := range p.Kinds {
		if w > 0 {
			kinds = append(kinds, k)
			total += w
		}
	}
	sort.Slice(kinds, func(i, j int) bool { return kinds[i] < kinds[j] })
	pick := f.rng.IntN(max(total, 1))
	if u >= p.Rate || total == 0 {
		return fate{plan: p}
	}
	for _, k := range kinds {
		if pick < p.Kinds[k] {
			if m := p.Max[k]; m > 0 && f.injected[k] >= int64(m) {
				return fate{plan: p}
			}
			// Counted now, so that concurrent requests respect Max.
			f.injected[k]++
			return fate{kind: k, plan: p, cut: cut}
		}
		pick -= p.Kinds[k]
	}
	return fate{plan: p}
}

// uncount takes back a fault decided but not applied.
func (f *Faults) uncount(kind FaultKind) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.injected[kind]--
}

// record logs a fault applied (counted by decide).
func (f *Faults) record(op Op, kind FaultKind, r *http.Request, note string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.log) < maxLoggedFaults {
		f.log = append(f.log, InjectedFault{Time: time.Now(), Op: op, Kind: kind, URI: r.URL.RequestURI(), Range: r.Header.Get("Range"), Note: note})
	}
}

// Hook is a CountingProxy hook: it faults the request per the plan, or
// returns false to let the proxy forward it.
func (f *Faults) Hook(op Op, w http.ResponseWriter, r *http.Request) bool {
	fa := f.decide(op)
	kind, p := fa.kind, fa.plan
	switch kind {
	case "":
		return false
	case FaultLatency:
		f.record(op, kind, r, p.Latency.String())
		f.sleep(r, p.Latency)
		return false
	case FaultInternalError:
		f.record(op, kind, r, "")
		WriteS3Error(w, r, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
		return true
	case FaultSlowDown:
		f.record(op, kind, r, "")
		WriteS3Error(w, r, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate.")
		return true
	case FaultHold:
		start := time.Now()
		f.sleep(r, p.Stall)
		f.record(op, kind, r, "held "+time.Since(start).Round(time.Millisecond).String())
		closeConn(w, false)
		return true
	}
	return f.bodyFault(op, fa, w, r)
}

// sleep waits d, or until the client goes away or the injector closes.
func (f *Faults) sleep(r *http.Request, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	case <-f.closed:
	}
}

// bodyFault forwards the request and breaks the response body.
func (f *Faults) bodyFault(op Op, fa fate, w http.ResponseWriter, r *http.Request) bool {
	kind := fa.kind
	out, err := http.NewRequestWithContext(r.Context(), r.Method, f.target.Scheme+"://"+f.target.Host+r.URL.RequestURI(), nil)
	if err != nil {
		f.uncount(kind)
		http.Error(w, err.Error(), http.StatusBadGateway)
		return true
	}
	out.Header = r.Header.Clone()
	out.Host = r.Host // the signature covers Host
	resp, err := f.client.Do(out)
	if err != nil {
		f.uncount(kind)
		http.Error(w, err.Error(), http.StatusBadGateway)
		return true
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		f.uncount(kind)
		http.Error(w, err.Error(), http.StatusBadGateway)
		return true
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	if resp.StatusCode/100 != 2 || len(body) < 2 || r.Method == http.MethodHead {
		// Nothing to break: pass the answer on as it is.
		f.uncount(kind)
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(body)
		return true
	}
	cut := 1 + int(fa.cut*float64(len(body)-1)) // at least one byte sent, one short
	if kind == FaultTruncate {
		cut = len(body) / 2
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body[:cut])
	_ = http.NewResponseController(w).Flush()
	note := fmt.Sprintf("%d of %d bytes sent", cut, len(body))
	if kind == FaultStallBody {
		start := time.Now()
		f.sleep(r, fa.plan.Stall)
		note += ", stalled " + time.Since(start).Round(time.Millisecond).String()
	}
	f.record(op, kind, r, note)
	closeConn(w, kind == FaultReset)
	return true
}

// closeConn takes the connection from the server and closes it, with an
// RST when reset is set, so the client sees the response end where it is.
func closeConn(w http.ResponseWriter, reset bool) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return // the server will close it after a short body anyway
	}
	if tc, ok := conn.(*net.TCPConn); ok && reset {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// WriteS3Error answers r with an S3 error document, as a server would.
func WriteS3Error(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	var b bytes.Buffer
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<Error><Code>%s</Code><Message>%s</Message><Resource>%s</Resource><RequestId>bgbfs-fault</RequestId><HostId>bgbfs-fault</HostId></Error>`,
		code, msg, xmlEscape(r.URL.Path))
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("Content-Length", fmt.Sprint(b.Len()))
	w.Header().Set("X-Amz-Request-Id", "bgbfs-fault")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b.Bytes())
	}
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&apos;").Replace(s)
}
