"""soupkit monosoup against the independent float64 oracle (monosoup_oracle.py)
on every kind of tensor, both modes, all float dtypes, 1-3 ranks, every output
format; the report; and bad input."""
import json
import os
import unittest

import numpy as np

from monosoup_oracle import monosoup_tensor
from soupkit_testlib import (TempDirTestCase, as_float64, f32_to_bf16_bits, read_checkpoint, run_soupkit,
                             write_model_dir)

FLOAT = ("F64", "F32", "F16", "BF16")


def encode(dtype, values):
    if dtype == "BF16":
        return f32_to_bf16_bits(np.asarray(values, dtype=np.float32))
    return np.asarray(values).astype({"F64": np.float64, "F32": np.float32, "F16": np.float16}[dtype])


def make_pair(seed=1):
    """(base, finetuned) tensor dicts covering every case MonoSoup distinguishes."""
    rng = np.random.default_rng(seed)
    base, fine = {}, {}

    def pair(name, dtype, shape, rank=None, scale=0.05, noise=0.01):
        w0 = rng.standard_normal(shape) / np.sqrt(shape[-1])
        m = shape[0]
        n = int(np.prod(shape[1:]))
        if rank is None:
            upd = scale * rng.standard_normal((m, n)) * np.linspace(1, 0.05, n)  # a decaying spectrum
        else:
            upd = scale * (rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))) / rank
            upd += noise * scale * rng.standard_normal((m, n))
        w1 = w0 + upd.reshape(shape)
        base[name] = (dtype, encode(dtype, w0))
        fine[name] = (dtype, encode(dtype, w1))

    pair("wide.f32", "F32", (24, 80), rank=3)
    pair("tall.f32", "F32", (90, 20), rank=4)
    pair("square.bf16", "BF16", (48, 48), rank=5)
    pair("attn.f16", "F16", (32, 64))
    pair("mlp.f64", "F64", (40, 30))
    pair("conv.f32", "F32", (16, 3, 3, 3), rank=2)     # 4-D: viewed as [16, 27]
    pair("embed3d.bf16", "BF16", (12, 5, 8))            # 3-D: viewed as [12, 40]
    pair("row.f32", "F32", (1, 50))                     # a single row: r = 1
    # Updates that MonoSoup must keep unchanged.
    w0 = rng.standard_normal((20, 20)).astype(np.float32)
    base["tiny_update"] = ("F32", w0)
    fine["tiny_update"] = ("F32", w0 + np.float32(1e-9) * np.sign(w0))
    base["same"] = ("F32", w0)
    fine["same"] = ("F32", w0.copy())
    zero = np.zeros((6, 7), dtype=np.float32)
    base["zero_base_zero_update"] = ("F32", zero)
    fine["zero_base_zero_update"] = ("F32", zero.copy())
    base["zero_base"] = ("F32", zero)
    fine["zero_base"] = ("F32", rng.standard_normal((6, 7)).astype(np.float32))  # ||W0|| = 0: processed
    # Carried through bit-exactly.
    base["norm.weight"] = ("F32", rng.standard_normal(16).astype(np.float32))
    fine["norm.weight"] = ("F32", rng.standard_normal(16).astype(np.float32))
    base["ids"] = ("I64", np.arange(10, dtype=np.int64))
    fine["ids"] = ("I64", np.arange(10, dtype=np.int64) * 3)
    base["mask"] = ("BOOL", np.ones((3, 3), dtype=bool))
    fine["mask"] = ("BOOL", np.eye(3, dtype=bool))
    fine["scale"] = ("F32", np.array(2.0, dtype=np.float32))
    base["scale"] = ("F32", np.array(1.0, dtype=np.float32))
    fine["only_in_finetuned"] = ("F32", rng.standard_normal((4, 4)).astype(np.float32))
    fine["reshaped"] = ("F32", rng.standard_normal((4, 6)).astype(np.float32))
    base["reshaped"] = ("F32", rng.standard_normal((6, 4)).astype(np.float32))
    return base, fine


KEPT_BY_PLAN = {"norm.weight": "fewer than 2 dimensions", "ids": "not floating point", "mask": "not floating point",
                "scale": "fewer than 2 dimensions", "only_in_finetuned": "missing from base",
                "reshaped": "shape differs from base [6, 4]"}


