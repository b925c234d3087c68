"""Float Conformer-CTC -> integer program (the I-BERT recipe of the paper's Section 2.2).

One walk of the Conformer (``walk``: ``walk_subsampling`` then ``walk_layers``) is written once
against a small set of primitives and run by ``FloatTaps`` (the float model, in the program's
[B, C, T] layout, recording the range of every quantization point on valid frames: calibration),
by ``IntEmitter`` (the same steps as integer ops: conversion) and, on shapes, by
``experiments.layer_table`` (sizes and MACs; it counts a Linear pre_encode itself and reads only
``walk_layers`` then, which is why the walk comes in two parts). A test checks that the float walk
reproduces ``ConformerCTC`` exactly, so the points calibrated are the points the program quantizes.

What the program computes, per Conformer layer (x: the residual stream, `residual_bits` signed):
    LayerNorm            integer mean / variance / Newton square root  -> int8
    Linear               conv1d k=1 (int8 x int8 -> int32), per-output-channel weights
    Swish, GLU, GELU     i-exp sigmoid / i-GELU products (int32/int64) -> requantize -> int8
    attention            q.k^T per head (int32) -> integer softmax with the padding mask (uint8,
                         scale 2^-8; 1/sqrt(d_k) folded into its input scale) -> probs.v (int32)
    depthwise conv       BatchNorm folded, padded frames zeroed first
    residual             x + f * branch: both rescaled (the macaron f = 1/2 folded into the dyadic
                         multiplier) onto the new stream's scale, added in int64, clamped
Scales: activations per tensor, symmetric, from min/max observers on the calibration batches
(float model); weights per output channel. The logits share one scale (the decoder as in ConvASR).
NeMo's architecture (conformer_ctc_small / large):
    Conv2d subsampling   the mel as an image [B, 1, T, F] (``to_image``); each Conv2d is ``conv2d``
                         (int8 x int8 -> int32, per-output-channel weights) with padded frames zeroed
                         before it, ReLU = the unsigned requantize; ``flatten_freq`` gives NeMo's
                         (channel, freq) order for the ``out`` Linear; xscaling (sqrt(d_model)) is
                         folded into the requantization after ``out``.
    rel_pos attention    (q + u) k^T: ``matmul_qk`` on a copy of linear_q with u folded into its bias;
                         (q + v) p^T with rel_shift: ``matmul_pos`` on a second copy (v folded in)
                         against p = linear_pos(sinusoids of positions L-1 .. -(L-1)), precomputed
                         for L = pos_emb_max_len (a converter argument, NeMo's 5000) and quantized per
                         tensor (int8) into a param the op slices (2T-1 columns). Both score terms
                         are rescaled onto one scale and added (int64) before the integer softmax.
Not integer: a Linear pre_encode (no subsampling) and abs_pos with sinusoids (NotImplementedError).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .intops.conv import accumulator_bound, choose_acc_dtype
from .intops.gelu import prepare_gelu
from .intops.nonlinear import prepare_layernorm, prepare_softmax, prepare_swish
from .models.conformer import MultiHeadAttention, RelPositionMultiHeadAttention, rel_shift, sinusoid_table
from .models.convasr import frame_mask
from .program import nonlinear_params as nlp
from .program.ops import Value, dtype_name
from .quant.observers import make_observer
from .quant.quantizer import qrange, quantize, scale_from_range, storage_dtype

SIG_BITS = 14  # fraction bits of the sigmoid inside Swish / GLU


# --------------------------------------------------------------------------- the one walk

def walk(model, g, x, lengths):
    """The Conformer's inference graph in primitives of `g` (FloatTaps or IntEmitter)."""
    enc = model.encoder
    if isinstance(enc.pre_encode, nn.Linear):
        raise NotImplementedError("integer Conformer: a Linear pre_encode (no subsampling) is not supported")
    x, lengths = walk_subsampling(enc, g, x, lengths)
    if enc.self_attention_model == "abs_pos" and enc.pos_enc.add_sinusoids:
        raise NotImplementedError("integer Conformer: abs_pos with sinusoids is not integer yet")
    return walk_layers(model, g, x, lengths)


