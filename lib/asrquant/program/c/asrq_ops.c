/* The Conformer's integer ops in the C runtime: tables, GLU, LayerNorm, attention (asrq_ops.h).
 *
 * Each kernel computes exactly the integers that program/ops.py specifies (and intops/nonlinear.py
 * derives, with every bound): the same i-exp, the same Newton square root, the same floor
 * divisions, in int32/int64 as the bounds allow. Activations are the runtime's u8 rows (u = y + off,
 * asrq_kernels.h). `>>` on a negative int64 is an arithmetic shift (floor) on the compilers we
 * target; C's `/` truncates, so every floor division of a possibly negative value goes through
 * fdiv64. tests/test_c_conformer.py checks every op against the NumPy reference.
 */
#include "asrq_ops.h"

#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static int64_t fdiv64(int64_t a, int64_t b) {   /* floor(a / b), b > 0 */
    const int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

static int bitlen64(uint64_t n) {   /* bit_length: 0 for 0 */
    int L = 0;
    while (n) {
        ++L;
        n >>= 1;
    }
    return L;
}

/* floor(sqrt(n)), 0 <= n < 2^63: Newton from 2^ceil(L/2) > sqrt(n) while it decreases
 * (intops/nonlinear.py proves the fixed point is floor(sqrt(n))) */
static int64_t isqrt64(int64_t n) {
    if (n <= 0) return 0;
    int64_t k = (int64_t)1 << ((bitlen64((uint64_t)n) + 1) >> 1);
    for (;;) {
        const int64_t k2 = (k + n / k) >> 1;
        if (k2 >= k) return k;
        k = k2;
    }
}

/* i-exp of q <= 0 (q > 0 counts as 0): int32 in [0, out_max] */
static inline int32_t iexp(int64_t q, const asrq_exp *p) {
    int64_t x = q < p->q_min ? p->q_min : (q > 0 ? 0 : q);
    if (p->in_shift >= 0)
        x = x * ((int64_t)1 << p->in_shift);
    else
        x = (x + ((int64_t)1 << (-p->in_shift - 1))) >> (-p->in_shift);
    const int64_t z = (-x * p->recip) >> p->recip_shift;   /* = (-x) // q_ln2 */
    const int64_t t = x + z * p->q_ln2 + p->q_b;
    return (int32_t)((t * t + p->q_c) >> z);
}

/* ------------------------------------------------------------------ tables */

void asrq_lut(const uint8_t *x, long xcp, uint8_t *y, long ycp, long rows, long C, const uint8_t *lut,
              int per_channel, int nthreads) {
    (void)nthreads;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (long r = 0; r < rows; ++r) {
        const uint8_t *xr = x + r * xcp;
        uint8_t *yr = y + r * ycp;
        if (per_channel)
            for (long c = 0; c < C; ++c) yr[c] = lut[c * 256 + xr[c]];
        else
            for (long c = 0; c < C; ++c) yr[c] = lut[xr[c]];
    }
}

/* ------------------------------------------------------------------ GLU */

void asrq_glu(const uint8_t *x, long xcp, uint8_t *y, long ycp, long rows, long C, const int32_t *sig,
              const int64_t *M, const int64_t *S, int per_channel, int off_in, int off_out, int lo, int hi,
              int nthreads) {
    (void)nthreads;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (long r = 0; r < rows; ++r) {
        const uint8_t *xr = x + r * xcp;
        uint8_t *yr = y + r * ycp;
        for (long c = 0; c < C; ++c) {
            const long k = per_channel ? c : 0;
            const int64_t v = (int64_t)((int)xr[c] - off_in) * sig[xr[C + c]];   /* a * sigmoid(b) */
            int64_t o = (v * M[k] + (((int64_t)1 << S[k]) >> 1)) >> S[k];
            o = o < lo ? lo : (o > hi ? hi : o);
            yr[c] = (uint8_t)(o + off_out);
        }
    }
}

/* ------------------------------------------------------------------ LayerNorm */

/* one row (intops/nonlinear.py's int_layernorm, the channel axis): x stored u8, y stored u8 */
static void layernorm_row(const uint8_t *x, uint8_t *y, const asrq_ln *p, const int64_t *g, const int64_t *b,
                          int off_in, int off_out, int64_t *ybuf) {
    const long C = p->channels;
    int64_t total = 0, amax = 0;
    for (long c = 0; c < C; ++c) total += (int64_t)x[c] - off_in;
    for (long c = 0; c < C; ++c) {
        const int64_t v = C * ((int64_t)x[c] - off_in) - total;
        ybuf[c] = v;
        amax = (v < 0 ? -v : v) > amax ? (v < 0 ? -v : v) : amax;
    }
    int r = bitlen64((uint64_t)amax) - (int)p->h;
    r = r > p->eps_shift ? r : (int)p->eps_shift;
    int64_t W = 0;
    for (long c = 0; c < C; ++c) {
        const int64_t s = (ybuf[c] + (((int64_t)1 << r) >> 1)) >> r;
        W += s * s;
    }
    const int j = r - (int)p->eps_shift;
    if (p->eps_int) W += (p->eps_int + (((int64_t)1 << (2 * j)) >> 1)) >> (2 * j);
    const int t = (62 - bitlen64((uint64_t)W)) >> 1;
    int64_t sd = isqrt64((W << (2 * t)) / C);
    sd = sd > 1 ? sd : 1;
    const int e = (int)p->norm_bits + t - r;
    const int64_t Bd = sd << (e < 0 ? -e : 0), half = ((int64_t)1 << p->shift) >> 1;
    const int lo = -(1 << (p->out_bits - 1)), hi = (1 << (p->out_bits - 1)) - 1;
    for (long c = 0; c < C; ++c) {
        const int64_t A = ybuf[c] * ((int64_t)1 << (e > 0 ? e : 0));
        int64_t u = fdiv64(2 * A + Bd, 2 * Bd);
        u = u < -p->u_max ? -p->u_max : (u > p->u_max ? p->u_max : u);
        int64_t o = ((u * g[c] + b[c]) * p->M + half) >> p->shift;
        o = o < lo ? lo : (o > hi ? hi : o);
        y[c] = (uint8_t)(o + off_out);
    }
}

