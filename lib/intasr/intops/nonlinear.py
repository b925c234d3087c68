"""Integer-only non-linear kernels of the Conformer (I-BERT / I-ViT), each beside its float version.

Every function comes in four parts:

  * ``*_float``: the real function on real (float) tensors, the thing being approximated;
  * ``prepare_*(in_scale, ...)``: conversion time (floats allowed), returns a frozen dataclass of
    Python ints plus the output scale as float metadata;
  * ``int_*``: the kernel (torch, integer tensors in and out, no floating-point tensor created);
  * ``intasr.intops.nonlinear_ref.*_ref``: an independent NumPy reference of the same integer
    semantics (no torch), which must agree bit for bit.

Notation: ``>>`` is an arithmetic right shift (floor division by a power of two), ``//`` floor
division, ``rhu(v / 2^m)`` = ``(v + floor(2^m / 2)) >> m`` (round half up, dyadic.py convention).
All intermediates are int64 unless stated; every bound below is a proven worst case over the
documented input range, so nothing can wrap around.

i-exp (I-BERT, Kim et al. 2021)
-------------------------------
Real input x = q * S <= 0 (S = in_scale). Decompose x = -z ln2 + r, z = floor(-x / ln2),
r in (-ln2, 0], then exp(x) = 2^-z exp(r) and exp(r) ~ a (r + b)^2 + c, a = 0.3585, b = 1.353,
c = 0.344 (max relative error 0.3 % on (-ln2, 0]).

Preparation first picks a power-of-two rescale of the input, k (``in_shift``), so that the
internal scale S' = S * 2^-k gives q_ln2 = floor(ln2 / S') in [2^(p-1), 2^p), p = ``ln2_bits``
(default 14): a coarse input scale is refined by a left shift (exact), a very fine one is coarsened
by a rounded right shift. Then (Python ints)

    q_ln2 = floor(ln2 / S'),  q_b = floor(b / S'),  q_c = floor(c / (a S'^2))
    P_max = q_b^2 + q_c                      (< 2^31 for p <= 14: the output fits int32)
    z_sat = bit_length(P_max)                (P >> z = 0 for every 0 <= P <= P_max, z >= z_sat)
    q_min = the largest input q whose rescaled value q' is <= -z_sat * q_ln2 (so z >= z_sat)

Kernel, for any integer input q (|q| <= 2^62 - 1):

    q  = clamp(q, q_min, 0)                  # q > 0 is treated as 0; q < q_min gives 0 anyway
    q' = q << k            (k >= 0)          # |q'| < z_sat q_ln2 + 2^k
       = rhu(q / 2^-k)     (k < 0)
    z  = (-q') // q_ln2                      # 0 <= z <= z_max (checked <= 62 at preparation)
       = ((-q') * R) >> s                    # computed so: no integer division (see below)
    qr = q' + z q_ln2                        # in (-q_ln2, 0]
    P  = (qr + q_b)^2 + q_c                  # qr + q_b > 0 (q_b > q_ln2), so P in (0, P_max]
    e  = P >> z                              # int32, 0 <= e <= P_max, scale a * S'^2

The clamp is exact: without it (infinite precision, any z) the result is the same integer; the
NumPy reference computes the unclamped formula with Python ints to prove it.

The division by the constant q_ln2 is a multiply and a shift (Granlund & Montgomery 1994, Thm 4.2):
with X = -q'(q_min) the largest dividend, N = bit_length(X), s = N + bit_length(q_ln2) and
R = ceil(2^s / q_ln2), we have 2^s <= R q_ln2 < 2^s + q_ln2 <= 2^s + 2^(s-N), which makes
floor(n R / 2^s) = floor(n / q_ln2) for every 0 <= n < 2^N; n R < 2^(2N+1) + 2^N < 2^45 (N <= 21,
checked at preparation). The reference divides, so the tests check this identity too.

Integer softmax (last axis, optional mask)
------------------------------------------
``mask`` is a bool tensor broadcastable to q, True where a position is masked out (NeMo's
convention for padding). Input |q| <= 2^62 - 1 (any int8/16/32 tensor):

    x   = where(mask, -2^62, q)              # masked positions take the integer minimum
    d   = x - max(x, axis=-1)                # <= 0; the max only sees unmasked values if any
    e   = where(mask, 0, i-exp(d))           # masked positions contribute exactly 0
    s   = sum(e, axis=-1)                    # 0 <= s <= N * P_max < N * 2^31 (int64 for N < 2^32)
    f   = 2^K // max(s, 1)                   # K = recip_bits = 62; f <= 2^62
    p   = min((e f + 2^(K-B-1)) >> (K-B), 2^B - 1)       # B = out_bits; e f <= 2^K
    fully masked rows (s = 0) give p = 0 everywhere.

Output dtype ``storage_dtype(B, signed=False)`` (int16 for 8 bit), scale 2^-B. Shift invariance:
softmax(q + c) == softmax(q) for every integer c (the row max is subtracted first).

Integer sigmoid, Swish, GLU (I-ViT style)
-----------------------------------------
sigmoid(x) = 1 / (1 + exp(-x)); with E = i-exp(-|q|) and one = P_max = i-exp(0) (so sigmoid(0) is
exactly 1/2):

    n   = (2 E 2^B + (E + one)) // (2 (E + one))          # rhu(2^B E / (E + one)), 0 <= n <= 2^(B-1)
    sig = n            if q < 0
        = 2^B - n      if q >= 0                           # exact symmetry: sig(q) + sig(-q) = 2^B

Range [0, 2^B] (1.0 is representable), scale 2^-B, dtype int16 for B <= 14 else int32.
Swish: q * sig(q), GLU: a * sig(b) for the halves (a, b) of the channel axis (|q| <= 2^31, so
|product| <= 2^(31+B) <= 2^61); integer products
with scale S * 2^-B, dtype int32 when |q| <= 2^15 is guaranteed by the input dtype (int8 / uint8 /
int16) and B <= 15, else int64.

Integer LayerNorm (channel axis, default the last one)
------------------------------------------------------
C channels, input |q| <= 2^32 (C <= 2^16). No rounded mean: the integer mean enters exactly as
the row sum, y = C q - sum(q) = C (q - mean), |y| <= C 2^33 < 2^49. With h = (61 - clog2(C)) // 2
(clog2 = ceil(log2 C)) and per-row dynamic shifts (bit_length via a 6-step binary search):

    r   = max(r_E, bit_length(max |y|) - h)          # so |ys| <= 2^h; r <= 27
    ys  = rhu(y / 2^r)
    W   = sum(ys^2) + rhu(E / 4^(r - r_E))           # W <= C 2^2h + E < 2^61 + 2^60 < 2^62
    t   = (62 - bit_length(W)) // 2                  # V = W 4^t in [2^60, 2^62) (W > 0)
    D   = (W << 2t) // C                             # ~ (var + eps) C^2 4^(t-r) / S^2
    sd  = max(isqrt(D), 1)                           # Newton, exact floor(sqrt(D)); sd < 2^31
    e   = F + t - r                                  # F = norm_bits
    u   = (2 A + B) // (2 B),  A = y << max(e, 0),  B = sd << max(-e, 0)
                                                     # = floor(y 2^e / sd + 1/2)
                                                     # ~ 2^F (x - mean) / sqrt(var + eps)
    u   = clamp(u, -U, U),  U = ceil(1.01 * 2^F sqrt(C)) + 1    # |(x-mean)/std| <= sqrt(C-1)
    acc = u * g_q[c] + b_q[c]                        # g_q = round(gamma / S_g), b_q = round(beta / S_acc)
    out = clamp(rhu(acc * M / 2^shift), qrange(out_bits))     # M / 2^shift ~ S_acc / S_out

eps enters in the units of sum(y^2) = C^3 var / S^2: E = round(eps C^3 / S^2 / 4^r_E) < 2^60
with r_E the smallest shift >= 0 that makes it so (preparation; ValueError if r_E would exceed 27,
i.e. eps C^3 / S^2 >= 2^114). S_g = max|gamma| / (2^(gamma_bits-1) - 1), S_acc = S_g 2^-F,
(M, shift) = dyadic_from_float(S_acc / S_out).

Bounds: D < 2^62 so sd < 2^31; D >= 2^60 / C >= 2^44 when W > 0, so sd >= 2^22.
|y| 2^(t-r) <= sqrt(V) + 2^(t-1) (ys is y / 2^r rounded, |ys| <= sqrt(W)); r = 0 drops the second
term, and r > 0 means W >= 2^(2h-2) or W >= E >= 2^58, so 2^(t-1) <= 2 sqrt(C) <= sqrt(C) sd; with
sqrt(V) < sqrt(C (D + 1)) <= sqrt(C) (sd + 1) this gives |y| 2^(t-r) <= 2 sqrt(C) (sd + 1), hence
|A| <= 2^(F+1) sqrt(C) (sd + 1) <= 2^(F+40) <= 2^60 (F <= 20), B < 2^(31+27) = 2^58 (-e <= r),
and 2A + B < 2^63. The preparation checks |acc| * M + 2^(shift-1) < 2^63 with
|acc| <= U max|g_q| + max|b_q| (ValueError otherwise). The tests run the worst cases (|q| = 2^32,
C = 2^16, one-hot rows, F = 20) against the Python-int reference.

Integer square root (Newton): k0 = 2^ceil(L/2) with L = bit_length(n) (so k0 > sqrt(n));
k <- (k + n // k) // 2 while it decreases. For k > isqrt(n) the step is strictly smaller than k
and (AM-GM, floor((k + floor(n/k))/2) = floor((k + n/k)/2)) never below isqrt(n); at
k = isqrt(n) it does not decrease: the result is exactly floor(sqrt(n)) for 0 <= n < 2^63.

Integer matmul
--------------
``int_matmul(a, b)``: exact batched matmul with an overflow check (K max|a| max|b| must fit the
accumulator); 2-D int8 x int8 with K < 2^17 goes to ``torch._int_mm`` (int32 accumulation, exact),
everything else (batched Q.K^T, probabilities [0, 2^B) x int8 V, ...) to torch.matmul in int32 /
int64 (exact).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..quant.dyadic import dyadic_from_float, requant_fits_int64
from ..quant.quantizer import qrange, storage_dtype

__all__ = [
    "EXP_A", "EXP_B", "EXP_C", "LN2",
    "ExpParams", "SoftmaxParams", "SigmoidParams", "LayerNormParams",
    "exp_float", "softmax_float", "sigmoid_float", "swish_float", "glu_float", "layernorm_float",
    "prepare_exp", "prepare_softmax", "prepare_sigmoid", "prepare_swish", "prepare_glu",
    "prepare_layernorm",
    "int_exp", "int_softmax", "int_sigmoid", "int_swish", "int_glu", "int_layernorm",
    "int_isqrt", "int_bit_length", "int_matmul", "matmul_bound",
]

EXP_A, EXP_B, EXP_C = 0.3585, 1.353, 0.344
LN2 = math.log(2.0)
_MASK_FILL = -(1 << 62)
_Q_LIMIT = (1 << 62) - 1
_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _require_int(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor, got {getattr(t, 'dtype', type(t))}")


def _check_range(q: torch.Tensor, limit: int, name: str = "q") -> None:
    """ValueError unless |q| <= limit; only int64 tensors can exceed the limits used here (2^32 and
    2^62 - 1), so narrower dtypes are not scanned."""
    if q.dtype == torch.int64 and q.numel():
        lo, hi = (int(v) for v in torch.aminmax(q))
        if max(-lo, hi) > limit:
            raise ValueError(f"|{name}| must be <= {limit}, got values in [{lo}, {hi}]")


def _check_scale(s: float, name: str = "in_scale") -> float:
    s = float(s)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"{name} must be positive and finite, got {s}")
    return s


# ----------------------------------------------------------------------------------- float side
def exp_float(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(x)


def softmax_float(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last axis; masked positions (mask True) get 0, fully masked rows all 0."""
    if mask is None:
        return torch.softmax(x, dim=-1)
    x = x.masked_fill(mask, float("-inf"))
    m = x.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(x - m)
    s = e.sum(dim=-1, keepdim=True)
    return torch.where(s > 0, e / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(e))


