"""Results files name files portably: paths.display_path, and the writers that use it
(benchmarks/check_c_runtime.py, tools/jasper_check.py, tools/verify_models.py). A committed
results file must not carry the build machine's absolute paths (/tmp/..., /work/..., a home)."""

import argparse
import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from intasr import paths
from conftest import load_script
from grid_fixtures import tiny_model_and_data

ROOT = Path(__file__).resolve().parents[1]


def test_display_path_is_relative_to_the_repository_build_or_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("INTASR_BUILD", str(tmp_path / "scratch_build"))
    monkeypatch.setenv("INTASR_SHARED", str(tmp_path / "assets"))
    repo = paths.REPO_ROOT
    assert paths.display_path(repo / "benchmarks" / "results" / "x.json") == "benchmarks/results/x.json"
    assert paths.display_path(repo) == "."
    # the build folder outside the repository (a scratch build): still build/...
    assert paths.display_path(tmp_path / "scratch_build" / "q" / "m.aqz") == "build/q/m.aqz"
    assert paths.display_path(tmp_path / "assets" / "data" / "LibriSpeech" / "test-other") \
        == "../shared/data/LibriSpeech/test-other"
    # anything else (a temporary folder): the bare name, never the machine's folder
    assert paths.display_path(tmp_path / "elsewhere" / "model.nemo") == "model.nemo"
    # a symlink in the build folder (a scratch checkout's model) is not followed to its target
    target = tmp_path / "elsewhere" / "model.nemo"
    target.parent.mkdir()
    target.write_bytes(b"x")
    (tmp_path / "scratch_build").mkdir()
    (tmp_path / "scratch_build" / "model.nemo").symlink_to(target)
    assert paths.display_path(tmp_path / "scratch_build" / "model.nemo") == "build/model.nemo"


def _no_machine_paths(text: str, *folders: Path) -> None:
    for folder in folders:
        assert str(folder) not in text, f"{folder} in {text[:300]}"
    assert "/tmp/" not in text and "/work/" not in text


def test_jasper_check_row_settings_are_portable(tmp_path, monkeypatch):
    monkeypatch.setenv("INTASR_SHARED", str(tmp_path / "shared"))
    tool = load_script(ROOT / "tools" / "jasper_check.py")
    args = argparse.Namespace(seed=0, train=str(tmp_path / "shared" / "data" / "LibriSpeech" / "train-clean-100"),
                              test=str(tmp_path / "shared" / "data" / "LibriSpeech" / "test-other"),
                              jasper_nemo=str(paths.build_dir() / "jasperdr10x5_random.nemo"),
                              quartznet=str(tmp_path / "other" / "qn.nemo"), rebuild=False, eval_utts=2,
                              out=str(tmp_path / "x.json"), results=str(tmp_path / "x.csv"))
    row = tool.row_settings(args)
    assert row == {"setting_seed": 0, "setting_train": "../shared/data/LibriSpeech/train-clean-100",
                   "setting_test": "../shared/data/LibriSpeech/test-other",
                   "setting_jasper_nemo": "build/jasperdr10x5_random.nemo", "setting_quartznet": "qn.nemo",
                   "setting_rebuild": False, "setting_eval_utts": 2}


