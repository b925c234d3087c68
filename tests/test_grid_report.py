"""grid_report: one model's grid rows read back, on a small hand-made grid whose means, standard
deviations and paired differences can be checked by hand."""

import statistics

import numpy as np
import pandas as pd
import pytest

from intasr import grid_report as gr

UNITS = 1000  # phonemes in the evaluation set: error_rate = 100 * unit_errors / UNITS


def _row(w, a, cal, seed, kind, errors, model="m", **extra):
    return {"model": model, "w_bits": w, "a_bits": a, "calibration": cal, "seed": seed, "nonlinear": kind,
            "observer": "minmax", "weight_method": "minmax", "bias_correction": False, "depthwise_bits": 0,
            "rounding": "nearest", "metric": "per", "error_rate": 100 * errors / UNITS, "units": UNITS,
            "unit_errors": errors, "utterances": 5, "size_mb": 1.0, "bops_t": 1.0, **extra}


@pytest.fixture
def grid():
    rows = [_row(32, 32, "none", 0, "integer", 100)]
    rows += [_row(8, 8, "synthetic", s, "integer", e) for s, e in zip((0, 1, 2), (110, 112, 108))]
    rows += [_row(8, 8, "random", s, "integer", e) for s, e in zip((0, 1, 2), (120, 111, 115))]
    rows += [_row(8, 8, "synthetic", s, "float", e) for s, e in zip((0, 1), (105, 113))]
    rows += [_row(8, 8, "real", 0, "integer", 105)]
    return pd.DataFrame(rows)


PAPER = pd.Series({32: 5.0, 8: 6.0, 6: 7.0})
CALS, KINDS = ["synthetic", "random", "real"], ["integer", "float"]


def test_expected_keys_one_seed_for_deterministic_calibrations():
    keys = gr.expected_keys([(8, 8)], ["synthetic", "real"], [0, 1, 2], KINDS, single_seed=("real",))
    assert keys[0] == gr.FP32_KEY and len(keys) == 1 + 2 * 3 + 2 * 1
    assert sorted(k[3] for k in keys if k[2] == "real") == [0, 0]


def test_read_method_rows_filters_model_and_method_and_keeps_the_last(tmp_path, grid):
    extra = pd.DataFrame([_row(8, 8, "synthetic", 0, "integer", 999, model="other"),
                          _row(8, 8, "synthetic", 0, "integer", 999, observer="percentile"),
                          _row(8, 8, "real", 0, "integer", 104)])        # a rerun of the real row
    pd.concat([grid.drop(columns="nonlinear"), extra.drop(columns="nonlinear")]).to_csv(tmp_path / "g.csv",
                                                                                         index=False)
    rows = gr.read_method_rows(tmp_path / "g.csv", "m")
    assert len(rows) == len(grid) - 2    # the float rows lose their kind (defaulted to integer: duplicates)
    assert set(rows.nonlinear) == {"integer"} and 999 not in set(rows.unit_errors)
    assert rows[rows.calibration == "real"].unit_errors.tolist() == [104]


def test_missing_keys_and_choose_grid(tmp_path, grid):
    expected = gr.expected_keys([(8, 8)], CALS, [0, 1, 2], KINDS)
    gaps = gr.missing_keys(grid, expected)
    assert gaps == [(8, 8, "synthetic", 2, "float"), (8, 8, "random", 0, "float"), (8, 8, "random", 1, "float"),
                    (8, 8, "random", 2, "float"), (8, 8, "real", 0, "float")]
    grid.to_csv(tmp_path / "full.csv", index=False)
    grid.iloc[:4].to_csv(tmp_path / "part.csv", index=False)
    path, rows, lines = gr.choose_grid([tmp_path / "part.csv", tmp_path / "full.csv", tmp_path / "none.csv"], "m",
                                       expected, shown=lambda p: p.name)
    assert path.name == "full.csv" and len(rows) == len(grid)
    assert lines == [f"part.csv: 4 row(s) for model 'm', 4 of the {len(expected)} this section needs",
                     f"full.csv: {len(grid)} row(s) for model 'm', {len(expected) - 5} of the {len(expected)}"
                     " this section needs"]
    path, rows, lines = gr.choose_grid([tmp_path / "none.csv"], "m", expected, shown=lambda p: p.name)
    assert path is None and len(rows) == 0 and lines == ["no Conformer grid CSV yet: none.csv (run the command above)"]
    report = gr.missing_report(gaps, len(expected))
    assert report[0].startswith("missing 5 of 15") and report[2] == "  W8A8 random (float non-linearities): seed(s) 0, 1, 2"
    assert gr.missing_report([], 16) == ["every row is there"]


def test_degradation_table_rows_and_text(grid):
    t = gr.degradation_table(grid, PAPER, CALS, KINDS)
    assert [(r["calibration"], r["non-linearities"]) for _, r in t.iterrows()] == [
        ("—", "float"), ("synthetic", "integer"), ("synthetic", "float"), ("random", "integer"), ("real", "integer")]
    syn = t.iloc[1]
    assert syn["PER % (mean ± std)"] == "11.00 ± 0.20"    # mean of 11.0, 11.2, 10.8; sample std 0.2
    assert syn["errors per seed"] == "110/112/108" and syn["Δ PER"] == "+1.00" and syn["Δ relative"] == "+10.0%"
    assert syn["paper WER (Conformer-Large)"] == "6.00" and syn["paper Δ relative"] == "+20.0%"
    assert t.iloc[2]["paper WER (Conformer-Large)"] == "—"          # only the paper's setting
    assert t.iloc[4]["PER % (mean ± std)"] == "10.50" and t.iloc[4]["seeds"] == 1   # one seed: no std
    assert t.iloc[0]["errors per seed"] == "100" and t.iloc[0]["paper WER (Conformer-Large)"] == "5.00"


