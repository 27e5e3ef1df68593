"""Hostile and unusual soupkit .h5 inputs, made with h5py.

Hostile ones (carried-file names that escape the output or replace its
weights, declared sizes with nothing stored behind them, filtered or external
data, NUL bytes in names) fail with exit status 1 and one message naming the
file and the dataset, write nothing anywhere and stay far below 1 GiB of
memory. Unusual but valid ones (big-endian tensors) convert exactly, bit for
bit. Carried files are streamed, so copying a large one costs little memory."""
import json
import os
import struct
import shutil
import subprocess
import tempfile
import unittest

import h5py
import numpy as np

from soupkit_testlib import (MPIRUN, SOUPKIT, TempDirTestCase, read_checkpoint, run_soupkit, run_with_peak_rss,
                             write_model_dir, write_safetensors)
from test_bad_input import write_raw_safetensors, BadInputBase

CARRIED_FILE_WORDS = ["carried file", "appears twice", "NUL"]
SIZE_WORDS = ["stored", "storage", "filter", "external"]
GIB = 1 << 30


def write_soupkit_h5(path, tensors, files=()):
    """A soupkit-layout .h5 written by h5py. tensors: name -> (dtype attribute, numpy array or a
    callable(group, link) that creates the dataset); files: (link, name attribute, bytes or callable)."""
    with h5py.File(path, "w") as f:
        f.attrs["soupkit_format"] = np.bytes_(b"soupkit-checkpoint")
        f.attrs["soupkit_format_version"] = np.int64(1)
        g = f.create_group("tensors")
        for i, (name, (dtype, data)) in enumerate(tensors.items()):
            link = "t%d" % i
            d = data(g, link) if callable(data) else g.create_dataset(link, data=data)
            d.attrs["name"] = name
            d.attrs["dtype"] = np.bytes_(dtype.encode())
        fg = f.create_group("files")
        for link, name, data in files:
            d = data(fg, link) if callable(data) else fg.create_dataset(link, data=np.frombuffer(data, np.uint8))
            d.attrs["name"] = name


def small_tensor():
    return {"w": ("F32", np.arange(12, dtype=np.float32).reshape(3, 4))}


def run_measured(args, timeout=120):
    return run_with_peak_rss(args, timeout)


class CarriedFileNames(BadInputBase):
    """Names from /files/*/@name are output file names: each must be a plain name inside the output."""

    def make(self, tag, names):
        src = self.path("names-%s.h5" % tag)
        files = [("f%d" % i, name, b"{}") for i, name in enumerate(names)]
        write_soupkit_h5(src, small_tensor(), files)
        return src

    def test_names_that_escape_or_replace_the_output_are_refused(self):
        victim = self.path("victim.txt")
        with open(victim, "w") as f:
            f.write("keep me")
        bad = {
            "absolute": victim,
            "parent": "../victim.txt",
            "nested": "sub/config.json",
            "weights": "model.safetensors",
            "shard": "model-00001-of-00002.safetensors",
            "index": "model.safetensors.index.json",
            "weight-ext": "pytorch_model.bin",
            "dot": ".",
            "dotdot": "..",
            "empty": np.bytes_(b""),
            "control": "a\x1bb",
        }
        for tag, name in bad.items():
            with self.subTest(name=tag):
                src = self.make(tag, ["config.json", name])
                self.check_fails(src, [os.path.basename(src), "/files/f1"], CARRIED_FILE_WORDS,
                                 ranks_list=(None, 2) if tag == "parent" else (None,), inspect=tag == "absolute")
        with open(victim) as f:
            self.assertEqual(f.read(), "keep me")
        self.assertEqual(sorted(os.listdir(self.tmp)), sorted(["victim.txt"] + ["names-%s.h5" % t for t in bad]))

    def test_model_directory_file_with_a_control_character_is_refused(self):
        """The same rule holds for the files of a model directory (whose names cannot hold '/' anyway)."""
        src = self.path("model-dir")
        write_model_dir(src, small_tensor(), extra_files={"config.json": "{}", "bad\x1bname.txt": "x"})
        self.check_fails(src, ["model-dir", "bad\\x1bname.txt"], ["control character"], kinds=("h5",))

    def test_a_name_given_twice_is_refused(self):
        src = self.make("twice", ["config.json", "config.json"])
        self.check_fails(src, [os.path.basename(src), "config.json"], ["appears twice"], ranks_list=(None, 2))

    def test_a_name_with_a_nul_byte_is_refused(self):
        src = self.make("nul", [np.bytes_(b"config.json\x00x")])
        self.check_fails(src, [os.path.basename(src), "/files/f0"], ["NUL"])


