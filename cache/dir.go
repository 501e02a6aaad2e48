package cache

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The areas of a Dir: bgbfs writes, trims and counts files only under
// these subdirectories, so a --cache-dir shared with other files (a
// user's ~/.cache) loses none of them.
// DecodedArea holds bytes derived from objects (the decoded content of
// compressed .npz members), kept as blocks are.
const (
	BlocksArea  = "blocks/"
	IndexesArea = "indexes/"
	DecodedArea = "decoded/"
)

var dirAreas = []string{BlocksArea, IndexesArea, DecodedArea}

// ErrDirFull is a store of a block into a Dir that is at its bound with
// every file in use: the block is not kept (and will be fetched again).
var ErrDirFull = errors.New("cache dir full of files in use")

// ErrDirNotWritable is a store into a Dir whose writes are paused: a
// write failed a moment ago (a full disk, no file descriptor left, a
// read-only file system, no permission), or this user only reads the
// dir. What would have been stored stays in memory only.
var ErrDirNotWritable = errors.New("cache dir not writable")

// ErrDirNotReadable is a load from a Dir whose reads are paused after a
// read failed other than by a missing file: the caller does without.
var ErrDirNotReadable = errors.New("cache dir not readable")

const (
	// dirMinFree is the share of the file system a Dir without a size
	// bound leaves free.
	dirMinFree = 0.05
	// dirTrimTo is how far below its bound a trim takes a Dir, so that
	// not every store trims.
	dirTrimTo = 0.9
	// dirHardFree is the share of the file system a Dir without a size
	// bound frees whatever it costs: below it, files are removed least
	// recently used first even if in use.
	dirHardFree = 0.03
	// dirIdleAge is how long a file must go unused before a trim removes
	// it to make room for new files. A dir smaller than the data a job
	// reads over and over (shuffled epochs) would otherwise evict, least
	// recently used first, just what the epoch is about to read, and keep
	// little (BENCHMARKS.md, "Figures behind design choices": cache dir
	// keeps files in use); with files in use kept, it closes to new blocks
	// instead and keeps a stable part. Files idle this long (data no job
	// reads any more, blocks of an overwritten object) make room.
	dirIdleAge = time.Hour
	// dirFullRecheck is how often a dir closed to new blocks looks again
	// for idle files: a walk of one file per object version read (a few
	// thousand for the whole bucket), so the recheck costs little.
	dirFullRecheck = 30 * time.Second
	// dirTouchAfter is how old a file's modification time must be before
	// a load sets it to now: the time says when it was last used, at
	// the cost of one write per file per interval.
	dirTouchAfter = time.Minute
	// dirTempPrefix starts the names of files being written; a trim
	// removes those a crashed writer left, once they are dirTempAge old.
	dirTempPrefix = ".tmp"
	dirTempAge    = time.Hour
	// dirFileMode and dirDirMode are the modes of what a Dir makes, set
	// whatever the umask: every user reads the dir (a training container
	// as root and a notebook as its user may share one).
	dirFileMode = 0o644
	dirDirMode  = 0o755
)

// The back-offs of a paused access (see dirGate).
const (
	dirRetryFirst  = time.Second
	dirRetryMax    = 30 * time.Second
	dirRetryBroken = 5 * time.Minute
)

// Dir keeps files across runs in a local directory (under its areas),
// within a bound of bytes of disk space: the files least recently used
// (by modification time, which uses refresh) are removed first, those
// unused for an hour before any in use; a dir full of files in use takes
// no new blocks. A whole file is written to a temporary name and renamed,
// so a reader sees a whole file or none; an object file (ObjectFile) is
// made the same way and then filled unit by unit, each unit checked on
// its own. Several processes may share one Dir, each trimming it.
// Opening it does not read it: what it holds is summed in the
// background, so a large dir delays nothing.
//
// Failures pause reads or writes for a while (dirGate), never for good.
// The dir and what it makes have one owner, the owner of its root: a
// process of another user reads it and does not write, trim or mark
// files used (root writes, giving what it makes to that owner). It is
// safe for concurrent use.
type Dir struct {
	root   string
	limit  int64 // bytes; 0 keeps dirMinFree of the file system free
	logger *slog.Logger

	// life is the background walk's: Close ends it and waits for it.
	life *Lifetime

	// walked is what the dir held at the end of the last walk, and
	// stored what was stored since that walk began: their sum is an
	// estimate that each walk corrects (a store made during a walk may be
	// counted twice, never missed).
	walked, stored atomic.Int64
	trimming       atomic.Bool
	reads, writes  dirGate
	// readOnly is set while this user may not write the dir: it reads,
	// and its trims only sum.
	readOnly atomic.Bool
	// giveTo, when set, is the uid and gid a process running as root
	// gives what it makes to: the owner of the root.
	giveTo *[2]int
	statfs func(path string) (free, total int64, err error)
	// bootID is this boot's (see checkstamp.go); "" if unknown.
	bootID string
	// removed counts the files this process removed: trimmed or damaged.
	removed atomic.Int64
	// full is set when the last trim found the dir at its bound with no
	// idle file to remove: blocks are not written until a trim frees
	// room. trimmedAt is when the last trim ended (Unix nanoseconds).
	full      atomic.Bool
	trimmedAt atomic.Int64
	// onWalk, if set, is told each file a walk counts; beforeRemove each
	// file a trim is about to remove (tests).
	onWalk, beforeRemove func(path string)
}

