"""The `asrquant` command line. Each subcommand is a thin wrapper over one library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import paths


def _write_json(path: str | None, obj: dict) -> None:
    if not path:
        return
    from .models.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def open_model(path: str | Path):
    """A float `.nemo` model or a quantized model file, by content."""
    path = Path(path)
    from .models.checkpoint import load_model

    try:
        from .convert import is_quantized_file, load_quantized
    except ImportError:  # the integer engine is optional for float-only use
        return load_model(path)
    if path.is_file() and is_quantized_file(path):
        return load_quantized(path)
    return load_model(path)


def cmd_restore_bn(args) -> int:
    import numpy as np
    import torch

    from .data import load_batch, load_dataset
    from .evaluate import length_sorted_batches
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
    print(f"restored {len(model.batchnorms())} BatchNorm layers from {len(utts)} utterances -> {out}")
    return 0


def cmd_evaluate(args) -> int:
    from .data import load_dataset
    from .evaluate import evaluate

    model = open_model(args.model)
    utts = load_dataset(args.data, limit=args.limit)
    result = evaluate(model, utts, batch_size=args.batch_size, progress=not args.quiet, seed=args.seed)
    lo, hi = result["ci95"]
    print(f"WER {result['wer']:.2f}% (95% CI {lo:.2f}-{hi:.2f}; {result['word_errors']} errors / "
          f"{result['words']} words, {result['utterances']} utterances), CER {result['cer']:.2f}%, "
          f"{result['seconds']:.1f} s")
    if not args.transcripts:
        result.pop("transcripts")
    _write_json(args.json, result)
    return 0


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
    e.add_argument("--model", default=str(paths.restored_model()))
    e.add_argument("--data", default=str(paths.librispeech("test-other")), help="LibriSpeech folder or manifest")
    e.add_argument("--json", default=None, help="write the summary here")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed for the confidence interval")
    e.add_argument("--transcripts", action="store_true", help="include per-utterance transcripts in the JSON")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        print(f"asrquant {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
