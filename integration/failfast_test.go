package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/cmd/bgbfs/mountinfo"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// endpointArgs are the flags that point bgbfs at an S3 endpoint.
func endpointArgs(endpoint string) []string {
	return []string{"--endpoint-url", endpoint, "--force-path-style", "--region", "us-east-1"}
}

// addedMounts are the mount IDs in now that were not in before. Mounts
// that went are not counted: another test run on the machine may unmount.
func addedMounts(now, before []string) []string {
	var out []string
	for _, id := range now {
		if !slices.Contains(before, id) {
			out = append(out, id)
		}
	}
	return out
}

// bgbfsMounts lists the IDs of all fuse.bgbfs mounts.
func bgbfsMounts(t testing.TB) []string {
	t.Helper()
	all, err := mountinfo.Read()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range all {
		if m.FSType == testbed.FSType {
			ids = append(ids, m.ID)
		}
	}
	return ids
}

// TestFailFast runs `bgbfs mount` in ways that cannot work and checks each
// fails within 15 s with a non-zero exit, exactly one stderr line
// "bgbfs: ..." naming the cause, and nothing mounted.
func TestFailFast(t *testing.T) {
	srv := env.server(t)
	pol := env.policyBucket(t)
	closedPort, err := testbed.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	good := "s3://" + pol.Bucket + "/public/"
	root := rootCreds(srv)
	// An endpoint that accepts connections and never answers.
	silent := newProxy(t, srv.Endpoint)
	silent.SetSilent(true)
	wrong := &testbed.Creds{AccessKey: srv.AccessKey, SecretKey: "wrong-" + srv.SecretKey}
	ep := endpointArgs(srv.Endpoint)

	emptyDir := func(t *testing.T) string { return newMountpoint(t) }
	cases := []struct {
		name       string
		mountpoint func(t *testing.T) string
		args       func(mp string) []string // after the binary name
		creds      *testbed.Creds
		keywords   []string // the line must name one of these (case-insensitive)
	}{
		{
			name:       "endpoint unreachable",
			mountpoint: emptyDir,
			args: func(mp string) []string {
				return slices.Concat([]string{"mount"}, endpointArgs(fmt.Sprintf("http://127.0.0.1:%d", closedPort)), []string{good, mp})
			},
			creds:    root,
			keywords: []string{"endpoint"},
		},
		{
			name:       "endpoint silent",
			mountpoint: emptyDir,
			args: func(mp string) []string {
				return slices.Concat([]string{"mount"}, endpointArgs(silent.URL), []string{good, mp})
			},
			creds:    root,
			keywords: []string{"endpoint"},
		},
		{
			name:       "credentials rejected",
			mountpoint: emptyDir,
			args:       func(mp string) []string { return slices.Concat([]string{"mount"}, ep, []string{good, mp}) },
			creds:      wrong,
			keywords:   []string{"credential"},
		},
		{
			name:       "bucket missing",
			mountpoint: emptyDir,
			args: func(mp string) []string {
				return slices.Concat([]string{"mount"}, ep, []string{"s3://bgbfs-no-such-bucket/", mp})
			},
			creds:    root,
			keywords: []string{"bucket"},
		},
		{
			name:       "prefix unreadable anonymously",
			mountpoint: emptyDir,
			args: func(mp string) []string {
				return slices.Concat([]string{"mount"}, ep, []string{"--no-sign-request", "s3://" + pol.Bucket + "/private/", mp})
			},
			keywords: []string{"prefix", "access", "denied", "permission"},
		},
		{
			name:       "mountpoint missing",
			mountpoint: func(t *testing.T) string { return filepath.Join(t.TempDir(), "does-not-exist") },
			args:       func(mp string) []string { return slices.Concat([]string{"mount"}, ep, []string{good, mp}) },
			creds:      root,
			keywords:   []string{"mountpoint", "mount point"},
		},
		{
			name: "mountpoint is a regular file",
			mountpoint: func(t *testing.T) string {
				p := filepath.Join(t.TempDir(), "file")
				if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
					t.Fatal(err)
				}
				return p
			},
			args:     func(mp string) []string { return slices.Concat([]string{"mount"}, ep, []string{good, mp}) },
			creds:    root,
			keywords: []string{"mountpoint", "mount point"},
		},
		{
			name: "mountpoint already mounted",
			mountpoint: func(t *testing.T) string {
				first := mount(t, mountSpec{Source: good, Endpoint: srv.Endpoint, Creds: root})
				return first.Mountpoint
			},
			args:     func(mp string) []string { return slices.Concat([]string{"mount"}, ep, []string{good, mp}) },
			creds:    root,
			keywords: []string{"mountpoint", "mount point", "already mounted"},
		},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			mp := c.mountpoint(t)
			before, _ := mountinfo.At(mp)
			mountsBefore := bgbfsMounts(t)
			res := testbed.Run(env.bgbfs, c.args(mp), testbed.CleanEnv(c.creds), 2*failFastLimit)
			t.Cleanup(func() {
				// If bgbfs wrongly mounted, take it down so the rest can run.
				if after, _ := mountinfo.At(mp); len(after) > len(before) {
					_ = testbed.ForceUnmount(mp)
				}
			})
			t.Logf("bgbfs %s: exit %d after %v; stderr: %q", strings.Join(c.args(mp), " "), res.ExitCode, res.Elapsed.Round(time.Millisecond), res.Stderr)
			if res.ExitCode == 0 {
				t.Errorf("exit status 0, want non-zero")
			}
			if res.TimedOut || res.Elapsed >= failFastLimit {
				t.Errorf("took %v (timed out: %v), want under %v", res.Elapsed, res.TimedOut, failFastLimit)
			}
			if res.LeftBehind {
				t.Errorf("processes of the command were still running after it exited")
			}
			lines := res.StderrLines()
			if len(lines) != 1 {
				t.Errorf("stderr has %d lines, want exactly 1:\n%s", len(lines), res.Stderr)
			}
			if len(lines) > 0 {
				line := lines[0]
				if !strings.HasPrefix(line, "bgbfs: ") {
					t.Errorf("stderr line %q does not start with %q", line, "bgbfs: ")
				}
				lower := strings.ToLower(line)
				if !slices.ContainsFunc(c.keywords, func(k string) bool { return strings.Contains(lower, k) }) {
					t.Errorf("stderr line %q names none of %q", line, c.keywords)
				}
			}
			after, _ := mountinfo.At(mp)
			if len(after) != len(before) {
				t.Errorf("mounts on %s went from %d to %d", mp, len(before), len(after))
			}
			if added := addedMounts(bgbfsMounts(t), mountsBefore); len(added) > 0 {
				t.Errorf("fuse.bgbfs mounts %v appeared (before: %v)", added, mountsBefore)
			}
			if c.name == "mountpoint already mounted" {
				// The first mount is untouched.
				b, err := os.ReadFile(filepath.Join(mp, "readme.txt"))
				if err != nil || !bytes.Equal(b, pol.Objects["public/readme.txt"]) {
					t.Errorf("the first mount no longer serves readme.txt: %v", err)
				}
			}
		})
	}
}

