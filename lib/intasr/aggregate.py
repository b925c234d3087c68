"""One aggregation of result rows over seeds: what every table of the README and the book reports.

A result row is one run (one seed) of one setting, with its error rate (``error_rate``, or
``wer``), its unit errors (``unit_errors`` / ``word_errors``), the bootstrap 95 % CI of that run
(``ci95_lo``, ``ci95_hi``) and the stored size (``size_mb``). ``seed_summary`` reduces the runs of
each setting to one row; ``paired_by_seed`` compares two calibration sources seed by seed.
Rows are reduced in the order given (the caller sorts, e.g. by seed), so that means are summed
in a fixed order and the per-seed errors read in that order.
"""

from __future__ import annotations

import pandas as pd


SHORT = {"synthetic": "syn", "random": "rand"}   # calibration sources in column names


def per_seed(errors) -> str:
    """Each run's errors in row order, as integers joined by '/' (e.g. '79/77/80'; '-' for a
    run without a count)."""
    return "/".join("-" if pd.isna(v) else str(int(v)) for v in errors)


def seed_summary(df: pd.DataFrame, by, *, rate: str = "error_rate", errors: str = "unit_errors",
                 size: str = "first", more: dict | None = None, sort: bool = False,
                 dropna: bool = True) -> pd.DataFrame:
    """One row per group of `by`, with the columns:

    - ``rate``, ``std``, ``rate_min``, ``rate_max``: mean, sample std (NaN for one run), min and
      max of the `rate` column over the group's runs;
    - ``seeds``: the number of distinct seeds;
    - ``errors``: the mean of the `errors` column; ``per_seed``: those errors as 'a/b/c';
    - ``ci95_lo``, ``ci95_hi``: the mean of the runs' CI bounds (the CI of one run, averaged);
    - ``size_mb``: the group's stored size, aggregated with `size` ('first', 'mean', 'median');
    - each column of `more` under its own name, aggregated as it says ({"units": "first"}).

    A column missing from `df` leaves its summary columns out. `sort` orders the groups by key
    (False: in order of first appearance); `dropna` False keeps groups with a missing key."""
    spec = {"rate": (rate, "mean"), "std": (rate, "std"), "rate_min": (rate, "min"), "rate_max": (rate, "max"),
            "seeds": ("seed", "nunique")}
    if errors in df:
        spec.update(errors=(errors, "mean"), per_seed=(errors, per_seed))
    for col in ("ci95_lo", "ci95_hi"):
        if col in df:
            spec[col] = (col, "mean")
    if "size_mb" in df:
        spec["size_mb"] = ("size_mb", size)
    spec.update({col: (col, how) for col, how in (more or {}).items() if col in df})
    return df.groupby(by, sort=sort, dropna=dropna).agg(**spec).reset_index()


def rate_text(rate: float, std: float, seeds: int) -> str:
    """'12.34 ± 0.56' over several seeds, '12.34' for one run (or when the std is not a number)."""
    return f"{rate:.2f} ± {std:.2f}" if seeds > 1 and pd.notna(std) else f"{rate:.2f}"


def paired_by_seed(df: pd.DataFrame, units: int, a: str = "synthetic", b: str = "random"):
    """Calibration `a` against `b` on the same seed and W/A: (pairs, summary).

    pairs: one row per (w_bits, a_bits, seed) both have, with the errors of each, the difference
    in errors ``Δ word errors (a − b)`` (sources abbreviated by ``SHORT``) and the same in WER points over `units` words; W/A from
    the widest down. summary: per W/A, the number of seeds, the mean difference in points, the
    std of the difference in errors, and how many seeds have `a` better (fewer errors) or tied."""
    diff, points = f"Δ word errors ({SHORT.get(a, a)} − {SHORT.get(b, b)})", "Δ WER points"
    pair = (df[df.calibration.isin([a, b])]
            .pivot_table(index=["w_bits", "a_bits", "seed"], columns="calibration", values="word_errors")
            .dropna())
    pair[diff] = pair[a] - pair[b]
    pair[points] = 100 * pair[diff] / units
    pair = pair.sort_index(ascending=[False, True, True])
    summary = pair.groupby(["w_bits", "a_bits"], sort=False).agg(
        seeds=(points, "size"), mean_points=(points, "mean"), sd_words=(diff, "std"),
        **{f"{a}_better": (diff, lambda s: int((s < 0).sum())), "ties": (diff, lambda s: int((s == 0).sum()))})
    return pair, summary
