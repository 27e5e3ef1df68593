"""mergekit's generalized task arithmetic family (dare_linear, dare_ties,
breadcrumbs, breadcrumbs_ties, della_linear, della; ties and task_arithmetic
with every parameter) and sce, run from mergekit configurations, against
oracle_gta.py: an independent numpy float64 evaluation of mergekit's
definitions (docs/merge_methods_spec.md).

The random methods' keep masks come from soupkit's documented counter-based
stream, which oracle_gta reimplements in numpy (so the masks are predicted
from the documentation, not read back from soupkit); everything after the
masks is mergekit's arithmetic, compared bit for bit. Independently of that
reimplementation, the masks soupkit writes (read back from the output where
the task vector is nonzero) keep the expected fraction within 5 sigma of a
binomial, and the survivors are rescaled by exactly the L1 ratio.

Also: bf16/f16/f32, gradients and filters on parameters, 1/2/3 ranks
byte-identical, the same seed twice identical and another seed different, a
tensor larger than --memory-budget giving the same bytes, the command line
giving the job's bytes, refusals naming tensor and parameter, --help.
"""
import json
import os
import shutil
import subprocess
import tempfile
import unittest
from concurrent.futures import ThreadPoolExecutor

import yaml

import numpy as np

import mergekit_cases as mc
import oracle_gta
from soupkit_testlib import MPIRUN, SOUPKIT, as_float64, read_checkpoint, run_soupkit, write_model_dir

CONFIG_JSON = json.dumps({"torch_dtype": "bfloat16", "num_hidden_layers": 4})
NEW_METHODS = ["dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della_linear", "della", "sce"]
COMMANDS = {"dare_linear": "dare-linear", "dare_ties": "dare-ties", "breadcrumbs": "breadcrumbs",
            "breadcrumbs_ties": "breadcrumbs-ties", "della_linear": "della-linear", "della": "della", "sce": "sce"}


def models_with(extra_a=None, extra_b=None, extra_c=None):
    """Three fine-tunes: a gradient on b's weight and a filter on c's density."""
    return [
        {"model": "a", "parameters": {"weight": 0.6, "density": 0.5, **(extra_a or {})}},
        {"model": "b", "parameters": {"weight": [0.3, 1.0], "density": 0.7, **(extra_b or {})}},
        {"model": "c", "parameters": {"weight": -0.2, "density": [{"filter": "mlp", "value": 0.3}, {"value": 0.8}],
                                      **(extra_c or {})}},
    ]


def config(method, **parameters):
    """A configuration of `method` on the shared models (sce takes no per-model parameters)."""
    if method == "sce":
        return {"merge_method": "sce", "base_model": "base", "models": ["a", "b", "c"],
                "parameters": {"select_topk": [{"filter": "mlp", "value": 0.3}, {"value": 0.6}], **parameters}}
    extra = {"breadcrumbs": ({"gamma": 0.05}, None), "breadcrumbs_ties": (None, {"gamma": [0.02, 0.1]}),
             "della": ({"epsilon": 0.1}, None), "della_linear": (None, {"epsilon": [0.05, 0.2]})}.get(method, (None, None))
    return {"merge_method": method, "base_model": "base", "models": models_with(*extra), "parameters": parameters}


class Models:
    """Shared models in a temporary directory: per dtype, a base and three fine-tunes of different spreads."""
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="soupkit-gta-")
        self.paths = {}

    def of(self, dtype):
        if dtype not in self.paths:
            base = mc.llama_like(0, dtype)
            models = {"base": base, "a": mc.llama_like(1, dtype, base=base),
                      "b": mc.llama_like(2, dtype, base=base, spread=0.2),
                      "c": mc.llama_like(3, dtype, base=base, spread=0.01)}
            self.paths[dtype] = mc.write_models(os.path.join(self.dir, dtype), models, config_json=CONFIG_JSON)
        return self.paths[dtype]

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


MODELS = None


def setUpModule():
    global MODELS
    MODELS = Models()


