/* youri's int4 x fp32 matmul for GPTQ layers on x86 CPUs with AVX2 (loaded by youri.runtime.kernels), and its
 * fp16 x fp32 one (youri_f16_matmul, at the end).
 *
 * y[m, n] = sum_k W[n, k] x[m, k] with W[n, k] = scale[n, g] * (q[n, k] - zero[n, g]), g = k / group.
 *
 * Why not float math: converting 4-bit codes to fp32 costs two shuffles per 8 weights, which caps a
 * one-core fp32 dot at ~8 G weights/s (PyTorch's own CPU int4 kernel reaches ~7). Here each group of
 * activations is rounded once per call to int16 (step = group max / 32512, so relative error <= 1.6e-5 of
 * the group's largest value: 250x finer than the bf16 activations PyTorch's kernel takes), and the codes are
 * multiplied by integer multiply-adds (vpmaddwd: 16 products per instruction), accumulated exactly in int32
 * over a group, then scaled once per group. The result is exactly W applied to the rounded activations,
 * up to fp32 summation order.
 *
 * Weight layout (made by kernels.py): per output row, blocks of 64 inputs in 32 bytes; byte j holds input
 * L(j) in its low nibble and input 32 + L(j) in its high nibble, where L swaps the middle two 8-byte
 * quarters (L(j) = j for j < 8 or j >= 24, j + 8 for 8 <= j < 16, j - 8 for 16 <= j < 24). That is the
 * order in which in-lane byte unpacking (vpunpck[lh]bw) yields inputs 0-15, 16-31, 32-47 and 48-63, so no
 * lane-crossing shuffle is needed. Requirements: group % 64 == 0, group <= 32768 (int32 accumulation).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define TILE 4 /* activation rows sharing one unpacked weight block */
#define PREFETCH 2048 /* bytes: how far ahead of the codes being read the VNNI kernel prefetches */
#define LEVELS 32512 /* |rounded activation| <= LEVELS = 127 * 256: splits into two signed bytes (VNNI kernel) */

static inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* Each group of each row to int16: xq = round(x / d), d = max|x| / LEVELS; xsum = d * sum(xq).
 * A NaN or infinite activation makes its group's d NaN, so the output is NaN as the float path's would be. */
static void round_activations(const float *x, int M, int K, int group, int16_t *xq, float *dx, float *xsum) {
    int G = K / group;
    for (int m = 0; m < M; m++) {
        for (int g = 0; g < G; g++) {
            const float *xg = x + (size_t)m * K + (size_t)g * group;
            int16_t *qg = xq + (size_t)m * K + (size_t)g * group;
            float amax = 0.0f;
            int finite = 1;
            for (int k = 0; k < group; k++) {
                finite &= isfinite(xg[k]);
                amax = fmaxf(amax, fabsf(xg[k]));
            }
            float d = finite ? amax / (float)LEVELS : NAN, inv = (finite && d > 0.0f) ? 1.0f / d : 0.0f;
            int sum = 0;
            for (int k = 0; k < group; k++) {
                int v = finite ? (int)lrintf(xg[k] * inv) : 0;
                v = v > LEVELS ? LEVELS : (v < -LEVELS ? -LEVELS : v);
                qg[k] = (int16_t)v;
                sum += v;
            }
            dx[(size_t)m * G + g] = d;
            xsum[(size_t)m * G + g] = d * (float)sum;
        }
    }
}

