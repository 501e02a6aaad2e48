package fs

import (
	"context"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bgbfs/bgbfs/fs/npzview"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
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
	members *npzview.Archive
}

var (
	_ gofs.NodeLookuper  = (*memberDirNode)(nil)
	_ gofs.NodeReaddirer = (*memberDirNode)(nil)
	_ gofs.NodeGetattrer = (*memberDirNode)(nil)
	_ gofs.NodeStatfser  = (*memberDirNode)(nil)
)

// newMemberDirNode returns the member directory of archive, in parent.
func (t *tree) newMemberDirNode(parent *dirNode, archive dirEntry) *memberDirNode {
	a := &memberDirNode{tree: t, parent: parent, archive: archive}
	a.members = t.NPZ.Archive(archive.version(), func(name, reason string) {
		t.warnHidden(hiddenKey{key: a.path() + "/" + name, reason: reason})
	})
	return a
}

func (a *memberDirNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return a.parent.Statfs(ctx, out)
}

// path names the directory in logs.
func (a *memberDirNode) path() string { return a.archive.key + memberDirSuffix }

func (a *memberDirNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	a.tree.memberDirAttr(a.archive, &out.Attr)
	return 0
}

func (a *memberDirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	defer a.tree.Metrics.observe("lookup", time.Now())
	members, err := a.members.Members(ctx)
	if err != nil {
		return nil, a.tree.errno(ctx, "lookup", a.path()+"/"+name, err)
	}
	for _, m := range members {
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
	members, err := a.members.Members(ctx)
	if err != nil {
		return nil, a.tree.errno(ctx, "readdir", a.path(), err)
	}
	out := make([]fuse.DirEntry, 0, len(members)+2)
	for _, m := range members {
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
	member npzview.Member
	opens  openKinds
}

// openKinds counts the live opens of one member file by kind: the
// kernel refuses (ETXTBSY, and the user's open fails) a passthrough open
// while the inode has page-cached opens, and a page-cached one while it
// has passthrough opens. An open is counted before the reply to OPEN and
// uncounted at RELEASE, so the counts are never below the kernel's.
type openKinds struct {
	mu             sync.Mutex
	cached, direct int
	// file is the decoded data file the live passthrough opens share
	// (go-fuse registers one backing file per inode while they last).
	file *os.File
}

// open counts an open given f, the member's data file if it may be read
// directly (or nil), and returns the file the open reads directly (nil:
// it is page-cached): f if no open is live and try(f) says the kernel
// takes it as a backing file, the shared file if passthrough opens are.
// The caller closes unused, f when not taken.
func (k *openKinds) open(f *os.File, try func(*os.File) bool) (direct, unused *os.File) {
	// The first passthrough open: go-fuse registers f for it, and a
	// registration that fails would turn passthrough off for the whole
	// mount (see npzview.Archive.TryBacking). Tried with no lock held;
	// the counts may change meanwhile, and are read again below.
	refused := f != nil && k.none() && !try(f)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.direct == 0 && (f == nil || k.cached > 0 || refused) {
		k.cached++
		return nil, f
	}
	if k.file == nil {
		k.file, f = f, nil
	}
	k.direct++
	return k.file, f
}

// none reports whether no open is counted.
func (k *openKinds) none() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.direct == 0 && k.cached == 0
}

// release uncounts an open of the kind open said; after the last
// passthrough open it returns the shared file, for the caller to close.
func (k *openKinds) release(direct bool) (last *os.File) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !direct {
		k.cached--
		return nil
	}
	k.direct--
	if k.direct == 0 {
		last, k.file = k.file, nil
	}
	return last
}

var (
	_ gofs.NodeOpener    = (*memberNode)(nil)
	_ gofs.NodeGetattrer = (*memberNode)(nil)
	_ gofs.NodeFlusher   = (*memberNode)(nil)
)

// Flush: see fileNode.Flush.
func (n *memberNode) Flush(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	n.tree.Metrics.observe("flush", time.Now())
	return syscall.ENOSYS
}

