"""Uniform symmetric quantization (paper Eq. 1), float side.

Exact specification
-------------------
Signed b-bit:    q = clamp(round(x / S), -2^(b-1), 2^(b-1) - 1),  S = alpha / (2^(b-1) - 1)
Unsigned b-bit:  q = clamp(round(x / S), 0, 2^b - 1),             S = alpha / (2^b - 1)

* ``round`` is round-half-to-even (``torch.round``, IEEE default; the same as ONNX
  QuantizeLinear).  ``x / S`` is a true division computed in the dtype of ``x`` (float32 for
  float32 inputs), so results match a float32 QuantizeLinear bit for bit.
* The clamp is the full two's-complement range [-2^(b-1), 2^(b-1)-1] (8 bit: [-128, 127]); the
  reference code's [-n, n-1] clamp is a known bug and is NOT reproduced.
* Unsigned ranges are used for tensors known to be >= 0 (after ReLU): one extra bit of precision.
* Storage dtype: the smallest of int8 / int16 / int32 holding the range (signed 8 bit -> int8,
  unsigned 8 bit [0, 255] -> int16, 16 bit signed -> int16, 16 bit unsigned -> int32).

Quantized values are carried explicitly as (integer tensor, scale): see :class:`QTensor`.
Scales may be per tensor (0-d / 1-element) or per channel (1-D, ``axis`` gives the channel axis).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "MIN_ALPHA",
    "qrange",
    "storage_dtype",
    "scale_from_range",
    "quantize",
    "dequantize",
    "fake_quantize",
    "weight_alpha",
    "QTensor",
]

#: Smallest clipping range. ``alpha <= MIN_ALPHA`` (e.g. an all-zero weight channel or a dead
#: activation) is replaced by MIN_ALPHA so the scale stays positive and finite (same floor as
#: HAWQ-V3's ``torch.clamp(saturation_max, min=1e-8)``). The tensor itself then quantizes to 0s.
#: Note: such a tiny scale makes a bias scale s_w * s_x tiny too; a converter must check that the
#: quantized bias of such a channel fits its accumulator (or zero the channel's weight scale use).
MIN_ALPHA = 1e-8


def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    """Integer range of a b-bit code: signed [-2^(b-1), 2^(b-1)-1], unsigned [0, 2^b - 1].

    ``bits`` must be an int in 2..16 (ValueError otherwise).
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in 2..16, got {bits!r}")
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def storage_dtype(bits: int, signed: bool = True) -> torch.dtype:
    """Smallest torch integer dtype among int8/int16/int32 that holds qrange(bits, signed)."""
    lo, hi = qrange(bits, signed)
    for dt in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    raise AssertionError("unreachable: bits <= 16")


def _levels(bits: int, signed: bool) -> int:
    """Denominator of the scale: 2^(b-1)-1 signed, 2^b-1 unsigned."""
    qrange(bits, signed)  # validates bits
    return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1


def scale_from_range(alpha, bits: int, signed: bool = True) -> torch.Tensor:
    """S = alpha / (2^(b-1) - 1) (signed, paper Eq. 1) or alpha / (2^b - 1) (unsigned).

    ``alpha`` is a float or a tensor (per channel). ``alpha`` below MIN_ALPHA (including 0) is
    raised to MIN_ALPHA so that S > 0. Returns a float32 tensor (0-d for a float alpha), or a
    tensor of alpha's floating dtype.
    """
    a = torch.as_tensor(alpha)
    if not a.is_floating_point():
        a = a.to(torch.float32)
    if not torch.isfinite(a).all():
        raise ValueError("alpha must be finite")
    a = torch.clamp(a.abs(), min=MIN_ALPHA)
    return a / _levels(bits, signed)


