"""Integer-only Conformer (convert_conformer): the float walk is the model, the program is
float-free, bit-exact between its backends and invariant to batching and padding.

Runs on the real pretrained hama Conformer-CTC (the PyPI package ships its weights) with
synthetic audio, so nothing here needs ../shared; BatchNorm statistics come from the same audio.
"""
import numpy as np
import pytest
import torch

from asrquant.calibration import random_mels
from asrquant.convert_conformer import calibrate_conformer, convert_conformer, float_forward
from asrquant.program.numpy_ref import NumpyReference
from asrquant.quantize import quantize
from asrquant.verify import float_ops_in_forward

pytest.importorskip("hama")


def _audio(seconds=(2.0, 1.4, 0.9), seed=0):
    """Speech-like noise: a few harmonic tones with a slow envelope, per utterance."""
    g = torch.Generator().manual_seed(seed)
    n = [int(s * 16000) for s in seconds]
    audio = torch.zeros(len(n), max(n))
    t = torch.arange(max(n)) / 16000
    for b, k in enumerate(n):
        f0 = 100 + 80 * torch.rand(1, generator=g)
        sig = sum(torch.sin(2 * torch.pi * f0 * h * t) / h for h in range(1, 6))
        env = 0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * t + torch.rand(1, generator=g) * 6)
        audio[b, :k] = (0.1 * sig * env + 0.01 * torch.randn(max(n), generator=g))[:k]
    return audio, torch.tensor(n)


@pytest.fixture(scope="module")
def hama_model():
    from asrquant.models.hama import load_hama_model, restore_conformer_bn

    model = load_hama_model()
    audio, lengths = _audio((3.0, 2.5, 2.0, 1.5), seed=1)
    restore_conformer_bn(model, [(audio, lengths)], progress=False)
    return model


@pytest.fixture(scope="module")
def batch(hama_model):
    with torch.no_grad():
        return hama_model.features(*_audio())


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
    from asrquant.convert import load_quantized, save_quantized

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


def test_conformer_refuses_convasr_only_options(hama_model):
    with pytest.raises(ValueError, match="ConvASR models only"):
        quantize(hama_model, random_mels(1, 1, 100, n_mels=80), 4, 8, bias_correction=True)


def test_simulated_quantization_rounds_where_the_program_does(hama_model, batch):
    """The float-non-linearity ablation: at 16 bits it is the float model (the points are right),
    at 8 bits it deviates about as much as the integer program does."""
    from asrquant.simulate import simulate_conformer

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
