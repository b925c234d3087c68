"""The C runtime (program/c_backend.py, `asrquant export --c`): bit-exact, float-free, buildable.

The models are the pinned small programs of tests/pinned.py: a random-weight QuartzNet-5x5
(depthwise, strided depthwise, residual sums) and a tiny JasperDR-shaped model (dense k > 1
convs, dilation, a strided prologue), W8A8. Inputs: a padded batch of 3 (lengths 150, 120, 77).
"""
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pinned import pinned_inputs
from test_program import _quantize

from asrquant.cli import main
from asrquant.convert import save_quantized
from asrquant.program.c_backend import CExportError, CRuntime, build, export_c, read_logits, write_input
from asrquant.program.numpy_ref import NumpyReference
from asrquant.program.ops import Op, Program

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="needs a C compiler and make")
X86 = platform.machine() in ("x86_64", "AMD64")


@pytest.fixture(scope="module", params=["quartznet5x5_w8a8", "tiny_dense_w8a8"])
def case(request):
    q = _quantize(request.param)
    x, lengths = pinned_inputs()
    ref, ref_len = NumpyReference().run(q.program, x.numpy(), lengths.numpy())
    return request.param, q, x.numpy(), lengths.numpy(), ref, ref_len


# the ISA builds of the kernels: -march=native (VNNI here), AVX-VNNI without AVX-512, portable C
BUILDS = {"native": None, "avx-vnni": "-O3 -march=native -mno-avx512f", "portable": "-O3"}


@pytest.mark.parametrize("build_name", sorted(BUILDS))
def test_every_logit_equals_the_reference_on_a_padded_batch(case, build_name, tmp_path):
    name, q, x, lengths, ref, ref_len = case
    cflags = BUILDS[build_name]
    rt = CRuntime(q.program, threads=2, out_dir=tmp_path / "c", cflags=cflags)
    if build_name == "avx-vnni" and rt.isa != "avx-vnni":
        pytest.skip(f"this CPU/compiler builds {rt.isa} for {cflags}")
    logits, out_len = rt.run_with_lengths(x, lengths)
    assert rt.isa == {"portable": "portable"}.get(build_name, rt.isa)
    assert np.array_equal(out_len, ref_len)
    assert logits.shape == ref.shape
    assert int((logits != ref).sum()) == 0, f"{name} ({rt.isa}): logits differ"
    # batch of one, unpadded: the same integers as the reference on that item alone
    one, _ = NumpyReference().run(q.program, x[2:3, :, :77], lengths[2:3])
    assert np.array_equal(rt.run(x[2:3, :, :77]), one)


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


def test_an_op_the_c_backend_lacks_fails_export_naming_it(case, tmp_path):
    _, q, *_ = case
    p = q.program
    ops = list(p.ops)
    ops[3] = Op("swish", ops[3].inputs, ops[3].outputs, {"exp": {}, "sig_bits": 8}, name="blk.swish")
    with pytest.raises(CExportError, match=r"no kernel for op 'swish' \(blk\.swish\)"):
        export_c(Program(p.values, ops, p.inputs, p.outputs, p.meta), tmp_path / "c")


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
    # no SSE/x87 registers at all: the compiler refuses any floating-point operation
    r = subprocess.run(["cc", "-std=c99", "-O3", "-mgeneral-regs-only", "-c", "model.c", "asrq_kernels.c", "main.c"],
                       cwd=out, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the fast build (-march=native: AVX-512 / VNNI integer SIMD) has no float instruction either
    subprocess.run(["cc", "-std=c99", "-O3", "-march=native", "-fopenmp", "-c", "model.c", "asrq_kernels.c",
                    "main.c"], cwd=out, check=True, capture_output=True)
    for obj in ("model.o", "asrq_kernels.o", "main.o"):
        assert float_instructions(out / obj) == [], obj


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


# ------------------------------------------------------------------ asrquant bench

def test_bench_times_the_c_runtime_and_onnxruntimes_static_int8_side_by_side(tmp_path, train_clean_dir, monkeypatch):
    """One bench run: c-int8 bit-exact, the onnxruntime static int8 peer calibrated on real audio,
    and the C runtime's ratios computed from the medians."""
    import json

    from pinned import pinned_float_model

    from asrquant.deploy import bench
    from asrquant.models import save_model

    float5 = pinned_float_model("quartznet5x5")
    q5 = _quantize("quartznet5x5_w8a8")
    mpath = save_model(float5, tmp_path / "m.nemo")
    peer = {"model_path": str(mpath), "calibration_data": str(train_clean_dir), "limit": 2}
    monkeypatch.setenv("ASRQUANT_BUILD", str(tmp_path))   # the peer's cached model: tmp_path/ort_static
    res = bench.bench(float5, q5, seconds=0.5, repeats=3, warmup=1, threads=1,
                      runtimes=("onnxruntime-fp32", "c-int8", bench.PEER), peer=peer)
    assert not res["skipped"], res["skipped"]
    c, p = res["runtimes"]["c-int8"], res["runtimes"][bench.PEER]
    assert c["bit_exact"] and c["integer_only"] and res["int8_integer_only_runtime"] == "c-int8"
    assert p["precision"] == "int8-peer" and 0 <= p["argmax_agreement_vs_fp32"] <= 1
    assert list((tmp_path / "ort_static").glob("static_int8_*.onnx"))
    assert res["c_vs_fp32"] == pytest.approx(res["fp32_ms"] / c["median_ms"])
    assert res["c_vs_peer"] == pytest.approx(p["median_ms"] / c["median_ms"])
    assert "onnxruntime's static int8" in bench.format_report(res)
    json.dumps(res)
