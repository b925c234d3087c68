"""integer_checks on a random QuartzNet-5x5 converted to W8A8 (no shared data needed)."""

import pandas as pd
import pytest
import soundfile
import torch

from conftest import random_quartznet5x5, speech_like_audio

from intasr import integer_checks as checks
from intasr.calibration import calibrate
from intasr.convert import convert
from intasr.data import load_dataset
from intasr.program.torch_ref import TorchReference
from intasr.verify import DtypeRecorder


@pytest.fixture(scope="module")
def batch():
    return speech_like_audio((1.0, 0.7, 0.5), seed=0)


@pytest.fixture(scope="module")
def model(batch):
    return random_quartznet5x5(batch)


@pytest.fixture(scope="module")
def qmodels(model, batch):
    with torch.no_grad():
        calib = [model.features(*batch)]
    observers = calibrate(model, calib)
    return {"W8A8": convert(model, observers, 8, 8), "W6A8": convert(model, observers, 6, 8)}


@pytest.fixture(scope="module")
def utts(tmp_path_factory, batch):
    root = tmp_path_factory.mktemp("ls")
    chapter = root / "19" / "198"
    chapter.mkdir(parents=True)
    audio, lengths = batch
    for i, n in enumerate(lengths.tolist()):
        soundfile.write(chapter / f"19-198-{i:04d}.flac", audio[i, :n].numpy(), 16000)
    (chapter / "19-198.trans.txt").write_text("".join(f"19-198-{i:04d} A CAT\n" for i in range(3)))
    return load_dataset(root)


def test_value_lengths_name_a_lengths_value_of_the_trace(qmodels, model, batch):
    qm = qmodels["W8A8"]
    with torch.inference_mode():
        mel, mel_len = model.features(*batch)
        env = TorchReference().trace(qm.program, qm.quantize_input(mel), mel_len)
    lens = checks.value_lengths(qm.program)
    for op in qm.program.ops:
        if op.kind not in ("frames",):
            t, n = env[op.outputs[0]], env[lens[op.outputs[0]]]
            assert n.dtype == torch.int64 and int(n.max()) <= t.shape[-1]
    some = [op for op in qm.program.ops if op.kind != "frames"][:6]  # a frames op's output is lengths
    rows = checks.traced_rows(qm.program, env, some)
    assert [r["op"] for r in rows] == [op.name for op in some]
    assert all(r["max |valid|"] <= max(abs(r["min"]), abs(r["max"])) for r in rows)


def test_requantize_rows_cover_every_multiplier(qmodels):
    program = qmodels["W8A8"].program
    rows = checks.requantize_rows(program)
    assert len(rows) == sum("M" in op.params for op in program.ops)
    assert all(r["M_max_bits"] <= 31 and r["m_min"] <= r["m_max"] for r in rows)


def test_dtype_census_counts_what_the_recorder_saw(qmodels, model, batch):
    qm = qmodels["W8A8"]
    with torch.inference_mode():
        mel, mel_len = model.features(*batch)
        q = qm.quantize_input(mel)  # the float side stops here
    with DtypeRecorder() as rec:
        qm.forward_int(q, mel_len)
    census = checks.dtype_census(rec)
    assert census["float ops"] == 0 and census["ops"] == len(rec.records) == sum(census["dtypes"].values())
    assert sum(census["aten ops"].values()) == census["ops"]


def test_numpy_replay_and_batch_invariance(qmodels, utts):
    qm = qmodels["W8A8"]
    replay = checks.numpy_replay(qm, utts[2], max_frames=32)
    assert replay["exact"] and replay["max_diff"] == 0 and replay["frames"] == 32
    rows = checks.batch_invariance_rows(qm, utts)
    assert [r["utterance"] for r in rows] == [u.id for u in utts]
    assert all(r["alone == in batch"] and r["garbage padding == clean"] for r in rows)
    assert rows[0]["padded frames in batch"] < rows[1]["padded frames in batch"] < rows[2]["padded frames in batch"]


def test_logit_agreement_rows_and_pooling(model, qmodels, utts):
    out = checks.logit_agreement(model, qmodels, utts[:2])
    assert [(r["bits"], r["utterance"]) for r in out["rows"]] == [(t, u.id) for u in utts[:2] for t in qmodels]
    assert set(out["traces"]) == set(qmodels) and set(out["acc_seen"]) == {op.name for op in qmodels["W8A8"].int_convs()}
    agree = pd.DataFrame(out["rows"])
    pooled = checks.pooled_agreement(agree)
    for tag, g in agree.groupby("bits"):
        assert pooled.loc[tag, "rel_l2"] == pytest.approx((g.err2.sum() / g.ref2.sum()) ** 0.5)
        assert pooled.loc[tag, "argmax_agree %"] == pytest.approx(100 * g.argmax_same.sum() / g.frames.sum())
    n_blocks = len(model.encoder.encoder)
    lay = checks.block_error_table(out["blocks"], n_blocks)
    assert sorted(set(lay.block)) == list(range(n_blocks)) and lay.name.iloc[0] == "C1"
    acc = pd.DataFrame(checks.accumulator_rows(qmodels["W8A8"], out["acc_seen"]))
    assert (acc["seen max |acc|"] <= acc["worst-case |acc|"]).all()
    assert ((acc["bound / int32 max"] > 1) == (acc.accumulator == "int64")).all()


def test_block_error_table_pools_before_the_ratio():
    rows = [{"bits": "W8A8", "utterance": u, "block": 0, "err2": e, "ref2": r} for u, e, r in
            [("a", 1.0, 100.0), ("b", 3.0, 300.0), ("c", 0.0, 0.0)]]
    lay = checks.block_error_table(rows, n_blocks=4)
    assert len(lay) == 1 and lay.rel_l2.iloc[0] == pytest.approx(0.1) and lay.name.iloc[0] == "C1"
