package cache

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
)

// Close while readers keep starting fetches, as an unmount does while
// index builds and read-ahead are still under way: no WaitGroup misuse
// (Add concurrent with Wait, which -race reports and which can panic), no
// Set into the closed block cache (a send on its closed channel panics),
// and reads after Close fail with ErrClosed instead of fetching.
func TestCloseWhileFetchesStart(t *testing.T) {
	for round := range 10 {
		c, _, obj, _ := setup(t, 8*mib, testOptions(2*mib))
		var wg sync.WaitGroup
		started := make(chan struct{})
		var once sync.Once
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := c.Open(obj)
				defer r.Close()
				rng := rand.New(rand.NewPCG(uint64(round), uint64(w)))
				buf := make([]byte, 64*kib)
				for range 50 {
					off := rng.Int64N(obj.Size - int64(len(buf)))
					_, err := r.ReadAt(context.Background(), buf, off)
					once.Do(func() { close(started) })
					if errors.Is(err, ErrClosed) {
						return
					}
					if err != nil {
						t.Errorf("read at %d while closing: %v, want nil or ErrClosed", off, err)
						return
					}
				}
			}()
		}
		<-started
		c.Close()
		wg.Wait()

		// Nothing is fetched once closed: cached blocks are gone with the
		// cache, and every miss fails with ErrClosed.
		r := c.OpenRandom(obj)
		_, err := r.ReadAt(context.Background(), make([]byte, 3*64*kib), obj.Size/2)
		r.Close()
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("read after Close: %v, want ErrClosed", err)
		}
		c.Close() // twice is harmless
	}
}
