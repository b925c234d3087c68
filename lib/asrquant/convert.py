"""Float ConvASR -> integer-only ConvASR.

What runs in integers (`IntegerConvASR.forward_int`): everything between the quantized log-mel
input and the output logits. Activations are int8 (signed) or uint8-valued (after ReLU, stored in
int16), weights int8 (or fewer bits, stored in int8), biases and accumulators int32 (int64 where
the worst case could overflow int32), requantization by dyadic numbers M / 2^shift
(`quant.dyadic`). The mel front end stays in float before the boundary, as in the paper.

The integer graph, per block (BatchNorm folded into each conv first):

    x_q --mask--> int_conv1d --> acc --requantize(M, shift)--> next activation (ReLU = clamp at 0)
    last conv of a residual block:   acc_main, acc_res_i (one per dense input)
        y = clamp( rescale(acc_main; M0, s0) + sum_i rescale(acc_res_i; Mi, si), 0, 2^b - 1 )
    decoder: acc --rescale to one common logit scale--> int logits (no clamp; argmax for CTC)

Scales. Input: s_in from an observer on the calibration mels, signed. Weights: per output channel,
symmetric, s_w[c] = alpha_c / (2^(w-1) - 1). Activation after a conv: s_out from an observer on the
float model's activation at that point; signed for depthwise outputs, unsigned (one extra bit) after
ReLU. Multiplier of a conv: m_c = s_x * s_w[c] / s_out. Bias: round(b / (s_x * s_w[c])).
Decoder: logit scale S = min_c s_x * s_w[c], so every class is rescaled by m_c >= 1 onto one scale
(argmax across classes with different scales would be wrong).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .intops.conv import accumulator_bound, choose_acc_dtype, int_conv1d, mask_time
from .models.checkpoint import CheckpointError, atomic_write_bytes
from .models.convasr import ConvASR, MaskedConv1d, frame_mask
from .quant.bn import fold_batchnorm
from .quant.dyadic import dyadic_from_float, requantize, rescale
from .quant.observers import make_observer
from .quant.quantizer import qrange, quantize, scale_from_range, storage_dtype, weight_alpha

FORMAT = "asrquant-integer-model"
VERSION = 1


# --------------------------------------------------------------------------- integer model

@dataclass
class IntConv:
    """One integer convolution: weights, bias, geometry and its requantization to the output."""

    weight: torch.Tensor            # int8 [Cout, Cin/groups, K]
    bias: torch.Tensor | None       # int32/int64 [Cout], scale s_x * s_w
    M: torch.Tensor                 # int64 [Cout] dyadic multiplier to the output scale
    shift: torch.Tensor             # int64 [Cout]
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    acc_dtype: torch.dtype = torch.int32
    out_bits: int = 8
    out_signed: bool = True          # False: ReLU fused into the clamp
    # float metadata (documentation and dequantization outside the integer region only)
    in_scale: float = 1.0
    out_scale: float = 1.0
    w_scale: torch.Tensor | None = None

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        k = self.weight.shape[-1]
        return (lengths + 2 * self.padding - self.dilation * (k - 1) - 1) // self.stride + 1

    def accumulate(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return int_conv1d(mask_time(x, lengths), self.weight, self.bias, stride=self.stride,
                          padding=self.padding, dilation=self.dilation, groups=self.groups,
                          acc_dtype=self.acc_dtype)

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        acc = self.accumulate(x, lengths)
        return requantize(acc, self.M, self.shift, self.out_bits, self.out_signed)


@dataclass
class IntBlock:
    convs: list[IntConv]                       # main path; the last one only accumulates if residual
    residual: list[IntConv] = field(default_factory=list)  # M/shift map each branch to the block output
    dense: bool = False

    def __call__(self, xs: list[torch.Tensor], lengths: torch.Tensor):
        out, lens = xs[-1], lengths
        for conv in self.convs[:-1]:
            out, lens = conv(out, lens), conv.output_lengths(lens)
        last = self.convs[-1]
        if not self.residual:
            return [last(out, lens)], last.output_lengths(lens)
        total = rescale(last.accumulate(out, lens), last.M, last.shift)
        for x_in, conv in zip(xs, self.residual):
            total = total + rescale(conv.accumulate(x_in, lengths), conv.M, conv.shift)
        lo, hi = qrange(last.out_bits, signed=False)
        y = torch.clamp(total, lo, hi).to(storage_dtype(last.out_bits, signed=False))
        lens = last.output_lengths(lens)
        return (xs + [y] if self.dense else [y]), lens


class IntegerConvASR(nn.Module):
    """Integer-only ConvASR. `forward_int` takes and returns integer tensors only."""

    def __init__(self, config: dict, blocks: list[IntBlock], decoder: IntConv, input_scale: float,
                 input_bits: int, info: dict | None = None):
        super().__init__()
        self.float_model_config = config
        self.labels = list(config.get("labels") or config["decoder"]["vocabulary"])
        # The mel front end is float and sits before the quantization boundary.
        from .audio import MelFrontend

        self.preprocessor = nn.Module()
        self.preprocessor.featurizer = MelFrontend.from_config(config.get("preprocessor", {}))
        self.blocks = blocks
        self.decoder = decoder
        self.input_scale = float(input_scale)
        self.input_bits = int(input_bits)
        self.logit_scale = float(decoder.out_scale)
        self.info = dict(info or {})
        self.eval()

    # --- float side of the boundary
    def features(self, audio, lengths):
        return self.preprocessor.featurizer(audio, lengths)

    def quantize_input(self, mel: torch.Tensor) -> torch.Tensor:
        """The boundary: float log-mel -> signed integers (the last float op)."""
        if not torch.isfinite(mel).all():
            raise ValueError("input features contain NaN or inf")
        return quantize(mel, self.input_scale, self.input_bits, signed=True)

    # --- integer side
    def forward_int(self, q: torch.Tensor, lengths: torch.Tensor):
        """Integer log-mel [B, F, T] -> integer logits [B, C, T'] (scale `logit_scale`), lengths."""
        lengths = lengths.to(torch.int64)
        xs = [q]
        for block in self.blocks:
            xs, lengths = block(xs, lengths)
        x = xs[-1]
        d = self.decoder
        logits = rescale(d.accumulate(x, lengths), d.M, d.shift)
        return logits, lengths

    def forward_features(self, mel, lengths):
        return self.forward_int(self.quantize_input(mel), lengths)

    def forward(self, audio, lengths):
        return self.forward_features(*self.features(audio, lengths))

    def int_convs(self) -> list[tuple[str, IntConv]]:
        out = []
        for b, block in enumerate(self.blocks):
            out += [(f"blocks.{b}.convs.{i}", c) for i, c in enumerate(block.convs)]
            out += [(f"blocks.{b}.residual.{i}", c) for i, c in enumerate(block.residual)]
        return out + [("decoder", self.decoder)]

    def int64_layers(self) -> list[str]:
        return [n for n, c in self.int_convs() if c.acc_dtype == torch.int64]


# --------------------------------------------------------------------------- calibration

def _quant_points(model: ConvASR):
    """For each encoder conv, the module whose output is that conv's (requantized) output.

    Depthwise conv -> itself; a conv followed by BN+ReLU inside the block -> that ReLU; the
    block's last conv -> the block's `mout` (ReLU after the residual sum).
    """
    points = {}
    for b, block in enumerate(model.encoder.encoder):
        layers = list(block.mconv)
        for i, layer in enumerate(layers):
            if not isinstance(layer, MaskedConv1d):
                continue
            if layer.conv.groups > 1 and i + 1 < len(layers) and isinstance(layers[i + 1], MaskedConv1d):
                points[(b, i)] = layer                     # depthwise output feeds the pointwise conv
            else:
                nxt = layers[i + 2] if i + 2 < len(layers) else None  # conv, BN, act
                points[(b, i)] = nxt if isinstance(nxt, nn.ReLU) else block.mout
    return points


@torch.no_grad()
def calibrate(model: ConvASR, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], observer: str = "minmax",
              **observer_kw) -> dict:
    """Run the float model on (mel, lengths) batches; return observers for the input and every point."""
    points = _quant_points(model)
    observers = {"input": make_observer(observer, **observer_kw)}
    modules = {}
    for key, mod in points.items():
        modules.setdefault(id(mod), (mod, []))[1].append(key)
    state = {"lens": None}
    handles = []

    def track_lengths(_m, _i, out):
        state["lens"] = out[1]

    for m in model.encoder.modules():
        if isinstance(m, MaskedConv1d):
            handles.append(m.register_forward_hook(track_lengths))
    for mod, keys in modules.values():
        obs = make_observer(observer, **observer_kw)
        for k in keys:
            observers[k] = obs

        def hook(_m, _i, out, obs=obs):
            y = out[0] if isinstance(out, tuple) else out
            obs.update(y, frame_mask(state["lens"], y.shape[-1])[:, None, :])
        handles.append(mod.register_forward_hook(hook))
    try:
        n = 0
        for mel, lengths in batches:
            observers["input"].update(mel, frame_mask(lengths, mel.shape[-1])[:, None, :])
            model.forward_features(mel, lengths)
            n += 1
        if n == 0:
            raise ValueError("calibration needs at least one batch")
    finally:
        for h in handles:
            h.remove()
    return observers


