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
import statistics
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

from intasr import paper as published
from intasr.aggregate import rate_text, seed_summary
from intasr.deploy.bench import turns_of
from intasr.selection import on_default_batches, recipe_label
from intasr.tables import load_frame, summary_lines, synthetic_vs_random, variant

ORDER = {"none": 0, "synthetic": 1, "random": 2, "real": 3}


def _frame(path: Path) -> pd.DataFrame:
    df = load_frame(pd.read_csv(path))
    df["variant"] = df.apply(variant, axis=1)
    return df


def _short(value, n: int = 8) -> str:
    text = str(value)
    return text[:n] if text not in ("unknown", "nan", "-") else "unknown"


def provenance_line(df: pd.DataFrame, path: Path) -> str:
    """Where a table's rows come from: file, model file hashes, evaluation set, commits."""
    rel = path.relative_to(ROOT) if path.is_absolute() and ROOT in path.parents else path
    units = "phonemes" if str(df["metric"].iloc[0]) == "per" else "words"
    n_utts, n_units = int(df["utterances"].iloc[0]), int(df["units"].iloc[0])
    known = df[df["model_sha256"].map(_short) != "unknown"]
    parts = []
    if len(known):
        models = sorted({_short(v) for v in known["model_sha256"]})
        evals = sorted({_short(v) for v in known["eval_sha256"]})
        commits = sorted({_short(v, 7) for v in known["code_commit"]})
        parts.append(f"{len(known)} on model file sha256 `{'`, `'.join(models)}...`, evaluation set "
                     f"`{'`, `'.join(evals)}...`, commit `{'`, `'.join(commits)}`")
    if len(known) < len(df):
        parts.append(f"{len(df) - len(known)} written before the provenance columns existed (model file and "
                     "commit not recorded)")
    return (f"Rows: `{rel}` ({len(df)} rows; {n_utts} utterances, {n_units} {units}): {'; '.join(parts)}. "
            f"Written by `tools/readme_results.py`.")


