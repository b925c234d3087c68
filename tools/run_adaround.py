"""Beyond-the-paper rows for learned rounding / mixed precision: quantize (zero-shot, synthetic
calibration as the grid makes it) -> evaluate on test-other -> one tidy row per setting, appended
atomically to a CSV with results/beyond.csv's columns (+ the extra settings). Resumable: rows
already in the CSV are skipped.

    nice -n 19 .venv/bin/python tools/run_adaround.py --bits 4/8 6/8 --seeds 0 1 2 \\
        --rounding adaround --out results/beyond_adaround.csv

Columns: results/beyond.csv's + depthwise_bits, rounding, adaround_iterations, size_budget_mb,
synth_iterations, synth_seconds, then adaround_centered (learned on the bias-corrected error,
quant/adaround.py; the row's bias_correction is then the learned closed-form shift), recipe
(the `asrquant quantize --recipe` name when the settings are one) and the provenance columns
(``asrquant.provenance``: model_sha256, eval_sha256, code_commit, code_dirty, cpu, threads, ...),
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
import time
from pathlib import Path

import torch

from asrquant import paths
from asrquant.calibration import calibration_batches
from asrquant.data import load_dataset
from asrquant.evaluate import evaluate
from asrquant.models.checkpoint import load_model
from asrquant.provenance import provenance
from asrquant.quantize import ROUNDINGS, quantize, recipe_of
from asrquant.experiments import bops, model_size_mb
from asrquant.results_file import ResultsFile

COLUMNS = ["model", "w_bits", "a_bits", "calibration", "seed", "observer", "weight_method", "bias_correction", "wer",
           "cer", "words", "word_errors", "utterances", "ci95_lo", "ci95_hi", "size_mb", "bops_t", "eval_seconds",
           "calib_seconds", "depthwise_bits", "rounding", "adaround_iterations", "size_budget_mb",
           "synth_iterations", "synth_seconds", "adaround_centered", "recipe", "adaround_symmetric",
           "adaround_scale_search", "edge_bits", "adaround_relu_aware", "equalize", "adaround_block_iterations",
           "weight_group"]


KEY = ["model", "w_bits", "a_bits", "calibration", "seed", "weight_method", "bias_correction", "rounding",
       "adaround_iterations", "size_budget_mb", "synth_iterations", "adaround_centered", "adaround_symmetric",
       "adaround_scale_search", "edge_bits", "adaround_relu_aware", "equalize", "adaround_block_iterations", "weight_group"]


# what rows written before a column had (flags off, no edge width, no block stage, per-channel scales)
DEFAULTS = {**dict.fromkeys(("adaround_centered", "adaround_symmetric", "adaround_scale_search",
                             "adaround_relu_aware", "equalize"), False),
            **dict.fromkeys(("edge_bits", "adaround_block_iterations", "weight_group"), 0)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(paths.restored_model()))
    p.add_argument("--data", default=str(paths.librispeech("test-other")))
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
    p.add_argument("--size-budget-mb", type=float, nargs="+", default=[None])
    p.add_argument("--synth-iterations", type=int, default=200, help="synthetic batches: Adam iterations")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--eval-batch-size", type=int, default=2, help="small: the integer reference keeps every value")
    p.add_argument("--out", default="results/beyond_adaround.csv")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a crowded machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    name = Path(args.model).stem
    utts = load_dataset(args.data, limit=args.limit)
    out = ResultsFile(args.out, COLUMNS)
    df = out.read()
    for seed in args.seeds:
        for wa in args.bits:
            w, a = (int(x) for x in wa.split("/"))
            for budget in args.size_budget_mb:
                iters = args.iterations if args.rounding == "adaround" else 0
                centered = args.rounding == "adaround" and not args.raw
                key = dict(model=name, w_bits=w, a_bits=a, calibration=args.calibration, seed=seed, observer="minmax",
                           weight_method="minmax", bias_correction=bool(args.bias_correction) or centered,
                           depthwise_bits=0, rounding=args.rounding, adaround_iterations=iters,
                           synth_iterations=args.synth_iterations, size_budget_mb=budget or "",
                           adaround_centered=centered,
                           adaround_symmetric=args.rounding == "adaround" and args.symmetric,
                           adaround_scale_search=args.rounding == "adaround" and args.scale_search,
                           edge_bits=args.edge_bits,
                           adaround_relu_aware=args.rounding == "adaround" and args.relu_aware,
                           equalize=bool(args.equalize),
                           adaround_block_iterations=args.block_iterations if args.rounding == "adaround" else 0,
                           weight_group=args.weight_group)
                if ResultsFile.has_settings(df, {k: key[k] for k in KEY}, DEFAULTS):
                    continue
                start = time.perf_counter()
                batches = calibration_batches(model, args.calibration, seed=seed, n_batches=1, batch_size=8, frames=500,
                                              data=paths.librispeech("train-clean-100"), limit=args.calibration_limit,
                                              synth={"iterations": args.synth_iterations, "lr": 0.05}, model_path=args.model,
                                              cache_dir=paths.build_dir() / "synth_cache")
                synth_seconds = time.perf_counter() - start
                qmodel = quantize(model, batches, w, a, bias_correction=args.bias_correction, rounding=args.rounding,
                                  adaround={"iterations": args.iterations, "centered": centered,
                                            "asymmetric": not args.symmetric, "scale_search": args.scale_search,
                                            "relu_aware": args.relu_aware, "block_iterations": args.block_iterations,
                                            "cache_dir": str(paths.build_dir() / "adaround_cache")},
                                  size_budget_mb=budget, edge_bits=args.edge_bits or None, equalize=args.equalize, weight_group=args.weight_group,
                                  info={"calibration": args.calibration, "seed": seed})
                calib_seconds = time.perf_counter() - start
                del batches
                summary = evaluate(qmodel, utts, batch_size=args.eval_batch_size, progress=False)
                lo, hi = summary["ci95"]
                size = qmodel.info.get("size_mb") or model_size_mb(model, w)
                row = {**key, "observer": "minmax", "depthwise_bits": 0, "wer": summary["wer"], "cer": summary["cer"],
                       "words": summary["words"], "word_errors": summary["word_errors"],
                       "utterances": summary["utterances"], "ci95_lo": lo, "ci95_hi": hi, "size_mb": round(size, 2),
                       "bops_t": round(bops(model, w, a) / 1e12, 3), "eval_seconds": summary["seconds"],
                       "calib_seconds": round(calib_seconds, 1), "synth_seconds": round(synth_seconds, 1),
                       "recipe": recipe_of(key)}
                row.update({k: v for k, v in provenance(args.model, utts).items() if k not in row})
                df = out.append(row)   # the file as it is now (another run may have appended) + this row
                print(f"W{w}A{a} seed {seed} {args.rounding} budget {budget}: WER {summary['wer']:.2f} "
                      f"({summary['word_errors']}/{summary['words']}), calibration {calib_seconds:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
