"""A faster depthwise 'same' Conv1d for CPU, with an input-gradient that is fast too.

On the 2-core CPU of this project PyTorch's *forward* depthwise conv1d with long kernels (33..87
taps) runs at ~3 GMAC/s, while its *transposed* depthwise conv (the kernel autograd uses for the
input gradient) runs ~20x faster. For stride 1 and symmetric padding p = d*(K-1)/2 the two are the
same operation up to flipping the kernel:

    conv1d(x, w)[t]            = sum_k w[k]        x[t - p + d*k]
    conv_transpose1d(x, v)[t]  = sum_k v[k]        x[t + p - d*k]
    => conv1d(x, w) = conv_transpose1d(x, flip(w)),   d/dx conv1d(x, w) . g = conv_transpose1d(g, w)

so both the forward and the backward run on the fast kernel. The transposed kernel is itself slow
with dilation > 1, so a dilated conv is split into its d interleaved phases (x[..., r::d]), each an
undilated conv with padding p/d, run as one batch and interleaved back. The result equals
`nn.Conv1d` up to float32 summation order (~4e-7 relative, measured in tests/test_synth.py).

Measured here (torch 2.13, 2 threads, quiet machine, B=8, T=250), forward only, ms, conv1d vs
transposed: C=512 K=75: 26.0 vs 1.7; C=512 K=51: 20.2 vs 5.6; C=256 K=33: 7.8 vs 2.0; the
dilated C=512 K=87 d=2 layer unsplit: 32.0 vs 62.9 (hence the phase split). Forward + input
gradient through this module vs nn.Conv1d: C=512 K=75: 7.9 vs 45.9; C=512 K=87 d=2 (split):
17.4 vs 82.3. Under heavy CPU contention use 1 thread: the transposed kernel with 2 threads
then stalls (~30 ms per call whatever the size).

Only the input gradient is fast: the weight must not require grad (the module falls back to
`F.conv1d` when it does, and for any configuration the identity above does not cover: stride > 1,
non-depthwise, asymmetric padding).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _transposed_same(x: torch.Tensor, kernel: torch.Tensor, pad: int, dilation: int) -> torch.Tensor:
    """y[b, c, t] = sum_j kernel[c, 0, j] * x[b, c, t + pad - dilation*j] (zero outside), same length."""
    channels = x.shape[1]
    if dilation == 1:
        return F.conv_transpose1d(x, kernel, padding=pad, groups=channels)
    b, c, t = x.shape
    d = dilation
    tp = -(-t // d) * d
    if tp != t:
        x = F.pad(x, (0, tp - t))  # zeros beyond the end: what the implicit padding holds anyway
    # phase r holds x[..., r::d]; [B, C, T/d, d] -> [d*B, C, T/d]
    phases = x.reshape(b, c, tp // d, d).permute(3, 0, 1, 2).reshape(d * b, c, tp // d)
    y = F.conv_transpose1d(phases, kernel, padding=pad // d, groups=channels)
    y = y.reshape(d, b, c, tp // d).permute(1, 2, 3, 0).reshape(b, c, tp)
    return y[..., :t] if tp != t else y


class _DepthwiseSame(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, pad, dilation):
        ctx.save_for_backward(weight)
        ctx.pad, ctx.dilation = pad, dilation
        return _transposed_same(x, weight.flip(-1), pad, dilation)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        gx = _transposed_same(grad.contiguous(), weight, ctx.pad, ctx.dilation) if ctx.needs_input_grad[0] else None
        return gx, None, None, None


def supports(conv: nn.Conv1d) -> bool:
    """True when `conv` is a depthwise, stride-1, symmetric 'same' conv this module computes exactly."""
    k, d, p, s = conv.kernel_size[0], conv.dilation[0], conv.padding, conv.stride[0]
    if isinstance(p, str) or conv.padding_mode != "zeros":
        return False
    p = p[0]
    return (conv.groups == conv.in_channels == conv.out_channels and k > 1 and s == 1
            and (k - 1) % 2 == 0 and 2 * p == d * (k - 1))


class FastDepthwiseConv1d(nn.Module):
    """Drop-in for a depthwise `nn.Conv1d` (same attributes, same weight tensor, shared not copied)."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        if not supports(conv):
            raise ValueError(f"FastDepthwiseConv1d does not cover {conv}")
        self.weight = conv.weight
        self.bias = conv.bias
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode"):
            setattr(self, name, getattr(conv, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad and torch.is_grad_enabled():
            y = F.conv1d(x, self.weight, None, 1, self.padding, self.dilation, self.groups)
        else:
            y = _DepthwiseSame.apply(x, self.weight.detach(), self.padding[0], self.dilation[0])
        if self.bias is not None:
            y = y + self.bias[None, :, None]
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, kernel_size={self.kernel_size}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}")


def swap_depthwise(module: nn.Module) -> int:
    """Replace, in place, every supported depthwise `nn.Conv1d` inside `module`; returns how many."""
    n = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv1d and supports(child):
                setattr(parent, name, FastDepthwiseConv1d(child))
                n += 1
    return n


def inference_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` for decoding, its depthwise convs on the fast kernel: what the
    float model's transcripts are computed with (`evaluate`, the grid's FP32 row). Only the float32
    summation order differs from `model` (module doc); calibration keeps the model itself, whose
    activations set the quantized model's scales."""
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    swap_depthwise(fast)
    return fast
