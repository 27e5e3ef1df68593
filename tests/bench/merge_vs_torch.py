#!/usr/bin/python3
"""Benchmark: soupkit's ties and linear merges against PyTorch implementations
of mergekit's definitions (issue 11).

Inputs: a float32 base and 3 float32 fine-tunes (base + small noise) of
~500 MB each, Llama-shaped (embeddings and head 32000 x 1024, a few layers of
1024 x 1024 attention and 1024 x 2816 MLP matrices, 1-D norms), as sharded
safetensors model directories.

Side by side in one session, the order alternating from repeat to repeat:
  - `soupkit ties --base B --weights 1,1,1 --densities 0.5,0.5,0.5 M1 M2 M3`
    and `soupkit linear --weights 1,1,1 M1 M2 M3`, on 1 rank and under
    `mpirun -n 2`, and on 1 rank with `--memory-budget 256MB`;
  - the same merges in PyTorch, per tensor as mergekit runs them (each tensor
    read from every model with numpy, torch.from_numpy, mergekit's
    definition in torch ops in float32, the output written as safetensors and
    fsynced), with torch.set_num_threads(1) and (2) against soupkit's 1 and 2
    ranks.
Every run is its own process, timed from process start to output written
(wall clock around the subprocess), with its peak RSS from /usr/bin/time
(under mpirun: each rank started through /usr/bin/time, the ranks' peaks
summed; mpirun's own few MB are left out). Before each run the previous
outputs are synced and the inputs read once (warm page cache, no pending
write-back).

    /usr/bin/python3 tests/bench/merge_vs_torch.py [--size-mb 500] [--repeats 2] [--dir DIR] [--keep]
                                                   [--torch-select topk|argsort]

--torch-select: mergekit's sparsify.magnitude takes `argsort(|d|,
descending)[:k]`; `topk` (the default) keeps the same k elements with
torch.topk, 3-4x faster on this machine, so the default is the stronger
baseline. The machine is shared and noisy: read the ratios within a repeat.
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
from soupkit_testlib import NP_DTYPES, read_checkpoint, write_model_dir  # noqa: E402
from soup_bench import ENV, MPIRUN, SOUPKIT  # noqa: E402  (the binary, the MPI environment and launcher)
MODELS = 3
WEIGHTS = [1.0] * MODELS
DENSITIES = [0.5] * MODELS
SHARD_BYTES = 200_000_000
VOCAB, HIDDEN, INTERMEDIATE = 32000, 1024, 2816


# ---------------------------------------------------------------- inputs

def llama_shapes(size_mb):
    """Embeddings, head and as many layers as bring a float32 model nearest size_mb."""
    per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTERMEDIATE + 2 * HIDDEN
    rest = size_mb * 1_000_000 // 4 - 2 * VOCAB * HIDDEN - HIDDEN
    layers = max(1, round(rest / per_layer))
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = "model.layers.%d." % i
        for proj in ("q", "k", "v", "o"):
            shapes[p + "self_attn.%s_proj.weight" % proj] = (HIDDEN, HIDDEN)
        shapes[p + "mlp.gate_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[p + "mlp.up_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[p + "mlp.down_proj.weight"] = (HIDDEN, INTERMEDIATE)
        shapes[p + "input_layernorm.weight"] = (HIDDEN,)
        shapes[p + "post_attention_layernorm.weight"] = (HIDDEN,)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes, layers


def make_models(workdir, size_mb):
    """base: N(0, 0.02) matrices, norms near 1; fine-tune i: base + N(0, 1e-3) (norms 1e-2), float32."""
    shapes, layers = llama_shapes(size_mb)
    config = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
                         "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers, "vocab_size": VOCAB,
                         "torch_dtype": "float32"})
    rng = np.random.default_rng(11)
    base = {}
    for name, shape in shapes.items():
        values = rng.standard_normal(shape, dtype=np.float32)
        base[name] = ("F32", 1 + 0.1 * values if len(shape) == 1 else 0.02 * values)
    paths = [os.path.join(workdir, "base")]
    write_model_dir(paths[0], base, SHARD_BYTES, extra_files={"config.json": config})
    for m in range(MODELS):
        fine = {}
        for name, (dtype, values) in base.items():
            scale = np.float32(1e-2 if values.ndim == 1 else 1e-3)
            fine[name] = (dtype, values + scale * rng.standard_normal(values.shape, dtype=np.float32))
        paths.append(os.path.join(workdir, "finetune%d" % (m + 1)))
        write_model_dir(paths[-1], fine, SHARD_BYTES, extra_files={"config.json": config})
    return paths, sum(int(np.prod(s)) for s in shapes.values())


def files_of(model_dir):
    return sorted(os.path.join(model_dir, f) for f in os.listdir(model_dir) if f.endswith(".safetensors"))


# ------------------------------------------------------ the torch worker

class SafetensorsDir:
    """A model directory's tensors, each read on demand as numpy from the file's bytes."""

    def __init__(self, path):
        self.where = {}
        for file in files_of(path):
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            for name, info in header.items():
                self.where[name] = (file, 8 + n, info)

    def names(self):
        return list(self.where)

    def load(self, name):
        file, data_start, info = self.where[name]
        begin, end = info["data_offsets"]
        dtype = np.dtype(NP_DTYPES[info["dtype"]])
        values = np.fromfile(file, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=data_start + begin)
        return info["dtype"], values.reshape(info["shape"])


def torch_magnitude(torch, delta, density, select):
    """mergekit's sparsify.magnitude (no rescale): keep the int(density * numel) largest |delta|."""
    if density >= 1:
        return delta
    k = int(density * delta.numel())
    assert k > 0
    mask = torch.zeros_like(delta)
    w = delta.abs().view(-1).float()
    if select == "argsort":
        top = torch.argsort(w, descending=True)[:k]
    else:
        top = torch.topk(w, k, sorted=False).indices
    mask.view(-1)[top] = 1
    return delta * mask


