/* youri's decode step in C: one new token of one sequence through every decoder layer of a model with Llama's math
 * (RMSNorm, rotary, grouped-query attention, SiLU MLP; q/k/v biases and Qwen3's QK-norms included) whose seven
 * projections all run on youri's int4 kernels (int4_avx2.c; built into the same library by youri.runtime.kernels,
 * driven by youri.serve.native_step).
 *
 * Why: a decode step of a 4-bit 1B model reads ~0.6 GB of weights in ~30 ms, and the ~25 small PyTorch ops per layer
 * around those matmuls (norms, rotary, cache writes, attention, SiLU, residuals) cost another ~10 ms in dispatch, a
 * third of the step. Here a step is one call; the matmuls are the same kernel calls the module path makes (same
 * results), everything between them is fp32 as Hugging Face computes it, up to summation order and the exp below
 * (a Cephes polynomial, within 2 ulp of expf).
 *
 * K/V buffers are youri.serve.decoder's: per layer [rows, kv_heads, columns, head_dim] fp32. Each row (one sequence,
 * left-padded: its tokens sit in columns [start, column]) gets its new token's K/V in column `column` and attends
 * over its own columns; the projections take all rows in one kernel call. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

void youri_int4_matmul(const float *x, int M, int K, const uint8_t *packed, const float *scale, const float *szero,
                       int N, int group, float *y, int16_t *xq, float *dx, float *xsum, int threads);
void youri_int4_matmul_vnni(const float *x, int M, int K, const uint8_t *packed, const float *scale,
                            const float *szero, int N, int group, float *y, int16_t *xq, float *dx, float *xsum,
                            int threads);

typedef struct { /* one projection in its int4 kernel's format (kernels.Int4Weight) */
    const uint8_t *packed;
    const float *scale, *szero, *bias; /* bias: NULL when none */
    int out, in, group, vnni;
} youri_proj;

typedef struct {
    youri_proj q, k, v, o, gate, up, down;
    const float *norm1, *norm2, *q_norm, *k_norm; /* q_norm, k_norm: NULL without QK-norms */
    float eps1, eps2, qk_eps, scale;
} youri_layer;

typedef struct {
    int hidden, heads, kv_heads, head_dim, intermediate, columns, rows, threads;
    int16_t *xq; /* the int4 kernels' scratch, for the widest input */
    float *dx, *xsum, *work; /* work: youri_decode_work_floats() floats */
} youri_shape;

/* Floats of work space a step of s->rows rows needs: normed input, q, k, v, attention output, scores, gate, up,
 * the residual update. */
long youri_decode_work_floats(const youri_shape *s) {
    long qd = (long)s->heads * s->head_dim, kvd = (long)s->kv_heads * s->head_dim;
    long per_row = s->hidden + 2 * qd + 2 * kvd + (long)s->heads * s->columns + 2L * s->intermediate + s->hidden;
    return per_row * s->rows;
}

static inline float hsum8(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* e^x for 8 floats (Cephes' expf: range reduction by ln 2 in two parts, degree-5 polynomial); NaN stays NaN. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.3f), _mm256_min_ps(_mm256_set1_ps(88.3f), x)); /* NaN passes through */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i power = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(power));
}

static float dot(const float *a, const float *b, int n) { /* n % 8 == 0 */
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    if (i < n) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    return hsum8(_mm256_add_ps(s0, s1));
}

/* Hugging Face's RMSNorm in fp32: w * (x * rsqrt(mean(x^2) + eps)). */
static void rms_norm(const float *x, const float *w, float eps, int n, float *out) {
    float factor = 1.0f / sqrtf(dot(x, x, n) / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = w[i] * (x[i] * factor);
}

/* y [rows, out] = x [rows, in] W^T (+ bias): one kernel call for every row. */
static void project(const youri_proj *p, const float *x, float *y, const youri_shape *s) {
    (p->vnni ? youri_int4_matmul_vnni : youri_int4_matmul)(x, s->rows, p->in, p->packed, p->scale, p->szero, p->out,
                                                           p->group, y, s->xq, s->dx, s->xsum, s->threads);
    if (p->bias)
        for (int r = 0; r < s->rows; r++)
            for (int i = 0; i < p->out; i++) y[(size_t)r * p->out + i] += p->bias[i];
}

/* Per head: the QK-norm (if any), then rotary, x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1). */
static void rotate(float *x, int heads, int d, const float *norm, float eps, const float *cos, const float *sin) {
    int half = d / 2;
    float tmp[1024];
    for (int h = 0; h < heads; h++) {
        float *xh = x + (size_t)h * d;
        if (norm) rms_norm(xh, norm, eps, d, xh);
        for (int i = 0; i < d; i++) tmp[i] = xh[i];
        for (int i = 0; i < half; i++) xh[i] = tmp[i] * cos[i] - tmp[i + half] * sin[i];
        for (int i = half; i < d; i++) xh[i] = tmp[i] * cos[i] + tmp[i - half] * sin[i];
    }
}

/* Softmax attention of each row's query heads over its columns [starts[r], column] of its K/V heads. */
static void attend(const float *q, const float *keys, const float *values, const youri_shape *s, const int *starts,
                   int column, float scale, float *scores, float *out) {
    int d = s->head_dim, group = s->heads / s->kv_heads;
    size_t row_kv = (size_t)s->kv_heads * s->columns * d;
#pragma omp parallel for num_threads(s->threads) schedule(static) if (s->threads > 1)
    for (int task = 0; task < s->rows * s->heads; task++) {
        int r = task / s->heads, h = task % s->heads, low = starts[r], span = column - low + 1;
        const float *qh = q + (size_t)task * d;
        const float *kh = keys + r * row_kv + (size_t)(h / group) * s->columns * d;
        const float *vh = values + r * row_kv + (size_t)(h / group) * s->columns * d;
        float *p = scores + (size_t)task * s->columns, peak = -INFINITY, total = 0.0f;
        for (int j = 0; j < span; j++) {
            p[j] = dot(qh, kh + (size_t)(low + j) * d, d) * scale;
            peak = fmaxf(peak, p[j]);
        }
        int j = 0;
        __m256 sum8 = _mm256_setzero_ps();
        for (; j + 8 <= span; j += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), _mm256_set1_ps(peak)));
            _mm256_storeu_ps(p + j, e);
            sum8 = _mm256_add_ps(sum8, e);
        }
        total = hsum8(sum8);
        for (; j < span; j++) total += (p[j] = expf(p[j] - peak));
        float *oh = out + (size_t)task * d;
        for (int i = 0; i < d; i += 8) {
            __m256 acc = _mm256_setzero_ps();
            for (int t = 0; t < span; t++)
                acc = _mm256_fmadd_ps(_mm256_set1_ps(p[t]), _mm256_loadu_ps(vh + (size_t)(low + t) * d + i), acc);
            _mm256_storeu_ps(oh + i, _mm256_div_ps(acc, _mm256_set1_ps(total)));
        }
    }
}

