package fs

import (
	"strings"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/fs/fsname"
	"github.com/bgbfs/bgbfs/s3backend"
)

func obj(key string, size int64) s3backend.ObjectInfo {
	return s3backend.ObjectInfo{Key: key, Size: size, ETag: `"` + key + `"`, LastModified: time.Unix(1700000000, 0)}
}

func names(entries []dirEntry) string {
	var b []string
	for _, e := range entries {
		n := e.name
		if e.isDir {
			n += "/"
		}
		b = append(b, n)
	}
	return strings.Join(b, " ")
}

func hiddenKeys(h []hiddenKey) string {
	var b []string
	for _, k := range h {
		b = append(b, k.key)
	}
	return strings.Join(b, " ")
}

func TestMergeListing(t *testing.T) {
	long := strings.Repeat("x", 256)
	tests := []struct {
		name       string
		prefix     string
		pages      []s3backend.ListPage
		wantNames  string
		wantHidden string
	}{
		{
			name:   "files and dirs sorted byte-wise",
			prefix: "p/",
			pages: []s3backend.ListPage{{
				Objects:        []s3backend.ObjectInfo{obj("p/b", 1), obj("p/B", 2), obj("p/a.npz", 3)},
				CommonPrefixes: []string{"p/train/", "p/Dev/"},
			}},
			wantNames: "B Dev/ a.npz b train/",
		},
		{
			name:      "own marker is skipped, zero-byte child markers are dirs",
			prefix:    "p/",
			pages:     []s3backend.ListPage{{Objects: []s3backend.ObjectInfo{obj("p/", 0)}, CommonPrefixes: []string{"p/empty/"}}},
			wantNames: "empty/",
		},
		{
			name:       "directory wins over a file of the same name",
			prefix:     "",
			pages:      []s3backend.ListPage{{Objects: []s3backend.ObjectInfo{obj("clash", 5), obj("other", 1)}, CommonPrefixes: []string{"clash/"}}},
			wantNames:  "clash/ other",
			wantHidden: "clash",
		},
		{
			name:   "names that cannot be file names are hidden",
			prefix: "a/",
			pages: []s3backend.ListPage{{
				Objects:        []s3backend.ObjectInfo{obj("a/.", 1), obj("a/..", 1), obj("a/"+long, 1), obj("a/nul\x00x", 1), obj("a/ok", 1)},
				CommonPrefixes: []string{"a//", "a/./", "a/../", "a/" + long + "/"},
			}},
			wantNames:  "ok",
			wantHidden: "a/. a/.. a/../ a/./ a// a/nul\x00x a/" + long + " a/" + long + "/",
		},
		{
			name:   "pages out of order with repeated keys",
			prefix: "",
			pages: []s3backend.ListPage{
				{Objects: []s3backend.ObjectInfo{obj("c", 1), obj("d", 1)}},
				{Objects: []s3backend.ObjectInfo{obj("a", 1), obj("c", 1)}, CommonPrefixes: []string{"b/", "b/"}},
			},
			wantNames: "a b/ c d",
		},
		{
			name:       "keys outside the prefix are hidden",
			prefix:     "p/",
			pages:      []s3backend.ListPage{{Objects: []s3backend.ObjectInfo{obj("q/x", 1), obj("p/y", 1)}, CommonPrefixes: []string{"q/"}}},
			wantNames:  "y",
			wantHidden: "q/ q/x",
		},
		{
			name:      "empty listing",
			prefix:    "p/",
			pages:     nil,
			wantNames: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries, hidden := mergeListing(tt.prefix, tt.pages)
			if got := names(entries); got != tt.wantNames {
				t.Errorf("names = %q, want %q", got, tt.wantNames)
			}
			if got := hiddenKeys(hidden); got != tt.wantHidden {
				t.Errorf("hidden = %q, want %q", got, tt.wantHidden)
			}
			l := listing{entries: entries}
			for _, e := range entries {
				if got, ok := l.lookup(e.name); !ok || got.name != e.name {
					t.Errorf("lookup(%q) = %v, %v", e.name, got.name, ok)
				}
			}
			if _, ok := l.lookup("no-such-name"); ok {
				t.Error("lookup of a missing name succeeded")
			}
		})
	}
}

func TestNameProblem(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"a.npz", true},
		{strings.Repeat("n", 255), true},
		{strings.Repeat("n", 256), false},
		{"", false},
		{".", false},
		{"..", false},
		{"...", true},
		{"a\x00b", false},
		{"a/b", false},
		{" spaced name ", true},
	}
	for _, tt := range tests {
		if got := fsname.Problem(tt.name) == ""; got != tt.ok {
			t.Errorf("fsname.Problem(%q) ok = %v, want %v", tt.name, got, tt.ok)
		}
	}
}
