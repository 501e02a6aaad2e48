package memstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/bgbfs/bgbfs/s3backend"
)

// ErrInjected is the failure of a GET that Faulty was told to fail.
var ErrInjected = errors.New("injected GET failure")

// Faulty is a Store whose GETs can be made slow, held, or failing, to put
// the readers above in the states a real S3 puts them in; it counts the
// GETs and the bytes they return.
type Faulty struct {
	*Store
	// Delay is how long each GET takes, in nanoseconds (it ends early if
	// its request is cancelled).
	Delay atomic.Int64
	// Failing makes every GET fail with ErrInjected.
	Failing atomic.Bool
	// Gate, if set, holds every GET until the channel is closed.
	Gate atomic.Pointer[chan struct{}]
	// Gets counts GETs, and Fetched the bytes they returned.
	Gets, Fetched atomic.Int64
}

// ReadAt implements s3backend.ObjectStore.
func (s *Faulty) ReadAt(ctx context.Context, v s3backend.Version, off int64, bufs ...[]byte) (int, error) {
	s.Gets.Add(1)
	if g := s.Gate.Load(); g != nil {
		select {
		case <-*g:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	if d := time.Duration(s.Delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	if s.Failing.Load() {
		return 0, fmt.Errorf("get %q at %d: %w", v.Key, off, ErrInjected)
	}
	n, err := s.Store.ReadAt(ctx, v, off, bufs...)
	s.Fetched.Add(int64(n))
	return n, err
}

// Stream is Store.Stream through the faults.
func (s *Faulty) Stream(ctx context.Context, v s3backend.Version, off, n int64) io.ReadCloser {
	return stream(ctx, s, v, off, n)
}