/* silu(gate) * up, in place into gate: gate / (1 + e^-gate) * up. */
static void silu_mul(float *gate, const float *up, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 silu = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* x [rows, hidden] (the embedded tokens, updated in place to the last layer's output); keys/values: each layer's
 * buffer; starts: each row's first column; cos, sin: the rotary tables [positions, head_dim] (row r's token sits at
 * position column - starts[r]). */
void youri_decode_step(const youri_layer *layers, int count, const youri_shape *s, float *x, float *const *keys,
                       float *const *values, int column, const int *starts, const float *cos, const float *sin) {
    int d = s->head_dim, qd = s->heads * d, kvd = s->kv_heads * d, rows = s->rows, hidden = s->hidden;
    float *normed = s->work, *q = normed + (size_t)rows * hidden, *k = q + (size_t)rows * qd;
    float *v = k + (size_t)rows * kvd, *att = v + (size_t)rows * kvd, *scores = att + (size_t)rows * qd;
    float *gate = scores + (size_t)rows * s->heads * s->columns, *up = gate + (size_t)rows * s->intermediate;
    float *delta = up + (size_t)rows * s->intermediate;
    size_t row_kv = (size_t)s->kv_heads * s->columns * d;
    for (int l = 0; l < count; l++) {
        const youri_layer *layer = layers + l;
        for (int r = 0; r < rows; r++)
            rms_norm(x + (size_t)r * hidden, layer->norm1, layer->eps1, hidden, normed + (size_t)r * hidden);
        project(&layer->q, normed, q, s);
        project(&layer->k, normed, k, s);
        project(&layer->v, normed, v, s);
        for (int r = 0; r < rows; r++) {
            size_t position = (size_t)(column - starts[r]) * d;
            rotate(q + (size_t)r * qd, s->heads, d, layer->q_norm, layer->qk_eps, cos + position, sin + position);
            rotate(k + (size_t)r * kvd, s->kv_heads, d, layer->k_norm, layer->qk_eps, cos + position, sin + position);
            for (int h = 0; h < s->kv_heads; h++)
                for (int i = 0; i < d; i++) {
                    size_t at = r * row_kv + ((size_t)h * s->columns + column) * d + i;
                    keys[l][at] = k[(size_t)r * kvd + h * d + i];
                    values[l][at] = v[(size_t)r * kvd + h * d + i];
                }
        }
        attend(q, keys[l], values[l], s, starts, column, layer->scale, scores, att);
        project(&layer->o, att, delta, s);
        for (size_t i = 0; i < (size_t)rows * hidden; i++) x[i] += delta[i];
        for (int r = 0; r < rows; r++)
            rms_norm(x + (size_t)r * hidden, layer->norm2, layer->eps2, hidden, normed + (size_t)r * hidden);
        project(&layer->gate, normed, gate, s);
        project(&layer->up, normed, up, s);
        silu_mul(gate, up, rows * s->intermediate);
        project(&layer->down, gate, delta, s);
        for (size_t i = 0; i < (size_t)rows * hidden; i++) x[i] += delta[i];
    }
}
