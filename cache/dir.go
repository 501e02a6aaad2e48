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
const (
	BlocksArea  = "blocks/"
	IndexesArea = "indexes/"
)

var dirAreas = []string{BlocksArea, IndexesArea}

// ErrDirFull is a store of a block into a Dir that is at its bound with
// every file in use: the block is not kept (and will be fetched again).
var ErrDirFull = errors.New("cache dir full of files in use")

// ErrDirNotWritable is a store into a Dir whose writes are off: an
// earlier write failed (a full disk, a read-only file system, no
// permission), and files are kept in memory only from then on.
var ErrDirNotWritable = errors.New("cache dir not writable")

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
	// little (the bench measured 17% of the fetches saved by a dir of half
	// the data); with files in use kept, it closes to new blocks instead
	// and keeps a stable part. Files idle this long (data no job reads any
	// more, blocks of an overwritten object) make room.
	dirIdleAge = time.Hour
	// dirFullRecheck is how often a dir closed to new blocks looks again
	// for idle files.
	dirFullRecheck = 30 * time.Second
	// dirTouchAfter is how old a file's modification time must be before
	// a load sets it to now: the time says when it was last used, at
	// the cost of one write per file per interval.
	dirTouchAfter = time.Minute
	// dirTempPrefix starts the names of files being written; a trim
	// removes those a crashed writer left, once they are dirTempAge old.
	dirTempPrefix = ".tmp"
	dirTempAge    = time.Hour
)

// Dir keeps files across runs in a local directory (under its areas),
// within a bound of bytes: the files least recently used (by modification
// time, which loads refresh) are removed first, those unused for an hour
// before any in use; a dir full of files in use takes no new blocks. Each file is written to a temporary
// name and renamed, so a reader sees a whole file or none; several
// processes may share one Dir, each trimming it. Opening it does not
// read it: what it holds is summed in the background, so a large dir
// delays nothing. It is safe for concurrent use.
type Dir struct {
	root   string
	limit  int64 // bytes; 0 keeps dirMinFree of the file system free
	logger *slog.Logger

	life context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	// walked is what the dir held at the end of the last walk, and
	// stored what was stored since that walk began: their sum is an
	// estimate that each walk corrects (a store made during a walk may be
	// counted twice, never missed).
	walked, stored atomic.Int64
	trimming       atomic.Bool
	// writeErr is the write failure that turned writes off.
	writeErr atomic.Pointer[error]
	statfs   func(path string) (free, total int64, err error)
	// removed counts the files this process removed: trimmed or damaged.
	removed atomic.Int64
	// full is set when the last trim found the dir at its bound with no
	// idle file to remove: blocks are not written until a trim frees
	// room. trimmedAt is when the last trim ended (Unix nanoseconds).
	full      atomic.Bool
	trimmedAt atomic.Int64
	// onWalk, if set, is told each file a walk counts (tests).
	onWalk func(path string)
}

// OpenDir returns the Dir at root, creating it if it can; limit bounds
// its size in bytes (0: keep 5% of the file system free). A dir that
// cannot be created or written is still read (it may have been filled
// elsewhere and copied in); stores into it then fail with
// ErrDirNotWritable.
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
	life, stop := context.WithCancel(context.Background())
	d := &Dir{root: abs, limit: limit, logger: logger, life: life, stop: stop, statfs: statfs}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		if _, serr := os.Stat(abs); serr != nil {
			stop()
			return nil, fmt.Errorf("cache dir %s: %w", abs, err)
		}
		d.writesOff(err)
	} else if err := syscall.Access(abs, 2 /* W_OK */); err != nil {
		d.writesOff(err)
	}
	d.startTrim()
	return d, nil
}

// String names the dir for logs.
func (d *Dir) String() string { return d.root }

// Close stops the background walk or trim and waits for it.
func (d *Dir) Close() {
	d.stop()
	d.wg.Wait()
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

// WriteErr returns the failure that turned writes off, or nil.
func (d *Dir) WriteErr() error {
	if p := d.writeErr.Load(); p != nil {
		return *p
	}
	return nil
}

// writesOff turns writes off for good, saying so once: a full or
// read-only disk stays so, and the mount goes on without writing.
func (d *Dir) writesOff(err error) {
	if d.writeErr.CompareAndSwap(nil, &err) {
		d.logger.Warn("cache dir not writable: blocks and member indexes kept in memory only", "dir", d.root, "err", err)
	}
}

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
		return nil, fmt.Errorf("cache dir: %w", err)
	}
	return data, nil
}

