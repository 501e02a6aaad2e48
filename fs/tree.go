// Package fs is bgbfs's FUSE node tree: directories from the listing of an
// S3 prefix, files whose reads go through the cache package. It never
// changes anything in S3 and refuses every mutating call with EROFS.
package fs

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npzview"
	"github.com/bgbfs/bgbfs/s3backend"
)

// Indefinite as a MetadataTTL keeps listings until unmount.
const Indefinite time.Duration = -1

// kernelForever is what the kernel is told for "cache indefinitely".
const kernelForever = 365 * 24 * time.Hour

// Config is what the tree needs from the command line and the layers below.
type Config struct {
	// Lister lists the bucket; Blocks reads objects.
	Lister s3backend.ObjectStore
	Blocks *cache.BlockCache
	// Prefix is the key prefix shown at the mount root: "" or ends in "/".
	Prefix      string
	UID, GID    uint32
	FileMode    uint32
	DirMode     uint32
	MetadataTTL time.Duration // Indefinite or > 0
	Logger      *slog.Logger
	// RootListing, if non-nil, is the first (and only) page of the root's
	// listing, fetched while checking that the prefix is readable.
	RootListing *s3backend.ListPage
	// Limit makes the smoke-test view; the zero Limit shows everything.
	Limit Limit
	// Metrics, if set, records FUSE operations.
	Metrics *Metrics
	// ListingMemory bounds the memory kept for directory listings; 0
	// means DefaultListingMemory. The listing in use is kept even when it
	// alone is larger.
	ListingMemory int64
	// NPZ, if set, shows the members of every .npz archive as files in
	// a NAME.npz.d directory beside it.
	NPZ *npzview.View
	// ReadTimeout bounds how long a read waits for S3, and each page of
	// a directory's listing; past it the reader gets EIO. 0 means no
	// bound but the S3 client's attempts.
	ReadTimeout time.Duration
}

// tree is the state shared by every node of one mount.
type tree struct {
	Config
	mountTime time.Time
	// warned remembers hidden keys already logged, so each is logged once
	// (while remembered).
	warned warnedSet
	// listings keeps the listing state of directories, by key prefix.
	listings listingCache
}

// NewRoot returns the root node of a mount.
func NewRoot(cfg Config) gofs.InodeEmbedder {
	t := &tree{Config: cfg, mountTime: time.Now()}
	t.listings.budget = cfg.ListingMemory
	root := t.newDirNode(cfg.Prefix)
	if cfg.RootListing != nil && cfg.RootListing.NextContinuationToken == "" {
		root.installListing(*cfg.RootListing, t.mountTime)
	}
	return root
}

// NewMountOptions returns the go-fuse options for a mount of this tree.
// source names the mount in the mount table, as "s3://bucket/prefix/".
func NewMountOptions(cfg Config, source string, allowOther bool, logger *slog.Logger) *gofs.Options {
	ttl := cfg.MetadataTTL
	if ttl == Indefinite {
		ttl = kernelForever
	}
	// No NegativeTimeout: the kernel would keep a missing name for a
	// whole TTL from the lookup, not from the listing that answered it.
	// Missing names are answered from the listing without a request.
	return &gofs.Options{
		EntryTimeout: &ttl,
		AttrTimeout:  &ttl,
		// Modes come from --file-mode/--dir-mode exactly, 0 included.
		NullPermissions: true,
		UID:             cfg.UID,
		GID:             cfg.GID,
		MountOptions: fuse.MountOptions{
			FsName:     fsName(source),
			Name:       "bgbfs",
			AllowOther: allowOther,
			// ro: the kernel refuses writes before they reach us.
			// default_permissions: the kernel enforces the modes shown.
			Options:      []string{"ro", "default_permissions"},
			MaxReadAhead: 128 << 10,
			MaxWrite:     1 << 20,
			// Room for the kernel to keep many read-ahead requests in flight.
			MaxBackground: 64,
			// 1 MiB reads need a plain read path; splice caps them.
			DisableSplice: true,
			Logger:        slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
		},
	}
}

func (t *tree) warnHidden(h hiddenKey) {
	if !t.warned.add(h.key) {
		return
	}
	t.Logger.Warn("key hidden: it cannot be shown as a file name", "key", h.key, "reason", h.reason)
}

// remaining is how long the kernel may keep what a listing fetched at
// fetched says.
func (t *tree) remaining(fetched time.Time) time.Duration {
	if t.MetadataTTL == Indefinite {
		return kernelForever
	}
	left := time.Until(fetched.Add(t.MetadataTTL))
	// Zero would mean "use the mount default" to go-fuse.
	return max(left, time.Millisecond)
}

func (t *tree) fileAttr(e dirEntry, out *fuse.Attr) {
	out.Mode = syscall.S_IFREG | t.FileMode
	out.Size = uint64(e.size)
	out.Nlink = 1
	out.Uid, out.Gid = t.UID, t.GID
	out.SetTimes(&e.mtime, &e.mtime, &e.mtime)
	out.Blksize = 1 << 20
	out.Blocks = (uint64(e.size) + 511) / 512
}

func (t *tree) dirAttr(out *fuse.Attr) {
	out.Mode = syscall.S_IFDIR | t.DirMode
	out.Nlink = 2
	out.Uid, out.Gid = t.UID, t.GID
	out.SetTimes(&t.mountTime, &t.mountTime, &t.mountTime)
	out.Blksize = 4096
}

// errno turns a lower layer's error into what the kernel should see,
// logging the cause: EIO tells a reader nothing, the log must.
func (t *tree) errno(ctx context.Context, op, path string, err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case context.Cause(ctx) == errReadTimeout:
		t.Logger.Error("read timed out: no answer from S3 within --read-timeout", "op", op, "path", path, "read_timeout", t.ReadTimeout.String(), "err", err)
		return syscall.EIO
	case ctx.Err() != nil:
		t.Logger.Debug("request interrupted", "op", op, "path", path, "err", err)
		return syscall.EINTR
	case isStale(err):
		t.Logger.Warn("object changed while open", "op", op, "path", path, "err", err)
		return syscall.ESTALE
	}
	t.Logger.Error("request failed", "op", op, "path", path, "err", err)
	return syscall.EIO
}

// fsName is the mount's source as the mount table can hold it: fusermount3
// splits options at commas, so a source with one is not shown.
func fsName(source string) string {
	if source == "" || strings.ContainsAny(source, ", \t\n\\") {
		return "bgbfs"
	}
	return source
}

// warnedGeneration is how many hidden keys one generation of warnedSet
// holds; the set holds at most two generations.
const warnedGeneration = 1024

// warnedSet remembers hidden keys already logged, so that each is logged
// once per listing rather than on every refresh; it forgets the oldest
// half when full, and a key forgotten is logged again.
type warnedSet struct {
	mu             sync.Mutex
	recent, oldest map[string]struct{}
}

// add records key and reports whether it was not remembered already.
func (w *warnedSet) add(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.recent[key]; ok {
		return false
	}
	if _, ok := w.oldest[key]; ok {
		return false
	}
	if w.recent == nil || len(w.recent) >= warnedGeneration {
		w.oldest, w.recent = w.recent, make(map[string]struct{}, warnedGeneration)
	}
	w.recent[key] = struct{}{}
	return true
}
