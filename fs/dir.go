package fs

import (
	"context"
	"errors"
	"slices"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/bgbfs/bgbfs/s3backend"
)

// dirNode is a directory: a key prefix. Its children come from one
// delimited listing, kept for the metadata TTL in the tree's dirState for
// the prefix (see listingCache), so that it outlives the node when the
// kernel forgets it.
type dirNode struct {
	gofs.Inode
	readOnlyDir
	tree   *tree
	prefix string // full key prefix, "" or ending in "/"
}

// newDirNode returns a node for the directory at prefix, sharing the
// listing state of every other node for it.
func (t *tree) newDirNode(prefix string) *dirNode {
	return &dirNode{tree: t, prefix: prefix}
}

// state returns the directory's listing state, as the tree keeps it.
func (d *dirNode) state() *dirState { return d.tree.listings.get(d.tree, d.prefix) }

func (d *dirNode) getListing(ctx context.Context) (*listing, error) {
	return d.state().getListing(ctx)
}

// expire makes the next access list the directory again, after a read
// found that an object changed under an open file.
func (d *dirNode) expire() { d.state().expire() }

func (d *dirNode) installListing(page s3backend.ListPage, at time.Time) {
	st := d.state()
	st.mu.Lock()
	defer st.mu.Unlock()
	st.installListingLocked([]s3backend.ListPage{page}, false, at)
}

var (
	_ gofs.NodeLookuper  = (*dirNode)(nil)
	_ gofs.NodeReaddirer = (*dirNode)(nil)
	_ gofs.NodeGetattrer = (*dirNode)(nil)
	_ gofs.NodeStatfser  = (*dirNode)(nil)
)

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	defer d.tree.Metrics.observe("lookup", time.Now())
	st := d.state()
	l, err := st.getListing(ctx)
	if err != nil {
		return nil, d.tree.errno(ctx, "lookup", d.prefix+name, err)
	}
	e, ok, err := st.find(ctx, l, name)
	if err != nil {
		return nil, d.tree.errno(ctx, "lookup", d.prefix+name, err)
	}
	var archive dirEntry
	if !ok && d.tree.NPZ != nil {
		// NAME.npz.d of a visible archive, unless a real key has the name.
		if a, isMemberDir := archiveOf(name); isMemberDir && len(name) <= maxNameLen {
			archive, ok, err = st.find(ctx, l, a)
			if err != nil {
				return nil, d.tree.errno(ctx, "lookup", d.prefix+name, err)
			}
			ok = ok && !archive.isDir
		}
	}
	if !ok {
		return nil, syscall.ENOENT
	}
	ttl := st.kernelTTL(l)
	out.SetEntryTimeout(ttl)
	out.SetAttrTimeout(ttl)
	switch {
	case archive.key != "":
		d.tree.memberDirAttr(archive, &out.Attr)
		return d.memberDirChild(ctx, name, archive), 0
	case e.isDir:
		d.tree.dirAttr(&out.Attr)
	default:
		d.tree.fileAttr(e, &out.Attr)
	}
	return d.child(ctx, e), 0
}

// memberDirChild returns the inode of the member directory name of
// archive: the existing one while it shows the same archive version.
func (d *dirNode) memberDirChild(ctx context.Context, name string, archive dirEntry) *gofs.Inode {
	if old := d.GetChild(name); old != nil {
		if n, ok := old.Operations().(*memberDirNode); ok && n.archive.version().Same(archive.version()) {
			return old
		}
	}
	return d.NewInode(ctx, d.tree.newMemberDirNode(d, archive), gofs.StableAttr{Mode: syscall.S_IFDIR})
}

// child returns the inode for an entry: the existing one while it shows
// the same object version, else a new one. A new version gets a new inode, so
// the kernel never serves a page cached from the old version.
func (d *dirNode) child(ctx context.Context, e dirEntry) *gofs.Inode {
	if old := d.GetChild(e.name); old != nil {
		switch n := old.Operations().(type) {
		case *dirNode:
			if e.isDir {
				return old
			}
		case *fileNode:
			if !e.isDir && n.entry.version().Same(e.version()) {
				return old
			}
		}
	}
	if e.isDir {
		return d.NewInode(ctx, d.tree.newDirNode(d.prefix+e.name+"/"), gofs.StableAttr{Mode: syscall.S_IFDIR})
	}
	return d.NewInode(ctx, &fileNode{tree: d.tree, parent: d, entry: e}, gofs.StableAttr{Mode: syscall.S_IFREG})
}

func (d *dirNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	defer d.tree.Metrics.observe("readdir", time.Now())
	l, err := d.getListing(ctx)
	if err != nil {
		return nil, d.tree.errno(ctx, "readdir", d.prefix, err)
	}
	// The kernel shows "." and ".." only if the filesystem lists them.
	out := make([]fuse.DirEntry, 0, len(l.entries)+2)
	out = append(out, fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR}, fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR})
	memberDirs := false
	for _, e := range l.entries {
		mode := uint32(syscall.S_IFREG)
		if e.isDir {
			mode = syscall.S_IFDIR
		}
		out = append(out, fuse.DirEntry{Name: e.name, Mode: mode})
		if d.tree.NPZ != nil && !e.isDir && strings.HasSuffix(e.name, ".npz") && len(e.name)+len(memberDirSuffix) <= maxNameLen {
			if _, taken := l.lookup(e.name + memberDirSuffix); !taken {
				out = append(out, fuse.DirEntry{Name: e.name + memberDirSuffix, Mode: syscall.S_IFDIR})
				memberDirs = true
			}
		}
	}
	if memberDirs {
		// NAME.npz.d sorts after names like NAME.npz-1 and NAME.npz.bak
		// that may come between it and NAME.npz: keep byte-wise order.
		slices.SortFunc(out[2:], func(a, b fuse.DirEntry) int { return strings.Compare(a.Name, b.Name) })
	}
	return gofs.NewListDirStream(out), 0
}

func (d *dirNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.tree.dirAttr(&out.Attr)
	return 0
}

func (d *dirNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = maxNameLen
	return 0
}

func isStale(err error) bool { return errors.Is(err, s3backend.ErrStale) }
