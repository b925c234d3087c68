"""The float model's FP32 ONNX graph, written with ``onnx.helper`` from the model structure.

``build_float_model(model)`` / ``export_onnx_float(model, path)``: the float ConvASR (BatchNorm
folded), FP32, for the onnxruntime FP32 baseline of the latency benchmark and the graph that
onnxruntime's own static int8 quantizer starts from. Input ``mel`` [B, F, T], output ``logits``;
no padding masks. A module of its own so that the runtimes can build it without importing the
``export`` command (which imports the runtimes for its ``--check``).
"""

from __future__ import annotations

import numpy as np


def build_float_model(model, frames: int | None = None):
    """FP32 ONNX graph of a float ConvASR (``forward_features``: mel -> logits), BN folded."""
    import torch
    from torch import nn

    from ..models.convasr import walk
    from ..program.onnx_graph import Graph  # in here: `intasr export --help` imports no torch
    from ..quant.bn import fold_batchnorm

    g = Graph()
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
    sites = walk(model)
    for blk in sites.blocks:
        out = xs[-1]
        for site in blk.main:
            out = conv(out, site.conv, site.bn)
            if site.act is not None:
                out = act(out, site.act)
        for x_in, rsite in zip(xs, blk.residual):
            out = g.op("Add", [out, conv(x_in, rsite.conv, rsite.bn)], "add")
        out = act(out, blk.block.mout)
        xs = xs + [out] if blk.dense else [out]
    dec = sites.decoder.conv
    y = conv(xs[-1], dec)
    g.nodes.append(h.make_node("Identity", [y], ["logits"], name="logits"))
    n_feat = model.encoder.feat_in
    inputs = [h.make_tensor_value_info("mel", TP.FLOAT, ["batch", n_feat, frames or "frames"])]
    outputs = [h.make_tensor_value_info("logits", TP.FLOAT, ["batch", dec.out_channels, "out_frames"])]
    return g.model(inputs, outputs, "intasr_float", "intasr float ConvASR (BatchNorm folded), no padding masks")


def export_onnx_float(model, path, frames: int | None = None) -> Path:
    """FP32 ONNX of a float ConvASR (BN folded, no padding masks)."""
    from ..program.onnx_graph import save_model

    return save_model(build_float_model(model, frames), path)


def export_torch_onnx(model, path, frames: int = 1000) -> Path:
    """FP32 ONNX of any float model by ``torch.onnx.export`` (the TorchScript exporter) of
    ``forward_features``: inputs ``mel`` [1, F, T] and ``lengths`` [1], output ``logits``; what a user
    who exports our float Conformer would run on onnxruntime (and quantize with ``quantize_dynamic``)."""
    import io
    import warnings

    import torch

    from ..program.onnx_graph import save_model

    class Features(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, mel, lengths):
            return self.m.forward_features(mel, lengths)[0]

    import copy

    model = copy.deepcopy(model)   # tracing may leave caches behind in the module (positions of its length)
    n_feat = int(getattr(model.encoder, "feat_in", 0) or model.preprocessor.featurizer.n_mels)
    mel = torch.zeros(1, n_feat, frames)
    lengths = torch.tensor([frames])
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Features(model.eval()), (mel, lengths), buf, input_names=["mel", "lengths"],
                          output_names=["logits"], dynamic_axes={"mel": {2: "frames"}, "logits": {2: "out_frames"}},
                          opset_version=17, dynamo=False)
    import onnx

    return save_model(onnx.load_from_string(buf.getvalue()), path)
