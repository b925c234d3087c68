/* Integer kernels of the intasr C runtime (C99, libc only; integer arithmetic only).
 *
 * Layout: an activation of T frames and C channels is stored time-major, one row of Cp bytes
 * per frame (Cp = C rounded up to 64), as u = y + off (off = 128 for signed values, 0 for
 * unsigned ones), with `pad` rows before and `back` rows after the T frames that hold off (a
 * real zero): convolutions read the padded rows directly, without bounds checks.
 * A depthwise conv reads a prepared copy of its input, made by the group call in the scratch
 * memory: the layout its kernel family wants (asrq_kernels.c).
 *
 * Kernel families: asrq_kernels.c is compiled once per family with that family's instruction
 * set (the Makefile); asrq_load picks one for this CPU (or $ASRQ_ISA) and every call below goes
 * to it. One build therefore runs on any x86-64 (and, with the portable family alone, anywhere).
 */
#ifndef ASRQ_KERNELS_H
#define ASRQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define ASRQ_TILE_ROWS 6   /* output frames per tile (VNNI, portable): 6 x 64 int32 accumulators */
#define ASRQ_GEMM 0        /* dense conv (groups = 1), any K / stride / dilation: K shifted 1x1 GEMMs */
#define ASRQ_DW 1          /* depthwise conv on the prepared copy of its input */
#define ASRQ_IDENT 2       /* the input itself (a residual skip): acc = u, one channel each */

typedef struct {
    int kind;
    const uint8_t *x;     /* the input buffer (row 0 = first padded row) */
    long cp_in;           /* bytes per input row (GEMM) / channels (DW) */
    long stride, dil;     /* conv stride and dilation, in frames */
    long row_off;         /* input row of output frame 0's first tap: pad_phys - conv padding */
    long taps;            /* GEMM: K; DW: K rounded up to 4, divided by 4 */
    long cin4;            /* GEMM: Cp_in / 4 */
    long oblocks;         /* Cp_out / 64 */
    long cin, cout;       /* the real channel counts (the rest of Cp_in / Cp_out is padding: zero weights) */
    const int8_t *w;      /* GEMM: [Cp_out/64][K][cin4][64][4]; DW: [Cp/64][taps][64][4] */
    const int64_t *M, *C, *S;  /* per output channel (Cp_out): v = (acc * M + C) >> S */
    /* the AVX2 family (asrq_kernels.c): the input split at gamma6 (a window of 64 values) or gamma7
     * (128), and the requantization constants for its accumulator of w (u - gamma) */
    int gamma6, gamma7;
    const int64_t *Cs6, *Cs7;
    int m31;              /* every M in [0, 2^31): acc * M is one vpmuldq (the vectorized requantization) */
    int fast32;           /* every S >= 32 and M < 2^31: floor(v / 2^S) = hi32(v) >> (S - 32) on int32 lanes */
    int group32;          /* (the group's first term) the rescaled terms' sum provably fits int32 */
    void *aux;            /* what the family packs at load (asrq_pack_term), or NULL */
} asrq_term;

/* out = clamp(sum_j ((acc_j * M_j + C_j) >> S_j) + post, lo, hi) as uint8 (out8: post is the output's
 * storage offset), or the unclamped sum as int64 (out64); T_out frames, blocks of 64 output
 * channels; out row t is row out_row0 + t. scratch: the sum of the terms' asrq_term_scratch bytes
 * (what a family prepares from the inputs: the depthwise x4 copy, split inputs). */
void asrq_group(const asrq_term *terms, int nterms, long T_out, long oblocks, uint8_t *out8, int64_t *out64,
                long out_cp, long out_row0, int64_t post, int64_t lo, int64_t hi, int nthreads, uint8_t *scratch);

/* Scratch bytes of one term (kind ASRQ_GEMM / ASRQ_DW) for T_out output frames. */
long asrq_term_scratch(int kind, long T_out, long stride, long row_off, long taps, long dil, long cp_in);

/* Weights a family repacks at load (0: ok); asrq_unpack_term frees them. */
int asrq_pack_term(asrq_term *t);
void asrq_unpack_term(asrq_term *t);

/* Rows [r0, r1) of an activation set to `off` (padding, and masked frames past a length). */
void asrq_fill_rows(uint8_t *x, long cp, long r0, long r1, int off);

/* Choose the kernel family (once per process): $ASRQ_ISA if set, else the best this CPU runs.
 * 0 on success; else err holds why (an unknown or unsupported $ASRQ_ISA). */
int asrq_select_isa(char *err, size_t n);
/* The family in use: "avx512-vnni", "avx-vnni", "avx2" or "portable". */
const char *asrq_isa(void);

/* One family: what asrq_kernels.c (and asrq_ops.c: ops) defines once per instruction set. */
struct asrq_ops_table;
typedef struct {
    const char *name;
    void (*group)(const asrq_term *, int, long, long, uint8_t *, int64_t *, long, long, int64_t, int64_t, int64_t,
                  int, uint8_t *);
    long (*scratch)(int, long, long, long, long, long, long);
    int (*pack)(asrq_term *);
    void (*unpack)(asrq_term *);
    const struct asrq_ops_table *ops;
} asrq_family;

#endif
