"""Mixed-precision weights under a size budget (HAWQ-V3's question, answered with measured output
error instead of Hessian traces): which convs get 4, 6 or 8 bits so that the weights fit
`budget_mb` MiB and the model's output moves least.

1. Sensitivity, zero-shot: for every conv l and width b, the relative squared error of the float
   model's logits on (a crop of) the synthetic calibration batch when conv l alone has its
   (BatchNorm-folded) weights rounded to b bits: s[l, b] = ||f_{l,b}(x) - f(x)||^2 / ||f(x)||^2.
2. Allocation, greedy knapsack: every conv starts at the narrowest width; the upgrades
   (4 -> 6, 6 -> 8 of one conv) are taken in order of error saved per extra byte while they fit.
   Errors of different layers are taken as additive (the usual first-order assumption).

The result is a {nn.Conv1d: bits} map for ``convert.convert(layer_bits=...)``: the integer
program already carries a width per conv, so the model stays integer-only.
"""

from __future__ import annotations

import heapq

import torch
from torch import nn

MIB = 1 << 20
WIDTHS = (4, 6, 8)


def weight_convs(model) -> list[tuple[nn.Conv1d, nn.BatchNorm1d | None]]:
    """Every conv of a ConvASR that the converter quantizes, with the BatchNorm folded into it."""
    from ..models.convasr import MaskedConv1d

    out = []
    for block in model.encoder.encoder:
        layers = list(block.mconv)
        for i, layer in enumerate(layers):
            if isinstance(layer, MaskedConv1d):
                bn = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm1d) else None
                out.append((layer.conv, bn))
        if block.res is not None:
            out += [(rconv.conv, rbn) for rconv, rbn in block.res]
    out.append((model.decoder.decoder_layers[0], None))
    return out


def stored_params(conv: nn.Conv1d, bn) -> int:
    """Weights plus the folded bias (what ``experiments.model_size_mb`` counts per layer)."""
    return conv.weight.numel() + (conv.out_channels if (conv.bias is not None or bn is not None) else 0)


def size_mb(model, bits_of) -> float:
    """MiB of the stored weights when conv c has bits_of(c) bits."""
    return sum(stored_params(c, bn) * bits_of(c) for c, bn in weight_convs(model)) / 8 / MIB


@torch.no_grad()
def sensitivities(model, mel: torch.Tensor, lengths: torch.Tensor, widths=WIDTHS, weight_method: str = "minmax",
                  progress: bool = True) -> dict:
    """{(conv, bits): relative logit error with that conv alone quantized} (module doc, step 1)."""
    from tqdm.auto import tqdm

    from ..convert import _quantize_weight
    from .bn import fold_batchnorm

    model = model.eval()
    ref = model.forward_features(mel, lengths)[0].double()
    energy = max(float(ref.pow(2).sum()), 1e-30)
    out = {}
    convs = weight_convs(model)
    for conv, bn in tqdm(convs, desc="sensitivity", disable=not progress):
        original = conv.weight.detach().clone()
        w = conv.weight.detach().double()
        b = conv.bias.detach().double() if conv.bias is not None else None
        scale = torch.ones(w.shape[0], dtype=torch.float64)
        if bn is not None:   # round the folded weight, then unfold: W_f = W * s  ->  W = W_f / s
            w_f, _ = fold_batchnorm(w, b, bn)
            scale = _bn_scale(bn)
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # a dead channel: weights unused
            w = w_f.double()
        try:
            for bits in widths:
                w_q, s_w = _quantize_weight(w, bits, weight_method)
                deq = w_q.double() * s_w.reshape(-1, 1, 1) / scale.reshape(-1, 1, 1)
                conv.weight.copy_(deq.to(original.dtype))
                y = model.forward_features(mel, lengths)[0].double()
                out[(conv, bits)] = float((y - ref).pow(2).sum()) / energy
        finally:
            conv.weight.copy_(original)
    return out


def _bn_scale(bn) -> torch.Tensor:
    from .bn import bn_params

    p = bn_params(bn)
    return (p.gamma.double() / torch.sqrt(p.var.double() + p.eps)).reshape(-1)


def allocate(model, sens: dict, budget_mb: float, widths=WIDTHS) -> dict:
    """Greedy knapsack (module doc, step 2): {conv: bits} with size_mb <= budget_mb."""
    widths = sorted(widths)
    convs = weight_convs(model)
    bits = {c: widths[0] for c, _ in convs}
    used = size_mb(model, lambda c: bits[c]) * 8 * MIB
    budget = budget_mb * 8 * MIB
    if used > budget + 1e-6:
        raise ValueError(f"size budget {budget_mb} MiB is below the all-{widths[0]}-bit size "
                         f"{used / 8 / MIB:.2f} MiB")
    params = {c: stored_params(c, bn) for c, bn in convs}
    heap = []

    def push(c, i):
        if i + 1 < len(widths):
            gain = sens[(c, widths[i])] - sens[(c, widths[i + 1])]
            cost = params[c] * (widths[i + 1] - widths[i])
            heapq.heappush(heap, (-gain / cost, id(c), c, i))

    for c, _ in convs:
        push(c, 0)
    while heap:
        _, _, c, i = heapq.heappop(heap)
        cost = params[c] * (widths[i + 1] - widths[i])
        if used + cost <= budget:
            bits[c] = widths[i + 1]
            used += cost
            push(c, i + 1)
    return bits


def allocate_bits(model, batches, budget_mb: float, weight_method: str = "minmax", frames: int = 200,
                  items: int = 2, widths=WIDTHS, progress: bool = True) -> dict:
    """Sensitivities on the first `items` x `frames` of the first calibration batch, then the
    allocation under `budget_mb` MiB: {nn.Conv1d: bits}."""
    mel, lengths = batches[0]
    t = min(frames, int(lengths[:items].min()))
    sens = sensitivities(model, mel[:items, :, :t].float(), torch.full((min(items, mel.shape[0]),), t),
                         widths, weight_method, progress)
    return allocate(model, sens, budget_mb, widths)
