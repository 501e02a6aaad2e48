package main

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	bgfs "github.com/bgbfs/bgbfs/fs"
	"github.com/bgbfs/bgbfs/fs/npzview"
)

// mountArgsCase is one command line of "bgbfs mount" and what parsing
// it must give: an error naming wantErr, or options check accepts.
type mountArgsCase struct {
	name    string
	args    []string
	env     map[string]string
	wantErr string // substring; "" means success
	check   func(t *testing.T, o mountOptions)
}

func runMountArgsCases(t *testing.T, tests []mountArgsCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseMountArgs(tt.args, func(k string) string { return tt.env[k] }, io.Discard, false)
			if tt.wantErr != "" {
				wantUsageError(t, err, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			tt.check(t, o)
		})
	}
}

// TestParseMountArgs: the source, the mountpoint, S3, ownership, modes,
// the metadata TTL and timeouts.
func TestParseMountArgs(t *testing.T) {
	runMountArgsCases(t, []mountArgsCase{
		{
			name: "defaults",
			args: []string{"s3://bucket-1/cache/tusz/", "/mnt"},
			check: func(t *testing.T, o mountOptions) {
				if o.bucket != "bucket-1" || o.prefix != "cache/tusz/" || o.mountpoint != "/mnt" {
					t.Errorf("got bucket %q prefix %q mountpoint %q", o.bucket, o.prefix, o.mountpoint)
				}
				if o.fileMode != 0o444 || o.dirMode != 0o555 || o.metadataTTL != time.Minute || o.region != "" {
					t.Errorf("got modes %o %o ttl %v region %q", o.fileMode, o.dirMode, o.metadataTTL, o.region)
				}
				if o.readTimeout != time.Minute || o.requestTimeout != 10*time.Second || o.maxAttempts != 10 {
					t.Errorf("read timeout %v, request timeout %v, attempts %d; want 1m, 10s, 10", o.readTimeout, o.requestTimeout, o.maxAttempts)
				}
			},
		},
		{
			name: "read timeout",
			args: []string{"--read-timeout", "5s", "s3://bucket/", "/mnt"},
			check: func(t *testing.T, o mountOptions) {
				if o.readTimeout != 5*time.Second {
					t.Errorf("read timeout %v", o.readTimeout)
				}
			},
		},
		{
			name: "read timeout 0 is none",
			args: []string{"-o", "read_timeout=0", "s3://bucket/", "/mnt"},
			check: func(t *testing.T, o mountOptions) {
				if o.readTimeout != 0 {
					t.Errorf("read timeout %v", o.readTimeout)
				}
			},
		},
		{
			name:    "negative read timeout",
			args:    []string{"--read-timeout", "-1s", "s3://bucket/", "/mnt"},
			wantErr: "--read-timeout",
		},
		{
			name: "prefix without trailing slash names a directory",
			args: []string{"s3://bucket/cache/tusz", "/mnt"},
			check: func(t *testing.T, o mountOptions) {
				if o.prefix != "cache/tusz/" {
					t.Errorf("prefix = %q", o.prefix)
				}
			},
		},
		{
			name: "bucket root",
			args: []string{"s3://bucket", "/mnt"},
			check: func(t *testing.T, o mountOptions) {
				if o.prefix != "" {
					t.Errorf("prefix = %q", o.prefix)
				}
			},
		},
		{
			name: "endpoint from the environment; the region is left to s3backend",
			args: []string{"s3://bucket/", "/mnt"},
			env:  map[string]string{"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"},
			check: func(t *testing.T, o mountOptions) {
				if o.endpoint != "http://127.0.0.1:9000" || o.region != "" {
					t.Errorf("endpoint %q region %q", o.endpoint, o.region)
				}
			},
		},
		{
			name: "region flag beats the environment",
			args: []string{"--region", "eu-west-1", "s3://bucket/", "/mnt"},
			env:  map[string]string{"AWS_REGION": "us-west-2"},
			check: func(t *testing.T, o mountOptions) {
				if o.region != "eu-west-1" {
					t.Errorf("region %q", o.region)
				}
			},
		},
		{
			name: "every flag",
			args: []string{"--endpoint-url", "https://s3.example", "--force-path-style", "--profile", "p", "--no-sign-request",
				"--uid", "1000", "--gid", "100", "--file-mode", "0440", "--dir-mode", "750", "--allow-other",
				"--metadata-ttl", "indefinite", "--log-level", "debug", "s3://b-c/x/", "m"},
			check: func(t *testing.T, o mountOptions) {
				if !o.forcePathStyle || !o.noSignRequest || !o.allowOther || o.profile != "p" || o.uid != 1000 || o.gid != 100 ||
					o.fileMode != 0o440 || o.dirMode != 0o750 || o.metadataTTL != bgfs.Indefinite || o.logLevel.String() != "DEBUG" {
					t.Errorf("got %+v", o)
				}
			},
		},
		{name: "ttl zero", args: []string{"--metadata-ttl", "0", "s3://bucket/", "/m"}, check: func(t *testing.T, o mountOptions) {
			if o.metadataTTL != 0 {
				t.Errorf("ttl %v", o.metadataTTL)
			}
		}},
		{name: "bad mode", args: []string{"--file-mode", "999", "s3://bucket/", "/m"}, wantErr: "--file-mode"},
		{name: "mode too big", args: []string{"--dir-mode", "1777", "s3://bucket/", "/m"}, wantErr: "--dir-mode"},
		{name: "bad ttl", args: []string{"--metadata-ttl", "soon", "s3://bucket/", "/m"}, wantErr: "--metadata-ttl"},
		{name: "negative ttl", args: []string{"--metadata-ttl", "-1s", "s3://bucket/", "/m"}, wantErr: "--metadata-ttl"},
		{name: "negative uid", args: []string{"--uid", "-5", "s3://bucket/", "/m"}, wantErr: "--uid"},
		{name: "bad gid", args: []string{"--gid", "x", "s3://bucket/", "/m"}, wantErr: "--gid"},
		{name: "bad log level", args: []string{"--log-level", "loud", "s3://bucket/", "/m"}, wantErr: "--log-level"},
		{name: "unknown flag", args: []string{"--bogus", "s3://bucket/", "/m"}, wantErr: "unknown flag"},
		{name: "not an s3 URL", args: []string{"http://bucket", "/m"}, wantErr: "s3://"},
		{name: "bad bucket", args: []string{"s3://a/", "/m"}, wantErr: "bucket name"},
		{name: "dot-dot prefix", args: []string{"s3://bucket/a/../b/", "/m"}, wantErr: "component"},
		{name: "bad endpoint", args: []string{"--endpoint-url", "localhost:9000", "s3://bucket/", "/m"}, wantErr: "--endpoint-url"},
		{name: "missing mountpoint", args: []string{"s3://bucket/"}, wantErr: "2 arguments"},
		{name: "extra argument", args: []string{"s3://bucket/", "/m", "x"}, wantErr: "2 arguments"},
	})
}

