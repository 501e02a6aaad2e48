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
// grow up to the limit, so the limit is what RSS shows under load: with 64
// readers and a 64 MiB cache the heap held 25 MiB of FUSE buffers and a few
// MiB else beyond the cache, and RSS peaked at 145-151 MiB with 80 MiB of
// headroom, 129-133 with 64, 113-118 with 48 (which slowed the readers).
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

	// The cache is the bulk of the heap: keep the Go runtime's garbage
	// from growing the process far beyond it.
	cacheSize, beside := o.cache.CacheSize, int64(0) // memory bounded apart from the cache
	if o.npzMembers {
		beside = o.npzIndexBytes + o.npzSpanBytes
	}
	// The headroom holds the default listings; more is counted beside.
	beside += max(0, o.listingMemory-bgfs.DefaultListingMemory)
	if o.cacheDir.local != "" && cacheSize > 0 {
		beside += cache.DiskWriteBacklog // block copies waiting for the disk
	}
	if cacheSize > 0 {
		debug.SetMemoryLimit(cacheSize + beside + runtimeHeadroom)
	}
	metrics := newDaemonMetrics()
	client, err := s3backend.New(ctx, o.clientConfig(o.bucket, o.cache.MaxParallel, metrics.s3, logger))
	if err != nil {
		return nil, err
	}
	probeCtx, cancel := context.WithTimeout(ctx, probeTimeout)
	first, err := client.Probe(probeCtx, o.prefix)
	cancel()
	if err != nil {
		return nil, explainProbe(o.s3Options, o.bucket, o.prefix, err)
	}
	if len(first.Objects) == 0 && len(first.CommonPrefixes) == 0 {
		logger.Warn("no objects under the prefix: the mount is empty", "bucket", o.bucket, "prefix", o.prefix)
	}

	store := s3backend.Instrument(client, metrics.s3)
	// The dir is opened first so that it is closed last: the disk tier's
	// and the member view's last writes go to an open dir.
	var dir *cache.Dir
	if o.cacheDir.local != "" {
		if dir, err = cache.OpenDir(o.cacheDir.local, o.cacheDir.size, logger); err != nil {
			logger.Warn("cache dir not writable: blocks and member indexes kept in memory only", "dir", o.cacheDir.local, "err", err)
		} else {
			m.closers = append(m.closers, dir.Close)
		}
	}
	var blockStore s3backend.ObjectStore = store
	switch {
	case dir != nil && o.cache.CacheSize > 0:
		tier, err := cache.NewDiskTier(store, dir, o.cache.BlockSize, o.source(o.bucket), logger)
		if err != nil {
			return nil, err // validated: not reached
		}
		m.closers = append(m.closers, tier.Wait) // after the caches close: no new writes
		metrics.watchDisk(tier)
		blockStore = tier
	case o.cacheDir.s3Bucket != "":
		logger.Info("blocks are kept on disk only in a local --cache-dir: an s3:// one holds member indexes")
	case dir != nil:
		logger.Info("--cache-size 0 keeps no blocks, in memory or on disk")
	}
	o.cache.Logger = logger
	// A fetch lives no longer than a reader would wait for it.
	o.cache.FetchTimeout = o.readTimeout
	o.cache.ReorderWindow = max(o.kernelReadAhead, 1<<20)
	o.cache.ObserveWindow = func(n int64) { metrics.windows.Observe(float64(n)) }
	blocks, err := cache.New(blockStore, o.cache)
	if err != nil {
		return nil, err
	}
	var npzView *npzview.View
	if o.npzMembers {
		files, save := indexFiles(o, client, dir)
		// Indexes and decoded spans have bounds of their own, beside
		// --cache-size.
		npzView, err = npzview.New(blocks, npzview.Config{Span: o.npzSpan, IndexBytes: o.npzIndexBytes, SpanBytes: o.npzSpanBytes, Files: files, WriteFiles: save, Logger: logger})
		if err != nil {
			blocks.Close()
			return nil, err
		}
		m.closers = append(m.closers, npzView.Close)
		metrics.watchNPZ(npzView)
	}
	// Closed before the view: index builds reading through it end at once.
	m.closers = append(m.closers, blocks.Close)
	metrics.watchCache(blocks)
	if o.metricsAddr != "" {
		stop, err := metrics.serve(o.metricsAddr, logger)
		if err != nil {
			return nil, err
		}
		m.closers = append(m.closers, stop)
	}
	cfg := bgfs.Config{
		Lister:      store,
		Blocks:      blocks,
		Prefix:      o.prefix,
		UID:         o.uid,
		GID:         o.gid,
		FileMode:    o.fileMode,
		DirMode:     o.dirMode,
		MetadataTTL: o.metadataTTL,
		Logger:      logger,
		RootListing: &first,
		Limit:       o.limit,
		Metrics:     metrics.fuse,
		NPZ:         npzView,
		// Validated: at least 1 MiB.
		ListingMemory: o.listingMemory,
		ReadTimeout:   o.readTimeout,
	}
	m.server, err = gofs.Mount(mp, bgfs.NewRoot(cfg), bgfs.NewMountOptions(cfg, m.source, o.allowOther, logger))
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mp, err)
	}
	if o.kernelReadAhead > 0 {
		if err := setKernelReadAhead(mp, o.kernelReadAhead); err != nil {
			logger.Debug("kernel read-ahead left as it is", "err", err)
		} else if npzView != nil {
			// The member view reads around windows as the kernel does.
			npzView.SetKernelReadAhead(o.kernelReadAhead)
		}
	}
	logger.Info("mounted", "source", m.source, "mountpoint", mp,
		"region", client.Region(), "endpoint", o.endpoint, "metadata_ttl", ttlString(o.metadataTTL),
		"uid", o.uid, "gid", o.gid, "file_mode", fmt.Sprintf("%#o", o.fileMode), "dir_mode", fmt.Sprintf("%#o", o.dirMode),
		"allow_other", o.allowOther, "anonymous", o.noSignRequest,
		"cache_size", cacheSize, "block_size", o.cache.BlockSize, "part_size", o.cache.PartSize,
		"max_read_ahead", o.cache.MaxReadAhead, "max_parallel_requests", o.cache.MaxParallel,
		"limit_files", limitString(o.limit), "npz_members", o.npzMembers, "npz_checkpoint_span", o.npzSpan, "npz_index_memory", o.npzIndexBytes, "npz_span_memory", o.npzSpanBytes, "cache_dir", o.cacheDir.String(), "cache_dir_size", o.cacheDir.size, "max_attempts", o.maxAttempts, "request_timeout", o.requestTimeout.String(), "read_timeout", o.readTimeout.String())
	return m, nil
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