def walk_subsampling(enc, g, x, lengths):
    """The ConvSubsampling pre_encode: mel [B, F, T] -> ([B, d, T'], lengths')."""
    sub = enc.pre_encode
    layers = list(sub.conv)
    if sub.is_2d:
        x = g.to_image(x)   # [B, 1, T, F]: time is axis 2 until flatten_freq
    pending = None  # a conv accumulator waiting for its activation
    for i, layer in enumerate(layers):
        name = f"encoder.pre_encode.conv.{i}"
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            if pending is not None:
                x = g.requantize(pending[0], pending[1])
            x = g.mask(x, lengths)
            acc, lengths = g.conv(name, x, layer, lengths)
            pending = (name, acc)
        else:
            kind = {nn.ReLU: "relu", nn.GELU: "gelu", nn.SiLU: "swish"}[type(layer)]
            scale = enc.xscale if (enc.xscale and i == len(layers) - 1 and not sub.is_2d) else 1.0
            x = g.activation(name, pending[1], kind, factor=scale)
            pending = None
    if sub.is_2d:
        if pending is not None:
            x = g.requantize(pending[0], pending[1])
        x = g.flatten_freq(g.mask(x, lengths))   # [B, C F', T], NeMo's (channel, freq) order
        acc, _ = g.conv("encoder.pre_encode.out", x, sub.out, lengths)
        x = g.requantize("encoder.pre_encode.out", acc, factor=enc.xscale or 1.0)
    elif pending is not None:
        x = g.requantize(pending[0], pending[1], factor=enc.xscale or 1.0)
    return x, lengths


def walk_layers(model, g, x, lengths):
    """From the pre_encoded [B, d, T'] stream on: the Conformer layers, out_proj and the logits."""
    enc = model.encoder
    for li, layer in enumerate(enc.layers):
        p = f"encoder.layers.{li}"
        h = g.layernorm(f"{p}.norm_feed_forward1", x, layer.norm_feed_forward1)
        x = g.residual(f"{p}.ff1", x, feed_forward(g, f"{p}.feed_forward1", h, layer.feed_forward1, lengths),
                       layer.fc_factor)
        h = g.layernorm(f"{p}.norm_self_att", x, layer.norm_self_att)
        x = g.residual(f"{p}.att", x, attention(g, f"{p}.self_attn", h, layer.self_attn, lengths), 1.0)
        h = g.layernorm(f"{p}.norm_conv", x, layer.norm_conv)
        x = g.residual(f"{p}.conv", x, conv_module(g, f"{p}.conv", h, layer.conv, lengths), 1.0)
        h = g.layernorm(f"{p}.norm_feed_forward2", x, layer.norm_feed_forward2)
        x = g.residual(f"{p}.ff2", x, feed_forward(g, f"{p}.feed_forward2", h, layer.feed_forward2, lengths),
                       layer.fc_factor)
        x = g.layernorm(f"{p}.norm_out", x, layer.norm_out)
    if enc.out_proj is not None:
        acc, _ = g.conv("encoder.out_proj", x, enc.out_proj, lengths)
        x = g.requantize("encoder.out_proj", acc)
    return g.logits(x, model.decoder.decoder_layers[0], lengths)


def feed_forward(g, p, x, ff, lengths):
    acc, _ = g.conv(f"{p}.linear1", x, ff.linear1, lengths)
    h = g.activation(f"{p}.activation", acc, "swish")
    return g.conv(f"{p}.linear2", h, ff.linear2, lengths)[0]


def attention(g, p, x, attn: MultiHeadAttention, lengths):
    if isinstance(attn, RelPositionMultiHeadAttention):
        # q + u and q + v: two copies of linear_q, the biases u / v folded into theirs
        u, v_bias = attn.pos_bias_u.detach().reshape(-1), attn.pos_bias_v.detach().reshape(-1)
        qu = g.requantize(f"{p}.linear_q_u", g.conv(f"{p}.linear_q_u", x, attn.linear_q, lengths, extra_bias=u)[0])
        qv = g.requantize(f"{p}.linear_q_v", g.conv(f"{p}.linear_q_v", x, attn.linear_q, lengths,
                                                    extra_bias=v_bias)[0])
        k = g.requantize(f"{p}.linear_k", g.conv(f"{p}.linear_k", x, attn.linear_k, lengths)[0])
        v = g.requantize(f"{p}.linear_v", g.conv(f"{p}.linear_v", x, attn.linear_v, lengths)[0])
        ctx = g.attend_rel(p, qu, qv, k, v, attn, lengths)
        return g.conv(f"{p}.linear_out", ctx, attn.linear_out, lengths)[0]
    q = g.requantize(f"{p}.linear_q", g.conv(f"{p}.linear_q", x, attn.linear_q, lengths)[0])
    k = g.requantize(f"{p}.linear_k", g.conv(f"{p}.linear_k", x, attn.linear_k, lengths)[0])
    v = g.requantize(f"{p}.linear_v", g.conv(f"{p}.linear_v", x, attn.linear_v, lengths)[0])
    ctx = g.attend(p, q, k, v, attn.h, lengths)
    return g.conv(f"{p}.linear_out", ctx, attn.linear_out, lengths)[0]


