"""The `asrquant` command line. Each subcommand is a thin wrapper over one library function."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import paths
from .options import SYNTH_DEFAULTS, add_data_argument, add_model_argument


def _write_json(path: str | None, obj) -> None:
    if not path:
        return
    from .models.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def open_model(path: str | Path):
    """A float `.nemo` model or a quantized model file, by content (``api.open_model``)."""
    from .api import open_model as _open_model

    return _open_model(path)


def cmd_restore_bn(args) -> int:
    import numpy as np
    import torch

    from .data import length_sorted_batches, load_batch, load_dataset
    from .models import ConvASR, config_for, save_model
    from .models.restore_bn import restore_batchnorm

    torch.manual_seed(0)
    folded_path = Path(args.folded)
    if not folded_path.is_file():
        raise FileNotFoundError(f"{folded_path}: folded weights not found")
    try:
        folded = dict(np.load(folded_path))
    except Exception as e:
        raise ValueError(f"{folded_path}: cannot read folded weights (.npz): {e}") from e
    utts = load_dataset(args.audio, require_text=False, limit=args.limit)
    if not utts:
        raise ValueError(f"{args.audio}: no audio files found")
    batches = [load_batch([utts[i] for i in idx]) for idx in length_sorted_batches(utts, args.batch_size)]
    model = ConvASR(config_for(args.arch))
    restore_batchnorm(model, folded, batches, progress=not args.quiet)
    out = save_model(model, args.out)
    from .provenance import file_sha256

    print(f"restored {len(model.batchnorms())} BatchNorm layers from {len(utts)} utterances -> {out}")
    print(f"sha256 {file_sha256(out)}  {out}")  # byte-reproducible whatever the thread count (issue 12)
    return 0


def cmd_import_hama(args) -> int:
    import torch

    from .models import save_model
    from .models.hama import load_hama_model, restore_conformer_bn

    torch.manual_seed(0)
    model = load_hama_model(args.hama)
    note = "folded BatchNorm (identity form)"
    if args.restore_bn:
        from .data import length_sorted_batches, load_batch, load_dataset

        utts = load_dataset(args.audio, require_text=False, limit=args.limit)
        if not utts:
            raise ValueError(f"{args.audio}: no audio files found")
        batches = [load_batch([utts[i] for i in idx]) for idx in length_sorted_batches(utts, args.batch_size)]
        restore_conformer_bn(model, batches, progress=not args.quiet)
        note = f"BatchNorm statistics restored from {len(utts)} utterances of {args.audio}"
    out = save_model(model, args.out)
    print(f"hama Conformer-CTC ({model.config['source'].get('file')}, {len(model.labels)} labels + blank, "
          f"{note}) -> {out}")
    return 0


def _use_runtime(model, runtime: str | None):
    """A quantized model runs on `runtime` (IntegerModel.use_runtime); a float model has one engine."""
    if hasattr(model, "use_runtime"):
        model.use_runtime(runtime)
    return model


def _add_runtime_argument(p) -> None:
    p.add_argument("--runtime", choices=("auto", "c", "torch"), default=None,
                   help="engine of a quantized model: the C runtime (c), the torch integer reference "
                        "(torch), or auto: C where a C compiler builds it, else torch (default: "
                        "$ASRQUANT_RUNTIME, else auto); the same integers on every engine")


def cmd_evaluate(args) -> int:
    from .data import load_dataset
    from .evaluate import evaluate

    model = _use_runtime(open_model(args.model), args.runtime)
    utts = load_dataset(args.data, limit=args.limit)
    result = evaluate(model, utts, batch_size=args.batch_size, progress=not args.quiet, seed=args.seed)
    result["engine"] = model.engine_name() if hasattr(model, "engine_name") else "torch-fp32"
    lo, hi = result["ci95"]
    if "per" in result:  # phoneme models
        print(f"PER {result['per']:.2f}% (95% CI {lo:.2f}-{hi:.2f}; {result['phoneme_errors']} errors / "
              f"{result['phonemes']} phonemes, {result['utterances']} utterances), {result['seconds']:.1f} s")
    else:
        print(f"WER {result['wer']:.2f}% (95% CI {lo:.2f}-{hi:.2f}; {result['word_errors']} errors / "
              f"{result['words']} words, {result['utterances']} utterances), CER {result['cer']:.2f}%, "
              f"{result['seconds']:.1f} s")
    if not args.transcripts:
        result.pop("transcripts")
    _write_json(args.json, result)
    return 0


def cmd_transcribe(args) -> int:
    from .api import expand_inputs, load

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    for out in (args.json, args.ctm):  # before hours of decoding, not after
        _check_output_path(out)
    files = expand_inputs(args.inputs)
    recognizer = load(args.model, runtime=args.runtime)
    if args.chunk_seconds is not None:
        recognizer.chunk_seconds = args.chunk_seconds
    results = recognizer.transcribe_detailed(
        files, batch_size=args.batch_size,
        on_note=lambda note: print(f"asrquant transcribe: note: {note}", file=sys.stderr),
        words=bool(args.json or args.ctm))
    for r in results:
        print(f"{r['file']}\t{r['text']}")
    _write_json(args.json, results)
    if args.ctm:
        from .api import ctm_lines
        from .models.checkpoint import atomic_write_bytes

        text = "".join(line + "\n" for line in ctm_lines(results))
        atomic_write_bytes(args.ctm, lambda f: f.write(text.encode()))
    return 0


def _check_output_path(path: str | None) -> None:
    """Refuse, before any work, an output that cannot be written: a folder, or a path under a file
    or an unwritable folder. Missing folders are fine: outputs are written with their folders
    created (atomic_write_bytes), as every command does."""
    if not path:
        return
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; give an output file name")
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{out}: cannot create the output: {existing} is a file, not a folder")
    import os

    if not os.access(existing, os.W_OK):
        raise PermissionError(f"{out}: cannot write the output: {existing} is not writable")


def cmd_export(args) -> int:
    from .deploy.onnx_export import cmd_export as run

    if not args.onnx and not args.c:
        raise ValueError("export: give --onnx FILE and/or --c DIR")
    rc = 0
    if args.c:
        rc = _export_c(args)
    return rc or (run(args) if args.onnx else 0)


def _export_c(args) -> int:
    """``asrquant export Q --c DIR``: write the C library of Q's program."""
    from .integer_model import load_quantized
    from .program.c_backend import CExportError, export_c

    qmodel = load_quantized(args.model)
    try:
        out = export_c(qmodel.program, args.c, labels=getattr(qmodel, "labels", None))
    except CExportError as e:
        raise CExportError(f"{args.model}: {e}") from None
    size = (out / "model.bin").stat().st_size / 2**20
    print(f"C library -> {out} (model.c, model.bin {size:.1f} MiB, asrq.h, main.c, Makefile): make -C {out}")
    return 0


