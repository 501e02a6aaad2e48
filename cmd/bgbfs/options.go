package main

import (
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/pflag"

	"github.com/bgbfs/bgbfs/cache"
	bgfs "github.com/bgbfs/bgbfs/fs"
	"github.com/bgbfs/bgbfs/fs/npzview"
)

// mountOptions is everything "bgbfs mount" is told, validated.
type mountOptions struct {
	bucket, prefix string
	mountpoint     string

	s3Options
	logOptions

	uid, gid          uint32
	fileMode, dirMode uint32
	allowOther        bool
	metadataTTL       time.Duration
	// readTimeout bounds how long a read waits for S3 (0: no bound).
	readTimeout time.Duration

	limit           bgfs.Limit
	cache           cache.Options
	kernelReadAhead int64
	metricsAddr     string
	// npzMembers turns on the NAME.npz.d member view; npzSpan is the
	// output distance between access points of a compressed member.
	npzMembers bool
	npzSpan    int64
	// npzPassthrough lets the kernel read complete decoded members in a
	// local cache dir directly (FUSE passthrough).
	npzPassthrough bool
	// npzIndexBytes bounds member indexes and npzSpanBytes decoded
	// spans, both apart from --cache-size.
	npzIndexBytes, npzSpanBytes int64
	// cacheDir keeps member indexes across runs.
	cacheDir cacheDirOptions
	// listingMemory bounds the directory listings kept.
	listingMemory int64

	daemon bool
	// command is what "bgbfs exec" runs with the mount live.
	command []string
}

// defaultReadTimeout is long enough for several attempts at a request
// that stalls (--request-timeout) and for a member's index to be built on
// a slow link, and short enough that a training loader hears of a silent
// S3 within a minute, as an error it can retry or skip.
const defaultReadTimeout = 60 * time.Second

const mountSynopsis = "bgbfs mount [flags] s3://BUCKET[/PREFIX/] MOUNTPOINT"

const execSynopsis = "bgbfs exec [mount flags] s3://BUCKET[/PREFIX/] MOUNTPOINT -- COMMAND [ARGS...]"

// parseMountArgs reads the command line and environment of "bgbfs mount"
// (or, with exec set, of "bgbfs exec") in three steps: parse the flags
// into values, derive the defaults that depend on other flags, and
// validate the whole. getenv is os.Getenv outside tests. The layers below
// trust what it returns.
func parseMountArgs(args []string, getenv func(string) string, stdout io.Writer, exec bool) (mountOptions, error) {
	o, changed, err := parseMountFlags(args, getenv, stdout, exec)
	if err != nil {
		return o, err
	}
	o.derive(changed)
	return o, o.validate(exec)
}

// parseMountFlags turns the flags into values, refusing only what cannot
// be read (a size that is not a size); changed reports the flags given.
func parseMountFlags(args []string, getenv func(string) string, stdout io.Writer, exec bool) (o mountOptions, changed func(string) bool, err error) {
	synopsis := mountSynopsis
	if exec {
		synopsis = execSynopsis
	}
	fs := newFlagSet("mount", synopsis, stdout)
	f := declareMountFlags(fs, getenv, &o)
	if err := parseFlags(fs, args); err != nil {
		return o, nil, err
	}
	if err := applyFuseOptions(fs, f.fuseOpts); err != nil {
		return o, nil, err
	}
	if err := o.readPositionals(fs, exec); err != nil {
		return o, nil, err
	}
	if err := f.read(&o, getenv); err != nil {
		return o, nil, err
	}
	return o, fs.Changed, nil
}

// mountFlags are the flags of "bgbfs mount" that are read into
// mountOptions once given: what is not a plain bool, string or number.
type mountFlags struct {
	readS3                 func() (s3Options, error)
	readLog                func() (logOptions, error)
	readCacheDir           func() (cacheDirOptions, error)
	fuseOpts               []string
	uid, gid               string
	fileMode, dirMode      string
	ttl                    string
	limitFiles             []string
	limitPattern           string
	cacheSize, blockSize   string
	partSize, maxReadAhead string
	kernelReadAhead        string
	npzSpan, npzIndexSize  string
	listingMemory          string
}

