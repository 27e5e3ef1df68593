"""Hostile PyTorch checkpoints: each makes `soupkit convert` (and, for some,
`inspect`) exit with status 1 and one `soupkit: error:` line naming the file
and the problem; no signal, no sanitizer report (this file also runs in the
ASan/UBSan build), nothing written, and nothing a pickle names is ever
imported or called (the marker files its payloads would create never
appear)."""
import collections
import os
import struct
import zipfile

import numpy as np
import torch

from test_bad_input import BadInputBase
import torch_fixtures as tf


class Payload:
    """Pickles as a call of `func(*args)`, which Python's unpickler would make."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def good_sd():
    return collections.OrderedDict(w=torch.arange(6.0).reshape(2, 3))


def raw_pickle(body, protocol=2):
    return bytes([0x80, protocol]) + body


class HostileTorch(BadInputBase):
    def setUp(self):
        super().setUp()
        self.cases = []  # (label, path, names the message must hold, words one of which it must hold, inspect)

    def add(self, label, path, words, names=(), inspect=False):
        self.cases.append((label, path, [os.path.basename(path), *names], words, inspect))

    def add_zip(self, label, pkl, storages=None, words=(), names=(), **zip_args):
        path = self.path("%s.pt" % label)
        tf.write_torch_zip(path, pkl, {"0": b"\0" * 24} if storages is None else storages, **zip_args)
        self.add(label, path, words, names)

    def run_cases(self):
        jobs, labels = [], []
        for label, path, names, words, inspect in self.cases:
            out = self.path("out-%s" % label)
            jobs.append((["convert", path, out], None))
            labels.append((label, names, words, out))
            if inspect:
                jobs.append((["inspect", path, "--json"], None))
                labels.append((label + " (inspect)", names, words, None))
        for (label, names, words, out), proc in zip(labels, self.run_many(jobs)):
            with self.subTest(case=label):
                self.assert_failed(proc, names, words)
                if out:
                    self.assert_no_output(out)

    def test_globals_other_than_the_allowed_ones_are_never_called(self):
        marker = self.path("pwned")
        sd = good_sd()
        sd["evil"] = Payload(os.system, "touch %s" % marker)
        torch.save(sd, self.path("system.pt"))
        self.add("system", self.path("system.pt"), ["not allowed"], ["posix.system"], inspect=True)
        sd = good_sd()
        sd["evil"] = Payload(eval, "open(%r, 'w')" % marker)
        torch.save(sd, self.path("eval.pt"))
        # (pickle protocol 2 spells Python 3's builtins module as Python 2's __builtin__)
        self.add("eval", self.path("eval.pt"), ["not allowed"], ["'__builtin__.eval'"])
        # The same through the legacy format, and with protocol 4's STACK_GLOBAL.
        torch.save(sd, self.path("eval-legacy.pt"), _use_new_zipfile_serialization=False)
        self.add("eval-legacy", self.path("eval-legacy.pt"), ["not allowed"], ["'__builtin__.eval'"])
        torch.save(sd, self.path("eval-p4.pt"), pickle_protocol=4)
        self.add("eval-p4", self.path("eval-p4.pt"), ["not allowed"], ["'builtins.eval'"])
        # A whole model object: its class is a global too.
        torch.save(torch.nn.Linear(2, 2), self.path("module.pt"))
        self.add("module", self.path("module.pt"), ["not allowed"], ["torch.nn.modules.linear.Linear"])
        # A storage type's class called directly, and a GLOBAL naming an allowed module with another name.
        self.add_zip("call-storage", raw_pickle(b"ctorch\nFloatStorage\n)R."), words=["only allowed in a storage"])
        self.add_zip("torch-load", raw_pickle(b"ctorch\nload\n."), words=["not allowed"], names=["torch.load"])
        self.run_cases()
        self.assertFalse(os.path.exists(marker), "a pickle's payload ran")

    def test_malformed_pickles(self):
        sd_pkl = tf.pickle_bytes(collections.OrderedDict(
            w=tf.FakeTensor(tf.FakeStorage("0", torch.FloatStorage, 6), 0, (2, 3), (3, 1))))
        cases = {
            "nested-marks": (raw_pickle(b"(" * 100000), ["nested too deep", "MARK"]),
            "nested-lists": (raw_pickle(b"]" * 100000 + b"a" * 99999 + b"."), ["nested too deep", "stack"]),
            "huge-binunicode": (raw_pickle(b"}X\xff\xff\xff\x7f"), ["string of", "bytes are left", "limit"]),
            "huge-binunicode8": (raw_pickle(b"}\x8d" + struct.pack("<Q", 1 << 62)), ["string of", "limit"]),
            "long-binunicode": (raw_pickle(b"}X" + struct.pack("<I", 40 << 20) + b"a" * 16), ["string of", "left"]),
            "huge-frame": (raw_pickle(b"\x95" + struct.pack("<Q", 1 << 60) + b"}.", 4), ["frame"]),
            "truncated": (sd_pkl[:len(sd_pkl) // 2], ["truncated", "without STOP"]),
            "empty-pickle": (b"", ["truncated", "without STOP"]),
            "no-stop": (raw_pickle(b"}"), ["without STOP", "truncated"]),
            "stack-underflow": (raw_pickle(b"R."), ["no value on the stack"]),
            "memo-undefined": (raw_pickle(b"h\x07."), ["memo entry 7"]),
            "unknown-opcode": (raw_pickle(b"\xff."), ["not a pickle opcode"]),
            "newobj": (raw_pickle(b"ccollections\nOrderedDict\n)\x81."), ["NEWOBJ"]),
            "inst": (raw_pickle(b"(iposix\nsystem\n."), ["INST", "not supported"]),
            "protocol-0-int": (raw_pickle(b"I12\n."), ["INT", "not supported"]),
            "long4-huge": (raw_pickle(b"\x8b\xff\xff\xff\x7f"), ["LONG4"]),
            "protocol-9": (raw_pickle(b"}.", 9), ["protocol 9"]),
            "not-a-dict": (raw_pickle(b"]."), ["not hold a dict"]),
            "setitem-on-list": (raw_pickle(b"]K\x01K\x02s."), ["not a dict"]),
            "global-line-too-long": (raw_pickle(b"c" + b"a" * 5000 + b"\n"), ["longer than"]),
        }
        for label, (pkl, words) in cases.items():
            self.add_zip(label, pkl, words=words)
        self.run_cases()

    def test_views_and_storages_that_do_not_fit(self):
        cases = {
            # (offset, size, stride, declared numel of 6 stored elements, words)
            "numel-larger-than-entry": (0, (2, 3), (3, 1), 1000, ["declares 1000", "holds 24 bytes"]),
            "numel-smaller-than-entry": (0, (5,), (1,), 5, ["declares 5"]),
            "offset-past-end": (6, (2, 3), (3, 1), 6, ["past the end"]),
            "extent-past-end": (1, (2, 3), (3, 1), 6, ["past the end"]),
            "stride-past-end": (0, (2, 3), (4, 1), 6, ["past the end"]),
            "overflowing-view": (0, (1 << 40, 1 << 40), (1 << 40, 1), 6, ["64 bits", "past the end"]),
            "expanded": (0, (1000, 6), (0, 1), 6, ["expanded view"]),
        }
        for label, (offset, size, stride, numel, words) in cases.items():
            path = self.path("%s.pt" % label)
            tf.one_tensor_zip(path, np.arange(6, dtype=np.float32), offset, size, stride, numel)
            self.add(label, path, words, names=["'w'"])
        # Storages named inconsistently or not plainly.
        s1 = tf.FakeStorage("0", torch.FloatStorage, 6)
        s2 = tf.FakeStorage("0", torch.DoubleStorage, 3)
        self.add_zip("storage-two-dtypes", tf.pickle_bytes({"a": tf.FakeTensor(s1, 0, (6,), (1,)),
                                                            "b": tf.FakeTensor(s2, 0, (3,), (1,))}),
                     words=["named as"])
        for label, key in (("key-parent", "../../etc/passwd"), ("key-slash", "data/0"), ("key-empty", "")):
            s = tf.FakeStorage(key, torch.FloatStorage, 6)
            self.add_zip(label, tf.pickle_bytes({"w": tf.FakeTensor(s, 0, (6,), (1,))}), words=["not a plain name"])
        # Tensor arguments of the wrong kinds.
        s = tf.FakeStorage("0", torch.FloatStorage, 6)
        self.add_zip("negative-offset", tf.pickle_bytes({"w": tf.FakeTensor(s, -1, (6,), (1,))}),
                     words=["negative"])
        self.add_zip("dims-mismatch", tf.pickle_bytes({"w": tf.FakeTensor(s, 0, (2, 3), (1,))}),
                     words=["dimensions"])
        self.add_zip("too-many-dims", tf.pickle_bytes({"w": tf.FakeTensor(s, 0, (1,) * 100, (1,) * 100)}),
                     words=["more than 64"])
        self.add_zip("conj-bit", tf.pickle_bytes({"w": tf.FakeTensor(s, 0, (6,), (1,), ({"conj": True},))}),
                     words=["conj"])
        self.add_zip("int-key", tf.pickle_bytes({1: tf.FakeTensor(s, 0, (6,), (1,))}), words=["not a string"])
        self.run_cases()

    def test_broken_archives(self):
        good = self.path("good.pt")
        torch.save(good_sd(), good)
        with zipfile.ZipFile(good) as z:
            entries = {info.filename: z.read(info) for info in z.infolist()}
        archive = next(iter(entries)).split("/")[0]

        def rezip(label, drop=(), compress=(), extra=None):
            path = self.path("%s.pt" % label)
            with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
                for name, data in entries.items():
                    if name not in drop:
                        method = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
                        z.writestr(zipfile.ZipInfo(name), data, compress_type=method)
                for name, data in (extra or {}).items():
                    z.writestr(name, data)
            return path

        self.add("missing-data-entry", rezip("missing-data-entry", drop=["%s/data/0" % archive]),
                 ["missing"], names=["'w'", "data/0"], inspect=True)
        self.add("missing-data-pkl", rezip("missing-data-pkl", drop=["%s/data.pkl" % archive]), ["no entry"])
        self.add("compressed-storage", rezip("compressed-storage", compress=["%s/data/0" % archive]),
                 ["compressed"], names=["data/0"])
        self.add("compressed-pickle", rezip("compressed-pickle", compress=["%s/data.pkl" % archive]),
                 ["compressed"], names=["data.pkl"])
        self.add("bad-byteorder", rezip("bad-byteorder", extra={"%s/byteorder" % archive: "middle"}), ["byteorder"])
        with open(good, "rb") as f:
            blob = f.read()
        # data.pkl (the first entry) declaring 200 MiB in its local and central headers alike.
        lied = bytearray(blob)
        central = blob.index(b"PK\x01\x02")
        for at in (18, 22, central + 20, central + 24):
            lied[at:at + 4] = struct.pack("<I", 200 << 20)
        path = self.path("huge-entry.pt")
        with open(path, "wb") as f:
            f.write(lied)
        self.add("huge-entry", path, ["more than the whole file", "zip"])
        cases = {"truncated-zip": blob[:len(blob) // 2], "garbage": b"not a checkpoint at all" * 10, "empty": b"",
                 "zip-magic-only": b"PK\x03\x04" + b"\0" * 60}
        for label, data in cases.items():
            path = self.path("%s.pt" % label)
            with open(path, "wb") as f:
                f.write(data)
            self.add(label, path, ["zip", "not a PyTorch checkpoint", "truncated"])
        self.add_zip("no-folder", b"", words=["not in a folder"], archive="")
        self.run_cases()

    def test_broken_legacy_files_and_ambiguous_checkpoints(self):
        legacy = self.path("legacy.pt")
        torch.save(good_sd(), legacy, _use_new_zipfile_serialization=False)
        with open(legacy, "rb") as f:
            blob = f.read()
        cases = {"legacy-cut-storage": (blob[:-5], ["storage '", "file has", "missing"]),
                 "legacy-cut-pickle": (blob[:60], ["truncated", "without STOP", "bytes are left"]),
                 "legacy-bad-magic": (raw_pickle(b"K\x07.") + blob[16:], ["magic number"])}
        # The storage's element count (8 bytes before its data) changed.
        count_at = len(blob) - 6 * 4 - 8
        cases["legacy-count"] = (blob[:count_at] + struct.pack("<Q", 1 << 40) + blob[count_at + 8:], ["holds"])
        for label, (data, words) in cases.items():
            path = self.path("%s.pt" % label)
            with open(path, "wb") as f:
                f.write(data)
            self.add(label, path, words)
        sd = good_sd()
        for label, obj, words in (("ambiguous", {"model": sd, "state_dict": sd}, ["more than one", "'model'"]),
                                  ("no-tensors", {"epoch": 3, "lr": 0.1}, ["none of", "'epoch'"]),
                                  ("one-tensor", torch.ones(3), ["one tensor"])):
            path = self.path("%s.pt" % label)
            torch.save(obj, path)
            self.add(label, path, words)
        self.run_cases()
