"""Integer-only 2-D convolution (NeMo's Conv2d subsampling), torch, integer dtypes only.

Exact specification (``program.ops`` conv2d): for x [B, Cin, T, F], w [Cout, Cin/g, kT, kF],
output channel o in group g(o) = o // (Cout/groups):

    acc[b, o, t, f] = bias[o] + sum_{c < Cin/g, i < kT, j < kF}
                      w[o, c, i, j] * xpad[b, g(o) Cin/g + c, t sT + i, f sF + j]

xpad = x zero-padded by pT on both sides of axis 2 and pF on both sides of axis 3. With
``check_overflow`` (default) the bound sum|w| * max|x| + |bias| is evaluated on the data and
OverflowError raised if it does not fit acc_dtype: no result wraps silently.

Kernels (all exact, no floating-point tensor):
  * depthwise (Cin/g == 1, Cout == Cin): windows by ``Tensor.unfold`` on both axes, one einsum
    with w in acc_dtype (integer bmm);
  * otherwise im2col (``unfold`` views) per group and an integer matmul: ``torch._int_mm``
    (int8 x int8 -> int32, exact for Cin/g kT kF < 2^17) when x lies in int8 or in [0, 255] (offset
    x = x_s + 128, padding applied first, conv(x) = conv(x_s) + 128 sum w), else torch.matmul in
    acc_dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["int_conv2d", "conv2d_out_size"]

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
_INT8_SUM_LIMIT = 1 << 17


def conv2d_out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _cols(xp: torch.Tensor, kT: int, kF: int, sT: int, sF: int, t_out: int, f_out: int) -> torch.Tensor:
    """[B, C, Tp, Fp] -> [C kT kF, B t_out f_out] (row index (c kT + i) kF + j)."""
    B, C = xp.shape[:2]
    u = xp.unfold(2, kT, sT)[:, :, :t_out].unfold(3, kF, sF)[:, :, :, :f_out]   # [B, C, t, f, kT, kF]
    return u.permute(1, 4, 5, 0, 2, 3).reshape(C * kT * kF, B * t_out * f_out)


def int_conv2d(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, stride=(1, 1), padding=(0, 0),
               groups: int = 1, acc_dtype: torch.dtype = torch.int32, check_overflow: bool = True) -> torch.Tensor:
    """Exact integer conv2d (module doc): x [B, Cin, T, F] -> acc_dtype [B, Cout, T', F']."""
    for t, name in ((x, "x"), (w, "w")) + (((bias, "bias"),) if bias is not None else ()):
        if t.dtype not in _INT_DTYPES:
            raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if acc_dtype not in (torch.int32, torch.int64):
        raise ValueError("acc_dtype must be torch.int32 or torch.int64")
    if x.dim() != 4 or w.dim() != 4:
        raise ValueError(f"x must be [B, Cin, T, F] and w [Cout, Cin/g, kT, kF], got {tuple(x.shape)}, {tuple(w.shape)}")
    B, Cin, T, Fq = x.shape
    Cout, cin_g, kT, kF = w.shape
    if Cin != cin_g * groups or Cout % groups:
        raise ValueError(f"channels do not match groups: x {tuple(x.shape)}, w {tuple(w.shape)}, groups {groups}")
    sT, sF = (int(v) for v in stride)
    pT, pF = (int(v) for v in padding)
    t_out, f_out = conv2d_out_size(T, kT, sT, pT), conv2d_out_size(Fq, kF, sF, pF)
    if t_out < 1 or f_out < 1:
        raise ValueError("input too small for this kernel")
    xmin, xmax = (int(v) for v in torch.aminmax(x)) if x.numel() else (0, 0)
    if check_overflow:
        xabs = max(abs(xmin), abs(xmax))
        sums = w.to(torch.int64).abs().reshape(Cout, -1).sum(dim=1).tolist()
        babs = [0] * Cout if bias is None else [abs(int(v)) for v in bias.reshape(-1).tolist()]
        bound = max(int(s) * xabs + b for s, b in zip(sums, babs))
        if bound > torch.iinfo(acc_dtype).max:
            raise OverflowError(f"|acc| may reach {bound}: does not fit {acc_dtype}")
    xp = F.pad(x, (pF, pF, pT, pT)) if (pT or pF) else x
    if cin_g == 1 and Cout == Cin:
        u = xp.to(acc_dtype).unfold(2, kT, sT)[:, :, :t_out].unfold(3, kF, sF)[:, :, :, :f_out]
        acc = torch.einsum("bctfij,cij->bctf", u, w[:, 0].to(acc_dtype))
    else:
        cout_g = Cout // groups
        w_int8 = w.dtype == torch.int8 or (w.numel() > 0 and -128 <= int(w.min()) and int(w.max()) <= 127)
        small = cin_g * kT * kF < _INT8_SUM_LIMIT and x.device.type == "cpu"
        offset = 0
        if w_int8 and small and -128 <= xmin and xmax <= 127:
            mm, operand = torch._int_mm, torch.int8
        elif w_int8 and small and 0 <= xmin and xmax <= 255:
            mm, operand, offset = torch._int_mm, torch.int8, 128
            xp = xp.to(torch.int16) - 128        # padded positions become -128 = 0 - 128
        else:
            mm, operand = torch.matmul, acc_dtype
        outs = []
        for g in range(groups):
            cols = _cols(xp[:, g * cin_g:(g + 1) * cin_g], kT, kF, sT, sF, t_out, f_out).to(operand)
            wm = w[g * cout_g:(g + 1) * cout_g].reshape(cout_g, -1).to(operand)
            outs.append(mm(wm, cols).to(acc_dtype))
        acc = outs[0] if groups == 1 else torch.cat(outs, dim=0)           # [Cout, B t f]
        if offset:
            corr = w.to(torch.int64).reshape(Cout, -1).sum(dim=1) * offset  # |corr| < 2^31 for int8 w
            acc = acc + corr.to(acc_dtype)[:, None]
        acc = acc.reshape(Cout, B, t_out, f_out).permute(1, 0, 2, 3).contiguous()
    if bias is not None:
        acc = acc + bias.to(acc_dtype).reshape(1, Cout, 1, 1)
    return acc
