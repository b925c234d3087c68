"""One QuartzNet sub-block taken apart and timed piece by piece, in each precision.

A sub-block of QuartzNet is a depthwise conv (kernel 33..87), a pointwise C x C conv and a
requantization after each. ``subblock_pieces`` builds every implementation of those pieces that the
runtimes of ``deploy.bench`` use (torch and onnxruntime float; onnxruntime ``ConvInteger``,
``torch._int_mm``, depthwise as exact float32, the native C kernels) on random operands of the
given shape; ``time_interleaved`` times them in interleaved rounds, so that every piece sees the
same load from other processes, and reports the median and IQR per piece. The operands are random:
the time of these kernels does not depend on the values.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

DEPTHWISE, POINTWISE, REQUANT = "depthwise k{K}", "pointwise {C}x{C}", "requantization"


def _ort_conv(x_dtype, op: str, w: np.ndarray, groups: int, pads: int, shape, threads: int):
    """A one-node onnxruntime session: Conv (float) or ConvInteger (int8 x uint8, weight zero point 128)."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from intasr.deploy.runtime import make_session

    integer = op == "ConvInteger"
    zp = [nh.from_array(np.array(0, np.int8), "xz"), nh.from_array(np.array(128, np.uint8), "wz")] if integer else []
    node = h.make_node(op, ["x", "w"] + (["xz", "wz"] if integer else []), ["y"], group=groups, pads=[pads, pads])
    g = h.make_graph([node], "g", [h.make_tensor_value_info("x", x_dtype, list(shape))],
                     [h.make_tensor_value_info("y", TP.INT32 if integer else TP.FLOAT, None)],
                     initializer=[nh.from_array(w, "w")] + zp)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
    m.ir_version = 9
    return make_session(m, threads)


def subblock_pieces(threads: int, C: int = 512, T: int = 500, K: int = 63) -> dict[tuple[str, str], Callable]:
    """{(piece, implementation): a call that computes it once} for a sub-block of C channels, T frames
    and depthwise kernel K, batch 1. Pieces: ``depthwise k<K>``, ``pointwise <C>x<C>`` and
    ``requantization`` (an int32 accumulator to int8 with per-channel dyadic constants)."""
    from onnx import TensorProto as TP

    from intasr.intops import native

    dw, pw = DEPTHWISE.format(K=K), POINTWISE.format(C=C)
    xf = torch.randn(1, C, T)
    wdw, wpw = torch.randn(C, 1, K), torch.randn(C, C, 1)
    xi8 = torch.randint(-128, 128, (C, T), dtype=torch.int8)
    wi8 = torch.randint(-128, 128, (C, C), dtype=torch.int8)
    acc = torch.randint(-(2**22), 2**22, (1, C, T), dtype=torch.int32)
    M = torch.randint(2**30, 2**31, (1, C, 1))
    s = torch.randint(36, 40, (1, C, 1))
    c = torch.randint(0, 2**30, (1, C, 1))
    wdw_i8 = torch.randint(-128, 128, (C, K), dtype=torch.int8)
    Mv, sv, cv = (v.reshape(-1).contiguous() for v in (M, s, c))

    def u8(*shape):
        return np.random.randint(0, 256, shape).astype(np.uint8)

    shape = (1, C, T)
    o_dw_f = _ort_conv(TP.FLOAT, "Conv", wdw.numpy(), C, K // 2, shape, threads)
    o_pw_f = _ort_conv(TP.FLOAT, "Conv", wpw.numpy(), 1, 0, shape, threads)
    o_dw_i = _ort_conv(TP.INT8, "ConvInteger", u8(C, 1, K), C, K // 2, shape, threads)
    o_pw_i = _ort_conv(TP.INT8, "ConvInteger", u8(C, C, 1), 1, 0, shape, threads)
    xn, xin = xf.numpy(), xi8[None].numpy()
    return {
        (dw, "FP32 torch conv1d"): lambda: F.conv1d(xf, wdw, padding=K // 2, groups=C),
        (dw, "FP32 torch conv_transpose1d"): lambda: F.conv_transpose1d(xf, wdw, padding=K // 2, groups=C),
        (dw, "FP32 onnxruntime"): lambda: o_dw_f.run(None, {"x": xn}),
        (dw, "INT8 onnxruntime ConvInteger"): lambda: o_dw_i.run(None, {"x": xin}),
        (dw, "INT8 as exact float32"): lambda: F.conv_transpose1d(
            xi8[None].float(), wdw, padding=K // 2, groups=C).to(torch.int32),
        (pw, "FP32 torch conv1d"): lambda: F.conv1d(xf, wpw),
        (pw, "FP32 onnxruntime"): lambda: o_pw_f.run(None, {"x": xn}),
        (pw, "INT8 torch._int_mm"): lambda: torch._int_mm(wi8, xi8),
        (pw, "INT8 onnxruntime ConvInteger"): lambda: o_pw_i.run(None, {"x": xin}),
        (dw, "INT8 native C kernel (+ requantization)"): lambda: native.dw_conv_requant(
            xi8[None], wdw_i8, Mv, cv, sv, padding=K // 2, threads=threads),
        (REQUANT, "INT8 torch int64 (in place)"): lambda: (
            acc.to(torch.int64).mul_(M).add_(c).bitwise_right_shift_(s).clamp_(-128, 127).to(torch.int8)),
        (REQUANT, "INT8 native C kernel (one pass)"): lambda: native.requant_sum([(acc, Mv, cv, sv)], threads=threads),
    }


def time_interleaved(calls: dict, rounds: int = 15, clock=time.perf_counter) -> pd.DataFrame:
    """Each call warmed up once, then timed in ``rounds`` interleaved rounds (every call once per
    round, in the dict's order). One row per key (piece, implementation): ``median_ms`` and
    ``iqr_ms`` (75th minus 25th percentile, numpy's linear interpolation), rounded to 3 decimals."""
    for f in calls.values():
        f()
    times = {k: [] for k in calls}
    for _ in range(rounds):
        for k, f in calls.items():
            t = clock()
            f()
            times[k].append((clock() - t) * 1e3)
    return pd.DataFrame([
        {"piece": k[0], "implementation": k[1], "median_ms": np.median(v),
         "iqr_ms": np.subtract(*np.percentile(v, [75, 25]))}
        for k, v in times.items()
    ]).round(3)


def pointwise_summary(parts: pd.DataFrame, C: int = 512) -> dict[str, str]:
    """The pointwise piece in three numbers, formatted to 2 decimals: ``pw_intmm_ms`` (torch._int_mm),
    ``pw_fp32_ms`` (the faster of torch's and onnxruntime's float conv) and ``pw_intmm_ratio``
    (the second over the first)."""
    pw = parts[parts.piece == POINTWISE.format(C=C)].set_index("implementation").median_ms
    fp32 = min(pw["FP32 torch conv1d"], pw["FP32 onnxruntime"])
    intmm = pw["INT8 torch._int_mm"]
    return {"pw_intmm_ms": f"{intmm:.2f}", "pw_fp32_ms": f"{fp32:.2f}", "pw_intmm_ratio": f"{fp32 / intmm:.2f}"}
