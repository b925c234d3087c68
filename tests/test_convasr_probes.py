"""convasr_probes: the per-block and per-BatchNorm tables and the activation taps, on a random
QuartzNet-5x5 (no shared data needed)."""

import numpy as np
import pytest
import torch

from conftest import random_quartznet5x5, speech_like_audio

from intasr import convasr_probes as probes
from intasr.models.restore_bn import conv_before_each_bn
from intasr.quant import fold_batchnorm


@pytest.fixture(scope="module")
def batch():
    return speech_like_audio((1.2, 0.8), seed=0)


@pytest.fixture(scope="module")
def model(batch):
    return random_quartznet5x5(batch)


def test_block_labels_and_stages_of_quartznet15x5():
    labels = [probes.block_label(i, 18) for i in range(18)]
    assert labels == ["C1"] + [f"B{i}" for i in range(1, 16)] + ["C2", "C3"]
    stages = [probes.block_stage(i, 18) for i in range(18)]
    assert stages[0] == "prologue" and stages[-2:] == ["epilogue", "epilogue"]
    assert stages[1:4] == ["stage 1"] * 3 and stages[13:16] == ["stage 5"] * 3


def test_architecture_rows_count_every_parameter(model):
    rows = probes.architecture_rows(model)
    assert len(rows) == len(model.encoder.encoder) + 1 and rows[-1]["block"] == "decoder"
    total = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("encoder", "decoder")))
    assert sum(r["params"] for r in rows) == total
    assert sum(r["BatchNorms"] for r in rows) == len(model.batchnorms())
    assert rows[-1]["channels"] == len(model.labels) + 1
    assert all(r["conv params"] <= r["params"] for r in rows)


def test_batchnorm_rows_refold_own_export_exactly_and_count_dead_channels(batch):
    model = random_quartznet5x5(batch)
    name0, _, bn0 = conv_before_each_bn(model)[0]
    with torch.no_grad():
        bn0.running_var[:3] = 0.0
    folded = {}
    for name, conv, bn in conv_before_each_bn(model):
        w_f, b_f = fold_batchnorm(conv.conv.weight.detach(), None, bn)
        folded[probes.folded_conv_name(name) + ".weight"] = w_f.numpy()
        folded[probes.folded_conv_name(name) + ".bias"] = b_f.numpy()
    rows = probes.batchnorm_rows(model, folded)
    assert len(rows) == len(model.batchnorms())
    assert all(r["max |refold - export|"] == 0.0 for r in rows)
    assert rows[0]["layer"] == name0 and rows[0]["zero-variance channels"] == 3
    dead = probes.dead_channel_rows(model)
    assert dead[0]["layer"] == name0 and dead[0]["dead"] == 3
    rv, kinds = probes.running_variances(model)
    assert rv.size == kinds.size == sum(bn.num_features for _, bn in model.batchnorms())
    assert int((rv == 0).sum()) == 3 and set(np.unique(kinds)) <= {"main path", "residual 1x1"}


def test_folded_conv_name():
    assert probes.folded_conv_name("encoder.encoder.1.mconv.2") == "encoder.encoder.1.mconv.1.conv"
    assert probes.folded_conv_name("encoder.encoder.3.res.0.1") == "encoder.encoder.3.res.0.0.conv"


def test_pointwise_taps_are_the_layers_inputs_and_outputs(model, batch):
    taps = probes.pointwise_taps(model, batch, block=1)
    assert list(taps) == ["decoder_in", "pw_in", "bn_out"]
    x, mask = taps["pw_in"]
    pw, bn = probes.pointwise_bn(model, block=1)
    with torch.inference_mode():
        torch.testing.assert_close(taps["bn_out"][0], bn(pw(x, mask.sum(1))[0]), rtol=0, atol=0)
        mel, mel_len = model.features(*batch)
        enc, enc_len = model.encoder(mel, mel_len)
    torch.testing.assert_close(taps["decoder_in"][0], enc, rtol=0, atol=0)
    assert taps["decoder_in"][1].sum(1).tolist() == enc_len.tolist()
    assert mask.shape == (x.shape[0], x.shape[-1]) and bool(mask[:, 0].all())


def test_recording_block_outputs_sees_the_encoder_output(model, batch):
    with torch.inference_mode():
        mel, mel_len = model.features(*batch)
        with probes.recording_block_outputs(model) as outputs:
            enc, enc_len = model.encoder(mel, mel_len)
        assert sorted(outputs) == list(range(len(model.encoder.encoder)))
        last, last_len = outputs[len(model.encoder.encoder) - 1]
        assert torch.equal(last, enc) and torch.equal(last_len, enc_len)
        outputs.clear()
        model.encoder(mel, mel_len)  # hooks are gone once the block is left
    assert outputs == {}
