package testbed

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
)

// Python is the interpreter that has numpy on the test machines.
const Python = "/usr/bin/python3"

// GenNPZScript is integration/testdata/gen_npz.py under repoRoot.
func GenNPZScript(repoRoot string) string {
	return filepath.Join(repoRoot, "integration", "testdata", "gen_npz.py")
}

// NPZSpec is the size of a generated window cache.
type NPZSpec struct {
	Train, Dev int // files per split
	Windows    int // windows per file
	Seed       int64
	// CompressedOnly writes every file with np.savez_compressed (by
	// default files alternate with np.savez).
	CompressedOnly bool
	// Walk makes the windows EEG-like (per-channel float32 random walks,
	// deflate about 1.13x as the real data) instead of noise (1.08x).
	Walk bool
	// Jobs is how many files gen_npz.py writes at once (0 or 1: one).
	Jobs int
}

// GenNPZ writes out/train and out/dev (npz files and manifest.json) with
// gen_npz.py.
func GenNPZ(repoRoot, out string, s NPZSpec) error {
	cmd := exec.Command(Python, GenNPZScript(repoRoot),
		"--out", out,
		"--train", strconv.Itoa(s.Train),
		"--dev", strconv.Itoa(s.Dev),
		"--windows", strconv.Itoa(s.Windows),
		"--seed", strconv.FormatInt(s.Seed, 10))
	if s.CompressedOnly {
		cmd.Args = append(cmd.Args, "--compressed-only")
	}
	if s.Walk {
		cmd.Args = append(cmd.Args, "--walk")
	}
	if s.Jobs > 1 {
		cmd.Args = append(cmd.Args, "--jobs", strconv.Itoa(s.Jobs))
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v\n%s", cmd, err, b)
	}
	return nil
}
