package cache

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
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
	if _, err := d.Load(ctx, "indexes/a/b.idx"); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("load of a missing file: %v, want ErrNotExist", err)
	}
	for _, data := range []string{"first", "second, longer"} {
		if err := d.Store(ctx, "indexes/a/b.idx", []byte(data)); err != nil {
			t.Fatal(err)
		}
		if got, err := d.Load(ctx, "indexes/a/b.idx"); err != nil || string(got) != data {
			t.Errorf("load = %q, %v; want %q", got, err, data)
		}
	}
	for _, name := range []string{"../x", "/etc/passwd", "indexes/../../x", "indexes/.tmp-1", "blocks/a/.tmp-x", "", "elsewhere/x", "indexes/", "indexesx"} {
		if err := d.Store(ctx, name, []byte("x")); err == nil {
			t.Errorf("store of %q succeeded; want refused", name)
		}
		if _, err := d.Load(ctx, name); err == nil || errors.Is(err, iofs.ErrNotExist) {
			t.Errorf("load of %q: %v; want refused", name, err)
		}
	}
	if got := files(t, root); !slices.Equal(got, []string{"indexes/a/b.idx"}) {
		t.Errorf("dir holds %q; want only indexes/a/b.idx (no temporary files)", got)
	}
}

// TestDirTrims: over its bound, a dir removes the files least recently
// used (stored or loaded) until it is 90% of the bound; temporary files a
// dead writer left are removed once an hour old; files outside its areas
// are neither counted nor removed.
func TestDirTrims(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	old := time.Now().Add(-2 * time.Hour)
	for _, name := range []string{"blocks/.tmp-dead", "indexes/x/.tmp-young", "notes.txt", "blocksx/y"} {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("partial"), 0o644)
	}
	for _, name := range []string{"blocks/.tmp-dead", "notes.txt", "blocksx/y"} {
		os.Chtimes(filepath.Join(root, name), old.Add(-time.Hour), old.Add(-time.Hour))
	}
	d, err := OpenDir(root, 1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	waitTrim(t, d)
	// Ten files of 100 bytes fill the bound; file i was used i minutes
	// after the first, except that file 0 is loaded (used) last.
	for i := range 10 {
		name := fmt.Sprintf("blocks/f/%d", i)
		if err := d.Store(ctx, name, make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		at := old.Add(time.Duration(i) * time.Minute)
		os.Chtimes(filepath.Join(root, name), at, at)
	}
	waitTrim(t, d)
	if _, err := d.Load(ctx, "blocks/f/0"); err != nil {
		t.Fatal(err)
	}
	// No room: the block is refused, and a trim removes the idle files
	// least recently used, down to 900 bytes; then it is taken.
	if err := d.Store(ctx, "blocks/f/10", make([]byte, 100)); !errors.Is(err, ErrDirFull) {
		t.Fatalf("store past the bound: %v, want ErrDirFull", err)
	}
	waitTrim(t, d)
	if err := d.Store(ctx, "blocks/f/10", make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	waitTrim(t, d)
	// Files outside the dir's areas are not its own: older than all,
	// they stay.
	want := []string{"blocks/f/0", "blocks/f/10", "blocks/f/2", "blocks/f/3", "blocks/f/4", "blocks/f/5", "blocks/f/6", "blocks/f/7", "blocks/f/8", "blocks/f/9", "blocksx/y", "indexes/x/.tmp-young", "notes.txt"}
	if got := files(t, root); !slices.Equal(got, want) {
		t.Errorf("after a trim the dir holds %q; want %q (the least recently used gone, then the new block)", got, want)
	}
	if d.Used() != 1000 {
		t.Errorf("Used = %d, want 1000", d.Used())
	}
}

// TestDirKeepsSpaceFree: without a bound, a dir trims when its file
// system has less than 5% free, to 6%, removing idle files only; with
// every file in use it takes no more blocks (indexes still); below 3% free
// it removes files in use too, least recently used first.
func TestDirKeepsSpaceFree(t *testing.T) {
	ctx := context.Background()
	const capacity = 10000
	for _, tt := range []struct {
		name     string
		age      time.Duration // of the oldest file; each next one a minute younger
		others   int64         // bytes of the file system used by others after the stores
		want     []string
		wantFull bool
	}{
		{"idle files make room", 3 * time.Hour, 9000, []string{"blocks/f/2", "blocks/f/3", "blocks/f/4", "blocks/f/5"}, false},
		{"files in use are kept", 10 * time.Minute, 9000, []string{"blocks/f/0", "blocks/f/1", "blocks/f/2", "blocks/f/3", "blocks/f/4", "blocks/f/5"}, true},
		// 100 bytes short of the file system: 400 go to leave 3% free.
		{"below 3% free, files in use go too", 10 * time.Minute, 9500, []string{"blocks/f/4", "blocks/f/5"}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			var others atomic.Int64
			others.Store(9000)
			statfs := func(string) (int64, int64, error) {
				var used int64
				filepath.WalkDir(root, func(p string, e iofs.DirEntry, err error) error {
					if err != nil || !e.Type().IsRegular() {
						return nil
					}
					if fi, err := e.Info(); err == nil { // a temporary file may be gone
						used += fi.Size()
					}
					return nil
				})
				return capacity - others.Load() - used, capacity, nil
			}
			d, err := openDir(root, 0, nil, statfs)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			for i := range 6 {
				err := d.Store(ctx, fmt.Sprintf("blocks/f/%d", i), make([]byte, 100))
				if err != nil && !errors.Is(err, ErrDirFull) {
					t.Fatal(err)
				}
				at := time.Now().Add(-tt.age + time.Duration(i)*time.Minute)
				os.Chtimes(filepath.Join(root, fmt.Sprintf("blocks/f/%d", i)), at, at)
				waitTrim(t, d)
			}
			others.Store(tt.others)
			d.trimmedAt.Store(0)
			d.startTrim()
			waitTrim(t, d)
			if got := files(t, root); !slices.Equal(got, tt.want) {
				t.Errorf("dir holds %q; want %q", got, tt.want)
			}
			if d.full.Load() != tt.wantFull {
				t.Errorf("full = %v, want %v", d.full.Load(), tt.wantFull)
			}
			if tt.wantFull {
				if err := d.Store(ctx, "blocks/g/0", []byte("x")); !errors.Is(err, ErrDirFull) {
					t.Errorf("a block stored into a full dir: %v, want ErrDirFull", err)
				}
				if err := d.Store(ctx, "indexes/x.idx", []byte("x")); err != nil {
					t.Errorf("an index stored into a full dir: %v", err)
				}
			}
		})
	}
}

// TestDirWritesOffAfterAFailure: once a write fails, stores fail at once
// with ErrDirNotWritable and write nothing, and loads go on.
func TestDirWritesOffAfterAFailure(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "indexes"), 0o755)
	os.WriteFile(filepath.Join(root, "indexes/kept"), []byte("k"), 0o644)
	os.WriteFile(filepath.Join(root, "blocks"), nil, 0o644) // a file where a directory must go
	d, err := OpenDir(root, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Store(ctx, "blocks/x", []byte("x")); !errors.Is(err, ErrDirNotWritable) {
		t.Fatalf("store under a file: %v, want ErrDirNotWritable", err)
	}
	if err := d.Store(ctx, "indexes/fine/y", []byte("y")); !errors.Is(err, ErrDirNotWritable) || d.WriteErr() == nil {
		t.Fatalf("store after a failure: %v, want ErrDirNotWritable", err)
	}
	if _, err := os.Stat(filepath.Join(root, "indexes/fine")); !os.IsNotExist(err) {
		t.Errorf("a store after writes went off wrote something: %v", err)
	}
	if got, err := d.Load(ctx, "indexes/kept"); err != nil || string(got) != "k" {
		t.Errorf("load after writes went off = %q, %v", got, err)
	}
}