// declareMountFlags declares the flags of "bgbfs mount" on fs, with their
// defaults and help; plain values go straight into o.
func declareMountFlags(fs *pflag.FlagSet, getenv func(string) string, o *mountOptions) *mountFlags {
	f := &mountFlags{}
	f.readS3 = addS3Flags(fs, getenv)
	fs.StringVar(&f.uid, "uid", strconv.Itoa(os.Getuid()), "owner uid of every file and directory")
	fs.StringVar(&f.gid, "gid", strconv.Itoa(os.Getgid()), "owner gid of every file and directory")
	fs.StringVar(&f.fileMode, "file-mode", "0444", "permission bits of files, octal")
	fs.StringVar(&f.dirMode, "dir-mode", "0555", "permission bits of directories, octal")
	fs.BoolVar(&o.allowOther, "allow-other", false, "let users other than the mounting one use the mount (non-root needs user_allow_other in /etc/fuse.conf)")
	fs.DurationVar(&o.readTimeout, "read-timeout", defaultReadTimeout, "a read that has waited this long for S3 gets EIO (a lookup or ls: each LIST page); the fetch goes on for other readers no longer than this either; 0 waits as long as --max-attempts take")
	fs.StringVar(&f.ttl, "metadata-ttl", "60s", "how long a directory listing is trusted: a duration, or indefinite (0 still reuses a listing for 1s)")
	f.readLog = addLogFlags(fs)
	fs.BoolVar(&o.daemon, "daemon", false, "run in the background; return once the mount is ready (non-zero, with the reason, if it failed)")
	fs.StringArrayVarP(&f.fuseOpts, "options", "o", nil, "mount options, FUSE style: -o allow_other,uid=1000,endpoint_url=http://...,limit_files=3 (any flag, with _ for -); for mount(8) and /etc/fstab")
	fs.StringArrayVar(&f.limitFiles, "limit-files", nil, "smoke-test view: show only the first N files matching --limit-pattern in each directory; DIR=N for one directory (relative to the mount root), repeatable (env BGB_LIMIT_FILES sets N)")
	fs.StringVar(&f.limitPattern, "limit-pattern", "*.npz", "glob of the file names --limit-files counts; other files stay visible")
	fs.StringVar(&f.cacheSize, "cache-size", "1GiB", "memory for cached blocks, read-ahead and blocks being fetched, all files together; 0 turns caching and read-ahead off")
	fs.StringVar(&f.blockSize, "block-size", "1MiB", "unit of caching (128KiB with --npz-members)")
	fs.StringVar(&f.partSize, "part-size", "8MiB", "largest ranged GET of read-ahead")
	fs.StringVar(&f.maxReadAhead, "max-read-ahead", "64MiB", "largest read-ahead window of one open file")
	fs.IntVar(&o.cache.MaxParallel, "max-parallel-requests", 32, "most GETs in flight, all files together")
	fs.StringVar(&f.kernelReadAhead, "kernel-read-ahead", "4MiB", "the kernel's read-ahead for the mount (set as root only; 0 keeps the kernel's; 128KiB with --npz-members)")
	fs.BoolVar(&o.npzMembers, "npz-members", false, "beside every NAME.npz show NAME.npz.d/, a directory of its members as files (windows.npy, ...) with random access into compressed ones; memory beside --cache-size: --npz-index-size for indexes and 64 checkpoint spans for decoded stretches of members; --block-size and --kernel-read-ahead default to 128KiB and 128KiB")
	fs.StringVar(&f.npzSpan, "npz-checkpoint-span", "1MiB", "output distance between the access points indexed in a compressed .npz member (at least one before each .npy row): a read inflates at most this much more than it returns")
	fs.StringVar(&f.npzIndexSize, "npz-index-size", "256MiB", "memory for the indexes of compressed .npz members, beside --cache-size: about 23KB per archive of 73 EEG windows written by numpy, so the default holds the indexes of about 11,000 such archives; an index evicted is built again by inflating its member whole")
	fs.BoolVar(&o.npzPassthrough, "npz-passthrough", true, "with --npz-members and a local --cache-dir, let the kernel read a compressed member's decoded file in the dir directly (FUSE passthrough: bgbfs does nothing per read) once the file is complete and checked whole against the member's CRC-32; needs Linux 6.9 or later and root; false serves every read through bgbfs")
	f.readCacheDir = addCacheDirFlags(fs, "keep fetched blocks and (with --npz-members) member indexes in this local directory across runs, so later epochs, restarts and other mounts on the machine read them from disk; or s3://BUCKET/PREFIX/ to read member indexes \"bgbfs index\" wrote there")
	fs.StringVar(&f.listingMemory, "listing-memory", "32MiB", "memory for directory listings (about 200 bytes an entry), least recently used dropped first; the listing of a directory in use is kept even when larger")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics and plain counters at /stats (e.g. 127.0.0.1:9180); off when empty")
	return f
}

