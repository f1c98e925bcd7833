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

/* x [M, K] fp32, packed [N, K/2], scale and szero (= scale * zero) [N, K/group] fp32 -> y [M, N] fp32.
 * Scratch: xq [M, K] int16, dx and xsum [M, K/group] fp32. */
void youri_int4_matmul(const float *x, int M, int K, const uint8_t *packed, const float *scale, const float *szero,
                       int N, int group, float *y, int16_t *xq, float *dx, float *xsum, int threads) {
    int G = K / group, B = group / 64;
    round_activations(x, M, K, group, xq, dx, xsum);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int n = 0; n < N; n++) {
        const uint8_t *wn = packed + (size_t)n * (K / 2);
        const float *sn = scale + (size_t)n * G, *zn = szero + (size_t)n * G;
        for (int m = 0; m < M; m += TILE) {
#define AVX2_TILE(R)                                                                                                \
    row_tile(R, xq + (size_t)m * K, dx + (size_t)m * G, xsum + (size_t)m * G, K, G, B, wn, sn, zn,                 \
             y + (size_t)m * N + n, N)
            switch (M - m < TILE ? M - m : TILE) { /* the row count a compile-time constant in each copy */
            case 1: AVX2_TILE(1); break;
            case 2: AVX2_TILE(2); break;
            case 3: AVX2_TILE(3); break;
            default: AVX2_TILE(TILE); break;
            }
#undef AVX2_TILE
        }
    }
}

/* The AVX-512 VNNI variant (youri_int4_matmul_vnni; "int4-avx512" in kernels.py, chosen at load time on CPUs with
 * avx512bw + avx512_vnni; groups of a multiple of 32 inputs). Why another design: vpdpwssd on int16 codes needs each
 * code widened to 16 bits first, and a per-output-row layout leaves a float epilogue per output, row and group that
 * costs as much as the products. Here the codes stay bytes, vpdpbusd multiplies them by activation bytes, and the 16
 * int32 lanes of an accumulator are 16 outputs: one epilogue per 16 outputs.
 *
 * The activations keep 16 bits: each group is rounded to integers xq with |xq| <= LEVELS (step = group max / LEVELS)
 * and split into two signed bytes, xq = 256 * xh + xl (xh = (xq + 128) >> 8 in [-127, 127], xl in [-128, 127]); the
 * two byte dot products are exact int32 sums, joined as 256 * h + l once per group. Activation scratch per row: xh of
 * its K inputs, then xl (2K bytes, the size of the int16 rows).
 *
 * Weight layout (kernels.py's _pack_interleaved): outputs in blocks of 16 (the last one zero-padded); per block and
 * per 8 inputs k..k+7, 64 bytes, byte 4j + t holding output j's code of input k + t in its low nibble and of input
 * k + 4 + t in its high nibble, so that one vpdpbusd takes 4 inputs of 16 outputs against 4 activation bytes
 * broadcast. Scales and scale * zero: [blocks, groups, 16] fp32. */
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma")))
#define VTILE 8 /* activation rows sharing each unpacked block of codes */
#ifndef PREFETCH
#define PREFETCH 2048 /* bytes: how far ahead of the codes being read they are prefetched (one core streams faster) */
#endif

/* Each group of each row: xq = round(x / d), d = max|x| / LEVELS, split into bytes as above; xsum = d * sum(xq).
 * A NaN or infinite activation makes its group's d NaN, so the output is NaN as the float path's would be. */
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
            int8_t *high = xb + (size_t)m * K * 2 + (size_t)g * group, *low = high + K;
            for (int k = 0; k < group; k += 16) {
                __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + k), scale)); /* nearest even */
                q = _mm512_max_epi32(_mm512_min_epi32(q, top), _mm512_sub_epi32(_mm512_setzero_si512(), top));
                __m512i h = _mm512_srai_epi32(_mm512_add_epi32(q, half), 8);
                sum = _mm512_add_epi32(sum, q);
                _mm_storeu_si128((__m128i *)(high + k), _mm512_cvtepi32_epi8(h));
                _mm_storeu_si128((__m128i *)(low + k), _mm512_cvtepi32_epi8(_mm512_sub_epi32(q, _mm512_slli_epi32(h, 8))));
            }
            dx[(size_t)m * G + g] = d;
            xsum[(size_t)m * G + g] = d * (float)_mm512_reduce_add_epi32(sum);
        }
    }
}

