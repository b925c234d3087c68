"""The program of a converted ConvASR: its blocks (``IntBlock``: main-path convs, residual branches,
dense inputs) written as a flat list of integer ops (mask_time, frames, conv1d, requantize,
rescale, add, clamp) over named integer tensors. Only this step knows the block structure of the
integers; every backend runs the program without it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..quant.quantizer import storage_dtype
from .builder import IntConv, ProgramBuilder
from .ops import Program, Value, dtype_name


@dataclass
class IntBlock:
    convs: list[IntConv]                       # main path; the last one only accumulates if residual
    residual: list[IntConv] = field(default_factory=list)  # one 1x1 branch per (dense) block input
    dense: bool = False


def emit_convasr(blocks: list[IntBlock], decoder: IntConv, input_scale: float, input_bits: int) -> Program:
    """The program of a converted ConvASR (the only walk of its block structure)."""
    g = ProgramBuilder(input_bits, input_scale)
    xs, lengths = ["input"], "input_lengths"
    for b, block in enumerate(blocks):
        x, lens = xs[-1], lengths
        for i, conv in enumerate(block.convs[:-1]):
            acc, lens = g.conv(f"blocks.{b}.convs.{i}", x, lens, conv)
            x = g.requantize(f"blocks.{b}.convs.{i}", acc, conv)
        i, last = len(block.convs) - 1, block.convs[-1]
        name = f"blocks.{b}.convs.{i}"
        acc, out_lens = g.conv(name, x, lens, last)
        if not block.residual:
            y = g.requantize(name, acc, last)
        else:
            total = g.rescale(name, acc, last)
            for r, (x_in, rconv) in enumerate(zip(xs, block.residual)):
                rname = f"blocks.{b}.residual.{r}"
                racc, _ = g.conv(rname, x_in, lengths, rconv)
                total = g.add("add", [total, g.rescale(rname, racc, rconv)], f"blocks.{b}.sum.{r}",
                              Value("int64", "acc", scale=last.out_scale), f"blocks.{b}.add.{r}")
            y = g.add("clamp", [total], f"blocks.{b}.out", Value(dtype_name(storage_dtype(last.out_bits, False)), "act",
                                                                 last.out_bits, False, last.out_scale),
                      f"blocks.{b}.clamp", {"bits": last.out_bits, "signed": False})
        xs = xs + [y] if block.dense else [y]
        lengths = out_lens
    acc, out_lens = g.conv("decoder", xs[-1], lengths, decoder)
    g.rescale("decoder", acc, decoder, output="logits")
    if out_lens != "logits_lengths":  # name the output lengths (a 1x1 decoder keeps the length)
        g.add("frames", [out_lens], "logits_lengths", Value("int64", "lengths"), "logits.frames",
              {"kernel": 1, "stride": 1, "padding": 0, "dilation": 1})
    return g.program(("logits", "logits_lengths"),
                     {"input_scale": float(input_scale), "input_bits": int(input_bits),
                      "logit_scale": float(decoder.out_scale)})