// TestParseMountArgsNPZ: --npz-members, the defaults it changes and the
// bounds beside --cache-size.
func TestParseMountArgsNPZ(t *testing.T) {
	runMountArgsCases(t, []mountArgsCase{
		{name: "npz members off by default", args: []string{"s3://bucket/", "/m"}, check: func(t *testing.T, o mountOptions) {
			if o.npzMembers || o.npzSpan != 1<<20 || o.cache.BlockSize != 1<<20 || o.kernelReadAhead != 4<<20 {
				t.Errorf("npz %v span %d block %d kernel read-ahead %d", o.npzMembers, o.npzSpan, o.cache.BlockSize, o.kernelReadAhead)
			}
		}},
		{name: "npz members change block and kernel read-ahead defaults", args: []string{"--npz-members", "s3://bucket/", "/m"}, check: func(t *testing.T, o mountOptions) {
			if !o.npzMembers || o.cache.BlockSize != 128<<10 || o.kernelReadAhead != 128<<10 {
				t.Errorf("npz %v block %d kernel read-ahead %d", o.npzMembers, o.cache.BlockSize, o.kernelReadAhead)
			}
		}},
		{name: "npz members keep explicit sizes", args: []string{"-o", "npz_members,block_size=2MiB", "--kernel-read-ahead", "8MiB", "--npz-checkpoint-span", "4MiB", "s3://bucket/", "/m"}, check: func(t *testing.T, o mountOptions) {
			if !o.npzMembers || o.cache.BlockSize != 2<<20 || o.kernelReadAhead != 8<<20 || o.npzSpan != 4<<20 {
				t.Errorf("npz %v block %d kernel read-ahead %d span %d", o.npzMembers, o.cache.BlockSize, o.kernelReadAhead, o.npzSpan)
			}
		}},
		{name: "npz span too small", args: []string{"--npz-checkpoint-span", "4KiB", "s3://bucket/", "/m"}, wantErr: "--npz-checkpoint-span"},
		{name: "npz span too large", args: []string{"--npz-checkpoint-span", "128MiB", "s3://bucket/", "/m"}, wantErr: "want a size from 64KiB to 64MiB"},
		{name: "npz span not a size", args: []string{"--npz-checkpoint-span", "lots", "s3://bucket/", "/m"}, wantErr: "npz-checkpoint-span"},
		{name: "npz members without a cache", args: []string{"--npz-members", "--cache-size", "0", "s3://bucket/", "/m"}, wantErr: "--cache-size"},
		// --npz-members bounds indexes by --npz-index-size and decoded
		// spans by 64 spans, both beside --cache-size; the cache must
		// hold a span's compressed bytes.
		{name: "npz members with too little for an index", args: []string{"--npz-members", "--npz-index-size", "64KiB", "s3://bucket/", "/m"}, wantErr: "--npz-index-size 64 KiB cannot hold one member index"},
		{name: "npz index size not a size", args: []string{"--npz-members", "--npz-index-size", "lots", "s3://bucket/", "/m"}, wantErr: "npz-index-size"},
		{name: "npz members with a span larger than the cache", args: []string{"--npz-members", "--cache-size", "2MiB", "--npz-checkpoint-span", "4MiB", "s3://bucket/", "/m"}, wantErr: "--npz-checkpoint-span 4.0 MiB is larger than --cache-size 2.0 MiB"},
		{name: "npz members with the smallest cache the tests use", args: []string{"--npz-members", "--cache-size", "4MiB", "s3://bucket/", "/m"}, check: func(t *testing.T, o mountOptions) {
			if o.npzSpanBytes != 64<<20 || o.cache.CacheSize != 4<<20 || o.npzIndexBytes != 256<<20 {
				t.Errorf("spans %d, block cache %d, indexes %d; want 64 MiB, 4 MiB, 256 MiB", o.npzSpanBytes, o.cache.CacheSize, o.npzIndexBytes)
			}
		}},
		{name: "npz members with a smaller span", args: []string{"--npz-members", "--npz-checkpoint-span", "256KiB", "--npz-index-size", "64MiB", "s3://bucket/", "/m"}, check: func(t *testing.T, o mountOptions) {
			if o.npzSpanBytes != 16<<20 || o.cache.CacheSize != 1<<30 || o.npzIndexBytes != 64<<20 {
				t.Errorf("spans %d, block cache %d, indexes %d; want 16 MiB, 1 GiB, 64 MiB", o.npzSpanBytes, o.cache.CacheSize, o.npzIndexBytes)
			}
		}},
		{name: "a small cache is fine without npz members", args: []string{"--cache-size", "4MiB", "s3://bucket/", "/m"}, check: func(t *testing.T, o mountOptions) {
			if o.npzSpanBytes != 0 || o.cache.CacheSize != 4<<20 {
				t.Errorf("span share %d, block cache %d", o.npzSpanBytes, o.cache.CacheSize)
			}
		}},
	})
}

