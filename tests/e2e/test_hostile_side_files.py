"""Hostile and unusual side files (issue 10): a damaged or hostile resume
journal, files at OUT.journal / OUT.partial / OUT.greedy.lock / OUT.old (or
named by --log / --report) that soupkit did not create, a full disk, SIGTERM
to a greedy soup while its evaluator runs, and an evaluator printing 300 MB. soupkit must never crash, never delete or overwrite what it
did not create, and leave nothing behind after a failure."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import unittest

from soupkit_testlib import SOUPKIT, TempDirTestCase, run_soupkit, run_with_peak_rss, write_model_dir
from test_engine import same_output, uneven_pair


class SideFileTestCase(TempDirTestCase):
    def setUp(self):
        super().setUp()
        base, fine = uneven_pair()
        write_model_dir(self.path("base"), base, extra_files={"config.json": "{}"})
        write_model_dir(self.path("fine"), fine, extra_files={"config.json": "{}"})

    def monosoup(self, out, *extra, **kwargs):
        return run_soupkit(["monosoup", "--base", self.path("base"), "--finetuned", self.path("fine"),
                            "--out", out, *extra], **kwargs)

    def killed_run(self, out, kill_after=7):
        proc = self.monosoup(out, check=False, env={"SOUPKIT_FAULT_KILL_AFTER": str(kill_after)})
        self.assertNotEqual(proc.returncode, 0)
        with open(out + ".journal") as f:
            return f.read().splitlines()

    def assertFailsOnce(self, proc, *needles):
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertEqual(proc.stderr.count("error:"), 1, proc.stderr)
        for needle in needles:
            self.assertIn(needle, proc.stderr)


class HostileJournal(SideFileTestCase):
    def resume_with_journal(self, out, edit):
        lines = self.killed_run(out)
        with open(out + ".journal", "w") as f:
            f.write("\n".join(edit(lines)) + "\n")
        return self.monosoup(out, "--resume", "--report", self.path("report.json"), check=False)

    def test_bad_lines_are_damaged_entries_and_recomputed(self):
        ref = self.path("ref")
        self.monosoup(ref)
        out = self.path("soup")

        def edit(lines):
            good = [json.loads(l) for l in lines if '"tensor"' in l]
            name0 = good[0]["name"]
            hostile = [
                {"tensor": 10 ** 6, "name": name0, "checksum": "0" * 16, "record": {}},  # index past the end
                {"tensor": 2 ** 64 - 1, "name": name0, "checksum": "0" * 16, "record": {}},
                {"tensor": -1, "name": name0, "checksum": "0" * 16, "record": {}},
                {"tensor": 1.5, "name": name0, "checksum": "0" * 16, "record": {}},
                {"tensor": "0", "name": name0, "checksum": "0" * 16, "record": {}},
                {"tensor": 0, "name": "not.the.name", "checksum": good[0]["checksum"], "record": {}},
                {"tensor": 0, "name": name0, "checksum": "zz", "record": {}},
                {"tensor": 0, "name": name0, "checksum": 5, "record": {}},
                {"tensor": 0, "name": name0, "checksum": good[0]["checksum"], "record": "a string"},
                [1, 2, 3], "just a string", {"partial": "x"}, {"partial": {"dev": -1, "ino": "x"}},
            ]
            # Every real entry damaged too (records that are strings): all recomputed.
            damaged = [dict(e, record="a string") for e in good]
            return lines[:1] + [l for l in lines[1:] if '"tensor"' not in l] + [json.dumps(h) for h in hostile + damaged]

        proc = self.resume_with_journal(out, edit)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("damaged lines ignored", proc.stderr)
        self.assertIn("18 damaged lines ignored", proc.stderr)
        self.assertNotIn("resuming:", proc.stderr)
        self.assertTrue(same_output(ref, out))
        with open(self.path("report.json")) as f:
            self.assertEqual(len(json.load(f)["tensors"]), 25)
        for suffix in (".partial", ".journal"):
            self.assertFalse(os.path.lexists(out + suffix), suffix)

    def test_unusable_record_fails_before_the_commit(self):
        # Well-formed lines whose records the report cannot use: the run
        # fails, naming the journal, and leaves nothing at the output.
        out = self.path("soup")

        def edit(lines):
            return [json.dumps(dict(json.loads(l), record={"action": "monosoup", "k": "seven"}))
                    if '"tensor"' in l else l for l in lines]

        proc = self.resume_with_journal(out, edit)
        self.assertFailsOnce(proc, out + ".journal", "run without --resume")
        self.assertNotIn("json.exception", proc.stderr.split("(")[0])
        for suffix in ("", ".partial", ".journal"):
            self.assertFalse(os.path.lexists(out + suffix), suffix)

    def test_giant_journal_is_read_bounded(self):
        out = self.path("soup")
        self.killed_run(out)
        with open(out + ".journal", "a") as f:
            f.truncate(1 << 30)  # 1 GiB (sparse): one endless line
        with open(self.path("stderr"), "w") as err:
            proc = subprocess.Popen([SOUPKIT, "monosoup", "--base", self.path("base"), "--finetuned",
                                     self.path("fine"), "--out", out, "--resume"], stdout=subprocess.DEVNULL, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory
            proc.returncode = os.waitstatus_to_exitcode(status)
        with open(self.path("stderr")) as f:
            stderr = f.read()
        self.assertEqual(proc.returncode, 0, stderr)
        self.assertIn("only that much is read", stderr)
        self.assertIn("7 of 25 tensors already written", stderr)
        self.assertLess(usage.ru_maxrss * 1024, 400 << 20, "read the whole journal into memory")


class FilesSoupkitDidNotCreate(SideFileTestCase):
    def test_journal_symlink_is_refused_and_its_target_untouched(self):
        out = self.path("soup.h5")
        target = self.path("precious.txt")
        with open(target, "w") as f:
            f.write("do not touch\n")
        os.symlink(target, out + ".journal")
        proc = self.monosoup(out, check=False)
        self.assertFailsOnce(proc, out + ".journal", "symbolic link")
        with open(target) as f:
            self.assertEqual(f.read(), "do not touch\n")
        self.assertTrue(os.path.islink(out + ".journal"))
        self.assertFalse(os.path.lexists(out))
        self.assertFalse(os.path.lexists(out + ".partial"))

    def test_users_own_side_files_are_left_alone(self):
        for k, suffix in enumerate((".journal", ".partial", ".partial/")):
            with self.subTest(suffix=suffix):
                out = self.path("out%d.h5" % k)
                mine = out + suffix.rstrip("/")
                if suffix.endswith("/"):
                    os.mkdir(mine)
                    mine = os.path.join(mine, "notes.txt")
                with open(mine, "w") as f:
                    f.write("the user's notes\n")
                for resume in ([], ["--resume"]):
                    proc = self.monosoup(out, *resume, check=False)
                    self.assertFailsOnce(proc, out + suffix.rstrip("/"), "soupkit did not create it")
                    with open(mine) as f:
                        self.assertEqual(f.read(), "the user's notes\n")
                    self.assertFalse(os.path.lexists(out))
                self.assertEqual(os.path.lexists(out + ".journal"), suffix == ".journal")

    def test_users_greedy_lock_is_left_alone(self):
        out = self.path("greedy")
        with open(out + ".greedy.lock", "w") as f:
            f.write("the user's notes\n")
        proc = run_soupkit(["soup", "greedy", "--out", out, "--eval-cmd", "true {model}; echo 0.5",
                            self.path("base"), self.path("fine")], check=False)
        self.assertFailsOnce(proc, out + ".greedy.lock", "soupkit did not create it")
        with open(out + ".greedy.lock") as f:
            self.assertEqual(f.read(), "the user's notes\n")
        self.assertFalse(os.path.lexists(out + ".greedy-work"))

    def test_stale_partial_of_a_killed_run_is_still_taken_over(self):
        # soupkit's own leftovers (the journal names the partial) are reused.
        out = self.path("soup")
        self.killed_run(out)
        self.monosoup(out)
        for suffix in (".partial", ".journal"):
            self.assertFalse(os.path.lexists(out + suffix), suffix)

    def test_overwrite_does_not_touch_a_users_old_directory(self):
        out = self.path("soup")
        self.monosoup(out)
        os.mkdir(out + ".old")
        with open(os.path.join(out + ".old", "keep.txt"), "w") as f:
            f.write("mine\n")
        with open(os.path.join(out, "stale.txt"), "w") as f:
            f.write("part of the old output\n")
        self.monosoup(out, "--overwrite")
        with open(os.path.join(out + ".old", "keep.txt")) as f:
            self.assertEqual(f.read(), "mine\n")
        self.assertFalse(os.path.exists(os.path.join(out, "stale.txt")), "the old output was not replaced")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["base", "fine", "soup", "soup.old"])
        # A file output replacing a directory output, and back.
        self.monosoup(out + ".h5")
        os.rename(out + ".h5", self.path("file.h5"))
        os.rename(self.path("file.h5"), self.path("soup2"))
        self.monosoup(self.path("soup2"), "--overwrite")
        self.assertTrue(os.path.isdir(self.path("soup2")))


class FullDisk(SideFileTestCase):
    def setUp(self):
        super().setUp()
        self.mount = self.path("full")
        os.mkdir(self.mount)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", self.mount],
                          capture_output=True).returncode != 0:
            self.skipTest("cannot mount a small tmpfs (needs root)")
        self.addCleanup(subprocess.run, ["umount", self.mount])
        fd = os.open(os.path.join(self.mount, "filler"), os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        os.close(fd)

    def test_full_disk_leaves_no_journal(self):
        out = os.path.join(self.mount, "soup.h5")
        proc = self.monosoup(out, check=False)
        self.assertFailsOnce(proc, "No space left on device")
        self.assertEqual(sorted(os.listdir(self.mount)), ["filler"])


class SideFilesNamedByOptions(SideFileTestCase):
    """--log and --report name a path of the user's choosing: what is there is
    replaced only if soupkit wrote it (a greedy log, a report)."""
    PRECIOUS = '{"architectures": ["Mine"]}\n'

    def precious(self, path):
        with open(path, "w") as f:
            f.write(self.PRECIOUS)
        return path

    def assertUntouched(self, path):
        with open(path) as f:
            self.assertEqual(f.read(), self.PRECIOUS)

    def greedy(self, out, *extra):
        return run_soupkit(["soup", "greedy", "--out", out, "--eval-cmd", "true {model}; echo 0.5", *extra,
                            self.path("base"), self.path("fine")], check=False)

    def test_greedy_log_onto_an_ingredients_config_is_refused(self):
        config = self.precious(self.path("base", "config.json"))
        for resume in ([], ["--resume"]):
            with self.subTest(resume=resume):
                proc = self.greedy(self.path("greedy"), "--log", config, *resume)
                self.assertFailsOnce(proc, "--log " + config, "not a soupkit greedy soup log")
                self.assertUntouched(config)
                for suffix in ("", ".greedy-work", ".greedy.lock"):
                    self.assertFalse(os.path.lexists(self.path("greedy") + suffix), suffix)

    def test_greedy_log_onto_a_users_file_is_refused_but_its_own_log_is_replaced(self):
        user_log = self.precious(self.path("user.log"))
        self.assertFailsOnce(self.greedy(self.path("greedy"), "--log", user_log), user_log, "refusing to replace it")
        self.assertUntouched(user_log)
        own_log = self.path("greedy.json")
        self.greedy(self.path("greedy"), "--log", own_log)
        proc = self.greedy(self.path("greedy"), "--log", own_log, "--overwrite")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        with open(own_log) as f:
            self.assertTrue(json.load(f)["complete"])
        self.assertEqual(sorted(os.listdir(self.tmp)), ["base", "fine", "greedy", "greedy.json", "user.log"])

    def test_greedy_log_is_replaced_not_written_through_a_symlink(self):
        target = self.precious(self.path("target.txt"))
        link = self.path("greedy.json")
        os.symlink(target, link)
        self.assertFailsOnce(self.greedy(self.path("greedy"), "--log", link), link, "refusing to replace it")
        self.assertUntouched(target)
        self.assertTrue(os.path.islink(link))

    def test_report_onto_an_inputs_index_is_refused(self):
        base, _ = uneven_pair()
        write_model_dir(self.path("ex", "base"), base, shard_bytes=64)
        index = self.path("ex", "base", "model.safetensors.index.json")
        with open(index) as f:
            before = f.read()
        proc = run_soupkit(["monosoup", "--base", self.path("ex", "base"), "--finetuned", self.path("fine"),
                            "--out", self.path("soup"), "--report", index], check=False)
        self.assertFailsOnce(proc, "--report " + index, "not a soupkit report")
        with open(index) as f:
            self.assertEqual(f.read(), before)
        self.assertFalse(os.path.lexists(self.path("soup")))
        self.assertFalse(os.path.lexists(self.path("soup.journal")))

    def test_report_onto_a_users_file_or_symlink_is_refused_but_its_own_report_is_replaced(self):
        mine = self.precious(self.path("mine.json"))
        link = self.path("link.json")
        os.symlink(mine, link)
        for report in (mine, link):
            with self.subTest(report=report):
                self.assertFailsOnce(self.monosoup(self.path("soup"), "--report", report, check=False), report)
                self.assertUntouched(mine)
                self.assertFalse(os.path.lexists(self.path("soup")))
        own = self.path("report.json")
        self.monosoup(self.path("soup"), "--report", own)
        self.monosoup(self.path("soup"), "--report", own, "--overwrite")
        with open(own) as f:
            self.assertIn("summary", json.load(f))
        self.assertEqual(sorted(os.listdir(self.tmp)), ["base", "fine", "link.json", "mine.json", "report.json", "soup"])


class LoudEvaluator(SideFileTestCase):
    """Only the end of an evaluator's output is kept: 300 MB of it must not
    cost 300 MB (or several times that) of memory."""
    LOUD = 300 * 1000 * 1000
    PEAK_LIMIT = 200 * 1024 * 1024

    def greedy_with_peak(self, eval_cmd):
        scores = self.path("scores.json")
        with open(scores, "w") as f:
            json.dump({self.path("base"): 0.5, self.path("fine"): 0.4}, f)  # only the candidate is evaluated
        return run_with_peak_rss(["soup", "greedy", "--out", self.path("greedy"), "--overwrite", "--scores", scores,
                                  "--eval-cmd", eval_cmd, self.path("base"), self.path("fine")], timeout=300)

    def test_many_lines_then_a_score(self):
        proc, peak = self.greedy_with_peak("true {model}; yes 'some progress' | head -c %d; echo; echo 0.75" % self.LOUD)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertLess(peak, self.PEAK_LIMIT)
        self.assertIn("scores 0.75", proc.stderr)

    def test_one_huge_line_then_a_score(self):
        proc, peak = self.greedy_with_peak("true {model}; head -c %d /dev/zero | tr '\\0' x; echo; echo 0.75"
                                           % self.LOUD)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertLess(peak, self.PEAK_LIMIT)

    def test_one_huge_line_without_a_score_is_an_error(self):
        proc, peak = self.greedy_with_peak("true {model}; head -c %d /dev/zero | tr '\\0' x" % self.LOUD)
        self.assertFailsOnce(proc, "does not fit in the 64 KiB")
        self.assertLess(peak, self.PEAK_LIMIT)
        self.assertLess(len(proc.stderr), 10000)  # the quoted line is cut too

    def test_stderr_flood_then_failure_quotes_its_tail(self):
        proc, peak = self.greedy_with_peak("true {model}; yes 'warning: noisy' | head -c %d >&2; echo last words >&2;"
                                           " exit 2" % self.LOUD)
        self.assertFailsOnce(proc, "failed with exit status 2", "last words")
        self.assertLess(peak, self.PEAK_LIMIT)
        self.assertLess(len(proc.stderr), 10000)


EVALUATOR = textwrap.dedent("""\
    import os, subprocess, sys, time
    pids = sys.argv[2]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with open(pids + ".tmp", "w") as f:
        f.write("%d %d\\n" % (os.getpid(), child.pid))
    os.rename(pids + ".tmp", pids)
    time.sleep(300)
    print(0.5)
