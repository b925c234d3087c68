/* The Conformer's integer ops in the C runtime: tables, GLU, LayerNorm, attention (asrq_ops.h).
 *
 * Each kernel computes exactly the integers that program/ops.py specifies (and intops/nonlinear.py
 * derives, with every bound): the same i-exp, the same Newton square root, the same floor
 * divisions, in int32/int64 as the bounds allow. Activations are the runtime's u8 rows (u = y + off,
 * asrq_kernels.h). `>>` on a negative int64 is an arithmetic shift (floor) on the compilers we
 * target; C's `/` truncates, so every floor division of a possibly negative value goes through
 * floor_div. tests/test_c_conformer.py checks every op against the NumPy reference.
 */
#include "asrq_ops.h"

#include "asrq_family.h"

#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* floor(n / d) for a fixed divisor 2 <= d < 2^63 and |n| < 2^63, by a reciprocal: m = floor(2^64 / d)
 * gives q = floor(n m / 2^64) in {floor(n / d) - 1, floor(n / d)} for 0 <= n < 2^63 (the error
 * n (2^64 / d - m) / 2^64 < 1/2), which one comparison corrects; a negative n is -(floor((-n - 1) / d) + 1). */
typedef struct {
    uint64_t d, m;
} divisor;

static divisor make_divisor(int64_t d) {
    divisor v = {(uint64_t)d, 0};
#ifdef __SIZEOF_INT128__
    v.m = (uint64_t)(((unsigned __int128)1 << 64) / (uint64_t)d);
#endif
    return v;
}

static inline uint64_t udiv(uint64_t n, divisor v) {
#ifdef __SIZEOF_INT128__
    uint64_t q = (uint64_t)(((unsigned __int128)n * v.m) >> 64);
    return n - q * v.d >= v.d ? q + 1 : q;
#else
    return n / v.d;
#endif
}

static inline int64_t floor_div(int64_t n, divisor v) {
    return n >= 0 ? (int64_t)udiv((uint64_t)n, v) : -(int64_t)udiv((uint64_t)(-(n + 1)), v) - 1;
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

#if defined(ASRQ_AVX512)
/* y = lut[x] for 64 bytes at a time with AVX-512 BW alone: vpshufb looks up 16 entries by the low
 * nibble, once per table row (the high nibble), each row's result kept where the high nibble
 * matches. A byte loop stalls on its dependent loads and its speed moved with the code's alignment. */
static void lut_row_avx512(const uint8_t *x, uint8_t *y, long C, const uint8_t *lut, const __m512i rows16[16]) {
    const __m512i nib = _mm512_set1_epi8(15);
    long c = 0;
    for (; c + 64 <= C; c += 64) {
        const __m512i v = _mm512_loadu_si512((const void *)(x + c));
        const __m512i lo = _mm512_and_si512(v, nib), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
        __m512i out = _mm512_setzero_si512();
        for (int h = 0; h < 16; ++h)
            out = _mm512_mask_shuffle_epi8(out, _mm512_cmpeq_epi8_mask(hi, _mm512_set1_epi8((char)h)), rows16[h], lo);
        _mm512_storeu_si512((void *)(y + c), out);
    }
    for (; c < C; ++c) y[c] = lut[x[c]];
}
#endif

static void lut_rows(const uint8_t *x, long xcp, uint8_t *y, long ycp, long rows, long C, const uint8_t *lut,
              int per_channel, int nthreads) {
    (void)nthreads;
#if defined(ASRQ_AVX512)
    if (!per_channel) {
        __m512i rows16[16];   /* table row h (entries 16h .. 16h + 15) in each 128-bit lane */
        for (int h = 0; h < 16; ++h)
            rows16[h] = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(lut + 16 * h)));
#pragma omp parallel for schedule(static) num_threads(nthreads)
        for (long r = 0; r < rows; ++r) lut_row_avx512(x + r * xcp, y + r * ycp, C, lut, rows16);
        return;
    }
#endif
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

