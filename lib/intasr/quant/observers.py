"""Static activation-range observers, filled by a calibration pass (float side).

All observers share one API::

    obs.update(x, mask=None)   # x: [B, C, T] (or any shape without mask)
    obs.min, obs.max           # Python floats (None before the first non-empty update)
    obs.alpha()                # symmetric range max(|min|, |max|)

``mask`` marks valid frames: bool [B, T], [B, 1, T] or [B, C, T]; padded frames (mask False)
never contribute. An update whose mask selects nothing is ignored (it does not count as a batch).
Statistics are computed in float64 and stored as Python floats.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "Observer",
    "MinMaxObserver",
    "EMAMinMaxObserver",
    "PercentileObserver",
    "make_observer",
    "valid_values",
]


def valid_values(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Flattened float64 values of x at valid positions. mask: [B,T], [B,1,T] or x's shape."""
    x = x.detach()
    if mask is None:
        return x.reshape(-1).to(torch.float64)
    mask = mask.to(device=x.device, dtype=torch.bool)
    if mask.dim() == 2 and x.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != x.dim():
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit x of shape {tuple(x.shape)}")
    full = mask.expand_as(x)   # raises when the mask does not fit x, all-valid or not
    if bool(mask.all()):   # every frame valid (synthetic batches): the same values without a gather
        return x.reshape(-1).to(torch.float64)
    return x[full].to(torch.float64)


class Observer:
    """Base class: subclasses implement ``_observe(values)`` on valid float64 values."""

    def __init__(self):
        self.min: float | None = None
        self.max: float | None = None
        self.n_batches = 0

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        v = valid_values(x, mask)
        if v.numel() == 0:
            return
        self._observe(v)
        self.n_batches += 1

    def _observe(self, v: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def alpha(self) -> float:
        """Symmetric clipping range max(|min|, |max|); RuntimeError if nothing was observed."""
        if self.min is None or self.max is None:
            raise RuntimeError(f"{type(self).__name__} has observed no data")
        return max(abs(self.min), abs(self.max))

    def __repr__(self):
        return f"{type(self).__name__}(min={self.min}, max={self.max}, n_batches={self.n_batches})"


class MinMaxObserver(Observer):
    """Global min and max over all valid values of all batches."""

    def _observe(self, v):
        lo, hi = (float(t) for t in torch.aminmax(v))
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)


class EMAMinMaxObserver(Observer):
    """Exponential moving average of per-batch min and max (reference code, momentum 0.95).

    First batch: running = batch value. Then running = m * running + (1 - m) * batch value,
    separately for min and max.
    """

    def __init__(self, momentum: float = 0.95):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError("momentum must be in [0, 1]")
        self.momentum = momentum

    def _observe(self, v):
        lo, hi = (float(t) for t in torch.aminmax(v))
        if self.min is None:
            self.min, self.max = lo, hi
        else:
            m = self.momentum
            self.min = m * self.min + (1 - m) * lo
            self.max = m * self.max + (1 - m) * hi


def _percentile(v: torch.Tensor, q: float) -> float:
    """numpy-style 'linear' percentile of a 1-D tensor (q in [0, 100]); no size limit.

    Position p = q/100 * (n-1); result = v_(floor p) + frac(p) * (v_(ceil p) - v_(floor p)) with
    v_(i) the i-th smallest (0-based). Uses kthvalue (O(n)), unlike torch.quantile (<= 16M values).
    """
    n = v.numel()
    p = q / 100.0 * (n - 1)
    lo_i, hi_i = math.floor(p), math.ceil(p)
    lo = float(torch.kthvalue(v, lo_i + 1).values)
    hi = lo if hi_i == lo_i else float(torch.kthvalue(v, hi_i + 1).values)
    return lo + (p - lo_i) * (hi - lo)


class PercentileObserver(Observer):
    """Per-batch percentiles averaged over batches.

    For every batch: lower = percentile(valid values, 100 - pct), upper = percentile(valid values,
    pct) (numpy 'linear' interpolation over all valid values of the batch, no sampling). ``min`` /
    ``max`` are the arithmetic means of the per-batch lower / upper values over all batches seen,
    so memory is O(1) and the result does not depend on batch order.
    """

    def __init__(self, pct: float = 99.99):
        super().__init__()
        if not 50.0 < pct <= 100.0:
            raise ValueError("pct must be in (50, 100]")
        self.pct = pct
        self._sum_lo = 0.0
        self._sum_hi = 0.0

    def _observe(self, v):
        self._sum_lo += _percentile(v, 100.0 - self.pct)
        self._sum_hi += _percentile(v, self.pct)
        n = self.n_batches + 1
        self.min = self._sum_lo / n
        self.max = self._sum_hi / n


_OBSERVERS = {
    "minmax": MinMaxObserver,
    "ema": EMAMinMaxObserver,
    "percentile": PercentileObserver,
}


def make_observer(name: str, **kw) -> Observer:
    """Observer by name: 'minmax', 'ema' (kw momentum), 'percentile' (kw pct)."""
    try:
        cls = _OBSERVERS[name]
    except KeyError:
        raise ValueError(f"unknown observer {name!r}; choose from {sorted(_OBSERVERS)}") from None
    return cls(**kw)