func (n *memberNode) path() string { return n.dir.path() + "/" + n.member.Name }

func (n *memberNode) attr(out *fuse.Attr) {
	e := n.dir.archive
	e.size = n.member.Size
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
	if h := n.openDirect(ctx); h != nil {
		n.tree.Metrics.passthroughOpened()
		return h, 0, 0
	}
	return &memberHandle{node: n, reader: n.dir.members.Open(n.member)}, fuse.FOPEN_KEEP_CACHE, 0
}

// openDirect returns a handle through which the kernel reads the
// member's decoded file itself (FUSE passthrough: the daemon does
// nothing per read), if the view hands out that file (complete, and
// checked whole) and no page-cached open is live, or if a passthrough
// open is live (every open then must be one). Otherwise it counts a
// page-cached open and returns nil.
func (n *memberNode) openDirect(ctx context.Context) *memberDirectHandle {
	// Opened with no lock held.
	direct, unused := n.opens.open(n.dir.members.DirectFile(ctx, n.member), func(f *os.File) bool { return n.dir.members.TryBacking(f, n.member) })
	if unused != nil {
		unused.Close()
	}
	if direct == nil {
		return nil
	}
	return &memberDirectHandle{node: n, f: direct}
}

// memberDirectHandle is one passthrough open of a member file: the
// kernel reads f, the member's decoded data file, directly.
type memberDirectHandle struct {
	node *memberNode
	f    *os.File
}

var (
	_ gofs.FilePassthroughFder = (*memberDirectHandle)(nil)
	_ gofs.FileReader          = (*memberDirectHandle)(nil)
	_ gofs.FileReleaser        = (*memberDirectHandle)(nil)
)

func (h *memberDirectHandle) PassthroughFd() (int, bool) { return int(h.f.Fd()), true }

// Read serves a read the kernel sends after all (go-fuse opens a file
// page-cached when it cannot register its backing file, and registers
// none for the mount from then on): from the same file, checked whole at
// this mount.
func (h *memberDirectHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	defer h.node.tree.Metrics.observe("read", time.Now())
	h.node.dir.members.PassthroughLost()
	n, err := h.f.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return nil, h.node.tree.errno(ctx, "read", h.node.path(), err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *memberDirectHandle) Release(ctx context.Context) syscall.Errno {
	n := h.node
	if last := n.opens.release(true); last != nil {
		// The kernel holds the backing file while it needs it.
		last.Close()
	}
	n.tree.Metrics.opened(-1)
	return 0
}

// memberHandle is one open of a member file.
type memberHandle struct {
	node      *memberNode
	reader    *npzview.MemberReader
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
	held, err := h.reader.ReadHeld(ctx, dest, off)
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
	return heldReply{held}, 0
}

// heldReply is a read's answer written to the kernel from the decoded
// spans it was found in, without a copy into the request's buffer:
// go-fuse writes it with writev (Slices) and calls Done once it is
// written or dropped, which lets the spans' buffers be reused.
type heldReply struct{ held *npzview.HeldRead }

func (r heldReply) Size() int { return r.held.Len() }

func (r heldReply) Slices() ([][]byte, fuse.Status) { return r.held.Slices(), fuse.OK }

func (r heldReply) Bytes(buf []byte) ([]byte, fuse.Status) {
	if cap(buf) < r.held.Len() {
		buf = make([]byte, r.held.Len())
	}
	buf = buf[:0]
	for _, s := range r.held.Slices() {
		buf = append(buf, s...)
	}
	return buf, fuse.OK
}

func (r heldReply) Done() { r.held.Release() }

func (h *memberHandle) Release(ctx context.Context) syscall.Errno {
	h.reader.Close()
	h.node.opens.release(false)
	h.node.tree.Metrics.opened(-1)
	return 0
}

func (t *tree) memberDirAttr(archive dirEntry, out *fuse.Attr) {
	t.dirAttr(out)
	out.SetTimes(&archive.mtime, &archive.mtime, &archive.mtime)
}
