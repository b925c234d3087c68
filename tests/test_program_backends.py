"""Every op kind of the integer program has a kernel in every backend, and the backends agree."""

import numpy as np
import pytest
import torch

from conftest import speech_like_audio

from asrquant.program import OPS
from asrquant.program.numpy_ref import NumpyReference
from asrquant.program.torch_ref import TorchReference

CONVASR_OPS = {"mask_time", "frames", "conv1d", "requantize", "rescale", "add", "clamp"}


def _kernels(backend: str) -> set:
    if backend == "torch_ref":
        return set(TorchReference.kernels)
    if backend == "numpy_ref":
        return set(NumpyReference.kernels)
    if backend == "fast":
        from asrquant.program import fast

        return set(fast.KERNELS)
    pytest.importorskip("onnx")
    if backend == "onnx_int":
        from asrquant.program import onnx_int

        return set(onnx_int.KERNELS)
    from asrquant.program import onnx_qdq

    return set(onnx_qdq.KERNELS)


@pytest.mark.parametrize("backend", ["torch_ref", "numpy_ref", "onnx_int", "onnx_qdq", "fast"])
def test_every_op_kind_has_a_lowering(backend):
    kernels = _kernels(backend)
    assert CONVASR_OPS <= set(OPS)
    assert CONVASR_OPS <= kernels, f"{backend} lacks {sorted(CONVASR_OPS - kernels)}"
    missing = sorted(set(OPS) - kernels)
    assert not missing, f"backend {backend} has no kernel for {missing}"


def test_backends_agree_on_a_padded_batch():
    """torch_ref, numpy_ref, the fast runner and (with exact kernels) the integer ONNX graph give
    the same integers on every valid frame of a padded batch (JasperDR-shaped dense model)."""
    from asrquant.calibration import random_mels
    from asrquant.convert import quantize_model
    from asrquant.intops import native
    from asrquant.program import fast
    from pinned import pinned_float_model, pinned_inputs

    program = quantize_model(pinned_float_model("tiny_dense"), random_mels(1, 2, 160, seed=0)).program
    q, lengths = pinned_inputs()
    q, lengths = q[:, :, :100], torch.tensor([100, 80, 41])
    ref, ref_len = TorchReference().run(program, q, lengths)
    ref, ref_len = ref.numpy(), ref_len.numpy()
    outs = {"numpy_ref": NumpyReference().run(program, q.numpy(), lengths.numpy()),
            "fast float-exact": fast.run_fast(program, q, lengths, depthwise="float-exact")}
    if native.available():
        outs["fast native"] = fast.run_fast(program, q, lengths, depthwise="native")
    try:
        from asrquant.program import onnx_int

        if onnx_int.ort_kernels_exact(1):
            outs["onnx_int"] = onnx_int.run_onnx_int(program, q, lengths)
    except ImportError:
        pass
    for name, (out, out_len) in outs.items():
        assert np.array_equal(np.asarray(out_len), ref_len), name
        for b, n in enumerate(ref_len.tolist()):
            assert np.array_equal(np.asarray(out)[b, :, :n], ref[b, :, :n]), (name, b)


