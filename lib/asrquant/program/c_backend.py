"""The C backend: the integer program as a self-contained C99 library (``asrquant export --c``).

``export_c(program, out_dir, labels)`` writes
  model.c        the program as straight-line kernel calls (generated), buffer plan, asrq_load / asrq_run
  model.bin      packed int8 weights and int64 requantization constants (one blob, read once)
  asrq.h         the API (asrq_load, asrq_run, ...); asrq_kernels.{c,h}: the integer kernels
  main.c         a CLI: quantized input file -> greedy CTC tokens (and int64 logits on request)
  Makefile       ``make``: the CLI, libasrq.a and libasrq.so; only libc (+ OpenMP threads)
Nothing in the generated code has a float or double type (tests/test_c_runtime.py builds it
with ``-mgeneral-regs-only`` and inspects the object code). The kernels are compiled once per
kernel family (AVX-512 VNNI, AVX-VNNI, AVX2, portable C) and the library picks one when it
loads: the best this CPU runs, or ``$ASRQ_ISA``; every family gives the same integers.

Lowering (the kernels' comment has the memory layout): every activation of at most 8 bits is a
uint8 time-major buffer u = y + off (off 128 for signed values, 0 for unsigned), with padding
rows that hold a real zero. ``fast.find_groups`` gives the fusion groups (a requantize, a
rescale, or a clamp of a sum of rescaled convs: a residual block's output); each group is one
``asrq_group`` call: every conv term is computed tile by tile (dense convs as K shifted 1x1
GEMMs, depthwise convs on a 4-tap interleaved copy of their input), requantized, summed,
clamped and stored. The constant of each term folds the bias, the input offset (off times the
weight row sum) and the rounding half; the first term also the output offset:
    y_u = clamp(sum_terms ((acc_u * M + C) >> S) + off_out, lo + off_out, hi + off_out),
    C = (bias - off_in * rowsum) * M + 2^(S-1)
which is the program's requantization of the true accumulator, exactly (the offset is added after
the shift: folding it into C as off_out 2^S overflows int64 for shifts near 62, which real models
have on dead channels). Every bound is checked here with Python integers: |acc_u| < 2^31 and
|acc_u| M + |C| < 2^63. The AVX2 family accumulates w (u - gamma) instead (the input split at
gamma, program/c/asrq_kernels.c), with Cs = (bias - (off_in - gamma) rowsum) M + 2^(S-1) and the
same checks on that accumulator's interval. mask_time is done in place (padded frames set to off) when a length is
shorter than the frames; frames ops are integer expressions on the lengths.

Supported: the ConvASR op set (mask_time, frames, conv1d with groups 1 or depthwise, requantize,
rescale, add, clamp, all fused into groups), int8 weights and activations of at most 8 bits.
Anything else raises ``CExportError`` naming the op (the Conformer's ops are not lowered yet).

``CRuntime(program, threads)`` exports into a cache folder, builds libasrq.so with the system
compiler and calls it through ctypes: ``run(q, lengths=None) -> int64 logits`` like the other
backends (tests and ``asrquant bench``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..quant.quantizer import qrange
from .fast import find_groups
from .ops import Program

__all__ = ["CExportError", "export_c", "CRuntime", "write_input", "read_logits", "SOURCES"]

SOURCES = Path(__file__).with_name("c")
STATIC_FILES = ("asrq.h", "asrq_kernels.h", "asrq_kernels.c", "main.c", "Makefile")
MAGIC = b"ASRQBLOB"
INT31, INT63 = (1 << 31) - 1, (1 << 63) - 1
SPLIT_BITS = {"gemm": 6, "dw": 7}   # the AVX2 family's input split (program/c/asrq_kernels.c)
SUPPORTED = ("mask_time", "frames", "conv1d", "requantize", "rescale", "add", "clamp")


class CExportError(NotImplementedError):
    """The program uses something the C backend does not lower (the message names it)."""


def _cp(c: int) -> int:
    return -(-c // 64) * 64


@dataclass
class _Act:
    """A stored activation (uint8 buffer) or the int64 output."""
    name: str
    channels: int
    off: int = 0
    int64: bool = False
    pad: int = 0     # rows before the frames (hold off)
    back: int = 0    # rows after them
    slot: int = -1
    tvar: str = ""   # C variable holding its frame count
    index: int = 0

    @property
    def cp(self) -> int:
        return _cp(self.channels)


@dataclass
class _Term:
    conv: object
    M: list
    S: list
    kind: str = "gemm"
    w_off: int = 0
    m_off: int = 0
    c_off: int = 0
    s_off: int = 0
    cs_off: int = 0
    taps: int = 0
    gamma: int = 0
    index: int = 0    # in the model's term table


@dataclass
class _Group:
    terminal: object
    terms: list = field(default_factory=list)
    out: str = ""
    lo: int = 0
    hi: int = 0


class _Blob:
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

    def bytes(self) -> bytes:
        body = b"".join(self.parts)
        return MAGIC + struct.pack("<QQ", len(body), _checksum(body)) + b"\0" * 40 + body   # 64-byte header


def _checksum(body: bytes) -> int:
    """sum of byte * (position mod 65521 + 1), mod 2^61 - 1 (as model.c): catches a truncated or
    foreign blob."""
    a = np.frombuffer(body, dtype=np.uint8).astype(np.uint64)
    if not a.size:
        return 0
    pos = (np.arange(a.size, dtype=np.uint64) % np.uint64(65521)) + np.uint64(1)
    return int((a * pos).sum(dtype=np.uint64) % np.uint64((1 << 61) - 1))


def _ints(t, n: int) -> list[int]:
    v = [int(x) for x in t.reshape(-1).tolist()]
    return v * n if len(v) == 1 else v


def _off(v) -> int:
    return 128 if v.signed else 0


class _Lowering:
    """The analysis: storage of every value, fusion groups, buffer plan, packed weights."""

    def __init__(self, program: Program):
        self.p = program
        for op in program.ops:
            if op.kind not in SUPPORTED:
                raise CExportError(f"the C backend has no kernel for op {op.kind!r} ({op.name}); it lowers "
                                   f"{', '.join(SUPPORTED)} (ConvASR programs)")
        groups, absorbed = find_groups(program)
        self.cons = program.consumers()
        self.alias: dict[str, str] = {}       # masked value -> the buffer it is masked in
        self.acts: dict[str, _Act] = {}
        self.lengths = {program.inputs[1]: "L0"}
        self.steps = []                       # ("group", _Group) | ("mask", act, lengths var) | ("frames", op)
        inp = program.inputs[0]
        self.acts[inp] = _Act(inp, self._input_channels(inp), off=_off(program.values[inp]), tvar="T0")
        self._check_act(inp)
        for op in program.ops:
            if id(op) in groups:
                term, convs = groups[id(op)]
                self.steps.append(("group", self._group(term, convs)))
            elif id(op) in absorbed:
                continue
            elif op.kind == "mask_time":
                x, lengths = op.inputs
                root = self.root(x)
                if len(self.cons.get(x, [])) != 1 or x in program.outputs:
                    raise CExportError(f"{op.name}: the unmasked value {x!r} has other readers (in-place mask)")
                self.alias[op.outputs[0]] = root
                self.steps.append(("mask", root, lengths))
            elif op.kind == "frames":
                self.lengths[op.outputs[0]] = f"L{len(self.lengths)}"
                self.steps.append(("frames", op))
            else:
                raise CExportError(f"{op.name}: a {op.kind} op outside a conv group (the C backend fuses every "
                                   "requantize / rescale / add / clamp into the conv that feeds it)")
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
        raise CExportError(f"the program input {name!r} is not read by a conv1d")

    # -------------------------------------------------------------- groups
    def _group(self, terminal, convs) -> _Group:
        out = terminal.outputs[0]
        g = _Group(terminal, out=out)
        first_w = convs[0][0].params["weight"]
        cout = int(first_w.shape[0])
        if terminal.kind == "rescale":
            if out not in self.p.outputs:
                raise CExportError(f"{terminal.name}: an int64 rescale that is not the program output")
            act = _Act(out, cout, int64=True)
        else:
            self._check_act(out)
            v = self.p.values[out]
            zo = _off(v)
            lo, hi = qrange(int(terminal.attrs["bits"]), bool(terminal.attrs["signed"]))
            g.lo, g.hi = lo + zo, hi + zo
            act = _Act(out, cout, off=zo)
        for j, (conv, M, S) in enumerate(convs):
            w = conv.params["weight"]
            co, cin_g, K = (int(s) for s in w.shape)
            a = conv.attrs
            groups = int(a["groups"])
            src = self.root(conv.inputs[0])
            if src not in self.acts or self.acts[src].int64:
                raise CExportError(f"{conv.name}: its input {conv.inputs[0]!r} is not a stored activation")
            xin = self.acts[src]
            if co != cout:
                raise CExportError(f"{terminal.name}: terms with different channel counts")
            if int(w.min()) < -128 or int(w.max()) > 127:
                raise CExportError(f"{conv.name}: weights outside int8")
            if groups == 1:
                kind = "gemm"
            elif groups == co and cin_g == 1 and xin.channels == co:
                kind = "dw"
            else:
                raise CExportError(f"{conv.name}: grouped conv with {groups} groups (only 1 or depthwise)")
            if cin_g * groups != xin.channels:
                raise CExportError(f"{conv.name}: {cin_g * groups} input channels, its input has {xin.channels}")
            t = _Term(conv, _ints(M, co), _ints(S, co), kind=kind)
            t.src = src
            g.terms.append(t)
        for t in g.terms:
            self._constants(t, self.acts[t.src].off)
        self.acts[out] = act
        return g

    def _constants(self, t: _Term, off_in: int):
        w = t.conv.params["weight"].numpy().astype(np.int64)
        co = int(w.shape[0])
        flat = w.reshape(co, -1)
        rowsum = [int(v) for v in flat.sum(1)]
        possum = [int(v) for v in np.clip(flat, 0, None).sum(1)]
        bias = t.conv.params.get("bias")
        bias = _ints(bias, co) if bias is not None else [0] * co
        # the AVX2 family splits u at gamma (program/c/asrq_kernels.c): its accumulator is sum w (u - gamma),
        # gamma centering the window of 2^b values on y = 0 (signed) or starting it at 0 (unsigned)
        t.gamma = off_in - (1 << (SPLIT_BITS[t.kind] - 1)) if off_in else 0
        C, Cs = [], []
        for o in range(co):
            m, s = t.M[o], t.S[o]
            if not 0 <= s <= 62 or m < 0:
                raise CExportError(f"{t.conv.name}: shift {s} / multiplier {m} outside 0..62 / >= 0")
            # acc_u = sum w u with u in [0, 255]: the exact interval of the stored accumulator
            lo, hi = 255 * (rowsum[o] - possum[o]), 255 * possum[o]
            if lo < -INT31 - 1 or hi > INT31:
                raise CExportError(f"{t.conv.name}: accumulator range [{lo}, {hi}] exceeds int32")
            c = (bias[o] - off_in * rowsum[o]) * m + ((1 << s) >> 1)
            if max(abs(lo * m + c), abs(hi * m + c)) > INT63:
                raise CExportError(f"{t.conv.name}: acc * M + C can overflow int64 (M = {m})")
            C.append(c)
            # every partial sum of w (u - gamma) lies in [lo_s, hi_s] (each term's range holds 0)
            negsum = possum[o] - rowsum[o]
            lo_s = -(255 - t.gamma) * negsum - t.gamma * possum[o]
            hi_s = (255 - t.gamma) * possum[o] + t.gamma * negsum
            if lo_s < -INT31 - 1 or hi_s > INT31:
                raise CExportError(f"{t.conv.name}: accumulator range [{lo_s}, {hi_s}] of the split input "
                                   "exceeds int32")
            cs = (bias[o] - (off_in - t.gamma) * rowsum[o]) * m + ((1 << s) >> 1)
            if max(abs(lo_s * m + cs), abs(hi_s * m + cs)) > INT63:
                raise CExportError(f"{t.conv.name}: acc * M + C can overflow int64 (M = {m})")
            Cs.append(cs)
        t.C, t.Cs = C, Cs

    # -------------------------------------------------------------- buffers
    def _plan(self) -> None:
        for step in self.steps:
            if step[0] != "group":
                continue
            for t in step[1].terms:
                a = t.conv.attrs
                x = self.acts[t.src]
                p, d = int(a["padding"]), int(a["dilation"])
                x.pad = max(x.pad, p)
                x.back = max(x.back, p + (3 * d if t.kind == "dw" else 0))
        # liveness: the last step reading each buffer
        last: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            if step[0] == "group":
                for t in step[1].terms:
                    last[t.src] = i
            elif step[0] == "mask":
                last[step[1]] = max(last.get(step[1], i), i)
        free: list[int] = []
        self.nslots = 0
        owner: dict[int, str] = {}
        inp = self.acts[self.p.inputs[0]]
        inp.slot, self.nslots = 0, 1
        owner[0] = inp.name
        for i, step in enumerate(self.steps):
            if step[0] != "group":
                continue
            for s, n in list(owner.items()):
                if last.get(n, -1) < i:
                    free.append(s)
                    del owner[s]
            act = self.acts[step[1].out]
            if act.int64:
                continue
            if free:
                act.slot = free.pop(0)
            else:
                act.slot, self.nslots = self.nslots, self.nslots + 1
            owner[act.slot] = act.name
        for i, a in enumerate(self.acts.values()):
            a.index = i
            a.tvar = a.tvar or f"T{i}"

    # -------------------------------------------------------------- weights
    def pack(self, blob: _Blob) -> None:
        for step in self.steps:
            if step[0] != "group":
                continue
            g = step[1]
            for t in g.terms:
                w = t.conv.params["weight"].numpy().astype(np.int8)
                co, cin_g, K = w.shape
                op_ = _cp(co)
                if t.kind == "gemm":
                    cpi = self.acts[t.src].cp
                    packed = np.zeros((op_ // 64, K, cpi // 4, 64, 4), dtype=np.int8)
                    full = np.zeros((op_, cpi, K), dtype=np.int8)
                    full[:co, :cin_g] = w
                    # packed[ob, k, c4, o, i] = w[ob*64 + o, 4*c4 + i, k]
                    packed[:] = full.reshape(op_ // 64, 64, cpi // 4, 4, K).transpose(0, 4, 2, 1, 3)
                    t.taps = K
                else:
                    k4 = -(-K // 4)
                    full = np.zeros((op_, k4 * 4), dtype=np.int8)
                    full[:co, :K] = w[:, 0, :]
                    # packed[ob, j, c, i] = w[ob*64 + c, 4j + i]
                    packed = full.reshape(op_ // 64, 64, k4, 4).transpose(0, 2, 1, 3)
                    t.taps = k4
                t.w_off = blob.add(packed.astype(np.int8))
                for key, vals in (("m", t.M), ("c", t.C), ("s", t.S), ("cs", t.Cs)):
                    arr = np.zeros(op_, dtype=np.int64)
                    arr[:co] = vals
                    setattr(t, f"{key}_off", blob.add(arr))


# ------------------------------------------------------------------ code generation

def _c_string(s: str) -> str:
    out = []
    for ch in s.encode("utf-8"):
        c = chr(ch)
        out.append(c if 32 <= ch < 127 and c not in '"\\?' else f"\\{ch:03o}")
    return '"' + "".join(out) + '"'


def _conv_frames(tvar: str, a) -> str:
    K, s, p, d = (int(a[k]) for k in ("kernel", "stride", "padding", "dilation"))
    return f"(({tvar}) + {2 * p - d * (K - 1) - 1}) / {s} + 1"


def _term_rows_expr(t: _Term, src: _Act, out: _Act) -> tuple[str, ...]:
    """C expressions of (T_out, stride, row_off, taps, dil) of a term, for the scratch sizes."""
    a = t.conv.attrs
    return (f"T[{out.index}]", str(int(a["stride"])), str(src.pad - int(a["padding"])), str(t.taps),
            str(int(a["dilation"])))


def _generate(lw: _Lowering, labels, blob_size: int, checksum: int) -> str:
    p = lw.p
    acts = list(lw.acts.values())
    terms = [t for step in lw.steps if step[0] == "group" for t in step[1].terms]
    for i, t in enumerate(terms):
        t.index = i
    L = []
    emit = L.append
    emit("/* Generated by asrquant (program/c_backend.py): the integer program of one model as straight-line")
    emit(" * kernel calls. Integer arithmetic only. Do not edit; re-export instead. */")
    emit('#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n')
    emit('#ifdef _OPENMP\n#include <omp.h>\n#endif\n')
    emit('#include "asrq.h"\n#include "asrq_kernels.h"\n')
    emit(f"#define NACT {len(acts)}\n#define NSLOT {lw.nslots}\n#define NTERMS {max(len(terms), 1)}")
    emit(f"#define FEATURES {lw.acts[p.inputs[0]].channels}")
    emit(f"#define CLASSES {lw.out.channels}\n#define BLOB_SIZE {blob_size}ULL\n#define BLOB_SUM {checksum}ULL\n")
    labels = list(labels or [])
    emit(f"static const char *const labels[] = {{{', '.join(_c_string(s) for s in labels) or '0'}}};")
    emit(f"static const long n_labels = {len(labels)};\n")
    emit("/* per activation: buffer slot (-1: the int64 output), padded channels, rows before / after */")
    emit(f"static const int act_slot[NACT] = {{{', '.join(str(a.slot) for a in acts)}}};")
    emit(f"static const long act_cp[NACT] = {{{', '.join(str(a.cp) for a in acts)}}};")
    emit(f"static const long act_pad[NACT] = {{{', '.join(str(a.pad) for a in acts)}}};")
    emit(f"static const long act_back[NACT] = {{{', '.join(str(a.back) for a in acts)}}};\n")
    emit("/* the conv terms: kind, input slot, input row bytes, stride, dilation, row offset, taps, cin4, output")
    emit(" * blocks, gamma, blob offsets of weights, M, C, S, Cs (asrq_kernels.h) */")
    emit("static const struct { int kind, slot; long cp_in, stride, dil, row_off, taps, cin4, oblocks, gamma;")
    emit("                     unsigned long long w, m, c, s, cs; } term_desc[NTERMS] = {")
    for t in terms:
        a = t.conv.attrs
        src = lw.acts[t.src]
        kind = "ASRQ_DW" if t.kind == "dw" else "ASRQ_GEMM"
        oblocks = _cp(int(t.conv.params["weight"].shape[0])) // 64
        emit(f"    {{{kind}, {src.slot}, {src.cp}, {int(a['stride'])}, {int(a['dilation'])}, "
             f"{src.pad - int(a['padding'])}, {t.taps}, {src.cp // 4}, {oblocks}, {t.gamma}, "
             f"{t.w_off}, {t.m_off}, {t.c_off}, {t.s_off}, {t.cs_off}}},  /* {t.conv.name} */")
    if not terms:
        emit("    {0}")
    emit("};\n")
    emit("""struct asrq_model {
    uint8_t *blob_mem, *blob;          /* the weights blob, 64-byte aligned */
    uint8_t *slot_mem[NSLOT], *slot[NSLOT];
    uint8_t *gx_mem, *gx;              /* scratch: what the kernel family prepares from a group's inputs */
    int64_t *out64;
    asrq_term terms[NTERMS];
    long max_frames;
    int threads, adaptive;
};