// TestParseMountArgsCacheDir: --cache-dir and what it asks of
// --block-size, and --listing-memory.
func TestParseMountArgsCacheDir(t *testing.T) {
	runMountArgsCases(t, []mountArgsCase{
		{name: "cache dir, local", args: []string{"--npz-members", "--cache-dir", "/var/cache/bgbfs", "--cache-dir-size", "2GiB", "s3://b-1/", "/mnt"}, check: func(t *testing.T, o mountOptions) {
			if o.cacheDir.local != "/var/cache/bgbfs" || o.cacheDir.size != 2<<30 || o.cacheDir.s3Bucket != "" {
				t.Errorf("cache dir %+v", o.cacheDir)
			}
		}},
		{name: "cache dir, s3", args: []string{"-o", "cache_dir=s3://idx-bucket/fleet", "s3://b-1/", "/mnt"}, check: func(t *testing.T, o mountOptions) {
			if o.cacheDir.s3Bucket != "idx-bucket" || o.cacheDir.s3Prefix != "fleet/" || o.cacheDir.local != "" {
				t.Errorf("cache dir %+v", o.cacheDir)
			}
		}},
		{name: "cache dir, other scheme", args: []string{"--cache-dir", "gs://x/", "s3://b-1/", "/mnt"}, wantErr: "want a local directory or s3://"},
		{name: "cache dir, bad bucket", args: []string{"--cache-dir", "s3://x/", "s3://b-1/", "/mnt"}, wantErr: "--cache-dir"},
		{name: "listing memory", args: []string{"--listing-memory", "64MiB", "s3://b-1/", "/mnt"}, check: func(t *testing.T, o mountOptions) {
			if o.listingMemory != 64<<20 {
				t.Errorf("listing memory %d", o.listingMemory)
			}
		}},
		{name: "listing memory too small", args: []string{"--listing-memory", "4KiB", "s3://b-1/", "/mnt"}, wantErr: "--listing-memory"},
		{name: "cache dir size", args: []string{"--cache-dir-size", "lots", "s3://b-1/", "/mnt"}, wantErr: "--cache-dir-size"},
		// The dir keeps bytes in units of 64 KiB, whole units a block.
		{name: "cache dir with blocks not of whole units", args: []string{"--block-size", "96KiB", "--cache-dir", "/d", "s3://b-1/", "/mnt"}, wantErr: "--block-size 96 KiB with a local --cache-dir: want a multiple of 64 KiB"},
		{name: "cache dir with blocks of whole units", args: []string{"--block-size", "192KiB", "--cache-dir", "/d", "s3://b-1/", "/mnt"}, check: func(t *testing.T, o mountOptions) {
			if o.cache.BlockSize != 192<<10 {
				t.Errorf("block size %d", o.cache.BlockSize)
			}
		}},
		{name: "blocks not of whole units without a cache dir", args: []string{"--block-size", "96KiB", "s3://b-1/", "/mnt"}, check: func(t *testing.T, o mountOptions) {
			if o.cache.BlockSize != 96<<10 {
				t.Errorf("block size %d", o.cache.BlockSize)
			}
		}},
		{name: "blocks not of whole units with an s3 cache dir", args: []string{"--block-size", "96KiB", "--cache-dir", "s3://x-1/p/", "s3://b-1/", "/mnt"}, check: func(t *testing.T, o mountOptions) {
			if o.cache.BlockSize != 96<<10 {
				t.Errorf("block size %d", o.cache.BlockSize)
			}
		}},
	})
}

