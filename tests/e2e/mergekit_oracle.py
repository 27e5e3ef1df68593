"""An independent float64 numpy evaluation of a mergekit configuration.

What mergekit computes for a configuration (a dict, as PyYAML reads the
file), read from its source (arcee-ai/mergekit, mergekit/config.py,
mergekit/plan.py, mergekit/merge_methods/): the models as its
normalize_config lists them (the models in order, then base_model when it is
not among them), each parameter resolved per tensor (evaluate_setting: a
scalar; a list of numbers interpolated at the tensor's layer position t; a
list of {filter, value}, the first matching one winning, none matching
falling through to the global setting, then the default), every input
rounded to `dtype` when the configuration sets one (mergekit converts its
inputs), the method's definition evaluated in float64, and the result
rounded to out_dtype, else dtype, else the reference model's dtype (the
base's, or the first model's).

Layer position (mergekit walks its architecture; soupkit reads names): a
tensor named "<prefix>.<stack>.<i>.<rest>" with stack one of layers, h,
layer, blocks, block is layer i of the L layers of that prefix, t = i/(L-1)
(1 when L = 1); every other tensor has t = 0.

A method is METHODS[name] = (parameters, function). `parameters` lists
(name, per_model, default) with default REQUIRED for a required one;
function(tensors, base_index, per_model, global_, name) -> float64 array,
where tensors are the float64 inputs in model order, per_model a list of
dicts (the base's may lack required parameters), global_ a dict. Add a
method by adding it to METHODS.
"""
import re

import numpy as np

from soupkit_testlib import NP_DTYPES, as_float64, f64_to_bf16_bits
import oracle_fusion
import ties_oracle

REQUIRED = object()
FLOATS = ("F64", "F32", "F16", "BF16")
DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.(0|[1-9][0-9]*)\.")


def evaluate_setting(tensor, setting, t):
    """mergekit.config.evaluate_setting (conditions as dicts)."""
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, list):
        if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        for cond in setting:
            f = cond.get("filter")
            if f is None or f == "*" or (tensor and f in tensor):
                return evaluate_setting(tensor, cond["value"], t)
        return None
    raise ValueError(f"unexpected setting {setting!r}")


def layer_positions(names):
    """t of every tensor name, as described above."""
    counts = {}
    for n in names:
        m = _LAYER.search(n)
        if m:
            prefix = n[:m.start(1)]
            counts[prefix] = max(counts.get(prefix, 0), int(m.group(1)) + 1)
    out = {}
    for n in names:
        m = _LAYER.search(n)
        if not m:
            out[n] = 0.0
            continue
        count = counts[n[:m.start(1)]]
        out[n] = 1.0 if count <= 1 else int(m.group(1)) / (count - 1)
    return out


def model_list(config):
    """(model paths in mergekit's order, index of the base or None); with
    slices, every source in order of appearance."""
    if "slices" in config:
        models = []
        for sl in config["slices"]:
            for src in sl["sources"]:
                if src["model"] not in models:
                    models.append(src["model"])
        base = config.get("base_model")
        return models, [{} for _ in models], models.index(base) if base in models else None
    models = [m["model"] if isinstance(m, dict) else m for m in config["models"]]
    settings = [(m.get("parameters") or {}) if isinstance(m, dict) else {} for m in config["models"]]
    base = config.get("base_model")
    base_index = None
    if base is not None:
        if base in models:
            base_index = models.index(base)
        else:
            models.append(base)
            settings.append({})
            base_index = len(models) - 1
    return models, settings, base_index


def resolve(parameters, config, settings, base_index, tensor, t, model_tensors=None):
    """(global dict, per-model dicts) for one tensor (mergekit's ConfigReader.parameter);
    per-model parameters match their filters against each model's own name of the tensor
    (model_tensors, with slices: plan_layer's weight_in.name), global ones the output's."""
    top = config.get("parameters") or {}

    def look(where, name, tensor=tensor):
        return evaluate_setting(tensor, where[name], t) if name in where else None

    global_, per_model = {}, [dict() for _ in settings]
    for name, is_per_model, default in parameters:
        if not is_per_model:
            value = look(top, name)
            value = default if value is None else value
            assert value is not REQUIRED, f"{name} required for {tensor}"
            global_[name] = value
            continue
        for i, own in enumerate(settings):
            input_name = model_tensors[i] if model_tensors else tensor
            value = look(own, name, input_name)
            if value is None:
                value = look(top, name, input_name)
            if value is None:
                value = default
            if value is REQUIRED:
                assert i == base_index, f"{name} required of model {i} for {tensor}"
                continue
            per_model[i][name] = value
    return global_, per_model


