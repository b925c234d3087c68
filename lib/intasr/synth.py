"""Synthetic log-mel inputs whose BatchNorm statistics match the running statistics (paper Eq. 2).

The zero-shot calibration data of Kim et al. (section 2.3): a batch of log-mel spectrograms
x [B, n_mels, T] in the domain of the model's own front end (normalized for the NeMo models;
n_mels = model.encoder.feat_in) is a learnable tensor, initialized U[-0.3, 0.3], fed straight to
`model.encoder` (the mel front end is bypassed), and optimized with Adam so that, at the input of
every BatchNorm (ConvASR: main path and residual branches; Conformer-CTC: the one in each
layer's convolution module, see below), the per-channel mean and variance pooled over batch and
time (dims 0 and 2) match the layer's running mean and variance:

    loss = sum over BN layers of  mean over channels of
           log(sig_hat / sig_bn) - 1/2 * (1 - (sig_bn^2 + (mu_bn - mu_hat)^2) / sig_hat^2)

i.e. KL(N(mu_bn, sig_bn^2) || N(mu_hat, sig_hat^2)), with

    sig_bn  = sqrt(running_var + 1e-6)
    sig_hat = sqrt(var_hat     + 1e-6),  var_hat = unbiased variance over (batch, time)

Choices (method-notes 2 and 9):
- The epsilon is added on the synthetic side as well. The restored QuartzNet-15x5 has 747
  channels (in 58 of its 93 BatchNorms) whose running variance is exactly 0: a channel that is
  constant on real audio. Without an epsilon on sig_hat, such a channel's term is log(0) or a
  division by zero as soon as the synthetic input also makes it constant, and huge otherwise.
  With it, the term is a smooth penalty that is 0 when var_hat = 0 and mu_hat = mu_bn. Those
  channels are kept in the loss (not masked out): "constant on real data" is real information.
- var_hat is the unbiased variance (like BatchNorm's running_var); over B*T' >= 2*32 samples the
  difference to the biased one is under 2%.
- Adam (betas 0.9, 0.999), ReduceLROnPlateau(mode=min, factor 0.1, patience 25, min_lr 1e-4)
  stepped on the loss of every iteration; each batch is optimized on its own from its own seed
  (derived from (seed, batch index) by numpy's SeedSequence), so batch i is the same whatever
  n_batches is, and batches can be generated, cached and resumed one by one.
- `losses[i]` of a batch is the loss of the input after i Adam steps: iterations + 1 values,
  the last one being the loss of the returned input (one extra forward, no backward).

Speed. The model is deep-copied (encoder only) into the generator; the caller's model is never
modified. The copy's fast path changes nothing beyond float32 rounding:
- parameters frozen (requires_grad_(False)): autograd computes input gradients only;
- depthwise convs run on `models.fastconv.FastDepthwiseConv1d` (the transposed-conv kernel, ~20x
  faster than PyTorch's forward depthwise conv1d on this CPU, for forward and backward);
- the frame masks of MaskedConv1d are switched off (all synthetic frames are valid: the mask is
  all ones, so multiplying by it is an exact no-op);
- the forward stops right after the last BatchNorm's input is computed (a private exception
  raised from that layer's hook): the last BN, activation and the decoder are never run.
The statistics of each BatchNorm input (`channel_var_mean`) are taken in two passes, the mean
and then the squared deviations from it, whichever path: `torch.var_mean` over dims (0, 2) (a
Welford reduction) took ~2 ms per [8, 512, 100] input on this CPU, ~10x the two passes and 15% of
a batch (cache format 2; the batches of format 1 were made with it).
`fast=False` gives the straightforward path (full encoder, PyTorch convs, masks, parameters as
the caller had them), kept for the tests and for the measurement below.

Measurements of both paths (speed, loss agreement, thread-count effects) and of real runs'
loss curves: results/README.md, section "Synthetic data: speed and loss curves".

Conformer-CTC (models/conformer.py; `SyntheticMelGenerator(conformer_ctc_model)`, the cache and
`intasr synth --model conformer.nemo` take it as they take a ConvASR). The loss has one term
per Conformer layer: the input of `layers.{i}.conv.batch_norm`, i.e. the depthwise-conv output
of the convolution module (bias included, as BatchNorm sees it), statistics over batch and
valid time frames (the subsampled lengths; with the full-length inputs that generation uses,
every frame is valid and the statistics are exactly the ConvASR ones). `loss(x, lengths)` takes
padded inputs too: padded frames contribute nothing (tests/test_synth_conformer.py).
What constrains the input, and what does not:
- constrained: the per-channel mean/variance of those n_layers depthwise outputs (4 for the hama
  model, 16/18 for NeMo's small/large): through them the subsampling, every earlier layer, and
  layer i's FF1, attention, norm_conv, pointwise_conv1 + GLU and depthwise conv;
- not constrained: everything after the last layer's BatchNorm (its Swish, pointwise_conv2, FF2,
  norm_out, the decoder: the fast path does not even run them); the attention and feed-forward
  activations themselves (LayerNorms have no running statistics, so there are no targets there,
  and none are invented); and, through the LayerNorm in front of every conv module, each frame's
  mean and scale across d_model. The input's global level and scale are constrained only weakly:
  on a real train-clean-100 batch of the restored hama model (loss 0.019 at its valid frames),
  real + 5 or real - 5 gives 0.074, real * 2 0.085, real * 0.5 0.18; removing each frame's mean
  costs 17.0 and per-channel standardizing 1550. So synthetic inputs can match the BatchNorm
  statistics while their level differs from real features: the hama front end is an
  unnormalized log-mel (real frames: mean -10, std 4, range [-23.0, 3.9]), synthetic ones stay
  centred (mean -0.08 to -0.24 in the runs of results/README.md): the input range is not a BatchNorm target.
The fast path for the Conformer: parameters frozen, depthwise convs on FastDepthwiseConv1d
(k 31, stride 1: covered exactly), forward stopped after the last BatchNorm input; masks are kept
(the pad and attention masks are all-False for full-length inputs, so they cost little and are
exact no-ops). Placeholder statistics (every BatchNorm at mean 0, variance 1 or 1 - eps: hama's
folded identity form before `import-hama --restore-bn`) raise a `SynthStatsWarning`.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .provenance import file_sha256
from .options import SYNTH_DEFAULTS

BN_EPS = 1e-6  # added to both variances in the KL loss (see the module docstring)
CACHE_FORMAT = 2   # 2: two-pass BatchNorm statistics (channel_var_mean)

DEFAULT_PARAMS = {
    **SYNTH_DEFAULTS,        # n_batches, batch_size, frames, iterations, lr (options)
    "seed": 0,
    "init_range": 0.3,
    "init_center": None,      # None: the model front end's level prior (input_level_prior); 0 for NeMo's
    "betas": (0.9, 0.999),
    "patience": 25,
    "min_lr": 1e-4,
    "eps": BN_EPS,
    # a speech-like prior on the inputs (0 / False: off, the paper's free pixels): the optimized
    # variable z is rendered as x = normalize(gauss_f * gauss_t * z), Gaussian smoothing along
    # frames (sigma in frames) and mel bins, then per utterance and mel channel zero mean and unit
    # variance over frames (what NeMo's per_feature front end gives every real input)
    "smooth_frames": 0.0,
    "smooth_mels": 0.0,
    "normalize": False,
}
_PRIOR = ("smooth_frames", "smooth_mels", "normalize")
# What a batch's content depends on (n_batches is not: batch i is the same for any n_batches).
_KEYED = ("batch_size", "frames", "iterations", "lr", "seed", "init_range", "betas", "patience", "min_lr", "eps")


def bn_kl_loss(mu_hat: torch.Tensor, var_hat: torch.Tensor, running_mean: torch.Tensor,
               running_var: torch.Tensor, eps: float = BN_EPS) -> torch.Tensor:
    """Mean over channels of KL(N(running_mean, running_var + eps) || N(mu_hat, var_hat + eps)).

    Written as in the reference code: log(sig_hat/sig_bn) - 0.5 * (1 - (sig_bn^2 + dmu^2) / sig_hat^2).
    """
    s_bn2 = running_var + eps
    s_hat2 = var_hat + eps
    per_channel = 0.5 * torch.log(s_hat2 / s_bn2) - 0.5 * (1.0 - (s_bn2 + (running_mean - mu_hat) ** 2) / s_hat2)
    return per_channel.mean()


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch `index`: a well-mixed function of (seed, index)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class SyntheticBatches:
    mels: torch.Tensor            # [N, B, n_mels, T] normalized log-mel, feed to model.encoder
    lengths: torch.Tensor         # [N, B] int64, all == T
    losses: list[list[float]]     # per batch: loss after 0, 1, ..., iterations Adam steps
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.mels.shape[0]

    def batches(self):
        """Yield (mel [B, F, T], lengths [B]) pairs, e.g. for calibration."""
        for i in range(len(self)):
            yield self.mels[i], self.lengths[i]


class _StopForward(Exception):
    """Raised from the last BatchNorm's hook: nothing after it is needed."""


