"""Per-group integer weight multipliers (quant/groups.py): the grid of the module doc, never
coarser than per-channel, an int8 integer weight that factorizes into codes and multipliers,
learned rounding on it, the size it costs, the integer program unchanged (float-free, backends
bit-exact) and the errors of combinations it does not support."""

import numpy as np
import pytest
import torch

from intasr.calibration import collect, random_mels
from intasr.quant.weights import quantize_weight, weight_grid
from intasr.quant.groups import MULTIPLIER_BITS, group_multipliers, grouped_codes, is_grouped
from intasr.quant.mixed_precision import MIB, edge_convs, size_mb, weight_convs
from intasr.quantize import quantize

from test_adaround import tiny_model


def _heavy_tailed(cout=6, cin=40, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, cin, k, generator=g, dtype=torch.float64)
    return w * torch.exp(2 * torch.randn(cout, cin, 1, generator=g, dtype=torch.float64))   # a few large input channels


def test_grid_follows_the_specification():
    w = _heavy_tailed()
    s, k = group_multipliers(w, 4, 8)
    wf = w.reshape(w.shape[0], -1)
    assert k.shape == wf.shape and k.min() >= 1 and k.max() <= 2 ** MULTIPLIER_BITS - 1
    assert torch.allclose(s, wf.abs().amax(1) / (7 * 15))
    groups = wf.abs().reshape(w.shape[0], -1, 8).amax(2)                       # 120 weights per row: 15 groups of 8
    kg = k[:, ::8]
    assert torch.equal(k, kg.repeat_interleave(8, dim=1))                      # one multiplier per group
    assert (kg * 7 * s[:, None] >= groups * (1 - 1e-9)).all()                  # the group's largest weight is on the grid...
    assert ((kg - 1) * 7 * s[:, None] < groups).all() | (kg == 1).all()        # ...with the smallest such multiplier
    assert torch.equal(kg.amax(1), torch.full((w.shape[0],), 15))              # the row's largest group: 15
    q = grouped_codes(w, s, k, 4)
    assert q.min() >= -8 and q.max() <= 7
    err = (k * q * s[:, None] - wf).abs()
    assert (err <= k * s[:, None] / 2 + 1e-12).all()                           # round-to-nearest, nothing clipped


def test_a_dead_row_keeps_the_per_channel_floor():
    """A row that BatchNorm folding left at ~1e-24 gets the per-channel path's scale floor: codes 0,
    and a bias that fits an int32 accumulator, as without groups."""
    from intasr.quant.weights import quantize_bias
    from intasr.intops.conv import accumulator_bound, choose_acc_dtype

    w = _heavy_tailed()
    w[2] = 1e-24 * torch.sign(w[2])
    b = torch.full((w.shape[0],), 0.3, dtype=torch.float64)
    b[2] = 1e-6   # a dead channel's folded bias: small, but not on a 1e-26 grid
    for group in (0, 8):
        w_q, s_w = quantize_weight(w, 4, "minmax", group)
        assert not w_q[2].any() and s_w[2] > 1e-12
        bias_q = quantize_bias(b, 0.02 * s_w)
        assert choose_acc_dtype(accumulator_bound(w_q, 8, False, bias_q)) == torch.int32


def test_never_coarser_than_per_channel_and_finer_on_heavy_tails():
    for seed in range(3):
        w = _heavy_tailed(seed=seed)
        per_channel, s_c = quantize_weight(w, 4, "minmax")
        grouped, s_g = quantize_weight(w, 4, "minmax", group=8)
        assert grouped.dtype == torch.int8 and grouped.abs().max() <= 120
        e_c = (per_channel.double() * s_c.reshape(-1, 1, 1) - w)
        e_g = (grouped.double() * s_g.reshape(-1, 1, 1) - w)
        assert (e_g.abs() <= s_c.reshape(-1, 1, 1) / 2 + 1e-12).all()          # each step <= the per-channel step
        assert e_g.pow(2).sum() < 0.5 * e_c.pow(2).sum()


