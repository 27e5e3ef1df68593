#!/usr/bin/env python3
"""The distributed engine: parallel efficiency 1 -> 2 ranks and load balance
on a model with very uneven tensor sizes (GPT-2 small: a 50257x768 embedding
next to 768x768 matrices and 1-D norms), peak memory per rank against
--memory-budget on a checkpoint 10x larger than the budget, and a projection
of a 70B-parameter MonoSoup on 1, 8 and 64 nodes from the measured
per-tensor costs.

    /usr/bin/python3 tests/bench/engine_scaling.py [--repeats 3] [--workdir /tmp/soupkit-bench-engine]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
sys.path.insert(0, HERE)
from monosoup_vs_torch import make_pair, settle  # noqa: E402
from soupkit_testlib import MPIRUN, SOUPKIT  # noqa: E402

SUMMARY = re.compile(r"in ([\d.]+) s; busiest rank ([\d.]+) s, load balance (\d+)%, peak memory ([\d.]+ \w+) "
                     r"\(\+([\d.]+) (\w+) over")


def run(ranks, args):
    cmd = [*MPIRUN, "-n", str(ranks), SOUPKIT, *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), proc.stderr))
    m = SUMMARY.search(proc.stderr)
    growth = float(m.group(5)) * {"B": 2**-20, "KiB": 2**-10, "MiB": 1, "GiB": 1024}[m.group(6)]
    return {"wall": wall, "engine": float(m.group(1)), "busiest": float(m.group(2)),
            "balance": int(m.group(3)) / 100, "growth_mib": growth, "stderr": proc.stderr}


def monosoup(workdir, ranks, *extra):
    out = os.path.join(workdir, "out-%d.h5" % ranks)
    return run(ranks, ["monosoup", "--base", os.path.join(workdir, "base"), "--finetuned",
                       os.path.join(workdir, "finetuned"), "--out", out, "--overwrite",
                       "--report", os.path.join(workdir, "report-%d.json" % ranks), *extra])


def peak_rss_single(args):
    """Peak RSS (MiB) of one soupkit process as the kernel measured it."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", SOUPKIT, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


def estimated_cost(t):
    """The engine's MonoSoup cost model (src/methods/monosoup.cpp, plan())."""
    shape = t["shape"]
    numel = int(np.prod(shape)) if shape else 1
    cost = 3 * 4 * numel / 1.5e9
    if t.get("action") == "monosoup":
        m, n = shape[0], numel // shape[0]
        r = min(m, n)
        cost += 6.3e-11 * m * n * r + 7.2e-11 * r ** 3
    return cost


def schedule_efficiencies(report, ranks):
    """Load-balance efficiency (sum of work / (ranks x makespan)) of three
    ways to place the measured tensors: static largest-first by *estimated*
    cost (what the engine does), dynamic self-scheduling (each rank takes the
    next tensor, in estimated-largest-first order, when it is free), and
    largest-first by the *actual* costs (a bound no online scheme beats by
    much)."""
    tensors = [t for t in report["tensors"] if "seconds" in t]
    actual = np.array([t["seconds"] for t in tensors])
    estimate = np.array([estimated_cost(t) for t in tensors])
    order = np.argsort(-estimate, kind="stable")

    def static(by):
        loads, est = np.zeros(ranks), np.zeros(ranks)
        for i in np.argsort(-by, kind="stable"):
            r = np.argmin(est)
            est[r] += by[i]
            loads[r] += actual[i]
        return loads.max()

    loads = np.zeros(ranks)
    for i in order:
        loads[np.argmin(loads)] += actual[i]
    dynamic = loads.max()
    total = actual.sum()
    return {name: total / (ranks * wall) for name, wall in
            (("static LPT (estimated costs)", static(estimate)), ("dynamic", dynamic),
             ("LPT on actual costs", static(actual)))}


