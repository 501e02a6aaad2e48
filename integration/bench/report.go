package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

var workloadNames = map[string]string{
	"a":             "a. cold sequential read, 1 file",
	"b":             "b. cold sequential read, 8 files at once",
	"c":             "c. warm re-read of (a)",
	"d":             "d. 1 MiB random preads",
	"e":             "e. trainer: 4 workers np.load()[\"windows\"][i]",
	"f":             "f. ls -l of 5,000 objects",
	"g":             "g. time to first byte, cold",
	"h":             "h. trainer, one window per sample: whole member vs NAME.npz.d view",
	"i":             "i. member view at bucket scale: 8 loaders, shuffled windows of many archives",
	"j":             "j. 8 processes np.load()[\"windows\"] of many archives at once",
	"k":             "k. disk tier (--cache-dir): epochs 1 and 2, and a re-read evicted from memory",
	"l":             "l. ls -l of 100,000 objects",
	inflateWorkload: "inflate. one member inflated: bgbfs's inflater, libdeflate, ISA-L",
	"m":             "m. the cache dir at the bucket's scale",
	smallWorkload:   "n. bgbfs index over many small archives",
}

func (b *bench) find(workload, profile, system string) (row, bool) {
	for _, r := range b.rows {
		if r.workload == workload && r.profile == profile && r.system == system && r.err == "" {
			return r, true
		}
	}
	return row{}, false
}

