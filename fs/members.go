package fs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sync/errgroup"
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
	r := a.tree.Blocks.OpenRandom(a.object())
	defer r.Close()
	dir, err = npz.ReadDirectory(readerAt{a.tree.NPZ.life, r}, a.archive.size)
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
	// Reads of one member are scattered over the archive (a window here,
	// a window there): read-ahead would fetch what nobody asked for.
	life, end := context.WithCancel(n.tree.NPZ.life)
	h := &memberHandle{node: n, reader: n.tree.Blocks.OpenRandom(n.dir.object()), dataOff: -1, life: life, end: end}
	if n.member.Method == npz.Stored {
		off, err := n.member.DataOffset(readerAt{ctx, h.reader})
		if err != nil {
			end()
			h.reader.Close()
			return nil, 0, n.tree.errno(ctx, "open", n.path(), err)
		}
		h.dataOff = off
	}
	n.tree.Metrics.opened(1)
	return h, fuse.FOPEN_KEEP_CACHE, 0
}

// memberHandle is one open of a member file.
type memberHandle struct {
	node   *memberNode
	reader *cache.Reader
	// dataOff is where a stored member's bytes start in the archive.
	dataOff int64
	// life ends at Release: inflations that outlive the read that
	// started them (others may wait for them) stop with it.
	life context.Context
	end  context.CancelFunc
	// inflating makes concurrent reads of one span inflate it once.
	inflating singleflight.Group

	mu sync.Mutex
	// released is set by Release; inflations add to running only while
	// it is unset, so Release's Wait never races with an Add.
	released bool
	// running counts inflations, which read through reader: Release
	// waits for them before it closes reader.
	running sync.WaitGroup
	// index, once found, serves this open's reads even if the view's
	// cache lets it go.
	index *npz.Index
	// spans are the latest spans this open decoded, oldest first: the
	// kernel splits a read of one window into several requests, and its
	// read-around asks for the output around the window too, so each
	// span would otherwise be inflated again for every request touching it.
	spans     []decodedSpan
	spanBytes int64
	// dataRead is set once a read needed more than the index's head;
	// rowEnd is where the kernel stops reading past the row that read
	// fell in (0: unknown).
	dataRead bool
	rowEnd   int64
}

// decodedSpan is the content [start, stop) after an access point.
type decodedSpan struct {
	start, stop int64
	data        []byte
}

const (
	memberBlksize = 16 << 10
	// kernelOvershoot is how far past the end of what a loader touches
	// the kernel's read-ahead goes on reading: its read-ahead (256 KiB by
	// default here) plus the pages its windows are out of step by
	// (measured 264-268 KiB past a row's end with mmap_mode="r").
	kernelOvershoot = 320 << 10
	// kernelLookBehind is how far before the page the loader touches the
	// kernel's first read of a window starts: it reads around a page
	// fault, half its read-ahead before the page. Indexes put their access
	// points that far (and two pages more) before each row, so that
	// reading a window inflates from just before it.
	kernelLookBehind = 128 << 10
	pageSize         = 4096
	rowLead          = kernelLookBehind + 2*pageSize
	// heldSpanFactor bounds the decoded spans one open keeps, and the
	// length of a span worth keeping, in checkpoint spans.
	heldSpanFactor = 4
)

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
	size := h.node.member.UncompressedSize
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	p := dest[:min(int64(len(dest)), size-off)]
	var err error
	if h.dataOff >= 0 {
		var n int
		// As for a compressed member, one checkpoint span ahead.
		h.reader.Prefetch(h.dataOff+off, int64(len(p))+h.node.tree.NPZ.span)
		n, err = h.reader.ReadAt(ctx, p, h.dataOff+off)
		if err == nil && n < len(p) {
			err = fmt.Errorf("archive ended %d bytes into stored member %q", off+int64(n), h.node.member.Name)
		}
	} else {
		err = h.readDeflated(ctx, p, off)
	}
	if err != nil {
		if isStale(err) {
			h.node.dir.parent.expire()
		}
		return nil, t.errno(ctx, "read", h.node.path(), err)
	}
	return fuse.ReadResultData(p), 0
}

