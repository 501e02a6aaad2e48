package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/bgbfs/bgbfs/s3backend"
)

// s3Options say how to reach S3: the same for mount, exec and index.
type s3Options struct {
	endpoint       string
	region         string
	forcePathStyle bool
	profile        string
	noSignRequest  bool
	maxAttempts    int
	requestTimeout time.Duration
}

// addS3Flags defines the flags of s3Options on fs and returns what reads
// them once fs is parsed.
func addS3Flags(fs *pflag.FlagSet, getenv func(string) string) func() (s3Options, error) {
	endpoint := fs.String("endpoint-url", getenv("AWS_ENDPOINT_URL"), "S3 endpoint URL, for S3-compatible servers (env AWS_ENDPOINT_URL)")
	region := fs.String("region", firstNonEmpty(getenv("AWS_REGION"), getenv("AWS_DEFAULT_REGION")), "AWS region (env AWS_REGION; us-east-1 when --endpoint-url is set and no region is)")
	pathStyle := fs.Bool("force-path-style", false, "address the bucket as ENDPOINT/BUCKET instead of BUCKET.ENDPOINT")
	profile := fs.String("profile", "", "shared config profile for credentials and region (env AWS_PROFILE)")
	noSign := fs.Bool("no-sign-request", false, "send anonymous requests, for public buckets")
	maxAttempts := fs.String("max-attempts", firstNonEmpty(getenv("AWS_MAX_ATTEMPTS"), strconv.Itoa(s3backend.DefaultMaxAttempts)), "attempts at one S3 request, retries of 5xx, throttling, resets, broken and stalled bodies included (env AWS_MAX_ATTEMPTS)")
	requestTimeout := fs.Duration("request-timeout", s3backend.DefaultRequestTimeout, "abandon, log and retry an attempt at a request that makes no progress (no response headers, or no body bytes) for this long")
	return func() (s3Options, error) {
		o := s3Options{endpoint: *endpoint, region: *region, forcePathStyle: *pathStyle, profile: *profile, noSignRequest: *noSign, requestTimeout: *requestTimeout}
		var err error
		if o.maxAttempts, err = strconv.Atoi(*maxAttempts); err != nil {
			return o, usageError{fmt.Sprintf("--max-attempts %q: want a number from 1 to 100", *maxAttempts)}
		}
		return o, nil
	}
}

// validate checks the S3 options. An endpoint without a region is left
// to s3backend, which signs for us-east-1 then.
func (o s3Options) validate() error {
	switch {
	case o.endpoint != "" && !strings.HasPrefix(o.endpoint, "http://") && !strings.HasPrefix(o.endpoint, "https://"):
		return usageError{fmt.Sprintf("--endpoint-url %q: want an http:// or https:// URL", o.endpoint)}
	case o.maxAttempts < 1 || o.maxAttempts > 100:
		return usageError{fmt.Sprintf("--max-attempts %d: want a number from 1 to 100", o.maxAttempts)}
	case o.requestTimeout <= 0:
		return usageError{fmt.Sprintf("--request-timeout %v: want a positive duration", o.requestTimeout)}
	}
	return nil
}

// clientConfig is the s3backend configuration for bucket.
func (o s3Options) clientConfig(bucket string, conns int, metrics *s3backend.Metrics, logger *slog.Logger) s3backend.Config {
	return s3backend.Config{
		Bucket:          bucket,
		Endpoint:        o.endpoint,
		Region:          o.region,
		ForcePathStyle:  o.forcePathStyle,
		Profile:         o.profile,
		NoSignRequest:   o.noSignRequest,
		MaxConnsPerHost: conns,
		MaxAttempts:     o.maxAttempts,
		RequestTimeout:  o.requestTimeout,
		Metrics:         metrics,
		Logger:          logger,
	}
}

// source names the store bucket is read from, for what a cache dir
// keeps of it: the endpoint's host, port and path (lower case, without
// scheme or default port), or for AWS S3 (no --endpoint-url) its
// partition; then the bucket. Two stores with a bucket, key and size in
// common and a version tag that is not a hash of the content (or no ETag
// at all) then never share blocks or indexes; one store reached through
// two endpoints shares nothing either, which costs fetches, never bytes.
func (o s3Options) source(bucket string) string {
	if o.endpoint == "" {
		partition := "aws"
		for prefix, p := range map[string]string{"cn-": "aws-cn", "us-gov-": "aws-us-gov", "us-iso-": "aws-iso", "us-isob-": "aws-iso-b"} {
			if strings.HasPrefix(o.region, prefix) {
				partition = p
			}
		}
		return partition + "/" + bucket
	}
	u, err := url.Parse(o.endpoint)
	if err != nil {
		return o.endpoint + "/" + bucket // validated: not reached
	}
	host := strings.ToLower(u.Hostname())
	if port := u.Port(); port != "" && !(u.Scheme == "http" && port == "80") && !(u.Scheme == "https" && port == "443") {
		host = net.JoinHostPort(host, port)
	}
	if path := strings.Trim(u.Path, "/"); path != "" {
		host += "/" + path
	}
	return host + "/" + bucket
}

// logOptions say where and how bgbfs logs.
type logOptions struct {
	logLevel  slog.Level
	logFormat string
	logFile   string
}

func addLogFlags(fs *pflag.FlagSet) func() (logOptions, error) {
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logFile := fs.String("log-file", "", "append logs to this file instead of stderr")
	return func() (logOptions, error) {
		o := logOptions{logFile: *logFile}
		if err := o.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
			return o, usageError{fmt.Sprintf("--log-level %q: want debug, info, warn or error", *logLevel)}
		}
		if o.logFormat = *logFormat; o.logFormat != "text" && o.logFormat != "json" {
			return o, usageError{fmt.Sprintf("--log-format %q: want text or json", o.logFormat)}
		}
		return o, nil
	}
}

// cacheDirOptions say where bgbfs keeps state across runs: a local
// directory, or a prefix of a bucket.
type cacheDirOptions struct {
	local              string
	s3Bucket, s3Prefix string
	size               int64
}

func (o cacheDirOptions) set() bool { return o.local != "" || o.s3Bucket != "" }

// String names the dir for logs.
func (o cacheDirOptions) String() string {
	if o.s3Bucket != "" {
		return "s3://" + o.s3Bucket + "/" + o.s3Prefix
	}
	return o.local
}

func addCacheDirFlags(fs *pflag.FlagSet, what string) func() (cacheDirOptions, error) {
	dir := fs.String("cache-dir", "", what)
	size := fs.String("cache-dir-size", "0", "most disk space a local --cache-dir takes: files unused for an hour make room, least recently used first; when all are in use no new block is kept; 0 keeps 5% of its file system free")
	return func() (cacheDirOptions, error) {
		var o cacheDirOptions
		var err error
		if o.size, err = parseSize("cache-dir-size", *size); err != nil {
			return o, err
		}
		if strings.HasPrefix(*dir, "s3://") {
			if o.s3Bucket, o.s3Prefix, err = parseS3URL(*dir); err != nil {
				return o, usageError{"--cache-dir: " + err.Error()}
			}
			return o, nil
		}
		if strings.Contains(*dir, "://") {
			return o, usageError{fmt.Sprintf("--cache-dir %q: want a local directory or s3://BUCKET/PREFIX/", *dir)}
		}
		o.local = *dir
		return o, nil
	}
}
