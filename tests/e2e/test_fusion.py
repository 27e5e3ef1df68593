"""`model_stock`, `nearswap` and `arcee_fusion` (soupkit model-stock,
nearswap, arcee-fusion) against oracle_fusion.py, the independent numpy
float64 evaluation of mergekit's definitions (itself checked against torch),
through mergekit_oracle (parameters resolved per tensor, dtype rounding).

Every floating-point tensor must equal the oracle bit for bit after one
rounding to the output dtype. The fine-tuned models share a task direction
(so model stock's t is far from 0 and from 1) and their task vectors are
quantized in places (so arcee_fusion meets exact ties at its threshold, in
1-D tensors whose elements share one KL divergence). Also: BF16, F16 and
F32 models and `dtype`/`out_dtype`; filter_wise by a filter, nearswap's t
by a gradient and a filter; slices; mergekit's examples/arcee_fusion.yml;
1, 2 and 3 ranks byte-identical; tensors over --memory-budget streamed to
the same bytes, and a 32 MiB arcee_fusion tensor (over 10^6 elements: the
exact quantiles) within a 4 MiB budget by peak RSS; the commands; refusals
mergekit also makes (model_stock with one model, nearswap or arcee_fusion
with two, no base), opposite task vectors (t divides by zero) and NaN
scores, each naming its parameter or tensor, nothing written.
"""
import json
import os
import sys

import numpy as np
import yaml

import mergekit_cases as mc
import mergekit_oracle
import oracle_fusion
from soupkit_testlib import as_float64, read_checkpoint, run_with_peak_rss, write_model_dir
from test_bad_input import BadInputBase

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_JSON = json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 3})


def fine_tunes(base, dtype, count, seed, share=0.05, spread=0.03):
    """`count` models: base + share * (one direction common to all) + spread * (their own noise), in
    `dtype`; every other layer's task vectors quantized to multiples of 1/64 (exact ties)."""
    rng = np.random.default_rng(seed)
    direction = {n: rng.standard_normal(np.shape(raw)) for n, (d, raw) in base.items() if d in mc.FLOATS}
    models = []
    for _ in range(count):
        m = {}
        for name, (d, raw) in base.items():
            if d not in mc.FLOATS:
                m[name] = (d, raw)
                continue
            delta = share * direction[name] + spread * rng.standard_normal(np.shape(raw))
            if ".layers.1." in name:
                delta = np.round(delta * 64) / 64
            m[name] = (dtype, mergekit_oracle.store(dtype, as_float64(d, raw) + delta))
        models.append(m)
    return models


class FusionBase(BadInputBase):
    def write(self, name, tensors):
        path = self.path(name)
        write_model_dir(path, tensors, extra_files={"config.json": CONFIG_JSON})
        return path

    def models(self, dtype, count=3, layers=3, hidden=16, rows_scale=1, seed=0):
        """{"base": path, "m0": path, ...} of a base and `count` fine-tunes."""
        base = mc.llama_like(seed, dtype, layers=layers, hidden=hidden, rows_scale=rows_scale)
        paths = {"base": self.write("%s-%d-base" % (dtype, seed), base)}
        for i, m in enumerate(fine_tunes(base, dtype, count, seed + 100)):
            paths["m%d" % i] = self.write("%s-%d-m%d" % (dtype, seed, i), m)
        return paths

    def config_job(self, config, paths, out, ranks=None, extra=()):
        """(the localised config, the soupkit job running it)."""
        local = mc.localise(config, paths)
        path = self.path("cfg-%s.yml" % os.path.basename(out))
        with open(path, "w") as f:
            yaml.safe_dump(local, f, sort_keys=False)
        return local, (["run", path, out, *extra], ranks)

    def assert_oracle(self, cases, ranks=None, extra=()):
        """Runs every (label, config, paths) case concurrently; each output must equal the oracle's."""
        locals_, jobs, outs = [], [], []
        for label, config, paths in cases:
            outs.append(self.path("out-" + label))
            local, job = self.config_job(config, paths, outs[-1], ranks, extra)
            locals_.append(local)
            jobs.append(job)
        self.run_ok(jobs)
        for (label, _, _), local, out in zip(cases, locals_, outs):
            with self.subTest(label):
                mc.assert_matches(self, out, mc.expected(local, local))
        return outs


