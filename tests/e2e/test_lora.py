"""PEFT LoRA adapters as fine-tuned models (BASE+ADAPTER, docs/formats.md).

`soupkit convert BASE+ADAPTER out.safetensors` must give, bit for bit, torch's
(W0.double() + scale * (B.double() @ A.double())).to(W0.dtype) for every
adapted tensor and the base's (or the adapter's saved) bytes for the others:
bf16/f16/f32 bases, a sharded base, rsLoRA, GPT-2 Conv1D (fan_in_fan_out),
modules_to_save and biases, .lora_A.default.weight names, adapter_model.bin.
soup, monosoup and run (a mergekit job with model: base+adapter) take
adapters on 1 and 2 ranks, checked against numpy float64; MonoSoup of an
adapter is checked against numpy's SVD of the torch-materialised update.
Hostile adapters are refused with exit 1 and one message."""
import json
import os
import shutil

import numpy as np
import torch
import yaml

import lora_fixtures as lf
import test_torch_checkpoints
from monosoup_oracle import monosoup_tensor
from soupkit_testlib import as_float64, read_checkpoint, read_safetensors, run_with_peak_rss, write_safetensors
from test_bad_input import BadInputBase
from test_soup import reference_soup


class LoraBase(BadInputBase):
    assert_bitwise = test_torch_checkpoints.TorchInputs.assert_converted


