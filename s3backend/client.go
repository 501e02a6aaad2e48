package s3backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
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
	// MaxAttempts bounds retries of one request; 0 keeps the SDK default.
	MaxAttempts int
	// MaxConnsPerHost sizes the connection pool to the endpoint.
	MaxConnsPerHost int
}

// Client is the ObjectStore backed by a real S3 endpoint.
type Client struct {
	s3             *s3.Client
	bucket         string
	discoverRegion bool
}

// defaultRegion is used when an endpoint is given and no region is known:
// most S3-compatible servers accept any region and sign with us-east-1.
const defaultRegion = "us-east-1"

// New builds a client from the SDK's default configuration chain.
func New(ctx context.Context, c Config) (*Client, error) {
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		conns := max(c.MaxConnsPerHost, 64)
		t.MaxIdleConns = conns * 2
		t.MaxIdleConnsPerHost = conns
		t.IdleConnTimeout = 90 * time.Second
		// The SDK's default dialer waits 30 s; an unreachable endpoint
		// should be reported well before that.
		t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
		t.ResponseHeaderTimeout = 60 * time.Second
	})
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
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
	if c.MaxAttempts > 0 {
		opts = append(opts, config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) { o.MaxAttempts = c.MaxAttempts })
		}))
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
	})
	return &Client{s3: client, bucket: c.Bucket, discoverRegion: discover}, nil
}

// Region reports the region requests are signed for.
func (c *Client) Region() string { return c.s3.Options().Region }

// List implements ObjectStore.
func (c *Client) List(ctx context.Context, req ListRequest) (ListPage, error) {
	in := &s3.ListObjectsV2Input{
		Bucket: aws.String(c.bucket),
		Prefix: aws.String(req.Prefix),
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
	page := ListPage{
		Objects:        make([]ObjectInfo, 0, len(out.Contents)),
		CommonPrefixes: make([]string, 0, len(out.CommonPrefixes)),
	}
	for _, o := range out.Contents {
		page.Objects = append(page.Objects, ObjectInfo{
			Key:          aws.ToString(o.Key),
			Size:         aws.ToInt64(o.Size),
			ETag:         aws.ToString(o.ETag),
			LastModified: aws.ToTime(o.LastModified),
		})
	}
	for _, p := range out.CommonPrefixes {
		page.CommonPrefixes = append(page.CommonPrefixes, aws.ToString(p.Prefix))
	}
	if aws.ToBool(out.IsTruncated) {
		page.NextContinuationToken = aws.ToString(out.NextContinuationToken)
		if page.NextContinuationToken == "" {
			return page, fmt.Errorf("list %q: truncated page without a continuation token", req.Prefix)
		}
	}
	return page, nil
}

// ReadAt implements ObjectStore with one ranged GET pinned by If-Match.
func (c *Client) ReadAt(ctx context.Context, key, etag string, off int64, bufs ...[]byte) (int, error) {
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	if total == 0 {
		return 0, nil
	}
	in := &s3.GetObjectInput{
		Bucket: aws.String(c.bucket),
		Key:    aws.String(key),
		Range:  aws.String(fmt.Sprintf("bytes=%d-%d", off, off+int64(total)-1)),
	}
	if etag != "" {
		in.IfMatch = aws.String(etag)
	}
	out, err := c.s3.GetObject(ctx, in)
	if err != nil {
		if isRangeNotSatisfiable(err) {
			return 0, io.EOF
		}
		err = classify(err)
		if errors.Is(err, ErrNotFound) {
			// The key existed at open: it was deleted since.
			return 0, fmt.Errorf("get %q: %w", key, ErrStale)
		}
		return 0, fmt.Errorf("get %q [%d,+%d): %w", key, off, total, err)
	}
	defer out.Body.Close()
	// A server that ignores If-Match still says which version it served.
	if etag != "" && out.ETag != nil && aws.ToString(out.ETag) != etag {
		return 0, fmt.Errorf("get %q: served ETag %s, opened %s: %w", key, aws.ToString(out.ETag), etag, ErrStale)
	}
	want := aws.ToInt64(out.ContentLength)
	n := 0
	for _, b := range bufs {
		m, err := io.ReadFull(out.Body, b)
		n += m
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
			// A short body is the end of the object only if the server
			// said the range was that short.
			if out.ContentLength != nil && int64(n) == want {
				return n, io.EOF
			}
			return n, fmt.Errorf("get %q: body ended after %d of %d bytes: %w", key, n, want, io.ErrUnexpectedEOF)
		default:
			return n, fmt.Errorf("get %q: read body: %w", key, err)
		}
	}
	return n, nil
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
		case "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired":
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
	page, err := c.List(ctx, req)
	if err == nil || !c.discoverRegion {
		return page, err
	}
	region := bucketRegion(err)
	if region == "" || region == c.Region() {
		return page, err
	}
	c.s3 = s3.New(c.s3.Options(), func(o *s3.Options) { o.Region = region })
	return c.List(ctx, req)
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
