"""`soupkit soup uniform|greedy` against independent numpy computations.

Uniform and weighted soups: every floating-point tensor must equal, bit for
bit, numpy's float64 weighted sum in ingredient order (w_i normalised by a
sequential sum) rounded once to the output dtype; with --accumulate F32, the
same in float32. Integer/bool tensors are copied. Outputs are byte-identical
on 1, 2 and 3 ranks.

Greedy soups: a real evaluator (soup_evaluator.py: a tiny linear classifier
on a fixed data set) with ingredients placed so the greedy path is known in
advance; the log (order, scores, kept flags), the number of evaluator calls
and the final weights are asserted, for both acceptance rules, with
--scores, and across an interruption and --resume.
"""
import json
import os
import sys

import numpy as np

from soupkit_testlib import (NP_DTYPES, SOUPKIT, TempDirTestCase, as_float64, f32_to_bf16_bits, f64_to_bf16_bits,
                             read_checkpoint, write_model_dir, write_safetensors)
from test_bad_input import BadInputBase

EVALUATOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "soup_evaluator.py")


def store(values, dtype, from_f32=False):
    """Rounds float64 (or float32 when from_f32) values to a safetensors float dtype's raw elements."""
    if dtype == "BF16":
        return f32_to_bf16_bits(values) if from_f32 else f64_to_bf16_bits(values)
    return np.asarray(values).astype(NP_DTYPES[dtype])


def as_float32(dtype, raw):
    return as_float64(dtype, raw).astype(np.float32)  # exact for F32/F16/BF16


def reference_soup(models, weights=None, accumulate="F64", out_dtype=None):
    """The soup of `models` (dicts name -> (dtype, raw)) computed with numpy."""
    raw = weights if weights is not None else [1.0] * len(models)
    total = 0.0
    for w in raw:  # sequential, as the ingredients are added
        total += w
    w = [x / total for x in raw]
    out = {}
    for name, (dtype, first) in models[0].items():
        if dtype not in ("F64", "F32", "F16", "BF16"):
            out[name] = (dtype, first)
            continue
        if accumulate == "F64":
            acc = w[0] * as_float64(dtype, first)
            for wi, m in zip(w[1:], models[1:]):
                acc = acc + wi * as_float64(m[name][0], m[name][1])
        else:
            acc = np.float32(w[0]) * as_float32(dtype, first)
            for wi, m in zip(w[1:], models[1:]):
                acc = acc + np.float32(wi) * as_float32(m[name][0], m[name][1])
        target = out_dtype or dtype
        out[name] = (target, store(acc, target, from_f32=accumulate == "F32").reshape(np.shape(first)))
    return out


def make_model(seed, rows=1024):
    """Float tensors of three dtypes (one spanning several read blocks), integer/bool tensors shared by all
    models, a scalar and an empty tensor."""
    rng = np.random.default_rng(seed)
    return {
        "a.weight": ("F32", rng.standard_normal((rows, 512)).astype(np.float32)),
        "b.bias": ("BF16", f32_to_bf16_bits(rng.standard_normal(53).astype(np.float32))),
        "c.half": ("F16", rng.standard_normal((8, 5, 3)).astype(np.float16)),
        "d.ids": ("I64", np.arange(10, dtype=np.int64) * 7),
        "e.mask": ("BOOL", np.eye(4, dtype=np.bool_)),
        "s.scalar": ("F32", np.array(rng.standard_normal(), dtype=np.float32)),
        "z.empty": ("F32", np.zeros((0, 4), dtype=np.float32)),
    }


def config(i):
    return {"config.json": json.dumps({"model_type": "toy", "ingredient": i}), "tokenizer.json": '{"vocab": %d}' % i}


