"""The NumPy reference backend: the program on int64 NumPy arrays, no torch arithmetic.

Built only on ``intops.reference`` (explicit loops, floor division instead of shifts), which
shares no code with the torch kernels: agreement with ``torch_ref`` means both implement the
op semantics of ``program.ops``. Every value is held as int64; the reference asserts that no
intermediate leaves int64.
"""

from __future__ import annotations

import numpy as np

from ..intops import reference as ref
from .ops import Backend, Program


def _np(t):
    return None if t is None else t.numpy().astype(np.int64)


def _frames(op, lengths):
    a = op.attrs
    return (lengths + 2 * a["padding"] - a["dilation"] * (a["kernel"] - 1) - 1) // a["stride"] + 1


def _conv1d(op, x):
    a = op.attrs
    return ref.conv1d_ref(x, _np(op.params["weight"]), _np(op.params.get("bias")), a["stride"], a["padding"],
                          a["dilation"], a["groups"])


class NumpyReference(Backend):
    name = "numpy-reference"
    kernels = {
        "mask_time": lambda op, x, lengths: ref.mask_time_ref(x, lengths),
        "frames": _frames,
        "conv1d": _conv1d,
        "requantize": lambda op, acc: ref.requantize_ref(acc, _np(op.params["M"]), _np(op.params["shift"]),
                                                         op.attrs["bits"], op.attrs["signed"]),
        "rescale": lambda op, acc: ref.rescale_ref(acc, _np(op.params["M"]), _np(op.params["shift"])),
        "add": lambda op, a, b: ref.add_ref(a, b),
        "clamp": lambda op, v: np.clip(v, *ref.qrange_ref(op.attrs["bits"], op.attrs["signed"])),
    }

    def run(self, program: Program, x, lengths):
        """int arrays [B, F, T], [B] -> (int64 logits [B, C, T'], int64 lengths [B])."""
        env = self.execute(program, {program.inputs[0]: np.asarray(x, dtype=np.int64),
                                     program.inputs[1]: np.asarray(lengths, dtype=np.int64).reshape(-1)})
        return env[program.outputs[0]], env[program.outputs[1]]
