"""Committed latency and bit-exactness results, read back as tables and sentences.

The benchmark commands write tidy files (``benchmarks/``): the Fig. 2 CSVs of ``deploy.fig2``
(``fig2_latency*.csv``: one row per model x threads x runtime), the Conformer CSVs of
``benchmarks/run_conformer_bench.py`` (``conformer_latency_*.csv``, interleaved;
``conformer_alone_*.csv``, one process per runtime; ``conformer_isolated_*.csv``, interleaved with a
worker process per runtime), the ``intasr bench --json`` files and the
bit-exactness checks (``benchmarks/results/*.json``). The functions here only read those files and
derive ratios from them; nothing is measured. Every reader takes its folder, so the same code reads
a fresh run under build/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from intasr import paths
from intasr.deploy.bench import turns_of

BENCHMARKS = paths.REPO_ROOT / "benchmarks"
# the kernels column of the earlier Fig. 2 run (benchmarks/fig2_latency.csv), made before the C
# runtime dispatched its kernels per CPU, and of the bench JSON files of that time
EARLIER_KERNELS = "avx512-vnni (earlier code)"


def _rel(path: Path) -> str:
    return paths.display_path(path)


# ---- Fig. 2 (QuartzNet 5x5 / 10x5 / 15x5) -------------------------------------------------------

def fig2_runs(folder=BENCHMARKS) -> dict[str, pd.DataFrame]:
    """{kernel family: its Fig. 2 CSV} for every ``fig2_latency*.csv`` in folder, in file-name order:
    ``fig2_latency_<family>.csv`` carry their family in the ``kernels`` column; a file without that
    column (the earlier AVX-512 VNNI run) gets ``EARLIER_KERNELS``. Each frame gains ``kernels`` and
    ``file`` (the file name)."""
    runs = {}
    for f in sorted(Path(folder).glob("fig2_latency*.csv")):
        df = pd.read_csv(f)
        family = df.kernels.iloc[0] if "kernels" in df else EARLIER_KERNELS
        runs[family] = df.assign(kernels=family, file=f.name)
    return runs


def fig2_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model (in the frame's order) from the rows marked ``best``: the fastest FP32, the
    headline INT8 (``headline``), the fastest integer-only INT8 and their speedups (FP32 median over
    INT8 median); where the model has them, the C runtime (``c-int8``) and onnxruntime's static int8
    peer with the C runtime's speedup over each. Rounded to 2 decimals."""
    best = df[df.best]
    rows = []
    for m, sub in best.groupby("model", sort=False):
        fp = sub[sub.precision == "FP32"].iloc[0]
        i8 = sub[(sub.precision == "INT8") & sub.headline].iloc[0]
        int8 = sub[sub.precision == "INT8"]
        io = int8[int8.integer_only == True].sort_values("latency_ms").iloc[0]  # noqa: E712
        row = {
            "model": m,
            "FP32 ms": fp.latency_ms, "FP32 runtime": fp.runtime,
            "INT8 ms": i8.latency_ms, "INT8 runtime": i8.runtime,
            "speedup": fp.latency_ms / i8.latency_ms,
            "integer-only INT8 ms": io.latency_ms,
            "integer-only speedup": fp.latency_ms / io.latency_ms,
            "FP32 MiB": fp.size_mb, "INT8 MiB": i8.size_mb, "load": fp.loadavg_before,
        }
        every = df[df.model == m].set_index("runtime")
        if "c-int8" in every.index:
            row["C runtime ms"] = every.loc["c-int8"].latency_ms
            row["C vs FP32"] = fp.latency_ms / every.loc["c-int8"].latency_ms
        if "onnxruntime-static-int8" in every.index:
            peer_ms = every.loc["onnxruntime-static-int8"].latency_ms
            row["onnxruntime static int8 ms"] = peer_ms
            if "c-int8" in every.index:
                row["C vs onnxruntime int8"] = peer_ms / every.loc["c-int8"].latency_ms
        rows.append(row)
    return pd.DataFrame(rows).round(2)


