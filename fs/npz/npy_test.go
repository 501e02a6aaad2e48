package npz

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestParseNPYHeader checks the layout against headers numpy writes.
func TestParseNPYHeader(t *testing.T) {
	if err := exec.Command(systemPython, "-c", "import numpy").Run(); err != nil {
		t.Skipf("%s with numpy not available: %v", systemPython, err)
	}
	dir := t.TempDir()
	script := `
import sys, numpy as np
d = sys.argv[1]
np.save(d + '/windows.npy', np.zeros((3, 19, 15360), dtype=np.float32))
np.save(d + '/labels.npy', np.zeros((3, 15360), dtype='>f8'))
np.save(d + '/strings.npy', np.array(['ab', 'cde']))
np.save(d + '/bytes.npy', np.zeros((5, 2), dtype=np.bool_))
np.save(d + '/vector.npy', np.arange(7, dtype=np.int16))
np.save(d + '/scalar.npy', np.float64(1.5))
np.save(d + '/fortran.npy', np.asfortranarray(np.zeros((4, 3))))
np.save(d + '/records.npy', np.zeros(3, dtype=[('a', 'i4'), ('b', 'f8')]))
np.save(d + '/objects.npy', np.array([1, 'x'], dtype=object), allow_pickle=True)
np.save(d + '/empty.npy', np.zeros((0, 4), dtype=np.float32))
`
	if out, err := exec.Command(systemPython, "-c", script, dir).CombinedOutput(); err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	tests := []struct {
		file      string
		row, rows int64
		ok        bool
	}{
		{"windows.npy", 19 * 15360 * 4, 3, true},
		{"labels.npy", 15360 * 8, 3, true},
		{"strings.npy", 3 * 4, 2, true},
		{"bytes.npy", 2, 5, true},
		{"vector.npy", 2, 7, true},
		{"empty.npy", 16, 0, true},
		{"scalar.npy", 0, 0, false},
		{"fortran.npy", 0, 0, false},
		{"records.npy", 0, 0, false},
		{"objects.npy", 0, 0, false},
	}
	for _, tt := range tests {
		b, err := os.ReadFile(filepath.Join(dir, tt.file))
		if err != nil {
			t.Fatal(err)
		}
		l, err := ParseNPYHeader(b)
		if (err == nil) != tt.ok {
			t.Errorf("%s: %+v, %v", tt.file, l, err)
			continue
		}
		if !tt.ok {
			continue
		}
		if l.RowBytes != tt.row || l.Rows != tt.rows || l.DataOffset+l.RowBytes*l.Rows != int64(len(b)) {
			t.Errorf("%s: %+v; want rows of %d bytes, %d of them, ending at %d", tt.file, l, tt.row, tt.rows, len(b))
		}
	}
	for _, b := range [][]byte{nil, []byte("\x93NUMPY"), bytes.Repeat([]byte{0x93}, 100), []byte("\x93NUMPY\x01\x00\xff\xff{'descr'")} {
		if _, err := ParseNPYHeader(b); err == nil {
			t.Errorf("ParseNPYHeader(%q) succeeded", b)
		}
	}
}
