"""GPU deployment: a TensorRT INT8 engine from the Q/DQ ONNX, and a PyTorch CUDA integer path.

UNTESTED HERE. This project's machines have no NVIDIA GPU and TensorRT cannot be installed on
them; only the import guards (clear errors) and the Q/DQ export (run by onnxruntime on the CPU)
are tested (tests/test_deploy.py). The code follows the TensorRT 8.6/10 Python API.

TensorRT path (the paper's setup: T4, TensorRT 7.2, 10 s input; Fig. 2):
  1. ``export_onnx_qdq(qmodel, path, signed_only=True)`` (``program/onnx_qdq.py``): the program as
     QuantizeLinear/DequantizeLinear around float Conv (explicit quantization). This is
     *simulated* quantization in the graph; TensorRT fuses DQ -> Conv -> Add -> ReLU -> Q into
     int8 kernels with int32 accumulation. TensorRT accepts int8 Q/DQ with zero point 0 only, so
     ``signed_only=True`` turns the unsigned 8-bit post-ReLU activations ([0, 255], scale s) into
     int8 with scale 2s: one bit less than our integer model, i.e. a slightly different model.
     TensorRT's requantization is float (scale products, round half to even), not our dyadic
     M/2^s round-half-up: its logits are close to ``forward_int``'s, not bit-exact.
  2. ``build_engine(onnx_path)``: parse, set the INT8 (and FP16 for the float fallback) flags,
     an optimization profile for [batch, 64, frames], build a serialized engine.
  3. ``time_engine(engine, frames)``: CUDA-event timing of ``execute_async_v3``.
  FP32 baseline: ``build_engine(export_onnx_float(model, ...), int8=False)``.

PyTorch CUDA path (a GPU without TensorRT): ``cuda_int8_runner(qmodel)`` is
``program.fast.TorchIntegerRunner`` on the GPU: pointwise convs with ``torch._int_mm`` (int8 tensor
cores), the other convs as float32 convolutions on integer values (exact: every partial sum is an
integer below 2^24, checked per layer; TF32 switched off), int64 requantization: the same integers
as ``forward_int`` by construction. ``cuda_latency`` times it against the float model with CUDA
events.
"""

from __future__ import annotations

from pathlib import Path

from ..program.onnx_qdq import export_onnx_qdq  # noqa: F401  (re-exported)
from .onnx_export import export_onnx_float  # noqa: F401  (re-exported)

TENSORRT_MISSING = "TensorRT is not installed: pip install tensorrt on a machine with an NVIDIA GPU"
NO_CUDA = "no CUDA device: the TensorRT and PyTorch CUDA INT8 paths need an NVIDIA GPU"


class DeploymentUnavailable(RuntimeError):
    """The requested accelerator or library is not available on this machine."""


def require_tensorrt():
    """Import tensorrt or raise DeploymentUnavailable with the install hint."""
    try:
        import tensorrt as trt  # type: ignore
    except ImportError as e:
        raise DeploymentUnavailable(TENSORRT_MISSING) from e
    return trt


def require_cuda():
    import torch

    if not torch.cuda.is_available():
        raise DeploymentUnavailable(NO_CUDA)
    return torch.device("cuda")


def build_engine(onnx_path, int8: bool = True, fp16: bool = True, frames=(16, 1001, 3001), batch=(1, 1, 8),
                 workspace_gb: float = 2.0, out=None):
    """Serialized TensorRT engine (bytes) from an ONNX file (Q/DQ for INT8, float for FP32).

    frames/batch: (min, opt, max) of the optimization profile for the [batch, 64, frames] input.
    """
    trt = require_tensorrt()
    require_cuda()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2 ** 30))
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the Q/DQ nodes
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    inp = network.get_input(0)
    feats = inp.shape[1]
    profile.set_shape(inp.name, (batch[0], feats, frames[0]), (batch[1], feats, frames[1]), (batch[2], feats, frames[2]))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT engine build failed")
    if out:
        Path(out).write_bytes(bytes(engine))
    return bytes(engine)


def time_engine(engine_bytes: bytes, frames: int, batch: int = 1, feats: int = 64, repeats: int = 100,
                warmup: int = 10) -> dict:
    """Median/IQR latency (ms) of a serialized engine with CUDA events (torch tensors as buffers)."""
    trt = require_tensorrt()
    device = require_cuda()
    import numpy as np
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    ctx = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    ctx.set_input_shape(inp, (batch, feats, frames))
    buffers = {}
    for n in names:
        shape = tuple(ctx.get_tensor_shape(n))
        dtype = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int8: torch.int8,
                 trt.int32: torch.int32, trt.int64: torch.int64}[engine.get_tensor_dtype(n)]
        buffers[n] = torch.randn(shape, device=device).to(dtype) if n == inp else torch.empty(shape, dtype=dtype, device=device)
        ctx.set_tensor_address(n, buffers[n].data_ptr())
    stream = torch.cuda.Stream()
    times = []
    with torch.cuda.stream(stream):
        for i in range(warmup + repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            ctx.execute_async_v3(stream.cuda_stream)
            end.record(stream)
            end.synchronize()
            if i >= warmup:
                times.append(start.elapsed_time(end))
    q25, med, q75 = np.percentile(times, [25, 50, 75])
    return {"median_ms": float(med), "q25_ms": float(q25), "q75_ms": float(q75), "runs": repeats}


def cuda_int8_runner(qmodel):
    """``TorchIntegerRunner`` on the GPU (module doc); raises DeploymentUnavailable without CUDA."""
    require_cuda()
    import torch

    from ..program.fast import TorchIntegerRunner

    torch.backends.cudnn.allow_tf32 = False  # TF32 would round the float-exact convolutions
    torch.backends.cuda.matmul.allow_tf32 = False
    return TorchIntegerRunner(getattr(qmodel, "program", qmodel), device="cuda", depthwise="float-exact")


def cuda_latency(model, qmodel, seconds: float = 10.0, batch: int = 1, repeats: int = 50, warmup: int = 5) -> dict:
    """FP32 (torch float model) vs INT8 (``cuda_int8_runner``) on the GPU, CUDA-event timing,
    interleaved; bit-exactness of the INT8 logits against ``forward_int`` (CPU) reported."""
    device = require_cuda()
    import numpy as np
    import torch

    from ..experiments import input_frames

    T = input_frames(model, seconds)
    mel = torch.randn(batch, model.encoder.feat_in, T)
    q = qmodel.quantize_input(mel)
    lengths = torch.full((batch,), T, dtype=torch.int64)
    with torch.inference_mode():
        ref = qmodel.forward_int(q, lengths)[0].numpy()
    runner = cuda_int8_runner(qmodel)
    fmodel = model.to(device).eval()
    mel_d, len_d, q_d = mel.to(device), lengths.to(device), q.to(device)
    exact = bool(np.array_equal(runner.run(q_d).cpu().numpy(), ref))
    fns = {"fp32": lambda: fmodel.forward_features(mel_d, len_d), "int8": lambda: runner.run(q_d)}
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for k, f in fns.items():
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                f()
                e.record()
                e.synchronize()
                if i >= warmup:
                    times[k].append(s.elapsed_time(e))
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"fp32_ms": med["fp32"], "int8_ms": med["int8"], "speedup": med["fp32"] / med["int8"],
            "int8_bit_exact": exact, "device": torch.cuda.get_device_name(0), "frames": T, "batch": batch}