/* Output n for activation rows [0, R): R is a compile-time constant at each call site (always_inline). */
static inline __attribute__((always_inline)) void row_tile(const int R, const int16_t *xq, const float *dx,
                                                           const float *xsum, int K, int G, int B,
                                                           const uint8_t *wn, const float *sn, const float *zn,
                                                           float *y, int N) {
    const __m256i nibble = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
    __m256 acc[TILE];
    float correction[TILE];
    for (int r = 0; r < R; r++) {
        acc[r] = _mm256_setzero_ps();
        correction[r] = 0.0f;
    }
    for (int g = 0; g < G; g++) {
        __m256i sum[TILE];
        for (int r = 0; r < R; r++) sum[r] = _mm256_setzero_si256();
        for (int b = 0; b < B; b++) {
            size_t k0 = ((size_t)g * B + b) * 64;
            __m256i v = _mm256_loadu_si256((const __m256i *)(wn + k0 / 2));
            __m256i lo = _mm256_and_si256(v, nibble), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
            __m256i w0 = _mm256_unpacklo_epi8(lo, zero), w1 = _mm256_unpackhi_epi8(lo, zero);
            __m256i w2 = _mm256_unpacklo_epi8(hi, zero), w3 = _mm256_unpackhi_epi8(hi, zero);
            for (int r = 0; r < R; r++) {
                const __m256i *xp = (const __m256i *)(xq + (size_t)r * K + k0);
                __m256i a = _mm256_add_epi32(_mm256_madd_epi16(w0, _mm256_loadu_si256(xp)),
                                             _mm256_madd_epi16(w1, _mm256_loadu_si256(xp + 1)));
                __m256i c = _mm256_add_epi32(_mm256_madd_epi16(w2, _mm256_loadu_si256(xp + 2)),
                                             _mm256_madd_epi16(w3, _mm256_loadu_si256(xp + 3)));
                sum[r] = _mm256_add_epi32(sum[r], _mm256_add_epi32(a, c));
            }
        }
        for (int r = 0; r < R; r++) {
            __m256 factor = _mm256_set1_ps(sn[g] * dx[(size_t)r * G + g]);
            acc[r] = _mm256_fmadd_ps(factor, _mm256_cvtepi32_ps(sum[r]), acc[r]);
            correction[r] += zn[g] * xsum[(size_t)r * G + g];
        }
    }
    for (int r = 0; r < R; r++) y[(size_t)r * N] = hsum(acc[r]) - correction[r];
}

/* The body of both matmuls: round the activations, then per output row n the row tiles of TILE activation rows
 * and the 1-3 rows left (TILE_FN: row_tile or row_tile_vnni, with the row count a compile-time constant). */
#define INT4_MATMUL_BODY(TILE_FN)                                                                                   \
    int G = K / group, B = group / 64;                                                                              \
    round_activations(x, M, K, group, xq, dx, xsum);                                                                \
    _Pragma("omp parallel for num_threads(threads) schedule(static) if (threads > 1)")                              \
    for (int n = 0; n < N; n++) {                                                                                   \
        const uint8_t *wn = packed + (size_t)n * (K / 2);                                                           \
        const float *sn = scale + (size_t)n * G, *zn = szero + (size_t)n * G;                                       \
        int m = 0;                                                                                                  \
        for (; m + TILE <= M; m += TILE)                                                                            \
            TILE_FN(TILE, xq + (size_t)m * K, dx + (size_t)m * G, xsum + (size_t)m * G, K, G, B, wn, sn, zn,        \
                    y + (size_t)m * N + n, N);                                                                      \
        switch (M - m) {                                                                                            \
        case 3: TILE_FN(3, xq + (size_t)m * K, dx + (size_t)m * G, xsum + (size_t)m * G, K, G, B, wn, sn, zn,       \
                        y + (size_t)m * N + n, N); break;                                                           \
        case 2: TILE_FN(2, xq + (size_t)m * K, dx + (size_t)m * G, xsum + (size_t)m * G, K, G, B, wn, sn, zn,       \
                        y + (size_t)m * N + n, N); break;                                                           \
        case 1: TILE_FN(1, xq + (size_t)m * K, dx + (size_t)m * G, xsum + (size_t)m * G, K, G, B, wn, sn, zn,       \
                        y + (size_t)m * N + n, N); break;                                                           \
        default: break;                                                                                             \
        }                                                                                                           \
    }

/* x [M, K] fp32, packed [N, K/2], scale and szero (= scale * zero) [N, K/group] fp32 -> y [M, N] fp32.
 * Scratch: xq [M, K] int16, dx and xsum [M, K/group] fp32. */