static void glu(const uint8_t *x, long xcp, uint8_t *y, long ycp, long rows, long C, const int32_t *sig,
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

#if defined(__AVX2__)
/* floor(v / 2^k) of 4 int64 lanes (AVX2 has no 64-bit arithmetic shift): ((v ^ 2^63) >>> k) - 2^(63-k) */
static inline __m256i sra64(__m256i v, int k) {
    const __m256i sign = _mm256_set1_epi64x((long long)(1ULL << 63));
    const __m128i s = _mm_cvtsi32_si128(k);
    return _mm256_sub_epi64(_mm256_srl_epi64(_mm256_xor_si256(v, sign), s), _mm256_srl_epi64(sign, s));
}

/* 8 int32 lanes from the low halves of int64 results for the even and the odd lanes */
static inline __m256i interleave8(__m256i even, __m256i odd) {
    return _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

/* 8 int32 lanes from the low halves of two int64 vectors (lanes 0-3, 4-7) */
static inline __m256i narrow8(__m256i lo4, __m256i hi4) {
    const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    return _mm256_blend_epi32(_mm256_permutevar8x32_epi32(lo4, idx), _mm256_permutevar8x32_epi32(hi4, idx), 0xF0);
}

/* The last stage of a LayerNorm row on 8 lanes, where it fits (else 0: the scalar loop runs):
 *   u = floor((y 2^(e+1) + sd) / (2 sd)), the unique integer with (2u - 1) sd <= y 2^(e+1) < (2u + 1) sd,
 * from the estimate (y R + 2^(k-1)) >> k, R = round(2^(e+k) / sd), 2^k > 2 max|y|: within 1 of u
 * where |u| <= U + 2 (outside, the clamp at U + 2 gives the same clamped result); one correction
 * step each way with exact 64-bit products (|2u +- 1| < 2^18, sd < 2^31). Then u is clamped to U,
 * acc = u g + b in int32 (narrow: checked at export), (acc M + 2^(shift-1)) >> shift in int64. */
static int normalize8(const int64_t *ybuf, uint8_t *y, const asrq_ln *p, const int64_t *g, const int64_t *b,
                      int off_out, int e, int64_t sd, int64_t amax) {
    const long C = p->channels;
    const int k = bitlen64((uint64_t)amax) + 2;
    if (!p->narrow || e < 0 || k > 33 || e + k > 62 || amax >= (1 << 30)) return 0;
    const int64_t R = (int64_t)((((uint64_t)1 << (e + k)) + (uint64_t)(sd >> 1)) / (uint64_t)sd);
    if (R >= ((int64_t)1 << 31) || e + 1 + bitlen64((uint64_t)amax) > 62) return 0;
    const int32_t U = (int32_t)p->u_max;
    const __m256i Rv = _mm256_set1_epi32((int32_t)R), sdv = _mm256_set1_epi32((int32_t)sd);
    const __m256i rnd = _mm256_set1_epi64x((long long)1 << (k - 1)), Mv = _mm256_set1_epi32((int32_t)p->M);
    const __m256i half = _mm256_set1_epi64x(((long long)1 << p->shift) >> 1), one = _mm256_set1_epi32(1);
    const __m256i lim = _mm256_set1_epi32(U + 2), ulim = _mm256_set1_epi32(U);
    const __m256i lo = _mm256_set1_epi32(-(1 << (p->out_bits - 1))), hi = _mm256_set1_epi32((1 << (p->out_bits - 1)) - 1);
    const __m128i e1 = _mm_cvtsi32_si128(e + 1);
    for (long c = 0; c + 8 <= C; c += 8) {
        const __m256i y8 = narrow8(_mm256_loadu_si256((const __m256i *)(ybuf + c)),
                                   _mm256_loadu_si256((const __m256i *)(ybuf + c + 4)));
        const __m256i gv = narrow8(_mm256_loadu_si256((const __m256i *)(g + c)), _mm256_loadu_si256((const __m256i *)(g + c + 4)));
        const __m256i bv = narrow8(_mm256_loadu_si256((const __m256i *)(b + c)), _mm256_loadu_si256((const __m256i *)(b + c + 4)));
        const __m256i yo = _mm256_srli_epi64(y8, 32);
        __m256i u = interleave8(sra64(_mm256_add_epi64(_mm256_mul_epi32(y8, Rv), rnd), k),
                                sra64(_mm256_add_epi64(_mm256_mul_epi32(yo, Rv), rnd), k));
        u = _mm256_max_epi32(_mm256_min_epi32(u, lim), _mm256_sub_epi32(_mm256_setzero_si256(), lim));
        /* y 2^(e+1) as int64, even / odd lanes */
        const __m256i ye = _mm256_sll_epi64(_mm256_mul_epi32(y8, one), e1), yodd = _mm256_sll_epi64(_mm256_mul_epi32(yo, one), e1);
        for (int step = 0; step < 2; ++step) {   /* down, then up */
            const __m256i m2 = step == 0 ? _mm256_sub_epi32(_mm256_add_epi32(u, u), one) : _mm256_add_epi32(_mm256_add_epi32(u, u), one);
            const __m256i pe = _mm256_mul_epi32(m2, sdv), po = _mm256_mul_epi32(_mm256_srli_epi64(m2, 32), sdv);
            /* down: y2 < (2u - 1) sd -> u - 1; up: y2 >= (2u + 1) sd -> u + 1 */
            const __m256i ce = step == 0 ? _mm256_cmpgt_epi64(pe, ye) : _mm256_xor_si256(_mm256_cmpgt_epi64(pe, ye), _mm256_set1_epi64x(-1));
            const __m256i co = step == 0 ? _mm256_cmpgt_epi64(po, yodd) : _mm256_xor_si256(_mm256_cmpgt_epi64(po, yodd), _mm256_set1_epi64x(-1));
            const __m256i mask = interleave8(ce, co);   /* -1 where the step applies */
            u = step == 0 ? _mm256_add_epi32(u, mask) : _mm256_sub_epi32(u, mask);
        }
        u = _mm256_max_epi32(_mm256_min_epi32(u, ulim), _mm256_sub_epi32(_mm256_setzero_si256(), ulim));
        const __m256i acc = _mm256_add_epi32(_mm256_mullo_epi32(u, gv), bv);
        __m256i o = interleave8(sra64(_mm256_add_epi64(_mm256_mul_epi32(acc, Mv), half), (int)p->shift),
                                sra64(_mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(acc, 32), Mv), half), (int)p->shift));
        o = _mm256_max_epi32(_mm256_min_epi32(o, hi), lo);
        o = _mm256_add_epi32(o, _mm256_set1_epi32(off_out));
        const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(o), _mm256_extracti128_si256(o, 1));
        _mm_storel_epi64((__m128i *)(y + c), _mm_packus_epi16(w16, w16));
    }
    /* the channels past the last multiple of 8: the same integers, one at a time */
    for (long c = C / 8 * 8; c < C; ++c) {
        const int64_t y2 = ybuf[c] * ((int64_t)1 << (e + 1));
        int64_t u = (ybuf[c] * R + ((int64_t)1 << (k - 1))) >> k;
        u = u > U + 2 ? U + 2 : (u < -U - 2 ? -U - 2 : u);
        if (y2 < (2 * u - 1) * sd) u -= 1;
        if (y2 >= (2 * u + 1) * sd) u += 1;
        u = u > U ? U : (u < -U ? -U : u);
        int64_t o = ((u * g[c] + b[c]) * p->M + (((int64_t)1 << p->shift) >> 1)) >> p->shift;
        const int64_t lo1 = -(1 << (p->out_bits - 1)), hi1 = (1 << (p->out_bits - 1)) - 1;
        o = o < lo1 ? lo1 : (o > hi1 ? hi1 : o);
        y[c] = (uint8_t)(o + off_out);
    }
    return 1;
}
#endif

