"""Looking inside a float ConvASR model (QuartzNet, JasperDR): per-block and per-BatchNorm tables,
and taps that record activations at named points.

A visitor of the model's one walk (`models.convasr.walk`); the book's chapters 01-03 call these
functions. Every table is a list of plain dicts (one per row), so a caller chooses its own frame
library.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .models.convasr import frame_mask, walk
from .models.restore_bn import conv_before_each_bn
from .quant import fold_batchnorm

# A channel whose running variance is below this is a dead filter: numerically constant output.
DEAD_VARIANCE = 1e-12


def blocks(model) -> list[nn.Module]:
    """The encoder's blocks in order: C1, B1..Bn, C2, C3 for QuartzNet."""
    return [blk.block for blk in walk(model).blocks]


def block_label(index: int, n_blocks: int) -> str:
    """The paper's name of encoder block `index` of `n_blocks`: C1 (the first), B1..B(n-3), then
    C2, C3 (the last two)."""
    inner = n_blocks - 3
    if index == 0:
        return "C1"
    if index <= inner:
        return f"B{index}"
    return f"C{index - inner + 1}"


def block_stage(index: int, n_blocks: int) -> str:
    """'prologue' (C1), 'stage k' (the inner blocks, five stages of equal length), 'epilogue'."""
    inner = n_blocks - 3
    if index == 0:
        return "prologue"
    if index <= inner:
        return f"stage {(index - 1) // max(inner // 5, 1) + 1}"
    return "epilogue"


def architecture_rows(model) -> list[dict]:
    """One row per encoder block (from the model's NeMo config `encoder.jasper` and its modules),
    then one for the decoder: kernel, stride, dilation, channels, repeat, separable, residual,
    the number of BatchNorms, all parameters, and the parameters of the convolution weights."""
    jasper = model.config["encoder"]["jasper"]
    encoder_blocks = blocks(model)
    rows = []
    for i, (cfg, block) in enumerate(zip(jasper, encoder_blocks)):
        rows.append({
            "block": block_label(i, len(jasper)),
            "stage": block_stage(i, len(jasper)),
            "kernel": cfg["kernel"][0],
            "stride": cfg["stride"][0],
            "dilation": cfg["dilation"][0],
            "channels": cfg["filters"],
            "repeat": cfg["repeat"],
            "separable": cfg["separable"],
            "residual": cfg["residual"],
            "BatchNorms": sum(isinstance(m, nn.BatchNorm1d) for m in block.modules()),
            "params": sum(p.numel() for p in block.parameters()),
            "conv params": sum(p.numel() for n, p in block.named_parameters() if n.endswith("conv.weight")),
        })
    dec = model.decoder.decoder_layers[0]
    rows.append({
        "block": "decoder", "stage": "decoder", "kernel": 1, "stride": 1, "dilation": 1,
        "channels": dec.out_channels, "repeat": 1, "separable": False, "residual": False,
        "BatchNorms": 0, "params": sum(p.numel() for p in dec.parameters()), "conv params": dec.weight.numel(),
    })
    return rows


def folded_conv_name(bn_name: str) -> str:
    """The state-dict prefix of the conv whose output BatchNorm `bn_name` normalizes (the module
    just before it in its list): encoder.encoder.1.mconv.2 -> encoder.encoder.1.mconv.1.conv."""
    parent, index = bn_name.rsplit(".", 1)
    return f"{parent}.{int(index) - 1}.conv"


