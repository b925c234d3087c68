"""Integer GELU (I-BERT's i-GELU), beside the float function; torch kernel and NumPy reference.

GELU(x) = x/2 (1 + erf(x / sqrt 2)); I-BERT approximates erf on the clipped range by a second
order polynomial, L(u) = sign(u) [1 - |a| (min(|u|, -b) + b)^2], a = -0.2888, b = -1.769
(max |erf - L| about 1.8e-2). In integers, for an input q with real scale S (x = q S) and
S' = S / sqrt 2 (the scale of u = x / sqrt 2 on the same integers), with Python-int constants
fixed at preparation

    q_B   = floor(-b / S')          > 0     (the clip point |u| = 1.769)
    q_one = floor(1 / (|a| S'^2))   > 0     (1 in units of |a| S'^2)

the kernel is, in int64:

    t     = min(|q|, q_B) - q_B             # in [-q_B, 0]
    L     = sign(q) (q_one - t^2)           # erf(u) in units of |a| S'^2 (|L| <= q_one)
    y     = q (q_one + L)                   # ~ 2 q_one GELU(x) / S

output scale S / (2 q_one): the unit of L is 1 / q_one, so that erf = 1 (x beyond the clip
point) gives y = x exactly. (Taking the unit as |a| S'^2 instead would scale every output by
q_one |a| S'^2 = 1 - frac(1 / (|a| S'^2)) / (1 / (|a| S'^2)), a gain error of up to 1 / q_one:
0.9% at q_one = 107, an 8-bit input scale of 0.25.) Bounds: |q| < 2^31 and q_one < 2^30 (checked at preparation), so
|y| <= 2^31 * 2^31 < 2^63. The torch kernel creates no floating-point tensor; the NumPy
reference uses Python-int-safe int64 arithmetic of its own (no torch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

GELU_A, GELU_B = -0.2888, -1.769


def gelu_float(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x)


@dataclass(frozen=True)
class GeluParams:
    q_b: int
    q_one: int
    in_scale: float
    out_scale: float


def prepare_gelu(in_scale: float) -> GeluParams:
    S = float(in_scale)
    if not (math.isfinite(S) and S > 0):
        raise ValueError(f"in_scale must be positive and finite, got {in_scale}")
    Sp = S / math.sqrt(2.0)
    q_b = math.floor(-GELU_B / Sp)
    q_one = math.floor(1.0 / (-GELU_A * Sp * Sp))
    if q_b < 1 or not 1 <= q_one < 1 << 30:
        raise ValueError(f"in_scale {S} out of the i-GELU range (q_B {q_b}, q_one {q_one}): use 8-16 bit inputs")
    return GeluParams(q_b=q_b, q_one=q_one, in_scale=S, out_scale=S / (2.0 * q_one))


def int_gelu(q: torch.Tensor, p: GeluParams) -> torch.Tensor:
    """i-GELU (module doc): int64 output with scale p.out_scale. |q| < 2^31."""
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f"int_gelu needs an integer tensor, got {q.dtype}")
    x = q.to(torch.int64)
    if x.numel() and int(x.abs().max()) >= 1 << 31:
        raise ValueError("int_gelu input must satisfy |q| < 2^31")
    t = torch.clamp_max(x.abs(), p.q_b) - p.q_b
    L = torch.sign(x) * (p.q_one - t * t)
    return x * (p.q_one + L)


def gelu_ref(q, p: GeluParams) -> np.ndarray:
    """NumPy reference of int_gelu (no torch): explicit sign cases, int64."""
    x = np.asarray(q).astype(np.int64)
    assert x.size == 0 or int(np.abs(x).max()) < 1 << 31
    a = np.minimum(np.abs(x), p.q_b) - p.q_b
    poly = p.q_one - a * a
    erf = np.where(x > 0, poly, np.where(x < 0, -poly, 0))
    return x * (p.q_one + erf)
