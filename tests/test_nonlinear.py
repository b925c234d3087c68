"""Integer non-linear kernels (I-BERT / I-ViT): bit-exact against the independent NumPy reference,
within stated error bounds of the float functions, no overflow at the worst-case inputs, float-free."""
import math

import numpy as np
import pytest
import torch

from intasr.intops import nonlinear as nl
from intasr.intops import nonlinear_ref as R
from intasr.quant.quantizer import storage_dtype
from intasr.verify import DtypeRecorder

I32 = torch.iinfo(torch.int32)
SCALES = [3.0, 0.7, 0.1, 0.02, 1e-3, 1e-5, 1e-8]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randint(g, lo, hi, shape, dtype=torch.int32):
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int64).to(dtype)


def _same(t: torch.Tensor, ref: np.ndarray) -> bool:
    return t.shape == ref.shape and np.array_equal(t.numpy().astype(np.int64), ref)


# ----------------------------------------------------------------------------------- i-exp
@pytest.mark.parametrize("S", [10 ** e for e in range(-9, 2)] + SCALES)
def test_prepare_exp_invariants(S):
    p = nl.prepare_exp(S)
    assert (1 << 13) <= p.q_ln2 < (1 << 14) and p.q_b > p.q_ln2
    assert p.out_max == p.q_b ** 2 + p.q_c < 2 ** 31
    assert 0 <= p.z_max <= 62
    # every input <= q_min gives 0 (so the clamp is exact; unclamped Python-int formula), and
    # q_min is not far too low: z = z_sat - 3 still gives a positive result
    zs = p.out_max.bit_length()
    near = -((-p.q_min * (zs - 3)) // zs)
    e = R.exp_ref(np.array([p.q_min - 1, p.q_min, near, 0]), p)
    assert e[0] == e[1] == 0 and e[3] == p.out_max
    assert abs(p.q_min) < 10 or e[2] > 0
    assert math.isclose(p.out_scale * p.out_max, 1.0, rel_tol=4e-3)  # exp(0) ~ a b^2 + c = 1.0003
    # the multiply-shift reciprocal equals floor division on every dividend the kernel can see
    X = -nl._rescale_ints(p.q_min, p.in_shift)
    n = np.arange(X + 1, dtype=np.int64)
    assert np.array_equal((n * p.recip) >> p.recip_shift, n // p.q_ln2)


@pytest.mark.parametrize("S", SCALES)
def test_int_exp_bit_exact_and_extremes(S):
    p = nl.prepare_exp(S)
    g = _gen(int(-math.log10(S) * 10) + 7)
    span = max(1, int(30 / S))
    vals = [_randint(g, -span, 0, (2000,), torch.int64),
            torch.tensor([0, -1, 1, I32.min, I32.max, p.q_min, p.q_min - 1, p.q_min + 1,
                          -(1 << 61), (1 << 61), -(1 << 62) + 1], dtype=torch.int64)]
    for x in vals:
        for dt in (torch.int64, torch.int32):
            if dt == torch.int32 and (x.min() < I32.min or x.max() > I32.max):
                continue
            out = nl.int_exp(x.to(dt), p)
            assert out.dtype == torch.int32
            assert int(out.min()) >= 0 and int(out.max()) <= p.out_max
            assert _same(out, R.exp_ref(x.numpy(), p))


@pytest.mark.parametrize("S", [0.7, 0.1, 0.02, 1e-3, 1e-5])
def test_int_exp_error(S):
    """|e * a S'^2 - exp(x)| <= 3.5e-3 on x = q S <= 0 (poly error 0.31 % plus the rounding of the
    constants and of the input for fine scales)."""
    p = nl.prepare_exp(S)
    q = torch.arange(-int(20 / S), 1, max(1, int(0.01 / S)), dtype=torch.int64)
    got = nl.int_exp(q, p).to(torch.float64) * p.out_scale
    err = (got - torch.exp(q.to(torch.float64) * S)).abs().max().item()
    assert err <= 3.5e-3, err


# ---------------------------------------------------------------------------------- softmax
def _attention_case(seed, dtype=torch.int32, lo=-3000, hi=3000, shape=(2, 3, 5, 37)):
    g = _gen(seed)
    x = _randint(g, lo, hi, shape, dtype)
    B, H, Tq, Tk = shape
    lengths = torch.tensor([Tk, Tk // 3][:B])
    key_pad = (torch.arange(Tk)[None, :] >= lengths[:, None]).reshape(B, 1, 1, Tk)
    return x, key_pad


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("bits", [8, 4, 12])
def test_int_softmax_bit_exact_masks(dtype, bits):
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -3000), min(info.max, 3000)
    x, key_pad = _attention_case(bits * 10 + info.bits, dtype, lo, hi)
    p = nl.prepare_softmax(0.01, out_bits=bits)
    causal = torch.ones(x.shape[-2], x.shape[-1], dtype=torch.bool).triu(1)
    fully = key_pad.expand(x.shape).clone()
    fully[0, 1, 2, :] = True  # one fully masked row in an otherwise valid batch
    for mask in (None, key_pad, causal, key_pad | causal, fully):
        out = nl.int_softmax(x, p, mask)
        assert out.dtype == storage_dtype(bits, signed=False) and out.shape == x.shape
        assert int(out.min()) >= 0 and int(out.max()) <= 2 ** bits - 1
        ref = R.softmax_ref(x.numpy(), p, None if mask is None else mask.numpy())
        assert _same(out, ref)
        if mask is not None:
            assert not out.masked_select(mask.expand(x.shape)).any()  # masked -> exactly 0
    out = nl.int_softmax(x, p, fully)
    assert not out[0, 1, 2].any() and out[0, 1, 1].any()


def test_int_softmax_fully_masked_rows_zero():
    p = nl.prepare_softmax(0.05)
    x = torch.randint(-100, 100, (3, 4, 6), dtype=torch.int32)
    mask = torch.ones(3, 4, 6, dtype=torch.bool)
    mask[1, 2, 3] = False
    out = nl.int_softmax(x, p, mask)
    assert int(out.sum()) == 255 and int(out[1, 2, 3]) == 255
    assert _same(out, R.softmax_ref(x.numpy(), p, mask.numpy()))


def test_int_softmax_extremes():
    """int32 range ends in one row, constant rows, a single element, long rows: no overflow."""
    p = nl.prepare_softmax(1e-4)
    rows = torch.tensor([[I32.min, I32.max, 0, I32.max, I32.min],
                         [I32.max] * 5, [I32.min] * 5, [0, 0, 0, 0, 0], [I32.max, I32.max - 1, 5, 6, I32.min]],
                        dtype=torch.int32)
    out = nl.int_softmax(rows, p)
    assert _same(out, R.softmax_ref(rows.numpy(), p))
    assert out[0].tolist() == [0, 128, 0, 128, 0]
    assert out[1].tolist() == [51] * 5  # 256 / 5 = 51.2
    assert nl.int_softmax(torch.zeros(2, 0, dtype=torch.int32), p).shape == (2, 0)
    one = nl.int_softmax(torch.tensor([[7]], dtype=torch.int32), p)
    assert one.tolist() == [[255]]  # 1.0 clamps to 2^B - 1
    p = nl.prepare_softmax(0.7)  # coarse scale: every exp maximal in a constant long row
    long_row = torch.zeros(1, 4096, dtype=torch.int32)
    out = nl.int_softmax(long_row, p)
    assert _same(out, R.softmax_ref(long_row.numpy(), p)) and set(out.tolist()[0]) == {0}  # 256/4096 -> 0


def test_int_softmax_shift_invariance():
    x, key_pad = _attention_case(3, lo=-20000, hi=20000)
    p = nl.prepare_softmax(1e-3)
    base = nl.int_softmax(x, p, key_pad)
    for c in (1, -1, 12345, -(2 ** 30), 2 ** 30):
        assert torch.equal(nl.int_softmax(x.to(torch.int64) + c, p, key_pad), base)


@pytest.mark.parametrize("S,span", [(1e-3, 20.0), (0.01, 20.0), (0.05, 10.0), (0.2, 25.0), (1e-5, 12.0)])
def test_int_softmax_error(S, span):
    """max |p_int 2^-8 - softmax(x)| < 1e-2 over random attention rows (with padding)."""
    g = _gen(11)
    n = int(span / S)
    x = _randint(g, -n, n, (4, 4, 8, 50))
    x[0, 0, 0] = 0
    x[0, 0, 0, 3] = n  # a dominant element (probability ~ 1)
    key_pad = torch.zeros(4, 1, 1, 50, dtype=torch.bool)
    key_pad[1, ..., 20:] = True
    p = nl.prepare_softmax(S)
    got = nl.int_softmax(x, p, key_pad).to(torch.float64) * p.out_scale
    ref = nl.softmax_float(x.to(torch.float64) * S, key_pad)
    err = (got - ref).abs().max().item()
    assert err < 1e-2, err
    assert ((got.sum(-1) - 1).abs() < 0.05).all()


# ------------------------------------------------------------------------ sigmoid / swish / glu
@pytest.mark.parametrize("S", SCALES)
@pytest.mark.parametrize("bits", [8, 14, 16])
def test_int_sigmoid_bit_exact_symmetric(S, bits):
    p = nl.prepare_sigmoid(S, bits)
    g = _gen(bits)
    span = max(2, int(12 / S))
    x = torch.cat([_randint(g, -span, span, (1500,), torch.int64),
                   torch.tensor([0, 1, -1, I32.min, I32.max, -I32.max], dtype=torch.int64)]).to(torch.int32)
    out = nl.int_sigmoid(x, p)
    assert out.dtype == (torch.int16 if bits <= 14 else torch.int32)
    assert _same(out, R.sigmoid_ref(x.numpy(), p))
    assert int(out.min()) >= 0 and int(out.max()) <= 2 ** bits
    neg = nl.int_sigmoid(-x.to(torch.int64), p)
    ok = x != I32.min
    assert torch.equal((out.to(torch.int64) + neg)[ok], torch.full_like(neg[ok], 2 ** bits))
    assert int(nl.int_sigmoid(torch.tensor([0]), p)) == 2 ** (bits - 1)
    xs, idx = torch.sort(x)
    assert (torch.diff(out[idx].to(torch.int64)) >= 0).all()  # monotone


@pytest.mark.parametrize("S", [0.5, 0.1, 0.02, 1e-3])
@pytest.mark.parametrize("bits,bound", [(8, 3e-3), (14, 1e-3)])
def test_int_sigmoid_error(S, bits, bound):
    """|sig_int 2^-B - sigmoid(x)| <= 2^-(B+1) + 8e-4 (rounding + the exp polynomial's 0.31 %,
    damped by e/(1+e)^2 <= 1/4)."""
    p = nl.prepare_sigmoid(S, bits)
    q = torch.arange(-int(16 / S), int(16 / S) + 1, dtype=torch.int64)
    got = nl.int_sigmoid(q, p).to(torch.float64) * p.out_scale
    err = (got - torch.sigmoid(q.to(torch.float64) * S)).abs().max().item()
    assert err <= bound, err


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32])
def test_int_swish_glu_bit_exact(dtype):
    info = torch.iinfo(dtype)
    g = _gen(info.bits)
    x = _randint(g, info.min, info.max, (2, 12, 33), dtype)
    x[0, 0, :4] = torch.tensor([info.min, info.max, 0, -1], dtype=dtype)
    S = 8.0 / info.max
    for bits in (8, 14, 15):
        p = nl.prepare_swish(S, bits)
        out = nl.int_swish(x, p)
        assert out.dtype == (torch.int32 if dtype != torch.int32 else torch.int64)
        assert _same(out, R.swish_ref(x.numpy(), p))
        pg = nl.prepare_glu(S, bits)
        for dim in (1, 2, -2):
            y = x if x.shape[dim] % 2 == 0 else x[..., :32]
            out = nl.int_glu(y, pg, dim=dim)
            assert out.shape[dim] == y.shape[dim] // 2
            assert _same(out, R.glu_ref(y.numpy(), pg, dim=dim))
            assert abs(int(out.to(torch.int64).abs().max())) <= (-info.min) * 2 ** bits


@pytest.mark.parametrize("S", [0.1, 0.02, 1e-3])
def test_int_swish_glu_error(S):
    """Swish / GLU relative to the input range: |err| <= |x| (2^-15 + 8e-4) + S-free rounding."""
    p = nl.prepare_swish(S)
    q = torch.arange(-int(16 / S), int(16 / S) + 1, dtype=torch.int64)
    x = q.to(torch.float64) * S
    got = nl.int_swish(q, p).to(torch.float64) * p.out_scale
    err = (got - nl.swish_float(x)).abs()
    assert (err <= x.abs() * 1e-3 + 1e-12).all(), err.max().item()
    qq = torch.stack([q.flip(0), q])  # [2, N]: a, b halves along dim 0
    got = nl.int_glu(qq, nl.prepare_glu(S), dim=0)[0].to(torch.float64) * p.out_scale
    ref = nl.glu_float(qq.to(torch.float64) * S, dim=0)[0]
    assert ((got - ref).abs() <= x.flip(0).abs() * 1e-3 + 1e-12).all()


# --------------------------------------------------------------------------- bit length / isqrt
def _isqrt_cases():
    vals = {0, 1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 24, 25, 26, 2 ** 62, 2 ** 62 - 1, 2 ** 62 + 1, 2 ** 63 - 1}
    for b in range(1, 63):
        for v in (2 ** b - 1, 2 ** b, 2 ** b + 1):
            vals.add(v)
    for s in list(range(1, 200)) + [2 ** 31 - 1, 2 ** 31, 3037000499, 2 ** 20 + 7, 2 ** 30 + 3]:
        for d in (-1, 0, 1):
            if 0 <= s * s + d < 2 ** 63:
                vals.add(s * s + d)
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 63, 20000)
    rand = [int(rng.integers(0, 2 ** int(b), dtype=np.uint64)) if b else 0 for b in bits]
    return sorted(vals) + rand