static char last_error[512];
const char *asrq_last_error(void) { return last_error; }
long asrq_features(void) { return FEATURES; }
long asrq_classes(void) { return CLASSES; }
const char *asrq_label(long i) { return (i >= 0 && i < n_labels) ? labels[i] : NULL; }
const char *asrq_error(int code) {
    switch (code) {
    case ASRQ_OK: return "ok";
    case ASRQ_ERR_SHORT: return "input too short for the model";
    case ASRQ_ERR_TOO_LONG: return "input longer than the max_frames given to asrq_load";
    case ASRQ_ERR_LENGTH: return "length outside 1..frames";
    default: return "unknown error";
    }
}

/* Threads for one run. OpenMP's static split waits at every group's barrier for a thread the OS
 * has preempted; when the machine runs more than twice as many tasks as it has cores (the 1-minute
 * load average of /proc/loadavg, integer part), a run on one thread is faster than waiting, so the
 * run uses one (m->adaptive, on by default; asrq_set_adaptive(m, 0) keeps the requested count). */
static int run_threads(const asrq_model *m) {
    int n = m->threads;
#ifdef _OPENMP
    if (n > 1 && m->adaptive) {
        FILE *f = fopen("/proc/loadavg", "r");
        long load = -1;
        if (f) {
            if (fscanf(f, "%ld", &load) != 1) load = -1;
            fclose(f);
        }
        if (load >= 2L * omp_get_num_procs()) n = 1;
    }
#endif
    return n;
}

