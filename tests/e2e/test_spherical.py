"""mergekit's spherical merges, `soupkit run CONFIG OUT` with merge_method
slerp, nuslerp, multislerp and karcher, against oracle_spherical.py (numpy
float64 transcriptions of mergekit's code, on whole tensors):

- every method in its variants (with and without a base, nuslerp's three
  vector layouts, gradients and filters on its parameters) on small
  Llama-shaped models stored in bfloat16, float16 and float32;
- mergekit's examples/gradient-slerp.yml (t given per filter as gradients
  over the layers, dtype float16) in the models: syntax, and what its
  gradient means at the first and last layers;
- geometric edge cases: colinear, antipodal and zero tensors, a zero row;
- karcher's stopping rule (max_iter and tol change the result as the oracle's
  iteration says);
- 1, 2 and 3 ranks byte-identical, and a tensor larger than --memory-budget
  giving the same bytes as one block, and (karcher) a peak RSS within the budget;
- refusals mergekit shares (slerp with three models or no base, nuslerp with
  the base among its two models, ...) and those where mergekit writes NaN;
- `soupkit <method> --help`.

soupkit and the oracle both compute in float64 but not in the same order
(soupkit's Gram-matrix statistics, C library vs numpy transcendental
functions): they differ in the last bits of float64, which after the one
rounding to the output dtype leaves at most 1 unit in the last place (ULPS).
"""
import json
import os
import re
import shutil
import tempfile
import unittest

import numpy as np
import yaml

import mergekit_cases as mc
import mergekit_oracle
import oracle_spherical
from soupkit_testlib import as_float64, read_checkpoint, run_soupkit, run_with_peak_rss, write_model_dir
from test_bad_input import BadInputBase

ULPS = 1
LAYERS = 5  # mergekit's gradient-slerp example has 5 points: one a layer
DTYPES = ("BF16", "F16", "F32")
CONFIG_JSON = json.dumps({"num_hidden_layers": LAYERS})


def write_set(directory, dtype, layers=LAYERS, rows_scale=1, independent=False):
    """base, a, b, c (fine-tunes of base) and x, y (unrelated models) in `dtype`; returns {name: path}."""
    base = mc.llama_like(0, dtype, layers=layers, rows_scale=rows_scale)
    models = {"base": base}
    for i, name in enumerate("abc"):
        models[name] = mc.llama_like(1 + i, dtype, layers=layers, rows_scale=rows_scale, base=base)
    if independent:
        models["x"] = mc.llama_like(7, dtype, layers=layers, rows_scale=rows_scale)
        models["y"] = mc.llama_like(8, dtype, layers=layers, rows_scale=rows_scale)
    return mc.write_models(directory, models, config_json=CONFIG_JSON)


def configs():
    """(tag, configuration) of every variant run on every dtype."""
    return [
        ("slerp", {"merge_method": "slerp", "base_model": "base", "models": [{"model": "base"}, {"model": "a"}],
                   "parameters": {"t": [0.1, 0.9]}}),
        ("slerp-unrelated", {"merge_method": "slerp", "base_model": "x", "models": ["y"],
                             "parameters": {"t": [{"filter": "mlp", "value": 0.8}, {"value": 0.35}]}}),
        ("nuslerp", {"merge_method": "nuslerp", "models": [{"model": "a", "parameters": {"weight": 0.3}},
                                                           {"model": "b", "parameters": {"weight": 0.7}}]}),
        ("nuslerp-rows", {"merge_method": "nuslerp", "base_model": "base",
                          "models": [{"model": "a", "parameters": {"weight": 1.0}},
                                     {"model": "b", "parameters": {"weight": [2.0, 0.5]}}],
                          "parameters": {"nuslerp_flatten": False}}),
        ("nuslerp-columns", {"merge_method": "nuslerp", "base_model": "base",
                             "models": [{"model": "a", "parameters": {"weight": 0.4}}, {"model": "b"}],
                             "parameters": {"weight": 0.6, "nuslerp_flatten": False, "nuslerp_row_wise": True}}),
        ("multislerp", {"merge_method": "multislerp", "models": [{"model": "x", "parameters": {"weight": 1.0}},
                                                                 {"model": "y", "parameters": {"weight": 2.0}},
                                                                 {"model": "a", "parameters": {"weight": 3.0}}]}),
        ("multislerp-base", {"merge_method": "multislerp", "base_model": "base",
                             "models": [{"model": "base"}, {"model": "a", "parameters": {"weight": 0.2}},
                                        {"model": "b", "parameters": {"weight": [0.3, 0.6]}},
                                        {"model": "c", "parameters": {"weight": 0.4}}],
                             "parameters": {"normalize_weights": False}}),
        ("karcher-base", {"merge_method": "karcher", "base_model": "base", "models": ["a", "b"]}),
        ("karcher", {"merge_method": "karcher", "models": ["x", "y", "a"],
                     "parameters": {"max_iter": 30, "tol": [{"filter": "lm_head", "value": 1e-3}, {"value": 1e-7}]}}),
    ]