def normalize_params(params: dict | None = None, **overrides) -> dict:
    p = dict(DEFAULT_PARAMS)
    unknown = set(params or {}) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown synthetic-data parameter(s): {sorted(unknown)}")
    p.update(params or {})
    p.update({k: v for k, v in overrides.items() if v is not None})
    for k in ("n_batches", "batch_size", "frames", "iterations", "seed", "patience"):
        p[k] = int(p[k])
    for k in ("lr", "init_range", "min_lr", "eps", "smooth_frames", "smooth_mels"):
        p[k] = float(p[k])
    p["normalize"] = bool(p["normalize"])
    if p["init_center"] is not None:
        p["init_center"] = float(p["init_center"])
    p["betas"] = tuple(float(b) for b in p["betas"])
    if p["n_batches"] < 0 or p["batch_size"] < 1 or p["frames"] < 1 or p["iterations"] < 0:
        raise ValueError(f"invalid synthetic-data parameters: {p}")
    return p


class SyntheticMelGenerator:
    """Optimize synthetic log-mel batches against a float model's BatchNorm statistics.

    `model`: a ConvASR or a ConformerCTC (or either's encoder); see the module docstring for what
    the loss covers in each. The model is not modified: its encoder is deep-copied, frozen and
    (fast=True) sped up.
    """

    def __init__(self, model, n_batches: int | None = None, batch_size: int | None = None,
                 frames: int | None = None, iterations: int | None = None, lr: float | None = None,
                 seed: int | None = None, *, params: dict | None = None, fast: bool = True,
                 threads: int | None = None, progress: bool = True):
        self.params = normalize_params(params, n_batches=n_batches, batch_size=batch_size, frames=frames,
                                        iterations=iterations, lr=lr, seed=seed)
        self.fast = fast
        self.threads = threads
        self.progress = progress
        encoder = _encoder_of(model)
        c = self.params["init_center"]
        self.center = float(input_level_prior(model) if c is None else c)
        self.conformer = _is_conformer(encoder)
        self.n_mels = int(encoder.feat_in)
        self.encoder = copy.deepcopy(encoder).eval()
        self.bns = [m for m in self.encoder.modules() if isinstance(m, nn.BatchNorm1d)]
        if not self.bns:
            raise ValueError("the model has no BatchNorm layers: nothing to match")
        if self.conformer and all(_placeholder_stats(bn) for bn in self.bns):
            warnings.warn("every BatchNorm of this Conformer holds placeholder statistics (running mean 0, "
                          "variance 1 or 1 - eps: a folded BatchNorm in identity form, e.g. `import-hama` without "
                          "--restore-bn); the synthetic inputs will match those, not real data",
                          SynthStatsWarning, stacklevel=2)
        self.dtype = next(self.encoder.parameters()).dtype  # float32 normally; float64 for reference runs
        self._stats = [(bn.running_mean.detach().clone().to(self.dtype), bn.running_var.detach().clone().to(self.dtype))
                       for bn in self.bns]
        if fast:
            from .models.convasr import MaskedConv1d
            from .models.fastconv import swap_depthwise

            self.encoder.requires_grad_(False)
            swap_depthwise(self.encoder)
            for m in self.encoder.modules():
                if isinstance(m, MaskedConv1d):
                    m.use_mask = False  # every synthetic frame is valid: the mask is all ones
        self._terms: list[torch.Tensor] | None = None
        self._lengths: torch.Tensor | None = None  # Conformer, padded input: subsampled lengths
        self._last_bn: nn.Module | None = None
        for idx, bn in enumerate(self.bns):
            bn.register_forward_pre_hook(self._make_hook(idx))
        if fast:
            self._last_bn = self._execution_order()[-1]

    # -- loss -------------------------------------------------------------------------------
    def _make_hook(self, idx: int):
        rm, rv = self._stats[idx]
        eps = self.params["eps"]

        def hook(module, inputs):
            if self._terms is None:
                return None
            var, mean = channel_var_mean(inputs[0], self._lengths)
            self._terms.append(bn_kl_loss(mean, var, rm, rv, eps))
            if module is self._last_bn:
                raise _StopForward
            return None

        return hook

    def _execution_order(self) -> list[nn.Module]:
        order: list[nn.Module] = []
        handles = [bn.register_forward_pre_hook(lambda m, i: order.append(m)) for bn in self.bns]
        try:
            with torch.no_grad():
                t = 64
                self.encoder(torch.zeros(1, self.n_mels, t, dtype=self.dtype), torch.full((1,), t))
        finally:
            for h in handles:
                h.remove()
        if len(order) != len(self.bns):
            raise RuntimeError(f"{len(order)} of {len(self.bns)} BatchNorms ran in a forward pass")
        return order

    def loss(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over BatchNorm layers of the per-layer KL loss for input x [B, n_mels, T].

        lengths (Conformer only; default: all T): valid input frames per item. The statistics are
        then taken over the valid frames at each BatchNorm (the encoder's subsampled lengths);
        padded frames contribute nothing. Generation itself always uses full-length inputs."""
        full = torch.full((x.shape[0],), x.shape[-1], dtype=torch.long)
        if lengths is None or bool((torch.as_tensor(lengths) == x.shape[-1]).all()):
            lengths, self._lengths = full, None
        else:
            if not self.conformer:
                raise ValueError("padded inputs are supported for the Conformer only (ConvASR generation "
                                 "always uses full-length inputs)")
            lengths = torch.as_tensor(lengths, dtype=torch.long)
            self._lengths = self.encoder.output_lengths(lengths)
        self._terms = []
        try:
            self.encoder(x, lengths)
        except _StopForward:
            pass
        finally:
            terms, self._terms, self._lengths = self._terms, None, None
        if len(terms) != len(self.bns):
            raise RuntimeError(f"loss has {len(terms)} terms for {len(self.bns)} BatchNorm layers")
        return torch.stack(terms).sum()

    # -- optimization -------------------------------------------------------------------------
    def initial(self, index: int) -> torch.Tensor:
        p = self.params
        g = torch.Generator().manual_seed(batch_seed(p["seed"], index))
        r = p["init_range"]
        x = (torch.rand(p["batch_size"], self.n_mels, p["frames"], generator=g) * 2.0 - 1.0) * r
        if self.center:
            x = x + self.center
        return x.to(self.dtype)

    def render(self, z: torch.Tensor) -> torch.Tensor:
        """The input the model sees for the optimized variable z (the prior, if any; else z)."""
        p = self.params
        x = z
        for sigma, dim in ((p["smooth_frames"], -1), (p["smooth_mels"], -2)):
            if sigma > 0:
                x = gaussian_smooth(x, sigma, dim)
        if p["normalize"]:   # every frame is valid: generation uses full-length inputs
            from .audio import normalize_features

            x = normalize_features(x, torch.ones(x.shape[0], x.shape[-1], dtype=torch.bool), "per_feature")
        return x

    def generate_batch(self, index: int) -> tuple[torch.Tensor, list[float]]:
        """Optimize batch `index` from its own seed. Returns (mel [B, n_mels, T], loss curve)."""
        p = self.params
        z = nn.Parameter(self.initial(index))
        opt = torch.optim.Adam([z], lr=p["lr"], betas=p["betas"])
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", patience=p["patience"],
                                                           min_lr=p["min_lr"])
        losses: list[float] = []
        with _threads(self.threads):
            bar = tqdm(range(p["iterations"]), desc=f"synthetic batch {index}", disable=not self.progress,
                       leave=False)
            for _ in bar:
                opt.zero_grad(set_to_none=True)
                x = self.render(z)
                loss = self.loss(x)
                loss.backward()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"synthetic batch {index}: loss became {value}")
                losses.append(value)
                opt.step()
                sched.step(value)
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}", refresh=False)
            with torch.no_grad():
                x = self.render(z)
                losses.append(float(self.loss(x)))
        return x.detach().clone(), losses

    def generate(self, indices=None) -> SyntheticBatches:
        """Generate batches `indices` (default: 0 .. n_batches-1), each on its own."""
        p = self.params
        indices = list(range(p["n_batches"])) if indices is None else list(indices)
        mels = torch.empty(len(indices), p["batch_size"], self.n_mels, p["frames"], dtype=self.dtype)
        curves = []
        for j, i in enumerate(indices):
            mels[j], curve = self.generate_batch(i)
            curves.append(curve)
        lengths = torch.full((len(indices), p["batch_size"]), p["frames"], dtype=torch.long)
        return SyntheticBatches(mels, lengths, curves, _public_params(p))


def gaussian_smooth(x: torch.Tensor, sigma: float, dim: int) -> torch.Tensor:
    """x smoothed along `dim` by a normalized Gaussian of std `sigma` (samples), truncated at
    3 sigma, edges reflected."""
    moved = x.movedim(dim, -1)
    shape = moved.shape
    r = max(1, min(int(math.ceil(3 * sigma)), shape[-1] - 1))   # reflection needs r < length
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    out = F.conv1d(F.pad(moved.reshape(-1, 1, shape[-1]), (r, r), mode="reflect"), (k / k.sum()).reshape(1, 1, -1))
    return out.reshape(shape).movedim(-1, dim)


def channel_var_mean(z: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (unbiased variance, mean) of z [B, C, T] over the batch and the frames
    t < lengths[b] (every frame when lengths is None): the mean, then the squared deviations."""
    if lengths is None:
        n = z.shape[0] * z.shape[2]
        mean = z.sum(dim=(0, 2)) / n
        return (z - mean[None, :, None]).square().sum(dim=(0, 2)) / (n - 1), mean
    return masked_var_mean(z, lengths)


def masked_var_mean(z: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (unbiased variance, mean) of z [B, C, T] over the frames t < lengths[b]."""
    from .models.convasr import frame_mask

    m = frame_mask(lengths, z.shape[-1])[:, None, :].to(z.dtype)   # [B, 1, T]
    n = m.sum()
    mean = (z * m).sum(dim=(0, 2)) / n
    var = (((z - mean[None, :, None]) * m) ** 2).sum(dim=(0, 2)) / (n - 1)
    return var, mean


def _encoder_of(model) -> nn.Module:
    """The encoder of a ConvASR or ConformerCTC (or the encoder itself)."""
    from .models.conformer import ConformerEncoder
    from .models.convasr import ConvASREncoder

    return model if isinstance(model, (ConvASREncoder, ConformerEncoder)) else model.encoder


def _is_conformer(encoder) -> bool:
    from .models.conformer import ConformerEncoder

    return isinstance(encoder, ConformerEncoder)


def _placeholder_stats(bn: nn.BatchNorm1d) -> bool:
    """Running mean 0 and variance 1 (PyTorch's initial values) or 1 - eps (a folded BN in identity form)."""
    rm, rv = bn.running_mean, bn.running_var
    return bool((rm == 0).all()) and bool(((rv - 1.0).abs() <= max(2.0 * bn.eps, 1e-6)).all())


class _threads:
    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(int(self.n))

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def _public_params(p: dict) -> dict:
    q = dict(p)
    q["betas"] = list(q["betas"])
    return q


# -- cache ------------------------------------------------------------------------------------
class SynthCacheWarning(UserWarning):
    """A cached synthetic batch was unusable (missing checksum match, truncated, wrong shape)."""


class SynthStatsWarning(UserWarning):
    """The model's BatchNorm statistics are placeholders: there is nothing real to match."""


def model_hash(model) -> str:
    """sha256 over the state dict (sorted keys; name, dtype, shape and bytes of every tensor)."""
    h = hashlib.sha256()
    sd = model.state_dict()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _keyed(p: dict) -> dict:
    """The parameters a batch depends on. init_center only when it is not 0, so that the keys of
    models with a normalized front end (every ConvASR) stay what they were before it existed."""
    keyed = {k: (list(p[k]) if isinstance(p[k], tuple) else p[k]) for k in _KEYED}
    if p.get("init_center"):
        keyed["init_center"] = p["init_center"]
    keyed.update({k: p[k] for k in _PRIOR if p.get(k)})   # set only: the keys without a prior stay
    return keyed


def input_level_prior(model) -> float:
    """Where synthetic inputs start, in the model's input domain, knowing only its front end.

    NeMo's front end normalizes every mel channel to zero mean over the utterance: 0. A front end
    without normalization (hama's ConvStftFrontend: log(max(mel energy, floor))) has features
    whose level the BatchNorm statistics do not constrain (shifting real hama features by +-5
    changes the KL loss from 0.019 to 0.074, while real features average about -10): the
    synthetic inputs then stay near 0 and every range before the first LayerNorm is calibrated
    at the wrong level. Data-free prior: the centre of the front end's own dynamic range,
    halfway between its floor, log(floor) (digital silence), and the mean feature of full-scale
    white noise (1 s, uniform in [-1, 1], seeded: synthetic audio, not data)."""
    fe = getattr(getattr(model, "preprocessor", None), "featurizer", None)
    if fe is None or not hasattr(fe, "log_floor"):
        return 0.0
    import math

    floor = math.log(fe.log_floor)
    g = torch.Generator().manual_seed(0)
    n = int(getattr(fe, "sample_rate", 16000))
    noise = torch.rand(1, n, generator=g) * 2.0 - 1.0
    with torch.no_grad():
        mel, frames = fe(noise, torch.tensor([n]))
    top = float(mel[0, :, : int(frames[0])].double().mean())
    return (floor + top) / 2.0


def cache_key(model_digest: str, params: dict) -> str:
    p = normalize_params(params)
    keyed = _keyed(p)
    blob = json.dumps({"format": CACHE_FORMAT, "model": model_digest, "params": keyed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _is_hex_digest(s) -> bool:
    return isinstance(s, str) and len(s) == 64 and all(c in "0123456789abcdef" for c in s.lower())


def generate_cached(model, model_path_or_hash=None, params: dict | None = None, cache_dir=None, *,
                    fast: bool = True, threads: int | None = None, progress: bool = True,
                    indices=None) -> SyntheticBatches:
    """Synthetic batches for (model, params), read from / written to `cache_dir / key`.

    key = sha256(model state-dict hash, the parameters a batch depends on, seed). If
    `model_path_or_hash` is a 64-hex-digit string it is used as the model hash; otherwise (a path,
    or None) the hash is computed from `model.state_dict()` and the path only recorded.
    Each batch is its own file `batch_XXXXX.pt` (written atomically; plain tensors, loadable with
    weights_only=True) with its loss curve; `manifest.json` records every file's sha256. A rerun
    reuses valid files, generates only the missing ones, and regenerates (with a
    `SynthCacheWarning` naming the file) any that is truncated, of the wrong shape or whose
    checksum does not match. `indices`: only these batches (default: 0 .. n_batches-1), in that
    order; the distributed grid makes each batch a task of its own this way.
    """
    from .models.checkpoint import atomic_write_bytes
    from .paths import build_dir

    p = normalize_params(params)
    if p["init_center"] is None:   # resolved here so that the key says where the inputs started
        p["init_center"] = input_level_prior(model)
    digest = model_path_or_hash if _is_hex_digest(model_path_or_hash) else model_hash(model)
    key = cache_key(digest, p)
    folder = Path(cache_dir if cache_dir is not None else build_dir() / "synth_cache") / key
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    manifest = _read_manifest(manifest_path)
    keyed = _keyed(p)
    manifest.update({"format": CACHE_FORMAT, "key": key, "model_hash": digest, "params": keyed})
    if model_path_or_hash is not None and not _is_hex_digest(model_path_or_hash):
        manifest["model_path"] = str(model_path_or_hash)
    entries: dict = manifest.setdefault("batches", {})

    n_mels = int(_encoder_of(model).feat_in)
    shape = (p["batch_size"], n_mels, p["frames"])
    wanted = list(range(p["n_batches"])) if indices is None else [int(i) for i in indices]
    results: dict[int, tuple[torch.Tensor, list[float]]] = {}
    for i in wanted:
        path = folder / _batch_name(i)
        if not path.exists():
            entries.pop(str(i), None)
            continue
        problem, loaded = _check_batch(path, entries.get(str(i)), i, shape, p["iterations"])
        if problem:
            warnings.warn(f"{path}: unusable cached synthetic batch ({problem}); regenerating it",
                          SynthCacheWarning, stacklevel=2)
            entries.pop(str(i), None)
            continue
        results[i] = loaded
        entries.setdefault(str(i), {"file": path.name, "sha256": file_sha256(path, cached=False),
                                    "final_loss": loaded[1][-1] if loaded[1] else None})

    missing = [i for i in wanted if i not in results]
    if missing:
        gen = SyntheticMelGenerator(model, params=p, fast=fast, threads=threads, progress=progress)
        for i in tqdm(missing, desc="synthetic batches", disable=not progress or len(missing) < 2):
            t0 = time.perf_counter()
            mel, curve = gen.generate_batch(i)
            seconds = time.perf_counter() - t0
            path = folder / _batch_name(i)
            blob = {"mel": mel.contiguous(), "lengths": torch.full((shape[0],), shape[2], dtype=torch.long),
                    "losses": torch.tensor(curve, dtype=torch.float64), "index": torch.tensor(i)}
            atomic_write_bytes(path, lambda f: torch.save(blob, f))
            entries[str(i)] = {"file": path.name, "sha256": file_sha256(path, cached=False),
                               "final_loss": curve[-1], "initial_loss": curve[0], "seconds": round(seconds, 3)}
            _write_manifest(manifest_path, manifest, atomic_write_bytes)
            results[i] = (mel, curve)
    _write_manifest(manifest_path, manifest, atomic_write_bytes)

    mels = torch.empty(len(wanted), *shape)
    curves = []
    for j, i in enumerate(wanted):
        mels[j] = results[i][0]
        curves.append(results[i][1])
    out = _public_params(p)
    out.update({"cache_key": key, "cache_dir": str(folder), "model_hash": digest, "generated": missing})
    return SyntheticBatches(mels, torch.full((len(wanted), shape[0]), shape[2], dtype=torch.long), curves, out)


def _batch_name(i: int) -> str:
    return f"batch_{i:05d}.pt"


def _read_manifest(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text())
        if not isinstance(obj, dict) or not isinstance(obj.get("batches", {}), dict):
            raise ValueError("not a manifest object")
        return obj
    except (ValueError, OSError) as e:
        warnings.warn(f"{path}: unreadable cache manifest ({e}); checking batch files by content",
                      SynthCacheWarning, stacklevel=3)
        return {}


def _write_manifest(path: Path, manifest: dict, atomic_write_bytes) -> None:
    out = {**manifest, "batches": dict(sorted(manifest["batches"].items(), key=lambda kv: int(kv[0])))}
    atomic_write_bytes(path, lambda f: f.write(json.dumps(out, indent=1).encode()))


def _check_batch(path: Path, entry: dict | None, index: int, shape: tuple, iterations: int):
    """(problem or None, (mel, losses))."""
    if entry is not None and entry.get("sha256"):
        actual = file_sha256(path, cached=False)
        if actual != entry["sha256"]:
            return f"checksum mismatch: sha256 {actual[:12]}... but the manifest says {entry['sha256'][:12]}...", None
    try:
        with open(path, "rb") as f:
            blob = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, anything torch.load refuses
        return f"cannot load: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", None
    if not isinstance(blob, dict) or not all(k in blob for k in ("mel", "losses", "index")):
        return "not a synthetic batch (missing mel/losses/index)", None
    mel, losses = blob["mel"], blob["losses"]
    if not isinstance(mel, torch.Tensor) or tuple(mel.shape) != tuple(shape) or mel.dtype != torch.float32:
        return f"wrong shape/dtype: {getattr(mel, 'shape', None)} {getattr(mel, 'dtype', None)}, expected {shape}", None
    if not torch.isfinite(mel).all():
        return "non-finite values", None
    if int(blob["index"]) != index:
        return f"holds batch {int(blob['index'])}, not {index}", None
    if not isinstance(losses, torch.Tensor) or losses.numel() != iterations + 1:
        return f"loss curve has {getattr(losses, 'numel', lambda: '?')()} values, expected {iterations + 1}", None
    return None, (mel, [float(v) for v in losses.tolist()])
# Inspecting how well inputs match the BatchNorm statistics (the book's chapter 04). -------------

def real_feature_crops(model, utts, n: int, frames: int) -> torch.Tensor:
    """[k, n_mels, frames]: the first `frames` normalized log-mel frames of the first k <= n
    utterances of `utts` with at least frames + 16 frames of audio (10 ms each), one at a time
    through the model's front end."""
    from .data import load_batch

    crops = []
    with torch.inference_mode():
        for utt in [u for u in utts if u.duration * 100 >= frames + 16][:n]:
            mel, mel_len = model.features(*load_batch([utt]))
            crops.append(mel[0, :, : int(mel_len[0])][:, :frames])
    return torch.stack(crops)


def batchnorm_input_stats(model, mel: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """BatchNorm name -> (mean, std) per channel of its input over batch and time (unbiased
    variance), when the encoder runs on `mel` [B, n_mels, T] with every frame valid."""
    stats = {}

    def hook(name):
        def fn(module, inputs):
            var, mean = channel_var_mean(inputs[0])
            stats[name] = (mean, var.clamp_min(0).sqrt())

        return fn

    handles = [bn.register_forward_pre_hook(hook(name)) for name, bn in model.batchnorms()]
    try:
        with torch.inference_mode():
            model.encoder(mel, torch.full((mel.shape[0],), mel.shape[-1], dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    return stats


def batchnorm_channel_rows(model, recorded: dict[str, dict], layers) -> list[dict]:
    """Per input label of `recorded` (label -> batchnorm_input_stats), per BatchNorm named in
    `layers`, per channel: running mean and std against the batch mean and std."""
    rows = []
    for label, stats in recorded.items():
        for name, bn in model.batchnorms():
            if name not in layers:
                continue
            mean, std = stats[name]
            rows += [{"input": label, "layer": name, "channel": c, "running mean": float(bn.running_mean[c]),
                      "running std": float(bn.running_var[c].sqrt()), "batch mean": float(mean[c]),
                      "batch std": float(std[c])} for c in range(bn.num_features)]
    return rows


def batchnorm_match_rows(model, recorded: dict[str, dict], eps: float = BN_EPS) -> list[dict]:
    """Per input label of `recorded` and per BatchNorm (in order, `layer index`): the layer's KL
    term of Eq. 2 (`bn_kl_loss`) and the median over channels of sqrt((std^2 + eps) /
    (running_var + eps))."""
    rows = []
    for label, stats in recorded.items():
        for k, (name, bn) in enumerate(model.batchnorms()):
            mean, std = stats[name]
            rows.append({
                "input": label, "layer index": k, "layer": name,
                "KL term": float(bn_kl_loss(mean, std**2, bn.running_mean, bn.running_var)),
                "std ratio (median over channels)": float(((std**2 + eps) / (bn.running_var + eps)).sqrt().median()),
            })
    return rows
