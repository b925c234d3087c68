/* Integer kernels of the intasr C runtime (asrq_kernels.h explains the layout).
 *
 * This file is compiled once per kernel family, each time with that family's instruction set
 * (the Makefile: -DASRQ_FAMILY_<name> plus its -m flags), and each compilation defines one
 * asrq_family table. The portable compilation also holds the dispatcher: asrq_select_isa picks,
 * at load, $ASRQ_ISA or the best family this CPU runs (__builtin_cpu_supports, which also checks
 * that the OS saves the registers), so one build runs on any x86-64.
 *
 *   avx512-vnni  vpdpbusd on zmm: 64 u8 x s8 multiply-adds per instruction, int32 accumulators
 *   avx-vnni     the same on ymm (32 per instruction)
 *   avx2         no VNNI: vpmaddubsw on a 6-bit split of the activations (below), vpmaddwd for
 *                depthwise convs
 *   portable     plain C loops (no intrinsics: also the no-FPU build)
 * vpdpbusd accumulates u8 x s8 products in int32 without saturation, so the VNNI and portable
 * families give the same integers as long as |acc| < 2^31, which the exporter proves per conv from
 * the weights. Requantization is fused into the producing kernel: each tile of int32 accumulators
 * is scaled, summed over the group's terms (residual branches), offset, clamped and stored while
 * in L1. Signed right shifts of negative int64 are arithmetic shifts (floor) on every compiler we
 * target (gcc, clang); the exporter's tests check the integers against the NumPy reference.
 *
 * The AVX2 family, and why it is exact. AVX2 has no VNNI; its u8 x s8 instruction, vpmaddubsw,
 * adds each pair of products into int16 *with saturation*: with u in [0, 255] and int8 weights a
 * pair reaches 2 * 255 * 128 = 65280, so it is not exact as such (onnxruntime's U8S8 kernels use
 * it and are not). vpmaddwd on int16 is exact but does no more multiply-adds per instruction than
 * a float32 FMA. Here each conv input u (stored, in [0, 255]) is split once per layer as
 *     u = a + gamma + 2^b d,   a = (u - gamma) mod 2^b,   d = floor((u - gamma) / 2^b)
 * (the exporter's gamma: 128 - 2^(b-1) for signed inputs, off = 128, so that a covers y in
 * [-2^(b-1), 2^(b-1)); 0 for unsigned ones). Then sum w u = sum w a + gamma rowsum(w) + sum 2^b d w:
 *   * sum w a: GEMMs take b = 6: two vpmaddubsw (4 products, |a w| <= 63 * 128) added in int16 hold
 *     |sum| <= 4 * 63 * 128 = 32256 < 2^15, so no pair saturates and the int16 sum cannot wrap, for
 *     any int8 weights and any input; vpmaddwd by ones then sums 8 products into int32. Depthwise
 *     convs take b = 7 on the x4 copy: one vpmaddubsw, pairs <= 2 * 127 * 128 = 32512 < 2^15.
 *   * gamma rowsum(w) is a constant: the exporter folds it into the requantization constant
 *     (Cs = (bias - (off - gamma) rowsum) M + 2^(S-1), checked to fit int64 with the rest).
 *   * the rare inputs outside the window (d != 0: for b = 6, |y| >= 32 on signed inputs, y >= 64 on
 *     unsigned ones) are listed per input row when the input is split ("tails"), and each adds
 *     2^b d w to the accumulators of the outputs that read it.
 * Every partial sum is a sum of terms w (u - gamma), w a or 0 over the inputs, each within the range
 * of w (u - gamma), which holds 0, so |acc| stays within the interval the exporter proves < 2^31.
 * The sum is the same integer whatever the order, so the AVX2 family's output equals the others'
 * bit for bit (tests/test_c_runtime.py runs each family against the NumPy reference).
 */
#include "asrq_kernels.h"

#include <stdlib.h>
#include <string.h>

#include "asrq_family.h"
#include "asrq_ops.h"

extern const asrq_ops_table OPS_TABLE;

#define R ASRQ_TILE_ROWS

static inline int32_t ld32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static long align64l(long n) { return (n + 63) & ~63L; }

/* an identity term (a residual skip): the accumulator is the stored input itself */
static void ident_tile(const asrq_term *t, long t0, long ob, int32_t *acc, int n) {
    for (int r = 0; r < n; ++r) {
        const uint8_t *x = t->x + (t0 + r + t->row_off) * t->cp_in + ob * 64;
        for (int c = 0; c < 64; ++c) acc[r * 64 + c] = x[c];
    }
}

/* x4[r][c][i] = x[r + i*dil][c], i = 0..3: one 32-bit lane holds four taps of one channel (the
 * layout a u8 x s8 dot product of 4 wants), for the rows the depthwise tiles read */
static long x4_rows(long T_out, long stride, long row_off, long taps, long dil) {
    return (T_out - 1) * stride + row_off + 4 * (taps - 1) * dil + 1;
}

/* ------------------------------------------------------------------ VNNI and portable tiles: int32 acc[rows][64] */

#if defined(ASRQ_AVX512)
/* n rows and the first nq 16-channel slices of output block ob, both compile-time constants (the
 * accumulators stay in registers); the slices past the real output channels (zero weights) and
 * the input channels past the real ones (zero weights) are skipped: their products are 0, and the
 * skipped slices' accumulators are stored as the 0 they would hold */
static inline __attribute__((always_inline)) void gemm_acc_n(const asrq_term *t, long t0, long ob, __m512i a[R][4],
                                                             const int n, const int nq) {
    for (int r = 0; r < n; ++r)
        for (int q = 0; q < 4; ++q) a[r][q] = _mm512_setzero_si512();
    const long xstep = t->stride * t->cp_in, kstep = t->dil * t->cp_in, cin4 = t->cin4, used = (t->cin + 3) / 4;
    const uint8_t *x0 = t->x + (t0 * t->stride + t->row_off) * t->cp_in;
    const int8_t *wp = t->w + ob * t->taps * cin4 * 256;
    for (long k = 0; k < t->taps; ++k) {
        const uint8_t *xk = x0 + k * kstep;
        const int8_t *wk = wp + k * cin4 * 256;
        for (long c = 0; c < used; ++c) {
            __m512i w[4];
            for (int q = 0; q < nq; ++q) w[q] = _mm512_load_si512((const void *)(wk + c * 256 + q * 64));
            for (int r = 0; r < n; ++r) {
                const __m512i b = _mm512_set1_epi32(ld32(xk + r * xstep + c * 4));
                for (int q = 0; q < nq; ++q) a[r][q] = _mm512_dpbusd_epi32(a[r][q], b, w[q]);
            }
        }
    }
}

static inline __attribute__((always_inline)) void dw_acc_n(const asrq_term *t, const uint8_t *x4, long t0, long ob,
                                                           __m512i a[R][4], const int n, const int nq) {
    for (int r = 0; r < n; ++r)
        for (int q = 0; q < 4; ++q) a[r][q] = _mm512_setzero_si512();
    const long row = 4 * t->cp_in, xstep = t->stride * row, jstep = 4 * t->dil * row;
    const uint8_t *x0 = x4 + (t0 * t->stride + t->row_off) * row + ob * 256;
    const int8_t *wp = t->w + ob * t->taps * 256;
    for (long j = 0; j < t->taps; ++j) {
        const uint8_t *xj = x0 + j * jstep;
        __m512i w[4];
        for (int q = 0; q < nq; ++q) w[q] = _mm512_load_si512((const void *)(wp + j * 256 + q * 64));
        for (int r = 0; r < n; ++r)
            for (int q = 0; q < nq; ++q)
                a[r][q] = _mm512_dpbusd_epi32(a[r][q], _mm512_loadu_si512((const void *)(xj + r * xstep + q * 64)),
                                              w[q]);
    }
}

static inline __attribute__((always_inline)) void store_acc(__m512i a[R][4], const int n, int32_t *acc) {
    for (int r = 0; r < n; ++r)
        for (int q = 0; q < 4; ++q) _mm512_storeu_si512((void *)(acc + r * 64 + q * 16), a[r][q]);
}

static inline __attribute__((always_inline)) void gemm_tile_n(const asrq_term *t, long t0, long ob, int32_t *acc,
                                                              const int n, const int nq) {
    __m512i a[R][4];
    gemm_acc_n(t, t0, ob, a, n, nq);
    store_acc(a, n, acc);
}

static inline __attribute__((always_inline)) void dw_tile_n(const asrq_term *t, const uint8_t *x4, long t0,
                                                            long ob, int32_t *acc, const int n, const int nq) {
    __m512i a[R][4];
    dw_acc_n(t, x4, t0, ob, a, n, nq);
    store_acc(a, n, acc);
}

/* The int32-lane requantization of 16 channels of a fast32 term (asrq_kernels.h):
 * hi32(x * M + C) >> (S - 32) = floor((x * M + C) / 2^S), M and C permuted once into even and odd
 * channels (vpmuldq reads the low int32 of each int64 lane: the even channels of x, then the odd
 * ones shifted down). Used from memory (requant32_vnni) and from registers (store_fused32). */
