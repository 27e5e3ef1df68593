#!/usr/bin/env python3
"""MonoSoup on a TinyLlama-1.1B-shaped bf16 pair: soupkit against the
MonoSoup authors' per-layer algorithm in PyTorch (whole model in memory,
torch.linalg.svd per matrix, as their script runs it), side by side in one
run, same thread count, both end to end (read, compute, write), with the
peak resident memory of each.

    /usr/bin/python3 tests/bench/llama_monosoup.py [--ranks 2] [--layers 22] [--repeats 2]
        [--budget 600MB]    # also run soupkit with this --memory-budget (grid route forced for big matrices)
        [--workdir /tmp/soupkit-llama-bench] [--keep]

Shapes (TinyLlama-1.1B): hidden 2048, intermediate 5632, 22 layers, 4 KV
heads of 64 (k, v: 256 x 2048), vocabulary 32000 (embed_tokens and an
untied lm_head), RMS norms; generated, bf16, sharded Hugging Face directories.
The fine-tune's update is a decaying rank-64 part plus dense noise, in
float32 before both checkpoints are rounded to bf16 (so dW also holds the
bf16 rounding, as a real bf16 fine-tune's does).

Accuracy (the 1e-4 tolerance on float32 edits, the bf16 cast aside): one
untimed soupkit run with --out-dtype F32 is compared against an independent
numpy float64 SVD evaluation of the formulas on the first and last layers'
matrices (--check-layers); the bf16 outputs of soupkit and PyTorch are
compared with each other (elements that differ, largest difference in bf16
ulps).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from monosoup_oracle import monosoup_tensor  # noqa: E402
from soupkit_testlib import (MPIRUN, SOUPKIT, as_float64, f32_to_bf16_bits, read_checkpoint,  # noqa: E402
                             write_model_dir)
from monosoup_vs_torch import settle  # noqa: E402  (same footing for every timed run)
from torch_monosoup import torch_monosoup_matrix  # noqa: E402

HIDDEN, INTER, KV, VOCAB = 2048, 5632, 256, 32000
MATRICES = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV, HIDDEN), "self_attn.v_proj": (KV, HIDDEN),
            "self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN),
            "mlp.down_proj": (HIDDEN, INTER)}
SHARD = 1 << 30


def llama_shapes(layers):
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = "model.layers.%d." % i
        shapes[p + "input_layernorm.weight"] = (HIDDEN,)
        for m, shape in MATRICES.items():
            shapes[p + m + ".weight"] = shape
        shapes[p + "post_attention_layernorm.weight"] = (HIDDEN,)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes


def make_pair(workdir, layers):
    rng = np.random.default_rng(0)
    base, fine = {}, {}
    for name, shape in llama_shapes(layers).items():
        if len(shape) == 1:
            w0 = np.ones(shape, np.float32) + rng.standard_normal(shape, dtype=np.float32) * 0.01
            upd = rng.standard_normal(shape, dtype=np.float32) * 1e-3
        else:
            w0 = rng.standard_normal(shape, dtype=np.float32) * 0.02
            rank = 64
            a = rng.standard_normal((shape[0], rank), dtype=np.float32)
            b = rng.standard_normal((rank, shape[1]), dtype=np.float32)
            b *= np.exp(-0.08 * np.arange(rank, dtype=np.float32))[:, None]
            upd = (a @ b) * (4e-3 / rank) + rng.standard_normal(shape, dtype=np.float32) * 2e-4
        w0_bits = f32_to_bf16_bits(w0)
        base[name] = ("BF16", w0_bits)
        fine[name] = ("BF16", f32_to_bf16_bits(as_float64("BF16", w0_bits).astype(np.float32) + upd))
    extra = {"config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
                                        "intermediate_size": INTER, "num_hidden_layers": layers,
                                        "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": VOCAB,
                                        "torch_dtype": "bfloat16"})}
    write_model_dir(os.path.join(workdir, "base"), base, shard_bytes=SHARD, extra_files=extra)
    write_model_dir(os.path.join(workdir, "finetuned"), fine, shard_bytes=SHARD, extra_files=extra)
    return sum(v[1].size for v in fine.values())


def torch_reference(workdir, threads):
    """The authors' algorithm, as their script runs it: both state dicts in
    memory as torch bf16 tensors, per matrix dW in float32,
    torch.linalg.svd, the formulas (torch_monosoup.py), the result cast back
    to bf16, saved."""
    import torch
    torch.set_num_threads(threads)

    def load(sub):
        tensors, _ = read_checkpoint(os.path.join(workdir, sub))
        return {n: torch.from_numpy(np.array(v).view(np.int16)).view(torch.bfloat16) for n, (_, v) in tensors.items()}

    base, fine = load("base"), load("finetuned")
    out = {}
    for name, w1 in fine.items():
        w0 = base.get(name)
        if w1.dim() < 2 or w0 is None or w0.shape != w1.shape:
            out[name] = w1
            continue
        result = torch_monosoup_matrix(w0.float(), w1.float())
        out[name] = w1 if result is None else result.to(torch.bfloat16)
    write_model_dir(os.path.join(workdir, "torch_out"),
                    {n: ("BF16", t.view(torch.int16).numpy().view(np.uint16)) for n, t in out.items()}, shard_bytes=SHARD)


def timed(cmd, workdir, env=None):
    """(seconds, peak RSS in bytes of the largest process) of one command.
    Under mpirun, /usr/bin/time's %M is the largest rank's (the ranks are
    mpirun's children on one node)."""
    rss = os.path.join(workdir, "rss.txt")
    t0 = time.perf_counter()
    subprocess.run(["/usr/bin/time", "-q", "-f", "%M", "-o", rss, *cmd], check=True, env=env, capture_output=True)
    seconds = time.perf_counter() - t0
    with open(rss) as f:
        return seconds, int(f.read().split()[-1]) * 1024


def mpi_env():
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMPI_MCA_btl_vader_single_copy_mechanism="none")
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def soupkit_cmd(workdir, ranks, out, extra=()):
    return [*MPIRUN, "-n", str(ranks), SOUPKIT, "monosoup", "--base", os.path.join(workdir, "base"),
            "--finetuned", os.path.join(workdir, "finetuned"), "--out", os.path.join(workdir, out),
            "--report", os.path.join(workdir, out + ".json"), "--overwrite", "--shard-size", "1GB",
            "--progress", "none", *extra]


