"""The fused C kernels (intops/native.py) against a plain NumPy replay of the same integer maths, and
the fast runner that lowers the program onto them (program/fast.py) against forward_int."""

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from intasr.intops import native

NEEDS_NATIVE = pytest.mark.skipif(not native.available(), reason="no C compiler: native kernels unavailable")


def _requant_np(acc, M, C, S):
    return (acc.astype(np.int64) * M[None, :, None] + C[None, :, None]) >> S[None, :, None]


def _params(rng, C, big=False):
    S = rng.integers(8, 30, C).astype(np.int64)
    M = rng.integers(1, 1 << (20 if big else 15), C).astype(np.int64)
    Cst = rng.integers(-(1 << 28), 1 << 28, C).astype(np.int64)
    return M, Cst, S


@NEEDS_NATIVE
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


@NEEDS_NATIVE
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


@NEEDS_NATIVE
def test_threads_give_identical_results():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(-128, 128, (2, 64, 300)).astype(np.int8))
    w = torch.from_numpy(rng.integers(-128, 128, (64, 13)).astype(np.int8))
    M, Cst, S = (torch.from_numpy(a) for a in _params(rng, 64))
    a = native.dw_conv_requant(x, w, M, Cst, S, padding=6, threads=1)
    b = native.dw_conv_requant(x, w, M, Cst, S, padding=6, threads=2)
    assert torch.equal(a, b)


@NEEDS_NATIVE
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
    monkeypatch.setenv("INTASR_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    native._lib.cache_clear()
    try:
        assert not native.available()
        with pytest.raises(native.NativeBuildError, match="no C compiler 'no-such-compiler-xyz'"):
            native._lib()
    finally:
        monkeypatch.undo()
        native._lib.cache_clear()


def _cpu(**flags):
    from intasr.cpu import CpuFeatures

    return CpuFeatures(arch="x86_64", vendor="GenuineIntel", model="test CPU", source="cpuid", **flags)


AVX2_ONLY = dict(sse41=True, avx2=True, fma=True)
EVERYTHING = dict(AVX2_ONLY, avx512f=True, avx512bw=True, avx512vnni=True, avxvnni=True, amx_int8=True)


def test_the_build_follows_the_cpu_probe_not_proc_cpuinfo(monkeypatch):
    """The cache key and the -mno-... flags come from this process's CPU (intasr.cpu): an AVX2
    process gets a library of its own, built without AVX-512, whatever the compiler's host has."""
    monkeypatch.setattr(native, "_features", lambda: _cpu(**AVX2_ONLY))
    avx2_flags, avx2_path = native.target_flags(), native.library_path()
    assert {"-mno-avx512f", "-mno-avx512vnni", "-mno-avxvnni"} <= set(avx2_flags) and "-mno-avx2" not in avx2_flags
    monkeypatch.setattr(native, "_features", lambda: _cpu(**EVERYTHING))
    assert native.target_flags() == [] and native.library_path() != avx2_path
    monkeypatch.setattr(native, "_features", lambda: _cpu())   # x86-64 baseline: no AVX at all
    assert {"-mno-avx2", "-mno-fma", "-mno-sse4.1"} <= set(native.target_flags())
    from intasr.cpu import CpuFeatures

    monkeypatch.setattr(native, "_features", lambda: CpuFeatures(arch="aarch64", vendor="", model="", source="none"))
    assert native.target_flags() == []   # x86 options are never passed to another architecture's compiler


@NEEDS_NATIVE
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_a_library_built_for_an_avx2_process_has_no_avx512(monkeypatch, tmp_path):
    """What qemu-x86_64 -cpu max needs on an AVX-512 host: its compiler runs natively (-march=native
    = the host), the process is told AVX2 only; the library must not hold a zmm/opmask instruction."""
    monkeypatch.setenv("INTASR_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_features", lambda: _cpu(**AVX2_ONLY))
    native._lib.cache_clear()
    try:
        path = native.library_path()
        native._lib()
        asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True,
                             check=True).stdout
        assert "ret" in asm and not re.search(r"%zmm|%k[1-7]\b|\{%k", asm)
    finally:
        monkeypatch.undo()
        native._lib.cache_clear()


# --------------------------------------------------------------------------- the fast runner (program/fast.py)

MODES = [pytest.param("native", marks=NEEDS_NATIVE), "float-exact"]