def test_int_isqrt_matches_math_isqrt():
    vals = _isqrt_cases()
    n = torch.tensor(vals, dtype=torch.int64)
    got = nl.int_isqrt(n).tolist()
    assert got == [math.isqrt(v) for v in vals]
    assert nl.int_bit_length(n).tolist() == [v.bit_length() for v in vals]
    assert np.array_equal(R.isqrt_ref(np.array(vals[:100], dtype=np.int64)), np.array(got[:100]))
    assert int(nl.int_isqrt(torch.tensor([2 ** 62]))) == 2 ** 31


def test_int_isqrt_exhaustive_small():
    n = torch.arange(0, 1 << 16, dtype=torch.int64)
    assert nl.int_isqrt(n).tolist() == [math.isqrt(v) for v in range(1 << 16)]


# --------------------------------------------------------------------------------- layernorm
def _ln_params(C, S, seed, out_scale=None, **kw):
    g = _gen(seed)
    gamma = (torch.randn(C, generator=g, dtype=torch.float64) * 0.5 + 1.0).numpy()
    gamma[0] = 0.0
    gamma[-1] = -0.7
    beta = (torch.randn(C, generator=g, dtype=torch.float64) * 0.3).numpy()
    return gamma, beta, nl.prepare_layernorm(S, gamma, beta, out_scale or 0.05, **kw)


