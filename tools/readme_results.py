#!/usr/bin/env python
"""Write the result tables of README.md and results/README.md from the committed results files.

No number in those tables is typed by hand: each table sits between two markers

    <!-- results:NAME -->
    ...generated text...
    <!-- /results:NAME -->

and this tool rewrites the text between them from the CSV it names (`BLOCKS` below), with the
provenance of the rows (model file sha256, evaluation set, commit) under each table.

    .venv/bin/python tools/readme_results.py           # rewrite the blocks in place
    .venv/bin/python tools/readme_results.py --check   # exit 1 when a block is not what the files give

`tests/test_readme_results.py` runs `--check`, so a results file changed without its README
tables fails the test suite.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "tools"))

from asrquant.tables import _load_frame  # noqa: E402
from summarize_results import summary_lines, variant  # noqa: E402

ORDER = {"none": 0, "synthetic": 1, "random": 2, "real": 3}


def _frame(path: Path) -> pd.DataFrame:
    df = _load_frame(pd.read_csv(path))
    df["variant"] = df.apply(variant, axis=1)
    return df


def _short(value, n: int = 8) -> str:
    text = str(value)
    return text[:n] if text not in ("unknown", "nan", "-") else "unknown"


def provenance_line(df: pd.DataFrame, path: Path) -> str:
    """Where a table's rows come from: file, model file hashes, evaluation set, commits."""
    rel = path.relative_to(ROOT) if path.is_absolute() and ROOT in path.parents else path
    models = sorted({_short(v) for v in df["model_sha256"]})
    evals = sorted({_short(v) for v in df["eval_sha256"]})
    commits = sorted({_short(v, 7) for v in df["code_commit"]})
    units = "phonemes" if str(df["metric"].iloc[0]) == "per" else "words"
    n_utts, n_units = int(df["utterances"].iloc[0]), int(df["units"].iloc[0])
    if models == ["unknown"]:
        origin = "rows written before the provenance columns existed (model file and commit not recorded)"
    else:
        origin = (f"model file sha256 `{'`, `'.join(models)}...`, evaluation set `{'`, `'.join(evals)}...`, "
                  f"commit `{'`, `'.join(commits)}`")
    return (f"Rows: `{rel}` ({len(df)} rows; {n_utts} utterances, {n_units} {units}); {origin}. "
            f"Written by `tools/readme_results.py`.")


