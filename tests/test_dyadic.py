"""Dyadic multipliers and integer requantization against exact rational arithmetic."""
import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from intasr.quant.dyadic import (MAX_SHIFT, dyadic_from_float, requant_fits_int64, requantize,
                                   rescale)
from intasr.intops.reference import requantize_ref


def _round_half_up(fr: Fraction) -> int:
    return math.floor(fr + Fraction(1, 2))


def _check_dyadic(m: float, M: int, shift: int, bits: int = 31):
    assert 0 <= M < 2 ** bits
    assert 0 <= shift <= MAX_SHIFT
    exact = Fraction(m)
    approx = Fraction(M, 2 ** shift)
    if shift < MAX_SHIFT:
        assert M >= 2 ** (bits - 1)  # normalized: full precision
        assert abs(approx - exact) <= exact / 2 ** bits
        # best possible: M is the nearest integer to m * 2^shift
        assert abs(exact * 2 ** shift - M) <= Fraction(1, 2)
    else:
        assert abs(approx - exact) <= Fraction(1, 2 ** (MAX_SHIFT + 1))


def test_dyadic_from_float_random():
    rng = random.Random(0)
    for _ in range(3000):
        m = 2.0 ** rng.uniform(-30, 30) * rng.uniform(0.5, 1.0)
        M, s = dyadic_from_float(m)
        assert isinstance(M, np.int64) and isinstance(s, np.int64)
        _check_dyadic(m, int(M), int(s))


def test_dyadic_power_of_two_edge():
    # f * 2^31 rounds up to exactly 2^31: must renormalize to (2^30, shift - 1)
    for m in (1 - 2.0 ** -40, 0.5 - 2.0 ** -45, 2.0 ** 10 * (1 - 2.0 ** -33), 1.0, 0.5):
        M, s = dyadic_from_float(m)
        assert M < 2 ** 31
        _check_dyadic(m, int(M), int(s))
    M, s = dyadic_from_float(1 - 2.0 ** -40)
    assert (int(M), int(s)) == (2 ** 30, 30)


def test_dyadic_small_and_invalid():
    M, s = dyadic_from_float(2.0 ** -40)  # shift capped at 62
    assert int(s) == MAX_SHIFT and int(M) == 2 ** 22
    _check_dyadic(2.0 ** -40 * 0.7, *map(int, dyadic_from_float(2.0 ** -40 * 0.7)))
    M, s = dyadic_from_float(2.0 ** -70)
    assert (int(M), int(s)) == (0, MAX_SHIFT)
    for bad in (0.0, -1.0, float("inf"), float("nan"), 2.0 ** 31):
        with pytest.raises(ValueError):
            dyadic_from_float(bad)
    with pytest.raises(ValueError):
        dyadic_from_float(np.array([0.5, 0.0]))


def test_dyadic_per_channel_array():
    m = np.array([0.3, 1e-3, 5.0, 1 - 2.0 ** -40])
    M, s = dyadic_from_float(m)
    assert M.dtype == np.int64 and s.dtype == np.int64 and M.shape == (4,)
    for mi, Mi, si in zip(m, M, s):
        assert (Mi, si) == dyadic_from_float(float(mi))
        _check_dyadic(float(mi), int(Mi), int(si))


def test_requantize_exact_rational():
    rng = random.Random(1)
    accs, Ms, shifts = [], [], []
    for i in range(4000):
        kind = i % 4
        if kind == 0:  # generic
            acc = rng.randint(-(2 ** 31), 2 ** 31 - 1)
            M, s = (int(v) for v in dyadic_from_float(2.0 ** rng.uniform(-20, 2)))
        elif kind == 1:  # exact ties: acc * M = (2j + 1) * 2^(s-1)
            s = rng.randint(1, 20)  # keeps |acc| < 2^31
            M = rng.choice([1, 3, 5, 2 ** 30 + 1])
            odd = 2 * rng.randint(-1000, 1000) + 1
            base = odd * 2 ** (s - 1)
            if base % M:
                M = 1
            acc = base // M
        elif kind == 2:  # extreme shifts
            s = rng.choice([0, 1, 2, 61, 62])
            M = rng.randint(0, 2 ** 31 - 1)
            acc = rng.randint(-(2 ** 31), 2 ** 31 - 1)
        else:  # small values near zero, negatives
            acc = rng.randint(-50, 50)
            M, s = (int(v) for v in dyadic_from_float(rng.uniform(0.01, 3)))
        accs.append(acc)
        Ms.append(M)
        shifts.append(s)
    acc_t = torch.tensor(accs, dtype=torch.int64).reshape(1, -1, 1)
    M_a, s_a = np.array(Ms, dtype=np.int64), np.array(shifts, dtype=np.int64)
    got = rescale(acc_t, M_a, s_a, axis=1).reshape(-1).tolist()
    for acc, M, s, y in zip(accs, Ms, shifts, got):
        assert y == _round_half_up(Fraction(acc * M, 2 ** s)), (acc, M, s)
    got8 = requantize(acc_t, M_a, s_a, 8, axis=1).reshape(-1).tolist()
    for y, y8 in zip(got, got8):
        assert y8 == min(max(y, -128), 127)
    assert torch.equal(requantize(acc_t, M_a, s_a, 8, axis=1).long(),
                       torch.from_numpy(requantize_ref(acc_t.numpy(), M_a, s_a, 8, axis=1)))


