"""The fast CPU lowering of the integer program: torch._int_mm and the fused C kernels.

``TorchIntegerRunner(program_or_model)`` compiles the program once into a list of steps and runs
them: ``run(q, lengths=None) -> int64 logits`` (``run_with_lengths`` also returns the output
lengths; ``run_fast`` is the uniform backend call). Same integers as ``forward_int`` on every
valid frame (tests/test_deploy.py, tests/test_native.py); it knows nothing of the model the
program came from.

Fusion. The lowering looks for *groups*: a terminal op together with the conv1d ops that produce
its inputs (every intermediate value used once):
  requantize(conv1d(x))                              one term, clamped, stored int8
  clamp(add(...add(rescale(conv1d(x_i)))...))        a residual block: many terms summed, clamped
  rescale(conv1d(x)) not absorbed by a sum           e.g. the decoder: one term, int64 out
Each group is one requantization pass over int32 accumulators:
  * pointwise convs (K = 1, groups = 1, no padding): ``torch._int_mm`` (int8 x int8 -> int32) on
    the stored int8 values;
  * depthwise convs, ``depthwise="native"``: ``intops.native.dw_conv_requant`` (the conv fused with
    its requantization, one pass); ``depthwise="float-exact"``: stride-1 'same' depthwise convs as a
    float32 transposed conv on the integer values (bit-exact by a bound, below; not integer-only
    arithmetic: report it as such);
  * any other conv (dense k > 1 as in JasperDR, strided, dilated): ``intops.conv.int_conv1d``
    (im2col + _int_mm, exact on any CPU, no onnxruntime);
  * the requantization: ``intops.native.requant_sum`` (multi-term, int8 or int64 out) in the
    native mode; torch int64 ops, in place, otherwise (float-exact, CUDA).
Ops outside any group run one by one on true integer values (``KERNELS``: our own for the
ConvASR ops, the torch reference kernel for every other kind), so any valid program runs; only
the fusion depends on the patterns above.

Storage. An activation of at most 8 bits is stored as int8 s = y + zp, zp = 0 (signed) or -128
(unsigned y in [0, 255]); everything else (accumulators, sums, lengths, wider activations) holds
its true value. A pointwise conv on stored values gives W s = W y + zp * rowsum(W), so the zero
point enters the constant. Requantization of a term, in int64:
    v = (acc * M + C) >> s        C = (b - zp*rowsum) * M + 2^(s-1) + zo * 2^s
folds the bias, the input zero point and the output storage offset zo into one constant
(floor(v/2^s) + zo = floor((v + zo*2^s)/2^s)); a residual sum puts zo into its first term only.
Every constant is checked with Python ints: |acc| * M + |C| < 2^63 (else zo is added after the
shift, or the zero-point correction is applied to the accumulator; OverflowError if nothing fits).

Masks. ``mask_time`` sets the padded frames of a stored activation to its zero point (a real 0);
a mask read only by convs without padding is skipped (``onnx_int.redundant_masks``: no valid
output frame can see a padded frame through them). When lengths is None or every length equals T, every mask is the identity (the frame counts
derived by ``frames`` equal the tensors' lengths too) and the masks are skipped: no cost for
batch 1.

Float-exact depthwise: |y| <= 255, |w| <= 128 and sum_k |w_k| * max|y| < 2^24 (checked per layer,
else the layer falls back to the integer kernel), so every product and every partial sum is an
integer that float32 represents exactly, in any summation order.

CUDA (``device="cuda"``, ``deploy.tensorrt.cuda_int8_runner``): pointwise convs on ``torch._int_mm``
(columns padded to a multiple of 8), every other conv as a float32 convolution on integer values
(exact below 2^24, checked; TF32 must be off), requantization in torch int64 ops.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from ..intops.conv import int_conv1d
from ..quant.dyadic import requantize as _requantize
from ..quant.dyadic import rescale as _rescale
from ..quant.quantizer import qrange, storage_dtype
from .onnx_int import redundant_masks
from .ops import Program, Value

__all__ = ["KERNELS", "LOWERS", "TorchIntegerRunner", "run_fast"]

INT32_MAX = (1 << 31) - 1
INT64_MAX = (1 << 63) - 1
FLOAT_EXACT_LIMIT = 1 << 24  # float32 represents every integer up to 2^24 exactly
MODES = ("native", "float-exact")
NAMES = {"native": "torch+native-int8", "float-exact": "torch-int8+fp32exact-dw"}


def _zp(v: Value) -> int | None:
    """Zero point of a value stored as int8 (activations of at most 8 bits), None for true values."""
    if v.role == "act" and v.bits is not None and v.bits <= 8:
        return 0 if v.signed else -128
    return None


def _x_abs_max(v: Value) -> int | None:
    if v.bits is None:
        return None
    return (1 << (v.bits - 1)) if v.signed else (1 << v.bits) - 1


def _ints(t, n: int) -> list[int]:
    v = [int(x) for x in t.reshape(-1).tolist()]
    return v * n if len(v) == 1 else v


def _true(t: torch.Tensor, zp: int | None) -> torch.Tensor:
    """Stored -> true integer values."""
    if not zp:
        return t
    return t.to(torch.int16) - zp


class _Conv:
    """One conv1d op prepared for its group: kind pw | ndw | fdw | fconv | int (module doc)."""

    def __init__(self, op, xv: Value, mode: str, device: torch.device):
        w = op.params["weight"]
        Cout, cin_g, K = (int(s) for s in w.shape)
        a = op.attrs
        self.op, self.input, self.device = op, op.inputs[0], device
        self.stride, self.padding, self.dilation, self.groups = (int(a[k]) for k in ("stride", "padding", "dilation",
                                                                                       "groups"))
        self.zp = _zp(xv)
        xmax = _x_abs_max(xv)
        wabs = [int(s) for s in w.to(torch.int64).abs().reshape(Cout, -1).sum(1).tolist()]
        self.bound_nb = [s * xmax for s in wabs] if xmax is not None else None   # |acc| without bias
        int32_ok = self.bound_nb is not None and max(self.bound_nb) <= INT32_MAX
        self.acc_dtype = torch.int32 if int32_ok else torch.int64
        self.weight = w
        bias = op.params.get("bias")
        self.bias = _ints(bias, Cout) if bias is not None else [0] * Cout
        w_int8 = bool(w.numel()) and int(w.min()) >= -128 and int(w.max()) <= 127
        depthwise = cin_g == 1 and self.groups == Cout
        small = int32_ok and max(self.bound_nb) < FLOAT_EXACT_LIMIT
        pointwise = K == 1 and self.groups == 1 and self.padding == 0 and self.zp is not None and w_int8 and int32_ok
        if pointwise:
            self.kind = "pw"
        elif device.type == "cuda":
            if not small:
                raise NotImplementedError(f"{op.name}: accumulator bound exceeds 2^24: no exact float path on CUDA")
            self.kind = "fconv"
        elif depthwise and mode == "native" and self.zp is not None and w_int8 and int32_ok:
            self.kind = "ndw"
        elif (depthwise and mode == "float-exact" and self.stride == 1 and self.dilation == 1
              and 2 * self.padding == K - 1 and small):
            self.kind = "fdw"
        else:
            self.kind = "int"
        rowsum = [int(v) for v in w.to(torch.int64).reshape(Cout, -1).sum(1).tolist()] if self.kind == "pw" else None
        self.correction = None
        if rowsum is not None and self.zp:
            self.zp_rowsum = [self.zp * r for r in rowsum]
            self.base = [b - c for b, c in zip(self.bias, self.zp_rowsum)]        # acc + base = true acc
            self.sbound = [bd + abs(c) for bd, c in zip(self.bound_nb, self.zp_rowsum)]  # |stored acc|
        else:
            self.zp_rowsum = None
            self.base = list(self.bias)
            self.sbound = self.bound_nb
        if self.kind == "pw":
            self.W = w.reshape(Cout, cin_g).to(torch.int8).contiguous().to(device)
        elif self.kind == "ndw":
            self.Wn = w[:, 0, :].to(torch.int8).contiguous()
        elif self.kind == "fdw":
            # conv1d(x, w) = conv_transpose1d(x, flip(w)) for stride 1, 'same' padding (models/fastconv.py)
            self.Wf = w.to(torch.float32).flip(-1).contiguous().to(device)
        elif self.kind == "fconv":
            self.Wf = w.to(torch.float32).to(device)

    def unfold_zero_point(self) -> None:
        """Subtract zp * rowsum from the accumulator explicitly (when folding it would overflow)."""
        if self.zp_rowsum is None or self.correction is not None:
            raise OverflowError(f"{self.op.name}: requantization constant overflows int64")
        self.correction = torch.tensor(self.zp_rowsum, dtype=torch.int32).reshape(1, -1, 1).to(self.device)
        self.base, self.sbound = list(self.bias), self.bound_nb

    def accumulate(self, s: torch.Tensor) -> torch.Tensor:
        """Accumulator (int32, or int64 for wide layers) with acc + base = the true conv."""
        if self.kind == "pw":
            x = s[:, :, :: self.stride] if self.stride > 1 else s
            B, Cin, T = x.shape
            cols = x[0] if B == 1 else x.permute(1, 0, 2).reshape(Cin, B * T)
            n = B * T
            if self.device.type == "cuda" and n % 8:  # CUDA _int_mm: columns a multiple of 8
                cols = torch.nn.functional.pad(cols, (0, 8 - n % 8))
            acc = torch._int_mm(self.W, cols.contiguous())[:, :n]
            acc = acc.unsqueeze(0) if B == 1 else acc.reshape(-1, B, T).permute(1, 0, 2)
            if self.correction is not None:
                acc = acc - self.correction
            return acc
        if self.kind in ("fdw", "fconv"):  # exact: every product and partial sum is an integer below 2^24
            y = s.to(torch.float32)
            if self.zp:
                y.sub_(self.zp)
            if self.kind == "fdw":
                out = torch.nn.functional.conv_transpose1d(y, self.Wf, padding=self.padding, groups=self.Wf.shape[0])
            else:
                out = torch.nn.functional.conv1d(y, self.Wf, stride=self.stride, padding=self.padding,
                                                 dilation=self.dilation, groups=self.groups)
            return out.to(torch.int32)
        return int_conv1d(_true(s, self.zp), self.weight, None, self.stride, self.padding, self.dilation, self.groups,
                          self.acc_dtype)


class _Term:
    """One requantized conv of a group: per-channel M, shift and the folded constant C."""

    def __init__(self, conv: _Conv, M, S, zo: int, device):
        n = len(conv.bias)
        self.conv = conv
        self.M_list, self.S_list = _ints(M, n), _ints(S, n)
        if min(self.S_list) < 0 or max(self.S_list) > 62 or min(self.M_list) < 0:
            raise ValueError(f"{conv.op.name}: need 0 <= shift <= 62 and M >= 0")
        self.post = 0
        C = self.constant(zo)
        if C is None:                       # cannot fold the output offset: add it after the shift
            C, self.post = self.constant(0), zo
        if C is None and conv.zp_rowsum is not None and conv.correction is None:
            conv.unfold_zero_point()        # nor the input zero point: correct the accumulator instead
            C, self.post = self.constant(zo), 0
            if C is None:
                C, self.post = self.constant(0), zo
        if C is None:
            raise OverflowError(f"{conv.op.name}: requantization constant overflows int64")
        self.Mv = torch.tensor(self.M_list, dtype=torch.int64).to(device)
        self.Sv = torch.tensor(self.S_list, dtype=torch.int64).to(device)
        self.Cv = torch.tensor(C, dtype=torch.int64).to(device)
        self.Mc, self.Sc, self.Cc = (t.reshape(1, -1, 1) for t in (self.Mv, self.Sv, self.Cv))

    def constant(self, zo: int):
        c = self.conv
        C = [b * m + ((1 << s) >> 1) + zo * (1 << s) for b, m, s in zip(c.base, self.M_list, self.S_list)]
        if c.sbound is None or any(bd * m + abs(k) > INT64_MAX for bd, m, k in zip(c.sbound, self.M_list, C)):
            return None
        return C

    def scaled(self, acc: torch.Tensor) -> torch.Tensor:
        """(acc * M + C) >> s in int64, in place on a fresh int64 tensor."""
        v = acc.to(torch.int64)
        return v.mul_(self.Mc).add_(self.Cc).bitwise_right_shift_(self.Sc)


class _Group:
    """A terminal op with the convs feeding it, run as one requantization (module doc)."""

    def __init__(self, terminal, convs_and_params, out: Value, mode: str, device, threads: int):
        self.out_name = terminal.outputs[0]
        self.threads = threads
        if terminal.kind == "rescale":
            self.clamp, zo, self.out_dtype = None, 0, torch.int64
        else:
            bits, signed = int(terminal.attrs["bits"]), bool(terminal.attrs["signed"])
            zp = _zp(out)
            zo = zp or 0
            lo, hi = qrange(bits, signed)
            self.clamp = (lo + zo, hi + zo)
            self.out_dtype = torch.int8 if zp is not None else storage_dtype(bits, signed)
        self.terms = [_Term(conv, M, S, zo if i == 0 else 0, device) for i, (conv, M, S) in enumerate(convs_and_params)]
        self.post = sum(t.post for t in self.terms)
        int32 = all(t.conv.acc_dtype == torch.int32 for t in self.terms)
        native = mode == "native" and device.type == "cpu" and int32 and self.out_dtype in (torch.int8, torch.int64)
        if native and len(self.terms) == 1 and self.terms[0].conv.kind == "ndw" and self.out_dtype == torch.int8:
            self.kind = "dw"
        else:
            self.kind = "native" if native else "torch"

    def __call__(self, env: dict) -> None:
        if self.kind == "dw":
            from ..intops import native

            t = self.terms[0]
            c = t.conv
            lo, hi = self.clamp
            env[self.out_name] = native.dw_conv_requant(env[c.input].contiguous(), c.Wn, t.Mv, t.Cv, t.Sv, stride=c.stride,
                                                        padding=c.padding, dilation=c.dilation, zp=c.zp,
                                                        post=self.post, lo=lo, hi=hi, threads=self.threads)
        elif self.kind == "native":
            from ..intops import native

            terms = [(t.conv.accumulate(env[t.conv.input]).contiguous(), t.Mv, t.Cv, t.Sv) for t in self.terms]
            if self.clamp is None:
                env[self.out_name] = native.requant_sum(terms, post=self.post, out_dtype=torch.int64,
                                                        threads=self.threads)
            else:
                lo, hi = self.clamp
                env[self.out_name] = native.requant_sum(terms, post=self.post, lo=lo, hi=hi, threads=self.threads)
        else:
            v = None
            for t in self.terms:
                s = t.scaled(t.conv.accumulate(env[t.conv.input]))
                v = s if v is None else v.add_(s)
            if self.post:
                v.add_(self.post)
            if self.clamp is not None:
                v = v.clamp_(*self.clamp).to(self.out_dtype)
            env[self.out_name] = v


# --------------------------------------------------------------------------- single ops (outside groups)

def _store(y: torch.Tensor, v: Value) -> torch.Tensor:
    zp = _zp(v)
    if zp is None:
        return y.to(torch.int64 if v.role != "act" else storage_dtype(v.bits, v.signed))
    return (y + zp).to(torch.int8) if zp else y.to(torch.int8)


def _time_axis(x: torch.Tensor) -> int:
    """Time is the last axis of [B, C, T] (and [B, T]); axis 2 of a 4-D image [B, C, T, F] (ops doc)."""
    return 2 if x.dim() == 4 else x.dim() - 1


def _mask(env: dict, lengths: str, x: torch.Tensor, device) -> torch.Tensor:
    """bool, True on padded frames, shaped to broadcast against x (time axis per ``_time_axis``)."""
    ax, T = _time_axis(x), x.shape[_time_axis(x)]
    key = ("mask", lengths, T, x.dim(), ax)
    if key not in env:
        shape = [1] * x.dim()
        shape[ax] = T
        lshape = [1] * x.dim()
        lshape[0] = -1
        env[key] = torch.arange(T, device=device).reshape(shape) >= env[lengths].reshape(lshape)
    return env[key]


def _k_mask_time(program, device, op):
    x, lengths = op.inputs
    zp = _zp(program.values[x]) or 0
    out, dev = op.outputs[0], device
    if out in redundant_masks(program):  # only convs without padding read it (onnx_int.redundant_masks)
        def alias(env):
            env[out] = env[x]
        return alias

    def step(env):
        t = env[x]
        env[out] = t.masked_fill(_mask(env, lengths, t, dev), zp) if env["__mask__"] else t
    return step


def _k_frames(program, device, op):
    a = op.attrs
    c = 2 * a["padding"] - a["dilation"] * (a["kernel"] - 1) - 1
    s = int(a["stride"])
    (lengths,), out = op.inputs, op.outputs[0]

    def step(env):
        env[out] = torch.div(env[lengths] + c, s, rounding_mode="floor") + 1
    return step


def _k_conv1d(program, device, op):
    (x,), out = op.inputs, op.outputs[0]
    zp = _zp(program.values[x])
    a = op.attrs
    w, b = op.params["weight"].to(device), op.params.get("bias")
    b = b.to(device) if b is not None else None
    acc = torch.int64 if a["acc_dtype"] == "int64" else torch.int32

    def step(env):
        env[out] = int_conv1d(_true(env[x], zp), w, b, a["stride"], a["padding"], a["dilation"], a["groups"], acc)
    return step


def _k_requantize(program, device, op):
    (x,), out = op.inputs, op.outputs[0]
    xv, ov = program.values[x], program.values[out]
    M, S = op.params["M"].to(device), op.params["shift"].to(device)

    def step(env):
        y = _requantize(_true(env[x], _zp(xv)).to(torch.int64), M, S, op.attrs["bits"], op.attrs["signed"])
        env[out] = _store(y, ov)
    return step


def _k_rescale(program, device, op):
    (x,), out = op.inputs, op.outputs[0]
    xv = program.values[x]
    M, S = op.params["M"].to(device), op.params["shift"].to(device)

    def step(env):
        env[out] = _rescale(_true(env[x], _zp(xv)).to(torch.int64), M, S)
    return step


def _k_add(program, device, op):
    (x, y), out = op.inputs, op.outputs[0]
    zx, zy = _zp(program.values[x]), _zp(program.values[y])

    def step(env):
        env[out] = _true(env[x], zx).to(torch.int64) + _true(env[y], zy).to(torch.int64)
    return step


def _k_clamp(program, device, op):
    (x,), out = op.inputs, op.outputs[0]
    zx, ov = _zp(program.values[x]), program.values[out]
    lo, hi = qrange(op.attrs["bits"], op.attrs["signed"])

    def step(env):
        env[out] = _store(torch.clamp(_true(env[x], zx).to(torch.int64), lo, hi), ov)
    return step


def _k_reference(program, device, op):
    """Any other op kind: the torch reference kernel on true values, the result stored as its Value."""
    from .torch_ref import TorchReference

    fn = TorchReference.kernels[op.kind]
    zps = [_zp(program.values[i]) for i in op.inputs]
    out = op.outputs[0]
    ov = program.values[out]

    def step(env):
        y = fn(op, *[_true(env[i], z) for i, z in zip(op.inputs, zps)])
        env[out] = _store(y, ov) if _zp(ov) is not None else y
    return step


def _kernels() -> dict:
    from .torch_ref import TorchReference

    own = {"mask_time": _k_mask_time, "frames": _k_frames, "conv1d": _k_conv1d, "requantize": _k_requantize,
           "rescale": _k_rescale, "add": _k_add, "clamp": _k_clamp}
    return {**{k: _k_reference for k in TorchReference.kernels}, **own}


# op kind -> builder of the step that runs it alone (fused groups replace some of them); kinds
# without a fast kernel of their own run the torch reference kernel on true values
KERNELS = _kernels()
LOWERS = frozenset(KERNELS)


def find_groups(program: Program) -> tuple[dict, set]:
    """{id(terminal op): (terminal, [(conv op, M, shift)])}, and the ids of the ops they absorb."""
    prod, cons, outs = program.producer(), program.consumers(), set(program.outputs)

    def single(name):
        return name not in outs and len(cons.get(name, [])) == 1

    def conv_of(acc):
        op = prod.get(acc)
        return op if op is not None and op.kind == "conv1d" and single(acc) else None

    def sum_terms(name):
        op = prod.get(name)
        if op is None or not single(name):
            return None
        if op.kind == "add":
            a, b = sum_terms(op.inputs[0]), sum_terms(op.inputs[1])
            return None if a is None or b is None else (a[0] + b[0], a[1] + b[1] + [op])
        if op.kind == "rescale":
            c = conv_of(op.inputs[0])
            return None if c is None else ([(c, op.params["M"], op.params["shift"])], [c, op])
        return None

    groups, absorbed = {}, set()
    for op in program.ops:
        if op.kind == "clamp":
            found = sum_terms(op.inputs[0])
            if found:
                groups[id(op)] = (op, found[0])
                absorbed |= {id(o) for o in found[1]}
    for op in program.ops:
        if op.kind in ("requantize", "rescale") and id(op) not in absorbed:
            c = conv_of(op.inputs[0])
            if c is not None:
                groups[id(op)] = (op, [(c, op.params["M"], op.params["shift"])])
                absorbed.add(id(c))
    return groups, absorbed


class TorchIntegerRunner:
    """The program compiled into fused steps (module doc): ``run(q, lengths=None) -> int64 logits``
    (NumPy on the CPU, a tensor on CUDA); ``run_with_lengths`` also returns the output lengths.

    model: a Program or an IntegerModel. depthwise: "native" (name ``torch+native-int8``: C kernels,
    integer-only) or "float-exact" (``torch-int8+fp32exact-dw``). threads: the native kernels'
    OpenMP threads (torch ops use torch's own setting). device: "cpu" or "cuda" (module doc).
    allow_inexact: accepted for compatibility; no onnxruntime kernel is used any more."""

    def __init__(self, model, threads: int | None = None, depthwise: str = "native", device: str = "cpu",
                 allow_inexact: bool = False):
        program = model if isinstance(model, Program) else model.program
        if depthwise not in MODES:
            raise ValueError(f"depthwise must be one of {MODES}, not {depthwise!r}")
        self.depthwise, self.threads = depthwise, threads
        # the runner keeps no reference to the program (run_fast caches runners per program object)
        self.inputs, self.outputs = tuple(program.inputs), tuple(program.outputs)
        self.output_zp = _zp(program.values[program.outputs[0]])
        self.name = NAMES[depthwise]
        self.device = torch.device(device)
        if depthwise == "native" and self.device.type == "cpu":
            from ..intops import native

            native._lib()  # compile now: a missing compiler is a NativeBuildError here, not mid-run
        groups, absorbed = find_groups(program)
        th = threads or 1
        self.steps, self.groups = [], []
        for op in program.ops:
            if id(op) in groups:
                term, convs = groups[id(op)]
                prepared = [(_Conv(c, program.values[c.inputs[0]], depthwise, self.device), M, S) for c, M, S in convs]
                g = _Group(term, prepared, program.values[term.outputs[0]], depthwise, self.device, th)
                self.groups.append(g)
                self.steps.append(g)
            elif id(op) not in absorbed:
                fn = KERNELS.get(op.kind)
                if fn is None:
                    raise NotImplementedError(f"fast backend has no kernel for op {op.kind!r}")
                self.steps.append(fn(program, self.device, op))
        self.input_zp = _zp(program.values[program.inputs[0]])

    def kinds(self) -> dict:
        """How the convs and groups were lowered (conv kind and group kind counts)."""
        out: dict = {}
        for g in self.groups:
            out[f"group:{g.kind}"] = out.get(f"group:{g.kind}", 0) + 1
            for t in g.terms:
                out[f"conv:{t.conv.kind}"] = out.get(f"conv:{t.conv.kind}", 0) + 1
        return out

    def _input(self, q) -> torch.Tensor:
        q = torch.as_tensor(q)
        if q.dtype != torch.int8:
            if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
                raise TypeError(f"the integer program takes an integer input, got {q.dtype}")
            if q.numel() and (int(q.min()) < -128 or int(q.max()) > 127):
                raise ValueError("input values must lie in int8")
            q = q.to(torch.int8)
        if self.input_zp:
            q = (q.to(torch.int16) + self.input_zp).to(torch.int8)
        return q.to(self.device).contiguous()

    def run_with_lengths(self, q, lengths=None):
        """(logits int64 [B, C, T'], lengths int64 [B]) as tensors on the runner's device."""
        x = self._input(q)
        B, T = x.shape[0], x.shape[-1]
        if lengths is None:
            lens, masked = torch.full((B,), T, dtype=torch.int64, device=self.device), False
        else:
            lens = torch.as_tensor(lengths).to(torch.int64).reshape(-1)
            if lens.shape != (B,):
                raise ValueError(f"lengths must have one entry per batch item: {tuple(lens.shape)} for batch {B}")
            if B and (int(lens.min()) < 1 or int(lens.max()) > T):
                raise ValueError(f"lengths must lie in 1..{T} (frames of the input), got {lens.tolist()}")
            masked = bool((lens != T).any())
            lens = lens.to(self.device)
        env = {self.inputs[0]: x, self.inputs[1]: lens, "__mask__": masked}
        with torch.inference_mode():
            for step in self.steps:
                step(env)
        out = env[self.outputs[0]]
        if self.output_zp is not None or out.dtype != torch.int64:
            out = _true(out, self.output_zp).to(torch.int64)
        return out, env[self.outputs[1]]

    def run(self, q, lengths=None):
        out, _ = self.run_with_lengths(q, lengths)
        return out if out.is_cuda else out.numpy()


_RUNNERS: dict = {}


def run_fast(program: Program, q, lengths, depthwise: str = "native", threads: int = 1):
    """The uniform backend call: integer [B, F, T] and lengths [B] -> (int64 NumPy logits
    [B, C, T'], int64 NumPy lengths [B]); the compiled runner is kept per program object."""
    key = (id(program), depthwise, threads)
    if key not in _RUNNERS:
        _RUNNERS[key] = TorchIntegerRunner(program, threads, depthwise)
        weakref.finalize(program, _RUNNERS.pop, key, None)
    logits, lens = _RUNNERS[key].run_with_lengths(q, lengths)
    return logits.cpu().numpy(), lens.cpu().numpy().astype(np.int64, copy=False)