void youri_int4_matmul(const float *x, int M, int K, const uint8_t *packed, const float *scale, const float *szero,
                       int N, int group, float *y, int16_t *xq, float *dx, float *xsum, int threads) {
    INT4_MATMUL_BODY(row_tile)
}

/* The AVX-512 VNNI variant (youri_int4_matmul_vnni; "int4-avx512" in kernels.py, chosen at load time on CPUs with
 * avx512bw + avx512_vnni; groups of a multiple of 128 inputs). Why another design: vpdpwssd on int16 codes needs
 * each code widened to 16 bits first (a lane-crossing vpmovzxbw per 32 codes), which left the kernel bound by
 * instructions, not by memory. Here the codes stay bytes and vpdpbusd multiplies 64 unsigned code bytes by 64 signed
 * activation bytes per instruction. The activations keep 16 bits: each group is rounded to integers xq with
 * |xq| <= 32512 (step = group max / 32512) and split into two signed bytes, xq = 256 * xh + xl (xh = (xq + 128) >> 8
 * in [-127, 127], xl in [-128, 127]); the two byte dot products are exact int32 sums, joined as 256 * h + l once per
 * group. Weight layout: per output row, blocks of 128 inputs in 64 bytes, byte j holding input j in its low nibble
 * and input 64 + j in its high nibble. Activation scratch, per row and block: xh of inputs 0-63, xh of 64-127, xl of
 * 0-63, xl of 64-127 (256 bytes, the size of the int16 rows). */
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma")))
#define VTILE 8

/* Each group of each row: xq = round(x / d), d = max|x| / LEVELS, split into bytes as above; xsum = d * sum(xq).
 * A NaN or infinite activation makes its group's d NaN (its bytes 0), so the output is NaN as the float path's. */
VNNI static void split_activations(const float *x, int M, int K, int group, int8_t *xb, float *dx, float *xsum) {
    int G = K / group;
    const __m512i half = _mm512_set1_epi32(128), top = _mm512_set1_epi32(LEVELS);
    for (int m = 0; m < M; m++) {
        for (int g = 0; g < G; g++) {
            const float *xg = x + (size_t)m * K + (size_t)g * group;
            __m512 amax = _mm512_setzero_ps(), nonfinite = _mm512_setzero_ps();
            for (int k = 0; k < group; k += 16) {
                __m512 v = _mm512_loadu_ps(xg + k);
                amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
                nonfinite = _mm512_add_ps(nonfinite, _mm512_sub_ps(v, v)); /* NaN once any value is NaN or inf */
            }
            float peak = _mm512_reduce_max_ps(amax);
            int finite = _mm512_reduce_add_ps(nonfinite) == 0.0f;
            float d = finite ? peak / (float)LEVELS : NAN, inv = (finite && d > 0.0f) ? 1.0f / d : 0.0f;
            __m512 scale = _mm512_set1_ps(inv);
            __m512i sum = _mm512_setzero_si512();
            int8_t *row = xb + (size_t)m * K * 2;
            for (int k = 0; k < group; k += 16) {
                __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + k), scale)); /* nearest even */
                q = _mm512_max_epi32(_mm512_min_epi32(q, top), _mm512_sub_epi32(_mm512_setzero_si512(), top));
                __m512i high = _mm512_srai_epi32(_mm512_add_epi32(q, half), 8);
                __m512i low = _mm512_sub_epi32(q, _mm512_slli_epi32(high, 8));
                sum = _mm512_add_epi32(sum, q);
                size_t i = (size_t)g * group + k; /* per block of 128 inputs: xh at [0, 128), xl at [128, 256) */
                int8_t *at = row + (i / 128) * 256 + (i % 128);
                _mm_storeu_si128((__m128i *)at, _mm512_cvtepi32_epi8(high));
                _mm_storeu_si128((__m128i *)(at + 128), _mm512_cvtepi32_epi8(low));
            }
            dx[(size_t)m * G + g] = d;
            xsum[(size_t)m * G + g] = d * (float)_mm512_reduce_add_epi32(sum);
        }
    }
}

