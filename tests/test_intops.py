"""Integer kernels: bit-exact against the independent NumPy reference; integer dtypes only."""

import numpy as np
import pytest
import torch

import torch.nn.functional as F

from intasr.intops import (accumulator_bound, choose_acc_dtype, int_add, int_conv1d, int_relu,
                             mask_time)
from intasr.intops.reference import add_ref, conv1d_ref, mask_time_ref, relu_ref
from intasr.verify import DtypeRecorder


def _rand(gen, lo, hi, shape, dtype):
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int64).to(dtype)


# (name, B, Cin, Cout, T, K, stride, dilation, groups, padding)
SHAPES = [
    ("depthwise k33 s2", 2, 16, 16, 101, 33, 2, 1, 16, 16),
    ("depthwise k87 dil2", 1, 8, 8, 200, 87, 1, 2, 8, 86),
    ("depthwise x2 multiplier", 2, 4, 8, 40, 5, 1, 1, 4, 2),
    ("pointwise", 2, 24, 16, 37, 1, 1, 1, 1, 0),
    ("pointwise s2", 1, 8, 12, 30, 1, 2, 1, 1, 0),
    ("dense k11", 2, 12, 10, 50, 11, 1, 1, 1, 5),
    ("dense k29 dil2 s2", 1, 6, 5, 80, 29, 2, 2, 1, 28),
    ("grouped g4 k5", 2, 16, 8, 33, 5, 1, 1, 4, 2),
    ("asymmetric pad", 1, 6, 6, 20, 4, 1, 1, 1, (3, 0)),
]