#if defined(__AVX2__)
/* The statistics of a row on 8 lanes where r = eps_shift (no rescale of y: |y| < 2^h): y = C x - sum x
 * (|y| <= 2 C 255 < 2^31 for C < 2^22), amax, W = sum y^2 in int64 (y^2 < 2^62 / C each... W < 2^62 is the
 * algorithm's own bound). Else 0: the scalar loop. */
static int row_stats8(const uint8_t *x, long C, int off_in, const asrq_ln *p, int64_t *ybuf, int64_t *amax_out,
                      int64_t *W_out, int *r_out) {
    if (C % 8 || C >= (1L << 22)) return 0;
    const __m256i off = _mm256_set1_epi32(off_in);
    __m256i t8 = _mm256_setzero_si256();
    for (long c = 0; c < C; c += 8)
        t8 = _mm256_add_epi32(t8, _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(x + c))), off));
    int32_t tv[8];
    _mm256_storeu_si256((__m256i *)tv, t8);
    const int32_t total = tv[0] + tv[1] + tv[2] + tv[3] + tv[4] + tv[5] + tv[6] + tv[7];
    const __m256i Cv = _mm256_set1_epi32((int32_t)C), tot = _mm256_set1_epi32(total);
    __m256i am = _mm256_setzero_si256();
    for (long c = 0; c < C; c += 8) {
        const __m256i xv = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(x + c))), off);
        const __m256i yv = _mm256_sub_epi32(_mm256_mullo_epi32(xv, Cv), tot);
        am = _mm256_max_epi32(am, _mm256_abs_epi32(yv));
        _mm256_storeu_si256((__m256i *)(ybuf + c), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(yv)));
        _mm256_storeu_si256((__m256i *)(ybuf + c + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(yv, 1)));
    }
    int32_t av[8];
    _mm256_storeu_si256((__m256i *)av, am);
    int64_t amax = 0;
    for (int i = 0; i < 8; ++i) amax = av[i] > amax ? av[i] : amax;
    int r = bitlen64((uint64_t)amax) - (int)p->h;
    r = r > p->eps_shift ? r : (int)p->eps_shift;
    if (r != 0) return 0;   /* the rescaled squares: the scalar loop */
    __m256i w4 = _mm256_setzero_si256();
    for (long c = 0; c < C; c += 4) {
        const __m256i yv = _mm256_loadu_si256((const __m256i *)(ybuf + c));
        w4 = _mm256_add_epi64(w4, _mm256_mul_epi32(yv, yv));   /* |y| < 2^31: the low halves hold y */
    }
    int64_t wv[4];
    _mm256_storeu_si256((__m256i *)wv, w4);
    *amax_out = amax;
    *W_out = wv[0] + wv[1] + wv[2] + wv[3];
    *r_out = r;
    return 1;
}
#endif

/* one row (intops/nonlinear.py's int_layernorm, the channel axis): x stored u8, y stored u8 */
static void layernorm_row(const uint8_t *x, uint8_t *y, const asrq_ln *p, const int64_t *g, const int64_t *b,
                          int off_in, int off_out, int64_t *ybuf) {
    const long C = p->channels;
    int64_t total = 0, amax = 0, W = 0;
    int r;
#if defined(__AVX2__)
    if (row_stats8(x, C, off_in, p, ybuf, &amax, &W, &r)) goto normalize;
#endif
    for (long c = 0; c < C; ++c) total += (int64_t)x[c] - off_in;
    for (long c = 0; c < C; ++c) {
        const int64_t v = C * ((int64_t)x[c] - off_in) - total;
        ybuf[c] = v;
        amax = (v < 0 ? -v : v) > amax ? (v < 0 ? -v : v) : amax;
    }
    r = bitlen64((uint64_t)amax) - (int)p->h;
    r = r > p->eps_shift ? r : (int)p->eps_shift;
    for (long c = 0; c < C; ++c) {
        const int64_t s = (ybuf[c] + (((int64_t)1 << r) >> 1)) >> r;
        W += s * s;
    }
#if defined(__AVX2__)
normalize:
#endif
    ;
    const int j = r - (int)p->eps_shift;
    if (p->eps_int) W += (p->eps_int + (((int64_t)1 << (2 * j)) >> 1)) >> (2 * j);
    const int t = (62 - bitlen64((uint64_t)W)) >> 1;
    int64_t sd = isqrt64((W << (2 * t)) / C);
    sd = sd > 1 ? sd : 1;
    const int e = (int)p->norm_bits + t - r;
    const int64_t Bd = sd << (e < 0 ? -e : 0), half = ((int64_t)1 << p->shift) >> 1;
    const int lo = -(1 << (p->out_bits - 1)), hi = (1 << (p->out_bits - 1)) - 1;
#if defined(__AVX2__)
    if (normalize8(ybuf, y, p, g, b, off_out, e, sd, amax)) return;
#endif
    const divisor d2 = make_divisor(2 * Bd);   /* 2 Bd >= 2 (sd >= 1) */
    for (long c = 0; c < C; ++c) {
        const int64_t A = ybuf[c] * ((int64_t)1 << (e > 0 ? e : 0));
        int64_t u = floor_div(2 * A + Bd, d2);
        u = u < -p->u_max ? -p->u_max : (u > p->u_max ? p->u_max : u);
        int64_t o = ((u * g[c] + b[c]) * p->M + half) >> p->shift;
        o = o < lo ? lo : (o > hi ? hi : o);
        y[c] = (uint8_t)(o + off_out);
    }
}

