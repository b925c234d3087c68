"""Datasets: LibriSpeech folders, NeMo manifests, batching, and downloads.

Everything returns a sorted list of Utterance records; audio is only read when a
batch is built (load_batch), so listing a split is cheap.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch

from .audio import load_audio
from .text import normalize_transcript


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""


@dataclass
class Utterance:
    id: str
    audio_path: Path
    text: str | None
    duration: float | None


# --- reading -----------------------------------------------------------------------------

def _duration(path: Path) -> float:
    try:
        return float(sf.info(str(path)).duration)  # reads the header only
    except Exception as e:
        raise DataError(f"{path}: cannot read audio header ({e})") from e


def _regular_file(path) -> bool:
    """A regular file (or a link to one); False for anything else, a name too long or a NUL in it."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _is_audio(path: Path) -> bool:
    """Whether soundfile reads the file's header (how a manifest given as --data by mistake is told apart)."""
    try:
        sf.info(str(path))
        return True
    except Exception:  # soundfile raises several types by format and version
        return False


def _read_transcripts(trans_path: Path) -> dict[str, str]:
    texts = {}
    try:
        lines = trans_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{trans_path}: not a transcript file: byte {e.start} is not UTF-8 text") from e
    except OSError as e:
        raise DataError(f"{trans_path}: cannot read transcripts ({e.strerror or e})") from e
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        utt_id, _, words = line.strip().partition(" ")
        if not words:
            raise DataError(f"{trans_path}:{lineno}: expected 'ID WORDS...', got {line!r}")
        texts[utt_id] = normalize_transcript(words)
    return texts


def read_librispeech(root, require_text: bool = True) -> list[Utterance]:
    """List a LibriSpeech split (root/speaker/chapter/ID.flac + speaker-chapter.trans.txt), sorted by id.

    Transcripts are lowercased to the model vocabulary. With require_text=False
    (training audio without transcripts) text is None where no transcript exists.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: LibriSpeech folder not found")
    try:
        flacs = sorted(root.rglob("*.flac"), key=lambda p: p.stem)
    except (OSError, RecursionError) as e:
        raise DataError(f"{root}: cannot list the folder ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}; nested too deep?)") from e
    if not flacs:
        raise DataError(f"{root}: no .flac files found (expected speaker/chapter/*.flac)")

    cache: dict[Path, dict[str, str]] = {}
    utts = []
    for flac in flacs:
        if not flac.is_file():   # a FIFO, a device or a link to one would block or never end
            raise DataError(f"{flac}: not a regular file")
        speaker_chapter = "-".join(flac.stem.split("-")[:2])
        trans = flac.parent / f"{speaker_chapter}.trans.txt"
        if trans not in cache:
            cache[trans] = _read_transcripts(trans) if trans.is_file() else {}
        text = cache[trans].get(flac.stem)
        if text is None and require_text:
            problem = "has no line for it" if trans.is_file() else "does not exist"
            raise DataError(f"{flac}: no transcript; transcript file {trans} {problem}")
        utts.append(Utterance(flac.stem, flac, text, _duration(flac)))
    return utts


def read_manifest(path, require_text: bool = False) -> list[Utterance]:
    """Read a NeMo JSON-lines manifest (audio_filepath, duration, text; extra keys ignored).

    Relative audio paths are resolved against the manifest's folder. The id is the
    'id' field if present, else the audio file name without extension. Text is kept
    as written (NeMo manifests are already normalized).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a manifest (JSON lines); byte {e.start} is not UTF-8 text"
                        f"{' (an audio file? `intasr transcribe` reads audio)' if _is_audio(path) else ''}") from e
    utts = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
        except RecursionError as e:
            raise DataError(f"{path}:{lineno}: not a manifest line (JSON nested too deep)") from e
        if not isinstance(row, dict) or not isinstance(row.get("audio_filepath"), str):
            raise DataError(f"{path}:{lineno}: expected a JSON object with a string 'audio_filepath'")
        text = row.get("text")
        if text is not None and not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: 'text' must be a string, got {type(text).__name__}")
        if text is None and require_text:
            raise DataError(f"{path}:{lineno}: missing 'text'")
        duration = row.get("duration")
        if duration is not None and not isinstance(duration, (int, float)):
            raise DataError(f"{path}:{lineno}: 'duration' must be a number, got {duration!r}")
        audio = Path(row["audio_filepath"])
        audio = audio if audio.is_absolute() else path.parent / audio
        utts.append(Utterance(str(row.get("id", audio.stem)), audio, text,
                              None if duration is None else float(duration)))
    return utts


