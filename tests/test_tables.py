"""The experiment grid: tidy rows with provenance, resume by settings + model + data, summary."""

import pandas as pd
import torch
from grid_fixtures import tiny_model_and_data

from intasr.models import load_model, save_model
from intasr.tables import GridSpec, run_grid, summarize


def _count_quantize(monkeypatch):
    """Record (w, a) of every cell that is quantized (the grid's one entry point)."""
    import intasr.quantize as quantize

    calls, real = [], quantize.quantize
    monkeypatch.setattr(quantize, "quantize", lambda m, b, w, a, **k: calls.append((w, a)) or real(m, b, w, a, **k))
    return calls


def test_grid_rows_resume_and_summary(tmp_path, monkeypatch):
    import intasr.tables as tables

    model_path, test_other_dir = tiny_model_and_data(tmp_path)
    csv = tmp_path / "grid.csv"
    spec = GridSpec(bits=((8, 8), (4, 8)), calibrations=("random",), seeds=(0, 1), random_frames=100)
    df = run_grid(model_path, test_other_dir, csv, spec, limit=2, progress=False)
    assert len(df) == 1 + 2 * 2 and df["cell_key"].is_unique
    assert set(df.columns) >= {"model", "w_bits", "a_bits", "calibration", "seed", "wer", "cer", "words",
                               "word_errors", "ci95_lo", "ci95_hi", "size_mb", "bops_t", *tables.PROVENANCE,
                               *tables.CALIB_COLUMNS}
    assert (df.model_sha256.str.len() == 64).all() and (df.eval_utterances == 2).all()
    assert (df[df.calibration == "random"].calib_frames.astype(int) == 100).all()
    on_disk = pd.read_csv(csv)
    assert len(on_disk) == len(df)

    # an interrupted run: the last cell's row and file are missing; a rerun computes only that cell
    on_disk.iloc[:-1].to_csv(csv, index=False)
    (tmp_path / "cells" / f"{on_disk.iloc[-1].cell_key}.json").unlink()
    calls = _count_quantize(monkeypatch)
    df2 = run_grid(model_path, test_other_dir, csv, spec, limit=2, progress=False)
    assert len(df2) == len(df) and calls == [(4, 8)]
    timing = [c for c in df.columns if c.endswith("_seconds")]
    pd.testing.assert_frame_equal(df2.drop(columns=timing), df.drop(columns=timing), check_dtype=False)
    s = summarize(df2)
    fp32 = s[s.w_bits == 32].iloc[0]
    assert fp32.delta_vs_fp32 == 0
    w8 = s[(s.w_bits == 8)].iloc[0]
    assert w8.seeds == 2 and abs(w8.delta_vs_fp32 - (w8.wer_mean - fp32.wer_mean)) < 1e-9
    assert tables.KEY[:5] == ["model", "w_bits", "a_bits", "calibration", "seed"]

    # a variant (bias correction) is a row of its own, not a duplicate of the plain one
    spec_bc = GridSpec(bits=((4, 8),), calibrations=("random",), seeds=(0,), random_frames=100, bias_correction=True)
    df3 = run_grid(model_path, test_other_dir, csv, spec_bc, limit=2, progress=False)
    assert len(df3) == len(df) + 1 and df3.iloc[-1].bias_correction in (True, "True")
    assert len(tables.paper_method_rows(df3)) == len(df)

    # another evaluation set, another model file: new rows, none reused
    calls.clear()
    df5 = run_grid(model_path, test_other_dir, csv, spec_bc, limit=3, progress=False)
    assert calls == [(4, 8)] and len(df5) == len(df3) + 2 and set(df5.eval_utterances.astype(int)) == {2, 3}
    other = load_model(model_path)
    with torch.no_grad():
        other.decoder.decoder_layers[0].bias.add_(0.01)
    other_path = save_model(other, tmp_path / "other" / "tiny.nemo")   # the same name, other weights
    calls.clear()
    df6 = run_grid(other_path, test_other_dir, csv, spec_bc, limit=3, progress=False)
    assert calls == [(4, 8)] and len(df6) == len(df5) + 2 and df6.model_sha256.nunique() == 2


def test_legacy_rows_load_and_are_never_reused(tmp_path):
    import intasr.tables as tables

    model_path, test_other_dir = tiny_model_and_data(tmp_path)
    csv = tmp_path / "grid.csv"
    # a committed CSV from before provenance: same model name and settings, a WER no run gives
    legacy = pd.DataFrame([dict(model="tiny", w_bits=w, a_bits=a, calibration=c, seed=0, wer=-1.0, words=10,
                                word_errors=-1, ci95_lo=0, ci95_hi=0, size_mb=0, bops_t=0)
                           for w, a, c in [(32, 32, "none"), (8, 8, "random")]])
    legacy.to_csv(csv, index=False)
    loaded = tables._load(csv)
    assert (loaded.model_sha256 == "unknown").all() and (loaded.calib_frames == "unknown").all()
    assert len(summarize(loaded)) == 2
    df = run_grid(model_path, test_other_dir, csv, GridSpec(bits=((8, 8),), calibrations=("random",), seeds=(0,),
                                                            random_frames=100), limit=2, progress=False)
    assert len(df) == 2 and (df.wer >= 0).all() and (df.model_sha256 != "unknown").all()


