package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// The main test bucket.
const (
	dataBucket = "bgbfs-e2e"
	npzPrefix  = "cache/tusz/" // what the trainer mounts at /cache
	bigKey     = "big/large.bin"
	manyDir    = "many"
	manyCount  = 5000
	// bigSize is past 4 GiB by a few MiB and an odd number of bytes.
	bigSize = testbed.FourGiB + 3<<20 + 4321
)

// npzSpec is the generated window cache under npzPrefix.
func npzSpec() testbed.NPZSpec {
	return testbed.NPZSpec{Train: 6, Dev: 3, Windows: 3, Seed: 20250919}
}

// sourceObject is one object of the test bucket and its true content.
type sourceObject struct {
	Key     string
	Data    []byte                 // content, unless Pattern is set
	Pattern *testbed.PatternObject // the >4 GiB object
	hash    string
}

func (o *sourceObject) Size() int64 {
	if o.Pattern != nil {
		return o.Pattern.Size()
	}
	return int64(len(o.Data))
}

func (o *sourceObject) ReaderAt() io.ReaderAt {
	if o.Pattern != nil {
		return o.Pattern
	}
	return bytes.NewReader(o.Data)
}

// SHA256 of the content, hex.
func (o *sourceObject) SHA256() string { return o.hash }

// IsMarker reports a zero-byte "name/" directory marker.
func (o *sourceObject) IsMarker() bool { return strings.HasSuffix(o.Key, "/") }

// dataset is the content of the main bucket, as uploaded.
type dataset struct {
	Bucket   string
	LocalNPZ string                   // local copy of npzPrefix: train/ and dev/
	Objects  map[string]*sourceObject // by key, markers included
}

