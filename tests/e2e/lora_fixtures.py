"""PEFT LoRA adapters built by hand in PEFT's saved layout (peft itself is not
installed here): adapter_config.json and adapter_model.safetensors (or
adapter_model.bin through torch.save), tensors named
base_model.model.<module>.lora_A.weight [r, in] and .lora_B.weight [out, r],
whole tensors (modules_to_save, biases) as base_model.model.<name>.

The reference W1 is torch's formula, as docs/formats.md states it:
    (W0.double() + scale * (B.double() @ A.double())).to(W0.dtype)
with (B @ A).T for fan_in_fan_out, scale = lora_alpha / r (or / sqrt(r) for
rsLoRA)."""
import json
import math
import os

import numpy as np
import torch

from soupkit_testlib import write_model_dir, write_safetensors

TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def to_raw(t):
    """A torch tensor as (safetensors dtype, raw numpy array)."""
    for name, dt in TORCH.items():
        if t.dtype == dt:
            if dt == torch.bfloat16:
                return name, t.contiguous().view(torch.int16).numpy().view(np.uint16)
            return name, t.contiguous().numpy()
    raise ValueError(t.dtype)


def llama_base(seed, dtype, layers=2, hidden=32, inter=48, vocab=40):
    """A small Llama-shaped state dict of torch tensors (plus a score head for modules_to_save)."""
    g = torch.Generator().manual_seed(seed)
    dt = TORCH[dtype]
    sd = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g).to(dt)}
    for i in range(layers):
        p = "model.layers.%d." % i
        for name, shape in [("self_attn.q_proj", (hidden, hidden)), ("self_attn.k_proj", (hidden // 2, hidden)),
                            ("self_attn.v_proj", (hidden // 2, hidden)), ("self_attn.o_proj", (hidden, hidden)),
                            ("mlp.gate_proj", (inter, hidden)), ("mlp.up_proj", (inter, hidden)),
                            ("mlp.down_proj", (hidden, inter))]:
            sd[p + name + ".weight"] = (torch.randn(*shape, generator=g) * 0.1).to(dt)
        sd[p + "self_attn.q_proj.bias"] = (torch.randn(hidden, generator=g) * 0.1).to(dt)
        sd[p + "input_layernorm.weight"] = torch.ones(hidden).to(dt)
    sd["model.norm.weight"] = torch.ones(hidden).to(dt)
    sd["score.weight"] = (torch.randn(3, hidden, generator=g) * 0.1).to(dt)
    return sd


def gpt2_base(seed, dtype, hidden=24):
    """GPT-2 style Conv1D weights [in, out]."""
    g = torch.Generator().manual_seed(seed)
    dt = TORCH[dtype]
    return {"transformer.h.0.attn.c_attn.weight": (torch.randn(hidden, 3 * hidden, generator=g) * 0.1).to(dt),
            "transformer.h.0.attn.c_proj.weight": (torch.randn(hidden, hidden, generator=g) * 0.1).to(dt),
            "transformer.h.0.mlp.c_fc.weight": (torch.randn(hidden, 4 * hidden, generator=g) * 0.1).to(dt),
            "transformer.ln_f.weight": torch.ones(hidden).to(dt)}


def write_base(path, sd, shard_bytes=None):
    write_model_dir(path, {k: to_raw(v) for k, v in sd.items()}, shard_bytes=shard_bytes,
                    extra_files={"config.json": json.dumps({"architectures": ["LlamaForCausalLM"]})})
    return path


def make_adapter(path, base, modules, r=4, alpha=8, seed=7, dtype="F32", rslora=False, fan_in_fan_out=False,
                 key_style="", whole=None, extra_config=None, file_format="safetensors", scale_b=0.05):
    """Writes a PEFT adapter for `modules` of `base` (torch state dict) and returns
    (path, factors: module -> (A, B, scale)). `whole`: name -> torch tensor saved whole."""
    g = torch.Generator().manual_seed(seed)
    os.makedirs(path, exist_ok=True)
    tensors, factors = {}, {}
    for m in modules:
        w = base[m + ".weight"]
        out_f, in_f = (w.shape[1], w.shape[0]) if fan_in_fan_out else (w.shape[0], w.shape[1])
        a = (torch.randn(r, in_f, generator=g) * 0.3).to(TORCH[dtype])
        b = (torch.randn(out_f, r, generator=g) * scale_b).to(TORCH[dtype])
        tensors["base_model.model.%s.lora_A%s.weight" % (m, key_style)] = a
        tensors["base_model.model.%s.lora_B%s.weight" % (m, key_style)] = b
        factors[m] = (a, b, alpha / math.sqrt(r) if rslora else alpha / r)
    for name, t in (whole or {}).items():
        tensors["base_model.model." + name] = t
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora,
              "fan_in_fan_out": fan_in_fan_out, "target_modules": sorted({m.split(".")[-1] for m in modules}),
              "bias": "none", "use_dora": False, "modules_to_save": None, "lora_dropout": 0.0,
              "task_type": "CAUSAL_LM", "base_model_name_or_path": "base", "rank_pattern": {}, "alpha_pattern": {}}
    config.update(extra_config or {})
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    if file_format == "safetensors":
        write_safetensors(os.path.join(path, "adapter_model.safetensors"), {k: to_raw(v) for k, v in tensors.items()})
    else:
        torch.save(tensors, os.path.join(path, "adapter_model.bin"))
    return path, factors


def merged(base, factors, fan_in_fan_out=False, whole=None):
    """torch's W1 for every tensor, as (dtype, raw)."""
    out = {}
    for name, w0 in base.items():
        module = name[:-len(".weight")] if name.endswith(".weight") else None
        if whole and name in whole:
            out[name] = to_raw(whole[name])
        elif module in factors:
            a, b, s = factors[module]
            delta = b.double() @ a.double()
            if fan_in_fan_out:
                delta = delta.T
            out[name] = to_raw((w0.double() + s * delta).to(w0.dtype))
        else:
            out[name] = to_raw(w0)
    return out


def exact_updates(base, factors):
    """(name, W0, W1) in float64 for every adapted tensor: W1 = W0 + scale B A without rounding."""
    for name, w0 in base.items():
        module = name[:-len(".weight")]
        if module in factors:
            a, b, s = factors[module]
            w0d = w0.double()
            yield name, w0d.numpy(), (w0d + s * (b.double() @ a.double())).numpy()


LLAMA_MODULES = ["model.layers.%d.%s" % (i, m) for i in range(2)
                 for m in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]]
