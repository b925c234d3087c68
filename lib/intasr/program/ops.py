"""The integer program: a flat, typed list of integer ops over named integer tensors.

A converter (``intasr.convert``) emits it; backends lower it (``program/torch_ref.py``,
``numpy_ref.py``, ``onnx_int.py``, ``onnx_qdq.py``, ``fast.py``); none of them knows which model
it came from. Adding an op means one entry in ``OPS`` and one of ``OP_GROUPS`` below, plus one
kernel per backend, each listed in its module's ``LOWERS`` (``tests/test_program_backends.py``
runs over the registry of ``program/backends.py`` and fails when a backend lacks one).

Values
------
Every tensor has a name and a ``Value`` record: its storage dtype, its role (``act``: an
activation whose integers lie in ``qrange(bits, signed)``; ``acc``: an accumulator or a
rescaled sum, int32/int64; ``lengths``: int64 [B] valid frames), and, as metadata only, the real
scale (real value = integer * scale). Activations and accumulators are [B, C, T] with time last
(NeMo's Conv2d subsampling: images [B, C, T, F], time axis 2).
The program has two inputs (``input`` int8 [B, F, T] and ``input_lengths``) and two outputs
(``logits`` int64 [B, classes, T'] and ``logits_lengths``).

Exact semantics (all integer; ``>>`` is an arithmetic shift = floor division by 2^s)
------------------------------------------------------------------------------------
mask_time(x, lengths) -> y      y[b, :, t] = x[b, :, t] if t < lengths[b] else 0      (same dtype);
                                for a 4-D image x [B, C, T, F] the time axis is 2:
                                y[b, :, t, :] = x[b, :, t, :] if t < lengths[b] else 0
frames(lengths) -> lengths'     attrs kernel K, stride s, padding p, dilation d:
                                lengths' = (lengths + 2p - d(K-1) - 1) // s + 1   (int64, floor)
conv1d(x) -> acc                params weight int8 [Cout, Cin/g, K], bias int32/int64 [Cout] or
                                none; attrs stride, padding, dilation, groups, acc_dtype:
                                acc[b,o,t] = bias[o] + sum_{c,k} w[o,c,k] xpad[b, g(o) Cin/g + c,
                                t stride + k dilation], xpad = x zero-padded by ``padding`` frames.
                                Exact: |acc| <= meta ``bound`` (proven at conversion from the
                                weights and the input's range) fits acc_dtype.
requantize(acc) -> y            params M, shift int64 [Cout] (or [1]); attrs bits, signed:
                                y = clamp((acc * M + 2^(shift-1)) >> shift, qrange(bits, signed)),
                                computed in int64 (round half up), stored as storage_dtype(bits,
                                signed): int8 signed, int16 for unsigned 8 bit (ReLU = the clamp
                                at 0).
                                M and shift broadcast along axis 1 (channels) whatever the rank
                                (also for rescale): [B, C, T] and images [B, C, T, F] alike.
rescale(acc) -> v               params M, shift: v = (acc * M + 2^(shift-1)) >> shift, int64, no clamp.
add(a, b) -> c                  c = a + b in int64 (operands are int64 rescaled terms).
clamp(v) -> y                   attrs bits, signed: y = clamp(v, qrange(bits, signed)), storage dtype.

NeMo's Conv2d subsampling (``striding`` / ``dw_striding``): the mel is an image, time = axis 2:
to_image(x) -> y                x [B, F, T] -> y [B, 1, T, F], y[b, 0, t, f] = x[b, f, t]   (same dtype)
conv2d(x) -> acc                x [B, Cin, T, F]; params weight int8 [Cout, Cin/g, kT, kF], bias
                                int32/int64 [Cout] or none; attrs stride [sT, sF], padding [pT, pF],
                                groups, acc_dtype: acc[b, o, t, f] = bias[o] + sum_{c, i, j}
                                w[o, c, i, j] xpad[b, g(o) Cin/g + c, t sT + i, f sF + j], xpad = x
                                zero-padded by pT frames and pF bins on each side. Exact: |acc| <=
                                meta ``bound`` (sum |w| * max|x| + |bias|, proven at conversion).
flatten_freq(x) -> y            x [B, C, T, F] -> y [B, C F, T], y[b, c F + f, t] = x[b, c, t, f]
                                (NeMo's (channel, freq) order per frame, the ``out`` Linear's input).

The Conformer's ops (constants prepared at conversion: ``intops.nonlinear`` / ``intops.gelu``
give the exact integer formulas, every bound proven there):
layernorm(x) -> y               over the channel axis 1: integer mean as the row sum, variance by
                                dynamic shifts, exact integer square root (Newton), normalized with
                                ``norm_bits`` fraction bits, gamma_q/beta_q multiply-add, dyadic
                                (M, shift) to ``out_bits`` signed.
softmax(s, lengths) -> p        over the last axis of s [B, H, T, T] (any integer dtype, int64
                                included, |s| < 2^62); (query i, key j) is masked
                                when i or j >= lengths[b]: masked scores take the integer minimum
                                and give probability exactly 0 (padded query rows are all 0);
                                i-exp, 2^K // sum reciprocal, ``out_bits`` unsigned, scale 2^-out_bits.
swish(x) -> y                   x * sigmoid(x), sigmoid by i-exp with ``sig_bits``: int32/int64
                                product with scale S 2^-sig_bits.
glu(x) -> y                     a * sigmoid(b) for the two halves (a, b) of the channel axis.
gelu(x) -> y                    I-BERT's i-GELU: q (q_one + sign(q) (q_one - t^2)), t = min(|q|, q_b) - q_b.
matmul_qk(q, k) -> s            s[b, h, i, j] = sum_{c < d_k} q[b, h d_k + c, i] k[b, h d_k + c, j]
                                (q, k [B, H d_k, T]; s in acc_dtype).
matmul_pv(p, v) -> y            y[b, h d_k + c, i] = sum_j p[b, h, i, j] v[b, h d_k + c, j].
matmul_pos(q) -> s              relative-position scores (Transformer-XL / NeMo rel_pos, rel_shift
                                included): q [B, H d_k, T]; param pos int8 [H d_k, 2L - 1], column m
                                = linear_pos(sinusoid(position L-1-m)) quantized per tensor, i.e.
                                positions L-1, ..., -(L-1) (L = attr max_len); attrs heads, max_len,
                                acc_dtype: s[b, h, i, j] = sum_{c < d_k} q[b, h d_k + c, i]
                                pos[h d_k + c, (L-1) - i + j], the score for distance i - j
                                (ValueError naming max_len when T > L).

Every op also carries ``meta`` (real scales, bounds, the float layer it came from) that no
backend may use for arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

FORMAT_VERSION = 2


@dataclass(frozen=True)
class OpSpec:
    """What an op kind takes: input/output arity, required attributes and integer params."""

    n_inputs: int
    n_outputs: int
    attrs: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    optional_params: tuple[str, ...] = ()


OPS: dict[str, OpSpec] = {
    "mask_time": OpSpec(2, 1),
    "frames": OpSpec(1, 1, attrs=("kernel", "stride", "padding", "dilation")),
    "conv1d": OpSpec(1, 1, attrs=("stride", "padding", "dilation", "groups", "acc_dtype"), params=("weight",),
                     optional_params=("bias",)),
    "requantize": OpSpec(1, 1, attrs=("bits", "signed"), params=("M", "shift")),
    "rescale": OpSpec(1, 1, params=("M", "shift")),
    "add": OpSpec(2, 1),
    "clamp": OpSpec(1, 1, attrs=("bits", "signed")),
    # the Conformer's ops (integer non-linearities of intops/nonlinear.py and intops/gelu.py)
    "layernorm": OpSpec(1, 1, attrs=("channels", "h", "eps_int", "eps_shift", "norm_bits", "u_max", "M", "shift",
                                      "out_bits"), params=("gamma_q", "beta_q")),
    "softmax": OpSpec(2, 1, attrs=("exp", "out_bits", "recip_bits")),
    "swish": OpSpec(1, 1, attrs=("exp", "sig_bits")),
    "glu": OpSpec(1, 1, attrs=("exp", "sig_bits")),
    "gelu": OpSpec(1, 1, attrs=("q_b", "q_one")),
    "matmul_qk": OpSpec(2, 1, attrs=("heads", "acc_dtype")),
    "matmul_pv": OpSpec(2, 1, attrs=("heads", "acc_dtype")),
    # NeMo's Conformer: Conv2d subsampling and relative-position attention
    "to_image": OpSpec(1, 1),
    "conv2d": OpSpec(1, 1, attrs=("stride", "padding", "groups", "acc_dtype"), params=("weight",),
                     optional_params=("bias",)),
    "flatten_freq": OpSpec(1, 1),
    "matmul_pos": OpSpec(1, 1, attrs=("heads", "max_len", "acc_dtype"), params=("pos",)),
}

# The op set in named groups: a ConvASR program (QuartzNet, Jasper) uses "convasr" only; a
# Conformer program adds "conformer" (NeMo's Conv2d subsampling, the integer non-linearities,
# attention). A backend declares the kinds it lowers (``LOWERS`` in its module, listed by
# ``program.backends``); lowering a group means lowering every kind in it.
OP_GROUPS: dict[str, tuple[str, ...]] = {
    "convasr": ("mask_time", "frames", "conv1d", "requantize", "rescale", "add", "clamp"),
    "conformer": ("to_image", "conv2d", "flatten_freq", "layernorm", "softmax", "swish", "glu", "gelu",
                  "matmul_qk", "matmul_pv", "matmul_pos"),
}


def groups_lowered(lowers) -> list[str]:
    """The op groups every kind of which is in `lowers`."""
    return [g for g, kinds in OP_GROUPS.items() if set(kinds) <= set(lowers)]


DTYPES = {"int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64}


@dataclass
class Value:
    """A named integer tensor: storage dtype, role, value range (activations) and real scale."""

    dtype: str
    role: str = "act"                     # "act" | "acc" | "lengths"
    bits: int | None = None               # activations: integers lie in qrange(bits, signed)
    signed: bool = True
    scale: float | None = None            # metadata: real value = integer * scale

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "role": self.role, "bits": self.bits, "signed": self.signed, "scale": self.scale}


@dataclass
class Op:
    kind: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)   # documentation only: scales, bound, source layer
    name: str = ""

    def param(self, key: str):
        return self.params.get(key)


class ProgramError(ValueError):
    """A malformed program (unknown op, missing attribute, a value used before it is defined)."""


@dataclass
class Program:
    values: dict[str, Value]
    ops: list[Op]
    inputs: tuple[str, str] = ("input", "input_lengths")
    outputs: tuple[str, str] = ("logits", "logits_lengths")
    meta: dict = field(default_factory=dict)   # input_scale, input_bits, logit_scale

    # ------------------------------------------------------------------ checks
    def validate(self) -> "Program":
        defined = set(self.inputs)
        for i, op in enumerate(self.ops):
            spec = OPS.get(op.kind)
            where = f"op {i} ({op.kind} {op.name!r})"
            if spec is None:
                raise ProgramError(f"{where}: unknown op kind; known: {sorted(OPS)}")
            if len(op.inputs) != spec.n_inputs or len(op.outputs) != spec.n_outputs:
                raise ProgramError(f"{where}: takes {spec.n_inputs} inputs and {spec.n_outputs} outputs")
            missing = [a for a in spec.attrs if a not in op.attrs]
            missing += [p for p in spec.params if p not in op.params]
            if missing:
                raise ProgramError(f"{where}: missing {missing}")
            for p, t in op.params.items():
                if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex():
                    raise ProgramError(f"{where}: param {p!r} must be an integer tensor")
            for name in op.inputs:
                if name not in defined:
                    raise ProgramError(f"{where}: input {name!r} is used before it is defined")
            for name in op.outputs:
                if name not in self.values:
                    raise ProgramError(f"{where}: output {name!r} has no Value record")
                defined.add(name)
        for name in self.outputs:
            if name not in defined:
                raise ProgramError(f"program output {name!r} is never computed")
        return self

    # ------------------------------------------------------------------ queries
    def ops_of(self, kind: str) -> list[Op]:
        return [op for op in self.ops if op.kind == kind]

    def producer(self) -> dict[str, Op]:
        return {o: op for op in self.ops for o in op.outputs}

    def consumers(self) -> dict[str, list[Op]]:
        out: dict[str, list[Op]] = {}
        for op in self.ops:
            for i in op.inputs:
                out.setdefault(i, []).append(op)
        return out

    def table(self) -> list[dict]:
        """One row per op: what chapter 03 shows (kind, dtypes, bound, M and shift ranges)."""
        rows = []
        for op in self.ops:
            row = {"op": op.name, "kind": op.kind,
                   "in": ", ".join(self.values[i].dtype for i in op.inputs),
                   "out": ", ".join(self.values[o].dtype for o in op.outputs)}
            if "weight" in op.params:
                row["weight"] = "x".join(str(s) for s in op.params["weight"].shape)
            if "bound" in op.meta:
                row["bound"] = op.meta["bound"]
            if "M" in op.params:
                row["M max"] = int(op.params["M"].max())
                s = op.params["shift"]
                row["shift"] = f"{int(s.min())}..{int(s.max())}"
            if "bits" in op.attrs:
                row["range"] = f"{'s' if op.attrs['signed'] else 'u'}{op.attrs['bits']}"
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ file form
    def to_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able description, {tensor name: integer tensor}); no pickle anywhere."""
        tensors = {}
        ops = []
        for i, op in enumerate(self.ops):
            refs = {}
            for p, t in op.params.items():
                key = f"{i}.{op.name}.{p}"
                tensors[key] = t
                refs[p] = key
            ops.append({"kind": op.kind, "name": op.name, "inputs": list(op.inputs), "outputs": list(op.outputs),
                        "attrs": op.attrs, "params": refs, "meta": op.meta})
        desc = {"version": FORMAT_VERSION, "inputs": list(self.inputs), "outputs": list(self.outputs),
                "values": {k: v.to_json() for k, v in self.values.items()}, "ops": ops, "meta": self.meta}
        json.dumps(desc)  # fail here, not at write time, on a non-JSON attribute
        return desc, tensors

    @classmethod
    def from_state(cls, desc: dict, tensors: dict[str, torch.Tensor]) -> "Program":
        """The program of a file, its structure checked (``validate``); a file from a stranger goes through
        ``program.validate.program_from_file``, which also checks every tensor, attribute and bound."""
        values = {str(k): Value(**v) for k, v in desc["values"].items()}
        ops = []
        for d in desc["ops"]:
            params, keys = {}, {}
            for p, key in d["params"].items():
                if not isinstance(key, str) or key not in tensors:
                    raise ProgramError(f"op {d['name']!r}: tensor {key!r} missing from the file"[:300])
                params[p], keys[p] = tensors[key], key
            if not isinstance(d["kind"], str) or not all(isinstance(n, str) for n in [*d["inputs"], *d["outputs"]]):
                raise ProgramError(f"op {d.get('name')!r}: kind, inputs and outputs must be names"[:300])
            op = Op(d["kind"], list(d["inputs"]), list(d["outputs"]), dict(d["attrs"]), params,
                    dict(d.get("meta") or {}), str(d.get("name", "")))
            op.param_keys = keys
            ops.append(op)
        if len(desc["inputs"]) != 2 or len(desc["outputs"]) != 2:
            raise ProgramError("a program has two inputs and two outputs")
        program = cls(values, ops, tuple(desc["inputs"]), tuple(desc["outputs"]), dict(desc.get("meta") or {}))
        return program.validate()


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


class Backend:
    """A backend: one kernel per op kind, run in program order over an environment of tensors.

    Subclasses fill ``kernels`` ({kind: fn(op, *inputs) -> output}) and convert inputs/outputs."""

    name = "backend"
    kernels: dict = {}

    def missing_kernels(self) -> list[str]:
        return sorted(set(OPS) - set(self.kernels))

    def execute(self, program: Program, env: dict) -> dict:
        for op in program.ops:
            fn = self.kernels.get(op.kind)
            if fn is None:
                raise NotImplementedError(f"backend {self.name!r} has no kernel for op {op.kind!r}")
            env[op.outputs[0]] = fn(op, *[env[i] for i in op.inputs])
        return env
