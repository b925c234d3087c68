#!/usr/bin/env python
"""Run the book's notebooks headless with papermill: notebooks/NN_*.ipynb -> book/chapters/NN_*.ipynb.

    python tools/run_notebooks.py                    # every notebook that is out of date
    python tools/run_notebooks.py --only 01          # one chapter (prefix of the file name)
    python tools/run_notebooks.py --profile quick    # light parameters (smoke test)
    python tools/run_notebooks.py -p limit 8 -p batch_size 4 --force
    python tools/run_notebooks.py --list             # what would run, and why

Cache: a notebook is skipped when its executed copy exists, is newer than the notebook and every
dependency (the library sources lib/**/*.py, data/*.csv, the default restored model), and was run
with the same parameters. --force runs it anyway. The executed copy is written to a temporary file
next to the target and renamed into place only when the whole notebook succeeded, so a failed or
interrupted run never leaves a half-executed chapter behind; the failed copy is kept under
build/notebook-failures/ for inspection. Exit status: 0 when every selected notebook is up to date
or ran, 1 when one failed (its name is printed), 2 for usage errors.

Parameters: a notebook declares them in its cell tagged `parameters`. A profile or `-p` value is
injected only into notebooks that declare that name, so one profile serves every chapter. Values
given with -p are parsed as YAML scalars (8 -> int, 0.5 -> float, true -> bool, None/null -> None,
anything else -> string).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNEL = "intasr"

# Parameter sets by profile. A name is injected only into the notebooks that declare it.
# "default" injects nothing: every notebook's own defaults, which are light enough for a
# 2-core CPU. Add entries here when a chapter gets a knob worth a profile.
PROFILES: dict[str, dict[str, object]] = {
    "default": {},
    # smoke test: a few utterances, a few iterations
    "quick": {"limit": 8},
    # the settings of the committed full grid (results/README.md): hours on a 2-core CPU
    "full": {"limit": None, "batch_size": 8, "frames": 500, "iterations": 200, "synth_batch_size": 8,
             "synth_frames": 500, "synth_iterations": 200, "quick_seeds": "0,1,2", "quick_bits": "8/8,6/8,4/8",
             "real_limit": None, "repeats": 20},
}

# Files whose change makes every executed chapter stale (globs relative to the repo root).
DEFAULT_DEPS = ["lib/**/*.py", "lib/**/*.c", "data/*.csv", "results/*.csv", "benchmarks/*.csv",
                "build/quartznet15x5_restored.nemo"]


def log(msg: str) -> None:
    print(f"run_notebooks: {msg}", flush=True)


def parse_value(text: str):
    import yaml

    if text in ("None", "none", "null", "~"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) or value is None else text


def find_notebooks(nb_dir: Path, only: list[str] | None) -> list[Path]:
    notebooks = sorted(p for p in nb_dir.glob("[0-9][0-9]_*.ipynb") if p.is_file())
    if only:
        keys = [k.strip() for item in only for k in item.split(",") if k.strip()]
        chosen = [p for p in notebooks if any(p.stem == k or p.stem.startswith(k) for k in keys)]
        unmatched = [k for k in keys if not any(p.stem == k or p.stem.startswith(k) for p in notebooks)]
        if unmatched:
            raise ValueError(f"no notebook in {nb_dir} matches {', '.join(unmatched)}")
        return chosen
    return notebooks


def declared_parameters(nb_path: Path) -> dict:
    """Names (and default expressions) of the notebook's `parameters` cell."""
    import papermill as pm

    return pm.inspect_notebook(str(nb_path))


def dependency_files(root: Path, patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for pat in patterns:
        p = Path(pat)
        if p.is_absolute():
            if any(ch in pat for ch in "*?["):
                files += [Path(x) for x in __import__("glob").glob(pat, recursive=True)]
            elif p.exists():
                files.append(p)
        else:
            files += list(root.glob(pat))
    return [f for f in files if f.is_file()]


def executed_parameters(out_path: Path) -> dict | None:
    try:
        with open(out_path, encoding="utf-8") as f:
            nb = json.load(f)
        return dict(nb.get("metadata", {}).get("papermill", {}).get("parameters") or {})
    except (OSError, ValueError):
        return None


def staleness(nb_path: Path, out_path: Path, deps: list[Path], params: dict) -> str | None:
    """None when the executed copy is up to date, else the reason to run."""
    if not out_path.is_file():
        return "no executed copy"
    out_mtime = out_path.stat().st_mtime
    newer = [p for p in [nb_path, *deps] if p.stat().st_mtime > out_mtime]
    if newer:
        names = ", ".join(str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in newer[:3])
        more = f" and {len(newer) - 3} more" if len(newer) > 3 else ""
        return f"changed since last run: {names}{more}"
    previous = executed_parameters(out_path)
    if previous is None:
        return "executed copy unreadable"
    if previous != params:
        return f"parameters changed: {previous} -> {params}"
    return None


def run_one(nb_path: Path, out_path: Path, params: dict, kernel: str, cwd: Path, cell_timeout: int | None,
            log_output: bool, failures_dir: Path) -> float:
    """Execute nb_path into out_path atomically. Returns seconds; raises on failure."""
    import papermill as pm

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".tmp.ipynb", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    start_wall = time.time()
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(nb_path), str(tmp), parameters=params, kernel_name=kernel, cwd=str(cwd),
                            progress_bar=sys.stderr.isatty(), log_output=log_output,
                            execution_timeout=cell_timeout)
    except BaseException:
        if tmp.exists():
            failures_dir.mkdir(parents=True, exist_ok=True)
            kept = failures_dir / out_path.name
            os.replace(tmp, kept)
            log(f"partial output of the failed run kept in {kept}")
        raise
    os.replace(tmp, out_path)
    # Date the copy by the start of the run: a source edited while it ran still counts as newer.
    os.utime(out_path, (start_wall, start_wall))
    return time.perf_counter() - start


