package integration

// Helpers that read what a daemon says: its metrics and counters, its
// log and stderr lines.

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// checkOneErrorLine checks a failed start's stderr: exactly one line, starting
// with "bgbfs: " and naming one of keywords (case-insensitive).
func checkOneErrorLine(t testing.TB, stderr string, keywords ...string) {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(stderr, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		t.Errorf("stderr has %d lines, want exactly 1:\n%s", len(lines), stderr)
		return
	}
	if !strings.HasPrefix(lines[0], "bgbfs: ") {
		t.Errorf("stderr line %q does not start with %q", lines[0], "bgbfs: ")
	}
	lower := strings.ToLower(lines[0])
	if !slices.ContainsFunc(keywords, func(k string) bool { return strings.Contains(lower, k) }) {
		t.Errorf("stderr line %q names none of %q", lines[0], keywords)
	}
}

// metricsSnapshot is one scrape of /metrics: the value of every series,
// keyed by name and sorted labels as `name{a="x",b="y"}`.
type metricsSnapshot map[string]float64

// scrapeMetrics fetches and parses http://addr/metrics.
func scrapeMetrics(t testing.TB, addr string) metricsSnapshot {
	t.Helper()
	body := fetchURL(t, "http://"+addr+"/metrics")
	snap := metricsSnapshot{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, err := parseSample(line)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		snap[key] = value
	}
	return snap
}

// parseSample reads `name{labels} value` (or `name value`) and returns
// the series key with its labels sorted, and the value.
func parseSample(line string) (string, float64, error) {
	name, rest := line, ""
	var labels []string
	if i := strings.IndexByte(line, '{'); i >= 0 {
		j := strings.LastIndexByte(line, '}')
		if j < i {
			return "", 0, fmt.Errorf("unbalanced braces")
		}
		name, rest = line[:i], strings.TrimSpace(line[j+1:])
		inner := line[i+1 : j]
		// Label values here never hold commas or escaped quotes.
		for _, l := range strings.Split(inner, ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels = append(labels, l)
			}
		}
	} else {
		f := strings.Fields(line)
		if len(f) < 2 {
			return "", 0, fmt.Errorf("no value")
		}
		name, rest = f[0], f[1]
	}
	f := strings.Fields(rest)
	if len(f) < 1 {
		return "", 0, fmt.Errorf("no value")
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return "", 0, err
	}
	sort.Strings(labels)
	key := name
	if len(labels) > 0 {
		key += "{" + strings.Join(labels, ",") + "}"
	}
	return key, v, nil
}

// Sum adds the series of metric name whose labels include every one of
// match (each `k="v"`).
func (s metricsSnapshot) Sum(name string, match ...string) float64 {
	total := 0.0
	for key, v := range s {
		n, labels, _ := strings.Cut(key, "{")
		if n != name {
			continue
		}
		have := strings.Split(strings.TrimSuffix(labels, "}"), ",")
		if slices.ContainsFunc(match, func(m string) bool { return !slices.Contains(have, m) }) {
			continue
		}
		total += v
	}
	return total
}

// Has reports whether any series of metric name is present.
func (s metricsSnapshot) Has(name string) bool {
	for key := range s {
		if n, _, _ := strings.Cut(key, "{"); n == name {
			return true
		}
	}
	return false
}

// fetchURL returns the body of a 200 response, failing the test otherwise.
func fetchURL(t testing.TB, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}

// fileLines returns the non-empty lines of a file.
func fileLines(t testing.TB, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) != "" {
			out = append(out, sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
