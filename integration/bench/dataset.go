package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// dataset is what the benchmark reads: numpy-written .npz files under
// PREFIX/train/ (with manifest.json) and a 5,000-object directory
// PREFIX/many/, in MinIO and, for the local reference, on local disk.
type dataset struct {
	bucket, prefix string
	local          string   // local copy of train/
	files          []string // .npz names in train/, sorted
	sizes          map[string]int64
}

const manyObjects = 5000

func makeDataset(ctx context.Context, repo, work string, srv *testbed.MinIO, c config) (*dataset, error) {
	src := filepath.Join(work, "src")
	if err := testbed.GenNPZ(repo, src, testbed.NPZSpec{Train: c.files, Dev: 0, Windows: c.windows, Seed: 7, CompressedOnly: true}); err != nil {
		return nil, err
	}
	ds := &dataset{bucket: "bench", prefix: "data/", local: filepath.Join(src, "train"), sizes: map[string]int64{}}
	admin := srv.Admin()
	if err := admin.CreateBucket(ctx, ds.bucket); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(ds.local)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		path := filepath.Join(ds.local, e.Name())
		if err := admin.PutFile(ctx, ds.bucket, ds.prefix+"train/"+e.Name(), path); err != nil {
			return nil, err
		}
		if strings.HasSuffix(e.Name(), ".npz") {
			fi, err := e.Info()
			if err != nil {
				return nil, err
			}
			ds.files = append(ds.files, e.Name())
			ds.sizes[e.Name()] = fi.Size()
		}
	}
	slices.Sort(ds.files)
	if len(ds.files) < 8 {
		return nil, fmt.Errorf("the 8-file workload needs --files 8 or more, not %d", len(ds.files))
	}
	many := make([]testbed.Object, manyObjects)
	for i := range many {
		many[i] = testbed.Object{Key: fmt.Sprintf("%smany/obj-%05d.bin", ds.prefix, i), Data: []byte(fmt.Sprintf("object %d\n", i))}
	}
	if err := admin.PutMany(ctx, ds.bucket, many, 16); err != nil {
		return nil, err
	}
	return ds, nil
}

func (d *dataset) key(name string) string { return d.prefix + "train/" + name }

func (d *dataset) total(names []string) int64 {
	var n int64
	for _, f := range names {
		n += d.sizes[f]
	}
	return n
}
