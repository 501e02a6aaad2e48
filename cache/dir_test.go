package cache

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// waitTrim waits for the dir's background walk to end.
func waitTrim(t *testing.T, d *Dir) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for d.trimming.Load() {
		if time.Now().After(deadline) {
			t.Fatal("trim still running after 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// files lists the names of the regular files under root, sorted.
func files(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, e iofs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func TestDirStoreAndLoad(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "made", "here")
	d, err := OpenDir(root, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Load(ctx, "a/b.idx"); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("load of a missing file: %v, want ErrNotExist", err)
	}
	for _, data := range []string{"first", "second, longer"} {
		if err := d.Store(ctx, "a/b.idx", []byte(data)); err != nil {
			t.Fatal(err)
		}
		if got, err := d.Load(ctx, "a/b.idx"); err != nil || string(got) != data {
			t.Errorf("load = %q, %v; want %q", got, err, data)
		}
	}
	for _, name := range []string{"../x", "/etc/passwd", "a/../../x", ".tmp-1", "a/.tmp-x", ""} {
		if err := d.Store(ctx, name, []byte("x")); err == nil {
			t.Errorf("store of %q succeeded; want refused", name)
		}
		if _, err := d.Load(ctx, name); err == nil || errors.Is(err, iofs.ErrNotExist) {
			t.Errorf("load of %q: %v; want refused", name, err)
		}
	}
	if got := files(t, root); !slices.Equal(got, []string{"a/b.idx"}) {
		t.Errorf("dir holds %q; want only a/b.idx (no temporary files)", got)
	}
}

// TestDirTrims: over its bound, a dir removes the files least recently
// used (stored or loaded) until it is 90% of the bound; temporary files a
// dead writer left are removed once an hour old.
func TestDirTrims(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	old := time.Now().Add(-2 * time.Hour)
	for _, name := range []string{".tmp-dead", "x/.tmp-young"} {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("partial"), 0o644)
	}
	os.Chtimes(filepath.Join(root, ".tmp-dead"), old, old)
	d, err := OpenDir(root, 1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	waitTrim(t, d)
	// Ten files of 100 bytes fill the bound; file i was used i minutes
	// after the first, except that file 0 is loaded (used) last.
	for i := range 10 {
		name := fmt.Sprintf("f/%d", i)
		if err := d.Store(ctx, name, make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		at := old.Add(time.Duration(i) * time.Minute)
		os.Chtimes(filepath.Join(root, name), at, at)
	}
	waitTrim(t, d)
	if _, err := d.Load(ctx, "f/0"); err != nil {
		t.Fatal(err)
	}
	if err := d.Store(ctx, "f/10", make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	waitTrim(t, d)
	want := []string{"f/0", "f/10", "f/3", "f/4", "f/5", "f/6", "f/7", "f/8", "f/9", "x/.tmp-young"}
	if got := files(t, root); !slices.Equal(got, want) {
		t.Errorf("after a trim the dir holds %q; want %q (the least recently used gone down to 900 bytes)", got, want)
	}
	if d.Used() != 900 {
		t.Errorf("Used = %d, want 900", d.Used())
	}
}

// TestDirKeepsSpaceFree: without a bound, a dir trims when its file
// system has less than 5% free, to 6%.
func TestDirKeepsSpaceFree(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	const capacity = 10000
	statfs := func(string) (int64, int64, error) {
		var used int64
		filepath.WalkDir(root, func(p string, e iofs.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() {
				fi, _ := e.Info()
				used += fi.Size()
			}
			return nil
		})
		return capacity - 9000 - used, capacity, nil // 9000 bytes used by others
	}
	d, err := openDir(root, 0, nil, statfs)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i := range 6 {
		if err := d.Store(ctx, fmt.Sprintf("f/%d", i), make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		at := time.Now().Add(time.Duration(i-10) * time.Minute)
		os.Chtimes(filepath.Join(root, fmt.Sprintf("f/%d", i)), at, at)
		waitTrim(t, d)
	}
	// 600 stored would leave 400 free (4%): the trim frees to 600 (6%).
	if got := files(t, root); !slices.Equal(got, []string{"f/2", "f/3", "f/4", "f/5"}) {
		t.Errorf("dir holds %q; want the 4 most recent files", got)
	}
}

// TestDirWritesOffAfterAFailure: once a write fails, stores fail at once
// with ErrDirNotWritable and write nothing, and loads go on.
func TestDirWritesOffAfterAFailure(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "kept"), []byte("k"), 0o644)
	os.WriteFile(filepath.Join(root, "blocker"), nil, 0o644) // a file where a directory must go
	d, err := OpenDir(root, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Store(ctx, "blocker/x", []byte("x")); !errors.Is(err, ErrDirNotWritable) {
		t.Fatalf("store under a file: %v, want ErrDirNotWritable", err)
	}
	if err := d.Store(ctx, "fine/y", []byte("y")); !errors.Is(err, ErrDirNotWritable) || d.WriteErr() == nil {
		t.Fatalf("store after a failure: %v, want ErrDirNotWritable", err)
	}
	if _, err := os.Stat(filepath.Join(root, "fine")); !os.IsNotExist(err) {
		t.Errorf("a store after writes went off wrote something: %v", err)
	}
	if got, err := d.Load(ctx, "kept"); err != nil || string(got) != "k" {
		t.Errorf("load after writes went off = %q, %v", got, err)
	}
}
