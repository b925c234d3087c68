"""The `hama` package's phoneme Conformer-CTC in our Conformer (models/hama.py).

Reference: the package's own native engine, `hama._engine.AsrSession(...).run(["log_probs",
"out_lengths"], ...)`, on real test-other utterances. Tolerance of the log-prob comparison: the
weights are stored in float16 and both sides compute in float32 (the engine upcasts at load), so
the difference is float32 summation order and transcendental implementations only; measured max
|log-prob difference| is 0.0088 over whole utterances (typically < 1e-3), and the frame argmax is
identical. We assert 0.05, and identical frame argmax and greedy transcripts.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

hama = pytest.importorskip("hama")

from intasr.audio import ConvStftFrontend  # noqa: E402
from intasr.data import load_batch, load_dataset  # noqa: E402
from intasr.evaluate import apply_decoding, decode_batch, evaluate  # noqa: E402
from intasr.models.checkpoint import CheckpointError, load_model  # noqa: E402
from intasr.models.conformer import ConformerCTC  # noqa: E402
from intasr.models.hama import (MAGIC, HamaEngine, g2p_references, hama_labels, load_hama_model, parse_hama,  # noqa: E402
                                  read_hama, restore_conformer_bn, scored_phonemes, write_hama)
from intasr.text import token_error_summary  # noqa: E402

LOGPROB_TOL = 0.05


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    return load_hama_model()


@pytest.fixture(scope="module")
def engine():
    try:
        return HamaEngine()
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def few_utts(test_other_dir):
    utts = load_dataset(test_other_dir)
    return [utts[i] for i in (2, 5, 13)]  # three utterances of 3-5 s, two speakers


# --- the file format --------------------------------------------------------------------------

def test_reader_round_trip_on_a_tiny_file(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b.weight": np.array([1.5, -2.0], np.float16),
               "scalar": np.array(3.0, np.float32), "ids": np.array([1, 2, 3], np.int64)}
    path = write_hama(tmp_path / "t.hama", tensors)
    data = path.read_bytes()
    assert data[:6] == MAGIC and data[6] == 1 and struct.unpack_from("<I", data, 8)[0] == 4
    pkg = read_hama(path)
    assert (pkg.version, pkg.kind) == (1, 2)
    assert [t.name for t in pkg.infos] == list(tensors)
    for name, arr in tensors.items():
        assert pkg.tensors[name].dtype == arr.dtype and np.array_equal(pkg.tensors[name], arr)
    assert all(t.offset % 16 == 0 for t in pkg.infos)


def _corrupt(tmp_path, data: bytes, name="bad.hama"):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(CheckpointError) as e:
        read_hama(p)
    assert str(p) in str(e.value)
    return str(e.value)


def test_reader_errors_name_file_and_problem(tmp_path):
    good = write_hama(tmp_path / "good.hama", {"w": np.ones((4, 4), np.float16), "v": np.zeros(3, np.float32)})
    data = good.read_bytes()
    assert "shorter than the 12-byte header" in _corrupt(tmp_path, data[:7])
    assert "magic" in _corrupt(tmp_path, b"NOTHAM" + data[6:])
    assert "version" in _corrupt(tmp_path, data[:6] + b"\x09" + data[7:])
    assert "truncated header" in _corrupt(tmp_path, data[:20])
    assert "truncated: tensor" in _corrupt(tmp_path, data[:-5])
    many = data[:8] + struct.pack("<I", 1000) + data[12:]
    _corrupt(tmp_path, many)                              # reads padding and data as table entries
    # nbytes that disagrees with the shape
    off = data.index(b"w") + 1 + 2 + 8   # name, dtype+rank, dims
    wrong = bytearray(data)
    struct.pack_into("<Q", wrong, off + 8, 30)
    assert "bytes stored but shape" in _corrupt(tmp_path, bytes(wrong))
    bad_dtype = bytearray(data)
    bad_dtype[data.index(b"w") + 1] = 77
    assert "unknown dtype" in _corrupt(tmp_path, bytes(bad_dtype))
    nan = write_hama(tmp_path / "nan.hama", {"w": np.array([np.nan], np.float32)})
    with pytest.raises(CheckpointError, match="NaN"):
        read_hama(nan)
    with pytest.raises(CheckpointError, match="no such"):
        read_hama(tmp_path / "missing.hama")


def test_shipped_file_layout():
    pkg = read_hama()
    assert (pkg.version, pkg.kind, len(pkg.infos)) == (1, 2, 119)
    assert pkg.tensors["mel_fb"].shape == (201, 80) and pkg.tensors["mel_fb"].dtype == np.float32
    assert pkg.tensors["stft_real_kernel"].shape == (201, 1, 400)
    assert pkg.tensors["acoustic_model.model.proj.weight"].shape == (191, 144, 1)
    assert pkg.tensors["onnx::Conv_801"].shape == (144, 80, 3)
    # data starts at the header end rounded up to 16, and the last tensor ends at the file end
    end = max(t.offset + t.nbytes for t in pkg.infos)
    from importlib import resources

    size = len(resources.files("hama.assets").joinpath("asr_waveform.hama").read_bytes())
    header = 12 + sum(2 + len(t.name.encode()) + 2 + 4 * len(t.shape) + 16 for t in pkg.infos)
    assert (header + 15) // 16 * 16 + end == size


# --- the model against the package's engine ------------------------------------------------------

def test_model_is_our_conformer(model):
    assert isinstance(model, ConformerCTC)
    assert len(model.labels) == 190 and model.labels[-1] == "<wb>"
    assert model.decoder.num_classes == 191
    assert isinstance(model.featurizer, ConvStftFrontend)
    assert len(model.encoder.layers) == 4


def test_log_probs_match_the_engine(model, engine, few_utts):
    audio, lengths = load_batch(few_utts)
    with torch.no_grad():
        logits, out_len = model(audio, lengths)      # one padded batch: also checks the masks
    ours = model.log_probs(logits).numpy()
    worst = 0.0
    for i in range(len(few_utts)):
        ref = engine.log_probs(audio[i, :lengths[i]].numpy())
        assert int(out_len[i]) == len(ref)
        got = ours[i, :len(ref)]
        worst = max(worst, float(np.abs(got - ref).max()))
        assert np.array_equal(got.argmax(-1), ref.argmax(-1))
    assert worst < LOGPROB_TOL, f"max |log-prob difference| {worst}"


def test_greedy_transcripts_match_the_engine(model, engine, few_utts):
    audio, lengths = load_batch(few_utts)
    with torch.no_grad():
        logits, out_len = model(audio, lengths)
    ours = decode_batch(model, logits, out_len)
    for i in range(len(few_utts)):
        assert ours[i] == engine.phonemes(audio[i, :lengths[i]].numpy()) and len(ours[i]) > 10


def test_decoding_applies_temperature_and_blank_bias(model):
    blank = len(model.labels)
    logits = torch.zeros(1, blank + 1, 2)
    logits[0, blank, :] = 0.05       # the blank wins by a margin smaller than 0.95 * 0.1
    logits[0, 7, :] = 0.0
    adjusted = apply_decoding(model, logits)
    assert int(logits[0, :, 0].argmax()) == blank
    assert int(adjusted[0, :, 0].argmax()) != blank

    class IntModel:  # an integer model: int logits in units of logit_scale (integer_model.IntegerModel)
        labels, config, logit_scale = model.labels, model.config, 0.01

    int_logits = (logits / 0.01).round().to(torch.int32)
    assert torch.allclose(apply_decoding(IntModel(), int_logits), adjusted, atol=1e-6)


def test_front_end_is_batch_invariant(model, few_utts):
    audio, lengths = load_batch(few_utts)
    mel, frames = model.features(audio, lengths)
    for i in range(len(few_utts)):
        solo, n = model.features(audio[i:i + 1, :lengths[i]], lengths[i:i + 1])
        assert int(n[0]) == int(frames[i]) == int(lengths[i]) // 160 + 1
        assert torch.equal(solo[0], mel[i, :, :solo.shape[2]])
        assert (mel[i, :, int(n[0]):] == 0).all()


# --- import-hama, BN restoration -------------------------------------------------------------

def test_import_hama_round_trip(tmp_path, model, few_utts):
    from intasr.cli import main

    out = tmp_path / "hama.nemo"
    assert main(["import-hama", "--out", str(out)]) == 0
    loaded = load_model(out)
    assert isinstance(loaded, ConformerCTC) and loaded.labels == model.labels
    assert loaded.config["decoding"] == {"strategy": "greedy", "temperature": 0.95, "blank_bias": -0.1}
    audio, lengths = load_batch(few_utts[:2])
    with torch.no_grad():
        a, la = model(audio, lengths)
        b, lb = loaded(audio, lengths)
    assert torch.equal(la, lb) and torch.equal(a, b)


def test_restored_batchnorm_keeps_the_function(tmp_path, model, train_clean_dir, few_utts):
    restored = load_hama_model()
    train = load_dataset(train_clean_dir, require_text=False, limit=4)
    stats = restore_conformer_bn(restored, [load_batch(train[:2]), load_batch(train[2:])], progress=False)
    assert len(stats) == 4
    for layer in restored.encoder.layers:
        bn = layer.conv.batch_norm
        assert bn.running_mean.abs().max() > 1e-3 and (bn.running_var > 0).all()
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var), atol=1e-2)
    with pytest.raises(ValueError, match="identity form"):
        restore_conformer_bn(restored, [load_batch(train[:1])], progress=False)
    from intasr.models import save_model

    path = save_model(restored, tmp_path / "restored.nemo")
    reloaded = load_model(path)
    audio, lengths = load_batch(few_utts)
    with torch.no_grad():
        lf, of = model(audio, lengths)
        lr, orr = reloaded(audio, lengths)
    valid = torch.arange(lf.shape[2])[None, :] < of[:, None]
    pf, pr = model.log_probs(lf), reloaded.log_probs(lr)
    assert torch.equal(of, orr)
    assert (pf - pr)[valid].abs().max() < 2e-3          # measured 1.8e-4 (float32 round-off)
    assert torch.equal(pf.argmax(-1)[valid], pr.argmax(-1)[valid])


# --- phoneme error rate ------------------------------------------------------------------------

def test_token_error_summary():
    refs = [["a", "b", "c"], ["d", "e"]]
    hyps = [["a", "x", "c", "y"], ["d", "e"]]
    s = token_error_summary(refs, hyps, n_boot=200)
    assert s["per"] == pytest.approx(100 * 2 / 5) and s["phonemes"] == 5 and s["phoneme_errors"] == 2
    assert s["utterances"] == 2 and s["ci95"][0] <= s["per"] <= s["ci95"][1]
    with pytest.raises(ValueError, match="reference 1 is empty"):
        token_error_summary([["a"], []], [["a"], []])


def test_scored_phonemes_drop_boundaries_and_spaces():
    assert scored_phonemes(["ð", "<wb>", " ", "ə", "<blank>", "s"]) == ["ð", "ə", "s"]
    assert set(hama_labels()) >= {"ð", "ə", "<wb>"}


def test_g2p_references_are_cached(tmp_path, monkeypatch):
    refs = g2p_references(["THE CAT", "a dog"], cache_dir=tmp_path)
    assert refs[0][0] == "ð" and all(p.strip() for r in refs for p in r)
    files = list(tmp_path.glob("hama-*.json"))
    assert len(files) == 1 and set(json.loads(files[0].read_text())) == {"the cat", "a dog"}

    import hama.inference

    class NoG2P:
        def __init__(self, *a, **k):
            raise AssertionError("G2P ran although every text was cached")

    monkeypatch.setattr(hama.inference, "G2PModel", NoG2P)
    assert g2p_references(["the cat", "A DOG"], cache_dir=tmp_path) == refs
    files[0].write_text("{not json")                     # a damaged cache is rebuilt, not trusted
    monkeypatch.undo()
    assert g2p_references(["the cat"], cache_dir=tmp_path) == refs[:1]


def test_evaluate_reports_per(model, few_utts, tmp_path):
    result = evaluate(model, few_utts, progress=False, g2p_cache=tmp_path)
    assert "per" in result and "wer" not in result
    assert result["phonemes"] > 50 and 0 <= result["per"] < 40
    assert all(t["hyp"] and t["ref"] for t in result["transcripts"])


def test_checkpoint_without_front_end_weights_is_refused(tmp_path, model):
    from intasr.models.checkpoint import write_nemo

    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("preprocessor.")}
    path = write_nemo(tmp_path / "nofe.nemo", model.config, sd)
    with pytest.raises(CheckpointError, match="preprocessor.featurizer"):
        load_model(path)
