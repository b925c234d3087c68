"""``IntegerModel``: an integer program with its float mel front end, the model every quantizer
returns and every command runs; its engine (the C runtime, else the torch reference); and its
file, the .aqz (``program.aqz``): ``save_quantized`` / ``load_quantized``.

The mel front end stays in float before the boundary (``IntegerModel.quantize_input``), as in the
paper; everything after it is the program.
"""

from __future__ import annotations

import os
import sys
import weakref
from pathlib import Path

import torch
from torch import nn

from .models.checkpoint import CheckpointError
from .program import aqz
from .program.ops import Op, Program
from .quant.quantizer import quantize


def _frontend(config: dict):
    from .audio import frontend_from_config

    return frontend_from_config(config.get("preprocessor", {}))


# model -> its loaded C runtime (or False: not available here), kept off the instance: a loaded library
# does not serialize (pickle, Dask's nn.Module serializer, which walks __dict__), and another
# process loads its own from the build cache
_ENGINES: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


class IntegerModel(nn.Module):
    """An integer program with its float front end. `forward_int` takes and returns integers only."""

    def __init__(self, config: dict, program: Program, info: dict | None = None,
                 frontend_state: dict | None = None):
        super().__init__()
        self.float_model_config = config
        vocabulary = list(config.get("labels") or config["decoder"]["vocabulary"])
        self.labels = [piece.replace("\u2581", " ") for piece in vocabulary]  # BPE word marks, as ConformerCTC
        # The front end is float and sits before the quantization boundary; a front end with
        # weights of its own (hama's stored STFT and mel kernels) travels in the file.
        self.preprocessor = nn.Module()
        self.preprocessor.featurizer = _frontend(config)
        if frontend_state:
            self.preprocessor.featurizer.load_state_dict(frontend_state)
        self.program = program
        self.info = dict(info or {})
        self.eval()

    @property
    def config(self) -> dict:
        """The float model's config (evaluation reads its `phonemes` / `decoding` sections)."""
        return self.float_model_config

    @property
    def input_scale(self) -> float:
        return float(self.program.meta["input_scale"])

    @property
    def input_bits(self) -> int:
        return int(self.program.meta["input_bits"])

    @property
    def logit_scale(self) -> float:
        return float(self.program.meta["logit_scale"])

    # --- float side of the boundary
    def features(self, audio, lengths):
        return self.preprocessor.featurizer(audio, lengths)

    def quantize_input(self, mel: torch.Tensor) -> torch.Tensor:
        """The boundary: float log-mel -> signed integers (the last float op)."""
        if not torch.isfinite(mel).all():
            raise ValueError("input features contain NaN or inf")
        return quantize(mel, self.input_scale, self.input_bits, signed=True)

    # --- integer side
    def forward_int(self, q: torch.Tensor, lengths: torch.Tensor):
        """Integer log-mel [B, F, T] -> integer logits [B, C, T'] (scale `logit_scale`), lengths: the
        torch reference backend, the program's specification in torch ops (verify watches it)."""
        from .program.torch_ref import TorchReference

        return TorchReference().run(self.program, q, lengths)

    def use_runtime(self, runtime: str | None = None) -> "IntegerModel":
        """The engine of `run_int` (hence of forward_features, evaluate, transcribe, the grid):
        "c" (the C runtime, built once per program into the build cache), "torch" (forward_int),
        or "auto" (the C runtime where a C compiler builds it, else torch, said once on stderr).
        Default: $INTASR_RUNTIME, else "auto". Every engine gives the same integers."""
        runtime = runtime or os.environ.get("INTASR_RUNTIME") or "auto"
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r}: choose from {', '.join(RUNTIMES)}")
        self.runtime = runtime
        _ENGINES.pop(self, None)
        return self

    def engine(self):
        """The C runtime this model runs on, or None for the torch path (``use_runtime``)."""
        if getattr(self, "runtime", None) is None:
            self.use_runtime()
        engine = _ENGINES.get(self)
        if self.runtime == "torch" or engine is False:
            return None
        if engine is None:
            from .program.c_backend import CExportError, CRuntime

            try:
                engine = _ENGINES[self] = CRuntime(self.program, threads=torch.get_num_threads())
            except (CExportError, OSError, RuntimeError) as e:
                if self.runtime == "c":
                    raise
                _ENGINES[self] = False
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                print(f"note: the C runtime is not available here ({first}); using the torch integer path "
                      "(the same integers, slower)", file=sys.stderr)
                return None
        return engine

    def engine_name(self) -> str:
        """What `run_int` runs on: "c-int8 (<family> kernels)" or "torch-int8-reference"."""
        engine = self.engine()
        return f"c-int8 ({engine.isa} kernels)" if engine is not None else "torch-int8-reference"

    def run_int(self, q: torch.Tensor, lengths: torch.Tensor):
        """forward_int's integers, on the engine ``use_runtime`` chose."""
        engine = self.engine()
        if engine is None:
            return self.forward_int(q, lengths)
        logits, out_len = engine.run_with_lengths(q.numpy(), lengths.numpy())
        return torch.from_numpy(logits), torch.from_numpy(out_len)

    def forward_features(self, mel, lengths):
        return self.run_int(self.quantize_input(mel), lengths)

    def forward(self, audio, lengths):
        return self.forward_features(*self.features(audio, lengths))

    def int_convs(self) -> list[Op]:
        return self.program.ops_of("conv1d")

    def int64_layers(self) -> list[str]:
        return [op.name for op in self.int_convs() if op.attrs["acc_dtype"] == "int64"]


RUNTIMES = ("auto", "c", "torch")


def save_quantized(qmodel: IntegerModel, path) -> Path:
    """The model as one .aqz file (``program.aqz.save``), written atomically."""
    frontend = dict(qmodel.preprocessor.featurizer.state_dict())
    return aqz.save(path, qmodel.float_model_config, qmodel.program, qmodel.info, frontend)


def load_quantized(path) -> IntegerModel:
    """Read an .aqz file (version 2, or version 1 migrated to a program); errors name the file."""
    config, program, info, frontend = aqz.load(path)
    try:
        return IntegerModel(config, program, info, frontend_state=frontend)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError, RuntimeError,
            OverflowError) as e:
        raise CheckpointError(f"{path}: malformed integer model: {aqz.first_line(e)}; regenerate it with "
                              f"`intasr quantize`") from e
