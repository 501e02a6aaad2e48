package npzview

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	iofs "io/fs"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/s3backend"
)

// DecodedFiles is where the view keeps what reads of compressed members
// returned, decoded: a later read of the same bytes (the next epoch, or
// the next mount) reads them from local disk, with no fetch and no
// inflating. Only a local dir keeps them (an s3:// dir would make every
// read a GET).
type DecodedFiles struct {
	Dir *cache.Dir
	// Source names the store the archives are read from (its endpoint
	// and bucket), as the disk tier's does.
	Source string
}

// decodedArea is where in a cache dir the decoded members are, as object
// pairs: a complete member's data file is the member, which the kernel
// may read directly. (Files of the single-file layout, in "npz/", are
// never read: they go idle and are trimmed.)
const decodedArea = cache.DecodedArea + "npz-pairs/"

// decodedUnit is the unit a decoded member is kept in: a page. The
// kernel reads a member file in pages, from where the loader touched it,
// not in the dir's 64 KiB units: with those, a read would keep only the
// units it covers whole, and its neighbours the ones they cover, so that
// the units between reads (at both ends of every window) would never be
// kept.
const decodedUnit = cache.MinUnitSize

// DecodedWriteBacklog bounds the copies of decoded bytes waiting to be
// written (memory beside --cache-size, as the disk tier's backlog), and
// decodedWriters the files written at once.
const (
	DecodedWriteBacklog = 64 << 20
	decodedWriters      = 4
)

// decodedVerifiers is how many checks of whole members run at once
// (mostly waiting for the disk: they read around the page cache).
const (
	decodedVerifiers = 4
	// checkWait bounds how long an open waits for its member's check.
	checkWait = time.Second
	// identityRecheck is how often an open looks whether the checked
	// file is still the pair's (two stats): in between, opens get the
	// checked file, held open, whatever was done to the name.
	identityRecheck = 10 * time.Second
	// recountIdle is how long an open of a member this mount counts as
	// incomplete, and has written nothing to since it last read the
	// member's records, waits before reading them again: units written
	// by another process sharing the dir are not counted otherwise.
	recountIdle = time.Minute
)

// decodedStore writes and reads the decoded members of one view. A
// member's file is a cache.ObjectFile in units of a page, named by a hash
// of the store, the archive's key, version tag (ETag) and size, and the
// member's name, CRC-32 and size: a file of another version of the
// archive is never looked at. Each unit is checked against its CRC-32C
// on every read; a unit that fails is dropped, logged and counted, and
// the read inflates its bytes again (which writes them again). Only bytes
// inflated through an index are written: building the index inflated the
// whole member and checked it against its CRC-32.
type decodedStore struct {
	files  DecodedFiles
	writes *cache.WriteBehind
	logger *slog.Logger

	// direct is set while complete members' data files, checked whole,
	// are handed out (DirectFile).
	direct atomic.Bool
	// backing registers files with the kernel (TryBacking), if set;
	// backingRefused is set once a registration failed (logged once).
	backing        atomic.Pointer[BackingFiles]
	backingRefused atomic.Bool
	// verifiers runs the checks of whole members, decodedVerifiers at
	// once; the others wait their turn.
	verifiers errgroup.Group
	mu        sync.Mutex
	// checks is what this mount knows of the members' decoded files:
	// one entry per member opened while direct is set, for the mount's
	// life. Not bounded: an entry without a held file is a few hundred
	// bytes (a few MB for the bucket's ~13,000 compressed members), one
	// with a file is bounded by heldMax, and an entry dropped would cost
	// a read of the member's records at its next open.
	checks map[cache.ObjectID]*memberCheck
	// held is the checked files held open and the checks under way
	// (each may hold one), under mu; heldMax bounds it, so that the
	// descriptors held stay within what the process may open (the
	// bucket has ~13,000 compressed members). A member past it is
	// served by the daemon, logged once (heldFull).
	held, heldMax int
	heldFull      bool
	// recountIdle is recountIdle, or what a test sets.
	recountIdle time.Duration
	// startCheck starts a check that beginCheckLocked marked (the view's
	// startVerify).
	startCheck func(obj s3backend.Version, m npz.Member, id cache.ObjectID, c *memberCheck)

	hits, hitBytes, bytesWritten, writesSkipped, damaged, verified, verifyFailed, stampsTrusted atomic.Int64
}

