"""The sbatch scripts in slurm/: valid bash, and runnable outside Slurm with
the launcher swapped for mpirun: a dry run prints the plan, a killed run is
resumed by simply running the script again (what a requeue does)."""
import glob
import json
import os
import signal
import subprocess
import time
import unittest

from soupkit_testlib import MPIRUN, SOUPKIT, TempDirTestCase, run_soupkit

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "slurm", "*")))


class SlurmScripts(TempDirTestCase):
    def run_script(self, name, *args, ranks=2, env=None):
        full_env = dict(os.environ, SOUPKIT=os.path.abspath(SOUPKIT), SLURM_SUBMIT_DIR=ROOT,
                        SOUPKIT_LAUNCHER=" ".join([*MPIRUN, "-n", str(ranks)]), **(env or {}))
        return subprocess.run(["bash", os.path.join(ROOT, "slurm", name), *args], cwd=self.tmp, env=full_env,
                              capture_output=True, text=True, timeout=300)

    def test_scripts_are_valid_bash(self):
        self.assertGreaterEqual(len(SCRIPTS), 4)
        for script in SCRIPTS:
            proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
            self.assertEqual(proc.returncode, 0, f"{script}: {proc.stderr}")

    def test_sbatch_headers_ask_for_requeue_and_the_time_limit_signal(self):
        for script in glob.glob(os.path.join(ROOT, "slurm", "*.sbatch")):
            with open(script) as f:
                text = f.read()
            for directive in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@", "#SBATCH --nodes=",
                              "#SBATCH --ntasks-per-node="):
                self.assertIn(directive, text, script)

    def test_monosoup_dry_run(self):
        run_soupkit(["example", "demo"], cwd=self.tmp)
        proc = self.run_script("monosoup.sbatch", os.path.join(ROOT, "jobs", "monosoup.yaml"), "--dry-run")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("plan: monosoup -> demo/monosoup.h5", proc.stdout)
        self.assertIn("--resume", proc.stderr)  # run-job.sh says what it runs
        self.assertFalse(os.path.exists(self.path("demo", "monosoup.h5")))

    def test_a_killed_job_resumes_when_run_again(self):
        run_soupkit(["example", "demo"], cwd=self.tmp)
        job = os.path.join(ROOT, "jobs", "monosoup.yaml")
        killed = self.run_script("monosoup.sbatch", job, env={"SOUPKIT_FAULT_KILL_AFTER": "5"})
        self.assertNotEqual(killed.returncode, 0)
        self.assertTrue(os.path.exists(self.path("demo", "monosoup.h5.journal")))
        resumed = self.run_script("monosoup.sbatch", job, ranks=3)
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertIn("resuming: ", resumed.stderr)
        run_soupkit(["monosoup", "--base", "demo/base", "--finetuned", "demo/finetuned", "--out", "direct.h5"],
                    cwd=self.tmp)
        with open(self.path("demo", "monosoup.h5"), "rb") as f, open(self.path("direct.h5"), "rb") as g:
            self.assertEqual(f.read(), g.read())

    def write_job(self, name, text):
        path = self.path(name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_soup_dry_run_and_run(self):
        run_soupkit(["example", "demo"], cwd=self.tmp)
        job = self.write_job("soup.yaml", "merge_method: model_soup\nmodels: [demo/base, demo/finetuned]\n"
                                          "out_path: soup.h5\n")
        proc = self.run_script("soup.sbatch", job, "--dry-run")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("plan: soup -> soup.h5", proc.stdout)
        self.assertFalse(os.path.exists(self.path("soup.h5")))
        proc = self.run_script("soup.sbatch", job)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertTrue(os.path.exists(self.path("soup.h5")))

    def test_transplant_dry_run(self):
        from transplant_fixtures import (WORDS, Planted, byte_level_tokenizer, sentencepiece_tokenizer, vocab_size,
                                         write_tokenizer)
        donor_tok, base_tok = self.path("tok-donor"), self.path("tok-base")
        write_tokenizer(donor_tok, *byte_level_tokenizer(WORDS))
        write_tokenizer(base_tok, *sentencepiece_tokenizer(WORDS[:30]))
        with open(os.path.join(donor_tok, "tokenizer.json")) as f:
            donor_vocab = vocab_size(json.load(f))
        with open(os.path.join(base_tok, "tokenizer.json")) as f:
            base_vocab = vocab_size(json.load(f))
        Planted(self.tmp, donor_tok, base_tok, donor_vocab, base_vocab)
        job = self.write_job("transplant.yaml", "merge_method: transplant\nbase_model: base\ntokenizer_source: donor\n"
                                                "parameters: {k: 8}\nout_path: out\n")
        proc = self.run_script("transplant.sbatch", job, "--dry-run", ranks=3)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("plan: transplant -> out", proc.stdout)
        self.assertFalse(os.path.exists(self.path("out")))

    def fake(self, name, body):
        path = self.path(name)
        with open(path, "w") as f:
            f.write("#!/bin/bash\n" + body + "\n")
        os.chmod(path, 0o755)
        return path

    def test_time_limit_signal_requeues_and_the_step_status_is_kept(self):
        # Slurm's USR1 before the time limit: run-job.sh calls scontrol
        # requeue (a stand-in here) and still exits with the step's status.
        bin_dir = self.path("bin")
        os.makedirs(bin_dir)
        calls = self.path("scontrol-calls")
        self.fake("bin/scontrol", 'echo "$@" >> %s' % calls)
        job = self.write_job("job.yaml", "merge_method: convert\nmodels: [a]\n")
        for step_status in (0, 3):
            launcher = self.fake("step%d.sh" % step_status, "sleep 2; exit %d" % step_status)
            env = dict(os.environ, SOUPKIT=os.path.abspath(SOUPKIT), SLURM_SUBMIT_DIR=ROOT, SOUPKIT_LAUNCHER=launcher,
                       SLURM_JOB_ID="4242", PATH=bin_dir + os.pathsep + os.environ["PATH"])
            proc = subprocess.Popen(["bash", os.path.join(ROOT, "slurm", "run-job.sh"), job], cwd=self.tmp, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(0.7)
            proc.send_signal(signal.SIGUSR1)
            _, err = proc.communicate(timeout=30)
            self.assertEqual(proc.returncode, step_status, err)
            self.assertIn("requeueing job 4242", err)
        with open(calls) as f:
            self.assertEqual(f.read().split("\n")[:2], ["requeue 4242", "requeue 4242"])

    def test_missing_job_file(self):
        proc = self.run_script("monosoup.sbatch", "nope.yaml")
        self.assertEqual(proc.returncode, 1)
        self.assertIn("no job file nope.yaml", proc.stderr)


if __name__ == "__main__":
    unittest.main()
