package npzview

import (
	"context"
	"sync"

	"golang.org/x/sync/semaphore"
)

// IndexRequests is how many GETs "bgbfs index" has in flight at most:
// enough to keep a link with tens of milliseconds per request busy on
// archives of a few hundred KB while the cores inflate others.
const IndexRequests = 32

// minHold is the least an archive holds of the memory budget, so that
// the archives in flight stay few even if they are tiny.
const minHold = 64 << 10

// IndexLimits bounds what an ArchiveIndexer runs at once, separately for
// the network and the cores: the archive bytes held in memory (a
// budget), the GETs in flight (IndexRequests) and the archives
// inflating (one per job). Fetches thus run on while the cores inflate
// archives fetched before, and the cores never wait on a round trip.
//
// An archive no bigger than an eighth of the budget is fetched whole in
// one GET and indexed from memory, holding its size of the budget from
// its fetch to its end. A bigger one reads its zip directory with ranged
// GETs and streams its members in one GET, as the inflater consumes
// them; it holds an eighth of the budget, so that at most eight stream
// at once, and gives its core back while it waits for the stream.
type IndexLimits struct {
	cpu, memory, requests *semaphore.Weighted
	// wholeMax is the largest archive fetched whole.
	wholeMax int64
	// buffers are the buffers of archives fetched whole, for the next:
	// thousands of small archives would each cost a fresh allocation,
	// zeroed and faulted in, of the memory the one before gave back.
	buffers sync.Pool
}

// NewIndexLimits returns limits for jobs archives inflating at once
// and memory bytes of archives held.
func NewIndexLimits(jobs int, memory int64) *IndexLimits {
	return &IndexLimits{
		cpu:      semaphore.NewWeighted(int64(max(jobs, 1))),
		memory:   semaphore.NewWeighted(max(memory, minHold)),
		requests: semaphore.NewWeighted(IndexRequests),
		wholeMax: memory / 8,
	}
}

// Hold waits until the budget has room for an archive of size bytes,
// takes it, and returns the function that gives it back: the caller
// holds it while the archive is indexed, so that archives fetched and
// waiting for a core never exceed the budget.
func (l *IndexLimits) Hold(ctx context.Context, size int64) (release func(), err error) {
	n := max(min(roundedHold(size), l.wholeMax), minHold)
	if err := l.memory.Acquire(ctx, n); err != nil {
		return nil, err
	}
	return func() { l.memory.Release(n) }, nil
}

// roundedHold is size rounded up to a whole minHold: what Hold takes and
// archiveBuffer gives, so that a reused buffer is within what its archive
// holds of the budget.
func roundedHold(size int64) int64 { return (size + minHold - 1) / minHold * minHold }

// archiveBuffer returns a buffer of at least size bytes, and no more
// than Hold took for it, for an archive fetched whole; reuse gives it
// back once nothing refers to it.
func (l *IndexLimits) archiveBuffer(size int64) *[]byte {
	b, ok := l.buffers.Get().(*[]byte)
	if ok && int64(cap(*b)) >= size && int64(cap(*b)) <= roundedHold(size) {
		return b
	}
	fresh := make([]byte, roundedHold(size))
	return &fresh
}

func (l *IndexLimits) reuse(b *[]byte) { l.buffers.Put(b) }

// fetchedWhole reports whether an archive of size bytes is fetched whole.
func (l *IndexLimits) fetchedWhole(size int64) bool { return size > 0 && size <= l.wholeMax }

// request runs f as one GET in flight.
func (l *IndexLimits) request(ctx context.Context, f func() error) error {
	if err := l.requests.Acquire(ctx, 1); err != nil {
		return err
	}
	defer l.requests.Release(1)
	return f()
}

// core is one job's claim on a core: held while inflating, given back
// while waiting for bytes of the network.
type core struct {
	cpu  *semaphore.Weighted
	held bool
}

func (c *core) acquire(ctx context.Context) error {
	if c.held {
		return nil
	}
	if err := c.cpu.Acquire(ctx, 1); err != nil {
		return err
	}
	c.held = true
	return nil
}

func (c *core) release() {
	if c.held {
		c.cpu.Release(1)
		c.held = false
	}
}