class UniformSoup(BadInputBase):
    def ingredients(self, n, rows=1024, tag="m"):
        models, paths = [], []
        for i in range(n):
            models.append(make_model(100 + i, rows))
            paths.append(self.path("%s%d" % (tag, i)))
            write_model_dir(paths[-1], models[-1], extra_files=config(i))
        return models, paths

    def test_uniform_two_ingredients_any_rank_count(self):
        models, paths = self.ingredients(2)
        outs = {r: self.path("out-%s" % r) for r in (None, 2, 3)}
        self.run_ok([(["soup", "uniform", "--out", outs[r], *paths], r) for r in outs])
        expected = reference_soup(models)
        for out in outs.values():
            self.assert_same_tensors(out, expected)
            # Config and tokenizer come from the first ingredient.
            for name, text in config(0).items():
                with open(os.path.join(out, name)) as f:
                    self.assertEqual(f.read(), text)
        blobs = []
        for out in outs.values():
            with open(os.path.join(out, "model.safetensors"), "rb") as f:
                blobs.append(f.read())
        self.assertEqual(blobs[0], blobs[1], "1 and 2 ranks differ")
        self.assertEqual(blobs[0], blobs[2], "1 and 3 ranks differ")

    def test_weighted_chunked_and_dtypes(self):
        # A small memory budget makes a.weight go in several row ranges and blocks.
        models, paths = self.ingredients(3)
        weights = [3.0, 1.0, 0.5]
        out_f64 = self.path("weighted.safetensors")
        out_bf16 = self.path("weighted-bf16")
        out_f32acc = self.path("weighted-f32acc")
        out_h5 = self.path("weighted.h5")
        common = ["--weights", "3,1,0.5", "--memory-budget", "4MB"]
        self.run_ok([
            (["soup", "uniform", "--out", out_f64, *common, *paths], 2),
            (["soup", "uniform", "--out", out_h5, *common, *paths], 3),
            (["soup", "uniform", "--out", out_bf16, "--out-dtype", "BF16", *common, *paths], 3),
            (["soup", "uniform", "--out", out_f32acc, "--accumulate", "F32", "--out-dtype", "F16", *common, *paths],
             None),
        ])
        self.assert_same_tensors(out_f64, reference_soup(models, weights))
        # HDF5 output (written collectively by 3 ranks), read back through convert (tested against h5py).
        back = self.path("weighted-h5.safetensors")
        self.run_ok([(["convert", out_h5, back], None)])
        self.assert_same_tensors(back, reference_soup(models, weights))
        self.assert_same_tensors(out_bf16, reference_soup(models, weights, out_dtype="BF16"))
        self.assert_same_tensors(out_f32acc, reference_soup(models, weights, accumulate="F32", out_dtype="F16"))
        # The soup really is weighted: not the uniform mean.
        uniform = reference_soup(models)["a.weight"][1]
        self.assertFalse(np.array_equal(read_checkpoint(out_f64)[0]["a.weight"][1], uniform))

    def test_one_and_twelve_ingredients(self):
        models, paths = self.ingredients(12, rows=96)
        one, twelve = self.path("one"), self.path("twelve.safetensors")
        twelve_f32acc = self.path("twelve-f32acc.safetensors")
        self.run_ok([(["soup", "uniform", "--out", one, paths[0]], None),
                     (["soup", "uniform", "--out", twelve, *paths], 3),
                     (["soup", "uniform", "--out", twelve_f32acc, "--accumulate", "f32", *paths], 2)])
        # The soup of one model is that model, bit for bit.
        self.assert_same_tensors(one, models[0])
        self.assert_same_tensors(twelve, reference_soup(models))
        self.assert_same_tensors(twelve_f32acc, reference_soup(models, accumulate="F32"))


# Greedy soups. Classifier directions (degrees) and the evaluator's
# accuracy, 1 - round(|angle|)/180 (see soup_evaluator.py):
#   A +10 -> 170/180, B -30 -> 150/180, C +60 -> 120/180, D -100 -> 80/180
#   {A,B} -10 -> 170/180 (ties A), {A,B,C} 12.9 -> 167/180, {A,B,D} -38.0 -> 142/180,
#   {A,C} 35 -> 145/180, {A,D} -45 -> 135/180.
ANGLES = {"A": 10.0, "B": -30.0, "C": 60.0, "D": -100.0}
SCORES = {"A": 170 / 180, "B": 150 / 180, "C": 120 / 180, "D": 80 / 180}
CLI_ORDER = ["C", "A", "D", "B"]  # so that sorting by score matters


def expected_steps(rule):
    """(ingredient, candidate members, candidate score, kept) for each greedy step."""
    if rule == "greater-or-equal":
        return [("A", "A", 170 / 180, True), ("B", "AB", 170 / 180, True), ("C", "ABC", 167 / 180, False),
                ("D", "ABD", 142 / 180, False)]
    return [("A", "A", 170 / 180, True), ("B", "AB", 170 / 180, False), ("C", "AC", 145 / 180, False),
            ("D", "AD", 135 / 180, False)]


