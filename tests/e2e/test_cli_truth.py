"""A command line that tells the truth (issue 12): MonoSoup refuses inputs it
cannot merge instead of copying the fine-tuned model with exit 0, and says
in one line how many matrices it keeps because they do not match the base;
an output name with the extension of a format soupkit does not write is
refused instead of silently becoming a directory of that name.
"""
import os

import numpy as np

from soupkit_testlib import run_soupkit, write_model_dir
from test_bad_input import BadInputBase


def pair(seed, names):
    rng = np.random.default_rng(seed)
    return {n: ("F32", rng.standard_normal((12, 8)).astype(np.float32)) for n in names}


class MonosoupTruth(BadInputBase):
    def setUp(self):
        super().setUp()
        names = ["l%d.weight" % i for i in range(6)]
        self.base = self.path("base")
        write_model_dir(self.base, pair(1, names))
        self.fine = self.path("fine")
        fine = pair(1, names)
        for n in names:
            fine[n] = ("F32", fine[n][1] + np.float32(0.01) * pair(2, names)[n][1])
        write_model_dir(self.fine, fine)
        self.unrelated = self.path("unrelated")
        write_model_dir(self.unrelated, pair(3, ["other%d.weight" % i for i in range(6)]))
        self.partial = self.path("partial")  # 4 of 6 matrices missing from it
        write_model_dir(self.partial, {n: v for n, v in pair(1, names).items() if n in names[:2]})

    def monosoup(self, base, fine, out):
        return run_soupkit(["monosoup", "--base", base, "--finetuned", fine, "--out", out], check=False)

    def test_an_unrelated_base_is_an_error(self):
        out = self.path("out-unrelated")
        proc = self.monosoup(self.unrelated, self.fine, out)
        self.assert_failed(proc, ["6 floating-point matrices", self.fine, self.unrelated], ["none", "base"])
        self.assert_no_output(out)

    def test_the_same_model_twice_is_an_error(self):
        out = self.path("out-same")
        proc = self.monosoup(self.fine, self.fine, out)
        self.assert_failed(proc, ["--base", "--finetuned", self.fine], ["same model"])
        self.assert_no_output(out)

    def test_mismatches_are_one_summary_line(self):
        out = self.path("out-partial")
        proc = self.monosoup(self.partial, self.fine, out)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        warnings = [l for l in proc.stderr.splitlines() if "warning" in l]
        self.assertEqual(len(warnings), 1, proc.stderr)
        self.assertIn("4 of 6 matrices", warnings[0])
        self.assertIn("4 missing from base", warnings[0])


class DryRun(BadInputBase):
    def test_natural_order_and_what_happens_to_each_tensor(self):
        rng = np.random.default_rng(5)
        names = ["h.10.w", "h.2.w", "h.1.b"]
        base = {n: ("F32", rng.standard_normal((6, 4) if n.endswith("w") else (4,)).astype(np.float32)) for n in names}
        fine = {n: (d, v + np.float32(0.1)) for n, (d, v) in base.items()}
        write_model_dir(self.path("b"), base)
        write_model_dir(self.path("f"), fine)
        out = self.path("out.h5")
        proc = run_soupkit(["monosoup", "--base", self.path("b"), "--finetuned", self.path("f"), "--out", out,
                            "--dry-run"])
        rows = [l.split()[0] for l in proc.stdout.splitlines() if l.strip().startswith("h.")]
        self.assertEqual(rows, ["h.1.b", "h.2.w", "h.10.w"], proc.stdout)
        self.assertIn("kept: fewer than 2 dimensions", proc.stdout)
        self.assertIn("reweighted", proc.stdout)
        self.assert_no_output(out)


class ForeignOutputNames(BadInputBase):
    def test_an_extension_soupkit_does_not_write_is_refused(self):
        model = self.path("m")
        write_model_dir(model, pair(4, ["a.weight"]))
        for name, args in [("merged.bin", ["soup", "uniform", "--out", "OUT", model, model]),
                           ("x.gguf", ["convert", model, "OUT"]),
                           ("m.PT", ["linear", "--weights", "1", "--out", "OUT", model])]:
            with self.subTest(name):
                out = self.path(name)
                proc = run_soupkit([out if a == "OUT" else a for a in args], check=False)
                self.assert_failed(proc, [out, ".safetensors", ".h5"], ["does not write"])
                self.assertFalse(os.path.exists(out))


    def test_an_output_that_is_or_holds_or_sits_in_an_input_is_refused(self):
        """Even with --overwrite: soupkit replaces only what it created, never an input."""
        work = self.path("work")
        model = os.path.join(work, "m")
        write_model_dir(model, pair(5, ["a.weight", "b.weight"]))
        single = self.path("single.safetensors")
        write_model_dir(self.path("tmp-single"), pair(6, ["a.weight", "b.weight"]))
        os.rename(os.path.join(self.path("tmp-single"), "model.safetensors"), single)
        link = self.path("link-to-m")
        os.symlink(model, link)

        def contents(path):
            with open(path, "rb") as f:
                return f.read()

        def snapshot():
            files = [os.path.join(d, f) for d, _, fs in os.walk(work) for f in fs] + [single]
            return {f: contents(f) for f in files}

        before = snapshot()
        cases = [("the model directory itself", ["soup", "uniform", "--overwrite", "--out", model, model, single],
                  ["also an input", model]),
                 ("a single file input", ["convert", "--overwrite", single, single], ["also an input", single]),
                 ("through a symbolic link", ["soup", "uniform", "--overwrite", "--out", link, model, single],
                  ["also an input"]),
                 ("a directory holding an input", ["soup", "uniform", "--overwrite", "--out", work, model, single],
                  ["replace a directory", model]),
                 ("a shard inside the input directory",
                  ["soup", "uniform", "--overwrite", "--out", os.path.join(model, "model.safetensors"), model, single],
                  ["inside the input model directory", model]),
                 ("a new file inside the input directory",
                  ["monosoup", "--base", single, "--finetuned", model, "--out", os.path.join(model, "x.h5")],
                  ["inside the input model directory", model])]
        for what, args, words in cases:
            with self.subTest(what):
                proc = run_soupkit(args, check=False)
                self.assertEqual(proc.returncode, 1, proc.stderr)
                errors = [line for line in proc.stderr.splitlines() if line.startswith("soupkit: error")]
                self.assertEqual(len(errors), 1, proc.stderr)
                err = errors[0]
                for w in words:
                    self.assertIn(w, err)
                self.assertEqual(snapshot(), before, "an input changed")
                self.assertFalse(os.path.exists(os.path.join(model, "x.h5")))

if __name__ == "__main__":
    import unittest
    unittest.main()
