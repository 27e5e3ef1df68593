"""`soupkit task-arithmetic` (merge_method task_arithmetic) against an
independent float64 numpy evaluation of mergekit's definition:

    W = W_base + s * sum_i w_i (W_i - W_base),   s = lambda (/ sum_i w_i with normalize)

with a sum of weights below 1e-8 in magnitude left undivided, as mergekit
does. soupkit promises the float64 operations in this order (d_i = x_i - b,
acc = w_1 d_1, acc += w_i d_i, out = b + s acc, rounded once to the output
dtype), so every floating-point tensor must equal numpy's bit for bit;
integer and bool tensors are copied. Also: F32/F16/BF16 inputs (and a model
whose tensor is of another float dtype than the base's), negative weights,
normalize on and off, lambda, 1/2/3 ranks byte-identical, job files (the
example in jobs/ and one with every key), a tensor larger than
--memory-budget within the budget (peak RSS of the child), the generated
--help, and refusals naming the parameter, tensor or model.
"""
import os
import re

import numpy as np

from soupkit_testlib import as_float64, read_checkpoint, run_soupkit, run_with_peak_rss, write_model_dir
from test_bad_input import BadInputBase
# make_model: float tensors of three dtypes, integer/bool tensors, a scalar, an empty tensor;
# store: float64 values rounded once to a float dtype's raw elements.
from test_soup import make_model, store

JOBS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "jobs")
FLOATS = ("F64", "F32", "F16", "BF16")
ROWS = 300  # a.weight: 300 x 512 float32, several row blocks under a 4 MB budget


def reference(base, models, weights=None, lam=1.0, normalize=False, out_dtype=None):
    """mergekit's task arithmetic of `models` onto `base` (dicts name -> (dtype, raw)), in float64."""
    weights = [1.0] * len(models) if weights is None else weights
    total = 0.0
    for w in weights:  # in model order, as soupkit sums them
        total += w
    scale = lam / total if normalize and abs(total) >= 1e-8 else lam
    out = {}
    for name, (dtype, raw) in base.items():
        if dtype not in FLOATS:
            out[name] = (dtype, raw)
            continue
        b = as_float64(dtype, raw)
        acc = None
        for w, m in zip(weights, models):
            term = w * (as_float64(*m[name]) - b)
            acc = term if acc is None else acc + term
        target = out_dtype or dtype
        out[name] = (target, store(b + scale * acc, target).reshape(np.shape(raw)))
    return out


def config(tag):
    return {"config.json": '{"model_type": "toy", "from": "%s"}' % tag}


class TaskArithmeticBase(BadInputBase):
    def setUp(self):
        super().setUp()
        self.base = make_model(1, ROWS)
        self.base_path = self.path("base")
        write_model_dir(self.base_path, self.base, extra_files=config("base"))
        self.models, self.paths = [], []
        for i in range(3):
            self.models.append(make_model(10 + i, ROWS))
            if i == 1:  # model 2's big tensor is F16 while the base's is F32: float dtypes may differ
                self.models[-1]["a.weight"] = ("F16", self.models[-1]["a.weight"][1].astype(np.float16))
            self.paths.append(self.path("m%d" % i))
            write_model_dir(self.paths[-1], self.models[-1], extra_files=config("m%d" % i))

    def args(self, out, *extra, models=None):
        models = models or self.paths
        # --weights is required (mergekit's weight is); 1 each unless the case gives them.
        weights = [] if "--weights" in extra else ["--weights", ",".join(["1"] * len(models))]
        return ["task-arithmetic", "--base", self.base_path, "--out", out, *weights, *extra, *models]


