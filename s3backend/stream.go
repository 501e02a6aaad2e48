package s3backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// Stream returns a reader of the n bytes of version v at off, read in one
// ranged GET as they are consumed, for a reader that wants a long stretch
// once (such as "bgbfs index" inflating a member whole) and would pay a
// request per part through ReadAt. A body that breaks off or stalls is
// resumed with a GET of the rest, up to the client's attempts; the bytes
// are checked as ReadAt checks them (ErrStale, ErrBadResponse). It ends
// with io.EOF after n bytes or at the end of the object. The caller
// closes it.
func (c *Client) Stream(ctx context.Context, v Version, off, n int64) io.ReadCloser {
	// The listed size bounds the range: past it a server answers 416,
	// or, checking If-Match first, an error for the changed object.
	return &rangeStream{c: c, ctx: ctx, v: v, pos: off, end: min(off+n, max(v.Size, off))}
}

// rangeStream is the reader Stream returns. It is not safe for
// concurrent use.
type rangeStream struct {
	c        *Client
	ctx      context.Context
	v        Version
	pos, end int64

	body     io.ReadCloser
	cancel   context.CancelCauseFunc
	reqCtx   context.Context
	stall    *time.Timer
	attempts int
	lastErr  error
}

func (s *rangeStream) Read(p []byte) (int, error) {
	for {
		if s.pos >= s.end {
			return 0, io.EOF
		}
		if s.body == nil {
			if err := s.open(); err != nil {
				return 0, err
			}
		}
		if int64(len(p)) > s.end-s.pos {
			p = p[:s.end-s.pos]
		}
		n, err := s.body.Read(p)
		s.pos += int64(n)
		if n > 0 {
			s.stall.Reset(s.c.requestTimeout)
			return n, nil
		}
		if err == nil {
			continue
		}
		stalled := context.Cause(s.reqCtx) == errStalled
		s.closeBody()
		if s.ctx.Err() != nil {
			return 0, s.ctx.Err()
		}
		if errors.Is(err, io.EOF) && !stalled {
			// The answer was checked to cover the range: a body that
			// ends early broke off.
			err = io.ErrUnexpectedEOF
		}
		if stalled {
			err = errStalled
		}
		s.lastErr = fmt.Errorf("get %q: body broke off at %d: %w", s.v.Key, s.pos, err)
		if s.c.metrics != nil {
			s.c.metrics.retries.Inc()
		}
	}
}

// open sends the GET of the rest of the range, after a backoff if an
// earlier body broke off.
func (s *rangeStream) open() error {
	if s.attempts > 0 {
		if s.attempts >= s.c.maxAttempts {
			return fmt.Errorf("get %q: gave up after %d attempts: %w", s.v.Key, s.attempts, s.lastErr)
		}
		wait := min(maxBackoff, 100*time.Millisecond<<min(s.attempts, 10))
		select {
		case <-time.After(rand.N(wait) + wait/2):
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
	}
	s.attempts++
	s.reqCtx, s.cancel = context.WithCancelCause(s.ctx)
	out, err := s.c.openRange(s.reqCtx, s.v, s.pos, s.end-s.pos)
	if err != nil {
		s.cancel(nil)
		if errors.Is(err, io.EOF) {
			return io.ErrUnexpectedEOF // the object is shorter than the range
		}
		return err
	}
	if aws.ToInt64(out.ContentLength) < s.end-s.pos {
		s.end = s.pos + aws.ToInt64(out.ContentLength) // the object ends first
	}
	s.body = out.Body
	cancel := s.cancel
	s.stall = time.AfterFunc(s.c.requestTimeout, func() { cancel(errStalled) })
	return nil
}

func (s *rangeStream) closeBody() {
	if s.body == nil {
		return
	}
	s.stall.Stop()
	s.body.Close()
	s.cancel(nil)
	s.body = nil
}

// Close ends the GET in flight, if any.
func (s *rangeStream) Close() error {
	s.closeBody()
	return nil
}
