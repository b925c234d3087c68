"""calibration.collect remembers a pass per process (module doc): the same model state and batches
give the same statistics without a second pass; any change of either is a new pass; each caller
gets its own copy."""

import pytest
import torch

from intasr import calibration
from intasr.calibration import collect, collect_once, random_mels
from intasr.models import ConvASR, config_for

from conftest import randomize_weights


def _model():
    model = ConvASR(config_for("quartznet5x5")).eval()
    randomize_weights(model, 0)
    return model


def _ranges(stats):
    return {k: (o.min, o.max) for k, o in stats.observers.items()}


def _counting(monkeypatch):
    calls = []
    real = calibration.collect_once

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(calibration, "collect_once", counted)
    return calls


def test_a_repeated_pass_is_remembered_and_copied(monkeypatch):
    model, batches = _model(), random_mels(1, 2, 60, seed=0)
    calls = _counting(monkeypatch)
    first = collect(model, batches, means=True)
    second = collect(model, batches, means=True)
    assert len(calls) == 1
    assert _ranges(first) == _ranges(second) == _ranges(collect_once(model, batches, means=True))
    # the means stay keyed by the model's own convs, and each caller has its own objects
    assert set(first.input_means) == set(second.input_means)
    assert all(any(k is m for m in model.modules()) for k in first.input_means)
    obs = first.observers["input"]
    obs.max = 1e9
    assert collect(model, batches, means=True).observers["input"].max != 1e9
    assert len(calls) == 1


def test_new_weights_new_batches_or_options_are_a_new_pass(monkeypatch):
    model, batches = _model(), random_mels(1, 2, 60, seed=0)
    calls = _counting(monkeypatch)
    before = _ranges(collect(model, batches))
    collect(model, random_mels(1, 2, 60, seed=1))
    collect(model, batches, observer="percentile")
    assert len(calls) == 3
    with torch.no_grad():   # an in-place edit of one weight
        next(p for n, p in model.named_parameters() if n.startswith("encoder") and n.endswith("weight")).mul_(3.0)
    after = _ranges(collect(model, batches))
    assert len(calls) == 4
    assert after != before


def test_valid_values_with_every_frame_valid_are_the_gathered_values():
    """An all-valid mask skips the gather (synthetic batches): the same values in the same order;
    a mask that does not fit still raises, and padded frames are still left out."""
    from intasr.quant.observers import valid_values

    x = torch.randn(3, 4, 10, generator=torch.Generator().manual_seed(0))
    every = torch.ones(3, 1, 10, dtype=torch.bool)
    assert torch.equal(valid_values(x, every), x[every.expand_as(x)].double())
    assert torch.equal(valid_values(x, every), valid_values(x))
    with pytest.raises(RuntimeError):
        valid_values(x, torch.ones(3, 1, 9, dtype=torch.bool))
    some = every.clone()
    some[1, :, 6:] = False
    assert valid_values(x, some).numel() == 4 * (30 - 4)
