"""Which grid rows a book chapter shows, and how the page names their source.

A full grid's rows stand for a run only when they were measured on that run's model file and
evaluation set (by hash when every row has provenance; rows written before provenance only for
the default model and test-other folder they were measured on). Otherwise the chapter runs, or
resumes, a quick grid named by a hash of what its rows depend on. Paths are shown as the page
shows them (``shown``), never this machine's.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pandas as pd

from . import paths, tables
from .data import load_dataset
from .provenance import eval_set_fingerprint, file_sha256
from .tables import GridSpec


def repo_root(start: Path | None = None) -> Path:
    """The first folder at or above `start` (default: the working directory) holding data/paper_results.csv."""
    start = Path.cwd() if start is None else Path(start)
    for p in [start, *start.parents]:
        if (p / "data" / "paper_results.csv").is_file():
            return p
    raise FileNotFoundError("data/paper_results.csv not found above " + str(start))


def shown(path, root: Path | None = None) -> str:
    """A path as the page shows it, never this machine's: relative to the repository `root`, or to
    the shared assets ($INTASR_SHARED, by default ../shared), else the file name alone."""
    root = repo_root() if root is None else root
    p = Path(path).resolve()
    if p.is_relative_to(root):
        return str(p.relative_to(root))
    shared = paths.shared_dir().resolve()
    if p.is_relative_to(shared):
        base = "../shared" if shared == root.parent / "shared" else "$INTASR_SHARED"
        return f"{base}/{p.relative_to(shared)}"
    return p.name


def committed(name: str, root: Path | None = None) -> Path:
    """build/results/<name> when it exists (a rerun here), else results/<name> of the repository."""
    local = paths.build_dir() / "results" / name
    return local if local.is_file() else (repo_root() if root is None else root) / "results" / name


def applying_file(name: str, model_path, eval_dir, eval_utts, root: Path | None = None) -> Path | None:
    """The first of build/results/<name> and the repository's results/<name> that exists and was
    measured on this run's model and evaluation data (``rows_apply``), else None."""
    root = repo_root() if root is None else root
    candidates = [paths.build_dir() / "results" / name, root / "results" / name]
    return next((p for p in candidates if p.is_file() and rows_apply(p, model_path, eval_dir, eval_utts)), None)


def known_provenance(df: pd.DataFrame) -> bool:
    """Every row carries a model hash and an evaluation-set fingerprint (not 'unknown')."""
    cols = ["model_sha256", "eval_sha256"]
    if len(df) == 0 or not set(cols) <= set(df.columns):
        return False
    values = df[cols].astype(str)
    return bool((~values.isin(["unknown", "nan", ""])).all().all())


def sha_prefix(df: pd.DataFrame) -> str:
    """The rows' model sha256 prefixes (older CSVs have none: results/README.md)."""
    if "model_sha256" not in df or set(df.model_sha256.astype(str)) == {"unknown"}:
        return "not recorded in the file: results/README.md says which"
    return "sha256 " + ", ".join(sorted({str(s)[:8] for s in df.model_sha256}))


def rows_apply(csv_path, model_path, eval_dir, eval_utts) -> bool:
    """May this results CSV stand for a run on `model_path` and `eval_dir` (its utterances
    `eval_utts`)? Only if its rows of that model were measured on the same model file and
    evaluation set: by hash when every row has provenance, else (older CSVs) only for the default
    model and test-other folder they were measured on (results/README.md)."""
    df = pd.read_csv(csv_path)
    df = df[df["model"] == Path(model_path).stem]
    if known_provenance(df):
        return bool((df["model_sha256"] == file_sha256(model_path)).all()
                    and (df["eval_sha256"] == eval_set_fingerprint(eval_utts)["sha256"]).all())
    same = lambda a, b: Path(a).resolve() == Path(b).resolve()
    return same(model_path, paths.restored_model()) and same(eval_dir, paths.librispeech("test-other"))


def parse_bits(text: str) -> tuple[tuple[int, int], ...]:
    """'8/8,6/8' -> ((8, 8), (6, 8))."""
    return tuple(tuple(int(v) for v in item.split("/")) for item in text.split(",") if item.strip())


