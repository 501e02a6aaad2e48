"""The trainer's read pattern: workers doing np.load(path)["windows"][i]
for shuffled (file, i) pairs, the file reopened for every sample. With
--view, the loader reads through bgbfs's member view instead (one line
changed): np.array(np.load(path + ".d/windows.npy", mmap_mode="r")[i]).
With --each-file-once, the samples are one random window of every file.
With --epoch, the samples are every window of every file once, shuffled
(--seed picks the order: one seed per epoch); with --first K too, only
the --samples windows from the K-th on in that order (two runs of the
same seed and different K read different windows).
With --files N, only the first N files (by name) are read.
With --forget, each sample drops the file it read from the page cache
(POSIX_FADV_DONTNEED), as a dataset far larger than memory would: no
sample is served from pages an earlier one left behind.
With --verify LOCALDIR, each worker also takes the CRC-32 of the window it
read, and after the timed run every one is compared with the same window
of the copy in LOCALDIR: a wrong byte makes it fail (exit 1). LOCALDIR
holds the .npz files, or uncompressed copies of their windows member as
NAME.npz.d/windows.npy (read with mmap_mode="r": no inflating).
With --shapes (and --view), the run is the dataset pass instead: every
file once, np.load(path + ".d/windows.npy", mmap_mode="r").shape[0], each
checked against the windows the manifest lists for it; "samples" is then
the number of files.

Prints one JSON line: {"samples": N, "seconds": S, "samples_per_s": R, "checksum": C},
with "verified": N under --verify.
"""
import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
import zlib

import numpy as np


FORGET = False
VERIFY = False


def forget(path):
    if FORGET:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def result(w):
    crc = zlib.crc32(np.ascontiguousarray(w)) if VERIFY else 0
    return float(w[0, 0]), crc


def sample(args):
    path, i = args
    with np.load(path) as f:
        w = f["windows"][i]
    forget(path)
    return result(w)


def sample_view(args):
    path, i = args
    w = np.array(np.load(path + ".d/windows.npy", mmap_mode="r")[i])
    forget(path + ".d/windows.npy")
    return result(w)


def shape_view(path):
    return np.load(path + ".d/windows.npy", mmap_mode="r").shape[0]


def check_shapes(todo, shapes, want):
    bad = ["%s: %d windows, want %d" % (os.path.basename(p), n, want[p]) for p, n in zip(todo, shapes) if n != want[p]]
    if bad:
        print("%d of %d shapes differ from the manifest; first: %s" % (len(bad), len(todo), bad[0]), file=sys.stderr)
        sys.exit(1)


def local_windows(local, name):
    """The windows member of the local copy of name, uncompressed if
    there is such a copy."""
    npy = os.path.join(local, name + ".d", "windows.npy")
    if os.path.exists(npy):
        return np.load(npy, mmap_mode="r")
    with np.load(os.path.join(local, name)) as f:
        return f["windows"]


def verify(local, todo, crcs):
    """Compares each window read with the same window of the local copy;
    returns the number compared, or exits 1 at the first difference."""
    by_file = {}
    for (path, i), crc in zip(todo, crcs):
        by_file.setdefault(os.path.basename(path), []).append((i, crc))
    bad = []
    for name, reads in sorted(by_file.items()):
        windows = local_windows(local, name)
        for i, crc in reads:
            want = zlib.crc32(np.ascontiguousarray(windows[i]))
            if crc != want:
                bad.append("%s window %d: crc32 %08x, want %08x" % (name, i, crc, want))
    if bad:
        print("%d of %d windows differ from the local copy; first: %s" % (len(bad), len(todo), bad[0]), file=sys.stderr)
        sys.exit(1)
    return len(todo)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--view", action="store_true")
    p.add_argument("--each-file-once", action="store_true")
    p.add_argument("--epoch", action="store_true")
    p.add_argument("--first", type=int, default=-1)
    p.add_argument("--files", type=int, default=0)
    p.add_argument("--forget", action="store_true")
    p.add_argument("--verify", metavar="LOCALDIR")
    p.add_argument("--shapes", action="store_true")
    a = p.parse_args()
    if a.shapes and not a.view:
        p.error("--shapes reads the shape through the member view: add --view")
    global FORGET, VERIFY
    FORGET = a.forget
    VERIFY = a.verify is not None
    with open(os.path.join(a.dir, "manifest.json")) as f:
        manifest = json.load(f)
    pairs = [(os.path.join(a.dir, e["cache_file"]), e["window_idx"]) for e in manifest]
    if a.files:
        kept = set(sorted({path for path, _ in pairs})[:a.files])
        pairs = [(path, i) for path, i in pairs if path in kept]
    rnd = random.Random(a.seed)
    if a.shapes:
        want = {}
        for path, _ in pairs:
            want[path] = want.get(path, 0) + 1
        todo = sorted(want)
        with mp.Pool(a.workers) as pool:
            start = time.monotonic()
            shapes = pool.map(shape_view, todo, chunksize=1)
            secs = time.monotonic() - start
        check_shapes(todo, shapes, want)
        print(json.dumps({"samples": len(todo), "seconds": secs, "samples_per_s": len(todo) / secs,
                          "checksum": sum(shapes)}))
        return
    if a.each_file_once:
        by_file = {}
        for path, i in pairs:
            by_file.setdefault(path, []).append(i)
        todo = [(path, rnd.choice(by_file[path])) for path in sorted(by_file)]
        rnd.shuffle(todo)
    elif a.epoch:
        todo = list(pairs)
        rnd.shuffle(todo)
        if a.first >= 0:
            todo = todo[a.first:a.first + a.samples]
    else:
        todo = [rnd.choice(pairs) for _ in range(a.samples)]
    with mp.Pool(a.workers) as pool:
        start = time.monotonic()
        values = pool.map(sample_view if a.view else sample, todo, chunksize=1)
        secs = time.monotonic() - start
    out = {"samples": len(todo), "seconds": secs, "samples_per_s": len(todo) / secs,
           "checksum": sum(v for v, _ in values)}
    if VERIFY:
        out["verified"] = verify(a.verify, todo, [crc for _, crc in values])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
