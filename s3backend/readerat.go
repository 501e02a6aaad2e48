package s3backend

import (
	"context"
	"io"
)

// ContextReaderAt reads like io.ReaderAt, on behalf of one request.
type ContextReaderAt interface {
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
}

// BindContext returns r as an io.ReaderAt whose reads are made under
// ctx, for code (zip and deflate readers) that takes an io.ReaderAt. A
// read that comes back short without an error says io.EOF, as
// io.ReaderAt must.
func BindContext(ctx context.Context, r ContextReaderAt) io.ReaderAt {
	return boundReaderAt{ctx, r}
}

type boundReaderAt struct {
	ctx context.Context
	r   ContextReaderAt
}

func (b boundReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := b.r.ReadAt(b.ctx, p, off)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}

// VersionReader reads version v from store, a ranged GET per read.
type VersionReader struct {
	Store   ObjectStore
	Version Version
}

// ReadAt implements ContextReaderAt.
func (r VersionReader) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return r.Store.ReadAt(ctx, r.Version, off, p)
}
