"""Mixed precision under a size budget (quant/mixed_precision.py): sizes agree with the paper's
size count, the allocation meets the budget and spends it where the error is, and the integer
model carries each conv's width."""

import pytest
import torch
from intasr.calibration import collect, random_mels
from intasr.convert import convert
from intasr.experiments import model_size_mb
from intasr.quant.mixed_precision import (
    allocate,
    allocate_bits,
    sensitivities,
    size_mb,
    weight_convs,
)
from intasr.quantize import quantize
from test_adaround import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=6)


def test_uniform_size_is_the_papers_size(model):
    for bits in (4, 6, 8):
        assert size_mb(model, lambda c, bits=bits: bits) == pytest.approx(model_size_mb(model, bits), rel=1e-12)


def test_sensitivity_falls_with_width(model):
    mel, lens = random_mels(1, 2, 80, seed=4)[0]
    sens = sensitivities(model, mel, lens, progress=False)
    convs = [c for c, _ in weight_convs(model)]
    assert all(sens[(c, 4)] > sens[(c, 8)] >= 0 for c in convs)
    assert sum(sens[(c, 4)] > sens[(c, 6)] for c in convs) >= 0.8 * len(convs)


def test_allocation_meets_the_budget_and_prefers_sensitive_layers(model):
    convs = [c for c, _ in weight_convs(model)]
    low, high = size_mb(model, lambda c: 4), size_mb(model, lambda c: 8)
    # a made-up sensitivity: only the first conv cares about its width
    sens = {(c, b): (1.0 if c is convs[0] else 1e-6) * 2.0 ** -b for c in convs for b in (4, 6, 8)}
    for budget in (low, (low + high) / 2, high):
        bits = allocate(model, sens, budget)
        assert size_mb(model, lambda c, bits=bits: bits[c]) <= budget + 1e-12
    assert all(b == 8 for b in allocate(model, sens, high).values())
    assert all(b == 4 for b in allocate(model, sens, low).values())
    extra = convs[0].weight.numel() * 4 / 8 / (1 << 20)    # exactly what 4 -> 8 on conv 0 costs
    bits = allocate(model, sens, low + extra * 1.01)
    assert bits[convs[0]] == 8 and sum(b > 4 for b in bits.values()) == 1
    with pytest.raises(ValueError, match="below the all-4-bit size"):
        allocate(model, sens, low * 0.9)


def test_mixed_model_is_integer_with_per_conv_widths(model):
    batches = random_mels(1, 2, 80, seed=5)
    low, high = size_mb(model, lambda c: 4), size_mb(model, lambda c: 8)
    budget = low + 0.3 * (high - low)      # less than all-6: some convs must stay at 4 bits
    bits = allocate_bits(model, batches, budget, progress=False)
    assert len(set(bits.values())) > 1
    qmodel = convert(model, collect(model, batches).observers, 8, 8, layer_bits=bits)
    widths = {}
    for op, (conv, _) in zip(qmodel.int_convs(), weight_convs(model)):
        w = op.params["weight"]
        lo, hi = -(1 << (bits[conv] - 1)), (1 << (bits[conv] - 1)) - 1
        assert not w.is_floating_point() and lo <= int(w.min()) and int(w.max()) <= hi
        widths[bits[conv]] = widths.get(bits[conv], 0) + 1
    assert qmodel.info["layer_bits"] == {str(b): n for b, n in sorted(widths.items())}
    q = quantize(model, batches, 4, 8, size_budget_mb=budget, progress=False)
    assert q.info["size_mb"] <= budget