def torch_cmd(workdir, threads):
    return [sys.executable, os.path.abspath(__file__), "--torch-only", "--workdir", workdir, "--ranks", str(threads)]


def compare_outputs(workdir, check_layers, layers):
    base, _ = read_checkpoint(os.path.join(workdir, "base"))
    fine, _ = read_checkpoint(os.path.join(workdir, "finetuned"))
    f32, _ = read_checkpoint(os.path.join(workdir, "soupkit_f32"))
    sk, _ = read_checkpoint(os.path.join(workdir, "soupkit_out"))
    th, _ = read_checkpoint(os.path.join(workdir, "torch_out"))
    worst, checked = 0.0, 0
    wanted = {"model.layers.%d." % (i % layers) for i in check_layers}
    for name, (dtype, w1) in fine.items():
        if w1.ndim < 2 or not any(name.startswith(p) for p in wanted):
            continue
        want, _ = monosoup_tensor(as_float64("BF16", base[name][1]), as_float64("BF16", w1))
        got = f32[name][1].astype(np.float64)
        worst = max(worst, np.linalg.norm(got - want) / np.linalg.norm(want))
        checked += 1
    result = {"checked": checked, "worst_f32": worst, "torch": bf16_difference(sk, th)}
    budget = os.path.join(workdir, "soupkit_budget")
    if os.path.isdir(budget):
        result["budget"] = bf16_difference(sk, read_checkpoint(budget)[0])
    return result


