"""numpy float64 evaluations of mergekit's spherical merges, written from
mergekit's code (mergekit/merge_methods/slerp.py, nuslerp.py,
multislerp.py, karcher.py) line by line on whole tensors, with float64 in
place of mergekit's float32 (slerp) or the models' dtype (the others).
Importing this module registers them in mergekit_oracle.METHODS.

Where mergekit raises for a tensor, these raise too (the tests expect soupkit
to refuse those configurations).
"""
import numpy as np

import mergekit_oracle
from mergekit_oracle import REQUIRED


def _lerp(t, v0, v1):
    return (1 - t) * v0 + t * v1


def slerp_vectors(t, v0, v1, dot_threshold=0.9995, eps=1e-8):
    """mergekit.merge_methods.slerp.slerp."""
    v0_copy, v1_copy = v0.copy(), v1.copy()

    def normalize(v):
        n = np.linalg.norm(v)
        return v / n if n > eps else v

    v0, v1 = normalize(v0), normalize(v1)
    dot = np.sum(v0 * v1)
    if np.abs(dot) > dot_threshold:
        return _lerp(t, v0_copy, v1_copy)
    theta_0 = np.arccos(dot)
    sin_theta_0 = np.sin(theta_0)
    theta_t = theta_0 * t
    s0 = np.sin(theta_0 - theta_t) / sin_theta_0
    s1 = np.sin(theta_t) / sin_theta_0
    return s0 * v0_copy + s1 * v1_copy


def slerp(tensors, base_index, p, g, name):
    """SlerpTask.execute: one input is returned; else exactly two, the base first."""
    if len(tensors) == 1:
        return tensors[0]
    if len(tensors) != 2 or base_index is None:
        raise ValueError("Slerp merge expects exactly two models")
    other = 1 - base_index
    return slerp_vectors(g["t"], tensors[base_index], tensors[other])


def nuslerp_vectors(t, v0, v1, dim=-1, eps=1e-8, flatten=False):
    """mergekit.merge_methods.nuslerp.nuslerp (numpy: transposes and a boolean mask as torch's)."""
    out_shape = v0.shape

    def normalize(x, eps=1e-7):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)

    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = np.swapaxes(v0, dim, -1), np.swapaxes(v1, dim, -1)
    v0_u, v1_u = normalize(v0), normalize(v1)
    cos_theta = np.sum(v0_u * v1_u, axis=-1, keepdims=True)
    theta = np.arccos(np.clip(cos_theta, -1, 1))
    sin_theta = np.sin(theta)
    colinear = np.abs(sin_theta) < eps  # (keepdims: broadcasts over each vector)
    with np.errstate(divide="ignore", invalid="ignore"):
        res = (np.sin((1 - t) * theta) * v0 + np.sin(t * theta) * v1) / sin_theta
    res = np.where(colinear, (1 - t) * v0 + t * v1, res)
    if dim != -1 and not flatten:
        res = np.swapaxes(res, dim, -1)
    return res.reshape(out_shape)


def nuslerp(tensors, base_index, p, g, name):
    """NuSlerpTask.execute."""
    if len(tensors) == 1:
        return tensors[0]
    others = [i for i in range(len(tensors)) if i != base_index]
    if base_index is not None and len(tensors) != 3:
        raise ValueError("NuSlerp base model can not be one of the two models to merge")
    if len(others) != 2:
        raise ValueError("NuSlerp merge expects exactly two models (plus optional base model)")
    weights = [p[i]["weight"] for i in others]
    t = 0.5 if abs(sum(weights)) < 1e-6 else weights[1] / sum(weights)
    dim = 0 if g["nuslerp_row_wise"] else -1
    v0, v1 = tensors[others[0]], tensors[others[1]]
    if base_index is None:
        return nuslerp_vectors(t, v0, v1, dim=dim, flatten=g["nuslerp_flatten"])
    base = tensors[base_index]
    return base + nuslerp_vectors(t, v0 - base, v1 - base, dim=dim, flatten=g["nuslerp_flatten"])


