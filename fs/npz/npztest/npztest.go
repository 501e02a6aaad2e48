// Package npztest builds .npy files and zip archives for the tests of the
// packages that read them: every field is the caller's to set, so a test
// can make what numpy writes, and what no writer should.
package npztest

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"strings"
)

// Methods of a zip member.
const (
	Stored   = 0
	Deflated = 8
)

// Floats returns n bytes of little-endian float32 standard normal noise
// (its last bytes, past a multiple of 4, zero), which deflate shrinks
// about as little as it does EEG recordings (1.1x).
func Floats(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := 0; i+4 <= n; i += 4 {
		binary.LittleEndian.PutUint32(b[i:], math.Float32bits(float32(rng.NormFloat64())))
	}
	return b
}

// NPYHeader returns the header numpy writes (format 1.0, padded with
// spaces and a newline to a multiple of 64 bytes) for an array of dtype
// descr and shape.
func NPYHeader(descr string, shape ...int) []byte {
	dims := make([]string, len(shape))
	for i, d := range shape {
		dims[i] = fmt.Sprint(d)
	}
	tuple := strings.Join(dims, ", ")
	if len(shape) == 1 {
		tuple += ","
	}
	dict := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, tuple)
	pad := (64 - (10+len(dict)+1)%64) % 64
	hdr := dict + strings.Repeat(" ", pad) + "\n"
	out := append([]byte("\x93NUMPY\x01\x00"), byte(len(hdr)), byte(len(hdr)>>8))
	return append(out, hdr...)
}

// NPY returns a .npy file of rows rows of rowBytes bytes of float32
// noise (Floats) each.
func NPY(rows, rowBytes int, seed uint64) []byte {
	return append(NPYHeader("<f4", rows, rowBytes/4), Floats(rows*rowBytes, seed)...)
}

// Deflate returns data as a raw deflate stream, compressed at level.
func Deflate(data []byte, level int) []byte {
	var b bytes.Buffer
	w, err := flate.NewWriter(&b, level)
	if err != nil {
		panic(err) // a level compress/flate does not have
	}
	w.Write(data)
	w.Close()
	return b.Bytes()
}

// Entry is one member of an archive Zip writes.
type Entry struct {
	Name   string
	Method uint16
	// Data is the member's content; Level the deflate level of a
	// deflated one (0 is flate.NoCompression).
	Data  []byte
	Level int
	// Raw, if set, is a deflated member's compressed bytes as they are
	// (its CRC-32 and size are still Data's).
	Raw   []byte
	Flags uint16
	// Zip64 lists the central directory fields saturated and moved to a
	// Zip64 extra field: 'u' uncompressed size, 'c' compressed size, 'o'
	// header offset.
	Zip64 string
	// LocalExtra is appended to the local header's extra field only.
	LocalExtra []byte
}

// Options are the archive's own fields.
type Options struct {
	Zip64End bool   // write a Zip64 end record and locator
	Saturate bool   // and saturate the classic end record's fields
	Comment  string // archive comment
}

const (
	sigLocal        = 0x04034b50
	sigCentral      = 0x02014b50
	sigZip64EOCD    = 0x06064b50
	sigZip64Locator = 0x07064b50
	sigEOCD         = 0x06054b50
	zip64ExtraID    = 0x0001
	zip64EOCDLen    = 56
)

// Zip writes a zip archive by hand, so that a test controls every field
// (archive/zip writes Zip64 records only for huge archives), with sizes
// and CRC-32s in the local headers as Python's zipfile (and so numpy)
// writes them.
func Zip(entries []Entry, o Options) []byte {
	var out, cd bytes.Buffer
	for _, e := range entries {
		off := out.Len()
		comp := compressed(e)
		out.Write(localHeader(e, comp))
		out.Write(comp)
		cd.Write(centralHeader(e, comp, off))
	}
	cdOff := out.Len()
	out.Write(cd.Bytes())
	n, size, offset := uint64(len(entries)), uint64(cd.Len()), uint64(cdOff)
	if o.Zip64End {
		out.Write(zip64End(n, size, offset, uint64(out.Len())))
		if o.Saturate {
			n, size, offset = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
		}
	}
	le := binary.LittleEndian
	var e []byte
	e = le.AppendUint32(e, sigEOCD)
	e = le.AppendUint32(e, 0)
	e = le.AppendUint16(e, uint16(n))
	e = le.AppendUint16(e, uint16(n))
	e = le.AppendUint32(e, uint32(size))
	e = le.AppendUint32(e, uint32(offset))
	e = le.AppendUint16(e, uint16(len(o.Comment)))
	e = append(e, o.Comment...)
	out.Write(e)
	return out.Bytes()
}

// compressed is the member's bytes as the archive holds them.
func compressed(e Entry) []byte {
	switch {
	case e.Raw != nil:
		return e.Raw
	case e.Method == Deflated:
		return Deflate(e.Data, e.Level)
	}
	return e.Data
}

func localHeader(e Entry, comp []byte) []byte {
	le := binary.LittleEndian
	var h []byte
	h = le.AppendUint32(h, sigLocal)
	h = le.AppendUint16(h, 45)
	h = le.AppendUint16(h, e.Flags)
	h = le.AppendUint16(h, e.Method)
	h = le.AppendUint32(h, 0) // time, date
	h = le.AppendUint32(h, crc32.ChecksumIEEE(e.Data))
	h = le.AppendUint32(h, uint32(len(comp)))
	h = le.AppendUint32(h, uint32(len(e.Data)))
	h = le.AppendUint16(h, uint16(len(e.Name)))
	h = le.AppendUint16(h, uint16(len(e.LocalExtra)))
	h = append(h, e.Name...)
	return append(h, e.LocalExtra...)
}

func centralHeader(e Entry, comp []byte, off int) []byte {
	le := binary.LittleEndian
	usize, csize, hoff := uint32(len(e.Data)), uint32(len(comp)), uint32(off)
	var x []byte
	for _, c := range "uco" {
		if !strings.ContainsRune(e.Zip64, c) {
			continue
		}
		switch c {
		case 'u':
			x, usize = le.AppendUint64(x, uint64(len(e.Data))), 0xFFFFFFFF
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
	c = le.AppendUint16(c, e.Flags)
	c = le.AppendUint16(c, e.Method)
	c = le.AppendUint32(c, 0)
	c = le.AppendUint32(c, crc32.ChecksumIEEE(e.Data))
	c = le.AppendUint32(c, csize)
	c = le.AppendUint32(c, usize)
	c = le.AppendUint16(c, uint16(len(e.Name)))
	c = le.AppendUint16(c, uint16(len(extra)))
	c = le.AppendUint16(c, 0) // comment
	c = le.AppendUint16(c, 0) // disk
	c = le.AppendUint16(c, 0) // internal attributes
	c = le.AppendUint32(c, 0) // external attributes
	c = le.AppendUint32(c, hoff)
	c = append(c, e.Name...)
	return append(c, extra...)
}

// zip64End is the Zip64 end record of n entries in a central directory
// of size bytes at offset, written at at, and its locator.
func zip64End(n, size, offset, at uint64) []byte {
	le := binary.LittleEndian
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
	z = le.AppendUint64(z, at)
	return le.AppendUint32(z, 1)
}
