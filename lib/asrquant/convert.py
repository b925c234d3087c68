"""Float model -> integer program (``program.ops``), wrapped as an ``IntegerModel``; the .aqz file.

Conversion of a ConvASR (QuartzNet / JasperDR) has two steps:
1. ``convert``: per conv, fold BatchNorm, quantize the weights (per output channel), the bias
   (scale s_x * s_w) and derive the dyadic multiplier to the output scale (``IntConv``, plain data);
2. ``emit_convasr``: write those layers as a flat list of integer ops (mask_time, frames, conv1d,
   requantize, rescale, add, clamp) over named integer tensors. Only this step knows the block
   structure; every backend runs the program without it.

Scales. Input: s_in from an observer on the calibration mels, signed. Weights: per output channel,
symmetric, s_w[c] = alpha_c / (2^(w-1) - 1). Activation after a conv: s_out from an observer on the
float model's activation at that point; signed for depthwise outputs, unsigned (one extra bit) after
ReLU. Multiplier of a conv: m_c = s_x * s_w[c] / s_out. Bias: round(b / (s_x * s_w[c])).
Residual block: every branch (the main path's last conv and one 1x1 conv per dense input) is
rescaled onto the block output scale, summed in int64 and clamped (ReLU = the clamp at 0).
Decoder: logit scale S = min_c s_x * s_w[c], so every class is rescaled by m_c >= 1 onto one scale
(argmax across classes with different scales would be wrong).

The mel front end stays in float before the boundary (``IntegerModel.quantize_input``), as in the
paper; everything after it is the program.
"""

from __future__ import annotations

import json
import os
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .calibration import collect, quant_points
from .intops.conv import accumulator_bound, choose_acc_dtype
from .models.checkpoint import CheckpointError, atomic_write_bytes
from .models.convasr import ConvASR, walk
from .program.ops import FORMAT_VERSION, Op, Program, ProgramError, Value, dtype_name
from .program.validate import program_from_file
from .quant.bn import fold_batchnorm
from .quant.quantizer import qrange, quantize, scale_from_range, storage_dtype
from .quant.weights import (bias_correction, dyadic_multiplier, quantize_bias, round_on_grid, weight_bits_of,
                            weight_grid)

FORMAT = "asrquant-integer-model"
VERSION = FORMAT_VERSION      # 2: the integer program; 1: hand-walked blocks (migrated on load)


# --------------------------------------------------------------------------- layer parameters

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


@dataclass
class IntBlock:
    convs: list[IntConv]                       # main path; the last one only accumulates if residual
    residual: list[IntConv] = field(default_factory=list)  # one 1x1 branch per (dense) block input
    dense: bool = False


# --------------------------------------------------------------------------- emission

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


# --------------------------------------------------------------------------- integer model

def _frontend(config: dict):
    from .audio import frontend_from_config

    return frontend_from_config(config.get("preprocessor", {}))


# model -> its loaded C runtime (or False: not available here), kept off the instance: a loaded library
# does not serialize (pickle, Dask's nn.Module serializer, which walks __dict__), and another
# process loads its own from the build cache
_ENGINES: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


