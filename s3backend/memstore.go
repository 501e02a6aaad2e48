package s3backend

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"
)

// MemStore is an in-memory ObjectStore for unit tests of the layers above:
// it follows S3's listing, range and If-Match rules closely enough for
// them, and is never used by the daemon.
type MemStore struct {
	mu      sync.Mutex
	objects map[string]memObject
	// PageSize caps keys plus prefixes per List page (S3: 1,000).
	PageSize int
}

type memObject struct {
	data    []byte
	etag    string
	modTime time.Time
}

// NewMemStore returns an empty store.
func NewMemStore() *MemStore {
	return &MemStore{objects: map[string]memObject{}, PageSize: 1000}
}

// Put stores an object, replacing any older version.
func (m *MemStore) Put(key string, data []byte) {
	sum := md5.Sum(data)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.objects[key] = memObject{data: slices.Clone(data), etag: `"` + hex.EncodeToString(sum[:]) + `"`, modTime: time.Now().UTC().Truncate(time.Second)}
}

// Delete removes an object.
func (m *MemStore) Delete(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.objects, key)
}

// Info returns what a listing says about key.
func (m *MemStore) Info(key string) (ObjectInfo, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[key]
	return ObjectInfo{Key: key, Size: int64(len(o.data)), ETag: o.etag, LastModified: o.modTime}, ok
}

// List implements ObjectStore. The continuation token is the last key or
// prefix of the previous page.
func (m *MemStore) List(ctx context.Context, req ListRequest) (ListPage, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]string, 0, len(m.objects))
	for k := range m.objects {
		if strings.HasPrefix(k, req.Prefix) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	limit := m.PageSize
	if req.MaxKeys > 0 && int(req.MaxKeys) < limit {
		limit = int(req.MaxKeys)
	}
	var page ListPage
	count := 0
	lastPrefix := ""
	for _, k := range keys {
		if req.ContinuationToken != "" && k <= req.ContinuationToken {
			continue
		}
		entry := k
		isPrefix := false
		if req.Delimiter != "" {
			if i := strings.Index(k[len(req.Prefix):], req.Delimiter); i >= 0 {
				entry = k[:len(req.Prefix)+i+len(req.Delimiter)]
				isPrefix = true
			}
		}
		if isPrefix && entry == lastPrefix {
			continue
		}
		if req.ContinuationToken != "" && isPrefix && strings.HasPrefix(req.ContinuationToken, entry) {
			continue
		}
		if count == limit {
			page.NextContinuationToken = lastToken(page)
			return page, nil
		}
		count++
		if isPrefix {
			page.CommonPrefixes = append(page.CommonPrefixes, entry)
			lastPrefix = entry
			continue
		}
		o := m.objects[k]
		page.Objects = append(page.Objects, ObjectInfo{Key: k, Size: int64(len(o.data)), ETag: o.etag, LastModified: o.modTime})
	}
	return page, nil
}

// lastToken is the largest key or prefix on a page: the next page starts
// after it (a prefix token skips everything under the prefix).
func lastToken(p ListPage) string {
	last := ""
	if n := len(p.Objects); n > 0 {
		last = p.Objects[n-1].Key
	}
	if n := len(p.CommonPrefixes); n > 0 && p.CommonPrefixes[n-1] > last {
		last = p.CommonPrefixes[n-1] + "\xff"
	}
	return last
}

// ReadAt implements ObjectStore.
func (m *MemStore) ReadAt(ctx context.Context, v Version, off int64, bufs ...[]byte) (int, error) {
	m.mu.Lock()
	o, ok := m.objects[v.Key]
	m.mu.Unlock()
	have := Version{Key: v.Key, ETag: o.etag, Size: int64(len(o.data)), LastModified: o.modTime}
	if v.ETag == "" {
		have.ETag = ""
	}
	switch {
	case !ok:
		return 0, fmt.Errorf("get %q: %w", v.Key, ErrStale)
	case !have.Same(v):
		return 0, fmt.Errorf("get %q: version %s, want %s: %w", v.Key, have.Tag(), v.Tag(), ErrStale)
	case off >= int64(len(o.data)):
		return 0, io.EOF
	}
	n := 0
	rest := o.data[off:]
	for _, b := range bufs {
		c := copy(b, rest)
		n += c
		rest = rest[c:]
		if c < len(b) {
			return n, io.EOF
		}
	}
	return n, nil
}

// Keys returns the stored keys in order, for test assertions.
func (m *MemStore) Keys() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]string, 0, len(m.objects))
	for k := range m.objects {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