class DeclaredSizes(BadInputBase):
    """Sizes a file declares but does not store are refused before anything is allocated or written."""

    def check_refused_small(self, src, names, words=SIZE_WORDS):
        self.assertLess(os.path.getsize(src), 1 << 20)
        for out in (self.path("out.h5"), self.path("outdir")):
            proc, rss = run_measured(["convert", src, out])
            self.assert_failed(proc, [os.path.basename(src), *names], words)
            self.assertLess(rss, GIB, "peak memory %d bytes" % rss)
            self.assert_no_output(out)

    def test_carried_file_declaring_3_gib_with_nothing_stored(self):
        src = self.path("big-file.h5")
        write_soupkit_h5(src, small_tensor(), [("big", "vocab.txt", lambda g, l: g.create_dataset(l, (3 * GIB,), "u1"))])
        self.check_refused_small(src, ["/files/big"])

    def test_carried_file_with_one_chunk_of_many_stored(self):
        def one_chunk(g, link):
            d = g.create_dataset(link, (3 * GIB,), "u1", chunks=(1 << 16,))
            d[:16] = 1
            return d
        src = self.path("chunky-file.h5")
        write_soupkit_h5(src, small_tensor(), [("big", "vocab.txt", one_chunk)])
        self.check_refused_small(src, ["/files/big"])

    def test_tensor_declaring_4_tib(self):
        def huge(g, link):
            d = g.create_dataset(link, (1 << 20, 1 << 20), "<f4", chunks=(64, 1024))
            d[0, :1024] = 1.0
            return d
        src = self.path("huge-tensor.h5")
        write_soupkit_h5(src, {"huge": ("F32", huge)})
        self.check_refused_small(src, ["/tensors/t0"])
        src = self.path("huge-contiguous.h5")
        write_soupkit_h5(src, {"huge": ("F32", lambda g, l: g.create_dataset(l, (1 << 20, 1 << 20), "<f4"))})
        self.check_refused_small(src, ["/tensors/t0"])

    def test_compressed_tensor_is_refused_by_name(self):
        src = self.path("gzip.h5")
        zeros = lambda g, l: g.create_dataset(l, data=np.zeros((512, 512), np.float32), compression="gzip")
        write_soupkit_h5(src, {"z": ("F32", zeros)})
        self.check_refused_small(src, ["/tensors/t0", "gzip"])

    def test_external_data_is_refused(self):
        """External storage would read any file on the machine into the output."""
        outside = self.path("outside.bin")
        with open(outside, "wb") as f:
            f.write(b"secret" * 100)
        src = self.path("external.h5")
        ext = lambda g, l: g.create_dataset(l, (600,), "u1", external=[(outside, 0, 600)])
        write_soupkit_h5(src, small_tensor(), [("ext", "notes.txt", ext)])
        self.check_refused_small(src, ["/files/ext"], ["external"])


class Links(BadInputBase):
    """Only hard links are followed: an external link would read another file, soft links would count one
    dataset's storage once but read it many times."""

    def test_external_and_soft_links_are_refused(self):
        other = self.path("other.h5")
        write_soupkit_h5(other, {"secret": ("F32", np.ones(4, np.float32))})
        cases = {  # name: (path of the link, what it points to)
            "external-tensor": ("/tensors/t1", h5py.ExternalLink(other, "/tensors/t0")),
            "soft-tensor": ("/tensors/t1", h5py.SoftLink("/tensors/t0")),
            "external-group": ("/tensors", h5py.ExternalLink(other, "/tensors")),
            "external-file": ("/files/f0", h5py.ExternalLink(other, "/tensors/t0")),
        }
        for tag, (where, link) in cases.items():
            with self.subTest(case=tag):
                src = self.path("%s.h5" % tag)
                write_soupkit_h5(src, small_tensor())
                with h5py.File(src, "r+") as f:
                    if where in f:
                        del f[where]
                    f[where] = link
                self.check_fails(src, [os.path.basename(src), where], ["link"], kinds=("h5",))