def llama70b_shapes():
    """Llama-2-70B's weight matrices (GQA: 8 KV heads of 128)."""
    shapes = [("embed", 32000, 8192), ("lm_head", 32000, 8192)]
    for layer in range(80):
        shapes += [("q", 8192, 8192), ("k", 1024, 8192), ("v", 1024, 8192), ("o", 8192, 8192),
                   ("gate", 28672, 8192), ("up", 28672, 8192), ("down", 8192, 28672)]
    return shapes


def fit_costs(report):
    """Least-squares fit of seconds = a*m*n*r + b*r^3 + c*m*n over the
    measured MonoSoup tensors (r = min(m, n)); the engine's own model has the
    same terms."""
    rows, secs = [], []
    for t in report["tensors"]:
        if t.get("action") != "monosoup" or "seconds" not in t:
            continue
        m, n = t["shape"][0], int(np.prod(t["shape"][1:]))
        r = min(m, n)
        rows.append([m * n * r, r ** 3, m * n])
        secs.append(t["seconds"])
    coef, *_ = np.linalg.lstsq(np.array(rows, float), np.array(secs), rcond=None)
    return np.maximum(coef, 0)


def lpt_wall(costs, ranks):
    """Wall time of the engine's assignment: largest first onto the least loaded rank."""
    loads = np.zeros(ranks)
    for c in sorted(costs, reverse=True):
        loads[np.argmin(loads)] += c
    return loads.max()


def tensor_costs(coef, cost=None):
    """(one-core seconds, m, n) of every 70B matrix, largest first: from the
    fit's coefficients, or from cost(m, n) when given (another route's model)."""
    def seconds(m, n):
        return cost(m, n) if cost is not None else float(coef @ [m * n * min(m, n), min(m, n) ** 3, m * n])
    return sorted(((seconds(m, n), m, n) for _, m, n in llama70b_shapes()), reverse=True)


