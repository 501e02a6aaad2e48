package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// maxTrackedSize is the largest file the repository may track outside a
// testdata folder: sources and documents are far smaller; a build output
// or a data dump is not.
const maxTrackedSize = 1 << 20

// executableMagic are the first bytes of the executables a build makes.
var executableMagic = map[string][]byte{
	"ELF":     []byte("\x7fELF"),
	"Mach-O":  {0xcf, 0xfa, 0xed, 0xfe},
	"PE (MZ)": []byte("MZ"),
}

// trackedProblem says why a tracked file must not be committed, or "".
func trackedProblem(path string, head []byte, size int64) string {
	for kind, magic := range executableMagic {
		if bytes.HasPrefix(head, magic) {
			return "an executable (" + kind + ")"
		}
	}
	if size > maxTrackedSize && !slices.Contains(strings.Split(filepath.ToSlash(path), "/"), "testdata") {
		return "larger than 1 MiB outside testdata/"
	}
	return ""
}

func TestTrackedProblem(t *testing.T) {
	for _, tt := range []struct {
		path string
		head string
		size int64
		bad  bool
	}{
		{"main.go", "package main", 100, false},
		{"demo", "\x7fELF\x02\x01\x01", 10 << 20, true},
		{"bgbfs", "\x7fELF\x02", 4000, true},
		{"tool.exe", "MZ\x90\x00", 4000, true},
		{"tool", "\xcf\xfa\xed\xfe", 4000, true},
		{"BENCHMARKS.md", "# Benchmarks", 45 << 10, false},
		{"dump.csv", "a,b\n", 2 << 20, true},
		{"fs/npz/testdata/fuzz/FuzzInflate/big", "go test fuzz v1", 2 << 20, false},
		{"fs/npz/testdata/bin", "\x7fELF", 100, true},
		{"Makefile", "MZ", 1, true},
	} {
		if got := trackedProblem(tt.path, []byte(tt.head), tt.size); (got != "") != tt.bad {
			t.Errorf("trackedProblem(%q, %q, %d) = %q; want a problem: %v", tt.path, tt.head, tt.size, got, tt.bad)
		}
	}
}

// TestNoBinaryCommitted fails if git tracks an executable, or a large
// file that is not test data (a build output committed by mistake).
func TestNoBinaryCommitted(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("git", "-C", root, "ls-files", "-z").Output()
	if err != nil {
		t.Fatalf("git ls-files in %s: %v", root, err)
	}
	files := strings.Split(strings.TrimRight(string(out), "\x00"), "\x00")
	if len(files) < 10 {
		t.Fatalf("git ls-files lists %d files: not this repository?", len(files))
	}
	for _, path := range files {
		f, err := os.Open(filepath.Join(root, path))
		if os.IsNotExist(err) {
			continue // deleted in the working tree, not yet committed
		}
		if err != nil {
			t.Fatal(err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			t.Fatal(err)
		}
		head := make([]byte, 8)
		n, _ := io.ReadFull(f, head)
		f.Close()
		if problem := trackedProblem(path, head[:n], st.Size()); problem != "" {
			t.Errorf("%s is tracked but is %s: remove it (git rm --cached) and ignore it", path, problem)
		}
	}
}
