"""The command line's shared options, in a module that imports no torch (so `--help` is fast): the
synthesis defaults, once, and the arguments several commands take (`--model`, `--data`, the
synthesis set of `asrquant synth`)."""

# The paper's synthesis settings (Sec. 2.2): batches of 8 inputs of 500 frames (5 s), 200 Adam
# iterations at learning rate 0.05. `synth.DEFAULT_PARAMS`, `asrquant synth`, `quantize` and
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


def add_synth_arguments(parser) -> None:
    """Arguments of `asrquant synth` (registered in cli/quantize.py)."""
    from . import paths

    add_model_argument(parser)
    parser.add_argument("--out", default=str(paths.build_dir() / "synth_cache"),
                        help="cache folder; batches go to OUT/<key>/")
    parser.add_argument("--batches", type=int, default=20, help="number of batches (paper: 20)")
    parser.add_argument("--batch-size", type=int, default=SYNTH_DEFAULTS["batch_size"])
    parser.add_argument("--frames", type=int, default=SYNTH_DEFAULTS["frames"], help="frames T per input (500 = 5 s)")
    parser.add_argument("--iterations", type=int, default=SYNTH_DEFAULTS["iterations"])
    parser.add_argument("--lr", type=float, default=SYNTH_DEFAULTS["lr"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the summary here")
    parser.add_argument("--quiet", action="store_true")
