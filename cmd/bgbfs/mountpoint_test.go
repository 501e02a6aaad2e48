package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bgbfs/bgbfs/cmd/bgbfs/mountinfo"
)

func TestRefuseMountedOn(t *testing.T) {
	disk := mountinfo.Mount{ID: "30", Mountpoint: "/cache", FSType: "ext4", Source: "/dev/vda"}
	volume := mountinfo.Mount{ID: "31", Mountpoint: "/cache", FSType: "overlay", Source: "overlay"}
	emptyDir := mountinfo.Mount{ID: "32", Mountpoint: "/cache", FSType: "tmpfs", Source: "tmpfs"}
	bgbfs := mountinfo.Mount{ID: "40", Mountpoint: "/cache", FSType: "fuse.bgbfs", Source: "s3://b/p/"}
	sshfs := mountinfo.Mount{ID: "41", Mountpoint: "/cache", FSType: "fuse.sshfs", Source: "u@h:/d"}
	ntfs := mountinfo.Mount{ID: "42", Mountpoint: "/cache", FSType: "fuseblk", Source: "/dev/sdb1"}
	live := func() error { return nil }
	dead := func() error { return fmt.Errorf("statfs /cache: %w", syscall.ENOTCONN) }
	otherErr := func() error { return syscall.EACCES }
	for _, tt := range []struct {
		name  string
		stack []mountinfo.Mount
		probe func() error
		want  string // "" means mounting is allowed
	}{
		{"plain directory", nil, live, ""},
		{"bind mount", []mountinfo.Mount{disk}, live, ""},
		{"volume", []mountinfo.Mount{volume}, live, ""},
		{"tmpfs emptyDir", []mountinfo.Mount{emptyDir}, live, ""},
		{"bind mount over a FUSE mount", []mountinfo.Mount{bgbfs, disk}, live, ""},
		{"a non-FUSE top is not probed", []mountinfo.Mount{disk}, dead, ""},
		{"live bgbfs", []mountinfo.Mount{bgbfs}, live, "mountpoint /cache is already mounted by fuse.bgbfs (s3://b/p/); unmount it first"},
		{"live bgbfs on a bind mount", []mountinfo.Mount{disk, bgbfs}, live, "already mounted by fuse.bgbfs (s3://b/p/)"},
		{"live sshfs", []mountinfo.Mount{sshfs}, live, "already mounted by fuse.sshfs (u@h:/d)"},
		{"live fuseblk", []mountinfo.Mount{disk, ntfs}, live, "already mounted by fuseblk (/dev/sdb1)"},
		{"FUSE probe fails otherwise", []mountinfo.Mount{bgbfs}, otherErr, "already mounted by fuse.bgbfs"},
		{"dead bgbfs", []mountinfo.Mount{bgbfs}, dead, "mountpoint /cache is a dead FUSE mount (its daemon exited); run: bgbfs unmount /cache"},
		{"dead bgbfs on a volume", []mountinfo.Mount{volume, bgbfs}, dead, "run: bgbfs unmount /cache"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := refuseMountedOn("/cache", tt.stack, tt.probe)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("refused: %v; want allowed", err)
			case tt.want != "" && err == nil:
				t.Errorf("allowed; want refused with %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Errorf("refused with %q; want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestCheckMountpoint(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "dir")
	file := filepath.Join(dir, "file")
	link := filepath.Join(dir, "link")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(sub, link); err != nil {
		t.Fatal(err)
	}
	real, err := filepath.EvalSymlinks(sub)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		mp, want, err string
	}{
		{mp: sub, want: real},
		{mp: link, want: real},
		{mp: filepath.Join(dir, "missing"), err: "does not exist"},
		{mp: file, err: "is not a directory"},
	} {
		got, err := checkMountpoint(tt.mp)
		switch {
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("checkMountpoint(%s) = %q, %v; want %q", tt.mp, got, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("checkMountpoint(%s) = %q, %v; want an error containing %q", tt.mp, got, err, tt.err)
		}
	}
}
