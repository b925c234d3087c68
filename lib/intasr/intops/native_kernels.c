/* Fused integer kernels for the CPU runner (intasr.intops.native).
 *
 * Integer arithmetic only: int8 storage, int32 accumulation, int64 requantization.
 * Written as plain loops over contiguous rows so that gcc -O3 -march=native vectorizes them
 * (AVX2 / AVX-512); the Python side compiles this file once per machine and checks it against
 * the reference (forward_int and a NumPy replay) in tests/test_native.py.
 *
 * Storage convention (deploy/runtime.py): an activation y is stored as the int8 s = y + zp with
 * zp = 0 (signed y) or zp = -128 (unsigned y in [0, 255]); the conv reads y = s - zp.
 *
 * Requantization of one accumulator a of channel c, exactly as forward_int computes it:
 *     v = (a * M[c] + C[c]) >> S[c]        (int64; >> is an arithmetic shift = floor division)
 * C already holds the bias, the rounding half 2^(S-1) and the output storage offset (runtime.py,
 * _FastConv). Several terms (main branch + residual branches) are summed in int64, then
 * `post` is added and the sum is clamped to [lo, hi] and stored as int8 (or kept as int64).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 512  /* output frames per inner block: the int32/int64 scratch rows stay in L1 */

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

/* Depthwise conv (one input channel per output channel) fused with requantization.
 *   x   int8  [B, C, T]           stored activations, y = x - zp, zero padding in y
 *   w   int8  [C, K]
 *   out int8  [B, C, T_out]       clamp(((acc * M + Cst) >> S) + post, lo, hi)
 *   T_out = (T + 2*pad - dil*(K-1) - 1) / stride + 1
 * |acc| <= sum_k |w_k| * 255 < 2^31 for K < 2^16: int32 is exact (the caller checks the bound).
 */
int dw_conv_requant(const int8_t *x, int64_t B, int64_t C, int64_t T, int64_t zp,
                    const int8_t *w, int64_t K, int64_t stride, int64_t pad, int64_t dil, int64_t T_out,
                    const int64_t *M, const int64_t *Cst, const int64_t *S,
                    int64_t post, int64_t lo, int64_t hi, int8_t *out, int nthreads) {
    const int64_t Tp = T + 2 * pad;
    int status = 0;
#pragma omp parallel num_threads(nthreads)
    {
        int32_t *ybuf = (int32_t *)malloc(sizeof(int32_t) * (size_t)(Tp > 0 ? Tp : 1));
        int32_t *acc = (int32_t *)malloc(sizeof(int32_t) * CHUNK);
        if (!ybuf || !acc) {
#pragma omp atomic write
            status = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t bc = 0; bc < B * C; ++bc) {
                const int64_t c = bc % C;
                const int8_t *xr = x + bc * T;
                const int8_t *wr = w + c * K;
                /* the padded real-valued row, widened once: zero padding is y = 0 */
                memset(ybuf, 0, sizeof(int32_t) * (size_t)pad);
                for (int64_t t = 0; t < T; ++t) ybuf[pad + t] = (int32_t)xr[t] - (int32_t)zp;
                memset(ybuf + pad + T, 0, sizeof(int32_t) * (size_t)pad);
                const int64_t m = M[c], cst = Cst[c], s = S[c];
                int8_t *orow = out + bc * T_out;
                for (int64_t t0 = 0; t0 < T_out; t0 += CHUNK) {
                    const int64_t n = (T_out - t0) < CHUNK ? (T_out - t0) : CHUNK;
                    memset(acc, 0, sizeof(int32_t) * (size_t)n);
                    for (int64_t k = 0; k < K; ++k) {
                        const int32_t wk = wr[k];
                        if (stride == 1) {
                            const int32_t *yk = ybuf + t0 + k * dil;
                            for (int64_t i = 0; i < n; ++i) acc[i] += wk * yk[i];
                        } else {
                            const int32_t *yk = ybuf + t0 * stride + k * dil;
                            for (int64_t i = 0; i < n; ++i) acc[i] += wk * yk[i * stride];
                        }
                    }
                    for (int64_t i = 0; i < n; ++i) {
                        int64_t v = (((int64_t)acc[i] * m + cst) >> s) + post;
                        orow[t0 + i] = (int8_t)clamp64(v, lo, hi);
                    }
                }
            }
        }
        free(ybuf);
        free(acc);
    }
    return status;
}

/* Sum of requantized int32 accumulators, clamped and stored as int8 (out8) or kept in int64
 * (out64, no clamp: the decoder's logits). Every term is [B, C, T] contiguous.
 *   v = sum_j ((acc_j * M_j[c] + C_j[c]) >> S_j[c]) + post
 */
int requant_sum(int64_t n_terms, const int32_t *const *accs, const int64_t *const *Ms,
                const int64_t *const *Cs, const int64_t *const *Ss, int64_t B, int64_t C, int64_t T,
                int64_t post, int64_t lo, int64_t hi, int8_t *out8, int64_t *out64, int nthreads) {
    int status = 0;
#pragma omp parallel num_threads(nthreads)
    {
        int64_t *v = (int64_t *)malloc(sizeof(int64_t) * CHUNK);
        if (!v) {
#pragma omp atomic write
            status = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t bc = 0; bc < B * C; ++bc) {
                const int64_t c = bc % C;
                for (int64_t t0 = 0; t0 < T; t0 += CHUNK) {
                    const int64_t n = (T - t0) < CHUNK ? (T - t0) : CHUNK;
                    for (int64_t i = 0; i < n; ++i) v[i] = post;
                    for (int64_t j = 0; j < n_terms; ++j) {
                        const int32_t *a = accs[j] + bc * T + t0;
                        const int64_t m = Ms[j][c], cst = Cs[j][c], s = Ss[j][c];
                        for (int64_t i = 0; i < n; ++i) v[i] += ((int64_t)a[i] * m + cst) >> s;
                    }
                    if (out8) {
                        int8_t *o = out8 + bc * T + t0;
                        for (int64_t i = 0; i < n; ++i) o[i] = (int8_t)clamp64(v[i], lo, hi);
                    } else {
                        memcpy(out64 + bc * T + t0, v, sizeof(int64_t) * (size_t)n);
                    }
                }
            }
        }
        free(v);
    }
    return status;
}
