"""Deployment: integer-only ONNX export (bit-exact vs forward_int), dyadic formulation edge cases,
fast runners, Q/DQ graph, bench JSON, TensorRT/CUDA guards. Small random QuartzNet-5x5 only."""

import argparse
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from asrquant.calibration import random_mels  # noqa: E402
from asrquant.convert import IntConv, quantize_model, save_quantized  # noqa: E402
from asrquant.deploy import onnx_export as ox  # noqa: E402
from asrquant.deploy import runtime as rt  # noqa: E402
from asrquant.models import ConvASR, config_for  # noqa: E402
from asrquant.quant.dyadic import requantize, rescale  # noqa: E402

from conftest import randomize_weights  # noqa: E402

INTEGER_OPS = {"ConvInteger", "Cast", "Mul", "Add", "Div", "Clip", "Max", "BitShift"}


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
def q_input(q5):
    g = torch.Generator().manual_seed(1)
    return q5.quantize_input(torch.randn(1, 64, 203, generator=g) * 1.5)


def _ref(qmodel, q):
    with torch.inference_mode():
        return qmodel.forward_int(q, torch.tensor([q.shape[-1]] * q.shape[0]))[0].numpy()


@pytest.mark.parametrize("floor", ["div", "shift"])
def test_integer_onnx_is_integer_only_and_bit_exact(q5, q_input, floor):
    model = ox.build_integer_model(q5, floor=floor)
    rep = ox.integer_only_report(model)
    assert rep["ok"], rep
    assert set(rep["op_types"]) <= INTEGER_OPS
    assert not [i for i in model.graph.initializer if i.data_type in (1, 10, 11, 16)]  # no float constants
    out = rt.OrtIntegerRunner(model, threads=1).run(q_input)
    ref = _ref(q5, q_input)
    assert out.dtype == np.int64 and out.shape == ref.shape
    assert np.array_equal(out, ref)


def test_export_file_and_cli(q5, q_input, tmp_path):
    path = ox.export_onnx(q5, tmp_path / "m.onnx")
    assert ox.integer_only_report(path)["ok"]
    assert np.array_equal(rt.OrtIntegerRunner(path, threads=1).run(q_input), _ref(q5, q_input))
    qpath = save_quantized(q5, tmp_path / "m.aqz")
    p = argparse.ArgumentParser()
    ox.add_export_arguments(p)
    args = p.parse_args([str(qpath), "--onnx", str(tmp_path / "cli.onnx"), "--qdq", str(tmp_path / "qdq.onnx")])
    assert ox.cmd_export(args) == 0
    assert (tmp_path / "cli.onnx").is_file() and (tmp_path / "qdq.onnx").is_file()


def test_kernel_probe_reports_exact_here():
    # informative: this CPU has AVX-512 VNNI; on AVX2-only CPUs the probe must say False
    assert isinstance(rt.ort_kernels_exact(1), bool)


def _one_conv_graph(conv, x_signed, floor, clamp):
    g = ox._Graph()
    x = ox._Act("x", x_signed, 8)
    acc, bound = ox._conv_integer(g, x, conv)
    if clamp:
        y = ox._requant_int8(g, acc, bound, conv, floor).name
    else:
        t, R = ox._rescale_terms(g, acc, bound, conv, floor)
        y = g.op("Add", [t, g.const(ox._col([-r for r in R]), np.int64, "off")])
    g.nodes.append(g.helper.make_node("Identity", [y], ["y"]))
    C = conv.weight.shape[1]
    return g.model([g.helper.make_tensor_value_info("x", g.TP.INT8, [1, C, "t"])],
                   [g.helper.make_tensor_value_info("y", g.TP.INT8 if clamp else g.TP.INT64, None)], "one")


@pytest.mark.parametrize("floor", ["div", "shift"])
@pytest.mark.parametrize("clamp", [True, False])
@pytest.mark.parametrize("out_signed", [True, False])
def test_dyadic_onnx_formulation_edge_cases(floor, clamp, out_signed):
    """Identity 1x1 conv (acc = x + bias) with chosen M/shift: ties (round half up, also for
    negative values), negative accumulators, shift 0 and 62, tiny multipliers, all channels."""
    shifts = [0, 1, 1, 2, 3, 7, 31, 62]
    Ms = [1, 1, 3, 5, 1, 2 ** 30 + 1, 2 ** 31 - 1, 3]
    C = len(shifts)
    w = torch.zeros(C, C, 1, dtype=torch.int8)
    w[range(C), range(C), 0] = 1
    bias = torch.tensor([0, 0, -1, 7, -5, 100, -(2 ** 20), 2 ** 25], dtype=torch.int32)
    conv = IntConv(weight=w, bias=bias, M=torch.tensor(Ms), shift=torch.tensor(shifts), out_bits=8,
                   out_signed=out_signed)
    x = torch.arange(-128, 128, dtype=torch.int8).repeat(C, 1)[None]  # every int8 value on every channel
    acc = x.to(torch.int32) + bias.reshape(1, C, 1)
    ref = (requantize(acc, conv.M, conv.shift, 8, out_signed) if clamp else rescale(acc, conv.M, conv.shift)).to(torch.int64)
    model = _one_conv_graph(conv, True, floor, clamp)
    out = rt.make_session(model, 1).run(None, {"x": x.numpy()})[0].astype(np.int64)
    if clamp and not out_signed:
        out = out + 128  # unsigned activations are stored as y - 128
    assert np.array_equal(out, ref.numpy())
    # the ties really are there: e.g. shift 1, M 1: -3 -> floor(-1.5 + 0.5) = -1, 3 -> 2
    if not clamp:
        assert ref[0, 1, 128 - 3] == -1 and ref[0, 1, 128 + 3] == 2