def _group(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The runs of each setting over seeds (``aggregate.seed_summary``), groups in order of appearance."""
    return seed_summary(df, keys, more={"units": "first"})


def _rate(r, bold: bool = False) -> str:
    text = rate_text(r.rate, r.std, r.seeds)
    return f"**{text}**" if bold else text


def _paper_test_other(model: str) -> pd.DataFrame:
    """The paper's test-other rows of one model (Table 2 repeats Table 1's: once each)."""
    return published.test_other(published.paper_results(ROOT / "data" / "paper_results.csv"), model)


def _fp32(df: pd.DataFrame):
    return df[df.w_bits == 32].iloc[0]


def table1(path: Path) -> list[str]:
    """Table 1 / Table 2: the paper's method per W/A x calibration, next to the paper's gaps."""
    df = _frame(path)
    df = df[df.variant == "paper's method"]
    fp32 = _fp32(df)
    paper = _paper_test_other("QuartzNet15x5")
    paper_fp32 = float(paper[paper.method == "baseline"].wer.iloc[0])
    g = _group(df, ["w_bits", "a_bits", "calibration"])
    g = g.sort_values(["w_bits", "calibration"], ascending=[False, True],
                      key=lambda s: s.map(ORDER) if s.name == "calibration" else s)
    units = int(fp32.units)
    out = [f"| W/A | calibration | WER % mean ± std (errors per seed / {units}) | Δ vs FP32 | "
           "paper Δ (full test-other) |", "|---|---|---|---|---|"]
    for r in g.itertuples():
        if r.w_bits == 32:
            out.append(f"| 32/32 | - | {r.rate:.2f} ({r.per_seed}), CI {r.ci95_lo:.1f}-{r.ci95_hi:.1f} | | ({paper_fp32:.2f}) |")
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


def _synthetic_vs_random(df: pd.DataFrame, how: str = "") -> str:
    parts = [f"W{w}A{a} {sum(int(syn < ran) for syn, ran in pairs)} of {len(pairs)}"
             for w, a, pairs in synthetic_vs_random(df, sort=False)]
    return (f"Seeds in which synthetic calibration had fewer errors than random (same seed{', ' + how if how else ''}): "
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
                   f"{r.rate - float(fp32.error_rate):+.2f} | {r.size_mb:.2f} |")
    out += ["", f"FP32: {float(fp32.error_rate):.2f} ({int(fp32.unit_errors)} / {int(fp32.units)} words). "
            + provenance_line(df, path)]
    return out


def conformer(path: Path) -> list[str]:
    """The hama Conformer-CTC grid: PER per W/A x calibration x non-linearities."""
    df = _frame(path)
    fp32 = _fp32(df)
    df["weights"] = df.variant.where(df.variant.str.startswith("`"), "paper's method")
    g = _group(df, ["w_bits", "a_bits", "weights", "calibration", "nonlinear"])
    g = g.sort_values(["w_bits", "weights", "calibration", "nonlinear"], ascending=[False, False, True, False],
                      key=lambda s: s.map(ORDER) if s.name == "calibration" else s)
    units = int(fp32.units)
    out = [f"| W/A | weights | calibration | non-linearities | PER % mean ± std | Δ vs FP32 | errors per seed / {units} "
           "| size MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in g.itertuples():
        if r.w_bits == 32:
            out.append(f"| 32/32 | float | - | float | {r.rate:.2f} | | {r.per_seed} | {r.size_mb:.2f} |")
            continue
        nl = "integer" if r.nonlinear == "integer" else "float (simulated quantization)"
        bold = r.calibration == "synthetic" and r.nonlinear == "integer"
        delta = f"{r.rate - float(fp32.error_rate):+.2f}"
        out.append(f"| {r.w_bits}/{r.a_bits} | {r.weights} | {r.calibration} | {nl} | {_rate(r, bold)} | "
                   f"{'**' + delta + '**' if bold else delta} | {r.per_seed} | {r.size_mb:.2f} |")
    paper = _paper_test_other("Conformer-Large").set_index(["w_bits", "a_bits"]).wer
    gaps = ", ".join(f"W{w}A{a} {paper[(w, a)] - paper[(32, 32)]:+.2f} WER"
                     for w, a in paper.index if w < 32)
    integer = df[df.nonlinear == "integer"]
    methods = [m for m in integer.weights.drop_duplicates() if m != "paper's method"]
    lines = [_synthetic_vs_random(integer[integer.weights == "paper's method"])]
    lines += [_synthetic_vs_random(integer[(integer.weights == m) | (integer.w_bits == 32)], f"with the {m}")
              for m in methods]
    out += ["", " ".join(x for x in lines if x) + f" The paper's Conformer-Large (test-other, "
            f"`data/paper_results.csv`): {gaps} over its FP32 {paper[(32, 32)]:.2f}. " + provenance_line(df, path)]
    return out


def summary(*paths: Path) -> list[str]:
    return summary_lines([str(p) for p in paths])


# --------------------------------------------------------------------------- prose blocks (JSON / CSV)

def _json(rel: str) -> dict:
    import json

    return json.loads((ROOT / rel).read_text())


def _load(before, after=None) -> str:
    """The 1-minute load average around a run (before and after), as a range."""
    values = [before[0]] + ([after[0]] if after is not None else [])
    lo, hi = min(values), max(values)
    return f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}"


def latency() -> list[str]:
    t1 = _json("benchmarks/results/bench_quartznet15x5_t1.json")
    t2 = _json("benchmarks/results/bench_quartznet15x5_t2.json")
    ex = _json("benchmarks/results/exactness_test_other.json")
    runs = {k: v for k, v in ex["runtimes"].items() if "logits" in v}   # the integer runtimes (QDQ: argmax only)
    logits = {v["logits"] for v in runs.values()}
    differ = sum(v["differ"] for v in runs.values())
    return [f"`intasr bench --model {t1['model_path']} --quantized {t1['quantized_path']} --seconds "
            f"{t1['seconds']:.0f} --threads 1 --repeats {t1['repeats']}` "
            f"(`benchmarks/results/bench_quartznet15x5_t1.json`, an earlier run on an AVX-512 VNNI CPU, load average "
            f"{_load(t1['loadavg_before'], t1['loadavg_after'])}): "
            f"integer-only INT8 (`{t1['int8_integer_only_runtime']}`: `torch._int_mm` pointwise + our fused C "
            f"depthwise and requantization kernels) **{t1['int8_integer_only_ms']:.0f} ms vs "
            f"{t1['fp32_ms']:.0f} ms for the fastest FP32 runtime (`{t1['fp32_runtime']}`): "
            f"{t1['speedup_integer_only']:.2f}x**; with `--threads 2` (`_t2.json`): "
            f"{t2['int8_integer_only_ms']:.0f} vs {t2['fp32_ms']:.0f} ms, **{t2['speedup_integer_only']:.2f}x**. "
            f"{', '.join(f'`{k}`' for k in runs)} are bit-exact against the integer reference on the "
            f"{ex['utterances']} test-other utterances: {differ} of {next(iter(logits)):,} logits differ "
            f"(`benchmarks/check_exact.py`, `benchmarks/results/exactness_test_other.json`)."]


def _fig2_vs(path: Path):
    fig = pd.read_csv(path)
    out = {}
    for th, part in fig.groupby("threads"):
        c = part[part.runtime == "c-int8"].set_index("model")
        peer = part[part.runtime == "onnxruntime-static-int8"].set_index("model")
        models = list(c.index)
        out[int(th)] = (models, [float(c.loc[m, "speedup_vs_best_fp32"]) for m in models],
                        [float(peer.loc[m, "latency_ms"] / c.loc[m, "latency_ms"]) for m in models], c)
    return out


def _sizes(models) -> str:
    return " / ".join(m.replace("QuartzNet-", "") for m in models)


CPU_KINDS = {"avx2": "**On a CPU without VNNI** ({cpu}, AVX2; the `avx2` kernels)",
             "avx512-vnni": "**On an AVX-512 VNNI CPU, rerun** ({cpu}, AVX-512 with VNNI; the `avx512-vnni` kernels)"}


def c_runtime_per_cpu() -> list[str]:
    """The C runtime per kind of CPU it was measured on (issues 25, 26): the real QuartzNet-15x5 and Fig. 2,
    from benchmarks/fig2_latency_<family>.csv and bench_c_quartznet15x5_<family>_t{1,2}.json."""
    lines = []
    for family, title in CPU_KINDS.items():
        f = ROOT / "benchmarks" / f"fig2_latency_{family}.csv"
        if not f.is_file():
            continue
        t = {th: _json(f"benchmarks/results/bench_c_quartznet15x5_{family}_t{th}.json") for th in (1, 2)}
        fig = _fig2_vs(f)
        t1 = t[1]
        parts = []
        for th, (models, vs_fp, vs_peer, c) in fig.items():
            parts.append(f"{th} thread{'s' if th > 1 else ''}: C " + " / ".join(f"{v:.2f}x" for v in vs_fp)
                         + " the fastest FP32 and " + " / ".join(f"**{v:.2f}x**" for v in vs_peer)
                         + f" onnxruntime's static int8 ({turns_of(c)} turns, load average "
                         + f"{_load([c.loadavg_before.min()], [c.loadavg_after.max()])})")
        exact = t1["runtimes"].get("onnxruntime-int8", {})
        lines.append(
            title.format(cpu=t1['machine'].get('cpu_model')) + f", real "
            f"QuartzNet-15x5 W8A8 (`{t1['quantized_path']}`), {t1['input']}, every runtime in one "
            f"`intasr bench --seconds 10 --repeats {t1['repeats']}` run, {turns_of(t1)} turns "
            f"(`benchmarks/results/bench_c_quartznet15x5_{family}_t{{1,2}}.json`): 1 thread, C "
            f"**{t1['c_int8_ms']:.0f} ms** vs the fastest FP32 {t1['fp32_ms']:.0f} ms (`{t1['fp32_runtime']}`, "
            f"**{t1['c_vs_fp32']:.2f}x**) and onnxruntime's static int8 model {t1['peer_ms']:.0f} ms "
            f"(**{t1['c_vs_peer']:.2f}x**, target 1.15x); 2 threads: {t[2]['c_int8_ms']:.0f} ms, "
            f"**{t[2]['c_vs_fp32']:.2f}x** and **{t[2]['c_vs_peer']:.2f}x** (load average "
            f"{_load(t1['loadavg_before'], t1['loadavg_after'])} / {_load(t[2]['loadavg_before'], t[2]['loadavg_after'])}"
            f"). Fig. 2 on this CPU (`benchmarks/fig2_latency_{family}.csv`, random-weight models, "
            f"{_sizes(fig[1][0])}): " + "; ".join(parts) + ". "
            + ("onnxruntime's own integer graph of our program is not exact on this CPU (no VNNI: int16 "
               "saturation) and is left out of these runs with that reason." if "median_ms" not in exact else
               f"onnxruntime's own integer graph of our program (exact on this CPU) takes {exact['median_ms']:.0f} ms "
               "at 1 thread."))
    return lines


def c_runtime() -> list[str]:
    lines = c_runtime_per_cpu()
    chk = _json("benchmarks/results/c_runtime_test_other.json")
    t1 = _json("benchmarks/results/bench_c_quartznet15x5_t1.json")
    t2 = _json("benchmarks/results/bench_c_quartznet15x5_t2.json")
    models, vs_fp, vs_peer, c = _fig2_vs(ROOT / "benchmarks" / "fig2_latency.csv")[1]
    slower = [m.replace("QuartzNet-", "") for m, r in zip(models, vs_peer) if r < 1]
    w = chk["wer_c_runtime"]
    same = chk["wer_forward_int"]["word_errors"] == w["word_errors"]
    lines.append(
        f"Its CLI gives `forward_int`'s tokens on {chk['tokens_equal']}/{chk['utterances']} test-other "
        f"utterances, {chk['logits_differ']} of {chk['logits']:,} logits differ, WER {w['wer']:.2f}% "
        f"({w['word_errors']}/{w['words']}){' for both' if same else ''} (`benchmarks/check_c_runtime.py`, "
        f"`benchmarks/results/c_runtime_test_other.json`, kernels `{chk.get('kernels')}`). **The earlier run on "
        "an AVX-512 VNNI CPU** (the code of that time, before the per-CPU kernels; "
        + ("rerun on another VNNI CPU above" if (ROOT / "benchmarks" / "fig2_latency_avx512-vnni.csv").is_file()
           else "not rerun since: no VNNI CPU was available") + "): real QuartzNet-15x5, 10 s, `benchmarks/results/bench_c_quartznet15x5_t{1,2}.json`, "
        f"**machine shared, load average {_load(t1['loadavg_before'], t1['loadavg_after'])} / "
        f"{_load(t2['loadavg_before'], t2['loadavg_after'])} on 2 cores**: 1 thread, C {t1['c_int8_ms']:.0f} ms vs "
        f"the fastest FP32 {t1['fp32_ms']:.0f} ms (**{t1['c_vs_fp32']:.2f}x**) and onnxruntime's static int8 "
        f"{t1['peer_ms']:.0f} ms (**{t1['c_vs_peer']:.2f}x**); 2 threads: **{t2['c_vs_fp32']:.2f}x** and "
        f"**{t2['c_vs_peer']:.2f}x**. Fig. 2 there (`benchmarks/fig2_latency.csv`, {int(c.repeats.iloc[0])} runs, "
        f"load average {_load([c.loadavg_before.min()], [c.loadavg_after.max()])}): C "
        + " / ".join(f"{v:.2f}x" for v in vs_fp) + f" faster than FP32 for {_sizes(models)}, and "
        + " / ".join(f"{v:.2f}x" for v in vs_peer) + " against onnxruntime's static int8"
        + (f" (slower than it on {', '.join(slower)})." if slower else "."))
    return lines


def _grid_walls(runs: list[dict]) -> tuple[dict, dict]:
    """Per worker count: the median wall time (s), and how the README says it ("72.6 s", or
    "72.6 s, the median of 3 interleaved runs: 70.1-96.4 s")."""
    by: dict = {}
    for r in runs:
        by.setdefault(r["workers"], []).append(r["wall_seconds"])
    med = {w: float(statistics.median(v)) for w, v in by.items()}
    said = {w: f"{med[w]:.1f} s" + (f", the median of {len(v)} interleaved runs: {min(v):.1f}-{max(v):.1f} s"
                                     if len(v) > 1 else "") for w, v in by.items()}
    return med, said


def dask() -> list[str]:
    fix = _json("results/dask_grid_bench_malloc_fix.json")
    old = _json("results/dask_grid_bench.json")
    cost = _json("results/paper_profile_cost.json")
    wall = {r["workers"]: r["wall_seconds"] for r in fix["runs"]}
    wall_old = {r["workers"]: r["wall_seconds"] for r in old["runs"]}
    lines = []
    for fam, where in (("avx2", "an AVX2 CPU without VNNI (Zen 3)"), ("avx512-vnni", "an AVX-512 VNNI CPU (Zen 4)")):
        if not (ROOT / "results" / f"dask_grid_c_{fam}.json").is_file():
            continue
        c = _json(f"results/dask_grid_c_{fam}.json")
        both = _json(f"results/dask_grid_engines_{fam}.json")
        med, walls = _grid_walls(c["runs"])
        loads = [r["loadavg_before"][0] for r in c["runs"]] + [r["loadavg_after"][0] for r in c["runs"]]
        cc = _json(f"results/paper_profile_cost_c_{fam}.json")
        torch_run = next(r for r in both["runs"] if r["runtime"] == "torch")
        lines.append(
            f"**On the C runtime** (the default engine now; each row names it in its `engine` column), the same "
            f"grid on {where}: `--workers 1` **{walls[1]}**, `--workers 2` "
            f"**{walls[2]}** (`results/dask_grid_c_{fam}.json`, load average "
            f"{_load([min(loads)], [max(loads)])}), rows "
            f"**{'identical' if c['rows_identical'] else 'DIFFERENT'}** to the torch-evaluated run "
            f"({torch_run['wall_seconds']:.1f} s with `--workers 1` there, `results/dask_grid_engines_{fam}.json`"
            + (": PyTorch's int8 GEMM has no fast kernel without VNNI" if fam == "avx2" else "")
            + "".join(f"; the C run of that report: {r['wall_seconds']:.1f} s" for r in both["runs"]
                      if r["runtime"] == "c" and r["workers"] == 1) + "): "
            f"{torch_run['wall_seconds'] / med[1]:.1f}x and "
            f"{torch_run['wall_seconds'] / med[2]:.1f}x faster on the same machine, and "
            f"**{wall[1] / med[1]:.2f}x** / {wall[2] / med[2]:.2f}x the earlier "
            f"{wall[1]:.1f} s / {wall[2]:.1f} s below (the same worker counts, another machine; target 3x). What remains is float work the integer engine "
            "does not touch: the synthetic batches (Adam through the float model) and the FP32 row. At these rates "
            f"`--profile paper` costs ~{cc['total_hours']:.0f} task-hours for one model, "
            f"{cc['synthesis_hours']:.0f} of them synthesis (`results/paper_profile_cost_c_{fam}.json`, "
            f"`tools/paper_cost.py --bench results/dask_grid_c_{fam}.json --runtime c --out "
            f"results/paper_profile_cost_c_{fam}.json`).")
    if lines:
        lines[-1] += " Earlier runs:"
    lines.append(
        f"The 2 x 2 x 2 grid (`{fix['grid']}`, QuartzNet-15x5) gives "
        f"**{'identical' if fix['rows_identical'] else 'DIFFERENT'} rows** ({fix['rows']}) with "
        f"`--workers 1` and `--workers 2`, in **{wall[1]:.1f} s and {wall[2]:.1f} s** on a shared 2-core "
        "AVX-512 VNNI machine, torch engine (`results/dask_grid_bench_malloc_fix.json`; before the workers' malloc "
        f"setting was fixed, 2 workers took {wall_old[2]:.1f} s against {wall_old[1]:.1f} s: "
        "`results/dask_grid_bench.json`, `results/README.md`). `--profile paper` holds the paper's whole protocol "
        f"(~{cost['total_hours']:.0f} task-hours for one model at that machine's torch-engine rates, "
        "`results/paper_profile_cost.json`): a cluster job.")
    return lines


def measured_more() -> list[str]:
    jc = pd.read_csv(ROOT / "results" / "jasper_check.csv").set_index(["model", "w_bits"])
    ops = pd.read_csv(ROOT / "results" / "op_counts.csv").set_index(["model", "w_bits"])
    sp = pd.read_csv(ROOT / "results" / "synth_speed.csv").iloc[0]
    j8, j6 = jc.loc[("JasperDR-10x5", 8)], jc.loc[("JasperDR-10x5", 6)]
    q8, q6 = jc.loc[("QuartzNet-15x5", 8)], jc.loc[("QuartzNet-15x5", 6)]
    ok = all(bool(r.float_free) and bool(r.backends_bit_exact) for r in (j8, j6))
    qn32, qn8 = ops.loc[("QuartzNet15x5", 32)], ops.loc[("QuartzNet15x5", 8)]
    jd = ops.loc["JasperDR10x5"]
    jasper_bops = float(jd.bops_rel_err.abs().max())
    return [
        "- **JasperDR-10x5** (`results/jasper_check.csv`, written by `.venv/bin/python tools/jasper_check.py "
        "--eval-utts 2 --qn-calib-utts 16`; NeMo-built random weights, BN statistics from 16 train-clean-100 "
        f"utterances, layer by layer): {'float-free and bit-exact in every backend' if ok else 'NOT float-free/bit-exact'}"
        f" at W8A8 and W6A8; integer logits vs float on {int(j8.eval_frames)} output frames: relative L2 "
        f"{j8.rel_l2:.2f} (W8A8) / {j6.rel_l2:.2f} (W6A8), frame argmax agreement {100 * j8.argmax_agree:.1f}% / "
        f"{100 * j6.argmax_agree:.1f}% (QuartzNet-15x5 real weights: {q8.rel_l2:.2f} / {q6.rel_l2:.2f}, "
        f"{100 * q8.argmax_agree:.1f}% / {100 * q6.argmax_agree:.1f}%). Batch check: "
        f"{'passes' if bool(j8.batch_invariant) else 'fails end to end'}"
        + ("" if bool(j8.batch_invariant) else ": the float mel front end differs in the last bits alone vs "
           "batched, an input code flips, and the random network amplifies it; integer logits from the same "
           "integer input are identical") + ".",
        f"- **Size / BOPs** (`results/op_counts.csv`, written by `python -m intasr.experiments`): QuartzNet-15x5 "
        f"{qn32.size_mb:.2f} MiB / {qn32.bops_t:.2f} TBOPs at 32/32, {qn8.size_mb:.2f} / {qn8.bops_t:.3f} at 8/8 "
        f"(paper {qn32.paper_size_mb:.2f} / {qn32.paper_bops_t:.2f} and {qn8.paper_size_mb:.2f} / "
        f"{qn8.paper_bops_t:.2f}); JasperDR BOPs match the paper to {100 * jasper_bops:.1f}%. The paper's "
        f"QuartzNet numbers are not mutually consistent ({qn32.paper_bops_t:.2f}/{qn8.paper_bops_t:.2f} is not 16).",
        "- **Synthetic data** (`intasr synth`): the fast path (frozen copy, transposed-conv depthwise, stop at "
        f"the last BN) is {sp.speedup_median:.1f}x faster per Adam iteration ({sp.straightforward_s_per_it:.1f} -> "
        f"{sp.fast_s_per_it:.1f} s median at B={int(sp.batch_size)}, T={int(sp.frames)}, {int(sp.torch_threads)} "
        f"thread, on this 2-core machine at load average ~{sp.loadavg_1min_before:.0f}: `results/synth_speed.csv`, "
        f"written by `tools/bench_synth.py --frames {int(sp.frames)} --iterations {int(sp.iterations)} --rounds "
        f"{int(sp.rounds)} --threads {int(sp.torch_threads)}`)."]


def _protocol_runs(pattern: str, exact: bool, how) -> list[str]:
    """One sentence per benchmarks/<pattern> CSV of run_conformer_bench.py: the C runtime's latency and
    speed-ups per model and thread count (``exact``: and whether it was bit-exact); `how(c_rows, name)`: the
    sentence's lead (the run's protocol and command; name: the CSV's file name)."""
    lines = []
    for f in sorted((ROOT / "benchmarks").glob(pattern)):
        df = pd.read_csv(f)
        c = df[df.runtime == "c-int8"]
        runs = [f"{m}, {th} thread{'s' if th > 1 else ''}: {r.latency_ms:.1f} ms, "
                f"**{r.speedup_vs_fastest_fp32:.2f}x** the fastest FP32 ({r.fastest_fp32} "
                f"{r.latency_ms * r.speedup_vs_fastest_fp32:.1f} ms) and **{r.speedup_vs_dynamic_int8:.2f}x** "
                f"onnxruntime dynamic int8" + (f", {'bit-exact' if r.bit_exact else 'NOT bit-exact'}" if exact else "")
                for (m, th), r in c.set_index(["model", "threads"]).iterrows()]
        lines.append(how(c, f.name) + f", {turns_of(df)} turns, load average {df.loadavg_before.min():.1f}-"
                     f"{df.loadavg_after.max():.1f}): " + "; ".join(runs) + ".")
    return lines


