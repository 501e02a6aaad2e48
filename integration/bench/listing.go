package main

// Workload l: "ls -l" of a directory of 100,000 small objects through a
// fresh bgbfs mount (wall time, LISTs counted at the proxy, the daemon's
// peak RSS), beside the same prefix listed by the SDK directly, every page
// (the floor), and the daemon's RSS once the listing is cached.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

const (
	bigDirObjects = 100_000
	bigDirName    = "many100k"
	// bigDirWorkers is the PUTs in flight while uploading the directory.
	bigDirWorkers = 64

	bigDirRaw  = "raw S3 (SDK, every page)"
	bigDirCold = "bgbfs, fresh mount"
	bigDirWarm = "bgbfs, again (listing cached)"
)

// bigDirKey names object i like the training archives (~45 bytes).
func (b *bench) bigDirKey(i int) string {
	return fmt.Sprintf("%s%s/aaaa%06d_s%03d_t%03d_windows.npz", b.ds.prefix, bigDirName, i, i%997, i%13)
}

// bigDirResult is what workload l found under one profile beyond the rows.
type bigDirResult struct {
	profile             string
	rssBefore, rssAfter int64 // the daemon's VmRSS before and after ls -l
	// listSpan is from the first LIST of the fresh mount's ls -l to the
	// last, as the proxy saw them: the part of the time spent listing.
	listSpan time.Duration
}

// listSpan is the time from the first ListObjectsV2 in reqs to the last.
func listSpan(reqs []testbed.Request) time.Duration {
	var first, last time.Time
	for _, r := range reqs {
		if r.Op != testbed.OpListObjectsV2 {
			continue
		}
		if first.IsZero() {
			first = r.Time
		}
		last = r.Time
	}
	return last.Sub(first)
}

// bigDir uploads the directory once per run.
func (b *bench) bigDir(ctx context.Context) error {
	if b.bigDirReady {
		return nil
	}
	fmt.Fprintf(os.Stderr, "bench: uploading %d objects for workload l\n", bigDirObjects)
	start := time.Now()
	objs := make([]testbed.Object, bigDirObjects)
	for i := range objs {
		objs[i] = testbed.Object{Key: b.bigDirKey(i), Data: []byte(fmt.Sprintf("object %d\n", i))}
	}
	if err := b.srv.Admin().PutMany(ctx, b.ds.bucket, objs, bigDirWorkers); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: uploaded in %v\n", time.Since(start).Round(time.Second))
	b.bigDirReady = true
	return nil
}

func (b *bench) runBigDir(ctx context.Context, profile, endpoint string) {
	if !b.wants("l") {
		return
	}
	fail := func(system string, err error) {
		b.rows = append(b.rows, row{workload: "l", profile: profile, system: system, err: err.Error()})
	}
	if err := b.bigDir(ctx); err != nil {
		fail(bigDirCold, err)
		return
	}
	raw := &rawClient{s3: testbed.NewS3Admin(endpoint, b.srv.AccessKey, b.srv.SecretKey).Client, bucket: b.ds.bucket}
	b.measure("l", profile, bigDirRaw, 0, func() (measurement, error) {
		return raw.list(ctx, b.ds.prefix+bigDirName+"/")
	})

	m, err := b.mountSystem(ctx, "bgbfs", endpoint)
	if err != nil {
		fail(bigDirCold, err)
		return
	}
	defer m.stop()
	if err := dropCaches(); err != nil {
		fail(bigDirCold, err)
		return
	}
	res := bigDirResult{profile: profile}
	res.rssBefore, _, _ = testbed.ProcMemory(m.pid)
	dir := filepath.Join(m.mp, bigDirName)
	b.measure("l", profile, bigDirCold, m.pid, func() (measurement, error) {
		r, err := listLong(ctx, dir)
		if err == nil {
			err = b.checkBigDir(dir)
		}
		return r, err
	})
	res.rssAfter, _, _ = testbed.ProcMemory(m.pid)
	res.listSpan = listSpan(b.counting.Requests())
	b.measure("l", profile, bigDirWarm, m.pid, func() (measurement, error) { return listLong(ctx, dir) })
	b.bigDirResults = append(b.bigDirResults, res)
}

// checkBigDir checks that the mount lists every object.
func (b *bench) checkBigDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(entries) != bigDirObjects {
		return fmt.Errorf("%s lists %d names, want %d", dir, len(entries), bigDirObjects)
	}
	return nil
}

// bigDirSection is the report's table of workload l.
func (b *bench) bigDirSection() string {
	if len(b.bigDirResults) == 0 {
		return ""
	}
	var s strings.Builder
	fmt.Fprintf(&s, "\n## Listing a directory of %d objects (workload l)\n\n", bigDirObjects)
	fmt.Fprintf(&s, "`ls -l` of a directory of %d objects of ~13 bytes (keys of ~45 bytes, named like the training archives) on a fresh default mount, the page cache dropped; then `ls -l` again within the metadata TTL. The raw row lists the same prefix with the SDK, delimiter `/`, every page of 1,000. LISTs are counted at the proxy, with the time from the first to the last (the rest of a fresh mount's time is the kernel's lookup of every name and `ls` itself); RSS is the daemon's VmRSS.\n\n", bigDirObjects)
	s.WriteString("| profile | system | time | LISTs (first to last) | peak RSS | RSS before → after `ls -l` |\n|---|---|---|---|---|---|\n")
	for _, res := range b.bigDirResults {
		for _, system := range []string{bigDirRaw, bigDirCold, bigDirWarm} {
			r, ok := b.find("l", res.profile, system)
			if !ok {
				continue
			}
			rss, change, lists := "", "", fmt.Sprint(r.lists)
			if r.rss > 0 {
				rss = fmt.Sprintf("%.0f MiB", float64(r.rss)/(1<<20))
			}
			if system == bigDirCold {
				change = fmt.Sprintf("%.0f → %.0f MiB", float64(res.rssBefore)/(1<<20), float64(res.rssAfter)/(1<<20))
				lists += fmt.Sprintf(" (%.0f ms)", float64(res.listSpan.Microseconds())/1000)
			}
			fmt.Fprintf(&s, "| %s | %s | %.0f ms | %s | %s | %s |\n", res.profile, system, r.m.value, lists, rss, change)
		}
	}
	return s.String()
}
