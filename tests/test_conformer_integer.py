"""Integer-only Conformer (convert_conformer): the float walk is the model, the program is
float-free, bit-exact between its backends and invariant to batching and padding.

Runs on the real pretrained hama Conformer-CTC (the PyPI package ships its weights) with
synthetic audio, so nothing here needs ../shared; BatchNorm statistics come from the same audio.
"""
import numpy as np
import pytest
import torch

from conftest import restored_hama_model, speech_like_audio

from intasr.calibration import random_mels
from intasr.convert_conformer import calibrate_conformer, convert_conformer, float_forward
from intasr.program.numpy_ref import NumpyReference
from intasr.quantize import quantize
from intasr.verify import float_ops_in_forward

pytest.importorskip("hama")


@pytest.fixture(scope="module")
def hama_model():
    return restored_hama_model()


@pytest.fixture(scope="module")
def batch(hama_model):
    with torch.no_grad():
        return hama_model.features(*speech_like_audio())


@pytest.fixture(scope="module")
def w8a8(hama_model, batch):
    return quantize(hama_model, [batch], 8, 8)


def test_float_walk_is_the_model(hama_model, batch):
    mel, lengths = batch
    with torch.no_grad():
        ref, ref_len = hama_model.forward_features(mel, lengths)
        got, got_len = float_forward(hama_model, mel, lengths)
    assert torch.equal(ref_len, got_len)
    for b, t in enumerate(ref_len.tolist()):
        torch.testing.assert_close(got[b, :, :t], ref[b, :, :t], rtol=0, atol=1e-5)


def test_program_uses_the_integer_nonlinearities(w8a8):
    kinds = {op.kind for op in w8a8.program.ops}
    assert {"layernorm", "softmax", "swish", "glu", "gelu", "matmul_qk", "matmul_pv", "conv1d"} <= kinds
    assert w8a8.info["architecture"] == "conformer"


def test_forward_is_float_free(w8a8, batch):
    mel, lengths = batch
    floats, n = float_ops_in_forward(w8a8, w8a8.quantize_input(mel), lengths)
    assert n > 1000 and floats == []


def test_numpy_replay_is_bit_exact_on_a_padded_batch(w8a8, batch):
    mel, lengths = batch
    q = w8a8.quantize_input(mel)
    with torch.inference_mode():
        ours, out_len = w8a8.forward_int(q, lengths)
    ref, ref_len = NumpyReference().run(w8a8.program, q.numpy(), lengths.numpy())
    assert np.array_equal(ref_len, out_len.numpy())
    for b, t in enumerate(out_len.tolist()):
        assert np.array_equal(ref[b, :, :t], ours[b, :, :t].numpy())


def test_alone_equals_in_padded_batch_and_padding_cannot_leak(w8a8, batch):
    mel, lengths = batch
    q = w8a8.quantize_input(mel)
    with torch.inference_mode():
        logits, out_len = w8a8.forward_int(q, lengths)
        noisy = q.clone()
        for b, n in enumerate(lengths.tolist()):
            noisy[b, :, n:] = 99
        again, _ = w8a8.forward_int(noisy, lengths)
        for b, n in enumerate(lengths.tolist()):
            alone, alone_len = w8a8.forward_int(q[b:b + 1, :, :n], lengths[b:b + 1])
            t = int(out_len[b])
            assert int(alone_len[0]) == t
            assert torch.equal(alone[0, :, :t], logits[b, :, :t])
            assert torch.equal(again[b, :, :t], logits[b, :, :t])


def test_integer_logits_track_the_float_model(hama_model, w8a8, batch):
    mel, lengths = batch
    with torch.no_grad():
        ref, ref_len = hama_model.forward_features(mel, lengths)
        logits, _ = w8a8.forward_int(w8a8.quantize_input(mel), lengths)
    num = den = agree = frames = 0.0
    for b, t in enumerate(ref_len.tolist()):
        f, d = ref[b, :, :t].double(), logits[b, :, :t].double() * w8a8.logit_scale
        num += float(((d - f) ** 2).sum())
        den += float((f ** 2).sum())
        agree += float((d.argmax(0) == f.argmax(0)).sum())
        frames += t
    assert (num / den) ** 0.5 < 0.1 and agree / frames > 0.9, ((num / den) ** 0.5, agree / frames)


