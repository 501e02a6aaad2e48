package integration

// Helpers that read through a mount and check what came back: page and
// dentry caches, sequential and positioned reads, directory names, tree
// walks, errnos.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// dropPageCache writes 3 to drop_caches: the kernel forgets cached file
// pages as well as dentries and inodes, so the next read reaches bgbfs.
func dropPageCache(t testing.TB) {
	t.Helper()
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		t.Fatalf("drop caches: %v", err)
	}
}

// dropPageCacheEvery drops the kernel's clean page cache every interval
// until the returned function is called, so that a load that reads the
// same ranges again reaches the daemon.
func dropPageCacheEvery(interval time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(interval):
				_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("1\n"), 0)
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// kernelReadAheadKB reads the read_ahead_kb of the backing device of the
// filesystem mounted at mp.
func kernelReadAheadKB(mp string) (int64, string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(mp, &st); err != nil {
		return 0, "", err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, p, err
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return v, p, err
}

// readSequential reads path from start to end with read(2) calls of
// bufSize bytes and returns the hex SHA-256 and the length.
func readSequential(path string, bufSize int) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, bufSize)
	var n int64
	for {
		k, err := f.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", n, err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// dirNames lists dir (without . and ..), sorted byte-wise.
func dirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}

// isENOENT reports whether err is ENOENT.
func isENOENT(err error) bool { return errors.Is(err, syscall.ENOENT) }

// checkPread reads n bytes at off from f and compares them with src (of
// size bytes); it returns "" or what was wrong.
func checkPread(f *os.File, src io.ReaderAt, size, off int64, n int) string {
	got := make([]byte, n)
	k, err := f.ReadAt(got, off)
	wantN := int(max(0, min(int64(n), size-off)))
	want := make([]byte, wantN)
	if wantN > 0 {
		if _, err := src.ReadAt(want, off); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Sprintf("reading the source: %v", err)
		}
	}
	switch {
	case k != wantN:
		return fmt.Sprintf("got %d bytes (err %v), want %d", k, errnoOf(err), wantN)
	case wantN < n && !errors.Is(err, io.EOF):
		return fmt.Sprintf("short read of %d bytes ended with %v, want EOF", k, err)
	case wantN == n && err != nil:
		return fmt.Sprintf("error %v", errnoOf(err))
	case !bytes.Equal(got[:k], want):
		return fmt.Sprintf("content differs from the source at byte %d of the range", firstDiff(got[:k], want))
	}
	return ""
}

// isErrno reports whether err is one of errnos.
func isErrno(err error, errnos ...syscall.Errno) bool {
	for _, e := range errnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// entry is what a walk of the mount saw at one path.
type entry struct {
	IsDir bool
	Size  int64
	Mode  fs.FileMode
	Mtime time.Time
}

// walkTree walks root with lstat on every entry and returns the entries
// by slash-separated relative path (root itself excluded). It fails the
// test on walk errors, on names a directory should never return and on
// duplicates within a directory.
func walkTree(t testing.TB, root string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	var walk func(rel string)
	walk = func(rel string) {
		dir := filepath.Join(root, filepath.FromSlash(rel))
		f, err := os.Open(dir)
		if err != nil {
			t.Errorf("open %s: %v", dir, err)
			return
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			t.Errorf("readdir %s: %v", dir, err)
			return
		}
		sort.Strings(names)
		for i, name := range names {
			if name == "" || name == "." || name == ".." || strings.Contains(name, "/") || len(name) > 255 {
				t.Errorf("readdir %s returned the invalid name %q", dir, name)
				continue
			}
			if i > 0 && names[i-1] == name {
				t.Errorf("readdir %s returned %q twice", dir, name)
				continue
			}
			p := name
			if rel != "" {
				p = rel + "/" + name
			}
			fi, err := os.Lstat(filepath.Join(dir, name))
			if err != nil {
				t.Errorf("lstat %s: %v", p, err)
				continue
			}
			out[p] = entry{IsDir: fi.IsDir(), Size: fi.Size(), Mode: fi.Mode(), Mtime: fi.ModTime()}
			if fi.IsDir() {
				walk(p)
			}
		}
	}
	walk("")
	return out
}

// hashFile returns the hex SHA-256 and length of a file.
func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		return "", n, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// errnoOf describes err with its errno, for messages.
func errnoOf(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return fmt.Sprintf("%v (errno %d)", err, int(errno))
	}
	return fmt.Sprint(err)
}
