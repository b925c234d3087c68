"""The Conformer's weights below 8 bits: which layers stay at 8, per-group multipliers, bias
correction and learned rounding, on the Conformer's one walk with ConvASR's machinery.

Nothing here is a second copy of ``quant.adaround``: ``GramTaps`` is one more visitor of
``convert_conformer.walk`` (the float walk, ``FloatTaps``) that also adds each weight layer's input
columns to a ``quant.adaround.Grams``; each layer then goes through ``adaround.learn_conv`` as a
``FoldedConv``, exactly as a ConvASR conv does.

The objective is the symmetric one (``AdaRoundConfig.asymmetric = False``, every recipe's setting):
each layer's own output error on the *float* model's inputs, columns centered on their mean, with
the closed-form bias shift mu (w - w~) that removes the mean error (``centered``; with 0 iterations
that is round-to-nearest plus bias correction, the ``bc`` recipe). One float pass over the
calibration batches therefore gives every layer's Gram matrices at once. Layers are:

    Linear        columns: the valid frames of its input [N, in]
    Conv1d        ``adaround.im2col`` (depthwise: a K x K space per channel)
    Conv2d        the patches of its input image on valid output frames [N, Cin kT kF] (F.unfold)

linear_q runs twice in rel_pos attention (u and v folded into two copies): one weight, one set of
codes and one shift (its input is the same). A dense layer with more than ``adaround.MAX_COLUMNS``
input columns keeps round-to-nearest codes and gets the mean shift only.

Per layer, the codes and shift are cached under ``cache_dir / key / <layer>.pt`` (key: a hash of
the settings, every layer's weight and grid, and the batches), so an interrupted run resumes.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .convert_conformer import FloatTaps, conv_out_lengths, float_forward, folded_weight_bias
from .models.convasr import frame_mask
from .quant.adaround import (AdaRoundConfig, FoldedConv, Grams, LearnedRounding, bias_shift, digest, grid_step,
                             learn_conv, learnable, nearest_codes)

CACHE_FORMAT = 1
#: the parts of a Conformer that a recipe's ``edge_bits`` keeps wider (``edge_layers``)
EDGE_PARTS = ("subsampling", "output", "attention")
#: the parts ``edge_bits`` keeps when neither the caller nor the recipe names them (each recipe names
#: its own: ``quantize.RECIPES[...]["edge_parts"]``, chosen label-free, tools/select_conformer_recipes.sh)
DEFAULT_EDGE_PARTS = ("subsampling", "output")


class LayerList(FloatTaps):
    """The float walk, recording each weight layer it meets: {layer: (name, BatchNorm or None)} in
    forward order, and handing its input to ``visit`` under its first name only (linear_q's second
    copy in rel_pos attention reads the same input)."""

    def __init__(self):
        super().__init__()
        self.layers: dict = {}

    def visit(self, name, x, layer, lengths) -> None:
        """What a subclass does with a layer's input, once per batch (here: nothing)."""

    def _met(self, name, x, layer, lengths, bn):
        if self.layers.setdefault(layer, (name, bn))[0] == name:
            self.visit(name, x, layer, lengths)

    def conv(self, name, x, layer, lengths, bn=None, extra_bias=None):
        self._met(name, x, layer, lengths, bn)
        return super().conv(name, x, layer, lengths, bn, extra_bias)

    def logits(self, x, dec, lengths):
        self._met("decoder", x, dec, lengths, None)
        return super().logits(x, dec, lengths)


def weight_layers(model) -> dict:
    """{layer: (name, bn)} of every weight layer the integer program quantizes, in forward order
    (from a float pass over a short silent input: the walk decides, not a second list)."""
    taps = LayerList()
    frames = 64
    float_forward(model.eval(), torch.zeros(1, int(model.encoder.feat_in), frames), torch.tensor([frames]), taps)
    return taps.layers