class IntegerModel(nn.Module):
    """An integer program with its float front end. `forward_int` takes and returns integers only."""

    def __init__(self, config: dict, program: Program, info: dict | None = None,
                 frontend_state: dict | None = None):
        super().__init__()
        self.float_model_config = config
        vocabulary = list(config.get("labels") or config["decoder"]["vocabulary"])
        self.labels = [piece.replace("\u2581", " ") for piece in vocabulary]  # BPE word marks, as ConformerCTC
        # The front end is float and sits before the quantization boundary; a front end with
        # weights of its own (hama's stored STFT and mel kernels) travels in the file.
        self.preprocessor = nn.Module()
        self.preprocessor.featurizer = _frontend(config)
        if frontend_state:
            self.preprocessor.featurizer.load_state_dict(frontend_state)
        self.program = program
        self.info = dict(info or {})
        self.eval()

    @property
    def config(self) -> dict:
        """The float model's config (evaluation reads its `phonemes` / `decoding` sections)."""
        return self.float_model_config

    @property
    def input_scale(self) -> float:
        return float(self.program.meta["input_scale"])

    @property
    def input_bits(self) -> int:
        return int(self.program.meta["input_bits"])

    @property
    def logit_scale(self) -> float:
        return float(self.program.meta["logit_scale"])

    # --- float side of the boundary
    def features(self, audio, lengths):
        return self.preprocessor.featurizer(audio, lengths)

    def quantize_input(self, mel: torch.Tensor) -> torch.Tensor:
        """The boundary: float log-mel -> signed integers (the last float op)."""
        if not torch.isfinite(mel).all():
            raise ValueError("input features contain NaN or inf")
        return quantize(mel, self.input_scale, self.input_bits, signed=True)

    # --- integer side
    def forward_int(self, q: torch.Tensor, lengths: torch.Tensor):
        """Integer log-mel [B, F, T] -> integer logits [B, C, T'] (scale `logit_scale`), lengths: the
        torch reference backend, the program's specification in torch ops (verify watches it)."""
        from .program.torch_ref import TorchReference

        return TorchReference().run(self.program, q, lengths)

    def use_runtime(self, runtime: str | None = None) -> "IntegerModel":
        """The engine of `run_int` (hence of forward_features, evaluate, transcribe, the grid):
        "c" (the C runtime, built once per program into the build cache), "torch" (forward_int),
        or "auto" (the C runtime where a C compiler builds it, else torch, said once on stderr).
        Default: $ASRQUANT_RUNTIME, else "auto". Every engine gives the same integers."""
        runtime = runtime or os.environ.get("ASRQUANT_RUNTIME") or "auto"
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r}: choose from {', '.join(RUNTIMES)}")
        self.runtime = runtime
        _ENGINES.pop(self, None)
        return self

    def engine(self):
        """The C runtime this model runs on, or None for the torch path (``use_runtime``)."""
        if getattr(self, "runtime", None) is None:
            self.use_runtime()
        engine = _ENGINES.get(self)
        if self.runtime == "torch" or engine is False:
            return None
        if engine is None:
            from .program.c_backend import CExportError, CRuntime

            try:
                engine = _ENGINES[self] = CRuntime(self.program, threads=torch.get_num_threads())
            except (CExportError, OSError, RuntimeError) as e:
                if self.runtime == "c":
                    raise
                _ENGINES[self] = False
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                print(f"note: the C runtime is not available here ({first}); using the torch integer path "
                      "(the same integers, slower)", file=sys.stderr)
                return None
        return engine

    def engine_name(self) -> str:
        """What `run_int` runs on: "c-int8 (<family> kernels)" or "torch-int8-reference"."""
        engine = self.engine()
        return f"c-int8 ({engine.isa} kernels)" if engine is not None else "torch-int8-reference"

    def run_int(self, q: torch.Tensor, lengths: torch.Tensor):
        """forward_int's integers, on the engine ``use_runtime`` chose."""
        engine = self.engine()
        if engine is None:
            return self.forward_int(q, lengths)
        logits, out_len = engine.run_with_lengths(q.numpy(), lengths.numpy())
        return torch.from_numpy(logits), torch.from_numpy(out_len)

    def forward_features(self, mel, lengths):
        return self.run_int(self.quantize_input(mel), lengths)

    def forward(self, audio, lengths):
        return self.forward_features(*self.features(audio, lengths))

    def int_convs(self) -> list[Op]:
        return self.program.ops_of("conv1d")

    def int64_layers(self) -> list[str]:
        return [op.name for op in self.int_convs() if op.attrs["acc_dtype"] == "int64"]


IntegerConvASR = IntegerModel  # the name before the integer program (v1)
RUNTIMES = ("auto", "c", "torch")


# --------------------------------------------------------------------------- conversion