def test_which_convs_are_grouped():
    assert is_grouped(4, 32) and is_grouped(3, 1) and not is_grouped(4, 0) and not is_grouped(6, 32)
    with pytest.raises(ValueError, match="weight group"):
        is_grouped(4, -1)
    with pytest.raises(ValueError, match="at most 4 bits"):
        group_multipliers(torch.ones(2, 3, 1), 6, 4)
    w = _heavy_tailed()
    assert weight_grid(w, 8, "minmax", 32)[1] is None                          # 8-bit convs keep per-channel scales
    with pytest.raises(ValueError, match="minmax"):
        weight_grid(w, 4, "mse", 32)


def _factorizes(conv_weight, w_int, bits, group):
    s, k = group_multipliers(conv_weight, bits, group)
    w = w_int.to(torch.int64).reshape(k.shape)
    return bool((w % k == 0).all() and (w // k).abs().max() <= 8)


@pytest.mark.parametrize("rounding", ["nearest", "adaround"])
def test_integer_weights_are_codes_times_multipliers(rounding):
    """Every 4-bit conv's integer weight is k * q with the multipliers of its folded weight and
    q a 4-bit code; the 8-bit edge convs are as without groups; the model is closer to float."""
    from intasr.quant.bn import fold_batchnorm

    model = tiny_model()
    batches = random_mels(1, 4, 120, seed=1)
    kw = dict(bias_correction=True, rounding=rounding, adaround={"iterations": 30}, edge_bits=8, progress=False)
    q0 = quantize(model, batches, 4, 8, **kw)
    qg = quantize(model, batches, 4, 8, weight_group=8, **kw)
    assert qg.info["weight_group"] == 8 and "weight_group" not in q0.info
    edges = {id(c) for c in edge_convs(model)}
    convs = weight_convs(model)
    ops0, opsg = q0.int_convs(), qg.int_convs()
    assert len(ops0) == len(opsg) == len(convs)
    for (conv, bn), op0, opg in zip(convs, ops0, opsg):
        w = conv.weight.detach().double()
        if bn is not None:
            w = fold_batchnorm(w, None, bn)[0].double()
        if id(conv) in edges:   # learned rounding sees the grouped convs' outputs: only nearest is the same
            assert opg.params["weight"].abs().max() <= 127
            assert rounding != "nearest" or torch.equal(op0.params["weight"], opg.params["weight"])
        else:
            assert _factorizes(w, opg.params["weight"], 4, 8)
    mel, lens = random_mels(1, 4, 120, seed=5)[0]
    with torch.no_grad():
        ref = model.forward_features(mel, lens)[0].double()
        err = {n: float((q.forward_features(mel, lens)[0].double() * q.logit_scale - ref).pow(2).sum())
               for n, q in (("channel", q0), ("group", qg))}
    assert err["group"] < err["channel"]


def test_learned_codes_round_each_weight_down_or_up():
    from intasr.quant.weights import weight_bits_of
    from intasr.quant.adaround import AdaRoundConfig, QuantizedWalk, adaround

    model = tiny_model(seed=4)
    batches = random_mels(1, 2, 100, seed=3)
    obs = collect(model, batches).observers
    bits = lambda c: weight_bits_of(c, 4)   # noqa: E731
    learned = adaround(model, batches, obs, 8, bits, cfg=AdaRoundConfig(iterations=30), progress=False, weight_group=8)
    walk = QuantizedWalk(model, obs, 8, bits, weight_group=8)
    for unit in walk.units():
        for f in unit:
            codes = learned.codes[f.conv].reshape(f.weight.shape[0], -1).double()
            x = f.weight.reshape(f.weight.shape[0], -1) / f.scale
            assert f.scale.shape == x.shape                                    # one step per weight
            inside = (x > -8) & (x < 7)
            assert ((codes - x).abs()[inside] < 1).all() and codes.min() >= -8 and codes.max() <= 7


def test_size_counts_the_multipliers():
    model = tiny_model()
    bits = lambda c: 8 if c in edge_convs(model) else 4   # noqa: E731
    extra = sum(c.out_channels * -(-c.weight[0].numel() // 8) * MULTIPLIER_BITS
                for c, _ in weight_convs(model) if bits(c) == 4)
    assert extra > 0
    assert size_mb(model, bits, 8) * 8 * MIB == pytest.approx(size_mb(model, bits) * 8 * MIB + extra)


def test_grouped_program_is_float_free_and_bit_exact():
    from intasr.program import fast
    from intasr.program.numpy_ref import NumpyReference
    from intasr.program.torch_ref import TorchReference
    from intasr.verify import float_ops_in_forward

    model = tiny_model()
    qg = quantize(model, random_mels(1, 4, 120, seed=1), 4, 8, bias_correction=True, weight_group=8, progress=False)
    mel, lens = random_mels(1, 3, 120, seed=7)[0]
    lens = torch.tensor([120, 90, 47])
    q = qg.quantize_input(mel)
    floats, recorded = float_ops_in_forward(qg, q, lens)
    assert floats == [] and recorded > 0
    ref, ref_len = TorchReference().run(qg.program, q, lens)
    outs = {"numpy_ref": NumpyReference().run(qg.program, q.numpy(), lens.numpy()),
            "fast float-exact": fast.run_fast(qg.program, q, lens, depthwise="float-exact")}
    for name, (out, out_len) in outs.items():
        assert np.array_equal(np.asarray(out_len), ref_len.numpy()), name
        for b, n in enumerate(ref_len.tolist()):
            assert np.array_equal(np.asarray(out)[b, :, :n], ref.numpy()[b, :, :n]), (name, b)


def test_unsupported_combinations_say_so():
    model = tiny_model()
    batches = random_mels(1, 2, 100, seed=1)
    with pytest.raises(ValueError, match="--weight-group"):
        quantize(model, batches, 4, 8, weight_group=8, size_budget_mb=0.01, progress=False)
    with pytest.raises(ValueError, match="--weight-group"):
        quantize(model, batches, 4, 8, weight_group=8, rounding="gptq", progress=False)
    with pytest.raises(ValueError, match="scale"):
        quantize(model, batches, 4, 8, weight_group=8, rounding="adaround",
                 adaround={"iterations": 5, "scale_search": True}, progress=False)


def test_c_runtime_runs_grouped_weights_bit_exact(tmp_path):
    """The C runtime takes the factorized int8 weights like any other (pinned QuartzNet-5x5, W4A8
    with a multiplier per 8 weights, native build): every logit equals the NumPy reference."""
    import shutil

    if shutil.which("cc") is None or shutil.which("make") is None:
        pytest.skip("needs a C compiler and make")
    from pinned import fixed_calibration, pinned_float_model, pinned_inputs
    from test_program import PINS

    from intasr.convert import convert
    from intasr.program.c_backend import CRuntime
    from intasr.program.numpy_ref import NumpyReference

    model = pinned_float_model("quartznet5x5")
    observers, _ = fixed_calibration(model, PINS["quartznet5x5_w8a8"])
    q = convert(model, observers, 4, 8, weight_group=8)
    assert max(int(op.params["weight"].abs().max()) for op in q.int_convs()) > 8   # multipliers in use
    x, lengths = pinned_inputs()
    ref, ref_len = NumpyReference().run(q.program, x.numpy(), lengths.numpy())
    logits, out_len = CRuntime(q.program, threads=2, out_dir=tmp_path / "c").run_with_lengths(x.numpy(), lengths.numpy())
    assert np.array_equal(out_len, ref_len) and np.array_equal(logits, ref)
