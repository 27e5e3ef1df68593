"""The distributed engine under every command: byte-identical outputs for any
rank count, kill-and-resume (byte-identical to an uninterrupted run, journaled
tensors verified by checksum), the output lock, fail-fast validation on the
coordinator, one error message when a rank fails, --dry-run, and the memory
budget measured from outside the process."""
import fcntl
import filecmp
import json
import os
import resource
import subprocess
import sys
import unittest

import h5py
import numpy as np

from soupkit_testlib import SOUPKIT, TempDirTestCase, run_soupkit, write_model_dir


def uneven_pair(seed=3, layers=6):
    """A base/fine-tuned pair with matrices of very different sizes (like a
    transformer: embeddings, attention, MLP, norms), fine-tuned by a low-rank
    update plus noise."""
    rng = np.random.default_rng(seed)
    base, fine = {}, {}
    shapes = {"embed": (300, 64)}
    for layer in range(layers):
        shapes[f"layers.{layer}.attn"] = (64, 64)
        shapes[f"layers.{layer}.mlp.up"] = (160 + 20 * layer, 64)
        shapes[f"layers.{layer}.mlp.down"] = (64, 160 + 20 * layer)
        shapes[f"layers.{layer}.norm"] = (64,)
    for name, shape in shapes.items():
        w0 = rng.standard_normal(shape).astype(np.float32)
        if len(shape) == 2:
            update = rng.standard_normal((shape[0], 3)) @ rng.standard_normal((3, shape[1])) * 0.02
            update += 0.002 * rng.standard_normal(shape)
        else:
            update = 0.01 * rng.standard_normal(shape)
        base[name] = ("F32", w0)
        fine[name] = ("F32", (w0 + update).astype(np.float32))
    return base, fine


def same_output(a, b):
    """Byte-identical files, or directories with byte-identical files."""
    if os.path.isdir(a):
        cmp = filecmp.dircmp(a, b)
        if cmp.left_only or cmp.right_only:
            return False
        return all(filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False) for f in cmp.common_files)
    return filecmp.cmp(a, b, shallow=False)


class EngineTestCase(TempDirTestCase):
    def setUp(self):
        super().setUp()
        base, fine = uneven_pair()
        write_model_dir(self.path("base"), base, shard_bytes=200_000, extra_files={"config.json": "{}"})
        write_model_dir(self.path("fine"), fine, shard_bytes=200_000, extra_files={"config.json": "{}"})

    def monosoup(self, out, ranks, *extra, **kwargs):
        return run_soupkit(["monosoup", "--base", self.path("base"), "--finetuned", self.path("fine"),
                            "--out", out, *extra], ranks=ranks, **kwargs)

    def assertNothingAt(self, out):
        for suffix in ("", ".partial", ".journal"):
            self.assertFalse(os.path.exists(out + suffix), out + suffix)


class Determinism(EngineTestCase):
    def test_same_bytes_for_any_rank_count(self):
        for out in ("soup.h5", "soup", "soup.safetensors"):
            outputs = []
            for ranks in (1, 2, 3):
                path = self.path(f"r{ranks}", out)
                self.monosoup(path, ranks, "--shard-size", "150KB")
                outputs.append(path)
            for other in outputs[1:]:
                self.assertTrue(same_output(outputs[0], other), f"{out}: {other} differs from {outputs[0]}")

    def test_convert_same_bytes_for_any_rank_count(self):
        outputs = []
        for ranks in (1, 3):
            outputs.append(self.path(f"c{ranks}.h5"))
            run_soupkit(["convert", self.path("fine"), outputs[-1], "--dtype", "BF16"], ranks=ranks)
        self.assertTrue(same_output(*outputs))


