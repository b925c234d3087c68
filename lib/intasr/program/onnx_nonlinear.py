"""Integer-only ONNX lowerings of the Conformer's ops (layernorm, softmax, swish, glu, gelu, matmuls,
relative-position scores).

Each ``lower_<kind>(g, ..., op)`` appends nodes to a graph builder ``g`` (``program.onnx_graph.Graph``)
and returns the name of its output tensor. The arithmetic is the exact integer formula of the torch
kernel (``intops.nonlinear`` / ``intops.gelu``, module docs there), written with ONNX integer
operators only, so onnxruntime (CPU, opset 18) gives the same integers bit for bit
(tests/test_onnx_nonlinear.py). Inputs may be int8/int16/int32/int64 tensors (they are cast to
int64 first; the matmuls cast to their accumulator dtype); outputs have the dtypes of the program's
``Value`` records: layernorm ``storage_dtype(out_bits)`` (int8), softmax ``storage_dtype(out_bits,
unsigned)`` (int16 for 8 bit), swish / glu int32 for sig_bits <= 15 and narrow inputs (as the torch
kernel) else int64, gelu int64, matmuls their ``acc_dtype``. ``output_dtype(op, in_dtypes)`` gives
the default; every lowering takes ``out_dtype=`` to override it.

Only integer tensors and bool masks appear (``integer_only_report`` checks with shape inference).

Integer ONNX building blocks (all on int64 unless stated)
---------------------------------------------------------
* ``Div`` truncates toward zero. It is used directly only where the dividend is provably >= 0 and
  the divisor > 0 (then it is the floor). A dividend of either sign goes through ``_floor_div``:
  q = Div(n, d), floor = q - [q d > n]. Proof (d > 0): for n >= 0 truncation is the floor and
  q d <= n; for n < 0, q = ceil(n / d), q d >= n with equality iff d | n, and otherwise the floor
  is q - 1. |q d| <= |n| cannot overflow.
* ``>>`` by a constant or per-element shift z of a non-negative value: ``BitShift(RIGHT)`` on
  uint64 (ONNX's BitShift exists only for unsigned types), cast back to int64. Every shift here
  is <= 63 (proved at each use), which uint64 shifts define.
* 2^z for a per-element 0 <= z <= 62: ``BitShift(LEFT)`` of uint64 1, cast to int64 (< 2^63).
* bit_length(n), n >= 0: the torch kernel's 6-step binary search, L <- L + s where
  (n >> (L + s)) > 0 for s = 32, 16, 8, 4, 2, 1 (L + s <= 63), then + [n > 0].
* isqrt(n) for 0 <= n < 2^63 with a fixed count: ``ISQRT_STEPS`` = 6 Newton steps
  k <- min(k, (k + m // k) // 2), m = max(n, 1), from k0 = 2^ceil(L/2), L = bit_length(n), and 0
  where n = 0. This equals the torch kernel's loop (which stops when no element decreases: an
  element whose step does not decrease keeps k, exactly the min) once every element has reached
  floor(sqrt(n)). Proof that 6 steps suffice: for n >= 1, 2^(L-1) <= n < 2^L, so
  sqrt(n) < k0 <= 2 sqrt(n). Write the real Newton map f(k) = (k + n/k) / 2; with k = sqrt(n)(1 + e),
  f(k) = sqrt(n)(1 + e^2 / (2 (1 + e))). The integer step is floor(f(k)) (floor((k + floor(n/k))/2)
  = floor((k + n/k)/2)); f is increasing on [sqrt(n), oo), so by induction the integer iterate k_i
  is at most the real iterate x_i from x_0 = k0 while k_i >= sqrt(n) (and it never falls below
  isqrt(n), AM-GM; once it is <= sqrt(n) it is isqrt(n) and stays). From e_0 <= 1:
  e_1 <= 1/4, e_2 <= 1/40, e_3 <= 3.05e-4, e_4 <= 4.7e-8, e_5 <= 1.1e-15. With sqrt(n) < 2^31.5,
  x_5 - sqrt(n) < 2^31.5 * 1.1e-15 < 1e-5, so k_5 < sqrt(n) + 1, i.e. k_5 <= isqrt(n) + 1; if
  k_5 = isqrt(n) + 1 > sqrt(n), step 6 decreases it strictly and not below isqrt(n): k_6 = isqrt(n).
  Intermediates: k <= 2^32, m // k <= sqrt(n) < 2^31.5 (k >= sqrt(n) while it moves): no overflow.
  The tests compare with math.isqrt on squares +-1, powers of two +-1, 2^63 - 1 and random values.

What each op lowers to
----------------------
i-exp (inside softmax / swish / glu), ExpParams constants as int64 initializers:
    w  = -Clip(q, q_min, 0)                         # >= 0
    w' = w * 2^k                      (k >= 0)      # = -q'
       = Div(w + 2^(m-1) - 1, 2^m)    (k = -m < 0)  # -floor((-w + 2^(m-1)) / 2^m) = ceil((w - 2^(m-1)) / 2^m)
    z  = Div(w' R, 2^s)                             # w' >= 0: the kernel's (-q' R) >> s
    P  = (z q_ln2 - w' + q_b)^2 + q_c ;  e = P >> z  (BitShift on uint64, z <= z_max <= 62)
softmax(s, lengths): valid = Range(T) < lengths[:, None]; keep = valid[b, i] & valid[b, j]
    (Unsqueeze + And, [B, 1, T, T]; ``attention_keep``, which a whole graph can build once and pass
    to every softmax as ``keep=``); x = Where(keep, s, -2^62); d = x - ReduceMax(x); e = Where(keep,
    i-exp(d), 0); f = Div(2^K, Max(ReduceSum(e), 1)); p = Min(Div(e f + 2^(K-B-1), 2^(K-B)), 2^B - 1)
    (all dividends >= 0), Cast to the storage dtype. Fully masked rows: every e is 0, so p = 0.
swish / glu: E = i-exp(-Abs(q)); n = Div(E 2^(B+1) + (E + one), 2 (E + one)); sig = Where(q < 0, n,
    2^B - n); y = a * sig (glu: Split of axis 1 into halves a, b, sig of b); Cast.
gelu: t = Min(Abs(q), q_b) - q_b; y = q (q_one + Sign(q) (q_one - t^2)), int64.
layernorm (axis 1 of [B, C, T]): y = C x - ReduceSum(x); r = Max(bit_length(ReduceMax(Abs(y))) - h,
    r_E); ys = floor((y + 2^r // 2) / 2^r) (_floor_div: y has either sign); W = ReduceSum(ys^2) +
    Div(E + 4^(r-r_E) // 2, 4^(r-r_E)); t = Div(62 - bit_length(W), 2); D = Div(W 4^t, C);
    sd = Max(isqrt(D), 1); e = F + t - r; A = y 2^Max(e, 0); B = sd 2^Max(-e, 0);
    u = Clip(floor((2A + B) / (2B)), -U, U) (_floor_div); acc = u g_q + b_q ([1, C, 1] initializers);
    out = Clip(floor((acc M + 2^shift // 2) / 2^shift), qrange) (_floor_div), Cast int8.
    All shifts/powers: r <= 27, 2 (r - r_E) <= 54, 2t <= 62, Max(e, 0) <= F + 31 <= 51 (the bounds
    of the kernel's doc keep every product below 2^63).
matmul_qk(q, k): Cast to acc_dtype, Reshape [B, H, d_k, T] (shape Concat(B, H, -1, T)), Transpose q's
    last two axes, MatMul -> [B, H, T, T] in acc_dtype (exact while |sum| fits, which the converter
    proves: the same bound the torch kernel checks).
matmul_pv(p, v): MatMul(v heads [B, H, d_k, T_k], Transpose(p) [B, H, T_k, T_q]), Reshape to
    Shape(v) = [B, H d_k, T].
matmul_pos(q): Gather of the int8 table's columns L-T .. L+T-2, Cast, MatMul with q's heads, then
    Transformer-XL's rel_shift by Pad / Reshape / Slice (``rel_pos_scores``, shared with the Q/DQ
    graph); T > max_len: Gather out of range, a run-time error.

Not exact / not covered: nothing within the kernels' documented input ranges. The lowerings do not
re-check those ranges at run time (the torch kernels raise ValueError for |q| > 2^62 - 1 in
softmax, |q| > 2^31 in swish/glu, |q| > 2^32 in layernorm, OverflowError on a matmul that could
overflow; ONNX would wrap silently there). Empty tensors (T = 0) are not supported by the softmax
lowering (ReduceMax of an empty row); the torch kernel returns an empty tensor.
"""