typedef struct {
    __m512i me, mo, ke, ko, s;
} rescale16;

static inline __attribute__((always_inline)) rescale16 rescale16_at(const int64_t *M, const int64_t *C,
                                                                    const int64_t *S) {
    const __m512i ev = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), od = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
    const __m512i m0 = _mm512_loadu_si512((const void *)M), m1 = _mm512_loadu_si512((const void *)(M + 8));
    const __m512i k0 = _mm512_loadu_si512((const void *)C), k1 = _mm512_loadu_si512((const void *)(C + 8));
    rescale16 k;
    k.me = _mm512_permutex2var_epi64(m0, ev, m1);
    k.mo = _mm512_permutex2var_epi64(m0, od, m1);
    k.ke = _mm512_permutex2var_epi64(k0, ev, k1);
    k.ko = _mm512_permutex2var_epi64(k0, od, k1);
    k.s = _mm512_sub_epi32(
        _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_loadu_si512((const void *)S))),
                           _mm512_cvtepi64_epi32(_mm512_loadu_si512((const void *)(S + 8))), 1),
        _mm512_set1_epi32(32));
    return k;
}

static inline __attribute__((always_inline)) __m512i rescale16_apply(__m512i x, const rescale16 *k) {
    const __m512i pe = _mm512_add_epi64(_mm512_mul_epi32(x, k->me), k->ke);
    const __m512i po = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(x, 32), k->mo), k->ko);
    return _mm512_srav_epi32(_mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(pe, 32), po), k->s);
}

/* o[i] = clamp(y[i] + post, lo, hi) for 16 channels ([lo, hi] within [0, 255]) */
static inline __attribute__((always_inline)) void store16_u8(uint8_t *o, __m512i y, __m512i post, __m512i lo,
                                                             __m512i hi) {
    _mm_storeu_si128((__m128i *)o, _mm512_cvtepi32_epi8(_mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(y, post),
                                                                                           lo), hi)));
}

/* A group of one group32 term, requantized straight from the accumulator registers and stored as
 * u8: requant32_vnni + store32_u8_vnni without the int32 accumulators' and the rescaled values'
 * round trips through memory; the slices past nq hold 0. */
static inline __attribute__((always_inline)) void store_fused32(__m512i a[R][4], const int n, const int nq,
                                                                const asrq_term *t, long ob, uint8_t *o, long ocp,
                                                                int32_t post, int32_t lo, int32_t hi) {
    const __m512i p = _mm512_set1_epi32(post), l = _mm512_set1_epi32(lo), u = _mm512_set1_epi32(hi);
    for (int q = 0; q < 4; ++q) {
        const long c = ob * 64 + q * 16;
        const rescale16 k = rescale16_at(t->M + c, t->C + c, t->S + c);
        for (int r = 0; r < n; ++r)
            store16_u8(o + r * ocp + q * 16, rescale16_apply(q < nq ? a[r][q] : _mm512_setzero_si512(), &k), p, l, u);
    }
}

static inline __attribute__((always_inline)) void gemm_fused_n(const asrq_term *t, long t0, long ob, uint8_t *o,
                                                               long ocp, int32_t post, int32_t lo, int32_t hi,
                                                               const int n, const int nq) {
    __m512i a[R][4];
    gemm_acc_n(t, t0, ob, a, n, nq);
    store_fused32(a, n, nq, t, ob, o, ocp, post, lo, hi);
}

static inline __attribute__((always_inline)) void dw_fused_n(const asrq_term *t, const uint8_t *x4, long t0, long ob,
                                                             uint8_t *o, long ocp, int32_t post, int32_t lo,
                                                             int32_t hi, const int n, const int nq) {
    __m512i a[R][4];
    dw_acc_n(t, x4, t0, ob, a, n, nq);
    store_fused32(a, n, nq, t, ob, o, ocp, post, lo, hi);
}

#elif defined(ASRQ_AVXVNNI)
static inline __attribute__((always_inline)) void gemm_tile_n(const asrq_term *t, long t0, long ob, int32_t *acc,
                                                              const int n) {
    const long xstep = t->stride * t->cp_in, kstep = t->dil * t->cp_in, cin4 = t->cin4;
    const uint8_t *x0 = t->x + (t0 * t->stride + t->row_off) * t->cp_in;
    const int8_t *wp = t->w + ob * t->taps * cin4 * 256;
    for (int h = 0; h < 4; ++h) {  /* 16 output channels per pass: 6 x 2 ymm accumulators */
        __m256i a[R][2];
        for (int r = 0; r < n; ++r) a[r][0] = a[r][1] = _mm256_setzero_si256();
        for (long k = 0; k < t->taps; ++k) {
            const uint8_t *xk = x0 + k * kstep;
            const int8_t *wk = wp + k * cin4 * 256 + h * 64;
            for (long c = 0; c < cin4; ++c) {
                const __m256i w0 = _mm256_load_si256((const void *)(wk + c * 256));
                const __m256i w1 = _mm256_load_si256((const void *)(wk + c * 256 + 32));
                for (int r = 0; r < n; ++r) {
                    const __m256i b = _mm256_set1_epi32(ld32(xk + r * xstep + c * 4));
                    a[r][0] = _mm256_dpbusd_avx_epi32(a[r][0], b, w0);
                    a[r][1] = _mm256_dpbusd_avx_epi32(a[r][1], b, w1);
                }
            }
        }
        for (int r = 0; r < n; ++r) {
            _mm256_storeu_si256((void *)(acc + r * 64 + h * 16), a[r][0]);
            _mm256_storeu_si256((void *)(acc + r * 64 + h * 16 + 8), a[r][1]);
        }
    }
}

static inline __attribute__((always_inline)) void dw_tile_n(const asrq_term *t, const uint8_t *x4, long t0,
                                                            long ob, int32_t *acc, const int n) {
    const long row = 4 * t->cp_in, xstep = t->stride * row, jstep = 4 * t->dil * row;
    const uint8_t *x0 = x4 + (t0 * t->stride + t->row_off) * row + ob * 256;
    const int8_t *wp = t->w + ob * t->taps * 256;
    for (int h = 0; h < 4; ++h) {
        __m256i a[R][2];
        for (int r = 0; r < n; ++r) a[r][0] = a[r][1] = _mm256_setzero_si256();
        for (long j = 0; j < t->taps; ++j) {
            const uint8_t *xj = x0 + j * jstep + h * 64;
            const __m256i w0 = _mm256_load_si256((const void *)(wp + j * 256 + h * 64));
            const __m256i w1 = _mm256_load_si256((const void *)(wp + j * 256 + h * 64 + 32));
            for (int r = 0; r < n; ++r) {
                a[r][0] = _mm256_dpbusd_avx_epi32(a[r][0], _mm256_loadu_si256((const void *)(xj + r * xstep)), w0);
                a[r][1] = _mm256_dpbusd_avx_epi32(a[r][1], _mm256_loadu_si256((const void *)(xj + r * xstep + 32)), w1);
            }
        }
        for (int r = 0; r < n; ++r) {
            _mm256_storeu_si256((void *)(acc + r * 64 + h * 16), a[r][0]);
            _mm256_storeu_si256((void *)(acc + r * 64 + h * 16 + 8), a[r][1]);
        }
    }
}

#elif defined(ASRQ_PORTABLE)
static void gemm_tile_n(const asrq_term *t, long t0, long ob, int32_t *acc, const int n) {
    const long cin4 = t->cin4;
    const int8_t *wp = t->w + ob * t->taps * cin4 * 256;
    memset(acc, 0, sizeof(int32_t) * 64 * (size_t)n);
    for (int r = 0; r < n; ++r) {
        const uint8_t *xr = t->x + ((t0 + r) * t->stride + t->row_off) * t->cp_in;
        int32_t *ar = acc + r * 64;
        for (long k = 0; k < t->taps; ++k) {
            const uint8_t *xk = xr + k * t->dil * t->cp_in;
            const int8_t *wk = wp + k * cin4 * 256;
            for (long c = 0; c < cin4; ++c)
                for (int o = 0; o < 64; ++o)
                    for (int i = 0; i < 4; ++i) ar[o] += (int32_t)xk[c * 4 + i] * (int32_t)wk[c * 256 + o * 4 + i];
        }
    }
}

static void dw_tile_n(const asrq_term *t, const uint8_t *x4, long t0, long ob, int32_t *acc, const int n) {
    const long row = 4 * t->cp_in;
    const int8_t *wp = t->w + ob * t->taps * 256;
    memset(acc, 0, sizeof(int32_t) * 64 * (size_t)n);
    for (int r = 0; r < n; ++r) {
        const uint8_t *xr = x4 + ((t0 + r) * t->stride + t->row_off) * row + ob * 256;
        int32_t *ar = acc + r * 64;
        for (long j = 0; j < t->taps; ++j) {
            const uint8_t *xj = xr + j * 4 * t->dil * row;
            for (int c = 0; c < 64; ++c)
                for (int i = 0; i < 4; ++i) ar[c] += (int32_t)xj[c * 4 + i] * (int32_t)wp[j * 256 + c * 4 + i];
        }
    }
}
#endif


