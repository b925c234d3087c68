"""The integer-only ONNX lowering of the integer program (onnxruntime integer operators).

``build_integer_model(program)`` writes one ONNX graph per program with ``onnx.helper``, op by
op, knowing nothing of the model the program came from. Inputs ``q`` int8 [B, F, T] (the
quantized log-mel, scale ``program.meta["input_scale"]``) and ``lengths`` int64 [B] (valid
frames); outputs ``logits`` int64 [B, C, T'] (scale ``program.meta["logit_scale"]``) and
``logits_lengths`` int64 [B]. Every value between them is an integer tensor (ConvInteger,
Cast/Mul/Add/Div/Clip on int32/int64, Cast to int8, Range/Less/Where for the masks) or a bool
mask (``integer_only_report`` checks this with ONNX shape inference). On a padded batch the
logits equal ``forward_int``'s bit for bit on every valid frame (tests/test_deploy.py).

Storage of the program's values
-------------------------------
Every program value maps to an ONNX tensor plus its storage convention:
* activation (``act``, at most 8 bits): int8 s = y + z with zero point z = 0 for signed y and
  z = -128 for unsigned y in [0, 255]. Weights are stored as uint8 w + 128 with zero point 128.
  ConvInteger then computes sum (w_u - 128)(s - z) = sum w * y exactly and pads with the zero
  point (a real 0). With uint8 weights as the GEMM's A operand and int8 activations as B,
  onnxruntime dispatches its fast U8S8 kernels (~20x faster than uint8 x int8 in onnxruntime
  1.32). The U8S8 kernels are exact with VNNI (vpdpbusd accumulates u8*s8 products in int32);
  on AVX2 without VNNI they use vpmaddubsw, which saturates a pair of products at int16, so
  ``ort_kernels_exact()`` runs an adversarial probe and the runners refuse an inexact kernel.
* accumulator / rescaled sum (``acc``): an int32 or int64 tensor a with a per-channel constant
  K and a per-channel bound: true value = a + K, |a| <= bound. A conv1d gives its ConvInteger
  output (int32, no bias) with K = bias; a rescale gives its shifted quotient with K = -R (below).
  The constant is folded into whatever consumes the value: the requantize/rescale constant (the
  bias costs nothing there: the peephole of the old graph, for free), the sum of a residual
  block (offsets R of its branches add up and come back once, at the clamp), or an explicit Add
  where a value must be materialized (a mask, a program output). The int32 accumulator must
  hold sum|w| * max|y| (checked: ConvInteger accumulates in int32, int64 accumulators are
  refused with NotImplementedError).
* lengths: int64 [B].

Dyadic requantization with ONNX integer ops
-------------------------------------------
Ours (quant.dyadic): v = acc * M + 2^(s-1) (acc with bias), y = clamp(floor(v / 2^s), lo, hi).
ONNX integer Div truncates toward zero, BitShift exists only for unsigned types. Exact form,
with the stored a (acc = a + K):

    y - z = Clip( Div(a*M + c, 2^s) + (L - z),  lo - z, hi - z ),   c = K*M + 2^(s-1) - L*2^s

Proof (L = lo). Let n = a*M + c = v - lo*2^s. If n >= 0, Div(n, 2^s) = floor(n / 2^s) =
floor(v / 2^s) - lo (lo*2^s is a multiple of 2^s), so the sum is floor(v/2^s) - z and the Clip
is the clamp. If n < 0, then v < lo*2^s, the true result is clamped to lo, and Div(n, 2^s) <= 0
(truncation of a negative number), so the sum is <= lo - z and the Clip gives lo - z as well.

Without a clamp (rescale) the same holds with L = -R, R = floor(v_max / 2^s) + 1 from the static
bound |acc| <= (bound + |K|) (so n > 0 always): the quotient is stored with constant -R, exactly.
With a clamp the offset is L = max(lo, -R) per channel (the same proof; it keeps the constant
small for channels whose multiplier is tiny: lo * 2^s would overflow int64 for s up to 62).
``floor="shift"`` replaces Div by Max(n, 0) -> Cast(uint64) -> BitShift(RIGHT) -> Cast(int64),
the same value for n >= 0 and 0 for n < 0 (then clamped as above); it exists to time both.
Every constant is checked to keep |n| < 2^63 (OverflowError otherwise).

The Conformer's ops
-------------------
* layernorm, softmax, swish, glu, gelu, matmul_qk, matmul_pv, matmul_pos: ``onnx_nonlinear``'s
  exact integer lowerings (proofs there), fed with the *true* integers of their inputs: a signed
  activation (zero point 0, the Conformer's int8 stream) is passed as stored; an unsigned one or an
  accumulator with constants is materialized (int64) first. layernorm gives a signed activation
  (int8); swish / glu / gelu give accumulators in the program's dtypes (int32 / int64) with constant
  0 and the static bound max|x| 2^sig_bits (swish, glu) or max|x| (q_one + max(q_one, q_b^2))
  (gelu). On an int8 activation (the Conformer's case) they are a Gather from a 256-entry table
  of the torch kernel over every stored value (glu: the sigmoid table, then a * sig(b)): exact by
  construction and ~25% faster end to end on the hama Conformer than the i-exp / i-GELU formulas,
  which wider inputs still take; the matmuls give acc_dtype accumulators bounded by their dtype (int32: the conversion
  proved the sum fits). Softmax probabilities (0 .. 2^B - 1, int16 in the program) are kept as an
  int32 accumulator with constant 0: matmul_pv, their only consumer, computes in int32 anyway, so
  no offset or narrowing is spent on them. One ``attention_keep`` mask per lengths tensor is shared
  by every softmax.
* A ``rescale`` or ``requantize`` of any value works on its stored form with its constant (a
  residual skip rescales an int8 activation: stored s with constant -z and bound 128). Where a
  value's bound is unknown (an int64 matmul accumulator, sums of such) or the bounded offset would
  overflow int64, the offset form is replaced by the sign-aware floor division: n = a M + (K M +
  2^(s-1)), q = Div(n, 2^s) - [Div(n, 2^s) 2^s > n] (= floor for either sign), clamped as usual.
  It needs no bound: it is exact whenever the reference's own int64 product does not wrap.
* Signed activations wider than 8 bits (``residual_bits=16``) are stored as int16 / int32 with zero
  point 0 (only ConvInteger needs int8; it refuses them).
* NeMo's Conv2d subsampling: ``conv2d`` is a 2-D ConvInteger with the conv1d storage (int8 input
  with its zero point, uint8 weights + 128; ``ort_kernels_exact`` probes the 2-D form too);
  ``to_image`` Transpose + Unsqueeze, ``flatten_freq`` Transpose + Reshape (an accumulator with
  per-channel constants is materialized first); images carry [1, C, 1, 1] per-channel constants
  and [B, 1, T, 1] masks. ``matmul_pos`` with T > max_len fails at run time (Gather out of range).

Masks and lengths
-----------------
``mask_time(x, lengths)``: Where(Range(T) < lengths[:, None, None], x, z): padded frames become
the zero point, a real 0 (an accumulator is materialized first and masked with 0). The bool mask
is computed once per lengths tensor. A mask whose every consumer is a conv without padding (the
pointwise convs) is left out (``redundant_masks``): no valid output frame reads a padded frame
through such a conv, so only padded frames change, and they are not part of the result. ``frames``: (lengths + 2p - d(K-1) - 1) // s + 1 with Add
and Div on int64; the numerator is shifted by a multiple of s to be nonnegative for lengths >= 0,
so Div (truncation) is the floor.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..quant.quantizer import qrange
from .onnx_graph import (OPSET, Graph, GraphLowering, as_numpy, cached_session, flatten_freq_nodes, full_lengths,
                         io_channels, make_session, onnx_modules, program_and_labels, save_model, to_image_nodes)
from .ops import Program

INT64_MAX = (1 << 63) - 1
LUT_MAX_BITS = 8    # swish / glu / gelu of activations up to this width: table lookup (0: the formulas)
INT32_MAX = (1 << 31) - 1

__all__ = ["LOWERS", "build_integer_model", "export_onnx", "integer_only_report", "ort_kernels_exact", "run_onnx_int"]


# --------------------------------------------------------------------------- shared lowering pieces

def col(v, rank: int = 3) -> np.ndarray:
    """Per-channel int64 constant shaped [1, C, 1] (rank 4: [1, C, 1, 1]; C = 1 broadcasts)."""
    return np.asarray([int(x) for x in v], dtype=np.int64).reshape((1, -1) + (1,) * (rank - 2))


def ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def broadcast(*lists):
    """Per-channel lists of length 1 or C -> all of length C (ValueError on a mismatch)."""
    n = max(len(v) for v in lists)
    out = []
    for v in lists:
        if len(v) not in (1, n):
            raise ValueError(f"per-channel constants of lengths {[len(x) for x in lists]} do not broadcast")
        out.append(list(v) * n if len(v) == 1 else list(v))
    return out


def redundant_masks(program: Program) -> set[str]:
    """Outputs of mask_time ops that no valid output frame can see: every consumer is a conv1d
    without padding. Such a conv's valid output frame t < L' = (L - d(K-1) - 1) // s + 1 reads
    input frames t*s + k*d <= (L' - 1)*s + d(K-1) <= L - 1, all valid, and every other op acts
    frame by frame; so skipping the mask changes only padded frames, which are not part of the
    result (a later mask or a padded conv's own mask still zeroes them where it matters)."""
    cons = program.consumers()
    outs = set(program.outputs)
    return {op.outputs[0] for op in program.ops
            if op.kind == "mask_time" and op.outputs[0] not in outs and cons.get(op.outputs[0])
            and all(c.kind == "conv1d" and int(c.attrs["padding"]) == 0 for c in cons[op.outputs[0]])}


def _storage(op):
    """(bits, signed, storage dtype, lo, hi, zero point) of the activation a requantize / clamp
    op writes: signed values stored as they are, unsigned 8-bit ones as y - 128 in int8."""
    bits, signed = int(op.attrs["bits"]), bool(op.attrs["signed"])
    if bits > 8 and not signed:
        raise NotImplementedError(f"{op.name}: integer ONNX lowering stores unsigned activations of at most 8 bits")
    lo, hi = qrange(bits, signed)
    return bits, signed, _act_dtype(bits, signed), lo, hi, 0 if signed else -128


# --------------------------------------------------------------------------- value storage

@dataclass
class _Act:
    """An activation stored as s = y + zero_point: int8 for at most 8 bits (zero point 0 signed,
    -128 unsigned), wider signed activations (residual_bits 16) as int16/int32 with zero point 0."""

    name: str
    signed: bool
    bits: int
    rank: int = 3

    @property
    def zero_point(self) -> int:
        return 0 if self.signed else -128

    @property
    def dtype(self) -> str:
        return _act_dtype(self.bits, self.signed)

    @property
    def absmax(self) -> int:
        """max |y| over qrange(bits, signed)."""
        return (1 << (self.bits - 1)) if self.signed else (1 << self.bits) - 1


def _act_dtype(bits: int, signed: bool) -> str:
    if bits <= 8:
        return "int8"
    if not signed:
        raise NotImplementedError("integer ONNX lowering stores unsigned activations of at most 8 bits")
    return "int16" if bits <= 16 else "int32" if bits <= 32 else "int64"


_DTYPE_BOUND = {"int8": 1 << 7, "int16": 1 << 15, "int32": 1 << 31, "int64": None}


@dataclass
class _Acc:
    """An accumulator: true value = stored + const (per channel), |stored| <= bound (per channel).
    bound None: not known statically (a matmul over a dynamic number of frames, a wide sum of
    such); the program's conversion proved the range (the reference computes in the same dtypes),
    and requantize/rescale take the bound-free floor form (``_Lowering.scaled``)."""

    name: str
    dtype: str          # "int8" | "int16" | "int32" | "int64"
    const: list
    bound: list | None
    rank: int = 3


def _floor_div(g: Graph, n: str, shifts: list[int], floor: str, rank: int = 3) -> str:
    """Div(n, 2^s) for n >= 0 (any value <= 0 for n < 0, where the caller clamps)."""
    if floor == "div":
        return g.op("Div", [n, g.const(col([1 << s for s in shifts], rank), np.int64, "d")], "q")
    if floor == "shift":
        pos = g.op("Max", [n, g.const(0, np.int64, "zero")], "pos")
        u = g.op("Cast", [pos], "u", to=g.TP.UINT64)
        sh = g.op("BitShift", [u, g.const(col(shifts, rank).astype(np.uint64), np.uint64, "s")], "sh",
                  direction="RIGHT")
        return g.op("Cast", [sh], "q", to=g.TP.INT64)
    raise ValueError(f"floor must be 'div' or 'shift', not {floor!r}")


def _floor_div_signed(g: Graph, n: str, d: str) -> str:
    """floor(n / d) for int64 n of either sign and d > 0: q = Div(n, d) - [Div(n, d) d > n]
    (truncation is the floor for n >= 0; for n < 0 it is the ceiling, one above the floor unless
    d divides n)."""
    q = g.op("Div", [n, d], "trunc")
    over = g.op("Greater", [g.op("Mul", [q, d], "qd"), n], "over")
    return g.op("Sub", [q, g.op("Cast", [over], "over64", to=g.TP.INT64)], "floor")



_NP = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64}


class _Lowering(GraphLowering):
    NAME = "integer ONNX lowering"

    def __init__(self, program: Program, floor: str):
        if floor not in ("div", "shift"):
            raise ValueError(f"floor must be 'div' or 'shift', not {floor!r}")
        super().__init__(program)
        self.floor = floor
        self.skip_masks = redundant_masks(program)
        self._keep: dict[str, str] = {}     # lengths -> attention_keep mask (softmax)

    # --- helpers
    def as_acc(self, v) -> _Acc:
        if isinstance(v, _Acc):
            return v
        if isinstance(v, _Act):
            return _Acc(v.name, v.dtype, [-v.zero_point], [_DTYPE_BOUND[v.dtype]], v.rank)
        raise TypeError(f"expected a tensor value, got {v!r}")

    def int64(self, a: _Acc) -> str:
        return a.name if a.dtype == "int64" else self.g.op("Cast", [a.name], "a64", to=self.g.TP.INT64)

    def materialize(self, a: _Acc) -> str:
        """The true value as an int64 tensor."""
        x = self.int64(a)
        if any(a.const):
            x = self.g.op("Add", [x, self.g.const(col(a.const, a.rank), np.int64, "k")], "true")
        return x

    def true_value(self, v) -> str:
        """A tensor (any integer dtype) holding v's true integers: the stored tensor itself where
        the zero point / constant is 0 (the Conformer's signed int8 activations, the nonlinear
        ops' products), else the int64 sum."""
        if isinstance(v, _Act) and v.zero_point == 0:
            return v.name
        a = self.as_acc(v)
        return a.name if not any(a.const) else self.materialize(a)

    @staticmethod
    def absmax(v) -> int | None:
        """A static bound on |true value| (None: unknown)."""
        if isinstance(v, _Act):
            return v.absmax
        if v.bound is None:
            return None
        return max(b + abs(k) for b, k in zip(*broadcast(v.bound, v.const)))

    def result_bound(self, a: _Acc, M, S) -> list[int] | None:
        """R per channel with |floor(v / 2^s)| < R for every reachable v = (a + K)*M + 2^(s-1)
        (None when a's bound is unknown)."""
        if a.bound is None:
            return None
        bd, K, M, S = broadcast(a.bound, a.const, M, S)
        return [((b + abs(k)) * m + ((1 << s) >> 1)) // (1 << s) + 1 for b, k, m, s in zip(bd, K, M, S)]

    def scaled(self, a: _Acc, M, S, L) -> str:
        """Div(a*M + c, 2^s) with c = K*M + 2^(s-1) - L*2^s (module doc), int64. OverflowError
        (before any node is added) when a constant could overflow int64."""
        bd, K, M, S, L = broadcast(a.bound, a.const, M, S, L)
        if min(S) < 0 or min(M) < 0:
            raise ValueError("need M >= 0 and shift >= 0")
        c = [k * m + ((1 << s) >> 1) - l * (1 << s) for k, m, s, l in zip(K, M, S, L)]
        for b, m, cc in zip(bd, M, c):
            if b * m + abs(cc) > INT64_MAX:
                raise OverflowError("requantization constant would overflow int64")
        g = self.g
        n = g.op("Add", [g.op("Mul", [self.int64(a), g.const(col(M, a.rank), np.int64, "M")], "am"),
                         g.const(col(c, a.rank), np.int64, "c")], "n")
        return _floor_div(g, n, S, self.floor, a.rank)

    def scaled_floor(self, a: _Acc, M, S) -> str:
        """floor(((a + K) M + 2^(s-1)) / 2^s), int64, for a stored value of unknown bound: n = a M
        + (K M + 2^(s-1)) of either sign and the sign-aware floor division. Exact whenever the
        reference's own int64 product (a + K) M + 2^(s-1) does not wrap (K = 0 for every value
        that reaches here unbounded, so n is that product)."""
        K, M, S = broadcast(a.const, M, S)
        if min(S) < 0 or min(M) < 0:
            raise ValueError("need M >= 0 and shift >= 0")
        g = self.g
        n = g.op("Mul", [self.int64(a), g.const(col(M, a.rank), np.int64, "M")], "am")
        c = [k * m + ((1 << s) >> 1) for k, m, s in zip(K, M, S)]
        if any(c):
            n = g.op("Add", [n, g.const(col(c, a.rank), np.int64, "c")], "n")
        return _floor_div_signed(g, n, g.const(col([1 << s for s in S], a.rank), np.int64, "d"))

    def store(self, s: str, lo: int, hi: int, z: int, off, rank: int = 3, dtype: str = "int8") -> str:
        """Clip(s + off, lo - z, hi - z) -> int8 (off per channel, already including -z)."""
        g = self.g
        if any(off):
            s = g.op("Add", [s, g.const(col(off, rank), np.int64, "off")], "qs")
        y = g.op("Clip", [s, g.const(lo - z, np.int64, "lo"), g.const(hi - z, np.int64, "hi")], "clip")
        return g.op("Cast", [y], "y", to=getattr(g.TP, dtype.upper()))

    # --- kernels, one per op kind
    def mask_time(self, op, x, lengths):
        g = self.g
        if op.outputs[0] in self.skip_masks:
            return x
        if isinstance(x, _Act):
            m = self.lengths.mask(x.name, lengths, x.rank)
            return _Act(g.op("Where", [m, x.name, g.const(x.zero_point, _NP[x.dtype], "z")], "masked"), x.signed,
                        x.bits, x.rank)
        a = self.as_acc(x)
        t = self.materialize(a)
        m = self.lengths.mask(t, lengths, a.rank)
        bound = None if a.bound is None else [b + abs(k) for b, k in zip(*broadcast(a.bound, a.const))]
        return _Acc(g.op("Where", [m, t, g.const(0, np.int64, "z")], "masked"), "int64", [0], bound, a.rank)

    def frames(self, op, lengths):
        return self.lengths.frames(lengths, op.attrs)

    def conv1d(self, op, x):
        g = self.g
        if not isinstance(x, _Act):
            raise NotImplementedError(f"{op.name}: ConvInteger needs an int8 activation input")
        if x.bits > 8:
            raise NotImplementedError(f"{op.name}: integer ONNX lowering needs activations of at most 8 bits")
        w = op.params["weight"].numpy().astype(np.int64)
        if w.min() < -128 or w.max() > 127:
            raise ValueError(f"{op.name}: integer ONNX lowering needs weights within int8")
        xmax = (1 << (x.bits - 1)) if x.signed else (1 << x.bits) - 1
        bound = [int(s) * xmax for s in np.abs(w).reshape(w.shape[0], -1).sum(axis=1)]
        if max(bound) > INT32_MAX:
            raise NotImplementedError(f"{op.name} needs an int64 accumulator: ConvInteger accumulates in int32")
        a = op.attrs
        w_u = g.const((w + 128).astype(np.uint8), np.uint8, "w")
        acc = g.op("ConvInteger", [x.name, w_u, g.const(x.zero_point, np.int8, "xz"), g.const(128, np.uint8, "wz")],
                   "acc", kernel_shape=[int(w.shape[-1])], pads=[int(a["padding"])] * 2, strides=[int(a["stride"])],
                   dilations=[int(a["dilation"])], group=int(a["groups"]))
        bias = op.params.get("bias")
        return _Acc(acc, "int32", ints(bias) if bias is not None else [0], bound)

    def conv2d(self, op, x):
        """ConvInteger over an image [B, Cin, T, F] (same storage as conv1d: int8 input with zero
        point 0 / -128, uint8 weights + 128 with zero point 128, pads = the zero point)."""
        g = self.g
        if not isinstance(x, _Act) or x.rank != 4:
            raise NotImplementedError(f"{op.name}: ConvInteger needs an int8 image activation input")
        if x.bits > 8:
            raise NotImplementedError(f"{op.name}: integer ONNX lowering needs activations of at most 8 bits")
        w = op.params["weight"].numpy().astype(np.int64)
        if w.ndim != 4 or w.min() < -128 or w.max() > 127:
            raise ValueError(f"{op.name}: integer ONNX lowering needs 4-D weights within int8")
        bound = [int(s) * x.absmax for s in np.abs(w).reshape(w.shape[0], -1).sum(axis=1)]
        if max(bound) > INT32_MAX:
            raise NotImplementedError(f"{op.name} needs an int64 accumulator: ConvInteger accumulates in int32")
        a = op.attrs
        (sT, sF), (pT, pF) = [int(v) for v in a["stride"]], [int(v) for v in a["padding"]]
        w_u = g.const((w + 128).astype(np.uint8), np.uint8, "w")
        acc = g.op("ConvInteger", [x.name, w_u, g.const(x.zero_point, np.int8, "xz"), g.const(128, np.uint8, "wz")],
                   "acc2d", kernel_shape=[int(w.shape[2]), int(w.shape[3])], pads=[pT, pF, pT, pF],
                   strides=[sT, sF], dilations=[1, 1], group=int(a["groups"]))
        bias = op.params.get("bias")
        return _Acc(acc, "int32", ints(bias) if bias is not None else [0], bound, 4)

    def requantize(self, op, acc):
        a = self.as_acc(acc)
        bits, signed, dtype, lo, hi, z = _storage(op)
        M, S = ints(op.params["M"]), ints(op.params["shift"])
        R = self.result_bound(a, M, S)
        if R is not None:
            L = [max(lo, -r) for r in R]
            try:
                q = self.scaled(a, M, S, L)
            except OverflowError:
                pass
            else:
                return _Act(self.store(q, lo, hi, z, [l - z for l in L], a.rank, dtype), signed, bits, a.rank)
        q = self.scaled_floor(a, M, S)
        return _Act(self.store(q, lo, hi, z, [-z], a.rank, dtype), signed, bits, a.rank)

    def rescale(self, op, acc):
        a = self.as_acc(acc)
        M, S = ints(op.params["M"]), ints(op.params["shift"])
        R = self.result_bound(a, M, S)
        if R is not None:
            try:
                q = self.scaled(a, M, S, [-r for r in R])
            except OverflowError:
                pass
            else:
                return _Acc(q, "int64", [-r for r in R], [2 * r for r in R], a.rank)
        return _Acc(self.scaled_floor(a, M, S), "int64", [0], None, a.rank)

    def add(self, op, x, y):
        a, b = self.as_acc(x), self.as_acc(y)
        ka, kb = broadcast(a.const, b.const)
        bound = None
        if a.bound is not None and b.bound is not None:
            ba, bb = broadcast(a.bound, b.bound)
            bound = [p + q for p, q in zip(ba, bb)]
            if max(b + abs(k1 + k2) for b, k1, k2 in zip(bound, ka, kb)) > INT64_MAX:
                raise OverflowError(f"{op.name}: the sum could overflow int64")
        s = self.g.op("Add", [self.int64(a), self.int64(b)], "sum")
        return _Acc(s, "int64", [p + q for p, q in zip(ka, kb)], bound, max(a.rank, b.rank))

    def clamp(self, op, v):
        a = self.as_acc(v)
        bits, signed, dtype, lo, hi, z = _storage(op)
        if a.bound is None:
            K = list(a.const)
        else:
            K, bd = broadcast(a.const, a.bound)
            if max(b + abs(k - z) for b, k in zip(bd, K)) > INT64_MAX:
                raise OverflowError(f"{op.name}: the clamp offset could overflow int64")
        return _Act(self.store(self.int64(a), lo, hi, z, [k - z for k in K], a.rank, dtype), signed, bits, a.rank)

    # --- layout ops (NeMo's Conv2d subsampling)
    def _layout_input(self, v):
        """(tensor, how to wrap the result): activations keep their storage; an accumulator with
        per-channel constants is materialized first (its channel axis moves)."""
        if isinstance(v, _Act):
            return v.name, lambda name, rank: _Act(name, v.signed, v.bits, rank)
        a = self.as_acc(v)
        if not any(a.const):
            return a.name, lambda name, rank: _Acc(name, a.dtype, [0], None if a.bound is None else [max(a.bound)],
                                                   rank)
        m = self.absmax(a)
        return self.materialize(a), lambda name, rank: _Acc(name, "int64", [0], None if m is None else [m], rank)

    def to_image(self, op, x):
        t, wrap = self._layout_input(x)
        return wrap(to_image_nodes(self.g, t), 4)

    def flatten_freq(self, op, x):
        t, wrap = self._layout_input(x)
        return wrap(flatten_freq_nodes(self.g, t), 3)

    # --- the Conformer's ops (program/onnx_nonlinear.py), on true values
    def layernorm(self, op, x):
        from . import onnx_nonlinear as onl

        bits = int(op.attrs["out_bits"])
        return _Act(onl.lower(self.g, op, [self.true_value(x)], out_dtype=_act_dtype(bits, True)), True, bits)

    def softmax(self, op, scores, lengths):
        """Probabilities in [0, 2^B - 1] kept as an int32 tensor (zero point 0): matmul_pv, their
        consumer, computes in int32/int64 (no int8 storage to fit: no cast, no offset)."""
        from . import onnx_nonlinear as onl

        s = self.true_value(scores)
        if lengths not in self._keep:
            self._keep[lengths] = onl.attention_keep(self.g, s, lengths)
        B = int(op.attrs["out_bits"])
        dt = "int32" if B <= 30 else "int64"
        p = onl.lower(self.g, op, [s, lengths], out_dtype=dt, keep=self._keep[lengths])
        return _Acc(p, dt, [0], [(1 << B) - 1], 4)

    def _table(self, op, x: _Act, dt: str) -> str:
        """A 256-entry table over the stored int8 values s = y + z: the torch reference kernel of
        ``op`` at y = s - z (glu: its sigmoid alone, a = 1). Exact by construction: the kernels act
        element by element (glu: a * sig(b), the product taken after the lookup)."""
        import torch

        from .torch_ref import TorchReference

        y = torch.arange(-128, 128, dtype=torch.int64) - x.zero_point
        kern = TorchReference.kernels[op.kind]
        if op.kind == "glu":
            t = kern(op, torch.stack([torch.ones_like(y), y])[None])[0, 0]
        else:
            t = kern(op, y.reshape(1, 1, -1))[0, 0]
        return self.g.const(t.numpy().astype(_NP[dt]), _NP[dt], f"{op.kind}_lut")

    def _lookup(self, table: str, s: str) -> str:
        g = self.g
        idx = g.op("Add", [g.op("Cast", [s], "s32", to=g.TP.INT32), g.const(128, np.int32, "c128")], "idx")
        return g.op("Gather", [table, idx], "lut", axis=0)

    def _product(self, op, x, bound_of):
        """swish / glu / gelu. An activation of at most 8 bits (the Conformer's int8 stream) goes
        through a 256-entry lookup table (``_table``: exact, and cheaper than the i-exp / i-GELU
        arithmetic); any other input through ``onnx_nonlinear``'s integer formulas."""
        from . import onnx_nonlinear as onl

        g = self.g
        dt = self.program.values[op.outputs[0]].dtype
        m = self.absmax(x)
        if isinstance(x, _Act) and x.bits <= LUT_MAX_BITS:
            table = self._table(op, x, dt)
            if op.kind == "glu":
                a, b = g.name("glu_a"), g.name("glu_b")
                g.nodes.append(g.helper.make_node("Split", [x.name], [a, b], name=g.name("split"), axis=1,
                                                  num_outputs=2))
                av = g.op("Cast", [a], "a", to=getattr(g.TP, dt.upper()))
                if x.zero_point:
                    av = g.op("Sub", [av, g.const(x.zero_point, _NP[dt], "z")], "atrue")
                y = g.op("Mul", [av, self._lookup(table, b)], "glu")
            else:
                y = self._lookup(table, x.name)
        else:
            y = onl.lower(g, op, [self.true_value(x)], out_dtype=dt)
        return _Acc(y, dt, [0], None if m is None else [bound_of(m)], getattr(x, "rank", 3))

    def swish(self, op, x):
        return self._product(op, x, lambda m: m << int(op.attrs["sig_bits"]))     # sig in [0, 2^B]

    def glu(self, op, x):
        return self._product(op, x, lambda m: m << int(op.attrs["sig_bits"]))

    def gelu(self, op, x):
        qb, qone = int(op.attrs["q_b"]), int(op.attrs["q_one"])
        # |q_one + sign(q)(q_one - t^2)| <= q_one + max(q_one, q_b^2) for t^2 in [0, q_b^2]
        return self._product(op, x, lambda m: m * (qone + max(qone, qb * qb)))

    def _matmul(self, op, rank, *xs):
        from . import onnx_nonlinear as onl

        dt = str(op.attrs["acc_dtype"])
        y = onl.lower(self.g, op, [self.true_value(v) for v in xs], out_dtype=dt)
        b = _DTYPE_BOUND[dt]          # the converter proved the sum fits acc_dtype
        return _Acc(y, dt, [0], None if b is None else [b], rank)

    def matmul_qk(self, op, q, k):
        return self._matmul(op, 4, q, k)

    def matmul_pv(self, op, p, v):
        return self._matmul(op, 3, p, v)

    def matmul_pos(self, op, q):
        return self._matmul(op, 4, q)

    # --- the whole program
    def build(self, frames: int | None, labels=None):
        p, g = self.program, self.g
        TP, h = g.TP, g.helper
        x_in, len_in = p.inputs
        v = p.values[x_in]
        if v.bits is None or v.bits > 8 or not v.signed:
            raise NotImplementedError("the integer ONNX graph takes a signed input of at most 8 bits")
        env = self.lower_ops({x_in: _Act("q", True, int(v.bits)), len_in: "lengths"})
        logits, lens = env[p.outputs[0]], env[p.outputs[1]]
        g.identity(self.materialize(self.as_acc(logits)), "logits")
        g.identity(lens, "logits_lengths")
        feats, classes = io_channels(p)
        inputs = [h.make_tensor_value_info("q", TP.INT8, ["batch", feats, frames or "frames"]),
                  h.make_tensor_value_info("lengths", TP.INT64, ["batch"])]
        outputs = [h.make_tensor_value_info("logits", TP.INT64, ["batch", classes, "out_frames"]),
                   h.make_tensor_value_info("logits_lengths", TP.INT64, ["batch"])]
        meta = p.meta
        doc = (f"intasr integer-only program: int8 log-mel (scale {meta.get('input_scale')!r}) and lengths -> "
               f"int64 logits (scale {meta.get('logit_scale')!r}) and lengths; padded frames masked.")
        model = g.model(inputs, outputs, "intasr_integer", doc)
        props = {"input_scale": repr(meta.get("input_scale")), "logit_scale": repr(meta.get("logit_scale")),
                 "floor": self.floor}
        if labels is not None:
            props["labels"] = "".join(labels)
        for k, val in props.items():
            pr = model.metadata_props.add()
            pr.key, pr.value = k, val
        return model


# the op kinds this lowering has a kernel for (a method of _Lowering each)
LOWERS = _Lowering.LOWERS


def build_integer_model(model, frames: int | None = None, floor: str = "div"):
    """The integer-only ONNX ModelProto of a program (or of an IntegerModel's program; module doc)."""
    program, labels = program_and_labels(model)
    return _Lowering(program, floor).build(frames, labels)


def export_onnx(model, path, frames: int | None = None, floor: str = "div") -> Path:
    """Write the integer-only graph (inputs ``q``, ``lengths``; outputs ``logits``,
    ``logits_lengths``) to ``path``. frames: fix T (None: dynamic)."""
    return save_model(build_integer_model(model, frames, floor), path)


def integer_only_report(model_or_path) -> dict:
    """Shape-infer the graph; list every value whose element type is neither an integer type nor
    BOOL (the time masks: Less -> Where, which select between integer tensors).

    Returns {"ok": bool, "non_integer": [(name, type)], "bool": [names], "untyped": [names],
    "op_types": sorted ops, "values": n}.
    """
    onnx, TP, _, _ = onnx_modules()
    m = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    inferred = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    ints_ = {TP.INT8, TP.UINT8, TP.INT16, TP.UINT16, TP.INT32, TP.UINT32, TP.INT64, TP.UINT64}
    g = inferred.graph
    types = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    produced = {o for n in g.node for o in n.output}
    missing = sorted(produced - set(types))
    bools = sorted(n for n, t in types.items() if t == TP.BOOL)
    bad = [(n, TP.DataType.Name(t)) for n, t in types.items() if t not in ints_ and t != TP.BOOL]
    return {"ok": not bad and not missing, "non_integer": bad, "bool": bools, "untyped": missing,
            "op_types": sorted({n.op_type for n in g.node}), "values": len(types)}


# --------------------------------------------------------------------------- onnxruntime

@functools.lru_cache(maxsize=None)
def ort_kernels_exact(threads: int = 1) -> bool:
    """True iff onnxruntime's ConvInteger (the layout of the integer graph: int8 activations with
    zero point 0 or -128, uint8 weights with zero point 128), 1-D and 2-D, is exact on worst-case
    inputs here."""
    _, TP, h, nh = onnx_modules()
    rng = np.random.default_rng(0)
    cin, cout, T, K = 64, 16, 64, 3
    # extreme magnitudes with correlated signs: what saturates an int16 pair sum
    x = np.where(rng.random((1, cin, T)) < 0.5, -128, 127).astype(np.int8)
    x[..., : T // 2] = 127
    w = np.where(rng.random((cout, cin, K)) < 0.5, 0, 255).astype(np.uint8)
    w[: cout // 2] = 255
    ok = True
    for xz in (0, -128):
        nodes = [h.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], kernel_shape=[K], pads=[1, 1])]
        inits = [nh.from_array(w, "w"), nh.from_array(np.array(xz, np.int8), "xz"), nh.from_array(np.array(128, np.uint8), "wz")]
        gr = h.make_graph(nodes, "probe", [h.make_tensor_value_info("x", TP.INT8, [1, cin, T])],
                          [h.make_tensor_value_info("y", TP.INT32, None)], inits)
        m = h.make_model(gr, opset_imports=[h.make_opsetid("", OPSET)])
        m.ir_version = 9
        y = make_session(m, threads).run(None, {"x": x})[0].astype(np.int64)
        xr = np.pad(x.astype(np.int64) - xz, ((0, 0), (0, 0), (1, 1)))  # padding = zero point = real 0
        wr = w.astype(np.int64) - 128
        ref = sum(np.einsum("oc,bct->bot", wr[:, :, k], xr[:, :, k:k + T]) for k in range(K))
        ok &= bool(np.array_equal(y, ref))
    # the 2-D form (NeMo's Conv2d subsampling): the same im2col + U8S8 GEMM, probed the same way
    cin2, H, W = 16, 12, 12
    x2 = np.where(rng.random((1, cin2, H, W)) < 0.5, -128, 127).astype(np.int8)
    x2[..., : H // 2, :] = 127
    w2 = np.where(rng.random((cout, cin2, 3, 3)) < 0.5, 0, 255).astype(np.uint8)
    w2[: cout // 2] = 255
    for xz in (0, -128):
        nodes = [h.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
        inits = [nh.from_array(w2, "w"), nh.from_array(np.array(xz, np.int8), "xz"),
                 nh.from_array(np.array(128, np.uint8), "wz")]
        gr = h.make_graph(nodes, "probe2d", [h.make_tensor_value_info("x", TP.INT8, [1, cin2, H, W])],
                          [h.make_tensor_value_info("y", TP.INT32, None)], inits)
        m = h.make_model(gr, opset_imports=[h.make_opsetid("", OPSET)])
        m.ir_version = 9
        y = make_session(m, threads).run(None, {"x": x2})[0].astype(np.int64)
        xr = np.pad(x2.astype(np.int64) - xz, ((0, 0), (0, 0), (1, 1), (1, 1)))
        wr = w2.astype(np.int64) - 128
        ref = sum(np.einsum("oc,bctf->botf", wr[:, :, i, j], xr[:, :, i:i + H, j:j + W])
                  for i in range(3) for j in range(3))
        ok &= bool(np.array_equal(y, ref))
    return ok


INEXACT = ("onnxruntime's integer kernels are not exact on this CPU (no VNNI: int16 saturation in U8S8); "
           "pass allow_inexact=True to run anyway, or use the torch integer path (program.fast)")


def run_onnx_int(program: Program, q, lengths, threads: int = 1, floor: str = "div", allow_inexact: bool = False):
    """The uniform backend call: int8 [B, F, T] and lengths [B] -> (int64 logits [B, C, T'],
    int64 lengths [B]) from onnxruntime on the integer-only graph (built once per program)."""
    if not allow_inexact and not ort_kernels_exact(threads or 1):
        raise ValueError(INEXACT)
    sess = cached_session(program, ("int", threads, floor),
                           lambda: make_session(build_integer_model(program, floor=floor), threads))
    x = as_numpy(q, np.int8)
    logits, out_len = sess.run(None, {"q": x, "lengths": full_lengths(x, lengths)})
    return logits.astype(np.int64, copy=False), out_len.astype(np.int64, copy=False)
