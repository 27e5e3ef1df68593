#!/usr/bin/env python3
"""MonoSoup: soupkit against a PyTorch implementation of the same algorithm
(torch.linalg.svd, as the authors' code does), side by side on one machine,
on a GPT-2-small-shaped pair (about 124M parameters, float32).

    /usr/bin/python3 tests/bench/monosoup_vs_torch.py [--ranks 2] [--workdir /tmp/soupkit-bench]

Prints both wall times, the ratio, and the accuracy of each against a float64
numpy evaluation of the formulas (max relative Frobenius error over tensors).
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
from soupkit_testlib import MPIRUN, SOUPKIT, read_checkpoint, write_model_dir  # noqa: E402
from torch_monosoup import torch_monosoup_matrix  # noqa: E402



def gpt2_small_shapes():
    shapes = {"transformer.wte.weight": (50257, 768), "transformer.wpe.weight": (1024, 768)}
    for layer in range(12):
        p = "transformer.h.%d." % layer
        shapes.update({p + "ln_1.weight": (768,), p + "ln_1.bias": (768,),
                       p + "attn.c_attn.weight": (768, 2304), p + "attn.c_attn.bias": (2304,),
                       p + "attn.c_proj.weight": (768, 768), p + "attn.c_proj.bias": (768,),
                       p + "ln_2.weight": (768,), p + "ln_2.bias": (768,),
                       p + "mlp.c_fc.weight": (768, 3072), p + "mlp.c_fc.bias": (3072,),
                       p + "mlp.c_proj.weight": (3072, 768), p + "mlp.c_proj.bias": (768,)})
    shapes.update({"transformer.ln_f.weight": (768,), "transformer.ln_f.bias": (768,)})
    return shapes


def make_pair(workdir):
    rng = np.random.default_rng(0)
    base, fine = {}, {}
    for name, shape in gpt2_small_shapes().items():
        w0 = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
        if len(shape) == 2:
            rank = 16
            a = rng.standard_normal((shape[0], rank), dtype=np.float32)
            b = rng.standard_normal((rank, shape[1]), dtype=np.float32) * np.exp(-0.2 * np.arange(rank, dtype=np.float32))[:, None]
            upd = (a @ b) * (0.002 / rank) + rng.standard_normal(shape, dtype=np.float32) * 2e-4
        else:
            upd = rng.standard_normal(shape, dtype=np.float32) * 1e-3
        base[name] = ("F32", w0)
        fine[name] = ("F32", (w0 + upd).astype(np.float32))
    write_model_dir(os.path.join(workdir, "base"), base, shard_bytes=200_000_000, extra_files={"config.json": "{}"})
    write_model_dir(os.path.join(workdir, "finetuned"), fine, shard_bytes=200_000_000, extra_files={"config.json": "{}"})
    return sum(v[1].size for v in fine.values())


def settle(workdir):
    """Same footing for every timed run: no writeback of the previous run's
    output pending, and the inputs warm in the page cache."""
    os.sync()
    for sub in ("base", "finetuned"):
        for name in os.listdir(os.path.join(workdir, sub)):
            with open(os.path.join(workdir, sub, name), "rb") as f:
                while f.read(1 << 24):
                    pass


def torch_monosoup(workdir, threads):
    """The reference: load, torch.linalg.svd per matrix, formulas, save."""
    import torch
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    base, _ = read_checkpoint(os.path.join(workdir, "base"))
    fine, _ = read_checkpoint(os.path.join(workdir, "finetuned"))
    out = {}
    for name, (dtype, w1np) in fine.items():
        w1 = torch.from_numpy(np.array(w1np))
        if w1.dim() < 2 or name not in base:
            out[name] = (dtype, w1.numpy())
            continue
        w0 = torch.from_numpy(np.array(base[name][1]))
        res = torch_monosoup_matrix(w0.float(), w1.float())
        if res is None:
            out[name] = (dtype, w1.numpy())
            continue
        out[name] = (dtype, res.numpy())
    write_model_dir(os.path.join(workdir, "torch_out"), out, shard_bytes=200_000_000)
    return time.perf_counter() - t0


def soupkit_monosoup(workdir, ranks):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMPI_MCA_btl_vader_single_copy_mechanism="none")
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [*MPIRUN, "-n", str(ranks), SOUPKIT, "monosoup", "--base", os.path.join(workdir, "base"),
           "--finetuned", os.path.join(workdir, "finetuned"), "--out", os.path.join(workdir, "soupkit_out"),
           "--report", os.path.join(workdir, "report.json"), "--overwrite", "--shard-size", "200MB"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def accuracy(workdir):
    base, _ = read_checkpoint(os.path.join(workdir, "base"))
    fine, _ = read_checkpoint(os.path.join(workdir, "finetuned"))
    sk, _ = read_checkpoint(os.path.join(workdir, "soupkit_out"))
    th, _ = read_checkpoint(os.path.join(workdir, "torch_out"))
    worst = {"soupkit": 0.0, "torch": 0.0}
    for name, (_, w1) in fine.items():
        if w1.ndim < 2:
            continue
        want, _ = monosoup_tensor(base[name][1].astype(np.float64), w1.astype(np.float64))
        for label, got in (("soupkit", sk[name][1]), ("torch", th[name][1])):
            err = np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want)
            worst[label] = max(worst[label], err)
    return worst


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--workdir", default="/tmp/soupkit-bench-monosoup")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the generated pair and outputs")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    params = make_pair(args.workdir)
    print("GPT-2-small-shaped pair: %.1fM parameters, float32" % (params / 1e6))
    rows = []
    for rep in range(args.repeats):
        # Alternate the order so neither always runs on a warmer machine.
        if rep % 2 == 0:
            settle(args.workdir)
            t_torch = torch_monosoup(args.workdir, threads=args.ranks)
            settle(args.workdir)
            t_soup = soupkit_monosoup(args.workdir, args.ranks)
        else:
            settle(args.workdir)
            t_soup = soupkit_monosoup(args.workdir, args.ranks)
            settle(args.workdir)
            t_torch = torch_monosoup(args.workdir, threads=args.ranks)
        rows.append((t_torch, t_soup))
        print("run %d: torch %.2f s (%d threads), soupkit %.2f s (%d ranks), ratio %.2fx"
              % (rep + 1, t_torch, args.ranks, t_soup, args.ranks, t_torch / t_soup))
    best_torch = min(r[0] for r in rows)
    best_soup = min(r[1] for r in rows)
    worst = accuracy(args.workdir)
    print("best: torch %.2f s, soupkit %.2f s, soupkit is %.2fx faster" % (best_torch, best_soup, best_torch / best_soup))
    print("max relative Frobenius error vs float64 oracle: soupkit %.2e, torch %.2e" % (worst["soupkit"], worst["torch"]))
    with open(os.path.join(args.workdir, "report.json")) as f:
        summary = json.load(f)["summary"]
    print("soupkit summary:", json.dumps(summary))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
