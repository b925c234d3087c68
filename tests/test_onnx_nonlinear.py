"""The integer-only ONNX lowerings of the Conformer ops (program/onnx_nonlinear.py) against the torch
kernels (program/torch_ref.py -> intops.nonlinear / intops.gelu): one tiny ONNX model per op, run on
onnxruntime (CPU, opset 18), equal bit for bit, with the torch kernel's output dtype, and integer-only
by shape inference."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the ONNX lowerings need the 'onnx' package")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the lowerings cannot be run")

from intasr.intops import nonlinear as nl  # noqa: E402
from intasr.intops.gelu import prepare_gelu  # noqa: E402
from intasr.program import nonlinear_params as nlp  # noqa: E402
from intasr.program import onnx_nonlinear as on  # noqa: E402
from intasr.program.onnx_graph import make_session  # noqa: E402
from intasr.program.onnx_int import integer_only_report  # noqa: E402
from intasr.program.ops import OPS, Op, dtype_name  # noqa: E402
from intasr.program.torch_ref import TorchReference  # noqa: E402

KERNELS = TorchReference.kernels
I64 = np.iinfo(np.int64)


def _rng(seed):
    return np.random.default_rng(seed)


def _run_model(model, arrays):
    rep = integer_only_report(model)
    assert rep["ok"], rep
    sess = make_session(model, threads=1)
    return sess.run(None, {f"in{i}": a for i, a in enumerate(arrays)})[0]


def _check(op, *arrays):
    """ONNX lowering of op on arrays == the torch kernel (values and dtype)."""
    specs = [(str(a.dtype), list(a.shape)) for a in arrays]
    out = _run_model(on.build_single_op_model(op, specs), list(arrays))
    ref = KERNELS[op.kind](op, *[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    assert str(out.dtype) == dtype_name(ref.dtype)
    assert out.shape == tuple(ref.shape)
    np.testing.assert_array_equal(out, ref.numpy())
    return out


def _rand(rng, dtype, shape, lo=None, hi=None):
    info = np.iinfo(dtype)
    lo = info.min if lo is None else lo
    hi = info.max if hi is None else hi
    return rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64).astype(dtype)


# ----------------------------------------------------------------------------- coverage

def test_every_conformer_nonlinear_op_kind_has_a_lowering():
    kinds = {"layernorm", "softmax", "swish", "glu", "gelu", "matmul_qk", "matmul_pv", "matmul_pos"}
    assert kinds <= set(OPS) and set(on.LOWERINGS) == kinds


# ----------------------------------------------------------------------------- building blocks

def _isqrt_cases():
    v = {0, 1, 2, 3, I64.max, I64.max - 1}
    for L in range(1, 64):
        for d in (-1, 0, 1):
            v.add((1 << (L - 1)) + d)       # n = 2^(L-1): the worst start k0 = 2 sqrt(n) (L odd)
            v.add((1 << L) - 1 + d)
    for m in list(range(0, 200)) + [int(math.isqrt(I64.max)) - i for i in range(50)] + \
            [(1 << k) + d for k in range(1, 32) for d in (-1, 0, 1)]:
        for d in (-1, 0, 1):
            v.add(m * m + d)
    rng = _rng(0)
    bits = rng.integers(0, 64, 20000)
    v.update(int(x) >> int(63 - b) for x, b in zip(rng.integers(0, I64.max, 20000, dtype=np.int64), bits))
    return np.array(sorted(x for x in v if 0 <= x <= I64.max), dtype=np.int64)


def test_isqrt_fixed_steps_exact():
    n = _isqrt_cases()
    out = _run_model(on.build_unary_model(on.lower_isqrt), [n])
    assert out.tolist() == [math.isqrt(int(x)) for x in n]
    assert torch.equal(torch.from_numpy(out), nl.int_isqrt(torch.from_numpy(n)))


def test_isqrt_step_count_is_tight():
    """5 steps are not enough on some n < 2^63 (n = 2^(L-1) + ..., the worst starts): 6 is the count."""
    n = _isqrt_cases()
    out = _run_model(on.build_unary_model(lambda g, x: on.lower_isqrt(g, x, steps=on.ISQRT_STEPS - 1)), [n])
    assert out.tolist() != [math.isqrt(int(x)) for x in n]


def test_isqrt_exhaustive_small():
    n = np.arange(0, 1 << 16, dtype=np.int64)
    out = _run_model(on.build_unary_model(on.lower_isqrt), [n])
    assert out.tolist() == [math.isqrt(v) for v in range(1 << 16)]


def test_bit_length():
    v = [0, 1, 2, 3, I64.max] + [(1 << k) + d for k in range(1, 63) for d in (-1, 0, 1)]
    n = np.array(v, dtype=np.int64)
    out = _run_model(on.build_unary_model(on.lower_bit_length), [n])
    assert out.tolist() == [int(x).bit_length() for x in v]


@pytest.mark.parametrize("scale", [1e-7, 1e-5, 3e-3, 0.05, 0.7, 20.0])
def test_iexp(scale):
    p = nl.prepare_exp(scale)
    rng = _rng(1)
    lim = (1 << 62) - 1                                # the kernel's documented |q| limit
    x = np.concatenate([
        np.array([0, 1, -1, p.q_min, p.q_min - 1, p.q_min + 1, -lim, lim, 5 * p.q_min], np.int64),
        rng.integers(min(2 * p.q_min, -4), 1, 5000, dtype=np.int64),
        rng.integers(-lim, lim, 500, dtype=np.int64)])
    out = _run_model(on.build_unary_model(lambda g, t: on.lower_exp(g, t, p)), [x])
    ref = nl.int_exp(torch.from_numpy(x), p)
    np.testing.assert_array_equal(out, ref.numpy().astype(np.int64))


# ----------------------------------------------------------------------------- softmax

def _softmax_op(scale, out_bits=8, recip_bits=62):
    p = nl.prepare_softmax(scale, out_bits=out_bits, recip_bits=recip_bits)
    return Op("softmax", ["s", "lengths"], ["p"], {"exp": nlp.exp_attrs(p.exp), "out_bits": out_bits,
                                                   "recip_bits": recip_bits})


@pytest.mark.parametrize("scale", [2e-4, 0.01, 0.3, 4.0])
@pytest.mark.parametrize("dtype", [np.int32, np.int16])
def test_softmax_random_and_masks(scale, dtype):
    rng = _rng(int(scale * 1e4) + np.iinfo(dtype).bits)
    B, H, T = 4, 3, 9
    s = _rand(rng, dtype, (B, H, T, T))
    s[0, 0] //= 64                                     # values within the exp range
    s[1, 1] = 0                                        # all-equal rows: uniform
    s[2, 0, 0] = np.iinfo(dtype).min
    s[2, 0, 0, 3] = np.iinfo(dtype).max                # one hot extreme
    s[2, 2] = _rand(rng, dtype, (T, T), -3, 3)
    lengths = np.array([T, 5, 1, 2], np.int64)         # padded query rows are fully masked
    out = _check(_softmax_op(scale), s, lengths)
    assert out[1, :, 5:].max() == 0 and out[1, :, :, 5:].max() == 0 and out[2, :, 1:].max() == 0


@pytest.mark.parametrize("out_bits,recip_bits", [(8, 62), (4, 20), (12, 40), (16, 62)])
def test_softmax_bits(out_bits, recip_bits):
    rng = _rng(out_bits)
    s = _rand(rng, np.int32, (2, 2, 6, 6), -(1 << 14), 1 << 14)
    _check(_softmax_op(0.003, out_bits, recip_bits), s, np.array([6, 4], np.int64))


def test_softmax_extreme_int64_and_fully_masked_batch():
    rng = _rng(3)
    op = _softmax_op(0.02)
    lim = (1 << 62) - 1
    s = rng.integers(-lim, lim, (3, 2, 5, 5), dtype=np.int64)
    s[0, 0, 0] = [lim, -lim, lim, -lim, 0]
    s[0, 1] = -lim
    s[1, 0] = lim
    _check(op, s, np.array([5, 3, 5], np.int64))
    out = _check(op, s, np.array([0, 0, 2], np.int64))  # lengths 0: every row masked -> all 0
    assert out[:2].max() == 0
    # shift invariance survives the lowering
    s2 = rng.integers(-1000, 1000, (1, 1, 4, 4)).astype(np.int64)
    a = _check(op, s2, np.array([4], np.int64))
    b = _check(op, s2 + 123456789, np.array([4], np.int64))
    np.testing.assert_array_equal(a, b)


def test_softmax_dynamic_shapes():
    """One model (symbolic B, H, T) for several sizes."""
    op = _softmax_op(0.01)
    model = on.build_single_op_model(op, [("int32", ["B", "H", "T", "T"]), ("int64", ["B"])])
    sess = make_session(model, threads=1)
    rng = _rng(4)
    for B, H, T in ((1, 1, 1), (2, 4, 7), (3, 2, 13)):
        s = _rand(rng, np.int32, (B, H, T, T), -(1 << 16), 1 << 16)
        lengths = rng.integers(1, T, B, endpoint=True).astype(np.int64)
        out = sess.run(None, {"in0": s, "in1": lengths})[0]
        ref = KERNELS["softmax"](op, torch.from_numpy(s), torch.from_numpy(lengths))
        np.testing.assert_array_equal(out, ref.numpy())


def test_softmax_shared_keep_mask_and_larger_batch():
    """Two softmaxes (different scales) in one graph share one attention_keep mask; realistic size."""
    from intasr.program.onnx_graph import Graph

    ops = [_softmax_op(0.004), _softmax_op(0.02, recip_bits=40)]
    g = Graph()
    h = g.helper
    keep = on.attention_keep(g, "in0", "in1")
    outs = [on.lower(g, op, ["in0", "in1"], keep=keep) for op in ops]
    for i, y in enumerate(outs):
        g.identity(y, f"out{i}")
    model = g.model([h.make_tensor_value_info("in0", g.TP.INT32, ["B", 4, "T", "T"]),
                     h.make_tensor_value_info("in1", g.TP.INT64, ["B"])],
                    [h.make_tensor_value_info(f"out{i}", g.TP.INT16, None) for i in range(2)], "two")
    assert integer_only_report(model)["ok"]
    assert sum(n.op_type == "Range" for n in model.graph.node) == 1
    rng = _rng(12)
    s = _rand(rng, np.int32, (3, 4, 60, 60), -(1 << 15), 1 << 15)
    lengths = np.array([60, 37, 1], np.int64)
    got = make_session(model, threads=1).run(None, {"in0": s, "in1": lengths})
    for op, out in zip(ops, got):
        np.testing.assert_array_equal(out, KERNELS["softmax"](op, torch.from_numpy(s), torch.from_numpy(lengths)).numpy())


# ----------------------------------------------------------------------------- swish / glu / gelu

def _sig_op(kind, scale, sig_bits):
    p = nl.prepare_swish(scale, sig_bits)
    return Op(kind, ["x"], ["y"], {"exp": nlp.exp_attrs(p.exp), "sig_bits": sig_bits})


def _extremes(rng, dtype, shape, lim=None):
    info = np.iinfo(dtype)
    lo, hi = (info.min, info.max) if lim is None else (-lim, lim)
    x = _rand(rng, dtype, shape, lo, hi).reshape(-1)
    x[:8] = [lo, hi, 0, 1, -1, lo + 1, hi - 1, 2]
    x[8:40] = _rand(rng, dtype, (32,), -5, 5)
    return x.reshape(shape)


@pytest.mark.parametrize("kind", ["swish", "glu"])
@pytest.mark.parametrize("scale", [1e-3, 0.05, 0.5, 8.0])
@pytest.mark.parametrize("sig_bits", [8, 14, 15, 16])
def test_swish_glu_int8(kind, scale, sig_bits):
    rng = _rng(sig_bits)
    _check(_sig_op(kind, scale, sig_bits), _extremes(rng, np.int8, (2, 16, 11)))


@pytest.mark.parametrize("kind", ["swish", "glu"])
@pytest.mark.parametrize("dtype,lim", [(np.int16, None), (np.int32, None), (np.int64, 1 << 31)])
def test_swish_glu_wide(kind, dtype, lim):
    rng = _rng(7)
    for scale in (1e-4, 2e-2):
        _check(_sig_op(kind, scale, 14), _extremes(rng, dtype, (2, 8, 9), lim))


@pytest.mark.parametrize("scale", [1e-4, 4e-3, 0.05, 0.9])
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
def test_gelu(scale, dtype):
    try:
        p = prepare_gelu(scale)
    except ValueError:
        pytest.skip("scale outside the i-GELU range")
    op = Op("gelu", ["x"], ["y"], {"q_b": p.q_b, "q_one": p.q_one})
    lim = (1 << 31) - 1 if dtype == np.int32 else None
    _check(op, _extremes(_rng(11), dtype, (3, 5, 7), lim))


# ----------------------------------------------------------------------------- layernorm

def _ln_op(C, scale, seed=0, out_scale=0.05, **kw):
    rng = _rng(seed)
    gamma = rng.normal(1.0, 0.5, C)
    gamma[0] = 0.0
    gamma[-1] = -0.7
    beta = rng.normal(0.0, 0.3, C)
    p = nl.prepare_layernorm(scale, gamma, beta, out_scale, **kw)
    return Op("layernorm", ["x"], ["y"], nlp.layernorm_attrs(p),
              {"gamma_q": torch.tensor(p.gamma_q, dtype=torch.int64),
               "beta_q": torch.tensor(p.beta_q, dtype=torch.int64)})


def _ln_input(rng, dtype, B, C, T):
    info = np.iinfo(dtype)
    x = _rand(rng, dtype, (B, C, T))
    x[0, :, 0] = info.max                  # constant (variance 0 -> beta)
    x[0, :, 1] = info.min
    x[0, -1, 1] = info.max                 # one-hot extreme
    x[0, :, 2] = _rand(rng, dtype, (C,), -1, 1)
    x[-1, ::2, 0] = info.min
    x[-1, 1::2, 0] = info.max
    return x


@pytest.mark.parametrize("C", [1, 2, 3, 144, 512])
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
def test_layernorm(C, dtype):
    rng = _rng(C)
    x = _ln_input(rng, dtype, 2, C, 5)
    for eps in (1e-5, 0.0):
        _check(_ln_op(C, 4.0 / np.iinfo(dtype).max, C, eps=eps), x)


@pytest.mark.parametrize("eps,scale", [(1e-5, 1e-6), (10.0, 1e-4), (1e3, 1e-7)])
def test_layernorm_eps_shift(eps, scale):
    """eps dominant: r_E > 0 (eps C^3 / S^2 >= 2^60) and the eps term's own shift."""
    op = _ln_op(256, scale, 2, eps=eps)
    x = _ln_input(_rng(2), np.int16, 2, 256, 4)
    _check(op, x)
    _check(op, (x // 256).astype(np.int16))


@pytest.mark.parametrize("out_bits,norm_bits,gamma_bits", [(8, 20, 8), (8, 16, 12), (4, 12, 12), (16, 12, 16), (16, 16, 12), (12, 1, 2)])
def test_layernorm_bits(out_bits, norm_bits, gamma_bits):
    op = _ln_op(64, 1e-2, 3, out_scale=2.0 ** -(out_bits - 3), out_bits=out_bits, norm_bits=norm_bits,
                gamma_bits=gamma_bits)
    _check(op, _ln_input(_rng(5), np.int16, 3, 64, 6))


def test_layernorm_worst_case_int64():
    """The kernel's documented worst case: |q| = 2^32 in int64, C = 2^16 and 4096, one-hot and
    alternating rows, norm_bits 20."""
    for C, F, gb in ((4096, 20, 2), (4096, 16, 8), (1 << 16, 12, 8)):
        op = _ln_op(C, 1e-3, 5, out_scale=0.5, norm_bits=F, gamma_bits=gb)
        x = np.zeros((1, C, 4), np.int64)
        x[0, :, 0] = -(1 << 32)
        x[0, 5, 0] = 1 << 32
        x[0, ::2, 1] = 1 << 32
        x[0, 1::2, 1] = -(1 << 32)
        x[0, :, 2] = 1 << 32
        x[0, -1, 2] = (1 << 32) - 1
        x[0, :, 3] = _rng(C).integers(-(1 << 32), 1 << 32, C, endpoint=True)
        _check(op, x)


# ----------------------------------------------------------------------------- matmuls

@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("acc", ["int32", "int64"])
def test_matmul_qk(heads, acc):
    rng = _rng(heads)
    B, dk, T = 2, 8, 7
    op = Op("matmul_qk", ["q", "k"], ["s"], {"heads": heads, "acc_dtype": acc})
    q, k = _rand(rng, np.int8, (B, heads * dk, T)), _rand(rng, np.int8, (B, heads * dk, T))
    _check(op, q, k)
    _check(op, np.full_like(q, -128), np.full_like(k, -128))  # the largest |sum|: d_k 2^14
    _check(op, np.full_like(q, -128), np.full_like(k, 127))


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("acc", ["int32", "int64"])
def test_matmul_pv(heads, acc):
    rng = _rng(heads + 10)
    B, dk, T = 2, 8, 7
    op = Op("matmul_pv", ["p", "v"], ["y"], {"heads": heads, "acc_dtype": acc})
    p = _rand(rng, np.int16, (B, heads, T, T), 0, 255)
    v = _rand(rng, np.int8, (B, heads * dk, T))
    _check(op, p, v)
    _check(op, np.full_like(p, 255), np.full_like(v, -128))
    _check(op, np.zeros_like(p), v)


def test_matmul_dynamic_shapes():
    op = Op("matmul_qk", ["q", "k"], ["s"], {"heads": 4, "acc_dtype": "int32"})
    model = on.build_single_op_model(op, [("int8", ["B", 32, "T"]), ("int8", ["B", 32, "T"])])
    sess = make_session(model, threads=1)
    rng = _rng(9)
    for B, T in ((1, 1), (3, 17)):
        q, k = _rand(rng, np.int8, (B, 32, T)), _rand(rng, np.int8, (B, 32, T))
        out = sess.run(None, {"in0": q, "in1": k})[0]
        np.testing.assert_array_equal(out, KERNELS["matmul_qk"](op, torch.from_numpy(q), torch.from_numpy(k)).numpy())


def _pos_op(heads, dk, L, acc, seed=0, extreme=None):
    rng = _rng(seed)
    pos = _rand(rng, np.int8, (heads * dk, 2 * L - 1)) if extreme is None else np.full((heads * dk, 2 * L - 1), extreme,
                                                                                         np.int8)
    return Op("matmul_pos", ["q"], ["s"], {"heads": heads, "max_len": L, "acc_dtype": acc},
              {"pos": torch.from_numpy(pos)})


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("acc", ["int32", "int64"])
def test_matmul_pos(heads, acc):
    """Relative-position scores with rel_shift, T < L and T = L (every table column used)."""
    rng = _rng(heads + 20)
    B, dk, L = 2, 8, 9
    op = _pos_op(heads, dk, L, acc, seed=heads)
    for T in (1, 2, 5, L):
        _check(op, _rand(rng, np.int8, (B, heads * dk, T)))
    ext = _pos_op(heads, dk, L, acc, extreme=-128)
    _check(ext, np.full((B, heads * dk, L), -128, np.int8))   # the largest |sum|: d_k 2^14


def test_matmul_pos_dynamic_shapes_and_too_long():
    """One graph for every T <= L; T > L (the torch kernel's ValueError) fails at run time."""
    op = _pos_op(2, 4, 6, "int32", seed=3)
    model = on.build_single_op_model(op, [("int8", ["B", 8, "T"])])
    assert integer_only_report(model)["ok"]
    sess = make_session(model, threads=1)
    rng = _rng(4)
    for B, T in ((1, 1), (3, 4), (2, 6)):
        q = _rand(rng, np.int8, (B, 8, T))
        out = sess.run(None, {"in0": q})[0]
        np.testing.assert_array_equal(out, KERNELS["matmul_pos"](op, torch.from_numpy(q)).numpy())
    with pytest.raises(Exception):
        sess.run(None, {"in0": _rand(rng, np.int8, (1, 8, 7))})


# ----------------------------------------------------------------------------- output dtypes

def test_output_dtypes_match_program_values():
    """The Value records of convert_conformer.IntEmitter: layernorm int8, softmax int16, swish /
    glu int32 (8-bit act input, sig_bits 14), gelu int64, matmuls int32."""
    ln = _ln_op(8, 0.05)
    sw = _sig_op("swish", 0.05, 14)
    assert on.output_dtype(ln) == "int8"
    assert on.output_dtype(_softmax_op(0.01)) == "int16"
    assert on.output_dtype(sw) == "int32" and on.output_dtype(sw, ["int64"]) == "int64"
    assert on.output_dtype(_sig_op("glu", 0.05, 16)) == "int64"
    assert on.output_dtype(Op("gelu", ["x"], ["y"], {"q_b": 3, "q_one": 9})) == "int64"
    assert on.output_dtype(Op("matmul_pv", ["p", "v"], ["y"], {"heads": 2, "acc_dtype": "int32"})) == "int32"