class TaskArithmetic(TaskArithmeticBase):
    def test_weights_lambda_normalize_and_dtypes(self):
        outs = {k: self.path(k) for k in ("plain", "negative", "normalized", "f16-chunked", "zero-sum")}
        outs["h5"] = self.path("normalized.h5")
        normalized = ["--weights", "3,1,0.5", "--lambda", "1.7", "--normalize", "true", "--out-dtype", "BF16"]
        procs = self.run_ok([
            (self.args(outs["plain"]), None),
            (self.args(outs["negative"], "--weights", "0.7,-0.4,1.3", "--lambda", "0.35", "--normalize", "false"), 2),
            (self.args(outs["normalized"], *normalized), 3),
            (self.args(outs["h5"], *normalized), 2),
            (self.args(outs["f16-chunked"], "--weights", "-1,0.25,2", "--out-dtype", "F16", "--memory-budget", "4MB"),
             None),
            (self.args(outs["zero-sum"], "--weights", "1,-1,0", "--normalize", "true", "--lambda", "2"), None),
        ])
        b, ms = self.base, self.models
        self.assert_same_tensors(outs["plain"], reference(b, ms))
        self.assert_same_tensors(outs["negative"], reference(b, ms, [0.7, -0.4, 1.3], 0.35))
        want = reference(b, ms, [3, 1, 0.5], 1.7, normalize=True, out_dtype="BF16")
        self.assert_same_tensors(outs["normalized"], want)
        back = self.path("normalized-h5.safetensors")
        self.run_ok([(["convert", outs["h5"], back], None)])
        self.assert_same_tensors(back, want)
        self.assert_same_tensors(outs["f16-chunked"], reference(b, ms, [-1, 0.25, 2], out_dtype="F16"))
        # Weights summing to 0 are not divided by (mergekit's rule), and soupkit says so.
        self.assert_same_tensors(outs["zero-sum"], reference(b, ms, [1, -1, 0], 2.0, normalize=False))
        self.assertIn("not normalised", procs[-1].stderr)
        # The options matter: normalising changes the result, and so does lambda.
        plain = read_checkpoint(outs["plain"])[0]["a.weight"][1]
        self.assertFalse(np.array_equal(plain, reference(b, ms, normalize=True)["a.weight"][1]))
        self.assertFalse(np.array_equal(plain, reference(b, ms, lam=0.5)["a.weight"][1]))
        # Config files come from the base.
        with open(os.path.join(outs["plain"], "config.json")) as f:
            self.assertIn('"base"', f.read())

    def test_rank_counts_give_the_same_bytes(self):
        outs = {r: self.path("out-%s" % r) for r in (None, 2, 3)}
        extra = ["--weights", "0.3,-1.1,0.9", "--lambda", "0.8", "--normalize", "true"]
        self.run_ok([(self.args(outs[r], *extra, "--memory-budget", "4MB"), r) for r in outs])
        blobs = []
        for out in outs.values():
            self.assert_same_tensors(out, reference(self.base, self.models, [0.3, -1.1, 0.9], 0.8, normalize=True))
            with open(os.path.join(out, "model.safetensors"), "rb") as f:
                blobs.append(f.read())
        self.assertEqual(blobs[0], blobs[1], "1 and 2 ranks differ")
        self.assertEqual(blobs[0], blobs[2], "1 and 3 ranks differ")

    def test_job_file_runs_the_same_merge(self):
        job = self.path("ta.yaml")
        out = self.path("from-job")
        with open(job, "w") as f:
            f.write("merge_method: task_arithmetic\nbase_model: %s\nmodels:\n"
                    "  - model: %s\n    parameters: {weight: -0.5}\n"
                    "  - model: %s\n    parameters: {weight: 1}\n"
                    "  - model: %s\n    parameters:\n      weight: 2.25\n"
                    "parameters:\n  lambda: 0.6\n  normalize: true\n"
                    "dtype: float32\nout_dtype: bfloat16\nout_path: %s\n" % (self.base_path, *self.paths, out))
        direct = self.path("direct")
        self.run_ok([(["run", job], 2),
                     (self.args(direct, "--weights", "-0.5,1,2.25", "--lambda", "0.6", "--normalize", "true",
                                "--out-dtype", "BF16"), None)])
        want = reference(self.base, self.models, [-0.5, 1, 2.25], 0.6, normalize=True, out_dtype="BF16")
        self.assert_same_tensors(out, want)
        # The same tensors, byte for byte (the headers' provenance tells a job
        # file from command-line options).
        got, direct_got = read_checkpoint(out)[0], read_checkpoint(direct)[0]
        self.assertEqual(sorted(got), sorted(direct_got))
        for name, (dtype, values) in got.items():
            self.assertEqual((dtype, values.tobytes()), (direct_got[name][0], direct_got[name][1].tobytes()), name)

    def test_the_example_job(self):
        run_soupkit(["example", "demo"], cwd=self.tmp)
        run_soupkit(["run", os.path.join(JOBS, "task-arithmetic.yaml")], ranks=2, cwd=self.tmp)
        base, _ = read_checkpoint(self.path("demo", "base"))
        finetuned, _ = read_checkpoint(self.path("demo", "finetuned"))
        self.assert_same_tensors(self.path("demo", "task-arithmetic"), reference(base, [finetuned], [1.0], 0.5))

    def test_help_is_generated_from_the_spec(self):
        top = run_soupkit(["--help"]).stdout
        for name in ("monosoup", "soup", "task-arithmetic", "transplant", "convert", "inspect", "example", "run"):
            self.assertRegex(top, r"\n  %s +\S" % re.escape(name))
        help = run_soupkit(["task-arithmetic", "--help"]).stdout
        self.assertIn("usage: soupkit task-arithmetic --base BASE --out OUT", help)
        for option in ("--weights", "--lambda", "--normalize", "--out-dtype", "--memory-budget"):
            self.assertIn(option, help)
        self.assertIn("(default false)", " ".join(help.split()))
        jobs = run_soupkit(["run", "--help"]).stdout
        for name in ("task_arithmetic", "linear", "model_soup", "uniform_soup", "greedy_soup", "monosoup",
                     "transplant", "tokenizer_transplant", "convert"):
            self.assertRegex(jobs, r"\n  %s +soupkit " % name)


