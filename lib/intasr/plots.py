"""The book's figures of Table 1, Table 2 and the ablations (matplotlib / seaborn): each function
draws one figure from the tidy frames of ``book_tables`` and ``ablations`` and returns it; the
chapter shows it."""

from __future__ import annotations

from contextlib import contextmanager

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .book_tables import QUARTZNET, TABLE1_BITS, paper_part, table1_runs

LEARNED_COLORS = ("C2", "C4", "C5", "C6", "C8", "C7", "C3", "C9")


@contextmanager
def _seeded_jitter(seed: int = 0):
    """seaborn's stripplot jitters with numpy's global generator: seed it for one figure, so the
    book's figure is the same on every run, and give the caller's state back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _wa(df: pd.DataFrame) -> pd.Series:
    return df.w_bits.astype(str) + "/" + df.a_bits.astype(str)


def table1_figure(table1: pd.DataFrame, results: pd.DataFrame):
    """WER (left) and WER minus own FP32 (right) per W/A: our seed means with the mean CI of one
    run, our single runs (``table1_runs(results)``, jittered), and the paper's values."""
    runs = table1_runs(results)
    qn = table1[table1.model == QUARTZNET].assign(**{"W/A": lambda d: _wa(d)})
    o = qn[(qn.source == "ours") & qn.wer.notna()]
    p = qn[qn.source == "paper"]
    present = set(zip(qn.dropna(subset=["wer"]).w_bits, qn.dropna(subset=["wer"]).a_bits))
    pos = {k: i for i, k in enumerate(f"{w}/{a}" for w, a in TABLE1_BITS if (w, a) in present)}
    pts = runs.assign(**{"W/A": _wa(runs)})
    fp32_wer = float(o[o.w_bits == 32].wer.iloc[0])
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, y, yo, yp, title in [(ax0, "wer", o.wer, p.wer, "WER on test-other"),
                                 (ax1, "delta", o.delta_vs_fp32, p.delta_vs_fp32, "WER minus own FP32")]:
        shift = 0 if y == "wer" else fp32_wer
        ax.errorbar(o["W/A"].map(pos).to_numpy(float) - 0.08, yo,
                    yerr=[(o.wer - o.ci95_lo).clip(lower=0), (o.ci95_hi - o.wer).clip(lower=0)], fmt="o", color="C0",
                    capsize=4, label=f"ours, mean over seeds, 95% CI of one run ({int(o.words.iloc[0])} words)")
        ax.scatter(pts["W/A"].map(pos) + 0.08 + np.random.default_rng(0).uniform(-0.03, 0.03, len(pts)),
                   pts.wer - shift, s=14, color="C0", alpha=0.5, label="ours, single seeds")
        ax.scatter(p["W/A"].map(pos), yp, marker="X", s=80, color="C3", zorder=3, label="paper (full test-other)")
        ax.set_xticks(range(len(pos)), list(pos))
        ax.set(xlabel="W/A bits", title=title, ylabel="WER (%)" if y == "wer" else "Δ WER (points)")
    handles, labels = ax0.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=3, fontsize="small", frameon=False)
    plt.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def table2_runs_figure(results: pd.DataFrame, table2: pd.DataFrame):
    """Every quantized run's change from our FP32 WER, one panel per W/A, by calibration source,
    with our mean, the paper's change, FP32 (dotted) and ± one word (grey band)."""
    fp32 = results[results.w_bits == 32].iloc[0]
    words = int(fp32.words)
    runs = results[results.w_bits < 32].copy()
    runs["delta"] = runs["wer"] - float(fp32.wer)
    runs["W/A"] = _wa(runs)
    paper_t = paper_part(table2)
    wa_order = [f"{w}/{a}" for w, a in sorted({(int(w), int(a)) for w, a in zip(runs.w_bits, runs.a_bits)},
                                               reverse=True)]
    cal_order = [c for c in ("random", "synthetic", "real") if c in set(runs.calibration)]
    fig, axes = plt.subplots(1, len(wa_order), figsize=(3.8 * len(wa_order), 3.8), sharey=True, squeeze=False)
    for ax, wa in zip(axes[0], wa_order):
        d = runs[runs["W/A"] == wa]
        with _seeded_jitter():
            sns.stripplot(data=d, x="calibration", y="delta", order=cal_order, hue="calibration",
                          hue_order=cal_order, size=7, jitter=0.12, ax=ax, legend=False)
        sns.pointplot(data=d, x="calibration", y="delta", order=cal_order, color="k", markers="_", errorbar=None,
                      linestyles="none", ax=ax)
        w, a = (int(v) for v in wa.split("/"))
        for i, c in enumerate(cal_order):
            if (c, w, a) in paper_t.index:
                ax.scatter([i + 0.25], [paper_t.loc[(c, w, a)].delta_vs_fp32], marker="X", s=90, color="C3", zorder=3,
                           label="paper" if i == 0 else None)
        ax.axhline(0, color="k", lw=0.8, ls=":")
        ax.axhspan(-100 / words, 100 / words, color="0.85", zorder=0)
        ax.set(title=f"W/A {wa}", xlabel="", ylabel="Δ WER vs FP32 (points)")
    handles = [plt.Line2D([], [], marker="X", color="C3", ls="none", markersize=9, label="paper (Table 2)"),
               plt.Line2D([], [], marker="_", color="k", ls="none", markersize=12, label="our mean")]
    axes[0, -1].legend(handles=handles, fontsize="x-small")
    plt.tight_layout()
    return fig