// TestDirCountsStoresDuringAWalk: a file stored while a walk runs, into a
// directory the walk has passed, is still counted.
func TestDirCountsStoresDuringAWalk(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d, err := OpenDir(root, 1<<30, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	waitTrim(t, d)
	for _, name := range []string{"blocks/a/1", "blocks/b/1"} {
		if err := d.Store(ctx, name, make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
	}
	d.onWalk = func(p string) {
		if strings.HasSuffix(p, "b/1") {
			d.Store(ctx, "blocks/a/2", make([]byte, 100)) // a/ is walked already
		}
	}
	d.startTrim()
	waitTrim(t, d)
	if d.Used() < 300 {
		t.Errorf("Used = %d; the dir holds 300 bytes", d.Used())
	}
}

// TestDirOldestKeepsOnlyWhatGoes: the trim's second walk keeps only the
// oldest files that add up to what must go, not every file of the dir.
func TestDirOldestKeepsOnlyWhatGoes(t *testing.T) {
	root := t.TempDir()
	d, err := OpenDir(root, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	waitTrim(t, d)
	base := time.Now().Add(-10 * time.Hour)
	for i, at := range rand.Perm(200) { // written in shuffled order of age
		p := filepath.Join(root, fmt.Sprintf("blocks/%02d/%d", i%7, at))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, make([]byte, 100), 0o644)
		mt := base.Add(time.Duration(at) * time.Minute)
		os.Chtimes(p, mt, mt)
	}
	for _, tt := range []struct {
		need int64
		want int
	}{{1, 1}, {100, 1}, {101, 2}, {950, 10}, {1 << 30, 200}} {
		files, err := d.oldest(tt.need)
		if err != nil {
			t.Fatal(err)
		}
		if len(files) != tt.want {
			t.Errorf("oldest(%d): %d files, want %d", tt.need, len(files), tt.want)
			continue
		}
		for i, f := range files {
			if want := base.Add(time.Duration(i) * time.Minute); !f.mtime.Equal(want) {
				t.Errorf("oldest(%d)[%d] is of %v, want %v", tt.need, i, f.mtime, want)
				break
			}
		}
	}
}
