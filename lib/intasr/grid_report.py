"""One model's rows of an experiment grid, read back as the book's tables, plots and sentences.

A grid CSV (``tables.py``, ``intasr grid``) has one row per (model, W/A, calibration, seed,
method, non-linearity kind) with the error rate and the unit errors (words or phonemes). This
module selects one model's rows made with one method (``read_method_rows``), says which of the
expected rows are missing (``expected_keys``, ``missing_keys``, ``choose_grid``), lays the rows out
against FP32 and the paper (``degradation_table``), and compares two settings paired by seed
(``paired_differences``, ``paired_summary``, ``paired_sentence``): within one seed both settings
decode the same utterances, so the difference of their errors is free of between-utterance
variance. Nothing is measured here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from intasr import tables

# the paper's method: the only rows that Table 1 and Table 2 compare
PAPER_METHOD = {"observer": "minmax", "weight_method": "minmax", "bias_correction": "False",
                "depthwise_bits": "0", "rounding": "nearest"}
KEY = ["w_bits", "a_bits", "calibration", "seed", "nonlinear"]
FP32_KEY = (32, 32, "none", 0, "integer")


def expected_keys(bits, calibrations, seeds, kinds, single_seed=("real",)) -> list[tuple]:
    """The ``KEY`` tuples a table needs: FP32 once, then every (W/A, calibration, kind, seed) with
    one seed (the first) for the calibrations in single_seed (deterministic sources)."""
    return [FP32_KEY] + [(w, a, c, s, k) for w, a in bits for c in calibrations for k in kinds
                         for s in (seeds if c not in single_seed else seeds[:1])]


def read_method_rows(path, model: str, method: dict = PAPER_METHOD) -> pd.DataFrame:
    """The rows of ``model`` made with ``method`` (a column absent from the file, or empty in a row,
    counts as the method's value); ``nonlinear`` defaults to "integer"; the last row per ``KEY``."""
    df = pd.read_csv(path)
    df["nonlinear"] = df["nonlinear"].fillna("integer") if "nonlinear" in df else "integer"
    keep = df["model"] == model
    for col, v in method.items():
        if col in df:
            keep &= df[col].fillna(v).astype(str) == v
    return df[keep].drop_duplicates(KEY, keep="last").reset_index(drop=True)


def missing_keys(df: pd.DataFrame, expected) -> list[tuple]:
    """The expected ``KEY`` tuples that df has no row for, in expected's order."""
    have = set(zip(df.w_bits.astype(int), df.a_bits.astype(int), df.calibration, df.seed.astype(int), df.nonlinear))
    return [k for k in expected if k not in have]


def choose_grid(candidates, model: str, expected, shown=str) -> tuple[Path | None, pd.DataFrame, list[str]]:
    """Of the candidate CSVs that exist, the one missing the fewest expected rows (the first on a
    tie): (its path, its rows of ``model``, one report line per existing candidate). No candidate:
    (None, an empty frame with the ``KEY`` columns, one line naming them). shown: how a path prints."""
    found = [(Path(p), read_method_rows(p, model)) for p in candidates if Path(p).is_file()]
    lines = [f"{shown(p)}: {len(df)} row(s) for model {model!r}, {len(expected) - len(missing_keys(df, expected))}"
             f" of the {len(expected)} this section needs" for p, df in found]
    if not found:
        names = " or ".join(shown(Path(p)) for p in candidates)
        return None, pd.DataFrame(columns=KEY), [f"no Conformer grid CSV yet: {names} (run the command above)"]
    path, grid = min(found, key=lambda f: len(missing_keys(f[1], expected)))
    return path, grid, lines


def missing_report(gaps, n_expected: int) -> list[str]:
    """Missing ``KEY`` tuples as lines, one per (W/A, calibration, kind) with its seeds."""
    if not gaps:
        return ["every row is there"]
    lines = [f"missing {len(gaps)} of {n_expected} rows (the tables below show what exists):"]
    g = pd.DataFrame(gaps, columns=KEY).groupby(["w_bits", "a_bits", "calibration", "nonlinear"], sort=False)["seed"]
    for (w, a, c, k), s in g:
        setting = "FP32" if w == 32 else f"W{w}A{a}"
        lines.append(f"  {setting} {c} ({k} non-linearities): seed(s) {', '.join(map(str, s))}")
    return lines


def degradation_table(grid: pd.DataFrame, paper_wer: pd.Series, calibrations, kinds,
                      paper_setting=("synthetic", "integer"), metric: str = "PER",
                      paper_column: str = "paper WER (Conformer-Large)") -> pd.DataFrame:
    """FP32, then per (W/A widest first, calibration and kind in the given orders): the mean ± std
    error rate over seeds, the errors per seed, the change from FP32 (points and relative) and, for
    the paper's setting (calibration, kind), the paper's rate (``paper_wer``: by w_bits, 32 = FP32)
    and its relative change. All cells are text; metric names our rate's columns, paper_column the
    paper's."""
    fp32 = grid[grid.w_bits == 32]
    quant = grid[grid.w_bits < 32]
    grid_fp32, paper_fp32 = float(fp32.error_rate.iloc[0]), float(paper_wer.loc[32])
    summ = tables.summarize(grid)
    summ = summ[summ.w_bits < 32]
    rows = [{"W/A": "32/32", "calibration": "—", "non-linearities": "float",
             f"{metric} % (mean ± std)": f"{grid_fp32:.2f}", "seeds": 1,
             "errors per seed": str(int(fp32.unit_errors.iloc[0])), f"Δ {metric}": "", "Δ relative": "",
             paper_column: f"{paper_fp32:.2f}", "paper Δ relative": ""}]
    summ = summ.assign(_c=summ.calibration.map({c: i for i, c in enumerate(calibrations)}),
                       _k=summ.nonlinear.map({k: i for i, k in enumerate(kinds)}))
    for r in summ.sort_values(["w_bits", "_c", "_k"], ascending=[False, True, True]).itertuples():
        same = (quant.w_bits == r.w_bits) & (quant.calibration == r.calibration) & (quant.nonlinear == r.nonlinear)
        runs = quant[same]
        p = paper_wer.get(r.w_bits) if (r.calibration, r.nonlinear) == tuple(paper_setting) else None
        rows.append({
            "W/A": f"{r.w_bits}/{r.a_bits}", "calibration": r.calibration, "non-linearities": r.nonlinear,
            f"{metric} % (mean ± std)": f"{r.rate_mean:.2f}" + (f" ± {r.rate_std:.2f}" if r.seeds > 1 else ""),
            "seeds": int(r.seeds),
            "errors per seed": "/".join(str(int(v)) for v in runs.sort_values("seed").unit_errors),
            f"Δ {metric}": f"{r.delta_vs_fp32:+.2f}", "Δ relative": f"{100 * r.delta_vs_fp32 / grid_fp32:+.1f}%",
            paper_column: f"{p:.2f}" if p is not None else "—",
            "paper Δ relative": f"{100 * (p / paper_fp32 - 1):+.1f}%" if p is not None else "—",
        })
    return pd.DataFrame(rows)


def relative_values(grid: pd.DataFrame, paper_wer: pd.Series, kinds, w_bits=(8, 6),
                    calibration: str = "synthetic") -> dict[str, str]:
    """What prose quotes: per W and kind our relative change from FP32 (``ours_rel_w{W}_{kind}``,
    mean over seeds, "(not in the grid yet)" when absent), the paper's rate and relative change per
    W, and the paper's relative W8 change in our FP32 errors (``paper_equiv_w8``)."""
    fp32 = grid[grid.w_bits == 32]
    have = len(fp32) > 0 and (grid.w_bits < 32).any()
    summ = tables.summarize(grid) if have else None
    paper_fp32 = float(paper_wer.loc[32])
    out = {}
    for w in w_bits:
        for k in kinds:
            r = summ[(summ.w_bits == w) & (summ.calibration == calibration) & (summ.nonlinear == k)] if have else []
            rel = 100 * float(r.delta_vs_fp32.iloc[0]) / float(fp32.error_rate.iloc[0]) if len(r) else None
            out[f"ours_rel_w{w}_{k}"] = f"{rel:+.1f} %" if rel is not None else "(not in the grid yet)"
        out[f"paper_w{w}"] = f"{float(paper_wer.loc[w]):.2f}"
        out[f"paper_rel_w{w}"] = f"{100 * (float(paper_wer.loc[w]) / paper_fp32 - 1):+.0f}"
    out["paper_equiv_w8"] = (f"{(float(paper_wer.loc[8]) / paper_fp32 - 1) * int(fp32.unit_errors.iloc[0]):.0f}"
                             if len(fp32) else "(no FP32 row in the grid yet)")
    return out


def plot_relative(quant: pd.DataFrame, grid_fp32: float, units: int, paper_wer: pd.Series, bits, calibrations, kinds):
    """One panel per W/A: every run's relative change from FP32 (%) by calibration and kind, the
    paper's synthetic integer-only result as a cross (where the paper has the width), and a grey
    band of ± one unit error."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    runs = quant.assign(**{"W/A": quant.w_bits.astype(str) + "/" + quant.a_bits.astype(str),
                           "rel %": 100 * (quant.error_rate - grid_fp32) / grid_fp32})
    wa_order = [f"{w}/{a}" for w, a in bits if ((runs.w_bits == w) & (runs.a_bits == a)).any()]
    cal_order = [c for c in calibrations if c in set(runs.calibration)]
    kind_order = [k for k in kinds if k in set(runs.nonlinear)]
    fig, axes = plt.subplots(1, len(wa_order), figsize=(5.2 * len(wa_order), 4), sharey=True, squeeze=False)
    band = 100 / grid_fp32 * 100 / units
    for ax, wa in zip(axes[0], wa_order):
        sns.stripplot(data=runs[runs["W/A"] == wa], x="calibration", y="rel %", hue="nonlinear", order=cal_order,
                      hue_order=kind_order, dodge=True, jitter=0.08, size=7, ax=ax)
        w = int(wa.split("/")[0])
        if "synthetic" in cal_order and w in paper_wer.index:   # the paper has no W4A8 Conformer
            paper_rel = 100 * (float(paper_wer.loc[w]) / float(paper_wer.loc[32]) - 1)
            ax.scatter([cal_order.index("synthetic") - 0.2], [paper_rel], marker="X", s=120, color="C3", zorder=3,
                       label="paper (Conformer-Large)")
        ax.axhline(0, color="k", lw=0.8, ls=":")
        ax.axhspan(-band, band, color="0.88", zorder=0)
        ax.set(title=f"W/A {wa}", xlabel="", ylabel="relative degradation vs FP32 (%)")
        ax.legend(fontsize="x-small", title=None)
    plt.tight_layout()
    return fig


def paired_differences(rows: pd.DataFrame, column: str, a: str, b: str, by: str,
                       value: str = "unit_errors") -> pd.DataFrame:
    """Per (w_bits, a_bits, by, seed) where both exist: ``value`` for column == a and == b, and their
    difference ``Δ errors`` = a - b (negative: a has fewer)."""
    sub = rows[rows[column].isin([a, b])]
    pv = sub.pivot_table(index=["w_bits", "a_bits", by, "seed"], columns=column, values=value).dropna()
    if len(pv):
        pv["Δ errors"] = pv[a] - pv[b]
    return pv


def paired_summary(pv: pd.DataFrame, by: str, units: int) -> pd.DataFrame:
    """``paired_differences`` per (W/A, by): seeds, mean difference, the differences per seed,
    seeds where a was better (``better``: difference < 0), ties, and the mean in rate points
    (100 * mean / units)."""
    agg = pv.groupby(["w_bits", "a_bits", by], sort=False)["Δ errors"].agg(
        seeds="size", mean="mean", per_seed=lambda s: "/".join(f"{int(v):+d}" for v in s),
        better=lambda s: int((s < 0).sum()), ties=lambda s: int((s == 0).sum()))
    agg["Δ PER points (mean)"] = 100 * agg["mean"] / units
    return agg


def paired_bullets(agg: pd.DataFrame, title: str, a: str, by: str) -> list[str]:
    """One Markdown bullet per row of ``paired_summary``."""
    return [f"* W{w}A{aa}, {by} {k}: {title} = {r['mean']:+.1f} errors on average ({r.per_seed} per seed);"
            f" {a} better in {r.better} of {r.seeds} seed(s)" + (f", {r.ties} tie(s)" if r.ties else "") + "."
            for (w, aa, k), r in agg.iterrows()]


def every_seed_better(pv: pd.DataFrame, by: str) -> tuple[int, int, list[int]]:
    """(settings (W/A, by) where a beat b in every seed, settings, seeds per setting)."""
    groups = pv.groupby(["w_bits", "a_bits", by])["Δ errors"]
    every = groups.apply(lambda s: bool((s < 0).all()))
    return int(every.sum()), len(every), groups.size().tolist()


def paired_sentence(pv: pd.DataFrame, a: str, b: str) -> str:
    """One sentence over every paired run: how often a beat b, the mean and range of a - b, its
    standard error (sample std / sqrt(n); infinite for one run) and the verdict: resolved when
    every run has the same sign and |mean| > 2 standard errors."""
    dd = pv["Δ errors"]
    n, mean = len(dd), float(dd.mean())
    se = float(dd.std(ddof=1)) / np.sqrt(n) if n > 1 else float("inf")
    beyond, one_sign = abs(mean) > 2 * se, bool((dd < 0).all() or (dd > 0).all())
    verdict = ("resolved: every run has the same sign and the mean is beyond two standard errors"
               if beyond and one_sign else
               "the mean is beyond two standard errors, though not every run agrees" if beyond else
               "within two standard errors of zero: not resolved by this set")
    return (f"{a} had fewer errors than {b} in {int((dd < 0).sum())} of {n} paired runs"
            f" ({int((dd == 0).sum())} tie(s)); {a} − {b} = {mean:+.1f} phoneme errors on"
            f" average (per run {int(dd.min()):+d} to {int(dd.max()):+d}, standard error"
            f" {se:.1f}), {verdict}")


def seed_spread(rows: pd.DataFrame, exclude=("real",), value: str = "unit_errors") -> float:
    """The seed-to-seed standard deviation of ``value`` per (w_bits, calibration, nonlinear),
    averaged over settings, leaving out the calibrations in exclude (one seed each)."""
    return float(rows[~rows.calibration.isin(exclude)].groupby(["w_bits", "calibration", "nonlinear"])[value]
                 .std().mean())


def recipe_rows(path, model: str) -> pd.DataFrame:
    """The rows of ``model`` a grid made with a named recipe (``intasr grid --recipe``), integer
    non-linearities; the last row per (W/A, calibration, seed, recipe). Empty without any."""
    if path is None or not Path(path).is_file():
        return pd.DataFrame()
    df = tables.load_frame(pd.read_csv(path))
    if "recipe" not in df:
        return pd.DataFrame()
    keep = (df.model == model) & df.recipe.notna() & ~df.recipe.astype(str).isin(["", "nan", "-"])
    return df[keep].drop_duplicates(["w_bits", "a_bits", "calibration", "seed", "recipe"], keep="last")


def recipe_table(rows: pd.DataFrame, grid_fp32: float) -> pd.DataFrame:
    """``recipe_rows`` per (W/A, calibration): mean and std over seeds, the recipe, size and the
    change from FP32."""
    t = tables.summarize(rows.assign(nonlinear="integer"))
    t = t[["w_bits", "a_bits", "calibration", "rate_mean", "rate_std", "seeds", "unit_errors_mean", "size_mb"]]
    t["recipe"] = [rows[rows.w_bits == w].recipe.iloc[0] for w in t.w_bits]
    t["delta_vs_fp32"] = t.rate_mean - grid_fp32
    return t.reset_index(drop=True)


def recipe_values(rows: pd.DataFrame, grid_fp32: float, widths=(4, 6)) -> dict:
    """What a chapter says of ``recipe_rows``: per width the recipe, its synthetic mean change from
    FP32, seeds and size (``rec_w{w}``, ``_name``, ``_seeds``, ``_mb``), and synthetic against random
    per seed (``rec_syn_rand``)."""
    out = {}
    for w in widths:
        d = rows[(rows.w_bits == w) & (rows.calibration == "synthetic")] if len(rows) else rows
        out.update({f"rec_w{w}": f"{d.error_rate.mean() - grid_fp32:+.2f}" if len(d) else "(not run)",
                    f"rec_w{w}_name": f"`{d.recipe.iloc[0]}`" if len(d) else "(none)",
                    f"rec_w{w}_seeds": f"{d.seed.nunique()}" if len(d) else "0",
                    f"rec_w{w}_mb": f"{d.size_mb.mean():.2f}" if len(d) else "-"})
    pairs = tables.synthetic_vs_random(rows) if len(rows) else []
    out["rec_syn_rand"] = ("; ".join(f"W{w}A{a}: synthetic had fewer errors than random in "
                                     f"{sum(s < r for s, r in p)} of {len(p)} seeds" for w, a, p in pairs)
                           or "not measured yet")
    return out


def size_points(grid: pd.DataFrame, recipes: pd.DataFrame) -> pd.DataFrame:
    """The synthetic, integer-only quantized runs for ``plots.conformer_size_figure``: the grid's
    paper-method rows and the recipe rows as one line (column ``weights``)."""
    paper = grid[(grid.nonlinear == "integer") & (grid.calibration == "synthetic") & (grid.w_bits < 32)]
    pts = [paper.assign(weights="paper's method")]
    if len(recipes):
        syn = recipes[recipes.calibration == "synthetic"]
        names = ", ".join(f"`{r}` at W{w}" for w, r in syn.drop_duplicates("w_bits")[["w_bits", "recipe"]]
                          .itertuples(index=False))
        pts.append(syn.assign(weights=f"default recipes ({names})"))
    return pd.concat(pts, ignore_index=True)