def conv_module(g, p, x, conv, lengths):
    acc, _ = g.conv(f"{p}.pointwise_conv1", x, conv.pointwise_conv1, lengths)
    h = g.activation(f"{p}.glu", g.requantize_to(f"{p}.pointwise_conv1", acc), "glu")
    h = g.mask(h, lengths)
    acc, _ = g.conv(f"{p}.depthwise_conv", h, conv.depthwise_conv, lengths, bn=conv.batch_norm)
    h = g.activation(f"{p}.activation", acc, "swish")
    return g.conv(f"{p}.pointwise_conv2", h, conv.pointwise_conv2, lengths)[0]


def folded_weight_bias(layer: nn.Module, bn: nn.BatchNorm1d | None = None, extra_bias=None):
    """(weight [out, in/groups, k] (Conv2d: [out, in/groups, kT, kF]) float64, bias float64 or None)
    of a Linear / Conv1d / Conv2d, BN folded, `extra_bias` (rel_pos's u or v) added to the bias."""
    w = layer.weight.detach().double()
    if w.dim() == 2:
        w = w[:, :, None]
    b = layer.bias.detach().double() if layer.bias is not None else None
    if extra_bias is not None:
        e = torch.as_tensor(extra_bias).detach().double().reshape(-1)
        b = e if b is None else b + e
    if bn is not None:
        from .quant.bn import fold_batchnorm

        w, b = fold_batchnorm(w, b, bn)
        w, b = w.double(), b.double()
    return w, b


def conv_geometry(layer) -> dict:
    if isinstance(layer, nn.Conv1d):
        return {"stride": layer.stride[0], "padding": layer.padding[0], "dilation": layer.dilation[0],
                "groups": layer.groups}
    return {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def conv_out_lengths(lengths, layer):
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)) and layer.stride[0] != 1:
        k, s, p, d = layer.kernel_size[0], layer.stride[0], layer.padding[0], layer.dilation[0]
        return (lengths + 2 * p - d * (k - 1) - 1) // s + 1
    return lengths


# --------------------------------------------------------------------------- float taps

