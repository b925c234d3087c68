"""WER vs model size: mixed-precision W4A8 (``intasr quantize --size-budget-mb B
--bias-correction``) under several size budgets and seeds, zero-shot (the grid's default synthetic
batch per seed, read from the shared cache), evaluated on test-other; one tidy row per (budget,
seed), with provenance, appended atomically to a CSV. Resumable: a row whose ``cell_key``
(settings + model sha256 + evaluation-set fingerprint) is already in the CSV is skipped.

The sensitivity pass (``quant.mixed_precision``) runs once per seed: it is cached on disk under
``--sensitivity-cache`` and in the process, and every budget of the seed allocates from it.
``--uniform-bits 4 6 8`` adds uniform-width rows (``--weight-bits W --bias-correction``).
An argparse shell over ``intasr.size_sweep`` (the rows: ``intasr.results_file``).

    nice -n 5 .venv/bin/python tools/run_size_sweep.py --budgets 9.5 10 10.5 11.5 13.5 \\
        --seeds 0 1 2 --out results/beyond_size.csv
"""

from __future__ import annotations

import argparse

import torch

from intasr import paths
from intasr.size_sweep import SizeSweepRuns, run_size_sweep


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(paths.restored_model()))
    p.add_argument("--data", default=str(paths.librispeech("test-other")))
    p.add_argument("--budgets", type=float, nargs="*", default=[9.5, 10.0, 10.5, 11.5, 13.5],
                   help="size budgets in MiB (mixed precision, base width --weight-bits)")
    p.add_argument("--uniform-bits", type=int, nargs="*", default=[], help="also uniform rows at these widths")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--weight-bits", type=int, default=4)
    p.add_argument("--act-bits", type=int, default=8)
    p.add_argument("--no-bias-correction", action="store_true")
    p.add_argument("--sensitivity-without-bias-correction", action="store_true",
                   help="measure sensitivities without the bias correction the model gets (the old measure)")
    p.add_argument("--synth-iterations", type=int, default=200, help="the synthetic batch's Adam iterations")
    p.add_argument("--generate", action="store_true",
                   help="generate a synthetic batch that is not cached (default: skip that seed)")
    p.add_argument("--cache-dir", default=str(paths.build_dir() / "synth_cache"))
    p.add_argument("--sensitivity-cache", default=str(paths.build_dir() / "sensitivity_cache"))
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", default="results/beyond_size.csv")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a crowded machine)")
    p.add_argument("--eval-backend", choices=("reference", "fast"), default="fast",
                   help="integer engine for the evaluation: the torch int64 reference, or the fast runner "
                        "(program/fast.py: same integers on every valid frame, several times faster)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    return run_size_sweep(SizeSweepRuns(**{k: v for k, v in vars(args).items() if k != "threads"}))


if __name__ == "__main__":
    raise SystemExit(main())
