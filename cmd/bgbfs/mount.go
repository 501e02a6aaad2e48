package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgbfs/bgbfs/cache"
	bgfs "github.com/bgbfs/bgbfs/fs"
	"github.com/bgbfs/bgbfs/fs/npzview"
	"github.com/bgbfs/bgbfs/s3backend"
)

// probeTimeout bounds the pre-mount check of the endpoint, so a bad
// endpoint fails the start well within 15 s.
const probeTimeout = 10 * time.Second

// unmountGrace is how long a signalled daemon waits for the kernel to let
// go of a lazily unmounted filesystem before exiting anyway.
const unmountGrace = 5 * time.Second

// runtimeHeadroom is the memory allowed beyond --cache-size for everything
// else: FUSE buffers, HTTP connections, listings. The runtime lets garbage
// grow up to the limit, so the limit is what RSS shows under load; less
// headroom slowed the readers (BENCHMARKS.md, "Figures behind design
// choices": memory limit headroom).
const runtimeHeadroom = 64 << 20

func runMount(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseMountArgs(args, os.Getenv, stdout, false)
	if err != nil {
		return err
	}
	if o.daemon && os.Getenv(daemonReadyEnv) == "" {
		return startDaemon(args, stderr)
	}
	m, err := startMount(ctx, o, stderr)
	notifyDaemonParent(err)
	if err != nil {
		return err
	}
	defer m.close()
	return m.serveUntilSignal()
}

// liveMount is a mounted bgbfs filesystem and what serves it.
type liveMount struct {
	server  *fuse.Server
	mp      string
	source  string
	logger  *slog.Logger
	closers []func()
	// abandoned is set when the process exits with files still open:
	// only the log is closed then.
	abandoned bool
}

// startMount checks everything that can be checked before mounting, then
// mounts. On error nothing is mounted.
func startMount(ctx context.Context, o mountOptions, stderr io.Writer) (_ *liveMount, err error) {
	mp, err := checkMountpoint(o.mountpoint)
	if err != nil {
		return nil, err
	}
	logger, closeLog, err := newLogger(o.logOptions, stderr)
	if err != nil {
		return nil, err
	}
	m := &liveMount{mp: mp, logger: logger, source: "s3://" + o.bucket + "/" + o.prefix, closers: []func(){closeLog}}
	defer func() {
		if err != nil {
			m.close() // a failed start leaves nothing behind
		}
	}()

	limitMemory(o)
	registry := prometheus.NewRegistry()
	metrics := newDaemonMetrics(registry)
	client, first, err := connect(ctx, o, metrics.s3, logger)
	if err != nil {
		return nil, err
	}
	store := s3backend.Instrument(client, metrics.s3)
	// The dir is opened first so that it is closed last: the disk tier's
	// and the member view's last writes go to an open dir.
	dir := m.openCacheDir(o, logger)
	blockStore, err := m.startDiskTier(o, store, dir, registry, logger)
	if err != nil {
		return nil, err
	}
	blocks, err := startBlockCache(o, blockStore, metrics.readAheadWindow, registry, logger)
	if err != nil {
		return nil, err
	}
	npzView, err := m.startNPZView(o, client, dir, blocks, registry, logger)
	// The cache closes before the view: index builds reading through it
	// end at once.
	m.closers = append(m.closers, blocks.Close)
	if err != nil {
		return nil, err
	}
	if o.metricsAddr != "" {
		stop, err := serveMetrics(o.metricsAddr, registry, logger)
		if err != nil {
			return nil, err
		}
		m.closers = append(m.closers, stop)
	}
	cfg := fsConfig(o, store, blocks, npzView, &first, metrics.fuse, logger)
	m.server, err = gofs.Mount(mp, bgfs.NewRoot(cfg), bgfs.NewMountOptions(cfg, m.source, o.allowOther, logger))
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mp, err)
	}
	tuneKernelReadAhead(mp, o.kernelReadAhead, npzView, logger)
	logMounted(logger, m, o, client.Region())
	startPassthrough(m.server, o, dir, npzView, logger)
	return m, nil
}

