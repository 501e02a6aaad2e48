package fs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// errReadTimeout ends a request that waited Config.ReadTimeout for S3.
var errReadTimeout = errors.New("no answer from S3 within the read timeout")

// kernelRetryGrace is what a read the kernel sends again gets beyond the
// deadline of the one that failed. The kernel reads ahead of a reader in
// requests of its own; when one fails, it asks at once, synchronously,
// for the page the reader waits on. Given a deadline of its own, that
// request would make the reader wait twice the read timeout.
const kernelRetryGrace = time.Second

// readDeadlines gives each read of one open file its deadline: the read
// timeout from when the kernel asks, or, for a read of pages a read of
// the handle failed on less than kernelRetryGrace after that read's
// deadline (the kernel asking again), that read's deadline plus
// kernelRetryGrace. Such a read still tries: S3 may be back.
type readDeadlines struct {
	mu     sync.Mutex
	failed []failedRead
}

// failedRead is a read of [off, end) that failed, and its deadline.
type failedRead struct {
	off, end int64
	deadline time.Time
}

// start returns the context of a read of [off, off+n) with its deadline,
// which it also returns. timeout 0 means no deadline.
func (d *readDeadlines) start(ctx context.Context, timeout time.Duration, off int64, n int) (context.Context, context.CancelFunc, time.Time) {
	if timeout <= 0 {
		return ctx, func() {}, time.Time{}
	}
	now := time.Now()
	deadline := now.Add(timeout)
	d.mu.Lock()
	kept := d.failed[:0]
	for _, f := range d.failed {
		retryBy := f.deadline.Add(kernelRetryGrace)
		if !now.Before(retryBy) {
			continue // forgotten
		}
		kept = append(kept, f)
		if off < f.end && off+int64(n) > f.off && retryBy.Before(deadline) {
			deadline = retryBy
		}
	}
	d.failed = kept
	d.mu.Unlock()
	ctx, cancel := context.WithDeadlineCause(ctx, deadline, errReadTimeout)
	return ctx, cancel, deadline
}

// maxFailedReads bounds the failed reads a handle remembers: the kernel
// has a few read-ahead requests of one file in flight.
const maxFailedReads = 16

// fail records that the read of [off, off+n) with deadline failed.
func (d *readDeadlines) fail(off int64, n int, deadline time.Time) {
	if deadline.IsZero() {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.failed) == maxFailedReads {
		d.failed = d.failed[1:]
	}
	d.failed = append(d.failed, failedRead{off: off, end: off + int64(n), deadline: deadline})
}

// listPage returns the context of one LIST page of a directory's listing:
// the read timeout bounds each page, not the whole listing, which for a
// directory of a million objects takes minutes of answers.
func (t *tree) listPage(ctx context.Context) (context.Context, context.CancelFunc) {
	if t.ReadTimeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeoutCause(ctx, t.ReadTimeout, errReadTimeout)
}

// timedOut returns err, said to be a timeout if ctx's deadline ended it.
func timedOut(ctx context.Context, err error) error {
	if err != nil && context.Cause(ctx) == errReadTimeout && !errors.Is(err, errReadTimeout) {
		return fmt.Errorf("%w: %w", errReadTimeout, err)
	}
	return err
}