@pytest.mark.parametrize("C", [1, 2, 3, 144, 512])
@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32])
def test_int_layernorm_bit_exact(C, dtype):
    info = torch.iinfo(dtype)
    g = _gen(C * 7 + info.bits)
    x = _randint(g, info.min, info.max, (2, 5, C), dtype)
    x[0, 0] = info.max                   # constant row (variance 0 -> beta)
    x[0, 1] = info.min
    x[0, 1, -1] = info.max               # one-hot extreme row: |x - mean| / std = sqrt(C - 1)
    x[0, 2] = _randint(g, -1, 1, (C,), dtype)  # tiny variance
    x[1, 0, ::2] = info.min
    x[1, 0, 1::2] = info.max
    for eps in (1e-5, 0.0):
        _, _, p = _ln_params(C, 4.0 / info.max, C, eps=eps)
        out = nl.int_layernorm(x, p)
        assert out.dtype == torch.int8
        assert _same(out, R.layernorm_ref(x.numpy(), p))
        xt = x.transpose(1, 2).contiguous()  # [B, C, T], channel axis 1
        assert torch.equal(nl.int_layernorm(xt, p, dim=1), out.transpose(1, 2))


def test_int_layernorm_worst_case_no_overflow():
    """|q| = 2^32 (the documented limit) in int64, C = 2^16 and 4096, one-hot and alternating
    rows, norm_bits 20: the int64 kernel must equal the Python-int reference."""
    for C, F, gb in ((4096, 20, 2), (4096, 16, 8), (1 << 16, 12, 8)):
        gamma, beta, p = _ln_params(C, 1e-3, 5, out_scale=0.5, norm_bits=F, gamma_bits=gb)
        x = torch.zeros(3, C, dtype=torch.int64)
        x[0] = -(1 << 32)
        x[0, 5] = 1 << 32
        x[1, ::2] = 1 << 32
        x[1, 1::2] = -(1 << 32)
        x[2, :] = 1 << 32
        x[2, -1] = (1 << 32) - 1
        out = nl.int_layernorm(x, p)
        assert _same(out, R.layernorm_ref(x.numpy(), p))
        if gb < 8:
            continue
        ref = nl.layernorm_float(x.to(torch.float64) * 1e-3, gamma, beta)
        inside = ref.abs() < 126 * 0.5  # not saturated by the 8-bit clamp
        assert inside.float().mean() > 0.9
        n_ref = nl.layernorm_float(x.to(torch.float64) * 1e-3, np.ones(C), np.zeros(C))
        bound = 0.5 * 0.5 + (p.gamma_scale / 2 + 2.0 ** -F) * n_ref.abs() + 1e-3  # 8-bit gamma here
        assert ((out.to(torch.float64) * 0.5 - ref).abs() <= bound)[inside].all()
        assert torch.equal(out[~inside].sign(), ref[~inside].sign().to(torch.int8))