// readDeflated fills p with the content at off, span by span.
func (h *memberHandle) readDeflated(ctx context.Context, p []byte, off int64) error {
	end := off + int64(len(p))
	// No byte is returned before the whole member has been inflated
	// once and found to match its CRC-32: building the index does that.
	x, err := h.indexFor(ctx)
	if err != nil {
		return err
	}
	if end > x.HeadLen() {
		// Reads of the header numpy reads on open are answered by the
		// index itself; the rest need compressed bytes.
		h.prefetch(x, off, end)
	}
	maxSpan := heldSpanFactor * h.node.tree.NPZ.span
	h.mu.Lock()
	rowEnd := h.rowEnd
	h.mu.Unlock()
	// The spans a read covers are independent: inflate them in parallel.
	// Every goroutine writing into p ends before this returns: the
	// caller's buffer is not ours once it has (go-fuse reuses it for
	// another request's reply).
	g, gctx := errgroup.WithContext(ctx)
	for pos := off; pos < end; {
		start, stop := x.Span(pos)
		at, upto := pos, min(end, stop)
		dst := p[pos-off : upto-off]
		pos = upto
		// The span holding the end of the loader's window is inflated
		// only as far as the kernel will read: on average that saves
		// half a span per window.
		limit := stop
		if upto <= rowEnd && rowEnd < stop {
			limit = rowEnd
		}
		if data, ok := h.heldSpan(start, upto); ok {
			copy(dst, data[at-start:upto-start])
		} else if stop-start > maxSpan || (upto < stop && upto-start <= (stop-start)/4 && rowEnd <= upto) {
			// An outsize span (one huge deflate block) is not worth
			// keeping; a short read near the start of a span (an
			// array's header) costs less inflated alone than the
			// whole span, unless the kernel is known to read on (the
			// first read of a window starts near a span's start).
			// Inflate just what is asked.
			g.Go(func() error {
				_, err := x.ReadAt(readerAt{gctx, h.reader}, dst, at)
				return err
			})
		} else {
			g.Go(func() error {
				data, err := h.span(gctx, x, start, limit)
				if err != nil {
					return err
				}
				copy(dst, data[at-start:upto-start])
				return nil
			})
		}
	}
	return g.Wait()
}

// prefetch starts fetching the compressed bytes of the spans [off, end)
// covers and of the stretch the next requests will want. The kernel reads
// one window as a chain of requests, each sent when the one before is
// answered: fetching ahead makes that one round trip instead of one per
// request. The first read of an open (numpy opens the file for every
// sample) is the kernel reading around the page the loader touched first;
// if the member is an array whose rows are known from its .npy header,
// the fetch reaches to the end of that row, the window the loader is about
// to read, and later reads within it fetch nothing more. Otherwise, and
// for reads past that row, it reaches one span further.
func (h *memberHandle) prefetch(x *npz.Index, off, end int64) {
	from, _ := x.Span(off)
	_, to := x.Span(end - 1)
	h.mu.Lock()
	first, rowEnd := !h.dataRead, h.rowEnd
	h.dataRead = true
	h.mu.Unlock()
	if first {
		if l, err := npz.ParseNPYHeader(x.Head()); err == nil {
			// The page the loader touched is the middle one; the row
			// it starts may begin up to a page after the page's start.
			touched := off + (end-off)/2 + pageSize - 1
			if row := (touched - l.DataOffset) / l.RowBytes; touched >= l.DataOffset && row < l.Rows {
				// The kernel reads on a little past the row's end.
				rowEnd = min(l.DataOffset+(row+1)*l.RowBytes+kernelOvershoot, x.Size())
				h.mu.Lock()
				h.rowEnd = rowEnd
				h.mu.Unlock()
			}
		}
	}
	// The window: up to the end of the span holding rowEnd, fetched
	// with the first read.
	var window int64
	if rowEnd > 0 {
		_, window = x.Span(rowEnd - 1)
	}
	if first {
		to = max(to, window)
	}
	if end > window && to < x.Size() {
		_, to = x.Span(to)
	}
	h.reader.Prefetch(x.SourceRange(from, to))
}

