"""The integer program: validation, the file form, v1 migration, and no change in behaviour.

The pinned logits (tests/data/pinned_logits.json) were recorded by the hand-walked model on main
before the program existed; the program's torch and NumPy backends must reproduce them exactly.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pinned import CASES, digest, fixed_calibration, pinned_float_model, pinned_inputs

from intasr.calibration import random_mels
from intasr.program.builder import ProgramBuilder
from intasr.convert import convert
from intasr.integer_model import load_quantized, save_quantized
from intasr.program.aqz import read_payload, write_payload
from intasr.models import CheckpointError
from intasr.program.numpy_ref import NumpyReference
from intasr.program.ops import OPS, Op, Program, ProgramError, Value
from intasr.program.torch_ref import TorchReference

DATA = Path(__file__).parent / "data"
PINS = json.loads((DATA / "pinned_logits.json").read_text())["cases"]


def _quantize(case):
    """The pinned case converted with the calibration recorded beside its pin (machine-independent)."""
    arch, wb, ab, bc = CASES[case]
    model = pinned_float_model(arch)
    observers, means = fixed_calibration(model, PINS[case])
    assert (means is not None) == bc
    return convert(model, observers, wb, ab, input_means=means)


@pytest.fixture(scope="module", params=sorted(CASES))
def pinned_case(request):
    return request.param, _quantize(request.param)


def test_pinned_logits_unchanged_by_the_program(pinned_case):
    case, qmodel = pinned_case
    x, lengths = pinned_inputs()
    with torch.inference_mode():
        logits, out_len = qmodel.forward_int(x, lengths)
    assert digest(logits, out_len) == {k: PINS[case][k] for k in ("shape", "lengths", "sum", "sha256")}
    ref, ref_len = NumpyReference().run(qmodel.program, x.numpy(), lengths.numpy())
    assert digest(torch.from_numpy(ref), torch.from_numpy(ref_len))["sha256"] == PINS[case]["sha256"]


def test_v1_file_is_migrated_to_the_same_integers():
    q = load_quantized(DATA / "tiny_dense_w8a8_v1.aqz")
    x, lengths = pinned_inputs()
    assert digest(*q.forward_int(x, lengths))["sha256"] == PINS["tiny_dense_w8a8"]["sha256"]
    assert {op.kind for op in q.program.ops} <= set(OPS)


def test_program_file_roundtrip(pinned_case, tmp_path):
    case, qmodel = pinned_case
    path = save_quantized(qmodel, tmp_path / "m.aqz")
    again = load_quantized(path)
    assert [op.kind for op in again.program.ops] == [op.kind for op in qmodel.program.ops]
    x, lengths = pinned_inputs()
    assert torch.equal(again.forward_int(x, lengths)[0], qmodel.forward_int(x, lengths)[0])


def test_malformed_v2_file_names_the_file_and_how_to_regenerate(pinned_case, tmp_path):
    _, qmodel = pinned_case
    path = save_quantized(qmodel, tmp_path / "m.aqz")
    payload = read_payload(path)
    meta = json.loads(payload["meta"])
    meta["program"]["ops"][3]["kind"] = "softmax_v9"
    payload["meta"] = json.dumps(meta)
    bad = tmp_path / "bad.aqz"
    write_payload(payload, bad)
    with pytest.raises(CheckpointError, match=r"bad\.aqz.*unknown op kind.*intasr quantize"):
        load_quantized(bad)
    payload = read_payload(path)
    payload["tensors"].pop(next(iter(payload["tensors"])))
    write_payload(payload, bad)
    with pytest.raises(CheckpointError, match="missing from the file"):
        load_quantized(bad)


def _one_conv_program(bias=True):
    g = ProgramBuilder(8, 0.1)
    w = torch.tensor([[[1, -2, 3]], [[4, 5, -6]]], dtype=torch.int8).repeat(1, 2, 1)  # [2, 2, 3]
    params = {"weight": w}
    if bias:
        params["bias"] = torch.tensor([7, -9], dtype=torch.int32)
    xm = g.masked("input", "input_lengths")
    acc = g.add("conv1d", [xm], "acc", Value("int32", "acc"), "conv",
                {"stride": 2, "padding": 1, "dilation": 1, "groups": 1, "acc_dtype": "int32"}, params)
    g.add("frames", ["input_lengths"], "logits_lengths", Value("int64", "lengths"), "frames",
          {"kernel": 3, "stride": 2, "padding": 1, "dilation": 1})
    g.add("rescale", [acc], "logits", Value("int64", "acc"), "out", {},
          {"M": torch.tensor([3, 5]), "shift": torch.tensor([1, 2])})
    return g.program(("logits", "logits_lengths"), {"input_scale": 0.1, "input_bits": 8, "logit_scale": 1.0})


def test_hand_computed_program():
    p = _one_conv_program()
    x = torch.tensor([[[1, 2, 3, 4, 99], [0, -1, 1, 0, 99]]], dtype=torch.int8)
    logits, lens = TorchReference().run(p, x, torch.tensor([4]))
    # frames: (4 + 2 - 2 - 1) // 2 + 1 = 2; channel 0 at t=0: bias 7 + w . [0,1,2] + w . [0,0,-1]
    assert lens.tolist() == [2]
    acc0_t0 = 7 + (1 * 0 - 2 * 1 + 3 * 2) + (1 * 0 - 2 * 0 + 3 * -1)
    assert int(logits[0, 0, 0]) == (acc0_t0 * 3 + 1) >> 1
    ref, ref_len = NumpyReference().run(p, x.numpy(), np.array([4]))
    assert np.array_equal(ref[:, :, :2], logits.numpy()[:, :, :2]) and ref_len.tolist() == [2]


def test_validation_names_the_problem():
    p = _one_conv_program()
    with pytest.raises(ProgramError, match="unknown op kind"):
        Program(p.values, p.ops + [Op("warp_drive", ["logits"], ["logits"])], p.inputs, p.outputs).validate()
    with pytest.raises(ProgramError, match="used before it is defined"):
        Program(p.values, list(reversed(p.ops)), p.inputs, p.outputs).validate()
    bad = Op("rescale", ["input"], ["logits"], {}, {"M": torch.tensor([0.5]), "shift": torch.tensor([1])})
    with pytest.raises(ProgramError, match="integer tensor"):
        Program(p.values, [bad], p.inputs, p.outputs).validate()
    with pytest.raises(ProgramError, match="missing"):
        Program(p.values, [Op("clamp", ["input"], ["logits"], {"bits": 8})], p.inputs, p.outputs).validate()


def test_every_op_kind_has_load_time_checks():
    """A file's program is checked op by op (validate.KIND_CHECKS): every kind of the op set has its
    checks, and no check is registered for a kind the op set does not define."""
    from intasr.program.validate import KIND_CHECKS

    assert set(KIND_CHECKS) == set(OPS)


def test_reference_backends_have_a_kernel_for_every_op():
    assert TorchReference().missing_kernels() == []
    assert NumpyReference().missing_kernels() == []


def test_lengths_are_checked():
    p = _one_conv_program()
    x = torch.zeros(2, 2, 5, dtype=torch.int8)
    with pytest.raises(ValueError, match="one entry per batch item"):
        TorchReference().run(p, x, torch.tensor([5]))
    with pytest.raises(ValueError, match=r"lengths must lie in 1\.\.5"):
        TorchReference().run(p, x, torch.tensor([5, 6]))
    with pytest.raises(TypeError, match="integer input"):
        TorchReference().run(p, x.float(), torch.tensor([5, 5]))


def test_program_table_lists_every_op(pinned_case):
    _, qmodel = pinned_case
    rows = qmodel.program.table()
    assert len(rows) == len(qmodel.program.ops)
    convs = [r for r in rows if r["kind"] == "conv1d"]
    assert all(r["bound"] > 0 and r["out"] in ("int32", "int64") for r in convs)


def test_one_pass_calibration_reproduces_the_recorded_one():
    """calibration.collect (one hooked pass) measures what the old calibrate / conv_input_means
    measured when the pins were recorded (float tolerance: summation order depends on threads)."""
    from intasr.calibration import collect
    from pinned import observer_key

    model = pinned_float_model("quartznet5x5")
    stats = collect(model, random_mels(1, 4, 200, seed=1), means=True)
    rec = PINS["quartznet5x5_w6a8_bc"]
    alphas = {observer_key(k): o.alpha() for k, o in stats.observers.items()}
    assert alphas.keys() == rec["alphas"].keys()
    for k, a in rec["alphas"].items():
        assert abs(alphas[k] - a) <= 1e-5 * abs(a), k
    names = {m: n for n, m in model.named_modules()}
    means = {names[c]: m for c, m in stats.input_means.items()}
    assert means.keys() == rec["means"].keys()
    for n, v in rec["means"].items():
        torch.testing.assert_close(means[n], torch.tensor(v, dtype=torch.float64), rtol=1e-5, atol=1e-6)
