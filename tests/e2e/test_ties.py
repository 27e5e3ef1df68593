"""`soupkit ties` (merge_method ties, TIES-Merging, Yadav et al. 2023) against
the independent float64 numpy evaluation of mergekit's definition in
ties_oracle.py: per model, trim the task vector W_i - W_base to its
int(density * numel) largest magnitudes (over the whole tensor; equal
magnitudes by lower flat index first), elect each element's sign by the sum
of the weighted trimmed deltas (>= 0 elects +), keep the weighted deltas of
that sign, divide by the agreeing weights (normalize, a zero divisor counting
as 1), scale by lambda and add to the base.

soupkit promises the oracle's float64 operations in the oracle's order, so
every floating-point tensor must equal it bit for bit after one rounding to
the output dtype. The data has many exact ties in magnitude (deltas drawn
from a few levels), so the tie rule is exercised at the threshold. Also:
F32/F16/BF16, per-model densities, normalize off, lambda, 1/2/3 ranks
byte-identical, a job file, a tensor ten times --memory-budget merged within
the budget (peak RSS of the child), and refusals naming the parameter.
"""
import os
import sys

import numpy as np

from soupkit_testlib import (NP_DTYPES, as_float64, f64_to_bf16_bits, read_checkpoint, run_soupkit,
                             run_with_peak_rss, write_model_dir)
from test_bad_input import BadInputBase
from ties_oracle import ties as oracle_ties

FLOATS = ("F64", "F32", "F16", "BF16")
JOBS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "jobs")


def store(values, dtype):
    if dtype == "BF16":
        return f64_to_bf16_bits(values)
    return np.asarray(values, dtype=np.float64).astype(NP_DTYPES[dtype])


def reference(base, models, weights, densities, lam=1.0, normalize=True, out_dtype=None):
    out = {}
    for name, (dtype, raw) in base.items():
        if dtype not in FLOATS:
            out[name] = (dtype, raw)
            continue
        target = out_dtype or dtype
        if np.size(raw) == 0:
            out[name] = (target, store(as_float64(dtype, raw), target).reshape(np.shape(raw)))
            continue
        merged = oracle_ties(as_float64(dtype, raw), [as_float64(*m[name]) for m in models], weights, densities,
                             lambda_=lam, normalize=normalize)
        out[name] = (target, store(merged, target).reshape(np.shape(raw)))
    return out


def make_base(seed, rows=300):
    rng = np.random.default_rng(seed)
    return {
        "a.weight": ("F32", rng.standard_normal((rows, 257)).astype(np.float32)),
        "b.bias": ("BF16", f64_to_bf16_bits(rng.standard_normal(53))),
        "c.half": ("F16", rng.standard_normal((8, 5, 3)).astype(np.float16)),
        "d.ids": ("I64", np.arange(10, dtype=np.int64) * 7),
        "z.empty": ("F32", np.zeros((0, 4), dtype=np.float32)),
    }


def make_model(base, seed):
    """The base plus a task vector of a few levels (exact in every dtype at these magnitudes), so many
    elements tie in magnitude, and some are exactly zero."""
    rng = np.random.default_rng(seed)
    levels = np.array([-0.5, -0.25, -0.125, 0.0, 0.125, 0.25, 0.5])
    out = {}
    for name, (dtype, raw) in base.items():
        if dtype not in FLOATS:
            out[name] = (dtype, raw)
            continue
        b = as_float64(dtype, raw)
        m = b + rng.choice(levels, size=np.shape(b))
        out[name] = (dtype, store(m, dtype).reshape(np.shape(raw)))
    return out


class TiesBase(BadInputBase):
    def setUp(self):
        super().setUp()
        self.base = make_base(1)
        self.base_path = self.path("base")
        write_model_dir(self.base_path, self.base, extra_files={"config.json": '{"model_type": "toy"}'})
        self.models, self.paths = [], []
        for i in range(3):
            self.models.append(make_model(self.base, 10 + i))
            self.paths.append(self.path("m%d" % i))
            write_model_dir(self.paths[-1], self.models[-1])

    def args(self, out, *extra, models=None):
        return ["ties", "--base", self.base_path, "--out", out, *extra, *(models or self.paths)]

    def run_ok(self, jobs):
        procs = self.run_many(jobs)
        for proc in procs:
            self.assertEqual(proc.returncode, 0, "%s\n%s\n%s" % (" ".join(proc.args), proc.stdout, proc.stderr))
        return procs

    def assert_same_tensors(self, got_path, expected):
        got, _ = read_checkpoint(got_path)
        self.assertEqual(sorted(got), sorted(expected))
        for name, (dtype, raw) in expected.items():
            self.assertEqual(got[name][0], dtype, name)
            np.testing.assert_array_equal(got[name][1], np.asarray(raw).reshape(got[name][1].shape), err_msg=name)


