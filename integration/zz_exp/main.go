// Throwaway: a long-lived MinIO with workload-h archives behind a counting
// and a shaping proxy, for hand experiments. Not committed.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

func main() {
	ctx := context.Background()
	root := "/tmp/exp"
	os.MkdirAll(root, 0o755)
	srv, err := testbed.StartMinIO("/work/main/.tools/bin/minio", root)
	if err != nil {
		panic(err)
	}
	defer srv.Stop()
	src := filepath.Join(root, "npzsrc")
	if _, err := os.Stat(filepath.Join(src, "train")); err != nil {
		if err := testbed.GenNPZ("/work/main", src, testbed.NPZSpec{Train: 4, Windows: 73, Seed: 9, CompressedOnly: true}); err != nil {
			panic(err)
		}
	}
	admin := srv.Admin()
	admin.CreateBucket(ctx, "bench")
	ents, _ := os.ReadDir(filepath.Join(src, "train"))
	for _, e := range ents {
		if err := admin.PutFile(ctx, "bench", "h/train/"+e.Name(), filepath.Join(src, "train", e.Name())); err != nil {
			panic(err)
		}
	}
	counting, err := testbed.NewCountingProxy(srv.Endpoint)
	if err != nil {
		panic(err)
	}
	shaper, err := testbed.NewShapingProxy(counting.URL, 20*time.Millisecond, 90e6)
	if err != nil {
		panic(err)
	}
	os.WriteFile(filepath.Join(root, "env"), []byte(fmt.Sprintf("export AWS_ACCESS_KEY_ID=%s AWS_SECRET_ACCESS_KEY=%s LOOP=%s SHAPED=%s\n", srv.AccessKey, srv.SecretKey, counting.URL, shaper.URL)), 0o644)
	fmt.Println("ready")
	go func() {
		for range time.Tick(time.Second) {
			c := counting.Counts()
			os.WriteFile(filepath.Join(root, "counts"), []byte(fmt.Sprintf("%+v\n", c)), 0o644)
		}
	}()
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt)
	<-ch
}
