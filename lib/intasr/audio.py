"""Audio in, log-mel features out.

load_audio reads a file into float32 mono at the model's sample rate.
MelFrontend re-implements NeMo's AudioToMelSpectrogramPreprocessor (FilterbankFeatures)
in plain torch, so the models run without importing NeMo, and so the paper-era
(NeMo 1.0.0b4) featurizer can be reproduced with legacy=True.
"""
from __future__ import annotations

import math
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


class AudioError(ValueError):
    """A file could not be turned into usable audio; the message names the file and the problem."""


# Limits of load_audio on what a file's header may claim (issue 29): rates, the exact resampling
# ratio's terms (the polyphase filter has 20 x max(up, down) taps), decoded samples per file byte.
MIN_RATE, MAX_RATE = 1000, 768000
MAX_RATIO_TERM = 1 << 16
MAX_SAMPLES_PER_BYTE = 16
MAX_FREE_SAMPLES = 16 * 60 * 16000        # 16 minutes at 16 kHz, whatever the file's size


def _resample(audio: np.ndarray, ratio: Fraction) -> np.ndarray:
    """Polyphase resampling by the reduced `ratio` (new rate / old rate: the shortest filter).
    scipy.signal is imported here: it takes ~0.7 s, and most runs never resample."""
    from scipy.signal import resample_poly

    return resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


def _meta_window(length: int, periodic: bool = False) -> torch.Tensor:
    """A window's shape on torch's meta device: torch computes a meta hann_window through its
    Python decompositions, whose first use costs ~1 s, for values a meta tensor does not hold."""
    return torch.empty(length, device="meta")


