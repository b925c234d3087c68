"""Beyond the paper, as chapter 06 reads it: the weight-side fixes at low widths (the beyond grid,
``results/beyond.csv``), mixed precision under a size budget (the size sweep,
``results/beyond_size.csv``) and learned rounding (``results/beyond_adaround.csv``).

Every summary is over seeds (``aggregate.seed_summary``) and every change is to our FP32 WER of
the same model and evaluation set. The prose numbers are returned as text, formatted as the
chapter quotes them; '—' marks a number the files cannot give.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import tables
from .aggregate import per_seed, rate_text, seed_summary
from .chapter_source import rows_apply, sha_prefix, shown

MISSING = "—"
MAIN_ITERATIONS = 200   # the grid's synthetic run: the sweep's rows at another length are its development runs


# --------------------------------------------------------------------------- the beyond grid

def beyond_rows(beyond: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The beyond grid's quantized rows and the grid's own synthetic rows (variant 'plain'), each
    labelled by its weight-side variant (``tables.variant``) and its W/A ('4/8')."""
    b = tables.load_frame(beyond)
    b = b[b.w_bits < 32].copy()
    b["variant"] = b.apply(lambda r: tables.variant(r, plain="plain"), axis=1)
    base = tables.paper_method_rows(results)
    plain = base[(base.calibration == "synthetic") & (base.w_bits < 32)].assign(variant="plain")
    allr = pd.concat([plain, b], ignore_index=True)
    allr["W/A"] = allr.w_bits.astype(str) + "/" + allr.a_bits.astype(str)
    return allr


def beyond_summary(allr: pd.DataFrame, fp32_wer: float) -> pd.DataFrame:
    """Per W/A (widest first) and variant (best first): mean and std of the WER over seeds, the
    seeds, the mean word errors, the size and the change from FP32."""
    g = seed_summary(allr, ["W/A", "variant"], rate="wer", errors="word_errors")
    g = g.rename(columns={"rate": "wer_mean", "std": "wer_std", "errors": "word_errors"})
    g = g[["W/A", "variant", "wer_mean", "wer_std", "seeds", "word_errors", "size_mb"]]
    g["delta_vs_fp32"] = g.wer_mean - fp32_wer
    return g.sort_values(["W/A", "wer_mean"], ascending=[False, True])


def beyond_numbers(allr: pd.DataFrame, summary: pd.DataFrame) -> dict:
    """What chapter 06 quotes of the beyond grid: W6A8 errors per seed without and with bias
    correction, W4A8 with bias correction (without and with 8-bit depthwise convs), and the MiB
    the 8-bit depthwise convs add. Raises KeyError/IndexError when a quoted row is missing."""
    def errors(wa, variant):
        return per_seed(allr[(allr["W/A"] == wa) & (allr.variant == variant)].sort_values("seed").word_errors)

    def wer(wa, variant):
        r = summary[(summary["W/A"] == wa) & (summary.variant == variant)].iloc[0]
        return rate_text(r.wer_mean, r.wer_std, r.seeds)

    bc, dw8 = "bias correction", "bias correction + depthwise 8-bit"
    out = {"w6_plain_errors": errors("6/8", "plain"), "w6_bc_errors": errors("6/8", bc),
           "w4_bc": wer("4/8", bc), "w4_bc_dw8": wer("4/8", dw8)}
    sizes = summary[summary["W/A"] == "4/8"].set_index("variant").size_mb
    out["dw8_extra_mib"] = f"{sizes[dw8] - sizes[bc]:.1f}"
    return out


# --------------------------------------------------------------------------- the size sweep