// Open opens the file name for reading and returns its size; an error
// wrapping io/fs.ErrNotExist if the dir does not hold it. It counts as a
// use of the file.
func (d *Dir) Open(name string) (*os.File, int64, error) {
	p, err := d.path(name)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(p)
	if errors.Is(err, syscall.ENOTDIR) {
		// A file where a directory of the path should be: nothing
		// under it is there.
		return nil, 0, fmt.Errorf("cache dir: %w: %w", iofs.ErrNotExist, err)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("cache dir: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("cache dir: %w", err)
	}
	if time.Since(fi.ModTime()) > dirTouchAfter {
		now := time.Now()
		_ = os.Chtimes(p, now, now) // best effort: a read-only dir keeps its times
	}
	return f, fi.Size(), nil
}

// Remove deletes the file name, if it is there: a file found damaged.
func (d *Dir) Remove(name string) {
	if p, err := d.path(name); err == nil {
		if os.Remove(p) == nil {
			d.removed.Add(1)
		}
	}
}

// Store writes data as the file name, replacing any. Once a write fails,
// writes are off and Store returns ErrDirNotWritable (wrapping the
// failure): the caller keeps what it would have stored in memory. While
// the dir is full of files in use, a block is refused with ErrDirFull
// (indexes, tiny and worth more, are always written).
func (d *Dir) Store(ctx context.Context, name string, data []byte) error {
	if err := d.WriteErr(); err != nil {
		return fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	p, err := d.path(name)
	if err != nil {
		return err
	}
	n := int64(len(data))
	used := d.walked.Load() + d.stored.Add(n) // reserved: concurrent stores see it
	if strings.HasPrefix(name, BlocksArea) {
		if takes := d.TakesBlocks(); !takes || used > d.bound() || d.lowOnSpace() {
			// No room: a block is not worth evicting a block in use for
			// (indexes, tiny and worth more, are written regardless). A
			// trim looks for idle files.
			d.stored.Add(-n)
			if takes {
				d.startTrim()
			}
			return ErrDirFull
		}
	}
	if err := d.write(p, data); err != nil {
		d.stored.Add(-n)
		d.writesOff(err)
		return fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	if used > d.bound() || d.lowOnSpace() {
		d.startTrim()
	}
	return nil
}

func (d *Dir) write(p string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), dirTempPrefix+"-*")
	if err != nil {
		return err
	}
	// Readable by every user: mounts of one dir may run as different
	// users (a training container as root, a notebook as its user).
	err = f.Chmod(0o644)
	// No fsync: a file torn by a crash fails the checksum its reader
	// keeps in it, and is written again.
	if err == nil {
		_, err = f.Write(data)
	}
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
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer d.trimming.Store(false)
		if err := d.trim(); err != nil && d.life.Err() == nil {
			d.logger.Warn("cache dir: trim failed", "dir", d.root, "err", err)
		}
	}()
}

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
	removed, n := int64(0), 0
	if need := max(soft, hard, 0); need > 0 {
		files, err := d.oldest(need)
		if err != nil {
			return err
		}
		idle := time.Now().Add(-dirIdleAge)
		for _, f := range files {
			if removed >= need || (removed >= hard && f.mtime.After(idle)) {
				break
			}
			if err := os.Remove(f.path); err != nil && !os.IsNotExist(err) {
				return err
			}
			removed += f.size
			n++
			d.removed.Add(1)
		}
	}
	total -= removed
	if n > 0 {
		d.logger.Debug("cache dir trimmed", "dir", d.root, "files_removed", n, "bytes_removed", removed, "bytes_kept", total)
	}
	d.full.Store(removed < soft)
	d.trimmedAt.Store(time.Now().UnixNano())
	d.walked.Store(total)
	return nil
}

// walk calls fn with each file of the dir's areas, and removes the
// temporary files that writers which died left.
func (d *Dir) walk(fn func(dirFile)) error {
	visit := func(p string, e iofs.DirEntry, err error) error {
		if d.life.Err() != nil {
			return d.life.Err()
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
			if time.Since(fi.ModTime()) > dirTempAge {
				os.Remove(p)
			}
			return nil
		}
		fn(dirFile{p, fi.Size(), fi.ModTime()})
		return nil
	}
	for _, a := range dirAreas {
		if err := filepath.WalkDir(filepath.Join(d.root, a), visit); err != nil {
			return err
		}
	}
	return nil
}

// oldest returns, least recently used first, the oldest files whose sizes
// add up to at least need (all of them if they add up to less). It walks
// the dir a second time and keeps only those: a trim of millions of block
// files holds little more than what it removes.
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

// Used returns the bytes the dir holds, as far as this process knows:
// the last walk plus its own stores since.
func (d *Dir) Used() int64 { return d.walked.Load() + d.stored.Load() }