// TestPolicyAnonymous checks the other half of "prefix unreadable": MinIO
// honours the bucket policy (anonymous list/get on public/ only), and
// bgbfs --no-sign-request mounts and reads public/.
func TestPolicyAnonymous(t *testing.T) {
	srv := env.server(t)
	pol := env.policyBucket(t)
	ctx := context.Background()
	anon := testbed.NewS3Admin(srv.Endpoint, "", "")

	list := func(prefix string) error {
		_, err := anon.Client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
			Bucket: aws.String(pol.Bucket), Prefix: aws.String(prefix), Delimiter: aws.String("/"),
		})
		return err
	}
	get := func(key string) error {
		_, err := anon.GetBytes(ctx, pol.Bucket, key)
		return err
	}
	denied := func(err error) bool {
		var ae smithy.APIError
		return errors.As(err, &ae) && ae.ErrorCode() == "AccessDenied"
	}
	if err := list("public/"); err != nil {
		t.Fatalf("test bed: anonymous list of public/ should be allowed: %v", err)
	}
	if err := get("public/readme.txt"); err != nil {
		t.Fatalf("test bed: anonymous get of public/readme.txt should be allowed: %v", err)
	}
	if err := list("private/"); !denied(err) {
		t.Fatalf("test bed: anonymous list of private/ should be AccessDenied, got %v", err)
	}
	if err := get("private/secret.txt"); !denied(err) {
		t.Fatalf("test bed: anonymous get of private/secret.txt should be AccessDenied, got %v", err)
	}

	m := mount(t, mountSpec{
		Source:   "s3://" + pol.Bucket + "/public/",
		Endpoint: srv.Endpoint,
		Args:     []string{"--no-sign-request"},
	})
	for key, want := range pol.Objects {
		rel, ok := strings.CutPrefix(key, "public/")
		if !ok {
			continue
		}
		got, err := os.ReadFile(filepath.Join(m.Mountpoint, filepath.FromSlash(rel)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s through the anonymous mount: %d bytes, %v", rel, len(got), err)
		}
	}
}