@pytest.fixture(scope="module")
def q_qn():
    from intasr.calibration import random_mels
    from intasr.convert import quantize_model
    from pinned import pinned_float_model

    return quantize_model(pinned_float_model("quartznet5x5"), random_mels(1, 2, 160, seed=0))


@pytest.fixture(scope="module")
def q_dense():
    from intasr.calibration import random_mels
    from intasr.convert import quantize_model
    from pinned import pinned_float_model

    return quantize_model(pinned_float_model("tiny_dense"), random_mels(1, 2, 160, seed=0))


def _assert_valid_equal(qmodel, q, lengths, out, out_len):
    with torch.inference_mode():
        ref, ref_len = qmodel.forward_int(q, lengths)
    assert np.array_equal(out_len, ref_len.numpy())
    assert out.shape == tuple(ref.shape) and out.dtype == np.int64
    for b, n in enumerate(ref_len.tolist()):
        assert np.array_equal(out[b, :, :n], ref[b, :, :n].numpy()), f"item {b}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", ["q_qn", "q_dense"])
def test_fast_runner_bit_exact_on_a_padded_batch(mode, model, request):
    from intasr.program import fast
    from pinned import pinned_inputs

    qmodel = request.getfixturevalue(model)
    q, lengths = pinned_inputs()
    out, out_len = fast.run_fast(qmodel.program, q, lengths, depthwise=mode)
    _assert_valid_equal(qmodel, q, lengths, out, out_len)
    runner = fast.TorchIntegerRunner(qmodel, threads=1, depthwise=mode)
    full = torch.full((3,), q.shape[-1])
    a = runner.run(q)                       # no lengths: every frame valid, no masks
    assert np.array_equal(a, runner.run(q, full))
    _assert_valid_equal(qmodel, q, full, a, runner.run_with_lengths(q)[1].numpy())


@NEEDS_NATIVE
def test_native_runner_fuses_every_conv(q_qn):
    """QuartzNet lowers to fused groups only: depthwise convs in dw_conv_requant, pointwise ones on
    _int_mm feeding requant_sum (residual sums included); only masks and frame counts run alone."""
    from intasr.program import fast

    runner = fast.TorchIntegerRunner(q_qn, threads=1, depthwise="native")
    kinds = runner.kinds()
    n_conv = len(q_qn.program.ops_of("conv1d"))
    assert set(kinds) <= {"group:dw", "group:native", "conv:ndw", "conv:pw", "conv:int"}
    assert kinds["conv:ndw"] == kinds["group:dw"] > 0
    assert sum(v for k, v in kinds.items() if k.startswith("conv:")) == n_conv
    assert len(runner.groups) == len(q_qn.program.ops_of("requantize")) + len(q_qn.program.ops_of("clamp")) + 1


@NEEDS_NATIVE
def test_native_runner_creates_no_float_tensor(q_qn):
    """Every torch op the native runner dispatches returns an integer (or bool mask) tensor; the C
    kernels are integer code by construction (native_kernels.c has no floating-point type)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from intasr.program import fast
    from pinned import pinned_inputs

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor):
                    self.dtypes.append((str(func), t.dtype))
            return out

    src = native.SOURCE.read_text()
    assert not any(w in src for w in ("float", "double")), "native_kernels.c must stay integer-only"
    runner = fast.TorchIntegerRunner(q_qn, threads=1, depthwise="native")
    q, lengths = pinned_inputs()
    with Recorder() as rec:
        runner.run(q, lengths)
    assert len(rec.dtypes) > 50
    assert [r for r in rec.dtypes if r[1].is_floating_point or r[1].is_complex] == []


@pytest.mark.parametrize("mode", MODES)
def test_fast_runner_on_real_audio(small_quartznet, real_audio_batch, mode):
    """Real test-other features (a padded batch of 3), a model calibrated on them."""
    from intasr.convert import quantize_model
    from intasr.program import fast

    with torch.inference_mode():
        mel, mel_len = small_quartznet.features(*real_audio_batch)
    qmodel = quantize_model(small_quartznet, [(mel, mel_len)])
    q = qmodel.quantize_input(mel)
    assert len(set(mel_len.tolist())) > 1
    out, out_len = fast.run_fast(qmodel.program, q, mel_len, depthwise=mode)
    _assert_valid_equal(qmodel, q, mel_len, out, out_len)