def edge_layers(model, parts=DEFAULT_EDGE_PARTS, layers: dict | None = None) -> list[nn.Module]:
    """The layers of `parts` (EDGE_PARTS): subsampling (the pre_encode convs and its `out` Linear:
    they read the mel features), output (the decoder and an out_proj: they write the logits),
    attention (every layer's q, k, v and output projections). layers: ``weight_layers(model)``
    when the caller has it."""
    unknown = sorted(set(parts) - set(EDGE_PARTS))
    if unknown:
        raise ValueError(f"unknown Conformer edge part(s) {unknown}; choose from {EDGE_PARTS}")
    keep = []
    for layer, (name, _) in (layers or weight_layers(model)).items():
        part = ("subsampling" if name.startswith("encoder.pre_encode") else
                "output" if name in ("decoder", "encoder.out_proj") else
                "attention" if ".self_attn." in name else None)
        if part in parts:
            keep.append(layer)
    return keep


def size_mb(model, bits_of, weight_group: int = 0, other_bits: int = 8, layers: dict | None = None) -> float:
    """MiB of the stored parameters: each weight layer (weights and its folded bias) at
    bits_of(layer), plus the per-group multipliers of the layers that get them (``quant.groups``),
    plus every other parameter (LayerNorms, rel_pos's position biases and linear_pos) at
    other_bits. With one width everywhere: ``experiments.model_size_mb`` (tested). layers:
    ``weight_layers(model)`` when the caller has it."""
    from .quant.groups import is_grouped, multiplier_bits
    from .quant.mixed_precision import MIB

    layers = layers or weight_layers(model)
    counted = set()
    total = 0
    for layer, (_, bn) in layers.items():
        counted.update(id(p) for p in layer.parameters(recurse=False))
        if bn is not None:
            counted.update(id(p) for p in bn.parameters())
        bits = bits_of(layer)
        cout = layer.weight.shape[0]
        total += (layer.weight.numel() + (cout if layer.bias is not None or bn is not None else 0)) * bits
        if is_grouped(bits, weight_group):
            total += multiplier_bits(layer.weight[0].numel(), cout, weight_group)
    total += sum(p.numel() for p in model.parameters() if id(p) not in counted) * other_bits
    return total / 8 / MIB


def input_columns(x: torch.Tensor, layer: nn.Module, lengths: torch.Tensor) -> torch.Tensor:
    """The columns a layer multiplies its weight with, on valid output frames: [N, n] (column index
    c*K + k, the weight's layout; Conv2d: c*kT*kF + i*kF + j), depthwise convs [C, N, K]."""
    if isinstance(layer, nn.Linear):   # x [B, C, T]
        return x.transpose(1, 2)[frame_mask(lengths, x.shape[-1])].double()
    out_lens = conv_out_lengths(lengths, layer)
    if isinstance(layer, nn.Conv1d):
        from .quant.adaround import im2col, is_depthwise

        c = im2col(x, lengths, layer, out_lens)   # [C, N, K]
        return c if is_depthwise(layer) else c.permute(1, 0, 2).reshape(c.shape[1], -1)
    # Conv2d on the image [B, C, T, F] (time on axis 2), padded frames already zeroed by the walk
    kt, kf = layer.kernel_size
    u = F.unfold(x.double(), (kt, kf), padding=layer.padding, stride=layer.stride)   # [B, C kT kF, T' F']
    t_out = (x.shape[2] + 2 * layer.padding[0] - kt) // layer.stride[0] + 1
    f_out = u.shape[-1] // t_out
    keep = frame_mask(out_lens, t_out)[:, :, None].expand(-1, -1, f_out).reshape(x.shape[0], -1)   # [B, T' F']
    if layer.groups > 1:   # depthwise: a kT kF space per channel
        b, _, n = u.shape
        return u.reshape(b, layer.in_channels, kt * kf, n).permute(1, 0, 3, 2)[:, keep]
    return u.transpose(1, 2)[keep]


class GramTaps(LayerList):
    """The float walk, adding each wanted weight layer's input columns to its Gram matrices
    ({layer: ``Grams``})."""

    def __init__(self, wanted):
        super().__init__()
        self.wanted = set(wanted)
        self.grams: dict = {}
        self.means: dict = {}   # {layer: (column sum, count)} of the layers not learnable

    def visit(self, name, x, layer, lengths):
        if layer not in self.wanted:
            return
        cols = input_columns(x, layer, lengths)
        if not learnable(layer):   # too wide for a Gram matrix: the mean column only
            total, n = self.means.get(layer, (0.0, 0))
            self.means[layer] = (total + cols.sum(dim=-2), n + cols.shape[-2])
            return
        g = self.grams.get(layer)
        if g is None:
            g = self.grams[layer] = Grams(layer, depthwise=cols.dim() == 3)
        g.add_columns(cols)