// limitMemory keeps the Go runtime's garbage from growing the process far
// beyond the cache, which is the bulk of the heap.
func limitMemory(o mountOptions) {
	if o.cache.CacheSize == 0 {
		return
	}
	beside := int64(0) // memory bounded apart from the cache
	if o.npzMembers {
		beside = o.npzIndexBytes + o.npzSpanBytes
	}
	// The headroom holds the default listings; more is counted beside.
	beside += max(0, o.listingMemory-bgfs.DefaultListingMemory)
	if o.cacheDir.local != "" {
		beside += cache.DiskWriteBacklog // block copies waiting for the disk
		if o.npzMembers {
			beside += npzview.DecodedWriteBacklog // decoded bytes waiting
		}
	}
	debug.SetMemoryLimit(o.cache.CacheSize + beside + runtimeHeadroom)
}

// connect makes the S3 client and checks, with the first listing of the
// prefix, that the endpoint answers and lets us read.
func connect(ctx context.Context, o mountOptions, metrics *s3backend.Metrics, logger *slog.Logger) (*s3backend.Client, s3backend.ListPage, error) {
	client, err := s3backend.New(ctx, o.clientConfig(o.bucket, o.cache.MaxParallel, metrics, logger))
	if err != nil {
		return nil, s3backend.ListPage{}, err
	}
	probeCtx, cancel := context.WithTimeout(ctx, probeTimeout)
	first, err := client.Probe(probeCtx, o.prefix)
	cancel()
	if err != nil {
		return nil, s3backend.ListPage{}, explainProbe(o.s3Options, o.bucket, o.prefix, err)
	}
	if len(first.Objects) == 0 && len(first.CommonPrefixes) == 0 {
		logger.Warn("no objects under the prefix: the mount is empty", "bucket", o.bucket, "prefix", o.prefix)
	}
	return client, first, nil
}

// openCacheDir opens a local --cache-dir, or returns nil: without one,
// or when it cannot be written (the mount goes on in memory).
func (m *liveMount) openCacheDir(o mountOptions, logger *slog.Logger) *cache.Dir {
	if o.cacheDir.local == "" {
		return nil
	}
	dir, err := cache.OpenDir(o.cacheDir.local, o.cacheDir.size, logger)
	if err != nil {
		logger.Warn("cache dir not writable: blocks and member indexes kept in memory only", "dir", o.cacheDir.local, "err", err)
		return nil
	}
	m.closers = append(m.closers, dir.Close)
	return dir
}

// startDiskTier puts the disk tier in front of store when blocks are kept
// in a local dir, and returns the store the block cache fetches from.
func (m *liveMount) startDiskTier(o mountOptions, store s3backend.ObjectStore, dir *cache.Dir, reg prometheus.Registerer, logger *slog.Logger) (s3backend.ObjectStore, error) {
	switch {
	case dir != nil && o.cache.CacheSize > 0:
		tier, err := cache.NewDiskTier(store, dir, o.cache.BlockSize, o.source(o.bucket), logger)
		if err != nil {
			return nil, err // validated: not reached
		}
		m.closers = append(m.closers, tier.Wait) // after the caches close: no new writes
		tier.RegisterMetrics(reg)
		return tier, nil
	case o.cacheDir.s3Bucket != "":
		logger.Info("blocks are kept on disk only in a local --cache-dir: an s3:// one holds member indexes")
	case dir != nil:
		logger.Info("--cache-size 0 keeps no blocks, in memory or on disk")
	}
	return store, nil
}

