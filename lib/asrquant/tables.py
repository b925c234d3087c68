"""The experiment grid behind Table 1 and Table 2: model x W/A x calibration x seed -> tidy CSV.

Calibration ranges do not depend on the bit widths, so each (calibration, seed) is calibrated
once and converted at every W/A. Every finished row is appended to the CSV atomically; a rerun
skips rows already there, so an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from .models.checkpoint import atomic_write_bytes

KEY = ["model", "w_bits", "a_bits", "calibration", "seed", "observer", "weight_method", "bias_correction",
       "depthwise_bits", "rounding", "nonlinear"]
# columns added after the first grids ran: rows written before them used these settings
# (depthwise_bits 0: the same width as every other weight)
_DEFAULTS = {"observer": "minmax", "weight_method": "minmax", "bias_correction": False, "depthwise_bits": 0,
             "rounding": "nearest", "nonlinear": "integer"}


@dataclass
class GridSpec:
    bits: tuple[tuple[int, int], ...] = ((8, 8), (6, 8), (4, 8))
    calibrations: tuple[str, ...] = ("synthetic", "random", "real")
    seeds: tuple[int, ...] = (0, 1, 2)
    synth: dict | None = None          # SyntheticMelGenerator parameters (n_batches, batch_size, frames, ...)
    random_batches: int = 1
    random_frames: int = 500
    real_limit: int | None = None      # calibration utterances for `real` (None: all)
    observer: str = "minmax"
    weight_method: str = "minmax"
    bias_correction: bool = False     # correct biases for weight rounding (calibration.collect(means=True))
    depthwise_bits: int = 0           # depthwise weight width (0: the same as the other weights)
    rounding: str = "nearest"         # weight rounding: nearest, or gptq (output-aware, quant/gptq.py)
    simulated: bool = False           # Conformer: also rows with float non-linearities (simulate.py)


def _load(csv: Path) -> pd.DataFrame:
    return _load_frame(pd.read_csv(csv)) if csv.is_file() else pd.DataFrame(columns=KEY)


def _append(csv: Path, df: pd.DataFrame, row: dict) -> pd.DataFrame:
    df = pd.concat([df, pd.DataFrame([row])], ignore_index=True) if len(df) else pd.DataFrame([row])
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_bytes(csv, lambda f: f.write(buf.getvalue().encode()))
    return df


def _done(df: pd.DataFrame, key: dict) -> bool:
    if not len(df):
        return False
    mask = pd.Series(True, index=df.index)
    for k, v in key.items():
        mask &= df[k].astype(str) == str(v)
    return bool(mask.any())


def _row(key: dict, summary: dict, model, w_bits: int, a_bits: int, extra: dict,
         depthwise_bits: int | None = None) -> dict:
    """One tidy row. Word models carry WER/CER over words; phoneme models (hama) carry PER over
    phonemes in the same columns' places: `metric` says which (wer or per), `error_rate` the value."""
    from .experiments import bops, model_size_mb

    lo, hi = summary["ci95"]
    if "per" in summary:
        metric = {"metric": "per", "error_rate": summary["per"], "per": summary["per"], "units": summary["phonemes"],
                  "unit_errors": summary["phoneme_errors"]}
    else:
        metric = {"metric": "wer", "error_rate": summary["wer"], "wer": summary["wer"], "cer": summary["cer"],
                  "words": summary["words"], "word_errors": summary["word_errors"], "units": summary["words"],
                  "unit_errors": summary["word_errors"]}
    return {**key, **metric, "utterances": summary["utterances"], "ci95_lo": lo, "ci95_hi": hi,
            "size_mb": round(model_size_mb(model, w_bits, depthwise_bits=depthwise_bits), 2),
            "bops_t": round(bops(model, w_bits, a_bits) / 1e12, 3), "eval_seconds": summary["seconds"], **extra}


def calibration_batches(model, model_path, calibration: str, seed: int, spec: GridSpec, calib_data,
                        cache_dir, progress: bool = True):
    """The grid's calibration batches: ``calibration.calibration_batches`` with the spec's settings."""
    from .calibration import calibration_batches as batches

    synth = dict(spec.synth or {})
    shape = {"n_batches": synth.pop("n_batches", spec.random_batches), "batch_size": synth.pop("batch_size", 8),
             "frames": synth.pop("frames", spec.random_frames)}
    if calibration == "random":
        shape = {"n_batches": spec.random_batches, "batch_size": 8, "frames": spec.random_frames}
    return batches(model, calibration, seed=seed, data=calib_data, limit=spec.real_limit, synth=synth,
                   model_path=model_path, cache_dir=cache_dir, progress=progress, **shape)


