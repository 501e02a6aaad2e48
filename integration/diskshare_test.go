package integration

// One --cache-dir shared by mounts that differ: a plain mount (1 MiB
// blocks) and an --npz-members one (128 KiB blocks), and mounts run by
// other users. Seen from outside: sha256 of every file read through each
// mount, GETs counted at the one proxy both mounts go through (the
// endpoint is part of what the dir's files are of), the modes and owners
// of what the dir holds, and the daemons' logs.

import (
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// TestDiskCacheSharedAcrossBlockSizes reads objects whose last block is
// as long in one block size as a whole block of the other (1 MiB + 128
// KiB, say), and the members of two numpy archives, through a plain
// mount and an --npz-members mount on one dir, each mount reading after
// the other has filled the dir, in both orders: every byte through both
// is the source's, and the second mount reads from the dir what the
// first wrote (no GET of those bytes, counted at the proxy).
func TestDiskCacheSharedAcrossBlockSizes(t *testing.T) {
	srv := env.server(t)
	d := memberFixture(t)
	s := newDiskSource(t, "blocksizes", map[string]int{
		"a.bin": oneMiB + 128<<10, "b.bin": 2*oneMiB + 128<<10, "c.bin": 3*oneMiB + 256<<10,
		"d.bin": 5*oneMiB + 7, "e.bin": 3*128<<10 + 5, "f.bin": 100,
	})
	rels := []string{memberCompressedRel, memberStoredRel}
	for _, rel := range rels {
		s.Objs["npz/"+rel] = d.Archives[rel].Data
		if err := srv.Admin().PutBytes(t.Context(), s.Bucket, "npz/"+rel, d.Archives[rel].Data); err != nil {
			t.Fatal(err)
		}
	}
	members := archiveMembers(d, "npz/", rels...)
	plain := []string{"--cache-dir-size", "1GiB"}
	view := []string{"--npz-members", "--cache-dir-size", "1GiB"}

	for _, order := range []string{"view first", "plain first"} {
		t.Run(order, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache")
			proxy := newProxy(t, srv.Endpoint)
			readView := func(m *testbed.Mounted) {
				s.readAll(t, m.Mountpoint, "")
				members.readAll(t, m.Mountpoint)
			}
			readPlain := func(m *testbed.Mounted) { s.readAll(t, m.Mountpoint, "") }
			first, second := struct {
				args []string
				read func(*testbed.Mounted)
			}{view, readView}, struct {
				args []string
				read func(*testbed.Mounted)
			}{plain, readPlain}
			if order == "plain first" {
				first, second = second, first
			}
			m1, addr1 := mountDisk(t, "", s, "", proxy.URL, dir, first.args...)
			first.read(m1)
			proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
			met1 := scrapeMetrics(t, addr1)
			t.Logf("first mount: %v bytes written, %v writes skipped", met1.Sum("bgbfs_disk_written_bytes_total"), met1.Sum("bgbfs_disk_writes_skipped_total"))

			m2, addr2 := mountDisk(t, "", s, "", proxy.URL, dir, second.args...)
			c, _ := coldRead(t, proxy, func() { second.read(m2) })
			met2 := scrapeMetrics(t, addr2)
			t.Logf("second mount, after the first: %v; disk hits %v, misses %v, checksum failures %v", c,
				met2.Sum("bgbfs_disk_hits_total"), met2.Sum("bgbfs_disk_misses_total"), met2.Sum("bgbfs_disk_checksum_failures_total"))
			if met1.Sum("bgbfs_disk_writes_skipped_total") == 0 && order == "view first" && c.GetObject != 0 {
				// The plain mount reads only files the view read whole:
				// every byte of them is in the dir.
				t.Errorf("the plain mount made %d GETs (%d bytes) for files the view mount had written whole to the dir", c.GetObject, c.GetObjectBytes)
			}
			if f := met2.Sum("bgbfs_disk_checksum_failures_total"); f != 0 {
				t.Errorf("the second mount found %v damaged files in a dir only bgbfs wrote", f)
			}

			// Both again, cold, the first mount after the second.
			coldRead(t, proxy, func() { first.read(m1) })
			coldRead(t, proxy, func() { second.read(m2) })
			unmountDisk(t, m1)
			unmountDisk(t, m2)
			for i, m := range []*testbed.Mounted{m1, m2} {
				if l := logLines(m.Stderr(), "damaged"); len(l) > 0 {
					t.Errorf("mount %d:\n%s", i+1, strings.Join(l, "\n"))
				}
			}
		})
	}
}

