package fs

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/s3backend"
)

// syntheticLister lists, under any prefix, files f000000_windows.npz ...
// with the realistic lengths of the training cache's keys and S3's quoted
// MD5 ETags, made page by page instead of kept in a store.
type syntheticLister struct {
	s3backend.ObjectStore
	perDir int
}

func (s syntheticLister) List(ctx context.Context, req s3backend.ListRequest) (s3backend.ListPage, error) {
	start := 0
	if req.ContinuationToken != "" {
		n, err := strconv.Atoi(req.ContinuationToken)
		if err != nil {
			return s3backend.ListPage{}, err
		}
		start = n
	}
	end := min(start+1000, s.perDir)
	var page s3backend.ListPage
	mtime := time.Unix(1700000000, 0)
	for i := start; i < end; i++ {
		page.Objects = append(page.Objects, s3backend.ObjectInfo{
			Key:          fmt.Sprintf("%saaaaaaac_s%03d_t%03d_%06d_windows.npz", req.Prefix, i%7, i%13, i),
			Size:         85 << 20,
			ETag:         fmt.Sprintf(`"%032x"`, i),
			LastModified: mtime,
		})
	}
	if end < s.perDir {
		page.NextContinuationToken = strconv.Itoa(end)
	}
	return page, nil
}

// heapInUse is the live heap after a full collection.
func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// Listings are bounded: walking many large directories must not keep all
// of their listings (the tree once kept every listing until unmount).
func TestListingsStayWithinBudget(t *testing.T) {
	const dirs, perDir = 500, 1000
	tr := &tree{Config: Config{Lister: syntheticLister{perDir: perDir}, MetadataTTL: time.Hour, Logger: slog.New(slog.DiscardHandler)}}
	before := heapInUse()
	for i := range dirs {
		d := tr.newDirNode(fmt.Sprintf("train%03d/", i))
		l, err := d.getListing(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(l.entries) != perDir {
			t.Fatalf("%d entries, want %d", len(l.entries), perDir)
		}
	}
	grown := heapInUse() - before
	const bound = 40 << 20 // the default budget, 32 MiB, and some slack
	t.Logf("listings of %d directories of %d files: heap grew %.1f MiB", dirs, perDir, float64(grown)/(1<<20))
	if grown > bound {
		t.Errorf("after listing %d directories of %d files the heap holds %.1f MiB more, want at most %d MiB",
			dirs, perDir, float64(grown)/(1<<20), bound>>20)
	}
	runtime.KeepAlive(tr)
}

// The set of hidden keys already logged is bounded too: a key may be
// logged again once forgotten.
func TestHiddenKeyWarningsBounded(t *testing.T) {
	tr := &tree{Config: Config{Logger: slog.New(slog.DiscardHandler)}}
	pad := strings.Repeat("k", 80)
	before := heapInUse()
	for i := range 200_000 {
		tr.warnHidden(hiddenKey{key: fmt.Sprintf("%s/%07d//x", pad, i), reason: "empty path component"})
	}
	grown := heapInUse() - before
	t.Logf("200,000 hidden keys logged: heap grew %.1f MiB", float64(grown)/(1<<20))
	if grown > 4<<20 {
		t.Errorf("after logging 200,000 hidden keys the heap holds %.1f MiB more, want at most 4 MiB", float64(grown)/(1<<20))
	}
	runtime.KeepAlive(tr)
}

// countingSynthetic counts the LISTs of a syntheticLister.
type countingSynthetic struct {
	syntheticLister
	lists atomic.Int64
}

func (c *countingSynthetic) List(ctx context.Context, req s3backend.ListRequest) (s3backend.ListPage, error) {
	c.lists.Add(1)
	return c.syntheticLister.List(ctx, req)
}

// TestListingMemoryPerEntry measures what a listing of 100,000 files
// keeps on the heap, per entry, and checks that the estimate the budget
// is kept with is within 15% of it.
func TestListingMemoryPerEntry(t *testing.T) {
	const perDir = 100_000
	tr := &tree{Config: Config{Lister: syntheticLister{perDir: perDir}, MetadataTTL: time.Hour, Logger: slog.New(slog.DiscardHandler)}}
	d := tr.newDirNode("cache/tusz/train/")
	before := heapInUse()
	l, err := d.getListing(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	grown := heapInUse() - before
	accounted, _ := tr.listings.usage()
	t.Logf("a listing of %d files: %d bytes on the heap, %.0f per entry; estimated %d, %.0f per entry",
		perDir, grown, float64(grown)/perDir, l.bytes, float64(l.bytes)/perDir)
	if ratio := float64(accounted) / float64(grown); ratio < 0.85 || ratio > 1.15 {
		t.Errorf("the listing is accounted as %d bytes, it holds %d (ratio %.2f), want within 15%%", accounted, grown, ratio)
	}
	runtime.KeepAlive(l)
}

// With a budget smaller than one listing, the listing in use is still
// kept (one listing per TTL, not one per lookup), and a directory whose
// listing was evicted is listed again when next used.
func TestListingBudgetKeepsTheListingInUse(t *testing.T) {
	const perDir = 5000 // 5 pages, ~1 MB
	lister := &countingSynthetic{syntheticLister: syntheticLister{perDir: perDir}}
	tr := &tree{Config: Config{Lister: lister, MetadataTTL: time.Hour, Logger: slog.New(slog.DiscardHandler)}}
	tr.listings.budget = 100 << 10
	ctx := context.Background()
	a, b := tr.newDirNode("a/"), tr.newDirNode("b/")
	for range 3 {
		if _, err := a.getListing(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := lister.lists.Load(); got != 5 {
		t.Fatalf("three lookups in a directory over the budget made %d LISTs, want 5 (one listing)", got)
	}
	if _, err := b.getListing(ctx); err != nil {
		t.Fatal(err)
	}
	if used, dirs := tr.listings.usage(); dirs != 1 {
		t.Errorf("over the budget, %d directories (%d bytes) are kept, want only the one in use", dirs, used)
	}
	if _, err := tr.newDirNode("a/").getListing(ctx); err != nil {
		t.Fatal(err)
	}
	if got := lister.lists.Load(); got != 15 {
		t.Errorf("after b/ pushed a/ out, listing a/ again made %d LISTs in all, want 15", got)
	}
}
