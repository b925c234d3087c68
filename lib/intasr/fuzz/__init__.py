"""Fuzzing every reader that takes files from strangers (issue 29).

Readers (``readers.READERS``): ``.aqz`` load (and a run of the loaded program), ``.nemo`` load,
the ``.hama`` asset, ``load_audio``, a NeMo manifest, a LibriSpeech folder (as the archive a
download extracts, or laid out directly), and the C runtime's ``model.bin`` loader and its CLI's
input reader (built with AddressSanitizer and UndefinedBehaviorSanitizer).

Why hypothesis and not atheris: the inputs are structured (zip and tar members, .npy and JSON
headers, WAV / FLAC fields, forged checksums), and the mutations are written as strategy draws
over real seed files, so every input is reproducible from its choices and the same harness runs
as a pytest test with a small N; the readers are Python over the standard library, NumPy,
libsndfile and torch, where atheris' coverage feedback would need instrumented builds of those
and its loop stops at the first crash, while a campaign here counts every failure by kind and
goes on. The C runtime, where coverage-blind byte fuzzing matters most, runs under the sanitizers.

    python -m intasr.fuzz run --per-reader 12500 --out results/fuzz.json   # the benchmark
    python -m intasr.fuzz run --per-reader 30 --readers aqz nemo            # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from .runner import FAILURE_KINDS, HANG_SECONDS, run_reader, worker

__all__ = ["run_campaign", "FAILURE_KINDS", "HANG_SECONDS", "main"]


def run_campaign(per_reader: int, readers=None, seed: int = 0, work=None, out=None, failures=None,
                 quiet: bool = True, command: str | None = None) -> dict:
    """Run `per_reader` mutated inputs through each reader; returns (and writes to `out`) the results."""
    from .readers import READERS
    from .seeds import build_seeds

    import shutil

    work = Path(work or Path("build") / "fuzz").resolve()
    seed_dir = build_seeds(work / "seeds")
    failures = Path(failures) if failures else work / "failures"
    for name in readers or []:
        shutil.rmtree(failures / name, ignore_errors=True)
    if not readers:
        shutil.rmtree(failures, ignore_errors=True)
    names = list(readers or READERS)
    results = {"command": command, "per_reader": per_reader, "seed": seed, "hang_seconds": HANG_SECONDS,
               "failure_kinds": list(FAILURE_KINDS), "readers": {}, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                           "threads": 1}}
    if out:
        results["partial"] = True
    for k, name in enumerate(names):
        t0 = time.time()

        def progress(stats, name=name):
            if not quiet and stats["inputs"] % 500 == 0:
                print(f"  {name}: {stats['inputs']}/{per_reader}, {sum(stats['failures'].values())} failures, "
                      f"{stats['inputs'] / max(1e-9, time.time() - t0):.1f}/s", file=sys.stderr, flush=True)

        results["readers"][name] = run_reader(name, per_reader, seed + 1000 * k, work / "runs", seed_dir,
                                              failures, progress)
        if out:
            _write(results, out)
    results.pop("partial", None)
    totals = {"inputs": sum(r["inputs"] for r in results["readers"].values())}
    for kind in FAILURE_KINDS:
        totals[kind] = sum(r["failures"][kind] for r in results["readers"].values())
    results["totals"] = totals
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if out:
        _write(results, out)
    return results


def _cpu() -> str:
    try:
        from ..cpu import cpu_features

        return cpu_features().model or platform.machine()
    except Exception:   # noqa: BLE001  (a label only)
        return platform.machine()


def _write(results: dict, out) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, out)


def table(results: dict) -> list[dict]:
    """One row per reader (README and chapter 03): inputs, outcome counts, failures by kind, slowest."""
    rows = []
    for name, r in results["readers"].items():
        s = r.get("slowest") or {}
        rows.append({"reader": name, "call": r["call"], "inputs": r["inputs"], "refused": r["refused"],
                     "accepted": r["accepted"], **{k: r["failures"][k] for k in FAILURE_KINDS},
                     "slowest s": s.get("seconds"), "slowest input": s.get("label"),
                     "peak / bound": round(r["max_alloc_ratio"], 3)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m intasr.fuzz", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the benchmark: N mutations per reader -> a results file")
    r.add_argument("--per-reader", type=int, default=200)
    r.add_argument("--readers", nargs="*", default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--work", default="build/fuzz")
    r.add_argument("--out", default="build/fuzz/fuzz.json")
    r.add_argument("--merge", action="store_true",
                   help="replace these readers' rows in an existing --out file (its other rows kept)")
    w = sub.add_parser("worker")
    w.add_argument("reader")
    w.add_argument("n", type=int)
    w.add_argument("seed", type=int)
    w.add_argument("work")
    w.add_argument("seed_dir")
    args = p.parse_args(argv)
    if args.cmd == "worker":
        worker(args.reader, args.n, args.seed, Path(args.work), Path(args.seed_dir), sys.stdout)
        return 0
    command = "python -m intasr.fuzz " + " ".join(argv if argv is not None else sys.argv[1:])
    old = json.loads(Path(args.out).read_text()) if args.merge and Path(args.out).is_file() else None
    # merging: this run's progress goes to a file of its own, so an interruption keeps what it did
    progress_out = Path(args.out).with_suffix(".partial.json") if old else args.out
    res = run_campaign(args.per_reader, args.readers, args.seed, args.work, progress_out, quiet=False,
                       command=command)
    if old:   # the other readers' rows as they were, each row saying which command wrote it
        for name, row in old["readers"].items():
            row.setdefault("command", old.get("command"))
        for row in res["readers"].values():
            row["command"] = command
        old["readers"].update(res["readers"])
        old["commands"] = sorted({r["command"] for r in old["readers"].values()})
        old["totals"] = {"inputs": sum(r["inputs"] for r in old["readers"].values()),
                         **{k: sum(r["failures"][k] for r in old["readers"].values()) for k in FAILURE_KINDS}}
        old["finished"], old["partial"] = res["finished"], bool(res.get("partial"))
        res = old
        _write(res, args.out)
    for row in table(res):
        print(row)
    print("totals:", res["totals"])
    return 0
