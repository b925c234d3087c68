"""Model size, bit operations (BOPs) and per-layer tables for ConvASR and Conformer-CTC (paper Table 1).

Everything is counted from the real module structure (every ``nn.Conv1d`` of the encoder,
its residual branches and the decoder, in forward order; for a Conformer every Conv2d, Linear,
Conv1d, LayerNorm and attention matmul, see "Conformer" below), so it works on a model built on
PyTorch's meta device, which allocates no weights (JasperDR-10x5 has 332.6 M parameters)::

    model = meta_model("jasperdr10x5")          # or ConvASR(cfg) with real weights
    model_size_mb(model, 8)                     # 1268.7 MiB * 8/32 = 317.2
    bops(model, 8, 8) / 1e12                    # 10.66 (paper: 10.7)
    layer_table(model)                          # one row per conv

Counting rule (what the functions compute)
------------------------------------------
Frames. A ``seconds`` long input at ``sample_rate`` has N = seconds * sample_rate samples.
The mel front end (NeMo, center=True STFT) gives T0 = floor((N + 2*(n_fft//2) - n_fft) / hop) + 1
frames: 10 s at 16 kHz -> 1001 (``legacy=True``: NeMo 1.0.0b4's ceil(N / hop) = 1000). With
``pad_to`` > 0 the tensor the network actually runs on is T0 rounded up to a multiple of pad_to
(NeMo's default 16: 1008); the default ``pad_to=0`` counts the valid frames only. Each conv then
sees the frame count its input has and produces floor((T + 2p - d(k-1) - 1) / s) + 1 frames:
the first conv (stride 2) turns 1001 into 501, every later layer runs on 501 frames; residual
1x1 branches see their block's input, the decoder the encoder's output.

MACs of one conv = out_frames * C_out * (C_in / groups) * k (depthwise: groups = C_in).
BOPs = sum over convs of MACs * weight_bits * act_bits (every conv, the decoder included, at the
same bit widths: Q-ASR quantizes the decoder with the encoder's bits). BatchNorm (folded into its
conv), ReLU, the residual additions and the mel front end are not counted: they are not MACs.

Size = (number of stored parameters) * weight_bits / 8 bytes, in MiB (2^20 bytes: the convention
of the authors' group, e.g. HAWQ-V3's 44.6 MB ResNet-18 = 11.69 M params * 4 B / 2^20). Stored
parameters are those of the deployed, BN-folded model: every conv weight, one bias per channel for
each conv that a BatchNorm follows (the folded BN), the decoder's weight and bias. All of them at
weight_bits: the paper's sizes scale exactly with the weight bits (73.81 / 4 = 18.45,
73.81 * 6/32 = 13.84; 1208 / 4 = 302.0, 1208 * 6/32 = 226.5), so it stored biases at weight
precision too. The mel filterbank and window are fixed buffers, not parameters: not counted.
``fold_bn=False`` counts the float model's parameters instead (BN gamma and beta per channel;
running statistics are buffers, not counted).

How close this gets to the paper's Table 1 (T = 501, MiB, BN folded; paper value, relative error)
--------------------------------------------------------------------------------------------
============  =====  ==================  =====================
model         W/A    size MB (paper)     BOPs T (paper)
============  =====  ==================  =====================
QuartzNet15x5 32/32  72.04 (73.81) -2.4%  9.669 (9.48)  +2.0%
QuartzNet15x5  8/8   18.01 (18.45) -2.4%  0.6043 (0.61) -0.9%
QuartzNet15x5  6/8   13.51 (13.84) -2.4%  0.4532 (0.46) -1.5%
JasperDR10x5  32/32  1268.7 (1208) +5.0%  170.6 (171)   -0.2%
JasperDR10x5   8/8   317.2 (302.0) +5.0%  10.66 (10.7)  -0.3%
JasperDR10x5   6/8   237.9 (226.5) +5.0%  7.997 (8.00)  -0.04%
============  =====  ==================  =====================

JasperDR BOPs match all three printed values to their printed precision (171, 10.7, 8.00). The
QuartzNet BOPs cannot all be matched by any rule that counts every layer at the same bits: the
paper's own ratio 9.48 / 0.61 = 15.5 is not 32*32 / (8*8) = 16 (0.61 and 0.46 need 9.48 to
9.69 G MACs, 9.48 T needs 9.258 G). Alternatives tried, none matching all six: 500 frames (legacy
featurizer): QN 32/32 +1.8%, every other number -0.25..-1.7% low; the padded tensor (pad_to=16, 504
frames): QN 8/8 and 6/8 and Jasper 8/8 match, QN 32/32 +2.6%, Jasper 32/32 and 6/8 +0.4/+0.6%;
leaving out the decoder, the first layer or the residual branches makes it no better.
The sizes are not reproducible from the architecture by any principled count: the paper's
numbers imply 19.35 M (QuartzNet, MiB) / 316.7 M (Jasper, MiB) parameters, or 18.45 M / 302.0 M
with MB = 10^6, while the models have 18.92 M / 332.6 M (NeMo publishes 18.9 M and 333 M). With
MB = 10^6 the errors are +2.4% / +10.1%; MiB is closer for both. No subset of the parameter
groups (depthwise, pointwise, residual, decoder, BN, front-end buffers) matches both models.

Conformer (ConformerCTC: NeMo's ConformerEncoder + CTC decoder)
----------------------------------------------------------------
Rows, in forward order: the subsampling convs (Conv2d k3 s2: MACs = t_out * f_out * C_out *
C_in/groups * 9, the mel axis shrinking 80 -> 40 -> 20 with time) and its ``out`` Linear; per
layer: LayerNorms (kind layernorm: parameters, no MACs), feed_forward1 linear1/2, linear_q/k/v,
linear_pos (kind linear_pos: it runs on the 2T-1 relative positions, not on T frames), pos_bias_u/v
(parameters added to q, no MACs), the attention matmuls (kind attention: Q K^T = T*T*d, the
position scores T*(2T-1)*d, attention x V = T*T*d; no parameters), linear_out, the conv module's
pointwise_conv1 / depthwise_conv (+ BatchNorm, folded into its bias) / pointwise_conv2, feed_forward2
and norm_out; then the decoder. A Linear applied to T frames costs T * in * out MACs. Softmax, GLU,
Swish, LayerNorm arithmetic, residual adds and the 0.5 macaron scales are not MACs: not counted.

``macs`` / ``bops`` count the weight layers only by default (attention=False): the attention matmuls
multiply two activations, not a weight and an activation, and leaving them out is what reproduces the
paper (results/op_counts.csv; the Conformer-Large comparison and the size unit in results/README.md,
section "Op counts against the paper").
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from torch import nn

__all__ = [
    "MIB", "meta_model", "input_frames", "layer_table", "param_count", "macs", "bops",
    "model_size_mb", "table1_comparison", "paper_table_rows", "PAPER_TABLE1", "write_op_counts",
]

MIB = 2 ** 20

# Paper Table 1, size (MB) and BOPs (T) as printed: {(model, w_bits, a_bits): (size_mb, bops_t)}.
PAPER_TABLE1 = {
    ("quartznet15x5", 32, 32): (73.81, 9.48),
    ("quartznet15x5", 8, 8): (18.45, 0.61),
    ("quartznet15x5", 6, 8): (13.84, 0.46),
    ("jasperdr10x5", 32, 32): (1208.0, 171.0),
    ("jasperdr10x5", 8, 8): (302.0, 10.7),
    ("jasperdr10x5", 6, 8): (226.5, 8.00),
    ("conformerctclarge", 32, 32): (494.8, 44.0),
    ("conformerctclarge", 8, 8): (123.7, 2.75),
}

_MODEL_NAMES = {"quartznet15x5": "QuartzNet15x5", "jasperdr10x5": "JasperDR10x5",
                "conformerctclarge": "Conformer-Large"}


def meta_model(name: str) -> nn.Module:
    """ConvASR or ConformerCTC for an architecture name (``config_for``), built on the meta device: the module
    structure and shapes without allocating any weights."""
    from .models.checkpoint import build_model
    from .models.configs import config_for

    with torch.device("meta"):
        return build_model(config_for(name))


def _as_model(model) -> nn.Module:
    return meta_model(model) if isinstance(model, str) else model


def input_frames(model, seconds: float = 10.0, sample_rate: int = 16000, pad_to: int = 0,
                 legacy: bool | None = None) -> int:
    """Mel frames the encoder gets for a `seconds` long input (see the module docstring).

    legacy None: as the model's featurizer is configured (current NeMo unless built legacy).
    """
    model = _as_model(model)
    fz = model.featurizer
    n = int(round(seconds * sample_rate))
    if fz.sample_rate != sample_rate:
        raise ValueError(f"model front end runs at {fz.sample_rate} Hz, not {sample_rate}")
    if hasattr(fz, "num_frames"):      # a front end that says it (hama's ConvStftFrontend)
        t = fz.num_frames(n)
        if pad_to and t % pad_to:
            t += pad_to - t % pad_to
        return t
    legacy = fz.legacy if legacy is None else legacy
    if legacy:
        t = -(-n // fz.hop_length)
    else:
        t = (n + 2 * fz.stft_pad - fz.n_fft) // fz.hop_length + 1
    if pad_to and t % pad_to:
        t += pad_to - t % pad_to
    return t


def _conv_out(conv: nn.Conv1d, t: int) -> int:
    span = conv.dilation[0] * (conv.kernel_size[0] - 1)
    return (t + 2 * conv.padding[0] - span - 1) // conv.stride[0] + 1


def _row(name, kind, block, conv: nn.Conv1d, t_in: int, bn_follows: bool) -> dict:
    t_out = _conv_out(conv, t_in)
    k = conv.kernel_size[0]
    weight = conv.out_channels * (conv.in_channels // conv.groups) * k
    bias = conv.out_channels if conv.bias is not None else 0
    return {
        "name": name, "kind": kind, "block": block,
        "in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel": k,
        "stride": conv.stride[0], "dilation": conv.dilation[0], "groups": conv.groups,
        "frames_in": t_in, "frames": t_out,
        "params": weight + bias,
        "bn_params": 2 * conv.out_channels if bn_follows else 0,
        "folded_params": weight + bias + (conv.out_channels if bn_follows and not bias else 0),
        "macs": t_out * weight,
    }


def _wrow(name, kind, block, cin, cout, kernel, t_in, t_out, macs, weight=0, bias=0, stride=1, groups=1,
          bn_follows=False) -> dict:
    """A layer_table row for any layer (Conformer: Linear, Conv2d, LayerNorm, attention matmul)."""
    return {
        "name": name, "kind": kind, "block": block, "in_channels": cin, "out_channels": cout, "kernel": kernel,
        "stride": stride, "dilation": 1, "groups": groups, "frames_in": t_in, "frames": t_out,
        "params": weight + bias,
        "bn_params": 2 * cout if bn_follows else 0,
        "folded_params": weight + bias + (cout if bn_follows and not bias else 0),
        "macs": macs,
    }


def _linear_row(name, kind, block, lin: nn.Linear, t: int) -> dict:
    bias = lin.out_features if lin.bias is not None else 0
    w = lin.in_features * lin.out_features
    return _wrow(name, kind, block, lin.in_features, lin.out_features, 1, t, t, t * w, w, bias)


class _Shape(NamedTuple):
    """What the layer table knows of a tensor of the Conformer walk: [B, channels, frames], or with
    `freq` the subsampling's image [B, channels, frames, freq]."""
    channels: int
    frames: int
    freq: int | None = None


