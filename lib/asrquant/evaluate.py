"""Batched transcription and WER evaluation for any recognizer.

A recognizer has `labels`, `features(audio, lengths)` (waveform -> normalized log-mel) and
`forward_features(mel, lengths)` (log-mel -> logits [B, C, T], lengths): the float `ConvASR`
and the integer model both do. Batches are formed from utterances of similar length (less
padding), and results are returned in the input order; the masks in the models make each
transcript independent of what else is in the batch.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .data import Utterance, load_batch
from .text import ctc_greedy_decode, wer_summary


def length_sorted_batches(utts: Sequence[Utterance], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(utts)), key=lambda i: (utts[i].duration or 0.0, utts[i].id))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def transcribe(model, utts: Sequence[Utterance], batch_size: int = 8, progress: bool = True) -> list[str]:
    hyps: list[str | None] = [None] * len(utts)
    batches = length_sorted_batches(utts, batch_size)
    for idx in tqdm(batches, desc="transcribing", unit="batch", disable=not progress):
        audio, lengths = load_batch([utts[i] for i in idx])
        mel, mel_len = model.features(audio, lengths)
        logits, out_len = model.forward_features(mel, mel_len)
        for i, text in zip(idx, ctc_greedy_decode(logits, out_len, model.labels, time_axis=2)):
            hyps[i] = text
    return hyps  # type: ignore[return-value]


def evaluate(model, utts: Sequence[Utterance], batch_size: int = 8, progress: bool = True,
             n_boot: int = 1000, seed: int = 0) -> dict:
    """WER/CER summary (see `text.wer_summary`) plus seconds and per-utterance transcripts."""
    missing = [u.id for u in utts if u.text is None]
    if missing:
        raise ValueError(f"cannot evaluate: {len(missing)} utterance(s) have no transcript, e.g. {missing[0]}")
    start = time.perf_counter()
    hyps = transcribe(model, utts, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - start
    summary = wer_summary([u.text for u in utts], hyps, n_boot=n_boot, seed=seed)
    summary["seconds"] = round(seconds, 3)
    summary["transcripts"] = [{"id": u.id, "ref": u.text, "hyp": h} for u, h in zip(utts, hyps)]
    return summary