from __future__ import annotations

import numpy as np

from ..intops.nonlinear import ExpParams
from ..quant.quantizer import qrange, storage_dtype
from . import nonlinear_params as nlp
from .ops import Op, dtype_name
from .onnx_graph import Graph

__all__ = ["ISQRT_STEPS", "LOWERINGS", "lower", "lower_layernorm", "lower_softmax", "lower_swish", "lower_glu",
           "lower_gelu", "lower_matmul_qk", "lower_matmul_pv", "lower_matmul_pos", "rel_pos_scores", "attention_keep", "lower_exp", "lower_bit_length", "lower_isqrt",
           "output_dtype", "build_single_op_model", "build_unary_model"]

ISQRT_STEPS = 6
MASK_FILL = -(1 << 62)
_NARROW = ("int8", "uint8", "int16")


# --------------------------------------------------------------------------- building blocks

def _tp(g: Graph, name: str) -> int:
    return {"int8": g.TP.INT8, "uint8": g.TP.UINT8, "int16": g.TP.INT16, "int32": g.TP.INT32,
            "int64": g.TP.INT64, "uint64": g.TP.UINT64, "bool": g.TP.BOOL}[name]


def _k(g: Graph, v, hint: str = "c") -> str:
    """int64 constant (scalar or array); scalars are shared within a graph (one initializer each)."""
    if isinstance(v, (int, np.integer)):
        cache = g.__dict__.setdefault("_nl_int64_scalars", {})
        if int(v) not in cache:
            cache[int(v)] = g.const(int(v), np.int64, hint)
        return cache[int(v)]
    return g.const(v, np.int64, hint)


