#!/usr/bin/python3
"""Generate a small, deterministic copy of the TUSZ window cache.

Writes OUT/train/*.npz and OUT/dev/*.npz in the layout the trainer reads
(see WORKLOAD.md): one file per recording named
<recording>_s<session>_t<take>_windows.npz holding
  windows  float32 (K, 19, 15360)
  labels   float32 (K, 15360)
alternating np.savez_compressed (even index) and np.savez (odd index), plus
OUT/<split>/manifest.json listing {"cache_file": name, "window_idx": i}.

The windows are standard-normal noise by default. With --walk they are
EEG-like instead: each channel of a window a random walk (a start drawn
with standard deviation 20, then standard-normal steps) kept at full
float32 precision, which deflate shrinks about 1.13x as it does the real
recordings (noise only 1.08x); the benchmark's bucket-scale workload uses
it. --jobs writes that many files at once (the bytes do not change).

File i of the whole run (train first, then dev) uses
np.random.default_rng(seed + i), so the same arguments always give the same
bytes. Run with /usr/bin/python3 (it needs numpy).

usage: gen_npz.py --out DIR --train N --dev M --windows K --seed S [--compressed-only] [--walk] [--jobs J]
"""

import argparse
import json
import multiprocessing
import os
import random
import sys

import numpy as np

CHANNELS = 19
SAMPLES = 15360  # 60 s at 256 Hz
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def recording_names(count, seed):
    """Distinct, plausible names whose byte order differs from creation
    order: some share a recording (so only session/take decide the order),
    and recordings differ at varying positions."""
    rnd = random.Random(seed)
    names, seen = [], set()
    while len(names) < count:
        if names and rnd.random() < 0.3:
            # Another session or take of an earlier recording.
            rec = names[rnd.randrange(len(names))].split("_")[0]
        else:
            rec = "aaaa" + "".join(rnd.choice(LETTERS) for _ in range(4))
        name = "%s_s%03d_t%03d_windows.npz" % (rec, rnd.randrange(1, 12), rnd.randrange(0, 12))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def walk_windows(rng, windows):
    """EEG-like windows: per channel a random walk at full float32
    precision (as fs/npz's walkData makes in Go)."""
    steps = rng.standard_normal((windows, CHANNELS, SAMPLES), dtype=np.float32)
    steps[:, :, 0] += (rng.standard_normal((windows, CHANNELS)) * 20).astype(np.float32)
    return np.cumsum(steps, axis=2, dtype=np.float32)


def write_file(task):
    path, i, windows, seed, compressed_only, walk = task
    rng = np.random.default_rng(seed + i)
    if walk:
        w = walk_windows(rng, windows)
    else:
        w = rng.standard_normal((windows, CHANNELS, SAMPLES), dtype=np.float32)
    labels = (rng.random((windows, SAMPLES)) < 0.1).astype(np.float32)
    save = np.savez_compressed if (i % 2 == 0 or compressed_only) else np.savez
    with open(path, "wb") as f:
        save(f, windows=w, labels=labels)


def write_split(out, split, names, first_index, windows, seed, compressed_only=False, walk=False, jobs=1):
    d = os.path.join(out, split)
    os.makedirs(d, exist_ok=True)
    manifest = []
    tasks = []
    for j, name in enumerate(names):
        tasks.append((os.path.join(d, name), first_index + j, windows, seed, compressed_only, walk))
        manifest.extend({"cache_file": name, "window_idx": k} for k in range(windows))
    if jobs > 1 and len(tasks) > 1:
        with multiprocessing.Pool(jobs) as pool:
            pool.map(write_file, tasks, chunksize=1)
    else:
        for t in tasks:
            write_file(t)
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, required=True)
    p.add_argument("--dev", type=int, required=True)
    p.add_argument("--windows", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--compressed-only", action="store_true",
                   help="write every file with np.savez_compressed (the benchmark's data)")
    p.add_argument("--walk", action="store_true",
                   help="EEG-like windows: per-channel float32 random walks (deflate ~1.13x) instead of noise")
    p.add_argument("--jobs", type=int, default=1, help="files written at once")
    a = p.parse_args(argv)
    if min(a.train, a.dev) < 0 or a.windows < 1:
        p.error("--train/--dev must be >= 0 and --windows >= 1")
    names = recording_names(a.train + a.dev, a.seed)
    write_split(a.out, "train", names[: a.train], 0, a.windows, a.seed, a.compressed_only, a.walk, a.jobs)
    write_split(a.out, "dev", names[a.train :], a.train, a.windows, a.seed, a.compressed_only, a.walk, a.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