// memberCheck is what a mount knows of one member's decoded file, under
// the store's mu: how many of its units are missing, whether it checked
// the data file whole, and that file, held open while it is the pair's
// (its inode number cannot be reused meanwhile, so a file removed and
// made anew under the name is told apart, and checked again); whether a
// check is running.
//
// The units missing are learned from the records once, at the first
// open, then counted down as this mount writes units: an open of a
// member not known complete reads nothing and waits for nothing. The
// count may say complete too early (two writers of one unit at once, a
// unit cleared as damaged, the pair trimmed and made anew): the check
// then reads the records, and the count starts again from them. It may
// say incomplete too long (units written by another process): an open
// reads the records again once this mount has written nothing to the
// member for recountIdle.
type memberCheck struct {
	// counted is set once missing is known; missing is the units the
	// data file lacks, as far as this mount knows (<= 0: complete).
	counted bool
	missing int64
	// reading is set while the records are read (a count, or a check),
	// and wroteDuring counts the units this mount wrote meanwhile: the
	// read may or may not have seen them, so they are taken off its
	// result (the count errs towards complete, which a check corrects).
	reading     bool
	wroteDuring int64
	// countedAt is when the records were last read, wroteSince whether
	// this mount wrote a unit since.
	countedAt  time.Time
	wroteSince bool

	verified bool
	file     *os.File
	data     cache.FileIdentity
	// taken is the identity of the checked file the kernel took as a
	// backing file once (TryBacking), or zero: it takes the same file
	// again, so the try is not repeated on every open.
	taken    cache.FileIdentity
	checking bool
	// identityAt is when the name was last found to be the checked
	// file's.
	identityAt time.Time
	// done is closed when the check under way ends.
	done chan struct{}
}

// learned records what a read of the member's records found: missing
// units (or err, if it could not tell). Called with s.mu held.
func (c *memberCheck) learned(missing int64, err error) {
	c.reading, c.countedAt, c.wroteSince = false, time.Now(), false
	c.counted, c.missing = err == nil, missing-c.wroteDuring
	c.wroteDuring = 0
}

// wrote counts units this mount wrote to the member's file. Called with
// s.mu held.
func (c *memberCheck) wrote(units int64) {
	c.wroteSince = true
	if c.reading {
		c.wroteDuring += units
	}
	c.missing -= units
}

// needsCount reports whether an open should read the member's records
// (see memberCheck), idle being recountIdle. Called with s.mu held.
func (c *memberCheck) needsCount(idle time.Duration) bool {
	if c.reading || c.checking {
		return false
	}
	if !c.counted {
		return c.countedAt.IsZero() || time.Since(c.countedAt) >= idle
	}
	return c.missing > 0 && !c.wroteSince && time.Since(c.countedAt) >= idle
}

func newDecodedStore(files DecodedFiles, logger *slog.Logger) *decodedStore {
	s := &decodedStore{files: files, writes: cache.NewWriteBehind(DecodedWriteBacklog, decodedWriters), logger: logger, checks: map[cache.ObjectID]*memberCheck{},
		heldMax: heldFilesMax(), recountIdle: recountIdle}
	s.verifiers.SetLimit(decodedVerifiers)
	return s
}

// id names the decoded content of member m of archive obj.
func (s *decodedStore) id(obj s3backend.Version, m npz.Member) cache.ObjectID {
	return cache.NewObjectID("npz-member", s.files.Source, obj.Key, obj.Tag(), strconv.FormatInt(obj.Size, 10),
		m.Name, strconv.FormatUint(uint64(m.CRC32), 16), strconv.FormatInt(m.UncompressedSize, 10))
}

// damage counts and logs damage found in a decoded file.
func (s *decodedStore) damage(obj s3backend.Version, m npz.Member, err error) {
	s.damaged.Add(1)
	s.logger.Warn("cache dir: damaged decoded member dropped; inflating it again", "archive", obj.Key, "member", m.Name, "dir", s.files.Dir, "reason", err)
}

