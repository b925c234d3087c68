"""The Conformer's recipes below 8 bits (conformer_weights): the same grid, learned rounding and
bias correction as ConvASR's, read from the Conformer's one walk.

On a small NeMo-architecture Conformer with random weights (Conv2d subsampling, rel_pos attention:
every layer kind) and on the real hama Conformer where it is installed."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intasr.calibration import random_mels
from intasr.conformer_weights import (EDGE_PARTS, edge_layers, input_columns, learn_conformer_rounding, size_mb,
                                      weight_layers)
from intasr.convert_conformer import folded_weight_bias
from intasr.models import ConformerCTC, conformer_ctc_config
from intasr.quant.adaround import AdaRoundConfig
from intasr.quant.weights import round_on_grid, weight_grid
from intasr.quantize import quantize


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = ConformerCTC(conformer_ctc_config("small", n_layers=2)).eval()
    for m in model.modules():   # BatchNorm statistics other than the identity, so folding matters
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def batches():
    mels = random_mels(1, 3, 120, seed=1, n_mels=80)
    mel, lengths = mels[0]
    lengths[1:] = torch.tensor([90, 57])   # a padded batch: the columns must skip the padding
    return [(mel, lengths)]


def test_weight_layers_are_every_layer_once_in_forward_order(small):
    names = [n for n, _ in weight_layers(small).values()]
    assert names[0].startswith("encoder.pre_encode.conv.0") and names[-1] == "decoder"
    assert len(names) == len(set(names))
    # linear_q runs twice in rel_pos attention (u and v folded in): listed once
    assert sum(".linear_q" in n for n in names) == len(small.encoder.layers)
    convs = sum(isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) for m in small.modules())
    assert len(names) == convs - len(small.encoder.layers)   # every layer's linear_pos: the 8-bit position table


@pytest.mark.parametrize("bits", [8, 6, 4])
def test_size_with_one_width_is_the_models_size(small, bits):
    from intasr.experiments import model_size_mb

    assert size_mb(small, lambda layer: bits, other_bits=bits) == pytest.approx(model_size_mb(small, bits), rel=1e-9)


def test_edges_and_groups_add_what_they_store(small):
    edges = set(edge_layers(small, ("subsampling", "output")))
    base = size_mb(small, lambda layer: 4, other_bits=4)
    wider = size_mb(small, lambda layer: 8 if layer in edges else 4, other_bits=4)
    extra = sum(l.weight.numel() + l.weight.shape[0] for l in edges) * 4 / 8 / 2 ** 20
    assert wider - base == pytest.approx(extra, rel=1e-6)
    assert size_mb(small, lambda layer: 4, 16, other_bits=4) > base > 0
    with pytest.raises(ValueError, match="unknown Conformer edge part"):
        edge_layers(small, ("decoder",))
    parts = {p: {weight_layers(small)[l][0] for l in edge_layers(small, (p,))} for p in EDGE_PARTS}
    assert all(n.startswith("encoder.pre_encode") for n in parts["subsampling"])
    assert parts["output"] == {"decoder"}
    assert parts["attention"] and all(".self_attn.linear_" in n for n in parts["attention"])


def test_input_columns_times_the_weight_are_the_layer(small, batches):
    """Each layer's columns (Linear frames, Conv1d im2col, Conv2d patches) on valid output frames,
    multiplied by its flattened weight, give the layer's own output there."""
    from intasr.convert_conformer import FloatTaps, conv_out_lengths, float_forward

    seen = {}

    class Check(FloatTaps):
        def conv(self, name, x, layer, lengths, bn=None, extra_bias=None):
            y, out_len = super().conv(name, x, layer, lengths, bn=None, extra_bias=None)
            if layer not in seen:
                cols = input_columns(x, layer, lengths)
                w = layer.weight.detach().double().reshape(layer.weight.shape[0], -1)
                b = layer.bias.detach().double() if layer.bias is not None else 0
                if cols.dim() == 3:   # depthwise: a space per channel
                    got = torch.einsum("cnk,ck->nc", cols, w) + b
                else:
                    got = cols @ w.T + b
                y = y if bn is None else y   # compared before the BatchNorm (bn=None above)
                if y.dim() == 4:   # [B, C, T', F'] -> valid frames, (t, f) rows
                    keep = torch.arange(y.shape[2])[None] < out_len[:, None]
                    want = y.permute(0, 2, 3, 1)[keep].reshape(-1, y.shape[1])
                else:
                    keep = torch.arange(y.shape[2])[None] < conv_out_lengths(lengths, layer)[:, None]
                    want = y.transpose(1, 2)[keep]
                seen[layer] = (got, want.double())
            return (bn(y) if bn is not None else y), out_len

    mel, lengths = batches[0]
    float_forward(small, mel, lengths, Check())
    kinds = {type(layer).__name__ + ("-dw" if getattr(layer, "groups", 1) > 1 else "") for layer in seen}
    assert {"Conv2d", "Linear", "Conv1d", "Conv1d-dw"} <= kinds
    for got, want in seen.values():
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_zero_steps_are_round_to_nearest_plus_the_mean_shift(small, batches):
    layers = weight_layers(small)
    learned = learn_conformer_rounding(small, batches, lambda layer: 4, cfg=AdaRoundConfig(iterations=0, asymmetric=False),
                                       progress=False, weight_group=16)
    assert set(learned.codes) == set(layers)
    for layer, (name, bn) in layers.items():
        w, _ = folded_weight_bias(layer, bn)
        s_w, k = weight_grid(w, 4, "minmax", 16)
        nearest = round_on_grid(w, s_w, k, 4).to(torch.int64)
        assert torch.equal(learned.codes[layer].to(torch.int64).reshape(w.shape) * k, nearest), name
        assert learned.bias_shifts[layer].shape == (w.shape[0],)


