package integration

// Damaged archives under the member view: EIO and a logged reason, never
// a hang or bytes that are not the member's.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

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

// corruptView is TestNPZMemberCorrupt's mount of the damaged copies.
type corruptView struct {
	d   *memberData
	m   *testbed.Mounted
	mp  string
	src *memberArchive // the intact archive the copies were made of
}

// Reasons a log line may give for a damaged archive: its zip directory,
// or a member's deflate data.
var (
	corruptDirReasons  = []string{"malformed", "central directory", "end of central", "signature", "truncated", "zip", "corrupt", "format"}
	corruptDataReasons = []string{"checksum", "crc", "corrupt", "invalid", "deflate", "inflate", "mismatch"}
)

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
	stop := watchdog(t, m, 3*time.Minute, "TestNPZMemberCorrupt")
	defer stop()
	c := &corruptView{d: d, m: m, mp: m.Mountpoint, src: d.CorruptSrc}

	c.checkListing(t)
	for _, name := range []string{"eocd_sig.npz", "cd_sig.npz", "truncated.npz"} {
		t.Run(strings.TrimSuffix(name, ".npz"), func(t *testing.T) { c.checkBadDirectory(t, name) })
	}
	for _, name := range []string{"flip_late.npz", "flip_early.npz"} {
		t.Run(strings.TrimSuffix(name, ".npz"), func(t *testing.T) { c.checkFlippedMember(t, name) })
	}
	t.Run("archives_read_as_stored", c.checkArchivesAsStored)
	t.Run("intact_copy", c.checkIntactCopy)
	c.checkDaemon(t)
}

// checkListing: the mount lists every archive and its view.
func (c *corruptView) checkListing(t *testing.T) {
	names, err := rawDirNames(c.mp)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for name := range c.d.Corrupt {
		want = append(want, name, name+memberDirSuffix)
	}
	sort.Strings(want)
	if !slices.Equal(names, want) {
		t.Errorf("readdir of the corrupt archives: %q, want %q", names, want)
	}
}

// checkBadDirectory: the view of an archive whose zip directory is
// damaged is a directory whose readdir and lookups fail with EIO, twice,
// with the reason logged.
func (c *corruptView) checkBadDirectory(t *testing.T, name string) {
	dir := filepath.Join(c.mp, name+memberDirSuffix)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Errorf("stat %s: %v, %v; want a directory (the view is beside every archive)", name+memberDirSuffix, fi, err)
	}
	for attempt := range 2 {
		if _, err := os.ReadDir(dir); !errors.Is(err, syscall.EIO) {
			t.Errorf("readdir %s (attempt %d): %v, want EIO", name+memberDirSuffix, attempt+1, errnoOf(err))
		}
		for _, mf := range c.src.Members {
			if _, err := os.Lstat(filepath.Join(dir, mf.Name)); !errors.Is(err, syscall.EIO) {
				t.Errorf("lstat %s/%s (attempt %d): %v, want EIO", name+memberDirSuffix, mf.Name, attempt+1, errnoOf(err))
			}
		}
		dropDentries(t)
	}
	if line, ok := memberLogLine(c.m.Stderr(), "/"+name, corruptDirReasons); !ok {
		t.Errorf("no ERROR line names %s and why its zip directory is unusable (%q)", name, corruptDirReasons)
	} else {
		t.Logf("logged: %s", line)
	}
}