// OpenDir returns the Dir at root, creating it if it can; limit bounds
// its size in bytes (0: keep 5% of the file system free). A dir that
// cannot be created or written is still read (it may have been filled
// elsewhere and copied in); stores into it then fail with
// ErrDirNotWritable, and are tried again now and then.
func OpenDir(root string, limit int64, logger *slog.Logger) (*Dir, error) {
	return openDir(root, limit, logger, statfsFree)
}

// openDir is OpenDir with the file system's free and total bytes told by
// statfs.
func openDir(root string, limit int64, logger *slog.Logger, statfs func(string) (free, total int64, err error)) (*Dir, error) {
	if root == "" {
		return nil, errors.New("cache dir: empty path")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("cache dir %q: %w", root, err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	d := &Dir{root: abs, limit: limit, logger: logger, life: NewLifetime(context.Background()), statfs: statfs, bootID: readBootID()}
	d.reads = dirGate{what: "reads", dir: abs, logger: logger}
	d.writes = dirGate{what: "writes", dir: abs, logger: logger, onResume: func() { d.readOnly.Store(false) }}
	if err := d.mkdirAll(abs); err != nil {
		if _, serr := os.Stat(abs); serr != nil {
			d.life.Close()
			return nil, fmt.Errorf("cache dir %s: %w", abs, err)
		}
		d.writes.fail(err)
	} else if err := d.checkWritable(); err != nil {
		// Known from the start, and no failure: said once, at info.
		d.readOnly.Store(true)
		d.writes.paused.Store(true)
		d.writes.err, d.writes.backoff, d.writes.retryAt = err, dirRetryBroken, time.Now().Add(dirRetryBroken)
		d.writes.warned, d.writes.warnedAt = true, time.Now()
		logger.Info("cache dir read only: its files are read, not written, trimmed or marked used",
			"dir", abs, "uid", os.Geteuid(), "err", err)
	}
	if fi, err := os.Stat(abs); err == nil && os.Geteuid() == 0 {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
			d.giveTo = &[2]int{int(st.Uid), int(st.Gid)}
		}
	}
	d.startTrim()
	return d, nil
}

// checkWritable reports why this user may not write the dir: its root
// or an area there already is not writable by it.
func (d *Dir) checkWritable() error {
	for _, p := range append([]string{""}, dirAreas...) {
		err := syscall.Access(filepath.Join(d.root, p), 2 /* W_OK */)
		if err != nil && !errors.Is(err, syscall.ENOENT) {
			return &os.PathError{Op: "access", Path: filepath.Join(d.root, p), Err: err}
		}
	}
	return nil
}

// String names the dir for logs.
func (d *Dir) String() string { return d.root }

// Close stops the background walk or trim and waits for it.
func (d *Dir) Close() {
	d.life.Close()
}

// TakesBlocks reports whether a block stored now would be kept: not while
// the dir is at its bound with every file in use. While it is, it looks
// again for idle files at most every dirFullRecheck.
func (d *Dir) TakesBlocks() bool {
	if !d.full.Load() {
		return true
	}
	if time.Since(time.Unix(0, d.trimmedAt.Load())) > dirFullRecheck {
		d.startTrim() // files may have gone idle since
	}
	return false
}

// WriteErr returns the failure that paused writes, while they are
// paused, or nil.
func (d *Dir) WriteErr() error { return d.writes.current() }

func (d *Dir) path(name string) (string, error) {
	inArea := slices.ContainsFunc(dirAreas, func(a string) bool { return strings.HasPrefix(name, a) && len(name) > len(a) })
	if !inArea || !filepath.IsLocal(name) || strings.HasPrefix(filepath.Base(name), dirTempPrefix) {
		return "", fmt.Errorf("cache dir: bad file name %q", name)
	}
	return filepath.Join(d.root, name), nil
}

// Load returns the file name (a relative, slash-separated path), or an
// error wrapping io/fs.ErrNotExist if the dir does not hold it.
func (d *Dir) Load(ctx context.Context, name string) ([]byte, error) {
	f, size, err := d.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data := make([]byte, size)
	if _, err := f.ReadAt(data, 0); err != nil {
		d.reads.fail(err)
		return nil, fmt.Errorf("%w: %w", ErrDirNotReadable, err)
	}
	return data, nil
}

// Open opens the file name for reading and returns its size; an error
// wrapping io/fs.ErrNotExist if the dir does not hold it, or
// ErrDirNotReadable if it could not be read (reads are then paused). It
// counts as a use of the file.
func (d *Dir) Open(name string) (*os.File, int64, error) {
	p, err := d.path(name)
	if err != nil {
		return nil, 0, err
	}
	f, fi, err := d.openFile(p, os.O_RDONLY)
	if err != nil {
		return nil, 0, err
	}
	d.touch(p, fi)
	return f, fi.Size(), nil
}

// openFile opens p with flag and stats it, through the reads gate: a
// missing file is an error wrapping io/fs.ErrNotExist and leaves reads as
// they are; another failure pauses them.
func (d *Dir) openFile(p string, flag int) (*os.File, iofs.FileInfo, error) {
	if err := d.reads.blocked(); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrDirNotReadable, err)
	}
	f, err := os.OpenFile(p, flag, 0)
	if isNotExist(err) {
		// ENOTDIR: a file where a directory of the path should be:
		// nothing under it is there.
		return nil, nil, fmt.Errorf("cache dir: %w: %w", iofs.ErrNotExist, err)
	}
	if err != nil {
		d.reads.fail(err)
		return nil, nil, fmt.Errorf("%w: %w", ErrDirNotReadable, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		d.reads.fail(err)
		return nil, nil, fmt.Errorf("%w: %w", ErrDirNotReadable, err)
	}
	d.reads.ok()
	return f, fi, nil
}

