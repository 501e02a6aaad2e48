package main

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgbfs/bgbfs/cache"
	"github.com/bgbfs/bgbfs/fs/npzview"
	"github.com/bgbfs/bgbfs/s3backend/memstore"
)

// readmeSection returns the part of README.md under the heading that
// starts with heading, up to the next heading of its level or above
// (lines in code blocks are not headings).
func readmeSection(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	level := strings.IndexByte(heading, ' ')
	var out []string
	in, code := false, false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "```") {
			code = !code
		}
		if !code && strings.HasPrefix(line, "#") {
			l := strings.IndexByte(line, ' ')
			if in && l > 0 && l <= level {
				break
			}
			if strings.HasPrefix(line, heading) {
				in = true
			}
		}
		if in {
			out = append(out, line)
		}
	}
	if !in {
		t.Fatalf("README.md has no heading %q", heading)
	}
	return strings.Join(out, "\n")
}

// flagNames are the long flags a --help text lists.
func flagNames(help string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z0-9-]+)`).FindAllStringSubmatch(help, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestReadmeListsEveryFlag: every flag of "bgbfs mount" has a row in
// README's flag table, and every flag of "bgbfs index" is named in its
// section.
func TestReadmeListsEveryFlag(t *testing.T) {
	var help bytes.Buffer
	parseMountArgs([]string{"--help"}, func(string) string { return "" }, &help, false)
	mountFlags := flagNames(help.String())
	if len(mountFlags) < 20 {
		t.Fatalf("found %d flags in mount --help:\n%s", len(mountFlags), help.String())
	}
	table := readmeSection(t, "### Flags of `bgbfs mount`")
	for _, f := range mountFlags {
		if f != "help" && !regexp.MustCompile("(?m)^\\|[^|]*`--"+regexp.QuoteMeta(f)+"[ =`]").MatchString(table) {
			t.Errorf("README's flag table has no row for --%s", f)
		}
	}
	help.Reset()
	parseIndexArgs([]string{"--help"}, func(string) string { return "" }, &help)
	indexFlags := flagNames(help.String())
	if len(indexFlags) < 10 {
		t.Fatalf("found %d flags in index --help:\n%s", len(indexFlags), help.String())
	}
	section := readmeSection(t, "### Indexes saved across runs")
	for _, f := range indexFlags {
		if f != "help" && !strings.Contains(section, "--"+f) && !slicesContains(mountFlags, f) {
			t.Errorf("README's section on bgbfs index does not name --%s", f)
		}
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestReadmeListsEveryMetric: every metric the daemon registers, with
// every component watched, is named in README's metrics table.
func TestReadmeListsEveryMetric(t *testing.T) {
	reg := &recordingRegisterer{Registry: prometheus.NewRegistry()}
	newDaemonMetrics(reg)
	blocks, err := cache.New(memstore.New(), cache.Options{CacheSize: 8 << 20, BlockSize: 1 << 20, PartSize: 1 << 20, MaxReadAhead: 2 << 20, MaxParallel: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer blocks.Close()
	blocks.RegisterMetrics(reg)
	view, err := npzview.New(blocks, npzview.Config{Span: 1 << 20, IndexBytes: npzview.MinIndexBytes, SpanBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer view.Close()
	view.RegisterMetrics(reg)
	dir, err := cache.OpenDir(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	tier, err := cache.NewDiskTier(memstore.New(), dir, 1<<20, "b", nil)
	if err != nil {
		t.Fatal(err)
	}
	tier.RegisterMetrics(reg)
	table := readmeSection(t, "## Metrics")
	names := reg.names(t)
	n := 0
	for _, name := range names {
		if !strings.HasPrefix(name, "bgbfs_") {
			continue // the Go runtime's and the process's
		}
		n++
		if !strings.Contains(table, "`"+name+"`") && !strings.Contains(table, "`"+name+"{") {
			t.Errorf("README's metrics table does not name %s", name)
		}
	}
	if n < 25 {
		t.Errorf("only %d bgbfs metrics registered: %v", n, names)
	}
}

// recordingRegisterer is a registry that records the collectors
// registered with it, so that the names of their metrics can be listed
// before any has a sample (a vector has none until a label is used).
type recordingRegisterer struct {
	*prometheus.Registry
	collectors []prometheus.Collector
}

func (r *recordingRegisterer) Register(c prometheus.Collector) error {
	if err := r.Registry.Register(c); err != nil {
		return err
	}
	r.collectors = append(r.collectors, c)
	return nil
}

func (r *recordingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// names returns the names of the metrics the recorded collectors
// describe, sorted. A description has no getter for its name: each is
// given one sample, with as many label values as it takes, and a registry
// of its own names them as it gathers.
func (r *recordingRegisterer) names(t *testing.T) []string {
	t.Helper()
	descs := make(chan *prometheus.Desc)
	go func() {
		for _, c := range r.collectors {
			c.Describe(descs)
		}
		close(descs)
	}()
	var samples sampleCollector
	for d := range descs {
		m, err := oneSample(d)
		if err != nil {
			t.Fatalf("describing %v: %v", d, err)
		}
		samples = append(samples, m)
	}
	gather := prometheus.NewPedanticRegistry()
	gather.MustRegister(samples)
	families, err := gather.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range families {
		out = append(out, f.GetName())
	}
	return out // Gather sorts by name
}

// oneSample is a sample of the metric d describes, with empty label
// values.
func oneSample(d *prometheus.Desc) (prometheus.Metric, error) {
	var err error
	for labels := 0; labels <= 8; labels++ {
		var m prometheus.Metric
		if m, err = prometheus.NewConstMetric(d, prometheus.UntypedValue, 0, make([]string, labels)...); err == nil {
			return m, nil
		}
	}
	return nil, err
}

// sampleCollector collects fixed samples; it describes nothing, so that
// a registry takes them as they come.
type sampleCollector []prometheus.Metric

func (s sampleCollector) Describe(chan<- *prometheus.Desc) {}

func (s sampleCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range s {
		ch <- m
	}
}
