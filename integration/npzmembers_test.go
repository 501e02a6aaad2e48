package integration

// The .npz member view (issue 7): with --npz-members, beside every visible
// NAME.npz a read-only directory NAME.npz.d/ holds one file per member of
// the zip archive, with exactly the member's uncompressed bytes. Checked
// against archives written by numpy (np.savez and np.savez_compressed,
// arrays shaped like the training windows) and read back locally with
// archive/zip and numpy; bytes fetched per window are counted at a
// CountingProxy; corrupt archives are copies of a numpy archive with their
// zip directory or deflate data damaged.

import (
	"archive/zip"
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

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

var memberFixtureOnce lazy[*memberData]

// memberFixture returns the member-view bucket, uploading it on first use.
func memberFixture(t testing.TB) *memberData {
	t.Helper()
	srv := env.server(t)
	return memberFixtureOnce.get(t, "npz member bucket", func() (*memberData, error) {
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

// TestNPZMemberListing walks a mount with --npz-members and compares it
// with the model: every real object and directory, plus NAME.npz.d beside
// every archive file (not beside a directory named *.npz, not where a
// real key or prefix has that name, not where the name would pass
// NAME_MAX) holding the members archive/zip finds, with their exact
// sizes. Member directories and files carry the archive's mtime and the
// usual modes; every directory lists in byte-wise order; names that are
// not member directories, and members that do not exist, are ENOENT.
func TestNPZMemberListing(t *testing.T) {
	d := memberFixture(t)
	m := mountMembers(t, d, env.server(t).Endpoint, memberDataPrefix, nil, "--npz-members", "--npz-checkpoint-span", "64KiB")
	mp := m.Mountpoint

	got := walkTree(t, mp)
	want := d.viewTree()
	var missing, extra, wrong []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			missing = append(missing, p)
		case g.IsDir != w.IsDir || !w.IsDir && g.Size != w.Size:
			wrong = append(wrong, fmt.Sprintf("%s: dir %v size %d, want dir %v size %d", p, g.IsDir, g.Size, w.IsDir, w.Size))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			extra = append(extra, p)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	sort.Strings(wrong)
	for _, p := range missing {
		t.Errorf("missing from the mount: %s", p)
	}
	for _, p := range extra {
		t.Errorf("not expected in the mount: %s (%+v)", p, got[p])
	}
	for _, w := range wrong {
		t.Error(w)
	}
	t.Logf("walked %d entries, %d of them in %d member directories", len(got), len(want)-len(d.realTree()), len(d.Viewable()))

	// Times and modes: a member directory and its files show the archive's
	// mtime, the directory and file modes of the mount.
	dirPerm, filePerm := got["train"].Mode.Perm(), got[memberCompressedRel].Mode.Perm()
	for _, a := range d.Viewable() {
		arch, ok := got[a.Rel]
		if !ok {
			continue
		}
		dir := a.Rel + memberDirSuffix
		paths := []string{dir}
		for _, mf := range a.Members {
			paths = append(paths, dir+"/"+mf.Name)
		}
		for _, p := range paths {
			e, ok := got[p]
			if !ok {
				continue
			}
			if !e.Mtime.Equal(arch.Mtime) {
				t.Errorf("%s: mtime %v, want the archive's %v", p, e.Mtime, arch.Mtime)
			}
			switch {
			case e.IsDir && (e.Mode.Perm() != dirPerm || e.Mode.Type() != fs.ModeDir):
				t.Errorf("%s: mode %v, want a directory with %v", p, e.Mode, dirPerm)
			case !e.IsDir && (e.Mode.Perm() != filePerm || !e.Mode.IsRegular()):
				t.Errorf("%s: mode %v, want a regular file with %v", p, e.Mode, filePerm)
			}
		}
	}

	// Every directory lists in byte-wise order (SEMANTICS.md), the member
	// directories interleaved with the real names.
	var dirs []string
	for p, e := range want {
		if e.IsDir {
			dirs = append(dirs, p)
		}
	}
	sort.Strings(dirs)
	for _, dir := range append([]string{""}, dirs...) {
		names, err := rawDirNames(filepath.Join(mp, filepath.FromSlash(dir)))
		if err != nil {
			t.Errorf("readdir %q: %v", dir, err)
			continue
		}
		if sort.StringsAreSorted(names) {
			continue
		}
		if strings.HasSuffix(dir, ".npz"+memberDirSuffix) && d.Archives[strings.TrimSuffix(dir, memberDirSuffix)] != nil {
			// Not required by the feature's spec; noted.
			t.Logf("note: member directory %s lists in zip order %q, not byte-wise", dir, names)
			continue
		}
		t.Errorf("readdir %q returned %q, not in byte-wise order", dir, names)
	}

	// Real objects win over the view, and only archives get one.
	if b, err := os.ReadFile(filepath.Join(mp, "train", "shadow.npz.d")); err != nil || !bytes.Equal(b, d.Data["train/shadow.npz.d"]) {
		t.Errorf("train/shadow.npz.d is a real object: read %q, %v; want its content", b, err)
	}
	if names, err := dirNames(filepath.Join(mp, "train", "shadowdir.npz.d")); err != nil || !slices.Equal(names, []string{"readme.txt"}) {
		t.Errorf("train/shadowdir.npz.d is a real prefix: lists %q, %v; want [readme.txt]", names, err)
	}
	for _, p := range []string{
		"train/notanarchive.npz.d",                   // a directory named *.npz
		"train/missing.npz.d",                        // no such archive
		"train/order.npz.bak.d",                      // not an archive name
		"train/manifest.json.d",                      // not an archive name
		"train/aaaa_s001_t000_windows.npz.d.d",       // nested suffix
		memberCompressedRel + memberDirSuffix + "/x", // no such member
		memberCompressedRel + memberDirSuffix + "/windows",
		memberStoredRel + memberDirSuffix + "/labels.npy.d",
		"train/shadow.npz.d/windows.npy", // under a real file
		"train/shadowdir.npz.d/a.npy",    // the real prefix has no members
	} {
		if _, err := os.Lstat(filepath.Join(mp, filepath.FromSlash(p))); !isENOENT(err) && !isErrno(err, syscall.ENOTDIR) {
			t.Errorf("lstat %s: %v, want ENOENT", p, errnoOf(err))
		}
	}
	long := "long/" + memberLongName + memberDirSuffix
	if fi, err := os.Lstat(filepath.Join(mp, filepath.FromSlash(long))); err == nil {
		t.Errorf("lstat of the %d-byte name %s succeeded (mode %v); a member directory name past 255 bytes should not exist", len(path.Base(long)), long, fi.Mode())
	}
}

// memberRead is one pread of a member file.
type memberRead struct {
	file int // index into the open member files
	off  int64
	n    int
}

// memberReads draws count preads over a member of size bytes: a fifth
// cross an access point (every span bytes of output), some are exactly
// one window at a window boundary (window members, whose data starts at
// hdr), a tenth cross the end of the member and some start at or past
// it; the rest are random offsets and lengths.
func memberReads(rng *rand.Rand, file int, size, span, hdr int64, windows bool, count int) []memberRead {
	var sizes []int
	for _, n := range readSizes() {
		if n <= 3<<20+11 {
			sizes = append(sizes, n)
		}
	}
	out := make([]memberRead, 0, count)
	for i := range count {
		n := sizes[rng.IntN(len(sizes))]
		var off int64
		switch {
		case i%10 == 1 && size > 1:
			n = max(n, 2)
			off = max(0, size-int64(1+rng.IntN(n-1)))
		case i%20 == 3:
			off = size + int64(rng.IntN(3))
		case i%5 == 0 && size > span:
			k := 1 + rng.Int64N(size/span)
			off = max(0, k*span-1-rng.Int64N(4096))
			n = 2 + rng.IntN(int(2*span))
		case i%7 == 2 && windows:
			k := rng.Int64N((size - hdr) / memberWindowBytes)
			off, n = hdr+k*memberWindowBytes, memberWindowBytes
		default:
			off = rng.Int64N(max(size, 1))
		}
		out = append(out, memberRead{file, off, n})
	}
	return out
}

// memberOpen is a member file opened through the mount, with its content.
type memberOpen struct {
	path   string
	member *memberFile
	f      *os.File
}

// openMembers opens every member of every viewable archive.
func openMembers(t *testing.T, d *memberData, mp string) []memberOpen {
	t.Helper()
	var out []memberOpen
	for _, a := range d.Viewable() {
		for _, mf := range a.Members {
			p := filepath.Join(mp, filepath.FromSlash(a.Rel+memberDirSuffix), mf.Name)
			f, err := os.Open(p)
			if err != nil {
				t.Fatalf("open %s: %v", p, errnoOf(err))
			}
			t.Cleanup(func() { f.Close() })
			out = append(out, memberOpen{path: a.Rel + memberDirSuffix + "/" + mf.Name, member: mf, f: f})
		}
	}
	return out
}

// runMemberReads makes the preads on 4 goroutines and reports every read
// that did not return exactly the member's bytes.
func runMemberReads(t *testing.T, files []memberOpen, reads []memberRead) {
	t.Helper()
	var mu sync.Mutex
	var bad []string
	var total int64
	start := time.Now()
	parallel(len(reads), 4, func(i int) {
		r := reads[i]
		mo := files[r.file]
		msg := checkPread(mo.f, bytes.NewReader(mo.member.Data), mo.member.Size, r.off, r.n)
		mu.Lock()
		defer mu.Unlock()
		total += int64(max(0, min(int64(r.n), mo.member.Size-r.off)))
		if msg != "" {
			bad = append(bad, fmt.Sprintf("pread(%s, off=%d, len=%d) of %d bytes: %s", mo.path, r.off, r.n, mo.member.Size, msg))
		}
	})
	sort.Strings(bad)
	for i, msg := range bad {
		if i == 25 {
			t.Errorf("... %d more", len(bad)-25)
			break
		}
		t.Error(msg)
	}
	t.Logf("%d preads over %d members, %d bytes in %v, %d wrong", len(reads), len(files), total, time.Since(start).Round(time.Millisecond), len(bad))
}

// memberNumpyCheck loads members through the view with numpy and compares
// them with the arrays numpy loads from the local archive: the spec (a
// JSON file, argv[1]) lists the member file, the local archive, the array
// name, and for mmap checks the window indices to compare.
const memberNumpyCheck = `
import json, sys
import numpy as np
for c in json.load(open(sys.argv[1])):
    with np.load(c["npz"]) as z:
        want = z[c["key"]]
    if c["indices"] is not None:
        got = np.load(c["path"], mmap_mode="r")
        if not isinstance(got, np.memmap):
            sys.exit("MISMATCH %s: np.load(mmap_mode='r') gave %s, not a memmap" % (c["path"], type(got)))
    else:
        got = np.load(c["path"])
    if got.dtype != want.dtype or got.shape != want.shape:
        sys.exit("MISMATCH %s: %s %s, want %s %s" % (c["path"], got.dtype, got.shape, want.dtype, want.shape))
    if c["indices"] is not None:
        for i in c["indices"]:
            if not np.array_equal(np.asarray(got[i]), want[i]):
                sys.exit("MISMATCH %s: window %d differs" % (c["path"], i))
    elif not np.array_equal(got, want) or got.flags.f_contiguous != want.flags.f_contiguous:
        sys.exit("MISMATCH %s: content or order differs" % c["path"])
    print("OK", c["path"], flush=True)
`

// TestNPZMemberContent reads every member of every archive through the
// view with --npz-checkpoint-span 64KiB and compares it with what
// archive/zip reads locally: random preads on a fresh mount (the first
// read of a compressed member indexes it), whole sequential reads, random
// preads again from the page cache dropped, then numpy: np.load of every
// member, and np.load(mmap_mode="r")[i] of windows and labels for several
// i, against np.load of the local archive.
func TestNPZMemberContent(t *testing.T) {
	d := memberFixture(t)
	dropPageCache(t)
	m := mountMembers(t, d, env.server(t).Endpoint, memberDataPrefix, nil, "--npz-members", "--npz-checkpoint-span", "64KiB")
	mp := m.Mountpoint
	stop := watchdog(t, m, 10*time.Minute, "TestNPZMemberContent")
	defer stop()

	kinds := map[bool]int{}
	for _, a := range d.Viewable() {
		for _, mf := range a.Members {
			kinds[mf.Deflated]++
		}
	}
	if kinds[true] == 0 || kinds[false] == 0 {
		t.Fatalf("fixture: want deflated and stored members, got %v", kinds)
	}

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0x6e707a))
	draw := func(files []memberOpen) []memberRead {
		var reads []memberRead
		for i, mo := range files {
			hdr, err := npyDataOffset(mo.member.Data)
			if err != nil {
				t.Fatalf("%s: %v", mo.path, err)
			}
			count := 20
			if mo.member.Size > 4<<20 {
				count = 150
			} else if mo.member.Size > memberTestSpan {
				count = 50
			}
			isWindows := path.Base(mo.path) == "windows.npy"
			reads = append(reads, memberReads(rng, i, mo.member.Size, memberTestSpan, hdr, isWindows, count)...)
		}
		rng.Shuffle(len(reads), func(i, j int) { reads[i], reads[j] = reads[j], reads[i] })
		return reads
	}

	t.Run("cold_preads", func(t *testing.T) {
		files := openMembers(t, d, mp)
		runMemberReads(t, files, draw(files))
	})

	t.Run("sequential", func(t *testing.T) {
		dropPageCache(t)
		for _, a := range d.Viewable() {
			for _, mf := range a.Members {
				p := filepath.Join(mp, filepath.FromSlash(a.Rel+memberDirSuffix), mf.Name)
				sum, n, err := readSequential(p, oneMiB)
				if err != nil || n != mf.Size || sum != sha256Hex(mf.Data) {
					t.Errorf("%s: read %d of %d bytes, err %v, sha256 matches %v", p, n, mf.Size, errnoOf(err), sum == sha256Hex(mf.Data))
				}
			}
			// The archive itself is unchanged by the view.
			if sum, n, err := hashFile(filepath.Join(mp, filepath.FromSlash(a.Rel))); err != nil || sum != sha256Hex(a.Data) {
				t.Errorf("%s: read %d bytes, %v; the archive differs from the source", a.Rel, n, err)
			}
		}
	})

	t.Run("warm_preads", func(t *testing.T) {
		dropPageCache(t)
		files := openMembers(t, d, mp)
		runMemberReads(t, files, draw(files))
	})

	t.Run("numpy", func(t *testing.T) {
		dropPageCache(t)
		type check struct {
			Path    string `json:"path"`
			NPZ     string `json:"npz"`
			Key     string `json:"key"`
			Indices []int  `json:"indices"`
		}
		var checks []check
		windows := 0
		for _, a := range d.Viewable() {
			for _, mf := range a.Members {
				c := check{
					Path: filepath.Join(mp, filepath.FromSlash(a.Rel+memberDirSuffix), mf.Name),
					NPZ:  a.Local,
					Key:  strings.TrimSuffix(mf.Name, ".npy"),
				}
				if mf.Name == "windows.npy" || mf.Name == "labels.npy" {
					hdr, _ := npyDataOffset(mf.Data)
					per := int64(memberWindowBytes)
					if mf.Name == "labels.npy" {
						per = 15360 * 4
					}
					n := int((mf.Size - hdr) / per)
					c.Indices = []int{0, n - 1}
					if n > 2 {
						c.Indices = append(c.Indices, n/2, 1+rng.IntN(n-2))
					}
					if mf.Name == "windows.npy" {
						windows += len(c.Indices)
					}
				}
				checks = append(checks, c)
			}
		}
		spec := filepath.Join(t.TempDir(), "checks.json")
		b, _ := json.Marshal(checks)
		if err := os.WriteFile(spec, b, 0o644); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		out, err := exec.Command(testbed.Python, "-c", memberNumpyCheck, spec).CombinedOutput()
		if err != nil {
			t.Fatalf("numpy through the view: %v\n%s", err, lastBytes(string(out), 4000))
		}
		if ok := strings.Count(string(out), "OK "); ok != len(checks) {
			t.Errorf("numpy checked %d members, want %d:\n%s", ok, len(checks), out)
		}
		t.Logf("numpy loaded %d members (%d windows through mmap) in %v", len(checks), windows, time.Since(start).Round(time.Millisecond))
	})

	if !m.Alive() {
		t.Errorf("the daemon died")
	}
}

// TestNPZMemberOffByDefault checks that without --npz-members (and with
// --npz-members=false) the mount shows exactly the bucket: no NAME.npz.d
// in any listing, and ENOENT for every one of them and their members.
func TestNPZMemberOffByDefault(t *testing.T) {
	d := memberFixture(t)
	for _, c := range []struct {
		name string
		args []string
	}{
		{"no_flag", nil},
		{"flag_false", []string{"--npz-members=false"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := mountMembers(t, d, env.server(t).Endpoint, memberDataPrefix, nil, c.args...)
			got := walkTree(t, m.Mountpoint)
			want := d.realTree()
			for p := range got {
				if _, ok := want[p]; !ok {
					t.Errorf("not in the bucket: %s", p)
				}
			}
			for p := range want {
				if _, ok := got[p]; !ok {
					t.Errorf("missing: %s", p)
				}
			}
			names, err := rawDirNames(filepath.Join(m.Mountpoint, "train"))
			if err != nil {
				t.Fatal(err)
			}
			if !sort.StringsAreSorted(names) {
				t.Errorf("readdir train returned %q, not in byte-wise order", names)
			}
			for _, a := range d.Viewable() {
				dir := filepath.Join(m.Mountpoint, filepath.FromSlash(a.Rel+memberDirSuffix))
				if _, err := os.Lstat(dir); !isENOENT(err) {
					t.Errorf("lstat %s: %v, want ENOENT", a.Rel+memberDirSuffix, errnoOf(err))
				}
				if _, err := os.Lstat(filepath.Join(dir, a.Members[0].Name)); !isENOENT(err) {
					t.Errorf("lstat %s/%s: %v, want ENOENT", a.Rel+memberDirSuffix, a.Members[0].Name, errnoOf(err))
				}
				if _, err := os.ReadDir(dir); !isENOENT(err) {
					t.Errorf("readdir %s: %v, want ENOENT", a.Rel+memberDirSuffix, errnoOf(err))
				}
			}
		})
	}
}

// TestNPZMemberSmokeView mounts with a limit of one *.npz per directory
// (BGB_LIMIT_FILES=1, and --limit-files 1) and --npz-members: a member
// directory is listed and found only beside a visible archive; the member
// directories of hidden archives, and their members, are ENOENT.
func TestNPZMemberSmokeView(t *testing.T) {
	d := memberFixture(t)
	for _, c := range []struct {
		name string
		env  []string
		args []string
	}{
		{"env", []string{"BGB_LIMIT_FILES=1"}, nil},
		{"flag", nil, []string{"--limit-files", "1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := mountMembers(t, d, env.server(t).Endpoint, memberDataPrefix, c.env, append([]string{"--npz-members"}, c.args...)...)
			for _, dir := range []string{"", "train", "train/sub"} {
				all := d.Entries(dir)
				visible, _ := smokeView(all, 1, npzPattern)
				want := slices.Clone(visible)
				isDir := map[string]bool{}
				for _, e := range all {
					isDir[e.Name] = e.IsDir
				}
				var hidden []string
				for _, e := range all {
					rel := path.Join(dir, e.Name)
					if e.IsDir || d.Archives[rel] == nil {
						continue
					}
					if _, taken := isDir[e.Name+memberDirSuffix]; taken {
						continue
					}
					if slices.Contains(visible, e.Name) {
						want = append(want, e.Name+memberDirSuffix)
					} else {
						hidden = append(hidden, rel)
					}
				}
				sort.Strings(want)
				got, err := rawDirNames(filepath.Join(m.Mountpoint, filepath.FromSlash(dir)))
				if err != nil {
					t.Errorf("readdir %q: %v", dir, err)
					continue
				}
				if !slices.Equal(got, want) {
					t.Errorf("readdir %q: %q, want %q (%s)", dir, got, want, diffNames(got, want))
				}
				for _, rel := range hidden {
					p := filepath.Join(m.Mountpoint, filepath.FromSlash(rel+memberDirSuffix))
					if _, err := os.Lstat(p); !isENOENT(err) {
						t.Errorf("lstat %s of a hidden archive: %v, want ENOENT", rel+memberDirSuffix, errnoOf(err))
					}
					name := d.Archives[rel].Members[0].Name
					if _, err := os.Lstat(filepath.Join(p, name)); !isENOENT(err) {
						t.Errorf("lstat %s/%s of a hidden archive: %v, want ENOENT", rel+memberDirSuffix, name, errnoOf(err))
					}
				}
				if dir == "train" && len(hidden) < 3 {
					t.Errorf("fixture: train/ should hide several archives, hides %q", hidden)
				}
			}
			// The visible archive's members read right.
			a := d.Archives[memberCompressedRel]
			dir := filepath.Join(m.Mountpoint, filepath.FromSlash(a.Rel+memberDirSuffix))
			if names, err := dirNames(dir); err != nil || !slices.Equal(names, a.Names()) {
				t.Errorf("readdir %s: %q, %v; want %q", a.Rel+memberDirSuffix, names, err, a.Names())
			}
			w := a.Member("windows.npy")
			f, err := os.Open(filepath.Join(dir, "windows.npy"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			for _, off := range []int64{0, w.Size / 2, w.Size - memberWindowBytes} {
				if msg := checkPread(f, bytes.NewReader(w.Data), w.Size, off, memberWindowBytes); msg != "" {
					t.Errorf("pread(%s/windows.npy, %d, %d): %s", a.Rel+memberDirSuffix, off, memberWindowBytes, msg)
				}
			}
		})
	}
}

// memberWindowProbe loads a window member with np.load(mmap_mode="r"),
// says READY, then for each index read from stdin copies that window out
// of the map and prints its SHA-256: the test counts at the proxy what
// each window costs, apart from the open and the header.
const memberWindowProbe = `
import hashlib, sys
import numpy as np
a = np.load(sys.argv[1], mmap_mode="r")
print("READY", a.shape[0], flush=True)
for line in sys.stdin:
    i = int(line)
    w = np.array(a[i])
    print("WINDOW", i, hashlib.sha256(w.tobytes()).hexdigest(), flush=True)
`

// TestNPZMemberWindowBytes counts, at a CountingProxy, the bytes S3 sends
// for one training window read through numpy's mmap of NAME.npz.d/windows.npy,
// with the default --npz-checkpoint-span (1 MiB) and the block size and
// kernel read-ahead --npz-members picks.
//
//   - deflated (np.savez_compressed): the mount has --cache-size 4MiB:
//     half of it holds member indexes (the index of this 18.7 MB member at
//     a 1 MiB span is about 0.6 MB), the other half 2 MiB of blocks, so
//     once the archive has gone through, the block cache holds little of
//     it and the bytes counted are what one window costs. The member is
//     read whole through the view (its index is built), the page cache is
//     dropped, then each window must cost at most 4x its compressed size,
//     taken as the member's compress_size/file_size x 1,167,360 (the data
//     is uniform, so every window compresses alike). What it costs: the
//     window, up to a span before it (inflated from its access point), the
//     kernel's mmap read-around, the span bgbfs prefetches after a read, and
//     a block at each end.
//   - stored (np.savez): on a fresh mount with the default cache, each
//     window must cost at most 2x the window plus 2 blocks: the window, the
//     read-around, and the blocks its ends fall in.
//
// The windows measured are three or more apart, so that what is read
// ahead for one is not counted as free for the next; every window's bytes
// are checked against the source.
func TestNPZMemberWindowBytes(t *testing.T) {
	d := memberFixture(t)
	srv := env.server(t)
	// The kernel reads on after a fault returns and bgbfs prefetches after
	// a read: each window's count waits until the proxy has been idle this
	// long (at most settleLimit).
	const readAround, settleLimit = 300 * time.Millisecond, 10 * time.Second
	settle := func(t *testing.T, proxy *testbed.CountingProxy) {
		t.Helper()
		if !proxy.WaitQuiet(readAround, settleLimit) {
			t.Logf("the proxy was still busy after %v", settleLimit)
		}
	}

	// probe reads the windows indices of the member w (data at hdr) at p
	// through numpy's mmap, one at a time, and checks what each cost at the
	// proxy against bound; unit is the size the figures are given in (a
	// window, or a window's compressed bytes).
	probe := func(t *testing.T, proxy *testbed.CountingProxy, p string, hdr int64, w *memberFile, indices []int, unit int64, unitName string, bound int64) {
		t.Helper()
		cmd := exec.Command(testbed.Python, "-c", memberWindowProbe, p)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		bg := startBgCmd(t, cmd)
		lines := bufio.NewScanner(stdout)
		next := func() []string {
			t.Helper()
			if !lines.Scan() {
				stdin.Close()
				bg.Wait(5 * time.Second)
				t.Fatalf("the numpy probe stopped: %v\n%s", lines.Err(), stderr.String())
			}
			return strings.Fields(lines.Text())
		}
		n := int((w.Size - hdr) / memberWindowBytes)
		if f := next(); len(f) != 2 || f[0] != "READY" || f[1] != strconv.Itoa(n) {
			t.Fatalf("numpy probe: %q, want READY %d", f, n)
		}
		settle(t, proxy)
		proxy.Reset()
		var sum, least int64
		for _, i := range indices {
			fmt.Fprintln(stdin, i)
			f := next()
			settle(t, proxy)
			c, reqs := proxy.Take()
			off := hdr + int64(i)*memberWindowBytes
			want := sha256Hex(w.Data[off : off+memberWindowBytes])
			if len(f) != 3 || f[0] != "WINDOW" || f[1] != strconv.Itoa(i) || f[2] != want {
				t.Errorf("window %d through numpy's mmap: %q, want sha256 %s", i, f, want)
			}
			gets := getRequests(reqs)
			_, overlap, largest, _ := rangeStats(gets)
			// How far the GETs reach before and after the window's bytes
			// in the archive (its data starts near the member's offset).
			lo, hi := int64(-1), int64(-1)
			for _, g := range gets {
				if a, z, ok := httpRange(g.Range); ok {
					if lo < 0 || a < lo {
						lo = a
					}
					hi = max(hi, z+1)
				}
			}
			t.Logf("window %d (bytes %d..%d of the member): %d GETs of archive bytes %d..%d (largest %d bytes, %d bytes asked twice), %d bytes = %.2fx %s, bound %d",
				i, off, off+memberWindowBytes, c.GetObject, lo, hi, largest, overlap, c.GetObjectBytes, float64(c.GetObjectBytes)/float64(unit), unitName, bound)
			if c.GetObjectBytes > bound {
				t.Errorf("window %d cost %d bytes from S3, more than the bound %d; GETs:\n%s", i, c.GetObjectBytes, bound, testbed.FormatRequests(gets, 40))
			}
			if c.ListObjectsV2 != 0 || c.HeadObject != 0 {
				t.Errorf("window %d: %v, want only GETs", i, c)
			}
			sum += c.GetObjectBytes
			least += unit
		}
		stdin.Close()
		if !bg.Wait(10 * time.Second) {
			t.Errorf("the numpy probe did not exit")
		}
		t.Logf("%d windows: %d bytes from S3 in all, %.2fx %s each on average", len(indices), sum, float64(sum)/float64(len(indices))/float64(unit), unitName)
		// The cache did not answer for S3: the measurement means something.
		if sum < least {
			t.Errorf("only %d bytes fetched for %d windows: the block cache served them, the test proves nothing", sum, len(indices))
		}
	}

	t.Run("deflated", func(t *testing.T) {
		a := d.Archives[memberCompressedRel]
		w := a.Member("windows.npy")
		hdr, err := npyDataOffset(w.Data)
		if err != nil || !w.Deflated {
			t.Fatalf("fixture: %s windows.npy: deflated %v, %v", a.Rel, w.Deflated, err)
		}
		ratio := float64(w.CompressedSize) / float64(w.Size)
		window := int64(ratio * memberWindowBytes)
		t.Logf("%s windows.npy: %d bytes deflated to %d (%.3fx); one window ~ %d compressed bytes", a.Rel, w.Size, w.CompressedSize, 1/ratio, window)
		proxy := newProxy(t, srv.Endpoint)
		m := mountMembers(t, d, proxy.URL, memberDataPrefix, nil, "--npz-members", "--cache-size", "4MiB")
		p := filepath.Join(m.Mountpoint, filepath.FromSlash(a.Rel+memberDirSuffix), "windows.npy")
		stop := watchdog(t, m, 5*time.Minute, "reading windows through the view")
		defer stop()
		proxy.Reset()
		sum, n, err := hashFile(p)
		if err != nil || n != w.Size || sum != sha256Hex(w.Data) {
			t.Fatalf("warming the index: read %d of %d bytes, %v, sha256 matches %v", n, w.Size, err, sum == sha256Hex(w.Data))
		}
		t.Logf("first read of the whole member (builds the index): %v; the archive is %d bytes", proxy.Counts(), len(a.Data))
		dropPageCache(t)
		probe(t, proxy, p, hdr, w, []int{2, 5, 8, 11, 15}, window, "its compressed size", 4*window)
	})

	// A stored member needs no index: a fresh mount with the default
	// cache is cold. The bound allows the kernel's read-around (about a
	// window), a block at each end, and the one checkpoint span (1 MiB by
	// default) the view prefetches past each request so that the kernel's
	// chain of requests for one window costs one round trip.
	t.Run("stored", func(t *testing.T) {
		a := d.Archives[memberStoredRel]
		w := a.Member("windows.npy")
		hdr, err := npyDataOffset(w.Data)
		if err != nil || w.Deflated {
			t.Fatalf("fixture: %s windows.npy: deflated %v, %v", a.Rel, w.Deflated, err)
		}
		proxy := newProxy(t, srv.Endpoint)
		dropPageCache(t)
		m := mountMembers(t, d, proxy.URL, memberDataPrefix, nil, "--npz-members")
		p := filepath.Join(m.Mountpoint, filepath.FromSlash(a.Rel+memberDirSuffix), "windows.npy")
		stop := watchdog(t, m, 5*time.Minute, "reading windows through the view")
		defer stop()
		probe(t, proxy, p, hdr, w, []int{2, 5, 9}, memberWindowBytes, "the window", 2*memberWindowBytes+2*memberViewBlock+1<<20)
	})
}

// memberLogLine returns the first ERROR line of log that names name and
// gives one of reasons (case-insensitive).
func memberLogLine(log, name string, reasons []string) (string, bool) {
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "level=ERROR") || !strings.Contains(line, name) {
			continue
		}
		lower := strings.ToLower(line)
		if slices.ContainsFunc(reasons, func(r string) bool { return strings.Contains(lower, r) }) {
			return line, true
		}
	}
	return "", false
}

// TestNPZMemberCorrupt mounts copies of a numpy archive damaged in its
// zip directory or in windows.npy's deflate data, with the intact copy
// beside them.
//
//   - A bad end-of-central-directory or central directory signature, or
//     3,000 bytes cut off: NAME.npz.d is listed and is a directory, but
//     readdir of it and lookups in it fail with EIO, again on a second try.
//   - One byte of windows.npy's deflate data inverted, past its first 4 MiB
//     of output or about 100 KB in: the zip directory is fine; a read of
//     the last window (which indexes the member, checking its CRC-32 and
//     size) fails with EIO; then no read returns bytes that are not the
//     member's, including reads of the first 4 MiB through a new open; a
//     whole sequential read ends in EIO. Reads of the first 4 MiB before
//     the member is indexed are not checked (SEMANTICS.md): what they
//     return is only noted. labels.npy, intact, reads right.
//
// Every failure is logged at ERROR with the archive's or member's path and
// the reason; nothing hangs (a watchdog dumps the daemon's goroutines);
// the daemon stays up; every .npz reads back byte for byte as uploaded;
// the intact copy's members read right afterwards.
func TestNPZMemberCorrupt(t *testing.T) {
	d := memberFixture(t)
	dropPageCache(t)
	m := mountMembers(t, d, env.server(t).Endpoint, memberCorruptPrefix, nil, "--npz-members", "--npz-checkpoint-span", "64KiB")
	mp := m.Mountpoint
	stop := watchdog(t, m, 3*time.Minute, "TestNPZMemberCorrupt")
	defer stop()
	src := d.CorruptSrc
	dirReasons := []string{"malformed", "central directory", "end of central", "signature", "truncated", "zip", "corrupt", "format"}
	dataReasons := []string{"checksum", "crc", "corrupt", "invalid", "deflate", "inflate", "mismatch"}

	names, err := rawDirNames(mp)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for name := range d.Corrupt {
		want = append(want, name, name+memberDirSuffix)
	}
	sort.Strings(want)
	if !slices.Equal(names, want) {
		t.Errorf("readdir of the corrupt archives: %q, want %q", names, want)
	}

	for _, name := range []string{"eocd_sig.npz", "cd_sig.npz", "truncated.npz"} {
		t.Run(strings.TrimSuffix(name, ".npz"), func(t *testing.T) {
			dir := filepath.Join(mp, name+memberDirSuffix)
			if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
				t.Errorf("stat %s: %v, %v; want a directory (the view is beside every archive)", name+memberDirSuffix, fi, err)
			}
			for attempt := range 2 {
				if _, err := os.ReadDir(dir); !errors.Is(err, syscall.EIO) {
					t.Errorf("readdir %s (attempt %d): %v, want EIO", name+memberDirSuffix, attempt+1, errnoOf(err))
				}
				for _, mf := range src.Members {
					if _, err := os.Lstat(filepath.Join(dir, mf.Name)); !errors.Is(err, syscall.EIO) {
						t.Errorf("lstat %s/%s (attempt %d): %v, want EIO", name+memberDirSuffix, mf.Name, attempt+1, errnoOf(err))
					}
				}
				dropDentries(t)
			}
			if line, ok := memberLogLine(m.Stderr(), "/"+name, dirReasons); !ok {
				t.Errorf("no ERROR line names %s and why its zip directory is unusable (%q)", name, dirReasons)
			} else {
				t.Logf("logged: %s", line)
			}
		})
	}

	for _, name := range []string{"flip_late.npz", "flip_early.npz"} {
		t.Run(strings.TrimSuffix(name, ".npz"), func(t *testing.T) {
			dir := filepath.Join(mp, name+memberDirSuffix)
			if got, err := dirNames(dir); err != nil || !slices.Equal(got, src.Names()) {
				t.Fatalf("readdir %s: %q, %v; want %q (its zip directory is intact)", name+memberDirSuffix, got, err, src.Names())
			}
			w := src.Member("windows.npy")
			if fi, err := os.Stat(filepath.Join(dir, "windows.npy")); err != nil || fi.Size() != w.Size {
				t.Errorf("stat %s/windows.npy: %v, %v; want %d bytes", name+memberDirSuffix, fi, err, w.Size)
			}
			// preadHead reads the first 4 MiB in 64 KiB preads through a new
			// open, as a header reader would, and counts the reads that
			// returned the original bytes, failed with EIO, or returned
			// other bytes (described in wrong).
			preadHead := func() (good, eio int, wrong []string) {
				f, err := os.Open(filepath.Join(dir, "windows.npy"))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				buf := make([]byte, 64<<10)
				for off := int64(0); off < 4<<20; off += int64(len(buf)) {
					n, err := f.ReadAt(buf, off)
					want := w.Data[off : off+int64(n)]
					switch {
					case errors.Is(err, syscall.EIO):
						eio++
					case err != nil:
						t.Errorf("pread(%s/windows.npy, %d, %d): %v, want the bytes or EIO", name+memberDirSuffix, off, len(buf), errnoOf(err))
					case n != len(buf):
						t.Errorf("pread(%s/windows.npy, %d, %d): %d bytes, no error", name+memberDirSuffix, off, len(buf), n)
					case !bytes.Equal(buf[:n], want):
						wrong = append(wrong, fmt.Sprintf("pread(%s/windows.npy, %d, %d) returned bytes that differ from the member's at byte %d",
							name+memberDirSuffix, off, len(buf), off+int64(firstDiff(buf[:n], want))))
					default:
						good++
					}
				}
				return good, eio, wrong
			}

			// Before the member is indexed, SEMANTICS.md says reads in its
			// first 4 MiB are not checked against the CRC: noted, not failed.
			good, eio, wrong := preadHead()
			t.Logf("before indexing: 64 KiB preads of the first 4 MiB: %d original bytes, %d EIO, %d other bytes (byte %d of %d compressed bytes flipped)",
				good, eio, len(wrong), d.FlipAt[name], w.CompressedSize)
			for i, msg := range wrong {
				if i == 3 {
					t.Logf("note: ... %d more", len(wrong)-3)
					break
				}
				t.Logf("note: unchecked read before indexing: %s", msg)
			}

			// A read past the first 4 MiB indexes the member: the CRC or the
			// stream fails, and so does the read.
			f, err := os.Open(filepath.Join(dir, "windows.npy"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			last := w.Size - memberWindowBytes
			if msg := checkPread(f, bytes.NewReader(w.Data), w.Size, last, memberWindowBytes); !strings.Contains(msg, "errno 5") {
				t.Errorf("pread of the last window of %s/windows.npy: %q, want EIO", name+memberDirSuffix, msg)
			}

			// Now the member is known corrupt: no read returns other bytes.
			good, eio, wrong = preadHead()
			t.Logf("after indexing failed: 64 KiB preads of the first 4 MiB: %d original bytes, %d EIO, %d other bytes", good, eio, len(wrong))
			if len(wrong) > 0 {
				t.Errorf("after a read of %s/windows.npy failed its CRC check, %d of %d preads of its first 4 MiB (through a new open) still returned bytes that are not the member's, the first: %s",
					name+memberDirSuffix, len(wrong), good+eio+len(wrong), wrong[0])
			}

			// A whole sequential read fails, with only original bytes before.
			f2, err := os.Open(filepath.Join(dir, "windows.npy"))
			if err != nil {
				t.Fatal(err)
			}
			defer f2.Close()
			buf := make([]byte, oneMiB)
			var off int64
			var rerr error
			var differ []string
			for {
				n, err := f2.Read(buf)
				if n > 0 && !bytes.Equal(buf[:n], w.Data[off:off+int64(n)]) {
					differ = append(differ, fmt.Sprintf("%d..%d (first at %d)", off, off+int64(n), off+int64(firstDiff(buf[:n], w.Data[off:off+int64(n)]))))
				}
				off += int64(n)
				if err != nil || n == 0 {
					rerr = err
					break
				}
			}
			if len(differ) > 0 {
				t.Errorf("sequential read of %s/windows.npy (known corrupt) returned bytes that are not the member's at %q", name+memberDirSuffix, differ)
			}
			if !errors.Is(rerr, syscall.EIO) {
				t.Errorf("sequential read of %s/windows.npy ended at %d of %d bytes with %v, want EIO", name+memberDirSuffix, off, w.Size, errnoOf(rerr))
			}
			if line, ok := memberLogLine(m.Stderr(), name+memberDirSuffix+"/windows.npy", dataReasons); !ok {
				if line, ok = memberLogLine(m.Stderr(), "/"+name, dataReasons); !ok {
					t.Errorf("no ERROR line names %s/windows.npy and why its data is bad (%q)", name+memberDirSuffix, dataReasons)
				} else {
					t.Logf("logged: %s", line)
				}
			} else {
				t.Logf("logged: %s", line)
			}

			// The other member is intact and reads right.
			l := src.Member("labels.npy")
			if sum, n, err := hashFile(filepath.Join(dir, "labels.npy")); err != nil || sum != sha256Hex(l.Data) {
				t.Errorf("%s/labels.npy (intact): read %d of %d bytes, %v, sha256 matches %v", name+memberDirSuffix, n, l.Size, errnoOf(err), sum == sha256Hex(l.Data))
			}
		})
	}

	t.Run("archives_read_as_stored", func(t *testing.T) {
		dropPageCache(t)
		for name, b := range d.Corrupt {
			sum, n, err := hashFile(filepath.Join(mp, name))
			if err != nil || n != int64(len(b)) || sum != sha256Hex(b) {
				t.Errorf("%s: read %d of %d bytes, %v; sha256 matches the upload %v", name, n, len(b), errnoOf(err), sum == sha256Hex(b))
			}
		}
	})

	t.Run("intact_copy", func(t *testing.T) {
		dir := filepath.Join(mp, "good.npz"+memberDirSuffix)
		if got, err := dirNames(dir); err != nil || !slices.Equal(got, src.Names()) {
			t.Errorf("readdir good.npz.d: %q, %v; want %q", got, err, src.Names())
		}
		for _, mf := range src.Members {
			if sum, n, err := hashFile(filepath.Join(dir, mf.Name)); err != nil || sum != sha256Hex(mf.Data) {
				t.Errorf("good.npz.d/%s: read %d of %d bytes, %v, sha256 matches %v", mf.Name, n, mf.Size, errnoOf(err), sum == sha256Hex(mf.Data))
			}
		}
	})

	if !m.Alive() {
		code, _ := m.WaitExit(0)
		t.Errorf("the daemon died (status %d)", code)
	}
	stderr := m.Stderr()
	for _, bad := range []string{"panic", "goroutine "} {
		if strings.Contains(stderr, bad) {
			t.Errorf("the daemon's log mentions %q:\n%s", bad, lastBytes(stderr, 4000))
		}
	}
}

// TestNPZMemberReadOnly checks that every change inside a member directory
// fails with EROFS and changes nothing.
func TestNPZMemberReadOnly(t *testing.T) {
	d := memberFixture(t)
	m := mountMembers(t, d, env.server(t).Endpoint, memberDataPrefix, nil, "--npz-members")
	a := d.Archives[memberCompressedRel]
	dir := filepath.Join(m.Mountpoint, filepath.FromSlash(a.Rel+memberDirSuffix))
	member := filepath.Join(dir, "labels.npy")
	other := filepath.Join(dir, "windows.npy")
	newPath := filepath.Join(dir, "new.npy")
	if _, err := os.Stat(member); err != nil {
		t.Fatal(err)
	}
	past := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	cases := []struct {
		name string
		op   func() error
	}{
		{"create", openOp(newPath, os.O_CREATE|os.O_WRONLY|os.O_EXCL)},
		{"open O_WRONLY", openOp(member, os.O_WRONLY)},
		{"open O_RDWR", openOp(member, os.O_RDWR)},
		{"open O_WRONLY|O_APPEND", openOp(member, os.O_WRONLY|os.O_APPEND)},
		{"open O_RDONLY|O_TRUNC", openOp(member, os.O_RDONLY|os.O_TRUNC)},
		{"truncate", func() error { return syscall.Truncate(member, 0) }},
		{"unlink", func() error { return syscall.Unlink(member) }},
		{"rename member", func() error { return syscall.Rename(member, newPath) }},
		{"rename over member", func() error { return syscall.Rename(member, other) }},
		{"rename member out", func() error { return syscall.Rename(member, filepath.Join(m.Mountpoint, "x.npy")) }},
		{"mkdir", func() error { return syscall.Mkdir(newPath, 0o755) }},
		{"rmdir member directory", func() error { return syscall.Rmdir(dir) }},
		{"rename member directory", func() error { return syscall.Rename(dir, dir+"2") }},
		{"chmod member", func() error { return syscall.Chmod(member, 0o644) }},
		{"chmod member directory", func() error { return syscall.Chmod(dir, 0o755) }},
		{"chown", func() error { return syscall.Chown(member, 1000, 1000) }},
		{"utimes", func() error { return os.Chtimes(member, past, past) }},
		{"symlink", func() error { return syscall.Symlink("labels.npy", newPath) }},
		{"link", func() error { return syscall.Link(member, newPath) }},
		{"setxattr", func() error { return syscall.Setxattr(member, "user.bgbfs", []byte("x"), 0) }},
		{"mknod fifo", func() error { return syscall.Mknod(newPath, syscall.S_IFIFO|0o644, 0) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.op(); !errors.Is(err, syscall.EROFS) {
				t.Errorf("got %v, want EROFS", errnoOf(err))
			}
		})
	}
	if names, err := dirNames(dir); err != nil || !slices.Equal(names, a.Names()) {
		t.Errorf("%s after the attempts: %q, %v; want %q", a.Rel+memberDirSuffix, names, err, a.Names())
	}
	l := a.Member("labels.npy")
	if sum, _, err := hashFile(member); err != nil || sum != sha256Hex(l.Data) {
		t.Errorf("labels.npy changed or became unreadable: %v", err)
	}
	if fi, err := os.Stat(member); err != nil || fi.Size() != l.Size || fi.Mode().Perm() != 0o444 {
		t.Errorf("stat labels.npy after the attempts: %v, %v", fi, err)
	}
}
