package integration

// The disk tier: with a local --cache-dir DIR, the bytes fetched from S3
// are kept in DIR/blocks/XX/<32 hex>, one sparse file per object version
// (SEMANTICS.md, cache/objectfile.go): the object's bytes at their own
// offsets, in 64 KiB units; at the object's size rounded up to 4 KiB a
// header (magic BGBFSOB1, format 1, unit size, object size, the 16-byte
// ID that names the file, a CRC-32C of those); a page on, 8 bytes per
// unit: the CRC-32C of the ID, the unit's index and its bytes, and the
// mark "UNIT" (zero for a unit not held). Seen from outside: bytes
// through the mount compared with the source; GETs counted at a
// CountingProxy and mapped to the blocks they cover; the files in DIR
// parsed by that format, each unit checked and matched by content to the
// source; the daemon's log and metrics.

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"maps"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// The object file format and the log lines of the disk tier
// (cache/objectfile.go, cache/dir.go, SEMANTICS.md).
const (
	diskObjectMagic = "BGBFSOB1"
	diskUnit        = 64 << 10
	diskPage        = 4096
	diskHeaderLen   = 8 + 4 + 4 + 8 + 16 + 4
	diskRecordMark  = 0x54494e55
	diskDamagedMsg  = `msg="cache dir: damaged data dropped; fetching it again"`
	diskWritesOff   = `msg="cache dir writes paused"`
	diskWritesOn    = `msg="cache dir writes resumed"`
	diskReadOnly    = `msg="cache dir read only`
	diskReadsOff    = `msg="cache dir reads paused"`
	// diskMemCache is the --cache-size of these tests: the objects each
	// test reads add up to more, so memory cannot answer a second read.
	diskMemCache = 8 * oneMiB
)

var diskCastagnoli = crc32.MakeTable(crc32.Castagnoli)

// diskSource is the objects a test reads, by key, and their block size.
type diskSource struct {
	Bucket string
	Block  int64
	Objs   map[string][]byte
}

// Keys returns the keys, sorted.
func (s *diskSource) Keys() []string {
	keys := make([]string, 0, len(s.Objs))
	for k := range s.Objs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Total is the bytes of all objects.
func (s *diskSource) Total() int64 {
	var n int64
	for _, b := range s.Objs {
		n += int64(len(b))
	}
	return n
}

// blockRef is block Idx of the object Key.
type blockRef struct {
	Key string
	Idx int64
}

func (b blockRef) String() string { return fmt.Sprintf("%s#%d", b.Key, b.Idx) }

// Blocks lists every block of the objects.
func (s *diskSource) Blocks() []blockRef {
	var out []blockRef
	for _, k := range s.Keys() {
		for i := int64(0); i*s.Block < int64(len(s.Objs[k])); i++ {
			out = append(out, blockRef{k, i})
		}
	}
	return out
}

// block returns the bytes of block idx of key, nil past its end.
func (s *diskSource) block(key string, idx int64) []byte {
	b := s.Objs[key]
	start := idx * s.Block
	if start < 0 || start >= int64(len(b)) {
		return nil
	}
	return b[start:min(int64(len(b)), start+s.Block)]
}

// newDiskSource puts objects of the given sizes (random bytes named by
// key and seed) into a fresh bucket.
func newDiskSource(t testing.TB, seed string, sizes map[string]int) *diskSource {
	t.Helper()
	srv := env.server(t)
	s := &diskSource{Bucket: newBucket(t, srv, "bgbfs-disk"), Block: oneMiB, Objs: map[string][]byte{}}
	var objs []testbed.Object
	for k, n := range sizes {
		s.Objs[k] = seededBytes(seed+"/"+k, n)
		objs = append(objs, testbed.Object{Key: k, Data: s.Objs[k]})
	}
	if err := srv.Admin().PutMany(t.Context(), s.Bucket, objs, 4); err != nil {
		t.Fatal(err)
	}
	return s
}

// mountDisk mounts the source's bucket (prefix "" or a folder) through
// endpoint with --cache-dir dir, a small memory cache and metrics on a
// free address, which it returns.
func mountDisk(t testing.TB, bin string, s *diskSource, prefix, endpoint, dir string, args ...string) (*testbed.Mounted, string) {
	t.Helper()
	addr := freeAddr(t)
	m := mount(t, mountSpec{
		Source:   "s3://" + s.Bucket + "/" + prefix,
		Endpoint: endpoint,
		Creds:    rootCreds(env.server(t)),
		Bin:      bin,
		Args: append([]string{"--metadata-ttl", "10m", "--cache-dir", dir, "--cache-size", strconv.Itoa(diskMemCache),
			"--metrics-addr", addr}, args...),
		Timeout: time.Minute, // a race build starts slower
	})
	return m, addr
}

// diskRanges are the preads readAll makes of an object of size bytes
// beside the whole read: inside a block, across a block boundary, across
// the end.
func diskRanges(size int64) [][2]int64 {
	return [][2]int64{{size / 3, 100_000}, {max(0, min(size-1, oneMiB-10)), 20}, {max(0, size-5000), 10_000}}
}

// readAll reads every object of s under mp (keys less prefix) whole and
// in a few ranges, and fails the test on any byte that is not the
// source's.
func (s *diskSource) readAll(t testing.TB, mp, prefix string) {
	t.Helper()
	for _, k := range s.Keys() {
		want := s.Objs[k]
		p := filepath.Join(mp, filepath.FromSlash(strings.TrimPrefix(k, prefix)))
		sum, n, err := readSequential(p, oneMiB)
		switch {
		case err != nil:
			t.Errorf("%s: %v after %d bytes", k, errnoOf(err), n)
		case n != int64(len(want)) || sum != sha256Hex(want):
			t.Errorf("%s: read %d bytes, sha256 %s; want %d bytes, %s", k, n, sum, len(want), sha256Hex(want))
		}
		f, err := os.Open(p)
		if err != nil {
			t.Errorf("open %s: %v", k, errnoOf(err))
			continue
		}
		for _, r := range diskRanges(int64(len(want))) {
			if msg := checkPread(f, bytes.NewReader(want), int64(len(want)), r[0], int(r[1])); msg != "" {
				t.Errorf("pread(%s, off=%d, len=%d): %s", k, r[0], r[1], msg)
			}
		}
		f.Close()
	}
}

// memberFiles are member files of archives, by path under a mount with
// --npz-members, and their content.
type memberFiles map[string][]byte

// archiveMembers returns the members of the fixture's archives rels (paths
// below memberDataPrefix) as seen under a mount of the prefix where the
// archives are at dir+rel.
func archiveMembers(d *memberData, dir string, rels ...string) memberFiles {
	out := memberFiles{}
	for _, rel := range rels {
		for _, mf := range d.Archives[rel].Members {
			out[dir+rel+memberDirSuffix+"/"+mf.Name] = mf.Data
		}
	}
	return out
}

// readAll reads every member file under mp whole and in a few ranges,
// and fails the test on any byte that is not the member's.
func (ms memberFiles) readAll(t testing.TB, mp string) {
	t.Helper()
	for _, p := range slices.Sorted(maps.Keys(ms)) {
		want := ms[p]
		sum, n, err := readSequential(filepath.Join(mp, filepath.FromSlash(p)), oneMiB)
		if err != nil || n != int64(len(want)) || sum != sha256Hex(want) {
			t.Errorf("%s: %d bytes, sha256 %s, err %v; want %d bytes, %s", p, n, sum, errnoOf(err), len(want), sha256Hex(want))
		}
		f, err := os.Open(filepath.Join(mp, filepath.FromSlash(p)))
		if err != nil {
			t.Errorf("open %s: %v", p, errnoOf(err))
			continue
		}
		for _, r := range diskRanges(int64(len(want))) {
			if msg := checkPread(f, bytes.NewReader(want), int64(len(want)), r[0], int(r[1])); msg != "" {
				t.Errorf("pread(%s, off=%d, len=%d): %s", p, r[0], r[1], msg)
			}
		}
		f.Close()
	}
}

// objectFile is a file under DIR/blocks.
type objectFile struct {
	Rel  string // path under DIR, slash-separated
	ID   string // the 32 hex digits of the name (and of the header)
	Size int64  // of the object, from the header
	Disk int64  // disk space taken (allocated blocks)
	// Problem says why the file is not a valid object file; "" if it is.
	Problem string
	// Units are the units whose record holds and whose bytes match it;
	// BadUnits those whose record does not match (never returned).
	Units, BadUnits []int64
	// Key is the object of the source whose bytes the units are, if
	// valid and one is.
	Key string
}

// diskScan is what DIR holds.
type diskScan struct {
	Files []objectFile
	// Valid maps the blocks (of the source's block size) that a valid
	// file holds every unit of to that file.
	Valid map[blockRef]objectFile
	// Temp lists the temporary (.tmp*) files, Other any other file of
	// bgbfs's areas (an index file, say), Foreign the files outside
	// them (which bgbfs must leave alone).
	Temp, Other, Foreign []string
	// Bytes is the disk space of the files in bgbfs's areas (blocks/ and
	// indexes/), which --cache-dir-size bounds; ForeignBytes of the rest.
	Bytes, ForeignBytes int64
}

// allocated is the disk space a file takes.
func allocated(fi fs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// scanDir walks dir and checks every object file: its name, length and
// header, and each unit against its record; then matches the units to
// the objects of the source by content. A mount may be running: a file
// gone between the listing and its reading is passed over, and a unit
// written meanwhile may not be counted.
func scanDir(t testing.TB, dir string, s *diskSource) *diskScan {
	t.Helper()
	out := &diskScan{Valid: map[blockRef]objectFile{}}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !e.Type().IsRegular() {
			return nil
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if !strings.HasPrefix(rel, "blocks/") && !strings.HasPrefix(rel, "indexes/") {
			out.Foreign = append(out.Foreign, rel)
			out.ForeignBytes += allocated(fi)
			return nil
		}
		out.Bytes += allocated(fi)
		if strings.HasPrefix(e.Name(), ".tmp") {
			out.Temp = append(out.Temp, rel)
			return nil
		}
		if !strings.HasPrefix(rel, "blocks/") {
			out.Other = append(out.Other, rel)
			return nil
		}
		data, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			out.Bytes -= allocated(fi)
			return nil
		}
		if err != nil {
			return err
		}
		f := objectFile{Rel: rel, Disk: allocated(fi)}
		f.Problem = parseObjectFile(rel, data, &f)
		if f.Problem == "" && len(f.Units) > 0 {
			f.Key = s.holder(f.Size, data, f.Units)
			if f.Key != "" {
				for _, b := range s.Blocks() {
					if b.Key == f.Key && slices.IsSorted(f.Units) && s.blockHeld(b, f.Units) {
						out.Valid[b] = f
					}
				}
			}
		}
		out.Files = append(out.Files, f)
		return nil
	})
	if err != nil {
		t.Fatalf("walking the cache dir %s: %v", dir, err)
	}
	return out
}

