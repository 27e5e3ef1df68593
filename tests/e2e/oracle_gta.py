"""Independent float64 numpy reference for mergekit's generalized task
arithmetic family (task_arithmetic, ties, dare_linear, dare_ties,
breadcrumbs, breadcrumbs_ties, della_linear, della) and sce, as
docs/merge_methods_spec.md writes them down; nothing is shared with
soupkit's C++.

The random methods (DARE, DELLA) cannot be compared with mergekit's draws
(torch's global generator). This module reimplements soupkit's documented
counter-based stream in numpy (SplitMix64 over (seed, tensor name, model
index, flat index): `uniforms`), so the keep masks, and with them every
output byte, are predicted from the documentation; everything downstream of
the masks (rescale, consensus, normalize, lambda) is mergekit's definition.

soupkit's refinements, encoded here: magnitudes ranked exactly, equal
magnitudes ranking the lower flat index as the larger (ties_oracle's rule);
rescale's L1 norms summed in flat order (np.add.accumulate: one addition at a
time); without consensus the mixed delta is scaled once by lambda / divisor;
all arithmetic float64.

`random_seed` is the --random-seed the expected outputs assume. Importing the
module registers its methods in mergekit_oracle.METHODS.

Run directly for a self-check; with MERGEKIT_SRC=<a mergekit checkout> it
also runs mergekit's own sparsify.py and sce.py (torch) on the same inputs,
its torch.bernoulli replaced by this module's draws, and compares.
"""
import os
import sys

import numpy as np

import mergekit_oracle
import ties_oracle
from mergekit_oracle import REQUIRED

random_seed = 0

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
RESCALE_EPS = 1e-7
DIVISOR_EPS = 1e-8


# --- the random stream (docs/merge_methods_spec.md, "The random stream") ----

