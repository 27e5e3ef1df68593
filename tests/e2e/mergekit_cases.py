"""Shared harness for tests of mergekit configurations run by `soupkit run`:
small Llama-shaped models (layer tensors "model.layers.N.*", so gradients
have a layer position), a configuration written as YAML, and the output
compared with mergekit_oracle.merge (an independent numpy float64 evaluation
of mergekit's definitions).
"""
import os

import numpy as np
import yaml

import mergekit_oracle
from soupkit_testlib import as_float64, f64_to_bf16_bits, read_checkpoint, run_soupkit, write_model_dir

FLOATS = ("F64", "F32", "F16", "BF16")


def llama_like(seed, dtype="F32", layers=4, hidden=24, rows_scale=1, base=None, spread=0.05):
    """{name: (dtype, raw)}: embeddings, `layers` layers of attention and MLP
    matrices and norms, final norm, head, and an int64 buffer (copied). With
    `base`, the model is base plus a perturbation of relative size `spread`
    (a fine-tune); the int tensor is the same."""
    rng = np.random.default_rng(seed)

    def value(name, shape):
        if base is not None:
            x = as_float64(*base[name]) + spread * rng.standard_normal(shape)
        else:
            x = rng.standard_normal(shape)
        return (dtype, _store(dtype, x))

    shapes = {"model.embed_tokens.weight": (40 * rows_scale, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.q_proj.weight"] = (hidden, hidden)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, hidden)
        shapes[p + "mlp.up_proj.weight"] = (2 * hidden * rows_scale, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, 2 * hidden)
        shapes[p + "input_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (40 * rows_scale, hidden)
    out = {name: value(name, shape) for name, shape in shapes.items()}
    out["model.position_ids"] = ("I64", np.arange(16, dtype=np.int64))
    return out


def _store(dtype, x):
    if dtype == "BF16":
        return f64_to_bf16_bits(x)
    return np.asarray(x, dtype=np.float64).astype({"F64": np.float64, "F32": np.float32, "F16": np.float16}[dtype])


def write_models(directory, models, config_json=None):
    """Writes {name: tensors} as model directories under `directory`; returns {name: path}."""
    paths = {}
    for name, tensors in models.items():
        path = os.path.join(directory, name)
        extra = {"config.json": config_json} if config_json is not None else None
        write_model_dir(path, tensors, extra_files=extra)
        paths[name] = path
    return paths


def localise(config, paths):
    """The configuration with model names replaced by their paths."""
    def fix(ref):
        return paths.get(ref, ref)
    out = dict(config)
    if "base_model" in out:
        out["base_model"] = fix(out["base_model"])
    models = []
    for m in out.get("models", []):
        if isinstance(m, dict):
            m = dict(m)
            m["model"] = fix(m["model"])
        else:
            m = fix(m)
        models.append(m)
    if "models" in out:
        out["models"] = models
    if "slices" in out:
        out["slices"] = [dict(sl, sources=[dict(src, model=fix(src["model"])) for src in sl["sources"]])
                         for sl in out["slices"]]
    if "tokenizer_source" in out:
        out["tokenizer_source"] = fix(out["tokenizer_source"])
    return out


def run_config(directory, config, out, ranks=None, extra=(), check=True, name="config.yml"):
    """Writes `config` as YAML and runs `soupkit run CONFIG OUT`."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return run_soupkit(["run", path, out, *extra], ranks=ranks, check=check)


def expected(config, paths_config):
    """mergekit_oracle's output for a localised configuration."""
    models, _, _ = mergekit_oracle.model_list(paths_config)
    return mergekit_oracle.merge(paths_config, {m: read_checkpoint(m)[0] for m in models})


def assert_matches(test, out_path, want, ulps=0):
    """Every tensor of out_path equals `want` ({name: (dtype, raw)}): same
    dtype and shape, integer tensors identical, float tensors within `ulps`
    units in the last place of the output dtype (0: bit for bit)."""
    got = read_checkpoint(out_path)[0]
    test.assertEqual(sorted(got), sorted(want))
    for name, (dtype, raw) in want.items():
        gdtype, graw = got[name]
        test.assertEqual(gdtype, dtype, name)
        test.assertEqual(np.shape(graw), np.shape(raw), name)
        if dtype not in FLOATS or ulps == 0:
            test.assertTrue(np.array_equal(np.asarray(graw).reshape(-1).view(np.uint8),  # (0-d arrays: no view)
                                           np.asarray(raw).reshape(-1).view(np.uint8)),
                            f"{name}: max |diff| {np.max(np.abs(as_float64(dtype, graw) - as_float64(dtype, raw))) if dtype in FLOATS else 'int'}")
            continue
        g, w = as_float64(dtype, graw), as_float64(dtype, raw)
        eps = {"F64": 2.0 ** -52, "F32": 2.0 ** -23, "F16": 2.0 ** -10, "BF16": 2.0 ** -7}[dtype]
        bound = ulps * eps * np.maximum(np.abs(w), 2.0 ** -14)
        test.assertTrue(np.all(np.abs(g - w) <= bound), f"{name}: max |diff| {np.max(np.abs(g - w))}")
