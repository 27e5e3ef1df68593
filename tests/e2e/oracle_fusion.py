"""Independent float64 numpy evaluations of mergekit's `model_stock`,
`nearswap` and `arcee_fusion` (mergekit/merge_methods/model_stock.py,
nearswap.py, arcee_fusion.py at arcee-ai/mergekit a6e4028; written down in
docs/merge_methods_spec.md), for mergekit_oracle.METHODS: nothing shared with
soupkit's C++.

Each function takes (tensors, base_index, per_model, global_, name) as
mergekit_oracle's methods do, and raises ValueError where mergekit fails
(or where it would write NaN or inf and soupkit refuses). One departure,
soupkit's documented definition: arcee_fusion's quantiles are those of the
whole tensor also above 10^6 elements, where mergekit takes a random sample.

Run directly (/usr/bin/python3 oracle_fusion.py) for a self-check against a
restatement of mergekit's torch operations in torch float64 (torch.norm,
F.softmax, torch.sort, float32 quantile indices), when torch is importable.
"""
from fractions import Fraction

import numpy as np

NORM_PRODUCT_MIN = 1e-6   # model_stock: norm_product.clamp(min=1e-6)
DISTANCE_MIN = 1e-6       # nearswap: absdiff.clamp(min=1e-6)
SOFTMAX_EPS = 1e-8        # arcee_fusion: softmax(...) + eps
SAMPLED_ABOVE = 1_000_000  # arcee_fusion: mergekit samples 10^6 scores of larger tensors


def _base_and_others(tensors, base_index, method):
    if base_index is None:
        raise ValueError(f"{method} needs a base model")
    return tensors[base_index], [x for i, x in enumerate(tensors) if i != base_index]