def beyond_figure(summary: pd.DataFrame, wa: str = "4/8"):
    """The change from FP32 of each weight-side variant at one W/A (best first), with its WER,
    seeds and size."""
    rows = summary[summary["W/A"] == wa].sort_values("wer_mean")
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1))
    sns.barplot(data=rows, y="variant", x="delta_vs_fp32", color="C0", ax=ax)
    for i, r in enumerate(rows.itertuples()):
        ax.text(r.delta_vs_fp32 + 0.2, i, f"{r.wer_mean:.1f} % ({r.seeds} seed{'s' if r.seeds > 1 else ''},"
                f" {r.size_mb:.1f} MiB)", va="center", fontsize=8)
    w, a = wa.split("/")
    ax.set(xlabel=f"WER minus FP32 (points), W{w}A{a}, synthetic calibration", ylabel="")
    return fig


def _seed_band(ax, runs: pd.DataFrame, summary: pd.DataFrame, color: str, label: str) -> pd.DataFrame:
    """Each budget's runs drawn at the budget's mean size (the seeds' sizes differ by KiB): the seed
    mean with its range. Returns the runs at those sizes."""
    at_mean = runs.merge(summary[["budget", "size_mb"]], on="budget", suffixes=("_run", ""))
    sns.lineplot(data=at_mean, x="size_mb", y="wer", errorbar=("pi", 100), marker="o", color=color, label=label, ax=ax)
    return at_mean