def cmd_bench(args) -> int:
    from .deploy.bench import cmd_bench as run

    return run(args)


def cmd_synth(args) -> int:
    from .synth import cmd_synth as run

    return run(args)


def calibration_batches(model, args):
    """(mel, lengths) batches for the chosen calibration source (``calibration.calibration_batches``)."""
    from .calibration import calibration_batches as batches

    return batches(model, args.calibration, seed=args.seed, n_batches=args.batches, batch_size=args.batch_size,
                   frames=args.frames, data=args.calibration_data, limit=args.calibration_limit,
                   synth={"iterations": args.iterations, "lr": args.lr}, model_path=args.model,
                   cache_dir=args.cache_dir)


def cmd_quantize(args) -> int:
    import torch

    from .integer_model import save_quantized
    from .models.checkpoint import load_model
    from .quantize import RECIPES, default_recipe, is_conformer, quantize

    torch.manual_seed(args.seed)
    model = load_model(args.model)
    # the recipe: named, or the width's default unless --rounding / --bias-correction say otherwise
    # (and the Conformer, which has round-to-nearest only)
    recipe, explicit = args.recipe, args.rounding is not None or args.bias_correction
    if recipe == "default":
        recipe = ("paper" if explicit or is_conformer(model)
                  else default_recipe(args.weight_bits, mixed_precision=args.size_budget_mb is not None))
    settings = RECIPES[recipe]
    rounding = args.rounding or settings["rounding"]
    ada = {**settings.get("adaround", {}), "cache_dir": args.adaround_cache}
    if args.adaround_iterations is not None:
        ada["iterations"] = args.adaround_iterations
    if args.block_iterations is not None:
        ada["block_iterations"] = args.block_iterations
    # the first block and the decoder: --edge-bits, else the recipe's (a size budget allocates every conv)
    edge_bits = args.edge_bits if args.edge_bits is not None else \
        None if args.size_budget_mb is not None else settings.get("edge_bits")
    # cross-layer equalization of the separable pairs: --equalize / --no-equalize, else the recipe's
    equalize = bool(settings.get("equalize", False) if args.equalize is None else args.equalize)
    # per-group multipliers of the 4-bit convs: --weight-group, else the recipe's (0: per channel)
    weight_group = args.weight_group if args.weight_group is not None else \
        0 if args.size_budget_mb is not None or rounding == "gptq" else settings.get("weight_group", 0)
    start = time.perf_counter()
    batches = calibration_batches(model, args)
    info = {"calibration": args.calibration, "seed": args.seed, "source_model": str(args.model),
            "recipe": "flags" if args.recipe == "default" and explicit else recipe}
    qmodel = quantize(model, batches, args.weight_bits, args.act_bits, observer=args.observer,
                      weight_method=args.weight_method,
                      bias_correction=args.bias_correction or settings["bias_correction"], rounding=rounding,
                      depthwise_bits=args.depthwise_bits, residual_bits=args.residual_bits,
                      prob_bits=args.prob_bits, info=info, size_budget_mb=args.size_budget_mb, adaround=ada,
                      edge_bits=edge_bits or None, equalize=equalize, weight_group=weight_group)
    # synthesis (or feature extraction) + calibration + conversion; cached batches and codes count as read
    qmodel.info["calibration_seconds"] = round(time.perf_counter() - start, 1)
    out = save_quantized(qmodel, args.out)
    edges = f", first block and decoder at {edge_bits} bits" if edge_bits and edge_bits != args.weight_bits else ""
    size = f", weights {qmodel.info['size_mb']:.2f} MiB" if "size_mb" in qmodel.info else ""
    eq = f", {qmodel.info['equalized']} separable pairs equalized" if qmodel.info.get("equalized") else ""
    groups = f", a multiplier per {weight_group} weights" if qmodel.info.get("weight_group") else ""
    print(f"W{args.weight_bits}A{args.act_bits} integer model (recipe {recipe}{edges}{eq}{groups}{size}, "
          f"{args.calibration} calibration, "
          f"{len(batches)} batches, {len(qmodel.program.ops)} integer ops, "
          f"{qmodel.info['calibration_seconds']:.0f} s) -> {out}; "
          f"int64 accumulators: {qmodel.int64_layers() or 'none'}")
    return 0