static inline int32_t bytes4(const int8_t *p) { /* 4 activation bytes as one int32, to broadcast */
    int32_t v;
    __builtin_memcpy(&v, p, 4);
    return v;
}

/* Outputs [16 b, 16 b + 16) of activation rows [0, R), R a compile-time constant at each call site (always_inline).
 * One row keeps four accumulators (the products of low and high nibbles apart): vpdpbusd's latency, not its
 * throughput, would bind two chains; several rows keep two each. */
VNNI static inline __attribute__((always_inline)) void block_tile_vnni(const int R, const int8_t *xb, const float *dx,
                                                                       const float *xsum, int K, int G, int group,
                                                                       const uint8_t *wb, const float *sb,
                                                                       const float *zb, float *y, int N, int n0) {
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    __m512 acc[VTILE];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int g = 0; g < G; g++) {
        __m512i high[VTILE], low[VTILE], high2 = _mm512_setzero_si512(), low2 = _mm512_setzero_si512();
        for (int r = 0; r < R; r++) high[r] = low[r] = _mm512_setzero_si512();
        for (int k = g * group; k < (g + 1) * group; k += 8) {
            _mm_prefetch((const char *)(wb + (size_t)k * 8 + PREFETCH), _MM_HINT_T0);
            __m512i v = _mm512_loadu_si512((const void *)(wb + (size_t)k * 8));
            __m512i w0 = _mm512_and_si512(v, nibble), w1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
            for (int r = 0; r < R; r++) {
                const int8_t *xh = xb + (size_t)r * K * 2 + k, *xl = xh + K;
                high[r] = _mm512_dpbusd_epi32(high[r], w0, _mm512_set1_epi32(bytes4(xh)));
                low[r] = _mm512_dpbusd_epi32(low[r], w0, _mm512_set1_epi32(bytes4(xl)));
                if (R == 1) {
                    high2 = _mm512_dpbusd_epi32(high2, w1, _mm512_set1_epi32(bytes4(xh + 4)));
                    low2 = _mm512_dpbusd_epi32(low2, w1, _mm512_set1_epi32(bytes4(xl + 4)));
                } else {
                    high[r] = _mm512_dpbusd_epi32(high[r], w1, _mm512_set1_epi32(bytes4(xh + 4)));
                    low[r] = _mm512_dpbusd_epi32(low[r], w1, _mm512_set1_epi32(bytes4(xl + 4)));
                }
            }
        }
        if (R == 1) {
            high[0] = _mm512_add_epi32(high[0], high2);
            low[0] = _mm512_add_epi32(low[0], low2);
        }
        __m512 scale = _mm512_loadu_ps(sb + (size_t)g * 16), szero = _mm512_loadu_ps(zb + (size_t)g * 16);
        for (int r = 0; r < R; r++) {
            __m512i exact = _mm512_add_epi32(_mm512_slli_epi32(high[r], 8), low[r]);
            __m512 factor = _mm512_mul_ps(scale, _mm512_set1_ps(dx[(size_t)r * G + g]));
            acc[r] = _mm512_fmadd_ps(factor, _mm512_cvtepi32_ps(exact), acc[r]);
            acc[r] = _mm512_fnmadd_ps(szero, _mm512_set1_ps(xsum[(size_t)r * G + g]), acc[r]);
        }
    }
    __mmask16 keep = N - n0 >= 16 ? 0xFFFF : (__mmask16)((1u << (N - n0)) - 1);
    for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(y + (size_t)r * N + n0, keep, acc[r]);
}

