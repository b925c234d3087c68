import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from intasr.data import (LIBRISPEECH_MD5, LIBRISPEECH_URLS, DataError, Utterance, download_file,
                           download_pretrained, extract_tar_safely, load_batch, load_dataset, read_librispeech,
                           read_manifest, write_manifest)


def _flac(path: Path, n: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.sin(np.arange(n) / 10), 16000, format="FLAC")


@pytest.fixture
def fake_librispeech(tmp_path):
    root = tmp_path / "fake-split"
    chapter = root / "19" / "198"
    for i, n in enumerate([1600, 3200, 800]):
        _flac(chapter / f"19-198-000{i}.flac", n)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 HELLO WORLD\n19-198-0001 IT'S ME\n19-198-0002 A\n")
    return root


def test_read_real_test_other(test_other_dir):
    utts = read_librispeech(test_other_dir)
    assert len(utts) == 40
    assert [u.id for u in utts] == sorted(u.id for u in utts)
    assert sum(len(u.text.split()) for u in utts) == 684
    assert all(u.text == u.text.lower() and 0 < u.duration < 40 for u in utts)


def test_read_train_without_transcripts(train_clean_dir):
    utts = load_dataset(train_clean_dir, require_text=False, limit=5)
    assert len(utts) == 5 and all(u.text is None for u in utts)


def test_fake_librispeech_and_missing_transcript_line(fake_librispeech):
    utts = read_librispeech(fake_librispeech)
    assert [u.text for u in utts] == ["hello world", "it's me", "a"]
    assert utts[1].duration == pytest.approx(0.2)
    trans = fake_librispeech / "19" / "198" / "19-198.trans.txt"
    trans.write_text("19-198-0000 HELLO WORLD\n19-198-0002 A\n")
    with pytest.raises(DataError, match="19-198-0001.flac") as info:
        read_librispeech(fake_librispeech)
    assert "19-198.trans.txt" in str(info.value)
    assert read_librispeech(fake_librispeech, require_text=False)[1].text is None


def test_manifest_round_trip_and_relative_paths(fake_librispeech, tmp_path):
    utts = read_librispeech(fake_librispeech)
    utts[2] = Utterance("custom-id", utts[2].audio_path, None, None)
    path = tmp_path / "out" / "manifest.json"
    write_manifest(utts, path)
    back = read_manifest(path)
    assert [u.id for u in back] == [u.id for u in utts]
    assert [u.text for u in back] == [u.text for u in utts]
    assert [u.audio_path.resolve() for u in back] == [u.audio_path.resolve() for u in utts]
    assert back[2].duration == pytest.approx(0.05)
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind

    rel = fake_librispeech / "rel.json"
    rel.write_text(json.dumps({"audio_filepath": "19/198/19-198-0000.flac", "duration": 0.1, "text": "hi"}) + "\n")
    (u,) = load_dataset(rel)
    assert u.audio_path == fake_librispeech / "19/198/19-198-0000.flac" and u.text == "hi"


def test_malformed_manifest_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"audio_filepath": "a.wav", "duration": 1, "text": "x"}\n\n{"audio_filepath": oops}\n')
    with pytest.raises(DataError, match=r"bad.json:3"):
        read_manifest(path)
    path.write_text('{"audio_filepath": "a.wav", "duration": 1}\n')
    with pytest.raises(DataError, match=r"bad.json:1: missing 'text'"):
        load_dataset(path)


def test_load_batch_shapes(fake_librispeech):
    audio, lengths = load_batch(load_dataset(fake_librispeech, limit=3))
    assert audio.shape == (3, 3200) and audio.dtype.is_floating_point
    assert lengths.tolist() == [1600, 3200, 800]
    assert float(audio[2, 800:].abs().max()) == 0.0


# --- downloads, served offline through file:// URLs ---

def _tar_gz(path: Path, entries):
    """entries: (name, bytes) for files, or a ready tarfile.TarInfo for links."""
    with tarfile.open(path, "w:gz") as tf:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tf.addfile(e)
            else:
                info = tarfile.TarInfo(e[0])
                info.size = len(e[1])
                tf.addfile(info, io.BytesIO(e[1]))
    return path


def test_download_verify_and_extract(tmp_path):
    src = _tar_gz(tmp_path / "src.tar.gz", [("LibriSpeech/x/a.txt", b"hello"), ("LibriSpeech/x/b/c.txt", b"c")])
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    dest = download_file(src.as_uri(), tmp_path / "dl" / "x.tar.gz", md5=md5)
    assert dest.read_bytes() == src.read_bytes() and not dest.with_name("x.tar.gz.part").exists()
    out = extract_tar_safely(dest, tmp_path / "ex")
    assert (out / "LibriSpeech/x/a.txt").read_bytes() == b"hello"

    bad = tmp_path / "dl" / "bad.tar.gz"
    with pytest.raises(DataError, match="md5 mismatch"):
        download_file(src.as_uri(), bad, md5="0" * 32)
    assert not bad.exists() and not bad.with_name("bad.tar.gz.part").exists()

    missing = (tmp_path / "nope.tar.gz").as_uri()
    with pytest.raises(DataError, match="manually"):
        download_file(missing, tmp_path / "dl" / "nope.tar.gz")


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _device(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize("member, why", [
    (("../evil", b"x"), "escapes"),
    (("/tmp/intasr_evil_abs", b"x"), "absolute"),
    (_link("etc_link", "/etc"), "symlink"),
    (_link("up_link", "../../outside"), "symlink"),
    (_link("hard", "../outside", tarfile.LNKTYPE), "hardlink"),
    (_device("dev/null"), "device"),
])
def test_extract_refuses_escaping_members(tmp_path, member, why):
    tar = _tar_gz(tmp_path / "evil.tar.gz", [("ok.txt", b"fine"), member])
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=why) as info:
        extract_tar_safely(tar, dest)
    name = member[0] if isinstance(member, tuple) else member.name
    assert repr(name) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "evil.tar.gz"]
    assert list(dest.iterdir()) == []  # checked before anything was written
    assert not Path("/tmp/intasr_evil_abs").exists()


def test_librispeech_table_and_pretrained_names():
    assert set(LIBRISPEECH_URLS) == set(LIBRISPEECH_MD5) >= {"test-other", "dev-clean", "train-clean-100"}
    assert all(len(m) == 32 for m in LIBRISPEECH_MD5.values())
    with pytest.raises(ValueError, match="unknown pretrained"):
        download_pretrained("not-a-model", "x.nemo")
