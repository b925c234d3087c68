"""Every op kind of the integer program has a kernel in every backend, and the backends agree."""

import numpy as np
import pytest
import torch

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
    if missing and backend in ("onnx_int", "onnx_qdq") and not (set(missing) & CONVASR_OPS):
        pytest.xfail(f"{backend}: no ONNX lowering yet for {missing} (ops added after the ConvASR set)")
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