def test_relative_values(grid):
    v = gr.relative_values(grid, PAPER, KINDS, w_bits=(8, 6))
    assert v["ours_rel_w8_integer"] == "+10.0 %" and v["ours_rel_w8_float"] == "+9.0 %"   # (10.5 + 11.3) / 2
    assert v["ours_rel_w6_integer"] == "(not in the grid yet)"
    assert (v["paper_w8"], v["paper_rel_w8"], v["paper_rel_w6"]) == ("6.00", "+20", "+40")
    assert v["paper_equiv_w8"] == "20"          # +20 % of the 100 FP32 errors
    empty = gr.relative_values(grid.iloc[0:0], PAPER, KINDS)
    assert empty["paper_equiv_w8"] == "(no FP32 row in the grid yet)"


def test_paired_differences_summary_and_sentence(grid):
    quant = grid[grid.w_bits < 32]
    pv = gr.paired_differences(quant, "calibration", "synthetic", "random", "nonlinear")
    assert pv["Δ errors"].tolist() == [-10, 1, -7]        # only integer: random has no float rows
    agg = gr.paired_summary(pv, "nonlinear", UNITS)
    r = agg.iloc[0]
    assert (r.seeds, r.per_seed, r.better, r.ties) == (3, "-10/+1/-7", 2, 0)
    assert r["mean"] == pytest.approx(-16 / 3) and r["Δ PER points (mean)"] == pytest.approx(100 * (-16 / 3) / UNITS)
    assert gr.paired_bullets(agg, "synthetic − random", "synthetic", "nonlinear") == [
        "* W8A8, nonlinear integer: synthetic − random = -5.3 errors on average (-10/+1/-7 per seed);"
        " synthetic better in 2 of 3 seed(s)."]
    assert gr.every_seed_better(pv, "nonlinear") == (0, 1, [3])
    se = statistics.stdev([-10, 1, -7]) / np.sqrt(3)
    text = gr.paired_sentence(pv, "synthetic", "random")
    assert text.startswith("synthetic had fewer errors than random in 2 of 3 paired runs (0 tie(s))")
    assert f"per run -10 to +1, standard error {se:.1f}" in text and text.endswith("not resolved by this set")
    resolved = pv.assign(**{"Δ errors": [-10, -11, -9]})
    assert gr.paired_sentence(resolved, "synthetic", "random").endswith(
        "resolved: every run has the same sign and the mean is beyond two standard errors")
    assert gr.every_seed_better(resolved, "nonlinear") == (1, 1, [3])


def test_seed_spread_leaves_out_single_seed_calibrations(grid):
    quant = grid[grid.w_bits < 32]
    want = np.mean([statistics.stdev([110, 112, 108]), statistics.stdev([120, 111, 115]),
                    statistics.stdev([105, 113])])
    assert gr.seed_spread(quant, exclude=("real",)) == pytest.approx(want)


def test_degradation_table_names_its_metric(grid):
    t = gr.degradation_table(grid, PAPER, CALS, KINDS, metric="WER", paper_column="paper")
    assert {"WER % (mean ± std)", "Δ WER", "paper"} <= set(t.columns) and "Δ PER" not in t.columns


def test_recipe_rows_values_and_size_points(tmp_path):
    """A grid with paper-method and recipe rows: the recipe rows alone, their synthetic means and
    synthetic-vs-random counts (checked by hand), and the plot's points as two lines."""
    rows = [_row(32, 32, "none", 0, "integer", 100)]
    rows += [_row(4, 8, "synthetic", s, "integer", e) for s, e in zip((0, 1, 2), (150, 152, 148))]
    rows += [_row(4, 8, c, s, "integer", e, recipe="grouped", size_mb=1.2)
             for c, errs in (("synthetic", (104, 106, 105)), ("random", (107, 105, 108)))
             for s, e in zip((0, 1, 2), errs)]
    rows.insert(4, _row(4, 8, "synthetic", 0, "integer", 999, recipe="grouped", size_mb=1.2))   # older: replaced
    path = tmp_path / "grid.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    rec = gr.recipe_rows(path, "m")
    assert len(rec) == 6 and set(rec.recipe) == {"grouped"}
    v = gr.recipe_values(rec, 10.0)
    assert v["rec_w4"] == f"{(105 / 10 - 10.0):+.2f}" and v["rec_w4_name"] == "`grouped`" and v["rec_w4_mb"] == "1.20"
    syn = rec[rec.calibration == "synthetic"].set_index("seed").unit_errors
    ran = rec[rec.calibration == "random"].set_index("seed").unit_errors
    better = sum(int(syn[s] < ran[s]) for s in (0, 1, 2))
    assert v["rec_syn_rand"] == f"W4A8: synthetic had fewer errors than random in {better} of 3 seeds"
    assert v["rec_w6"] == "(not run)"
    grid = pd.DataFrame(rows[:4])   # FP32 and the paper's method
    pts = gr.size_points(grid, rec)
    assert list(pts.weights.drop_duplicates()) == ["paper's method", "default recipes (`grouped` at W4)"]
    assert len(pts) == 3 + 3
    assert gr.recipe_rows(tmp_path / "missing.csv", "m").empty
