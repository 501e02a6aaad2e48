package npzview

import (
	"sync"
	"sync/atomic"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npz"
)

// spanBufferRound is what a new span buffer's size is rounded up to: the
// spans of one member differ in length by up to a deflate block, and a
// buffer a little larger than its first span fits the next ones.
const spanBufferRound = 64 << 10

// spanBuffer is the memory one decoded span is inflated into. Its
// references are counted: the inflation writing it, the open's list of
// held spans, and each read copying out of it hold one. When the last
// is released the buffer goes back to its pool, to be written with
// another span: nothing may read it after releasing its reference. A
// reference that is never released leaves the buffer to the garbage
// collector (a span not held: the reads that waited for it copy from it
// without a reference of their own).
type spanBuffer struct {
	data []byte // its whole capacity
	refs atomic.Int64
	pool *spanBuffers
	// inflater, if set, inflates on into data (a span inflated in
	// part); its own buffers go back with the last reference.
	inflater *npz.SpanInflater
}

// acquire takes another reference; the caller must hold one already, or
// hold the lock of a list that does.
func (b *spanBuffer) acquire() { b.refs.Add(1) }

// release gives a reference back; a nil b has none to give.
func (b *spanBuffer) release() {
	if b == nil {
		return
	}
	switch n := b.refs.Add(-1); {
	case n == 0:
		if b.inflater != nil {
			b.inflater.Release()
			b.inflater = nil
		}
		b.pool.put(b)
	case n < 0:
		panic("npzview: span buffer released more often than acquired")
	}
}

// spanBuffers lends decoded spans their buffers and takes them back when
// nothing reads them: eight loaders reading a window each through a new
// open then reuse a few warm buffers instead of each span writing a
// megabyte of fresh pages (the kernel's page faults and the zeroing were
// a third of the daemon's CPU with every block in memory). The buffers
// it keeps free and the spans held together fit in the span budget. It
// is safe for concurrent use.
type spanBuffers struct {
	budget *cache.Budget

	mu        sync.Mutex
	free      []*spanBuffer
	freeBytes int64
}

func newSpanBuffers(budget *cache.Budget) *spanBuffers {
	return &spanBuffers{budget: budget}
}

// get returns a buffer of at least n bytes, with one reference: the
// caller's. It is the smallest free one that fits: a window's spans are
// a whole checkpoint span and short ones (the row's end, the stretch
// past it), and a short span given a long buffer left the next long span
// none, which then took a megabyte of fresh pages.
func (p *spanBuffers) get(n int64) *spanBuffer {
	p.mu.Lock()
	best := -1
	for i, b := range p.free {
		if l := len(b.data); int64(l) >= n && (best < 0 || l < len(p.free[best].data)) {
			best = i
		}
	}
	if best >= 0 {
		b := p.free[best]
		p.free[best] = p.free[len(p.free)-1]
		p.free[len(p.free)-1] = nil
		p.free = p.free[:len(p.free)-1]
		p.freeBytes -= int64(len(b.data))
		p.mu.Unlock()
		b.refs.Store(1)
		return b
	}
	p.mu.Unlock()
	b := &spanBuffer{data: make([]byte, (n+spanBufferRound-1)/spanBufferRound*spanBufferRound), pool: p}
	b.refs.Store(1)
	return b
}

// put keeps b for another span if it fits in the span budget beside the
// spans held; otherwise the garbage collector takes it.
func (p *spanBuffers) put(b *spanBuffer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := int64(len(b.data))
	if p.freeBytes+n+p.budget.InUse() > p.budget.Total() {
		return
	}
	p.free = append(p.free, b)
	p.freeBytes += n
}

// idle is how many buffers p keeps free, and their bytes.
func (p *spanBuffers) idle() (int, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.free), p.freeBytes
}