// readDecoded fills p with the content at off from the member's decoded
// file, if it holds every unit p touches, and reports whether it did.
func (r *MemberReader) readDecoded(p []byte, off int64) bool {
	s := r.view.decoded
	if s == nil {
		return false
	}
	size := r.member.UncompressedSize
	end := off + int64(len(p))
	from := off / decodedUnit * decodedUnit
	to := min((end+decodedUnit-1)/decodedUnit*decodedUnit, size)
	d := r.decodedFile()
	if d == nil {
		return false
	}
	defer r.releaseDecodedFile(d)
	f := d.f
	buf := p
	if from != off || to != end {
		buf = make([]byte, to-from)
	}
	held, err := f.ReadAt(buf, from)
	if !held {
		if err == nil && s.logger.Enabled(context.Background(), slog.LevelDebug) {
			r.logDecodedMiss(f, from, to, off, end)
		}
		if errors.Is(err, cache.ErrDamaged) {
			s.damage(r.obj, r.member, err)
		}
		// Opened again next time: the file may be made anew meanwhile
		// (when it was damaged, or another process removed it).
		r.dropDecodedFile(d)
		return false
	}
	if len(buf) != len(p) {
		copy(p, buf[off-from:])
	}
	s.hits.Add(1)
	s.hitBytes.Add(int64(len(p)))
	return true
}

// sharedDecoded is a member's decoded file, open for reading, shared by
// the reads of one open: it is closed once the last read using it has
// released it (another read may drop it from the open meanwhile, and a
// read of a closed file would pause the dir's reads). users counts the
// reads using it and the open's own reference, under the reader's mu.
type sharedDecoded struct {
	f     *cache.ObjectFile
	users int
}

// logDecodedMiss logs which units of [from, to) the decoded file lacks,
// for a read of [off, end): a later epoch that still fetches shows where
// the kernel read what an earlier one did not.
func (r *MemberReader) logDecodedMiss(f *cache.ObjectFile, from, to, off, end int64) {
	held, err := f.HeldUnits(from, int(to-from))
	if err != nil {
		return
	}
	var missing []int64
	for i, ok := range held {
		if !ok {
			missing = append(missing, from/decodedUnit+int64(i))
		}
	}
	r.view.decoded.logger.Debug("decoded member: read not held whole; inflating it", "archive", r.obj.Key, "member", r.member.Name,
		"off", off, "end", end, "units_missing", fmt.Sprint(missing), "unit", decodedUnit)
}

