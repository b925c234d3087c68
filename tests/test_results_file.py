"""The one resumable results writer (ResultsFile) and the two tools that write through it."""

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import load_script

from intasr import recipe_runs
from intasr.results_file import ResultsFile

ROOT = Path(__file__).resolve().parents[1]


def test_append_orders_columns_and_skips_a_cell_already_written(tmp_path):
    out = ResultsFile(tmp_path / "r.csv", columns=["model", "seed", "wer"])
    assert out.read().columns.tolist() == ["model", "seed", "wer"] and out.keys() == set()
    out.append({"wer": 10.0, "seed": 0, "extra": "x", "model": "m", "cell_key": "k0"})
    df = out.append({"seed": 1, "model": "m", "wer": 12.5, "cell_key": "k1"})
    assert df.columns.tolist() == ["model", "seed", "wer", "extra", "cell_key"]
    assert out.keys() == {"k0", "k1"}
    # a concurrent run wrote k1 first: not added twice
    out.append({"seed": 1, "model": "m", "wer": 99.0, "cell_key": "k1"})
    on_disk = pd.read_csv(tmp_path / "r.csv")
    assert len(on_disk) == 2 and on_disk.wer.tolist() == [10.0, 12.5]
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]   # no temporary file left behind


def test_append_reads_the_file_as_it_is_now(tmp_path):
    a, b = ResultsFile(tmp_path / "r.csv"), ResultsFile(tmp_path / "r.csv")
    a.append({"seed": 0})
    b.append({"seed": 1})   # another writer of the same file: both rows kept
    assert pd.read_csv(tmp_path / "r.csv").seed.tolist() == [0, 1]


def test_has_settings_reads_absent_columns_as_their_defaults():
    df = pd.DataFrame({"w_bits": [4, 6], "rounding": ["adaround", "nearest"], "edge_bits": [8.0, None]})
    defaults = {"equalize": False, "edge_bits": 0}
    assert ResultsFile.has_settings(df, {"w_bits": 4, "rounding": "adaround", "edge_bits": 8}, defaults)
    # the empty cell and the absent column read as their defaults
    assert ResultsFile.has_settings(df, {"w_bits": 6, "edge_bits": 0, "equalize": False}, defaults)
    assert not ResultsFile.has_settings(df, {"w_bits": 6, "equalize": True}, defaults)
    assert not ResultsFile.has_settings(df, {"w_bits": 4, "rounding": "nearest"}, defaults)
    assert not ResultsFile.has_settings(df.iloc[0:0], {"w_bits": 4}, defaults)


@pytest.mark.parametrize("name", ["beyond_adaround.csv", "beyond_size.csv"])
def test_committed_results_are_what_the_writer_writes(tmp_path, name):
    # the committed file without its last row, plus that row appended: the same bytes
    columns = recipe_runs.COLUMNS if name == "beyond_adaround.csv" else None
    full = pd.read_csv(ROOT / "results" / name)
    full.iloc[:-1].to_csv(tmp_path / name, index=False)
    last = {k: v for k, v in full.iloc[-1].to_dict().items() if not (isinstance(v, float) and v != v)}
    ResultsFile(tmp_path / name, columns).append(last)
    assert (tmp_path / name).read_bytes() == (ROOT / "results" / name).read_bytes()


def _run_tool(monkeypatch, script: str, args: list[str]) -> int:
    tool = load_script(ROOT / "tools" / script)
    monkeypatch.setattr(sys, "argv", [script, *args])
    threads = torch.get_num_threads()
    try:
        return tool.main()
    finally:
        torch.set_num_threads(threads)


def test_tools_write_one_row_per_cell_and_resume(tmp_path, monkeypatch):
    from grid_fixtures import tiny_model_and_data

    monkeypatch.setenv("INTASR_BUILD", str(tmp_path / "build"))
    model, data = tiny_model_and_data(tmp_path)
    common = ["--model", str(model), "--data", str(data), "--synth-iterations", "2"]
    ada = ["--bits", "8/8", "--rounding", "nearest", "--out", str(tmp_path / "ada.csv"), *common]
    size = ["--budgets", "--uniform-bits", "8", "--seeds", "0", "--generate", "--eval-backend", "reference",
            "--out", str(tmp_path / "size.csv"), *common]
    for script, args, csv in (("run_adaround.py", ada, "ada.csv"), ("run_size_sweep.py", size, "size.csv")):
        assert _run_tool(monkeypatch, script, args) == 0
        first = (tmp_path / csv).read_bytes()
        rows = pd.read_csv(tmp_path / csv)
        assert len(rows) == 1 and rows.w_bits.iloc[0] == 8 and rows.words.iloc[0] > 0
        assert _run_tool(monkeypatch, script, args) == 0   # resumed: the cell is there, nothing is rerun
        assert (tmp_path / csv).read_bytes() == first
    assert pd.read_csv(tmp_path / "ada.csv").columns[0] == "model"   # run_adaround's column order
    assert pd.read_csv(tmp_path / "size.csv").cell_key.str.len().iloc[0] > 0
