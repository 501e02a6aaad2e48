package s3backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
)

// Every request to S3 goes through Client.do (or, for a body read as it
// is consumed, through the same pieces by hand): the SDK itself makes one
// HTTP attempt per call, and the retries are made here, so that an
// attempt that stalls, one whose body breaks off and one the server
// refuses all count against one budget of attempts and wait the same
// backoff.

// errStalled marks an attempt abandoned for making no progress.
var errStalled = errors.New("transfer stalled")

// stallError is an attempt abandoned after the request timeout without
// progress: no response headers, or no body bytes. A silent S3 is as good
// as unreachable.
type stallError struct {
	waitingFor string
	after      time.Duration
}

func (e *stallError) Error() string {
	return fmt.Sprintf("%s: no %s for %v (the request timeout)", errStalled, e.waitingFor, e.after)
}

func (e *stallError) Unwrap() []error { return []error{errStalled, ErrUnreachable} }

// bodyError is a response body that broke off (reset, truncated): the
// request itself was answered, so the rest can be asked for.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// budget is the attempts one request may make and the longest wait
// between two of them.
type budget struct {
	attempts   int
	maxBackoff time.Duration
	// quiet leaves stalls unlogged: the caller reports the failure
	// itself (the start-up check, on one line).
	quiet bool
}

// do runs attempt until it succeeds, up to b.attempts times. Each attempt
// runs under a watchdog that abandons it after the request timeout
// without progress; what is retried (5xx, throttling, connection errors,
// stalls, broken bodies) and how long to wait between attempts
// (exponential backoff with full jitter) are the SDK's standard rules. A
// cancelled ctx ends it at once.
func (c *Client) do(ctx context.Context, op, key string, b budget, attempt func(ctx context.Context) error) error {
	for n := 1; ; n++ {
		actx, w := c.watch(ctx, op, key, n, b)
		err := w.stop(attempt(actx))
		if err == nil {
			return nil
		}
		if err := c.retryAfter(ctx, n, err, b); err != nil {
			return err
		}
	}
}

// retryAfter decides whether attempt n, which failed with err, is tried
// again: it waits the backoff and returns nil if so, else the error to
// give up with.
func (c *Client) retryAfter(ctx context.Context, n int, err error, b budget) error {
	if ctx.Err() != nil || !c.retryable(err) {
		return err
	}
	if n >= b.attempts {
		return fmt.Errorf("gave up after %d attempts: %w", n, err)
	}
	wait, derr := c.retryer.RetryDelay(n, err)
	if derr != nil {
		wait = b.maxBackoff
	}
	wait = min(wait, b.maxBackoff)
	if c.metrics != nil {
		c.metrics.retries.Inc()
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return err
	}
}

// retryable reports whether another attempt may succeed where err failed.
func (c *Client) retryable(err error) bool {
	var broken *bodyError
	return errors.Is(err, errStalled) || errors.As(err, &broken) || c.retryer.IsErrorRetryable(err)
}

// newRetryer holds the SDK's standard rules of what to retry and how long
// to wait; its attempts and its client-side retry quota are not used (a
// quota would turn retries into failures under a long run of faults).
func newRetryer() aws.RetryerV2 {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxBackoff = maxBackoff
		// A listing whose body breaks off or times out fails while it
		// is decoded, which the SDK does not take for a connection error.
		o.Retryables = append(o.Retryables, retry.IsErrorRetryableFunc(func(err error) aws.Ternary {
			var ne net.Error
			if errors.Is(err, io.ErrUnexpectedEOF) || (errors.As(err, &ne) && ne.Timeout()) {
				return aws.TrueTernary
			}
			return aws.UnknownTernary
		}))
	})
}

// watchdog abandons one attempt that makes no progress for the request
// timeout: from its start to the response headers, then between two reads
// of the body that bring bytes. It reports the stall the moment it
// happens: the read waiting for the request may wait on (another
// attempt, its deadline), and whoever watches the log should know now.
type watchdog struct {
	c       *Client
	op, key string
	attempt int
	budget  budget
	cancel  context.CancelCauseFunc
	timer   *time.Timer

	headers atomic.Bool  // the response headers arrived
	last    atomic.Int64 // UnixNano of the last progress

	mu      sync.Mutex
	stopped bool
	fired   *stallError
}