static void layernorm(const uint8_t *x, long xcp, uint8_t *y, long ycp, long rows, const asrq_ln *p, const int64_t *g,
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

static void attention_scalar(const asrq_attn *a, const uint8_t *q, const uint8_t *k, const uint8_t *v, const uint8_t *qv,
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

static long attention_scratch_scalar(long T, int nthreads) { return 3 * T * (long)sizeof(int64_t) * (nthreads > 0 ? nthreads : 1); }

/* ------------------------------------------------------------------ attention, AVX2 */

#if defined(__AVX2__)
/* int16 operands, vpmaddwd (exact: each pair of int16 products fits int32) on layouts prepared once
 * per layer: for head h, kt[h][c2][j] = (k[j][2 c2], k[j][2 c2 + 1]) and v2[h][j2][c] =
 * (v[2 j2][c], v[2 j2 + 1][c]), true values, zero past dk and T; per query row the scores of 8 keys
 * at a time, the softmax (i-exp on 8 lanes, below), and the context of 8 channels at a time. */
#define NPAD(n, k) (((n) + (k) - 1) / (k) * (k))
/* keys per score vector and channels per context vector: the avx512 family's zmm hold 16 int32 */
#if defined(ASRQ_AVX512)
#define KW 16
#else
#define KW 8
#endif

static inline int32_t pack16(int a, int b) { return (int32_t)((uint32_t)(uint16_t)(int16_t)a | ((uint32_t)(uint16_t)(int16_t)b << 16)); }

/* i-exp of 8 int32 differences d <= 0 (|d| < 2^31): the scalar iexp's integers. x' = clamp(d, q_min, 0)
 * rescaled (|x'| < 2^21), z = (-x' R) >> s via two vpmuludq (R < 2^23: the product < 2^44),
 * t = x' + z q_ln2 + q_b in (0, 2^15), P = t^2 + q_c < 2^31, e = P >> z (0 for z >= 32) */
static inline __m256i iexp8(__m256i d, const asrq_exp *p) {
    const int32_t qmin = p->q_min < INT32_MIN ? INT32_MIN : (int32_t)p->q_min;
    __m256i x = _mm256_max_epi32(d, _mm256_set1_epi32(qmin));
    if (p->in_shift >= 0)
        x = _mm256_sll_epi32(x, _mm_cvtsi32_si128((int)p->in_shift));
    else
        x = _mm256_sra_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(1 << (-p->in_shift - 1))),
                             _mm_cvtsi32_si128((int)-p->in_shift));
    const __m256i nx = _mm256_sub_epi32(_mm256_setzero_si256(), x), R = _mm256_set1_epi32((int32_t)p->recip);
    const __m128i s = _mm_cvtsi32_si128((int)p->recip_shift);
    const __m256i ze = _mm256_srl_epi64(_mm256_mul_epu32(nx, R), s);
    const __m256i zo = _mm256_srl_epi64(_mm256_mul_epu32(_mm256_srli_epi64(nx, 32), R), s);
    const __m256i z = _mm256_blend_epi32(ze, _mm256_slli_epi64(zo, 32), 0xAA);
    const __m256i t = _mm256_add_epi32(_mm256_add_epi32(x, _mm256_mullo_epi32(z, _mm256_set1_epi32((int32_t)p->q_ln2))),
                                       _mm256_set1_epi32((int32_t)p->q_b));
    const __m256i P = _mm256_add_epi32(_mm256_mullo_epi32(t, t), _mm256_set1_epi32((int32_t)p->q_c));
    return _mm256_srlv_epi32(P, z);
}

/* probabilities (bytes: out_bits <= 8) of one row from its int32 scores s[0..nv), zero up to n */
#if !defined(ASRQ_AVX512)
static void softmax_row8(const int32_t *s, long n, long nv, const asrq_softmax *p, int32_t *e, uint8_t *prob) {
    memset(prob, 0, (size_t)n);
    if (nv <= 0) return;
    __m256i m8 = _mm256_set1_epi32(s[0]);
    long j8 = 0;
    for (; j8 + 8 <= nv; j8 += 8) m8 = _mm256_max_epi32(m8, _mm256_loadu_si256((const __m256i *)(s + j8)));
    int32_t mm[8];
    _mm256_storeu_si256((__m256i *)mm, m8);
    int32_t m = mm[0];
    for (int i = 1; i < 8; ++i) m = mm[i] > m ? mm[i] : m;
    for (; j8 < nv; ++j8) m = s[j8] > m ? s[j8] : m;
    const __m256i mv = _mm256_set1_epi32(m), lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i sum = _mm256_setzero_si256();
    for (long j = 0; j < nv; j += 8) {
        __m256i ev = iexp8(_mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(s + j)), mv), &p->exp);
        if (j + 8 > nv)   /* lanes past nv: 0 */
            ev = _mm256_and_si256(ev, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(nv - j)), lane));
        _mm256_storeu_si256((__m256i *)(e + j), ev);
        sum = _mm256_add_epi64(sum, _mm256_add_epi64(_mm256_cvtepu32_epi64(_mm256_castsi256_si128(ev)),
                                                     _mm256_cvtepu32_epi64(_mm256_extracti128_si256(ev, 1))));
    }
    int64_t total = _mm256_extract_epi64(sum, 0) + _mm256_extract_epi64(sum, 1) + _mm256_extract_epi64(sum, 2) +
                    _mm256_extract_epi64(sum, 3);
    const int K = p->recip_bits, B = p->out_bits;
    const uint64_t f = ((uint64_t)1 << K) / (uint64_t)(total > 1 ? total : 1);
    /* e f <= 2^K (e <= total): e f = (e fh) 2^32 + e fl, both parts below 2^62 */
    const __m256i fl = _mm256_set1_epi64x((long long)(f & 0xFFFFFFFFu)), fh = _mm256_set1_epi64x((long long)(f >> 32));
    const __m256i half = _mm256_set1_epi64x((long long)1 << (K - B - 1)), top = _mm256_set1_epi64x((1 << B) - 1);
    const __m128i sh = _mm_cvtsi32_si128(K - B);
    const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    for (long j = 0; j < nv; j += 8) {   /* e is 0 from nv to the next multiple of 8 */
        __m256i v[2];
        for (int h = 0; h < 2; ++h) {
            const __m256i e4 = _mm256_cvtepu32_epi64(_mm_loadu_si128((const __m128i *)(e + j + 4 * h)));
            v[h] = _mm256_add_epi64(_mm256_slli_epi64(_mm256_mul_epu32(e4, fh), 32), _mm256_mul_epu32(e4, fl));
            v[h] = _mm256_srl_epi64(_mm256_add_epi64(v[h], half), sh);
            v[h] = _mm256_blendv_epi8(v[h], top, _mm256_cmpgt_epi64(v[h], top));
            v[h] = _mm256_permutevar8x32_epi32(v[h], idx);   /* the 4 values in the low 128 bits */
        }
        const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(v[0]), _mm256_castsi256_si128(v[1]));
        const __m128i b8 = _mm_packus_epi16(w16, w16);
        if (j + 8 <= n) _mm_storel_epi64((__m128i *)(prob + j), b8);
        else {
            uint8_t t8[8];
            _mm_storel_epi64((__m128i *)t8, b8);
            memcpy(prob + j, t8, (size_t)(n - j));
        }
    }
}

