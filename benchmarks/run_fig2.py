"""Fig. 2 (ours): FP32 vs INT8 latency and model size of QuartzNet 5x5 / 10x5 / 15x5 on this CPU.

    .venv/bin/python benchmarks/run_fig2.py                       # full: 20 interleaved runs
    .venv/bin/python benchmarks/run_fig2.py --repeats 3 --quick   # notebook quick profile

The protocol (random-weight models, W8A8, ``bench`` interleaved runs, sizes, the C runtime and
onnxruntime's static int8 peer calibrated on ``--calibration-limit`` utterances) is
``intasr.deploy.fig2``; this is its command line. Writes a tidy CSV (one row per model x
runtime) and a seaborn plot with the paper's statement (``data/paper_latency.csv``: 15x5 INT8 2.35x faster than FP32 on a T4 with TensorRT 7.2.1) beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from intasr import paths
from intasr.deploy import fig2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(fig2.MODELS), choices=list(fig2.MODELS))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="one run per thread count")
    p.add_argument("--audio", default=None, help="speech input folder / manifest (default: the shared test-other; "
                   "'random' for random values)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--calibration-limit", type=int, default=16,
                   help="train-clean-100 utterances for onnxruntime's static int8 calibration")
    p.add_argument("--out", default=None, help="CSV path (default: benchmarks/fig2_latency_<kernel family>.csv, "
                   "one file per kind of CPU; benchmarks/fig2_latency.csv is the earlier AVX-512 VNNI run)")
    p.add_argument("--plot", default=None, help="PNG path (default: beside the CSV)")
    p.add_argument("--quick", action="store_true", help="write to build/results/ instead (notebook quick profile)")
    args = p.parse_args(argv)
    from intasr.cpu import kernel_family

    out = Path(args.out or paths.REPO_ROOT / "benchmarks" / f"fig2_latency_{kernel_family()}.csv")
    if args.quick and args.out is None:
        out = paths.REPO_ROOT / "build" / "results" / "fig2_latency_quick.csv"
    df = fig2.run(args.models, args.repeats, args.threads, args.seconds, calibration_limit=args.calibration_limit,
                  audio=args.audio)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    fig2.plot(df, args.plot or out.with_suffix(".png"))
    print(f"-> {paths.display_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
