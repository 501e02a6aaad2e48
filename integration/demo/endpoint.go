package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

const (
	bucket = "brain-go-brr-eeg-data-20250919"
	// prefix is where the production bucket keeps the .npz cache; the demo
	// mounts exactly this prefix, as the training containers do.
	prefix = "cache/tusz/"
)

// endpoint is an in-process S3 API on a loopback port. It replaces MinIO so
// that the demo needs nothing but the Go module cache to start in seconds.
type endpoint struct {
	URL     string
	backend *s3mem.Backend
	srv     *http.Server
}

func startEndpoint() (*endpoint, error) {
	// Port 0 lets the kernel pick a free port, so two demos (or a demo and
	// the integration tests) can run side by side.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen on loopback: %w", err)
	}
	be := s3mem.New()
	if err := be.CreateBucket(bucket); err != nil {
		ln.Close()
		return nil, fmt.Errorf("create bucket %s: %w", bucket, err)
	}
	e := &endpoint{
		URL:     "http://" + ln.Addr().String(),
		backend: be,
		srv:     &http.Server{Handler: gofakes3.New(be).Server(), ReadHeaderTimeout: 10 * time.Second},
	}
	go func() {
		if err := e.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(os.Stderr, "demo: S3 endpoint stopped: %v\n", err)
		}
	}()
	return e, nil
}

func (e *endpoint) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		// A client still holding a connection must not keep the demo alive.
		return errors.Join(fmt.Errorf("shut down S3 endpoint: %w", err), e.srv.Close())
	}
	return nil
}

// uploadTree puts every regular file under dir into the bucket below prefix,
// keeping relative paths (dir/train/x.npz becomes cache/tusz/train/x.npz).
// It writes through the backend API rather than HTTP: the demo is about
// reading through bgbfs, and this keeps the AWS SDK out of the demo.
func (e *endpoint) uploadTree(dir string) (n int, total int64, err error) {
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		info, err := f.Stat()
		if err != nil {
			return err
		}
		if err := e.put(prefix+filepath.ToSlash(rel), f, info.Size()); err != nil {
			return err
		}
		n++
		total += info.Size()
		return nil
	})
	if err != nil {
		return n, total, fmt.Errorf("upload %s: %w", dir, err)
	}
	return n, total, nil
}

// putCacheMetadata adds the .cache_metadata.json sidecar the training
// project keeps at the cache root, so the mount looks like production.
func (e *endpoint) putCacheMetadata(meta any) error {
	b, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return fmt.Errorf("encode cache metadata: %w", err)
	}
	return e.put(prefix+".cache_metadata.json", strings.NewReader(string(b)), int64(len(b)))
}

func (e *endpoint) put(key string, r io.Reader, size int64) error {
	ct := "application/octet-stream"
	if strings.HasSuffix(key, ".json") {
		ct = "application/json"
	}
	// The metadata map must be non-nil: the backend merges into it.
	meta := map[string]string{"Content-Type": ct}
	if _, err := e.backend.PutObject(bucket, key, meta, r, size, nil); err != nil {
		return fmt.Errorf("put s3://%s/%s: %w", bucket, key, err)
	}
	return nil
}