/* acc += factor * (256 * high + low) and the zero-point term, for group g of row r. */
#define VNNI_GROUP_END(r, g, high, low)                                                                             \
    do {                                                                                                            \
        __m512i exact = _mm512_add_epi32(_mm512_slli_epi32(high, 8), low);                                          \
        __m512 factor = _mm512_set1_ps(sn[g] * dx[(size_t)(r) * G + (g)]);                                         \
        acc[r] = _mm512_fmadd_ps(factor, _mm512_cvtepi32_ps(exact), acc[r]);                                        \
        correction[r] += zn[g] * xsum[(size_t)(r) * G + (g)];                                                       \
    } while (0)

/* Output n for activation rows [0, R). Each block's low nibbles (inputs 0-63) and high nibbles (64-127) keep their
 * own sums, so a group of 64 (pairs: two groups per block) is as exact as a group of 128 or more (B blocks each). */
VNNI static inline __attribute__((always_inline)) void row_tile_vnni(const int R, const int pairs, const int8_t *xb,
                                                                     const float *dx, const float *xsum, int K, int G,
                                                                     int B, const uint8_t *wn, const float *sn,
                                                                     const float *zn, float *y, int N) {
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    __m512 acc[VTILE];
    float correction[VTILE];
    for (int r = 0; r < R; r++) {
        acc[r] = _mm512_setzero_ps();
        correction[r] = 0.0f;
    }
    for (int g = 0; g < G; g += pairs ? 2 : 1) {
        __m512i high0[VTILE], low0[VTILE], high1[VTILE], low1[VTILE];
        for (int r = 0; r < R; r++) high0[r] = low0[r] = high1[r] = low1[r] = _mm512_setzero_si512();
        for (int b = 0; b < (pairs ? 1 : B); b++) {
            size_t k0 = pairs ? (size_t)g * 64 : ((size_t)g * B + b) * 128;
            _mm_prefetch((const char *)(wn + k0 / 2 + PREFETCH), _MM_HINT_T0);
            __m512i v = _mm512_loadu_si512((const void *)(wn + k0 / 2));
            __m512i w0 = _mm512_and_si512(v, nibble), w1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
            for (int r = 0; r < R; r++) {
                const int8_t *xp = xb + (size_t)r * K * 2 + k0 * 2;
                high0[r] = _mm512_dpbusd_epi32(high0[r], w0, _mm512_loadu_si512((const void *)xp));
                low0[r] = _mm512_dpbusd_epi32(low0[r], w0, _mm512_loadu_si512((const void *)(xp + 128)));
                high1[r] = _mm512_dpbusd_epi32(high1[r], w1, _mm512_loadu_si512((const void *)(xp + 64)));
                low1[r] = _mm512_dpbusd_epi32(low1[r], w1, _mm512_loadu_si512((const void *)(xp + 192)));
            }
        }
        for (int r = 0; r < R; r++) {
            if (pairs) {
                VNNI_GROUP_END(r, g, high0[r], low0[r]);
                VNNI_GROUP_END(r, g + 1, high1[r], low1[r]);
            } else {
                VNNI_GROUP_END(r, g, _mm512_add_epi32(high0[r], high1[r]), _mm512_add_epi32(low0[r], low1[r]));
            }
        }
    }
    for (int r = 0; r < R; r++) y[(size_t)r * N] = _mm512_reduce_add_ps(acc[r]) - correction[r];
}

