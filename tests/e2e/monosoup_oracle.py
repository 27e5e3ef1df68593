"""Independent float64 reference for MonoSoup, straight from the formulas
(numpy's SVD; nothing shared with soupkit's C++ code)."""
import math

import numpy as np

EPS = 1e-12


def monosoup_tensor(w0, w1, mode="effective-rank", variance_threshold=0.8, min_rel_update=1e-6):
    """Returns (result float64 array or None if kept, info dict)."""
    w0 = np.asarray(w0, dtype=np.float64)
    w1 = np.asarray(w1, dtype=np.float64)
    dw = w1 - w0
    delta_norm = np.linalg.norm(dw)
    base_norm = np.linalg.norm(w0)
    if base_norm < EPS:
        if delta_norm < EPS:
            return None, {"reason": "zero update"}
    elif delta_norm / (base_norm + EPS) < min_rel_update:
        return None, {"reason": "update below --min-rel-update"}
    m = w1.shape[0]
    mat = dw.reshape(m, -1)
    u, s, vt = np.linalg.svd(mat, full_matrices=False)
    r = len(s)
    if np.sum(s ** 2) < EPS:
        return None, {"reason": "zero update"}
    p = s / (np.sum(s) + EPS)
    h = -np.sum(p * np.log(p + EPS))
    eff = math.exp(h)
    if mode == "effective-rank":
        k = int(min(max(math.ceil(eff), 1), r))
    else:
        ratio = np.cumsum(s ** 2) / (np.sum(s ** 2) + EPS)
        hits = np.nonzero(ratio >= variance_threshold)[0]
        k = int(hits[0] + 1) if len(hits) else r
    p_k = np.sum(s[:k] ** 2) / (np.sum(s ** 2) + EPS)
    rho = (s[k] / (s[0] + EPS)) ** 2 if k < r else 0.0
    cos_a = math.sqrt(min(max(1 - p_k, 0.0), 1.0))
    lam_low = min(max(rho + (1 - rho) * cos_a, 0.0), 1.0)
    lam_high = min(max(1 - (rho + (1 - rho) * cos_a), 0.0), 1.0)
    high = (u[:, :k] * s[:k]) @ vt[:k]
    low = mat - high
    result = w0 + (lam_high * high + lam_low * low).reshape(w1.shape)
    return result, {"k": k, "effective_rank": eff, "P_k": p_k, "rho": rho, "lambda_high": lam_high,
                    "lambda_low": lam_low, "delta_norm": delta_norm}
