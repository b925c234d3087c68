"""Quantizer, observers and BatchNorm folding / restoring."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intasr.quant import (MIN_ALPHA, QTensor, bn_from_stats, dequantize, fake_quantize,
                            fold_batchnorm, make_observer, qrange, quantize, scale_from_range,
                            storage_dtype, unfold_batchnorm, weight_alpha)
from intasr.quant.observers import EMAMinMaxObserver, MinMaxObserver, PercentileObserver


# ---------------------------------------------------------------- qrange / scales / quantize
def test_qrange():
    assert qrange(8) == (-128, 127)
    assert qrange(8, signed=False) == (0, 255)
    assert qrange(4) == (-8, 7)
    assert qrange(2) == (-2, 1)
    assert qrange(16) == (-32768, 32767)
    assert qrange(16, False) == (0, 65535)
    for bad in (1, 17, 0, 8.0, True):
        with pytest.raises(ValueError):
            qrange(bad)


def test_storage_dtype():
    assert storage_dtype(8) == torch.int8
    assert storage_dtype(7, False) == torch.int8
    assert storage_dtype(8, False) == torch.int16
    assert storage_dtype(16) == torch.int16
    assert storage_dtype(16, False) == torch.int32


def test_scale_from_range():
    assert float(scale_from_range(1.27, 8)) == pytest.approx(0.01)
    assert float(scale_from_range(2.55, 8, signed=False)) == pytest.approx(0.01)
    s = scale_from_range(torch.tensor([0.0, 7.0]), 4)
    assert s[0] > 0 and float(s[0]) == pytest.approx(MIN_ALPHA / 7)
    assert float(s[1]) == pytest.approx(1.0)


def test_quantize_rounding_clamp_dtype():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0, 126.6])
    q = quantize(x, 1.0, 8)
    assert q.dtype == torch.int8
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128, 127]  # round half to even, full clamp range
    qu = quantize(x, 1.0, 8, signed=False)
    assert qu.dtype == torch.int16
    assert qu.tolist() == [0, 2, 2, 0, 0, 255, 0, 127]


def test_quantize_per_channel_roundtrip():
    torch.manual_seed(0)
    w = torch.randn(16, 4, 11)
    alpha = weight_alpha(w, 8)
    s = scale_from_range(alpha, 8)
    q = quantize(w, s, 8, axis=0)
    assert q.dtype == torch.int8
    # every channel uses its extreme code
    assert (q.reshape(16, -1).abs().amax(1) == 127).all()
    err = (dequantize(q, s, axis=0) - w).abs()
    assert (err <= s.reshape(16, 1, 1) / 2 + 1e-7).all()
    assert torch.allclose(fake_quantize(w, s, 8, axis=0), dequantize(q, s, axis=0))
    # activation layout: channels on axis 1
    x = torch.randn(2, 16, 5)
    qa = quantize(x, s, 8, axis=1)
    assert torch.allclose(dequantize(qa, s, axis=1), fake_quantize(x, s, 8, axis=1))
    with pytest.raises(ValueError):
        quantize(x, s[:3], 8, axis=1)


def test_qtensor():
    x = torch.tensor([-1.0, 0.2, 0.9])
    qt = QTensor.from_float(x, scale_from_range(1.0, 8), 8)
    assert (qt.qmin, qt.qmax) == (-128, 127)
    assert torch.allclose(qt.dequantize(), x, atol=0.5 / 127 + 1e-7)
    qt2 = QTensor(qt.q, qt.scale, 8, True)
    assert torch.equal(qt2.dequantize(), qt.dequantize())
    with pytest.raises(TypeError):
        QTensor(x, qt.scale, 8, True)


def test_weight_alpha_methods():
    torch.manual_seed(1)
    w = torch.randn(8, 3, 5)
    w[0, 0, 0] = 20.0  # an outlier in channel 0
    a_mm = weight_alpha(w, 4, method="minmax")
    assert torch.allclose(a_mm, w.reshape(8, -1).abs().amax(1))
    a_pt = weight_alpha(w, 4, method="percentile", percentile=90)
    ref = np.percentile(w.reshape(8, -1).abs().numpy(), 90, axis=1)
    assert np.allclose(a_pt.numpy(), ref, rtol=1e-5)
    a_mse = weight_alpha(w, 4, method="mse")
    assert a_mse.shape == (8,)
    assert (a_mse <= a_mm + 1e-6).all() and (a_mse >= 0.3 * a_mm - 1e-6).all()

    def err(alpha):
        s = scale_from_range(alpha, 4)
        return ((fake_quantize(w, s, 4, axis=0) - w) ** 2).reshape(8, -1).sum(1)

    assert (err(a_mse) <= err(a_mm) + 1e-6).all()
    assert (err(a_mse) < err(a_mm)).any()
    a_t = weight_alpha(w, 8, per_channel=False)
    assert a_t.dim() == 0 and float(a_t) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        weight_alpha(w, 8, method="nope")


# ---------------------------------------------------------------- observers
def _batch_with_padding():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 10)
    lengths = torch.tensor([10, 6])
    mask = torch.arange(10)[None, :] < lengths[:, None]  # [B, T]
    x[1, :, 6:] = 1000.0  # padded garbage must not count
    return x, mask


@pytest.mark.parametrize("name", ["minmax", "ema", "percentile"])
def test_observer_mask(name):
    x, mask = _batch_with_padding()
    for m in (mask, mask[:, None, :]):
        obs = make_observer(name)
        obs.update(x, m)
        assert obs.max < 100 and obs.alpha() < 100
    obs = make_observer(name)
    obs.update(x)
    assert obs.max == pytest.approx(1000.0) or name == "percentile"


def test_minmax_and_ema_values():
    a = torch.tensor([[[-1.0, 2.0]]])
    b = torch.tensor([[[-3.0, 1.0]]])
    mm = MinMaxObserver()
    mm.update(a)
    mm.update(b)
    assert (mm.min, mm.max, mm.alpha()) == (-3.0, 2.0, 3.0)
    ema = EMAMinMaxObserver(momentum=0.95)
    ema.update(a)
    assert (ema.min, ema.max) == (-1.0, 2.0)  # first batch initializes
    ema.update(b)
    assert ema.min == pytest.approx(0.95 * -1 + 0.05 * -3)
    assert ema.max == pytest.approx(0.95 * 2 + 0.05 * 1)
    # empty-mask update is ignored
    ema.update(b, torch.zeros(1, 2, dtype=torch.bool))
    assert ema.n_batches == 2
    with pytest.raises(RuntimeError):
        MinMaxObserver().alpha()
    with pytest.raises(ValueError):
        make_observer("bogus")


def test_percentile_observer_matches_numpy():
    torch.manual_seed(3)
    obs = PercentileObserver(pct=99.0)
    xs = [torch.randn(2, 4, 50) for _ in range(3)]
    for x in xs:
        obs.update(x)
    lo = np.mean([np.percentile(x.numpy().ravel().astype(np.float64), 1.0) for x in xs])
    hi = np.mean([np.percentile(x.numpy().ravel().astype(np.float64), 99.0) for x in xs])
    assert obs.min == pytest.approx(lo, rel=1e-9)
    assert obs.max == pytest.approx(hi, rel=1e-9)
    assert make_observer("percentile", pct=99.0).pct == 99.0


# ---------------------------------------------------------------- BatchNorm fold / restore
def _random_bn(c, zero_var_channel=True):
    bn = nn.BatchNorm1d(c, eps=1e-3).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3.0)
        if zero_var_channel:
            bn.running_var[0] = 0.0
        bn.weight.normal_()
        bn.bias.normal_()
    return bn


@pytest.mark.parametrize("groups,bias", [(1, False), (1, True), (8, False)])
def test_fold_batchnorm(groups, bias):
    torch.manual_seed(4)
    c = 8
    w = torch.randn(c, c // groups, 5, dtype=torch.float64)
    b = torch.randn(c, dtype=torch.float64) if bias else None
    bn = _random_bn(c).double()
    x = torch.randn(3, c, 40, dtype=torch.float64)
    ref = bn(F.conv1d(x, w, b, padding=2, groups=groups))
    wf, bf = fold_batchnorm(w, b, bn)
    assert torch.allclose(F.conv1d(x, wf, bf, padding=2, groups=groups), ref, atol=1e-10)
    # tuple form, float32
    p = (bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    wf32, bf32 = fold_batchnorm(w.float(), None if b is None else b.float(), p)
    assert wf32.dtype == torch.float32
    out32 = F.conv1d(x.float(), wf32, bf32, padding=2, groups=groups)
    assert torch.allclose(out32, ref.float(), atol=1e-5, rtol=1e-5)


def test_bn_from_stats_restores_function_exactly():
    torch.manual_seed(5)
    c = 6
    wf = torch.randn(c, c, 3, dtype=torch.float64)
    bf = torch.randn(c, dtype=torch.float64)
    wf[2] = 0.0  # a dead channel: zero variance output
    data = torch.randn(4, c, 100, dtype=torch.float64)
    y = F.conv1d(data, wf, bf, padding=1)
    mean, var = y.mean(dim=(0, 2)), y.var(dim=(0, 2), unbiased=False)
    assert var[2] == 0
    w, bn = bn_from_stats(mean, var, 1e-3, wf, bf)
    assert not bn.training and bn.eps == 1e-3
    assert torch.allclose(bn.running_mean, mean - bf) and torch.allclose(bn.running_var, var)
    assert torch.allclose(bn.weight, torch.sqrt(var + 1e-3))
    for x in (data, 10 * torch.randn(2, c, 30, dtype=torch.float64)):  # every x, not just the stats data
        assert torch.allclose(bn(F.conv1d(x, w, padding=1)), F.conv1d(x, wf, bf, padding=1), atol=1e-10)
    # BN statistics equal what the BN sees on the measurement data
    z = F.conv1d(data, w, padding=1)
    assert torch.allclose(z.mean(dim=(0, 2)), bn.running_mean, atol=1e-10)
    # fold back: round trip
    wf2, bf2 = fold_batchnorm(w, None, bn)
    assert torch.allclose(wf2, wf, atol=1e-12) and torch.allclose(bf2, bf, atol=1e-12)


def test_unfold_batchnorm_float32_roundtrip():
    torch.manual_seed(6)
    c = 16
    w = torch.randn(c, 4, 1)
    bn = _random_bn(c)
    wf, bf = fold_batchnorm(w, None, bn)
    x = torch.randn(2, 4, 64)
    y = F.conv1d(x, wf, bf)
    w2, bn2 = unfold_batchnorm(wf, bf, y.mean(dim=(0, 2)), y.var(dim=(0, 2), unbiased=False))
    tol = 1e-5 * float(y.abs().max())  # float32 round-off relative to the output's magnitude
    assert (bn2(F.conv1d(x, w2)) - y).abs().max() <= tol
    wf3, bf3 = fold_batchnorm(w2, None, bn2)
    assert torch.allclose(wf3, wf, rtol=1e-6) and (bf3 - bf).abs().max() <= tol
