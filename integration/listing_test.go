package integration

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// expectedTree turns a full bucket listing into the tree a mount must
// show: every key a file, every "name/" marker and every prefix of a key a
// directory.
func expectedTree(objs []testbed.ListedObject) (files map[string]testbed.ListedObject, dirs map[string]bool) {
	files, dirs = map[string]testbed.ListedObject{}, map[string]bool{}
	for _, o := range objs {
		p := o.Key
		if strings.HasSuffix(p, "/") {
			p = strings.TrimSuffix(p, "/")
			dirs[p] = true
		} else {
			files[p] = o
		}
		for _, d := range parentDirs(p) {
			dirs[d] = true
		}
	}
	return files, dirs
}

// TestListing walks a mount of the whole bucket and compares it with the
// bucket's own listing: the same paths, markers as directories, equal
// sizes, mtimes equal to LastModified to the second, default modes.
func TestListing(t *testing.T) {
	d := env.dataset(t)
	srv := env.server(t)
	listed, err := srv.Admin().ListAll(context.Background(), d.Bucket, "")
	if err != nil {
		t.Fatal(err)
	}
	// The bucket holds what the fixture put there, or this test proves little.
	var keys []string
	for _, o := range listed {
		keys = append(keys, o.Key)
	}
	if want := d.Keys(); !slices.Equal(keys, want) {
		t.Fatalf("the bucket lists %d keys, the fixture uploaded %d", len(keys), len(want))
	}
	files, dirs := expectedTree(listed)

	m := mountData(t, "")
	got := walkTree(t, m.Mountpoint)

	var missing, extra []string
	for p := range files {
		if _, ok := got[p]; !ok {
			missing = append(missing, p)
		}
	}
	for p := range dirs {
		if _, ok := got[p]; !ok {
			missing = append(missing, p+"/")
		}
	}
	for p := range got {
		if _, ok := files[p]; !ok && !dirs[p] {
			extra = append(extra, p)
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	if len(missing) > 0 {
		t.Errorf("%d paths missing from the mount, e.g. %q", len(missing), missing[:min(10, len(missing))])
	}
	if len(extra) > 0 {
		t.Errorf("%d paths in the mount but not in the bucket, e.g. %q", len(extra), extra[:min(10, len(extra))])
	}

	var bad int
	report := func(format string, args ...any) {
		if bad++; bad <= 20 {
			t.Errorf(format, args...)
		}
	}
	for p, o := range files {
		e, ok := got[p]
		if !ok {
			continue
		}
		switch {
		case !e.Mode.IsRegular():
			report("%s: mode %v, want a regular file", p, e.Mode)
		case e.Size != o.Size:
			report("%s: size %d, want %d", p, e.Size, o.Size)
		case e.Mtime.Unix() != o.LastModified.Unix():
			report("%s: mtime %v, want LastModified %v", p, e.Mtime.UTC(), o.LastModified.UTC())
		case e.Mode.Perm() != 0o444:
			report("%s: permissions %v, want the default 0444", p, e.Mode.Perm())
		}
	}
	for p := range dirs {
		e, ok := got[p]
		if !ok {
			continue
		}
		switch {
		case !e.IsDir:
			report("%s: mode %v, want a directory", p, e.Mode)
		case e.Mode.Perm() != 0o555:
			report("%s: permissions %v, want the default 0555", p, e.Mode.Perm())
		}
	}
	if bad > 20 {
		t.Errorf("... and %d more mismatches", bad-20)
	}

	// Spot checks that name the layout's special cases.
	for _, p := range []string{"misc/emptydir", "misc/marked", "many", "cache/tusz/train"} {
		if e, ok := got[p]; !ok || !e.IsDir {
			t.Errorf("%s should be a directory in the mount", p)
		}
	}
	if n := countChildren(got, "misc/emptydir"); n != 0 {
		t.Errorf("misc/emptydir has %d entries, want 0", n)
	}
	if n := countChildren(got, manyDir); n != manyCount {
		t.Errorf("%s has %d entries, want %d", manyDir, n, manyCount)
	}
	t.Logf("walked %d paths (%d files, %d directories)", len(got), len(files), len(dirs))
}

// countChildren counts the direct children of dir in a walk.
func countChildren(tree map[string]entry, dir string) int {
	n := 0
	for p := range tree {
		if rest, ok := strings.CutPrefix(p, dir+"/"); ok && !strings.Contains(rest, "/") {
			n++
		}
	}
	return n
}