@pytest.mark.parametrize("C,S,spread", [(144, 0.05, 40), (512, 0.01, 300), (256, 1e-3, 3000), (64, 0.1, 3),
                                        (64, 1e-3, 2)])  # the last: variance ~ eps
def test_int_layernorm_error(C, S, spread):
    """8-bit output: |out - float| <= 0.5 LSB + 1e-3 (1 + |n|), n = the normalized input (gamma
    quantized to 12 bits: |dgamma| <= max|gamma| 2^-12; the normalized value's 2^-12 resolution)."""
    g = _gen(C)
    x = (torch.randn(4, 20, C, generator=g, dtype=torch.float64) * spread
         + torch.randn(4, 20, 1, generator=g, dtype=torch.float64) * spread).round().to(torch.int32)
    gamma = (torch.randn(C, generator=g, dtype=torch.float64) * 0.3 + 1.0).numpy()
    beta = (torch.randn(C, generator=g, dtype=torch.float64) * 0.2).numpy()
    ref = nl.layernorm_float(x.to(torch.float64) * S, gamma, beta)
    So = ref.abs().max().item() / 127
    p = nl.prepare_layernorm(S, gamma, beta, So)
    out = nl.int_layernorm(x, p).to(torch.float64) * So
    err = (out - ref).abs()
    n_ref = nl.layernorm_float(x.to(torch.float64) * S, np.ones(C), np.zeros(C))
    assert (err <= 0.5 * So + 1e-3 * (1 + n_ref.abs())).all(), (err / So).max().item()
    # the normalized value itself (gamma = 1, beta = 0, fine output scale): relative error
    p1 = nl.prepare_layernorm(S, np.ones(C), np.zeros(C), 2.0 ** -10, out_bits=16)
    n_int = nl.int_layernorm(x, p1).to(torch.float64) * 2.0 ** -10
    assert ((n_int - n_ref).abs() <= 2.0 ** -11 + 2.0 ** -12 + 1e-3 * n_ref.abs()).all()


