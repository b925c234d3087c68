"""One engine behind the commands: a quantized model's evaluate / transcribe / intasr.load run on
the C runtime (``IntegerModel.use_runtime``) and give what the torch integer reference gives; without
a C compiler "auto" falls back to torch and says so once, "c" fails naming why."""
import shutil

import numpy as np
import pytest
import torch

from pinned import pinned_inputs
from test_program import _quantize

from intasr.cli import main
from intasr.integer_model import save_quantized
from intasr.evaluate import transcribe

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="needs a C compiler and make")


@pytest.fixture(scope="module")
def q5():
    return _quantize("quartznet5x5_w8a8")


def test_run_int_on_the_c_runtime_equals_forward_int(q5):
    x, lengths = pinned_inputs()
    q5.use_runtime("c")
    assert q5.engine_name().startswith("c-int8 (") and q5.engine() is not None
    got, got_len = q5.run_int(x, lengths)
    with torch.inference_mode():
        ref, ref_len = q5.forward_int(x, lengths)
    assert torch.equal(got_len, ref_len) and torch.equal(got, ref)
    q5.use_runtime("torch")
    assert q5.engine() is None and q5.engine_name() == "torch-int8-reference"


def test_transcripts_are_the_same_on_both_engines(q5, test_other_dir):
    from intasr.data import load_dataset

    utts = load_dataset(test_other_dir, limit=3)
    texts = {}
    for runtime in ("torch", "c"):
        texts[runtime] = transcribe(q5.use_runtime(runtime), utts, batch_size=2, progress=False)
    assert texts["c"] == texts["torch"]


def test_evaluate_and_transcribe_choose_the_engine(q5, test_other_dir, tmp_path, capsys):
    import json

    aqz = save_quantized(q5, tmp_path / "m.aqz")
    assert main(["evaluate", "--model", str(aqz), "--data", str(test_other_dir), "--limit", "2", "--quiet",
                 "--runtime", "c", "--json", str(tmp_path / "c.json")]) == 0
    assert main(["evaluate", "--model", str(aqz), "--data", str(test_other_dir), "--limit", "2", "--quiet",
                 "--runtime", "torch", "--json", str(tmp_path / "t.json")]) == 0
    c, t = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("c", "t"))
    assert c["engine"].startswith("c-int8 (") and t["engine"] == "torch-int8-reference"
    assert (c["word_errors"], c["words"]) == (t["word_errors"], t["words"])
    wav = next(test_other_dir.rglob("*.flac"))
    outs = []
    for runtime in ("c", "torch"):
        capsys.readouterr()
        assert main(["transcribe", str(wav), "--model", str(aqz), "--runtime", runtime]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


def test_without_a_compiler_auto_falls_back_and_c_fails(q5, monkeypatch, capsys):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setenv("INTASR_NATIVE_CACHE", "/nonexistent-cache-for-this-test")
    x, lengths = pinned_inputs()
    q5.use_runtime("auto")
    got, _ = q5.run_int(x, lengths)
    err = capsys.readouterr().err
    assert "note: the C runtime is not available here" in err and "torch integer path" in err
    with torch.inference_mode():
        assert torch.equal(got, q5.forward_int(x, lengths)[0])
    q5.run_int(x, lengths)
    assert capsys.readouterr().err == ""   # said once
    q5.use_runtime("c")
    with pytest.raises(RuntimeError, match="needs a C compiler"):
        q5.run_int(x, lengths)
    q5.use_runtime("torch")


def test_an_unknown_runtime_is_refused(q5):
    with pytest.raises(ValueError, match="runtime 'gpu': choose from auto, c, torch"):
        q5.use_runtime("gpu")


def test_a_model_with_its_engine_loaded_serializes(q5):
    """The loaded library is not part of the model: pickle and Dask's serializer (which walks an
    nn.Module's __dict__) carry the program, and the copy loads its own engine with the same integers."""
    import pickle

    from distributed.protocol import deserialize, serialize

    x, lengths = pinned_inputs()
    q5.use_runtime("c")
    want, _ = q5.run_int(x, lengths)
    assert q5.engine() is not None
    for copy in (pickle.loads(pickle.dumps(q5)), deserialize(*serialize(q5))):
        assert copy.runtime == "c"
        got, _ = copy.run_int(x, lengths)
        assert torch.equal(got, want) and copy.engine() is not q5.engine()