def tearDownModule():
    MODELS.close()


class Job:
    """One `soupkit run CONFIG OUT` of a configuration on the shared models (or on `paths`)."""
    def __init__(self, cfg, dtype="BF16", name="out", ranks=None, extra=(), paths=None):
        self.cfg = mc.localise(cfg, paths if paths is not None else MODELS.of(dtype))
        self.name, self.ranks, self.extra = name, ranks, list(extra)
        self.out = self.proc = None

    def expected(self):
        return mc.expected(self.cfg, self.cfg)


class GtaCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="soupkit-gta-run-", dir=MODELS.dir)
        oracle_gta.random_seed = 0

    def run_jobs(self, jobs, check=True):
        """Runs the jobs concurrently (most of a run is MPI start-up), each with its own TMPDIR (concurrent
        Open MPI start-ups race for the session directory otherwise); returns them with out and proc set."""
        def one(job):
            config_path = os.path.join(self.tmp, job.name + ".yml")
            with open(config_path, "w") as f:
                yaml.safe_dump(job.cfg, f, sort_keys=False)
            job.out = os.path.join(self.tmp, job.name + ".safetensors")
            tmpdir = tempfile.mkdtemp(prefix="mpi-", dir=self.tmp)
            cmd = ([*MPIRUN, "-n", str(job.ranks)] if job.ranks else []) + [
                SOUPKIT, "run", config_path, job.out, "--overwrite", *job.extra]
            job.proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                                      env=dict(os.environ, TMPDIR=tmpdir))
            shutil.rmtree(tmpdir, ignore_errors=True)
            return job
        names = [j.name for j in jobs]
        self.assertEqual(len(set(names)), len(names), "job names must differ")
        with ThreadPoolExecutor(max_workers=6) as pool:
            done = list(pool.map(one, jobs))
        if check:
            for job in done:
                self.assertEqual(job.proc.returncode, 0, "%s\n%s" % (" ".join(job.proc.args), job.proc.stderr))
        return done

    def bytes_of(self, path):
        with open(path, "rb") as f:
            return f.read()

    def tensor_bytes(self, path):
        """The tensors' data only (the header's provenance names the options given)."""
        return {name: (dtype, values.tobytes()) for name, (dtype, values) in read_checkpoint(path)[0].items()}