void asrq_set_adaptive(asrq_model *m, int on) { m->adaptive = on; }

/* floor division (C's / truncates toward zero) */
static long fdiv(long a, long b) { long q = a / b; return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q; }
static long lmin(long a, long b) { return a < b ? a : b; }

static uint8_t *align64(uint8_t *p) { return p + ((64 - ((uintptr_t)p & 63)) & 63); }
""")
    # frame counts of every activation, from the input's frames
    emit("/* T[i]: frames of activation i for an input of T0 frames; the largest group's scratch */")
    emit("static int shapes(long *T, long *gx_bytes) {   /* T[0]: the input frames */")
    emit("    long gneed = 0, g;")
    for step in lw.steps:
        if step[0] == "group":
            g = step[1]
            out = lw.acts[g.out]
            emit("    g = 0;")
            for j, t in enumerate(g.terms):
                a = t.conv.attrs
                K = int(t.conv.params["weight"].shape[-1])
                src = lw.acts[t.src]
                expr = _conv_frames(f"T[{src.index}]", {"kernel": K, **a})
                if j == 0:
                    emit(f"    T[{out.index}] = {expr};")
                    emit(f"    if (T[{out.index}] < 1) return ASRQ_ERR_SHORT;")
                else:
                    emit(f"    if ({expr} != T[{out.index}]) return ASRQ_ERR_SHORT;")
                geo = ", ".join(_term_rows_expr(t, src, out))
                kind = "ASRQ_DW" if t.kind == "dw" else "ASRQ_GEMM"
                emit(f"    g += asrq_term_scratch({kind}, {geo}, {src.cp});")
            emit("    if (g > gneed) gneed = g;")
    emit("    *gx_bytes = gneed;\n    return 0;\n}\n")
    emit("long asrq_out_frames(long frames) {\n    long T[NACT], gx;\n    T[0] = frames;\n"
         f"    return shapes(T, &gx) ? 0 : T[{lw.out.index}];\n}}\n")
    emit("""void asrq_free(asrq_model *m) {
    if (!m) return;
    for (int i = 0; i < NTERMS; ++i) asrq_unpack_term(&m->terms[i]);
    for (int s = 0; s < NSLOT; ++s) free(m->slot_mem[s]);
    free(m->gx_mem);
    free(m->out64);
    free(m->blob_mem);
    free(m);
}