def test_residual_bits_and_file_roundtrip(hama_model, batch, tmp_path):
    from intasr.integer_model import load_quantized, save_quantized

    obs = calibrate_conformer(hama_model, [batch])
    q16 = convert_conformer(hama_model, obs, 8, 8, residual_bits=16)
    clamps = [op for op in q16.program.ops if op.kind == "clamp"]
    assert clamps and all(op.attrs["bits"] == 16 for op in clamps)
    path = save_quantized(q16, tmp_path / "c.aqz")
    again = load_quantized(path)
    mel, lengths = batch
    with torch.inference_mode():
        a = again.forward_features(mel, lengths)[0]
        b = q16.forward_features(mel, lengths)[0]
    assert torch.equal(a, b)   # the hama front end (stored STFT kernels) travels in the file


@pytest.mark.parametrize("options", [{"rounding": "gptq"}, {"size_budget_mb": 1.0}, {"equalize": True}])
def test_conformer_refuses_convasr_only_options(hama_model, options):
    with pytest.raises(ValueError, match="ConvASR models only"):
        quantize(hama_model, random_mels(1, 1, 100, n_mels=80), 4, 8, **options)


@pytest.mark.parametrize("overrides,message", [
    ({"subsampling_factor": 1}, "a Linear pre_encode"),
    ({"self_attention_model": "abs_pos"}, "abs_pos with sinusoids"),
])
def test_walk_refuses_what_is_not_integer(overrides, message):
    """The walk names what it cannot convert (the layer table still counts these models)."""
    from intasr.experiments import layer_table
    from intasr.models import ConformerCTC, conformer_ctc_config

    model = ConformerCTC(conformer_ctc_config("small", n_layers=1, **overrides)).eval()
    with pytest.raises(NotImplementedError, match=message):
        calibrate_conformer(model, random_mels(1, 1, 40, n_mels=80))
    assert len(layer_table(model, seconds=0.5)) > 0


def test_simulated_quantization_rounds_where_the_program_does(hama_model, batch):
    """The float-non-linearity ablation: at 16 bits it is the float model (the points are right),
    at 8 bits it deviates about as much as the integer program does."""
    from intasr.simulate import simulate_conformer

    mel, lengths = batch
    with torch.no_grad():
        ref, ref_len = hama_model.forward_features(mel, lengths)
    errs = {}
    for bits in (16, 8):
        sim = simulate_conformer(hama_model, [batch], bits, bits)
        y, y_len = sim.forward_features(mel, lengths)
        assert torch.equal(y_len, ref_len)
        errs[bits] = max(float((y[b, :, :t] - ref[b, :, :t]).norm() / ref[b, :, :t].norm())
                         for b, t in enumerate(ref_len.tolist()))
    assert errs[16] < 0.01 < errs[8] < 0.2, errs


# --- NeMo's architecture: Conv2d subsampling (striding / dw_striding), rel_pos attention, xscaling ---
# conformer_ctc_small / large with random weights (normal init), BatchNorm statistics from real
# audio features (test-other, ../shared), a padded batch of 3 real utterances cropped to ~2 s.

def _nemo_random_model(size: str, mel_batch, seed: int = 0, **overrides):
    from conftest import fill_bn_statistics

    from intasr.models import ConformerCTC, conformer_ctc_config

    torch.manual_seed(seed)
    model = ConformerCTC(conformer_ctc_config(size, **overrides))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():   # matrices ~ N(0, 1/fan_in); vectors (biases, norms, pos_bias_u/v) around defaults
        for name, p in model.named_parameters():
            if name.startswith("preprocessor"):
                continue
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
    fill_bn_statistics(model.encoder, *mel_batch)
    return model


