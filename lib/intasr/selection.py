"""Choosing a recipe without transcripts: agreement with the float model on untranscribed audio.

A recipe chosen by its WER on the utterances that then report it is fitted to their noise too
(one word of test-other's 684 is 0.15 points). Here the choice sees no transcript at all: the
float model transcribes untranscribed training audio once, and each candidate is scored by how
far its transcripts are from those (the "FP32-agreement WER": word errors of the quantized
transcript against the float one, over the float transcripts' words: ``evaluate`` with
``references=fp32_transcripts(...)``). A quantizer's job is to
reproduce the float model, so this measures the quantization error in words, label-free; the
test-other transcripts are then used only to report the recipe it chose.

The selection set: every train-clean-100 utterance after the first ``CALIBRATION_HEAD``
(real-data calibration reads the first ones, in sorted order), so that no utterance both
calibrates and selects. A pilot on a seeded draw of 40 of them (``selection_set(size=40)``) could
not separate the two best 4-bit candidates, so the choice reads them all (results/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .aggregate import seed_summary
from .data import Utterance, load_dataset
from .evaluate import transcribe
from .models.checkpoint import atomic_write_bytes
from .provenance import eval_set_fingerprint, file_sha256
from .quantize import default_recipe, recipe_of

SELECTION_SIZE = None   # all the utterances past the calibration head
CALIBRATION_HEAD = 48
SELECTION_SEED = 0
CRITERION = "fp32-agreement"


def selection_set(data, size: int | None = SELECTION_SIZE, seed: int = SELECTION_SEED,
                  skip: int = CALIBRATION_HEAD) -> list[Utterance]:
    """The utterances of the folder or manifest `data` after the first `skip` (transcripts not
    needed, never read for scoring): all of them, or `size` drawn with `seed`, in the listing's order."""
    utts = load_dataset(data, require_text=False)
    pool = utts[skip:]
    if size is None:
        if not pool:
            raise ValueError(f"{data}: {len(utts)} utterances; selection needs some after the first {skip} "
                             f"(those calibrate with real data)")
        return pool
    if len(pool) < size:
        raise ValueError(f"{data}: {len(utts)} utterances; selection needs {size} after the first {skip} "
                         f"(those calibrate with real data)")
    pick = np.sort(np.random.default_rng(seed).choice(len(pool), size=size, replace=False))
    return [pool[i] for i in pick]


def fp32_transcripts(model, model_path, utts: Sequence[Utterance], cache_dir=None, batch_size: int = 8) -> list:
    """The float model's transcripts of `utts` (strings, or phoneme lists), cached by model file
    hash and utterance list in `cache_dir` (a JSON file written atomically)."""
    cache = None
    if cache_dir is not None:
        key = f"{file_sha256(model_path)[:16]}_{eval_set_fingerprint(utts)['sha256'][:16]}_b{batch_size}.json"
        cache = Path(cache_dir) / key
        if cache.is_file():
            return json.loads(cache.read_text())["transcripts"]
    hyps = transcribe(model, utts, batch_size=batch_size, progress=False)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        blob = {"model": str(model_path), "utterances": [u.id for u in utts], "transcripts": hyps}
        atomic_write_bytes(cache, lambda f: f.write(json.dumps(blob).encode()))
    return hyps


def candidates(rows: pd.DataFrame) -> pd.DataFrame:
    """A selection file's rows summed up per candidate (``recipe_label``) over its seeds: ``seeds``,
    ``errors`` (mean word errors against the float transcripts), ``per_seed`` ('a/b/c', seed order),
    ``rate`` (mean FP32-agreement WER), the mean CI bounds, ``words`` and the median ``calib_seconds``."""
    rows = rows.copy()
    rows["candidate"] = rows.apply(recipe_label, axis=1)
    rows["recipe"] = rows.apply(recipe_of, axis=1)
    rows = rows.sort_values("seed", kind="stable")
    return seed_summary(rows, ["w_bits", "a_bits", "candidate"], rate="wer", errors="word_errors",
                        more={"recipe": "first", "words": "first", "calib_seconds": "median"})


def choose(rows: pd.DataFrame) -> pd.DataFrame:
    """Each width's choice among a selection file's rows (``candidates``): of the candidates run on
    the most seeds (the finalists), the fewest mean word errors against the float transcripts; a
    tie goes to the shorter calibration (the cheaper recipe, when the words cannot tell)."""
    c = candidates(rows) if "candidate" not in rows else rows
    c = c.assign(_most=c.groupby(["w_bits", "a_bits"]).seeds.transform("max") == c.seeds)
    ranked = c[c._most].sort_values(["w_bits", "a_bits", "errors", "calib_seconds"], kind="stable")
    return ranked.groupby(["w_bits", "a_bits"], sort=True).head(1).drop(columns="_most").reset_index(drop=True)


