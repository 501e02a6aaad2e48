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
			preadHead := func() (good, eio int, wrong []string, wrongPastHead int) {
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
						if off+int64(n) > memberHeadRegion {
							wrongPastHead++
						}
					default:
						good++
					}
				}
				return good, eio, wrong, wrongPastHead
			}

			// Before the member is indexed, SEMANTICS.md lets a read that
			// ends within the first 64 KiB return bytes not yet checked
			// against the CRC (noted); any read past them indexes the
			// member, which checks it, and must fail instead.
			good, eio, wrong, pastHead := preadHead()
			t.Logf("before indexing: 64 KiB preads of the first 4 MiB: %d original bytes, %d EIO, %d other bytes (byte %d of %d compressed bytes flipped)",
				good, eio, len(wrong), d.FlipAt[name], w.CompressedSize)
			if pastHead > 0 {
				t.Errorf("%d preads past the first %d bytes of %s/windows.npy returned bytes that are not the member's, before any failed: %q",
					pastHead, memberHeadRegion, name+memberDirSuffix, wrong)
			}
			for _, msg := range wrong {
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
			good, eio, wrong, _ = preadHead()
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

	reasons := []string{"checksum", "crc", "corrupt", "invalid", "deflate", "inflate", "mismatch"}
	if line, ok := memberLogLine(m.Stderr(), "flip_late.npz"+memberDirSuffix+"/windows.npy", reasons); !ok {
		t.Errorf("no ERROR line names flip_late.npz%s/windows.npy and why it failed; log:\n%s", memberDirSuffix, lastBytes(m.Stderr(), 3000))
	} else {
		t.Logf("logged: %s", line)
	}
}
