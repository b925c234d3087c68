"""quant/error.py and the dyadic checks: SQNR, the weight sweep, outlier ranges, the integer layer."""

import math

import numpy as np
import pytest
import torch

from intasr.quant import dyadic_from_float, dyadic_value, fake_quantize, quantize, scale_from_range
from intasr.quant import error as qerror
from intasr.quant.dyadic import dyadic_error_rows, requantize_against_exact


def test_sqnr_db():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert qerror.sqnr_db(x, x) == float("inf")
    assert qerror.sqnr_db(x, 1.1 * x) == pytest.approx(20.0)  # noise = 0.01 of the signal energy


def test_weight_labels():
    dw, pw = torch.zeros(8, 1, 5), torch.zeros(8, 8, 1)
    assert qerror.weight_label("encoder.encoder.8.mconv.0.conv.weight", dw) == "block 8 depthwise"
    assert qerror.weight_label("encoder.encoder.8.mconv.1.conv.weight", pw) == "block 8 pointwise"
    assert qerror.weight_label("encoder.encoder.2.res.0.0.conv.weight", pw) == "block 2 residual"
    assert qerror.weight_label("decoder.decoder_layers.0.weight", pw) == "decoder"


def test_weight_sweep_rows_and_per_channel_gain():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 8, 1, generator=g) * torch.logspace(-2, 0, 16)[:, None, None]  # channels of unequal range
    rows = qerror.weight_error_sweep({"w": w}, range(2, 9), n_grid=20)
    assert len(rows) == 2 * 3 * 7
    sq = {(r["granularity"], r["clipping"], r["bits"]): r["sqnr_db"] for r in rows}
    assert sq[("per-channel", "minmax", 8)] > sq[("per-tensor", "minmax", 8)] + 6
    assert all(sq[("per-channel", "minmax", b + 1)] > sq[("per-channel", "minmax", b)] for b in range(2, 8))
    assert all(sq[("per-channel", "mse", b)] >= sq[("per-channel", "minmax", b)] - 1e-9 for b in range(2, 9))
    assert {r["shape"] for r in rows} == {"16x8x1"}


def test_outliers_and_their_ranges():
    x = qerror.with_outliers(100_000, n_outliers=10, magnitude=40.0, seed=0)
    assert torch.equal(x, qerror.with_outliers(100_000, n_outliers=10, magnitude=40.0, seed=0))
    assert int((x.abs() == 40.0).sum()) == 10
    rows = qerror.outlier_range_rows(x, x.abs() < 10, bits=(4, 8))
    alpha = {(r["range"], r["bits"]): r["alpha"] for r in rows}
    assert alpha[("min/max", 8)] == 40.0 and alpha[("99.9th percentile", 8)] < alpha[("99.99th percentile", 8)] < 40
    by = {(r["range"], r["bits"]): r for r in rows}
    assert by[("min/max", 4)]["ordinary values rounded to 0 %"] > by[("99.9th percentile", 4)]["ordinary values rounded to 0 %"]


def test_unsigned_ranges_and_the_mse_oracle():
    v = torch.rand(5000, generator=torch.Generator().manual_seed(2)) ** 3 * 10
    rows = qerror.unsigned_range_rows(v, {"half": float(v.max()) / 2}, bits=(4, 8))
    by = {(r["range"], r["bits"]): r for r in rows}
    assert by[("oracle: own max", 8)]["clipped %"] == 0.0
    assert by[("half", 8)]["clipped %"] == pytest.approx(100 * float((v > float(v.max()) / 2).float().mean()))
    a = qerror.mse_best_alpha(v, 4, signed=False)
    err = lambda alpha: float(((fake_quantize(v, scale_from_range(alpha, 4, False), 4, False) - v) ** 2).sum())
    assert a <= float(v.max()) and err(a) <= err(float(v.max()))


def test_integer_layer_rows_count_equal_codes():
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(1, 4, 20, generator=g), torch.randn(6, 4, 1, generator=g), torch.randn(6, generator=g)
    s_x, s_w, s_y = scale_from_range(3.0, 8), scale_from_range(w.flatten(1).abs().amax(1), 8), scale_from_range(6.0, 8)
    ref = torch.nn.functional.conv1d(x, w, b)
    sim = torch.nn.functional.conv1d(fake_quantize(x, s_x, 8), fake_quantize(w, s_w, 8, axis=0), b)
    valid = torch.ones(1, 20, dtype=torch.bool)
    out = qerror.integer_layer_rows(ref, valid, x, w, b, quantize(sim, s_y, 8), s_x, s_w, s_y, 8)
    assert out["same_codes"] == 1.0 and out["max_code_diff"] == 0
    sq = [r["SQNR dB vs float"] for r in out["rows"]]
    assert sq[0] == float("inf") and sq[3] == sq[2] and sq[1] > sq[2]


def test_dyadic_error_rows_and_requantization_check():
    m = np.array([0.0123, 2.0**-8, 3.7e-4, 0.0019])  # |acc m| < 2^15: no clamping at 16 bits
    M, shift = dyadic_from_float(m)
    rows = dyadic_error_rows(m, M, shift, channels=range(4))
    assert [r["M / 2^shift"] for r in rows] == list(dyadic_value(M, shift))
    assert rows[1]["relative error"] == 0.0 and all(r["relative error"] <= 2.0**-31 for r in rows)
    check = requantize_against_exact(M, shift, m, seed=0, frames=16)
    assert check["n"] == 4 * 4 * 16 and check["exact"]
    assert check["max_difference"] <= 1 and check["differs_from_real"] <= check["n"]