def round_to(dtype, values):
    """float64 values rounded to dtype (round to nearest even), back as float64."""
    values = np.asarray(values, dtype=np.float64)
    if dtype == "F64":
        return values.copy()
    if dtype == "BF16":
        return as_float64("BF16", f64_to_bf16_bits(values))
    return values.astype(NP_DTYPES[dtype]).astype(np.float64)


def store(dtype, values):
    """float64 values as the raw array soupkit_testlib reads for `dtype`."""
    if dtype == "BF16":
        return f64_to_bf16_bits(values)
    return np.asarray(values, dtype=np.float64).astype(NP_DTYPES[dtype])


def _pre_layer(name):
    return any(w in name for w in ("embed", "wte", "wpe", "word_embeddings", "tok_embeddings"))


def slice_plan(config, checkpoints):
    """mergekit's slices (plan.py: plan_module, plan_slice): [(output name,
    [(model, input name)], t, slice)], the embeddings from the first slice's
    first source, each slice's layers stacked, the rest from the last slice."""
    slices = config["slices"]
    plan = []

    def outside(s, before):
        sources = slices[s]["sources"]
        for name in checkpoints[sources[0]["model"]]:
            if _LAYER.search(name) or _pre_layer(name) != before:
                continue
            plan.append((name, [(src["model"], name) for src in sources], 0.0, s))

    outside(0, True)
    j = 0
    for s, sl in enumerate(slices):
        sources = sl["sources"]
        first, end = sources[0]["layer_range"]
        length = end - first
        for o in range(length):
            t = o / (length - 1) if length > 1 else 1.0
            for name in checkpoints[sources[0]["model"]]:
                m = _LAYER.search(name)
                if not m or int(m.group(1)) != first + o:
                    continue
                head, tail = name[:m.start(1)], name[m.end(1):]
                plan.append((head + str(j) + tail,
                             [(src["model"], head + str(src["layer_range"][0] + o) + tail) for src in sources], t, s))
            j += 1
    outside(len(slices) - 1, False)
    return plan


def merge_slices(config, checkpoints):
    parameters, function = METHODS[config["merge_method"]]
    dtype = DTYPE_NAMES.get(config.get("dtype"), config.get("dtype"))
    out_dtype = DTYPE_NAMES.get(config.get("out_dtype"), config.get("out_dtype"))
    out = {}
    for name, sources, t, s in slice_plan(config, checkpoints):
        sl = config["slices"][s]
        models = [m for m, _ in sources]
        ref_dtype, raw = checkpoints[models[0]][sources[0][1]]
        if ref_dtype not in FLOATS:
            out[name] = (ref_dtype, raw)
            continue
        tensors = [as_float64(*checkpoints[m][n]) for m, n in sources]
        tensors = [round_to(dtype, x) for x in tensors] if dtype else tensors
        base = config.get("base_model")
        base_index = models.index(base) if base in models else None
        top = dict(config.get("parameters") or {})
        # (slice parameters come before the global ones: a merged view)
        view = dict(config, parameters=dict(top, **(sl.get("parameters") or {})))
        g, p = resolve(parameters, view, [src.get("parameters") or {} for src in sl["sources"]], base_index, name, t,
                       [n for _, n in sources])
        merged = function(tensors, base_index, p, g, name)
        target = out_dtype or result_dtype(config["merge_method"], dtype or ref_dtype,
                                           [dtype or checkpoints[m][n][0] for m, n in sources], base_index)
        out[name] = (target, store(target, merged).reshape(np.shape(raw)))
    return out


# mergekit writes what its method returns unless out_dtype is set (io/tasks.py
# SaveTensor casts to out_dtype only): read from each method's torch code, for
# the input dtypes after `dtype` (in model order) and the base's index.
def promote(*dtypes):
    """torch's type promotion of float dtypes (float16 with bfloat16 is float32)."""
    if len(set(dtypes)) == 1:
        return dtypes[0]
    return "F64" if "F64" in dtypes else "F32"


def _promoted(ref, dtypes, base_index):
    return promote(ref, *dtypes)


def _multislerp(ref, dtypes, base_index):
    others = [d for i, d in enumerate(dtypes) if i != base_index]
    return others[0] if len(others) == 1 else promote(ref, *dtypes)


def _arcee_fusion(ref, dtypes, base_index):
    # its mask is float32 ((scores >= h).float()); the base alone is returned as it is
    return dtypes[0] if len(dtypes) == 1 else promote("F32", *dtypes)


