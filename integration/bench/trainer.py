"""The trainer's read pattern: workers doing np.load(path)["windows"][i]
for shuffled (file, i) pairs, the file reopened for every sample.

Prints one JSON line: {"samples": N, "seconds": S, "samples_per_s": R, "checksum": C}.
"""
import argparse
import json
import multiprocessing as mp
import os
import random
import time

import numpy as np


def sample(args):
    path, i = args
    with np.load(path) as f:
        w = f["windows"][i]
    return float(w[0, 0])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    with open(os.path.join(a.dir, "manifest.json")) as f:
        manifest = json.load(f)
    pairs = [(os.path.join(a.dir, e["cache_file"]), e["window_idx"]) for e in manifest]
    rnd = random.Random(a.seed)
    todo = [rnd.choice(pairs) for _ in range(a.samples)]
    start = time.monotonic()
    with mp.Pool(a.workers) as pool:
        values = pool.map(sample, todo, chunksize=1)
    secs = time.monotonic() - start
    print(json.dumps({"samples": a.samples, "seconds": secs, "samples_per_s": a.samples / secs,
                      "checksum": sum(values)}))


if __name__ == "__main__":
    main()