def test_prepare_rejects_bad_input():
    with pytest.raises(ValueError):
        nl.prepare_exp(0.0)
    with pytest.raises(ValueError):
        nl.prepare_exp(float("nan"))
    with pytest.raises(ValueError):
        nl.prepare_softmax(0.1, out_bits=1)
    with pytest.raises(ValueError):
        nl.prepare_layernorm(0.1, [1.0, 2.0], [0.0], 0.1)
    with pytest.raises(ValueError):  # |beta| >> |gamma|: the accumulator cannot be requantized in int64
        nl.prepare_layernorm(0.1, [1e-12, 1e-12], [1e6, 1.0], 1e-8, norm_bits=20, gamma_bits=24)
    with pytest.raises(TypeError):
        nl.int_exp(torch.zeros(3), nl.prepare_exp(0.1))
    with pytest.raises(ValueError):
        nl.int_glu(torch.zeros(2, 3, dtype=torch.int8), nl.prepare_glu(0.1), dim=1)
    with pytest.raises(ValueError):  # documented input ranges are enforced on int64 tensors
        nl.int_softmax(torch.tensor([[1 << 62, 0]]), nl.prepare_softmax(0.1))
    with pytest.raises(ValueError):
        nl.int_layernorm(torch.tensor([[(1 << 32) + 1, 0]]), _ln_params(2, 0.1, 0)[2])
    with pytest.raises(ValueError):
        nl.int_swish(torch.tensor([-(1 << 31) - 1]), nl.prepare_swish(0.1))