def quick_spec(bits: str, calibrations: str, seeds, synth_batches: int, synth_batch_size: int, synth_frames: int,
               synth_iterations: int, synth_lr: float, real_limit: int | None) -> GridSpec:
    """The chapters' quick grid from their parameters (comma-separated W/A, sources and seeds)."""
    return GridSpec(bits=parse_bits(bits), calibrations=tuple(c.strip() for c in calibrations.split(",") if c.strip()),
                    seeds=tuple(int(s) for s in str(seeds).split(",") if str(s).strip()),
                    synth={"n_batches": synth_batches, "batch_size": synth_batch_size, "frames": synth_frames,
                           "iterations": synth_iterations, "lr": synth_lr},
                    random_batches=synth_batches, random_frames=synth_frames, real_limit=real_limit)


def quick_grid_csv(quick_csv, spec: GridSpec, model_path, eval_utts, limit) -> Path:
    """``<quick_csv stem>_<key>.csv``, the key a hash of what the rows depend on (model file, evaluation
    set, `limit`, the quick settings): rows of another model, data set or setting are never reused."""
    depends = json.dumps([file_sha256(model_path), eval_set_fingerprint(eval_utts)["sha256"], limit, str(spec)],
                         sort_keys=True)
    key = hashlib.sha256(depends.encode()).hexdigest()[:12]
    return Path(quick_csv).with_name(f"{Path(quick_csv).stem}_{key}.csv")


def chapter_rows(model_path, eval_dir, calib_dir, cache_dir, *, calibrations, grid_csv, committed_csv, quick_csv,
                 spec: GridSpec, limit, run_grid: bool = False, bits=((8, 8), (6, 8))):
    """The rows a chapter shows, restricted to the paper's method and this model: those of the
    first full grid (`grid_csv`, then `committed_csv` or results/grid.csv) measured on this run's
    model and data that has every (`calibrations` x `bits`) row, else (or with `run_grid`) a quick
    grid run or resumed here. Prints which file it reads or why one is not used.
    Returns (rows, source text, the evaluation set's utterances)."""
    root = repo_root()
    eval_utts = load_dataset(eval_dir)
    candidates = [Path(grid_csv), Path(committed_csv or root / "results" / "grid.csv")]
    usable = [c for c in candidates if c.is_file() and rows_apply(c, model_path, eval_dir, eval_utts)]
    for c in candidates:
        if c.is_file() and c not in usable:
            print(f"{shown(c, root)}: measured on another model or evaluation set; not used for this run")
    if usable and not run_grid:
        results, source = tables.load_or_run_grid(
            model_path, eval_dir, calib_dir, cache_dir, list(calibrations), list(bits), full_csvs=usable,
            quick_csv=shown(quick_csv, root), quick_spec=spec, limit=limit)
    else:
        quick_path = quick_grid_csv(quick_csv, spec, model_path, eval_utts, limit)
        t0 = time.perf_counter()
        rows = tables.run_grid(model_path, eval_dir, quick_path, spec, calib_data=calib_dir, cache_dir=cache_dir,
                               limit=limit, progress=False)
        print(f"quick grid: {len(rows)} rows in {shown(quick_path, root)} ({time.perf_counter() - t0:.0f} s)")
        results = tables.paper_method_rows(rows)
        results = results[results["model"] == Path(model_path).stem].reset_index(drop=True)
        source = f"quick grid ({shown(quick_path, root)}, {limit or 'all'} utterances)"
    source = source.replace(str(root) + os.sep, "")
    print(f"source: {source}; {len(results)} rows")
    return results, source, eval_utts


def provenance_text(results: pd.DataFrame, source: str, model_path, eval_dir) -> str:
    """The sentence under a chapter's first table: which file the rows come from, on which model
    (and its sha256 prefix when the rows record it) and how many utterances and words."""
    fp = results[results.w_bits == 32].iloc[0]
    data_txt = f"{int(fp.utterances)} utterances of `{shown(eval_dir)}` ({int(fp.words)} words)"
    if not source.startswith("full grid"):
        return (f"**These rows** come from the {source}, run here on the model "
                f"`{shown(model_path)}` and {data_txt}.")
    grid_file = source[len("full grid ("):-1]
    if known_provenance(results):
        sha = str(results["model_sha256"].iloc[0])
        return (f"**These rows** come from `{grid_file}`, measured on this run's model "
                f"`{shown(model_path)}` (sha256 `{sha[:12]}`) and data, {data_txt}.")
    return (f"**These rows** come from `{grid_file}`, a grid without provenance columns, measured on the "
            f"default model `{shown(model_path)}` and {data_txt}, the paths this run uses; "
            "`results/README.md` says which model file it was.")