class Resume(EngineTestCase):
    def kill_then_resume(self, out, kill_after, ranks_before, ranks_after, corrupt=None):
        killed = self.monosoup(out, ranks_before, "--report", self.path("killed.json"), check=False,
                               env={"SOUPKIT_FAULT_KILL_AFTER": str(kill_after)})
        self.assertNotEqual(killed.returncode, 0)
        self.assertFalse(os.path.exists(out), "a killed run must not leave the final output")
        self.assertTrue(os.path.exists(out + ".partial"))
        with open(out + ".journal") as f:
            finished = [json.loads(line) for line in f if '"tensor"' in line]
        self.assertGreaterEqual(len(finished), kill_after)
        if corrupt:
            corrupt(out + ".partial")
        resumed = self.monosoup(out, ranks_after, "--resume", "--report", self.path("report.json"))
        self.assertIn("resuming:", resumed.stderr)
        self.assertNothingAt(out + ".partial")
        self.assertFalse(os.path.exists(out + ".journal"))
        return resumed

    def reference(self, out):
        ref = self.path("reference", out)
        self.monosoup(ref, 2, "--report", self.path("reference.json"))
        return ref

    def test_kill_and_resume_is_byte_identical(self):
        for out, before, after in (("soup.h5", 2, 3), ("soup", 3, 1), ("soup.safetensors", 1, 2)):
            with self.subTest(out=out):
                ref = self.reference(out)
                path = self.path(out)
                resumed = self.kill_then_resume(path, 7, before, after)
                self.assertIn("7 of 25 tensors already written", resumed.stderr)
                self.assertTrue(same_output(ref, path), f"{out}: resumed output differs from an uninterrupted run")
                # The report covers every tensor, the resumed ones too.
                with open(self.path("report.json")) as f, open(self.path("reference.json")) as g:
                    report, reference = json.load(f), json.load(g)
                self.assertEqual([t["name"] for t in report["tensors"]], [t["name"] for t in reference["tensors"]])
                self.assertEqual([t.get("k") for t in report["tensors"]], [t.get("k") for t in reference["tensors"]])

    def test_corrupted_tensor_is_recomputed(self):
        ref = self.reference("soup")

        def corrupt(partial):
            # Flip one byte in every 4 KiB of tensor data of every shard, so
            # every journaled matrix is hit.
            for name in os.listdir(partial):
                shard = os.path.join(partial, name)
                with open(shard, "r+b") as f:
                    blob = bytearray(f.read())
                    start = 8 + int.from_bytes(blob[:8], "little")
                    for offset in range(start, len(blob), 4096):
                        blob[offset] ^= 0xFF
                    f.seek(0)
                    f.write(blob)

        resumed = self.kill_then_resume(self.path("soup"), 12, 2, 2, corrupt=corrupt)
        self.assertRegex(resumed.stderr, r"\(\d+ failed verification and will be recomputed\)")
        self.assertTrue(same_output(ref, self.path("soup")))

    def test_resume_with_other_options_is_refused(self):
        out = self.path("soup.h5")
        self.monosoup(out, 2, check=False, env={"SOUPKIT_FAULT_KILL_AFTER": "3"})
        proc = self.monosoup(out, 2, "--resume", "--mode", "variance", check=False)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn("different job", proc.stderr)
        self.assertIn(out + ".journal", proc.stderr)
        self.assertFalse(os.path.exists(out))

    def test_resume_without_a_previous_run_starts_over(self):
        out = self.path("soup.h5")
        self.monosoup(out, 2, "--resume")
        ref = self.reference("soup.h5")
        self.assertTrue(same_output(ref, out))
        self.assertFalse(os.path.exists(out + ".journal"))
        # A finished output is never taken for "resumed": it may be another
        # job's (an edited job file resubmitted with --resume).
        again = run_soupkit(["soup", "uniform", self.path("base"), self.path("fine"), "--out", out, "--resume"],
                            ranks=2, check=False)
        self.assertEqual(again.returncode, 1, again.stderr)
        self.assertIn("already exists", again.stderr)
        self.assertTrue(same_output(ref, out))


class Lock(EngineTestCase):
    def test_second_job_on_the_same_output_is_refused(self):
        out = self.path("soup.h5")
        journal = out + ".journal"
        # Another job holds the output: a POSIX lock on its journal, as soupkit takes it.
        with open(journal, "w") as f:
            f.write(json.dumps({"soupkit_journal": 1, "fingerprint": "x"}) + "\n")
            f.write(json.dumps({"owner": {"host": "node042", "pid": 4242, "started": "earlier"}}) + "\n")
            f.flush()
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            proc = self.monosoup(out, 2, check=False)
            self.assertEqual(proc.returncode, 1, proc.stderr)
            self.assertIn("being written by soupkit job pid 4242 on host node042", proc.stderr)
            self.assertEqual(proc.stderr.count("error:"), 1, proc.stderr)
            self.assertFalse(os.path.exists(out))
            self.assertFalse(os.path.exists(out + ".partial"))
            self.assertTrue(os.path.exists(journal), "the other job's journal must be left alone")

    def test_greedy_soup_holds_its_output_for_the_whole_run(self):
        out = self.path("greedy")
        with open(out + ".greedy.lock", "w") as f:
            f.write(json.dumps({"owner": {"host": "node007", "pid": 77, "started": "earlier"}}) + "\n")
            f.flush()
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            proc = run_soupkit(["soup", "greedy", "--out", out, "--eval-cmd", "true {model}; echo 0.5",
                                self.path("base"), self.path("fine")], ranks=2, check=False)
            self.assertEqual(proc.returncode, 1, proc.stderr)
            self.assertIn("being written by soupkit job pid 77 on host node007", proc.stderr)
            self.assertFalse(os.path.exists(out + ".greedy-work"))
        # Free again: the run works and leaves no lock file behind.
        run_soupkit(["soup", "greedy", "--out", out, "--eval-cmd", "true {model}; echo 0.5",
                     self.path("base"), self.path("fine")], ranks=2)
        self.assertTrue(os.path.exists(out))
        self.assertFalse(os.path.exists(out + ".greedy.lock"))