def conformer_c() -> list[str]:
    """The Conformer on the C runtime: latency against its peers per kind of CPU, exactness."""
    lines = []
    for f in sorted((ROOT / "benchmarks").glob("conformer_latency_*.csv")):
        df = pd.read_csv(f)
        c = df[df.runtime == "c-int8"]
        r0 = c.iloc[0]
        runs = []
        for (m, th), r in c.set_index(["model", "threads"]).iterrows():
            runs.append(f"{m}, {th} thread{'s' if th > 1 else ''}: **{r.latency_ms:.1f} ms**, "
                        f"**{r.speedup_vs_fastest_fp32:.2f}x** the fastest FP32 (`{r.fastest_fp32}`) and "
                        f"**{r.speedup_vs_dynamic_int8:.2f}x** onnxruntime dynamic int8, "
                        f"{'bit-exact' if r.bit_exact else 'NOT bit-exact'}, +{r.added_rss_mib:.0f} MiB")
        mem = df[(df.model == "hama") & (df.threads == 1)].set_index("runtime").added_rss_mib
        lines.append(
            f"**The Conformer in the C runtime** ({r0.cpu}, `{r0.kernel_family}` kernels; "
            f"`.venv/bin/python benchmarks/run_conformer_bench.py`, one `intasr bench --seconds 10 --repeats "
            f"{int(r0.repeats)}` run per model and thread count, 10 s of test-other speech, `{f.name}` and "
            f"`benchmarks/results/conformer_*_{r0.kernel_family}_t*.json`, {turns_of(df)} turns, load average "
            f"{df.loadavg_before.min():.1f}-{df.loadavg_after.max():.1f}): " + "; ".join(runs)
            + ". Resident memory each runtime adds (hama, 1 thread): "
            + ", ".join(f"{k} +{v:.0f} MiB" for k, v in mem.items() if pd.notna(v)) + ".")
    lines += _protocol_runs("conformer_alone_*.csv", exact=False, how=lambda c, name: (
        "Each runtime alone, in a process of its own one after the other (`.venv/bin/python "
        f"benchmarks/run_conformer_bench.py --alone`, `{name}`, {int(c.repeats.iloc[0])} runs each"))
    lines += _protocol_runs("conformer_isolated_*.csv", exact=True, how=lambda c, name: (
        "Interleaved, each runtime in a worker process of its own (`.venv/bin/python "
        "benchmarks/run_conformer_bench.py --isolate`: `intasr bench --isolate`, rounds interleaved as above, no "
        f"thread pool of one runtime beside another's; `{name}`, {int(c.repeats.iloc[0])} rounds"))
    for chk in sorted((ROOT / "benchmarks" / "results").glob("c_runtime_conformer_test_other*.json")):
        name = f"benchmarks/results/{chk.name}"
        cc = _json(name)
        p = cc["wer_c_runtime"]
        lines.append(
            f"The hama Conformer W8A8 zero-shot (`{cc['quantized']}`) on the C runtime's CLI: tokens equal to "
            f"`forward_int`'s on {cc['tokens_equal']}/{cc['utterances']} test-other utterances, "
            f"{cc['logits_differ']} of {cc['logits']:,} logits differ, PER {p['per']:.2f}% "
            f"({p['phoneme_errors']}/{p['phonemes']}) (`benchmarks/check_c_runtime.py --quantized "
            f"{cc['quantized']} --json {name}`, kernels `{cc['kernels']}`).")
    return lines