def run_grid(model_path, eval_data, csv, spec: GridSpec, calib_data=None, cache_dir="build/synth_cache",
             limit: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Evaluate FP32 and every (calibration, seed, W/A) of `spec`; returns the tidy table."""
    from .calibration import collect
    from .convert import convert
    from .quantize import is_conformer
    from .data import load_dataset
    from .evaluate import evaluate
    from .models.checkpoint import load_model

    csv = Path(csv)
    model = load_model(model_path)
    name = Path(model_path).stem
    utts = load_dataset(eval_data, limit=limit)
    df = _load(csv)

    key = dict(model=name, w_bits=32, a_bits=32, calibration="none", seed=0, **_DEFAULTS)
    if not _done(df, key):
        df = _append(csv, df, _row(key, evaluate(model, utts, progress=progress), model, 32, 32, {}))

    settings = dict(observer=spec.observer, weight_method=spec.weight_method,
                    bias_correction=bool(spec.bias_correction), depthwise_bits=int(spec.depthwise_bits or 0),
                    rounding=spec.rounding)
    kinds = ("integer", "float") if (spec.simulated and is_conformer(model)) else ("integer",)
    jobs = [(c, s) for c in spec.calibrations for s in (spec.seeds if c != "real" else spec.seeds[:1])]
    for calibration, seed in tqdm(jobs, desc="grid", disable=not progress):
        keys = {(w, a, nl): dict(model=name, w_bits=w, a_bits=a, calibration=calibration, seed=seed, **settings,
                                 nonlinear=nl)
                for w, a in spec.bits for nl in kinds}
        todo = [wa for wa, key in keys.items() if not _done(df, key)]
        if not todo:
            continue
        start = time.perf_counter()
        batches = calibration_batches(model, model_path, calibration, seed, spec, calib_data, cache_dir)
        if is_conformer(model):
            from .convert_conformer import calibrate_conformer, convert_conformer
            from .simulate import SimulatedConformer

            observers = calibrate_conformer(model, batches, spec.observer)

            def convert_at(w, a, info, nonlinear="integer"):
                if nonlinear == "float":   # the ablation: same rounding points, float non-linearities
                    return SimulatedConformer(model, observers, w, a)
                return convert_conformer(model, observers, w, a, spec.weight_method, info)
        else:
            stats = collect(model, batches, means=bool(spec.bias_correction), hessians=spec.rounding == "gptq",
                            observer=spec.observer)

            def convert_at(w, a, info, nonlinear="integer"):
                return convert(model, stats.observers, w, a, spec.weight_method, info, input_means=stats.input_means,
                               depthwise_bits=spec.depthwise_bits or None, hessians=stats.hessians)
        calib_seconds = time.perf_counter() - start
        for w, a, nl in todo:
            qmodel = convert_at(w, a, {"calibration": calibration, "seed": seed}, nl)
            summary = evaluate(qmodel, utts, progress=False)
            df = _append(csv, df, _row(keys[(w, a, nl)], summary, model, w, a, {"calib_seconds": round(calib_seconds, 1)},
                                       spec.depthwise_bits or None))
    return df


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of the error rate (WER, or PER for phoneme models: column `metric`) over seeds
    per (model, W/A, calibration), with the FP32 gap. `wer_mean`/`words`/... keep their names for
    word models; `rate_mean`/`units`/... hold either metric."""
    df = _load_frame(df)
    g = df.groupby(["model", "w_bits", "a_bits", "calibration", *_DEFAULTS], as_index=False).agg(
        metric=("metric", "first"), rate_mean=("error_rate", "mean"), rate_std=("error_rate", "std"),
        seeds=("seed", "nunique"), units=("units", "first"), unit_errors_mean=("unit_errors", "mean"),
        size_mb=("size_mb", "first"), bops_t=("bops_t", "first"))
    g["wer_mean"], g["wer_std"] = g["rate_mean"], g["rate_std"]
    g["words"], g["word_errors_mean"] = g["units"], g["unit_errors_mean"]
    fp32 = g[g.w_bits == 32].set_index("model")["rate_mean"]
    g["delta_vs_fp32"] = g["rate_mean"] - g["model"].map(fp32)
    return g.sort_values(["model", "w_bits", "calibration"], ascending=[True, False, True]).reset_index(drop=True)


def paper_table(paper_csv, table: int, model: str = "QuartzNet", split: str = "test-other") -> pd.DataFrame:
    p = pd.read_csv(paper_csv)
    p = p[(p["table"].astype(str).str.contains(str(table))) & (p["model"].str.contains(model, case=False))
          & (p["split"] == split)]
    return p


def missing_rows(df: pd.DataFrame, calibrations, bits) -> list[tuple[str, int, int]]:
    """(calibration, w, a) combinations a table needs that df lacks; FP32 is ('none', 32, 32)."""
    have = set(zip(df["calibration"].astype(str), df["w_bits"].astype(int), df["a_bits"].astype(int)))
    need = [("none", 32, 32)] + [(c, w, a) for c in calibrations for w, a in bits]
    return [n for n in need if n not in have]


def paper_method_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows made with the paper's method (min/max activations and weights, no bias correction,
    one weight width): what Table 1 and Table 2 compare."""
    df = _load_frame(df)
    keep = pd.Series(True, index=df.index)
    for col, default in _DEFAULTS.items():
        keep &= df[col].astype(str) == str(default)
    return df[keep].reset_index(drop=True)


def _load_frame(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for col, default in _DEFAULTS.items():
        df[col] = df[col].fillna(default) if col in df else default
    # rows written before phoneme models existed: WER over words
    for col, old in (("error_rate", "wer"), ("units", "words"), ("unit_errors", "word_errors")):
        if old in df:
            df[col] = df[col].fillna(df[old]) if col in df else df[old]
    if "metric" in df or "wer" in df:
        df["metric"] = df["metric"].fillna("wer") if "metric" in df else "wer"
    return df


def load_or_run_grid(model_path, eval_dir, calib_dir, cache_dir, calibrations, bits, full_csvs, quick_csv,
                     quick_spec: GridSpec, limit: int | None, run_grid: bool = False) -> tuple[pd.DataFrame, str]:
    """What chapters 05 and 06 show: the first of ``full_csvs`` (e.g. this machine's
    build/results/grid.csv, then the copy committed under results/) that has every (calibration,
    W/A) row the table needs, restricted to the paper's method; otherwise (or with run_grid) the
    quick grid, run or resumed into ``quick_csv``. A side file ``<quick_csv>.json`` keeps the quick
    settings: if they change, the old quick rows are discarded. Returns (rows, source text)."""
    import json

    model = Path(model_path).stem
    if not run_grid:
        for full in map(Path, full_csvs):
            if not full.is_file():
                continue
            df = paper_method_rows(pd.read_csv(full))
            df = df[df["model"] == model]
            missing = missing_rows(df, calibrations, bits)
            if not missing:
                return df.reset_index(drop=True), f"full grid ({full})"
            print(f"{full}: {len(df)} rows, not complete for this table (missing e.g. "
                  f"{', '.join(f'{c} {w}/{a}' for c, w, a in missing[:3])})")
    print("run_grid=True: " if run_grid else "no complete full grid: ", end="")
    print("using the quick grid")
    quick, meta_path = Path(quick_csv), Path(quick_csv).with_suffix(".json")
    settings = {"model_path": str(model_path), "eval_dir": str(eval_dir), "calib_dir": str(calib_dir),
                "limit": limit, "synth": quick_spec.synth, "random_batches": quick_spec.random_batches,
                "random_frames": quick_spec.random_frames, "real_limit": quick_spec.real_limit,
                "observer": quick_spec.observer, "weight_method": quick_spec.weight_method}
    previous = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if quick.is_file() and previous != settings:
        print(f"{quick}: made with other settings; starting it again")
        quick.unlink()
    quick.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(settings, indent=1))
    t0 = time.perf_counter()
    df = run_grid(model_path, eval_dir, quick, quick_spec, calib_data=calib_dir, cache_dir=cache_dir,
                  limit=limit, progress=False)
    print(f"quick grid: {len(df)} rows in {quick} ({time.perf_counter() - t0:.0f} s, rows already there reused)")
    df = paper_method_rows(df)
    df = df[df["model"] == model]
    return df.reset_index(drop=True), f"quick grid ({quick}, {limit or 'all'} utterances)"
