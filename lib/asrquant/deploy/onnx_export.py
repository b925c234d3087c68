"""ONNX export: the ``asrquant export`` command.

The float model's FP32 graph is ``onnx_float.py`` (``export_onnx_float``, re-exported here).

The integer model's graphs are lowerings of its integer program (no model walking):
``program/onnx_int.py`` (``export_onnx``: the integer-only graph, bit-exact to ``forward_int``
with padding masks, inputs ``q`` and ``lengths``) and ``program/onnx_qdq.py`` (``export_onnx_qdq``:
QuantizeLinear/DequantizeLinear + float Conv, TensorRT's explicit-quantization form).
``cmd_export`` (``asrquant export``) writes both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .onnx_float import build_float_model, export_onnx_float  # noqa: F401  (re-exported)


# --------------------------------------------------------------------------- CLI

def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="quantized model file (.aqz, from `asrquant quantize`)")
    p.add_argument("--onnx", required=True, help="output .onnx (integer-only graph of the program; inputs q, lengths)")
    p.add_argument("--qdq", default=None, help="also write the Q/DQ (TensorRT) form here")
    p.add_argument("--frames", type=int, default=None, help="fix the number of input frames (default dynamic)")
    p.add_argument("--floor", choices=["div", "shift"], default="div", help="floor division form (module doc)")
    p.add_argument("--check", default=None, metavar="AUDIO",
                   help="compare onnxruntime with forward_int on the first utterance of this folder/manifest")


def cmd_export(args) -> int:
    from ..integer_model import load_quantized
    from ..program.onnx_int import export_onnx, integer_only_report
    from ..program.onnx_qdq import export_onnx_qdq

    qmodel = load_quantized(args.model)
    out = export_onnx(qmodel, args.onnx, frames=args.frames, floor=args.floor)
    rep = integer_only_report(out)
    print(f"integer ONNX -> {out} ({out.stat().st_size / 2**20:.1f} MiB, ops: {', '.join(rep['op_types'])}); "
          f"integer-only (bool masks allowed): {'PASS' if rep['ok'] else 'FAIL ' + str(rep['non_integer'][:5])}")
    if args.qdq:
        print(f"Q/DQ ONNX -> {export_onnx_qdq(qmodel, args.qdq, frames=args.frames)}")
    if args.check:
        from .runtime import check_against_forward_int, ort_kernels_exact

        if not ort_kernels_exact(1):   # no VNNI: the comparison would measure onnxruntime's kernels, not the graph
            print("onnxruntime vs forward_int: SKIPPED: onnxruntime's integer kernels are not exact on this CPU "
                  "(ort_kernels_exact() is False: no VNNI, U8S8 pairs of products saturate at int16)")
            return 0 if rep["ok"] else 1
        res = check_against_forward_int(qmodel, out, args.check)
        print(f"onnxruntime vs forward_int on {res['utterance']}: {res['logits']} logits, "
              f"{res['differ']} differ -> {'BIT-EXACT' if res['differ'] == 0 else 'MISMATCH'}")
        return 0 if rep["ok"] and res["differ"] == 0 else 1
    return 0 if rep["ok"] else 1