def cmd_verify(args) -> int:
    from .integer_model import load_quantized
    from .data import load_batch, load_dataset
    from .verify import verify

    qmodel = load_quantized(args.model)
    utts = load_dataset(args.data, require_text=False, limit=args.utterances)
    if not utts:
        raise ValueError(f"{args.data}: no audio found")
    audio, lengths = load_batch(utts)
    report = verify(qmodel, audio, lengths, numpy_items=args.numpy_utterances, max_seconds=args.seconds,
                    backends=args.backends, threads=args.threads)
    ff, bi = report["float_free"], report["batch_invariance"]
    print(f"float-free integer forward: {'PASS' if ff['passed'] else 'FAIL'} "
          f"({ff['ops_recorded']} ops recorded, {report['program_ops']} program ops, input {report['input_dtype']}, "
          f"logits {report['logits_dtype']})" + (f" float ops: {ff['float_ops']}" if ff["float_ops"] else ""))
    pb = report["padded_batch"]
    print(f"backends vs the torch reference on a padded batch of {pb['utterances']} utterances "
          f"(frames {pb['frames']}):")
    for name, r in report["backends"].items():
        if r.get("skipped"):
            print(f"  {name:22s} SKIPPED: {r['skipped']}")
        else:
            print(f"  {name:22s} {'BIT-EXACT' if r['bit_exact'] else 'MISMATCH'} ({r['differ']} of {r['logits']} "
                  f"logits differ, max |diff| {r['max_abs_diff']})")
    for name, r in report.get("simulated", {}).items():
        if r.get("skipped"):
            print(f"  {name:22s} SKIPPED: {r['skipped']}")
        else:
            print(f"  {name:22s} simulated (float): frame argmax agreement {r['argmax_agreement']:.4f}, "
                  f"max |diff| {r['max_abs_diff_real']:.3g} (real units)")
    print(f"batch/padding invariance: {'PASS' if bi['passed'] else 'FAIL'} ({bi['utterances']} utterances; "
          f"integer logits identical: {bi['integer_logits_identical']}, transcripts identical: "
          f"{bi['transcripts_identical']})")
    print(f"int64 accumulator layers: {report['int64_accumulator_layers'] or 'none'}")
    print(f"verify: {'PASS' if report['passed'] else 'FAIL'}")
    if args.json:
        from .provenance import provenance

        # how the model was made (recipe, widths, calibration time), without the machine's paths
        report["quantization"] = {k: v for k, v in qmodel.info.items() if k != "source_model"}
        report["provenance"] = provenance(args.model, utts, {
            "utterances": args.utterances, "crop_seconds": args.seconds, "numpy_utterances": args.numpy_utterances,
            "backends": " ".join(args.backends or []) or "all", "verify_threads": args.threads})
    _write_json(args.json, report)
    return 0 if report["passed"] else 1


