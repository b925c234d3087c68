"""The experiment grid behind Table 1 and Table 2: model x W/A x calibration x seed -> tidy CSV.

Every row carries its provenance: the model file's sha256, the evaluation set's fingerprint
(utterances, words, hash of file names + transcripts), every calibration and synthesis setting,
the code version and the machine that computed it (``provenance``). The resume key of a row
(``cell_key``) is its settings + model sha256 + evaluation-set fingerprint: a rerun skips exactly
the cells already computed with the same model, data and settings, and recomputes the others.
Rows written before provenance existed (committed CSVs) load with "unknown" there and are never
taken as done. The cells run as tasks (``gridrun``): serially here, or on Dask distributed.
``PAPER_PROFILE``: the paper's whole protocol as grid specs, with its expected cost.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .aggregate import rate_text, seed_summary
from .options import SYNTH_DEFAULTS
from .results_file import ResultsFile

UNKNOWN = "unknown"
NA = "-"   # a setting that does not apply to the row (synthesis settings of a random-calibration row)
# calibration / synthesis settings, one column each (synthesis: synth.DEFAULT_PARAMS)
CALIB_COLUMNS = ["calib_batches", "calib_batch_size", "calib_frames", "calib_data_sha256", "calib_utterances",
                 "synth_iterations", "synth_lr", "synth_init_range", "synth_init_center", "synth_betas",
                 "synth_patience", "synth_min_lr", "synth_eps"]
KEY = ["model", "w_bits", "a_bits", "calibration", "seed", "observer", "weight_method", "bias_correction",
       "depthwise_bits", "rounding", "nonlinear", *CALIB_COLUMNS]
#: a recipe cell's settings beyond KEY (``GridSpec.recipe``); in its resume key only when set, so a
#: grid of flags keeps the keys it always had
RECIPE_COLUMNS = ["recipe", "adaround_iterations", "edge_bits", "edge_parts", "weight_group"]
RESUME_KEY = [*KEY, "model_sha256", "eval_sha256"]
PROVENANCE = ["model_sha256", "eval_sha256", "eval_utterances", "eval_words", "code_version", "code_commit",
              "code_dirty", "cpu", "threads", "cell_key"]
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
    random_frames: int = SYNTH_DEFAULTS["frames"]
    real_limit: int | None = None      # calibration utterances for `real` (None: all)
    observer: str = "minmax"
    weight_method: str = "minmax"
    bias_correction: bool = False     # correct biases for weight rounding (calibration.collect(means=True))
    depthwise_bits: int = 0           # depthwise weight width (0: the same as the other weights)
    rounding: str = "nearest"         # weight rounding: any of quantize.ROUNDINGS
    simulated: bool = False           # Conformer: also rows with float non-linearities (simulate.py)
    recipe: str | None = None         # a named recipe per width (``quantize.Recipe.resolve``: "default" is the
                                      # width's default) instead of the flags above; None: the flags


def _load(csv: Path) -> pd.DataFrame:
    return load_frame(pd.read_csv(csv)) if csv.is_file() else pd.DataFrame(columns=KEY)


def calibration_settings(spec: GridSpec, calibration: str, model=None, real_fingerprint: dict | None = None) -> dict:
    """The CALIB_COLUMNS of a cell (NA where a setting does not apply). Synthesis settings are
    the generator's full parameter set (``synth.DEFAULT_PARAMS`` overridden by ``spec.synth``),
    with the input level prior resolved on `model` so that the row says where inputs started."""
    out = {c: NA for c in CALIB_COLUMNS}
    if calibration == "synthetic":
        p = synth_params(spec, model, seed=0)
        out.update(calib_batches=p["n_batches"], calib_batch_size=p["batch_size"], calib_frames=p["frames"],
                   **{f"synth_{k}": (json.dumps(list(p[k])) if k == "betas" else p[k])
                      for k in ("iterations", "lr", "init_range", "init_center", "betas", "patience", "min_lr", "eps")})
    elif calibration == "random":
        out.update(calib_batches=spec.random_batches, calib_batch_size=8, calib_frames=spec.random_frames)
    elif calibration == "real":
        fp = real_fingerprint or {}
        out.update(calib_batch_size=8, calib_data_sha256=fp.get("sha256", UNKNOWN),
                   calib_utterances=fp.get("utterances", UNKNOWN))
    return out


def synth_params(spec: GridSpec, model, seed: int) -> dict:
    """The synthetic generator's parameters of a grid cell (normalized, init_center resolved)."""
    from .synth import input_level_prior, normalize_params

    synth = dict(spec.synth or {})
    synth.setdefault("n_batches", spec.random_batches)
    synth.setdefault("frames", spec.random_frames)
    p = normalize_params({**synth, "seed": seed})
    if p["init_center"] is None:
        p["init_center"] = input_level_prior(model)
    return p


