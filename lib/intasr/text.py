"""Text side of ASR: the character vocabulary, greedy CTC decoding, and WER/CER.

The vocabulary and blank position follow NeMo's English QuartzNet/Jasper models:
28 labels (space, a-z, apostrophe) and the CTC blank as the last class (index 28).
Error rates are computed with our own Levenshtein so the numbers do not depend on
the text transforms a metrics library applies behind our back.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

EN_CHARS = [" "] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["'"]

_SPACES = re.compile(r" +")


def normalize_transcript(s: str, labels: Sequence[str] = EN_CHARS) -> str:
    """Lowercase, drop characters outside the vocabulary, collapse runs of spaces.

    Whitespace of any kind (tabs, newlines) becomes a space first, so words never merge.
    """
    vocab = set(labels)
    s = "".join(" " if ch.isspace() else ch for ch in s.lower())
    s = "".join(ch for ch in s if ch in vocab)
    return _SPACES.sub(" ", s).strip()


def ctc_greedy_decode(logits, lengths=None, labels: Sequence[str] = EN_CHARS, time_axis: int = 1) -> list[str]:
    """Best-path CTC decoding to text: `ctc_greedy_tokens` with the labels joined ("" between)."""
    return ["".join(tokens) for tokens in ctc_greedy_tokens(logits, lengths, labels, time_axis)]


def ctc_greedy_tokens(logits, lengths=None, labels: Sequence[str] = EN_CHARS, time_axis: int = 1) -> list[list[str]]:
    """Best-path CTC decoding: argmax per frame, collapse repeats, then drop blanks.

    logits: [B, T, C] (time_axis=1) or [B, C, T] (time_axis=2), float or integer
            (the integer engine hands us int32 logits; ties go to the lowest class,
            like torch.argmax). A 2-D [B, T] input is taken as already-argmaxed ids.
    lengths: [B] valid frames per utterance; only the first lengths[b] frames are read.
    The blank is class len(labels), as in NeMo's CTC decoders.
    """
    x = torch.as_tensor(logits)
    if x.dim() == 3:
        if time_axis not in (1, 2):
            raise ValueError(f"time_axis must be 1 or 2 for [B, T, C] / [B, C, T] logits, got {time_axis}")
        ids = x.argmax(dim=3 - time_axis)  # the class axis is whichever of 1, 2 is not time
    elif x.dim() == 2:
        ids = x
    else:
        raise ValueError(f"expected logits [B, T, C] / [B, C, T] or ids [B, T], got shape {tuple(x.shape)}")
    if ids.is_floating_point():
        raise ValueError("2-D input is read as class ids and must be an integer tensor")
    ids = ids.cpu().long()

    batch, frames = ids.shape
    lengths = torch.full((batch,), frames) if lengths is None else torch.as_tensor(lengths).cpu().long()
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape [{batch}], got {tuple(lengths.shape)}")
    if (lengths < 0).any() or (lengths > frames).any():
        raise ValueError(f"lengths must lie in [0, {frames}], got {lengths.tolist()}")
    blank = len(labels)
    if ids.numel() and (ids.min() < 0 or ids.max() > blank):
        raise ValueError(f"class ids must lie in [0, {blank}] (blank = {blank}), got [{ids.min()}, {ids.max()}]")

    seqs = []
    for row, n in zip(ids.tolist(), lengths.tolist()):
        out, prev = [], None
        for k in row[:n]:
            if k != prev and k != blank:  # a blank between two equal labels keeps both
                out.append(labels[k])
            prev = k
        seqs.append(out)
    return seqs


@dataclass(frozen=True)
class ErrorCounts:
    """Edit distance and reference length; unpacks as (errors, words)."""

    errors: int
    words: int

    def __iter__(self):
        return iter((self.errors, self.words))

    @property
    def rate(self) -> float:
        """Error rate in percent (inf if the reference is empty but the hypothesis is not)."""
        if self.words == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return 100.0 * self.errors / self.words


def levenshtein(ref: Sequence, hyp: Sequence) -> int:
    """Minimum number of substitutions, insertions and deletions turning ref into hyp."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def word_errors(ref: str, hyp: str) -> ErrorCounts:
    """Word-level edit distance and number of reference words (whitespace split)."""
    r, h = ref.split(), hyp.split()
    return ErrorCounts(levenshtein(r, h), len(r))


def char_errors(ref: str, hyp: str) -> ErrorCounts:
    """Character-level edit distance (spaces count as characters) and reference length."""
    return ErrorCounts(levenshtein(ref, hyp), len(ref))


def _check_corpus(refs, hyps, n_boot: int, who: str, tokens, what: str) -> None:
    """The input checks both corpus summaries share (tokens: each reference as its units)."""
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError(f"{who} needs at least one utterance")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    for i, units in enumerate(tokens):
        if not len(units):
            raise ValueError(f"reference {i} is empty: every utterance needs a non-empty {what}")


