package main

// Workload inflate: the member view's inflater against the fastest native
// inflaters, on one stream. The stream is the windows member of an archive
// np.savez_compressed writes (EEG-like float32 random walks, which deflate
// shrinks about 1.13x as it does the real recordings; 73 windows, 85 MB,
// the real archives' mean), made once under integration/.work/bench-inflate/.
// libdeflate-gunzip (Debian's libdeflate-tools) and igzip -d (Debian's isal)
// read it as a gzip file wrapping the same deflate stream, writing to
// /dev/null; bgbfs's inflater reads it in this process, through
// npz.ReadFromStart (what a read of the member does, buffers included) and
// through npz.BuildIndex (what `bgbfs index` does: the same with the
// reference tracking for sparse windows, and the CRC-32).
//
// Each system inflates the member inflateRounds times, the systems taking
// turns, so that process start is noise and a busy moment of a shared
// machine hits all of them alike. The figure is output MB per CPU-second
// (user + system: the tools' from their rusage, the inflater's from this
// process's with GOMAXPROCS 1), the CPU a reader spends inflating: of the
// best round (the least disturbed), and over all rounds.
//
// libdeflate-gunzip reads its input into memory and inflates into a buffer
// the size of the output, which costs it page faults (a lot of system time
// on a virtual machine). When a C compiler and libdeflate's shared library
// are there, a row measures libdeflate's decoder alone too: a C program
// built here that inflates the raw stream from memory into a buffer it
// reuses, timing only the calls, the fair match for the in-process rows.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/bgbfs/bgbfs/fs/npz"
	"github.com/bgbfs/bgbfs/fs/npzview"
	"github.com/bgbfs/bgbfs/integration/testbed"
)

const (
	inflateWorkload = "inflate"
	inflateWindows  = 73
	inflateSeed     = 17
	// 5 rounds of an 85 MB member: 426 MB of output per system.
	inflateRounds = 5

	inflateReadAt     = "bgbfs inflater: npz.ReadFromStart of the member, in-process, 1 core"
	inflateIndex      = "bgbfs index build: npz.BuildIndex, in-process, 1 core"
	inflateLibdeflate = "libdeflate-gunzip -c (libdeflate-tools)"
	inflateIgzip      = "igzip -d -c (isal)"
	inflateLDMemory   = "libdeflate's decoder alone: libdeflate_deflate_decompress from memory"
)

// inflateSystems are the rows in the order they run and are shown.
var inflateSystems = []string{inflateReadAt, inflateIndex, inflateLibdeflate, inflateIgzip, inflateLDMemory}

// inflateSet is the workload's stream and what each system did with it.
type inflateSet struct {
	archive    []byte
	member     npz.Member
	dataOff    int64
	deflateRaw string // the member's deflate stream
	gzip       string // the same wrapped in gzip
	ldMemory   string // the C program, if it could be built
	runs       map[string]*inflateRun
	note       string // why a row is missing
}

// inflateRun is one system's total over the rounds, and its best round.
type inflateRun struct {
	bytes         int64
	cpu           float64 // seconds
	best, bestCPU float64 // the round with the most MB per CPU-second
}

func (r *inflateRun) mbPerCPU() float64 { return float64(r.bytes) / 1e6 / r.cpu }

// bestMBPerCPU is the figure of the round least disturbed by the rest of
// a shared machine.
func (r *inflateRun) bestMBPerCPU() float64 { return r.best / 1e6 / r.bestCPU }

