"""Float model + calibration batches -> integer model, whatever the architecture.

The one entry point the command line and the experiment grid use: it calibrates (one pass
over the batches) and converts with the converter of the model's kind: ``convert`` for ConvASR
(QuartzNet, JasperDR), ``convert_conformer`` for Conformer-CTC.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

#: weight rounding kinds (``--rounding``): round-to-nearest, GPTQ on the calibration Hessians
#: (quant/gptq.py), learned rounding by block reconstruction (quant/adaround.py)
ROUNDINGS = ("nearest", "gptq", "adaround")

#: named settings (``intasr quantize --recipe``): the paper's method (round-to-nearest, no bias
#: correction); round-to-nearest + bias correction; learned rounding with the joint bias correction
#: (quant/adaround.py: centered objective, on the float model's inputs, 100 Adam steps per conv)
#: with the first block's convs and the decoder at 8 bits (``edge_bits``: a fraction of a percent of the
#: weights; the convention of AdaRound, BRECQ and LSQ; ``--edge-bits 0``: uniform), after
#: cross-layer equalization of the 4-bit separable pairs (quant/equalize.py, weights only;
#: ``--no-equalize``: without)
RECIPES = {
    "paper": {"rounding": "nearest", "bias_correction": False},
    "bc": {"rounding": "nearest", "bias_correction": True},
    "adaround": {"rounding": "adaround", "bias_correction": True, "edge_bits": 8, "equalize": True,
                 "adaround": {"iterations": 100, "centered": True, "asymmetric": False}},
}
#: adaround's settings on a finer grid: a 4-bit integer multiplier per 16 weights of a row of each
#: 4-bit conv (quant/groups.py; +4/16 bit per weight; ``--weight-group 0``: adaround's grid)
RECIPES["grouped"] = {**RECIPES["adaround"], "weight_group": 16}
#: a Conformer's parts kept at edge_bits (``conformer_weights.EDGE_PARTS``), per recipe: each the label-free
#: choice among the parts measured (results/conformer_recipe_selection.csv; a ConvASR's edges are fixed)
RECIPES["adaround"]["edge_parts"] = ("subsampling", "output")
RECIPES["grouped"]["edge_parts"] = ("subsampling", "output", "attention")


def recipe_of(row) -> str:
    """The RECIPES name whose settings a results row has (``tools/run_adaround.py``'s columns: a
    dict or a pandas row; absent or empty columns are the settings' defaults), else ''. Computed,
    not read from the row's ``recipe`` column, which names the recipes as they were when it ran."""
    def get(k, default=None):
        v = row.get(k, default) if hasattr(row, "get") else getattr(row, k, default)
        return default if v is None or (isinstance(v, float) and math.isnan(v)) or v == "" else v

    def flag(k):
        return str(get(k, False)) == "True"

    def num(k):
        return int(float(get(k, 0)))

    if get("size_budget_mb") is not None or str(get("calibration", "synthetic")) != "synthetic":
        return ""
    parts = str(get("edge_parts", ""))
    if num("depthwise_bits"):
        return ""
    conformer = bool(parts)   # a Conformer row with an edge width: no separable pairs to equalize
    for name, r in RECIPES.items():
        ada = r.get("adaround", {})
        if (r["rounding"] == get("rounding") and r["bias_correction"] == flag("bias_correction")
                and ada.get("iterations", 0) == num("adaround_iterations")
                and ada.get("centered", False) == flag("adaround_centered")
                and (not ada.get("asymmetric", True)) == flag("adaround_symmetric")
                and ada.get("scale_search", False) == flag("adaround_scale_search")
                and ada.get("relu_aware", False) == flag("adaround_relu_aware")
                and ada.get("block_iterations", 0) == num("adaround_block_iterations")
                and (conformer or r.get("equalize", False) == flag("equalize"))
                and (not conformer or "+".join(r.get("edge_parts", ())) == parts)
                and int(r.get("edge_bits") or 0) == num("edge_bits")
                and int(r.get("weight_group", 0)) == num("weight_group")):
            return name
    return ""


def default_recipe(weight_bits: int, mixed_precision: bool = False, conformer: bool = False) -> str:
    """The recipe ``intasr quantize`` uses when none is named: ``grouped`` at 4 bits and below,
    ``bc`` below 8 bits (a Conformer: ``adaround``), ``paper`` at 8; with a size budget
    (``mixed_precision``) ``bc`` below 8 bits, the setting its budgets were measured with. Each
    width's default is the label-free choice (``selection.choose``) of results/recipe_selection.csv
    (QuartzNet-15x5) and results/conformer_recipe_selection.csv (the hama Conformer), tested."""
    if weight_bits <= 4 and not mixed_precision:
        return "grouped"
    if weight_bits < 8:
        return "adaround" if conformer and not mixed_precision else "bc"
    return "paper"


@dataclass(frozen=True)
class Recipe:
    """What ``quantize`` does beyond the widths, as one value the command line, the grid and the
    tools pass around: `name` (a RECIPES key), `label` (the name, or "flags" when the default was
    replaced by explicit flags) and the settings ``quantize`` takes."""

    name: str
    label: str
    rounding: str = "nearest"
    bias_correction: bool = False
    adaround: dict = field(default_factory=dict)
    edge_bits: int | None = None
    equalize: bool = False
    weight_group: int = 0
    edge_parts: tuple | None = None   # a Conformer's parts kept at edge_bits (None: ConvASR, or the default)

    @classmethod
    def resolve(cls, name: str, weight_bits: int, *, conformer: bool = False, size_budget_mb: float | None = None,
                rounding: str | None = None, bias_correction: bool = False, adaround_cache=None,
                adaround_iterations: int | None = None, block_iterations: int | None = None,
                edge_bits: int | None = None, equalize: bool | None = None,
                weight_group: int | None = None) -> "Recipe":
        """The recipe `name` ("default": the width's, ``default_recipe``; "paper" when `rounding` or
        `bias_correction` is given; a Conformer's recipes skip equalization, it has no separable pairs),
        each setting overridden where given: edge_bits (none under a size budget, which allocates
        every conv), weight_group (0, per-channel scales only, under a size budget or GPTQ)."""
        explicit = rounding is not None or bias_correction
        chosen = name
        if name == "default":
            chosen = ("paper" if explicit
                      else default_recipe(weight_bits, mixed_precision=size_budget_mb is not None,
                                          conformer=conformer))
        settings = RECIPES[chosen]
        rounding = rounding or settings["rounding"]
        ada = {**settings.get("adaround", {}), "cache_dir": adaround_cache}
        if adaround_iterations is not None:
            ada["iterations"] = adaround_iterations
        if block_iterations is not None:
            ada["block_iterations"] = block_iterations
        budget = size_budget_mb is not None
        if edge_bits is None and not budget:
            edge_bits = settings.get("edge_bits")
        if weight_group is None:
            weight_group = 0 if budget or rounding == "gptq" else settings.get("weight_group", 0)
        if equalize is None:   # a Conformer has no separable conv pairs to equalize
            equalize = bool(settings.get("equalize", False)) and not conformer
        parts = settings.get("edge_parts") if conformer and edge_bits else None
        return cls(chosen, "flags" if name == "default" and explicit else chosen, rounding,
                   bias_correction or settings["bias_correction"], ada, edge_bits, bool(equalize), weight_group,
                   None if parts is None else tuple(parts))

    @classmethod
    def custom(cls, name: str = "", **settings) -> "Recipe":
        """A recipe given setting by setting (a grid cell's, a tool run's), not by a RECIPES name:
        `name` (also the label) the RECIPES entry those settings are, where the caller knows it
        (``recipe_of`` of its results row), else ''."""
        return cls(name, name, **settings)

    def settings(self) -> dict:
        """The keyword arguments of ``quantize`` this recipe sets (no AdaRound options: None, as
        ``quantize``'s default)."""
        out = {"rounding": self.rounding, "bias_correction": self.bias_correction,
               "adaround": self.adaround or None, "edge_bits": self.edge_bits or None, "equalize": self.equalize,
               "weight_group": self.weight_group}
        if self.edge_parts:   # a Conformer recipe's own parts
            out["edge_parts"] = list(self.edge_parts)
        return out


def is_conformer(model) -> bool:
    from .models.conformer import ConformerCTC

    return isinstance(model, ConformerCTC)


def quantize(model, batches, weight_bits: int = 8, act_bits: int = 8, *, observer: str = "minmax",
             weight_method: str = "minmax", bias_correction: bool = False, rounding: str = "nearest",
             depthwise_bits: int | None = None, residual_bits: int | None = None, prob_bits: int | None = None,
             info: dict | None = None, adaround: dict | None = None, size_budget_mb: float | None = None,
             mixed_precision: dict | None = None, edge_bits: int | None = None, equalize: bool = False,
             weight_group: int = 0, edge_parts=None, progress: bool = True):
    """Calibrate `model` on (mel, lengths) batches and convert it to an integer model.

    rounding: one of ROUNDINGS. adaround: ``quant.adaround.AdaRoundConfig`` fields plus
    ``cache_dir`` (where each block's learned codes are kept; None: not cached).
    size_budget_mb: mixed precision (``quant.mixed_precision``): per-conv weight widths from
    {4, 6, 8} chosen by sensitivity on the batches so that the weights fit this many MiB.
    mixed_precision: ``mixed_precision.allocate_bits`` options (e.g. ``cache_dir`` for the
    sensitivities; ``bias_correction`` defaults to this call's: sensitivities measured with the
    correction the model gets).
    edge_bits: the first block's convs and the decoder at this width (``mixed_precision.edge_convs``;
    not with a size budget, which allocates every conv).
    equalize: cross-layer equalization of the separable pairs whose pointwise conv is quantized
    below 8 bits (``quant.equalize``; on a copy of the model, from its weights alone).
    weight_group: an integer multiplier per group of this many weights of a row for the convs of
    at most 4 bits (``quant.groups``; 0: per-channel scales only).
    edge_parts (Conformer): which parts edge_bits keeps wider (``conformer_weights.EDGE_PARTS``;
    default ``DEFAULT_EDGE_PARTS``)."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; choose from {ROUNDINGS}")
    if is_conformer(model):
        return _quantize_conformer(model, list(batches), weight_bits, act_bits, observer=observer,
                                   weight_method=weight_method, bias_correction=bias_correction, rounding=rounding,
                                   depthwise_bits=depthwise_bits, residual_bits=residual_bits, prob_bits=prob_bits,
                                   info=info, adaround=adaround, size_budget_mb=size_budget_mb, edge_bits=edge_bits,
                                   equalize=equalize, weight_group=weight_group, edge_parts=edge_parts,
                                   progress=progress)
    from .models.convasr import ConvASR

    if not isinstance(model, ConvASR):
        raise TypeError(f"cannot quantize a {type(model).__name__}")
    if edge_parts:
        raise ValueError("--edge-parts: the Conformer's parts; a ConvASR's edges are its first block and decoder")
    if size_budget_mb is not None and edge_bits:
        raise ValueError("--edge-bits with --size-budget-mb: the budget allocates every conv's width; choose one")
    if weight_group and (size_budget_mb is not None or rounding == "gptq"):
        raise ValueError("--weight-group: not with --size-budget-mb (its sensitivities are per-channel) "
                         "or --rounding gptq")
    if residual_bits or prob_bits:
        raise ValueError("--residual-bits / --prob-bits: supported for the Conformer only")
    from .calibration import collect
    from .convert import convert
    from .quant.weights import weight_bits_of
    from .quant.mixed_precision import size_mb

    batches = list(batches)
    if equalize:   # a copy: the caller's model is not touched; its convs keep their identity below
        model = copy.deepcopy(model)
    info = dict(info or {})
    layer_bits = None
    if size_budget_mb is not None:
        from .quant.mixed_precision import allocate_bits

        opts = {"bias_correction": bias_correction, **(mixed_precision or {})}
        layer_bits = allocate_bits(model, batches, size_budget_mb, weight_method=weight_method, progress=progress,
                                   **opts)
        info["size_budget_mb"] = size_budget_mb
    elif edge_bits:
        from .quant.mixed_precision import edge_convs

        layer_bits = {conv: int(edge_bits) for conv in edge_convs(model)}
        info["edge_bits"] = int(edge_bits)

    def bits_of(conv):   # every conv's width: layer_bits (budget or edges), else depthwise / weight bits
        return weight_bits_of(conv, weight_bits, depthwise_bits, layer_bits)

    info["size_mb"] = size_mb(model, bits_of, weight_group)
    if weight_group:
        info["weight_group"] = weight_group
    if equalize:
        from .quant.equalize import equalize_separable, separable_pairs

        info["equalized"] = equalize_separable(model, [pw.conv for _, pw, _ in separable_pairs(model)
                                                       if bits_of(pw.conv) < 8])
    stats = collect(model, batches, means=bias_correction, hessians=rounding == "gptq", observer=observer)
    codes, shifts, scales, input_means = None, None, None, stats.input_means
    if rounding == "adaround":
        from .quant.adaround import AdaRoundConfig, adaround as learn_rounding

        opts = dict(adaround or {})
        cache_dir = opts.pop("cache_dir", None)
        cfg = AdaRoundConfig(**opts)
        learned = learn_rounding(model, batches, stats.observers, act_bits,
                                 bits_of,
                                 weight_method, cfg, cache_dir=cache_dir, progress=progress, weight_group=weight_group)
        codes, shifts, scales = learned.codes, learned.bias_shifts, learned.scales
        if cfg.centered:   # the learned bias shift is the bias correction (float input means)
            input_means = None
        info["adaround"] = {"iterations": cfg.iterations, "centered": cfg.centered, "asymmetric": cfg.asymmetric,
                            "scale_search": cfg.scale_search, "relu_aware": cfg.relu_aware,
                            "block_iterations": cfg.block_iterations, "seconds": round(learned.seconds, 1)}
    return convert(model, stats.observers, weight_bits, act_bits, weight_method, info, input_means=input_means,
                   depthwise_bits=depthwise_bits, hessians=stats.hessians, codes=codes, layer_bits=layer_bits,
                   bias_shifts=shifts, weight_scales=scales, weight_group=weight_group)


def _quantize_conformer(model, batches, weight_bits, act_bits, *, observer, weight_method, bias_correction, rounding,
                        depthwise_bits, residual_bits, prob_bits, info, adaround, size_budget_mb, edge_bits, equalize,
                        weight_group, edge_parts, progress):
    """``quantize`` for a ConformerCTC: the same recipes on the Conformer's one walk
    (``conformer_weights``): edge widths, per-group multipliers, bias correction and learned
    rounding (symmetric: on the float model's inputs)."""
    from .conformer_weights import DEFAULT_EDGE_PARTS, edge_layers, learn_conformer_rounding, size_mb, weight_layers
    from .convert_conformer import calibrate_conformer, convert_conformer
    from .quant.adaround import is_depthwise

    unsupported = [flag for flag, on in ((f"--rounding {rounding}", rounding == "gptq"),
                                         ("--size-budget-mb", size_budget_mb is not None),
                                         ("--equalize (ConvASR's separable pairs)", equalize)) if on]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)}: supported for ConvASR models only, not the Conformer")
    info = dict(info or {})
    parts = tuple(DEFAULT_EDGE_PARTS if edge_parts is None else edge_parts)
    layers = weight_layers(model)   # one short float pass: every weight layer, read by all below
    layer_bits = {}
    if depthwise_bits:   # the conv modules' depthwise convs (the edges below take precedence)
        layer_bits = {layer: int(depthwise_bits) for layer in layers if is_depthwise(layer)}
        info["depthwise_bits"] = int(depthwise_bits)
    if edge_bits:
        layer_bits.update({layer: int(edge_bits) for layer in edge_layers(model, parts, layers)})
        info.update(edge_bits=int(edge_bits), edge_parts=list(parts))

    def bits_of(layer):
        return layer_bits.get(layer, weight_bits)

    info["size_mb"] = size_mb(model, bits_of, weight_group, other_bits=weight_bits, layers=layers)
    observers = calibrate_conformer(model, batches, observer)
    codes = shifts = None
    if rounding == "adaround" or bias_correction:
        from .quant.adaround import AdaRoundConfig

        opts = {k: v for k, v in (adaround or {}).items() if k != "cache_dir"}
        opts["asymmetric"] = False   # the Conformer's objective: each layer on the float model's inputs
        if rounding != "adaround":   # round-to-nearest with the bias correction: no steps
            opts = {"iterations": 0, "asymmetric": False}
        cfg = AdaRoundConfig(**opts)
        learned = learn_conformer_rounding(model, batches, bits_of, weight_method, cfg,
                                           cache_dir=(adaround or {}).get("cache_dir"), progress=progress,
                                           weight_group=weight_group, layers=layers)
        codes = learned.codes if rounding == "adaround" else None
        shifts = learned.bias_shifts
        if rounding == "adaround":
            info["adaround"] = {"iterations": cfg.iterations, "centered": cfg.centered, "asymmetric": False,
                                "seconds": round(learned.seconds, 1)}
    info["rounding"] = rounding
    return convert_conformer(model, observers, weight_bits, act_bits, weight_method, info, residual_bits,
                             prob_bits=prob_bits, layer_bits=layer_bits, weight_group=weight_group, codes=codes,
                             bias_shifts=shifts)