/* Rows [m, m + R) of output n, with `pairs` (groups of 64) a compile-time constant in each copy. */
#define VNNI_TILE(R)                                                                                                \
    do {                                                                                                            \
        if (group == 64)                                                                                            \
            row_tile_vnni(R, 1, xb + (size_t)m * K * 2, dx + (size_t)m * G, xsum + (size_t)m * G, K, G, B, wn, sn,  \
                          zn, y + (size_t)m * N + n, N);                                                            \
        else                                                                                                        \
            row_tile_vnni(R, 0, xb + (size_t)m * K * 2, dx + (size_t)m * G, xsum + (size_t)m * G, K, G, B, wn, sn,  \
                          zn, y + (size_t)m * N + n, N);                                                            \
    } while (0)

/* As youri_int4_matmul, with the layout above; xq is the byte scratch (2 * M * K bytes). */
/* Prompts (groups of a multiple of 128): outputs n and n + 1 (rows wn, wn + K/2) for activation rows [0, 4), so
 * that each activation load feeds two outputs' products (the row tile above loads one per product, and a prompt's
 * activations outgrow L1). 8 float and 16 integer accumulators, 4 code registers. */
VNNI static inline __attribute__((always_inline)) void pair_tile_vnni(const int8_t *xb, const float *dx,
                                                                      const float *xsum, int K, int G, int B,
                                                                      const uint8_t *wn, const float *sn,
                                                                      const float *zn, float *y, int N) {
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    __m512 acc[2][4];
    float correction[2][4] = {{0}};
    for (int i = 0; i < 2; i++)
        for (int r = 0; r < 4; r++) acc[i][r] = _mm512_setzero_ps();
    for (int g = 0; g < G; g++) {
        __m512i high[2][4], low[2][4];
        for (int i = 0; i < 2; i++)
            for (int r = 0; r < 4; r++) high[i][r] = low[i][r] = _mm512_setzero_si512();
        for (int b = 0; b < B; b++) {
            size_t k0 = ((size_t)g * B + b) * 128;
            __m512i v0 = _mm512_loadu_si512((const void *)(wn + k0 / 2));
            __m512i v1 = _mm512_loadu_si512((const void *)(wn + K / 2 + k0 / 2));
            __m512i a0 = _mm512_and_si512(v0, nibble), b0 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), nibble);
            __m512i a1 = _mm512_and_si512(v1, nibble), b1 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), nibble);
            for (int r = 0; r < 4; r++) {
                const int8_t *xp = xb + (size_t)r * K * 2 + k0 * 2;
                __m512i x = _mm512_loadu_si512((const void *)xp);
                high[0][r] = _mm512_dpbusd_epi32(high[0][r], a0, x);
                high[1][r] = _mm512_dpbusd_epi32(high[1][r], a1, x);
                x = _mm512_loadu_si512((const void *)(xp + 64));
                high[0][r] = _mm512_dpbusd_epi32(high[0][r], b0, x);
                high[1][r] = _mm512_dpbusd_epi32(high[1][r], b1, x);
                x = _mm512_loadu_si512((const void *)(xp + 128));
                low[0][r] = _mm512_dpbusd_epi32(low[0][r], a0, x);
                low[1][r] = _mm512_dpbusd_epi32(low[1][r], a1, x);
                x = _mm512_loadu_si512((const void *)(xp + 192));
                low[0][r] = _mm512_dpbusd_epi32(low[0][r], b0, x);
                low[1][r] = _mm512_dpbusd_epi32(low[1][r], b1, x);
            }
        }
        for (int i = 0; i < 2; i++)
            for (int r = 0; r < 4; r++) {
                __m512i exact = _mm512_add_epi32(_mm512_slli_epi32(high[i][r], 8), low[i][r]);
                __m512 factor = _mm512_set1_ps(sn[i * G + g] * dx[(size_t)r * G + g]);
                acc[i][r] = _mm512_fmadd_ps(factor, _mm512_cvtepi32_ps(exact), acc[i][r]);
                correction[i][r] += zn[i * G + g] * xsum[(size_t)r * G + g];
            }
    }
    for (int i = 0; i < 2; i++)
        for (int r = 0; r < 4; r++) y[(size_t)r * N + i] = _mm512_reduce_add_ps(acc[i][r]) - correction[i][r];
}

