#!/usr/bin/python3
"""Benchmark (not CI): a uniform soup of three bf16 models whose total size
exceeds the machine's memory, run inside a cgroup memory limit (issue 13).

    /usr/bin/python3 tests/bench/over_ram_soup.py [--size-gb 9] [--limit-gb 4] [--ranks 1,2]
                                                  [--dir DIR] [--keep]

Needs root (a cgroup v1 memory controller at /sys/fs/cgroup/memory or a v2
hierarchy at /sys/fs/cgroup, and /proc/sys/vm/drop_caches) and about
4 x size-gb of free disk.

Inputs: three Hugging Face style directories of bf16 safetensors shards
(2 GB shards), Llama-like matrices of 4096 x 14336 and 4096 x 4096, random
bf16 values, written tensor by tensor (the generator never holds more than
one 64 MiB block).

Measured, each after `sync; echo 3 > /proc/sys/vm/drop_caches` (cold cache):
  - the inputs' sequential read bandwidth: `cat` of all shards to /dev/null;
  - `soupkit soup uniform` on 1 (and 2) ranks, inside a fresh cgroup whose
    memory limit is --limit-gb (page cache counts against it, so the soup
    must stream), wall time end to end, peak RSS per rank (/usr/bin/time),
    and the cgroup's peak usage (memory.max_usage_in_bytes / memory.peak);
  - a spot check: 4 MiB from each of a few tensors, read with numpy at their
    safetensors offsets from the inputs and the output, the mean computed
    in float64 as docs/soups.md defines it (acc = w x_1, then acc + w x_i,
    w = 1/3) and rounded once to bf16 (nearest even), compared bit for bit.
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from soupkit_testlib import f64_to_bf16_bits  # noqa: E402
from soup_bench import ENV, MPIRUN, SOUPKIT  # noqa: E402

SHARD_BYTES = 2_000_000_000
BLOCK_ELEMENTS = 32 << 20  # 64 MiB of bf16 per generated block
SHAPES = [("mlp.up_proj.weight", (14336, 4096)), ("mlp.down_proj.weight", (4096, 14336)),
          ("self_attn.q_proj.weight", (4096, 4096)), ("self_attn.o_proj.weight", (4096, 4096))]


# ---------------------------------------------------------------- inputs

def plan_tensors(size_bytes):
    """Tensor names and shapes, layer by layer, until size_bytes of bf16 are reached."""
    tensors, total, layer = [], 0, 0
    while total < size_bytes:
        for suffix, shape in SHAPES:
            tensors.append(("model.layers.%d.%s" % (layer, suffix), shape))
            total += 2 * shape[0] * shape[1]
        layer += 1
    return tensors


def write_model(path, tensors, seed):
    """Shards of at most SHARD_BYTES, each safetensors header written first, data streamed after."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards, current, size = [], [], 0
    for name, shape in tensors:
        nbytes = 2 * shape[0] * shape[1]
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    if current:
        shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        file = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        header, offset = {}, 0
        for name, shape in shard:
            n = 2 * shape[0] * shape[1]
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = file
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(os.path.join(path, file), "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for name, shape in shard:
                left = shape[0] * shape[1]
                while left:
                    n = min(left, BLOCK_ELEMENTS)
                    # Random bf16 of magnitude in [2^-15, 2) and random sign: any finite
                    # values do for a soup's speed; the spot check reads the real bytes.
                    bits = rng.integers(0x3800, 0x4000, size=n, dtype=np.uint16)
                    bits |= (rng.integers(0, 2, size=n, dtype=np.uint16) << 15)
                    f.write(bits.tobytes())
                    left -= n
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "torch_dtype": "bfloat16"}, f)


def shard_files(path):
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))


# ---------------------------------------------------------------- machine

def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Cgroup:
    """A fresh memory cgroup with a limit; `wrap(cmd)` runs cmd inside it."""

    def __init__(self, limit_bytes):
        name = "soupkit-bench-%d" % os.getpid()
        if os.path.isdir("/sys/fs/cgroup/memory"):
            self.dir = os.path.join("/sys/fs/cgroup/memory", name)
            os.makedirs(self.dir)
            self._write("memory.limit_in_bytes", limit_bytes)
            self.peak_file = "memory.max_usage_in_bytes"
        else:
            self.dir = os.path.join("/sys/fs/cgroup", name)
            os.makedirs(self.dir)
            self._write("memory.max", limit_bytes)
            self.peak_file = "memory.peak"

    def _write(self, file, value):
        with open(os.path.join(self.dir, file), "w") as f:
            f.write(str(value))

    def reset_peak(self):
        if self.peak_file == "memory.max_usage_in_bytes":
            self._write(self.peak_file, 0)

    def peak(self):
        try:
            with open(os.path.join(self.dir, self.peak_file)) as f:
                return int(f.read())
        except OSError:
            return float("nan")

    def wrap(self, cmd):
        procs = os.path.join(self.dir, "cgroup.procs")
        return ["sh", "-c", 'echo $$ > "%s" && exec "$@"' % procs, "sh", *cmd]

    def remove(self):
        try:
            os.rmdir(self.dir)
        except OSError:
            pass


# ---------------------------------------------------------------- runs

