"""`intasr transcribe` and `intasr.load(...).transcribe(...)`: any audio, any model, clear errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import fill_bn_statistics, randomize_weights

import intasr
from intasr.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _chirp(seconds: float, rate: int, f0: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * f0 * t * (1 + t)) + 0.05 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A small float QuartzNet (.nemo), its W8A8 integer model (.aqz) and audio files of several
    formats, rates and channel counts."""
    from intasr.calibration import random_mels
    from intasr.integer_model import save_quantized
    from intasr.models import ConvASR, config_for, save_model
    from intasr.quantize import quantize

    d = tmp_path_factory.mktemp("transcribe")
    torch.manual_seed(0)
    model = ConvASR(config_for("quartznet5x5")).eval()
    randomize_weights(model, seed=3)
    waves = [_chirp(s, 16000, f, i) for i, (s, f) in enumerate([(1.0, 200), (1.5, 500), (0.6, 800), (2.5, 1100)])]
    audio = torch.zeros(len(waves), max(map(len, waves)))
    for i, w in enumerate(waves):
        audio[i, :len(w)] = torch.from_numpy(w)
    with torch.no_grad():
        mel, mel_len = model.features(audio, torch.tensor([len(w) for w in waves]))
    fill_bn_statistics(model.encoder, mel, mel_len)  # BN statistics that make the outputs vary
    nemo = save_model(model, d / "small.nemo")
    aqz = save_quantized(quantize(model, random_mels(1, 2, 100), 8, 8), d / "small.aqz")

    files = []
    stereo = _chirp(1.5, 8000, 300, 10)
    sf.write(d / "a_8k_stereo.wav", np.stack([stereo, 0.5 * stereo], axis=1), 8000)
    files.append(d / "a_8k_stereo.wav")
    sf.write(d / "b_16k.flac", _chirp(2.0, 16000, 600, 11), 16000)
    files.append(d / "b_16k.flac")
    (d / "sub" / "deeper").mkdir(parents=True)
    sf.write(d / "sub" / "deeper" / "c_44k.wav", _chirp(0.8, 44100, 900, 12), 44100)
    files.append(d / "sub" / "deeper" / "c_44k.wav")
    sf.write(d / "sub" / "d_16k.ogg", _chirp(1.2, 16000, 400, 13), 16000)
    files.append(d / "sub" / "d_16k.ogg")
    return {"dir": d, "nemo": nemo, "aqz": aqz, "files": files}


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _lines(out: str) -> list[tuple[str, str]]:
    return [tuple(line.split("\t", 1)) for line in out.splitlines()]


@pytest.mark.parametrize("kind", ["nemo", "aqz"])
def test_cli_one_line_per_file_in_order_json_and_one_note(workdir, capsys, tmp_path, kind):
    files = workdir["files"]
    inputs = [files[2], files[0], files[1]]  # not sorted by name or length
    out_json, out_ctm = tmp_path / "out.json", tmp_path / "new" / "out.ctm"  # a missing folder is created
    rc, out, err = _cli(capsys, "transcribe", "--model", workdir[kind], *inputs, "--json", out_json,
                        "--ctm", out_ctm)
    assert rc == 0, err
    lines = _lines(out)
    assert [p for p, _ in lines] == [str(f) for f in inputs]
    notes = [line for line in err.splitlines() if "resampl" in line]
    assert len(notes) == 1 and "8000 Hz" in notes[0] and "44100 Hz" in notes[0] and "mono" in notes[0], err
    rows = json.loads(out_json.read_text())
    assert [r["file"] for r in rows] == [str(f) for f in inputs]
    assert [r["text"] for r in rows] == [t for _, t in lines]
    assert [r["seconds"] for r in rows] == pytest.approx([0.8, 1.5, 2.0], abs=1e-3)
    for r in rows:  # word time stamps from the CTC frames: the transcript's words, in order, in the audio
        _check_words(r)
    # CTM: <file-id> 1 <start> <duration> <word>, the same words and times as the JSON
    ctm = [line.split() for line in out_ctm.read_text().splitlines()]
    expected = [[Path(r["file"]).stem, "1", f"{w['start']:.2f}", f"{w['end'] - w['start']:.2f}", w["word"]]
                for r in rows for w in r["words"]]
    assert ctm == expected and len(ctm) == sum(len(r["text"].split()) for r in rows)


