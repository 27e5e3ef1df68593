"""PyTorch checkpoints as inputs, written by torch itself (tests/e2e/torch_fixtures.py).

Every tensor `soupkit convert x.pt out.safetensors` writes must be, bit for
bit, torch's `tensor.contiguous()` of the tensor torch.save saved, read back
by this file's own safetensors reader: tied weights, views with offsets and
strides, transposes, every storage dtype, the zip format at pickle protocols
2, 4 and 5, the legacy format, a big-endian archive, nested training
checkpoints, model directories (single and sharded pytorch_model.bin), and a
transposed tensor read in row blocks under a small memory budget (with its
peak memory measured). `inspect --json` reports what torch reports, and a
uniform soup of .pt inputs equals numpy's float64 mean on 1 and 2 ranks."""
import collections
import json
import os
import shutil

import numpy as np
import torch

from soupkit_testlib import read_checkpoint, read_safetensors, run_with_peak_rss, write_safetensors
from test_bad_input import BadInputBase
from test_soup import reference_soup
import torch_fixtures as tf

MIB = 1 << 20


class TorchInputs(BadInputBase):
    def assert_converted(self, out, expected):
        got, _ = read_checkpoint(out)
        self.assertEqual(sorted(got), sorted(expected))
        for name, (dtype, raw) in expected.items():
            self.assertEqual(got[name][0], dtype, name)
            self.assertEqual(got[name][1].shape, raw.shape, name)
            self.assertEqual(got[name][1].tobytes(), raw.tobytes(), name)

    def test_zip_and_legacy_formats_bit_for_bit(self):
        sd = tf.rich_state_dict()
        expected = tf.expected(sd)
        # The fixture means what it says: shared storages and non-contiguous views.
        self.assertEqual(sd["embed.cols"].storage().data_ptr(), sd["embed.weight"].storage().data_ptr())
        self.assertFalse(sd["embed.transposed"].is_contiguous())
        self.assertEqual(sd["embed.rows"].storage_offset(), 30)
        sources = {}
        for protocol in (2, 4, 5):
            sources["zip-p%d" % protocol] = self.path("rich-p%d.pt" % protocol)
            torch.save(sd, sources["zip-p%d" % protocol], pickle_protocol=protocol)
        sources["legacy"] = self.path("rich-legacy.pth")
        torch.save(sd, sources["legacy"], _use_new_zipfile_serialization=False)
        # A .bin that is a zip archive, and a zip whose top folder is not the file's stem.
        sources["bin"] = self.path("pytorch_weights.bin")
        with open(sources["bin"], "wb") as f:
            torch.save(sd, f)
        outs = {label: self.path("%s.safetensors" % label) for label in sources}
        self.run_ok([(["convert", sources[label], outs[label]], None) for label in sources])
        for label, out in outs.items():
            with self.subTest(source=label):
                self.assert_converted(out, expected)
        # torch reads back what it wrote (the fixture is not wrong in the way soupkit is).
        for label, src in sources.items():
            for name, t in torch.load(src).items():
                self.assertTrue(torch.equal(t, sd[name]), (label, name))

    def test_big_endian_archive(self):
        # torch on a big-endian machine writes ARCHIVE/byteorder = "big" and big-endian storages.
        values = {"w": np.linspace(-3, 3, 24, dtype=np.float32), "d": np.arange(6, dtype=np.float64) / 7,
                  "h": np.arange(10, dtype=np.int16) - 5, "b": np.array([1, 0, 1], dtype=np.bool_)}
        types = {"w": torch.FloatStorage, "d": torch.DoubleStorage, "h": torch.ShortStorage, "b": torch.BoolStorage}
        storages = {k: tf.FakeStorage(k, types[k], len(v)) for k, v in values.items()}
        sd = collections.OrderedDict(
            w=tf.FakeTensor(storages["w"], 2, (4, 5), (1, 4)),  # a transposed view at an offset
            d=tf.FakeTensor(storages["d"], 0, (2, 3), (3, 1)),
            h=tf.FakeTensor(storages["h"], 1, (3,), (3,)),
            b=tf.FakeTensor(storages["b"], 0, (3,), (1,)))
        big = self.path("big.pt")
        tf.write_torch_zip(big, tf.pickle_bytes(sd), {k: v.byteswap().tobytes() for k, v in values.items()},
                           byteorder="big")
        little = self.path("little.pt")
        tf.write_torch_zip(little, tf.pickle_bytes(sd), {k: v.tobytes() for k, v in values.items()},
                           byteorder="little")
        self.run_ok([(["convert", big, self.path("big.safetensors")], None),
                     (["convert", little, self.path("little.safetensors")], None)])
        w = np.lib.stride_tricks.as_strided(values["w"][2:], (4, 5), (4, 16))
        expected = {"w": ("F32", np.ascontiguousarray(w)), "d": ("F64", values["d"].reshape(2, 3)),
                    "h": ("I16", values["h"][1::3][:3]), "b": ("BOOL", values["b"])}
        self.assert_converted(self.path("big.safetensors"), expected)
        self.assert_converted(self.path("little.safetensors"), expected)

    def test_inspect_reports_what_torch_reports(self):
        sd = tf.rich_state_dict()
        src = self.path("rich.pt")
        torch.save(sd, src)
        (proc,) = self.run_ok([(["inspect", src, "--json"], None)])
        report = json.loads(proc.stdout)
        self.assertEqual(report["format"], "pytorch")
        got = [(t["name"], t["dtype"], t["shape"], t["bytes"]) for t in report["tensors"]]
        want = [(name, tf.TORCH_DTYPES[t.dtype][0], list(t.shape), t.numel() * t.element_size())
                for name, t in sd.items()]
        self.assertEqual(got, want)
        self.assertEqual(report["totals"]["parameters"], sum(t.numel() for t in sd.values()))

    def test_nested_training_checkpoints(self):
        sd = tf.rich_state_dict(1)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9)
        cases = {
            "state_dict": {"epoch": 3, "state_dict": sd, "optimizer": opt.state_dict(), "lr": 0.1},
            "model": {"model": sd, "args": {"layers": 2}, "step": 100},
            "module": collections.OrderedDict(module=sd, extra=[1, 2, 3]),
        }
        jobs = []
        for label, obj in cases.items():
            src = self.path("nested-%s.pt" % label)
            torch.save(obj, src)
            jobs.append((["convert", src, self.path("nested-%s.safetensors" % label), "--log-level", "debug"], None))
        procs = self.run_ok(jobs)
        for label, proc in zip(cases, procs):
            with self.subTest(key=label):
                self.assert_converted(self.path("nested-%s.safetensors" % label), tf.expected(sd))
                self.assertIn("reading the state dict under '%s'" % label, proc.stderr)

    def test_non_tensor_values_of_a_state_dict_are_skipped(self):
        w = torch.arange(6.0).reshape(2, 3)
        src = self.path("mixed.pt")
        torch.save({"w": w, "step": 5, "note": "hello", "nested": {"x": w}, "v": w[1]}, src)
        out = self.path("mixed.safetensors")
        (proc,) = self.run_ok([(["convert", src, out, "--log-level", "debug"], None)])
        self.assert_converted(out, {"w": tf.raw_of(w), "v": tf.raw_of(w[1])})
        skipped = [line for line in proc.stderr.splitlines() if "skipped 3 values" in line]
        self.assertEqual(len(skipped), 1, proc.stderr)
        for key in ("'step'", "'note'", "'nested'"):
            self.assertIn(key, skipped[0])

    def test_model_directories(self):
        sd = tf.rich_state_dict(2)
        names = list(sd)
        config = '{"model_type": "toy"}'
        single = self.path("single")
        os.makedirs(single)
        torch.save(sd, os.path.join(single, "pytorch_model.bin"))
        sharded = self.path("sharded")
        os.makedirs(sharded)
        # Two shards, as transformers writes them; tied weights stay in one shard.
        halves = (names[:9], names[9:])
        weight_map = {}
        for i, part in enumerate(halves):
            fname = "pytorch_model-%05d-of-00002.bin" % (i + 1)
            torch.save(collections.OrderedDict((n, sd[n]) for n in part), os.path.join(sharded, fname))
            weight_map.update({n: fname for n in part})
        with open(os.path.join(sharded, "pytorch_model.bin.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
        for d in (single, sharded):
            with open(os.path.join(d, "config.json"), "w") as f:
                f.write(config)
        outs = {"single": self.path("out-single"), "sharded": self.path("out-sharded"),
                "sharded-h5": self.path("out-sharded.h5")}
        self.run_ok([(["convert", single, outs["single"]], None), (["convert", sharded, outs["sharded"]], 2),
                     (["convert", sharded, outs["sharded-h5"]], None)])
        expected = tf.expected(sd)
        for label in ("single", "sharded"):
            with self.subTest(source=label):
                got, _ = read_checkpoint(outs[label])
                self.assertEqual(sorted(got), sorted(expected))
                for name, (dtype, raw) in expected.items():
                    self.assertEqual((got[name][0], got[name][1].tobytes()), (dtype, raw.tobytes()), name)
                # config.json is carried; the .bin index is a weight index, never carried.
                self.assertEqual(sorted(os.listdir(outs[label])), ["config.json", "model.safetensors"])
                with open(os.path.join(outs[label], "config.json")) as f:
                    self.assertEqual(f.read(), config)

    def test_a_safetensors_file_named_bin_is_still_read_as_safetensors(self):
        tensors = {"w": ("F32", np.arange(6, dtype=np.float32).reshape(2, 3))}
        src = self.path("weights.bin")
        write_safetensors(src, tensors)
        out = self.path("weights.safetensors")
        self.run_ok([(["convert", src, out], None)])
        self.assert_converted(out, tensors)

    def test_index_names_are_never_paths(self):
        sd = collections.OrderedDict(w=torch.ones(2, 2))
        outside = self.path("outside.bin")
        torch.save(sd, outside)
        cases = {"parent": "../outside.bin", "absolute": outside, "nested": "sub/pytorch_model.bin"}
        jobs, labels = [], []
        for label, shard in cases.items():
            d = self.path("index-%s" % label)
            os.makedirs(os.path.join(d, "sub"))
            torch.save(sd, os.path.join(d, "sub", "pytorch_model.bin"))
            with open(os.path.join(d, "pytorch_model.bin.index.json"), "w") as f:
                json.dump({"weight_map": {"w": shard}}, f)
            jobs.append((["convert", d, self.path("index-%s.safetensors" % label)], None))
            labels.append(label)
        # A shard the index maps a tensor to that does not hold it.
        d = self.path("index-wrong-shard")
        os.makedirs(d)
        torch.save(sd, os.path.join(d, "a.bin"))
        with open(os.path.join(d, "pytorch_model.bin.index.json"), "w") as f:
            json.dump({"weight_map": {"w": "a.bin", "x": "a.bin"}}, f)
        jobs.append((["convert", d, self.path("index-wrong.safetensors")], None))
        labels.append("wrong-shard")
        for label, proc in zip(labels, self.run_many(jobs)):
            with self.subTest(case=label):
                self.assert_failed(proc, ["pytorch_model.bin.index.json" if label != "wrong-shard" else "'x'"],
                                   ["not a file in the directory", "does not contain"])

    def test_transposed_tensor_in_row_blocks_with_bounded_memory(self):
        # A 64 MiB float32 matrix saved transposed: every row of the view gathers one element from each
        # storage row. Under a 16 MiB budget the engine reads it in blocks of 2 MiB; the reader's window is
        # 1 MiB, so the peak must stay far below the tensor's size.
        n = 4096
        base = torch.arange(n * n, dtype=torch.int32).reshape(n, n).view(torch.float32)  # distinct bit patterns
        sd = collections.OrderedDict(t=base.t(), cols=base[:, 5:4000:7], small=torch.ones(3))
        src = self.path("big.pt")
        torch.save(sd, src)
        out = self.path("big.safetensors")
        proc, peak = run_with_peak_rss(["convert", src, out, "--memory-budget", "16MB"], timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        tensors, _ = read_safetensors(out)
        for name, t in sd.items():
            dtype, raw = tf.raw_of(t)
            self.assertEqual(tensors[name][1].tobytes(), raw.tobytes(), name)
        print("peak RSS converting a transposed 64 MiB tensor under a 16 MiB budget: %.1f MiB" % (peak / MIB))
        if "ASAN_OPTIONS" not in os.environ:  # the sanitizer build's shadow memory and quarantine are not soupkit's
            self.assertLess(peak, 56 * MIB)

    def test_uniform_soup_of_pt_files_on_one_and_two_ranks(self):
        models, paths = [], []
        for i in range(3):
            g = torch.Generator().manual_seed(50 + i)
            w = torch.randn(300, 40, generator=g)
            sd = collections.OrderedDict()
            sd["w"] = w.t()                                   # transposed view
            sd["w_tied"] = w.t()
            sd["rows"] = w[10:200:3]                          # strided rows of the same storage
            sd["b"] = torch.randn(41, generator=g).to(torch.bfloat16)
            sd["ids"] = torch.arange(10, dtype=torch.int64)
            paths.append(self.path("m%d.pt" % i))
            torch.save(sd, paths[-1]) if i != 1 else torch.save(sd, paths[-1], _use_new_zipfile_serialization=False)
            models.append(tf.expected(sd))
        outs = {r: self.path("soup-%s.safetensors" % r) for r in (None, 2)}
        self.run_ok([(["soup", "uniform", "--out", outs[r], *paths], r) for r in outs])
        expected = reference_soup(models)
        blobs = []
        for out in outs.values():
            self.assert_same_tensors(out, expected)
            with open(out, "rb") as f:
                blobs.append(f.read())
        self.assertEqual(blobs[0], blobs[1], "1 and 2 ranks differ")