// startBlockCache makes the block cache over store. The caller closes it.
func startBlockCache(o mountOptions, store s3backend.ObjectStore, observeWindow func(int64), reg prometheus.Registerer, logger *slog.Logger) (*cache.BlockCache, error) {
	opt := o.cache
	opt.Logger = logger
	// A fetch lives no longer than a reader would wait for it.
	opt.FetchTimeout = o.readTimeout
	opt.ReorderWindow = max(o.kernelReadAhead, 1<<20)
	opt.ObserveWindow = observeWindow
	blocks, err := cache.New(store, opt)
	if err != nil {
		return nil, err
	}
	blocks.RegisterMetrics(reg)
	return blocks, nil
}

// startNPZView makes the member view over blocks, with --npz-members; nil
// without.
func (m *liveMount) startNPZView(o mountOptions, client *s3backend.Client, dir *cache.Dir, blocks *cache.BlockCache, reg prometheus.Registerer, logger *slog.Logger) (*npzview.View, error) {
	if !o.npzMembers {
		return nil, nil
	}
	files, save := indexFiles(o, client, dir)
	// Indexes and decoded spans have bounds of their own, beside
	// --cache-size.
	var decoded *npzview.DecodedFiles
	if dir != nil {
		// Only a local dir: reading an s3:// one would be a GET a read.
		decoded = &npzview.DecodedFiles{Dir: dir, Source: o.source(o.bucket)}
	}
	npzView, err := npzview.New(blocks, npzview.Config{Span: o.npzSpan, IndexBytes: o.npzIndexBytes, SpanBytes: o.npzSpanBytes, Files: files, WriteFiles: save, Decoded: decoded, Logger: logger})
	if err != nil {
		return nil, err
	}
	m.closers = append(m.closers, npzView.Close)
	npzView.RegisterMetrics(reg)
	return npzView, nil
}

// fsConfig is what the FUSE tree is built with.
func fsConfig(o mountOptions, lister s3backend.ObjectStore, blocks *cache.BlockCache, npzView *npzview.View, first *s3backend.ListPage, metrics *bgfs.Metrics, logger *slog.Logger) bgfs.Config {
	return bgfs.Config{
		Lister:      lister,
		Blocks:      blocks,
		Prefix:      o.prefix,
		UID:         o.uid,
		GID:         o.gid,
		FileMode:    o.fileMode,
		DirMode:     o.dirMode,
		MetadataTTL: o.metadataTTL,
		Logger:      logger,
		RootListing: first,
		Limit:       o.limit,
		Metrics:     metrics,
		NPZ:         npzView,
		// Validated: at least 1 MiB.
		ListingMemory: o.listingMemory,
		ReadTimeout:   o.readTimeout,
	}
}

// tuneKernelReadAhead sets the kernel's read-ahead for the mount (0 keeps
// the kernel's); the member view is told what the kernel reads.
func tuneKernelReadAhead(mp string, bytes int64, npzView *npzview.View, logger *slog.Logger) {
	if bytes <= 0 {
		return
	}
	if err := setKernelReadAhead(mp, bytes); err != nil {
		logger.Debug("kernel read-ahead left as it is", "err", err)
	} else if npzView != nil {
		// The member view reads around windows as the kernel does.
		npzView.SetKernelReadAhead(bytes)
	}
}

// startPassthrough lets the kernel read complete decoded members in the
// cache dir directly (FUSE passthrough), with --npz-members, a local
// --cache-dir and --npz-passthrough, if it takes a file of the dir as a
// backing file; it says in one line whether it does, and why not. (If
// go-fuse failed to register a backing file on an open, it would open
// the file page-cached, silently, and register none for the mount from
// then on: so it is tried once first, and the view tries each member's
// file before its first passthrough open.)
func startPassthrough(server *fuse.Server, o mountOptions, dir *cache.Dir, npzView *npzview.View, logger *slog.Logger) {
	if npzView == nil || dir == nil {
		return
	}
	var why error
	if !o.npzPassthrough {
		why = errors.New("--npz-passthrough=false")
	} else {
		why = probePassthrough(server, dir)
	}
	if why != nil {
		logger.Info("decoded members served by bgbfs, not by FUSE passthrough", "reason", why)
		return
	}
	npzView.SetBackingFiles(server)
	npzView.SetDirectFiles(true)
	logger.Info("decoded members served by FUSE passthrough once complete and checked", "dir", dir)
}