def run_soup(paths, out, ranks, cgroup, rss_prefix):
    cmd = [SOUPKIT, "soup", "uniform", "--out", out, "--overwrite", *paths]
    if ranks > 1:
        # Each rank through /usr/bin/time, writing its own file.
        cmd = [*MPIRUN, "-n", str(ranks), "sh", "-c",
               '/usr/bin/time -o "%s.$OMPI_COMM_WORLD_RANK" -f %%M "$@"' % rss_prefix, "sh", *cmd]
    else:
        cmd = ["/usr/bin/time", "-o", rss_prefix, "-f", "%M", *cmd]
    cgroup.reset_peak()
    t0 = time.perf_counter()
    proc = subprocess.run(cgroup.wrap(cmd), env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit("soupkit failed (exit %d):\n%s" % (proc.returncode, proc.stderr[-4000:]))
    files = [rss_prefix] if ranks == 1 else ["%s.%d" % (rss_prefix, r) for r in range(ranks)]
    rss = [int(open(f).read().split()[-1]) * 1024 for f in files]
    budget = re.search(r"budget ([\d.]+ \w+)", proc.stderr)
    return {"seconds": seconds, "rss": rss, "cgroup_peak": cgroup.peak(), "log": proc.stderr.strip().splitlines()[-1],
            "budget": budget.group(1) if budget else "?"}


def tensor_location(path, name):
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            file = os.path.join(path, json.load(f)["weight_map"][name])
    else:  # one shard
        file = os.path.join(path, "model.safetensors")
    with open(file, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return file, 8 + n + header[name]["data_offsets"][0]


def read_bf16(path, name, count):
    file, offset = tensor_location(path, name)
    bits = np.fromfile(file, dtype="<u2", count=count, offset=offset)
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def spot_check(inputs, out, tensors):
    count = 2 << 20
    names = [tensors[0][0], tensors[len(tensors) // 2][0], tensors[-1][0]]
    equal = total = 0
    for name in names:
        # soupkit's definition (docs/soups.md): acc = w x_1, acc += w x_i, w = 1/n, float64.
        w = 1.0 / len(inputs)
        mean = None
        for p in inputs:
            x = read_bf16(p, name, count)
            mean = w * x if mean is None else mean + w * x
        file, offset = tensor_location(out, name)
        got = np.fromfile(file, dtype="<u2", count=count, offset=offset)
        want = f64_to_bf16_bits(mean)
        equal += int(np.count_nonzero(got == want))
        total += count
    return names, equal, total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gb", type=float, default=9)
    parser.add_argument("--limit-gb", type=float, default=4)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="over-ram-", dir="/work")
    os.makedirs(work, exist_ok=True)
    mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print("machine: nproc %d, %.1f GiB memory, load average %s" % (os.cpu_count(), mem_total / 2**30,
                                                                  open("/proc/loadavg").read().split()[:3]))
    tensors = plan_tensors(int(args.size_gb * 1e9))
    paths = [os.path.join(work, "model%d" % i) for i in range(3)]
    stamp = os.path.join(work, "inputs-%s.json" % args.size_gb)
    if not os.path.exists(stamp):
        t = time.perf_counter()
        for i, p in enumerate(paths):
            shutil.rmtree(p, ignore_errors=True)
            write_model(p, tensors, seed=i)
        open(stamp, "w").write(json.dumps(len(tensors)))
        print("generated the inputs in %.0f s" % (time.perf_counter() - t))
    files = [f for p in paths for f in shard_files(p)]
    input_bytes = sum(os.path.getsize(f) for f in files)
    print("inputs: 3 bf16 models, %d tensors each, %.2f GB in all (%.2f x the machine's memory)"
          % (len(tensors), input_bytes / 1e9, input_bytes / mem_total))

    drop_caches()
    t = time.perf_counter()
    subprocess.run("cat %s > /dev/null" % " ".join(files), shell=True, check=True)
    cat_seconds = time.perf_counter() - t
    print("cold sequential read (cat): %.1f s, %.0f MB/s" % (cat_seconds, input_bytes / cat_seconds / 1e6))

    cgroup = Cgroup(int(args.limit_gb * 2**30))
    try:
        out = os.path.join(work, "soup")
        for ranks in [int(r) for r in args.ranks.split(",")]:
            drop_caches()
            r = run_soup(paths, out, ranks, cgroup, os.path.join(work, "rss-%d" % ranks))
            print("soupkit soup uniform, %d rank%s, cgroup limit %.1f GiB: %.1f s (%.0f MB/s of input, %.2f x cat); "
                  "peak RSS per rank %s MiB; cgroup peak (page cache included) %.2f GiB"
                  % (ranks, "" if ranks == 1 else "s", args.limit_gb, r["seconds"], input_bytes / r["seconds"] / 1e6,
                     r["seconds"] / cat_seconds, ", ".join("%.0f" % (x / 2**20) for x in r["rss"]),
                     r["cgroup_peak"] / 2**30))
            print("  soupkit: " + r["log"])
            names, equal, total = spot_check(paths, out, tensors)
            print("  spot check (first 2M elements of %s): %d of %d bf16 values bit-identical to numpy's float64 "
                  "weighted sum (w = 1/3, in input order) rounded to nearest even" % (", ".join(names), equal, total))
    finally:
        cgroup.remove()
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
