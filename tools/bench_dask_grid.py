#!/usr/bin/env python
"""The same 2 x 2 x 2 grid with `intasr grid --workers 1` (serial, in one process) and
`--workers 2` (Dask LocalCluster), on each engine (`--runtimes`: $INTASR_RUNTIME = c, the C
runtime, or torch, the torch integer reference), each run from an empty output folder, synthetic
cache and C-runtime model cache (``fresh_native_cache``: every cell's C library is exported and
compiled in the run); wall time of each command, and whether the rows are the same.

    .venv/bin/python tools/bench_dask_grid.py --out results/dask_grid_bench.json
    .venv/bin/python tools/bench_dask_grid.py --order 1 --runtimes torch c --out results/dask_grid_engines.json
    .venv/bin/python tools/bench_dask_grid.py --order 1 2 --reference OTHER/grid.csv   # rows checked against it too

--reference: the grid.csv of an earlier run (e.g. the torch engine's, which takes far longer on a
CPU without VNNI) whose rows every run must equal.

Rows are compared on the settings, provenance of model and data, and every result column
(WER, CER, errors, CI, size, BOPs); timing and machine columns differ by nature and are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

GRID = ["--bits", "8/8", "6/8", "--calibrations", "synthetic", "random", "--seeds", "0", "1", "--limit", "8"]
COMPARED = ["model", "w_bits", "a_bits", "calibration", "seed", "cell_key", "model_sha256", "eval_sha256",
            "wer", "cer", "words", "word_errors", "ci95_lo", "ci95_hi", "size_mb", "bops_t"]


def _shown(cmd) -> list[str]:
    """The command as the results file records it: file arguments relative to the repository."""
    from intasr.paths import display_path

    return [display_path(a) if os.path.isabs(str(a)) else str(a) for a in cmd]


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def task_seconds(csv) -> float:
    """Seconds the grid's tasks computed, from its rows: evaluation + quantization of every cell,
    plus each synthetic batch once (the cells of one seed share it)."""
    df = pd.read_csv(csv)
    synth = df[df.calibration == "synthetic"].drop_duplicates("seed").synth_seconds.sum()
    return round(float(df.eval_seconds.sum() + df.quantize_seconds.sum() + synth), 1)


def add_task_seconds(path: Path) -> None:
    """Add each run's task seconds (and busy fraction per worker) to an existing report."""
    report = json.loads(path.read_text())
    for r in report["runs"]:
        r["task_seconds"] = task_seconds(ROOT / r["csv"] if not Path(r["csv"]).is_absolute() else r["csv"])
        r["task_seconds_per_worker_over_wall"] = round(r["task_seconds"] / r["workers"] / r["wall_seconds"], 3)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(json.dumps([{k: r[k] for k in ("workers", "wall_seconds", "task_seconds",
                                         "task_seconds_per_worker_over_wall")} for r in report["runs"]]))


def fresh_native_cache(folder: Path) -> Path:
    """$INTASR_NATIVE_CACHE for one run: the kernel archive (compiled once per install and
    compiler) linked in, and no model's library, so the run exports and compiles every cell's."""
    from intasr.program.c_backend import kernel_library

    kernels = kernel_library().parent
    root = folder / "native"
    (root / "c_runtime").mkdir(parents=True)
    (root / "c_runtime" / kernels.name).symlink_to(kernels)
    return root


def main() -> int:
    from intasr import paths
    from intasr.provenance import code_version, file_sha256, machine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(paths.restored_model()))
    p.add_argument("--data", default=str(paths.librispeech("test-other")))
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--order", nargs="+", type=int, default=[1, 2], help="worker counts, run in this order")
    p.add_argument("--runtimes", nargs="+", default=["c"], choices=["c", "torch", "auto"],
                   help="engines ($INTASR_RUNTIME); every worker count runs on each, in this order")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per task for every run (default: the grid's, cores // workers)")
    p.add_argument("--reference", default=None, help="an earlier run's grid.csv that every run's rows must equal")
    p.add_argument("--work", default=str(paths.build_dir() / "dask_grid_bench"))
    p.add_argument("--out", default=str(ROOT / "results" / "dask_grid_bench.json"))
    p.add_argument("--add-task-seconds", action="store_true",
                   help="only add task seconds per run (from the runs' CSVs) to an existing --out report")
    args = p.parse_args()
    if args.add_task_seconds:
        add_task_seconds(Path(args.out))
        return 0

    extra = ["--iterations", str(args.iterations), "--synth-frames", str(args.frames)]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    work = Path(args.work)
    runs, csvs = [], []
    for i, (runtime, workers) in enumerate((r, w) for r in args.runtimes for w in args.order):
        folder = work / f"run{i}_{runtime}_workers{workers}"
        shutil.rmtree(folder, ignore_errors=True)   # empty results, synthetic and model-library caches
        native = fresh_native_cache(folder)
        cmd = [str(ROOT / ".venv" / "bin" / "intasr"), "grid", "--model", args.model, "--data", args.data, *GRID,
               *extra, "--workers", str(workers), "--out", str(folder / "grid.csv"), "--cache-dir", str(folder / "cache")]
        before = loadavg()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", "INTASR_RUNTIME": runtime,
                                   "INTASR_NATIVE_CACHE": str(native)})
        wall = time.perf_counter() - t0
        (folder / "log.txt").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); log: {folder / 'log.txt'}")
        engines = sorted(set(pd.read_csv(folder / "grid.csv").get("engine", pd.Series(["?"])).astype(str)))
        runs.append({"runtime": runtime, "engines": engines, "workers": workers, "wall_seconds": round(wall, 1),
                     "loadavg_before": before,
                     "loadavg_after": loadavg(), "command": " ".join(_shown(cmd)),
                     "csv": paths.display_path(folder / "grid.csv"), "task_seconds": task_seconds(folder / "grid.csv")})
        csvs.append(folder / "grid.csv")
        print(f"{runtime}, workers {workers}: {wall:.1f} s ({', '.join(engines)})", flush=True)

    if args.reference:
        csvs = [Path(args.reference), *csvs]
    frames = [pd.read_csv(csv).sort_values("cell_key").reset_index(drop=True)[COMPARED] for csv in csvs]
    same = all(f.equals(frames[0]) for f in frames[1:])
    # per differing row: {"column/self|other": value} (compare's column pairs as JSON keys)
    diff = [] if same else [{str(row): {"/".join(map(str, k)): v for k, v in cols.items()}
                             for row, cols in frames[0].compare(f).to_dict(orient="index").items()}
                            for f in frames[1:]]
    by = {}
    for r in runs:
        by.setdefault(f"{r['runtime']}, workers {r['workers']}", []).append(r["wall_seconds"])
    report = {"grid": " ".join(GRID + extra), "model": paths.display_path(args.model), "model_sha256": file_sha256(args.model),
              "rows": len(frames[0]), "rows_identical": same, "differences": diff, "runs": runs,
              "reference": None if not args.reference else {
                  "csv": paths.display_path(args.reference),
                  "engines": sorted(set(pd.read_csv(args.reference).get("engine", pd.Series(["?"])).astype(str)))},
              "wall_seconds_by_run": by, "machine": machine(), "code": code_version(),
              "note": "each run starts from an empty synthetic cache, output folder and C-runtime model cache (the "
                      "kernel archive, compiled once per install, is reused); the machine is shared with other "
                      "jobs (loadavg before/after each run)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(json.dumps({k: report[k] for k in ("rows", "rows_identical", "wall_seconds_by_run")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