class GreedySoup(BadInputBase):
    def setUp(self):
        super().setUp()
        self.models, self.paths = {}, {}
        for k, name in enumerate(CLI_ORDER):
            rng = np.random.default_rng(k)
            angle = np.deg2rad(ANGLES[name])
            tensors = {"clf.weight": ("F32", np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)),
                       "body.weight": ("BF16", f32_to_bf16_bits(rng.standard_normal((64, 32)).astype(np.float32)))}
            self.models[name] = tensors
            if name == "D":  # a plain .safetensors ingredient: soupkit writes it as a directory to evaluate it
                self.paths[name] = self.path("D.safetensors")
                write_safetensors(self.paths[name], tensors)
            else:
                self.paths[name] = self.path(name)
                cfg = {"config.json": json.dumps({"model_type": "toy-classifier", "from": name})}
                write_model_dir(self.paths[name], tensors, extra_files=cfg)

    def eval_cmd(self, calls, *extra):
        return " ".join([sys.executable, EVALUATOR, "{model}", "--calls", calls, *extra])

    def greedy_args(self, out, calls, *extra, eval_extra=()):
        return ["soup", "greedy", "--out", out, "--eval-cmd", self.eval_cmd(calls, *eval_extra), *extra,
                *[self.paths[n] for n in CLI_ORDER]]

    def count_calls(self, calls):
        if not os.path.exists(calls):
            return 0
        with open(calls) as f:
            return len(f.read().splitlines())

    def assert_log(self, log_path, rule, sources):
        with open(log_path) as f:
            log = json.load(f)
        self.assertEqual(log["accept"], rule)
        self.assertEqual(log["inputs"], [self.paths[n] for n in CLI_ORDER])
        self.assertEqual([e["path"] for e in log["ingredients"]], [self.paths[n] for n in CLI_ORDER])
        for entry, name in zip(log["ingredients"], CLI_ORDER):
            self.assertAlmostEqual(entry["score"], SCORES[name], places=12)
            self.assertEqual(entry["source"], sources)
        self.assertEqual(log["order"], [self.paths[n] for n in "ABCD"])
        steps = expected_steps(rule)
        self.assertEqual(len(log["steps"]), len(steps))
        for got, (name, members, score, kept) in zip(log["steps"], steps):
            self.assertEqual(got["ingredient"], self.paths[name])
            self.assertAlmostEqual(got["ingredient_score"], SCORES[name], places=12)
            self.assertEqual(got["candidate"], [self.paths[m] for m in members])
            self.assertAlmostEqual(got["candidate_score"], score, places=12)
            self.assertEqual(got["kept"], kept, got)
        final = "AB" if rule == "greater-or-equal" else "A"
        self.assertEqual(log["soup"], [self.paths[m] for m in final])
        self.assertTrue(log["complete"])
        return final

    def assert_final_weights(self, out, members):
        got, _ = read_checkpoint(out)
        expected = reference_soup([self.models[m] for m in members])
        for name, (dtype, raw) in expected.items():
            self.assertEqual(got[name][0], dtype)
            np.testing.assert_array_equal(got[name][1], raw, err_msg=name)

    def test_paper_rule_evaluates_everything(self):
        runs = [(ranks, self.path("soup-ge%d" % ranks), self.path("calls-ge%d" % ranks),
                 self.path("greedy-ge%d.json" % ranks)) for ranks in (1, 2, 3)]
        procs = self.run_many([(self.greedy_args(out, calls, "--log", log), ranks) for ranks, out, calls, log in runs])
        for (ranks, out, calls, log), proc in zip(runs, procs):
            with self.subTest(ranks=ranks):
                self.assertEqual(proc.returncode, 0, proc.stderr)
                final = self.assert_log(log, "greater-or-equal", "evaluator")
                self.assertEqual(final, "AB")
                self.assertEqual(self.count_calls(calls), 4 + 3)  # each ingredient, then each candidate, once
                self.assert_final_weights(out, final)
                self.assertFalse(os.path.exists(out + ".greedy-work"))
                with open(os.path.join(out, "config.json")) as f:  # carried from the first ingredient (C)
                    self.assertEqual(json.load(f)["from"], "C")

    def test_strict_rule_with_scores_file(self):
        out, calls, log = self.path("soup-gt.safetensors"), self.path("calls-gt"), self.path("greedy-gt.json")
        scores = self.path("scores.json")
        with open(scores, "w") as f:
            # Keys may spell the path differently (here with a redundant "./").
            json.dump({os.path.join(os.path.dirname(self.paths[n]), ".", os.path.basename(self.paths[n])): SCORES[n]
                       for n in CLI_ORDER}, f)
        proc = self.run_many([(self.greedy_args(out, calls, "--log", log, "--accept", "greater", "--scores", scores,
                                                "--keep-candidates"), 3)])[0]
        self.assertEqual(proc.returncode, 0, proc.stderr)
        final = self.assert_log(log, "greater", "scores file")
        self.assertEqual(final, "A")
        self.assertEqual(self.count_calls(calls), 3)  # candidates only
        self.assert_final_weights(out, final)
        # --keep-candidates: every candidate the evaluator saw, as a model directory.
        work = out + ".greedy-work"
        with open(calls) as f:
            self.assertEqual(f.read().splitlines(), [os.path.join(work, "candidate-%d" % k) for k in (1, 2, 3)])
        for k, (_, members, _, _) in enumerate(expected_steps("greater")[1:], start=1):
            self.assert_final_weights(os.path.join(work, "candidate-%d" % k), members)
            self.assertTrue(os.path.exists(os.path.join(work, "candidate-%d" % k, "config.json")))

    def test_evaluator_may_use_mpi(self):
        # The evaluator starts an MPI program (soupkit itself) from rank 0 of a 2-rank job: it must not
        # take itself for a rank of that job (it would fail or hang in MPI_Init).
        out = self.path("soup-mpi")
        cmd = "%s inspect {model} > /dev/null && %s %s {model}" % (SOUPKIT, sys.executable, EVALUATOR)
        scores = self.path("scores-mpi.json")
        with open(scores, "w") as f:
            json.dump({self.paths[n]: SCORES[n] for n in "AB"}, f)
        proc = self.run_many([(["soup", "greedy", "--out", out, "--eval-cmd", cmd, "--scores", scores,
                                 self.paths["A"], self.paths["B"]], 2)])[0]
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assert_final_weights(out, "AB")  # {A, B} ties A: kept under the default rule

    def test_interrupted_run_resumes_without_reevaluating(self):
        out, calls, log = self.path("soup-resume"), self.path("calls-resume"), self.path("greedy-resume.json")
        # Call 6 (the second candidate) fails: 4 ingredient scores and one candidate score are in the log.
        proc = self.run_many([(self.greedy_args(out, calls, "--log", log, eval_extra=("--fail-on-call", "6")),
                               None)])[0]
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn("simulated failure on call 6", proc.stderr)
        self.assertFalse(os.path.exists(out))
        self.assertFalse(os.path.exists(out + ".greedy-work"))
        with open(log) as f:
            partial = json.load(f)
        self.assertEqual(len(partial["ingredients"]), 4)
        self.assertEqual(len(partial["steps"]), 2)
        self.assertFalse(partial["complete"])
        self.assertEqual(self.count_calls(calls), 6)

        proc = self.run_many([(self.greedy_args(out, calls, "--log", log, "--resume"), 2)])[0]
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(self.count_calls(calls), 6 + 2)  # only the two candidates never scored
        final = self.assert_log(log, "greater-or-equal", "log")
        self.assert_final_weights(out, final)

        # A complete log: resuming again evaluates nothing and rewrites the same soup.
        proc = self.run_many([(self.greedy_args(out, calls, "--log", log, "--resume", "--overwrite"), None)])[0]
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(self.count_calls(calls), 8)
        self.assert_final_weights(out, final)


