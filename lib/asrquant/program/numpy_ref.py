"""The NumPy reference backend: the program on int64 NumPy arrays, no torch arithmetic.

Built only on ``intops.reference`` (explicit loops, floor division instead of shifts), which
shares no code with the torch kernels: agreement with ``torch_ref`` means both implement the
op semantics of ``program.ops``. Every value is held as int64; the reference asserts that no
intermediate leaves int64.
"""

from __future__ import annotations

import numpy as np

from ..intops import nonlinear_ref as nref
from ..intops import reference as ref
from ..intops.gelu import gelu_ref
from . import nonlinear_params as nlp
from .ops import Backend, Program


def _attention_mask(lengths, t: int) -> np.ndarray:
    mask = np.ones((len(lengths), 1, t, t), dtype=bool)
    for b, n in enumerate(np.asarray(lengths).reshape(-1)):
        mask[b, 0, : int(n), : int(n)] = False
    return mask


def _matmul_qk(op, q, k):
    B, d, T = q.shape
    h = op.attrs["heads"]
    qh = q.reshape(B, h, d // h, T).transpose(0, 1, 3, 2)          # [B, H, T, d_k]
    return nref.matmul_ref(qh, k.reshape(B, h, d // h, T))         # [B, H, T, T]


def _matmul_pv(op, p, v):
    B, d, T = v.shape
    h = op.attrs["heads"]
    out = np.zeros((B, h, d // h, p.shape[2]), dtype=np.int64)
    vh = v.reshape(B, h, d // h, T)
    for b in range(B):                                             # y[c, i] = sum_j v[c, j] p[i, j]
        for head in range(h):
            out[b, head] = nref.matmul_ref(vh[b, head], np.asarray(p[b, head]).T)
    return out.reshape(B, d, -1)


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
        "layernorm": lambda op, x: nref.layernorm_ref(x, nlp.layernorm_params(op), dim=1),
        "softmax": lambda op, s, lengths: nref.softmax_ref(s, nlp.softmax_params(op), _attention_mask(lengths, s.shape[-1])),
        "swish": lambda op, x: nref.swish_ref(x, nlp.sigmoid_params(op)),
        "glu": lambda op, x: nref.glu_ref(x, nlp.sigmoid_params(op), dim=1),
        "gelu": lambda op, x: gelu_ref(x, nlp.gelu_params(op)),
        "matmul_qk": _matmul_qk,
        "matmul_pv": _matmul_pv,
    }

    def run(self, program: Program, x, lengths):
        """int arrays [B, F, T], [B] -> (int64 logits [B, C, T'], int64 lengths [B])."""
        env = self.execute(program, {program.inputs[0]: np.asarray(x, dtype=np.int64),
                                     program.inputs[1]: np.asarray(lengths, dtype=np.int64).reshape(-1)})
        return env[program.outputs[0]], env[program.outputs[1]]
