"""Progress that tells the truth (issue 12): under mpirun, a tensor that
takes seconds shows progress while it is computed, not only when it
finishes; --progress none prints none; a bad --progress is refused by name.

stderr is read line by line as it arrives, each line stamped with the time
it came: a progress line must come before the tensor is finished (its line
says so, "0/1 tensors ... computing NAME") and well before the run ends.
"""
import re
import subprocess
import threading
import time

import numpy as np

from soupkit_testlib import MPIRUN, SOUPKIT, TempDirTestCase, run_soupkit, write_model_dir

# A progress line, and one that names the tensor under way.
ANY = re.compile(r"^\w+: \d+(?:\.\d+)?% \d+/\d+ tensors, .*/s, ETA ")
LINE = re.compile(r"^(\w+): (\d+(?:\.\d+)?)% (\d+)/(\d+) tensors, .* \(computing ([^:]+): (\d+)%\)$")


def timed_stderr(cmd, timeout=300):
    """Runs cmd; returns (returncode, [(seconds since start, line)]) with stderr read as it arrives."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1)
    lines = []

    def read():
        for line in proc.stderr:
            lines.append((time.monotonic() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    proc.wait(timeout=timeout)
    reader.join()
    proc.stderr.close()
    return proc.returncode, lines, time.monotonic() - start


class Progress(TempDirTestCase):
    def setUp(self):
        super().setUp()
        # One 1600 x 1600 matrix: over a second of Gram SVD on one rank
        # (1100 x 1100 became too quick once only the projected
        # eigenvectors were computed), far longer than the 0.1 s between
        # progress lines.
        rng = np.random.default_rng(5)
        w0 = rng.standard_normal((1600, 1600)).astype(np.float32)
        w1 = w0 + np.float32(0.01) * rng.standard_normal(w0.shape).astype(np.float32)
        self.base, self.fine = self.path("base"), self.path("fine")
        write_model_dir(self.base, {"big.weight": ("F32", w0)})
        write_model_dir(self.fine, {"big.weight": ("F32", w1)})

    def monosoup(self, out, *extra):
        return [*MPIRUN, "-n", "2", SOUPKIT, "monosoup", "--base", self.base, "--finetuned", self.fine,
                "--out", self.path(out), *extra]

    def check_progress_before_the_end(self, lines, seconds):
        during = [(t, LINE.match(l)) for t, l in lines if LINE.match(l)]
        self.assertTrue(during, "no progress line inside the tensor:\n" + "\n".join(l for _, l in lines))
        finished_at = next(t for t, l in lines if "tensors processed" in l)
        for t, m in during:
            self.assertEqual(m.group(1), "monosoup")
            self.assertEqual((m.group(3), m.group(4)), ("0", "1"))  # the tensor is not finished
            self.assertEqual(m.group(5), "big.weight")
            self.assertLess(t, finished_at)
        percents = [float(m.group(2)) for _, m in during]
        # Below 100 while the tensor is under way and never backwards. (Not
        # required above 0: the SVD is one LAPACK call, and on a loaded
        # machine every line may fall inside it, at the read step's 0.0%.)
        self.assertTrue(all(p < 100 for p in percents), percents)
        self.assertEqual(percents, sorted(percents))
        # Lines keep coming while the tensor is computed (every 0.1 s asked;
        # the SVD is one LAPACK call, so the ticker, not a report, prints
        # them): at least one per half second of the tensor's time.
        first, last = during[0][0], during[-1][0]
        self.assertGreaterEqual(len(during), int((last - first) / 0.5), lines)
        self.assertLess(first, seconds - 0.3)

    def test_lines_inside_one_long_tensor_on_the_coordinator(self):
        code, lines, seconds = timed_stderr(self.monosoup("out", "--progress", "lines", "--progress-interval", "0.1"))
        self.assertEqual(code, 0, lines)
        self.check_progress_before_the_end(lines, seconds)

    def test_lines_inside_one_long_tensor_on_a_grid(self):
        # Both ranks compute the tensor together (ScaLAPACK); the group's
        # first rank reports its row blocks and steps.
        code, lines, seconds = timed_stderr(self.monosoup("out", "--progress", "lines", "--progress-interval", "0.1",
                                                          "--scalapack-min-dim", "2"))
        self.assertEqual(code, 0, lines)
        self.check_progress_before_the_end(lines, seconds)

    def test_none_prints_no_progress(self):
        code, lines, _ = timed_stderr(self.monosoup("out", "--progress", "none", "--progress-interval", "0.1"))
        self.assertEqual(code, 0, lines)
        self.assertFalse([l for _, l in lines if ANY.match(l) or "\r" in l], lines)

    def test_quiet_prints_no_progress_unless_asked(self):
        code, lines, _ = timed_stderr(self.monosoup("out", "--quiet", "--progress-interval", "0.1"))
        self.assertEqual(code, 0, lines)
        self.assertEqual(lines, [])
        code, lines, _ = timed_stderr(self.monosoup("out2", "--quiet", "--progress", "lines",
                                                    "--progress-interval", "0.1"))
        self.assertEqual(code, 0, lines)
        self.assertTrue(lines and all(ANY.match(l) for _, l in lines), lines)

    def test_bad_values_are_refused_by_name(self):
        for option, value in (("--progress", "fancy"), ("--progress-interval", "0"), ("--progress-interval", "-1")):
            proc = run_soupkit(["monosoup", "--base", self.base, "--finetuned", self.fine, "--out", self.path("o"),
                                option, value], check=False)
            self.assertEqual(proc.returncode, 1, proc.stderr)
            self.assertIn(option, proc.stderr)


if __name__ == "__main__":
    import unittest
    unittest.main()
