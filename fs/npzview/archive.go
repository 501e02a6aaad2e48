package npzview

import (
	"context"
	"fmt"
	"sync"

	"golang.org/x/sync/singleflight"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/s3backend"
)

// Member is one member file of an archive.
type Member struct {
	Name string
	// Size is the member's content size (uncompressed).
	Size   int64
	member npz.Member
}

// Archive is the member directory of one version of one archive: the
// members it shows as files, and readers of them. Its members never
// change (a new version gets a new Archive). It is safe for concurrent
// use.
type Archive struct {
	view *View
	obj  s3backend.Version
	// hidden is told each member that cannot be shown as a file, when the
	// directory is read.
	hidden func(name, reason string)

	// loading makes concurrent first calls share one read of the
	// directory; none holds a lock while it is read.
	loading singleflight.Group

	mu      sync.Mutex
	members []Member
	// err is a malformed directory: the archive version cannot change.
	err error
}

// Archive returns the member directory of archive obj. It reads nothing
// until asked for the members.
func (v *View) Archive(obj s3backend.Version, hidden func(name, reason string)) *Archive {
	return &Archive{view: v, obj: obj, hidden: hidden}
}

// Members returns the archive's members, in the zip directory's order,
// reading the directory the first time (its tail, one block or two
// through the cache) and telling hidden about the members it cannot
// show. A caller whose request is interrupted stops waiting for it at
// once.
func (a *Archive) Members(ctx context.Context) ([]Member, error) {
	a.mu.Lock()
	members, err := a.members, a.err
	a.mu.Unlock()
	if members != nil || err != nil {
		return members, err
	}
	return cache.WaitShared(ctx, &a.loading, "", a.load)
}

// Open returns a reader of member m; the caller closes it.
func (a *Archive) Open(m Member) *MemberReader {
	return newMemberReader(a.view, a.obj, m.member)
}

// load reads the directory for Members. It does not stop when the
// request that started it is interrupted: others may be waiting.
func (a *Archive) load() ([]Member, error) {
	a.mu.Lock()
	members, err := a.members, a.err
	a.mu.Unlock()
	if members != nil || err != nil { // loaded since the caller looked
		return members, err
	}
	v := a.view
	if dir := v.heldDirectory(a.obj); dir != nil {
		return a.hold(dir, nil), nil
	}
	dir := v.savedArchive(a.obj)
	if dir == nil {
		r := v.blocks.OpenRandom(a.obj)
		defer r.Close()
		dir, err = npz.ReadDirectory(s3backend.BindContext(v.life.Context(), r), a.obj.Size)
	}
	if err != nil {
		err = fmt.Errorf("reading the zip directory of %q: %w", a.obj.Key, err)
		if isDataError(err) {
			a.hold(nil, err)
		}
		return nil, err
	}
	for _, u := range dir.Unusable {
		a.hidden(u.Name, u.Err.Error())
	}
	members = a.hold(dir, nil)
	v.holdDirectory(a.obj, dir)
	return members, nil
}

// hold puts in memory the members of dir, or the error that makes it
// unreadable.
func (a *Archive) hold(dir *npz.Directory, err error) []Member {
	var members []Member
	if dir != nil {
		members = make([]Member, len(dir.Members))
		for i, m := range dir.Members {
			members[i] = Member{Name: m.Name, Size: m.UncompressedSize, member: m}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.members, a.err = members, err
	return members
}