def _int_conv(conv: nn.Conv1d, bn: nn.BatchNorm1d | None, s_x: float, x_bits: int, x_signed: bool,
              s_out: float | None, out_bits: int, out_signed: bool, w_bits: int, w_method: str,
              input_means: dict | None = None, hessians: dict | None = None, codes: dict | None = None,
              bias_shifts: dict | None = None, weight_scales: dict | None = None, weight_group: int = 0) -> IntConv:
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else None
    if bn is not None:
        w, b = fold_batchnorm(w, b, bn)
        w, b = w.double(), b.double()
    s_w, mult = weight_grid(w, w_bits, w_method, weight_group)   # mult: each weight's group multiplier, or None
    w_q = round_on_grid(w, s_w, mult, w_bits)
    if mult is not None and ((weight_scales is not None and conv in weight_scales)
                             or (hessians is not None and conv in hessians)):
        raise ValueError("per-group weight multipliers (--weight-group) do not combine with a searched scale or GPTQ")
    if weight_scales is not None and conv in weight_scales:   # searched with the rounding (quant.adaround)
        s_w = weight_scales[conv].double().reshape(-1)
        w_q = quantize(w, s_w, w_bits, signed=True, axis=0).to(w_q.dtype)
    if hessians is not None and conv in hessians:
        from .quant.gptq import gptq_round

        cout = w.shape[0]
        gcodes = gptq_round(w.reshape(cout, -1), s_w, hessians[conv], w_bits)
        w_q = gcodes.reshape(w.shape).to(w_q.dtype)
    elif codes is not None and conv in codes:   # learned rounding (quant.adaround), same grid
        lo, hi = qrange(w_bits, signed=True)
        learned = codes[conv].reshape(w.shape)
        if learned.min() < lo or learned.max() > hi:
            raise ValueError(f"learned rounding codes outside the {w_bits}-bit range")
        w_q = (learned if mult is None else learned.to(torch.int64) * mult).to(w_q.dtype)
    if input_means is not None:
        if conv not in input_means:
            raise KeyError("bias correction: no input mean for a conv (compute input_means on this model)")
        delta = bias_correction(w, w_q, s_w, conv.groups, input_means[conv])
        b = -delta if b is None else b - delta
    if bias_shifts is not None and conv in bias_shifts:   # learned with the rounding (quant.adaround)
        shift = bias_shifts[conv].double().reshape(-1)
        b = shift if b is None else b + shift
    acc_scale = s_x * s_w
    bias_q = quantize_bias(b, acc_scale)
    bound = accumulator_bound(w_q, x_bits, x_signed, bias_q)
    acc_dtype = choose_acc_dtype(bound)
    if s_out is None:  # decoder: one common scale, every class multiplied by m_c >= 1
        s_out = float(acc_scale.min())
    M, shift = dyadic_multiplier((acc_scale / s_out).numpy(), bound)
    return IntConv(weight=w_q, bias=bias_q, M=M, shift=shift,
                   stride=conv.stride[0], padding=conv.padding[0], dilation=conv.dilation[0], groups=conv.groups,
                   acc_dtype=acc_dtype, out_bits=out_bits, out_signed=out_signed, in_scale=float(s_x),
                   out_scale=float(s_out), w_scale=s_w.float())