def cmd_grid(args) -> int:
    import pandas as pd

    from .tables import GridSpec, run_grid, summarize

    if args.residual_bits or args.prob_bits:
        raise ValueError("grid: --residual-bits / --prob-bits are not grid settings yet (use `asrquant quantize`)")
    bits = tuple(tuple(int(x) for x in b.split("/")) for b in args.bits)
    synth = {"n_batches": args.synth_batches, "batch_size": 8, "frames": args.synth_frames,
             "iterations": args.synth_iterations, "lr": args.lr}
    spec = GridSpec(bits=bits, calibrations=tuple(args.calibrations), seeds=tuple(args.seeds), synth=synth,
                    random_batches=args.synth_batches, random_frames=args.synth_frames, real_limit=args.real_limit,
                    observer=args.observer, weight_method=args.weight_method, bias_correction=args.bias_correction,
                    depthwise_bits=args.depthwise_bits or 0, rounding=args.rounding, simulated=args.simulated)
    run_kw = dict(workers=args.workers, scheduler=args.scheduler, threads=args.threads,
                  shard_utterances=args.shard_utterances)
    if args.profile == "paper":
        from .tables import run_paper_profile

        run_paper_profile(args.model, args.paper_data, Path(args.out).parent, args.cache_dir, not args.quiet, **run_kw)
        return 0
    df = run_grid(args.model, args.data, args.out, spec, calib_data=args.calibration_data,
                  cache_dir=args.cache_dir, limit=args.limit, progress=not args.quiet, **run_kw)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        cols = ["model", "w_bits", "a_bits", "calibration", "observer", "weight_method", "bias_correction",
                "depthwise_bits", "rounding", "nonlinear", "metric", "rate_mean", "rate_std", "seeds", "units",
                "unit_errors_mean", "size_mb", "delta_vs_fp32"]   # settings columns and hashes: in the CSV
        print(summarize(df)[cols].round(2).to_string(index=False))
    print(f"rows: {len(df)} -> {args.out}")
    return 0


