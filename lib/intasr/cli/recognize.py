"""`intasr evaluate` (error rates on a labelled set) and `intasr transcribe` (text of any audio):
a float or quantized model run on audio."""

from __future__ import annotations

import sys

from ..options import add_data_argument, add_model_argument
from .common import add_runtime_argument, check_output_path, write_json


def _rate_line(result: dict) -> str:
    """The one-line summary: PER for a phoneme model, else WER and CER, with the 95% CI and counts."""
    lo, hi = result["ci95"]
    if "per" in result:  # phoneme models
        return (f"PER {result['per']:.2f}% (95% CI {lo:.2f}-{hi:.2f}; {result['phoneme_errors']} errors / "
                f"{result['phonemes']} phonemes, {result['utterances']} utterances), {result['seconds']:.1f} s")
    return (f"WER {result['wer']:.2f}% (95% CI {lo:.2f}-{hi:.2f}; {result['word_errors']} errors / "
            f"{result['words']} words, {result['utterances']} utterances), CER {result['cer']:.2f}%, "
            f"{result['seconds']:.1f} s")


def cmd_evaluate(args) -> int:
    from ..api import open_for_decoding
    from ..data import load_dataset
    from ..evaluate import evaluate

    model = open_for_decoding(args.model, args.runtime)
    utts = load_dataset(args.data, limit=args.limit)
    result = evaluate(model, utts, batch_size=args.batch_size, progress=not args.quiet, seed=args.seed)
    result["engine"] = model.engine_name() if hasattr(model, "engine_name") else "torch-fp32"
    print(_rate_line(result))
    if not args.transcripts:
        result.pop("transcripts")
    write_json(args.json, result)
    return 0


def cmd_transcribe(args) -> int:
    from ..api import ctm_lines, expand_inputs, load
    from ..models.checkpoint import atomic_write_bytes

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    for out in (args.json, args.ctm):  # before hours of decoding, not after
        check_output_path(out)
    files = expand_inputs(args.inputs)
    recognizer = load(args.model, runtime=args.runtime)
    if args.chunk_seconds is not None:
        recognizer.chunk_seconds = args.chunk_seconds
    results = recognizer.transcribe_detailed(
        files, batch_size=args.batch_size,
        on_note=lambda note: print(f"intasr transcribe: note: {note}", file=sys.stderr),
        words=bool(args.json or args.ctm))
    for r in results:
        print(f"{r['file']}\t{r['text']}")
    write_json(args.json, results)
    if args.ctm:
        text = "".join(line + "\n" for line in ctm_lines(results))
        atomic_write_bytes(args.ctm, lambda f: f.write(text.encode()))
    return 0


def add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="WER/CER of a float or quantized model")
    add_model_argument(e, help="a float .nemo or a quantized .aqz model (default: the restored QuartzNet-15x5)")
    add_data_argument(e)
    e.add_argument("--json", default=None, help="write the summary here")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed for the confidence interval")
    e.add_argument("--transcripts", action="store_true", help="include per-utterance transcripts in the JSON")
    e.add_argument("--quiet", action="store_true")
    add_runtime_argument(e)
    e.set_defaults(func=cmd_evaluate)


def add_transcribe(sub) -> None:
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
    add_runtime_argument(t)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--chunk-seconds", type=float, default=None,
                   help="decode inputs longer than this in windows of this length, overlapping by 4 s "
                        "(at most a quarter of a window; default 40; the hama Conformer's front end reads "
                        "at most 30 s)")
    t.set_defaults(func=cmd_transcribe)