def convert(model: ConvASR, observers: dict, weight_bits: int = 8, act_bits: int = 8,
            weight_method: str = "minmax", info: dict | None = None,
            input_means: dict | None = None, depthwise_bits: int | None = None,
            hessians: dict | None = None, codes: dict | None = None,
            layer_bits: dict | None = None, bias_shifts: dict | None = None,
            weight_scales: dict | None = None, weight_group: int = 0) -> IntegerConvASR:
    """Build the integer model from a calibrated float model (see `calibrate`).

    input_means (``conv_input_means`` on the calibration batches): correct every conv's bias for
    the mean output shift its weight rounding causes (bias correction; depthwise convs get a bias).
    depthwise_bits: weight width of the depthwise convs (default weight_bits); they hold ~2% of
    QuartzNet's weights but suffer most from 4-bit rounding (few long, peaky kernels).
    hessians (``conv_input_hessians`` on the calibration batches): output-aware rounding
    (``quant.gptq``) for every conv that has one, round-to-nearest for the others.
    codes ({nn.Conv1d: integer codes}, ``quant.adaround``): learned rounding on the same grid;
    bias_shifts ({nn.Conv1d: float64 [Cout]}, learned with them): added to the folded biases.
    weight_scales ({nn.Conv1d: float64 [Cout]}, searched with them): the codes' per-channel weight
    scales where they are not ``weight_method``'s.
    layer_bits ({nn.Conv1d: bits}, ``quant.mixed_precision``): per-conv weight widths (mixed
    precision); convs not in it use depthwise_bits / weight_bits (``weight_bits_of``).
    weight_group: per-group integer multipliers (``quant.groups``) for the convs of at most 4 bits,
    groups of this many weights per row (0: per-channel scales only); codes are then the group's."""
    def bits(conv):
        return weight_bits_of(conv, weight_bits, depthwise_bits, layer_bits)

    def act_scale(key, signed):
        return float(scale_from_range(observers[key].alpha(), act_bits, signed=signed))

    s_in = act_scale("input", True)
    s_x, x_signed = s_in, True
    points = quant_points(model)
    blocks = []
    prev_out = [(s_in, True)]   # (scale, signed) of the next block's inputs (all earlier outputs if dense)
    sites = walk(model)
    for blk in sites.blocks:
        convs = []
        for site in blk.main:
            out_signed = points[(site.block, site.index)] is site.module   # a depthwise output: no ReLU
            s_out = act_scale((site.block, site.index), out_signed)
            c = site.conv
            convs.append(_int_conv(c, site.bn, s_x, act_bits, x_signed, s_out, act_bits, out_signed,
                                   bits(c), weight_method, input_means, hessians, codes, bias_shifts,
                                   weight_scales=weight_scales, weight_group=weight_group))
            s_x, x_signed = s_out, out_signed
        residual = []
        for (x_scale, x_sign), rsite in zip(prev_out, blk.residual):
            residual.append(_int_conv(rsite.conv, rsite.bn, x_scale, act_bits, x_sign, s_x, act_bits, False,
                                      bits(rsite.conv), weight_method, input_means, hessians, codes, bias_shifts,
                                      weight_scales=weight_scales, weight_group=weight_group))
        blocks.append(IntBlock(convs=convs, residual=residual, dense=blk.dense))
        prev_out = prev_out + [(s_x, x_signed)] if blk.dense else [(s_x, x_signed)]
    dec = sites.decoder.conv
    decoder = _int_conv(dec, None, s_x, act_bits, x_signed, None, 32, True,
                        bits(dec), weight_method, input_means, hessians, codes, bias_shifts,
                        weight_scales=weight_scales, weight_group=weight_group)
    qinfo = {"weight_bits": weight_bits, "act_bits": act_bits, "weight_method": weight_method,
             "observer": type(observers["input"]).__name__, "bias_correction": input_means is not None or bool(bias_shifts),
             "depthwise_bits": depthwise_bits or weight_bits,
             "rounding": "gptq" if hessians else "adaround" if codes else "nearest"}
    if weight_group:
        qinfo["weight_group"] = weight_group
    if layer_bits:
        qinfo["layer_bits"] = {str(b): sum(1 for v in layer_bits.values() if v == b) for b in sorted(set(layer_bits.values()))}
    qinfo.update(info or {})
    return IntegerModel(model.config, emit_convasr(blocks, decoder, s_in, act_bits), qinfo)


def quantize_model(model: ConvASR, calibration_mels, weight_bits=8, act_bits=8, observer="minmax",
                   weight_method="minmax", info: dict | None = None, input_means: dict | None = None,
                   depthwise_bits: int | None = None, hessians: dict | None = None,
                   **observer_kw) -> IntegerConvASR:
    """Calibrate on (mel, lengths) batches and convert: the one-call API."""
    observers = collect(model, calibration_mels, observer=observer, **observer_kw).observers
    return convert(model, observers, weight_bits, act_bits, weight_method, info, input_means, depthwise_bits,
                   hessians)


# --------------------------------------------------------------------------- save / load

def save_quantized(qmodel: IntegerModel, path) -> Path:
    """One versioned file (a zip of .npy integer tensors + JSON metadata, no pickle), written atomically."""
    desc, tensors = qmodel.program.to_state()
    frontend = {k: v for k, v in qmodel.preprocessor.featurizer.state_dict().items()}
    tensors = {**tensors, **{"frontend." + k: v for k, v in frontend.items()}}
    meta = {"format": FORMAT, "version": VERSION, "config": qmodel.float_model_config, "program": desc,
            "info": qmodel.info, "frontend": sorted(frontend)}
    return write_payload({"format": FORMAT, "version": VERSION, "meta": json.dumps(meta), "tensors": tensors}, path)


# The file: an uncompressed zip holding HEADER (JSON: format, version, meta, and which member holds
# which tensor) and one .npy member per tensor. Reading checks every size before it allocates: the
# members must be stored (not compressed) and fit in the file, and each .npy header's shape x dtype
# must equal its member's size, so a hostile header claiming 10 GB is refused having read 100 bytes.
# Files written before this container (a torch zip, read by torch's weights_only unpickler, which
# builds only tensors and containers) still load, after the same zip size checks.
HEADER = "asrquant.json"
_TENSOR_KINDS = "biuf"          # bool, signed / unsigned integers, floats (the front end's buffers)
_TORCH_DTYPES = tuple(__import__("numpy").dtype(t) for t in ("bool", "int8", "uint8", "int16", "int32", "int64",
                                                             "float16", "float32", "float64"))


