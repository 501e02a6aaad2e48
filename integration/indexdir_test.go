package integration

// Member indexes kept in --cache-dir: a mount with
// --npz-members --cache-dir DIR saves the index of every compressed
// member it builds and loads it after a restart instead of inflating the
// member whole again. Checked through real mounts of archives numpy
// wrote: GETs counted at a CountingProxy, builds, loads, saves and
// ignored files counted by the daemon's metrics, index files read back
// from DIR (format: magic, version, body, CRC-32C), and every byte read
// compared with the member as archive/zip inflates it locally.

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

const (
	idxBucket = "bgbfs-indexdir"
	// idxTrainPrefix holds idxArchives good archives; idxBadPrefix holds
	// copies of three of them and one whose windows.npy deflate data is
	// damaged.
	idxTrainPrefix = "train/"
	idxBadPrefix   = "bad/"
	idxArchives    = 24
	// idxWindows per archive: a windows.npy of 7 MB (6.2 MB deflated), so
	// that a window's worth of GETs is far below the member's.
	idxWindows = 6
	// idxLabelRow is one row of labels.npy (15360 float32).
	idxLabelRow = 15360 * 4
	// The index file format (fs/npzview/indexfiles.go, SEMANTICS.md).
	idxMagic   = "BGBFSNX\n"
	idxVersion = 1
	// How long a daemon gets to write the indexes it built.
	idxSaveWait = 20 * time.Second
	// The log lines of the feature, as msg values.
	idxIgnoredMsg = "npz index file ignored"
)

// idxNotWritable matches the one line a full dir ("cache dir writes
// paused", and tried again later) or a read-only one ("cache dir read
// only") gets.
var idxNotWritable = regexp.MustCompile(`msg="cache dir (writes paused|read only)`)

// The daemon's metrics of member indexes.
const (
	metricIdxBuilds  = "bgbfs_npz_index_builds_total"
	metricIdxLoads   = "bgbfs_npz_index_loads_total"
	metricIdxIgnored = "bgbfs_npz_index_files_ignored_total"
	metricIdxSaves   = "bgbfs_npz_index_saves_total"
)

// idxArchive is one numpy archive of the index-dir bucket.
type idxArchive struct {
	Name    string // file name, the same under every prefix
	Data    []byte // as numpy wrote it
	Windows *memberFile
	Labels  *memberFile
	// WindowsHdr and LabelsHdr are where the arrays' rows start in the
	// members (after the .npy header).
	WindowsHdr, LabelsHdr int64
}

// Member returns the windows.npy or labels.npy member, its row size and
// where its rows start.
func (a *idxArchive) Member(name string) (m *memberFile, rowBytes, hdr int64) {
	if name == "labels.npy" {
		return a.Labels, idxLabelRow, a.LabelsHdr
	}
	return a.Windows, memberWindowBytes, a.WindowsHdr
}

type idxData struct {
	Bucket   string
	Archives []*idxArchive // under idxTrainPrefix, sorted by name
	// Bad are the archives under idxBadPrefix, sorted; BadName is the
	// damaged one (archive/zip refuses it).
	Bad     []*idxArchive
	BadName string
	// WindowsCompressed is the compressed size of all windows.npy
	// members under idxTrainPrefix; WindowCompressed is that of one
	// window, on average.
	WindowsCompressed int64
	WindowCompressed  int64
	// DeflatedMembers is the number of deflated members under
	// idxTrainPrefix (all of them: numpy's savez_compressed).
	DeflatedMembers int
	ArchiveBytes    int64 // all archives under idxTrainPrefix
}

// idxFixture returns the index-dir bucket, uploading it on first use.
func idxFixture(t testing.TB) *idxData {
	t.Helper()
	srv := env.server(t)
	return env.idx.get(t, "the index-dir bucket", func() (*idxData, error) {
		return buildIdxData(srv, filepath.Join(env.work, "indexdir-src"))
	})
}