def wer_summary(refs: Sequence[str], hyps: Sequence[str], n_boot: int = 1000, seed: int = 0) -> dict:
    """Corpus WER/CER (percent) with a bootstrap 95% confidence interval for the WER.

    WER = total word errors / total reference words (not a mean of per-utterance
    rates). The interval resamples utterances with replacement n_boot times
    (seeded numpy Generator) and takes the 2.5 / 97.5 percentiles.
    An empty reference raises ValueError naming its index: in our data it always
    means a lost transcript, and it would make per-utterance resampling ill-defined.
    """
    _check_corpus(refs, hyps, n_boot, "wer_summary", [r.split() for r in refs], "transcript")

    words = [word_errors(r, h) for r, h in zip(refs, hyps)]
    chars = [char_errors(r, h) for r, h in zip(refs, hyps)]
    w_err = np.array([c.errors for c in words], dtype=np.int64)
    w_ref = np.array([c.words for c in words], dtype=np.int64)

    lo, hi = bootstrap_ci(w_err, w_ref, n_boot, seed)

    n_chars = sum(c.words for c in chars)
    n_char_err = sum(c.errors for c in chars)
    return {
        "wer": float(100.0 * w_err.sum() / w_ref.sum()),
        "cer": 100.0 * n_char_err / n_chars,
        "words": int(w_ref.sum()),
        "word_errors": int(w_err.sum()),
        "chars": int(n_chars),
        "char_errors": int(n_char_err),
        "utterances": len(refs),
        "ci95": [float(lo), float(hi)],
    }


def bootstrap_ci(errors, lengths, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of a corpus error rate (percent): resample utterances with replacement
    n_boot times (seeded numpy Generator), take the 2.5 / 97.5 percentiles of sum(errors) / sum(lengths)."""
    errors, lengths = np.asarray(errors, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(errors), size=(n_boot, len(errors)))
    boot = 100.0 * errors[idx].sum(axis=1) / lengths[idx].sum(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


def token_error_summary(refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]], n_boot: int = 1000,
                        seed: int = 0, name: str = "per", unit: str = "phonemes") -> dict:
    """Corpus token error rate over token sequences (e.g. the phoneme error rate, PER), percent,
    with the same bootstrap 95% interval as `wer_summary`.

    Rate = total edit distance / total reference tokens. Keys: `name` (e.g. "per"), `unit`
    (reference token count), f"{unit[:-1]}_errors", "utterances", "ci95". An empty reference
    raises ValueError naming its index.
    """
    _check_corpus(refs, hyps, n_boot, "token_error_summary", refs, "reference")
    err = np.array([levenshtein(list(r), list(h)) for r, h in zip(refs, hyps)], dtype=np.int64)
    n = np.array([len(r) for r in refs], dtype=np.int64)
    lo, hi = bootstrap_ci(err, n, n_boot, seed)
    singular = unit[:-1] if unit.endswith("s") else unit
    return {
        name: float(100.0 * err.sum() / n.sum()),
        unit: int(n.sum()),
        f"{singular}_errors": int(err.sum()),
        "utterances": len(refs),
        "ci95": [lo, hi],
    }


def speaker_of(utt_id: str) -> str:
    """The speaker of a LibriSpeech utterance id (speaker-chapter-index): its first field."""
    return utt_id.split("-")[0]


def with_word_errors(transcripts: Sequence[dict]) -> list[dict]:
    """Per-utterance rows (`id`, `ref`, `hyp`, ...: `evaluate`'s transcripts) with `speaker`,
    `words` (reference words) and `word_errors` (word edit distance) added."""
    rows = []
    for t in transcripts:
        counts = word_errors(t["ref"], t["hyp"])
        rows.append({**t, "speaker": speaker_of(t["id"]), "words": counts.words, "word_errors": counts.errors})
    return rows


def wer_by(rows: Sequence[dict], key: str) -> list[dict]:
    """Pooled WER per value of `key` over rows with `words` and `word_errors` (`with_word_errors`),
    sorted by that value: words, word_errors, `WER %` (100 x errors / words) and utterances."""
    groups: dict = {}
    for r in rows:
        g = groups.setdefault(r[key], {key: r[key], "words": 0, "word_errors": 0, "utterances": 0})
        g["words"] += r["words"]
        g["word_errors"] += r["word_errors"]
        g["utterances"] += 1
    return [{key: g[key], "words": g["words"], "word_errors": g["word_errors"],
             "WER %": 100 * g["word_errors"] / g["words"], "utterances": g["utterances"]}
            for _, g in sorted(groups.items())]


def span_text(values, fmt: str = "{:.1f}", tolerance: float = 0.05) -> str:
    """The range of some numbers as prose quotes it: 'lo-hi' formatted with `fmt`, or the single
    number when max - min is under `tolerance`."""
    lo, hi = float(min(values)), float(max(values))
    return fmt.format(lo) if abs(hi - lo) < tolerance else f"{fmt.format(lo)}-{fmt.format(hi)}"
