"""The Conformer against its peers: ``intasr bench`` on two Conformer-CTC models, 1 and 2 threads.

    .venv/bin/python benchmarks/run_conformer_bench.py                # 20 interleaved rounds each
    .venv/bin/python benchmarks/run_conformer_bench.py --repeats 5 --models nemo-small

Models:
- ``hama``: the real pretrained hama Conformer-CTC (4 layers, d 144, phonemes), imported with
  ``intasr import-hama --restore-bn --out build/conformer_hama.nemo`` and quantized W8A8 zero-shot
  (``intasr quantize --model build/conformer_hama.nemo --weight-bits 8 --act-bits 8
  --out build/conf_w8a8.aqz``: synthetic calibration, seed 0); ``--hama`` / ``--hama-quantized``
  name other files.
- ``nemo-small``: NeMo's conformer_ctc_small architecture (16 layers, d 176, Conv2d striding
  subsampling, rel_pos attention), random weights (seeded), W8A8 calibrated on random log-mels:
  latency does not depend on what the weights learned (it does on the input through the AVX2
  kernels' window split, hence speech input); kept in build/conformer_bench/.

Each (model, threads): ``intasr bench --seconds 10 --repeats R --threads N --json`` (torch FP32,
onnxruntime FP32 of a torch.onnx.export, onnxruntime quantize_dynamic int8 of that export, the C
runtime, and onnxruntime's integer graph where this CPU runs it exactly; 10 s of test-other speech;
each runtime's added resident memory in a process of its own), its JSON in
benchmarks/results/conformer_<model>_<kernel family>_t<N>.json; then a tidy CSV
(benchmarks/conformer_latency_<kernel family>.csv,
one row per model x threads x runtime) and its plot (.png beside it).

``--isolate``: the interleaved run with each runtime in a worker process of its own (``intasr bench
--isolate``): rounds interleaved as above, no runtime's thread pool beside another's; a tidy CSV
benchmarks/conformer_isolated_<kernel family>.csv (``protocol`` "isolated").

``--alone``: each runtime in a process of its own, one after the other (``intasr bench --runtimes
R``), so that no other runtime's thread pool shares the process; a tidy CSV
benchmarks/conformer_alone_<kernel family>.csv (the same columns, ``protocol`` "alone"). The
interleaved run shares load drifts fairly; the alone run shows what a deployment of one runtime sees.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]

from intasr import paths
from intasr.cli import main as cli_main

MODELS = ("hama", "nemo-small")
LABEL = {"hama": "hama Conformer-CTC (real, W8A8 zero-shot)", "nemo-small": "NeMo Conformer-CTC small (random)"}


def nemo_small_files(folder: Path) -> tuple[Path, Path]:
    """The seeded random-weight NeMo small Conformer and its W8A8 file (made once)."""
    from intasr.integer_model import save_quantized
    from intasr.models import ConformerCTC, conformer_ctc_config, save_model
    from intasr.models.init import random_matrices_
    from intasr.quantize import quantize

    model_path, q_path = folder / "nemo_small_random.nemo", folder / "nemo_small_random_w8a8.aqz"
    if model_path.is_file() and q_path.is_file():
        return model_path, q_path
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = random_matrices_(ConformerCTC(conformer_ctc_config("small")).eval(), g)
    mel = torch.randn(2, 80, 400, generator=g)
    qmodel = quantize(model, [(mel, torch.tensor([400, 320]))], 8, 8, info={"calibration": "random", "seed": 0})
    save_model(model, model_path)
    save_quantized(qmodel, q_path)
    return model_path, q_path


def run(models, threads, repeats: int, out_dir: Path, hama=None, hama_quantized=None, alone=False,
        isolate=False) -> pd.DataFrame:
    from intasr.cpu import kernel_family

    rows = []
    for name in models:
        if name == "hama":
            model_path = Path(hama or paths.build_dir() / "conformer_hama.nemo")
            q_path = Path(hama_quantized or paths.build_dir() / "conf_w8a8.aqz")
            for f, how in ((model_path, "intasr import-hama --restore-bn --out build/conformer_hama.nemo"),
                           (q_path, "intasr quantize --model build/conformer_hama.nemo --weight-bits 8 "
                                    "--act-bits 8 --out build/conf_w8a8.aqz")):
                if not f.is_file():
                    raise SystemExit(f"{paths.display_path(f)} not found: make it with `{how}`")
        else:
            model_path, q_path = nemo_small_files(paths.build_dir() / "conformer_bench")
        for th in threads:
            if alone:
                rows += tidy(name, bench_alone(model_path, q_path, th, repeats,
                                               out_dir / f"conformer_{name}_{kernel_family()}_t{th}_alone.json"),
                             protocol="alone")
                continue
            out = out_dir / f"conformer_{name}_{kernel_family()}_t{th}{'_isolated' if isolate else ''}.json"
            args = ["bench", "--model", str(model_path), "--quantized", str(q_path), "--seconds", "10",
                    "--threads", str(th), "--repeats", str(repeats), "--json", str(out), "--quiet"]
            args += ["--isolate"] if isolate else []
            print(f"== {name}, {th} thread(s): intasr {' '.join(paths.display_path(a) for a in args)}", flush=True)
            if cli_main(args) != 0:
                raise SystemExit(f"intasr bench failed for {name}")
            res = json.loads(out.read_text())
            res["command"] = "intasr " + " ".join(paths.display_path(a) for a in args)
            out.write_text(json.dumps(res, indent=2))
            rows += tidy(name, res, protocol="isolated" if isolate else "interleaved")
    return pd.DataFrame(rows)


def bench_alone(model_path: Path, q_path: Path, threads: int, repeats: int, out: Path) -> dict:
    """``intasr bench`` once per runtime, each in a fresh process; one merged result (the first
    run's record, every runtime's timings, the fastest FP32 recomputed over the separate runs)."""
    import subprocess

    from intasr.deploy.bench import CONFORMER_RUNTIMES

    merged = None
    for rt in CONFORMER_RUNTIMES:
        part = out.with_name(out.stem + f"_{rt}.json")
        args = ["bench", "--model", str(model_path), "--quantized", str(q_path), "--seconds", "10", "--threads",
                str(threads), "--repeats", str(repeats), "--runtimes", rt, "--no-memory", "--json", str(part),
                "--quiet"]
        print(f"== alone: intasr {' '.join(paths.display_path(a) for a in args)}", flush=True)
        subprocess.run([sys.executable, "-c", "import sys; from intasr.cli import main; sys.exit(main(sys.argv[1:]))",
                        *args])
        if not part.is_file():   # a runtime this CPU does not run exactly (bench said why) or a failure
            print(f"   {rt}: no result", flush=True)
            continue
        res = json.loads(part.read_text())
        part.unlink()
        if merged is None:
            merged = dict(res, runtimes={}, commands=[])
        merged["runtimes"].update(res["runtimes"])
        merged["commands"].append("intasr " + " ".join(paths.display_path(a) for a in args))
        merged["loadavg_after"] = res.get("loadavg_after")
    timed = {k: r for k, r in merged["runtimes"].items() if "median_ms" in r}
    fp32 = min((k for k, r in timed.items() if r["precision"] == "fp32"), key=lambda k: timed[k]["median_ms"])
    merged["runtimes"] = timed
    merged["fp32_runtime"], merged["fp32_ms"] = fp32, timed[fp32]["median_ms"]
    out.write_text(json.dumps(merged, indent=2))
    return merged


def tidy(name: str, res: dict, protocol: str = "interleaved") -> list[dict]:
    fastest_fp32 = res["fp32_ms"]
    peer = res["runtimes"].get("onnxruntime-dynamic-int8", {}).get("median_ms")
    rows = []
    for rt, r in res["runtimes"].items():
        rows.append({
            "model": name, "label": LABEL[name], "protocol": protocol, "turns": res.get("turns"),
            "runtime": rt, "precision": r["precision"],
            "integer_only": r.get("integer_only"), "bit_exact": r.get("bit_exact"),
            "argmax_agreement_vs_fp32": r.get("argmax_agreement_vs_fp32"), "kernels": r.get("kernels"),
            "latency_ms": r["median_ms"], "q25_ms": r["q25_ms"], "q75_ms": r["q75_ms"],
            "speedup_vs_fastest_fp32": fastest_fp32 / r["median_ms"],
            "speedup_vs_dynamic_int8": (peer / r["median_ms"]) if peer else None,
            "added_rss_mib": r.get("added_rss_mib"), "base_rss_mib": res.get("base_rss_mib"),
            "fastest_fp32": res["fp32_runtime"], "threads": res["threads"], "repeats": res["repeats"],
            "frames": res["frames"], "input": res.get("input"), "cpu": res["machine"].get("cpu_model"),
            "kernel_family": res["machine"].get("kernel_family"),
            "loadavg_before": (res.get("loadavg_before") or [None])[0],
            "loadavg_after": (res.get("loadavg_after") or [None])[0],
            "code_commit": (res.get("provenance") or {}).get("code_commit"),
        })
    return rows


def plot(df: pd.DataFrame, out=None):
    import matplotlib

    matplotlib.use("Agg") if out else None
    import matplotlib.pyplot as plt
    import seaborn as sns

    models = [m for m in MODELS if m in set(df.model)]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.2), squeeze=False)
    order = [r for r in ("torch-fp32", "onnxruntime-fp32", "onnxruntime-dynamic-int8", "onnxruntime-int8", "c-int8")
             if r in set(df.runtime)]
    for ax, m in zip(axes[0], models):
        part = df[df.model == m]
        sns.barplot(data=part, x="runtime", y="latency_ms", hue="threads", order=order, ax=ax)
        for i, rt in enumerate(order):
            for j, th in enumerate(sorted(set(part.threads))):
                r = part[(part.runtime == rt) & (part.threads == th)]
                if len(r):
                    r = r.iloc[0]
                    x = i + (j - 0.5) * 0.4
                    ax.errorbar(x, r.latency_ms, yerr=[[r.latency_ms - r.q25_ms], [r.q75_ms - r.latency_ms]],
                                color="k", capsize=3, lw=1)
                    ax.text(x, r.q75_ms, f"{r.speedup_vs_fastest_fp32:.2f}x", ha="center", va="bottom", fontsize=7)
        ax.set_title(f"{LABEL[m]}\n{part.cpu.iloc[0]}, {part.kernel_family.iloc[0]} kernels, "
                     f"load {part.loadavg_before.min():.1f}-{part.loadavg_before.max():.1f}", fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("latency (ms), median and IQR, 10 s of speech, batch 1")
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.text(0.5, -0.04, "numbers above the bars: speed-up over the fastest FP32 runtime of the same thread count",
             ha="center", fontsize=9, style="italic")
    fig.tight_layout()
    if out:
        fig.savefig(out, dpi=130, bbox_inches="tight")
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--hama", default=None, help="the imported hama model (default build/conformer_hama.nemo)")
    p.add_argument("--hama-quantized", default=None, help="its W8A8 file (default build/conf_w8a8.aqz)")
    p.add_argument("--out", default=None,
                   help="CSV path (default: benchmarks/conformer_latency_<kernel family>.csv, one per kind of CPU)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="folder of the bench JSONs")
    p.add_argument("--alone", action="store_true",
                   help="each runtime in a process of its own (module doc); CSV conformer_alone_<kernels>.csv")
    p.add_argument("--isolate", action="store_true",
                   help="one interleaved `intasr bench --isolate` run per model and thread count (module doc); "
                        "CSV conformer_isolated_<kernels>.csv")
    args = p.parse_args(argv)
    from intasr.cpu import kernel_family

    df = run(args.models, args.threads, args.repeats, Path(args.results), args.hama, args.hama_quantized,
             alone=args.alone, isolate=args.isolate)
    stem = "conformer_alone" if args.alone else "conformer_isolated" if args.isolate else "conformer_latency"
    out = Path(args.out or ROOT / "benchmarks" / f"{stem}_{kernel_family()}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    plot(df, out.with_suffix(".png"))
    c = df[df.runtime == "c-int8"]
    for _, r in c.iterrows():
        print(f"{r.model}, {r.threads} thread(s): C {r.latency_ms:.1f} ms, {r.speedup_vs_fastest_fp32:.2f}x the fastest "
              f"FP32 ({r.fastest_fp32}), {r.speedup_vs_dynamic_int8:.2f}x onnxruntime dynamic int8, "
              f"bit-exact {r.bit_exact}")
    print(f"-> {paths.display_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