/* As youri_int4_matmul, with the layout above; xq is the byte scratch (2 * M * K bytes). */
VNNI void youri_int4_matmul_vnni(const float *x, int M, int K, const uint8_t *packed, const float *scale,
                                 const float *szero, int N, int group, float *y, int16_t *xq, float *dx, float *xsum,
                                 int threads) {
    int G = K / group, blocks = (N + 15) / 16;
    int8_t *xb = (int8_t *)xq;
    split_activations(x, M, K, group, xb, dx, xsum);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int b = 0; b < blocks; b++) {
        const uint8_t *wb = packed + (size_t)b * 8 * K;
        const float *sb = scale + (size_t)b * G * 16, *zb = szero + (size_t)b * G * 16;
        for (int m = 0; m < M; m += VTILE) {
#define VNNI_TILE(R)                                                                                                \
    block_tile_vnni(R, xb + (size_t)m * K * 2, dx + (size_t)m * G, xsum + (size_t)m * G, K, G, group, wb, sb, zb,   \
                    y + (size_t)m * N, N, b * 16)
            switch (M - m < VTILE ? M - m : VTILE) { /* the row count a compile-time constant in each copy */
            case 1: VNNI_TILE(1); break;
            case 2: VNNI_TILE(2); break;
            case 3: VNNI_TILE(3); break;
            case 4: VNNI_TILE(4); break;
            case 5: VNNI_TILE(5); break;
            case 6: VNNI_TILE(6); break;
            case 7: VNNI_TILE(7); break;
            default: VNNI_TILE(VTILE); break;
            }
#undef VNNI_TILE
        }
    }
}

/* x [M, K] fp32, w [N, K] fp16 -> y [M, N] fp32: a linear whose weights are exactly fp16 (a GPTQ twin's LM head,
 * any layer of an fp16 checkpoint computed in fp32) read at half the bytes of its fp32 copy. Each product is the
 * fp32 product of the same values; only the summation order differs from a BLAS sgemv. */
/* Output n for activation rows [0, R) (R <= 2, a compile-time constant at each call site): each 8 weights are
 * converted once for all R rows; per row four accumulators over the same chunks whatever R is, so that a row's
 * result never depends on the rows computed beside it. */
static inline __attribute__((always_inline)) void f16_rows(const int R, const float *x, int K, const uint16_t *wn,
                                                           float *y, int N) {
    __m256 a[2][4];
    for (int r = 0; r < R; r++) a[r][0] = a[r][1] = a[r][2] = a[r][3] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32)
        for (int c = 0; c < 4; c++) {
            __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wn + k + 8 * c)));
            for (int r = 0; r < R; r++)
                a[r][c] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)r * K + k + 8 * c), a[r][c]);
        }
    for (; k + 8 <= K; k += 8) {
        __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wn + k)));
        for (int r = 0; r < R; r++) a[r][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)r * K + k), a[r][0]);
    }
    for (int r = 0; r < R; r++) {
        float sum = hsum(_mm256_add_ps(_mm256_add_ps(a[r][0], a[r][1]), _mm256_add_ps(a[r][2], a[r][3])));
        for (int t = k; t < K; t++) sum += _cvtsh_ss(wn[t]) * x[(size_t)r * K + t];
        y[(size_t)r * N] = sum;
    }
}

void youri_f16_matmul(const float *x, int M, int K, const uint16_t *w, int N, float *y, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int n = 0; n < N; n++) {
        const uint16_t *wn = w + (size_t)n * K;
        for (int m = 0; m < M; m += 2) {
            const float *xm = x + (size_t)m * K;
            float *ym = y + (size_t)m * N + n;
            if (M - m == 1)
                f16_rows(1, xm, K, wn, ym, N);
            else
                f16_rows(2, xm, K, wn, ym, N);
        }
    }
}