def conformer_latency() -> list[str]:
    lines = conformer_c()
    b = _json("benchmarks/results/bench_conformer_hama_t1.json")
    r = b["runtimes"]
    nemo = _json("results/conformer_nemo_check.json")["models"]
    small, large = nemo["conformer_ctc_small"]["bits"], nemo["conformer_ctc_large"]["bits"]
    lines.append(
        f"Before the C runtime lowered the Conformer (`benchmarks/results/bench_conformer_hama_t1.json`, an "
        f"earlier AVX-512 VNNI machine): torch FP32 {b['fp32_ms']:.1f} ms, integer-only "
        f"{r['torch+native-int8']['median_ms']:.1f} ms (torch runner) / {r['onnxruntime-int8']['median_ms']:.1f} ms "
        f"(onnxruntime integer graph): {b['int8_integer_only_ms'] / b['fp32_ms']:.1f}x slower than float. The "
        "NeMo-architecture Conformer (Conv2d subsampling, relative-position attention) converts and verifies "
        "too; on random weights its integer logits follow the float ones less well "
        "(`results/conformer_nemo_check.json`, `tools/conformer_nemo_check.py`): W8A8 relative L2 "
        f"{small['W8A8']['pooled']['rel_l2']:.2f} (small) / {large['W8A8']['pooled']['rel_l2']:.2f} (large), "
        f"{small['W8A8 probs 16']['pooled']['rel_l2']:.2f} / {large['W8A8 probs 16']['pooled']['rel_l2']:.2f} "
        "with 16-bit attention probabilities (`prob_bits=16`).")
    return lines