type watchdogKey struct{}

// watch starts the watchdog of attempt n at op on key within b; the HTTP
// client finds it in the context returned.
func (c *Client) watch(ctx context.Context, op, key string, n int, b budget) (context.Context, *watchdog) {
	actx, cancel := context.WithCancelCause(ctx)
	w := &watchdog{c: c, op: op, key: key, attempt: n, budget: b, cancel: cancel}
	w.last.Store(time.Now().UnixNano())
	w.timer = time.AfterFunc(c.requestTimeout, w.check)
	return context.WithValue(actx, watchdogKey{}, w), w
}

func watchdogOf(ctx context.Context) *watchdog {
	w, _ := ctx.Value(watchdogKey{}).(*watchdog)
	return w
}

// progress records bytes or headers arriving. It is cheap: the timer
// checks the time of the last progress when it fires.
func (w *watchdog) progress() { w.last.Store(time.Now().UnixNano()) }

// check runs when the timer fires: it abandons the attempt if nothing has
// arrived for the request timeout, else waits for the rest of it.
func (w *watchdog) check() {
	w.mu.Lock()
	if w.stopped || w.fired != nil {
		w.mu.Unlock()
		return
	}
	idle := time.Since(time.Unix(0, w.last.Load()))
	if left := w.c.requestTimeout - idle; left > 0 {
		w.timer.Reset(left)
		w.mu.Unlock()
		return
	}
	waitingFor := "response headers"
	if w.headers.Load() {
		waitingFor = "body bytes"
	}
	w.fired = &stallError{waitingFor: waitingFor, after: w.c.requestTimeout}
	w.mu.Unlock()
	w.cancel(w.fired)
	if !w.budget.quiet {
		w.c.stalls.report(w.op, w.key, waitingFor, w.c.requestTimeout, w.attempt, w.budget.attempts)
	}
}

// stalled returns the stall that ended the attempt, or nil.
func (w *watchdog) stalled() *stallError {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fired
}

// stop ends the watch once the attempt is over, and returns its error:
// err, or the stall if the watchdog ended it (the SDK reports that only
// as a cancelled request).
func (w *watchdog) stop(err error) error {
	w.mu.Lock()
	w.stopped = true
	fired := w.fired
	w.mu.Unlock()
	w.timer.Stop()
	w.cancel(nil)
	if err != nil && fired != nil && !errors.Is(err, errStalled) {
		return fired
	}
	return err
}

// watchedHTTP tells the watchdog of the request's attempt, if any, when
// response headers and body bytes arrive.
type watchedHTTP struct{ next aws.HTTPClient }

func (h watchedHTTP) Do(req *http.Request) (*http.Response, error) {
	resp, err := h.next.Do(req)
	w := watchdogOf(req.Context())
	if w == nil || err != nil {
		return resp, err
	}
	w.headers.Store(true)
	w.progress()
	resp.Body = &watchedBody{ReadCloser: resp.Body, w: w}
	return resp, nil
}

// watchedBody is a response body whose reads count as progress.
type watchedBody struct {
	io.ReadCloser
	w *watchdog
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.w.progress()
	}
	return n, err
}

// stallReportEvery spaces the stall lines: a partition stalls every
// request at once, and one line a second says as much as one a request.
const stallReportEvery = time.Second

// stallReports logs stalled attempts, the first at once and then at most
// one line every stallReportEvery; each line counts the stalls left out
// since the last.
type stallReports struct {
	logger *slog.Logger // may be nil

	mu      sync.Mutex
	last    time.Time
	skipped int
}

func (s *stallReports) report(op, key, waitingFor string, after time.Duration, attempt, attempts int) {
	if s.logger == nil {
		return
	}
	s.mu.Lock()
	now := time.Now()
	if !s.last.IsZero() && now.Sub(s.last) < stallReportEvery {
		s.skipped++
		s.mu.Unlock()
		return
	}
	skipped := s.skipped
	s.last, s.skipped = now, 0
	s.mu.Unlock()
	next := "retrying"
	if attempt >= attempts {
		next = "giving up"
	}
	s.logger.Warn("S3 request stalled", "op", op, "key", key, "waiting_for", waitingFor, "after", after.String(),
		"attempt", attempt, "max_attempts", attempts, "next", next, "other_stalls_not_logged", skipped)
}
