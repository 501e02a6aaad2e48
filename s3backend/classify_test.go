package s3backend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"testing"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// httpError is what the SDK returns for a response without an error code
// it knows (a HEAD's 404, a 412 without a body).
func httpError(status int) error {
	return &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
		Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}},
		Err:      fmt.Errorf("http %d", status),
	}}
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// TestClassify: SDK errors map onto the package's sentinels, the metrics'
// outcome label and the one-line description start-up errors show.
func TestClassify(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("operation error S3: GetObject, %w", err) }
	for _, tt := range []struct {
		name     string
		err      error
		want     error // nil: no sentinel
		outcome  string
		describe string
	}{
		{"no such key", wrap(&smithy.GenericAPIError{Code: "NoSuchKey", Message: "The specified key does not exist."}), ErrNotFound, "not_found", "NoSuchKey: The specified key does not exist."},
		{"no such bucket", wrap(&smithy.GenericAPIError{Code: "NoSuchBucket"}), ErrNotFound, "not_found", "NoSuchBucket"},
		{"access denied", wrap(&smithy.GenericAPIError{Code: "AccessDenied", Message: "Access Denied"}), ErrAccessDenied, "denied", "AccessDenied: Access Denied"},
		{"bad signature", wrap(&smithy.GenericAPIError{Code: "SignatureDoesNotMatch"}), ErrBadCredentials, "denied", "SignatureDoesNotMatch"},
		{"expired token", wrap(&smithy.GenericAPIError{Code: "ExpiredToken"}), ErrBadCredentials, "denied", "ExpiredToken"},
		{"precondition failed", wrap(&smithy.GenericAPIError{Code: "PreconditionFailed"}), ErrStale, "stale", "PreconditionFailed"},
		{"other API error", wrap(&smithy.GenericAPIError{Code: "InternalError", Message: "oops"}), nil, "error", "InternalError: oops"},
		{"signing failed", wrap(&v4.SigningError{}), ErrNoCredentials, "denied", ""},
		{"empty credential chain", errors.New("operation error S3: ListObjectsV2, get identity: get credentials: failed to refresh cached credentials"), ErrNoCredentials, "denied", ""},
		{"412 without a code", wrap(httpError(http.StatusPreconditionFailed)), ErrStale, "stale", ""},
		{"404 without a code", wrap(httpError(http.StatusNotFound)), ErrNotFound, "not_found", ""},
		{"403 without a code", wrap(httpError(http.StatusForbidden)), ErrAccessDenied, "denied", ""},
		{"500 without a code", wrap(httpError(http.StatusInternalServerError)), nil, "error", ""},
		{"connection refused", wrap(&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}), ErrUnreachable, "unreachable", "dial tcp: connection refused"},
		{"timeout", wrap(timeoutError{}), ErrUnreachable, "unreachable", ""},
		{"refused, as text only", errors.New("dial tcp 127.0.0.1:9: connect: connection refused"), ErrUnreachable, "unreachable", ""},
		{"cancelled", context.Canceled, nil, "canceled", ""},
		{"plain", errors.New("something else"), nil, "error", "something else"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := classify(tt.err)
			for _, s := range []error{ErrNotFound, ErrAccessDenied, ErrBadCredentials, ErrStale, ErrNoCredentials, ErrUnreachable} {
				if errors.Is(got, s) != (s == tt.want) {
					t.Errorf("classify(%v): errors.Is(%v) = %v", tt.err, s, errors.Is(got, s))
				}
			}
			if !errors.Is(got, tt.err) {
				t.Errorf("classify lost the original error: %v", got)
			}
			if o := outcome(got); o != tt.outcome {
				t.Errorf("outcome = %q, want %q", o, tt.outcome)
			}
			if tt.describe != "" {
				if d := Describe(got); d != tt.describe {
					t.Errorf("Describe = %q, want %q", d, tt.describe)
				}
			}
		})
	}
}
