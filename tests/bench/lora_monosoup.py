#!/usr/bin/env python3
"""MonoSoup of a LoRA adapter: the low-rank route (SVD from the factors)
against soupkit's dense route on the materialised W1, side by side in one
run, on a Llama-shaped model (hidden 2048, intermediate 5632, 4 KV heads of
64 as TinyLlama-1.1B, float32) with an r = 16 adapter on q, k, v, o, gate,
up and down.

    /usr/bin/python3 tests/bench/lora_monosoup.py [--layers 2] [--rank 16] [--workdir /tmp/soupkit-lora-bench]

Prints, for each route, the best wall time of --repeat runs (alternating order) and peak RSS of `soupkit monosoup`
(one rank), the time ratio, and the largest relative Frobenius difference
and largest absolute difference between the two outputs over the adapted
tensors. W1 is materialised by `soupkit convert BASE+ADAPTER` (timed too).
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
from soupkit_testlib import SOUPKIT, read_checkpoint, write_model_dir, write_safetensors  # noqa: E402

HIDDEN, INTER, KV = 2048, 5632, 256
MODULES = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV, HIDDEN), "self_attn.v_proj": (KV, HIDDEN),
           "self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN),
           "mlp.down_proj": (HIDDEN, INTER)}


def make_inputs(workdir, layers, rank):
    rng = np.random.default_rng(0)
    base, adapter = {}, {}
    for i in range(layers):
        p = "model.layers.%d." % i
        for m, (out_f, in_f) in MODULES.items():
            base[p + m + ".weight"] = ("F32", (rng.standard_normal((out_f, in_f), dtype=np.float32) * 0.02))
            a = rng.standard_normal((rank, in_f), dtype=np.float32) * (1 / np.sqrt(in_f))
            b = rng.standard_normal((out_f, rank), dtype=np.float32) * 1e-3
            adapter["base_model.model.%s%s.lora_A.weight" % (p, m)] = ("F32", a)
            adapter["base_model.model.%s%s.lora_B.weight" % (p, m)] = ("F32", b)
        base[p + "input_layernorm.weight"] = ("F32", np.ones(HIDDEN, np.float32))
    write_model_dir(os.path.join(workdir, "base"), base, shard_bytes=1 << 30, extra_files={"config.json": "{}"})
    os.makedirs(os.path.join(workdir, "adapter"), exist_ok=True)
    with open(os.path.join(workdir, "adapter", "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules":
                   sorted(m.split(".")[-1] for m in MODULES), "bias": "none"}, f)
    write_safetensors(os.path.join(workdir, "adapter", "adapter_model.safetensors"), adapter)
    return sum(v[1].size for v in base.values())


def timed(args, workdir):
    """(seconds, peak RSS bytes) of one soupkit run (no mpirun)."""
    rss = os.path.join(workdir, "rss.txt")
    start = time.perf_counter()
    subprocess.run(["/usr/bin/time", "-q", "-f", "%M", "-o", rss, SOUPKIT, *args], check=True,
                   env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    seconds = time.perf_counter() - start
    with open(rss) as f:
        return seconds, int(f.read().split()[-1]) * 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--workdir", default="/tmp/soupkit-lora-bench")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    w = args.workdir
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    params = make_inputs(w, args.layers, args.rank)
    base, adapter = os.path.join(w, "base"), os.path.join(w, "adapter")
    w1 = os.path.join(w, "w1.safetensors")
    t_convert, _ = timed(["convert", base + "+" + adapter, w1, "--quiet"], w)
    low = os.path.join(w, "low.safetensors")
    dense = os.path.join(w, "dense.safetensors")
    common = ["--quiet", "--overwrite", "--out-dtype", "F64"]
    runs = {"low": ["monosoup", "--base", base, "--finetuned", adapter, *common, "--report",
                    os.path.join(w, "low.json"), "--out", low],
            "dense": ["monosoup", "--base", base, "--finetuned", w1, *common, "--report",
                      os.path.join(w, "dense.json"), "--out", dense]}
    times = {"low": [], "dense": []}
    rss = {}
    for i in range(args.repeat):  # alternating order; the machine is shared
        for tag in (["low", "dense"] if i % 2 == 0 else ["dense", "low"]):
            seconds, peak = timed(runs[tag], w)
            times[tag].append(seconds)
            rss[tag] = max(rss.get(tag, 0), peak)
    t_low, t_dense = min(times["low"]), min(times["dense"])
    rss_low, rss_dense = rss["low"], rss["dense"]
    got_low, _ = read_checkpoint(low)
    got_dense, _ = read_checkpoint(dense)
    worst_rel, worst_abs = 0.0, 0.0
    for name, (_, a) in got_low.items():
        if a.ndim != 2:
            continue
        b = got_dense[name][1]
        worst_rel = max(worst_rel, float(np.linalg.norm(a - b) / np.linalg.norm(b)))
        worst_abs = max(worst_abs, float(np.max(np.abs(a - b))))
    with open(os.path.join(w, "low.json")) as f:
        routes = {r.get("route") for r in json.load(f)["tensors"] if r["action"] == "monosoup"}
    print("Llama-shaped: %d layers, %.1fM parameters, adapter r=%d on q,k,v,o,gate,up,down (float32)"
          % (args.layers, params / 1e6, args.rank))
    print("materialise W1 (soupkit convert BASE+ADAPTER): %.2f s" % t_convert)
    print("low-rank route (--finetuned ADAPTER):  %7.2f s  peak RSS %6.0f MiB  routes %s"
          % (t_low, rss_low / 2 ** 20, sorted(map(str, routes))))
    print("dense route (--finetuned W1):          %7.2f s  peak RSS %6.0f MiB" % (t_dense, rss_dense / 2 ** 20))
    print("all times (s): low-rank %s, dense %s" % (["%.2f" % t for t in times["low"]],
                                                      ["%.2f" % t for t in times["dense"]]))
    print("speed-up %.1fx; max relative Frobenius difference %.2e, max absolute difference %.2e"
          % (t_dense / t_low, worst_rel, worst_abs))


if __name__ == "__main__":
    main()