func TestParseLimit(t *testing.T) {
	tests := []struct {
		name    string
		values  []string
		env     string
		want    string // limitString of the result
		wantErr string
	}{
		{name: "none", want: "none"},
		{name: "env sets the default", env: "3", want: "3 of *.npz"},
		{name: "env zero", env: "0", want: "0 of *.npz"},
		{name: "flag beats env", values: []string{"50"}, env: "3", want: "50 of *.npz"},
		{name: "per directory", values: []string{"train=3", "dev/=1"}, want: "dev=1,train=3 of *.npz"},
		{name: "default and per directory", values: []string{"train=3", "7"}, want: "7,train=3 of *.npz"},
		{name: "nested path cleaned", values: []string{"./a//b/=2"}, want: "a/b=2 of *.npz"},
		{name: "env not a number", env: "three", wantErr: `BGB_LIMIT_FILES="three"`},
		{name: "env negative", env: "-1", wantErr: "BGB_LIMIT_FILES"},
		{name: "env fraction", env: "2.5", wantErr: "BGB_LIMIT_FILES"},
		{name: "flag negative", values: []string{"train=-2"}, wantErr: "--limit-files"},
		{name: "flag empty number", values: []string{"train="}, wantErr: "--limit-files"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := parseLimit(tt.values, tt.env, "*.npz")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := limitString(l); got != tt.want {
				t.Errorf("limit = %q, want %q", got, tt.want)
			}
		})
	}
	if _, err := parseLimit(nil, "", "[bad"); err == nil {
		t.Error("a malformed --limit-pattern was accepted")
	}
}