def fig2_committed_tables(runs: dict[str, pd.DataFrame]) -> list[tuple[str, pd.DataFrame]]:
    """(Markdown caption, ``fig2_summary``) per run of ``fig2_runs`` and thread count: the kernels,
    file, CPU, interleaved runs per runtime and the range of the 1-minute load average."""
    out = []
    for family, run in runs.items():
        load = run.loadavg_before
        for th, part in run.groupby("threads"):
            out.append((
                f"**Committed run, {family} kernels, {th} thread(s)** (`benchmarks/{run.file.iloc[0]}`,"
                f" {run.cpu.iloc[0]}, {int(part.repeats.iloc[0])} interleaved runs per runtime,"
                f" load {load.min():.1f}-{load.max():.1f}):",
                fig2_summary(part),
            ))
    return out


# ---- intasr bench JSON files -----------------------------------------------------------------

def bench_json_table(folder=BENCHMARKS / "results", pattern: str = "bench_quartznet15x5_t*.json"
                     ) -> tuple[list[str], pd.DataFrame]:
    """Every runtime of every ``intasr bench --json`` file matching pattern (file-name order): one
    row each with its median, IQR, bit-exactness and speedup over the file's fastest FP32 (rounded
    to 2 decimals); and one line per file with the headline FP32 vs integer-only INT8 numbers."""
    rows, lines = [], []
    for f in sorted(Path(folder).glob(pattern)):
        res = json.loads(f.read_text())
        for name, r in res["runtimes"].items():
            rows.append({
                "threads": res["threads"], "runtime": name, "precision": r["precision"],
                "integer_only": r["integer_only"], "median_ms": r["median_ms"],
                "iqr_ms": r["iqr_ms"], "bit_exact": r.get("bit_exact"),
                "speedup_vs_best_fp32": res["fp32_ms"] / r["median_ms"],
            })
        lines.append(
            f"{f.name}: {res['threads']} thread(s), load {res['loadavg_before'][0]:.1f}:"
            f" FP32 {res['fp32_ms']:.0f} ms ({res['fp32_runtime']}) vs integer-only INT8"
            f" {res['int8_integer_only_ms']:.0f} ms ({res['int8_integer_only_runtime']}):"
            f" {res['speedup_integer_only']:.2f}x"
        )
    return lines, pd.DataFrame(rows).round(2)


def c_bench_table(folder=BENCHMARKS / "results", pattern: str = "bench_c_quartznet15x5*_t*.json",
                  vs_fp32_target: float = 3.0, vs_peer_target: float = 1.15) -> pd.DataFrame:
    """The C runtime in every bench JSON matching pattern (file-name order), one row per file: the
    fastest FP32, the peer, ``torch+native-int8`` where timed, the C runtime, its bit-exactness,
    its speedups over FP32 and over the peer and whether each reaches its target (``>=``). Files
    without a ``kernels`` entry get ``EARLIER_KERNELS``. Rounded to 2 decimals; empty when none."""
    rows = []
    for f in sorted(Path(folder).glob(pattern)):
        res = json.loads(f.read_text())
        c = res["runtimes"]["c-int8"]
        rows.append({
            "kernels": c.get("kernels", EARLIER_KERNELS),
            "threads": res["threads"], "load before": res["loadavg_before"][0],
            "FP32 ms (fastest)": res["fp32_ms"], "FP32 runtime": res["fp32_runtime"],
            "onnxruntime static int8 ms": res["peer_ms"],
            "torch+native-int8 ms": res["runtimes"].get("torch+native-int8", {}).get("median_ms"),
            "C runtime ms": res["c_int8_ms"], "C bit-exact": c["bit_exact"],
            "C vs FP32": res["c_vs_fp32"], f"target {vs_fp32_target}x met": res["c_vs_fp32"] >= vs_fp32_target,
            "C vs onnxruntime int8": res["c_vs_peer"],
            f"target {vs_peer_target}x met": res["c_vs_peer"] >= vs_peer_target,
        })
    return pd.DataFrame(rows).round(2)


# ---- bit-exactness checks ------------------------------------------------------------------------

