"""Provenance (issue 12): every output and JSON report says what made it:
the soupkit version, the method and its parameters, each input (the path as
given and resolved, its format, tensor count and bytes, checked here
against the fixtures numpy wrote), and in the reports and HDF5 outputs the
run too (rank count, host, start time, duration), which no output holds:
its bytes are the same for any rank count (test_engine)."""
import datetime
import json
import os
import socket
import time

import h5py
import numpy as np
import yaml

from soupkit_testlib import TempDirTestCase, read_safetensors, run_soupkit, write_model_dir, write_safetensors


def model(seed):
    rng = np.random.default_rng(seed)
    return {"l%d.weight" % i: ("F32", rng.standard_normal((16, 8)).astype(np.float32)) for i in range(3)} | {
        "l.bias": ("F32", rng.standard_normal(8).astype(np.float32))}


BYTES = 3 * 16 * 8 * 4 + 8 * 4  # tensor bytes of model()


class Provenance(TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.version = run_soupkit(["--version"]).stdout.split()[-1]
        self.base, self.fine = self.path("base"), self.path("fine")
        write_model_dir(self.base, model(1))
        fine = model(1)
        for name, (d, v) in model(2).items():
            fine[name] = (d, fine[name][1] + np.float32(0.01) * v)
        write_model_dir(self.fine, fine)
        # A file input given through a symlink: its resolved path differs.
        self.file = self.path("c.safetensors")
        write_safetensors(self.file, model(3))
        os.symlink(self.file, self.path("link.safetensors"))

    def check_inputs(self, inputs, given):
        self.assertEqual([i["path"] for i in inputs], given)
        for i, path in zip(inputs, given):
            self.assertEqual(i["resolved"], os.path.realpath(path))
            self.assertEqual(i["format"], "safetensors" if path.endswith(".safetensors")
                             else "model directory (safetensors)")
            self.assertEqual(i["tensors"], 4)
            self.assertEqual(i["tensor_bytes"], BYTES)

    def check_run(self, run, ranks, before, after):
        self.assertEqual(run["ranks"], ranks)
        self.assertEqual(run["host"], socket.gethostname())
        started = datetime.datetime.strptime(run["started_utc"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        self.assertTrue(before - 1 <= started <= after, (before, started, after))
        self.assertTrue(0 < run["seconds"] <= after - before, run)

    def test_monosoup_report_and_hdf5_output(self):
        report = self.path("report.json")
        before = time.time()
        run_soupkit(["monosoup", "--base", self.base, "--finetuned", self.fine, "--out", self.path("m.h5"),
                     "--report", report, "--mode", "variance", "--variance-threshold", "0.7"], ranks=2)
        after = time.time()
        with open(report) as f:
            p = json.load(f)["provenance"]
        self.assertEqual(p["method"], "monosoup")
        self.assertEqual(p["soupkit_version"], self.version)
        self.assertEqual([i["role"] for i in p["inputs"]], ["base", "finetuned"])
        self.check_inputs(p["inputs"], [self.base, self.fine])
        self.assertEqual(p["parameters"]["mode"], "variance")
        self.assertEqual(p["parameters"]["variance_threshold"], 0.7)
        self.check_run(p["run"], 2, before, after)
        with h5py.File(self.path("m.h5"), "r") as f:
            h5 = json.loads(f.attrs["provenance"])
        self.assertNotIn("run", h5)  # the output's bytes do not depend on the run
        del p["run"]
        self.assertEqual(h5, p)

    def test_soup_directory_output(self):
        out = self.path("soup")
        run_soupkit(["soup", "uniform", "--out", out, "--shard-size", "300B", self.base,
                     self.path("link.safetensors")], ranks=3)
        shards = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
        self.assertGreater(len(shards), 1)
        provenances = [json.loads(read_safetensors(os.path.join(out, s))[1]["soupkit_provenance"]) for s in shards]
        self.assertTrue(all(q == provenances[0] for q in provenances))  # every shard carries it
        p = provenances[0]
        self.assertEqual((p["method"], p["soupkit_version"]), ("soup", self.version))
        self.check_inputs(p["inputs"], [self.base, self.path("link.safetensors")])
        self.assertNotEqual(p["inputs"][1]["resolved"], p["inputs"][1]["path"])
        self.assertNotIn("run", p)  # the same bytes for any rank count

    def test_run_job_file_model_card(self):
        job = self.path("job.yml")
        with open(job, "w") as f:
            yaml.safe_dump({"merge_method": "task_arithmetic", "base_model": self.base,
                            "models": [{"model": self.fine, "parameters": {"weight": 0.5}},
                                       {"model": self.file, "parameters": {"weight": 0.25}}]}, f)
        out = self.path("merged")
        run_soupkit(["run", job, out], ranks=2)
        with open(os.path.join(out, "README.md")) as f:
            card = f.read()
        block = card.split("## Provenance")[1].split("```json\n")[1].split("```")[0]
        p = json.loads(block)
        self.assertEqual((p["method"], p["soupkit_version"]), ("task_arithmetic", self.version))
        # (the inputs in the order of "models", where the base comes last)
        self.check_inputs(p["inputs"], [self.fine, self.file, self.base])
        self.assertEqual([m["model"] for m in p["models"]], [self.fine, self.file, self.base])
        self.assertEqual([m["parameters"].get("weight") for m in p["models"]], [0.5, 0.25, None])
        _, metadata = read_safetensors(os.path.join(out, "model.safetensors"))
        self.assertEqual(json.loads(metadata["soupkit_provenance"]), p)


if __name__ == "__main__":
    import unittest
    unittest.main()