class FloatTaps:
    """The walk in float ([B, C, T] tensors): records every quantization point's range."""

    def __init__(self, observer: str = "minmax", **observer_kw):
        self.observers: dict = {}
        self._make = lambda: make_observer(observer, **observer_kw)
        self.lengths = None

    def observe(self, name, y, lengths):
        """Record y's range at quantization point `name`; returns y (a simulation returns y
        fake-quantized: ``simulate.SimulatedTaps``)."""
        obs = self.observers.setdefault(name, self._make())
        obs.update(y, self._frames(lengths, y))
        return y

    @staticmethod
    def _frames(lengths, y):
        """Valid-frame mask shaped for y: [B, 1, T] ([B, C, T]) or [B, 1, T, 1] (images, time axis 2)."""
        if y.dim() == 4:
            return frame_mask(lengths, y.shape[2])[:, None, :, None]
        return frame_mask(lengths, y.shape[-1])[:, None, :]

    def weight(self, layer, w):
        """The weights a layer computes with (float: as they are)."""
        return w

    def probs(self, p):
        """The attention probabilities (float: as they are)."""
        return p

    def mask(self, x, lengths):
        return x * self._frames(lengths, x).to(x.dtype)

    def to_image(self, x):
        return x.transpose(1, 2).unsqueeze(1)         # as ConvSubsampling: [B, F, T] -> [B, 1, T, F]

    def flatten_freq(self, x):
        b, c, t, f = x.shape
        # [B, C F, T] as a view of the very [B, T, C F] tensor ConvSubsampling feeds its `out` Linear
        return x.transpose(1, 2).reshape(b, t, c * f).transpose(1, 2)

    def conv(self, name, x, layer, lengths, bn=None, extra_bias=None):
        if isinstance(layer, nn.Linear):
            y = F.linear(x.transpose(1, 2), self.weight(layer, layer.weight), layer.bias)
            if extra_bias is not None:   # rel_pos: linear_q(x) + u, as the model adds it
                y = y + extra_bias.to(y.dtype)
            y = y.transpose(1, 2)
        else:
            y = layer._conv_forward(x, self.weight(layer, layer.weight), layer.bias)
        if bn is not None:
            y = bn(y)
        out_len = conv_out_lengths(lengths, layer)
        self.lengths = out_len
        return y, out_len

    def requantize(self, name, acc, factor=1.0):
        return self.observe(name, acc * factor, self.lengths)

    requantize_to = requantize

    def activation(self, name, acc, kind, factor=1.0):
        if kind not in ("glu", "relu"):
            acc = self.observe(name + ":in", acc, self.lengths)
        fn = {"relu": torch.relu, "gelu": F.gelu, "swish": F.silu, "glu": lambda t: F.glu(t, dim=1)}[kind]
        return self.observe(name, fn(acc) * factor, self.lengths)

    def layernorm(self, name, x, ln):
        y = F.layer_norm(x.transpose(1, 2), ln.normalized_shape, ln.weight, ln.bias, ln.eps).transpose(1, 2)
        return self.observe(name, y, self.lengths)

    def residual(self, name, x, branch, factor):
        return self.observe(name, x + factor * branch, self.lengths)

    def attend(self, p, q, k, v, heads, lengths):
        b, d, t = q.shape
        dk = d // heads
        qh = q.reshape(b, heads, dk, t).transpose(-1, -2)                 # [B, H, T, d_k]
        scores = torch.matmul(qh, k.reshape(b, heads, dk, t)) / math.sqrt(dk)
        valid = frame_mask(lengths, t)
        mask = ~(valid[:, :, None] & valid[:, None, :])[:, None]
        probs = self.probs(torch.softmax(scores.masked_fill(mask, -10000.0), dim=-1).masked_fill(mask, 0.0))
        ctx = torch.matmul(probs, v.reshape(b, heads, dk, t).transpose(-1, -2))   # [B, H, T, d_k]
        return self.observe(p + ".context", ctx.transpose(-1, -2).reshape(b, d, t), lengths)

    def pos_table(self, p, pe):
        """linear_pos of the sinusoids, [1, 2T-1, d] (float: as it is)."""
        return pe

    def attend_rel(self, p, qu, qv, k, v, attn, lengths):
        """NeMo's rel_pos attention from q + u, q + v, k, v ([B, d, T]), as the model computes it."""
        b, d, t = qu.shape
        heads, dk = attn.h, attn.d_k
        pos_emb = sinusoid_table(torch.arange(t - 1, -t, -1), d).to(qu.dtype)[None]   # RelPositionalEncoding
        pe = self.pos_table(p, F.linear(pos_emb, self.weight(attn.linear_pos, attn.linear_pos.weight)))
        pe = attn.heads(pe)                                                             # [1, H, 2T-1, d_k]
        quh, qvh, kh, vh = (z.transpose(1, 2).reshape(b, t, heads, dk).transpose(1, 2) for z in (qu, qv, k, v))
        content = torch.matmul(quh, kh.transpose(-2, -1))
        position = rel_shift(torch.matmul(qvh, pe.transpose(-2, -1)))
        scores = (content + position) / math.sqrt(dk)
        valid = frame_mask(lengths, t)
        mask = ~(valid[:, :, None] & valid[:, None, :])[:, None]
        probs = self.probs(torch.softmax(scores.masked_fill(mask, -10000.0), dim=-1).masked_fill(mask, 0.0))
        ctx = torch.matmul(probs, vh)                                                   # [B, H, T, d_k]
        return self.observe(p + ".context", ctx.transpose(1, 2).reshape(b, t, d).transpose(1, 2), lengths)

    def logits(self, x, dec, lengths):
        self.observe("decoder:in", x, lengths)
        return dec._conv_forward(x, self.weight(dec, dec.weight), dec.bias), lengths


@torch.no_grad()
def float_forward(model, mel, lengths, taps: FloatTaps | None = None):
    """The walk in float: equals ``model.forward_features`` (tested); fills `taps`' observers."""
    taps = taps or FloatTaps()
    taps.lengths = lengths
    mel = taps.observe("input", mel, lengths)
    return walk(model, taps, mel, lengths)