def _cast(g: Graph, x: str, to: str, hint: str = "cast") -> str:
    return g.op("Cast", [x], hint, to=_tp(g, to))


def _i64(g: Graph, x: str) -> str:
    return _cast(g, x, "int64", "i64")


def _floor_div(g: Graph, n: str, d: str) -> str:
    """floor(n / d) for int64 n of either sign and d > 0 (module doc)."""
    q = g.op("Div", [n, d], "trunc")
    over = g.op("Greater", [g.op("Mul", [q, d], "qd"), n], "over")
    return g.op("Sub", [q, _i64(g, over)], "floor")


def _shr(g: Graph, n: str, z: str) -> str:
    """n >> z for int64 n >= 0 and int64 0 <= z <= 63: BitShift(RIGHT) on uint64."""
    u = _cast(g, n, "uint64", "u")
    zu = _cast(g, z, "uint64", "zu")
    return _i64(g, g.op("BitShift", [u, zu], "shr", direction="RIGHT"))


def _pow2(g: Graph, z: str) -> str:
    """2^z for int64 0 <= z <= 62: BitShift(LEFT) of uint64 1."""
    one = g.const(1, np.uint64, "one_u")
    return _i64(g, g.op("BitShift", [one, _cast(g, z, "uint64", "zu")], "pow2", direction="LEFT"))


def _reduce(g: Graph, kind: str, x: str, axis: int) -> str:
    return g.op(kind, [x, _k(g, [axis], "axes")], kind.lower(), keepdims=1)


def lower_bit_length(g: Graph, n: str) -> str:
    """bit_length of int64 n >= 0 (0 -> 0), the torch kernel's 6-step binary search."""
    L = _k(g, 0, "L0")
    for s in (32, 16, 8, 4, 2, 1):
        cand = g.op("Add", [L, _k(g, s, "s")], "cand")        # <= 63
        hit = g.op("Greater", [_shr(g, n, cand), _k(g, 0, "zero")], "hit")
        L = g.op("Where", [hit, cand, L], "L")
    pos = _i64(g, g.op("Greater", [n, _k(g, 0, "zero")], "pos"))
    return g.op("Add", [L, pos], "bitlen")


