package s3backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// Config says how to reach a bucket. Credentials are not here on purpose:
// they come only from the AWS SDK's default chain.
type Config struct {
	Bucket string
	// Endpoint is an S3-compatible endpoint URL; empty means AWS.
	Endpoint       string
	Region         string
	ForcePathStyle bool
	Profile        string
	// NoSignRequest sends anonymous requests.
	NoSignRequest bool
	// MaxAttempts bounds the attempts at one request, retries included;
	// 0 means DefaultMaxAttempts.
	MaxAttempts int
	// RequestTimeout is how long an attempt at a request may make no
	// progress (no response headers, or no body bytes) before it is
	// abandoned, logged and retried like a refused one; 0 means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// MaxConnsPerHost sizes the connection pool to the endpoint.
	MaxConnsPerHost int
	// Metrics, if set, counts retries; wrap the client with Instrument to
	// record requests.
	Metrics *Metrics
	// Logger receives a line for each request that stalls (at most one a
	// second) and the SDK's own messages, at debug level.
	Logger *slog.Logger
}

const (
	DefaultMaxAttempts = 10
	// DefaultRequestTimeout is long for S3, whose answers start within
	// tens of milliseconds (it advises retrying a request that has not
	// answered in a few seconds), and short enough that a read has
	// several attempts within the deadline of a FUSE read.
	DefaultRequestTimeout = 10 * time.Second
	// maxBackoff caps the wait between two attempts: with 10 attempts a
	// read against a refusing endpoint fails within about 20 s.
	maxBackoff = 5 * time.Second
)

// The budgets of requests: reads and listings get the configured
// attempts; the start-up check a few quick ones, for a passing fault, not
// the seconds that reads may spend, and says itself why it failed.
var probeBudget = budget{attempts: 3, maxBackoff: time.Second, quiet: true}

func (c *Client) budget() budget { return budget{attempts: c.maxAttempts, maxBackoff: maxBackoff} }

// Client is the ObjectStore backed by a real S3 endpoint.
type Client struct {
	s3             *s3.Client
	bucket         string
	discoverRegion bool
	maxAttempts    int
	requestTimeout time.Duration
	metrics        *Metrics // may be nil
	// retryer holds the SDK's rules of what to retry and how long to
	// wait; the retries are made in do.
	retryer aws.RetryerV2
	stalls  *stallReports
}

// defaultRegion is used when an endpoint is given and no region is known:
// most S3-compatible servers accept any region and sign with us-east-1.
const defaultRegion = "us-east-1"

// New builds a client from the SDK's default configuration chain.
func New(ctx context.Context, c Config) (*Client, error) {
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		conns := max(c.MaxConnsPerHost, 64)
		t.MaxIdleConns = conns * 2
		t.MaxIdleConnsPerHost = conns
		t.IdleConnTimeout = 90 * time.Second
		// The SDK's default dialer waits 30 s; an unreachable endpoint
		// should be reported well before that.
		t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	})
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		// One HTTP attempt per SDK call: do retries, so that stalls,
		// broken bodies and refusals share one budget of attempts.
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
		config.WithLogger(sdkLogger{c.Logger}),
		// MinIO and other servers do not send the checksums the SDK looks
		// for by default; validating only when required avoids a warning per GET.
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
	}
	if c.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(c.Profile))
	}
	if c.Region != "" {
		opts = append(opts, config.WithRegion(c.Region))
	}
	if c.NoSignRequest {
		opts = append(opts, config.WithCredentialsProvider(aws.AnonymousCredentials{}))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	discover := false
	if cfg.Region == "" {
		cfg.Region = defaultRegion
		discover = c.Endpoint == ""
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
		o.UsePathStyle = c.ForcePathStyle
		// Each attempt's watchdog sees its headers and body arrive.
		// (Wrapped here, not in the configuration: loading it sets up
		// the transport, for AWS_CA_BUNDLE.)
		o.HTTPClient = watchedHTTP{o.HTTPClient}
	})
	return &Client{
		s3: client, bucket: c.Bucket, discoverRegion: discover,
		maxAttempts: c.MaxAttempts, requestTimeout: c.RequestTimeout, metrics: c.Metrics,
		retryer: newRetryer(), stalls: &stallReports{logger: c.Logger},
	}, nil
}

// Region reports the region requests are signed for.
func (c *Client) Region() string { return c.s3.Options().Region }

// List implements ObjectStore.
func (c *Client) List(ctx context.Context, req ListRequest) (ListPage, error) {
	return c.list(ctx, c.bucket, req, c.budget())
}