def recipe_label(r) -> str:
    """A row's settings in words, led by its recipe's name (``quantize.recipe_of``) when it is one."""
    def num(col):
        v = pd.to_numeric(getattr(r, col, 0), errors="coerce")
        return 0 if pd.isna(v) else int(v)

    edge, group = num("edge_bits"), num("weight_group")
    eq = str(getattr(r, "equalize", False)) == "True"
    synthetic = str(getattr(r, "calibration", "synthetic")) == "synthetic"
    parts = str(getattr(r, "edge_parts", "") or "")
    parts = "" if parts == "nan" else " and ".join(parts.split("+"))
    extra = [f"{parts or 'first block and decoder'} at {edge} bits"] if edge and edge != int(r.w_bits) else []
    if num("depthwise_bits") and num("depthwise_bits") != int(r.w_bits):
        extra.append(f"depthwise convs at {num('depthwise_bits')} bits")
    if not synthetic:
        extra.append(f"{r.calibration} calibration")
    recipe = recipe_of(r)
    if r.rounding == "adaround":
        sym = str(r.adaround_symmetric) == "True"
        cen = str(r.adaround_centered) == "True"
        search = str(getattr(r, "adaround_scale_search", False)) == "True"
        relu = str(getattr(r, "adaround_relu_aware", False)) == "True"
        blocks = num("adaround_block_iterations")
        how = ", ".join(p for p in ("centered" if cen else "raw",
                                    "on float inputs" if sym else "on the quantized walk's inputs",
                                    "scale search" if search else "", "ReLU-aware" if relu else "",
                                    "equalized" if eq else "",
                                    f"{int(r.adaround_iterations)} steps/conv",
                                    f"then {blocks} steps/block" if blocks else "",
                                    f"a multiplier per {group} weights" if group else "", *extra) if p)
        return f"{f'`{recipe}`' if recipe else 'learned rounding'} ({how})"
    bc = str(r.bias_correction) == "True"
    name = f"`{recipe}`" if recipe else "round-to-nearest" + (" + bias correction" if bc else "")
    extra = [p for p in ("equalized" if eq else "", f"a multiplier per {group} weights" if group else "", *extra) if p]
    return f"{name} ({', '.join(extra)})" if extra else name


def on_default_batches(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of a recipe results file calibrated on the grid's default synthetic batches (200
    iterations), at uniform width (no size budget), with provenance."""
    budget = rows["size_budget_mb"] if "size_budget_mb" in rows else pd.Series(np.nan, index=rows.index)
    iterations = pd.to_numeric(rows.synth_iterations, errors="coerce")   # the grid writes '-' where none
    return rows[(iterations == 200) & budget.isna() & rows.model_sha256.notna()]


def _test_runs(w: int, a: int, label: str, recipes: pd.DataFrame, grid: pd.DataFrame):
    """One candidate's test-other runs: the recipe rows with its label, or for the paper's method
    the grid's synthetic rows (None when neither has any)."""
    rows = recipes[(recipes.w_bits == w) & (recipes.a_bits == a) & (recipes.recipe_label == label)]
    if len(rows):
        return seed_summary(rows, ["w_bits"], rate="wer", errors="word_errors").iloc[0]
    if label == "`paper`" and len(grid):
        rows = grid[(grid.w_bits == w) & (grid.a_bits == a) & (grid.calibration == "synthetic")]
        if len(rows):
            return seed_summary(rows, ["w_bits"], rate="wer", errors="word_errors").iloc[0]
    return None


