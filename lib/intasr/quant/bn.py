"""BatchNorm folding into a preceding conv, and its inverse (restoring BN into a folded conv).

Folding (eval-mode BN after a conv with weight W [Cout, Cin/g, K], bias b or None):

    BN(z) = gamma * (z - mean) / sqrt(var + eps) + beta,   z = W * x + b
    s   = gamma / sqrt(var + eps)                           (per output channel)
    W_f = s[:, None, None] * W,   b_f = s * (b - mean) + beta     =>  BN(W * x + b) = W_f * x + b_f

Computed in float64 and returned in W's dtype.

Restoring (``bn_from_stats``): a folded conv (W_f, b_f) whose output y = W_f * x + b_f has
measured per-channel mean mu and variance v is written as a bias-free conv W = W_f followed by BN:

    z = W_f * x                 (mean mu_z = mu - b_f, variance v: a bias shifts no variance)
    running_mean = mu_z, running_var = v, gamma = sqrt(v + eps), beta = mu_z + b_f
    BN(z) = sqrt(v+eps) * (z - mu_z) / sqrt(v+eps) + mu_z + b_f = z + b_f = y     for every x.

The identity holds for every channel, including zero-variance ones (gamma = sqrt(eps)), and the
BN statistics are exactly what the BN would have seen on the measurement data, which is what the
zero-shot loss (paper Eq. 2) needs. Folding the restored BN back gives W_f, b_f again.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

__all__ = ["BNParams", "bn_params", "fold_batchnorm", "bn_from_stats", "unfold_batchnorm"]


class BNParams(NamedTuple):
    mean: torch.Tensor
    var: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor
    eps: float


def bn_params(bn) -> BNParams:
    """BNParams from an nn.BatchNorm1d (affine or not) or a (mean, var, gamma, beta, eps) tuple."""
    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("BatchNorm without running statistics cannot be folded")
        c = bn.num_features
        gamma = bn.weight.detach() if bn.weight is not None else torch.ones(c)
        beta = bn.bias.detach() if bn.bias is not None else torch.zeros(c)
        return BNParams(bn.running_mean.detach(), bn.running_var.detach(), gamma, beta, float(bn.eps))
    mean, var, gamma, beta, eps = bn
    as_t = lambda v: torch.as_tensor(v).detach()  # noqa: E731
    return BNParams(as_t(mean), as_t(var), as_t(gamma), as_t(beta), float(eps))


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn):
    """(W, b, BN) -> (W_f, b_f) with BN(conv(x; W, b)) == conv(x; W_f, b_f) (module doc)."""
    p = bn_params(bn)
    out_dtype = weight.dtype
    w = weight.detach().to(torch.float64)
    c = w.shape[0]
    b = torch.zeros(c, dtype=torch.float64) if bias is None else bias.detach().to(torch.float64)
    mean, var, gamma, beta = (t.to(torch.float64).reshape(c) for t in (p.mean, p.var, p.gamma, p.beta))
    s = gamma / torch.sqrt(var + p.eps)
    w_f = w * s.reshape((c,) + (1,) * (w.dim() - 1))
    b_f = s * (b - mean) + beta
    return w_f.to(out_dtype), b_f.to(out_dtype)


def bn_from_stats(mean, var, eps: float, target_weight: torch.Tensor,
                  target_bias: torch.Tensor | None = None):
    """Restore a BN behind a folded conv (module doc).

    ``mean``, ``var``: per-channel mean and (population) variance of the folded conv's output
    y = W_f * x + b_f, measured on real data; ``target_weight`` W_f, ``target_bias`` b_f (None =
    0). Returns ``(weight, bn)``: a bias-free conv weight (a copy of W_f) and an eval-mode
    nn.BatchNorm1d with running_mean = mean - b_f, running_var = var, weight = sqrt(var + eps),
    bias = mean (= running_mean + b_f), so that bn(conv(x; weight)) == conv(x; W_f) + b_f.
    Negative variances (round-off) are clamped to 0.
    """
    from ..models.bn import set_identity_affine   # the identity itself (models/bn.py)

    w = target_weight.detach().clone()
    dtype = w.dtype if w.is_floating_point() else torch.float32
    c = w.shape[0]
    mu = torch.as_tensor(mean, dtype=torch.float64).reshape(c)
    v = torch.clamp(torch.as_tensor(var, dtype=torch.float64).reshape(c), min=0.0)
    b_f = (torch.zeros(c, dtype=torch.float64) if target_bias is None
           else target_bias.detach().to(torch.float64).reshape(c))
    bn = nn.BatchNorm1d(c, eps=eps, momentum=None).to(dtype)
    with torch.no_grad():
        bn.running_mean.copy_((mu - b_f).to(dtype))
        bn.running_var.copy_(v.to(dtype))
    set_identity_affine(bn, b_f)
    bn.eval()
    return w, bn


def unfold_batchnorm(w_folded: torch.Tensor, b_folded: torch.Tensor | None, mean, var,
                     eps: float = 1e-3):
    """Same as ``bn_from_stats(mean, var, eps, w_folded, b_folded)``, argument order of a fold."""
    return bn_from_stats(mean, var, eps, w_folded, b_folded)