// readPositionals reads the source and the mountpoint, and for exec the
// command after --.
func (o *mountOptions) readPositionals(fs *pflag.FlagSet, exec bool) (err error) {
	positional := fs.Args()
	if exec {
		dash := fs.ArgsLenAtDash()
		if dash < 0 || dash == len(positional) {
			return usageError{"exec needs a command after --"}
		}
		positional, o.command = positional[:dash], positional[dash:]
	}
	if len(positional) != 2 {
		return usageError{fmt.Sprintf("takes 2 arguments, s3://BUCKET[/PREFIX/] and MOUNTPOINT; got %d", len(positional))}
	}
	o.mountpoint = positional[1]
	o.bucket, o.prefix, err = parseS3URL(positional[0])
	return err
}

// read reads the flags given into o, in the order their errors are
// reported.
func (f *mountFlags) read(o *mountOptions, getenv func(string) string) error {
	steps := []func() error{
		func() (err error) { o.s3Options, err = f.readS3(); return },
		func() (err error) { o.uid, err = parseID("uid", f.uid); return },
		func() (err error) { o.gid, err = parseID("gid", f.gid); return },
		func() (err error) { o.fileMode, err = parseMode("file-mode", f.fileMode); return },
		func() (err error) { o.dirMode, err = parseMode("dir-mode", f.dirMode); return },
		func() (err error) { o.metadataTTL, err = parseTTL(f.ttl); return },
		func() (err error) { o.logOptions, err = f.readLog(); return },
		func() (err error) { o.cacheDir, err = f.readCacheDir(); return },
		func() (err error) {
			o.limit, err = parseLimit(f.limitFiles, getenv("BGB_LIMIT_FILES"), f.limitPattern)
			return
		},
	}
	for _, sz := range []struct {
		name string
		in   string
		out  *int64
	}{
		{"cache-size", f.cacheSize, &o.cache.CacheSize},
		{"block-size", f.blockSize, &o.cache.BlockSize},
		{"part-size", f.partSize, &o.cache.PartSize},
		{"max-read-ahead", f.maxReadAhead, &o.cache.MaxReadAhead},
		{"kernel-read-ahead", f.kernelReadAhead, &o.kernelReadAhead},
		{"npz-checkpoint-span", f.npzSpan, &o.npzSpan},
		{"npz-index-size", f.npzIndexSize, &o.npzIndexBytes},
		{"listing-memory", f.listingMemory, &o.listingMemory},
	} {
		steps = append(steps, func() (err error) { *sz.out, err = parseSize(sz.name, sz.in); return })
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// derive sets the values that follow from others, where the flag was not
// given.
func (o *mountOptions) derive(changed func(string) bool) {
	if o.npzMembers {
		// The member view reads a window here and a window there: each
		// byte the kernel reads around a window, and each byte of a block
		// beyond what is needed, is fetched and inflated for nothing.
		// Sequential reads keep their speed: the cache's own read-ahead
		// fetches in whole parts regardless. 128 KiB fetched less per
		// window and read more windows a second than 256 KiB
		// (BENCHMARKS.md, "Figures behind design choices": block size
		// with --npz-members).
		if !changed("block-size") {
			o.cache.BlockSize = 128 << 10
		}
		if !changed("kernel-read-ahead") {
			o.kernelReadAhead = 128 << 10
		}
		o.npzSpanBytes = npzview.SpanBytes(o.npzSpan)
	}
}

// validate checks the options together, before anything touches the
// network: a size that only fails once split would otherwise fail after
// the probe.
func (o *mountOptions) validate(exec bool) error {
	if exec && o.daemon {
		return usageError{"--daemon does not go with exec: exec stays until its command ends"}
	}
	if err := o.s3Options.validate(); err != nil {
		return err
	}
	if o.readTimeout < 0 {
		return usageError{fmt.Sprintf("--read-timeout %v: want a duration, 0 or more", o.readTimeout)}
	}
	if err := o.cache.Validate(); err != nil {
		return usageError{"cache flags: " + err.Error()}
	}
	if err := validateNPZSpan(o.npzSpan); err != nil {
		return err
	}
	if o.cacheDir.local != "" && o.cache.CacheSize > 0 && o.cache.BlockSize%cache.UnitSize != 0 {
		return usageError{fmt.Sprintf("--block-size %s with a local --cache-dir: want a multiple of %s, the unit the dir keeps bytes in",
			humanize.IBytes(uint64(o.cache.BlockSize)), humanize.IBytes(cache.UnitSize))}
	}
	if o.listingMemory < 1<<20 {
		return usageError{fmt.Sprintf("--listing-memory %s: want 1MiB or more", humanize.IBytes(uint64(o.listingMemory)))}
	}
	if !o.npzMembers {
		return nil
	}
	size := func(n int64) string { return humanize.IBytes(uint64(n)) }
	switch {
	case o.cache.CacheSize == 0:
		return usageError{"--npz-members needs a --cache-size above 0: compressed bytes and decoded stretches of members are held in the cache"}
	case o.npzIndexBytes < npzview.MinIndexBytes:
		// The index bound must hold an index, and the blocks a span's
		// compressed bytes; decoded spans have a bound of their own,
		// derived from the span (npzview.SpanBytes).
		return usageError{fmt.Sprintf("--npz-index-size %s cannot hold one member index; use %s or more",
			size(o.npzIndexBytes), size(npzview.MinIndexBytes))}
	case o.npzSpan > o.cache.CacheSize:
		return usageError{fmt.Sprintf("--npz-checkpoint-span %s is larger than --cache-size %s: a read inflates up to a span, whose compressed bytes would not stay cached; use a smaller span or --cache-size %s or more",
			size(o.npzSpan), size(o.cache.CacheSize), size(o.npzSpan))}
	}
	return nil
}

// validateNPZSpan checks --npz-checkpoint-span, for mount and index.
func validateNPZSpan(span int64) error {
	if span < 64<<10 || span > 64<<20 {
		return usageError{fmt.Sprintf("--npz-checkpoint-span %s: want a size from 64KiB to 64MiB", humanize.IBytes(uint64(span)))}
	}
	return nil
}

// parseS3URL splits s3://BUCKET/PREFIX into bucket and a prefix that is
// empty or ends in "/": a prefix names a directory, never part of a name.
func parseS3URL(s string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(s, "s3://")
	if !ok {
		return "", "", usageError{fmt.Sprintf("%q is not an s3://BUCKET[/PREFIX/] URL", s)}
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	if !validBucketName(bucket) {
		return "", "", usageError{fmt.Sprintf("%q: %q is not a valid bucket name", s, bucket)}
	}
	for _, c := range strings.Split(strings.TrimSuffix(prefix, "/"), "/") {
		if prefix != "" && (c == "" || c == "." || c == "..") {
			return "", "", usageError{fmt.Sprintf("%q: prefix has an empty, . or .. component", s)}
		}
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return bucket, prefix, nil
}

// validBucketName follows S3's naming rules loosely: 3-63 characters of
// lower-case letters, digits, dots and hyphens (underscores and capitals are
// allowed for older buckets and S3-compatible servers).
func validBucketName(b string) bool {
	if len(b) < 3 || len(b) > 63 {
		return false
	}
	for _, r := range b {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
		default:
			return false
		}
	}
	return true
}

func parseID(name, s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil || v == 1<<32-1 {
		return 0, usageError{fmt.Sprintf("--%s %q: want a number from 0 to 4294967294", name, s)}
	}
	return uint32(v), nil
}

func parseMode(name, s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o777 {
		return 0, usageError{fmt.Sprintf("--%s %q: want octal permission bits from 0 to 0777", name, s)}
	}
	return uint32(v), nil
}

func parseTTL(s string) (time.Duration, error) {
	if s == "indefinite" {
		return bgfs.Indefinite, nil
	}
	d, err := time.ParseDuration(s)
	if s == "0" {
		d, err = 0, nil
	}
	if err != nil || d < 0 {
		return 0, usageError{fmt.Sprintf("--metadata-ttl %q: want a duration such as 60s or 10m, 0, or indefinite", s)}
	}
	return d, nil
}

// ignoredFuseOptions are options mount(8) and mount.fuse3 pass along that
// mean nothing here: the mount is always read-only, nosuid and nodev.
var ignoredFuseOptions = map[string]bool{
	"ro": true, "rw": true, "defaults": true, "auto": true, "noauto": true, "user": true, "nouser": true,
	"users": true, "_netdev": true, "nofail": true, "dev": true, "nodev": true, "suid": true, "nosuid": true,
	"exec": true, "noexec": true, "async": true, "sync": true, "atime": true, "noatime": true,
	"relatime": true, "norelatime": true, "strictatime": true, "lazytime": true, "nolazytime": true,
	"default_permissions": true,
}

// applyFuseOptions sets flags from FUSE-style "-o a,b=c" options: every
// flag is also an option, with "_" for "-" (allow_other, endpoint_url=...).
// A repeatable flag such as limit_files may appear more than once.
func applyFuseOptions(fs *pflag.FlagSet, values []string) error {
	for _, v := range values {
		for _, opt := range strings.Split(v, ",") {
			name, value, hasValue := strings.Cut(strings.TrimSpace(opt), "=")
			if name == "" || ignoredFuseOptions[name] || strings.HasPrefix(name, "x-") || name == "comment" {
				continue
			}
			flagName := strings.ReplaceAll(name, "_", "-")
			f := fs.Lookup(flagName)
			if f == nil || flagName == "options" || flagName == "daemon" {
				return usageError{fmt.Sprintf("-o %s: unknown mount option", name)}
			}
			if !hasValue {
				if f.Value.Type() != "bool" {
					return usageError{fmt.Sprintf("-o %s: needs a value (%s=...)", name, name)}
				}
				value = "true"
			}
			if err := fs.Set(flagName, value); err != nil {
				return usageError{fmt.Sprintf("-o %s=%s: %v", name, value, err)}
			}
		}
	}
	return nil
}

// parseLimit reads the smoke-test view from --limit-files values ("N" or
// "DIR=N") and, when there are none, BGB_LIMIT_FILES ("N"; empty means no
// limit).
func parseLimit(values []string, env, pattern string) (bgfs.Limit, error) {
	if _, err := path.Match(pattern, ""); err != nil {
		return bgfs.Limit{}, usageError{fmt.Sprintf("--limit-pattern %q: %v", pattern, err)}
	}
	l := bgfs.Limit{Pattern: pattern}
	if len(values) == 0 {
		if env == "" {
			return l, nil
		}
		n, err := strconv.Atoi(strings.TrimSpace(env))
		if err != nil || n < 0 {
			return l, usageError{fmt.Sprintf("BGB_LIMIT_FILES=%q: want a whole number of files, 0 or more", env)}
		}
		l.Default, l.HasDefault = n, true
		return l, nil
	}
	for _, v := range values {
		dir, num, perDir := strings.Cut(v, "=")
		if !perDir {
			num = dir
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 0 {
			return l, usageError{fmt.Sprintf("--limit-files %q: want N or DIR=N with N a whole number, 0 or more", v)}
		}
		if !perDir {
			l.Default, l.HasDefault = n, true
			continue
		}
		dir = strings.Trim(path.Clean("/"+dir), "/")
		if l.PerDir == nil {
			l.PerDir = map[string]int{}
		}
		l.PerDir[dir] = n
	}
	return l, nil
}

// parseSize reads a byte count with an optional unit: 1GiB, 64MiB, 512KiB,
// 1GB (decimal units are powers of 1000, as humanize reads them).
func parseSize(name, s string) (int64, error) {
	v, err := humanize.ParseBytes(s)
	if err != nil || v > 1<<50 {
		return 0, usageError{fmt.Sprintf("--%s %q: want a size such as 64MiB or 1GiB", name, s)}
	}
	return int64(v), nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
