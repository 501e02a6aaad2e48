package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// measurement is what one workload gives: a figure with its unit, and the
// bytes the reader got (for fetched ÷ read).
type measurement struct {
	value     float64
	unit      string // "MB/s", "ms", "samples/s"
	bytesRead int64
}

func mbps(bytes int64, d time.Duration) measurement {
	return measurement{value: float64(bytes) / 1e6 / d.Seconds(), unit: "MB/s", bytesRead: bytes}
}

// readFile reads path to the end in 1 MiB reads.
func readFile(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return io.CopyBuffer(io.Discard, f, make([]byte, 1<<20))
}

func readFiles(paths []string) (int64, error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total int64
	var first error
	for _, p := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := readFile(p)
			mu.Lock()
			defer mu.Unlock()
			total += n
			if err != nil && first == nil {
				first = err
			}
		}()
	}
	wg.Wait()
	return total, first
}

// randomReads makes n 1 MiB preads at seeded random offsets over files.
func (b *bench) randomReads(dir string, n int) (measurement, error) {
	rng := rand.New(rand.NewPCG(11, 13))
	buf := make([]byte, 1<<20)
	handles := map[string]*os.File{}
	defer func() {
		for _, f := range handles {
			f.Close()
		}
	}()
	var total int64
	start := time.Now()
	for range n {
		name := b.ds.files[rng.IntN(len(b.ds.files))]
		off := rng.Int64N(b.ds.sizes[name] - int64(len(buf)))
		f := handles[name]
		if f == nil {
			var err error
			if f, err = os.Open(filepath.Join(dir, name)); err != nil {
				return measurement{}, err
			}
			handles[name] = f
		}
		m, err := f.ReadAt(buf, off)
		if err != nil {
			return measurement{}, err
		}
		total += int64(m)
	}
	return mbps(total, time.Since(start)), nil
}

// trainer runs trainer.py with 4 workers over dir.
func (b *bench) trainer(ctx context.Context, dir string) (measurement, error) {
	m, _, err := b.runTrainer(ctx, dir, "--samples", fmt.Sprint(b.cfg.samples))
	return m, err
}

// runTrainer runs trainer.py with 4 workers over dir and further args, and
// returns the rate and the number of samples it read.
func (b *bench) runTrainer(ctx context.Context, dir string, args ...string) (measurement, int, error) {
	script := filepath.Join(b.repo(), "integration", "bench", "trainer.py")
	args = append([]string{script, "--dir", dir, "--workers", "4"}, args...)
	out, err := exec.CommandContext(ctx, testbed.Python, args...).Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) && len(exit.Stderr) > 0 {
			// Its last line says why (a traceback ends with the error).
			lines := strings.Split(strings.TrimSpace(string(exit.Stderr)), "\n")
			return measurement{}, 0, fmt.Errorf("trainer.py: %w: %s", err, lines[len(lines)-1])
		}
		return measurement{}, 0, fmt.Errorf("trainer.py: %w", err)
	}
	var r struct {
		Samples     int     `json:"samples"`
		SamplesPerS float64 `json:"samples_per_s"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return measurement{}, 0, fmt.Errorf("trainer.py said %q: %w", out, err)
	}
	return measurement{value: r.SamplesPerS, unit: "samples/s"}, r.Samples, nil
}

// firstByte opens a file and reads one byte.
func firstByte(path string) (measurement, error) {
	start := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return measurement{}, err
	}
	defer f.Close()
	if _, err := f.Read(make([]byte, 1)); err != nil {
		return measurement{}, err
	}
	return measurement{value: float64(time.Since(start).Microseconds()) / 1000, unit: "ms", bytesRead: 1}, nil
}

func listLong(ctx context.Context, dir string) (measurement, error) {
	start := time.Now()
	cmd := exec.CommandContext(ctx, "ls", "-l", dir)
	cmd.Stdout = io.Discard
	if err := cmd.Run(); err != nil {
		return measurement{}, fmt.Errorf("ls -l %s: %w", dir, err)
	}
	return measurement{value: float64(time.Since(start).Microseconds()) / 1000, unit: "ms"}, nil
}

// rawClient reads the bucket with the AWS SDK directly: parallel ranged
// GETs of 8 MiB, the ceiling for cold reads.
type rawClient struct {
	s3     *s3.Client
	bucket string
}

const rawPart = 8 << 20

// readObjects reads whole objects with at most parallel GETs in flight.
func (r *rawClient) readObjects(ctx context.Context, keys []string, sizes []int64, parallel int) (int64, error) {
	type part struct {
		key     string
		off, to int64
	}
	var parts []part
	for i, k := range keys {
		for off := int64(0); off < sizes[i]; off += rawPart {
			parts = append(parts, part{k, off, min(off+rawPart, sizes[i]) - 1})
		}
	}
	work := make(chan part)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total int64
	var first error
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for p := range work {
				n, err := r.get(ctx, p.key, p.off, p.to, buf)
				mu.Lock()
				total += n
				if err != nil && first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	for _, p := range parts {
		work <- p
	}
	close(work)
	wg.Wait()
	return total, first
}

func (r *rawClient) get(ctx context.Context, key string, from, to int64, buf []byte) (int64, error) {
	out, err := r.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(r.bucket), Key: aws.String(key), Range: aws.String(fmt.Sprintf("bytes=%d-%d", from, to))})
	if err != nil {
		return 0, err
	}
	defer out.Body.Close()
	return io.CopyBuffer(io.Discard, out.Body, buf)
}

func (r *rawClient) randomReads(ctx context.Context, ds *dataset, n int) (measurement, error) {
	rng := rand.New(rand.NewPCG(11, 13))
	buf := make([]byte, 256<<10)
	var total int64
	start := time.Now()
	for range n {
		name := ds.files[rng.IntN(len(ds.files))]
		off := rng.Int64N(ds.sizes[name] - 1<<20)
		m, err := r.get(ctx, ds.key(name), off, off+1<<20-1, buf)
		if err != nil {
			return measurement{}, err
		}
		total += m
	}
	return mbps(total, time.Since(start)), nil
}

func (r *rawClient) list(ctx context.Context, prefix string) (measurement, error) {
	start := time.Now()
	p := s3.NewListObjectsV2Paginator(r.s3, &s3.ListObjectsV2Input{Bucket: aws.String(r.bucket), Prefix: aws.String(prefix), Delimiter: aws.String("/")})
	for p.HasMorePages() {
		if _, err := p.NextPage(ctx); err != nil {
			return measurement{}, err
		}
	}
	return measurement{value: float64(time.Since(start).Microseconds()) / 1000, unit: "ms"}, nil
}

func (r *rawClient) firstByte(ctx context.Context, key string) (measurement, error) {
	start := time.Now()
	if _, err := r.get(ctx, key, 0, 0, make([]byte, 16)); err != nil {
		return measurement{}, err
	}
	return measurement{value: float64(time.Since(start).Microseconds()) / 1000, unit: "ms", bytesRead: 1}, nil
}