class AgainstTheOracle(GtaCase):
    def test_every_method_in_every_dtype(self):
        jobs = []
        for d, dtype in enumerate(("BF16", "F16", "F32")):
            for i, method in enumerate(NEW_METHODS):
                cfg = config(method)
                if (i + d) % 3 == 1:
                    cfg["dtype"] = "float32"
                if (i + d) % 3 == 2:
                    cfg["out_dtype"] = "float16"
                jobs.append(Job(cfg, dtype, name=f"{method}-{dtype}"))
        # Parameters away from their defaults, one dtype each.
        variants = [("ties", {"rescale": True}), ("dare_ties", {"rescale": False, "normalize": True, "lambda": 0.7}),
                    ("dare_linear", {"normalize": True, "lambda": [1.0, 1.4]}), ("breadcrumbs", {"rescale": True}),
                    ("della", {"rescale": False, "int8_mask": True}), ("della_linear", {"normalize": True}),
                    ("sce", {"int8_mask": True, "select_topk": 1.0})]
        for i, (method, parameters) in enumerate(variants):
            jobs.append(Job(config(method, **parameters), ("BF16", "F16", "F32")[i % 3], name=f"{method}-variant"))
        for job in self.run_jobs(jobs):
            with self.subTest(job=job.name):
                mc.assert_matches(self, job.out, job.expected())
        # The parameters matter: each variant's output is not its method's default output.
        by_name = {job.name: job for job in jobs}
        for i, (method, _) in enumerate(variants):
            dtype = ("BF16", "F16", "F32")[i % 3]
            default = Job(config(method), dtype, name="unused")
            with self.subTest(method=method):
                self.assertNotEqual(read_checkpoint(by_name[f"{method}-variant"].out)[0]["lm_head.weight"][1].tobytes(),
                                    default.expected()["lm_head.weight"][1].tobytes())

    def test_ties_in_magnitude_only_the_base_and_task_arithmetic_extras(self):
        # Deltas from a few levels: many equal magnitudes at every threshold (the lower flat index wins).
        rng = np.random.default_rng(9)
        levels = np.array([-0.5, -0.25, -0.125, 0.0, 0.125, 0.25, 0.5])
        b = rng.standard_normal((64, 40)).astype(np.float32)
        paths = {"base": os.path.join(self.tmp, "lv-base")}
        write_model_dir(paths["base"], {"w": ("F32", b), "v": ("F32", b[0].copy())})
        for k in "abc":
            paths[k] = os.path.join(self.tmp, "lv-" + k)
            write_model_dir(paths[k], {"w": ("F32", b + rng.choice(levels, size=b.shape).astype(np.float32)),
                                       "v": ("F32", b[0] + rng.choice(levels, size=40).astype(np.float32))})
        jobs = [Job(cfg, paths=paths, name=f"levels-{i}") for i, cfg in enumerate([
            config("breadcrumbs", rescale=True), config("breadcrumbs_ties"), config("sce"), config("della"),
            config("sce", select_topk=0.05)])]
        # No task vector: mergekit returns the base.
        only_base = [Job({"merge_method": m, "base_model": "base", "models": ["base"]}, "F16", name="only-base-" + m)
                     for m in ("dare_ties", "sce")]
        # task_arithmetic takes density, rescale and int8_mask, with no effect.
        ta = [Job(config("task_arithmetic", **{"lambda": 0.8}), name="ta-plain"),
              Job(config("task_arithmetic", **{"lambda": 0.8, "density": 0.1, "rescale": True, "int8_mask": True}),
                  name="ta-given")]
        self.run_jobs(jobs + only_base + ta)
        for job in jobs + ta:
            with self.subTest(job=job.name):
                mc.assert_matches(self, job.out, job.expected())
        # The same tensors, byte for byte (the headers differ: the output's
        # provenance names the parameters given).
        self.assertEqual(self.tensor_bytes(ta[0].out), self.tensor_bytes(ta[1].out))
        for job in only_base:
            got = read_checkpoint(job.out)[0]
            for name, (dtype, raw) in read_checkpoint(job.cfg["base_model"])[0].items():
                self.assertTrue(np.array_equal(got[name][1].view(np.uint8), np.asarray(raw).view(np.uint8)), name)


class Reproducibility(GtaCase):
    def test_ranks_runs_and_seeds(self):
        seeded = ["--random-seed", "7"]
        jobs = [Job(config(m), name=f"{m}-r{r}", ranks=r, extra=seeded if m != "sce" else [])
                for m in ("dare_ties", "della", "sce") for r in (None, 2, 3)]
        other = [Job(config(m), name=m + "-s8", extra=["--random-seed", "8"]) for m in ("dare_ties", "della")]
        self.run_jobs(jobs + other)
        for m in ("dare_ties", "della", "sce"):
            blobs = [self.bytes_of(j.out) for j in jobs if j.name.startswith(m + "-r")]
            with self.subTest(method=m):
                self.assertEqual(blobs[0], blobs[1], "1 and 2 ranks differ")
                self.assertEqual(blobs[0], blobs[2], "1 and 3 ranks differ")
        for job in other:
            with self.subTest(method=job.name):
                first = next(j for j in jobs if j.name == job.name.replace("-s8", "-rNone"))
                self.assertNotEqual(self.tensor_bytes(first.out), self.tensor_bytes(job.out),
                                    "another seed, the same tensors")
                oracle_gta.random_seed = 7
                mc.assert_matches(self, first.out, first.expected())
                oracle_gta.random_seed = 8
                mc.assert_matches(self, job.out, job.expected())

    def test_a_tensor_larger_than_the_budget(self):
        """2.3 MB tensors (rows_scale) under a 2 MB budget: many row blocks, the same bytes."""
        d = os.path.join(self.tmp, "big")
        base = mc.llama_like(0, "F32", layers=1, rows_scale=500)
        paths = mc.write_models(d, {"base": base, "a": mc.llama_like(1, "F32", layers=1, rows_scale=500, base=base),
                                    "b": mc.llama_like(2, "F32", layers=1, rows_scale=500, base=base, spread=0.3)})
        self.assertGreater(os.path.getsize(os.path.join(paths["a"], "model.safetensors")), 4 << 20)
        jobs = []
        for method in ("dare_ties", "breadcrumbs_ties", "della", "sce"):
            cfg = config(method, rescale=True) if method != "sce" else config("sce")
            cfg["models"] = [m for m in cfg["models"] if (m["model"] if isinstance(m, dict) else m) in "ab"]
            jobs += [Job(cfg, paths=paths, name=f"{method}-{budget}", extra=["--memory-budget", budget])
                     for budget in ("2MB", "1GB")]
        self.run_jobs(jobs)
        for small, large in zip(jobs[::2], jobs[1::2]):
            with self.subTest(job=small.name):
                self.assertEqual(self.bytes_of(small.out), self.bytes_of(large.out))
                if small.name.startswith(("breadcrumbs", "sce")):
                    mc.assert_matches(self, small.out, small.expected())