def plan_cells(spec: GridSpec, model, name: str, model_sha: str, eval_sha: str, real_fingerprint=None):
    """The grid's cells: FP32, then every (calibration, seed) x W/A (x non-linearity kind)."""
    from .gridrun import Cell, content_key
    from .quantize import is_conformer

    def cell(settings: dict, label: str) -> Cell:
        keyed = {k: settings[k] for k in KEY} | {k: settings[k] for k in RECIPE_COLUMNS if k in settings}
        return Cell(settings, content_key(keyed, model_sha, eval_sha), label)

    fp32 = dict(model=name, w_bits=32, a_bits=32, calibration="none", seed=0, **_DEFAULTS,
                **calibration_settings(spec, "none"))
    cells = [cell(fp32, "FP32")]
    variant = dict(observer=spec.observer, weight_method=spec.weight_method,
                   bias_correction=bool(spec.bias_correction), depthwise_bits=int(spec.depthwise_bits or 0),
                   rounding=spec.rounding)
    kinds = ("integer", "float") if (spec.simulated and is_conformer(model)) else ("integer",)
    for calibration in spec.calibrations:
        calib = calibration_settings(spec, calibration, model, real_fingerprint)
        for seed in (spec.seeds if calibration != "real" else spec.seeds[:1]):
            for w, a in spec.bits:
                for nl in kinds:
                    s = dict(model=name, w_bits=w, a_bits=a, calibration=calibration, seed=seed, **variant,
                             nonlinear=nl, **calib)
                    # the float-non-linearity ablation simulates the paper's method: the flags' cell
                    recipe = recipe_settings(spec, w, is_conformer(model)) if nl == "integer" else {}
                    s.update(recipe)
                    label = (f"W{w}A{a} {calibration} seed {seed}" + (f" {recipe['recipe']}" if recipe else "")
                             + (" float non-linearities" if nl == "float" else ""))
                    cells.append(cell(s, label))
    return cells


def recipe_settings(spec: GridSpec, w_bits: int, conformer: bool) -> dict:
    """A cell's recipe columns (RECIPE_COLUMNS, and the rounding / bias_correction it implies) when
    the grid names a recipe; {} for the flags, and for a recipe that is the paper's method (the
    flags' cell already: one computation, one row)."""
    if not spec.recipe:
        return {}
    from .quantize import Recipe

    r = Recipe.resolve(spec.recipe, w_bits, conformer=conformer)
    if r.name == "paper":
        return {}
    parts = ""
    if r.edge_bits and conformer:
        from .conformer_weights import DEFAULT_EDGE_PARTS

        parts = "+".join(r.edge_parts or DEFAULT_EDGE_PARTS)
    return {"recipe": r.name, "rounding": r.rounding, "bias_correction": bool(r.bias_correction),
            "adaround_iterations": int(r.adaround.get("iterations", 0)) if r.rounding == "adaround" else 0,
            "edge_bits": int(r.edge_bits or 0), "edge_parts": parts, "weight_group": int(r.weight_group)}


