package fs

import (
	"path"
	"strings"

	"github.com/bgbfs/bgbfs/s3backend"
)

// Limit is the smoke-test view: in a limited directory only the first N
// regular files whose names match Pattern, in byte-wise order of their
// names, are visible. Other files and subdirectories stay visible.
// The zero Limit shows everything.
type Limit struct {
	// Default, when HasDefault, applies to directories not in PerDir.
	Default    int
	HasDefault bool
	// PerDir is keyed by the directory's path relative to the mount root,
	// without slashes at either end ("" is the root).
	PerDir  map[string]int
	Pattern string
}

// forDir returns the limit of the directory at rel, or -1 for none.
func (l Limit) forDir(rel string) int {
	if n, ok := l.PerDir[strings.Trim(rel, "/")]; ok {
		return n
	}
	if l.HasDefault {
		return l.Default
	}
	return -1
}

func (l Limit) matches(name string) bool {
	ok, _ := path.Match(l.Pattern, name)
	return ok
}

// Active reports whether any directory is limited.
func (l Limit) Active() bool {
	return l.HasDefault || len(l.PerDir) > 0
}

// ShownFiles returns the files a mount of prefix with limit shows, from
// a listing without delimiter of every object under prefix: each
// directory from the root down gets the entries its own listing would
// (mergeListing: names a file can have, a directory hiding a file of its
// name) and keeps those of the smoke view (applyLimit), and only the
// directories shown are entered. "bgbfs index --limit-files" indexes
// these, so that it indexes what a mount shows.
func ShownFiles(prefix string, objects []s3backend.ObjectInfo, limit Limit) []s3backend.ObjectInfo {
	// The page each directory's delimited listing would give.
	pages := map[string]*s3backend.ListPage{}
	seen := map[string]bool{} // common prefixes already in a page
	page := func(dir string) *s3backend.ListPage {
		if pages[dir] == nil {
			pages[dir] = &s3backend.ListPage{}
		}
		return pages[dir]
	}
	for _, o := range objects {
		rel, ok := strings.CutPrefix(o.Key, prefix)
		if !ok {
			continue
		}
		dir := prefix
		for {
			i := strings.IndexByte(rel, '/')
			if i < 0 {
				break
			}
			sub := dir + rel[:i+1]
			if !seen[sub] {
				seen[sub] = true
				p := page(dir)
				p.CommonPrefixes = append(p.CommonPrefixes, sub)
			}
			dir, rel = sub, rel[i+1:]
		}
		p := page(dir)
		p.Objects = append(p.Objects, o)
	}
	var out []s3backend.ObjectInfo
	var visit func(dir string)
	visit = func(dir string) {
		p := pages[dir]
		if p == nil {
			return
		}
		entries, _ := mergeListing(dir, []s3backend.ListPage{*p})
		if n := limit.forDir(strings.TrimPrefix(dir, prefix)); n >= 0 {
			entries = applyLimit(entries, n, limit.matches)
		}
		for _, e := range entries {
			if e.isDir {
				visit(dir + e.name + "/")
				continue
			}
			out = append(out, s3backend.ObjectInfo{Key: e.key, Size: e.size, ETag: e.etag, LastModified: e.mtime})
		}
	}
	visit(prefix)
	return out
}

// applyLimit keeps directories, files that do not match, and the first n
// matching files of entries, which are sorted by name.
func applyLimit(entries []dirEntry, n int, matches func(string) bool) []dirEntry {
	out := entries[:0:0]
	seen := 0
	for _, e := range entries {
		if !e.isDir && matches(e.name) {
			if seen >= n {
				continue
			}
			seen++
		}
		out = append(out, e)
	}
	return out
}

// settledMatches counts, in name order, the visible matching files that
// l settles, up to the first matching file it does not settle: the first
// that many matching files of the whole directory are then known,
// whatever later pages hold.
func settledMatches(l *listing, matches func(string) bool) int {
	n := 0
	for _, e := range l.entries {
		if e.isDir || !matches(e.name) {
			continue
		}
		if !l.settled(e.name) {
			break
		}
		n++
	}
	return n
}