def lower_isqrt(g: Graph, n: str, steps: int = ISQRT_STEPS) -> str:
    """floor(sqrt(n)) for int64 0 <= n < 2^63: ``steps`` unrolled Newton steps (module doc proof)."""
    L = lower_bit_length(g, n)
    half = g.op("Div", [g.op("Add", [L, _k(g, 1, "one")], "L1"), _k(g, 2, "two")], "ceilhalf")  # ceil(L/2) <= 32
    k = _pow2(g, half)
    m = g.op("Max", [n, _k(g, 1, "one")], "m")
    two = _k(g, 2, "two")
    for _ in range(steps):
        nk = g.op("Div", [g.op("Add", [k, g.op("Div", [m, k], "mk")], "ks"), two], "newton")
        k = g.op("Min", [k, nk], "k")
    return g.op("Where", [g.op("Equal", [n, _k(g, 0, "zero")], "isz"), _k(g, 0, "zero"), k], "isqrt")


def lower_exp(g: Graph, x: str, p: ExpParams) -> str:
    """i-exp of any int64 x (clipped to [q_min, 0] first, as the kernel), int64 in [0, P_max]."""
    w = g.op("Neg", [g.op("Clip", [x, _k(g, p.q_min, "qmin"), _k(g, 0, "zero")], "xc")], "w")  # in [0, -q_min]
    k = p.in_shift
    if k > 0:
        w = g.op("Mul", [w, _k(g, 1 << k, "p2k")], "wk")
    elif k < 0:
        m = -k
        w = g.op("Div", [g.op("Add", [w, _k(g, (1 << (m - 1)) - 1, "hm")], "wh"), _k(g, 1 << m, "p2m")], "wk")
    z = g.op("Div", [g.op("Mul", [w, _k(g, p.recip, "R")], "wR"), _k(g, 1 << p.recip_shift, "p2s")], "z")
    t = g.op("Add", [g.op("Sub", [g.op("Mul", [z, _k(g, p.q_ln2, "qln2")], "zl"), w], "qr"), _k(g, p.q_b, "qb")], "t")
    P = g.op("Add", [g.op("Mul", [t, t], "tt"), _k(g, p.q_c, "qc")], "P")
    return _shr(g, P, z)


def _sigmoid(g: Graph, x: str, p) -> str:
    """sig(x) in [0, 2^B] for int64 x (intops.nonlinear._sigmoid64)."""
    B = p.out_bits
    one = p.exp.out_max
    E = lower_exp(g, g.op("Neg", [g.op("Abs", [x], "abs")], "nabs"), p.exp)
    den = g.op("Add", [E, _k(g, one, "one")], "den")
    num = g.op("Add", [g.op("Mul", [E, _k(g, 1 << (B + 1), "p2B1")], "E2"), den], "num")
    n = g.op("Div", [num, g.op("Mul", [den, _k(g, 2, "two")], "den2")], "n")
    neg = g.op("Less", [x, _k(g, 0, "zero")], "neg")
    return g.op("Where", [neg, n, g.op("Sub", [_k(g, 1 << B, "p2B"), n], "n1")], "sig")


# --------------------------------------------------------------------------- output dtypes

def output_dtype(op: Op, in_dtypes=None) -> str:
    """The dtype name of op's output: the program's Value conventions / the torch kernel's rule
    (``in_dtypes``: input dtype names, used for swish/glu; None = the program's int8 activations)."""
    a = op.attrs
    if op.kind == "layernorm":
        return dtype_name(storage_dtype(int(a["out_bits"]), True))
    if op.kind == "softmax":
        return dtype_name(storage_dtype(int(a["out_bits"]), False))
    if op.kind in ("swish", "glu"):
        narrow = in_dtypes is None or in_dtypes[0] in _NARROW
        return "int32" if narrow and int(a["sig_bits"]) <= 15 else "int64"
    if op.kind == "gelu":
        return "int64"
    if op.kind in ("matmul_qk", "matmul_pv", "matmul_pos"):
        return str(a["acc_dtype"])
    raise NotImplementedError(f"no Conformer lowering for op kind {op.kind!r}")


# --------------------------------------------------------------------------- the lowerings

