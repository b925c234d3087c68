"""Learned rounding (quant/adaround.py): the learned codes beat round-to-nearest on their own
objective, stay on the converter's grid, are deterministic and cached; the quantized walk it
learns on is the integer program's arithmetic."""

import torch

from intasr.calibration import collect, random_mels
from intasr.convert import convert
from intasr.quant.weights import quantize_weight, weight_bits_of
from intasr.models import ConvASR
from intasr.models.configs import block_config, convasr_config
from intasr.quant.adaround import AdaRoundConfig, QuantizedWalk, adaround, learn_rounding, reconstruction_error
from intasr.quantize import RECIPES, ROUNDINGS, quantize

from conftest import fill_bn_statistics, randomize_weights

FAST = AdaRoundConfig(iterations=100)


def _problem(seed, cout=12, n=20, frames=400):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, n, generator=g, dtype=torch.float64)
    x = torch.randn(frames, n, generator=g, dtype=torch.float64) @ torch.randn(n, n, generator=g, dtype=torch.float64)
    xq = x + 0.05 * torch.randn(frames, n, generator=g, dtype=torch.float64)   # the input after quantized layers
    return w, xq.T @ xq / frames, xq.T @ x / frames, x.T @ x / frames


def test_learned_rounding_beats_nearest_on_the_reconstruction_error():
    for seed in range(3):
        w, Hqq, Hqf, Hff = _problem(seed)
        w_q, s = quantize_weight(w.reshape(w.shape[0], w.shape[1], 1), 4, "minmax")
        nearest = w_q.reshape(w.shape).double() * s[:, None]
        codes = learn_rounding(w, s, 4, Hqq, Hqf, FAST)
        assert torch.equal(codes, codes.round()) and codes.min() >= -8 and codes.max() <= 7
        assert ((codes - w / s[:, None]).abs() < 1).all()          # each weight rounds down or up, no further
        learned = reconstruction_error(codes * s[:, None], w, Hqq, Hqf, Hff)
        assert learned < 0.9 * reconstruction_error(nearest, w, Hqq, Hqf, Hff)


def test_learned_rounding_per_row_spaces_depthwise():
    """Depthwise convs: every row has its own K x K Gram matrix."""
    g = torch.Generator().manual_seed(7)
    c, k = 6, 9
    w = torch.randn(c, k, generator=g, dtype=torch.float64)
    x = torch.randn(c, 300, k, generator=g, dtype=torch.float64).cumsum(dim=2)   # correlated taps
    H = torch.einsum("cnk,cnl->ckl", x, x) / 300
    s = w.abs().amax(dim=1) / 7
    codes = learn_rounding(w, s, 4, H, H, FAST)

    def err(q):
        d = q * s[:, None] - w
        return float(torch.einsum("ck,ckl,cl->", d, H, d))

    assert err(codes) < err(torch.round(w / s[:, None]))


def tiny_model(seed=3, dense=False):
    jasper = [block_config(24, 1, 7, stride=2, residual=False)]
    jasper += [block_config(32, 2, 9, separable=not dense, dense=dense) for _ in range(2)]
    jasper += [block_config(40, 1, 1, residual=False, separable=False)]
    torch.manual_seed(0)
    model = ConvASR(convasr_config(jasper, 40)).eval()
    randomize_weights(model, seed=seed)
    mel, lens = random_mels(1, 4, 120, seed=seed)[0]
    fill_bn_statistics(model.encoder, mel, lens)
    return model.eval()


def _logit_error(model, qmodel, mel, lens):
    with torch.no_grad():
        ref = model.forward_features(mel, lens)[0].double()
        out = qmodel.forward_features(mel, lens)[0].double() * qmodel.logit_scale
    return float((out - ref).pow(2).sum() / ref.pow(2).sum())


