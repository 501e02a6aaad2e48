package fs

import (
	"context"
	"io"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/bgbfs/bgbfs/cache"
)

// fileNode is one version of one object. A new version gets a new fileNode,
// so the fields never change.
type fileNode struct {
	gofs.Inode
	readOnlyFile
	tree   *tree
	parent *dirNode
	entry  dirEntry
}

var (
	_ gofs.NodeOpener    = (*fileNode)(nil)
	_ gofs.NodeGetattrer = (*fileNode)(nil)
	_ gofs.NodeFlusher   = (*fileNode)(nil)
)

// Flush is the kernel's call on every close(2) of a file, which a
// read-only file has nothing to do in; ENOSYS makes the kernel stop
// sending it for the whole mount (fc->no_flush), saving a request each
// close: numpy opens a member file about four times a sample.
func (f *fileNode) Flush(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	f.tree.Metrics.observe("flush", time.Now())
	return syscall.ENOSYS
}

func (f *fileNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.tree.fileAttr(f.entry, &out.Attr)
	return 0
}

func (f *fileNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	defer f.tree.Metrics.observe("open", time.Now())
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	r := f.tree.Blocks.Open(f.entry.version())
	if strings.HasSuffix(f.entry.name, ".npz") {
		// numpy reads a zip's directory at its end, then the members
		// from the start: both ends in one round trip, kept to close.
		r.Hold(0, 1)
		r.Hold(f.entry.size-1, 1)
	}
	// The node is one object version, so pages the kernel cached from an
	// earlier open of this node are still right.
	f.tree.Metrics.opened(1)
	return &fileHandle{node: f, reader: r}, fuse.FOPEN_KEEP_CACHE, 0
}

// fileHandle is one open of a file; all its reads see the version of open.
type fileHandle struct {
	node      *fileNode
	reader    *cache.Reader
	deadlines readDeadlines
}

var (
	_ gofs.FileReader   = (*fileHandle)(nil)
	_ gofs.FileReleaser = (*fileHandle)(nil)
)

func (h *fileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	defer h.node.tree.Metrics.observe("read", time.Now())
	if off < 0 { // an offset past 2^63 from the kernel
		return nil, syscall.EINVAL
	}
	ctx, cancel, deadline := h.deadlines.start(ctx, h.node.tree.ReadTimeout, off, len(dest))
	defer cancel()
	n, err := h.reader.ReadAt(ctx, dest, off)
	// Only the reader's own io.EOF ends the file: a short answer is all
	// the kernel caches of those pages, zeros after it. An error that
	// wraps io.EOF (a connection closed early) is an error.
	if err != nil && err != io.EOF {
		if isStale(err) {
			h.node.parent.expire()
		}
		errno := h.node.tree.errno(ctx, "read", h.node.entry.key, err)
		if errno == syscall.EIO {
			h.deadlines.fail(off, len(dest), deadline)
		}
		return nil, errno
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *fileHandle) Release(ctx context.Context) syscall.Errno {
	h.reader.Close()
	h.node.tree.Metrics.opened(-1)
	return 0
}
