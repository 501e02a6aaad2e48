package npz

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/bgbfs/bgbfs/fs/npz/npztest"
)

// checkArchive reads every usable member of arch through the package and
// compares it with archive/zip's reading of the same bytes, using reads
// at random offsets and an index with the given span.
func checkArchive(t *testing.T, arch []byte, span int64, wantMembers int) {
	t.Helper()
	ref, err := zip.NewReader(bytes.NewReader(arch), int64(len(arch)))
	if err != nil {
		t.Fatalf("archive/zip: %v", err)
	}
	want := map[string][]byte{}
	for _, f := range ref.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatalf("archive/zip: %v", err)
		}
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatalf("archive/zip: %s: %v", f.Name, err)
		}
		want[f.Name] = b
	}
	r := bytes.NewReader(arch)
	dir, err := ReadDirectory(r, int64(len(arch)))
	if err != nil {
		t.Fatal(err)
	}
	if len(dir.Members) != wantMembers || len(dir.Unusable) != 0 {
		t.Fatalf("%d members, %v unusable; want %d members", len(dir.Members), dir.Unusable, wantMembers)
	}
	rng := rand.New(rand.NewPCG(uint64(len(arch)), 7))
	for _, m := range dir.Members {
		data, ok := want[m.Name]
		if !ok || int64(len(data)) != m.UncompressedSize {
			t.Fatalf("%s: %d bytes, archive/zip has %d (found %v)", m.Name, m.UncompressedSize, len(data), ok)
		}
		switch m.Method {
		case Stored:
			off, err := m.DataOffset(r)
			if err != nil {
				t.Fatal(err)
			}
			s := io.NewSectionReader(r, off, m.UncompressedSize)
			for i := range 50 {
				off := rng.Int64N(int64(len(data)) + 1)
				n := rng.IntN(len(data) + 10)
				if i == 0 {
					off, n = 0, len(data)
				}
				p := make([]byte, n)
				got, err := s.ReadAt(p, off)
				// A section reader says io.EOF for an empty read at the end.
				if !bytes.Equal(p[:got], data[off:off+int64(got)]) || (got < n && err != io.EOF) || (got == n && n > 0 && err != nil) || int64(got) != min(int64(n), int64(len(data))-off) {
					t.Fatalf("%s: stored ReadAt(%d at %d) = %d, %v", m.Name, n, off, got, err)
				}
			}
		case Deflated:
			x, err := BuildIndex(r, m, span, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(data) > 4*int(span) && x.Points() < len(data)/int(span)/2 {
				t.Errorf("%s: only %d access points for %d bytes with span %d", m.Name, x.Points(), len(data), span)
			}
			checkReadAt(t, x, r, data, rng, 50)
		default:
			t.Fatalf("%s: method %d", m.Name, m.Method)
		}
	}
}

func TestReadDirectoryLayouts(t *testing.T) {
	big := npztest.Floats(600<<10, 21)
	entries := func(zip64 string, localExtra []byte) []npztest.Entry {
		return []npztest.Entry{
			{Name: "windows.npy", Method: Deflated, Level: 6, Data: big, Zip64: zip64, LocalExtra: localExtra},
			{Name: "labels.npy", Method: Stored, Data: big[:70000], Zip64: zip64},
			{Name: "empty.npy", Method: Deflated, Level: 6, Zip64: zip64},
			{Name: "empty-stored", Method: Stored, Zip64: zip64},
		}
	}
	// numpy's local headers carry a Zip64 extra field its central
	// directory entries lack; Zip64 central directory fields appear
	// only where the classic field is saturated.
	z64Local := binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64([]byte{1, 0, 16, 0}, uint64(len(big))), 0)
	tests := []struct {
		name    string
		entries []npztest.Entry
		opts    npztest.Options
	}{
		{"classic", entries("", nil), npztest.Options{}},
		{"comment", entries("", nil), npztest.Options{Comment: "a comment with PK\x05\x06 in it"}},
		{"local extra only", entries("", z64Local), npztest.Options{}},
		{"zip64 all fields", entries("uco", nil), npztest.Options{Zip64End: true, Saturate: true}},
		{"zip64 offset only", entries("o", nil), npztest.Options{Zip64End: true}},
		{"zip64 sizes only", entries("uc", nil), npztest.Options{Zip64End: true, Saturate: true, Comment: "c"}},
		{"zip64 compressed size only", entries("c", nil), npztest.Options{Zip64End: true}},
		{"zip64 end record, classic entries", entries("", nil), npztest.Options{Zip64End: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkArchive(t, npztest.Zip(tt.entries, tt.opts), 16<<10, len(tt.entries))
		})
	}
}