def write_payload(payload: dict, path) -> Path:
    """{format, version, meta (a JSON string), tensors {name: tensor}} -> the .aqz container."""
    import zipfile

    import numpy as np

    arrays, members = {}, {}
    for i, (name, t) in enumerate(payload["tensors"].items()):
        a = t.detach().cpu().contiguous().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        if a.dtype.kind not in _TENSOR_KINDS:
            raise ValueError(f"{path}: tensor {name!r} has dtype {a.dtype}, not storable")
        members[name] = f"tensors/{i:06d}.npy"
        arrays[members[name]] = a
    header = {"format": payload["format"], "version": payload["version"], "meta": payload["meta"],
              "tensors": members}

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            z.writestr(HEADER, json.dumps(header))
            for member, a in arrays.items():
                with z.open(member, "w", force_zip64=a.nbytes > 2**31) as out:
                    np.lib.format.write_array(out, a, allow_pickle=False)

    return atomic_write_bytes(path, write)


def _checked_zip(path: Path):
    """The file as a ZipFile whose members are all stored uncompressed and together fit in the file."""
    import zipfile

    size = path.stat().st_size
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable quantized model (truncated or not a zip): {e}") from e
    total = 0
    for info in z.infolist():
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            z.close()
            raise CheckpointError(f"{path}: member {info.filename!r} is compressed; .aqz members are stored "
                                  f"uncompressed (refused: its size cannot be checked before reading)")
        total += info.file_size
        if total > size:
            z.close()
            raise CheckpointError(f"{path}: members claim {total} bytes, more than the file's {size} "
                                  f"(truncated or hostile)")
    return z


def _read_npy(z, path: Path, name: str, member: str):
    """One tensor from a .npy member: header read and checked against the member size first."""
    import numpy as np

    try:
        info = z.getinfo(member)
    except KeyError:
        raise CheckpointError(f"{path}: tensor {name!r}: member {member!r} missing from the file") from None
    with z.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
        except (ValueError, OSError, EOFError, SyntaxError, TypeError, RecursionError, MemoryError) as e:
            raise CheckpointError(f"{path}: tensor {name!r}: bad .npy header: {_first_line(e)}") from e
        if any(int(n) < 0 for n in shape):
            raise CheckpointError(f"{path}: tensor {name!r}: negative dimension in shape {tuple(shape)}")
        if dtype.hasobject or dtype.kind not in _TENSOR_KINDS or dtype.newbyteorder("=") not in _TORCH_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r}: dtype {dtype} refused (integer, bool or float only)")
        count = 1
        for n in shape:
            count *= int(n)
        nbytes = count * dtype.itemsize  # Python ints: no overflow, whatever the header claims
        left = info.file_size - f.tell()
        if nbytes != left:
            raise CheckpointError(f"{path}: tensor {name!r}: header claims shape {tuple(shape)} {dtype} "
                                  f"({nbytes} bytes) but the file holds {left} (truncated or hostile)")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise CheckpointError(f"{path}: tensor {name!r}: truncated ({len(data)} of {nbytes} bytes)")
    a = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=dtype.newbyteorder("=")).copy())


