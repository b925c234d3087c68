"""SentencePiece (BPE / unigram) tokenizers of NeMo's `*BPE` CTC models, and greedy CTC decoding with them.

A NeMo BPE `.nemo` archive carries the tokenizer as a SentencePiece model file (member
`<hash>_tokenizer.model`, referenced from `model_config.yaml` as
`tokenizer.model_path: nemo:<hash>_tokenizer.model`). We read it from the archive bytes (never
from disk), and turn CTC token ids into text the way NeMo does: argmax per frame, collapse
repeats, drop blanks (id = vocabulary size, the last class), then `SentencePieceProcessor.decode`
on the remaining ids (which joins the pieces and turns the word-boundary mark '▁' into spaces).
"""

from __future__ import annotations

from typing import Sequence

import torch

NEMO_PREFIX = "nemo:"


class TokenizerError(ValueError):
    """A tokenizer model that cannot be used."""


class SentencePieceTokenizer:
    """A SentencePiece model loaded from bytes; keeps the bytes so a `.nemo` can be written back."""

    def __init__(self, model_bytes: bytes, where: str = "tokenizer.model"):
        import sentencepiece as spm

        if not isinstance(model_bytes, (bytes, bytearray)) or not model_bytes:
            raise TokenizerError(f"{where}: empty or missing SentencePiece model")
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(bytes(model_bytes))
        except Exception as e:  # sentencepiece raises RuntimeError/OSError on a malformed proto
            raise TokenizerError(f"{where}: not a SentencePiece model: {e}") from e
        if sp.get_piece_size() <= 0:
            raise TokenizerError(f"{where}: SentencePiece model has no pieces")
        self.sp = sp
        self.model_bytes = bytes(model_bytes)
        self.where = where

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def vocabulary(self) -> list[str]:
        """Pieces in id order: NeMo's `decoder.vocabulary` for a SentencePiece model."""
        return [self.sp.id_to_piece(i) for i in range(self.vocab_size)]

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


def ctc_collapse(logits, lengths=None, time_axis: int = 1) -> list[list[int]]:
    """Greedy CTC token ids per utterance: argmax, collapse repeats, drop the blank (last class).

    logits [B, T, C] (time_axis=1) or [B, C, T] (time_axis=2), or already-argmaxed ids [B, T]
    (then the blank must be given by the class count, so pass logits when you can).
    """
    x = torch.as_tensor(logits)
    if x.dim() != 3:
        raise ValueError(f"expected logits [B, T, C] / [B, C, T], got shape {tuple(x.shape)}")
    if time_axis not in (1, 2):
        raise ValueError(f"time_axis must be 1 or 2, got {time_axis}")
    blank = x.shape[3 - time_axis] - 1
    ids = x.argmax(dim=3 - time_axis).cpu().long()
    batch, frames = ids.shape
    lengths = torch.full((batch,), frames) if lengths is None else torch.as_tensor(lengths).cpu().long()
    if lengths.shape != (batch,) or (lengths < 0).any() or (lengths > frames).any():
        raise ValueError(f"lengths must be [{batch}] values in [0, {frames}], got {lengths.tolist()}")
    out = []
    for row, n in zip(ids.tolist(), lengths.tolist()):
        toks, prev = [], None
        for k in row[:n]:
            if k != prev and k != blank:
                toks.append(k)
            prev = k
        out.append(toks)
    return out


def ctc_greedy_decode_bpe(logits, lengths, tokenizer: SentencePieceTokenizer, time_axis: int = 1) -> list[str]:
    """Greedy CTC transcripts of a BPE model: collapse frames to token ids, then `tokenizer.decode`."""
    x = torch.as_tensor(logits)
    classes = x.shape[3 - time_axis] if x.dim() == 3 else None
    if classes is not None and classes != tokenizer.vocab_size + 1:
        raise ValueError(f"logits have {classes} classes, tokenizer {tokenizer.vocab_size} tokens + blank")
    return [tokenizer.decode(toks) for toks in ctc_collapse(x, lengths, time_axis)]


def tokenizer_member(config: dict) -> str | None:
    """Archive member name of the SentencePiece model named by a NeMo config's `tokenizer`
    section (`model_path: nemo:<name>`), or None when the config names none."""
    tok = config.get("tokenizer") if isinstance(config, dict) else None
    if not isinstance(tok, dict):
        return None
    path = tok.get("model_path")
    if not path:
        return None
    path = str(path)
    return path[len(NEMO_PREFIX):] if path.startswith(NEMO_PREFIX) else path.rsplit("/", 1)[-1]


def tokenizer_from_archive(config: dict, files: dict[str, bytes], where: str) -> SentencePieceTokenizer | None:
    """The SentencePiece tokenizer a `.nemo` config refers to, read from the archive's other
    members (`read_nemo`'s third value). None if the config names no tokenizer model.
    Raises TokenizerError when it names one the archive lacks or that does not parse."""
    name = tokenizer_member(config)
    if name is None:
        return None
    tok_type = str(config["tokenizer"].get("type", "bpe"))
    if tok_type != "bpe":
        raise TokenizerError(f"{where}: tokenizer type {tok_type!r} not supported (SentencePiece 'bpe' only)")
    base = name.rsplit("/", 1)[-1]
    hits = [n for n in files if n == name or n.rsplit("/", 1)[-1] == base]
    if not hits:
        raise TokenizerError(f"{where}: config names tokenizer model {name!r} but the archive has no such member "
                             f"(members: {sorted(files)})")
    return SentencePieceTokenizer(files[hits[0]], f"{where}:{hits[0]}")


def nemo_tokenizer_files(tokenizer: SentencePieceTokenizer) -> tuple[dict[str, bytes], dict[str, str]]:
    """(archive members, config `tokenizer` entries) for writing a BPE model NeMo can restore.

    NeMo's `EncDecCTCModelBPE` insists on three tokenizer artifacts: the SentencePiece model
    (the only one it decodes with), SentencePiece's `tokenizer.vocab` (piece TAB score per id) and
    NeMo's `vocab.txt` (pieces with a leading '▁' stripped, other pieces prefixed '##', as NeMo's
    tokenizer script writes it). The last two are derived from the model here.
    """
    sp = tokenizer.sp
    pieces = tokenizer.vocabulary
    spe_vocab = "".join(f"{p}\t{sp.get_score(i):g}\n" for i, p in enumerate(pieces))
    vocab_txt = "".join(f"{(p[1:] or p) if p.startswith(chr(0x2581)) else '##' + p}\n" for p in pieces)
    files = {"tokenizer.model": tokenizer.model_bytes, "tokenizer.vocab": spe_vocab.encode("utf-8"),
             "vocab.txt": vocab_txt.encode("utf-8")}
    entries = {"model_path": NEMO_PREFIX + "tokenizer.model", "spe_tokenizer_vocab": NEMO_PREFIX + "tokenizer.vocab",
               "vocab_path": NEMO_PREFIX + "vocab.txt"}
    return files, entries
