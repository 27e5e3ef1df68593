"""convert round-trips sharded bf16/f16/f32 checkpoints through HDF5 and back
bit-exactly under 1, 2 and 3 ranks; h5py reads every tensor's values; --dtype
casts round to nearest even (checked against numpy)."""
import json
import os
import unittest

import h5py
import numpy as np

from soupkit_testlib import (TempDirTestCase, as_float64, bf16_bits_to_f32, f32_to_bf16_bits, read_checkpoint,
                             read_safetensors, run_soupkit, write_model_dir, write_safetensors)


def make_tensors(seed=0):
    rng = np.random.default_rng(seed)
    t = {}
    t["embed.weight"] = ("BF16", f32_to_bf16_bits(rng.standard_normal((300, 48)).astype(np.float32)))
    t["layers.0.attn.weight"] = ("F16", rng.standard_normal((48, 48)).astype(np.float16))
    t["layers.0.mlp.weight"] = ("F32", rng.standard_normal((96, 48)).astype(np.float32))
    t["layers.0.norm.weight"] = ("F32", rng.standard_normal(48).astype(np.float32))
    t["conv.weight"] = ("BF16", f32_to_bf16_bits(rng.standard_normal((8, 3, 3, 3)).astype(np.float32)))
    t["big.weight"] = ("F32", rng.standard_normal((1100, 1024)).astype(np.float32))  # > one 4 MiB chunk
    t["scale"] = ("F32", np.array(1.5, dtype=np.float32))
    t["double"] = ("F64", rng.standard_normal((5, 7)))
    t["position_ids"] = ("I64", np.arange(64, dtype=np.int64))
    t["mask"] = ("BOOL", rng.random((4, 4)) > 0.5)
    t["u8"] = ("U8", rng.integers(0, 255, 17).astype(np.uint8))
    t["i32"] = ("I32", rng.integers(-1000, 1000, (3, 2)).astype(np.int32))
    t["empty"] = ("F32", np.zeros((0, 4), dtype=np.float32))
    t["odd/name with spaces%"] = ("F16", rng.standard_normal(3).astype(np.float16))
    # Special values survive bit-exactly.
    t["special"] = ("F32", np.array([np.inf, -np.inf, 0.0, -0.0, 1e-45, np.finfo(np.float32).max], dtype=np.float32))
    return t