@torch.no_grad()
def calibrate_conformer(model, batches, observer: str = "minmax", **observer_kw) -> dict:
    taps = FloatTaps(observer, **observer_kw)
    n = 0
    for mel, lengths in batches:
        float_forward(model, mel, lengths, taps)
        n += 1
    if n == 0:
        raise ValueError("calibration needs at least one batch")
    fe = getattr(getattr(model, "preprocessor", None), "featurizer", None)
    if fe is not None and hasattr(fe, "log_floor"):
        # the input range includes the front end's floor log(floor) (digital silence), whatever the
        # calibration data: a property of the front end, known without data
        taps.observers["input"].update(torch.full((1, 1, 1), math.log(fe.log_floor), dtype=torch.float64))
    return taps.observers


# --------------------------------------------------------------------------- integer emission

class _Act:
    """An integer activation in the program: value name, real scale, bits, signedness."""

    def __init__(self, name, scale, bits, signed=True):
        self.name, self.scale, self.bits, self.signed = name, float(scale), int(bits), bool(signed)

    @property
    def absmax(self) -> int:
        lo, hi = qrange(self.bits, self.signed)
        return max(abs(lo), abs(hi))


class _Acc:
    """An accumulator: value name, real scale per channel (or one), proven bound on |value|."""

    def __init__(self, name, scale, bound):
        self.name, self.scale, self.bound = name, np.asarray(scale, dtype=np.float64).reshape(-1), int(bound)


