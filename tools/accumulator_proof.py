"""Accumulator proofs under adversarial inputs (issue 29), for small integer models.

For every conv1d of each model: the bound the load-time check proves (program/validate.py: the
exact extreme of each output channel's w . x + bias over the input activation's declared range, at
most the bound the converter records as ``meta["bound"]`` and ``intasr verify`` reports) against
the accumulator dtype, and the worst case run: the input inside the declared range that drives the output channel
with the largest bound to its extreme (each input value at the range's end that the weight's sign
favours), in both directions, through the NumPy reference (which checks that no intermediate leaves
int64) and the C runtime, each computing the layer alone as a one-layer program (an unsigned input
u in [0, 255] is given as x = u - 128 with the bias shifted by 128 x the weight row sum: the same
accumulator). The exact accumulator (Python integers) must equal both backends' and fit its dtype.
Matmul and conv2d accumulators: the proven bound only.

    python tools/accumulator_proof.py --out results/accumulator_proof.json

The models: the fuzz harness's seeds (a small ConvASR and a one-layer NeMo-architecture Conformer,
W8A8, intasr/fuzz/seeds.py), and with ``--aqz`` the real ones (QuartzNet-15x5 and the hama
Conformer W8A8 of results/verify/; a C build per layer, minutes):

    python tools/accumulator_proof.py --aqz build/qn15_w8a8.aqz build/conf_w8a8.aqz
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


from intasr.integer_model import load_quantized
from intasr.program.ops import Op, Program, Value


def _qrange(bits, signed):
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def one_layer(op: Op, cin: int, shifted_bias) -> Program:
    """input int8 [B, Cin, T] -> the conv (bias given) -> rescale by exactly 1 -> logits int64"""
    a = op.attrs
    conv = Op("conv1d", ["input"], ["acc"], dict(a), {"weight": op.params["weight"], "bias": shifted_bias},
              name=op.name)
    res = Op("rescale", ["acc"], ["logits"], {}, {"M": torch.tensor([2]), "shift": torch.tensor([1])},
             name=op.name + ".identity")
    frames = Op("frames", ["input_lengths"], ["logits_lengths"],
                {"kernel": int(op.params["weight"].shape[2]), "stride": a["stride"], "padding": a["padding"],
                 "dilation": a["dilation"]}, name="frames")
    values = {"input": Value("int8", "act", 8, True), "input_lengths": Value("int64", "lengths"),
              "acc": Value(a["acc_dtype"], "acc"), "logits": Value("int64", "acc"),
              "logits_lengths": Value("int64", "lengths")}
    return Program(values, [conv, res, frames], meta={"input_features": cin}).validate()


def layer_proof(program: Program, op: Op, c_runtime: bool, tmp: Path) -> dict:
    from intasr.program.numpy_ref import NumpyReference

    a = op.attrs
    vin = program.values[op.inputs[0]]
    lo, hi = _qrange(vin.bits, vin.signed)
    w = op.params["weight"].to(torch.int64).numpy()
    cout, cin_g, K = w.shape
    groups, stride, pad, dil = a["groups"], a["stride"], a["padding"], a["dilation"]
    cin = cin_g * groups
    bias = op.params.get("bias")
    b = bias.to(torch.int64).numpy() if bias is not None else np.zeros(cout, np.int64)
    w2 = w.reshape(cout, -1)
    pos, neg = np.clip(w2, 0, None).sum(1), np.clip(w2, None, 0).sum(1)
    per = [max(abs(int(bb) + hi * int(p_) + lo * int(n_)), abs(int(bb) + lo * int(p_) + hi * int(n_)))
           for bb, p_, n_ in zip(b, pos, neg)]
    o = int(np.argmax(per))
    proven, dmax = program.acc_bounds[op.name]
    rec = {"layer": op.name, "acc_dtype": a["acc_dtype"], "input_range": [lo, hi], "proven_bound": int(proven),
           "verify_bound": op.meta.get("bound"), "dtype_max": int(dmax),
           "headroom_bits": round(float(np.log2(dmax / max(1, proven))), 2), "channel": o}
    t_star = -(-pad // stride) + 1
    T = t_star * stride - pad + (K - 1) * dil + 1 + stride
    g = o // (cout // groups)
    shift = 128 if lo == 0 else 0          # unsigned input u = x + 128
    bias2 = torch.from_numpy(b + shift * w.reshape(cout, -1).sum(1)).to(torch.int64)
    sub = one_layer(op, cin, bias2)
    results = []
    for sign in (1, -1):
        u = np.zeros((1, cin, T), np.int64) + (lo if lo == 0 else 0)
        exact = int(b[o])
        for c in range(cin_g):
            for k in range(K):
                v = hi if sign * w[o, c, k] > 0 else lo
                u[0, g * cin_g + c, t_star * stride - pad + k * dil] = v
                exact += int(w[o, c, k]) * v
        x = (u - shift).astype(np.int8)
        ref, _ = NumpyReference().run(sub, x, np.array([T]))
        got = {"exact": exact, "numpy_ref": int(ref[0, o, t_star]), "fits": abs(exact) <= dmax}
        if c_runtime:
            from intasr.program.c_backend import CExportError, CRuntime

            try:
                rt = CRuntime(sub, threads=1, max_frames=T, out_dir=tmp / f"{op.name}")
                got["c_runtime"] = int(rt.run(x)[0, o, t_star])
            except CExportError as e:
                got["c_runtime"] = f"not lowered: {str(e).splitlines()[0]}"
        results.append(got)
    rec["worst_case"] = {"max": results[0], "min": results[1]}
    def ok(r):
        c = r.get("c_runtime", r["exact"])
        return r["fits"] and r["numpy_ref"] == r["exact"] and (c == r["exact"] or isinstance(c, str))

    rec["ok"] = all(ok(r) for r in results) and proven <= dmax
    rec["bound_reached"] = max(abs(r["exact"]) for r in results) == proven   # the proof is tight
    rec["c_checked"] = all(isinstance(r.get("c_runtime"), int) for r in results)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/accumulator_proof.json")
    ap.add_argument("--seeds", default="build/fuzz/seeds")
    ap.add_argument("--no-c", action="store_true")
    ap.add_argument("--aqz", nargs="*", default=[],
                    help="more integer models to prove (the real ones of results/verify/, e.g. build/qn15_w8a8.aqz)")
    args = ap.parse_args(argv)
    from intasr.fuzz.seeds import build_seeds

    torch.set_num_threads(1)
    seeds = build_seeds(args.seeds)
    report = {"command": "python tools/accumulator_proof.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for aqz in sorted((seeds / "aqz").glob("*.aqz")) + [Path(a) for a in args.aqz]:
            q = load_quantized(aqz)       # the load-time checks prove every bound (or refuse the file)
            p = q.program
            layers = [layer_proof(p, op, not args.no_c, Path(tmp) / aqz.stem) for op in p.ops if op.kind == "conv1d"]
            others = [{"layer": n, "proven_bound": int(b), "dtype_max": int(m)} for n, (b, m) in p.acc_bounds.items()
                      if not any(r["layer"] == n for r in layers)]
            report["models"][aqz.stem] = {"conv1d": layers, "other_accumulators": others,
                                          "all_ok": all(r["ok"] for r in layers) and
                                          all(o["proven_bound"] <= o["dtype_max"] for o in others)}
            print(f"{aqz.stem}: {len(layers)} conv1d layers, worst case exact in numpy_ref: "
                  f"{report['models'][aqz.stem]['all_ok']}, and in the C runtime: "
                  f"{sum(r['c_checked'] for r in layers)} of {len(layers)}; bound reached by the worst case in "
                  f"{sum(r['bound_reached'] for r in layers)}; "
                  f"least headroom {min(r['headroom_bits'] for r in layers)} bits", flush=True)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all(m["all_ok"] for m in report["models"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