def _add_quantization_options(p: argparse.ArgumentParser) -> None:
    """Range and rounding choices shared by `quantize` and `grid`."""
    p.add_argument("--observer", choices=["minmax", "ema", "percentile"], default="minmax")
    p.add_argument("--weight-method", choices=["minmax", "mse", "percentile"], default="minmax")
    p.add_argument("--depthwise-bits", type=int, default=None,
                   help="weight width of the depthwise convs (default: the same as the other weights)")
    from .quantize import ROUNDINGS   # no torch import: --help stays fast

    p.add_argument("--rounding", choices=list(ROUNDINGS), default="nearest",
                   help="weight rounding: nearest, gptq (output-aware, on the calibration data) or adaround "
                        "(learned rounding by reconstruction on the calibration data)")
    p.add_argument("--residual-bits", type=int, default=None,
                   help="Conformer: width of the residual stream (default: --act-bits)")
    p.add_argument("--prob-bits", type=int, default=None,
                   help="Conformer: width of the attention probabilities (default: --act-bits; 16 helps long inputs)")
    p.add_argument("--bias-correction", action="store_true",
                   help="correct biases for the mean shift weight rounding causes (input means from the calibration data)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asrquant", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("restore-bn", help="restore BatchNorm layers into a BN-folded checkpoint")
    r.add_argument("--folded", default=str(paths.folded_weights()), help="folded weights (.npz)")
    r.add_argument("--audio", default=str(paths.librispeech("train-clean-100")),
                   help="training-split audio folder or manifest")
    r.add_argument("--arch", default="quartznet15x5")
    r.add_argument("--out", default=str(paths.restored_model()))
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--limit", type=int, default=None, help="use only the first N utterances")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_restore_bn)

    e = sub.add_parser("evaluate", help="WER/CER of a float or quantized model")
    add_model_argument(e, help="a float .nemo or a quantized .aqz model (default: the restored QuartzNet-15x5)")
    add_data_argument(e)
    e.add_argument("--json", default=None, help="write the summary here")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed for the confidence interval")
    e.add_argument("--transcripts", action="store_true", help="include per-utterance transcripts in the JSON")
    e.add_argument("--quiet", action="store_true")
    _add_runtime_argument(e)
    e.set_defaults(func=cmd_evaluate)

    t = sub.add_parser("transcribe", help="transcribe audio files, folders or a manifest with any model")
    t.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio files (any format soundfile reads, any rate and channel count), folders "
                        "(searched recursively) or NeMo JSON-lines manifests")
    add_model_argument(t, required=True, help="a float .nemo or a quantized .aqz model")
    t.add_argument("--json", default=None,
                   help="also write [{file, text, seconds, words: [{word, start, end}, ...]}, ...] here "
                        "(word times in seconds, from the CTC frames)")
    t.add_argument("--ctm", default=None,
                   help="also write the words as CTM lines here: <file-id> 1 <start> <duration> <word> "
                        "(file-id: the file name without its extension)")
    _add_runtime_argument(t)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--chunk-seconds", type=float, default=None,
                   help="decode inputs longer than this in windows of this length, overlapping by 4 s "
                        "(at most a quarter of a window; default 40; the hama Conformer's front end reads "
                        "at most 30 s)")
    t.set_defaults(func=cmd_transcribe)

    h = sub.add_parser("import-hama", help="the `hama` package's pretrained phoneme Conformer-CTC as a .nemo")
    h.add_argument("--out", required=True, help="output .nemo")
    h.add_argument("--hama", default=None, help="a .hama file (default: the installed package's asr_waveform.hama)")
    h.add_argument("--restore-bn", action="store_true",
                   help="measure the conv modules' BatchNorm statistics on --audio (function unchanged)")
    h.add_argument("--audio", default=str(paths.librispeech("train-clean-100")),
                   help="training-split audio folder or manifest for --restore-bn")
    h.add_argument("--batch-size", type=int, default=8)
    h.add_argument("--limit", type=int, default=None, help="use only the first N utterances")
    h.add_argument("--quiet", action="store_true")
    h.set_defaults(func=cmd_import_hama)

    q = sub.add_parser("quantize", help="calibrate and convert a float .nemo model to an integer-only model")
    add_model_argument(q)
    q.add_argument("--weight-bits", type=int, default=8)
    q.add_argument("--act-bits", type=int, default=8)
    q.add_argument("--calibration", choices=["synthetic", "real", "random"], default="synthetic")
    q.add_argument("--calibration-data", default=None, help="audio folder or manifest for --calibration real")
    q.add_argument("--calibration-limit", type=int, default=None, help="use only the first N calibration files")
    _add_quantization_options(q)
    q.add_argument("--batches", type=int, default=1, help="synthetic/random batches")
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--frames", type=int, default=SYNTH_DEFAULTS["frames"], help="synthetic/random input length T")
    q.add_argument("--iterations", type=int, default=SYNTH_DEFAULTS["iterations"],
                   help="synthetic: Adam iterations per batch")
    q.add_argument("--lr", type=float, default=SYNTH_DEFAULTS["lr"], help="synthetic: Adam learning rate")
    q.add_argument("--cache-dir", default=str(paths.build_dir() / "synth_cache"))
    q.add_argument("--size-budget-mb", type=float, default=None,
                   help="mixed precision: 4/6/8-bit weights per conv by sensitivity, fitting this many MiB")
    q.add_argument("--recipe", choices=["default", "paper", "bc", "adaround", "grouped"], default="default",
                   help="paper: round-to-nearest as the paper (the grid's setting); bc: + bias correction; adaround: "
                        "learned rounding with joint bias correction on the synthetic batches, first block and "
                        "decoder at 8 bits, separable pairs equalized; grouped: adaround on a finer grid, a 4-bit "
                        "integer multiplier per 16 weights of a row (quant/groups.py); default: the measured best of "
                        "the width (grouped at 4 bits, bc at 6, paper at 8; bc under --size-budget-mb; explicit "
                        "--rounding / --bias-correction: paper's plus those)")
    q.add_argument("--edge-bits", type=int, default=None,
                   help="weight width of the first block's convs and the decoder (default: the recipe's; "
                        "0: --weight-bits like every other conv)")
    q.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=None,
                   help="cross-layer equalization (weights only) of the separable pairs below 8 bits before "
                        "calibrating (default: the recipe's)")
    q.add_argument("--weight-group", type=int, default=None,
                   help="an integer multiplier (4 bits) per group of this many weights of a row, for the convs of at "
                        "most 4 bits (quant.groups; 0: per-channel scales only; default: the recipe's)")
    q.add_argument("--adaround-iterations", type=int, default=None,
                   help="--rounding adaround: Adam steps per conv (default: the recipe's)")
    q.add_argument("--block-iterations", type=int, default=None,
                   help="--rounding adaround: then block reconstruction, Adam steps per block (0: off; default: the "
                        "recipe's)")
    q.add_argument("--adaround-cache", default=str(paths.build_dir() / "adaround_cache"),
                   help="--rounding adaround: where each block's learned codes are kept (resumable)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_quantize, rounding=None)   # None: the recipe's rounding

    g = sub.add_parser("grid", help="Table 1/2 experiment grid: W/A x calibration x seed -> tidy CSV (resumable)")
    add_model_argument(g)
    add_data_argument(g)
    g.add_argument("--calibration-data", default=str(paths.librispeech("train-clean-100")))
    g.add_argument("--out", default=str(paths.build_dir() / "results" / "grid.csv"))
    g.add_argument("--bits", nargs="+", default=["8/8", "6/8", "4/8"], help="W/A settings")
    g.add_argument("--calibrations", nargs="+", default=["synthetic", "random", "real"],
                   choices=["synthetic", "random", "real"])
    g.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    g.add_argument("--synth-batches", type=int, default=1)
    g.add_argument("--synth-frames", type=int, default=SYNTH_DEFAULTS["frames"])
    g.add_argument("--synth-iterations", "--iterations", type=int, default=SYNTH_DEFAULTS["iterations"])
    g.add_argument("--lr", type=float, default=SYNTH_DEFAULTS["lr"])
    g.add_argument("--real-limit", type=int, default=None)
    _add_quantization_options(g)
    g.add_argument("--cache-dir", default=str(paths.build_dir() / "synth_cache"))
    g.add_argument("--limit", type=int, default=None, help="evaluate on the first N utterances only")
    g.add_argument("--simulated", action="store_true",
                   help="Conformer: also evaluate each setting with float non-linearities (fake quantization) to "
                        "separate the cost of the integer approximations from that of quantization")
    g.add_argument("--workers", type=int, default=1,
                   help="Dask LocalCluster worker processes (1: run the cells here, one after another)")
    g.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (instead of --workers)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads per task (default: cores // workers locally, the worker's default on a scheduler)")
    g.add_argument("--shard-utterances", type=int, default=200,
                   help="Dask: evaluation shard size in utterances (whole batches of 8)")
    g.add_argument("--profile", choices=["paper"], default=None,
                   help="paper: Kim et al.'s protocol (tables.PAPER_PROFILE; days of CPU, meant for a cluster), "
                        "one CSV per split beside --out")
    g.add_argument("--paper-data", default=str(paths.shared_dir() / "data"),
                   help="--profile paper: folder holding LibriSpeech/<split> (missing splits are downloaded)")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_grid)

    # argument helpers import no torch, so `--help` stays fast; the commands import it when run
    from .deploy.bench import add_bench_arguments
    from .deploy.onnx_export import add_export_arguments
    from .options import add_synth_arguments

    ex = sub.add_parser("export", help="export an integer model to ONNX (integer operators only) and/or C")
    add_export_arguments(ex)
    next(a for a in ex._actions if a.dest == "onnx").required = False  # --c alone is an export too
    ex.add_argument("--c", default=None, metavar="DIR",
                    help="write a self-contained C99 library + CLI of the program here (`make -C DIR`)")
    ex.set_defaults(func=cmd_export)

    be = sub.add_parser("bench", help="FP32 vs INT8 latency of the same model, side by side")
    add_bench_arguments(be)
    be.set_defaults(func=cmd_bench)

    sy = sub.add_parser("synth", help="generate zero-shot synthetic calibration batches (paper Eq. 2) into a cache")
    add_synth_arguments(sy)
    sy.set_defaults(func=cmd_synth)

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
                        "fast-float-exact onnx-qdq)")
    v.add_argument("--threads", type=int, default=1)
    v.add_argument("--json", default=None)
    v.set_defaults(func=cmd_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError, OSError, NotImplementedError, OverflowError, RuntimeError,
            ImportError, MemoryError) as e:
        # library errors name the file and the problem: one line, no traceback (RuntimeError covers
        # NativeBuildError and DeploymentUnavailable; ImportError a missing optional package; a bug
        # elsewhere still shows its traceback)
        message = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the library wrote
        print(f"asrquant {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
