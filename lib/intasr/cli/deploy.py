"""`intasr export` (the integer program as ONNX and/or C), `intasr bench` (FP32 vs INT8
latency, ``deploy.bench``) and `intasr verify` (float-free, bit-exact, batch-invariant,
``verify.verify``): the commands about running an integer model elsewhere."""

from __future__ import annotations

import argparse

from ..options import add_data_argument, add_model_argument
from .common import write_json


# --------------------------------------------------------------------------- export

def _export_onnx(args) -> int:
    """``intasr export Q --onnx FILE [--qdq FILE] [--check AUDIO]``: 0 when the graph is
    integer-only (and, with --check on a CPU whose onnxruntime kernels are exact, bit-exact)."""
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
    if not args.check:
        return 0 if rep["ok"] else 1
    from ..deploy.runtime import check_against_forward_int, ort_kernels_exact

    if not ort_kernels_exact(1):   # no VNNI: the comparison would measure onnxruntime's kernels, not the graph
        print("onnxruntime vs forward_int: SKIPPED: onnxruntime's integer kernels are not exact on this CPU "
              "(ort_kernels_exact() is False: no VNNI, U8S8 pairs of products saturate at int16)")
        return 0 if rep["ok"] else 1
    res = check_against_forward_int(qmodel, out, args.check)
    print(f"onnxruntime vs forward_int on {res['utterance']}: {res['logits']} logits, "
          f"{res['differ']} differ -> {'BIT-EXACT' if res['differ'] == 0 else 'MISMATCH'}")
    return 0 if rep["ok"] and res["differ"] == 0 else 1


def _export_c(args) -> int:
    """``intasr export Q --c DIR``: write the C library of Q's program."""
    from ..integer_model import load_quantized
    from ..program.c_backend import CExportError, export_c

    qmodel = load_quantized(args.model)
    try:
        out = export_c(qmodel.program, args.c, labels=getattr(qmodel, "labels", None))
    except CExportError as e:
        raise CExportError(f"{args.model}: {e}") from None
    size = (out / "model.bin").stat().st_size / 2**20
    print(f"C library -> {out} (model.c, model.bin {size:.1f} MiB, asrq.h, main.c, Makefile): make -C {out}")
    return 0


def cmd_export(args) -> int:
    if not args.onnx and not args.c:
        raise ValueError("export: give --onnx FILE and/or --c DIR")
    rc = 0
    if args.c:
        rc = _export_c(args)
    return rc or (_export_onnx(args) if args.onnx else 0)


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export an integer model to ONNX (integer operators only) and/or C")
    p.add_argument("model", help="quantized model file (.aqz, from `intasr quantize`)")
    p.add_argument("--onnx", help="output .onnx (integer-only graph of the program; inputs q, lengths)")
    p.add_argument("--qdq", default=None, help="also write the Q/DQ (TensorRT) form here")
    p.add_argument("--frames", type=int, default=None, help="fix the number of input frames (default dynamic)")
    p.add_argument("--floor", choices=["div", "shift"], default="div", help="floor division form (module doc)")
    p.add_argument("--check", default=None, metavar="AUDIO",
                   help="compare onnxruntime with forward_int on the first utterance of this folder/manifest")
    p.add_argument("--c", default=None, metavar="DIR",
                   help="write a self-contained C99 library + CLI of the program here (`make -C DIR`)")
    p.set_defaults(func=cmd_export)


# --------------------------------------------------------------------------- bench

