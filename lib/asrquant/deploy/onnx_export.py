"""ONNX export of the integer model (integer operators only), of the float model, and a Q/DQ form.

Three graphs, all written with ``onnx.helper`` straight from the model structure (no tracing):

``export_onnx(qmodel, path)``  -- the integer-only graph of ``IntegerConvASR.forward_int``.
    Input ``q`` int8 [B, F, T] (the quantized log-mel), output ``logits`` int64 [B, C, T'] (scale
    ``qmodel.logit_scale``). Every value between them is an integer tensor: ConvInteger,
    Cast/Mul/Add/Div/Clip on int32/int64, Cast to int8 (checked by ``integer_only_report``
    with ONNX shape inference). It reproduces ``forward_int`` bit for bit (tests/test_deploy.py).

``export_onnx_float(model, path)`` -- the float ConvASR (BatchNorm folded), FP32, for the
    onnxruntime FP32 baseline of the latency benchmark.

``export_onnx_qdq(qmodel, path)`` -- the integer model's numbers (int8 weights, per-channel
    scales, activation scales) as QuantizeLinear/DequantizeLinear around float Conv: the
    "explicit quantization" form TensorRT fuses into int8 kernels. It is *simulated*
    quantization in float: rounding differs from the dyadic integer path (see the function).

Layout of the integer graph (why it is exact and fast on onnxruntime's CPU kernels)
----------------------------------------------------------------------------------
Every activation is stored as int8 plus a zero point z: signed activations (the network input,
depthwise outputs) as y (z = 0); unsigned ones (after ReLU, y in [0, 255]) as y - 128
(z = -128). Weights are stored as uint8 w + 128 with zero point 128. ConvInteger then computes
sum (w_u - 128)(x_s - z) = sum w * y exactly, and pads with the zero point (a real 0). With
uint8 weights as the GEMM's A operand and int8 activations as B, onnxruntime dispatches its fast
U8S8 kernels (measured: int8 activations x uint8 weights is ~20x faster than uint8 x int8 in
onnxruntime 1.32). The U8S8 kernels are exact with VNNI (vpdpbusd accumulates u8*s8 products in
int32); on AVX2 without VNNI they use vpmaddubsw, which saturates a pair of products at int16, so
``ort_kernels_exact()`` runs an adversarial probe and the runners refuse an inexact kernel.
The int32 accumulator must hold sum|w| * max|y| (checked at export); the bias is added in
int64 inside the requantization constant.

Dyadic requantization with ONNX integer ops
-------------------------------------------
Ours (quant.dyadic): v = acc * M + 2^(s-1) (acc with bias), y = clamp(floor(v / 2^s), lo, hi).
ONNX integer Div truncates toward zero, BitShift exists only for unsigned types. Exact form:

    y - z = Clip( Div(acc*M + c, 2^s) + (lo - z),  lo - z, hi - z ),   c = b*M + 2^(s-1) - lo*2^s

Proof. Let n = acc*M + c = v - lo*2^s. If n >= 0, Div(n, 2^s) = floor(n / 2^s) = floor(v / 2^s)
- lo (lo*2^s is a multiple of 2^s), so the sum is floor(v/2^s) - z and the Clip is the clamp.
If n < 0, then v < lo*2^s, the true result is clamped to lo, and Div(n, 2^s) <= 0 (truncation of
a negative number), so the sum is <= lo - z and the Clip gives lo - z as well.

Without a clamp (residual branches, decoder) the same holds with lo = -R, R = floor(v_max / 2^s)
+ 1 from the static bound |acc| <= sum|w| max|y| (so n > 0 always), and the constant -R is added
back (summed over the branches of a residual block). With a clamp the offset is max(lo, -R) per
channel (the same proof; it keeps the constant small for channels whose multiplier is tiny).
``floor="shift"`` replaces Div by Max(n, 0) -> Cast(uint64) -> BitShift(RIGHT) -> Cast(int64),
the same value for n >= 0 and 0 for n < 0 (then clamped as above); it exists to time both.
Every constant is checked to keep |n| < 2^63.

Not covered: padding masks. The graph treats all T frames as valid (batch 1, or a batch of equal
length utterances); for a padded batch run utterances one at a time (``forward_int`` masks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

INT64_MAX = (1 << 63) - 1
INT32_MAX = (1 << 31) - 1
OPSET = 18


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:  # pragma: no cover - onnx is a declared extra
        raise ImportError("ONNX export needs the 'onnx' package: pip install onnx onnxruntime") from e
    return onnx, TensorProto, helper, numpy_helper


class _Graph:
    """A tiny graph builder: unique names, initializers from NumPy arrays, one node per call."""

    def __init__(self):
        self.onnx, self.TP, self.helper, self.nh = _onnx()
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value, dtype, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(self.nh.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def model(self, inputs, outputs, name: str, doc: str = ""):
        h = self.helper
        graph = h.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="asrquant",
                         doc_string=doc)
        m.ir_version = 9  # readable by onnxruntime >= 1.16
        return m


# --------------------------------------------------------------------------- integer graph

def _col(v) -> np.ndarray:
    """Per-channel int64 constant shaped [1, C, 1]."""
    return np.asarray([int(x) for x in v], dtype=np.int64).reshape(1, -1, 1)


def _conv_geometry(conv) -> dict:
    K = int(conv.weight.shape[-1])
    return dict(kernel_shape=[K], pads=[int(conv.padding)] * 2, strides=[int(conv.stride)],
                dilations=[int(conv.dilation)], group=int(conv.groups))


def _acc_bound_nobias(conv, x_bits: int, x_signed: bool) -> list[int]:
    """Per output channel: sum_{c,k} |w| * max|x| (intops.conv's bound, before the bias)."""
    from ..intops.conv import _channel_abs_sums, _x_abs_max

    xmax = _x_abs_max(x_bits, x_signed)
    return [s * xmax for s in _channel_abs_sums(conv.weight)]


class _Act:
    """An int8 activation tensor in the graph: name, signedness, bits (zero point 0 / -128)."""

    def __init__(self, name: str, signed: bool, bits: int):
        self.name, self.signed, self.bits = name, signed, bits

    @property
    def zero_point(self) -> int:
        return 0 if self.signed else -128


def _conv_integer(g: _Graph, x: _Act, conv) -> tuple[str, list[int]]:
    """ConvInteger without bias -> int32 accumulator name, and the per-channel bound on |acc|."""
    w = conv.weight.numpy().astype(np.int16)
    if w.min() < -128 or w.max() > 127:
        raise ValueError("integer ONNX export needs weights within int8")
    if x.bits > 8:
        raise ValueError("integer ONNX export needs activations of at most 8 bits")
    bound = _acc_bound_nobias(conv, x.bits, x.signed)
    if max(bound) > INT32_MAX:
        raise NotImplementedError("a layer needs an int64 accumulator: ConvInteger accumulates in int32")
    w_u = g.const((w + 128).astype(np.uint8), np.uint8, "w")
    acc = g.op("ConvInteger", [x.name, w_u, g.const(x.zero_point, np.int8, "xz"), g.const(128, np.uint8, "wz")],
               "acc", **_conv_geometry(conv))
    return acc, bound


def _bias_list(conv) -> list[int]:
    if conv.bias is None:
        return [0] * conv.weight.shape[0]
    return [int(b) for b in conv.bias.reshape(-1).tolist()]


def _floor_div(g: _Graph, n: str, shifts: list[int], floor: str) -> str:
    """Div(n, 2^s) for n >= 0 (any value, possibly wrong, for n < 0 where the caller clamps)."""
    if floor == "div":
        return g.op("Div", [n, g.const(_col([1 << s for s in shifts]), np.int64, "d")], "q")
    if floor == "shift":
        pos = g.op("Max", [n, g.const(0, np.int64, "zero")], "pos")
        u = g.op("Cast", [pos], "u", to=g.TP.UINT64)
        sh = g.op("BitShift", [u, g.const(_col(shifts).astype(np.uint64), np.uint64, "s")], "sh", direction="RIGHT")
        return g.op("Cast", [sh], "q", to=g.TP.INT64)
    raise ValueError(f"floor must be 'div' or 'shift', not {floor!r}")


def _scaled(g: _Graph, acc: str, bound: list[int], conv, lo: list[int], floor: str) -> str:
    """Div(acc*M + c, 2^s) with c = b*M + 2^(s-1) - lo*2^s (module doc; lo per channel), int64.
    Raises OverflowError unless |acc*M + c| < 2^63 for every |acc| <= bound."""
    M, S = _channel_params(conv, len(bound))
    if min(S) < 0 or min(M) < 0:
        raise ValueError("need M >= 0 and shift >= 0")
    c = [b * m + ((1 << s) >> 1) - l * (1 << s) for b, m, s, l in zip(_bias_list(conv), M, S, lo)]
    for bd, m, cc in zip(bound, M, c):
        if bd * m + abs(cc) > INT64_MAX:
            raise OverflowError("requantization constant would overflow int64")
    a64 = g.op("Cast", [acc], "a64", to=g.TP.INT64)
    n = g.op("Add", [g.op("Mul", [a64, g.const(_col(M), np.int64, "M")], "am"), g.const(_col(c), np.int64, "c")], "n")
    return _floor_div(g, n, S, floor)


def _channel_params(conv, n: int) -> tuple[list[int], list[int]]:
    M, S = [int(m) for m in conv.M.reshape(-1).tolist()], [int(s) for s in conv.shift.reshape(-1).tolist()]
    return (M * n, S * n) if len(M) == 1 else (M, S)


def _result_bound(bound, conv) -> list[int]:
    """R per channel with |floor(v / 2^s)| < R for every reachable v = (acc + b)*M + 2^(s-1)."""
    M, S = _channel_params(conv, len(bound))
    return [((bd + abs(b)) * m + ((1 << s) >> 1)) // (1 << s) + 1
            for bd, b, m, s in zip(bound, _bias_list(conv), M, S)]


def _requant_int8(g: _Graph, acc: str, bound, conv, floor: str) -> _Act:
    """Requantize to an int8-stored activation (clamp to the conv's output range).

    The offset is L = max(lo, -R) per channel (R: ``_result_bound``), not lo itself: where the
    result can never reach lo the clamp is inactive and -R keeps n >= 0 with a smaller constant
    (lo * 2^s overflows int64 for the tiny multipliers of dead channels, s up to 62).
    """
    from ..quant.quantizer import qrange

    lo, hi = qrange(conv.out_bits, conv.out_signed)
    z = 0 if conv.out_signed else -128
    L = [max(lo, -r) for r in _result_bound(bound, conv)]
    q = _scaled(g, acc, bound, conv, L, floor)
    s = g.op("Add", [q, g.const(_col([l - z for l in L]), np.int64, "off")], "qs")
    y = g.op("Clip", [s, g.const(lo - z, np.int64, "lo"), g.const(hi - z, np.int64, "hi")], "clip")
    return _Act(g.op("Cast", [y], "y", to=g.TP.INT8), conv.out_signed, conv.out_bits)


def _rescale_terms(g: _Graph, acc: str, bound, conv, floor: str) -> tuple[str, list[int]]:
    """floor((acc+b)*M/2^s + 1/2) + R (R > 0 per channel, returned) as int64, no clamp."""
    R = _result_bound(bound, conv)
    return _scaled(g, acc, bound, conv, [-r for r in R], floor), R


def build_integer_model(qmodel, frames: int | None = None, floor: str = "div"):
    """The integer-only ONNX ModelProto of ``qmodel.forward_int`` (module doc)."""
    g = _Graph()
    TP, h = g.TP, g.helper
    n_feat = int(qmodel.blocks[0].convs[0].weight.shape[1] * qmodel.blocks[0].convs[0].groups)
    x = _Act("q", True, int(qmodel.input_bits))
    xs = [x]
    for block in qmodel.blocks:
        out = xs[-1]
        for conv in block.convs[:-1]:
            acc, bound = _conv_integer(g, out, conv)
            out = _requant_int8(g, acc, bound, conv, floor)
        last = block.convs[-1]
        acc, bound = _conv_integer(g, out, last)
        if not block.residual:
            y = _requant_int8(g, acc, bound, last, floor)
        else:
            from ..quant.quantizer import qrange

            total, R = _rescale_terms(g, acc, bound, last, floor)
            for x_in, rconv in zip(xs, block.residual):
                racc, rbound = _conv_integer(g, x_in, rconv)
                term, r = _rescale_terms(g, racc, rbound, rconv, floor)
                total = g.op("Add", [total, term], "sum")
                R = [a + b for a, b in zip(R, r)]
            lo, hi = qrange(last.out_bits, signed=False)
            s = g.op("Add", [total, g.const(_col([-r - 128 for r in R]), np.int64, "off")], "res")
            c = g.op("Clip", [s, g.const(lo - 128, np.int64, "lo"), g.const(hi - 128, np.int64, "hi")], "clip")
            y = _Act(g.op("Cast", [c], "y", to=TP.INT8), False, last.out_bits)
        xs = xs + [y] if block.dense else [y]
    d = qmodel.decoder
    acc, bound = _conv_integer(g, xs[-1], d)
    t, R = _rescale_terms(g, acc, bound, d, floor)
    g.nodes.append(h.make_node("Add", [t, g.const(_col([-r for r in R]), np.int64, "off")], ["logits"], name="logits"))
    n_cls = int(d.weight.shape[0])
    inputs = [h.make_tensor_value_info("q", TP.INT8, ["batch", n_feat, frames or "frames"])]
    outputs = [h.make_tensor_value_info("logits", TP.INT64, ["batch", n_cls, "out_frames"])]
    doc = (f"asrquant integer-only model: int8 log-mel (scale {qmodel.input_scale!r}) -> int64 logits "
           f"(scale {qmodel.logit_scale!r}); no padding masks (all frames valid).")
    model = g.model(inputs, outputs, "asrquant_integer", doc)
    meta = {"input_scale": repr(qmodel.input_scale), "logit_scale": repr(qmodel.logit_scale),
            "labels": "".join(qmodel.labels), "floor": floor}
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    return model


def _save(model, path) -> Path:
    onnx = _onnx()[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def export_onnx(qmodel, path, frames: int | None = None, floor: str = "div") -> Path:
    """Write the integer-only graph of ``qmodel`` (an IntegerConvASR) to ``path`` (module doc).

    frames: fix T (None: dynamic). The batch dimension is dynamic but no padding masks are
    applied: every frame of every batch item is treated as valid.
    """
    return _save(build_integer_model(qmodel, frames, floor), path)


def integer_only_report(model_or_path) -> dict:
    """Shape-infer the graph; list every value whose element type is not an integer type.

    Returns {"ok": bool, "non_integer": [(name, type)], "op_types": sorted ops, "values": n}.
    """
    onnx, TP, _, _ = _onnx()
    m = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    inferred = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    ints = {TP.INT8, TP.UINT8, TP.INT16, TP.UINT16, TP.INT32, TP.UINT32, TP.INT64, TP.UINT64}
    g = inferred.graph
    types = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    produced = {o for n in g.node for o in n.output}
    missing = sorted(produced - set(types))
    bad = [(n, TP.DataType.Name(t)) for n, t in types.items() if t not in ints]
    return {"ok": not bad and not missing, "non_integer": bad, "untyped": missing,
            "op_types": sorted({n.op_type for n in g.node}), "values": len(types)}


# --------------------------------------------------------------------------- float graph

def build_float_model(model, frames: int | None = None):
    """FP32 ONNX graph of a float ConvASR (``forward_features``: mel -> logits), BN folded."""
    import torch
    from torch import nn

    from ..models.convasr import MaskedConv1d
    from ..quant.bn import fold_batchnorm

    g = _Graph()
    TP, h = g.TP, g.helper

    def conv(x: str, c: nn.Conv1d, bn=None) -> str:
        w = c.weight.detach().double()
        b = c.bias.detach().double() if c.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        if bn is not None:
            w, b = fold_batchnorm(w, b, bn)
        return g.op("Conv", [x, g.const(w.float().numpy(), np.float32, "w"), g.const(b.float().numpy(), np.float32, "b")],
                    "conv", kernel_shape=[c.kernel_size[0]], pads=[c.padding[0]] * 2, strides=[c.stride[0]],
                    dilations=[c.dilation[0]], group=c.groups)

    def act(x: str, module) -> str:
        relu = [m for m in (module if isinstance(module, nn.Sequential) else [module]) if isinstance(m, nn.ReLU)]
        if relu:
            return g.op("Relu", [x], "relu")
        if any(isinstance(m, nn.Hardtanh) for m in (module if isinstance(module, nn.Sequential) else [module])):
            return g.op("Clip", [x, g.const(0.0, np.float32), g.const(20.0, np.float32)], "htanh")
        return x

    xs = ["mel"]
    for block in model.encoder.encoder:
        layers = list(block.mconv)
        out = xs[-1]
        i = 0
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, MaskedConv1d):
                bn = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm1d) else None
                out = conv(out, layer.conv, bn)
                i += 2 if bn is not None else 1
            elif isinstance(layer, (nn.ReLU, nn.Hardtanh)):
                out = act(out, layer)
                i += 1
            else:  # dropout
                i += 1
        if block.res is not None:
            for x_in, (rconv, rbn) in zip(xs, block.res):
                out = g.op("Add", [out, conv(x_in, rconv.conv, rbn)], "add")
        out = act(out, block.mout)
        xs = xs + [out] if block.dense else [out]
    dec = model.decoder.decoder_layers[0]
    y = conv(xs[-1], dec)
    g.nodes.append(h.make_node("Identity", [y], ["logits"], name="logits"))
    n_feat = model.encoder.feat_in
    inputs = [h.make_tensor_value_info("mel", TP.FLOAT, ["batch", n_feat, frames or "frames"])]
    outputs = [h.make_tensor_value_info("logits", TP.FLOAT, ["batch", dec.out_channels, "out_frames"])]
    return g.model(inputs, outputs, "asrquant_float", "asrquant float ConvASR (BatchNorm folded), no padding masks")