func (b *bench) runInflate(ctx context.Context) {
	if !b.wants(inflateWorkload) {
		return
	}
	fmt.Fprintln(os.Stderr, "bench: local inflate")
	set, err := b.inflateData(ctx)
	if err != nil {
		b.rows = append(b.rows, row{workload: inflateWorkload, profile: "local", system: inflateReadAt, err: err.Error()})
		return
	}
	b.inflate = set
	steps := map[string]func() (int64, float64, error){
		inflateReadAt: set.readFromStart,
		inflateIndex:  set.buildIndex,
		inflateLibdeflate: func() (int64, float64, error) {
			return set.tool(ctx, "libdeflate-gunzip", "-c", set.gzip)
		},
		inflateIgzip: func() (int64, float64, error) { return set.tool(ctx, "igzip", "-d", "-c", set.gzip) },
	}
	if set.ldMemory != "" {
		steps[inflateLDMemory] = func() (int64, float64, error) { return set.decoderAlone(ctx) }
	}
	failed := map[string]error{}
	for range inflateRounds {
		for _, system := range inflateSystems {
			step := steps[system]
			if step == nil || failed[system] != nil || ctx.Err() != nil {
				continue
			}
			n, cpu, err := step()
			if err != nil {
				failed[system] = err
				continue
			}
			r := set.runs[system]
			if r == nil {
				r = &inflateRun{}
				set.runs[system] = r
			}
			r.bytes += n
			r.cpu += cpu
			if r.best == 0 || float64(n)/cpu > r.best/r.bestCPU {
				r.best, r.bestCPU = float64(n), cpu
			}
		}
	}
	for _, system := range inflateSystems {
		if err := failed[system]; err != nil {
			b.rows = append(b.rows, row{workload: inflateWorkload, profile: "local", system: system, err: err.Error()})
			continue
		}
		if r := set.runs[system]; r != nil {
			b.rows = append(b.rows, row{workload: inflateWorkload, profile: "local", system: system,
				m: measurement{value: r.bestMBPerCPU(), unit: "MB per CPU-s"}})
		}
	}
}

// inflateData makes (once) the archive and the streams, and builds the C
// program if it can.
func (b *bench) inflateData(ctx context.Context) (*inflateSet, error) {
	dir := filepath.Join(b.repo(), "integration", ".work", "bench-inflate", fmt.Sprintf("%d-seed%d", inflateWindows, inflateSeed))
	set := &inflateSet{deflateRaw: filepath.Join(dir, "windows.deflate"), gzip: filepath.Join(dir, "windows.npy.gz"), runs: map[string]*inflateRun{}}
	ready := filepath.Join(dir, "ready")
	if _, err := os.Stat(ready); err != nil {
		fmt.Fprintf(os.Stderr, "bench: generating workload inflate's archive in %s (once)\n", dir)
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
		spec := testbed.NPZSpec{Train: 1, Windows: inflateWindows, Seed: inflateSeed, CompressedOnly: true, Walk: true}
		if err := testbed.GenNPZ(b.repo(), filepath.Join(dir, "src"), spec); err != nil {
			return nil, err
		}
		if err := os.WriteFile(ready, []byte("generated\n"), 0o644); err != nil {
			return nil, err
		}
	}
	archives, err := filepath.Glob(filepath.Join(dir, "src", "train", "*.npz"))
	if err != nil || len(archives) != 1 {
		return nil, fmt.Errorf("%s: want one archive, found %d (%v): remove the dir to make it again", dir, len(archives), err)
	}
	if set.archive, err = os.ReadFile(archives[0]); err != nil {
		return nil, err
	}
	r := bytes.NewReader(set.archive)
	d, err := npz.ReadDirectory(r, int64(len(set.archive)))
	if err != nil {
		return nil, err
	}
	for _, m := range d.Members {
		if m.Name == "windows.npy" {
			set.member = m
		}
	}
	if set.member.Method != npz.Deflated {
		return nil, fmt.Errorf("%s: no deflated windows.npy", archives[0])
	}
	if set.dataOff, err = set.member.DataOffset(r); err != nil {
		return nil, err
	}
	stream := set.archive[set.dataOff : set.dataOff+set.member.CompressedSize]
	if err := os.WriteFile(set.deflateRaw, stream, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(set.gzip, gzipWrap(stream, set.member), 0o644); err != nil {
		return nil, err
	}
	set.ldMemory, set.note = buildDecoderAlone(ctx, b.work)
	return set, nil
}

// gzipWrap wraps a raw deflate stream of m's content in a gzip member
// (RFC 1952: no name, no extra fields).
func gzipWrap(stream []byte, m npz.Member) []byte {
	out := []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255}
	out = append(out, stream...)
	out = binary.LittleEndian.AppendUint32(out, m.CRC32)
	return binary.LittleEndian.AppendUint32(out, uint32(m.UncompressedSize))
}