class Failures(EngineTestCase):
    def test_coordinator_validates_before_any_work(self):
        # A shape mismatch in the last tensor, under --strict: the coordinator
        # must fail while planning, before any rank reads a tensor or any
        # output, partial file or journal exists.
        base, fine = uneven_pair()
        base["layers.5.mlp.down"] = ("F32", np.zeros((64, 10), dtype=np.float32))
        write_model_dir(self.path("badbase"), base)
        for ranks in (1, 3):
            out = self.path(f"out{ranks}.h5")
            proc = run_soupkit(["monosoup", "--base", self.path("badbase"), "--finetuned", self.path("fine"),
                                "--out", out, "--strict"], ranks=ranks, check=False, timeout=120)
            self.assertEqual(proc.returncode, 1, proc.stderr)
            self.assertIn("layers.5.mlp.down", proc.stderr)
            self.assertNotRegex(proc.stderr, r"monosoup: \d+ tensors", "work started before validation failed")
            self.assertEqual(proc.stderr.count("error:"), 1, proc.stderr)
            self.assertNothingAt(out)

    def test_missing_shard_fails_on_the_coordinator(self):
        with open(os.path.join(self.path("fine"), "model.safetensors.index.json")) as f:
            shard = sorted(set(json.load(f)["weight_map"].values()))[1]
        os.remove(os.path.join(self.path("fine"), shard))
        proc = self.monosoup(self.path("out.h5"), 3, check=False, timeout=120)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn(shard, proc.stderr)
        self.assertNotRegex(proc.stderr, r"monosoup: \d+ tensors")
        self.assertNothingAt(self.path("out.h5"))

    def test_a_failing_rank_stops_all_ranks_with_one_message(self):
        # A NaN in one update is found only when its owner computes it.
        base, fine = uneven_pair()
        bad = fine["layers.2.mlp.up"][1].copy()
        bad[3, 4] = np.nan
        fine["layers.2.mlp.up"] = ("F32", bad)
        write_model_dir(self.path("nanfine"), fine)
        for ranks in (1, 2, 3):
            out = self.path(f"nan{ranks}")
            proc = run_soupkit(["monosoup", "--base", self.path("base"), "--finetuned", self.path("nanfine"),
                                "--out", out], ranks=ranks, check=False, timeout=120)
            self.assertEqual(proc.returncode, 1, proc.stderr)
            self.assertEqual(proc.stderr.count("error:"), 1, proc.stderr)
            self.assertRegex(proc.stderr, r"rank \d+: tensor 'layers\.2\.mlp\.up'")
            self.assertIn("NaN", proc.stderr)
            self.assertNothingAt(out)


class DryRun(EngineTestCase):
    def test_dry_run_prints_the_plan_and_writes_nothing(self):
        out = self.path("soup.h5")
        proc = self.monosoup(out, 2, "--dry-run")
        self.assertIn("25 tensors", proc.stdout)
        self.assertRegex(proc.stdout, r"est\. seconds")
        self.assertEqual(len([l for l in proc.stdout.splitlines() if l.strip().startswith(("0 ", "1 "))]), 2)
        self.assertNothingAt(out)


JOBS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "jobs")


class JobFiles(TempDirTestCase):
    def test_job_files_run_the_same_merge_as_the_command_line(self):
        run_soupkit(["example", "demo"], cwd=self.tmp)
        run_soupkit(["run", os.path.join(JOBS, "monosoup.yaml")], ranks=2, cwd=self.tmp)
        run_soupkit(["monosoup", "--base", "demo/base", "--finetuned", "demo/finetuned", "--out", "direct.h5"],
                    ranks=3, cwd=self.tmp)
        self.assertTrue(same_output(self.path("demo", "monosoup.h5"), self.path("direct.h5")))
        self.assertTrue(os.path.exists(self.path("demo", "monosoup-report.json")))
        run_soupkit(["run", os.path.join(JOBS, "convert.yaml")], ranks=2, cwd=self.tmp)
        # (From the same file name: an output's provenance names its inputs.)
        run_soupkit(["convert", "demo/monosoup.h5", "direct-bf16", "--dtype", "BF16"], cwd=self.tmp)
        self.assertTrue(same_output(self.path("demo", "monosoup-bf16"), self.path("direct-bf16")))
        run_soupkit(["run", os.path.join(JOBS, "wise-ft.yaml")], ranks=3, cwd=self.tmp)
        run_soupkit(["linear", "demo/finetuned", "demo/base", "--weights", "0.5,0.5", "--out-dtype", "BF16",
                     "--out", "direct-wise"], cwd=self.tmp)
        # (Their mergekit_config.yml differ: the job file as given, and the command line's equivalent.)
        for name in ("model.safetensors", "config.json"):
            self.assertTrue(same_output(self.path("demo", "wise-ft", name), self.path("direct-wise", name)))
        # Options after the job file reach the command.
        plan = run_soupkit(["run", os.path.join(JOBS, "monosoup.yaml"), "--dry-run"], ranks=2, cwd=self.tmp)
        self.assertIn("plan: monosoup", plan.stdout)

    def test_bad_job_file(self):
        with open(self.path("bad.yaml"), "w") as f:
            f.write("merge_method: monosoup\nbase_model: a\nmodels: [b]\nslices: []\n")
        with open(self.path("normalize.yaml"), "w") as f:
            f.write("merge_method: linear\nmodels: [a, b]\nparameters: {normalize: true}\nout_path: o\n")
        for path, fragment in ((self.path("bad.yaml"), "unknown key 'slices'"),
                               (self.path("normalize.yaml"), "normalize"),
                               (self.path("missing.yaml"), "no such job file")):
            proc = run_soupkit(["run", path], ranks=2, check=False)
            self.assertEqual(proc.returncode, 1, proc.stderr)
            self.assertIn(path, proc.stderr)
            self.assertIn(fragment, proc.stderr)


