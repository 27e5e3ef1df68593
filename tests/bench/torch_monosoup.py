"""MonoSoup's per-matrix algorithm as the authors' PyTorch code runs it:
torch.linalg.svd of the float32 update, the effective-rank split and the
spectral coefficients, W0 + lambda_high dW_high + lambda_low dW_low. The
reference side of the MonoSoup benchmarks (nothing shared with soupkit)."""
import torch

EPS = 1e-12


def torch_monosoup_matrix(w0f, w1f):
    """float32 W0, W1 of one tensor -> the float32 result, or None if the
    update is below the 1e-6 relative threshold (the tensor is kept)."""
    dw = (w1f - w0f).reshape(w1f.shape[0], -1)
    if torch.linalg.norm(dw) / (torch.linalg.norm(w0f) + EPS) < 1e-6:
        return None
    u, s, vh = torch.linalg.svd(dw, full_matrices=False)
    r = s.numel()
    p = s / (s.sum() + EPS)
    h = -(p * torch.log(p + EPS)).sum()
    k = int(min(max(int(torch.ceil(torch.exp(h))), 1), r))
    p_k = (s[:k] ** 2).sum() / ((s ** 2).sum() + EPS)
    rho = (s[k] / (s[0] + EPS)) ** 2 if k < r else torch.tensor(0.0)
    cos_a = torch.sqrt(torch.clamp(1 - p_k, 0, 1))
    lam_low = torch.clamp(rho + (1 - rho) * cos_a, 0, 1)
    lam_high = torch.clamp(1 - (rho + (1 - rho) * cos_a), 0, 1)
    high = (u[:, :k] * s[:k]) @ vh[:k]
    return w0f + (lam_high * high + lam_low * (dw - high)).reshape(w1f.shape)