def _bench_record(args, res: dict, runtimes, peer: dict) -> None:
    """Add to `res` each runtime's peak memory (unless --no-memory), the files named relative to the
    repository (build/..., ../shared/...; never this machine's paths), and where the timing came
    from (issue 12): model files, every setting, code version, machine."""
    from ..deploy.bench import peak_memory
    from ..paths import display_path
    from ..provenance import file_sha256, provenance

    if args.memory:
        mem = peak_memory(args.model, args.quantized, list(res["runtimes"]), args.threads, args.seconds,
                          {**peer, "progress": False})
        res["base_rss_mib"] = mem.pop("base")
        for n, mib in mem.items():
            res["runtimes"][n]["added_rss_mib"] = mib
    res["calibration_data"] = display_path(peer["calibration_data"])
    res["calibration_limit"] = peer["limit"]
    res["model_path"], res["quantized_path"] = display_path(args.model), display_path(args.quantized)
    res["provenance"] = provenance(args.model, settings={
        "quantized_sha256": file_sha256(args.quantized), "seconds": args.seconds, "batch": args.batch,
        "bench_threads": args.threads, "repeats": args.repeats, "warmup": args.warmup, "runtimes": " ".join(runtimes),
        "protocol": res.get("protocol"), "turns": res.get("turns"),
        "calibration_data": res["calibration_data"], "calibration_limit": peer["limit"]})


def cmd_bench(args) -> int:
    from ..integer_model import load_quantized
    from ..deploy.bench import bench, default_runtimes, format_report
    from ..models.checkpoint import load_model
    from ..paths import librispeech

    model = load_model(args.model)
    qmodel = load_quantized(args.quantized)
    runtimes = args.runtimes or default_runtimes(model)
    peer = {"model_path": args.model, "calibration_data": args.calibration_data or str(librispeech("train-clean-100")),
            "limit": args.calibration_limit, "progress": not args.quiet}
    audio = args.audio
    if audio is None and librispeech("test-other").is_dir():
        audio = str(librispeech("test-other"))
    res = bench(model, qmodel, args.seconds, args.batch, args.threads, args.repeats, args.warmup,
                runtimes=runtimes, progress=not args.quiet, peer=peer, audio=None if audio == "random" else audio,
                isolate=(args.model, args.quantized) if args.isolate else None, settle=args.settle)
    _bench_record(args, res, runtimes, peer)
    print(format_report(res))
    write_json(args.json, res)
    return 0


