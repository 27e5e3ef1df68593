"""Independent float64 reference for mergekit's `ties` and `task_arithmetic`
(docs/merge_methods_spec.md), in numpy: nothing shared with soupkit's C++.

Per tensor, with soupkit's sharper definition where mergekit leaves room:
magnitudes are ranked exactly in float64, equal magnitudes by lower flat
(row-major) index first, and all arithmetic is float64. Everything else
(k = int(density * numel), density >= 1 keeps the delta, the sign election
and disjoint mean, the divisor rules, lambda after normalisation, L1
rescaling) is mergekit's.

Run directly (/usr/bin/python3 ties_oracle.py) for a self-check: exact cases
worked by hand, a brute-force ranking, and a comparison with a direct
mergekit-style evaluation in torch when torch is importable.
"""
import numpy as np

DIVISOR_EPS = 1e-8   # task_arithmetic: a weight sum below this in magnitude divides by 1
RESCALE_EPS = 1e-7   # rescale: either L1 norm below this leaves the masked delta unscaled


def keep_count(density, numel):
    """Elements magnitude sparsification keeps: int(density * numel), all for density >= 1."""
    if density >= 1:
        return numel
    return int(density * numel)


def magnitude_mask(delta, density):
    """Boolean mask (delta's shape) of the k largest magnitudes, equal ones by
    lower flat index first. Raises ValueError for NaN, and when k < 1 (mergekit
    stops there with an assertion)."""
    flat = np.asarray(delta, dtype=np.float64).ravel()
    if np.isnan(flat).any():
        raise ValueError(f"element {int(np.flatnonzero(np.isnan(flat))[0])} is NaN")
    if density >= 1:
        return np.ones(np.shape(delta), dtype=bool)
    k = keep_count(density, flat.size)
    if k < 1:
        raise ValueError(f"density {density} keeps no element of {flat.size}")
    order = np.argsort(-np.abs(flat), kind="stable")  # stable: ties stay in index order
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(np.shape(delta))


def sparsify_magnitude(delta, density, rescale=False):
    """mergekit's magnitude sparsification of one task vector, float64."""
    delta = np.asarray(delta, dtype=np.float64)
    if density >= 1:
        return delta.copy()
    masked = delta * magnitude_mask(delta, density).astype(np.float64)
    if rescale:
        before, after = np.abs(delta).sum(), np.abs(masked).sum()
        if before >= RESCALE_EPS and after >= RESCALE_EPS:
            masked = masked * (before / after)
    return masked


