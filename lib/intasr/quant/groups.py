"""Two-level weight scales: low-bit codes with a small integer multiplier per group of weights.

A per-output-channel 4-bit grid has one step for a whole row of a conv (up to 1024 x 87 weights
in QuartzNet): a single large weight sets the step for all the others. Per-vector scaling
(VS-Quant, Dai et al. 2021) gives each group of ``group`` consecutive weights of a row its own
*integer* multiplier, so the grid stays integer and the integer program needs no new op.

Exact specification (row o of a conv's folded weight, flattened to n = Cin/groups * K values,
c-major then tap, as ``weight.reshape(Cout, -1)``; b <= 4 code bits, m = MULTIPLIER_BITS)::

    qmax   = 2^(b-1) - 1,  kmax = 2^m - 1
    s[o]   = max(max_i |w[o, i]|, MIN_ALPHA) / (qmax * kmax)   (the row's scale; 1 for an all-zero row)
    k[o,g] = clamp(ceil(max_{i in g} |w[o, i]| / (qmax s[o])), 1, kmax)   groups g = [g*G, (g+1)*G)
    q[o,i] = clamp(round_half_even(w[o, i] / (k[o, g(i)] s[o])), -2^(b-1), 2^(b-1) - 1)
    W[o,i] = k[o, g(i)] * q[o, i]                            (|W| <= 8 * 15 = 120: an int8 weight)

The integer program's conv holds W with the per-channel scale s (so requantization, bias
correction and every backend are unchanged); the stored model is the b-bit codes q plus one m-bit
multiplier per group: b + m / G bits per weight (4.125 for b = 4, m = 4, G = 32), the overhead of
GPTQ/AWQ's "W4 g128" with float16 scales. A kernel with b-bit multiply-accumulate sums q x per
group in int32 and multiplies each group's sum by k (one extra multiply-add per group); ours
multiply by the int8 product W directly, which costs the same as any int8 weight.
"""
from __future__ import annotations

import torch

from .quantizer import MIN_ALPHA, qrange

__all__ = ["MULTIPLIER_BITS", "MAX_CODE_BITS", "is_grouped", "group_multipliers", "grouped_codes", "multiplier_bits"]

#: bits of each group's unsigned multiplier k in [1, 2^m - 1] = [1, 15]; with MAX_CODE_BITS, what
#: keeps every product k q an int8 weight
MULTIPLIER_BITS = 4
#: widest code whose product with a multiplier fits int8: 2^(4-1) * 15 = 120 <= 127
MAX_CODE_BITS = 4


def is_grouped(bits: int, group: int) -> bool:
    """Whether a conv quantized at ``bits`` gets per-group multipliers with this ``group`` size:
    only codes of at most MAX_CODE_BITS bits (wider ones need no help, and their products would
    not fit int8)."""
    if isinstance(group, bool) or not isinstance(group, int) or group < 0:
        raise ValueError(f"weight group must be an int >= 0 (0: per channel), got {group!r}")
    return group > 0 and bits <= MAX_CODE_BITS


def group_multipliers(w: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(s float64 [Cout], k int64 [Cout, n]): the row scales and each weight's group multiplier
    (expanded: k[o, i] = k[o, g(i)]) of the folded weight w [Cout, ...] (module doc)."""
    if not is_grouped(bits, group):
        raise ValueError(f"per-group multipliers need codes of at most {MAX_CODE_BITS} bits and a group > 0, "
                         f"got {bits} bits, group {group}")
    qmax, kmax = qrange(bits)[1], (1 << MULTIPLIER_BITS) - 1
    wf = w.detach().double().reshape(w.shape[0], -1).abs()
    cout, n = wf.shape
    alpha = wf.amax(dim=1)
    # an all-zero row: any scale works; a dead one (|w| ~ 1e-24 after BatchNorm folding) gets the
    # per-channel floor, else its bias, in units of s_x s, would need an int64 accumulator
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha)).clamp(min=MIN_ALPHA)
    s = alpha / (qmax * kmax)
    pad = (-n) % group
    gmax = torch.nn.functional.pad(wf, (0, pad)).reshape(cout, -1, group).amax(dim=2)   # [Cout, G]
    # the smallest k whose grid reaches the group's largest weight; the relative slack keeps a
    # ratio that float division puts a hair above an integer from taking the next multiplier
    k = torch.ceil(gmax / (qmax * s[:, None]) * (1 - 1e-12)).clamp(1, kmax).to(torch.int64)
    return s, k.repeat_interleave(group, dim=1)[:, :n]


def grouped_codes(w: torch.Tensor, s: torch.Tensor, k: torch.Tensor, bits: int) -> torch.Tensor:
    """Round-to-nearest codes q [Cout, n] (int64) of w on the grid k[o, i] s[o] q."""
    lo, hi = qrange(bits)
    step = k.double() * s.double().reshape(-1, 1)
    return torch.clamp(torch.round(w.detach().double().reshape(w.shape[0], -1) / step), lo, hi).to(torch.int64)


def multiplier_bits(n_weights_per_row: int, rows: int, group: int) -> int:
    """Stored bits of a conv's multipliers: one MULTIPLIER_BITS value per group of each row."""
    return rows * -(-n_weights_per_row // group) * MULTIPLIER_BITS
