#!/usr/bin/env python
"""Markdown tables (mean +- std over seeds) from the grid CSVs, for the README and results/README.md.

    .venv/bin/python tools/summarize_results.py results/grid.csv results/beyond.csv
    .venv/bin/python tools/summarize_results.py results/conformer_grid.csv     # PER (phoneme model)

The error rate is the grid's `metric` (WER over words, or PER over phonemes); for the Conformer
the variant says whether the non-linearities were integer or float (simulated quantization).
Last line: in how many seeds synthetic calibration beat random, per W/A (integer rows).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from asrquant.tables import _load_frame  # noqa: E402


def variant(r) -> str:
    parts = [("MSE clipping" if r.weight_method == "mse" else ""), ("GPTQ rounding" if r.rounding == "gptq" else ""),
             ("bias correction" if str(r.bias_correction) == "True" else ""),
             (f"depthwise {int(r.depthwise_bits)}-bit" if int(r.depthwise_bits) else ""),
             ("" if r.observer == "minmax" else f"{r.observer} observer"),
             ("float non-linearities (simulated)" if getattr(r, "nonlinear", "integer") == "float" else "")]
    return " + ".join(p for p in parts if p) or "paper's method"


def summary_lines(paths: list[str]) -> list[str]:
    """The summary table and the synthetic-vs-random lines, as markdown lines."""
    out = []
    df = pd.concat([_load_frame(pd.read_csv(p)) for p in paths], ignore_index=True)
    df["variant"] = df.apply(variant, axis=1)
    key = ["w_bits", "a_bits", "calibration", "variant", "seed"]
    df = df.drop_duplicates(key)  # the FP32 row is in every CSV
    fp32 = df[df.w_bits == 32].iloc[0]
    name, unit = ("PER", "phonemes") if str(fp32.metric) == "per" else ("WER", "words")
    g = (df.groupby(["w_bits", "a_bits", "calibration", "variant"], sort=False)
         .agg(wer=("error_rate", "mean"), std=("error_rate", "std"), seeds=("seed", "nunique"),
              errors=("unit_errors", "mean"),
              errors_list=("unit_errors", lambda s: "/".join(str(int(v)) for v in s)), words=("units", "first"),
              lo=("ci95_lo", "mean"), hi=("ci95_hi", "mean"), size=("size_mb", "first"))
         .reset_index())
    g["delta"] = g.wer - float(fp32.error_rate)
    order = {"none": 0, "synthetic": 1, "random": 2, "real": 3}
    g = g.sort_values(["w_bits", "calibration", "wer"], key=lambda s: s.map(order) if s.name == "calibration" else
                      (-s if s.name == "w_bits" else s))
    out.append(f"| W/A | calibration | variant | {name} % mean ± std | Δ vs FP32 | seeds | errors (per seed) / {unit} "
               "| 95% CI (one run) | size MiB |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in g.itertuples():
        std = f" ± {r.std:.2f}" if r.seeds > 1 else ""
        out.append(f"| {r.w_bits}/{r.a_bits} | {r.calibration} | {r.variant} | {r.wer:.2f}{std} | {r.delta:+.2f} | "
                   f"{r.seeds} | {r.errors_list} / {int(r.words)} | {r.lo:.1f}-{r.hi:.1f} | {r.size:.2f} |")
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


def main(paths: list[str]) -> int:
    print("\n".join(summary_lines(paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["build/results/grid.csv", "build/results/beyond.csv"]))