def run_grid(model_path, eval_data, csv, spec: GridSpec, calib_data=None, cache_dir="build/synth_cache",
             limit: int | None = None, progress: bool = True, *, workers: int = 1, scheduler: str | None = None,
             threads: int | None = None, shard_utterances: int | None = None, client=None,
             batch_size: int = 8) -> pd.DataFrame:
    """Evaluate FP32 and every (calibration, seed, W/A) of `spec`; returns the tidy table (the
    CSV's rows: those it had, with this run's cells added or replaced).

    Cells already computed (a file in ``<csv folder>/cells/`` or a CSV row with the same
    ``cell_key``) are skipped. workers=1 without a scheduler runs the cells here, one after
    another; otherwise they are Dask tasks on a LocalCluster of `workers` processes (torch
    `threads` each, default: cores // workers) or on `scheduler` (an address), and the
    evaluation set is split into shards of about `shard_utterances`."""
    from . import gridrun
    from .data import load_dataset
    from .models.checkpoint import load_model
    from .provenance import eval_set_fingerprint, file_sha256

    csv, model_path = Path(csv), str(model_path)
    model_sha = file_sha256(model_path)
    model = load_model(model_path)
    utts = load_dataset(eval_data, limit=limit)
    eval_fp = eval_set_fingerprint(utts)
    real_fp = None
    if "real" in spec.calibrations and calib_data:
        real_fp = eval_set_fingerprint(load_dataset(calib_data, require_text=False, limit=spec.real_limit))
    cells = plan_cells(spec, model, Path(model_path).stem, model_sha, eval_fp["sha256"], real_fp)
    df = _load(csv)
    have = set(df["cell_key"].astype(str)) if "cell_key" in df else set()
    cells_dir = csv.parent / "cells"
    todo = [c for c in cells if c.key not in have and not (cells_dir / f"{c.key}.json").is_file()]

    distributed = scheduler is not None or client is not None or workers > 1
    if threads is None and scheduler is None and client is None:
        threads = gridrun.local_threads(workers)
    shards = gridrun.shards_of(utts, batch_size, shard_utterances if distributed else None)
    base_prov = {"model_sha256": model_sha, "eval_sha256": eval_fp["sha256"], "eval_utterances": eval_fp["utterances"],
                 "eval_words": eval_fp["words"]}
    graph, targets, labels = gridrun.Graph(), [], {}
    real_ref = None
    for c in todo:
        if c.settings["calibration"] == "real" and real_ref is None:
            if not calib_data:
                raise ValueError("real calibration needs training-split audio (--calibration-data DIR)")
            real_ref = graph.add(f"real-batches-{gridrun.content_key(model_sha, real_fp, spec.real_limit)}",
                                 gridrun.real_batches, model_path, model_sha, str(calib_data), spec.real_limit, threads)
        sp = synth_params(spec, model, c.settings["seed"]) if c.settings["calibration"] == "synthetic" else None
        key = gridrun.add_cell(graph, c, model_path=model_path, model_sha=model_sha,
                               base={**c.settings, **base_prov, "cell_key": c.key}, utts=utts, shards=shards,
                               cell_file=cells_dir / f"{c.key}.json", cache_dir=str(cache_dir), threads=threads,
                               synth_params=sp, real=real_ref, batch_size=batch_size)
        targets.append(key)
        labels[key] = c.label
    del model   # the tasks load their own copy (once per process)

    failed: list[str] = []
    done = [0]

    def on_done(key, row, error):
        done[0] += 1
        if error is not None:
            failed.append(f"{labels[key]}: {type(error).__name__}: {error}")
        if progress:
            what = (f"FAILED ({type(error).__name__}: {error})" if error is not None else
                    f"{row['metric'].upper()} {row['error_rate']:.2f}% ({row['unit_errors']}/{row['units']}), "
                    f"eval {row['eval_seconds']:.0f} s, calib {row['calib_seconds']:.0f} s on {row['host']}")
            print(f"[{done[0]}/{len(targets)}] {labels[key]}: {what}", flush=True)

    if progress:
        print(f"grid: {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run; "
              f"{len(utts)} utterances in {len(shards)} shard(s); torch threads per task: {threads or 'default'}",
              flush=True)
    try:
        if not targets:
            pass
        elif not distributed:
            gridrun.run_serial(graph, targets, on_done)
        elif client is not None:
            gridrun.run_dask(client, graph, targets, on_done)
        else:
            client, cluster = gridrun.start_client(workers, scheduler, progress)
            try:
                gridrun.run_dask(client, graph, targets, on_done)
            finally:
                client.close()
                if cluster is not None:
                    cluster.close()
    finally:
        df = merge_cells(csv, cells, cells_dir)
    if failed:
        raise RuntimeError(f"{len(failed)} grid cell(s) failed (rerun to retry them): " + "; ".join(failed))
    return df