def _mix_int(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _mix_array(z):
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


def stream_key(seed, name, model_index):
    return _mix_int(_mix_int(_mix_int(seed) ^ fnv1a64(name.encode())) ^ model_index)


def uniforms(seed, name, model_index, count):
    """uniform(j) for j in [0, count): (mix(key + (j+1) * golden) >> 11) * 2^-53."""
    key = np.uint64(stream_key(seed, name, model_index))
    with np.errstate(over="ignore"):
        counters = key + (np.arange(1, count + 1, dtype=np.uint64) * np.uint64(GOLDEN))
    return (_mix_array(counters) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


# --- sparsifiers: keep masks (True = kept), or None for "the delta whole" ---

def _descending_order(flat):
    """Flat indices by |x| descending, equal magnitudes lower index first."""
    return np.argsort(-np.abs(flat), kind="stable")


def magnitude_mask(delta, density, **_):
    if density >= 1:
        return None
    return ties_oracle.magnitude_mask(delta, density)


def outliers_mask(delta, density, gamma, **_):
    """magnitude_outliers: int arithmetic, then indices[n_bot:-n_top] of the ascending order."""
    if density >= 1:
        return None
    flat = np.asarray(delta, dtype=np.float64).ravel()
    n = flat.size
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = n - target - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    ascending = _descending_order(flat)[::-1]
    mask = np.zeros(n, dtype=bool)
    mask[ascending[n_bot:-n_top]] = True  # Python's slice, -0 included
    return mask.reshape(np.shape(delta))


def random_mask(delta, density, name, model_index, **_):
    if density >= 1:
        return None
    if density < 0:
        raise ValueError(f"density {density} < 0: torch.bernoulli fails")
    u = uniforms(random_seed, name, model_index, np.size(delta))
    return (u < density).reshape(np.shape(delta))


def della_probabilities(delta, density, epsilon):
    """della_magprune's probs: ranks along dim 1 (a 1-D tensor as one row)."""
    x = np.asarray(delta, dtype=np.float64)
    if x.ndim == 0:
        raise ValueError("a 0-d tensor has no rows to rank")
    if x.ndim == 1:
        x = x[None, :]
    length = x.shape[1]
    if length < 2:
        raise ValueError("rows of one element: 0/0 rank normalisation")
    moved = np.moveaxis(np.abs(x), 1, -1)  # groups along the last axis
    groups = moved.reshape(-1, length)
    p = np.empty_like(groups)
    positions = np.arange(length)
    for g in range(groups.shape[0]):
        # ascending magnitude, equal ones the higher index first (lower ranks higher)
        order = np.lexsort((-positions, groups[g]))
        ranks = np.empty(length)
        ranks[order] = np.arange(1, length + 1, dtype=np.float64)
        rank_norm = np.clip((ranks - 1.0) / (length - 1.0), 0, 1)
        p[g] = (density - epsilon) + rank_norm * 2 * epsilon
    p = np.moveaxis(p.reshape(moved.shape), -1, 1)
    return p.reshape(np.shape(delta))


def della_mask(delta, density, epsilon, name, model_index, **_):
    if density >= 1:
        return None
    if density <= 0:
        return np.zeros(np.shape(delta), dtype=bool)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError("density +/- epsilon outside (0, 1)")
    p = della_probabilities(delta, density, epsilon)
    u = uniforms(random_seed, name, model_index, np.size(delta)).reshape(np.shape(delta))
    return u < p


SPARSIFIERS = {
    None: None,
    "magnitude": magnitude_mask,
    "random": random_mask,
    "magnitude_outliers": outliers_mask,
    "della_magprune": della_mask,
}


def flat_sum(values):
    """The sum of values in flat order, one addition at a time."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    return float(np.add.accumulate(flat)[-1]) if flat.size else 0.0


def sparsified(delta, mask, rescale):
    """rescaled_masked_tensor with the L1 norm (or none), float64."""
    if mask is None:
        return delta
    masked = delta * mask.astype(np.float64)
    if not rescale:
        return masked
    before, after = flat_sum(np.abs(delta)), flat_sum(np.abs(masked))
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return masked
    return masked * (before / after)


def sequential_sum(arrays):
    """arrays[0] + arrays[1] + ..., elementwise, in order."""
    total = arrays[0].copy()
    for a in arrays[1:]:
        total = total + a
    return total


def elected_sign(arrays):
    """get_mask's "sum" election: +1 where the sum is >= 0, else -1."""
    return np.where(sequential_sum(arrays) >= 0, 1.0, -1.0)


def gta(consensus, sparsification):
    """GTATask.execute for one tensor."""
    def merge(tensors, base_index, p, g, name):
        base = tensors[base_index]
        task = [i for i in range(len(tensors)) if i != base_index]
        if not task:
            return base.copy()
        weights = [p[i]["weight"] for i in task]
        deltas = []
        for i in task:
            delta = tensors[i] - base
            sparsify = SPARSIFIERS[sparsification]
            mask = None if sparsify is None else sparsify(
                delta, p[i]["density"], gamma=p[i].get("gamma"), epsilon=p[i].get("epsilon"), name=name,
                model_index=i)
            deltas.append(sparsified(delta, mask, g["rescale"]))
        weighted = [w * d for w, d in zip(weights, deltas)]
        if consensus == "sum":
            elected = elected_sign(weighted)
            mixed = np.zeros_like(base)
            divisor = np.zeros_like(base)
            for w, wd in zip(weights, weighted):
                agree = (np.sign(wd) == elected).astype(np.float64)
                mixed = mixed + wd * agree
                divisor = divisor + w * agree
            divisor = np.where(divisor == 0, 1.0, divisor)
            if g["normalize"]:
                mixed = mixed / divisor
            return base + g["lambda"] * mixed
        mixed = sequential_sum(weighted)
        scale = g["lambda"]
        if g["normalize"]:
            divisor = 0.0
            for w in weights:
                divisor += w
            if abs(divisor) >= DIVISOR_EPS:
                scale = g["lambda"] / divisor
        return base + scale * mixed
    return merge


def gta_parameters(sparsification, normalize, rescale):
    table = [("weight", True, REQUIRED), ("density", True, 1.0)]
    if sparsification == "magnitude_outliers":
        table.append(("gamma", True, 0.01))
    if sparsification == "della_magprune":
        table.append(("epsilon", True, 0.15))
    return table + [("lambda", False, 1.0), ("normalize", False, normalize), ("rescale", False, rescale),
                    ("int8_mask", False, False)]


# registry.py: name, consensus, sparsification, default normalize, default rescale.
REGISTRY = [
    ("task_arithmetic", None, None, False, False),
    ("ties", "sum", "magnitude", True, False),
    ("dare_ties", "sum", "random", False, True),
    ("dare_linear", None, "random", False, True),
    ("breadcrumbs", None, "magnitude_outliers", False, False),
    ("breadcrumbs_ties", "sum", "magnitude_outliers", False, False),
    ("della", "sum", "della_magprune", True, True),
    ("della_linear", None, "della_magprune", False, True),
]


# --- sce (mergekit/merge_methods/sce.py) -------------------------------------

def sce_topk_count(nonzero, select_topk):
    """int(count_nonzero(var) * select_topk): torch multiplies in float32."""
    return int(np.float32(np.float32(nonzero) * np.float32(select_topk)))


def sce(tensors, base_index, p, g, name):
    base = tensors[base_index]
    tvs = [tensors[i] - base for i in range(len(tensors)) if i != base_index]
    if not tvs:
        return base.copy()
    n = len(tvs)
    topk = g["select_topk"]
    if topk < 1:
        mask = np.zeros(base.shape, dtype=bool)
        if topk > 0:
            mean = sequential_sum(tvs) / n
            squares = (tvs[0] - mean) * (tvs[0] - mean)
            for tv in tvs[1:]:
                squares = squares + (tv - mean) * (tv - mean)
            var = squares / n
            k = sce_topk_count(np.count_nonzero(var), topk)
            if k > 0:
                flat = mask.reshape(-1)
                flat[_descending_order(var.ravel())[:k]] = True
        tvs = [tv * mask.astype(np.float64) for tv in tvs]
    weights = [flat_sum(tv * tv) / tv.size for tv in tvs]
    weight_sum = 0.0
    for w in weights:
        weight_sum += w
    weights = [1.0 / n] * n if abs(weight_sum) < 1e-6 else [w / weight_sum for w in weights]
    elected = elected_sign(tvs)
    merged = np.zeros_like(base)
    divisor = np.zeros_like(base)
    for w, tv in zip(weights, tvs):
        erased = np.where(np.sign(tv) == elected, w, 0.0)
        merged = merged + tv * erased
        divisor = divisor + erased
    return base + merged / np.maximum(divisor, 1e-6)


def register():
    for name, consensus, sparsification, normalize, rescale in REGISTRY:
        mergekit_oracle.METHODS[name] = (gta_parameters(sparsification, normalize, rescale),
                                         gta(consensus, sparsification))
    mergekit_oracle.METHODS["sce"] = ([("select_topk", False, 1.0), ("int8_mask", False, False)], sce)


register()


# --- self-check ----------------------------------------------------------------

def _check_by_hand():
    # SplitMix64 seeded with 0, and FNV-1a's published values.
    assert _mix_int(GOLDEN) == 0xE220A8397B1DCDAF
    assert fnv1a64(b"foobar") == 0x85944171F73967E8
    key = stream_key(0, "w", 0)
    assert uniforms(0, "w", 0, 3)[2] == (_mix_int((key + 3 * GOLDEN) & MASK64) >> 11) * 2.0 ** -53
    # magnitude_outliers: n_top = int(0.01 * 50) = 0 keeps nothing; 0.02 drops the largest.
    x = np.arange(1.0, 51.0)
    assert not outliers_mask(x, 0.5, 0.01).any()
    m = outliers_mask(x, 0.5, 0.02)
    assert m.sum() == 25 and not m[49] and m[48] and m[24] and not m[23]
    # DELLA: probabilities rise with the rank, ties rank the lower index higher.
    p = della_probabilities(np.array([[0.0, 2.0, -1.0, 2.0]]), 0.5, 0.3)
    assert np.allclose(p, [[0.2, 0.8, 0.4, 0.6]]), p
    # sce's k in float32: 0.29 x 100 is 29 there, 28 in double.
    assert sce_topk_count(100, 0.29) == 29 and int(0.29 * 100) == 28
    # rescale: the kept L1 norm is the whole one.
    d = np.array([3.0, -1.0, 1.0, 0.0])
    out = sparsified(d, np.array([True, False, True, True]), True)
    assert np.array_equal(out, [3.75, 0.0, 1.25, 0.0]) and np.signbit(out[1]), out


def _check_against_ties_oracle(rng):
    """ties and task_arithmetic here are ties_oracle's (the latter to rounding with normalize)."""
    for shape in [(6, 11), (97,)]:
        base = rng.normal(size=shape)
        models = [base + rng.normal(scale=0.1, size=shape) for _ in range(3)]
        weights = [0.7, -0.2, 1.1]
        p = [{"weight": w, "density": d} for w, d in zip(weights, [0.3, 1.0, 0.55])] + [{}]
        for normalize in (True, False):
            for lambda_ in (1.0, 0.6):
                g = {"normalize": normalize, "lambda": lambda_, "rescale": False}
                want = ties_oracle.ties(base, models, weights, [0.3, 1.0, 0.55], lambda_, normalize)
                assert np.array_equal(gta("sum", "magnitude")([*models, base], 3, p, g, "t"), want)
                want = ties_oracle.task_arithmetic(base, models, weights, lambda_, normalize)
                got = gta(None, None)([*models, base], 3, p, g, "t")
                assert np.array_equal(got, want) if not normalize else np.allclose(got, want, rtol=1e-15, atol=1e-15)


def _load_mergekit(root):
    """mergekit's sparsify.py and sce.py functions, executed from its source."""
    import torch
    sparsify_ns = {}
    exec(open(os.path.join(root, "mergekit/sparsify.py")).read(), sparsify_ns)
    text = open(os.path.join(root, "mergekit/merge_methods/sce.py")).read()
    text = text.replace("from mergekit.merge_methods.easy_define import merge_method\n", "")
    text = text.replace("from mergekit.merge_methods.generalized_task_arithmetic import (\n"
                        "    get_mask as sign_consensus_mask,\n)\n", "")
    gta_text = open(os.path.join(root, "mergekit/merge_methods/generalized_task_arithmetic.py")).read()
    get_mask = gta_text[gta_text.index("def get_mask("):]
    sce_ns = {"merge_method": lambda **_: (lambda f: f), "torch": torch}
    exec("from typing import List, Optional, Literal\nimport torch\n" + get_mask, sce_ns)
    sce_ns["sign_consensus_mask"] = sce_ns["get_mask"]
    exec(text, sce_ns)
    return torch, sparsify_ns, sce_ns


def _check_against_mergekit(root, rng):
    """On tie-free float64 data, mergekit's own functions against this module."""
    torch, sp, sc = _load_mergekit(root)
    checked = 0
    for shape in [(7, 13), (50,), (3, 4, 6), (2, 300)]:
        delta = rng.normal(size=shape)
        t = torch.tensor(delta, dtype=torch.float64)
        for density, gamma in [(0.5, 0.01), (0.3, 0.1), (0.9, 0.05), (0.2, 0.0)]:
            got = sp["magnitude_outliers"](t, density, None, gamma).numpy() != 0
            want = outliers_mask(delta, density, gamma)
            assert np.array_equal(got, want), (shape, density, gamma)
            checked += 1
        # della_magprune and bernoulli with torch.bernoulli replaced by this module's draws.
        for density, epsilon in [(0.5, 0.2), (0.3, 0.1)]:
            u = torch.tensor(uniforms(5, "t", 2, delta.size).reshape(shape))
            real = torch.bernoulli
            seen = {}

            def fake(probs, _u=u, _seen=seen):
                _seen.setdefault("p", probs.double().reshape(_u.shape).numpy())
                return (_u < probs.double().reshape(_u.shape)).to(probs.dtype).reshape(probs.shape)
            torch.bernoulli = fake
            try:
                sp["della_magprune"](t, density, epsilon, None)
                rescaled = sp["bernoulli"](t, density, sp["RescaleNorm"].l1).double().numpy()
            finally:
                torch.bernoulli = real
            # mergekit's probabilities are float32 on the CPU: equal to ours to float32 rounding.
            diff = np.abs(seen["p"] - della_probabilities(delta, density, epsilon)).max()
            assert diff < 4e-7, (shape, diff)
            mask = uniforms(5, "t", 2, delta.size).reshape(shape) < np.float32(density)
            assert np.allclose(rescaled, sparsified(delta, mask, True), rtol=1e-6, atol=1e-6)
            checked += 2
    # sce on several models.
    for shape in [(9, 11), (40,)]:
        base = rng.normal(size=shape)
        models = [base + rng.normal(scale=s, size=shape) for s in (0.01, 0.05, 0.02)]
        for topk in (1.0, 0.5, 0.1, 0.0):
            got = sc["sce_merge"]([torch.tensor(m) for m in models], torch.tensor(base), select_topk=topk).numpy()
            want = sce([*models, base], 3, [{}] * 4, {"select_topk": topk}, "t")
            assert np.allclose(got, want, rtol=1e-12, atol=1e-14), (shape, topk, np.abs(got - want).max())
            checked += 1
    return checked


if __name__ == "__main__":
    generator = np.random.default_rng(20260617)
    _check_by_hand()
    _check_against_ties_oracle(generator)
    source = os.environ.get("MERGEKIT_SRC")
    if source:
        print(f"oracle_gta: {_check_against_mergekit(source, generator)} comparisons with mergekit's own code")
    print("oracle_gta self-check passed")
    sys.exit(0)
