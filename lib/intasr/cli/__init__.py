"""The `intasr` command line. Each subcommand is a thin wrapper over one library function.

One module per group of commands: ``float_models`` (restore-bn, import-hama), ``recognize``
(evaluate, transcribe), ``quantize`` (quantize, synth), ``grid``, ``deploy`` (export, bench,
verify). Each command is a ``cmd_*`` function and an ``add_*`` function that registers its
subparser; the options several commands share are ``intasr.options`` (--model, --data, the
synthesis options) and ``common`` (the quantization recipe, --runtime). Nothing imported here
imports torch: the commands import it when they run, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from . import deploy, float_models, grid, quantize, recognize

#: every subcommand's registration, in the order `intasr --help` lists them
SUBCOMMANDS = (float_models.add_restore_bn, recognize.add_evaluate, recognize.add_transcribe,
               float_models.add_import_hama, quantize.add_quantize, grid.add_grid, deploy.add_export,
               deploy.add_bench, quantize.add_synth, deploy.add_verify)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="intasr", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
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
        print(f"intasr {args.command}: error: {message}", file=sys.stderr)
        return 2
