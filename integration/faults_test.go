package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// TestFaultInjector checks the fault injector itself with a plain S3
// client (one attempt per request), so that the tests built on it inject
// what they claim.
func TestFaultInjector(t *testing.T) {
	srv := env.server(t)
	bucket := newBucket(t, srv, "bgbfs-faultcheck")
	data := seededBytes("faultcheck", 1<<20+17)
	ctx := context.Background()
	if err := srv.Admin().PutBytes(ctx, bucket, "obj", data); err != nil {
		t.Fatal(err)
	}
	proxy, faults := faultProxy(t, srv.Endpoint, testbed.FaultPlan{})
	client := testbed.NewS3Admin(proxy.URL, srv.AccessKey, srv.SecretKey).Client
	once := func(o *s3.Options) { o.RetryMaxAttempts = 1 }
	get := func(key string) ([]byte, time.Duration, error) {
		start := time.Now()
		out, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}, once)
		if err != nil {
			return nil, time.Since(start), err
		}
		defer out.Body.Close()
		b, err := io.ReadAll(out.Body)
		return b, time.Since(start), err
	}
	apiCode := func(err error) string {
		var ae smithy.APIError
		if errors.As(err, &ae) {
			return ae.ErrorCode()
		}
		return ""
	}
	const pause = 300 * time.Millisecond
	only := func(k testbed.FaultKind) testbed.FaultPlan {
		return testbed.FaultPlan{Seed: 1, Rate: 1, Kinds: map[testbed.FaultKind]int{k: 1}, Stall: pause, Latency: pause}
	}
	cases := []struct {
		kind  testbed.FaultKind
		check func(b []byte, took time.Duration, err error) string
	}{
		{testbed.FaultInternalError, func(b []byte, _ time.Duration, err error) string {
			if apiCode(err) != "InternalError" {
				return fmt.Sprintf("error %v, want InternalError", err)
			}
			return ""
		}},
		{testbed.FaultSlowDown, func(b []byte, _ time.Duration, err error) string {
			if apiCode(err) != "SlowDown" {
				return fmt.Sprintf("error %v, want SlowDown", err)
			}
			return ""
		}},
		{testbed.FaultTruncate, func(b []byte, _ time.Duration, err error) string {
			if !errors.Is(err, io.ErrUnexpectedEOF) || len(b) != len(data)/2 || !bytes.Equal(b, data[:len(b)]) {
				return fmt.Sprintf("%d bytes, %v; want the first %d bytes and unexpected EOF", len(b), err, len(data)/2)
			}
			return ""
		}},
		{testbed.FaultReset, func(b []byte, _ time.Duration, err error) string {
			if err == nil || len(b) >= len(data) || !bytes.Equal(b, data[:len(b)]) {
				return fmt.Sprintf("%d bytes, %v; want a correct prefix and an error", len(b), err)
			}
			return ""
		}},
		{testbed.FaultStallBody, func(b []byte, took time.Duration, err error) string {
			if err == nil || len(b) >= len(data) || took < pause || !bytes.Equal(b, data[:len(b)]) {
				return fmt.Sprintf("%d bytes, %v after %v; want a correct prefix, then an error after %v", len(b), err, took, pause)
			}
			return ""
		}},
		{testbed.FaultHold, func(b []byte, took time.Duration, err error) string {
			if err == nil || took < pause {
				return fmt.Sprintf("%v after %v; want an error after %v", err, took, pause)
			}
			return ""
		}},
		{testbed.FaultLatency, func(b []byte, took time.Duration, err error) string {
			if err != nil || !bytes.Equal(b, data) || took < pause {
				return fmt.Sprintf("%d bytes, %v after %v; want the object after %v", len(b), err, took, pause)
			}
			return ""
		}},
	}
	for _, c := range cases {
		faults.SetPlan(only(c.kind))
		before := faults.Injected()[c.kind]
		proxy.Reset()
		b, took, err := get("obj")
		if msg := c.check(b, took, err); msg != "" {
			t.Errorf("%s: %s", c.kind, msg)
		}
		if got := faults.Injected()[c.kind] - before; got != 1 {
			t.Errorf("%s: counted %d injections, want 1", c.kind, got)
		}
		if n := proxy.Counts().GetObject; n != 1 {
			t.Errorf("%s: the proxy saw %d GetObject, want 1", c.kind, n)
		}
	}

	// Body faults pass answers without a body through: a missing key is
	// still NoSuchKey, and nothing is counted.
	faults.SetPlan(only(testbed.FaultTruncate))
	before := faults.Total()
	if _, _, err := get("missing"); apiCode(err) != "NoSuchKey" {
		t.Errorf("GET of a missing key through a truncating plan: %v, want NoSuchKey", err)
	}
	if faults.Total() != before {
		t.Errorf("a 404 was counted as a truncation")
	}
	// Listings are faulted too; HEAD is not in the default plan.
	faults.SetPlan(only(testbed.FaultInternalError))
	if _, err := client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)}, once); apiCode(err) != "InternalError" {
		t.Errorf("ListObjectsV2 with every request faulted: %v, want InternalError", err)
	}
	if _, err := client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("obj")}, once); err != nil {
		t.Errorf("HeadObject is not in the plan's operations but failed: %v", err)
	}

	// The same seed gives the same sequence of fates.
	sequence := func() []string {
		faults.SetPlan(testbed.FaultPlan{Seed: 7, Rate: 0.5, Kinds: map[testbed.FaultKind]int{testbed.FaultInternalError: 1, testbed.FaultSlowDown: 1}})
		var out []string
		for range 40 {
			_, _, err := get("obj")
			out = append(out, apiCode(err))
		}
		return out
	}
	first, second := sequence(), sequence()
	if !slices.Equal(first, second) {
		t.Errorf("seed 7 gave two sequences:\n%q\n%q", first, second)
	}
	if ok := slices.Index(first, ""); ok < 0 || slices.Index(first, "InternalError") < 0 || slices.Index(first, "SlowDown") < 0 {
		t.Errorf("rate 0.5 over 40 requests should give successes and both errors: %q", first)
	}
	t.Log(faults.Summary())
}