def write_manifest(utts: list[Utterance], path) -> None:
    """Write a NeMo manifest atomically (temp file in the same folder, then os.replace).

    Audio paths are written absolute so the manifest can move; a missing duration
    is read from the audio header, since NeMo requires it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for u in utts:
        audio = Path(os.path.abspath(u.audio_path))
        row = {"audio_filepath": str(audio),
               "duration": u.duration if u.duration is not None else _duration(audio)}
        if u.text is not None:
            row["text"] = u.text
        if u.id != audio.stem:
            row["id"] = u.id
        lines.append(json.dumps(row, ensure_ascii=False))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_dataset(path_or_dir, require_text: bool = True, limit: int | None = None) -> list[Utterance]:
    """A LibriSpeech folder or a manifest file -> utterances (the first `limit` if given)."""
    p = Path(path_or_dir)
    if p.is_dir():
        utts = read_librispeech(p, require_text=require_text)
    elif p.is_file():
        if _is_audio(p):
            raise DataError(f"{p}: is an audio file; this option takes a LibriSpeech folder or a NeMo manifest "
                            f"(`intasr transcribe` reads audio files)")
        utts = read_manifest(p, require_text=require_text)
    else:
        raise DataError(f"{p}: no such dataset folder or manifest")
    utts = utts[:limit] if limit is not None else utts
    missing = [u for u in utts if not _regular_file(u.audio_path)]
    if missing:  # said before any decoding starts
        raise DataError(f"{p}: audio file {missing[0].audio_path} not found ({len(missing)} of {len(utts)} "
                        f"listed files missing)")
    return utts


def length_sorted_batches(utts: Sequence[Utterance], batch_size: int) -> list[list[int]]:
    """Indices of `utts` in batches of `batch_size`, utterances of similar length together (less
    padding): sorted by (duration, id)."""
    order = sorted(range(len(utts)), key=lambda i: (utts[i].duration or 0.0, utts[i].id))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def load_batch(utts, sample_rate: int = 16000) -> tuple[torch.Tensor, torch.Tensor]:
    """Read utterances (or audio paths) -> (audio [B, Nmax] float32 zero-padded, lengths [B] int64)."""
    if not utts:
        raise ValueError("load_batch needs at least one utterance")
    waves = [load_audio(u.audio_path if isinstance(u, Utterance) else u, sample_rate) for u in utts]
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.int64)
    audio = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
    for i, w in enumerate(waves):
        audio[i, : len(w)] = torch.from_numpy(w)
    return audio, lengths


# --- downloads ---------------------------------------------------------------------------

# OpenSLR resource 12; md5 values as published in https://www.openslr.org/resources/12/md5sum.txt
_OPENSLR_12 = "https://www.openslr.org/resources/12"
LIBRISPEECH_SPLITS = ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100")
LIBRISPEECH_URLS = {s: f"{_OPENSLR_12}/{s}.tar.gz" for s in LIBRISPEECH_SPLITS}
LIBRISPEECH_MD5 = {
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
}


def md5sum(path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest, md5: str | None = None) -> Path:
    """Download url to dest via dest.part, check md5 (if given), then os.replace.

    A crash never leaves a truncated file at dest; an existing dest with the right
    md5 is kept. Interrupted downloads restart from zero (no HTTP range requests).
    """
    from tqdm import tqdm

    dest = Path(dest)
    if dest.is_file() and md5 is not None and md5sum(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({e}). No internet? "
                        f"Download it manually from {url} to {dest.parent}") from e
    if md5 is not None:
        got = md5sum(part)
        if got != md5:
            part.unlink(missing_ok=True)
            raise DataError(f"{dest}: md5 mismatch for {url}: expected {md5}, got {got} (file deleted)")
    os.replace(part, dest)
    return dest


MAX_EXPANSION = 20   # a compressed archive may hold at most this many times its size (FLAC does not compress)


def _inside(root: Path, target: Path) -> bool:
    return target == root or root in target.parents


def extract_tar_safely(tar_path, dest) -> Path:
    """Extract a tar (any compression) into dest, refusing anything that could write elsewhere.

    Every member is checked before anything is written: absolute names, '..' escapes,
    symlinks/hardlinks pointing outside dest, and device/fifo members raise DataError
    naming the member.
    """
    import lzma
    import zlib

    tar_path, dest = Path(tar_path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    damaged = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError, KeyError, RecursionError)
    try:
        tf = tarfile.open(tar_path, "r:*")
    except damaged as e:
        raise DataError(f"{tar_path}: cannot open archive ({' '.join(str(e).split())[:300]})") from e
    # what the members claim is checked before anything is written: a plain tar's members fit in
    # the file, a compressed one's at most MAX_EXPANSION times it (a gzip of zeros inflates 1000x)
    size = tar_path.stat().st_size
    with open(tar_path, "rb") as f:
        compressed = f.read(6).startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))
    budget = size * (MAX_EXPANSION if compressed else 1) + (1 << 20)
    with tf:
        members, total = [], 0
        try:
            while (m := tf.next()) is not None:   # each header checked as it is read, before the next
                members.append(m)                 # one (a compressed stream is inflated to reach it)
                total += m.size if m.isfile() else 0
                if total > budget:
                    raise DataError(f"{tar_path}: members claim {total}+ bytes, more than a {size}-byte "
                                    f"{'compressed ' if compressed else ''}archive can hold (truncated or hostile)")
        except damaged as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{tar_path}: damaged archive ({' '.join(str(e).split())[:300]})") from e
        for m in members:
            bad = f"{tar_path}: refusing member {m.name!r}"
            if os.path.isabs(m.name) or m.name.startswith(("/", "\\")):
                raise DataError(f"{bad}: absolute path")
            target = Path(os.path.normpath(root / m.name))
            if not _inside(root, target):
                raise DataError(f"{bad}: escapes {dest}")
            if m.issym():
                link = Path(os.path.normpath(target.parent / m.linkname))
                if os.path.isabs(m.linkname) or not _inside(root, link):
                    raise DataError(f"{bad}: symlink to {m.linkname!r} points outside {dest}")
            elif m.islnk():
                link = Path(os.path.normpath(root / m.linkname))
                if os.path.isabs(m.linkname) or not _inside(root, link):
                    raise DataError(f"{bad}: hardlink to {m.linkname!r} points outside {dest}")
            elif not (m.isfile() or m.isdir()):
                raise DataError(f"{bad}: device or special file")
        # Python's 'data' filter is a second line of defence (e.g. against symlinked parents).
        try:
            tf.extractall(root, members=members, filter="data")
        except damaged as e:
            raise DataError(f"{tar_path}: cannot extract into {dest} ({' '.join(str(e).split())[:300]})") from e
    return dest


def download_librispeech(split: str, root, keep_archive: bool = False) -> Path:
    """Download and extract one LibriSpeech split; returns root/LibriSpeech/<split>.

    Skips the download when that folder already holds .flac files.
    """
    if split not in LIBRISPEECH_URLS:
        raise ValueError(f"unknown LibriSpeech split {split!r}; choose from {list(LIBRISPEECH_URLS)}")
    root = Path(root)
    out = root / "LibriSpeech" / split
    if out.is_dir() and any(out.rglob("*.flac")):
        return out
    archive = download_file(LIBRISPEECH_URLS[split], root / f"{split}.tar.gz", md5=LIBRISPEECH_MD5[split])
    extract_tar_safely(archive, root)
    if not keep_archive:
        archive.unlink()
    return out


# Public NeMo checkpoints the paper's models correspond to (NGC names for ASRModel.from_pretrained).
NEMO_PRETRAINED = {
    "QuartzNet15x5Base-En": "QuartzNet 15x5, English chars, the paper's QuartzNet baseline (NeMo 1.0 era)",
    "stt_en_quartznet15x5": "QuartzNet 15x5, English chars, current NeMo release",
    "stt_en_jasper10x5dr": "Jasper 10x5 dense-residual, English chars",
}


def download_pretrained(name: str, dest) -> Path:
    """Fetch a NeMo checkpoint by name (needs nemo_toolkit and internet) and save it as a .nemo file."""
    if name not in NEMO_PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; choose from {list(NEMO_PRETRAINED)}")
    try:
        from nemo.collections.asr.models import ASRModel
    except ImportError as e:
        raise DataError(f"downloading {name} needs nemo_toolkit ('pip install nemo_toolkit[asr]'): {e}") from e
    try:
        model = ASRModel.from_pretrained(name, map_location="cpu")
    except Exception as e:
        raise DataError(f"could not fetch {name} from NGC ({e}). No internet? Download {name}.nemo "
                        f"manually from NVIDIA NGC and save it as {dest}") from e
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(dest))
    return dest
