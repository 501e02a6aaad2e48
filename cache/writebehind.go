package cache

import (
	"context"
	"sync"

	"golang.org/x/sync/semaphore"
)

// WriteBehind writes copies of bytes to a Dir in the background: a read
// that has bytes worth keeping never waits for the disk. The copies
// waiting are bounded in bytes (a read that finds no room does not wait:
// its bytes are not written, and are read again from S3 next time), and
// the writes under way in number, so that a burst queues instead of
// opening hundreds of files at once.
type WriteBehind struct {
	pending *Budget
	writers *semaphore.Weighted
	writes  sync.WaitGroup
}

// NewWriteBehind bounds the bytes of copies waiting to backlog, and the
// writes under way at once to writers.
func NewWriteBehind(backlog, writers int64) *WriteBehind {
	return &WriteBehind{pending: NewBudget(backlog), writers: semaphore.NewWeighted(writers)}
}

// Start copies the first of parts that fit in the backlog, one after
// the other, into one buffer, and calls write with it and their number
// in the background; it returns how many parts it took (0: write is not
// called).
func (w *WriteBehind) Start(parts [][]byte, write func(data []byte, taken int)) int {
	var size int64
	taken := 0
	for _, b := range parts {
		if !w.pending.TryTake(int64(len(b))) {
			break
		}
		size += int64(len(b))
		taken++
	}
	if taken == 0 {
		return 0
	}
	data := make([]byte, 0, size)
	for _, b := range parts[:taken] {
		data = append(data, b...)
	}
	w.writes.Add(1)
	go func() {
		defer w.writes.Done()
		defer w.pending.Give(size)
		_ = w.writers.Acquire(context.Background(), 1) // cannot fail
		defer w.writers.Release(1)
		write(data, taken)
	}()
	return taken
}

// Wait waits for the writes started so far.
func (w *WriteBehind) Wait() { w.writes.Wait() }
