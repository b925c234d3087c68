"""Calibration inputs: (normalized log-mel, lengths) batches for `convert.calibrate`.

Three sources, as in the paper's Table 2: `real` (features of training-split audio, the
data-dependent upper bound), `random` (uniform [-3, 3], the paper's ablation) and `synthetic`
(zero-shot, optimized to match BatchNorm statistics: `synth.SyntheticMelGenerator`).
"""

from __future__ import annotations

import torch

from .data import load_batch, load_dataset
from .evaluate import length_sorted_batches


def real_mels(model, data, batch_size: int = 8, limit: int | None = None):
    """Features of real audio (a LibriSpeech folder or manifest), length-sorted batches."""
    utts = load_dataset(data, require_text=False, limit=limit)
    if not utts:
        raise ValueError(f"{data}: no calibration audio found")
    out = []
    with torch.inference_mode():
        for idx in length_sorted_batches(utts, batch_size):
            audio, lengths = load_batch([utts[i] for i in idx])
            out.append(tuple(t.clone() for t in model.features(audio, lengths)))
    return out


def random_mels(n_batches: int = 1, batch_size: int = 8, frames: int = 500, seed: int = 0,
                low: float = -3.0, high: float = 3.0, n_mels: int = 64):
    """Uniform [low, high] inputs of full length (the paper's random-calibration ablation)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.full((batch_size,), frames, dtype=torch.int64)
    return [(torch.rand(batch_size, n_mels, frames, generator=g) * (high - low) + low, lengths)
            for _ in range(n_batches)]