void asrq_set_threads(asrq_model *m, int threads) { m->threads = threads > 0 ? threads : 1; }

/* sum of byte * (position mod 65521 + 1), reduced once at the end: each term < 2^24, so the
 * uint64 sum is exact for blobs under 2^40 bytes */
static uint64_t checksum(const uint8_t *b, uint64_t n) {
    uint64_t s = 0, w = 1;
    for (uint64_t i = 0; i < n; ++i) {
        s += (uint64_t)b[i] * w;
        w = w == 65521 ? 1 : w + 1;
    }
    return s % ((1ULL << 61) - 1);
}

asrq_model *asrq_load(const char *path, long max_frames, int threads) {
    asrq_model *m = calloc(1, sizeof(asrq_model));
    unsigned char head[64];
    FILE *f = NULL;
    long T[NACT], gx = 0;
    if (!m) { snprintf(last_error, sizeof last_error, "out of memory"); return NULL; }
    if (asrq_select_isa(last_error, sizeof last_error)) { free(m); return NULL; }
    m->max_frames = max_frames;
    m->adaptive = 1;
    asrq_set_threads(m, threads);
    T[0] = max_frames;
    if (max_frames < 1 || shapes(T, &gx)) {
        snprintf(last_error, sizeof last_error, "max_frames %ld: %s", max_frames, asrq_error(ASRQ_ERR_SHORT));
        goto fail;
    }
    f = fopen(path, "rb");
    if (!f) { snprintf(last_error, sizeof last_error, "cannot open %s", path); goto fail; }
    uint64_t size = 0, sum = 0;
    if (fread(head, 1, 64, f) != 64 || memcmp(head, "ASRQBLOB", 8)) goto bad;
    for (int k = 7; k >= 0; --k) { size = (size << 8) | head[8 + k]; sum = (sum << 8) | head[16 + k]; }
    if (size != BLOB_SIZE || sum != BLOB_SUM) goto bad;
    m->blob_mem = malloc(BLOB_SIZE + 64);
    if (!m->blob_mem) { snprintf(last_error, sizeof last_error, "out of memory"); goto fail; }
    m->blob = align64(m->blob_mem);
    if (fread(m->blob, 1, BLOB_SIZE, f) != BLOB_SIZE || checksum(m->blob, BLOB_SIZE) != BLOB_SUM) goto bad;
    fclose(f);
    f = NULL;
    /* buffers, once: each slot as large as the largest activation it holds */
    for (int s = 0; s < NSLOT; ++s) {
        long bytes = 64;
        for (int i = 0; i < NACT; ++i) {
            long b = (T[i] + act_pad[i] + act_back[i]) * act_cp[i];
            if (act_slot[i] == s && b > bytes) bytes = b;
        }
        m->slot_mem[s] = malloc((size_t)bytes + 128);
        if (!m->slot_mem[s]) { snprintf(last_error, sizeof last_error, "out of memory"); goto fail; }
        m->slot[s] = align64(m->slot_mem[s]);
    }
    m->gx_mem = malloc((size_t)gx + 128);
""")
    emit(f"    m->out64 = malloc(sizeof(int64_t) * (size_t)(T[{lw.out.index}] * {lw.out.cp}) + 64);")
    emit("""    if (!m->gx_mem || !m->out64) { snprintf(last_error, sizeof last_error, "out of memory"); goto fail; }
    m->gx = align64(m->gx_mem);
    for (int i = 0; i < NTERMS && term_desc[i].oblocks; ++i) {
        asrq_term *t = &m->terms[i];
        t->kind = term_desc[i].kind;
        t->x = m->slot[term_desc[i].slot];
        t->cp_in = term_desc[i].cp_in;
        t->stride = term_desc[i].stride;
        t->dil = term_desc[i].dil;
        t->row_off = term_desc[i].row_off;
        t->taps = term_desc[i].taps;
        t->cin4 = term_desc[i].cin4;
        t->oblocks = term_desc[i].oblocks;
        t->gamma = term_desc[i].gamma;
        t->w = (const int8_t *)(m->blob + term_desc[i].w);
        t->M = (const int64_t *)(m->blob + term_desc[i].m);
        t->C = (const int64_t *)(m->blob + term_desc[i].c);
        t->S = (const int64_t *)(m->blob + term_desc[i].s);
        t->Cs = (const int64_t *)(m->blob + term_desc[i].cs);
        if (asrq_pack_term(t)) { snprintf(last_error, sizeof last_error, "out of memory"); goto fail; }
    }
    return m;
bad:
    snprintf(last_error, sizeof last_error, "%s is not the weights blob of this model (exported with it: "
             "model.bin, %llu bytes)", path, (unsigned long long)BLOB_SIZE);
fail:
    if (f) fclose(f);
    asrq_free(m);
    return NULL;
}
""")
    # ---------------------------------------------------------------- asrq_run
    inp = lw.acts[p.inputs[0]]
    emit("int asrq_run(asrq_model *m, const int8_t *q, long frames, long length, int64_t *logits, long *out_length) {")
    emit("    long T[NACT], gx_bytes;")
    emit("    const int nt = run_threads(m);")
    emit("    const long T0 = frames, L0 = length;")
    emit("    if (frames > m->max_frames) return ASRQ_ERR_TOO_LONG;")
    emit("    if (length < 1 || length > frames) return ASRQ_ERR_LENGTH;")
    emit("    T[0] = frames;")
    emit("    { int rc = shapes(T, &gx_bytes); if (rc) return rc; }")
    for n, var in lw.lengths.items():
        if var != "L0":
            emit(f"    long {var};")
    emit(f"    /* the input: int8 [F][T] -> uint8 rows (+{inp.off}), padding rows hold the offset */")
    emit(f"    {{ uint8_t *x = m->slot[{inp.slot}];")
    emit(f"      asrq_fill_rows(x, {inp.cp}, 0, T0 + {inp.pad + inp.back}, {inp.off});")
    emit(f"      for (long t = 0; t < T0; ++t) for (long c = 0; c < FEATURES; ++c)")
    emit(f"          x[({inp.pad} + t) * {inp.cp} + c] = (uint8_t)((int)q[c * T0 + t] + {inp.off}); }}")
    for step in lw.steps:
        if step[0] == "frames":
            op = step[1]
            a = op.attrs
            K, s, pd, d = (int(a[k]) for k in ("kernel", "stride", "padding", "dilation"))
            emit(f"    {lw.lengths[op.outputs[0]]} = fdiv({lw.lengths[op.inputs[0]]} + {2 * pd - d * (K - 1) - 1}, {s}) + 1;"
                 f"  /* {op.name} */")
        elif step[0] == "mask":
            act = lw.acts[step[1]]
            lv = lw.lengths[step[2]]
            emit(f"    if ({lv} < T[{act.index}]) asrq_fill_rows(m->slot[{act.slot}], {act.cp}, {act.pad} + "
                 f"({lv} < 0 ? 0 : {lv}), {act.pad} + T[{act.index}], {act.off});  /* mask {act.name} */")
        else:
            g = step[1]
            out = lw.acts[g.out]
            emit(f"    /* {g.terminal.name}: {' + '.join(t.conv.name + ' (' + t.kind + ')' for t in g.terms)} */")
            first, n = g.terms[0].index, len(g.terms)
            if out.int64:
                emit(f"    asrq_group(m->terms + {first}, {n}, T[{out.index}], {out.cp // 64}, NULL, m->out64, "
                     f"{out.cp}, 0, 0, 0, 0, nt, m->gx);")
            else:
                emit(f"    asrq_group(m->terms + {first}, {n}, T[{out.index}], {out.cp // 64}, m->slot[{out.slot}], NULL, "
                     f"{out.cp}, {out.pad}, {out.off}, {g.lo}, {g.hi}, nt, m->gx);")
                emit(f"    asrq_fill_rows(m->slot[{out.slot}], {out.cp}, 0, {out.pad}, {out.off});")
                emit(f"    asrq_fill_rows(m->slot[{out.slot}], {out.cp}, {out.pad} + T[{out.index}], "
                     f"{out.pad} + T[{out.index}] + {out.back}, {out.off});")
    o = lw.out
    emit(f"    /* the logits: [T'][Cp] -> [classes][T'] */")
    emit(f"    {{ const long To = T[{o.index}];")
    if o.int64:
        emit(f"      for (long t = 0; t < To; ++t) for (long c = 0; c < CLASSES; ++c) logits[c * To + t] = m->out64[t * {o.cp} + c]; }}")
    else:
        emit(f"      const uint8_t *y = m->slot[{o.slot}] + {o.pad} * {o.cp};")
        emit(f"      for (long t = 0; t < To; ++t) for (long c = 0; c < CLASSES; ++c) logits[c * To + t] = (int64_t)y[t * {o.cp} + c] - {o.off}; }}")
    emit(f"    if (out_length) *out_length = lmin({lw.lengths[p.outputs[1]]}, T[{o.index}]);")
    emit("    return ASRQ_OK;\n}")
    return "\n".join(L) + "\n"


def export_c(program: Program, out_dir, labels=None) -> Path:
    """Write the C library of `program` into out_dir (module doc); returns the folder."""
    lw = _Lowering(program)
    blob = _Blob()
    lw.pack(blob)
    data = blob.bytes()
    body = data[64:]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in STATIC_FILES:
        shutil.copyfile(SOURCES / name, out / name)
    (out / "model.c").write_text(_generate(lw, labels, len(body), _checksum(body)))
    tmp = out / "model.bin.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, out / "model.bin")
    return out


# ------------------------------------------------------------------ files of the CLI

def write_input(path, q, length: int | None = None) -> Path:
    """An int8 [F, T] array as the CLI's input file (ASQ8 header: F, T, valid frames)."""
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"write_input takes one [features, frames] array, got shape {q.shape}")
    F, T = q.shape
    L = T if length is None else int(length)
    Path(path).write_bytes(b"ASQ8" + struct.pack("<iii", F, T, L) + q.astype(np.int8).tobytes())
    return Path(path)