class _LayerRows:
    """A reader of the Conformer walk (``convert_conformer.walk_subsampling`` / ``walk_layers``) on
    shapes: each weight layer, LayerNorm and attention matmul the walk meets becomes a layer_table
    row (see the module docstring), named after its module, in the walk's (forward) order."""

    def __init__(self, model):
        self.names = {id(m): n for n, m in model.named_modules()}
        self.rows: list[dict] = []
        self.counted: set[str] = set()

    @staticmethod
    def _block(name: str) -> int:
        m = re.match(r"encoder\.layers\.(\d+)\.", name)
        return int(m.group(1)) if m else -1

    def conv(self, name, x: _Shape, layer, lengths, bn=None, extra_bias=None):
        name = self.names[id(layer)]   # the module's: the walk names linear_q's two copies linear_q_u / _v
        if name in self.counted:
            # rel_pos: the walk runs linear_q twice (u and v folded into two copies), the model once
            return _Shape(layer.out_features, x.frames), x.frames
        self.counted.add(name)
        b = self._block(name)
        if isinstance(layer, nn.Linear):
            self.rows.append(_linear_row(name, "linear", b, layer, x.frames))
            return _Shape(layer.out_features, x.frames), x.frames
        k, st, pad = layer.kernel_size[0], layer.stride[0], layer.padding[0]
        kind = "depthwise" if layer.groups > 1 else ("pointwise" if k == 1 else "subsampling")
        if isinstance(layer, nn.Conv1d):
            self.rows.append(_row(name, kind, b, layer, x.frames, bn is not None))
            return _Shape(layer.out_channels, self.rows[-1]["frames"]), self.rows[-1]["frames"]
        t_out, f_out = (x.frames + 2 * pad - k) // st + 1, (x.freq + 2 * pad - k) // st + 1
        w = layer.out_channels * (layer.in_channels // layer.groups) * k * k
        self.rows.append(_wrow(name, kind, b, layer.in_channels, layer.out_channels, k * k, x.frames, t_out,
                               t_out * f_out * w, w, layer.out_channels if layer.bias is not None else 0, st,
                               layer.groups))
        return _Shape(layer.out_channels, t_out, f_out), t_out

    def layernorm(self, name, x: _Shape, ln) -> _Shape:
        d, t = x.channels, x.frames
        self.rows.append(_wrow(name, "layernorm", self._block(name), d, d, 0, t, t, 0, ln.weight.numel(),
                               ln.bias.numel()))
        return x

    def _matmuls(self, p, d, t, pairs):
        """Attention matmul rows (no parameters): (name, in, out, MACs), out frames t."""
        for n, cin, cout, macs in pairs:
            self.rows.append(_wrow(f"{p}.{n}", "attention", self._block(p), cin, cout, 0, t, t, macs))

    def attend(self, p, q: _Shape, k, v, heads, lengths) -> _Shape:
        d, t = q.channels, q.frames
        self._matmuls(p, d, t, [("matmul_qk", d, t, t * t * d), ("matmul_av", t, d, t * t * d)])
        return q

    def attend_rel(self, p, qu: _Shape, qv, k, v, attn, lengths) -> _Shape:
        d, t, b = qu.channels, qu.frames, self._block(p)
        n_pos = 2 * t - 1   # relative distances t-1 .. -(t-1)
        w = attn.linear_pos.weight.numel()
        self.rows.append(_wrow(f"{p}.linear_pos", "linear_pos", b, d, d, 1, n_pos, n_pos, n_pos * w, w))
        hd = attn.h * attn.d_k
        for n in ("pos_bias_u", "pos_bias_v"):   # added to q: parameters, no MACs
            self.rows.append(_wrow(f"{p}.{n}", "pos_bias", b, hd, hd, 0, t, t, 0, hd))
        self._matmuls(p, d, t, [("matmul_qk", d, t, t * t * d), ("matmul_qp", d, n_pos, t * n_pos * d),
                                ("matmul_av", t, d, t * t * d)])
        return qu

    def logits(self, x: _Shape, dec, lengths):
        self.rows.append(_row(self.names[id(dec)], "decoder", -1, dec, x.frames, False))
        return x, lengths

    # the walk's steps that neither hold parameters nor multiply
    def mask(self, x, lengths):
        return x

    def to_image(self, x: _Shape) -> _Shape:
        return _Shape(1, x.frames, x.channels)

    def flatten_freq(self, x: _Shape) -> _Shape:
        return _Shape(x.channels * x.freq, x.frames)

    def requantize(self, name, acc, factor=1.0):
        return acc

    def requantize_to(self, name, acc):
        return acc

    def activation(self, name, acc: _Shape, kind, factor=1.0) -> _Shape:
        return acc._replace(channels=acc.channels // 2) if kind == "glu" else acc

    def residual(self, name, x, branch, factor):
        return x


def layer_table(model, seconds: float = 10.0, sample_rate: int = 16000, pad_to: int = 0,
                legacy: bool | None = None) -> pd.DataFrame:
    """One row per convolution, in forward order, for a `seconds` long input.

    Columns: name (module name of the nn.Conv1d), kind (depthwise / pointwise / dense /
    residual / decoder), block (encoder block index, -1 for the decoder), in_channels,
    out_channels, kernel, stride, dilation, groups, frames_in, frames (output frames),
    params (weight + bias of the conv itself), bn_params (gamma + beta of the BatchNorm that
    follows it, 0 if none), folded_params (params after folding that BN: + one bias per
    channel), macs (frames * out * in/groups * kernel).
    `model`: a ConvASR (real or meta device) or an architecture name.
    """
    from .convert_conformer import walk_layers, walk_subsampling
    from .models.conformer import ConformerCTC
    from .models.convasr import walk

    model = _as_model(model)
    t = input_frames(model, seconds, sample_rate, pad_to, legacy)
    if isinstance(model, ConformerCTC):
        enc, g = model.encoder, _LayerRows(model)
        x = _Shape(enc.feat_in, t)
        if isinstance(enc.pre_encode, nn.Linear):   # no subsampling: the integer walk refuses it, the table counts it
            x, _ = g.conv("encoder.pre_encode", x, enc.pre_encode, t)
        else:
            x, t = walk_subsampling(enc, g, x, t)
        walk_layers(model, g, x, t)
        return pd.DataFrame(g.rows)
    rows = []
    sites = walk(model)
    for blk in sites.blocks:
        t_block = t
        for site in blk.main:
            rows.append(_row(f"{site.name}.conv", site.kind, blk.index, site.conv, t, site.bn is not None))
            t = rows[-1]["frames"]
        for site in blk.residual:
            row = _row(f"{site.name}.conv", "residual", blk.index, site.conv, t_block, site.bn is not None)
            if row["frames"] != t:
                raise ValueError(f"block {blk.index}: residual branch gives {row['frames']} frames, main path {t}")
            rows.append(row)
    rows.append(_row(sites.decoder.name, "decoder", -1, sites.decoder.conv, t, False))
    return pd.DataFrame(rows)


def param_count(model, fold_bn: bool = False) -> int:
    """Learned parameters of the convs (+ BN gamma/beta, or the folded per-channel biases with
    fold_bn=True). Equals ``sum(p.numel() for p in model.parameters())`` for fold_bn=False."""
    df = layer_table(model, seconds=1.0)
    return int(df["folded_params"].sum() if fold_bn else df["params"].sum() + df["bn_params"].sum())


def macs(model, seconds: float = 10.0, sample_rate: int = 16000, pad_to: int = 0,
         legacy: bool | None = None, attention: bool = False) -> int:
    """Multiply-accumulates of all weight layers (convs, and for Conformer the Linears) for the
    input. attention=True adds the Conformer's activation x activation matmuls (Q K^T, the
    relative-position scores, attention x V), which the paper's BOPs leave out."""
    df = layer_table(model, seconds, sample_rate, pad_to, legacy)
    weightless = df["kind"] == "attention"
    return int(df["macs"][~weightless].sum() + (df["macs"][weightless].sum() if attention else 0))


def bops(model, weight_bits: int, act_bits: int, seconds: float = 10.0, sample_rate: int = 16000,
         pad_to: int = 0, legacy: bool | None = None, attention: bool = False) -> float:
    """Bit operations (a plain count, not tera) = sum over weight layers of MACs * weight_bits *
    act_bits for a `seconds` long input; 32/32 is the float model. Divide by 1e12 for the paper's T.
    attention=True adds the Conformer's attention matmuls at act_bits * act_bits (both operands
    are activations)."""
    if weight_bits <= 0 or act_bits <= 0:
        raise ValueError(f"bit widths must be positive, got {weight_bits}/{act_bits}")
    total = float(macs(model, seconds, sample_rate, pad_to, legacy)) * weight_bits * act_bits
    if attention:
        att = macs(model, seconds, sample_rate, pad_to, legacy, attention=True) - macs(
            model, seconds, sample_rate, pad_to, legacy)
        total += float(att) * act_bits * act_bits
    return total


def model_size_mb(model, weight_bits: int, fold_bn: bool = True, mb: int = MIB,
                  depthwise_bits: int | None = None) -> float:
    """Stored size of the parameters at `weight_bits` each, in units of `mb` bytes (MiB by
    default; pass mb=10**6 for SI megabytes). See the module docstring for what is counted.
    depthwise_bits: depthwise conv weights stored at this width instead (mixed precision)."""
    if weight_bits <= 0 or (depthwise_bits is not None and depthwise_bits <= 0):
        raise ValueError(f"bit widths must be positive, got {weight_bits}, {depthwise_bits}")
    bits = param_count(model, fold_bn=fold_bn) * weight_bits
    if depthwise_bits is not None:
        model = meta_model(model) if isinstance(model, str) else model
        dw = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, torch.nn.Conv1d) and m.groups > 1 and m.groups == m.in_channels)
        bits += dw * (depthwise_bits - weight_bits)
    return bits / 8 / mb


