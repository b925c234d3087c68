"""The C runtime (program/c_backend.py, `intasr export --c`): bit-exact, float-free, buildable.

The models are the pinned small programs of tests/pinned.py: a random-weight QuartzNet-5x5
(depthwise, strided depthwise, residual sums) and a tiny JasperDR-shaped model (dense k > 1
convs, dilation, a strided prologue), W8A8. Inputs: a padded batch of 3 (lengths 150, 120, 77).
Every kernel family this CPU runs is checked against the NumPy reference (ASRQ_ISA forces one;
each family gets its own build folder, since the library chooses its family once per process),
also on an adversarial program: int8 weights at the extremes and inputs over the whole range,
where a plain vpmaddubsw would saturate and most inputs fall outside the AVX2 family's window.
"""
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pinned import pinned_inputs
from test_program import _quantize

from intasr.cli import main
from intasr.program.emit_convasr import IntBlock, emit_convasr
from intasr.program.builder import IntConv
from intasr.integer_model import save_quantized
from intasr.cpu import FAMILIES, cpu_features, supports
from intasr.intops.conv import accumulator_bound, choose_acc_dtype
from intasr.program.c_backend import (CExportError, CRuntime, build, export_c, kernel_library, read_logits,
                                      write_input)
from intasr.program.numpy_ref import NumpyReference
from intasr.program.ops import Op, Program
from intasr.quant.weights import dyadic_multiplier

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="needs a C compiler and make")
X86 = platform.machine() in ("x86_64", "AMD64")


@pytest.fixture(scope="module", params=["quartznet5x5_w8a8", "tiny_dense_w8a8"])
def case(request):
    q = _quantize(request.param)
    x, lengths = pinned_inputs()
    ref, ref_len = NumpyReference().run(q.program, x.numpy(), lengths.numpy())
    return request.param, q, x.numpy(), lengths.numpy(), ref, ref_len


def family_runtime(program, family, tmp_path, monkeypatch, threads=2):
    """The C runtime built in its own folder with ASRQ_ISA = family (None: the library's own choice);
    skipped where this CPU cannot run the family."""
    if family is not None and not supports(cpu_features(), family):
        pytest.skip(f"this CPU ({cpu_features().model or cpu_features().arch}) cannot run the {family} kernels")
    if family is None:
        monkeypatch.delenv("ASRQ_ISA", raising=False)
    else:
        monkeypatch.setenv("ASRQ_ISA", family)
    rt = CRuntime(program, threads=threads, out_dir=tmp_path / f"c_{family or 'auto'}")
    assert rt.isa == (family or cpu_features().best_family)
    return rt


@pytest.mark.parametrize("family", [None, *FAMILIES])
def test_every_logit_equals_the_reference_on_a_padded_batch(case, family, tmp_path, monkeypatch):
    name, q, x, lengths, ref, ref_len = case
    rt = family_runtime(q.program, family, tmp_path, monkeypatch)
    logits, out_len = rt.run_with_lengths(x, lengths)
    assert np.array_equal(out_len, ref_len)
    assert logits.shape == ref.shape
    assert int((logits != ref).sum()) == 0, f"{name} ({rt.isa}): logits differ"
    # batch of one, unpadded: the same integers as the reference on that item alone
    one, _ = NumpyReference().run(q.program, x[2:3, :, :77], lengths[2:3])
    assert np.array_equal(rt.run(x[2:3, :, :77]), one)


def test_a_relative_native_cache_builds_and_runs(case, tmp_path, monkeypatch):
    """$INTASR_NATIVE_CACHE may be relative: make runs in each library's own folder, so the cache
    is made absolute (paths.native_cache) before a path into it reaches make."""
    name, q, x, lengths, ref, ref_len = case
    kernels = kernel_library().parent   # the archive of the session's cache, compiled once
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INTASR_NATIVE_CACHE", "relative-cache")
    (tmp_path / "relative-cache" / "c_runtime").mkdir(parents=True)
    (tmp_path / "relative-cache" / "c_runtime" / kernels.name).symlink_to(kernels)
    rt = CRuntime(q.program, threads=1)
    assert rt.dir.parent == tmp_path / "relative-cache" / "c_runtime"
    logits, out_len = rt.run_with_lengths(x, lengths)
    assert np.array_equal(out_len, ref_len) and np.array_equal(logits, ref), name