def _check_words(row: dict) -> None:
    words = row["words"]
    assert " ".join(w["word"] for w in words) == " ".join(row["text"].split())
    ends = 0.0
    for w in words:
        assert ends <= w["start"] < w["end"] <= row["seconds"] + 0.05, words
        ends = w["end"]


@pytest.mark.parametrize("kind", ["nemo", "aqz"])
def test_same_text_alone_as_in_a_batch(workdir, kind):
    asr = intasr.load(workdir[kind])
    files = workdir["files"]
    batched = asr.transcribe(files, batch_size=len(files))
    alone = [asr.transcribe(f)[0] for f in files]
    assert batched == alone
    assert len(set(batched)) > 1  # the test model tells inputs apart, so the check means something
    assert asr.transcribe(files, batch_size=3) == batched  # a different grouping


def test_api_and_cli_agree_and_arrays_match_files(workdir, capsys):
    asr = intasr.load(workdir["aqz"])
    files = workdir["files"]
    rc, out, _ = _cli(capsys, "transcribe", "--model", workdir["aqz"], "--batch-size", "2", *files)
    assert rc == 0
    assert [t for _, t in _lines(out)] == asr.transcribe(files)

    stereo, rate = sf.read(files[0], dtype="float32")
    mono16, _ = sf.read(files[1], dtype="float32")
    from_arrays = asr.transcribe([stereo.mean(axis=1), torch.from_numpy(stereo.mean(axis=1))], sample_rate=rate)
    assert from_arrays == asr.transcribe([files[0], files[0]])
    assert asr.transcribe([mono16]) == asr.transcribe([files[1]])  # default rate: the model's


def test_folders_recursive_and_manifest(workdir, capsys, tmp_path):
    d = workdir["dir"]
    rc, out, _ = _cli(capsys, "transcribe", "--model", workdir["nemo"], d / "sub")
    assert rc == 0
    assert [p for p, _ in _lines(out)] == [str(d / "sub" / "d_16k.ogg"), str(d / "sub" / "deeper" / "c_44k.wav")]
    by_path = dict(_lines(out))

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"audio_filepath": str(f), "duration": 1.0})
                                  for f in workdir["files"][2:]) + "\n")
    rc, out, _ = _cli(capsys, "transcribe", "--model", workdir["nemo"], manifest)
    assert rc == 0
    assert dict(_lines(out)) == by_path


