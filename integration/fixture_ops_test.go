package integration

// The operations tests' bucket (bgbfs exec, --daemon, mount(8) and fstab,
// metrics and logs): a small numpy dataset under one prefix.

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// The small bucket of the operations tests: a window cache of a few npz
// files under opsPrefix, so these tests do not wait for the main dataset
// (whose >4 GiB object takes a while to upload).
const (
	opsBucket = "bgbfs-ops"
	opsPrefix = "cache/"
	opsTrain  = 4
	opsDev    = 2
)

type opsData struct {
	Bucket  string
	Local   string            // gen_npz.py's output: train/ and dev/
	Objects map[string][]byte // key → content
}

// Source is the s3:// URL of the window cache.
func (d *opsData) Source() string { return "s3://" + d.Bucket + "/" + opsPrefix }

// File returns the content of a file under the mounted prefix.
func (d *opsData) File(t testing.TB, rel string) []byte {
	t.Helper()
	b, ok := d.Objects[opsPrefix+rel]
	if !ok {
		t.Fatalf("test bed: no object %s%s", opsPrefix, rel)
	}
	return b
}

// NPZ returns the npz file names of a split, sorted.
func (d *opsData) NPZ(split string) []string {
	var out []string
	for k := range d.Objects {
		if rest, ok := strings.CutPrefix(k, opsPrefix+split+"/"); ok && strings.HasSuffix(rest, ".npz") && !strings.Contains(rest, "/") {
			out = append(out, rest)
		}
	}
	sort.Strings(out)
	return out
}

// opsFixture returns the operations bucket, uploading it on first use.
func opsFixture(t testing.TB) *opsData {
	t.Helper()
	srv := env.server(t)
	return env.ops.get(t, "operations bucket", func() (*opsData, error) {
		return buildOps(srv, filepath.Join(env.work, "ops-src"))
	})
}

func buildOps(srv *testbed.MinIO, dir string) (*opsData, error) {
	d := &opsData{Bucket: opsBucket, Local: dir, Objects: map[string][]byte{}}
	if err := testbed.GenNPZ(env.repo, dir, testbed.NPZSpec{Train: opsTrain, Dev: opsDev, Windows: 3, Seed: 6006}); err != nil {
		return nil, err
	}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		d.Objects[opsPrefix+filepath.ToSlash(rel)] = b
		return nil
	})
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	admin := srv.Admin()
	if err := admin.CreateBucket(ctx, d.Bucket); err != nil {
		return nil, err
	}
	var objs []testbed.Object
	for k, v := range d.Objects {
		objs = append(objs, testbed.Object{Key: k, Data: v})
	}
	if err := admin.PutMany(ctx, d.Bucket, objs, 8); err != nil {
		return nil, err
	}
	return d, nil
}

// npzDigest lists ROOT/train and ROOT/dev and prints, per npz file, a
// SHA-256 over every member's name, dtype, shape and bytes as numpy.load
// returns them: run on the mount and on the local source, the outputs
// must be equal.
const npzDigest = `
import hashlib, os, sys
import numpy as np
root = sys.argv[1]
for split in ("train", "dev"):
    names = sorted(os.listdir(os.path.join(root, split)))
    print("LIST", split, " ".join(names))
    for n in names:
        if not n.endswith(".npz"):
            continue
        h = hashlib.sha256()
        with np.load(os.path.join(root, split, n)) as z:
            for k in sorted(z.files):
                a = z[k]
                h.update(("%s %s %s;" % (k, a.dtype, a.shape)).encode())
                h.update(np.ascontiguousarray(a).tobytes())
        print("NPZ", split, n, h.hexdigest())
`

// localDigest runs npzDigest on the local source.
func localDigest(t testing.TB, d *opsData) string {
	t.Helper()
	out, err := exec.Command(testbed.Python, "-c", npzDigest, d.Local).CombinedOutput()
	if err != nil {
		t.Fatalf("npz digest of the local source: %v\n%s", err, out)
	}
	return string(out)
}
