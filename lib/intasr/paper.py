"""The paper's published numbers (``data/paper_results.csv``, with sources): one row per table,
model, method, W/A and split, with its WER and, for Table 1, size (MB) and BOPs (T)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .paths import REPO_ROOT

PAPER_CSV = REPO_ROOT / "data" / "paper_results.csv"
SPLITS = ("dev-clean", "dev-other", "test-clean", "test-other")


def paper_results(path: Path | str = PAPER_CSV) -> pd.DataFrame:
    return pd.read_csv(path)


def test_other(paper: pd.DataFrame, model: str) -> pd.DataFrame:
    """One model's test-other rows, each (method, W/A) once (Table 2 repeats Table 1's rows)."""
    return paper[(paper.model == model) & (paper.split == "test-other")].drop_duplicates(
        ["method", "w_bits", "a_bits"])


def table_rows(paper: pd.DataFrame, table: int, model: str, split: str | None = "test-other") -> pd.DataFrame:
    """The rows of one table and model (of one split; None: every split)."""
    rows = paper[(paper.table == table) & (paper.model == model)]
    return rows if split is None else rows[rows.split == split]


def fp32_wer(paper: pd.DataFrame, table: int, model: str, split: str = "test-other") -> float:
    """The paper's full-precision WER of `model` in `table` (Table 1: W/A 32; Table 2: method 'baseline')."""
    rows = table_rows(paper, table, model, split)
    return float(rows[(rows.w_bits == 32) if table == 1 else (rows.method == "baseline")]["wer"].iloc[0])


def deltas(paper: pd.DataFrame, table: int, model: str) -> pd.DataFrame:
    """test-other rows of `table` indexed by (method, w_bits, a_bits), with ``delta_vs_fp32``:
    each WER minus the same table's full-precision WER."""
    rows = table_rows(paper, table, model).copy()
    rows["delta_vs_fp32"] = rows["wer"] - fp32_wer(paper, table, model)
    return rows.set_index(["method", "w_bits", "a_bits"])
