package fs

import (
	"context"
	"syscall"
	"testing"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The kernel mount is "ro", so these calls never reach the tree through a
// real mount; the tree must refuse them on its own all the same.
func TestMutationsAreRefused(t *testing.T) {
	ctx := context.Background()
	tr := &tree{}
	type dirCalls interface {
		gofs.NodeSetattrer
		gofs.NodeCreater
		gofs.NodeMkdirer
		gofs.NodeMknoder
		gofs.NodeUnlinker
		gofs.NodeRmdirer
		gofs.NodeRenamer
		gofs.NodeSymlinker
		gofs.NodeLinker
		gofs.NodeSetxattrer
		gofs.NodeRemovexattrer
	}
	type fileCalls interface {
		gofs.NodeSetattrer
		gofs.NodeSetxattrer
		gofs.NodeRemovexattrer
		gofs.NodeAllocater
		gofs.NodeCopyFileRanger
		gofs.NodeOpener
	}
	f := &fileNode{tree: tr}
	dirs := map[string]dirCalls{"dir": tr.newDirNode(""), "member dir": &memberDirNode{tree: tr}}
	files := map[string]fileCalls{"file": f, "member": &memberNode{tree: tr}}
	var eo fuse.EntryOut
	var ao fuse.AttrOut
	type call struct {
		name string
		call func() syscall.Errno
	}
	var calls []call
	for kind, d := range dirs {
		calls = append(calls, []call{
			{kind + " setattr", func() syscall.Errno { return d.Setattr(ctx, nil, &fuse.SetAttrIn{}, &ao) }},
			{kind + " create", func() syscall.Errno { _, _, _, e := d.Create(ctx, "x", 0, 0o644, &eo); return e }},
			{kind + " mkdir", func() syscall.Errno { _, e := d.Mkdir(ctx, "x", 0o755, &eo); return e }},
			{kind + " mknod", func() syscall.Errno { _, e := d.Mknod(ctx, "x", 0o644, 0, &eo); return e }},
			{kind + " unlink", func() syscall.Errno { return d.Unlink(ctx, "x") }},
			{kind + " rmdir", func() syscall.Errno { return d.Rmdir(ctx, "x") }},
			{kind + " rename", func() syscall.Errno { return d.Rename(ctx, "x", f, "y", 0) }},
			{kind + " symlink", func() syscall.Errno { _, e := d.Symlink(ctx, "t", "x", &eo); return e }},
			{kind + " link", func() syscall.Errno { _, e := d.Link(ctx, f, "x", &eo); return e }},
			{kind + " setxattr", func() syscall.Errno { return d.Setxattr(ctx, "user.a", []byte("v"), 0) }},
			{kind + " removexattr", func() syscall.Errno { return d.Removexattr(ctx, "user.a") }},
		}...)
	}
	for kind, f := range files {
		calls = append(calls, []call{
			{kind + " setattr", func() syscall.Errno { return f.Setattr(ctx, nil, &fuse.SetAttrIn{}, &ao) }},
			{kind + " setxattr", func() syscall.Errno { return f.Setxattr(ctx, "user.a", []byte("v"), 0) }},
			{kind + " removexattr", func() syscall.Errno { return f.Removexattr(ctx, "user.a") }},
			{kind + " fallocate", func() syscall.Errno { return f.Allocate(ctx, nil, 0, 10, 0) }},
			{kind + " copy_file_range", func() syscall.Errno { _, e := f.CopyFileRange(ctx, nil, 0, nil, nil, 0, 10, 0); return e }},
			{kind + " open for writing", func() syscall.Errno { _, _, e := f.Open(ctx, syscall.O_WRONLY); return e }},
			{kind + " open read-write", func() syscall.Errno { _, _, e := f.Open(ctx, syscall.O_RDWR); return e }},
			{kind + " open with truncate", func() syscall.Errno { _, _, e := f.Open(ctx, syscall.O_RDONLY|syscall.O_TRUNC); return e }},
		}...)
	}
	for _, c := range calls {
		if got := c.call(); got != syscall.EROFS {
			t.Errorf("%s = %v, want EROFS", c.name, got)
		}
	}
}
