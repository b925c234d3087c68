"""Dyadic requantization (HAWQ-V3): multiply by a real m using only integer arithmetic.

Exact specification
-------------------
A positive real multiplier m (e.g. m = s_in * s_w / s_out) is replaced by the dyadic number
M / 2^shift, 0 <= M < 2^bits (bits = 31: M fits int32), 0 <= shift <= 62:

    (f, e) = frexp(m), f in [0.5, 1)          # m = f * 2^e, exact in float64
    M      = round_half_even(f * 2^bits)      # f * 2^bits is exact; 2^(bits-1) <= M <= 2^bits
    shift  = bits - e
    if M == 2^bits: M, shift = 2^(bits-1), shift - 1      # renormalize the rounding overflow

Relative error |M/2^shift - m| / m <= 2^-bits. Special ranges:
  * m >= 2^bits - 1/2 (shift would be < 0): ValueError.
  * m < 2^(bits-62) (shift would be > 62, e.g. m < 2^-31 for bits = 31): shift is capped at 62 and
    M = round_half_even(m * 2^62) < 2^(bits-1), i.e. fewer significant bits; M may be 0 for
    m < 2^-63. The absolute error |M/2^62 - m| <= 2^-63 stays negligible: for |acc| < 2^31 the
    product acc*m is off by < 2^-32.

Requantization of an integer accumulator acc (int tensor):

    y = clamp((acc * M + 2^(shift-1)) >> shift, qmin, qmax)       (shift = 0: y = acc * M)

computed in int64; ``>>`` is an arithmetic shift (floor division by 2^shift), so the result is
floor(acc * M / 2^shift + 1/2): round half up (ties go toward +inf: -2.5 -> -2, 2.5 -> 3).
acc * M + 2^(shift-1) must fit int64; ``requant_fits_int64`` checks a bound, and ``requantize``
checks the actual data by default (``check=True``; ValueError instead of silent wraparound).
Per-channel M / shift broadcast along ``axis`` (default 1: the channel axis of [B, C, T]).
No floating-point tensor is created inside ``requantize`` / ``rescale``.
"""
from __future__ import annotations

import numpy as np
import torch

from .quantizer import qrange, storage_dtype

__all__ = ["MAX_SHIFT", "dyadic_from_float", "dyadic_value", "requant_fits_int64", "requantize", "rescale"]

MAX_SHIFT = 62
_INT64_MAX = (1 << 63) - 1


def dyadic_from_float(m, bits: int = 31):
    """m -> (M, shift) with m ~= M / 2^shift (module doc). Scalar in -> np.int64 scalars out;
    array in -> int64 arrays of the same shape (per channel). m must be positive and finite."""
    if not 1 <= bits <= 62:
        raise ValueError("bits must be in 1..62")
    arr = np.asarray(m, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError("dyadic multiplier must be positive and finite")
    f, e = np.frexp(arr)
    M = np.rint(np.ldexp(f, bits)).astype(np.int64)
    shift = (bits - e).astype(np.int64)
    over = M == (1 << bits)
    M = np.where(over, M >> 1, M)
    shift = np.where(over, shift - 1, shift)
    if np.any(shift < 0):
        raise ValueError(f"multiplier too large for a {bits}-bit dyadic with shift >= 0: {arr.max()}")
    small = shift > MAX_SHIFT
    if np.any(small):
        M = np.where(small, np.rint(np.ldexp(arr, MAX_SHIFT)).astype(np.int64), M)
        shift = np.where(small, MAX_SHIFT, shift)
    if arr.ndim == 0:
        return np.int64(M), np.int64(shift)
    return M.astype(np.int64), shift.astype(np.int64)


def dyadic_value(M, shift):
    """Exact float64 value M / 2^shift (for diagnostics; float side)."""
    return np.ldexp(np.asarray(M, dtype=np.float64), -np.asarray(shift, dtype=np.int64))


def _as_int(v) -> list[int]:
    """Flatten an int scalar / array / tensor into Python ints; reject floats."""
    if isinstance(v, torch.Tensor):
        if v.is_floating_point() or v.is_complex():
            raise TypeError("M and shift must be integers")
        return [int(t) for t in v.reshape(-1).tolist()]
    a = np.asarray(v)
    if a.dtype.kind not in "iu":
        raise TypeError("M and shift must be integers")
    return [int(t) for t in a.reshape(-1)]


def requant_fits_int64(acc_bound: int, M, shift=None) -> bool:
    """True iff |acc| <= acc_bound guarantees acc*M + 2^(shift-1) fits int64 for every channel.

    Exact (Python ints). Without ``shift`` the worst rounding term 2^(MAX_SHIFT-1) is assumed.
    """
    Ms = _as_int(M)
    half = (1 << (MAX_SHIFT - 1)) if shift is None else max((1 << s) >> 1 for s in _as_int(shift))
    return int(acc_bound) * max(abs(x) for x in Ms) + half <= _INT64_MAX


def _channel_tensor(v, acc: torch.Tensor, axis: int) -> torch.Tensor:
    """int64 tensor of M or shift shaped to broadcast along ``axis`` of acc (1 element: scalar)."""
    if isinstance(v, torch.Tensor):
        if v.is_floating_point() or v.is_complex():
            raise TypeError("M and shift must be integer tensors")
        t = v.to(device=acc.device, dtype=torch.int64)
    else:
        a = np.asarray(v)
        if a.dtype.kind not in "iu":
            raise TypeError("M and shift must be integers")
        t = torch.from_numpy(np.ascontiguousarray(a.astype(np.int64))).to(acc.device)
    if t.numel() == 1:
        return t.reshape(())
    axis = axis % acc.dim()
    if t.numel() != acc.shape[axis]:
        raise ValueError(f"{t.numel()} per-channel values for axis {axis} of shape {tuple(acc.shape)}")
    shape = [1] * acc.dim()
    shape[axis] = -1
    return t.reshape(shape)


def rescale(q: torch.Tensor, M, shift, axis: int = 1, check: bool = True) -> torch.Tensor:
    """(q * M + 2^(shift-1)) >> shift in int64, no clamp (residual branches before summation)."""
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f"rescale needs an integer tensor, got {q.dtype}")
    Mt = _channel_tensor(M, q, axis)
    st = _channel_tensor(shift, q, axis)
    if check:
        Ms, ss = _as_int(M), _as_int(shift)
        if min(Ms) < 0 or min(ss) < 0 or max(ss) > MAX_SHIFT:
            raise ValueError("need M >= 0 and 0 <= shift <= 62")
        if q.numel():
            lo, hi = torch.aminmax(q)
            bound = max(abs(int(lo)), abs(int(hi)))
            if not requant_fits_int64(bound, M, shift):
                raise ValueError(f"|acc| up to {bound} times M overflows int64")
    one = torch.ones((), dtype=torch.int64, device=q.device)
    half = torch.bitwise_left_shift(one, st) >> 1
    return (q.to(torch.int64) * Mt + half) >> st


