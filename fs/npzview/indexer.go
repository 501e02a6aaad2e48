package npzview

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"golang.org/x/sync/errgroup"

	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/s3backend"
)

// ArchiveSource is where an ArchiveIndexer reads archives: ranged reads
// for the zip directory, and one stream for the members' bytes
// (s3backend.Client).
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
	// Saved, if set, is told the compressed size of each member whose
	// index was built and saved. It may be called from several
	// goroutines.
	Saved func(compressedSize int64)
}

// Current reports whether archive a is indexed in Files with the
// indexer's placement: then IndexArchive has nothing to do.
func (ix ArchiveIndexer) Current(ctx context.Context, a s3backend.Version) (bool, error) {
	return ix.Files.Done(ctx, a, ix.Placement)
}

// IndexArchive reads the zip directory of a, builds the index of every
// deflated member that has none in Files, reading the members' bytes in
// one streaming GET, saves them, and marks the archive done with its
// directory and indexes in one file, which a mount reads at first open.
func (ix ArchiveIndexer) IndexArchive(ctx context.Context, a s3backend.Version) error {
	dir, err := npz.ReadDirectory(s3backend.BindContext(ctx, s3backend.VersionReader{Store: ix.Source, Version: a}), a.Size)
	if err != nil {
		return fmt.Errorf("reading the zip directory: %w", err)
	}
	todo, indexes := ix.unindexed(ctx, a, dir)
	if len(todo) > 0 {
		if err := ix.build(ctx, a, todo, indexes); err != nil {
			return err
		}
	}
	if err := ix.Files.MarkDone(ctx, a, ix.Placement, dir, indexes); err != nil {
		return fmt.Errorf("marking the archive indexed: %w", err)
	}
	return nil
}

// unindexed returns the deflated members of dir that have no index in
// Files, in archive order, and the indexes of those that have one (a
// mount built them already).
func (ix ArchiveIndexer) unindexed(ctx context.Context, a s3backend.Version, dir *npz.Directory) ([]npz.Member, map[string]*npz.Index) {
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
	return todo, indexes
}

// build builds the indexes of todo (in archive order) from one stream
// of the archive, into indexes, and saves each into Files while the next
// member inflates: with an s3:// dir a save is a round trip.
func (ix ArchiveIndexer) build(ctx context.Context, a s3backend.Version, todo []npz.Member, indexes map[string]*npz.Index) error {
	// From the first member's local header to past the last one's data:
	// a local header's name and extra field are at most 2 x 64 KiB.
	last := todo[len(todo)-1]
	from, to := todo[0].HeaderOffset, min(a.Size, last.HeaderOffset+30+2*0xFFFF+last.CompressedSize)
	stream := ix.Source.Stream(ctx, a, from, to-from)
	defer stream.Close()
	src := &forwardReaderAt{r: stream, pos: from}
	var saves errgroup.Group
	for _, m := range todo {
		x, err := npz.BuildIndex(src, m, ix.Placement.Span, ix.Placement.RowLead)
		if err != nil {
			saves.Wait()
			return err
		}
		indexes[m.Name] = x
		saves.Go(func() error {
			if err := ix.Files.Save(ctx, a, m, x); err != nil {
				return fmt.Errorf("saving the index of %q: %w", m.Name, err)
			}
			if ix.Saved != nil {
				ix.Saved(m.CompressedSize)
			}
			return nil
		})
	}
	return saves.Wait()
}

// forwardReaderAt serves reads at increasing offsets from one stream,
// skipping what lies between them: BuildIndex reads a member's local
// header, then its compressed data, in order.
type forwardReaderAt struct {
	r   io.Reader
	pos int64
}

func (f *forwardReaderAt) ReadAt(p []byte, off int64) (int, error) {
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
