package fs

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/s3backend"
)

func TestLimitedListingStopsEarly(t *testing.T) {
	mem := s3backend.NewMemStore()
	for i := range 5000 {
		mem.Put(fmt.Sprintf("p/train/f%05d.npz", i), []byte("x"))
	}
	mem.Put("p/train/_dataset_index.json", []byte("{}"))
	mem.Put("p/train/manifest.json", []byte("[]"))
	mem.Put("p/train/sub/inner.npz", []byte("y"))
	lister := &countingLister{MemStore: mem}
	tr := &tree{Config: Config{
		Lister: lister, Prefix: "p/", MetadataTTL: time.Hour, Logger: slog.New(slog.DiscardHandler),
		Limit: Limit{Default: 3, HasDefault: true, Pattern: "*.npz"},
	}}
	d := tr.newDirNode("p/train/")
	ctx := context.Background()
	l, err := d.getListing(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(l.entries); got != "_dataset_index.json f00000.npz f00001.npz f00002.npz" {
		t.Errorf("limited listing shows %q", got)
	}
	if got := lister.lists.Load(); got != 1 {
		t.Errorf("limited listing of 5,000 keys took %d LISTs, want 1", got)
	}
	tests := []struct {
		name    string
		found   bool
		isDir   bool
		newList int64
	}{
		{"manifest.json", true, false, 2}, // after the page read: asked by name
		{"manifest.json", true, false, 0}, // and then remembered
		{"sub", true, true, 1},
		{"missing.json", false, false, 2},
		{"f04000.npz", false, false, 0}, // a matching file beyond the limit is hidden without asking
	}
	for _, tt := range tests {
		before := lister.lists.Load()
		e, ok := l.lookup(tt.name)
		if !ok && !tr.Limit.matches(tt.name) && l.partial && tt.name > l.lastName {
			e, ok, err = d.lookupBeyond(ctx, l, tt.name)
			if err != nil {
				t.Fatal(err)
			}
		}
		if ok != tt.found || e.isDir != tt.isDir {
			t.Errorf("lookup %q = found %v dir %v, want %v %v", tt.name, ok, e.isDir, tt.found, tt.isDir)
		}
		if got := lister.lists.Load() - before; got != tt.newList {
			t.Errorf("lookup %q made %d LISTs, want %d", tt.name, got, tt.newList)
		}
	}
}

func TestApplyLimit(t *testing.T) {
	entries := []dirEntry{
		{name: "a.npz"}, {name: "b.json"}, {name: "c.npz"}, {name: "d", isDir: true}, {name: "e.npz"}, {name: "f.npz"},
	}
	for _, tt := range []struct {
		n    int
		want string
	}{
		{0, "b.json d/"},
		{1, "a.npz b.json d/"},
		{3, "a.npz b.json c.npz d/ e.npz"},
		{10, "a.npz b.json c.npz d/ e.npz f.npz"},
	} {
		l := Limit{Pattern: "*.npz"}
		if got := names(applyLimit(entries, tt.n, l.matches)); got != tt.want {
			t.Errorf("limit %d: %q, want %q", tt.n, got, tt.want)
		}
	}
	if got := strings.Count(names(entries), " "); got != 5 {
		t.Error("applyLimit changed its input")
	}
}

func TestLimitForDir(t *testing.T) {
	l := Limit{Default: 5, HasDefault: true, PerDir: map[string]int{"train": 3, "dev": 1}}
	for dir, want := range map[string]int{"train/": 3, "dev": 1, "": 5, "other/": 5, "train/sub/": 5} {
		if got := l.forDir(dir); got != want {
			t.Errorf("forDir(%q) = %d, want %d", dir, got, want)
		}
	}
	if got := (Limit{}).forDir("train"); got != -1 {
		t.Errorf("zero Limit limits to %d", got)
	}
}