// Keys returns every key, sorted.
func (d *dataset) Keys() []string {
	keys := make([]string, 0, len(d.Objects))
	for k := range d.Objects {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Big is the >4 GiB object.
func (d *dataset) Big() *sourceObject { return d.Objects[bigKey] }

// seededBytes is n deterministic pseudo-random bytes for a name.
func seededBytes(name string, n int) []byte {
	h := sha256.Sum256([]byte(name))
	var seed [32]byte
	copy(seed[:], h[:])
	r := rand.NewChaCha8(seed)
	b := make([]byte, n)
	_, _ = r.Read(b)
	return b
}

// buildDataset generates the npz cache with gen_npz.py, assembles the rest
// of the layout and uploads all of it to a fresh bucket.
func buildDataset(t testing.TB, repo, dir string, srv *testbed.MinIO) (*dataset, error) {
	start := time.Now()
	d := &dataset{Bucket: dataBucket, LocalNPZ: filepath.Join(dir, "tusz"), Objects: map[string]*sourceObject{}}
	if err := testbed.GenNPZ(repo, d.LocalNPZ, npzSpec()); err != nil {
		return nil, err
	}
	add := func(o *sourceObject) { d.Objects[o.Key] = o }
	err := filepath.WalkDir(d.LocalNPZ, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(d.LocalNPZ, p)
		add(&sourceObject{Key: npzPrefix + filepath.ToSlash(rel), Data: b})
		return nil
	})
	if err != nil {
		return nil, err
	}
	add(&sourceObject{Key: npzPrefix + ".cache_metadata.json", Data: []byte(`{"version": 1, "source": "tusz"}` + "\n")})
	add(&sourceObject{Key: "misc/hello.txt", Data: []byte("hello, bgbfs\n")})
	add(&sourceObject{Key: "misc/empty.bin", Data: []byte{}})
	add(&sourceObject{Key: "misc/deep/a/b/c/empty", Data: []byte{}})
	add(&sourceObject{Key: "misc/emptydir/", Data: []byte{}}) // marker, nothing under it
	add(&sourceObject{Key: "misc/marked/", Data: []byte{}})   // marker with children
	add(&sourceObject{Key: "misc/marked/child.txt", Data: []byte("child\n")})
	add(&sourceObject{Key: "misc/odd names/space and ümlaut.txt", Data: []byte("spaces\n")})
	add(&sourceObject{Key: "misc/odd names/plus+sign%percent.txt", Data: []byte("plus\n")})
	for _, n := range []int{1, 4095, 4096, 4097, 128<<10 + 1, 1<<20 + 1, 5<<20 + 7} {
		k := fmt.Sprintf("misc/sizes/size-%d", n)
		add(&sourceObject{Key: k, Data: seededBytes(k, n)})
	}
	for i := range manyCount {
		k := fmt.Sprintf("%s/file-%05d.dat", manyDir, i)
		add(&sourceObject{Key: k, Data: seededBytes(k, 16+i%257)})
	}
	big := testbed.NewPatternObject(bigSize)
	add(&sourceObject{Key: bigKey, Pattern: big})

	// Hash the small ones here, the big one while it uploads.
	var small []testbed.Object
	for _, o := range d.Objects {
		if o.Pattern == nil {
			sum := sha256.Sum256(o.Data)
			o.hash = hex.EncodeToString(sum[:])
			small = append(small, testbed.Object{Key: o.Key, Data: o.Data})
		}
	}
	hashDone := make(chan string, 1)
	go func() { hashDone <- big.SHA256() }()

	ctx := context.Background()
	admin := srv.Admin()
	if err := admin.CreateBucket(ctx, d.Bucket); err != nil {
		return nil, err
	}
	if err := admin.PutMany(ctx, d.Bucket, small, 16); err != nil {
		return nil, err
	}
	t.Logf("dataset: %d small objects generated and uploaded in %v", len(small), time.Since(start).Round(time.Millisecond))
	bigStart := time.Now()
	if err := admin.PutLarge(ctx, d.Bucket, bigKey, big, big.Size(), 64<<20, 3); err != nil {
		return nil, err
	}
	d.Objects[bigKey].hash = <-hashDone
	t.Logf("dataset: %s (%d bytes) uploaded in %v", bigKey, big.Size(), time.Since(bigStart).Round(time.Millisecond))
	return d, nil
}

// policyBucket is a bucket whose policy lets anonymous users list and read
// public/ and nothing else.
type policyBucket struct {
	Bucket  string
	Objects map[string][]byte
}

const policyBucketName = "bgbfs-policy"

func buildPolicyBucket(srv *testbed.MinIO) (*policyBucket, error) {
	b := &policyBucket{Bucket: policyBucketName, Objects: map[string][]byte{
		"public/readme.txt":   []byte("anyone may read this\n"),
		"public/sub/data.bin": seededBytes("public/sub/data.bin", 3000),
		"private/secret.txt":  []byte("members only\n"),
	}}
	ctx := context.Background()
	admin := srv.Admin()
	if err := admin.CreateBucket(ctx, b.Bucket); err != nil {
		return nil, err
	}
	for k, v := range b.Objects {
		if err := admin.PutBytes(ctx, b.Bucket, k, v); err != nil {
			return nil, err
		}
	}
	policy := fmt.Sprintf(`{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:ListBucket"],
     "Resource": ["arn:aws:s3:::%[1]s"],
     "Condition": {"StringLike": {"s3:prefix": ["public/*", "public/"]}}},
    {"Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"],
     "Resource": ["arn:aws:s3:::%[1]s/public/*"]}
  ]
}`, b.Bucket)
	if err := admin.PutBucketPolicy(ctx, b.Bucket, policy); err != nil {
		return nil, err
	}
	return b, nil
}

// parentDirs returns every proper ancestor directory of a key's path
// ("a/b/c" gives "a" and "a/b").
func parentDirs(p string) []string {
	var out []string
	for dir := path.Dir(p); dir != "." && dir != "/"; dir = path.Dir(dir) {
		out = append(out, dir)
	}
	return out
}
