"""Bad inputs and unusable outputs make `soupkit convert` / `soupkit inspect`
fail cleanly: exit status exactly 1 (no signal, no hang), one
`soupkit: error:` line on stderr naming the offending file (and tensor where it
applies) with a word about the problem, nothing at the output path and no
leftover `OUT.partial`. Checked for .h5 and directory outputs, on 1 rank and
(for a representative subset) on 2 ranks under mpirun."""
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import unittest
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

from soupkit_testlib import MPIRUN, SOUPKIT, TempDirTestCase, write_model_dir, write_safetensors

TIMEOUT = 60  # seconds per soupkit run; a hang fails the test instead of blocking CTest
OUTPUT_KINDS = ("h5", "dir")


def small_tensors():
    """A few KB of tensors; 'zz.last' is last in the data buffer."""
    rng = np.random.default_rng(7)
    return {
        "embed.weight": ("F32", rng.standard_normal((16, 32)).astype(np.float32)),  # 2048 bytes
        "norm.weight": ("F16", rng.standard_normal(32).astype(np.float16)),  # 64 bytes
        "zz.last": ("F32", rng.standard_normal((8, 16)).astype(np.float32)),  # 512 bytes
    }


def write_raw_safetensors(path, header, data, header_len=None):
    """A safetensors file with an arbitrary header (dict or raw bytes) and data buffer."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text) if header_len is None else header_len))
        f.write(text)
        f.write(data)


class BadInputBase(TempDirTestCase):
    def run_soupkit(self, args, ranks=None):
        return self.run_many([(args, ranks)])[0]

    def run_many(self, jobs):
        """Runs independent (args, ranks) soupkit jobs concurrently: most of each run's time is MPI start-up.

        Like soupkit_testlib.run_soupkit, but each job gets its own TMPDIR: concurrent Open MPI 4 start-ups
        otherwise race creating the shared session directory /tmp/ompi.<host>.<uid> ("File exists")."""
        def one(i_job):
            i, (args, ranks) = i_job
            tmpdir = tempfile.mkdtemp(prefix="mpi%d-" % i, dir=self.tmp)
            cmd = ([*MPIRUN, "-n", str(ranks)] if ranks else []) + [SOUPKIT, *map(str, args)]
            try:
                return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                                      env=dict(os.environ, TMPDIR=tmpdir))
            except subprocess.TimeoutExpired:
                return subprocess.CompletedProcess(cmd, "TIMEOUT", "", "soupkit hung (> %d s)" % TIMEOUT)
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)

        with ThreadPoolExecutor(max_workers=6) as pool:
            return list(pool.map(one, enumerate(jobs)))

    def run_ok(self, jobs):
        """run_many, each job expected to succeed."""
        procs = self.run_many(jobs)
        for proc in procs:
            self.assertEqual(proc.returncode, 0, "%s\n%s\n%s" % (" ".join(proc.args), proc.stdout, proc.stderr))
        return procs

    def out_path(self, kind, tag=""):
        base = self.path("out%s" % tag)
        return base + ".h5" if kind == "h5" else base + "-dir"

    def assert_failed(self, proc, names, words):
        """Exit status 1 and one error line naming every string in `names` and matching one of `words`."""
        msg = "%s\nexit %s\nstdout:\n%s\nstderr:\n%s" % (" ".join(map(str, proc.args)), proc.returncode,
                                                         proc.stdout, proc.stderr)
        self.assertEqual(proc.returncode, 1, msg)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("soupkit: error: ")]
        self.assertEqual(len(errors), 1, "expected exactly one 'soupkit: error:' line\n" + msg)
        for name in names:
            self.assertIn(name, errors[0], msg)
        self.assertRegex(errors[0], re.compile("|".join(words), re.IGNORECASE), msg)

    def assert_no_output(self, out):
        self.assertFalse(os.path.lexists(out), "output %s was created" % out)
        self.assertFalse(os.path.lexists(out + ".partial"), "leftover %s.partial" % out)
        parent = os.path.dirname(out)
        if os.path.isdir(parent):
            leftovers = glob.glob(os.path.join(glob.escape(parent), "*.partial*"))
            self.assertEqual(leftovers, [], "leftover partial output")

    def check_fails(self, src, names, words, ranks_list=(None,), kinds=OUTPUT_KINDS, inspect=False, extra=()):
        """`convert src OUT` for each output kind and rank count, plus `inspect [--json]` if asked, all fail."""
        jobs, labels = [], []
        for ranks in ranks_list:
            for kind in kinds:
                out = self.out_path(kind, "-%s-%s" % (os.path.basename(src), ranks or 1))
                jobs.append((["convert", src, out, *extra], ranks))
                labels.append(dict(command="convert", output=kind, ranks=ranks or 1, out=out))
        if inspect:
            for args in (["inspect", src], ["inspect", src, "--json"]):
                jobs.append((args, None))
                labels.append(dict(command=" ".join(args[:1] + args[2:]), ranks=1))
        for label, proc in zip(labels, self.run_many(jobs)):
            out = label.pop("out", None)
            with self.subTest(**label):
                self.assert_failed(proc, names, words)
                if out:
                    self.assert_no_output(out)


NOT_FOUND = ["no such", "not found", "missing", "exist"]
TRUNCATED = ["truncat", "past the end", "short", "end of"]


class MissingInput(BadInputBase):
    def test_missing_file(self):
        src = self.path("does-not-exist.safetensors")
        self.check_fails(src, ["does-not-exist.safetensors"], NOT_FOUND, ranks_list=(None, 2), inspect=True)

    def test_missing_h5(self):
        self.check_fails(self.path("nothing-here.h5"), ["nothing-here.h5"], NOT_FOUND)

    def test_missing_model_directory_file(self):
        # An empty directory is not a model directory.
        src = self.path("emptydir")
        os.makedirs(src)
        self.check_fails(src, ["emptydir"], ["model.safetensors", "not a model directory", "missing", "no such"])


class BadSafetensors(BadInputBase):
    def setUp(self):
        super().setUp()
        self.good = self.path("good.safetensors")
        write_safetensors(self.good, small_tensors())
        with open(self.good, "rb") as f:
            self.good_bytes = f.read()

    def variant(self, name, blob):
        path = self.path(name)
        with open(path, "wb") as f:
            f.write(blob)
        return path

    def test_sanity_good_file_converts(self):
        # Control: the corruptions below are the only reason the other tests fail.
        outs = [self.out_path(kind) for kind in OUTPUT_KINDS]
        for out, proc in zip(outs, self.run_many([(["convert", self.good, out], None) for out in outs])):
            with self.subTest(out=os.path.basename(out)):
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertTrue(os.path.exists(out))
                self.assertFalse(os.path.lexists(out + ".partial"))

    def test_truncated_data(self):
        # Cut 100 bytes off the end: only 'zz.last' (the last 512 bytes of data) runs past the end.
        src = self.variant("truncated.safetensors", self.good_bytes[:-100])
        self.check_fails(src, ["truncated.safetensors", "zz.last"], TRUNCATED, ranks_list=(None, 2), inspect=True)

    def test_truncated_to_one_byte_of_data(self):
        (n,) = struct.unpack("<Q", self.good_bytes[:8])
        src = self.variant("nodata.safetensors", self.good_bytes[:8 + n + 1])
        self.check_fails(src, ["nodata.safetensors"], TRUNCATED)

    def test_truncated_inside_header(self):
        src = self.variant("halfheader.safetensors", self.good_bytes[:40])
        self.check_fails(src, ["halfheader.safetensors"], ["truncat", "header", "short", "larger", "exceed"])

    def test_shorter_than_length_prefix(self):
        for label, blob in (("empty", b""), ("three-bytes", b"\x10\x00\x00")):
            name = "%s.safetensors" % label
            with self.subTest(file=label):
                src = self.variant(name, blob)
                self.check_fails(src, [name], ["truncat", "header", "short", "empty", "too small", "size"],
                                 inspect=label == "empty")

    def test_header_length_larger_than_file(self):
        size = len(self.good_bytes)
        for label, n in (("just-past", size - 8 + 1), ("huge", size * 1000), ("2pow63", 1 << 63),
                         ("u64max", (1 << 64) - 1), ("u64max-7", (1 << 64) - 8)):
            name = "hlen-%s.safetensors" % label
            with self.subTest(header_len=label):
                src = self.variant(name, struct.pack("<Q", n) + self.good_bytes[8:])
                self.check_fails(src, [name], ["header", "truncat", "larger", "exceed", "past the end"],
                                 ranks_list=(None, 2) if label == "u64max" else (None,), inspect=label == "huge")

    def test_invalid_json_header(self):
        for label, text in (("cut", b'{"w": {"dtype": "F32", "shape": [2], '),
                            ("garbage", b"\x00\xff\xfe not json at all"),
                            ("array", b"[1, 2, 3]"),
                            ("trailing", b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}} }')):
            name = "json-%s.safetensors" % label
            with self.subTest(header=label):
                src = self.path(name)
                write_raw_safetensors(src, text, b"\0" * 8)
                self.check_fails(src, [name], ["json", "header", "object"],
                                 ranks_list=(None, 2) if label == "cut" else (None,), inspect=label == "cut")

    def test_unknown_dtype(self):
        src = self.path("dtype.safetensors")
        write_raw_safetensors(src, {"ok.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                    "odd.weight": {"dtype": "F7", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16)
        self.check_fails(src, ["dtype.safetensors", "odd.weight", "F7"], ["dtype"], ranks_list=(None, 2), inspect=True)

    def test_data_offsets_out_of_range(self):
        cases = {
            # begin and end both beyond the 64-byte buffer, size matching the shape
            "beyond": {"a.weight": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},
                       "bad.weight": {"dtype": "F32", "shape": [4], "data_offsets": [1000, 1016]}},
            # end past the buffer
            "end-past": {"bad.weight": {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}},
            # offsets near 2^64: adding the header size would overflow
            "near-u64max": {"a.weight": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},
                            "bad.weight": {"dtype": "U8", "shape": [8],
                                           "data_offsets": [(1 << 64) - 9, (1 << 64) - 1]}},
            # end before begin
            "reversed": {"bad.weight": {"dtype": "F32", "shape": [4], "data_offsets": [32, 16]}},
        }
        for label, header in cases.items():
            name = "offsets-%s.safetensors" % label
            with self.subTest(case=label):
                src = self.path(name)
                write_raw_safetensors(src, header, b"\0" * 64)
                self.check_fails(src, [name, "bad.weight"],
                                 ["data_offsets", "offset", "range", "past the end", "truncat", "before"],
                                 inspect=label == "near-u64max")

    def test_overlapping_offsets(self):
        src = self.path("overlap.safetensors")
        write_raw_safetensors(src, {"first.weight": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},
                                    "second.weight": {"dtype": "F32", "shape": [16], "data_offsets": [32, 96]}},
                              b"\0" * 96)
        self.check_fails(src, ["overlap.safetensors", "first.weight", "second.weight"], ["overlap"], inspect=True)

    def test_identical_offsets_are_overlap(self):
        src = self.path("same.safetensors")
        write_raw_safetensors(src, {"first.weight": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},
                                    "second.weight": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}},
                              b"\0" * 64)
        self.check_fails(src, ["same.safetensors", "first.weight", "second.weight"], ["overlap"])

    def test_offsets_inconsistent_with_shape(self):
        cases = {
            "too-few-bytes": {"bad.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 60]}},
            "too-many-bytes": {"bad.weight": {"dtype": "F16", "shape": [4, 4], "data_offsets": [0, 64]}},
            "scalar": {"bad.weight": {"dtype": "F64", "shape": [], "data_offsets": [0, 4]}},
        }
        for label, header in cases.items():
            name = "shape-%s.safetensors" % label
            with self.subTest(case=label):
                src = self.path(name)
                end = header["bad.weight"]["data_offsets"][1]
                write_raw_safetensors(src, header, b"\0" * end)
                self.check_fails(src, [name, "bad.weight"], ["shape", "bytes", "size"],
                                 inspect=label == "too-few-bytes")


class BadModelDirectory(BadInputBase):
    def test_duplicate_tensor_across_shards(self):
        src = self.path("dupmodel")
        os.makedirs(src)
        t = small_tensors()
        shard1, shard2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
        write_safetensors(os.path.join(src, shard1), {"embed.weight": t["embed.weight"], "dup.weight": t["zz.last"]})
        write_safetensors(os.path.join(src, shard2), {"norm.weight": t["norm.weight"], "dup.weight": t["zz.last"]})
        with open(os.path.join(src, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": {"embed.weight": shard1, "norm.weight": shard2,
                                                      "dup.weight": shard2}}, f)
        with open(os.path.join(src, "config.json"), "w") as f:
            f.write("{}\n")
        self.check_fails(src, ["dup.weight", shard1, shard2], ["twice", "duplicate", "more than once"],
                         ranks_list=(None, 2), inspect=True)

    def test_index_names_missing_shard(self):
        src = self.path("holey")
        write_model_dir(src, small_tensors(), shard_bytes=1000, extra_files={"config.json": "{}\n"})
        shards = sorted(glob.glob(os.path.join(src, "model-*.safetensors")))
        self.assertGreaterEqual(len(shards), 2)
        missing = os.path.basename(shards[-1])
        os.remove(shards[-1])
        self.check_fails(src, [missing], NOT_FOUND, ranks_list=(None, 2), inspect=True)


class BadHdf5(BadInputBase):
    def test_garbage_bytes(self):
        src = self.path("garbage.h5")
        with open(src, "wb") as f:
            f.write(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        self.check_fails(src, ["garbage.h5"], ["hdf5", "signature", "not a", "cannot open"],
                         ranks_list=(None, 2), inspect=True)

    def test_garbage_after_hdf5_signature(self):
        src = self.path("fakesig.h5")
        with open(src, "wb") as f:
            f.write(b"\x89HDF\r\n\x1a\n" + np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        self.check_fails(src, ["fakesig.h5"], ["hdf5", "cannot open", "unreadable", "superblock"])

    def test_truncated_soupkit_h5(self):
        good_src = self.path("good.safetensors")
        write_safetensors(good_src, small_tensors())
        good = self.path("good.h5")
        proc = self.run_soupkit(["convert", good_src, good])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        with open(good, "rb") as f:
            blob = f.read()
        for label, size in (("half", len(blob) // 2), ("minus-one", len(blob) - 1), ("head", 64)):
            name = "trunc-%s.h5" % label
            with self.subTest(cut=label):
                src = self.path(name)
                with open(src, "wb") as f:
                    f.write(blob[:size])
                self.check_fails(src, [name], ["truncat", "cannot open", "unreadable", "eof", "read"],
                                 ranks_list=(None, 2) if label == "half" else (None,), inspect=label == "half")

    def test_valid_hdf5_not_soupkit(self):
        src = self.path("foreign.h5")
        with h5py.File(src, "w") as f:
            f.create_dataset("weights", data=np.arange(100, dtype=np.float32))
            f.attrs["creator"] = "not soupkit"
        self.check_fails(src, ["foreign.h5"], ["soupkit", "not a", "checkpoint"], ranks_list=(None, 2), inspect=True)

    def test_soupkit_marker_without_tensors(self):
        src = self.path("hollow.h5")
        with h5py.File(src, "w") as f:
            f.attrs["soupkit_format"] = np.bytes_("soupkit-checkpoint")
        self.check_fails(src, ["hollow.h5"], ["tensors", "unreadable", "soupkit", "missing", "no "])


class BadOutput(BadInputBase):
    def setUp(self):
        super().setUp()
        self.src = self.path("src")
        write_model_dir(self.src, small_tensors(), extra_files={"config.json": "{}\n"})

    def test_parent_is_regular_file(self):
        afile = self.path("afile")
        with open(afile, "w") as f:
            f.write("i am a file\n")
        outs = [os.path.join(afile, "out.h5"), os.path.join(afile, "outdir"), os.path.join(afile, "sub", "out.h5")]
        jobs = [(["convert", self.src, out], ranks) for ranks in (None, 2) for out in outs]
        for (args, ranks), proc in zip(jobs, self.run_many(jobs)):
            out = args[2]
            with self.subTest(out=os.path.relpath(out, self.tmp), ranks=ranks or 1):
                self.assert_failed(proc, [out if "sub" not in out else "afile"],
                                   ["directory", "cannot", "not writable", "permission"])
                self.assert_no_output(out)
        with open(afile) as f:
            self.assertEqual(f.read(), "i am a file\n")

    def test_under_proc(self):
        jobs = [(["convert", self.src, out], ranks) for ranks in (None, 2)
                for out in ("/proc/soupkit-test-out.h5", "/proc/soupkit-test-outdir")]
        for (args, ranks), proc in zip(jobs, self.run_many(jobs)):
            out = args[2]
            with self.subTest(out=out, ranks=ranks or 1):
                self.assert_failed(proc, [os.path.basename(out)],
                                   ["cannot", "directory", "writ", "permission", "no such", "not permitted"])
                self.assertFalse(os.path.lexists(out))
                self.assertFalse(os.path.lexists(out + ".partial"))

    def test_existing_output_without_overwrite(self):
        outs = []
        for ranks in (None, 2):
            tag = ranks or 1
            existing_h5 = self.path("exists-%d.h5" % tag)
            with open(existing_h5, "wb") as f:
                f.write(b"precious bytes")
            existing_dir = self.path("exists-%d-dir" % tag)
            os.makedirs(existing_dir)
            with open(os.path.join(existing_dir, "keep.txt"), "w") as f:
                f.write("precious")
            # A file standing where a directory output would go, and a directory where an .h5 would go.
            file_for_dir = self.path("exists-%d-file" % tag)
            with open(file_for_dir, "w") as f:
                f.write("precious")
            dir_for_h5 = self.path("exists-%d-dirlike.h5" % tag)
            os.makedirs(dir_for_h5)
            outs += [(out, ranks) for out in (existing_h5, existing_dir, file_for_dir, dir_for_h5)]
        before = [snapshot(out) for out, _ in outs]
        procs = self.run_many([(["convert", self.src, out], ranks) for out, ranks in outs])
        for (out, ranks), proc, snap in zip(outs, procs, before):
            with self.subTest(out=os.path.basename(out), ranks=ranks or 1):
                self.assert_failed(proc, [os.path.basename(out)], ["exist", "overwrite"])
                self.assertEqual(snapshot(out), snap, "existing output was modified")
                self.assertFalse(os.path.lexists(out + ".partial"), "leftover .partial")

    def test_existing_output_is_replaced_with_overwrite(self):
        # Control for the test above: --overwrite is what makes the difference.
        out = self.path("replace.h5")
        with open(out, "wb") as f:
            f.write(b"old")
        proc = self.run_soupkit(["convert", self.src, out, "--overwrite"])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        with h5py.File(out, "r") as f:
            self.assertIn("tensors", f)

    def test_failed_convert_keeps_existing_output_with_overwrite(self):
        # A bad input with --overwrite must not destroy the existing output.
        bad = self.path("bad.safetensors")
        write_raw_safetensors(bad, b'{"w": ', b"")
        outs = [self.out_path(kind, "-keep") for kind in OUTPUT_KINDS]
        with open(outs[0], "wb") as f:
            f.write(b"precious bytes")
        os.makedirs(outs[1])
        with open(os.path.join(outs[1], "keep.txt"), "w") as f:
            f.write("precious")
        before = [snapshot(out) for out in outs]
        procs = self.run_many([(["convert", bad, out, "--overwrite"], None) for out in outs])
        for out, proc, snap in zip(outs, procs, before):
            with self.subTest(out=os.path.basename(out)):
                self.assert_failed(proc, ["bad.safetensors"], ["json"])
                self.assertEqual(snapshot(out), snap, "existing output was modified")
                self.assertFalse(os.path.lexists(out + ".partial"), "leftover .partial")


def snapshot(path):
    """Contents of a file, or of every file under a directory."""
    if os.path.isdir(path):
        out = {}
        for root, _, files in os.walk(path):
            for name in files:
                p = os.path.join(root, name)
                with open(p, "rb") as f:
                    out[os.path.relpath(p, path)] = f.read()
        return ("dir", out)
    with open(path, "rb") as f:
        return ("file", f.read())


if __name__ == "__main__":
    unittest.main()