void asrq_layernorm(const uint8_t *x, long xcp, uint8_t *y, long ycp, long rows, const asrq_ln *p, const int64_t *g,
                    const int64_t *b, int off_in, int off_out, int64_t *scratch, int nthreads) {
    (void)nthreads;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (long r = 0; r < rows; ++r) {
#ifdef _OPENMP
        int64_t *ybuf = scratch + (long)omp_get_thread_num() * p->channels;
#else
        int64_t *ybuf = scratch;
#endif
        layernorm_row(x + r * xcp, y + r * ycp, p, g, b, off_in, off_out, ybuf);
    }
}

/* ------------------------------------------------------------------ attention */

/* the probabilities of one query row from its scores s[0..n) (keys j < nv unmasked) */
static void softmax_row(const int64_t *s, long n, long nv, const asrq_softmax *p, int32_t *e, int32_t *prob) {
    if (nv <= 0) {
        memset(prob, 0, sizeof(int32_t) * (size_t)n);
        return;
    }
    int64_t m = s[0], sum = 0;
    for (long j = 1; j < nv; ++j) m = s[j] > m ? s[j] : m;
    for (long j = 0; j < nv; ++j) {
        e[j] = iexp(s[j] - m, &p->exp);
        sum += e[j];
    }
    const int K = p->recip_bits, B = p->out_bits;
    const int64_t f = ((int64_t)1 << K) / (sum > 1 ? sum : 1), half = (int64_t)1 << (K - B - 1), top = (1 << B) - 1;
    for (long j = 0; j < nv; ++j) {
        const int64_t v = ((int64_t)e[j] * f + half) >> (K - B);
        prob[j] = (int32_t)(v < top ? v : top);
    }
    for (long j = nv; j < n; ++j) prob[j] = 0;
}

static int64_t rescale64(int64_t v, int64_t M, int64_t S) { return (v * M + (((int64_t)1 << S) >> 1)) >> S; }

void asrq_attention(const asrq_attn *a, const uint8_t *q, const uint8_t *k, const uint8_t *v, const uint8_t *qv,
                    long cp, long T, long L, uint8_t *out, long ocp, void *scratch, int nthreads) {
    const long dk = a->dk, H = a->heads;
    (void)nthreads;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (long h = 0; h < H; ++h) {
        for (long i = 0; i < T; ++i) {
#ifdef _OPENMP
            const long tid = omp_get_thread_num();
#else
            const long tid = 0;
#endif
            int64_t *s = (int64_t *)scratch + tid * 3 * T;
            int32_t *e = (int32_t *)(s + T), *prob = (int32_t *)(s + 2 * T);
            const long nv = i < L ? (L < T ? L : T) : 0;   /* padded queries: every probability 0 */
            const uint8_t *qi = q + i * cp + h * dk;
            for (long j = 0; j < nv; ++j) {
                const uint8_t *kj = k + j * cp + h * dk;
                int64_t acc = 0;
                for (long c = 0; c < dk; ++c) acc += (int64_t)((int)qi[c] - 128) * ((int)kj[c] - 128);
                if (a->pos) {   /* rel_pos: (q + u) k^T and (q + v) p^T, each rescaled, summed */
                    const uint8_t *qvi = qv + i * cp + h * dk;
                    int64_t pa = 0;
                    for (long c = 0; c < dk; ++c)
                        pa += (int64_t)((int)qvi[c] - 128) * a->pos[(h * dk + c) * (2 * a->max_len - 1) + (a->max_len - 1) - i + j];
                    acc = rescale64(acc, a->Mc, a->Sc) + rescale64(pa, a->Mp, a->Sp);
                }
                s[j] = acc;
            }
            softmax_row(s, T, nv, &a->sm, e, prob);
            uint8_t *o = out + i * ocp + h * dk;
            for (long c = 0; c < dk; ++c) {
                int64_t acc = 0;
                for (long j = 0; j < nv; ++j) acc += (int64_t)prob[j] * ((int)v[j * cp + h * dk + c] - 128);
                const long kk = a->per_channel ? h * dk + c : 0;
                int64_t y = rescale64(acc, a->M[kk], a->S[kk]);
                y = y < a->lo ? a->lo : (y > a->hi ? a->hi : y);
                o[c] = (uint8_t)(y + a->off_out);
            }
        }
    }
}

long asrq_attention_scratch(long T, int nthreads) { return 3 * T * (long)sizeof(int64_t) * (nthreads > 0 ? nthreads : 1); }
