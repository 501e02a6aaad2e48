package fs

import (
	"container/list"
	"sync"
	"unsafe"
)

// DefaultListingMemory is how much memory the listings of directories
// are kept in unless Config.ListingMemory says otherwise: about 160,000
// entries with keys of ~60 bytes (an entry kept costs ~200 bytes,
// TestListingMemoryPerEntry).
const DefaultListingMemory = 32 << 20

// stateBytes is what a dirState costs without a listing: the struct, its
// place in the cache's map and list, and the prefix (counted apart).
const stateBytes = 320

// beyondEntryBytes is what one remembered lookup past a partial listing
// costs, name and key included.
const beyondEntryBytes = 320

// dirEntryBytes is the size of one dirEntry in a listing's slice.
const dirEntryBytes = int64(unsafe.Sizeof(dirEntry{}))

// allocBytes is roughly what the allocator hands out for n bytes: small
// objects come in size classes, 16 bytes apart up to 256.
func allocBytes(n int) int64 {
	if n == 0 {
		return 0
	}
	return int64(n+15) &^ 15
}

// listingBytes estimates the memory a listing of prefix holds: its slice,
// and the key and ETag of each file (a file's name shares its key's
// bytes; a directory's name shares its common prefix's).
func listingBytes(prefix string, l *listing) int64 {
	n := int64(unsafe.Sizeof(listing{})) + int64(cap(l.entries))*dirEntryBytes + allocBytes(len(l.listedTo))
	for _, e := range l.entries {
		if e.isDir {
			n += allocBytes(len(prefix) + len(e.name) + 1)
			continue
		}
		n += allocBytes(len(e.key)) + allocBytes(len(e.etag))
	}
	return n
}

// listingCache keeps the listing state of directories, least recently
// used first out, within a budget of bytes. It is what bounds listings:
// the kernel's forgetting a directory does not (the kernel keeps inodes
// for as long as it has memory, without knowing what a listing costs, and
// a listing must outlive its inode so that a lookup after the kernel
// dropped its caches does not list again). The most recently used state is
// kept even when it alone is over the budget: a directory bigger than the
// budget still costs one listing per TTL, not one per lookup.
type listingCache struct {
	mu       sync.Mutex
	budget   int64 // 0 means DefaultListingMemory
	used     int64
	byPrefix map[string]*list.Element // of *dirState
	lru      list.List                // front: most recently used
}

// get returns the state of the directory at prefix, a new one if it is
// not kept, and marks it used.
func (c *listingCache) get(t *tree, prefix string) *dirState {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byPrefix[prefix]; ok {
		c.lru.MoveToFront(e)
		return e.Value.(*dirState)
	}
	if c.byPrefix == nil {
		c.byPrefix = map[string]*list.Element{}
	}
	st := &dirState{tree: t, prefix: prefix, cost: stateBytes + allocBytes(len(prefix))}
	st.cached = c.lru.PushFront(st)
	c.byPrefix[prefix] = st.cached
	c.used += st.cost
	c.evictLocked()
	return st
}

// resize sets what st holds beyond its fixed cost, marks it used and
// evicts others to stay within the budget. A state already evicted is
// left alone: its memory goes with its last user.
func (c *listingCache) resize(st *dirState, held int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.cached == nil {
		return
	}
	cost := stateBytes + allocBytes(len(st.prefix)) + held
	c.used += cost - st.cost
	st.cost = cost
	c.lru.MoveToFront(st.cached)
	c.evictLocked()
}

func (c *listingCache) evictLocked() {
	budget := c.budget
	if budget <= 0 {
		budget = DefaultListingMemory
	}
	for c.used > budget && c.lru.Len() > 1 {
		e := c.lru.Back()
		st := e.Value.(*dirState)
		c.lru.Remove(e)
		delete(c.byPrefix, st.prefix)
		st.cached = nil
		c.used -= st.cost
	}
}

// usage returns the bytes accounted and the directories kept.
func (c *listingCache) usage() (bytes int64, dirs int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used, c.lru.Len()
}