def _folded(model_layers: dict, layer, bits_of, weight_method: str, weight_group: int) -> FoldedConv:
    name, bn = model_layers[layer]
    w, b = folded_weight_bias(layer, bn)
    bits = bits_of(layer)
    return FoldedConv(name, layer, layer, w, b, grid_step(w, bits, weight_method, weight_group), bits)


def cache_key(folded: list[FoldedConv], batches, cfg: AdaRoundConfig) -> str:
    parts = [{"format": CACHE_FORMAT, "cfg": {k: v for k, v in asdict(cfg).items() if not k.startswith("block_")}}]
    for f in folded:
        parts += [f.name, f.bits, f.weight.float(), f.scale.float()]
    for mel, lens in batches:
        parts += [mel.float(), lens]
    return digest(*parts)


def learn_conformer_rounding(model, batches, bits_of, weight_method: str = "minmax",
                             cfg: AdaRoundConfig | None = None, cache_dir=None, progress: bool = True,
                             weight_group: int = 0, layers: dict | None = None) -> LearnedRounding:
    """Integer codes (on ``quant.weights.weight_grid``'s grid at ``bits_of(layer)``, per-group
    multipliers where ``weight_group`` applies) and bias shifts of every weight layer of a
    ConformerCTC, keyed by layer module, as ``quant.adaround.adaround`` gives them for a ConvASR.
    cfg.iterations = 0: round-to-nearest codes with the bias correction. Only the symmetric,
    centered objective is supported (module doc). layers: ``weight_layers(model)`` when the caller has it."""
    from tqdm.auto import tqdm

    from .models.checkpoint import atomic_write_bytes

    cfg = cfg or AdaRoundConfig(asymmetric=False)
    if cfg.asymmetric or not cfg.centered or cfg.block_iterations or cfg.scale_search or cfg.relu_aware:
        raise ValueError("Conformer learned rounding: the symmetric, centered objective only (no asymmetric "
                         "walk, block stage, scale search or ReLU-aware objective)")
    model = model.eval()
    start = time.perf_counter()
    layers = layers or weight_layers(model)
    folded = [_folded(layers, layer, bits_of, weight_method, weight_group) for layer in layers]
    # batch by batch (attention's T x T scores: real calibration's utterances are not merged into one batch)
    batches = [(m.float(), l.to(torch.int64)) for m, l in batches]
    folder = Path(cache_dir) / cache_key(folded, batches, cfg) if cache_dir is not None else None
    cached = {f.name: folder / f"{f.name}.pt" for f in folded} if folder is not None else {}
    todo = [f for f in folded if not (f.name in cached and cached[f.name].is_file())]
    taps = GramTaps([f.module for f in todo])
    for mel, lens in batches if todo else []:   # one float pass gives every layer's Gram matrices
        float_forward(model, mel, lens, taps)
    codes, shifts, errors = {}, {}, {}
    for f in tqdm(folded, desc="conformer rounding", disable=not progress):
        path = cached.get(f.name)
        if path is not None and path.is_file():
            payload = torch.load(path, map_location="cpu", weights_only=True)
            codes[f.module] = payload["codes"].double()
            if payload.get("shift") is not None:
                shifts[f.module] = payload["shift"].double()
            continue
        if f.module in taps.grams:
            with torch.enable_grad():
                c, shift, errors[f.name] = learn_conv(f, taps.grams[f.module], cfg)
        else:   # too wide for a Gram matrix: nearest codes, the mean shift
            total, n = taps.means[f.module]
            c, cout = nearest_codes(f), f.weight.shape[0]
            shift = bias_shift(c.reshape(cout, -1) * f.scale.reshape(cout, -1), f.weight.reshape(cout, -1),
                               total / n, total / n)
        codes[f.module] = c.reshape(f.weight.shape)
        shifts[f.module] = shift
        if path is not None:
            payload = {"codes": codes[f.module].to(torch.int16), "shift": shift.double()}
            atomic_write_bytes(path, lambda fh, p=payload: torch.save(p, fh))
    return LearnedRounding(codes, shifts, {}, errors, time.perf_counter() - start)