def lower_layernorm(g: Graph, x: str, op: Op, out_dtype: str | None = None) -> str:
    """Integer LayerNorm over axis 1 of [B, C, T] (module doc); int8 (storage_dtype(out_bits))."""
    p = nlp.layernorm_params(op)
    C = p.channels
    xi = _i64(g, x)
    y = g.op("Sub", [g.op("Mul", [xi, _k(g, C, "C")], "Cx"), _reduce(g, "ReduceSum", xi, 1)], "y")
    amax = _reduce(g, "ReduceMax", g.op("Abs", [y], "absy"), 1)
    r = g.op("Max", [g.op("Sub", [lower_bit_length(g, amax), _k(g, p.h, "h")], "rh"), _k(g, p.eps_shift, "rE")], "r")
    pr = _pow2(g, r)
    two = _k(g, 2, "two")
    ys = _floor_div(g, g.op("Add", [y, g.op("Div", [pr, two], "half")], "yh"), pr)
    W = _reduce(g, "ReduceSum", g.op("Mul", [ys, ys], "ys2"), 1)
    if p.eps_int:
        s2 = _pow2(g, g.op("Mul", [g.op("Sub", [r, _k(g, p.eps_shift, "rE")], "dr"), two], "dr2"))
        eps = g.op("Div", [g.op("Add", [_k(g, p.eps_int, "E"), g.op("Div", [s2, two], "h2")], "Eh"), s2], "eps")
        W = g.op("Add", [W, eps], "W")
    t = g.op("Div", [g.op("Sub", [_k(g, 62, "c62"), lower_bit_length(g, W)], "t62"), two], "t")
    D = g.op("Div", [g.op("Mul", [W, _pow2(g, g.op("Mul", [t, two], "t2"))], "V"), _k(g, C, "C")], "D")
    sd = g.op("Max", [lower_isqrt(g, D), _k(g, 1, "one")], "sd")
    e = g.op("Sub", [g.op("Add", [t, _k(g, p.norm_bits, "F")], "Ft"), r], "e")
    zero = _k(g, 0, "zero")
    A = g.op("Mul", [y, _pow2(g, g.op("Max", [e, zero], "epos"))], "A")
    Bd = g.op("Mul", [sd, _pow2(g, g.op("Max", [g.op("Neg", [e], "ne"), zero], "eneg"))], "Bd")
    u = _floor_div(g, g.op("Add", [g.op("Mul", [A, two], "A2"), Bd], "uN"), g.op("Mul", [Bd, two], "B2"))
    u = g.op("Clip", [u, _k(g, -p.u_max, "mU"), _k(g, p.u_max, "U")], "u")
    gq = _k(g, np.asarray(p.gamma_q, dtype=np.int64).reshape(1, C, 1), "gamma_q")
    bq = _k(g, np.asarray(p.beta_q, dtype=np.int64).reshape(1, C, 1), "beta_q")
    acc = g.op("Add", [g.op("Mul", [u, gq], "ug"), bq], "acc")
    n = g.op("Add", [g.op("Mul", [acc, _k(g, p.M, "M")], "accM"), _k(g, (1 << p.shift) >> 1, "rnd")], "n")
    out = _floor_div(g, n, _k(g, 1 << p.shift, "p2shift"))
    lo, hi = qrange(p.out_bits)
    out = g.op("Clip", [out, _k(g, lo, "lo"), _k(g, hi, "hi")], "ln")
    return _cast(g, out, out_dtype or output_dtype(op), "layernorm")


def attention_keep(g: Graph, scores: str, lengths: str) -> str:
    """bool [B, 1, T, T]: True where query i and key j are both valid (< lengths[b]), T = the last
    dimension of ``scores``; the negation of torch_ref.attention_mask. Reusable across layers."""
    T = g.op("Squeeze", [g.op("Shape", [scores], "shape", start=-1)], "T")
    rng = g.op("Range", [_k(g, 0, "zero"), T, _k(g, 1, "one")], "rng")
    valid = g.op("Less", [g.op("Unsqueeze", [rng, _k(g, [0], "ax0")], "rng1"),
                          g.op("Unsqueeze", [_i64(g, lengths), _k(g, [1], "ax1")], "len1")], "valid")  # [B, T]
    return g.op("And", [g.op("Unsqueeze", [valid, _k(g, [1, 3], "ax13")], "vq"),
                        g.op("Unsqueeze", [valid, _k(g, [1, 2], "ax12")], "vk")], "keep")       # [B, 1, T, T]


