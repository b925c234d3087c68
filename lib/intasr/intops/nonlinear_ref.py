"""Independent NumPy / Python-int reference of the integer non-linearities (no torch).

Written the plain way on purpose, from the specification in ``intasr.intops.nonlinear``'s
module doc, sharing no code with the torch kernels: Python integers (exact, unbounded) or int64
NumPy arrays, explicit loops over rows, floor division by powers of two instead of shifts,
``math.isqrt`` and ``int.bit_length`` instead of the kernels' Newton iteration and binary search.

The parameter objects (ExpParams, SoftmaxParams, ...) are read by attribute only, so this module
imports neither torch nor the kernel module.

  exp:       unclamped: q' = q 2^k or floor((q + 2^(m-1)) / 2^m) (m = -k); z = floor(-q' / q_ln2);
             P = (q' + z q_ln2 + q_b)^2 + q_c;  e = floor(P / 2^z)      (q > 0 is taken as 0)
  softmax:   per row: m = max over unmasked q; e_i = exp(q_i - m) (0 if masked);
             f = floor(2^K / s); p_i = min(floor((e_i f + 2^(K-B-1)) / 2^(K-B)), 2^B - 1)
  sigmoid:   E = exp(-|q|); n = floor((2 E 2^B + E + one) / (2 (E + one))); q < 0: n, else 2^B - n
  layernorm: per row, Python ints (see the kernel doc)
  matmul:    int64 np.matmul with a Python-int overflow bound
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["exp_ref", "softmax_ref", "sigmoid_ref", "swish_ref", "glu_ref", "layernorm_ref",
           "isqrt_ref", "bit_length_ref", "matmul_ref"]

_I64_MAX = (1 << 63) - 1


def _exp_int(q: int, p) -> int:
    """i-exp of one Python int, without the kernel's input clamp."""
    q = min(int(q), 0)
    k = p.in_shift
    if k >= 0:
        x = q * 2 ** k
    else:
        m = -k
        x = (q + 2 ** (m - 1)) // 2 ** m
    z = (-x) // p.q_ln2
    r = x + z * p.q_ln2
    P = (r + p.q_b) ** 2 + p.q_c
    if z >= P.bit_length():
        return 0
    return P // 2 ** z


def exp_ref(q, p) -> np.ndarray:
    """i-exp elementwise; int64 array of the same shape."""
    q = np.asarray(q)
    out = np.array([_exp_int(v, p) for v in q.reshape(-1).tolist()], dtype=np.int64)
    return out.reshape(q.shape)


def softmax_ref(q, p, mask=None) -> np.ndarray:
    """Integer softmax over the last axis; mask True = masked out. int64 array."""
    q = np.asarray(q).astype(np.int64)
    shape = q.shape
    n = shape[-1]
    rows = q.reshape(-1, n)
    if mask is None:
        masks = np.zeros(rows.shape, dtype=bool)
    else:
        masks = np.broadcast_to(np.asarray(mask, dtype=bool), shape).reshape(-1, n)
    K, B = p.recip_bits, p.out_bits
    out = np.zeros(rows.shape, dtype=np.int64)
    for i in range(rows.shape[0]):
        vals = [int(v) for v in rows[i]]
        valid = [not bool(v) for v in masks[i]]
        if not any(valid):
            continue  # fully masked row: all zeros
        m = max(v for v, ok in zip(vals, valid) if ok)
        e = [_exp_int(v - m, p.exp) if ok else 0 for v, ok in zip(vals, valid)]
        s = sum(e)
        f = 2 ** K // max(s, 1)
        for j, ej in enumerate(e):
            out[i, j] = min((ej * f + 2 ** (K - B - 1)) // 2 ** (K - B), 2 ** B - 1)
    return out.reshape(shape)


def _sigmoid_int(q: int, p) -> int:
    E = _exp_int(-abs(q), p.exp)
    one = p.exp.out_max
    B = p.out_bits
    n = (2 * E * 2 ** B + E + one) // (2 * (E + one))
    return n if q < 0 else 2 ** B - n


def sigmoid_ref(q, p) -> np.ndarray:
    q = np.asarray(q)
    out = np.array([_sigmoid_int(int(v), p) for v in q.reshape(-1).tolist()], dtype=np.int64)
    return out.reshape(q.shape)


def swish_ref(q, p) -> np.ndarray:
    q = np.asarray(q).astype(np.int64)
    return q * sigmoid_ref(q, p)


def glu_ref(q, p, dim: int = 1) -> np.ndarray:
    q = np.asarray(q).astype(np.int64)
    half = q.shape[dim] // 2
    a = np.take(q, np.arange(half), axis=dim)
    b = np.take(q, np.arange(half, 2 * half), axis=dim)
    return a * sigmoid_ref(b, p)


def bit_length_ref(n) -> np.ndarray:
    n = np.asarray(n)
    return np.array([int(v).bit_length() for v in n.reshape(-1).tolist()], dtype=np.int64).reshape(n.shape)


def isqrt_ref(n) -> np.ndarray:
    n = np.asarray(n)
    return np.array([math.isqrt(int(v)) for v in n.reshape(-1).tolist()], dtype=np.int64).reshape(n.shape)


def _layernorm_row(row: list[int], p) -> list[int]:
    C = p.channels
    total = sum(row)
    y = [C * v - total for v in row]
    r = max(p.eps_shift, max(abs(v) for v in y).bit_length() - p.h)
    ys = [(v + 2 ** r // 2) // 2 ** r for v in y]
    j = r - p.eps_shift
    W = sum(v * v for v in ys) + (p.eps_int + 4 ** j // 2) // 4 ** j
    t = (62 - W.bit_length()) // 2
    D = (W * 4 ** t) // C
    sd = max(math.isqrt(D), 1)
    e = p.norm_bits + t - r
    lo, hi = -(2 ** (p.out_bits - 1)), 2 ** (p.out_bits - 1) - 1
    out = []
    for c, v in enumerate(y):
        # u = floor(v 2^e / sd + 1/2), as an exact rational
        if e >= 0:
            u = (2 * v * 2 ** e + sd) // (2 * sd)
        else:
            u = (2 * v + sd * 2 ** (-e)) // (2 * sd * 2 ** (-e))
        u = max(-p.u_max, min(p.u_max, u))
        acc = u * p.gamma_q[c] + p.beta_q[c]
        assert abs(acc) * p.M + 2 ** p.shift // 2 <= _I64_MAX
        o = (acc * p.M + 2 ** p.shift // 2) // 2 ** p.shift
        out.append(max(lo, min(hi, o)))
    return out


def layernorm_ref(q, p, dim: int = -1) -> np.ndarray:
    """Integer LayerNorm over ``dim``; int64 array."""
    q = np.moveaxis(np.asarray(q).astype(np.int64), dim, -1)
    shape = q.shape
    rows = q.reshape(-1, shape[-1])
    out = np.array([_layernorm_row([int(v) for v in row], p) for row in rows], dtype=np.int64)
    return np.moveaxis(out.reshape(shape), -1, dim)


def matmul_ref(a, b) -> np.ndarray:
    a = np.asarray(a).astype(np.int64)
    b = np.asarray(b).astype(np.int64)
    k = a.shape[-1]
    amax = int(np.abs(a).max()) if a.size else 0
    bmax = int(np.abs(b).max()) if b.size else 0
    assert k * amax * bmax <= _I64_MAX, "reference matmul would overflow int64"
    return np.matmul(a, b)