def read_logits(path) -> tuple[np.ndarray, int]:
    """(int64 logits [classes, frames], valid frames) from the CLI's --logits file."""
    b = Path(path).read_bytes()
    if b[:4] != b"ASL8":
        raise ValueError(f"{path}: not an asrq logits file")
    C, T, L = struct.unpack("<iii", b[4:16])
    return np.frombuffer(b[16:], dtype="<i8").reshape(C, T).astype(np.int64), L


# ------------------------------------------------------------------ in-process runner (tests, bench)

def _cache_root() -> Path:
    return Path(os.environ.get("ASRQUANT_NATIVE_CACHE", Path.home() / ".cache" / "asrquant")) / "c_runtime"


def build(out_dir, cflags: str | None = None, target: str = "libasrq.so") -> Path:
    """make the exported folder (CC / CFLAGS from the environment unless cflags is given)."""
    if shutil.which(os.environ.get("CC", "cc")) is None or shutil.which("make") is None:
        raise RuntimeError("the C runtime needs a C compiler (cc or $CC) and make")
    cmd = ["make", "-s", "-C", str(out_dir), target]
    if cflags is not None:
        cmd.append(f"CFLAGS={cflags}")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"building the C runtime in {out_dir} failed:\n{r.stderr.strip()[-2000:]}")
    return Path(out_dir) / target


