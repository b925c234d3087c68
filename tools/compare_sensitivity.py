"""Which sensitivity measure allocates mixed precision better, judged without test data: for
each budget, the mixed W4A8 + bias-correction integer model allocated from sensitivities measured
without / with the bias correction, and how far its integer logits are from the float model's
on the synthetic inputs the sensitivities did not see (items `--items`.. of the same batch, whole
length). One row per (seed, budget, measure) -> CSV.

    nice -n 5 .venv/bin/python tools/compare_sensitivity.py --seeds 0 --synth-iterations 60 \\
        --budgets 9.5 9.75 10.5 11.5 --out results/beyond_size_measure.csv
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pandas as pd
import torch
from intasr import paths
from intasr.calibration import calibration_batches
from intasr.models.checkpoint import atomic_write_bytes, load_model
from intasr.provenance import file_sha256
from intasr.quantize import quantize


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(paths.restored_model()))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[9.5, 9.75, 10.5, 11.5])
    p.add_argument("--synth-iterations", type=int, default=200)
    p.add_argument("--items", type=int, default=2, help="items the sensitivities use (held out: the rest)")
    p.add_argument("--cache-dir", default=str(paths.build_dir() / "synth_cache"))
    p.add_argument("--sensitivity-cache", default=str(paths.build_dir() / "sensitivity_cache"))
    p.add_argument("--out", default="results/beyond_size_measure.csv")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    rows = []
    for seed in args.seeds:
        batches = calibration_batches(model, "synthetic", seed=seed, synth={"iterations": args.synth_iterations,
                                      "lr": 0.05}, model_path=args.model, cache_dir=args.cache_dir, progress=False)
        mel, lens = batches[0]
        held, held_lens = mel[args.items:], lens[args.items:]
        with torch.no_grad():
            ref = model.forward_features(held, held_lens)[0].double()
        for budget in args.budgets:
            for bc_sens in (False, True):
                q = quantize(model, batches, 4, 8, bias_correction=True, size_budget_mb=budget, progress=False,
                             mixed_precision={"bias_correction": bc_sens, "cache_dir": args.sensitivity_cache})
                with torch.no_grad():
                    out = q.forward_features(held, held_lens)[0].double() * q.logit_scale
                rel = float((out - ref).pow(2).sum() / ref.pow(2).sum())
                agree = float((out.argmax(1) == ref.argmax(1)).double().mean())
                rows.append({"model_sha256": file_sha256(args.model), "seed": seed,
                             "synth_iterations": args.synth_iterations, "size_budget_mb": budget,
                             "sensitivity": "logit_error_bias_corrected" if bc_sens else "logit_error",
                             "size_mb": round(q.info["size_mb"], 3), "held_out_items": int(held.shape[0]),
                             "held_out_rel_logit_error": rel, "held_out_argmax_agreement": agree})
                print(f"seed {seed} budget {budget} bias-corrected sensitivity {bc_sens}: rel logit error "
                      f"{rel:.4f}, argmax agreement {agree:.4f}", flush=True)
    buf = io.StringIO()
    pd.DataFrame(rows).to_csv(buf, index=False)
    atomic_write_bytes(Path(args.out), lambda f: f.write(buf.getvalue().encode()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
