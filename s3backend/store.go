// Package s3backend is the only code in bgbfs that talks to S3. Everything
// above it (fs, cache) sees the small ObjectStore interface, so tests can put
// a fake, a counter or a fault between the layers.
package s3backend

import (
	"context"
	"errors"
	"strconv"
	"time"
)

// ObjectInfo is what a listing says about one object.
type ObjectInfo struct {
	Key          string
	Size         int64
	ETag         string
	LastModified time.Time
}

// Version is one version of one object, as a listing showed it. Reads
// pinned to a Version never return bytes of another version: by its ETag
// (If-Match) when the server gives one, else by its size and modification
// time (some S3-compatible servers list objects without an ETag).
type Version struct {
	Key          string
	ETag         string
	Size         int64
	LastModified time.Time
}

// Tag names the version among the versions of its key: the ETag, or,
// without one, the size and the modification time. Caches key by it.
func (v Version) Tag() string {
	if v.ETag != "" {
		return v.ETag
	}
	return "size=" + strconv.FormatInt(v.Size, 10) + ",mtime=" + strconv.FormatInt(v.LastModified.Unix(), 10)
}

// Same reports whether v and o are the same version of the same key.
func (v Version) Same(o Version) bool {
	return v.Key == o.Key && v.Size == o.Size && v.Tag() == o.Tag()
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
	// ReadAt fills bufs, in order, with the bytes of version v starting
	// at off, in one ranged GET. It returns the number of bytes read:
	// fewer than asked only at the end of the object, with io.EOF.
	// Separate buffers let a caller fetch a run of cache blocks in one
	// request without copying. An object that changed or vanished gives
	// ErrStale.
	ReadAt(ctx context.Context, v Version, off int64, bufs ...[]byte) (int, error)
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