class Ties(TiesBase):
    def test_densities_weights_lambda_normalize_and_dtypes(self):
        outs = {k: self.path(k) for k in ("plain", "dense", "off", "bf16", "chunked")}
        self.run_ok([
            (self.args(outs["plain"], "--weights", "1,1,1", "--densities", "0.3,0.3,0.3"), None),
            (self.args(outs["dense"], "--weights", "1,0.5,2"), 2),  # density 1: sign election only
            (self.args(outs["off"], "--weights", "0.7,-0.4,1.3", "--densities", "0.5,0.2,0.9", "--lambda", "0.6",
                       "--normalize", "false"), 3),
            (self.args(outs["bf16"], "--weights", "1,2,3", "--densities", "0.25,0.5,0.75", "--out-dtype", "BF16"),
             2),
            (self.args(outs["chunked"], "--weights", "1,1,1", "--densities", "0.3,0.3,0.3", "--memory-budget",
                       "1MB"), None),
        ])
        b, ms = self.base, self.models
        want = reference(b, ms, [1, 1, 1], [0.3, 0.3, 0.3])
        self.assert_same_tensors(outs["plain"], want)
        self.assert_same_tensors(outs["chunked"], want)
        self.assert_same_tensors(outs["dense"], reference(b, ms, [1, 0.5, 2], [1, 1, 1]))
        self.assert_same_tensors(outs["off"], reference(b, ms, [0.7, -0.4, 1.3], [0.5, 0.2, 0.9], 0.6,
                                                         normalize=False))
        self.assert_same_tensors(outs["bf16"], reference(b, ms, [1, 2, 3], [0.25, 0.5, 0.75], out_dtype="BF16"))
        # The options matter: trimming, normalising and the tie rule change the result.
        got = read_checkpoint(outs["plain"])[0]["a.weight"][1]
        self.assertFalse(np.array_equal(got, reference(b, ms, [1, 1, 1], [1, 1, 1])["a.weight"][1]))
        self.assertFalse(np.array_equal(got, reference(b, ms, [1, 1, 1], [0.3] * 3, normalize=False)["a.weight"][1]))
        reversed_ties = reference({"a.weight": b["a.weight"]},
                                  [{"a.weight": (m["a.weight"][0], m["a.weight"][1][::-1, ::-1].copy())} for m in ms],
                                  [1, 1, 1], [0.3] * 3)
        self.assertFalse(np.array_equal(got[::-1, ::-1], reversed_ties["a.weight"][1]),
                         "the data has no ties at the threshold")

    def test_rank_counts_give_the_same_bytes(self):
        outs = {r: self.path("out-%s" % r) for r in (None, 2, 3)}
        extra = ["--weights", "0.3,-1.1,0.9", "--densities", "0.4,0.6,0.1", "--memory-budget", "2MB"]
        self.run_ok([(self.args(outs[r], *extra), r) for r in outs])
        blobs = []
        for out in outs.values():
            self.assert_same_tensors(out, reference(self.base, self.models, [0.3, -1.1, 0.9], [0.4, 0.6, 0.1]))
            with open(os.path.join(out, "model.safetensors"), "rb") as f:
                blobs.append(f.read())
        self.assertEqual(blobs[0], blobs[1], "1 and 2 ranks differ")
        self.assertEqual(blobs[0], blobs[2], "1 and 3 ranks differ")

    def test_job_file(self):
        job, out = self.path("ties.yaml"), self.path("from-job")
        with open(job, "w") as f:
            f.write("merge_method: ties\nbase_model: %s\nmodels:\n"
                    "  - model: %s\n    parameters: {weight: 0.5, density: 0.4}\n"
                    "  - model: %s\n    parameters: {weight: 1.0, density: 0.7}\n"
                    "  - model: %s\n    parameters: {weight: 2.0}\n"  # density: the default, 1
                    "parameters:\n  lambda: 0.9\n  normalize: true\n  int8_mask: true\n"
                    "out_dtype: float16\nout_path: %s\n" % (self.base_path, *self.paths, out))
        self.run_ok([(["run", job], 2)])
        self.assert_same_tensors(out, reference(self.base, self.models, [0.5, 1.0, 2.0], [0.4, 0.7, 1.0], 0.9,
                                                out_dtype="F16"))


    def test_the_example_job(self):
        run_soupkit(["example", "demo"], cwd=self.tmp)
        run_soupkit(["run", os.path.join(JOBS, "ties.yaml")], ranks=2, cwd=self.tmp)
        base, _ = read_checkpoint(self.path("demo", "base"))
        finetuned, _ = read_checkpoint(self.path("demo", "finetuned"))
        self.assert_same_tensors(self.path("demo", "ties"), reference(base, [finetuned], [1.0], [1.0]))


