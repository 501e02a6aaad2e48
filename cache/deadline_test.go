package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/s3backend"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
)

// silentStore holds every GET while silent is set, as an S3 that went
// silent does, until the GET's context ends or the store speaks again;
// it counts the GETs and those still held.
type silentStore struct {
	*memstore.Store
	silent atomic.Bool
	spoke  chan struct{} // closed when silent is cleared
	gets   atomic.Int64
	held   atomic.Int64
}

func newSilentStore(data []byte) (*silentStore, s3backend.Version) {
	mem := memstore.New()
	mem.Put("obj", data)
	info, _ := mem.Info("obj")
	s := &silentStore{Store: mem, spoke: make(chan struct{})}
	s.silent.Store(true)
	return s, s3backend.Version{Key: "obj", ETag: info.ETag, Size: info.Size}
}

func (s *silentStore) speak() {
	s.silent.Store(false)
	close(s.spoke)
}

func (s *silentStore) ReadAt(ctx context.Context, v s3backend.Version, off int64, bufs ...[]byte) (int, error) {
	s.gets.Add(1)
	if s.silent.Load() {
		s.held.Add(1)
		defer s.held.Add(-1)
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-s.spoke:
		}
	}
	return s.Store.ReadAt(ctx, v, off, bufs...)
}

func deadlineData() []byte {
	data := make([]byte, 512*kib)
	for i := range data {
		data[i] = byte(i * 13)
	}
	return data
}

// TestSharedFetchOutlivesAReadersDeadline: two readers wait for one
// block; the first gives up at its deadline, which must not cancel the
// fetch the second still waits for: it gets the bytes, from one GET.
func TestSharedFetchOutlivesAReadersDeadline(t *testing.T) {
	data := deadlineData()
	store, obj := newSilentStore(data)
	opt := testOptions(4 * mib)
	opt.FetchTimeout = time.Minute
	c, err := New(store, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const off, n = 128 * kib, 4 * kib
	patient := make(chan error, 1)
	got := make([]byte, n)
	go func() {
		_, err := c.OpenRandom(obj).ReadAt(context.Background(), got, off)
		patient <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.OpenRandom(obj).ReadAt(ctx, make([]byte, n), off); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the reader with a deadline: %v, want its deadline", err)
	}
	if held := store.held.Load(); held != 1 {
		t.Fatalf("%d GETs still under way after one reader's deadline, want the shared one", held)
	}
	store.speak()
	select {
	case err := <-patient:
		if err != nil || !bytes.Equal(got, data[off:off+n]) {
			t.Errorf("the other reader: %v (bytes right: %v)", err, bytes.Equal(got, data[off:off+n]))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the other reader got no answer")
	}
	if g := store.gets.Load(); g != 1 {
		t.Errorf("%d GETs, want 1 shared", g)
	}
}

// TestFetchTimeout: a fetch that S3 does not answer ends at its own
// deadline, whoever waits for it or not (a reader without a deadline,
// read-ahead, and a fetch still waiting for a request slot); the error
// says so; and the next read of the blocks fetches them again.
func TestFetchTimeout(t *testing.T) {
	data := deadlineData()
	store, obj := newSilentStore(data)
	opt := testOptions(4 * mib)
	opt.FetchTimeout = 300 * time.Millisecond
	opt.MaxParallel = 1 // a second fetch waits for the first's slot
	c, err := New(store, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Read-ahead that nobody waits for.
	ahead := c.OpenRandom(obj)
	ahead.Prefetch(256*kib, 64*kib)
	defer ahead.Close()
	start := time.Now()
	_, err = c.OpenRandom(obj).ReadAt(context.Background(), make([]byte, 4*kib), 0)
	took := time.Since(start)
	if !errors.Is(err, ErrFetchTimeout) {
		t.Errorf("read: %v, want ErrFetchTimeout", err)
	}
	// The read's fetch waited for the prefetch's slot: from its start,
	// not from its GET's.
	if took > opt.FetchTimeout+time.Second {
		t.Errorf("read failed after %v, want about %v", took, opt.FetchTimeout)
	}
	// Both fetches end: their GETs return, then each fetch records its
	// failure. A read that came between the two would join the failing
	// fetch, and this test is of the read after.
	deadline := time.Now().Add(5 * time.Second)
	for (store.held.Load() > 0 || c.fetchesUnderWay() > 0) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if held := store.held.Load(); held != 0 {
		t.Errorf("%d GETs still held %v after the fetch timeout", held, time.Since(start))
	}
	if n := c.fetchesUnderWay(); n != 0 {
		t.Errorf("%d blocks still being fetched %v after the fetch timeout", n, time.Since(start))
	}
	gets := store.gets.Load()
	store.speak()
	got := make([]byte, 4*kib)
	if _, err := ahead.ReadAt(context.Background(), got, 256*kib); err != nil || !bytes.Equal(got, data[256*kib:260*kib]) {
		t.Errorf("reading the read-ahead's blocks after S3 answers: %v", err)
	}
	if _, err := c.OpenRandom(obj).ReadAt(context.Background(), got, 0); err != nil || !bytes.Equal(got, data[:4*kib]) {
		t.Errorf("reading the failed read's block after S3 answers: %v", err)
	}
	if again := store.gets.Load() - gets; again != 2 {
		t.Errorf("%d GETs after S3 answers, want 2 (each failed fetch again)", again)
	}
}

// shortStore answers every GET with fewer bytes than asked and err: a
// store that does not keep to ReadAt's contract, or an error that wraps
// io.EOF without being the end of the object.
type shortStore struct {
	*memstore.Store
	err error
}

func (s *shortStore) ReadAt(ctx context.Context, v s3backend.Version, off int64, bufs ...[]byte) (int, error) {
	return 0, s.err
}

// TestShortFetchIsNoData: a GET that brings fewer bytes than asked within
// the object's listed size fails the read, with the cache on and off,
// whatever error comes with it: its buffers hold zeros, never to be
// returned or cached as the object's bytes.
func TestShortFetchIsNoData(t *testing.T) {
	data := deadlineData()
	for _, tt := range []struct {
		name string
		err  error
	}{
		{"no error", nil},
		{"io.EOF", io.EOF},
		{"an error wrapping io.EOF", fmt.Errorf("connection closed: %w", io.EOF)},
	} {
		for _, size := range []int64{0, 4 * mib} {
			t.Run(fmt.Sprintf("%s, cache size %d", tt.name, size), func(t *testing.T) {
				mem := memstore.New()
				mem.Put("obj", data)
				info, _ := mem.Info("obj")
				obj := s3backend.Version{Key: "obj", ETag: info.ETag, Size: info.Size}
				c, err := New(&shortStore{Store: mem, err: tt.err}, testOptions(size))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				n, err := c.OpenRandom(obj).ReadAt(context.Background(), make([]byte, 4*kib), 64*kib)
				if err == nil || err == io.EOF {
					t.Errorf("read in the middle of the object = %d, %v; want an error, not data or the end of file", n, err)
				}
			})
		}
	}
}

// fetchesUnderWay is how many blocks are being fetched.
func (c *BlockCache) fetchesUnderWay() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.inflight)
}
