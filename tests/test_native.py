"""The fused C kernels (intops/native.py) against a plain NumPy replay of the same integer maths."""

import numpy as np
import pytest
import torch

from asrquant.intops import native

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: native kernels unavailable")


def _requant_np(acc, M, C, S):
    return (acc.astype(np.int64) * M[None, :, None] + C[None, :, None]) >> S[None, :, None]


def _params(rng, C, big=False):
    S = rng.integers(8, 30, C).astype(np.int64)
    M = rng.integers(1, 1 << (20 if big else 15), C).astype(np.int64)
    Cst = rng.integers(-(1 << 28), 1 << 28, C).astype(np.int64)
    return M, Cst, S


@pytest.mark.parametrize("B,C,T,K,stride,dil,zp", [
    (1, 8, 37, 5, 1, 1, 0), (2, 16, 700, 33, 1, 1, -128), (1, 4, 64, 7, 2, 1, 0), (3, 5, 50, 3, 1, 2, -128),
    (1, 3, 1100, 87, 1, 1, -128), (2, 6, 41, 11, 2, 2, 0),
])
def test_dw_conv_requant_matches_numpy(B, C, T, K, stride, dil, zp):
    rng = np.random.default_rng(B * 1000 + C + K)
    x = rng.integers(-128, 128, (B, C, T)).astype(np.int8)
    x[..., :3] = -128  # extremes: the widest accumulators
    w = rng.integers(-128, 128, (C, K)).astype(np.int8)
    pad = dil * (K - 1) // 2
    M, Cst, S = _params(rng, C)
    lo, hi, post = -100, 90, 7
    y = native.dw_conv_requant(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(M), torch.from_numpy(Cst),
                               torch.from_numpy(S), stride=stride, padding=pad, dilation=dil, zp=zp, post=post,
                               lo=lo, hi=hi).numpy()
    yr = np.pad(x.astype(np.int64) - zp, ((0, 0), (0, 0), (pad, pad)))
    T_out = (T + 2 * pad - dil * (K - 1) - 1) // stride + 1
    acc = np.zeros((B, C, T_out), np.int64)
    for k in range(K):
        acc += w[None, :, k, None].astype(np.int64) * yr[:, :, k * dil: k * dil + stride * (T_out - 1) + 1: stride]
    ref = np.clip(_requant_np(acc, M, Cst, S) + post, lo, hi)
    assert y.shape == ref.shape and y.dtype == np.int8
    assert np.array_equal(y.astype(np.int64), ref)


@pytest.mark.parametrize("n_terms", [1, 2, 3])
@pytest.mark.parametrize("out_dtype", [torch.int8, torch.int64])
def test_requant_sum_matches_numpy(n_terms, out_dtype):
    rng = np.random.default_rng(n_terms)
    B, C, T = 2, 24, 1030  # T > the kernel's 512-frame chunk, and not a multiple of it
    terms, ref = [], 0
    for _ in range(n_terms):
        acc = rng.integers(-(1 << 30), 1 << 30, (B, C, T)).astype(np.int32)
        M, Cst, S = _params(rng, C, big=True)
        terms.append(tuple(torch.from_numpy(a) for a in (acc, M, Cst, S)))
        ref = ref + _requant_np(acc, M, Cst, S)
    ref = ref - 3
    if out_dtype == torch.int8:
        ref = np.clip(ref, -128, 127)
    y = native.requant_sum(terms, post=-3, out_dtype=out_dtype).numpy()
    assert y.dtype == (np.int8 if out_dtype == torch.int8 else np.int64)
    assert np.array_equal(y.astype(np.int64), ref)


def test_threads_give_identical_results():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(-128, 128, (2, 64, 300)).astype(np.int8))
    w = torch.from_numpy(rng.integers(-128, 128, (64, 13)).astype(np.int8))
    M, Cst, S = (torch.from_numpy(a) for a in _params(rng, 64))
    a = native.dw_conv_requant(x, w, M, Cst, S, padding=6, threads=1)
    b = native.dw_conv_requant(x, w, M, Cst, S, padding=6, threads=2)
    assert torch.equal(a, b)


def test_bad_arguments_are_named():
    x = torch.zeros(1, 4, 10, dtype=torch.int8)
    w = torch.zeros(4, 3, dtype=torch.int8)
    p = torch.ones(4, dtype=torch.int64)
    with pytest.raises(TypeError, match="x must be a 3-d torch.int8"):
        native.dw_conv_requant(x.float(), w, p, p, p)
    with pytest.raises(ValueError, match="w has 3 channels"):
        native.dw_conv_requant(x, w[:3], p, p, p)
    with pytest.raises(ValueError, match="M must hold 4 int64"):
        native.dw_conv_requant(x, w, p[:2], p, p)
    with pytest.raises(ValueError, match="contiguous"):
        native.dw_conv_requant(x.transpose(1, 2).contiguous().transpose(1, 2), w, p, p, p)
    with pytest.raises(ValueError, match="acc\\[1\\] has shape"):
        acc = torch.zeros(1, 4, 10, dtype=torch.int32)
        native.requant_sum([(acc, p, p, p), (acc[:, :, :5].contiguous(), p, p, p)])


def test_compile_failure_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ASRQUANT_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    native._lib.cache_clear()
    try:
        assert not native.available()
        with pytest.raises(native.NativeBuildError, match="no C compiler 'no-such-compiler-xyz'"):
            native._lib()
    finally:
        monkeypatch.undo()
        native._lib.cache_clear()