#if !defined(ASRQ_AVX2)
static void prepare_x4(const asrq_term *t, long T_out, uint8_t *x4, int nthreads) {
    const long rows = x4_rows(T_out, t->stride, t->row_off, t->taps, t->dil), cp = t->cp_in, dil = t->dil;
    const uint8_t *x = t->x;
    (void)nthreads;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (long r = 0; r < rows; ++r) {
        const uint8_t *a = x + r * cp, *b = a + dil * cp, *c = b + dil * cp, *d = c + dil * cp;
        uint8_t *o = x4 + r * cp * 4;
#if defined(ASRQ_AVX512)
        for (long k = 0; k < cp; k += 64) {
            /* interleave the bytes of four rows per channel, then put the 128-bit lanes in order */
            const __m512i ra = _mm512_loadu_si512((const void *)(a + k)), rb = _mm512_loadu_si512((const void *)(b + k));
            const __m512i rc = _mm512_loadu_si512((const void *)(c + k)), rd = _mm512_loadu_si512((const void *)(d + k));
            const __m512i ab_lo = _mm512_unpacklo_epi8(ra, rb), ab_hi = _mm512_unpackhi_epi8(ra, rb);
            const __m512i cd_lo = _mm512_unpacklo_epi8(rc, rd), cd_hi = _mm512_unpackhi_epi8(rc, rd);
            const __m512i q0 = _mm512_unpacklo_epi16(ab_lo, cd_lo), q1 = _mm512_unpackhi_epi16(ab_lo, cd_lo);
            const __m512i q2 = _mm512_unpacklo_epi16(ab_hi, cd_hi), q3 = _mm512_unpackhi_epi16(ab_hi, cd_hi);
            const __m512i t0 = _mm512_shuffle_i32x4(q0, q1, 0x44), t1 = _mm512_shuffle_i32x4(q2, q3, 0x44);
            const __m512i t2 = _mm512_shuffle_i32x4(q0, q1, 0xEE), t3 = _mm512_shuffle_i32x4(q2, q3, 0xEE);
            _mm512_storeu_si512((void *)(o + 4 * k), _mm512_shuffle_i32x4(t0, t1, 0x88));
            _mm512_storeu_si512((void *)(o + 4 * k + 64), _mm512_shuffle_i32x4(t0, t1, 0xDD));
            _mm512_storeu_si512((void *)(o + 4 * k + 128), _mm512_shuffle_i32x4(t2, t3, 0x88));
            _mm512_storeu_si512((void *)(o + 4 * k + 192), _mm512_shuffle_i32x4(t2, t3, 0xDD));
        }
#else
        for (long k = 0; k < cp; ++k) {
            o[4 * k] = a[k];
            o[4 * k + 1] = b[k];
            o[4 * k + 2] = c[k];
            o[4 * k + 3] = d[k];
        }
#endif
    }
}

/* the row count as a compile-time constant, so that the accumulator arrays live in registers */
#define DISPATCH(call_n, n)     \
    switch (n) {                \
    case 1: call_n(1); break;   \
    case 2: call_n(2); break;   \
    case 3: call_n(3); break;   \
    case 4: call_n(4); break;   \
    case 5: call_n(5); break;   \
    default: call_n(6); break;  \
    }

#if defined(ASRQ_AVX512)
/* and the count of 16-channel slices of block ob that hold real output channels */
#define SLICES(call, k)                   \
    switch (nq) {                         \
    case 1: call(k, 1); break;            \
    case 2: call(k, 2); break;            \
    case 3: call(k, 3); break;            \
    default: call(k, 4); break;           \
    }
#define DW_NQ(k, q) dw_tile_n(t, x4, t0, ob, acc, k, q)
#define GEMM_NQ(k, q) gemm_tile_n(t, t0, ob, acc, k, q)
#define DW_N(k) SLICES(DW_NQ, k)
#define GEMM_N(k) SLICES(GEMM_NQ, k)
#else
#define DW_N(k) dw_tile_n(t, x4, t0, ob, acc, k)
#define GEMM_N(k) gemm_tile_n(t, t0, ob, acc, k)
#endif

static void tile(const asrq_term *t, const uint8_t *x4, long t0, long ob, int32_t *acc, int n) {
    if (t->kind == ASRQ_IDENT) {
        ident_tile(t, t0, ob, acc, n);
        return;
    }
#if defined(ASRQ_AVX512)
    const long left = t->cout - ob * 64;
    const int nq = left >= 64 ? 4 : (int)((left + 15) / 16);
#endif
    if (t->kind == ASRQ_DW) {
        DISPATCH(DW_N, n)
    } else {
        DISPATCH(GEMM_N, n)
    }
}

#if defined(ASRQ_AVX512)
#define DWF_NQ(k, q) dw_fused_n(t, x4, t0, ob, o, ocp, post, lo, hi, k, q)
#define GEMMF_NQ(k, q) gemm_fused_n(t, t0, ob, o, ocp, post, lo, hi, k, q)
#define DWF_N(k) SLICES(DWF_NQ, k)
#define GEMMF_N(k) SLICES(GEMMF_NQ, k)

/* one tile of a one-term group32 group, requantized and stored as u8 (store_fused32) */
static void tile_fused32(const asrq_term *t, const uint8_t *x4, long t0, long ob, uint8_t *o, long ocp, int32_t post,
                         int32_t lo, int32_t hi, int n) {
    const long left = t->cout - ob * 64;
    const int nq = left >= 64 ? 4 : (int)((left + 15) / 16);
    if (t->kind == ASRQ_DW) {
        DISPATCH(DWF_N, n)
    } else {
        DISPATCH(GEMMF_N, n)
    }
}
#endif

static long scratch_vnni(int kind, long T_out, long stride, long row_off, long taps, long dil, long cp) {
    return kind == ASRQ_DW ? align64l(x4_rows(T_out, stride, row_off, taps, dil) * cp * 4) : 0;
}

/* ------------------------------------------------------------------ fused group + requantization */

/* v[r][c] (+)= (acc * M + C) >> S for n rows of 64 channels; the int64 lanes of AVX-512 F (vpmuldq,
 * vpsravq: the arithmetic shift C's >> is on int64 here) where the term is m31, else scalar */
static void requant_vnni(const int32_t *acc, const int64_t *M, const int64_t *C, const int64_t *S, int64_t *v,
                         int n, int first, int m31) {
#if defined(ASRQ_AVX512)
    if (m31) {
        for (int c = 0; c < 64; c += 8) {
            const __m512i m = _mm512_loadu_si512((const void *)(M + c)), k = _mm512_loadu_si512((const void *)(C + c));
            const __m512i s = _mm512_loadu_si512((const void *)(S + c));
            for (int r = 0; r < n; ++r) {
                const __m512i a = _mm512_cvtepi32_epi64(_mm256_loadu_si256((const __m256i *)(acc + r * 64 + c)));
                __m512i y = _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(a, m), k), s);
                if (!first) y = _mm512_add_epi64(y, _mm512_loadu_si512((const void *)(v + r * 64 + c)));
                _mm512_storeu_si512((void *)(v + r * 64 + c), y);
            }
        }
        return;
    }
#endif
    (void)m31;
    for (int r = 0; r < n; ++r) {
        const int32_t *ar = acc + r * 64;
        int64_t *vr = v + r * 64;
        if (first)
            for (int c = 0; c < 64; ++c) vr[c] = ((int64_t)ar[c] * M[c] + C[c]) >> S[c];
        else
            for (int c = 0; c < 64; ++c) vr[c] += ((int64_t)ar[c] * M[c] + C[c]) >> S[c];
    }
}

/* o[c] = clamp(v[c] + post, lo, hi) for the 64 channels of one row ([lo, hi] within [0, 255]) */
static void store_u8_vnni(const int64_t *v, uint8_t *o, int64_t post, int64_t lo, int64_t hi) {
#if defined(ASRQ_AVX512)
    const __m512i p = _mm512_set1_epi64(post), l = _mm512_set1_epi64(lo), u = _mm512_set1_epi64(hi);
    for (int c = 0; c < 64; c += 8) {
        const __m512i y = _mm512_min_epi64(_mm512_max_epi64(_mm512_add_epi64(_mm512_loadu_si512((const void *)(v + c)),
                                                                             p), l), u);
        _mm_storel_epi64((__m128i *)(o + c), _mm512_cvtepi64_epi8(y));
    }
#else
    for (int c = 0; c < 64; ++c) {
        int64_t y = v[c] + post;
        y = y < lo ? lo : y;
        o[c] = (uint8_t)(y > hi ? hi : y);
    }
#endif
}

#if defined(ASRQ_AVX512)
/* v[r][c] (+)= (acc * M + C) >> S in int32 lanes (rescale16) where every term is fast32 and the group
 * group32 */