# ------------------------------------------------------------------------------------ matmul
def test_int_matmul_exact():
    g = _gen(5)
    a = _randint(g, -128, 127, (17, 64), torch.int8)
    b = _randint(g, -128, 127, (64, 9), torch.int8)
    out = nl.int_matmul(a, b)
    assert out.dtype == torch.int32 and _same(out, R.matmul_ref(a.numpy(), b.numpy()))
    q = _randint(g, -128, 127, (2, 4, 30, 16), torch.int8)
    k = _randint(g, -128, 127, (2, 4, 30, 16), torch.int8)
    scores = nl.int_matmul(q, k.transpose(-1, -2))
    assert scores.shape == (2, 4, 30, 30) and _same(scores, R.matmul_ref(q.numpy(), np.swapaxes(k.numpy(), -1, -2)))
    probs = _randint(g, 0, 255, (2, 4, 30, 30), torch.int16)
    v = _randint(g, -128, 127, (2, 4, 30, 16), torch.int8)
    ctx = nl.int_matmul(probs, v)
    assert _same(ctx, R.matmul_ref(probs.numpy(), v.numpy()))
    big = torch.full((2, 1 << 16), I32.max, dtype=torch.int32)
    with pytest.raises(OverflowError):
        nl.int_matmul(big, big.T)
    assert _same(nl.int_matmul(big[:, :1], big[:, :1].T, acc_dtype=torch.int64),
                 R.matmul_ref(big[:, :1].numpy(), big[:, :1].numpy().T))


# -------------------------------------------------------------------------------- float-free
def test_kernels_are_float_free():
    x, key_pad = _attention_case(1)
    ps, psig = nl.prepare_softmax(0.01), nl.prepare_sigmoid(0.05)
    psw, pg = nl.prepare_swish(0.05), nl.prepare_glu(0.05)
    _, _, pln = _ln_params(37, 0.01, 1)
    x8 = x.clamp(-128, 127).to(torch.int8)
    with DtypeRecorder() as rec:
        nl.int_exp(-x.abs(), ps.exp)
        nl.int_softmax(x, ps, key_pad)
        nl.int_sigmoid(x, psig)
        nl.int_swish(x8, psw)
        nl.int_glu(x8[:, :2], pg, dim=1)
        nl.int_layernorm(x, pln)
        nl.int_isqrt(x.abs().to(torch.int64))
        nl.int_matmul(x8, x8.transpose(-1, -2))
        nl.int_matmul(x8[0, 0], x8[0, 0].T)
    assert len(rec.records) > 50
    assert rec.float_ops() == []