// list returns one page of a listing of bucket, retried within b.
func (c *Client) list(ctx context.Context, bucket string, req ListRequest, b budget) (ListPage, error) {
	var page ListPage
	err := c.do(ctx, "ListObjectsV2", req.Prefix, b, func(ctx context.Context) (err error) {
		page, err = c.listOnce(ctx, bucket, req)
		return err
	})
	return page, err
}

// listOnce makes one attempt at a page of a listing.
func (c *Client) listOnce(ctx context.Context, bucket string, req ListRequest) (ListPage, error) {
	in := &s3.ListObjectsV2Input{
		Bucket: aws.String(bucket),
		Prefix: aws.String(req.Prefix),
		// XML 1.0 cannot carry most control characters: one key holding
		// U+0001 would make the whole page undecodable. URL-encoded keys
		// always decode, and each key is then shown or hidden on its own.
		EncodingType: types.EncodingTypeUrl,
	}
	if req.Delimiter != "" {
		in.Delimiter = aws.String(req.Delimiter)
	}
	if req.ContinuationToken != "" {
		in.ContinuationToken = aws.String(req.ContinuationToken)
	}
	if req.MaxKeys > 0 {
		in.MaxKeys = aws.Int32(req.MaxKeys)
	}
	out, err := c.s3.ListObjectsV2(ctx, in)
	if err != nil {
		return ListPage{}, classify(err)
	}
	// A server that ignores the encoding type says so by not echoing it.
	decode := func(s string) (string, error) { return s, nil }
	if out.EncodingType == types.EncodingTypeUrl {
		decode = url.QueryUnescape
	}
	page := ListPage{
		Objects:        make([]ObjectInfo, 0, len(out.Contents)),
		CommonPrefixes: make([]string, 0, len(out.CommonPrefixes)),
	}
	for _, o := range out.Contents {
		key, err := decode(aws.ToString(o.Key))
		if err != nil {
			return ListPage{}, fmt.Errorf("list %q: undecodable key %q: %w", req.Prefix, aws.ToString(o.Key), err)
		}
		page.Objects = append(page.Objects, ObjectInfo{
			Key:          key,
			Size:         aws.ToInt64(o.Size),
			ETag:         aws.ToString(o.ETag),
			LastModified: aws.ToTime(o.LastModified),
		})
	}
	for _, p := range out.CommonPrefixes {
		prefix, err := decode(aws.ToString(p.Prefix))
		if err != nil {
			return ListPage{}, fmt.Errorf("list %q: undecodable common prefix %q: %w", req.Prefix, aws.ToString(p.Prefix), err)
		}
		page.CommonPrefixes = append(page.CommonPrefixes, prefix)
	}
	if aws.ToBool(out.IsTruncated) {
		page.NextContinuationToken = aws.ToString(out.NextContinuationToken)
		if page.NextContinuationToken == "" {
			return page, fmt.Errorf("list %q: truncated page without a continuation token", req.Prefix)
		}
	}
	return page, nil
}

// ReadAt implements ObjectStore with one ranged GET pinned to the version
// (If-Match, or If-Unmodified-Since for an object listed without an ETag).
// A GET that fails, stalls or whose body breaks off is tried again (for
// the rest of the range), up to the client's attempts in all.
func (c *Client) ReadAt(ctx context.Context, v Version, off int64, bufs ...[]byte) (int, error) {
	done := 0
	var end error // io.EOF once the object ended
	err := c.do(ctx, "GetObject", v.Key, c.budget(), func(ctx context.Context) error {
		n, err := c.get(ctx, v, off+int64(done), skipBytes(bufs, done))
		done += n
		// Only get's own io.EOF is the end of the object: a connection
		// closed before an answer is an error that wraps io.EOF.
		if err == io.EOF {
			end, err = err, nil
		}
		return err
	})
	if err == nil {
		err = end
	}
	return done, err
}

// get makes one GET of the range bufs cover.
func (c *Client) get(ctx context.Context, v Version, off int64, bufs [][]byte) (int, error) {
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	if total == 0 {
		return 0, nil
	}
	out, err := c.openRange(ctx, v, off, int64(total))
	if err != nil {
		return 0, err
	}
	defer out.Body.Close()
	want := aws.ToInt64(out.ContentLength)
	n := 0
	for _, b := range bufs {
		m, err := io.ReadFull(out.Body, b)
		n += m
		switch {
		case err == nil:
			continue
		case watchdogOf(ctx).stalled() != nil:
			return n, fmt.Errorf("get %q: %w after %d of %d bytes", v.Key, watchdogOf(ctx).stalled(), n, total)
		case (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)) && out.ContentLength != nil && int64(n) == want:
			// A short body is the end of the object only if the server
			// said the range was that short.
			return n, io.EOF
		case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
			return n, &bodyError{fmt.Errorf("get %q: body ended after %d of %d bytes: %w", v.Key, n, want, io.ErrUnexpectedEOF)}
		default:
			return n, &bodyError{fmt.Errorf("get %q: read body: %w", v.Key, err)}
		}
	}
	return n, nil
}