class Masks(GtaCase):
    """One model, weight 1, a zero base, float64 output: out = t exactly, so soupkit's masks are read back."""
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(4)
        self.shape = (400, 256)
        self.delta = rng.standard_normal(self.shape).astype(np.float32)
        self.delta[::7, ::5] = 0  # some exact zeros: their drops are invisible
        self.p = {"base": os.path.join(self.tmp, "zero"), "m": os.path.join(self.tmp, "m"),
                  "n": os.path.join(self.tmp, "n")}
        write_model_dir(self.p["base"], {"w": ("F32", np.zeros(self.shape, np.float32))})
        write_model_dir(self.p["m"], {"w": ("F32", self.delta)})
        write_model_dir(self.p["n"], {"w": ("F32", -self.delta)})

    def job(self, method, density, extra=None, rescale=False, models=("m",)):
        cfg = {"merge_method": method, "base_model": self.p["base"],
               "models": [{"model": self.p[m], "parameters": {"weight": 1.0, "density": density, **(extra or {})}}
                          for m in models],
               "parameters": {"rescale": rescale}, "out_dtype": "float64"}
        return Job(cfg, paths={}, name=f"{method}-{density}-{rescale}-{len(models)}")

    @staticmethod
    def values(job):
        return as_float64(*read_checkpoint(job.out)[0]["w"])

    def assert_binomial(self, kept, trials, p_sum, p_var, what):
        sigma = np.sqrt(p_var)
        self.assertLess(abs(kept - p_sum), 5 * sigma, f"{what}: kept {kept} of {trials}, expected {p_sum:.1f} "
                        f"+/- {sigma:.1f}")

    def test_dare_and_della_masks(self):
        d = self.delta.astype(np.float64)
        live = d != 0
        n = int(live.sum())
        densities = (0.1, 0.9)
        dare = [(self.job("dare_linear", p), self.job("dare_linear", p, rescale=True)) for p in densities]
        two = self.job("dare_linear", 0.5, models=("m", "n"))
        della = (self.job("della_linear", 0.5, {"epsilon": 0.3}), self.job("della_linear", 0.5, {"epsilon": 0.3},
                                                                           rescale=True))
        self.run_jobs([j for pair in dare for j in pair] + [two, *della])

        for density, (plain, scaled) in zip(densities, dare):
            with self.subTest(density=density):
                out = self.values(plain)
                kept = (out != 0) & live
                self.assertTrue(np.array_equal(out[kept], d[kept]), "survivors changed without rescale")
                self.assert_binomial(int(kept.sum()), n, n * density, n * density * (1 - density), "kept")
                # The documented stream, reimplemented in numpy, predicts the mask exactly.
                predicted = oracle_gta.uniforms(0, "w", 0, d.size).reshape(self.shape) < density
                self.assertTrue(np.array_equal(kept, predicted & live))
                out = self.values(scaled)
                factor = oracle_gta.flat_sum(np.abs(d)) / oracle_gta.flat_sum(np.abs(d * kept))
                self.assertTrue(np.array_equal(out[kept], d[kept] * factor), "survivors not rescaled by the L1 ratio")
                self.assertFalse(out[live & ~kept].any())
                self.assertAlmostEqual(np.abs(out).sum() / np.abs(d).sum(), 1.0, places=12)

        # Models 0 and 1 (m and n = -m) draw from different streams: their masks overlap as p^2, and
        # out = d (keep_0 - keep_1).
        ua = oracle_gta.uniforms(0, "w", 0, d.size).reshape(self.shape) < 0.5
        ub = oracle_gta.uniforms(0, "w", 1, d.size).reshape(self.shape) < 0.5
        self.assert_binomial(int((ua & ub & live).sum()), n, n * 0.25, n * 0.25 * 0.75, "overlap of two masks")
        self.assertTrue(np.array_equal(self.values(two), d * (ua.astype(float) - ub.astype(float))))

        # DELLA: expected counts from the probabilities alone (not the stream), overall and per magnitude third.
        out = self.values(della[0])
        kept = (out != 0) & live
        p = oracle_gta.della_probabilities(d, 0.5, 0.3)
        third = np.quantile(np.abs(d[live]), [1 / 3, 2 / 3])
        bands = {"all": live, "small": live & (np.abs(d) < third[0]), "large": live & (np.abs(d) >= third[1])}
        for band, where in bands.items():
            self.assert_binomial(int(kept[where].sum()), int(where.sum()), p[where].sum(),
                                 (p[where] * (1 - p[where])).sum(), "della " + band)
        self.assertLess(kept[bands["small"]].mean() + 0.2, kept[bands["large"]].mean())
        out = self.values(della[1])
        factor = oracle_gta.flat_sum(np.abs(d)) / oracle_gta.flat_sum(np.abs(d * kept))
        self.assertTrue(np.array_equal(out[kept], d[kept] * factor))