// parseObjectFile checks an object file's name, length and header, and
// fills in f's ID, Size, Units and BadUnits; it returns what is wrong
// with the file as a whole, or "".
func parseObjectFile(rel string, data []byte, f *objectFile) string {
	parts := strings.Split(rel, "/")
	if len(parts) != 3 {
		return "not blocks/XX/NAME"
	}
	id, err := hex.DecodeString(parts[2])
	if err != nil || len(id) != 16 || parts[1] != parts[2][:2] {
		return "name not XX/<32 hex> with XX its first two digits"
	}
	f.ID = parts[2]
	// The header sits at the object's size rounded up to a page, which
	// the length says: tail + a page + 8 bytes a unit.
	var tail int64 = -1
	for t := int64(0); t+diskPage <= int64(len(data)); t += diskPage {
		size := int64(binary.LittleEndian.Uint64(data[t+16:]))
		if string(data[t:t+8]) == diskObjectMagic && (size+diskPage-1)/diskPage*diskPage == t {
			tail = t
			break
		}
	}
	if tail < 0 {
		return "no header where the object's size puts it"
	}
	h := data[tail : tail+diskHeaderLen]
	f.Size = int64(binary.LittleEndian.Uint64(h[16:]))
	units := (f.Size + diskUnit - 1) / diskUnit
	records := tail + diskPage
	switch {
	case binary.LittleEndian.Uint32(h[8:]) != 1:
		return fmt.Sprintf("format %d", binary.LittleEndian.Uint32(h[8:]))
	case binary.LittleEndian.Uint32(h[12:]) != diskUnit:
		return fmt.Sprintf("unit size %d", binary.LittleEndian.Uint32(h[12:]))
	case !bytes.Equal(h[24:40], id):
		return "header ID is not the name's"
	case crc32.Checksum(h[:40], diskCastagnoli) != binary.LittleEndian.Uint32(h[40:]):
		return "header CRC-32C mismatch"
	case int64(len(data)) != records+units*8:
		return fmt.Sprintf("%d bytes long, want %d for %d units", len(data), records+units*8, units)
	}
	for k := range units {
		rec := data[records+k*8:]
		if binary.LittleEndian.Uint64(rec) == 0 {
			continue
		}
		unit := data[k*diskUnit : min(f.Size, (k+1)*diskUnit)]
		var pre [24]byte
		copy(pre[:], id)
		binary.LittleEndian.PutUint64(pre[16:], uint64(k))
		sum := crc32.Update(crc32.Checksum(pre[:], diskCastagnoli), diskCastagnoli, unit)
		if binary.LittleEndian.Uint32(rec[4:]) == diskRecordMark && binary.LittleEndian.Uint32(rec) == sum {
			f.Units = append(f.Units, k)
		} else {
			f.BadUnits = append(f.BadUnits, k)
		}
	}
	return ""
}

