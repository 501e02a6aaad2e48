package integration

import (
	"bytes"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// hiddenKey is a key S3 accepts that cannot be shown as a path. The
// daemon sees some of them only as a delimited listing's common prefix,
// so its warning may name the key or that prefix.
type hiddenKey struct {
	Key       string
	Spellings []string // what a log line may call it
}

func oddHiddenKeys() []hiddenKey {
	long := "long/" + strings.Repeat("L", 300)
	return []hiddenKey{
		{"a//b", []string{"a//b", "a//"}},           // empty component
		{"x/./y", []string{"x/./y", "x/./"}},        // "." component
		{"x/../y", []string{"x/../y", "x/../"}},     // ".." component
		{"../escape", []string{"../escape", "../"}}, // ".." at the root
		{"clash", []string{"clash"}},                // a file where clash/ is a directory
		{long, []string{long}},                      // a component over 255 bytes
	}
}

// oddOrdinary are the keys beside them that must show up as they are,
// some of them with names close to the hidden ones.
func oddOrdinary() map[string][]byte {
	return map[string][]byte{
		"ok.txt":                 []byte("ok\n"),
		"a/normal.txt":           []byte("normal\n"),
		"x/plain.txt":            []byte("plain\n"),
		"clash/inner":            []byte("inner\n"),
		"long/short.txt":         []byte("short\n"),
		"dots/...":               []byte("three dots\n"),
		"dots/..x":               []byte("dot dot x\n"),
		"dots/.hidden":           []byte("dotfile\n"),
		"dir/sub/file.bin":       seededBytes("dir/sub/file.bin", 200<<10),
		strings.Repeat("M", 255): []byte("a 255-byte name is fine\n"),
	}
}

// mentions counts the lines of log that mention any spelling as a whole
// token (not as part of a longer path).
func mentions(log string, spellings []string) int {
	isPathByte := func(c byte) bool {
		return c == '/' || c == '.' || c == '_' || c == '-' ||
			'0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
	}
	n := 0
	for _, line := range strings.Split(log, "\n") {
		found := false
		for _, sp := range spellings {
			for i := 0; !found; {
				j := strings.Index(line[i:], sp)
				if j < 0 {
					break
				}
				start, end := i+j, i+j+len(sp)
				if (start == 0 || !isPathByte(line[start-1])) && (end == len(line) || !isPathByte(line[end])) {
					found = true
				}
				i = start + 1
			}
		}
		if found {
			n++
		}
	}
	return n
}

// TestOddKeys mounts a bucket holding keys MinIO refuses but S3 accepts
// (from gofakes3) and checks the hidden ones stay hidden, the ordinary
// ones are right, nothing escapes the mount, the daemon survives, and it
// warns once per hidden key even when listing twice.
func TestOddKeys(t *testing.T) {
	const bucket = "odd"
	backend := s3mem.New()
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(srv.Close)
	if err := backend.CreateBucket(bucket); err != nil {
		t.Fatal(err)
	}
	ordinary := oddOrdinary()
	hidden := oddHiddenKeys()
	put := func(key string, data []byte) {
		if _, err := backend.PutObject(bucket, key, map[string]string{}, bytes.NewReader(data), int64(len(data)), nil); err != nil {
			t.Fatalf("put %q: %v", key, err)
		}
	}
	for k, v := range ordinary {
		put(k, v)
	}
	for _, h := range hidden {
		put(h.Key, []byte("hidden "+h.Key))
	}

	proxy := newProxy(t, srv.URL)
	m := mount(t, mountSpec{
		Source:   "s3://" + bucket + "/",
		Endpoint: proxy.URL,
		Creds:    &testbed.Creds{AccessKey: "fake", SecretKey: "fake-secret"},
		Args:     []string{"--metadata-ttl", "1s"},
	})
	mp := m.Mountpoint

	wantFiles := map[string]bool{}
	wantDirs := map[string]bool{}
	for k := range ordinary {
		wantFiles[k] = true
		for _, d := range parentDirs(k) {
			wantDirs[d] = true
		}
	}

	for pass := 1; pass <= 2; pass++ {
		if pass == 2 {
			// Let twice the metadata TTL pass (before that, a listing
			// answers while it is refreshed in the background) and the
			// kernel forget, so the second walk lists everything again.
			time.Sleep(2500 * time.Millisecond)
			dropDentries(t)
		}
		proxy.Reset()
		got := walkTree(t, mp)
		if c := proxy.Counts(); c.ListObjectsV2 == 0 {
			t.Errorf("walk %d made no ListObjectsV2 request; the repeat-warning check needs a fresh listing", pass)
		}
		for p, e := range got {
			switch {
			case e.IsDir && !wantDirs[p]:
				t.Errorf("walk %d: unexpected directory %q", pass, p)
			case !e.IsDir && !wantFiles[p]:
				t.Errorf("walk %d: unexpected file %q", pass, p)
			}
		}
		for p := range wantFiles {
			if e, ok := got[p]; !ok || e.IsDir {
				t.Errorf("walk %d: file %q missing", pass, p)
			}
		}
		for p := range wantDirs {
			if e, ok := got[p]; !ok || !e.IsDir {
				t.Errorf("walk %d: directory %q missing", pass, p)
			}
		}
	}

	for k, want := range ordinary {
		b, err := os.ReadFile(filepath.Join(mp, filepath.FromSlash(k)))
		if err != nil || !bytes.Equal(b, want) {
			t.Errorf("%q: read %d bytes, %v; want %d bytes of the source", k, len(b), errnoOf(err), len(want))
		}
	}
	if names, err := os.ReadDir(filepath.Join(mp, "clash")); err != nil || len(names) != 1 || names[0].Name() != "inner" || names[0].IsDir() {
		t.Errorf("clash should be a directory holding only the file inner; got %v, %v", names, err)
	}

	// Nothing escaped: the mountpoint's parent holds only the mountpoint.
	parent, err := os.ReadDir(filepath.Dir(mp))
	if err != nil {
		t.Fatal(err)
	}
	if len(parent) != 1 || parent[0].Name() != filepath.Base(mp) {
		var names []string
		for _, e := range parent {
			names = append(names, e.Name())
		}
		t.Errorf("the mountpoint's parent holds %q, want only %q", names, filepath.Base(mp))
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(mp), "escape")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lstat of escape beside the mountpoint: %v, want not to exist", err)
	}

	if !m.Alive() {
		code, _ := m.WaitExit(0)
		t.Fatalf("the daemon died during the walks (status %d)", code)
	}

	log := m.Stderr()
	for _, h := range hidden {
		if n := mentions(log, h.Spellings); n != 1 {
			t.Errorf("stderr mentions hidden key %q (as any of %q) on %d lines, want exactly 1",
				shorten(h.Key), shortenAll(h.Spellings), n)
		}
	}
}

func shorten(s string) string {
	if len(s) > 40 {
		return s[:20] + "..." + s[len(s)-10:]
	}
	return s
}

func shortenAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = shorten(s)
	}
	return out
}
