"""The command line's shared options, in a module that imports no torch (so `--help` is fast): the
synthesis defaults, once, and the arguments several commands take (`--model`, `--data`, the
synthesis settings of `synth`, `quantize` and `grid`)."""

# The paper's synthesis settings (Sec. 2.2): batches of 8 inputs of 500 frames (5 s), 200 Adam
# iterations at learning rate 0.05. `synth.DEFAULT_PARAMS`, `intasr synth`, `quantize` and
# `grid` read them from here.
SYNTH_DEFAULTS = {"n_batches": 1, "batch_size": 8, "frames": 500, "iterations": 200, "lr": 0.05}


def add_model_argument(parser, *, required: bool = False, help: str | None = None) -> None:
    """--model: a model file; by default the restored QuartzNet-15x5 (`make model`)."""
    from . import paths

    kw = {"required": True} if required else {"default": str(paths.restored_model())}
    parser.add_argument("--model", help=help or "float .nemo model (default: the restored QuartzNet-15x5)", **kw)


def add_data_argument(parser, help: str = "LibriSpeech folder or NeMo manifest (default: test-other)") -> None:
    """--data: the evaluation audio; by default the shared test-other folder."""
    from . import paths

    parser.add_argument("--data", default=str(paths.librispeech("test-other")), help=help)


def add_synthesis_options(parser, batches: int = SYNTH_DEFAULTS["n_batches"]) -> None:
    """The synthesis settings of every command that calibrates on synthetic (or random) batches,
    defaulting to SYNTH_DEFAULTS; the grid's `--synth-*` spellings are aliases of the same options."""
    g = parser.add_argument_group("synthetic calibration batches (paper Eq. 2)")
    g.add_argument("--batches", "--synth-batches", dest="batches", type=int, default=batches,
                   help=f"number of batches (default {batches}; the paper: 20)")
    g.add_argument("--batch-size", "--synth-batch-size", dest="batch_size", type=int,
                   default=SYNTH_DEFAULTS["batch_size"], help="inputs per batch")
    g.add_argument("--frames", "--synth-frames", dest="frames", type=int, default=SYNTH_DEFAULTS["frames"],
                   help="frames T per input (500 = 5 s)")
    g.add_argument("--iterations", "--synth-iterations", dest="iterations", type=int,
                   default=SYNTH_DEFAULTS["iterations"], help="Adam iterations per batch")
    g.add_argument("--lr", "--synth-lr", dest="lr", type=float, default=SYNTH_DEFAULTS["lr"], help="Adam learning rate")


def synthesis_settings(args) -> dict:
    """The synthesis options of parsed `args` as the settings record (SYNTH_DEFAULTS' keys)."""
    return {"n_batches": args.batches, "batch_size": args.batch_size, "frames": args.frames,
            "iterations": args.iterations, "lr": args.lr}


def add_synth_arguments(parser) -> None:
    """Arguments of `intasr synth` (registered in cli/quantize.py)."""
    from . import paths

    add_model_argument(parser)
    parser.add_argument("--out", default=str(paths.build_dir() / "synth_cache"),
                        help="cache folder; batches go to OUT/<key>/")
    add_synthesis_options(parser, batches=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the summary here")
    parser.add_argument("--quiet", action="store_true")
