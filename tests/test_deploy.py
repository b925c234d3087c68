"""Deployment: the integer-only ONNX lowering of the program (bit-exact vs forward_int on padded
batches, dyadic formulation edge cases), the Q/DQ lowering, the float graph and runners, bench
JSON, TensorRT/CUDA guards. Small random QuartzNet-5x5 and a JasperDR-shaped dense model only."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from intasr.calibration import random_mels  # noqa: E402
from intasr.cli import main as cli_main  # noqa: E402
from intasr.convert import quantize_model  # noqa: E402
from intasr.integer_model import save_quantized  # noqa: E402
from intasr.deploy import onnx_export as ox  # noqa: E402
from intasr.deploy import runtime as rt  # noqa: E402
from intasr.models import ConvASR, config_for  # noqa: E402
from intasr.program import fast  # noqa: E402
from intasr.program import onnx_int as oi  # noqa: E402
from intasr.program import onnx_qdq as oq  # noqa: E402
from intasr.program.ops import Op, Program, Value  # noqa: E402
from intasr.program.torch_ref import TorchReference  # noqa: E402

from conftest import randomize_weights  # noqa: E402
from pinned import pinned_float_model, pinned_inputs  # noqa: E402

INTEGER_OPS = {"ConvInteger", "Cast", "Mul", "Add", "Div", "Clip", "Max", "BitShift", "Identity",
               "Shape", "Squeeze", "Unsqueeze", "Range", "Less", "Where"}
NEEDS_VNNI = pytest.mark.skipif(not rt.ort_kernels_exact(1),
                                reason="onnxruntime's U8S8 integer kernels are inexact on this CPU (no VNNI)")


@pytest.fixture(scope="module")
def float5():
    torch.manual_seed(0)
    model = ConvASR(config_for("quartznet5x5"))
    randomize_weights(model, seed=3)
    return model


@pytest.fixture(scope="module")
def q5(float5):
    return quantize_model(float5, random_mels(1, 2, 160, seed=0))


@pytest.fixture(scope="module")
def q_dense():
    """JasperDR-shaped: dense residual (several branches per sum), k > 1 dense convs, stride 2."""
    return quantize_model(pinned_float_model("tiny_dense"), random_mels(1, 2, 160, seed=0))


@pytest.fixture(scope="module")
def q_input(q5):
    g = torch.Generator().manual_seed(1)
    return q5.quantize_input(torch.randn(1, 64, 203, generator=g) * 1.5)


def _ref(qmodel, q, lengths=None):
    lengths = torch.full((q.shape[0],), q.shape[-1]) if lengths is None else torch.as_tensor(lengths)
    with torch.inference_mode():
        logits, out_len = qmodel.forward_int(q, lengths)
    return logits.numpy(), out_len.numpy()


def assert_valid_equal(out, out_len, ref, ref_len):
    """Same output lengths and the same integers on every valid frame."""
    assert np.array_equal(np.asarray(out_len), ref_len), (out_len, ref_len)
    assert out.shape == ref.shape
    for b, n in enumerate(ref_len.tolist()):
        assert np.array_equal(out[b, :, :n], ref[b, :, :n]), f"item {b}"


@NEEDS_VNNI
@pytest.mark.parametrize("floor", ["div", "shift"])
def test_integer_onnx_is_integer_only_and_bit_exact_on_a_padded_batch(q5, floor):
    model = oi.build_integer_model(q5, floor=floor)
    rep = oi.integer_only_report(model)
    assert rep["ok"], rep
    assert set(rep["op_types"]) <= INTEGER_OPS
    assert rep["bool"] and not rep["non_integer"]  # the masks, and nothing else that is not an integer
    assert not [i for i in model.graph.initializer if i.data_type in (1, 10, 11, 16)]  # no float constants
    assert [i.name for i in model.graph.input] == ["q", "lengths"]
    # one Where per mask that a padded conv reads; masks read only by pointwise convs are left out
    n_where = sum(n.op_type == "Where" for n in model.graph.node)
    n_masks = len(q5.program.ops_of("mask_time"))
    assert 0 < n_where == n_masks - len(oi.redundant_masks(q5.program)) < n_masks
    assert [o.name for o in model.graph.output] == ["logits", "logits_lengths"]
    q, lengths = pinned_inputs()
    runner = rt.OrtIntegerRunner(model, threads=1)
    out, out_len = runner.run_with_lengths(q, lengths)
    assert out.dtype == np.int64
    assert_valid_equal(out, out_len, *_ref(q5, q, lengths))
    # batch 1 without lengths: every frame valid
    assert np.array_equal(runner.run(q[:1]), _ref(q5, q[:1])[0])


@NEEDS_VNNI
def test_integer_onnx_dense_model_and_uniform_call(q_dense):
    q, lengths = pinned_inputs()
    out, out_len = oi.run_onnx_int(q_dense.program, q, lengths, threads=1)
    assert_valid_equal(out, out_len, *_ref(q_dense, q, lengths))
    out2, _ = oi.run_onnx_int(q_dense.program, q.numpy(), lengths.numpy(), threads=1)  # NumPy in, cached session
    assert np.array_equal(out, out2)


@NEEDS_VNNI
def test_export_file_and_cli(q5, q_input, tmp_path):
    path = oi.export_onnx(q5, tmp_path / "m.onnx")
    assert oi.integer_only_report(path)["ok"]
    assert np.array_equal(rt.OrtIntegerRunner(path, threads=1).run(q_input), _ref(q5, q_input)[0])
    qpath = save_quantized(q5, tmp_path / "m.aqz")
    assert cli_main(["export", str(qpath), "--onnx", str(tmp_path / "cli.onnx"), "--qdq", str(tmp_path / "qdq.onnx")]) == 0
    assert (tmp_path / "cli.onnx").is_file() and (tmp_path / "qdq.onnx").is_file()


def test_export_check_is_skipped_with_its_reason_where_the_kernels_are_inexact(q5, tmp_path, monkeypatch, capsys):
    """intasr export --check on a CPU without VNNI (simulated: the probe answers no): the graph is
    written and checked integer-only, the onnxruntime comparison is skipped with its reason, exit 0."""
    monkeypatch.setattr(oi, "ort_kernels_exact", lambda threads=1: False)
    monkeypatch.setattr(rt, "ort_kernels_exact", lambda threads=1: False)
    qpath = save_quantized(q5, tmp_path / "m.aqz")
    assert cli_main(["export", str(qpath), "--onnx", str(tmp_path / "m.onnx"),
                     "--check", str(tmp_path / "no_audio_needed")]) == 0 and (tmp_path / "m.onnx").is_file()
    out = capsys.readouterr().out
    assert "integer-only (bool masks allowed): PASS" in out
    assert "onnxruntime vs forward_int: SKIPPED: onnxruntime's integer kernels are not exact on this CPU" in out


def _x86_vnni() -> bool | None:
    """Whether this x86 CPU has VNNI (AVX-512 or AVX), as CPUID tells this process (intasr.cpu:
    an emulated CPU's answer, not the host's); None off x86."""
    from intasr.cpu import cpu_features

    f = cpu_features()
    return f.vnni if f.arch in ("x86_64", "amd64") and f.source != "none" else None


def test_kernel_probe_matches_the_cpu_and_sees_a_wrong_kernel(monkeypatch):
    """The exactness probe says True on x86 exactly when the CPU has VNNI (without it the U8S8
    kernel's vpmaddubsw saturates pairs of products at int16); and it is not blind: a ConvInteger
    that is off by one in a single output makes it say False, the same session unchanged says True."""
    probe = oi.ort_kernels_exact.__wrapped__  # past the lru_cache: each call really probes
    vnni = _x86_vnni()
    if vnni is not None:
        assert probe(1) is vnni
    real_session = oi.make_session

    class OffByOne:
        def __init__(self, session, delta):
            self.session, self.delta = session, delta

        def run(self, names, feeds):
            out = [np.array(y) for y in self.session.run(names, feeds)]
            out[0].flat[7] += self.delta
            return out

    monkeypatch.setattr(oi, "make_session", lambda m, threads=None: OffByOne(real_session(m, threads), 1))
    assert probe(1) is False
    if vnni is not False:  # where the real kernels are exact, the unchanged wrapper passes
        monkeypatch.setattr(oi, "make_session", lambda m, threads=None: OffByOne(real_session(m, threads), 0))
        assert probe(1) is True


def test_int64_accumulators_are_refused():
    """ConvInteger accumulates in int32: a conv whose bound exceeds it is refused, not wrapped."""
    C, K = 16, 16384  # sum|w| * 128 = 127 * 16 * 16384 * 128 > 2^31
    w = torch.full((C, C, K), 127, dtype=torch.int8)
    p = one_conv_program([("conv", w, None, (1, 1)), ("rescale", (torch.tensor([1]), torch.tensor([0])))])
    with pytest.raises(NotImplementedError, match="int64 accumulator"):
        oi.build_integer_model(p)


# --------------------------------------------------------------------------- one-op programs

def one_conv_program(spec, input_bits: int = 8) -> Program:
    """A small program written op by op. spec: ("conv", weight, bias, (M, shift) unused) entries
    apply a 1x1 conv to the input; then ("requantize", (M, S), bits, signed) or ("rescale", (M, S))
    on the last accumulator, or ("sum", [(M, S), ...], bits) rescaling every accumulator so far,
    adding them and clamping unsigned."""
    values = {"input": Value("int8", "act", input_bits, True, 0.1), "input_lengths": Value("int64", "lengths")}
    ops = [Op("mask_time", ["input", "input_lengths"], ["x"], name="mask")]
    values["x"] = Value("int8", "act", input_bits, True, 0.1)
    accs = []
    for i, s in enumerate(spec):
        if s[0] == "conv":
            _, w, b, _ = s
            name = f"acc{i}"
            params = {"weight": w} if b is None else {"weight": w, "bias": b}
            ops.append(Op("conv1d", ["x"], [name], {"stride": 1, "padding": 0, "dilation": 1, "groups": 1,
                                                     "acc_dtype": "int32"}, params, name=f"conv{i}"))
            values[name] = Value("int32", "acc")
            accs.append(name)
        elif s[0] == "requantize":
            (M, S), bits, signed = s[1], s[2], s[3]
            ops.append(Op("requantize", [accs[-1]], ["logits"], {"bits": bits, "signed": signed}, {"M": M, "shift": S},
                          name="rq"))
            values["logits"] = Value("int8" if signed else "int16", "act", bits, signed, 1.0)
        elif s[0] == "rescale":
            M, S = s[1]
            ops.append(Op("rescale", [accs[-1]], ["logits"], {}, {"M": M, "shift": S}, name="rs"))
            values["logits"] = Value("int64", "acc", scale=1.0)
        elif s[0] == "sum":
            terms, bits = s[1], s[2]
            total = None
            for j, (acc, (M, S)) in enumerate(zip(accs, terms)):
                ops.append(Op("rescale", [acc], [f"t{j}"], {}, {"M": M, "shift": S}, name=f"rs{j}"))
                values[f"t{j}"] = Value("int64", "acc", scale=1.0)
                if total is None:
                    total = f"t{j}"
                else:
                    ops.append(Op("add", [total, f"t{j}"], [f"s{j}"], name=f"add{j}"))
                    values[f"s{j}"] = Value("int64", "acc", scale=1.0)
                    total = f"s{j}"
            ops.append(Op("clamp", [total], ["logits"], {"bits": bits, "signed": False}, name="clamp"))
            values["logits"] = Value("int16", "act", bits, False, 1.0)
    ops.append(Op("frames", ["input_lengths"], ["logits_lengths"], {"kernel": 1, "stride": 1, "padding": 0,
                                                                     "dilation": 1}, name="frames"))
    values["logits_lengths"] = Value("int64", "lengths")
    return Program(values, ops, meta={"input_scale": 0.1, "input_bits": input_bits, "logit_scale": 1.0}).validate()


SHIFTS = [0, 1, 1, 2, 3, 7, 31, 62]
MS = [1, 1, 3, 5, 1, 2 ** 30 + 1, 2 ** 31 - 1, 3]
BIAS = [0, 0, -1, 7, -5, 100, -(2 ** 20), 2 ** 25]


def edge_case_program(kind: str, out_signed: bool) -> Program:
    """Identity 1x1 conv (acc = x + bias) with chosen M/shift: ties (round half up, also for negative
    values), negative accumulators, shift 0 and 62, tiny multipliers, all channels; "sum": two
    branches (identity and negated identity with other biases) rescaled, added and clamped."""
    C = len(SHIFTS)
    w = torch.zeros(C, C, 1, dtype=torch.int8)
    w[range(C), range(C), 0] = 1
    M, S = torch.tensor(MS), torch.tensor(SHIFTS)
    conv = ("conv", w, torch.tensor(BIAS, dtype=torch.int32), None)
    if kind == "requantize":
        return one_conv_program([conv, ("requantize", (M, S), 8, out_signed)])
    if kind == "rescale":
        return one_conv_program([conv, ("rescale", (M, S))])
    conv2 = ("conv", -w, torch.tensor(BIAS[::-1], dtype=torch.int32), None)
    M2, S2 = torch.tensor([3, 1, 1, 7, 2 ** 20, 5, 1, 2 ** 31 - 1]), torch.tensor([2, 1, 0, 3, 25, 62, 1, 40])
    return one_conv_program([conv, conv2, ("sum", [(M, S), (M2, S2)], 8)])


KINDS = [("requantize", True), ("requantize", False), ("rescale", True), ("sum", False)]
# The integer graph stores every weight w as uint8 w + 128 (zero point 128), so to onnxruntime even
# an identity conv's weights are 128 and 129; without VNNI its U8S8 kernel adds two u8 x s8
# products in int16 with saturation (vpmaddubsw): 129*(-128) + 128*(-128) = -32896 becomes -32768
# and every frame with x = -128 is wrong (on this AVX2 CPU exactly those, in all 8 cases).
ORT_INEXACT = ("onnxruntime's integer kernels are not exact on this CPU (ort_kernels_exact() is False: no VNNI, "
               "U8S8 pairs of products saturate at int16); identity weights are stored as uint8 128/129, so "
               "x = -128 saturates: 129*(-128) + 128*(-128) < -2^15")
ORT_EXACT = pytest.mark.skipif(not rt.ort_kernels_exact(1), reason=ORT_INEXACT)
EDGE_BACKENDS = [pytest.param("onnx-div", marks=ORT_EXACT), pytest.param("onnx-shift", marks=ORT_EXACT),
                 "fast-native", "fast-float-exact"]


def _edge_inputs(lo: int = -128):
    """Every int8 value from lo to 127 on every channel; 4 items, 3 of them padded, one reversed."""
    x = torch.arange(lo, 128, dtype=torch.int8).repeat(len(SHIFTS), 1)[None].repeat(4, 1, 1)
    x[1] = x[1].flip(-1)
    T = x.shape[-1]
    return x, torch.tensor([T, T - 1, 100, 1])


def _edge_reference(program, x, lengths, kind):
    ref, ref_len = TorchReference().run(program, x, lengths)
    ref, ref_len = ref.to(torch.int64).numpy(), ref_len.numpy()
    if kind == "rescale":  # the ties really are there: shift 1, M 1: -3 -> floor(-1.5 + 0.5) = -1, 3 -> 2
        at = {int(v): t for t, v in enumerate(x[0, 1].tolist())}
        assert ref[0, 1, at[-3]] == -1 and ref[0, 1, at[3]] == 2
    return ref, ref_len


@pytest.mark.parametrize("backend", EDGE_BACKENDS)
@pytest.mark.parametrize("kind,out_signed", KINDS)
def test_dyadic_edge_cases_in_every_integer_backend(backend, kind, out_signed):
    """The integer ONNX graph (both floor forms) and the fast runner (both depthwise modes) against
    the reference, on every int8 value of every channel, with 3 of 4 batch items padded (masked
    frames must give the zero point). onnxruntime only where its kernels are exact (VNNI; the
    reason above); the next test checks the ONNX graph's arithmetic on every CPU."""
    program = edge_case_program(kind, out_signed)
    x, lengths = _edge_inputs()
    ref, ref_len = _edge_reference(program, x, lengths, kind)
    if backend.startswith("onnx-"):
        out, out_len = oi.run_onnx_int(program, x, lengths, floor=backend.removeprefix("onnx-"))
    else:
        mode = backend.removeprefix("fast-")
        if mode == "native" and not _native_available():
            pytest.skip("no C compiler: native kernels unavailable")
        out, out_len = fast.run_fast(program, x, lengths, depthwise=mode)
    assert_valid_equal(out, out_len, ref, ref_len)


@pytest.mark.parametrize("floor", ["div", "shift"])
@pytest.mark.parametrize("kind,out_signed", KINDS)
def test_dyadic_edge_cases_in_the_onnx_graph_on_any_cpu(floor, kind, out_signed):
    """The same edge cases in the integer ONNX graph on every CPU, VNNI or not, with x in [-127, 127]:
    the stored weights are uint8 w + 128 in {127, 128, 129}, so two products u*x add up to at most
    2 * 129 * 127 = 32766 < 2^15 in magnitude and even a kernel that adds pairs of products in int16
    with saturation (U8S8 without VNNI, the inexactness ort_kernels_exact() probes for) is exact.
    The dyadic lowering (floor by Div or BitShift, ties, negative accumulators, shifts 0 and 62, the
    masks) is thereby checked on AVX2 machines too; x = -128 is the test above's (exact kernels)."""
    program = edge_case_program(kind, out_signed)
    assert all(int(op.params["weight"].abs().max()) <= 1 for op in program.ops_of("conv1d"))  # u8 in 127..129
    x, lengths = _edge_inputs(-127)
    ref, ref_len = _edge_reference(program, x, lengths, kind)
    out, out_len = oi.run_onnx_int(program, x, lengths, floor=floor, allow_inexact=True)
    assert_valid_equal(out, out_len, ref, ref_len)


def _native_available() -> bool:
    from intasr.intops import native

    return native.available()


# --------------------------------------------------------------------------- float and Q/DQ graphs

def test_float_runners_match_torch(float5):
    mel = torch.randn(1, 64, 150)
    with torch.inference_mode():
        ref = float5.forward_features(mel, torch.tensor([150]))[0].numpy()
    for runner in (rt.OrtFloatRunner(ox.build_float_model(float5), 1), rt.TorchFloatRunner(float5, 1)):
        np.testing.assert_allclose(runner.run(mel), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    with pytest.raises(TypeError, match="build_float_model"):
        rt.OrtFloatRunner(float5, 1)


def test_qdq_model_close_to_integer_model(q5):
    """Q/DQ (simulated int8, float) vs the integer program on the same input: close, not exact."""
    mel = torch.randn(1, 64, 203, generator=torch.Generator().manual_seed(2)) * 1.5
    ref = _ref(q5, q5.quantize_input(mel))[0].astype(np.float64) * q5.logit_scale
    model = oq.build_qdq_model(q5)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Where"} <= ops
    out, out_len = oq.run_onnx_qdq(q5.program, mel, None)
    assert out_len.tolist() == [ref.shape[-1]]
    err = np.abs(out - ref).max() / np.abs(ref).max()
    agree = (out.argmax(1) == ref.argmax(1)).mean()
    assert err < 0.1 and agree > 0.9, (err, agree)
    trt_form = oq.build_qdq_model(q5, signed_only=True)
    zps = [i for i in trt_form.graph.initializer if i.name.startswith("zp")]
    assert zps and all(i.data_type == 3 for i in zps)  # int8 only


def test_qdq_masks_a_padded_batch(q_dense):
    """Each item of a padded batch gives what it gives alone (the masks), and the lengths."""
    mel = torch.randn(3, 64, 150, generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([150, 120, 77])
    out, out_len = oq.run_onnx_qdq(q_dense.program, mel, lengths)
    assert np.array_equal(out_len, _ref(q_dense, q_dense.quantize_input(mel), lengths)[1])
    for b, n in enumerate(lengths.tolist()):
        alone, alone_len = oq.run_onnx_qdq(q_dense.program, mel[b:b + 1, :, :n], None)
        m = int(alone_len[0])
        assert m == out_len[b]
        np.testing.assert_allclose(out[b, :, :m], alone[0], rtol=1e-5, atol=1e-5 * np.abs(alone).max())


# --------------------------------------------------------------------------- bench and GPU guards

def test_bench_json(float5, q5, tmp_path):
    from intasr.deploy import bench

    runtimes = ("torch-fp32", "onnxruntime-fp32", "torch+native-int8") + (("onnxruntime-int8",)
                                                                         if rt.ort_kernels_exact(1) else ())
    res = bench.bench(float5, q5, seconds=0.5, repeats=3, warmup=1, threads=1, runtimes=runtimes)
    for k in ("fp32_ms", "int8_ms", "speedup", "fp32_runtime", "int8_runtime", "threads", "batch", "seconds", "machine"):
        assert k in res
    assert res["fp32_ms"] > 0 and res["int8_ms"] > 0 and res["speedup"] == pytest.approx(res["fp32_ms"] / res["int8_ms"])
    assert res["threads"] == 1 and res["batch"] == 1 and res["frames"] > 0
    assert all(r["runs"] == 3 for r in res["runtimes"].values())
    assert all(res["runtimes"][n]["bit_exact"] for n in runtimes if "int8" in n)
    assert res["machine"]["torch"] and res["machine"]["onnxruntime"] and "cpu_model" in res["machine"]
    from intasr.cpu import cpu_features   # the machine record is the CPU-feature probe's (CPUID)

    assert res["machine"]["cpu_probe"] == cpu_features().source and "kernel_family" in res["machine"]
    assert res["machine"].get("vnni", False) is cpu_features().vnni
    json.dumps(res)  # serializable
    # the CLI wrapper writes the same JSON
    from intasr.models import save_model

    mpath, qpath = save_model(float5, tmp_path / "m.nemo"), save_quantized(q5, tmp_path / "m.aqz")
    assert cli_main(["bench", "--model", str(mpath), "--quantized", str(qpath), "--seconds", "0.3", "--repeats", "3",
                     "--runtimes", "onnxruntime-fp32", "torch+native-int8", "--json", str(tmp_path / "b.json"),
                     "--quiet"]) == 0
    written = json.loads((tmp_path / "b.json").read_text())
    assert written["int8_runtime"] == "torch+native-int8"
    # files named portably (paths.display_path), never this machine's folders
    assert (written["model_path"], written["quantized_path"]) == ("m.nemo", "m.aqz")
    assert str(tmp_path) not in (tmp_path / "b.json").read_text()
    # provenance (issue 12): the files' hashes, the settings, the code and the machine
    from intasr.provenance import file_sha256

    prov = written["provenance"]
    assert prov["model_sha256"] == file_sha256(mpath) and prov["quantized_sha256"] == file_sha256(qpath)
    assert prov["bench_threads"] == 1 and prov["repeats"] == 3 and prov["seconds"] == 0.3
    assert prov["code_commit"] and prov["cpu"] and prov["threads"] >= 1


def test_isolated_bench_runs_each_runtime_in_its_own_process(float5, q5, tmp_path):
    """--isolate: the workers build the runtimes from the files, make the same input (the parent's
    bit-exactness check reads the worker's output), answer every timed run, and are gone after."""
    import multiprocessing as mp

    from intasr.deploy import bench
    from intasr.models import save_model

    mpath, qpath = save_model(float5, tmp_path / "m.nemo"), save_quantized(q5, tmp_path / "m.aqz")
    res = bench.bench(float5, q5, seconds=0.3, repeats=3, warmup=1, threads=1,
                      runtimes=("onnxruntime-fp32", "c-int8"), isolate=(mpath, qpath))
    assert res["protocol"] == "isolated" and set(res["runtimes"]) == {"onnxruntime-fp32", "c-int8"}
    assert res["runtimes"]["c-int8"]["bit_exact"] and res["runtimes"]["c-int8"]["kernels"]
    assert res["runtimes"]["onnxruntime-fp32"]["max_abs_diff_vs_torch"] < 1e-3
    assert all(r["runs"] == 3 and r["min_ms"] > 0 for r in res["runtimes"].values())
    assert not mp.active_children()
    with pytest.raises(RuntimeError, match="torch-fp32: .*no such"):   # a float runtime that cannot start is an error
        bench.bench(float5, q5, seconds=0.3, repeats=1, warmup=1, runtimes=("torch-fp32",),
                    isolate=(tmp_path / "missing.nemo", qpath))


def test_tensorrt_and_cuda_guards(q5, float5, tmp_path):
    from intasr.deploy import tensorrt as trtmod

    try:
        import tensorrt  # noqa: F401
        has_trt = True
    except ImportError:
        has_trt = False
    if not has_trt:
        with pytest.raises(trtmod.DeploymentUnavailable, match="TensorRT is not installed: pip install tensorrt"):
            trtmod.build_engine(tmp_path / "none.onnx")
    if not torch.cuda.is_available():
        with pytest.raises(trtmod.DeploymentUnavailable, match="no CUDA device"):
            trtmod.cuda_int8_runner(q5)
        with pytest.raises(trtmod.DeploymentUnavailable, match="no CUDA device"):
            trtmod.cuda_latency(float5, q5, seconds=0.5)
        return
    # with a GPU: the CUDA integer path gives forward_int's integers (on a padded batch too) and times
    import copy

    q, lengths = pinned_inputs()
    runner = trtmod.cuda_int8_runner(q5)
    out, out_len = runner.run_with_lengths(q.cuda(), lengths.cuda())
    assert_valid_equal(out.cpu().numpy(), out_len.cpu().numpy(), *_ref(q5, q, lengths))
    res = trtmod.cuda_latency(copy.deepcopy(float5), q5, seconds=0.5, repeats=3, warmup=1)
    assert res["int8_bit_exact"] is True and res["fp32_ms"] > 0 and res["int8_ms"] > 0 and res["device"]


@pytest.mark.parametrize("settle", [True, False])
def test_settled_turns_run_each_runtime_once_untimed_before_its_timed_run(float5, q5, monkeypatch, settle):
    """Settled turns (the default): every timed run follows one untimed run of the same runtime, so no
    other runtime's pool is still spinning and the caches are its own; --back-to-back: none."""
    from intasr.deploy import bench

    calls, real = {}, bench._runner

    def counting(model, qmodel, n, threads, peer=None):
        kind, fn, *info = real(model, qmodel, n, threads, peer)

        def f(x, _fn=fn, _n=n):
            calls[_n] = calls.get(_n, 0) + 1
            return _fn(x)
        return (kind, f, *info)

    monkeypatch.setattr(bench, "_runner", counting)
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)
    res = bench.bench(float5, q5, seconds=0.3, repeats=3, warmup=2, threads=1,
                      runtimes=("torch-fp32", "torch+native-int8"), settle=settle)
    per_round = 2 if settle else 1
    assert calls == {n: 1 + 1 + 3 * per_round for n in ("torch-fp32", "torch+native-int8")}
    assert res["turns"] == ("settled" if settle else "back to back")
    assert all(r["runs"] == 3 for r in res["runtimes"].values())
    assert f"({res['turns']} turns)" in bench.format_report(res)


def test_bench_skips_an_inexact_runtime_with_its_reason(float5, q5, monkeypatch):
    """On a CPU without VNNI onnxruntime's integer kernels are not exact: bench goes on without
    that runtime and says why (simulated here by making the exactness probe answer no)."""
    from intasr.deploy import bench
    from intasr.program import onnx_int

    monkeypatch.setattr(onnx_int, "ort_kernels_exact", lambda threads=1: False)
    monkeypatch.setattr(rt, "ort_kernels_exact", lambda threads=1: False)
    res = bench.bench(float5, q5, seconds=0.3, repeats=2, warmup=1, threads=1,
                      runtimes=("torch-fp32", "onnxruntime-int8", "torch+native-int8"))
    assert "onnxruntime-int8" not in res["runtimes"] and "not exact" in res["skipped"]["onnxruntime-int8"]
    assert res["int8_runtime"] == "torch+native-int8" and res["runtimes"]["torch+native-int8"]["bit_exact"]
    assert "onnxruntime-int8" in bench.format_report(res) and "skipped" in bench.format_report(res)


def test_bench_with_every_runtime_skipped_says_why(float5, q5, monkeypatch):
    """Only an inexact runtime asked for: a one-line error with its reason (was a ZeroDivisionError)."""
    from intasr.deploy import bench
    from intasr.program import onnx_int

    monkeypatch.setattr(onnx_int, "ort_kernels_exact", lambda threads=1: False)
    monkeypatch.setattr(rt, "ort_kernels_exact", lambda threads=1: False)
    with pytest.raises(ValueError, match="no runtime left to time: onnxruntime-int8: .*not exact"):
        bench.bench(float5, q5, seconds=0.3, repeats=2, warmup=1, threads=1, runtimes=("onnxruntime-int8",))


def test_integer_runners_are_exact_or_left_out_with_a_reason(q5, q_input):
    runners, skipped = rt.integer_runners(q5, 1)
    assert {"torch+native-int8", "torch-int8+fp32exact-dw"} <= set(runners)
    assert ("onnxruntime-int8" in runners) == rt.ort_kernels_exact(1) != ("onnxruntime-int8" in skipped)
    assert all("not exact" in why for why in skipped.values())
    ref, _ = _ref(q5, q_input)
    for name, runner in runners.items():
        assert np.array_equal(runner.run(q_input), ref), name
