"""The one aggregation of result rows over seeds, checked on frames small enough to do by hand."""

import math

import pandas as pd
import pytest

from intasr.aggregate import paired_by_seed, per_seed, rate_text, seed_summary


def _runs():
    # two settings: W8A8 with three seeds, W6A8 with one
    return pd.DataFrame({
        "w_bits": [8, 8, 8, 6], "a_bits": [8, 8, 8, 8], "seed": [0, 1, 2, 0],
        "error_rate": [10.0, 12.0, 14.0, 20.0], "unit_errors": [50, 60, 70, 100], "units": [500] * 4,
        "ci95_lo": [8.0, 10.0, 12.0, 17.0], "ci95_hi": [12.0, 14.0, 16.0, 23.0], "size_mb": [18.0, 18.0, 18.0, 13.5],
    })


def test_seed_summary_mean_std_range_errors_and_ci():
    g = seed_summary(_runs(), ["w_bits", "a_bits"], more={"units": "first"})
    assert list(g.w_bits) == [8, 6]   # groups in order of appearance
    w8, w6 = g.iloc[0], g.iloc[1]
    assert w8.rate == 12.0 and w8["std"] == pytest.approx(2.0)   # sample std of 10, 12, 14
    assert (w8.rate_min, w8.rate_max, w8.seeds) == (10.0, 14.0, 3)
    assert w8.per_seed == "50/60/70" and w8.errors == 60
    assert (w8.ci95_lo, w8.ci95_hi) == (10.0, 14.0)   # the mean of the runs' bounds
    assert w8.size_mb == 18.0 and w8.units == 500
    assert w6.seeds == 1 and math.isnan(w6["std"]) and w6.per_seed == "100"


def test_seed_summary_sorts_groups_and_skips_missing_columns():
    runs = _runs().drop(columns=["ci95_lo", "ci95_hi", "size_mb"])
    g = seed_summary(runs, "w_bits", sort=True, more={"absent": "first"})
    assert list(g.w_bits) == [6, 8]
    assert not {"ci95_lo", "ci95_hi", "size_mb", "absent"} & set(g.columns)


def test_seed_summary_reads_errors_in_row_order():
    runs = _runs().iloc[[2, 0, 1]]
    assert seed_summary(runs, "w_bits").per_seed.iloc[0] == "70/50/60"
    assert per_seed([3.0, 1, 2]) == "3/1/2" and per_seed([4, float("nan")]) == "4/-"


def test_rate_text():
    assert rate_text(12.345, 0.5, 3) == "12.35 ± 0.50"
    assert rate_text(12.345, float("nan"), 3) == "12.35"
    assert rate_text(12.345, 0.5, 1) == "12.35"


def test_paired_by_seed():
    rows = pd.DataFrame({
        "w_bits": [8] * 5, "a_bits": [8] * 5, "seed": [0, 1, 0, 1, 2],
        "calibration": ["synthetic", "synthetic", "random", "random", "random"],
        "word_errors": [70, 75, 80, 75, 90],
    })
    pair, summary = paired_by_seed(rows, units=500)
    assert list(pair.index.get_level_values("seed")) == [0, 1]   # seed 2 has no synthetic run
    assert list(pair["Δ word errors (syn − rand)"]) == [-10, 0]
    assert list(pair["Δ WER points"]) == [-2.0, 0.0]
    s = summary.loc[(8, 8)]
    assert (s.seeds, s.mean_points, s.synthetic_better, s.ties) == (2, -1.0, 1, 1)
    assert s.sd_words == pytest.approx(math.sqrt(50))
