package integration

// What the .npz member view shows: with --npz-members, beside every
// visible NAME.npz a read-only directory NAME.npz.d/ with one file per
// member; nothing without the flag; only beside archives the smoke view
// shows; EROFS for every change.

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"syscall"
	"testing"
	"time"
)

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
		// Member directories too: SEMANTICS.md promises byte-wise order.
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
