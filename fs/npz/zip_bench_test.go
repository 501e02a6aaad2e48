package npz

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/bgbfs/bgbfs/fs/npz/npztest"
)

// BenchmarkReadDirectory reads the zip directory of an archive as
// np.savez_compressed writes it (two members), of a Zip64 one, and of
// one of 5,000 members.
func BenchmarkReadDirectory(b *testing.B) {
	for _, bc := range []struct {
		name    string
		members int
		opts    npztest.Options
	}{
		{"npz", 2, npztest.Options{}},
		{"zip64", 2, npztest.Options{Zip64End: true, Saturate: true}},
		{"5000 members", 5000, npztest.Options{}},
	} {
		var entries []npztest.Entry
		for i := range bc.members {
			entries = append(entries, npztest.Entry{Name: fmt.Sprintf("member%05d.npy", i), Method: npztest.Stored, Data: []byte("x")})
		}
		archive := npztest.Zip(entries, bc.opts)
		b.Run(bc.name, func(b *testing.B) {
			r := bytes.NewReader(archive)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ReadDirectory(r, int64(len(archive))); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