#endif

#if defined(ASRQ_AVX512)
/* iexp8 and softmax_row8 on 16 int32 / 8 int64 lanes of AVX-512 F: the same integers */
static inline __m512i iexp16(__m512i d, const asrq_exp *p) {
    const int32_t qmin = p->q_min < INT32_MIN ? INT32_MIN : (int32_t)p->q_min;
    __m512i x = _mm512_max_epi32(d, _mm512_set1_epi32(qmin));
    if (p->in_shift >= 0)
        x = _mm512_sll_epi32(x, _mm_cvtsi32_si128((int)p->in_shift));
    else
        x = _mm512_sra_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(1 << (-p->in_shift - 1))),
                             _mm_cvtsi32_si128((int)-p->in_shift));
    const __m512i nx = _mm512_sub_epi32(_mm512_setzero_si512(), x), R = _mm512_set1_epi32((int32_t)p->recip);
    const __m128i s = _mm_cvtsi32_si128((int)p->recip_shift);
    const __m512i ze = _mm512_srl_epi64(_mm512_mul_epu32(nx, R), s);
    const __m512i zo = _mm512_srl_epi64(_mm512_mul_epu32(_mm512_srli_epi64(nx, 32), R), s);
    const __m512i z = _mm512_mask_blend_epi32((__mmask16)0xAAAA, ze, _mm512_slli_epi64(zo, 32));
    const __m512i t = _mm512_add_epi32(_mm512_add_epi32(x, _mm512_mullo_epi32(z, _mm512_set1_epi32((int32_t)p->q_ln2))),
                                       _mm512_set1_epi32((int32_t)p->q_b));
    const __m512i P = _mm512_add_epi32(_mm512_mullo_epi32(t, t), _mm512_set1_epi32((int32_t)p->q_c));
    return _mm512_srlv_epi32(P, z);
}

static void softmax_row16(const int32_t *s, long n, long nv, const asrq_softmax *p, int32_t *e, uint8_t *prob) {
    memset(prob, 0, (size_t)n);
    if (nv <= 0) return;
    __m512i m16 = _mm512_set1_epi32(s[0]);
    long j16 = 0;
    for (; j16 + 16 <= nv; j16 += 16) m16 = _mm512_max_epi32(m16, _mm512_loadu_si512((const void *)(s + j16)));
    int32_t m = _mm512_reduce_max_epi32(m16);
    for (; j16 < nv; ++j16) m = s[j16] > m ? s[j16] : m;
    const __m512i mv = _mm512_set1_epi32(m);
    __m512i sum = _mm512_setzero_si512();
    for (long j = 0; j < nv; j += 16) {
        __m512i ev = iexp16(_mm512_sub_epi32(_mm512_loadu_si512((const void *)(s + j)), mv), &p->exp);
        if (j + 16 > nv) ev = _mm512_maskz_mov_epi32((__mmask16)((1u << (nv - j)) - 1), ev);   /* lanes past nv: 0 */
        _mm512_storeu_si512((void *)(e + j), ev);
        sum = _mm512_add_epi64(sum, _mm512_add_epi64(_mm512_cvtepu32_epi64(_mm512_castsi512_si256(ev)),
                                                     _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(ev, 1))));
    }
    const int64_t total = _mm512_reduce_add_epi64(sum);
    const int K = p->recip_bits, B = p->out_bits;
    const uint64_t f = ((uint64_t)1 << K) / (uint64_t)(total > 1 ? total : 1);
    /* e f <= 2^K (e <= total): e f = (e fh) 2^32 + e fl, both parts below 2^62 */
    const __m512i fl = _mm512_set1_epi64((long long)(f & 0xFFFFFFFFu)), fh = _mm512_set1_epi64((long long)(f >> 32));
    const __m512i half = _mm512_set1_epi64((long long)1 << (K - B - 1)), top = _mm512_set1_epi64((1 << B) - 1);
    const __m128i sh = _mm_cvtsi32_si128(K - B);
    for (long j = 0; j < nv; j += 8) {   /* e is 0 from nv to the next multiple of 16 */
        const __m512i e8 = _mm512_cvtepu32_epi64(_mm256_loadu_si256((const __m256i *)(e + j)));
        __m512i v = _mm512_add_epi64(_mm512_slli_epi64(_mm512_mul_epu32(e8, fh), 32), _mm512_mul_epu32(e8, fl));
        v = _mm512_min_epu64(_mm512_srl_epi64(_mm512_add_epi64(v, half), sh), top);
        const __m128i b8 = _mm512_cvtepi64_epi8(v);
        if (j + 8 <= n) _mm_storel_epi64((__m128i *)(prob + j), b8);
        else {
            uint8_t t8[8];
            _mm_storel_epi64((__m128i *)t8, b8);
            memcpy(prob + j, t8, (size_t)(n - j));
        }
    }
}
#define SOFTMAX_ROW softmax_row16
#else
#define SOFTMAX_ROW softmax_row8
#endif

/* per thread: the scores of QB query rows, exponentials (then the split probabilities), the QB
 * queries, the probabilities, rel_pos's int64 scores */