def size_figure(sweep, fp32_wer: float, words: int, paper_marks):
    """WER against stored weight size, from an ``ablations.SizeSweep``: mixed precision per budget
    (seed mean and range, and each run), with learned rounding under a budget, uniform widths +
    bias correction, each learned-rounding variant, FP32 (dotted) and the paper's W8A8 / W6A8 sizes
    (`paper_marks`: rows with w_bits, a_bits, size_mb)."""
    from .ablations import sweep_summary

    mixed, mp_sum, uni_sum = sweep.mixed, sweep.budgets(), sweep.uniform_widths()
    learned, mixed_learned = sweep.learned, sweep.mixed_learned
    fig, ax = plt.subplots(figsize=(8, 4.6))
    runs_mp = _seed_band(ax, mixed, mp_sum, "C0", "mixed 4/6/8-bit + bias correction (seed mean, range)")
    sns.scatterplot(data=runs_mp, x="size_mb", y="wer", color="C0", s=14, alpha=0.5, ax=ax)
    if mixed_learned is not None:
        _seed_band(ax, mixed_learned, sweep_summary(mixed_learned, "budget"), "C9",
                   "mixed 4/6/8-bit + learned rounding (seed mean, range)")
    if uni_sum is not None:
        ax.errorbar(uni_sum.size_mb, uni_sum.wer, yerr=[uni_sum.wer - uni_sum.wer_min, uni_sum.wer_max - uni_sum.wer],
                    fmt="s", color="C1", capsize=4, label="uniform W4/W6/W8 + bias correction")
        for r in uni_sum.itertuples():
            ax.annotate(f"W{r.w_bits}A8", (r.size_mb, r.wer), xytext=(6, -14), textcoords="offset points")
    if learned is not None:
        for k, (variant, d) in enumerate(learned.groupby("variant")):
            ls = sweep_summary(d, "w_bits")
            ax.errorbar(ls.size_mb, ls.wer, yerr=[ls.wer - ls.wer_min, ls.wer_max - ls.wer], fmt="D",
                        color=LEARNED_COLORS[k % len(LEARNED_COLORS)], capsize=4, label=variant)
    ax.axhline(fp32_wer, color="k", ls=":", lw=1, label=f"FP32 ({fp32_wer:.2f} %)")
    for r in paper_marks.itertuples():   # the paper's MB (its own count)
        ax.axvline(r.size_mb, color="C3", ls="--", lw=0.8)
        ax.text(r.size_mb, 0.97, f"paper W{r.w_bits}A{r.a_bits} \nsize {r.size_mb} MB ",
                transform=ax.get_xaxis_transform(), ha="right", va="top", fontsize=8, color="C3")
    ax.set_xlim(right=max(paper_marks.size_mb.max(), ax.get_xlim()[1]) + 0.5)
    ax.set(xlabel="stored weights (MiB, BatchNorm folded)", ylabel=f"WER % ({words} words)",
           title="QuartzNet-15x5, W/A x/8, synthetic calibration, seeds 0-2")
    # below the axes: the learned-rounding variants make a long legend (no tight_layout: it would
    # shrink the axes to fit the legend; the saved figure is cropped to both)
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.14))
    return fig


def conformer_size_figure(rows: pd.DataFrame, fp32_rate: float, units: int, title: str):
    """PER against stored weight size for a Conformer grid's synthetic, integer-only rows, on
    ``size_figure``'s axes: per weight method (column `weights`: the paper's method or a named
    recipe) and width, the seed mean with the seeds' range, each run as a dot; FP32 dotted."""
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for k, (method, d) in enumerate(rows.groupby("weights", sort=False)):
        color = f"C{k}"
        s = (d.groupby("w_bits").agg(size_mb=("size_mb", "mean"), rate=("error_rate", "mean"),
                                     lo=("error_rate", "min"), hi=("error_rate", "max"), seeds=("seed", "nunique"))
             .reset_index().sort_values("size_mb"))
        ax.errorbar(s.size_mb, s.rate, yerr=[s.rate - s.lo, s.hi - s.rate], fmt="o-", color=color, capsize=4,
                    label=f"{method} (seed mean, range)")
        ax.scatter(d.size_mb, d.error_rate, color=color, s=14, alpha=0.5)
        for r in s.itertuples():
            ax.annotate(f"W{r.w_bits}A8", (r.size_mb, r.rate), xytext=(6, 4 if k % 2 else -14),
                        textcoords="offset points", fontsize=8, color=color)
    ax.axhline(fp32_rate, color="k", ls=":", lw=1, label=f"FP32 ({fp32_rate:.2f} %)")
    ax.set(xlabel="stored weights (MiB, BatchNorm folded)", ylabel=f"PER % ({units} phonemes)", title=title)
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.14))
    return fig