def verify_reports() -> list[str]:
    """One row per `intasr verify --json` report under results/verify/."""
    import json

    out = ["| report (`results/verify/`) | verdict | ops recorded / float ops | backends bit-exact (run, skipped) "
           "| alone = in a padded batch | int64-accumulator layers | model sha256 (file, or state dict) "
           "| recipe, calibration s |", "|---|---|---|---|---|---|---|---|"]
    for path in sorted((ROOT / "results" / "verify").glob("*.json")):
        d = json.loads(path.read_text())
        ff, be, bi = d["float_free"], d["bit_exact"], d["batch_invariance"]
        prov = d.get("provenance", {})
        sha = _short(prov.get("model_sha256", "unknown"))
        model_id = "unknown" if sha == "unknown" else f"`{sha}...`"
        if sha == "unknown" and prov.get("model_state_sha256"):   # a model built in memory, no file
            model_id = f"state dict `{_short(prov['model_state_sha256'])}...`"
        out.append(f"| `{path.name}` | {'passed' if d['passed'] else '**failed**'} | {ff['ops_recorded']:,} / "
                   f"{len(ff['float_ops'])} | {'yes' if be['passed'] else '**no**'} ({be['backends_run']}, "
                   f"{be['backends_skipped']}) | {'yes' if bi['passed'] else '**no**'} "
                   f"({bi['utterances']} utterances) | {', '.join(d['int64_accumulator_layers']) or '-'} | "
                   f"{model_id} | {_made(d.get('quantization'))} |")
    return out


