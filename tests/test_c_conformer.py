"""The Conformer in the C runtime: LayerNorm, the swish / GELU tables, GLU, attention and the
residual skips, bit-exact with the NumPy reference in every kernel family this CPU runs, on a padded
batch (every logit, the padded frames' too), alone or batched.

The real pretrained hama Conformer (its weights ship with the PyPI package), calibrated on
synthetic speech-like audio as in tests/test_conformer_integer.py, and a NeMo-architecture
Conformer-CTC (Conv2d subsampling, rel_pos attention) with random weights: nothing here needs
../shared.
"""
import shutil

import numpy as np
import pytest
import torch

from conftest import restored_hama_model, speech_like_audio
from test_c_runtime import family_runtime

from intasr.cpu import FAMILIES
from intasr.program.c_lower import Lowering
from intasr.program.numpy_ref import NumpyReference
from intasr.quantize import quantize

pytest.importorskip("hama")
pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="needs a C compiler and make")


@pytest.fixture(scope="module")
def hama_w8a8():
    model = restored_hama_model()
    with torch.no_grad():
        batch = model.features(*speech_like_audio())
    return quantize(model, [batch], 8, 8)


@pytest.fixture(scope="module")
def padded(hama_w8a8):
    audio, lengths = speech_like_audio((2.0, 1.6, 1.1), seed=3)
    with torch.no_grad():
        mel, mel_len = hama_w8a8.features(audio, lengths)
    x, lengths = hama_w8a8.quantize_input(mel).numpy(), mel_len.numpy()
    return x, lengths, *NumpyReference().run(hama_w8a8.program, x, lengths)


def test_every_step_of_the_conformer_is_lowered(hama_w8a8):
    kinds = {s.kind for s in Lowering(hama_w8a8.program).steps}
    assert {"group", "table", "glu", "layernorm", "attention", "mask", "frames"} <= kinds
    skips = [t for s in Lowering(hama_w8a8.program).steps if s.kind == "group" for t in s.data["terms"]
             if t.kind == "ident"]
    assert len(skips) == 16   # 4 residual adds per layer, 4 layers


@pytest.mark.parametrize("family", [None, *FAMILIES])
def test_every_logit_equals_the_reference_on_a_padded_batch(hama_w8a8, padded, family, tmp_path, monkeypatch):
    x, lengths, ref, ref_len = padded
    rt = family_runtime(hama_w8a8.program, family, tmp_path, monkeypatch)
    out, out_len = rt.run_with_lengths(x, lengths)
    assert np.array_equal(out_len, ref_len)
    assert int((out != ref).sum()) == 0, f"{rt.isa}: {int((out != ref).sum())} of {ref.size} logits differ"
    # alone and unpadded: the same integers on its valid frames
    n = int(lengths[2])
    alone, alone_len = NumpyReference().run(hama_w8a8.program, x[2:3, :, :n], lengths[2:3])
    assert np.array_equal(rt.run(x[2:3, :, :n]), alone)
    assert np.array_equal(alone[0, :, :ref_len[2]], ref[2, :, :ref_len[2]])


@pytest.fixture(scope="module")
def nemo_w8a8():
    """A NeMo-architecture Conformer-CTC (2 layers of conformer_ctc_small): Conv2d striding
    subsampling, rel_pos attention, xscaling; random weights, calibrated on random log-mels."""
    from intasr.models import ConformerCTC, conformer_ctc_config
    from intasr.models.init import random_matrices_

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = random_matrices_(ConformerCTC(conformer_ctc_config("small", n_layers=2)).eval(), g)
    mel = torch.randn(2, 80, 300, generator=g)
    return quantize(model, [(mel, torch.tensor([300, 250]))], 8, 8)


def test_the_nemo_conformer_is_bit_exact_in_every_family(nemo_w8a8, tmp_path, monkeypatch):
    steps = {s.kind for s in Lowering(nemo_w8a8.program).steps}
    assert {"im2col", "attention", "group"} <= steps
    g = torch.Generator().manual_seed(1)
    x = nemo_w8a8.quantize_input(torch.randn(3, 80, 190, generator=g)).numpy()
    lengths = np.array([190, 150, 97])
    ref, ref_len = NumpyReference().run(nemo_w8a8.program, x, lengths)
    for family in (None, *FAMILIES):
        from intasr.cpu import cpu_features, supports

        if family is not None and not supports(cpu_features(), family):
            continue
        rt = family_runtime(nemo_w8a8.program, family, tmp_path, monkeypatch)
        out, out_len = rt.run_with_lengths(x, lengths)
        assert np.array_equal(out_len, ref_len)
        assert int((out != ref).sum()) == 0, f"{rt.isa}: {int((out != ref).sum())} of {ref.size} logits differ"
