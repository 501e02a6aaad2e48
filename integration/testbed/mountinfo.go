package testbed

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// MountInfo is one line of /proc/self/mountinfo.
type MountInfo struct {
	ID           string
	Mountpoint   string
	Options      []string // per-mount options: rw/ro, nosuid, ...
	FSType       string   // fuse.bgbfs for a bgbfs mount
	Source       string
	SuperOptions []string
}

// ReadOnly reports "ro" among the per-mount options.
func (m MountInfo) ReadOnly() bool { return slices.Contains(m.Options, "ro") }

// Mounts parses /proc/self/mountinfo.
func Mounts() ([]MountInfo, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []MountInfo
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 6 || len(fields) < sep+4 {
			return nil, fmt.Errorf("mountinfo: cannot parse %q", sc.Text())
		}
		out = append(out, MountInfo{
			ID:           fields[0],
			Mountpoint:   unescapeMountinfo(fields[4]),
			Options:      strings.Split(fields[5], ","),
			FSType:       fields[sep+1],
			Source:       unescapeMountinfo(fields[sep+2]),
			SuperOptions: strings.Split(fields[sep+3], ","),
		})
	}
	return out, sc.Err()
}

// unescapeMountinfo undoes the kernel's \ooo octal escapes.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// MountsAt returns the mounts on mountpoint, bottom first (the last one is
// what path lookups see).
func MountsAt(mountpoint string) ([]MountInfo, error) {
	all, err := Mounts()
	if err != nil {
		return nil, err
	}
	mp := cleanMountpoint(mountpoint)
	var out []MountInfo
	for _, m := range all {
		if m.Mountpoint == mp {
			out = append(out, m)
		}
	}
	return out, nil
}

// MountedAt returns the top mount on mountpoint, if any.
func MountedAt(mountpoint string) (MountInfo, bool) {
	ms, err := MountsAt(mountpoint)
	if err != nil || len(ms) == 0 {
		return MountInfo{}, false
	}
	return ms[len(ms)-1], true
}

// cleanMountpoint makes mountpoint absolute and resolves symlinks in its
// parent (the kernel reports resolved paths; the mountpoint itself may be
// a dead FUSE mount that cannot be resolved).
func cleanMountpoint(mountpoint string) string {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return filepath.Clean(mountpoint)
	}
	if parent, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		return filepath.Join(parent, filepath.Base(abs))
	}
	return abs
}

// ForceUnmount detaches whatever is mounted on mountpoint (lazily, so a
// dead or busy FUSE mount goes too) until nothing is left there.
func ForceUnmount(mountpoint string) error {
	mp := cleanMountpoint(mountpoint)
	for range 8 {
		if _, ok := MountedAt(mp); !ok {
			return nil
		}
		out, err := exec.Command("fusermount3", "-u", "-z", mp).CombinedOutput()
		if err != nil {
			if out2, err2 := exec.Command("umount", "-l", mp).CombinedOutput(); err2 != nil {
				return fmt.Errorf("fusermount3 -u -z %s: %v: %s; umount -l: %v: %s", mp, err, out, err2, out2)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, ok := MountedAt(mp); ok {
		return fmt.Errorf("%s is still mounted after forced unmounts", mp)
	}
	return nil
}
