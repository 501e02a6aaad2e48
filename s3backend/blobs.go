package s3backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"path"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// maxBlobSize bounds what Load reads: bgbfs's state files (member
// indexes) are tens of KB.
const maxBlobSize = 64 << 20

// Blobs keeps small whole objects under a prefix of a bucket, with the
// client's endpoint, credentials and retries: state that a fleet of
// mounts shares, such as member indexes that one job built.
type Blobs struct {
	c      *Client
	bucket string
	prefix string
}

// Blobs returns the objects under prefix in bucket, which may be another
// bucket than the client's (in the same region).
func (c *Client) Blobs(bucket, prefix string) *Blobs {
	return &Blobs{c: c, bucket: bucket, prefix: prefix}
}

// String names the place for logs: s3://BUCKET/PREFIX.
func (b *Blobs) String() string { return "s3://" + b.bucket + "/" + b.prefix }

// Load returns the object named name under the prefix; an error wrapping
// io/fs.ErrNotExist (and ErrNotFound) if there is none.
func (b *Blobs) Load(ctx context.Context, name string) ([]byte, error) {
	key := path.Join(b.prefix, name)
	var data []byte
	err := b.c.do(ctx, "GetObject", key, b.c.budget(), func(ctx context.Context) error {
		out, err := b.c.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key)})
		if err != nil {
			return classify(err)
		}
		defer out.Body.Close()
		if n := aws.ToInt64(out.ContentLength); n > maxBlobSize {
			return fmt.Errorf("%d bytes, more than the %d a state file may have", n, maxBlobSize)
		}
		data, err = io.ReadAll(io.LimitReader(out.Body, maxBlobSize+1))
		if err != nil {
			return &bodyError{fmt.Errorf("read body: %w", err)}
		}
		return nil
	})
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("get s3://%s/%s: %w: %w", b.bucket, key, err, iofs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("get s3://%s/%s: %w", b.bucket, key, err)
	}
	return data, nil
}

// Store writes data as the object named name under the prefix, replacing
// any: S3 makes a whole new object visible at once.
func (b *Blobs) Store(ctx context.Context, name string, data []byte) error {
	key := path.Join(b.prefix, name)
	err := b.c.do(ctx, "PutObject", key, b.c.budget(), func(ctx context.Context) error {
		_, err := b.c.s3.PutObject(ctx, &s3.PutObjectInput{
			Bucket:        aws.String(b.bucket),
			Key:           aws.String(key),
			Body:          bytes.NewReader(data),
			ContentLength: aws.Int64(int64(len(data))),
		})
		if err != nil {
			return classify(err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("put s3://%s/%s: %w", b.bucket, key, err)
	}
	return nil
}

// Names returns the names of the objects under the prefix whose names
// start with sub: one listing instead of a GET per name, for a writer
// that wants to skip what is there.
func (b *Blobs) Names(ctx context.Context, sub string) (map[string]bool, error) {
	names := map[string]bool{}
	req := ListRequest{Prefix: path.Join(b.prefix, sub) + "/"}
	for {
		page, err := b.c.list(ctx, b.bucket, req, b.c.budget())
		if err != nil {
			return nil, fmt.Errorf("list s3://%s/%s: %w", b.bucket, path.Join(b.prefix, sub), err)
		}
		for _, o := range page.Objects {
			names[strings.TrimPrefix(o.Key, strings.TrimSuffix(b.prefix, "/")+"/")] = true
		}
		if page.NextContinuationToken == "" {
			return names, nil
		}
		req.ContinuationToken = page.NextContinuationToken
	}
}
