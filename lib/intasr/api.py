"""The Python API: open any model and transcribe audio files or arrays.

    import intasr
    asr = intasr.load("qn15_w8a8.aqz")          # a float .nemo or a quantized .aqz
    asr.transcribe(["a.wav", "b.flac"])          # -> ["text of a", "text of b"]
    asr.transcribe([samples], sample_rate=8000)  # 1-D float arrays / tensors, resampled to the model's rate

Files may be any format soundfile reads, at any sample rate and channel count (mixed down to mono
and resampled to the model's rate). Inputs are batched by length, and the models mask padding, so
an input gives the same transcript alone or in a batch. Phoneme models (the hama Conformer) give
their phonemes joined by spaces. `expand_inputs` turns folders (searched recursively) and NeMo
manifests into the list of audio files the `intasr transcribe` command reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .audio import AudioError, load_audio, resample
from .evaluate import apply_decoding, decode_batch, phoneme_config

# File name endings searched for in folders (what libsndfile reads; mp3 where it is built in).
AUDIO_SUFFIXES = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc",
                            ".au", ".snd", ".caf", ".w64", ".rf64", ".sph", ".nist", ".voc"})
MANIFEST_SUFFIXES = frozenset({".json", ".jsonl", ".manifest"})

# Long inputs. An input up to CHUNK_SECONDS long is decoded whole (every LibriSpeech utterance is
# shorter, so `transcribe` equals `evaluate` there); a longer one in windows of CHUNK_SECONDS that
# overlap by OVERLAP_SECONDS, each window keeping the output frames nearest its own centre (cut at
# the middle of each overlap) and the kept frames decoded as one sequence. Fixed windows rather
# than cuts at silences: memory stays bounded whatever the audio, and a word at a window edge is
# still decoded with 2 s of context on both sides. Each window's features are normalized on the
# window itself, as a file of that length would be. MAX_SECONDS bounds what is read into memory.
CHUNK_SECONDS = 40.0
OVERLAP_SECONDS = 4.0
MAX_SECONDS = 2 * 3600.0


def _is_manifest(path: Path) -> bool:
    """A NeMo JSON-lines manifest: by its suffix, or (no audio suffix) a file starting with '{'."""
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return True
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return False
    try:
        with open(path, "rb") as f:
            return f.read(256).lstrip()[:1] == b"{"
    except OSError:
        return False


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Audio files, folders (searched recursively for audio files, sorted) and NeMo manifests
    -> the audio files, in order. A missing path, a folder without audio or an empty manifest
    raises AudioError naming it."""
    from .data import read_manifest

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise AudioError(f"{p}: no audio files in this folder (searched recursively for "
                                 f"{', '.join(sorted(AUDIO_SUFFIXES))})")
            files.extend(found)
        elif p.is_file():
            if _is_manifest(p):
                utts = read_manifest(p)
                if not utts:
                    raise AudioError(f"{p}: the manifest lists no audio files")
                files.extend(Path(u.audio_path) for u in utts)
            else:
                files.append(p)
        else:
            raise AudioError(f"{p}: no such file or folder")
    return files


@dataclass
class _Source:
    """One input: a file (read when its batch is built) or an array already at the model's rate."""
    name: str
    seconds: float            # duration at the input's own rate
    rate: int
    channels: int
    path: Path | None = None
    samples: np.ndarray | None = None


def _probe_file(path: Path) -> _Source:
    import soundfile as sf

    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    try:
        info = sf.info(str(path))
    except Exception as e:  # LibsndfileError / RuntimeError / TypeError, by soundfile version and format
        reason = getattr(e, "error_string", None) or str(e)
        raise AudioError(f"{path}: not an audio file soundfile can read ({reason})") from e
    if info.frames <= 0:
        raise AudioError(f"{path}: audio is empty (0 samples)")
    return _Source(str(path), info.frames / info.samplerate, int(info.samplerate), int(info.channels), path=path)


