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
              (requantize / rescale: times f = (M / 2^shift) s_in / s_out per channel where f is
              not 1: a factor folded into the multiplier, e.g. the Conformer's half-step
              feed-forward residual 0.5; ConvASR has none, its graph is unchanged)
  clamp       (Relu if unsigned; Clip below 8 bits) -> Q -> DQ at the output scale
The input gets Q -> DQ at the input scale (signed).

The Conformer's ops, in float at the program's quantization points (every activation Value gets
Q/DQ at its scale; the integer non-linearities' products are accumulators and get none):
  layernorm   Transpose -> LayerNormalization over the channels (gamma = gamma_q * gamma_scale,
              beta = beta_q * gamma_scale 2^-norm_bits, eps from eps_int 4^eps_shift S_in^2 / C^3)
              -> Transpose -> Q/DQ at the output scale
  softmax     scores * (softmax in_scale / scores scale) (the 1/sqrt(d_k)), Where(keep, ., -1e9),
              Softmax over the keys, Where(keep, ., 0) (keep = query and key valid, as
              onnx_nonlinear.attention_keep), Q/DQ at 2^-out_bits unsigned
  swish / glu x Sigmoid(x) / a Sigmoid(b) (Split of the channels)
  gelu        x (1 + Erf(x / sqrt 2)) / 2 (opset 18 has no Gelu op)
  matmuls     MatMul over the heads (onnx_nonlinear's reshapes); matmul_pos: the DQ'd int8 table
              (pos_scale), Gather of the 2T-1 middle columns, MatMul, rel_shift
  conv2d      Conv 2-D (DQ weights, per-channel w_scale)   to_image / flatten_freq: the reshapes

This is *simulated* quantization: float convolutions on dequantized values. onnxruntime CPU
runs it in float; it is not bit-exact to the integer path: QuantizeLinear rounds half to even
with a float scale where the integer path uses the dyadic M/2^s and rounds half up, and the
float sums round; the Conformer's float LayerNorm / Softmax / Sigmoid / Erf differ from the
integer approximations (i-exp, i-GELU, integer square root) within their own error. Measured
frame argmax agreement with forward_int (tests/test_program_backends.py): hama Conformer 0.97
(verify on 3 s of test-other: 0.98), 2-layer NeMo-architecture Conformers with random weights
(flat logits) 0.87-0.93.

signed_only: TensorRT accepts only int8 Q/DQ with zero point 0, while post-ReLU activations
here are unsigned 8 bit ([0, 255], scale s). With signed_only=True they become int8 with scale
2s (one bit lost: a different, slightly coarser model); default uint8 (onnxruntime).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..quant.quantizer import qrange
from .ops import Program
from .onnx_graph import (GraphLowering, as_numpy, cached_session, flatten_freq_nodes, full_lengths, io_channels,
                         make_session, program_and_labels, save_model, to_image_nodes)

__all__ = ["LOWERS", "build_qdq_model", "export_onnx_qdq", "run_onnx_qdq"]

F32 = np.float32
MASK_FILL = -1e9
# output rank of the ops that change it (every other op keeps its first input's rank)
_RANK = {"to_image": 4, "conv2d": 4, "flatten_freq": 3, "matmul_qk": 4, "matmul_pos": 4, "softmax": 4,
         "matmul_pv": 3}


class _Lowering(GraphLowering):
    NAME = "Q/DQ lowering"

    def __init__(self, program: Program, signed_only: bool):
        super().__init__(program)
        self.signed_only = signed_only
        self.ranks: dict[str, int] = {}
        self.producer = program.producer()
        self._keep: dict[str, str] = {}

    def before(self, op) -> None:
        self.ranks[op.outputs[0]] = _RANK.get(op.kind, self.ranks.get(op.inputs[0], 3))

    def qdq(self, x: str, scale: float, signed: bool) -> str:
        if not signed and self.signed_only:
            scale, signed = 2.0 * scale, True
        g = self.g
        zp = g.const(0, np.int8 if signed else np.uint8, "zp")
        sc = g.const(scale, F32, "scale")
        return g.op("DequantizeLinear", [g.op("QuantizeLinear", [x, sc, zp], "qx"), sc, zp], "dqx")

    def quantize_out(self, op, x: str, bits: int | None = None, signed: bool | None = None) -> str:
        """Clamp to qrange(bits, signed) in real units (Relu for unsigned), then Q/DQ."""
        v = self.program.values[op.outputs[0]]
        bits = int(op.attrs["bits"]) if bits is None else int(bits)
        signed = bool(op.attrs["signed"]) if signed is None else bool(signed)
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
        rank = self.ranks.get(op.inputs[0], 3)
        return g.op("Where", [self.lengths.mask(x, lengths, rank), x, g.const(0.0, F32, "zero")], "masked")

    def frames(self, op, lengths):
        return self.lengths.frames(lengths, op.attrs)

    def conv1d(self, op, x, dims: int = 1):
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
        if dims == 2:
            (sT, sF), (pT, pF) = [int(v) for v in a["stride"]], [int(v) for v in a["padding"]]
            return g.op("Conv", ins, "conv2d", kernel_shape=[int(w.shape[2]), int(w.shape[3])], pads=[pT, pF, pT, pF],
                        strides=[sT, sF], dilations=[1, 1], group=int(a["groups"]))
        return g.op("Conv", ins, "conv", kernel_shape=[int(w.shape[-1])], pads=[int(a["padding"])] * 2,
                    strides=[int(a["stride"])], dilations=[int(a["dilation"])], group=int(a["groups"]))

    def conv2d(self, op, x):
        return self.conv1d(op, x, dims=2)

    def to_image(self, op, x):
        return to_image_nodes(self.g, x)

    def flatten_freq(self, op, x):
        return flatten_freq_nodes(self.g, x)

    # --- the Conformer's ops in float
    def _in_scale(self, op) -> float:
        s = op.meta.get("in_scale", self.program.values[op.inputs[0]].scale)
        if s is None:
            raise ValueError(f"{op.name}: no input scale in the program's metadata (Q/DQ needs it)")
        return float(s)

    def layernorm(self, op, x):
        g = self.g
        a = op.attrs
        C, F = int(a["channels"]), int(a["norm_bits"])
        gamma_q = op.params["gamma_q"].double().numpy().reshape(-1)
        beta_q = op.params["beta_q"].double().numpy().reshape(-1)
        sg = op.meta.get("gamma_scale")
        if sg is None:   # from the output multiplier: M / 2^shift = gamma_scale 2^-F / out_scale
            sg = int(a["M"]) / 2.0 ** int(a["shift"]) * float(self.program.values[op.outputs[0]].scale) * 2.0 ** F
        S = self._in_scale(op)
        eps = int(a["eps_int"]) * 4.0 ** int(a["eps_shift"]) * S * S / C ** 3
        xt = g.op("Transpose", [x], "btc", perm=[0, 2, 1])
        y = g.op("LayerNormalization", [xt, g.const(gamma_q * sg, F32, "gamma"),
                                        g.const(beta_q * sg * 2.0 ** -F, F32, "beta")], "ln", axis=-1,
                 epsilon=float(eps))
        y = g.op("Transpose", [y], "bct", perm=[0, 2, 1])
        return self.quantize_out(op, y, int(a["out_bits"]), True)

    def softmax(self, op, scores, lengths):
        from .onnx_nonlinear import attention_keep

        g = self.g
        s_in = self.program.values[op.inputs[0]].scale
        if "in_scale" not in op.meta or s_in is None:
            raise ValueError(f"{op.name}: softmax needs its in_scale and the scores' scale (metadata)")
        x = g.op("Mul", [scores, g.const(float(op.meta["in_scale"]) / float(s_in), F32, "rsqrt_dk")], "logit")
        if lengths not in self._keep:
            self._keep[lengths] = attention_keep(g, x, lengths)
        keep = self._keep[lengths]
        x = g.op("Where", [keep, x, g.const(MASK_FILL, F32, "fill")], "xm")
        p = g.op("Where", [keep, g.op("Softmax", [x], "sm", axis=-1), g.const(0.0, F32, "zero")], "probs")
        return self.quantize_out(op, p, int(op.attrs["out_bits"]), False)

    def swish(self, op, x):
        return self.g.op("Mul", [x, self.g.op("Sigmoid", [x], "sig")], "swish")

    def glu(self, op, x):
        g = self.g
        a, b = g.name("glu_a"), g.name("glu_b")
        g.nodes.append(g.helper.make_node("Split", [x], [a, b], name=g.name("split"), axis=1, num_outputs=2))
        return g.op("Mul", [a, g.op("Sigmoid", [b], "sig")], "glu")

    def gelu(self, op, x):
        g = self.g
        e = g.op("Erf", [g.op("Mul", [x, g.const(2.0 ** -0.5, F32, "rsqrt2")], "xs")], "erf")
        half = g.op("Mul", [x, g.const(0.5, F32, "half")], "xh")
        return g.op("Mul", [half, g.op("Add", [e, g.const(1.0, F32, "one")], "erf1")], "gelu")

    def matmul_qk(self, op, q, k):
        from .onnx_nonlinear import split_heads

        g, h = self.g, int(op.attrs["heads"])
        return g.op("MatMul", [g.op("Transpose", [split_heads(g, q, h)], "qT", perm=[0, 1, 3, 2]), split_heads(g, k, h)],
                    "scores")

    def matmul_pv(self, op, p, v):
        from .onnx_nonlinear import split_heads

        g, h = self.g, int(op.attrs["heads"])
        y = g.op("MatMul", [split_heads(g, v, h), g.op("Transpose", [p], "pT", perm=[0, 1, 3, 2])], "ctx")
        return g.op("Reshape", [y, g.op("Shape", [v], "vshape")], "ctx2")

    def matmul_pos(self, op, q):
        from .onnx_nonlinear import rel_pos_scores

        g = self.g
        if "pos_scale" not in op.meta:
            raise ValueError(f"{op.name}: matmul_pos meta lacks pos_scale (Q/DQ needs the table's real scale)")
        pos = op.params["pos"].numpy()
        if pos.min() < -128 or pos.max() > 127:
            raise ValueError(f"{op.name}: matmul_pos table must lie within int8")
        table = g.op("DequantizeLinear", [g.const(pos.astype(np.int8), np.int8, "pos"),
                                          g.const(float(op.meta["pos_scale"]), F32, "ps")], "posdq")
        return rel_pos_scores(g, q, table, int(op.attrs["heads"]), int(op.attrs["max_len"]))

    def real_scale(self, name: str):
        """The real scale of a program value (per channel for a conv accumulator: in_scale *
        w_scale from the conv's meta; a mask keeps its input's), or None if unknown."""
        v = self.program.values.get(name)
        if v is not None and v.scale is not None:
            return np.asarray([float(v.scale)])
        op = self.producer.get(name)
        if op is None:
            return None
        if op.kind in ("conv1d", "conv2d") and "in_scale" in op.meta and "w_scale" in op.meta:
            return float(op.meta["in_scale"]) * np.asarray(op.meta["w_scale"], dtype=np.float64).reshape(-1)
        if op.kind == "mask_time":
            return self.real_scale(op.inputs[0])
        return None

    def scaled(self, op, x: str) -> str:
        """x * f in real units, f = (M / 2^shift) s_in / s_out per channel: the factor a requantize or
        rescale folds into its multiplier beyond the change of scale (the Conformer's half-step
        feed-forward residual, 0.5). Left out where f is 1 (within 1e-4: ConvASR) or a scale is
        unknown."""
        s_in = self.real_scale(op.inputs[0])
        s_out = self.program.values[op.outputs[0]].scale
        if s_in is None or s_out is None:
            return x
        M = op.params["M"].double().numpy().reshape(-1)
        S = op.params["shift"].double().numpy().reshape(-1)
        f = M / 2.0 ** S * float(s_out) / s_in
        if np.all(np.abs(f - 1.0) < 1e-4):
            return x
        g = self.g
        rank = self.ranks.get(op.inputs[0], 3)
        return g.op("Mul", [x, g.const(f.astype(F32).reshape((1, -1) + (1,) * (rank - 2)), F32, "factor")], "xf")

    def requantize(self, op, acc):
        return self.quantize_out(op, self.scaled(op, acc))

    def rescale(self, op, acc):
        return self.scaled(op, acc)

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
        env = self.lower_ops({x_in: self.qdq("mel", float(scale), True), len_in: "lengths"})
        g.identity(env[p.outputs[0]], "logits")
        g.identity(env[p.outputs[1]], "logits_lengths")
        feats, classes = io_channels(p)
        inputs = [h.make_tensor_value_info("mel", TP.FLOAT, ["batch", feats, frames or "frames"]),
                  h.make_tensor_value_info("lengths", TP.INT64, ["batch"])]
        outputs = [h.make_tensor_value_info("logits", TP.FLOAT, ["batch", classes, "out_frames"]),
                   h.make_tensor_value_info("logits_lengths", TP.INT64, ["batch"])]
        return g.model(inputs, outputs, "intasr_qdq", "intasr Q/DQ (simulated int8) program for TensorRT")


# the op kinds this lowering has a kernel for (a method of _Lowering each)
LOWERS = _Lowering.LOWERS


def build_qdq_model(model, frames: int | None = None, signed_only: bool = False):
    """The Q/DQ ModelProto of a program (or an IntegerModel's program; module doc)."""
    program, _ = program_and_labels(model)
    return _Lowering(program, signed_only).build(frames)


def export_onnx_qdq(model, path, frames: int | None = None, signed_only: bool = False) -> Path:
    """Write ``build_qdq_model`` to ``path`` (TensorRT explicit-quantization form)."""
    return save_model(build_qdq_model(model, frames, signed_only), path)


def run_onnx_qdq(program: Program, mel, lengths, threads: int = 1, signed_only: bool = False):
    """The uniform backend call: float log-mel [B, F, T] and lengths [B] -> (float32 logits in real
    units [B, C, T'], int64 lengths [B]) from onnxruntime on the Q/DQ graph (built once per program)."""
    sess = cached_session(program, ("qdq", threads, signed_only),
                           lambda: make_session(build_qdq_model(program, signed_only=signed_only), threads))
    x = as_numpy(mel, np.float32)
    logits, out_len = sess.run(None, {"mel": x, "lengths": full_lengths(x, lengths)})
    return logits, out_len.astype(np.int64, copy=False)