class Refusals(GtaCase):
    def test_bad_parameters_are_named(self):
        della = config("della")
        della["models"][0]["parameters"]["epsilon"] = 0.6
        dare = config("dare_ties")
        dare["models"][1]["parameters"]["density"] = [{"filter": "q_proj", "value": -0.1}, {"value": 0.5}]
        ties = config("ties")
        ties["models"][0]["parameters"]["density"] = 0.001
        cases = [
            (della, [], ["epsilon 0.6 with density 0.5", "models[0]", "tensor '"]),
            (dare, [], ["density -0.1", "q_proj", "models[1]"]),
            (ties, [], ["keeps no element", "tensor '", "density 0.001"]),
            (config("sce", weight=1.0), [], ["merge_method sce has no parameter 'weight'"]),
            (config("dare_linear", random_seed=3), [], ["random_seed: not a mergekit parameter", "--random-seed"]),
            (config("breadcrumbs", epsilon=0.1), [], ["merge_method breadcrumbs has no parameter 'epsilon'"]),
            (config("dare_ties"), ["--random-seed", "-1"], ["--random-seed: '-1' is not a whole number"]),
        ]
        # A column: della's rows of one element have no rank range (mergekit: 0/0, then torch.bernoulli fails).
        col = os.path.join(self.tmp, "col")
        b = np.random.default_rng(2).standard_normal((16, 1)).astype(np.float32)
        paths = mc.write_models(col, {"base": {"w": ("F32", b)}, "a": {"w": ("F32", b + 1)}})
        column = Job({"merge_method": "della", "base_model": "base",
                      "models": [{"model": "a", "parameters": {"weight": 1, "density": 0.5}}]}, paths=paths,
                     name="refused-column")
        jobs = [Job(cfg, name=f"refused-{i}", extra=extra) for i, (cfg, extra, _) in enumerate(cases)]
        self.run_jobs(jobs + [column], check=False)
        for job, fragments in zip(jobs + [column], [f for _, _, f in cases] + [["tensor 'w'", "a row of 1 has no "
                                                                                "rank range"]]):
            with self.subTest(job=job.name):
                self.assertEqual(job.proc.returncode, 1, job.proc.stderr)
                for f in fragments:
                    self.assertIn(f, job.proc.stderr)
                self.assertFalse(os.path.exists(job.out))

    def test_breadcrumbs_warns_when_nothing_is_kept(self):
        # Norms of 24 elements: int(0.01 x 24) = 0 outliers, and mergekit's slice indices[n_bot:-0] is empty.
        job, = self.run_jobs([Job(config("breadcrumbs"), name="warned")])
        self.assertIn("tensor 'model.norm.weight'", job.proc.stderr)
        self.assertIn("keep no element", job.proc.stderr)
        mc.assert_matches(self, job.out, job.expected())