static void requant32_vnni(const int32_t *acc, const int64_t *M, const int64_t *C, const int64_t *S, int32_t *v,
                           int n, int first) {
    for (int c = 0; c < 64; c += 16) {
        const rescale16 k = rescale16_at(M + c, C + c, S + c);
        for (int r = 0; r < n; ++r) {
            __m512i y = rescale16_apply(_mm512_loadu_si512((const void *)(acc + r * 64 + c)), &k);
            if (!first) y = _mm512_add_epi32(y, _mm512_loadu_si512((const void *)(v + r * 64 + c)));
            _mm512_storeu_si512((void *)(v + r * 64 + c), y);
        }
    }
}

static void store32_u8_vnni(const int32_t *v, uint8_t *o, int32_t post, int32_t lo, int32_t hi) {
    const __m512i p = _mm512_set1_epi32(post), l = _mm512_set1_epi32(lo), u = _mm512_set1_epi32(hi);
    for (int c = 0; c < 64; c += 16) store16_u8(o + c, _mm512_loadu_si512((const void *)(v + c)), p, l, u);
}
#endif

static void group_vnni(const asrq_term *terms, int nterms, long T_out, long oblocks, uint8_t *out8, int64_t *out64,
                       long out_cp, long out_row0, int64_t post, int64_t lo, int64_t hi, int nthreads,
                       uint8_t *scratch) {
    const long tiles = (T_out + R - 1) / R;
    const uint8_t *x4[nterms > 0 ? nterms : 1];
    for (int j = 0; j < nterms; ++j) {
        const asrq_term *t = terms + j;
        x4[j] = NULL;
        if (t->kind != ASRQ_DW) continue;
        prepare_x4(t, T_out, scratch, nthreads);
        x4[j] = scratch;
        scratch += scratch_vnni(t->kind, T_out, t->stride, t->row_off, t->taps, t->dil, t->cp_in);
    }
    (void)nthreads;
    /* frames outermost: a static split gives each thread every output block of its frames, so the
     * last block (often 16 or 32 real channels of 64) costs every thread alike */
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (long tb = 0; tb < tiles; ++tb) {
        for (long ob = 0; ob < oblocks; ++ob) {
            int32_t acc[R * 64];
            int64_t v[R * 64];
            const long t0 = tb * R;
            const int n = (int)(T_out - t0 < R ? T_out - t0 : R);
#if defined(ASRQ_AVX512)
            if (out8 && nterms == 1 && terms[0].group32 && terms[0].kind != ASRQ_IDENT) {
                tile_fused32(terms, x4[0], t0, ob, out8 + (out_row0 + t0) * out_cp + ob * 64, out_cp, (int32_t)post,
                             (int32_t)lo, (int32_t)hi, n);
                continue;
            }
            if (out8 && terms[0].group32) {   /* every term's rescaled value and the sum fit int32 */
                int32_t v32[R * 64];
                for (int j = 0; j < nterms; ++j) {
                    const asrq_term *t = terms + j;
                    tile(t, x4[j], t0, ob, acc, n);
                    requant32_vnni(acc, t->M + ob * 64, t->C + ob * 64, t->S + ob * 64, v32, n, j == 0);
                }
                for (int r = 0; r < n; ++r)
                    store32_u8_vnni(v32 + r * 64, out8 + (out_row0 + t0 + r) * out_cp + ob * 64, (int32_t)post,
                                    (int32_t)lo, (int32_t)hi);
                continue;
            }
#endif
            for (int j = 0; j < nterms; ++j) {
                const asrq_term *t = terms + j;
                const int64_t *M = t->M + ob * 64, *C = t->C + ob * 64, *S = t->S + ob * 64;
                tile(t, x4[j], t0, ob, acc, n);
                requant_vnni(acc, M, C, S, v, n, j == 0, t->m31);
            }
            for (int r = 0; r < n; ++r) {
                const int64_t *vr = v + r * 64;
                if (out8) {
                    store_u8_vnni(vr, out8 + (out_row0 + t0 + r) * out_cp + ob * 64, post, lo, hi);
                } else {
                    memcpy(out64 + (out_row0 + t0 + r) * out_cp + ob * 64, vr, sizeof(int64_t) * 64);
                }
            }
        }
    }
}

const asrq_family FAMILY_TABLE = {FAMILY_NAME, group_vnni, scratch_vnni, NULL, NULL, &OPS_TABLE};
#endif

#if defined(ASRQ_AVX2)  /* ------------------------------------------------------------------ the AVX2 family */

#define TR 4        /* output frames per tile: 4 rows x 16 channels = 8 ymm accumulators */
#define SB 16       /* output frames per work item (a thread's unit): 4 tiles */
/* The window: 6 bits (a in [0, 63]: two vpmaddubsw summed in int16, 5 instructions per 64 products)
 * or 7 bits (a in [0, 127]: one vpmaddubsw, pairs <= 127 * 256 < 2^15, 6 per 64) plus the tails
 * (about 40 instructions each). A GEMM takes 6 bits unless a sample of its input has more than 1 in
 * 64 values outside that window (the 7-bit window has 8-10x fewer); depthwise convs take 7. */
#define WIN_DW 7

typedef struct {
    int8_t *wt;    /* GEMM: [Cp_out/64][K][Cp_in][64] int8, a weight row per input channel (for the tails) */
    int8_t *wh;    /* GEMM: [Cp_out/64][4][K][cin4][16][4], each 16-channel slice contiguous (L1: a stride of
                    * 256 bytes would use a quarter of the cache's sets); 64-byte aligned in wh_mem */
    void *wh_mem;
    int32_t *sh32; /* fast32: S - 32 per channel */
} avx2_aux;

/* An input split at gamma with a window of 2^bits (module doc): the window parts a, in the layout
 * the kernel reads (GEMM: [rows][cp]; depthwise: the x4 copy), and its inputs outside the window
 * ("tails") in buckets of `bucket` channels (GEMM: the row, every output reads all of it; depthwise:
 * 64, the channels of one output block): cnt[row * nb + b] entries (channel << 8 | (uint8) d) at
 * ent + row * cp + b * bucket, and (depthwise) cum[b * (rows + 1) + row] = the entries of bucket b
 * in the rows before it (a tile skips a window with none). */
typedef struct {
    uint8_t *a;
    int32_t *cnt, *cum, *ent;
    long rows, bucket, nb, x4rows;
    int bits, gamma;
    const int64_t *Cs;
} split;

static long in_rows(int kind, long T_out, long stride, long row_off, long taps, long dil) {
    return (T_out - 1) * stride + row_off + (kind == ASRQ_DW ? 4 * taps - 1 : taps - 1) * dil + 1;
}

static long a_bytes(int kind, long T_out, long stride, long row_off, long taps, long dil, long cp) {
    return kind == ASRQ_DW ? x4_rows(T_out, stride, row_off, taps, dil) * cp * 4
                           : in_rows(kind, T_out, stride, row_off, taps, dil) * cp;
}

static long buckets(int kind, long cp) { return kind == ASRQ_DW ? cp / 64 : 1; }

static long scratch_avx2(int kind, long T_out, long stride, long row_off, long taps, long dil, long cp) {
    if (kind == ASRQ_IDENT) return 0;
    const long rows = in_rows(kind, T_out, stride, row_off, taps, dil), nb = buckets(kind, cp);
    return align64l(a_bytes(kind, T_out, stride, row_off, taps, dil, cp)) + 2 * align64l((rows + 1) * nb * 4) +
           align64l(rows * cp * 4);
}

static split split_at(const asrq_term *t, long T_out, uint8_t *scratch, int bits) {
    split s;
    s.bits = bits;
    s.gamma = bits == 6 ? t->gamma6 : t->gamma7;
    s.Cs = bits == 6 ? t->Cs6 : t->Cs7;
    const long cp = t->cp_in;
    s.rows = in_rows(t->kind, T_out, t->stride, t->row_off, t->taps, t->dil);
    s.nb = buckets(t->kind, cp);
    s.x4rows = t->kind == ASRQ_DW ? x4_rows(T_out, t->stride, t->row_off, t->taps, t->dil) : 0;
    s.bucket = cp / s.nb;
    s.a = scratch;
    scratch += align64l(a_bytes(t->kind, T_out, t->stride, t->row_off, t->taps, t->dil, cp));
    s.cnt = (int32_t *)scratch;
    scratch += align64l((s.rows + 1) * s.nb * 4);
    s.cum = (int32_t *)scratch;
    scratch += align64l((s.rows + 1) * s.nb * 4);
    s.ent = (int32_t *)scratch;
    return s;
}

/* The tails of every input row; for a GEMM also its window part a = (u - gamma) mod 2^bits.
 * v = u - gamma mod 256 lies in the window exactly when v < 2^bits (the bits above are clear),
 * since u - gamma is in [-128, 255] for the gammas used (0, 64 or 96). */
