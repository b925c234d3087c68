"""WER vs model size: mixed-precision W4A8 (``asrquant quantize --size-budget-mb B
--bias-correction``) under several size budgets and seeds, zero-shot (the grid's default synthetic
batch per seed, read from the shared cache), evaluated on test-other; one tidy row per (budget,
seed), with provenance, appended atomically to a CSV. Resumable: a row whose ``cell_key``
(settings + model sha256 + evaluation-set fingerprint) is already in the CSV is skipped.

The sensitivity pass (``quant.mixed_precision``) runs once per seed: it is cached on disk under
``--sensitivity-cache`` and in the process, and every budget of the seed allocates from it.
``--uniform-bits 4 6 8`` adds uniform-width rows (``--weight-bits W --bias-correction``).

    nice -n 5 .venv/bin/python tools/run_size_sweep.py --budgets 9.5 10 10.5 11.5 13.5 \\
        --seeds 0 1 2 --out results/beyond_size.csv
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from asrquant import paths
from asrquant.calibration import calibration_batches
from asrquant.data import load_dataset
from asrquant.evaluate import evaluate
from asrquant.gridrun import content_key
from asrquant.models.checkpoint import load_model
from asrquant.provenance import eval_set_fingerprint, file_sha256, provenance
from asrquant.quant import mixed_precision as mp
from asrquant.quantize import quantize
from asrquant.results_file import ResultsFile
from asrquant.synth import cache_key, model_hash
from asrquant.tables import GridSpec, calibration_settings, synth_params

SENSITIVITY = {True: "logit_error_bias_corrected", False: "logit_error"}
RESULT_COLUMNS = ["wer", "cer", "words", "word_errors", "utterances", "ci95_lo", "ci95_hi", "size_mb", "bits_4",
                  "bits_6", "bits_8", "params_4", "params_6", "params_8", "eval_seconds", "sensitivity_seconds",
                  "calib_seconds"]


def synth_ready(model, digest: str, spec: GridSpec, seed: int, cache_dir: Path) -> bool:
    """Is the synthetic batch of this seed already in the cache (never generate it here: the grid
    generates the default batches, and two processes must not race for them)?"""
    p = synth_params(spec, model, seed)
    folder = cache_dir / cache_key(digest, p)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return all(str(i) in manifest.get("batches", {}) and (folder / f"batch_{i:05d}.pt").is_file()
               for i in range(p["n_batches"]))


def widths_of(model, bits: dict | None, weight_bits: int) -> dict:
    """bits_W (how many convs) and params_W (how many stored parameters) at each width."""
    out = {f"{k}_{w}": 0 for k in ("bits", "params") for w in mp.WIDTHS}
    for conv, bn in mp.weight_convs(model):
        w = int(bits[conv]) if bits else weight_bits
        out[f"bits_{w}"] += 1
        out[f"params_{w}"] += mp.stored_params(conv, bn)
    return out


def with_backend(qmodel, backend: str):
    """The integer model evaluated by `backend`: its own reference engine, or the fast runner
    (torch._int_mm + the native C kernels) in its place; the logits are the same integers."""
    if backend == "fast":
        from asrquant.program.fast import TorchIntegerRunner

        qmodel.forward_int = TorchIntegerRunner(qmodel.program, threads=1).run_with_lengths
    return qmodel


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

    model = load_model(args.model)
    name = Path(args.model).stem
    utts = load_dataset(args.data, limit=args.limit)
    model_sha, eval_sha = file_sha256(args.model), eval_set_fingerprint(utts)["sha256"]
    digest = model_hash(model)
    out = ResultsFile(args.out)
    done = out.keys()
    bc = not args.no_bias_correction
    bc_sens = bc and not args.sensitivity_without_bias_correction
    synth = {"iterations": args.synth_iterations, "lr": 0.05}
    spec = GridSpec(synth={"n_batches": 1, "batch_size": 8, "frames": 500, **synth})
    calib = calibration_settings(spec, "synthetic", model)
    cells = [(b, None) for b in args.budgets] + [(None, w) for w in args.uniform_bits]
    missing_seeds = []
    for seed in args.seeds:
        if not args.generate and not synth_ready(model, digest, spec, seed, Path(args.cache_dir)):
            print(f"seed {seed}: its synthetic batch is not in {args.cache_dir} yet; skipped (rerun later)",
                  flush=True)
            missing_seeds.append(seed)
            continue
        batches = None
        sens_seconds = None
        for budget, uniform in cells:
            w = uniform or args.weight_bits
            settings = dict(model=name, w_bits=w, a_bits=args.act_bits, calibration="synthetic", seed=seed,
                            observer="minmax", weight_method="minmax", bias_correction=bc, depthwise_bits=0,
                            rounding="nearest", size_budget_mb=budget if budget is not None else "-",
                            sensitivity=SENSITIVITY[bc_sens] if budget is not None else "-",
                            sensitivity_frames=200 if budget is not None else "-",
                            sensitivity_items=2 if budget is not None else "-", **calib)
            key = content_key(settings, model_sha, eval_sha)
            if key in done or key in out.keys():   # (a concurrent sweep may have made it)
                continue
            if batches is None:
                batches = calibration_batches(model, "synthetic", seed=seed, n_batches=1, batch_size=8, frames=500,
                                              synth=synth, model_path=args.model, cache_dir=args.cache_dir,
                                              progress=False)
            bits, sens_s = None, 0.0
            if budget is not None:
                if sens_seconds is None:   # once per seed (disk cache: measured by an earlier run)
                    t0 = time.perf_counter()
                    mel, lens = mp.sensitivity_crop(batches)
                    mp.cached_sensitivities(model, mel, lens, bias_correction=bc_sens,
                                            cache_dir=args.sensitivity_cache, progress=False)
                    sens_seconds = mp.sensitivity_seconds(model, mel, lens, bias_correction=bc_sens)
                    print(f"seed {seed}: sensitivities in {sens_seconds:.0f} s "
                          f"(this run: {time.perf_counter() - t0:.0f} s)", flush=True)
                sens_s = sens_seconds
                bits = mp.allocate_bits(model, batches, budget, bias_correction=bc_sens,
                                        cache_dir=args.sensitivity_cache, progress=False)
            t0 = time.perf_counter()
            qmodel = quantize(model, batches, w, args.act_bits, bias_correction=bc, size_budget_mb=budget,
                              mixed_precision={"bias_correction": bc_sens, "cache_dir": args.sensitivity_cache},
                              info={"calibration": "synthetic", "seed": seed}, progress=False)
            quant_s = time.perf_counter() - t0   # sensitivities came from the cache: allocation + conversion
            summary = evaluate(with_backend(qmodel, args.eval_backend), utts, progress=False)
            lo, hi = summary["ci95"]
            size = qmodel.info.get("size_mb") or mp.size_mb(model, lambda c, w=w: w)
            row = {**settings, "wer": summary["wer"], "cer": summary["cer"], "words": summary["words"],
                   "word_errors": summary["word_errors"], "utterances": summary["utterances"],
                   "ci95_lo": lo, "ci95_hi": hi, "size_mb": round(size, 3), **widths_of(model, bits, w),
                   "eval_seconds": summary["seconds"], "sensitivity_seconds": round(sens_s, 1),
                   "calib_seconds": round(quant_s + sens_s, 1), "eval_backend": args.eval_backend}
            row.update({k: v for k, v in provenance(args.model, utts).items() if k not in row})
            row["cell_key"] = key
            out.append(row)   # not added when a concurrent sweep wrote this cell first
            done.add(key)
            what = f"budget {budget} MiB" if budget is not None else f"uniform W{w}"
            print(f"seed {seed} {what}: {size:.2f} MiB, bits 4/6/8 = {row['bits_4']}/{row['bits_6']}/"
                  f"{row['bits_8']}, WER {summary['wer']:.2f} ({summary['word_errors']}/{summary['words']}), "
                  f"calibration {row['calib_seconds']:.0f} s, evaluation {summary['seconds']:.0f} s", flush=True)
    if missing_seeds:
        print(f"seeds without a cached batch: {missing_seeds}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
