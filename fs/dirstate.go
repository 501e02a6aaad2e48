package fs

import (
	"container/list"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/s3backend"
)

// maxListPages bounds one directory listing, so that a server that keeps
// handing out continuation tokens cannot keep a lookup busy forever.
const maxListPages = 100_000

// retryListAfter is how long a failed refresh leaves the previous listing
// in use before the next attempt, so an outage does not turn every lookup
// into a slow failing request.
const retryListAfter = 2 * time.Second

// dirState is what is known of one directory's listing.
type dirState struct {
	tree   *tree
	prefix string

	mu sync.Mutex
	// current is never changed once installed: lookups read it without
	// the lock. A new listing replaces it.
	current *listing
	// expired is set when a read found an object changed under an open
	// file: current is then no longer fresh, whatever its age.
	expired bool
	loading chan struct{} // closed when the running refresh ends
	loadErr error
	retryAt time.Time
	// beyond caches lookups of names a partial listing does not settle;
	// lookingBeyond makes concurrent lookups of one such name share one.
	beyond        map[string]*dirEntry
	lookingBeyond singleflight.Group

	// Kept by the tree's listingCache, under its lock.
	cost   int64         // bytes accounted for this state
	cached *list.Element // nil once evicted
}

// minListingReuse is how long a listing serves lookups even with a shorter
// TTL: "ls -l" looks up every name it lists right after listing them.
const minListingReuse = time.Second

// reuseFor is how long a listing is fresh: the TTL, but at least
// minListingReuse.
func (st *dirState) reuseFor() time.Duration {
	return max(st.tree.MetadataTTL, minListingReuse)
}

// freshLocked reports whether the current listing may answer without a
// new LIST; st.mu must be held.
func (st *dirState) freshLocked(now time.Time) bool {
	l := st.current
	if l == nil || st.expired {
		return false
	}
	return st.tree.MetadataTTL == Indefinite || now.Before(l.fetched.Add(st.reuseFor()))
}

// staleUsableLocked reports whether the current listing, past its TTL,
// may still answer while a new one is listed: it is complete (a partial
// one is cheap to list again), no read found it out of date, and it is
// less than two TTLs old, so that what a lookup shows is never older
// than that. st.mu must be held.
func (st *dirState) staleUsableLocked(now time.Time) bool {
	l := st.current
	return l != nil && !l.partial && !st.expired && now.Before(l.fetched.Add(2*st.reuseFor()))
}

// getListing returns a listing no older than the TTL, listing the prefix
// again if needed. Concurrent callers share one refresh. A complete
// listing less than two TTLs old answers at once while one background
// refresh replaces it (stale-while-revalidate): a directory in use never
// makes its lookups wait for a re-list. If a refresh fails and an older
// listing exists, the older one is served: a directory that was listed
// keeps answering during an S3 outage.
func (st *dirState) getListing(ctx context.Context) (*listing, error) {
	st.mu.Lock()
	now := time.Now()
	if st.freshLocked(now) || (st.current != nil && now.Before(st.retryAt)) {
		l := st.current
		st.mu.Unlock()
		return l, nil
	}
	if st.current != nil && (st.loadErr != nil || st.staleUsableLocked(now)) {
		// Answer from the previous listing at once and list again in
		// the background: the TTL ran out, or the last refresh failed
		// (S3 is down or throttling) and every lookup would otherwise
		// wait out a full round of retries.
		l := st.current
		if st.loading == nil {
			st.startRefreshLocked(ctx)
		}
		st.mu.Unlock()
		return l, nil
	}
	var wait <-chan struct{} = st.loading
	if wait == nil {
		wait = st.startRefreshLocked(ctx)
	}
	st.mu.Unlock()
	select {
	case <-wait:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	st.mu.Lock()
	l, err := st.current, st.loadErr
	st.mu.Unlock()
	if l != nil {
		return l, nil
	}
	return nil, err // a refresh leaves a listing or an error
}

// startRefreshLocked lists the directory again in the background and
// returns a channel closed when it is done. The refresh does not die with
// the caller's interrupted request: others may be waiting for it.
func (st *dirState) startRefreshLocked(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	st.loading = done
	go func() {
		pages, partial, err := st.listAll(context.WithoutCancel(ctx))
		st.mu.Lock()
		st.loading = nil
		st.loadErr = err
		if err == nil {
			st.installListingLocked(pages, partial, time.Now())
		} else if st.current != nil {
			st.retryAt = time.Now().Add(retryListAfter)
			st.tree.Logger.Warn("listing failed; serving the previous listing", "prefix", st.prefix, "err", err)
		} else {
			st.tree.Logger.Error("listing failed", "prefix", st.prefix, "err", err)
		}
		st.mu.Unlock()
		close(done)
	}()
	return done
}

// listAll lists the directory, page by page. A limited directory stops
// once the pages read hold all its visible matching files: for a smoke
// view of a few files in a directory of thousands, one LIST.
func (st *dirState) listAll(ctx context.Context) (pages []s3backend.ListPage, partial bool, err error) {
	limit := st.limit()
	seen := map[string]bool{}
	token := ""
	for range maxListPages {
		pctx, cancel := st.tree.listPage(ctx)
		page, err := st.tree.Lister.List(pctx, s3backend.ListRequest{
			Prefix:            st.prefix,
			Delimiter:         "/",
			ContinuationToken: token,
		})
		err = timedOut(pctx, err)
		cancel()
		if err != nil {
			return nil, false, fmt.Errorf("list %q: %w", st.prefix, err)
		}
		pages = append(pages, page)
		token = page.NextContinuationToken
		if token == "" {
			return pages, false, nil
		}
		if seen[token] {
			return nil, false, fmt.Errorf("list %q: server repeated continuation token %q", st.prefix, token)
		}
		seen[token] = true
		if limit >= 0 {
			entries, _ := mergeListing(st.prefix, pages)
			sofar := &listing{entries: entries, partial: true, listedTo: listedTo(st.prefix, pages)}
			if settledMatches(sofar, st.tree.Limit.matches) >= limit {
				return pages, true, nil
			}
		}
	}
	return nil, false, fmt.Errorf("list %q: more than %d pages", st.prefix, maxListPages)
}

// limit returns the smoke-view limit of this directory, or -1.
func (st *dirState) limit() int {
	return st.tree.Limit.forDir(strings.TrimPrefix(st.prefix, st.tree.Prefix))
}

// listedTo is the largest key or common prefix the pages hold, relative
// to prefix: everything up to it has been listed.
func listedTo(prefix string, pages []s3backend.ListPage) string {
	last := ""
	for _, p := range pages {
		for _, o := range p.Objects {
			last = max(last, strings.TrimPrefix(o.Key, prefix))
		}
		for _, cp := range p.CommonPrefixes {
			last = max(last, strings.TrimPrefix(cp, prefix))
		}
	}
	return last
}

func (st *dirState) installListingLocked(pages []s3backend.ListPage, partial bool, at time.Time) {
	entries, hidden := mergeListing(st.prefix, pages)
	for _, h := range hidden {
		st.tree.warnHidden(h)
	}
	l := &listing{entries: entries, fetched: at, partial: partial}
	if partial {
		// Names the pages read do not settle are looked up by name.
		l.listedTo = listedTo(st.prefix, pages)
		l.entries = slices.DeleteFunc(l.entries, func(e dirEntry) bool { return !l.settled(e.name) })
	}
	if n := st.limit(); n >= 0 {
		l.entries = applyLimit(l.entries, n, st.tree.Limit.matches)
	}
	l.bytes = listingBytes(st.prefix, l)
	st.current = l
	st.expired = false
	st.beyond = nil
	st.retryAt = time.Time{}
	st.tree.listings.resize(st, l.bytes)
}

func (st *dirState) expire() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.current != nil {
		st.expired = true
		st.retryAt = time.Time{}
	}
}