def _walk_logits(model, obs, w_bits, a_bits, mel, lens):
    """The quantized walk's logits with round-to-nearest weights."""
    walk = QuantizedWalk(model, obs, a_bits, lambda c: w_bits)
    nearest = {}
    for unit in walk.units():
        for f in unit:
            q, s = quantize_weight(f.weight, w_bits, "minmax")
            nearest[f.name] = (q.double() * s.reshape(-1, 1, 1)).float()
    xs = [walk.quantize_input(mel)]
    use = lambda f, x, l: (nearest[f.name], None)   # noqa: E731
    with torch.no_grad():
        for b in range(len(walk.blocks)):
            xs, lens = walk.block(b, xs, lens, use)
        return walk.logits(xs[-1], lens, use).double()


def test_walk_is_the_integer_program():
    """The walk AdaRound learns on rounds where the integer program rounds: with 16-bit
    activations its 4-bit-weight logits are the integer model's (the weights, BatchNorm folding,
    residual and dense wiring agree); at W6A8 it is nearer the integer model than the float model is."""
    for dense in (False, True):
        model = tiny_model(dense=dense)
        batches = random_mels(1, 3, 100, seed=1)
        obs = collect(model, batches).observers
        mel, lens = batches[0]
        with torch.no_grad():
            ref = model.forward_features(mel, lens)[0].double()
        for w_bits, a_bits, tol in ((4, 16, 1e-3), (6, 8, None)):
            qmodel = convert(model, obs, w_bits, a_bits)
            with torch.no_grad():
                out = qmodel.forward_features(mel, lens)[0].double() * qmodel.logit_scale
            sim = _walk_logits(model, obs, w_bits, a_bits, mel, lens)
            gap = float((sim - out).norm() / out.norm())
            if tol is not None:
                assert gap < tol < float((ref - out).norm() / out.norm())
            else:
                assert gap < float((ref - out).norm() / out.norm())


def test_adaround_model_beats_nearest_and_is_on_the_grid(tmp_path):
    model = tiny_model()
    batches = random_mels(1, 4, 160, seed=2)
    opts = {"iterations": 60, "cache_dir": str(tmp_path)}
    q_near = quantize(model, batches, 4, 8, progress=False)
    q_ada = quantize(model, batches, 4, 8, rounding="adaround", adaround=opts, progress=False)
    assert q_ada.info["rounding"] == "adaround" and "adaround" in ROUNDINGS
    for op in q_ada.int_convs():
        w = op.params["weight"]
        assert not w.is_floating_point() and w.min() >= -8 and w.max() <= 7
    changed = sum(int((a.params["weight"] != b.params["weight"]).sum()) for a, b in zip(q_ada.int_convs(),
                                                                                         q_near.int_convs()))
    assert changed > 0
    mel, lens = batches[0]
    assert _logit_error(model, q_ada, mel, lens) < _logit_error(model, q_near, mel, lens)


def test_adaround_is_deterministic_cached_and_resumable(tmp_path):
    model = tiny_model(seed=4)
    batches = random_mels(1, 2, 100, seed=3)
    obs = collect(model, batches).observers
    bits = lambda c: weight_bits_of(c, 4)   # noqa: E731
    cfg = AdaRoundConfig(iterations=30)
    first = adaround(model, batches, obs, 8, bits, cfg=cfg, cache_dir=tmp_path, progress=False)
    again = adaround(model, batches, obs, 8, bits, cfg=cfg, cache_dir=None, progress=False)
    assert first.codes.keys() == again.codes.keys() and first.bias_shifts.keys() == again.bias_shifts.keys()
    assert all(torch.equal(first.codes[c], again.codes[c]) for c in first.codes)
    assert all(torch.equal(first.bias_shifts[c], again.bias_shifts[c]) for c in first.bias_shifts)
    assert len(first.bias_shifts) == len(first.codes)              # centered: every conv's bias is corrected
    (folder,) = list(tmp_path.iterdir())
    files = sorted(folder.glob("block_*.pt"))
    assert len(files) == len(model.encoder.encoder) + 1           # one per block + the decoder
    files[-2].unlink()                                            # interrupted before the last block
    stamp = files[0].stat().st_mtime_ns
    resumed = adaround(model, batches, obs, 8, bits, cfg=cfg, cache_dir=tmp_path, progress=False)
    assert files[-2].is_file() and files[0].stat().st_mtime_ns == stamp   # only the missing block redone
    assert all(torch.equal(first.codes[c], resumed.codes[c]) for c in first.codes)
    assert all(torch.equal(first.bias_shifts[c], resumed.bias_shifts[c]) for c in first.bias_shifts)


