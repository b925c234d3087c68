"""Mixed-precision weights under a size budget (HAWQ-V3's question, answered with measured output
error instead of Hessian traces): which convs get 4, 6 or 8 bits so that the weights fit
`budget_mb` MiB and the model's output moves least.

1. Sensitivity, zero-shot: for every conv l and width b, the relative squared error of the float
   model's logits on (a crop of) the synthetic calibration batch when conv l alone has its
   (BatchNorm-folded) weights rounded to b bits: s[l, b] = ||f_{l,b}(x) - f(x)||^2 / ||f(x)||^2.
   With ``bias_correction`` the rounded conv also gets the bias correction the converter will
   apply (its mean output shift removed, with input means measured on the same crop): a layer
   whose rounding error is mostly a mean shift is then cheap, as it will be in the model.
2. Allocation, greedy knapsack: every conv starts at the narrowest width; the upgrades
   (4 -> 6, 6 -> 8 of one conv) are taken in order of error saved per extra byte while they fit.
   Errors of different layers are taken as additive (the usual first-order assumption).

The sensitivities of one (model, crop, widths, settings) are computed once per process and, with
a `cache_dir`, once per machine (one small JSON file per content key): a size sweep measures
them once per seed and allocates every budget from them.

The result is a {nn.Conv1d: bits} map for ``convert.convert(layer_bits=...)``: the integer
program already carries a width per conv, so the model stays integer-only.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import time
from pathlib import Path

import torch
from torch import nn

MIB = 1 << 20
WIDTHS = (4, 6, 8)
CACHE_FORMAT = 1
_MEMO: dict[str, list[float]] = {}   # content key -> sensitivities in weight_convs x widths order
_SECONDS: dict[str, float] = {}      # content key -> seconds the measurement took (when it was made)


def weight_convs(model) -> list[tuple[nn.Conv1d, nn.BatchNorm1d | None]]:
    """Every conv of a ConvASR that the converter quantizes, with the BatchNorm folded into it."""
    from ..models.convasr import walk

    return [(site.conv, site.bn) for site in walk(model).sites()]


def edge_convs(model) -> list[nn.Conv1d]:
    """The first block's convs (they read the mel features) and the decoder (it writes the
    logits): the layers that 4-bit recipes conventionally keep at 8 bits (AdaRound, BRECQ, LSQ)."""
    from ..models.convasr import walk

    sites = walk(model)
    return [site.conv for site in sites.blocks[0].main] + [sites.decoder.conv]


def stored_params(conv: nn.Conv1d, bn) -> int:
    """Weights plus the folded bias (what ``experiments.model_size_mb`` counts per layer)."""
    return conv.weight.numel() + (conv.out_channels if (conv.bias is not None or bn is not None) else 0)


def size_mb(model, bits_of, weight_group: int = 0) -> float:
    """MiB of the stored weights when conv c has bits_of(c) bits, plus the per-group multipliers
    of the convs that get them (``quant.groups``)."""
    from .groups import is_grouped, multiplier_bits

    total = 0
    for c, bn in weight_convs(model):
        total += stored_params(c, bn) * bits_of(c)
        if is_grouped(bits_of(c), weight_group):
            total += multiplier_bits(c.weight[0].numel(), c.out_channels, weight_group)
    return total / 8 / MIB


@torch.no_grad()
def sensitivities(model, mel: torch.Tensor, lengths: torch.Tensor, widths=WIDTHS, weight_method: str = "minmax",
                  progress: bool = True, bias_correction: bool = False) -> dict:
    """{(conv, bits): relative logit error with that conv alone quantized} (module doc, step 1)."""
    from tqdm.auto import tqdm

    from ..calibration import collect
    from .weights import bias_correction as rounding_shift, quantize_weight
    from .bn import fold_batchnorm

    model = model.eval()
    ref = model.forward_features(mel, lengths)[0].double()
    energy = max(float(ref.pow(2).sum()), 1e-30)
    means = collect(model, [(mel, lengths)], ranges=False, means=True).input_means if bias_correction else None
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
        shift = {"value": None}

        def corrected(_m, _i, y, shift=shift):
            # the converter subtracts the shift from the folded bias; before the BatchNorm: shift / s
            return y if shift["value"] is None else y - shift["value"].to(y.dtype)[None, :, None]

        hook = conv.register_forward_hook(corrected)
        try:
            for bits in widths:
                w_q, s_w = quantize_weight(w, bits, weight_method)
                deq = w_q.double() * s_w.reshape(-1, 1, 1) / scale.reshape(-1, 1, 1)
                conv.weight.copy_(deq.to(original.dtype))
                if means is not None:
                    shift["value"] = rounding_shift(w, w_q, s_w, conv.groups, means[conv]) / scale
                y = model.forward_features(mel, lengths)[0].double()
                out[(conv, bits)] = float((y - ref).pow(2).sum()) / energy
        finally:
            hook.remove()
            conv.weight.copy_(original)
    return out


def _bn_scale(bn) -> torch.Tensor:
    from .bn import bn_params

    p = bn_params(bn)
    return (p.gamma.double() / torch.sqrt(p.var.double() + p.eps)).reshape(-1)


def sensitivity_key(model, mel: torch.Tensor, lengths: torch.Tensor, widths, weight_method: str,
                    bias_correction: bool) -> str:
    """Content key of a sensitivity measurement: the model's weights and statistics, the crop's
    values, and every setting (so a cached result is only ever reused for the same question)."""
    from ..synth import model_hash

    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "model": model_hash(model), "widths": list(widths),
                         "weight_method": weight_method, "bias_correction": bool(bias_correction),
                         "shape": list(mel.shape)}, sort_keys=True).encode())
    h.update(mel.detach().float().contiguous().numpy().tobytes())
    h.update(lengths.detach().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def cached_sensitivities(model, mel: torch.Tensor, lengths: torch.Tensor, widths=WIDTHS,
                         weight_method: str = "minmax", bias_correction: bool = False, cache_dir=None,
                         progress: bool = True) -> dict:
    """``sensitivities``, measured once per content key: kept for the process, and with
    `cache_dir` as ``<cache_dir>/<key>.json`` (written atomically; an unreadable or mismatched
    file is measured again and replaced)."""
    from ..models.checkpoint import atomic_write_bytes

    convs = weight_convs(model)
    widths = tuple(widths)
    key = sensitivity_key(model, mel, lengths, widths, weight_method, bias_correction)
    values = _MEMO.get(key)
    path = Path(cache_dir) / f"{key}.json" if cache_dir is not None else None
    if values is None and path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key and len(stored["values"]) == len(convs) * len(widths):
                values = [float(v) for v in stored["values"]]
                _SECONDS[key] = float(stored.get("seconds", "nan"))
        except (OSError, ValueError, KeyError, TypeError):
            values = None
    if values is None:
        t0 = time.perf_counter()
        sens = sensitivities(model, mel, lengths, widths, weight_method, progress, bias_correction)
        _SECONDS[key] = time.perf_counter() - t0
        values = [sens[(c, b)] for c, _ in convs for b in widths]
        if path is not None:
            blob = json.dumps({"key": key, "widths": list(widths), "weight_method": weight_method,
                               "bias_correction": bool(bias_correction), "convs": len(convs),
                               "seconds": round(_SECONDS[key], 1), "values": values})
            atomic_write_bytes(path, lambda f: f.write(blob.encode()))
    _MEMO[key] = values
    it = iter(values)
    return {(c, b): next(it) for c, _ in convs for b in widths}


def sensitivity_seconds(model, mel: torch.Tensor, lengths: torch.Tensor, widths=WIDTHS,
                        weight_method: str = "minmax", bias_correction: bool = False) -> float | None:
    """How long the (cached) measurement of these sensitivities took when it was made (None: not
    measured or read in this process)."""
    return _SECONDS.get(sensitivity_key(model, mel, lengths, tuple(widths), weight_method, bias_correction))


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


def sensitivity_crop(batches, frames: int = 200, items: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `items` x `frames` of the first calibration batch: what the sensitivities see."""
    mel, lengths = batches[0]
    t = min(frames, int(lengths[:items].min()))
    return mel[:items, :, :t].float(), torch.full((min(items, mel.shape[0]),), t)


def allocate_bits(model, batches, budget_mb: float, weight_method: str = "minmax", frames: int = 200,
                  items: int = 2, widths=WIDTHS, progress: bool = True, bias_correction: bool = False,
                  cache_dir=None) -> dict:
    """Sensitivities on the first `items` x `frames` of the first calibration batch (with the
    bias correction the model will get, if it gets one), then the allocation under `budget_mb`
    MiB: {nn.Conv1d: bits}."""
    mel, lengths = sensitivity_crop(batches, frames, items)
    sens = cached_sensitivities(model, mel, lengths, widths, weight_method, bias_correction, cache_dir, progress)
    return allocate(model, sens, budget_mb, widths)


def bits_histogram(bits: dict) -> dict[int, int]:
    """{width: how many convs} of an allocation."""
    out: dict[int, int] = {}
    for b in bits.values():
        out[int(b)] = out.get(int(b), 0) + 1
    return dict(sorted(out.items()))