func (b *bench) report(started time.Time) string {
	var s strings.Builder
	fmt.Fprintf(&s, "# Benchmarks\n\nProduced by `make bench` (`go run ./integration/bench --out BENCHMARKS.md`), %s, in %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), time.Since(started).Round(time.Second))
	fmt.Fprintf(&s, "Machine: %s. Dataset: %d `.npz` files written by `np.savez_compressed` (%d windows each, %.1f MB on average), and a directory of %d small objects, in MinIO on loopback.\n\n",
		machine(), len(b.ds.files), b.cfg.windows, float64(b.ds.total(b.ds.files))/float64(len(b.ds.files))/1e6, manyObjects)
	if b.npz != nil {
		fmt.Fprintf(&s, "Workload h: %d more `.npz` files the size of the real ones (%d windows, %.1f MB each; one window is %.2f MB compressed), 4 workers, `--cache-size %s`, the view with `--npz-members` and the whole-member path on a mount without it (the target's baseline) and with it, each sample dropping what it read from the page cache (as with data far larger than memory); its fetched ÷ read is bytes fetched over the windows' uncompressed bytes.\n\n",
			b.npz.files, b.cfg.npzWindows, b.npz.meanSize/1e6, b.npz.compressedWindow/1e6, npzCache)
	}
	if b.amp != nil {
		fmt.Fprintf(&s, "Workload j: workload i's %d archives (%.1f MB each, %.2f GB in all), %d processes at once each doing `np.load(path)[\"windows\"]` of every %dth, on a fresh mount with the defaults (1 GiB cache) and on one with `--npz-members` (256 KiB blocks and kernel read-ahead), page cache dropped: numpy reads each archive's end first, then the member from the start, and closes before the end. Its fetched ÷ read is the bytes fetched (at workload i's proxy) over the archives' bytes; the result is the archives' bytes per second.\n\n",
			len(b.amp.names), float64(b.amp.total)/float64(len(b.amp.names))/1e6, float64(b.amp.total)/1e9, ampLoaders, ampLoaders)
	}
	fmt.Fprintf(&s, "Profiles: **loopback** (MinIO behind a counting proxy) and **s3like** (a shaping proxy in front adds %v before each request and caps each response at %.0f MB/s, so concurrency decides throughput as on S3). Cold: page cache dropped and the daemon restarted. GETs and bytes fetched are counted at the proxy. Peak RSS is the daemon's (VmRSS sampled every 20 ms).\n\n",
		s3Latency, s3ConnRate/1e6)
	s.WriteString("| workload | profile | system | result | GETs | fetched ÷ read | peak RSS |\n|---|---|---|---|---|---|---|\n")
	for _, r := range b.rows {
		name := workloadNames[r.workload]
		if name == "" {
			name = r.workload
		}
		if r.err != "" {
			fmt.Fprintf(&s, "| %s | %s | %s | %s | | | |\n", name, r.profile, r.system, oneLine(r.err))
			continue
		}
		ratio := ""
		if r.m.bytesRead > 1 {
			ratio = fmt.Sprintf("%.2f", float64(r.fetched)/float64(r.m.bytesRead))
		}
		rss := ""
		if r.rss > 0 {
			rss = fmt.Sprintf("%.0f MiB", float64(r.rss)/(1<<20))
		}
		fmt.Fprintf(&s, "| %s | %s | %s | %.1f %s | %d | %s | %s |\n", name, r.profile, r.system, r.m.value, r.m.unit, r.gets, ratio, rss)
	}
	s.WriteString(b.npzPerWindow())
	s.WriteString(b.bigDirSection())
	s.WriteString(b.eegSection())
	s.WriteString(b.smallSection())
	s.WriteString(b.diskSection())
	s.WriteString(b.inflateSection())
	s.WriteString(b.dirScaleSection())
	s.WriteString("\n## Targets\n\nRatios from this run; higher is better unless it says otherwise.\n\n| target | profile | measured | verdict |\n|---|---|---|---|\n")
	for _, t := range b.targets() {
		fmt.Fprintf(&s, "| %s | %s | %s | %s |\n", t.name, t.profile, t.measured, t.verdict)
	}
	return s.String()
}

type target struct{ name, profile, measured, verdict string }

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func (b *bench) targets() []target {
	out := b.inflateTargets()
	for _, p := range b.cfg.profiles {
		for _, w := range []string{"a", "b"} {
			bg, ok1 := b.find(w, p, "bgbfs")
			raw, ok2 := b.find(w, p, "raw S3")
			if ok1 && ok2 {
				r := bg.m.value / raw.m.value
				out = append(out, target{fmt.Sprintf("(%s) bgbfs ≥ 0.9× raw S3", w), p, fmt.Sprintf("%.2f×", r), verdict(r >= 0.9)})
			}
		}
		if p == "s3like" {
			for _, peer := range []string{"s3fs", "rclone"} {
				for _, w := range []string{"a", "b", "g"} {
					bg, ok1 := b.find(w, p, "bgbfs")
					pr, ok2 := b.find(w, p, peer)
					if !ok1 || !ok2 {
						continue
					}
					r := bg.m.value / pr.m.value
					if w == "g" { // time: lower is better
						r = pr.m.value / bg.m.value
					}
					out = append(out, target{fmt.Sprintf("(%s) bgbfs ≥ 2× %s", w, peer), p, fmt.Sprintf("%.2f×", r), verdict(r >= 2)})
				}
			}
		}
		if bg, ok := b.find("e", p, "bgbfs"); ok {
			if local, ok := b.find("e", "local", "local disk"); ok {
				r := bg.m.value / local.m.value
				out = append(out, target{"(e) bgbfs ≥ 0.9× the loader on a local copy", p, fmt.Sprintf("%.2f×", r), verdict(r >= 0.9)})
			}
		}
		if bg, ok := b.find("c", p, "bgbfs"); ok {
			if local, ok := b.find("c", "local", "local disk"); ok {
				r := local.m.value / bg.m.value // time ratio
				out = append(out, target{"(c) warm re-read within 1.25× of a page-cached local file (time ratio, lower is better)", p, fmt.Sprintf("%.2f×", r), verdict(r <= 1.25)})
			}
		}
		for _, w := range []string{"a", "b", "c"} {
			if bg, ok := b.find(w, p, "bgbfs"); ok && bg.m.bytesRead > 0 {
				r := float64(bg.fetched) / float64(bg.m.bytesRead)
				out = append(out, target{fmt.Sprintf("(%s) bytes fetched ÷ bytes read ≤ 1.1", w), p, fmt.Sprintf("%.3f", r), verdict(r <= 1.1)})
			}
		}
		out = append(out, b.npzTargets(p)...)
		out = append(out, b.eegTargets(p)...)
		out = append(out, b.smallTargets(p)...)
		out = append(out, b.ampTargets(p)...)
		out = append(out, b.diskTargets(p)...)
		for _, sys := range []struct {
			label string
			cache float64
		}{{"bgbfs", 1024}, {fmt.Sprintf("bgbfs %dMiB cache", smallCacheMB), smallCacheMB}} {
			for _, w := range []string{"b", "e"} {
				if r, ok := b.find(w, p, sys.label); ok && r.rss > 0 {
					mib := float64(r.rss) / (1 << 20)
					out = append(out, target{fmt.Sprintf("(%s) %s RSS ≤ cache + 100 MiB (%.0f MiB)", w, sys.label, sys.cache+100), p, fmt.Sprintf("%.0f MiB", mib), verdict(mib <= sys.cache+100)})
				}
			}
		}
	}
	return out
}

func machine() string {
	kernel, _ := exec.Command("uname", "-r").Output()
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		mem = strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1]
		var kb float64
		fmt.Sscan(mem, &kb)
		mem = fmt.Sprintf("%.0f GiB RAM", kb/(1<<20))
	}
	return fmt.Sprintf("%d cores, %s, Linux %s, %s", runtime.NumCPU(), mem, strings.TrimSpace(string(kernel)), runtime.Version())
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}