def test_bias_corrected_sensitivity_is_what_the_corrected_model_loses(model):
    """With bias_correction the measured error of a conv is the converter's corrected rounding:
    smaller than the uncorrected one for most convs at 4 bits, equal where the input mean is
    zero, and the weights come back untouched (no hook left behind)."""
    mel, lens = random_mels(1, 2, 80, seed=4)[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = sensitivities(model, mel, lens, progress=False)
    fixed = sensitivities(model, mel, lens, progress=False, bias_correction=True)
    convs = [c for c, _ in weight_convs(model)]
    assert sum(fixed[(c, 4)] < plain[(c, 4)] for c in convs) >= 0.6 * len(convs)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(not c._forward_hooks for c in convs)
    # the first conv reads the crop itself: with every input channel centred its mean shift is 0
    centred = mel - mel.mean(dim=(0, 2), keepdim=True)
    first = convs[0]
    p0 = sensitivities(model, centred, lens, widths=(4,), progress=False)[(first, 4)]
    f0 = sensitivities(model, centred, lens, widths=(4,), progress=False, bias_correction=True)[(first, 4)]
    assert p0 > 0 and f0 == pytest.approx(p0, rel=1e-9)


def test_sensitivities_are_cached_by_content(model, tmp_path, monkeypatch):
    import json

    from intasr.quant import mixed_precision as mp

    mel, lens = random_mels(1, 2, 80, seed=7)[0]
    mp._MEMO.clear()
    first = mp.cached_sensitivities(model, mel, lens, cache_dir=tmp_path, progress=False, bias_correction=True)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["bias_correction"] is True
    mp._MEMO.clear()
    monkeypatch.setattr(mp, "sensitivities", lambda *a, **k: pytest.fail("measured again"))
    assert mp.cached_sensitivities(model, mel, lens, cache_dir=tmp_path, progress=False,
                                   bias_correction=True) == first
    monkeypatch.undo()
    # another crop, or the other measure: another key, another file
    mp.cached_sensitivities(model, mel[:, :, :60], torch.full((2,), 60), cache_dir=tmp_path, progress=False)
    mp.cached_sensitivities(model, mel, lens, cache_dir=tmp_path, progress=False, bias_correction=False)
    assert len(list(tmp_path.glob("*.json"))) == 3
    # a damaged file is measured again and replaced
    files[0].write_text("{not json")
    mp._MEMO.clear()
    again = mp.cached_sensitivities(model, mel, lens, cache_dir=tmp_path, progress=False, bias_correction=True)
    assert again == first and json.loads(files[0].read_text())["values"]


def test_quantize_measures_sensitivity_with_its_bias_correction(model, tmp_path):
    import json

    batches = random_mels(1, 2, 80, seed=8)
    low, high = size_mb(model, lambda c: 4), size_mb(model, lambda c: 8)
    budget = low + 0.3 * (high - low)
    q = quantize(model, batches, 4, 8, bias_correction=True, size_budget_mb=budget,
                 mixed_precision={"cache_dir": tmp_path}, progress=False)
    (f,) = tmp_path.glob("*.json")
    assert json.loads(f.read_text())["bias_correction"] is True
    assert q.info["bias_correction"] and q.info["size_mb"] <= budget


def test_fast_runner_gives_the_reference_integers_on_a_mixed_program(model):
    """tools/run_size_sweep.py evaluates with the fast runner: on a 4/6/8-bit program its logits
    are the reference engine's on every valid frame (padded batch of unequal lengths)."""
    from intasr.program.fast import TorchIntegerRunner

    batches = random_mels(1, 2, 80, seed=9)
    low, high = size_mb(model, lambda c: 4), size_mb(model, lambda c: 8)
    q = quantize(model, batches, 4, 8, bias_correction=True, size_budget_mb=low + 0.4 * (high - low),
                 progress=False)
    assert len(q.info["layer_bits"]) > 1
    mel, _ = random_mels(1, 3, 90, seed=10, low=-2, high=2)[0]
    lens = torch.tensor([90, 61, 37])
    q_in = q.quantize_input(mel)
    ref, ref_len = q.forward_int(q_in, lens)
    fast, fast_len = TorchIntegerRunner(q.program, threads=1).run_with_lengths(q_in, lens)
    assert torch.equal(ref_len, fast_len)
    for i, t in enumerate(ref_len.tolist()):
        assert torch.equal(ref[i, :, :t], fast[i, :, :t].to(ref.dtype))


def test_edge_bits_widen_only_the_first_block_and_the_decoder(model):
    """quantize(edge_bits=8): the first block's convs and the decoder hold 8-bit codes (some
    beyond the 4-bit range), every other conv 4-bit ones; the size counts both widths."""
    from intasr.quant.mixed_precision import edge_convs

    batches = random_mels(1, 2, 80, seed=5)
    q = quantize(model, batches, 4, 8, edge_bits=8, progress=False)
    edges = set(edge_convs(model))
    assert model.decoder.decoder_layers[0] in edges and len(edges) == 1 + sum(
        1 for m in model.encoder.encoder[0].mconv if hasattr(m, "conv"))
    for op, (conv, _) in zip(q.int_convs(), weight_convs(model)):
        w = op.params["weight"]
        if conv in edges:
            assert -128 <= int(w.min()) and int(w.max()) <= 127 and int(w.abs().max()) > 8
        else:
            assert -8 <= int(w.min()) and int(w.max()) <= 7
    expect = size_mb(model, lambda c: 8 if c in edges else 4)
    assert q.info["edge_bits"] == 8 and q.info["size_mb"] == pytest.approx(expect)
    assert size_mb(model, lambda c: 4) < q.info["size_mb"] < size_mb(model, lambda c: 8)