def lower_softmax(g: Graph, scores: str, lengths: str, op: Op, out_dtype: str | None = None,
                  keep: str | None = None) -> str:
    """Integer softmax over the last axis of scores [B, H, T, T], (query i, key j) masked where i or
    j >= lengths[b] (torch_ref.attention_mask); storage_dtype(out_bits, unsigned). ``keep``: an
    ``attention_keep`` mask already in the graph for these lengths and T (else one is built)."""
    p = nlp.softmax_params(op)
    x = _i64(g, scores)
    if keep is None:
        keep = attention_keep(g, x, lengths)
    zero = _k(g, 0, "zero")
    x = g.op("Where", [keep, x, _k(g, MASK_FILL, "fill")], "xm")
    d = g.op("Sub", [x, _reduce(g, "ReduceMax", x, -1)], "d")
    e = g.op("Where", [keep, lower_exp(g, d, p.exp), zero], "e")
    s = _reduce(g, "ReduceSum", e, -1)
    K, B = p.recip_bits, p.out_bits
    f = g.op("Div", [_k(g, 1 << K, "p2K"), g.op("Max", [s, _k(g, 1, "one")], "s1")], "f")
    prob = g.op("Div", [g.op("Add", [g.op("Mul", [e, f], "ef"), _k(g, 1 << (K - B - 1), "rnd")], "efr"),
                        _k(g, 1 << (K - B), "p2KB")], "prob")
    prob = g.op("Min", [prob, _k(g, (1 << B) - 1, "pmax")], "probc")
    return _cast(g, prob, out_dtype or output_dtype(op), "softmax")


def lower_swish(g: Graph, x: str, op: Op, out_dtype: str | None = None) -> str:
    """x * sig(x) (int_swish); int32 (sig_bits <= 15, narrow input) else int64."""
    p = nlp.sigmoid_params(op)
    xi = _i64(g, x)
    return _cast(g, g.op("Mul", [xi, _sigmoid(g, xi, p)], "swish64"), out_dtype or output_dtype(op), "swish")


def lower_glu(g: Graph, x: str, op: Op, out_dtype: str | None = None) -> str:
    """a * sig(b) for the two halves (a, b) of axis 1 (int_glu, dim=1)."""
    p = nlp.sigmoid_params(op)
    xi = _i64(g, x)
    a, b = g.name("glu_a"), g.name("glu_b")
    g.nodes.append(g.helper.make_node("Split", [xi], [a, b], name=g.name("split"), axis=1, num_outputs=2))
    return _cast(g, g.op("Mul", [a, _sigmoid(g, b, p)], "glu64"), out_dtype or output_dtype(op), "glu")


def lower_gelu(g: Graph, x: str, op: Op, out_dtype: str | None = None) -> str:
    """i-GELU (int_gelu): q (q_one + sign(q) (q_one - t^2)), t = min(|q|, q_b) - q_b; int64."""
    p = nlp.gelu_params(op)
    xi = _i64(g, x)
    t = g.op("Sub", [g.op("Min", [g.op("Abs", [xi], "abs"), _k(g, p.q_b, "qb")], "mn"), _k(g, p.q_b, "qb")], "t")
    qone = _k(g, p.q_one, "qone")
    L = g.op("Mul", [g.op("Sign", [xi], "sign"), g.op("Sub", [qone, g.op("Mul", [t, t], "tt")], "poly")], "L")
    y = g.op("Mul", [xi, g.op("Add", [qone, L], "ql")], "gelu64")
    dt = out_dtype or output_dtype(op)
    return y if dt == "int64" else _cast(g, y, dt, "gelu")


def split_heads(g: Graph, x: str, heads: int) -> str:
    """[B, H d_k, T] -> [B, H, d_k, T] (shape Concat(B, [H, -1], T) from Shape(x))."""
    shape = g.op("Concat", [g.op("Shape", [x], "bdim", start=0, end=1), _k(g, [int(heads), -1], "hd"),
                            g.op("Shape", [x], "tdim", start=2, end=3)], "hshape", axis=0)
    return g.op("Reshape", [x, shape], "heads")


def lower_matmul_qk(g: Graph, q: str, k: str, op: Op, out_dtype: str | None = None) -> str:
    """s[b, h, i, j] = sum_c q[b, h d_k + c, i] k[b, h d_k + c, j], in acc_dtype."""
    acc = str(op.attrs["acc_dtype"])
    h = int(op.attrs["heads"])
    qh = g.op("Transpose", [split_heads(g, _cast(g, q, acc, "qa"), h)], "qT", perm=[0, 1, 3, 2])
    s = g.op("MatMul", [qh, split_heads(g, _cast(g, k, acc, "ka"), h)], "scores")
    dt = out_dtype or output_dtype(op)
    return s if dt == acc else _cast(g, s, dt, "scores_c")


