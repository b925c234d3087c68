"""Choosing a recipe without transcripts: agreement with the float model on untranscribed audio.

A recipe chosen by its WER on the utterances that then report it is fitted to their noise too
(one word of test-other's 684 is 0.15 points). Here the choice sees no transcript at all: the
float model transcribes untranscribed training audio once, and each candidate is scored by how
far its transcripts are from those (the "FP32-agreement WER": word errors of the quantized
transcript against the float one, over the float transcripts' words). A quantizer's job is to
reproduce the float model, so this measures the quantization error in words, label-free; the
test-other transcripts are then used only to report the recipe it chose.

The selection set: ``SELECTION_SIZE`` utterances of train-clean-100 drawn with a fixed seed from
those after the first ``CALIBRATION_HEAD`` (real-data calibration reads the first ones, in
sorted order), so that no utterance both calibrates and selects.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import Utterance, load_dataset
from .evaluate import phoneme_config, transcribe
from .provenance import eval_set_fingerprint, file_sha256
from .text import token_error_summary, wer_summary

SELECTION_SIZE = 40
CALIBRATION_HEAD = 48
SELECTION_SEED = 0
CRITERION = "fp32-agreement"


def selection_set(data, size: int = SELECTION_SIZE, seed: int = SELECTION_SEED,
                  skip: int = CALIBRATION_HEAD) -> list[Utterance]:
    """`size` utterances of the folder or manifest `data` (transcripts not needed, not read for
    scoring), drawn with `seed` from those after the first `skip`, in the listing's order."""
    utts = load_dataset(data, require_text=False)
    pool = utts[skip:]
    if len(pool) < size:
        raise ValueError(f"{data}: {len(utts)} utterances; selection needs {size} after the first {skip} "
                         f"(those calibrate with real data)")
    pick = np.sort(np.random.default_rng(seed).choice(len(pool), size=size, replace=False))
    return [pool[i] for i in pick]


def fp32_transcripts(model, model_path, utts: Sequence[Utterance], cache_dir=None, batch_size: int = 8) -> list:
    """The float model's transcripts of `utts` (strings, or phoneme lists), cached by model file
    hash and utterance list in `cache_dir` (a JSON file written atomically)."""
    cache = None
    if cache_dir is not None:
        key = f"{file_sha256(model_path)[:16]}_{eval_set_fingerprint(utts)['sha256'][:16]}_b{batch_size}.json"
        cache = Path(cache_dir) / key
        if cache.is_file():
            return json.loads(cache.read_text())["transcripts"]
    hyps = transcribe(model, utts, batch_size=batch_size, progress=False)
    if cache is not None:
        from .models.checkpoint import atomic_write_bytes

        cache.parent.mkdir(parents=True, exist_ok=True)
        blob = {"model": str(model_path), "utterances": [u.id for u in utts], "transcripts": hyps}
        atomic_write_bytes(cache, lambda f: f.write(json.dumps(blob).encode()))
    return hyps


def agreement(model, utts: Sequence[Utterance], references: Sequence, batch_size: int = 2,
              n_boot: int = 1000, seed: int = 0) -> dict:
    """`evaluate`'s summary, scored against the float model's transcripts `references` instead of
    human ones: ``wer`` is the FP32-agreement WER (PER for phoneme models, under ``per``)."""
    if len(references) != len(utts):
        raise ValueError(f"{len(references)} reference transcripts for {len(utts)} utterances")
    start = time.perf_counter()
    hyps = transcribe(model, utts, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    if phoneme_config(model):
        summary = token_error_summary([list(r) for r in references], hyps, n_boot=n_boot, seed=seed,
                                      name="per", unit="phonemes")
    else:
        summary = wer_summary(list(references), hyps, n_boot=n_boot, seed=seed)
    summary["seconds"] = round(seconds, 3)
    summary["transcripts"] = [{"id": u.id, "ref": r, "hyp": h} for u, r, h in zip(utts, references, hyps)]
    return summary
