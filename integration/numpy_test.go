package integration

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// compareNPZ loads every .npz under SRC/{train,dev} both from the mount
// and from the local source and compares every member; it prints one
// "OK split name deflated|stored" line per file and "COMPARED n" at the
// end, and exits 1 at the first difference.
const compareNPZ = `
import os, sys, zipfile
import numpy as np

mnt, src = sys.argv[1], sys.argv[2]
n = 0
for split in ("train", "dev"):
    for name in sorted(os.listdir(os.path.join(src, split))):
        if not name.endswith(".npz"):
            continue
        got_path = os.path.join(mnt, split, name)
        want_path = os.path.join(src, split, name)
        # The trainer's access pattern: open, index one window, close.
        with np.load(got_path) as got, np.load(want_path) as want:
            if sorted(got.files) != sorted(want.files):
                sys.exit("MISMATCH %s/%s: members %s, want %s" % (split, name, got.files, want.files))
            for k in want.files:
                a, b = got[k], want[k]
                if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
                    sys.exit("MISMATCH %s/%s: member %s differs (%s %s vs %s %s)" % (split, name, k, a.dtype, a.shape, b.dtype, b.shape))
            last = want["windows"].shape[0] - 1
            if not np.array_equal(got["windows"][last], want["windows"][last]):
                sys.exit("MISMATCH %s/%s: window %d" % (split, name, last))
        with zipfile.ZipFile(got_path) as z:
            kinds = {i.compress_type for i in z.infolist()}
        print("OK", split, name, "deflated" if zipfile.ZIP_DEFLATED in kinds else "stored")
        n += 1
print("COMPARED", n)
`

// TestNumpyLoad runs numpy.load through the mount of cache/tusz/ and
// checks it returns exactly the arrays of the local source files, for
// both np.savez and np.savez_compressed files.
func TestNumpyLoad(t *testing.T) {
	d := env.dataset(t)
	m := mountData(t, npzPrefix)

	var want []string
	for _, k := range d.Keys() {
		if rel, ok := strings.CutPrefix(k, npzPrefix); ok && strings.HasSuffix(k, ".npz") {
			want = append(want, rel)
		}
	}
	if len(want) != npzSpec().Train+npzSpec().Dev {
		t.Fatalf("the dataset has %d npz files, want %d", len(want), npzSpec().Train+npzSpec().Dev)
	}

	cmd := exec.Command(testbed.Python, "-c", compareNPZ, m.Mountpoint, d.LocalNPZ)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("numpy comparison failed: %v\n%s", err, out)
	}
	seen := map[string]string{}
	compared := -1
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 4 && f[0] == "OK":
			seen[f[1]+"/"+f[2]] = f[3]
		case len(f) == 2 && f[0] == "COMPARED":
			compared, _ = strconv.Atoi(f[1])
		default:
			t.Errorf("unexpected output line %q", line)
		}
	}
	if compared != len(want) {
		t.Errorf("python compared %d files, want %d", compared, len(want))
	}
	kinds := map[string]int{}
	for _, rel := range want {
		k, ok := seen[filepath.ToSlash(rel)]
		if !ok {
			t.Errorf("%s was not compared", rel)
		}
		kinds[k]++
	}
	if kinds["deflated"] == 0 || kinds["stored"] == 0 {
		t.Errorf("want both savez_compressed (deflated) and savez (stored) files, got %v", kinds)
	}
}
