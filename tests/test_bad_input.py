"""Every subcommand on bad input: one line naming the file and the problem, exit 2, no traceback,
nothing half-written; odd but valid audio (silence, clipping, 8 kHz, 44.1 kHz stereo, 10 minutes)
transcribed; hostile model files refused before they are read (issue 13)."""

import io
import json
import struct
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import fill_bn_statistics, randomize_weights, speech_like_audio

import intasr
from intasr.cli import main
from intasr.program.aqz import FORMAT, HEADER

RATE = 16000


def _tiny_config():
    from intasr.models.configs import block_config, convasr_config

    return convasr_config([block_config(32, 1, 11, stride=2, residual=False), block_config(32, 2, 13),
                   block_config(48, 1, 1, residual=False, separable=False)], 48)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny float ConvASR (.nemo), its W8A8 integer model (.aqz), and audio files good and bad."""
    from intasr.calibration import random_mels
    from intasr.integer_model import save_quantized
    from intasr.models import ConvASR, save_model
    from intasr.quantize import quantize

    d = tmp_path_factory.mktemp("bad_input")
    torch.manual_seed(0)
    model = ConvASR(_tiny_config()).eval()
    randomize_weights(model, seed=5)
    audio, lengths = speech_like_audio()
    with torch.no_grad():
        mel, mel_len = model.features(audio, lengths)
    fill_bn_statistics(model.encoder, mel, mel_len)
    nemo = save_model(model, d / "tiny.nemo")
    aqz = save_quantized(quantize(model, random_mels(1, 2, 100), 8, 8), d / "tiny.aqz")

    speech = audio[0, :int(lengths[0])].numpy()
    a = d / "audio"
    a.mkdir()
    sf.write(a / "speech.wav", speech, RATE)
    files = {"speech": a / "speech.wav"}
    (d / "empty.wav").write_bytes(b"")
    files["empty_bytes"] = d / "empty.wav"
    sf.write(d / "zero.wav", np.zeros(0, np.float32), RATE)
    files["zero_length"] = d / "zero.wav"
    sf.write(d / "silence.wav", np.zeros(2 * RATE, np.float32), RATE)
    files["silence"] = d / "silence.wav"
    sf.write(d / "clipped.wav", np.clip(speech * 40, -1, 1), RATE)  # hard-clipped speech
    files["clipped"] = d / "clipped.wav"
    nan = speech.copy()
    nan[100] = np.nan
    sf.write(d / "nan.wav", nan, RATE, subtype="FLOAT")
    files["nan"] = d / "nan.wav"
    inf = speech.copy()
    inf[5] = np.inf
    sf.write(d / "inf.wav", inf, RATE, subtype="FLOAT")
    files["inf"] = d / "inf.wav"
    from scipy.signal import resample_poly

    sf.write(d / "narrow_8k.wav", resample_poly(speech, 1, 2), 8000)
    files["8k"] = d / "narrow_8k.wav"
    s44 = resample_poly(speech, 441, 160)
    sf.write(d / "cd_44k_stereo.wav", np.stack([s44, 0.7 * s44], axis=1), 44100)
    files["44k_stereo"] = d / "cd_44k_stereo.wav"
    (d / "no_audio").mkdir()
    (d / "no_audio" / "notes.txt").write_text("no audio here")
    files["no_audio_dir"] = d / "no_audio"
    return {"dir": d, "nemo": nemo, "aqz": aqz, "model": model, "files": files}


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_clean_error(rc, out, err, *names):
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err + out, err
    for name in names:
        assert name in err, (name, err)


# --------------------------------------------------------------------------- audio

@pytest.mark.parametrize("kind", ["empty_bytes", "zero_length", "nan", "inf"])
@pytest.mark.parametrize("model", ["nemo", "aqz"])
def test_unusable_audio_is_one_line_exit_2(work, capsys, tmp_path, kind, model):
    path = work["files"][kind]
    out_json = tmp_path / "out.json"
    rc, out, err = _cli(capsys, "transcribe", "--model", work[model], work["files"]["speech"], path,
                        "--json", out_json)
    _assert_clean_error(rc, out, err, path.name)
    assert out == "" and not out_json.exists()  # checked before decoding: nothing printed or written
    reason = {"empty_bytes": "audio", "zero_length": "empty", "nan": "NaN", "inf": "infinite"}[kind]
    assert reason in err


@pytest.mark.parametrize("model", ["nemo", "aqz"])
def test_odd_but_valid_audio_is_transcribed(work, capsys, tmp_path, model):
    """Silence, clipping, 8 kHz and 44.1 kHz stereo: transcribed (one line each, exit 0), with one
    note on the resampling; 8 kHz and 44.1 kHz give the 16 kHz file's text when the model is
    robust to the band limit, so only the format of the answer is asserted there."""
    f = work["files"]
    inputs = [f["silence"], f["clipped"], f["8k"], f["44k_stereo"], f["speech"]]
    out_json = tmp_path / "out.json"
    rc, out, err = _cli(capsys, "transcribe", "--model", work[model], *inputs, "--json", out_json)
    assert rc == 0, err
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(p) for p in inputs]
    assert "Traceback" not in err and len([e for e in err.splitlines() if "resampling" in e]) == 1
    rows = json.loads(out_json.read_text())
    assert [r["file"] for r in rows] == [str(p) for p in inputs]
    assert rows[0]["seconds"] == 2.0 and all(np.isfinite(w["start"]) for r in rows for w in r["words"])


def test_ten_minute_file_is_chunked_and_stitched(work, capsys, tmp_path):
    """A 10-minute file goes through in 40 s windows (bounded memory) with one note; the
    transcript is the windows' centre frames decoded once."""
    speech, _ = sf.read(work["files"]["speech"], dtype="float32")
    reps = int(np.ceil(600 * RATE / len(speech)))
    long = np.tile(np.concatenate([speech, np.zeros(RATE // 2, np.float32)]), reps)[:600 * RATE]
    path = tmp_path / "ten_minutes.flac"
    sf.write(path, long, RATE)
    out_json = tmp_path / "long.json"
    rc, out, err = _cli(capsys, "transcribe", "--model", work["aqz"], path, "--json", out_json)
    assert rc == 0, err
    assert "1 input(s) longer than 40 s are decoded in 40 s windows overlapping by 4 s" in err
    row = json.loads(out_json.read_text())[0]
    assert row["seconds"] == 600.0 and row["words"]
    ends = 0.0
    for w in row["words"]:
        assert ends <= w["start"] < w["end"] <= 600.05
        ends = w["end"]
    assert row["words"][-1]["end"] > 590  # the whole file, not the first window


class _FrameCoder(torch.nn.Module):
    """A fake CTC model whose output frame t emits the class written in the audio at frame t's
    samples: the transcript of a file is known exactly, so window stitching can be checked."""

    def __init__(self, hop=160, factor=2):
        super().__init__()
        self.labels = [" ", "a", "b", "c"]
        self.hop, self.factor = hop, factor
        self.config = {"encoder": {"subsampling_factor": factor}}
        self.preprocessor = torch.nn.Module()
        self.preprocessor.featurizer = torch.nn.Module()
        self.preprocessor.featurizer.hop_length = hop
        self.preprocessor.featurizer.sample_rate = RATE
        self.preprocessor.featurizer.n_fft = 512

    def features(self, audio, lengths):
        frames = lengths // self.hop + 1
        idx = torch.minimum(torch.arange(int(frames.max()))[None, :] * self.hop, lengths[:, None] - 1)
        return torch.gather(audio, 1, idx)[:, None, :], frames  # reads no padding, as the real models

    def forward_features(self, mel, lengths):
        codes = mel[:, 0, ::self.factor].round().long().clamp(0, len(self.labels))
        logits = torch.nn.functional.one_hot(codes, len(self.labels) + 1).float().transpose(1, 2)
        return logits, (lengths + self.factor - 1) // self.factor


def test_window_stitching_is_exact_on_a_frame_local_model():
    from intasr.api import Recognizer

    rng = np.random.default_rng(0)
    frame = 160 * 2
    codes = rng.choice([0, 1, 2, 3, 4, 4, 4], size=90 * RATE // frame)  # 4: blank
    wave = np.repeat(codes, frame).astype(np.float32)
    asr = Recognizer(_FrameCoder(), chunk_seconds=200)  # 90 s in one piece
    whole = asr.transcribe_detailed([wave], words=True)[0]
    notes = []
    asr.chunk_seconds, asr.overlap_seconds = 7, 2
    chunked = asr.transcribe_detailed([wave], words=True, batch_size=3, on_note=notes.append)[0]
    assert len(notes) == 1 and "7 s windows" in notes[0]
    assert chunked == whole and len(whole["text"]) > 1000


# --------------------------------------------------------------------------- inputs and outputs

def test_missing_inputs_folders_and_outputs(work, capsys, tmp_path):
    f = work["files"]
    rc, out, err = _cli(capsys, "transcribe", "--model", work["nemo"], f["no_audio_dir"])
    _assert_clean_error(rc, out, err, "no_audio", "no audio files")
    rc, out, err = _cli(capsys, "transcribe", "--model", work["nemo"], tmp_path / "nope.wav")
    _assert_clean_error(rc, out, err, "nope.wav")
    rc, out, err = _cli(capsys, "transcribe", "--model", tmp_path / "nope.nemo", f["speech"])
    _assert_clean_error(rc, out, err, "nope.nemo")
    # an output under a missing folder: the folder is created (documented), the file written whole
    deep = tmp_path / "new" / "deeper" / "out.json"
    rc, out, err = _cli(capsys, "transcribe", "--model", work["nemo"], f["speech"], "--json", deep)
    assert rc == 0 and json.loads(deep.read_text())[0]["file"] == str(f["speech"])
    # an output under a file cannot be created: refused before decoding
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc, out, err = _cli(capsys, "transcribe", "--model", work["nemo"], f["speech"], "--ctm", blocker / "o.ctm")
    _assert_clean_error(rc, out, err, "a_file")
    assert out == ""
    rc, out, err = _cli(capsys, "evaluate", "--model", work["nemo"], "--data", tmp_path / "nope")
    _assert_clean_error(rc, out, err, "nope")


def test_manifest_with_bad_lines(work, capsys, tmp_path):
    good = json.dumps({"audio_filepath": str(work["files"]["speech"]), "text": "a b"})
    cases = {
        "not_json.jsonl": good + "\n{not json\n",
        "no_path.jsonl": good + "\n" + json.dumps({"text": "x"}) + "\n",
        "bad_text.jsonl": json.dumps({"audio_filepath": "a.wav", "text": 3}) + "\n",
        "bad_duration.jsonl": json.dumps({"audio_filepath": "a.wav", "duration": "long"}) + "\n",
        "missing_audio.jsonl": json.dumps({"audio_filepath": "gone.wav", "text": "a"}) + "\n",
    }
    for name, text in cases.items():
        m = tmp_path / name
        m.write_text(text)
        want = "gone.wav" if name.startswith("missing") else name
        for cmd in (["transcribe", "--model", work["nemo"], m], ["evaluate", "--model", work["aqz"], "--data", m]):
            rc, out, err = _cli(capsys, *cmd)
            _assert_clean_error(rc, out, err, want)
    binary = tmp_path / "speech_copy.dat"  # audio given where a manifest is expected
    binary.write_bytes(work["files"]["speech"].read_bytes())
    rc, out, err = _cli(capsys, "evaluate", "--model", work["nemo"], "--data", binary)
    _assert_clean_error(rc, out, err, "speech_copy.dat", "audio file")
    rc, out, err = _cli(capsys, "evaluate", "--model", work["nemo"], "--data", work["files"]["speech"])
    _assert_clean_error(rc, out, err, "speech.wav", "transcribe")


# --------------------------------------------------------------------------- model files

def _npy_header(shape, dtype="<i1") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _hostile_aqz(path, good_aqz, tensor_bytes: bytes, compress=zipfile.ZIP_STORED):
    """A copy of a real .aqz whose first tensor member is replaced."""
    with zipfile.ZipFile(good_aqz) as src, zipfile.ZipFile(path, "w", compression=compress) as dst:
        header = json.loads(src.read(HEADER))
        first = next(iter(header["tensors"].values()))
        for name in src.namelist():
            dst.writestr(name, tensor_bytes if name == first else src.read(name))
    return path


def test_hostile_and_truncated_aqz_refused_before_reading(work, capsys, tmp_path, monkeypatch):
    import numpy.lib.format as npformat

    good = work["aqz"]
    huge = _hostile_aqz(tmp_path / "huge.aqz", good, _npy_header((10 * 2**30,)) + b"\x00" * 16)
    reads = []
    monkeypatch.setattr(np, "frombuffer", lambda *a, **k: reads.append(a) or pytest.fail("allocated"))
    rc, out, err = _cli(capsys, "transcribe", "--model", huge, work["files"]["speech"])
    _assert_clean_error(rc, out, err, "huge.aqz", "10737418240 bytes")
    monkeypatch.undo()
    assert not reads and npformat  # the 10 GB header was refused from the header alone

    negative = _hostile_aqz(tmp_path / "negative.aqz", good, _npy_header((-2, -4)) + b"\x00" * 8)
    rc, out, err = _cli(capsys, "transcribe", "--model", negative, work["files"]["speech"])
    _assert_clean_error(rc, out, err, "negative.aqz", "negative dimension")

    objects = _hostile_aqz(tmp_path / "objects.aqz", good, _npy_header((1,), "|O") + b"\x00" * 8)
    rc, out, err = _cli(capsys, "verify", objects)
    _assert_clean_error(rc, out, err, "objects.aqz", "dtype object")

    bomb = _hostile_aqz(tmp_path / "bomb.aqz", good, b"\x00" * 2**20, compress=zipfile.ZIP_DEFLATED)
    rc, out, err = _cli(capsys, "export", bomb, "--onnx", tmp_path / "x.onnx")
    _assert_clean_error(rc, out, err, "bomb.aqz", "compressed")
    assert not (tmp_path / "x.onnx").exists()

    trunc = tmp_path / "trunc.aqz"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    rc, out, err = _cli(capsys, "evaluate", "--model", trunc, "--data", tmp_path)
    _assert_clean_error(rc, out, err, "trunc.aqz")

    # the older torch container: a pickle that would run code is refused by the weights_only loader
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.aqz"
    torch.save({"format": FORMAT, "version": 2, "x": Evil()}, evil)
    rc, out, err = _cli(capsys, "transcribe", "--model", evil, work["files"]["speech"])
    _assert_clean_error(rc, out, err, "evil.aqz")
    assert "pwned" not in out


def test_corrupt_nemo_refused(work, capsys, tmp_path):
    hostile = tmp_path / "escape.nemo"
    with tarfile.open(hostile, "w") as tar:
        data = b"x"
        info = tarfile.TarInfo("../../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    trunc = tmp_path / "trunc.nemo"
    trunc.write_bytes(work["nemo"].read_bytes()[:5000])
    bomb = tmp_path / "bomb.nemo"  # 20 MB of zeros in a 20 kB gzip: refused before it is inflated
    with tarfile.open(bomb, "w:gz") as tar:
        info = tarfile.TarInfo("model_weights.ckpt")
        info.size = 20 * 2**20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert bomb.stat().st_size < 2**20
    for bad, why in [(hostile, "escapes"), (trunc, "trunc.nemo"), (bomb, "more than a")]:
        for cmd in (["transcribe", "--model", bad, work["files"]["speech"]],
                    ["quantize", "--model", bad, "--out", tmp_path / "q.aqz"],
                    ["synth", "--model", bad, "--out", tmp_path / "cache"]):
            rc, out, err = _cli(capsys, *cmd)
            _assert_clean_error(rc, out, err, bad.name, why)
    assert not (tmp_path.parent / "outside.txt").exists() and not (tmp_path / "q.aqz").exists()


def test_every_model_command_takes_both_kinds_or_says_why(work, capsys, tmp_path):
    """quantize / synth / grid / bench --model need the float model, verify / export / bench
    --quantized an integer one: the other kind is one line saying so."""
    nemo, aqz = work["nemo"], work["aqz"]
    for cmd, why in [
        (["quantize", "--model", aqz, "--out", tmp_path / "q.aqz"], "quantized integer model"),
        (["synth", "--model", aqz, "--out", tmp_path / "c"], "quantized integer model"),
        (["grid", "--model", aqz, "--out", tmp_path / "g.csv", "--data", tmp_path], "quantized integer model"),
        (["bench", "--model", aqz, "--quantized", aqz], "quantized integer model"),
        (["bench", "--model", nemo, "--quantized", nemo], "float .nemo"),
        (["verify", nemo], "float .nemo"),
        (["export", nemo, "--onnx", tmp_path / "m.onnx"], "float .nemo"),
    ]:
        rc, out, err = _cli(capsys, *cmd)
        _assert_clean_error(rc, out, err, why)
        assert str(nemo if "float" in why else aqz) in err
    assert not list(tmp_path.iterdir())  # nothing written
    for model in (nemo, aqz):  # evaluate and transcribe take both
        rc, out, err = _cli(capsys, "transcribe", "--model", model, work["files"]["speech"])
        assert rc == 0, err


def test_other_subcommands_bad_inputs(work, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for cmd, names in [
        (["restore-bn", "--folded", tmp_path / "nope.npz", "--out", tmp_path / "r.nemo"], ["nope.npz"]),
        (["restore-bn", "--folded", work["files"]["speech"], "--out", tmp_path / "r.nemo"], ["speech.wav"]),
        (["import-hama", "--hama", tmp_path / "nope.hama", "--out", tmp_path / "h.nemo"], ["nope.hama"]),
        (["evaluate", "--model", work["nemo"], "--data", empty], ["empty"]),
        (["verify", work["aqz"], "--data", empty], ["empty"]),
        (["quantize", "--model", work["nemo"], "--calibration", "real", "--calibration-data", empty,
          "--out", tmp_path / "q.aqz"], ["empty"]),
    ]:
        rc, out, err = _cli(capsys, *cmd)
        _assert_clean_error(rc, out, err, *names)
    assert not (tmp_path / "r.nemo").exists() and not (tmp_path / "q.aqz").exists()


def test_real_process_prints_no_traceback(work, tmp_path):
    for argv in (["transcribe", "--model", str(work["aqz"]), str(work["files"]["nan"])],
                 ["quantize", "--model", str(work["aqz"]), "--out", str(tmp_path / "q.aqz")],
                 ["verify", str(work["nemo"])]):
        proc = subprocess.run([sys.executable, "-m", "intasr.cli", *argv], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_api_raises_named_errors(work):
    asr = intasr.load(work["nemo"])
    with pytest.raises(ValueError, match="nan.wav.*NaN"):
        asr.transcribe([work["files"]["nan"]])
    with pytest.raises(ValueError, match="zero.wav.*empty"):
        asr.transcribe(work["files"]["zero_length"])
