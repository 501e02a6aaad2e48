package s3backend

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestStreamRecovers: a stream reads its range in one GET, resumes a body
// that breaks off or stalls from where it stopped, gives up after the
// client's attempts, and refuses another version.
func TestStreamRecovers(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 100000)
	for _, tt := range []struct {
		mode     string
		faults   int64
		etag     string
		wantErr  string
		wantGets int64
	}{
		{mode: "none", wantGets: 1},
		{mode: "truncate", faults: 2, wantGets: 3},
		{mode: "stall", faults: 1, wantGets: 2},
		{mode: "503", faults: 2, wantGets: 3},
		{mode: "truncate", faults: 100, wantErr: "gave up", wantGets: 4},
		{mode: "none", etag: `"v2"`, wantErr: ErrStale.Error(), wantGets: 1},
	} {
		t.Run(fmt.Sprintf("%s×%d%s", tt.mode, tt.faults, tt.etag), func(t *testing.T) {
			srv := &faultyServer{data: data, etag: `"v1"`, mode: tt.mode, faults: tt.faults}
			if tt.etag != "" {
				srv.etag = tt.etag
			}
			ts := httptest.NewServer(srv)
			defer ts.Close()
			c := newTestClient(t, ts.URL)
			const off, n = 1000, 500001
			s := c.Stream(context.Background(), Version{Key: "key", ETag: `"v1"`, Size: int64(len(data))}, off, n)
			got, err := io.ReadAll(s)
			s.Close()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
			} else if err != nil || !bytes.Equal(got, data[off:off+n]) {
				t.Fatalf("read %d bytes, %v; want the %d bytes at %d", len(got), err, n, off)
			}
			if g := srv.gets.Load(); g != tt.wantGets {
				t.Errorf("%d GETs, want %d", g, tt.wantGets)
			}
		})
	}
}

// TestStreamEndsAtTheObjectsEnd: a range past the end ends with the
// object, and one that starts there reads nothing and asks for nothing.
func TestStreamEndsAtTheObjectsEnd(t *testing.T) {
	srv := &faultyServer{data: []byte("hello world"), etag: `"v1"`}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c := newTestClient(t, ts.URL)
	v := Version{Key: "key", ETag: `"v1"`, Size: 11}
	got, err := io.ReadAll(c.Stream(context.Background(), v, 6, 100))
	if err != nil || string(got) != "world" {
		t.Errorf("stream to past the end = %q, %v; want \"world\"", got, err)
	}
	got, err = io.ReadAll(c.Stream(context.Background(), v, 11, 5))
	if len(got) != 0 || err != nil || srv.gets.Load() != 1 {
		t.Errorf("stream at the end = %q, %v", got, err)
	}
}