def test_learned_rounding_lowers_every_layers_error_and_is_cached(small, batches, tmp_path):
    cfg = AdaRoundConfig(iterations=40, asymmetric=False)
    first = learn_conformer_rounding(small, batches, lambda layer: 4, cfg=cfg, cache_dir=tmp_path, progress=False)
    assert len(first.errors) == len(weight_layers(small))
    worse = [n for n, e in first.errors.items() if e["learned"] > e["nearest"] * (1 + 1e-9)]
    assert not worse, f"learned rounding raised the reconstruction error of {worse}"
    again = learn_conformer_rounding(small, batches, lambda layer: 4, cfg=cfg, cache_dir=tmp_path, progress=False)
    assert again.errors == {}   # every layer read back from the cache
    for layer in first.codes:
        assert torch.equal(first.codes[layer], again.codes[layer])
        torch.testing.assert_close(first.bias_shifts[layer], again.bias_shifts[layer], rtol=0, atol=0)


def test_only_the_symmetric_centered_objective(small, batches):
    with pytest.raises(ValueError, match="symmetric, centered"):
        learn_conformer_rounding(small, batches, lambda layer: 4, cfg=AdaRoundConfig(asymmetric=True), progress=False)


def test_grouped_w4a8_program_has_the_recipes_weights_and_is_float_free_and_exact(small, batches):
    """`grouped` on the Conformer: edges at 8 bits, every other weight k * q with 4-bit codes, the
    learned bias shifts in the biases; the program stays integer-only and bit-exact in NumPy."""
    import numpy as np

    from intasr.program.numpy_ref import NumpyReference
    from intasr.quantize import Recipe
    from intasr.verify import float_ops_in_forward

    from intasr.quantize import RECIPES

    recipe = Recipe.resolve("grouped", 4, conformer=True)
    q = quantize(small, batches, 4, 8, progress=False, **recipe.settings())
    parts = RECIPES["grouped"]["edge_parts"]
    assert q.info["edge_parts"] == list(parts) and q.info["weight_group"] == 16
    edges = set(edge_layers(small, parts))
    assert q.info["size_mb"] == pytest.approx(size_mb(small, lambda layer: 8 if layer in edges else 4, 16, other_bits=4))
    names = {weight_layers(small)[layer][0] for layer in edges}   # linear_q by its first copy, linear_q_u
    widest = {}
    for op in q.program.ops:
        if op.kind in ("conv1d", "conv2d"):
            edge = op.name.replace(".linear_q_v", ".linear_q_u") in names
            widest[edge] = max(widest.get(edge, 0), int(op.params["weight"].to(torch.int64).abs().max()))
    # 4-bit codes times 4-bit multipliers: at most 8 * 15; the 8-bit edges use their range
    assert widest[False] <= 8 * 15 and widest[True] == 127
    mel, lengths = batches[0]
    x = q.quantize_input(mel)
    floats, n = float_ops_in_forward(q, x, lengths)
    assert n > 100 and floats == []
    logits, out_len = q.forward_int(x, lengths)
    ref, ref_len = NumpyReference().run(q.program, x.numpy(), lengths.numpy())
    assert np.array_equal(ref_len, out_len.numpy())
    for b, t in enumerate(out_len.tolist()):
        assert np.array_equal(ref[b, :, :t], logits[b, :, :t].numpy())


def test_convasr_refuses_conformer_edge_parts():
    from intasr.models import ConvASR, quartznet_config

    model = ConvASR(quartznet_config(5)).eval()
    with pytest.raises(ValueError, match="--edge-parts"):
        quantize(model, random_mels(1, 1, 64), 4, 8, edge_bits=8, edge_parts=["attention"], progress=False)


def test_batches_are_read_one_by_one_as_if_merged(small, batches):
    """Real calibration has many utterances: their Gram matrices are summed batch by batch (never one
    merged batch, whose attention scores would be T x T for the longest), with the same result."""
    from intasr.quant.adaround import merge_batches

    mel, lengths = batches[0]
    split = [(mel[:1, :, :120], lengths[:1]), (mel[1:, :, :90], lengths[1:])]
    cfg = AdaRoundConfig(iterations=0, asymmetric=False)
    one = learn_conformer_rounding(small, [merge_batches(split)], lambda layer: 4, cfg=cfg, progress=False)
    two = learn_conformer_rounding(small, split, lambda layer: 4, cfg=cfg, progress=False)
    for layer in one.codes:
        assert torch.equal(one.codes[layer], two.codes[layer])
        # float32 activations of other batch shapes: the means agree to float32 rounding
        torch.testing.assert_close(one.bias_shifts[layer], two.bias_shifts[layer], rtol=1e-4, atol=1e-8)
