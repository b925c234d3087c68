"""What several `intasr` commands share: the quantization-recipe options (`quantize`, `grid`),
the --runtime option of the commands that run a quantized model, and the checks and writers of
their output files. The model, data and synthesis options are `intasr.options`'s (one
definition each). Nothing here imports torch, so `--help` stays fast."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """Range and rounding choices shared by `quantize` and `grid`."""
    p.add_argument("--observer", choices=["minmax", "ema", "percentile"], default="minmax")
    p.add_argument("--weight-method", choices=["minmax", "mse", "percentile"], default="minmax")
    p.add_argument("--depthwise-bits", type=int, default=None,
                   help="weight width of the depthwise convs (default: the same as the other weights)")
    from ..quantize import ROUNDINGS   # no torch import: --help stays fast

    p.add_argument("--rounding", choices=list(ROUNDINGS), default="nearest",
                   help="weight rounding: nearest, gptq (output-aware, on the calibration data) or adaround "
                        "(learned rounding by reconstruction on the calibration data)")
    p.add_argument("--residual-bits", type=int, default=None,
                   help="Conformer: width of the residual stream (default: --act-bits)")
    p.add_argument("--prob-bits", type=int, default=None,
                   help="Conformer: width of the attention probabilities (default: --act-bits; 16 helps long inputs)")
    p.add_argument("--bias-correction", action="store_true",
                   help="correct biases for the mean shift weight rounding causes (input means from the calibration data)")


def add_runtime_argument(p: argparse.ArgumentParser) -> None:
    """--runtime: which engine runs a quantized model (`evaluate`, `transcribe`)."""
    p.add_argument("--runtime", choices=("auto", "c", "torch"), default=None,
                   help="engine of a quantized model: the C runtime (c), the torch integer reference "
                        "(torch), or auto: C where a C compiler builds it, else torch (default: "
                        "$INTASR_RUNTIME, else auto); the same integers on every engine")


def write_json(path: str | None, obj) -> None:
    """`obj` as indented JSON at `path`, written atomically; nothing when `path` is empty."""
    if not path:
        return
    from ..models.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def check_output_path(path: str | None) -> None:
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
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"{out}: cannot write the output: {existing} is not writable")
