"""`intasr quantize` (float model -> integer model) and `intasr synth` (the zero-shot
calibration batches it can read from a cache)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .. import paths
from ..options import add_model_argument, add_synth_arguments, add_synthesis_options, synthesis_settings
from .common import add_recipe_arguments


def calibration_batches(model, args):
    """(mel, lengths) batches for the chosen calibration source (``calibration.calibration_batches``)."""
    from ..calibration import calibration_batches as batches

    return batches(model, args.calibration, seed=args.seed, n_batches=args.batches, batch_size=args.batch_size,
                   frames=args.frames, data=args.calibration_data, limit=args.calibration_limit,
                   synth={"iterations": args.iterations, "lr": args.lr}, model_path=args.model,
                   cache_dir=args.cache_dir)


def recipe_of_args(args, model):
    """The ``quantize.Recipe`` that --recipe and the flags overriding it name."""
    from ..quantize import Recipe, is_conformer

    return Recipe.resolve(args.recipe, args.weight_bits, conformer=is_conformer(model),
                          size_budget_mb=args.size_budget_mb, rounding=args.rounding,
                          bias_correction=args.bias_correction, adaround_cache=args.adaround_cache,
                          adaround_iterations=args.adaround_iterations, block_iterations=args.block_iterations,
                          edge_bits=args.edge_bits, equalize=args.equalize, weight_group=args.weight_group)


def _quantize_line(args, recipe, qmodel, n_batches: int, out) -> str:
    edge_bits = recipe.edge_bits
    parts = qmodel.info.get("edge_parts")
    where = " and ".join(parts) if parts else "first block and decoder"
    edges = f", {where} at {edge_bits} bits" if edge_bits and edge_bits != args.weight_bits else ""
    size = f", weights {qmodel.info['size_mb']:.2f} MiB" if "size_mb" in qmodel.info else ""
    eq = f", {qmodel.info['equalized']} separable pairs equalized" if qmodel.info.get("equalized") else ""
    groups = f", a multiplier per {recipe.weight_group} weights" if qmodel.info.get("weight_group") else ""
    return (f"W{args.weight_bits}A{args.act_bits} integer model (recipe {recipe.name}{edges}{eq}{groups}{size}, "
            f"{args.calibration} calibration, "
            f"{n_batches} batches, {len(qmodel.program.ops)} integer ops, "
            f"{qmodel.info['calibration_seconds']:.0f} s) -> {out}; "
            f"int64 accumulators: {qmodel.int64_layers() or 'none'}")


def cmd_quantize(args) -> int:
    import torch

    from ..integer_model import save_quantized
    from ..models.checkpoint import load_model
    from ..quantize import quantize

    torch.manual_seed(args.seed)
    model = load_model(args.model)
    recipe = recipe_of_args(args, model)
    start = time.perf_counter()
    batches = calibration_batches(model, args)
    info = {"calibration": args.calibration, "seed": args.seed, "source_model": str(args.model),
            "recipe": recipe.label}
    settings = recipe.settings()
    if args.edge_parts:   # the Conformer's parts, in place of the recipe's
        settings["edge_parts"] = args.edge_parts
    qmodel = quantize(model, batches, args.weight_bits, args.act_bits, observer=args.observer,
                      weight_method=args.weight_method, depthwise_bits=args.depthwise_bits,
                      residual_bits=args.residual_bits, prob_bits=args.prob_bits, info=info,
                      size_budget_mb=args.size_budget_mb, **settings)
    # synthesis (or feature extraction) + calibration + conversion; cached batches and codes count as read
    qmodel.info["calibration_seconds"] = round(time.perf_counter() - start, 1)
    out = save_quantized(qmodel, args.out)
    print(_quantize_line(args, recipe, qmodel, len(batches), out))
    return 0


def cmd_synth(args) -> int:
    import warnings

    from ..models.checkpoint import atomic_write_bytes, load_model
    from ..synth import SynthCacheWarning, generate_cached

    model_path = Path(args.model)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: model not found")
    model = load_model(model_path)
    params = {**synthesis_settings(args), "seed": args.seed}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("always", SynthCacheWarning)
        out = generate_cached(model, str(model_path), params, args.out, threads=args.threads,
                              progress=not args.quiet)
    seconds = time.perf_counter() - t0
    generated = out.params["generated"]
    for i, curve in enumerate(out.losses):
        tag = "generated" if i in generated else "cached"
        print(f"batch {i}: loss {curve[0]:.3f} -> {curve[-1]:.4f} ({tag})")
    print(f"{len(out)} batches of {args.batch_size} x {out.mels.shape[2]} x {args.frames} in {out.params['cache_dir']} "
          f"({len(generated)} generated, {len(out) - len(generated)} reused), {seconds:.1f} s")
    if args.json:
        summary = {"cache_dir": out.params["cache_dir"], "key": out.params["cache_key"], "seconds": seconds,
                   "generated": generated, "initial_loss": [c[0] for c in out.losses],
                   "final_loss": [c[-1] for c in out.losses], "params": {k: v for k, v in out.params.items()
                                                                        if k != "generated"}}
        atomic_write_bytes(args.json, lambda f: f.write(json.dumps(summary, indent=2).encode()))
    return 0


def _add_recipe_choice(q: argparse.ArgumentParser) -> None:
    """The options of `quantize` alone that pick or override a named recipe (`quantize.Recipe.resolve`)."""
    q.add_argument("--size-budget-mb", type=float, default=None,
                   help="mixed precision: 4/6/8-bit weights per conv by sensitivity, fitting this many MiB")
    q.add_argument("--recipe", choices=["default", "paper", "bc", "adaround", "grouped"], default="default",
                   help="paper: round-to-nearest as the paper (the grid's setting); bc: + bias correction; adaround: "
                        "learned rounding with joint bias correction on the synthetic batches, first block and "
                        "decoder (Conformer: --edge-parts) at 8 bits, separable pairs equalized (ConvASR); grouped: adaround on a finer grid, a 4-bit "
                        "integer multiplier per 16 weights of a row (quant/groups.py); default: the measured best of "
                        "the width (grouped at 4 bits, bc at 6 (a Conformer: adaround), paper at 8; bc under --size-budget-mb; explicit "
                        "--rounding / --bias-correction: paper's plus those)")
    q.add_argument("--edge-bits", type=int, default=None,
                   help="weight width of the first block's convs and the decoder (default: the recipe's; "
                        "0: --weight-bits like every other conv)")
    q.add_argument("--edge-parts", nargs="+", choices=["subsampling", "output", "attention"], default=None,
                   help="Conformer: the parts --edge-bits keeps wider (default: the recipe's, chosen label-free "
                        "(results/conformer_recipe_selection.csv): grouped keeps subsampling, output and attention, "
                        "adaround subsampling and output)")
    q.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=None,
                   help="cross-layer equalization (weights only) of the separable pairs below 8 bits before "
                        "calibrating (default: the recipe's)")
    q.add_argument("--weight-group", type=int, default=None,
                   help="an integer multiplier (4 bits) per group of this many weights of a row, for the convs of at "
                        "most 4 bits (quant.groups; 0: per-channel scales only; default: the recipe's)")
    q.add_argument("--adaround-iterations", type=int, default=None,
                   help="--rounding adaround: Adam steps per conv (default: the recipe's)")
    q.add_argument("--block-iterations", type=int, default=None,
                   help="--rounding adaround: then block reconstruction, Adam steps per block (0: off; default: the "
                        "recipe's)")
    q.add_argument("--adaround-cache", default=str(paths.build_dir() / "adaround_cache"),
                   help="--rounding adaround: where each block's learned codes are kept (resumable)")


def add_quantize(sub) -> None:
    q = sub.add_parser("quantize", help="calibrate and convert a float .nemo model to an integer-only model")
    add_model_argument(q)
    q.add_argument("--weight-bits", type=int, default=8)
    q.add_argument("--act-bits", type=int, default=8)
    q.add_argument("--calibration", choices=["synthetic", "real", "random"], default="synthetic")
    q.add_argument("--calibration-data", default=None, help="audio folder or manifest for --calibration real")
    q.add_argument("--calibration-limit", type=int, default=None, help="use only the first N calibration files")
    add_recipe_arguments(q)
    add_synthesis_options(q)
    q.add_argument("--cache-dir", default=str(paths.build_dir() / "synth_cache"))
    _add_recipe_choice(q)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_quantize, rounding=None)   # None: the recipe's rounding


def add_synth(sub) -> None:
    sy = sub.add_parser("synth", help="generate zero-shot synthetic calibration batches (paper Eq. 2) into a cache")
    add_synth_arguments(sy)
    sy.set_defaults(func=cmd_synth)
