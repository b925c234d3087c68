"""ConvASR float model -> integer program (``program.ops``), wrapped as an ``IntegerModel``.

Conversion of a ConvASR (QuartzNet / JasperDR) has two steps:
1. ``convert``: per conv, fold BatchNorm, quantize the weights (per output channel), the bias
   (scale s_x * s_w) and derive the dyadic multiplier to the output scale (``IntConv``, plain data);
2. ``program.emit_convasr``: write those layers as a flat list of integer ops over named integer
   tensors; every backend runs the program without knowing the block structure.

Scales. Input: s_in from an observer on the calibration mels, signed. Weights: per output channel,
symmetric, s_w[c] = alpha_c / (2^(w-1) - 1). Activation after a conv: s_out from an observer on the
float model's activation at that point; signed for depthwise outputs, unsigned (one extra bit) after
ReLU. Multiplier of a conv: m_c = s_x * s_w[c] / s_out. Bias: round(b / (s_x * s_w[c])).
Residual block: every branch (the main path's last conv and one 1x1 conv per dense input) is
rescaled onto the block output scale, summed in int64 and clamped (ReLU = the clamp at 0).
Decoder: logit scale S = min_c s_x * s_w[c], so every class is rescaled by m_c >= 1 onto one scale
(argmax across classes with different scales would be wrong).
"""

from __future__ import annotations

from torch import nn

from .calibration import collect, quant_points
from .integer_model import IntegerModel
from .intops.conv import accumulator_bound, choose_acc_dtype
from .models.convasr import ConvASR, walk
from .program.builder import IntConv
from .program.emit_convasr import IntBlock, emit_convasr
from .quant.bn import fold_batchnorm
from .quant.quantizer import quantize, scale_from_range
from .quant.weights import (bias_correction, dyadic_multiplier, learned_weight, quantize_bias, round_on_grid,
                            weight_bits_of, weight_grid)


def _int_conv(conv: nn.Conv1d, bn: nn.BatchNorm1d | None, s_x: float, x_bits: int, x_signed: bool,
              s_out: float | None, out_bits: int, out_signed: bool, w_bits: int, w_method: str,
              input_means: dict | None = None, hessians: dict | None = None, codes: dict | None = None,
              bias_shifts: dict | None = None, weight_scales: dict | None = None, weight_group: int = 0) -> IntConv:
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else None
    if bn is not None:
        w, b = fold_batchnorm(w, b, bn)
        w, b = w.double(), b.double()
    s_w, mult = weight_grid(w, w_bits, w_method, weight_group)   # mult: each weight's group multiplier, or None
    w_q = round_on_grid(w, s_w, mult, w_bits)
    if mult is not None and ((weight_scales is not None and conv in weight_scales)
                             or (hessians is not None and conv in hessians)):
        raise ValueError("per-group weight multipliers (--weight-group) do not combine with a searched scale or GPTQ")
    if weight_scales is not None and conv in weight_scales:   # searched with the rounding (quant.adaround)
        s_w = weight_scales[conv].double().reshape(-1)
        w_q = quantize(w, s_w, w_bits, signed=True, axis=0).to(w_q.dtype)
    if hessians is not None and conv in hessians:
        from .quant.gptq import gptq_round

        cout = w.shape[0]
        gcodes = gptq_round(w.reshape(cout, -1), s_w, hessians[conv], w_bits)
        w_q = gcodes.reshape(w.shape).to(w_q.dtype)
    elif codes is not None and conv in codes:   # learned rounding (quant.adaround), same grid
        w_q = learned_weight(codes[conv], mult, w_bits, w.shape)
    if input_means is not None:
        if conv not in input_means:
            raise KeyError("bias correction: no input mean for a conv (compute input_means on this model)")
        delta = bias_correction(w, w_q, s_w, conv.groups, input_means[conv])
        b = -delta if b is None else b - delta
    if bias_shifts is not None and conv in bias_shifts:   # learned with the rounding (quant.adaround)
        shift = bias_shifts[conv].double().reshape(-1)
        b = shift if b is None else b + shift
    acc_scale = s_x * s_w
    bias_q = quantize_bias(b, acc_scale)
    bound = accumulator_bound(w_q, x_bits, x_signed, bias_q)
    acc_dtype = choose_acc_dtype(bound)
    if s_out is None:  # decoder: one common scale, every class multiplied by m_c >= 1
        s_out = float(acc_scale.min())
    M, shift = dyadic_multiplier((acc_scale / s_out).numpy(), bound)
    return IntConv(weight=w_q, bias=bias_q, M=M, shift=shift,
                   stride=conv.stride[0], padding=conv.padding[0], dilation=conv.dilation[0], groups=conv.groups,
                   acc_dtype=acc_dtype, out_bits=out_bits, out_signed=out_signed, in_scale=float(s_x),
                   out_scale=float(s_out), w_scale=s_w.float())


