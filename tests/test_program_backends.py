"""Every op kind of the integer program has a kernel in every backend of the registry, and the
backends agree."""

import numpy as np
import pytest
import torch

from conftest import speech_like_audio

from intasr.program import OPS
from intasr.program import backends
from intasr.program.numpy_ref import NumpyReference
from intasr.program.ops import OP_GROUPS, groups_lowered
from intasr.program.torch_ref import TorchReference

CONVASR_OPS = set(OP_GROUPS["convasr"])


def test_op_groups_partition_the_op_set():
    kinds = [k for group in OP_GROUPS.values() for k in group]
    assert len(kinds) == len(set(kinds)), "an op kind in two groups"
    assert set(kinds) == set(OPS)
    assert groups_lowered(CONVASR_OPS) == ["convasr"]
    assert groups_lowered(set(OPS) - {"softmax"}) == ["convasr"]


@pytest.mark.parametrize("name", list(backends.BACKENDS))
def test_every_backend_declares_and_lowers_every_op_group(name):
    spec = backends.BACKENDS[name]
    if spec.module.startswith("onnx"):
        pytest.importorskip("onnx")
    lowers = spec.lowers()
    assert lowers <= set(OPS), f"{name} declares unknown kinds {sorted(lowers - set(OPS))}"
    assert spec.groups() == list(OP_GROUPS), f"backend {name} has no kernel for {sorted(set(OPS) - lowers)}"


@pytest.mark.parametrize("module", ["onnx_int", "onnx_qdq"])
def test_onnx_lowerings_have_a_method_per_declared_kind(module):
    pytest.importorskip("onnx")
    import importlib

    mod = importlib.import_module(f"intasr.program.{module}")
    assert mod._Lowering.LOWERS == mod.LOWERS
    assert not [k for k in mod.LOWERS if not callable(getattr(mod._Lowering, k, None))]


def test_reference_kernels_are_the_declared_kinds():
    assert set(TorchReference.kernels) == backends.BACKENDS["torch"].lowers()
    assert set(NumpyReference.kernels) == backends.BACKENDS["numpy"].lowers()
    assert not TorchReference().missing_kernels() and not NumpyReference().missing_kernels()


@pytest.fixture(scope="module")
def dense_program():
    """A JasperDR-shaped dense model's program and a padded batch of 3 (the torch reference's
    logits and lengths)."""
    from intasr.calibration import random_mels
    from intasr.convert import quantize_model
    from pinned import pinned_float_model, pinned_inputs

    program = quantize_model(pinned_float_model("tiny_dense"), random_mels(1, 2, 160, seed=0)).program
    q, _ = pinned_inputs()
    q, lengths = q[:, :, :100], torch.tensor([100, 80, 41])
    ref, ref_len = TorchReference().run(program, q, lengths)
    return program, q, lengths, ref.numpy(), ref_len.numpy()


@pytest.mark.parametrize("name", [n for n, s in backends.BACKENDS.items() if s.exact])
def test_exact_backends_agree_on_a_padded_batch(name, dense_program):
    """Every exact backend of the registry gives the torch reference's integers on every valid
    frame of a padded batch, lengths included (a backend that cannot run here is skipped, with why)."""
    program, q, lengths, ref, ref_len = dense_program
    try:
        out, out_len, info = backends.run(name, program, q, lengths)
    except backends.BackendUnavailable as e:
        pytest.skip(f"{name}: {e}")
    assert isinstance(info, dict)
    assert np.array_equal(np.asarray(out_len), ref_len), name
    assert np.asarray(out).dtype == np.int64
    for b, n in enumerate(ref_len.tolist()):
        assert np.array_equal(np.asarray(out)[b, :, :n], ref[b, :, :n]), (name, b)


def test_simulated_backend_agrees_by_argmax(dense_program):
    pytest.importorskip("onnxruntime")
    program, q, lengths, ref, ref_len = dense_program
    mel = q.double() * program.meta["input_scale"]
    out, out_len, _ = backends.run("onnx-qdq", program, mel.float(), lengths)
    assert np.array_equal(np.asarray(out_len), ref_len)
    agree = sum(int((np.asarray(out)[b, :, :n].argmax(0) == ref[b, :, :n].argmax(0)).sum())
                for b, n in enumerate(ref_len.tolist()))
    assert agree >= 0.8 * int(ref_len.sum())


