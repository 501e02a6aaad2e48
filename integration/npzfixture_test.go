package integration

// The .npz member view's test data: archives written by numpy (np.savez
// and np.savez_compressed, arrays shaped like the training windows), read
// back locally with archive/zip, and copies damaged in their zip directory
// or deflate data.

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

const (
	npzMembersBucket = "bgbfs-npzmembers"
	// The bucket holds two trees: memberDataPrefix, the archives the view
	// is read through, and memberCorruptPrefix, damaged copies of one.
	memberDataPrefix    = "data/"
	memberCorruptPrefix = "corrupt/"
	// memberWindowBytes is one float32 window of 19 channels x 15360
	// samples, as the trainer reads it.
	memberWindowBytes = 19 * 15360 * 4
	// The two window archives, under memberDataPrefix.
	memberCompressedRel = "train/aaaa_s001_t000_windows.npz" // np.savez_compressed, 16 windows
	memberStoredRel     = "train/aaaa_s001_t001_windows.npz" // np.savez, 10 windows
	// memberDirSuffix names an archive's member directory.
	memberDirSuffix = ".d"
	// memberTestSpan is the --npz-checkpoint-span of the correctness tests:
	// the smallest allowed, so a member has hundreds of access points.
	memberTestSpan = 64 << 10
	// memberViewBlock is the --block-size that --npz-members defaults to
	// (bgbfs mount --help), which the byte bounds of TestNPZMemberWindowBytes
	// are stated in.
	memberViewBlock = 256 << 10
)

// memberLongName is an archive name of 255 bytes (NAME_MAX): valid, but
// NAME.npz.d would not be.
// memberHeadRegion is how much of a compressed member's start is read
// without an index (fs's headRegion, SEMANTICS.md).
const memberHeadRegion = 64 << 10

var memberLongName = strings.Repeat("l", 251) + ".npz"

// genMemberArchives writes the archives of the bucket with numpy into
// argv[1]: data/... and corrupt-src.npz. The same seed always gives the
// same bytes.
const genMemberArchives = `
import os, sys
import numpy as np

out = sys.argv[1]
CH, S = 19, 15360
rng = np.random.default_rng(7007)

def eeg(n):
    # Normal samples with the 3 low mantissa bits cleared: deflate shrinks
    # them about 1.12x, close to the real EEG windows' 1.13x.
    w = rng.standard_normal((n, CH, S), dtype=np.float32)
    w.view(np.uint32)[...] &= np.uint32(0xFFFFFFF8)
    return w

def labels(n):
    return (rng.random((n, S)) < 0.1).astype(np.float32)

def extras():
    return dict(
        windows=eeg(3),
        labels=labels(3),
        meta_int64=np.arange(1000, dtype=np.int64) * 7919,
        zeros=np.zeros(2000000),  # 16 MB that deflate shrinks ~1000x
        empty=np.zeros((0, CH), dtype=np.float32),
        scalar=np.array(42, dtype=np.int16),
        channels=np.array(["fp1", "fp2", "cz"]),
        flags=rng.random(4097) < 0.5,
        half=rng.standard_normal(5001).astype(np.float16),
        fortran=np.asfortranarray(rng.standard_normal((301, 7))),
    )

def save(rel, fn, *args, **kw):
    p = os.path.join(out, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        fn(f, *args, **kw)

save("data/train/aaaa_s001_t000_windows.npz", np.savez_compressed, windows=eeg(16), labels=labels(16))
save("data/train/aaaa_s001_t001_windows.npz", np.savez, windows=eeg(10), labels=labels(10))
ramp = np.linspace(0, 1, 12345)
save("data/train/mixed_compressed.npz", np.savez_compressed, ramp, **extras())
save("data/train/mixed_stored.npz", np.savez, ramp, **extras())
save("data/train/order.npz", np.savez_compressed, a=np.arange(1000))
save("data/train/shadow.npz", np.savez, a=np.arange(10))
save("data/train/shadowdir.npz", np.savez_compressed, a=np.arange(10))
save("data/train/sub/deep.npz", np.savez_compressed, windows=eeg(1), labels=labels(1))
save("data/top.npz", np.savez_compressed, x=np.arange(100000, dtype=np.float32))
save("data/long/" + "l" * 251 + ".npz", np.savez, x=np.arange(5))
save("corrupt-src.npz", np.savez_compressed, windows=eeg(8), labels=labels(8))
`

// memberFile is one member of an archive, as archive/zip reads it locally.
type memberFile struct {
	Name           string
	Deflated       bool
	Size           int64 // uncompressed, the zip directory's file_size
	CompressedSize int64
	Data           []byte
}

// memberArchive is one .npz of the bucket.
type memberArchive struct {
	Rel     string // path under the mounted prefix
	Local   string // the file numpy wrote
	Data    []byte
	Members []*memberFile // in the zip directory's order
}

