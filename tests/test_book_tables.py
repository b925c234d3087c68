"""Table 1 / Table 2 as the book shows them, the ablation summaries and the chapter helpers, on
small grids whose rows are easy to check by hand (the paper's rows: data/paper_results.csv)."""

import pandas as pd
import pytest

from intasr import ablations, book_tables, chapter_source
from intasr.paper import fp32_wer, paper_results

WORDS = 500


def _run(w, calibration, seed, errors, **more):
    wer = 100 * errors / WORDS
    return {"model": "m", "w_bits": w, "a_bits": 32 if w == 32 else 8, "calibration": calibration, "seed": seed,
            "wer": wer, "word_errors": errors, "words": WORDS, "utterances": 40, "ci95_lo": wer - 2,
            "ci95_hi": wer + 2, "size_mb": {32: 70.0, 8: 18.0, 6: 13.5, 4: 9.0}[w], **more}


@pytest.fixture
def results():
    return pd.DataFrame([
        _run(32, "none", 0, 50),
        _run(8, "synthetic", 0, 52), _run(8, "synthetic", 1, 54),
        _run(8, "random", 0, 60), _run(8, "random", 1, 54),
        _run(6, "synthetic", 0, 55), _run(6, "random", 0, 70),
    ])


def test_table1_rows_and_view(results):
    paper = paper_results()
    t1 = book_tables.table1_rows(results, paper)
    ours = t1[(t1.model == "QuartzNet15x5") & (t1.source == "ours")].set_index("w_bits")
    assert set(ours.index) == {32, 8, 6}   # no W4A8 runs: no W4A8 row
    assert ours.loc[8, "wer"] == pytest.approx(10.6) and ours.loc[8, "seeds"] == 2   # synthetic only
    assert ours.loc[8, "delta_vs_fp32"] == pytest.approx(0.6)
    assert ours.loc[32, "size_mb"] / ours.loc[8, "size_mb"] == pytest.approx(4.0)
    # JasperDR: the architecture's size and BOPs, no WER of ours
    jasper = t1[(t1.model == "JasperDR10x5") & (t1.source == "ours")]
    assert len(jasper) and jasper.wer.isna().all() and (jasper.size_mb > 0).all()
    paper_fp32 = t1[(t1.model == "QuartzNet15x5") & (t1.source == "paper") & (t1.w_bits == 32)].iloc[0]
    assert paper_fp32.wer == fp32_wer(paper, 1, "QuartzNet15x5") and paper_fp32.delta_vs_fp32 == 0

    view = book_tables.table1_view(t1).set_index(["Model", "W/A"])
    assert view.loc[("QuartzNet15x5", "8/8"), "ours test-other"] == "10.60 ± 0.28"
    assert view.loc[("QuartzNet15x5", "8/8"), "Δ ours"] == "+0.60"
    assert view.loc[("JasperDR10x5", "8/8"), "ours test-other"] == "n/a"
    assert view.loc[("QuartzNet15x5", "32/32"), "Δ ours"] == ""

    numbers = book_tables.table1_numbers(t1)
    assert set(numbers) == {"size_diff", "bops_diff", "paper_delta_w8", "paper_delta_w6"}
    lines = book_tables.table1_findings(t1, paper)
    assert lines[0].startswith("* Our FP32 model: **10.00 %** on 500 words")
    assert "+3.0 words' worth; 2 seed(s)" in lines[1]   # 0.6 points, 0.2 per word


def test_test_set_numbers(results):
    n = book_tables.test_set_numbers(results)
    assert n == {"n_utts": 40, "n_words": 500, "one_word": "0.20", "half_ci": "2.0", "n_seeds": 2}


def test_table2_rows_view_pairs_and_findings(results):
    paper = paper_results()
    t2 = book_tables.table2_rows(results, paper)
    ours = t2[t2.source == "ours"]
    # baseline, then the widest W/A first, random before synthetic
    assert list(zip(ours.method, ours.w_bits)) == [("baseline", 32), ("random", 8), ("synthetic", 8),
                                                    ("random", 6), ("synthetic", 6)]
    r8 = ours[(ours.method == "random") & (ours.w_bits == 8)].iloc[0]
    assert r8.wer == pytest.approx(11.4) and r8.delta_vs_fp32 == pytest.approx(1.4) and r8.seeds == 2
    assert (t2.source == "paper").sum() == 5   # the paper reports every row of ours
    view = book_tables.table2_view(t2)
    assert list(view["Method"]) == ["Baseline", "Random", "Synthetic", "Random", "Synthetic"]
    assert view["ours WER"].iloc[1] == "11.40 ± 0.85"

    pair, summary = book_tables.table2_pairs(results, t2)
    assert list(pair["Δ word errors (syn − rand)"]) == [-8, 0, -15]
    assert summary.loc[(8, 8), "synthetic_better"] == 1 and summary.loc[(8, 8), "ties"] == 1
    gap = summary.loc[(8, 8), "paper (syn − rand)"]
    assert gap < 0   # the paper: synthetic better than random
    lines = book_tables.table2_findings(results, t2, summary)
    assert "**500 words** (40 utterances)" in lines[0]
    assert "W6A8: synthetic − random = **-3.00** points (-15.0 words)" in lines[2] and "resolved: synthetic better" in lines[2]
    numbers = book_tables.table2_numbers(results, t2)
    assert numbers["paper_gap_w8"] == f"{-gap:.1f}" and numbers["one_word"] == "0.20"


