/* Integer kernels of the asrquant C runtime (asrq_kernels.h explains the layout).
 *
 * Three builds of the same arithmetic, chosen at compile time from the compiler's target macros
 * (-march=native defines them when the CPU has the instructions):
 *   __AVX512VNNI__ + __AVX512BW__  vpdpbusd on zmm: 64 u8 x s8 multiply-adds per instruction
 *   __AVXVNNI__                    the same on ymm (32 per instruction)
 *   neither                        portable C loops (no intrinsics: also the no-FPU build)
 * vpdpbusd accumulates u8 x s8 products in int32 without saturation, so all three give the same
 * integers as long as |acc| < 2^31, which the exporter proves per conv from the weights.
 * Requantization is fused into the producing kernel: each 6 x 64 tile of int32 accumulators is
 * scaled, summed over the group's terms (residual branches), offset, clamped and stored while in L1.
 * Signed right shifts of negative int64 are arithmetic shifts (floor) on every compiler we target
 * (gcc, clang); the exporter's tests check the integers against the NumPy reference.
 */
#include "asrq_kernels.h"

#include <string.h>

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define ASRQ_AVX512 1
#include <immintrin.h>
#elif defined(__AVXVNNI__)
#define ASRQ_AVXVNNI 1
#include <immintrin.h>
#endif

#define R ASRQ_TILE_ROWS

const char *asrq_isa(void) {
#if defined(ASRQ_AVX512)
    return "avx512-vnni";
#elif defined(ASRQ_AVXVNNI)
    return "avx-vnni";
#else
    return "portable";
#endif
}

/* ------------------------------------------------------------------ tiles: int32 acc[rows][64] */

#if defined(ASRQ_AVX512)
static inline __attribute__((always_inline)) void gemm_tile_n(const asrq_term *t, long t0, long ob, int32_t *acc,
                                                              const int n) {
    __m512i a[R][4];
    for (int r = 0; r < n; ++r)
        for (int q = 0; q < 4; ++q) a[r][q] = _mm512_setzero_si512();
    const long xstep = t->stride * t->cp_in, kstep = t->dil * t->cp_in, cin4 = t->cin4;
    const uint8_t *x0 = t->x + (t0 * t->stride + t->row_off) * t->cp_in;
    const int8_t *wp = t->w + ob * t->taps * cin4 * 256;
    for (long k = 0; k < t->taps; ++k) {
        const uint8_t *xk = x0 + k * kstep;
        const int8_t *wk = wp + k * cin4 * 256;
        for (long c = 0; c < cin4; ++c) {
            const __m512i w0 = _mm512_load_si512((const void *)(wk + c * 256));
            const __m512i w1 = _mm512_load_si512((const void *)(wk + c * 256 + 64));
            const __m512i w2 = _mm512_load_si512((const void *)(wk + c * 256 + 128));
            const __m512i w3 = _mm512_load_si512((const void *)(wk + c * 256 + 192));
            for (int r = 0; r < n; ++r) {
                int32_t xv;
                memcpy(&xv, xk + r * xstep + c * 4, 4);
                const __m512i b = _mm512_set1_epi32(xv);
                a[r][0] = _mm512_dpbusd_epi32(a[r][0], b, w0);
                a[r][1] = _mm512_dpbusd_epi32(a[r][1], b, w1);
                a[r][2] = _mm512_dpbusd_epi32(a[r][2], b, w2);
                a[r][3] = _mm512_dpbusd_epi32(a[r][3], b, w3);
            }
        }
    }
    for (int r = 0; r < n; ++r)
        for (int q = 0; q < 4; ++q) _mm512_storeu_si512((void *)(acc + r * 64 + q * 16), a[r][q]);
}

