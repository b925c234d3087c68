"""Provenance columns: file hashes, evaluation-set fingerprints, code version, machine."""

import hashlib
import os
from pathlib import Path

import pytest

from intasr import provenance as prov
from intasr.data import Utterance


def _entries(root: Path, texts: dict[str, str]) -> list[Utterance]:
    return [Utterance(name.rsplit("/", 1)[-1].split(".")[0], root / name, text, 1.0) for name, text in texts.items()]


TEXTS = {"1/10/1-10-0000.flac": "hello world", "1/10/1-10-0001.flac": "a b c", "2/20/2-20-0000.flac": "x"}


def test_fingerprint_counts_and_order_independence(tmp_path):
    fp = prov.eval_set_fingerprint(_entries(tmp_path, TEXTS))
    assert fp["utterances"] == 3 and fp["words"] == 6 and len(fp["sha256"]) == 64
    reordered = dict(reversed(list(TEXTS.items())))
    assert prov.eval_set_fingerprint(_entries(tmp_path, reordered)) == fp
    # the same set in another folder: the same fingerprint (names are relative to the set's root)
    assert prov.eval_set_fingerprint(_entries(tmp_path / "elsewhere" / "copy", TEXTS)) == fp


@pytest.mark.parametrize("change", ["transcript", "file name", "one file fewer"])
def test_fingerprint_changes_with_the_data(tmp_path, change):
    fp = prov.eval_set_fingerprint(_entries(tmp_path, TEXTS))
    texts = dict(TEXTS)
    if change == "transcript":
        texts["1/10/1-10-0001.flac"] = "a b d"
    elif change == "file name":
        texts["1/10/1-10-0002.flac"] = texts.pop("1/10/1-10-0001.flac")
    else:
        texts.pop("2/20/2-20-0000.flac")
    other = prov.eval_set_fingerprint(_entries(tmp_path, texts))
    assert other["sha256"] != fp["sha256"]
    if change == "transcript":
        assert other["utterances"] == fp["utterances"] and other["words"] == fp["words"]


def test_file_sha256_streams_and_notices_a_rewrite(tmp_path):
    path = tmp_path / "model.bin"
    data = os.urandom(3 * (1 << 20) + 17)   # more than one read chunk
    path.write_bytes(data)
    assert prov.file_sha256(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))   # a new size-equal file: mtime changes the cache key
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert prov.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(FileNotFoundError, match="missing.nemo"):
        prov.file_sha256(tmp_path / "missing.nemo")


def test_code_version_without_git(monkeypatch):
    here = prov.code_version()
    assert here["version"] and (here["commit"] == "unknown" or len(here["commit"]) == 40)
    monkeypatch.setattr(prov, "_git", lambda *a: None)
    assert prov.code_version()["commit"] == "unknown" and prov.code_version()["dirty"] == "unknown"


def test_provenance_row_is_flat(tmp_path):
    model = tmp_path / "m.nemo"
    model.write_bytes(b"weights")
    row = prov.provenance(model, _entries(tmp_path, TEXTS), {"iterations": 20, "lr": 0.05})
    assert row["model_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert row["eval_utterances"] == 3 and row["eval_words"] == 6
    assert row["iterations"] == 20 and row["lr"] == 0.05
    assert row["threads"] >= 1 and row["cpu"]
    assert all(not isinstance(v, (dict, list)) for v in row.values())
    bare = prov.provenance()
    assert bare["model_sha256"] == "unknown" and bare["eval_sha256"] == "unknown"
    assert set(row) - {"iterations", "lr"} == set(bare)


def test_machine_record_is_the_cpu_probe(monkeypatch):
    """The machine columns come from the one CPU-feature probe (intasr.cpu): the old columns
    (cpu, cores, vnni) and the probe's own (kernel family, flags, where they were read)."""
    from intasr.cpu import ISA_ENV, cpu_features

    monkeypatch.delenv(ISA_ENV, raising=False)
    f = cpu_features()
    m = prov.machine()
    assert m["cpu"] and m["cpu_probe"] == f.source and m["kernel_family"] == f.best_family
    assert m["cores"] is None or 1 <= m["cores"] <= (os.cpu_count() or 1)
    if f.source != "none":
        assert m["vnni"] is f.vnni
        assert m["cpu_flags"].split() == f.linux_flags()
        assert ("avx512_vnni" in m["cpu_flags"].split()) == f.avx512vnni
    assert m["asrq_isa"] is None
    monkeypatch.setenv(ISA_ENV, "portable")   # a forced family is what the row records
    assert prov.machine()["kernel_family"] == "portable" and prov.machine()["asrq_isa"] == "portable"
    monkeypatch.setenv(ISA_ENV, "no-such-family")   # the C runtime would refuse it: not guessed
    assert prov.machine()["kernel_family"] == "unknown"
