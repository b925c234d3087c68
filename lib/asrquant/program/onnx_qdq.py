"""The Q/DQ ONNX lowering of the integer program: QuantizeLinear/DequantizeLinear around float Conv.

``build_qdq_model(program)`` is the "explicit quantization" form TensorRT fuses into int8
kernels (DQ -> Conv -> (Add) -> (ReLU) -> Q), lowered op by op from the program's integer
parameters and its metadata scales (conv1d meta: ``in_scale``, ``w_scale``; every Value:
``scale``). Inputs: float log-mel ``mel`` [B, F, T] and ``lengths`` int64 [B]; outputs float
``logits`` in real units (divide by ``program.meta["logit_scale"]`` to compare with the integer
logits) and ``logits_lengths``.

Every tensor is float in real units:
  mask_time   Where(Range(T) < lengths, x, 0)           frames   integer arithmetic (as onnx_int)
  conv1d      Conv(x, DQ(int8 weight, per-channel w_scale, axis 0), bias b_q * s_in * s_w)
  requantize  (Relu if unsigned; Clip below 8 bits) -> Q -> DQ at the output scale
  rescale     identity (real units already)                add      Add
  clamp       (Relu if unsigned; Clip below 8 bits) -> Q -> DQ at the output scale
The input gets Q -> DQ at the input scale (signed).

This is *simulated* quantization: float convolutions on dequantized values. onnxruntime CPU
runs it in float; it is not bit-exact to the integer path: QuantizeLinear rounds half to even
with a float scale where the integer path uses the dyadic M/2^s and rounds half up, and the
float sums round.

signed_only: TensorRT accepts only int8 Q/DQ with zero point 0, while post-ReLU activations
here are unsigned 8 bit ([0, 255], scale s). With signed_only=True they become int8 with scale
2s (one bit lost: a different, slightly coarser model); default uint8 (onnxruntime).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..quant.quantizer import qrange
from .ops import Program
from .onnx_int import Graph, Lengths, _io_channels, _program, as_numpy, full_lengths, make_session, save_model

__all__ = ["KERNELS", "build_qdq_model", "export_onnx_qdq", "run_onnx_qdq"]

F32 = np.float32


class _Lowering:
    def __init__(self, program: Program, signed_only: bool):
        self.program, self.signed_only = program, signed_only
        self.g = Graph()
        self.lengths = Lengths(self.g)

    def qdq(self, x: str, scale: float, signed: bool) -> str:
        if not signed and self.signed_only:
            scale, signed = 2.0 * scale, True
        g = self.g
        zp = g.const(0, np.int8 if signed else np.uint8, "zp")
        sc = g.const(scale, F32, "scale")
        return g.op("DequantizeLinear", [g.op("QuantizeLinear", [x, sc, zp], "qx"), sc, zp], "dqx")

    def quantize_out(self, op, x: str) -> str:
        """Clamp to qrange(bits, signed) in real units (Relu for unsigned), then Q/DQ."""
        v = self.program.values[op.outputs[0]]
        bits, signed = int(op.attrs["bits"]), bool(op.attrs["signed"])
        if v.scale is None:
            raise ValueError(f"{op.name}: output value {op.outputs[0]!r} has no scale (Q/DQ needs it)")
        lo, hi = qrange(bits, signed)
        g = self.g
        if bits < 8:  # Q/DQ is 8 bit: the narrower range as a float clip
            x = g.op("Clip", [x, g.const(lo * v.scale, F32, "lo"), g.const(hi * v.scale, F32, "hi")], "clip")
        elif not signed:
            x = g.op("Relu", [x], "relu")
        if bits > 8:
            return x  # no 8-bit Q/DQ for wider activations: keep the float value
        return self.qdq(x, float(v.scale), signed)

    # --- kernels
    def mask_time(self, op, x, lengths):
        g = self.g
        return g.op("Where", [self.lengths.mask(x, lengths), x, g.const(0.0, F32, "zero")], "masked")

    def frames(self, op, lengths):
        return self.lengths.frames(lengths, op.attrs)

    def conv1d(self, op, x):
        g = self.g
        meta = op.meta
        if "w_scale" not in meta or "in_scale" not in meta:
            raise ValueError(f"{op.name}: conv1d meta lacks in_scale/w_scale (Q/DQ needs the real scales)")
        w = op.params["weight"].numpy()
        if w.min() < -128 or w.max() > 127:
            raise ValueError(f"{op.name}: Q/DQ lowering needs weights within int8")
        s_w = np.asarray(meta["w_scale"], dtype=np.float64).reshape(-1)
        if s_w.size == 1:
            s_w = np.full(w.shape[0], s_w[0])
        wdq = g.op("DequantizeLinear", [g.const(w.astype(np.int8), np.int8, "w"), g.const(s_w.astype(F32), F32, "ws"),
                                        g.const(np.zeros(len(s_w), np.int8), np.int8, "wz")], "wdq", axis=0)
        ins = [x, wdq]
        bias = op.params.get("bias")
        if bias is not None:
            b = bias.double().numpy().reshape(-1) * float(meta["in_scale"]) * s_w
            ins.append(g.const(b.astype(F32), F32, "b"))
        a = op.attrs
        return g.op("Conv", ins, "conv", kernel_shape=[int(w.shape[-1])], pads=[int(a["padding"])] * 2,
                    strides=[int(a["stride"])], dilations=[int(a["dilation"])], group=int(a["groups"]))

    def requantize(self, op, acc):
        return self.quantize_out(op, acc)

    def rescale(self, op, acc):
        return acc

    def add(self, op, a, b):
        return self.g.op("Add", [a, b], "add")

    def clamp(self, op, v):
        return self.quantize_out(op, v)

    def build(self, frames: int | None):
        p, g = self.program, self.g
        TP, h = g.TP, g.helper
        x_in, len_in = p.inputs
        scale = p.values[x_in].scale or p.meta.get("input_scale")
        if scale is None:
            raise ValueError("the program's input has no scale")
        env = {x_in: self.qdq("mel", float(scale), True), len_in: "lengths"}
        for op in p.ops:
            fn = KERNELS.get(op.kind)
            if fn is None:
                raise NotImplementedError(f"Q/DQ lowering has no kernel for op {op.kind!r}")
            env[op.outputs[0]] = fn(self, op, *[env[i] for i in op.inputs])
        g.identity(env[p.outputs[0]], "logits")
        g.identity(env[p.outputs[1]], "logits_lengths")
        feats, classes = _io_channels(p)
        inputs = [h.make_tensor_value_info("mel", TP.FLOAT, ["batch", feats, frames or "frames"]),
                  h.make_tensor_value_info("lengths", TP.INT64, ["batch"])]
        outputs = [h.make_tensor_value_info("logits", TP.FLOAT, ["batch", classes, "out_frames"]),
                   h.make_tensor_value_info("logits_lengths", TP.INT64, ["batch"])]
        return g.model(inputs, outputs, "asrquant_qdq", "asrquant Q/DQ (simulated int8) program for TensorRT")


KERNELS = {
    "mask_time": _Lowering.mask_time,
    "frames": _Lowering.frames,
    "conv1d": _Lowering.conv1d,
    "requantize": _Lowering.requantize,
    "rescale": _Lowering.rescale,
    "add": _Lowering.add,
    "clamp": _Lowering.clamp,
}


def build_qdq_model(model, frames: int | None = None, signed_only: bool = False):
    """The Q/DQ ModelProto of a program (or an IntegerModel's program; module doc)."""
    program, _ = _program(model)
    return _Lowering(program, signed_only).build(frames)


def export_onnx_qdq(model, path, frames: int | None = None, signed_only: bool = False) -> Path:
    """Write ``build_qdq_model`` to ``path`` (TensorRT explicit-quantization form)."""
    return save_model(build_qdq_model(model, frames, signed_only), path)


def run_onnx_qdq(program: Program, mel, lengths, threads: int = 1, signed_only: bool = False):
    """The uniform backend call: float log-mel [B, F, T] and lengths [B] -> (float32 logits in real
    units [B, C, T'], int64 lengths [B]) from onnxruntime on the Q/DQ graph (built once per program)."""
    from .onnx_int import _cached_session

    sess = _cached_session(program, ("qdq", threads, signed_only),
                           lambda: make_session(build_qdq_model(program, signed_only=signed_only), threads))
    x = as_numpy(mel, np.float32)
    logits, out_len = sess.run(None, {"mel": x, "lengths": full_lengths(x, lengths)})
    return logits, out_len.astype(np.int64, copy=False)
