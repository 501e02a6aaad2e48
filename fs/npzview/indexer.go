package npzview

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/s3backend"
)

// ArchiveSource is where an ArchiveIndexer reads archives
// (s3backend.Client): a small archive whole in one GET; of a big one,
// ranged reads for the zip directory and one stream for the members'
// bytes.
type ArchiveSource interface {
	s3backend.ObjectStore
	// Stream reads the n bytes of v at off in one ranged GET, as they
	// are consumed.
	Stream(ctx context.Context, v s3backend.Version, off, n int64) io.ReadCloser
}

// ArchiveIndexer indexes whole archives into Files ahead of the mounts
// that read them ("bgbfs index"), placing access points as those mounts
// would, so that a mount finds every index it needs in one file.
type ArchiveIndexer struct {
	Source    ArchiveSource
	Files     IndexFiles
	Placement IndexPlacement
	// Limits bounds the fetches and the inflating of all the archives
	// indexed at once; nil streams every archive, unbounded.
	Limits *IndexLimits
	// Built, if set, is told the compressed size of each member whose
	// index was built and kept in its archive's file. It may be called
	// from several goroutines.
	Built func(compressedSize int64)
}

// Current reports whether archive a is indexed in Files with the
// indexer's placement: then IndexArchive has nothing to do.
func (ix ArchiveIndexer) Current(ctx context.Context, a s3backend.Version) (bool, error) {
	return ix.Files.Done(ctx, a, ix.Placement)
}

// IndexArchive builds the index of every deflated member of a that has
// none in Files and marks the archive done with its zip directory and
// all its members' indexes in one file, which a mount reads at first
// open. The member index files a mount left for a are used and, once
// the archive's file holds them, removed from a dir that can remove
// files: the dir keeps one copy of each index.
func (ix ArchiveIndexer) IndexArchive(ctx context.Context, a s3backend.Version) error {
	limits := ix.Limits
	if limits == nil {
		limits = NewIndexLimits(1<<20, 0)
	}
	var saved SavedArchive
	var built []npz.Member
	var err error
	if limits.fetchedWhole(a.Size) {
		saved, built, err = ix.indexWhole(ctx, limits, a)
	} else {
		saved, built, err = ix.indexStreamed(ctx, limits, a)
	}
	if err != nil {
		return err
	}
	if err := ix.Files.MarkDone(ctx, a, ix.Placement, saved); err != nil {
		return fmt.Errorf("marking the archive indexed: %w", err)
	}
	for _, m := range saved.Dir.Members {
		if saved.Indexes[m.Name] != nil && !slices.Contains(built, m) {
			ix.Files.RemoveMemberFile(a, m)
		}
	}
	if ix.Built != nil {
		for _, m := range built {
			ix.Built(m.CompressedSize)
		}
	}
	return nil
}

// indexWhole fetches a whole in one GET and indexes it from memory on
// one core: its zip directory, and the indexes of its deflated members
// (those Files has, and those built, which it returns, with their heads).
func (ix ArchiveIndexer) indexWhole(ctx context.Context, limits *IndexLimits, a s3backend.Version) (SavedArchive, []npz.Member, error) {
	buf := limits.archiveBuffer(a.Size)
	defer limits.reuse(buf)
	data := (*buf)[:a.Size]
	err := limits.request(ctx, func() error {
		n, err := ix.Source.ReadAt(ctx, a, 0, data)
		if n == len(data) && errors.Is(err, io.EOF) {
			err = nil
		}
		return err
	})
	if err != nil {
		return SavedArchive{}, nil, fmt.Errorf("fetching the archive: %w", err)
	}
	src := bytes.NewReader(data)
	dir, err := npz.ReadDirectory(src, a.Size)
	if err != nil {
		return SavedArchive{}, nil, fmt.Errorf("reading the zip directory: %w", err)
	}
	todo, s := ix.unindexed(ctx, a, dir)
	c := core{cpu: limits.cpu}
	defer c.release()
	if err := c.acquire(ctx); err != nil {
		return SavedArchive{}, nil, err
	}
	if err := ix.build(src, true, todo, s); err != nil {
		return SavedArchive{}, nil, err
	}
	keptHeads(src, s)
	return s, todo, nil
}

// indexStreamed reads the zip directory of a with ranged GETs and
// builds the indexes its deflated members lack from one stream of the
// archive, as indexWhole does; its core is given back while the stream
// is waited for.
func (ix ArchiveIndexer) indexStreamed(ctx context.Context, limits *IndexLimits, a s3backend.Version) (s SavedArchive, todo []npz.Member, err error) {
	err = limits.request(ctx, func() error {
		dir, err := npz.ReadDirectory(s3backend.BindContext(ctx, s3backend.VersionReader{Store: ix.Source, Version: a}), a.Size)
		if err != nil {
			return fmt.Errorf("reading the zip directory: %w", err)
		}
		todo, s = ix.unindexed(ctx, a, dir)
		if len(todo) == 0 {
			return nil
		}
		// From the first member's local header to past the last one's
		// data: a local header's name and extra field are at most
		// 2 x 64 KiB.
		last := todo[len(todo)-1]
		from, to := todo[0].HeaderOffset, min(a.Size, last.HeaderOffset+30+2*0xFFFF+last.CompressedSize)
		stream := ix.Source.Stream(ctx, a, from, to-from)
		defer stream.Close()
		c := core{cpu: limits.cpu}
		defer c.release()
		if err := c.acquire(ctx); err != nil {
			return err
		}
		return ix.build(&forwardReaderAt{r: stream, pos: from, ctx: ctx, core: &c}, false, todo, s)
	})
	if err == nil {
		err = limits.request(ctx, func() error {
			keptHeads(s3backend.BindContext(ctx, s3backend.VersionReader{Store: ix.Source, Version: a}), s)
			return nil
		})
	}
	return s, todo, err
}