def lower_matmul_pv(g: Graph, p: str, v: str, op: Op, out_dtype: str | None = None) -> str:
    """y[b, h d_k + c, i] = sum_j p[b, h, i, j] v[b, h d_k + c, j], in acc_dtype, [B, H d_k, T]."""
    acc = str(op.attrs["acc_dtype"])
    h = int(op.attrs["heads"])
    va = _cast(g, v, acc, "va")
    pt = g.op("Transpose", [_cast(g, p, acc, "pa")], "pT", perm=[0, 1, 3, 2])
    y = g.op("MatMul", [split_heads(g, va, h), pt], "ctx")                          # [B, H, d_k, T_q]
    y = g.op("Reshape", [y, g.op("Shape", [va], "vshape")], "ctx2")
    dt = out_dtype or output_dtype(op)
    return y if dt == acc else _cast(g, y, dt, "ctx_c")


def lower_matmul_pos(g: Graph, q: str, op: Op, out_dtype: str | None = None) -> str:
    """Relative-position scores with rel_shift (torch_ref._matmul_pos): s[b, h, i, j] =
    sum_c q[b, h d_k + c, i] pos[h d_k + c, (L-1) - i + j], in acc_dtype, [B, H, T, T].

    The int8 table [H d_k, 2L-1] is an initializer; Gather takes columns L-T .. L+T-2 (positions
    T-1 ... -(T-1)), Cast to acc_dtype after the gather, MatMul of q's heads [B, H, T, d_k] with
    [1, H, d_k, 2T-1] -> [B, H, T, 2T-1], then Transformer-XL's rel_shift as in the torch kernel:
    Pad one zero column in front -> [B, H, T, 2T], Reshape [B, H, 2T, T], drop row 0, Reshape
    [B, H, T, 2T-1], keep columns < T: out[i, j] = x[i, (T-1) - i + j] (pure data movement).
    T > L (the torch kernel's ValueError): the column index L+T-2 is out of the table's range and
    the Gather fails at run time (an error, never wrong scores)."""
    acc = str(op.attrs["acc_dtype"])
    h, L = int(op.attrs["heads"]), int(op.attrs["max_len"])
    pos = op.params["pos"].numpy()
    if pos.min() < -128 or pos.max() > 127:
        raise ValueError(f"{op.name}: matmul_pos table must lie within int8")
    table = g.const(pos.astype(np.int8), np.int8, "pos")
    s = rel_pos_scores(g, _cast(g, q, acc, "qa"), table, h, L, cast_to=acc)
    dt = out_dtype or output_dtype(op)
    return s if dt == acc else _cast(g, s, dt, "pos_c")


INT64_END = (1 << 63) - 1


def rel_pos_scores(g: Graph, q: str, table: str, heads: int, L: int, cast_to: str | None = None) -> str:
    """rel_shift(q_heads^T @ table columns L-T .. L+T-2) -> [B, H, T, T] (lower_matmul_pos's doc),
    on any numeric dtype: q [B, H d_k, T] and table [H d_k, 2L-1] of one dtype (``cast_to``: cast
    the gathered columns to it first; the Q/DQ graph calls this with float tensors)."""
    h = int(heads)
    T1 = g.op("Shape", [q], "tdim", start=2, end=3)                              # [T]
    T = g.op("Squeeze", [T1], "T")
    # columns L-T .. L+T-2 by Gather: for T > L the last index exceeds 2L-2 and Gather fails at run
    # time (never silently wrong scores). The offset is added after the Range on purpose:
    # onnxruntime rewrites Gather(Range) into a Slice, which clamps instead of failing.
    n = g.op("Sub", [g.op("Add", [T, T], "T2"), _k(g, 1, "one")], "ncols")
    idx = g.op("Add", [g.op("Range", [_k(g, 0, "zero"), n, _k(g, 1, "one")], "prng"),
                       g.op("Sub", [_k(g, L, "L"), T], "LmT")], "pidx")
    cols = g.op("Gather", [table, idx], "pcols", axis=1)                         # [H d_k, 2T-1]
    if cast_to is not None:
        cols = _cast(g, cols, cast_to, "pa")
    dk = g.op("Div", [g.op("Shape", [table], "hd", start=0, end=1), _k(g, [h], "H")], "dk")
    ph = g.op("Reshape", [cols, g.op("Concat", [_k(g, [1, h], "oneh"), dk, _k(g, [-1], "m1")], "phs", axis=0)],
              "pheads")                                                            # [1, H, d_k, 2T-1]
    qh = g.op("Transpose", [split_heads(g, q, h)], "qT", perm=[0, 1, 3, 2])
    x = g.op("MatMul", [qh, ph], "bd")                                             # [B, H, T, 2T-1]
    x = g.op("Pad", [x, _k(g, [0, 0, 0, 1, 0, 0, 0, 0], "pads")], "bdpad", mode="constant")
    x = g.op("Reshape", [x, g.op("Concat", [_k(g, [0, 0, -1], "r1"), T1], "s1", axis=0)], "bdr")   # [B, H, 2T, T]
    x = g.op("Slice", [x, _k(g, [1], "one1"), _k(g, [INT64_END], "end"), _k(g, [2], "ax2")], "bddrop")
    x = g.op("Reshape", [x, g.op("Concat", [_k(g, [0, 0], "r2"), T1, _k(g, [-1], "m1")], "s2", axis=0)], "bdr2")
    return g.op("Slice", [x, _k(g, [0], "z1"), T1, _k(g, [3], "ax3")], "relshift")  # [B, H, T, T]