func TestArchiveZipWriter(t *testing.T) {
	// archive/zip's writer uses data descriptors (sizes only after the
	// data, zero in the local header).
	var b bytes.Buffer
	w := zip.NewWriter(&b)
	for i, name := range []string{"a.npy", "b.npy"} {
		method := zip.Deflate
		if i == 1 {
			method = zip.Store
		}
		f, err := w.CreateHeader(&zip.FileHeader{Name: name, Method: method})
		if err != nil {
			t.Fatal(err)
		}
		f.Write(npztest.Floats(200<<10, uint64(i)))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	checkArchive(t, b.Bytes(), 32<<10, 2)
}

func TestUnusableMembers(t *testing.T) {
	d := []byte("data")
	arch := npztest.Zip([]npztest.Entry{
		{Name: "ok.npy", Method: Deflated, Data: d},
		{Name: "dir/", Method: Stored},
		{Name: "dir/x.npy", Method: Stored, Data: d},
		{Name: ".", Method: Stored},
		{Name: "..", Method: Stored},
		{Name: "", Method: Stored},
		{Name: "nul\x00", Method: Stored},
		{Name: strings.Repeat("n", 256), Method: Stored},
		{Name: "dup", Method: Stored, Data: d},
		{Name: "dup", Method: Deflated, Data: d},
		{Name: "enc", Method: Stored, Data: d, Flags: 1},
		{Name: "bzip2", Method: 12, Data: d},
		{Name: "ok2.npy", Method: Stored, Data: d},
	}, npztest.Options{})
	dir, err := ReadDirectory(bytes.NewReader(arch), int64(len(arch)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range dir.Members {
		names = append(names, m.Name)
	}
	if strings.Join(names, ",") != "ok.npy,ok2.npy" {
		t.Errorf("members %q", names)
	}
	if len(dir.Unusable) != 11 {
		t.Errorf("%d unusable, want 11: %v", len(dir.Unusable), dir.Unusable)
	}
	for _, e := range dir.Unusable {
		if !errors.Is(e, ErrUnsupported) {
			t.Errorf("%v does not wrap ErrUnsupported", e)
		}
	}
}

func TestCorruptArchives(t *testing.T) {
	data := npztest.Floats(256<<10, 31)
	good := func() []byte {
		return npztest.Zip([]npztest.Entry{
			{Name: "windows.npy", Method: Deflated, Level: 6, Data: data},
			{Name: "labels.npy", Method: Stored, Data: data[:1000]},
		}, npztest.Options{})
	}
	z64 := func() []byte {
		return npztest.Zip([]npztest.Entry{
			{Name: "windows.npy", Method: Deflated, Level: 6, Data: data, Zip64: "uco"},
		}, npztest.Options{Zip64End: true, Saturate: true})
	}
	le := binary.LittleEndian
	// Offsets of records in good(): the central directory entries follow
	// the data, the end record is last.
	eocd := func(b []byte) int { return len(b) - eocdLen }
	cd := func(b []byte) int { return int(le.Uint32(b[eocd(b)+16:])) }
	cd2 := func(b []byte) int { return cd(b) + centralLen + len("windows.npy") }
	cd64 := func(b []byte) int { return int(le.Uint64(b[eocd(b)-zip64LocatorLen-zip64EOCDLen+48:])) }

	tests := []struct {
		name  string
		arch  func() []byte
		want  error // from ReadDirectory, or if nil from reading the members
		index error
	}{
		{"empty file", func() []byte { return nil }, ErrFormat, nil},
		{"truncated end", func() []byte { b := good(); return b[:len(b)-1] }, ErrFormat, nil},
		{"truncated half", func() []byte { b := good(); return b[:len(b)/2] }, ErrFormat, nil},
		{"bad end signature", func() []byte { b := good(); b[eocd(b)] ^= 1; return b }, ErrFormat, nil},
		{"directory offset +1", func() []byte { b := good(); le.PutUint32(b[eocd(b)+16:], uint32(cd(b)+1)); return b }, ErrFormat, nil},
		{"directory offset past end", func() []byte { b := good(); le.PutUint32(b[eocd(b)+16:], 0xFFFFFFF0); return b }, ErrFormat, nil},
		{"directory size huge", func() []byte { b := good(); le.PutUint32(b[eocd(b)+12:], 0xFFFFFFF0); return b }, ErrFormat, nil},
		{"entry count huge", func() []byte {
			b := good()
			le.PutUint16(b[eocd(b)+8:], 0xFFFE)
			le.PutUint16(b[eocd(b)+10:], 0xFFFE)
			return b
		}, ErrFormat, nil},
		{"entry count short", func() []byte {
			b := good()
			le.PutUint16(b[eocd(b)+8:], 1)
			le.PutUint16(b[eocd(b)+10:], 1)
			return b
		}, nil, nil}, // trailing directory bytes are ignored, like other readers
		{"multi-disk", func() []byte { b := good(); le.PutUint16(b[eocd(b)+4:], 1); return b }, ErrUnsupported, nil},
		{"bad entry signature", func() []byte { b := good(); b[cd2(b)] ^= 1; return b }, ErrFormat, nil},
		{"name length huge", func() []byte { b := good(); le.PutUint16(b[cd(b)+28:], 0xFFFF); return b }, ErrFormat, nil},
		{"compressed size huge", func() []byte { b := good(); le.PutUint32(b[cd(b)+20:], 0xFFFFFFF0); return b }, ErrFormat, nil},
		{"uncompressed size 4 GB", func() []byte { b := good(); le.PutUint32(b[cd(b)+24:], 0xFFFFFFF0); return b }, ErrFormat, nil},
		{"header offset past directory", func() []byte { b := good(); le.PutUint32(b[cd2(b)+42:], uint32(cd(b))); return b }, ErrFormat, nil},
		{"stored sizes differ", func() []byte { b := good(); le.PutUint32(b[cd2(b)+24:], 999); return b }, ErrFormat, nil},
		{"zip64 size 1 TB", func() []byte {
			b := z64()
			le.PutUint64(b[cd64(b)+centralLen+len("windows.npy")+4:], 1<<40)
			return b
		}, ErrFormat, nil},
		{"zip64 offset huge", func() []byte {
			b := z64()
			le.PutUint64(b[cd64(b)+centralLen+len("windows.npy")+20:], 1<<62)
			return b
		}, ErrFormat, nil},
		{"zip64 extra too short", func() []byte {
			b := z64()
			le.PutUint16(b[cd64(b)+centralLen+len("windows.npy")+2:], 8)
			return b
		}, ErrFormat, nil},
		{"zip64 end record bad signature", func() []byte {
			b := z64()
			b[eocd(b)-zip64LocatorLen-zip64EOCDLen] ^= 1
			return b
		}, ErrFormat, nil},
		{"zip64 locator offset huge", func() []byte {
			b := z64()
			le.PutUint64(b[eocd(b)-zip64LocatorLen+8:], 1<<63)
			return b
		}, ErrFormat, nil},
		{"zip64 end record disagrees", func() []byte {
			b := npztest.Zip([]npztest.Entry{{Name: "w", Method: Stored, Data: data[:10]}}, npztest.Options{Zip64End: true})
			le.PutUint32(b[eocd(b)+12:], 1)
			return b
		}, ErrFormat, nil},
		{"bad local signature", func() []byte { b := good(); b[0] ^= 1; return b }, nil, ErrFormat},
		{"local name differs", func() []byte { b := good(); b[localLen] = 'W'; return b }, nil, ErrFormat},
		{"local extra length huge", func() []byte { b := good(); le.PutUint16(b[28:], 0xFFFF); return b }, nil, ErrFormat},
		{"CRC flipped", func() []byte { b := good(); b[cd(b)+16] ^= 1; return b }, nil, ErrChecksum},
		{"compressed byte flipped", func() []byte { b := good(); b[localLen+len("windows.npy")+5000] ^= 0x20; return b }, nil, nil},
		{"compressed size short", func() []byte {
			b := good()
			le.PutUint32(b[cd(b)+20:], le.Uint32(b[cd(b)+20:])-50)
			return b
		}, nil, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.arch()
			r := bytes.NewReader(b)
			dir, err := ReadDirectory(r, int64(len(b)))
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("ReadDirectory: %v, want %v", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadDirectory: %v", err)
			}
			var merr error
			for _, m := range dir.Members {
				if m.Method == Deflated {
					_, err = BuildIndex(r, m, 0, 0)
				} else {
					_, err = m.DataOffset(r)
				}
				merr = errors.Join(merr, err)
			}
			switch {
			case tt.name == "entry count short":
				if merr != nil || len(dir.Members) != 1 {
					t.Fatalf("%d members, %v", len(dir.Members), merr)
				}
			case tt.index == nil:
				if !errors.Is(merr, ErrCorrupt) && !errors.Is(merr, ErrChecksum) {
					t.Fatalf("members: %v, want ErrCorrupt or ErrChecksum", merr)
				}
			case !errors.Is(merr, tt.index):
				t.Fatalf("members: %v, want %v", merr, tt.index)
			}
		})
	}
}

// TestCorruptAllocation checks that length fields claiming gigabytes
// cost no more memory than a valid archive.
func TestCorruptAllocation(t *testing.T) {
	data := npztest.Floats(64<<10, 41)
	le := binary.LittleEndian
	mk := func(edit func(b []byte, cd int)) []byte {
		b := npztest.Zip([]npztest.Entry{{Name: "w.npy", Method: Deflated, Level: 6, Data: data, Zip64: "uco"}}, npztest.Options{Zip64End: true, Saturate: true})
		edit(b, int(le.Uint64(b[len(b)-eocdLen-zip64LocatorLen-zip64EOCDLen+48:])))
		return b
	}
	x := centralLen + len("w.npy") + 4 // Zip64 fields: usize, csize, offset
	tests := map[string][]byte{
		"directory size 1 TB": mk(func(b []byte, cd int) {
			le.PutUint64(b[len(b)-eocdLen-zip64LocatorLen-zip64EOCDLen+40:], 1<<40)
		}),
		"entries 2^60": mk(func(b []byte, cd int) {
			z := len(b) - eocdLen - zip64LocatorLen - zip64EOCDLen
			le.PutUint64(b[z+24:], 1<<60)
			le.PutUint64(b[z+32:], 1<<60)
		}),
		"uncompressed 1000x compressed": mk(func(b []byte, cd int) {
			le.PutUint64(b[cd+x:], le.Uint64(b[cd+x+8:])*1000)
		}),
		"compressed size 1 TB": mk(func(b []byte, cd int) { le.PutUint64(b[cd+x+8:], 1<<40) }),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			r := bytes.NewReader(b)
			dir, err := ReadDirectory(r, int64(len(b)))
			if err == nil {
				for _, m := range dir.Members {
					_, err = BuildIndex(r, m, 0, 0)
				}
			}
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Fatal("no error")
			}
			// BuildIndex's buffers: compressed chunk (here the whole
			// small member) and 288 KiB of output.
			if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
				t.Errorf("allocated %d bytes before failing with %v", got, err)
			}
		})
	}
}