#define QB 4
#define ROW_INTS(T, dk2) ((QB + 1) * NPAD(T, 32) + QB * ((dk2) + 8) + NPAD(T, 32) / 4 + 8 + 2 * NPAD(T, 8))

/* rel_pos: s[j] <- max(rescale(s[j], Mc, Sc) + rescale(p_j, Mp, Sp) - max, q_min) for j < nv, with
 * p_j = sum_c qv[c] pos[c][(L-1) - i + j] from pt (column m = off + j); tmp: int32 scratch */
static void rel_scores(const asrq_attn *a, const uint8_t *qvi, const int32_t *pth, long P, long off, long dk, long dk2,
                       long nv, int32_t *s, int64_t *s64, int32_t *tmp) {
    int32_t qp[40];
    for (long c2 = 0; c2 < dk2; ++c2) qp[c2] = pack16((int)qvi[2 * c2] - 128, 2 * c2 + 1 < dk ? (int)qvi[2 * c2 + 1] - 128 : 0);
    for (long j = 0; j < nv; j += 8) {
        __m256i acc = _mm256_setzero_si256();
        for (long c2 = 0; c2 < dk2; ++c2)
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_set1_epi32(qp[c2]),
                                                          _mm256_loadu_si256((const __m256i *)(pth + c2 * P + off + j))));
        _mm256_storeu_si256((__m256i *)(tmp + j), acc);
    }
    const __m256i Mc = _mm256_set1_epi32((int32_t)a->Mc), Mp = _mm256_set1_epi32((int32_t)a->Mp);
    const __m256i hc = _mm256_set1_epi64x(((long long)1 << a->Sc) >> 1), hp = _mm256_set1_epi64x(((long long)1 << a->Sp) >> 1);
    for (long j = 0; j < nv; j += 4) {
        const __m256i c = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(s + j)));
        const __m256i p = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(tmp + j)));
        const __m256i v = _mm256_add_epi64(sra64(_mm256_add_epi64(_mm256_mul_epi32(c, Mc), hc), (int)a->Sc),
                                           sra64(_mm256_add_epi64(_mm256_mul_epi32(p, Mp), hp), (int)a->Sp));
        _mm256_storeu_si256((__m256i *)(s64 + j), v);
    }
    int64_t m = s64[0];
    for (long j = 1; j < nv; ++j) m = s64[j] > m ? s64[j] : m;
    const int64_t qmin = a->sm.exp.q_min;
    for (long j = 0; j < nv; ++j) {
        const int64_t d = s64[j] - m;
        s[j] = (int32_t)(d < qmin ? qmin : d);
    }
}

/* the context of one query row: ctx[c] = sum_j prob[j] v[j][c] (exact in int32: 255 * 128 * T < 2^31),
 * from v4[j4][c] (4 keys' bytes of channel c), dk8 channels, NQ vectors of KW; with the vector count a
 * constant the accumulators stay in registers */
#if defined(ASRQ_AVX512)
/* vpdpbusd: the u8 probabilities times the s8 values, 4 keys per int32 lane, no saturation */
static inline __attribute__((always_inline)) void context_nq(const uint8_t *prob, const int32_t *vh, long nv,
                                                             long dk8, int NQ, int32_t *ctx) {
    __m512i acc[4];
    for (int q = 0; q < NQ; ++q) acc[q] = _mm512_setzero_si512();
    for (long j4 = 0; 4 * j4 < nv; ++j4) {
        int32_t pq;
        memcpy(&pq, prob + 4 * j4, 4);
        const __m512i b = _mm512_set1_epi32(pq);
        for (int q = 0; q < NQ; ++q)
            acc[q] = _mm512_dpbusd_epi32(acc[q], b, _mm512_loadu_si512((const void *)(vh + j4 * dk8 + 16 * q)));
    }
    for (int q = 0; q < NQ; ++q) _mm512_storeu_si512((void *)(ctx + 16 * q), acc[q]);
}

static void context_row(const uint8_t *prob, const int32_t *vh, long nv, long dk8, uint8_t *pa, const uint8_t *v,
                        long cp, long dk, int32_t *ctx) {
    (void)pa, (void)v, (void)cp, (void)dk;
    switch (dk8 / 16) {
    case 1: context_nq(prob, vh, nv, dk8, 1, ctx); break;
    case 2: context_nq(prob, vh, nv, dk8, 2, ctx); break;
    case 3: context_nq(prob, vh, nv, dk8, 3, ctx); break;
    default: context_nq(prob, vh, nv, dk8, 4, ctx); break;
    }
}
#else
/* p = pa + 128 [p >= 128] with pa = p & 127, so that vpmaddubsw's pairs pa v stay below
 * 2 * 127 * 128 < 2^15; at most 2 probabilities of a row reach 128 (each is then about half the
 * row's sum or more), added one by one from the row's values v (channel stride 1, row stride cp) */
static inline __attribute__((always_inline)) void context_nq(const uint8_t *pa, const int32_t *vh, long nv,
                                                             long dk8, int NQ, int32_t *ctx) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[8];
    for (int q = 0; q < NQ; ++q) acc[q] = _mm256_setzero_si256();
    for (long j4 = 0; 4 * j4 < nv; ++j4) {
        int32_t pq;
        memcpy(&pq, pa + 4 * j4, 4);
        const __m256i b = _mm256_set1_epi32(pq);
        for (int q = 0; q < NQ; ++q)
            acc[q] = _mm256_add_epi32(acc[q], _mm256_madd_epi16(_mm256_maddubs_epi16(b,
                    _mm256_loadu_si256((const __m256i *)(vh + j4 * dk8 + 8 * q))), ones));
    }
    for (int q = 0; q < NQ; ++q) _mm256_storeu_si256((__m256i *)(ctx + 8 * q), acc[q]);
}

