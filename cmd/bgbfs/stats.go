package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/s3backend"
)

// serveStats serves the daemon's counters as "name value" lines at /stats,
// for benchmarks and people. It returns a function that stops the server.
func serveStats(addr string, store *s3backend.CountingStore, blocks *cache.BlockCache, logger *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		s, c := store.Stats(), blocks.Stats()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, kv := range []struct {
			name  string
			value int64
		}{
			{"s3_list_requests", s.ListRequests},
			{"s3_get_requests", s.GetRequests},
			{"s3_failed_requests", s.FailedRequests},
			{"s3_bytes_fetched", s.BytesFetched},
			{"cache_hits", c.Hits},
			{"cache_misses", c.Misses},
			{"cache_evictions", c.Evictions},
			{"cache_bytes_held", c.BytesCached},
			{"readahead_bytes_held", c.BytesAhead},
			{"readahead_bytes_fetched", c.FetchedAhead},
		} {
			fmt.Fprintf(w, "%s %d\n", kv.name, kv.value)
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("stats server stopped", "err", err)
		}
	}()
	logger.Info("serving stats", "url", "http://"+ln.Addr().String()+"/stats")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}