def batchnorm_rows(model, folded: dict | None = None) -> list[dict]:
    """One row per BatchNorm: its kind (main path or residual 1x1), channels, mean running mean,
    median running variance, channels with variance exactly 0 and below DEAD_VARIANCE; with
    `folded` (the BN-folded export, a state dict of arrays), also the largest absolute difference
    between the refolded conv (weight and bias) and the exported one."""
    rows = []
    for name, conv, bn in conv_before_each_bn(model):
        row = {
            "layer": name,
            "kind": "residual 1x1" if ".res." in name else "main path",
            "channels": bn.num_features,
            "mean(running_mean)": float(bn.running_mean.mean()),
            "median(running_var)": float(bn.running_var.median()),
            "zero-variance channels": int((bn.running_var == 0).sum()),
            "dead channels (var < 1e-12)": int((bn.running_var < DEAD_VARIANCE).sum()),
        }
        if folded is not None:
            prefix = folded_conv_name(name)
            w_f, b_f = fold_batchnorm(conv.conv.weight.detach(), None, bn)
            w_export = torch.as_tensor(folded[prefix + ".weight"]).reshape(w_f.shape)
            row["max |refold - export|"] = max(float((w_f - w_export).abs().max()),
                                               float((b_f - torch.as_tensor(folded[prefix + ".bias"])).abs().max()))
        rows.append(row)
    return rows


def running_variances(model) -> tuple[np.ndarray, np.ndarray]:
    """Every BatchNorm channel's running variance, and its kind ('main path' or 'residual 1x1'),
    in the order of `conv_before_each_bn`."""
    pairs = conv_before_each_bn(model)
    rv = torch.cat([bn.running_var for _, _, bn in pairs]).numpy()
    kinds = np.concatenate([["residual 1x1" if ".res." in name else "main path"] * bn.num_features
                            for name, _, bn in pairs])
    return rv, kinds


def dead_channel_rows(model) -> list[dict]:
    """For every BatchNorm with dead channels (running variance < DEAD_VARIANCE): how many, the
    largest |w| of the conv rows that feed them, and the median over the live rows of their largest
    |w|."""
    rows = []
    for name, conv, bn in conv_before_each_bn(model):
        z = bn.running_var < DEAD_VARIANCE
        if z.any():
            w = conv.conv.weight.detach().flatten(1)
            rows.append({
                "layer": name,
                "dead": int(z.sum()),
                "max |w| of dead rows": float(w[z].abs().max()),
                "median max |w| of live rows": float(w[~z].abs().amax(1).median()),
            })
    return rows


def pointwise_bn(model, block: int = 1) -> tuple[nn.Module, nn.BatchNorm1d]:
    """The first pointwise conv of a separable block (a MaskedConv1d) and the BatchNorm after it."""
    site = next(s for s in walk(model).blocks[block].main if s.kind == "pointwise")
    return site.module, site.bn


def pointwise_taps(model, batch, block: int = 1) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Run `batch` (audio, lengths) through the model and return, each as (values, [B, T] mask of
    valid frames): `pw_in`, the input of `block`'s first pointwise conv; `bn_out`, the output of
    the BatchNorm after it (before the ReLU); `decoder_in`, the encoder output."""
    pw, bn = pointwise_bn(model, block)
    seen = {}

    def keep(key, value):  # a forward hook must return None: a returned value replaces the output
        seen[key] = value

    handles = [pw.register_forward_hook(lambda m, i, o: keep("pw_in", (i[0].detach(), i[1]))),
               bn.register_forward_hook(lambda m, i, o: keep("bn_out", o.detach()))]
    try:
        audio, lengths = batch
        mel, mel_len = model.features(audio, lengths)
        with torch.inference_mode():
            enc, enc_len = model.encoder(mel, mel_len)
    finally:
        for h in handles:
            h.remove()
    x, pw_len = seen["pw_in"]
    out = {"decoder_in": (enc, frame_mask(enc_len, enc.shape[-1])),
           "pw_in": (x, frame_mask(pw_len, x.shape[-1]))}
    out["bn_out"] = (seen["bn_out"], frame_mask(pw_len, seen["bn_out"].shape[-1]))
    return out


@contextmanager
def recording_block_outputs(model):
    """While open, the dict it yields maps each encoder block's index to (its last output, output
    lengths) from the latest forward pass."""
    outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [blk.register_forward_hook(lambda m, i, o, b=b: outputs.__setitem__(b, (o[0][-1].detach(), o[1])))
             for b, blk in enumerate(blocks(model))]
    try:
        yield outputs
    finally:
        for h in hooks:
            h.remove()
