package fs

import (
	"path"
	"strings"
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

// Shown reports which of the regular files names, sorted by name, of the
// directory at rel (relative to the mount root) a mount with l shows: the
// same choice the smoke view makes, for "bgbfs index --limit-files".
func (l Limit) Shown(rel string, names []string) []bool {
	n := l.forDir(rel)
	shown := make([]bool, len(names))
	seen := 0
	for i, name := range names {
		if n < 0 || !l.matches(name) {
			shown[i] = true
			continue
		}
		shown[i] = seen < n
		seen++
	}
	return shown
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
