"""Real-data calibration once, then W8A8 / W6A8 / W4A8 with min/max vs MSE-optimal weight clipping.

Usage: .venv/bin/python tools/weight_clipping_check.py [--limit N] [--out build/results/weight_clipping.csv]
"""
import argparse
import time

import pandas as pd
import torch

from intasr import paths
from intasr.calibration import real_mels
from intasr.calibration import calibrate
from intasr.convert import convert
from intasr.data import load_dataset
from intasr.evaluate import evaluate
from intasr.models import load_model

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=str(paths.restored_model()))
ap.add_argument("--calibration-data", default=str(paths.librispeech("train-clean-100")))
ap.add_argument("--data", default=str(paths.librispeech("test-other")))
ap.add_argument("--limit", type=int, default=None)
ap.add_argument("--out", default=str(paths.build_dir() / "results" / "weight_clipping.csv"))
args = ap.parse_args()
torch.manual_seed(0)
model = load_model(args.model)
t = time.time()
observers = calibrate(model, real_mels(model, args.calibration_data, limit=args.limit))
print(f"calibrated in {time.time() - t:.0f} s", flush=True)
utts = load_dataset(args.data)
rows = []
for w in (8, 6, 4):
    for method in ("minmax", "mse"):
        q = convert(model, observers, w, 8, method)
        r = evaluate(q, utts, progress=False)
        rows.append({"w_bits": w, "a_bits": 8, "weight_method": method, "calibration": "real", "wer": r["wer"],
                     "word_errors": r["word_errors"], "words": r["words"], "ci95_lo": r["ci95"][0],
                     "ci95_hi": r["ci95"][1]})
        print(rows[-1], flush=True)
        pd.DataFrame(rows).to_csv(args.out, index=False)