// keptHeads adds to s the heads of the members whose index a mount
// built (read from src through the index: for a streamed archive, a
// short GET each); a head that cannot be read is left out.
func keptHeads(src io.ReaderAt, s SavedArchive) {
	for name, x := range s.Indexes {
		if s.Heads[name] != nil {
			continue
		}
		head := make([]byte, min(SavedHeadBytes, x.Size()))
		if n, err := x.ReadAt(src, head, 0); n == len(head) && (err == nil || errors.Is(err, io.EOF)) {
			s.Heads[name] = head
		}
	}
}

// unindexed returns the deflated members of dir that have no index in
// Files, in archive order, and dir with the indexes of those that have
// one (a mount built them already; their heads are not at hand).
func (ix ArchiveIndexer) unindexed(ctx context.Context, a s3backend.Version, dir *npz.Directory) ([]npz.Member, SavedArchive) {
	var todo []npz.Member
	indexes := map[string]*npz.Index{}
	for _, m := range dir.Members {
		if m.Method != npz.Deflated {
			continue
		}
		if x, err := ix.Files.Load(ctx, a, m); err == nil {
			indexes[m.Name] = x
			continue
		}
		todo = append(todo, m)
	}
	slices.SortFunc(todo, func(x, y npz.Member) int { return int(x.HeaderOffset - y.HeaderOffset) })
	return todo, SavedArchive{Dir: dir, Indexes: indexes, Heads: map[string][]byte{}}
}

// build builds the indexes of todo (in archive order) from src into s,
// with each member's head, inflated again through the index: from src
// if it can be read again (the archive in memory), else from a copy of
// the start of the member's bytes kept as the build read them (a stream
// cannot go back).
func (ix ArchiveIndexer) build(src io.ReaderAt, rereadable bool, todo []npz.Member, s SavedArchive) error {
	for _, m := range todo {
		var from io.ReaderAt = src
		rec := &startRecorder{r: src, from: m.HeaderOffset, n: headSourceBytes}
		if !rereadable {
			from = rec
		}
		x, err := npz.BuildIndex(from, m, ix.Placement.Span, ix.Placement.RowLead)
		if err != nil {
			return err
		}
		s.Indexes[m.Name] = x
		rec.replay = true
		head := make([]byte, min(SavedHeadBytes, x.Size()))
		if n, err := x.ReadAt(from, head, 0); n == len(head) && (err == nil || errors.Is(err, io.EOF)) {
			s.Heads[m.Name] = head
		}
	}
	return nil
}

// headSourceBytes is how much of a member's bytes, from its local
// header on, build keeps to inflate its head again: a head of
// SavedHeadBytes takes about that much of a stream that barely
// compresses, and the inflater reads some way past what it needs.
const headSourceBytes = 1 << 20

// startRecorder reads through r and keeps a copy of what it read of
// [from, from+n); as a ReaderAt it then serves those bytes, and io.EOF
// past what it kept.
type startRecorder struct {
	r       io.ReaderAt
	from, n int64
	// kept are the pieces read, each at its archive offset.
	kept []keptPiece
	// replay is set once the build is over: reads come from kept.
	replay bool
}

type keptPiece struct {
	off  int64
	data []byte
}

func (s *startRecorder) ReadAt(p []byte, off int64) (int, error) {
	if s.replay {
		return s.replayAt(p, off)
	}
	n, err := s.r.ReadAt(p, off)
	lo, hi := max(off, s.from), min(off+int64(n), s.from+s.n)
	if hi > lo {
		s.kept = append(s.kept, keptPiece{off: lo, data: slices.Clone(p[lo-off : hi-off])})
	}
	return n, err
}

func (s *startRecorder) replayAt(p []byte, off int64) (int, error) {
	for _, k := range s.kept {
		if off >= k.off && off < k.off+int64(len(k.data)) {
			n := copy(p, k.data[off-k.off:])
			if n < len(p) {
				return n, io.EOF
			}
			return n, nil
		}
	}
	return 0, io.EOF
}

// forwardReaderAt serves reads at increasing offsets from one stream,
// skipping what lies between them: BuildIndex reads a member's local
// header, then its compressed data, in order.
//
// With a core, it gives the core back while it reads the stream and
// takes it again after: BuildIndex asks for megabytes at a time, which
// the network may take longer to bring than the core to inflate.
type forwardReaderAt struct {
	r   io.Reader
	pos int64

	ctx  context.Context
	core *core
}

func (f *forwardReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if f.core != nil {
		f.core.release()
		n, err := f.readAt(p, off)
		if cerr := f.core.acquire(f.ctx); cerr != nil {
			return n, cerr
		}
		return n, err
	}
	return f.readAt(p, off)
}

func (f *forwardReaderAt) readAt(p []byte, off int64) (int, error) {
	if off < f.pos {
		return 0, fmt.Errorf("read at %d, behind the stream at %d", off, f.pos)
	}
	if off > f.pos {
		n, err := io.CopyN(io.Discard, f.r, off-f.pos)
		f.pos += n
		if err != nil {
			return 0, err
		}
	}
	n, err := io.ReadFull(f.r, p)
	f.pos += int64(n)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF
	}
	return n, err
}
