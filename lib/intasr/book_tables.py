"""Table 1 and Table 2 as the book shows them: our grid rows (aggregated over seeds) beside the
paper's, as a tidy frame (one row per model, W/A or method, and source), the displayed view of
it, and the findings it supports in words.

Ours are the rows of one grid made with the paper's method (``tables.paper_method_rows``): the
FP32 row and the quantized rows of each calibration source. A difference ``delta_vs_fp32`` is
always to the same source's full-precision WER (ours to ours, the paper's to the paper's), since
the absolute levels are measured on different test sets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import paper as published
from .aggregate import seed_summary
from .experiments import bops, meta_model, model_size_mb

QUARTZNET = "QuartzNet15x5"
TABLE1_MODELS = ((QUARTZNET, "quartznet15x5"), ("JasperDR10x5", "jasperdr10x5"), ("Conformer-Large", None))
TABLE1_BITS = ((32, 32), (8, 8), (6, 8), (4, 8))
METHOD_ORDER = {"random": 0, "synthetic": 1, "real": 2}


def _opt(x, fmt: str, cond: bool = True) -> str:
    """x formatted, or '' when it is missing (NaN/None) or `cond` is false."""
    return format(x, fmt) if cond and x is not None and pd.notna(x) else ""


# --------------------------------------------------------------------------- Table 1

def table1_runs(results: pd.DataFrame) -> pd.DataFrame:
    """The runs behind our Table 1 rows: FP32 and the synthetic-calibration runs."""
    return results[((results.calibration == "synthetic") & (results.w_bits < 32)) | (results.w_bits == 32)]


def table1_ours(results: pd.DataFrame) -> pd.DataFrame:
    """Our Table 1 rows per W/A: FP32 and the synthetic-calibration rows, aggregated over seeds."""
    return seed_summary(table1_runs(results), ["w_bits", "a_bits"], rate="wer", errors="word_errors",
                        more={"words": "first", "utterances": "first"}, sort=True)


def table1_rows(results: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Tidy Table 1: per model and W/A, our row (QuartzNet: WER, seeds, words, CI, size, BOPs;
    JasperDR: size and BOPs of the architecture only) and the paper's (every split's WER)."""
    agg = table1_ours(results)
    fp32 = float(agg.loc[agg.w_bits == 32, "rate"].iloc[0])
    tidy = []
    for model, arch_name in TABLE1_MODELS:
        arch = meta_model(arch_name) if arch_name else None
        for w, a in TABLE1_BITS:
            q = published.table_rows(paper, 1, model, split=None)
            q = q[(q.w_bits == w) & (q.a_bits == a)]
            ours = agg[(agg.w_bits == w) & (agg.a_bits == a)] if model == QUARTZNET else agg.iloc[0:0]
            if q.empty and ours.empty:
                continue
            base = {"model": model, "w_bits": w, "a_bits": a, "split": "test-other"}
            calibration = "none" if w == 32 else "synthetic"
            if len(ours):
                o = ours.iloc[0]
                tidy.append({**base, "source": "ours", "calibration": calibration, "wer": o.rate,
                             "wer_std": o["std"], "seeds": int(o.seeds), "words": int(o.words),
                             "utterances": int(o.utterances), "ci95_lo": o.ci95_lo, "ci95_hi": o.ci95_hi,
                             "delta_vs_fp32": o.rate - fp32, "size_mb": model_size_mb(arch, w),
                             "bops_t": bops(arch, w, a) / 1e12})
            elif arch is not None and not q.empty:   # the architecture alone: size and BOPs, no WER
                tidy.append({**base, "source": "ours", "calibration": calibration,
                             "size_mb": model_size_mb(arch, w), "bops_t": bops(arch, w, a) / 1e12})
            if not q.empty:
                split_wer = {s: float(q.loc[q.split == s, "wer"].iloc[0]) if (q.split == s).any() else np.nan
                             for s in published.SPLITS}
                tidy.append({**base, "source": "paper", "calibration": calibration, "wer": split_wer["test-other"],
                             "delta_vs_fp32": split_wer["test-other"] - published.fp32_wer(paper, 1, model),
                             "size_mb": float(q["size_mb"].iloc[0]), "bops_t": float(q["bops_t"].iloc[0]),
                             **{f"paper_{s}": split_wer[s] for s in published.SPLITS}})
    return pd.DataFrame(tidy)