def add_bench(sub) -> None:
    from ..deploy.bench import CONFORMER_RUNTIMES, RUNTIMES   # no torch import: --help stays fast

    p = sub.add_parser("bench", help="FP32 vs INT8 latency of the same model, side by side")
    add_model_argument(p, required=True, help="float model (.nemo)")
    p.add_argument("--quantized", required=True, help="its integer model (.aqz from `intasr quantize`)")
    p.add_argument("--seconds", type=float, default=10.0, help="input length in seconds of 16 kHz audio")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for every runtime")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per runtime (interleaved)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runtimes", nargs="+", default=None, choices=list(RUNTIMES),
                   help="default: every FP32 and INT8 runtime the model has (the Conformer: "
                        + ", ".join(CONFORMER_RUNTIMES) + ")")
    p.add_argument("--calibration-data", default=None,
                   help="audio for onnxruntime-static-int8's quantize_static calibration (default: the shared "
                        "train-clean-100, as `intasr quantize --calibration real`)")
    p.add_argument("--calibration-limit", type=int, default=None, help="use only the first N calibration files")
    p.add_argument("--audio", default=None,
                   help="speech for the input: a LibriSpeech folder or manifest, its utterances joined and cut to "
                        "--seconds (default: the shared test-other when present; 'random': random log-mel values)")
    p.add_argument("--isolate", action="store_true",
                   help="each runtime in a process of its own, rounds still interleaved (no thread pool of one "
                        "runtime spins beside another's; what a deployment of one runtime sees)")
    p.add_argument("--back-to-back", dest="settle", action="store_false",
                   help="time each run right after the previous runtime's (default: after a 50 ms pause and one "
                        "untimed run of its own, so no other runtime's thread pool still spins on the cores)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip each runtime's peak memory (a process per runtime, seconds each)")
    p.add_argument("--json", default=None, help="write the full result here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench)


# --------------------------------------------------------------------------- verify

def _verify_lines(report: dict) -> list[str]:
    """The human-readable verdicts of a ``verify.verify`` report, one line each."""
    ff, bi, pb = report["float_free"], report["batch_invariance"], report["padded_batch"]
    lines = [f"float-free integer forward: {'PASS' if ff['passed'] else 'FAIL'} "
             f"({ff['ops_recorded']} ops recorded, {report['program_ops']} program ops, input {report['input_dtype']}, "
             f"logits {report['logits_dtype']})" + (f" float ops: {ff['float_ops']}" if ff["float_ops"] else ""),
             f"backends vs the torch reference on a padded batch of {pb['utterances']} utterances "
             f"(frames {pb['frames']}):"]
    for name, r in report["backends"].items():
        if r.get("skipped"):
            lines.append(f"  {name:22s} SKIPPED: {r['skipped']}")
        else:
            lines.append(f"  {name:22s} {'BIT-EXACT' if r['bit_exact'] else 'MISMATCH'} ({r['differ']} of "
                         f"{r['logits']} logits differ, max |diff| {r['max_abs_diff']})")
    for name, r in report.get("simulated", {}).items():
        if r.get("skipped"):
            lines.append(f"  {name:22s} SKIPPED: {r['skipped']}")
        else:
            lines.append(f"  {name:22s} simulated (float): frame argmax agreement {r['argmax_agreement']:.4f}, "
                         f"max |diff| {r['max_abs_diff_real']:.3g} (real units)")
    lines += [f"batch/padding invariance: {'PASS' if bi['passed'] else 'FAIL'} ({bi['utterances']} utterances; "
              f"integer logits identical: {bi['integer_logits_identical']}, transcripts identical: "
              f"{bi['transcripts_identical']})",
              f"int64 accumulator layers: {report['int64_accumulator_layers'] or 'none'}",
              f"verify: {'PASS' if report['passed'] else 'FAIL'}"]
    return lines


def cmd_verify(args) -> int:
    from ..integer_model import load_quantized
    from ..data import load_batch, load_dataset
    from ..provenance import provenance
    from ..verify import verify

    qmodel = load_quantized(args.model)
    utts = load_dataset(args.data, require_text=False, limit=args.utterances)
    if not utts:
        raise ValueError(f"{args.data}: no audio found")
    audio, lengths = load_batch(utts)
    report = verify(qmodel, audio, lengths, numpy_items=args.numpy_utterances, max_seconds=args.seconds,
                    backends=args.backends, threads=args.threads)
    print("\n".join(_verify_lines(report)))
    if args.json:
        # how the model was made (recipe, widths, calibration time), without the machine's paths
        report["quantization"] = {k: v for k, v in qmodel.info.items() if k != "source_model"}
        report["provenance"] = provenance(args.model, utts, {
            "utterances": args.utterances, "crop_seconds": args.seconds, "numpy_utterances": args.numpy_utterances,
            "backends": " ".join(args.backends or []) or "all", "verify_threads": args.threads})
    write_json(args.json, report)
    return 0 if report["passed"] else 1


def add_verify(sub) -> None:
    v = sub.add_parser("verify", help="prove a quantized model float-free, bit-exact and batch-invariant")
    v.add_argument("model", help="quantized model file")
    add_data_argument(v)
    v.add_argument("--utterances", type=int, default=3, help="utterances in the padded test batch")
    v.add_argument("--numpy-utterances", type=int, default=None,
                   help="utterances of the padded batch the NumPy backend replays (default: all)")
    v.add_argument("--seconds", type=float, default=6.0,
                   help="crop each utterance to at most this long (the NumPy replay is slow); 0: no crop")
    v.add_argument("--backends", nargs="+", default=None,
                   help="backends to compare with the torch reference (default: all: numpy onnx-int fast-native "
                        "fast-float-exact c onnx-qdq)")
    v.add_argument("--threads", type=int, default=1)
    v.add_argument("--json", default=None)
    v.set_defaults(func=cmd_verify)