def _per_model(value, n, name):
    values = [float(value)] * n if np.isscalar(value) else [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{len(values)} {name} values for {n} models")
    return values


def _task_vectors(base, models):
    base = np.asarray(base, dtype=np.float64)
    deltas = []
    for i, m in enumerate(models):
        m = np.asarray(m, dtype=np.float64)
        if m.shape != base.shape:
            raise ValueError(f"model {i} has shape {m.shape}, the base {base.shape}")
        deltas.append(m - base)
    return base, deltas


def _weights_column(weights, ndim):
    """The weights shaped to broadcast over a stack of task vectors."""
    return np.asarray(weights, dtype=np.float64).reshape((len(weights),) + (1,) * ndim)


def ties(base, models, weights, density, lambda_=1.0, normalize=True, rescale=False):
    """TIES: magnitude-sparsify each task vector, elect a sign per element by
    the sum of the weighted sparsified deltas (>= 0 elects +), keep the weighted
    deltas of that sign (zeros never agree), average them over the weights of
    the agreeing models (normalize; a zero divisor becomes 1), scale by
    lambda_, add to the base. density: one value or one per model."""
    base, deltas = _task_vectors(base, models)
    if not deltas:
        return base.copy()
    n = len(deltas)
    weights = _per_model(weights, n, "weight")
    densities = _per_model(density, n, "density")
    stack = np.stack([sparsify_magnitude(d, p, rescale) for d, p in zip(deltas, densities)])
    w = _weights_column(weights, base.ndim)
    weighted = stack * w
    elected = np.where(weighted.sum(axis=0) >= 0, 1.0, -1.0)
    agree = np.sign(weighted) == elected
    mixed = (weighted * agree).sum(axis=0)
    divisor = (w * agree).sum(axis=0)
    divisor = np.where(divisor == 0, 1.0, divisor)
    if normalize:
        mixed = mixed / divisor
    if lambda_ != 1:
        mixed = mixed * lambda_
    return base + mixed


def task_arithmetic(base, models, weights, lambda_=1.0, normalize=False):
    """Task arithmetic: base + lambda_ * sum_i w_i (M_i - base), divided by
    sum_i w_i first when normalize (by 1 if that sum is below 1e-8 in magnitude)."""
    base, deltas = _task_vectors(base, models)
    if not deltas:
        return base.copy()
    weights = _per_model(weights, len(deltas), "weight")
    mixed = (np.stack(deltas) * _weights_column(weights, base.ndim)).sum(axis=0)
    divisor = sum(weights)
    if abs(divisor) < DIVISOR_EPS:
        divisor = 1.0
    if normalize:
        mixed = mixed / divisor
    if lambda_ != 1:
        mixed = mixed * lambda_
    return base + mixed


# --- self-check -----------------------------------------------------------

def _check_by_hand():
    def same(a, b):
        assert np.array_equal(np.asarray(a), np.asarray(b)), (a, b)

    # Ties by lower flat index; -0.0 and 0.0 are both magnitude 0.
    same(magnitude_mask(np.array([1.0, -1.0, 1.0, 2.0]), 0.5), [True, False, False, True])
    same(magnitude_mask(np.array([0.0, -0.0, 0.0, -3.0]), 0.75), [True, True, False, True])
    same(magnitude_mask(np.array([[5.0, -1.0], [1.0, -5.0]]), 0.75), [[True, True], [False, True]])
    # k as Python computes it; density >= 1 keeps everything, unscaled.
    assert keep_count(0.29, 100) == 28 and keep_count(0.3, 10) == 3 and keep_count(1.5, 7) == 7
    d = np.array([3.0, -1.0, 0.5])
    same(sparsify_magnitude(d, 1.0, rescale=True), d)
    same(sparsify_magnitude(d, 0.34, rescale=True), [4.5, 0.0, 0.0])  # L1 4.5 kept
    for bad in (0.0, 0.3):  # k = 0 of 3
        try:
            magnitude_mask(d, bad)
        except ValueError:
            continue
        raise AssertionError(f"density {bad} on 3 elements should be refused")
    # Sign election: a zero sum elects +; zeros never agree; no agreeing model gives 0.
    base = np.array([10.0, 10.0, 10.0, 10.0])
    a = base + np.array([1.0, 2.0, 0.0, -4.0])
    b = base + np.array([-1.0, -3.0, 0.0, 1.0])
    same(ties(base, [a, b], [1.0, 1.0], 1.0), [11.0, 7.0, 10.0, 6.0])
    same(ties(base, [a, b], [1.0, 1.0], 1.0, normalize=False), [11.0, 7.0, 10.0, 6.0])
    # Weights: the disjoint mean divides by the agreeing weights; a negative weight flips the vote.
    same(ties(base, [a, b], [3.0, 1.0], 1.0), [11.0, 12.0, 10.0, 6.0])
    same(ties(base, [a, b], [1.0, -1.0], 1.0, normalize=False), [12.0, 15.0, 10.0, 10.0 - 5.0])
    # Density prunes before the election: b keeps only its -3.
    same(ties(base, [a, b], [1.0, 1.0], [1.0, 0.25]), [11.0, 7.0, 10.0, 6.0])
    same(ties(base, [a, b], [1.0, 1.0], [0.25, 0.25]), [10.0, 7.0, 10.0, 6.0])
    # Lambda after the mean; task arithmetic's sum and its guarded divisor.
    same(ties(base, [a, b], [1.0, 1.0], 1.0, lambda_=0.5), [10.5, 8.5, 10.0, 8.0])
    same(task_arithmetic(base, [a, b], [1.0, 1.0]), [10.0, 9.0, 10.0, 7.0])
    same(task_arithmetic(base, [a, b], [1.0, 1.0], normalize=True), [10.0, 9.5, 10.0, 8.5])
    same(task_arithmetic(base, [a, b], [1.0, -1.0], normalize=True), [12.0, 15.0, 10.0, 5.0])
    same(ties(base, [], [], 0.5), base)


def _check_against_brute_force(rng):
    """magnitude_mask against sorting (-|x|, index) pairs in plain Python."""
    for _ in range(200):
        size = int(rng.integers(1, 60))
        x = rng.choice([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, 1e-310], size=size)
        density = float(rng.uniform(0.0, 1.2))
        k = keep_count(density, size)
        if k < 1:
            continue
        ranked = sorted(range(size), key=lambda i: (-abs(x[i]), i))
        expected = np.zeros(size, dtype=bool)
        expected[ranked[:k]] = True
        assert np.array_equal(magnitude_mask(x, density), expected), (x, density)


def _mergekit_style_torch(torch, base, models, weights, densities, lambda_, normalize, rescale, ties_merge,
                          int8_mask=False):
    """The per-tensor steps of docs/merge_methods_spec.md written directly in
    torch, float64 tensors on the CPU, ranking by float32 magnitudes and an
    unstable argsort as mergekit does."""
    b = torch.tensor(base, dtype=torch.float64)
    deltas = []
    for m, density in zip(models, densities):
        delta = torch.tensor(m, dtype=torch.float64) - b
        if ties_merge and density < 1:
            k = int(density * delta.numel())
            top = torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]
            keep = torch.zeros(delta.numel(), dtype=delta.dtype)
            keep[top] = 1
            pruned = delta * keep.reshape(delta.shape)
            if rescale:
                before, after = delta.abs().sum(), pruned.abs().sum()
                if before >= RESCALE_EPS and after >= RESCALE_EPS:
                    pruned = pruned * (before / after)
            delta = pruned
        deltas.append(delta)
    stack = torch.stack(deltas)
    w = torch.tensor(weights, dtype=stack.dtype).reshape((-1,) + (1,) * b.dim())
    weighted = stack * w
    if ties_merge:
        sign_dtype = torch.int8 if int8_mask else stack.dtype
        elected = (weighted.sum(dim=0) >= 0).to(sign_dtype) * 2 - 1
        agree = weighted.sign().to(sign_dtype) == elected
        mixed = (weighted * agree).sum(dim=0)
        divisor = (w * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < DIVISOR_EPS] = 1
    if normalize:
        mixed = mixed / divisor
    if lambda_ != 1:
        mixed = mixed * lambda_
    return (b + mixed).numpy()


