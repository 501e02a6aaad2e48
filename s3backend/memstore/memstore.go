// Package memstore is an in-memory s3backend.ObjectStore for unit tests
// of the layers above s3backend; the daemon never uses it.
package memstore

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

	"github.com/bgbfs/bgbfs/s3backend"
)

// Store is an in-memory s3backend.ObjectStore: it follows S3's listing, range and
// If-Match rules closely enough for the tests of the layers above.
type Store struct {
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

// New returns an empty store.
func New() *Store {
	return &Store{objects: map[string]memObject{}, PageSize: 1000}
}

// Put stores an object, replacing any older version.
func (m *Store) Put(key string, data []byte) {
	sum := md5.Sum(data)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.objects[key] = memObject{data: slices.Clone(data), etag: `"` + hex.EncodeToString(sum[:]) + `"`, modTime: time.Now().UTC().Truncate(time.Second)}
}

// Info returns what a listing says about key.
func (m *Store) Info(key string) (s3backend.ObjectInfo, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[key]
	return s3backend.ObjectInfo{Key: key, Size: int64(len(o.data)), ETag: o.etag, LastModified: o.modTime}, ok
}

// List implements s3backend.ObjectStore. The continuation token is the last key or
// prefix of the previous page.
func (m *Store) List(ctx context.Context, req s3backend.ListRequest) (s3backend.ListPage, error) {
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
	var page s3backend.ListPage
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
		page.Objects = append(page.Objects, s3backend.ObjectInfo{Key: k, Size: int64(len(o.data)), ETag: o.etag, LastModified: o.modTime})
	}
	return page, nil
}

// lastToken is the largest key or prefix on a page: the next page starts
// after it (a prefix token skips everything under the prefix).
func lastToken(p s3backend.ListPage) string {
	last := ""
	if n := len(p.Objects); n > 0 {
		last = p.Objects[n-1].Key
	}
	if n := len(p.CommonPrefixes); n > 0 && p.CommonPrefixes[n-1] > last {
		last = p.CommonPrefixes[n-1] + "\xff"
	}
	return last
}

// ReadAt implements s3backend.ObjectStore.
func (m *Store) ReadAt(ctx context.Context, v s3backend.Version, off int64, bufs ...[]byte) (int, error) {
	m.mu.Lock()
	o, ok := m.objects[v.Key]
	m.mu.Unlock()
	have := s3backend.Version{Key: v.Key, ETag: o.etag, Size: int64(len(o.data)), LastModified: o.modTime}
	if v.ETag == "" {
		have.ETag = ""
	}
	switch {
	case !ok:
		return 0, fmt.Errorf("get %q: %w", v.Key, s3backend.ErrStale)
	case !have.Same(v):
		return 0, fmt.Errorf("get %q: version %s, want %s: %w", v.Key, have.Tag(), v.Tag(), s3backend.ErrStale)
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

// Stream reads the n bytes of version v at off as they are consumed, a
// read of the store per Read, as s3backend.Client.Stream returns them.
func (m *Store) Stream(ctx context.Context, v s3backend.Version, off, n int64) io.ReadCloser {
	return stream(ctx, m, v, off, n)
}

func stream(ctx context.Context, store s3backend.ObjectStore, v s3backend.Version, off, n int64) io.ReadCloser {
	r := s3backend.BindContext(ctx, s3backend.VersionReader{Store: store, Version: v})
	return io.NopCloser(io.NewSectionReader(r, off, min(n, max(v.Size-off, 0))))
}
