"""Writing an integer program (``program.ops``) op by op: ``ProgramBuilder``, and ``IntConv``, one
converted convolution as plain data (integer weights and bias, geometry, the dyadic requantization
to its output scale). Both converters (``convert`` for ConvASR, ``convert_conformer``) emit through it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..intops.conv import accumulator_bound
from ..quant.quantizer import storage_dtype
from .ops import Op, Program, ProgramError, Value, dtype_name


@dataclass
class IntConv:
    """One converted convolution (plain data): integer weights and bias, geometry, and the dyadic
    requantization (M, shift) to its output scale. ``emit_convasr`` turns it into ops."""

    weight: torch.Tensor            # int8 [Cout, Cin/groups, K]
    bias: torch.Tensor | None       # int32/int64 [Cout], scale s_x * s_w
    M: torch.Tensor                 # int64 [Cout] dyadic multiplier to the output scale
    shift: torch.Tensor             # int64 [Cout]
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    acc_dtype: torch.dtype = torch.int32
    out_bits: int = 8
    out_signed: bool = True          # False: ReLU fused into the clamp
    # float metadata (documentation and dequantization outside the integer region only)
    in_scale: float = 1.0
    out_scale: float = 1.0
    w_scale: torch.Tensor | None = None


class ProgramBuilder:
    """Appends ops to a program; names values; masks each (tensor, lengths) pair once."""

    def __init__(self, input_bits: int, input_scale: float):
        self.values = {"input": Value(dtype_name(storage_dtype(input_bits, True)), "act", input_bits, True, input_scale),
                       "input_lengths": Value("int64", "lengths")}
        self.ops: list[Op] = []
        self._masked: dict = {}

    def add(self, kind, inputs, output: str, value: Value, name: str, attrs=None, params=None, meta=None) -> str:
        if output in self.values:
            raise ProgramError(f"value {output!r} defined twice")
        self.values[output] = value
        self.ops.append(Op(kind, list(inputs), [output], dict(attrs or {}), dict(params or {}), dict(meta or {}), name))
        return output

    def masked(self, x: str, lengths: str) -> str:
        key = (x, lengths)
        if key not in self._masked:
            v = self.values[x]
            self._masked[key] = self.add("mask_time", [x, lengths], f"{x}:masked", Value(v.dtype, v.role, v.bits, v.signed, v.scale),
                                         f"{x}:mask")
        return self._masked[key]

    def conv(self, name: str, x: str, lengths: str, c: IntConv) -> tuple[str, str]:
        """mask_time -> conv1d (-> frames when the geometry changes the length): (acc, lengths')."""
        xv = self.values[x]
        bound = accumulator_bound(c.weight, xv.bits, xv.signed, c.bias)
        params = {"weight": c.weight}
        if c.bias is not None:
            params["bias"] = c.bias
        meta = {"bound": bound, "in_scale": c.in_scale, "out_scale": c.out_scale}
        if c.w_scale is not None:
            meta["w_scale"] = [float(v) for v in c.w_scale.reshape(-1).tolist()]
        acc = self.add("conv1d", [self.masked(x, lengths)], f"{name}.acc", Value(dtype_name(c.acc_dtype), "acc"), name,
                       {"stride": c.stride, "padding": c.padding, "dilation": c.dilation, "groups": c.groups,
                        "acc_dtype": dtype_name(c.acc_dtype)}, params, meta)
        return acc, self.frames(name, lengths, int(c.weight.shape[-1]), c.stride, c.padding, c.dilation)

    def frames(self, name: str, lengths: str, kernel: int, stride: int, padding: int, dilation: int = 1) -> str:
        """The lengths after a conv along time: the same value when the conv keeps them ('same'
        padding, stride 1), else a `frames` op."""
        if stride == 1 and 2 * padding == dilation * (kernel - 1):
            return lengths
        return self.add("frames", [lengths], f"{name}.lengths", Value("int64", "lengths"), f"{name}.frames",
                        {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation})

    def requantize(self, name: str, acc: str, c: IntConv) -> str:
        return self.add("requantize", [acc], f"{name}.out",
                        Value(dtype_name(storage_dtype(c.out_bits, c.out_signed)), "act", c.out_bits, c.out_signed, c.out_scale),
                        f"{name}.requantize", {"bits": c.out_bits, "signed": c.out_signed},
                        {"M": c.M, "shift": c.shift}, {"out_scale": c.out_scale})

    def rescale(self, name: str, acc: str, c: IntConv, output: str | None = None) -> str:
        return self.add("rescale", [acc], output or f"{name}.scaled", Value("int64", "acc", scale=c.out_scale),
                        f"{name}.rescale", {}, {"M": c.M, "shift": c.shift}, {"out_scale": c.out_scale})

    def program(self, outputs: tuple[str, str], meta: dict) -> Program:
        return Program(self.values, self.ops, ("input", "input_lengths"), outputs, meta).validate()
