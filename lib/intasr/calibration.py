"""Calibration: where the batches come from, and one hooked pass that measures what conversion needs.

Batches are (normalized log-mel, lengths) pairs from one of three sources, as in the paper's
Table 2: `real` (features of training-split audio, the data-dependent upper bound), `random`
(uniform [-3, 3], the paper's ablation) and `synthetic` (zero-shot, optimized to match BatchNorm
statistics: `synth`). ``calibration_batches`` is the one factory the CLI and the grid share.

``collect`` runs the float model once over the batches with hooks and returns whatever is asked:
activation ranges at every quantization point (observers), per-channel input means of every
conv (bias correction) and input Hessians (output-aware rounding, ``quant.gptq``). Its ranges and
means do not depend on the weight width, so a process remembers the last few (keyed by the model's
parameter storage and versions, the batches' bytes and the options): a grid's W8A8 and W6A8 cells
of one calibration set measure once.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .data import length_sorted_batches, load_batch, load_dataset
from .models.convasr import ConvASR, MaskedConv1d, frame_mask, walk
from .options import SYNTH_DEFAULTS
from .quant.observers import make_observer

SOURCES = ("synthetic", "random", "real")


# --------------------------------------------------------------------------- batch sources

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


def random_mels(n_batches: int = SYNTH_DEFAULTS["n_batches"], batch_size: int = SYNTH_DEFAULTS["batch_size"],
                frames: int = SYNTH_DEFAULTS["frames"], seed: int = 0,
                low: float = -3.0, high: float = 3.0, n_mels: int = 64):
    """Uniform [low, high] inputs of full length (the paper's random-calibration ablation)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.full((batch_size,), frames, dtype=torch.int64)
    return [(torch.rand(batch_size, n_mels, frames, generator=g) * (high - low) + low, lengths)
            for _ in range(n_batches)]


def calibration_batches(model, source: str, *, seed: int = 0, n_batches: int = SYNTH_DEFAULTS["n_batches"],
                        batch_size: int = SYNTH_DEFAULTS["batch_size"], frames: int = SYNTH_DEFAULTS["frames"], data=None, limit: int | None = None, synth: dict | None = None,
                        model_path=None, cache_dir=None, progress: bool = True):
    """(mel, lengths) batches from `source` ("synthetic", "random" or "real").

    real: features of the audio in `data` (a folder or manifest; `limit` utterances, batches of
    `batch_size`); random: `n_batches` x `batch_size` x `frames` uniform inputs; synthetic: the
    BatchNorm-matched batches of `synth.generate_cached` (settings `synth` over the same
    n_batches/batch_size/frames defaults; cached under `cache_dir`, keyed by the model hash)."""
    if source == "real":
        if not data:
            raise ValueError("real calibration needs training-split audio (--calibration-data DIR)")
        return real_mels(model, data, batch_size, limit)
    n_mels = int(getattr(getattr(model, "encoder", None), "feat_in", 64))
    if source == "random":
        return random_mels(n_batches, batch_size, frames, seed, n_mels=n_mels)
    if source == "synthetic":
        from .synth import generate_cached

        params = {"n_batches": n_batches, "batch_size": batch_size, "frames": frames, **(synth or {}), "seed": seed}
        s = generate_cached(model, model_path, params, Path(cache_dir) if cache_dir else None, progress=progress)
        return [(s.mels[i], s.lengths[i]) for i in range(s.mels.shape[0])]
    raise ValueError(f"unknown calibration source {source!r}; choose from {SOURCES}")


# --------------------------------------------------------------------------- quantization points

def quant_points(model: ConvASR) -> dict:
    """For each encoder conv (block b, layer index i), the module whose output is that conv's
    requantized output: a depthwise conv feeding a pointwise one -> itself; a conv followed by
    BN + ReLU inside the block -> that ReLU; otherwise the block's output activation `mout`
    (which also closes the residual sum). A Hardtanh sub-block activation is a point of its own,
    like ReLU."""
    points = {}
    for blk in walk(model).blocks:
        for site in blk.main:
            if site.feeds_conv and site.conv.groups > 1:
                points[(site.block, site.index)] = site.module   # depthwise output feeds the pointwise conv
            else:
                points[(site.block, site.index)] = site.act if site.act is not None else blk.block.mout
    return points


# --------------------------------------------------------------------------- one hooked pass

@dataclass
class CalibrationStats:
    observers: dict | None = None      # "input" and (block, layer) -> observer (ranges)
    input_means: dict | None = None    # nn.Conv1d -> float64 [Cin] mean input over valid frames
    hessians: dict | None = None       # nn.Conv1d -> float64 im2col Gram matrix (see collect)


_REMEMBERED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
REMEMBER = 4   # results per model


def _collect_key(model: nn.Module, batches: list, options: tuple) -> tuple:
    """What a pass depends on: every parameter and buffer (storage and in-place version: an edited
    weight is a new key), the batches' contents, the options."""
    h = hashlib.sha256()
    for mel, lengths in batches:
        for t in (mel, lengths):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    state = tuple((t.data_ptr(), t._version) for t in itertools.chain(model.parameters(), model.buffers()))
    return state, h.hexdigest(), options


def collect(model: ConvASR, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, ranges: bool = True,
            means: bool = False, hessians: bool = False, observer: str = "minmax", **observer_kw) -> CalibrationStats:
    """``collect_once``, remembered per process (module doc; not the Hessians, which are large).
    Each call gets its own copy of the observers and means (the model's modules stay shared keys)."""
    if hessians:
        return collect_once(model, batches, ranges=ranges, means=means, hessians=True, observer=observer,
                            **observer_kw)
    batches = list(batches)
    key = _collect_key(model, batches, (ranges, means, observer, tuple(sorted(observer_kw.items()))))
    memo = _REMEMBERED.setdefault(model, {})
    if key not in memo:
        stats = collect_once(model, batches, ranges=ranges, means=means, observer=observer, **observer_kw)
        while len(memo) >= REMEMBER:
            memo.pop(next(iter(memo)))
        memo[key] = stats
    return copy.deepcopy(memo[key], memo={id(m): m for m in model.modules()})


def conv_input_hessian(mod: MaskedConv1d, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor | None:
    """sum over valid output frames of x x^T for the im2col columns x of `mod`'s input (float64):
    [Cin*K, Cin*K] for a dense conv (row index c * K + k), [C, K, K] for a depthwise one; None for
    grouped convs and those with more than ``gptq.MAX_COLUMNS`` columns."""
    from .quant.gptq import MAX_COLUMNS

    c = mod.conv
    cin, K = c.in_channels, c.kernel_size[0]
    depthwise = c.groups == cin == c.out_channels and c.groups > 1
    if not depthwise and (c.groups != 1 or cin * K > MAX_COLUMNS):
        return None
    x = x * frame_mask(lens, x.shape[-1])[:, None, :].to(x.dtype)
    xp = F.pad(x, (c.padding[0], c.padding[0])).double()
    span = c.dilation[0] * (K - 1) + 1
    u = xp.unfold(2, span, c.stride[0])[:, :, :, :: c.dilation[0]]          # [B, Cin, T_out, K]
    valid = frame_mask(mod.output_lengths(lens), u.shape[2]).to(u.dtype)   # [B, T_out]
    u = u * valid[:, None, :, None]
    if depthwise:
        return torch.einsum("bctk,bctl->ckl", u, u)
    cols = u.permute(0, 2, 1, 3).reshape(-1, cin * K)
    return cols.T @ cols


class _StatsHooks:
    """The hooks of one calibration pass, placed on the walk's convs; they sum what was asked.
    The decoder (a plain 1x1 Conv1d on the whole encoder output) takes the lengths the last
    encoder conv produced."""

    def __init__(self, model: ConvASR, *, ranges: bool, means: bool, hessians: bool, observer: str,
                 observer_kw: dict):
        self.means, self.hessians = means, hessians
        self.lens = None
        self.sums: dict = {}
        self.H: dict = {}
        self.observers: dict = {}
        self.handles = []
        sites = walk(model)
        for site in sites.sites()[:-1]:
            self.handles.append(site.module.register_forward_hook(self._track_lengths))
            if means or hessians:
                self.handles.append(site.module.register_forward_pre_hook(self._conv_pre))
        if means or hessians:
            self.handles.append(sites.decoder.module.register_forward_pre_hook(self._decoder_pre))
        if ranges:
            self._observe_points(model, observer, observer_kw)

    def _track_lengths(self, _m, _i, out):
        self.lens = out[1]

    def _add_mean(self, conv, x, lens):
        m = frame_mask(lens, x.shape[-1])[:, None, :].to(torch.float64)
        tot, cnt = self.sums.get(conv, (0.0, 0.0))
        self.sums[conv] = (tot + (x.double() * m).sum(dim=(0, 2)), cnt + float(m.sum()))

    def _add_hessian(self, conv, h):
        if h is not None:
            self.H[conv] = self.H[conv] + h if conv in self.H else h

    def _conv_pre(self, mod, args):
        x, lens = args
        if self.means:
            self._add_mean(mod.conv, x, lens)
        if self.hessians:
            self._add_hessian(mod.conv, conv_input_hessian(mod, x, lens))

    def _decoder_pre(self, mod, args):
        x = args[0]
        if self.means:
            self._add_mean(mod, x, self.lens)
        if self.hessians:
            cols = x.double().permute(0, 2, 1).reshape(-1, x.shape[1])
            self._add_hessian(mod, cols.T @ cols)

    def _observe_points(self, model, observer, observer_kw):
        """One observer per quantization point module (points sharing a module share it)."""
        self.observers["input"] = make_observer(observer, **observer_kw)
        by_module: dict = {}
        for key, mod in quant_points(model).items():
            by_module.setdefault(id(mod), (mod, []))[1].append(key)
        for mod, keys in by_module.values():
            obs = make_observer(observer, **observer_kw)
            for k in keys:
                self.observers[k] = obs

            def hook(_m, _i, out, obs=obs):
                y = out[0] if isinstance(out, tuple) else out
                obs.update(y, frame_mask(self.lens, y.shape[-1])[:, None, :])
            self.handles.append(mod.register_forward_hook(hook))

    def remove(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def collect_once(model: ConvASR, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, ranges: bool = True,
                 means: bool = False, hessians: bool = False, observer: str = "minmax",
                 **observer_kw) -> CalibrationStats:
    """One pass of the float model over (mel, lengths) batches, with hooks for what is asked.

    ranges: an observer at the input and at every quantization point (``quant_points``).
    means: per input channel mean of every conv's (and the decoder's) input over valid frames:
        what bias correction needs; on synthetic inputs these are the means the BatchNorm
        statistics imply, so the correction stays zero-shot.
    hessians: H = sum over valid output frames of x x^T for every conv's im2col column x
        (``conv_input_hessian``; the decoder's too): what output-aware rounding (``quant.gptq``) needs.
    """
    hooks = _StatsHooks(model, ranges=ranges, means=means, hessians=hessians, observer=observer,
                        observer_kw=observer_kw)
    try:
        n = 0
        for mel, lengths in batches:
            if ranges:
                hooks.observers["input"].update(mel, frame_mask(lengths, mel.shape[-1])[:, None, :])
            model.forward_features(mel, lengths)
            n += 1
        if n == 0:
            raise ValueError("calibration needs at least one batch")
    finally:
        hooks.remove()
    stats = CalibrationStats()
    if ranges:
        stats.observers = hooks.observers
    if means:
        stats.input_means = {conv: tot / max(cnt, 1.0) for conv, (tot, cnt) in hooks.sums.items()}
    if hessians:
        stats.hessians = hooks.H
    return stats


def calibrate(model: ConvASR, batches, observer: str = "minmax", **observer_kw) -> dict:
    """Observers for the input and every quantization point (``collect(..., ranges=True)``)."""
    return collect(model, batches, observer=observer, **observer_kw).observers


def conv_input_means(model: ConvASR, batches) -> dict:
    """{nn.Conv1d: float64 [Cin]} mean conv inputs (``collect(..., means=True)``)."""
    return collect(model, batches, ranges=False, means=True).input_means


def conv_input_hessians(model: ConvASR, batches) -> dict:
    """{nn.Conv1d: float64 Gram matrix} (``collect(..., hessians=True)``)."""
    return collect(model, batches, ranges=False, hessians=True).hessians