def table1_view(table1: pd.DataFrame) -> pd.DataFrame:
    """Table 1 as displayed: one line per model and W/A, ours and the paper's side by side."""
    view = []
    for (model, w, a), g in table1.groupby(["model", "w_bits", "a_bits"], sort=False):
        o = g[g.source == "ours"].iloc[0] if (g.source == "ours").any() else pd.Series(dtype=object)
        p = g[g.source == "paper"].iloc[0] if (g.source == "paper").any() else pd.Series(dtype=object)
        has_wer = len(o) and pd.notna(o.get("wer"))
        view.append({
            "Model": model, "W/A": f"{w}/{a}",
            "ours test-other": _wer_std(o) if has_wer else "n/a",
            "seeds": int(o["seeds"]) if len(o) and pd.notna(o.get("seeds")) else "",
            "words": int(o["words"]) if len(o) and pd.notna(o.get("words")) else "",
            "95% CI": (f"[{o['ci95_lo']:.1f}, {o['ci95_hi']:.1f}]" if len(o) and pd.notna(o.get("ci95_lo")) else ""),
            "Δ ours": _opt(o.get("delta_vs_fp32"), "+.2f", bool(len(o)) and w < 32),
            **{f"paper {s}": _opt(p.get(f"paper_{s}"), ".2f", bool(len(p))) for s in published.SPLITS},
            "Δ paper": f"{p['delta_vs_fp32']:+.2f}" if len(p) and w < 32 else "",
            "size MB ours": f"{o['size_mb']:.2f}" if len(o) else "",
            "size MB paper": f"{p['size_mb']:.2f}" if len(p) else "",
            "BOPs T ours": f"{o['bops_t']:.3f}" if len(o) else "",
            "BOPs T paper": f"{p['bops_t']:.2f}" if len(p) else "",
        })
    return pd.DataFrame(view)


def _wer_std(r) -> str:
    std = f" ± {r['wer_std']:.2f}" if r.get("seeds", 1) > 1 and pd.notna(r.get("wer_std")) else ""
    return f"{r['wer']:.2f}{std}"


def table1_numbers(table1: pd.DataFrame) -> dict:
    """The numbers chapter 05's prose quotes: our size and BOPs off the paper's at FP32 (percent),
    and the paper's W8A8 and W6A8 degradations."""
    qn = table1[table1.model == QUARTZNET]
    fp = qn[qn.w_bits == 32].set_index("source")
    out = {"size_diff": f"{100 * (fp.loc['ours', 'size_mb'] / fp.loc['paper', 'size_mb'] - 1):+.1f}",
           "bops_diff": f"{100 * (fp.loc['ours', 'bops_t'] / fp.loc['paper', 'bops_t'] - 1):+.1f}"}
    for w in (8, 6):
        d = qn[(qn.source == "paper") & (qn.w_bits == w)].delta_vs_fp32
        out[f"paper_delta_w{w}"] = f"{float(d.iloc[0]):+.2f}"
    return out


def table1_findings(table1: pd.DataFrame, paper: pd.DataFrame) -> list[str]:
    """Chapter 05's findings as markdown bullets: our FP32, each W/A's change in points and words."""
    qn = table1[table1.model == QUARTZNET]
    syn = qn[(qn.source == "ours") & qn.wer.notna()].set_index("w_bits")
    fp = syn.loc[32]
    lines = [f"* Our FP32 model: **{fp.wer:.2f} %** on {int(fp.words)} words ({int(fp.utterances)} utterances; CI "
             f"[{fp.ci95_lo:.1f}, {fp.ci95_hi:.1f}]); the paper's {published.fp32_wer(paper, 1, QUARTZNET):.2f} % "
             "is on the full test-other."]
    one_word = 100 / float(fp.words)
    for w in (8, 6, 4):
        if w in syn.index:
            r = syn.loc[w]
            ref = qn[(qn.source == "paper") & (qn.w_bits == w)]
            paper_txt = f"paper {float(ref.delta_vs_fp32.iloc[0]):+.2f}" if len(ref) else "not in the paper"
            lines.append(f"* W{w}A8, synthetic calibration: {r.wer:.2f} %, **{r.delta_vs_fp32:+.2f}** points vs our "
                         f"FP32 ({r.delta_vs_fp32 / one_word:+.1f} words' worth; {int(r.seeds)} seed(s)); {paper_txt}.")
    lines.append(f"* One word here is {one_word:.2f} WER points: differences of a few tenths are within the noise "
                 "of this test set, whatever their sign.")
    return lines


def test_set_numbers(results: pd.DataFrame) -> dict:
    """The test set behind a grid's rows: utterances, words, one word in WER points, half the
    width of a single run's CI (FP32 row), and the number of seeds of the quantized rows."""
    fp = results[results.w_bits == 32].iloc[0]
    return {"n_utts": int(fp.utterances), "n_words": int(fp.words), "one_word": f"{100 / fp.words:.2f}",
            "half_ci": f"{(fp.ci95_hi - fp.ci95_lo) / 2:.1f}",
            "n_seeds": int(results[results.w_bits < 32]["seed"].nunique())}


