"""Weight quantization of one conv: the grid, rounding to it, the integer bias, the requantization
multiplier, and the bias correction of the rounding error.

What every converter and recipe shares (``convert``, ``convert_conformer``, ``simulate``,
``recipes.adaround``, ``recipes.mixed_precision``): a conv's weight w [Cout, ...] (BatchNorm
already folded) is stored as integers on a per-output-channel grid s_w[c] (symmetric; with
per-group multipliers, ``quant.groups``, the grid is k s_w q); its bias as round(b / (s_x s_w[c]))
on the accumulator's scale; the accumulator goes to the output scale by a dyadic multiplier
M / 2^shift ~= s_x s_w[c] / s_out.
"""
from __future__ import annotations

import torch
from torch import nn

from .dyadic import dyadic_from_float
from .groups import group_multipliers, grouped_codes, is_grouped
from .quantizer import quantize, scale_from_range, weight_alpha

__all__ = ["weight_grid", "round_on_grid", "learned_weight", "quantize_weight", "weight_bits_of", "quantize_bias",
           "dyadic_multiplier", "bias_correction"]


def weight_grid(w: torch.Tensor, bits: int, method: str, group: int = 0):
    """(s_w float64 [Cout], k int64 like w or None): the per-channel scale of w's integer weight and,
    for per-group multipliers (``quant.groups``), each weight's multiplier (the grid is k s_w q)."""
    if is_grouped(bits, group):
        if method != "minmax":
            raise ValueError(f"per-group weight multipliers (--weight-group) need --weight-method minmax, got {method}")
        s_w, k = group_multipliers(w, bits, group)
        return s_w, k.reshape(w.shape)
    alpha = weight_alpha(w, bits, per_channel=True, method=method).reshape(-1).double()
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))  # an all-zero channel: any scale works
    return scale_from_range(alpha, bits, signed=True).double(), None


def round_on_grid(w: torch.Tensor, s_w: torch.Tensor, k: torch.Tensor | None, bits: int) -> torch.Tensor:
    """Round-to-nearest integer weight on ``weight_grid``'s grid: q, or k * q with multipliers
    (int8 for codes of at most 4 bits)."""
    dtype = torch.int8 if bits <= 8 else torch.int16
    if k is not None:
        return (k * grouped_codes(w, s_w, k.reshape(w.shape[0], -1), bits).reshape(w.shape)).to(dtype)
    return quantize(w.double(), s_w, bits, signed=True, axis=0).to(dtype)


def learned_weight(codes: torch.Tensor, k: torch.Tensor | None, bits: int, shape) -> torch.Tensor:
    """The integer weight of codes learned on ``weight_grid``'s grid (``quant.adaround``): the codes,
    or k * codes with per-group multipliers; in ``round_on_grid``'s dtype. Codes outside the width's
    range are refused (a cache or caller of another width)."""
    from .quantizer import qrange

    lo, hi = qrange(bits, signed=True)
    codes = codes.reshape(shape)
    if codes.min() < lo or codes.max() > hi:
        raise ValueError(f"learned rounding codes outside the {bits}-bit range")
    dtype = torch.int8 if bits <= 8 else torch.int16
    return (codes if k is None else codes.to(torch.int64) * k.reshape(shape)).to(dtype)


def quantize_weight(w: torch.Tensor, bits: int, method: str, group: int = 0):
    """(integer weight, s_w [Cout]): round-to-nearest on ``weight_grid``."""
    s_w, k = weight_grid(w, bits, method, group)
    return round_on_grid(w, s_w, k, bits), s_w


def weight_bits_of(conv: nn.Conv1d, weight_bits: int, depthwise_bits: int | None = None,
                   layer_bits: dict | None = None) -> int:
    """The weight width of one conv: its own (mixed precision), else depthwise_bits for a
    depthwise conv, else weight_bits."""
    if layer_bits and conv in layer_bits:
        return int(layer_bits[conv])
    if depthwise_bits and conv.groups > 1 and conv.groups == conv.in_channels:
        return depthwise_bits
    return weight_bits


def quantize_bias(b: torch.Tensor | None, acc_scale: torch.Tensor) -> torch.Tensor | None:
    """round(b / (s_x s_w)) per output channel: int32 when it fits, else int64 (None: no bias)."""
    if b is None:
        return None
    bias_q = torch.round(b / acc_scale).to(torch.int64)
    return bias_q.to(torch.int32) if bias_q.abs().max() < 2 ** 31 - 1 else bias_q


def dyadic_multiplier(m, bound: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, shift) int64 [C] with M / 2^shift ~= m (per channel). acc * M must fit int64 for
    |acc| <= bound: wide accumulators get a shorter multiplier (at most 31 bits)."""
    M, shift = dyadic_from_float(m, bits=min(31, 62 - max(int(bound), 1).bit_length()))
    return (torch.as_tensor(M, dtype=torch.int64).reshape(-1), torch.as_tensor(shift, dtype=torch.int64).reshape(-1))


def bias_correction(w: torch.Tensor, w_q: torch.Tensor, s_w: torch.Tensor, groups: int,
                    x_mean: torch.Tensor) -> torch.Tensor:
    """Expected output shift the weight rounding causes, per output channel:
    delta[o] = sum_{c,k} (s_w[o] w_q[o, c, k] - w[o, c, k]) * E[x_c]  (Nagel et al. 2019, DFQ)."""
    dw = (w_q.double() * s_w.reshape(-1, 1, 1) - w).sum(dim=2)  # [Cout, Cin/groups]
    cout, cin_g = dw.shape
    xm = x_mean.double().reshape(groups, cin_g)                  # group g reads channels g*cin_g...
    return (dw.reshape(groups, cout // groups, cin_g) * xm[:, None, :]).sum(dim=2).reshape(cout)