class StreamedCarriedFiles(TempDirTestCase):
    def test_a_large_carried_file_is_copied_exactly_in_little_memory(self):
        size = 160 << 20
        payload = np.random.default_rng(3).integers(0, 256, size, dtype=np.uint8)
        src = self.path("carrier.h5")
        write_soupkit_h5(src, small_tensor(), [("blob", "blob.txt", payload.tobytes())])
        # The same conversion of a tiny carried file: the process's own size
        # (larger under the sanitizers' shadow memory).
        tiny = self.path("tiny.h5")
        write_soupkit_h5(tiny, small_tensor(), [("blob", "blob.txt", b"x")])
        proc, baseline = run_measured(["convert", tiny, self.path("tiny-out.h5")])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for out in (self.path("out.h5"), self.path("outdir")):
            proc, rss = run_measured(["convert", src, out])
            self.assertEqual(proc.returncode, 0, proc.stderr)
            # Reading it whole would take 160 MiB more at least.
            self.assertLess(rss, baseline + (64 << 20), "peak memory %d bytes, %d for a tiny file" % (rss, baseline))
            if out.endswith(".h5"):
                with h5py.File(out, "r") as f:
                    (link,) = list(f["files"])
                    copied = f["files"][link][...]
            else:
                copied = np.fromfile(os.path.join(out, "blob.txt"), np.uint8)
            self.assertTrue(np.array_equal(copied, payload))


def bf16_type(order_be):
    t = (h5py.h5t.IEEE_F32BE if order_be else h5py.h5t.IEEE_F32LE).copy()
    t.set_fields(15, 7, 8, 0, 7)
    t.set_size(2)
    t.set_precision(16)
    t.set_ebias(127)
    return t


def bf16_dataset(bits):
    """A dataset of big-endian bf16 (h5py's low-level API: numpy has no bf16) holding these bit patterns."""
    def make(group, link):
        t = bf16_type(True)
        space = h5py.h5s.create_simple(bits.shape)
        dsid = h5py.h5d.create(group.id, link.encode(), t, space)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(bits.astype(">u2")), mtype=t)
        return h5py.Dataset(dsid)
    return make


class ByteOrder(BadInputBase):
    """Big-endian tensors are converted by HDF5, so values come out exactly (never byte-swapped)."""

    def test_big_endian_tensors_convert_bit_for_bit(self):
        special = [0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, np.nan, 1e-40, 65504.0, 3.0e38]
        f64 = np.array(special + [1e-310, 1e300], np.float64)
        f32 = np.array(special, np.float32).reshape(2, 5)
        f16 = np.array([0.0, -0.0, 1.0, -2.5, np.inf, np.nan, 6e-8, 65504.0], np.float16)
        bf16_bits = np.array([0x0000, 0x8000, 0x3F80, 0xC020, 0x7F80, 0x7FC1, 0x0001, 0x7F7F], np.uint16)
        ints = {
            "i64": ("I64", np.array([-(2 ** 63), -1, 0, 1, 2 ** 62 + 12345], ">i8"), np.int64),
            "i32": ("I32", np.array([[-(2 ** 31), -7], [0, 2 ** 31 - 1]], ">i4"), np.int32),
            "i16": ("I16", np.array([-300, 300], ">i2"), np.int16),
            "u16": ("U16", np.array([0, 65535, 258], ">u2"), np.uint16),
            "u64": ("U64", np.array([2 ** 64 - 1, 5], ">u8"), np.uint64),
        }
        tensors = {"f64": ("F64", f64.astype(">f8")), "f32": ("F32", f32.astype(">f4")),
                   "f16": ("F16", f16.astype(">f2")), "bf16": ("BF16", bf16_dataset(bf16_bits))}
        tensors.update({k: (d, a) for k, (d, a, _) in ints.items()})
        src = self.path("big-endian.h5")
        write_soupkit_h5(src, tensors)
        with h5py.File(src, "r") as f:  # the file really is big-endian
            self.assertEqual(f["tensors/t1"].dtype.byteorder, ">")
        expected = {"f64": ("F64", f64), "f32": ("F32", f32), "f16": ("F16", f16), "bf16": ("BF16", bf16_bits)}
        expected.update({k: (d, a.astype(native)) for k, (d, a, native) in ints.items()})
        for out in (self.path("out.safetensors"), self.path("via.h5")):
            run_soupkit(["convert", src, out])
            final = out
            if out.endswith(".h5"):  # and back, through soupkit's own little-endian file
                final = self.path("back.safetensors")
                run_soupkit(["convert", out, final])
            got, _ = read_checkpoint(final)
            for name, (dtype, want) in expected.items():
                with self.subTest(out=os.path.basename(out), tensor=name):
                    self.assertEqual(got[name][0], dtype)
                    self.assertEqual(got[name][1].shape, want.shape)
                    self.assertEqual(got[name][1].tobytes(), np.ascontiguousarray(want).tobytes())

    def test_types_that_do_not_hold_the_declared_dtype_are_refused_by_name(self):
        cases = {
            "f32-as-f16": ("F16", np.ones(4, "<f4")),
            "f32-as-f64": ("F64", np.ones(4, ">f4")),
            "f16-as-bf16": ("BF16", np.ones(4, ">f2")),
            "u8-as-i8": ("I8", np.ones(4, "u1")),
            "i32-as-u32": ("U32", np.ones(4, ">i4")),
            "f32-as-i32": ("I32", np.ones(4, "<f4")),
        }
        for tag, (dtype, data) in cases.items():
            with self.subTest(case=tag):
                src = self.path("%s.h5" % tag)
                write_soupkit_h5(src, {"bad.%s" % tag: (dtype, data)})
                self.check_fails(src, [os.path.basename(src), "bad.%s" % tag, dtype], ["does not hold"], kinds=("h5",))