def floats(path, name):
    return as_float64(*read_checkpoint(path)[0][name])


class AgainstTheOracle(FusionBase):
    def test_each_method_in_each_dtype(self):
        cases, ps = [], {}
        for dtype in ("BF16", "F16", "F32"):
            p = ps[dtype] = self.models(dtype)
            cases += [
                ("stock-" + dtype, {"merge_method": "model_stock", "base_model": "base",
                                    "models": [{"model": "m0"}, {"model": "m1"}, {"model": "m2"}]}, p),
                ("stock-rows-" + dtype, {"merge_method": "model_stock", "base_model": "base",
                                         "models": ["m0", "base", "m1"],  # the base listed: skipped, as mergekit does
                                         "parameters": {"filter_wise": [{"filter": "mlp", "value": True},
                                                                        {"value": False}]}}, p),
                ("swap-" + dtype, {"merge_method": "nearswap", "base_model": "base", "models": ["m0"],
                                   "parameters": {"t": [{"filter": "self_attn", "value": 0.02},
                                                        {"value": [0.001, 0.05]}]}}, p),
                ("fusion-" + dtype, {"merge_method": "arcee_fusion", "base_model": "base", "models": ["base", "m1"]},
                 p),
            ]
        p = self.models("F32", seed=1)
        cases += [
            ("stock-dtype", {"merge_method": "model_stock", "base_model": "base", "models": ["m0", "m1"],
                             "parameters": {"filter_wise": True}, "dtype": "bfloat16"}, p),
            ("swap-out-dtype", {"merge_method": "nearswap", "base_model": "base", "models": ["m2"],
                                "parameters": {"t": 0.01}, "out_dtype": "float16"}, p),
            ("fusion-dtype", {"merge_method": "arcee_fusion", "base_model": "base", "models": ["m2"],
                              "dtype": "float16"}, p),
            ("stock-base-alone", {"merge_method": "model_stock", "base_model": "base", "models": ["base"]}, p),
            ("fusion-base-alone", {"merge_method": "arcee_fusion", "base_model": "base", "models": ["base"]}, p),
        ]
        outs = dict(zip([c[0] for c in cases], self.assert_oracle(cases)))

        # The data exercises the definitions: model stock's t is neither 0 nor 1, the filter changes it,
        # nearswap moves some elements fully and others part of the way, arcee_fusion takes some changes.
        base = floats(p["base"], "model.layers.0.mlp.up_proj.weight")
        p16 = ps["F16"]
        name = "model.layers.2.self_attn.q_proj.weight"
        b16, a16 = floats(p16["base"], name), [floats(p16["m%d" % i], name) for i in range(3)]
        got = floats(outs["stock-F16"], name)
        t = np.sum((got - b16) * (sum(a16) / 3 - b16)) / np.sum((sum(a16) / 3 - b16) ** 2)
        self.assertTrue(0.2 < t < 0.95, "model stock's t is %.3f" % t)
        rows = floats(outs["stock-rows-F16"], "model.layers.2.mlp.up_proj.weight")
        whole = mergekit_oracle.METHODS["model_stock"][1](
            [floats(p16[k], "model.layers.2.mlp.up_proj.weight") for k in ("m0", "base", "m1")], 1, None,
            {"filter_wise": False}, "x")
        self.assertFalse(np.allclose(rows, whole), "filter_wise changed nothing")
        swapped = floats(outs["swap-out-dtype"], "model.layers.0.mlp.up_proj.weight")
        m2 = floats(p["m2"], "model.layers.0.mlp.up_proj.weight")
        moved = np.abs(swapped - base) / np.maximum(np.abs(m2 - base), 1e-30)
        self.assertTrue(np.any(moved > 0.99) and np.any((moved > 0.05) & (moved < 0.9)))
        fused = floats(outs["fusion-F32"], "model.layers.1.mlp.up_proj.weight")
        taken = np.mean(fused != floats(ps["F32"]["base"], "model.layers.1.mlp.up_proj.weight"))
        self.assertTrue(0.005 < taken < 0.5, "arcee_fusion took %.3f of the changes" % taken)

    def test_mergekit_example_arcee_fusion_yml(self):
        with open(os.path.join(HERE, "mergekit_examples", "arcee_fusion.yml")) as f:
            config = yaml.safe_load(f)
        p = self.models("BF16", count=1, seed=2)
        self.assert_oracle([("example", config, {"model_a": p["base"], "model_b": p["m0"]})])

    def test_slices(self):
        # mergekit's slices: layer ranges stacked, each slice's sources (the base among them) merged.
        p = self.models("F32", seed=10)
        cases = []
        for method, params, sources in (("nearswap", {"t": 0.01}, ["base", "m0"]),
                                        ("model_stock", {"filter_wise": True}, ["base", "m0", "m1"]),
                                        ("arcee_fusion", {}, ["base", "m2"])):
            cases.append(("slices-" + method, {
                "merge_method": method, "base_model": "base", "parameters": params,
                "slices": [{"sources": [{"model": m, "layer_range": [0, 2]} for m in sources]},
                           {"sources": [{"model": m, "layer_range": [1, 3]} for m in sources]}]}, p))
        self.assert_oracle(cases)

    def test_the_commands(self):
        p = self.models("F32", seed=3)
        outs = {k: self.path("cmd-" + k) for k in ("stock", "swap", "fusion")}
        self.run_ok([
            (["model-stock", "--base", p["base"], "--out", outs["stock"], "--filter-wise", "true", p["m0"], p["m1"],
              p["m2"]], None),
            (["nearswap", "--base", p["base"], "--out", outs["swap"], "--t", "0.004", p["m1"]], None),
            (["arcee-fusion", "--base", p["base"], "--out", outs["fusion"], "--out-dtype", "BF16", p["m2"]], None),
        ])
        configs = {
            "stock": {"merge_method": "model_stock", "base_model": p["base"], "models": [p["m0"], p["m1"], p["m2"]],
                      "parameters": {"filter_wise": True}},
            "swap": {"merge_method": "nearswap", "base_model": p["base"], "models": [p["m1"]],
                     "parameters": {"t": 0.004}},
            "fusion": {"merge_method": "arcee_fusion", "base_model": p["base"], "models": [p["m2"]],
                       "out_dtype": "bfloat16"},
        }
        for k, config in configs.items():
            with self.subTest(k):
                want = mc.expected(config, config)
                got = read_checkpoint(outs[k])[0]
                for name, (dtype, raw) in want.items():
                    self.assertEqual(got[name][1].tobytes(), np.asarray(raw).tobytes(), name)
        helps = self.run_many([([cmd, "--help"], None) for cmd in ("model-stock", "nearswap", "arcee-fusion")])
        for proc, words in zip(helps, (["--filter-wise"], ["--t", "1e-6", "(required)"], ["--base"])):
            self.assertEqual(proc.returncode, 0, proc.stderr)
            for w in words:
                self.assertIn(w, proc.stdout)