def load_audio(path, sample_rate: int = 16000) -> np.ndarray:
    """Read an audio file as float32 mono in [-1, 1] at `sample_rate` Hz.

    Multi-channel audio is averaged; other rates are resampled with an exact
    rational polyphase filter (e.g. 44100 -> 16000 is up 160, down 441).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    size = path.stat().st_size
    try:
        with sf.SoundFile(str(path)) as f:
            sr, frames, channels = f.samplerate, f.frames, f.channels
            # what the header claims is checked before anything is decoded (a file from a stranger):
            # a rate the exact resampler can serve with a filter of bounded length, and at most
            # MAX_SAMPLES_PER_BYTE samples per byte of file beyond the first MAX_FREE_SAMPLES (a FLAC
            # of digital silence decodes 1000x; real speech about 1 sample per byte)
            if not MIN_RATE <= sr <= MAX_RATE:
                raise AudioError(f"{path}: sample rate {sr} Hz outside {MIN_RATE}..{MAX_RATE} Hz")
            ratio = Fraction(sample_rate, sr)
            if max(ratio.numerator, ratio.denominator) > MAX_RATIO_TERM:
                raise AudioError(f"{path}: sample rate {sr} Hz: the exact resampling to {sample_rate} Hz "
                                 f"({ratio.numerator}/{ratio.denominator}) needs too long a filter")
            if frames * channels > MAX_SAMPLES_PER_BYTE * size + MAX_FREE_SAMPLES:
                raise AudioError(f"{path}: claims {frames} frames x {channels} channels in {size} bytes "
                                 f"(more than {MAX_SAMPLES_PER_BYTE} samples per byte: a decompression bomb?)")
            # mixed down block by block, so a long multi-channel file never sits in memory whole
            blocks = [b.mean(axis=1) if b.shape[1] > 1 else b[:, 0]
                      for b in f.blocks(blocksize=max(1, min(1 << 20, (1 << 24) // max(1, channels))),
                                        dtype="float32", always_2d=True)]
    except AudioError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError... by format
        raise AudioError(f"{path}: cannot decode audio ({' '.join(str(e).split())[:300]})") from e
    audio = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    if audio.shape[0] == 0:
        raise AudioError(f"{path}: audio is empty (0 samples)")
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    if sr != sample_rate:
        audio = _resample(audio, Fraction(sample_rate, sr))
    return np.ascontiguousarray(audio, dtype=np.float32)


# --- slaney mel filterbank (same numbers as librosa.filters.mel(norm='slaney', htk=False)) ---

_F_SP = 200.0 / 3  # Hz per mel on the linear part below 1 kHz
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's Auditory Toolbox mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    mel = f / _F_SP
    log_part = f >= _MIN_LOG_HZ
    return np.where(log_part, _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP, mel)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    log_part = m >= _MIN_LOG_MEL
    return np.where(log_part, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None,
                   norm: str | None = "slaney") -> np.ndarray:
    """Triangular mel filters [n_mels, n_fft // 2 + 1] as float32.

    norm='slaney' scales each triangle to unit area (2 / bandwidth), as librosa does.
    """
    if norm not in ("slaney", None):
        raise ValueError(f"mel_norm must be 'slaney' or None, got {norm!r}")
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)
    dist = edges_hz[:, None] - fft_hz[None, :]  # how far each FFT bin lies below each edge
    rising = -dist[:-2] / widths[:-1, None]
    falling = dist[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if norm == "slaney":
        weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


_WINDOWS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "blackman": torch.blackman_window,
    "bartlett": torch.bartlett_window,
    "none": None,
}

# NeMo preprocessor config keys that only matter for training-time augmentation or
# are deprecated; accepted by from_config and ignored silently.
_IGNORED_CONFIG_KEYS = {"_target_", "rng", "nb_augmentation_prob", "nb_max_freq", "use_torchaudio",
                        "stft_exact_pad", "stft_conv", "max_duration", "use_grads"}


class MelFrontend(torch.nn.Module):
    """Waveform [B, N] -> normalized log-mel [B, features, T], matching NeMo in eval mode.

    Steps: (dither) -> pre-emphasis -> STFT magnitude^mag_power -> mel -> log(x + guard)
    -> per-feature normalization over valid frames -> padded frames = pad_value,
    T rounded up to a multiple of pad_to.

    legacy=True reproduces the NeMo 1.0.0b4 featurizer the paper's baselines ran:
    dither also at eval (seeded, so runs repeat), length ceil(N / hop), reflect
    STFT padding, and no masking of the samples past each utterance after
    pre-emphasis (so legacy features depend slightly on batch padding).
    """

    def __init__(self, sample_rate=16000, window_size=0.02, window_stride=0.01, n_window_size=None,
                 n_window_stride=None, window="hann", normalize="per_feature", n_fft=None, preemph=0.97,
                 features=64, lowfreq=0, highfreq=None, log=True, log_zero_guard_type="add",
                 log_zero_guard_value=2**-24, dither=1e-5, pad_to=16, frame_splicing=1, exact_pad=False,
                 pad_value=0.0, mag_power=2.0, mel_norm="slaney", legacy: bool = False, seed: int = 0):
        super().__init__()
        # Window sizes in seconds are converted like NeMo does (int() truncation); an explicit
        # sample count wins only if the two do not disagree.
        win = _samples("window", window_size, n_window_size, sample_rate)
        hop = _samples("window_stride", window_stride, n_window_stride, sample_rate)
        if exact_pad and hop % 2 == 1:
            raise ValueError(f"exact_pad=True needs an even hop length, got {hop}")
        if window not in _WINDOWS:
            raise ValueError(f"window must be one of {sorted(_WINDOWS)}, got {window!r}")
        if log_zero_guard_type not in ("add", "clamp"):
            raise ValueError(f"log_zero_guard_type must be 'add' or 'clamp', got {log_zero_guard_type!r}")
        if isinstance(log_zero_guard_value, str) and log_zero_guard_value not in ("tiny", "eps"):
            raise ValueError(f"log_zero_guard_value must be a number, 'tiny' or 'eps', got {log_zero_guard_value!r}")
        if frame_splicing != 1:
            raise ValueError(f"frame_splicing={frame_splicing} is not supported (QuartzNet/Jasper use 1)")
        if not isinstance(pad_to, int) or pad_to < 0:
            raise ValueError(f"pad_to must be a non-negative int, got {pad_to!r}")

        self.sample_rate = sample_rate
        self.win_length = win
        self.hop_length = hop
        self.n_fft = n_fft or 2 ** math.ceil(math.log2(win))
        self.exact_pad = exact_pad
        self.stft_pad = (self.n_fft - hop) // 2 if exact_pad else self.n_fft // 2
        self.normalize = normalize
        self.preemph = preemph
        self.nfilt = features
        self.log = log
        self.log_zero_guard_type = log_zero_guard_type
        self.log_zero_guard_value = log_zero_guard_value
        self.dither = dither
        self.pad_to = pad_to
        self.pad_value = float(pad_value)
        self.mag_power = mag_power
        self.legacy = legacy
        self.seed = seed

        # Buffer names and shapes match NeMo's FilterbankFeatures, so
        # "preprocessor.featurizer.window" / ".fb" load straight from a NeMo checkpoint.
        # NeMo uses the symmetric window (periodic=False).
        window_fn = _WINDOWS[window]
        if window_fn is not None and torch.get_default_device().type == "meta":
            window_fn = _meta_window   # a shape for load_model's size check, without torch's decompositions
        self.register_buffer("window", window_fn(win, periodic=False) if window_fn else None)
        fb = mel_filterbank(sample_rate, self.n_fft, features, lowfreq, highfreq or sample_rate / 2, mel_norm)
        self.register_buffer("fb", torch.from_numpy(fb).unsqueeze(0))

    @classmethod
    def from_config(cls, cfg: dict, **overrides) -> "MelFrontend":
        """Build from a NeMo preprocessor config (e.g. model_config.yaml's `preprocessor`)."""
        import inspect

        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        kwargs = {}
        for key, value in dict(cfg).items():
            if key in known:
                kwargs[key] = value
            elif key not in _IGNORED_CONFIG_KEYS:
                warnings.warn(f"MelFrontend.from_config: ignoring unknown preprocessor key {key!r}")
        kwargs.update(overrides)
        return cls(**kwargs)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Number of valid feature frames for `lengths` samples."""
        lengths = lengths.long()
        if self.legacy:
            return torch.div(lengths + self.hop_length - 1, self.hop_length, rounding_mode="floor")
        return torch.div(lengths + 2 * self.stft_pad - self.n_fft, self.hop_length, rounding_mode="floor")

    @torch.no_grad()
    def forward(self, audio: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None):
        """audio [B, N] float, lengths [B] samples -> (mel [B, features, T] float32, mel_lengths [B] int64).

        generator seeds the legacy eval-time dither; without one a fresh generator
        seeded with self.seed is used, so the same batch always gives the same features.
        """
        if audio.dim() != 2:
            raise ValueError(f"audio must be [B, N], got shape {tuple(audio.shape)}")
        lengths = torch.as_tensor(lengths, device=audio.device).long()
        if lengths.shape != (audio.shape[0],):
            raise ValueError(f"lengths must be [{audio.shape[0]}], got shape {tuple(lengths.shape)}")
        if (lengths < 0).any() or (lengths > audio.shape[1]).any():
            raise ValueError(f"lengths must lie in [0, {audio.shape[1]}], got {lengths.tolist()}")
        x = audio.float()
        mel_lengths = self.output_lengths(lengths)

        if self.exact_pad:
            mode = "reflect" if self.legacy else "constant"
            x = torch.nn.functional.pad(x.unsqueeze(1), (self.stft_pad, self.stft_pad), mode).squeeze(1)

        dither_now = self.dither > 0 and (self.training or self.legacy)
        if dither_now:
            if generator is None:
                generator = torch.Generator(device=x.device).manual_seed(self.seed)
            x = x + self.dither * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

        if self.preemph is not None:
            x = torch.cat((x[:, :1], x[:, 1:] - self.preemph * x[:, :-1]), dim=1)
            if not self.legacy:
                # Zero everything past each utterance, so an utterance's features do not
                # depend on what else is in the batch. (Index in the unpadded time axis,
                # as NeMo does, also when exact_pad shifted the signal.)
                valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
                x = x.masked_fill(~valid, 0.0)

        spec = torch.stft(x, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=not self.exact_pad,
                          pad_mode="reflect" if self.legacy else "constant", return_complex=True)
        spec = torch.view_as_real(spec).pow(2).sum(-1).sqrt()  # magnitude, computed as NeMo does
        if self.mag_power != 1.0:
            spec = spec.pow(self.mag_power)
        x = torch.matmul(self.fb.to(spec.dtype), spec)

        if self.log:
            guard = self._log_guard(x.dtype)
            x = torch.log(x + guard) if self.log_zero_guard_type == "add" else torch.log(x.clamp(min=guard))

        valid = torch.arange(x.shape[-1], device=x.device)[None, :] < mel_lengths[:, None]  # [B, T]
        x = normalize_features(x, valid, self.normalize)
        x = x.masked_fill(~valid[:, None, :], self.pad_value)
        if self.pad_to > 0 and x.shape[-1] % self.pad_to:
            x = torch.nn.functional.pad(x, (0, self.pad_to - x.shape[-1] % self.pad_to), value=self.pad_value)
        return x, mel_lengths

    def _log_guard(self, dtype) -> float:
        if self.log_zero_guard_value == "tiny":
            return torch.finfo(dtype).tiny
        if self.log_zero_guard_value == "eps":
            return torch.finfo(dtype).eps
        return self.log_zero_guard_value


def _samples(name: str, seconds, samples, sample_rate: int) -> int:
    """Resolve a window length given in seconds and/or samples to samples."""
    from_seconds = int(seconds * sample_rate) if seconds else None
    if samples and from_seconds and samples != from_seconds:
        raise ValueError(f"{name}: {seconds} s ({from_seconds} samples) disagrees with n_{name}={samples}")
    n = samples or from_seconds
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"{name} must give a positive number of samples, got {seconds!r} s / {samples!r}")
    return n


_STD_EPS = 1e-5  # NeMo adds this to the std so silent channels do not divide by zero


def normalize_features(x: torch.Tensor, valid: torch.Tensor, kind) -> torch.Tensor:
    """Normalize log-mels [B, F, T] using statistics of the valid frames only."""
    if kind == "per_feature":
        m = valid[:, None, :]
        n = valid.sum(dim=1).to(x.dtype)[:, None]  # [B, 1]
        mean = torch.where(m, x, 0.0).sum(dim=2) / n
        var = torch.where(m, x - mean[:, :, None], 0.0).pow(2).sum(dim=2) / (n - 1)  # unbiased
        std = var.sqrt().nan_to_num(nan=0.0) + _STD_EPS  # one frame: std is 0/0, NeMo takes 0
        return torch.where(m, (x - mean[:, :, None]) / std[:, :, None], 0.0)
    if kind == "all_features":
        m = valid[:, None, :].expand_as(x)
        n = m.sum(dim=(1, 2)).to(x.dtype)
        mean = torch.where(m, x, 0.0).sum(dim=(1, 2)) / n
        var = torch.where(m, x - mean[:, None, None], 0.0).pow(2).sum(dim=(1, 2)) / (n - 1)
        std = var.sqrt() + _STD_EPS
        return (x - mean[:, None, None]) / std[:, None, None]
    if kind in (None, False, "", "NA", "none"):
        return x
    raise ValueError(f"normalize must be 'per_feature', 'all_features' or None, got {kind!r}")


# --- a front end whose STFT and filterbank are stored weights (the `hama` Conformer's) ---------

class ConvStftFrontend(torch.nn.Module):
    """Waveform [B, N] -> log-mel [B, n_mels, T] with the STFT done as a strided convolution.

    The STFT kernels (real and imaginary, [n_fft // 2 + 1, 1, n_fft], window included) and the
    mel filterbank ([n_fft // 2 + 1, n_mels]) are buffers, loaded from a checkpoint; this is how
    the `hama` package's exported model computes its features (see models/hama.py). Steps, per
    utterance (so a padded batch gives each utterance its own features):

        reflect-pad n_fft // 2 samples on both sides of the utterance's own samples
        -> conv1d with the kernels, stride hop  -> power re^2 + im^2  -> @ mel_fb
        -> log(max(x, log_floor))  -> (round to float16, as the exported graph casts there)
        -> frames = min(N // hop + 1, max_frames); frames past an utterance's length = pad_value.

    No pre-emphasis, dither or normalization. Until weights are loaded, the buffers hold a
    periodic-Hann DFT and a slaney mel filterbank of the same shapes (placeholders).
    """

    stored_weights = True  # checkpoints must carry the buffers (models/checkpoint.py load_model)

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160, features: int = 80,
                 log_floor: float = 1e-10, round_fp16: bool = True, max_frames: int | None = 3000,
                 pad_value: float = 0.0, **unused):
        super().__init__()
        ignored = set(unused) - {"_target_", "type"}
        if ignored:
            warnings.warn(f"ConvStftFrontend: ignoring unknown preprocessor key(s) {sorted(ignored)}")
        if n_fft <= 0 or hop_length <= 0 or features <= 0:
            raise ValueError(f"n_fft, hop_length and features must be positive, got {n_fft}, {hop_length}, {features}")
        self.sample_rate, self.n_fft, self.hop_length, self.nfilt = sample_rate, n_fft, hop_length, features
        self.pad = n_fft // 2
        self.log_floor, self.round_fp16 = float(log_floor), bool(round_fp16)
        self.max_frames = int(max_frames) if max_frames else None
        self.pad_value = float(pad_value)
        bins = n_fft // 2 + 1
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(bins, dtype=torch.float64)[:, None]
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)
        self.register_buffer("stft_real_kernel", (window * torch.cos(2 * math.pi * k * n / n_fft)).float()[:, None])
        self.register_buffer("stft_imag_kernel", (-window * torch.sin(2 * math.pi * k * n / n_fft)).float()[:, None])
        fb = mel_filterbank(sample_rate, n_fft, features, 0.0, sample_rate / 2, "slaney")
        self.register_buffer("mel_fb", torch.from_numpy(fb.T.copy()))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        frames = torch.div(lengths.long(), self.hop_length, rounding_mode="floor") + 1
        return frames.clamp(max=self.max_frames) if self.max_frames else frames

    @torch.no_grad()
    def num_frames(self, n_samples: int) -> int:
        """Frames for an input of n_samples (N // hop + 1, at most max_frames)."""
        t = int(n_samples) // self.hop_length + 1
        return min(t, self.max_frames) if self.max_frames else t

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor):
        """audio [B, N], lengths [B] samples -> (log-mel [B, features, T] float32, frames [B] int64)."""
        if audio.dim() != 2:
            raise ValueError(f"audio must be [B, N], got shape {tuple(audio.shape)}")
        lengths = torch.as_tensor(lengths, device=audio.device).long()
        if lengths.shape != (audio.shape[0],):
            raise ValueError(f"lengths must be [{audio.shape[0]}], got shape {tuple(lengths.shape)}")
        if (lengths < 2).any() or (lengths > audio.shape[1]).any():
            raise ValueError(f"lengths must lie in [2, {audio.shape[1]}], got {lengths.tolist()}")
        b, n = audio.shape
        # Reflect-pad each utterance at its own end: sample index s of the padded signal reads
        # |s| reflected at 0 and at length - 1 (a second reflection only for utterances shorter
        # than the padding, where the exported engine is undefined; clamped to stay in range).
        s = (torch.arange(n + 2 * self.pad, device=audio.device) - self.pad)[None, :].expand(b, -1).abs()
        last = (lengths - 1)[:, None]
        s = torch.where(s > last, 2 * last - s, s).abs().clamp(max=n - 1)
        x = torch.gather(audio.float(), 1, s)[:, None, :]
        re = torch.nn.functional.conv1d(x, self.stft_real_kernel, stride=self.hop_length)
        im = torch.nn.functional.conv1d(x, self.stft_imag_kernel, stride=self.hop_length)
        frames = self.output_lengths(lengths)
        t = int(frames.max())
        power = (re * re + im * im)[:, :, :t]                     # [B, bins, T]
        mel = torch.matmul(power.transpose(1, 2), self.mel_fb).transpose(1, 2)
        x = torch.log(mel.clamp(min=self.log_floor))
        if self.round_fp16:
            x = x.half().float()
        valid = torch.arange(t, device=x.device)[None, :] < frames[:, None]
        return x.masked_fill(~valid[:, None, :], self.pad_value), frames


def frontend_from_config(cfg: dict | None) -> torch.nn.Module:
    """The front end a model config names: ConvStftFrontend when `preprocessor.type` is 'conv_stft'
    (or its `_target_` names ConvStftFrontend), else NeMo's mel front end (MelFrontend)."""
    cfg = dict(cfg or {})
    if cfg.get("type") == "conv_stft" or str(cfg.get("_target_", "")).endswith("ConvStftFrontend"):
        return ConvStftFrontend(**cfg)
    return MelFrontend.from_config(cfg)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """1-D float audio at `from_rate` Hz -> float32 at `to_rate` Hz, with the same exact rational
    polyphase filter load_audio uses (unchanged, as float32, when the rates agree)."""
    audio = np.asarray(audio, dtype=np.float32)
    if int(from_rate) <= 0 or int(to_rate) <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if int(from_rate) != int(to_rate):
        audio = _resample(audio, Fraction(int(to_rate), int(from_rate)))
    return np.ascontiguousarray(audio, dtype=np.float32)