def table1_comparison(settings=((32, 32), (8, 8), (6, 8)), conformer: bool = False, **kwargs) -> pd.DataFrame:
    """Our size and BOPs next to the paper's Table 1 for QuartzNet-15x5 and JasperDR-10x5 (and
    Conformer-Large with conformer=True, at the settings the paper prints for it: 32/32, 8/8),
    with relative errors (ours / paper - 1). kwargs go to bops (e.g. pad_to=16, legacy=True)."""
    rows = []
    names = ("quartznet15x5", "jasperdr10x5") + (("conformerctclarge",) if conformer else ())
    for name in names:
        model = meta_model(name)
        for w, a in settings:
            if name == "conformerctclarge" and (name, w, a) not in PAPER_TABLE1:
                continue
            paper_size, paper_bops = PAPER_TABLE1.get((name, w, a), (math.nan, math.nan))
            size, tbops = model_size_mb(model, w), bops(model, w, a, **kwargs) / 1e12
            rows.append({"model": _MODEL_NAMES[name], "w_bits": w, "a_bits": a,
                         "size_mb": size, "paper_size_mb": paper_size, "size_rel_err": size / paper_size - 1,
                         "bops_t": tbops, "paper_bops_t": paper_bops, "bops_rel_err": tbops / paper_bops - 1})
    return pd.DataFrame(rows)