def project(coef, ranks, grid_efficiency, with_grid_count=False, cost=None):
    """Compute time of a 70B MonoSoup on `ranks` single-core ranks: the
    engine's largest-first balance of whole tensors, or, when a few huge
    tensors dominate, the largest K on a grid of all ranks (at the grid
    efficiency: a number, or a function of (m, n, ranks) such as
    grid_scaling_model.py's) and the rest balanced; the best K is taken.
    cost(m, n), if given, replaces the fit's one-core seconds per tensor."""
    def efficiency(m, n):
        return grid_efficiency(m, n, ranks) if callable(grid_efficiency) else grid_efficiency

    tensors = tensor_costs(coef, cost)
    costs = [c for c, _, _ in tensors]
    best, best_k = lpt_wall(costs, ranks), 0
    for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, len(costs)):
        if k > len(costs):
            break
        grid = sum(c / (ranks * efficiency(m, n)) for c, m, n in tensors[:k])
        wall = grid + (lpt_wall(costs[k:], ranks) if k < len(costs) else 0)
        if wall < best:
            best, best_k = wall, k
    return (sum(costs), best, best_k) if with_grid_count else (sum(costs), best)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/soupkit-bench-engine")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if not os.path.exists(os.path.join(args.workdir, "finetuned")):
        make_pair(args.workdir)

    print("== MonoSoup, GPT-2 small (124M float32, 148 tensors), 1 vs 2 ranks, alternating")
    results = {1: [], 2: []}
    for rep in range(args.repeats):
        for ranks in ((1, 2) if rep % 2 == 0 else (2, 1)):
            settle(args.workdir)
            r = monosoup(args.workdir, ranks)
            results[ranks].append(r)
            print("  run %d, %d rank(s): wall %.2f s (engine %.2f s), busiest %.2f s, load balance %.0f%%"
                  % (rep + 1, ranks, r["wall"], r["engine"], r["busiest"], 100 * r["balance"]))
    for key in ("wall", "engine"):
        t1 = min(r[key] for r in results[1])
        t2 = min(r[key] for r in results[2])
        print("  best %s: 1 rank %.2f s, 2 ranks %.2f s, speed-up %.2fx, parallel efficiency %.0f%%"
              % (key, t1, t2, t1 / t2, 100 * t1 / (2 * t2)))
    print("  load balance on 2 ranks: %s" % ", ".join("%.0f%%" % (100 * r["balance"]) for r in results[2]))

    print("== Assignment: measured per-tensor seconds (1-rank run) placed three ways")
    with open(os.path.join(args.workdir, "report-1.json")) as f:
        report = json.load(f)
    for ranks in (2, 4, 8):
        eff = schedule_efficiencies(report, ranks)
        print("  %d ranks: " % ranks + ", ".join("%s %.1f%%" % (k, 100 * v) for k, v in eff.items()))

    print("== Memory: convert to bf16 HDF5 with --memory-budget = checkpoint / 10")
    size = sum(os.path.getsize(os.path.join(args.workdir, "finetuned", f))
               for f in os.listdir(os.path.join(args.workdir, "finetuned")))
    budget_mib = size / 10 / 2**20
    small = os.path.join(args.workdir, "small")
    if not os.path.exists(small):
        os.makedirs(small)
        from soupkit_testlib import write_model_dir
        write_model_dir(small, {"w": ("F32", np.ones((4, 4), np.float32))})
    baseline = peak_rss_single(["convert", small, os.path.join(args.workdir, "small.h5"), "--overwrite"])
    budget = "%dMiB" % budget_mib
    peak = peak_rss_single(["convert", os.path.join(args.workdir, "finetuned"), os.path.join(args.workdir, "c.h5"),
                            "--dtype", "BF16", "--memory-budget", budget, "--overwrite"])
    print("  checkpoint %.0f MiB, budget %s: 1 rank peak RSS %.0f MiB = %.0f MiB at start + %.0f MiB (kernel's "
          "figure)" % (size / 2**20, budget, peak, baseline, peak - baseline))
    r = run(2, ["convert", os.path.join(args.workdir, "finetuned"), os.path.join(args.workdir, "c2.h5"), "--dtype",
                "BF16", "--memory-budget", budget, "--overwrite"])
    print("  2 ranks: largest growth over start %.1f MiB per rank (engine's getrusage figure)" % r["growth_mib"])
    # MonoSoup: working memory per matrix is ~22 bytes/element + 16 r^2; the
    # embedding (50257x768) needs ~850 MB on one rank, ~470 MB per rank on a 2-rank grid.
    for budget in ("2GiB", "600MiB"):
        r = monosoup(args.workdir, 2, "--memory-budget", budget)
        grid = "to a 2-rank ScaLAPACK grid" in r["stderr"]
        print("  monosoup, 2 ranks, budget %s: growth %.0f MiB per rank%s, %.2f s"
              % (budget, r["growth_mib"], " (embedding on the grid)" if grid else "", r["wall"]))

    print("== Projection: Llama-2-70B MonoSoup (bf16 in/out), from this machine's measured per-tensor costs, grid tasks\n"
          "   at an assumed 50% efficiency (grid_scaling_model.py model gives the measured model's instead)")
    with open(os.path.join(args.workdir, "report-1.json")) as f:
        coef = fit_costs(json.load(f))
    print("  fitted seconds = %.3g*m*n*r + %.3g*r^3 + %.3g*m*n (one core)" % tuple(coef))
    params = sum(m * n for _, m, n in llama70b_shapes())
    io_bytes = 3 * 2 * params  # read two bf16 checkpoints, write one
    for nodes in (1, 8, 64):
        total, compute = project(coef, 64 * nodes, 0.5)
        io = io_bytes / (2e9 * nodes)
        print("  %2d node(s) x 64 cores: compute %.0f s (of %.1f core-hours), I/O %.0f s at 2 GB/s per node: "
              "wall %.0f-%.0f s (%.2f-%.2f h)" % (nodes, compute, total / 3600, io, max(compute, io), compute + io,
                                                 max(compute, io) / 3600, (compute + io) / 3600))
    shutil.rmtree(os.path.join(args.workdir, "c.h5"), ignore_errors=True)


if __name__ == "__main__":
    main()
