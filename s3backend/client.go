package s3backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
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
	// RequestTimeout is how long a request may make no progress (no
	// response headers, or no body bytes) before it is abandoned and
	// retried; 0 means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// MaxConnsPerHost sizes the connection pool to the endpoint.
	MaxConnsPerHost int
	// Metrics, if set, counts retries; wrap the client with Instrument to
	// record requests.
	Metrics *Metrics
	// Logger receives the SDK's own messages, at debug level.
	Logger *slog.Logger
}

const (
	DefaultMaxAttempts    = 10
	DefaultRequestTimeout = 30 * time.Second
	// maxBackoff caps the wait between two attempts: with 10 attempts a
	// read against a dead endpoint fails within about a minute.
	maxBackoff = 5 * time.Second
	// probeAttempts bounds the start-up check's attempts.
	probeAttempts = 3
)

// Client is the ObjectStore backed by a real S3 endpoint.
type Client struct {
	s3             *s3.Client
	bucket         string
	discoverRegion bool
	maxAttempts    int
	requestTimeout time.Duration
	metrics        *Metrics // may be nil
	listHTTP       aws.HTTPClient
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
		t.ResponseHeaderTimeout = c.RequestTimeout
	})
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
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
	// The SDK retries 5xx, throttling (SlowDown) and connection errors with
	// exponential backoff and jitter. Its client-side retry quota is off:
	// under a long run of faults it would turn retries into failures.
	opts = append(opts, config.WithRetryer(func() aws.Retryer {
		std := retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = c.MaxAttempts
			o.MaxBackoff = maxBackoff
			o.RateLimiter = ratelimit.None
			// A listing whose body breaks off or times out fails while
			// it is decoded, which the SDK does not retry by itself.
			o.Retryables = append(o.Retryables, retry.IsErrorRetryableFunc(func(err error) aws.Ternary {
				var ne net.Error
				if errors.Is(err, io.ErrUnexpectedEOF) || (errors.As(err, &ne) && ne.Timeout()) {
					return aws.TrueTernary
				}
				return aws.UnknownTernary
			}))
		})
		if c.Metrics == nil {
			return std
		}
		return countingRetryer{RetryerV2: std, retries: c.Metrics.retries}
	}))
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	discover := false
	if cfg.Region == "" {
		cfg.Region = defaultRegion
		discover = c.Endpoint == ""
	}
	// A listing page is small: one that takes longer than the request
	// timeout has stalled. (GETs have their own no-progress timer.)
	listHTTP := awshttp.NewBuildableClient().WithTimeout(c.RequestTimeout).WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConnsPerHost = 8
		t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	})
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
		o.UsePathStyle = c.ForcePathStyle
	})
	return &Client{s3: client, bucket: c.Bucket, discoverRegion: discover, maxAttempts: c.MaxAttempts, requestTimeout: c.RequestTimeout, metrics: c.Metrics, listHTTP: listHTTP}, nil
}

// Region reports the region requests are signed for.
func (c *Client) Region() string { return c.s3.Options().Region }

// List implements ObjectStore.
func (c *Client) List(ctx context.Context, req ListRequest) (ListPage, error) {
	return c.list(ctx, req)
}

func (c *Client) list(ctx context.Context, req ListRequest, optFns ...func(*s3.Options)) (ListPage, error) {
	optFns = append([]func(*s3.Options){func(o *s3.Options) { o.HTTPClient = c.listHTTP }}, optFns...)
	in := &s3.ListObjectsV2Input{
		Bucket: aws.String(c.bucket),
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
	out, err := c.s3.ListObjectsV2(ctx, in, optFns...)
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
// The SDK retries failed requests; a body that breaks off or stalls is
// resumed here with a GET of the rest, up to the same number of attempts.
func (c *Client) ReadAt(ctx context.Context, v Version, off int64, bufs ...[]byte) (int, error) {
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	done := 0
	var lastErr error
	for attempt := 0; done < total; attempt++ {
		if attempt > 0 {
			if attempt >= c.maxAttempts {
				return done, fmt.Errorf("get %q: gave up after %d attempts: %w", v.Key, attempt, lastErr)
			}
			wait := min(maxBackoff, 100*time.Millisecond<<min(attempt, 10))
			select {
			case <-time.After(rand.N(wait) + wait/2):
			case <-ctx.Done():
				return done, ctx.Err()
			}
		}
		n, err := c.get(ctx, v, off+int64(done), skipBytes(bufs, done))
		done += n
		var broken *bodyError
		if err == nil || errors.Is(err, io.EOF) || !errors.As(err, &broken) || ctx.Err() != nil {
			return done, err
		}
		lastErr = err
		if c.metrics != nil {
			c.metrics.retries.Inc()
		}
	}
	return done, nil
}

// get makes one GET of the range bufs cover, abandoning it when its body
// makes no progress for the request timeout.
func (c *Client) get(ctx context.Context, v Version, off int64, bufs [][]byte) (int, error) {
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	reqCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	out, err := c.openRange(reqCtx, v, off, int64(total))
	if err != nil {
		return 0, err
	}
	defer out.Body.Close()
	stall := time.AfterFunc(c.requestTimeout, func() { cancel(errStalled) })
	defer stall.Stop()
	body := &progressReader{r: out.Body, onProgress: func() { stall.Reset(c.requestTimeout) }}
	want := aws.ToInt64(out.ContentLength)
	n := 0
	for _, b := range bufs {
		m, err := io.ReadFull(body, b)
		n += m
		switch {
		case err == nil:
			continue
		case context.Cause(reqCtx) == errStalled:
			return n, &bodyError{fmt.Errorf("get %q: %w after %d of %d bytes", v.Key, errStalled, n, total)}
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

// errStalled marks a transfer abandoned for making no progress.
var errStalled = errors.New("transfer stalled")

// bodyError is a response body that broke off or stalled: the request
// itself succeeded (the SDK retries those), so the rest can be asked for.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// progressReader calls onProgress whenever bytes arrive.
type progressReader struct {
	r          io.Reader
	onProgress func()
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.onProgress()
	}
	return n, err
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
	// A start-up check should fail fast: a few quick retries for a
	// passing fault, not the minute that reads may spend.
	fewRetries := func(o *s3.Options) {
		o.Retryer = retry.AddWithMaxBackoffDelay(retry.AddWithMaxAttempts(o.Retryer, probeAttempts), time.Second)
	}
	page, err := c.list(ctx, req, fewRetries)
	if err == nil || !c.discoverRegion {
		return page, err
	}
	region := bucketRegion(err)
	if region == "" || region == c.Region() {
		return page, err
	}
	c.s3 = s3.New(c.s3.Options(), func(o *s3.Options) { o.Region = region })
	return c.list(ctx, req, fewRetries)
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
