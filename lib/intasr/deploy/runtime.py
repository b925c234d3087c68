"""onnxruntime runners for the exported graphs (CPU), the torch float runner, and the bit-exactness check.

* ``OrtIntegerRunner``: the integer-only graph of the program (``program/onnx_int.py``): int8 and
  lengths in, int64 logits out (padded frames masked as in ``forward_int``).
* ``OrtFloatRunner``: the FP32 graph of the float model (``onnx_float.build_float_model``).
* ``TorchFloatRunner``: the float model in torch, BN folded, fast depthwise form.
* ``ort_kernels_exact()``: onnxruntime's integer GEMM on this CPU is exact only with VNNI (or
  AVX-512 VNNI / AMX); on AVX2 without VNNI the U8S8 kernel's vpmaddubsw saturates pairs of
  products at int16. The probe convolves worst-case values (weights 0/255 as uint8, activations
  -128/127) and compares with exact integer arithmetic; ``OrtIntegerRunner`` checks it once per
  process and refuses to run (ValueError) an inexact kernel unless ``allow_inexact=True``.
  (``make_session`` and the probe live in ``program/onnx_int.py``; they are re-exported here.)

* ``OrtStaticInt8Runner``: onnxruntime's *own* int8 model of the same float graph, the peer a
  user would pick: ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, MinMax
  ranges) on the float graph, calibrated on real utterances (``static_int8_model``: cached per
  model file and calibration set). Float in, float logits out; onnxruntime fuses the Q/DQ pairs
  into QLinearConv / QLinearAdd (float requantization scales): not bit-exact to the program and
  not integer-only, but what onnxruntime offers for int8.

The fast torch integer runner is ``program/fast.py`` (``TorchIntegerRunner``); the C runtime is
``program/c_backend.py`` (``CRuntime``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..program.onnx_graph import as_numpy, full_lengths, make_session
from ..program.onnx_int import INEXACT, ort_kernels_exact

__all__ = ["make_session", "ort_kernels_exact", "OrtIntegerRunner", "OrtFloatRunner", "TorchFloatRunner",
           "OrtStaticInt8Runner", "static_int8_model", "compare_logits", "check_against_forward_int",
           "first_utterance_input", "integer_runners"]

_np = as_numpy


class OrtIntegerRunner:
    """Runs the integer-only ONNX graph: ``run(q, lengths=None) -> int64 logits`` (q int8 [B, F, T];
    lengths None: every frame valid); ``run_with_lengths`` also returns the output lengths.

    model: a Program, an IntegerModel (its program is lowered here), a ModelProto or a path."""

    name = "onnxruntime-int8"

    def __init__(self, model, threads: int | None = None, allow_inexact: bool = False, floor: str = "div"):
        from ..program.ops import Program

        if not allow_inexact and not ort_kernels_exact(threads or 1):
            raise ValueError(INEXACT)
        if isinstance(model, Program) or hasattr(model, "program"):
            from ..program.onnx_int import build_integer_model

            model = build_integer_model(model, floor=floor)
        self.session = make_session(model, threads)
        self.threads = threads

    def run_with_lengths(self, q, lengths=None):
        x = _np(q, np.int8)
        logits, out_len = self.session.run(None, {"q": x, "lengths": full_lengths(x, lengths)})
        return logits, out_len

    def run(self, q, lengths=None) -> np.ndarray:
        return self.run_with_lengths(q, lengths)[0]


class OrtFloatRunner:
    """Runs the FP32 graph of the float model: ``run(mel) -> float32 logits``.

    model: a ModelProto or a path (``onnx_float.build_float_model(float_model)``)."""

    name = "onnxruntime-fp32"

    def __init__(self, model, threads: int | None = None):
        if hasattr(model, "forward_features"):
            raise TypeError("OrtFloatRunner takes an ONNX graph: pass onnx_float.build_float_model(model)")
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
    theirs = OrtIntegerRunner(Path(onnx_path), threads).run(q, torch.tensor([q.shape[-1]]))
    res = compare_logits(ours.numpy(), theirs)
    res["utterance"] = name
    res["frames"] = int(q.shape[-1])
    return res


class TorchFloatRunner:
    """FP32 float model in torch with BatchNorm folded and the fast depthwise form: stride-1
    'same' depthwise convs as conv_transpose1d with the flipped kernel (models/fastconv.py
    explains why it is ~20x faster than conv1d on this CPU); everything else F.conv1d. The
    fastest float CPU path we have; ``run(mel) -> logits`` (no padding masks)."""

    name = "torch-fp32-fastdw"

    def __init__(self, model, threads: int | None = None):
        import torch
        from torch import nn

        from ..models.convasr import walk
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
        sites = walk(model)
        for blk in sites.blocks:
            seq = []
            for site in blk.main:
                seq.append(("conv", prep(site.conv, site.bn)))
                if isinstance(site.act, nn.Hardtanh):
                    raise NotImplementedError("hardtanh")
                if site.act is not None:
                    seq.append(("relu", None))
            if not any(isinstance(m, nn.ReLU) for m in blk.block.mout):
                raise NotImplementedError("TorchFloatRunner supports ReLU models only")
            self.blocks.append((seq, [prep(r.conv, r.bn) for r in blk.residual], blk.dense))
        self.decoder = prep(sites.decoder.conv)

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


# --------------------------------------------------------------------------- onnxruntime's own int8

def static_int8_model(model, model_path, calibration_data, limit: int | None = None, cache_dir=None,
                      progress: bool = False) -> Path:
    """onnxruntime ``quantize_static`` of the float graph of `model` (QDQ, per-channel), calibrated on
    the log-mels of `calibration_data` (folder or manifest; the first `limit` utterances); the
    file is cached under cache_dir (default build/ort_static) keyed by the model file, the data
    and the limit. Returns its path."""
    import hashlib
    import os
    import tempfile

    import torch

    from ..data import load_batch, load_dataset
    from ..paths import build_dir
    from .onnx_float import build_float_model

    h = hashlib.sha256()
    with open(model_path, "rb") as f:   # the model's bytes (a rewrite of the same file keeps its cache)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(repr((str(Path(calibration_data).resolve()), limit)).encode())
    key = h.hexdigest()[:16]
    out = Path(cache_dir or build_dir() / "ort_static") / f"static_int8_{key}.onnx"
    if out.is_file():
        return out
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    utts = load_dataset(calibration_data, require_text=False, limit=limit)
    if not utts:
        raise ValueError(f"{calibration_data}: no audio for onnxruntime's calibration")

    class Mels(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(utts):
                return None
            wav, lengths = load_batch(utts[self.i:self.i + 1])
            self.i += 1
            if progress and self.i % 25 == 0:
                print(f"onnxruntime calibration: {self.i}/{len(utts)} utterances", flush=True)
            with torch.inference_mode():
                mel, mel_len = model.features(wav, lengths)
            return {"mel": mel[:, :, : int(mel_len[0])].numpy().astype(np.float32)}

    # onnxruntime merges the collected ranges every `flush` inputs (memory); it fails ("No data is
    # collected") when the count is a multiple of it, so pick one that does not divide it
    flush = next(k for k in range(8, 10**6) if len(utts) % k)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        from ..program.onnx_graph import save_model

        save_model(build_float_model(model), fp32)
        q = Path(tmp) / "int8.onnx"
        quantize_static(str(fp32), str(q), Mels(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibMaxIntermediateOutputs": flush})
        os.replace(q, out)
    return out


class OrtStaticInt8Runner:
    """onnxruntime's static int8 model (``static_int8_model``): ``run(mel) -> float32 logits``."""

    name = "onnxruntime-static-int8"

    def __init__(self, path, threads: int | None = None):
        self.session = make_session(Path(path), threads)
        self.threads = threads

    def run(self, mel) -> np.ndarray:
        return self.session.run(None, {"mel": _np(mel, np.float32)})[0]


def integer_runners(qmodel, threads: int | None = None, graph=None) -> tuple[dict, dict[str, str]]:
    """The INT8 runners of a ConvASR integer model that are exact on this CPU, by name:
    ``onnxruntime-int8`` (graph: the lowered ModelProto, else lowered here) where
    ``ort_kernels_exact``, ``torch+native-int8`` and ``torch-int8+fp32exact-dw``
    (``program/fast.py``); and {name: why} for each runner left out."""
    from ..program.fast import TorchIntegerRunner
    from ..provenance import machine

    runners, skipped = {}, {}
    if ort_kernels_exact(threads or 1):
        runners["onnxruntime-int8"] = OrtIntegerRunner(qmodel if graph is None else graph, threads)
    else:  # no VNNI: the U8S8 kernels saturate pairs of products at int16
        m = machine()
        skipped["onnxruntime-int8"] = ("its integer kernels are not exact on this CPU "
                                       f"({m['cpu']}, VNNI: no, kernels: {m['kernel_family']})")
    runners["torch+native-int8"] = TorchIntegerRunner(qmodel, threads, depthwise="native")
    runners["torch-int8+fp32exact-dw"] = TorchIntegerRunner(qmodel, threads, depthwise="float-exact")
    return runners, skipped