def multislerp_vectors(tensors, weight, base_tensor=None, normalize_weights=True, eps=1e-8):
    """mergekit.merge_methods.multislerp.multislerp."""
    if len(tensors) == 1:
        return tensors[0]
    tensors = np.stack(tensors, axis=0)
    if base_tensor is not None:
        tensors = tensors - base_tensor
    tensors_flat = tensors.reshape(tensors.shape[0], -1)
    weights = np.asarray(weight, dtype=np.float64)
    if normalize_weights:
        weights = weights / weights.sum()
    norms = np.linalg.norm(tensors_flat, axis=-1, keepdims=True)
    unit_tensors = tensors_flat / (norms + eps)
    mean = (unit_tensors * weights.reshape(-1, 1)).sum(0)
    mean_norm = np.linalg.norm(mean)
    if mean_norm < eps:
        if tensors.shape[0] == 2:
            res = (tensors[0] * weights[0] + tensors[1] * weights[1]).reshape(tensors.shape[1:])
            return res + base_tensor if base_tensor is not None else res
        raise ValueError("The weighted sum of the input tensors is zero.")
    mean = mean / mean_norm
    dots = (unit_tensors * mean).sum(-1, keepdims=True)
    tangent_vectors = unit_tensors - dots * mean
    tangent_result = (tangent_vectors * weights.reshape(-1, 1)).sum(0)
    tangent_norm = np.linalg.norm(tangent_result) + eps
    result = mean * np.cos(tangent_norm) + tangent_result * (np.sin(tangent_norm) / tangent_norm)
    avg_norm = (norms.squeeze(-1) * weights).sum()
    result = (result * avg_norm).reshape(tensors.shape[1:])
    return result + base_tensor if base_tensor is not None else result


def multislerp(tensors, base_index, p, g, name):
    """easy_define's execute: the base's tensor apart, the others in order."""
    others = [i for i in range(len(tensors)) if i != base_index]
    if not others:
        raise ValueError("no model besides the base")
    base = tensors[base_index] if base_index is not None else None
    return multislerp_vectors([tensors[i] for i in others], [p[i]["weight"] for i in others], base,
                              normalize_weights=g["normalize_weights"], eps=g["eps"])


def karcher_vectors(tensors, alphas, max_iter=10, tol=1e-5):
    """mergekit.merge_methods.karcher.karcher_merge_tensors (returns the result and the iterations run)."""
    if len(tensors) == 1:
        return tensors[0], 0
    norms, units = [], []
    for t in tensors:
        n = np.linalg.norm(t)
        if n == 0.0:
            norms.append(0.0)
            units.append(np.zeros_like(t))
        else:
            norms.append(n)
            units.append(t / n)
    valid = [i for i, n in enumerate(norms) if n > tol]
    if not valid:
        return np.zeros_like(tensors[0]), 0
    valid_alphas = [alphas[i] for i in valid]
    alpha_sum = sum(valid_alphas)
    normalized_alphas = [a / alpha_sum for a in valid_alphas]
    valid_units = [units[i] for i in valid]
    u = np.zeros_like(valid_units[0])
    for a, ui in zip(normalized_alphas, valid_units):
        u = u + a * ui
    norm_u = np.linalg.norm(u)
    u = valid_units[0].copy() if norm_u < tol else u / norm_u
    iterations = 0
    for _ in range(max_iter):
        iterations += 1
        T = np.zeros_like(u)
        for a, ui in zip(normalized_alphas, valid_units):
            dot = np.clip(np.dot(u.ravel(), ui.ravel()), -1.0, 1.0)
            theta = np.arccos(dot)
            if theta < tol:
                continue
            T = T + a * (theta / np.sin(theta)) * (ui - dot * u)
        norm_T = np.linalg.norm(T)
        if norm_T < tol:
            break
        u = np.cos(norm_T) * u + np.sin(norm_T) * (T / norm_T)
        u_norm = np.linalg.norm(u)
        if u_norm > tol:
            u = u / u_norm
    s = 0.0
    for a, n in zip(alphas, norms):
        s += a * n
    return s * u, iterations


def karcher(tensors, base_index, p, g, name):
    """KarcherTask.execute: every model (the base too), equal weights."""
    return karcher_vectors(tensors, [1.0 / len(tensors)] * len(tensors), max_iter=g["max_iter"], tol=g["tol"])[0]


mergekit_oracle.METHODS.update({
    "slerp": ([("t", False, REQUIRED)], slerp),
    "nuslerp": ([("weight", True, REQUIRED), ("nuslerp_row_wise", False, False), ("nuslerp_flatten", False, True)],
                nuslerp),
    "multislerp": ([("weight", True, REQUIRED), ("normalize_weights", False, True), ("eps", False, 1e-8)],
                   multislerp),
    "karcher": ([("max_iter", False, 10), ("tol", False, 1e-5)], karcher),
})