def merge_cells(csv: Path, cells, cells_dir: Path) -> pd.DataFrame:
    """The CSV's rows plus the finished cells' rows, one row per cell_key, written atomically
    (``ResultsFile``). A legacy row (no provenance) with the same settings as a new row is replaced by it."""
    old = _load(csv)
    new = []
    for c in cells:
        path = cells_dir / f"{c.key}.json"
        if path.is_file():
            new.append(json.loads(path.read_text())["row"])
    if not new:
        return old
    fresh = pd.DataFrame(new)
    if len(old):
        old_keys = old["cell_key"].astype(str) if "cell_key" in old else pd.Series(UNKNOWN, index=old.index)
        legacy = old["model_sha256"].astype(str) == UNKNOWN if "model_sha256" in old else pd.Series(True, index=old.index)
        settings = [k for k in KEY if k not in CALIB_COLUMNS]   # what a legacy row says about itself
        old_settings = pd.Series([_text(r) for r in old[settings].itertuples(index=False)], index=old.index)
        new_settings = {_text(r) for r in fresh[settings].itertuples(index=False)}
        drop = old_keys.isin(set(fresh["cell_key"])) | (legacy & old_settings.isin(new_settings))
        old = old[~drop]
        fresh = pd.concat([old, fresh], ignore_index=True) if len(old) else fresh
    ResultsFile(csv).write(fresh)
    return _load(csv)   # as read back: the same types as every later load


