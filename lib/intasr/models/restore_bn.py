"""Put BatchNorm layers back into a checkpoint whose BatchNorms were folded away.

The zero-shot method needs each BatchNorm's running statistics; the public QuartzNet export in
../shared has them folded into the preceding convolutions (conv weight W_f, bias b_f). We rebuild
the NeMo structure conv (no bias) -> BN and choose, per channel,

    conv weight      W = W_f                       (so the pre-BN output is z = W_f * x)
    running_mean     mu_z = E[z]                   measured on real training-split audio
    running_var      v_z  = Var[z] (unbiased)      measured likewise
    gamma            sqrt(v_z + eps)
    beta             mu_z + b_f

Then BN(z) = (z - mu_z) / sqrt(v_z + eps) * sqrt(v_z + eps) + mu_z + b_f = z + b_f, exactly the
folded function, and the running statistics are those a NeMo checkpoint trained on this data
would carry (up to a per-channel scale of W, which the KL loss of Eq. 2 does not see).

Determinism: the same weights and audio give the same statistics bit for bit, whatever thread
count the caller runs with, so `make model` writes a byte-identical `.nemo` everywhere on one CPU
type. Two things would otherwise move the last bits: a float32 convolution sums its products in
an order that depends on the intra-op thread count (measured here: QuartzNet-15x5's pointwise
convs from block 1 on give different outputs with 1 and 2 threads, up to 4e-6), and a threaded
float64 reduction splits its sums likewise. So the measuring passes run on one thread
(`fixed_threads`) and the moments are summed by NumPy (single-threaded, fixed pairwise order).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .convasr import ConvASR, MaskedConv1d, frame_mask, walk
from .bn import set_identity_affine


def conv_before_each_bn(model: ConvASR) -> list[tuple[str, MaskedConv1d, nn.BatchNorm1d]]:
    """(bn_name, conv, bn) for every BatchNorm, with the conv whose output it normalizes."""
    pairs = []
    for blk in walk(model).blocks:
        for site in (*blk.main, *blk.residual):
            if site.bn is not None:
                pairs.append((site.bn_name, site.module, site.bn))
    return pairs


def load_folded(model: ConvASR, folded: dict[str, np.ndarray | torch.Tensor]) -> None:
    """Load folded weights: convs get W_f, each BN becomes `z + b_f` (mean 0, var 1 - eps)."""
    folded = {k: torch.as_tensor(np.asarray(v)) for k, v in folded.items()}
    sd = model.state_dict()
    used = set()
    for key in sd:
        if key in folded:
            sd[key] = folded[key].to(sd[key].dtype).reshape(sd[key].shape)
            used.add(key)
    for bn_name, conv, bn in conv_before_each_bn(model):
        conv_name = bn_name.rsplit(".", 1)[0] + "." + str(int(bn_name.rsplit(".", 1)[1]) - 1) + ".conv"
        bias_key = conv_name + ".bias"
        if bias_key not in folded:
            raise KeyError(f"folded checkpoint has no {bias_key} (needed for {bn_name})")
        used.add(bias_key)
        eps = bn.eps
        sd[f"{bn_name}.running_mean"] = torch.zeros(bn.num_features)
        sd[f"{bn_name}.running_var"] = torch.full((bn.num_features,), 1.0 - eps)
        sd[f"{bn_name}.weight"] = torch.ones(bn.num_features)
        sd[f"{bn_name}.bias"] = folded[bias_key].float()
    unused = sorted(set(folded) - used)
    if unused:
        raise KeyError(f"folded checkpoint keys not placed in the model: {unused[:5]}")
    missing = [k for k in sd if (k.endswith(".conv.weight") or k.startswith("decoder.")) and k not in used]
    if missing:
        raise KeyError(f"model weights missing from the folded checkpoint: {missing[:5]}")
    model.load_state_dict(sd)


@contextmanager
def fixed_threads(n: int | None = 1):
    """Run torch on `n` intra-op threads inside the block, then restore the caller's count
    (module doc: a float32 convolution's result depends on the thread count). None: leave it."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


class ChannelMoments:
    """Per-channel mean and unbiased variance of [B, C, T] activations over their valid frames,
    accumulated batch by batch in float64. The float32 -> float64 products z and z*z are exact;
    their sums run in NumPy, single-threaded in a fixed order, so the result does not depend on
    torch's thread count (module doc)."""

    def __init__(self):
        self.s, self.ss, self.n = 0.0, 0.0, 0

    def add(self, z: torch.Tensor, valid: torch.Tensor) -> None:
        """valid: [B, 1, T] (or broadcastable) 1 on valid frames, 0 on padding."""
        z64 = (z.detach().double() * valid).numpy()
        self.s = self.s + z64.sum(axis=(0, 2))
        self.ss = self.ss + np.square(z64).sum(axis=(0, 2))
        self.n += int(valid.sum())

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError("need at least two valid frames to estimate BatchNorm statistics")
        mean = self.s / self.n
        var = (self.ss - self.n * mean * mean) / (self.n - 1)
        return mean, np.maximum(var, 0.0)


@torch.no_grad()
def measure_bn_inputs(model: ConvASR, batches, progress: bool = True,
                      threads: int | None = 1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and unbiased variance of every BN input over the valid frames of `batches`.

    `batches` yields (audio [B, N], lengths [B]). Sums are kept in float64 so the result does not
    depend on how the data was batched beyond float32 rounding of the activations themselves.
    The forward passes run on `threads` torch threads (1: the result is the same whatever the
    caller's thread count; module doc).
    """
    pairs = conv_before_each_bn(model)
    acc = {name: ChannelMoments() for name, _, _ in pairs}
    handles = []
    for name, conv, _ in pairs:
        def hook(_m, _inp, out, name=name):
            z, lens = out
            acc[name].add(z, frame_mask(lens, z.shape[-1])[:, None, :])
        handles.append(conv.register_forward_hook(hook))
    try:
        with fixed_threads(threads):
            for audio, lengths in tqdm(batches, desc="BN statistics", disable=not progress):
                model(audio, lengths)
    finally:
        for h in handles:
            h.remove()
    return {name: m.result() for name, m in acc.items()}


def restore_identity_bn(bn: nn.BatchNorm1d, mean, var) -> None:
    """Turn a `z + b_f` BatchNorm (identity scale, bias b_f) into one with running statistics
    (mean, var) that computes the same function (models/bn.py `set_identity_affine`)."""
    b_f = bn.bias.detach().double().clone()
    bn.running_mean.copy_(torch.as_tensor(mean))
    bn.running_var.copy_(torch.as_tensor(var))
    set_identity_affine(bn, b_f)  # models/bn.py: the same identity quant.bn.bn_from_stats builds


def apply_bn_statistics(model: ConvASR, stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Turn each `z + b_f` BatchNorm into one with measured running statistics, same function."""
    for name, _conv, bn in conv_before_each_bn(model):
        restore_identity_bn(bn, *stats[name])


def restore_batchnorm(model: ConvASR, folded: dict, batches, progress: bool = True, threads: int | None = 1) -> dict:
    """Load folded weights into `model` and restore its BatchNorm statistics from `batches`
    (bit-reproducible whatever the caller's thread count: `measure_bn_inputs`)."""
    load_folded(model, folded)
    stats = measure_bn_inputs(model, batches, progress=progress, threads=threads)
    apply_bn_statistics(model, stats)
    return stats


@torch.no_grad()
def restore_bn_sequential(model, audio, lengths, threads: int | None = 1) -> dict:
    """Set every BN's running stats from its own input, layer by layer, in one forward pass.

    For a network whose BatchNorms hold no statistics yet (a randomly initialized NeMo model):
    the statistics of BN k depend on how the BNs before it normalize, so a single measuring pass
    with the initial BN state (mean 0, var 1) measures every later layer on un-normalized inputs.
    A forward pre-hook on each BatchNorm computes the per-channel mean and unbiased variance of its
    input over the valid frames (float64 sums), writes them into running_mean / running_var, and
    then the BN runs (eval mode) with them. Later layers therefore see earlier layers normalized
    exactly as they will be at inference. The lengths of the BN input are those returned by the
    conv that produced it (always called right before its BN, main path and residual branches).
    """
    state = {"lens": None}
    handles = []
    for m in model.encoder.modules():
        if isinstance(m, MaskedConv1d):
            handles.append(m.register_forward_hook(lambda _m, _i, out: state.__setitem__("lens", out[1])))
    stats = {}
    names = {id(bn): name for name, _conv, bn in conv_before_each_bn(model)}

    def pre_hook(bn, inputs):
        z = inputs[0]
        moments = ChannelMoments()
        moments.add(z, frame_mask(state["lens"], z.shape[-1])[:, None, :])
        mean, var = moments.result()
        bn.running_mean.copy_(torch.as_tensor(mean))
        bn.running_var.copy_(torch.as_tensor(var))
        stats[names[id(bn)]] = (mean, var)

    for _name, _conv, bn in conv_before_each_bn(model):
        handles.append(bn.register_forward_pre_hook(pre_hook))
    try:
        with fixed_threads(threads):  # reproducible bits (module doc)
            model(audio, lengths)
    finally:
        for h in handles:
            h.remove()
    return stats


def stats_difference(model, measured: dict) -> dict:
    """Max relative difference between stored running stats and freshly measured ones."""
    dm, dv = 0.0, 0.0
    for name, _conv, bn in conv_before_each_bn(model):
        mean, var = measured[name]
        rv = bn.running_var.double().numpy()
        rm = bn.running_mean.double().numpy()
        scale = np.sqrt(rv + bn.eps)
        dm = max(dm, float(np.max(np.abs(mean - rm) / scale)))
        dv = max(dv, float(np.max(np.abs(var - rv) / (rv + bn.eps))))
    return {"max_abs_mean_diff_in_std": dm, "max_rel_var_diff": dv}