class IntEmitter:
    """The walk as integer ops (``program.builder.ProgramBuilder``), with the ranges FloatTaps recorded."""

    def __init__(self, observers, weight_bits=8, act_bits=8, residual_bits=None, weight_method="minmax",
                 layer_bits: dict | None = None, weight_group: int = 0, codes: dict | None = None,
                 bias_shifts: dict | None = None):
        from .program.builder import ProgramBuilder

        self.obs, self.wb, self.ab = observers, weight_bits, act_bits
        self.layer_bits, self.group = layer_bits or {}, weight_group
        self.codes, self.shifts = codes or {}, bias_shifts or {}
        self.rb = residual_bits or act_bits
        self.method = weight_method
        s_in = self.scale("input", act_bits)
        self.g = ProgramBuilder(act_bits, s_in)
        self.input = _Act("input", s_in, act_bits)

    def scale(self, point, bits, signed=True) -> float:
        if point not in self.obs:
            raise KeyError(f"no calibration range for {point!r} (calibrate this model first)")
        return float(scale_from_range(self.obs[point].alpha(), bits, signed=signed))

    def mask(self, x: _Act, lengths) -> _Act:
        return _Act(self.g.masked(x.name, lengths), x.scale, x.bits, x.signed)

    def to_image(self, x: _Act) -> _Act:
        out = self.g.add("to_image", [x.name], f"{x.name}.image", Value(self.g.values[x.name].dtype, "act", x.bits,
                                                                         x.signed, x.scale), "pre_encode.to_image")
        return _Act(out, x.scale, x.bits, x.signed)

    def flatten_freq(self, x: _Act) -> _Act:
        out = self.g.add("flatten_freq", [x.name], f"{x.name}.flat", Value(self.g.values[x.name].dtype, "act", x.bits,
                                                                            x.signed, x.scale), "pre_encode.flatten_freq")
        return _Act(out, x.scale, x.bits, x.signed)

    def conv(self, name, x: _Act, layer, lengths, bn=None, extra_bias=None):
        from .quant.weights import learned_weight, quantize_bias, round_on_grid, weight_grid

        w, b = folded_weight_bias(layer, bn, extra_bias)
        bits = self.layer_bits.get(layer, self.wb)
        s_w, mult = weight_grid(w, bits, self.method, self.group)   # mult: per-group multipliers or None
        w_q = (learned_weight(self.codes[layer], mult, bits, w.shape) if layer in self.codes
               else round_on_grid(w, s_w, mult, bits))
        if layer in self.shifts:   # the bias correction learned with the codes (conformer_weights)
            shift = self.shifts[layer].double().reshape(-1)
            b = shift if b is None else b + shift
        acc_scale = x.scale * s_w
        params = {"weight": w_q}
        bias_q = quantize_bias(b, acc_scale)
        if bias_q is not None:
            params["bias"] = bias_q
        bound = accumulator_bound(w_q, x.bits, x.signed, bias_q)
        acc_dtype = choose_acc_dtype(bound)
        meta = {"bound": bound, "in_scale": x.scale, "w_scale": [float(v) for v in s_w]}
        if isinstance(layer, nn.Conv2d):
            if layer.dilation != (1, 1) or not isinstance(layer.padding, tuple):
                raise NotImplementedError(f"integer Conformer: Conv2d {name} with dilation / string padding")
            out = self.g.add("conv2d", [x.name], f"{name}.acc", Value(dtype_name(acc_dtype), "acc"), name,
                             {"stride": list(layer.stride), "padding": list(layer.padding), "groups": layer.groups,
                              "acc_dtype": dtype_name(acc_dtype)}, params, meta)
            out_len = self.g.frames(name, lengths, layer.kernel_size[0], layer.stride[0], layer.padding[0])
            return _Acc(out, acc_scale.numpy(), bound), out_len
        geo = conv_geometry(layer)
        out = self.g.add("conv1d", [x.name], f"{name}.acc", Value(dtype_name(acc_dtype), "acc"), name,
                         {**geo, "acc_dtype": dtype_name(acc_dtype)}, params, meta)
        k = int(w_q.shape[-1])
        out_len = self.g.frames(name, lengths, k, geo["stride"], geo["padding"], geo["dilation"])
        return _Acc(out, acc_scale.numpy(), bound), out_len

    def _requant(self, name, acc: _Acc, s_out, bits, signed, factor=1.0, output=None) -> _Act:
        from .quant.weights import dyadic_multiplier

        M, shift = dyadic_multiplier(factor * acc.scale / s_out, acc.bound)
        out = self.g.add("requantize", [acc.name], output or f"{name}.out",
                         Value(dtype_name(storage_dtype(bits, signed)), "act", bits, signed, s_out),
                         f"{name}.requantize", {"bits": bits, "signed": signed}, {"M": M, "shift": shift},
                         {"out_scale": s_out})
        return _Act(out, s_out, bits, signed)

    def requantize(self, name, acc: _Acc, factor=1.0) -> _Act:
        return self._requant(name, acc, self.scale(name, self.ab), self.ab, True, factor)

    def requantize_to(self, name, acc: _Acc) -> _Act:
        return self.requantize(name, acc)

    def activation(self, name, acc, kind, factor=1.0) -> _Act:
        if kind == "relu":   # the clamp at 0 is the ReLU: one requantize to unsigned
            s = self.scale(name, self.ab, signed=False)
            return self._requant(name, acc, s, self.ab, False, factor)
        x = acc if isinstance(acc, _Act) else self._requant(name + ":in", acc, self.scale(name + ":in", self.ab),
                                                            self.ab, True)
        if kind == "gelu":
            p = prepare_gelu(x.scale)
            attrs, out_scale, bound = {"q_b": p.q_b, "q_one": p.q_one}, p.out_scale, x.absmax * 2 * p.q_one
            dtype = "int64"
        else:
            p = prepare_swish(x.scale, SIG_BITS)
            attrs = {"exp": nlp.exp_attrs(p.exp), "sig_bits": SIG_BITS}
            out_scale, bound = p.out_scale, x.absmax << SIG_BITS
            dtype = "int32" if x.bits <= 16 and SIG_BITS <= 15 else "int64"
        y = self.g.add(kind, [x.name], f"{name}.{kind}", Value(dtype, "acc", scale=out_scale), f"{name}.{kind}",
                       attrs, {}, {"in_scale": x.scale, "out_scale": out_scale, "bound": bound})
        return self._requant(name, _Acc(y, out_scale, bound), self.scale(name, self.ab), self.ab, True, factor)

    def layernorm(self, name, x: _Act, ln) -> _Act:
        s_out = self.scale(name, self.ab)
        p = prepare_layernorm(x.scale, ln.weight.detach().double().numpy(), ln.bias.detach().double().numpy(),
                              s_out, eps=ln.eps, out_bits=self.ab)
        out = self.g.add("layernorm", [x.name], f"{name}.out",
                         Value(dtype_name(storage_dtype(self.ab, True)), "act", self.ab, True, s_out), name,
                         nlp.layernorm_attrs(p),
                         {"gamma_q": torch.tensor(p.gamma_q, dtype=torch.int64),
                          "beta_q": torch.tensor(p.beta_q, dtype=torch.int64)},
                         {"in_scale": x.scale, "out_scale": s_out, "gamma_scale": p.gamma_scale})
        return _Act(out, s_out, self.ab)

    def residual(self, name, x: _Act, branch: _Acc, factor) -> _Act:
        s_out = self.scale(name, self.rb)
        xs = _Acc(x.name, x.scale, x.absmax)
        a = self._rescale(name + ".skip", xs, s_out, 1.0)
        b = self._rescale(name + ".branch", branch, s_out, factor)
        total = self.g.add("add", [a, b], f"{name}.sum", Value("int64", "acc", scale=s_out), f"{name}.add")
        out = self.g.add("clamp", [total], f"{name}.out",
                         Value(dtype_name(storage_dtype(self.rb, True)), "act", self.rb, True, s_out),
                         f"{name}.clamp", {"bits": self.rb, "signed": True})
        return _Act(out, s_out, self.rb)

    def _rescale(self, name, acc: _Acc, s_out, factor, output=None) -> str:
        from .quant.weights import dyadic_multiplier

        M, shift = dyadic_multiplier(factor * acc.scale / s_out, acc.bound)
        return self.g.add("rescale", [acc.name], output or f"{name}.scaled", Value("int64", "acc", scale=s_out),
                          f"{name}.rescale", {}, {"M": M, "shift": shift}, {"out_scale": s_out})

    def attend(self, p, q: _Act, k: _Act, v: _Act, heads, lengths) -> _Act:
        s_qk = q.scale * k.scale
        scores = self.g.add("matmul_qk", [q.name, k.name], f"{p}.scores", Value("int32", "acc", scale=s_qk),
                            f"{p}.matmul_qk", {"heads": heads, "acc_dtype": "int32"}, {}, {"scale": s_qk})
        return self._softmax_pv(p, scores, s_qk, v, heads, self.head_dim, lengths)

    def pos_table(self, attn) -> tuple[torch.Tensor, float]:
        """p = linear_pos(sinusoids of positions L-1, ..., -(L-1)), L = pos_max_len, as int8
        [d, 2L-1] (column m: position L-1-m) with its per-tensor scale (float64 at conversion)."""
        L = self.pos_max_len
        table = sinusoid_table(torch.arange(L - 1, -L, -1), attn.h * attn.d_k).double()   # as NeMo's pe buffer
        pe = table @ attn.linear_pos.weight.detach().double().T                              # [2L-1, d]
        s_p = float(scale_from_range(float(pe.abs().max()), 8, signed=True))
        return quantize(pe.T.contiguous(), s_p, 8, signed=True), s_p

    def attend_rel(self, p, qu: _Act, qv: _Act, k: _Act, v: _Act, attn, lengths) -> _Act:
        heads, dk = attn.h, attn.d_k
        s_c = qu.scale * k.scale
        content = self.g.add("matmul_qk", [qu.name, k.name], f"{p}.content", Value("int32", "acc", scale=s_c),
                             f"{p}.matmul_qk", {"heads": heads, "acc_dtype": "int32"}, {}, {"scale": s_c})
        pos_q, s_p = self.pos_table(attn)
        s_pos = qv.scale * s_p
        position = self.g.add("matmul_pos", [qv.name], f"{p}.position", Value("int32", "acc", scale=s_pos),
                              f"{p}.matmul_pos", {"heads": heads, "max_len": self.pos_max_len, "acc_dtype": "int32"},
                              {"pos": pos_q}, {"scale": s_pos, "pos_scale": s_p})
        s = min(s_c, s_pos)   # both terms onto the finer scale (multipliers >= 1), summed in int64
        a = self._rescale(f"{p}.content", _Acc(content, s_c, dk * qu.absmax * k.absmax), s, 1.0)
        b = self._rescale(f"{p}.position", _Acc(position, s_pos, dk * qv.absmax * 128), s, 1.0)
        scores = self.g.add("add", [a, b], f"{p}.scores", Value("int64", "acc", scale=s), f"{p}.scores.add")
        return self._softmax_pv(p, scores, s, v, heads, dk, lengths)

    def _softmax_pv(self, p, scores, s_scores, v: _Act, heads, dk, lengths) -> _Act:
        pb = getattr(self, "prob_bits", None) or self.ab   # probabilities: pb bits unsigned, scale 2^-pb
        sm = prepare_softmax(s_scores / math.sqrt(dk), out_bits=pb)
        probs = self.g.add("softmax", [scores, lengths], f"{p}.probs",
                           Value(dtype_name(storage_dtype(pb, False)), "act", pb, False, sm.out_scale),
                           f"{p}.softmax", {"exp": nlp.exp_attrs(sm.exp), "out_bits": pb,
                                            "recip_bits": sm.recip_bits}, {},
                           {"in_scale": s_scores / math.sqrt(dk), "out_scale": sm.out_scale})
        s_ctx = sm.out_scale * v.scale
        # |ctx| <= max|v| (2^pb + T): the probabilities of a row sum to 2^pb up to rounding. The
        # kernel's own check (T max|p| max|v|) is looser: 8-bit probabilities keep int32 for T < 2^16
        # frames, wider ones take int64.
        acc = "int32" if pb <= 8 else "int64"
        ctx = self.g.add("matmul_pv", [probs, v.name], f"{p}.context.acc", Value(acc, "acc", scale=s_ctx),
                         f"{p}.matmul_pv", {"heads": heads, "acc_dtype": acc}, {},
                         {"scale": s_ctx, "bound": f"128 * (2^{pb} + T) per output (T < 2^22 frames)"})
        bound = v.absmax * ((1 << pb) + (1 << 22))
        return self.requantize(f"{p}.context", _Acc(ctx, s_ctx, bound))

    def logits(self, x: _Act, dec, lengths):
        acc, _ = self.conv("decoder", x, dec, lengths)
        s_logit = float(acc.scale.min())
        self.logit_scale = s_logit
        self._rescale("decoder", acc, s_logit, 1.0, output="logits")
        self.g.add("frames", [lengths], "logits_lengths", Value("int64", "lengths"), "logits.frames",
                   {"kernel": 1, "stride": 1, "padding": 0, "dilation": 1})
        return "logits", "logits_lengths"