def rounded_fusion_mask(a, b):
    """arcee_fusion's mask in plain float64 arithmetic (rounded scores, threshold and comparison)."""
    hi, _ = oracle_fusion.importance_scores(a, b)
    flat = np.sort(hi.reshape(-1))
    n = flat.size
    q = [flat[oracle_fusion.quantile_index(x, n)] for x in (0.5, 0.25, 0.75)]
    return hi >= q[0] + 1.5 * (q[2] - q[1])


class ExactTies(FusionBase):
    def test_ties_at_the_threshold_are_decided_exactly(self):
        # 1-D tensors (one KL for all their elements) whose quantized task vectors put an element exactly
        # at the threshold, chosen where rounded float64 arithmetic would drop it: the exact definition
        # keeps it (as torch does on most of them, see oracle_fusion.py).
        rng = np.random.default_rng(8)
        base, model = {}, {}
        while len(base) < 8:
            a = np.round(rng.standard_normal(16) * 8) / 8
            b = a + np.round(rng.standard_normal(16) * 8) / 64
            exact = oracle_fusion.arcee_fusion([a, b], 0, None, {}, "x") == b
            if np.array_equal(exact, rounded_fusion_mask(a, b)):
                continue
            name = "tie.%d.weight" % len(base)
            base[name], model[name] = ("F32", a.astype(np.float32)), ("F32", b.astype(np.float32))
        paths = {"base": self.write("tie-base", base), "m": self.write("tie-m", model)}
        self.assert_oracle([("ties", {"merge_method": "arcee_fusion", "base_model": "base", "models": ["m"]},
                             paths)])