def _made(info: dict | None) -> str:
    """How a verified model was made, from the report's `quantization` record (reports from before
    it: '-'): its recipe, edge widths and equalized pairs, and `intasr quantize`'s calibration time."""
    if not info:
        return "-"
    parts = [f"`{info['recipe']}`" if info.get("recipe") else ""]
    if info.get("edge_bits"):
        where = " and ".join(info["edge_parts"]) if info.get("edge_parts") else "edges"   # a Conformer's parts
        parts.append(f"{where} at {info['edge_bits']} bits")
    if info.get("equalized"):
        parts.append(f"{info['equalized']} pairs equalized")
    if info.get("weight_group"):
        parts.append(f"a multiplier per {info['weight_group']} weights")
    if info.get("calibration_seconds") is not None:
        parts.append(f"{float(info['calibration_seconds']):.0f} s")
    return ", ".join(p for p in parts if p) or "-"


def paper_checks(path: Path) -> list[str]:
    """Issue 4's done-when checks (synthetic W8A8 <= +0.5, W6A8 <= +1.5, synthetic better than random)."""
    df = _frame(path)
    df = df[df.variant == "paper's method"]
    fp32 = float(_fp32(df).error_rate)
    mean = df.groupby(["w_bits", "calibration"]).error_rate.mean() - fp32
    paper = _paper_test_other("QuartzNet15x5").set_index(["method", "w_bits"]).wer
    pd_ = {k: paper[k] - paper[("baseline", 32)] for k in paper.index if k[1] < 32}

    def mark(ok: bool) -> str:
        return "✓" if ok else "✗"

    s8, s6, r8, r6 = (mean[(w, c)] for w, c in ((8, "synthetic"), (6, "synthetic"), (8, "random"), (6, "random")))
    line = (f"Done-when checks of issue #4 (paper, test-other: synthetic {pd_[('synthetic', 8)]:+.2f} / "
            f"{pd_[('synthetic', 6)]:+.2f}, random {pd_[('random', 8)]:+.2f} / {pd_[('random', 6)]:+.2f}): "
            f"synthetic W8A8 **{s8:+.2f}** (≤ +0.5 {mark(s8 <= 0.5)}), synthetic W6A8 **{s6:+.2f}** "
            f"(≤ +1.5 {mark(s6 <= 1.5)}), synthetic better than random at both widths (**{s8:+.2f} vs "
            f"{r8:+.2f}** and **{s6:+.2f} vs {r6:+.2f}** {mark(s8 < r8 and s6 < r6)}). "
            + _synthetic_vs_random(df))
    if (8, "real") in mean:
        line += f" Real-data calibration (one calibration set): W8A8 {mean[(8, 'real')]:+.2f}"
        line += f", W6A8 {mean[(6, 'real')]:+.2f}." if (6, "real") in mean else "."
    return [line, "", provenance_line(_frame(path), path)]


