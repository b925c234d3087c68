"""onnxruntime runners for the exported graphs (CPU), and the bit-exactness check.

* ``OrtIntegerRunner``: the integer-only graph (``onnx_export.export_onnx``): int8 in, int64 out.
* ``OrtFloatRunner``: the FP32 graph of the float model (``export_onnx_float``).
* ``ort_kernels_exact()``: onnxruntime's integer GEMM on this CPU is exact only with VNNI (or
  AVX-512 VNNI / AMX); on AVX2 without VNNI the U8S8 kernel's vpmaddubsw saturates pairs of
  products at int16. The probe convolves worst-case values (weights 0/255 as uint8, activations
  -128/127) and compares with exact integer arithmetic; ``OrtIntegerRunner`` checks it once per
  process and refuses to run (ValueError) an inexact kernel unless ``allow_inexact=True``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover
        raise ImportError("onnxruntime is not installed: pip install onnxruntime") from e
    return ort


def make_session(model, threads: int | None = None):
    """An onnxruntime CPU InferenceSession from a path or a ModelProto; ``threads`` intra-op
    threads (None: onnxruntime's default), one inter-op thread, sequential execution."""
    ort = _ort()
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    src = str(model) if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=None)
def ort_kernels_exact(threads: int = 1) -> bool:
    """True iff onnxruntime's ConvInteger (the layout of the integer graph: int8 activations with
    zero point 0 or -128, uint8 weights with zero point 128) is exact on worst-case inputs here."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    cin, cout, T, K = 64, 16, 64, 3
    # extreme magnitudes with correlated signs: what saturates an int16 pair sum
    x = np.where(rng.random((1, cin, T)) < 0.5, -128, 127).astype(np.int8)
    x[..., : T // 2] = 127
    w = np.where(rng.random((cout, cin, K)) < 0.5, 0, 255).astype(np.uint8)
    w[: cout // 2] = 255
    ok = True
    for xz in (0, -128):
        nodes = [h.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], kernel_shape=[K], pads=[1, 1])]
        inits = [nh.from_array(w, "w"), nh.from_array(np.array(xz, np.int8), "xz"), nh.from_array(np.array(128, np.uint8), "wz")]
        g = h.make_graph(nodes, "probe", [h.make_tensor_value_info("x", TP.INT8, [1, cin, T])],
                         [h.make_tensor_value_info("y", TP.INT32, None)], inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
        m.ir_version = 9
        y = make_session(m, threads).run(None, {"x": x})[0].astype(np.int64)
        xr = np.pad(x.astype(np.int64) - xz, ((0, 0), (0, 0), (1, 1)))  # padding = zero point = real 0
        wr = w.astype(np.int64) - 128
        ref = sum(np.einsum("oc,bct->bot", wr[:, :, k], xr[:, :, k:k + T]) for k in range(K))
        ok &= bool(np.array_equal(y, ref))
    return ok


def _np(x, dtype) -> np.ndarray:
    if hasattr(x, "numpy"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=dtype))


class OrtIntegerRunner:
    """Runs the integer-only ONNX graph: ``run(q) -> int64 logits`` (q int8 [B, F, T], no masks)."""

    name = "onnxruntime-int8"

    def __init__(self, model, threads: int | None = None, allow_inexact: bool = False, floor: str = "div"):
        from .onnx_export import build_integer_model

        if not allow_inexact and not ort_kernels_exact(threads or 1):
            raise ValueError("onnxruntime's integer kernels are not exact on this CPU (no VNNI: int16 saturation "
                             "in U8S8); pass allow_inexact=True to run anyway, or use the torch integer path")
        if hasattr(model, "forward_int"):
            model = build_integer_model(model, floor=floor)
        self.session = make_session(model, threads)
        self.threads = threads

    def run(self, q) -> np.ndarray:
        return self.session.run(None, {"q": _np(q, np.int8)})[0]


class OrtFloatRunner:
    """Runs the FP32 graph of the float model: ``run(mel) -> float32 logits``."""

    name = "onnxruntime-fp32"

    def __init__(self, model, threads: int | None = None):
        from .onnx_export import build_float_model

        if hasattr(model, "forward_features"):
            model = build_float_model(model)
        self.session = make_session(model, threads)
        self.threads = threads

    def run(self, mel) -> np.ndarray:
        return self.session.run(None, {"mel": _np(mel, np.float32)})[0]


def first_utterance_input(qmodel, audio):
    """(name, int8 features [1, F, T], lengths) of the first utterance of a folder or manifest."""
    import torch

    from ..data import load_batch, load_dataset

    utts = load_dataset(audio, require_text=False, limit=1)
    if not utts:
        raise ValueError(f"{audio}: no audio found")
    wav, lengths = load_batch(utts[:1])
    with torch.inference_mode():
        mel, mel_len = qmodel.features(wav, lengths)
        q = qmodel.quantize_input(mel[:, :, : int(mel_len[0])])
    name = getattr(utts[0], "id", None) or getattr(utts[0], "utt_id", None) or str(getattr(utts[0], "path", utts[0]))
    return name, q, mel_len


def compare_logits(ours, theirs) -> dict:
    """Element-wise comparison of two integer logit arrays [B, C, T]."""
    a, b = np.asarray(ours).astype(np.int64), np.asarray(theirs).astype(np.int64)
    if a.shape != b.shape:
        return {"logits": int(a.size), "differ": int(a.size), "shape_mismatch": [list(a.shape), list(b.shape)]}
    diff = a != b
    return {"logits": int(a.size), "differ": int(diff.sum()), "max_abs_diff": int(np.abs(a - b).max()) if a.size else 0,
            "argmax_differ": int((a.argmax(1) != b.argmax(1)).sum())}


def check_against_forward_int(qmodel, onnx_path, audio, threads: int | None = None) -> dict:
    """Run ``forward_int`` and the ONNX graph on one real utterance; count differing logits."""
    import torch

    name, q, _ = first_utterance_input(qmodel, audio)
    with torch.inference_mode():
        ours, _ = qmodel.forward_int(q, torch.tensor([q.shape[-1]]))
    theirs = OrtIntegerRunner(Path(onnx_path), threads).run(q)
    res = compare_logits(ours.numpy(), theirs)
    res["utterance"] = name
    res["frames"] = int(q.shape[-1])
    return res


# --------------------------------------------------------------------------- fast torch integer path

class _FastConv:
    """One IntConv prepared for ``TorchIntegerRunner``: int8 operands, folded constants.

    Activations are int8 stored values s = y + zp, zp = 0 (signed) or -128 (unsigned y in [0, 255]
    stored as y - 128). Kinds:
      pw:  K = 1, groups = 1: acc = torch._int_mm(W, S) (int8 x int8 -> int32, exact), and the
           zero point enters the constant: W y = W s - zp * rowsum(W).
      ort: any other conv (depthwise, strided, dilated, dense k > 1): onnxruntime ConvInteger on
           the stored int8 values with their zero point (pads with the zero point, a real 0), uint8
           weights w + 128 with zero point 128: the exact integer conv (``ort_kernels_exact``).
    Requantization in int64, in place: v = acc * M + C; v >>= s (arithmetic shift = floor);
    C = (b - zp*rowsum) * M + 2^(s-1) + zo * 2^s folds the bias, the input zero point and the
    output storage offset zo into one constant (floor(v/2^s) + zo = floor((v + zo*2^s)/2^s)).
    Residual branches use zo = 0 and the block's -128 is folded into the main branch.
    """

    def __init__(self, conv, x_signed: bool, x_bits: int, threads, depthwise: str = "ort", device: str = "cpu"):
        import torch

        from .onnx_export import _acc_bound_nobias, _bias_list, _channel_params, _col

        self.conv = conv
        Cout, cin_g, K = conv.weight.shape
        self.zp = 0 if x_signed else -128
        bound = _acc_bound_nobias(conv, x_bits, x_signed)
        if max(bound) > INT32_MAX_:
            raise NotImplementedError("a layer needs an int64 accumulator")
        w = conv.weight.to(torch.int64)
        self.kind = "pw" if (K == 1 and conv.groups == 1 and conv.padding == 0) else "ort"
        if depthwise == "native" and self.kind == "ort" and cin_g == 1 and conv.groups == Cout and device == "cpu":
            self.kind = "ndw"  # intops/native.py: depthwise conv fused with its requantization
            self.Wn = conv.weight[:, 0, :].to(torch.int8).contiguous()
        if (depthwise == "float-exact" and cin_g == 1 and conv.groups == Cout and conv.stride == 1
                and conv.dilation == 1 and 2 * conv.padding == K - 1 and max(bound) < FLOAT_EXACT_LIMIT):
            self.kind = "fdw"
            # conv1d(x, w) = conv_transpose1d(x, flip(w)) for stride 1, 'same' padding (models/fastconv.py)
            self.Wf = conv.weight.to(torch.float32).flip(-1).contiguous()
            self.pad = int(conv.padding)
        rowsum = w.reshape(Cout, -1).sum(1).tolist() if self.kind == "pw" else [0] * Cout
        M, S = _channel_params(conv, Cout)
        self.M_list, self.S_list = M, S
        self.base = [(b - self.zp * r) for b, r in zip(_bias_list(conv), rowsum)]  # acc + base = true acc
        self.bound = [bd + abs(b) for bd, b in zip(bound, self.base)]
        self.M = torch.tensor(_col(M))
        self.S = torch.tensor(_col(S))
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.kind == "ort":
            # no onnxruntime kernel on the GPU: any non-pointwise conv in float32 on integer
            # values (exact below 2^24, as "fdw"); TF32 must be off (``cuda_int8_runner``)
            if max(bound) >= FLOAT_EXACT_LIMIT:
                raise NotImplementedError("a conv's accumulator bound exceeds 2^24: no exact float path on CUDA")
            self.kind = "fconv"
            self.Wf = conv.weight.to(torch.float32).to(self.device)
        self.M, self.S = self.M.to(self.device), self.S.to(self.device)
        self.Mv, self.Sv = self.M.reshape(-1), self.S.reshape(-1)  # per-channel vectors for the native kernels
        if self.kind == "pw":
            self.W = conv.weight.reshape(Cout, cin_g).to(torch.int8).contiguous().to(self.device)
            self.stride = int(conv.stride)
        elif self.kind in ("fdw", "fconv"):
            self.Wf = self.Wf.to(self.device)
        elif self.kind == "ort":
            from onnx import TensorProto as TP
            from onnx import helper as h
            from onnx import numpy_helper as nh

            wu = (conv.weight.numpy().astype(np.int16) + 128).astype(np.uint8)
            node = h.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["acc"], kernel_shape=[int(K)],
                               pads=[int(conv.padding)] * 2, strides=[int(conv.stride)],
                               dilations=[int(conv.dilation)], group=int(conv.groups))
            inits = [nh.from_array(wu, "w"), nh.from_array(np.array(self.zp, np.int8), "xz"),
                     nh.from_array(np.array(128, np.uint8), "wz")]
            g = h.make_graph([node], "conv", [h.make_tensor_value_info("x", TP.INT8, ["b", int(cin_g * conv.groups), "t"])],
                             [h.make_tensor_value_info("acc", TP.INT32, None)], inits)
            m = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
            m.ir_version = 9
            self.session = make_session(m, threads)

    def constant(self, z_out: int):
        """C per channel (int64 [1, C, 1]) for output offset z_out, or None if it would overflow."""
        import torch

        C = [b * m + ((1 << s) >> 1) + z_out * (1 << s) for b, m, s in zip(self.base, self.M_list, self.S_list)]
        if any(bd * m + abs(c) > INT64_MAX_ for bd, m, c in zip(self.bound, self.M_list, C)):
            return None
        return torch.tensor(np.asarray(C, dtype=np.int64).reshape(1, -1, 1)).to(self.device)

    def accumulate(self, s):
        import torch

        if self.kind == "pw":
            x = s[:, :, :: self.stride] if self.stride > 1 else s
            B, Cin, T = x.shape
            cols = x[0] if B == 1 else x.permute(1, 0, 2).reshape(Cin, B * T)
            n = B * T
            if self.device.type == "cuda" and n % 8:  # CUDA _int_mm: columns a multiple of 8
                cols = torch.nn.functional.pad(cols, (0, 8 - n % 8))
            acc = torch._int_mm(self.W, cols.contiguous())[:, :n]
            return acc.unsqueeze(0) if B == 1 else acc.reshape(-1, B, T).permute(1, 0, 2)
        if self.kind == "fdw":  # exact: every product and partial sum is an integer below 2^24
            y = s.to(torch.float32)
            if self.zp:
                y.sub_(self.zp)
            out = torch.nn.functional.conv_transpose1d(y, self.Wf, padding=self.pad, groups=self.Wf.shape[0])
            return out.to(torch.int32)
        if self.kind == "ndw":  # only reached when the layer cannot be fused (not used by QuartzNet)
            from ..intops.conv import int_conv1d

            c = self.conv
            y = s.to(torch.int16) - self.zp if self.zp else s
            return int_conv1d(y, c.weight, None, int(c.stride), int(c.padding), int(c.dilation), int(c.groups),
                              torch.int32)
        if self.kind == "fconv":
            c = self.conv
            y = s.to(torch.float32)
            if self.zp:
                y.sub_(self.zp)
            out = torch.nn.functional.conv1d(y, self.Wf, stride=c.stride, padding=c.padding, dilation=c.dilation,
                                             groups=c.groups)
            return out.to(torch.int32)
        return torch.from_numpy(self.session.run(None, {"x": s.numpy()})[0])

    def native_dw(self, s, C, post, lo, hi, threads):
        """The whole layer in one native kernel: int8 in, requantized int8 out."""
        from ..intops import native

        c = self.conv
        return native.dw_conv_requant(s, self.Wn, self.Mv, C.reshape(-1), self.Sv, stride=int(c.stride),
                                      padding=int(c.padding), dilation=int(c.dilation), zp=self.zp, post=post,
                                      lo=lo, hi=hi, threads=threads)

    def term(self, s, C):
        """(int32 accumulator [B, C, T] contiguous, M, C, S) for ``native.requant_sum``."""
        acc = self.accumulate(s)
        return acc.contiguous(), self.Mv, C.reshape(-1), self.Sv

    def scaled(self, acc, C):
        """(acc * M + C) >> s in int64 (in place on a fresh int64 tensor)."""
        import torch

        v = acc.to(torch.int64)
        v.mul_(self.M).add_(C).bitwise_right_shift_(self.S)
        return v


INT32_MAX_ = (1 << 31) - 1
FLOAT_EXACT_LIMIT = 1 << 24  # float32 represents every integer up to 2^24 exactly
INT64_MAX_ = (1 << 63) - 1


class TorchIntegerRunner:
    """A fast exact CPU integer path for ``IntegerConvASR``: ``run(q int8) -> int64 logits``.

    Same integers as ``forward_int`` (bit-exact: tests/test_deploy.py), no padding masks (all
    frames valid: batch 1 or equal lengths). Pointwise convs: ``torch._int_mm`` (int8 x int8 ->
    int32); depthwise / strided / k > 1 convs: onnxruntime's ConvInteger kernel, one small session
    per layer, zero-copy NumPy views; requantization: torch int64 ops, in place. Every arithmetic op
    works on integer tensors. Precomputes all constants once (``_FastConv``).

    depthwise="float-exact": stride-1 'same' depthwise convs run as a float32 transposed conv on
    the integer values instead (onnxruntime's integer depthwise is not faster than float here).
    Still bit-exact: |x| <= 255, |w| <= 128 and sum_k |w_k| * max|x| < 2^24 (checked per layer,
    else the layer falls back to the integer kernel), so every product and every partial sum is
    an integer that float32 represents exactly, in any summation order. It is not integer-only
    arithmetic, though: report it as such.

    depthwise="native" (name ``torch+native-int8``, the fastest here): depthwise convs fused with
    their requantization, and every other requantization (residual branches included) as one
    pass, in the C kernels of ``intops/native.py``; pointwise convs stay on ``torch._int_mm``.
    Integer-only, and needs no onnxruntime for QuartzNet (no dense k > 1 conv)."""

    name = "torch+ort-int8"

    def __init__(self, qmodel, threads: int | None = None, allow_inexact: bool = False, depthwise: str = "ort",
                 device: str = "cpu"):
        from ..quant.quantizer import qrange

        self.device = device
        if str(device).startswith("cuda"):
            allow_inexact = True  # the onnxruntime probe concerns CPU kernels only
        if depthwise not in ("ort", "float-exact", "native"):
            raise ValueError("depthwise must be 'ort', 'float-exact' or 'native'")
        self.depthwise = depthwise
        self.name = {"ort": "torch+ort-int8", "float-exact": "torch-int8+fp32exact-dw",
                     "native": "torch+native-int8"}[depthwise]
        if depthwise == "native":
            from ..intops import native

            native._lib()  # compile now: a missing compiler is a NativeBuildError here, not mid-run
        self.threads = threads
        self.blocks = []
        signed, bits = True, int(qmodel.input_bits)
        xs_sign = [(signed, bits)]
        for block in qmodel.blocks:
            convs = []
            s, b = xs_sign[-1]
            for conv in block.convs:
                convs.append(_FastConv(conv, s, b, threads, depthwise, device))
                s, b = conv.out_signed, conv.out_bits
            res = [_FastConv(rc, xs, xb, threads, depthwise, device) for (xs, xb), rc in zip(xs_sign, block.residual)]
            plan = []
            for i, fc in enumerate(convs):
                is_res = i == len(convs) - 1 and bool(res)
                signed_out = False if is_res else fc.conv.out_signed
                lo, hi = qrange(fc.conv.out_bits, signed_out)
                zo = 0 if signed_out else -128          # stored value = y + zo (int8)
                C = fc.constant(zo)
                post = 0
                if C is None:                           # cannot fold the offset: add it afterwards
                    C, post = fc.constant(0), zo
                if C is None:
                    raise OverflowError("requantization constant overflows int64")
                plan.append((is_res, fc, C, post, (lo + zo, hi + zo)))
            rcs = [(rc, rc.constant(0)) for rc in res]
            if any(c is None for _, c in rcs):
                raise OverflowError("residual requantization constant overflows int64")
            self.blocks.append((plan, rcs, block.dense))
            out = (False, block.convs[-1].out_bits) if block.residual else (block.convs[-1].out_signed, block.convs[-1].out_bits)
            xs_sign = xs_sign + [out] if block.dense else [out]
        self.decoder = _FastConv(qmodel.decoder, *xs_sign[-1], threads, depthwise, device)
        self.dec_C = self.decoder.constant(0)
        if self.dec_C is None:
            raise OverflowError("decoder requantization constant overflows int64")
        convs = [self.decoder] + [fc for plan, rcs, _ in self.blocks
                                  for fc in [step[1] for step in plan] + [rc for rc, _ in rcs]]
        uses_ort = any(fc.kind == "ort" for fc in convs)  # the native path may need no onnxruntime at all
        if uses_ort and not allow_inexact and not ort_kernels_exact(threads or 1):
            raise ValueError("onnxruntime's ConvInteger is not exact on this CPU (no VNNI)")

    def run(self, q):
        import torch

        q = torch.as_tensor(q).to(self.device)
        if q.dtype != torch.int8:
            raise TypeError("input must be int8")
        if self.depthwise == "native":
            return self._run_native(q)
        with torch.inference_mode():
            xs = [q.contiguous()]
            for plan, rcs, dense in self.blocks:
                s = xs[-1]
                for is_res, fc, C, post, (lo, hi) in plan:
                    v = fc.scaled(fc.accumulate(s), C)
                    if is_res:
                        for (rc, rC), x_in in zip(rcs, xs):
                            v.add_(rc.scaled(rc.accumulate(x_in), rC))
                    if post:
                        v.add_(post)
                    s = v.clamp_(lo, hi).to(torch.int8)
                xs = xs + [s] if dense else [s]
            d = self.decoder
            out = d.scaled(d.accumulate(xs[-1]), self.dec_C)
            return out if out.is_cuda else out.numpy()


    def _run_native(self, q):
        """Same integers, fused: depthwise convs and every requantization in intops/native.py
        (one pass each), pointwise convs in torch._int_mm."""
        import torch

        from ..intops import native

        th = self.threads or 1
        with torch.inference_mode():
            xs = [q.contiguous()]
            for plan, rcs, dense in self.blocks:
                s = xs[-1]
                for is_res, fc, C, post, (lo, hi) in plan:
                    if fc.kind == "ndw" and not is_res:
                        s = fc.native_dw(s, C, post, lo, hi, th)
                        continue
                    terms = [fc.term(s, C)]
                    if is_res:
                        terms += [rc.term(x_in, rC) for (rc, rC), x_in in zip(rcs, xs)]
                    s = native.requant_sum(terms, post=post, lo=lo, hi=hi, threads=th)
                xs = xs + [s] if dense else [s]
            d = self.decoder
            return native.requant_sum([d.term(xs[-1], self.dec_C)], out_dtype=torch.int64, threads=th).numpy()


class TorchFloatRunner:
    """FP32 float model in torch with BatchNorm folded and the fast depthwise form: stride-1
    'same' depthwise convs as conv_transpose1d with the flipped kernel (models/fastconv.py
    explains why it is ~20x faster than conv1d on this CPU); everything else F.conv1d. The
    fastest float CPU path we have; ``run(mel) -> logits`` (no padding masks)."""

    name = "torch-fp32-fastdw"

    def __init__(self, model, threads: int | None = None):
        import torch
        from torch import nn

        from ..models.convasr import MaskedConv1d
        from ..quant.bn import fold_batchnorm

        self.threads = threads

        def prep(c: nn.Conv1d, bn=None):
            w = c.weight.detach().double()
            b = c.bias.detach().double() if c.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
            if bn is not None:
                w, b = fold_batchnorm(w, b, bn)
            K = c.kernel_size[0]
            fast = (c.groups == c.in_channels == c.out_channels and c.stride[0] == 1 and c.dilation[0] == 1
                    and 2 * c.padding[0] == K - 1 and K > 1)
            w = w.float()
            return {"w": w.flip(-1).contiguous() if fast else w.contiguous(), "b": b.float(), "fast": fast,
                    "stride": c.stride[0], "padding": c.padding[0], "dilation": c.dilation[0], "groups": c.groups}

        self.blocks = []
        for block in model.encoder.encoder:
            layers = list(block.mconv)
            seq = []
            for i, layer in enumerate(layers):
                if isinstance(layer, MaskedConv1d):
                    bn = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm1d) else None
                    seq.append(("conv", prep(layer.conv, bn)))
                elif isinstance(layer, nn.ReLU):
                    seq.append(("relu", None))
                elif isinstance(layer, nn.Hardtanh):
                    raise NotImplementedError("hardtanh")
            if not any(isinstance(m, nn.ReLU) for m in block.mout):
                raise NotImplementedError("TorchFloatRunner supports ReLU models only")
            res = [prep(rc.conv, rbn) for rc, rbn in block.res] if block.res is not None else []
            self.blocks.append((seq, res, block.dense))
        self.decoder = prep(model.decoder.decoder_layers[0])

    @staticmethod
    def _conv(x, p):
        import torch.nn.functional as F

        if p["fast"]:
            return F.conv_transpose1d(x, p["w"], p["b"], padding=p["padding"], groups=p["groups"])
        return F.conv1d(x, p["w"], p["b"], stride=p["stride"], padding=p["padding"], dilation=p["dilation"],
                        groups=p["groups"])

    def run(self, mel):
        import torch

        with torch.inference_mode():
            xs = [torch.as_tensor(mel, dtype=torch.float32)]
            for seq, res, dense in self.blocks:
                out = xs[-1]
                for kind, p in seq:
                    out = self._conv(out, p) if kind == "conv" else torch.relu_(out)
                for x_in, p in zip(xs, res):
                    out = out + self._conv(x_in, p)
                out = torch.relu_(out)  # block.mout (ReLU) closes every block
                xs = xs + [out] if dense else [out]
            return self._conv(xs[-1], self.decoder).numpy()