def test_beyond_rows_and_summary(results):
    beyond = pd.DataFrame([
        _run(4, "synthetic", s, e, bias_correction=b, depthwise_bits=0, weight_method="minmax", rounding="nearest")
        for s, e, b in ((0, 90, True), (1, 94, True), (0, 130, False))])
    allr = ablations.beyond_rows(beyond, results)
    assert set(allr.variant) == {"plain", "bias correction"}
    table = ablations.beyond_summary(allr, fp32_wer=10.0)
    assert list(table["W/A"]) == ["8/8", "6/8", "4/8", "4/8"]   # widest first, then best first
    bc = table[(table["W/A"] == "4/8") & (table.variant == "bias correction")].iloc[0]
    assert bc.wer_mean == pytest.approx(18.4) and bc.delta_vs_fp32 == pytest.approx(8.4) and bc.seeds == 2


def test_size_sweep_numbers():
    runs = pd.DataFrame({"budget": [9.5, 9.5, 11.0, 11.0, 13.0], "seed": [1, 0, 0, 1, 0],
                         "wer": [16.0, 14.0, 12.0, 12.4, 11.0], "word_errors": [80, 70, 60, 62, 55],
                         "size_mb": [9.4, 9.45, 10.9, 10.95, 12.9]})
    mp = ablations.sweep_summary(runs, "budget")
    assert list(mp.budget) == [9.5, 11.0, 13.0] and mp.errors.iloc[0] == "70/80"   # seed order
    uniform = ablations.sweep_summary(pd.DataFrame(
        {"w_bits": [4, 6], "seed": [0, 0], "wer": [18.0, 11.2], "word_errors": [90, 56], "size_mb": [9.0, 13.5]}),
        "w_bits")
    g = ablations.size_sweep_numbers(mp, uniform, fp32_wer=10.0, words=WORDS)
    assert (g["lo_budget"], g["lo_wer"], g["lo_errors"], g["mid_budget"]) == ("9.5", "15.00 ± 1.41", "70/80", "11")
    assert g["w4_delta"] == "+8.00" and g["lo_extra"] == "0.50"
    # within one word (0.2 points) of uniform 6-bit's 11.2: the 13 MiB budget's 11.0
    assert "**13 MiB** (11.00 %)" in g["match"]
    assert g["conclusion"].startswith("Mixed precision removes 38 / 73 / 88 %")


def test_learned_variant_names_the_settings():
    a = pd.DataFrame({"adaround_symmetric": ["True", "False"], "adaround_iterations": [500, 200],
                      "edge_bits": [8, None], "weight_group": [16, 0]})
    v = list(ablations.learned_variant(a))
    assert v[0] == "learned rounding (float inputs, a multiplier per 16 weights, first block + decoder 8-bit, 500 it.)"
    assert v[1] == "learned rounding (quantized inputs, 200 it.)"


def test_chapter_source_helpers(tmp_path):
    root = chapter_source.repo_root()
    assert (root / "data" / "paper_results.csv").is_file()
    assert chapter_source.shown(root / "results" / "grid.csv", root) == "results/grid.csv"
    assert chapter_source.shown(tmp_path / "x.csv", root) == "x.csv"
    assert chapter_source.parse_bits("8/8, 6/8,") == ((8, 8), (6, 8))
    spec = chapter_source.quick_spec("8/8", "synthetic, random", "0,1", 1, 4, 200, 60, 0.05, 8)
    assert spec.calibrations == ("synthetic", "random") and spec.seeds == (0, 1)
    assert spec.synth["iterations"] == 60 and spec.random_frames == 200
    df = pd.DataFrame({"model_sha256": ["a" * 64], "eval_sha256": ["b" * 64]})
    assert chapter_source.known_provenance(df)
    assert not chapter_source.known_provenance(df.assign(eval_sha256="unknown"))
    assert chapter_source.sha_prefix(df) == "sha256 aaaaaaaa"
    a = chapter_source.quick_grid_csv(tmp_path / "q.csv", spec, root / "data" / "paper_results.csv", [], 8)
    b = chapter_source.quick_grid_csv(tmp_path / "q.csv", spec, root / "data" / "paper_results.csv", [], 9)
    assert a.name.startswith("q_") and a != b   # another limit: another file


def test_table2_runs_figure_is_the_same_whatever_the_global_random_state(results):
    """seaborn jitters the strip plot with numpy's global generator: the figure seeds it (and puts
    the caller's state back), so the book's PNG does not change from run to run."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from intasr import plots

    t2 = book_tables.table2_rows(results, paper_results())

    def offsets(seed):
        np.random.seed(seed)
        fig = plots.table2_runs_figure(results, t2)
        after = np.random.random()   # the caller's stream continues where it was
        points = [c.get_offsets().data.copy() for ax in fig.axes for c in ax.collections if len(c.get_offsets())]
        matplotlib.pyplot.close(fig)
        return points, after

    (a, after_a), (b, _) = offsets(1), offsets(2)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    np.random.seed(1)
    assert after_a == np.random.random()
