package npzview

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	iofs "io/fs"
	"strconv"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/s3backend"
)

// StateDir saves named files across runs: a local directory
// (cache.Dir) or a prefix of a bucket (s3backend.Blobs). Names are
// relative, slash-separated paths.
type StateDir interface {
	// Load returns the file name, or an error wrapping io/fs.ErrNotExist
	// if there is none.
	Load(ctx context.Context, name string) ([]byte, error)
	// Store writes data as the file name, whole or not at all.
	Store(ctx context.Context, name string, data []byte) error
}

// IndexFiles saves the indexes of compressed .npz members in a StateDir,
// so that a restart, another mount or a whole fleet reads what one build
// found instead of inflating every member again.
//
// An index is kept in one of two kinds of file: a mount that builds an
// index saves it as a file of its own (Save), and "bgbfs index" keeps an
// archive's zip directory and all its members' indexes in one file
// (MarkDone), which a mount reads at the archive's first open, and
// removes the member files it replaces (RemoveMemberFile). A dir written
// by older versions, with both, is read the same way.
//
// Each file is named by a hash of what it is of: the
// store (endpoint and bucket), the key, the archive version (ETag, or size and modification
// time) and size, the member, and the encoding's format version. The
// file says all of these again and ends in a CRC-32C of the rest; an
// index is used only if all agree, so a file that is torn, damaged, of
// another format or of an overwritten archive is never trusted (Load
// says why, and it is built and written again).
type IndexFiles struct {
	Dir StateDir
	// Source names the store the archives are read from (its endpoint
	// and bucket), as the disk tier's does.
	Source string
	// Listed, if set, says which names the dir holds (from one listing),
	// so that a name it does not hold is not asked for.
	Listed map[string]bool
}

// IndexArea is where in a StateDir the index files are (relative names
// start with it), for a listing of them.
const IndexArea = indexFileDir

// load reads the file name unless Listed says the dir lacks it.
func (f IndexFiles) load(ctx context.Context, name string) ([]byte, error) {
	if f.Listed != nil && !f.Listed[name] {
		return nil, fmt.Errorf("%s: %w", name, iofs.ErrNotExist)
	}
	return f.Dir.Load(ctx, name)
}

// ErrIndexFileBad wraps the reason an index file in the dir was not
// used: it is corrupt, truncated, of another format version, or of
// another archive version than the one listed now.
var ErrIndexFileBad = errors.New("npz index file ignored")

const (
	indexFileMagic  = "BGBFSNX\n"
	indexFileDir    = cache.IndexesArea + "npz/"
	indexFileSuffix = ".idx"
	// archiveDoneSuffix names the file "bgbfs index" writes once every
	// compressed member of an archive version is indexed: a later run
	// skips the archive without a request to the bucket.
	archiveDoneSuffix = ".done"
	// indexFileHeader is the magic and the format version; the trailer
	// is the CRC-32C.
	indexFileHeader = len(indexFileMagic) + 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// indexID is what an index file is of.
type indexID struct {
	source string
	obj    s3backend.Version
	member string
}

func (id indexID) fields() []string {
	return []string{id.source, id.obj.Key, id.obj.Tag(), strconv.FormatInt(id.obj.Size, 10), id.member}
}

// name is the file's path in the dir: a hash of the fields and the
// format version, spread over 256 subdirectories.
func (id indexID) name(suffix string) string {
	fields := append(id.fields(), "format "+strconv.Itoa(npz.IndexFormat))
	return cache.NewObjectID(fields...).Name(indexFileDir) + suffix
}

// encode frames body as a file of id: magic, format version, the id's
// fields, the body, and a CRC-32C of all that.
func (id indexID) encode(body []byte) []byte {
	b := append([]byte(indexFileMagic), binary.LittleEndian.AppendUint32(nil, npz.IndexFormat)...)
	for _, f := range id.fields() {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	b = append(b, body...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// decode checks that b is a whole file of id in the current format and
// returns its body; the error wraps ErrIndexFileBad with the reason.
func (id indexID) decode(b []byte) ([]byte, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrIndexFileBad, fmt.Sprintf(format, args...))
	}
	if len(b) < indexFileHeader+4 {
		return nil, bad("%d bytes, too short (truncated)", len(b))
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if string(b[:len(indexFileMagic)]) != indexFileMagic {
		return nil, bad("not an index file (bad magic)")
	}
	if v := binary.LittleEndian.Uint32(b[len(indexFileMagic):]); v != npz.IndexFormat {
		return nil, bad("format version %d, this bgbfs reads %d", v, npz.IndexFormat)
	}
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, bad("checksum mismatch (corrupt or truncated)")
	}
	rest := body[indexFileHeader:]
	for i, want := range id.fields() {
		n, k := binary.Uvarint(rest)
		if k <= 0 || n > uint64(len(rest)-k) {
			return nil, bad("malformed header")
		}
		if got := string(rest[k : k+int(n)]); got != want {
			what := [...]string{"source", "key", "archive version", "archive size", "member"}[i]
			return nil, bad("of another %s (%q, want %q)", what, got, want)
		}
		rest = rest[k+int(n):]
	}
	return rest, nil
}

// Load returns the index of member m of archive obj saved in the dir: an
// error wrapping io/fs.ErrNotExist if there is none, ErrIndexFileBad if
// the file is not to be trusted, or another error if it cannot be read.
func (f IndexFiles) Load(ctx context.Context, obj s3backend.Version, m npz.Member) (*npz.Index, error) {
	id := indexID{f.Source, obj, m.Name}
	b, err := f.load(ctx, id.name(indexFileSuffix))
	if err != nil {
		return nil, err
	}
	body, err := id.decode(b)
	if err != nil {
		return nil, err
	}
	x, err := npz.UnmarshalIndex(body, m)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIndexFileBad, err)
	}
	return x, nil
}