class Commands(GtaCase):
    def test_help_and_the_command_line(self):
        def helps(command):
            return run_soupkit([command, "--help"]) if command else run_soupkit(["--help"])
        paths = MODELS.of("BF16")
        job = Job({"merge_method": "dare_ties", "base_model": "base",
                   "models": [{"model": "a", "parameters": {"weight": 0.6, "density": 0.4}},
                              {"model": "b", "parameters": {"weight": 1.1, "density": 0.8}}],
                   "parameters": {"lambda": 0.9}}, name="job", extra=["--random-seed", "11"])
        cli_out = os.path.join(self.tmp, "cli.safetensors")
        cli = ["dare-ties", "--base", paths["base"], "--out", cli_out, "--weights", "0.6,1.1", "--densities",
               "0.4,0.8", "--lambda", "0.9", "--random-seed", "11", paths["a"], paths["b"]]
        with ThreadPoolExecutor(max_workers=4) as pool:
            texts = dict(zip([None, *COMMANDS], pool.map(helps, [None, *COMMANDS.values()])))
            ran = pool.submit(run_soupkit, cli)
            self.run_jobs([job])
            ran.result()
        self.assertEqual(self.bytes_of(job.out), self.bytes_of(cli_out))
        for method, command in COMMANDS.items():
            with self.subTest(command=command):
                self.assertIn(command, texts[None].stdout)
                text = " ".join(texts[method].stdout.split())
                self.assertIn(f"usage: soupkit {command} --base BASE --out OUT", text)
                if method == "sce":
                    self.assertIn("--select-topk", text)
                    continue
                for option in ("--weights", "--densities", "--lambda", "--normalize", "--rescale", "--int8-mask"):
                    self.assertIn(option, text)
                self.assertEqual("--random-seed" in text, method.startswith(("dare", "della")))
                self.assertEqual("--gammas" in text, method.startswith("breadcrumbs"))
                self.assertEqual("--epsilons" in text, method.startswith("della"))


class ExampleJob(GtaCase):
    def test_the_example_job(self):
        jobs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "jobs")
        run_soupkit(["example", "demo"], cwd=self.tmp)
        run_soupkit(["run", os.path.join(jobs, "dare-ties.yaml"), "--random-seed", "7"], ranks=2, cwd=self.tmp)
        with open(os.path.join(jobs, "dare-ties.yaml")) as f:
            cfg = yaml.safe_load(f)
        demo = {name: os.path.join(self.tmp, "demo", name) for name in ("base", "finetuned")}
        cfg = mc.localise(dict(cfg, base_model="base", models=[dict(cfg["models"][0], model="finetuned")]), demo)
        oracle_gta.random_seed = 7
        mc.assert_matches(self, os.path.join(self.tmp, "demo", "dare-ties"), mc.expected(cfg, cfg))


if __name__ == "__main__":
    unittest.main()