def selection_table(selection_rows: pd.DataFrame, recipe_rows: pd.DataFrame | None, grid_rows: pd.DataFrame,
                    fp32_wer: float) -> pd.DataFrame:
    """The selection beside the report: one row per candidate of `selection_rows` (a selection
    results file; ``candidates``), ordered by width, seeds (finalists first) and mean agreement
    errors, with ``chosen`` (``choose``) and the candidate's test-other result over seeds from
    `recipe_rows` (results/beyond_adaround.csv's rows on the default synthetic batches; None: none) or
    `grid_rows` (the paper's method): ``test_wer``, ``test_std``, ``test_seeds`` (0: not measured),
    ``test_errors`` (per seed) and ``test_delta`` (against `fp32_wer`)."""
    sel = candidates(selection_rows)
    picked = choose(sel)
    sel["chosen"] = [(w, c) in set(zip(picked.w_bits, picked.candidate)) for w, c in zip(sel.w_bits, sel.candidate)]
    if recipe_rows is None or not len(recipe_rows):
        rec = pd.DataFrame(columns=["w_bits", "a_bits", "recipe_label"])
    else:
        rec = on_default_batches(recipe_rows).copy()
        rec["recipe_label"] = rec.apply(recipe_label, axis=1) if len(rec) else []
    tests = [_test_runs(r.w_bits, r.a_bits, r.candidate, rec, grid_rows) for r in sel.itertuples()]
    sel["test_wer"] = [t["rate"] if t is not None else np.nan for t in tests]
    sel["test_std"] = [t["std"] if t is not None else np.nan for t in tests]
    sel["test_seeds"] = [int(t["seeds"]) if t is not None else 0 for t in tests]
    sel["test_errors"] = [t["per_seed"] if t is not None else "" for t in tests]
    sel["test_delta"] = sel.test_wer - fp32_wer
    cols = ["w_bits", "a_bits", "candidate", "recipe", "seeds", "rate", "errors", "per_seed", "words", "ci95_lo",
            "ci95_hi", "calib_seconds", "size_mb", "chosen", "test_wer", "test_std", "test_seeds", "test_errors",
            "test_delta"]
    sel = sel.sort_values(["w_bits", "seeds", "errors", "calib_seconds"], ascending=[True, False, True, True],
                          kind="stable")
    return sel[cols].reset_index(drop=True)


def ranking_agreement(table: pd.DataFrame, w_bits: int) -> tuple[int, int]:
    """Of the pairs of `w_bits` candidates that both have test-other runs, how many the label-free
    criterion (mean errors over the candidate's seeds) orders as test-other does (pairs tied on
    either side are left out): (agree, pairs)."""
    t = table[(table.w_bits == w_bits) & (table.test_seeds > 0)]
    agree = pairs = 0
    for i in range(len(t)):
        for j in range(i + 1, len(t)):
            a = np.sign(t.errors.iloc[i] - t.errors.iloc[j])
            b = np.sign(t.test_wer.iloc[i] - t.test_wer.iloc[j])
            if a and b:
                pairs += 1
                agree += int(a == b)
    return agree, pairs


def selection_prose(table: pd.DataFrame | None, metric: str = "WER", unit: str = "words",
                    tool: str = "tools/select_recipes.sh", conformer: bool = False) -> dict:
    """What a chapter says of `selection_table`'s table: per width (``w4``, ``w6``, ``w8``) the
    chosen candidate, its label-free and its test-other numbers, and whether it is the default.
    metric / unit: the model's ("PER", "phonemes" for a phoneme model); tool: the command that
    measures the selection; conformer: the model is one (its defaults, ``quantize.default_recipe``)."""
    if table is None:
        return {k: f"No label-free selection was measured on this model (`{tool}`)."
                for k in ("w4", "w6", "w8")}
    singular = unit[:-1]
    out = {}
    for w in (4, 6, 8):
        t = table[table.w_bits == w]
        if not len(t):
            out[f"w{w}"] = f"No {w}-bit candidates were measured."
            continue
        c = t[t.chosen].iloc[0]
        rest = t[~t.chosen]
        runner = (f"; the next, {rest.candidate.iloc[0]}, {rest.errors.iloc[0]:.1f} ({rest.per_seed.iloc[0]})"
                  if len(rest) else "")
        test = (f"on test-other, whose transcripts it never read, it makes **{c.test_wer:.2f} %** {metric} over "
                f"{c.test_seeds} seeds (**{c.test_delta:+.2f}** over FP32; {singular} errors per seed {c.test_errors})"
                if c.test_seeds else "it has no test-other runs")
        default = default_recipe(w, conformer=conformer)
        said = ("the default of `intasr quantize --weight-bits {w}`".format(w=w) if c.recipe == default else
                f"**not** the default of `intasr quantize --weight-bits {w}` (`{default}`)")
        agree, pairs = ranking_agreement(table, w)
        order = (f" Of the {pairs} pair{'s' if pairs > 1 else ''} of {w}-bit candidates with test-other runs, the label-free "
                 f"criterion orders {agree} as test-other does." if pairs else "")
        out[f"w{w}"] = (f"**W{w}A8**: {c.candidate}, {c.errors:.1f} of {int(c.words)} {unit} off the float "
                        f"transcripts over {c.seeds} seed{'s' if c.seeds > 1 else ''} ({c.per_seed})"
                        f"{runner}; {test}. It is {said}.{order}")
    return out


