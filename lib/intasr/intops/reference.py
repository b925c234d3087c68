"""Independent NumPy reference of the integer ops (no torch), for bit-exactness tests.

Written the plain way on purpose: int64 NumPy arrays, explicit loops over groups and kernel
taps, floor division instead of shifts. It shares no code with the torch kernels
(intasr.intops.conv, intasr.quant.dyadic), so agreement means both implement the spec:

  conv1d:     acc[b, o, t] = bias[o] + sum_{c,k} w[o, c, k] * xpad[b, g*Cin_g + c, t*stride + k*dilation]
  requantize: y = clamp(floor((acc * M + floor(2^shift / 2)) / 2^shift), qmin, qmax)
  relu:       max(q, 0)
  mask_time:  q[b, :, t] = 0 for t >= lengths[b]

All inputs are converted to int64; a product that would leave int64 raises (checked with
Python ints), so the reference itself can never wrap around.
"""
from __future__ import annotations

import numpy as np

__all__ = ["conv1d_ref", "requantize_ref", "rescale_ref", "relu_ref", "add_ref", "mask_time_ref", "qrange_ref"]

_I64_MAX = (1 << 63) - 1


def qrange_ref(bits: int, signed: bool = True) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def conv1d_ref(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1) -> np.ndarray:
    """Exact integer conv1d in int64 by a loop over groups and kernel taps."""
    x = np.asarray(x).astype(np.int64)
    w = np.asarray(w).astype(np.int64)
    B, Cin, T = x.shape
    Cout, cin_g, K = w.shape
    assert Cin == cin_g * groups and Cout % groups == 0
    cout_g = Cout // groups
    pl, pr = (padding, padding) if np.isscalar(padding) else padding
    # int64 safety of the reference itself, with Python ints
    wsum = int(np.abs(w).reshape(Cout, -1).sum(axis=1).max()) if w.size else 0
    xmax = int(np.abs(x).max()) if x.size else 0
    bmax = int(np.abs(np.asarray(bias, dtype=np.int64)).max()) if bias is not None else 0
    assert wsum * xmax + bmax <= _I64_MAX, "reference conv would overflow int64"
    xp = np.zeros((B, Cin, T + pl + pr), dtype=np.int64)
    xp[:, :, pl : pl + T] = x
    t_out = (T + pl + pr - dilation * (K - 1) - 1) // stride + 1
    assert t_out >= 1
    out = np.zeros((B, Cout, t_out), dtype=np.int64)
    for g in range(groups):
        xg = xp[:, g * cin_g : (g + 1) * cin_g, :]              # [B, cin_g, Tp]
        wg = w[g * cout_g : (g + 1) * cout_g]                    # [cout_g, cin_g, K]
        for k in range(K):
            start = k * dilation
            xs = xg[:, :, start : start + stride * (t_out - 1) + 1 : stride]  # [B, cin_g, t_out]
            # out[b, o, t] += sum_c wg[o, c, k] * xs[b, c, t]
            out[:, g * cout_g : (g + 1) * cout_g, :] += np.einsum("oc,bct->bot", wg[:, :, k], xs)
    if bias is not None:
        out += np.asarray(bias, dtype=np.int64).reshape(1, Cout, 1)
    return out


def _per_channel(v, ndim: int, axis: int) -> np.ndarray:
    a = np.asarray(v, dtype=np.int64)
    if a.size == 1:
        return a.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return a.reshape(shape)


def rescale_ref(acc, M, shift, axis: int = 1) -> np.ndarray:
    """floor((acc * M + 2^shift // 2) / 2^shift) in int64 (round half up)."""
    acc = np.asarray(acc).astype(np.int64)
    Mi = _per_channel(M, acc.ndim, axis)
    si = _per_channel(shift, acc.ndim, axis)
    bound = int(np.abs(acc).max()) if acc.size else 0
    assert bound * int(np.abs(Mi).max()) + (1 << 61) <= _I64_MAX, "reference requant would overflow int64"
    denom = np.left_shift(np.int64(1), si)
    return np.floor_divide(acc * Mi + denom // 2, denom)


def requantize_ref(acc, M, shift, out_bits: int, signed: bool = True, axis: int = 1) -> np.ndarray:
    lo, hi = qrange_ref(out_bits, signed)
    return np.clip(rescale_ref(acc, M, shift, axis), lo, hi)


def relu_ref(q) -> np.ndarray:
    return np.maximum(np.asarray(q).astype(np.int64), 0)


def add_ref(a, b) -> np.ndarray:
    return np.asarray(a).astype(np.int64) + np.asarray(b).astype(np.int64)


def mask_time_ref(q, lengths) -> np.ndarray:
    q = np.asarray(q).astype(np.int64).copy()
    for b, n in enumerate(np.asarray(lengths).reshape(-1)):
        q[b, ..., int(n):] = 0
    return q