RESULT_DTYPES = {"linear": _promoted, "sce": _promoted, "nuslerp": _promoted, "model_stock": _promoted,
                 "nearswap": _promoted, "multislerp": _multislerp, "arcee_fusion": _arcee_fusion,
                 "karcher": lambda ref, dtypes, base_index: dtypes[0]}


def result_dtype(method, ref, dtypes, base_index):
    """The dtype mergekit's `method` returns; by default the base's (the task vector methods
    and slerp cast to it), else the reference's."""
    if method in RESULT_DTYPES:
        return RESULT_DTYPES[method](ref, dtypes, base_index)
    return dtypes[base_index] if base_index is not None else ref


# mergekit's Llama-family architectures: lm_head.weight is optional and tied
# to model.embed_tokens.weight (LoadTensor falls back to a tied name).
HEAD, TIED = "lm_head.weight", "model.embed_tokens.weight"


def tensor_of(checkpoint, name):
    """A model's tensor `name`, or for the head its tied embeddings."""
    return checkpoint[name] if name in checkpoint or name != HEAD else checkpoint[TIED]


def merge(config, checkpoints):
    """The expected output {name: (dtype, raw)} of `config`; checkpoints maps
    each model path of the configuration to {name: (dtype, raw)}
    (soupkit_testlib.read_checkpoint's form)."""
    if "slices" in config:
        return merge_slices(config, checkpoints)
    parameters, function = METHODS[config["merge_method"]]
    models, settings, base_index = model_list(config)
    ref = checkpoints[models[base_index if base_index is not None else 0]]
    dtype = DTYPE_NAMES.get(config.get("dtype"), config.get("dtype"))
    out_dtype = DTYPE_NAMES.get(config.get("out_dtype"), config.get("out_dtype"))
    names = list(ref)
    if HEAD not in ref and any(HEAD in checkpoints[m] for m in models):
        names.append(HEAD)  # an optional weight is written when any model has it
    positions = layer_positions(names)
    out = {}
    for name in names:
        ref_dtype, raw = tensor_of(ref, name)
        if ref_dtype not in FLOATS:
            out[name] = (ref_dtype, raw)
            continue
        target = out_dtype or result_dtype(config["merge_method"], dtype or ref_dtype,
                                           [dtype or tensor_of(checkpoints[m], name)[0] for m in models], base_index)
        tensors = []
        for m in models:
            d, r = tensor_of(checkpoints[m], name)
            x = as_float64(d, r)
            tensors.append(round_to(dtype, x) if dtype else x)
        g, p = resolve(parameters, config, settings, base_index, name, positions[name])
        merged = function(tensors, base_index, p, g, name)
        out[name] = (target, store(target, merged).reshape(np.shape(raw)))
    return out


# --- methods -----------------------------------------------------------------

def linear(tensors, base_index, p, g, name):
    weights = [q["weight"] for q in p]
    res = sum(w * x for w, x in zip(weights, tensors))  # mergekit: (weights * stacked).sum(0)
    if g["normalize"]:
        res = res / sum(weights)
    return res


def _task_models(tensors, base_index, p):
    return [(tensors[i], p[i]) for i in range(len(tensors)) if i != base_index]


def task_arithmetic(tensors, base_index, p, g, name):
    others = _task_models(tensors, base_index, p)
    base = tensors[base_index]
    if not others:
        return base
    return ties_oracle.task_arithmetic(base, [x for x, _ in others], [q["weight"] for _, q in others],
                                       lambda_=g["lambda"], normalize=g["normalize"])


def ties(tensors, base_index, p, g, name):
    others = _task_models(tensors, base_index, p)
    base = tensors[base_index]
    if not others:
        return base
    return ties_oracle.ties(base, [x for x, _ in others], [q["weight"] for _, q in others],
                            [q["density"] for _, q in others], lambda_=g["lambda"], normalize=g["normalize"])


def passthrough(tensors, base_index, p, g, name):
    assert len(tensors) == 1, "passthrough expects exactly one tensor"
    return tensors[0] * p[0]["scale"] if p[0].get("scale") is not None else tensors[0]


METHODS = {
    "passthrough": ([("scale", True, None)], passthrough),
    "linear": ([("weight", True, REQUIRED), ("normalize", False, True)], linear),
    "task_arithmetic": ([("weight", True, REQUIRED), ("lambda", False, 1.0), ("normalize", False, False)],
                        task_arithmetic),
    "ties": ([("weight", True, REQUIRED), ("density", True, 1.0), ("lambda", False, 1.0), ("normalize", False, True),
              ("int8_mask", False, False)], ties),
}
oracle_fusion.register(METHODS, REQUIRED)  # model_stock, nearswap, arcee_fusion