def convert_conformer(model, observers: dict, weight_bits: int = 8, act_bits: int = 8, weight_method: str = "minmax",
                      info: dict | None = None, residual_bits: int | None = None, pos_emb_max_len: int | None = None,
                      prob_bits: int | None = None, layer_bits: dict | None = None, weight_group: int = 0,
                      codes: dict | None = None, bias_shifts: dict | None = None):
    """Integer program of a calibrated ConformerCTC (``calibrate_conformer``), as an IntegerModel.

    pos_emb_max_len (rel_pos only): the longest encoder input (frames after subsampling) the
    program accepts; its relative-position table covers L-1 .. -(L-1). Default: the encoder
    config's pos_emb_max_len (NeMo: 5000, i.e. 200 s at 40 ms per frame).
    prob_bits: width of the attention probabilities (unsigned, scale 2^-prob_bits; default
    act_bits). With 8 bits a probability below 2^-9 rounds to 0, which long utterances (hundreds
    of frames after subsampling, flat attention) feel; 16 keeps them (matmul_pv then in int64).
    layer_bits ({layer module: bits}): weight widths other than weight_bits (``conformer_weights.edge_layers``);
    weight_group: per-group integer multipliers for the layers of at most 4 bits (``quant.groups``);
    codes / bias_shifts ({layer module: ...}, ``conformer_weights.learn_conformer_rounding``): learned
    integer codes on the same grid and the bias shifts that go with them."""
    from .integer_model import IntegerModel

    em = IntEmitter(observers, weight_bits, act_bits, residual_bits, weight_method, layer_bits, weight_group,
                    codes, bias_shifts)
    em.pos_max_len = int(pos_emb_max_len or model.config.get("encoder", {}).get("pos_emb_max_len") or 5000)
    em.prob_bits = prob_bits
    em.head_dim = model.encoder.d_model // model.encoder.layers[0].self_attn.h if len(model.encoder.layers) else 1
    walk(model, em, em.input, "input_lengths")
    program = em.g.program(("logits", "logits_lengths"), {"input_scale": em.input.scale, "input_bits": act_bits,
                                                          "input_features": int(model.encoder.feat_in),
                                                          "logit_scale": em.logit_scale})
    qinfo = {"weight_bits": weight_bits, "act_bits": act_bits, "residual_bits": em.rb, "weight_method": weight_method,
             "prob_bits": prob_bits or act_bits,
             "observer": type(observers["input"]).__name__, "bias_correction": bool(bias_shifts),
             "depthwise_bits": weight_bits, "rounding": "nearest", "architecture": "conformer"}
    if weight_group:
        qinfo["weight_group"] = weight_group
    qinfo.update(info or {})
    return IntegerModel(model.config, program, qinfo, frontend_state=model.preprocessor.featurizer.state_dict())