""")


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class GreedyTermination(SideFileTestCase):
    def test_sigterm_stops_the_evaluator_and_its_children_and_cleans_up(self):
        script = self.path("slow_eval.py")
        with open(script, "w") as f:
            f.write(EVALUATOR)
        pids_file = self.path("pids")
        out = self.path("greedy")
        proc = subprocess.Popen([SOUPKIT, "soup", "greedy", "--out", out, "--eval-cmd",
                                 "%s %s {model} %s" % (sys.executable, script, pids_file),
                                 self.path("base"), self.path("fine")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not os.path.exists(pids_file) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        self.assertTrue(os.path.exists(pids_file), "the evaluator never started")
        with open(pids_file) as f:
            evaluator, child = map(int, f.read().split())
        for pid in (evaluator, child):  # if the test fails, kill what survived
            self.addCleanup(lambda pid=pid: alive(pid) and os.kill(pid, signal.SIGKILL))
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 1, stderr)
        self.assertEqual(stderr.count("error:"), 1, stderr)
        self.assertIn("interrupted by signal %d (SIGTERM)" % signal.SIGTERM, stderr)
        time.sleep(0.5)
        for pid in (evaluator, child):
            self.assertFalse(alive(pid), "process %d survived" % pid)
        for suffix in ("", ".greedy-work", ".greedy.lock", ".partial", ".journal"):
            self.assertFalse(os.path.lexists(out + suffix), suffix)

    def test_quoted_placeholder_is_warned_about(self):
        out = self.path("greedy")
        for command, warned in (("true '{model}'; echo 0.5", True), ('true "x{model}"; echo 0.5', True),
                                ("true {model}; echo 0.5", False), ("echo \\'; true {model}; echo 0.5", False)):
            with self.subTest(command=command):
                proc = run_soupkit(["soup", "greedy", "--out", out, "--eval-cmd", command, "--overwrite",
                                    self.path("base"), self.path("fine")])
                self.assertEqual("is inside quotes" in proc.stderr, warned, proc.stderr)


if __name__ == "__main__":
    unittest.main()