@pytest.fixture(scope="module")
def tiny_quantized(tmp_path_factory):
    """A tiny random QuartzNet-shaped model, its W8A8 .aqz and a 4-utterance LibriSpeech folder."""
    from intasr.calibration import random_mels
    from intasr.convert import quantize_model
    from intasr.integer_model import save_quantized
    from intasr.models import load_model

    root = tmp_path_factory.mktemp("tiny")
    nemo, data = tiny_model_and_data(root)
    model = load_model(nemo)
    q = quantize_model(model, random_mels(1, 2, 120, seed=0))
    return root, nemo, save_quantized(q, root / "tiny_w8a8.aqz"), data, model, q


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None, reason="needs cc and make")
def test_check_c_runtime_writes_no_machine_paths(tiny_quantized, tmp_path, capsys):
    root, _, aqz, data, _, _ = tiny_quantized
    script = load_script(ROOT / "benchmarks" / "check_c_runtime.py")
    out = tmp_path / "c_runtime.json"
    assert script.main(["--quantized", str(aqz), "--data", str(data), "--limit", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    text = out.read_text()
    res = json.loads(text)
    assert res["quantized"] == "tiny_w8a8.aqz" and res["data"] == "tiny"
    assert res["utterances"] == 2 and res["tokens_equal"] == 2 and res["logits_differ"] == 0
    prov = res["provenance"]
    assert prov["eval_utterances"] == 2 and len(prov["model_sha256"]) == 64 and prov["run_threads"] == 1
    _no_machine_paths(text, root, tmp_path)
    # the export's own message names the temporary C folder: the script's log does not
    assert "C library -> <temporary folder>/c" in printed
    _no_machine_paths(printed, root, tmp_path)


def test_verify_report_names_its_model_portably(tiny_quantized, tmp_path):
    from intasr.data import load_batch, load_dataset

    root, nemo, _, data, model, q = tiny_quantized
    tool = load_script(ROOT / "tools" / "verify_models.py")
    utts = load_dataset(data, limit=3)
    batch = load_batch(utts)
    assert tool._report("from_file", q, batch, 1.0, tmp_path, {"calibration": "random"}, nemo, utts)
    rep = json.loads((tmp_path / "from_file.json").read_text())
    assert rep["provenance"]["model_file"] == "tiny.nemo"
    assert rep["provenance"]["eval_utterances"] == 3
    _no_machine_paths((tmp_path / "from_file.json").read_text(), root, tmp_path)
    # a model built in memory: no file, so the float state dict's hash identifies it
    assert tool._report("built_here", q, batch, 1.0, tmp_path, {}, None, utts, model)
    prov = json.loads((tmp_path / "built_here.json").read_text())["provenance"]
    assert prov["model_file"] == "none (built here)" and prov["model_sha256"] == "unknown"
    from intasr.synth import model_hash

    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)   # another model: another hash
    assert prov["model_state_sha256"] == model_hash(model) != model_hash(other)


def test_check_exact_writes_no_machine_paths(tiny_quantized, tmp_path, monkeypatch):
    root, _, aqz, data, _, _ = tiny_quantized
    script = load_script(ROOT / "benchmarks" / "check_exact.py")
    out = tmp_path / "exact.json"
    assert script.main(["--quantized", str(aqz), "--data", str(data), "--limit", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["quantized"] == "tiny_w8a8.aqz" and res["data"] == "tiny" and res["utterances"] == 2
    assert res["runtimes"]["torch+native-int8"]["differ"] == 0
    # onnxruntime's integer graph runs where its kernels are exact; elsewhere it is skipped with the reason
    from intasr.cpu import cpu_features
    from intasr.deploy.runtime import ort_kernels_exact

    if ort_kernels_exact(1):
        assert res["runtimes"]["onnxruntime-int8"]["differ"] == 0 and res["skipped"] == {}
    else:
        assert "onnxruntime-int8" not in res["runtimes"] and "not exact" in res["skipped"]["onnxruntime-int8"]
    assert res["machine"]["cpu_probe"] == cpu_features().source
    _no_machine_paths(out.read_text(), root, tmp_path)
    # the other kind of CPU, on this one: an inexact kernel is a recorded skip and exit status 0
    monkeypatch.setattr(script, "ort_kernels_exact", lambda threads=1: False)
    assert script.main(["--quantized", str(aqz), "--data", str(data), "--limit", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["runtimes"]) == {"torch+native-int8", "torch-int8+fp32exact-dw", "qdq-uint8", "qdq-int8-trt"}
    assert "not exact" in res["skipped"]["onnxruntime-int8"] and res["runtimes"]["torch+native-int8"]["differ"] == 0