def convert(model: ConvASR, observers: dict, weight_bits: int = 8, act_bits: int = 8,
            weight_method: str = "minmax", info: dict | None = None,
            input_means: dict | None = None, depthwise_bits: int | None = None,
            hessians: dict | None = None, codes: dict | None = None,
            layer_bits: dict | None = None, bias_shifts: dict | None = None,
            weight_scales: dict | None = None, weight_group: int = 0) -> IntegerModel:
    """Build the integer model from a calibrated float model (see `calibrate`).

    input_means (``conv_input_means`` on the calibration batches): correct every conv's bias for
    the mean output shift its weight rounding causes (bias correction; depthwise convs get a bias).
    depthwise_bits: weight width of the depthwise convs (default weight_bits); they hold ~2% of
    QuartzNet's weights but suffer most from 4-bit rounding (few long, peaky kernels).
    hessians (``conv_input_hessians`` on the calibration batches): output-aware rounding
    (``quant.gptq``) for every conv that has one, round-to-nearest for the others.
    codes ({nn.Conv1d: integer codes}, ``quant.adaround``): learned rounding on the same grid;
    bias_shifts ({nn.Conv1d: float64 [Cout]}, learned with them): added to the folded biases.
    weight_scales ({nn.Conv1d: float64 [Cout]}, searched with them): the codes' per-channel weight
    scales where they are not ``weight_method``'s.
    layer_bits ({nn.Conv1d: bits}, ``quant.mixed_precision``): per-conv weight widths (mixed
    precision); convs not in it use depthwise_bits / weight_bits (``weight_bits_of``).
    weight_group: per-group integer multipliers (``quant.groups``) for the convs of at most 4 bits,
    groups of this many weights per row (0: per-channel scales only); codes are then the group's."""
    def bits(conv):
        return weight_bits_of(conv, weight_bits, depthwise_bits, layer_bits)

    def act_scale(key, signed):
        return float(scale_from_range(observers[key].alpha(), act_bits, signed=signed))

    s_in = act_scale("input", True)
    s_x, x_signed = s_in, True
    points = quant_points(model)
    blocks = []
    prev_out = [(s_in, True)]   # (scale, signed) of the next block's inputs (all earlier outputs if dense)
    sites = walk(model)
    for blk in sites.blocks:
        convs = []
        for site in blk.main:
            out_signed = points[(site.block, site.index)] is site.module   # a depthwise output: no ReLU
            s_out = act_scale((site.block, site.index), out_signed)
            c = site.conv
            convs.append(_int_conv(c, site.bn, s_x, act_bits, x_signed, s_out, act_bits, out_signed,
                                   bits(c), weight_method, input_means, hessians, codes, bias_shifts,
                                   weight_scales=weight_scales, weight_group=weight_group))
            s_x, x_signed = s_out, out_signed
        residual = []
        for (x_scale, x_sign), rsite in zip(prev_out, blk.residual):
            residual.append(_int_conv(rsite.conv, rsite.bn, x_scale, act_bits, x_sign, s_x, act_bits, False,
                                      bits(rsite.conv), weight_method, input_means, hessians, codes, bias_shifts,
                                      weight_scales=weight_scales, weight_group=weight_group))
        blocks.append(IntBlock(convs=convs, residual=residual, dense=blk.dense))
        prev_out = prev_out + [(s_x, x_signed)] if blk.dense else [(s_x, x_signed)]
    dec = sites.decoder.conv
    decoder = _int_conv(dec, None, s_x, act_bits, x_signed, None, 32, True,
                        bits(dec), weight_method, input_means, hessians, codes, bias_shifts,
                        weight_scales=weight_scales, weight_group=weight_group)
    qinfo = {"weight_bits": weight_bits, "act_bits": act_bits, "weight_method": weight_method,
             "observer": type(observers["input"]).__name__, "bias_correction": input_means is not None or bool(bias_shifts),
             "depthwise_bits": depthwise_bits or weight_bits,
             "rounding": "gptq" if hessians else "adaround" if codes else "nearest"}
    if weight_group:
        qinfo["weight_group"] = weight_group
    if layer_bits:
        qinfo["layer_bits"] = {str(b): sum(1 for v in layer_bits.values() if v == b) for b in sorted(set(layer_bits.values()))}
    qinfo.update(info or {})
    return IntegerModel(model.config, emit_convasr(blocks, decoder, s_in, act_bits), qinfo)


def quantize_model(model: ConvASR, calibration_mels, weight_bits=8, act_bits=8, observer="minmax",
                   weight_method="minmax", info: dict | None = None, input_means: dict | None = None,
                   depthwise_bits: int | None = None, hessians: dict | None = None,
                   **observer_kw) -> IntegerModel:
    """Calibrate on (mel, lengths) batches and convert: the one-call API."""
    observers = collect(model, calibration_mels, observer=observer, **observer_kw).observers
    return convert(model, observers, weight_bits, act_bits, weight_method, info, input_means, depthwise_bits,
                   hessians)