def _shape_scale(scale, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape a per-tensor or per-channel scale so it broadcasts against x along ``axis``.

    Rule: a 1-element scale is per tensor. A scale with more elements is per channel along
    ``axis``; if ``axis`` is None it defaults to 0 (the output-channel axis of weights).
    """
    s = torch.as_tensor(scale, device=x.device)
    if s.numel() == 1:
        return s.reshape(())
    if axis is None:
        axis = 0
    axis = axis % x.dim()
    if s.dim() != 1 or s.numel() != x.shape[axis]:
        raise ValueError(
            f"per-channel scale of shape {tuple(s.shape)} does not match axis {axis} of {tuple(x.shape)}")
    shape = [1] * x.dim()
    shape[axis] = -1
    return s.reshape(shape)


def quantize(x: torch.Tensor, scale, bits: int, signed: bool = True,
             axis: int | None = None) -> torch.Tensor:
    """q = clamp(round_half_even(x / S), qmin, qmax) as an integer tensor (see module doc).

    ``axis`` selects the channel axis for a per-channel scale (default 0 when the scale has more
    than one element). Returns dtype ``storage_dtype(bits, signed)``.
    """
    lo, hi = qrange(bits, signed)
    if not x.is_floating_point():
        x = x.to(torch.float32)
    s = _shape_scale(scale, x, axis).to(x.dtype)
    if (s <= 0).any():
        raise ValueError("scale must be positive")
    q = torch.clamp(torch.round(x / s), lo, hi)
    return q.to(storage_dtype(bits, signed))


def dequantize(q: torch.Tensor, scale, axis: int | None = None) -> torch.Tensor:
    """x~ = S * q in float32 (float side only; never used by the integer pipeline)."""
    s = torch.as_tensor(scale)
    if not s.is_floating_point():
        s = s.to(torch.float32)
    s = _shape_scale(s, q, axis)
    return q.to(s.dtype) * s


def fake_quantize(x: torch.Tensor, scale, bits: int, signed: bool = True,
                  axis: int | None = None) -> torch.Tensor:
    """Float simulation S * clamp(round(x / S), qmin, qmax), in x's dtype (a Python number S taken
    exactly in that dtype, as ``x / S`` would). The one fake quantizer: the simulated Conformer and
    the learned-rounding walk use it too."""
    lo, hi = qrange(bits, signed)
    if isinstance(scale, (int, float)):
        s = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    else:
        s = _shape_scale(scale, x, axis).to(x.dtype)
    return torch.clamp(torch.round(x / s), lo, hi) * s


def weight_alpha(w: torch.Tensor, bits: int, per_channel: bool = True, method: str = "minmax",
                 percentile: float = 99.99, n_grid: int = 100, grid_low: float = 0.3) -> torch.Tensor:
    """Symmetric clipping range alpha for a weight tensor (signed quantization).

    Channels are along axis 0 (``[Cout, Cin/g, K]``). Returns a float tensor of shape [Cout]
    (per_channel) or a 0-d tensor.

    * ``'minmax'``: alpha = max |w| (the reference code's choice).
    * ``'percentile'``: alpha = the ``percentile``-th percentile of |w| (linear interpolation,
      as numpy's default).
    * ``'mse'``: alpha = argmin over the grid ``linspace(grid_low, 1, n_grid) * max|w|`` of
      ||w - fake_quantize(w)||^2 (per channel); ties go to the smaller alpha.
    """
    wf = w.detach().to(torch.float64)
    rows = wf.reshape(wf.shape[0], -1) if per_channel else wf.reshape(1, -1)
    amax = rows.abs().amax(dim=1)
    if method == "minmax":
        alpha = amax
    elif method == "percentile":
        if not 0.0 < percentile <= 100.0:
            raise ValueError("percentile must be in (0, 100]")
        alpha = torch.quantile(rows.abs(), percentile / 100.0, dim=1)
    elif method == "mse":
        levels = _levels(bits, True)
        lo, hi = qrange(bits, True)
        best_err = torch.full_like(amax, float("inf"))
        alpha = amax.clone()
        for frac in torch.linspace(grid_low, 1.0, n_grid, dtype=torch.float64):
            cand = torch.clamp(amax * frac, min=MIN_ALPHA)
            s = (cand / levels)[:, None]
            err = ((torch.clamp(torch.round(rows / s), lo, hi) * s - rows) ** 2).sum(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            alpha = torch.where(better, cand, alpha)
    else:
        raise ValueError(f"unknown method {method!r}: use 'minmax', 'mse' or 'percentile'")
    alpha = alpha.to(w.dtype if w.is_floating_point() else torch.float32)
    return alpha if per_channel else alpha.reshape(())


@dataclass
class QTensor:
    """A quantized tensor carried explicitly: real value ~= scale * q.

    ``q`` integer tensor, ``scale`` float tensor (1 element: per tensor; 1-D: per channel along
    ``axis``, default axis 0), ``bits`` and ``signed`` give the code range ``qrange(bits, signed)``.
    """

    q: torch.Tensor
    scale: torch.Tensor
    bits: int
    signed: bool
    axis: int | None = None

    def __post_init__(self):
        if self.q.is_floating_point() or self.q.is_complex():
            raise TypeError("QTensor.q must be an integer tensor")
        self.scale = torch.as_tensor(self.scale)
        qrange(self.bits, self.signed)

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.signed)[1]

    @classmethod
    def from_float(cls, x: torch.Tensor, scale, bits: int, signed: bool = True,
                   axis: int | None = None) -> "QTensor":
        return cls(quantize(x, scale, bits, signed, axis), torch.as_tensor(scale), bits, signed, axis)

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.q, self.scale, self.axis)
