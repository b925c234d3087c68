"""Simulated (fake) quantization of the Conformer with exact float non-linearities.

The ablation that separates the two costs of the integer-only Conformer: this model rounds at
exactly the points the integer program rounds (same calibrated scales, same bit widths, the same
per-channel weights with BatchNorm folded, softmax probabilities on the 2^-8 grid), but computes
LayerNorm, Softmax, Swish, GLU and GELU in float. The gap between it and the float model is the
cost of quantization; the gap between it and the integer program is the cost of the integer
approximations (i-exp, integer LayerNorm / square root, i-GELU) and of integer requantization.
"""

from __future__ import annotations

import torch
from torch import nn

from .convert_conformer import (FloatTaps, calibrate_conformer, conv_geometry, conv_out_lengths, float_forward,
                                folded_weight_bias)
from .quant.quantizer import fake_quantize, scale_from_range


class SimulatedTaps(FloatTaps):
    """The Conformer walk with every quantization point fake-quantized (module doc)."""

    def __init__(self, observers: dict, weight_bits: int = 8, act_bits: int = 8, residual_bits: int | None = None):
        super().__init__()
        self.calibrated, self.wb, self.ab, self.rb = observers, weight_bits, act_bits, residual_bits or act_bits

    def observe(self, name, y, lengths, bits=None, signed=True):
        if name not in self.calibrated:
            return y      # a point the integer program does not round (decoder input: already rounded)
        bits = bits or self.ab
        scale = float(scale_from_range(self.calibrated[name].alpha(), bits, signed=signed))
        return fake_quantize(y, scale, bits, signed)

    def conv(self, name, x, layer, lengths, bn=None, extra_bias=None):
        from .quant.weights import quantize_weight

        w, b = folded_weight_bias(layer, bn, extra_bias)   # a Linear as a k=1 conv; rel_pos's u / v in the bias
        w_q, s_w = quantize_weight(w, self.wb, "minmax")
        w_fq = (w_q.double() * s_w.reshape(-1, *[1] * (w.dim() - 1))).to(x.dtype)
        bias = None if b is None else b.to(x.dtype)
        if isinstance(layer, nn.Conv2d):   # the subsampling image [B, C, T, F]
            y = torch.nn.functional.conv2d(x, w_fq, bias, stride=layer.stride, padding=layer.padding,
                                           dilation=layer.dilation, groups=layer.groups)
        else:
            y = torch.nn.functional.conv1d(x, w_fq, bias, **conv_geometry(layer))
        self.lengths = conv_out_lengths(lengths, layer)
        return y, self.lengths

    def activation(self, name, acc, kind, factor=1.0):
        if kind == "relu":
            return self.observe(name, torch.relu(acc) * factor, self.lengths, signed=False)
        return super().activation(name, acc, kind, factor)

    def residual(self, name, x, branch, factor):
        return self.observe(name, x + factor * branch, self.lengths, bits=self.rb)

    def probs(self, p):
        return fake_quantize(p, 2.0 ** -self.ab, self.ab, signed=False)

    def logits(self, x, dec, lengths):
        y, _ = self.conv("decoder", x, dec, lengths)
        return y, lengths


class SimulatedConformer(nn.Module):
    """A recognizer (features, forward_features, labels, config) running ``SimulatedTaps``."""

    def __init__(self, model, observers, weight_bits=8, act_bits=8, residual_bits=None):
        super().__init__()
        self.model = model
        self.labels, self.config = model.labels, model.config
        self.taps_args = (observers, weight_bits, act_bits, residual_bits)

    def features(self, audio, lengths):
        return self.model.features(audio, lengths)

    @torch.no_grad()
    def forward_features(self, mel, lengths):
        return float_forward(self.model, mel, lengths, SimulatedTaps(*self.taps_args))

    def forward(self, audio, lengths):
        return self.forward_features(*self.features(audio, lengths))


def simulate_conformer(model, batches, weight_bits=8, act_bits=8, residual_bits=None, observer="minmax"):
    """Calibrate like the integer converter and return the fake-quantized model."""
    return SimulatedConformer(model, calibrate_conformer(model, batches, observer), weight_bits, act_bits,
                              residual_bits)
