/* Integer kernels of the asrquant C runtime (C99, libc only; integer arithmetic only).
 *
 * Layout: an activation of T frames and C channels is stored time-major, one row of Cp bytes
 * per frame (Cp = C rounded up to 64), as u = y + off (off = 128 for signed values, 0 for
 * unsigned ones), with `pad` rows before and `back` rows after the T frames that hold off (a
 * real zero): convolutions read the padded rows directly, without bounds checks.
 * A depthwise conv reads a "x4" copy of its input: x4[r][c][i] = x[r + i*dil][c], i = 0..3, so
 * that one 32-bit lane holds four taps of one channel (the layout VNNI's u8 x s8 dot product
 * wants: 64 multiply-adds per instruction, as for the pointwise convs).
 */
#ifndef ASRQ_KERNELS_H
#define ASRQ_KERNELS_H

#include <stdint.h>

#define ASRQ_TILE_ROWS 6   /* output frames per tile: 6 x 64 int32 accumulators fit 24 zmm registers */
#define ASRQ_GEMM 0        /* dense conv (groups = 1), any K / stride / dilation: K shifted 1x1 GEMMs */
#define ASRQ_DW 1          /* depthwise conv on the x4 copy of its input */

typedef struct {
    int kind;
    const uint8_t *x;     /* GEMM: the input buffer (row 0 = first padded row); DW: its x4 copy */
    long cp_in;           /* bytes per input row (GEMM) / channels per x4 row (DW: 4 cp_in bytes per row) */
    long stride, dil;     /* conv stride and dilation, in frames */
    long row_off;         /* input row of output frame 0's first tap: pad_phys - conv padding */
    long taps;            /* GEMM: K; DW: K rounded up to 4, divided by 4 */
    long cin4;            /* GEMM: Cp_in / 4 */
    const int8_t *w;      /* GEMM: [Cp_out/64][K][cin4][64][4]; DW: [Cp/64][taps][64][4] */
    const int64_t *M, *C, *S;  /* per output channel (Cp_out): v = (acc * M + C) >> S */
} asrq_term;

/* out = clamp(sum_j ((acc_j * M_j + C_j) >> S_j) + post, lo, hi) as uint8 (out8: post is the output's
 * storage offset), or the unclamped sum as int64 (out64); T_out frames, blocks of 64 output
 * channels; out row t is row out_row0 + t. */
void asrq_group(const asrq_term *terms, int nterms, long T_out, long oblocks, uint8_t *out8, int64_t *out64,
                long out_cp, long out_row0, int64_t post, int64_t lo, int64_t hi, int nthreads);

/* x4 copy of rows [0, rows) of an activation (module comment). */
void asrq_build_x4(const uint8_t *x, long rows, long cp, long dil, uint8_t *x4, int nthreads);

/* Rows [r0, r1) of an activation set to `off` (padding, and masked frames past a length). */
void asrq_fill_rows(uint8_t *x, long cp, long r0, long r1, int off);

/* Which kernels this build uses: "avx512-vnni", "avx-vnni" or "portable". */
const char *asrq_isa(void);

#endif