def paper_size_marks(paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's QuartzNet-15x5 W8A8 and W6A8 sizes (Table 1, MB in its own count), one row each."""
    p = paper[(paper.table == 1) & (paper.model == "QuartzNet15x5") & (paper.split == "test-other")]
    return p[p.w_bits.isin([8, 6])].drop_duplicates("w_bits")


def sweep_summary(df: pd.DataFrame, by) -> pd.DataFrame:
    """Per group of `by` (sorted): WER mean, std, min and max over seeds, the seeds, the mean size
    and the word errors per seed in seed order (``errors``, 'a/b/c')."""
    g = seed_summary(df.sort_values("seed"), by, rate="wer", errors="word_errors", size="mean", sort=True)
    g = g.drop(columns="errors").rename(columns={"rate": "wer", "std": "wer_std", "rate_min": "wer_min", "rate_max": "wer_max",
                          "per_seed": "errors"})
    return g[[*([by] if isinstance(by, str) else by), "wer", "wer_std", "wer_min", "wer_max", "seeds", "size_mb",
              "errors"]]


def size_sweep_rows(sweep: pd.DataFrame):
    """(mixed, uniform) rows of the size sweep's main runs (the grid's synthetic length, bias
    correction on): mixed precision with the bias-corrected sensitivity, with its ``budget`` (MiB),
    and the uniform-width rows. mixed is None when the sweep has none."""
    s = sweep[(sweep.synth_iterations == MAIN_ITERATIONS) & (sweep.bias_correction.astype(str) == "True")]
    budget = pd.to_numeric(s.size_budget_mb, errors="coerce")
    mixed = s[budget.notna() & (s.sensitivity == "logit_error_bias_corrected")].copy()
    mixed["budget"] = budget[mixed.index]
    return (mixed if len(mixed) else None), s[budget.isna()].copy()


def uniform_rows(beyond: pd.DataFrame, mixed: pd.DataFrame, sweep_uniform: pd.DataFrame):
    """Uniform W4/W6/W8 + bias correction (min/max, nearest, one width): the beyond grid's rows,
    on the sweep's model file where the grid has them, and the sweep's own for widths the grid
    lacks. Returns (the beyond grid's rows used, all uniform rows)."""
    u = tables.load_frame(beyond)
    u = u[(u.w_bits < 32) & (u.bias_correction.astype(str) == "True") & (u.weight_method == "minmax")
          & (u.rounding == "nearest") & (u.depthwise_bits.astype(int) == 0)]
    same = u[u.model_sha256.astype(str).isin(set(mixed.model_sha256.astype(str)))]
    u = same if len(same) else u
    return u, pd.concat([u, sweep_uniform[~sweep_uniform.w_bits.isin(set(u.w_bits))]], ignore_index=True)


def _flag(a: pd.DataFrame, col: str) -> pd.Series:
    return a.get(col, pd.Series(False, index=a.index)).astype(str) == "True"


def _int(a: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(a.get(col, pd.Series(0, index=a.index)), errors="coerce").fillna(0).astype(int)


def learned_variant(a: pd.DataFrame) -> pd.Series:
    """Each learned-rounding row's settings in words: inputs, centring, scale search, ReLU-aware,
    equalization, block iterations, group multipliers, edge widths and iterations per conv."""
    its = a.get("adaround_iterations", pd.Series("?", index=a.index)).astype(str)
    blocks, group = _int(a, "adaround_block_iterations"), _int(a, "weight_group")
    edge = pd.to_numeric(a.get("edge_bits"), errors="coerce").fillna(0).astype(int)
    return ("learned rounding ("
            + _flag(a, "adaround_symmetric").map({True: "float inputs", False: "quantized inputs"})
            + _flag(a, "adaround_centered").map({True: ", centered", False: ""})
            + _flag(a, "adaround_scale_search").map({True: ", scale search", False: ""})
            + _flag(a, "adaround_relu_aware").map({True: ", ReLU-aware", False: ""})
            + _flag(a, "equalize").map({True: ", equalized", False: ""})
            + blocks.map(lambda b: f", then {b} it./block" if b else "")
            + group.map(lambda g: f", a multiplier per {g} weights" if g else "")
            + edge.map(lambda e: f", first block + decoder {e}-bit" if e else "")
            + ", " + its + " it.)")


def learned_rows(runs: pd.DataFrame, min_seeds: int = 3):
    """(learned, mixed_learned): the learned-rounding runs on the grid's synthetic batches with at
    least `min_seeds` seeds per (width, variant, budget), uniform width and under a size budget
    (each None when empty), labelled by ``learned_variant`` with their ``budget``."""
    a = runs[(runs.rounding == "adaround") & (runs.get("calibration", "synthetic") == "synthetic")
             & (runs.get("synth_iterations", MAIN_ITERATIONS) == MAIN_ITERATIONS)].copy()
    a["variant"] = learned_variant(a)
    a["budget"] = pd.to_numeric(a.get("size_budget_mb"), errors="coerce")
    n = a.groupby(["w_bits", "variant", "budget"], dropna=False).seed.transform("nunique")
    a = a[n >= min_seeds]
    uniform, budgeted = a[a.budget.isna()], a[a.budget.notna()]
    return (uniform if len(uniform) else None), (budgeted if len(budgeted) else None)


def size_table(mp_sum: pd.DataFrame, uni_sum: pd.DataFrame | None, mixed: pd.DataFrame, fp32_wer: float):
    """The size sweep as a table, smallest first: each budget (its mean size, convs at 4/6/8 bits)
    and each uniform width, with WER, std, seeds, change from FP32 and word errors per seed."""
    hist = mixed.groupby("budget")[["bits_4", "bits_6", "bits_8"]].mean().round(1)
    tab = [{"weights": f"mixed, ≤ {r.budget:g} MiB", "size MiB": r.size_mb,
            "convs at 4/6/8 bits": "/".join(f"{v:g}" for v in hist.loc[r.budget]), "WER %": r.wer,
            "± std": r.wer_std, "seeds": r.seeds, "Δ vs FP32": r.wer - fp32_wer, "errors per seed": r.errors}
           for r in mp_sum.itertuples()]
    for r in [] if uni_sum is None else uni_sum.itertuples():
        tab.append({"weights": f"uniform {r.w_bits}-bit", "size MiB": r.size_mb, "WER %": r.wer,
                    "± std": r.wer_std, "seeds": r.seeds, "Δ vs FP32": r.wer - fp32_wer, "errors per seed": r.errors})
    return pd.DataFrame(tab).sort_values("size MiB").reset_index(drop=True)


def _points(x: float) -> str:
    return f"{x:+.2f}"


def _wer(r) -> str:
    return rate_text(r.wer, r.wer_std, r.seeds)


def size_sweep_numbers(mp_sum: pd.DataFrame, uni_sum: pd.DataFrame | None, fp32_wer: float, words: int) -> dict:
    """What chapter 06 quotes of the size sweep: uniform W4/W6 + bias correction (``w4_size``,
    ``w4_bc``, ``w4_delta``, ...), the smallest and the middle budget (``lo_budget``, ``lo_wer``,
    ``lo_delta``, ``lo_errors``, ``mid_...``), the smallest budget's MiB over uniform 4-bit
    (``lo_extra``), the smallest budget within one word of uniform 6-bit (``match``) and the share
    of uniform 4-bit's loss each budget removes (``conclusion``)."""
    g = {f"w{w}_{k}": MISSING for w in (4, 6) for k in ("size", "bc", "delta")}
    g.update({f"{t}_{k}": MISSING for t in ("lo", "mid") for k in ("budget", "wer", "delta", "errors")})
    g.update(lo_extra=MISSING, match=MISSING, conclusion=" ")
    u = uni_sum.set_index("w_bits") if uni_sum is not None else pd.DataFrame()
    for w in (4, 6):
        if w in u.index:
            r = u.loc[w]
            g.update({f"w{w}_size": f"{r.size_mb:.2f}", f"w{w}_bc": _wer(r), f"w{w}_delta": _points(r.wer - fp32_wer)})
    lo, mid = mp_sum.iloc[0], mp_sum.iloc[len(mp_sum) // 2]
    for tag, r in (("lo", lo), ("mid", mid)):
        g.update({f"{tag}_budget": f"{r.budget:g}", f"{tag}_wer": _wer(r), f"{tag}_delta": _points(r.wer - fp32_wer),
                  f"{tag}_errors": r.errors})
    g["lo_extra"] = f"{lo.budget - u.loc[4].size_mb:.2f}" if 4 in u.index else MISSING
    if 6 in u.index:   # the smallest budget as good as uniform 6-bit (within one word)
        w6 = u.loc[6]
        ok = mp_sum[mp_sum.wer <= w6.wer + 100 / words]
        g["match"] = (f"the smallest budget whose seed mean is within one word of that is **{ok.budget.iloc[0]:g} MiB**"
                      f" ({_wer(ok.iloc[0])} %), {w6.size_mb - ok.size_mb.iloc[0]:.2f} MiB less" if len(ok)
                      else "no budget of the sweep comes within one word of that")
    if 4 in u.index:   # the share of uniform 4-bit's loss that a budget removes
        w4 = u.loc[4]
        share = 100 * (w4.wer - mp_sum.wer) / (w4.wer - fp32_wer)
        g["conclusion"] = ("Mixed precision removes " + " / ".join(f"{v:.0f}" for v in share)
                           + " % of the uniform 4-bit model's loss over FP32 at "
                           + " / ".join(f"{b:g}" for b in mp_sum.budget) + f" MiB (uniform 4-bit: {w4.size_mb:.2f} MiB).")
    return g


def learned_text(learned, mixed_learned, fp32_wer: float, source: str) -> str:
    """The learned-rounding runs in one sentence: per width and variant (and per budget with mixed
    precision), WER over seeds, change from FP32, errors per seed and size."""
    if learned is None:
        return ("Learned rounding (`--rounding adaround`) has no 3-seed rows in `results/beyond_adaround.csv` yet, "
                "so it is not in the plot.")
    parts = []
    for (w, variant), d in learned.groupby(["w_bits", "variant"]):
        r = sweep_summary(d, "w_bits").iloc[0]
        parts.append(f"W{w}A8 {variant} {_wer(r)} % ({_points(r.wer - fp32_wer)}, errors {r.errors}, "
                     f"{r.size_mb:.2f} MiB)")
    if mixed_learned is not None:
        for r in sweep_summary(mixed_learned, "budget").itertuples():
            parts.append(f"mixed ≤ {r.budget:g} MiB + learned rounding {_wer(r)} % ({_points(r.wer - fp32_wer)}, "
                         f"errors {r.errors}, {r.size_mb:.2f} MiB)")
    return f"Learned rounding (`--rounding adaround`, `{source}`, 3 seeds): " + "; ".join(parts) + "."


def sensitivity_choice_text(sweep: pd.DataFrame, measure: pd.DataFrame | None, measure_source: str) -> str:
    """Why the bias-corrected sensitivity is the default: the sweep's development runs (a shorter
    synthetic run, word errors without / with the correction per budget) and, when measured, the
    allocated models' relative logit error on held-out synthetic inputs."""
    sweep = sweep.copy()
    sweep["size_budget_mb"] = pd.to_numeric(sweep.size_budget_mb, errors="coerce")
    dev = sweep[(sweep.synth_iterations != MAIN_ITERATIONS) & sweep.size_budget_mb.notna()]
    text = " "
    if len(dev):
        d = dev.pivot_table(index="size_budget_mb", columns="sensitivity", values="word_errors")
        text = ("Choosing the sensitivity measure: on seed 0 with a shorter synthetic run "
                f"({int(dev.synth_iterations.iloc[0])} Adam iterations), word errors without / with the bias "
                "correction inside the measure were "
                + ", ".join(f"{d.loc[b].get('logit_error', np.nan):.0f} / "
                            f"{d.loc[b].get('logit_error_bias_corrected', np.nan):.0f} at {float(b):g} MiB"
                            for b in d.index)
                + " (a tie on this test set).")
    if measure is not None:   # the same choice judged without test data
        m = measure.pivot_table(index="size_budget_mb", columns="sensitivity", values="held_out_rel_logit_error")
        text += (f" On the synthetic inputs the sensitivities did not see (`{measure_source}`), the allocated integer "
                 "models' relative logit error without / with it was "
                 + ", ".join(f"{r.logit_error:.3f} / {r.logit_error_bias_corrected:.3f} at {b:g} MiB"
                             for b, r in m.iterrows())
                 + ": the corrected measure is the default.")
    return text


def default_recipe_text(learned, fp32_wer: float, weight_bits: int = 4) -> str:
    """`intasr quantize --weight-bits 4`'s rows (found by their settings, ``quantize.recipe_of``)
    over seeds 0-2: WER, change from FP32, errors per seed and size."""
    from .quantize import default_recipe, recipe_of

    name = default_recipe(weight_bits)
    d = None if learned is None else learned[learned.apply(recipe_of, axis=1) == name]
    if d is None or d.seed.nunique() < 3:
        return f"The default {weight_bits}-bit recipe (`{name}`) has no 3-seed rows for this run's model and data."
    r = sweep_summary(d, "w_bits").iloc[0]
    return (f"`intasr quantize --weight-bits {weight_bits}` (recipe `{name}`) makes **{_wer(r)} %** WER over seeds "
            f"0-2, **{_points(r.wer - fp32_wer)}** points over FP32 (word errors per seed {r.errors}), with "
            f"{r.size_mb:.2f} MiB of weights.")


@dataclass
class SizeSweep:
    """The size sweep's rows that apply to a run (``read_size_sweep``); each frame None when absent."""
    mixed: pd.DataFrame | None = None           # mixed precision per budget (main runs)
    uniform: pd.DataFrame | None = None         # uniform widths + bias correction
    learned: pd.DataFrame | None = None         # learned rounding, uniform width, 3 seeds
    mixed_learned: pd.DataFrame | None = None   # learned rounding under a size budget, 3 seeds
    applies: bool = False                       # the sweep file has rows of this run's model and data

    def budgets(self) -> pd.DataFrame:
        return sweep_summary(self.mixed, "budget")

    def uniform_widths(self) -> pd.DataFrame | None:
        return sweep_summary(self.uniform, "w_bits") if len(self.uniform) else None


def read_size_sweep(size_csv: Path, beyond_csv: Path | None, ada_csv: Path, model_path, eval_dir,
                    eval_utts) -> SizeSweep:
    """The size sweep (`size_csv`), the uniform rows of the beyond grid (`beyond_csv`, None: the
    sweep's own) and the learned-rounding runs (`ada_csv`) that apply to this run's model and
    evaluation data; prints which file each comes from (and its model hash)."""
    sweep = SizeSweep(applies=size_csv.is_file() and rows_apply(size_csv, model_path, eval_dir, eval_utts))
    if sweep.applies:
        sweep.mixed, sweep.uniform = size_sweep_rows(pd.read_csv(size_csv))
    if sweep.mixed is None:
        print(f"{shown(size_csv)}: no size-sweep rows for this run's model and evaluation data; the size plot is "
              "left out")
        return sweep
    print(f"mixed precision: {shown(size_csv)} (model {sha_prefix(sweep.mixed)})")
    if beyond_csv is not None:
        grid_rows, sweep.uniform = uniform_rows(pd.read_csv(beyond_csv), sweep.mixed, sweep.uniform)
        print(f"uniform + bias correction: {shown(beyond_csv)} (model {sha_prefix(grid_rows)})")
    if ada_csv.is_file():
        try:   # read defensively: older files lack columns
            sweep.learned, sweep.mixed_learned = learned_rows(pd.read_csv(ada_csv))
            for what, d in (("learned rounding", sweep.learned), ("mixed + learned", sweep.mixed_learned)):
                if d is not None:
                    print(f"{what}: {shown(ada_csv)} (model {sha_prefix(d)})")
        except (KeyError, AttributeError, ValueError) as e:
            print(f"{shown(ada_csv)}: no usable learned-rounding rows ({e})")
    return sweep


PROSE = ("status", "match", "learned", "dev", "conclusion", "default4")   # glued as markdown


def size_sweep_prose(sweep: SizeSweep, fp32_wer: float, words: int, size_csv: Path, ada_csv: Path,
                     measure_csv: Path) -> dict:
    """Everything chapter 06 quotes of the size sweep and learned rounding (keys without the
    chapter's ``mp_`` prefix; ``PROSE`` names the markdown ones): ``size_sweep_numbers``, the
    learned-rounding sentence, the sensitivity choice, the default 4-bit recipe's result, and a
    ``status`` sentence when the sweep has no rows for this run."""
    if sweep.mixed is None:
        g = {f"w{w}_{k}": MISSING for w in (4, 6) for k in ("size", "bc", "delta")}
        g.update({f"{t}_{k}": MISSING for t in ("lo", "mid") for k in ("budget", "wer", "delta", "errors")})
        g.update(lo_extra=MISSING, match=MISSING, learned=" ", dev=" ", conclusion=" ")
        g["status"] = ("The size sweep (`results/beyond_size.csv`) was measured on the default model and test-other"
                       + ("; it has no rows for this run's" if sweep.applies else ", not this run's")
                       + " model and data, so the plot is left out and the numbers below are blank.")
    else:
        g = size_sweep_numbers(sweep.budgets(), sweep.uniform_widths(), fp32_wer, words)
        g["status"] = " "
        g["learned"] = learned_text(sweep.learned, sweep.mixed_learned, fp32_wer, shown(ada_csv))
        measure = pd.read_csv(measure_csv) if measure_csv.is_file() else None
        g["dev"] = sensitivity_choice_text(pd.read_csv(size_csv), measure, shown(measure_csv))
    g["default4"] = default_recipe_text(sweep.learned, fp32_wer)
    return g