def _check_against_torch(rng):
    try:
        import torch
    except ImportError:
        print("torch is not importable: the torch comparison is skipped")
        return 0
    cases = 0
    for shape in [(6, 11), (97,), (3, 4, 5), (1, 64)]:
        for n in (1, 2, 4):
            base = rng.normal(size=shape)
            models = [base + rng.normal(scale=rng.uniform(0.01, 1.0), size=shape) for _ in range(n)]
            models[0].reshape(-1)[:5] = base.reshape(-1)[:5]  # an unchanged corner
            for m in models:
                m.reshape(-1)[7] = base.reshape(-1)[7]       # unchanged in every model
            # The kept sets are comparable only if float32 keeps the nonzero magnitudes apart.
            for m in models:
                mag = np.abs(m - base)[np.abs(m - base) > 0].astype(np.float32)
                assert np.unique(mag).size == mag.size, "float32 magnitude collision: pick another seed"
            weights = list(rng.uniform(-0.5, 1.5, size=n))
            densities = list(rng.choice([0.1, 0.35, 0.8, 1.0, 1.3], size=n))
            for normalize in (True, False):
                for lambda_ in (1.0, 0.6):
                    for rescale in (False, True):
                        want = ties(base, models, weights, densities, lambda_, normalize, rescale)
                        got = _mergekit_style_torch(torch, base, models, weights, densities, lambda_, normalize,
                                                    rescale, ties_merge=True)
                        np.testing.assert_allclose(want, got, rtol=1e-12, atol=1e-14)
                        with_int8 = _mergekit_style_torch(torch, base, models, weights, densities, lambda_,
                                                          normalize, rescale, ties_merge=True, int8_mask=True)
                        assert np.array_equal(got, with_int8), "int8_mask changed the result"
                        cases += 1
                    want = task_arithmetic(base, models, weights, lambda_, normalize)
                    got = _mergekit_style_torch(torch, base, models, weights, [1.0] * n, lambda_, normalize,
                                                False, ties_merge=False)
                    np.testing.assert_allclose(want, got, rtol=1e-12, atol=1e-14)
                    cases += 1
            # Weights summing to nothing: task arithmetic divides by 1.
            if n == 2:
                for w in ([1.0, -1.0], [1.0, -1.0 + 1e-9]):
                    want = task_arithmetic(base, models, w, 1.0, True)
                    got = _mergekit_style_torch(torch, base, models, w, [1.0, 1.0], 1.0, True, False, False)
                    np.testing.assert_allclose(want, got, rtol=1e-12, atol=1e-14)
                    cases += 1
    return cases


if __name__ == "__main__":
    generator = np.random.default_rng(20260617)
    _check_by_hand()
    _check_against_brute_force(generator)
    compared = _check_against_torch(generator)
    print(f"ties_oracle self-check passed ({compared} comparisons with torch)")