class TaskArithmeticMemory(TaskArithmeticBase):
    def test_a_tensor_larger_than_the_budget_streams_within_it(self):
        # A 64 MiB float32 tensor in the base and two models against a 16 MiB budget.
        rng = np.random.default_rng(5)
        big = lambda: ("F32", rng.standard_normal((2048, 8192), dtype=np.float32))
        base, models = {"w": big()}, [{"w": big()}, {"w": big()}]
        write_model_dir(self.path("big-base"), base)
        paths = [self.path("big-m0"), self.path("big-m1")]
        for p, m in zip(paths, models):
            write_model_dir(p, m)
        budget = 16 << 20
        small = {"w": ("F32", np.ones((4, 4), dtype=np.float32))}
        for name in ("small-base", "small-m"):
            write_model_dir(self.path(name), small)
        common = ["--memory-budget", "16MiB", "--weights", "0.5,-1.5", "--lambda", "0.9"]
        proc, baseline = run_with_peak_rss(["task-arithmetic", "--base", self.path("small-base"), "--out",
                                            self.path("small-out"), *common, self.path("small-m"), self.path("small-m")])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        proc, peak = run_with_peak_rss(["task-arithmetic", "--base", self.path("big-base"), "--out",
                                        self.path("big-out"), *common, *paths])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertLess(peak, baseline + budget,
                        "peak RSS %.1f MiB over a %.1f MiB baseline and a 16 MiB budget" % (peak / 2**20,
                                                                                           baseline / 2**20))
        self.assert_same_tensors(self.path("big-out"), reference(base, models, [0.5, -1.5], 0.9))