class Convert(LoraBase):
    def test_bit_exact_against_torch(self):
        cases = [  # (base dtype, adapter dtype, options)
            ("BF16", "F32", dict()),
            ("F16", "BF16", dict(rslora=True, key_style=".default")),
            ("F32", "F32", dict(alpha=16, r=8)),
            ("BF16", "BF16", dict(file_format="bin", shard=True)),
        ]
        jobs, checks = [], []
        for i, (dtype, adapter_dtype, opts) in enumerate(cases):
            opts = dict(opts)
            shard = opts.pop("shard", False)
            sd = lf.llama_base(i, dtype)
            base = lf.write_base(self.path("base%d" % i), sd, shard_bytes=4096 if shard else None)
            adapter, factors = lf.make_adapter(self.path("adapter%d" % i), sd, lf.LLAMA_MODULES, seed=10 + i,
                                               dtype=adapter_dtype, **opts)
            out = self.path("out%d.safetensors" % i)
            jobs.append((["convert", base + "+" + adapter, out], None))
            checks.append((out, lf.merged(sd, factors)))
        self.run_ok(jobs)
        for out, expected in checks:
            self.assert_bitwise(out, expected)
        # The fixture means what it says: the adapted tensors changed.
        sd0 = lf.llama_base(0, "BF16")
        got, _ = read_safetensors(checks[0][0])
        name = "model.layers.0.mlp.up_proj.weight"
        self.assertNotEqual(got[name][1].tobytes(), lf.to_raw(sd0[name])[1].tobytes())

    def test_conv1d_modules_to_save_bias_and_directory_output(self):
        sd = lf.gpt2_base(3, "F16")
        base = lf.write_base(self.path("gpt2"), sd)
        modules = ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"]
        adapter, factors = lf.make_adapter(self.path("gpt2-lora"), sd, modules, r=3, alpha=6, fan_in_fan_out=True)
        sd2 = lf.llama_base(4, "BF16")
        base2 = lf.write_base(self.path("llama"), sd2)
        whole = {"score.weight": torch.randn(3, 32, dtype=torch.float32),  # modules_to_save keeps its dtype
                 "model.layers.0.self_attn.q_proj.bias": torch.randn(32).to(torch.bfloat16)}  # bias: all
        adapter2, factors2 = lf.make_adapter(self.path("llama-lora"), sd2, lf.LLAMA_MODULES[:3], whole=whole,
                                             extra_config={"modules_to_save": ["score"], "bias": "all"})
        out1, out2 = self.path("gpt2-out.safetensors"), self.path("llama-out")
        self.run_ok([(["convert", base + "+" + adapter, out1], None), (["convert", base2 + "+" + adapter2, out2], 2)])
        self.assert_bitwise(out1, lf.merged(sd, factors, fan_in_fan_out=True))
        self.assert_bitwise(out2, lf.merged(sd2, factors2, whole=whole))
        self.assertTrue(os.path.exists(os.path.join(out2, "config.json")))  # the base's carried files

    def test_adapted_tensor_in_row_blocks_with_bounded_memory(self):
        # A 64 MiB float32 weight with an r = 8 adapter, under a 16 MiB budget: read in row blocks, never the
        # whole product (whose float64 form alone would be 128 MiB).
        n = 4096
        g = torch.Generator().manual_seed(3)
        sd = {"big.weight": torch.randn(n, n, generator=g), "small.weight": torch.ones(4, 4)}
        base = lf.write_base(self.path("big"), sd)
        adapter, factors = lf.make_adapter(self.path("big-lora"), sd, ["big"], r=8)
        out = self.path("big.safetensors")
        proc, peak = run_with_peak_rss(["convert", base + "+" + adapter, out, "--memory-budget", "16MB"], timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assert_bitwise(out, lf.merged(sd, factors))
        print("peak RSS converting a 64 MiB adapted tensor under a 16 MiB budget: %.1f MiB" % (peak / 2 ** 20))
        if "ASAN_OPTIONS" not in os.environ:  # the sanitizer build's shadow memory is not soupkit's
            self.assertLess(peak, 56 * 2 ** 20)

    def test_inspect_lists_the_base_tensors(self):
        sd = lf.llama_base(5, "BF16")
        base = lf.write_base(self.path("b"), sd)
        adapter, _ = lf.make_adapter(self.path("a"), sd, lf.LLAMA_MODULES[:2])
        proc = self.run_ok([(["inspect", base + "+" + adapter, "--json"], None)])[0]
        names = sorted(t["name"] for t in json.loads(proc.stdout)["tensors"])
        self.assertEqual(names, sorted(sd))


class Methods(LoraBase):
    def test_soup_of_adapters_on_one_and_two_ranks(self):
        sd = lf.llama_base(6, "F32")
        base = lf.write_base(self.path("base"), sd)
        refs, models = [], []
        for i in range(2):
            adapter, factors = lf.make_adapter(self.path("a%d" % i), sd, lf.LLAMA_MODULES, seed=20 + i)
            refs.append(base + "+" + adapter)
            models.append(lf.merged(sd, factors))
        expected = reference_soup(models)
        outs = [self.path("soup%d.safetensors" % r) for r in (1, 2)]
        self.run_ok([(["soup", "uniform", *refs, "--out", outs[0]], None), (["soup", "uniform", *refs, "--out", outs[1]], 2)])
        for out in outs:
            got, _ = read_safetensors(out)
            for name, (dtype, raw) in expected.items():
                np.testing.assert_array_equal(got[name][1], raw, err_msg=name)

    def monosoup_expected(self, sd, factors):
        """numpy float64 MonoSoup of the torch-materialised W1 (in float64: the exact update)."""
        return {name: monosoup_tensor(w0, w1) for name, w0, w1 in lf.exact_updates(sd, factors)}

    def check_monosoup(self, out, report, sd, expected, tol, route=None, grid=False):
        got, _ = read_checkpoint(out)
        with open(report) as f:
            records = {r["name"]: r for r in json.load(f)["tensors"]}
        for name, (want, info) in expected.items():
            self.assertEqual(records[name]["action"], "monosoup", name)
            self.assertEqual(records[name].get("route"), route, name)
            self.assertEqual("grid" in records[name], grid, name)
            self.assertEqual(records[name]["k"], info["k"], name)
            self.assertAlmostEqual(records[name]["lambda_high"], info["lambda_high"], delta=1e-6, msg=name)
            value = as_float64(*got[name])
            err = np.linalg.norm(value - want) / np.linalg.norm(want)
            self.assertLessEqual(err, tol, name)
        for name, w0 in sd.items():  # the rest: the base's bytes
            if name not in expected:
                self.assertEqual(got[name][1].tobytes(), lf.to_raw(w0)[1].tobytes(), name)
                # Matrices the adapter does not touch are known unchanged at
                # planning, not found to be a "zero update" after an SVD.
                if w0.dim() == 2:
                    self.assertEqual((records[name]["action"], records[name]["reason"]),
                                     ("kept", "not changed by the adapter"), name)

    def test_monosoup_of_an_adapter_alone_and_as_base_plus_adapter(self):
        sd = lf.llama_base(7, "F32", hidden=48, inter=64)
        base = lf.write_base(self.path("base"), sd)
        adapter, factors = lf.make_adapter(self.path("lora"), sd, lf.LLAMA_MODULES, r=6, seed=30)
        expected = self.monosoup_expected(sd, factors)
        jobs, checks = [], []
        # The low-rank route (adapter alone, BASE+ADAPTER), and the dense
        # route through the adapter reader's row blocks on a 2-rank grid.
        for ranks, finetuned, extra, route, grid in [
                (None, adapter, [], "low-rank", False), (2, base + "+" + adapter, [], "low-rank", False),
                (2, adapter, ["--materialise-adapter", "--scalapack-min-dim", "1"], None, True),
                (None, adapter, ["--materialise-adapter"], None, False)]:
            out, report = self.path("ms%d.safetensors" % len(jobs)), self.path("ms%d.json" % len(jobs))
            jobs.append((["monosoup", "--base", base, "--finetuned", finetuned, "--out", out, "--report", report,
                          *extra], ranks))
            checks.append((out, report, route, grid))
        jobs.append((["monosoup", "--base", base, "--finetuned", adapter, "--out", self.path("dry.safetensors"),
                      "--dry-run"], 2))
        plan = self.run_ok(jobs)[-1].stdout
        for out, report, route, grid in checks:
            self.check_monosoup(out, report, sd, expected, 1e-4, route, grid)
        # --dry-run labels each tensor as the run treats it.
        labels = {}
        for line in plan.splitlines():
            for name in sd:
                if (" %s " % name) in line or line.rstrip().endswith(" " + name):
                    labels[name] = line
        for name, w0 in sd.items():
            want = ("reweighted (low-rank update)" if name in expected else
                    "kept: not changed by the adapter" if w0.dim() == 2 else "kept: fewer than 2 dimensions")
            self.assertIn(want, labels.get(name, ""), "%s\n%s" % (name, plan))
        # Both routes within the tolerance of each other, not only of numpy.
        low, _ = read_checkpoint(checks[0][0])
        dense, _ = read_checkpoint(checks[3][0])
        for name in expected:
            a, b = as_float64(*low[name]), as_float64(*dense[name])
            self.assertLessEqual(np.linalg.norm(a - b) / np.linalg.norm(b), 1e-4, name)

    def test_low_rank_route_on_a_bf16_base_and_in_variance_mode(self):
        """On a bf16 base the low-rank route is MonoSoup of the exact update: it equals soupkit's dense route
        on W1 materialised in float32 (by torch), and numpy's; variance mode with a threshold the rank-r
        spectrum cannot reach takes k = min(m, n) (all of dW)."""
        sd = lf.llama_base(11, "BF16", hidden=48, inter=64)
        base = lf.write_base(self.path("base"), sd)
        adapter, factors = lf.make_adapter(self.path("lora"), sd, lf.LLAMA_MODULES, r=5, seed=50, dtype="BF16")
        w1 = {name: lf.to_raw(w0) for name, w0 in sd.items()}
        for name, _, w1d in lf.exact_updates(sd, factors):
            w1[name] = ("F32", w1d.astype(np.float32))
        w1_path = self.path("w1-f32.safetensors")
        write_safetensors(w1_path, w1)
        runs = {"low": [adapter, []], "dense": [w1_path, []],
                "var": [adapter, ["--mode", "variance", "--variance-threshold", "1"]]}
        jobs = []
        for tag, (finetuned, extra) in runs.items():
            jobs.append((["monosoup", "--base", base, "--finetuned", finetuned, "--out", self.path(tag + ".safetensors"),
                          "--out-dtype", "F64", "--report", self.path(tag + ".json"), *extra], 2 if tag == "low" else None))
        self.run_ok(jobs)
        low, _ = read_checkpoint(self.path("low.safetensors"))
        dense, _ = read_checkpoint(self.path("dense.safetensors"))
        var, _ = read_checkpoint(self.path("var.safetensors"))
        with open(self.path("var.json")) as f:
            var_records = {r["name"]: r for r in json.load(f)["tensors"]}
        checked = 0
        for name, w0d, w1d in lf.exact_updates(sd, factors):
            want, _ = monosoup_tensor(w0d, w1d)
            for got in (low, dense):
                value = as_float64(*got[name])
                self.assertLessEqual(np.linalg.norm(value - want) / np.linalg.norm(want), 1e-4, name)
            want_var, info = monosoup_tensor(w0d, w1d, mode="variance", variance_threshold=1.0)
            self.assertEqual(var_records[name]["k"], info["k"], name)
            self.assertEqual(info["k"], min(w0d.shape), name)
            value = as_float64(*var[name])
            self.assertLessEqual(np.linalg.norm(value - want_var) / np.linalg.norm(want_var), 1e-4, name)
            checked += 1
        self.assertEqual(checked, len(lf.LLAMA_MODULES))

    def test_run_mergekit_job_with_a_lora_sum(self):
        sd = lf.llama_base(8, "BF16")
        base = lf.write_base(self.path("base"), sd)
        adapter, factors = lf.make_adapter(self.path("lora"), sd, lf.LLAMA_MODULES, seed=40)
        job = {"merge_method": "linear", "dtype": "float32",
               "models": [{"model": base + "+" + adapter, "parameters": {"weight": 0.25}},
                          {"model": base, "parameters": {"weight": 0.75}}]}
        path = self.path("job.yml")
        with open(path, "w") as f:
            yaml.safe_dump(job, f)
        outs = [self.path("run%d" % r) for r in (1, 2)]
        self.run_ok([(["run", path, outs[0]], None), (["run", path, outs[1]], 2)])
        w1 = lf.merged(sd, factors)
        for out in outs:
            got, _ = read_checkpoint(out)
            for name, w0 in sd.items():
                want = 0.25 * as_float64(*w1[name]) + 0.75 * w0.double().numpy()
                np.testing.assert_allclose(as_float64(*got[name]), want, rtol=1e-6, atol=1e-7, err_msg=name)


class Hostile(LoraBase):
    def setUp(self):
        super().setUp()
        self.sd = lf.llama_base(9, "BF16")
        self.base = lf.write_base(self.path("base"), self.sd)

    def adapter(self, name, **kw):
        return lf.make_adapter(self.path(name), self.sd, kw.pop("modules", lf.LLAMA_MODULES[:2]), **kw)[0]

    def rewrite(self, adapter, edit):
        """Edits the adapter's tensors: edit(dict name -> (dtype, raw)) -> dict."""
        f = os.path.join(adapter, "adapter_model.safetensors")
        tensors, _ = read_safetensors(f)
        write_safetensors(f, edit(dict(tensors)))

    def test_refused_with_one_message(self):
        cases = []
        a = self.adapter("shape")
        key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        self.rewrite(a, lambda t: {**t, key: ("F32", np.zeros((4, 31), np.float32))})
        cases.append((a, ["q_proj", "do not fit"]))
        a = self.adapter("rank", extra_config={"r": 5})
        cases.append((a, ["layers.0.self_attn", "r = 5"]))
        a = self.adapter("huge", extra_config={"r": 10 ** 15})
        cases.append((a, ["adapter_config.json", "r"]))
        a = self.adapter("unknown")
        self.rewrite(a, lambda t: {**t, "base_model.model.model.layers.9.mlp.up_proj.lora_A.weight":
                                   ("F32", np.zeros((4, 32), np.float32))})
        cases.append((a, ["layers.9.mlp.up_proj", "not in the base"]))
        a = self.adapter("dora", extra_config={"use_dora": True})
        cases.append((a, ["use_dora", "DoRA"]))
        a = self.adapter("pattern", extra_config={"rank_pattern": {"layers\\.0.*": 8}})
        cases.append((a, ["rank_pattern", "regular expression"]))
        a = self.adapter("target", extra_config={"target_modules": ["v_proj"]})
        cases.append((a, ["layers.0.self_attn", "target_modules"]))
        a = self.adapter("half")
        self.rewrite(a, lambda t: {k: v for k, v in t.items() if "k_proj.lora_B" not in k})
        cases.append((a, ["k_proj", "lora_A without lora_B"]))
        a = self.adapter("ia3", extra_config={"peft_type": "IA3"})
        cases.append((a, ["peft_type", "LoRA adapters only"]))
        a = self.adapter("embedding")
        self.rewrite(a, lambda t: {**t, "base_model.model.model.embed_tokens.lora_embedding_A":
                                   ("F32", np.zeros((4, 40), np.float32))})
        cases.append((a, ["lora_embedding_A", "embedding layer"]))
        a = self.adapter("prefix")
        self.rewrite(a, lambda t: {k.replace("base_model.model.", "model.", 1): v for k, v in t.items()})
        cases.append((a, ["model.model.layers.0", "base_model.model."]))
        a = self.adapter("whole", whole={"score.weight": torch.zeros(2, 32)})
        cases.append((a, ["score.weight", "has shape \\[2, 32\\]"]))
        a = self.adapter("nonfinite", extra_config={"lora_alpha": "8"})
        cases.append((a, ["lora_alpha", "not a finite number"]))
        jobs = []
        for i, (adapter, _) in enumerate(cases):
            jobs.append((["convert", self.base + "+" + adapter, self.path(os.path.basename(adapter) + ".safetensors")],
                         2 if i % 3 == 0 else None))
        jobs.append((["convert", cases[0][0], self.path("alone.safetensors")], None))
        jobs.append((["convert", self.base + "+" + self.path("nothing"), self.path("missing.safetensors")], None))
        procs = self.run_many(jobs)
        for (adapter, words), proc in zip(cases, procs):
            self.assert_failed(proc, words[:1], words[1:])
            self.assert_no_output(self.path(os.path.basename(adapter) + ".safetensors"))
        self.assert_failed(procs[-2], [cases[0][0]], ["BASE\\+ADAPTER"])
        self.assert_failed(procs[-1], ["nothing"], ["not a LoRA adapter directory"])

    def test_monosoup_refuses_non_finite_factors(self):
        a = self.adapter("nan")
        key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
        bad = np.full((32, 4), np.nan, np.float32)
        self.rewrite(a, lambda t: {**t, key: ("F32", bad)})
        outs = [self.path("nan%d.safetensors" % i) for i in range(2)]
        procs = self.run_many([(["monosoup", "--base", self.base, "--finetuned", a, "--out", outs[0]], None),
                               (["monosoup", "--base", self.base, "--finetuned", a, "--out", outs[1]], 2)])
        for proc, out in zip(procs, outs):
            self.assert_failed(proc, ["layers.0.self_attn.q_proj.weight"], ["NaN or Inf in the LoRA factors"])
            self.assert_no_output(out)

    def test_a_path_with_a_plus_stays_a_path(self):
        plain = self.path("model+v2")
        shutil.copytree(self.base, plain)
        out = self.path("copy.safetensors")
        self.run_ok([(["convert", plain, out], None)])
        self.assert_bitwise(out, {k: lf.to_raw(v) for k, v in self.sd.items()})