class TiesMemory(TiesBase):
    def test_a_tensor_ten_times_the_budget_streams_within_it(self):
        # A 160 MiB float32 tensor (base and two models) against a 16 MiB budget.
        rng = np.random.default_rng(5)
        b = rng.standard_normal((4096, 10240), dtype=np.float32)
        base = {"w": ("F32", b)}
        models = [{"w": ("F32", b + rng.choice(np.float32([-0.5, -0.25, 0, 0.25, 0.5]), size=b.shape))},
                  {"w": ("F32", b + rng.standard_normal(b.shape, dtype=np.float32))}]
        write_model_dir(self.path("big-base"), base)
        paths = [self.path("big-m0"), self.path("big-m1")]
        for p, m in zip(paths, models):
            write_model_dir(p, m)
        small = {"w": ("F32", np.ones((4, 4), dtype=np.float32))}
        for name in ("small-base", "small-m"):
            write_model_dir(self.path(name), small)
        budget = 16 << 20
        common = ["--memory-budget", "16MiB", "--weights", "1,0.5", "--densities", "0.2,0.35"]
        proc, baseline = run_with_peak_rss(["ties", "--base", self.path("small-base"), "--out", self.path("small-out"),
                                            *common, self.path("small-m"), self.path("small-m")])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        proc, peak = run_with_peak_rss(["ties", "--base", self.path("big-base"), "--out", self.path("big-out"),
                                        *common, *paths], timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        print("ties on a 160 MiB tensor, 16 MiB budget: peak RSS %.1f MiB, baseline %.1f MiB, growth %.1f MiB"
              % (peak / 2**20, baseline / 2**20, (peak - baseline) / 2**20), file=sys.stderr)
        self.assertLess(peak, baseline + budget, "peak RSS %.1f MiB over a %.1f MiB baseline and a 16 MiB budget"
                        % (peak / 2**20, baseline / 2**20))
        del b
        self.assert_same_tensors(self.path("big-out"), reference(base, models, [1, 0.5], [0.2, 0.35]))


class TiesRefusals(TiesBase):
    def test_bad_parameters(self):
        m0, m1 = self.paths[:2]
        cases = [
            ("density-keeps-nothing", self.args("OUT", "--weights", "1,1", "--densities", "0.001,0.5",
                                                models=[m0, m1]), ["'b.bias'", "density 0.001", m0], ["keeps no"]),
            ("density-negative", self.args("OUT", "--weights", "1,1", "--densities", "-0.5,0.5", models=[m0, m1]),
             ["density -0.5", m0], ["density"]),
            ("unknown", self.args("OUT", "--weights", "1,1", "--rescal", "true", models=[m0, m1]), ["rescal"],
             ["unrecognised", "unknown"]),
        ]
        outs = [self.path("out-" + c[0]) for c in cases]
        procs = self.run_many([([o if a == "OUT" else a for a in c[1]], None) for c, o in zip(cases, outs)])
        for (label, _, names, words), out, proc in zip(cases, outs, procs):
            with self.subTest(label):
                self.assert_failed(proc, names, words)
                self.assert_no_output(out)


if __name__ == "__main__":
    import unittest
    unittest.main()