class TaskArithmeticRefusals(TaskArithmeticBase):
    """Each bad input: exit 1, one error line naming the parameter, tensor or model, nothing at OUT."""

    def variant(self, name, change):
        tensors = make_model(20, ROWS)
        change(tensors)
        path = self.path(name)
        write_model_dir(path, tensors)
        return path

    def write_job(self, name, text):
        path = self.path(name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def check(self, cases):
        """cases: (label, args with OUT for the output, ranks, names in the error line, words)."""
        outs = [self.path("out-" + label) for label, *_ in cases]
        jobs = [([out if a == "OUT" else a for a in args], ranks) for (_, args, ranks, _, _), out in zip(cases, outs)]
        for (label, _, _, names, words), out, proc in zip(cases, outs, self.run_many(jobs)):
            with self.subTest(label):
                self.assert_failed(proc, names, words)
                self.assert_no_output(out)

    def test_mismatched_models(self):
        changes = {
            "missing": lambda t: t.pop("c.half"),
            "added": lambda t: t.update({"zz.extra": ("F32", np.zeros(3, dtype=np.float32))}),
            "shaped": lambda t: t.update({"a.weight": ("F32", np.zeros((ROWS, 511), dtype=np.float32))}),
            "ids": lambda t: t["d.ids"][1].__setitem__(7, 99),
            "retyped": lambda t: t.update({"d.ids": ("F32", np.arange(10, dtype=np.float32))}),
        }
        missing, added, shaped, changed, retyped = (self.variant(name, change) for name, change in changes.items())
        m0 = self.paths[0]
        self.check([
            ("missing", self.args("OUT", models=[m0, missing]), None, ["'c.half'", missing, "model 2"], ["not in"]),
            ("missing-3ranks", self.args("OUT", models=[m0, m0, missing]), 3, ["'c.half'", missing], ["not in"]),
            ("extra", self.args("OUT", models=[added]), 2, ["'zz.extra'", added], ["not in"]),
            ("shape", self.args("OUT", models=[shaped]), 2, ["'a.weight'", "[300, 512]", "[300, 511]", shaped],
             ["shape"]),
            ("int-differs", self.args("OUT", models=[m0, changed]), 2, ["'d.ids'", "element 7", changed, "model 2"],
             ["identical"]),
            ("int-vs-float", self.args("OUT", models=[retyped]), None, ["'d.ids'", "I64", "F32", retyped], ["is"]),
        ])

    def test_bad_options(self):
        m0, m1 = self.paths[:2]
        self.check([
            ("weights-count", self.args("OUT", "--weights", "1,2,3", models=[m0, m1]), None,
             ["--weights", "3 values for 2 models"], ["values"]),
            ("weights-text", self.args("OUT", "--weights", "1,x", models=[m0, m1]), None, ["--weights", "'x'"],
             ["not a finite number"]),
            ("lambda-inf", self.args("OUT", "--lambda", "inf"), None, ["--lambda", "'inf'"], ["not a finite number"]),
            ("normalize-text", self.args("OUT", "--normalize", "maybe"), None, ["--normalize", "'maybe'"],
             ["true or false"]),
            ("unknown-option", self.args("OUT", "--rescal", "true"), None, ["rescal"], ["unrecognised", "unknown"]),
            ("no-base", ["task-arithmetic", "--out", "OUT", "--weights", "1", m0], None, ["base"], ["required"]),
            ("no-weights", ["task-arithmetic", "--base", self.base_path, "--out", "OUT", m0], None, ["--weights"],
             ["required"]),
        ])

    def test_bad_job_files(self):
        base, (m0, m1) = self.base_path, self.paths[:2]
        head = "merge_method: task_arithmetic\nbase_model: %s\nmodels: [%s, %s]\nout_path: OUT\n" % (base, m0, m1)
        cases = {
            # Refused by name, not dropped: a parameter task_arithmetic does not have...
            "unknown-parameter": (head + "parameters: {rescal: true}\n", ["parameters.rescal", "no parameter"]),
            "unknown-false": (head + "parameters: {int8_mas: false}\n", ["parameters.int8_mas"]),
            # ... `normalize: false` for a method that has no normalize ...
            "soup-normalize-false": ("merge_method: model_soup\nmodels: [%s, %s]\nout_path: OUT\n"
                                     "parameters: {normalize: false}\n" % (m0, m1),
                                     ["parameters.normalize", "soupkit soup"]),
            # ... a global parameter given per model (mergekit ignores it there) ...
            "per-model-lambda": ("merge_method: task_arithmetic\nbase_model: %s\nout_path: OUT\nmodels:\n"
                                 "  - model: %s\n    parameters: {weight: 1, lambda: 0.5}\n" % (base, m0),
                                 ["models[0].parameters.lambda", "global parameter"]),
            # ... a weight missing (mergekit requires it of every model but the base) ...
            "no-weight": (head, ["models[0]", "'weight' is required"]),
            "no-base": ("merge_method: task_arithmetic\nmodels: [%s]\nout_path: OUT\n" % m0, ["needs a base_model"]),
        }
        jobs, outs = [], []
        for label, (text, _) in cases.items():
            outs.append(self.path("out-job-" + label))
            jobs.append(self.write_job(label + ".yaml", text.replace("OUT", outs[-1])))
        for (label, (_, names)), job, out, proc in zip(cases.items(), jobs, outs,
                                                        self.run_many([(["run", j], None) for j in jobs])):
            with self.subTest(label):
                self.assert_failed(proc, [job, *names], ["option", "take", "needs", "parameter", "required"])
                self.assert_no_output(out)


if __name__ == "__main__":
    import unittest
    unittest.main()