def torch_ties(torch, base, models, weights, densities, select):
    """mergekit's GTA steps with magnitude sparsification and sum consensus (ties), lambda 1, normalize."""
    deltas = [torch_magnitude(torch, m.to(base.dtype) - base, d, select) for m, d in zip(models, densities)]
    deltas = torch.stack(deltas, dim=0)
    w = torch.tensor(weights, dtype=deltas.dtype)
    while w.dim() < deltas.dim():
        w.unsqueeze_(-1)
    weighted = deltas * w
    sign = weighted.sign()
    majority = (weighted.sum(dim=0) >= 0).to(base.dtype) * 2 - 1
    mask = sign == majority
    mixed = (weighted * mask).sum(dim=0)
    divisor = (w * mask).sum(dim=0)
    divisor[divisor == 0] = 1
    mixed /= divisor
    return (base + mixed).to(base.dtype)


def torch_linear(torch, models, weights):
    """mergekit's linear merge: weighted sum over the stacked tensors / sum of weights."""
    stacked = torch.stack(models, dim=0)
    w = torch.tensor(weights, dtype=stacked.dtype)
    while w.dim() < stacked.dim():
        w.unsqueeze_(-1)
    return (w * stacked).sum(dim=0) / w.sum(dim=0)


def torch_worker(args):
    """One merge in this process; prints its phases as JSON."""
    t0 = time.perf_counter()
    import torch
    torch.set_num_threads(args.threads)
    t_import = time.perf_counter() - t0
    base = SafetensorsDir(args.base)
    models = [SafetensorsDir(p) for p in args.models]
    out, t_load, t_merge = {}, 0.0, 0.0
    for name in base.names():
        t = time.perf_counter()
        dtype, b = base.load(name)
        ms = [torch.from_numpy(m.load(name)[1]) for m in models]
        t_load += time.perf_counter() - t
        t = time.perf_counter()
        if args.torch_worker == "ties":
            merged = torch_ties(torch, torch.from_numpy(b), ms, WEIGHTS, DENSITIES, args.select)
        else:
            merged = torch_linear(torch, ms, WEIGHTS)
        out[name] = (dtype, merged.numpy())
        t_merge += time.perf_counter() - t
    t = time.perf_counter()
    write_model_dir(args.out, out, SHARD_BYTES)
    for file in files_of(args.out):  # durable, as soupkit's output is
        fd = os.open(file, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    t_write = time.perf_counter() - t
    print(json.dumps({"import": t_import, "load": t_load, "merge": t_merge, "write": t_write}))


# --------------------------------------------------------------- runners

def settle(paths):
    """Same footing for every run: no pending write-back, the inputs in the page cache."""
    os.sync()
    subprocess.run("cat %s > /dev/null" % " ".join(f for p in paths for f in files_of(p)), shell=True, check=True)


def timed_process(cmd, rss_files):
    """Runs cmd; returns (wall seconds, summed peak RSS in bytes of the rss_files /usr/bin/time writes, stdout, stderr)."""
    for f in rss_files:
        if os.path.exists(f):
            os.remove(f)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit("failed (%d): %s\n%s\n%s" % (proc.returncode, " ".join(cmd), proc.stdout, proc.stderr))
    peak = 0
    for f in rss_files:
        with open(f) as fh:
            peak += int(fh.read().split()[-1]) * 1024  # %M: KiB
    return seconds, peak, proc.stdout, proc.stderr


def soupkit_run(method, paths, out, ranks, rss_prefix, budget=None):
    base, models = paths[0], paths[1:]
    args = [method, "--out", out, "--overwrite", "--weights", ",".join("%g" % w for w in WEIGHTS)]
    if method == "ties":
        args += ["--base", base, "--densities", ",".join("%g" % d for d in DENSITIES)]
    if budget:
        args += ["--memory-budget", budget]
    args += models
    if ranks == 1:
        # Through /usr/bin/time, also because a process forked by this (large)
        # Python would report the parent's peak RSS as its own.
        cmd = ["/usr/bin/time", "-q", "-f", "%M", "-o", rss_prefix + ".0", SOUPKIT, *args]
    else:
        wrap = 'exec /usr/bin/time -q -f %M -o "$0.$OMPI_COMM_WORLD_RANK" "$@"'
        cmd = [*MPIRUN, "-n", str(ranks), "sh", "-c", wrap, rss_prefix, SOUPKIT, *args]
    seconds, peak, _, err = timed_process(cmd, ["%s.%d" % (rss_prefix, r) for r in range(ranks)])
    m = re.search(r"in ([\d.]+) s; busiest rank ([\d.]+) s", err)
    return {"seconds": seconds, "rss": peak, "engine": float(m.group(1)) if m else float("nan"),
            "busiest": float(m.group(2)) if m else float("nan")}


def torch_run(method, paths, out, threads, rss_prefix, select):
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["/usr/bin/time", "-q", "-f", "%M", "-o", rss_prefix + ".0", sys.executable, os.path.abspath(__file__),
           "--torch-worker", method, "--threads", str(threads), "--select", select, "--base", paths[0],
           "--out", out, "--models", *paths[1:]]
    seconds, peak, stdout, _ = timed_process(cmd, [rss_prefix + ".0"])
    phases = json.loads(stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "rss": peak, "phases": phases}


# ----------------------------------------------------------- correctness

FLIP = 1e-6  # far above float32 rounding of these values (|w| < ~1.1), far below a delta (~1e-3)


def compare(got_dir, want_dir):
    """Per tensor and overall: max |got - want|, elements beyond one float32 ulp of want, and the flat
    indices of elements differing by more than FLIP (a kept delta in one output and not the other)."""
    got, want = read_checkpoint(got_dir)[0], read_checkpoint(want_dir)[0]
    assert sorted(got) == sorted(want), "different tensor names"
    r = {"max": 0.0, "max_rounding": 0.0, "beyond_ulp": 0, "elements": 0, "flips": {}}
    for name, (_, w) in want.items():
        diff = np.abs(got[name][1].astype(np.float64) - w.astype(np.float64)).ravel()
        r["max"] = max(r["max"], float(diff.max()))
        r["beyond_ulp"] += int(np.count_nonzero(diff > np.spacing(np.abs(w)).astype(np.float64).ravel()))
        r["elements"] += w.size
        flips = np.flatnonzero(diff > FLIP)
        if flips.size:
            r["flips"][name] = flips
        r["max_rounding"] = max(r["max_rounding"], float(np.max(np.where(diff > FLIP, 0, diff))))
    return r


def flips_at_threshold_ties(paths, flips):
    """How many of the flipped elements have, in some model, a task-vector magnitude equal to that
    model's k-th largest: the equal magnitudes at the cut, which soupkit ranks by lower flat index and
    torch.topk / argsort in an unspecified order."""
    base = read_checkpoint(paths[0])[0]
    models = [read_checkpoint(p)[0] for p in paths[1:]]
    explained = 0
    for name, idx in flips.items():
        b = base[name][1].astype(np.float64).ravel()
        at_cut = np.zeros(idx.size, dtype=bool)
        for m, density in zip(models, DENSITIES):
            mag = np.abs(m[name][1].astype(np.float64).ravel() - b)
            k = int(density * mag.size)
            kth = np.partition(mag, mag.size - k)[mag.size - k]
            at_cut |= mag[idx] == kth
        explained += int(at_cut.sum())
    return explained


def oracle_check(paths, soupkit_dir, prefix="model.layers.0.self_attn."):
    """soupkit's ties output against tests/e2e/ties_oracle.py (float64, numpy) rounded once to float32,
    on the tensors whose names start with prefix: (elements equal, elements)."""
    from ties_oracle import ties as oracle_ties
    base = read_checkpoint(paths[0])[0]
    models = [read_checkpoint(p)[0] for p in paths[1:]]
    out = read_checkpoint(soupkit_dir)[0]
    equal = total = 0
    for name in out:
        if not name.startswith(prefix):
            continue
        want = oracle_ties(base[name][1], [m[name][1] for m in models], WEIGHTS, DENSITIES).astype(np.float32)
        equal += int(np.count_nonzero(want.view(np.uint32) == out[name][1].view(np.uint32)))
        total += want.size
    return equal, total


def same_files(dir_a, dir_b):
    """The two outputs' safetensors files are identical, byte for byte."""
    import filecmp
    names = [os.path.basename(f) for f in files_of(dir_a)]
    return names == [os.path.basename(f) for f in files_of(dir_b)] and all(
        filecmp.cmp(os.path.join(dir_a, n), os.path.join(dir_b, n), shallow=False) for n in names)


def exact_linear_error(paths, out_dir):
    """Max |out - (sum of models) / 3 in float64| over all tensors."""
    models = [read_checkpoint(p)[0] for p in paths[1:]]
    out = read_checkpoint(out_dir)[0]
    worst = 0.0
    for name, (_, o) in out.items():
        exact = sum(m[name][1].astype(np.float64) for m in models) / len(models)
        worst = max(worst, float(np.max(np.abs(o.astype(np.float64) - exact))))
    return worst


# -------------------------------------------------------------------- main

def describe_machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    free = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.strip()
    return "nproc %d, CPU %s\n%s" % (os.cpu_count(), cpu, free)


def load_average():
    return "%.2f %.2f %.2f" % os.getloadavg()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (inputs are reused next time)")
    parser.add_argument("--torch-select", default="topk", choices=["topk", "argsort"])
    parser.add_argument("--only", default=None, help="comma-separated run names to time (default: all)")
    # The worker's own arguments (the benchmark runs itself per torch merge).
    parser.add_argument("--torch-worker", choices=["ties", "linear"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--select", default="topk", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        return torch_worker(args)

    started = time.perf_counter()
    print(describe_machine())
    workdir = args.dir or tempfile.mkdtemp(prefix="merge-bench-")
    os.makedirs(workdir, exist_ok=True)
    need = args.size_mb * 1_000_000 * (MODELS + 1 + 7)
    if shutil.disk_usage(workdir).free < need:
        raise SystemExit("need %.1f GB free in %s" % (need / 1e9, workdir))
    try:
        stamp = os.path.join(workdir, "inputs-%dMB" % args.size_mb)
        paths = [os.path.join(workdir, "base")] + [os.path.join(workdir, "finetune%d" % (m + 1)) for m in range(MODELS)]
        if os.path.exists(stamp):
            with open(stamp) as f:
                params = int(f.read())
        else:
            t = time.perf_counter()
            paths, params = make_models(workdir, args.size_mb)
            with open(stamp, "w") as f:
                f.write(str(params))
            print("generated the inputs in %.0f s" % (time.perf_counter() - t))
        size = sum(os.path.getsize(f) for f in files_of(paths[0]))
        print("inputs: base + %d fine-tunes, %.1fM float32 parameters, %.0f MB each, in %s"
              % (MODELS, params / 1e6, size / 1e6, workdir))

        out = lambda name: os.path.join(workdir, "out-" + name.replace(" ", "-"))  # noqa: E731
        rss = lambda name: os.path.join(workdir, "rss-" + name.replace(" ", "-"))  # noqa: E731
        sel = args.torch_select
        runs = {
            "soupkit ties 1": lambda n: soupkit_run("ties", paths, out(n), 1, rss(n)),
            "soupkit ties 2": lambda n: soupkit_run("ties", paths, out(n), 2, rss(n)),
            "soupkit linear 1": lambda n: soupkit_run("linear", paths, out(n), 1, rss(n)),
            "soupkit linear 2": lambda n: soupkit_run("linear", paths, out(n), 2, rss(n)),
            "soupkit ties 1 256MB": lambda n: soupkit_run("ties", paths, out(n), 1, rss(n), "256MB"),
            "soupkit linear 1 256MB": lambda n: soupkit_run("linear", paths, out(n), 1, rss(n), "256MB"),
            "torch ties 1": lambda n: torch_run("ties", paths, out(n), 1, rss(n), sel),
            "torch ties 2": lambda n: torch_run("ties", paths, out(n), 2, rss(n), sel),
            "torch linear 1": lambda n: torch_run("linear", paths, out(n), 1, rss(n), sel),
            "torch linear 2": lambda n: torch_run("linear", paths, out(n), 2, rss(n), sel),
        }
        if args.only:
            runs = {k: v for k, v in runs.items() if k in args.only.split(",")}
        results = {k: [] for k in runs}
        loads = []
        for r in range(args.repeats):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            loads.append(load_average())
            print("\nrepeat %d (%s first), load average %s" % (r + 1, order[0], loads[-1]))
            for name in order:
                settle(paths)
                load = load_average()
                res = runs[name](name)
                res["loadavg"] = load
                results[name].append(res)
                extra = ""
                if "engine" in res:
                    extra = "engine %.2f s, busiest rank %.2f s" % (res["engine"], res["busiest"])
                else:
                    extra = "import %(import).2f, load %(load).2f, merge %(merge).2f, write %(write).2f s" % res["phases"]
                print("  %-24s %7.2f s  peak RSS %7.0f MiB  (%s; load before %s)"
                      % (name, res["seconds"], res["rss"] / 2**20, extra, load), flush=True)
            ratios = []
            for ranks in (1, 2):
                last = {k: v[-1]["seconds"] for k, v in results.items() if v}
                sk, sl = last.get("soupkit ties %d" % ranks), last.get("soupkit linear %d" % ranks)
                tt, tl = last.get("torch ties %d" % ranks), last.get("torch linear %d" % ranks)
                if sk and tt:
                    ratios.append("%d: torch/soupkit ties %.2fx" % (ranks, tt / sk))
                if sk and sl:
                    ratios.append("soupkit ties/linear %.2fx" % (sk / sl))
                if sl and tl:
                    ratios.append("torch/soupkit linear %.2fx" % (tl / sl))
            print("  ratios (ranks = threads) " + "; ".join(ratios))

        print("\n| run | median s | best s | peak RSS (MiB, max over repeats) |")
        print("|---|---|---|---|")
        for name, rs in results.items():
            secs = [x["seconds"] for x in rs]
            print("| %s | %.2f | %.2f | %.0f |" % (name, statistics.median(secs), min(secs),
                                                   max(x["rss"] for x in rs) / 2**20))

        print("\ncorrectness:")
        have = lambda n: n in runs and os.path.isdir(out(n))  # noqa: E731
        for a, b in (("soupkit ties 1", "soupkit ties 2"), ("soupkit ties 1", "soupkit ties 1 256MB"),
                     ("soupkit linear 1", "soupkit linear 2"), ("soupkit linear 1", "soupkit linear 1 256MB")):
            if have(a) and have(b):
                print("  %s == %s, byte for byte: %s" % (a, b, same_files(out(a), out(b))))
        for sk, th in (("soupkit ties 1", "torch ties 1"), ("soupkit linear 1", "torch linear 1")):
            if not (have(sk) and have(th)):
                continue
            r = compare(out(sk), out(th))
            flips = sum(v.size for v in r["flips"].values())
            line = ("  %s vs %s: max |diff| %.3g over %d elements; %d differ by more than one float32 ulp; "
                    "%d by more than %g (max |diff| of the others %.3g)"
                    % (sk, th, r["max"], r["elements"], r["beyond_ulp"], flips, FLIP, r["max_rounding"]))
            if flips and "ties" in sk:
                line += "; of those, %d at a tie of equal magnitudes at some model's top-k cut" % (
                    flips_at_threshold_ties(paths, r["flips"]))
            print(line)
        if have("soupkit ties 1"):
            equal, total = oracle_check(paths, out("soupkit ties 1"))
            print("  soupkit ties 1 vs ties_oracle.py (float64) rounded to float32, layer 0's attention: "
                  "%d of %d elements bit-identical" % (equal, total))
        for name in ("soupkit linear 1", "torch linear 1"):
            if have(name):
                print("  %s vs the exact float64 mean: max |diff| %.3g" % (name, exact_linear_error(paths, out(name))))
        print("\nload average per repeat: %s" % "; ".join(loads))
        print("total benchmark time %.0f s" % (time.perf_counter() - started))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