def sigmoid_float(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


def swish_float(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def glu_float(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return torch.nn.functional.glu(x, dim=dim)


def layernorm_float(x: torch.Tensor, gamma, beta, eps: float = 1e-5, dim: int = -1) -> torch.Tensor:
    x = x.movedim(dim, -1)
    g = torch.as_tensor(gamma, dtype=x.dtype)
    b = torch.as_tensor(beta, dtype=x.dtype)
    y = torch.nn.functional.layer_norm(x, (x.shape[-1],), g, b, eps)
    return y.movedim(-1, dim)


# ------------------------------------------------------------------------------------ i-exp
@dataclass(frozen=True)
class ExpParams:
    """i-exp constants (module doc). All ints; ``out_scale`` = a S'^2 is float metadata."""
    in_shift: int      # k: q' = q << k (k >= 0) or rhu(q / 2^-k) (k < 0)
    q_ln2: int
    q_b: int
    q_c: int
    q_min: int         # input clamp (input units)
    out_max: int       # P_max = exp(0) in output units, < 2^31
    z_max: int         # largest shift the kernel can apply
    recip: int         # R = ceil(2^recip_shift / q_ln2): z = (-q' * R) >> recip_shift
    recip_shift: int   # s
    in_scale: float
    out_scale: float


def _rescale_ints(q: int, k: int) -> int:
    """q' for one Python int (preparation helper, same semantics as the kernel)."""
    if k >= 0:
        return q << k
    m = -k
    return (q + (1 << (m - 1))) >> m


def prepare_exp(in_scale: float, ln2_bits: int = 14) -> ExpParams:
    """i-exp for inputs with real scale ``in_scale``; q_ln2 in [2^(ln2_bits-1), 2^ln2_bits)."""
    S = _check_scale(in_scale)
    if not 2 <= ln2_bits <= 14:
        raise ValueError("ln2_bits must be in 2..14 (P_max < 2^31)")
    v = LN2 / S
    k = ln2_bits - 1 - math.floor(math.log2(v))
    for _ in range(4):  # fix possible off-by-one of log2 rounding
        if math.floor(math.ldexp(v, k)) >= 1 << ln2_bits:
            k -= 1
        elif math.floor(math.ldexp(v, k)) < 1 << (ln2_bits - 1):
            k += 1
        else:
            break
    Sp = math.ldexp(S, -k)
    q_ln2 = math.floor(LN2 / Sp)
    q_b = math.floor(EXP_B / Sp)
    q_c = math.floor(EXP_C / (EXP_A * Sp * Sp))
    assert (1 << (ln2_bits - 1)) <= q_ln2 < (1 << ln2_bits) and q_b > q_ln2
    p_max = q_b * q_b + q_c
    if p_max >= 1 << 31:
        raise AssertionError("P_max must fit int32")
    z_sat = p_max.bit_length()
    lo = -z_sat * q_ln2  # any q' <= lo has z >= z_sat -> output 0
    if k >= 0:
        q_min = -((-lo + (1 << k) - 1) >> k)   # floor(lo / 2^k)
    else:
        m = -k
        q_min = (lo + 1) * (1 << m) - (1 << (m - 1)) - 1
    assert _rescale_ints(q_min, k) <= lo < _rescale_ints(q_min + 1, k) or q_min == 0
    X = -_rescale_ints(q_min, k)
    z_max = X // q_ln2
    if z_max > 62:
        raise AssertionError("shift range exceeded")
    N = X.bit_length()
    s = N + q_ln2.bit_length()
    R = -((-(1 << s)) // q_ln2)  # ceil(2^s / q_ln2)
    if N > 21 or not (1 << s) <= R * q_ln2 <= (1 << s) + (1 << (s - N)):
        raise AssertionError("reciprocal of q_ln2 out of its proven range")
    return ExpParams(in_shift=k, q_ln2=q_ln2, q_b=q_b, q_c=q_c, q_min=q_min, out_max=p_max, z_max=z_max,
                     recip=R, recip_shift=s,
                     in_scale=S, out_scale=EXP_A * Sp * Sp)


def _i64(v: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.int64, device=like.device)


def _int_exp64(q: torch.Tensor, p: ExpParams) -> torch.Tensor:
    """i-exp in int64 (module doc); q any integer tensor with |q| < 2^62."""
    x = torch.clamp(q.to(torch.int64), p.q_min, 0)
    if p.in_shift >= 0:
        x = x << p.in_shift
    else:
        m = -p.in_shift
        x = (x + (1 << (m - 1))) >> m
    z = (-x * p.recip) >> p.recip_shift  # == (-x) // q_ln2 (module doc)
    qr = x + z * p.q_ln2
    t = qr + p.q_b
    return (t * t + p.q_c) >> z


def int_exp(q: torch.Tensor, p: ExpParams) -> torch.Tensor:
    """i-exp (module doc): int32 in [0, p.out_max], scale p.out_scale. |q| < 2^62."""
    _require_int(q, "q")
    _check_range(q, _Q_LIMIT)
    return _int_exp64(q, p).to(torch.int32)


# ---------------------------------------------------------------------------------- softmax
@dataclass(frozen=True)
class SoftmaxParams:
    exp: ExpParams
    out_bits: int
    recip_bits: int    # K of f = 2^K // sum
    in_scale: float
    out_scale: float   # 2^-out_bits


def prepare_softmax(in_scale: float, out_bits: int = 8, ln2_bits: int = 14, recip_bits: int = 62) -> SoftmaxParams:
    if not 2 <= out_bits <= 16:
        raise ValueError("out_bits must be in 2..16")
    if not out_bits < recip_bits <= 62:
        raise ValueError("recip_bits must be in out_bits+1..62")
    e = prepare_exp(in_scale, ln2_bits)
    return SoftmaxParams(exp=e, out_bits=out_bits, recip_bits=recip_bits, in_scale=e.in_scale,
                         out_scale=math.ldexp(1.0, -out_bits))


def int_softmax(q: torch.Tensor, p: SoftmaxParams, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Integer softmax over the last axis (module doc). Returns storage_dtype(out_bits, unsigned)
    values in [0, 2^out_bits - 1] with scale 2^-out_bits. ``mask``: True = masked out. |q| < 2^62."""
    _require_int(q, "q")
    _check_range(q, _Q_LIMIT)
    x = q.to(torch.int64)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError("mask must be a bool tensor")
        x = x.masked_fill(mask, _MASK_FILL)
    n = x.shape[-1]
    if n >= 1 << 31:
        raise ValueError("row too long")
    if x.numel() == 0:
        return torch.zeros(x.shape, dtype=storage_dtype(p.out_bits, signed=False), device=x.device)
    d = x - x.amax(dim=-1, keepdim=True)
    e = _int_exp64(d, p.exp)
    if mask is not None:
        e = e.masked_fill(mask, 0)
    s = e.sum(dim=-1, keepdim=True)
    K, B = p.recip_bits, p.out_bits
    f = torch.div(_i64(1 << K, s), torch.clamp_min(s, 1), rounding_mode="floor")
    prob = (e * f + (1 << (K - B - 1))) >> (K - B)
    prob = torch.clamp_max(prob, (1 << B) - 1)
    return prob.to(storage_dtype(B, signed=False))


# ------------------------------------------------------------------------ sigmoid / swish / glu
@dataclass(frozen=True)
class SigmoidParams:
    exp: ExpParams
    out_bits: int       # B: sigmoid in [0, 2^B], scale 2^-B
    in_scale: float
    sig_scale: float    # 2^-B
    out_scale: float    # sigmoid: 2^-B; swish / glu: in_scale * 2^-B


def prepare_sigmoid(in_scale: float, out_bits: int = 8, ln2_bits: int = 14) -> SigmoidParams:
    if not 2 <= out_bits <= 30:
        raise ValueError("out_bits must be in 2..30")
    e = prepare_exp(in_scale, ln2_bits)
    s = math.ldexp(1.0, -out_bits)
    return SigmoidParams(exp=e, out_bits=out_bits, in_scale=e.in_scale, sig_scale=s, out_scale=s)


def prepare_swish(in_scale: float, sig_bits: int = 14, ln2_bits: int = 14) -> SigmoidParams:
    """Swish x * sigmoid(x): output scale in_scale * 2^-sig_bits."""
    p = prepare_sigmoid(in_scale, sig_bits, ln2_bits)
    return SigmoidParams(exp=p.exp, out_bits=sig_bits, in_scale=p.in_scale, sig_scale=p.sig_scale,
                         out_scale=p.in_scale * p.sig_scale)


def prepare_glu(in_scale: float, sig_bits: int = 14, ln2_bits: int = 14) -> SigmoidParams:
    """GLU a * sigmoid(b), both halves with scale in_scale: output scale in_scale * 2^-sig_bits."""
    return prepare_swish(in_scale, sig_bits, ln2_bits)


def _sig_dtype(bits: int) -> torch.dtype:
    return torch.int16 if bits <= 14 else torch.int32


def _sigmoid64(q: torch.Tensor, p: SigmoidParams) -> torch.Tensor:
    x = q.to(torch.int64)
    E = _int_exp64(-torch.abs(x), p.exp)
    one = p.exp.out_max
    B = p.out_bits
    den = E + one
    n = torch.div((E << (B + 1)) + den, den << 1, rounding_mode="floor")
    return torch.where(x < 0, n, (1 << B) - n)


def int_sigmoid(q: torch.Tensor, p: SigmoidParams) -> torch.Tensor:
    """Integer sigmoid (module doc): [0, 2^B], scale 2^-B; int16 for B <= 14 else int32. |q| < 2^62."""
    _require_int(q, "q")
    _check_range(q, _Q_LIMIT)
    return _sigmoid64(q, p).to(_sig_dtype(p.out_bits))


def _product_dtype(in_dtype: torch.dtype, bits: int) -> torch.dtype:
    return torch.int32 if in_dtype in (torch.int8, torch.uint8, torch.int16) and bits <= 15 else torch.int64


def int_swish(q: torch.Tensor, p: SigmoidParams) -> torch.Tensor:
    """q * sig(q), scale in_scale * 2^-B (module doc). |q| <= 2^31 (so |q| 2^B fits int64)."""
    _require_int(q, "q")
    _check_range(q, 1 << 31)
    return (q.to(torch.int64) * _sigmoid64(q, p)).to(_product_dtype(q.dtype, p.out_bits))


def int_glu(q: torch.Tensor, p: SigmoidParams, dim: int = 1) -> torch.Tensor:
    """a * sig(b) with (a, b) = the two halves of ``dim`` (module doc), scale in_scale * 2^-B.
    |q| <= 2^31."""
    _require_int(q, "q")
    _check_range(q, 1 << 31)
    if q.shape[dim] % 2:
        raise ValueError("GLU needs an even size along dim")
    a, b = q.chunk(2, dim=dim)
    return (a.to(torch.int64) * _sigmoid64(b, p)).to(_product_dtype(q.dtype, p.out_bits))


# --------------------------------------------------------------------------- bit length, isqrt
def int_bit_length(n: torch.Tensor) -> torch.Tensor:
    """bit_length of int64 n >= 0 (0 -> 0), by a 6-step binary search on shifts. int64."""
    _require_int(n, "n")
    n = n.to(torch.int64)
    L = torch.zeros_like(n)
    for s in (32, 16, 8, 4, 2, 1):
        L = torch.where((n >> (L + s)) > 0, L + s, L)
    return L + (n > 0).to(torch.int64)


def int_isqrt(n: torch.Tensor, max_iter: int = 64) -> torch.Tensor:
    """Exact floor(sqrt(n)) for 0 <= n < 2^63 by Newton iterations (module doc). int64."""
    _require_int(n, "n")
    n = n.to(torch.int64)
    L = int_bit_length(n)
    one = torch.ones((), dtype=torch.int64, device=n.device)
    k = one << ((L + 1) >> 1)
    nn = torch.clamp_min(n, 1)
    for _ in range(max_iter):
        k_new = (k + torch.div(nn, k, rounding_mode="floor")) >> 1
        dec = k_new < k
        if not bool(dec.any()):
            break
        k = torch.where(dec, k_new, k)
    else:
        raise AssertionError("isqrt did not converge")
    return torch.where(n == 0, torch.zeros_like(k), k)


# -------------------------------------------------------------------------------- layernorm
@dataclass(frozen=True)
class LayerNormParams:
    channels: int
    h: int              # |ys| <= 2^h
    eps_int: int        # E = round(eps C^3 / S^2 / 4^r_E) < 2^60
    eps_shift: int      # r_E (minimum r)
    norm_bits: int      # F
    u_max: int          # U
    gamma_q: tuple      # ints, scale gamma_scale
    beta_q: tuple       # ints, scale acc_scale
    M: int
    shift: int
    out_bits: int
    in_scale: float
    gamma_scale: float
    acc_scale: float    # gamma_scale * 2^-F
    out_scale: float


def prepare_layernorm(in_scale: float, gamma, beta, out_scale: float, eps: float = 1e-5,
                      out_bits: int = 8, norm_bits: int = 12, gamma_bits: int = 12) -> LayerNormParams:
    """Integer LayerNorm over C = len(gamma) channels (module doc); gamma/beta float arrays."""
    S = _check_scale(in_scale)
    So = _check_scale(out_scale, "out_scale")
    g = np.asarray(gamma, dtype=np.float64).reshape(-1)
    b = np.asarray(beta, dtype=np.float64).reshape(-1)
    C = g.size
    if b.size != C or not 1 <= C <= 1 << 16:
        raise ValueError("gamma and beta need the same length C in 1..2^16")
    if not 1 <= norm_bits <= 20 or not 2 <= gamma_bits <= 24:
        raise ValueError("norm_bits must be in 1..20 and gamma_bits in 2..24")
    qrange(out_bits)  # validates
    clog2 = (C - 1).bit_length()
    h = (61 - clog2) // 2
    E0 = eps * C ** 3 / (S * S) if eps > 0 else 0.0
    if not math.isfinite(E0) or E0 >= 2.0 ** 114:
        raise ValueError("eps / in_scale^2 too large for the integer variance (eps C^3 / S^2 >= 2^114)")
    rE = 0
    while math.ldexp(E0, -2 * rE) >= 2.0 ** 60 - 2.0 ** 8:
        rE += 1
    E = int(round(math.ldexp(E0, -2 * rE)))
    assert E < 1 << 60 and rE <= 27
    gmax = float(np.abs(g).max())
    Sg = gmax / ((1 << (gamma_bits - 1)) - 1) if gmax > 0 else 1.0
    gamma_q = tuple(int(v) for v in np.rint(g / Sg))
    Sacc = math.ldexp(Sg, -norm_bits)
    beta_q = tuple(int(v) for v in np.rint(b / Sacc))
    U = math.ceil(1.01 * math.ldexp(math.sqrt(C), norm_bits)) + 1
    M, shift = dyadic_from_float(Sacc / So)
    M, shift = int(M), int(shift)
    bound = U * max(abs(v) for v in gamma_q) + max(abs(v) for v in beta_q)
    if not requant_fits_int64(bound, M, shift):
        raise ValueError("layernorm accumulator too large for the int64 requantization "
                         "(lower norm_bits / gamma_bits, or |beta| is huge compared to |gamma|)")
    return LayerNormParams(channels=C, h=h, eps_int=E, eps_shift=rE, norm_bits=norm_bits, u_max=U, gamma_q=gamma_q,
                           beta_q=beta_q, M=M, shift=shift, out_bits=out_bits, in_scale=S, gamma_scale=Sg,
                           acc_scale=Sacc, out_scale=So)


def _rhu_shift(v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """rhu(v / 2^r) for int64 v and per-element shifts r >= 0."""
    one = torch.ones((), dtype=torch.int64, device=v.device)
    return (v + ((one << r) >> 1)) >> r


def int_layernorm(q: torch.Tensor, p: LayerNormParams, dim: int = -1) -> torch.Tensor:
    """Integer LayerNorm over ``dim`` (module doc). Returns storage_dtype(out_bits) with scale
    p.out_scale. Input |q| <= 2^32."""
    _require_int(q, "q")
    _check_range(q, 1 << 32)
    C = p.channels
    if q.shape[dim] != C:
        raise ValueError(f"expected {C} channels along dim {dim}, got {q.shape[dim]}")
    x = q.to(torch.int64).movedim(dim, -1)
    y = x * C - x.sum(dim=-1, keepdim=True)
    amax = torch.abs(y).amax(dim=-1, keepdim=True)
    r = torch.clamp_min(int_bit_length(amax) - p.h, p.eps_shift)
    ys = _rhu_shift(y, r)
    W = (ys * ys).sum(dim=-1, keepdim=True)
    if p.eps_int:
        W = W + _rhu_shift(_i64(p.eps_int, W).expand_as(W), 2 * (r - p.eps_shift))
    t = (62 - int_bit_length(W)) >> 1
    D = torch.div(W << (2 * t), C, rounding_mode="floor")
    sd = torch.clamp_min(int_isqrt(D), 1)
    e = p.norm_bits + t - r
    A = y << torch.clamp_min(e, 0)
    Bd = sd << torch.clamp_min(-e, 0)
    u = torch.div(2 * A + Bd, 2 * Bd, rounding_mode="floor")
    u = torch.clamp(u, -p.u_max, p.u_max)
    g = torch.tensor(p.gamma_q, dtype=torch.int64, device=q.device)
    b = torch.tensor(p.beta_q, dtype=torch.int64, device=q.device)
    acc = u * g + b
    lo, hi = qrange(p.out_bits)
    out = (acc * p.M + ((1 << p.shift) >> 1)) >> p.shift
    out = torch.clamp(out, lo, hi).to(storage_dtype(p.out_bits))
    return out.movedim(-1, dim)


# ----------------------------------------------------------------------------------- matmul
def matmul_bound(k: int, a_abs_max: int, b_abs_max: int) -> int:
    """Worst |a @ b| entry for inner size k (Python int, exact)."""
    return int(k) * int(a_abs_max) * int(b_abs_max)


def int_matmul(a: torch.Tensor, b: torch.Tensor, acc_dtype: torch.dtype = torch.int32,
               check_overflow: bool = True) -> torch.Tensor:
    """Exact integer (batched, broadcasting) a @ b in acc_dtype. With ``check_overflow`` the bound
    K max|a| max|b| is evaluated on the data (OverflowError if it does not fit). 2-D int8 x int8
    uses torch._int_mm (int32 accumulation, exact for K < 2^17); otherwise torch.matmul in
    acc_dtype (int32 / int64)."""
    _require_int(a, "a")
    _require_int(b, "b")
    if acc_dtype not in (torch.int32, torch.int64):
        raise ValueError("acc_dtype must be torch.int32 or torch.int64")
    K = a.shape[-1]
    if b.shape[-2 if b.dim() > 1 else 0] != K:
        raise ValueError(f"inner sizes differ: {tuple(a.shape)} @ {tuple(b.shape)}")
    if check_overflow and a.numel() and b.numel():
        amax = max(abs(int(v)) for v in torch.aminmax(a))
        bmax = max(abs(int(v)) for v in torch.aminmax(b))
        bound = matmul_bound(K, amax, bmax)
        if bound > torch.iinfo(acc_dtype).max:
            raise OverflowError(f"|a @ b| may reach {bound}: does not fit {acc_dtype}")
    if a.dim() == 2 and b.dim() == 2 and a.dtype == torch.int8 and b.dtype == torch.int8 and K < 1 << 17:
        return torch._int_mm(a, b).to(acc_dtype)
    return torch.matmul(a.to(acc_dtype), b.to(acc_dtype))