def _array_source(x, index: int, rate: int) -> _Source:
    name = f"<array {index}>"
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 1:
        raise AudioError(f"{name}: expected a 1-D array of samples (mono), got shape {x.shape}")
    if x.size == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    if np.issubdtype(x.dtype, np.signedinteger):  # integer PCM, scaled as soundfile reads it
        x = x.astype(np.float64) / float(np.iinfo(x.dtype).max + 1)
    elif not np.issubdtype(x.dtype, np.floating):
        raise AudioError(f"{name}: expected float samples (or signed integer PCM), got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    return _Source(name, x.size / rate, int(rate), 1, samples=x)


class Recognizer:
    """A float or quantized CTC model with its front end, ready to transcribe.

    model: anything with `labels`, `features(audio, lengths)` and `forward_features(mel, lengths)`
    (ConvASR, ConformerCTC, the integer model of an .aqz file).
    """

    def __init__(self, model, path: str | Path | None = None, chunk_seconds: float = CHUNK_SECONDS,
                 overlap_seconds: float = OVERLAP_SECONDS):
        self.model = model.eval() if hasattr(model, "eval") else model
        self.chunk_seconds, self.overlap_seconds = float(chunk_seconds), float(overlap_seconds)
        self.path = None if path is None else Path(path)
        fe = getattr(getattr(model, "preprocessor", None), "featurizer", None)
        config = getattr(model, "config", None) or {}
        self.sample_rate = int(getattr(fe, "sample_rate", None) or config.get("sample_rate") or 16000)
        # the shortest input that fills one analysis window
        self.min_samples = int(getattr(fe, "n_fft", None) or getattr(fe, "win_length", None) or 1)
        self.phonemes = phoneme_config(model) is not None
        hop = getattr(fe, "hop_length", None)
        self._hop_seconds = hop / self.sample_rate if hop else None
        self._subsampling = _subsampling_factor(config)

    def __repr__(self) -> str:
        return (f"Recognizer({type(self.model).__name__}, {self.sample_rate} Hz"
                f"{', phonemes' if self.phonemes else ''}{f', {self.path}' if self.path else ''})")

    def transcribe(self, inputs, sample_rate: int | None = None, batch_size: int = 8) -> list[str]:
        """Transcripts, one per input, in input order. `inputs`: audio file paths and/or 1-D float
        arrays (numpy or torch) at `sample_rate` Hz (default: the model's rate); a single path or
        array is taken as a list of one."""
        return [r["text"] for r in self.transcribe_detailed(inputs, sample_rate, batch_size)]

    def transcribe_detailed(self, inputs, sample_rate: int | None = None, batch_size: int = 8,
                            on_note: Callable[[str], None] | None = None, words: bool = False) -> list[dict]:
        """Like transcribe, as dicts {file, text, seconds} (seconds: the input's duration), with
        words=True also "words": [{word, start, end}, ...] in seconds, from the CTC frames that emit
        each word's tokens (phoneme models: a word is its phonemes joined by spaces, between
        word-boundary tokens). Every file's header is checked before anything is decoded. on_note
        receives one message when some inputs are resampled or mixed down to mono, and one when
        some are longer than a window and decoded in overlapping windows (CHUNK_SECONDS)."""
        if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim != 1:
            raise AudioError(f"expected a list of 1-D arrays (or one 1-D array), got an array of shape "
                             f"{tuple(inputs.shape)}")
        if isinstance(inputs, (str, Path, np.ndarray, torch.Tensor)):
            inputs = [inputs]
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        rate = int(sample_rate) if sample_rate is not None else self.sample_rate
        if rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        sources = [_probe_file(Path(x)) if isinstance(x, (str, Path)) else _array_source(x, i, rate)
                   for i, x in enumerate(inputs)]
        window = self._window_samples()  # checks the chunk settings before anything is read
        for src in sources:  # before anything is decoded
            if src.seconds * self.sample_rate < self.min_samples:
                raise AudioError(f"{src.name}: audio too short ({src.seconds * 1000:.1f} ms; at least "
                                 f"{self.min_samples} samples at {self.sample_rate} Hz are needed)")
            if src.seconds > MAX_SECONDS:
                raise AudioError(f"{src.name}: audio too long ({src.seconds / 3600:.1f} h; at most "
                                 f"{MAX_SECONDS / 3600:g} h per input: split it first)")
        long = {i for i, s in enumerate(sources) if s.seconds * self.sample_rate > window[0]}
        if on_note is not None:
            for note in (self._conversion_note(sources), self._chunk_note(len(long), window)):
                if note:
                    on_note(note)
        results: list[dict | None] = [None] * len(sources)
        order = sorted(range(len(sources)), key=lambda i: (sources[i].seconds, i))
        short = [i for i in order if i not in long]
        groups = [short[k:k + batch_size] for k in range(0, len(short), batch_size)] + [[i] for i in order if i in long]
        for idx in groups:
            if idx[0] in long:
                texts, timings = self._run_long(self._load(sources[idx[0]])[1], window, batch_size, words)
            else:
                texts, timings = self._run([self._load(sources[i]) for i in idx], words)
            for i, text, timing in zip(idx, texts, timings):
                results[i] = {"file": sources[i].name, "text": text, "seconds": round(sources[i].seconds, 3)}
                if words:
                    results[i]["words"] = timing
        return results

    def _window_samples(self) -> tuple[int, int]:
        """(window, step) in samples for long inputs: at most chunk_seconds and what the front end
        reads (hama's: 3000 frames), starts on output-frame boundaries so kept frames line up."""
        if not (self.chunk_seconds > 0 and self.overlap_seconds >= 0):
            raise ValueError(f"chunk length must be positive and the overlap not negative, got "
                             f"{self.chunk_seconds} s / {self.overlap_seconds} s")
        fe = getattr(getattr(self.model, "preprocessor", None), "featurizer", None)
        hop = int(getattr(fe, "hop_length", None) or 160)
        align = hop * (self._subsampling or 8)  # 8: a multiple of every usual subsampling (1, 2, 4, 8)
        window = int(self.chunk_seconds * self.sample_rate)
        max_frames = getattr(fe, "max_frames", None)
        if max_frames:
            window = min(window, (int(max_frames) - 1) * hop)
        overlap_seconds = min(self.overlap_seconds, self.chunk_seconds / 4)  # short windows: a quarter
        overlap = -(-int(overlap_seconds * self.sample_rate) // (2 * align)) * 2 * align
        step = (window - overlap) // align * align
        if step <= 0 or window < self.min_samples:
            raise ValueError(f"chunk length {self.chunk_seconds} s is too short for an overlap of "
                             f"{self.overlap_seconds} s with this model")
        return window, step

    def _chunk_note(self, n_long: int, window: tuple[int, int]) -> str | None:
        if not n_long:
            return None
        w, step = (x / self.sample_rate for x in window)
        return (f"{n_long} input(s) longer than {w:g} s are decoded in {w:g} s windows overlapping by "
                f"{w - step:g} s")

    @torch.inference_mode()
    def _run_long(self, wave: np.ndarray, window: tuple[int, int], batch_size: int, words: bool):
        """One long input: windows decoded in batches, the centre frames of each stitched, decoded once."""
        size, step = window
        starts = [0]
        while starts[-1] + size < len(wave):
            starts.append(starts[-1] + step)
        half = (size - step) // 2  # each window keeps from the middle of the overlap before it ...
        pieces, factor = [], None
        for k in range(0, len(starts), batch_size):
            batch = starts[k:k + batch_size]
            logits, out_len, mel_len = self._forward([wave[a:a + size] for a in batch])
            factor = self._subsampling or max(1, round(float(mel_len.max()) / max(1, int(out_len.max()))))
            frame = self._hop_samples() * factor
            for j, a in enumerate(batch):
                first = 0 if a == 0 else half // frame
                last = int(out_len[j]) if a == starts[-1] else (step + half) // frame  # ... to the next middle
                pieces.append(logits[j, :, first:last])
        stitched = torch.cat(pieces, dim=1)[None]
        out_len = torch.tensor([stitched.shape[2]], dtype=torch.int64)
        return self._decode(stitched, out_len, self._hop_samples() * factor / self.sample_rate, words)

    def _hop_samples(self) -> int:
        fe = getattr(getattr(self.model, "preprocessor", None), "featurizer", None)
        return int(getattr(fe, "hop_length", None) or 160)

    def _conversion_note(self, sources: list[_Source]) -> str | None:
        rates = sorted({s.rate for s in sources if s.rate != self.sample_rate})
        multi = sum(1 for s in sources if s.channels > 1)
        parts = []
        if rates:
            n = sum(1 for s in sources if s.rate != self.sample_rate)
            parts.append(f"resampling {n} input(s) from {', '.join(f'{r} Hz' for r in rates)} to the model's "
                         f"{self.sample_rate} Hz")
        if multi:
            parts.append(f"mixing {multi} multi-channel input(s) down to mono")
        return "; ".join(parts) or None

    def _load(self, s: _Source) -> tuple[str, np.ndarray]:
        wave = load_audio(s.path, self.sample_rate) if s.path is not None else resample(s.samples, s.rate,
                                                                                        self.sample_rate)
        if len(wave) < self.min_samples:
            raise AudioError(f"{s.name}: audio too short ({len(wave)} samples at {self.sample_rate} Hz; "
                             f"at least {self.min_samples} are needed)")
        return s.name, wave

    @torch.inference_mode()
    def _forward(self, waves: list[np.ndarray]):
        """A padded batch -> (logits [B, C, T'], output lengths, feature lengths)."""
        lengths = torch.tensor([len(w) for w in waves], dtype=torch.int64)
        audio = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
        for i, w in enumerate(waves):
            audio[i, :len(w)] = torch.from_numpy(np.ascontiguousarray(w))
        mel, mel_len = self.model.features(audio, lengths)
        logits, out_len = self.model.forward_features(mel, mel_len)
        return logits, out_len, mel_len

    def _run(self, named_waves: list[tuple[str, np.ndarray]], words: bool = False):
        logits, out_len, mel_len = self._forward([w for _, w in named_waves])
        return self._decode(logits, out_len, self._frame_seconds(mel_len, out_len), words)

    @torch.inference_mode()
    def _decode(self, logits: torch.Tensor, out_len: torch.Tensor, frame: float, words: bool):
        """(texts, word timings or Nones) of a batch of logits, greedy CTC as `evaluate` decodes."""
        texts = [" ".join(t) if isinstance(t, (list, tuple)) else str(t)
                 for t in decode_batch(self.model, logits, out_len)]
        if not words:
            return texts, [None] * len(texts)
        ids = apply_decoding(self.model, logits).argmax(dim=1).cpu()  # [B, T'], as decode_batch reads them
        return texts, [self._words(ids[b, :int(out_len[b])].tolist(), frame) for b in range(len(texts))]

    def _frame_seconds(self, mel_len: torch.Tensor, out_len: torch.Tensor) -> float:
        """Seconds per output (logit) frame: feature hop x the encoder's subsampling."""
        hop = self._hop_seconds or 0.01
        factor = self._subsampling
        if not factor:  # not in the config: the ratio of feature to output frames
            factor = max(1, round(float(mel_len.max()) / max(1, int(out_len.max()))))
        return hop * factor

    def _words(self, ids: list[int], frame: float) -> list[dict]:
        """Greedy CTC with frame positions -> [{word, start, end}] (end: after the last emitting frame)."""
        from .models.hama import WORD_BOUNDARY

        labels, blank = self.model.labels, len(self.model.labels)
        out, current, first, last, prev = [], [], 0, 0, None

        def close():
            if current:
                out.append({"word": (" " if self.phonemes else "").join(current),
                            "start": round(first * frame, 3), "end": round((last + 1) * frame, 3)})
                current.clear()

        for t, k in enumerate(ids):
            if k != prev and k != blank and 0 <= k < blank:
                label = labels[k]
                if self.phonemes:
                    if not label.strip() or label == WORD_BOUNDARY:
                        close()
                    elif label != "<blank>":
                        if not current:
                            first = t
                        current.append(label)
                        last = t
                else:
                    for ch in label:
                        if ch.isspace():
                            close()
                        else:
                            if not current:
                                first = t
                            current.append(ch)
                            last = t
            prev = k
        close()
        return out


def open_model(path: str | Path):
    """A float `.nemo` model or a quantized model file, by content."""
    from .models.checkpoint import load_model

    path = Path(path)
    try:
        from .program.aqz import is_quantized_file
        from .integer_model import load_quantized
    except ImportError:  # the integer engine is optional for float-only use
        return load_model(path)
    if path.is_file() and is_quantized_file(path):
        return load_quantized(path)
    return load_model(path)


def open_for_decoding(path: str | Path, runtime: str | None = None):
    """``open_model``'s model, ready to decode: a quantized one on `runtime`
    (``IntegerModel.use_runtime``), a float one on ``fastconv.inference_copy`` (as the grid's FP32
    row decodes). Quantize from ``open_model``'s model instead: calibration reads its activations."""
    model = open_model(path)
    if hasattr(model, "use_runtime"):
        model.use_runtime(runtime)
        return model
    from .models.fastconv import inference_copy

    return inference_copy(model)


def _subsampling_factor(config: dict) -> int | None:
    """Input frames per output frame from a model config: the product of a ConvASR's block strides,
    or a Conformer's subsampling_factor; None when the config does not say."""
    enc = config.get("encoder") or {}
    if "jasper" in enc:
        factor = 1
        for block in enc["jasper"]:
            stride = block.get("stride", [1])
            factor *= int(stride[0] if isinstance(stride, (list, tuple)) else stride)
        return factor
    if enc.get("subsampling_factor"):
        return 1 if "subsampling" in enc and not enc["subsampling"] else int(enc["subsampling_factor"])
    return None


def load(path: str | Path, runtime: str | None = None) -> Recognizer:
    """Open a float `.nemo` (QuartzNet, JasperDR, Conformer-CTC, the imported hama Conformer) or a
    quantized `.aqz` model file as a Recognizer. runtime: a quantized model's engine ("auto", "c",
    "torch": ``IntegerModel.use_runtime``; default $INTASR_RUNTIME, else auto). The model is
    ``open_for_decoding``'s."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    return Recognizer(open_for_decoding(path, runtime), path)


def ctm_lines(results: list[dict]) -> list[str]:
    """CTM lines `<file-id> 1 <start> <duration> <word>` (times in seconds) from transcribe_detailed
    results with words. file-id: the file name without its extension, or the whole path (spaces as
    '_') when two inputs share a name, so every line still says which file it is."""
    stems = [Path(r["file"]).stem for r in results]
    lines = []
    for r, stem in zip(results, stems):
        file_id = stem if stems.count(stem) == 1 else r["file"]
        file_id = "_".join(file_id.split()) or "_"
        for w in r.get("words") or []:
            lines.append(f"{file_id} 1 {w['start']:.2f} {w['end'] - w['start']:.2f} {w['word'].replace(' ', '_')}")
    return lines
