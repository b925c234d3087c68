/* The Conformer's integer ops in the C runtime (asrq_ops.c): integer arithmetic only.
 *
 * Every activation is a u8 row per frame (asrq_kernels.h): u = y + off. The constants are the
 * program's (program/ops.py), exported by program/c_backend.py.
 */
#ifndef ASRQ_OPS_H
#define ASRQ_OPS_H

#include <stdint.h>

/* i-exp (intops/nonlinear.py): x' = clamp(q, q_min, 0) << in_shift (or rounded >> -in_shift),
 * z = (-x' * recip) >> recip_shift, e = ((x' + z q_ln2 + q_b)^2 + q_c) >> z */
typedef struct {
    int64_t in_shift, q_ln2, q_b, q_c, q_min, out_max, z_max, recip, recip_shift;
} asrq_exp;

typedef struct {
    asrq_exp exp;
    int out_bits, recip_bits;   /* probabilities in [0, 2^out_bits - 1]; f = 2^recip_bits // sum */
} asrq_softmax;

typedef struct {
    long channels;
    int64_t h, eps_int, eps_shift, norm_bits, u_max, M, shift;
    int out_bits;
    int narrow;   /* U max|gamma| + max|beta| < 2^31 and M < 2^31: the last stage fits 32-bit lanes */
} asrq_ln;

/* attention of one layer: heads x dk channels of q, k, v (8-bit signed, off 128); probabilities by
 * the integer softmax (keys and queries at or past the length masked); the context requantized
 * with (M, S) [per channel or one] to [lo, hi] + off_out. rel_pos (pos != NULL): the scores are
 * rescale(q.k, Mc, Sc) + rescale(qv.pos, Mp, Sp), pos int8 [heads dk][2 max_len - 1]. */
typedef struct {
    long heads, dk;
    asrq_softmax sm;
    const int64_t *M, *S;
    int per_channel, lo, hi, off_out;
    const int8_t *pos;
    long max_len;
    int64_t Mc, Sc, Mp, Sp;
} asrq_attn;

/* y[r][c] = lut[u] (per_channel: lut[c * 256 + u]) for C channels of `rows` rows */
void asrq_lut(const uint8_t *x, long xcp, uint8_t *y, long ycp, long rows, long C, const uint8_t *lut,
              int per_channel, int nthreads);

/* GLU + requantize: y[c] = clamp(((a * sig[u_b]) M + half) >> S, lo, hi) + off_out, a = x[c] - off_in,
 * u_b = x[C + c] (sig: the integer sigmoid of each stored byte) */
void asrq_glu(const uint8_t *x, long xcp, uint8_t *y, long ycp, long rows, long C, const int32_t *sig,
              const int64_t *M, const int64_t *S, int per_channel, int off_in, int off_out, int lo, int hi,
              int nthreads);

/* integer LayerNorm over each row's channels; scratch: channels int64 per thread */
void asrq_layernorm(const uint8_t *x, long xcp, uint8_t *y, long ycp, long rows, const asrq_ln *p, const int64_t *g,
                    const int64_t *b, int off_in, int off_out, int64_t *scratch, int nthreads);

/* fused attention (T frames, the first L valid); qv: the rel_pos query (or NULL); scratch:
 * asrq_attention_scratch(T, heads, dk, nthreads) bytes */
void asrq_attention(const asrq_attn *a, const uint8_t *q, const uint8_t *k, const uint8_t *v, const uint8_t *qv,
                    long cp, long T, long L, uint8_t *out, long ocp, void *scratch, int nthreads);
long asrq_attention_scratch(long T, long heads, long dk, int nthreads);

/* the kT x kF patches of an image (T frames of F positions, `pstride` bytes apart, C channels each, rows
 * of xrow bytes) as the rows of a matrix: row t2 F2 + f2 holds, at (i kF + j) C, the C bytes of position
 * (t2 sT + i - pT, f2 sF + j - pF), or `off` (a real zero) outside the image; the rest of a row is off */
void asrq_im2col(const uint8_t *x, long xrow, long F, long pstride, long C, long T, uint8_t *out, long ocp, long T2,
                 long F2, int kT, int kF, int sT, int sF, int pT, int pF, int off, int nthreads);

/* the ops of one kernel family (asrq_ops.c, compiled once per family like asrq_kernels.c) */
typedef struct asrq_ops_table {
    void (*lut)(const uint8_t *, long, uint8_t *, long, long, long, const uint8_t *, int, int);
    void (*glu)(const uint8_t *, long, uint8_t *, long, long, long, const int32_t *, const int64_t *,
                const int64_t *, int, int, int, int, int, int);
    void (*layernorm)(const uint8_t *, long, uint8_t *, long, long, const asrq_ln *, const int64_t *,
                      const int64_t *, int, int, int64_t *, int);
    void (*attention)(const asrq_attn *, const uint8_t *, const uint8_t *, const uint8_t *, const uint8_t *, long,
                      long, long, uint8_t *, long, void *, int);
    long (*attention_scratch)(long, long, long, int);
} asrq_ops_table;

#endif