class NamesWithNul(BadInputBase):
    """A NUL byte in a tensor name is refused in every reader; a name is never changed."""

    def test_safetensors_name_with_nul_is_refused_and_printed_escaped(self):
        src = self.path("nul.safetensors")
        write_safetensors(src, {"w\x00": ("F32", np.ones(2, np.float32)), "v": ("F32", np.ones(2, np.float32))})
        self.check_fails(src, ["nul.safetensors", "'w\\x00'"], ["NUL"], ranks_list=(None, 2), inspect=True)

    def test_hdf5_name_attribute_with_nul_is_refused(self):
        src = self.path("nul-attr.h5")
        write_soupkit_h5(src, {"placeholder": ("F32", np.ones(2, np.float32))})
        with h5py.File(src, "r+") as f:
            f["tensors/t0"].attrs["name"] = np.bytes_(b"w\x00x")
        self.check_fails(src, ["nul-attr.h5", "/tensors/t0"], ["NUL"], inspect=True)

    def test_hdf5_name_that_is_not_utf8_is_refused(self):
        # Names travel in JSON (plans, journals, safetensors headers), which holds only UTF-8:
        # such a name gave a raw json type_error naming nothing.
        src = self.path("latin1.h5")
        write_soupkit_h5(src, {"placeholder": ("F32", np.ones(2, np.float32))})
        with h5py.File(src, "r+") as f:
            f["tensors/t0"].attrs["name"] = np.bytes_(b"caf\xe9")
        self.check_fails(src, ["latin1.h5", "/tensors/t0"], ["UTF-8"], inspect=True)

    def test_metadata_attribute_that_is_not_strings_is_refused(self):
        for tag, text in (("number", '{"a": 1}'), ("list", '["a"]'), ("twice", '{"a": "1", "a": "2"}')):
            with self.subTest(tag):
                src = self.path("meta-%s.h5" % tag)
                write_soupkit_h5(src, {"placeholder": ("F32", np.ones(2, np.float32))})
                with h5py.File(src, "r+") as f:
                    f.attrs["safetensors_metadata"] = text
                self.check_fails(src, ["meta-%s.h5" % tag, "safetensors_metadata"],
                                 ["not a string", "not a JSON object", "appears twice"], inspect=True)

    def test_control_characters_round_trip_exactly(self):
        src = self.path("odd.safetensors")
        names = ["a\nb", "tab\there", "esc\x1b[0m", "%2F/slash"]
        write_safetensors(src, {n: ("F32", np.full(2, i, np.float32)) for i, n in enumerate(names)})
        out = self.path("odd.h5")
        run_soupkit(["convert", src, out])
        back = self.path("back.safetensors")
        run_soupkit(["convert", out, back])
        got, _ = read_checkpoint(back)
        self.assertEqual(sorted(got), sorted(names))



