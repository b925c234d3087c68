"""Output-aware weight rounding (GPTQ, Frantar et al. 2023; the one-shot form of OBQ/AdaRound's
idea): round weights so that the conv's *output* on calibration inputs changes least, not the
weights themselves.

For a layer y = W x with per-output-channel scales s (fixed beforehand, e.g. min/max), every
output row is independent and the loss is (w - q)^T H (w - q) with H = E[x x^T] over calibration
frames (x: the im2col column of the conv input). GPTQ quantizes the columns of W one at a time,
in order, and spreads each column's rounding error onto the columns not yet quantized through
the upper Cholesky factor U of H^-1:

    for i = 0 .. n-1:   q_i = s * clamp(round(w_i / s), lo, hi)
                        e   = (w_i - q_i) / U[i, i]
                        w_j -= e * U[i, j]            for every j > i

H is damped (H + damp * mean(diag H) * I) so that it is positive definite even for dead input
channels. The result is an ordinary integer weight tensor on the same grid as round-to-nearest:
the integer engine does not change. Zero-shot: H comes from the synthetic calibration batches.
"""

from __future__ import annotations

import torch

from .quantizer import qrange

__all__ = ["gptq_round", "MAX_COLUMNS"]

MAX_COLUMNS = 4096  # larger Cin/groups * K (dense Jasper convs) keep round-to-nearest: H would not fit


def _upper_cholesky_of_inverse(H: torch.Tensor, damp: float) -> torch.Tensor:
    n = H.shape[-1]
    d = torch.diagonal(H, dim1=-2, dim2=-1)
    H = H + (damp * d.mean(dim=-1).clamp_min(1e-12))[..., None, None] * torch.eye(n, dtype=H.dtype)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)


def gptq_round(w: torch.Tensor, scale: torch.Tensor, H: torch.Tensor, bits: int, damp: float = 0.01) -> torch.Tensor:
    """Integer codes (float64 tensor of integers) of w [Cout, n] on the grid scale[o] * q,
    q in qrange(bits), minimizing sum_o (w_o - s_o q_o)^T H (w_o - s_o q_o) greedily (module doc).

    H is [n, n] (one input space for every output row) or [Cout, n, n] (a space per row, e.g.
    depthwise convs: row o sees only its own channel)."""
    lo, hi = qrange(bits, signed=True)
    W = w.detach().to(torch.float64).clone()
    s = scale.detach().to(torch.float64).reshape(-1, 1)
    U = _upper_cholesky_of_inverse(H.to(torch.float64), damp)
    Q = torch.empty_like(W)
    per_row = U.dim() == 3
    for i in range(W.shape[1]):
        q = torch.clamp(torch.round(W[:, i:i + 1] / s), lo, hi)
        Q[:, i:i + 1] = q
        if per_row:
            err = (W[:, i] - q[:, 0] * s[:, 0]) / U[:, i, i]
            W[:, i + 1:] -= err[:, None] * U[:, i, i + 1:]
        else:
            err = (W[:, i] - q[:, 0] * s[:, 0]) / U[i, i]
            W[:, i + 1:] -= err[:, None] * U[i, i + 1:][None, :]
    return Q
