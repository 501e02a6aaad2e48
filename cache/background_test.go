package cache

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/singleflight"
)

// TestLifetime: Close ends the context and waits for the work started,
// and no work starts once it has begun.
func TestLifetime(t *testing.T) {
	l := NewLifetime(context.Background())
	if !l.Start(2) {
		t.Fatal("Start on an open lifetime refused")
	}
	var finished atomic.Int64
	for range 2 {
		go func() {
			<-l.Context().Done()
			time.Sleep(20 * time.Millisecond)
			finished.Add(1)
			l.Done()
		}()
	}
	l.Close()
	if n := finished.Load(); n != 2 {
		t.Errorf("Close returned with %d of 2 pieces of work finished", n)
	}
	if !l.Closed() || l.Start(1) {
		t.Error("a closed lifetime starts work")
	}
}

// TestWaitShared: concurrent callers of one key share one run; a caller
// whose context ends stops waiting at once, and the run goes on for the
// others.
func TestWaitShared(t *testing.T) {
	var g singleflight.Group
	var runs atomic.Int64
	release := make(chan struct{})
	fn := func() (string, error) {
		runs.Add(1)
		<-release
		return "done", nil
	}
	got := make(chan string, 1)
	go func() {
		v, _ := WaitShared(context.Background(), &g, "k", fn)
		got <- v
	}()
	for runs.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if v, err := WaitShared(ctx, &g, "k", fn); !errors.Is(err, context.Canceled) || v != "" {
		t.Errorf("an interrupted wait returned %q, %v; want context.Canceled", v, err)
	}
	close(release)
	if v := <-got; v != "done" || runs.Load() != 1 {
		t.Errorf("the waiting caller got %q after %d runs; want \"done\" from one", v, runs.Load())
	}
}
