package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// The flags of the silent-S3 test: a short request timeout and read
// deadline keep it quick, and attempts enough that the deadline, not the
// attempts, ends a read.
const (
	silentRequestTimeout = time.Second
	silentReadTimeout    = 4 * time.Second
	silentMaxAttempts    = 10
	// silentSlack is what a loaded machine may add to a bound: these are
	// correctness bounds, not speed targets.
	silentSlack = 2 * time.Second
)

// stallLogLine is the message the daemon logs when a request first stalls.
const stallLogLine = `msg="S3 request stalled"`

// TestSilentS3 puts a proxy that accepts requests and answers nothing (or
// sends headers and part of a body, then nothing) between bgbfs and MinIO,
// and checks for a GET and for a LIST that: the reader gets EIO within the
// documented deadline (--read-timeout; a read the kernel makes again after
// its read-ahead failed, within it plus 1 s), not after every attempt;
// the daemon logs a line naming the operation and the key within one
// request timeout of the stall, not at the end; and once the proxy answers
// again, the same open file and the same directory read right, without a
// remount.
func TestSilentS3(t *testing.T) {
	srv := env.server(t)
	bucket := newBucket(t, srv, "bgbfs-silent")
	const fileSize = 8 << 20
	var objs []testbed.Object
	data := map[string][]byte{}
	for i := range 2 {
		k := fmt.Sprintf("data/file-%d.bin", i)
		data[k] = seededBytes(k, fileSize)
		objs = append(objs, testbed.Object{Key: k, Data: data[k]})
	}
	listDirs := []string{"listed-0", "listed-1"}
	for _, d := range listDirs {
		objs = append(objs, testbed.Object{Key: d + "/a.bin", Data: []byte("a")}, testbed.Object{Key: d + "/b.bin", Data: []byte("b")})
	}
	if err := srv.Admin().PutMany(context.Background(), bucket, objs, 4); err != nil {
		t.Fatal(err)
	}
	proxy, faults := faultProxy(t, srv.Endpoint, testbed.FaultPlan{})
	m := mount(t, mountSpec{
		Source:   "s3://" + bucket + "/",
		Endpoint: proxy.URL,
		Creds:    rootCreds(srv),
		Args: []string{
			"--request-timeout", silentRequestTimeout.String(), "--read-timeout", silentReadTimeout.String(),
			"--max-attempts", fmt.Sprint(silentMaxAttempts), "--metadata-ttl", "10m",
		},
	})
	// The proxy's "proxy error" lines would flood the test's output.
	log.SetOutput(io.Discard)
	t.Cleanup(func() { log.SetOutput(os.Stderr) })

	silent := func(on bool) { proxy.SetSilent(on) }
	stallBody := func(op testbed.Op) func(bool) {
		return func(on bool) {
			if !on {
				faults.SetRate(0)
				return
			}
			faults.SetPlan(testbed.FaultPlan{
				Seed: 1, Rate: 1, Ops: []testbed.Op{op},
				Kinds: map[testbed.FaultKind]int{testbed.FaultStallBody: 1},
				Stall: time.Hour, // until bgbfs gives up on it
			})
		}
	}
	// A read that waits for S3: --read-timeout, and 1 s more when the
	// kernel asks again after its read-ahead of the same pages failed.
	readBound := silentReadTimeout + time.Second + silentSlack
	logBound := silentRequestTimeout + silentSlack
	reads := []struct {
		name  string
		key   string
		fault func(on bool)
	}{
		{"GET with no answer", "data/file-0.bin", silent},
		{"GET whose body stalls", "data/file-1.bin", stallBody(testbed.OpGetObject)},
	}
	for _, c := range reads {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			f, err := os.Open(filepath.Join(m.Mountpoint, filepath.FromSlash(c.key)))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			const off, n = 3 << 20, 1 << 20
			logs := len(m.Stderr())
			c.fault(true)
			start := time.Now()
			logged := watchLog(m, logs, func(line string) bool {
				return strings.Contains(line, stallLogLine) && strings.Contains(line, "op=GetObject") && strings.Contains(line, "key="+c.key)
			})
			_, err = f.ReadAt(make([]byte, n), off)
			took := time.Since(start)
			loggedAt := logged()
			c.fault(false)
			t.Logf("pread of 1 MiB: %v after %v; stall logged after %v", errnoOf(err), took.Round(time.Millisecond), loggedAt.Round(time.Millisecond))
			if !errors.Is(err, syscall.EIO) {
				t.Errorf("pread while S3 is silent: %v, want EIO", errnoOf(err))
			}
			if took > readBound {
				t.Errorf("pread while S3 is silent failed after %v, want at most %v (--read-timeout %v)", took.Round(time.Millisecond), readBound, silentReadTimeout)
			}
			if loggedAt < 0 || loggedAt > logBound {
				t.Errorf("no %s line for GetObject of %s within %v of the read (after %v)", stallLogLine, c.key, logBound, loggedAt)
			}
			// The same handle reads right once S3 answers.
			if msg := checkPread(f, bytes.NewReader(data[c.key]), fileSize, off, n); msg != "" {
				t.Errorf("pread on the same handle after S3 answers again: %s", msg)
			}
		})
	}

	lists := []struct {
		name  string
		dir   string
		fault func(on bool)
		// access needs the directory's listing: a lookup, or a readdir.
		access func(dir string) error
	}{
		{"LIST with no answer (lookup)", listDirs[0], silent, func(dir string) error {
			_, err := os.Stat(filepath.Join(dir, "a.bin"))
			return err
		}},
		{"LIST whose body stalls (readdir)", listDirs[1], stallBody(testbed.OpListObjectsV2), func(dir string) error {
			_, err := dirNames(dir)
			return err
		}},
	}
	for _, c := range lists {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			dir := filepath.Join(m.Mountpoint, c.dir)
			logs := len(m.Stderr())
			c.fault(true)
			start := time.Now()
			logged := watchLog(m, logs, func(line string) bool {
				return strings.Contains(line, stallLogLine) && strings.Contains(line, "op=ListObjectsV2") && strings.Contains(line, "key="+c.dir+"/")
			})
			err := c.access(dir)
			took := time.Since(start)
			loggedAt := logged()
			c.fault(false)
			t.Logf("first access to %s/: %v after %v; stall logged after %v", c.dir, errnoOf(err), took.Round(time.Millisecond), loggedAt.Round(time.Millisecond))
			if !errors.Is(err, syscall.EIO) {
				t.Errorf("first access to a directory while S3 is silent: %v, want EIO", errnoOf(err))
			}
			// A listing page has --read-timeout.
			if bound := silentReadTimeout + silentSlack; took > bound {
				t.Errorf("first access to a directory while S3 is silent failed after %v, want at most %v", took.Round(time.Millisecond), bound)
			}
			if loggedAt < 0 || loggedAt > logBound {
				t.Errorf("no %s line for ListObjectsV2 of %s/ within %v (after %v)", stallLogLine, c.dir, logBound, loggedAt)
			}
			if got, err := dirNames(dir); err != nil || !slices.Equal(got, []string{"a.bin", "b.bin"}) {
				t.Errorf("ls %s/ after S3 answers again: %q, %v", c.dir, got, errnoOf(err))
			}
		})
	}
	if !m.Alive() {
		t.Fatal("bgbfs died")
	}
}

// watchLog polls the daemon's log from byte from on, and returns a function
// that stops polling and says how long after the call a line matching
// match appeared (negative: none did).
func watchLog(m *testbed.Mounted, from int, match func(line string) bool) func() time.Duration {
	start := time.Now()
	stop := make(chan struct{})
	found := make(chan time.Duration, 1)
	go func() {
		defer close(found)
		for {
			if s := m.Stderr(); len(s) > from {
				if slices.ContainsFunc(strings.Split(s[from:], "\n"), match) {
					found <- time.Since(start)
					return
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() time.Duration {
		close(stop)
		if d, ok := <-found; ok {
			return d
		}
		// Logged since the last look.
		if s := m.Stderr(); len(s) > from && slices.ContainsFunc(strings.Split(s[from:], "\n"), match) {
			return time.Since(start)
		}
		return -1
	}
}