# --------------------------------------------------------------------------- Table 2

def table2_ours(results: pd.DataFrame) -> pd.DataFrame:
    """Our quantized rows per (calibration, W/A), aggregated over seeds; ``delta`` is the mean of
    the runs' changes from our FP32 WER."""
    fp32_wer = float(results[results.w_bits == 32].iloc[0].wer)
    quant = results[results.w_bits < 32].copy()
    quant["delta"] = quant["wer"] - fp32_wer
    return seed_summary(quant, ["calibration", "w_bits", "a_bits"], rate="wer", errors="word_errors",
                        more={"delta": "mean"}, sort=True)


def table2_rows(results: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Tidy Table 2 (test-other): the baseline, then per W/A (widest first) each calibration
    source (random, synthetic, real), ours and, where it reports one, the paper's row."""
    fp32 = results[results.w_bits == 32].iloc[0]
    words = int(fp32.words)
    paper_fp32 = published.fp32_wer(paper, 2, QUARTZNET)
    paper_q = published.table_rows(paper, 2, QUARTZNET)
    rows = [{"method": "baseline", "w_bits": 32, "a_bits": 32, "source": "ours", "wer": float(fp32.wer),
             "wer_std": np.nan, "seeds": 1, "delta_vs_fp32": 0.0, "ci95_lo": fp32.ci95_lo, "ci95_hi": fp32.ci95_hi,
             "words": words},
            {"method": "baseline", "w_bits": 32, "a_bits": 32, "source": "paper", "wer": paper_fp32,
             "delta_vs_fp32": 0.0}]
    agg = table2_ours(results).sort_values(
        ["w_bits", "calibration"], key=lambda s: s.map(METHOD_ORDER) if s.name == "calibration" else -s)
    for r in agg.itertuples():
        rows.append({"method": r.calibration, "w_bits": r.w_bits, "a_bits": r.a_bits, "source": "ours",
                     "wer": r.rate, "wer_std": r.std, "seeds": r.seeds, "delta_vs_fp32": r.delta,
                     "ci95_lo": r.ci95_lo, "ci95_hi": r.ci95_hi, "words": words})
        p = paper_q[(paper_q.method == r.calibration) & (paper_q.w_bits == r.w_bits) & (paper_q.a_bits == r.a_bits)]
        if len(p):
            rows.append({"method": r.calibration, "w_bits": r.w_bits, "a_bits": r.a_bits, "source": "paper",
                         "wer": float(p.wer.iloc[0]), "delta_vs_fp32": float(p.wer.iloc[0]) - paper_fp32})
    return pd.DataFrame(rows).assign(split="test-other")


def paper_part(table2: pd.DataFrame) -> pd.DataFrame:
    """The paper's rows of a tidy Table 2, indexed by (method, w_bits, a_bits)."""
    return table2[table2.source == "paper"].set_index(["method", "w_bits", "a_bits"])


def table2_view(table2: pd.DataFrame) -> pd.DataFrame:
    """Table 2 as displayed: our rows in the paper's layout, the paper's WER and change beside them
    ('—' where the paper has no such row)."""
    paper_t, view = paper_part(table2), []
    for r in table2[table2.source == "ours"].itertuples():
        key = (r.method, r.w_bits, r.a_bits)
        p = paper_t.loc[key] if key in paper_t.index else None
        view.append({
            "Method": r.method.capitalize() + (" (data-dependent bound)" if r.method == "real" else ""),
            "W/A": f"{r.w_bits}/{r.a_bits}",
            "ours WER": f"{r.wer:.2f}" + (f" ± {r.wer_std:.2f}" if r.seeds > 1 and pd.notna(r.wer_std) else ""),
            "seeds": int(r.seeds),
            "95% CI (one run)": f"[{r.ci95_lo:.1f}, {r.ci95_hi:.1f}]",
            "Δ ours": f"{r.delta_vs_fp32:+.2f}" if r.w_bits < 32 else "",
            "paper WER": f"{p.wer:.2f}" if p is not None else "—",
            "Δ paper": (f"{p.delta_vs_fp32:+.2f}" if r.w_bits < 32 else "") if p is not None else "—",
        })
    return pd.DataFrame(view)


def paper_table2_numbers(paper: pd.DataFrame) -> dict:
    """The paper's Table 2 changes over FP32 (test-other), as chapter 06's opening quotes them:
    ``paper_{rand,syn}_w{8,6}``."""
    d = published.deltas(paper, 2, QUARTZNET)
    return {f"paper_{tag}_w{w}": f"{d.loc[(method, w, 8)].delta_vs_fp32:+.2f}"
            for method, tag in (("random", "rand"), ("synthetic", "syn")) for w in (8, 6)}


def table2_pairs(results: pd.DataFrame, table2: pd.DataFrame):
    """Synthetic against random calibration seed by seed (``aggregate.paired_by_seed``): (pairs,
    summary), the summary with the paper's synthetic − random WER at W8A8 and W6A8 beside ours."""
    from .aggregate import paired_by_seed

    words = int(results[results.w_bits == 32].iloc[0].words)
    pair, summary = paired_by_seed(results[results.w_bits < 32], words)
    gap = _paper_gap(paper_part(table2))
    summary["paper (syn − rand)"] = [gap.get(k, np.nan) for k in summary.index]
    return pair, summary


def _paper_gap(paper_t: pd.DataFrame) -> dict:
    """The paper's synthetic minus random WER at W8A8 and W6A8."""
    return {(w, a): float(paper_t.loc[("synthetic", w, a)].wer - paper_t.loc[("random", w, a)].wer)
            for w, a in [(8, 8), (6, 8)]}


def table2_findings(results: pd.DataFrame, table2: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """Chapter 06's reading of the test set's resolution, as markdown bullets: the paper's effects
    in words of this set, each W/A's paired synthetic − random difference and whether this set
    resolves it (more than two words and more than twice its standard error over seeds), and
    real against synthetic calibration."""
    fp32 = results[results.w_bits == 32].iloc[0]
    words = int(fp32.words)
    one_word, half_ci = 100 / words, (fp32.ci95_hi - fp32.ci95_lo) / 2
    paper_t = paper_part(table2)
    syn8, rand8 = paper_t.loc[("synthetic", 8, 8)].delta_vs_fp32, paper_t.loc[("random", 8, 8)].delta_vs_fp32
    lines = [f"* The test set has **{words} words** ({int(fp32.utterances)} utterances): one word is {one_word:.2f} "
             f"points, and a single run's 95 % CI is about ±{half_ci:.1f} points wide. The paper's W8A8 synthetic "
             f"degradation ({syn8:+.2f}) is {syn8 / one_word:.1f} words' worth here; its random degradation "
             f"({rand8:+.2f}) about {rand8 / one_word:.0f} words."]
    for (w, a), r in summary.iterrows():
        d_words, n = r.mean_points / one_word, int(r.seeds)
        sd = f", seed-to-seed sd {r.sd_words:.1f} words" if n > 1 else ""
        resolved = abs(d_words) > max(2.0, 2 * (r.sd_words if n > 1 else 0.0) / np.sqrt(n))
        verdict = (f"resolved: synthetic {'better' if d_words < 0 else 'worse'}" if resolved else
                   "not resolved by this test set (within two words, or within the seed noise)")
        gap = r["paper (syn − rand)"]
        paper_txt = (f"paper {gap:+.2f} points (= {gap / one_word:+.0f} words on this set)" if pd.notna(gap)
                     else "not in the paper")
        lines.append(f"* W{w}A{a}: synthetic − random = **{r.mean_points:+.2f}** points ({d_words:+.1f} words{sd}) "
                     f"over {n} seed(s); synthetic had fewer errors in {int(r.synthetic_better)} of {n}; {verdict}; "
                     f"{paper_txt}.")
    agg = table2_ours(results)
    for r in agg[agg.calibration == "real"].sort_values("w_bits", ascending=False).itertuples():
        s = agg[(agg.calibration == "synthetic") & (agg.w_bits == r.w_bits) & (agg.a_bits == r.a_bits)]
        if len(s):
            lines.append(f"* W{r.w_bits}A{r.a_bits}: real calibration {r.delta:+.2f} vs synthetic "
                         f"{float(s.delta.iloc[0]):+.2f} points over FP32.")
    return lines


def table2_numbers(results: pd.DataFrame, table2: pd.DataFrame) -> dict:
    """The numbers chapter 06's prose quotes: the paper's random − synthetic gaps (points, and
    words of this set), its synthetic degradations in words, and one word in points."""
    words = int(results[results.w_bits == 32].iloc[0].words)
    one_word, paper_t = 100 / words, paper_part(table2)
    gap = {w: -g for (w, _), g in _paper_gap(paper_t).items()}
    syn_words = sorted(paper_t.loc[("synthetic", w, 8)].delta_vs_fp32 / one_word for w in (8, 6))
    return {"paper_gap_w8": f"{gap[8]:.1f}", "paper_gap_w6": f"{gap[6]:.1f}",
            "paper_gap_words_w8": f"{gap[8] / one_word:.0f}", "paper_gap_words_w6": f"{gap[6] / one_word:.0f}",
            "paper_syn_words": f"{syn_words[0]:.0f} to {syn_words[1]:.0f}", "one_word": f"{one_word:.2f}"}