// checkFlippedMember: windows.npy of an archive with a byte of its
// deflate data flipped never reads as other bytes once a read has
// indexed it (and failed), and ends a sequential read with EIO; the
// reason is logged; labels.npy reads right.
func (c *corruptView) checkFlippedMember(t *testing.T, name string) {
	dir := filepath.Join(c.mp, name+memberDirSuffix)
	if got, err := dirNames(dir); err != nil || !slices.Equal(got, c.src.Names()) {
		t.Fatalf("readdir %s: %q, %v; want %q (its zip directory is intact)", name+memberDirSuffix, got, err, c.src.Names())
	}
	w := c.src.Member("windows.npy")
	if fi, err := os.Stat(filepath.Join(dir, "windows.npy")); err != nil || fi.Size() != w.Size {
		t.Errorf("stat %s/windows.npy: %v, %v; want %d bytes", name+memberDirSuffix, fi, err, w.Size)
	}

	// Before the member is indexed, SEMANTICS.md lets a read that ends
	// within the first 64 KiB return bytes not yet checked against the
	// CRC (noted); any read past them indexes the member, which checks
	// it, and must fail instead.
	head := preadHead(t, dir, w)
	t.Logf("before indexing: 64 KiB preads of the first 4 MiB: %d original bytes, %d EIO, %d other bytes (byte %d of %d compressed bytes flipped)",
		head.good, head.eio, len(head.wrong), c.d.FlipAt[name], w.CompressedSize)
	if head.wrongPastHead > 0 {
		t.Errorf("%d preads past the first %d bytes of %s/windows.npy returned bytes that are not the member's, before any failed: %q",
			head.wrongPastHead, memberHeadRegion, name+memberDirSuffix, head.wrong)
	}
	for _, msg := range head.wrong {
		t.Logf("note: unchecked read of the head: %s", msg)
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
	head = preadHead(t, dir, w)
	t.Logf("after indexing failed: 64 KiB preads of the first 4 MiB: %d original bytes, %d EIO, %d other bytes", head.good, head.eio, len(head.wrong))
	if len(head.wrong) > 0 {
		t.Errorf("after a read of %s/windows.npy failed its CRC check, %d of %d preads of its first 4 MiB (through a new open) still returned bytes that are not the member's, the first: %s",
			name+memberDirSuffix, len(head.wrong), head.good+head.eio+len(head.wrong), head.wrong[0])
	}

	checkCorruptSequentialRead(t, dir, w)
	c.checkDataLogged(t, name)

	// The other member is intact and reads right.
	l := c.src.Member("labels.npy")
	if sum, n, err := hashFile(filepath.Join(dir, "labels.npy")); err != nil || sum != sha256Hex(l.Data) {
		t.Errorf("%s/labels.npy (intact): read %d of %d bytes, %v, sha256 matches %v", name+memberDirSuffix, n, l.Size, errnoOf(err), sum == sha256Hex(l.Data))
	}
}

// headReads counts the 64 KiB preads of a member's first 4 MiB that
// returned the original bytes, failed with EIO, or returned other bytes
// (described in wrong; wrongPastHead of them end past memberHeadRegion).
type headReads struct {
	good, eio     int
	wrong         []string
	wrongPastHead int
}

// preadHead reads the first 4 MiB of dir/windows.npy (whose original is
// w) in 64 KiB preads through a new open, as a header reader would.
func preadHead(t *testing.T, dir string, w *memberFile) headReads {
	var out headReads
	f, err := os.Open(filepath.Join(dir, "windows.npy"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	name := filepath.Base(dir)
	buf := make([]byte, 64<<10)
	for off := int64(0); off < 4<<20; off += int64(len(buf)) {
		n, err := f.ReadAt(buf, off)
		want := w.Data[off : off+int64(n)]
		switch {
		case errors.Is(err, syscall.EIO):
			out.eio++
		case err != nil:
			t.Errorf("pread(%s/windows.npy, %d, %d): %v, want the bytes or EIO", name, off, len(buf), errnoOf(err))
		case n != len(buf):
			t.Errorf("pread(%s/windows.npy, %d, %d): %d bytes, no error", name, off, len(buf), n)
		case !bytes.Equal(buf[:n], want):
			out.wrong = append(out.wrong, fmt.Sprintf("pread(%s/windows.npy, %d, %d) returned bytes that differ from the member's at byte %d",
				name, off, len(buf), off+int64(firstDiff(buf[:n], want))))
			if off+int64(n) > memberHeadRegion {
				out.wrongPastHead++
			}
		default:
			out.good++
		}
	}
	return out
}

// checkCorruptSequentialRead: a whole sequential read of dir/windows.npy,
// known corrupt, fails with EIO, with only original bytes before.
func checkCorruptSequentialRead(t *testing.T, dir string, w *memberFile) {
	name := filepath.Base(dir)
	f, err := os.Open(filepath.Join(dir, "windows.npy"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, oneMiB)
	var off int64
	var rerr error
	var differ []string
	for {
		n, err := f.Read(buf)
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
		t.Errorf("sequential read of %s/windows.npy (known corrupt) returned bytes that are not the member's at %q", name, differ)
	}
	if !errors.Is(rerr, syscall.EIO) {
		t.Errorf("sequential read of %s/windows.npy ended at %d of %d bytes with %v, want EIO", name, off, w.Size, errnoOf(rerr))
	}
}

// checkDataLogged: an ERROR line names the member of archive name, or
// the archive, and why its data is bad.
func (c *corruptView) checkDataLogged(t *testing.T, name string) {
	if line, ok := memberLogLine(c.m.Stderr(), name+memberDirSuffix+"/windows.npy", corruptDataReasons); !ok {
		if line, ok = memberLogLine(c.m.Stderr(), "/"+name, corruptDataReasons); !ok {
			t.Errorf("no ERROR line names %s/windows.npy and why its data is bad (%q)", name+memberDirSuffix, corruptDataReasons)
		} else {
			t.Logf("logged: %s", line)
		}
	} else {
		t.Logf("logged: %s", line)
	}
}

// checkArchivesAsStored: every archive, damaged or not, reads back byte
// for byte as uploaded.
func (c *corruptView) checkArchivesAsStored(t *testing.T) {
	dropPageCache(t)
	for name, b := range c.d.Corrupt {
		sum, n, err := hashFile(filepath.Join(c.mp, name))
		if err != nil || n != int64(len(b)) || sum != sha256Hex(b) {
			t.Errorf("%s: read %d of %d bytes, %v; sha256 matches the upload %v", name, n, len(b), errnoOf(err), sum == sha256Hex(b))
		}
	}
}

// checkIntactCopy: the intact copy's members read right after all that.
func (c *corruptView) checkIntactCopy(t *testing.T) {
	dir := filepath.Join(c.mp, "good.npz"+memberDirSuffix)
	if got, err := dirNames(dir); err != nil || !slices.Equal(got, c.src.Names()) {
		t.Errorf("readdir good.npz.d: %q, %v; want %q", got, err, c.src.Names())
	}
	for _, mf := range c.src.Members {
		if sum, n, err := hashFile(filepath.Join(dir, mf.Name)); err != nil || sum != sha256Hex(mf.Data) {
			t.Errorf("good.npz.d/%s: read %d of %d bytes, %v, sha256 matches %v", mf.Name, n, mf.Size, errnoOf(err), sum == sha256Hex(mf.Data))
		}
	}
}

// checkDaemon: the daemon is up and its log has no panic.
func (c *corruptView) checkDaemon(t *testing.T) {
	if !c.m.Alive() {
		code, _ := c.m.WaitExit(0)
		t.Errorf("the daemon died (status %d)", code)
	}
	stderr := c.m.Stderr()
	for _, bad := range []string{"panic", "goroutine "} {
		if strings.Contains(stderr, bad) {
			t.Errorf("the daemon's log mentions %q:\n%s", bad, lastBytes(stderr, 4000))
		}
	}
}

// readmeFunction returns the Python code block of README.md that defines
// the function name, as the README shows it.
func readmeFunction(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range strings.Split(string(b), "```python\n")[1:] {
		code, _, _ := strings.Cut(block, "```")
		if strings.Contains(code, "def "+name+"(") {
			return code
		}
	}
	t.Fatalf("README.md has no python block defining %s", name)
	return ""
}

// TestNPZMemberCorruptLoaders runs the two loaders README.md shows for one
// window of a member, on the last window of a member whose deflate data is
// corrupt: through a memory map (the recommended one-line change) the read
// fails on a page fault and the process is killed by SIGBUS (exit status
// 135 in a shell); README's load_window, run as the README has it, raises
// OSError with EIO, and the process goes on to read a window of the intact
// copy right. The daemon's log names the member and the reason.
func TestNPZMemberCorruptLoaders(t *testing.T) {
	d := memberFixture(t)
	dropPageCache(t)
	m := mountMembers(t, d, env.server(t).Endpoint, memberCorruptPrefix, nil, "--npz-members")
	w := d.CorruptSrc.Member("windows.npy")
	hdr, err := npyDataOffset(w.Data)
	if err != nil {
		t.Fatal(err)
	}
	last := (w.Size-hdr)/memberWindowBytes - 1
	corrupt := filepath.Join(m.Mountpoint, "flip_late.npz"+memberDirSuffix, "windows.npy")
	good := filepath.Join(m.Mountpoint, "good.npz"+memberDirSuffix, "windows.npy")

	mmapLoader := `
import sys
import numpy as np
path, i = sys.argv[1], int(sys.argv[2])
window = np.array(np.load(path, mmap_mode="r")[i])
print("read", window.shape)
`
	cmd := exec.Command(testbed.Python, "-c", mmapLoader, corrupt, strconv.FormatInt(last, 10))
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !exit.Sys().(syscall.WaitStatus).Signaled() || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGBUS {
		t.Errorf("the mmap loader on a corrupt member: %v, output %q; want it killed by SIGBUS", err, out)
	} else {
		t.Logf("the mmap loader on a corrupt member: %v", err)
	}

	preadLoader := readmeFunction(t, "load_window") + `
import hashlib, sys
corrupt, good, i = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    load_window(corrupt, i)
    print("no error")
except OSError as e:
    print("OSError", e.errno)
window = load_window(good, i)
print("good", hashlib.sha256(window.tobytes()).hexdigest())
`
	out, err = exec.Command(testbed.Python, "-c", preadLoader, corrupt, good, strconv.FormatInt(last, 10)).CombinedOutput()
	want := fmt.Sprintf("OSError %d\ngood %s\n", syscall.EIO, sha256Hex(w.Data[hdr+last*memberWindowBytes:hdr+(last+1)*memberWindowBytes]))
	if err != nil || string(out) != want {
		t.Errorf("README's load_window on the corrupt member, then on the intact one: %v, output %q; want %q", err, out, want)
	} else {
		t.Logf("README's load_window: %q", out)
	}

	if line, ok := memberLogLine(m.Stderr(), "flip_late.npz"+memberDirSuffix+"/windows.npy", corruptDataReasons); !ok {
		t.Errorf("no ERROR line names flip_late.npz%s/windows.npy and why it failed; log:\n%s", memberDirSuffix, lastBytes(m.Stderr(), 3000))
	} else {
		t.Logf("logged: %s", line)
	}
}