static inline __attribute__((always_inline)) void dw_tile_n(const asrq_term *t, long t0, long ob, int32_t *acc,
                                                            const int n) {
    __m512i a[R][4];
    for (int r = 0; r < n; ++r)
        for (int q = 0; q < 4; ++q) a[r][q] = _mm512_setzero_si512();
    const long row = 4 * t->cp_in, xstep = t->stride * row, jstep = 4 * t->dil * row;
    const uint8_t *x0 = t->x + (t0 * t->stride + t->row_off) * row + ob * 256;
    const int8_t *wp = t->w + ob * t->taps * 256;
    for (long j = 0; j < t->taps; ++j) {
        const uint8_t *xj = x0 + j * jstep;
        __m512i w[4];
        for (int q = 0; q < 4; ++q) w[q] = _mm512_load_si512((const void *)(wp + j * 256 + q * 64));
        for (int r = 0; r < n; ++r)
            for (int q = 0; q < 4; ++q)
                a[r][q] = _mm512_dpbusd_epi32(a[r][q], _mm512_loadu_si512((const void *)(xj + r * xstep + q * 64)),
                                              w[q]);
    }
    for (int r = 0; r < n; ++r)
        for (int q = 0; q < 4; ++q) _mm512_storeu_si512((void *)(acc + r * 64 + q * 16), a[r][q]);
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
                    int32_t xv;
                    memcpy(&xv, xk + r * xstep + c * 4, 4);
                    const __m256i b = _mm256_set1_epi32(xv);
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

static inline __attribute__((always_inline)) void dw_tile_n(const asrq_term *t, long t0, long ob, int32_t *acc,
                                                            const int n) {
    const long row = 4 * t->cp_in, xstep = t->stride * row, jstep = 4 * t->dil * row;
    const uint8_t *x0 = t->x + (t0 * t->stride + t->row_off) * row + ob * 256;
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

#else
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

static void dw_tile_n(const asrq_term *t, long t0, long ob, int32_t *acc, const int n) {
    const long row = 4 * t->cp_in;
    const int8_t *wp = t->w + ob * t->taps * 256;
    memset(acc, 0, sizeof(int32_t) * 64 * (size_t)n);
    for (int r = 0; r < n; ++r) {
        const uint8_t *xr = t->x + ((t0 + r) * t->stride + t->row_off) * row + ob * 256;
        int32_t *ar = acc + r * 64;
        for (long j = 0; j < t->taps; ++j) {
            const uint8_t *xj = xr + j * 4 * t->dil * row;
            for (int c = 0; c < 64; ++c)
                for (int i = 0; i < 4; ++i) ar[c] += (int32_t)xj[c * 4 + i] * (int32_t)wp[j * 256 + c * 4 + i];
        }
    }
}
#endif

/* the row count as a compile-time constant, so that the accumulator arrays live in registers */
#define DISPATCH(fn, t, t0, ob, acc, n)  \
    switch (n) {                         \
    case 1: fn(t, t0, ob, acc, 1); break; \
    case 2: fn(t, t0, ob, acc, 2); break; \
    case 3: fn(t, t0, ob, acc, 3); break; \
    case 4: fn(t, t0, ob, acc, 4); break; \
    case 5: fn(t, t0, ob, acc, 5); break; \
    default: fn(t, t0, ob, acc, 6); break; \
    }

static void tile(const asrq_term *t, long t0, long ob, int32_t *acc, int n) {
    if (t->kind == ASRQ_DW) {
        DISPATCH(dw_tile_n, t, t0, ob, acc, n)
    } else {
        DISPATCH(gemm_tile_n, t, t0, ob, acc, n)
    }
}

/* ------------------------------------------------------------------ fused group + requantization */

void asrq_group(const asrq_term *terms, int nterms, long T_out, long oblocks, uint8_t *out8, int64_t *out64,
                long out_cp, long out_row0, int64_t post, int64_t lo, int64_t hi, int nthreads) {
    const long tiles = (T_out + R - 1) / R;
    (void)nthreads;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (long ob = 0; ob < oblocks; ++ob) {
        for (long tb = 0; tb < tiles; ++tb) {
            int32_t acc[R * 64];
            int64_t v[R * 64];
            const long t0 = tb * R;
            const int n = (int)(T_out - t0 < R ? T_out - t0 : R);
            for (int j = 0; j < nterms; ++j) {
                const asrq_term *t = terms + j;
                const int64_t *M = t->M + ob * 64, *C = t->C + ob * 64, *S = t->S + ob * 64;
                tile(t, t0, ob, acc, n);
                for (int r = 0; r < n; ++r) {
                    const int32_t *ar = acc + r * 64;
                    int64_t *vr = v + r * 64;
                    if (j == 0)
                        for (int c = 0; c < 64; ++c) vr[c] = ((int64_t)ar[c] * M[c] + C[c]) >> S[c];
                    else
                        for (int c = 0; c < 64; ++c) vr[c] += ((int64_t)ar[c] * M[c] + C[c]) >> S[c];
                }
            }
            for (int r = 0; r < n; ++r) {
                const int64_t *vr = v + r * 64;
                if (out8) {
                    uint8_t *o = out8 + (out_row0 + t0 + r) * out_cp + ob * 64;
                    int64_t y[64];
                    for (int c = 0; c < 64; ++c) {
                        y[c] = vr[c] + post;
                        y[c] = y[c] < lo ? lo : y[c];
                        y[c] = y[c] > hi ? hi : y[c];
                    }
                    for (int c = 0; c < 64; ++c) o[c] = (uint8_t)y[c];
                } else {
                    memcpy(out64 + (out_row0 + t0 + r) * out_cp + ob * 64, vr, sizeof(int64_t) * 64);
                }
            }
        }
    }
}

/* ------------------------------------------------------------------ layout helpers */

void asrq_build_x4(const uint8_t *x, long rows, long cp, long dil, uint8_t *x4, int nthreads) {
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

void asrq_fill_rows(uint8_t *x, long cp, long r0, long r1, int off) {
    if (r1 > r0) memset(x + r0 * cp, off, (size_t)((r1 - r0) * cp));
}
