"""The experiment grid: tidy rows, resume after interruption, summary with the FP32 gap."""

import pandas as pd

from asrquant.models import save_model
from asrquant.tables import GridSpec, run_grid, summarize


def test_grid_rows_resume_and_summary(small_quartznet, test_other_dir, tmp_path, monkeypatch):
    model_path = save_model(small_quartznet, tmp_path / "small.nemo")
    csv = tmp_path / "grid.csv"
    spec = GridSpec(bits=((8, 8), (4, 8)), calibrations=("random",), seeds=(0, 1), random_frames=100)
    df = run_grid(model_path, test_other_dir, csv, spec, limit=2, progress=False)
    assert len(df) == 1 + 2 * 2
    assert set(df.columns) >= {"model", "w_bits", "a_bits", "calibration", "seed", "wer", "cer", "words",
                               "word_errors", "ci95_lo", "ci95_hi", "size_mb", "bops_t"}
    on_disk = pd.read_csv(csv)
    assert len(on_disk) == len(df)

    # an interrupted run: the last row is missing; a rerun computes only that row
    on_disk.iloc[:-1].to_csv(csv, index=False)
    calls = []
    import asrquant.tables as tables

    real_convert = __import__("asrquant.convert", fromlist=["convert"]).convert
    monkeypatch.setattr("asrquant.convert.convert", lambda *a, **k: calls.append(a[2:4]) or real_convert(*a, **k))
    df2 = run_grid(model_path, test_other_dir, csv, spec, limit=2, progress=False)
    assert len(df2) == len(df) and calls == [(4, 8)]
    pd.testing.assert_frame_equal(df2.drop(columns=["eval_seconds", "calib_seconds"]),
                                  df.drop(columns=["eval_seconds", "calib_seconds"]), check_dtype=False)
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


def test_load_or_run_grid_prefers_a_complete_full_grid(tmp_path):
    import asrquant.tables as tables

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
