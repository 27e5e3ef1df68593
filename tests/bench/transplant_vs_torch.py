"""Benchmark: `soupkit transplant` against a PyTorch batched OMP of the same
algorithm, on the same data and machine (never run by CTest).

Data: a dictionary of N shared tokens and T new tokens, hidden size H, random
float32 embeddings (no early stops: every fit takes all k steps), written as
two model directories with synthetic byte-level tokenizers whose first N
pieces are shared. The base ties its embeddings, so one matrix is fitted.

soupkit: `mpirun -n RANKS soupkit transplant --k K`, end to end (start-up,
reading, OMP, writing) and the rebuilt matrix's own seconds from its report.
PyTorch: the same algorithm (float32 correlations by one matmul per step
over a batch of targets, argmax |<r, atom>|, refit by an incrementally
extended Cholesky factor in float64, rebuild with the base rows), RANKS
threads, data already in memory. Both run in this one session, alternating.

    /usr/bin/python3 tests/bench/transplant_vs_torch.py [--shared 30000 --new 5000 --hidden 1024 --k 64 --ranks 2]
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from soupkit_testlib import write_model_dir  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def byte_level_tokenizer(pieces):
    vocab = {p: i for i, p in enumerate(pieces)}
    return {"version": "1.0", "added_tokens": [], "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "vocab": vocab, "merges": []}}


def make_models(root, shared, new, hidden, seed=0):
    rng = np.random.default_rng(seed)
    donor_pieces = ["tok%d" % i for i in range(shared + new)]
    base_pieces = ["tok%d" % i for i in range(shared)] + ["base%d" % i for i in range(new)]
    donor = rng.standard_normal((shared + new, hidden)).astype(np.float32)
    base = rng.standard_normal((shared + new, hidden)).astype(np.float32)
    for name, matrix, pieces in (("donor", donor, donor_pieces), ("base", base, base_pieces)):
        write_model_dir(os.path.join(root, name), {"model.embed_tokens.weight": ("F32", matrix)},
                        extra_files={"tokenizer.json": json.dumps(byte_level_tokenizer(pieces)),
                                     "config.json": json.dumps({"vocab_size": len(pieces), "hidden_size": hidden})})
    return donor, base


def torch_omp_transplant(dictionary, targets, base_atoms, k, batch=1024):
    """Batched OMP in PyTorch, the algorithm soupkit runs: returns the new base rows."""
    D = torch.from_numpy(dictionary)
    B = torch.from_numpy(base_atoms).double()
    out = []
    for first in range(0, targets.shape[0], batch):
        X = torch.from_numpy(targets[first:first + batch])
        X64 = X.double()
        b = X.shape[0]
        R = X.clone()
        L = torch.zeros(b, k, k, dtype=torch.float64)
        rhs = torch.zeros(b, k, dtype=torch.float64)
        idx = torch.zeros(b, k, dtype=torch.long)
        coef = None
        for s in range(k):
            C = (R @ D.T).abs_()
            if s:
                C.scatter_(1, idx[:, :s], 0.0)
            j = C.argmax(dim=1)
            idx[:, s] = j
            a = D[j].double()
            diag = (a * a).sum(1)
            if s:
                chosen = D[idx[:, :s]].double()
                w = torch.linalg.solve_triangular(L[:, :s, :s], torch.bmm(chosen, a[:, :, None]), upper=False)
                L[:, s, :s] = w[:, :, 0]
                diag = diag - (w[:, :, 0] ** 2).sum(1)
            L[:, s, s] = diag.clamp_min(1e-300).sqrt()
            rhs[:, s] = (a * X64).sum(1)
            Ls = L[:, :s + 1, :s + 1]
            y = torch.linalg.solve_triangular(Ls, rhs[:, :s + 1, None], upper=False)
            coef = torch.linalg.solve_triangular(Ls.transpose(1, 2), y, upper=True)
            chosen = D[idx[:, :s + 1]].double()
            R = (X64 - torch.bmm(coef.transpose(1, 2), chosen)[:, 0]).float()
        out.append(torch.bmm(coef.transpose(1, 2), B[idx])[:, 0].float())
    return torch.cat(out).numpy()


def run_soupkit(args, root, ranks):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none", OPENBLAS_NUM_THREADS="1",
               HDF5_USE_FILE_LOCKING="FALSE")
    out, report = os.path.join(root, "out"), os.path.join(root, "report.json")
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(ranks), args.soupkit, "transplant",
           "--base", os.path.join(root, "base"), "--donor", os.path.join(root, "donor"), "--out", out,
           "--k", str(args.k), "--report", report, "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    seconds = time.perf_counter() - t0
    with open(report) as f:
        rep = json.load(f)
    return seconds, rep["matrices"][0]["seconds"], out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shared", type=int, default=30000)
    p.add_argument("--new", type=int, default=5000)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--soupkit", default=os.path.join(ROOT, "build", "bin", "soupkit"))
    args = p.parse_args()
    torch.set_num_threads(args.ranks)
    root = tempfile.mkdtemp(prefix="transplant-bench-")
    try:
        donor, base = make_models(root, args.shared, args.new, args.hidden)
        dictionary, targets = donor[:args.shared], donor[args.shared:]
        flops = 2.0 * args.k * args.shared * args.hidden * args.new
        print("data: %d shared, %d new tokens, hidden %d, k %d; correlation GEMMs %.2e flop" %
              (args.shared, args.new, args.hidden, args.k, flops))
        rows = []
        for r in range(args.repeats):
            for side in (("soupkit", "torch") if r % 2 == 0 else ("torch", "soupkit")):
                if side == "soupkit":
                    total, fit, out = run_soupkit(args, root, args.ranks)
                    rows.append(("soupkit", total, fit))
                    print("soupkit %d ranks: %.2f s end to end, %.2f s fitting the matrix" % (args.ranks, total, fit),
                          flush=True)
                else:
                    t0 = time.perf_counter()
                    ref = torch_omp_transplant(dictionary, targets, base[:args.shared], args.k)
                    seconds = time.perf_counter() - t0
                    rows.append(("torch", seconds, seconds))
                    print("torch %d threads: %.2f s" % (args.ranks, seconds), flush=True)
        # Same answers: compare the new rows (float32 rounding and rare argmax near-ties aside).
        from soupkit_testlib import read_checkpoint
        got = read_checkpoint(out)[0]["model.embed_tokens.weight"][1][args.shared:args.shared + args.new]
        rel = np.linalg.norm(got - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-30)
        print("rows agreeing with torch to 1e-3: %.2f%%, median relative difference %.2e" %
              (100 * np.mean(rel < 1e-3), np.median(rel)))
        best = {name: min(r[1] for r in rows if r[0] == name) for name in ("soupkit", "torch")}
        best_fit = min(r[2] for r in rows if r[0] == "soupkit")
        print("best: soupkit %.2f s end to end (%.0f tokens/s), fit %.2f s (%.0f tokens/s); torch %.2f s (%.0f tokens/s)"
              % (best["soupkit"], args.new / best["soupkit"], best_fit, args.new / best_fit, best["torch"],
                 args.new / best["torch"]))
        print("ratio torch / soupkit: %.2fx end to end, %.2fx fit only" % (best["torch"] / best["soupkit"],
                                                                         best["torch"] / best_fit))
        rate = flops / best_fit / args.ranks
        print("soupkit correlation throughput %.1f GFLOP/s per rank" % (rate / 1e9))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