class MonoSoupAgainstOracle(TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.base, self.fine = make_pair()
        write_model_dir(self.path("base"), self.base, shard_bytes=20_000)
        write_model_dir(self.path("fine"), self.fine, shard_bytes=20_000,
                        extra_files={"config.json": '{"x": 1}\n', "tokenizer.json": '{"t": 2}\n'})

    def run_monosoup(self, out, *extra, ranks=None):
        report = out + ".report.json"
        proc = run_soupkit(["monosoup", "--base", self.path("base"), "--finetuned", self.path("fine"), "--out", out,
                            "--report", report, *extra], ranks=ranks)
        with open(report) as f:
            return json.load(f), proc

    def oracle(self, name, mode, threshold=0.8):
        bd, b = self.base[name]
        fd, f = self.fine[name]
        return monosoup_tensor(as_float64(bd, b), as_float64(fd, f), mode=mode, variance_threshold=threshold)

    def check(self, out, report, mode, threshold=0.8, exact_dtype=False):
        got, _ = read_checkpoint(out) if not out.endswith(".h5") else (self.read_h5(out), None)
        self.assertEqual(set(got), set(self.fine))
        records = {r["name"]: r for r in report["tensors"]}
        processed = 0
        for name, (fdtype, fvalues) in self.fine.items():
            gdtype, gvalues = got[name]
            rec = records[name]
            if name in KEPT_BY_PLAN:
                self.assertEqual(rec["action"], "kept", name)
                self.assertEqual(rec["reason"], KEPT_BY_PLAN[name], name)
            if fdtype not in FLOAT or name in KEPT_BY_PLAN:
                if gdtype == fdtype:
                    self.assertEqual(gvalues.tobytes(), np.asarray(fvalues).tobytes(), name)
                else:
                    np.testing.assert_array_equal(as_float64(gdtype, gvalues), as_float64(fdtype, fvalues), name)
                continue
            want, info = self.oracle(name, mode, threshold)
            value = as_float64(gdtype, gvalues)
            if want is None:
                self.assertEqual(rec["action"], "kept", name)
                self.assertEqual(rec["reason"], info["reason"], name)
                np.testing.assert_array_equal(value, as_float64(fdtype, fvalues), name)
                continue
            processed += 1
            self.assertEqual(rec["action"], "monosoup", name)
            self.assertEqual(rec["k"], info["k"], name)
            for key in ("effective_rank", "P_k", "lambda_high", "lambda_low", "delta_norm"):
                self.assertAlmostEqual(rec[key], info[key], delta=1e-6 * max(1.0, abs(info[key])), msg=(name, key))
            self.assertAlmostEqual(rec["rho"], info["rho"], delta=1e-6, msg=name)
            err = np.linalg.norm(value - want) / max(np.linalg.norm(want), 1e-30)
            if exact_dtype:
                self.assertLessEqual(err, 1e-4, name)  # before the cast: the published tolerance
            else:
                self.assertEqual(gdtype, fdtype, name)
                tol = {"F64": 1e-4, "F32": 1e-4, "F16": 2e-3, "BF16": 1e-2}[fdtype]  # plus one rounding to the dtype
                self.assertLessEqual(err, tol, name)
        self.assertEqual(report["summary"]["processed"], processed)
        self.assertGreaterEqual(processed, 9)

    def read_h5(self, path):
        import h5py
        out = {}
        with h5py.File(path, "r") as f:
            for key in f["tensors"]:
                d = f["tensors"][key]
                dtype = d.attrs["dtype"].decode()
                values = d[...]
                if dtype == "BF16":
                    values = f32_to_bf16_bits(d.astype("float32")[...])
                out[d.attrs["name"].decode()] = (dtype, values)
        return out

    def test_effective_rank_float64_output_all_ranks(self):
        for ranks in (1, 2, 3):
            with self.subTest(ranks=ranks):
                out = self.path("er%d" % ranks)
                report, _ = self.run_monosoup(out, "--out-dtype", "F64", ranks=ranks)
                self.check(out, report, "effective-rank", exact_dtype=True)

    def test_scalapack_grid_forced(self):
        # Every processed matrix goes through pdsyrk/pdsyevd/pdgemm on a grid of all ranks.
        for ranks in (1, 2, 3):
            with self.subTest(ranks=ranks):
                out = self.path("grid%d.h5" % ranks)
                report, _ = self.run_monosoup(out, "--out-dtype", "F64", "--scalapack-min-dim", "1", ranks=ranks)
                self.check(out, report, "effective-rank", exact_dtype=True)
                grids = [r.get("grid") for r in report["tensors"] if r["action"] == "monosoup"]
                self.assertTrue(grids and all(g == [ranks, 1] for g in grids), grids)
        out = self.path("grid-variance")
        report, _ = self.run_monosoup(out, "--mode", "variance", "--out-dtype", "F64", "--scalapack-min-dim", "1",
                                      ranks=2)
        self.check(out, report, "variance", exact_dtype=True)

    def test_variance_mode(self):
        for threshold in ("0.8", "0.5"):
            out = self.path("var" + threshold)
            report, _ = self.run_monosoup(out, "--mode", "variance", "--variance-threshold", threshold,
                                          "--out-dtype", "F64", ranks=2)
            self.check(out, report, "variance", float(threshold), exact_dtype=True)
            self.assertEqual(report["summary"]["mode"], "variance")

    def test_native_dtypes_and_formats(self):
        out = self.path("native")
        report, proc = self.run_monosoup(out, ranks=3)
        self.check(out, report, "effective-rank")
        with open(os.path.join(out, "tokenizer.json")) as f:
            self.assertEqual(f.read(), '{"t": 2}\n')
        self.assertIn("processed", proc.stderr)
        self.assertIn("missing from base", proc.stderr)  # the warning for only_in_finetuned
        h5 = self.path("native.h5")
        report, _ = self.run_monosoup(h5, ranks=2)
        self.check(h5, report, "effective-rank")

    def test_report_summary(self):
        out = self.path("summary")
        report, _ = self.run_monosoup(out)
        summary = report["summary"]
        self.assertEqual(summary["tensors"], len(self.fine))
        self.assertEqual(summary["processed"] + summary["kept"], len(self.fine))
        self.assertEqual(summary["kept_reasons"].get("not floating point"), 2)
        self.assertEqual(summary["kept_reasons"].get("zero update"), 1)
        self.assertEqual(summary["kept_reasons"].get("update below --min-rel-update"), 2)
        for rec in report["tensors"]:
            self.assertIn(rec["action"], ("monosoup", "kept"))
            self.assertEqual(list(rec["shape"]), list(np.shape(self.fine[rec["name"]][1])))


class MonoSoupBadInput(TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.base, self.fine = make_pair(seed=3)

    def write(self):
        write_model_dir(self.path("base"), self.base)
        write_model_dir(self.path("fine"), self.fine)

    def expect_failure(self, out, *extra, needles=(), ranks=None):
        proc = run_soupkit(["monosoup", "--base", self.path("base"), "--finetuned", self.path("fine"), "--out", out,
                            *extra], ranks=ranks, check=False)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertEqual(proc.stderr.count("soupkit: error:"), 1, proc.stderr)
        for needle in needles:
            self.assertIn(needle, proc.stderr)
        self.assertFalse(os.path.exists(out))
        self.assertFalse(os.path.exists(out + ".partial"))
        return proc

    def test_strict_shape_mismatch(self):
        self.write()
        self.expect_failure(self.path("o"), "--strict", needles=("reshaped", "--strict"), ranks=2)

    def test_strict_dtype_mismatch(self):
        self.fine.pop("reshaped")
        self.fine.pop("only_in_finetuned")
        dtype, values = self.base["wide.f32"]
        self.base["wide.f32"] = ("F16", values.astype(np.float16))
        self.write()
        self.expect_failure(self.path("o.h5"), "--strict", needles=("wide.f32", "F16"))

    def test_nan_in_update(self):
        dtype, values = self.fine["tall.f32"]
        values = values.copy()
        values[3, 4] = np.nan
        self.fine["tall.f32"] = (dtype, values)
        self.write()
        for ranks in (None, 3):
            self.expect_failure(self.path("o%s" % ranks), needles=("tall.f32", "NaN"), ranks=ranks)
        # The same on the ScaLAPACK path: every rank of the grid stops.
        self.expect_failure(self.path("grid.h5"), "--scalapack-min-dim", "1", needles=("tall.f32", "NaN"), ranks=2)

    def test_inf_in_base(self):
        dtype, values = self.base["attn.f16"]
        values = values.copy()
        values[0, 0] = np.inf
        self.base["attn.f16"] = (dtype, values)
        self.write()
        self.expect_failure(self.path("o.safetensors"), needles=("attn.f16", "Inf", "base"), ranks=2)

    def test_bad_options(self):
        self.write()
        self.expect_failure(self.path("o"), "--mode", "bogus", needles=("--mode",))
        self.expect_failure(self.path("o"), "--variance-threshold", "1.5", needles=("--variance-threshold",))
        proc = run_soupkit(["monosoup", "--base", self.path("nope"), "--finetuned", self.path("fine"), "--out",
                            self.path("o")], check=False)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("nope", proc.stderr)


if __name__ == "__main__":
    unittest.main()
