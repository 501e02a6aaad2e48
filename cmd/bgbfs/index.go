package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"golang.org/x/sync/errgroup"
	"golang.org/x/term"

	"github.com/bgbfs/bgbfs/cache"
	bgfs "github.com/bgbfs/bgbfs/fs"
	"github.com/bgbfs/bgbfs/fs/npzview"
	"github.com/bgbfs/bgbfs/s3backend"
)

const indexSynopsis = "bgbfs index [flags] s3://BUCKET[/PREFIX/] --cache-dir DIR|s3://BUCKET/PREFIX/"

// indexOptions is everything "bgbfs index" is told, validated.
type indexOptions struct {
	bucket, prefix string
	s3Options
	logOptions
	limit    bgfs.Limit
	cacheDir cacheDirOptions
	// placement places access points as a mount with the same
	// --npz-checkpoint-span and --kernel-read-ahead would.
	placement npzview.IndexPlacement
	jobs      int
	// fetchMemory bounds the archive bytes held in memory at once.
	fetchMemory int64
}

func parseIndexArgs(args []string, getenv func(string) string, stdout io.Writer) (indexOptions, error) {
	fs := newFlagSet("index", indexSynopsis, stdout)
	readCacheDir := addCacheDirFlags(fs, "where to write the indexes (required): a local directory, or s3://BUCKET/PREFIX/ for a fleet of mounts to read")
	readS3 := addS3Flags(fs, getenv)
	limitFiles := fs.StringArray("limit-files", nil, "index only the archives a mount with this --limit-files shows (N, or DIR=N; env BGB_LIMIT_FILES sets N)")
	limitPattern := fs.String("limit-pattern", "*.npz", "glob of the file names --limit-files counts")
	npzSpan := fs.String("npz-checkpoint-span", "1MiB", "output distance between access points, as the mounts that read the indexes use")
	kernelReadAhead := fs.String("kernel-read-ahead", "128KiB", "the kernel read-ahead of the mounts that read the indexes (their --kernel-read-ahead; 128KiB with --npz-members): access points go just before where its reads of each row start")
	jobs := fs.Int("jobs", runtime.NumCPU(), "archives inflating at once, each on one core; fetches run beside them, bounded by --fetch-memory")
	fetchMemory := fs.String("fetch-memory", "256MiB", fmt.Sprintf("archive bytes held in memory at once: an archive up to an eighth of it is fetched whole in one GET and indexed from memory, a bigger one streams and counts as an eighth; at most %d GETs in flight", npzview.IndexRequests))
	readLog := addLogFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return indexOptions{}, err
	}
	if fs.NArg() != 1 {
		return indexOptions{}, usageError{fmt.Sprintf("takes 1 argument, s3://BUCKET[/PREFIX/]; got %d", fs.NArg())}
	}
	var o indexOptions
	var err error
	if o.bucket, o.prefix, err = parseS3URL(fs.Arg(0)); err != nil {
		return o, err
	}
	if o.s3Options, err = readS3(); err != nil {
		return o, err
	}
	if err := o.s3Options.validate(); err != nil {
		return o, err
	}
	if o.logOptions, err = readLog(); err != nil {
		return o, err
	}
	if o.cacheDir, err = readCacheDir(); err != nil {
		return o, err
	}
	if !o.cacheDir.set() {
		return o, usageError{"--cache-dir is required: where the indexes go"}
	}
	if o.limit, err = parseLimit(*limitFiles, getenv("BGB_LIMIT_FILES"), *limitPattern); err != nil {
		return o, err
	}
	var span, ra int64
	if span, err = parseSize("npz-checkpoint-span", *npzSpan); err != nil {
		return o, err
	}
	if err := validateNPZSpan(span); err != nil {
		return o, err
	}
	if ra, err = parseSize("kernel-read-ahead", *kernelReadAhead); err != nil {
		return o, err
	}
	o.placement = npzview.IndexPlacement{Span: span, RowLead: npzview.RowLead(ra)}
	if o.jobs = *jobs; o.jobs < 1 || o.jobs > 256 {
		return o, usageError{fmt.Sprintf("--jobs %d: want a number from 1 to 256", o.jobs)}
	}
	if o.fetchMemory, err = parseSize("fetch-memory", *fetchMemory); err != nil {
		return o, err
	}
	if o.fetchMemory < 1<<20 {
		return o, usageError{fmt.Sprintf("--fetch-memory %s: want at least 1MiB", *fetchMemory)}
	}
	return o, nil
}