def bf16_difference(a, b):
    """Of two bf16 checkpoints: the fraction of elements that differ, and the
    largest difference relative to its tensor's largest magnitude."""
    differ, total, worst = 0, 0, 0.0
    for name, (dtype, bits) in a.items():
        x, y = as_float64(dtype, bits), as_float64(dtype, b[name][1])
        diff = np.abs(x - y)
        differ += int(np.count_nonzero(diff))
        total += diff.size
        scale = max(np.abs(x).max(), np.abs(y).max())
        if scale > 0:
            worst = max(worst, diff.max() / scale)
    return differ / total, worst


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget", help="also time soupkit with this --memory-budget")
    parser.add_argument("--budget-options", default="",
                        help="more soupkit options for the --budget run (e.g. '--scalapack-min-dim 2048')")
    parser.add_argument("--check-layers", type=int, nargs="*", default=[0, -1])
    parser.add_argument("--workdir", default="/tmp/soupkit-llama-bench")
    parser.add_argument("--keep", action="store_true", help="keep the generated pair and outputs")
    parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_only:
        torch_reference(args.workdir, args.ranks)
        return
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.perf_counter()
    params = make_pair(args.workdir, args.layers)
    print("TinyLlama-shaped pair: %d layers, %.1fM parameters, bf16 (%.2f GB each), generated in %.0f s"
          % (args.layers, params / 1e6, 2 * params / 1e9, time.perf_counter() - t0), flush=True)
    env = mpi_env()
    runs = {"torch": lambda: timed(torch_cmd(args.workdir, args.ranks), args.workdir),
            "soupkit": lambda: timed(soupkit_cmd(args.workdir, args.ranks, "soupkit_out"), args.workdir, env)}
    if args.budget:
        runs["soupkit --memory-budget " + args.budget] = lambda: timed(
            soupkit_cmd(args.workdir, args.ranks, "soupkit_budget", ["--memory-budget", args.budget, *args.budget_options.split()]),
            args.workdir, env)
    results = {label: [] for label in runs}
    for rep in range(args.repeats):
        # Alternate the order so that no side always runs on a warmer machine.
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for label in order:
            settle(args.workdir)
            results[label].append(runs[label]())
            seconds, rss = results[label][-1]
            print("run %d: %-32s %7.1f s, peak RSS %6.0f MiB (largest process), load average %.1f"
                  % (rep + 1, label, seconds, rss / 2**20, os.getloadavg()[0]), flush=True)
    best = {label: min(r[0] for r in rows) for label, rows in results.items()}
    peak = {label: max(r[1] for r in rows) for label, rows in results.items()}
    for label in runs:
        print("best %-32s %7.1f s  peak %6.0f MiB  torch/this %.2fx"
              % (label, best[label], peak[label] / 2**20, best["torch"] / best[label]))
    with open(os.path.join(args.workdir, "soupkit_out.json")) as f:
        report = json.load(f)
    ks = [t["k"] for t in report["tensors"] if t.get("action") == "monosoup"]
    grid = [t["name"] for t in report["tensors"] if "grid" in t]
    print("soupkit: %d matrices reweighted, k min/median/max %d/%d/%d, %d on a grid"
          % (len(ks), min(ks), int(np.median(ks)), max(ks), len(grid)))
    if args.budget:
        with open(os.path.join(args.workdir, "soupkit_budget.json")) as f:
            grid = [t["name"] for t in json.load(f)["tensors"] if "grid" in t]
        print("with --memory-budget %s: %d matrices on the grid (%s)" % (args.budget, len(grid), ", ".join(grid[:4])
                                                                         + (", ..." if len(grid) > 4 else "")))
    subprocess.run(soupkit_cmd(args.workdir, args.ranks, "soupkit_f32", ["--out-dtype", "F32"]), check=True, env=env,
                   capture_output=True)
    acc = compare_outputs(args.workdir, args.check_layers, args.layers)
    print("accuracy: --out-dtype F32 against numpy float64 SVD on %d matrices: max relative Frobenius error %.2e"
          % (acc["checked"], acc["worst_f32"]))
    for key, label in (("torch", "PyTorch"), ("budget", "soupkit with --memory-budget")):
        if key in acc:
            print("bf16 outputs, soupkit against %s: %.4f%% of elements differ, by at most %.2e of the tensor's largest"
                  " magnitude"
                  % (label, 100 * acc[key][0], acc[key][1]))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
