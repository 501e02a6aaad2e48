package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

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