def test_bad_inputs_exit_2_name_the_file_no_traceback(workdir, capsys, tmp_path):
    good = workdir["files"][1]
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    empty_wav = tmp_path / "empty.wav"
    sf.write(empty_wav, np.zeros(0, dtype=np.float32), 16000)
    short = tmp_path / "click.wav"
    sf.write(short, np.ones(40, dtype=np.float32) * 0.1, 8000)
    empty_dir = tmp_path / "no_audio"
    empty_dir.mkdir()
    (empty_dir / "readme.txt").write_text("nothing here")
    cases = [
        (["--model", workdir["nemo"], good, tmp_path / "missing.wav"], "missing.wav"),
        (["--model", workdir["nemo"], good, text], "notes.wav"),
        (["--model", workdir["aqz"], corrupt], "corrupt.wav"),
        (["--model", workdir["nemo"], empty_wav], "empty.wav"),
        (["--model", workdir["nemo"], empty_dir], "no_audio"),
        (["--model", workdir["aqz"], good, short], "click.wav"),
        (["--model", tmp_path / "missing.nemo", good], "missing.nemo"),
        (["--model", workdir["nemo"], "--batch-size", "0", good], "batch-size"),
    ]
    for argv, name in cases:
        rc, out, err = _cli(capsys, "transcribe", *argv)
        assert rc == 2, (argv, out, err)
        assert out == ""  # nothing half-written: every file is checked before anything is decoded
        assert len(err.strip().splitlines()) == 1 and name in err and "Traceback" not in err, err

    # and as a real process: no traceback on stderr
    proc = subprocess.run([sys.executable, "-m", "intasr.cli", "transcribe", "--model", str(workdir["nemo"]),
                           str(good), str(corrupt)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "corrupt.wav" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_api_rejects_bad_arrays(workdir):
    asr = intasr.load(workdir["nemo"])
    with pytest.raises(ValueError, match="1-D"):
        asr.transcribe([np.zeros((2, 3, 4), dtype=np.float32)])
    with pytest.raises(ValueError, match="NaN"):
        asr.transcribe([np.full(16000, np.nan, dtype=np.float32)])
    with pytest.raises(ValueError, match="empty"):
        asr.transcribe([np.zeros(0, dtype=np.float32)])
    with pytest.raises(ValueError, match="1-D"):
        asr.transcribe(np.zeros((16000, 2), dtype=np.float32))  # stereo: mix down first
    pcm = (_chirp(1.0, 16000, 300, 5) * 32767).astype(np.int16)
    assert asr.transcribe(pcm) == asr.transcribe(pcm.astype(np.float32) / 32768)
    with pytest.raises(FileNotFoundError, match="nope.aqz"):
        intasr.load(workdir["dir"] / "nope.aqz")


def test_readme_python_quickstart_runs(workdir, tmp_path, monkeypatch, capsys):
    block = re.search(r"## Python\n+```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README has no ## Python code block"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 6
    sf.write(tmp_path / "speech.wav", _chirp(1.0, 8000, 250, 20), 8000)
    sf.write(tmp_path / "talk.flac", _chirp(1.5, 22050, 700, 21), 22050)
    monkeypatch.chdir(tmp_path)
    code = code.replace('"qn15_w8a8.aqz"', repr(str(workdir["aqz"])))
    exec(compile(code, str(README), "exec"), {})
    printed = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(printed) == 2
    asr = intasr.load(workdir["aqz"])
    assert printed[0] == str(asr.transcribe(["speech.wav", "talk.flac"]))
    assert printed[1] == str(asr.transcribe(["speech.wav"]))  # the array resampled like the file


def test_package_import_does_not_import_torch():
    code = ("import sys, intasr; assert 'torch' not in sys.modules; import intasr.api as api; "
            "assert intasr.load is api.load and intasr.Recognizer is api.Recognizer")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_hama_phonemes_match_evaluate(test_other_dir):
    """The phoneme Conformer: space-joined phonemes, as `evaluate` decodes them, alone or batched."""
    pytest.importorskip("hama")
    from intasr.api import Recognizer
    from intasr.data import read_librispeech
    from intasr.evaluate import transcribe
    from intasr.models.hama import load_hama_model

    utts = read_librispeech(test_other_dir)[:3]
    model = load_hama_model()
    asr = Recognizer(model)
    texts = asr.transcribe([u.audio_path for u in utts], batch_size=3)
    assert texts == [" ".join(p) for p in transcribe(model, utts, batch_size=3, progress=False)]
    assert texts == [asr.transcribe(u.audio_path)[0] for u in utts]
    assert all(len(t.split()) > 10 for t in texts)
    for u, r in zip(utts, asr.transcribe_detailed([u.audio_path for u in utts], words=True)):
        assert r["file"] == str(u.audio_path)
        _check_words(r)  # a word: its phonemes joined by spaces, between word-boundary tokens
        assert len(r["words"]) >= len(u.text.split()) // 2