OP_COUNT_SETTINGS = ((32, 32), (8, 8), (6, 8), (4, 8))


def write_op_counts(path: str | Path, seconds: float = 10.0, pad_to: int = 0) -> pd.DataFrame:
    """Write ``table1_comparison`` (QuartzNet-15x5, JasperDR-10x5 at OP_COUNT_SETTINGS, Conformer-
    Large at the paper's) to a CSV, each row with its provenance: the sha256 of the architecture
    config counted (no weights are involved), the counting settings, the code version and commit,
    and the machine (intasr.provenance). Returns the table."""
    import hashlib
    import json

    from .models.checkpoint import atomic_write_bytes
    from .models.configs import config_for
    from .provenance import provenance

    df = table1_comparison(settings=OP_COUNT_SETTINGS, conformer=True, seconds=seconds, pad_to=pad_to)
    config_sha = {shown: hashlib.sha256(json.dumps(config_for(name), sort_keys=True, default=str).encode()).hexdigest()
                  for name, shown in _MODEL_NAMES.items()}
    df.insert(1, "config_sha256", df["model"].map(config_sha))
    prov = provenance(settings={"seconds": seconds, "sample_rate": 16000, "pad_to": pad_to,
                                "size_unit": "MiB", "bops_unit": "1e12"})
    for k, v in prov.items():
        df[k] = v
    text = df.to_csv(index=False)
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
    return df