def test_requantize_ties_direction():
    acc = torch.tensor([-5, -3, -1, 1, 3, 5], dtype=torch.int32)
    y = rescale(acc, 1, 1, axis=0)  # acc / 2, half up
    assert y.tolist() == [-2, -1, 0, 1, 2, 3]


def test_requantize_close_to_real_multiplier():
    rng = np.random.default_rng(2)
    for _ in range(200):
        m = float(rng.uniform(1e-4, 0.1))
        M, s = dyadic_from_float(m)
        acc = torch.from_numpy(rng.integers(-(2 ** 24), 2 ** 24, size=64)).reshape(1, 64, 1)
        y = rescale(acc, M, s)
        exact = [Fraction(int(a)) * Fraction(m) for a in acc.reshape(-1)]
        for yi, e, a in zip(y.reshape(-1).tolist(), exact, acc.reshape(-1).tolist()):
            assert abs(yi - e) <= Fraction(1, 2) + abs(a) * abs(Fraction(int(M), 2 ** int(s)) - Fraction(m))


def test_requantize_per_channel_broadcast_and_dtypes():
    torch.manual_seed(3)
    acc = torch.randint(-(2 ** 20), 2 ** 20, (2, 5, 7), dtype=torch.int32)
    m = np.array([0.001, 0.01, 0.003, 0.5, 2e-5])
    M, s = dyadic_from_float(m)
    y = requantize(acc, M, s, 8)
    assert y.dtype == torch.int8 and y.shape == acc.shape
    for c in range(5):
        yc = requantize(acc[:, c : c + 1], M[c], s[c], 8)
        assert torch.equal(y[:, c : c + 1], yc)
    yu = requantize(acc, M, s, 8, signed=False)
    assert yu.dtype == torch.int16 and int(yu.min()) >= 0 and int(yu.max()) <= 255
    assert torch.equal(yu.long(), torch.from_numpy(requantize_ref(acc.numpy(), M, s, 8, signed=False)))
    # torch tensors for M / shift are accepted too
    assert torch.equal(requantize(acc, torch.from_numpy(M), torch.from_numpy(s), 8), y)
    with pytest.raises(TypeError):
        requantize(acc.float(), M, s, 8)
    with pytest.raises(TypeError):
        requantize(acc, m, s, 8)
    with pytest.raises(ValueError):
        requantize(acc, M[:3], s[:3], 8)


def test_requant_fits_int64_guard():
    assert requant_fits_int64(2 ** 31, 2 ** 31 - 1)
    assert not requant_fits_int64(2 ** 33, 2 ** 31 - 1)
    assert requant_fits_int64(2 ** 33, 2 ** 29, shift=20)
    big = torch.tensor([2 ** 40], dtype=torch.int64)
    with pytest.raises(ValueError):
        rescale(big, 2 ** 30, 31, axis=0)
    assert requant_fits_int64(2 ** 31, np.array([2 ** 30, 2 ** 31 - 1]))
    assert not requant_fits_int64(2 ** 32 - 1, np.array([2 ** 30, 2 ** 31 - 1]))  # + 2^61 rounding term
    assert requant_fits_int64(2 ** 32 - 1, np.array([2 ** 30, 2 ** 31 - 1]), shift=np.array([30, 30]))


def test_requantize_creates_no_float_tensor():
    from intasr.verify import DtypeRecorder as Rec

    acc = torch.randint(-(2 ** 20), 2 ** 20, (2, 4, 9), dtype=torch.int32)
    M, s = dyadic_from_float(np.array([0.1, 0.02, 0.3, 1e-4]))
    with Rec() as rec:
        requantize(acc, M, s, 8)
        rescale(acc, M[0], s[0])
    assert rec.records
    bad = [d for d in rec.records if d[1].is_floating_point]
    assert not bad, bad
