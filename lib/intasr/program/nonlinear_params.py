"""Op attributes <-> the parameter records of ``intops.nonlinear`` / ``intops.gelu``.

The program stores only integers (and the real scales as metadata); backends rebuild the
kernels' frozen dataclasses from them. Shared by the torch and NumPy backends so both read the
same constants.
"""
from __future__ import annotations

import dataclasses

from ..intops.gelu import GeluParams
from ..intops.nonlinear import ExpParams, LayerNormParams, SigmoidParams, SoftmaxParams

_EXP_INTS = ("in_shift", "q_ln2", "q_b", "q_c", "q_min", "out_max", "z_max", "recip", "recip_shift")


def exp_attrs(p: ExpParams) -> dict:
    return {k: int(getattr(p, k)) for k in _EXP_INTS}


def _exp(attrs: dict) -> ExpParams:
    return ExpParams(**{k: int(attrs[k]) for k in _EXP_INTS}, in_scale=0.0, out_scale=0.0)


def softmax_params(op) -> SoftmaxParams:
    a = op.attrs
    return SoftmaxParams(exp=_exp(a["exp"]), out_bits=int(a["out_bits"]), recip_bits=int(a["recip_bits"]),
                         in_scale=0.0, out_scale=0.0)


def sigmoid_params(op) -> SigmoidParams:
    a = op.attrs
    return SigmoidParams(exp=_exp(a["exp"]), out_bits=int(a["sig_bits"]), in_scale=0.0, sig_scale=0.0, out_scale=0.0)


def gelu_params(op) -> GeluParams:
    return GeluParams(q_b=int(op.attrs["q_b"]), q_one=int(op.attrs["q_one"]), in_scale=0.0, out_scale=0.0)


_LN_INTS = ("channels", "h", "eps_int", "eps_shift", "norm_bits", "u_max", "M", "shift", "out_bits")


def layernorm_attrs(p: LayerNormParams) -> dict:
    return {k: int(getattr(p, k)) for k in _LN_INTS}


def layernorm_params(op) -> LayerNormParams:
    ints = {k: int(op.attrs[k]) for k in _LN_INTS}
    g = tuple(int(v) for v in op.params["gamma_q"].tolist())
    b = tuple(int(v) for v in op.params["beta_q"].tolist())
    fields = {f.name for f in dataclasses.fields(LayerNormParams)}
    floats = {k: 0.0 for k in fields - set(ints) - {"gamma_q", "beta_q"}}
    return LayerNormParams(**ints, gamma_q=g, beta_q=b, **floats)