LOWERINGS = {
    "layernorm": lambda g, op, x, **kw: lower_layernorm(g, x, op, **kw),
    "softmax": lambda g, op, s, lengths, **kw: lower_softmax(g, s, lengths, op, **kw),  # keep= to share a mask
    "swish": lambda g, op, x, **kw: lower_swish(g, x, op, **kw),
    "glu": lambda g, op, x, **kw: lower_glu(g, x, op, **kw),
    "gelu": lambda g, op, x, **kw: lower_gelu(g, x, op, **kw),
    "matmul_qk": lambda g, op, q, k, **kw: lower_matmul_qk(g, q, k, op, **kw),
    "matmul_pv": lambda g, op, p, v, **kw: lower_matmul_pv(g, p, v, op, **kw),
    "matmul_pos": lambda g, op, q, **kw: lower_matmul_pos(g, q, op, **kw),
}


def lower(g: Graph, op: Op, inputs: list[str], out_dtype: str | None = None, **extra) -> str:
    """Dispatch on op.kind: append op's lowering with input tensor names ``inputs`` (``extra``:
    keyword options of that lowering, e.g. softmax's ``keep``)."""
    fn = LOWERINGS.get(op.kind)
    if fn is None:
        raise NotImplementedError(f"no Conformer lowering for op kind {op.kind!r}")
    return fn(g, op, *inputs, out_dtype=out_dtype, **extra)


# --------------------------------------------------------------------------- single-op models

def build_single_op_model(op: Op, input_specs, out_dtype: str | None = None):
    """An ONNX ModelProto computing just ``op``: inputs ``in0``, ``in1``... with ``input_specs`` =
    [(dtype name, shape)] (shape entries int, str or None), output ``out`` with
    ``output_dtype(op, dtypes)`` (or ``out_dtype``)."""
    g = Graph()
    h = g.helper
    names = [f"in{i}" for i in range(len(input_specs))]
    inputs = [h.make_tensor_value_info(n, _tp(g, dt), list(shape) if shape is not None else None)
              for n, (dt, shape) in zip(names, input_specs)]
    dt = out_dtype or output_dtype(op, [d for d, _ in input_specs])
    y = lower(g, op, names, out_dtype=dt)
    g.identity(y, "out")
    outputs = [h.make_tensor_value_info("out", _tp(g, dt), None)]
    return g.model(inputs, outputs, f"intasr_{op.kind}", f"integer-only lowering of one {op.kind} op")


def build_unary_model(fn, in_dtype: str = "int64"):
    """A model ``out = fn(g, in0)`` for a building block (``lower_isqrt``, ``lower_bit_length``,
    ``lambda g, x: lower_exp(g, x, p)``) on an int64 tensor of any shape."""
    g = Graph()
    h = g.helper
    y = fn(g, _i64(g, "in0"))
    g.identity(y, "out")
    return g.model([h.make_tensor_value_info("in0", _tp(g, in_dtype), None)],
                   [h.make_tensor_value_info("out", g.TP.INT64, None)], "intasr_block")