// probePassthrough registers a file of dir with the kernel as a backing
// file, and unregisters it.
func probePassthrough(server *fuse.Server, dir *cache.Dir) error {
	f, err := dir.ProbeFile()
	if err != nil {
		return fmt.Errorf("no file of the cache dir to try it with: %w", err)
	}
	defer f.Close()
	id, errno := server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(f.Fd())})
	if errno != 0 {
		return fmt.Errorf("the kernel refused a backing file (passthrough needs Linux 6.9 or later, CAP_SYS_ADMIN, and the dir on a file system not stacked): %w", errno)
	}
	if errno := server.UnregisterBackingFd(id); errno != 0 {
		return fmt.Errorf("unregistering a backing file: %w", errno)
	}
	return nil
}

// logMounted logs the mount and every setting it runs with.
func logMounted(logger *slog.Logger, m *liveMount, o mountOptions, region string) {
	logger.Info("mounted", "source", m.source, "mountpoint", m.mp,
		"region", region, "endpoint", o.endpoint, "metadata_ttl", ttlString(o.metadataTTL),
		"uid", o.uid, "gid", o.gid, "file_mode", fmt.Sprintf("%#o", o.fileMode), "dir_mode", fmt.Sprintf("%#o", o.dirMode),
		"allow_other", o.allowOther, "anonymous", o.noSignRequest,
		"cache_size", o.cache.CacheSize, "block_size", o.cache.BlockSize, "part_size", o.cache.PartSize,
		"max_read_ahead", o.cache.MaxReadAhead, "max_parallel_requests", o.cache.MaxParallel,
		"limit_files", limitString(o.limit), "npz_members", o.npzMembers, "npz_checkpoint_span", o.npzSpan, "npz_index_memory", o.npzIndexBytes, "npz_span_memory", o.npzSpanBytes, "cache_dir", o.cacheDir.String(), "cache_dir_size", o.cacheDir.size, "max_attempts", o.maxAttempts, "request_timeout", o.requestTimeout.String(), "read_timeout", o.readTimeout.String())
}

// indexFiles is where the member view keeps indexes: a local dir is read
// and written; an s3:// one is only read (one "bgbfs index" job writes it
// for a fleet).
func indexFiles(o mountOptions, client *s3backend.Client, dir *cache.Dir) (*npzview.IndexFiles, bool) {
	switch {
	case o.cacheDir.s3Bucket != "":
		return &npzview.IndexFiles{Dir: client.Blobs(o.cacheDir.s3Bucket, o.cacheDir.s3Prefix), Source: o.source(o.bucket)}, false
	case dir != nil:
		return &npzview.IndexFiles{Dir: dir, Source: o.source(o.bucket)}, true
	}
	return nil, false
}

// close releases what serves the mount, newest first.
func (m *liveMount) close() {
	if m.abandoned {
		m.closers = m.closers[:1] // the log, opened first
	}
	for i := len(m.closers) - 1; i >= 0; i-- {
		m.closers[i]()
	}
	m.closers = nil
}

// serveUntilSignal keeps the mount up until it is unmounted from outside
// or the process gets SIGINT or SIGTERM, which unmount it.
func (m *liveMount) serveUntilSignal() error {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	select {
	case <-m.done():
		m.logger.Info("unmounted from outside", "source", m.source, "mountpoint", m.mp)
		return nil
	case sig := <-sigs:
		m.logger.Info("signal received: unmounting", "signal", sig.String(), "mountpoint", m.mp)
	}
	return m.unmount()
}

