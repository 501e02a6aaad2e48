package npz

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Debian's python has numpy; the python3 first on PATH may not.
const systemPython = "/usr/bin/python3"

// numpyScript writes archives as the training project does, with arrays
// shaped like the real ones but 3 windows long. numpy's savez opens each
// member with force_zip64=True, so local headers carry Zip64 extra
// fields; zipfile writes Zip64 central directory fields and end records
// only past 2 GiB, so the zip64_* archives lower its limits to get them
// from the real writer: sizes of windows and labels and offsets of labels
// and meta (whose sizes stay small, exercising the per-field rules).
const numpyScript = `
import sys, zipfile, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(7)
windows = rng.standard_normal((3, 19, 15360), dtype=np.float32)
labels = (rng.random((3, 15360)) < 0.1).astype(np.float32)
np.savez_compressed(d + '/compressed.npz', windows=windows, labels=labels)
np.savez(d + '/stored.npz', windows=windows, labels=labels)
np.savez_compressed(d + '/comment.npz', windows=windows[:1], labels=labels[:1])
with zipfile.ZipFile(d + '/comment.npz', 'a') as z:
    z.comment = b'written by the npz test'
with zipfile.ZipFile(d + '/forced.npz', 'w', zipfile.ZIP_DEFLATED, allowZip64=True) as z:
    for name, a in (('windows.npy', windows), ('labels.npy', labels)):
        with z.open(name, 'w', force_zip64=True) as f:
            np.lib.format.write_array(f, a)
zipfile.ZIP64_LIMIT = 1000
zipfile.ZIP_FILECOUNT_LIMIT = 1
meta = np.arange(3, dtype=np.int8)
np.savez_compressed(d + '/zip64_compressed.npz', windows=windows, labels=labels, meta=meta)
np.savez(d + '/zip64_stored.npz', windows=windows, labels=labels, meta=meta)
`

func TestNumpyArchives(t *testing.T) {
	if err := exec.Command(systemPython, "-c", "import numpy").Run(); err != nil {
		t.Skipf("%s with numpy not available: %v", systemPython, err)
	}
	dir := t.TempDir()
	if out, err := exec.Command(systemPython, "-c", numpyScript, dir).CombinedOutput(); err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	zip64Extra := func(fields int) []byte {
		return binary.LittleEndian.AppendUint16([]byte{1, 0}, uint16(8*fields))
	}
	tests := []struct {
		file    string
		members int
		zip64   bool
	}{
		{"compressed.npz", 2, false},
		{"stored.npz", 2, false},
		{"comment.npz", 2, false},
		{"forced.npz", 2, false},
		{"zip64_compressed.npz", 3, true},
		{"zip64_stored.npz", 3, true},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			arch, err := os.ReadFile(filepath.Join(dir, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if tt.zip64 {
				// The records this case is for are really there:
				// the end record, an entry with both sizes and
				// offset, and one with the offset only.
				for _, sig := range [][]byte{{'P', 'K', 6, 6}, {'P', 'K', 6, 7}, zip64Extra(3), zip64Extra(1)} {
					if !bytes.Contains(arch, sig) {
						t.Fatalf("no %q in the archive", sig)
					}
				}
			}
			checkArchive(t, arch, 64<<10, tt.members)
		})
	}
}