func isNotExist(err error) bool {
	return errors.Is(err, iofs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// touch marks the file at p used, unless it was marked a little while
// ago or this process does not write the dir.
func (d *Dir) touch(p string, fi iofs.FileInfo) {
	if time.Since(fi.ModTime()) > dirTouchAfter && d.writes.current() == nil {
		now := time.Now()
		_ = os.Chtimes(p, now, now) // best effort: a file of another owner keeps its time
	}
}

// ProbeFile returns a new empty file of the dir's decoded area, already
// unlinked: to try what the kernel takes of the dir's files (a FUSE
// passthrough backing file).
func (d *Dir) ProbeFile() (*os.File, error) {
	f, err := d.createTemp(filepath.Join(d.root, DecodedArea))
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return f, nil
}

// Remove deletes the file name, if it is there: a file found damaged
// (either half of a pair removes the pair).
func (d *Dir) Remove(name string) { d.remove(name) }

// remove deletes the file name and reports whether this call did.
func (d *Dir) remove(name string) bool {
	p, err := d.path(name)
	if err != nil || removeFile(p) != nil {
		return false
	}
	d.removed.Add(1)
	return true
}

// Store writes data as the file name, replacing any. While writes are
// paused it returns ErrDirNotWritable at once (wrapping the failure), and
// a store that fails pauses them: the caller keeps what it would have
// stored in memory. While the dir is full of files in use, a file of the
// blocks area is refused with ErrDirFull (indexes, tiny and worth more,
// are always written).
func (d *Dir) Store(ctx context.Context, name string, data []byte) error {
	p, err := d.path(name)
	if err != nil {
		return err
	}
	if err := d.writes.blocked(); err != nil {
		return fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	n := int64(len(data))
	if err := d.reserve(n, strings.HasPrefix(name, BlocksArea)); err != nil {
		return err
	}
	err = d.writeFile(p, data)
	if errors.Is(err, syscall.ENOENT) {
		// A directory of the path was removed under the write (a user
		// cleaning the dir, another process's trim): once more.
		err = d.writeFile(p, data)
	}
	if err := d.wrote(n, err); err != nil {
		return fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	return nil
}

// writeFile writes data as the file at p: to a temporary name, renamed.
func (d *Dir) writeFile(p string, data []byte) error {
	f, err := d.createTemp(filepath.Dir(p))
	if err != nil {
		return err
	}
	// No fsync: a file torn by a crash fails the checksum its reader
	// keeps in it, and is written again.
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// createTemp makes a file of a temporary name in dir (made if missing),
// with the dir's mode and owner.
func (d *Dir) createTemp(dir string) (*os.File, error) {
	if err := d.mkdirAll(dir); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, dirTempPrefix+"-*")
	if err != nil {
		return nil, err
	}
	err = f.Chmod(dirFileMode)
	if err == nil && d.giveTo != nil {
		err = f.Chown(d.giveTo[0], d.giveTo[1])
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return f, nil
}

// mkdirAll makes the directory p and those above it that are missing,
// with the dir's mode (whatever the umask) and owner.
func (d *Dir) mkdirAll(p string) error {
	fi, err := os.Stat(p)
	if err == nil {
		if !fi.IsDir() {
			return &os.PathError{Op: "mkdir", Path: p, Err: syscall.ENOTDIR}
		}
		return nil
	}
	if parent := filepath.Dir(p); parent != p {
		if err := d.mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(p, dirDirMode); err != nil {
		if fi, serr := os.Stat(p); serr == nil && fi.IsDir() {
			return nil // made by another process meanwhile
		}
		return err
	}
	if err := os.Chmod(p, dirDirMode); err != nil {
		return err
	}
	if d.giveTo != nil {
		return os.Chown(p, d.giveTo[0], d.giveTo[1])
	}
	return nil
}

// reserve counts n bytes about to be written; a block (a file of the
// blocks area, or units of an object file) is refused with ErrDirFull
// while the dir is full or out of room, and a trim is started.
func (d *Dir) reserve(n int64, block bool) error {
	used := d.walked.Load() + d.stored.Add(n) // reserved: concurrent stores see it
	if !block {
		return nil
	}
	if takes := d.TakesBlocks(); !takes || used > d.bound() || d.lowOnSpace() {
		// No room: a block is not worth evicting a block in use for. A
		// trim looks for idle files.
		d.stored.Add(-n)
		if takes {
			d.startTrim()
		}
		return ErrDirFull
	}
	return nil
}

// wrote ends a write of n bytes reserved, which failed with err (or
// not): a failure gives the bytes back and pauses writes; a full disk
// also starts a trim. It returns err.
func (d *Dir) wrote(n int64, err error) error {
	if err != nil {
		d.stored.Add(-n)
		d.writes.fail(err)
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			d.startTrim()
		}
		return err
	}
	d.writes.ok()
	if d.Used() > d.bound() || d.lowOnSpace() {
		d.startTrim()
	}
	return nil
}

// bound is the size the dir may have: its limit, or with none, what it
// holds plus the free space above dirMinFree of the file system.
func (d *Dir) bound() int64 {
	if d.limit > 0 {
		return d.limit
	}
	return 1 << 62 // lowOnSpace watches the file system instead
}

// lowOnSpace reports whether a dir without a limit has less than
// dirMinFree of its file system free.
func (d *Dir) lowOnSpace() bool {
	if d.limit > 0 {
		return false
	}
	free, total, err := d.statfs(d.root)
	return err == nil && float64(free) < dirMinFree*float64(total)
}

func statfsFree(path string) (free, total int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), int64(st.Blocks) * int64(st.Bsize), nil
}

// startTrim walks the dir in the background, unless a walk is running:
// it sums what the dir holds and, while the dir is over its bound,
// removes the files idle longest (least recently used first), but none
// used within dirIdleAge unless the bound itself (or the file system's
// last dirHardFree) requires it; if that is not enough, the dir is full
// and takes no new blocks.
func (d *Dir) startTrim() {
	if !d.trimming.CompareAndSwap(false, true) {
		return
	}
	if !d.life.Start(1) {
		d.trimming.Store(false)
		return
	}
	go func() {
		defer d.life.Done()
		defer d.trimming.Store(false)
		if err := d.trim(); err != nil && d.life.Context().Err() == nil {
			d.logger.Warn("cache dir: trim failed", "dir", d.root, "err", err)
		}
	}()
}

// dirFile is a file of the dir's areas: its disk space (allocated
// blocks, not its length: an object file is sparse) and when it was last
// used.
type dirFile struct {
	path  string
	size  int64
	mtime time.Time
}

func (d *Dir) trim() error {
	// Stores from now on may land in directories the walk has passed.
	d.stored.Store(0)
	var total int64
	err := d.walk(func(f dirFile) {
		total += f.size
		if d.onWalk != nil {
			d.onWalk(f.path)
		}
	})
	if err != nil {
		return err
	}
	// soft is what to remove, idle files only, to get back under a
	// target a little under the bound, so that the next stores do not
	// trim again at once; a dir above that target without idle files to
	// remove takes no new blocks. hard is what must go whatever it costs
	// (the bound itself, or the file system's last few percent).
	var soft, hard int64
	if d.limit > 0 {
		soft = total - int64(float64(d.limit)*dirTrimTo)
		hard = total - d.limit
	} else if free, size, err := d.statfs(d.root); err == nil {
		soft = int64((dirMinFree+0.01)*float64(size)) - free
		hard = int64(dirHardFree*float64(size)) - free
	}
	// freed is what left the dir, removed here or by another process
	// (which counts it); removed and n what this process removed.
	freed, removed, n := int64(0), int64(0), 0
	// A user that only reads the dir leaves trimming to its owner.
	if need := max(soft, hard, 0); need > 0 && !d.readOnly.Load() {
		files, err := d.oldest(need)
		if err != nil {
			return err
		}
		idle := time.Now().Add(-dirIdleAge)
		for _, f := range files {
			if freed >= need || (freed >= hard && f.mtime.After(idle)) {
				break
			}
			if d.beforeRemove != nil {
				d.beforeRemove(f.path)
			}
			err := removeFile(f.path) // a pair whole
			switch {
			case err == nil:
				removed += f.size
				n++
				d.removed.Add(1)
			case errors.Is(err, iofs.ErrNotExist):
			case errors.Is(err, iofs.ErrPermission):
				continue // not ours to remove
			default:
				return err
			}
			freed += f.size
		}
	}
	total -= freed
	if n > 0 {
		d.logger.Debug("cache dir trimmed", "dir", d.root, "files_removed", n, "bytes_removed", removed, "bytes_kept", total)
	}
	d.full.Store(freed < soft)
	d.trimmedAt.Store(time.Now().UnixNano())
	d.walked.Store(total)
	return nil
}

// walk calls fn with each file of the dir's areas, and removes the
// temporary files that writers which died left.
func (d *Dir) walk(fn func(dirFile)) error {
	visit := func(p string, e iofs.DirEntry, err error) error {
		if err := d.life.Context().Err(); err != nil {
			return err
		}
		if err != nil {
			if os.IsNotExist(err) { // removed by another process
				return nil
			}
			return err
		}
		if !e.Type().IsRegular() {
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return nil // removed meanwhile
		}
		if strings.HasPrefix(e.Name(), dirTempPrefix) {
			if time.Since(fi.ModTime()) > dirTempAge && !d.readOnly.Load() {
				os.Remove(p)
			}
			return nil
		}
		fn(dirFile{p, diskBytes(fi), fi.ModTime()})
		return nil
	}
	for _, a := range dirAreas {
		if err := filepath.WalkDir(filepath.Join(d.root, a), visit); err != nil {
			return err
		}
	}
	return nil
}

// diskBytes is the disk space a file takes: its allocated blocks.
func diskBytes(fi iofs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// oldest returns, least recently used first, the oldest files whose sizes
// add up to at least need (all of them if they add up to less). It walks
// the dir a second time and keeps only those: a trim of many files holds
// little more than what it removes.
func (d *Dir) oldest(need int64) ([]dirFile, error) {
	var h newestFirst
	var sum int64
	err := d.walk(func(f dirFile) {
		heap.Push(&h, f)
		sum += f.size
		for h.Len() > 1 && sum-h[0].size >= need {
			sum -= heap.Pop(&h).(dirFile).size
		}
	})
	slices.SortFunc(h, func(a, b dirFile) int { return cmp.Compare(a.mtime.UnixNano(), b.mtime.UnixNano()) })
	return h, err
}

// newestFirst is a heap of files, the most recently used on top.
type newestFirst []dirFile

func (h newestFirst) Len() int           { return len(h) }
func (h newestFirst) Less(i, j int) bool { return h[i].mtime.After(h[j].mtime) }
func (h newestFirst) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *newestFirst) Push(x any)        { *h = append(*h, x.(dirFile)) }
func (h *newestFirst) Pop() any {
	old := *h
	f := old[len(old)-1]
	*h = old[:len(old)-1]
	return f
}

// Removed counts the files this process removed from the dir: the least
// recently used, trimmed, and damaged ones.
func (d *Dir) Removed() int64 { return d.removed.Load() }

// Used returns the disk space the dir's files take, as far as this
// process knows: the last walk plus its own stores since.
func (d *Dir) Used() int64 { return d.walked.Load() + d.stored.Load() }

// dirGate is one kind of access to a Dir, reads or writes: open, or
// paused after a failure until a retry time. A failure that passes (a
// full disk or quota, no file descriptor or memory left, a directory
// removed under the access) pauses it for a back-off that doubles from
// dirRetryFirst to dirRetryMax; any other (an I/O error, a read-only file
// system, no permission, a file where a directory must be) for
// dirRetryBroken, since even a broken disk may be repaired, remounted or
// freed without a restart. While paused the access is skipped (reads go
// to S3, writes are dropped); once the back-off is over, one access tries
// again. One line is logged when it pauses and one when it works again,
// none in between; a disk that keeps filling and emptying is logged at
// most once per dirRetryBroken (the rest at debug).
type dirGate struct {
	what, dir string
	logger    *slog.Logger
	// onResume, if set, is called when the access works again.
	onResume func()
	paused   atomic.Bool
	mu       sync.Mutex
	err      error // the failure that paused it
	retryAt  time.Time
	backoff  time.Duration
	// warnedAt is when a pause was last logged above debug, and warned
	// whether the pause under way was.
	warnedAt time.Time
	warned   bool
}

// current returns the failure that paused the access while it is
// paused and not due for a retry, else nil.
func (g *dirGate) current() error {
	if !g.paused.Load() {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.paused.Load() && time.Now().Before(g.retryAt) {
		return g.err
	}
	return nil
}

// blocked is current for an access about to be made: once the back-off
// is over it lets this one through to try, and keeps the others skipping
// for another back-off.
func (g *dirGate) blocked() error {
	if !g.paused.Load() {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.paused.Load() {
		return nil
	}
	if now := time.Now(); now.Before(g.retryAt) {
		return g.err
	} else {
		g.retryAt = now.Add(g.backoff)
	}
	return nil
}

// fail pauses the access after err.
func (g *dirGate) fail(err error) {
	backoff := dirRetryBroken
	if passes(err) {
		backoff = dirRetryFirst
		g.mu.Lock()
		if g.paused.Load() && g.backoff < dirRetryBroken {
			backoff = min(2*g.backoff, dirRetryMax)
		}
		g.mu.Unlock()
	}
	g.pause(err, backoff)
}

// pause pauses the access for backoff after err, saying so if it was
// open.
func (g *dirGate) pause(err error, backoff time.Duration) {
	now := time.Now()
	g.mu.Lock()
	was := g.paused.Swap(true)
	g.err, g.backoff, g.retryAt = err, backoff, now.Add(backoff)
	level := slog.LevelDebug
	if !was {
		g.warned = now.Sub(g.warnedAt) > dirRetryBroken
		if g.warned {
			g.warnedAt, level = now, slog.LevelWarn
		}
	}
	g.mu.Unlock()
	if !was {
		g.logger.Log(context.Background(), level, "cache dir "+g.what+" paused", "dir", g.dir, "err", err, "retry_in", backoff)
	}
}

// ok records an access that worked, saying so if it was paused.
func (g *dirGate) ok() {
	if !g.paused.Load() {
		return
	}
	g.mu.Lock()
	was := g.paused.Swap(false)
	cause, warned := g.err, g.warned
	g.err, g.backoff = nil, 0
	g.mu.Unlock()
	if !was {
		return
	}
	level := slog.LevelDebug
	if warned {
		level = slog.LevelInfo
	}
	g.logger.Log(context.Background(), level, "cache dir "+g.what+" resumed", "dir", g.dir, "paused_by", cause)
	if g.onResume != nil {
		g.onResume()
	}
}

// passes reports whether err is a failure that goes away by itself.
func passes(err error) bool {
	for _, e := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EMFILE, syscall.ENFILE,
		syscall.ENOMEM, syscall.ENOENT, syscall.EAGAIN, syscall.EINTR, syscall.EBUSY} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