# --------------------------------------------------------------------------- joint bias (centered)

def _frames(seed, cin=10, frames=600, shift=1.5):
    """Conv inputs with non-zero means (as after a ReLU) and their perturbed 'quantized' copy."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, cin, frames // 2, generator=g, dtype=torch.float64).cumsum(dim=2) * 0.3 + shift).abs()
    xq = x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64) + 0.05   # noisy and mean-shifted
    return x, xq, torch.full((2,), frames // 2)


def test_centered_objective_is_the_error_after_bias_correction():
    """With the closed-form bias shift (= the converter's bias correction on the float means),
    the centered quadratic form is the conv's actual output error, for any rounding."""
    from intasr.quant.weights import bias_correction
    from intasr.quant.adaround import Grams, bias_shift

    for groups, k in ((1, 3), (10, 5)):
        conv = torch.nn.Conv1d(10, 10, k, padding=k // 2, groups=groups, bias=False).double()
        w = torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        x, xq, lens = _frames(k)
        grams = Grams(conv)
        grams.add(xq, x, lens, lens)
        H = grams.centered()
        s = w.abs().amax(dim=(1, 2)) / 7
        cout = w.shape[0]
        for codes in (torch.round(w / s[:, None, None]), torch.floor(w / s[:, None, None])):
            w_deq = codes * s[:, None, None]
            shift = bias_shift(w_deq.reshape(cout, -1), w.reshape(cout, -1), H["q"], H["f"])
            y = torch.nn.functional.conv1d(xq, w_deq, shift, padding=k // 2, groups=groups)
            ref = torch.nn.functional.conv1d(x, w, None, padding=k // 2, groups=groups)
            actual = float((y - ref).pow(2).sum() / (y.shape[0] * y.shape[2]))
            form = reconstruction_error(w_deq.reshape(cout, -1), w.reshape(cout, -1), H["qq"], H["qf"], H["ff"])
            assert abs(form - actual) < 1e-9 * max(actual, 1.0)
            # the shift is bias correction: the mean error on the float input is zero
            means = x.mean(dim=(0, 2))
            delta = bias_correction(w, codes, s, groups, means)
            assert torch.allclose(shift, -delta, atol=0.02 * float(delta.abs().max()))   # edges: padding zeros


def test_learned_rounding_beats_nearest_plus_bias_correction_on_held_out_frames():
    """Centered rounding learned on one set of frames lowers the error after bias correction on
    other frames of the same distribution (it is not a fit to the calibration frames)."""
    from intasr.quant.adaround import Grams, bias_shift

    conv = torch.nn.Conv1d(10, 16, 3, padding=1, bias=False).double()
    w = torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = w.abs().amax(dim=(1, 2)) / 7
    train, held_out = Grams(conv), Grams(conv)
    x, xq, lens = _frames(1)
    train.add(xq, x, lens, lens)
    x, xq, lens = _frames(2)
    held_out.add(xq, x, lens, lens)
    H, E = train.centered(), held_out.centered()
    codes = learn_rounding(w.reshape(16, -1), s, 4, H["qq"], H["qf"], AdaRoundConfig(iterations=500), H["ff"])
    nearest = torch.round(w / s[:, None, None]).reshape(16, -1)

    def err(c):   # on held-out frames, with the bias correction learned on the calibration frames
        w_deq = c * s[:, None]
        return reconstruction_error(w_deq, w.reshape(16, -1), E["qq"], E["qf"], E["ff"])

    assert err(codes) < 0.8 * err(nearest)
    assert bias_shift(codes * s[:, None], w.reshape(16, -1), H["q"], H["f"]).abs().max() > 0


def test_centered_adaround_beats_bias_correction_on_held_out_inputs():
    model = tiny_model()
    batches = random_mels(1, 4, 160, seed=2)
    mel, lens = random_mels(1, 4, 160, seed=9)[0]   # not the calibration batch
    q_bc = quantize(model, batches, 4, 8, bias_correction=True, progress=False)
    q_ada = quantize(model, batches, 4, 8, rounding="adaround", adaround={"iterations": 300}, progress=False)
    assert q_ada.info["bias_correction"] and q_ada.info["adaround"]["centered"]
    assert _logit_error(model, q_ada, mel, lens) < 0.8 * _logit_error(model, q_bc, mel, lens)


def test_cli_quantize_recipes(tmp_path):
    """`intasr quantize`: the default recipe is the measured best of its width (learned rounding
    at 4 bits, bias correction at 6, the paper's at 8); --recipe paper and explicit flags give the
    old behaviour."""
    from intasr.cli import main as cli_main
    from intasr.integer_model import load_quantized
    from intasr.models.checkpoint import save_model

    src = save_model(tiny_model(), tmp_path / "tiny.nemo")
    base = ["quantize", "--model", str(src), "--calibration", "random", "--frames", "120", "--batch-size", "2",
            "--adaround-cache", str(tmp_path / "cache")]
    runs = {"w4": ["--weight-bits", "4", "--adaround-iterations", "20"], "w6": ["--weight-bits", "6"],
            "w8": ["--weight-bits", "8"], "paper": ["--weight-bits", "4", "--recipe", "paper"],
            "flags": ["--weight-bits", "4", "--rounding", "nearest"],
            "ada": ["--weight-bits", "6", "--recipe", "adaround", "--adaround-iterations", "20"],
            "w4u": ["--weight-bits", "4", "--adaround-iterations", "20", "--edge-bits", "0"],
            "w4ne": ["--weight-bits", "4", "--adaround-iterations", "20", "--no-equalize"],
            "w6eq": ["--weight-bits", "6", "--equalize"],
            "w4b": ["--weight-bits", "4", "--adaround-iterations", "20", "--block-iterations", "7"],
            "w4g": ["--weight-bits", "4", "--adaround-iterations", "20", "--weight-group", "8"],
            "w4g0": ["--weight-bits", "4", "--adaround-iterations", "20", "--weight-group", "0"]}
    info = {}
    for name, extra in runs.items():
        assert cli_main(base + extra + ["--out", str(tmp_path / f"{name}.aqz")]) == 0
        info[name] = load_quantized(tmp_path / f"{name}.aqz").info
    assert (info["w4"]["recipe"], info["w4"]["bias_correction"], info["w4"]["rounding"]) == ("grouped", True, "adaround")
    assert info["w4"]["weight_group"] == RECIPES["grouped"]["weight_group"] > 0
    assert info["w4"]["adaround"]["iterations"] == 20 and not info["w4"]["adaround"]["asymmetric"]
    recipe_blocks = RECIPES["adaround"]["adaround"].get("block_iterations", 0)
    assert info["w4"]["adaround"]["block_iterations"] == recipe_blocks and info["w4b"]["adaround"]["block_iterations"] == 7
    assert info["w4"]["edge_bits"] == 8 and info["w4"]["size_mb"] > info["w4u"]["size_mb"]   # first block, decoder
    # per-group multipliers: the recipe's group unless --weight-group says otherwise; they cost size
    assert info["w4"].get("weight_group", 0) == RECIPES[info["w4"]["recipe"]].get("weight_group", 0)
    assert info["w4g"]["weight_group"] == 8 and "weight_group" not in info["w4g0"]
    assert info["w4g"]["size_mb"] > info["w4g0"]["size_mb"] and "weight_group" not in info["w6"]
    assert "edge_bits" not in info["w4u"] and info["w4u"]["recipe"] == "grouped" and "edge_bits" not in info["w6"]
    # equalization: the 4-bit recipe's separable pairs below 8 bits (the first block's are at 8), off with
    # --no-equalize, on for any recipe with --equalize
    assert info["w4"]["equalized"] == 4 and info["w4u"]["equalized"] == 5 and "equalized" not in info["w4ne"]
    assert "equalized" not in info["w6"] and info["w6eq"]["equalized"] == 5
    assert (info["w6"]["recipe"], info["w6"]["bias_correction"], info["w6"]["rounding"]) == ("bc", True, "nearest")
    assert (info["w8"]["recipe"], info["w8"]["bias_correction"]) == ("paper", False)
    assert (info["paper"]["recipe"], info["paper"]["bias_correction"]) == ("paper", False)
    assert (info["flags"]["recipe"], info["flags"]["bias_correction"]) == ("flags", False)
    assert (info["ada"]["rounding"], info["ada"]["bias_correction"], info["ada"]["adaround"]["iterations"]) == \
        ("adaround", True, 20)


def test_recipe_of_a_results_row():
    """A results row's recipe is computed from its settings (run_adaround's columns, empty = default)."""
    from intasr.quantize import recipe_of

    row = {"rounding": "adaround", "bias_correction": True, "adaround_iterations": 100, "adaround_centered": True,
           "adaround_symmetric": True, "adaround_scale_search": False, "adaround_relu_aware": False,
           "equalize": True, "edge_bits": 8, "adaround_block_iterations": 0, "size_budget_mb": "",
           "calibration": "synthetic"}
    group = RECIPES["grouped"]["weight_group"]
    assert recipe_of({**row, "weight_group": group}) == "grouped"
    assert recipe_of(row) == recipe_of({**row, "weight_group": float("nan")}) == "adaround"
    assert recipe_of({**row, "weight_group": group + 1}) == ""
    assert recipe_of({**row, "weight_group": group, "calibration": "real"}) == ""
    assert recipe_of({**row, "weight_group": group, "size_budget_mb": 9.5}) == ""
    assert recipe_of({**row, "adaround_block_iterations": 200}) == ""
    nearest = {"rounding": "nearest", "adaround_iterations": 0, "edge_bits": float("nan")}
    assert recipe_of({**nearest, "bias_correction": "True"}) == "bc"
    assert recipe_of({**nearest, "bias_correction": False}) == "paper"


def test_symmetric_objective_ignores_the_quantized_inputs():
    """asymmetric=False learns each conv's rounding on the float model's inputs only: the codes
    do not depend on how coarsely the activations before it are quantized."""
    model = tiny_model(seed=5)
    batches = random_mels(1, 2, 100, seed=4)
    obs = collect(model, batches).observers
    bits = lambda c: weight_bits_of(c, 4)   # noqa: E731
    sym = AdaRoundConfig(iterations=30, asymmetric=False)
    a8 = adaround(model, batches, obs, 8, bits, cfg=sym, progress=False)
    a4 = adaround(model, batches, obs, 4, bits, cfg=sym, progress=False)
    assert all(torch.equal(a8.codes[c], a4.codes[c]) for c in a8.codes)
    asym = AdaRoundConfig(iterations=30)
    b8 = adaround(model, batches, obs, 8, bits, cfg=asym, progress=False)
    b4 = adaround(model, batches, obs, 4, bits, cfg=asym, progress=False)
    assert not all(torch.equal(b8.codes[c], b4.codes[c]) for c in b8.codes)


# --------------------------------------------------------------------------- scale search

def test_scale_search_lowers_every_channels_output_error():
    """Output-aware clipping: per channel the searched scale's round-to-nearest error is at most
    min/max's (ratio 1 is a candidate) and lower in total; the scales only shrink."""
    from intasr.quant.adaround import row_errors, search_scale

    for seed in range(3):
        w, Hqq, Hqf, Hff = _problem(seed, cout=16, n=24)
        w[:, 0] *= 4                                  # an outlier column: min/max wastes levels on it
        _, s = quantize_weight(w.reshape(16, 24, 1), 4, "minmax")
        H = {"qq": Hff, "qf": Hff, "ff": Hff}
        found = search_scale(w, s, 4, H)
        err = lambda sc: row_errors(torch.clamp(torch.round(w / sc[:, None]), -8, 7) * sc[:, None], w,   # noqa: E731
                                    Hff, Hff, Hff)
        assert (found <= s * (1 + 1e-12)).all() and (found >= 0.4 * s * (1 - 1e-12)).all()
        assert (err(found) <= err(s) + 1e-12).all() and err(found).sum() < 0.95 * err(s).sum()


def test_searched_scales_reach_the_integer_model(tmp_path):
    """quantize(..., adaround={"scale_search": True}): the integer convs carry the searched
    per-channel scales (not min/max's), with codes on their grid; a cached run gives the same."""
    model = tiny_model(seed=6)
    batches = random_mels(1, 4, 160, seed=2)
    opts = {"iterations": 30, "asymmetric": False, "scale_search": True, "cache_dir": str(tmp_path)}
    q = quantize(model, batches, 4, 8, rounding="adaround", adaround=opts, progress=False)
    again = quantize(model, batches, 4, 8, rounding="adaround", adaround=opts, progress=False)   # from the cache
    assert q.info["adaround"]["scale_search"]
    q_mm = quantize(model, batches, 4, 8, rounding="adaround", adaround={**opts, "scale_search": False},
                    progress=False)
    moved = 0
    for op, op2, ref in zip(q.int_convs(), again.int_convs(), q_mm.int_convs()):
        w = op.params["weight"]
        assert not w.is_floating_point() and w.min() >= -8 and w.max() <= 7
        assert torch.equal(w, op2.params["weight"]) and op.meta["w_scale"] == op2.meta["w_scale"]
        moved += sum(a != b for a, b in zip(op.meta["w_scale"], ref.meta["w_scale"]))
    assert moved > 0


def test_relu_aware_rounding_lowers_the_error_after_the_relu():
    """Learned on || relu(X w~ + b + shift) - relu(X w + b) ||^2, the codes beat round-to-nearest
    on that error for held-out frames, and stay one step from the float weight."""
    from intasr.quant.adaround import learn_rounding_relu

    g = torch.Generator().manual_seed(3)
    cout, n = 16, 24
    w = torch.randn(cout, n, generator=g, dtype=torch.float64)
    b = torch.randn(cout, generator=g, dtype=torch.float64)
    mix = torch.randn(n, n, generator=g, dtype=torch.float64)
    X, held = (torch.relu(torch.randn(k, n, generator=g, dtype=torch.float64) @ mix) for k in (800, 800))
    s = w.abs().amax(dim=1) / 7
    m = X.mean(dim=0)
    codes = learn_rounding_relu(w, b, s, 4, X, m, AdaRoundConfig(iterations=300))
    assert ((codes - w / s[:, None]).abs() < 1).all() and codes.min() >= -8 and codes.max() <= 7

    def err(c, x):
        wq = c * s[:, None]
        return float((torch.relu(x @ wq.T + b + (w - wq) @ m) - torch.relu(x @ w.T + b)).pow(2).sum())

    assert err(codes, held) < 0.9 * err(torch.round(w / s[:, None]), held)


def test_relu_outputs_are_the_convs_before_a_relu():
    model = tiny_model(seed=7)
    obs = collect(model, random_mels(1, 2, 80, seed=1)).observers
    walk = QuantizedWalk(model, obs, 8, lambda c: 4)
    names = walk.relu_outputs()
    for main, res, _ in walk.blocks:
        for n, (f, _, signed) in enumerate(main):
            last_with_residual = n == len(main) - 1 and res
            assert (f.name in names) == (not signed and not last_with_residual)
    assert walk.decoder.name not in names and names


# --------------------------------------------------------------------------- block reconstruction

def test_straight_through_fake_quantizer():
    """The block stage's fake-quantizer rounds like the walk's and passes the gradient inside the
    range only (a ReLU point's negative side and the clamp get none)."""
    from intasr.quant.adaround import _fq_ste
    from intasr.quant.quantizer import fake_quantize as _fq

    x = torch.linspace(-3, 3, 61, requires_grad=True)
    for signed in (True, False):
        y = _fq_ste(x, 0.02, 8, signed)
        assert torch.equal(y.detach(), _fq(x.detach(), 0.02, 8, signed))
        (g,) = torch.autograd.grad(y.sum(), x)
        lo, hi = (-128, 127) if signed else (0, 255)
        inside = (x.detach() / 0.02 >= lo) & (x.detach() / 0.02 <= hi)
        assert torch.equal(g, inside.float()) and 0 < int(inside.sum()) < x.numel()


def _block_errors(model, batches, obs, codes, shifts):
    """Per encoder block, the walk's output error against the float block on the float block's
    quantized input, with the given codes and bias shifts."""
    from intasr.quant.adaround import _dequantized
    from intasr.quant.quantizer import fake_quantize as _fq

    walk = QuantizedWalk(model, obs, 8, lambda c: weight_bits_of(c, 4))
    mel, lens = batches[0]
    use = lambda f, x, l: (_dequantized(f, codes[f.conv]).float(),   # noqa: E731
                           shifts[f.conv].float() if f.conv in shifts else None)
    xs_f, errors = [mel], []
    with torch.no_grad():
        for b, block in enumerate(model.encoder.encoder):
            ys_f, lens_out = block(xs_f, lens)
            x_in = [_fq(x, s, 8, sg) for x, (s, sg) in zip(xs_f, walk.input_points(b))]
            out = walk.block(b, x_in, lens, use)[0][-1]
            errors.append(float((out - ys_f[-1]).pow(2).sum()))
            xs_f, lens = ys_f, lens_out
    return errors


def test_block_reconstruction_never_raises_a_blocks_error_and_lowers_the_total(tmp_path):
    """The block stage starts from the per-conv codes and keeps them unless the hard-rounded block
    does better on the batch: no block's output error rises, and in sum they fall; the codes stay on
    the 4-bit grid, one step from the float weight at most."""
    model = tiny_model(seed=5)
    batches = random_mels(1, 4, 120, seed=4)
    obs = collect(model, batches).observers
    bits = lambda c: weight_bits_of(c, 4)   # noqa: E731
    per_conv = adaround(model, batches, obs, 8, bits, cfg=AdaRoundConfig(iterations=40, asymmetric=False),
                        progress=False)
    block = adaround(model, batches, obs, 8, bits, progress=False,
                     cfg=AdaRoundConfig(iterations=40, asymmetric=False, block_iterations=200))
    before = _block_errors(model, batches, obs, per_conv.codes, per_conv.bias_shifts)
    after = _block_errors(model, batches, obs, block.codes, block.bias_shifts)
    assert all(a <= b * (1 + 1e-6) for a, b in zip(after, before)) and sum(after) < sum(before)
    walk = QuantizedWalk(model, obs, 8, bits)
    for f in (f for unit in walk.units() for f in unit):
        c = block.codes[f.conv]
        assert torch.equal(c, c.round()) and ((c - f.weight / f.scale.reshape(-1, 1, 1)).abs() < 1 + 1e-9).all()


def test_block_stage_settings_leave_older_cache_keys_alone():
    """Settings added with the block stage enter the cache key only when it is on, so learned codes
    cached before it still hit."""
    from dataclasses import asdict

    from intasr.quant.adaround import cache_key

    model = tiny_model()
    batches = random_mels(1, 2, 100, seed=3)
    walk = QuantizedWalk(model, collect(model, batches).observers, 8, lambda c: 4)
    base = AdaRoundConfig(iterations=30)
    assert cache_key(walk, batches, base) == cache_key(walk, batches, AdaRoundConfig(iterations=30, block_lr=0.5))
    on = cache_key(walk, batches, AdaRoundConfig(iterations=30, block_iterations=10))
    assert on != cache_key(walk, batches, base)
    assert on != cache_key(walk, batches, AdaRoundConfig(iterations=30, block_iterations=10, block_lr=0.5))
    assert "block_iterations" in asdict(base)
