package mountinfo

import (
	"reflect"
	"testing"
)

func TestParseLine(t *testing.T) {
	for _, tt := range []struct {
		line string
		want Mount
		ok   bool
	}{
		{
			line: `42 27 0:39 / /tmp/mnt\0401 ro,nosuid,nodev,relatime - fuse.bgbfs s3://b/p/ ro,user_id=0`,
			want: Mount{ID: "42", Mountpoint: "/tmp/mnt 1", Options: []string{"ro", "nosuid", "nodev", "relatime"}, FSType: "fuse.bgbfs", Source: "s3://b/p/", SuperOptions: []string{"ro", "user_id=0"}},
			ok:   true,
		},
		{
			line: `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue`,
			want: Mount{ID: "36", Mountpoint: "/mnt2", Options: []string{"rw", "noatime"}, FSType: "ext3", Source: "/dev/root", SuperOptions: []string{"rw", "errors=continue"}},
			ok:   true,
		},
		{
			// Every octal escape, not only the four the kernel uses, and
			// a backslash that starts none.
			line: `7 1 0:1 / /a\011b\012c\134d\101\9 rw - tmpfs x\040y rw`,
			want: Mount{ID: "7", Mountpoint: "/a\tb\nc\\dA\\9", Options: []string{"rw"}, FSType: "tmpfs", Source: "x y", SuperOptions: []string{"rw"}},
			ok:   true,
		},
		{line: `garbage`},
		{line: `1 2 3 4 5 6 -`},
		{line: `1 2 3 4 5 6 - fuse`},
	} {
		got, ok := ParseLine(tt.line)
		if ok != tt.ok || (ok && !reflect.DeepEqual(got, tt.want)) {
			t.Errorf("ParseLine(%q) = %+v, %v; want %+v, %v", tt.line, got, ok, tt.want, tt.ok)
		}
	}
}

func TestReadSeesTheRoot(t *testing.T) {
	m, ok, err := Top("/")
	if err != nil || !ok || m.FSType == "" {
		t.Fatalf("Top(/) = %+v, %v, %v", m, ok, err)
	}
}

func TestFUSE(t *testing.T) {
	for _, tt := range []struct {
		fstype string
		want   bool
	}{
		{"fuse", true},
		{"fuse.bgbfs", true},
		{"fuse.fuse-overlayfs", true},
		{"fuseblk", true},
		{"fuseblk.ntfs", true},
		{"fusectl", false},
		{"ext4", false},
		{"overlay", false},
		{"tmpfs", false},
		{"", false},
	} {
		if got := (Mount{FSType: tt.fstype}).FUSE(); got != tt.want {
			t.Errorf("Mount{FSType: %q}.FUSE() = %v, want %v", tt.fstype, got, tt.want)
		}
	}
}
