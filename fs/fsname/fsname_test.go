package fsname

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzProblem checks every name Problem accepts against the kernel: it
// can be created as a file in a directory, and is then that directory's
// only entry, under that very name (it did not leave the directory or
// name another place).
func FuzzProblem(f *testing.F) {
	for _, s := range []string{"a.npz", "", ".", "..", "...", "a/b", "a\x00", strings.Repeat("x", 256), strings.Repeat("x", 255), "ümlaut", " ", "\x01"} {
		f.Add(s)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, name string) {
		if Problem(name) != "" {
			return
		}
		defer os.Remove(filepath.Join(dir, name))
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatalf("accepted %q, which the kernel refuses: %v", name, err)
		}
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != 1 || entries[0].Name() != name {
			t.Fatalf("accepted %q, which did not become the directory's one entry: %v %v", name, entries, err)
		}
	})
}

func TestProblem(t *testing.T) {
	for name, want := range map[string]string{
		"windows.npy":            "",
		"":                       "empty name",
		".":                      `"." is not a file name`,
		"..":                     `".." is not a file name`,
		"a/b":                    "slash in name",
		"a\x00b":                 "NUL byte in name",
		strings.Repeat("x", 255): "",
		strings.Repeat("x", 256): "name of 256 bytes is over 255",
	} {
		if got := Problem(name); got != want {
			t.Errorf("Problem(%q) = %q, want %q", name, got, want)
		}
	}
}