static void split_rows(const asrq_term *t, const split *s) {
    const long cp = t->cp_in;
    const int bits = s->bits;
    const __m256i g = _mm256_set1_epi8((char)s->gamma), low = _mm256_set1_epi8((char)((1 << bits) - 1));
    const __m256i top = _mm256_set1_epi8((char)(0xFF << bits)), z = _mm256_setzero_si256();
#pragma omp for schedule(static)
    for (long r = 0; r < s->rows; ++r) {
        const uint8_t *u = t->x + r * cp;
        for (long b = 0; b < s->nb; ++b) {
            int32_t *er = s->ent + r * cp + b * s->bucket, n = 0;
            for (long c = b * s->bucket; c < (b + 1) * s->bucket; c += 32) {
                const __m256i v = _mm256_sub_epi8(_mm256_loadu_si256((const __m256i *)(u + c)), g);
                if (t->kind == ASRQ_GEMM) _mm256_storeu_si256((__m256i *)(s->a + r * cp + c), _mm256_and_si256(v, low));
                unsigned out = ~(unsigned)_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_and_si256(v, top), z));
                while (out) {
                    const int i = __builtin_ctz(out);
                    out &= out - 1;
                    const int vt = (int)u[c + i] - s->gamma;
                    const int d = (vt - (vt & ((1 << bits) - 1))) / (1 << bits);   /* exact: a multiple of 2^bits */
                    er[n++] = (int32_t)(((c + i) << 8) | (uint8_t)(int8_t)d);
                }
            }
            s->cnt[r * s->nb + b] = n;
        }
    }
}

/* the depthwise x4 copy of the window parts a = (u - gamma) & 127, block-major: [cp / 64][rows][64][4],
 * so that the rows a tile reads for one output block are contiguous (row-major, one block's 256 bytes
 * would sit 4 cp bytes apart: a few L1 sets for the whole K + 3 rows) */
static void build_x4(const asrq_term *t, long T_out, uint8_t *x4) {
    const long rows = x4_rows(T_out, t->stride, t->row_off, t->taps, t->dil), cp = t->cp_in, dil = t->dil;
    const __m256i g = _mm256_set1_epi8((char)t->gamma7), low = _mm256_set1_epi8(127);
#pragma omp for schedule(static)
    for (long r = 0; r < rows; ++r) {
        const uint8_t *a = t->x + r * cp, *b = a + dil * cp, *c = b + dil * cp, *d = c + dil * cp;
        for (long k = 0; k < cp; k += 32) {
            uint8_t *o = x4 + ((k / 64) * rows + r) * 256 + (k % 64) * 4 - 4 * k;   /* o + 4 k: channel k */
#define WIN(p) _mm256_and_si256(_mm256_sub_epi8(_mm256_loadu_si256((const __m256i *)((p) + k)), g), low)
            const __m256i ra = WIN(a), rb = WIN(b), rc = WIN(c), rd = WIN(d);
#undef WIN
            /* interleave the bytes of four rows per channel; then the 128-bit lanes in channel order */
            const __m256i ab_lo = _mm256_unpacklo_epi8(ra, rb), ab_hi = _mm256_unpackhi_epi8(ra, rb);
            const __m256i cd_lo = _mm256_unpacklo_epi8(rc, rd), cd_hi = _mm256_unpackhi_epi8(rc, rd);
            const __m256i q0 = _mm256_unpacklo_epi16(ab_lo, cd_lo), q1 = _mm256_unpackhi_epi16(ab_lo, cd_lo);
            const __m256i q2 = _mm256_unpacklo_epi16(ab_hi, cd_hi), q3 = _mm256_unpackhi_epi16(ab_hi, cd_hi);
            _mm256_storeu_si256((__m256i *)(o + 4 * k), _mm256_permute2x128_si256(q0, q1, 0x20));
            _mm256_storeu_si256((__m256i *)(o + 4 * k + 32), _mm256_permute2x128_si256(q2, q3, 0x20));
            _mm256_storeu_si256((__m256i *)(o + 4 * k + 64), _mm256_permute2x128_si256(q0, q1, 0x31));
            _mm256_storeu_si256((__m256i *)(o + 4 * k + 96), _mm256_permute2x128_si256(q2, q3, 0x31));
        }
    }
}