def export_onnx_float(model, path, frames: int | None = None) -> Path:
    """FP32 ONNX of a float ConvASR (BN folded, no padding masks)."""
    return _save(build_float_model(model, frames), path)


# --------------------------------------------------------------------------- Q/DQ graph

def build_qdq_model(qmodel, frames: int | None = None, signed_only: bool = False):
    """The integer model as QuantizeLinear/DequantizeLinear + float Conv (TensorRT explicit quantization).

    Input: float log-mel ``mel`` [B, F, T]; output float ``logits`` (real units; divide by
    ``qmodel.logit_scale`` to compare with the integer logits). Weights are the model's int8
    weights behind DequantizeLinear (per-channel scales, axis 0); biases are float (b_q * s_x * s_w);
    every activation the integer model quantizes gets Q -> DQ with the integer model's scale.

    This is *simulated* quantization: float convolutions on dequantized values. TensorRT fuses
    DQ -> Conv -> (Add) -> (ReLU) -> Q into int8 kernels; onnxruntime CPU runs it in float. It is
    not bit-exact to the integer path: QuantizeLinear rounds half to even with a float scale where
    the integer path uses the dyadic M/2^s and rounds half up, and the float sums round.

    signed_only: TensorRT accepts only int8 Q/DQ with zero point 0, while post-ReLU activations
    here are unsigned 8 bit ([0, 255], scale s). With signed_only=True they become int8 with scale
    2s (one bit lost: a different, slightly coarser model); default uint8 (onnxruntime).
    """
    g = _Graph()
    TP, h = g.TP, g.helper
    f32 = np.float32

    def qdq(x: str, scale: float, signed: bool) -> str:
        if not signed and signed_only:
            scale, signed = 2.0 * scale, True
        zp = g.const(0, np.int8 if signed else np.uint8, "zp")
        sc = g.const(scale, f32, "scale")
        return g.op("DequantizeLinear", [g.op("QuantizeLinear", [x, sc, zp], "qx"), sc, zp], "dqx")

    def fconv(x: str, conv) -> str:
        w = conv.weight.numpy().astype(np.int8)
        s_w = conv.w_scale.double().numpy().reshape(-1)
        wq = g.const(w, np.int8, "w")
        wdq = g.op("DequantizeLinear", [wq, g.const(s_w.astype(f32), f32, "ws"),
                                        g.const(np.zeros(len(s_w), np.int8), np.int8, "wz")], "wdq", axis=0)
        ins = [x, wdq]
        if conv.bias is not None:
            b = conv.bias.double().numpy().reshape(-1) * conv.in_scale * s_w
            ins.append(g.const(b.astype(f32), f32, "b"))
        K = int(conv.weight.shape[-1])
        return g.op("Conv", ins, "conv", kernel_shape=[K], pads=[int(conv.padding)] * 2, strides=[int(conv.stride)],
                    dilations=[int(conv.dilation)], group=int(conv.groups))

    def out_act(y: str, conv) -> str:
        if not conv.out_signed:
            y = g.op("Relu", [y], "relu")
        return qdq(y, conv.out_scale, conv.out_signed)

    xs = [qdq("mel", qmodel.input_scale, True)]
    for block in qmodel.blocks:
        out = xs[-1]
        for conv in block.convs[:-1]:
            out = out_act(fconv(out, conv), conv)
        last = block.convs[-1]
        y = fconv(out, last)
        for x_in, rconv in zip(xs, block.residual):
            y = g.op("Add", [y, fconv(x_in, rconv)], "add")
        if block.residual:
            y = qdq(g.op("Relu", [y], "relu"), last.out_scale, False)
        else:
            y = out_act(y, last)
        xs = xs + [y] if block.dense else [y]
    d = qmodel.decoder
    y = fconv(xs[-1], d)
    g.nodes.append(h.make_node("Identity", [y], ["logits"], name="logits"))
    n_feat = int(qmodel.blocks[0].convs[0].weight.shape[1] * qmodel.blocks[0].convs[0].groups)
    inputs = [h.make_tensor_value_info("mel", TP.FLOAT, ["batch", n_feat, frames or "frames"])]
    outputs = [h.make_tensor_value_info("logits", TP.FLOAT, ["batch", int(d.weight.shape[0]), "out_frames"])]
    return g.model(inputs, outputs, "asrquant_qdq", "asrquant Q/DQ (simulated int8) model for TensorRT")


