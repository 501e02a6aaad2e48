// Package mountinfo reads the kernel's mount table, /proc/self/mountinfo:
// the one parser of it for the command, the test bed and the demo.
package mountinfo

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Mount is one line of the table (proc(5)): "id parent maj:min root
// mountpoint options [optional...] - fstype source superoptions".
type Mount struct {
	ID           string
	Mountpoint   string
	Options      []string // per-mount options: rw/ro, nosuid, ...
	FSType       string   // fuse.bgbfs for a bgbfs mount
	Source       string
	SuperOptions []string
}

// ReadOnly reports "ro" among the per-mount options.
func (m Mount) ReadOnly() bool { return slices.Contains(m.Options, "ro") }

// FUSE reports a FUSE filesystem: "fuse" or "fuseblk", with or without a
// subtype ("fuse.bgbfs").
func (m Mount) FUSE() bool {
	kind, _, _ := strings.Cut(m.FSType, ".")
	return kind == "fuse" || kind == "fuseblk"
}

// ParseLine reads one line of the table.
func ParseLine(line string) (Mount, bool) {
	fields := strings.Fields(line)
	sep := -1
	for i, f := range fields {
		if f == "-" && i >= 6 {
			sep = i
			break
		}
	}
	if sep < 0 || sep+3 >= len(fields) {
		return Mount{}, false
	}
	return Mount{
		ID:           fields[0],
		Mountpoint:   unescape(fields[4]),
		Options:      strings.Split(fields[5], ","),
		FSType:       fields[sep+1],
		Source:       unescape(fields[sep+2]),
		SuperOptions: strings.Split(fields[sep+3], ","),
	}, true
}

// Read returns every mount, in the table's order: of mounts on one
// mountpoint, the last is on top.
func Read() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	var out []Mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m, ok := ParseLine(sc.Text())
		if !ok {
			return nil, fmt.Errorf("read mount table: cannot parse %q", sc.Text())
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return out, nil
}

// At returns the mounts on mountpoint, bottom first: the last is what
// path lookups see. mountpoint is made absolute and its parent's symlinks
// resolved, as the kernel reports it; the mountpoint itself is not
// resolved, since it may be a dead FUSE mount that cannot be.
func At(mountpoint string) ([]Mount, error) {
	all, err := Read()
	if err != nil {
		return nil, err
	}
	mp := Clean(mountpoint)
	var out []Mount
	for _, m := range all {
		if m.Mountpoint == mp {
			out = append(out, m)
		}
	}
	return out, nil
}

// Top returns the mount on top of mountpoint, if any.
func Top(mountpoint string) (Mount, bool, error) {
	ms, err := At(mountpoint)
	if err != nil || len(ms) == 0 {
		return Mount{}, false, err
	}
	return ms[len(ms)-1], true, nil
}

// Clean names mountpoint as the kernel's table does: absolute, with the
// symlinks of its parent resolved.
func Clean(mountpoint string) string {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return filepath.Clean(mountpoint)
	}
	if parent, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		return filepath.Join(parent, filepath.Base(abs))
	}
	return abs
}

// unescape undoes the kernel's \ooo octal escapes (\040 for a space).
func unescape(s string) string {
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
