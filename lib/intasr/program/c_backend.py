"""The C backend: the integer program as a self-contained C99 library (``intasr export --c``).

``export_c(program, out_dir, labels)`` writes
  model.c        the program as straight-line kernel calls (generated), buffer plan, asrq_load / asrq_run
  model.bin      a 64-byte header (ASRQBLOB, size, checksum, SHA-256 of the body: asrq_load takes that blob
                 alone), then packed int8 weights, int64 constants and tables (one blob, read once)
  asrq.h         the API (asrq_load, asrq_run, ...); asrq_kernels.{c,h}: the conv kernels, one build per
                 kernel family; asrq_ops.{c,h}: LayerNorm, GLU, tables, attention
  main.c         a CLI: quantized input file -> greedy CTC tokens (and int64 logits on request)
  Makefile       ``make``: the CLI, libasrq.a and libasrq.so; only libc (+ OpenMP threads)
Nothing in the generated code has a float or double type (tests/test_c_runtime.py builds it
with ``-mgeneral-regs-only`` and inspects the object code). The conv kernels are compiled once per
kernel family (AVX-512 VNNI, AVX-VNNI, AVX2, portable C) and the library picks one when it loads:
the best this CPU runs, or ``$ASRQ_ISA``; every family gives the same integers.

What is lowered and how, and every bound the export checks: ``program/c_lower.py``. Here: the code
generation (one kernel call per step, buffers planned once, frame counts as integer expressions of
the input's) and the runners.

``CRuntime(program, threads)`` exports into a cache folder, builds libasrq.so with the system
compiler and calls it through ctypes: ``run(q, lengths=None) -> int64 logits`` like the other
backends (tests and ``intasr bench``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

from .c_lower import MAGIC, Act, Blob, CExportError, Lowering, Step, checksum
from .ops import Program

__all__ = ["CExportError", "export_c", "CRuntime", "write_input", "read_logits", "SOURCES", "build"]

SOURCES = Path(__file__).with_name("c")
STATIC_FILES = ("asrq.h", "asrq_family.h", "asrq_kernels.h", "asrq_kernels.c", "asrq_ops.h", "asrq_ops.c", "main.c",
                "Makefile")
KIND = {"gemm": "ASRQ_GEMM", "dw": "ASRQ_DW", "ident": "ASRQ_IDENT"}


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


STATIC = r"""
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
    case ASRQ_ERR_POSITIONS: return "more frames than the model's relative positions (pos_emb_max_len)";
    default: return "unknown error";
    }
}

/* Threads for one run (at most the count the scratch memory was planned for). OpenMP's static
 * split waits at every group's barrier for a thread the OS has preempted; when the machine runs
 * more than twice as many tasks as it has cores (the 1-minute load average of /proc/loadavg,
 * integer part), a run on one thread is faster than waiting, so the run uses one (m->adaptive, on
 * by default; asrq_set_adaptive(m, 0) keeps the requested count). */