def export_onnx_qdq(qmodel, path, frames: int | None = None, signed_only: bool = False) -> Path:
    """Write ``build_qdq_model`` to ``path`` (TensorRT explicit-quantization form)."""
    return _save(build_qdq_model(qmodel, frames, signed_only), path)


# --------------------------------------------------------------------------- CLI

def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="quantized model file (.aqz, from `asrquant quantize`)")
    p.add_argument("--onnx", required=True, help="output .onnx (integer-only graph)")
    p.add_argument("--qdq", default=None, help="also write the Q/DQ (TensorRT) form here")
    p.add_argument("--frames", type=int, default=None, help="fix the number of input frames (default dynamic)")
    p.add_argument("--floor", choices=["div", "shift"], default="div", help="floor division form (module doc)")
    p.add_argument("--check", default=None, metavar="AUDIO",
                   help="compare onnxruntime with forward_int on the first utterance of this folder/manifest")


def cmd_export(args) -> int:
    from ..convert import load_quantized

    qmodel = load_quantized(args.model)
    out = export_onnx(qmodel, args.onnx, frames=args.frames, floor=args.floor)
    rep = integer_only_report(out)
    print(f"integer ONNX -> {out} ({out.stat().st_size / 2**20:.1f} MiB, ops: {', '.join(rep['op_types'])}); "
          f"integer-only: {'PASS' if rep['ok'] else 'FAIL ' + str(rep['non_integer'][:5])}")
    if args.qdq:
        print(f"Q/DQ ONNX -> {export_onnx_qdq(qmodel, args.qdq, frames=args.frames)}")
    if args.check:
        from .runtime import check_against_forward_int

        res = check_against_forward_int(qmodel, out, args.check)
        print(f"onnxruntime vs forward_int on {res['utterance']}: {res['logits']} logits, "
              f"{res['differ']} differ -> {'BIT-EXACT' if res['differ'] == 0 else 'MISMATCH'}")
        return 0 if rep["ok"] and res["differ"] == 0 else 1
    return 0 if rep["ok"] else 1