// Save writes the index x of member m of archive obj into the dir.
func (f IndexFiles) Save(ctx context.Context, obj s3backend.Version, m npz.Member, x *npz.Index) error {
	body, err := x.MarshalBinary()
	if err != nil {
		return err
	}
	id := indexID{f.Source, obj, m.Name}
	return f.Dir.Store(ctx, id.name(indexFileSuffix), id.encode(body))
}

// fileRemover is a StateDir that can delete a file: a local dir.
type fileRemover interface{ Remove(name string) }

// RemoveMemberFile deletes the index file of member m of archive obj, if
// the dir can delete files: once MarkDone has kept the index in the
// archive's file, which a mount reads first, it is a second copy.
func (f IndexFiles) RemoveMemberFile(obj s3backend.Version, m npz.Member) {
	if r, ok := f.Dir.(fileRemover); ok {
		r.Remove(indexID{f.Source, obj, m.Name}.name(indexFileSuffix))
	}
}

func (p IndexPlacement) encode() []byte {
	return binary.AppendUvarint(binary.AppendUvarint(nil, uint64(p.Span)), uint64(p.RowLead))
}

// SavedArchive is what the archive file "bgbfs index" writes holds of
// one archive version: its zip directory, its deflated members' indexes
// and, by member, the start of the content (at most SavedHeadBytes).
// The heads answer the read numpy's header read makes the kernel send at
// every open (tens of KiB of content, far more than the .npy header the
// index keeps): with them, a mount's first open of a member costs no
// fetch of the member's first blocks. Files written before heads were
// kept have none.
type SavedArchive struct {
	Dir     *npz.Directory
	Indexes map[string]*npz.Index
	Heads   map[string][]byte
}

// SavedHeadBytes is how much of a member's content from its start an
// archive file keeps: what the kernel asks for to answer numpy's read of
// an array's header (headRegion).
const SavedHeadBytes = headRegion

// MarkDone records that every compressed member of archive obj is
// indexed in the dir, with placement p, in one file that also holds the
// archive's zip directory, its members' indexes and their heads: a mount
// reads that one file at the archive's first open instead of the
// archive's tail, each index and each member's first blocks. The heads
// come after the indexes, so that a file without them (written before)
// reads the same.
func (f IndexFiles) MarkDone(ctx context.Context, obj s3backend.Version, p IndexPlacement, s SavedArchive) error {
	body := p.encode()
	db, err := s.Dir.MarshalBinary()
	if err != nil {
		return err
	}
	body = appendBytes(body, db)
	body = binary.AppendUvarint(body, uint64(len(s.Indexes)))
	var heads int
	for _, m := range s.Dir.Members {
		x := s.Indexes[m.Name]
		if x == nil {
			continue
		}
		xb, err := x.MarshalBinary()
		if err != nil {
			return err
		}
		body = appendBytes(appendBytes(body, []byte(m.Name)), xb)
		if s.Heads[m.Name] != nil {
			heads++
		}
	}
	body = binary.AppendUvarint(body, uint64(heads))
	for _, m := range s.Dir.Members {
		if h := s.Heads[m.Name]; s.Indexes[m.Name] != nil && h != nil {
			body = appendBytes(appendBytes(body, []byte(m.Name)), h)
		}
	}
	id := indexID{f.Source, obj, ""}
	return f.Dir.Store(ctx, id.name(archiveDoneSuffix), id.encode(body))
}