static void context_row(const uint8_t *prob, const int32_t *vh, long nv, long dk8, uint8_t *pa, const uint8_t *v,
                        long cp, long dk, int32_t *ctx) {
    long big[8], nbig = 0;
    for (long j = 0; j < nv; j += 32) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)(prob + j));   /* prob: zero past nv */
        _mm256_storeu_si256((__m256i *)(pa + j), _mm256_and_si256(x, _mm256_set1_epi8(127)));
        for (unsigned m = (unsigned)_mm256_movemask_epi8(x); m && nbig < 8; m &= m - 1)
            big[nbig++] = j + __builtin_ctz(m);
    }
    switch (dk8 / 8) {
    case 1: context_nq(pa, vh, nv, dk8, 1, ctx); break;
    case 2: context_nq(pa, vh, nv, dk8, 2, ctx); break;
    case 3: context_nq(pa, vh, nv, dk8, 3, ctx); break;
    case 4: context_nq(pa, vh, nv, dk8, 4, ctx); break;
    case 5: context_nq(pa, vh, nv, dk8, 5, ctx); break;
    case 6: context_nq(pa, vh, nv, dk8, 6, ctx); break;
    case 7: context_nq(pa, vh, nv, dk8, 7, ctx); break;
    default: context_nq(pa, vh, nv, dk8, 8, ctx); break;
    }
    for (long t = 0; t < nbig; ++t)
        for (long c = 0; c < dk; ++c) ctx[c] += 128 * ((int)v[big[t] * cp + c] - 128);
}
#endif

static long attention_scratch_avx2(long T, long H, long dk, int nthreads) {
    const long Tp = NPAD(T, KW), dk2 = NPAD(dk, 2) / 2, dk8 = NPAD(dk, KW);
    return (long)sizeof(int32_t) * (H * dk2 * Tp + H * (Tp / 4) * dk8 + H * dk2 * NPAD(2 * T, 8) +
                                    (long)(nthreads > 0 ? nthreads : 1) * ROW_INTS(T, dk2));
}

static void attention_avx2(const asrq_attn *a, const uint8_t *q, const uint8_t *k, const uint8_t *v, const uint8_t *qv,
                           long cp, long T, long L, uint8_t *out, long ocp, void *scratch, int nthreads) {
    /* rel_pos: the int64 sum of the two rescaled scores, narrowed to int32 after subtracting the row max
     * and clamping at q_min (exact where q_min >= -2^31; the rescales on 8 lanes need M < 2^31) */
    const int rel = a->pos != NULL;
    if (a->sm.out_bits > 8 || a->dk > 64 ||
        (rel && (a->sm.exp.q_min < INT32_MIN || a->Mc >= ((int64_t)1 << 31) || a->Mp >= ((int64_t)1 << 31)))) {
        attention_scalar(a, q, k, v, qv, cp, T, L, out, ocp, scratch, nthreads);   /* the general case */
        return;
    }
    const long H = a->heads, dk = a->dk, Tp = NPAD(T, KW), dk2 = NPAD(dk, 2) / 2, dk8 = NPAD(dk, KW);
    const long nvalid = L < T ? L : T, P = NPAD(2 * T, 8);   /* rel_pos: the 2T - 1 distances' columns */
    int32_t *kt = (int32_t *)scratch, *v4 = kt + H * dk2 * Tp, *pt = v4 + H * (Tp / 4) * dk8;
    int32_t *rows = pt + (rel ? H * dk2 * P : 0);
    (void)nthreads;
#pragma omp parallel num_threads(nthreads)
    {
#pragma omp for collapse(2) schedule(static)
        for (long h = 0; h < H; ++h)
            for (long j = 0; j < Tp; ++j)
                for (long c2 = 0; c2 < dk2; ++c2) {
                    const long c = 2 * c2;
                    const int a0 = j < T ? (int)k[j * cp + h * dk + c] - 128 : 0;
                    const int a1 = j < T && c + 1 < dk ? (int)k[j * cp + h * dk + c + 1] - 128 : 0;
                    kt[(h * dk2 + c2) * Tp + j] = pack16(a0, a1);
                }
#pragma omp for collapse(2) schedule(static)
        for (long h = 0; h < H; ++h)
            for (long j4 = 0; j4 < Tp / 4; ++j4)
                for (long c = 0; c < dk8; ++c) {
                    uint32_t w = 0;
                    for (int i = 0; i < 4; ++i) {
                        const long j = 4 * j4 + i;
                        const int x = j < T && c < dk ? (int)v[j * cp + h * dk + c] - 128 : 0;
                        w |= (uint32_t)(uint8_t)(int8_t)x << (8 * i);
                    }
                    v4[(h * (Tp / 4) + j4) * dk8 + c] = (int32_t)w;
                }
        if (rel) {   /* pt[h][c2][m] = the pos table's columns of distance (T - 1) - m, channel pairs */
            const long L2 = 2 * a->max_len - 1;
#pragma omp for collapse(2) schedule(static)
            for (long h = 0; h < H; ++h)
                for (long c2 = 0; c2 < dk2; ++c2)
                    for (long m = 0; m < P; ++m) {
                        const long col = a->max_len - T + m, c = h * dk + 2 * c2;   /* (L-1) - (T-1) + m */
                        const int a0 = m < 2 * T - 1 ? a->pos[c * L2 + col] : 0;
                        const int a1 = m < 2 * T - 1 && 2 * c2 + 1 < dk ? a->pos[(c + 1) * L2 + col] : 0;
                        pt[(h * dk2 + c2) * P + m] = pack16(a0, a1);
                    }
        }
        const long Tq = NPAD(T, 32);
#ifdef _OPENMP
        int32_t *mine = rows + (long)omp_get_thread_num() * ROW_INTS(T, dk2);
#else
        int32_t *mine = rows;
#endif
        int32_t *s4 = mine, *e = mine + QB * Tq, *qp = e + Tq;
        uint8_t *prob = (uint8_t *)(qp + QB * (dk2 + 8));
        int64_t *s64 = (int64_t *)(prob + Tq + 32);
        const long blocks = (T + QB - 1) / QB;
#pragma omp for collapse(2) schedule(static)
        for (long h = 0; h < H; ++h) {
            for (long ib = 0; ib < blocks; ++ib) {
            /* the scores of QB query rows at once: each load of the keys serves all of them */
            const long i0 = ib * QB, nr = T - i0 < QB ? T - i0 : QB;
            const long nvb = i0 < L ? nvalid : 0;   /* padded queries: every probability 0 */
            for (long r = 0; r < nr; ++r) {
                const uint8_t *qi = q + (i0 + r) * cp + h * dk;
                for (long c2 = 0; c2 < dk2; ++c2)
                    qp[r * (dk2 + 8) + c2] = pack16((int)qi[2 * c2] - 128, 2 * c2 + 1 < dk ? (int)qi[2 * c2 + 1] - 128 : 0);
            }
            const int32_t *kh = kt + h * dk2 * Tp;
#if defined(ASRQ_AVX512)
            for (long j = 0; j < nvb; j += 16) {   /* vpdpwssd: vpmaddwd's pair sums, added in one step */
                __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
                for (long c2 = 0; c2 < dk2; ++c2) {
                    const __m512i kv = _mm512_loadu_si512((const void *)(kh + c2 * Tp + j));
                    a0 = _mm512_dpwssd_epi32(a0, _mm512_set1_epi32(qp[c2]), kv);
                    a1 = _mm512_dpwssd_epi32(a1, _mm512_set1_epi32(qp[(dk2 + 8) + c2]), kv);
                    a2 = _mm512_dpwssd_epi32(a2, _mm512_set1_epi32(qp[2 * (dk2 + 8) + c2]), kv);
                    a3 = _mm512_dpwssd_epi32(a3, _mm512_set1_epi32(qp[3 * (dk2 + 8) + c2]), kv);
                }
                _mm512_storeu_si512((void *)(s4 + j), a0);
                _mm512_storeu_si512((void *)(s4 + Tq + j), a1);
                _mm512_storeu_si512((void *)(s4 + 2 * Tq + j), a2);
                _mm512_storeu_si512((void *)(s4 + 3 * Tq + j), a3);
            }
#else
            for (long j = 0; j < nvb; j += 8) {
                __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
                for (long c2 = 0; c2 < dk2; ++c2) {
                    const __m256i kv = _mm256_loadu_si256((const __m256i *)(kh + c2 * Tp + j));
                    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_set1_epi32(qp[c2]), kv));
                    a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_set1_epi32(qp[(dk2 + 8) + c2]), kv));
                    a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_set1_epi32(qp[2 * (dk2 + 8) + c2]), kv));
                    a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_set1_epi32(qp[3 * (dk2 + 8) + c2]), kv));
                }
                _mm256_storeu_si256((__m256i *)(s4 + j), a0);
                _mm256_storeu_si256((__m256i *)(s4 + Tq + j), a1);
                _mm256_storeu_si256((__m256i *)(s4 + 2 * Tq + j), a2);
                _mm256_storeu_si256((__m256i *)(s4 + 3 * Tq + j), a3);
            }
