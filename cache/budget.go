package cache

import "sync"

// Budget is a count of bytes that may be held, taken without waiting: a
// reader that cannot get room for read-ahead reads without it, and a
// member file that cannot get room for a decoded span does not keep it.
type Budget struct {
	total int64
	// watch, if set, is told the bytes taken after every change, in the
	// order of the changes.
	watch func(used int64)
	mu    sync.Mutex
	used  int64
}

// NewBudget returns a budget of total bytes.
func NewBudget(total int64) *Budget { return &Budget{total: total} }

// TryTake takes n bytes if they fit.
func (b *Budget) TryTake(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.total {
		return false
	}
	b.used += n
	b.changed()
	return true
}

// Give returns n bytes taken before.
func (b *Budget) Give(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.used < 0 {
		panic("cache: budget given back more than was taken")
	}
	b.changed()
}

func (b *Budget) changed() {
	if b.watch != nil {
		b.watch(b.used)
	}
}

// InUse is the bytes taken and not given back.
func (b *Budget) InUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Total is the size of the budget.
func (b *Budget) Total() int64 { return b.total }
