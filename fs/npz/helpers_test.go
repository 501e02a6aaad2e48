package npz

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"testing"
)

// inflateAll decodes a whole raw deflate stream with the package's
// inflater, as BuildIndex does but keeping all output.
func inflateAll(stream []byte) ([]byte, error) {
	f := newInflater(bytes.NewReader(stream), 0, int64(len(stream)), 1<<20, 1<<20)
	var out []byte
	done := 0
	for f.state != streamDone {
		if f.w >= f.stopMax() {
			out = append(out, f.out[done:f.w]...)
			f.slide()
			done = f.w
		}
		if err := f.step(f.stopMax()); err != nil {
			return out, err
		}
	}
	return append(out, f.out[done:f.w]...), nil
}

// stdInflate decodes with compress/flate, the reference.
func stdInflate(stream []byte) ([]byte, error) {
	return io.ReadAll(flate.NewReader(bytes.NewReader(stream)))
}

func deflate(t testing.TB, data []byte, level int) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := flate.NewWriter(&b, level)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// floatData returns n bytes of little-endian float32 standard normal
// samples, which compress about as badly as EEG (about 1.1x).
func floatData(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := 0; i+4 <= n; i += 4 {
		binary.LittleEndian.PutUint32(b[i:], math.Float32bits(float32(rng.NormFloat64())))
	}
	return b
}

// walkData returns n bytes of little-endian float32 random walks, one of
// 15360 samples per EEG channel (a channel of a 60 s window at 256 Hz),
// kept at full float32 precision: deflate shrinks it about 1.13x, as
// it does the real recordings (pure noise, floatData, only 1.08x).
func walkData(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	var x float32
	for i := 0; i+4 <= n; i += 4 {
		if (i/4)%15360 == 0 {
			x = float32(rng.NormFloat64() * 20)
		}
		x += float32(rng.NormFloat64())
		binary.LittleEndian.PutUint32(b[i:], math.Float32bits(x))
	}
	return b
}

// zipEntry is one member for buildZip.
type zipEntry struct {
	name   string
	method uint16
	data   []byte // uncompressed content
	level  int    // for deflate
	flags  uint16
	// zip64 lists the central directory fields saturated and moved to
	// a Zip64 extra field: 'u' uncompressed size, 'c' compressed size,
	// 'o' header offset.
	zip64 string
	// localExtra is appended to the local header's extra field only.
	localExtra []byte
}

type zipOpts struct {
	zip64End bool   // write a Zip64 end record and locator
	saturate bool   // and saturate the classic end record's fields
	comment  string // archive comment
}

// buildZip writes a zip archive by hand, so tests control every field
// (archive/zip only writes Zip64 records for huge archives).
func buildZip(t testing.TB, entries []zipEntry, o zipOpts) []byte {
	t.Helper()
	var out bytes.Buffer
	le := binary.LittleEndian
	var cd bytes.Buffer
	for _, e := range entries {
		comp := e.data
		if e.method == Deflated {
			comp = deflate(t, e.data, e.level)
		}
		crc := crc32.ChecksumIEEE(e.data)
		off := out.Len()
		var h []byte
		h = le.AppendUint32(h, sigLocal)
		h = le.AppendUint16(h, 45)
		h = le.AppendUint16(h, e.flags)
		h = le.AppendUint16(h, e.method)
		h = le.AppendUint32(h, 0) // time, date
		h = le.AppendUint32(h, crc)
		h = le.AppendUint32(h, uint32(len(comp)))
		h = le.AppendUint32(h, uint32(len(e.data)))
		h = le.AppendUint16(h, uint16(len(e.name)))
		h = le.AppendUint16(h, uint16(len(e.localExtra)))
		h = append(h, e.name...)
		h = append(h, e.localExtra...)
		out.Write(h)
		out.Write(comp)

		usize, csize, hoff := uint32(len(e.data)), uint32(len(comp)), uint32(off)
		var x []byte
		for _, c := range "uco" {
			if !bytes.ContainsRune([]byte(e.zip64), c) {
				continue
			}
			switch c {
			case 'u':
				x, usize = le.AppendUint64(x, uint64(len(e.data))), 0xFFFFFFFF
			case 'c':
				x, csize = le.AppendUint64(x, uint64(len(comp))), 0xFFFFFFFF
			case 'o':
				x, hoff = le.AppendUint64(x, uint64(off)), 0xFFFFFFFF
			}
		}
		var extra []byte
		if len(x) > 0 {
			extra = le.AppendUint16(extra, zip64ExtraID)
			extra = le.AppendUint16(extra, uint16(len(x)))
			extra = append(extra, x...)
		}
		var c []byte
		c = le.AppendUint32(c, sigCentral)
		c = le.AppendUint16(c, 45)
		c = le.AppendUint16(c, 45)
		c = le.AppendUint16(c, e.flags)
		c = le.AppendUint16(c, e.method)
		c = le.AppendUint32(c, 0)
		c = le.AppendUint32(c, crc)
		c = le.AppendUint32(c, csize)
		c = le.AppendUint32(c, usize)
		c = le.AppendUint16(c, uint16(len(e.name)))
		c = le.AppendUint16(c, uint16(len(extra)))
		c = le.AppendUint16(c, 0) // comment
		c = le.AppendUint16(c, 0) // disk
		c = le.AppendUint16(c, 0) // internal attributes
		c = le.AppendUint32(c, 0) // external attributes
		c = le.AppendUint32(c, hoff)
		c = append(c, e.name...)
		c = append(c, extra...)
		cd.Write(c)
	}
	cdOff := out.Len()
	out.Write(cd.Bytes())
	n, size, offset := uint64(len(entries)), uint64(cd.Len()), uint64(cdOff)
	if o.zip64End {
		z64Off := out.Len()
		var z []byte
		z = le.AppendUint32(z, sigZip64EOCD)
		z = le.AppendUint64(z, zip64EOCDLen-12)
		z = le.AppendUint16(z, 45)
		z = le.AppendUint16(z, 45)
		z = le.AppendUint32(z, 0)
		z = le.AppendUint32(z, 0)
		z = le.AppendUint64(z, n)
		z = le.AppendUint64(z, n)
		z = le.AppendUint64(z, size)
		z = le.AppendUint64(z, offset)
		z = le.AppendUint32(z, sigZip64Locator)
		z = le.AppendUint32(z, 0)
		z = le.AppendUint64(z, uint64(z64Off))
		z = le.AppendUint32(z, 1)
		out.Write(z)
		if o.saturate {
			n, size, offset = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
		}
	}
	var e []byte
	e = le.AppendUint32(e, sigEOCD)
	e = le.AppendUint32(e, 0)
	e = le.AppendUint16(e, uint16(n))
	e = le.AppendUint16(e, uint16(n))
	e = le.AppendUint32(e, uint32(size))
	e = le.AppendUint32(e, uint32(offset))
	e = le.AppendUint16(e, uint16(len(o.comment)))
	e = append(e, o.comment...)
	out.Write(e)
	return out.Bytes()
}