func buildIdxData(srv *testbed.MinIO, dir string) (*idxData, error) {
	if err := testbed.GenNPZ(env.repo, dir, testbed.NPZSpec{Train: idxArchives, Windows: idxWindows, Seed: 1414, CompressedOnly: true, Walk: true, Jobs: 2}); err != nil {
		return nil, err
	}
	local := filepath.Join(dir, "train")
	entries, err := os.ReadDir(local)
	if err != nil {
		return nil, err
	}
	d := &idxData{Bucket: idxBucket}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".npz") {
			continue
		}
		p := filepath.Join(local, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		a, err := newIdxArchive(e.Name(), p, b)
		if err != nil {
			return nil, err
		}
		d.Archives = append(d.Archives, a)
		d.WindowsCompressed += a.Windows.CompressedSize
		d.ArchiveBytes += int64(len(b))
		for _, m := range []*memberFile{a.Windows, a.Labels} {
			if m.Deflated {
				d.DeflatedMembers++
			}
		}
	}
	slices.SortFunc(d.Archives, func(a, b *idxArchive) int { return strings.Compare(a.Name, b.Name) })
	if len(d.Archives) != idxArchives {
		return nil, fmt.Errorf("gen_npz.py wrote %d archives, want %d", len(d.Archives), idxArchives)
	}
	d.WindowCompressed = d.WindowsCompressed / (idxArchives * idxWindows)

	// bad/: three good archives and a damaged copy of a fourth.
	d.Bad = append(d.Bad, d.Archives[:3]...)
	src := d.Archives[3]
	bad, err := damageDeflated(src.Data, "windows.npy")
	if err != nil {
		return nil, err
	}
	d.BadName = src.Name
	d.Bad = append(d.Bad, &idxArchive{Name: src.Name, Data: bad})

	var objs []testbed.Object
	for _, a := range d.Archives {
		objs = append(objs, testbed.Object{Key: idxTrainPrefix + a.Name, Data: a.Data})
	}
	for _, a := range d.Bad {
		objs = append(objs, testbed.Object{Key: idxBadPrefix + a.Name, Data: a.Data})
	}
	if err := putBucket(srv, d.Bucket, objs, 4); err != nil {
		return nil, err
	}
	return d, nil
}

// newIdxArchive reads a numpy archive of windows.npy and labels.npy.
func newIdxArchive(name, local string, b []byte) (*idxArchive, error) {
	ma, err := parseMemberArchive(name, local, b)
	if err != nil {
		return nil, err
	}
	a := &idxArchive{Name: name, Data: b, Windows: ma.Member("windows.npy"), Labels: ma.Member("labels.npy")}
	if a.Windows == nil || a.Labels == nil || !a.Windows.Deflated || !a.Labels.Deflated {
		return nil, fmt.Errorf("%s: want deflated windows.npy and labels.npy, got %v", name, ma.Names())
	}
	if a.WindowsHdr, err = npyDataOffset(a.Windows.Data); err != nil {
		return nil, fmt.Errorf("%s windows.npy: %w", name, err)
	}
	if a.LabelsHdr, err = npyDataOffset(a.Labels.Data); err != nil {
		return nil, fmt.Errorf("%s labels.npy: %w", name, err)
	}
	if got := a.Windows.Size - a.WindowsHdr; got != idxWindows*memberWindowBytes {
		return nil, fmt.Errorf("%s windows.npy: %d bytes of rows, want %d", name, got, idxWindows*memberWindowBytes)
	}
	return a, nil
}

// damageDeflated returns a copy of the zip b with a few bytes in the
// middle of member's deflate data inverted, checking that archive/zip
// then refuses it.
func damageDeflated(b []byte, member string) ([]byte, error) {
	a, err := parseMemberArchive("src.npz", "", b)
	if err != nil {
		return nil, err
	}
	m := a.Member(member)
	if m == nil || !m.Deflated {
		return nil, fmt.Errorf("no deflated %s to damage", member)
	}
	dataOff, err := zipDataOffset(b, member)
	if err != nil {
		return nil, err
	}
	c := bytes.Clone(b)
	mid := dataOff + m.CompressedSize/2
	for i := range int64(8) {
		c[mid+i] ^= 0xff
	}
	if _, err := parseMemberArchive("damaged.npz", "", c); err == nil {
		return nil, errors.New("archive/zip still reads the damaged copy")
	}
	return c, nil
}

// idxMount is a mount with --npz-members --cache-dir and metrics.
type idxMount struct {
	*testbed.Mounted
	Addr string // --metrics-addr
}

// idxMountSpec says what mountIdx mounts; zero fields take defaults.
type idxMountSpec struct {
	Bucket   string // "" is the fixture's
	Prefix   string // "" is idxTrainPrefix
	Endpoint string // "" is MinIO's
	CacheDir string // a local directory or s3://BUCKET/PREFIX/
	Bin      string // "" is the binary under test
	Args     []string
}

// mountIdx mounts a prefix with --npz-members, --cache-dir and metrics.
func mountIdx(t testing.TB, s idxMountSpec) *idxMount {
	t.Helper()
	srv := env.server(t)
	if s.Bucket == "" {
		s.Bucket = idxBucket
	}
	if s.Prefix == "" {
		s.Prefix = idxTrainPrefix
	}
	if s.Endpoint == "" {
		s.Endpoint = srv.Endpoint
	}
	addr := freeAddr(t)
	m := mount(t, mountSpec{
		Source:   "s3://" + s.Bucket + "/" + s.Prefix,
		Endpoint: s.Endpoint,
		Creds:    rootCreds(srv),
		Bin:      s.Bin,
		Args:     append([]string{"--npz-members", "--cache-dir", s.CacheDir, "--metrics-addr", addr, "--metadata-ttl", "10m"}, s.Args...),
	})
	return &idxMount{Mounted: m, Addr: addr}
}

