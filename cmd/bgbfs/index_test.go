package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	bgfs "github.com/bgbfs/bgbfs/fs"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
)

// TestIndexProgressLine: the terminal's progress line says archives,
// bytes, rate and time left; the summary line the counts.
func TestIndexProgressLine(t *testing.T) {
	r := &indexRun{total: 10, totalBytes: 10 << 20, start: time.Now().Add(-10 * time.Second)}
	r.archivesDone.Store(5)
	r.bytesDone.Store(5 << 20)
	r.compressedBytes.Store(5 << 20)
	r.indexed.Store(4)
	r.current.Store(1)
	r.members.Store(8)
	line := r.progressLine()
	for _, want := range []string{"[============            ]", "5/10 archives", "5.2 MB/10 MB", "524 kB/s", "ETA 10s", "(1 current, 0 failed)"} {
		if !strings.Contains(line, want) {
			t.Errorf("progress line %q lacks %q", line, want)
		}
	}
	if s := r.summary(); !strings.HasPrefix(s, "indexed 4 archives (8 members, 5.2 MB compressed) in 10") || !strings.HasSuffix(s, "; 1 current; 0 failed") {
		t.Errorf("summary %q", s)
	}
}

// TestListArchivesAsTheMountShows: "bgbfs index --limit-files" indexes
// the archives a mount with that limit shows, by the mount's rules: a key
// under which other keys lie is a directory (the file is hidden), names
// that cannot be file names hide what lies under them, and the smoke
// view counts files of each directory as shown.
func TestListArchivesAsTheMountShows(t *testing.T) {
	mem := memstore.New()
	for _, k := range []string{
		"p/train/a.npz", "p/train/a.npz/inner.npz", "p/train/b.npz", "p/train/c.npz",
		"p/train/sub/d.npz", "p/bad//x.npz", "p/dot/./e.npz", "p/up/../f.npz",
		"p/long/" + strings.Repeat("l", 252) + ".npz", "p/notes.txt", "p/dir/", "p/dir/g.npz",
	} {
		mem.Put(k, []byte("x"))
	}
	for _, tt := range []struct {
		limit bgfs.Limit
		want  []string
	}{
		{bgfs.Limit{Pattern: "*.npz"}, []string{"p/dir/g.npz", "p/train/a.npz/inner.npz", "p/train/b.npz", "p/train/c.npz", "p/train/sub/d.npz"}},
		{bgfs.Limit{Default: 1, HasDefault: true, Pattern: "*.npz"}, []string{"p/dir/g.npz", "p/train/a.npz/inner.npz", "p/train/b.npz", "p/train/sub/d.npz"}},
		{bgfs.Limit{PerDir: map[string]int{"train": 0}, Pattern: "*.npz"}, []string{"p/dir/g.npz", "p/train/a.npz/inner.npz", "p/train/sub/d.npz"}},
	} {
		got, err := listArchives(context.Background(), mem, "p/", tt.limit)
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, v := range got {
			keys = append(keys, v.Key)
		}
		slices.Sort(keys)
		if !slices.Equal(keys, tt.want) {
			t.Errorf("limit %+v: indexes %q; the mount shows %q", tt.limit, keys, tt.want)
		}
	}
}
