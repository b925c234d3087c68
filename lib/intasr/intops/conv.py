"""Integer-only 1-D convolution and elementwise kernels (torch, integer dtypes only).

Exact specification
-------------------
int_conv1d computes, for every b, output channel o (group g = o // (Cout/groups)), t:

    acc[b, o, t] = bias[o] + sum_{c < Cin/groups} sum_{k < K}
                   w[o, c, k] * xpad[b, g * Cin/groups + c, t * stride + k * dilation]

with xpad = x zero-padded by ``padding`` frames on each side (or (left, right)). The result is
exact: every intermediate is an integer partial sum whose magnitude is bounded by
``accumulator_bound``; with ``check_overflow=True`` (default) the bound is evaluated on the actual
data (sum|w| per output channel * max|x| + |bias|, Python ints) and OverflowError is raised if it
does not fit ``acc_dtype``, so no result ever wraps around silently.

No floating-point tensor is created (tests record every dispatched op's output dtype).

Kernels (chosen per call, all exact; torch 2.13 CPU, 2 threads, AMD EPYC AVX2 without VNNI):
  * depthwise (Cin/groups == 1): unfold time windows per chunk of channels, einsum with w in
    acc_dtype (see _depthwise for why not a sum over taps).
  * otherwise, when weights fit int8, activations fit int8 or [0, 255], and Cin/groups * K <
    2^17 (so the int32 sum of int8 products cannot wrap): im2col + ``torch._int_mm``
    (int8 x int8 -> int32, exact, no shape constraints on CPU here). Unsigned [0, 255]
    activations use an offset: x = x_s + 128 with x_s in int8 (zero padding applied before the
    offset, so padded frames are x_s = -128), conv(x) = conv(x_s) + 128 * sum_{c,k} w[o, c, k].
  * otherwise: im2col + torch.matmul in acc_dtype (int32 / int64; slow but exact).

Notes on torch: F.conv1d accepts int32/int64 tensors on CPU (exact, no dilation path:
"slow_conv_dilated<> not implemented for 'Int'") and is slower than float; int8 conv1d outputs
int8 (wraps). Integer torch.matmul is ~5x slower than float; torch._int_mm is ~4x faster.

Measured on this CPU (AMD EPYC, AVX2, no VNNI), B=1, T=500, median ms, torch 2.13:
  layer                          float F.conv1d   int F.conv1d(int32)   int_conv1d (this module)
  (a) 2 threads, machine idle (first probes, before other jobs started):
  pointwise 512->512             1.4 - 2.3        9.5                   0.33 (raw _int_mm)
  depthwise C=512 k=63           6.1              7.1                   1.5 (taps) / 3.1 (einsum)
  dense 256->256 k=11 (Jasper)   5.4              24                    1.2 (im2col + _int_mm)
  (b) 1 thread, other jobs using both cores (tools/bench_intops.py, full
      int_conv1d call including the overflow check):
  pointwise 512->512             2.6 - 3.0                              0.84 - 0.91 (int8 x),
                                                                        1.07 (uint8 x, offset)
  depthwise C=512 k=63           10.2                                   3.3 - 3.5 (int32 acc),
                                                                        18 (int64 acc)
  dense 256->256 k=11            6.6                                    2.4
  (c) 2 threads with the cores oversubscribed every op (float too) takes multiples of ~8 ms
      (OpenMP barrier waits): pointwise float 32 / int 40, depthwise float 24 / int 88.
      Timings on this shared box are only meaningful when it is otherwise idle.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "accumulator_bound",
    "choose_acc_dtype",
    "int_conv1d",
    "int_relu",
    "int_add",
    "mask_time",
]

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
_INT8_SUM_LIMIT = 1 << 17  # Cin/g * K below this: sum of int8*int8 products fits int32


def _require_int(t: torch.Tensor, name: str) -> None:
    if t.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")


def _x_abs_max(bits: int, signed: bool) -> int:
    if not 2 <= bits <= 32:
        raise ValueError("x_bits must be in 2..32")
    return (1 << (bits - 1)) if signed else (1 << bits) - 1


def _channel_abs_sums(w_q: torch.Tensor) -> list[int]:
    return [int(v) for v in w_q.to(torch.int64).abs().reshape(w_q.shape[0], -1).sum(dim=1).tolist()]


def accumulator_bound(w_q: torch.Tensor, x_bits: int, x_signed: bool = True,
                      bias_q: torch.Tensor | None = None) -> int:
    """Worst-case |acc| over all inputs in qrange(x_bits, x_signed) (Python int, exact):

        max over output channels o of  sum_{c,k} |w[o, c, k]| * max|x| + |bias[o]|

    with max|x| = 2^(b-1) signed, 2^b - 1 unsigned. Zero padding only lowers |acc|. Every partial
    sum of the convolution is bounded by the same number.
    """
    _require_int(w_q, "w_q")
    xmax = _x_abs_max(x_bits, x_signed)
    sums = _channel_abs_sums(w_q)
    if bias_q is None:
        return max(s * xmax for s in sums)
    _require_int(bias_q, "bias_q")
    b = [abs(int(v)) for v in bias_q.reshape(-1).tolist()]
    return max(s * xmax + bb for s, bb in zip(sums, b))


def choose_acc_dtype(bound: int) -> torch.dtype:
    """int32 if bound <= 2^31 - 1, else int64 (ValueError beyond int64)."""
    if bound <= torch.iinfo(torch.int32).max:
        return torch.int32
    if bound <= torch.iinfo(torch.int64).max:
        return torch.int64
    raise ValueError("accumulator bound exceeds int64")


def _padding_pair(padding) -> tuple[int, int]:
    if isinstance(padding, int):
        return padding, padding
    left, right = padding
    return int(left), int(right)


def _im2col(xp: torch.Tensor, K: int, stride: int, dilation: int, t_out: int) -> torch.Tensor:
    """[B, C, Tpad] -> [C * K, B * t_out] columns (row index c * K + k), a view when possible."""
    B, C, _ = xp.shape
    if K == 1:
        cols = xp[:, :, : stride * (t_out - 1) + 1 : stride]  # [B, C, t_out]
        return cols.permute(1, 0, 2).reshape(C, B * t_out)
    span = dilation * (K - 1) + 1
    u = xp.unfold(2, span, stride)[:, :, :t_out, ::dilation]  # [B, C, t_out, K]
    return u.permute(1, 3, 0, 2).reshape(C * K, B * t_out)


_DW_CHUNK_ELEMENTS = 1 << 22  # unfolded elements per depthwise chunk (16 MiB of int32)


def _depthwise(xp, w_q, Cout, groups, K, stride, dilation, t_out, acc_dtype):
    """Depthwise conv: per chunk of channels, unfold time into [B, c, t_out, K] windows and
    contract with w[c, K] (one einsum per chunk -> integer bmm in acc_dtype).

    A sum over taps (acc.addcmul_ per tap) is as fast on an idle machine (1.5-2.5 ms for C=512,
    k=63, T=500) but launches K parallel regions; on this shared 2-core box with other jobs
    running it degraded to ~500 ms (OpenMP barrier waits), while the chunked einsum stayed at
    ~3 ms. Chunks bound the unfolded copy to _DW_CHUNK_ELEMENTS elements.
    """
    B, Cin, _ = xp.shape
    x = xp
    if Cout != Cin:  # channel multiplier: output o reads input channel o // (Cout / groups)
        x = x.repeat_interleave(Cout // groups, dim=1)
    w = w_q.to(acc_dtype)[:, 0, :]  # [Cout, K]
    span = dilation * (K - 1) + 1
    per_channel = max(1, B * t_out * K)
    cc = max(1, _DW_CHUNK_ELEMENTS // per_channel)
    outs = []
    for c0 in range(0, Cout, cc):
        u = x[:, c0 : c0 + cc].to(acc_dtype).unfold(2, span, stride)[:, :, :t_out, ::dilation]
        outs.append(torch.einsum("bctk,ck->bct", u, w[c0 : c0 + cc]))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _grouped_mm(xp, w_q, groups, K, stride, dilation, t_out, mm, operand_dtype):
    """Per group: w[Cout_g, Cin_g*K] @ cols[Cin_g*K, B*t_out] -> [B, Cout, t_out]."""
    B, Cin, _ = xp.shape
    Cout = w_q.shape[0]
    cin_g, cout_g = Cin // groups, Cout // groups
    outs = []
    for g in range(groups):
        cols = _im2col(xp[:, g * cin_g : (g + 1) * cin_g], K, stride, dilation, t_out).to(operand_dtype)
        wm = w_q[g * cout_g : (g + 1) * cout_g].reshape(cout_g, cin_g * K).to(operand_dtype)
        outs.append(mm(wm, cols).reshape(cout_g, B, t_out))
    out = outs[0] if groups == 1 else torch.cat(outs, dim=0)
    return out.permute(1, 0, 2).contiguous()


def int_conv1d(x_q: torch.Tensor, w_q: torch.Tensor, bias_q: torch.Tensor | None = None,
               stride: int = 1, padding=0, dilation: int = 1, groups: int = 1,
               acc_dtype: torch.dtype = torch.int32, check_overflow: bool = True) -> torch.Tensor:
    """Exact integer conv1d (module doc). x_q [B, Cin, T], w_q [Cout, Cin/groups, K], bias_q
    [Cout] or None; all integer tensors. Returns acc_dtype [B, Cout, T_out],
    T_out = (T + pad_l + pad_r - dilation*(K-1) - 1) // stride + 1."""
    _require_int(x_q, "x_q")
    _require_int(w_q, "w_q")
    if bias_q is not None:
        _require_int(bias_q, "bias_q")
    if acc_dtype not in (torch.int32, torch.int64):
        raise ValueError("acc_dtype must be torch.int32 or torch.int64")
    if x_q.dim() != 3 or w_q.dim() != 3:
        raise ValueError("x_q must be [B, Cin, T] and w_q [Cout, Cin/groups, K]")
    B, Cin, T = x_q.shape
    Cout, cin_g, K = w_q.shape
    if Cin != cin_g * groups or Cout % groups:
        raise ValueError(f"channels do not match groups: x {tuple(x_q.shape)}, w {tuple(w_q.shape)}, groups {groups}")
    if stride < 1 or dilation < 1:
        raise ValueError("stride and dilation must be >= 1")
    pl, pr = _padding_pair(padding)
    t_out = (T + pl + pr - dilation * (K - 1) - 1) // stride + 1
    if t_out < 1:
        raise ValueError("input too short for this kernel")

    xmin, xmax = (int(v) for v in torch.aminmax(x_q)) if x_q.numel() else (0, 0)
    if check_overflow:
        xabs = max(abs(xmin), abs(xmax))
        sums = _channel_abs_sums(w_q)
        bias_abs = [0] * Cout if bias_q is None else [abs(int(v)) for v in bias_q.reshape(-1).tolist()]
        bound = max(s * xabs + b for s, b in zip(sums, bias_abs))
        if bound > torch.iinfo(acc_dtype).max:
            raise OverflowError(f"|acc| may reach {bound}: does not fit {acc_dtype}")

    xp = F.pad(x_q, (pl, pr)) if (pl or pr) else x_q
    if cin_g == 1:
        acc = _depthwise(xp, w_q, Cout, groups, K, stride, dilation, t_out, acc_dtype)
    else:
        w_fits_int8 = w_q.dtype == torch.int8 or (
            w_q.numel() > 0 and -128 <= int(w_q.min()) and int(w_q.max()) <= 127)
        small_sum = cin_g * K < _INT8_SUM_LIMIT
        if w_fits_int8 and small_sum and -128 <= xmin and xmax <= 127:
            acc = _grouped_mm(xp, w_q, groups, K, stride, dilation, t_out, torch._int_mm, torch.int8)
            acc = acc.to(acc_dtype)
        elif w_fits_int8 and small_sum and 0 <= xmin and xmax <= 255:
            xs = xp.to(torch.int16) - 128  # padded frames become -128 = 0 - 128
            acc = _grouped_mm(xs, w_q, groups, K, stride, dilation, t_out, torch._int_mm, torch.int8)
            corr = w_q.to(torch.int32).reshape(Cout, -1).sum(dim=1) * 128  # |corr| < 2^31
            acc = acc.to(acc_dtype) + corr.to(acc_dtype).reshape(1, Cout, 1)
        else:
            acc = _grouped_mm(xp, w_q, groups, K, stride, dilation, t_out, torch.matmul, acc_dtype)
    if bias_q is not None:
        acc = acc + bias_q.to(acc_dtype).reshape(1, Cout, 1)
    return acc


def int_relu(q: torch.Tensor) -> torch.Tensor:
    """max(q, 0), same dtype."""
    _require_int(q, "q")
    return torch.clamp_min(q, 0)


def int_add(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """a + b, computed in out_dtype (default: the wider of a, b and int32, so int8 + int8 never
    wraps). The caller guarantees the sum fits out_dtype."""
    _require_int(a, "a")
    _require_int(b, "b")
    if out_dtype is None:
        out_dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.int32)
    return a.to(out_dtype) + b.to(out_dtype)


def mask_time(q: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero every frame t >= lengths[b] of q [B, C, T] (or [B, T]); same dtype. Integer only."""
    _require_int(q, "q")
    lengths = torch.as_tensor(lengths, device=q.device)
    _require_int(lengths, "lengths")
    T = q.shape[-1]
    keep = torch.arange(T, device=q.device, dtype=torch.int64).unsqueeze(0) < lengths.to(torch.int64).reshape(-1, 1)
    if q.dim() == 3:
        keep = keep.unsqueeze(1)
    return q.masked_fill(~keep, 0)
