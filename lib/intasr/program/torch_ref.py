"""The torch reference backend: every op of ``program.ops`` on integer torch tensors.

This is ``IntegerModel.forward_int``. Each kernel is the exact semantics of its op, built on
``intops.conv`` (integer convolution) and ``quant.dyadic`` (requantization), and creates no
floating-point tensor (``verify.float_ops_in_forward`` records every dispatched op to prove it).
"""

from __future__ import annotations

import torch

from ..intops.conv import int_conv1d, mask_time
from ..intops.conv2d import int_conv2d
from ..intops.gelu import int_gelu
from ..intops.nonlinear import int_glu, int_layernorm, int_matmul, int_softmax, int_swish
from . import nonlinear_params as nlp
from ..quant.dyadic import requantize, rescale
from ..quant.quantizer import qrange, storage_dtype
from .ops import Backend, Program, torch_dtype


def attention_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """[B, 1, T, T] bool, True where query i or key j is a padded frame (i or j >= lengths[b])."""
    valid = torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]
    return ~(valid[:, :, None] & valid[:, None, :])[:, None]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, H d_k, T] -> [B, H, d_k, T]."""
    b, d, t = x.shape
    return x.reshape(b, heads, d // heads, t)


def _matmul_qk(op, q, k):
    acc = torch_dtype(op.attrs["acc_dtype"])
    h = op.attrs["heads"]
    # [B, H, T, d_k] @ [B, H, d_k, T]: the inner size is d_k
    return int_matmul(_heads(q, h).transpose(-1, -2), _heads(k, h), acc)


def _matmul_pv(op, p, v):
    acc = torch_dtype(op.attrs["acc_dtype"])
    h = op.attrs["heads"]
    # [B, H, d_k, T_k] @ [B, H, T_k, T_q] -> [B, H, d_k, T_q] -> [B, H d_k, T]
    y = int_matmul(_heads(v, h), p.transpose(-1, -2), acc)
    return y.reshape(v.shape[0], -1, v.shape[-1])


def _frames(op, lengths):
    a = op.attrs
    return (lengths + 2 * a["padding"] - a["dilation"] * (a["kernel"] - 1) - 1) // a["stride"] + 1


def _conv1d(op, x):
    a = op.attrs
    return int_conv1d(x, op.params["weight"], op.params.get("bias"), stride=a["stride"], padding=a["padding"],
                      dilation=a["dilation"], groups=a["groups"], acc_dtype=torch_dtype(a["acc_dtype"]))


def _mask_time(op, x, lengths):
    """[B, C, T] as ``intops.conv.mask_time``; a 4-D image [B, C, T, F]: time is axis 2."""
    if x.dim() != 4:
        return mask_time(x, lengths)
    keep = torch.arange(x.shape[2], device=x.device)[None, :] < lengths.to(torch.int64).reshape(-1, 1)
    return x.masked_fill(~keep[:, None, :, None], 0)


def _conv2d(op, x):
    a = op.attrs
    return int_conv2d(x, op.params["weight"], op.params.get("bias"), stride=a["stride"], padding=a["padding"],
                      groups=a["groups"], acc_dtype=torch_dtype(a["acc_dtype"]))


def _flatten_freq(op, x):
    b, c, t, f = x.shape
    return x.permute(0, 1, 3, 2).reshape(b, c * f, t)


def _rel_shift(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, 2T-1] -> [B, H, T, T], out[..., i, j] = x[..., i, (T-1) - i + j] (Transformer-XL's
    pad-and-reshape trick, pure data movement)."""
    b, h, t, p = x.shape
    x = torch.nn.functional.pad(x, (1, 0)).view(b, h, p + 1, t)
    return x[:, :, 1:].reshape(b, h, t, p)[:, :, :, :t]


def _matmul_pos(op, q):
    h, L = op.attrs["heads"], op.attrs["max_len"]
    acc = torch_dtype(op.attrs["acc_dtype"])
    t = q.shape[-1]
    if t > L:
        raise ValueError(f"matmul_pos: {t} frames exceed max_len {L} (the converter's pos_emb_max_len); "
                         f"convert again with a larger pos_emb_max_len")
    pos = op.params["pos"][:, L - t: L + t - 1]                       # positions t-1 ... -(t-1)
    bd = int_matmul(_heads(q, h).transpose(-1, -2), _heads(pos[None], h), acc)   # [B, H, T, 2T-1]
    return _rel_shift(bd)


def _clamp(op, v):
    lo, hi = qrange(op.attrs["bits"], op.attrs["signed"])
    return torch.clamp(v, lo, hi).to(storage_dtype(op.attrs["bits"], op.attrs["signed"]))


class TorchReference(Backend):
    name = "torch-reference"
    kernels = {
        "mask_time": _mask_time,
        "frames": _frames,
        "conv1d": _conv1d,
        "requantize": lambda op, acc: requantize(acc, op.params["M"], op.params["shift"], op.attrs["bits"],
                                                 op.attrs["signed"]),
        "rescale": lambda op, acc: rescale(acc, op.params["M"], op.params["shift"]),
        "add": lambda op, a, b: a.to(torch.int64) + b.to(torch.int64),
        "clamp": _clamp,
        "layernorm": lambda op, x: int_layernorm(x, nlp.layernorm_params(op), dim=1),
        "softmax": lambda op, s, lengths: int_softmax(s, nlp.softmax_params(op), attention_mask(lengths, s.shape[-1])),
        "swish": lambda op, x: int_swish(x, nlp.sigmoid_params(op)),
        "glu": lambda op, x: int_glu(x, nlp.sigmoid_params(op), dim=1),
        "gelu": lambda op, x: int_gelu(x, nlp.gelu_params(op)),
        "matmul_qk": _matmul_qk,
        "matmul_pv": _matmul_pv,
        "to_image": lambda op, x: x.transpose(1, 2).unsqueeze(1),
        "conv2d": _conv2d,
        "flatten_freq": _flatten_freq,
        "matmul_pos": _matmul_pos,
    }

    def run(self, program: Program, x: torch.Tensor, lengths: torch.Tensor):
        """Integer input [B, F, T] and lengths [B] -> (int64 logits [B, C, T'], lengths [B])."""
        env = self.trace(program, x, lengths)
        return env[program.outputs[0]], env[program.outputs[1]]

    def trace(self, program: Program, x: torch.Tensor, lengths: torch.Tensor) -> dict:
        """Run the program and return every value it computed, by name (for inspection)."""
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"the integer program takes an integer input, got {x.dtype}")
        lengths = torch.as_tensor(lengths).to(torch.int64)
        if lengths.shape != (x.shape[0],):
            raise ValueError(f"lengths must have one entry per batch item: {tuple(lengths.shape)} for batch {x.shape[0]}")
        if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > x.shape[-1]):
            raise ValueError(f"lengths must lie in 1..{x.shape[-1]} (frames of the input), got {lengths.tolist()}")
        return self.execute(program, {program.inputs[0]: x, program.inputs[1]: lengths})


# the op kinds this backend lowers
LOWERS = frozenset(TorchReference.kernels)