def test_the_checked_programs_hold_groups_the_fused_epilogue_takes(case):
    """The avx512-vnni kernels requantize a group of one group32 term straight from its accumulator
    registers (store_fused32); the programs checked above hold such groups, dense and (QuartzNet)
    depthwise, so the logits check covers that path too."""
    from intasr.program.c_lower import Lowering

    name, q = case[0], case[1]
    kinds = {s.data["terms"][0].kind for s in Lowering(q.program).steps
             if s.kind == "group" and len(s.data["terms"]) == 1 and s.data["terms"][0].group32}
    assert kinds == ({"gemm", "dw"} if name.startswith("quartznet") else {"gemm"})


def _extreme_conv(g, cin, cout, k=1, groups=1, stride=1, dilation=1, out_signed=True, x_std=70.0, target=40.0):
    """A conv whose int8 weights sit at the extremes half the time; (M, shift) spread its outputs
    (std about `target`) for inputs of std `x_std`."""
    shape = (cout, cin // groups, k)
    w = torch.randint(-128, 128, shape, generator=g)
    ends = torch.where(torch.rand(shape, generator=g) < 0.5, torch.full(shape, -128), torch.full(shape, 127))
    w = torch.where(torch.rand(shape, generator=g) < 0.5, ends, w).to(torch.int8)
    spread = (cin // groups * k) ** 0.5 * 90.0 * x_std   # the accumulator's std (weights: std about 90)
    bias = torch.randint(-int(spread), int(spread), (cout,), generator=g).to(torch.int32)
    bound = accumulator_bound(w, 8, True, bias)
    M, shift = dyadic_multiplier(torch.full((cout,), target / spread, dtype=torch.float64), bound)
    return IntConv(w, bias, M, shift, stride=stride, padding=dilation * (k - 1) // 2, dilation=dilation, groups=groups,
                   acc_dtype=choose_acc_dtype(bound), out_signed=out_signed)


def extreme_program(seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = [
        # depthwise + pointwise with a residual 1x1 branch (signed input, unsigned sum)
        IntBlock([_extreme_conv(g, 64, 64, 11, groups=64, x_std=74.0), _extreme_conv(g, 64, 96, out_signed=False)],
                 residual=[_extreme_conv(g, 64, 96, out_signed=False, x_std=74.0)]),
        # a dense strided conv, then a dilated strided depthwise conv and a pointwise one
        IntBlock([_extreme_conv(g, 96, 80, 5, stride=2, out_signed=False)]),
        IntBlock([_extreme_conv(g, 80, 80, 7, groups=80, stride=2, dilation=2),
                  _extreme_conv(g, 80, 130, out_signed=False)]),
    ]
    return emit_convasr(blocks, _extreme_conv(g, 130, 29), 0.05, 8)


def test_extreme_weights_and_inputs_would_saturate_a_plain_vpmaddubsw():
    """The adversarial program is adversarial: in its pointwise convs, pairs of stored u8 inputs
    times int8 weights exceed int16 (what onnxruntime's U8S8 kernels would saturate), and most
    inputs lie outside the AVX2 family's 6-bit window."""
    p = extreme_program()
    x = np.random.default_rng(0).integers(-128, 128, (1, 64, 120))
    env = NumpyReference().execute(p, {"input": x, "input_lengths": np.array([120])})
    op = next(o for o in p.ops if o.name == "blocks.0.convs.1")
    u = env[op.inputs[0]][0] + 128                           # stored (signed: + 128), [C, T]
    w = op.params["weight"].numpy()[:, :, 0].astype(np.int64)   # [Cout, C]
    pair = u[None, 0::2, :] * w[:, 0::2, None] + u[None, 1::2, :] * w[:, 1::2, None]
    assert np.abs(pair).max() > 32767
    y = env[op.inputs[0]]
    assert ((y < -32) | (y >= 32)).mean() > 0.3


@pytest.mark.parametrize("family", [None, *FAMILIES])
def test_every_family_is_exact_on_the_adversarial_program(family, tmp_path, monkeypatch):
    _adversarial_is_exact(family, tmp_path, monkeypatch)


@pytest.mark.parametrize("window", ["6", "7"])
def test_avx2_gemm_windows_are_both_exact(window, tmp_path, monkeypatch):
    """The AVX2 family picks a GEMM's window from its data; forced, each window is exact on inputs
    mostly outside it (tails of every size: d in [-2, 2] for 6 bits)."""
    monkeypatch.setenv("ASRQ_AVX2_WINDOW", window)
    _adversarial_is_exact("avx2", tmp_path, monkeypatch)


def _adversarial_is_exact(family, tmp_path, monkeypatch):
    p = extreme_program()
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (3, 64, 150)).astype(np.int8)
    lengths = np.array([150, 111, 64])
    ref, ref_len = NumpyReference().run(p, x, lengths)
    rt = family_runtime(p, family, tmp_path, monkeypatch)
    logits, out_len = rt.run_with_lengths(x, lengths)
    assert np.array_equal(out_len, ref_len)
    assert int((logits != ref).sum()) == 0, f"{rt.isa}: {int((logits != ref).sum())} of {ref.size} logits differ"
    assert np.abs(ref).max() > 0


def test_asrq_isa_names_a_family_the_cpu_lacks_or_that_does_not_exist(tmp_path, monkeypatch):
    q = _quantize("quartznet5x5_w8a8")
    monkeypatch.setenv("ASRQ_ISA", "sse9")
    with pytest.raises(RuntimeError, match=r"ASRQ_ISA=sse9: this build has no such kernels \(it has .*portable\)"):
        CRuntime(q.program, out_dir=tmp_path / "bogus")
    lacking = [f for f in FAMILIES if not supports(cpu_features(), f)]
    if not lacking:
        pytest.skip("this CPU runs every kernel family")
    monkeypatch.setenv("ASRQ_ISA", lacking[0])
    with pytest.raises(RuntimeError, match=f"ASRQ_ISA={lacking[0]}: this CPU cannot run the {lacking[0]} kernels"):
        CRuntime(q.program, out_dir=tmp_path / "lacking")


def test_cli_exports_builds_and_prints_the_reference_tokens(case, tmp_path):
    name, q, x, lengths, ref, ref_len = case
    aqz = save_quantized(q, tmp_path / "m.aqz")
    out = tmp_path / "c"
    assert main(["export", str(aqz), "--c", str(out)]) == 0
    subprocess.run(["make", "-s", "-C", str(out), "asrq"], check=True, capture_output=True)
    for b in (0, 2):   # a full and a padded item: T = 150 frames, 77 valid in item 2
        inp = write_input(tmp_path / f"in{b}.q8", x[b], int(lengths[b]))
        r = subprocess.run([str(out / "asrq"), str(out / "model.bin"), str(inp), "-t", "2", "--logits",
                            str(tmp_path / "l.bin")], capture_output=True, text=True, check=True)
        logits, valid = read_logits(tmp_path / "l.bin")
        assert valid == ref_len[b] and np.array_equal(logits, ref[b])
        am = ref[b][:, : ref_len[b]].argmax(0)
        blank = ref.shape[1] - 1
        tokens = [int(t) for i, t in enumerate(am) if t != blank and (i == 0 or t != am[i - 1])]
        printed = re.search(r"^tokens:(.*)$", r.stdout, re.M).group(1).split()
        assert [int(t) for t in printed] == tokens
        text = re.search(r"^text: (.*)$", r.stdout, re.M).group(1)
        assert text == "".join(q.labels[t] for t in tokens)


def test_a_foreign_weights_blob_is_refused_in_one_line(case, tmp_path):
    _, q, x, *_ = case
    out = export_c(q.program, tmp_path / "c", q.labels)
    build(out, target="asrq")
    bad = tmp_path / "bad.bin"
    bad.write_bytes((out / "model.bin").read_bytes()[:-10])
    inp = write_input(tmp_path / "in.q8", x[0])
    r = subprocess.run([str(out / "asrq"), str(bad), str(inp)], capture_output=True, text=True)
    assert r.returncode == 2 and "bad.bin is not the weights blob of this model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_an_op_the_c_backend_cannot_place_fails_export_naming_it(case, tmp_path):
    """A conv whose requantize became a swish (no group, no table can hold either): export stops at
    the first op it cannot place, naming it. Every op kind of the program is lowered."""
    _, q, *_ = case
    p = q.program
    ops = list(p.ops)
    ops[3] = Op("swish", ops[3].inputs, ops[3].outputs, {"exp": {}, "sig_bits": 8}, name="blk.swish")
    with pytest.raises(CExportError, match=r"blocks\.0\.convs\.0: a conv1d op outside the patterns the C backend fuses"):
        export_c(Program(p.values, ops, p.inputs, p.outputs, p.meta), tmp_path / "c")
    from intasr.program.c_lower import LOWERS
    from intasr.program.ops import OPS

    assert set(OPS) == set(LOWERS)


# ------------------------------------------------------------------ no floating point

FLOAT_MNEMONIC = re.compile(
    r"^(v?(add|sub|mul|div|sqrt|max|min|rcp\w*|rsqrt\w*|round|fn?m(add|sub)\w*|fmaddsub\w*|fmsubadd\w*|cmp\w*|"
    r"u?comi|hadd|hsub|dp|getexp|getmant|scalef|reduce|range|fixupimm)(ss|sd|ps|pd|sh|ph)"
    r"|v?cvt\w*(ss|sd|ps|pd|sh|ph)\w*"
    r"|f(ld|st|stp|add|addp|sub|subp|subr|mul|mulp|div|divp|divr|ild|ist|istp|isttp|sqrt|sin|cos|prem|com|comp|ucom\w*|"
    r"xch|chs|abs|ldz|ld1|rndint|scale|xam|tst|cmov\w*))[lqswt]?$")


def float_instructions(obj: Path) -> list[str]:
    """Floating-point instructions (x87, SSE/AVX scalar or packed float arithmetic and conversions)
    in an object file's disassembly; integer SIMD and plain vector moves are allowed."""
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                         check=True).stdout
    found = []
    for line in dis.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and re.match(r"^\s*[0-9a-f]+:$", parts[0]):
            mnemonic = parts[1].split()[0] if parts[1].split() else ""
            if FLOAT_MNEMONIC.match(mnemonic):
                found.append(mnemonic)
    return found


def _c_tokens(path: Path) -> set[str]:
    text = re.sub(r"/\*.*?\*/", " ", path.read_text(), flags=re.S)
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    return set(re.findall(r"[A-Za-z_]\w*", text))


def test_generated_code_has_no_float_types_and_builds_without_an_fpu(case, tmp_path):
    _, q, *_ = case
    out = export_c(q.program, tmp_path / "c", q.labels)
    for src in ("model.c", "asrq_kernels.c", "asrq_kernels.h", "asrq.h", "main.c"):
        bad = _c_tokens(out / src) & {"float", "double", "_Complex", "long double", "__fp16", "_Float16"}
        assert not bad, f"{src} uses {bad}"
    if not X86 or shutil.which("objdump") is None:
        pytest.skip("-mgeneral-regs-only / objdump check needs x86-64 gcc and binutils")
    # no SSE/x87 registers at all: the compiler refuses any floating-point operation (the portable
    # family alone: the other families are SIMD code)
    r = subprocess.run(["cc", "-std=c99", "-O3", "-mgeneral-regs-only", "-c", "model.c", "asrq_kernels.c", "main.c"],
                       cwd=out, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the whole build (every kernel family this compiler makes: AVX2, AVX-VNNI, AVX-512 VNNI integer
    # SIMD) has no float instruction either
    build(out, target="asrq")
    objs = sorted(out.glob("*.o"))
    assert {"model.o", "kernels_portable.o"} <= {o.name for o in objs}
    assert any(o.name == "kernels_avx2.o" for o in objs), [o.name for o in objs]
    for obj in objs:
        assert float_instructions(obj) == [], obj.name


def test_the_float_instruction_scan_finds_float_code(tmp_path):
    """The scan above can fail: it flags a float multiply, an int->double conversion and x87."""
    if not X86 or shutil.which("objdump") is None:
        pytest.skip("needs x86-64 and objdump")
    src = tmp_path / "f.c"
    src.write_text("double f(double a, int b) { return a * b; }\nfloat g(float *x, int n) { float s = 0; "
                   "for (int i = 0; i < n; ++i) s += x[i]; return s; }\nlong double h(long double a) { return a * a; }\n")
    subprocess.run(["cc", "-O3", "-march=native", "-c", str(src), "-o", str(tmp_path / "f.o")], check=True)
    found = set(float_instructions(tmp_path / "f.o"))
    assert any(m.startswith(("vmulsd", "mulsd")) for m in found), found
    assert any("cvt" in m for m in found), found
    assert any(m.startswith("fmul") for m in found), found
    assert os.path.getsize(tmp_path / "f.o") > 0


# ------------------------------------------------------------------ intasr bench

def test_bench_times_the_c_runtime_and_onnxruntimes_static_int8_side_by_side(tmp_path, train_clean_dir, monkeypatch):
    """One bench run: c-int8 bit-exact, the onnxruntime static int8 peer calibrated on real audio,
    and the C runtime's ratios computed from the medians."""
    import json

    from pinned import pinned_float_model

    from intasr.deploy import bench
    from intasr.models import save_model

    float5 = pinned_float_model("quartznet5x5")
    q5 = _quantize("quartznet5x5_w8a8")
    mpath = save_model(float5, tmp_path / "m.nemo")
    peer = {"model_path": str(mpath), "calibration_data": str(train_clean_dir), "limit": 2}
    monkeypatch.setenv("INTASR_BUILD", str(tmp_path))   # the peer's cached model: tmp_path/ort_static
    res = bench.bench(float5, q5, seconds=0.5, repeats=3, warmup=1, threads=1,
                      runtimes=("onnxruntime-fp32", "c-int8", bench.PEER), peer=peer)
    assert not res["skipped"], res["skipped"]
    c, p = res["runtimes"]["c-int8"], res["runtimes"][bench.PEER]
    assert c["bit_exact"] and c["integer_only"] and res["int8_integer_only_runtime"] == "c-int8"
    assert p["precision"] == "int8-peer" and 0 <= p["argmax_agreement_vs_fp32"] <= 1
    assert list((tmp_path / "ort_static").glob("static_int8_*.onnx"))
    assert res["c_vs_fp32"] == pytest.approx(res["fp32_ms"] / c["median_ms"])
    assert res["c_vs_peer"] == pytest.approx(p["median_ms"] / c["median_ms"])
    assert "faster than onnxruntime-static-int8" in bench.format_report(res)
    json.dumps(res)


def _with_requant(p, name, M=None, shift=None, weight=None):
    """A copy of program p with op `name`'s multipliers / shifts (or its conv's weights) replaced."""
    import copy

    p = copy.deepcopy(p)
    op = next(o for o in p.ops if o.name == name)
    if M is not None:
        op.params["M"] = torch.full_like(op.params["M"], M)
    if shift is not None:
        op.params["shift"] = torch.full_like(op.params["shift"], shift)
    if weight is not None:
        op.params["weight"] = torch.full_like(op.params["weight"], weight)
    return p


def test_export_constants_match_exact_integers_and_refuse_overflow():
    """The requantization constants (computed in int64 where a bound proves it safe) equal the exact
    integer formula C = (bias - (offset - gamma) rowsum) M + 2^S / 2; a multiplier that can overflow
    int64 and an accumulator range past int32 are refused by name."""
    from intasr.program.c_lower import CExportError, Lowering

    p = extreme_program()
    lw = Lowering(p)
    terms = [t for st in lw.steps for t in st.data.get("terms", []) if t.kind != "ident"]
    assert terms
    for t in terms:
        w = t.w.reshape(len(t.M), -1).astype(object)
        bias = t.conv.params.get("bias")
        bias = [int(v) for v in bias.tolist()] if bias is not None else [0] * len(t.M)
        off = lw.acts[t.src].off
        for o in range(len(t.M)):
            m, s, rowsum = int(t.M[o]), int(t.S[o]), int(w[o].sum())
            for gamma, consts in ((0, t.C), (t.gamma6, t.Cs6), (t.gamma7, t.Cs7)):
                assert consts[o] == (bias[o] - (off - gamma) * rowsum) * m + ((1 << s) >> 1)
    big = _with_requant(p, "blocks.0.convs.1.rescale", M=(1 << 62) - 1, shift=40)
    with pytest.raises(CExportError, match=r"blocks\.0\.convs\.1.*overflow int64"):
        Lowering(big)