class CRuntime:
    """The exported C library, built here and called through ctypes: ``run(q, lengths=None)``."""

    name = "c-int8"

    def __init__(self, program: Program, threads: int | None = 1, max_frames: int = 4096, out_dir=None,
                 cflags: str | None = None):
        desc_hash = self._hash(program, cflags)
        self.dir = Path(out_dir) if out_dir else _cache_root() / desc_hash
        lib = self.dir / "libasrq.so"
        if out_dir and not lib.is_file():
            export_c(program, self.dir)
            build(self.dir, cflags)
        elif not lib.is_file():   # the cache: built aside, then renamed (a concurrent build never shows half)
            tmp = self.dir.with_name(f"{self.dir.name}.tmp{os.getpid()}")
            export_c(program, tmp)
            build(tmp, cflags)
            try:
                os.replace(tmp, self.dir)
            except OSError:       # another process got there first
                shutil.rmtree(tmp, ignore_errors=True)
        self.lib = ctypes.CDLL(str(lib))
        L = self.lib
        L.asrq_load.restype = ctypes.c_void_p
        L.asrq_load.argtypes = [ctypes.c_char_p, ctypes.c_long, ctypes.c_int]
        L.asrq_run.restype = ctypes.c_int
        L.asrq_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                               ctypes.POINTER(ctypes.c_long)]
        L.asrq_free.argtypes = [ctypes.c_void_p]
        L.asrq_set_threads.argtypes = [ctypes.c_void_p, ctypes.c_int]
        L.asrq_out_frames.restype = ctypes.c_long
        L.asrq_out_frames.argtypes = [ctypes.c_long]
        L.asrq_classes.restype = ctypes.c_long
        L.asrq_error.restype = ctypes.c_char_p
        L.asrq_last_error.restype = ctypes.c_char_p
        L.asrq_isa.restype = ctypes.c_char_p
        self.threads = threads or 1
        self.max_frames = max_frames
        self.handle = L.asrq_load(str(self.dir / "model.bin").encode(), max_frames, self.threads)
        if not self.handle:
            raise RuntimeError(f"asrq_load: {L.asrq_last_error().decode()}")
        self.isa = L.asrq_isa().decode()   # the kernel family asrq_load chose (ASRQ_ISA, else the best here)

    @staticmethod
    def _hash(program: Program, cflags) -> str:
        desc, tensors = program.to_state()
        h = hashlib.sha256(repr(desc).encode())
        for k in sorted(tensors):
            h.update(k.encode())
            h.update(tensors[k].contiguous().numpy().tobytes())
        for name in STATIC_FILES + ("../c_backend.py",):
            h.update((SOURCES / name).read_bytes())
        h.update(repr((cflags, os.environ.get("CC"), os.environ.get("CFLAGS"))).encode())
        return h.hexdigest()[:16]

    def __del__(self):
        if getattr(self, "handle", None):
            self.lib.asrq_free(self.handle)
            self.handle = None

    def run_with_lengths(self, q, lengths=None):
        q = np.asarray(q)
        if q.dtype != np.int8:
            if q.dtype.kind not in "iu":
                raise TypeError(f"the integer program takes an integer input, got {q.dtype}")
            q = q.astype(np.int8)
        B, F, T = q.shape
        if T > self.max_frames:   # buffers for longer inputs: load again (asrq_run itself never allocates)
            self.lib.asrq_free(self.handle)
            self.handle, self.max_frames = None, T
            self.handle = self.lib.asrq_load(str(self.dir / "model.bin").encode(), T, self.threads)
            if not self.handle:
                raise RuntimeError(f"asrq_load: {self.lib.asrq_last_error().decode()}")
        lens = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64).reshape(-1)
        To = self.lib.asrq_out_frames(T)
        if To < 1:
            raise ValueError(f"{T} frames are too few for this model")
        C = self.lib.asrq_classes()
        out = np.empty((B, C, To), dtype=np.int64)
        out_len = np.empty(B, dtype=np.int64)
        ol = ctypes.c_long()
        for b in range(B):
            x = np.ascontiguousarray(q[b])
            rc = self.lib.asrq_run(self.handle, x.ctypes.data, T, int(lens[b]), out[b].ctypes.data, ctypes.byref(ol))
            if rc:
                raise ValueError(f"asrq_run: {self.lib.asrq_error(rc).decode()}")
            out_len[b] = ol.value
        return out, out_len

    def run(self, q, lengths=None) -> np.ndarray:
        return self.run_with_lengths(q, lengths)[0]


def cmd_export_c(args) -> int:
    """``asrquant export Q --c DIR``: write the C library of Q's program (module doc)."""
    from ..convert import load_quantized

    qmodel = load_quantized(args.model)
    try:
        out = export_c(qmodel.program, args.c, labels=getattr(qmodel, "labels", None))
    except CExportError as e:
        raise CExportError(f"{args.model}: {e}") from None
    size = (out / "model.bin").stat().st_size / 2**20
    print(f"C library -> {out} (model.c, model.bin {size:.1f} MiB, asrq.h, main.c, Makefile): make -C {out}")
    return 0
