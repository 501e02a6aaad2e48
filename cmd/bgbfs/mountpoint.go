package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// checkMountpoint resolves the mountpoint and refuses one that cannot take
// a new mount, before anything is mounted.
func checkMountpoint(mp string) (string, error) {
	abs, err := filepath.Abs(mp)
	if err != nil {
		return "", fmt.Errorf("mountpoint %s: %w", mp, err)
	}
	st, err := os.Stat(abs)
	switch {
	case errors.Is(err, syscall.ENOTCONN):
		return "", fmt.Errorf("mountpoint %s is a dead FUSE mount (its daemon exited); run: bgbfs unmount %s", mp, mp)
	case errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("mountpoint %s does not exist", mp)
	case err != nil:
		return "", fmt.Errorf("mountpoint %s: %w", mp, err)
	case !st.IsDir():
		return "", fmt.Errorf("mountpoint %s is not a directory", mp)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	m, err := findMount(abs)
	if err != nil {
		return "", err
	}
	if m != nil {
		var sfs syscall.Statfs_t
		if err := syscall.Statfs(abs, &sfs); errors.Is(err, syscall.ENOTCONN) {
			return "", fmt.Errorf("mountpoint %s is a dead FUSE mount (its daemon exited); run: bgbfs unmount %s", mp, mp)
		}
		return "", fmt.Errorf("mountpoint %s is already mounted (%s from %s)", mp, m.fstype, m.source)
	}
	return abs, nil
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	mountpoint, fstype, source string
}

// findMount returns the mount whose mountpoint is path, or nil.
func findMount(path string) (*mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	var found *mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if m, ok := parseMountinfoLine(sc.Text()); ok && m.mountpoint == path {
			found = &m // the last one is the one on top
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return found, nil
}

// parseMountinfoLine reads "id parent maj:min root mountpoint opts
// [optional...] - fstype source superopts" (proc(5)).
func parseMountinfoLine(line string) (mountEntry, bool) {
	fields := strings.Fields(line)
	sep := -1
	for i, f := range fields {
		if f == "-" && i >= 6 {
			sep = i
			break
		}
	}
	if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
		return mountEntry{}, false
	}
	return mountEntry{
		mountpoint: unescapeMountinfo(fields[4]),
		fstype:     fields[sep+1],
		source:     unescapeMountinfo(fields[sep+2]),
	}, true
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, ok := octal3(s[i+1 : i+4]); ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func octal3(s string) (byte, bool) {
	if len(s) != 3 {
		return 0, false
	}
	v := 0
	for _, c := range s {
		if c < '0' || c > '7' {
			return 0, false
		}
		v = v*8 + int(c-'0')
	}
	return byte(v), v < 256
}