#define GROW(r)                                                                                             \
    if (n > (r)) {                                                                                          \
        const __m256i b = _mm256_set1_epi32(ld32(xk + (r) * xstep + 4 * c));                               \
        const __m256i d = _mm256_set1_epi32(ld32(xk + (r) * xstep + 4 * c + 4));                            \
        const __m256i s0 = _mm256_add_epi16(_mm256_maddubs_epi16(b, w0), _mm256_maddubs_epi16(d, v0));    \
        a##r##0 = _mm256_add_epi32(a##r##0, _mm256_madd_epi16(s0, ones));                                  \
        const __m256i s1 = _mm256_add_epi16(_mm256_maddubs_epi16(b, w1), _mm256_maddubs_epi16(d, v1));    \
        a##r##1 = _mm256_add_epi32(a##r##1, _mm256_madd_epi16(s1, ones));                                  \
        __asm__("" : "+x"(a##r##0), "+x"(a##r##1)); /* keeps the rows in order: no spilled registers */    \
    }

/* acc[r][16h .. 16h+15] for the tile's rows r < n: sum over taps and inputs of a w (a: 6-bit window) */
static inline __attribute__((always_inline)) void gemm_tile_avx2(const asrq_term *t, const uint8_t *a, long t0,
                                                                 long ob, int h, int32_t *acc, const int n) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
            a31 = a00;
    const long cp = t->cp_in, xstep = t->stride * cp, cin4 = t->cin4;
    const long used = (t->cin + 7) / 8 * 2;   /* the groups of 4 inputs up to the real channels, paired */
    const int8_t *wp = ((const avx2_aux *)t->aux)->wh + (ob * 4 + h) * t->taps * cin4 * 64;
    for (long k = 0; k < t->taps; ++k) {
        const uint8_t *xk = a + (t0 * t->stride + t->row_off + k * t->dil) * cp;
        const int8_t *wk = wp + k * cin4 * 64;
        for (long c = 0; c < used; c += 2) {   /* used <= cin4 = Cp_in / 4: the rest are zero weights */
            const __m256i w0 = _mm256_load_si256((const __m256i *)(wk + c * 64));
            const __m256i w1 = _mm256_load_si256((const __m256i *)(wk + c * 64 + 32));
            const __m256i v0 = _mm256_load_si256((const __m256i *)(wk + c * 64 + 64));
            const __m256i v1 = _mm256_load_si256((const __m256i *)(wk + c * 64 + 96));
            GROW(0) GROW(1) GROW(2) GROW(3)
        }
    }
    int32_t *o = acc + h * 16;
    _mm256_storeu_si256((__m256i *)o, a00), _mm256_storeu_si256((__m256i *)(o + 8), a01);
    if (n > 1) _mm256_storeu_si256((__m256i *)(o + 64), a10), _mm256_storeu_si256((__m256i *)(o + 72), a11);
    if (n > 2) _mm256_storeu_si256((__m256i *)(o + 128), a20), _mm256_storeu_si256((__m256i *)(o + 136), a21);
    if (n > 3) _mm256_storeu_si256((__m256i *)(o + 192), a30), _mm256_storeu_si256((__m256i *)(o + 200), a31);
}

/* the 16-channel blocks of output block ob that hold real channels (the rest: zero weights, acc 0) */
static int blocks16(const asrq_term *t, long ob, int32_t *acc, int n) {
    const long left = t->cout - ob * 64;
    const int used = left >= 64 ? 4 : (int)((left + 15) / 16);
    for (int r = 0; r < n && used < 4; ++r) memset(acc + r * 64 + used * 16, 0, sizeof(int32_t) * 16 * (size_t)(4 - used));
    return used;
}

#define GROW7(r)                                                                                            \
    if (n > (r)) {                                                                                          \
        const __m256i b = _mm256_set1_epi32(ld32(xk + (r) * xstep + 4 * c));                               \
        a##r##0 = _mm256_add_epi32(a##r##0, _mm256_madd_epi16(_mm256_maddubs_epi16(b, w0), ones));         \
        a##r##1 = _mm256_add_epi32(a##r##1, _mm256_madd_epi16(_mm256_maddubs_epi16(b, w1), ones));         \
        __asm__("" : "+x"(a##r##0), "+x"(a##r##1));                                                        \
    }

/* the same with a 7-bit window: one vpmaddubsw per 4 inputs */
static inline __attribute__((always_inline)) void gemm7_tile_avx2(const asrq_term *t, const uint8_t *a, long t0,
                                                                  long ob, int h, int32_t *acc, const int n) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
            a31 = a00;
    const long cp = t->cp_in, xstep = t->stride * cp, cin4 = t->cin4, used = (t->cin + 3) / 4;
    const int8_t *wp = ((const avx2_aux *)t->aux)->wh + (ob * 4 + h) * t->taps * cin4 * 64;
    for (long k = 0; k < t->taps; ++k) {
        const uint8_t *xk = a + (t0 * t->stride + t->row_off + k * t->dil) * cp;
        const int8_t *wk = wp + k * cin4 * 64;
        for (long c = 0; c < used; ++c) {
            const __m256i w0 = _mm256_load_si256((const __m256i *)(wk + c * 64));
            const __m256i w1 = _mm256_load_si256((const __m256i *)(wk + c * 64 + 32));
            GROW7(0) GROW7(1) GROW7(2) GROW7(3)
        }
    }
    int32_t *o = acc + h * 16;
    _mm256_storeu_si256((__m256i *)o, a00), _mm256_storeu_si256((__m256i *)(o + 8), a01);
    if (n > 1) _mm256_storeu_si256((__m256i *)(o + 64), a10), _mm256_storeu_si256((__m256i *)(o + 72), a11);
    if (n > 2) _mm256_storeu_si256((__m256i *)(o + 128), a20), _mm256_storeu_si256((__m256i *)(o + 136), a21);
    if (n > 3) _mm256_storeu_si256((__m256i *)(o + 192), a30), _mm256_storeu_si256((__m256i *)(o + 200), a31);
}

/* rows t0 .. t0 + n - 1 (n <= SB) of output block ob: each 16-channel weight slice is read once for
 * all the tiles of the item (it stays in L1 between them) */
static void gemm_avx2(const asrq_term *t, const split *s, long t0, long ob, int32_t *acc, int n) {
    const int used = blocks16(t, ob, acc, n);
    for (int h = 0; h < used; ++h)
        for (int i = 0; i < n; i += TR) {
            int32_t *ai = acc + i * 64;
            const int m = n - i < TR ? n - i : TR;
            if (s->bits == 7) {
                switch (m) {
                case 1: gemm7_tile_avx2(t, s->a, t0 + i, ob, h, ai, 1); break;
                case 2: gemm7_tile_avx2(t, s->a, t0 + i, ob, h, ai, 2); break;
                case 3: gemm7_tile_avx2(t, s->a, t0 + i, ob, h, ai, 3); break;
                default: gemm7_tile_avx2(t, s->a, t0 + i, ob, h, ai, 4); break;
                }
                continue;
            }
            switch (m) {
            case 1: gemm_tile_avx2(t, s->a, t0 + i, ob, h, ai, 1); break;
            case 2: gemm_tile_avx2(t, s->a, t0 + i, ob, h, ai, 2); break;
            case 3: gemm_tile_avx2(t, s->a, t0 + i, ob, h, ai, 3); break;
            default: gemm_tile_avx2(t, s->a, t0 + i, ob, h, ai, 4); break;
            }
        }
    /* the tails: acc += 2^bits sum d w_row, the sum in registers (d in [-2, 2]: adds, no multiplies) */
    const avx2_aux *x = (const avx2_aux *)t->aux;
    const long cp = t->cp_in;
    for (int r = 0; r < n; ++r) {
        __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
        int any = 0;
        for (long k = 0; k < t->taps; ++k) {
            const long row = (t0 + r) * t->stride + t->row_off + k * t->dil;
            const int32_t *e = s->ent + row * cp;
            for (int32_t i = 0; i < s->cnt[row]; ++i) {
                const int d = (int8_t)(e[i] & 0xFF);
                const int8_t *wr = x->wt + ((ob * t->taps + k) * cp + (e[i] >> 8)) * 64;
#define W8(q) _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(wr + 8 * (q))))
                for (int m = d < 0 ? -d : d; m > 0; --m) {
                    if (d > 0) {
                        s0 = _mm256_add_epi32(s0, W8(0)), s1 = _mm256_add_epi32(s1, W8(1));
                        s2 = _mm256_add_epi32(s2, W8(2)), s3 = _mm256_add_epi32(s3, W8(3));
                        s4 = _mm256_add_epi32(s4, W8(4)), s5 = _mm256_add_epi32(s5, W8(5));
                        s6 = _mm256_add_epi32(s6, W8(6)), s7 = _mm256_add_epi32(s7, W8(7));
                    } else {
                        s0 = _mm256_sub_epi32(s0, W8(0)), s1 = _mm256_sub_epi32(s1, W8(1));
                        s2 = _mm256_sub_epi32(s2, W8(2)), s3 = _mm256_sub_epi32(s3, W8(3));
                        s4 = _mm256_sub_epi32(s4, W8(4)), s5 = _mm256_sub_epi32(s5, W8(5));
                        s6 = _mm256_sub_epi32(s6, W8(6)), s7 = _mm256_sub_epi32(s7, W8(7));
                    }
                }
#undef W8
                any = 1;
            }
        }
        if (!any) continue;
        int32_t *ar = acc + r * 64;
        const __m128i b = _mm_cvtsi32_si128(s->bits);
#define ADD(q, v) _mm256_storeu_si256((__m256i *)(ar + 8 * (q)), _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(ar + 8 * (q))), _mm256_sll_epi32(v, b)))
        ADD(0, s0), ADD(1, s1), ADD(2, s2), ADD(3, s3), ADD(4, s4), ADD(5, s5), ADD(6, s6), ADD(7, s7);
#undef ADD
    }
}

/* acc[r][16h .. 16h+15]: vpmaddubsw on the x4 copy of the 7-bit window parts, 4 taps per lane */
static inline __attribute__((always_inline)) void dw_tile_avx2(const asrq_term *t, const uint8_t *x4, long x4rows,
                                                               long t0, long ob, int32_t *acc, const int n) {
    const __m256i ones = _mm256_set1_epi16(1);
    const long row = 256, xstep = t->stride * row, jstep = 4 * t->dil * row;   /* build_x4's layout */
    const uint8_t *x0 = x4 + (ob * x4rows + t0 * t->stride + t->row_off) * row;
    const int8_t *wp = t->w + ob * t->taps * 256;
    const int used = blocks16(t, ob, acc, n);
    for (int h = 0; h < used; ++h) {
        __m256i a[TR][2];
        for (int r = 0; r < n; ++r) a[r][0] = a[r][1] = _mm256_setzero_si256();
        for (long j = 0; j < t->taps; ++j) {
            const uint8_t *xj = x0 + j * jstep + h * 64;
            const __m256i w0 = _mm256_load_si256((const __m256i *)(wp + j * 256 + h * 64));
            const __m256i w1 = _mm256_load_si256((const __m256i *)(wp + j * 256 + h * 64 + 32));
            for (int r = 0; r < n; ++r) {
                const __m256i x0v = _mm256_loadu_si256((const __m256i *)(xj + r * xstep));
                const __m256i x1v = _mm256_loadu_si256((const __m256i *)(xj + r * xstep + 32));
                a[r][0] = _mm256_add_epi32(a[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(x0v, w0), ones));
                a[r][1] = _mm256_add_epi32(a[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(x1v, w1), ones));
            }
        }
        for (int r = 0; r < n; ++r) {
            _mm256_storeu_si256((__m256i *)(acc + r * 64 + h * 16), a[r][0]);
            _mm256_storeu_si256((__m256i *)(acc + r * 64 + h * 16 + 8), a[r][1]);
        }
    }
}

static void dw_tiles_avx2(const asrq_term *t, const split *s, long t0, long ob, int32_t *acc, int n) {
    switch (n) {
    case 1: dw_tile_avx2(t, s->a, s->x4rows, t0, ob, acc, 1); break;
    case 2: dw_tile_avx2(t, s->a, s->x4rows, t0, ob, acc, 2); break;
    case 3: dw_tile_avx2(t, s->a, s->x4rows, t0, ob, acc, 3); break;
    default: dw_tile_avx2(t, s->a, s->x4rows, t0, ob, acc, 4); break;
    }
    /* the tails in the tile's input window: acc[r][c] += 2^7 d w[c][k] for each tap k that reads them */
    const long r0 = t0 * t->stride + t->row_off, K4 = 4 * t->taps;
    const long r1 = (t0 + n - 1) * t->stride + t->row_off + (K4 - 1) * t->dil + 1;
    const int32_t *cum = s->cum + ob * (s->rows + 1);
    if (cum[r1] == cum[r0]) return;
    const long cp = t->cp_in, c0 = ob * 64;
    for (long row = r0; row < r1; ++row) {
        const int32_t *e = s->ent + row * cp + ob * 64;
        for (int32_t i = 0; i < s->cnt[row * s->nb + ob]; ++i) {
            const long c = (e[i] >> 8) - c0;
            const int32_t d = (int32_t)(int8_t)(e[i] & 0xFF) * (1 << WIN_DW);
            for (int r = 0; r < n; ++r) {
                const long off = row - (t0 + r) * t->stride - t->row_off;
                if (off < 0 || off % t->dil) continue;
                const long k = off / t->dil;
                if (k < K4) acc[r * 64 + c] += d * (int32_t)t->w[((ob * t->taps + k / 4) * 64 + c) * 4 + k % 4];
            }
        }
    }
}

static void dw_avx2(const asrq_term *t, const split *s, long t0, long ob, int32_t *acc, int n) {
    for (int i = 0; i < n; i += TR) dw_tiles_avx2(t, s, t0 + i, ob, acc + i * 64, n - i < TR ? n - i : TR);
}

/* v[r][c] (+)= (acc * M + C) >> S for 64 channels, in int64 lanes: vpmuldq (M < 2^31) and the
 * arithmetic shift as ((p ^ 2^63) >>> S) - (2^63 >>> S) (AVX2 has no 64-bit arithmetic shift) */
static void requant_avx2(const int32_t *acc, const int64_t *M, const int64_t *C, const int64_t *S, int64_t *v,
                         int n, int first, int m31) {
    if (!m31) {
        for (int r = 0; r < n; ++r)
            for (int c = 0; c < 64; ++c) {
                const int64_t p = ((int64_t)acc[r * 64 + c] * M[c] + C[c]) >> S[c];
                v[r * 64 + c] = first ? p : v[r * 64 + c] + p;
            }
        return;
    }
    const __m256i sign = _mm256_set1_epi64x((long long)(1ULL << 63));
    for (int c = 0; c < 64; c += 4) {
        const __m256i m = _mm256_loadu_si256((const __m256i *)(M + c)), k = _mm256_loadu_si256((const __m256i *)(C + c));
        const __m256i s = _mm256_loadu_si256((const __m256i *)(S + c)), bias = _mm256_srlv_epi64(sign, s);
        for (int r = 0; r < n; ++r) {
            const __m256i a = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(acc + r * 64 + c)));
            const __m256i p = _mm256_add_epi64(_mm256_mul_epi32(a, m), k);
            __m256i y = _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_xor_si256(p, sign), s), bias);
            if (!first) y = _mm256_add_epi64(y, _mm256_loadu_si256((const __m256i *)(v + r * 64 + c)));
            _mm256_storeu_si256((__m256i *)(v + r * 64 + c), y);
        }
    }
}

