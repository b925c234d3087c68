"""Zero-shot synthetic log-mel generation (paper Eq. 2) for the Conformer-CTC: the loss covers the
conv modules' BatchNorm inputs over valid frames, it falls, the fast path agrees with the plain
one, the cache and resume work, calibration sources and the CLI take a Conformer, and the
ConvASR cache keys stay what they were."""

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from intasr import synth
from intasr.calibration import calibration_batches
from intasr.models import ConformerCTC, ConvASR, config_for, conformer_ctc_config, save_model
from intasr.models.convasr import frame_mask
from intasr.models.fastconv import FastDepthwiseConv1d
from intasr.synth import (SynthStatsWarning, SyntheticMelGenerator, generate_cached, masked_var_mean,
                            model_hash)

T, B, F = 64, 2, 16


def _mel_like(n, frames, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, F, frames + 8, generator=g).unfold(-1, 9, 1).mean(-1) * 2.0
    return x + torch.linspace(-1.0, 1.0, F)[None, :, None]


def make_tiny_conformer(n_layers: int = 2):
    """d_model 32, 2 heads, kernel 7, 16 mels, random weights; BN running statistics measured on
    mel-like inputs (cumulative average), so they are nothing like the placeholders 0 / 1."""
    torch.manual_seed(0)
    model = ConformerCTC(conformer_ctc_config("small", bpe=False, d_model=32, n_heads=2, n_layers=n_layers,
                                              feat_in=F, conv_kernel_size=7))
    for _, bn in model.batchnorms():
        bn.reset_running_stats()
        bn.momentum = None
    model.encoder.train()
    with torch.no_grad():
        for s in range(3):
            model.encoder(_mel_like(4, 96, s), torch.full((4,), 96))
    model.eval()
    return model


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_conformer()


def _gen(model, **kw):
    kw = {"batch_size": B, "frames": T, "iterations": 12, "lr": 0.05, "seed": 0, "progress": False, "threads": 1,
          **kw}
    return SyntheticMelGenerator(model, **kw)


def _direct_loss(model, x, lengths):
    """The loss computed independently, in float64: hooks on every conv module (its pad mask) and
    its depthwise conv (the BatchNorm input), statistics over the valid frames only."""
    masks, stats, handles = {}, {}, []
    for i, layer in enumerate(model.encoder.layers):
        def pre(_m, args, kwargs, i=i):
            masks[i] = kwargs.get("pad_mask", args[1] if len(args) > 1 else None)

        def post(_m, _inp, z, i=i):
            stats[i] = z.double().permute(1, 0, 2)[:, ~masks[i]]     # [C, valid frames of all items]

        handles.append(layer.conv.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.conv.depthwise_conv.register_forward_hook(post))
    try:
        with torch.no_grad():
            model.encoder(x.to(next(model.parameters()).dtype), lengths)
    finally:
        for h in handles:
            h.remove()
    total = 0.0
    for i, layer in enumerate(model.encoder.layers):
        bn = layer.conv.batch_norm
        z = stats[i]                                   # [C, number of valid frames]
        mu, var = z.mean(1), z.var(1, unbiased=True)
        sb2, sh2 = bn.running_var.double() + 1e-6, var + 1e-6
        total += float((0.5 * torch.log(sh2 / sb2) - 0.5 * (1 - (sb2 + (bn.running_mean.double() - mu) ** 2) / sh2)).mean())
    return total


# -- the loss ------------------------------------------------------------------------------------
def test_one_term_per_conv_module_on_the_batchnorm_input(tiny):
    slow, fast = _gen(tiny, fast=False), _gen(tiny)
    assert len(slow.bns) == len(tiny.encoder.layers) == 2
    assert slow.bns == [layer.conv.batch_norm for layer in slow.encoder.layers]
    assert slow.n_mels == F and slow.conformer
    # the fast path: depthwise convs swapped, the forward stops at the last layer's BatchNorm
    assert sum(isinstance(m, FastDepthwiseConv1d) for m in fast.encoder.modules()) == 2
    assert fast._last_bn is fast.encoder.layers[-1].conv.batch_norm and slow._last_bn is None
    x = slow.initial(0)
    assert x.shape == (B, F, T) and 0.25 < float(x.abs().max()) <= 0.3
    want = _direct_loss(tiny, x, torch.full((B,), T))
    with torch.no_grad():
        assert float(slow.loss(x)) == pytest.approx(want, rel=1e-5)
        assert float(fast.loss(x)) == pytest.approx(want, rel=1e-5)