class RoundTrip(TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.tensors = make_tensors()
        self.src = self.path("src")
        write_model_dir(self.src, self.tensors, shard_bytes=200_000, metadata={"format": "pt"},
                        extra_files={"config.json": '{"model_type": "test"}\n', "tokenizer.json": "{}\n"})

    def assert_same_tensors(self, got):
        self.assertEqual(set(got), set(self.tensors))
        for name, (dtype, array) in self.tensors.items():
            gdtype, garray = got[name]
            self.assertEqual(gdtype, dtype, name)
            self.assertEqual(garray.shape, np.shape(array), name)
            self.assertEqual(garray.tobytes(), np.ascontiguousarray(array).tobytes(), name)

    def check_h5(self, path):
        with h5py.File(path, "r") as f:
            self.assertEqual(f.attrs["soupkit_format"], b"soupkit-checkpoint")
            group = f["tensors"]
            names = {group[k].attrs["name"].decode(): k for k in group}
            self.assertEqual(set(names), set(self.tensors))
            for name, (dtype, array) in self.tensors.items():
                d = group[names[name]]
                self.assertEqual(d.attrs["dtype"].decode(), dtype)
                self.assertEqual(d.shape, np.shape(array))
                if dtype in ("BF16", "F16", "F32", "F64"):
                    # Any HDF5 reader converts our bf16/f16 types to float32 exactly.
                    got = d.astype("float32")[...] if d.size else np.zeros(d.shape, np.float32)
                    want = as_float64(dtype, array).astype(np.float32)
                    np.testing.assert_array_equal(got, want, err_msg=name)
                elif dtype == "BOOL":
                    np.testing.assert_array_equal(d[...], array, err_msg=name)
                else:
                    np.testing.assert_array_equal(d[...], array, err_msg=name)
            if group[names["big.weight"]].chunks:
                chunk_bytes = np.prod(group[names["big.weight"]].chunks) * 4
                self.assertLessEqual(chunk_bytes, 4 << 20)
            self.assertEqual(bytes(f["files"]["config.json"][...]), b'{"model_type": "test"}\n')

    def test_roundtrip_through_hdf5(self):
        for ranks in (1, 2, 3):
            with self.subTest(ranks=ranks):
                h5 = self.path("m%d.h5" % ranks)
                back = self.path("back%d" % ranks)
                run_soupkit(["convert", self.src, h5], ranks=ranks)
                self.check_h5(h5)
                run_soupkit(["convert", h5, back, "--shard-size", "300KB"], ranks=ranks)
                got, metadata = read_checkpoint(back)
                self.assert_same_tensors(got)
                # (the output's provenance, test_provenance.py; the input's metadata otherwise)
                self.assertEqual(json.loads(metadata.pop("soupkit_provenance"))["method"], "convert")
                self.assertEqual(metadata, {"format": "pt"})
                with open(os.path.join(back, "model.safetensors.index.json")) as f:
                    index = json.load(f)
                self.assertGreater(len(set(index["weight_map"].values())), 1)
                self.assertEqual(index["metadata"]["total_size"],
                                 sum(np.asarray(a).nbytes for _, a in self.tensors.values()))
                with open(os.path.join(back, "config.json")) as f:
                    self.assertEqual(f.read(), '{"model_type": "test"}\n')
                self.assertFalse(os.path.exists(back + ".partial"))

    def test_single_file_and_shard_layout(self):
        out = self.path("one.safetensors")
        run_soupkit(["convert", self.src, out], ranks=2)
        got, _ = read_safetensors(out)
        self.assert_same_tensors(got)
        with open(out, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
        self.assertEqual(n % 8, 0)  # header padded to 8 bytes

    def test_dtype_cast_rounds_to_nearest_even(self):
        out = self.path("bf16")
        run_soupkit(["convert", self.src, out, "--dtype", "bf16"], ranks=2)
        got, _ = read_checkpoint(out)
        for name, (dtype, array) in self.tensors.items():
            if dtype in ("F32", "F16"):
                self.assertEqual(got[name][0], "BF16", name)
                want = f32_to_bf16_bits(np.asarray(array, dtype=np.float32))
                np.testing.assert_array_equal(got[name][1], want, err_msg=name)
            elif dtype == "F64":
                # Straight from double (numpy: via float32 then bf16 may round twice; compare values).
                got_vals = bf16_bits_to_f32(got[name][1]).astype(np.float64)
                err = np.abs(got_vals - array)
                ulp = np.abs(array) * 2.0 ** -8
                self.assertTrue(np.all(err <= ulp), name)
            else:
                self.assertEqual(got[name][0], dtype, name)
                self.assertEqual(got[name][1].tobytes(), np.asarray(array).tobytes(), name)
        out16 = self.path("f16")
        run_soupkit(["convert", self.src, out16, "--dtype", "F16"])
        got16, _ = read_checkpoint(out16)
        for name, (dtype, array) in self.tensors.items():
            if dtype in ("F32", "F64"):
                np.testing.assert_array_equal(got16[name][1], np.asarray(array).astype(np.float16), err_msg=name)
            elif dtype == "BF16":
                np.testing.assert_array_equal(got16[name][1], bf16_bits_to_f32(array).astype(np.float16), err_msg=name)

    def test_inspect(self):
        proc = run_soupkit(["inspect", self.src, "--json"])
        info = json.loads(proc.stdout)
        self.assertEqual(len(info["tensors"]), len(self.tensors))
        by_name = {t["name"]: t for t in info["tensors"]}
        for name, (dtype, array) in self.tensors.items():
            self.assertEqual(by_name[name]["dtype"], dtype)
            self.assertEqual(by_name[name]["shape"], list(np.shape(array)))
            self.assertEqual(by_name[name]["bytes"], np.asarray(array).nbytes)
        self.assertEqual(info["totals"]["bytes"], sum(np.asarray(a).nbytes for _, a in self.tensors.values()))
        table = run_soupkit(["inspect", self.src]).stdout
        self.assertIn("embed.weight", table)
        self.assertIn("[300, 48]", table)


if __name__ == "__main__":
    unittest.main()
