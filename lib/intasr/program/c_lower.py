"""What the C backend lowers, and how: the integer program as a list of C kernel calls ("steps").

Every activation of at most 8 bits is a uint8 time-major buffer u = y + off (off 128 for signed
values, 0 for unsigned), with padding rows that hold a real zero (program/c/asrq_kernels.h). The
program's ops are matched, in order, into steps; each step is one kernel call:

  group      a conv group (``_groups``): the terminal requantize / rescale / clamp of a sum of
             rescaled terms, each a conv1d (dense as K shifted 1x1 GEMMs, depthwise) or an
             activation itself (a residual skip); computed tile by tile, requantized, summed,
             clamped and stored. Term constants fold the bias, the input offset (off times the weight
             row sum) and the rounding half; the first term also the output offset:
                 y_u = clamp(sum_terms ((acc_u * M + C) >> S) + off_out, lo + off_out, hi + off_out),
                 C = (bias - off_in * rowsum) * M + 2^(S-1)
             the program's requantization of the true accumulator, exactly (the offset is added after
             the shift: folding it into C as off_out 2^S overflows int64 for shifts near 62, which
             real models have on dead channels). Every bound is checked with Python integers:
             |acc_u| < 2^31 and |acc_u| M + |C| < 2^63. The AVX2 kernel family accumulates
             w (u - gamma) instead (its input split at gamma6 or gamma7, program/c/asrq_kernels.c),
             with Cs = (bias - (off_in - gamma) rowsum) M + 2^(S-1) and the same checks.
  table      swish / gelu of an 8-bit activation and the requantize that reads it: a 256-entry
             table per channel (or per tensor), filled here by the NumPy reference's own kernels,
             so its integers are the reference's by construction.
  glu        GLU and its requantize: the sigmoid of each 8-bit value from a table (NumPy
             reference), the product a * sigmoid(b) and the requantization in int64.
  layernorm  the integer LayerNorm of each row (program/c/asrq_ops.c).
  attention  matmul_qk (+ rescale, matmul_pos, rescale, add: rel_pos), softmax, matmul_pv and the
             context's requantize, fused per head and query row.
  im2col     NeMo's Conv2d subsampling: the 3 x 3 patches of an image activation as the rows of a
             matrix, so that the Conv2d is a group with one GEMM term over them. Images are stored
             time-major, one row of F positions per frame (the input mel: F bytes; a Conv2d's output:
             F positions of Cp bytes, its GEMM rows); ``to_image`` and ``flatten_freq`` are views of
             the same buffer (the Linear after flatten_freq reads its weights in position order).
  mask       mask_time, in place (padded frames set to off) when a length is shorter than the frames.
  frames     an integer expression on the lengths.
Anything else raises ``CExportError`` naming the op.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..quant.quantizer import qrange
from .nonlinear_params import layernorm_params, sigmoid_params, softmax_params
from .numpy_ref import NumpyReference
from .ops import Op, Program

__all__ = ["CExportError", "Lowering", "Blob", "LOWERS", "INT31", "INT63"]

INT31, INT63 = (1 << 31) - 1, (1 << 63) - 1
# the op kinds the C backend lowers (as parts of the steps above)
LOWERS = frozenset({"mask_time", "frames", "conv1d", "requantize", "rescale", "add", "clamp", "swish", "gelu", "glu",
                    "layernorm", "matmul_qk", "matmul_pos", "softmax", "matmul_pv", "to_image", "conv2d",
                    "flatten_freq"})
MAGIC = b"ASRQBLOB"
UNIT = {"stride": 1, "padding": 0, "dilation": 1, "kernel": 1}   # a 1x1 over time: skips, Conv2d patches


class CExportError(NotImplementedError):
    """The program uses something the C backend does not lower (the message names it)."""


def _cp(c: int) -> int:
    return -(-c // 64) * 64


def _ints(t, n: int) -> list[int]:
    v = [int(x) for x in t.reshape(-1).tolist()]
    return v * n if len(v) == 1 else v


def _off(v) -> int:
    return 128 if v.signed else 0


@dataclass
class Act:
    """A stored activation (uint8 buffer) or the int64 output."""
    name: str
    channels: int
    off: int = 0
    int64: bool = False
    pad: int = 0     # rows before the frames (hold off)
    back: int = 0    # rows after them
    slot: int = -1
    index: int = 0
    img: tuple | None = None   # an image: (F positions per frame, bytes per position, channels per position)

    @property
    def cp(self) -> int:
        return _cp(self.channels)


@dataclass
class Term:
    src: str
    M: list
    S: list
    kind: str = "gemm"          # gemm | dw | ident (the activation itself)
    conv: Op | None = None
    w: np.ndarray | None = None  # int64 [Cout, Cin/groups, K] as the kernels read it (views reordered)
    geo: dict = field(default_factory=lambda: dict(UNIT))   # stride, padding, dilation, kernel along time
    w_off: int = 0
    m_off: int = 0
    c_off: int = 0
    s_off: int = 0
    cs6_off: int = 0
    cs7_off: int = 0
    taps: int = 0
    gamma6: int = 0
    gamma7: int = 0
    m31: int = 0
    fast32: int = 0
    group32: int = 0
    vmax: int = 0
    index: int = 0              # in the model's term table
    name: str = ""


@dataclass
class Step:
    """One kernel call: kind, the activations it reads (roots) and the one it writes."""
    kind: str
    reads: list
    out: str = ""
    data: dict = field(default_factory=dict)


class Blob:
    """The weights blob: arrays at 64-byte aligned offsets, after a 64-byte header."""

    def __init__(self):
        self.parts, self.size = [], 0

    def add(self, arr: np.ndarray) -> int:
        pad = (-self.size) % 64
        if pad:
            self.parts.append(b"\0" * pad)
            self.size += pad
        off = self.size
        b = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        self.parts.append(b)
        self.size += len(b)
        return off

    def body(self) -> bytes:
        return b"".join(self.parts)


def checksum(body: bytes) -> int:
    """sum of byte * (position mod 65521 + 1), mod 2^61 - 1 (as model.c): catches a truncated or
    foreign blob."""
    a = np.frombuffer(body, dtype=np.uint8)
    if not a.size:
        return 0
    # bytes at positions equal mod 65521 share a weight: sum each column of a [rows][65521] view
    # first (exact in int64, and the total stays below 2^63 for any blob under 2^30 bytes)
    cols = np.zeros(65521, dtype=np.int64)
    full = a.size // 65521 * 65521
    if full:
        cols += a[:full].reshape(-1, 65521).sum(0, dtype=np.int64)
    cols[: a.size - full] += a[full:]
    return int(cols @ np.arange(1, 65522, dtype=np.int64)) % ((1 << 61) - 1)


# ------------------------------------------------------------------ pattern matching

class _Patterns:
    """The program's ops matched into steps: {id(terminal op): (kind, [absorbed ops])}."""

    def __init__(self, p: Program):
        self.p, self.prod, self.cons, self.outs = p, p.producer(), p.consumers(), set(p.outputs)
        self.found: dict[int, tuple] = {}
        self.absorbed: set[int] = set()
        # sums first (a residual block's rescaled terms are not groups of their own), then the rest
        for matchers in ((self._sum_group,), (self._group, self._table, self._glu, self._attention)):
            for op in p.ops:
                if id(op) in self.found or id(op) in self.absorbed:
                    continue
                for match in matchers:
                    hit = match(op)
                    if hit:
                        self.found[id(op)] = hit
                        self.absorbed |= {id(o) for o in hit[1]}
                        break

    def single(self, name) -> bool:
        return name not in self.outs and len(self.cons.get(name, [])) == 1

    def made_by(self, name, kind):
        op = self.prod.get(name)
        return op if op is not None and op.kind == kind and self.single(name) else None

    def is_act8(self, name) -> bool:
        v = self.p.values.get(name)
        return v is not None and v.role == "act" and v.bits is not None and v.bits <= 8

    # a term of a group: a rescaled conv accumulator, or a rescaled activation (a residual skip)
    def _term(self, op):
        conv = self.made_by(op.inputs[0], "conv1d")
        if conv is not None:
            return (conv, op), [conv, op]
        if op.kind == "rescale" and self.is_act8(op.inputs[0]):
            return (None, op), [op]
        return None

    def _sum(self, name):
        op = self.prod.get(name)
        if op is None or not self.single(name):
            return None
        if op.kind == "add":
            a, b = self._sum(op.inputs[0]), self._sum(op.inputs[1])
            return None if a is None or b is None else (a[0] + b[0], a[1] + b[1] + [op])
        if op.kind == "rescale":
            t = self._term(op)
            return None if t is None else ([t[0]], t[1])
        return None

    def _sum_group(self, op):
        if op.kind == "clamp":
            found = self._sum(op.inputs[0])
            if found and any(c is not None for c, _ in found[0]):
                return ("group", found[1], found[0])
        return None

    def _group(self, op):
        if op.kind in ("requantize", "rescale"):
            conv = self.made_by(op.inputs[0], "conv1d")
            if conv is not None:
                return ("group", [conv], [(conv, op)])
            conv = self.made_by(op.inputs[0], "conv2d")
            if conv is not None and op.kind == "requantize":
                return ("conv2d", [conv], conv)
        return None

    def _table(self, op):   # swish / gelu + requantize, on an 8-bit input
        if op.kind != "requantize" or int(op.attrs["bits"]) > 8:
            return None
        act = self.prod.get(op.inputs[0])
        if act is None or act.kind not in ("swish", "gelu") or not self.single(op.inputs[0]):
            return None
        return ("table", [act], act) if self.is_act8(act.inputs[0]) else None

    def _glu(self, op):
        if op.kind != "requantize" or int(op.attrs["bits"]) > 8:
            return None
        glu = self.made_by(op.inputs[0], "glu")
        return ("glu", [glu], glu) if glu is not None and self.is_act8(glu.inputs[0]) else None

    def _attention(self, op):
        if op.kind != "requantize" or int(op.attrs["bits"]) > 8:
            return None
        pv = self.made_by(op.inputs[0], "matmul_pv")
        sm = pv and self.made_by(pv.inputs[0], "softmax")
        if sm is None:
            return None
        qk = self.made_by(sm.inputs[0], "matmul_qk")
        parts = {"pv": pv, "softmax": sm, "qk": qk}
        absorbed = [pv, sm]
        if qk is None:   # rel_pos: rescale(q.k) + rescale(matmul_pos)
            add = self.made_by(sm.inputs[0], "add")
            if add is None:
                return None
            ra, rb = (self.made_by(n, "rescale") for n in add.inputs)
            qk = ra and self.made_by(ra.inputs[0], "matmul_qk")
            pos = rb and self.made_by(rb.inputs[0], "matmul_pos")
            if qk is None or pos is None:
                return None
            parts.update(qk=qk, pos=pos, rescale_qk=ra, rescale_pos=rb)
            absorbed += [add, ra, rb, pos]
        absorbed.append(qk)
        names = [qk.inputs[0], qk.inputs[1], pv.inputs[1]] + ([parts["pos"].inputs[0]] if "pos" in parts else [])
        return ("attention", absorbed, parts) if all(self.is_act8(n) for n in names) else None