def check_kernel(kernel: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise SystemExit(f"run_notebooks: error: Jupyter kernel {kernel!r} is not installed; run "
                         f"`make setup` or `{sys.executable} -m ipykernel install --sys-prefix --name {kernel}`")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", metavar="NN",
                   help="run only notebooks whose name starts with NN (repeatable, or comma-separated)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="default",
                   help="named parameter set (default: the notebooks' own defaults)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override one parameter (repeatable); applied to notebooks that declare NAME")
    p.add_argument("--force", action="store_true", help="run even when the executed copy is up to date")
    p.add_argument("--list", action="store_true", help="show what would run and why, run nothing")
    p.add_argument("--keep-going", action="store_true", help="after a failure, run the remaining notebooks")
    p.add_argument("--kernel", default=KERNEL, help=f"Jupyter kernel name (default {KERNEL})")
    p.add_argument("--cell-timeout", type=int, default=3600, help="seconds per cell before giving up (default 3600)")
    p.add_argument("--log-output", action="store_true", help="stream the notebooks' cell output to this terminal")
    p.add_argument("--notebooks-dir", type=Path, default=REPO / "notebooks", help="source notebooks (default notebooks/)")
    p.add_argument("--out-dir", type=Path, default=REPO / "book" / "chapters",
                   help="executed copies (default book/chapters/)")
    p.add_argument("--cwd", type=Path, default=REPO, help="working directory of the kernels (default: repo root)")
    p.add_argument("--failures-dir", type=Path, default=REPO / "build" / "notebook-failures",
                   help="where a failed run's partial output is kept (default build/notebook-failures/)")
    p.add_argument("--deps", action="append", metavar="GLOB",
                   help="dependency files/globs, relative to the repo root or absolute (repeatable; "
                        f"replaces the default {' '.join(DEFAULT_DEPS)})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    nb_dir = args.notebooks_dir.resolve()
    out_dir = args.out_dir.resolve()
    if not nb_dir.is_dir():
        print(f"run_notebooks: error: {nb_dir}: no such folder", file=sys.stderr)
        return 2
    try:
        notebooks = find_notebooks(nb_dir, args.only)
    except ValueError as e:
        print(f"run_notebooks: error: {e}", file=sys.stderr)
        return 2
    if not notebooks:
        log(f"no notebooks matching NN_*.ipynb in {nb_dir}")
        return 0
    deps = dependency_files(REPO, args.deps if args.deps is not None else DEFAULT_DEPS)
    overrides = {name: parse_value(value) for name, value in args.parameter}
    requested = {**PROFILES[args.profile], **overrides}

    plan = []
    declared_anywhere: set[str] = set()
    for nb in notebooks:
        declared = declared_parameters(nb)
        declared_anywhere |= set(declared)
        params = {k: v for k, v in requested.items() if k in declared}
        out = out_dir / nb.name
        reason = "--force" if args.force else staleness(nb, out, deps, params)
        plan.append((nb, out, params, reason))
    unknown = sorted(set(overrides) - declared_anywhere)
    if unknown:
        print(f"run_notebooks: error: no selected notebook declares parameter(s) {', '.join(unknown)}",
              file=sys.stderr)
        return 2

    if args.list:
        for nb, out, params, reason in plan:
            print(f"{nb.name:40s} {'run: ' + reason if reason else 'up to date'}"
                  f"{'  params ' + json.dumps(params) if params else ''}")
        return 0

    todo = [item for item in plan if item[3]]
    for nb, _out, _params, reason in plan:
        if not reason:
            log(f"{nb.stem}: up to date, skipped (--force to rerun)")
    if not todo:
        return 0
    check_kernel(args.kernel)
    failed = []
    for i, (nb, out, params, reason) in enumerate(todo, 1):
        shown = f" with {json.dumps(params)}" if params else ""
        log(f"[{i}/{len(todo)}] {nb.stem}: running ({reason}){shown}")
        try:
            seconds = run_one(nb, out, params, args.kernel, args.cwd, args.cell_timeout, args.log_output,
                              args.failures_dir)
        except KeyboardInterrupt:
            log(f"{nb.stem}: interrupted")
            return 130
        except Exception as e:  # papermill raises PapermillExecutionError with the cell and traceback
            first = str(e).strip().splitlines()
            detail = next((ln for ln in reversed(first) if ln.strip()), type(e).__name__) if first else type(e).__name__
            log(f"FAILED: {nb.name}: {detail}")
            failed.append(nb.name)
            if not args.keep_going:
                break
            continue
        log(f"[{i}/{len(todo)}] {nb.stem}: done in {seconds:.1f} s -> {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    if failed:
        log(f"failed notebook(s): {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