// done is closed when the kernel has ended the mount.
func (m *liveMount) done() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		m.server.Wait()
		close(done)
	}()
	return done
}

// unmount ends the mount, lazily if files are open, and waits a little
// for the kernel to let go.
func (m *liveMount) unmount() error {
	done := m.done()
	// Server.Unmount returns an error when the kernel refuses (files are
	// open); otherwise it waits until the kernel ends the filesystem, which
	// does not happen while another mount of it lives on: a container that
	// bound the mountpoint after the mount holds one. So its wait is
	// bounded here by the same grace.
	unmounted := make(chan error, 1)
	go func() { unmounted <- m.server.Unmount() }()
	grace := time.After(unmountGrace)
	select {
	case err := <-unmounted:
		if err == nil {
			break
		}
		// Busy: files are open. Detach the mount so new lookups fail,
		// and let the kernel drop it when the last file closes.
		m.logger.Warn("unmount failed; detaching lazily", "mountpoint", m.mp, "err", err)
		if err := detach(m.mp); err != nil {
			return fmt.Errorf("unmount %s: %w", m.mp, err)
		}
		select {
		case <-done:
		case <-grace:
			// Readers of the detached mount keep it busy. Exiting closes
			// the FUSE connection (their reads fail with ENOTCONN);
			// waiting for the cache's fetches would wait for them.
			m.logger.Warn("files still open after unmount; exiting anyway", "mountpoint", m.mp)
			m.abandoned = true
		}
	case <-grace:
		m.logger.Warn("unmounted here, but the filesystem is still mounted elsewhere (a bind of the mountpoint, in a container or another mount namespace); exiting anyway: reads there fail with ENOTCONN", "mountpoint", m.mp)
		m.abandoned = true
	}
	m.logger.Info("unmounted", "source", m.source, "mountpoint", m.mp)
	return nil
}

// explainProbe turns a failed pre-mount check into a message that names
// the cause a user can act on.
func explainProbe(o s3Options, bucket, prefix string, err error) error {
	where := "s3://" + bucket + "/" + prefix
	endpoint := o.endpoint
	if endpoint == "" {
		endpoint = "AWS S3 (region " + o.region + ")"
	}
	cause := s3backend.Describe(err)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		// A silent endpoint: connections accepted, nothing said.
		return fmt.Errorf("cannot reach S3 endpoint %s: no answer within %v", endpoint, probeTimeout)
	case errors.Is(err, s3backend.ErrUnreachable):
		return fmt.Errorf("cannot reach S3 endpoint %s: %s", endpoint, cause)
	case errors.Is(err, s3backend.ErrBadCredentials):
		return fmt.Errorf("credentials rejected by %s: %s", endpoint, cause)
	case errors.Is(err, s3backend.ErrNotFound):
		return fmt.Errorf("bucket %q does not exist at %s: %s", bucket, endpoint, cause)
	case errors.Is(err, s3backend.ErrAccessDenied):
		return fmt.Errorf("prefix %s is not readable with these credentials: %s", where, cause)
	case errors.Is(err, s3backend.ErrNoCredentials):
		return errors.New("no AWS credentials found (environment, shared config and profile, web identity, instance metadata); use --no-sign-request for a public bucket")
	}
	return fmt.Errorf("cannot list %s at %s: %s", where, endpoint, cause)
}

func ttlString(d time.Duration) string {
	if d == bgfs.Indefinite {
		return "indefinite"
	}
	return d.String()
}

func limitString(l bgfs.Limit) string {
	if !l.Active() {
		return "none"
	}
	var parts []string
	if l.HasDefault {
		parts = append(parts, strconv.Itoa(l.Default))
	}
	dirs := slices.Sorted(maps.Keys(l.PerDir))
	for _, d := range dirs {
		parts = append(parts, d+"="+strconv.Itoa(l.PerDir[d]))
	}
	return strings.Join(parts, ",") + " of " + l.Pattern
}