class TooManyDimensions(BadInputBase):
    def test_a_tensor_deeper_than_hdf5_allows_is_refused_before_any_work_naming_the_input(self):
        # numpy stops at 32 dimensions too: the file is written by hand.
        src = self.path("rank40.safetensors")
        header = {"w": {"dtype": "F32", "shape": [1] * 40, "data_offsets": [0, 4]}}
        write_raw_safetensors(src, header, np.float32(1.5).tobytes())
        self.check_fails(src, ["rank40.safetensors", "'w'", "40 dimensions"], ["HDF5 output"], kinds=("h5",))
        out = self.path("rank40.safetensors-copy.safetensors")
        run_soupkit(["convert", src, out])  # safetensors holds it
        with open(out, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            self.assertEqual(json.loads(f.read(n))["w"]["shape"], [1] * 40)


class Attributes(BadInputBase):
    """Attributes of the wrong kind or with more than one value are refused naming the file and dataset
    (an array attribute used to be read into a one-value buffer)."""

    def check_attribute(self, tag, set_attribute, words, where="/tensors/t0"):
        src = self.path("attr-%s.h5" % tag)
        write_soupkit_h5(src, small_tensor())
        with h5py.File(src, "r+") as f:
            set_attribute(f)
        self.check_fails(src, [os.path.basename(src), where], words, kinds=("h5",), inspect=True)

    def test_bad_attributes(self):
        many_names = np.array([b"w" * 8] * 512)
        cases = {
            "names-array": (lambda f: f["tensors/t0"].attrs.__setitem__("name", many_names), ["512 values"]),
            "dtype-array": (lambda f: f["tensors/t0"].attrs.__setitem__("dtype", np.array([b"F32", b"F16"])),
                            ["2 values"]),
            "name-int": (lambda f: f["tensors/t0"].attrs.__setitem__("name", np.int64(7)), ["not a string"]),
        }
        for tag, (set_attribute, words) in cases.items():
            with self.subTest(case=tag):
                self.check_attribute(tag, set_attribute, words)
        self.check_attribute("version-array", lambda f: f.attrs.__setitem__("soupkit_format_version", np.arange(1000, dtype=np.int64)),
                             ["1000 values"], where="soupkit_format_version")


class DiskFull(BadInputBase):
    """An .h5 output on a full filesystem (a 2 MiB tmpfs in a private mount namespace) fails saying so."""

    def run_on_small_tmpfs(self, script):
        mnt = self.path("mnt")
        os.makedirs(mnt, exist_ok=True)
        cmd = ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=2m tmpfs %s && cd %s && %s" % (mnt, mnt, script)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, TMPDIR=self.tmp))

    def test_disk_full_message_says_no_space_left(self):
        probe = self.run_on_small_tmpfs("true")
        if probe.returncode != 0:
            self.skipTest("cannot mount a tmpfs in a private mount namespace: %s" % probe.stderr.strip())
        src = self.path("in.safetensors")
        # 8 MiB, under a name that also checks that messages stay on one line
        write_safetensors(src, {"big\nweight": ("F32", np.ones((2048, 1024), np.float32))})
        for launcher in ("", "%s -n 2 " % " ".join(MPIRUN)):
            with self.subTest(launcher=launcher or "1 rank"):
                proc = self.run_on_small_tmpfs("%s%s convert %s out.h5; echo exit=$?; ls -A"
                                               % (launcher, SOUPKIT, src))
                lines = proc.stdout.splitlines()
                self.assertIn("exit=1", lines, proc.stdout + proc.stderr)
                self.assertEqual(lines[lines.index("exit=1") + 1:], [], "left on the filesystem")
                errors = [l for l in proc.stderr.splitlines() if l.startswith("soupkit: error: ")]
                self.assertEqual(len(errors), 1, proc.stderr)
                self.assertIn("out.h5", errors[0])
                self.assertIn("No space left on device", errors[0])
                self.assertIn("tensor 'big\\x0aweight'", errors[0])

    def test_full_disk_before_the_headers_leaves_nothing(self):
        # One free page on the 2 MiB tmpfs: the journal takes it, so creating
        # the partial output works (an inode) and writing its headers does not.
        probe = self.run_on_small_tmpfs("true")
        if probe.returncode != 0:
            self.skipTest("cannot mount a tmpfs in a private mount namespace: %s" % probe.stderr.strip())
        src = self.path("in.safetensors")
        write_safetensors(src, {"w": ("F32", np.ones((64, 64), np.float32))})
        for out in ("out.safetensors", "outdir"):
            with self.subTest(out=out):
                proc = self.run_on_small_tmpfs("dd if=/dev/zero of=fill bs=4k count=511 2>/dev/null; %s convert %s %s; "
                                               "echo exit=$?; ls -A" % (SOUPKIT, src, out))
                lines = proc.stdout.splitlines()
                self.assertIn("exit=1", lines, proc.stdout + proc.stderr)
                self.assertEqual(lines[lines.index("exit=1") + 1:], ["fill"], "left on the filesystem")
                errors = [l for l in proc.stderr.splitlines() if l.startswith("soupkit: error: ")]
                self.assertEqual(len(errors), 1, proc.stderr)
                self.assertIn(out, errors[0])
                self.assertIn("No space left on device", errors[0])


if __name__ == "__main__":
    unittest.main()
