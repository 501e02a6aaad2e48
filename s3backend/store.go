// Package s3backend is the only code in bgbfs that talks to S3. Everything
// above it (fs, cache) sees the small ObjectStore interface, so tests can put
// a fake, a counter or a fault between the layers.
package s3backend

import (
	"context"
	"errors"
	"time"
)

// ObjectInfo is what a listing says about one object.
type ObjectInfo struct {
	Key          string
	Size         int64
	ETag         string
	LastModified time.Time
}

// ListRequest asks for one page of a delimited listing.
type ListRequest struct {
	Prefix            string
	Delimiter         string
	ContinuationToken string
	// MaxKeys caps keys plus common prefixes in the page; 0 means the
	// server's default (1,000 on S3).
	MaxKeys int32
}

// ListPage is one page of ListObjectsV2.
type ListPage struct {
	Objects        []ObjectInfo
	CommonPrefixes []string
	// NextContinuationToken is empty on the last page.
	NextContinuationToken string
}

// ObjectStore is the seam between the filesystem and S3. Implementations
// must be safe for concurrent use.
type ObjectStore interface {
	// List returns one page of a listing.
	List(ctx context.Context, req ListRequest) (ListPage, error)
	// ReadAt fills bufs, in order, with the object's bytes starting at
	// off, as of the given ETag (If-Match), in one ranged GET. It returns
	// the number of bytes read: fewer than asked only at the end of the
	// object, with io.EOF. Separate buffers let a caller fetch a run of
	// cache blocks in one request without copying. An object that changed
	// or vanished gives ErrStale.
	ReadAt(ctx context.Context, key, etag string, off int64, bufs ...[]byte) (int, error)
}

var (
	// ErrStale means the object no longer has the ETag it was opened with.
	ErrStale = errors.New("object changed since it was opened")
	// ErrNotFound means the bucket or key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAccessDenied means the credentials may not do this.
	ErrAccessDenied = errors.New("access denied")
	// ErrBadCredentials means S3 rejected the credentials themselves.
	ErrBadCredentials = errors.New("credentials rejected")
	// ErrNoCredentials means the SDK's credential chain found nothing.
	ErrNoCredentials = errors.New("no credentials")
	// ErrUnreachable means no HTTP exchange with the endpoint completed.
	ErrUnreachable = errors.New("endpoint unreachable")
)