def test_run_refuses_a_program_with_an_op_the_backend_does_not_lower(dense_program, monkeypatch):
    from intasr.program import numpy_ref

    program = dense_program[0]
    monkeypatch.setattr(numpy_ref, "LOWERS", numpy_ref.LOWERS - {"clamp"})
    assert "convasr" not in backends.BACKENDS["numpy"].groups()
    with pytest.raises(backends.BackendUnavailable, match=r"backend 'numpy' does not lower op kinds \['clamp'\]"):
        backends.run("numpy", program, dense_program[1], dense_program[2])
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        backends.run("tpu", program, dense_program[1], dense_program[2])


def test_verify_compares_every_backend_of_the_registry(capsys):
    from intasr import verify
    from intasr.cli import build_parser

    assert set(verify.BACKENDS) | set(verify.SIMULATED) | {"torch"} == set(backends.BACKENDS)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["verify", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: all: " + " ".join([*verify.BACKENDS, *verify.SIMULATED]) in help_text


def test_fast_runner_on_a_conformer_program():
    """Ops beyond the ConvASR set run in the fast runner through the torch reference kernels (and
    its pointwise/depthwise convs fused): bit-exact on a padded batch of a 1-layer Conformer."""
    from intasr.program import fast

    try:
        from intasr.models import ConformerCTC, conformer_ctc_config
        from intasr.quantize import quantize
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
    from intasr.program import onnx_graph, onnx_int

    if not onnx_int.ort_kernels_exact(1):
        pytest.skip("onnxruntime's integer kernels are not exact on this CPU (no VNNI): ort_kernels_exact() is False")
    model = onnx_int.build_integer_model(qmodel.program)
    rep = onnx_int.integer_only_report(model)
    assert rep["ok"], rep
    q = qmodel.quantize_input(mel)
    with torch.inference_mode():
        ref, ref_len = qmodel.forward_int(q, lengths)
    if fresh:
        out, out_len = onnx_graph.make_session(model, 1).run(None, {"q": q.numpy(), "lengths": lengths.numpy()})
    else:
        out, out_len = onnx_int.run_onnx_int(qmodel.program, q, lengths)
    assert np.array_equal(out_len, ref_len.numpy())
    assert out.dtype == np.int64
    for b, n in enumerate(ref_len.tolist()):
        assert np.array_equal(out[b, :, :n], ref[b, :, :n].numpy()), b


def _qdq_agreement(qmodel, mel, lengths) -> float:
    """Frame argmax agreement of the Q/DQ graph (float, simulated quantization) with forward_int."""
    from intasr.program import onnx_qdq

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
    from intasr.models.hama import load_hama_model, restore_conformer_bn
    from intasr.quantize import quantize

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
    from intasr.program import onnx_int

    monkeypatch.setattr(onnx_int, "LUT_MAX_BITS", 0)
    _, qmodel, (mel, lengths) = hama_w8a8
    assert "Gather" not in onnx_int.integer_only_report(onnx_int.build_integer_model(qmodel.program))["op_types"]
    _onnx_int_bit_exact(qmodel, mel, lengths, fresh=True)


@pytest.mark.parametrize("kw", [{"residual_bits": 16}, {"prob_bits": 16}])
def test_hama_conformer_wide_variants_onnx_int(hama_w8a8, kw):
    """16-bit residual stream (int16 activations, zero point 0) and 16-bit probabilities (matmul_pv
    in int64: an unbounded accumulator, requantized by the bound-free floor division)."""
    from intasr.convert_conformer import calibrate_conformer, convert_conformer

    model, _, (mel, lengths) = hama_w8a8
    qmodel = convert_conformer(model, calibrate_conformer(model, [(mel, lengths)]), 8, 8, **kw)
    _onnx_int_bit_exact(qmodel, mel, lengths)


def _nemo_small(subsampling: str, **overrides):
    from conftest import fill_bn_statistics

    from intasr.models import ConformerCTC, conformer_ctc_config
    from intasr.quantize import quantize

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
        from intasr.models import ConformerCTC  # noqa: F401
    except ImportError as e:
        pytest.skip(f"no Conformer model here: {e}")
    qmodel, (mel, lengths) = _nemo_small(subsampling, **overrides)
    kinds = {op.kind for op in qmodel.program.ops}
    assert {"to_image", "conv2d", "flatten_freq", "matmul_pos"} <= kinds
    _onnx_int_bit_exact(qmodel, mel, lengths)
    assert _qdq_agreement(qmodel, mel, lengths) >= 0.8