/* v[r][c] (+)= (acc * M + C) >> S in int32 lanes where the term is fast32 and its group group32:
 * floor(p / 2^S) = floor(floor(p / 2^32) / 2^(S-32)), the first the high half of the int64 p */
static void requant32_avx2(const int32_t *acc, const int64_t *M, const int64_t *C, const int32_t *sh, int32_t *v,
                           int n, int first) {
    const __m256i idx = _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7);
    for (int c = 0; c < 64; c += 8) {
        const __m256i m0 = _mm256_loadu_si256((const __m256i *)(M + c)), m1 = _mm256_loadu_si256((const __m256i *)(M + c + 4));
        const __m256i k0 = _mm256_loadu_si256((const __m256i *)(C + c)), k1 = _mm256_loadu_si256((const __m256i *)(C + c + 4));
        const __m256i s = _mm256_loadu_si256((const __m256i *)(sh + c));
        for (int r = 0; r < n; ++r) {
            const int32_t *a = acc + r * 64 + c;
            const __m256i p0 = _mm256_add_epi64(_mm256_mul_epi32(_mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)a)), m0), k0);
            const __m256i p1 = _mm256_add_epi64(_mm256_mul_epi32(_mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(a + 4))), m1), k1);
            /* the high halves of the 8 int64: dwords 1, 3, 5, 7 of each */
            const __m256i hi = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(p0, idx), _mm256_permutevar8x32_epi32(p1, idx), 0xF0);
            __m256i y = _mm256_srav_epi32(hi, s);
            if (!first) y = _mm256_add_epi32(y, _mm256_loadu_si256((const __m256i *)(v + r * 64 + c)));
            _mm256_storeu_si256((__m256i *)(v + r * 64 + c), y);
        }
    }
}

/* y = clamp(v + post, lo, hi) for 64 int32 channels of one row, stored as uint8 */
static void store32_u8_avx2(const int32_t *v, uint8_t *o, int32_t post, int32_t lo, int32_t hi) {
    const __m256i p = _mm256_set1_epi32(post), l = _mm256_set1_epi32(lo), u = _mm256_set1_epi32(hi);
    for (int c = 0; c < 64; c += 16) {
        const __m256i y0 = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(v + c)), p), l), u);
        const __m256i y1 = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(v + c + 8)), p), l), u);
        const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(y0, y1), 0xD8);   /* 16 int16 in order */
        const __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
        _mm_storeu_si128((__m128i *)(o + c), b);
    }
}

/* y = clamp(v + post, lo, hi) for 64 channels of one row, stored as uint8 ([lo, hi] within [0, 255]) */
static void store_u8_avx2(const int64_t *v, uint8_t *o, int64_t post, int64_t lo, int64_t hi) {
    const __m256i p = _mm256_set1_epi64x(post), l = _mm256_set1_epi64x(lo), u = _mm256_set1_epi64x(hi);
    const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    for (int c = 0; c < 64; c += 8) {
        __m256i y0 = _mm256_add_epi64(_mm256_loadu_si256((const __m256i *)(v + c)), p);
        __m256i y1 = _mm256_add_epi64(_mm256_loadu_si256((const __m256i *)(v + c + 4)), p);
        y0 = _mm256_blendv_epi8(y0, l, _mm256_cmpgt_epi64(l, y0));
        y0 = _mm256_blendv_epi8(y0, u, _mm256_cmpgt_epi64(y0, u));
        y1 = _mm256_blendv_epi8(y1, l, _mm256_cmpgt_epi64(l, y1));
        y1 = _mm256_blendv_epi8(y1, u, _mm256_cmpgt_epi64(y1, u));
        const __m128i q0 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(y0, idx));
        const __m128i q1 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(y1, idx));
        const __m128i w16 = _mm_packus_epi32(q0, q1);
        _mm_storel_epi64((__m128i *)(o + c), _mm_packus_epi16(w16, w16));
    }
}

/* 6 or 7 (the comment at WIN_DW): the inputs of every 8th row outside the 6-bit window, counted */
static int gemm_window(const asrq_term *t, long T_out) {
    const long rows = in_rows(ASRQ_GEMM, T_out, t->stride, t->row_off, t->taps, t->dil), cp = t->cp_in;
    const __m256i g = _mm256_set1_epi8((char)t->gamma6), top = _mm256_set1_epi8((char)0xC0), z = _mm256_setzero_si256();
    long out = 0, seen = 0;
    for (long r = 0; r < rows; r += 8) {
        const uint8_t *u = t->x + r * cp;
        for (long c = 0; c < (t->cin + 31) / 32 * 32; c += 32) {
            const __m256i v = _mm256_sub_epi8(_mm256_loadu_si256((const __m256i *)(u + c)), g);
            out += __builtin_popcount(~(unsigned)_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_and_si256(v, top), z)));
        }
        seen += (t->cin + 31) / 32 * 32;
    }
    const char *force = getenv("ASRQ_AVX2_WINDOW");   /* 6 or 7: the tests run both windows on any data */
    if (force && (force[0] == '6' || force[0] == '7') && !force[1]) return force[0] - '0';
    return out * 64 <= seen ? 6 : 7;
}

static void group_avx2(const asrq_term *terms, int nterms, long T_out, long oblocks, uint8_t *out8, int64_t *out64,
                       long out_cp, long out_row0, int64_t post, int64_t lo, int64_t hi, int nthreads,
                       uint8_t *scratch) {
    const long tiles = (T_out + SB - 1) / SB;
    split sp[nterms > 0 ? nterms : 1];
    for (int j = 0; j < nterms; ++j) {
        const asrq_term *t = terms + j;
        if (t->kind == ASRQ_IDENT) continue;
        sp[j] = split_at(t, T_out, scratch, t->kind == ASRQ_DW ? WIN_DW : gemm_window(t, T_out));
        scratch += scratch_avx2(t->kind, T_out, t->stride, t->row_off, t->taps, t->dil, t->cp_in);
    }
    (void)nthreads;
#pragma omp parallel num_threads(nthreads)
    {
        for (int j = 0; j < nterms; ++j) {
            const asrq_term *t = terms + j;
            if (t->kind == ASRQ_IDENT) continue;
            split_rows(t, sp + j);   /* ends in a barrier */
            if (t->kind == ASRQ_DW) {
                build_x4(t, T_out, sp[j].a);
#pragma omp single
                {
                    for (long b = 0; b < sp[j].nb; ++b) {
                        int32_t *cum = sp[j].cum + b * (sp[j].rows + 1);
                        cum[0] = 0;
                        for (long r = 0; r < sp[j].rows; ++r) cum[r + 1] = cum[r] + sp[j].cnt[r * sp[j].nb + b];
                    }
                }
            }
        }
        /* frames outermost: a static split then gives each thread every output block of its frames,
         * and the last block (often 16 or 32 real channels of 64, blocks16) costs both alike */
#pragma omp for collapse(2) schedule(static)
        for (long tb = 0; tb < tiles; ++tb) {
            for (long ob = 0; ob < oblocks; ++ob) {
                int32_t acc[SB * 64], v32[SB * 64];
                int64_t v[SB * 64];
                const long t0 = tb * SB;
                const int n = (int)(T_out - t0 < SB ? T_out - t0 : SB);
                const int narrow = out8 && terms[0].group32;   /* every term's rescaled value and the sum fit int32 */
                for (int j = 0; j < nterms; ++j) {
                    const asrq_term *t = terms + j;
                    if (t->kind == ASRQ_GEMM)
                        gemm_avx2(t, sp + j, t0, ob, acc, n);
                    else if (t->kind == ASRQ_DW)
                        dw_avx2(t, sp + j, t0, ob, acc, n);
                    else
                        ident_tile(t, t0, ob, acc, n);
                    const int64_t *Cs = t->kind == ASRQ_IDENT ? t->C : sp[j].Cs;
                    if (narrow)
                        requant32_avx2(acc, t->M + ob * 64, Cs + ob * 64, ((const avx2_aux *)t->aux)->sh32 + ob * 64,
                                       v32, n, j == 0);
                    else
                        requant_avx2(acc, t->M + ob * 64, Cs + ob * 64, t->S + ob * 64, v, n, j == 0, t->m31);
                }
                for (int r = 0; r < n; ++r) {
                    uint8_t *o8 = out8 ? out8 + (out_row0 + t0 + r) * out_cp + ob * 64 : NULL;
                    if (narrow)
                        store32_u8_avx2(v32 + r * 64, o8, (int32_t)post, (int32_t)lo, (int32_t)hi);
                    else if (out8)
                        store_u8_avx2(v + r * 64, o8, post, lo, hi);
                    else
                        memcpy(out64 + (out_row0 + t0 + r) * out_cp + ob * 64, v + r * 64, sizeof(int64_t) * 64);
                }
            }
        }
    }
}