// faultMix is the mix of faults of the 20% test: mostly error answers,
// then broken bodies, and a few stalls (each costs a request timeout).
func faultMix() map[testbed.FaultKind]int {
	return map[testbed.FaultKind]int{
		testbed.FaultInternalError: 5,
		testbed.FaultSlowDown:      5,
		testbed.FaultReset:         4,
		testbed.FaultTruncate:      4,
		testbed.FaultStallBody:     1,
		testbed.FaultHold:          1,
		testbed.FaultLatency:       1,
	}
}

// TestFaultsReads makes 1,000 random preads over the npz files, the sized
// files and the >4 GiB object while 20% of GetObject and ListObjectsV2
// requests fail (500, 503 SlowDown, reset or truncated bodies, stalls past
// --request-timeout, added latency), with a cache small enough that the
// reads keep going to S3, and directory listings refreshed every second.
// Every read must return exactly the source's bytes and every listing the
// right names.
func TestFaultsReads(t *testing.T) {
	d := env.dataset(t)
	srv := env.server(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	plan := testbed.FaultPlan{
		Seed:  seed,
		Kinds: faultMix(),
		// Each stall costs its reader the 2 s request timeout.
		Max: map[testbed.FaultKind]int{testbed.FaultStallBody: 8, testbed.FaultHold: 6},
		// The client should give up after its 2 s request timeout; a
		// listing does not (see TestListingBodyFaults), so keep this short.
		Stall: 15 * time.Second,
	}
	proxy, faults := faultProxy(t, srv.Endpoint, plan)
	m := mount(t, mountSpec{
		Source:   "s3://" + d.Bucket + "/",
		Endpoint: proxy.URL,
		Creds:    rootCreds(srv),
		Args:     []string{"--cache-size", "32MiB", "--request-timeout", "2s", "--metadata-ttl", "1s"},
	})

	reads := randomReads(rand.New(rand.NewPCG(seed, 0x6661756c7473)), d, 1000)
	files := map[string]*os.File{}
	for _, r := range reads {
		if files[r.obj.Key] == nil {
			f, err := os.Open(filepath.Join(m.Mountpoint, filepath.FromSlash(r.obj.Key)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			files[r.obj.Key] = f
		}
	}
	// The directories the lister keeps reading, and what they hold.
	dirs := map[string][]string{}
	for _, dir := range []string{npzPrefix + "train", npzPrefix + "dev", "misc", "misc/sizes"} {
		dirs[dir] = childNames(d, dir)
	}
	proxy.Reset()
	faults.SetRate(0.2)
	start := time.Now()

	stopLister := make(chan struct{})
	var listErrs []string
	var listings int
	var slowestList time.Duration
	var listerDone sync.WaitGroup
	listerDone.Add(1)
	go func() {
		defer listerDone.Done()
		for {
			select {
			case <-stopLister:
				return
			case <-time.After(300 * time.Millisecond):
			}
			for dir, want := range dirs {
				t0 := time.Now()
				got, err := dirNames(filepath.Join(m.Mountpoint, filepath.FromSlash(dir)))
				slowestList = max(slowestList, time.Since(t0))
				listings++
				if err != nil || !slices.Equal(got, want) {
					listErrs = append(listErrs, fmt.Sprintf("%s after %v: %d names %v, want %d", dir, time.Since(start).Round(time.Millisecond), len(got), errnoOf(err), len(want)))
				}
			}
		}
	}()

	stop := watchdog(t, m, 4*time.Minute, "1,000 reads under faults")
	var mu sync.Mutex
	var failures []string
	var bytesRead int64
	parallel(len(reads), 4, func(i int) {
		r := reads[i]
		msg := checkPread(files[r.obj.Key], r.obj.ReaderAt(), r.obj.Size(), r.off, r.n)
		mu.Lock()
		defer mu.Unlock()
		bytesRead += int64(max(0, min(int64(r.n), r.obj.Size()-r.off)))
		if msg != "" {
			failures = append(failures, fmt.Sprintf("pread(%s, off=%d, len=%d) [%s] at %v: %s", r.obj.Key, r.off, r.n, r.why, time.Since(start).Round(time.Millisecond), msg))
		}
	})
	stop()
	elapsed := time.Since(start)
	close(stopLister)
	listerDone.Wait()
	faults.SetRate(0)
	counts, _ := proxy.Take()

	for i, f := range failures {
		if i == 20 {
			t.Errorf("... %d more failures", len(failures)-20)
			break
		}
		t.Error(f)
	}
	if len(failures) > 0 {
		t.Errorf("%d of %d reads wrong under faults (seed %d)", len(failures), len(reads), seed)
	}
	for i, e := range listErrs {
		if i == 10 {
			t.Errorf("... %d more listing failures", len(listErrs)-10)
			break
		}
		t.Errorf("listing under faults: %s", e)
	}

	injected := faults.Injected()
	byOp := map[testbed.Op]int{}
	for _, f := range faults.Log() {
		byOp[f.Op]++
	}
	t.Logf("%d reads (%d bytes) in %v and %d listings (slowest %v); proxy saw %v",
		len(reads), bytesRead, elapsed.Round(time.Millisecond), listings, slowestList.Round(time.Millisecond), counts)
	listKinds := map[testbed.FaultKind]int{}
	for _, f := range faults.Log() {
		if f.Op == testbed.OpListObjectsV2 {
			listKinds[f.Kind]++
		}
	}
	t.Logf("listing faults by kind: %v", listKinds)
	t.Logf("injected: %s; by operation: GetObject=%d ListObjectsV2=%d", faults.Summary(), byOp[testbed.OpGetObject], byOp[testbed.OpListObjectsV2])
	stderr := m.Stderr()
	t.Logf("daemon log: %d lines at ERROR, %d at WARN, of which %d 'listing failed; serving the previous listing'",
		strings.Count(stderr, "level=ERROR"), strings.Count(stderr, "level=WARN"), strings.Count(stderr, "listing failed; serving the previous listing"))
	for i, line := range strings.Split(stderr, "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			t.Logf("daemon log line %d: %s", i+1, line)
		}
	}

	// The faults really happened, of every kind.
	if byOp[testbed.OpGetObject] < 100 {
		t.Errorf("only %d GetObject faults injected; the test needs at least 100", byOp[testbed.OpGetObject])
	}
	if byOp[testbed.OpListObjectsV2] < 5 {
		t.Errorf("only %d ListObjectsV2 faults injected; the test needs at least 5", byOp[testbed.OpListObjectsV2])
	}
	for k := range faultMix() {
		if injected[k] == 0 {
			t.Errorf("no %s fault was injected", k)
		}
	}
	if !m.Alive() {
		t.Errorf("bgbfs died under faults")
	}
}

// childNames lists the names directly under dir (a slash path relative to
// the bucket root) in the dataset, sorted: files and subdirectories.
func childNames(d *dataset, dir string) []string {
	seen := map[string]bool{}
	for _, k := range d.Keys() {
		rest, ok := strings.CutPrefix(k, dir+"/")
		if !ok || rest == "" {
			continue
		}
		name, _, _ := strings.Cut(rest, "/")
		seen[name] = true
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// sdkRetryWorst is the longest the AWS SDK's standard retryer, as bgbfs
// sets it up (50 ms base delay, 5 s cap, full jitter, no quota), waits
// between attempts at one request that keeps failing with a non-throttling
// error (connection refused, 5xx): the sum over the retries of
// min(50ms·2^i, 5s). For the default 10 attempts that is 16.35 s.
func sdkRetryWorst(attempts int) time.Duration {
	var d time.Duration
	for i := range attempts - 1 {
		d += min(50*time.Millisecond<<i, 5*time.Second)
	}
	return d
}

// Bounds of the outage test, from how a failing read unfolds today: the
// kernel sends a failed read-ahead again as a synchronous read (2 FUSE
// reads per pread), and bgbfs's cache retries a failed block fetch once
// on its own (2 retry cycles per FUSE read). A listing that refreshes may
// wait for a refresh of the root (to look up the directory) and of the
// directory, and the stat that follows for both again: the kernel keeps a
// stale listing's names for 1 ms only.
const (
	cyclesPerFailedPread = 4
	cyclesPerStaleLs     = 4
	outageSlack          = 5 * time.Second
)

// outageFile is one object of the outage test's own server.
type outageFile struct {
	key  string
	data []byte
}

// Reads of the outage test. The reads during the outage are far from what
// was read before, so neither the kernel's nor bgbfs's read-ahead has
// them. The in-order handle read at 1 MiB, and bgbfs read ahead to 3 MiB:
// a read at 4 MiB is still in order (within the reorder window), so bgbfs
// reads ahead from 5 MiB, which fails. The read at 5 MiB that follows
// waits for that read-ahead, so it has failed before S3 is back.
const (
	outageFileSize         = 24 << 20
	outageOff, outageLen   = 16 << 20, 64 << 10
	outageReaders          = 4 // reads in flight per mount while S3 is down
	outageInOrderFile      = 4
	outageBucket           = "outage"
	outageTimeLimit        = 4 * time.Minute
	outageSlowListingAfter = 20 * time.Second
)

var outageInOrderOffs = []int64{4 << 20, 5 << 20}

// outageTest is what the phases of TestOutage share.
type outageTest struct {
	srv       *testbed.MinIO
	proxy     *testbed.CountingProxy
	files     []outageFile
	archive   outageFile
	wantNames []string
	mounts    []*outageMount
	// mu guards the mounts' took and ls, and opened.
	mu     sync.Mutex
	opened []*os.File // closed when the test ends
	start  time.Time  // of the outage
}

// outageMount is one of TestOutage's mounts and what was read through it.
type outageMount struct {
	name     string
	attempts int
	proxy    *testbed.CountingProxy
	m        *testbed.Mounted
	handles  []*os.File
	// inOrder reads file-4 in order into the outage; archive is opened
	// during the outage.
	inOrder, archive *os.File
	took             []time.Duration // of the failed reads
	ls               []time.Duration // of the listings during the outage
}

// TestOutage stops S3 (a MinIO of its own) under three mounts, one with
// --max-attempts 3 --request-timeout 2s and two with the defaults (one of
// them behind a counting proxy), and checks that reads of data not cached
// fail with EIO within a bound (and measures it), that directories listed
// before keep answering with the same entries, that the daemons stay up,
// and that once S3 is back the same open handles read the right bytes
// again, without a remount: at a jump, on from where a read-ahead started
// during the outage failed, and at both ends of an .npz opened during the
// outage (whose head and tail bgbfs fetches at open).
func TestOutage(t *testing.T) {
	o := newOutageTest(t)
	runPhases(t,
		phase{"before the outage", o.openBefore},
		phase{"during the outage", o.during},
		phase{"after S3 came back", o.after},
	)
}

// phase is one step of a scenario, run as a subtest.
type phase struct {
	name string
	run  func(t *testing.T)
}

// runPhases runs the phases of one scenario in order, each a subtest. A
// phase that stops (t.Fatal) stops the scenario, as it would stop one
// test; a phase that only reports errors lets the next run.
func runPhases(t *testing.T, phases ...phase) {
	t.Helper()
	for _, p := range phases {
		completed := false
		t.Run(p.name, func(t *testing.T) {
			p.run(t)
			completed = true
		})
		if !completed {
			t.FailNow()
		}
	}
}

// newOutageTest starts the server, uploads the objects and mounts the
// three mounts; what it makes lives until the test ends.
func newOutageTest(t *testing.T) *outageTest {
	o := &outageTest{srv: ownMinIO(t)}
	ctx := context.Background()
	if err := o.srv.Admin().CreateBucket(ctx, outageBucket); err != nil {
		t.Fatal(err)
	}
	var objs []testbed.Object
	for i := range 6 {
		k := fmt.Sprintf("data/file-%d.bin", i)
		o.files = append(o.files, outageFile{k, seededBytes(k, outageFileSize)})
		objs = append(objs, testbed.Object{Key: k, Data: o.files[i].data})
	}
	// bgbfs takes a file for a zip archive by its name alone: the bytes
	// need not be one.
	o.archive = outageFile{"data/archive.npz", seededBytes("data/archive.npz", 3<<20)}
	objs = append(objs, testbed.Object{Key: "data/sub/x.txt", Data: []byte("x\n")},
		testbed.Object{Key: o.archive.key, Data: o.archive.data})
	if err := o.srv.Admin().PutMany(ctx, outageBucket, objs, 4); err != nil {
		t.Fatal(err)
	}
	o.wantNames = []string{"archive.npz", "file-0.bin", "file-1.bin", "file-2.bin", "file-3.bin", "file-4.bin", "file-5.bin", "sub"}

	o.proxy = newProxy(t, o.srv.Endpoint)
	newMount := func(name string, attempts int, endpoint string, args ...string) *outageMount {
		return &outageMount{name: name, attempts: attempts, m: mount(t, mountSpec{
			Source: "s3://" + outageBucket + "/", Endpoint: endpoint, Creds: rootCreds(o.srv),
			Args: append([]string{"--metadata-ttl", "1s"}, args...),
		})}
	}
	o.mounts = []*outageMount{
		newMount("max-attempts 3, request-timeout 2s", 3, o.srv.Endpoint, "--max-attempts", "3", "--request-timeout", "2s"),
		newMount("defaults", 10, o.srv.Endpoint),
		newMount("defaults, behind a proxy", 10, o.proxy.URL),
	}
	o.mounts[2].proxy = o.proxy
	t.Cleanup(func() {
		o.mu.Lock()
		defer o.mu.Unlock()
		for _, f := range o.opened {
			f.Close()
		}
	})
	// The proxy's "proxy error" lines during the outage would flood the
	// test's output.
	t.Cleanup(func() { log.SetOutput(os.Stderr) })
	return o
}

// open opens key on mt, to be closed when the test ends.
func (o *outageTest) open(mt *outageMount, key string) (*os.File, error) {
	f, err := os.Open(filepath.Join(mt.m.Mountpoint, filepath.FromSlash(key)))
	if err != nil {
		return nil, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.opened = append(o.opened, f)
	return f, nil
}

// openBefore lists data/ on every mount, and opens and reads the handles
// the outage will read.
func (o *outageTest) openBefore(t *testing.T) {
	for _, mt := range o.mounts {
		if got, err := dirNames(filepath.Join(mt.m.Mountpoint, "data")); err != nil || !slices.Equal(got, o.wantNames) {
			t.Fatalf("%s: ls data: %q, %v", mt.name, got, err)
		}
		for i := range outageReaders {
			mt.handles = append(mt.handles, o.openAndRead(t, mt, o.files[i]))
		}
		mt.inOrder = o.openAndRead(t, mt, o.files[outageInOrderFile])
	}
}

// openAndRead opens file on mt and reads a little of it.
func (o *outageTest) openAndRead(t *testing.T, mt *outageMount, file outageFile) *os.File {
	f, err := o.open(mt, file.key)
	if err != nil {
		t.Fatal(err)
	}
	// Not at offset 0: a file read from its start is fetched ahead by
	// whole parts, which would cache all of it.
	if msg := checkPread(f, bytes.NewReader(file.data), outageFileSize, 1<<20, 4096); msg != "" {
		t.Fatalf("%s: reading %s before the outage: %s", mt.name, file.key, msg)
	}
	return f
}

// during stops S3, reads what is not cached on every mount and lists a
// directory listed before meanwhile, then checks how long each took and
// that the daemons are up.
func (o *outageTest) during(t *testing.T) {
	log.SetOutput(io.Discard)
	o.proxy.Reset()
	o.srv.Stop()
	o.start = time.Now()
	readsDone := o.failReads(t)
	listed := o.listDuring(t, readsDone)
	select {
	case <-readsDone:
	case <-time.After(outageTimeLimit):
		t.Fatalf("reads still blocked %v into the outage", time.Since(o.start))
	}
	<-listed
	outage := time.Since(o.start)
	gets, reqs := o.proxy.Take()
	o.checkBounds(t)
	perFile := map[string]int{}
	for _, r := range reqs {
		if r.Op == testbed.OpGetObject {
			perFile[path.Base(r.URI)]++
		}
	}
	preads := len(o.mounts[2].took)
	t.Logf("behind the proxy: %d GetObject attempts for %d failed preads (%.1f each: %v; %d attempts per retry cycle)",
		gets.GetObject, preads, float64(gets.GetObject)/float64(preads), perFile, o.mounts[2].attempts)
	t.Logf("outage lasted %v", outage.Round(time.Millisecond))
}

// failedRead reads f at off during the outage: it must fail with EIO.
func (o *outageTest) failedRead(t *testing.T, mt *outageMount, what string, f *os.File, off int64) {
	t0 := time.Now()
	_, err := f.ReadAt(make([]byte, outageLen), off)
	took := time.Since(t0)
	o.mu.Lock()
	defer o.mu.Unlock()
	mt.took = append(mt.took, took)
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("%s: pread of %s at %d during the outage: %v after %v, want EIO", mt.name, what, off, errnoOf(err), took.Round(time.Millisecond))
	}
}

// failReads starts, on every mount, the reads that must fail: a jump on
// each handle, in order on from where read-ahead failed, and the tail of
// an archive opened now. The channel is closed when all are done.
func (o *outageTest) failReads(t *testing.T) <-chan struct{} {
	var wg sync.WaitGroup
	for _, mt := range o.mounts {
		for i, f := range mt.handles {
			wg.Go(func() { o.failedRead(t, mt, o.files[i].key, f, outageOff) })
		}
		wg.Go(func() {
			for _, off := range outageInOrderOffs {
				o.failedRead(t, mt, o.files[outageInOrderFile].key, mt.inOrder, off)
			}
		})
		wg.Go(func() {
			// Opening needs no request; the tail read, as numpy's
			// first, waits for the tail fetch that open started.
			f, err := o.open(mt, o.archive.key)
			if err != nil {
				t.Errorf("%s: opening %s during the outage: %v", mt.name, o.archive.key, errnoOf(err))
				return
			}
			mt.archive = f
			o.failedRead(t, mt, o.archive.key, f, int64(len(o.archive.data))-outageLen)
		})
	}
	readsDone := make(chan struct{})
	go func() { wg.Wait(); close(readsDone) }()
	return readsDone
}

// listDuring lists, on every mount while the reads go on, a directory
// listed before, past its TTL, and stats a file in it (ls -l): the same
// entries must come back. The channel is closed when all are done.
func (o *outageTest) listDuring(t *testing.T, readsDone <-chan struct{}) <-chan struct{} {
	var wg sync.WaitGroup
	for _, mt := range o.mounts {
		wg.Go(func() {
			for n := 0; time.Since(o.start) < outageTimeLimit; n++ {
				select {
				case <-readsDone:
					if n >= 1 {
						return
					}
				default:
					// A refresh by default takes many seconds: one
					// listing is enough for the slow mounts.
					if n >= 1 && time.Since(o.start) > outageSlowListingAfter {
						return
					}
				}
				time.Sleep(1500 * time.Millisecond) // past the TTL
				t0 := time.Now()
				got, err := dirNames(filepath.Join(mt.m.Mountpoint, "data"))
				if err == nil {
					_, err = os.Stat(filepath.Join(mt.m.Mountpoint, "data", "file-5.bin"))
				}
				took := time.Since(t0)
				o.mu.Lock()
				mt.ls = append(mt.ls, took)
				o.mu.Unlock()
				if err != nil || !slices.Equal(got, o.wantNames) {
					t.Errorf("%s: ls -l of a listed directory during the outage: %q, %v", mt.name, got, errnoOf(err))
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return done
}

// checkBounds checks, on every mount, that the failed reads and the
// listings took no longer than their bounds, and that the daemon is up.
func (o *outageTest) checkBounds(t *testing.T) {
	for _, mt := range o.mounts {
		readBound := cyclesPerFailedPread*sdkRetryWorst(mt.attempts) + outageSlack
		lsBound := cyclesPerStaleLs*sdkRetryWorst(mt.attempts) + outageSlack
		slices.Sort(mt.took)
		slices.Sort(mt.ls)
		t.Logf("%s: %d preads failed with EIO after min %v, median %v, max %v (bound %v); %d ls -l answered in max %v (bound %v)",
			mt.name, len(mt.took), mt.took[0].Round(time.Millisecond), mt.took[len(mt.took)/2].Round(time.Millisecond),
			mt.took[len(mt.took)-1].Round(time.Millisecond), readBound, len(mt.ls), mt.ls[len(mt.ls)-1].Round(time.Millisecond), lsBound)
		if worst := mt.took[len(mt.took)-1]; worst > readBound {
			t.Errorf("%s: a pread took %v to fail, want at most %v", mt.name, worst.Round(time.Millisecond), readBound)
		}
		if worst := mt.ls[len(mt.ls)-1]; worst > lsBound {
			t.Errorf("%s: an ls -l took %v during the outage, want at most %v", mt.name, worst.Round(time.Millisecond), lsBound)
		}
		stderr := mt.m.Stderr()
		t.Logf("%s: daemon logged %d read failures (ERROR) and %d failed refreshes (WARN)", mt.name,
			strings.Count(stderr, `msg="request failed" op=read`), strings.Count(stderr, "listing failed; serving the previous listing"))
		if !mt.m.Alive() {
			t.Fatalf("%s: bgbfs died during the outage", mt.name)
		}
	}
}

// after starts S3 again and checks that the same handles read again, and
// the same mounts list and open files.
func (o *outageTest) after(t *testing.T) {
	if err := o.srv.Start(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	time.Sleep(1100 * time.Millisecond) // past the TTL: list again for real
	for _, mt := range o.mounts {
		for i, f := range mt.handles {
			if msg := checkPread(f, bytes.NewReader(o.files[i].data), outageFileSize, outageOff, outageLen); msg != "" {
				t.Errorf("%s: pread of %s on the same handle after S3 came back: %s", mt.name, o.files[i].key, msg)
			}
		}
		// Read on in order from the failed read, over the blocks whose
		// read-ahead failed.
		if msg := checkPread(mt.inOrder, bytes.NewReader(o.files[outageInOrderFile].data), outageFileSize, outageInOrderOffs[0], 4<<20); msg != "" {
			t.Errorf("%s: reading %s on in order on the same handle after S3 came back: %s", mt.name, o.files[outageInOrderFile].key, msg)
		}
		// As zipfile does: the end of central directory, then the head.
		if mt.archive != nil {
			size := int64(len(o.archive.data))
			for _, off := range []int64{size - 22, size - outageLen, 0} {
				if msg := checkPread(mt.archive, bytes.NewReader(o.archive.data), size, off, outageLen); msg != "" {
					t.Errorf("%s: pread of %s at %d on the handle opened during the outage, after S3 came back: %s", mt.name, o.archive.key, off, msg)
				}
			}
		}
		if got, err := dirNames(filepath.Join(mt.m.Mountpoint, "data")); err != nil || !slices.Equal(got, o.wantNames) {
			t.Errorf("%s: ls data after S3 came back: %q, %v", mt.name, got, errnoOf(err))
		}
		last := o.files[len(o.files)-1]
		got, err := os.ReadFile(filepath.Join(mt.m.Mountpoint, filepath.FromSlash(last.key)))
		if err != nil || !bytes.Equal(got, last.data) {
			t.Errorf("%s: reading %s after S3 came back: %d bytes, %v", mt.name, last.key, len(got), errnoOf(err))
		}
	}
	t.Logf("reads and listings worked again %v after the restart", time.Since(back).Round(time.Millisecond))
}

// TestListingBodyFaults makes the first LIST of a directory never listed
// before fail once, in each way a response can fail, and checks that
// `ls` still shows the right names within a bound: 5xx, SlowDown, a
// response held past --request-timeout and a reset body are retried by
// the SDK; a truncated or stalled body must be retried too (a stalled one
// after --request-timeout), as for GETs.
func TestListingBodyFaults(t *testing.T) {
	srv := env.server(t)
	bucket := newBucket(t, srv, "bgbfs-listfaults")
	kinds := []testbed.FaultKind{
		testbed.FaultInternalError, testbed.FaultSlowDown, testbed.FaultHold,
		testbed.FaultReset, testbed.FaultTruncate, testbed.FaultStallBody,
	}
	var objs []testbed.Object
	want := []string{"a.bin", "b.bin", "c.bin", "sub"}
	for _, k := range kinds {
		for _, name := range []string{"a.bin", "b.bin", "c.bin", "sub/d.bin"} {
			objs = append(objs, testbed.Object{Key: string(k) + "/" + name, Data: []byte(name)})
		}
	}
	if err := srv.Admin().PutMany(context.Background(), bucket, objs, 8); err != nil {
		t.Fatal(err)
	}
	proxy, faults := faultProxy(t, srv.Endpoint, testbed.FaultPlan{})
	const requestTimeout = 2 * time.Second
	m := mount(t, mountSpec{
		Source:   "s3://" + bucket + "/",
		Endpoint: proxy.URL,
		Creds:    rootCreds(srv),
		Args:     []string{"--request-timeout", requestTimeout.String(), "--metadata-ttl", "10m"},
	})
	// A fault and its retry: the request timeout, backoff, slack.
	const bound = requestTimeout + 5*time.Second
	const stall = 15 * time.Second
	for _, k := range kinds {
		t.Run(string(k), func(t *testing.T) {
			faults.SetPlan(testbed.FaultPlan{
				Seed: 1, Rate: 1, Ops: []testbed.Op{testbed.OpListObjectsV2},
				Kinds: map[testbed.FaultKind]int{k: 1}, Max: map[testbed.FaultKind]int{k: 1}, Stall: stall,
			})
			defer faults.SetRate(0)
			proxy.Reset()
			start := time.Now()
			got, err := dirNames(filepath.Join(m.Mountpoint, string(k)))
			took := time.Since(start)
			c := proxy.Counts()
			t.Logf("ls after one %s: %q, %v in %v; %d ListObjectsV2 requests", k, got, errnoOf(err), took.Round(time.Millisecond), c.ListObjectsV2)
			if n := faults.Injected()[k]; n != 1 {
				t.Fatalf("test bed: %d %s faults injected, want 1", n, k)
			}
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("ls of a directory whose first LIST had a %s: %q, %v; want %q (the LIST should be retried)", k, got, errnoOf(err), want)
			}
			if took > bound {
				t.Errorf("ls of a directory whose first LIST had a %s took %v, want at most %v", k, took.Round(time.Millisecond), bound)
			}
		})
	}
	stderr := m.Stderr()
	for _, line := range strings.Split(stderr, "\n") {
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, "level=WARN") {
			t.Logf("daemon: %s", lastBytes(line, 400))
		}
	}
}
