package cache

import "sync"

// budget is a count of bytes that may be held, taken without waiting: a
// reader that cannot get room for read-ahead reads without it.
type budget struct {
	total int64
	mu    sync.Mutex
	used  int64
}

func newBudget(total int64) *budget { return &budget{total: total} }

func (b *budget) tryTake(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.total {
		return false
	}
	b.used += n
	return true
}

func (b *budget) give(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.used < 0 {
		panic("cache: read-ahead budget released more than was taken")
	}
}

func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
