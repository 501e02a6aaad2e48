package fs

import (
	"slices"
	"strings"
	"time"

	"github.com/bgbfs/bgbfs/fs/fsname"
	"github.com/bgbfs/bgbfs/s3backend"
)

// maxNameLen is Linux's NAME_MAX: longer components cannot be file names.
const maxNameLen = fsname.MaxLen

// dirEntry is one visible child of a directory.
type dirEntry struct {
	name  string
	isDir bool
	// The rest is for files only.
	key   string
	size  int64
	etag  string
	mtime time.Time
}

// hiddenKey is a key (or common prefix) that a listing cannot show, with
// the reason it is hidden.
type hiddenKey struct {
	key    string
	reason string
}

// listing is the visible content of one directory as of one LIST.
type listing struct {
	entries []dirEntry // sorted by name, byte-wise
	fetched time.Time
	// partial is set when a limited directory was listed only until its
	// visible files were known. listedTo is then the largest key or
	// common prefix of the pages read, relative to the directory (a
	// prefix keeps its "/"); entries holds only the names it settles.
	partial  bool
	listedTo string
	// bytes is what the listing holds in memory, as listingBytes says.
	bytes int64
}

// settled reports whether the listing knows all there is of name: for a
// partial listing, whether the pages read went past name+"/". A key
// "x" is listed before "x-1", "x.a" and the prefix "x/" that would make
// "x" a directory, so seeing "x" settles nothing until the listing has
// passed "x/".
func (l *listing) settled(name string) bool {
	return !l.partial || name+"/" <= l.listedTo
}

// version is the object version a file entry shows.
func (e dirEntry) version() s3backend.Version {
	return s3backend.Version{Key: e.key, ETag: e.etag, Size: e.size, LastModified: e.mtime}
}

func (l *listing) lookup(name string) (dirEntry, bool) {
	i, ok := slices.BinarySearchFunc(l.entries, name, func(e dirEntry, n string) int {
		return strings.Compare(e.name, n)
	})
	if !ok {
		return dirEntry{}, false
	}
	return l.entries[i], true
}

// mergeListing turns the pages of a delimited listing of prefix into the
// directory's entries. Pages may repeat keys or come out of order (a
// misbehaving server); the result is still sorted and free of duplicates.
// Keys that cannot be shown are returned in hidden.
func mergeListing(prefix string, pages []s3backend.ListPage) (entries []dirEntry, hidden []hiddenKey) {
	dirs := map[string]bool{}
	files := map[string]dirEntry{}
	for _, p := range pages {
		for _, cp := range p.CommonPrefixes {
			if !strings.HasPrefix(cp, prefix) || !strings.HasSuffix(cp, "/") || len(cp) <= len(prefix) {
				hidden = append(hidden, hiddenKey{cp, "common prefix outside the listed directory"})
				continue
			}
			name := cp[len(prefix) : len(cp)-1]
			if why := fsname.Problem(name); why != "" {
				hidden = append(hidden, hiddenKey{cp, why})
				continue
			}
			dirs[name] = true
		}
		for _, o := range p.Objects {
			if !strings.HasPrefix(o.Key, prefix) {
				hidden = append(hidden, hiddenKey{o.Key, "key outside the listed directory"})
				continue
			}
			name := o.Key[len(prefix):]
			if name == "" {
				continue // this directory's own marker object
			}
			if why := fsname.Problem(name); why != "" {
				hidden = append(hidden, hiddenKey{o.Key, why})
				continue
			}
			if _, dup := files[name]; dup {
				continue
			}
			files[name] = dirEntry{name: name, key: o.Key, size: o.Size, etag: o.ETag, mtime: o.LastModified}
		}
	}
	entries = make([]dirEntry, 0, len(dirs)+len(files))
	for name := range dirs {
		entries = append(entries, dirEntry{name: name, isDir: true})
	}
	for name, f := range files {
		if dirs[name] {
			hidden = append(hidden, hiddenKey{f.key, "a directory of the same name exists"})
			continue
		}
		entries = append(entries, f)
	}
	slices.SortFunc(entries, func(a, b dirEntry) int { return strings.Compare(a.name, b.name) })
	slices.SortFunc(hidden, func(a, b hiddenKey) int { return strings.Compare(a.key, b.key) })
	return entries, hidden
}
