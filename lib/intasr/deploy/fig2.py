"""Fig. 2 (ours): FP32 vs INT8 latency and model size of QuartzNet 5x5 / 10x5 / 15x5 on this CPU.

Latency does not depend on the weight values, so every model is a random-weight ConvASR of the
NeMo config (``models.config_for``) quantized W8A8 with random calibration inputs (1 batch).
Each model: ``bench.bench`` (10 s input, batch 1, FP32 and INT8 runtimes interleaved in one
process, medians and IQR, INT8 logits checked bit-exact against ``forward_int``).
Sizes: ``experiments.model_size_mb`` (BN folded; FP32 = 32-bit, INT8 = 8-bit weights).
Runtimes include the C runtime (``c-int8``) and onnxruntime's own static int8 model of the float
graph (``onnxruntime-static-int8``, the peer: ``quantize_static`` calibrated on the first
``calibration_limit`` train-clean-100 utterances; the random-weight float models are kept in
build/fig2/ so that the calibrated peer is cached between runs).

A runtime that cannot run exactly on this CPU (``onnxruntime-int8`` without VNNI) is skipped by
``bench``: it has no row, and the reason is printed.

``run`` returns a tidy frame (one row per model x threads x runtime, the columns of
benchmarks/fig2_latency_*.csv); ``plot`` draws it with the paper's statement
(``data/paper_latency.csv``) beside it. ``benchmarks/run_fig2.py`` is the command line.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from intasr import paths
from intasr.calibration import random_mels
from intasr.convert import quantize_model
from intasr.deploy.bench import PEER, bench
from intasr.experiments import model_size_mb
from intasr.models import ConvASR, config_for, load_model, save_model

MODELS = ("quartznet5x5", "quartznet10x5", "quartznet15x5")
LABEL = {"quartznet5x5": "QuartzNet-5x5", "quartznet10x5": "QuartzNet-10x5", "quartznet15x5": "QuartzNet-15x5"}
FIG2_RUNTIMES = ("onnxruntime-fp32", "torch-fp32-fastdw", "onnxruntime-int8", "c-int8", PEER)


def run(models=MODELS, repeats: int = 20, threads=(1,), seconds: float = 10.0, batch: int = 1,
        runtimes=FIG2_RUNTIMES, progress: bool = True, calibration_limit: int = 16, audio=None) -> pd.DataFrame:
    """One ``bench`` per model and thread count. audio: the speech that is the input (default: the
    shared test-other folder where it exists, else random values; 'random' for random values)."""
    if audio is None and paths.librispeech("test-other").is_dir():
        audio = str(paths.librispeech("test-other"))
    audio = None if audio == "random" else audio
    threads = (threads,) if isinstance(threads, int) else tuple(threads)
    rows = []
    for name, th in [(m, t) for m in models for t in threads]:
        t0 = time.time()
        path = paths.build_dir() / "fig2" / f"{name}_random.nemo"
        if not path.is_file():   # seeded: the same weights every run; kept so the peer's calibration is cached
            torch.manual_seed(0)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_model(ConvASR(config_for(name)).eval(), path)
        model = load_model(path).eval()
        qmodel = quantize_model(model, random_mels(1, 2, 200, seed=0))
        peer = {"model_path": str(path), "calibration_data": str(paths.librispeech("train-clean-100")),
                "limit": calibration_limit}
        res = bench(model, qmodel, seconds=seconds, batch=batch, threads=th, repeats=repeats,
                    warmup=2, runtimes=runtimes, peer=peer, audio=audio)
        sizes = {"fp32": model_size_mb(name, 32), "int8": model_size_mb(name, 8)}
        for rt, r in res["runtimes"].items():
            rows.append({
                "model": LABEL[name], "arch": name, "precision": r["precision"].upper(), "runtime": rt,
                "integer_only": r["integer_only"], "bit_exact": r.get("bit_exact"),
                "latency_ms": r["median_ms"], "q25_ms": r["q25_ms"], "q75_ms": r["q75_ms"], "iqr_ms": r["iqr_ms"],
                "best": rt in (res["fp32_runtime"], res["int8_runtime"], res["int8_integer_only_runtime"],
                               res.get("peer_runtime")),
                "headline": rt in (res["fp32_runtime"], res["int8_runtime"]),
                "speedup_vs_best_fp32": res["fp32_ms"] / r["median_ms"],
                "size_mb": sizes[r["precision"][:4]], "seconds": seconds, "frames": res["frames"], "batch": batch,
                "threads": th, "repeats": repeats, "turns": res.get("turns"), "input": res.get("input"), "cpu": res["machine"].get("cpu_model"),
                "kernels": res["machine"].get("kernel_family"), "speedup_vs_peer": (res.get("peer_ms") or float("nan")) / r["median_ms"],
                "loadavg_before": (res["loadavg_before"] or [None])[0], "loadavg_after": (res["loadavg_after"] or [None])[0],
            })
        if progress:
            print(f"{LABEL[name]}, {th} thread(s): FP32 {res['fp32_ms']:.0f} ms ({res['fp32_runtime']}), INT8 {res['int8_ms']:.0f} ms "
                  f"({res['int8_runtime']}) -> {res['speedup']:.2f}x; integer-only INT8 "
                  f"{res['int8_integer_only_ms']:.0f} ms -> {res['speedup_integer_only']:.2f}x; "
                  f"onnxruntime static int8 {res['peer_ms'] or float('nan'):.0f} ms "
                  f"[{time.time() - t0:.0f} s, load {res['loadavg_before']}]", flush=True)
            for rt, why in (res.get("skipped") or {}).items():   # e.g. onnxruntime-int8 without VNNI: no CSV row
                print(f"  {rt} skipped: {why}", flush=True)
    return pd.DataFrame(rows)


def paper_statement(path=None) -> str:
    """The paper's Fig. 2 statement as one caption (data/paper_latency.csv, row `speedup`); the
    published sentence where that file is absent."""
    path = Path(path) if path else paths.REPO_ROOT / "data" / "paper_latency.csv"
    if path.is_file():
        df = pd.read_csv(path)
        sp = df[df.metric == "speedup"].iloc[0]
        return (f"Paper (Fig. 2, Sec. 3.2): {sp['model']} INT8 {sp['value']:.2f}x faster than FP32\n"
                f"on {sp['device']}, {sp['software']}; {sp['input']}")
    return "Paper (Fig. 2): QuartzNet-15x5 INT8 2.35x faster than FP32 on a Tesla T4, TensorRT 7.2"


def plot(df: pd.DataFrame, out=None):
    """Fig. 2 (ours) from a ``run`` frame: per thread count, the best runtime of each precision per
    model (median bar, IQR whisker, speedup over the fastest FP32 above it); then the model sizes.
    out: a PNG path (drawn headless); the figure is returned either way."""
    import matplotlib

    matplotlib.use("Agg") if out else None
    import matplotlib.pyplot as plt
    import seaborn as sns

    best = df[df.best].copy()
    best["series"] = best.apply(lambda r: "FP32" if r.precision == "FP32" else
                                ("INT8 onnxruntime static (float requant.)" if r.precision == "INT8-PEER" else
                                 ("INT8 integer-only (ours)" if r.integer_only else "INT8 (fp32-exact depthwise)")),
                                axis=1)
    threads = sorted(set(df.threads))
    fig, axes = plt.subplots(1, len(threads) + 1, figsize=(5.5 * (len(threads) + 1), 4.2))
    order = [LABEL[m] for m in MODELS if LABEL[m] in set(df.model)]
    hue_order = [h for h in ("FP32", "INT8 onnxruntime static (float requant.)", "INT8 integer-only (ours)",
                             "INT8 (fp32-exact depthwise)") if h in set(best.series)]
    for ax, th in zip(axes, threads):
        part = best[best.threads == th].drop_duplicates(["model", "series"])
        sns.barplot(data=part, x="model", y="latency_ms", hue="series", order=order, hue_order=hue_order, ax=ax)
        for i, m in enumerate(order):
            sub = part[part.model == m].set_index("series")
            for j, h in enumerate(hue_order):
                if h in sub.index:
                    r = sub.loc[h]
                    x = i + (j - (len(hue_order) - 1) / 2) * 0.8 / len(hue_order)
                    ax.errorbar(x, r.latency_ms, yerr=[[r.latency_ms - r.q25_ms], [r.q75_ms - r.latency_ms]],
                                color="k", capsize=3, lw=1)
                    if h != "FP32":
                        ax.text(x, r.q75_ms, f"{r.speedup_vs_best_fp32:.2f}x", ha="center", va="bottom", fontsize=8)
        loads = part.groupby("model").loadavg_before.first()
        ax.set_xticks(range(len(order)), [f"{m}\nload {loads.get(m, float('nan')):.1f}" for m in order])
        ax.set_ylabel(f"latency (ms), median and IQR\n10 s input, batch 1, {th} thread(s)")
        ax.set_xlabel("")
        ax.set_title(f"Latency on this CPU (ours), {th} thread(s)")
        ax.legend(fontsize=8)
    ax2 = axes[-1]
    sizes = df[df.precision.isin(["FP32", "INT8"])].drop_duplicates(["model", "precision"])
    sns.barplot(data=sizes, x="model", y="size_mb", hue="precision", order=order, hue_order=["FP32", "INT8"], ax=ax2)
    ax2.set_ylabel("model size (MiB, BN folded)")
    ax2.set_xlabel("")
    ax2.set_title("Model size")
    fig.text(0.5, -0.06, paper_statement() + "\nOurs: shared 2-core CPU; 1-min load average at the start of each "
             "model's run under its name: compare ratios within a model, not milliseconds across models", ha="center", va="top", fontsize=9, style="italic")
    fig.tight_layout()
    if out:
        fig.savefig(out, dpi=130, bbox_inches="tight")
    return fig