def read_payload(path) -> dict:
    """The .aqz file as {format, version, meta (JSON string), tensors {name: tensor}}, sizes checked
    before anything large is read; a file of the older torch container goes through torch's
    weights_only loader. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such quantized model file")
    if not is_quantized_file(path):
        import tarfile

        if tarfile.is_tarfile(path):
            raise CheckpointError(f"{path}: is a float .nemo model, not a quantized .aqz; make one with "
                                  f"`asrquant quantize --model {path} --out MODEL.aqz`")
        raise CheckpointError(f"{path}: not a quantized model file (an .aqz is a zip; this file is not)")
    import zipfile
    import zlib

    with _checked_zip(path) as z:
        names = set(z.namelist())
        if len(names) != len(z.infolist()):
            raise CheckpointError(f"{path}: a member name appears twice (refused: which one is meant?)")
        if HEADER not in names:
            legacy = any(n.endswith("/data.pkl") or n == "data.pkl" for n in names)
        else:
            # zipfile checks each member's CRC-32 as it reads: a flipped bit anywhere is refused here,
            # naming the member, as are the other errors a damaged archive raises
            damaged = (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError)
            try:
                text = z.read(HEADER)
            except damaged as e:
                raise CheckpointError(f"{path}: member {HEADER!r} is damaged (truncated or corrupt?): "
                                      f"{_first_line(e)}") from e
            try:
                header = json.loads(text.decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                raise CheckpointError(f"{path}: {HEADER} is not valid JSON: {_first_line(e)}") from e
            if not isinstance(header, dict) or not isinstance(header.get("tensors"), dict):
                raise CheckpointError(f"{path}: {HEADER} has no tensor table")
            tensors = {}
            for name, member in header["tensors"].items():
                try:
                    tensors[str(name)] = _read_npy(z, path, str(name), str(member))
                except damaged as e:
                    raise CheckpointError(f"{path}: tensor {str(name)!r}: member {str(member)!r} is damaged "
                                          f"(truncated or corrupt?): {_first_line(e)}") from e
            return {"format": header.get("format"), "version": header.get("version"),
                    "meta": header.get("meta"), "tensors": tensors}
    if not legacy:
        raise CheckpointError(f"{path}: not an asrquant integer model file (a zip without {HEADER})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable quantized model (weights_only load failed): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def is_quantized_file(path) -> bool:
    """A zip (starts with PK\\x03\\x04); a .nemo is a tar. zipfile.is_zipfile would be fooled: it
    looks near the end, where a .nemo tar holds its zipped model_weights.ckpt."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


_V1_CONV_FIELDS = ("stride", "padding", "dilation", "groups", "out_bits", "out_signed", "in_scale", "out_scale")


def _v1_conv(prefix: str, meta: dict, tensors: dict) -> IntConv:
    kw = {f: meta[f] for f in _V1_CONV_FIELDS}
    return IntConv(weight=tensors[prefix + ".weight"], bias=tensors.get(prefix + ".bias"), M=tensors[prefix + ".M"],
                   shift=tensors[prefix + ".shift"], acc_dtype=getattr(torch, meta["acc_dtype"]),
                   w_scale=tensors.get(prefix + ".w_scale"), **kw)


def _migrate_v1(meta: dict, tensors: dict) -> Program:
    """A version-1 file (hand-walked blocks) -> the same integers as a program."""
    blocks = [IntBlock(convs=[_v1_conv(f"blocks.{b}.convs.{i}", m, tensors) for i, m in enumerate(blk["convs"])],
                       residual=[_v1_conv(f"blocks.{b}.residual.{i}", m, tensors) for i, m in enumerate(blk["residual"])],
                       dense=blk["dense"])
              for b, blk in enumerate(meta["blocks"])]
    return emit_convasr(blocks, _v1_conv("decoder", meta["decoder"], tensors), meta["input_scale"], meta["input_bits"])


def load_quantized(path) -> IntegerModel:
    """Read an .aqz file (version 2, or version 1 migrated to a program); errors name the file."""
    path = Path(path)
    payload = read_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an asrquant integer model file")
    version = payload.get("version")
    if version not in (1, VERSION):
        raise CheckpointError(f"{path}: integer model format version {version!r} is not supported (this asrquant "
                              f"reads versions 1 and {VERSION}); regenerate it with `asrquant quantize`")
    try:
        meta, tensors = json.loads(payload["meta"]), payload["tensors"]
        if not isinstance(meta, dict) or not isinstance(tensors, dict):
            raise TypeError("meta and tensors must be a mapping")
        program = _migrate_v1(meta, tensors) if version == 1 else program_from_file(meta["program"], tensors)
        frontend = {k: tensors["frontend." + k] for k in meta.get("frontend", [])}
        return IntegerModel(meta["config"], program, meta.get("info"), frontend_state=frontend)
    except ProgramError as e:   # names the op and the tensor
        raise CheckpointError(f"{path}: refused before running: {_first_line(e)}; regenerate it with "
                              f"`asrquant quantize`") from e
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError, RuntimeError,
            OverflowError) as e:
        raise CheckpointError(f"{path}: malformed integer model (version {version}): {_first_line(e)}; "
                              f"regenerate it with `asrquant quantize`") from e
