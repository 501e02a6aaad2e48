package testbed

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// S3Admin sets buckets up and reads them back, outside bgbfs.
type S3Admin struct {
	Client *s3.Client
}

// NewS3Admin returns a path-style client for endpoint in us-east-1 with
// static credentials, or anonymous when accessKey is empty. Checksums are
// only computed and validated where S3 requires them, which every
// S3-compatible server accepts.
func NewS3Admin(endpoint, accessKey, secretKey string) *S3Admin {
	var creds aws.CredentialsProvider = aws.AnonymousCredentials{}
	if accessKey != "" {
		creds = credentials.NewStaticCredentialsProvider(accessKey, secretKey, "")
	}
	client := s3.New(s3.Options{
		Region:                     "us-east-1",
		BaseEndpoint:               aws.String(endpoint),
		UsePathStyle:               true,
		Credentials:                creds,
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		HTTPClient: &http.Client{Transport: &http.Transport{
			Proxy:               nil, // never go through a host proxy to reach 127.0.0.1
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     30 * time.Second,
		}},
	})
	return &S3Admin{Client: client}
}

// CreateBucket creates bucket.
func (a *S3Admin) CreateBucket(ctx context.Context, bucket string) error {
	_, err := a.Client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", bucket, err)
	}
	return nil
}

// PutBytes stores data at bucket/key.
func (a *S3Admin) PutBytes(ctx context.Context, bucket, key string, data []byte) error {
	_, err := a.Client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        aws.String(bucket),
		Key:           aws.String(key),
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
	})
	if err != nil {
		return fmt.Errorf("put s3://%s/%s: %w", bucket, key, err)
	}
	return nil
}

// PutFile stores the local file at path as bucket/key.
func (a *S3Admin) PutFile(ctx context.Context, bucket, key, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	_, err = a.Client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        aws.String(bucket),
		Key:           aws.String(key),
		Body:          f,
		ContentLength: aws.Int64(fi.Size()),
	})
	if err != nil {
		return fmt.Errorf("put s3://%s/%s from %s: %w", bucket, key, path, err)
	}
	return nil
}

// PutBucketPolicy sets bucket's policy document (JSON).
func (a *S3Admin) PutBucketPolicy(ctx context.Context, bucket, policy string) error {
	_, err := a.Client.PutBucketPolicy(ctx, &s3.PutBucketPolicyInput{
		Bucket: aws.String(bucket),
		Policy: aws.String(policy),
	})
	if err != nil {
		return fmt.Errorf("put policy on %s: %w", bucket, err)
	}
	return nil
}

// Object is a key and its content, for PutMany.
type Object struct {
	Key  string
	Data []byte
}

// PutMany uploads objs with at most workers requests in flight and returns
// the first error.
func (a *S3Admin) PutMany(ctx context.Context, bucket string, objs []Object, workers int) error {
	return forEachParallel(ctx, len(objs), workers, func(ctx context.Context, i int) error {
		return a.PutBytes(ctx, bucket, objs[i].Key, objs[i].Data)
	})
}

// PutLarge uploads size bytes of src as bucket/key by multipart upload in
// parts of partSize bytes, at most workers parts in flight (each holds a
// partSize buffer). It aborts the upload on error.
func (a *S3Admin) PutLarge(ctx context.Context, bucket, key string, src io.ReaderAt, size, partSize int64, workers int) error {
	if partSize < 5<<20 {
		return fmt.Errorf("part size %d is under the S3 minimum of 5 MiB", partSize)
	}
	created, err := a.Client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket: aws.String(bucket),
		Key:    aws.String(key),
	})
	if err != nil {
		return fmt.Errorf("create multipart upload s3://%s/%s: %w", bucket, key, err)
	}
	nParts := int((size + partSize - 1) / partSize)
	parts := make([]types.CompletedPart, nParts)
	err = forEachParallel(ctx, nParts, workers, func(ctx context.Context, i int) error {
		off := int64(i) * partSize
		n := min(partSize, size-off)
		buf := make([]byte, n)
		if _, err := src.ReadAt(buf, off); err != nil && err != io.EOF {
			return err
		}
		num := int32(i + 1)
		out, err := a.Client.UploadPart(ctx, &s3.UploadPartInput{
			Bucket:        aws.String(bucket),
			Key:           aws.String(key),
			UploadId:      created.UploadId,
			PartNumber:    aws.Int32(num),
			Body:          bytes.NewReader(buf),
			ContentLength: aws.Int64(n),
		})
		if err != nil {
			return fmt.Errorf("upload part %d of s3://%s/%s: %w", num, bucket, key, err)
		}
		parts[i] = types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num)}
		return nil
	})
	if err == nil {
		_, err = a.Client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
			Bucket:          aws.String(bucket),
			Key:             aws.String(key),
			UploadId:        created.UploadId,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		})
		if err != nil {
			err = fmt.Errorf("complete multipart upload s3://%s/%s: %w", bucket, key, err)
		}
	}
	if err != nil {
		_, _ = a.Client.AbortMultipartUpload(context.WithoutCancel(ctx), &s3.AbortMultipartUploadInput{
			Bucket:   aws.String(bucket),
			Key:      aws.String(key),
			UploadId: created.UploadId,
		})
	}
	return err
}

// ListedObject is one key of a full (undelimited) listing.
type ListedObject struct {
	Key          string
	Size         int64
	LastModified time.Time
	ETag         string
}

// ListAll lists every key under prefix, sorted by key.
func (a *S3Admin) ListAll(ctx context.Context, bucket, prefix string) ([]ListedObject, error) {
	var out []ListedObject
	p := s3.NewListObjectsV2Paginator(a.Client, &s3.ListObjectsV2Input{
		Bucket: aws.String(bucket),
		Prefix: aws.String(prefix),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list s3://%s/%s: %w", bucket, prefix, err)
		}
		for _, o := range page.Contents {
			out = append(out, ListedObject{
				Key:          aws.ToString(o.Key),
				Size:         aws.ToInt64(o.Size),
				LastModified: aws.ToTime(o.LastModified),
				ETag:         aws.ToString(o.ETag),
			})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// GetBytes reads the whole object bucket/key.
func (a *S3Admin) GetBytes(ctx context.Context, bucket, key string) ([]byte, error) {
	out, err := a.Client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		return nil, fmt.Errorf("get s3://%s/%s: %w", bucket, key, err)
	}
	defer out.Body.Close()
	return io.ReadAll(out.Body)
}

// forEachParallel calls fn(ctx, i) for i in [0, n) on at most workers
// goroutines, stops handing out work after the first error and returns it.
func forEachParallel(ctx context.Context, n, workers int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	workers = max(1, min(workers, n))
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(ctx, i); err != nil {
					cancel(err)
				}
			}
		}()
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}
