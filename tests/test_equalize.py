"""Cross-layer equalization of separable pairs (quant/equalize.py): an exact identity of the
float model, the DFQ range property, and `quantize(equalize=True)` leaving the caller's model alone."""

import torch

from intasr.calibration import random_mels
from intasr.quant.bn import fold_batchnorm
from intasr.quant.equalize import equalization_scales, equalize_separable, separable_pairs
from intasr.quantize import quantize

from test_adaround import tiny_model


def _ranges(dw, pw, bn):
    r_dw = dw.weight.detach().double().abs().amax(dim=(1, 2))
    return r_dw, fold_batchnorm(pw.weight.detach().double(), None, bn)[0][:, :, 0].abs().amax(dim=0)


def test_equalization_keeps_the_float_model_and_equalizes_the_ranges():
    model = tiny_model(seed=5)
    # make the ranges unequal on purpose: channel i of every depthwise conv scaled by 4^(i mod 3 - 1)
    with torch.no_grad():
        for dw, pw, _ in separable_pairs(model):
            f = 4.0 ** (torch.arange(dw.conv.out_channels) % 3 - 1).float()
            dw.conv.weight.mul_(f[:, None, None])
            pw.conv.weight.div_(f[None, :, None])
    mel, lens = random_mels(1, 3, 90, seed=1)[0]
    with torch.no_grad():
        ref = model.forward_features(mel, lens)[0]
    pairs = separable_pairs(model)
    assert len(pairs) == 5   # the first block and two separable blocks of two sub-blocks
    before = [_ranges(dw.conv, pw.conv, bn) for dw, pw, bn in pairs]
    assert equalize_separable(model) == 5
    with torch.no_grad():
        out = model.forward_features(mel, lens)[0]
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    for (dw, pw, bn), (r_dw0, r_pw0) in zip(pairs, before):
        r_dw, r_pw = _ranges(dw.conv, pw.conv, bn)
        ratio = r_dw / r_pw   # DFQ: one ratio for every channel (geometric normalisation's factor)
        assert float(ratio.max() / ratio.min()) < 1 + 1e-5
        assert torch.allclose(r_dw * r_pw, r_dw0 * r_pw0, rtol=1e-5)   # the product is invariant
        assert torch.allclose(equalization_scales(dw.conv, pw.conv, bn), torch.ones_like(r_dw), rtol=1e-5)


def test_equalize_only_the_chosen_pairs():
    model = tiny_model(seed=6)
    pairs = separable_pairs(model)
    w = [pw.conv.weight.clone() for _, pw, _ in pairs]
    assert equalize_separable(model, [pairs[1][1].conv]) == 1
    assert torch.equal(pairs[0][1].conv.weight, w[0]) and not torch.equal(pairs[1][1].conv.weight, w[1])


def test_quantize_with_equalization_leaves_the_callers_model_alone():
    model = tiny_model(seed=7)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = random_mels(1, 4, 120, seed=2)
    q = quantize(model, batches, 4, 8, equalize=True, bias_correction=True, progress=False)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert q.info["equalized"] == 5
    q8 = quantize(model, batches, 8, 8, equalize=True, progress=False)
    assert q8.info["equalized"] == 0   # pairs at 8 bits are left as they are
    mel, lens = batches[0]
    with torch.no_grad():
        ref = model.forward_features(mel, lens)[0].double()
        out = q.forward_features(mel, lens)[0].double() * q.logit_scale
    assert torch.isfinite(out).all() and float((out - ref).pow(2).sum() / ref.pow(2).sum()) < 1.0