// Member returns the member called name.
func (a *memberArchive) Member(name string) *memberFile {
	for _, m := range a.Members {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// Names returns the member names, sorted.
func (a *memberArchive) Names() []string {
	var out []string
	for _, m := range a.Members {
		out = append(out, m.Name)
	}
	sort.Strings(out)
	return out
}

type memberData struct {
	Bucket   string
	Data     map[string][]byte         // every object under memberDataPrefix, by path below it
	Archives map[string]*memberArchive // the .npz objects among them
	// Corrupt holds the objects under memberCorruptPrefix by name: good.npz
	// and damaged copies of it.
	Corrupt map[string][]byte
	// CorruptSrc is good.npz; FlipAt says where each flipped copy was
	// changed, as an offset into windows.npy's compressed data.
	CorruptSrc *memberArchive
	FlipAt     map[string]int64
}

// Viewable returns the archives whose member directory can be shown: not
// hidden by a real key or prefix of that name, and with a name short
// enough for NAME.npz.d. Sorted by path.
func (d *memberData) Viewable() []*memberArchive {
	var out []*memberArchive
	tree := d.realTree()
	for rel, a := range d.Archives {
		if _, taken := tree[rel+memberDirSuffix]; !taken && len(path.Base(rel))+len(memberDirSuffix) <= 255 {
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Rel < out[j].Rel })
	return out
}

// realTree is what a mount of memberDataPrefix shows without the member
// view: every object and every directory above one.
func (d *memberData) realTree() map[string]entry {
	out := map[string]entry{}
	for rel, b := range d.Data {
		out[rel] = entry{Size: int64(len(b))}
		for _, dir := range parentDirs(rel) {
			out[dir] = entry{IsDir: true}
		}
	}
	return out
}

// viewTree is what a mount with --npz-members shows: the real tree plus,
// for every viewable archive, NAME.npz.d and its members.
func (d *memberData) viewTree() map[string]entry {
	out := d.realTree()
	for _, a := range d.Viewable() {
		dir := a.Rel + memberDirSuffix
		out[dir] = entry{IsDir: true}
		for _, m := range a.Members {
			out[dir+"/"+m.Name] = entry{Size: m.Size}
		}
	}
	return out
}

// Entries returns the names directly in dir ("" is the root) of the real
// tree, as smokeView takes them.
func (d *memberData) Entries(dir string) []smokeEntry {
	var out []smokeEntry
	for p, e := range d.realTree() {
		if path.Dir(p) == dir || dir == "" && !strings.Contains(p, "/") {
			out = append(out, smokeEntry{Name: path.Base(p), IsDir: e.IsDir})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// memberFixture returns the member-view bucket, uploading it on first use.
func memberFixture(t testing.TB) *memberData {
	t.Helper()
	srv := env.server(t)
	return env.members.get(t, "npz member bucket", func() (*memberData, error) {
		return buildMemberData(srv, filepath.Join(env.work, "npzmembers-src"))
	})
}

func buildMemberData(srv *testbed.MinIO, dir string) (*memberData, error) {
	if out, err := exec.Command(testbed.Python, "-c", genMemberArchives, dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("generating the archives: %v\n%s", err, out)
	}
	d := &memberData{
		Bucket:   npzMembersBucket,
		Data:     map[string][]byte{},
		Archives: map[string]*memberArchive{},
		FlipAt:   map[string]int64{},
	}
	local := filepath.Join(dir, "data")
	err := filepath.WalkDir(local, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		r, _ := filepath.Rel(local, p)
		rel := filepath.ToSlash(r)
		d.Data[rel] = b
		a, err := parseMemberArchive(rel, p, b)
		if err != nil {
			return err
		}
		d.Archives[rel] = a
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Objects that are not archives: a sidecar, names beside archives that
	// sort between NAME.npz and NAME.npz.d, a real key and a real prefix
	// named like a member directory, and a directory named like an archive.
	for rel, content := range map[string]string{
		"train/manifest.json":              `[{"cache_file": "aaaa_s001_t000_windows.npz", "window_idx": 0}]` + "\n",
		"train/order.npz.bak":              "a backup that sorts between order.npz and order.npz.d\n",
		"train/order.npz-1":                "another name that sorts between order.npz and order.npz.d\n",
		"train/shadow.npz.d":               "a real object named like shadow.npz's member directory\n",
		"train/shadowdir.npz.d/readme.txt": "under a real prefix named like shadowdir.npz's member directory\n",
		"train/notanarchive.npz/inner.txt": "a directory named like an archive has no member directory\n",
	} {
		d.Data[rel] = []byte(content)
	}
	for _, rel := range []string{memberCompressedRel, memberStoredRel, "train/mixed_compressed.npz", "train/mixed_stored.npz", "long/" + memberLongName} {
		if d.Archives[rel] == nil {
			return nil, fmt.Errorf("numpy did not write %s", rel)
		}
	}
	if err := d.buildCorrupt(filepath.Join(dir, "corrupt-src.npz")); err != nil {
		return nil, err
	}

	var objs []testbed.Object
	for rel, b := range d.Data {
		objs = append(objs, testbed.Object{Key: memberDataPrefix + rel, Data: b})
	}
	for name, b := range d.Corrupt {
		objs = append(objs, testbed.Object{Key: memberCorruptPrefix + name, Data: b})
	}
	if err := putBucket(srv, d.Bucket, objs, 4); err != nil {
		return nil, err
	}
	return d, nil
}

// parseMemberArchive reads a numpy archive with archive/zip.
func parseMemberArchive(rel, local string, b []byte) (*memberArchive, error) {
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	a := &memberArchive{Rel: rel, Local: local, Data: b}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", rel, f.Name, err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", rel, f.Name, err)
		}
		if int64(len(data)) != int64(f.UncompressedSize64) {
			return nil, fmt.Errorf("%s: %s: %d bytes, the directory says %d", rel, f.Name, len(data), f.UncompressedSize64)
		}
		a.Members = append(a.Members, &memberFile{
			Name:           f.Name,
			Deflated:       f.Method == zip.Deflate,
			Size:           int64(f.UncompressedSize64),
			CompressedSize: int64(f.CompressedSize64),
			Data:           data,
		})
	}
	return a, nil
}

// buildCorrupt makes the damaged copies of the numpy archive at src: its
// end-of-central-directory signature or first central directory entry's
// signature zeroed, 3,000 bytes cut off the end, and one byte of
// windows.npy's deflate data inverted late (past the first 4 MiB of
// output) or early (about 100 KB in). It checks with archive/zip that
// each is really broken.
func (d *memberData) buildCorrupt(src string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	a, err := parseMemberArchive("good.npz", src, b)
	if err != nil {
		return err
	}
	w := a.Member("windows.npy")
	if w == nil || !w.Deflated || w.Size < 6<<20 {
		return fmt.Errorf("corrupt-src.npz: want a deflated windows.npy of more than 6 MiB, got %+v", w)
	}
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return err
	}
	dataOff := int64(-1)
	for _, f := range zr.File {
		if f.Name == "windows.npy" {
			if dataOff, err = f.DataOffset(); err != nil {
				return err
			}
		}
	}
	if dataOff < 0 {
		return errors.New("corrupt-src.npz: no windows.npy")
	}
	eocd := bytes.LastIndex(b, []byte("PK\x05\x06"))
	if eocd < 0 || len(b)-eocd < 22 {
		return errors.New("corrupt-src.npz: no end of central directory record")
	}
	cdOff := int64(binary.LittleEndian.Uint32(b[eocd+16:]))
	if cdOff+4 > int64(len(b)) || !bytes.Equal(b[cdOff:cdOff+4], []byte("PK\x01\x02")) {
		return fmt.Errorf("corrupt-src.npz: no central directory entry at %d", cdOff)
	}
	edit := func(f func(c []byte) []byte) []byte { return f(bytes.Clone(b)) }
	d.FlipAt["flip_late.npz"] = w.CompressedSize * 3 / 4
	d.FlipAt["flip_early.npz"] = 100_000
	d.CorruptSrc = a
	d.Corrupt = map[string][]byte{
		"good.npz": b,
		"eocd_sig.npz": edit(func(c []byte) []byte {
			copy(c[eocd:], "\x00\x00\x00\x00")
			return c
		}),
		"cd_sig.npz": edit(func(c []byte) []byte {
			copy(c[cdOff:], "\x00\x00\x00\x00")
			return c
		}),
		"truncated.npz": edit(func(c []byte) []byte { return c[:len(c)-3000] }),
	}
	for name, at := range d.FlipAt {
		d.Corrupt[name] = edit(func(c []byte) []byte {
			c[dataOff+at] ^= 0xff
			return c
		})
	}
	// The damage is real: archive/zip refuses each copy.
	for name, c := range d.Corrupt {
		_, err := parseMemberArchive(name, "", c)
		if (err == nil) != (name == "good.npz") {
			return fmt.Errorf("archive/zip reads corrupt/%s with error %v", name, err)
		}
	}
	return nil
}

// mountMembers mounts prefix of the member bucket through endpoint, with
// extraEnv added to the daemon's environment.
func mountMembers(t testing.TB, d *memberData, endpoint, prefix string, extraEnv []string, args ...string) *testbed.Mounted {
	t.Helper()
	return mount(t, mountSpec{
		Source:   "s3://" + d.Bucket + "/" + prefix,
		Endpoint: endpoint,
		Creds:    rootCreds(env.server(t)),
		Args:     append([]string{"--metadata-ttl", "10m"}, args...),
		Env:      extraEnv,
	})
}

// rawDirNames lists dir in the order readdir returns (without . and ..).
func rawDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// npyDataOffset is where the array data starts in a .npy file.
func npyDataOffset(b []byte) (int64, error) {
	if len(b) < 12 || string(b[:6]) != "\x93NUMPY" {
		return 0, errors.New("not a .npy file")
	}
	switch b[6] {
	case 1:
		return 10 + int64(binary.LittleEndian.Uint16(b[8:])), nil
	case 2, 3:
		return 12 + int64(binary.LittleEndian.Uint32(b[8:])), nil
	}
	return 0, fmt.Errorf(".npy version %d", b[6])
}