# ------------------------------------------------------------------ the lowering

class Lowering:
    """The analysis: storage of every value, the steps, buffer plan, packed weights."""

    def __init__(self, program: Program):
        self.p = program
        for op in program.ops:
            if op.kind not in LOWERS:
                raise CExportError(f"the C backend has no kernel for op {op.kind!r} ({op.name}); it lowers "
                                   f"{', '.join(sorted(LOWERS))}")
        pat = _Patterns(program)
        self.cons = program.consumers()
        self.alias: dict[str, str] = {}       # masked value -> the buffer it is masked in
        self.acts: dict[str, Act] = {}
        self.lengths = {program.inputs[1]: "L0"}
        self.steps: list[Step] = []
        self.flattened: set[str] = set()      # values that are flatten_freq views (and masks of them)
        inp = program.inputs[0]
        self.acts[inp] = Act(inp, self._input_channels(inp), off=_off(program.values[inp]))
        self._check_act(inp)
        build = {"group": self._group, "table": self._table, "glu": self._glu, "attention": self._attention,
                 "conv2d": self._conv2d}
        for op in program.ops:
            if id(op) in pat.found:
                kind, _, detail = pat.found[id(op)]
                step = build[kind](op, detail)
                self.steps += step if isinstance(step, list) else [step]
            elif id(op) in pat.absorbed:
                continue
            elif op.kind == "mask_time":
                self.steps.append(self._mask(op))
            elif op.kind == "frames":
                self.lengths[op.outputs[0]] = f"L{len(self.lengths)}"
                self.steps.append(Step("frames", [], data={"op": op}))
            elif op.kind == "layernorm":
                self.steps.append(self._layernorm(op))
            elif op.kind == "to_image":   # [B, F, T] as an image of F positions of 1 channel: the same bytes
                src = self._src(op.inputs[0], op.name)
                src.img = (src.channels, 1, 1)
                self.alias[op.outputs[0]] = src.name
            elif op.kind == "flatten_freq":   # the image's frames as rows of F x Cp channels: the same bytes
                src = self._src(op.inputs[0], op.name)
                if src.img is None:
                    raise CExportError(f"{op.name}: flatten_freq of a value that is not an image")
                self.alias[op.outputs[0]] = src.name
                self.flattened.add(op.outputs[0])
            else:
                raise CExportError(f"{op.name}: a {op.kind} op outside the patterns the C backend fuses "
                                   "(conv groups, swish/gelu/glu + requantize, attention: program/c_lower.py)")
        out = self.root(program.outputs[0])
        if out not in self.acts:
            raise CExportError(f"the program output {program.outputs[0]!r} is not computed by a conv group")
        self.out = self.acts[out]
        if program.outputs[1] not in self.lengths:
            raise CExportError(f"the output lengths {program.outputs[1]!r} are not a frames op")
        self._plan()

    # -------------------------------------------------------------- values
    def root(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def _check_act(self, name: str) -> None:
        v = self.p.values[name]
        if v.role != "act" or v.bits is None or v.bits > 8:
            raise CExportError(f"value {name!r}: the C backend stores activations of at most 8 bits "
                               f"(got role {v.role}, {v.bits} bits)")

    def _input_channels(self, name: str) -> int:
        if "input_features" in self.p.meta:
            return int(self.p.meta["input_features"])
        seen, todo = set(), [name]
        while todo:
            n = todo.pop()
            for op in self.cons.get(n, []):
                if op.kind == "conv1d":
                    w = op.params["weight"]
                    return int(w.shape[1]) * int(op.attrs["groups"])
                if op.kind == "mask_time" and op.outputs[0] not in seen:
                    seen.add(op.outputs[0])
                    todo.append(op.outputs[0])
        raise CExportError(f"the program input {name!r} is not read by a conv1d, and the program does not record "
                           "its input features (meta input_features: convert it again)")

    def _src(self, name: str, who: str) -> Act:
        root = self.root(name)
        if root not in self.acts or self.acts[root].int64:
            raise CExportError(f"{who}: its input {name!r} is not a stored activation")
        return self.acts[root]

    def _new_act(self, op: Op, channels: int) -> Act:
        out = op.outputs[0]
        self._check_act(out)
        act = Act(out, channels, off=_off(self.p.values[out]))
        self.acts[out] = act
        return act

    def _mask(self, op: Op) -> Step:
        x, lengths = op.inputs
        root = self.root(x)
        if len(self.cons.get(x, [])) != 1 or x in self.p.outputs:
            raise CExportError(f"{op.name}: the unmasked value {x!r} has other readers (in-place mask)")
        self.alias[op.outputs[0]] = root
        if x in self.flattened:
            self.flattened.add(op.outputs[0])
        return Step("mask", [root], root, {"lengths": lengths})

    # -------------------------------------------------------------- groups
    def _group(self, terminal: Op, terms) -> Step:
        out = terminal.outputs[0]
        cout = next(int(c.params["weight"].shape[0]) for c, _ in terms if c is not None)
        data = {"terminal": terminal, "terms": [], "lo": 0, "hi": 0}
        if terminal.kind == "rescale":
            if out not in self.p.outputs:
                raise CExportError(f"{terminal.name}: an int64 rescale that is not the program output")
            self.acts[out] = Act(out, cout, int64=True)
        else:
            lo, hi = qrange(int(terminal.attrs["bits"]), bool(terminal.attrs["signed"]))
            act = self._new_act(terminal, cout)
            data["lo"], data["hi"] = lo + act.off, hi + act.off
        for conv, scale in terms:
            data["terms"].append(self._term(conv, scale, cout, terminal))
        for t in data["terms"]:
            self._constants(t, self.acts[t.src].off)
        self._sum32(data)
        return Step("group", [t.src for t in data["terms"]], out, data)

    @staticmethod
    def _sum32(data: dict) -> None:
        """group32 on the first term: every term fast32 and the sum of the rescaled terms (plus the
        output offset) provably within int32, so the AVX2 family sums them in int32."""
        terms = data["terms"]
        ok = all(t.fast32 for t in terms) and sum(t.vmax for t in terms) + 256 < 1 << 31
        for j, t in enumerate(terms):
            t.group32 = int(ok and j == 0)

    def _term(self, conv: Op | None, scale: Op, cout: int, terminal: Op) -> Term:
        M, S = scale.params["M"], scale.params["shift"]
        if conv is None:   # the activation itself: a residual skip
            xin = self._src(scale.inputs[0], scale.name)
            if xin.channels != cout:
                raise CExportError(f"{scale.name}: a skip of {xin.channels} channels into a sum of {cout}")
            return Term(xin.name, _ints(M, cout), _ints(S, cout), kind="ident", name=scale.name)
        w = conv.params["weight"].numpy().astype(np.int64)
        co, cin_g, K = w.shape
        groups = int(conv.attrs["groups"])
        xin = self._src(conv.inputs[0], conv.name)
        if co != cout:
            raise CExportError(f"{terminal.name}: terms with different channel counts")
        if int(w.min()) < -128 or int(w.max()) > 127:
            raise CExportError(f"{conv.name}: weights outside int8")
        if conv.inputs[0] in self.flattened:   # NeMo's (channel, freq) order -> the buffer's (freq, channel) order
            F, pstride, C = xin.img
            if groups != 1 or K != 1 or cin_g != C * F:
                raise CExportError(f"{conv.name}: a conv of a flattened image other than a 1x1 of its {C * F} values")
            w = np.zeros((co, F, pstride), dtype=np.int64)
            w[:, :, :C] = conv.params["weight"].numpy().astype(np.int64)[:, :, 0].reshape(co, C, F).transpose(0, 2, 1)
            w, cin_g = w.reshape(co, F * pstride, 1), F * pstride
        if groups == 1:
            kind = "gemm"
        elif groups == co and cin_g == 1 and xin.channels == co:
            kind = "dw"
        else:
            raise CExportError(f"{conv.name}: grouped conv with {groups} groups (only 1 or depthwise)")
        if cin_g * groups != xin.channels:
            raise CExportError(f"{conv.name}: {cin_g * groups} input channels, its input has {xin.channels}")
        geo = {k: int(conv.attrs[k]) for k in ("stride", "padding", "dilation")} | {"kernel": int(K)}
        return Term(xin.name, _ints(M, co), _ints(S, co), kind=kind, conv=conv, w=w, geo=geo, name=conv.name)

    def _weights(self, t: Term, co: int) -> np.ndarray:
        """[Cout, Cin/g, K] int64 (an identity term: the unit matrix, for its bounds)."""
        return np.eye(co, dtype=np.int64)[:, :, None] if t.kind == "ident" else t.w

    def _constants(self, t: Term, off_in: int):
        co = len(t.M)
        flat = self._weights(t, co).reshape(co, -1)
        rowsum = flat.sum(1, dtype=np.int64)
        possum = np.maximum(flat, 0).sum(1, dtype=np.int64)
        negsum = possum - rowsum
        bias = t.conv.params.get("bias") if t.kind != "ident" else None
        bias = np.array(_ints(bias, co) if bias is not None else [0] * co, dtype=np.int64)
        # the AVX2 family splits u at gamma (program/c/asrq_kernels.c): its accumulator is sum w (u - gamma),
        # gamma centering the window of 2^b values (b = 6 or 7) on y = 0 (signed) or starting it at 0
        if off_in and t.kind != "ident":
            t.gamma6, t.gamma7 = off_in - 32, off_in - 64
        for o, (m, s) in enumerate(zip(t.M, t.S)):
            if not 0 <= s <= 62 or m < 0:
                raise CExportError(f"{t.name}: shift {s} / multiplier {m} outside 0..62 / >= 0")
        M, S = np.array(t.M, dtype=np.int64), np.array(t.S, dtype=np.int64)
        t.vmax = 0   # the largest |(acc M + C) >> S|: a rescaled term's magnitude
        consts = []
        for gamma in (0, t.gamma6, t.gamma7):
            # every partial sum of w (u - gamma), u in [0, 255], lies in [lo, hi] (each term's range holds 0)
            lo = -(255 - gamma) * negsum - gamma * possum
            hi = (255 - gamma) * possum + gamma * negsum
            worst = int(np.argmax((lo < -INT31 - 1) | (hi > INT31)))
            if lo[worst] < -INT31 - 1 or hi[worst] > INT31:
                raise CExportError(f"{t.name}: accumulator range [{lo[worst]}, {hi[worst]}] exceeds int32")
            base = bias - (off_in - gamma) * rowsum
            # acc M + C = (acc + base) M + 2^S / 2, |acc + base| <= max(|lo + base|, |hi + base|) (which
            # bounds |base| too, as lo <= 0 <= hi): int64 where that bound proves it safe (2x margin)
            bound = np.maximum(np.abs(lo + base), np.abs(hi + base)).astype(np.float64) * M + 2.0 ** S
            safe = bound < 2.0 ** 62
            c = np.where(safe, base * np.where(safe, M, 0) + ((np.int64(1) << S) >> 1), 0)
            peak = np.maximum(np.abs(lo * M + c), np.abs(hi * M + c))
            if safe.any():
                t.vmax = max(t.vmax, int((peak[safe] >> S[safe]).max()) + 1)
            out = [int(v) for v in c]
            for o in np.flatnonzero(~safe):   # exact Python ints
                m, s = int(M[o]), int(S[o])
                c = int(base[o]) * m + ((1 << s) >> 1)
                peak = max(abs(int(lo[o]) * m + c), abs(int(hi[o]) * m + c))
                if peak > INT63:
                    raise CExportError(f"{t.name}: acc * M + C can overflow int64 (M = {m})")
                out[o] = c
                t.vmax = max(t.vmax, (peak >> s) + 1)
            consts.append(out)
        t.C, t.Cs6, t.Cs7 = consts
        # every M in [0, 2^31): acc * M is one signed 32 x 32 -> 64 multiply (vpmuldq) in every family
        t.m31 = int(all(0 <= m < 1 << 31 for m in t.M))
        # the int32 requantization: floor(v / 2^S) as (the high half of v) >> (S - 32)
        t.fast32 = int(all(s >= 32 for s in t.S) and t.m31)

    # -------------------------------------------------------------- NeMo's Conv2d subsampling
    def _conv2d(self, req: Op, conv: Op) -> list[Step]:
        """im2col of the image, then a group with one 1x1 GEMM term over its patches; the output is an
        image of F' positions of Cp channels (the GEMM's rows)."""
        src = self._src(conv.inputs[0], conv.name)
        if src.img is None:
            raise CExportError(f"{conv.name}: a Conv2d of a value that is not an image")
        F, pstride, C = src.img
        w = conv.params["weight"].numpy().astype(np.int64)
        co, cin_g, kT, kF = w.shape
        (sT, sF), (pT, pF) = conv.attrs["stride"], conv.attrs["padding"]
        if int(conv.attrs["groups"]) != 1 or cin_g != C:
            raise CExportError(f"{conv.name}: grouped Conv2d or {cin_g} input channels for an image of {C}")
        F2 = (F + 2 * pF - kF) // sF + 1
        patch = Act(f"{conv.name}.patches", kT * kF * C, off=src.off)
        self.acts[patch.name] = patch
        geo = {"kT": kT, "kF": kF, "sT": sT, "sF": sF, "pT": pT, "pF": pF, "F2": F2}
        steps = [Step("im2col", [src.name], patch.name, geo)]
        cp_o = _cp(co)
        out = self._new_act(req, F2 * cp_o)
        out.img = (F2, cp_o, co)
        lo, hi = qrange(int(req.attrs["bits"]), bool(req.attrs["signed"]))
        # patch index (i kF + j) C + c holds x[c, t sT + i - pT, f sF + j - pF]
        gw = w.transpose(0, 2, 3, 1).reshape(co, kT * kF * C, 1)
        t = Term(patch.name, _ints(req.params["M"], co), _ints(req.params["shift"], co), kind="gemm", conv=conv,
                 w=gw, name=conv.name)
        self._constants(t, patch.off)
        data = {"terms": [t]}
        self._sum32(data)
        steps.append(Step("group", [patch.name], out.name, {"terminal": req, "terms": [t], "lo": lo + out.off,
                                                             "hi": hi + out.off, "rows_per_frame": F2, "image": geo}))
        return steps

    # -------------------------------------------------------------- tables, GLU, LayerNorm, attention
    def _stored_values(self, src: Act) -> np.ndarray:
        """The 256 true values of a stored byte, indexed by the byte."""
        return np.arange(256, dtype=np.int64) - src.off

    def _table(self, req: Op, act: Op) -> Step:
        src = self._src(act.inputs[0], act.name)
        out = self._new_act(req, src.channels)
        per_channel = int(req.params["M"].numel()) > 1
        x = np.broadcast_to(self._stored_values(src), (1, src.channels if per_channel else 1, 256))
        kern = NumpyReference.kernels
        y = kern["requantize"](req, kern[act.kind](act, x.copy()))
        table = (y + out.off).astype(np.uint8).reshape(-1, 256)
        return Step("table", [src.name], out.name, {"table": table, "per_channel": per_channel, "name": act.name})

    def _glu(self, req: Op, glu: Op) -> Step:
        src = self._src(glu.inputs[0], glu.name)
        if src.channels % 2:
            raise CExportError(f"{glu.name}: GLU of an odd channel count")
        out = self._new_act(req, src.channels // 2)
        from ..intops.nonlinear_ref import sigmoid_ref

        sig = sigmoid_ref(self._stored_values(src), sigmoid_params(glu)).astype(np.int32)
        M, S = req.params["M"].numpy().astype(np.int64), req.params["shift"].numpy().astype(np.int64)
        lo, hi = qrange(int(req.attrs["bits"]), bool(req.attrs["signed"]))
        # |a * sig| <= 128 * 2^B and |.| * M + 2^(S-1) must fit int64
        if 128 * (1 << int(glu.attrs["sig_bits"])) * int(M.max()) + (1 << int(S.max())) > INT63:
            raise CExportError(f"{glu.name}: the GLU product times M can overflow int64")
        return Step("glu", [src.name], out.name, {"sig": sig, "M": M, "S": S, "per_channel": M.size > 1,
                                                  "lo": lo, "hi": hi, "name": glu.name})

    def _layernorm(self, op: Op) -> Step:
        src = self._src(op.inputs[0], op.name)
        p = layernorm_params(op)
        if p.channels != src.channels:
            raise CExportError(f"{op.name}: LayerNorm over {p.channels} channels of a {src.channels}-channel input")
        out = self._new_act(op, src.channels)
        return Step("layernorm", [src.name], out.name, {"params": p, "name": op.name})

    def _attention(self, req: Op, parts: dict) -> Step:
        qk, sm, pv = parts["qk"], parts["softmax"], parts["pv"]
        q, k, v = (self._src(n, qk.name) for n in (qk.inputs[0], qk.inputs[1], pv.inputs[1]))
        heads = int(qk.attrs["heads"])
        if not q.channels == k.channels == v.channels or q.channels % heads:
            raise CExportError(f"{qk.name}: q, k, v of {q.channels}, {k.channels}, {v.channels} channels, {heads} heads")
        out = self._new_act(req, q.channels)
        M, S = req.params["M"].numpy().astype(np.int64), req.params["shift"].numpy().astype(np.int64)
        lo, hi = qrange(int(req.attrs["bits"]), bool(req.attrs["signed"]))
        d = {"heads": heads, "dk": q.channels // heads, "softmax": softmax_params(sm), "M": M, "S": S,
             "per_channel": M.size > 1, "lo": lo, "hi": hi, "lengths": sm.inputs[1], "name": qk.name,
             "q": q.name, "k": k.name, "v": v.name, "qv": None}
        if int(pv.attrs["heads"]) != heads:
            raise CExportError(f"{pv.name}: {pv.attrs['heads']} heads, matmul_qk has {heads}")
        reads = [q.name, k.name, v.name]
        if "pos" in parts:
            pos = parts["pos"]
            qv = self._src(pos.inputs[0], pos.name)
            d.update(qv=qv.name, pos=pos.params["pos"].numpy().astype(np.int8), max_len=int(pos.attrs["max_len"]),
                     Mc=int(parts["rescale_qk"].params["M"].reshape(-1)[0]),
                     Sc=int(parts["rescale_qk"].params["shift"].reshape(-1)[0]),
                     Mp=int(parts["rescale_pos"].params["M"].reshape(-1)[0]),
                     Sp=int(parts["rescale_pos"].params["shift"].reshape(-1)[0]))
            if parts["rescale_qk"].params["M"].numel() != 1 or parts["rescale_pos"].params["M"].numel() != 1:
                raise CExportError(f"{qk.name}: per-channel rescales of attention scores")
            reads.append(qv.name)
        return Step("attention", reads, out.name, d)

    # -------------------------------------------------------------- buffers
    def _plan(self) -> None:
        for step in self.steps:
            for t in step.data.get("terms", []) if step.kind == "group" else []:
                if t.kind == "ident":
                    continue
                x = self.acts[t.src]
                p, d = t.geo["padding"], t.geo["dilation"]
                x.pad = max(x.pad, p)
                x.back = max(x.back, p + (3 * d if t.kind == "dw" else 0))
        # liveness: the last step reading each buffer
        last: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            for r in step.reads:
                last[r] = i
        free: list[int] = []
        self.nslots = 0
        owner: dict[int, str] = {}
        inp = self.acts[self.p.inputs[0]]
        inp.slot, self.nslots = 0, 1
        owner[0] = inp.name
        for i, step in enumerate(self.steps):
            if step.kind in ("mask", "frames"):
                continue
            for s, n in list(owner.items()):
                if last.get(n, -1) < i and n not in step.reads:
                    free.append(s)
                    del owner[s]
            act = self.acts[step.out]
            if act.int64:
                continue
            if free:
                act.slot = free.pop(0)
            else:
                act.slot, self.nslots = self.nslots, self.nslots + 1
            owner[act.slot] = act.name
        for i, a in enumerate(self.acts.values()):
            a.index = i

    # -------------------------------------------------------------- weights
    def pack(self, blob: Blob) -> None:
        for step in self.steps:
            if step.kind == "group":
                for t in step.data["terms"]:
                    self._pack_term(t, blob)
            elif step.kind == "table":
                step.data["off"] = blob.add(step.data["table"])
            elif step.kind == "glu":
                d = step.data
                d["sig_off"], d["m_off"], d["s_off"] = blob.add(d["sig"]), blob.add(d["M"]), blob.add(d["S"])
            elif step.kind == "layernorm":
                p = step.data["params"]
                step.data["g_off"] = blob.add(np.asarray(p.gamma_q, dtype=np.int64))
                step.data["b_off"] = blob.add(np.asarray(p.beta_q, dtype=np.int64))
            elif step.kind == "attention":
                d = step.data
                d["m_off"], d["s_off"] = blob.add(d["M"]), blob.add(d["S"])
                if d["qv"] is not None:
                    d["pos_off"] = blob.add(d["pos"])

    def _pack_term(self, t: Term, blob: Blob) -> None:
        co = len(t.M)
        op_ = _cp(co)
        if t.kind == "gemm":
            w = t.w.astype(np.int8)
            _, cin_g, K = w.shape
            cpi = self.acts[t.src].cp
            full = np.zeros((op_, cpi, K), dtype=np.int8)
            full[:co, :cin_g] = w
            # packed[ob, k, c4, o, i] = w[ob*64 + o, 4*c4 + i, k]
            packed = full.reshape(op_ // 64, 64, cpi // 4, 4, K).transpose(0, 4, 2, 1, 3)
            t.taps = K
        elif t.kind == "dw":
            w = t.w.astype(np.int8)
            K = w.shape[-1]
            k4 = -(-K // 4)
            full = np.zeros((op_, k4 * 4), dtype=np.int8)
            full[:co, :K] = w[:, 0, :]
            # packed[ob, j, c, i] = w[ob*64 + c, 4j + i]
            packed = full.reshape(op_ // 64, 64, k4, 4).transpose(0, 2, 1, 3)
            t.taps = k4
        else:
            packed, t.taps = np.zeros(64, dtype=np.int8), 1
        t.w_off = blob.add(np.ascontiguousarray(packed).astype(np.int8))
        for key, vals in (("m", t.M), ("c", t.C), ("s", t.S), ("cs6", t.Cs6), ("cs7", t.Cs7)):
            arr = np.zeros(op_, dtype=np.int64)
            arr[:co] = vals
            setattr(t, f"{key}_off", blob.add(arr))
