"""Cross-layer equalization of separable convs (DFQ, Nagel et al. 2019), from the weights alone.

In a QuartzNet/Jasper separable sub-block a depthwise conv (no bias, nothing between) feeds a
1x1 pointwise conv. Scaling depthwise channel i by 1/s_i and the pointwise conv's input column i
by s_i is an exact identity of the float model (the mask and the conv are linear, per channel).
It changes what 4-bit quantization does: the pointwise conv's per-output-channel scale is set
by the largest |w| of its row, so a few large columns (inputs the model reads with large weights
because they are small) leave every other weight of the row one or two levels. DFQ equalizes the
two layers' per-channel ranges:

    r_dw[i] = max |w_dw[i, :]|,   r_pw[i] = max_o |W_pw[o, i]| (BatchNorm after it folded)
    s_i = sqrt(r_dw[i] / r_pw[i])      ->  both ranges become sqrt(r_dw[i] r_pw[i])

normalised to geometric mean 1 (a common factor moves nothing between the layers). The depthwise
weights are quantized per channel, so their error does not change; the pointwise rows' spread
shrinks.

Weights only, on purpose: a choice that cannot fit the synthetic batch. The choices that lean on
it (output-aware scale search, learning on the quantized walk's inputs) measured worse on speech
than without them (results/beyond_adaround.csv).
"""

from __future__ import annotations

import torch
from torch import nn

from .bn import fold_batchnorm


def separable_pairs(model) -> list[tuple]:
    """(depthwise MaskedConv1d, pointwise MaskedConv1d, BatchNorm after it or None) of every
    separable sub-block of a ConvASR encoder, in order."""
    from ..models.convasr import walk

    pairs = []
    for blk in walk(model).blocks:
        for dw, pw in zip(blk.main, blk.main[1:]):
            c = dw.conv
            if dw.feeds_conv and c.groups > 1 and c.groups == c.in_channels == c.out_channels and c.bias is None \
                    and pw.conv.kernel_size[0] == 1 and pw.conv.groups == 1:
                pairs.append((dw.module, pw.module, pw.bn))
    return pairs


def equalization_scales(dw: nn.Conv1d, pw: nn.Conv1d, bn: nn.BatchNorm1d | None) -> torch.Tensor:
    """s [C] (float64, geometric mean 1): divide depthwise channel i by s_i, multiply the pointwise
    input column i by s_i. Channels with an all-zero side keep s_i = 1."""
    r_dw = dw.weight.detach().double().abs().amax(dim=(1, 2))
    w = pw.weight.detach().double()
    if bn is not None:
        w, _ = fold_batchnorm(w, None, bn)
    r_pw = w[:, :, 0].abs().amax(dim=0)
    live = (r_dw > 0) & (r_pw > 0)
    s = torch.ones_like(r_dw)
    s[live] = (r_dw[live] / r_pw[live]).sqrt()
    return s / s[live].log().mean().exp() if bool(live.any()) else s


@torch.no_grad()
def equalize_separable(model, convs=None) -> int:
    """Equalize every separable pair of the ConvASR `model` in place (module doc), or only the
    pairs whose pointwise conv (nn.Conv1d) is in `convs`; returns how many. The float function is
    unchanged (up to float rounding); module identities are kept (per-conv settings stay valid)."""
    n = 0
    chosen = None if convs is None else {id(c) for c in convs}
    for dw, pw, bn in separable_pairs(model):
        if chosen is not None and id(pw.conv) not in chosen:
            continue
        s = equalization_scales(dw.conv, pw.conv, bn)
        dw.conv.weight.div_(s.to(dw.conv.weight.dtype)[:, None, None])
        pw.conv.weight.mul_(s.to(pw.conv.weight.dtype)[None, :, None])
        n += 1
    return n
