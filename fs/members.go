package fs

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sync/singleflight"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npz"
)

// memberDirSuffix is appended to an archive's name to name the directory
// of its members.
const memberDirSuffix = ".d"

// archiveOf returns the archive name whose member directory name is, if
// name is one.
func archiveOf(name string) (string, bool) {
	archive, ok := strings.CutSuffix(name, memberDirSuffix)
	return archive, ok && strings.HasSuffix(archive, ".npz")
}

// memberDirNode is NAME.npz.d: the members of one version of one archive.
// A new version gets a new node, so its content never changes.
type memberDirNode struct {
	gofs.Inode
	readOnlyDir
	tree    *tree
	parent  *dirNode
	archive dirEntry

	// loading makes concurrent lookups share one read of the directory;
	// none holds a lock while it is read.
	loading singleflight.Group

	mu  sync.Mutex
	dir *npz.Directory
	// dirErr is a malformed directory: the archive version cannot change.
	dirErr error
}

var (
	_ gofs.NodeLookuper  = (*memberDirNode)(nil)
	_ gofs.NodeReaddirer = (*memberDirNode)(nil)
	_ gofs.NodeGetattrer = (*memberDirNode)(nil)
	_ gofs.NodeStatfser  = (*memberDirNode)(nil)
)

func (a *memberDirNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return a.parent.Statfs(ctx, out)
}

func (a *memberDirNode) object() cache.Object {
	return a.archive.version()
}

// path names the directory in logs.
func (a *memberDirNode) path() string { return a.archive.key + memberDirSuffix }

// directory reads the archive's zip directory once (its tail, one block or
// two through the cache) and logs the members it cannot show. A caller
// whose request is interrupted stops waiting for it at once.
func (a *memberDirNode) directory(ctx context.Context) (*npz.Directory, error) {
	a.mu.Lock()
	dir, err := a.dir, a.dirErr
	a.mu.Unlock()
	if dir != nil || err != nil {
		return dir, err
	}
	loaded := a.loading.DoChan("", func() (any, error) { return a.loadDirectory() })
	select {
	case r := <-loaded:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*npz.Directory), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// loadDirectory reads the directory for directory. It does not stop when
// the request that started it is interrupted: others may be waiting.
func (a *memberDirNode) loadDirectory() (*npz.Directory, error) {
	a.mu.Lock()
	dir, err := a.dir, a.dirErr
	a.mu.Unlock()
	if dir != nil || err != nil { // loaded since the caller looked
		return dir, err
	}
	if dir := a.tree.NPZ.knownDirectory(a.object()); dir != nil {
		a.keepDirectory(dir, nil)
		return dir, nil
	}
	if dir = a.tree.NPZ.keptArchive(a.object()); dir == nil {
		r := a.tree.Blocks.OpenRandom(a.object())
		defer r.Close()
		dir, err = npz.ReadDirectory(readerAt{a.tree.NPZ.life, r}, a.archive.size)
	}
	if err != nil {
		err = fmt.Errorf("reading the zip directory of %q: %w", a.archive.key, err)
		if isDataError(err) {
			a.keepDirectory(nil, err)
		}
		return nil, err
	}
	for _, u := range dir.Unusable {
		a.tree.warnHidden(hiddenKey{key: a.path() + "/" + u.Name, reason: u.Err.Error()})
	}
	a.keepDirectory(dir, nil)
	a.tree.NPZ.rememberDirectory(a.object(), dir)
	return dir, nil
}

func (a *memberDirNode) keepDirectory(dir *npz.Directory, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dir, a.dirErr = dir, err
}

func (a *memberDirNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	a.tree.memberDirAttr(a.archive, &out.Attr)
	return 0
}

func (a *memberDirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	defer a.tree.Metrics.observe("lookup", time.Now())
	dir, err := a.directory(ctx)
	if err != nil {
		return nil, a.tree.errno(ctx, "lookup", a.path()+"/"+name, err)
	}
	for _, m := range dir.Members {
		if m.Name != name {
			continue
		}
		// The node is one archive version: its members never change.
		out.SetEntryTimeout(kernelForever)
		out.SetAttrTimeout(kernelForever)
		n := &memberNode{tree: a.tree, dir: a, member: m}
		n.attr(&out.Attr)
		if old := a.GetChild(name); old != nil {
			return old, 0
		}
		return a.NewInode(ctx, n, gofs.StableAttr{Mode: syscall.S_IFREG}), 0
	}
	return nil, syscall.ENOENT
}

func (a *memberDirNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	defer a.tree.Metrics.observe("readdir", time.Now())
	dir, err := a.directory(ctx)
	if err != nil {
		return nil, a.tree.errno(ctx, "readdir", a.path(), err)
	}
	out := make([]fuse.DirEntry, 0, len(dir.Members)+2)
	for _, m := range dir.Members {
		out = append(out, fuse.DirEntry{Name: m.Name, Mode: syscall.S_IFREG})
	}
	// Byte-wise order, like every other directory.
	slices.SortFunc(out, func(a, b fuse.DirEntry) int { return strings.Compare(a.Name, b.Name) })
	out = slices.Insert(out, 0, fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR}, fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR})
	return gofs.NewListDirStream(out), 0
}

