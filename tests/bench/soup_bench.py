#!/usr/bin/python3
"""Benchmark: a uniform soup of 4 ingredients of ~500 MB each (issue 5).

Compares, in one session on the same files (warm page cache):
  (a) read bandwidth: `cat` of the ingredient files to /dev/null; and the
      soup's I/O floor: that `cat` plus writing and fsyncing a file of the
      output's size with dd (no computation);
  (b) a numpy reference that loads every ingredient (np.fromfile per tensor),
      averages in float64 in ingredient order, casts and writes the soup as
      safetensors (fsynced, as soupkit does);
  (c) `soupkit soup uniform` on 1 and 2 ranks, end to end (process start,
      planning, reading, averaging, writing, fsync, rename);
and the peak resident memory per rank that soupkit reports for 2 and 4
ingredients (it must not grow with the number of ingredients).

    /usr/bin/python3 tests/bench/soup_bench.py [--size-mb 500] [--repeats 3] [--dtype F32|BF16]

Runs alternate their order from repeat to repeat; the machine is shared and
noisy, so read the ratios of each repeat, not absolute times.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from soupkit_testlib import as_float64, f32_to_bf16_bits, f64_to_bf16_bits, read_safetensors, write_safetensors  # noqa: E402

SOUPKIT = os.environ.get("SOUPKIT", os.path.join(HERE, "../../build/bin/soupkit"))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_btl_vader_single_copy_mechanism="none", OPENBLAS_NUM_THREADS="1", HDF5_USE_FILE_LOCKING="FALSE")
MPIRUN = ["mpirun", "--oversubscribe", "--bind-to", "none"]


def make_ingredient(path, seed, size_mb, dtype):
    """A GPT-2-like mix: a few large matrices and many small tensors, ~size_mb MB."""
    rng = np.random.default_rng(seed)
    esize = 4 if dtype == "F32" else 2
    tensors = {}
    big = size_mb * 1_000_000 // esize
    shapes = [(50257, 768)] + [(768, 3072)] * 4 + [(3072, 768)] * 4 + [(768, 2304)] * 4
    used = 0
    i = 0
    while used < big:
        shape = shapes[i % len(shapes)]
        n = shape[0] * shape[1]
        if used + n > big:
            shape = ((big - used) // 768 or 1, 768)
            n = shape[0] * shape[1]
        values = rng.standard_normal(shape, dtype=np.float32)
        tensors["layer%03d.weight" % i] = (dtype, values if dtype == "F32" else f32_to_bf16_bits(values))
        tensors["layer%03d.bias" % i] = (dtype, np.zeros(shape[1], dtype=np.float32 if dtype == "F32" else np.uint16))
        used += n
        i += 1
    write_safetensors(path, tensors)


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def numpy_soup(paths, out):
    """The reference: load, average in float64, cast, write (and fsync)."""
    headers = [read_header(p) for p in paths]
    names = list(headers[0][0])
    w = 1.0 / len(paths)
    result = {}
    for name in names:
        info = headers[0][0][name]
        acc = None
        for path, (header, base) in zip(paths, headers):
            e = header[name]
            begin, end = e["data_offsets"]
            if e["dtype"] == "F32":
                x = np.fromfile(path, dtype=np.float32, count=(end - begin) // 4, offset=base + begin).astype(np.float64)
            else:
                bits = np.fromfile(path, dtype=np.uint16, count=(end - begin) // 2, offset=base + begin)
                x = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
            acc = w * x if acc is None else acc + w * x
        values = acc.astype(np.float32) if info["dtype"] == "F32" else f64_to_bf16_bits(acc)
        result[name] = (info["dtype"], values.reshape(info["shape"]))
    write_safetensors(out, result)
    fd = os.open(out, os.O_RDONLY)  # durable, as soupkit's output is
    os.fsync(fd)
    os.close(fd)


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def run_soupkit(paths, out, ranks, accumulate="F64"):
    """Returns (engine seconds, busiest rank's streaming seconds, peak RSS, growth) from soupkit's last log line."""
    # One rank through /usr/bin/time: a process forked straight from this
    # (large) Python process would inherit its peak RSS across exec.
    launcher = [*MPIRUN, "-n", str(ranks)] if ranks > 1 else ["/usr/bin/time", "-f", "%M"]
    cmd = launcher + [SOUPKIT, "soup", "uniform", "--accumulate", accumulate, "--out", out, "--overwrite", *paths]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit("soupkit failed:\n%s" % proc.stderr)
    m = re.search(r"in ([\d.]+) s; busiest rank ([\d.]+) s.*peak memory ([\d.]+ \w+) \(\+([\d.]+ \w+) over",
                  proc.stderr)
    return (float(m.group(1)), float(m.group(2)), m.group(3), m.group(4)) if m else (float("nan"),) * 2 + ("?", "?")


def cat(paths):
    subprocess.run("cat %s > /dev/null" % " ".join(paths), shell=True, check=True)


def io_floor(paths, out_bytes, out):
    """The soup's unavoidable I/O with no computation: read the inputs (cat), write an output of the
    soup's size and fsync it (dd)."""
    cat(paths)
    subprocess.run(["dd", "if=/dev/zero", "of=" + out, "bs=8M", "count=%d" % (out_bytes // (8 << 20) + 1),
                    "conv=fsync", "status=none"], check=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--ingredients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="F32", choices=["F32", "BF16"])
    parser.add_argument("--dir", default=None, help="where to write the inputs (default: a temp dir under /tmp)")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="soup-bench-", dir=args.dir)
    need = args.size_mb * 1_000_000 * (args.ingredients + 4)
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise SystemExit("need %.1f GB free in %s, have %.1f GB" % (need / 1e9, workdir, free / 1e9))
    try:
        paths = []
        for i in range(args.ingredients):
            paths.append(os.path.join(workdir, "ingredient%d.safetensors" % i))
            make_ingredient(paths[-1], i, args.size_mb, args.dtype)
        total = sum(os.path.getsize(p) for p in paths)
        print("inputs: %d x %.0f MB %s = %.2f GB in %s" % (len(paths), total / len(paths) / 1e6, args.dtype, total / 1e9,
                                                           workdir))
        cat(paths)  # warm the page cache
        out = os.path.join(workdir, "soup.safetensors")
        out32 = os.path.join(workdir, "soup-f32acc.safetensors")
        runs = {
            "cat": lambda: cat(paths),
            "cat + write output (dd, fsync)": lambda: io_floor(paths, total // len(paths), out + ".dd"),
            "numpy": lambda: numpy_soup(paths, os.path.join(workdir, "numpy.safetensors")),
            "soupkit 1 rank": lambda: run_soupkit(paths, out, 1),
            "soupkit 2 ranks": lambda: run_soupkit(paths, out, 2),
            "soupkit 1 rank F32 acc": lambda: run_soupkit(paths, out32, 1, "F32"),
            "soupkit 2 ranks F32 acc": lambda: run_soupkit(paths, out32, 2, "F32"),
        }
        times = {k: [] for k in runs}
        engine = {k: [] for k in runs if k.startswith("soupkit")}
        busy = {k: [] for k in engine}
        memory = {}
        for r in range(args.repeats):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                seconds, result = timed(runs[name])
                times[name].append(seconds)
                if name.startswith("soupkit"):
                    engine[name].append(result[0])
                    busy[name].append(result[1])
                    memory[name] = result[2:]
            line = ", ".join("%s %.2f s" % (k, times[k][-1]) for k in runs)
            print("repeat %d: %s; cat/soupkit-2 %.0f%%, numpy/soupkit-2 %.1fx" %
                  (r + 1, line, 100 * times["cat"][-1] / times["soupkit 2 ranks"][-1],
                   times["numpy"][-1] / times["soupkit 2 ranks"][-1]))
        mine, theirs = read_safetensors(out)[0], read_safetensors(os.path.join(workdir, "numpy.safetensors"))[0]
        same = sorted(mine) == sorted(theirs) and all(np.array_equal(mine[k][1], theirs[k][1]) for k in mine)
        print("soupkit (F64 accumulator) tensors == numpy's, bit for bit: %s" % same)
        mine32 = read_safetensors(out32)[0]
        worst = max(float(np.max(np.abs(as_float64(mine32[k][0], mine32[k][1]) - as_float64(*theirs[k]))))
                    for k in mine32)
        print("soupkit F32 accumulator: largest difference from numpy's float64 soup: %.3g" % worst)

        print("\nend to end (process start included); 'engine': soupkit's own run time, without MPI start-up;")
        print("'streaming': the busiest rank reading, averaging and writing (no start-up, planning or fsync)")
        print("| run | median s | best s | GB/s of input (median) | vs cat (median) | numpy / this (median) |")
        print("|---|---|---|---|---|---|")
        med = {k: statistics.median(v) for k, v in times.items()}
        rows = [(k, med[k], min(times[k])) for k in runs]
        rows += [(k + " (engine)", statistics.median(v), min(v)) for k, v in engine.items()]
        rows += [(k + " (streaming)", statistics.median(v), min(v)) for k, v in busy.items()]
        for k, m, best in rows:
            print("| %s | %.2f | %.2f | %.2f | %.0f%% | %.1fx |" % (k, m, best, total / 1e9 / m, 100 * med["cat"] / m,
                                                                  med["numpy"] / m))
        print("\npeak memory per rank (soupkit's report: peak RSS, + growth over start):")
        for k, (peak, growth) in sorted(memory.items()):
            print("  %s, %d ingredients: %s (+%s)" % (k, len(paths), peak, growth))
        for ranks in (1, 2):
            _, _, peak, growth = run_soupkit(paths[:2], out, ranks)
            print("  soupkit %d rank%s, 2 ingredients: %s (+%s)" % (ranks, "s" if ranks > 1 else "", peak, growth))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