def cpu_spread(path: Path) -> list[str]:
    """issue 31: the same recipes and seeds on two kinds of CPU (test-other, word errors per seed)."""
    from intasr.selection import cpu_comparison

    other = pd.concat([pd.read_csv(ROOT / "results" / "beyond_adaround.csv"), pd.read_csv(ROOT / "results" / "grid.csv")],
                      ignore_index=True)
    t = cpu_comparison(other, pd.read_csv(path))
    out = ["| W/A | recipe | seed | word errors, AVX-512 VNNI machine | word errors, AVX2 machine |",
           "|---|---|---|---|---|"]
    for r in t.itertuples():
        out.append(f"| {r.w_bits}/{r.a_bits} | {r.candidate} | {r.seed} | {r.word_errors_a} | {r.word_errors_b} |")
    diff = (t.word_errors_a - t.word_errors_b).abs()
    g = t.groupby(["w_bits", "candidate"])
    spread = lambda col: g[col].agg(lambda v: v.max() - v.min())   # noqa: E731
    fp32 = float(_frame(ROOT / "results" / "grid.csv").query("w_bits == 32").iloc[0].error_rate)
    means = "; ".join(f"{c}: {100 * a / w:.2f}% ({100 * a / w - fp32:+.2f} vs FP32) on the VNNI machine, "
                      f"{100 * b / w:.2f}% ({100 * b / w - fp32:+.2f}) on the AVX2 machine"
                      for (_, c), a, b, w in zip(g.groups, g.word_errors_a.mean(), g.word_errors_b.mean(),
                                                 g.words_a.first()))
    out += ["", f"WER means over the seeds (FP32 {fp32:.2f}%, `results/grid.csv`): {means}.",
            "", f"{int(t.same.sum())} of {len(t)} (recipe, seed) pairs make the same number of word errors on both CPUs; "
            f"the largest difference is {int(diff.max())} words ({100 * diff.max() / t.words_a.iloc[0]:.2f} points), the "
            f"mean {diff.mean():.1f}. Within one CPU the seeds of a recipe span up to {int(spread('word_errors_a').max())} "
            f"(VNNI) and {int(spread('word_errors_b').max())} (AVX2) words. Two things differ between the columns: "
            f"the CPU (the float work of calibration, synthetic batches and learned rounding, sums in an order its "
            f"kernels set, so a seed names another batch there) and the code (commits "
            f"{', '.join(sorted({str(c)[:7] for c in t.code_commit_a}))} against {', '.join(sorted({str(c)[:7] for c in t.code_commit_b}))}); "
            f"the difference bounds what the CPU alone adds, and it is of the order of the seed spread. "
            f"Rows: `results/{path.name}` (`tools/recipe_report_cpu.sh`, kernels "
            f"{', '.join(sorted(set(pd.read_csv(path).kernel_family.astype(str))))}) against `results/beyond_adaround.csv` "
            f"and `results/grid.csv`. Written by `tools/readme_results.py`."]
    return out


def recipes(path: Path) -> list[str]:
    """issue 14's recipes on the grid's default synthetic batches (3 seeds where run)."""
    from intasr.quantize import default_recipe, recipe_of

    df = pd.read_csv(path)
    df = on_default_batches(df).copy()
    df["recipe_label"] = df.apply(recipe_label, axis=1)
    df = df.sort_values("seed", kind="stable")   # errors per seed in seed order, whatever order the runs ended in
    grid = _frame(ROOT / "results" / "grid.csv")
    fp32 = grid[(grid.w_bits == 32) & (grid.model_sha256.isin(set(df.model_sha256)))].iloc[0]
    g = seed_summary(df, ["w_bits", "a_bits", "recipe_label"], rate="wer", errors="word_errors", size="median",
                     more={"calib_seconds": "median"}).sort_values(["w_bits", "rate"], ascending=[True, True])
    out = ["| W/A | recipe | WER % mean ± std (errors per seed) | seeds | Δ vs FP32 | weights MiB | "
           "calibration s (median, as run: cached batches or codes are read, not made) |",
           "|---|---|---|---|---|---|---|"]
    for r in g.itertuples():
        out.append(f"| {r.w_bits}/{r.a_bits} | {r.recipe_label} | {_rate(r)} ({r.per_seed}) | {r.seeds} | "
                   f"{r.rate - float(fp32.error_rate):+.2f} | {r.size_mb:.2f} | {r.calib_seconds:.0f} |")
    notes = []
    for w in sorted(g.w_bits.unique()):
        name = default_recipe(int(w))
        d = df[(df.w_bits == w) & (df.apply(recipe_of, axis=1) == name)]
        if len(d):
            r = seed_summary(d, ["w_bits"], rate="wer", errors="word_errors").iloc[0]
            notes.append(f"`intasr quantize --weight-bits {w}` defaults to `{name}`: "
                         f"{r['rate'] - float(fp32.error_rate):+.2f} over {int(r['seeds'])} seeds")
    out += ["", f"FP32 {float(fp32.error_rate):.2f}% ({int(fp32.unit_errors)} / {int(fp32.units)} words, "
            "`results/grid.csv`). " + "; ".join(notes) + " (each default chosen label-free, without these "
            "transcripts: the selection table below). " + provenance_line(load_frame(df), path)]
    return out