// TestDiskCacheSharedByUsers shares one dir between root and another
// user (uid 65534), the way a training container and a notebook may:
//   - root, under a umask of 077, makes the dir and fills it: every
//     directory is 0755 and every file 0644 all the same (the umask made
//     0700 directories, which the other user could not enter);
//   - the other user's mount then reads root's blocks from the dir (no
//     GET for them, counted at the proxy), says once that the dir is
//     read only for it, and writes nothing (files it reads that the dir
//     lacks stay out of it);
//   - in a dir the other user owns, root's mount gives what it makes to
//     that user, and the user's mount writes too.
func TestDiskCacheSharedByUsers(t *testing.T) {
	srv := env.server(t)
	devFuseForEveryone(t)
	pub := publicDir(t)
	asRoot077 := wrapBinary(t, pub, "bgbfs-umask-077", "umask 077", "")
	nobodyBin := wrapBinary(t, pub, "bgbfs-as-nobody", "", asNobodyRunner)
	s := newDiskSource(t, "users", map[string]int{"a.bin": 2*oneMiB + 10, "b.bin": 3 * oneMiB, "c.bin": 100_000})
	later := newDiskSource(t, "users-later", map[string]int{"d.bin": oneMiB + 5, "e.bin": 300_000})
	later.Bucket = s.Bucket
	for k, b := range later.Objs {
		if err := srv.Admin().PutBytes(t.Context(), s.Bucket, "later/"+k, b); err != nil {
			t.Fatal(err)
		}
	}
	proxy := newProxy(t, srv.Endpoint)
	// nobodyMount mounts the bucket as uid 65534 on a mountpoint of its
	// own; only that user can read through it (no allow_other).
	nobodyMount := func(dir string) *testbed.Mounted {
		mp := filepath.Join(pub, "mnt-"+filepath.Base(dir))
		if err := os.Mkdir(mp, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(mp, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		return mount(t, mountSpec{
			Source: "s3://" + s.Bucket + "/", Endpoint: proxy.URL, Creds: rootCreds(srv), Bin: nobodyBin, Mountpoint: mp,
			Args: []string{"--metadata-ttl", "10m", "--cache-dir", dir, "--cache-size", strconv.Itoa(diskMemCache), "--cache-dir-size", "1GiB"},
		})
	}
	// readAsNobody reads files (relative to mp) whole as uid 65534 and
	// checks their sha256.
	readAsNobody := func(mp string, objs map[string][]byte, prefix string) {
		for k, want := range objs {
			out, stderr, err := asNobody(30*time.Second, "sha256sum", filepath.Join(mp, prefix+k))
			if got, _, _ := strings.Cut(string(out), " "); err != nil || got != sha256Hex(want) {
				t.Errorf("sha256sum %s as uid %d: %q, %v %s; want %s", prefix+k, nobody, out, err, stderr, sha256Hex(want))
			}
		}
	}

	t.Run("root's dir", func(t *testing.T) {
		dir := filepath.Join(pub, "cache-root")
		m, _ := mountDisk(t, asRoot077, s, "", proxy.URL, dir, "--cache-dir-size", "1GiB")
		s.readAll(t, m.Mountpoint, "")
		proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
		unmountDisk(t, m)
		held := scanDir(t, dir, s)
		checkScanClean(t, held)
		checkModes(t, dir, 0o755, 0o644)
		if len(held.Valid) != len(s.Blocks()) {
			t.Fatalf("root's mount left %d of %d blocks in the dir", len(held.Valid), len(s.Blocks()))
		}

		n := nobodyMount(dir)
		c, reqs := coldRead(t, proxy, func() { readAsNobody(n.Mountpoint, s.Objs, "") })
		t.Logf("uid %d reading root's dir: %v", nobody, c)
		if gets := getBlocks(t, reqs, s); len(gets) != 0 {
			t.Errorf("uid %d fetched %s, which root's dir holds", nobody, refs(gets))
		}
		readAsNobody(n.Mountpoint, later.Objs, "later/")
		proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
		unmountDisk(t, n)
		if l := logLines(n.Stderr(), diskReadOnly); len(l) != 1 {
			t.Errorf("%d lines %s from uid %d's mount, want 1:\n%s", len(l), diskReadOnly, nobody, strings.Join(l, "\n"))
		}
		for _, bad := range []string{diskWritesOff, diskReadsOff, diskDamagedMsg} {
			if l := logLines(n.Stderr(), bad); len(l) > 0 {
				t.Errorf("uid %d's mount:\n%s", nobody, strings.Join(l, "\n"))
			}
		}
		if after := scanDir(t, dir, s); len(after.Files) != len(held.Files) {
			t.Errorf("the dir held %d object files before uid %d's mount and %d after: it wrote", len(held.Files), nobody, len(after.Files))
		}
	})

	t.Run("the other user's dir", func(t *testing.T) {
		dir := filepath.Join(pub, "cache-nobody")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		m, _ := mountDisk(t, asRoot077, s, "", proxy.URL, dir, "--cache-dir-size", "1GiB")
		s.readAll(t, m.Mountpoint, "")
		proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
		unmountDisk(t, m)
		checkOwner(t, dir, nobody)
		n := nobodyMount(dir)
		readAsNobody(n.Mountpoint, later.Objs, "later/")
		proxy.WaitQuiet(300*time.Millisecond, 30*time.Second)
		unmountDisk(t, n)
		both := &diskSource{Bucket: s.Bucket, Block: s.Block, Objs: map[string][]byte{}}
		for k, b := range s.Objs {
			both.Objs[k] = b
		}
		for k, b := range later.Objs {
			both.Objs["later/"+k] = b
		}
		sc := scanDir(t, dir, both)
		checkScanClean(t, sc)
		for _, b := range both.Blocks() {
			if _, ok := sc.Valid[b]; !ok {
				t.Errorf("the dir lacks %s: root read %d of its files, uid %d the rest", b, len(s.Objs), nobody)
			}
		}
		checkOwner(t, dir, nobody)
		for _, bad := range []string{diskWritesOff, diskReadsOff, diskReadOnly, diskDamagedMsg} {
			if l := logLines(m.Stderr()+n.Stderr(), bad); len(l) > 0 {
				t.Errorf("the mounts logged:\n%s", strings.Join(l, "\n"))
			}
		}
	})
}

// checkModes checks that every directory under dir has mode dirs and
// every file files.
func checkModes(t testing.TB, dir string, dirs, files fs.FileMode) {
	t.Helper()
	walkInfo(t, dir, func(p string, fi fs.FileInfo) {
		if want := map[bool]fs.FileMode{true: dirs, false: files}[fi.IsDir()]; fi.Mode().Perm() != want {
			t.Errorf("cache dir: %s has mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	})
}

// checkOwner checks that uid owns everything under dir.
func checkOwner(t testing.TB, dir string, uid int) {
	t.Helper()
	walkInfo(t, dir, func(p string, fi fs.FileInfo) {
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid {
			t.Errorf("cache dir: %s is owned by uid %d, want %d", p, st.Uid, uid)
		}
	})
}

// walkInfo calls fn with everything under dir (dir too).
func walkInfo(t testing.TB, dir string, fn func(p string, fi fs.FileInfo)) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err == nil {
			fn(p, fi)
		}
		return err
	})
	if err != nil {
		t.Error(err)
	}
}
