"""The README's result tables are written from results/ by tools/readme_results.py, never typed."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import load_script

readme_results = load_script("tools/readme_results.py")


def test_readme_tables_match_the_results_files():
    # a results CSV changed without rerunning the tool (or a table edited by hand) fails here
    assert readme_results.main(["--check"]) == 0


def test_table_is_computed_from_the_file(tmp_path):
    grid = pd.read_csv(readme_results.ROOT / "results" / "grid.csv")
    row = grid.index[(grid.w_bits == 8) & (grid.calibration == "random")][0]
    grid.loc[row, "word_errors"] = 300
    grid.loc[row, "wer"] = 300 / 684 * 100
    if "unit_errors" in grid:
        grid.loc[row, "unit_errors"], grid.loc[row, "error_rate"] = 300, 300 / 684 * 100
    changed = tmp_path / "grid.csv"
    grid.to_csv(changed, index=False)
    before = "\n".join(readme_results.table1(readme_results.ROOT / "results" / "grid.csv"))
    after = "\n".join(readme_results.table1(changed))
    assert before != after
    line = next(l for l in after.splitlines() if l.startswith("| 8/8 | random"))
    assert "300" in line


def test_missing_marker_is_a_clear_error():
    with pytest.raises(SystemExit, match="results:table1"):
        readme_results.render("no markers here", {"table1": lambda: ["x"]})