static int run_threads(const asrq_model *m) {
    int n = m->threads < m->nt_max ? m->threads : m->nt_max;
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
void asrq_set_threads(asrq_model *m, int threads) { m->threads = threads > 0 ? threads : 1; }

/* floor division (C's / truncates toward zero) */
static long fdiv(long a, long b) { long q = a / b; return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q; }
static long lmin(long a, long b) { return a < b ? a : b; }

static uint8_t *align64(uint8_t *p) { return p + ((64 - ((uintptr_t)p & 63)) & 63); }

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

void asrq_free(asrq_model *m) {
    if (!m) return;
    for (int i = 0; i < NTERMS; ++i) asrq_unpack_term(&m->terms[i]);
    for (int s = 0; s < NSLOT; ++s) free(m->slot_mem[s]);
    free(m->gx_mem);
    free(m->out64);
    free(m->blob_mem);
    free(m);
}
"""

LOAD = r"""
/* SHA-256 (FIPS 180-4) of the weights blob: asrq_load takes only the very blob this model.c was
 * exported with (its digest is compiled in below). The position-weighted checksum catches a
 * truncated or foreign file; a hostile one can be made to match it (three bytes changed by
 * +d, -2d, +d keep it), and its constants (shifts, multipliers, tables) would then reach the
 * kernels, whose bounds the export proved for the exported values only. */
static const unsigned char blob_sha256[32] = {BLOB_SHA256_BYTES};
static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
#define SHA_ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 16; ++i)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; ++i)
        w[i] = w[i - 16] + (SHA_ROR(w[i - 15], 7) ^ SHA_ROR(w[i - 15], 18) ^ (w[i - 15] >> 3)) + w[i - 7] +
               (SHA_ROR(w[i - 2], 17) ^ SHA_ROR(w[i - 2], 19) ^ (w[i - 2] >> 10));
    for (int i = 0; i < 64; ++i) {
        uint32_t t1 = k + (SHA_ROR(e, 6) ^ SHA_ROR(e, 11) ^ SHA_ROR(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        uint32_t t2 = (SHA_ROR(a, 2) ^ SHA_ROR(a, 13) ^ SHA_ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}
static int blob_digest_ok(const unsigned char *p, uint64_t n) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    unsigned char tail[128] = {0}, out[32];
    uint64_t i = 0, r;
    for (; i + 64 <= n; i += 64) sha256_block(h, p + i);
    r = n - i;
    memcpy(tail, p + i, (size_t)r);
    tail[r] = 0x80;
    const uint64_t len = r < 56 ? 64 : 128, bits = n * 8;
    for (int j = 0; j < 8; ++j) tail[len - 1 - j] = (unsigned char)(bits >> (8 * j));
    sha256_block(h, tail);
    if (len == 128) sha256_block(h, tail + 64);
    for (int j = 0; j < 32; ++j) out[j] = (unsigned char)(h[j / 4] >> (24 - 8 * (j % 4)));
    return memcmp(out, blob_sha256, 32) == 0;
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
    m->nt_max = m->threads;
#ifdef _OPENMP
    if (omp_get_max_threads() > m->nt_max) m->nt_max = omp_get_max_threads();
#endif
    T[0] = max_frames;
    if (max_frames < 1 || shapes(T, &gx, m->nt_max)) {
        snprintf(last_error, sizeof last_error, "max_frames %ld: %s", max_frames, asrq_error(ASRQ_ERR_SHORT));
        goto fail;
    }
    f = fopen(path, "rb");
    if (!f) { snprintf(last_error, sizeof last_error, "cannot open %s", path); goto fail; }
    uint64_t size = 0, sum = 0;
    if (fread(head, 1, 64, f) != 64 || memcmp(head, "ASRQBLOB", 8)) goto bad;
    for (int k = 7; k >= 0; --k) { size = (size << 8) | head[8 + k]; sum = (sum << 8) | head[16 + k]; }
    /* every size before use: the header's (and the file's: nothing after the blob) against the size
     * compiled in, before the blob's memory is allocated; then the checksum and the SHA-256 */
    if (size != BLOB_SIZE || sum != BLOB_SUM || memcmp(head + 24, blob_sha256, 32)) goto bad;
    {
        long at = ftell(f), end = -1;
        if (at >= 0 && fseek(f, 0, SEEK_END) == 0) end = ftell(f);
        if (end < 0 || (uint64_t)(end - at) != BLOB_SIZE || fseek(f, at, SEEK_SET)) goto bad;
    }
    m->blob_mem = malloc(BLOB_SIZE + 64);
    if (!m->blob_mem) { snprintf(last_error, sizeof last_error, "out of memory"); goto fail; }
    m->blob = align64(m->blob_mem);
    if (fread(m->blob, 1, BLOB_SIZE, f) != BLOB_SIZE || checksum(m->blob, BLOB_SIZE) != BLOB_SUM ||
        !blob_digest_ok(m->blob, BLOB_SIZE))
        goto bad;
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
    m->out64 = malloc(sizeof(int64_t) * (size_t)(T[OUT_INDEX] * OUT_CP) + 64);
    if (!m->gx_mem || !m->out64) { snprintf(last_error, sizeof last_error, "out of memory"); goto fail; }
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
        t->cin = term_desc[i].cin;
        t->cout = term_desc[i].cout;
        t->gamma6 = term_desc[i].gamma6;
        t->gamma7 = term_desc[i].gamma7;
        t->m31 = term_desc[i].m31;
        t->fast32 = term_desc[i].fast32;
        t->group32 = term_desc[i].group32;
        t->w = (const int8_t *)(m->blob + term_desc[i].w);
        t->M = (const int64_t *)(m->blob + term_desc[i].m);
        t->C = (const int64_t *)(m->blob + term_desc[i].c);
        t->S = (const int64_t *)(m->blob + term_desc[i].s);
        t->Cs6 = (const int64_t *)(m->blob + term_desc[i].cs6);
        t->Cs7 = (const int64_t *)(m->blob + term_desc[i].cs7);
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
"""


class _Codegen:
    """model.c for one lowering (module doc): tables, buffer plan, shapes, asrq_load, asrq_run."""

    def __init__(self, lw: Lowering, labels, blob_size: int, blob_sum: int):
        self.lw, self.p = lw, lw.p
        self.labels, self.blob_size, self.blob_sum = list(labels or []), blob_size, blob_sum
        self.acts = list(lw.acts.values())
        self.terms = [t for s in lw.steps if s.kind == "group" for t in s.data["terms"]]
        for i, t in enumerate(self.terms):
            t.index = i

    def act(self, name: str) -> Act:
        return self.lw.acts[name]

    def first_row(self, a: Act) -> str:
        """the C pointer to the first frame of a stored activation"""
        return f"(m->slot[{a.slot}] + {a.pad * a.cp})"

    def source(self) -> str:
        return "\n".join(self.header() + self.tables() + self.shapes() + [LOAD.replace("OUT_INDEX", str(
            self.lw.out.index)).replace("OUT_CP", str(self.lw.out.cp))] + self.run()) + "\n"

    # -------------------------------------------------------------- declarations
    def header(self) -> list[str]:
        lw, p = self.lw, self.p
        return [
            "/* Generated by intasr (program/c_backend.py): the integer program of one model as straight-line",
            " * kernel calls. Integer arithmetic only. Do not edit; re-export instead. */",
            "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n",
            "#ifdef _OPENMP\n#include <omp.h>\n#endif\n",
            '#include "asrq.h"\n#include "asrq_kernels.h"\n#include "asrq_ops.h"\n',
            f"#define NACT {len(self.acts)}\n#define NSLOT {lw.nslots}\n#define NTERMS {max(len(self.terms), 1)}",
            f"#define FEATURES {lw.acts[p.inputs[0]].channels}",
            f"#define CLASSES {lw.out.channels}\n#define BLOB_SIZE {self.blob_size}ULL\n#define BLOB_SUM {self.blob_sum}ULL\n",
            "struct asrq_model {",
            "    uint8_t *blob_mem, *blob;          /* the weights blob, 64-byte aligned */",
            "    uint8_t *slot_mem[NSLOT], *slot[NSLOT];",
            "    uint8_t *gx_mem, *gx;              /* scratch: what a step prepares (kernel family) or keeps per thread */",
            "    int64_t *out64;",
            "    asrq_term terms[NTERMS];",
            "    long max_frames;",
            "    int threads, nt_max, adaptive;",
            "};",
        ]

    def tables(self) -> list[str]:
        acts, labels = self.acts, self.labels
        L = [f"static const char *const labels[] = {{{', '.join(_c_string(s) for s in labels) or '0'}}};",
             f"static const long n_labels = {len(labels)};\n",
             "/* per activation: buffer slot (-1: the int64 output), padded channels, rows before / after */",
             f"static const int act_slot[NACT] = {{{', '.join(str(a.slot) for a in acts)}}};",
             f"static const long act_cp[NACT] = {{{', '.join(str(a.cp) for a in acts)}}};",
             f"static const long act_pad[NACT] = {{{', '.join(str(a.pad) for a in acts)}}};",
             f"static const long act_back[NACT] = {{{', '.join(str(a.back) for a in acts)}}};\n",
             "/* the conv terms: kind, input slot, input row bytes, stride, dilation, row offset, taps, cin4, output",
             " * blocks, input and output channels, gamma6, gamma7, m31, fast32, group32, blob offsets of weights, M, C,",
             " * S, Cs6, Cs7",
             " * (asrq_kernels.h) */",
             "static const struct { int kind, slot; long cp_in, stride, dil, row_off, taps, cin4, oblocks, cin, cout;",
             "                     int gamma6, gamma7, m31, fast32, group32; unsigned long long w, m, c, s, cs6, cs7; }",
             "    term_desc[NTERMS] = {"]
        for t in self.terms:
            src = self.act(t.src)
            a = t.geo
            oblocks = -(-len(t.M) // 64)
            L.append(f"    {{{KIND[t.kind]}, {src.slot}, {src.cp}, {int(a['stride'])}, {int(a['dilation'])}, "
                     f"{src.pad - int(a['padding'])}, {t.taps}, {src.cp // 4}, {oblocks}, {src.channels}, {len(t.M)}, "
                     f"{t.gamma6}, {t.gamma7}, {t.m31}, {t.fast32}, {t.group32}, "
                     f"{t.w_off}, {t.m_off}, {t.c_off}, {t.s_off}, {t.cs6_off}, {t.cs7_off}}},  /* {t.name} */")
        if not self.terms:
            L.append("    {0}")
        L += ["};", STATIC]
        return L

    # -------------------------------------------------------------- frame counts and scratch
    def rows(self, out: Act, step: Step) -> str:
        """the C expression of a group's output rows: its frames, times F' for an image (Conv2d)"""
        f2 = step.data.get("rows_per_frame", 1)
        return f"T[{out.index}]" + (f" * {f2}" if f2 != 1 else "")

    def _term_geometry(self, t, out: Act, step: Step) -> str:
        src = self.act(t.src)
        a = t.geo
        return (f"{KIND[t.kind]}, {self.rows(out, step)}, {int(a['stride'])}, {src.pad - int(a['padding'])}, {t.taps}, "
                f"{int(a['dilation'])}, {src.cp}")

    def shapes(self) -> list[str]:
        L = ["/* T[i]: frames of activation i for an input of T0 frames; the scratch the steps need */",
             "static int shapes(long *T, long *gx_bytes, int nt) {   /* T[0]: the input frames */",
             "    long need = 0, g;"]
        for step in self.lw.steps:
            if step.kind in ("mask", "frames"):
                continue
            out = self.act(step.out)
            if step.kind == "im2col":
                src, g = self.act(step.reads[0]), step.data
                frames = _conv_frames(f"T[{src.index}]", {"kernel": g["kT"], "stride": g["sT"], "padding": g["pT"],
                                                           "dilation": 1})
                L.append(f"    T[{out.index}] = ({frames}) * {g['F2']};")
                L.append(f"    if (T[{out.index}] < 1) return ASRQ_ERR_SHORT;")
                continue
            if step.kind != "group":
                src = self.act(step.reads[0])
                L.append(f"    T[{out.index}] = T[{src.index}];")
                if step.kind == "layernorm":
                    L.append(f"    if ({src.channels}L * 8 * nt > need) need = {src.channels}L * 8 * nt;")
                elif step.kind == "attention":
                    geo = f"T[{src.index}], {step.data['heads']}, {step.data['dk']}, nt"
                    if step.data["qv"] is not None:
                        L.append(f"    if (T[{src.index}] > {step.data['max_len']}) return ASRQ_ERR_POSITIONS;")
                    L.append(f"    if (asrq_attention_scratch({geo}) > need) need = asrq_attention_scratch({geo});")
                continue
            L.append("    g = 0;")
            for j, t in enumerate(step.data["terms"]):
                src = self.act(t.src)
                expr = _conv_frames(f"T[{src.index}]", t.geo)
                if "rows_per_frame" in step.data:   # an image: the patches' rows are frames x F'
                    expr = f"({expr}) / {step.data['rows_per_frame']}"
                if j == 0:
                    L.append(f"    T[{out.index}] = {expr};")
                    L.append(f"    if (T[{out.index}] < 1) return ASRQ_ERR_SHORT;")
                else:
                    L.append(f"    if ({expr} != T[{out.index}]) return ASRQ_ERR_SHORT;")
                L.append(f"    g += asrq_term_scratch({self._term_geometry(t, out, step)});")
            L.append("    if (g > need) need = g;")
        L += ["    *gx_bytes = need;\n    return 0;\n}\n",
              "long asrq_out_frames(long frames) {\n    long T[NACT], gx;\n    T[0] = frames;\n"
              f"    return shapes(T, &gx, 1) ? 0 : T[{self.lw.out.index}];\n}}\n"]
        return L

    # -------------------------------------------------------------- asrq_run
    def run(self) -> list[str]:
        lw, p = self.lw, self.p
        inp = lw.acts[p.inputs[0]]
        L = ["int asrq_run(asrq_model *m, const int8_t *q, long frames, long length, int64_t *logits, long *out_length) {",
             "    long T[NACT], gx_bytes;",
             "    const int nt = run_threads(m);",
             "    const long T0 = frames, L0 = length;",
             "    if (frames > m->max_frames) return ASRQ_ERR_TOO_LONG;",
             "    if (length < 1 || length > frames) return ASRQ_ERR_LENGTH;",
             "    T[0] = frames;",
             "    { int rc = shapes(T, &gx_bytes, nt); if (rc) return rc; }"]
        L += [f"    long {var};" for var in lw.lengths.values() if var != "L0"]
        L += [f"    /* the input: int8 [F][T] -> uint8 rows (+{inp.off}), padding rows hold the offset */",
              f"    {{ uint8_t *x = m->slot[{inp.slot}];",
              f"      asrq_fill_rows(x, {inp.cp}, 0, T0 + {inp.pad + inp.back}, {inp.off});",
              f"      for (long t = 0; t < T0; ++t) for (long c = 0; c < FEATURES; ++c)",
              f"          x[({inp.pad} + t) * {inp.cp} + c] = (uint8_t)((int)q[c * T0 + t] + {inp.off}); }}"]
        for step in lw.steps:
            L += getattr(self, f"step_{step.kind}")(step)
        o = lw.out
        L += [f"    /* the logits: [T'][Cp] -> [classes][T'] */", f"    {{ const long To = T[{o.index}];"]
        if o.int64:
            L.append(f"      for (long t = 0; t < To; ++t) for (long c = 0; c < CLASSES; ++c) "
                     f"logits[c * To + t] = m->out64[t * {o.cp} + c]; }}")
        else:
            L += [f"      const uint8_t *y = m->slot[{o.slot}] + {o.pad} * {o.cp};",
                  f"      for (long t = 0; t < To; ++t) for (long c = 0; c < CLASSES; ++c) "
                  f"logits[c * To + t] = (int64_t)y[t * {o.cp} + c] - {o.off}; }}"]
        L += [f"    if (out_length) *out_length = lmin({lw.lengths[p.outputs[1]]}, T[{o.index}]);",
              "    return ASRQ_OK;\n}"]
        return L

    def fill(self, a: Act) -> list[str]:
        """the padding rows of a stored activation, after a step wrote its frames"""
        return [f"    asrq_fill_rows(m->slot[{a.slot}], {a.cp}, 0, {a.pad}, {a.off});",
                f"    asrq_fill_rows(m->slot[{a.slot}], {a.cp}, {a.pad} + T[{a.index}], "
                f"{a.pad} + T[{a.index}] + {a.back}, {a.off});"]

    def step_frames(self, step: Step) -> list[str]:
        op, lengths = step.data["op"], self.lw.lengths
        a = op.attrs
        K, s, pd, d = (int(a[k]) for k in ("kernel", "stride", "padding", "dilation"))
        return [f"    {lengths[op.outputs[0]]} = fdiv({lengths[op.inputs[0]]} + {2 * pd - d * (K - 1) - 1}, {s}) + 1;"
                f"  /* {op.name} */"]

    def step_mask(self, step: Step) -> list[str]:
        a = self.act(step.out)
        lv = self.lw.lengths[step.data["lengths"]]
        return [f"    if ({lv} < T[{a.index}]) asrq_fill_rows(m->slot[{a.slot}], {a.cp}, {a.pad} + "
                f"({lv} < 0 ? 0 : {lv}), {a.pad} + T[{a.index}], {a.off});  /* mask {a.name} */"]

    def step_group(self, step: Step) -> list[str]:
        d, out = step.data, self.act(step.out)
        terms = d["terms"]
        first, n = terms[0].index, len(terms)
        L = [f"    /* {d['terminal'].name}: {' + '.join(t.name + ' (' + t.kind + ')' for t in terms)} */"]
        if out.int64:
            L.append(f"    asrq_group(m->terms + {first}, {n}, T[{out.index}], {out.cp // 64}, NULL, m->out64, "
                     f"{out.cp}, 0, 0, 0, 0, nt, m->gx);")
            return L
        f2 = d.get("rows_per_frame", 1)
        ocp = out.img[1] if out.img else out.cp   # an image: rows of one position
        L.append(f"    asrq_group(m->terms + {first}, {n}, {self.rows(out, step)}, {ocp // 64}, m->slot[{out.slot}], "
                 f"NULL, {ocp}, {out.pad * f2}, {out.off}, {d['lo']}, {d['hi']}, nt, m->gx);")
        return L + self.fill(out)

    def step_im2col(self, step: Step) -> list[str]:
        g, src, out = step.data, self.act(step.reads[0]), self.act(step.out)
        F, pstride, C = src.img
        T2 = f"(T[{out.index}] / {g['F2']})"
        return [f"    asrq_im2col({self.first_row(src)}, {src.cp}, {F}, {pstride}, {C}, "
                f"T[{src.index}], m->slot[{out.slot}], {out.cp}, {T2}, {g['F2']}, {g['kT']}, {g['kF']}, {g['sT']}, "
                f"{g['sF']}, {g['pT']}, {g['pF']}, {src.off}, nt);"]

    def step_table(self, step: Step) -> list[str]:
        d, src, out = step.data, self.act(step.reads[0]), self.act(step.out)
        return [f"    /* {d['name']} + requantize: a table */",
                f"    asrq_lut({self.first_row(src)}, {src.cp}, {self.first_row(out)}, {out.cp}, T[{out.index}], {out.channels}, "
                f"m->blob + {d['off']}, {int(d['per_channel'])}, nt);"] + self.fill(out)

    def step_glu(self, step: Step) -> list[str]:
        d, src, out = step.data, self.act(step.reads[0]), self.act(step.out)
        return [f"    /* {d['name']} + requantize */",
                f"    asrq_glu({self.first_row(src)}, {src.cp}, {self.first_row(out)}, {out.cp}, T[{out.index}], {out.channels}, "
                f"(const int32_t *)(m->blob + {d['sig_off']}), (const int64_t *)(m->blob + {d['m_off']}), "
                f"(const int64_t *)(m->blob + {d['s_off']}), {int(d['per_channel'])}, {src.off}, {out.off}, "
                f"{d['lo']}, {d['hi']}, nt);"] + self.fill(out)

    def step_layernorm(self, step: Step) -> list[str]:
        d, src, out = step.data, self.act(step.reads[0]), self.act(step.out)
        p = d["params"]
        narrow = int(p.u_max * max(map(abs, p.gamma_q)) + max(map(abs, p.beta_q)) < 2 ** 31 and p.M < 2 ** 31)
        return [f"    {{   /* {d['name']} */",
                f"        static const asrq_ln p = {{{p.channels}, {p.h}, {p.eps_int}LL, {p.eps_shift}, {p.norm_bits}, "
                f"{p.u_max}, {p.M}LL, {p.shift}, {p.out_bits}, {narrow}}};",
                f"        asrq_layernorm({self.first_row(src)}, {src.cp}, {self.first_row(out)}, {out.cp}, T[{out.index}], &p, "
                f"(const int64_t *)(m->blob + {d['g_off']}), (const int64_t *)(m->blob + {d['b_off']}), "
                f"{src.off}, {out.off}, (int64_t *)m->gx, nt);",
                "    }"] + self.fill(out)

    def step_attention(self, step: Step) -> list[str]:
        d, out = step.data, self.act(step.out)
        q, k, v = (self.act(d[n]) for n in ("q", "k", "v"))
        if not q.cp == k.cp == v.cp == out.cp:
            raise CExportError(f"{d['name']}: q, k, v and the context in rows of different widths")
        e = d["softmax"].exp
        exp = ", ".join(f"{int(getattr(e, f))}LL" for f in ("in_shift", "q_ln2", "q_b", "q_c", "q_min", "out_max",
                                                             "z_max", "recip", "recip_shift"))
        qv = self.first_row(self.act(d["qv"])) if d["qv"] is not None else "NULL"
        pos = (f"(const int8_t *)(m->blob + {d['pos_off']}), {d['max_len']}, {d['Mc']}LL, {d['Sc']}, {d['Mp']}LL, "
               f"{d['Sp']}" if d["qv"] is not None else "NULL, 0, 0, 0, 0, 0")
        lv = self.lw.lengths[d["lengths"]]
        return [f"    {{   /* {d['name']}: q k^T, softmax, p v, requantize */",
                f"        const asrq_attn a = {{{d['heads']}, {d['dk']}, {{{{{exp}}}, {d['softmax'].out_bits}, "
                f"{d['softmax'].recip_bits}}}, (const int64_t *)(m->blob + {d['m_off']}), "
                f"(const int64_t *)(m->blob + {d['s_off']}), {int(d['per_channel'])}, {d['lo']}, {d['hi']}, "
                f"{out.off}, {pos}}};",
                f"        asrq_attention(&a, {self.first_row(q)}, {self.first_row(k)}, {self.first_row(v)}, {qv}, {q.cp}, "
                f"T[{q.index}], {lv}, {self.first_row(out)}, {out.cp}, m->gx, nt);",
                "    }"] + self.fill(out)


def export_c(program: Program, out_dir, labels=None) -> Path:
    """Write the C library of `program` into out_dir (module doc); returns the folder."""
    lw = Lowering(program)
    blob = Blob()
    lw.pack(blob)
    body = blob.body()
    check = checksum(body)
    digest = hashlib.sha256(body).digest()   # the loader takes this blob and no other (LOAD)
    data = MAGIC + struct.pack("<QQ", len(body), check) + digest + b"\0" * 8 + body   # 64-byte header
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in STATIC_FILES:
        shutil.copyfile(SOURCES / name, out / name)
    source = _Codegen(lw, labels, len(body), check).source()
    (out / "model.c").write_text(source.replace("BLOB_SHA256_BYTES", ", ".join(f"0x{b:02x}" for b in digest)))
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
    from ..paths import native_cache

    return native_cache() / "c_runtime"


def build(out_dir, cflags: str | None = None, target: str = "libasrq.so", kernels: Path | None = None) -> Path:
    """make the exported folder (CC / CFLAGS from the environment unless cflags is given); kernels:
    a prebuilt archive of the kernels (``kernel_library``) to link instead of compiling them here."""
    if shutil.which(os.environ.get("CC", "cc")) is None or shutil.which("make") is None:
        raise RuntimeError("the C runtime needs a C compiler (cc or $CC) and make")
    cmd = ["make", "-s", f"-j{os.cpu_count() or 1}", "-C", str(out_dir), target]
    if cflags is not None:
        cmd.append(f"CFLAGS={cflags}")
    if kernels:
        cmd += ["KOBJ=", f"KLIB={kernels}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"building the C runtime in {out_dir} failed:\n{r.stderr.strip()[-2000:]}")
    return Path(out_dir) / target


KERNEL_SOURCES = ("asrq.h", "asrq_family.h", "asrq_kernels.h", "asrq_kernels.c", "asrq_ops.h", "asrq_ops.c", "Makefile")


def kernel_library(cflags: str | None = None) -> Path:
    """The kernel families' archive (it does not depend on the model), compiled once per source,
    compiler and flags into the cache; a model then compiles only its model.c."""
    h = hashlib.sha256()
    for name in KERNEL_SOURCES:
        h.update((SOURCES / name).read_bytes())
    h.update(repr((cflags, os.environ.get("CC"), os.environ.get("CFLAGS"))).encode())
    d = _cache_root() / f"kernels-{h.hexdigest()[:16]}"
    if not (d / "done").is_file():
        tmp = d.with_name(f"{d.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name in KERNEL_SOURCES:
            shutil.copyfile(SOURCES / name, tmp / name)
        build(tmp, cflags, target="libasrq_kernels.a")
        (tmp / "done").write_text("")
        try:
            os.replace(tmp, d)
        except OSError:   # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return d / "libasrq_kernels.a"


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
            build(self.dir, cflags, kernels=kernel_library(cflags))
        elif not lib.is_file():   # the cache: built aside, then renamed (a concurrent build never shows half)
            tmp = self.dir.with_name(f"{self.dir.name}.tmp{os.getpid()}")
            export_c(program, tmp)
            build(tmp, cflags, kernels=kernel_library(cflags))
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
        for name in STATIC_FILES + ("../c_backend.py", "../c_lower.py"):
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