def test_padded_frames_are_excluded(tiny):
    gen = _gen(tiny)
    x = gen.initial(3)
    lengths = torch.tensor([T, T - 24])
    want = _direct_loss(tiny, x, lengths)
    with torch.no_grad():
        padded = float(gen.loss(x, lengths))
        full = float(gen.loss(x))
    assert padded == pytest.approx(want, rel=1e-5)
    assert abs(padded - full) > 1e-3 * abs(full)        # the padded frames would have counted
    # what the padded frames hold changes nothing, and they get no gradient
    y = x.clone()
    y[1, :, T - 24:] = 50.0 * torch.randn(F, 24)
    with torch.no_grad():
        assert float(gen.loss(y, lengths)) == pytest.approx(padded, rel=1e-6)
    y = nn.Parameter(y)
    gen.loss(y, lengths).backward()
    assert float(y.grad[1, :, T - 24:].abs().max()) == 0.0 and float(y.grad[1, :, : T - 24].abs().max()) > 0
    # explicit full lengths = the default
    with torch.no_grad():
        assert float(gen.loss(x, torch.full((B,), T))) == full
    # masked statistics: the plain ones on the valid part
    z = torch.randn(2, 3, 10, dtype=torch.float64)
    var, mean = masked_var_mean(z, torch.tensor([10, 4]))
    ref = torch.cat([z[0], z[1, :, :4]], dim=1)
    assert torch.allclose(mean, ref.mean(1)) and torch.allclose(var, ref.var(1, unbiased=True))


def test_convasr_refuses_padded_inputs():
    model = ConvASR(config_for("quartznet5x5"))
    gen = _gen(model, fast=False)
    with pytest.raises(ValueError, match="Conformer only"):
        gen.loss(gen.initial(0), torch.tensor([T, T - 8]))


def test_loss_falls_fast_path_agrees_and_model_untouched(tiny):
    before = {k: v.detach().clone() for k, v in tiny.state_dict().items()}
    out = _gen(tiny, iterations=25).generate()
    curve = out.losses[0]
    assert len(curve) == 26 and all(math.isfinite(v) for v in curve)
    assert curve[-1] < 0.2 * curve[0], curve
    assert out.mels.shape == (1, B, F, T) and out.lengths.tolist() == [[T] * B]
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items()), "generation modified the model"
    assert all(p.requires_grad and p.grad is None for p in tiny.parameters()) and not tiny.training
    # fast vs straightforward: same loss and input gradient along a few steps of one trajectory
    slow, fast = _gen(tiny, fast=False), _gen(tiny)
    x = nn.Parameter(slow.initial(1))
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(3):
        ls, lf = slow.loss(x), fast.loss(x)
        (gs,) = torch.autograd.grad(ls, x)
        (gf,) = torch.autograd.grad(lf, x)
        assert float(lf.detach()) == pytest.approx(float(ls.detach()), rel=1e-5)
        assert float((gf - gs).abs().max()) <= 1e-4 * float(gs.abs().max())
        x.grad = gs
        opt.step()


def test_seeds_are_per_batch(tiny):
    a = _gen(tiny, iterations=2, n_batches=2).generate()
    b = _gen(tiny, iterations=2, n_batches=1).generate(indices=[1])
    assert torch.equal(a.mels[1], b.mels[0]) and not torch.equal(a.mels[0], a.mels[1])


def test_placeholder_statistics_warn():
    model = ConformerCTC(conformer_ctc_config("small", bpe=False, d_model=32, n_heads=2, n_layers=1, feat_in=F,
                                              conv_kernel_size=7))
    with pytest.warns(SynthStatsWarning, match="placeholder"):
        _gen(model)
    with torch.no_grad():                       # the folded identity form (hama without --restore-bn)
        model.encoder.layers[0].conv.batch_norm.running_var.fill_(1.0 - 1e-5)
    with pytest.warns(SynthStatsWarning):
        _gen(model)


# -- cache, calibration sources, CLI -----------------------------------------------------------------
@pytest.fixture()
def counting(monkeypatch):
    calls = []
    orig = SyntheticMelGenerator.generate_batch

    def wrapped(self, index):
        calls.append(index)
        return orig(self, index)

    monkeypatch.setattr(SyntheticMelGenerator, "generate_batch", wrapped)
    return calls


PARAMS = {"n_batches": 2, "batch_size": B, "frames": T, "iterations": 4, "seed": 0}


