"""The ScaLAPACK grid route gives the same bytes every time the same job runs
on the same rank count, and after a kill and --resume that recomputes grid
tensors. (Before BLACS's combines were made repeatable, pdsyevd on a 3 x 1 grid
gave a different float64 result in most runs.) Outputs are float64, so a
difference in the last bit of the computation shows in the bytes."""
import filecmp
import json
import os
import unittest

import numpy as np

from soupkit_testlib import TempDirTestCase, run_soupkit, write_model_dir

RANKS = 3
RUNS = 5


def make_pair(root):
    rng = np.random.default_rng(11)
    base, fine = {}, {}
    for name, shape in (("a.weight", (1000, 300)), ("b.weight", (300, 700)), ("c.weight", (512, 256))):
        w0 = rng.standard_normal(shape) * 0.02
        low_rank = rng.standard_normal((shape[0], 8)) @ rng.standard_normal((8, shape[1]))
        base[name] = ("F64", w0)
        fine[name] = ("F64", w0 + 1e-3 * low_rank + 1e-4 * rng.standard_normal(shape))
    write_model_dir(os.path.join(root, "base"), base)
    write_model_dir(os.path.join(root, "fine"), fine)


class GridReproducible(TempDirTestCase):
    def setUp(self):
        super().setUp()
        make_pair(self.tmp)

    def monosoup(self, out, *extra, **kwargs):
        # --scalapack-min-dim 1: every matrix goes to a grid of all ranks.
        return run_soupkit(["monosoup", "--base", self.path("base"), "--finetuned", self.path("fine"), "--out", out,
                            "--scalapack-min-dim", "1", *extra], ranks=RANKS, **kwargs)

    def test_same_job_same_bytes(self):
        outs = []
        for i in range(RUNS):
            out = self.path("run%d.safetensors" % i)
            self.monosoup(out, "--report", self.path("report%d.json" % i))
            outs.append(out)
        with open(self.path("report0.json")) as f:
            grids = [t.get("grid") for t in json.load(f)["tensors"]]
        self.assertEqual(grids, [[RANKS, 1]] * 3, "every tensor must have run on the grid")
        different = [o for o in outs[1:] if not filecmp.cmp(outs[0], o, shallow=False)]
        self.assertEqual(different, [], "grid results differ between runs of the same job")

    def test_kill_and_resume_recomputing_grid_tensors(self):
        ref = self.path("reference.safetensors")
        self.monosoup(ref)
        out = self.path("resumed.safetensors")
        killed = self.monosoup(out, check=False, env={"SOUPKIT_FAULT_KILL_AFTER": "1"})
        self.assertNotEqual(killed.returncode, 0)
        with open(out + ".journal") as f:
            journaled = sum('"tensor"' in line for line in f)
        self.assertLess(journaled, 3, "the kill must leave grid tensors to recompute")
        resumed = self.monosoup(out, "--resume")
        self.assertIn("resuming:", resumed.stderr)
        self.assertTrue(filecmp.cmp(ref, out, shallow=False), "a resumed grid run must give the same bytes")


if __name__ == "__main__":
    unittest.main()