@pytest.fixture(scope="module")
def nemo_audio(real_audio_batch):
    from intasr.models.convasr import frame_mask

    audio, lengths = real_audio_batch
    lengths = torch.minimum(lengths, torch.tensor([32000, 25000, 18000]))   # 2.0 / 1.56 / 1.13 s
    audio = audio[:, : int(lengths.max())].clone()
    audio[~frame_mask(lengths, audio.shape[1])] = 0.0
    return audio, lengths


def _mel(audio_batch, cfg_size="small"):
    from intasr.models import ConformerCTC, conformer_ctc_config

    with torch.no_grad():
        return ConformerCTC(conformer_ctc_config(cfg_size, n_layers=0)).features(*audio_batch)


@pytest.fixture(scope="module")
def nemo_small(nemo_audio):
    mel_batch = _mel(nemo_audio)
    model = _nemo_random_model("small", mel_batch)
    qmodel = quantize(model, [mel_batch], 8, 8)
    return model, qmodel, mel_batch


@pytest.mark.parametrize("size,overrides", [("small", {}), ("large", {}),
                                            ("small", {"subsampling": "dw_striding", "n_layers": 2,
                                                       "untie_biases": False})])
def test_nemo_float_walk_is_the_model(nemo_audio, size, overrides):
    mel, lengths = _mel(nemo_audio)
    model = _nemo_random_model(size, (mel, lengths), **overrides)
    with torch.no_grad():
        ref, ref_len = model.forward_features(mel, lengths)
        got, got_len = float_forward(model, mel, lengths)
    assert torch.equal(ref_len, got_len) and ref_len.tolist() == [50, 39, 28]
    for b, t in enumerate(ref_len.tolist()):
        torch.testing.assert_close(got[b, :, :t], ref[b, :, :t], rtol=0, atol=1e-5)