func TestFuseOptionsAndExec(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		exec    bool
		wantErr string
		check   func(t *testing.T, o mountOptions)
	}{
		{
			name: "fstab style options set flags",
			args: []string{"s3://bucket/p/", "/m", "-o", "rw,nosuid,nodev,_netdev,x-systemd.automount,allow_other,uid=1000,endpoint_url=http://127.0.0.1:9000,force_path_style,limit_files=train=3,limit_files=1,cache_size=64MiB,metadata_ttl=indefinite"},
			check: func(t *testing.T, o mountOptions) {
				if !o.allowOther || o.uid != 1000 || o.endpoint != "http://127.0.0.1:9000" || !o.forcePathStyle ||
					o.cache.CacheSize != 64<<20 || o.metadataTTL != bgfs.Indefinite || limitString(o.limit) != "1,train=3 of *.npz" {
					t.Errorf("got %+v", o)
				}
			},
		},
		{name: "unknown option", args: []string{"-o", "frobnicate", "s3://bucket/", "/m"}, wantErr: "unknown mount option"},
		{name: "option missing its value", args: []string{"-o", "uid", "s3://bucket/", "/m"}, wantErr: "needs a value"},
		{name: "bad option value", args: []string{"-o", "cache_size=lots", "s3://bucket/", "/m"}, wantErr: "cache-size"},
		{name: "json logs", args: []string{"--log-format", "json", "s3://bucket/", "/m"}, check: func(t *testing.T, o mountOptions) {
			if o.logFormat != "json" {
				t.Errorf("log format %q", o.logFormat)
			}
		}},
		{name: "bad log format", args: []string{"--log-format", "xml", "s3://bucket/", "/m"}, wantErr: "--log-format"},
		{
			name: "exec command after --",
			args: []string{"--limit-files", "3", "s3://bucket/p/", "/m", "--", "python", "-m", "src", "--flag"},
			exec: true,
			check: func(t *testing.T, o mountOptions) {
				if strings.Join(o.command, " ") != "python -m src --flag" || o.mountpoint != "/m" {
					t.Errorf("command %q mountpoint %q", o.command, o.mountpoint)
				}
			},
		},
		{name: "exec without command", args: []string{"s3://bucket/", "/m"}, exec: true, wantErr: "command after --"},
		{name: "exec with empty command", args: []string{"s3://bucket/", "/m", "--"}, exec: true, wantErr: "command after --"},
		{name: "exec and daemon", args: []string{"--daemon", "s3://bucket/", "/m", "--", "true"}, exec: true, wantErr: "--daemon"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseMountArgs(tt.args, func(string) string { return "" }, io.Discard, tt.exec)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, o)
		})
	}
}