// openRange sends a GET of total bytes of v at off, pinned to the
// version, and checks the answer's headers. The caller closes the body.
func (c *Client) openRange(ctx context.Context, v Version, off, total int64) (*s3.GetObjectOutput, error) {
	in := &s3.GetObjectInput{
		Bucket: aws.String(c.bucket),
		Key:    aws.String(v.Key),
		Range:  aws.String(fmt.Sprintf("bytes=%d-%d", off, off+int64(total)-1)),
	}
	if v.ETag != "" {
		in.IfMatch = aws.String(v.ETag)
	} else if !v.LastModified.IsZero() {
		// HTTP dates carry whole seconds: an object rewritten within
		// the second it was listed in passes (SEMANTICS.md says so).
		in.IfUnmodifiedSince = aws.Time(v.LastModified)
	}
	out, err := c.s3.GetObject(ctx, in)
	if err != nil {
		if isRangeNotSatisfiable(err) {
			if off < v.Size {
				// A server that checks the range before If-Match
				// says 416 for an object that shrank.
				return nil, fmt.Errorf("get %q: range from %d not satisfiable, listed size %d: %w", v.Key, off, v.Size, ErrStale)
			}
			return nil, io.EOF
		}
		err = classify(err)
		if errors.Is(err, ErrNotFound) {
			// The key existed at open: it was deleted since.
			return nil, fmt.Errorf("get %q: %w", v.Key, ErrStale)
		}
		return nil, fmt.Errorf("get %q [%d,+%d): %w", v.Key, off, total, err)
	}
	if err := checkRange(v, off, total, out); err != nil {
		out.Body.Close()
		return nil, fmt.Errorf("get %q [%d,+%d): %w", v.Key, off, total, err)
	}
	return out, nil
}

// ErrBadResponse is an answer to a GET that does not hold the bytes asked
// for: a range other than the one requested, or the whole object from a
// server or proxy that ignored the Range header. It is not retried: the
// same server would answer the same way.
var ErrBadResponse = errors.New("server answered with other bytes than asked for")

// checkRange makes sure a GET's answer is the version and the range asked
// for before its body is read: its ETag (or, without one, its modification
// time), its status, and its Content-Range, whose total must be the
// version's size.
func checkRange(v Version, off, n int64, out *s3.GetObjectOutput) error {
	if v.ETag != "" && out.ETag != nil && aws.ToString(out.ETag) != v.ETag {
		// A server that ignores If-Match still says which version it served.
		return fmt.Errorf("served ETag %s, opened %s: %w", aws.ToString(out.ETag), v.ETag, ErrStale)
	}
	if v.ETag == "" && out.LastModified != nil && !v.LastModified.IsZero() &&
		!out.LastModified.Truncate(time.Second).Equal(v.LastModified.Truncate(time.Second)) {
		return fmt.Errorf("served a version modified %s, opened one modified %s: %w",
			out.LastModified.UTC().Format(time.RFC3339), v.LastModified.UTC().Format(time.RFC3339), ErrStale)
	}
	if raw, ok := awsmiddleware.GetRawResponse(out.ResultMetadata).(*smithyhttp.Response); ok && raw.StatusCode != http.StatusPartialContent {
		return fmt.Errorf("status %d to a ranged GET, not 206 (a proxy that ignores Range?): %w", raw.StatusCode, ErrBadResponse)
	}
	cr := aws.ToString(out.ContentRange)
	first, last, size, err := parseContentRange(cr)
	if err != nil {
		return fmt.Errorf("%w: %w", err, ErrBadResponse)
	}
	if size >= 0 && size != v.Size {
		return fmt.Errorf("object is %d bytes, listed as %d: %w", size, v.Size, ErrStale)
	}
	wantLast := min(off+n, v.Size) - 1
	if first != off || last != wantLast || (out.ContentLength != nil && *out.ContentLength != last-first+1) {
		return fmt.Errorf("Content-Range %q (length %d) for bytes %d-%d: %w", cr, aws.ToInt64(out.ContentLength), off, wantLast, ErrBadResponse)
	}
	return nil
}