// runIndex is "bgbfs index": it indexes every compressed member of every
// .npz under the prefix into the cache dir.
func runIndex(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseIndexArgs(args, os.Getenv, stdout)
	if err != nil {
		return err
	}
	logger, closeLog, err := newLogger(o.logOptions, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	client, err := connectIndex(ctx, o, logger)
	if err != nil {
		return err
	}
	files, closeFiles, err := openIndexFiles(ctx, o, client, logger)
	if err != nil {
		return err
	}
	defer closeFiles()
	archives, err := listArchives(ctx, client, o.prefix, o.limit)
	if err != nil {
		return fmt.Errorf("listing s3://%s/%s: %s", o.bucket, o.prefix, s3backend.Describe(err))
	}
	limits := npzview.NewIndexLimits(o.jobs, o.fetchMemory)
	run := newIndexRun(npzview.ArchiveIndexer{Source: client, Files: files, Placement: o.placement, Limits: limits}, archives)
	f, ok := stdout.(*os.File)
	stopProgress := run.progress(stdout, ok && term.IsTerminal(int(f.Fd())))
	run.indexAll(ctx, archives)
	stopProgress()
	fmt.Fprintln(stdout, run.summary())
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("interrupted: %w", err)
	}
	return run.reportFailures(stderr, o.bucket)
}

// connectIndex returns a client of the bucket, having checked that the
// prefix can be read.
func connectIndex(ctx context.Context, o indexOptions, logger *slog.Logger) (*s3backend.Client, error) {
	// The archives' GETs, and an s3:// dir's writes beside them.
	client, err := s3backend.New(ctx, o.clientConfig(o.bucket, npzview.IndexRequests+2*o.jobs, nil, logger))
	if err != nil {
		return nil, err
	}
	probeCtx, cancel := context.WithTimeout(ctx, probeTimeout)
	_, err = client.Probe(probeCtx, o.prefix)
	cancel()
	if err != nil {
		return nil, explainProbe(o.s3Options, o.bucket, o.prefix, err)
	}
	return client, nil
}

// openIndexFiles opens the cache dir the indexes go to: a local dir,
// which must be writable, or an s3:// one, listed once.
func openIndexFiles(ctx context.Context, o indexOptions, client *s3backend.Client, logger *slog.Logger) (npzview.IndexFiles, func(), error) {
	files := npzview.IndexFiles{Source: o.source(o.bucket)}
	if o.cacheDir.s3Bucket != "" {
		blobs := client.Blobs(o.cacheDir.s3Bucket, o.cacheDir.s3Prefix)
		files.Dir = blobs
		// One listing of what is there instead of a GET per archive and
		// member, each a round trip before the archive's stream starts.
		var err error
		if files.Listed, err = blobs.Names(ctx, strings.TrimSuffix(npzview.IndexArea, "/")); err != nil {
			return files, nil, fmt.Errorf("--cache-dir %s: %s", o.cacheDir, s3backend.Describe(err))
		}
		return files, func() {}, nil
	}
	dir, err := cache.OpenDir(o.cacheDir.local, o.cacheDir.size, logger)
	if err != nil {
		return files, nil, err
	}
	if err := dir.WriteErr(); err != nil {
		dir.Close()
		return files, nil, fmt.Errorf("cache dir %s is not writable: %w", dir, err)
	}
	files.Dir = dir
	return files, dir.Close, nil
}

// listArchives lists every .npz under prefix that a mount with limit
// shows.
func listArchives(ctx context.Context, store s3backend.ObjectStore, prefix string, limit bgfs.Limit) ([]s3backend.Version, error) {
	var objects []s3backend.ObjectInfo
	req := s3backend.ListRequest{Prefix: prefix}
	for {
		page, err := store.List(ctx, req)
		if err != nil {
			return nil, err
		}
		objects = append(objects, page.Objects...)
		if page.NextContinuationToken == "" {
			break
		}
		req.ContinuationToken = page.NextContinuationToken
	}
	var out []s3backend.Version
	for _, obj := range bgfs.ShownFiles(prefix, objects, limit) {
		if strings.HasSuffix(obj.Key, ".npz") {
			out = append(out, s3backend.Version{Key: obj.Key, ETag: obj.ETag, Size: obj.Size, LastModified: obj.LastModified})
		}
	}
	return out, nil
}

// indexRun is one "bgbfs index": its archives' progress and results.
type indexRun struct {
	indexer npzview.ArchiveIndexer
	start   time.Time

	total      int
	totalBytes int64

	archivesDone, indexed, current atomic.Int64
	members, compressedBytes       atomic.Int64
	bytesDone                      atomic.Int64

	mu     sync.Mutex
	failed []archiveFailure
}