# (name, x range, x dtype, w range, w dtype, acc dtype)
OPERANDS = [
    ("int8 x", (-128, 127), torch.int8, (-128, 127), torch.int8, torch.int32),
    ("uint8 x in int16", (0, 255), torch.int16, (-128, 127), torch.int8, torch.int32),
    ("uint8 x in uint8", (0, 255), torch.uint8, (-128, 127), torch.int8, torch.int32),
    ("int4 w, int16 12-bit x", (-2048, 2047), torch.int16, (-8, 7), torch.int8, torch.int32),
    ("int16 x int16 w int64", (-32768, 32767), torch.int16, (-32768, 32767), torch.int16, torch.int64),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("ops", OPERANDS, ids=[o[0] for o in OPERANDS])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int_conv1d_matches_reference(shape, ops, with_bias):
    _, B, Cin, Cout, T, K, stride, dil, groups, pad = shape
    _, (xlo, xhi), xdt, (wlo, whi), wdt, acc_dt = ops
    gen = torch.Generator().manual_seed(hash((shape[0], ops[0], with_bias)) % 2 ** 31)
    x = _rand(gen, xlo, xhi, (B, Cin, T), xdt)
    w = _rand(gen, wlo, whi, (Cout, Cin // groups, K), wdt)
    bias = _rand(gen, -2 ** 20, 2 ** 20, (Cout,), torch.int32) if with_bias else None
    out = int_conv1d(x, w, bias, stride=stride, padding=pad, dilation=dil, groups=groups, acc_dtype=acc_dt)
    assert out.dtype == acc_dt
    ref = conv1d_ref(x.numpy(), w.numpy(), None if bias is None else bias.numpy(),
                     stride=stride, padding=pad, dilation=dil, groups=groups)
    assert out.shape == ref.shape
    assert np.array_equal(out.numpy().astype(np.int64), ref)


def test_reference_matches_float64_conv():
    """The reference itself agrees with float64 F.conv1d where float64 is exact (|acc| < 2^53)."""
    gen = torch.Generator().manual_seed(0)
    for _, B, Cin, Cout, T, K, stride, dil, groups, pad in SHAPES:
        if not isinstance(pad, int):
            continue
        x = _rand(gen, -128, 127, (B, Cin, T), torch.int64)
        w = _rand(gen, -128, 127, (Cout, Cin // groups, K), torch.int64)
        f = F.conv1d(x.double(), w.double(), stride=stride, padding=pad, dilation=dil, groups=groups)
        ref = conv1d_ref(x.numpy(), w.numpy(), stride=stride, padding=pad, dilation=dil, groups=groups)
        assert np.array_equal(f.numpy().astype(np.int64), ref)


def test_int_conv1d_depthwise_int64_acc():
    gen = torch.Generator().manual_seed(1)
    x = _rand(gen, -128, 127, (1, 8, 64), torch.int8)
    w = _rand(gen, -128, 127, (8, 1, 33), torch.int8)
    for acc_dt in (torch.int32, torch.int64):
        out = int_conv1d(x, w, padding=16, groups=8, stride=2, acc_dtype=acc_dt)
        assert out.dtype == acc_dt
        assert np.array_equal(out.numpy().astype(np.int64),
                              conv1d_ref(x.numpy(), w.numpy(), padding=16, groups=8, stride=2))


def test_accumulator_bound_and_overflow_guard():
    gen = torch.Generator().manual_seed(2)
    w = _rand(gen, -128, 127, (6, 4, 3), torch.int8)
    bias = _rand(gen, -1000, 1000, (6,), torch.int32)
    b = accumulator_bound(w, 8, True, bias)
    sums = w.long().abs().reshape(6, -1).sum(1)
    assert b == int((sums * 128 + bias.long().abs()).max())
    assert accumulator_bound(w, 8, False) == int(sums.max()) * 255
    # the bound is attained: x = -128 * sign(w) for the worst channel (no padding, K = T)
    o = int((sums * 128 + bias.long().abs()).argmax())
    x = (-128 * torch.sign(w[o].long())).reshape(1, 4, 3)
    x[x == 0] = -128
    acc = int_conv1d(x.to(torch.int16), w, bias)
    assert abs(int(acc[0, o, 0])) <= b
    assert choose_acc_dtype(2 ** 31 - 1) == torch.int32
    assert choose_acc_dtype(2 ** 31) == torch.int64
    # int16 operands overflow int32: guarded
    xb = torch.full((1, 64, 4), 30000, dtype=torch.int16)
    wb = torch.full((2, 64, 1), 30000, dtype=torch.int16)
    assert accumulator_bound(wb, 16, True) > 2 ** 31
    with pytest.raises(OverflowError):
        int_conv1d(xb, wb, acc_dtype=torch.int32)
    assert int(int_conv1d(xb, wb, acc_dtype=torch.int64)[0, 0, 0]) == 64 * 30000 * 30000
    with pytest.raises(TypeError):
        int_conv1d(xb.float(), wb)
    with pytest.raises(ValueError):
        int_conv1d(xb, wb, groups=3)


def test_relu_add_mask():
    gen = torch.Generator().manual_seed(3)
    a = _rand(gen, -128, 127, (3, 4, 10), torch.int8)
    b = _rand(gen, -128, 127, (3, 4, 10), torch.int8)
    r = int_relu(a)
    assert r.dtype == torch.int8 and np.array_equal(r.numpy(), relu_ref(a.numpy()))
    s = int_add(a, b)
    assert s.dtype == torch.int32  # int8 + int8 widened: no wraparound
    assert np.array_equal(s.numpy(), add_ref(a.numpy(), b.numpy()))
    assert int_add(a.long(), b).dtype == torch.int64
    lengths = torch.tensor([10, 3, 0])
    m = mask_time(a, lengths)
    assert m.dtype == torch.int8 and np.array_equal(m.numpy(), mask_time_ref(a.numpy(), lengths.numpy()))
    m2 = mask_time(a[:, 0], lengths)
    assert np.array_equal(m2.numpy(), mask_time_ref(a[:, 0].numpy(), lengths.numpy()))


def test_no_float_tensor_created():
    gen = torch.Generator().manual_seed(4)
    x8 = _rand(gen, -128, 127, (2, 8, 40), torch.int8)
    xu = _rand(gen, 0, 255, (2, 8, 40), torch.int16)
    x16 = _rand(gen, -4000, 4000, (2, 8, 40), torch.int16)
    wd = _rand(gen, -128, 127, (8, 1, 9), torch.int8)
    wp = _rand(gen, -128, 127, (6, 8, 1), torch.int8)
    wk = _rand(gen, -128, 127, (6, 4, 5), torch.int8)
    bias = _rand(gen, -100, 100, (6,), torch.int32)
    with DtypeRecorder() as rec:
        int_conv1d(x8, wd, None, padding=8, dilation=2, groups=8)
        int_conv1d(x8, wd, None, padding=4, stride=2, groups=8, acc_dtype=torch.int64)
        int_conv1d(x8, wp, bias)
        int_conv1d(xu, wp, bias)
        int_conv1d(x16, wp, bias, acc_dtype=torch.int64)
        int_conv1d(xu, wk, bias, padding=2, groups=2)
        int_relu(x8)
        int_add(x8, xu)
        mask_time(x8, torch.tensor([40, 7]))
        accumulator_bound(wk, 8, False, bias)
    assert len(rec.records) > 20
    bad = [r for r in rec.records if r[1].is_floating_point or r[1].is_complex]
    assert not bad, bad
    assert ("aten._int_mm.default", torch.int32) in rec.records  # the fast path was exercised
