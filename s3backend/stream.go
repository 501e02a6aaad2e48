package s3backend

import (
	"context"
	"errors"
	"fmt"
	"io"

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

	// body is the GET being read, watched by watch (its attempt
	// attempts): no bytes for the request timeout abandon it.
	body     io.ReadCloser
	watch    *watchdog
	attempts int
	// err, once set, ends the stream.
	err error
}

func (s *rangeStream) Read(p []byte) (int, error) {
	for {
		if s.err != nil {
			return 0, s.err
		}
		if s.pos >= s.end {
			return 0, io.EOF
		}
		if s.body == nil {
			s.open()
			continue
		}
		if int64(len(p)) > s.end-s.pos {
			p = p[:s.end-s.pos]
		}
		n, err := s.body.Read(p)
		s.pos += int64(n)
		if n > 0 {
			return n, nil
		}
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) {
			// The answer was checked to cover the range: a body that
			// ends early broke off.
			err = io.ErrUnexpectedEOF
		}
		s.failed(&bodyError{fmt.Errorf("get %q: body broke off at %d: %w", s.v.Key, s.pos, err)})
	}
}

// open sends the GET of the rest of the range.
func (s *rangeStream) open() {
	s.attempts++
	ctx, w := s.c.watch(s.ctx, "GetObject", s.v.Key, s.attempts, s.c.budget())
	out, err := s.c.openRange(ctx, s.v, s.pos, s.end-s.pos)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the object is shorter than the range
		}
		s.watch = w
		s.failed(err)
		return
	}
	if aws.ToInt64(out.ContentLength) < s.end-s.pos {
		s.end = s.pos + aws.ToInt64(out.ContentLength) // the object ends first
	}
	s.body, s.watch = out.Body, w
}

// failed ends the current attempt with err and either waits to try again
// or ends the stream.
func (s *rangeStream) failed(err error) {
	s.closeBody()
	err = s.watch.stop(err)
	s.watch = nil
	if err = s.c.retryAfter(s.ctx, s.attempts, err, s.c.budget()); err != nil {
		if s.ctx.Err() != nil {
			err = s.ctx.Err()
		}
		s.err = err
	}
}

func (s *rangeStream) closeBody() {
	if s.body != nil {
		s.body.Close()
		s.body = nil
	}
}

// Close ends the GET in flight, if any.
func (s *rangeStream) Close() error {
	s.closeBody()
	if s.watch != nil {
		s.watch.stop(nil)
		s.watch = nil
	}
	return nil
}