// decodedFile returns the member's decoded file, open for reading, or
// nil if the dir holds none; the caller releases it.
func (r *MemberReader) decodedFile() *sharedDecoded {
	r.mu.Lock()
	if d := r.decoded; d != nil {
		d.users++
		r.mu.Unlock()
		return d
	}
	r.mu.Unlock()
	s := r.view.decoded
	id := s.id(r.obj, r.member)
	f, err := s.files.Dir.OpenObjectPair(id.Name(decodedArea), id, r.member.UncompressedSize, decodedUnit)
	if err != nil {
		if errors.Is(err, cache.ErrDamaged) {
			s.damage(r.obj, r.member, err)
		}
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if d := r.decoded; d != nil || r.life.Closed() { // another read opened it first
		f.Close()
		if d != nil {
			d.users++
		}
		return d
	}
	r.decoded = &sharedDecoded{f: f, users: 2}
	return r.decoded
}

// releaseDecodedFile ends a use of d, closing it after the last.
func (r *MemberReader) releaseDecodedFile(d *sharedDecoded) {
	r.mu.Lock()
	d.users--
	last := d.users == 0
	r.mu.Unlock()
	if last {
		d.f.Close()
	}
}

// dropDecodedFile makes the next read open the member's decoded file
// anew, if d is the one the open holds.
func (r *MemberReader) dropDecodedFile(d *sharedDecoded) {
	r.mu.Lock()
	held := r.decoded == d
	if held {
		r.decoded = nil
	}
	r.mu.Unlock()
	if held {
		r.releaseDecodedFile(d)
	}
}

// keepDecoded writes, in the background, the whole units of p, the
// content at off inflated through the member's index (checked), to the
// member's decoded file. p is copied before it returns.
func (r *MemberReader) keepDecoded(p []byte, off int64) {
	if s := r.view.decoded; s != nil {
		s.keep(r.obj, r.member, p, off)
	}
}

// keep writes, in the background, the whole units of p, the content of
// member m of obj at off, checked, to the member's decoded file. p is
// copied before it returns.
func (s *decodedStore) keep(obj s3backend.Version, m npz.Member, p []byte, off int64) {
	size := m.UncompressedSize
	end := off + int64(len(p))
	from := (off + decodedUnit - 1) / decodedUnit * decodedUnit
	to := end / decodedUnit * decodedUnit
	if end == size {
		to = end
	}
	if to <= from {
		return
	}
	dir := s.files.Dir
	if dir.WriteErr() != nil || !dir.TakesBlocks() {
		s.writesSkipped.Add(1)
		return
	}
	id := s.id(obj, m)
	taken := s.writes.Start([][]byte{p[from-off : to-off]}, func(data []byte, _ int) {
		f, err := dir.CreateObjectPair(id.Name(decodedArea), id, size, decodedUnit)
		if err != nil {
			s.writesSkipped.Add(1)
			return
		}
		defer f.Close()
		n, err := f.WriteAt(data, from)
		if err != nil {
			s.writesSkipped.Add(1)
		}
		s.bytesWritten.Add(n)
		if n > 0 {
			// Only the last unit may be short.
			s.noteWritten(obj, m, id, (n+decodedUnit-1)/decodedUnit)
		}
	})
	if taken == 0 {
		s.writesSkipped.Add(1)
	}
}

// keepHead writes the start of member m of obj (numpy reads it on every
// open, which the kernel asks for before the loader's window), inflated
// through its index x, unless the dir holds it: the head is read on
// opens without the index at hand, not checked then, and not written. It
// is called once the index is at hand (built, or loaded from the dir),
// and runs in the background under the view's lifetime, through a reader
// of its own.
func (v *View) keepHead(obj s3backend.Version, m npz.Member, x *npz.Index) {
	s := v.decoded
	if s == nil || !v.life.Start(1) {
		return
	}
	go func() {
		defer v.life.Done()
		head := make([]byte, min(headRegion, m.UncompressedSize))
		id := s.id(obj, m)
		if f, err := s.files.Dir.OpenObjectPair(id.Name(decodedArea), id, m.UncompressedSize, decodedUnit); err == nil {
			held, _ := f.ReadAt(head, 0)
			f.Close()
			if held {
				return
			}
		}
		if h := v.savedHead(obj, m); len(h) >= len(head) {
			// The archive file bgbfs index wrote kept it, checked
			// against the index: nothing to fetch or inflate.
			s.keep(obj, m, h[:len(head)], 0)
			return
		}
		src := v.blocks.OpenRandom(obj).NotKeptOnDisk(m.HeaderOffset, m.CompressedSize)
		defer src.Close()
		_, inflated, err := x.ReadAtInflating(s3backend.BindContext(v.life.Context(), src), head, 0, v.buffers)
		v.inflated.Add(inflated)
		if err == nil || errors.Is(err, io.EOF) {
			s.keep(obj, m, head, 0)
		}
	}()
}

// DecodedStats is a snapshot of the decoded members' counters.
type DecodedStats struct {
	// Hits counts reads of member files answered from decoded files,
	// HitBytes their bytes.
	Hits, HitBytes int64
	// BytesWritten counts decoded bytes written to the dir;
	// WritesSkipped the writes not made (backlog full, dir full or
	// paused); Damaged the decoded files and units found damaged.
	BytesWritten, WritesSkipped, Damaged int64
	// Verified counts complete decoded files checked whole against
	// their member's CRC-32 (then handed out by DirectFile),
	// VerifyFailed those that failed (removed; also in Damaged);
	// StampsTrusted those of Verified not read again: a mount of this
	// boot checked them, and they have not changed since.
	Verified, VerifyFailed, StampsTrusted int64
}

func (s *decodedStore) stats() DecodedStats {
	if s == nil {
		return DecodedStats{}
	}
	return DecodedStats{Hits: s.hits.Load(), HitBytes: s.hitBytes.Load(), BytesWritten: s.bytesWritten.Load(), WritesSkipped: s.writesSkipped.Load(), Damaged: s.damaged.Load(),
		Verified: s.verified.Load(), VerifyFailed: s.verifyFailed.Load(), StampsTrusted: s.stampsTrusted.Load()}
}

// wait waits for the writes started so far.
func (s *decodedStore) wait() {
	if s != nil {
		s.writes.Wait()
	}
}

// SetDirectFiles turns on (or off) DirectFile: the mount hands complete
// decoded members to the kernel to read directly (FUSE passthrough),
// once it knows the kernel takes them. Without a local cache dir it does
// nothing.
func (v *View) SetDirectFiles(on bool) {
	if v.decoded != nil {
		v.decoded.direct.Store(on)
	}
}

// BackingFiles registers files with the kernel as FUSE passthrough
// backing files, as fuse.Server does.
type BackingFiles interface {
	RegisterBackingFd(*fuse.BackingMap) (int32, syscall.Errno)
	UnregisterBackingFd(id int32) syscall.Errno
}

// SetBackingFiles gives the view what TryBacking registers files with.
func (v *View) SetBackingFiles(b BackingFiles) {
	if v.decoded != nil {
		v.decoded.backing.Store(&b)
	}
}

// TryBacking registers f, a file DirectFile returned, with the kernel as
// a backing file and unregisters it, and reports whether the kernel took
// it. The file system tries it before an open that go-fuse will register
// f for: when that registration fails, go-fuse answers the open
// page-cached and stops registering for the whole mount, silently, and
// an open of a member whose passthrough opens are live is then refused
// by the kernel (EIO). A file the kernel refuses is served by bgbfs; the
// first refusal is logged at warn, with the reason, later ones at debug.
//
// A file the kernel took is not tried again while it is the member's
// checked file: numpy opens a member three times a sample, seldom
// while another open of it is live, and each try is two ioctls.
func (a *Archive) TryBacking(f *os.File, m Member) bool {
	s := a.view.decoded
	if s == nil {
		return false
	}
	b := s.backing.Load()
	if b == nil {
		return true
	}
	key := s.id(a.obj, m.member)
	s.mu.Lock()
	c := s.checks[key]
	known := c != nil && c.verified && c.taken != (cache.FileIdentity{}) && c.taken == c.data
	s.mu.Unlock()
	if known {
		return true
	}
	id, errno := (*b).RegisterBackingFd(&fuse.BackingMap{Fd: int32(f.Fd())})
	if errno == 0 {
		(*b).UnregisterBackingFd(id)
		if fi, err := f.Stat(); err == nil {
			taken := cache.IdentityOf(fi)
			s.mu.Lock()
			if c := s.checks[key]; c != nil && c.verified && c.data == taken {
				c.taken = taken
			}
			s.mu.Unlock()
		}
		return true
	}
	level := slog.LevelDebug
	if !s.backingRefused.Swap(true) {
		level = slog.LevelWarn
	}
	s.logger.Log(context.Background(), level, "decoded member served by bgbfs: the kernel refused its file for FUSE passthrough", "archive", a.obj.Key, "member", m.member.Name, "file", f.Name(), "reason", errno)
	return false
}

// PassthroughLost turns DirectFile off for good: the kernel read a file
// DirectFile returned through bgbfs, so go-fuse failed to register it
// (after TryBacking passed) and registers no file for this mount any
// more. It logs that once.
func (a *Archive) PassthroughLost() {
	if s := a.view.decoded; s != nil && s.direct.Swap(false) {
		s.logger.Warn("decoded members served by bgbfs from now on: go-fuse failed to register a file for FUSE passthrough, and registers none for this mount any more")
	}
}

// DirectFile returns the decoded data file of member m, open for
// reading, if this mount checked that file whole against the member's
// CRC-32: its bytes are the member's, at their own offsets, and its
// length is the member's size. Otherwise, if the file is known complete
// (memberCheck), it starts that check in the background
// (decodedVerifiers at once) and waits for it, up to checkWait or until
// ctx ends: served by the daemon meanwhile, an open would cost it the
// reads the check saves. An open of a member not known complete neither
// starts a check nor waits. It returns nil if the file is not (yet)
// checked. The caller closes the file. Nothing read through it is
// checked again: a file changed after the check goes unnoticed until the
// next mount, or, if its ctime did not move (a change on the medium
// alone), until the next reboot (see cache.ObjectFile.CheckedThisBoot).
func (a *Archive) DirectFile(ctx context.Context, m Member) *os.File {
	v, mm := a.view, m.member
	s := v.decoded
	if s == nil || !s.direct.Load() || mm.Method == npz.Stored {
		return nil
	}
	id := s.id(a.obj, mm)
	s.mu.Lock()
	c := s.checks[id]
	if c == nil {
		c = &memberCheck{}
		s.checks[id] = c
	}
	if !c.verified {
		if c.needsCount(s.recountIdle) {
			c.reading = true
			s.mu.Unlock()
			missing, err := s.countMissing(a.obj, mm, id)
			s.mu.Lock()
			c.learned(missing, err)
		}
		start := s.beginCheckLocked(c)
		checking, done := c.checking, c.done
		s.mu.Unlock()
		if start {
			v.startVerify(a.obj, mm, id, c)
		}
		if !checking {
			return nil
		}
		wait := time.NewTimer(checkWait)
		defer wait.Stop()
		select {
		case <-done:
		case <-wait.C:
			return nil
		case <-ctx.Done():
			return nil
		}
		s.mu.Lock()
		if !c.verified {
			s.mu.Unlock()
			return nil
		}
	}
	if time.Since(c.identityAt) < identityRecheck {
		return s.dupChecked(c)
	}
	want := c.data
	s.mu.Unlock()
	got, err := s.files.Dir.PairDataIdentity(id.Name(decodedArea))
	s.mu.Lock()
	var stale *os.File
	if c.verified && c.data == want {
		if err == nil && got == want {
			c.identityAt = time.Now()
			return s.dupChecked(c)
		}
		// Removed (trimmed, or found damaged), or made anew since:
		// counted and checked again once complete.
		stale, c.file, c.verified, c.taken = c.file, nil, false, cache.FileIdentity{}
		c.counted, c.countedAt = false, time.Time{}
		s.held--
	}
	s.mu.Unlock()
	if stale != nil {
		stale.Close()
	}
	return nil
}

// noteWritten counts units this mount wrote to member m's decoded file
// id. The write that makes the count say complete starts the file's
// check, as the member's next open would: in a shuffled epoch the write
// of a member's last units comes from the read of its last window, and
// no open of it may follow in the epoch. Checked now, while its pages
// are in the page cache, the file is handed to the kernel from this
// mount's next open of it, and the next mount of this boot trusts the
// check's stamp instead of reading the file whole.
func (s *decodedStore) noteWritten(obj s3backend.Version, m npz.Member, id cache.ObjectID, units int64) {
	s.mu.Lock()
	c := s.checks[id]
	start := false
	if c != nil {
		c.wrote(units)
		start = s.startCheck != nil && s.direct.Load() && !c.verified && !c.reading && s.beginCheckLocked(c)
	}
	s.mu.Unlock()
	if start {
		s.startCheck(obj, m, id, c)
	}
}

// beginCheckLocked marks a check of c's file as started, if the count
// says the file complete, none is running, and the mount may hold one
// more file; the caller then starts it (startVerify). Called with s.mu
// held.
func (s *decodedStore) beginCheckLocked(c *memberCheck) bool {
	if c.checking || !c.counted || c.missing > 0 || !s.holdLocked() {
		return false
	}
	c.checking, c.reading, c.wroteDuring, c.done = true, true, 0, make(chan struct{})
	return true
}

// countMissing reads the records of member m's decoded file and returns
// how many of its units it lacks (all of them if there is no file).
func (s *decodedStore) countMissing(obj s3backend.Version, m npz.Member, id cache.ObjectID) (int64, error) {
	f, missing, err := s.openPair(obj, m, id)
	if f == nil {
		return missing, err
	}
	defer f.Close()
	return f.MissingUnits()
}

// openPair opens member m's decoded file; if there is none (or it was
// damaged, then removed and logged), it returns nil and the units it
// lacks (all), or the error that kept it from telling.
func (s *decodedStore) openPair(obj s3backend.Version, m npz.Member, id cache.ObjectID) (*cache.ObjectFile, int64, error) {
	f, err := s.files.Dir.OpenObjectPair(id.Name(decodedArea), id, m.UncompressedSize, decodedUnit)
	if err == nil {
		return f, 0, nil
	}
	if errors.Is(err, cache.ErrDamaged) {
		s.damage(obj, m, err)
	}
	if errors.Is(err, iofs.ErrNotExist) || errors.Is(err, cache.ErrDamaged) {
		return nil, unitsOf(m), nil
	}
	return nil, 0, err
}

// unitsOf is how many units member m's decoded file has.
func unitsOf(m npz.Member) int64 { return (m.UncompressedSize + decodedUnit - 1) / decodedUnit }

// dupChecked returns the checked file of c on a descriptor of its own;
// it is called with s.mu held (so that the file is not closed meanwhile)
// and unlocks it.
func (s *decodedStore) dupChecked(c *memberCheck) *os.File {
	f, err := cache.DupFile(c.file)
	s.mu.Unlock()
	if err != nil {
		return nil
	}
	return f
}

// startVerify checks in the background, under the view's lifetime,
// whether member m's decoded file is complete and, if it is, the whole
// file against the member's CRC-32, and records the result in c.
func (v *View) startVerify(obj s3backend.Version, m npz.Member, id cache.ObjectID, c *memberCheck) {
	s := v.decoded
	done := func(f *os.File, missing int64, err error) {
		var data cache.FileIdentity
		if f != nil {
			if fi, serr := f.Stat(); serr == nil {
				data = cache.IdentityOf(fi)
			} else {
				f.Close()
				f, err = nil, serr
			}
		}
		s.mu.Lock()
		close(c.done)
		c.checking, c.done = false, nil
		c.learned(missing, err)
		if f != nil {
			c.verified, c.file, c.data, c.identityAt = true, f, data, time.Now()
		} else {
			s.held--
		}
		s.mu.Unlock()
	}
	if !v.life.Start(1) {
		done(nil, 0, context.Canceled)
		return
	}
	// Go waits for one of the decodedVerifiers slots: not on the open's
	// path.
	go s.verifiers.Go(func() error {
		defer v.life.Done()
		if v.life.Context().Err() != nil { // unmounting
			done(nil, 0, context.Canceled)
			return nil
		}
		done(s.verify(obj, m, id))
		return nil
	})
}

// verify checks member m's decoded file: complete, and its content
// matching the member's CRC-32 (from the zip directory). A file that
// fails is removed, logged and counted as damaged. It returns the data
// file it checked, open, if it passed; if not, nil and the units the
// file lacks (all of them once removed), or the error that kept it from
// telling.
func (s *decodedStore) verify(obj s3backend.Version, m npz.Member, id cache.ObjectID) (*os.File, int64, error) {
	f, missing, err := s.openPair(obj, m, id)
	if f == nil {
		return nil, missing, err
	}
	defer f.Close()
	if missing, err := f.MissingUnits(); err != nil || missing > 0 {
		return nil, missing, err
	}
	if f.CheckedThisBoot() {
		// Checked by a mount of this boot (this one's predecessor, or
		// another sharing the dir), and not changed since: a restart
		// does not read every member whole again.
		s.stampsTrusted.Add(1)
	} else {
		before, verr := f.DataVersion()
		h := crc32.NewIEEE()
		if err := f.HashData(h); err != nil {
			if errors.Is(err, cache.ErrDamaged) {
				s.damage(obj, m, err)
				return nil, unitsOf(m), nil
			}
			return nil, 0, err
		}
		if got := h.Sum32(); got != m.CRC32 {
			s.verifyFailed.Add(1)
			s.damage(obj, m, f.Drop(fmt.Sprintf("content fails the member's CRC-32 (%08x, want %08x)", got, m.CRC32)))
			return nil, unitsOf(m), nil
		}
		if verr == nil {
			if err := f.StampChecked(before); err != nil {
				s.logger.Debug("decoded member checked, not stamped", "member", m.Name, "err", err)
			}
		}
	}
	data, err := f.DupData()
	if err != nil {
		return nil, 0, err
	}
	s.verified.Add(1)
	return data, 0, nil
}

// closeChecked closes the data files held for the members checked.
func (s *decodedStore) closeChecked() {
	if s == nil {
		return
	}
	s.mu.Lock()
	var files []*os.File
	for _, c := range s.checks {
		if c.file != nil {
			files = append(files, c.file)
			c.file, c.verified, c.taken = nil, false, cache.FileIdentity{}
			s.held--
		}
	}
	s.mu.Unlock()
	for _, f := range files {
		f.Close()
	}
}

// holdLocked takes one of the descriptors a check may hold (with s.mu
// held), and reports whether there was one.
func (s *decodedStore) holdLocked() bool {
	if s.held < s.heldMax {
		s.held++
		return true
	}
	if !s.heldFull {
		s.heldFull = true
		s.logger.Warn("decoded members past this many are served by bgbfs, not by FUSE passthrough: each one read directly holds a file open, and half the process's open-file limit is the most they may hold", "members", s.heldMax)
	}
	return false
}

// heldFilesMax is how many checked files a mount may hold open: half its
// open-file limit (Go raises the soft limit to the hard one at start),
// the rest left for the block files, sockets and opens of the daemon.
func heldFilesMax() int {
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	return int(min(l.Cur/2, 1<<20))
}