def exactness_report(path) -> tuple[str, pd.DataFrame] | None:
    """``benchmarks/check_exact.py``'s JSON: a caption and one row per runtime; None when absent."""
    path = Path(path)
    if not path.is_file():
        return None
    ex = json.loads(path.read_text())
    caption = (f"Real QuartzNet-15x5 (W8A8), {ex['utterances']} test-other utterances, each "
               f"alone (`{_rel(path)}`):")
    return caption, pd.DataFrame(ex["runtimes"]).T


def c_runtime_sentence(path) -> str | None:
    """``benchmarks/check_c_runtime.py``'s JSON for a word model in one Markdown sentence (token
    sequences equal, logits that differ, WER of both); None when absent."""
    path = Path(path)
    if not path.is_file():
        return None
    cr = json.loads(path.read_text())
    n = cr["utterances"]
    return (f"`{cr['quantized']}`, {n} utterances, kernels `{cr['kernels']}`: token sequences "
            f"equal to forward_int's: **{cr['tokens_equal']}/{n}**; logits that differ: "
            f"**{cr['logits_differ']} of {cr['logits']}**; WER C runtime "
            f"{cr['wer_c_runtime']['wer']:.2f}% vs forward_int {cr['wer_forward_int']['wer']:.2f}%")


def conformer_c_runtime(path) -> tuple[str | None, dict[str, str]]:
    """``benchmarks/check_c_runtime.py``'s JSON for the phoneme Conformer: a Markdown sentence (None
    when the file is absent) and the values the chapter quotes (``conf_c_utts``, ``conf_c_logits``,
    ``conf_c_differ``; "(not measured)" when absent)."""
    path = Path(path)
    if not path.is_file():
        return None, {k: "(not measured)" for k in ("conf_c_utts", "conf_c_logits", "conf_c_differ")}
    cc = json.loads(path.read_text())
    pc, pr = cc["wer_c_runtime"], cc["wer_forward_int"]
    text = (
        f"`{cc['quantized']}`, {cc['utterances']} utterances, kernels `{cc['kernels']}`: token sequences "
        f"equal on {cc['tokens_equal']}/{cc['utterances']}, {cc['logits_differ']} of {cc['logits']:,} logits "
        f"differ; PER {pc['per']:.2f} % ({pc['phoneme_errors']}/{pc['phonemes']} phonemes) with the C runtime, "
        f"{pr['per']:.2f} % with `forward_int`.")
    return text, {"conf_c_utts": f"{cc['tokens_equal']}/{cc['utterances']}",
                  "conf_c_logits": f"{cc['logits']:,}", "conf_c_differ": f"{cc['logits_differ']}"}


# ---- the Conformer against its peers ---------------------------------------------------------------

CONFORMER_ORDER = ("torch-fp32", "onnxruntime-fp32", "onnxruntime-dynamic-int8", "c-int8")
# the chapter's short names of the two benchmarked Conformers
CONFORMER_KEYS = (("hama", "hama"), ("nemo-small", "small"))


def read_csvs(folder, pattern: str, with_file: bool = True) -> pd.DataFrame:
    """Every CSV in folder matching pattern (file-name order), concatenated (with a ``file`` column
    unless with_file is False); an empty frame when none matches."""
    files = sorted(Path(folder).glob(pattern))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_csv(f).assign(file=f.name) if with_file else pd.read_csv(f) for f in files])


def runtime_pivot(lat: pd.DataFrame, values: str = "latency_ms") -> pd.DataFrame:
    """(kernel family, model, threads) x runtime: the first value of each cell."""
    return lat.pivot_table(index=["kernel_family", "model", "threads"], columns="runtime", values=values,
                           aggfunc="first")