static int pack_avx2(asrq_term *t) {
    avx2_aux *x = calloc(1, sizeof(avx2_aux));
    if (!x) return 1;
    t->aux = x;
    x->sh32 = malloc(sizeof(int32_t) * (size_t)(t->oblocks * 64));
    if (!x->sh32) return 1;
    for (long c = 0; c < t->oblocks * 64; ++c) x->sh32[c] = c < t->cout ? (int32_t)t->S[c] - 32 : 0;   /* padding: v = 0 */
    if (t->kind == ASRQ_GEMM) {
        const long cp = t->cp_in, K = t->taps;
        x->wt = malloc((size_t)(t->oblocks * K * cp * 64));
        if (!x->wt) return 1;
        for (long ob = 0; ob < t->oblocks; ++ob)
            for (long k = 0; k < K; ++k)
                for (long c = 0; c < cp; ++c)
                    for (int o = 0; o < 64; ++o)
                        x->wt[((ob * K + k) * cp + c) * 64 + o] =
                            t->w[(((ob * K + k) * t->cin4 + c / 4) * 64 + o) * 4 + c % 4];
        const size_t n = (size_t)(t->oblocks * K * t->cin4 * 256);
        x->wh_mem = malloc(n + 63);
        if (!x->wh_mem) return 1;
        x->wh = (int8_t *)(((uintptr_t)x->wh_mem + 63) & ~(uintptr_t)63);
        for (long ob = 0; ob < t->oblocks; ++ob)
            for (long k = 0; k < K; ++k)
                for (long c = 0; c < t->cin4; ++c)
                    for (int o = 0; o < 64; ++o)
                        memcpy(x->wh + ((((ob * 4 + o / 16) * K + k) * t->cin4 + c) * 16 + o % 16) * 4,
                               t->w + (((ob * K + k) * t->cin4 + c) * 64 + o) * 4, 4);
    }
    return 0;
}

static void unpack_avx2(asrq_term *t) {
    avx2_aux *x = (avx2_aux *)t->aux;
    if (!x) return;
    free(x->wt);
    free(x->wh_mem);
    free(x->sh32);
    free(x);
    t->aux = NULL;
}

const asrq_family FAMILY_TABLE = {FAMILY_NAME, group_avx2, scratch_avx2, pack_avx2, unpack_avx2, &OPS_TABLE};
#endif

/* ------------------------------------------------------------------ the dispatcher (portable compilation) */

#if defined(ASRQ_PORTABLE)
#include <stdio.h>

#if defined(ASRQ_HAVE_avx512)
extern const asrq_family asrq_family_avx512;
#endif
#if defined(ASRQ_HAVE_avxvnni)
extern const asrq_family asrq_family_avxvnni;
#endif
#if defined(ASRQ_HAVE_avx2)
extern const asrq_family asrq_family_avx2;
#endif

static const asrq_family *const families[] = {   /* best first */
#if defined(ASRQ_HAVE_avx512)
    &asrq_family_avx512,
#endif
#if defined(ASRQ_HAVE_avxvnni)
    &asrq_family_avxvnni,
#endif
#if defined(ASRQ_HAVE_avx2)
    &asrq_family_avx2,
#endif
    &asrq_family_portable,
};
#define NFAMILIES ((int)(sizeof families / sizeof families[0]))

static const asrq_family *current;

static int cpu_runs(const asrq_family *f) {
    if (f == &asrq_family_portable) return 1;
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
#if defined(ASRQ_HAVE_avx512)
    if (f == &asrq_family_avx512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vnni");
#endif
#if defined(ASRQ_HAVE_avxvnni)
    if (f == &asrq_family_avxvnni) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avxvnni");
#endif
#if defined(ASRQ_HAVE_avx2)
    if (f == &asrq_family_avx2) return __builtin_cpu_supports("avx2");
#endif
#endif
    return 0;
}

int asrq_select_isa(char *err, size_t n) {
    if (current) return 0;
    const char *want = getenv("ASRQ_ISA");
    if (want && *want) {
        char have[128] = "";
        for (int i = 0; i < NFAMILIES; ++i) {
            if (!strcmp(families[i]->name, want)) {
                if (!cpu_runs(families[i])) {
                    snprintf(err, n, "ASRQ_ISA=%s: this CPU cannot run the %s kernels", want, want);
                    return 1;
                }
                current = families[i];
                return 0;
            }
            strncat(have, i ? ", " : "", sizeof have - strlen(have) - 1);
            strncat(have, families[i]->name, sizeof have - strlen(have) - 1);
        }
        snprintf(err, n, "ASRQ_ISA=%s: this build has no such kernels (it has %s)", want, have);
        return 1;
    }
    for (int i = 0; i < NFAMILIES; ++i)
        if (cpu_runs(families[i])) {
            current = families[i];
            break;
        }
    return 0;
}

/* the family in use; before a successful selection (a bad $ASRQ_ISA, which asrq_load reports),
 * the portable one, without choosing it */
static const asrq_family *family(void) {
    char err[256];
    if (!current && asrq_select_isa(err, sizeof err)) return &asrq_family_portable;
    return current;
}

const char *asrq_isa(void) { return family()->name; }

void asrq_group(const asrq_term *terms, int nterms, long T_out, long oblocks, uint8_t *out8, int64_t *out64,
                long out_cp, long out_row0, int64_t post, int64_t lo, int64_t hi, int nthreads, uint8_t *scratch) {
    family()->group(terms, nterms, T_out, oblocks, out8, out64, out_cp, out_row0, post, lo, hi, nthreads, scratch);
}

long asrq_term_scratch(int kind, long T_out, long stride, long row_off, long taps, long dil, long cp_in) {
    return family()->scratch(kind, T_out, stride, row_off, taps, dil, cp_in);
}

int asrq_pack_term(asrq_term *t) { return family()->pack ? family()->pack(t) : 0; }

void asrq_unpack_term(asrq_term *t) {
    if (current && current->unpack) current->unpack(t);
}

void asrq_fill_rows(uint8_t *x, long cp, long r0, long r1, int off) {
    if (r1 > r0) memset(x + r0 * cp, off, (size_t)((r1 - r0) * cp));
}

void asrq_lut(const uint8_t *x, long xcp, uint8_t *y, long ycp, long rows, long C, const uint8_t *lut,
              int per_channel, int nthreads) {
    family()->ops->lut(x, xcp, y, ycp, rows, C, lut, per_channel, nthreads);
}

void asrq_glu(const uint8_t *x, long xcp, uint8_t *y, long ycp, long rows, long C, const int32_t *sig,
              const int64_t *M, const int64_t *S, int per_channel, int off_in, int off_out, int lo, int hi,
              int nthreads) {
    family()->ops->glu(x, xcp, y, ycp, rows, C, sig, M, S, per_channel, off_in, off_out, lo, hi, nthreads);
}

void asrq_layernorm(const uint8_t *x, long xcp, uint8_t *y, long ycp, long rows, const asrq_ln *p, const int64_t *g,
                    const int64_t *b, int off_in, int off_out, int64_t *scratch, int nthreads) {
    family()->ops->layernorm(x, xcp, y, ycp, rows, p, g, b, off_in, off_out, scratch, nthreads);
}

void asrq_attention(const asrq_attn *a, const uint8_t *q, const uint8_t *k, const uint8_t *v, const uint8_t *qv,
                    long cp, long T, long L, uint8_t *out, long ocp, void *scratch, int nthreads) {
    family()->ops->attention(a, q, k, v, qv, cp, T, L, out, ocp, scratch, nthreads);
}

long asrq_attention_scratch(long T, long heads, long dk, int nthreads) {
    return family()->ops->attention_scratch(T, heads, dk, nthreads);
}
#endif