#define PAIR_BLOCK 16 /* outputs per block: their codes stay in cache while every 4 activation rows pass over them */

/* As youri_int4_matmul, with the layout above; xq is the byte scratch (2 * M * K bytes). */
VNNI void youri_int4_matmul_vnni(const float *x, int M, int K, const uint8_t *packed, const float *scale,
                                 const float *szero, int N, int group, float *y, int16_t *xq, float *dx, float *xsum,
                                 int threads) {
    int G = K / group, B = group / 128;
    int8_t *xb = (int8_t *)xq;
    split_activations(x, M, K, group, xb, dx, xsum);
    if (M >= 4 && group % 128 == 0) { /* a prompt: pairs of outputs by blocks of 4 rows */
        int blocks = (N + PAIR_BLOCK - 1) / PAIR_BLOCK;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
        for (int block = 0; block < blocks; block++) {
            int first = block * PAIR_BLOCK, last = first + PAIR_BLOCK < N ? first + PAIR_BLOCK : N;
            for (int m = 0; m < M; m += 4) {
                for (int n = first; n < last; n += 2) {
                    const uint8_t *wn = packed + (size_t)n * (K / 2);
                    const float *sn = scale + (size_t)n * G, *zn = szero + (size_t)n * G;
                    if (m + 4 <= M && n + 2 <= last) {
                        pair_tile_vnni(xb + (size_t)m * K * 2, dx + (size_t)m * G, xsum + (size_t)m * G, K, G, B, wn,
                                       sn, zn, y + (size_t)m * N + n, N);
                        continue;
                    }
                    for (int nn = n; nn < n + 2 && nn < last; nn++) /* edges: one output, one row at a time */
                        for (int mm = m; mm < m + 4 && mm < M; mm++)
                            row_tile_vnni(1, 0, xb + (size_t)mm * K * 2, dx + (size_t)mm * G, xsum + (size_t)mm * G,
                                          K, G, B, packed + (size_t)nn * (K / 2), scale + (size_t)nn * G,
                                          szero + (size_t)nn * G, y + (size_t)mm * N + nn, N);
                }
            }
        }
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int n = 0; n < N; n++) {
        const uint8_t *wn = packed + (size_t)n * (K / 2);
        const float *sn = scale + (size_t)n * G, *zn = szero + (size_t)n * G;
        int m = 0;
        for (; m + VTILE <= M; m += VTILE) VNNI_TILE(VTILE);
        for (; m < M; m++) VNNI_TILE(1); /* the rows left, one at a time */
    }
}

/* x [M, K] fp32, w [N, K] fp16 -> y [M, N] fp32: a linear whose weights are exactly fp16 (a GPTQ twin's LM head,
 * any layer of an fp16 checkpoint computed in fp32) read at half the bytes of its fp32 copy. Each product is the
 * fp32 product of the same values; only the summation order differs from a BLAS sgemv. */
void youri_f16_matmul(const float *x, int M, int K, const uint16_t *w, int N, float *y, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int n = 0; n < N; n++) {
        const uint16_t *wn = w + (size_t)n * K;
        for (int m = 0; m < M; m++) {
            const float *xm = x + (size_t)m * K;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
                   a3 = _mm256_setzero_ps();
            int k = 0;
            for (; k + 32 <= K; k += 32) {
                a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wn + k))),
                                     _mm256_loadu_ps(xm + k), a0);
                a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wn + k + 8))),
                                     _mm256_loadu_ps(xm + k + 8), a1);
                a2 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wn + k + 16))),
                                     _mm256_loadu_ps(xm + k + 16), a2);
                a3 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wn + k + 24))),
                                     _mm256_loadu_ps(xm + k + 24), a3);
            }
            for (; k + 8 <= K; k += 8)
                a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wn + k))),
                                     _mm256_loadu_ps(xm + k), a0);
            float sum = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
            for (; k < K; k++) sum += _cvtsh_ss(wn[k]) * xm[k];
            y[(size_t)m * N + n] = sum;
        }
    }
}