@pytest.mark.parametrize("depthwise", ["ort", "float-exact", "native"])
def test_torch_integer_runner_bit_exact(q5, q_input, depthwise):
    if depthwise == "native":
        from asrquant.intops import native

        if not native.available():
            pytest.skip("no C compiler: native kernels unavailable")
    runner = rt.TorchIntegerRunner(q5, threads=1, depthwise=depthwise)
    assert np.array_equal(runner.run(q_input), _ref(q5, q_input))
    q2 = torch.cat([q_input, q_input.flip(-1)])  # batch of 2, equal lengths
    assert np.array_equal(runner.run(q2), _ref(q5, q2))


def test_native_runner_creates_no_float_tensor(q5, q_input):
    """Every torch op the native runner dispatches returns an integer tensor (the C kernels are
    integer code by construction: native_kernels.c has no floating-point type)."""
    from asrquant.intops import native
    from asrquant.verify import DtypeRecorder

    if not native.available():
        pytest.skip("no C compiler: native kernels unavailable")
    src = native.SOURCE.read_text()
    assert not any(w in src for w in ("float", "double")), "native_kernels.c must stay integer-only"
    runner = rt.TorchIntegerRunner(q5, threads=1, depthwise="native")
    with DtypeRecorder() as rec:
        runner.run(q_input)
    assert len(rec.records) > 50 and rec.float_ops() == []


def test_float_runners_match_torch(float5):
    mel = torch.randn(1, 64, 150)
    with torch.inference_mode():
        ref = float5.forward_features(mel, torch.tensor([150]))[0].numpy()
    for runner in (rt.OrtFloatRunner(float5, 1), rt.TorchFloatRunner(float5, 1)):
        np.testing.assert_allclose(runner.run(mel), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_qdq_model_close_to_integer_model(q5):
    """Q/DQ (simulated int8, float) vs the integer model on the same input: close, not exact."""
    mel = torch.randn(1, 64, 203, generator=torch.Generator().manual_seed(2)) * 1.5
    q = q5.quantize_input(mel)
    ref = _ref(q5, q).astype(np.float64) * q5.logit_scale
    model = ox.build_qdq_model(q5)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    out = rt.make_session(model, 1).run(None, {"mel": mel.numpy()})[0]
    err = np.abs(out - ref).max() / np.abs(ref).max()
    agree = (out.argmax(1) == ref.argmax(1)).mean()
    assert err < 0.1 and agree > 0.9, (err, agree)
    trt_form = ox.build_qdq_model(q5, signed_only=True)
    zps = [i for i in trt_form.graph.initializer if i.name.startswith("zp")]
    assert zps and all(i.data_type == 3 for i in zps)  # int8 only


def test_bench_json(float5, q5, tmp_path):
    from asrquant.deploy import bench

    res = bench.bench(float5, q5, seconds=0.5, repeats=3, warmup=1, threads=1,
                      runtimes=("torch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "torch+ort-int8"))
    for k in ("fp32_ms", "int8_ms", "speedup", "fp32_runtime", "int8_runtime", "threads", "batch", "seconds", "machine"):
        assert k in res
    assert res["fp32_ms"] > 0 and res["int8_ms"] > 0 and res["speedup"] == pytest.approx(res["fp32_ms"] / res["int8_ms"])
    assert res["threads"] == 1 and res["batch"] == 1 and res["frames"] > 0
    assert all(r["runs"] == 3 for r in res["runtimes"].values())
    assert res["runtimes"]["onnxruntime-int8"]["bit_exact"] and res["runtimes"]["torch+ort-int8"]["bit_exact"]
    assert res["machine"]["torch"] and res["machine"]["onnxruntime"] and "cpu_model" in res["machine"]
    json.dumps(res)  # serializable
    # the CLI wrapper writes the same JSON
    from asrquant.models import save_model

    mpath, qpath = save_model(float5, tmp_path / "m.nemo"), save_quantized(q5, tmp_path / "m.aqz")
    p = argparse.ArgumentParser()
    bench.add_bench_arguments(p)
    args = p.parse_args(["--model", str(mpath), "--quantized", str(qpath), "--seconds", "0.3", "--repeats", "3",
                         "--runtimes", "onnxruntime-fp32", "onnxruntime-int8", "--json", str(tmp_path / "b.json"),
                         "--quiet"])
    assert bench.cmd_bench(args) == 0
    assert json.loads((tmp_path / "b.json").read_text())["int8_runtime"] == "onnxruntime-int8"


def test_tensorrt_and_cuda_guards(q5, float5, tmp_path):
    from asrquant.deploy import tensorrt as trtmod

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
