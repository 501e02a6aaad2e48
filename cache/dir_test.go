package cache

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
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
	const page = 4096 // a file of a page takes a page of disk
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
	d, err := OpenDir(root, 10*page, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	waitTrim(t, d)
	// Ten files of a page fill the bound; file i was used i minutes
	// after the first, except that file 0 is loaded (used) last.
	for i := range 10 {
		name := fmt.Sprintf("blocks/f/%d", i)
		if err := d.Store(ctx, name, make([]byte, page)); err != nil {
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
	// least recently used, down to 9 pages; then it is taken.
	if err := d.Store(ctx, "blocks/f/10", make([]byte, page)); !errors.Is(err, ErrDirFull) {
		t.Fatalf("store past the bound: %v, want ErrDirFull", err)
	}
	waitTrim(t, d)
	if err := d.Store(ctx, "blocks/f/10", make([]byte, page)); err != nil {
		t.Fatal(err)
	}
	waitTrim(t, d)
	// Files outside the dir's areas are not its own: older than all,
	// they stay.
	want := []string{"blocks/f/0", "blocks/f/10", "blocks/f/2", "blocks/f/3", "blocks/f/4", "blocks/f/5", "blocks/f/6", "blocks/f/7", "blocks/f/8", "blocks/f/9", "blocksx/y", "indexes/x/.tmp-young", "notes.txt"}
	if got := files(t, root); !slices.Equal(got, want) {
		t.Errorf("after a trim the dir holds %q; want %q (the least recently used gone, then the new block)", got, want)
	}
	if d.Used() != 10*page {
		t.Errorf("Used = %d, want %d", d.Used(), 10*page)
	}
}

// TestDirKeepsSpaceFree: without a bound, a dir trims when its file
// system has less than 5% free, to 6%, removing idle files only; with
// every file in use it takes no more blocks (indexes still); below 3% free
// it removes files in use too, least recently used first.
func TestDirKeepsSpaceFree(t *testing.T) {
	ctx := context.Background()
	const page = 4096
	const capacity = 100 * page
	for _, tt := range []struct {
		name     string
		age      time.Duration // of the oldest file; each next one a minute younger
		others   int64         // bytes of the file system used by others after the stores
		want     []string
		wantFull bool
	}{
		{"idle files make room", 3 * time.Hour, 90 * page, []string{"blocks/f/2", "blocks/f/3", "blocks/f/4", "blocks/f/5"}, false},
		{"files in use are kept", 10 * time.Minute, 90 * page, []string{"blocks/f/0", "blocks/f/1", "blocks/f/2", "blocks/f/3", "blocks/f/4", "blocks/f/5"}, true},
		// A page short of the file system: 4 go to leave 3% free.
		{"below 3% free, files in use go too", 10 * time.Minute, 95 * page, []string{"blocks/f/4", "blocks/f/5"}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			var others atomic.Int64
			others.Store(90 * page)
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
				err := d.Store(ctx, fmt.Sprintf("blocks/f/%d", i), make([]byte, page))
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

// TestDirWritesPauseAndResume: once a write fails, stores fail at once
// with ErrDirNotWritable and write nothing, loads go on, and one line
// says so; once the back-off is over, the next store tries again, and
// when it works writes resume with another line.
func TestDirWritesPauseAndResume(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "indexes"), 0o755)
	os.WriteFile(filepath.Join(root, "indexes/kept"), []byte("k"), 0o644)
	os.WriteFile(filepath.Join(root, "blocks"), nil, 0o644) // a file where a directory must go
	var log strings.Builder
	d, err := OpenDir(root, 0, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Store(ctx, "blocks/x", []byte("x")); !errors.Is(err, ErrDirNotWritable) {
		t.Fatalf("store under a file: %v, want ErrDirNotWritable", err)
	}
	for range 3 {
		if err := d.Store(ctx, "indexes/fine/y", []byte("y")); !errors.Is(err, ErrDirNotWritable) || d.WriteErr() == nil {
			t.Fatalf("store after a failure: %v, want ErrDirNotWritable", err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "indexes/fine")); !os.IsNotExist(err) {
		t.Errorf("a store while writes were paused wrote something: %v", err)
	}
	if got, err := d.Load(ctx, "indexes/kept"); err != nil || string(got) != "k" {
		t.Errorf("load while writes were paused = %q, %v", got, err)
	}
	// The disk is repaired; the back-off ends.
	os.Remove(filepath.Join(root, "blocks"))
	d.writes.mu.Lock()
	d.writes.retryAt = time.Now()
	d.writes.mu.Unlock()
	if err := d.Store(ctx, "blocks/x", []byte("x")); err != nil || d.WriteErr() != nil {
		t.Fatalf("store after the back-off: %v (writes %v), want it written", err, d.WriteErr())
	}
	if got := strings.Count(log.String(), `msg="cache dir writes paused"`); got != 1 {
		t.Errorf("%d lines saying writes paused, want 1:\n%s", got, log.String())
	}
	if got := strings.Count(log.String(), `msg="cache dir writes resumed"`); got != 1 {
		t.Errorf("%d lines saying writes resumed, want 1:\n%s", got, log.String())
	}
}

// TestDirRemovedDuringWrites: a dir whose directories are removed while
// stores run (a user cleaning it, another process's trim) stores again
// once they stop. (A store that lost the race turned writes off for the
// rest of the process.)
func TestDirRemovedDuringWrites(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d, err := OpenDir(root, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	stop := make(chan struct{})
	removed := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				removed <- n
				return
			default:
				os.RemoveAll(filepath.Join(root, "indexes"))
				n++
			}
		}
	}()
	failed := 0
	for i := range 3000 {
		if err := d.Store(ctx, fmt.Sprintf("indexes/%02d/%d", i%10, i), []byte("x")); err != nil {
			failed++
		}
	}
	close(stop)
	t.Logf("%d removals; %d of 3000 stores failed", <-removed, failed)
	if !pollFor(dirRetryMax+5*time.Second, func() bool { return d.Store(ctx, "indexes/after", []byte("x")) == nil }) {
		t.Errorf("stores still fail %v after the removals stopped: %v", dirRetryMax+5*time.Second, d.WriteErr())
	}
}

// pollFor calls cond every 10 ms until it holds, for up to timeout.
func pollFor(timeout time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); ; time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// TestDirReadsPauseOnTooManyFiles: a load that gets EMFILE (the process
// out of file descriptors, for real: its limit lowered) pauses reads
// with one line, and they resume once descriptors are free again. (EMFILE
// turned the disk tier off for good.)
func TestDirReadsPauseOnTooManyFiles(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	var log strings.Builder
	d, err := OpenDir(root, 0, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	waitTrim(t, d)
	if err := d.Store(ctx, "indexes/a", []byte("a")); err != nil {
		t.Fatal(err)
	}
	withFewFiles(t, func() {
		if _, err := d.Load(ctx, "indexes/a"); !errors.Is(err, ErrDirNotReadable) || !errors.Is(err, syscall.EMFILE) {
			t.Errorf("load out of file descriptors: %v, want ErrDirNotReadable wrapping EMFILE", err)
		}
	})
	if !pollFor(dirRetryMax, func() bool { _, err := d.Load(ctx, "indexes/a"); return err == nil }) {
		t.Fatalf("loads still fail once descriptors are free: %v", d.reads.current())
	}
	for _, msg := range []string{`msg="cache dir reads paused"`, `msg="cache dir reads resumed"`} {
		if got := strings.Count(log.String(), msg); got != 1 {
			t.Errorf("%d lines %s, want 1:\n%s", got, msg, log.String())
		}
	}
}

// withFewFiles runs fn with the process's soft limit of open files at
// what it has open now, every descriptor below it taken: any open in fn
// fails with EMFILE.
func withFewFiles(t *testing.T, fn func()) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(len(fds))
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	for { // the numbers below the limit that are free
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		defer f.Close()
	}
	fn()
}

// TestDirModesWhateverTheUmask: what a dir makes is readable (and its
// directories searchable) by every user under a umask of 077, which
// made 0700 directories. Files are 0644, directories 0755.
func TestDirModesWhateverTheUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	root := filepath.Join(t.TempDir(), "made")
	d, err := OpenDir(root, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Store(context.Background(), "indexes/npz/ab/x.idx", []byte("x")); err != nil {
		t.Fatal(err)
	}
	id := NewObjectID("obj")
	f, err := d.CreateObject(id.Name(BlocksArea), id, UnitSize)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	filepath.WalkDir(root, func(p string, e iofs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := e.Info()
		want := iofs.FileMode(dirFileMode)
		if fi.IsDir() {
			want = dirDirMode
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
		return nil
	})
}

// TestDirTrimCountsOnlyItsRemovals: a file another process removed
// between the trim's listing and its removal is not counted as removed
// by this one, in files or bytes.
func TestDirTrimCountsOnlyItsRemovals(t *testing.T) {
	const page = 4096
	ctx := context.Background()
	root := t.TempDir()
	d, err := OpenDir(root, 4*page, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	waitTrim(t, d)
	old := time.Now().Add(-2 * time.Hour)
	for i := range 4 {
		name := fmt.Sprintf("indexes/%d", i)
		d.Store(ctx, name, make([]byte, page))
		at := old.Add(time.Duration(i) * time.Minute) // 0 is the least recently used
		os.Chtimes(filepath.Join(root, name), at, at)
	}
	waitTrim(t, d)
	d.beforeRemove = func(p string) {
		if strings.HasSuffix(p, "/0") || strings.HasSuffix(p, "/1") {
			os.Remove(p) // another process's trim, first
		}
	}
	d.Store(ctx, "indexes/4", make([]byte, page)) // over the bound: a trim to 3.6 pages
	waitTrim(t, d)
	if got := files(t, root); !slices.Equal(got, []string{"indexes/2", "indexes/3", "indexes/4"}) {
		t.Errorf("after the trim the dir holds %q", got)
	}
	if d.Removed() != 0 {
		t.Errorf("Removed = %d; this process removed nothing, another did", d.Removed())
	}
	if d.Used() != 3*page {
		t.Errorf("Used = %d, want %d", d.Used(), 3*page)
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
	const page = 4096 // a file of a page takes a page of disk
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
		os.WriteFile(p, make([]byte, page), 0o644)
		mt := base.Add(time.Duration(at) * time.Minute)
		os.Chtimes(p, mt, mt)
	}
	for _, tt := range []struct {
		need int64
		want int
	}{{1, 1}, {page, 1}, {page + 1, 2}, {9*page + page/2, 10}, {1 << 30, 200}} {
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