def test_load_or_run_grid_prefers_a_complete_full_grid(tmp_path):
    import intasr.tables as tables

    rows = [dict(model="m", w_bits=w, a_bits=a, calibration=c, seed=0, wer=1.0)
            for w, a, c in [(32, 32, "none"), (8, 8, "synthetic"), (6, 8, "synthetic")]]
    old_format = pd.DataFrame(rows)  # written before the settings columns existed
    incomplete, complete = tmp_path / "a.csv", tmp_path / "b.csv"
    old_format.iloc[:2].to_csv(incomplete, index=False)
    variant = dict(rows[1], weight_method="mse", wer=50.0)
    pd.DataFrame(rows + [variant]).to_csv(complete, index=False)
    df, source = tables.load_or_run_grid("x/m.nemo", None, None, None, ["synthetic"], [(8, 8), (6, 8)],
                                         [incomplete, complete], tmp_path / "quick.csv", GridSpec(), None)
    assert str(complete) in source and len(df) == 3 and (df.wer == 1.0).all()


def test_load_or_run_grid_runs_the_quick_grid_when_no_full_grid_is_complete(tmp_path):
    import intasr.tables as tables

    model_path, test_other_dir = tiny_model_and_data(tmp_path)
    spec = GridSpec(bits=((8, 8),), calibrations=("random",), seeds=(0,), random_frames=100)
    quick = tmp_path / "quick.csv"
    df, source = tables.load_or_run_grid(model_path, test_other_dir, None, tmp_path / "cache", ["random"],
                                         [(8, 8)], [tmp_path / "missing.csv"], quick, spec, 2)
    assert "quick grid" in source and quick.is_file()
    assert sorted(zip(df.w_bits.astype(int), df.calibration)) == [(8, "random"), (32, "none")]
    forced, source = tables.load_or_run_grid(model_path, test_other_dir, None, tmp_path / "cache", ["random"],
                                             [(8, 8)], [quick], quick, spec, 2, force_quick=True)
    assert "quick grid" in source and len(forced) == len(df)


def test_a_named_recipe_is_a_row_of_its_own_and_the_papers_method_is_shared(tmp_path, monkeypatch):
    """--recipe: the width's recipe columns in the row and its resume key; a width whose recipe is the
    paper's method (8 bits) is the flags' cell itself, computed once."""
    import intasr.tables as tables

    model_path, test_other_dir = tiny_model_and_data(tmp_path)
    csv = tmp_path / "grid.csv"
    base = dict(bits=((8, 8), (6, 8)), calibrations=("random",), seeds=(0,), random_frames=100)
    df = run_grid(model_path, test_other_dir, csv, GridSpec(**base), limit=2, progress=False)
    calls = _count_quantize(monkeypatch)
    df2 = run_grid(model_path, test_other_dir, csv, GridSpec(**base, recipe="default"), limit=2, progress=False)
    assert calls == [(6, 8)] and len(df2) == len(df) + 1
    row = df2[df2.recipe.astype(str) == "bc"].iloc[0]
    assert int(row.w_bits) == 6 and row.bias_correction in (True, "True") and row.rounding == "nearest"
    assert set(tables.RECIPE_COLUMNS) <= set(df2.columns)
    assert len(tables.paper_method_rows(df2)) == len(df)   # the recipe row is not the paper's method


def test_a_conformer_grid_with_recipes_and_float_nonlinearities(tmp_path):
    """A Conformer grid with --recipe default and --simulated: the 4-bit cell is the grouped recipe
    (its own size: 8-bit edges and multipliers), the float-non-linearity cells are the paper's method."""
    import intasr.tables as tables
    from intasr.models import ConformerCTC, conformer_ctc_config
    from intasr.quantize import RECIPES

    _, data = tiny_model_and_data(tmp_path)
    torch.manual_seed(0)
    model = ConformerCTC(conformer_ctc_config("small", bpe=False, n_layers=1)).eval()
    path = save_model(model, tmp_path / "conf.nemo")
    spec = GridSpec(bits=((8, 8), (4, 8)), calibrations=("random",), seeds=(0,), random_frames=100,
                    simulated=True, recipe="default")
    df = run_grid(path, data, tmp_path / "grid.csv", spec, limit=2, progress=False)
    assert len(df) == 1 + 2 * 2 and df.cell_key.is_unique
    w4 = df[(df.w_bits == 4) & (df.nonlinear == "integer")].iloc[0]
    assert w4.recipe == "grouped" and w4.rounding == "adaround" and int(w4.weight_group) == 16
    assert w4.edge_parts == "+".join(RECIPES["grouped"]["edge_parts"])
    plain = df[(df.w_bits == 4) & (df.nonlinear == "float")].iloc[0]
    assert str(plain.recipe) in ("nan", "") and plain.rounding == "nearest"
    assert float(w4.size_mb) > float(plain.size_mb)   # the edges at 8 bits and the multipliers
    assert tables.variant(w4) == "`grouped` recipe"