def _group(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    g = (df.groupby(keys, sort=False)
         .agg(rate=("error_rate", "mean"), std=("error_rate", "std"), seeds=("seed", "nunique"),
              per_seed=("unit_errors", lambda s: "/".join(str(int(v)) for v in s)),
              units=("units", "first"), lo=("ci95_lo", "mean"), hi=("ci95_hi", "mean"),
              size=("size_mb", "first"))
         .reset_index())
    return g


def _rate(r, bold: bool = False) -> str:
    std = f" ± {r.std:.2f}" if r.seeds > 1 else ""
    text = f"{r.rate:.2f}{std}"
    return f"**{text}**" if bold else text


def _fp32(df: pd.DataFrame):
    return df[df.w_bits == 32].iloc[0]


def table1(path: Path) -> list[str]:
    """Table 1 / Table 2: the paper's method per W/A x calibration, next to the paper's gaps."""
    df = _frame(path)
    df = df[df.variant == "paper's method"]
    fp32 = _fp32(df)
    paper = pd.read_csv(ROOT / "data" / "paper_results.csv")
    paper = paper[(paper.model == "QuartzNet15x5") & (paper.split == "test-other")].drop_duplicates(
        ["method", "w_bits", "a_bits"])
    paper_fp32 = float(paper[paper.method == "baseline"].wer.iloc[0])
    g = _group(df, ["w_bits", "a_bits", "calibration"])
    g = g.sort_values(["w_bits", "calibration"], ascending=[False, True],
                      key=lambda s: s.map(ORDER) if s.name == "calibration" else s)
    units = int(fp32.units)
    out = [f"| W/A | calibration | WER % mean ± std (errors per seed / {units}) | Δ vs FP32 | "
           "paper Δ (full test-other) |", "|---|---|---|---|---|"]
    for r in g.itertuples():
        if r.w_bits == 32:
            out.append(f"| 32/32 | - | {r.rate:.2f} ({r.per_seed}), CI {r.lo:.1f}-{r.hi:.1f} | | ({paper_fp32:.2f}) |")
            continue
        p = paper[(paper.method == r.calibration) & (paper.w_bits == r.w_bits) & (paper.a_bits == r.a_bits)]
        paper_delta = f"{float(p.wer.iloc[0]) - paper_fp32:+.2f}" if len(p) else "not reported"
        label = {"synthetic": {8: "**synthetic (no data)**", 6: "**synthetic**"}.get(r.w_bits, "synthetic"),
                 "random": "random U[-3,3]" if r.w_bits == 8 else "random"}.get(r.calibration, r.calibration)
        if r.calibration == "real":
            n_real = df[df.calibration == "real"].calib_utterances.iloc[0]
            label = f"real ({n_real} utterances)" if str(n_real) not in ("unknown", "-") else "real"
        bold = r.calibration == "synthetic" and r.w_bits >= 6
        delta = f"{r.rate - float(fp32.error_rate):+.2f}"
        out.append(f"| {r.w_bits}/{r.a_bits} | {label} | {_rate(r, bold)} ({r.per_seed}) | "
                   f"{'**' + delta + '**' if bold else delta} | {paper_delta} |")
    out += ["", _synthetic_vs_random(df) + " " + provenance_line(_frame(path), path)]
    return out


def _synthetic_vs_random(df: pd.DataFrame) -> str:
    parts = []
    for (w, a), d in df[df.w_bits < 32].groupby(["w_bits", "a_bits"], sort=False):
        syn = d[d.calibration == "synthetic"].set_index("seed").unit_errors
        ran = d[d.calibration == "random"].set_index("seed").unit_errors
        seeds = sorted(set(syn.index) & set(ran.index))
        if seeds:
            wins = sum(int(syn[s] < ran[s]) for s in seeds)
            parts.append(f"W{w}A{a} {wins} of {len(seeds)}")
    return ("Seeds in which synthetic calibration had fewer errors than random (same seed): "
            + ", ".join(parts) + "." if parts else "")


def beyond(path: Path) -> list[str]:
    """Beyond the paper: every variant other than the paper's method, with the FP32 gap."""
    df = _frame(path)
    fp32 = _fp32(df)
    rest = df[(df.w_bits < 32) & (df.variant != "paper's method")]
    g = _group(rest, ["w_bits", "a_bits", "variant"])
    g = g.sort_values(["w_bits", "rate"], ascending=[False, True])
    out = ["| W/A | variant (synthetic calibration) | WER % mean ± std (errors per seed) | seeds | Δ vs FP32 "
           "| size MiB |", "|---|---|---|---|---|---|"]
    for r in g.itertuples():
        out.append(f"| {r.w_bits}/{r.a_bits} | {r.variant} | {_rate(r)} ({r.per_seed}) | {r.seeds} | "
                   f"{r.rate - float(fp32.error_rate):+.2f} | {r.size:.2f} |")
    out += ["", f"FP32: {float(fp32.error_rate):.2f} ({int(fp32.unit_errors)} / {int(fp32.units)} words). "
            + provenance_line(df, path)]
    return out


def conformer(path: Path) -> list[str]:
    """The hama Conformer-CTC grid: PER per W/A x calibration x non-linearities."""
    df = _frame(path)
    fp32 = _fp32(df)
    g = _group(df, ["w_bits", "a_bits", "calibration", "nonlinear"])
    g = g.sort_values(["w_bits", "calibration", "nonlinear"], ascending=[False, True, False],
                      key=lambda s: s.map(ORDER) if s.name == "calibration" else s)
    units = int(fp32.units)
    out = [f"| W/A | calibration | non-linearities | PER % mean ± std | Δ vs FP32 | errors per seed / {units} |",
           "|---|---|---|---|---|---|"]
    for r in g.itertuples():
        if r.w_bits == 32:
            out.append(f"| 32/32 | - | float | {r.rate:.2f} | | {r.per_seed} |")
            continue
        nl = "integer" if r.nonlinear == "integer" else "float (simulated quantization)"
        bold = r.calibration == "synthetic" and r.nonlinear == "integer"
        delta = f"{r.rate - float(fp32.error_rate):+.2f}"
        out.append(f"| {r.w_bits}/{r.a_bits} | {r.calibration} | {nl} | {_rate(r, bold)} | "
                   f"{'**' + delta + '**' if bold else delta} | {r.per_seed} |")
    out += ["", _synthetic_vs_random(df[df.nonlinear == "integer"]) + " " + provenance_line(df, path)]
    return out


def summary(*paths: Path) -> list[str]:
    return summary_lines([str(p) for p in paths])


# README file -> block name -> function of the results files
BLOCKS = {
    "README.md": {
        "table1": lambda: table1(ROOT / "results" / "grid.csv"),
        "beyond": lambda: beyond(ROOT / "results" / "beyond.csv"),
        "conformer": lambda: conformer(ROOT / "results" / "conformer_grid.csv"),
    },
    "results/README.md": {
        "summary": lambda: summary(ROOT / "results" / "grid.csv", ROOT / "results" / "beyond.csv"),
    },
}


def render(text: str, blocks: dict) -> str:
    for name, make in blocks.items():
        pattern = re.compile(rf"(<!-- results:{name} -->\n)(.*?)(<!-- /results:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"readme_results: no '<!-- results:{name} -->' ... '<!-- /results:{name} -->' block")
        body = "\n".join(make()) + "\n"
        text = pattern.sub(lambda m: m.group(1) + body + m.group(3), text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a block is stale")
    args = ap.parse_args(argv)
    stale = []
    for rel, blocks in BLOCKS.items():
        path = ROOT / rel
        old = path.read_text()
        new = render(old, blocks)
        if new != old:
            stale.append(rel)
            if not args.check:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(new)
                tmp.replace(path)
    if args.check and stale:
        print(f"readme_results: out of date with results/: {', '.join(stale)} "
              "(run .venv/bin/python tools/readme_results.py)", file=sys.stderr)
        return 1
    print(("rewrote " + ", ".join(stale)) if stale and not args.check else "README tables up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