// indexFor returns the member's index: the one this open holds, the
// view's, or a newly built one.
func (h *memberHandle) indexFor(ctx context.Context) (*npz.Index, error) {
	h.mu.Lock()
	x := h.index
	h.mu.Unlock()
	if x != nil {
		return x, nil
	}
	x, err := h.node.tree.NPZ.index(ctx, h.node.tree.Blocks, h.node.dir.object(), h.node.member)
	if err != nil {
		return nil, err
	}
	h.keepIndex(x)
	return x, nil
}

func (h *memberHandle) keepIndex(x *npz.Index) {
	h.mu.Lock()
	h.index = x
	h.mu.Unlock()
}

// span returns the content [start, stop) after an access point (stop at
// most the next one), inflating it unless this open holds it. Concurrent
// requests for one span inflate it once, in the background: a request
// that is interrupted stops waiting, and the others still get the span.
func (h *memberHandle) span(ctx context.Context, x *npz.Index, start, stop int64) ([]byte, error) {
	if data, ok := h.heldSpan(start, stop); ok {
		return data, nil
	}
	key := strconv.FormatInt(start, 10) + "-" + strconv.FormatInt(stop, 10)
	inflated := h.inflating.DoChan(key, func() (any, error) { return h.inflate(x, start, stop) })
	select {
	case r := <-inflated:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.([]byte), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// inflate inflates [start, stop) into a buffer of its own and holds it.
// A failure is not held: the next read tries again.
func (h *memberHandle) inflate(x *npz.Index, start, stop int64) ([]byte, error) {
	h.mu.Lock()
	if h.released {
		h.mu.Unlock()
		return nil, errHandleReleased
	}
	h.running.Add(1)
	h.mu.Unlock()
	defer h.running.Done()
	if data, ok := h.heldSpan(start, stop); ok { // inflated since the caller looked
		return data, nil
	}
	data := make([]byte, stop-start)
	if _, err := x.ReadAt(readerAt{h.life, h.reader}, data, start); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.spans = append(h.spans, decodedSpan{start: start, stop: stop, data: data})
	h.spanBytes += stop - start
	for h.spanBytes > heldSpanFactor*h.node.tree.NPZ.span && len(h.spans) > 1 {
		h.spanBytes -= h.spans[0].stop - h.spans[0].start
		h.spans = h.spans[1:]
	}
	return data, nil
}

// errHandleReleased is an inflation that starts after the file was closed.
var errHandleReleased = errors.New("member file closed")

// heldSpan returns the content from the access point at start on, if
// this open has it inflated at least up to upto.
func (h *memberHandle) heldSpan(start, upto int64) ([]byte, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, s := range h.spans {
		if s.start == start && s.stop >= upto {
			// Most recently used last.
			h.spans = append(append(h.spans[:i:i], h.spans[i+1:]...), s)
			return s.data, true
		}
	}
	return nil, false
}

func (h *memberHandle) Release(ctx context.Context) syscall.Errno {
	// Inflations still running read through the reader: stop them, and
	// close the reader once they have ended.
	h.mu.Lock()
	h.released = true
	h.mu.Unlock()
	h.end()
	h.running.Wait()
	h.reader.Close()
	h.node.tree.Metrics.opened(-1)
	return 0
}

func (t *tree) memberDirAttr(archive dirEntry, out *fuse.Attr) {
	t.dirAttr(out)
	out.SetTimes(&archive.mtime, &archive.mtime, &archive.mtime)
}