def model_stock(tensors, base_index, p, g, name):
    w0, ws = _base_and_others(tensors, base_index, "model_stock")
    if not ws:
        return w0
    if len(ws) < 2:
        raise ValueError("ModelStockMerge requires at least 3 models (base plus two+ others)")
    shape = np.shape(w0)
    if g["filter_wise"]:
        if w0.ndim <= 1:  # a bias (or a scalar) is one row
            w0, ws = w0.reshape(1, -1), [w.reshape(1, -1) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            norms = np.linalg.norm(offsets[i], axis=-1) * np.linalg.norm(offsets[j], axis=-1)
            dot = (offsets[i] * offsets[j]).sum(axis=-1)
            cosines.append(np.clip(dot / np.maximum(norms, NORM_PRODUCT_MIN), -1, 1))
    cos = np.mean(np.stack(cosines), axis=0)[..., None]
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    if np.any(denominator == 0) or not np.all(np.isfinite(cos)):
        raise ValueError(f"{name}: 1 + (N - 1) cos = 0: t divides by zero")
    t = (n * cos) / denominator
    w_avg = sum(ws) / n
    return (t * w_avg + (1 - t) * w0).reshape(shape)


def nearswap(tensors, base_index, p, g, name):
    a, others = _base_and_others(tensors, base_index, "nearswap")
    if not others:
        return a
    if len(others) != 1:
        raise ValueError("NearSwap merge expects exactly two models, one base and one other")
    b = others[0]
    weight = np.clip(g["t"] / np.maximum(np.abs(a - b), DISTANCE_MIN), 0, 1)
    return weight * b + (1 - weight) * a


def _softmax_last_axis(x):
    vectors = x.reshape(1) if x.ndim == 0 else x
    e = np.exp(vectors - vectors.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).reshape(x.shape)


def quantile_index(q, n):
    """mergekit's int(q * (n - 1)), the product in float32 (torch.tensor([q]) times an int)."""
    if n <= SAMPLED_ABOVE:
        return int(np.float32(q) * np.float32(n - 1))
    numerator = {0.25: 1, 0.5: 2, 0.75: 3}[q]
    return numerator * (n - 1) // 4  # soupkit's exact floor on the whole tensor


def two_product(x, y):
    """(hi, lo) with hi + lo == x * y exactly (Dekker's product by Veltkamp splitting; no overflow)."""
    def split(v):
        c = 134217729.0 * v  # 2^27 + 1
        high = c - (c - v)
        return high, v - high
    hi = x * y
    xh, xl = split(x)
    yh, yl = split(y)
    lo = ((xh * yh - hi) + xh * yl + xl * yh) + xl * yl
    return hi, lo


def importance_scores(a, b):
    """_compute_importance(b, a): |b - a| times KL(softmax(b) + eps || softmax(a) + eps) along the last
    axis, as exact products (hi, lo) of those two float64 factors."""
    p = _softmax_last_axis(b) + SOFTMAX_EPS
    q = _softmax_last_axis(a) + SOFTMAX_EPS
    terms = p * np.log(p / q)
    kl = terms if a.ndim == 0 else np.asarray(terms.sum(axis=-1))[..., None]
    return two_product(np.abs(b - a), np.broadcast_to(kl, a.shape))


def arcee_fusion(tensors, base_index, p, g, name):
    """soupkit's exact reading: scores ranked exactly, h = m + 1.5 (q3 - q1) and s >= h in exact arithmetic
    (mergekit's float arithmetic breaks exact ties by chance; torch breaks the common ones, a shared KL, the
    same way)."""
    if len(tensors) == 1:
        return tensors[0]
    if len(tensors) != 2:
        raise ValueError("ArceeFusion merge expects exactly two models")
    a, (b,) = _base_and_others(tensors, base_index, "arcee_fusion")
    hi, lo = importance_scores(a, b)
    if np.isnan(hi).any() or np.isnan(lo).any():
        raise ValueError(f"{name}: an importance score is NaN")
    flat_hi, flat_lo = hi.reshape(-1) + 0.0, lo.reshape(-1) + 0.0  # (+ 0.0: -0.0 as 0.0)
    order = np.lexsort((flat_lo, flat_hi))
    n = flat_hi.size

    def exact(i):
        return Fraction(float(flat_hi[i])) + Fraction(float(flat_lo[i]))

    median, q1, q3 = (exact(order[quantile_index(q, n)]) for q in (0.5, 0.25, 0.75))
    threshold = median + Fraction(3, 2) * (q3 - q1)
    approx = float(threshold)
    mask = (flat_hi >= approx).astype(np.float64)
    near = np.flatnonzero(np.abs(flat_hi - approx) <= 1e-12 * max(abs(approx), 1e-300))
    for i in near:
        mask[i] = 1.0 if exact(i) >= threshold else 0.0
    return a + (b - a) * mask.reshape(a.shape)


def register(methods, required):
    """Adds these methods to mergekit_oracle.METHODS ((name, per_model, default) tables, as mergekit declares them)."""
    methods["model_stock"] = ([("filter_wise", False, False)], model_stock)
    methods["nearswap"] = ([("t", False, required)], nearswap)
    methods["arcee_fusion"] = ([], arcee_fusion)


# --- self-check against torch ------------------------------------------------

def _torch_model_stock(w0, ws, filter_wise):
    import torch
    w0, ws = torch.from_numpy(w0), [torch.from_numpy(w) for w in ws]
    shape = w0.shape
    if filter_wise:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.view(-1), [w.view(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cos = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            norms = torch.norm(offsets[i], dim=-1) * torch.norm(offsets[j], dim=-1)
            cos.append(((offsets[i] * offsets[j]).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    t = (n * c) / (1 + (n - 1) * c)
    return (t * (sum(ws) / n) + (1 - t) * w0).reshape(shape).numpy()


def _torch_arcee_fusion(a, b):
    import torch
    import torch.nn.functional as F
    a, b = torch.from_numpy(a), torch.from_numpy(b)
    p = F.softmax(b, dim=-1) + 1e-8
    q = F.softmax(a, dim=-1) + 1e-8
    scores = (b - a).abs() * torch.sum(p * torch.log(p / q), dim=-1).unsqueeze(-1)
    flat, _ = torch.sort(scores.view(-1))
    idx = (torch.tensor([0.5, 0.25, 0.75]) * (flat.numel() - 1)).long()
    median, q1, q3 = flat[idx]
    mask = (scores >= median + 1.5 * (q3 - q1)).to(a.dtype)
    return (a + (b - a) * mask).numpy()


def _exact_ties(a, b):
    """Elements whose |b - a| equals d_m + 1.5 (d_3 - d_1) of the quartile elements' differences, where a 1-D
    tensor's KL is shared by all (elsewhere: no tie expected)."""
    if a.ndim != 1:
        return np.zeros(a.shape, dtype=bool)
    d = np.sort(np.abs(b - a))
    n = d.size
    tie = d[quantile_index(0.5, n)] + 1.5 * (d[quantile_index(0.75, n)] - d[quantile_index(0.25, n)])
    return np.abs(b - a) == tie


def _relative_gap(x, y):
    return float(np.max(np.abs(x - y)) / max(1.0, float(np.max(np.abs(y)))))


def _self_check():
    rng = np.random.default_rng(20260618)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("oracle_fusion: torch is not importable, nothing compared")
        return
    compared = 0
    for shape in [(7, 5), (3, 4, 6), (11,), (1, 9)]:
        base = rng.standard_normal(shape)
        shared = rng.standard_normal(shape)
        models = [base + 0.1 * shared + 0.05 * rng.standard_normal(shape) for _ in range(3)]
        for filter_wise in (False, True):
            for n in (2, 3):
                got = model_stock([base, *models[:n]], 0, None, {"filter_wise": filter_wise}, "x")
                want = _torch_model_stock(base, models[:n], filter_wise)
                assert _relative_gap(got, want) < 1e-12, (shape, filter_wise, n)
                compared += 1
        got = arcee_fusion([base, models[0]], 0, None, {}, "x")
        want = _torch_arcee_fusion(base, models[0])
        assert np.array_equal(got, want), shape
        t = 0.03
        got = nearswap([base, models[1]], 0, None, {"t": t}, "x")
        import torch
        a, b = torch.from_numpy(base), torch.from_numpy(models[1])
        w = (t / (a - b).abs().clamp(min=1e-6)).clamp(min=0, max=1)
        assert _relative_gap(got, (w * b + (1 - w) * a).numpy()) < 1e-15, shape
        compared += 2
    # Quantized task vectors of a 1-D tensor: every element shares its KL, so exact ties at the threshold
    # (in about one tensor in twelve here): admitted; elsewhere torch's float64 decision.
    ties_seen = 0
    for _ in range(300):
        base = rng.standard_normal(11)
        quantized = base + np.round(rng.standard_normal(11) * 8) / 64
        got, want = arcee_fusion([base, quantized], 0, None, {}, "x"), _torch_arcee_fusion(base, quantized)
        ties = _exact_ties(base, quantized)
        ties_seen += int(ties.sum())
        assert np.array_equal(got[~ties], want[~ties]) and np.all(got[ties] == quantized[ties])
        compared += 1
    assert ties_seen > 5, ties_seen
    # Quantile indices: the float32 product truncated is the exact floor up to 10^6.
    for n in [1, 2, 3, 4, 5, 999_999, 1_000_000] + list(rng.integers(1, 1_000_000, 200)):
        for q, num in ((0.25, 1), (0.5, 2), (0.75, 3)):
            assert quantile_index(q, int(n)) == num * (int(n) - 1) // 4, (q, n)
    # Edges worked by hand: opposite task vectors divide by zero; one other model is refused.
    base = np.zeros((2, 2))
    d = np.array([[0.25, -0.25], [0.25, 0.25]])
    for refused in ([base, base + d, base - d], [base, base + d]):
        try:
            model_stock(refused, 0, None, {"filter_wise": False}, "x")
            raise AssertionError("accepted")
        except ValueError:
            pass
    print(f"oracle_fusion self-check passed ({compared} comparisons with torch)")


if __name__ == "__main__":
    _self_check()
