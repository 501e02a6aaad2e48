package fs

import (
	"strings"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/s3backend"
)

// FuzzNameProblem checks that every name accepted as a file name is one
// the kernel can hold and cannot leave its directory.
func FuzzNameProblem(f *testing.F) {
	for _, s := range []string{"a.npz", "", ".", "..", "...", "a/b", "a\x00", strings.Repeat("x", 256), "ümlaut", " "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if nameProblem(name) != "" {
			return
		}
		if name == "" || name == "." || name == ".." || len(name) > maxNameLen ||
			strings.ContainsAny(name, "/\x00") {
			t.Fatalf("accepted %q", name)
		}
	})
}

// FuzzMergeListing feeds listings built from arbitrary text: lines are
// keys, a line starting with "P:" is a common prefix, "--" starts a new
// page. Whatever a server sends, the result must be a sorted, duplicate-
// free set of valid names under the prefix, with no name both a file and
// a directory.
func FuzzMergeListing(f *testing.F) {
	f.Add("p/", "p/a\np/b\nP:p/c/\n--\np/a\nP:p/c/\np/c")
	f.Add("", "a//b\nP:a//\nx/../y\nP:../\n.\n..\nclash\nP:clash/")
	f.Add("p/", "q/outside\nP:q/\np/\np/ok\n--\n--\nP:p/ok/")
	f.Fuzz(func(t *testing.T, prefix, text string) {
		var pages []s3backend.ListPage
		page := s3backend.ListPage{}
		for _, line := range strings.Split(text, "\n") {
			switch {
			case line == "--":
				pages = append(pages, page)
				page = s3backend.ListPage{}
			case strings.HasPrefix(line, "P:"):
				page.CommonPrefixes = append(page.CommonPrefixes, line[2:])
			default:
				page.Objects = append(page.Objects, s3backend.ObjectInfo{Key: line, Size: int64(len(line)), LastModified: time.Unix(0, 0)})
			}
		}
		pages = append(pages, page)
		entries, _ := mergeListing(prefix, pages)
		for i, e := range entries {
			if why := nameProblem(e.name); why != "" {
				t.Fatalf("entry %q shown: %s", e.name, why)
			}
			if i > 0 && entries[i-1].name >= e.name {
				t.Fatalf("entries out of order or repeated: %q then %q", entries[i-1].name, e.name)
			}
			if !e.isDir && e.key != prefix+e.name {
				t.Fatalf("file %q has key %q, want %q", e.name, e.key, prefix+e.name)
			}
		}
		l := listing{entries: entries}
		for _, e := range entries {
			if got, ok := l.lookup(e.name); !ok || got.isDir != e.isDir {
				t.Fatalf("lookup(%q) = %v, %v", e.name, got, ok)
			}
		}
	})
}
