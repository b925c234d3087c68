#!/usr/bin/env python
"""Expected cost of `intasr grid --profile paper` (tables.PAPER_PROFILE), from rates measured
by the serial run of tools/bench_dask_grid.py on this machine (of several, the one of median
wall time):

    .venv/bin/python tools/paper_cost.py --bench results/dask_grid_bench_malloc_fix.json --out results/paper_profile_cost.json

Rates: seconds per Adam iteration of one synthetic batch (cache manifests of that run: generation
seconds / iterations, scaled linearly from its frame count to the profile's 500 frames: an upper
estimate, synth.py measured 0.72 s/it at T=200 and 1.54 at T=500) and seconds per utterance of
the integer model's evaluation (its W8A8/W6A8 rows: eval_seconds / utterances).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from intasr.tables import PAPER_PROFILE, paper_cost

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", default=str(ROOT / "results" / "dask_grid_bench_malloc_fix.json"))
    p.add_argument("--out", default=str(ROOT / "results" / "paper_profile_cost.json"))
    p.add_argument("--runtime", default=None, help="the serial runs of this engine (c / torch; default: any)")
    args = p.parse_args()
    bench = json.loads(Path(args.bench).read_text())
    serial = [r for r in bench["runs"] if r["workers"] == 1 and args.runtime in (None, r.get("runtime", "torch"))]
    serial = sorted(serial, key=lambda r: r["wall_seconds"])[(len(serial) - 1) // 2]   # the median run's rates
    folder = Path(serial["csv"]).parent
    per_it = []
    for manifest in (folder / "cache").glob("*/manifest.json"):
        m = json.loads(manifest.read_text())
        scale = PAPER_PROFILE["frames"] / m["params"]["frames"]
        per_it += [b["seconds"] / m["params"]["iterations"] * scale for b in m["batches"].values() if "seconds" in b]
    rows = pd.read_csv(serial["csv"])
    q = rows[rows.w_bits < 32]
    per_utt = float((q.eval_seconds / q.utterances).mean())
    s_it = sum(per_it) / len(per_it)
    cost = paper_cost(s_it, per_utt)
    report = {"profile": {k: list(v) if isinstance(v, tuple) else v for k, v in PAPER_PROFILE.items()},
              "seconds_per_iteration_T500": round(s_it, 3), "seconds_per_utterance": round(per_utt, 3),
              "measured_in": str(folder), "engine": serial.get("runtime", "torch"), "machine": bench["machine"],
              **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in cost.items()},
              "note": "CPU time of one task at a time on this machine (shared, loaded); with N workers of the same "
                      "speed the wall time is about total_hours / N (synthetic batches and shards are independent "
                      "tasks). Per model: QuartzNet-15x5 rates; JasperDR and Conformer-Large cost more."}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("seconds_per_iteration_T500", "seconds_per_utterance", "synthesis_hours",
                                             "evaluation_hours", "total_hours")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
