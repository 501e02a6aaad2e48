package npz

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"io"
	"math"
	"math/rand/v2"
)

// inflateAll decodes a whole raw deflate stream with the package's
// inflater, as BuildIndex does but keeping all output.
func inflateAll(stream []byte) ([]byte, error) {
	return inflateAsking(stream, outSize-outSlack, nil)
}

// inflateAsking is inflateAll with each step asked for stopAt, and
// after each step, if not nil, check (whose error ends the decoding).
func inflateAsking(stream []byte, stopAt int, check func(f *inflater) error) ([]byte, error) {
	f := newInflater(bytes.NewReader(stream), 0, int64(len(stream)), 1<<20, 1<<20)
	var out []byte
	done := 0
	for f.state != streamDone {
		if f.w >= f.stopMax() {
			out = append(out, f.out[done:f.w]...)
			f.slide()
			done = f.w
		}
		if err := f.step(stopAt); err != nil {
			return out, err
		}
		if check != nil {
			if err := check(f); err != nil {
				return out, err
			}
		}
	}
	return append(out, f.out[done:f.w]...), nil
}

// stdInflate decodes with compress/flate, the reference.
func stdInflate(stream []byte) ([]byte, error) {
	return io.ReadAll(flate.NewReader(bytes.NewReader(stream)))
}

// walkData returns n bytes of little-endian float32 random walks, one of
// 15360 samples per EEG channel (a channel of a 60 s window at 256 Hz),
// kept at full float32 precision: deflate shrinks it about 1.13x, as
// it does the real recordings (pure noise, npztest.Floats, only 1.08x).
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