// holder returns the object of the source of size bytes whose bytes are
// those of every unit listed in data, "" if none.
func (s *diskSource) holder(size int64, data []byte, units []int64) string {
	for _, k := range s.Keys() {
		b := s.Objs[k]
		if int64(len(b)) != size {
			continue
		}
		if !slices.ContainsFunc(units, func(u int64) bool {
			to := min(size, (u+1)*diskUnit)
			return !bytes.Equal(b[u*diskUnit:to], data[u*diskUnit:to])
		}) {
			return k
		}
	}
	return ""
}

// blockHeld reports whether units (sorted) cover every unit of block b.
func (s *diskSource) blockHeld(b blockRef, units []int64) bool {
	size := int64(len(s.Objs[b.Key]))
	for u := b.Idx * s.Block / diskUnit; u*diskUnit < min(size, (b.Idx+1)*s.Block); u++ {
		if _, ok := slices.BinarySearch(units, u); !ok {
			return false
		}
	}
	return true
}

// getBlocks maps the GETs of a request log on s's bucket to the blocks
// their ranges cover (a GET without a range covers its whole object).
func getBlocks(t testing.TB, reqs []testbed.Request, s *diskSource) map[blockRef]int {
	t.Helper()
	out := map[blockRef]int{}
	for _, r := range getRequests(reqs) {
		u, err := url.ParseRequestURI(r.URI)
		if err != nil {
			t.Errorf("GET %s: %v", r.URI, err)
			continue
		}
		key, ok := strings.CutPrefix(u.Path, "/"+s.Bucket+"/")
		if !ok {
			t.Errorf("GET outside the bucket %s: %s", s.Bucket, r)
			continue
		}
		first, last, ok := httpRange(r.Range)
		if !ok {
			first, last = 0, max(0, int64(len(s.Objs[key]))-1)
		}
		for i := first / s.Block; i <= last/s.Block; i++ {
			out[blockRef{key, i}]++
		}
	}
	return out
}