// readFromStart inflates the whole member as a read of it does, into a
// buffer the caller owns (as FUSE's is), and checks its CRC-32.
func (s *inflateSet) readFromStart() (int64, float64, error) {
	p := make([]byte, s.member.UncompressedSize)
	for i := 0; i < len(p); i += 4096 {
		p[i] = 1 // fault the pages in before the clock starts
	}
	return s.inProcess(func() error {
		_, err := npz.ReadFromStart(bytes.NewReader(s.archive), s.member, s.dataOff, p, 0)
		return err
	}, func() error {
		if crc32.ChecksumIEEE(p) != s.member.CRC32 {
			return errors.New("npz.ReadFromStart: the content's CRC-32 does not match the archive's")
		}
		return nil
	})
}

// buildIndex indexes the member as `bgbfs index` does (BuildIndex checks
// the CRC-32 itself).
func (s *inflateSet) buildIndex() (int64, float64, error) {
	return s.inProcess(func() error {
		_, err := npz.BuildIndex(bytes.NewReader(s.archive), s.member, eegIndexSpan, npzview.RowLead(eegIndexReadAhead))
		return err
	}, func() error { return nil })
}

// inProcess times run on one core, by this process's CPU time.
func (s *inflateSet) inProcess(run, check func() error) (int64, float64, error) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	runtime.GC()
	before := processCPU()
	err := run()
	cpu := processCPU() - before
	if err == nil {
		err = check()
	}
	return s.member.UncompressedSize, cpu, err
}

// tool runs a command that writes the member's content to its standard
// output, sent to /dev/null, and returns its CPU time.
func (s *inflateSet) tool(ctx context.Context, name string, args ...string) (int64, float64, error) {
	if _, err := exec.LookPath(name); err != nil {
		return 0, 0, fmt.Errorf("%s is not installed", name)
	}
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return 0, 0, err
	}
	defer null.Close()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout = null
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	st := cmd.ProcessState
	return s.member.UncompressedSize, (st.UserTime() + st.SystemTime()).Seconds(), nil
}

// decoderAlone runs the C program: one call untimed, then one timed.
func (s *inflateSet) decoderAlone(ctx context.Context) (int64, float64, error) {
	out, err := exec.CommandContext(ctx, s.ldMemory, s.deflateRaw, strconv.FormatInt(s.member.UncompressedSize, 10)).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", s.ldMemory, err)
	}
	cpu, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil {
		return 0, 0, fmt.Errorf("%s said %q: %w", s.ldMemory, out, err)
	}
	return s.member.UncompressedSize, cpu, nil
}

// decoderAloneSource inflates argv[1], a raw deflate stream of argv[2]
// bytes, with libdeflate: once to warm up, then once timed by the
// process's CPU clock, and prints the seconds. It declares the three
// functions it calls: Debian's libdeflate0 has no header without
// libdeflate-dev.
const decoderAloneSource = `#include <stdio.h>
#include <stdlib.h>
#include <time.h>
struct libdeflate_decompressor;
struct libdeflate_decompressor *libdeflate_alloc_decompressor(void);
int libdeflate_deflate_decompress(struct libdeflate_decompressor *, const void *, size_t, void *, size_t, size_t *);
int main(int argc, char **argv) {
	if (argc != 3) return 2;
	FILE *f = fopen(argv[1], "rb");
	if (!f) return 2;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *in = malloc(n);
	if (fread(in, 1, n, f) != (size_t)n) return 2;
	size_t size = strtoull(argv[2], 0, 10), got = 0;
	char *out = malloc(size);
	struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
	if (libdeflate_deflate_decompress(d, in, n, out, size, &got) != 0 || got != size) return 1;
	struct timespec a, b;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
	if (libdeflate_deflate_decompress(d, in, n, out, size, &got) != 0 || got != size) return 1;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
	printf("%.6f\n", (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
	return 0;
}
`