def conformer_latency_tables(lat: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The interleaved Conformer runs as text: (latency per runtime, one decimal and " ms", pivoted;
    the C runtime's rows with its speedups over the fastest FP32 and over the dynamic int8 peer, two
    decimals and "x", its bit-exactness, its added memory "+<MiB> MiB" and the load average)."""
    show = lat.assign(
        latency=lat.latency_ms.map("{:.1f} ms".format),
        vs_fp32=lat.speedup_vs_fastest_fp32.map("{:.2f}x".format),
        vs_dyn8=lat.speedup_vs_dynamic_int8.map(lambda v: f"{v:.2f}x" if pd.notna(v) else ""),
        memory=lat.added_rss_mib.map(lambda v: f"+{v:.0f} MiB" if pd.notna(v) else ""),
    )
    c = show[show.runtime == "c-int8"][["kernel_family", "cpu", "model", "threads", "latency", "vs_fp32",
                                        "vs_dyn8", "bit_exact", "memory", "loadavg_before"]]
    return runtime_pivot(show, "latency"), c


def conformer_latency_values(lat: pd.DataFrame) -> dict[str, str]:
    """What the chapter quotes from the one-thread C runtime rows of the first kind of CPU (kernel
    family, in file-name order: ``avx2`` before ``avx512-vnni``): the CPU (``lat_cpu``) and per model
    key of ``CONFORMER_KEYS`` its latency, speedups and the fastest FP32 runtime's name; every other
    kind of CPU in one sentence (``lat_other_cpus``, both thread counts); each names its run's turns
    (``bench.turns_of``). "(not measured)" for every value when lat is empty."""
    names = ["lat_cpu", "lat_other_cpus"] + [f"{k}_{v}" for _, k in CONFORMER_KEYS
                                             for v in ("c_ms", "vs_fp32", "vs_dyn8", "fp32_rt")]
    if not len(lat):
        return {k: "(not measured)" for k in names}
    families = list(dict.fromkeys(lat.kernel_family))
    c = lat[lat.runtime == "c-int8"]
    c1 = c[(c.threads == 1) & (c.kernel_family == families[0])].set_index("model")
    out = {"lat_cpu": f"{c1.cpu.iloc[0]} ({families[0]} kernels, {turns_of(c1)} turns)"}
    for m, key in CONFORMER_KEYS:
        if m in c1.index:
            r = c1.loc[m]
            out.update({f"{key}_c_ms": f"{r.latency_ms:.1f}", f"{key}_vs_fp32": f"{r.speedup_vs_fastest_fp32:.2f}",
                        f"{key}_vs_dyn8": f"{r.speedup_vs_dynamic_int8:.2f}", f"{key}_fp32_rt": r.fastest_fp32})
    others = []
    for fam in families[1:]:
        rows = c[c.kernel_family == fam]
        runs = [f"{r.model}, {r.threads} thread{'s' if r.threads > 1 else ''}: {r.latency_ms:.1f} ms, "
                f"{r.speedup_vs_fastest_fp32:.2f}x the fastest FP32 ({r.fastest_fp32}) and "
                f"{r.speedup_vs_dynamic_int8:.2f}x the dynamic int8 model" for r in rows.itertuples()]
        others.append(f"On {rows.cpu.iloc[0]} ({fam} kernels, {turns_of(rows)} turns): " + "; ".join(runs) + ".")
    out["lat_other_cpus"] = " ".join(others) if others else "No other kind of CPU was measured."
    return out


def plot_conformer_latency(lat: pd.DataFrame):
    """One panel per kind of CPU and model: median latency per runtime (``CONFORMER_ORDER``), one bar per
    thread count."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    panels = list(lat.groupby(["kernel_family", "model"], sort=False))
    families = list(dict.fromkeys(lat.kernel_family))
    fig, axes = plt.subplots(len(families), 2, figsize=(12, 3.8 * len(families)), squeeze=False)
    for (fam, m), part in panels:
        ax = axes[families.index(fam)][[k for k, _ in CONFORMER_KEYS].index(m) if m in dict(CONFORMER_KEYS) else 0]
        sns.barplot(data=part, x="runtime", y="latency_ms", hue="threads", ax=ax,
                    order=[r for r in CONFORMER_ORDER if r in set(part.runtime)])
        ax.set(title=f"{m} ({fam} kernels)", xlabel="", ylabel="ms, median, 10 s input")
        ax.tick_params(axis="x", labelrotation=15, labelsize=8)
    plt.tight_layout()
    return fig