def _forward_with_hooks(model: ConvASR, batches, handles) -> None:
    """Run the float model over (mel, lengths) batches, then remove the hooks (also on error)."""
    try:
        for mel, lengths in batches:
            model.forward_features(mel, lengths)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def conv_input_means(model: ConvASR, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Mean of every conv's input per input channel over valid frames: {nn.Conv1d: float64 [Cin]}.

    What bias correction needs (``convert(..., input_means=...)``). On synthetic inputs these are
    the means the BatchNorm statistics imply, so the correction stays zero-shot."""
    sums: dict = {}
    state = {"lens": None}
    handles = []

    def add(conv, x, lens):
        m = frame_mask(lens, x.shape[-1])[:, None, :].to(torch.float64)
        tot, cnt = sums.get(conv, (0.0, 0.0))
        sums[conv] = (tot + (x.double() * m).sum(dim=(0, 2)), cnt + float(m.sum()))

    def pre(mod, args):
        x, lens = args
        add(mod.conv, x, lens)

    def post(_m, _i, out):
        state["lens"] = out[1]

    for m in model.encoder.modules():
        if isinstance(m, MaskedConv1d):
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
    dec = model.decoder.decoder_layers[0]
    handles.append(dec.register_forward_pre_hook(lambda mod, args: add(mod, args[0], state["lens"])))
    _forward_with_hooks(model, batches, handles)
    return {conv: tot / max(cnt, 1.0) for conv, (tot, cnt) in sums.items()}


@torch.no_grad()
def conv_input_hessians(model: ConvASR, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """H = sum over valid output frames of x x^T for every conv's im2col input column x (float64):
    {nn.Conv1d: [Cin*K, Cin*K]} for dense convs, [C, K, K] for depthwise ones; what output-aware
    rounding (``quant.gptq``) needs. Convs with more than ``gptq.MAX_COLUMNS`` columns are left out."""
    from .quant.gptq import MAX_COLUMNS

    H: dict = {}

    def pre(mod, args):
        x, lens = args
        c = mod.conv
        cin, K = c.in_channels, c.kernel_size[0]
        depthwise = c.groups == cin == c.out_channels and c.groups > 1
        if not depthwise and (c.groups != 1 or cin * K > MAX_COLUMNS):
            return
        x = x * frame_mask(lens, x.shape[-1])[:, None, :].to(x.dtype)
        xp = F.pad(x, (c.padding[0], c.padding[0])).double()
        span = c.dilation[0] * (K - 1) + 1
        u = xp.unfold(2, span, c.stride[0])[:, :, :, :: c.dilation[0]]          # [B, Cin, T_out, K]
        valid = frame_mask(mod.output_lengths(lens), u.shape[2]).to(u.dtype)   # [B, T_out]
        u = u * valid[:, None, :, None]
        if depthwise:
            h = torch.einsum("bctk,bctl->ckl", u, u)
        else:
            cols = u.permute(0, 2, 1, 3).reshape(-1, cin * K)                  # row index c * K + k
            h = cols.T @ cols
        H[c] = H[c] + h if c in H else h

    handles = [m.register_forward_pre_hook(pre) for m in model.encoder.modules() if isinstance(m, MaskedConv1d)]

    dec = model.decoder.decoder_layers[0]  # a plain 1x1 Conv1d on the whole encoder output

    def dec_pre(mod, args):
        x = args[0].double()
        cols = x.permute(0, 2, 1).reshape(-1, x.shape[1])
        H[mod] = H[mod] + cols.T @ cols if mod in H else cols.T @ cols

    handles.append(dec.register_forward_pre_hook(dec_pre))
    _forward_with_hooks(model, batches, handles)
    return H


# --------------------------------------------------------------------------- conversion

def _quantize_weight(w: torch.Tensor, bits: int, method: str):
    alpha = weight_alpha(w, bits, per_channel=True, method=method).reshape(-1).double()
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))  # an all-zero channel: any scale works
    s_w = scale_from_range(alpha, bits, signed=True).double()
    w_q = quantize(w.double(), s_w, bits, signed=True, axis=0).to(torch.int8 if bits <= 8 else torch.int16)
    return w_q, s_w


def _bias_correction(w: torch.Tensor, w_q: torch.Tensor, s_w: torch.Tensor, groups: int,
                     x_mean: torch.Tensor) -> torch.Tensor:
    """Expected output shift the weight rounding causes, per output channel:
    delta[o] = sum_{c,k} (s_w[o] w_q[o, c, k] - w[o, c, k]) * E[x_c]  (Nagel et al. 2019, DFQ)."""
    dw = (w_q.double() * s_w.reshape(-1, 1, 1) - w).sum(dim=2)  # [Cout, Cin/groups]
    cout, cin_g = dw.shape
    xm = x_mean.double().reshape(groups, cin_g)                  # group g reads channels g*cin_g...
    return (dw.reshape(groups, cout // groups, cin_g) * xm[:, None, :]).sum(dim=2).reshape(cout)


def _int_conv(conv: nn.Conv1d, bn: nn.BatchNorm1d | None, s_x: float, x_bits: int, x_signed: bool,
              s_out: float | None, out_bits: int, out_signed: bool, w_bits: int, w_method: str,
              input_means: dict | None = None, hessians: dict | None = None) -> IntConv:
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else None
    if bn is not None:
        w, b = fold_batchnorm(w, b, bn)
        w, b = w.double(), b.double()
    w_q, s_w = _quantize_weight(w, w_bits, w_method)
    if hessians is not None and conv in hessians:
        from .quant.gptq import gptq_round

        cout = w.shape[0]
        codes = gptq_round(w.reshape(cout, -1), s_w, hessians[conv], w_bits)
        w_q = codes.reshape(w.shape).to(w_q.dtype)
    if input_means is not None:
        if conv not in input_means:
            raise KeyError("bias correction: no input mean for a conv (compute input_means on this model)")
        delta = _bias_correction(w, w_q, s_w, conv.groups, input_means[conv])
        b = -delta if b is None else b - delta
    acc_scale = s_x * s_w
    bias_q = None
    if b is not None:
        bias_q = torch.round(b / acc_scale).to(torch.int64)
        if bias_q.abs().max() < 2 ** 31 - 1:
            bias_q = bias_q.to(torch.int32)
    bound = accumulator_bound(w_q, x_bits, x_signed, bias_q)
    acc_dtype = choose_acc_dtype(bound)
    if s_out is None:  # decoder: one common scale, every class multiplied by m_c >= 1
        s_out = float(acc_scale.min())
    # acc * M must fit int64: wide (16-bit) accumulators get a shorter multiplier.
    m = (acc_scale / s_out).numpy()
    m_bits = min(31, 62 - bound.bit_length())
    M, shift = dyadic_from_float(m, bits=m_bits)
    return IntConv(weight=w_q, bias=bias_q,
                   M=torch.as_tensor(M, dtype=torch.int64).reshape(-1), shift=torch.as_tensor(shift, dtype=torch.int64).reshape(-1),
                   stride=conv.stride[0], padding=conv.padding[0], dilation=conv.dilation[0], groups=conv.groups,
                   acc_dtype=acc_dtype, out_bits=out_bits, out_signed=out_signed, in_scale=float(s_x),
                   out_scale=float(s_out), w_scale=s_w.float())


def convert(model: ConvASR, observers: dict, weight_bits: int = 8, act_bits: int = 8,
            weight_method: str = "minmax", info: dict | None = None,
            input_means: dict | None = None, depthwise_bits: int | None = None,
            hessians: dict | None = None) -> IntegerConvASR:
    """Build the integer model from a calibrated float model (see `calibrate`).

    input_means (``conv_input_means`` on the calibration batches): correct every conv's bias for
    the mean output shift its weight rounding causes (bias correction; depthwise convs get a bias).
    depthwise_bits: weight width of the depthwise convs (default weight_bits); they hold ~2% of
    QuartzNet's weights but suffer most from 4-bit rounding (few long, peaky kernels).
    hessians (``conv_input_hessians`` on the calibration batches): output-aware rounding
    (``quant.gptq``) for every conv that has one, round-to-nearest for the others."""
    def act_scale(key, signed):
        return float(scale_from_range(observers[key].alpha(), act_bits, signed=signed))

    s_in = act_scale("input", True)
    s_x, x_signed = s_in, True
    points = _quant_points(model)
    blocks, block_out = [], []  # block_out: (scale, signed) of every block output, for dense inputs
    prev_out = [(s_in, True)]
    for b, block in enumerate(model.encoder.encoder):
        layers = list(block.mconv)
        conv_idx = [i for i, l in enumerate(layers) if isinstance(l, MaskedConv1d)]
        convs = []
        for n, i in enumerate(conv_idx):
            mconv = layers[i]
            bn = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm1d) else None
            point = points[(b, i)]
            depthwise = point is mconv
            out_signed = depthwise
            s_out = act_scale((b, i), out_signed)
            c = mconv.conv
            wb = depthwise_bits if (depthwise_bits and c.groups > 1 and c.groups == c.in_channels) else weight_bits
            convs.append(_int_conv(c, bn, s_x, act_bits, x_signed, s_out, act_bits, out_signed,
                                   wb, weight_method, input_means, hessians))
            s_x, x_signed = s_out, out_signed
        residual = []
        if block.res is not None:
            for (x_scale, x_sign), (rconv, rbn) in zip(prev_out, block.res):
                residual.append(_int_conv(rconv.conv, rbn, x_scale, act_bits, x_sign, s_x, act_bits, False,
                                          weight_bits, weight_method, input_means, hessians))
        blocks.append(IntBlock(convs=convs, residual=residual, dense=block.dense))
        block_out.append((s_x, x_signed))
        prev_out = prev_out + [(s_x, x_signed)] if block.dense else [(s_x, x_signed)]
    decoder = _int_conv(model.decoder.decoder_layers[0], None, s_x, act_bits, x_signed, None, 32, True,
                        weight_bits, weight_method, input_means, hessians)
    qinfo = {"weight_bits": weight_bits, "act_bits": act_bits, "weight_method": weight_method,
             "observer": type(observers["input"]).__name__, "bias_correction": input_means is not None,
             "depthwise_bits": depthwise_bits or weight_bits, "rounding": "gptq" if hessians else "nearest"}
    qinfo.update(info or {})
    return IntegerConvASR(model.config, blocks, decoder, s_in, act_bits, qinfo)


def quantize_model(model: ConvASR, calibration_mels, weight_bits=8, act_bits=8, observer="minmax",
                   weight_method="minmax", info: dict | None = None, input_means: dict | None = None,
                   depthwise_bits: int | None = None, hessians: dict | None = None,
                   **observer_kw) -> IntegerConvASR:
    """Calibrate on (mel, lengths) batches and convert: the one-call API."""
    observers = calibrate(model, calibration_mels, observer, **observer_kw)
    return convert(model, observers, weight_bits, act_bits, weight_method, info, input_means, depthwise_bits,
                   hessians)


# --------------------------------------------------------------------------- save / load

_CONV_FIELDS = ("stride", "padding", "dilation", "groups", "out_bits", "out_signed", "in_scale", "out_scale")


def _conv_state(prefix: str, c: IntConv, tensors: dict) -> dict:
    tensors[prefix + ".weight"] = c.weight
    tensors[prefix + ".M"] = c.M
    tensors[prefix + ".shift"] = c.shift
    if c.bias is not None:
        tensors[prefix + ".bias"] = c.bias
    if c.w_scale is not None:
        tensors[prefix + ".w_scale"] = c.w_scale
    meta = {f: getattr(c, f) for f in _CONV_FIELDS}
    meta["acc_dtype"] = str(c.acc_dtype).replace("torch.", "")
    return meta


def _conv_from_state(prefix: str, meta: dict, tensors: dict) -> IntConv:
    kw = {f: meta[f] for f in _CONV_FIELDS}
    return IntConv(weight=tensors[prefix + ".weight"], bias=tensors.get(prefix + ".bias"), M=tensors[prefix + ".M"],
                   shift=tensors[prefix + ".shift"], acc_dtype=getattr(torch, meta["acc_dtype"]),
                   w_scale=tensors.get(prefix + ".w_scale"), **kw)


def save_quantized(qmodel: IntegerConvASR, path) -> Path:
    """One versioned file (a torch zip of integer tensors + JSON metadata), written atomically."""
    tensors: dict[str, torch.Tensor] = {}
    blocks = []
    for b, block in enumerate(qmodel.blocks):
        blocks.append({"dense": block.dense,
                       "convs": [_conv_state(f"blocks.{b}.convs.{i}", c, tensors) for i, c in enumerate(block.convs)],
                       "residual": [_conv_state(f"blocks.{b}.residual.{i}", c, tensors)
                                    for i, c in enumerate(block.residual)]})
    meta = {"format": FORMAT, "version": VERSION, "config": qmodel.float_model_config, "blocks": blocks,
            "decoder": _conv_state("decoder", qmodel.decoder, tensors), "input_scale": qmodel.input_scale,
            "input_bits": qmodel.input_bits, "info": qmodel.info}
    payload = {"format": FORMAT, "version": VERSION, "meta": json.dumps(meta), "tensors": tensors}
    return atomic_write_bytes(path, lambda f: torch.save(payload, f))


def is_quantized_file(path) -> bool:
    """torch.save writes a zip (starts with PK\\x03\\x04); a .nemo is a tar. zipfile.is_zipfile would
    be fooled: it looks near the end, where a .nemo tar holds its zipped model_weights.ckpt."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def load_quantized(path) -> IntegerConvASR:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such quantized model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable quantized model (weights_only load failed): {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an asrquant integer model file")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: integer model format version {payload.get('version')} "
                              f"is not supported (this asrquant reads version {VERSION})")
    meta, tensors = json.loads(payload["meta"]), payload["tensors"]
    blocks = [IntBlock(convs=[_conv_from_state(f"blocks.{b}.convs.{i}", m, tensors) for i, m in enumerate(blk["convs"])],
                       residual=[_conv_from_state(f"blocks.{b}.residual.{i}", m, tensors)
                                 for i, m in enumerate(blk["residual"])], dense=blk["dense"])
              for b, blk in enumerate(meta["blocks"])]
    return IntegerConvASR(meta["config"], blocks, _conv_from_state("decoder", meta["decoder"], tensors),
                          meta["input_scale"], meta["input_bits"], meta["info"])