def peak_rss_of(args):
    """Peak resident memory (bytes) of one soupkit process, measured by the
    kernel for the child (not by soupkit itself)."""
    code = ("import resource, subprocess, sys\n"
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "sys.stderr.write(p.stderr)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
            "sys.exit(p.returncode)\n")
    proc = subprocess.run([sys.executable, "-c", code, SOUPKIT, *args], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return int(proc.stdout.split()[-1])


class MemoryBudget(TempDirTestCase):
    def test_convert_streams_within_the_budget(self):
        # 160 MB of tensors (one of 64 MB) against a 16 MiB budget.
        rng = np.random.default_rng(0)
        tensors = {f"w{i}": ("F32", rng.standard_normal((1024, 4096 if i == 0 else 1024), dtype=np.float32))
                   for i in range(25)}
        write_model_dir(self.path("big"), tensors)
        write_model_dir(self.path("small"), {"w": ("F32", np.ones((4, 4), dtype=np.float32))})
        budget = 16 << 20
        baseline = peak_rss_of(["convert", self.path("small"), self.path("small.h5"), "--memory-budget", "16MiB"])
        peak = peak_rss_of(["convert", self.path("big"), self.path("big.h5"), "--memory-budget", "16MiB",
                            "--dtype", "BF16"])
        growth = peak - baseline
        self.assertLess(growth, budget + (8 << 20), f"peak RSS grew by {growth / 2**20:.1f} MiB over a 16 MiB budget")
        with h5py.File(self.path("big.h5"), "r") as f:
            self.assertEqual(len(f["tensors"]), 25)
            got = f["tensors"]["w0"].astype("float32")[...]
        want = tensors["w0"][1]
        self.assertLessEqual(np.abs(got - want).max(), np.abs(want).max() * 2.0**-8)

    def test_monosoup_moves_a_matrix_over_budget_to_the_grid(self):
        rng = np.random.default_rng(1)
        w0 = rng.standard_normal((1536, 1536)).astype(np.float32)
        update = (rng.standard_normal((1536, 4)) @ rng.standard_normal((4, 1536)) * 0.01).astype(np.float32)
        write_model_dir(self.path("b"), {"w": ("F32", w0)})
        write_model_dir(self.path("f"), {"w": ("F32", w0 + update)})
        args = ["monosoup", "--base", self.path("b"), "--finetuned", self.path("f"), "--out"]
        # On one rank this matrix needs about 100 MiB; on a 2-rank grid, 65 MiB each.
        plan = run_soupkit([*args, self.path("o.h5"), "--memory-budget", "80MiB", "--dry-run"], ranks=2)
        self.assertIn("1 on a 2-rank grid", plan.stdout)
        proc = run_soupkit([*args, self.path("o.h5"), "--memory-budget", "80MiB"], ranks=2)
        growth = float(proc.stderr.split("(+")[1].split(" MiB")[0])
        self.assertLess(growth, 80 + 8, proc.stderr)
        local = run_soupkit([*args, self.path("local.h5")], ranks=1)
        self.assertNotIn("grid", local.stderr)
        with h5py.File(self.path("o.h5"), "r") as f, h5py.File(self.path("local.h5"), "r") as g:
            x, y = f["tensors"]["w"][...].astype(np.float64), g["tensors"]["w"][...].astype(np.float64)
        self.assertLess(np.linalg.norm(x - y) / np.linalg.norm(y), 1e-4)


if __name__ == "__main__":
    unittest.main()
