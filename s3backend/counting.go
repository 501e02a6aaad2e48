package s3backend

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
)

// CountingStore counts the requests and bytes that pass through it to the
// store below: the daemon's own view of its traffic, for its stats page.
// (Tests count at the server instead.)
type CountingStore struct {
	next         ObjectStore
	lists        atomic.Int64
	gets         atomic.Int64
	failed       atomic.Int64
	bytesFetched atomic.Int64
}

// NewCountingStore wraps next.
func NewCountingStore(next ObjectStore) *CountingStore {
	return &CountingStore{next: next}
}

// List implements ObjectStore.
func (c *CountingStore) List(ctx context.Context, req ListRequest) (ListPage, error) {
	c.lists.Add(1)
	page, err := c.next.List(ctx, req)
	if err != nil {
		c.failed.Add(1)
	}
	return page, err
}

// ReadAt implements ObjectStore.
func (c *CountingStore) ReadAt(ctx context.Context, key, etag string, off int64, bufs ...[]byte) (int, error) {
	c.gets.Add(1)
	n, err := c.next.ReadAt(ctx, key, etag, off, bufs...)
	c.bytesFetched.Add(int64(n))
	if err != nil && !errors.Is(err, io.EOF) {
		c.failed.Add(1)
	}
	return n, err
}

// StoreStats is a snapshot of a CountingStore.
type StoreStats struct {
	ListRequests, GetRequests, FailedRequests, BytesFetched int64
}

// Stats returns the counts so far.
func (c *CountingStore) Stats() StoreStats {
	return StoreStats{
		ListRequests:   c.lists.Load(),
		GetRequests:    c.gets.Load(),
		FailedRequests: c.failed.Load(),
		BytesFetched:   c.bytesFetched.Load(),
	}
}