// buildDecoderAlone compiles the C program against libdeflate's shared
// library in work, or says why it cannot.
func buildDecoderAlone(ctx context.Context, work string) (string, string) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		return "", "no C compiler"
	}
	out, _ := exec.CommandContext(ctx, "ldconfig", "-p").Output()
	lib := ""
	for line := range strings.SplitSeq(string(out), "\n") {
		if _, path, ok := strings.Cut(line, "=> "); ok && strings.Contains(line, "libdeflate.so.0 ") {
			lib = strings.TrimSpace(path)
		}
	}
	if lib == "" {
		return "", "no libdeflate.so.0"
	}
	src, bin := filepath.Join(work, "decoder-alone.c"), filepath.Join(work, "decoder-alone")
	if err := os.WriteFile(src, []byte(decoderAloneSource), 0o644); err != nil {
		return "", err.Error()
	}
	if out, err := exec.CommandContext(ctx, cc, "-O2", "-o", bin, src, lib).CombinedOutput(); err != nil {
		return "", fmt.Sprintf("cc: %v: %s", err, oneLine(string(out)))
	}
	return bin, ""
}

// inflateSection details workload inflate.
func (b *bench) inflateSection() string {
	s := b.inflate
	if s == nil {
		return ""
	}
	var out strings.Builder
	fmt.Fprintf(&out, "\n## Inflating one member (workload inflate)\n\n")
	fmt.Fprintf(&out, "The windows member of one archive written by `np.savez_compressed` (%d EEG-like windows: %.1f MB, deflate ratio %.2f), inflated %d times by each system in turn; the tools read it as a gzip file wrapping the same deflate stream and write to /dev/null. Output MB per CPU-second: user + system time, the tools' from their rusage (process start, reading the file and writing included), the in-process rows' from this process's with GOMAXPROCS 1; the ratios are of the best rounds, the least disturbed by the rest of a shared machine. libdeflate-gunzip inflates into a buffer the size of the output, whose page faults cost it system time; the decoder-alone row times only libdeflate's calls, from memory into a buffer it reuses.\n\n",
		inflateWindows, float64(s.member.UncompressedSize)/1e6, float64(s.member.UncompressedSize)/float64(s.member.CompressedSize), inflateRounds)
	out.WriteString("| system | MB per CPU-s, best round | ÷ libdeflate-gunzip | ÷ libdeflate's decoder alone | all rounds: output, CPU, MB per CPU-s |\n|---|---|---|---|---|\n")
	gunzip, alone := s.runs[inflateLibdeflate], s.runs[inflateLDMemory]
	ratio := func(r, base *inflateRun) string {
		if base == nil {
			return ""
		}
		return fmt.Sprintf("%.2f×", r.bestMBPerCPU()/base.bestMBPerCPU())
	}
	for _, system := range inflateSystems {
		r := s.runs[system]
		if r == nil {
			continue
		}
		fmt.Fprintf(&out, "| %s | %.1f | %s | %s | %.0f MB, %.2f s, %.1f |\n", system, r.bestMBPerCPU(), ratio(r, gunzip), ratio(r, alone), float64(r.bytes)/1e6, r.cpu, r.mbPerCPU())
	}
	if s.note != "" {
		fmt.Fprintf(&out, "\nNo decoder-alone row: %s.\n", s.note)
	}
	return out.String()
}

// inflateTargets: the inflater at least 0.8× libdeflate, the goal 1.0×.
func (b *bench) inflateTargets() []target {
	s := b.inflate
	if s == nil {
		return nil
	}
	r := s.runs[inflateReadAt]
	if r == nil {
		return nil
	}
	var out []target
	for _, base := range []string{inflateLibdeflate, inflateLDMemory} {
		if l := s.runs[base]; l != nil {
			x := r.bestMBPerCPU() / l.bestMBPerCPU()
			v := verdict(x >= 0.8)
			if x >= 0.8 && x < 1 {
				v += " (goal 1.0×)"
			}
			out = append(out, target{fmt.Sprintf("(inflate) bgbfs inflater ≥ 0.8× %s, MB per CPU-s", base), "local",
				fmt.Sprintf("%.2f× (%.1f vs %.1f, best rounds)", x, r.bestMBPerCPU(), l.bestMBPerCPU()), v})
		}
	}
	return out
}