def _text(values) -> str:
    """Settings as one comparable string (8, 8.0 and "8" alike: CSV columns with gaps read as float)."""
    return "|".join(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in values)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of the error rate (WER, or PER for phoneme models: column `metric`) over seeds
    per (model, W/A, calibration), with the FP32 gap. `wer_mean`/`words`/... keep their names for
    word models; `rate_mean`/`units`/... hold either metric."""
    df = load_frame(df)
    group = ["model", "w_bits", "a_bits", "calibration", *_DEFAULTS, *CALIB_COLUMNS, "model_sha256", "eval_sha256"]
    g = seed_summary(df, group, more={"metric": "first", "units": "first", "bops_t": "first"}, dropna=False)
    g = g.rename(columns={"rate": "rate_mean", "std": "rate_std", "errors": "unit_errors_mean"})
    g = g[[*group, "metric", "rate_mean", "rate_std", "seeds", "units", "unit_errors_mean", "size_mb", "bops_t"]]
    g["wer_mean"], g["wer_std"] = g["rate_mean"], g["rate_std"]
    g["words"], g["word_errors_mean"] = g["units"], g["unit_errors_mean"]
    # the FP32 row of the same model file and evaluation set
    fp32 = g[g.w_bits == 32].set_index(["model", "model_sha256", "eval_sha256"])["rate_mean"]
    same = pd.MultiIndex.from_frame(g[["model", "model_sha256", "eval_sha256"]])
    g["delta_vs_fp32"] = g["rate_mean"].to_numpy() - fp32.reindex(same).to_numpy()
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
    df = load_frame(df)
    keep = pd.Series(True, index=df.index)
    for col, default in _DEFAULTS.items():
        keep &= df[col].astype(str) == str(default)
    return df[keep].reset_index(drop=True)


def load_frame(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for col, default in _DEFAULTS.items():
        df[col] = df[col].fillna(default) if col in df else default
    # rows written before provenance: settings and origin unknown (never a match for a new run)
    for col in [*CALIB_COLUMNS, *PROVENANCE]:
        df[col] = df[col].fillna(UNKNOWN) if col in df else UNKNOWN
    # rows written before phoneme models existed: WER over words
    for col, old in (("error_rate", "wer"), ("units", "words"), ("unit_errors", "word_errors")):
        if old in df:
            df[col] = df[col].fillna(df[old]) if col in df else df[old]
    if "metric" in df or "wer" in df:
        df["metric"] = df["metric"].fillna("wer") if "metric" in df else "wer"
    return df


def load_or_run_grid(model_path, eval_dir, calib_dir, cache_dir, calibrations, bits, full_csvs, quick_csv,
                     quick_spec: GridSpec, limit: int | None, force_quick: bool = False) -> tuple[pd.DataFrame, str]:
    """What chapters 05 and 06 show: the first of ``full_csvs`` (e.g. this machine's
    build/results/grid.csv, then the copy committed under results/) that has every (calibration,
    W/A) row the table needs, restricted to the paper's method; otherwise (or with force_quick) the
    quick grid, run or resumed into ``quick_csv``. A side file ``<quick_csv>.json`` keeps the quick
    settings: if they change, the old quick rows are discarded. Returns (rows, source text)."""
    import json

    model = Path(model_path).stem
    if not force_quick:
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
    print("force_quick=True: " if force_quick else "no complete full grid: ", end="")
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


# --------------------------------------------------------------------------- the paper's protocol

# Kim et al., section 3: 20 synthetic batches of 8 (T = 500 frames, as the reference code's
# example), Adam lr in {0.03, 0.04, 0.05, 0.06} for {200, 250} iterations, W8A8 and W6A8, 4 runs
# each, min/max ranges, evaluated on dev-clean/dev-other/test-clean/test-other (hyper-parameters
# chosen on the dev sets); random calibration (Table 2's ablation) at the same widths and seeds.
PAPER_PROFILE = {"splits": ("dev-clean", "dev-other", "test-clean", "test-other"), "bits": ((8, 8), (6, 8)),
                 "seeds": (0, 1, 2, 3), "lrs": (0.03, 0.04, 0.05, 0.06), "iterations": (200, 250),
                 "n_batches": 20, "batch_size": 8, "frames": 500}
SPLIT_UTTERANCES = {"dev-clean": 2703, "dev-other": 2864, "test-clean": 2620, "test-other": 2939}


def paper_specs(profile: dict = PAPER_PROFILE) -> list:
    """One GridSpec per synthesis setting (lr x iterations); the first also holds the random rows."""
    specs = []
    for n, (lr, iters) in enumerate((lr, it) for lr in profile["lrs"] for it in profile["iterations"]):
        synth = {"n_batches": profile["n_batches"], "batch_size": profile["batch_size"], "frames": profile["frames"],
                 "iterations": iters, "lr": lr}
        specs.append(GridSpec(bits=tuple(profile["bits"]), seeds=tuple(profile["seeds"]), synth=synth,
                              calibrations=("synthetic", "random") if n == 0 else ("synthetic",),
                              random_batches=profile["n_batches"], random_frames=profile["frames"]))
    return specs


def paper_cost(seconds_per_iteration: float, seconds_per_utterance: float, profile: dict = PAPER_PROFILE) -> dict:
    """Expected compute of the paper profile from two measured rates (one task's wall time):
    an Adam iteration of one synthetic batch, and the integer model's evaluation per utterance."""
    specs = paper_specs(profile)
    iterations = sum(profile["n_batches"] * len(profile["seeds"]) * s.synth["iterations"] for s in specs)
    utts = sum(SPLIT_UTTERANCES[s] for s in profile["splits"])
    cells = sum(len(s.calibrations) * len(s.seeds) * len(s.bits) for s in specs) + 1   # + FP32
    out = {"synthetic_batches": profile["n_batches"] * len(profile["seeds"]) * len(specs),
           "adam_iterations": iterations, "cells_per_split": cells, "evaluated_utterances": cells * utts,
           "synthesis_hours": iterations * seconds_per_iteration / 3600,
           "evaluation_hours": cells * utts * seconds_per_utterance / 3600}
    out["total_hours"] = out["synthesis_hours"] + out["evaluation_hours"]
    return out


def run_paper_profile(model_path, data_root, out_dir, cache_dir, progress=True, **run_kw) -> None:
    """Every split x synthesis setting of PAPER_PROFILE into out_dir/paper_<split>.csv (one
    client for all: synthetic batches shared by the splits run once). Splits missing under
    data_root are downloaded (data.download_librispeech)."""
    from .data import download_librispeech
    from .gridrun import start_client

    client = cluster = None
    if run_kw.get("workers", 1) > 1 or run_kw.get("scheduler"):
        client, cluster = start_client(run_kw.pop("workers", 1), run_kw.pop("scheduler", None), progress)
    try:
        for split in PAPER_PROFILE["splits"]:
            folder = download_librispeech(split, data_root)   # data_root/LibriSpeech/<split>; kept if there
            for spec in paper_specs():
                run_grid(model_path, folder, Path(out_dir) / f"paper_{split}.csv", spec, cache_dir=cache_dir,
                         progress=progress, client=client, **run_kw)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


# --------------------------------------------------------------------------- summaries (README, results/README)

def variant(r, plain: str = "paper's method") -> str:
    """A row's weight-side settings in words ('bias correction + depthwise 8-bit'); `plain` when
    it has none (min/max, round-to-nearest, one width, integer non-linearities); a named recipe's
    row (``GridSpec.recipe``) says the recipe."""
    recipe = str(getattr(r, "recipe", "") or "")
    if recipe not in ("", "nan", "-"):
        return f"`{recipe}` recipe"
    parts = [("MSE clipping" if r.weight_method == "mse" else ""), ("GPTQ rounding" if r.rounding == "gptq" else ""),
             ("bias correction" if str(r.bias_correction) == "True" else ""),
             (f"depthwise {int(r.depthwise_bits)}-bit" if int(r.depthwise_bits) else ""),
             ("" if r.observer == "minmax" else f"{r.observer} observer"),
             ("float non-linearities (simulated)" if getattr(r, "nonlinear", "integer") == "float" else "")]
    return " + ".join(p for p in parts if p) or plain


def summary_lines(paths: list[str]) -> list[str]:
    """The summary table and the synthetic-vs-random lines, as markdown lines."""
    out = []
    df = pd.concat([load_frame(pd.read_csv(p)) for p in paths], ignore_index=True)
    df["variant"] = df.apply(variant, axis=1)
    key = ["w_bits", "a_bits", "calibration", "variant", "seed"]
    df = df.drop_duplicates(key)  # the FP32 row is in every CSV
    fp32 = df[df.w_bits == 32].iloc[0]
    name, unit = ("PER", "phonemes") if str(fp32.metric) == "per" else ("WER", "words")
    g = seed_summary(df, ["w_bits", "a_bits", "calibration", "variant"], more={"units": "first"})
    g["delta"] = g.rate - float(fp32.error_rate)
    order = {"none": 0, "synthetic": 1, "random": 2, "real": 3}
    g = g.sort_values(["w_bits", "calibration", "rate"], key=lambda s: s.map(order) if s.name == "calibration" else
                      (-s if s.name == "w_bits" else s))
    out.append(f"| W/A | calibration | variant | {name} % mean ± std | Δ vs FP32 | seeds | errors (per seed) / {unit} "
               "| 95% CI (one run) | size MiB |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in g.itertuples():
        out.append(f"| {r.w_bits}/{r.a_bits} | {r.calibration} | {r.variant} | {rate_text(r.rate, r.std, r.seeds)} | "
                   f"{r.delta:+.2f} | {r.seeds} | {r.per_seed} / {int(r.units)} | {r.ci95_lo:.1f}-{r.ci95_hi:.1f} | "
                   f"{r.size_mb:.2f} |")
    for w, a, pairs in synthetic_vs_random(df[(df.variant == "paper's method")]):
        wins = sum(int(syn < ran) for syn, ran in pairs)
        out += ["", f"W{w}A{a}: synthetic has fewer errors than random in {wins} of {len(pairs)} seeds "
                    f"({', '.join(f'{syn} vs {ran}' for syn, ran in pairs)})"]
    return out


def synthetic_vs_random(df: pd.DataFrame, sort: bool = True) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Per quantized W/A: (w, a, [(synthetic errors, random errors) for each seed both have])."""
    out = []
    for (w, a), d in df[df.w_bits < 32].groupby(["w_bits", "a_bits"], sort=sort):
        syn = d[d.calibration == "synthetic"].set_index("seed").unit_errors
        ran = d[d.calibration == "random"].set_index("seed").unit_errors
        seeds = sorted(set(syn.index) & set(ran.index))
        if seeds:
            out.append((w, a, [(int(syn[s]), int(ran[s])) for s in seeds]))
    return out
