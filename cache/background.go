package cache

import (
	"context"
	"sync"

	"golang.org/x/sync/singleflight"
)

// Lifetime is the background work of something that is closed at
// unmount (a block cache, a member view, an open member file): work that
// no one request owns, because others may wait for it, runs under its
// context instead of the request's, and Close ends that context and waits
// for the work. Work starts only while it is open, so Close's wait never
// races with a start.
type Lifetime struct {
	ctx context.Context
	end context.CancelFunc

	mu      sync.Mutex
	closed  bool
	running sync.WaitGroup
}

// NewLifetime returns a Lifetime whose context ends with parent's, or at
// Close.
func NewLifetime(parent context.Context) *Lifetime {
	ctx, end := context.WithCancel(parent)
	return &Lifetime{ctx: ctx, end: end}
}

// Context is the context background work runs under.
func (l *Lifetime) Context() context.Context { return l.ctx }

// Start counts n pieces of work that Close must wait for, each ended by
// Done, and reports true; once Close has begun it counts nothing and
// reports false.
func (l *Lifetime) Start(n int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.running.Add(n)
	return true
}

// Done ends one piece of work Start counted.
func (l *Lifetime) Done() { l.running.Done() }

// Closed reports whether Close has begun.
func (l *Lifetime) Closed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// Close stops new work, ends the context, and waits for the work
// started.
func (l *Lifetime) Close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.end()
	l.running.Wait()
}

// WaitShared runs fn once for the concurrent callers of key in g, and
// waits for its result unless ctx ends first: fn does not stop then (the
// others still wait for it), only this caller does.
func WaitShared[T any](ctx context.Context, g *singleflight.Group, key string, fn func() (T, error)) (T, error) {
	done := g.DoChan(key, func() (any, error) { return fn() })
	select {
	case r := <-done:
		v, _ := r.Val.(T)
		return v, r.Err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}
