"""The demo explains what MonoSoup did (issue 12): on the built-in example,
MonoSoup's closing lines say how far the result is from the base and from
the fine-tuned model, what k and the lambdas were for a few matrices, and
where the report is. Every number is checked against numpy (float64) on the
tensors actually written and read back, not against soupkit's own report
alone; on one rank's tensors and on a ScaLAPACK grid."""
import json
import re

import numpy as np

from soupkit_testlib import TempDirTestCase, as_float64, read_checkpoint, run_soupkit

NUMBER = r"([0-9.]+(?:e[+-]?\d+)?)"
DISTANCES = re.compile(r"^monosoup: over the (\d+) reweighted matrices the result is %s%% away from the base .*"
                       r"and %s%% away from the fine-tuned model: it keeps %s%% of the fine-tuning update's size$"
                       % (NUMBER, NUMBER, NUMBER))
EXAMPLE = re.compile(r"^monosoup:   (\S+): k = (\d+) of (\d+) directions, strongest x([0-9.]+), the rest x([0-9.]+)$")


class DemoSummary(TempDirTestCase):
    def setUp(self):
        super().setUp()
        run_soupkit(["example", self.path("demo")])
        self.base, _ = read_checkpoint(self.path("demo", "base"))
        self.fine, _ = read_checkpoint(self.path("demo", "finetuned"))

    def run_and_check(self, ranks, *extra):
        out, report_path = self.path("out%d" % ranks), self.path("report%d.json" % ranks)
        proc = run_soupkit(["monosoup", "--base", self.path("demo", "base"), "--finetuned",
                            self.path("demo", "finetuned"), "--out", out, "--report", report_path, *extra],
                           ranks=ranks)
        lines = proc.stderr.splitlines()
        with open(report_path) as f:
            report = json.load(f)
        result, _ = read_checkpoint(out)
        reweighted = [r for r in report["tensors"] if r.get("action") == "monosoup"]
        self.assertGreaterEqual(len(reweighted), 5)
        if "--scalapack-min-dim" in extra:
            self.assertTrue(all("grid" in r for r in reweighted), reweighted)

        # numpy, float64, from the three checkpoints as stored.
        f64 = lambda model, name: as_float64(*model[name]).astype(np.float64)
        sums = dict(to_base=0.0, to_fine=0.0, base=0.0, fine=0.0, update=0.0)
        for r in reweighted:
            w, w0, w1 = f64(result, r["name"]), f64(self.base, r["name"]), f64(self.fine, r["name"])
            for key, value in (("to_base", w - w0), ("to_fine", w - w1), ("base", w0), ("fine", w1),
                               ("update", w1 - w0)):
                sums[key] += float(np.sum(value * value))
            # the report's per-matrix figures
            np.testing.assert_allclose(r["distance_to_base"], np.linalg.norm(w - w0), rtol=1e-9, err_msg=r["name"])
            np.testing.assert_allclose(r["distance_to_finetuned"], np.linalg.norm(w - w1), rtol=1e-9,
                                       err_msg=r["name"])
        rel_base = np.sqrt(sums["to_base"] / sums["base"])
        rel_fine = np.sqrt(sums["to_fine"] / sums["fine"])
        kept = np.sqrt(sums["to_base"] / sums["update"])
        self.assertTrue(0 < rel_fine < rel_base, (rel_fine, rel_base))  # MonoSoup stays close to the fine-tune
        summary = report["summary"]
        np.testing.assert_allclose([summary["relative_distance_to_base"], summary["relative_distance_to_finetuned"],
                                    summary["update_kept"]], [rel_base, rel_fine, kept], rtol=1e-9)

        # The printed line, to its three significant digits.
        match = [DISTANCES.match(l) for l in lines if DISTANCES.match(l)]
        self.assertEqual(len(match), 1, proc.stderr)
        m = match[0]
        self.assertEqual(int(m.group(1)), len(reweighted))
        np.testing.assert_allclose([float(m.group(i)) for i in (2, 3, 4)], [100 * rel_base, 100 * rel_fine, 100 * kept],
                                   rtol=6e-3)
        # A few matrices in words: k of r directions, the two lambdas, as in the report.
        examples = [EXAMPLE.match(l) for l in lines if EXAMPLE.match(l)]
        self.assertTrue(2 <= len(examples) <= 3, proc.stderr)
        by_name = {r["name"]: r for r in reweighted}
        for e in examples:
            r = by_name[e.group(1)]
            self.assertEqual((int(e.group(2)), int(e.group(3))), (r["k"], r["rank"]))
            self.assertLessEqual(r["k"], r["rank"])
            np.testing.assert_allclose([float(e.group(4)), float(e.group(5))], [r["lambda_high"], r["lambda_low"]],
                                       atol=5e-4)
        self.assertIn("monosoup: every matrix's k, lambdas and distances: " + report_path, lines)

    def test_on_one_rank_per_matrix(self):
        self.run_and_check(2)

    def test_on_a_grid(self):
        self.run_and_check(3, "--scalapack-min-dim", "2")


if __name__ == "__main__":
    import unittest
    unittest.main()
