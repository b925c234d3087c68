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


def _mask_time(op, x, lengths):
    if np.ndim(x) != 4:
        return ref.mask_time_ref(x, lengths)
    y = np.asarray(x).astype(np.int64).copy()
    for b, n in enumerate(np.asarray(lengths).reshape(-1)):
        y[b, :, int(n):, :] = 0
    return y


def _to_image(op, x):
    x = np.asarray(x, dtype=np.int64)
    B, F, T = x.shape
    y = np.zeros((B, 1, T, F), dtype=np.int64)
    for f in range(F):
        y[:, 0, :, f] = x[:, f, :]
    return y


def _flatten_freq(op, x):
    x = np.asarray(x, dtype=np.int64)
    B, C, T, F = x.shape
    y = np.zeros((B, C * F, T), dtype=np.int64)
    for c in range(C):
        for f in range(F):
            y[:, c * F + f, :] = x[:, c, :, f]
    return y


def _conv2d(op, x):
    """acc[b, o, t, f] = bias[o] + sum_{c, i, j} w[o, c, i, j] xpad[b, g Cin_g + c, t sT + i, f sF + j]:
    a loop over groups and the kT x kF taps, int64 throughout."""
    a = op.attrs
    w = _np(op.params["weight"])
    bias = _np(op.params.get("bias"))
    x = np.asarray(x, dtype=np.int64)
    B, Cin, T, F = x.shape
    Cout, cin_g, kT, kF = w.shape
    groups = a["groups"]
    (sT, sF), (pT, pF) = a["stride"], a["padding"]
    cout_g = Cout // groups
    bound = int(np.abs(w).reshape(Cout, -1).sum(axis=1).max()) * int(np.abs(x).max(initial=0))
    assert bound + (int(np.abs(bias).max()) if bias is not None else 0) < 2 ** 63, "reference conv2d would overflow"
    xp = np.zeros((B, Cin, T + 2 * pT, F + 2 * pF), dtype=np.int64)
    xp[:, :, pT:pT + T, pF:pF + F] = x
    t_out, f_out = (T + 2 * pT - kT) // sT + 1, (F + 2 * pF - kF) // sF + 1
    out = np.zeros((B, Cout, t_out, f_out), dtype=np.int64)
    for g in range(groups):
        xg = xp[:, g * cin_g:(g + 1) * cin_g]
        wg = w[g * cout_g:(g + 1) * cout_g]
        for i in range(kT):
            for j in range(kF):
                xs = xg[:, :, i:i + sT * (t_out - 1) + 1:sT, j:j + sF * (f_out - 1) + 1:sF]   # [B, cin_g, t, f]
                out[:, g * cout_g:(g + 1) * cout_g] += np.einsum("oc,bctf->botf", wg[:, :, i, j], xs)
    if bias is not None:
        out += bias.reshape(1, Cout, 1, 1)
    return out


def _matmul_pos(op, q):
    """s[b, h, i, j] = sum_c q[b, h d_k + c, i] pos[h d_k + c, (L-1) - i + j], one query row at a time."""
    h, L = op.attrs["heads"], op.attrs["max_len"]
    pos = _np(op.params["pos"])
    q = np.asarray(q, dtype=np.int64)
    B, d, T = q.shape
    if T > L:
        raise ValueError(f"matmul_pos: {T} frames exceed max_len {L} (the converter's pos_emb_max_len)")
    dk = d // h
    out = np.zeros((B, h, T, T), dtype=np.int64)
    for b in range(B):
        for head in range(h):
            qh = q[b, head * dk:(head + 1) * dk]                   # [d_k, T]
            ph = pos[head * dk:(head + 1) * dk]                    # [d_k, 2L-1]
            for i in range(T):
                cols = ph[:, (L - 1) - i:(L - 1) - i + T]           # distances i - j for j = 0..T-1
                out[b, head, i] = nref.matmul_ref(qh[:, i][None, :], cols)[0]
    return out


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
        "mask_time": _mask_time,
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
        "to_image": _to_image,
        "conv2d": _conv2d,
        "flatten_freq": _flatten_freq,
        "matmul_pos": _matmul_pos,
    }

    def run(self, program: Program, x, lengths):
        """int arrays [B, F, T], [B] -> (int64 logits [B, C, T'], int64 lengths [B])."""
        env = self.execute(program, {program.inputs[0]: np.asarray(x, dtype=np.int64),
                                     program.inputs[1]: np.asarray(lengths, dtype=np.int64).reshape(-1)})
        return env[program.outputs[0]], env[program.outputs[1]]


# the op kinds this backend lowers
LOWERS = frozenset(NumpyReference.kernels)