class SharedModels(BadInputBase):
    """Models written once for the class; each test has its own output directory (self.tmp)."""

    @classmethod
    def setUpClass(cls):
        cls.models_dir = tempfile.mkdtemp(prefix="soupkit-spherical-")
        cls.sets = {d: write_set(os.path.join(cls.models_dir, d), d, independent=True) for d in DTYPES}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.models_dir, ignore_errors=True)

    def write_config(self, config, paths, name):
        path = self.path(name + ".yml")
        with open(path, "w") as f:
            yaml.safe_dump(mc.localise(config, paths), f, sort_keys=False)
        return path

    def run_configs(self, cases, extra=()):
        """cases: (name, config, paths, ranks); runs them all; returns {name: (out, localised config)}."""
        jobs, outs = [], {}
        for name, config, paths, ranks in cases:
            out = self.path("out-" + name)
            jobs.append((["run", self.write_config(config, paths, name), out, *extra], ranks))
            outs[name] = (out, mc.localise(config, paths))
        self.run_ok(jobs)
        return outs


class AgainstTheOracle(SharedModels):
    def test_every_method_and_dtype(self):
        cases = [("%s-%s" % (tag, d), config, self.sets[d], None) for d in DTYPES for tag, config in configs()]
        for name, (out, config) in self.run_configs(cases).items():
            with self.subTest(name):
                mc.assert_matches(self, out, mc.expected(config, config), ULPS)

    def test_the_variants_differ(self):
        """The options change the result, so each comparison above could fail."""
        paths = self.sets["F32"]
        got = {}
        for tag, config in configs():
            got[tag] = mc.expected(mc.localise(config, paths), mc.localise(config, paths))
        w = "model.layers.2.mlp.up_proj.weight"
        for a, b in (("nuslerp-rows", "nuslerp-columns"),):
            self.assertFalse(np.array_equal(got[a][w][1], got[b][w][1]), (a, b))
        flat = mc.localise({**dict(configs())["nuslerp-rows"], "parameters": {}}, paths)
        self.assertFalse(np.array_equal(mc.expected(flat, flat)[w][1], got["nuslerp-rows"][w][1]))
        # slerp is not lerp on these models (|cos| < 0.9995 between base and a)
        base, a = (as_float64(*read_checkpoint(paths[m])[0][w]) for m in ("base", "a"))
        cos = np.sum(base * a) / np.linalg.norm(base) / np.linalg.norm(a)
        self.assertLess(abs(cos), 0.9995)
        self.assertGreater(abs(cos), 0.99)

    def test_command_line(self):
        """The generated commands run the same merges as the configurations."""
        paths = self.sets["F32"]
        commands = {
            "slerp": (["slerp", "--base", paths["base"], "--t", "0.4", paths["a"]],
                      {"merge_method": "slerp", "base_model": "base", "models": ["a"], "parameters": {"t": 0.4}}),
            "nuslerp": (["nuslerp", "--base", paths["base"], "--weights", "2,1", "--nuslerp-flatten", "false",
                         "--nuslerp-row-wise", "true", paths["a"], paths["b"]],
                        {"merge_method": "nuslerp", "base_model": "base", "models": [
                            {"model": "a", "parameters": {"weight": 2}}, {"model": "b", "parameters": {"weight": 1}}],
                         "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True}}),
            "multislerp": (["multislerp", "--weights", "1,2", "--eps", "1e-6", paths["x"], paths["y"]],
                           {"merge_method": "multislerp", "models": [{"model": "x", "parameters": {"weight": 1}},
                                                                     {"model": "y", "parameters": {"weight": 2}}],
                            "parameters": {"eps": 1e-6}}),
            "karcher": (["karcher", "--max-iter", "4", "--tol", "1e-6", paths["x"], paths["y"], paths["a"]],
                        {"merge_method": "karcher", "models": ["x", "y", "a"],
                         "parameters": {"max_iter": 4, "tol": 1e-6}}),
        }
        jobs = [([*args[:1], "--out", self.path("cli-" + name), *args[1:]], None) for name, (args, _) in commands.items()]
        self.run_ok(jobs)
        for name, (_, config) in commands.items():
            with self.subTest(name):
                local = mc.localise(config, paths)
                mc.assert_matches(self, self.path("cli-" + name), mc.expected(local, local), ULPS)

    def test_gradient_slerp_example(self):
        """mergekit's examples/gradient-slerp.yml in the models: syntax (dtype float16, from bfloat16 models)."""
        config = {"models": [{"model": "base"}, {"model": "a"}], "merge_method": "slerp", "base_model": "base",
                  "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                                       {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                                       {"value": 0.5}]},
                  "dtype": "float16"}
        paths = self.sets["BF16"]
        out, local = self.run_configs([("gradient-slerp", config, paths, None)])["gradient-slerp"]
        mc.assert_matches(self, out, mc.expected(local, local), ULPS)
        got = read_checkpoint(out)[0]
        inputs = {m: read_checkpoint(paths[m])[0] for m in ("base", "a")}

        def f16(model, name):  # the input as dtype: float16 makes it
            return mergekit_oracle.round_to("F16", as_float64(*inputs[model][name]))

        last = LAYERS - 1
        for name, model in (("model.layers.0.self_attn.q_proj.weight", "base"),
                            ("model.layers.%d.self_attn.o_proj.weight" % last, "a"),
                            ("model.layers.0.mlp.up_proj.weight", "a"),
                            ("model.layers.%d.mlp.down_proj.weight" % last, "base")):
            self.assertEqual(got[name][0], "F16", name)
            np.testing.assert_array_equal(as_float64(*got[name]), f16(model, name), err_msg=name)
        mid = as_float64(*got["model.embed_tokens.weight"])  # the fallback t = 0.5
        for model in ("base", "a"):
            self.assertGreater(np.max(np.abs(mid - f16(model, "model.embed_tokens.weight"))), 1e-3)

    def test_karcher_stopping_rule(self):
        """max_iter and tol stop the iteration where mergekit's does, and that changes the bytes."""
        paths = self.sets["F32"]
        name = "model.layers.1.mlp.down_proj.weight"
        xs = [as_float64(*read_checkpoint(paths[m])[0][name]) for m in ("x", "y", "a")]
        alphas = [1 / 3] * 3
        full, iterations = oracle_spherical.karcher_vectors(xs, alphas, max_iter=50, tol=1e-9)
        self.assertGreater(iterations, 2, "the data converges at once: the iteration is not exercised")
        one, _ = oracle_spherical.karcher_vectors(xs, alphas, max_iter=1, tol=1e-9)
        loose, loose_iterations = oracle_spherical.karcher_vectors(xs, alphas, max_iter=50, tol=1e-2)
        self.assertLess(loose_iterations, iterations)
        for result in (one, loose):
            self.assertGreater(np.max(np.abs(result - full)), 1e-5)
        cases = []
        for tag, params in (("full", {"max_iter": 50, "tol": 1e-9}), ("one", {"max_iter": 1, "tol": 1e-9}),
                            ("loose", {"max_iter": 50, "tol": 1e-2}), ("none", {"max_iter": 0})):
            cases.append((tag, {"merge_method": "karcher", "models": ["x", "y", "a"], "parameters": params}, paths,
                          None))
        for tag, (out, config) in self.run_configs(cases).items():
            with self.subTest(tag):
                mc.assert_matches(self, out, mc.expected(config, config), ULPS)


def edge_models(opposite):
    """p and q (and a base r) whose tensors are related in the ways the methods special-case: equal, colinear
    (q = 2p), zero, a zero row and a colinear row and column, and with `opposite` q = -p (whole, a row, a
    column). Built in float32 first, so the multiples are exact. (nuslerp runs without the opposite cases:
    between vectors an ulp from opposite, mergekit's (sin((1-t) theta) v0 + sin(t theta) v1) / sin(theta)
    divides by ~1e-8, so its float64 value there is rounding noise, in soupkit as in the oracle.)"""
    rng = np.random.default_rng(11)
    p, q, r = {}, {}, {}

    def f32(shape):
        return rng.standard_normal(shape).astype(np.float32)

    def add(name, pv, qv):
        p[name], q[name] = ("F32", pv), ("F32", qv)
        r[name] = ("F32", (f32(pv.shape) * np.float32(1e-3)))

    x = f32((12, 16))
    add("colinear.weight", x, 2 * x)
    add("same.weight", x, x.copy())
    add("zero.weight", np.zeros((12, 16), np.float32), x)
    rows, rows_q = f32((12, 16)), f32((12, 16))
    rows[3] = 0  # a zero row: nuslerp's norm clamp
    rows_q[5] = 2 * rows[5]  # a colinear row
    rows_q[:, 7] = 4 * rows[:, 7]  # a colinear column
    if opposite:
        add("opposite.weight", x, -x)
        rows_q[8] = -rows[8]
        rows_q[:, 2] = -rows[:, 2]
    add("rows.weight", rows, rows_q)
    add("vector.bias", f32(16), f32(16))
    return p, q, r


class EdgeCases(BadInputBase):
    def test_colinear_opposite_and_zero_tensors(self):
        paths = {}
        for opposite in (False, True):
            for name, tensors in zip("pqr", edge_models(opposite)):
                key = name + ("-opposite" if opposite else "")
                paths[key] = self.path(key)
                write_model_dir(paths[key], tensors)
        o = {"p": "p-opposite", "q": "q-opposite", "r": "r-opposite"}
        cases = [
            ("slerp", {"merge_method": "slerp", "base_model": o["p"], "models": [o["q"]], "parameters": {"t": 0.3}}),
            ("nuslerp-flat", {"merge_method": "nuslerp", "models": ["p", "q"], "parameters": {"weight": 1.0}}),
            ("nuslerp-rows", {"merge_method": "nuslerp", "models": ["p", "q"],
                              "parameters": {"weight": 1.0, "nuslerp_flatten": False}}),
            ("nuslerp-columns", {"merge_method": "nuslerp", "models": [{"model": "p", "parameters": {"weight": 3}},
                                                                       {"model": "q", "parameters": {"weight": 1}}],
                                 "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True}}),
            ("nuslerp-zero-weights", {"merge_method": "nuslerp", "models": [
                {"model": "p", "parameters": {"weight": 1e-7}}, {"model": "q", "parameters": {"weight": -1e-7}}]}),
            ("multislerp", {"merge_method": "multislerp", "models": [o["p"], o["q"]], "parameters": {"weight": 0.5}}),
            ("multislerp-base", {"merge_method": "multislerp", "base_model": o["r"], "models": [o["p"], o["q"]],
                                 "parameters": {"weight": 0.5}}),
            ("karcher", {"merge_method": "karcher", "models": [o["p"], o["q"]]}),
            ("karcher-base", {"merge_method": "karcher", "base_model": o["r"], "models": [o["p"], o["q"]]}),
        ]
        jobs, outs = [], {}
        for tag, config in cases:
            local = mc.localise(config, paths)
            out = self.path("out-" + tag)
            jobs.append((["run", self.write(tag, local), out], None))
            outs[tag] = (out, local)
        self.run_ok(jobs)
        for tag, (out, config) in outs.items():
            with self.subTest(tag):
                mc.assert_matches(self, out, mc.expected(config, config), ULPS)
        # The special cases are taken: slerp of colinear tensors is their lerp, karcher of a tensor and its
        # double is 1.5 times it (the mean norm times the common direction), of a tensor and its negative the
        # tensor (the first unit vector, as the mean of the two is zero), multislerp of opposite tensors their
        # linear mean (zero).
        got = {tag: read_checkpoint(out)[0] for tag, (out, _) in outs.items()}
        x = as_float64(*edge_models(True)[0]["colinear.weight"])
        np.testing.assert_allclose(as_float64(*got["slerp"]["colinear.weight"]), 0.7 * x + 0.3 * 2 * x, rtol=1e-6)
        np.testing.assert_allclose(as_float64(*got["karcher"]["colinear.weight"]), 1.5 * x, rtol=1e-6)
        np.testing.assert_allclose(as_float64(*got["karcher"]["opposite.weight"]), x, rtol=1e-6)
        np.testing.assert_array_equal(as_float64(*got["multislerp"]["opposite.weight"]), 0 * x)

    def write(self, tag, config):
        path = self.path(tag + ".yml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        return path


class RanksAndMemory(BadInputBase):
    def test_rank_counts_and_a_budget_smaller_than_a_tensor(self):
        """Every method: 1, 2, 3 ranks under a 2 MB budget (tensors up to 2.6 MB, so several blocks each) and one
        rank without it (one block): the same bytes, and the oracle's values."""
        paths = write_set(self.path("big"), "F32", layers=2, rows_scale=600, independent=True)
        sizes = {n: t[1].nbytes for n, t in read_checkpoint(paths["base"])[0].items()}
        self.assertGreater(max(sizes.values()), 2 << 20)
        chosen = dict(configs())
        jobs, outs = [], {}
        for tag in ("slerp", "nuslerp-columns", "nuslerp-rows", "multislerp-base", "karcher"):
            config = mc.localise(chosen[tag], paths)
            job = self.path(tag + ".yml")
            with open(job, "w") as f:
                yaml.safe_dump(config, f, sort_keys=False)
            for ranks, budget in ((None, []), (None, ["--memory-budget", "2MB"]), (2, ["--memory-budget", "2MB"]),
                                  (3, ["--memory-budget", "2MB"])):
                out = self.path("out-%s-%s-%s" % (tag, ranks or 1, "budget" if budget else "roomy"))
                jobs.append((["run", job, out, *budget], ranks))
                outs.setdefault(tag, (config, []))[1].append(out)
        self.run_ok(jobs)
        for tag, (config, out_list) in outs.items():
            with self.subTest(tag):
                blobs = []
                for out in out_list:
                    with open(os.path.join(out, "model.safetensors"), "rb") as f:
                        blobs.append(f.read())
                for other, blob in zip(out_list[1:], blobs[1:]):
                    self.assertEqual(blob, blobs[0], "%s differs from %s" % (other, out_list[0]))
                mc.assert_matches(self, out_list[0], mc.expected(config, config), ULPS)

    def test_karcher_streams_a_large_tensor_within_the_budget(self):
        rng = np.random.default_rng(5)
        big = lambda: {"w": ("F32", rng.standard_normal((2048, 4096), dtype=np.float32))}  # 32 MiB
        models = [big() for _ in range(3)]
        paths = [self.path("big-%d" % i) for i in range(3)]
        for path, m in zip(paths, models):
            write_model_dir(path, m)
        small = {"w": ("F32", np.ones((4, 4), dtype=np.float32))}
        small_paths = [self.path("small-%d" % i) for i in range(2)]
        for path in small_paths:
            write_model_dir(path, small)
        budget = 8 << 20
        common = ["--memory-budget", "8MiB"]
        proc, baseline = run_with_peak_rss(["karcher", "--out", self.path("small-out"), *common, *small_paths])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        proc, peak = run_with_peak_rss(["karcher", "--out", self.path("big-out"), *common, *paths])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertLess(peak, baseline + budget, "peak RSS %.1f MiB over a %.1f MiB baseline and an 8 MiB budget"
                        % (peak / 2 ** 20, baseline / 2 ** 20))
        xs = [as_float64(*m["w"]) for m in models]
        want = oracle_spherical.karcher_vectors(xs, [1 / 3] * 3)[0]
        got = as_float64(*read_checkpoint(self.path("big-out"))[0]["w"])
        self.assertTrue(np.all(np.abs(got - want) <= 2.0 ** -23 * np.maximum(np.abs(want), 2.0 ** -14)),
                        "max |diff| %g" % np.max(np.abs(got - want)))


class Refusals(SharedModels):
    """Each: exit 1, one error line naming what is wrong, nothing at OUT."""

    def check(self, cases):
        jobs, outs = [], []
        for tag, config, names, words in cases:
            paths = self.sets["F32"]
            out = self.path("out-" + tag)
            jobs.append((["run", self.write_config(config, paths, tag), out], None))
            outs.append((tag, out, names, words))
        for (tag, out, names, words), proc in zip(outs, self.run_many(jobs)):
            with self.subTest(tag):
                self.assert_failed(proc, names, words)
                self.assert_no_output(out)

    def test_model_counts_and_bases(self):
        self.check([
            ("slerp-three", {"merge_method": "slerp", "base_model": "base", "models": ["a", "b"],
                             "parameters": {"t": 0.5}}, ["slerp", "3"], ["exactly two"]),
            ("slerp-no-base", {"merge_method": "slerp", "models": ["a", "b"], "parameters": {"t": 0.5}},
             ["slerp", "base_model"], ["needs"]),
            ("slerp-no-t", {"merge_method": "slerp", "base_model": "base", "models": ["a"]}, ["'t'"], ["required"]),
            ("slerp-t-per-model", {"merge_method": "slerp", "base_model": "base",
                                   "models": [{"model": "a", "parameters": {"t": 0.5}}]}, ["'t'"], ["global"]),
            ("nuslerp-base-listed", {"merge_method": "nuslerp", "base_model": "base", "models": ["base", "a"],
                                     "parameters": {"weight": 1.0}}, ["nuslerp", "base"], ["cannot be one"]),
            ("nuslerp-three", {"merge_method": "nuslerp", "models": ["a", "b", "c"], "parameters": {"weight": 1.0}},
             ["nuslerp", "3"], ["exactly two"]),
            ("nuslerp-no-weight", {"merge_method": "nuslerp", "models": [{"model": "a", "parameters": {"weight": 1}},
                                                                         "b"]},
             ["'weight'", "models[1]"], ["required"]),
            ("multislerp-base-only", {"merge_method": "multislerp", "base_model": "base", "models": ["base"],
                                      "parameters": {"weight": 1.0}}, ["multislerp", "base"], ["no model"]),
        ])

    def test_parameters(self):
        self.check([
            ("karcher-fraction", {"merge_method": "karcher", "models": ["a", "b"], "parameters": {"max_iter": 2.5}},
             ["max_iter", "2.5"], ["whole number"]),
            ("karcher-gradient", {"merge_method": "karcher", "models": ["a", "b"],
                                  "parameters": {"max_iter": [1, 5]}}, ["max_iter"], ["gradient"]),
            ("multislerp-zero-sum", {"merge_method": "multislerp", "models": [
                {"model": "a", "parameters": {"weight": 1.0}}, {"model": "b", "parameters": {"weight": -1.0}}]},
             ["normalize_weights", "tensor '"], ["sum to 0"]),
            ("nuslerp-flag", {"merge_method": "nuslerp", "models": ["a", "b"],
                              "parameters": {"weight": 1, "nuslerp_flatten": 0.5}}, ["nuslerp_flatten"],
             ["true or false"]),
            ("unknown", {"merge_method": "slerp", "base_model": "base", "models": ["a"],
                         "parameters": {"t": 0.5, "DOT_THRESHOLD": 0.9}}, ["DOT_THRESHOLD"], ["no parameter"]),
        ])

    def test_where_mergekit_writes_nan_or_raises(self):
        """tol = 0 with two equal models (theta = 0: 0/0 in mergekit); multislerp of x, -x and 0 (mean zero with
        three models: mergekit raises)."""
        rng = np.random.default_rng(3)
        x = rng.standard_normal((6, 8))
        paths = {}
        for name, value in (("u", x), ("u2", x), ("minus", -x), ("zero", 0 * x)):
            paths[name] = self.path(name)
            write_model_dir(paths[name], {"w.weight": ("F32", value.astype(np.float32))})
        jobs = [(["run", self.write_config({"merge_method": "karcher", "models": ["u", "u2"],
                                            "parameters": {"tol": 0}}, paths, "karcher-tol0"), self.path("o1")], None),
                (["run", self.write_config({"merge_method": "multislerp", "models": ["u", "minus", "zero"],
                                            "parameters": {"weight": 1}}, paths, "multi-zero"), self.path("o2")],
                 None)]
        karcher, multi = self.run_many(jobs)
        self.assert_failed(karcher, ["w.weight", "tol"], ["divides by zero"])
        self.assert_failed(multi, ["w.weight"], ["zero"])
        for out in (self.path("o1"), self.path("o2")):
            self.assert_no_output(out)


class Help(unittest.TestCase):
    def test_each_command_has_generated_help(self):
        for command, options in (("slerp", ["--base", "--t "]), ("nuslerp", ["--weights", "--nuslerp-flatten",
                                                                              "--nuslerp-row-wise"]),
                                 ("multislerp", ["--weights", "--normalize-weights", "--eps"]),
                                 ("karcher", ["--max-iter", "--tol"])):
            with self.subTest(command):
                text = run_soupkit([command, "--help"]).stdout
                self.assertIn("usage: soupkit " + command, text)
                for option in options:
                    self.assertIn(option, text)
        jobs = run_soupkit(["run", "--help"]).stdout
        for name in ("slerp", "nuslerp", "multislerp", "karcher"):
            self.assertRegex(jobs, r"\n  %s +soupkit " % name)


if __name__ == "__main__":
    unittest.main()