// kernelTTL is how long the kernel may keep an answer taken from l: the
// rest of l's TTL, or next to nothing once a read found l out of date.
func (st *dirState) kernelTTL(l *listing) time.Duration {
	st.mu.Lock()
	expired := st.expired && st.current == l
	st.mu.Unlock()
	if expired {
		return time.Millisecond
	}
	return st.tree.remaining(l.fetched)
}

// find looks name up in the listing l, or by name where a partial l does
// not settle it.
func (st *dirState) find(ctx context.Context, l *listing, name string) (dirEntry, bool, error) {
	e, ok := l.lookup(name)
	if !ok && !l.settled(name) {
		return st.lookupBeyond(ctx, l, name)
	}
	return e, ok, nil
}

// maxBeyond bounds the names a partial listing remembers looking up.
const maxBeyond = 1024

// lookupBeyond finds a name that a partial listing does not settle (a
// sidecar such as manifest.json after thousands of .npz files) with at
// most two small LISTs instead of the whole directory. A directory wins
// over a file of the same name. Matching files there are beyond the
// limit, so for a matching name only a directory is asked for. The
// answer is kept as long as the listing (the last maxBeyond of them).
func (st *dirState) lookupBeyond(ctx context.Context, l *listing, name string) (dirEntry, bool, error) {
	st.mu.Lock()
	cached, known := st.beyond[name]
	st.mu.Unlock()
	if !known {
		// The LISTs are shared by every lookup of the name, so they do
		// not stop when the first one is interrupted (each LIST is bounded
		// by the client's timeouts); an interrupted lookup stops waiting.
		var err error
		cached, err = cache.WaitShared(ctx, &st.lookingBeyond, name, func() (*dirEntry, error) {
			return st.listBeyond(context.WithoutCancel(ctx), l, name)
		})
		if err != nil {
			return dirEntry{}, false, err
		}
	}
	if cached == nil {
		return dirEntry{}, false, nil
	}
	return *cached, true, nil
}

// listBeyond makes lookupBeyond's LISTs and remembers the answer, nil
// for none.
func (st *dirState) listBeyond(ctx context.Context, l *listing, name string) (*dirEntry, error) {
	var found *dirEntry
	pctx, cancel := st.tree.listPage(ctx)
	sub, err := st.tree.Lister.List(pctx, s3backend.ListRequest{Prefix: st.prefix + name + "/", MaxKeys: 1})
	err = timedOut(pctx, err)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("look up %q: %w", st.prefix+name, err)
	}
	if len(sub.Objects) > 0 || len(sub.CommonPrefixes) > 0 {
		found = &dirEntry{name: name, isDir: true}
	} else if !st.tree.Limit.matches(name) {
		pctx, cancel := st.tree.listPage(ctx)
		page, err := st.tree.Lister.List(pctx, s3backend.ListRequest{Prefix: st.prefix + name, Delimiter: "/", MaxKeys: 1})
		err = timedOut(pctx, err)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("look up %q: %w", st.prefix+name, err)
		}
		if len(page.Objects) > 0 && page.Objects[0].Key == st.prefix+name {
			o := page.Objects[0]
			found = &dirEntry{name: name, key: o.Key, size: o.Size, etag: o.ETag, mtime: o.LastModified}
		}
	}
	st.mu.Lock()
	if st.current == l {
		if st.beyond == nil || len(st.beyond) >= maxBeyond {
			st.beyond = map[string]*dirEntry{}
		}
		st.beyond[name] = found
		st.tree.listings.resize(st, l.bytes+int64(len(st.beyond))*beyondEntryBytes)
	}
	st.mu.Unlock()
	return found, nil
}
