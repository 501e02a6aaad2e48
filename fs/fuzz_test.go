package fs

import (
	"strings"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/fs/fsname"
	"github.com/bgbfs/bgbfs/s3backend"
)

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
			if why := fsname.Problem(e.name); why != "" {
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