// idxCounts are the daemon's index metrics at one scrape.
type idxCounts struct{ Builds, Loads, Ignored, Saves float64 }

func (c idxCounts) String() string {
	return fmt.Sprintf("builds=%v loads=%v files_ignored=%v saves=%v", c.Builds, c.Loads, c.Ignored, c.Saves)
}

// Counts scrapes the index metrics, failing the test if one is missing
// (a missing counter would read as 0 and pass a "builds nothing" check).
func (m *idxMount) Counts(t testing.TB) idxCounts {
	t.Helper()
	snap := scrapeMetrics(t, m.Addr)
	for _, name := range []string{metricIdxBuilds, metricIdxLoads, metricIdxIgnored, metricIdxSaves} {
		if !snap.Has(name) {
			t.Fatalf("/metrics has no %s", name)
		}
	}
	return idxCounts{
		Builds:  snap.Sum(metricIdxBuilds),
		Loads:   snap.Sum(metricIdxLoads),
		Ignored: snap.Sum(metricIdxIgnored),
		Saves:   snap.Sum(metricIdxSaves),
	}
}

// WaitSaves waits until the daemon has saved at least n index files
// (saving may trail the read that built the index) and returns the
// counts then.
func (m *idxMount) WaitSaves(t testing.TB, n float64) idxCounts {
	t.Helper()
	var c idxCounts
	if !pollUntil(idxSaveWait, func() bool { c = m.Counts(t); return c.Saves >= n }) {
		t.Errorf("the daemon saved %v index files within %v, want at least %v (%v)", c.Saves, idxSaveWait, n, c)
	}
	return c
}

// Unmount unmounts now, failing the test if that was not clean.
func (m *idxMount) Unmount(t testing.TB) {
	t.Helper()
	if err := m.Mounted.Unmount(); err != nil {
		t.Fatal(err)
	}
}

// readRow reads row of member ("windows.npy" or "labels.npy") of a
// through the mount's member view (mp shows the archive's prefix) with one
// pread, and returns "" or what was wrong.
func readRow(mp string, a *idxArchive, member string, row int64) string {
	_, rowBytes, hdr := a.Member(member)
	return readMemberRange(mp, a, member, hdr+row*rowBytes, int(rowBytes))
}

// readMemberRange reads n bytes at off of a member through the view and
// compares them with archive/zip's.
func readMemberRange(mp string, a *idxArchive, member string, off int64, n int) string {
	m, _, _ := a.Member(member)
	p := filepath.Join(mp, a.Name+memberDirSuffix, member)
	f, err := os.Open(p)
	if err != nil {
		return fmt.Sprintf("%s: %v", a.Name, errnoOf(err))
	}
	defer f.Close()
	if msg := checkPread(f, bytes.NewReader(m.Data), m.Size, off, n); msg != "" {
		return fmt.Sprintf("%s/%s: %d bytes at %d: %s", a.Name, member, n, off, msg)
	}
	return ""
}

// readRows reads, with four readers, row(i) of member of every archive,
// failing the test on any wrong byte.
func readRows(t testing.TB, mp string, archives []*idxArchive, member string, row func(i int) int64) {
	t.Helper()
	parallel(len(archives), 4, func(i int) {
		if msg := readRow(mp, archives[i], member, row(i)); msg != "" {
			t.Errorf("read through the view: %s", msg)
		}
	})
}

// idxFilesUnder walks dir and returns the relative paths of the regular
// files whose names end in suffix (or, for ".tmp", start with it).
func idxFilesUnder(t testing.TB, dir, suffix string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			return nil
		}
		name := e.Name()
		if (suffix == ".tmp" && strings.HasPrefix(name, ".tmp")) || (suffix != ".tmp" && strings.HasSuffix(name, suffix)) {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", dir, err)
	}
	return out
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checkIndexFile checks an index file's frame: magic, format version 1,
// and the CRC-32C of everything before the last 4 bytes in them.
func checkIndexFile(b []byte) error {
	if len(b) < len(idxMagic)+4+4 {
		return fmt.Errorf("%d bytes, too short for an index file", len(b))
	}
	if string(b[:8]) != idxMagic {
		return fmt.Errorf("magic %q, want %q", b[:8], idxMagic)
	}
	if v := binary.LittleEndian.Uint32(b[8:12]); v != idxVersion {
		return fmt.Errorf("format version %d, want %d", v, idxVersion)
	}
	body := b[:len(b)-4]
	if got, want := binary.LittleEndian.Uint32(b[len(b)-4:]), crc32.Checksum(body, castagnoli); got != want {
		return fmt.Errorf("CRC-32C trailer %08x, the bytes before it give %08x", got, want)
	}
	return nil
}