// logLines returns the lines of a daemon log that contain substr.
func logLines(log, substr string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

// refs lists a set of blocks, sorted, for messages.
func refs[V any](m map[blockRef]V) string {
	var out []string
	for b := range m {
		out = append(out, b.String())
	}
	sort.Strings(out)
	if len(out) > 20 {
		out = append(out[:20], fmt.Sprintf("... %d more", len(out)-20))
	}
	return strings.Join(out, " ")
}

// unmountDisk unmounts m, failing the test if it was not clean: the
// daemon waits for its background writes before it exits, so DIR is
// settled after.
func unmountDisk(t testing.TB, m *testbed.Mounted) {
	t.Helper()
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
}

// checkRestartGETs checks a read after a restart: no GET of a block that
// DIR held, and every block that DIR missed was one the first mount said
// it did not write.
func checkRestartGETs(t testing.TB, s *diskSource, held *diskScan, skipped float64, reqs []testbed.Request) {
	t.Helper()
	checkRestartGETsKeeping(t, s, held, skipped, reqs, nil)
}

// checkRestartGETsKeeping is checkRestartGETs where the blocks of decoded
// are not kept as blocks (their content is kept decoded): they may be
// missing from DIR, and no GET after the restart fetches any of them.
func checkRestartGETsKeeping(t testing.TB, s *diskSource, held *diskScan, skipped float64, reqs []testbed.Request, decoded map[blockRef]bool) {
	t.Helper()
	missing := map[blockRef]bool{}
	for _, b := range s.Blocks() {
		if _, ok := held.Valid[b]; !ok && !decoded[b] {
			missing[b] = true
		}
	}
	var refetched []string
	for b := range getBlocks(t, reqs, s) {
		if decoded[b] {
			refetched = append(refetched, b.String())
		}
	}
	if len(refetched) > 0 {
		sort.Strings(refetched)
		t.Errorf("after the restart, GETs fetched %d blocks of deflated members, whose content the dir keeps decoded: %v", len(refetched), refetched)
	}
	if float64(len(missing)) > skipped {
		t.Errorf("the cache dir misses %d of %d blocks read, but the first mount skipped the writes of only %v: %s",
			len(missing), len(s.Blocks()), skipped, refs(missing))
	}
	var onDisk []string
	for b := range getBlocks(t, reqs, s) {
		if _, ok := held.Valid[b]; ok {
			onDisk = append(onDisk, b.String())
		}
	}
	sort.Strings(onDisk)
	if len(onDisk) > 0 {
		t.Errorf("after the restart, GETs fetched %d blocks the cache dir held: %v; GETs:\n%s",
			len(onDisk), onDisk, testbed.FormatRequests(getRequests(reqs), 30))
	}
}

// TestDiskCacheKeptAcrossRestart reads files bigger in total than the
// memory cache through a mount with --cache-dir, unmounts, mounts again
// on the same dir and reads them again: no GET of a block the dir holds
// (counted at the proxy), the source's bytes, disk hits counted. Then
// the same through the .npz member view (128 KiB blocks).
func TestDiskCacheKeptAcrossRestart(t *testing.T) {
	srv := env.server(t)

	t.Run("files", func(t *testing.T) {
		s := newDiskSource(t, "restart", map[string]int{
			"a.bin": 5*oneMiB + 123, "b.bin": 7*oneMiB + 1, "sub/c.bin": 3 * oneMiB, "d.bin": 6*oneMiB + 77_777,
			"tiny.bin": 100, "empty.bin": 0,
		})
		if s.Total() <= diskMemCache {
			t.Fatalf("fixture: %d bytes fit in the %d-byte memory cache", s.Total(), diskMemCache)
		}
		dir := filepath.Join(t.TempDir(), "cache")
		proxy := newProxy(t, srv.Endpoint)
		m, addr := mountDisk(t, "", s, "", proxy.URL, dir, "--cache-dir-size", "1GiB")
		s.readAll(t, m.Mountpoint, "")
		proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
		checkDiskBytes(t, addr, dir, s)
		first := scrapeMetrics(t, addr)
		unmountDisk(t, m)
		held := scanDir(t, dir, s)
		t.Logf("first mount: %v bytes written, %v writes skipped; the dir holds %d of %d blocks (%d files, %d bytes)",
			first.Sum("bgbfs_disk_written_bytes_total"), first.Sum("bgbfs_disk_writes_skipped_total"),
			len(held.Valid), len(s.Blocks()), len(held.Files), held.Bytes)
		checkScanClean(t, held)
		if len(held.Valid) == 0 {
			t.Fatalf("the cache dir holds no block after the first mount read %d bytes", s.Total())
		}
		var heldBytes int64
		for b := range held.Valid {
			heldBytes += int64(len(s.block(b.Key, b.Idx)))
		}
		if w := first.Sum("bgbfs_disk_written_bytes_total"); w < float64(heldBytes) {
			t.Errorf("bgbfs_disk_written_bytes_total = %v, less than the %d block bytes the dir holds", w, heldBytes)
		}

		m, addr = mountDisk(t, "", s, "", proxy.URL, dir, "--cache-dir-size", "1GiB")
		c, reqs := coldRead(t, proxy, func() { s.readAll(t, m.Mountpoint, "") })
		checkDiskBytes(t, addr, dir, s)
		second := scrapeMetrics(t, addr)
		t.Logf("after the restart: %v; disk hits %v, misses %v", c, second.Sum("bgbfs_disk_hits_total"), second.Sum("bgbfs_disk_misses_total"))
		checkRestartGETs(t, s, held, first.Sum("bgbfs_disk_writes_skipped_total"), reqs)
		if h := second.Sum("bgbfs_disk_hits_total"); h < float64(len(held.Valid)) {
			t.Errorf("bgbfs_disk_hits_total = %v after reading every block again, fewer than the %d blocks the dir held", h, len(held.Valid))
		}
		if f := second.Sum("bgbfs_disk_checksum_failures_total"); f != 0 {
			t.Errorf("bgbfs_disk_checksum_failures_total = %v, want 0", f)
		}
		unmountDisk(t, m)
		if l := logLines(m.Stderr(), diskDamagedMsg); len(l) > 0 {
			t.Errorf("the second mount found damaged block files in a dir only bgbfs wrote:\n%s", strings.Join(l, "\n"))
		}
	})

	t.Run("npz members", func(t *testing.T) {
		d := memberFixture(t)
		s := &diskSource{Bucket: d.Bucket, Block: 128 << 10, Objs: map[string][]byte{}}
		for _, rel := range []string{memberCompressedRel, memberStoredRel} {
			s.Objs[memberDataPrefix+rel] = d.Archives[rel].Data
		}
		members := archiveMembers(d, "", memberCompressedRel, memberStoredRel)
		readMembers := func(mp string) { members.readAll(t, mp) }
		dir := filepath.Join(t.TempDir(), "cache")
		proxy := newProxy(t, srv.Endpoint)
		args := []string{"--npz-members", "--block-size", "128KiB", "--cache-dir-size", "1GiB"}
		m, addr := mountDisk(t, "", s, memberDataPrefix, proxy.URL, dir, args...)
		readMembers(m.Mountpoint)
		proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
		first := scrapeMetrics(t, addr)
		unmountDisk(t, m)
		held := scanDir(t, dir, s)
		t.Logf("first mount: %v index builds, %v bytes written, %v writes skipped; the dir holds %d of %d blocks, other files %v",
			first.Sum("bgbfs_npz_index_builds_total"), first.Sum("bgbfs_disk_written_bytes_total"),
			first.Sum("bgbfs_disk_writes_skipped_total"), len(held.Valid), len(s.Blocks()), held.Other)
		checkScanClean(t, held)
		if len(held.Valid) == 0 {
			t.Fatalf("the cache dir holds no block of the archives after the first mount read their members")
		}

		m, addr = mountDisk(t, "", s, memberDataPrefix, proxy.URL, dir, args...)
		c, reqs := coldRead(t, proxy, func() { readMembers(m.Mountpoint) })
		second := scrapeMetrics(t, addr)
		t.Logf("after the restart: %v; disk hits %v, misses %v; index loads %v, builds %v", c,
			second.Sum("bgbfs_disk_hits_total"), second.Sum("bgbfs_disk_misses_total"),
			second.Sum("bgbfs_npz_index_loads_total"), second.Sum("bgbfs_npz_index_builds_total"))
		checkRestartGETsKeeping(t, s, held, first.Sum("bgbfs_disk_writes_skipped_total")+first.Sum("bgbfs_npz_decoded_writes_skipped_total"), reqs, deflatedBlocks(t, s))
		if h := second.Sum("bgbfs_disk_hits_total"); h == 0 {
			t.Errorf("bgbfs_disk_hits_total = 0 after reading the members again from a dir holding %d blocks", len(held.Valid))
		}
		// Read whole in the first mount, the deflated members are
		// complete in the dir: the daemon serves them from it, or the
		// kernel reads them directly (passthrough).
		if h, p := second.Sum("bgbfs_npz_decoded_hits_total"), second.Sum("bgbfs_npz_passthrough_opens_total"); h+p == 0 {
			t.Errorf("bgbfs_npz_decoded_hits_total and bgbfs_npz_passthrough_opens_total = 0 after reading the deflated members again")
		}
		unmountDisk(t, m)
	})
}

// checkDiskBytes checks bgbfs_disk_bytes once the background writes
// have settled (no temporary file left): with no trim and no other
// process writing, it is the disk space of the files in dir (the mount
// sums what the dir held in the background, and adds what it writes, in
// whole pages), give or take a page of records or extents per object
// file.
func checkDiskBytes(t testing.TB, addr, dir string, s *diskSource) {
	t.Helper()
	var sc *diskScan
	var got float64
	if !pollUntil(10*time.Second, func() bool {
		sc = scanDir(t, dir, s)
		got = scrapeMetrics(t, addr).Sum("bgbfs_disk_bytes")
		slack := float64(diskPage * (len(sc.Files) + 1))
		return len(sc.Temp) == 0 && got >= float64(sc.Bytes)-slack && got <= float64(sc.Bytes)+slack
	}) {
		t.Errorf("bgbfs_disk_bytes = %v; the dir's %d files take %d bytes of disk (temporary: %v)", got, len(sc.Files), sc.Bytes, sc.Temp)
	}
}

// checkScanClean fails the test for object files that are not valid,
// hold units that fail their record or hold no object of the source, and
// for temporary files left behind.
func checkScanClean(t testing.TB, sc *diskScan) {
	t.Helper()
	for _, f := range sc.Files {
		switch {
		case f.Problem != "":
			t.Errorf("cache dir: %s (%d bytes of disk): %s", f.Rel, f.Disk, f.Problem)
		case len(f.BadUnits) > 0:
			t.Errorf("cache dir: %s: units %v fail their record", f.Rel, f.BadUnits)
		case len(f.Units) > 0 && f.Key == "":
			t.Errorf("cache dir: %s is a valid object file but its units are of no object of the source", f.Rel)
		}
	}
	if len(sc.Temp) > 0 {
		t.Errorf("cache dir: temporary files left behind: %v", sc.Temp)
	}
}

// TestDiskCacheObjectOverwritten fills the dir, overwrites the objects
// while nothing is mounted (same size and other sizes), and mounts again:
// reads give the new bytes only, every block of them fetched from S3,
// and the new blocks are kept under another version hash than the old.
func TestDiskCacheObjectOverwritten(t *testing.T) {
	srv := env.server(t)
	sizes := map[string]int{"same.bin": 3*oneMiB + 100, "grow.bin": 2*oneMiB + 10, "shrink.bin": 4 * oneMiB}
	s := newDiskSource(t, "old", sizes)
	dir := filepath.Join(t.TempDir(), "cache")
	proxy := newProxy(t, srv.Endpoint)
	m, _ := mountDisk(t, "", s, "", proxy.URL, dir, "--cache-dir-size", "1GiB")
	s.readAll(t, m.Mountpoint, "")
	unmountDisk(t, m)
	held := scanDir(t, dir, s)
	checkScanClean(t, held)
	for _, k := range s.Keys() {
		if !slices.ContainsFunc(s.Blocks(), func(b blockRef) bool { _, ok := held.Valid[b]; return b.Key == k && ok }) {
			t.Fatalf("the cache dir holds no block of %s after reading it: the test would prove nothing", k)
		}
	}

	// The new versions, under the same keys.
	newSizes := map[string]int{"same.bin": sizes["same.bin"], "grow.bin": 4*oneMiB + 3, "shrink.bin": oneMiB + 5}
	fresh := &diskSource{Bucket: s.Bucket, Block: s.Block, Objs: map[string][]byte{}}
	for k, n := range newSizes {
		fresh.Objs[k] = seededBytes("new/"+k, n)
		if err := srv.Admin().PutBytes(t.Context(), s.Bucket, k, fresh.Objs[k]); err != nil {
			t.Fatal(err)
		}
	}

	m, addr := mountDisk(t, "", fresh, "", proxy.URL, dir, "--cache-dir-size", "1GiB")
	c, reqs := coldRead(t, proxy, func() { fresh.readAll(t, m.Mountpoint, "") })
	met := scrapeMetrics(t, addr)
	unmountDisk(t, m)
	t.Logf("reading the new versions: %v; disk hits %v, misses %v", c, met.Sum("bgbfs_disk_hits_total"), met.Sum("bgbfs_disk_misses_total"))
	fetched := getBlocks(t, reqs, fresh)
	var notFetched []string
	for _, b := range fresh.Blocks() {
		if fetched[b] == 0 {
			notFetched = append(notFetched, b.String())
		}
	}
	if len(notFetched) > 0 {
		t.Errorf("blocks of the new versions never fetched from S3 (served from a dir that held only the old ones?): %v; GETs:\n%s",
			notFetched, testbed.FormatRequests(getRequests(reqs), 30))
	}
	if h := met.Sum("bgbfs_disk_hits_total"); h != 0 {
		t.Errorf("bgbfs_disk_hits_total = %v reading objects overwritten since the dir was filled, want 0", h)
	}

	// The dir now holds both versions, each under its own hash.
	both := &diskSource{Bucket: s.Bucket, Block: s.Block, Objs: map[string][]byte{}}
	for k := range sizes {
		both.Objs["old:"+k] = s.Objs[k]
		both.Objs[k] = fresh.Objs[k]
	}
	after := scanDir(t, dir, both)
	checkScanClean(t, after)
	groups := map[string]string{}
	for b, f := range after.Valid {
		groups[b.Key] = f.ID
	}
	for k := range sizes {
		switch {
		case groups[k] == "":
			t.Errorf("the dir holds no block of the new version of %s", k)
		case groups[k] == groups["old:"+k]:
			t.Errorf("the new and old versions of %s are kept under one hash %s", k, groups[k])
		}
	}
}

// TestDiskCacheDamagedBlock fills the dir, damages object files while
// nothing is mounted (a flipped byte in a unit, a flipped record, a unit
// overwritten by another unit's bytes, a file cut short), and reads
// everything again: the right bytes, one log line and one checksum
// failure per damage, GETs of exactly the blocks the damage took (all of
// the cut file's), and those blocks valid again after.
func TestDiskCacheDamagedBlock(t *testing.T) {
	srv := env.server(t)
	s := newDiskSource(t, "damaged", map[string]int{"x.bin": 4*oneMiB + 1000, "y.bin": 4*oneMiB + 1000, "z.bin": 4*oneMiB + 1000})
	dir := filepath.Join(t.TempDir(), "cache")
	proxy := newProxy(t, srv.Endpoint)
	m, _ := mountDisk(t, "", s, "", proxy.URL, dir, "--cache-dir-size", "1GiB")
	s.readAll(t, m.Mountpoint, "")
	unmountDisk(t, m)
	held := scanDir(t, dir, s)
	checkScanClean(t, held)
	file := map[string]objectFile{}
	for b, f := range held.Valid {
		file[b.Key] = f
	}
	for _, k := range s.Keys() {
		if len(file[k].Units) != int((len(s.Objs[k])+diskUnit-1)/diskUnit) {
			t.Fatalf("the cache dir does not hold all of %s, which the test damages", k)
		}
	}
	edit := func(key string, fn func(f *os.File, records int64)) {
		f, err := os.OpenFile(filepath.Join(dir, filepath.FromSlash(file[key].Rel)), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		size := int64(len(s.Objs[key]))
		fn(f, (size+diskPage-1)/diskPage*diskPage+diskPage)
	}
	flip := func(f *os.File, off int64) {
		b := make([]byte, 1)
		f.ReadAt(b, off)
		f.WriteAt([]byte{b[0] ^ 0x40}, off)
	}
	// x.bin block 1: a flipped byte; x.bin block 3: its first unit
	// overwritten by unit 0; y.bin block 2: a flipped record; z.bin: cut.
	edit("x.bin", func(f *os.File, _ int64) { flip(f, oneMiB+12345) })
	edit("x.bin", func(f *os.File, _ int64) { f.WriteAt(s.Objs["x.bin"][:diskUnit], 3*oneMiB) })
	edit("y.bin", func(f *os.File, records int64) { flip(f, records+(2*oneMiB/diskUnit)*8+1) })
	edit("z.bin", func(f *os.File, _ int64) { f.Truncate(300_000) })
	damages := map[string]int{"x.bin": 2, "y.bin": 1, "z.bin": 1} // log lines naming each file
	damaged := scanDir(t, dir, s)
	want := map[blockRef]bool{} // the blocks the dir cannot answer
	for _, b := range s.Blocks() {
		if _, ok := damaged.Valid[b]; !ok {
			want[b] = true
		}
	}
	if len(want) != 3+5 {
		t.Fatalf("test bed: the damage took %d blocks (%s), want 3 and the 5 of z.bin", len(want), refs(want))
	}

	m, addr := mountDisk(t, "", s, "", proxy.URL, dir, "--cache-dir-size", "1GiB")
	c, reqs := coldRead(t, proxy, func() { s.readAll(t, m.Mountpoint, "") })
	met := scrapeMetrics(t, addr)
	t.Logf("reading after the damage: %v; checksum failures %v, disk hits %v", c, met.Sum("bgbfs_disk_checksum_failures_total"), met.Sum("bgbfs_disk_hits_total"))

	fetched := getBlocks(t, reqs, s)
	if got := refs(fetched); got != refs(want) {
		t.Errorf("GETs fetched the blocks %s; want exactly those the dir could not answer: %s; GETs:\n%s",
			got, refs(want), testbed.FormatRequests(getRequests(reqs), 30))
	}
	if f := met.Sum("bgbfs_disk_checksum_failures_total"); f != 4 {
		t.Errorf("bgbfs_disk_checksum_failures_total = %v, want 4 (the damages)", f)
	}
	lines := logLines(m.Stderr(), diskDamagedMsg)
	if len(lines) != 4 {
		t.Errorf("%d log lines %s, want 4 (one per damage):\n%s", len(lines), diskDamagedMsg, strings.Join(lines, "\n"))
	}
	for k, n := range damages {
		if got := len(logLines(strings.Join(lines, "\n"), file[k].Rel)); got != n {
			t.Errorf("%d damage log lines name %s (%s), want %d", got, file[k].Rel, k, n)
		}
	}

	// The refetched blocks are written again, in the background.
	var again *diskScan
	ok := pollUntil(15*time.Second, func() bool {
		again = scanDir(t, dir, s)
		for b := range want {
			if _, ok := again.Valid[b]; !ok {
				return false
			}
		}
		return true
	})
	if !ok {
		var still []string
		for b := range want {
			if _, ok := again.Valid[b]; !ok {
				still = append(still, b.String())
			}
		}
		t.Errorf("15 s after the read, the dir still holds no valid copy of %v", still)
	}
	unmountDisk(t, m)
	checkScanClean(t, scanDir(t, dir, s))
}

// tmpfsDir mounts a tmpfs of size (mount(8)'s size=) on a fresh
// directory, unmounted at the end of the test (after the mounts the test
// makes after calling it).
func tmpfsDir(t testing.TB, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount -t tmpfs -o size=%s: %v\n%s", size, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

// TestDiskCacheFull reads more than the dir's file system holds, and
// reads through a dir on a file system remounted read-only: the mount
// serves on from S3 with one log line saying the dir is not writable.
func TestDiskCacheFull(t *testing.T) {
	srv := env.server(t)

	// A full disk. No --cache-dir-size: the dir may fill the file system
	// but for 5%, checked before each block's write; a block of 1 MiB is
	// more than 5% of the 4 MiB tmpfs, so a write finds it full (ENOSPC):
	// writes pause, with one log line, and are tried again after a
	// back-off; below 3% free, the trim removes files even in use (here
	// the dir's one object file may go whole). Reads are right
	// throughout. (TestDiskCacheWritesResumeAfterFull frees room.)
	t.Run("full", func(t *testing.T) {
		s := newDiskSource(t, "full", map[string]int{"a.bin": 4*oneMiB + 1000, "b.bin": 4*oneMiB + 1000, "c.bin": 4*oneMiB + 1000, "d.bin": 4*oneMiB + 1000})
		dir := tmpfsDir(t, "4m")
		proxy := newProxy(t, srv.Endpoint)
		m, addr := mountDisk(t, "", s, "", proxy.URL, dir)
		s.readAll(t, m.Mountpoint, "")
		proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
		held := scanDir(t, dir, s)
		t.Logf("after the first pass the dir holds %d blocks, %d bytes, temporary files %v", len(held.Valid), held.Bytes, held.Temp)

		// Again: what is not in memory or on disk comes from S3.
		dropPageCache(t)
		proxy.Reset()
		s.readAll(t, m.Mountpoint, "")
		proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
		c := proxy.Reset()
		met := scrapeMetrics(t, addr)
		var heldBytes int64
		for b := range held.Valid {
			heldBytes += int64(len(s.block(b.Key, b.Idx)))
		}
		t.Logf("second pass: %v; disk hits %v, writes skipped %v", c, met.Sum("bgbfs_disk_hits_total"), met.Sum("bgbfs_disk_writes_skipped_total"))
		if least := s.Total() - diskMemCache - heldBytes; c.GetObjectBytes < least {
			t.Errorf("the second pass fetched %d bytes from S3; with %d bytes on disk and a %d-byte memory cache, at least %d must come from S3",
				c.GetObjectBytes, heldBytes, diskMemCache, least)
		}
		if met.Sum("bgbfs_disk_writes_skipped_total") == 0 {
			t.Errorf("bgbfs_disk_writes_skipped_total = 0 with a dir that cannot hold the blocks read")
		}
		if !m.Alive() {
			t.Fatalf("bgbfs died")
		}
		unmountDisk(t, m)
		if l := logLines(m.Stderr(), diskWritesOff); len(l) > 1 {
			t.Errorf("%d log lines %s, want at most 1:\n%s", len(l), diskWritesOff, strings.Join(l, "\n"))
		}
		checkScanClean(t, scanDir(t, dir, s))
	})

	// A read-only dir filled by an earlier mount: blocks on it are read
	// from it, others from S3, and the mount says once that it cannot
	// write.
	t.Run("read-only", func(t *testing.T) {
		s := newDiskSource(t, "ro", map[string]int{"old1.bin": 2*oneMiB + 500, "old2.bin": 2*oneMiB + 500, "new1.bin": 2*oneMiB + 500, "new2.bin": 2*oneMiB + 500})
		old := &diskSource{Bucket: s.Bucket, Block: s.Block, Objs: map[string][]byte{"old1.bin": s.Objs["old1.bin"], "old2.bin": s.Objs["old2.bin"]}}
		dir := tmpfsDir(t, "8m")
		proxy := newProxy(t, srv.Endpoint)
		m, _ := mountDisk(t, "", s, "", proxy.URL, dir)
		old.readAll(t, m.Mountpoint, "")
		unmountDisk(t, m)
		held := scanDir(t, dir, s)
		checkScanClean(t, held)
		if len(held.Valid) == 0 {
			t.Fatalf("the dir holds no block after the first mount")
		}
		if out, err := exec.Command("mount", "-o", "remount,ro", dir).CombinedOutput(); err != nil {
			t.Fatalf("remount read-only: %v\n%s", err, out)
		}

		m, addr := mountDisk(t, "", s, "", proxy.URL, dir)
		c, reqs := coldRead(t, proxy, func() { s.readAll(t, m.Mountpoint, "") })
		met := scrapeMetrics(t, addr)
		t.Logf("reading through the read-only dir: %v; disk hits %v", c, met.Sum("bgbfs_disk_hits_total"))
		fetched := getBlocks(t, reqs, s)
		for _, b := range s.Blocks() {
			_, onDisk := held.Valid[b]
			switch {
			case onDisk && fetched[b] > 0:
				t.Errorf("%s was fetched from S3 although the read-only dir holds it", b)
			case !onDisk && fetched[b] == 0:
				t.Errorf("%s, not in the dir, was never fetched from S3", b)
			}
		}
		if h := met.Sum("bgbfs_disk_hits_total"); h < float64(len(held.Valid)) {
			t.Errorf("bgbfs_disk_hits_total = %v, fewer than the %d blocks the read-only dir held", h, len(held.Valid))
		}
		if !m.Alive() {
			t.Fatalf("bgbfs died")
		}
		unmountDisk(t, m)
		if l := logLines(m.Stderr(), diskReadOnly); len(l) != 1 {
			t.Errorf("%d log lines %s, want exactly 1:\n%s", len(l), diskReadOnly, strings.Join(l, "\n"))
		}
		if l := append(logLines(m.Stderr(), diskReadsOff), logLines(m.Stderr(), diskWritesOff)...); len(l) != 0 {
			t.Errorf("a read-only dir paused reads or logged failed writes:\n%s", strings.Join(l, "\n"))
		}
	})
}

// TestDiskCacheSharedByTwoMounts runs two mounts of one bucket on one
// dir, race-detector builds, with several readers each reading random
// ranges for a few seconds: every byte right, no data race, no damaged
// file; a block one mount wrote is read from disk by the other; then a
// third mount reads everything without a GET of a block the dir holds.
func TestDiskCacheSharedByTwoMounts(t *testing.T) {
	const (
		readersPerMount = 3
		loadFor         = 4 * time.Second
	)
	srv := env.server(t)
	sizes := map[string]int{}
	for i := range 6 {
		sizes[fmt.Sprintf("f%d.bin", i)] = 3*oneMiB + 1000*i
	}
	s := newDiskSource(t, "shared", sizes)
	keys := s.Keys()
	raceBin := raceBinary(t)
	dir := filepath.Join(t.TempDir(), "cache")
	// One endpoint for all: what the dir holds is of one store, named
	// by its endpoint. GETs are the second mount's while the first is
	// quiet.
	proxy := newProxy(t, srv.Endpoint)
	args := []string{"--cache-dir-size", "1GiB"}
	m1, addr1 := mountDisk(t, raceBin, s, "", proxy.URL, dir, args...)
	m2, addr2 := mountDisk(t, raceBin, s, "", proxy.URL, dir, args...)

	// A block the first mount wrote is read from disk by the second.
	one := &diskSource{Bucket: s.Bucket, Block: s.Block, Objs: map[string][]byte{keys[0]: s.Objs[keys[0]]}}
	one.readAll(t, m1.Mountpoint, "")
	var held *diskScan
	if !pollUntil(15*time.Second, func() bool { held = scanDir(t, dir, one); return len(held.Valid) == len(one.Blocks()) }) {
		t.Fatalf("15 s after the first mount read %s, the dir holds %d of its %d blocks", keys[0], len(held.Valid), len(one.Blocks()))
	}
	proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
	proxy.Reset()
	one.readAll(t, m2.Mountpoint, "")
	proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
	if c, reqs := proxy.Take(); c.GetObject != 0 {
		t.Errorf("the second mount fetched %s from S3 although the first had written all its blocks to the shared dir: %v\n%s",
			keys[0], c, testbed.FormatRequests(getRequests(reqs), 30))
	}

	// The load: random ranges from every file, on both mounts at once,
	// with the page cache dropped now and then so that reads reach bgbfs.
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	var reads, wrong atomic.Int64
	var mu sync.Mutex
	var failures []string
	deadline := time.Now().Add(loadFor)
	var wg sync.WaitGroup
	for mi, mp := range []string{m1.Mountpoint, m2.Mountpoint} {
		for r := range readersPerMount {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(seed, uint64(mi*100+r)))
				for time.Now().Before(deadline) {
					k := keys[rng.IntN(len(keys))]
					data := s.Objs[k]
					n := 1 + rng.IntN(2*oneMiB)
					off := rng.Int64N(int64(len(data)))
					f, err := os.Open(filepath.Join(mp, k))
					msg := ""
					if err != nil {
						msg = errnoOf(err)
					} else {
						msg = checkPread(f, bytes.NewReader(data), int64(len(data)), off, n)
						f.Close()
					}
					reads.Add(1)
					if msg != "" {
						wrong.Add(1)
						mu.Lock()
						if len(failures) < 20 {
							failures = append(failures, fmt.Sprintf("mount %d: pread(%s, off=%d, len=%d): %s", mi+1, k, off, n, msg))
						}
						mu.Unlock()
					}
				}
			}()
		}
	}
	stopDrops := make(chan struct{})
	dropped := make(chan struct{})
	go func() {
		defer close(dropped)
		for {
			select {
			case <-stopDrops:
				return
			case <-time.After(time.Second):
				_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("1\n"), 0)
			}
		}
	}()
	wg.Wait()
	close(stopDrops)
	<-dropped
	t.Logf("%d random reads on two mounts in %v, %d wrong", reads.Load(), loadFor, wrong.Load())
	for _, f := range failures {
		t.Error(f)
	}

	// Every block read at least once by the first mount, so that each was
	// fetched (and written) by one of the two.
	s.readAll(t, m1.Mountpoint, "")
	proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
	met1, met2 := scrapeMetrics(t, addr1), scrapeMetrics(t, addr2)
	for i, met := range []metricsSnapshot{met1, met2} {
		t.Logf("mount %d: disk hits %v, misses %v, written %v bytes, skipped %v", i+1, met.Sum("bgbfs_disk_hits_total"),
			met.Sum("bgbfs_disk_misses_total"), met.Sum("bgbfs_disk_written_bytes_total"), met.Sum("bgbfs_disk_writes_skipped_total"))
	}
	skipped := met1.Sum("bgbfs_disk_writes_skipped_total") + met2.Sum("bgbfs_disk_writes_skipped_total")
	unmountDisk(t, m1)
	unmountDisk(t, m2)
	for i, m := range []*testbed.Mounted{m1, m2} {
		log := m.Stderr()
		if n := strings.Count(log, "WARNING: DATA RACE"); n > 0 {
			at := strings.Index(log, "WARNING: DATA RACE")
			t.Errorf("mount %d: the race detector reported %d data races; the first:\n%s", i+1, n, log[at:min(len(log), at+6000)])
		}
		for _, bad := range []string{diskDamagedMsg, diskWritesOff, diskReadsOff, diskReadOnly} {
			if l := logLines(log, bad); len(l) > 0 {
				t.Errorf("mount %d logged:\n%s", i+1, strings.Join(l, "\n"))
			}
		}
	}
	held = scanDir(t, dir, s)
	checkScanClean(t, held)
	checkModes(t, dir, 0o755, 0o644)
	t.Logf("the shared dir holds %d of %d blocks; the two mounts skipped %v writes", len(held.Valid), len(s.Blocks()), skipped)

	m3, _ := mountDisk(t, "", s, "", proxy.URL, dir, args...)
	c, reqs := coldRead(t, proxy, func() { s.readAll(t, m3.Mountpoint, "") })
	t.Logf("third mount: %v", c)
	checkRestartGETs(t, s, held, skipped, reqs)
	if skipped == 0 && c.GetObject != 0 {
		t.Errorf("the third mount made %d GETs although the two mounts wrote every block: %v", c.GetObject, c)
	}
	unmountDisk(t, m3)
}

