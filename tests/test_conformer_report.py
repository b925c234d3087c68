"""conformer_report: the Conformer and its integer program as tables. The real hama Conformer-CTC
(shipped by the PyPI package) on synthetic speech-like audio, and small hand-made arrays."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import restored_hama_model, speech_like_audio

from intasr import conformer_report as cr
from intasr.program.torch_ref import TorchReference
from intasr.quantize import quantize

pytest.importorskip("hama")


@pytest.fixture(scope="module")
def hama_model():
    return restored_hama_model().eval()


@pytest.fixture(scope="module")
def audio():
    return speech_like_audio((2.0, 1.5, 1.0), seed=2)


@pytest.fixture(scope="module")
def w8a8(hama_model, audio):
    with torch.no_grad():
        return quantize(hama_model, [hama_model.features(*audio)], 8, 8)


def test_parameter_parts_cover_the_model(hama_model):
    parts = cr.parameter_parts(hama_model)
    assert parts["parameters"].sum() == cr.n_parameters(hama_model)
    assert parts["share %"].sum() == pytest.approx(100)
    n_layers = len(hama_model.encoder.layers)
    assert set(parts.loc[parts.part.str.startswith("layers."), "count"]) == {n_layers}
    values = cr.model_values(hama_model)
    assert values["hama_layers"] == str(n_layers) and float(values["hama_params_m"]) > 0
    assert cr.hyperparameters(hama_model)["parameters"] == f"{cr.n_parameters(hama_model):,}"


def test_walk_encoder_recomputes_block0_and_the_model(hama_model, audio):
    walk = cr.walk_encoder(hama_model, audio[0][:1], audio[1][:1])
    assert walk.block0_by_hand < 1e-4 and walk.walk_vs_forward < 1e-4
    assert len(walk.stages) == 3 + len(hama_model.encoder.layers) + 1
    assert walk.stages.stage.iloc[-1] == "decoder (logits)" and walk.stages["shape"].iloc[-1] == tuple(walk.logits.shape)


def test_engine_agreement_is_exact_on_its_own_log_probs(hama_model, audio):
    from intasr.models import ConformerCTC

    walk = cr.walk_encoder(hama_model, audio[0][:1], audio[1][:1])
    t = int(walk.lengths[0])
    own = ConformerCTC.log_probs(walk.logits)[0, :t].numpy()
    assert cr.engine_agreement(own, walk.logits, t) == (0.0, 1.0)
    shifted = own.copy()
    shifted[0] += 1.0
    shifted[0, own[0].argmin()] += 100.0          # frame 0 now has a different argmax
    diff, same = cr.engine_agreement(shifted, walk.logits, t)
    assert diff == pytest.approx(101.0) and same == pytest.approx(1 - 1 / t)
    with pytest.raises(ValueError):
        cr.engine_agreement(own[:-1], walk.logits, t)


def test_op_kinds_count_every_op(w8a8):
    kinds = cr.op_kinds(w8a8.program)
    assert kinds.ops.sum() == len(w8a8.program.ops) and kinds.ops.is_monotonic_decreasing
    role = dict(zip(kinds.kind, kinds.role))
    assert role["softmax"] == "non-linear (approximated)" and role["conv1d"] == "linear / exact"
    assert role["requantize"] == "requantization / bookkeeping"


def test_nonlinear_params_are_checked_against_the_program(w8a8):
    p = cr.nonlinear_params(w8a8.program)
    values = cr.nonlinear_values(p)
    assert values["gelu_qone"] == str(p.ops["gelu"].attrs["q_one"]) and values["sm_B"] == str(p.softmax.out_bits)
    consts = cr.nonlinear_constants(p)
    assert list(consts.kind) == ["softmax (i-exp)", "swish (sigmoid)", "glu (sigmoid)", "gelu (i-GELU)", "layernorm"]
    tampered = copy.deepcopy(w8a8.program)
    gelu = next(op for op in tampered.ops if op.kind == "gelu")
    gelu.attrs["q_one"] += 1
    with pytest.raises(ValueError):
        cr.nonlinear_params(tampered)


def test_nonlinear_sweeps_cover_every_code(w8a8):
    p = cr.nonlinear_params(w8a8.program)
    sweeps = cr.nonlinear_sweeps(w8a8.program, p, exp_range=12.0)
    errors = cr.sweep_errors(sweeps).set_index("function")
    assert errors.loc["sigmoid (inside Swish)", "inputs"] == 256 and errors.loc["i-GELU (subsampling)", "inputs"] == 256
    x = sweeps["i-exp (softmax, block 0)"][0]
    assert float(x.max()) == 0 and float(x.min()) >= -12 - p.softmax.in_scale
    # i-exp and the sigmoid stay far inside half an 8-bit step; Swish inside half of the step after it
    assert errors.loc["i-exp (softmax, block 0)", "max |err|"] < 1 / 256
    swish = errors.loc["Swish (FF1, block 0)"]
    assert swish["max |err|"] < swish["8-bit step after it"] / 2
    gain = cr.gelu_gain(p, sweeps["i-GELU (subsampling)"])
    assert gain["gain"] <= 0 and p.gelu.q_one == int(np.floor(gain["q_one_exact"]))


def test_nonlinear_code_check_on_a_traced_batch(hama_model, w8a8, audio):
    with torch.inference_mode():
        mel, lengths = hama_model.features(*audio)
        env = TorchReference().trace(w8a8.program, w8a8.quantize_input(mel), lengths)
    codes = cr.nonlinear_code_check(hama_model, w8a8.program, env, env["logits_lengths"])
    assert len(codes) == sum(op.kind in cr.NONLINEAR for op in w8a8.program.ops)
    assert (codes["codes differ"] <= codes["values"]).all() and (codes["values"] > 0).all()
    assert codes[codes.kind.isin(["softmax", "layernorm"])]["max |approx. err| / step"].isna().all()
    by_kind = cr.codes_by_kind(codes)
    assert by_kind["ops"].sum() == len(codes) and by_kind["values"].sum() == codes["values"].sum()
    assert (by_kind.loc[["swish", "glu", "softmax", "layernorm"], "codes differ %"] < 5).all()


def test_codes_by_kind_on_a_hand_made_frame():
    codes = pd.DataFrame({"kind": ["swish", "gelu", "swish"], "op": ["a", "b", "c"], "values": [100, 50, 300],
                          "codes differ": [1, 5, 3], "max code diff": [1, 1, 2],
                          "max |approx. err| / step": [0.1, 0.7, 0.3]})
    k = cr.codes_by_kind(codes)
    assert list(k.index) == ["swish", "gelu"]
    assert k.loc["swish", "ops"] == 2 and k.loc["swish", "values"] == 400 and k.loc["swish", "codes differ %"] == 1.0
    assert k.loc["swish", "max_code_diff"] == 2 and k.loc["swish", "max_err"] == 0.3
    assert k.loc["gelu", "codes differ %"] == 10.0


def test_valid_logits_equal_and_argmax_agreement():
    a = np.zeros((2, 3, 4), np.int64)
    a[0, :, 0] = [1, 5, 2]
    b = a.copy()
    b[1, :, 3] = 9                        # a padded frame of utterance 1 (length 2)
    lengths = torch.tensor([4, 2])
    assert cr.valid_logits_equal(a, lengths, torch.from_numpy(b), lengths)
    assert not cr.valid_logits_equal(a, lengths, b, torch.tensor([4, 3]))
    b[0, 1, 0] = 0                        # a valid logit
    assert not cr.valid_logits_equal(a, lengths, b, lengths)
    agree = cr.frame_argmax_agreement(torch.from_numpy(a), torch.from_numpy(b), lengths)
    assert agree == [0.75, 1.0]


def test_size_bops_table_against_its_own_numbers(hama_model):
    from intasr import experiments

    paper = pd.DataFrame([{"w_bits": w, "a_bits": 8 if w < 32 else 32,
                           "size_mb": experiments.model_size_mb(hama_model, w),
                           "bops_t": experiments.bops(hama_model, w, 8 if w < 32 else 32) / 1e12} for w in (8, 32)])
    t = cr.size_bops_table(hama_model, hama_model, paper, ours=((32, 32),))
    assert list(t["W/A"]) == ["32/32", "8/8", "32/32"]                 # the paper's rows widest first
    assert (t["size rel. err %"].iloc[:2] == 0).all() and (t["BOPs rel. err %"].iloc[:2] == 0).all()
    assert t["TBOPs with attention"].iloc[0] > t["TBOPs (ours)"].iloc[0]