def selection(path: Path, grid_csv: str = "grid.csv", report_csv: str = "beyond_adaround.csv",
              tool: str = "tools/select_recipes.sh") -> list[str]:
    """issue 31 (and 30, the Conformer): each width's recipe chosen label-free (agreement with FP32
    on untranscribed audio), beside its test-other result, which that choice never saw
    (``selection.selection_table``; the paper-method report rows come from the grid)."""
    from intasr.quantize import default_recipe
    from intasr.selection import selection_table

    sel = pd.read_csv(path)
    grid = _frame(ROOT / "results" / grid_csv)
    grid = grid[(grid.nonlinear == "integer") & (grid.variant == "paper's method")]
    grid = grid.assign(wer=grid.error_rate, word_errors=grid.unit_errors)
    fp32 = float(grid[grid.w_bits == 32].iloc[0].error_rate)
    metric, unit = ("PER", "phonemes") if str(grid.metric.iloc[0]) == "per" else ("WER", "words")
    t = selection_table(sel, pd.read_csv(ROOT / "results" / report_csv), grid, fp32)
    out = [f"| W/A | candidate | FP32-agreement {metric} % (errors per seed) [95% CI] | seeds | calibration s (as run: cached batches and codes are read) | size MiB | chosen "
           f"| test-other {metric} % (errors per seed) | Δ vs FP32 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in t.itertuples():
        test = f"{rate_text(r.test_wer, r.test_std, r.test_seeds)} ({r.test_errors})" if r.test_seeds else "not measured"
        delta = f"{r.test_delta:+.2f}" if r.test_seeds else ""
        out.append(f"| {r.w_bits}/{r.a_bits} | {r.candidate} | {r.rate:.2f} ({r.per_seed}) [{r.ci95_lo:.2f}, "
                   f"{r.ci95_hi:.2f}] | {r.seeds} | {r.calib_seconds:.0f} | {r.size_mb:.2f} | {'**yes**' if r.chosen else ''} | "
                   f"{test} | {delta} |")
    notes = []
    for r in t[t.chosen].itertuples():
        default = default_recipe(int(r.w_bits), conformer=str(grid.metric.iloc[0]) == "per")
        notes.append(f"W{r.w_bits}: {r.candidate}" + ("" if r.recipe == default else f" (**not** the default `{default}`)"))
    out += ["", f"Chosen, label-free: {'; '.join(notes)}. Criterion: fewest {unit[:-1]} errors against the float model's "
            f"own transcripts ({int(sel.words.iloc[0])} {unit}) of {int(sel.utterances.iloc[0])} untranscribed "
            f"train-clean-100 utterances, mean over the seeds of the finalists (the best of each width on seed 0, "
            f"then seeds 1 and 2: `{tool}`; `intasr.selection`; a tie goes to the shorter "
            f"calibration); the test-other "
            f"columns (FP32 {fp32:.2f}%, seeds 0-2) are what each candidate gives on transcripts the choice never "
            f"read. " + provenance_line(load_frame(sel), path)]
    return out


# README file -> block name -> function of the results files
def fuzz() -> list[str]:
    """results/fuzz.json (python -m intasr.fuzz run): one row per reader, failures by kind."""
    from intasr.fuzz import FAILURE_KINDS, table

    res = _json("results/fuzz.json")
    rows = table(res)
    kinds = [k.replace("_", " ") for k in FAILURE_KINDS]
    out = ["| reader | inputs | refused | accepted | " + " | ".join(kinds) + " | slowest input (s) | peak / bound |",
           "|---|" + "---|" * (len(kinds) + 5)]
    for r in rows:
        out.append(f"| `{r['reader']}` | {r['inputs']:,} | {r['refused']:,} | {r['accepted']:,} | "
                   + " | ".join(str(r[k]) for k in FAILURE_KINDS)
                   + f" | {r['slowest s']:.2f} (`{r['slowest input']}`) | {r['peak / bound']:.3f} |")
    t = res.get("totals", {})
    state = "finished " + res["finished"] if res.get("finished") else "partial (still running or stopped)"
    out += ["", f"{t.get('inputs', sum(r['inputs'] for r in rows)):,} inputs in all, "
            f"{sum(t.get(k, 0) for k in FAILURE_KINDS)} failures; "
            f"{' and '.join(f'`{c}`' for c in res.get('commands') or [res.get('command')])}, one thread, "
            f"{res['machine']['cores']}-core {res['machine']['cpu']}, started {res['started']}, {state}. "
            f"Hang: over {res['hang_seconds']:.0f} s wall clock; peak / bound: the largest measured allocation over "
            f"the reader's bound (A x input bytes + B: `intasr/fuzz/readers.py`). Written by "
            f"`tools/readme_results.py`."]
    proof = ROOT / "results" / "accumulator_proof.json"
    if proof.is_file():
        pr = _json("results/accumulator_proof.json")
        models = pr["models"]
        layers = [r for m in models.values() for r in m["conv1d"]]
        out += ["", f"Accumulators under adversarial inputs (`{pr['command']}`): {len(layers)} conv1d layers of "
                f"{', '.join(f'`{m}`' for m in models)}; for each, the worst-case input within the declared range "
                f"(both directions) gives the exact accumulator in the NumPy reference in "
                f"{sum(r['worst_case']['max']['numpy_ref'] == r['worst_case']['max']['exact'] and r['worst_case']['min']['numpy_ref'] == r['worst_case']['min']['exact'] for r in layers)} "
                f"and in the C runtime in {sum(r['c_checked'] and r['ok'] for r in layers)}, reaches the bound proven "
                f"on load in {sum(r['bound_reached'] for r in layers)}, and fits its dtype in "
                f"{sum(r['ok'] for r in layers)}; least headroom {min(r['headroom_bits'] for r in layers):.2f} bits."]
    return out


BLOCKS = {
    "README.md": {
        "table1": lambda: table1(ROOT / "results" / "grid.csv"),
        "beyond": lambda: beyond(ROOT / "results" / "beyond.csv"),
        "conformer": lambda: conformer(ROOT / "results" / "conformer_grid.csv"),
        "latency": latency,
        "c_runtime": c_runtime,
        "dask": dask,
        "conformer_latency": conformer_latency,
        "measured_more": measured_more,
        "verify": verify_reports,
        "recipes": lambda: recipes(ROOT / "results" / "beyond_adaround.csv"),
        "selection": lambda: selection(ROOT / "results" / "recipe_selection.csv"),
        "conformer_selection": lambda: selection(ROOT / "results" / "conformer_recipe_selection.csv",
                                                 "conformer_grid.csv", "conformer_recipes.csv",
                                                 "tools/select_conformer_recipes.sh"),
        "cpu_spread": lambda: cpu_spread(ROOT / "results" / "recipe_report_avx2.csv"),
        "fuzz": fuzz,
    },
    "benchmarks/README.md": {
        "avx2": lambda: c_runtime_per_cpu() + conformer_c(),
    },
    "results/README.md": {
        "summary": lambda: summary(ROOT / "results" / "grid.csv", ROOT / "results" / "beyond.csv"),
        "paper_checks": lambda: paper_checks(ROOT / "results" / "grid.csv"),
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