// TestDiskCacheBound reads 20 MiB through a mount with --cache-dir-size
// 4MiB: the dir settles within its bound (plus the blocks written while
// the last trim walked it); with every block in it in use, it keeps what
// it holds (blocks of the file read first) and takes no more (the last
// file's blocks are skipped, counted); every byte is right, and the
// user's own files in the dir (older than every block) are left alone.
func TestDiskCacheBound(t *testing.T) {
	const (
		bound = 4 * oneMiB
		// slack is what the dir may hold beyond its bound once reads
		// settle: blocks stored while the trim that ran last walked the
		// dir, which it did not count.
		slack = int64(4 * (oneMiB + 2*diskPage))
	)
	srv := env.server(t)
	s := newDiskSource(t, "bound", map[string]int{"1.bin": 5*oneMiB + 7, "2.bin": 5*oneMiB + 7, "3.bin": 5*oneMiB + 7, "4.bin": 5*oneMiB + 7})
	dir := filepath.Join(t.TempDir(), "cache")
	// Files of the user's beside bgbfs's: neither trimmed nor counted.
	foreign := map[string][]byte{"notes.txt": []byte("mine\n"), "work/big.bin": seededBytes("foreign", 3*oneMiB)}
	for rel, b := range foreign {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-24 * time.Hour) // older than any block
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	proxy := newProxy(t, srv.Endpoint)
	m, addr := mountDisk(t, "", s, "", proxy.URL, dir, "--cache-dir-size", strconv.Itoa(bound))
	for _, k := range s.Keys() { // in order: 1.bin is the least recently used
		one := &diskSource{Bucket: s.Bucket, Block: s.Block, Objs: map[string][]byte{k: s.Objs[k]}}
		one.readAll(t, m.Mountpoint, "")
	}
	proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
	var sc *diskScan
	if !pollUntil(15*time.Second, func() bool { sc = scanDir(t, dir, s); return sc.Bytes <= bound+slack }) {
		t.Errorf("the dir holds %d bytes 15 s after the reads, over its bound %d plus %d", sc.Bytes, bound, slack)
	}
	met := scrapeMetrics(t, addr)
	du, _ := exec.Command("du", "-sB1", dir).Output()
	t.Logf("after reading %d bytes: the dir's %d object files take %d bytes of disk, and the user's %d (du -sB1: %s); bgbfs_disk_bytes %v, evictions %v",
		s.Total(), sc.Bytes, len(sc.Files), sc.ForeignBytes, strings.Fields(string(du) + " ?")[0], met.Sum("bgbfs_disk_bytes"), met.Sum("bgbfs_disk_evictions_total"))
	if met.Sum("bgbfs_disk_writes_skipped_total") == 0 {
		t.Errorf("bgbfs_disk_writes_skipped_total = 0 after reading %d bytes into a dir bounded at %d", s.Total(), bound)
	}
	// Whole blocks only: a file's 7-byte last block still fits.
	held := map[string]int{}
	for b := range sc.Valid {
		if b.Idx < 5 {
			held[b.Key]++
		}
	}
	if held["1.bin"] == 0 || held["4.bin"] != 0 {
		t.Errorf("the dir holds whole blocks of %v; want some of 1.bin (read first, in use: kept) and none of 4.bin (read once the dir was full)", held)
	}
	unmountDisk(t, m)
	checkScanClean(t, scanDir(t, dir, s))
	for rel, want := range foreign {
		if got, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel))); err != nil || !bytes.Equal(got, want) {
			t.Errorf("the user's file %s in the cache dir: %v, or changed: bgbfs trims only its own files", rel, err)
		}
	}
}

