"""Measuring quantization error: SQNR, sweeps over bits x granularity x clipping, range choices for
activations with outliers, and an integer-only layer's output against its float original.

These are the measurements of the book's chapter 02; each returns plain rows (one dict per
measurement) so a caller picks its own table library.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .observers import MinMaxObserver, PercentileObserver
from .quantizer import dequantize, fake_quantize, quantize, scale_from_range, weight_alpha

CLIPPING_METHODS = ("minmax", "percentile", "mse")


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10 log10(sum x^2 / sum (x - x_hat)^2) in dB, in float64;
    inf when x_hat equals x."""
    x, x_hat = x.double(), x_hat.double()
    noise = float(((x - x_hat) ** 2).sum())
    return float("inf") if noise == 0 else 10 * math.log10(float((x**2).sum()) / noise)


def weight_kind(w: torch.Tensor) -> str:
    """'depthwise' ([C, 1, K>1]), 'pointwise' (K = 1) or 'conv' for a conv1d weight."""
    if w.shape[1] == 1 and w.shape[2] > 1:
        return "depthwise"
    return "pointwise" if w.shape[2] == 1 else "conv"


def weight_label(name: str, w: torch.Tensor) -> str:
    """A ConvASR weight's short name: encoder.encoder.8.mconv.1.conv.weight -> 'block 8 pointwise',
    a residual branch's -> 'block k residual', anything under decoder -> 'decoder'."""
    if name.startswith("decoder"):
        return "decoder"
    parts = name.split(".")
    return f"block {parts[2]} {'residual' if parts[3] == 'res' else weight_kind(w)}"


def weight_error_sweep(weights: dict[str, torch.Tensor], bits, percentile: float = 99.99,
                       n_grid: int = 100) -> list[dict]:
    """The rounding error of every weight tensor at every bit width, per tensor and per output
    channel, for each clipping method of `weight_alpha`: rows of layer, shape ('512x512x1'),
    granularity, clipping, bits, mse (mean squared error) and sqnr_db."""
    rows = []
    for name, w in weights.items():
        w = w.float()
        for per_channel in (False, True):
            for method in CLIPPING_METHODS:
                for b in bits:
                    a = weight_alpha(w, b, per_channel=per_channel, method=method, percentile=percentile,
                                     n_grid=n_grid)
                    w_hat = fake_quantize(w, scale_from_range(a, b), b, axis=0 if per_channel else None)
                    rows.append({
                        "layer": name,
                        "shape": "x".join(map(str, w.shape)),
                        "granularity": "per-channel" if per_channel else "per-tensor",
                        "clipping": method,
                        "bits": b,
                        "mse": float(((w - w_hat) ** 2).mean()),
                        "sqnr_db": sqnr_db(w, w_hat),
                    })
    return rows


def with_outliers(n: int, n_outliers: int, magnitude: float, seed: int) -> torch.Tensor:
    """n standard normal values (seeded), n_outliers of them (at random places) replaced by
    +-magnitude with random signs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen)
    x[torch.randperm(x.numel(), generator=gen)[:n_outliers]] = magnitude * torch.sign(
        torch.randn(n_outliers, generator=gen))
    return x


def outlier_range_rows(x: torch.Tensor, ordinary: torch.Tensor, bits=(4, 8)) -> list[dict]:
    """Signed quantization of x with a min/max, a 99.99th and a 99.9th percentile range: per range
    and bit width, alpha, the SQNR of the `ordinary` values (a boolean mask) and of all values, and
    the share (%) of ordinary values rounded to 0."""
    rows = []
    for label, obs in [("min/max", MinMaxObserver()), ("99.99th percentile", PercentileObserver(99.99)),
                       ("99.9th percentile", PercentileObserver(99.9))]:
        obs.update(x)
        for b in bits:
            x_hat = fake_quantize(x, scale_from_range(obs.alpha(), b), b)
            rows.append({
                "range": label,
                "alpha": obs.alpha(),
                "bits": b,
                "SQNR, ordinary values": sqnr_db(x[ordinary], x_hat[ordinary]),
                "SQNR, all values": sqnr_db(x, x_hat),
                "ordinary values rounded to 0 %": 100 * float((x_hat[ordinary] == 0).float().mean()),
            })
    return rows


def mse_best_alpha(v: torch.Tensor, bits: int, signed: bool, n_grid: int = 96) -> float:
    """The alpha in linspace(0.05, 1, n_grid) * max|v| with the least squared error of
    fake-quantizing v itself (the first on ties): an oracle no static range can know."""
    best = None
    for frac in np.linspace(0.05, 1.0, n_grid):
        a = float(v.abs().max()) * frac
        err = float(((fake_quantize(v, scale_from_range(a, bits, signed), bits, signed) - v) ** 2).sum())
        best = (err, a) if best is None or err < best[0] else best
    return best[1]


def unsigned_range_rows(v: torch.Tensor, alphas: dict[str, float], bits=(4, 6, 8),
                        oracles: bool = True) -> list[dict]:
    """Unsigned quantization of the non-negative values v with each named range of `alphas` (and,
    with `oracles`, v's own max and its MSE-best alpha per width): per range and width, alpha,
    SQNR dB and the share (%) of values above alpha (clipped)."""
    rows = []
    for b in bits:
        ranges = dict(alphas)
        if oracles:
            ranges.update({"oracle: own max": float(v.max()), "oracle: MSE-best": mse_best_alpha(v, b, signed=False)})
        for label, a in ranges.items():
            v_hat = fake_quantize(v, scale_from_range(a, b, signed=False), b, signed=False)
            rows.append({"range": label, "bits": b, "alpha": a, "SQNR dB": sqnr_db(v, v_hat),
                         "clipped %": 100 * float((v > a).float().mean())})
    return rows


def integer_layer_rows(reference: torch.Tensor, valid: torch.Tensor, x: torch.Tensor, w_f: torch.Tensor,
                       b_f: torch.Tensor, yq: torch.Tensor, s_x, s_w, s_y, bits: int = 8) -> dict:
    """How close an integer-only layer's output codes `yq` (on scale s_y) come to its float
    original `reference` = conv(x; w_f, b_f), on the valid frames (`valid`, [B, T]): rows of SQNR
    against the float output for the fake-quantized simulation (input at s_x, weights per channel
    at s_w), the same with its output fake-quantized at s_y, and the integer path; plus the share
    of output codes equal to the simulation's (`same_codes`) and the largest difference in codes."""
    valid = valid.unsqueeze(1).expand_as(reference)
    y_ref = reference[valid]
    y_fq = F.conv1d(fake_quantize(x, s_x, bits), fake_quantize(w_f, s_w, bits, axis=0), b_f)
    rows = [
        {"path": "float (conv + BN)", "SQNR dB vs float": float("inf")},
        {"path": "fake-quantized float simulation", "SQNR dB vs float": sqnr_db(y_ref, y_fq[valid])},
        {"path": "same, output also fake-quantized to 8 bits",
         "SQNR dB vs float": sqnr_db(y_ref, fake_quantize(y_fq, s_y, bits)[valid])},
        {"path": "integer-only (int8 x int8 -> int32 -> dyadic -> int8)",
         "SQNR dB vs float": sqnr_db(y_ref, dequantize(yq, s_y)[valid])},
    ]
    codes_fq = quantize(y_fq, s_y, bits)[valid]
    return {"rows": rows, "same_codes": float((codes_fq == yq[valid]).float().mean()),
            "max_code_diff": int((codes_fq.int() - yq[valid].int()).abs().max())}