// checkIndexDir checks that every index file under dir is well formed
// and that no temporary file is left, and returns the index files.
func checkIndexDir(t testing.TB, dir string) []string {
	t.Helper()
	files := idxFilesUnder(t, dir, ".idx")
	for _, rel := range files {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Error(err)
			continue
		}
		if err := checkIndexFile(b); err != nil {
			t.Errorf("index file %s: %v", rel, err)
		}
	}
	if tmp := idxFilesUnder(t, dir, ".tmp"); len(tmp) > 0 {
		t.Errorf("temporary files left in the cache dir after every user exited: %q", tmp)
	}
	return files
}

// logLinesWith returns the lines of log containing s.
func logLinesWith(log, s string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// logReason is the reason= field of a text log line.
var logReason = regexp.MustCompile(`\breason=("(?:[^"\\]|\\.)*"|\S+)`)

// getsOf keeps the GETs of objects in bucket.
func getsOf(reqs []testbed.Request, bucket string) []testbed.Request {
	var out []testbed.Request
	for _, r := range getRequests(reqs) {
		if strings.HasPrefix(r.URI, "/"+bucket+"/") {
			out = append(out, r)
		}
	}
	return out
}

// TestIndexDirRestartReusesIndexes reads a window of every archive
// through a mount with --cache-dir DIR (building and saving each
// windows.npy index), unmounts, and mounts again with the same DIR: the
// second mount reads other windows of every archive without building any
// index (it loads them all), without a GET anywhere near a whole member
// (each GET within twice a window's compressed size plus a checkpoint
// span of slack) and fetching in all less than half the members'
// compressed bytes; every byte read is the member's.
func TestIndexDirRestartReusesIndexes(t *testing.T) {
	d := idxFixture(t)
	srv := env.server(t)
	proxy := newProxy(t, srv.Endpoint)
	dir := t.TempDir()
	n := float64(len(d.Archives))

	first := mountIdx(t, idxMountSpec{Endpoint: proxy.URL, CacheDir: dir})
	stop := watchdog(t, first.Mounted, 3*time.Minute, "the first mount's reads")
	readRows(t, first.Mountpoint, d.Archives, "windows.npy", func(i int) int64 { return int64(i % idxWindows) })
	stop()
	c1 := first.WaitSaves(t, n)
	t.Logf("first mount: %v; %v", c1, proxy.Counts())
	if c1.Builds != n {
		t.Errorf("the first mount built %v indexes for %v archives' windows.npy: want each once (or the second mount's check proves nothing)", c1.Builds, n)
	}
	first.Unmount(t)
	files := checkIndexDir(t, dir)
	t.Logf("%d index files in DIR, e.g. %q", len(files), files[:min(2, len(files))])
	if len(files) != len(d.Archives) {
		t.Errorf("%d index files in DIR after reading windows.npy of %d archives: want one each", len(files), len(d.Archives))
	}

	proxy.WaitQuiet(200*time.Millisecond, 10*time.Second)
	proxy.Reset()
	second := mountIdx(t, idxMountSpec{Endpoint: proxy.URL, CacheDir: dir})
	stop = watchdog(t, second.Mounted, 3*time.Minute, "the second mount's reads")
	readRows(t, second.Mountpoint, d.Archives, "windows.npy", func(i int) int64 { return int64((i + 3) % idxWindows) })
	stop()
	proxy.WaitQuiet(300*time.Millisecond, 10*time.Second)
	c, reqs := proxy.Take()
	c2 := second.Counts(t)
	gets := getsOf(reqs, d.Bucket)
	bound := 2*d.WindowCompressed + 1<<20
	var largest int64
	var over []testbed.Request
	for _, g := range gets {
		a, z, ok := httpRange(g.Range)
		if !ok || z-a+1 > bound {
			over = append(over, g)
		}
		if ok {
			largest = max(largest, z-a+1)
		}
	}
	t.Logf("second mount: %v; %v: %d GETs, largest %d bytes (bound %d), %d bytes = %.2fx the windows.npy members' %d compressed bytes",
		c2, c, len(gets), largest, bound, c.GetObjectBytes, float64(c.GetObjectBytes)/float64(d.WindowsCompressed), d.WindowsCompressed)
	if c2.Builds != 0 {
		t.Errorf("the second mount built %v indexes; want 0: every one was in DIR", c2.Builds)
	}
	if c2.Loads < n {
		t.Errorf("the second mount loaded %v indexes from DIR, want at least %v (one per archive read)", c2.Loads, n)
	}
	if c2.Ignored != 0 {
		t.Errorf("the second mount ignored %v index files written by the first; log:\n%s", c2.Ignored, strings.Join(logLinesWith(second.Stderr(), idxIgnoredMsg), "\n"))
	}
	if len(over) > 0 {
		t.Errorf("%d GETs without a range or longer than %d bytes (a window read needs about %d): whole members fetched again?\n%s",
			len(over), bound, d.WindowCompressed, testbed.FormatRequests(over, 20))
	}
	if c.GetObjectBytes > d.WindowsCompressed/2 {
		t.Errorf("reading one window per archive fetched %d bytes, more than half the members' compressed %d bytes", c.GetObjectBytes, d.WindowsCompressed)
	}
	// No lower bound on the bytes fetched: blocks the first mount kept in
	// DIR (the disk tier) may answer for S3; builds == 0 is what shows
	// that the indexes came from DIR.
	t.Logf("blocks read from DIR by the second mount: %v", scrapeMetrics(t, second.Addr).Sum("bgbfs_disk_hits_total"))
}

// TestIndexDirArchiveOverwritten builds the indexes of five archives in
// DIR, overwrites one of them (same key) with another archive of the same
// size (its zip comment padded to it: only the ETag tells the two
// versions apart), and mounts again: the overwritten archive reads as its
// new bytes, through a new index built for it; the other four are loaded.
func TestIndexDirArchiveOverwritten(t *testing.T) {
	d := idxFixture(t)
	srv := env.server(t)
	ctx := context.Background()
	// old is overwritten by src padded to old's size.
	var old, src *idxArchive
	for _, a := range d.Archives {
		for _, b := range d.Archives {
			if diff := len(a.Data) - len(b.Data); old == nil && diff > 0 && diff <= 0xFFFF {
				old, src = a, b
			}
		}
	}
	if old == nil {
		t.Fatal("fixture: no two archives within 64 KiB of each other's size")
	}
	padded, err := padZipComment(src.Data, len(old.Data)-len(src.Data))
	if err != nil {
		t.Fatal(err)
	}
	now, err := newIdxArchive(old.Name, "", padded)
	if err != nil {
		t.Fatalf("the padded archive: %v", err)
	}
	if len(now.Data) != len(old.Data) || bytes.Equal(now.Windows.Data, old.Windows.Data) {
		t.Fatalf("fixture: the replacement has %d bytes (want %d) and other windows: %v", len(now.Data), len(old.Data), !bytes.Equal(now.Windows.Data, old.Windows.Data))
	}
	archives := []*idxArchive{old}
	for _, a := range d.Archives {
		if len(archives) < 5 && a != old && a != src {
			archives = append(archives, a)
		}
	}

	bucket := newBucket(t, srv, "bgbfs-idxover")
	for _, a := range archives {
		if err := srv.Admin().PutBytes(ctx, bucket, idxTrainPrefix+a.Name, a.Data); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	first := mountIdx(t, idxMountSpec{Bucket: bucket, CacheDir: dir})
	readRows(t, first.Mountpoint, archives, "windows.npy", func(int) int64 { return 2 })
	first.WaitSaves(t, float64(len(archives)))
	first.Unmount(t)
	before := checkIndexDir(t, dir)

	if err := srv.Admin().PutBytes(ctx, bucket, idxTrainPrefix+old.Name, now.Data); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s (%d bytes) overwritten with %s padded to the same size", old.Name, len(old.Data), src.Name)
	want := append([]*idxArchive{now}, archives[1:]...)

	second := mountIdx(t, idxMountSpec{Bucket: bucket, CacheDir: dir})
	for row := range int64(idxWindows) {
		readRows(t, second.Mountpoint, want, "windows.npy", func(int) int64 { return row })
	}
	c := second.WaitSaves(t, 1)
	t.Logf("second mount: %v", c)
	if c.Builds != 1 {
		t.Errorf("the second mount built %v indexes, want 1: the overwritten archive's (the others are in DIR)", c.Builds)
	}
	if c.Loads < float64(len(archives)-1) {
		t.Errorf("the second mount loaded %v indexes, want at least %d (the archives not overwritten)", c.Loads, len(archives)-1)
	}
	second.Unmount(t)
	after := checkIndexDir(t, dir)
	t.Logf("index files: %d before the overwrite, %d after", len(before), len(after))
}

// padZipComment returns a copy of the zip b (which has no comment) with a
// comment of n bytes.
func padZipComment(b []byte, n int) ([]byte, error) {
	eocd := bytes.LastIndex(b, []byte("PK\x05\x06"))
	if eocd < 0 || len(b)-eocd != 22 {
		return nil, errors.New("no end of central directory record without a comment")
	}
	c := bytes.Clone(b)
	binary.LittleEndian.PutUint16(c[eocd+20:], uint16(n))
	return append(c, bytes.Repeat([]byte{'c'}, n)...), nil
}

// TestIndexDirBadFilesRebuilt damages the index file a first mount wrote
// (a byte in its middle inverted; cut to half its length; its format
// version set to 99 with the CRC-32C trailer made right again) and mounts
// again: every read is right, the file is ignored with a log line giving
// the reason and counted, the index is built again, and the file in DIR
// is whole again afterwards (rewritten: version 1, checksum right).
func TestIndexDirBadFilesRebuilt(t *testing.T) {
	d := idxFixture(t)
	a := d.Archives[0]
	for _, tt := range []struct {
		name    string
		damage  func(b []byte) []byte
		reasons []string // one of them in the reason (lower case)
	}{
		{"corrupt byte", func(b []byte) []byte {
			c := bytes.Clone(b)
			c[len(c)/2] ^= 0x5a
			return c
		}, []string{"checksum", "crc", "corrupt"}},
		{"truncated", func(b []byte) []byte { return bytes.Clone(b[:len(b)/2]) },
			[]string{"truncat", "short", "checksum", "crc", "eof", "size", "length"}},
		{"other version", func(b []byte) []byte {
			c := bytes.Clone(b)
			binary.LittleEndian.PutUint32(c[8:12], 99)
			binary.LittleEndian.PutUint32(c[len(c)-4:], crc32.Checksum(c[:len(c)-4], castagnoli))
			return c
		}, []string{"version"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			first := mountIdx(t, idxMountSpec{CacheDir: dir})
			if msg := readRow(first.Mountpoint, a, "windows.npy", 1); msg != "" {
				t.Fatal(msg)
			}
			first.WaitSaves(t, 1)
			first.Unmount(t)
			files := checkIndexDir(t, dir)
			if len(files) == 0 {
				t.Fatal("the first mount wrote no index file")
			}
			damaged := map[string][]byte{}
			for _, rel := range files {
				p := filepath.Join(dir, rel)
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				bad := tt.damage(b)
				if err := os.WriteFile(p, bad, 0o644); err != nil {
					t.Fatal(err)
				}
				damaged[rel] = bad
			}

			second := mountIdx(t, idxMountSpec{CacheDir: dir})
			for row := range int64(idxWindows) {
				if msg := readRow(second.Mountpoint, a, "windows.npy", row); msg != "" {
					t.Errorf("after the index file was damaged: %s", msg)
				}
			}
			c := second.WaitSaves(t, 1)
			t.Logf("second mount: %v", c)
			if c.Ignored < 1 {
				t.Errorf("files_ignored_total is %v, want at least 1", c.Ignored)
			}
			if c.Builds < 1 {
				t.Errorf("builds_total is %v: the damaged index was not built again", c.Builds)
			}
			lines := logLinesWith(second.Stderr(), idxIgnoredMsg)
			t.Logf("log: %q", lines)
			if len(lines) == 0 {
				t.Errorf("no %q line in the log:\n%s", idxIgnoredMsg, lastBytes(second.Stderr(), 3000))
			}
			for _, l := range lines {
				r := logReason.FindStringSubmatch(l)
				if r == nil || strings.Trim(r[1], `"`) == "" {
					t.Errorf("log line without a reason: %s", l)
				} else if lower := strings.ToLower(r[1]); !slices.ContainsFunc(tt.reasons, func(w string) bool { return strings.Contains(lower, w) }) {
					t.Errorf("log line's reason %s names none of %q: %s", r[1], tt.reasons, l)
				}
			}
			second.Unmount(t)
			after := checkIndexDir(t, dir)
			if len(after) == 0 {
				t.Errorf("no index file left in DIR after the rebuild")
			}
			for rel, bad := range damaged {
				if b, err := os.ReadFile(filepath.Join(dir, rel)); err == nil && bytes.Equal(b, bad) {
					t.Errorf("%s is still the damaged file", rel)
				}
			}
		})
	}
}

// TestIndexDirSharedByTwoMountsAndIndexRun has two mounts and a `bgbfs
// index` run use one DIR at once, all three built with the race
// detector: readers on both mounts read random ranges of random members
// while the index run builds every index. Every byte read is right, no
// index file is ignored (none is ever seen half written), nobody reports
// a data race, and a third mount then builds nothing.
func TestIndexDirSharedByTwoMountsAndIndexRun(t *testing.T) {
	d := idxFixture(t)
	srv := env.server(t)
	bin := filepath.Join(t.TempDir(), "bgbfs-race")
	build := exec.Command("go", "build", "-race", "-o", bin, "./cmd/bgbfs")
	build.Dir = env.repo
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building bgbfs with -race: %v\n%s", err, out)
	}
	dir := t.TempDir()
	mounts := []*idxMount{
		mountIdx(t, idxMountSpec{CacheDir: dir, Bin: bin}),
		mountIdx(t, idxMountSpec{CacheDir: dir, Bin: bin}),
	}
	run := startIndexRun(t, bin, srv.Endpoint, "s3://"+d.Bucket+"/"+idxTrainPrefix, dir)

	const minReads = 12
	var reads atomic.Int64
	deadline := time.Now().Add(4 * time.Minute)
	readers := make(chan struct{})
	for r := range 4 {
		m := mounts[r%2]
		go func() {
			defer func() { readers <- struct{}{} }()
			rng := rand.New(rand.NewPCG(uint64(r), 1414))
			for k := 0; k < minReads || !run.Wait(0); k++ {
				if time.Now().After(deadline) {
					t.Errorf("reader %d: still reading at the deadline (the index run did not end?)", r)
					return
				}
				a := d.Archives[rng.IntN(len(d.Archives))]
				member := "windows.npy"
				if rng.IntN(4) == 0 {
					member = "labels.npy"
				}
				mf, _, _ := a.Member(member)
				off := rng.Int64N(mf.Size)
				if msg := readMemberRange(m.Mountpoint, a, member, off, 1+rng.IntN(256<<10)); msg != "" {
					t.Errorf("reader %d: %s", r, msg)
				}
				reads.Add(1)
			}
		}()
	}
	for range 4 {
		<-readers
	}
	if !run.Wait(time.Until(deadline)) {
		t.Fatalf("bgbfs index did not finish; stderr:\n%s", lastBytes(run.stderr.String(), 3000))
	}
	t.Logf("%d reads on two mounts while bgbfs index ran; index: exit %d, stdout %q", reads.Load(), run.ExitCode(), run.stdout.String())
	if run.ExitCode() != 0 {
		t.Errorf("bgbfs index exited %d; stderr:\n%s", run.ExitCode(), lastBytes(run.stderr.String(), 3000))
	}
	logs := map[string]string{"bgbfs index": run.stderr.String()}
	for i, m := range mounts {
		c := m.Counts(t)
		t.Logf("mount %d: %v", i+1, c)
		if c.Ignored != 0 {
			t.Errorf("mount %d ignored %v index files", i+1, c.Ignored)
		}
		m.Unmount(t)
		logs[fmt.Sprintf("mount %d", i+1)] = m.Stderr()
	}
	for who, log := range logs {
		if lines := logLinesWith(log, idxIgnoredMsg); len(lines) > 0 {
			t.Errorf("%s ignored index files written by another user of DIR:\n%s", who, strings.Join(lines, "\n"))
		}
		if strings.Contains(log, "DATA RACE") {
			t.Errorf("%s reported a data race:\n%s", who, lastBytes(log, 8000))
		}
	}
	checkIndexDir(t, dir)

	third := mountIdx(t, idxMountSpec{CacheDir: dir, Bin: bin})
	readRows(t, third.Mountpoint, d.Archives, "windows.npy", func(i int) int64 { return int64(i % idxWindows) })
	readRows(t, third.Mountpoint, d.Archives, "labels.npy", func(i int) int64 { return int64(i % idxWindows) })
	c := third.Counts(t)
	t.Logf("third mount: %v", c)
	if c.Builds != 0 {
		t.Errorf("the third mount built %v indexes; want 0: the index run had built them all", c.Builds)
	}
	third.Unmount(t)
	if strings.Contains(third.Stderr(), "DATA RACE") {
		t.Errorf("the third mount reported a data race:\n%s", lastBytes(third.Stderr(), 8000))
	}
}

// TestIndexDirFullOrReadOnly mounts with --cache-dir on a 64 KiB tmpfs
// that other data has filled to the last byte, and on a tmpfs remounted
// read-only: the mount serves every read right with its indexes in
// memory, logs exactly one line that the dir is not written (writes
// paused, or read only), saves nothing,
// and leaves the file system as it found it (no temporary file left, the
// other data untouched).
func TestIndexDirFullOrReadOnly(t *testing.T) {
	d := idxFixture(t)
	archives := d.Archives[:6]
	for _, tt := range []struct {
		name string
		// prepare gets the tmpfs's root and the cache dir in it.
		prepare func(t *testing.T, root, dir string)
	}{
		{"full", func(t *testing.T, root, dir string) {
			f, err := os.Create(filepath.Join(root, "other-data"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			buf := make([]byte, 4096)
			for {
				if _, err := f.Write(buf); err != nil {
					if !errors.Is(err, syscall.ENOSPC) {
						t.Fatalf("filling the tmpfs: %v", err)
					}
					break
				}
			}
		}},
		{"read-only", func(t *testing.T, root, dir string) {
			if out, err := exec.Command("mount", "-o", "remount,ro", root).CombinedOutput(); err != nil {
				t.Fatalf("remounting the tmpfs read-only: %v\n%s", err, out)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := tinyTmpfs(t)
			dir := filepath.Join(root, "cache")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			tt.prepare(t, root, dir)
			before := dirSnapshot(t, root)
			m := mountIdx(t, idxMountSpec{CacheDir: dir})
			for row := range int64(2) {
				readRows(t, m.Mountpoint, archives, "windows.npy", func(i int) int64 { return (int64(i) + row) % idxWindows })
			}
			// Saves may trail the reads: wait for the line (counted again
			// after the unmount, when every attempt has ended).
			pollUntil(idxSaveWait, func() bool { return idxNotWritable.MatchString(m.Stderr()) })
			c := m.Counts(t)
			t.Logf("%v", c)
			if !m.Alive() {
				t.Fatalf("the daemon died; stderr:\n%s", lastBytes(m.Stderr(), 3000))
			}
			if c.Builds != float64(len(archives)) {
				t.Errorf("built %v indexes for %d archives, want one each (kept in memory)", c.Builds, len(archives))
			}
			if c.Saves != 0 {
				t.Errorf("saves_total %v on a cache dir that takes nothing", c.Saves)
			}
			m.Unmount(t)
			if lines := idxNotWritable.FindAllString(m.Stderr(), -1); len(lines) != 1 {
				t.Errorf("%d lines %v in the log, want exactly 1:\n%s", len(lines), idxNotWritable, lastBytes(m.Stderr(), 3000))
			}
			if after := dirSnapshot(t, root); !slices.Equal(before, after) {
				t.Errorf("the tmpfs changed: before %q, after %q", before, after)
			}
		})
	}
}

// tinyTmpfs mounts a 64 KiB tmpfs on a fresh directory, unmounted at the
// end of the test (after any bgbfs mount registered later is gone).
func tinyTmpfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "bgbfs-idx-test", dir).CombinedOutput(); err != nil {
		t.Fatalf("mounting a tmpfs: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("unmounting the tmpfs %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

// dirSnapshot lists every file under dir with its size.
func dirSnapshot(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		// Directories bgbfs may make; files are what matters.
		if !e.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, fmt.Sprintf("%s %d", rel, fi.Size()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// zipDataOffset is where member's data starts in the zip b.
func zipDataOffset(b []byte, member string) (int64, error) {
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return 0, err
	}
	for _, f := range zr.File {
		if f.Name == member {
			return f.DataOffset()
		}
	}
	return 0, fmt.Errorf("no member %s", member)
}

// TestIndexDirSizeBound mounts with --cache-dir-size 16KiB (a third of
// what the indexes of every archive take) on a DIR that already holds a
// file bgbfs did not write, older than any index, and reads every
// archive: the bound is applied (index files removed, least recently used
// first; the trim runs in the background, so DIR may be above the bound
// by the last stores when the mount ends), and the file bgbfs did not
// write is never removed (a --cache-dir pointed at a directory that holds
// other data, ~/.cache say, must not lose that data).
func TestIndexDirSizeBound(t *testing.T) {
	d := idxFixture(t)
	const limit = 16 << 10
	dir := t.TempDir()
	other := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(other, bytes.Repeat([]byte("not bgbfs's\n"), 10000), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-24 * time.Hour)
	if err := os.Chtimes(other, old, old); err != nil {
		t.Fatal(err)
	}
	m := mountIdx(t, idxMountSpec{CacheDir: dir, Args: []string{"--cache-dir-size", "16KiB"}})
	readRows(t, m.Mountpoint, d.Archives, "windows.npy", func(i int) int64 { return int64(i % idxWindows) })
	c := m.WaitSaves(t, float64(len(d.Archives)))
	m.Unmount(t)
	files := checkIndexDir(t, dir)
	var total int64
	for _, rel := range files {
		if fi, err := os.Stat(filepath.Join(dir, rel)); err == nil {
			total += fi.Size()
		}
	}
	t.Logf("%v; %d index files of %d bytes in all left in DIR (bound %d)", c, len(files), total, limit)
	if _, err := os.Stat(other); err != nil {
		t.Errorf("the file bgbfs did not write is gone from DIR: %v", err)
	}
	if len(files) == len(d.Archives) {
		t.Errorf("all %d index files (%d bytes) kept: the bound %d was not applied", len(files), total, limit)
	}
}
