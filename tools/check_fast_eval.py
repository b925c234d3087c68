"""One sweep row (seed 0, W4A8 mixed under 9.5 MiB + bias correction) evaluated by the fast runner:
its integer logits equal the torch reference's on every valid frame of the 3 shortest test-other
utterances, and its word errors / CER on the whole set (compare with the reference row of
results/beyond_size.csv: 108 errors, CER 5.8032).

    nice -n 5 .venv/bin/python tools/check_fast_eval.py
"""
import time

import torch

torch.set_num_threads(1)
from intasr import paths
from intasr.calibration import calibration_batches
from intasr.data import load_batch, load_dataset
from intasr.evaluate import evaluate
from intasr.models.checkpoint import load_model
from intasr.quantize import quantize
from run_size_sweep import with_backend

m = load_model(str(paths.restored_model()))
b = calibration_batches(m, "synthetic", seed=0, synth={"iterations": 200, "lr": 0.05},
                        model_path=str(paths.restored_model()), cache_dir=paths.build_dir() / "synth_cache", progress=False)
q = quantize(m, b, 4, 8, bias_correction=True, size_budget_mb=9.5, progress=False,
             mixed_precision={"cache_dir": str(paths.build_dir() / "sensitivity_cache")})
utts = load_dataset(str(paths.librispeech("test-other")))
short = sorted(utts, key=lambda u: u.duration or 0)[:3]
audio, lens = load_batch(short)
mel, ml = q.features(audio, lens)
ref, rl = q.forward_features(mel, ml)
fq = with_backend(q, "fast")
fast, fl = fq.forward_features(mel, ml)
ok = all(torch.equal(ref[i, :, : rl[i]], fast[i, :, : fl[i]].to(ref.dtype)) for i in range(len(short))) and torch.equal(rl, fl)
print("logits equal on valid frames:", ok, flush=True)
t0 = time.perf_counter(); s = evaluate(fq, utts, progress=False)
print("fast: word errors", s["word_errors"], "wer", s["wer"], "cer", s["cer"], "seconds", round(time.perf_counter() - t0, 1))
