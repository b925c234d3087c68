"""The program's backends in one registry: what each lowers, whether it is exact, how to run it.

Every backend module declares the op kinds it lowers (``LOWERS``; ``ops.OP_GROUPS`` names the
ConvASR and the Conformer sets). ``run`` calls any backend the same way: (program, input
[B, F, T], lengths [B], threads) -> (logits [B, C, T'], lengths [B], what to record of the run).
An exact backend takes the int8 input and must give the torch reference's int64 logits on every
valid frame; the simulated one (Q/DQ) takes the float log-mel and gives float logits in real
units, so only its frame argmax is comparable. A program with an op the backend does not lower,
or a backend that cannot run (exactly) on this machine, raises ``BackendUnavailable`` with the
reason before anything runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import torch

from .ops import Program, groups_lowered

__all__ = ["BACKENDS", "BackendSpec", "BackendUnavailable", "run"]


class BackendUnavailable(RuntimeError):
    """A backend that cannot run (exactly) here, or cannot run this program; the message says why."""


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str        # the program module that declares LOWERS
    exact: bool        # True: integer logits equal to the reference's; False: simulated (argmax)
    about: str

    def lowers(self) -> frozenset[str]:
        return importlib.import_module(f"{__package__}.{self.module}").LOWERS

    def groups(self) -> list[str]:
        return groups_lowered(self.lowers())

    def missing(self, program: Program) -> list[str]:
        return sorted({op.kind for op in program.ops} - self.lowers())


BACKENDS: dict[str, BackendSpec] = {s.name: s for s in (
    BackendSpec("torch", "torch_ref", True, "the reference: torch integer ops (IntegerModel.forward_int)"),
    BackendSpec("numpy", "numpy_ref", True, "an independent NumPy replay in int64, sharing no code with torch"),
    BackendSpec("onnx-int", "onnx_int", True, "the integer-only ONNX graph on onnxruntime (exact kernels need VNNI)"),
    BackendSpec("fast-native", "fast", True, "the fast torch runner, depthwise convs in the native C kernels"),
    BackendSpec("fast-float-exact", "fast", True, "the fast torch runner, depthwise convs as exact float convs"),
    BackendSpec("c", "c_lower", True, "the generated C runtime, kernel family picked by cpuid"),
    BackendSpec("onnx-qdq", "onnx_qdq", False, "Q/DQ around float ops (TensorRT's input form), simulated"),
)}


def _torch(program, x, lengths, threads):
    from .torch_ref import TorchReference

    logits, out_len = TorchReference().run(program, torch.as_tensor(x), torch.as_tensor(lengths))
    return logits.numpy(), out_len.numpy(), {}


def _numpy(program, x, lengths, threads):
    from .numpy_ref import NumpyReference

    return *NumpyReference().run(program, np.asarray(x), np.asarray(lengths)), {}


def _onnx_int(program, x, lengths, threads):
    try:
        from .onnx_int import ort_kernels_exact, run_onnx_int

        exact = ort_kernels_exact(threads or 1)
    except ImportError as e:
        raise BackendUnavailable(f"ImportError: {e}") from e
    if not exact:
        raise BackendUnavailable("onnxruntime's integer kernels are not exact on this CPU (no VNNI: U8S8 pairs "
                                 "saturate at int16)")
    return *run_onnx_int(program, x, lengths, threads=threads), {}


def _fast(depthwise):
    def run_(program, x, lengths, threads):
        from .fast import run_fast

        try:
            return *run_fast(program, torch.as_tensor(x), torch.as_tensor(lengths), depthwise=depthwise,
                             threads=threads), {}
        except (NotImplementedError, OSError, RuntimeError) as e:
            raise BackendUnavailable(f"{type(e).__name__}: {e}") from e
    return run_


def _c(program, x, lengths, threads):
    from .c_backend import CRuntime
    from .c_lower import CExportError

    try:
        rt = CRuntime(program, threads=threads)
    except (CExportError, OSError, RuntimeError) as e:
        raise BackendUnavailable(f"{type(e).__name__}: {e}") from e
    return *rt.run_with_lengths(np.asarray(x), np.asarray(lengths)), {"kernels": rt.isa}


def _onnx_qdq(program, mel, lengths, threads):
    try:
        from .onnx_qdq import run_onnx_qdq

        return *run_onnx_qdq(program, mel, lengths, threads=threads), {}
    except (ImportError, NotImplementedError) as e:
        raise BackendUnavailable(f"{type(e).__name__}: {e}") from e


_RUNNERS = {"torch": _torch, "numpy": _numpy, "onnx-int": _onnx_int, "fast-native": _fast("native"),
            "fast-float-exact": _fast("float-exact"), "c": _c, "onnx-qdq": _onnx_qdq}


def run(name: str, program: Program, x, lengths, threads: int = 1):
    """(logits, lengths, what to record) of backend `name` on the program (module doc); raises
    ``BackendUnavailable`` with the reason when it cannot run this program here."""
    spec = BACKENDS.get(name)
    if spec is None:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    missing = spec.missing(program)
    if missing:
        raise BackendUnavailable(f"backend {name!r} does not lower op kinds {missing}")
    return _RUNNERS[name](program, x, lengths, threads)
