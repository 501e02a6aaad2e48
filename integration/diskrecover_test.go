package integration

// A --cache-dir whose disk fills up and is freed again: writes stop,
// whichever check finds the disk full first (the 5%-free rule, or a
// write's ENOSPC), and start again by themselves once there is room.
// Seen from outside: a tmpfs grown with mount -o remount,size=; the
// daemon's written and skipped counters; the object files in the dir,
// parsed and matched to the source; the daemon's log lines.

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDiskCacheWritesResumeAfterFull fills a small tmpfs under a mount's
// --cache-dir, grows the tmpfs, and reads files not read before until
// their blocks are written, in both orders of the two checks:
//   - "ENOSPC first": with --cache-dir-size far above the tmpfs (so no
//     free-space rule), a write fails with ENOSPC: one line says writes
//     paused, one that they resumed once the disk has room;
//   - "5% rule first": without --cache-dir-size, small files written one
//     block at a time reach the 5%-free rule before any write can fail:
//     blocks are skipped (the dir is at its bound, no error, no line),
//     and taken again once the file system has room.
//
// (An ENOSPC turned writes off for the rest of the process: after the
// tmpfs grew, every block was skipped.)
func TestDiskCacheWritesResumeAfterFull(t *testing.T) {
	srv := env.server(t)
	for _, tt := range []struct {
		name        string
		args        []string
		tmpfs, grow string
		// first: files read to fill the dir; then: files read after the
		// tmpfs grew, one at a time until a block is written.
		firstN, firstSize, thenN, thenSize int
		wantLines                          int // of writes paused, and of resumed
	}{
		{"ENOSPC first", []string{"--cache-dir-size", "1GiB"}, "4m", "64m", 6, oneMiB + 100, 40, 200 << 10, 1},
		{"5% rule first", nil, "32m", "128m", 260, 128 << 10, 40, 128 << 10, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sizes := map[string]int{}
			var then []string
			for i := range tt.firstN {
				sizes[fmt.Sprintf("first/%03d.bin", i)] = tt.firstSize
			}
			for i := range tt.thenN {
				k := fmt.Sprintf("then/%03d.bin", i)
				sizes[k] = tt.thenSize
				then = append(then, k)
			}
			s := newDiskSource(t, "full-"+tt.name, sizes)
			first := &diskSource{Bucket: s.Bucket, Block: s.Block, Objs: map[string][]byte{}}
			for k, b := range s.Objs {
				if strings.HasPrefix(k, "first/") {
					first.Objs[k] = b
				}
			}
			dir := tmpfsDir(t, tt.tmpfs)
			proxy := newProxy(t, srv.Endpoint)
			m, addr := mountDisk(t, "", s, "", proxy.URL, dir, tt.args...)
			for _, k := range first.Keys() { // one at a time: writes trail reads by little
				one := &diskSource{Bucket: s.Bucket, Block: s.Block, Objs: map[string][]byte{k: s.Objs[k]}}
				one.readAll(t, m.Mountpoint, "")
			}
			proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
			full := scrapeMetrics(t, addr)
			paused := logLines(m.Stderr(), diskWritesOff)
			t.Logf("full: %v bytes written, %v blocks skipped; lines %q", full.Sum("bgbfs_disk_written_bytes_total"), full.Sum("bgbfs_disk_writes_skipped_total"), paused)
			if full.Sum("bgbfs_disk_writes_skipped_total") == 0 {
				t.Fatalf("no block skipped reading %d bytes into a %s tmpfs: the test proves nothing", first.Total(), tt.tmpfs)
			}
			if len(paused) != tt.wantLines {
				t.Fatalf("%d lines %s while full, want %d (the other check fired first?)", len(paused), diskWritesOff, tt.wantLines)
			}

			if out, err := exec.Command("mount", "-o", "remount,size="+tt.grow, dir).CombinedOutput(); err != nil {
				t.Fatalf("growing the tmpfs to %s: %v\n%s", tt.grow, err, out)
			}
			grown := time.Now()
			resumed := false
			read := 0
			for deadline := grown.Add(90 * time.Second); !resumed && time.Now().Before(deadline) && read < len(then); read++ {
				one := &diskSource{Bucket: s.Bucket, Block: s.Block, Objs: map[string][]byte{then[read]: s.Objs[then[read]]}}
				one.readAll(t, m.Mountpoint, "")
				proxy.WaitQuiet(100*time.Millisecond, 30*time.Second)
				resumed = scrapeMetrics(t, addr).Sum("bgbfs_disk_written_bytes_total") > full.Sum("bgbfs_disk_written_bytes_total")
				if !resumed {
					time.Sleep(time.Second)
				}
			}
			t.Logf("after growing the tmpfs to %s: %d files read in %v; writing resumed: %v", tt.grow, read, time.Since(grown).Round(time.Second), resumed)
			if !resumed {
				t.Errorf("no block written in %v after the tmpfs grew to %s (%d files read)", time.Since(grown).Round(time.Second), tt.grow, read)
			}
			unmountDisk(t, m)
			sc := scanDir(t, dir, s)
			checkScanClean(t, sc)
			kept := 0
			for b := range sc.Valid {
				if strings.HasPrefix(b.Key, "then/") {
					kept++
				}
			}
			if resumed && kept == 0 {
				t.Errorf("the dir holds no block of the files read after the tmpfs grew")
			}
			for _, msg := range []string{diskWritesOff, diskWritesOn} {
				if l := logLines(m.Stderr(), msg); len(l) != tt.wantLines {
					t.Errorf("%d lines %s, want %d:\n%s", len(l), msg, tt.wantLines, strings.Join(l, "\n"))
				}
			}
		})
	}
}
