"""Batched transcription and WER evaluation for any recognizer.

A recognizer has `labels`, `features(audio, lengths)` (waveform -> normalized log-mel) and
`forward_features(mel, lengths)` (log-mel -> logits [B, C, T], lengths): the float `ConvASR`
and the integer model both do. Batches are formed from utterances of similar length (less
padding), and results are returned in the input order; the masks in the models make each
transcript independent of what else is in the batch.

Models whose config has a `phonemes` section (the hama phoneme Conformer) are scored by phoneme
error rate (PER) against G2P references of the transcripts; the others by WER. A config's
`decoding` section (temperature, blank_bias: the hama engine's greedy decoder) is applied to the
log-probs before the argmax, as the model's own engine does.
"""

from __future__ import annotations

import time
import warnings
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .data import Utterance, length_sorted_batches, load_batch
from .text import ctc_greedy_decode, ctc_greedy_tokens, token_error_summary, wer_summary


def model_config(model) -> dict:
    return getattr(model, "config", None) or {}


def phoneme_config(model) -> dict | None:
    """The config's `phonemes` section (phoneme-vocabulary models), or None."""
    return model_config(model).get("phonemes") or None


def apply_decoding(model, logits: torch.Tensor) -> torch.Tensor:
    """logits [B, C, T] -> what the greedy argmax reads under the config's `decoding` section:
    log_softmax / temperature, plus blank_bias on the blank (last class), in float32 as the hama
    engine does. Without a temperature or blank bias, the logits unchanged. Integer logits are
    first put in real units with the model's `logit_scale` when it has one."""
    cfg = model_config(model).get("decoding") or {}
    temperature, blank_bias = float(cfg.get("temperature", 1.0)), float(cfg.get("blank_bias", 0.0))
    if temperature == 1.0 and blank_bias == 0.0:
        return logits
    if not logits.is_floating_point():
        scale = getattr(model, "logit_scale", None)
        if scale is None:
            warnings.warn("decoding temperature/blank_bias skipped: integer logits without a logit_scale")
            return logits
        scale = torch.as_tensor(scale, dtype=torch.float64)
        logits = logits.double() * (scale.reshape(1, -1, 1) if scale.numel() > 1 else scale)
    lp = torch.log_softmax(logits.float(), dim=1)
    if temperature > 0 and temperature != 1.0:
        lp = lp / temperature
    if blank_bias != 0.0:
        lp[:, len(model.labels), :] += blank_bias
    return lp


def decode_batch(model, logits: torch.Tensor, lengths: torch.Tensor) -> list:
    """Greedy CTC: phoneme models -> scored token lists; models with a `decode` (BPE) -> its
    text; else label strings joined."""
    logits = apply_decoding(model, logits)
    if phoneme_config(model):
        from .models.hama import scored_phonemes

        return [scored_phonemes(seq) for seq in ctc_greedy_tokens(logits, lengths, model.labels, time_axis=2)]
    if callable(getattr(model, "decode", None)):
        return model.decode(logits, lengths)
    return ctc_greedy_decode(logits, lengths, model.labels, time_axis=2)


@torch.inference_mode()
def transcribe(model, utts: Sequence[Utterance], batch_size: int = 8, progress: bool = True) -> list:
    """Transcripts in input order: strings, or phoneme lists for phoneme models."""
    hyps: list = [None] * len(utts)
    batches = length_sorted_batches(utts, batch_size)
    for idx in tqdm(batches, desc="transcribing", unit="batch", disable=not progress):
        audio, lengths = load_batch([utts[i] for i in idx])
        mel, mel_len = model.features(audio, lengths)
        logits, out_len = model.forward_features(mel, mel_len)
        for i, text in zip(idx, decode_batch(model, logits, out_len)):
            hyps[i] = text
    return hyps


def phoneme_references(model, texts: Sequence[str], cache_dir=None) -> list[list[str]]:
    """G2P references for a phoneme model (the config names the G2P; only `hama` is known)."""
    g2p = (phoneme_config(model) or {}).get("g2p")
    if g2p != "hama":
        raise ValueError(f"no G2P {g2p!r} for phoneme references (known: 'hama')")
    from .models.hama import g2p_references

    return g2p_references(texts, cache_dir=cache_dir)


def evaluate(model, utts: Sequence[Utterance], batch_size: int = 8, progress: bool = True,
             n_boot: int = 1000, seed: int = 0, g2p_cache=None, references: Sequence | None = None) -> dict:
    """WER/CER summary (see `text.wer_summary`), or for phoneme models the PER summary (see
    `text.token_error_summary`; references from the G2P, cached in `g2p_cache`, default
    build/g2p_cache), plus seconds and per-utterance transcripts. references: the transcripts to
    score against instead of the utterances' own (``score``); the utterances then need no text."""
    missing = [u.id for u in utts if u.text is None] if references is None else []
    if missing:
        raise ValueError(f"cannot evaluate: {len(missing)} utterance(s) have no transcript, e.g. {missing[0]}")
    start = time.perf_counter()
    hyps = transcribe(model, utts, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - start
    summary = score(model, utts, hyps, n_boot=n_boot, seed=seed, g2p_cache=g2p_cache, references=references)
    summary["seconds"] = round(seconds, 3)
    return summary


def score(model, utts: Sequence[Utterance], hyps: Sequence, n_boot: int = 1000, seed: int = 0,
          g2p_cache=None, references: Sequence | None = None) -> dict:
    """`evaluate`'s summary of transcripts `hyps` of `utts` made elsewhere (e.g. the grid's
    shards): WER/CER, or PER for phoneme models, plus per-utterance transcripts. references: one
    transcript per utterance to score against instead of its own text (strings; token lists for
    phoneme models), e.g. the float model's (``selection.fp32_transcripts``: label-free)."""
    if references is not None and len(references) != len(utts):
        raise ValueError(f"{len(references)} reference transcripts for {len(utts)} utterances")
    if phoneme_config(model):
        refs = ([list(r) for r in references] if references is not None
                else phoneme_references(model, [u.text for u in utts], cache_dir=g2p_cache))
        summary = token_error_summary(refs, hyps, n_boot=n_boot, seed=seed, name="per", unit="phonemes")
        summary["transcripts"] = [{"id": u.id, "text": u.text, "ref": " ".join(r), "hyp": " ".join(h)}
                                  for u, r, h in zip(utts, refs, hyps)]
        return summary
    refs = list(references) if references is not None else [u.text for u in utts]
    summary = wer_summary(refs, hyps, n_boot=n_boot, seed=seed)
    summary["transcripts"] = [{"id": u.id, "ref": r, "hyp": h} for u, r, h in zip(utts, refs, hyps)]
    return summary