// parseContentRange reads "bytes FIRST-LAST/SIZE" (SIZE may be "*",
// returned as -1).
func parseContentRange(s string) (first, last, size int64, err error) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	span, total, ok2 := strings.Cut(rest, "/")
	from, to, ok3 := strings.Cut(span, "-")
	if !ok || !ok2 || !ok3 {
		return 0, 0, 0, fmt.Errorf("Content-Range %q is not bytes FIRST-LAST/SIZE", s)
	}
	first, err1 := strconv.ParseInt(from, 10, 64)
	last, err2 := strconv.ParseInt(to, 10, 64)
	size = -1
	var err3 error
	if total != "*" {
		size, err3 = strconv.ParseInt(total, 10, 64)
	}
	if err := errors.Join(err1, err2, err3); err != nil || first < 0 || last < first || (size >= 0 && last >= size) {
		return 0, 0, 0, fmt.Errorf("Content-Range %q is not bytes FIRST-LAST/SIZE", s)
	}
	return first, last, size, nil
}

// skipBytes returns bufs without their first n bytes.
func skipBytes(bufs [][]byte, n int) [][]byte {
	for len(bufs) > 0 && n >= len(bufs[0]) {
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	if n == 0 || len(bufs) == 0 {
		return bufs
	}
	out := make([][]byte, len(bufs))
	copy(out, bufs)
	out[0] = out[0][n:]
	return out
}

func isRangeNotSatisfiable(err error) bool {
	var re *awshttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == http.StatusRequestedRangeNotSatisfiable
}

// classify maps S3 error codes onto the package's sentinel errors, keeping
// the original error in the chain for the log.
func classify(err error) error {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "NoSuchBucket", "NoSuchKey", "NotFound":
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		case "AccessDenied", "AllAccessDisabled", "AccountProblem":
			return fmt.Errorf("%w: %w", ErrAccessDenied, err)
		case "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "InvalidTokenId", "TokenRefreshRequired":
			return fmt.Errorf("%w: %w", ErrBadCredentials, err)
		case "PreconditionFailed":
			return fmt.Errorf("%w: %w", ErrStale, err)
		}
	}
	var signErr *v4.SigningError
	// The SDK has no error type for an empty credential chain, only this
	// wording; signing fails only for want of credentials.
	if errors.As(err, &signErr) || strings.Contains(err.Error(), "get identity: get credentials") {
		return fmt.Errorf("%w: %w", ErrNoCredentials, err)
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		switch re.HTTPStatusCode() {
		case http.StatusPreconditionFailed:
			return fmt.Errorf("%w: %w", ErrStale, err)
		case http.StatusNotFound:
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		case http.StatusForbidden:
			return fmt.Errorf("%w: %w", ErrAccessDenied, err)
		}
	}
	var netErr net.Error
	var opErr *net.OpError
	if errors.As(err, &opErr) || (errors.As(err, &netErr) && netErr.Timeout()) {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	if strings.Contains(err.Error(), "connection refused") {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	return err
}

// Probe lists the first page under prefix, to show before mounting that
// the endpoint answers, the credentials work and the prefix is readable.
// When no region was configured for AWS itself, it follows S3's answer
// naming the bucket's region.
func (c *Client) Probe(ctx context.Context, prefix string) (ListPage, error) {
	req := ListRequest{Prefix: prefix, Delimiter: "/"}
	page, err := c.list(ctx, c.bucket, req, probeBudget)
	if err == nil || !c.discoverRegion {
		return page, err
	}
	region := bucketRegion(err)
	if region == "" || region == c.Region() {
		return page, err
	}
	c.s3 = s3.New(c.s3.Options(), func(o *s3.Options) { o.Region = region })
	return c.list(ctx, c.bucket, req, probeBudget)
}

// bucketRegion reads the region S3 names in a wrong-region answer.
func bucketRegion(err error) string {
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.Response != nil {
		return re.Response.Header.Get("X-Amz-Bucket-Region")
	}
	return ""
}

// Describe gives a short, secret-free description of an error from this
// package, for a one-line message: the S3 error code and message when
// there is one, else the error itself.
func Describe(err error) string {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		if msg := apiErr.ErrorMessage(); msg != "" {
			return apiErr.ErrorCode() + ": " + msg
		}
		return apiErr.ErrorCode()
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return opErr.Error()
	}
	return err.Error()
}

// sdkLogger sends the SDK's own messages (such as "failed to discard
// remaining HTTP response body") to the daemon's log at debug level
// instead of raw lines on stderr.
type sdkLogger struct{ l *slog.Logger }

func (s sdkLogger) Logf(classification logging.Classification, format string, v ...interface{}) {
	if s.l != nil {
		s.l.Debug("aws sdk: "+fmt.Sprintf(format, v...), "class", string(classification))
	}
}
