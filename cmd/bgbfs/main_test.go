package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestUsageErrorsAreOneLine: a mistake on the command line exits 2 with
// one line on stderr that starts with "bgbfs: " and names the mistake,
// before anything touches the network (the endpoint given is closed).
func TestUsageErrorsAreOneLine(t *testing.T) {
	const ep = "http://127.0.0.1:9" // discard port: nothing answers
	for _, tt := range []struct {
		name    string
		args    []string
		keyword string
	}{
		{"file-mode 999", []string{"mount", "--endpoint-url", ep, "--file-mode", "999", "s3://bucket/", "/mnt"}, "file-mode"},
		{"metadata-ttl soon", []string{"mount", "--endpoint-url", ep, "--metadata-ttl", "soon", "s3://bucket/", "/mnt"}, "metadata-ttl"},
		{"uid -5", []string{"mount", "--endpoint-url", ep, "--uid", "-5", "s3://bucket/", "/mnt"}, "uid"},
		{"unknown flag", []string{"mount", "--endpoint-url", ep, "--no-such-flag", "s3://bucket/", "/mnt"}, "flag"},
		{"bad URL", []string{"mount", "--endpoint-url", ep, "http://bucket", "/mnt"}, "s3://"},
		{"npz members with too little memory for an index", []string{"mount", "--endpoint-url", ep, "--npz-members", "--npz-index-size", "64KiB", "s3://bucket/", "/mnt"}, "--npz-index-size 64 kib cannot hold one member index"},
		{"no arguments", []string{"mount"}, "argument"},
		{"mountpoint argument missing", []string{"mount", "--endpoint-url", ep, "s3://bucket/"}, "argument"},
		{"index without a cache dir", []string{"index", "--endpoint-url", ep, "s3://bucket/"}, "--cache-dir"},
		{"unknown command", []string{"mounty"}, "unknown command"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr)
			lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
			switch {
			case code != 2:
				t.Errorf("exit %d, want 2; stderr %q", code, stderr.String())
			case len(lines) != 1 || !strings.HasPrefix(lines[0], "bgbfs: "):
				t.Errorf("stderr %q, want one line starting with \"bgbfs: \"", stderr.String())
			case !strings.Contains(strings.ToLower(lines[0]), tt.keyword):
				t.Errorf("stderr line %q does not name %q", lines[0], tt.keyword)
			}
		})
	}
}