def main(argv=None) -> int:
    """``python -m intasr.experiments [--out results/op_counts.csv]``: the op-count results file."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m intasr.experiments",
                                 description="model size and BOPs (paper Table 1) -> CSV with provenance")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "results" / "op_counts.csv"))
    ap.add_argument("--seconds", type=float, default=10.0, help="input length the BOPs are counted for")
    ap.add_argument("--pad-to", type=int, default=0, help="count frames padded to a multiple of this (NeMo: 16)")
    args = ap.parse_args(argv)
    df = write_op_counts(args.out, args.seconds, args.pad_to)
    cols = ["model", "w_bits", "a_bits", "size_mb", "paper_size_mb", "bops_t", "paper_bops_t", "bops_rel_err"]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {args.out}")
    return 0


def paper_table_rows(path: str | Path | None = None) -> pd.DataFrame | None:
    """The paper's Table 1/2 numbers from data/paper_results.csv (columns table, model, method,
    w_bits, a_bits, split, wer, size_mb, bops_t, source); None if the file is absent."""
    if path is None:
        path = Path(__file__).resolve().parents[2] / "data" / "paper_results.csv"
    path = Path(path)
    if not path.is_file():
        return None
    return pd.read_csv(path)


if __name__ == "__main__":
    raise SystemExit(main())
