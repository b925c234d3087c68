"""Beyond-the-paper rows for learned rounding / mixed precision: quantize (zero-shot, synthetic
calibration as the grid makes it) -> evaluate on test-other -> one tidy row per setting, appended
atomically to a CSV with results/beyond.csv's columns (+ the extra settings). Resumable: rows
already in the CSV are skipped. An argparse shell over ``intasr.recipe_runs``.

    nice -n 19 .venv/bin/python tools/run_adaround.py --bits 4/8 6/8 --seeds 0 1 2 \\
        --rounding adaround --out results/beyond_adaround.csv

Columns: results/beyond.csv's + depthwise_bits, rounding, adaround_iterations, size_budget_mb,
synth_iterations, synth_seconds, then adaround_centered (learned on the bias-corrected error,
quant/adaround.py; the row's bias_correction is then the learned closed-form shift), recipe
(the `intasr quantize --recipe` name when the settings are one) and the provenance columns
(``intasr.provenance``: model_sha256, eval_sha256, code_commit, code_dirty, cpu, threads, ...),
then adaround_symmetric (``--symmetric``: learned on the float model's inputs, not the quantized walk's)
and adaround_scale_search (``--scale-search``: per-channel output-aware clipping first), edge_bits
(``--edge-bits``: the first block's convs and the decoder at that width; 0: all at --bits'),
adaround_relu_aware (``--relu-aware``: convs before a ReLU learned on the error after it),
equalize (``--equalize``: cross-layer equalization of the separable pairs first, quant/equalize.py),
adaround_block_iterations (``--block-iterations``: then block reconstruction, ``quant.adaround.refine_block``),
weight_group (``--weight-group``: an integer multiplier per group of that many weights of a row, quant/groups.py).
"""

from __future__ import annotations

import argparse

import torch

from intasr import paths
from intasr.quantize import ROUNDINGS
from intasr.recipe_runs import RecipeRuns, run_recipes
from intasr.selection import CRITERION


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(paths.restored_model()))
    p.add_argument("--data", default=None, help="default: test-other (--criterion test), train-clean-100 (fp32-agreement)")
    p.add_argument("--bits", nargs="+", default=["4/8"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--rounding", choices=ROUNDINGS, default="adaround")
    p.add_argument("--iterations", type=int, default=300, help="adaround: Adam steps per conv")
    p.add_argument("--bias-correction", action="store_true")
    p.add_argument("--raw", action="store_true",
                   help="adaround: the old objective (raw second moments; the bias corrected afterwards if asked)")
    p.add_argument("--symmetric", action="store_true",
                   help="adaround: learn each conv on the float model's inputs (not the quantized walk's)")
    p.add_argument("--scale-search", action="store_true",
                   help="adaround: per-channel output-aware clipping before learning the rounding")
    p.add_argument("--relu-aware", action="store_true",
                   help="adaround: convs before a ReLU learned on the error after it")
    p.add_argument("--calibration", choices=["synthetic", "real"], default="synthetic",
                   help="real: train-clean-100 audio (a reference for what the synthetic batches cost)")
    p.add_argument("--calibration-limit", type=int, default=8, help="real: this many utterances")
    p.add_argument("--edge-bits", type=int, default=0,
                   help="the first block's convs and the decoder at this width (0: --bits' width)")
    p.add_argument("--equalize", action="store_true",
                   help="cross-layer equalization of the separable pairs below 8 bits (weights only) first")
    p.add_argument("--block-iterations", type=int, default=0,
                   help="adaround: then block reconstruction, this many Adam steps per block (0: off)")
    p.add_argument("--weight-group", type=int, default=0,
                   help="an integer multiplier per group of this many weights of a row, 4-bit convs (0: per channel)")
    p.add_argument("--depthwise-bits", type=int, default=0, help="the depthwise convs at this width (0: --bits')")
    p.add_argument("--edge-parts", nargs="+", default=None,
                   help="Conformer: the parts --edge-bits keeps (subsampling, output, attention; default: "
                        "conformer_weights.DEFAULT_EDGE_PARTS)")
    p.add_argument("--size-budget-mb", type=float, nargs="+", default=[None])
    p.add_argument("--synth-iterations", type=int, default=200, help="synthetic batches: Adam iterations")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--eval-batch-size", type=int, default=2, help="small: the integer reference keeps every value")
    p.add_argument("--criterion", choices=["test", CRITERION], default="test",
                   help=f"test: score against --data's transcripts; {CRITERION}: label-free, against the float "
                        f"model's transcripts of the untranscribed utterances of --data past the real-calibration head (default "
                        "there: train-clean-100; --limit N: a seeded draw of N), the criterion that selects the default "
                        "recipes (intasr.selection)")
    p.add_argument("--out", default="results/beyond_adaround.csv")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a crowded machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.data is None:
        args.data = str(paths.librispeech("test-other" if args.criterion == "test" else "train-clean-100"))
    run_recipes(RecipeRuns(**{k: v for k, v in vars(args).items() if k != "threads"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