def test_cache_and_resume(tiny, tmp_path, counting):
    first = generate_cached(tiny, None, PARAMS, tmp_path, progress=False, threads=1)
    assert counting == [0, 1] and first.mels.shape == (2, B, F, T)
    folder = Path(first.params["cache_dir"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model_hash"] == model_hash(tiny) and set(manifest["batches"]) == {"0", "1"}
    counting.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = generate_cached(tiny, None, PARAMS, tmp_path, progress=False, threads=1)
    assert counting == [] and torch.equal(again.mels, first.mels) and again.losses == first.losses
    (folder / "batch_00001.pt").unlink()
    counting.clear()
    resumed = generate_cached(tiny, None, PARAMS, tmp_path, progress=False, threads=1)
    assert counting == [1] and torch.equal(resumed.mels, first.mels)
    path = folder / "batch_00000.pt"
    path.write_bytes(path.read_bytes()[:100])
    counting.clear()
    with pytest.warns(synth.SynthCacheWarning, match="batch_00000.pt"):
        fixed = generate_cached(tiny, None, PARAMS, tmp_path, progress=False, threads=1)
    assert counting == [0] and torch.equal(fixed.mels, first.mels)
    # a different model: a different key
    other = make_tiny_conformer(n_layers=1)
    assert synth.cache_key(model_hash(other), PARAMS) != first.params["cache_key"]


def test_convasr_cache_keys_unchanged_but_for_the_format(monkeypatch):
    small = {"batch_size": 2, "frames": 64, "iterations": 3, "seed": 1}
    pins = ["e55212f917a4c97db6f09cfcd0835cd70d89c97d5ef72f0936cd351ec9dd4cd6",
            "45d85f0f50f17e9aca9e5be4b45dcffa09cf78b9881ad57152e9a8c605ea5183"]
    now = [synth.cache_key("0" * 64, {}), synth.cache_key("0" * 64, small)]
    # format 2 (two-pass statistics) never reuses a batch of format 1, whose keys are
    # pinned from the code before the Conformer support (commit a499474)
    assert not set(now) & set(pins)
    monkeypatch.setattr(synth, "CACHE_FORMAT", 1)
    assert [synth.cache_key("0" * 64, {}), synth.cache_key("0" * 64, small)] == pins


def test_calibration_sources(tiny, tmp_path, counting):
    rnd = calibration_batches(tiny, "random", n_batches=2, batch_size=B, frames=T)
    assert len(rnd) == 2 and rnd[0][0].shape == (B, F, T)
    syn = calibration_batches(tiny, "synthetic", n_batches=1, batch_size=B, frames=T, synth={"iterations": 3},
                              cache_dir=tmp_path, progress=False)
    assert len(syn) == 1 and syn[0][0].shape == (B, F, T) and syn[0][1].tolist() == [T] * B and counting == [0]
    for mel, lengths in rnd + syn:
        logits, out_len = tiny.forward_features(mel, lengths)
        assert torch.isfinite(logits).all() and out_len.tolist() == [tiny.encoder.output_lengths(lengths)[0]] * B


@pytest.mark.assets
def test_calibration_real(tiny, train_clean_dir):
    real = calibration_batches(tiny, "real", data=train_clean_dir, limit=2, batch_size=2)
    (mel, lengths), = real
    assert mel.shape[:2] == (2, F) and 0 < int(lengths.min()) and int(lengths.max()) <= mel.shape[-1]
    logits, _ = tiny.forward_features(mel, lengths)
    assert torch.isfinite(logits).all()


def test_cli_synth_takes_a_conformer(tiny, tmp_path, capsys):
    path = save_model(tiny, tmp_path / "conformer.nemo")
    from intasr.cli import main as cli_main

    argv = ["synth", "--model", str(path), "--out", str(tmp_path / "cache"), "--batches", "1",
            "--batch-size", "2", "--frames", "48", "--iterations", "3", "--quiet", "--threads", "1",
            "--json", str(tmp_path / "s.json")]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "batch 0: loss" in out and f"1 batches of 2 x {F} x 48" in out and "1 generated" in out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["final_loss"][0] < summary["initial_loss"][0]


# -- the real pretrained Conformer (hama) ------------------------------------------------------------
@pytest.mark.assets
def test_hama_loss_falls(train_clean_dir):
    pytest.importorskip("hama")
    from intasr.data import load_batch, load_dataset
    from intasr.models.hama import load_hama_model, restore_conformer_bn

    torch.set_num_threads(1)
    model = load_hama_model()
    with pytest.warns(SynthStatsWarning):                 # identity-form BatchNorms: placeholders
        SyntheticMelGenerator(model, iterations=0, progress=False)
    utts = load_dataset(train_clean_dir, require_text=False, limit=4)
    restore_conformer_bn(model, [load_batch(utts)], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SynthStatsWarning)
        gen = SyntheticMelGenerator(model, batch_size=2, frames=200, iterations=10, progress=False, threads=1)
    assert gen.n_mels == 80 and len(gen.bns) == 4
    _, curve = gen.generate_batch(0)
    assert curve[-1] < curve[0] / 3, curve