// coldRead drops the page cache, lets the proxy settle, runs read, and
// returns what the proxy saw during it.
func coldRead(t testing.TB, proxy *testbed.CountingProxy, read func()) (testbed.Counts, []testbed.Request) {
	t.Helper()
	dropPageCache(t)
	proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
	proxy.Reset()
	read()
	proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
	return proxy.Take()
}

// deflatedBlocks returns the blocks of the archives of s that hold only
// a deflated member's local header and compressed bytes (as archive/zip
// finds them): with --npz-members and a local dir, what is read of them
// is kept decoded, not as blocks.
func deflatedBlocks(t testing.TB, s *diskSource) map[blockRef]bool {
	t.Helper()
	out := map[blockRef]bool{}
	for key, data := range s.Objs {
		z, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		for _, f := range z.File {
			if f.Method != zip.Deflate {
				continue
			}
			dataOff, err := f.DataOffset()
			if err != nil {
				t.Fatalf("%s: %s: %v", key, f.Name, err)
			}
			from, to := localHeaderOffset(t, data, f.Name, dataOff), dataOff+int64(f.CompressedSize64)
			for i := (from + s.Block - 1) / s.Block; (i+1)*s.Block <= to; i++ {
				out[blockRef{key, i}] = true
			}
		}
	}
	return out
}

// localHeaderOffset returns where the local header of member name,
// whose data starts at dataOff, starts in the zip archive data.
func localHeaderOffset(t testing.TB, data []byte, name string, dataOff int64) int64 {
	t.Helper()
	const fixed = 30 // signature to extra field length
	for h := dataOff - fixed - int64(len(name)); h >= 0 && h >= dataOff-fixed-int64(len(name))-0xffff; h-- {
		b := data[h:]
		if binary.LittleEndian.Uint32(b) != 0x04034b50 {
			continue
		}
		n, e := int64(binary.LittleEndian.Uint16(b[26:])), int64(binary.LittleEndian.Uint16(b[28:]))
		if h+fixed+n+e == dataOff && string(b[fixed:fixed+n]) == name {
			return h
		}
	}
	t.Fatalf("no local header of %s before offset %d", name, dataOff)
	return 0
}
