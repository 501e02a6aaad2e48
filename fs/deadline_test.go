package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/s3backend"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
)

// TestReadDeadlines: a read gets the read timeout; a read of pages that a
// read of the same handle failed on, before that read's deadline plus the
// grace (the kernel asking again for the page its failed read-ahead
// held), gets that deadline plus the grace instead, so that the reader's
// read() ends within the timeout and the grace, not twice the timeout.
func TestReadDeadlines(t *testing.T) {
	const timeout = time.Minute
	now := time.Now()
	for _, tt := range []struct {
		name string
		// failed is a read that failed with this deadline, relative to now.
		failedOff, failedLen int64
		failedDeadline       time.Duration
		off                  int64
		n                    int
		want                 time.Duration // relative to now
	}{
		{"no read failed", 0, 0, 0, 0, 4096, timeout},
		{"the kernel's retry of a page of a failed read", 1 << 20, 1 << 20, 0, 1<<20 + 8192, 4096, kernelRetryGrace},
		{"a read over the end of a failed one", 1 << 20, 1 << 20, 0, 2<<20 - 100, 4096, kernelRetryGrace},
		{"a read of other pages", 1 << 20, 1 << 20, 0, 2 << 20, 4096, timeout},
		{"a retry after a read that failed early", 0, 4096, 30 * time.Second, 0, 4096, 30*time.Second + kernelRetryGrace},
		{"long after the failed read", 0, 4096, -2 * kernelRetryGrace, 0, 4096, timeout},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var d readDeadlines
			if tt.failedLen > 0 {
				d.fail(tt.failedOff, int(tt.failedLen), now.Add(tt.failedDeadline))
			}
			ctx, cancel, deadline := d.start(context.Background(), timeout, tt.off, tt.n)
			defer cancel()
			got, ok := ctx.Deadline()
			if !ok || !got.Equal(deadline) {
				t.Fatalf("context deadline %v (%v), returned %v", got, ok, deadline)
			}
			// start reads the clock after now.
			if d := got.Sub(now); d < tt.want || d > tt.want+time.Second {
				t.Errorf("deadline in %v, want %v", d, tt.want)
			}
		})
	}
	var d readDeadlines
	ctx, cancel, deadline := d.start(context.Background(), 0, 0, 4096)
	defer cancel()
	if _, ok := ctx.Deadline(); ok || !deadline.IsZero() {
		t.Error("a read timeout of 0 set a deadline")
	}
}

// TestReadTimeoutIsEIO: a request whose own deadline ended it is a
// timeout (EIO, logged), one the kernel interrupted is EINTR.
func TestReadTimeoutIsEIO(t *testing.T) {
	tr := &tree{Config: Config{Logger: slog.New(slog.DiscardHandler), ReadTimeout: time.Millisecond}}
	var d readDeadlines
	ctx, cancel, _ := d.start(context.Background(), time.Millisecond, 0, 1)
	defer cancel()
	<-ctx.Done()
	if got := tr.errno(ctx, "read", "k", ctx.Err()); got != syscall.EIO {
		t.Errorf("read past its deadline: %v, want EIO", got)
	}
	interrupted, stop := context.WithCancel(context.Background())
	stop()
	ctx, cancel, _ = d.start(interrupted, time.Minute, 0, 1)
	defer cancel()
	if got := tr.errno(ctx, "read", "k", ctx.Err()); got != syscall.EINTR {
		t.Errorf("interrupted read: %v, want EINTR", got)
	}
}

// pacedLister answers each LIST page after delay, or, once silent is set,
// never (until the request's context ends).
type pacedLister struct {
	*memstore.Store
	delay  time.Duration
	silent atomic.Bool
}

func (p *pacedLister) List(ctx context.Context, req s3backend.ListRequest) (s3backend.ListPage, error) {
	wait := p.delay
	if p.silent.Load() {
		wait = time.Hour
	}
	select {
	case <-time.After(wait):
	case <-ctx.Done():
		return s3backend.ListPage{}, ctx.Err()
	}
	return p.Store.List(ctx, req)
}

// TestListingPagesHaveTheReadTimeout: the read timeout bounds each LIST
// page of a directory's listing, not the whole: a listing of many pages
// that takes longer than the timeout in all, a page at a time, is right;
// one whose page does not come fails within the timeout, said to be a
// timeout.
func TestListingPagesHaveTheReadTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	mem := memstore.New()
	for i := range 5000 { // 5 pages of 1,000
		mem.Put(fmt.Sprintf("p/f%05d.bin", i), []byte("x"))
	}
	lister := &pacedLister{Store: mem, delay: timeout / 3}
	tr := &tree{Config: Config{Lister: lister, Prefix: "p/", MetadataTTL: time.Hour, ReadTimeout: timeout, Logger: slog.New(slog.DiscardHandler)}}
	start := time.Now()
	l, err := tr.newDirNode("p/").getListing(context.Background())
	if err != nil || len(l.entries) != 5000 {
		t.Fatalf("a listing of 5 pages: %v", err)
	}
	if took := time.Since(start); took < timeout {
		t.Fatalf("test bed: the listing took %v, not longer than the timeout", took)
	}
	lister.silent.Store(true)
	start = time.Now()
	_, err = tr.newDirNode("q/").getListing(context.Background())
	took := time.Since(start)
	if !errors.Is(err, errReadTimeout) {
		t.Errorf("a listing whose page never comes: %v, want a read timeout", err)
	}
	if took > timeout+time.Second {
		t.Errorf("it failed after %v, want about %v", took, timeout)
	}
}
