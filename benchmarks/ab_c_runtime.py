"""Two versions of the C runtime's sources on one model, timed in one process, interleaved.

    .venv/bin/python benchmarks/ab_c_runtime.py --model build/conformer_hama.nemo \
        --quantized build/conf_w8a8.aqz --baseline HEAD~1 --threads 2 --rounds 25

A kernel change is judged against the sources at ``--baseline`` (a git revision: its
lib/intasr/program/c_backend.py, c_lower.py and c/, extracted with ``git show``) with the working
tree's as the candidate. Both are built (the usual build cache) and loaded side by side; each round
runs the baseline, then the candidate, 3 times each, on the same input (``intasr bench``'s: 10 s
of test-other speech through the float front end, quantized). Load drifts on a shared machine
reach both alike, which separate runs do not give (on this 2-core VM the same build's median
moved from 19 to 26 ms between two runs minutes apart). Prints whether the two outputs are identical (every logit), then
the median and quartiles of each; writes nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from intasr import paths
from intasr.deploy.bench import bench_input
from intasr.integer_model import load_quantized
from intasr.models import load_model
from intasr.program import c_backend

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = "lib/intasr/program"


def sources_at(rev: str, into: Path) -> Path:
    """The C runtime's sources at git revision `rev`, laid out as in the package: returns the c/ folder."""
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", rev, f"{PROGRAM}/c"],
                           capture_output=True, text=True, check=True).stdout.split()
    for name in names + [f"{PROGRAM}/c_backend.py", f"{PROGRAM}/c_lower.py"]:
        out = into / Path(name).relative_to(PROGRAM)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{name}"], capture_output=True,
                                       check=True).stdout)
    return into / "c"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the float model (.nemo): the input's front end")
    p.add_argument("--quantized", required=True, help="its integer model (.aqz)")
    p.add_argument("--baseline", default="HEAD", help="git revision of the baseline sources (default HEAD)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    qmodel = load_quantized(args.quantized)
    mel, what = bench_input(load_model(args.model), args.seconds, 1, audio=paths.librispeech("test-other"))
    x = qmodel.quantize_input(mel).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        runtimes = {}
        for label, folder in ((f"baseline {args.baseline}", sources_at(args.baseline, Path(tmp))),
                              ("working tree", c_backend.SOURCES)):
            c_backend.SOURCES = folder   # where CRuntime reads (and hashes) the sources
            runtimes[label] = c_backend.CRuntime(qmodel.program, args.threads)
    outs = [rt.run(x) for rt in runtimes.values()]
    print(f"{what}, {args.threads} thread(s), {args.rounds} rounds x 3 runs; outputs identical:",
          all(np.array_equal(outs[0], o) for o in outs[1:]))
    times = {k: [] for k in runtimes}
    for _ in range(args.rounds):
        for label, rt in runtimes.items():
            for _ in range(3):
                t0 = time.perf_counter()
                rt.run(x)
                times[label].append(1e3 * (time.perf_counter() - t0))
    for label, t in times.items():
        q25, q50, q75 = np.quantile(t, [0.25, 0.5, 0.75])
        print(f"  {label:>24}: median {q50:6.2f} ms  IQR {q25:.2f}-{q75:.2f}  ({runtimes[label].isa} kernels)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