def test_fast_runner_on_a_conformer_program():
    """Ops beyond the ConvASR set run in the fast runner through the torch reference kernels (and
    its pointwise/depthwise convs fused): bit-exact on a padded batch of a 1-layer Conformer."""
    from asrquant.program import fast

    try:
        from asrquant.models import ConformerCTC, conformer_ctc_config
        from asrquant.quantize import quantize
    except ImportError as e:
        pytest.skip(f"no Conformer converter here: {e}")
    from conftest import fill_bn_statistics

    torch.manual_seed(0)
    model = ConformerCTC(conformer_ctc_config("small", n_layers=1))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("preprocessor"):
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5 if p.dim() > 1
                        else (1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
    mel, lengths = torch.randn(3, 80, 96, generator=g), torch.tensor([96, 70, 41])
    fill_bn_statistics(model.encoder, mel, lengths)
    qmodel = quantize(model, [(mel, lengths)], 8, 8)
    assert set(op.kind for op in qmodel.program.ops) - CONVASR_OPS  # really beyond the ConvASR set
    q = qmodel.quantize_input(mel)
    with torch.inference_mode():
        ref, ref_len = qmodel.forward_int(q, lengths)
    for mode in ("native", "float-exact"):
        out, out_len = fast.run_fast(qmodel.program, q, lengths, depthwise=mode)
        assert np.array_equal(out_len, ref_len.numpy())
        for b, n in enumerate(ref_len.tolist()):
            assert np.array_equal(out[b, :, :n], ref[b, :, :n].numpy()), (mode, b)


# ----------------------------------------------------------------------------- Conformers through ONNX

def _onnx_int_bit_exact(qmodel, mel, lengths, fresh: bool = False):
    """The integer-only graph (integer-only by shape inference) == forward_int on every valid frame
    of the padded batch, lengths included. fresh: a new session on a newly built graph (not
    run_onnx_int's per-program cache)."""
    from asrquant.program import onnx_int

    if not onnx_int.ort_kernels_exact(1):
        pytest.skip("onnxruntime's integer kernels are not exact on this CPU (no VNNI): ort_kernels_exact() is False")
    model = onnx_int.build_integer_model(qmodel.program)
    rep = onnx_int.integer_only_report(model)
    assert rep["ok"], rep
    q = qmodel.quantize_input(mel)
    with torch.inference_mode():
        ref, ref_len = qmodel.forward_int(q, lengths)
    if fresh:
        out, out_len = onnx_int.make_session(model, 1).run(None, {"q": q.numpy(), "lengths": lengths.numpy()})
    else:
        out, out_len = onnx_int.run_onnx_int(qmodel.program, q, lengths)
    assert np.array_equal(out_len, ref_len.numpy())
    assert out.dtype == np.int64
    for b, n in enumerate(ref_len.tolist()):
        assert np.array_equal(out[b, :, :n], ref[b, :, :n].numpy()), b


def _qdq_agreement(qmodel, mel, lengths) -> float:
    """Frame argmax agreement of the Q/DQ graph (float, simulated quantization) with forward_int."""
    from asrquant.program import onnx_qdq

    with torch.inference_mode():
        ref, ref_len = qmodel.forward_int(qmodel.quantize_input(mel), lengths)
    out, out_len = onnx_qdq.run_onnx_qdq(qmodel.program, mel, lengths)
    assert np.array_equal(out_len, ref_len.numpy())
    same = [out[b, :, :n].argmax(0) == ref[b, :, :n].numpy().argmax(0) for b, n in enumerate(ref_len.tolist())]
    return float(np.concatenate(same).mean())


@pytest.fixture(scope="module")
def hama_w8a8():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("hama")
    from asrquant.models.hama import load_hama_model, restore_conformer_bn
    from asrquant.quantize import quantize

    model = load_hama_model()
    restore_conformer_bn(model, [speech_like_audio((3.0, 2.5, 2.0, 1.5), seed=1)], progress=False)
    with torch.no_grad():
        mel, lengths = model.features(*speech_like_audio())
    return model, quantize(model, [(mel, lengths)], 8, 8), (mel, lengths)


def test_hama_conformer_onnx_int_is_bit_exact(hama_w8a8):
    """The full pretrained hama Conformer program (layernorm, softmax, swish, glu, gelu, matmuls,
    residual rescales of activations) through the integer-only graph, padded batch of 3."""
    _, qmodel, (mel, lengths) = hama_w8a8
    assert lengths.unique().numel() == 3
    _onnx_int_bit_exact(qmodel, mel, lengths)


def test_hama_conformer_onnx_qdq_agrees(hama_w8a8):
    _, qmodel, (mel, lengths) = hama_w8a8
    assert _qdq_agreement(qmodel, mel, lengths) >= 0.9   # measured 0.97


def test_hama_conformer_onnx_int_formulas_are_bit_exact(hama_w8a8, monkeypatch):
    """The same graph with swish / glu / gelu as onnx_nonlinear's integer formulas instead of the
    256-entry tables (the path of activations wider than 8 bits)."""
    from asrquant.program import onnx_int

    monkeypatch.setattr(onnx_int, "LUT_MAX_BITS", 0)
    _, qmodel, (mel, lengths) = hama_w8a8
    assert "Gather" not in onnx_int.integer_only_report(onnx_int.build_integer_model(qmodel.program))["op_types"]
    _onnx_int_bit_exact(qmodel, mel, lengths, fresh=True)


@pytest.mark.parametrize("kw", [{"residual_bits": 16}, {"prob_bits": 16}])
def test_hama_conformer_wide_variants_onnx_int(hama_w8a8, kw):
    """16-bit residual stream (int16 activations, zero point 0) and 16-bit probabilities (matmul_pv
    in int64: an unbounded accumulator, requantized by the bound-free floor division)."""
    from asrquant.convert_conformer import calibrate_conformer, convert_conformer

    model, _, (mel, lengths) = hama_w8a8
    qmodel = convert_conformer(model, calibrate_conformer(model, [(mel, lengths)]), 8, 8, **kw)
    _onnx_int_bit_exact(qmodel, mel, lengths)


def _nemo_small(subsampling: str, **overrides):
    from conftest import fill_bn_statistics

    from asrquant.models import ConformerCTC, conformer_ctc_config
    from asrquant.quantize import quantize

    torch.manual_seed(0)
    model = ConformerCTC(conformer_ctc_config("small", n_layers=2, subsampling=subsampling, **overrides))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("preprocessor"):
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5 if p.dim() > 1
                        else (1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
        mel, lengths = model.features(*speech_like_audio())
    fill_bn_statistics(model.encoder, mel, lengths)
    return quantize(model, [(mel, lengths)], 8, 8), (mel, lengths)


@pytest.mark.parametrize("subsampling,overrides", [("striding", {}), ("dw_striding", {"untie_biases": False})])
def test_nemo_conformer_onnx_backends(subsampling, overrides):
    """A 2-layer NeMo-architecture Conformer (Conv2d subsampling: to_image, conv2d on images,
    flatten_freq; relative-position attention: matmul_pos) with random weights: the integer graph
    is bit-exact on a padded batch of 3, the Q/DQ graph agrees on most frames (random weights give
    flat logits, so argmax ties flip easily: measured 0.93 / 0.87)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    try:
        from asrquant.models import ConformerCTC  # noqa: F401
    except ImportError as e:
        pytest.skip(f"no Conformer model here: {e}")
    qmodel, (mel, lengths) = _nemo_small(subsampling, **overrides)
    kinds = {op.kind for op in qmodel.program.ops}
    assert {"to_image", "conv2d", "flatten_freq", "matmul_pos"} <= kinds
    _onnx_int_bit_exact(qmodel, mel, lengths)
    assert _qdq_agreement(qmodel, mel, lengths) >= 0.8