class RanksAndMemory(FusionBase):
    def test_rank_counts_and_a_small_budget_give_the_oracle_bytes(self):
        # Tensors of 600k-770k elements (2.3-2.9 MiB in F32) against a 2 MB budget: several row blocks per
        # pass, the selections' histograms and collections, on 1, 2 and 3 ranks.
        p = self.models("F32", count=3, layers=2, rows_scale=1200, seed=4)
        configs = {
            "stock": {"merge_method": "model_stock", "base_model": "base", "models": ["m0", "m1", "m2"]},
            "stock-rows": {"merge_method": "model_stock", "base_model": "base", "models": ["m0", "m1"],
                           "parameters": {"filter_wise": True}},
            "swap": {"merge_method": "nearswap", "base_model": "base", "models": ["m0"], "parameters": {"t": 0.01}},
            "fusion": {"merge_method": "arcee_fusion", "base_model": "base", "models": ["m1"]},
        }
        cases, blobs = [], {}
        for label, config in configs.items():
            for ranks in (None, 2, 3):
                cases.append(("%s-%s" % (label, ranks or 1), config, p))
        jobs, locals_ = [], {}
        for label, config, paths in cases:
            ranks = int(label.rsplit("-", 1)[1])
            local, job = self.config_job(config, paths, self.path("out-" + label), ranks if ranks > 1 else None,
                                         ["--memory-budget", "2MB"])
            locals_[label] = local
            jobs.append(job)
        self.run_ok(jobs)
        for label in configs:
            want = mc.expected(locals_[label + "-1"], locals_[label + "-1"])
            for ranks in (1, 2, 3):
                out = self.path("out-%s-%d" % (label, ranks))
                with open(os.path.join(out, "model.safetensors"), "rb") as f:
                    blobs[ranks] = f.read()
                if ranks == 1:
                    with self.subTest(label):
                        mc.assert_matches(self, out, want)
            self.assertEqual(blobs[1], blobs[2], label + ": 1 and 2 ranks differ")
            self.assertEqual(blobs[1], blobs[3], label + ": 1 and 3 ranks differ")

    def test_a_tensor_eight_times_the_budget_streams_within_it(self):
        # arcee_fusion on a 4096 x 2048 float32 tensor (32 MiB, 8.4 million scores: above mergekit's 10^6
        # sample, so the exact quantiles of all) under a 4 MiB budget.
        rng = np.random.default_rng(5)
        b = rng.standard_normal((4096, 2048), dtype=np.float32)
        m = b + np.float32(0.05) * rng.standard_normal(b.shape, dtype=np.float32)
        base_path, model_path = self.write("big-base", {"w": ("F32", b)}), self.write("big-m", {"w": ("F32", m)})
        small = {"w": ("F32", np.ones((4, 4), dtype=np.float32))}
        small_path = self.write("small", small)
        proc, baseline = run_with_peak_rss(["arcee-fusion", "--base", small_path, "--out", self.path("small-out"),
                                            "--memory-budget", "4MiB", small_path])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        proc, peak = run_with_peak_rss(["arcee-fusion", "--base", base_path, "--out", self.path("big-out"),
                                        "--memory-budget", "4MiB", model_path], timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        print("arcee_fusion on a 32 MiB tensor, 4 MiB budget: peak RSS %.1f MiB, baseline %.1f MiB"
              % (peak / 2**20, baseline / 2**20), file=sys.stderr)
        self.assertLess(peak, baseline + (4 << 20))
        config = {"merge_method": "arcee_fusion", "base_model": base_path, "models": [model_path]}
        want = mc.expected(config, config)
        got = read_checkpoint(self.path("big-out"))[0]
        self.assertEqual(got["w"][1].tobytes(), want["w"][1].tobytes())
        self.assertTrue(0.001 < np.mean(got["w"][1] != b) < 0.5)


class Refusals(FusionBase):
    def test_what_mergekit_refuses_and_what_would_be_inf_or_nan(self):
        p = self.models("F32", count=3, seed=6)
        # Task vectors exactly opposite (+-1/4 over a 4 x 4 tensor: cos = -1 exactly) for model stock.
        rng = np.random.default_rng(7)
        w = np.round(rng.standard_normal((4, 4)) * 16) / 16
        d = np.where(rng.random((4, 4)) < 0.5, 0.25, -0.25)
        opposite = {k: self.write("opp-" + k, {"w": ("F32", (w + s * d).astype(np.float32))})
                    for k, s in (("base", 0), ("plus", 1), ("minus", -1))}
        m = mc.llama_like(9, "F32", layers=3, hidden=16)
        nan = dict(m, **{"model.norm.weight": ("F32", np.full(16, np.nan, dtype=np.float32))})
        p["nan"] = self.write("nan", nan)
        stock = {"merge_method": "model_stock", "base_model": "base"}
        cases = [
            ("stock-one", dict(stock, models=["m0"]), p, ["model_stock", "one model besides the base",
                                                          "ModelStockMerge requires at least 3 models"]),
            ("stock-no-base", {"merge_method": "model_stock", "models": ["m0", "m1"]}, p, ["base_model"]),
            ("stock-opposite", dict(stock, models=["plus", "minus"]), opposite, ["tensor 'w'", "divides by zero"]),
            ("stock-opposite-rows", dict(stock, models=["plus", "minus"], parameters={"filter_wise": True}), opposite,
             ["tensor 'w', vector 0", "filter_wise", "divides by zero"]),
            ("stock-gradient", dict(stock, models=["m0", "m1"], parameters={"filter_wise": [0, 1]}), p,
             ["filter_wise", "gradient"]),
            ("swap-two", {"merge_method": "nearswap", "base_model": "base", "models": ["m0", "m1"],
                          "parameters": {"t": 0.1}}, p, ["nearswap", "exactly one model", "NearSwap merge expects"]),
            ("swap-no-t", {"merge_method": "nearswap", "base_model": "base", "models": ["m0"]}, p,
             ["'t' is required"]),
            ("swap-weight", {"merge_method": "nearswap", "base_model": "base",
                             "models": [{"model": "m0", "parameters": {"weight": 1}}], "parameters": {"t": 0.1}}, p,
             ["no parameter 'weight'"]),
            ("swap-no-base", {"merge_method": "nearswap", "models": ["m0"], "parameters": {"t": 0.1}}, p,
             ["base_model"]),
            ("fusion-two", {"merge_method": "arcee_fusion", "base_model": "base", "models": ["m0", "m1"]}, p,
             ["arcee_fusion", "exactly one model", "ArceeFusion merge expects exactly two models"]),
            ("fusion-parameter", {"merge_method": "arcee_fusion", "base_model": "base", "models": ["m0"],
                                  "parameters": {"t": 0.5}}, p, ["no parameter 't'"]),
            ("fusion-nan", {"merge_method": "arcee_fusion", "base_model": "base", "models": ["nan"]}, p,
             ["tensor 'model.norm.weight'", "NaN"]),
        ]
        jobs, outs = [], []
        for label, config, paths, _ in cases:
            outs.append(self.path("out-" + label))
            jobs.append(self.config_job(config, paths, outs[-1])[1])
        procs = self.run_many(jobs)
        for (label, _, _, words), out, proc in zip(cases, outs, procs):
            with self.subTest(label):
                self.assertEqual(proc.returncode, 1, proc.stderr)
                for word in words:
                    self.assertIn(word, proc.stderr)
                self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    import unittest
    unittest.main()
