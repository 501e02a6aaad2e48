package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The mount carries "ro", so the kernel refuses writes itself; every node
// embeds readOnlyDir or readOnlyFile so that the tree refuses them too,
// whatever the mount options.

// readOnlyDir refuses every call that would change a directory.
type readOnlyDir struct{}

// readOnlyFile refuses every call that would change a file.
type readOnlyFile struct{}

var (
	_ gofs.NodeSetattrer      = (*dirNode)(nil)
	_ gofs.NodeCreater        = (*dirNode)(nil)
	_ gofs.NodeMkdirer        = (*dirNode)(nil)
	_ gofs.NodeMknoder        = (*dirNode)(nil)
	_ gofs.NodeUnlinker       = (*dirNode)(nil)
	_ gofs.NodeRmdirer        = (*dirNode)(nil)
	_ gofs.NodeRenamer        = (*dirNode)(nil)
	_ gofs.NodeSymlinker      = (*dirNode)(nil)
	_ gofs.NodeLinker         = (*dirNode)(nil)
	_ gofs.NodeSetxattrer     = (*dirNode)(nil)
	_ gofs.NodeRemovexattrer  = (*dirNode)(nil)
	_ gofs.NodeSetattrer      = (*memberDirNode)(nil)
	_ gofs.NodeCreater        = (*memberDirNode)(nil)
	_ gofs.NodeMkdirer        = (*memberDirNode)(nil)
	_ gofs.NodeMknoder        = (*memberDirNode)(nil)
	_ gofs.NodeUnlinker       = (*memberDirNode)(nil)
	_ gofs.NodeRmdirer        = (*memberDirNode)(nil)
	_ gofs.NodeRenamer        = (*memberDirNode)(nil)
	_ gofs.NodeSymlinker      = (*memberDirNode)(nil)
	_ gofs.NodeLinker         = (*memberDirNode)(nil)
	_ gofs.NodeSetxattrer     = (*memberDirNode)(nil)
	_ gofs.NodeRemovexattrer  = (*memberDirNode)(nil)
	_ gofs.NodeSetattrer      = (*fileNode)(nil)
	_ gofs.NodeSetxattrer     = (*fileNode)(nil)
	_ gofs.NodeRemovexattrer  = (*fileNode)(nil)
	_ gofs.NodeAllocater      = (*fileNode)(nil)
	_ gofs.NodeCopyFileRanger = (*fileNode)(nil)
	_ gofs.NodeSetattrer      = (*memberNode)(nil)
	_ gofs.NodeSetxattrer     = (*memberNode)(nil)
	_ gofs.NodeRemovexattrer  = (*memberNode)(nil)
	_ gofs.NodeAllocater      = (*memberNode)(nil)
	_ gofs.NodeCopyFileRanger = (*memberNode)(nil)
)

func (readOnlyDir) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (readOnlyDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}

func (readOnlyDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (readOnlyDir) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (readOnlyDir) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (readOnlyDir) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (readOnlyDir) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (readOnlyDir) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (readOnlyDir) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (readOnlyDir) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (readOnlyDir) Removexattr(ctx context.Context, attr string) syscall.Errno { return syscall.EROFS }

func (readOnlyFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (readOnlyFile) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (readOnlyFile) Removexattr(ctx context.Context, attr string) syscall.Errno { return syscall.EROFS }

func (readOnlyFile) Allocate(ctx context.Context, fh gofs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	return syscall.EROFS
}

func (readOnlyFile) CopyFileRange(ctx context.Context, fhIn gofs.FileHandle, offIn uint64, out *gofs.Inode, fhOut gofs.FileHandle, offOut uint64, len uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}