// memberNode is one member of one archive version.
type memberNode struct {
	gofs.Inode
	readOnlyFile
	tree   *tree
	dir    *memberDirNode
	member npz.Member
}

var (
	_ gofs.NodeOpener    = (*memberNode)(nil)
	_ gofs.NodeGetattrer = (*memberNode)(nil)
)

func (n *memberNode) path() string { return n.dir.path() + "/" + n.member.Name }

func (n *memberNode) attr(out *fuse.Attr) {
	e := n.dir.archive
	e.size = n.member.UncompressedSize
	n.tree.fileAttr(e, out)
	// st_blksize is the buffer Python's open() and others read with: a
	// member is read a window at a time, and each byte read past the
	// window is inflated for nothing.
	out.Blksize = memberBlksize
}

func (n *memberNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.attr(&out.Attr)
	return 0
}

func (n *memberNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	defer n.tree.Metrics.observe("open", time.Now())
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	n.tree.Metrics.opened(1)
	return &memberHandle{node: n, reader: newMemberReader(n.tree.NPZ, n.tree.Blocks, n.dir.object(), n.member)}, fuse.FOPEN_KEEP_CACHE, 0
}

// memberHandle is one open of a member file.
type memberHandle struct {
	node      *memberNode
	reader    *memberReader
	deadlines readDeadlines
}

const memberBlksize = 16 << 10

var (
	_ gofs.FileReader   = (*memberHandle)(nil)
	_ gofs.FileReleaser = (*memberHandle)(nil)
)

func (h *memberHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	t := h.node.tree
	defer t.Metrics.observe("read", time.Now())
	if off < 0 {
		return nil, syscall.EINVAL
	}
	ctx, cancel, deadline := h.deadlines.start(ctx, t.ReadTimeout, off, len(dest))
	defer cancel()
	n, err := h.reader.ReadAt(ctx, dest, off)
	// Only the reader's own io.EOF ends the file: a short answer is all
	// the kernel caches of those pages, zeros after it. An error that
	// wraps io.EOF (a connection closed early) is an error.
	if err != nil && err != io.EOF {
		if isStale(err) {
			h.node.dir.parent.expire()
		}
		errno := t.errno(ctx, "read", h.node.path(), err)
		if errno == syscall.EIO {
			h.deadlines.fail(off, len(dest), deadline)
		}
		return nil, errno
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *memberHandle) Release(ctx context.Context) syscall.Errno {
	h.reader.Close()
	h.node.tree.Metrics.opened(-1)
	return 0
}

func (t *tree) memberDirAttr(archive dirEntry, out *fuse.Attr) {
	t.dirAttr(out)
	out.SetTimes(&archive.mtime, &archive.mtime, &archive.mtime)
}