#endif
            for (long r = 0; r < nr; ++r) {
                const long i = i0 + r, nv = i < L ? nvalid : 0;
                int32_t *s = s4 + r * Tq;
                if (rel && nv > 0) rel_scores(a, qv + i * cp + h * dk, pt + h * dk2 * P, P, T - 1 - i, dk, dk2, nv, s,
                                              s64, e);
                SOFTMAX_ROW(s, Tq, nv, &a->sm, e, prob);
                int32_t ctx[64];
                context_row(prob, v4 + h * (Tp / 4) * dk8, nv, dk8, (uint8_t *)e, v + h * dk, cp, dk, ctx);
                uint8_t *o = out + i * ocp + h * dk;
                for (long c = 0; c < dk; ++c) {
                    const long kk = a->per_channel ? h * dk + c : 0;
                    int64_t y = rescale64(ctx[c], a->M[kk], a->S[kk]);
                    y = y < a->lo ? a->lo : (y > a->hi ? a->hi : y);
                    o[c] = (uint8_t)(y + a->off_out);
                }
            }
            }
        }
    }
}

static long attention_scratch(long T, long H, long dk, int nthreads) {
    const long a = attention_scratch_avx2(T, H, dk, nthreads), b = attention_scratch_scalar(T, nthreads);
    return a > b ? a : b;
}

const asrq_ops_table OPS_TABLE = {lut_rows, glu, layernorm, attention_avx2, attention_scratch};
#else
static long attention_scratch(long T, long H, long dk, int nthreads) {
    (void)H, (void)dk;
    return attention_scratch_scalar(T, nthreads);
}

const asrq_ops_table OPS_TABLE = {lut_rows, glu, layernorm, attention_scalar, attention_scratch};
#endif

#if defined(ASRQ_PORTABLE)
void asrq_im2col(const uint8_t *x, long xrow, long F, long pstride, long C, long T, uint8_t *out, long ocp, long T2,
                 long F2, int kT, int kF, int sT, int sF, int pT, int pF, int off, int nthreads) {
    (void)nthreads;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (long t2 = 0; t2 < T2; ++t2)
        for (long f2 = 0; f2 < F2; ++f2) {
            uint8_t *row = out + (t2 * F2 + f2) * ocp;
            for (int i = 0; i < kT; ++i)
                for (int j = 0; j < kF; ++j) {
                    const long t = t2 * sT + i - pT, f = f2 * sF + j - pF;
                    uint8_t *dst = row + (i * kF + j) * C;
                    if (t >= 0 && t < T && f >= 0 && f < F)
                        memcpy(dst, x + t * xrow + f * pstride, (size_t)C);
                    else
                        memset(dst, off, (size_t)C);
                }
            memset(row + kT * kF * C, off, (size_t)(ocp - kT * kF * C));
        }
}
#endif
