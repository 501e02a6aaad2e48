package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/bgbfs/bgbfs/s3backend"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
)

// countingLister counts LIST requests and can fail them.
type countingLister struct {
	*memstore.Store
	lists atomic.Int64
	fail  atomic.Bool
}

func (c *countingLister) List(ctx context.Context, req s3backend.ListRequest) (s3backend.ListPage, error) {
	c.lists.Add(1)
	if c.fail.Load() {
		return s3backend.ListPage{}, errors.New("injected failure")
	}
	time.Sleep(time.Millisecond) // let concurrent callers overlap
	return c.Store.List(ctx, req)
}

func newTestDir(t *testing.T, ttl time.Duration, keys int) (*dirNode, *countingLister) {
	t.Helper()
	mem := memstore.New()
	for i := range keys {
		mem.Put(fmt.Sprintf("p/f%05d.npz", i), []byte("x"))
	}
	mem.Put("p/sub/inner", []byte("y"))
	lister := &countingLister{Store: mem}
	tr := &tree{Config: Config{Lister: lister, Prefix: "p/", MetadataTTL: ttl, Logger: slog.New(slog.DiscardHandler)}}
	return tr.newDirNode("p/"), lister
}

func TestListingIsReusedWithinTTL(t *testing.T) {
	d, lister := newTestDir(t, time.Hour, 2500)
	ctx := context.Background()
	l, err := d.getListing(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.entries) != 2501 {
		t.Fatalf("%d entries, want 2501", len(l.entries))
	}
	if got := lister.lists.Load(); got != 3 {
		t.Fatalf("listing 2,501 entries took %d LISTs, want 3 pages", got)
	}
	for range 10 {
		if _, err := d.getListing(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := lister.lists.Load(); got != 3 {
		t.Errorf("lookups within the TTL made %d more LISTs", got-3)
	}
	d.expire()
	if _, err := d.getListing(ctx); err != nil {
		t.Fatal(err)
	}
	if got := lister.lists.Load(); got != 6 {
		t.Errorf("after expiry: %d LISTs in all, want 6", got)
	}
}

func TestConcurrentRefreshesShareOneListing(t *testing.T) {
	d, lister := newTestDir(t, time.Hour, 10)
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := d.getListing(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got := lister.lists.Load(); got != 1 {
		t.Errorf("50 concurrent lookups made %d LISTs, want 1", got)
	}
}

func TestFailedRefreshServesThePreviousListing(t *testing.T) {
	d, lister := newTestDir(t, time.Hour, 3)
	ctx := context.Background()
	if _, err := d.getListing(ctx); err != nil {
		t.Fatal(err)
	}
	lister.fail.Store(true)
	d.expire()
	l, err := d.getListing(ctx)
	if err != nil || len(l.entries) != 4 {
		t.Fatalf("during an outage: %v, %d entries; want the previous 4", err, len(l.entries))
	}
	before := lister.lists.Load()
	if _, err := d.getListing(ctx); err != nil {
		t.Fatal(err)
	}
	if lister.lists.Load() != before {
		t.Error("a failed refresh was retried at once instead of after a pause")
	}

	fresh, lister2 := newTestDir(t, time.Hour, 3)
	lister2.fail.Store(true)
	if _, err := fresh.getListing(ctx); err == nil {
		t.Error("a directory never listed answered during an outage")
	}
}

func TestRepeatedContinuationTokenIsAnError(t *testing.T) {
	tr := &tree{Config: Config{Lister: loopingLister{}, MetadataTTL: time.Hour, Logger: slog.New(slog.DiscardHandler)}}
	d := tr.newDirNode("")
	done := make(chan error, 1)
	go func() { _, err := d.getListing(context.Background()); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a listing whose token repeats succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a listing whose token repeats never ended")
	}
}

// loopingLister hands out the same continuation token forever.
type loopingLister struct{ s3backend.ObjectStore }

func (loopingLister) List(ctx context.Context, req s3backend.ListRequest) (s3backend.ListPage, error) {
	return s3backend.ListPage{Objects: []s3backend.ObjectInfo{{Key: "a"}}, NextContinuationToken: "same"}, nil
}

// The kernel may forget a directory's inode at any time; the listing must
// survive that, or a lookup after drop_caches would list again.
func TestListingOutlivesTheNode(t *testing.T) {
	d, lister := newTestDir(t, time.Hour, 5)
	if _, err := d.getListing(context.Background()); err != nil {
		t.Fatal(err)
	}
	again := d.tree.newDirNode("p/")
	if _, err := again.getListing(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := lister.lists.Load(); got != 1 {
		t.Errorf("a new node for a listed directory made %d LISTs in all, want 1", got)
	}
}

// An ESTALE read expires its directory's listing while lookups in the
// same directory use it: the listing a lookup got must not change under
// it (go test -race reported the write of expire against the read of the
// lookup).
func TestExpireDuringLookup(t *testing.T) {
	d, _ := newTestDir(t, time.Hour, 3)
	gofs.NewNodeFS(d, nil) // gives the node a bridge, so Lookup can make inodes
	ctx := context.Background()
	if _, err := d.getListing(ctx); err != nil {
		t.Fatal(err)
	}
	lookupsDone := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-lookupsDone:
				return
			default:
				d.expire()
			}
		}
	}()
	go func() {
		defer wg.Done()
		defer close(lookupsDone)
		for range 200 {
			var out fuse.EntryOut
			if _, errno := d.Lookup(ctx, "f00001.npz", &out); errno != 0 {
				t.Errorf("lookup: %v", errno)
				return
			}
			if out.EntryTimeout() <= 0 {
				t.Errorf("lookup gave entry timeout %v", out.EntryTimeout())
				return
			}
		}
	}()
	wg.Wait()
}

// heldLister holds every LIST until release is closed.
type heldLister struct {
	*memstore.Store
	lists   atomic.Int64
	release chan struct{}
}

func (h *heldLister) List(ctx context.Context, req s3backend.ListRequest) (s3backend.ListPage, error) {
	h.lists.Add(1)
	select {
	case <-h.release:
	case <-ctx.Done():
		return s3backend.ListPage{}, ctx.Err()
	}
	return h.Store.List(ctx, req)
}

// A complete listing past its TTL answers lookups at once while one
// background LIST replaces it; one too old, or expired by a read that
// found an object changed, makes lookups wait for the new listing.
func TestStaleListingAnswersDuringRefresh(t *testing.T) {
	const ttl = time.Minute
	ctx := context.Background()
	setup := func(t *testing.T, age time.Duration) (*dirNode, *heldLister) {
		mem := memstore.New()
		for i := range 3 {
			mem.Put(fmt.Sprintf("p/f%d", i), []byte("x"))
		}
		lister := &heldLister{Store: mem, release: make(chan struct{})}
		tr := &tree{Config: Config{Lister: lister, Prefix: "p/", MetadataTTL: ttl, Logger: slog.New(slog.DiscardHandler)}}
		d := tr.newDirNode("p/")
		page, err := mem.List(ctx, s3backend.ListRequest{Prefix: "p/", Delimiter: "/"})
		if err != nil {
			t.Fatal(err)
		}
		d.installListing(page, time.Now().Add(-age))
		mem.Put("p/new", []byte("y"))
		return d, lister
	}
	// getListing fails the test if it does not answer while LISTs are held.
	answered := func(t *testing.T, d *dirNode) *listing {
		t.Helper()
		type result struct {
			l   *listing
			err error
		}
		done := make(chan result, 1)
		go func() { l, err := d.getListing(ctx); done <- result{l, err} }()
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatal(r.err)
			}
			return r.l
		case <-time.After(10 * time.Second):
			t.Fatal("a lookup waited for the held LIST")
			return nil
		}
	}
	hasNew := func(l *listing) bool { _, ok := l.lookup("new"); return ok }

	t.Run("past the TTL", func(t *testing.T) {
		d, lister := setup(t, ttl+ttl/2)
		for range 5 {
			if l := answered(t, d); hasNew(l) || len(l.entries) != 3 {
				t.Fatalf("while the LIST is held: %q, want the previous 3 entries", names(l.entries))
			}
		}
		close(lister.release)
		if !waitFor(func() bool { return hasNew(answered(t, d)) }) {
			t.Fatal("the background refresh never landed")
		}
		if got := lister.lists.Load(); got != 1 {
			t.Errorf("6 lookups past the TTL made %d LISTs, want 1", got)
		}
	})
	for _, tt := range []struct {
		name   string
		age    time.Duration
		expire bool
	}{
		{"past twice the TTL", 2*ttl + time.Second, false},
		{"expired by a changed object", time.Second, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d, lister := setup(t, tt.age)
			if tt.expire {
				d.expire()
			}
			close(lister.release)
			l, err := d.getListing(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !hasNew(l) {
				t.Errorf("answered from the previous listing %q, want one listed again", names(l.entries))
			}
		})
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(cond func() bool) bool {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return true
		}
	}
	return false
}
