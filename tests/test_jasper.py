"""JasperDR: the sequential BatchNorm restoration (models.restore_bn) and tools/jasper_check.py's
accumulator-bound table.

Runs on a small JasperDR-style net (dense residuals, non-separable convs, dilation) with random
weights and synthetic speech-like audio (no ../shared needed); the full 333M-parameter check is the
tool itself.
"""
from pathlib import Path

import torch

from conftest import load_script, randomize_weights, speech_like_audio

from intasr.convert import quantize_model
from intasr.models import ConvASR
from intasr.models.restore_bn import measure_bn_inputs, restore_bn_sequential, stats_difference

TOOL = Path(__file__).resolve().parents[1] / "tools" / "jasper_check.py"


def _tool():
    return load_script(TOOL)


def _small_jasper():
    from intasr.models.configs import block_config, convasr_config

    jasper = [block_config(32, 1, 11, stride=2, residual=False, separable=False)]
    jasper += [block_config(32, 2, 11, separable=False, dense=True), block_config(48, 2, 13, separable=False, dense=True)]
    jasper += [block_config(64, 1, 29, dilation=2, residual=False, separable=False),
               block_config(64, 1, 1, residual=False, separable=False)]
    torch.manual_seed(0)
    model = ConvASR(convasr_config(jasper, 64))
    randomize_weights(model, 5)
    return model


def test_sequential_bn_restoration_is_a_fixed_point():
    model = _small_jasper()
    audio, lengths = speech_like_audio()
    stats = restore_bn_sequential(model, audio, lengths)
    assert len(stats) == len(list(model.batchnorms()))
    # measuring again (another batching: one utterance at a time) reproduces the stored statistics
    again = measure_bn_inputs(model, [(audio[i:i + 1, : lengths[i]], lengths[i:i + 1]) for i in range(len(lengths))],
                              progress=False)
    diff = stats_difference(model, again)
    assert diff["max_abs_mean_diff_in_std"] < 1e-4 and diff["max_rel_var_diff"] < 1e-4, diff
    # and every BN now normalizes its input: running stats equal what it sees
    for name, (mean, var) in stats.items():
        assert (var > 0).all(), name


def test_layer_table_matches_converter_choice():
    tool = _tool()
    model = _small_jasper()
    audio, lengths = speech_like_audio()
    restore_bn_sequential(model, audio, lengths)
    with torch.no_grad():
        mel, mel_len = model.features(audio, lengths)
    qmodel = quantize_model(model, [(mel, mel_len)], 8, 8)
    table = tool.layer_table(qmodel)
    assert len(table) == len(qmodel.int_convs())
    for row in table:
        assert (row["acc_dtype"] == "int64") == (row["bound_over_int32"] > 1), row
    rows = {r["layer"]: r for r in table}
    assert (rows["blocks.0.convs.0"]["x_bits"], rows["blocks.0.convs.0"]["x_signed"]) == (8, True)  # log-mel: signed
    assert not rows["blocks.2.residual.1"]["x_signed"]     # dense branch from block 1's ReLU output