def cpu_comparison(rows_a: pd.DataFrame, rows_b: pd.DataFrame) -> pd.DataFrame:
    """The same recipe settings and seeds measured on two machines (two results files with the
    test criterion): one row per (candidate, seed) present in both, with each side's word errors,
    kernel family and thread count, and whether the two agree to the word."""
    def prep(rows):
        r = on_default_batches(rows[rows.get("criterion", pd.Series("test", index=rows.index)).fillna("test") == "test"])
        r = r[r.calibration == "synthetic"].copy()
        r["candidate"] = r.apply(recipe_label, axis=1)
        return r[["w_bits", "a_bits", "candidate", "seed", "word_errors", "words", "cpu", "vnni", "threads",
                  "code_commit", "eval_sha256"]]

    both = prep(rows_a).merge(prep(rows_b), on=["w_bits", "a_bits", "candidate", "seed", "eval_sha256"],
                              suffixes=("_a", "_b"))
    both["same"] = both.word_errors_a == both.word_errors_b
    return both.sort_values(["w_bits", "candidate", "seed"], kind="stable").reset_index(drop=True)


def rows_measured_on(csv_path, model_path, eval_utts=None) -> pd.DataFrame | None:
    """The rows of a results file measured on this model file (by sha256) and, when `eval_utts` is
    given, on those evaluation utterances (by fingerprint), else None: a selection made for one model
    does not choose for another, and a report on other utterances does not report this run's."""
    path = Path(csv_path)
    if not path.is_file():
        return None
    rows = pd.read_csv(path)
    if "model_sha256" not in rows or (eval_utts is not None and "eval_sha256" not in rows):
        return None
    keep = rows.model_sha256.astype(str) == file_sha256(model_path)
    if eval_utts is not None:
        keep &= rows.eval_sha256.astype(str) == eval_set_fingerprint(eval_utts)["sha256"]
    rows = rows[keep]
    return rows if len(rows) else None


def model_selection(selection_csv, report_csv, model_path, eval_utts, grid_rows: pd.DataFrame,
                    fp32_rate: float) -> tuple[pd.DataFrame | None, list[str]]:
    """A chapter's selection table for one model: the selection file's rows of this model file, the
    report file's rows of this model and evaluation set, and the grid's paper-method rows (its
    ``error_rate`` / ``unit_errors``) for the paper's candidates. Returns (``selection_table``'s
    table, or None without selection rows; lines saying what is missing)."""
    if not Path(model_path).is_file():  # a model built in memory has no file hash to match rows by
        return None, [f"{model_path}: no such model file, so no results row can be matched to it by sha256"]
    sel = rows_measured_on(selection_csv, model_path)
    if sel is None:
        return None, [f"no label-free selection measured on this model ({Path(selection_csv).name})"]
    report = rows_measured_on(report_csv, model_path, eval_utts)
    notes = [] if report is not None else [f"{Path(report_csv).name} has no rows of this model and data: "
                                           "the selection without the report"]
    grid = grid_rows if report is not None else grid_rows.iloc[0:0]
    grid = grid.assign(wer=grid.error_rate, word_errors=grid.unit_errors)
    return selection_table(sel, report, grid, fp32_rate), notes


def parts_table(table: pd.DataFrame | None, w_bits: int = 4) -> pd.DataFrame:
    """The candidates of ``selection_table`` at `w_bits` that differ only in the parts kept at 8
    bits (learned rounding on float inputs with a multiplier per 16 weights, no other width change),
    cheapest first: what each choice of parts costs in MiB and errors."""
    if table is None:
        return pd.DataFrame()
    t = table[(table.w_bits == w_bits) & table.candidate.str.contains("a multiplier per 16")
              & table.candidate.str.contains("on float inputs") & ~table.candidate.str.contains("depthwise")]
    cols = ["candidate", "size_mb", "seeds", "errors", "per_seed", "chosen", "test_wer", "test_delta", "test_errors"]
    return t[cols].sort_values("size_mb", kind="stable").reset_index(drop=True)


def parts_values(parts: pd.DataFrame, table: pd.DataFrame | None) -> dict:
    """What a chapter says of ``parts_table``: the cheapest and the chosen size, the spread of the
    mean errors and the selection set's size in units (``edge_*``)."""
    if table is None or len(parts) < 2:
        return dict.fromkeys(("edge_cheapest", "edge_chosen_mb", "edge_spread", "edge_words"), "(not measured)")
    chosen = table[(table.w_bits == 4) & table.chosen].iloc[0]
    return {"edge_cheapest": f"{parts.size_mb.iloc[0]:.2f}", "edge_chosen_mb": f"{chosen.size_mb:.2f}",
            "edge_spread": f"{parts.errors.min():.0f}-{parts.errors.max():.0f}",
            "edge_words": f"{int(table.words.iloc[0]):,}"}