// appendBytes appends b to body, after its length.
func appendBytes(body, b []byte) []byte {
	return append(binary.AppendUvarint(body, uint64(len(b))), b...)
}

// Done reports whether MarkDone recorded archive obj with placement p. A
// missing or untrustworthy record is not done; an error is a failure to
// look.
func (f IndexFiles) Done(ctx context.Context, obj s3backend.Version, p IndexPlacement) (bool, error) {
	id := indexID{f.Source, obj, ""}
	b, err := f.load(ctx, id.name(archiveDoneSuffix))
	if errors.Is(err, iofs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	body, err := id.decode(b)
	return err == nil && bytes.HasPrefix(body, p.encode()), nil
}

// LoadArchive returns what MarkDone saved for archive obj: an error
// wrapping io/fs.ErrNotExist if there is none, ErrIndexFileBad if the
// file is not to be trusted.
func (f IndexFiles) LoadArchive(ctx context.Context, obj s3backend.Version) (SavedArchive, error) {
	id := indexID{f.Source, obj, ""}
	b, err := f.load(ctx, id.name(archiveDoneSuffix))
	if err != nil {
		return SavedArchive{}, err
	}
	body, err := id.decode(b)
	if err != nil {
		return SavedArchive{}, err
	}
	r := archiveFileReader{bytes.NewReader(body)}
	for range 2 { // the placement
		if _, err := binary.ReadUvarint(r); err != nil {
			return SavedArchive{}, r.bad("no placement")
		}
	}
	if r.Len() == 0 {
		return SavedArchive{}, fmt.Errorf("archive file without a directory: %w", iofs.ErrNotExist)
	}
	dir, err := npz.UnmarshalDirectory(r.next(), obj.Size)
	if err != nil {
		return SavedArchive{}, r.bad("%v", err)
	}
	s := SavedArchive{Dir: dir}
	if s.Indexes, err = r.indexes(dir); err != nil {
		return SavedArchive{}, err
	}
	if r.Len() > 0 { // written before heads were kept if not
		if s.Heads, err = r.heads(s.Indexes); err != nil {
			return SavedArchive{}, err
		}
	}
	if r.Len() != 0 {
		return SavedArchive{}, r.bad("%d bytes after the heads", r.Len())
	}
	return s, nil
}

// archiveFileReader reads the body of an archive file.
type archiveFileReader struct{ *bytes.Reader }

func (r archiveFileReader) bad(why string, args ...any) error {
	return fmt.Errorf("%w: archive file: %s", ErrIndexFileBad, fmt.Sprintf(why, args...))
}

// next reads a length and that many bytes; nil if they are not there.
func (r archiveFileReader) next() []byte {
	n, err := binary.ReadUvarint(r)
	if err != nil || n > uint64(r.Len()) {
		return nil
	}
	v := make([]byte, n)
	r.Read(v)
	return v
}

// indexes reads the member indexes, each of a member of dir.
func (r archiveFileReader) indexes(dir *npz.Directory) (map[string]*npz.Index, error) {
	count, err := binary.ReadUvarint(r)
	if err != nil || count > uint64(len(dir.Members)) {
		return nil, r.bad("index count")
	}
	members := map[string]npz.Member{}
	for _, m := range dir.Members {
		members[m.Name] = m
	}
	indexes := map[string]*npz.Index{}
	for range count {
		name := string(r.next())
		m, ok := members[name]
		if !ok || indexes[name] != nil {
			return nil, r.bad("index of %q, not a member", name)
		}
		x, err := npz.UnmarshalIndex(r.next(), m)
		if err != nil {
			return nil, r.bad("index of %q: %v", name, err)
		}
		indexes[name] = x
	}
	return indexes, nil
}

// heads reads the members' heads, each of a member with an index,
// starting with what that index keeps of the content's start.
func (r archiveFileReader) heads(indexes map[string]*npz.Index) (map[string][]byte, error) {
	count, err := binary.ReadUvarint(r)
	if err != nil || count > uint64(len(indexes)) {
		return nil, r.bad("head count")
	}
	heads := map[string][]byte{}
	for range count {
		name := string(r.next())
		x := indexes[name]
		if x == nil || heads[name] != nil {
			return nil, r.bad("head of %q, not an indexed member", name)
		}
		h := r.next()
		if len(h) > SavedHeadBytes || int64(len(h)) > x.Size() || !bytes.HasPrefix(h, x.Head()) {
			return nil, r.bad("head of %q: %d bytes, not the start of its content", name, len(h))
		}
		heads[name] = h
	}
	return heads, nil
}