class SoupBadInput(BadInputBase):
    """Each bad input: exit 1, one error line naming the tensor/file and the ingredients, nothing at OUT."""

    def setUp(self):
        super().setUp()
        self.good = self.path("good")
        write_model_dir(self.good, make_model(1, rows=16), extra_files=config(0))

    def variant(self, name, change):
        tensors = make_model(2, rows=16)
        change(tensors)
        path = self.path(name)
        write_model_dir(path, tensors)
        return path

    def check(self, cases):
        """cases: list of (label, args without --out, ranks, names in the error line, words, more text in stderr)."""
        jobs, outs = [], []
        for label, args, ranks, *_ in cases:
            outs.append(self.path("out-" + label))
            jobs.append((["soup", *args[:1], "--out", outs[-1], *args[1:]], ranks))
        for (label, args, ranks, names, words, more), out, proc in zip(cases, outs, self.run_many(jobs)):
            with self.subTest(label):
                self.assert_failed(proc, names, words)
                for text in more:
                    self.assertIn(text, proc.stderr)
                self.assert_no_output(out)
                self.assertFalse(os.path.exists(out + ".greedy-work"), "leftover work directory")

    def test_mismatched_tensors(self):
        def drop(t):
            del t["c.half"]

        def extra(t):
            t["zz.extra"] = ("F32", np.zeros(3, dtype=np.float32))

        def reshape(t):
            t["a.weight"] = ("F32", np.zeros((16, 511), dtype=np.float32))

        def ids(t):
            t["d.ids"] = ("I64", np.where(np.arange(10) == 7, 99, np.arange(10) * 7).astype(np.int64))

        def int_as_float(t):
            t["d.ids"] = ("F32", np.arange(10, dtype=np.float32))

        missing, added = self.variant("missing", drop), self.variant("added", extra)
        shaped, changed_ids = self.variant("shaped", reshape), self.variant("ids", ids)
        retyped = self.variant("retyped", int_as_float)
        g = self.good
        self.check([
            ("missing", ["uniform", g, missing], None, ["'c.half'", g, missing], ["not in"], []),
            ("missing-3ranks", ["uniform", g, g, missing], 3, ["'c.half'", missing], ["not in"], []),
            ("extra", ["uniform", g, added], 2, ["'zz.extra'", added, g], ["not in"], []),
            ("shape", ["uniform", g, shaped], 2, ["'a.weight'", "[16, 512]", "[16, 511]", shaped], ["shape"], []),
            ("int-differs", ["uniform", g, changed_ids], 2, ["'d.ids'", "element 7", changed_ids], ["identical"], []),
            ("int-vs-float", ["uniform", g, retyped], None, ["'d.ids'", "I64", "F32", retyped], ["is"], []),
            ("greedy-mismatch", ["greedy", "--eval-cmd", "true {model}", g, shaped], 2, ["'a.weight'", shaped],
             ["shape"], []),
        ])

    def test_bad_options(self):
        g = self.good
        self.check([
            ("weights-count", ["uniform", g, g, g, "--weights", "1,2"], None, ["--weights", "2 weights", "3"], ["for"], []),
            ("weights-negative", ["uniform", g, g, "--weights", "1,-1"], None, ["--weights", "-1"], ["finite"], []),
            ("weights-text", ["uniform", g, g, "--weights", "1,x"], None, ["--weights", "'x'"], ["not a number"], []),
            ("no-placeholder", ["greedy", "--eval-cmd", "echo 1", g, g], None, ["--eval-cmd", "{model}"], ["contain"], []),
            ("bad-mode", ["average", g, g], None, ["average"], ["uniform or greedy"], []),
        ])

    def test_evaluator_and_scores_failures(self):
        g, other = self.good, self.path("other")
        write_model_dir(other, make_model(3, rows=16), extra_files=config(1))
        evaluator = " ".join([sys.executable, EVALUATOR, "{model}"])
        calls = self.path("calls")
        scores = {}
        for name, content in [("missing", {g: 0.5}), ("text", {g: 0.5, other: "high"}), ("json", "{not json"),
                              ("list", [0.5, 0.6])]:
            scores[name] = self.path("scores-%s.json" % name)
            with open(scores[name], "w") as f:
                f.write(content if isinstance(content, str) else json.dumps(content))
        self.check([
            ("eval-fails", ["greedy", "--eval-cmd", evaluator + " --calls %s --fail-on-call 1" % calls, g, other], 2,
             ["exit status 3"], ["failed"], ["simulated failure on call 1", "loading "]),
            ("eval-garbage", ["greedy", "--eval-cmd", evaluator + " --garbage", g, other], None,
             ["accuracy: n/a"], ["not a score"], ["some progress on stderr"]),
            ("eval-not-found", ["greedy", "--eval-cmd", "/nonexistent/evaluate {model}", g, other], None,
             ["/nonexistent/evaluate", "exit status 127"], ["failed"], []),
            ("scores-missing", ["greedy", "--eval-cmd", evaluator, "--scores", scores["missing"], g, other], 3,
             [scores["missing"], "ingredient 2", other], ["no score"], []),
            ("scores-text", ["greedy", "--eval-cmd", evaluator, "--scores", scores["text"], g, other], None,
             [scores["text"], other, '"high"'], ["not a finite number"], []),
            ("scores-json", ["greedy", "--eval-cmd", evaluator, "--scores", scores["json"], g, other], None,
             [scores["json"]], ["not valid JSON"], []),
            ("scores-list", ["greedy", "--eval-cmd", evaluator, "--scores", scores["list"], g, other], None,
             [scores["list"]], ["expected a JSON object"], []),
        ])
