"""Hostile command lines and job files (issue 10) that used to be accepted or
found only after all the work: keys given twice inside a `models` entry
(first value silently won), an empty output path (refused only at the final
rename, naming nothing) and soup weights whose sum overflows (every
normalised weight 0: an all-zero soup, exit 0). Each is refused up front with
exit status 1, one `soupkit: error:` line and nothing written."""
import os
import subprocess
import tempfile
import unittest

import numpy as np

from soupkit_testlib import SOUPKIT, write_model_dir, write_safetensors
from test_bad_input import TIMEOUT, BadInputBase


class HostileCli(BadInputBase):
    def setUp(self):
        super().setUp()
        self.models = [self.path("m%d" % i) for i in range(2)]
        for i, m in enumerate(self.models):
            write_model_dir(m, {"w": ("F32", np.full(4, i + 1, np.float32))})
        self.out = self.path("soup")

    def write(self, name, text):
        path = self.path(name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def run_in(self, cwd, args):
        """soupkit on one rank in `cwd` (an empty output is relative to it)."""
        with tempfile.TemporaryDirectory(dir=self.tmp) as tmpdir:
            return subprocess.run([SOUPKIT, *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd,
                                  env=dict(os.environ, TMPDIR=tmpdir))

    def soup_job(self, entries):
        return "merge_method: linear\nout_path: %s\nmodels:\n%s" % (self.out, entries)

    def test_keys_given_twice_in_a_model_entry(self):
        m0, m1 = self.models
        cases = {
            "flow weight": ("  - model: %s\n    parameters: {weight: 1, weight: 3}\n  - model: %s\n"
                            "    parameters: {weight: 1}\n" % (m0, m1), ["models[0].parameters.weight", "line 5"]),
            "block weight": ("  - model: %s\n    parameters:\n      weight: 1\n      weight: 3\n  - model: %s\n"
                             "    parameters:\n      weight: 1\n" % (m0, m1), ["models[0].parameters.weight", "line 7"]),
            "block model": ("  - model: %s\n    model: %s\n" % (m0, m1), ["models[0].model", "line 5"]),
            "flow model": ("  - {model: %s, model: %s}\n" % (m0, m1), ["models[0].model", "line 4"]),
        }
        jobs = [self.write("dup-%d.yaml" % i, self.soup_job(text)) for i, (text, _) in enumerate(cases.values())]
        procs = self.run_many([(["run", job], None) for job in jobs])
        for (label, (_, names)), job, proc in zip(cases.items(), jobs, procs):
            with self.subTest(label):
                self.assert_failed(proc, [job, *names], ["given twice"])
                self.assert_no_output(self.out)

    def test_empty_output_is_refused_before_any_work(self):
        src = self.path("in.safetensors")
        write_safetensors(src, {"w": ("F32", np.ones(4, np.float32))})
        job = self.write("empty-out.yaml", "merge_method: convert\nmodels: [%s]\nout_path: ''\n" % src)
        work = self.path("cwd")
        os.mkdir(work)
        cases = {"convert": (["convert", src, ""], ["--output"]),
                 "soup uniform": (["soup", "uniform", "--out", "", *self.models], ["--out"]),
                 "soup greedy": (["soup", "greedy", "--out", "", "--eval-cmd", "true {model}", *self.models],
                                 ["--out"]),
                 "job file": (["run", job], [job, "out_path", "line 3"])}
        for label, (args, names) in cases.items():
            with self.subTest(label):
                proc = self.run_in(work, args)
                self.assert_failed(proc, ["the output path is empty", *names], ["empty"])
                self.assertEqual(os.listdir(work), [], "something was written beside the empty output")

    def test_weights_whose_sum_overflows(self):
        cases = {"sum overflows": ("1e308,1e308", ["1e+308,1e+308", "inf"]),
                 "sum is zero": ("0,0", ["0,0", "sum to 0"])}
        procs = self.run_many([(["soup", "uniform", "--weights", weights, "--out", self.out, *self.models], None)
                               for weights, _ in cases.values()])
        for (label, (_, names)), proc in zip(cases.items(), procs):
            with self.subTest(label):
                self.assert_failed(proc, ["--weights", *names], ["not a finite number > 0"])
                self.assert_no_output(self.out)


if __name__ == "__main__":
    unittest.main()