type archiveFailure struct {
	key string
	err error
}

// newIndexRun returns the run of indexer over archives.
func newIndexRun(indexer npzview.ArchiveIndexer, archives []s3backend.Version) *indexRun {
	r := &indexRun{indexer: indexer, start: time.Now(), total: len(archives)}
	r.indexer.Built = func(compressedSize int64) {
		r.members.Add(1)
		r.compressedBytes.Add(compressedSize)
	}
	for _, a := range archives {
		r.totalBytes += a.Size
	}
	return r
}

// indexAll indexes archives until done or ctx ends: as many at once as
// the indexer's memory budget holds, each fetching and inflating within
// its limits.
func (r *indexRun) indexAll(ctx context.Context, archives []s3backend.Version) {
	var g errgroup.Group
	for _, a := range archives {
		release, err := r.indexer.Limits.Hold(ctx, a.Size)
		if err != nil {
			break // interrupted
		}
		g.Go(func() error {
			defer release()
			r.index(ctx, a)
			return nil
		})
	}
	g.Wait()
}

// reportFailures says which archives failed and why, in key order, and
// then returns the exit status for them.
func (r *indexRun) reportFailures(stderr io.Writer, bucket string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.failed) == 0 {
		return nil
	}
	slices.SortFunc(r.failed, func(a, b archiveFailure) int { return strings.Compare(a.key, b.key) })
	for _, f := range r.failed {
		fmt.Fprintf(stderr, "bgbfs: index s3://%s/%s: %s\n", bucket, f.key, oneLine(f.err.Error()))
	}
	fmt.Fprintf(stderr, "bgbfs: %d of %d archives failed\n", len(r.failed), r.total)
	return exitError{1}
}

// index indexes the archive a unless it is current, and records how it
// went.
func (r *indexRun) index(ctx context.Context, a s3backend.Version) {
	defer r.archivesDone.Add(1)
	defer r.bytesDone.Add(a.Size)
	if ctx.Err() != nil {
		return
	}
	done, err := r.indexer.Current(ctx, a)
	if err == nil && done {
		r.current.Add(1)
		return
	}
	if err == nil {
		err = r.indexer.IndexArchive(ctx, a)
	}
	if err != nil {
		if ctx.Err() != nil {
			return // interrupted: not the archive's fault
		}
		r.mu.Lock()
		r.failed = append(r.failed, archiveFailure{a.Key, err})
		r.mu.Unlock()
		return
	}
	r.indexed.Add(1)
}

// summary is the line "bgbfs index" ends with.
func (r *indexRun) summary() string {
	elapsed := time.Since(r.start)
	rate := float64(r.compressedBytes.Load()) / max(elapsed.Seconds(), 1e-3)
	r.mu.Lock()
	failed := len(r.failed)
	r.mu.Unlock()
	return fmt.Sprintf("indexed %d archives (%d members, %s compressed) in %s, %s/s; %d current; %d failed",
		r.indexed.Load(), r.members.Load(), humanize.Bytes(uint64(r.compressedBytes.Load())),
		elapsed.Round(100*time.Millisecond), humanize.Bytes(uint64(rate)), r.current.Load(), failed)
}

// progress redraws a progress line on a terminal twice a second until
// the returned function is called; elsewhere it shows nothing.
func (r *indexRun) progress(w io.Writer, on bool) (stop func()) {
	if !on {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-tick.C:
				fmt.Fprint(w, "\r\033[K"+r.progressLine())
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

func (r *indexRun) progressLine() string {
	const width = 24
	n, bytes := r.archivesDone.Load(), r.bytesDone.Load()
	frac := float64(bytes) / float64(max(r.totalBytes, 1))
	bar := strings.Repeat("=", int(frac*width)) + strings.Repeat(" ", width-int(frac*width))
	elapsed := time.Since(r.start).Seconds()
	rate := float64(r.compressedBytes.Load()) / max(elapsed, 1e-3)
	eta := "?"
	if bytes > 0 {
		eta = (time.Duration(float64(r.totalBytes-bytes)/float64(bytes)*elapsed) * time.Second).Round(time.Second).String()
	}
	r.mu.Lock()
	failed := len(r.failed)
	r.mu.Unlock()
	return fmt.Sprintf("[%s] %d/%d archives, %s/%s, %s/s, ETA %s (%d current, %d failed)", bar, n, r.total,
		humanize.Bytes(uint64(bytes)), humanize.Bytes(uint64(r.totalBytes)), humanize.Bytes(uint64(rate)), eta, r.current.Load(), failed)
}
