// Package cache sits between the filesystem and the object store: it turns
// reads on an open file into requests to S3. The block cache and read-ahead
// live here.
package cache

import (
	"context"
	"errors"
	"io"

	"github.com/bgbfs/bgbfs/s3backend"
)

// Object names one version of one object: reads through a Reader never mix
// bytes of two versions.
type Object struct {
	Key  string
	ETag string
	Size int64
}

// BlockCache hands out Readers over an ObjectStore.
type BlockCache struct {
	store s3backend.ObjectStore
}

// New returns a cache reading from store.
func New(store s3backend.ObjectStore) *BlockCache {
	return &BlockCache{store: store}
}

// Open returns a Reader for one open file handle.
func (c *BlockCache) Open(obj Object) *Reader {
	return &Reader{cache: c, obj: obj}
}

// Reader reads one object version. It is safe for concurrent use: the
// kernel may issue several reads on one handle at once.
type Reader struct {
	cache *BlockCache
	obj   Object
}

// ReadAt reads len(p) bytes at off, fewer only at the end of the object.
func (r *Reader) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off >= r.obj.Size {
		return 0, io.EOF
	}
	if rest := r.obj.Size - off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := r.cache.store.ReadAt(ctx, r.obj.Key, r.obj.ETag, p, off)
	if errors.Is(err, io.EOF) && n == len(p) {
		err = nil
	}
	return n, err
}

// Close releases the reader's resources.
func (r *Reader) Close() {}
