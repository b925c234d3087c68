"""`intasr grid`: the Table 1/2 experiment grid (``tables.run_grid``) from the command line."""

from __future__ import annotations

from pathlib import Path

from .. import paths
from ..options import add_data_argument, add_model_argument, add_synthesis_options, synthesis_settings
from .common import add_recipe_arguments

#: the columns of the printed summary (the settings columns and hashes are in the CSV)
SUMMARY_COLUMNS = ["model", "w_bits", "a_bits", "calibration", "observer", "weight_method", "bias_correction",
                   "depthwise_bits", "rounding", "nonlinear", "metric", "rate_mean", "rate_std", "seeds", "units",
                   "unit_errors_mean", "size_mb", "delta_vs_fp32"]


def grid_spec(args):
    """The ``tables.GridSpec`` of the grid's options (--bits as "W/A" strings)."""
    from ..tables import GridSpec

    if args.residual_bits or args.prob_bits:
        raise ValueError("grid: --residual-bits / --prob-bits are not grid settings yet (use `intasr quantize`)")
    bits = tuple(tuple(int(x) for x in b.split("/")) for b in args.bits)
    synth = synthesis_settings(args)
    return GridSpec(bits=bits, calibrations=tuple(args.calibrations), seeds=tuple(args.seeds), synth=synth,
                    random_batches=args.batches, random_frames=args.frames, real_limit=args.real_limit,
                    observer=args.observer, weight_method=args.weight_method, bias_correction=args.bias_correction,
                    depthwise_bits=args.depthwise_bits or 0, rounding=args.rounding, simulated=args.simulated,
                    recipe=args.recipe)


def cmd_grid(args) -> int:
    import pandas as pd

    from ..tables import run_grid, run_paper_profile, summarize

    spec = grid_spec(args)
    run_kw = dict(workers=args.workers, scheduler=args.scheduler, threads=args.threads,
                  shard_utterances=args.shard_utterances)
    if args.profile == "paper":
        run_paper_profile(args.model, args.paper_data, Path(args.out).parent, args.cache_dir, not args.quiet, **run_kw)
        return 0
    df = run_grid(args.model, args.data, args.out, spec, calib_data=args.calibration_data,
                  cache_dir=args.cache_dir, limit=args.limit, progress=not args.quiet, **run_kw)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summarize(df)[SUMMARY_COLUMNS].round(2).to_string(index=False))
    print(f"rows: {len(df)} -> {args.out}")
    return 0


def add_grid(sub) -> None:
    g = sub.add_parser("grid", help="Table 1/2 experiment grid: W/A x calibration x seed -> tidy CSV (resumable)")
    add_model_argument(g)
    add_data_argument(g)
    g.add_argument("--calibration-data", default=str(paths.librispeech("train-clean-100")))
    g.add_argument("--out", default=str(paths.build_dir() / "results" / "grid.csv"))
    g.add_argument("--bits", nargs="+", default=["8/8", "6/8", "4/8"], help="W/A settings")
    g.add_argument("--calibrations", nargs="+", default=["synthetic", "random", "real"],
                   choices=["synthetic", "random", "real"])
    g.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add_synthesis_options(g)
    g.add_argument("--real-limit", type=int, default=None)
    add_recipe_arguments(g)
    g.add_argument("--cache-dir", default=str(paths.build_dir() / "synth_cache"))
    g.add_argument("--limit", type=int, default=None, help="evaluate on the first N utterances only")
    g.add_argument("--simulated", action="store_true",
                   help="Conformer: also evaluate each setting with float non-linearities (fake quantization) to "
                        "separate the cost of the integer approximations from that of quantization")
    g.add_argument("--workers", type=int, default=1,
                   help="Dask LocalCluster worker processes (1: run the cells here, one after another)")
    g.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (instead of --workers)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads per task (default: cores // workers locally, the worker's default on a scheduler)")
    g.add_argument("--shard-utterances", type=int, default=200,
                   help="Dask: evaluation shard size in utterances (whole batches of 8)")
    g.add_argument("--profile", choices=["paper"], default=None,
                   help="paper: Kim et al.'s protocol (tables.PAPER_PROFILE; days of CPU, meant for a cluster), "
                        "one CSV per split beside --out")
    g.add_argument("--paper-data", default=str(paths.shared_dir() / "data"),
                   help="--profile paper: folder holding LibriSpeech/<split> (missing splits are downloaded)")
    g.add_argument("--recipe", choices=["default", "paper", "bc", "adaround", "grouped"], default=None,
                   help="a named recipe per width (`intasr quantize --recipe`; default: the width's default) "
                        "instead of --rounding / --bias-correction; a width whose recipe is the paper's method "
                        "shares the flags' row")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_grid)