def test_nemo_ops_match_their_float_definitions():
    """conv2d = F.conv2d (float64, exact on integers) for plain, uint8-range, depthwise and wide
    inputs; matmul_pos = rel_shift((q) p^T) on the 2T-1 middle columns; 4-D mask_time zeroes
    frames on axis 2; flatten_freq is NeMo's transpose-reshape; torch and NumPy kernels agree."""
    import torch.nn.functional as F

    from intasr.models.conformer import rel_shift
    from intasr.program.ops import Op
    from intasr.program.torch_ref import TorchReference

    T_, N_ = TorchReference.kernels, NumpyReference.kernels
    g = torch.Generator().manual_seed(0)
    for groups, cin, cout, (lo, hi) in [(1, 1, 8, (-128, 128)), (1, 6, 8, (0, 256)), (6, 6, 6, (-128, 128)),
                                        (1, 5, 4, (-3000, 3000))]:
        x = torch.randint(lo, hi, (2, cin, 11, 9), generator=g).to(torch.int8 if hi <= 128 else torch.int16)
        w = torch.randint(-127, 128, (cout, cin // groups, 3, 3), generator=g).to(torch.int8)
        bias = torch.randint(-1000, 1000, (cout,), generator=g).to(torch.int32)
        op = Op("conv2d", ["x"], ["y"], {"stride": [2, 2], "padding": [1, 1], "groups": groups, "acc_dtype": "int32"},
                {"weight": w, "bias": bias})
        y = T_["conv2d"](op, x)
        assert y.dtype == torch.int32
        assert torch.equal(y.double(), F.conv2d(x.double(), w.double(), bias.double(), stride=2, padding=1,
                                                groups=groups))
        assert np.array_equal(N_["conv2d"](op, x.numpy()), y.numpy())
    L, h, dk, t = 20, 2, 3, 7
    pos = torch.randint(-127, 128, (h * dk, 2 * L - 1), generator=g).to(torch.int8)
    q = torch.randint(-128, 128, (2, h * dk, t), generator=g).to(torch.int8)
    op = Op("matmul_pos", ["q"], ["s"], {"heads": h, "max_len": L, "acc_dtype": "int32"}, {"pos": pos})
    s = T_["matmul_pos"](op, q)
    p = pos[:, L - t: L + t - 1].double().reshape(1, h, dk, 2 * t - 1)   # positions t-1 .. -(t-1)
    assert torch.equal(s.double(), rel_shift(q.double().reshape(2, h, dk, t).transpose(-1, -2) @ p))
    assert np.array_equal(N_["matmul_pos"](op, q.numpy()), s.numpy())
    short = Op("matmul_pos", ["q"], ["s"], {"heads": h, "max_len": 5, "acc_dtype": "int32"}, {"pos": pos[:, :9]})
    with pytest.raises(ValueError, match="max_len 5"):
        T_["matmul_pos"](short, q)
    with pytest.raises(ValueError, match="max_len 5"):
        N_["matmul_pos"](short, q.numpy())
    x = torch.randint(-5, 5, (2, 3, 6, 4), generator=g).to(torch.int8)
    lengths = torch.tensor([6, 3])
    m = T_["mask_time"](Op("mask_time", ["x", "l"], ["y"]), x, lengths)
    assert torch.equal(m[0], x[0]) and torch.equal(m[1, :, :3], x[1, :, :3]) and not m[1, :, 3:].any()
    assert np.array_equal(N_["mask_time"](None, x.numpy(), lengths.numpy()), m.numpy())
    f = T_["flatten_freq"](None, x)
    assert torch.equal(f.transpose(1, 2), x.transpose(1, 2).reshape(2, 6, 12))
    assert np.array_equal(N_["flatten_freq"](None, x.numpy()), f.numpy())
    img = T_["to_image"](None, x[:, 0])
    assert torch.equal(img, x[:, 0].transpose(1, 2)[:, None])
    assert np.array_equal(N_["to_image"](None, x[:, 0].numpy()), img.numpy())


def test_nemo_small_program_is_float_free_and_numpy_exact(nemo_small):
    model, qmodel, (mel, lengths) = nemo_small
    kinds = {op.kind for op in qmodel.program.ops}
    assert {"to_image", "conv2d", "flatten_freq", "matmul_pos", "matmul_qk", "softmax"} <= kinds
    assert len(qmodel.program.ops_of("matmul_pos")) == 16
    q = qmodel.quantize_input(mel)
    floats, n = float_ops_in_forward(qmodel, q, lengths)
    assert n > 1000 and floats == []
    with torch.inference_mode():
        ours, out_len = qmodel.forward_int(q, lengths)
    ref, ref_len = NumpyReference().run(qmodel.program, q.numpy(), lengths.numpy())
    assert np.array_equal(ref_len, out_len.numpy()) and out_len.tolist() == [50, 39, 28]
    for b, t in enumerate(out_len.tolist()):
        assert np.array_equal(ref[b, :, :t], ours[b, :, :t].numpy())


def test_nemo_small_alone_equals_in_padded_batch(nemo_small):
    _, qmodel, (mel, lengths) = nemo_small
    q = qmodel.quantize_input(mel)
    with torch.inference_mode():
        logits, out_len = qmodel.forward_int(q, lengths)
        noisy = q.clone()
        for b, n in enumerate(lengths.tolist()):
            noisy[b, :, n:] = 99
        again, _ = qmodel.forward_int(noisy, lengths)
        for b, n in enumerate(lengths.tolist()):
            alone, alone_len = qmodel.forward_int(q[b:b + 1, :, :n], lengths[b:b + 1])
            t = int(out_len[b])
            assert int(alone_len[0]) == t
            assert torch.equal(alone[0, :, :t], logits[b, :, :t])
            assert torch.equal(again[b, :, :t], logits[b, :, :t])


def test_nemo_small_integer_logits_track_the_float_model(nemo_small):
    """Random weights, 16 layers: the error compounds layer by layer (~1 % per layer at W8A8;
    tools/conformer_nemo_check.py reports it on held-out utterances)."""
    model, qmodel, (mel, lengths) = nemo_small
    with torch.no_grad():
        ref, ref_len = model.forward_features(mel, lengths)
        logits, _ = qmodel.forward_int(qmodel.quantize_input(mel), lengths)
    num = den = agree = frames = 0.0
    for b, t in enumerate(ref_len.tolist()):
        f, d = ref[b, :, :t].double(), logits[b, :, :t].double() * qmodel.logit_scale
        num += float(((d - f) ** 2).sum())
        den += float((f ** 2).sum())
        agree += float((d.argmax(0) == f.argmax(0)).sum())
        frames += t
    assert (num / den) ** 0.5 < 0.3 and agree / frames > 0.6, ((num / den) ** 0.5, agree / frames)


def test_nemo_pos_emb_max_len_limits_the_input(nemo_small, tmp_path):
    from intasr.integer_model import load_quantized, save_quantized

    model, qmodel, (mel, lengths) = nemo_small
    assert {op.attrs["max_len"] for op in qmodel.program.ops_of("matmul_pos")} == {5000}
    assert qmodel.program.ops_of("matmul_pos")[0].params["pos"].shape == (176, 2 * 5000 - 1)
    obs = calibrate_conformer(model, [(mel, lengths)])
    short = convert_conformer(model, obs, 8, 8, pos_emb_max_len=40)
    assert short.program.ops_of("matmul_pos")[0].params["pos"].shape == (176, 79)
    n = int(lengths[1])
    with torch.inference_mode():
        _, out_len = short.forward_int(short.quantize_input(mel[1:2, :, :n]), lengths[1:2])   # 39 frames fit
        assert out_len.tolist() == [39]
        with pytest.raises(ValueError, match="max_len 40"):
            short.forward_int(short.quantize_input(mel), lengths)                  # 50 frames do not
    again = load_quantized(save_quantized(short, tmp_path / "nemo_small.aqz"))   # conv2d / matmul_pos in the file
    x = short.quantize_input(mel[1:2, :, :n])
    with torch.inference_mode():
        assert torch.equal(again.forward_int(x, lengths[1:2])[0], short.forward_int(x, lengths[1:2])[0])


def test_nemo_dw_striding_numpy_exact(nemo_audio):
    mel, lengths = _mel(nemo_audio)
    model = _nemo_random_model("small", (mel, lengths), subsampling="dw_striding", n_layers=2, untie_biases=False)
    obs = calibrate_conformer(model, [(mel, lengths)])
    plain = convert_conformer(model, obs, 8, 8)
    wide = convert_conformer(model, obs, 8, 8, prob_bits=16, residual_bits=16)   # int32 probs, int64 p.v
    assert any(op.kind == "conv2d" and op.attrs["groups"] > 1 for op in plain.program.ops)
    assert {op.attrs["acc_dtype"] for op in wide.program.ops_of("matmul_pv")} == {"int64"}
    for qmodel in (plain, wide):
        q = qmodel.quantize_input(mel)
        with torch.inference_mode():
            ours, out_len = qmodel.forward_int(q, lengths)
        ref, ref_len = NumpyReference().run(qmodel.program, q.numpy(), lengths.numpy())
        assert np.array_equal(ref_len, out_len.numpy())
        for b, t in enumerate(out_len.tolist()):
            assert np.array_equal(ref[b, :, :t], ours[b, :, :t].numpy())


def test_nemo_small_fast_runner_is_bit_exact(nemo_small):
    """The fast CPU runner (fused convs, reference kernels for the new ops) on the NeMo program."""
    from intasr.intops import native
    from intasr.program import fast

    _, qmodel, (mel, lengths) = nemo_small
    q = qmodel.quantize_input(mel)
    with torch.inference_mode():
        ours, out_len = qmodel.forward_int(q, lengths)
    for mode in ["float-exact"] + (["native"] if native.available() else []):
        out, got_len = fast.run_fast(qmodel.program, q, lengths, depthwise=mode)
        assert np.array_equal(got_len, out_len.numpy()), mode
        for b, t in enumerate(out_len.tolist()):
            assert np.array_equal(out[b, :, :t], ours[b, :, :t].numpy()), (mode, b)
