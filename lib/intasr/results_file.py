"""One resumable results writer: a tidy CSV that grows one finished cell (one row) at a time.

Every write re-reads the file as it is on disk now (another run may have added rows meanwhile)
and replaces it atomically (``atomic_write_bytes``: a temporary file renamed into place), so an
interrupted run never leaves a half-written file, and a rerun skips the cells already there.
A cell is known either by its ``cell_key`` column (settings + model sha256 + evaluation-set
fingerprint: ``gridrun.content_key``), or, for files written before that column, by its
settings (``has_settings``). The grid (``tables.run_grid``, whose cells finish as JSON files and
are merged here), the learned-rounding runs (tools/run_adaround.py) and the size sweep
(tools/run_size_sweep.py) all write through it.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from .models.checkpoint import atomic_write_bytes

KEY = "cell_key"


class ResultsFile:
    """The CSV at `path`. `columns`: the order of the leading columns of every write (columns
    not named follow in the order they have), and the columns of an absent file's empty frame;
    None keeps the order rows bring."""

    def __init__(self, path, columns: list[str] | None = None):
        self.path = Path(path)
        self.columns = list(columns) if columns is not None else None

    def read(self) -> pd.DataFrame:
        """The rows on disk now (an empty frame, with `columns`, when there is no file yet)."""
        if self.path.is_file():
            return pd.read_csv(self.path)
        return pd.DataFrame(columns=self.columns) if self.columns is not None else pd.DataFrame()

    def keys(self) -> set[str]:
        """The ``cell_key`` of every row on disk now (empty when the file has no such column)."""
        df = self.read()
        return set(df[KEY].astype(str)) if KEY in df else set()

    def ordered(self, df: pd.DataFrame) -> pd.DataFrame:
        """`df` with `columns` first (those it has), then its other columns in their order."""
        if self.columns is None:
            return df
        return df[[c for c in self.columns if c in df] + [c for c in df if c not in self.columns]]

    def write(self, df: pd.DataFrame) -> pd.DataFrame:
        """Replace the file by `df` (columns ``ordered``), atomically; returns what was written."""
        df = self.ordered(df)
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        atomic_write_bytes(self.path, lambda f: f.write(buf.getvalue().encode()))
        return df

    def append(self, row: dict) -> pd.DataFrame:
        """Add one finished cell to the rows on disk now and write them; a row whose ``cell_key``
        is already there (a concurrent run wrote the cell first) is not added. Returns the rows."""
        df = self.read()
        if KEY in df and KEY in row and str(row[KEY]) in set(df[KEY].astype(str)):
            return df
        return self.write(pd.concat([df, pd.DataFrame([row])], ignore_index=True) if len(df) else pd.DataFrame([row]))

    @staticmethod
    def has_settings(df: pd.DataFrame, settings: dict, defaults: dict) -> bool:
        """Does a row of `df` have every setting in `settings`? A column absent from the file, or
        empty in a row, reads as `defaults[column]` (the setting rows had before the column
        existed; '' when not given). Integer defaults compare as integers (8, 8.0 and '8' alike),
        the others as text."""
        if not len(df):
            return False
        mask = pd.Series(True, index=df.index)
        for k, value in settings.items():
            default = defaults.get(k, "")
            col = df[k] if k in df else pd.Series(default, index=df.index)
            if isinstance(default, int) and not isinstance(default, bool):
                mask &= pd.to_numeric(col, errors="coerce").fillna(default).astype(int) == int(value)
            else:
                mask &= col.astype(object).fillna(default).astype(str) == str(value)
        return bool(mask.any())
