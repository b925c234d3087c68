"""Seconds per Adam iteration of synthetic-data generation: straightforward path vs fast path.

Same process, same initial input, back to back (rounds alternate straightforward / fast to spread
CPU contention from other jobs over both). Also checks that the two loss trajectories agree.

    python tools/bench_synth.py --frames 500 200 --iterations 3 --rounds 1 --threads 1 --control-threads 2

Writes one row per frame count to results/synth_speed.csv (`--out`) with the provenance of the row
(model sha256, every setting, code version and commit, machine) and the load average around it:
timings on a shared machine mean little without it.
"""
import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from intasr import paths
from intasr.models import load_model
from intasr.synth import SyntheticMelGenerator


def run(gen, x0, iterations, lr=0.05):
    x = torch.nn.Parameter(x0.clone())
    opt = torch.optim.Adam([x], lr=lr, betas=(0.9, 0.999))
    losses, times, points = [], [], []
    for _ in range(iterations):
        points.append(x.detach().clone())
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = gen.loss(x)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return losses, times, points


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(paths.restored_model()))
    ap.add_argument("--frames", type=int, nargs="+", default=[500, 200])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--control-threads", type=int, default=0,
                    help="also rerun the straightforward path with this many threads: how far float rounding "
                         "alone moves the trajectory")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "synth_speed.csv"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    rows = []
    for T in args.frames:
        load_before = os.getloadavg()[0]
        kw = dict(batch_size=args.batch_size, frames=T, progress=False)
        slow, fast = SyntheticMelGenerator(model, fast=False, **kw), SyntheticMelGenerator(model, fast=True, **kw)
        x0 = fast.initial(0)
        t_slow, t_fast = [], []
        for _ in range(args.rounds):
            l_slow, t, points = run(slow, x0, args.iterations)
            t_slow += t
            l_fast, t, _ = run(fast, x0, args.iterations)
            t_fast += t
        rel = max(abs(a - b) / abs(a) for a, b in zip(l_slow, l_fast))
        with torch.no_grad():  # both losses at the same inputs (those of the straightforward run)
            same = max(abs(float(fast.loss(x)) - a) / abs(a) for x, a in zip(points, l_slow))
        ms, mf = statistics.median(t_slow), statistics.median(t_fast)
        print(f"T={T} B={args.batch_size} threads={args.threads}: straightforward {ms:.2f} s/it "
              f"(min {min(t_slow):.2f}), fast {mf:.2f} s/it (min {min(t_fast):.2f}), "
              f"speed-up x{ms / mf:.1f} (median) x{min(t_slow) / min(t_fast):.1f} (min); "
              f"losses {[round(v, 3) for v in l_slow]} vs {[round(v, 3) for v in l_fast]}, "
              f"max rel diff {rel:.1e}; at the same inputs {same:.1e}", flush=True)
        row = {"frames": T, "straightforward_s_per_it": ms, "fast_s_per_it": mf, "speedup_median": ms / mf,
               "straightforward_min_s": min(t_slow), "fast_min_s": min(t_fast), "speedup_min": min(t_slow) / min(t_fast),
               "loss_max_rel_diff": rel, "loss_rel_diff_same_inputs": same, "control_max_rel_diff": None,
               "loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0]}
        if args.control_threads:
            torch.set_num_threads(args.control_threads)
            l_ctl, _, _ = run(slow, x0, args.iterations)
            torch.set_num_threads(args.threads)
            ctl = max(abs(a - b) / abs(a) for a, b in zip(l_slow, l_ctl))
            row["control_max_rel_diff"] = ctl
            print(f"  control: straightforward with {args.control_threads} threads {[round(v, 3) for v in l_ctl]}, "
                  f"max rel diff to straightforward with {args.threads}: {ctl:.1e}", flush=True)
        rows.append(row)
    write_rows(args, rows)


def write_rows(args, rows) -> None:
    """The results file: each row with its provenance (intasr.provenance)."""
    import pandas as pd

    from intasr.models.checkpoint import atomic_write_bytes
    from intasr.provenance import provenance

    settings = {"batch_size": args.batch_size, "iterations": args.iterations, "rounds": args.rounds,
                "torch_threads": args.threads, "control_threads": args.control_threads, "lr": 0.05}
    prov = provenance(args.model, settings=settings)
    text = pd.DataFrame([{**r, **prov} for r in rows]).to_csv(index=False)
    atomic_write_bytes(args.out, lambda f: f.write(text.encode()))
    print(f"wrote {args.out}")

if __name__ == "__main__":
    main()