func TestParseIndexArgs(t *testing.T) {
	for _, tt := range []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, o indexOptions)
	}{
		{name: "defaults place points as a member-view mount does", args: []string{"--cache-dir", "/d", "s3://b-1/train/"}, check: func(t *testing.T, o indexOptions) {
			if o.bucket != "b-1" || o.prefix != "train/" || o.cacheDir.local != "/d" || o.jobs < 1 {
				t.Errorf("got %+v", o)
			}
			if want := (npzview.IndexPlacement{Span: 1 << 20, RowLead: npzview.RowLead(128 << 10)}); o.placement != want {
				t.Errorf("placement %+v, want %+v", o.placement, want)
			}
		}},
		{name: "read-ahead and span", args: []string{"--cache-dir", "s3://idx-1/p/", "--kernel-read-ahead", "256KiB", "--npz-checkpoint-span", "2MiB", "--jobs", "3", "--limit-files", "2", "s3://b-1/"}, check: func(t *testing.T, o indexOptions) {
			if o.placement.Span != 2<<20 || o.placement.RowLead != npzview.RowLead(256<<10) || o.jobs != 3 || o.limit.Default != 2 || o.cacheDir.s3Bucket != "idx-1" {
				t.Errorf("got %+v", o)
			}
		}},
		{name: "no cache dir", args: []string{"s3://b-1/"}, wantErr: "--cache-dir is required"},
		{name: "no source", args: []string{"--cache-dir", "/d"}, wantErr: "takes 1 argument"},
		{name: "jobs", args: []string{"--cache-dir", "/d", "--jobs", "0", "s3://b-1/"}, wantErr: "--jobs"},
		{name: "span", args: []string{"--cache-dir", "/d", "--npz-checkpoint-span", "1KiB", "s3://b-1/"}, wantErr: "--npz-checkpoint-span"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseIndexArgs(tt.args, func(string) string { return "" }, io.Discard)
			if tt.wantErr != "" {
				wantUsageError(t, err, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, o)
		})
	}
}

// wantUsageError fails t unless err is a usage error that says want.
func wantUsageError(t *testing.T, err error, want string) {
	t.Helper()
	var ue usageError
	if err == nil || !strings.Contains(err.Error(), want) || !errors.As(err, &ue) {
		t.Fatalf("err = %v, want a usage error containing %q", err, want)
	}
}

// TestSource: what the cache dir's files are of names the store by its
// endpoint (spelled one way however the flag spells it) or AWS
// partition, and the bucket.
func TestSource(t *testing.T) {
	for _, tt := range []struct {
		endpoint, region, want string
	}{
		{"", "us-east-1", "aws/b-1"},
		{"", "", "aws/b-1"},
		{"", "cn-north-1", "aws-cn/b-1"},
		{"", "us-gov-west-1", "aws-us-gov/b-1"},
		{"http://MinIO:9000/", "", "minio:9000/b-1"},
		{"http://minio:9000", "us-east-1", "minio:9000/b-1"},
		{"https://s3.example.com:443", "", "s3.example.com/b-1"},
		{"http://h.example:80/s3/", "", "h.example/s3/b-1"},
		{"https://h.example:80", "", "h.example:80/b-1"},
		{"http://[::1]:9000", "", "[::1]:9000/b-1"},
	} {
		if got := (s3Options{endpoint: tt.endpoint, region: tt.region}).source("b-1"); got != tt.want {
			t.Errorf("endpoint %q, region %q: %q, want %q", tt.endpoint, tt.region, got, tt.want)
		}
	}
}