def requantize(acc: torch.Tensor, M, shift, out_bits: int, signed: bool = True,
               axis: int = 1, check: bool = True) -> torch.Tensor:
    """clamp((acc * M + 2^(shift-1)) >> shift, qrange(out_bits, signed)) (module doc).

    Returns dtype ``storage_dtype(out_bits, signed)`` (int8 for signed 8 bit, int16 for unsigned 8
    bit). ``check`` verifies the int64 product cannot wrap (one aminmax over acc).
    """
    lo, hi = qrange(out_bits, signed)
    y = rescale(acc, M, shift, axis=axis, check=check)
    return torch.clamp(y, lo, hi).to(storage_dtype(out_bits, signed))


def dyadic_error_rows(m, M, shift, channels) -> list[dict]:
    """For each channel index in `channels`: the real multiplier m, its dyadic (M, shift), the value
    M / 2^shift and the relative error |M/2^shift - m| / m, computed with exact fractions."""
    from fractions import Fraction

    rows = []
    for o in channels:
        exact = Fraction(int(M[o]), 2 ** int(shift[o]))
        rows.append({"channel": o, "m = s_w s_x / s_y": m[o], "M": int(M[o]), "shift": int(shift[o]),
                     "M / 2^shift": float(exact),
                     "relative error": float(abs(exact - Fraction(float(m[o]))) / Fraction(float(m[o])))})
    return rows


def requantize_against_exact(M, shift, m, seed: int, batch: int = 4, frames: int = 64,
                             acc_limit: int = 2**20, n_fraction: int = 50) -> dict:
    """Requantize seeded random accumulators in [-acc_limit, acc_limit) of shape [batch, channels,
    frames] (one channel per entry of M) to 16 bits (no clamping while |acc m| < 2^15) and compare with the formula
    spelled out in int64, with exact fractions floor(acc M / 2^shift + 1/2) on the first frame of
    the first `n_fraction` channels, and with round(acc * m) in float64. Returns the count, whether
    the integer results are exact (`exact`), and how many differ from round(acc * m)
    (`differs_from_real`) and by at most how much (`max_difference`)."""
    import math
    from fractions import Fraction

    gen = torch.Generator().manual_seed(seed)
    acc = torch.randint(-acc_limit, acc_limit, (batch, len(m), frames), generator=gen, dtype=torch.int32)
    y = requantize(acc, M, shift, out_bits=16, axis=1).to(torch.int64)
    Mt, st = torch.as_tensor(M)[None, :, None], torch.as_tensor(shift)[None, :, None]
    spelled_out = (acc.to(torch.int64) * Mt + (1 << (st - 1))) >> st
    ideal = torch.round(acc.double() * torch.as_tensor(m)[None, :, None]).to(torch.int64)
    sample = [(int(a), int(Mi), int(si)) for a, Mi, si in zip(acc[0, :n_fraction, 0], M[:n_fraction],
                                                                shift[:n_fraction])]
    frac_ok = all(int(y[0, c, 0]) == math.floor(Fraction(a * Mi, 2**si) + Fraction(1, 2))
                  for c, (a, Mi, si) in enumerate(sample))
    return {"n": acc.numel(), "exact": bool((y == spelled_out).all()) and frac_ok,
            "differs_from_real": int((y != ideal).sum()), "max_difference": int((y - ideal).abs().max())}
