/* engine/weight.c - f32/bf16/int8 weight matrices and the matrix product over them. Hot path.
 *
 * Owns: conversion and quantization of rows into a type, and the kernels of ym_matmul:
 *   - small M (decode, batched decode): a block of RN weight rows meets a block of MB input
 *     rows; per 16 inputs, RN weight vectors are loaded (bf16/int8 widened to f32 in
 *     registers) and MB*RN FMAs accumulate; one horizontal sum per output at the end, times
 *     the row's int8 scale. The RN rows stay in L1 while the input blocks pass over them, so
 *     the weight streams from memory once per call, whatever M;
 *   - many rows (prefill): f32 goes straight to OpenBLAS's sgemm; bf16/int8 weights are
 *     widened a tile of TILE_N rows at a time into the caller's scratch, then sgemm.
 * The AVX-512 kernels are chosen at run time; the portable C loops run anywhere (and when
 * forced, for the tests). Runs on any thread; never allocates; never locks.
 * Must not: change what it reads (weights are shared by every thread). */
#include "engine/weight.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "engine/safetensors.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

/* Above this many rows a product goes to sgemm (its packing is amortized by then). */
#ifndef YM_MATMUL_SMALL_M
#define YM_MATMUL_SMALL_M 32
#endif
#define TILE_N 128 /* weight rows widened per sgemm call (bf16/int8, many rows) */

const char *ym_wtype_name(ym_wtype t)
{
    switch (t) {
    case YM_WT_F32:
        return "f32";
    case YM_WT_BF16:
        return "bf16";
    case YM_WT_INT8:
        return "int8";
    default:
        return "auto";
    }
}

ym_err ym_wtype_parse(const char *s, ym_wtype *out, ym_diag *diag)
{
    static const ym_wtype all[] = {YM_WT_F32, YM_WT_BF16, YM_WT_INT8, YM_WT_AUTO};
    for (size_t i = 0; s != NULL && i < sizeof(all) / sizeof(all[0]); i++)
        if (strcmp(s, ym_wtype_name(all[i])) == 0) {
            *out = all[i];
            return YM_OK;
        }
    return ym_diag_set(diag, YM_EINVAL, "weights: '%s' is not one of f32, bf16, int8, auto",
                       s != NULL ? s : "");
}

size_t ym_wtype_size(ym_wtype t)
{
    return t == YM_WT_BF16 ? 2 : t == YM_WT_INT8 ? 1 : 4;
}

size_t ym_weight_bytes(const ym_weight *w)
{
    size_t n = (size_t)w->n_rows * (size_t)w->n_cols * ym_wtype_size(w->type);
    return n + (w->type == YM_WT_INT8 ? (size_t)w->n_rows * sizeof(float) : 0);
}

static inline float bf16f(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

float ym_weight_at(const ym_weight *w, int n, int k)
{
    size_t i = (size_t)n * (size_t)w->n_cols + (size_t)k;
    switch (w->type) {
    case YM_WT_BF16:
        return bf16f(((const uint16_t *)w->data)[i]);
    case YM_WT_INT8:
        return (float)((const int8_t *)w->data)[i] * w->scale[n];
    default:
        return ((const float *)w->data)[i];
    }
}

void ym_weight_row_f32(const ym_weight *w, int n, int k0, int k1, float *out)
{
    size_t base = (size_t)n * (size_t)w->n_cols;
    switch (w->type) {
    case YM_WT_BF16: {
        const uint16_t *p = (const uint16_t *)w->data + base;
        for (int k = k0; k < k1; k++)
            out[k - k0] = bf16f(p[k]);
        break;
    }
    case YM_WT_INT8: {
        const int8_t *p = (const int8_t *)w->data + base;
        const float s = w->scale[n];
        for (int k = k0; k < k1; k++)
            out[k - k0] = (float)p[k] * s;
        break;
    }
    default:
        memcpy(out, (const float *)w->data + base + k0, sizeof(float) * (size_t)(k1 - k0));
    }
}

ym_err ym_weight_convert(ym_wtype t, const float *src, size_t lds, int N, int K, void *data,
                         float *scale, const float *fixed)
{
    for (int n = 0; n < N; n++) {
        const float *r = src + (size_t)n * lds;
        size_t o = (size_t)n * (size_t)K;
        float amax = 0.0f;
        for (int k = 0; k < K; k++) {
            if (!isfinite(r[k]))
                return YM_EINVAL;
            amax = fmaxf(amax, fabsf(r[k]));
        }
        switch (t) {
        case YM_WT_F32:
            memcpy((float *)data + o, r, sizeof(float) * (size_t)K);
            break;
        case YM_WT_BF16:
            for (int k = 0; k < K; k++)
                ((uint16_t *)data)[o + k] = ym_f32_to_bf16(r[k]);
            break;
        case YM_WT_INT8: {
            float s = fixed != NULL ? fixed[n] : amax / 127.0f;
            int8_t *q = (int8_t *)data + o;
            for (int k = 0; k < K; k++) {
                float v = s > 0.0f ? rintf(r[k] / s) : 0.0f;
                q[k] = (int8_t)(v > 127.0f ? 127 : v < -127.0f ? -127 : (int)v);
            }
            scale[n] = s;
            break;
        }
        default:
            return YM_EINVAL;
        }
    }
    return YM_OK;
}

/* ---- reference ------------------------------------------------------------------------- */

void ym_matmul_ref(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                   int n0, int n1, float beta)
{
    const int K = W->n_cols;
    for (int m = 0; m < M; m++)
        for (int n = n0; n < n1; n++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++)
                acc += (double)A[(size_t)m * lda + k] * ym_weight_at(W, n, k);
            float *c = C + (size_t)m * ldc + (n - n0);
            *c = beta != 0.0f ? *c + (float)acc : (float)acc;
        }
}

/* ---- portable kernels ------------------------------------------------------------------ */

/* Dot products in 8 independent lanes, so that the compiler vectorizes them for the base ISA. */
#define DOT8(name, type, widen)                                                                \
    static float name(const float *a, const type *w, int K)                                    \
    {                                                                                          \
        float acc[8] = {0};                                                                    \
        int k = 0;                                                                             \
        for (; k + 8 <= K; k += 8)                                                             \
            for (int j = 0; j < 8; j++)                                                        \
                acc[j] += a[k + j] * widen(w[k + j]);                                          \
        float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])); \
        for (; k < K; k++)                                                                     \
            s += a[k] * widen(w[k]);                                                           \
        return s;                                                                              \
    }
#define WIDEN_F32(v) (v)
#define WIDEN_I8(v) ((float)(v))
DOT8(dot_f32, float, WIDEN_F32)
DOT8(dot_bf16, uint16_t, bf16f)
DOT8(dot_i8, int8_t, WIDEN_I8)

static void mm_portable(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                        int n0, int n1, float beta)
{
    const int K = W->n_cols;
    for (int n = n0; n < n1; n++) {
        size_t o = (size_t)n * (size_t)K;
        for (int m = 0; m < M; m++) {
            const float *a = A + (size_t)m * lda;
            float s;
            if (W->type == YM_WT_BF16)
                s = dot_bf16(a, (const uint16_t *)W->data + o, K);
            else if (W->type == YM_WT_INT8)
                s = dot_i8(a, (const int8_t *)W->data + o, K) * W->scale[n];
            else
                s = dot_f32(a, (const float *)W->data + o, K);
            float *c = C + (size_t)m * ldc + (n - n0);
            *c = beta != 0.0f ? *c + s : s;
        }
    }
}

/* ---- AVX-512 kernels ------------------------------------------------------------------- */

#if HAVE_X86
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define INLINE512 __attribute__((target("avx512f,avx512bw,avx512vl,fma"), always_inline)) \
    static inline

/* 16 weights of type T at element offset off, as f32; lanes outside msk are 0. */
INLINE512 __m512 wload(int T, const void *base, size_t off, __mmask16 msk, int full)
{
    if (T == YM_WT_BF16) {
        const uint16_t *p = (const uint16_t *)base + off;
        __m256i h = full ? _mm256_loadu_si256((const __m256i *)p) : _mm256_maskz_loadu_epi16(msk, p);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (T == YM_WT_INT8) {
        const int8_t *p = (const int8_t *)base + off;
        __m128i b = full ? _mm_loadu_si128((const __m128i *)p) : _mm_maskz_loadu_epi8(msk, p);
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
    }
    const float *p = (const float *)base + off;
    return full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(msk, p);
}

/* C[m, r] (+)= sum_k A[m, k] W[r, k] for m < MB, r < RN; W points at row 0 of the block. */
INLINE512 void kblk(float *C, int ldc, const float *A, int lda, const void *W, int K,
                    const float *scale, float beta, int MB, int RN, int T)
{
    __m512 acc[4][8];
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++) acc[m][r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 w[8];
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
            w[r] = wload(T, W, (size_t)r * K + k, 0xFFFF, 1);
        _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        {
            __m512 a = _mm512_loadu_ps(A + (size_t)m * lda + k);
            _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
                acc[m][r] = _mm512_fmadd_ps(a, w[r], acc[m][r]);
        }
    }
    if (k < K) {
        __mmask16 msk = (__mmask16)((1u << (K - k)) - 1u);
        __m512 w[8];
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
            w[r] = wload(T, W, (size_t)r * K + k, msk, 0);
        _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        {
            __m512 a = _mm512_maskz_loadu_ps(msk, A + (size_t)m * lda + k);
            _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
                acc[m][r] = _mm512_fmadd_ps(a, w[r], acc[m][r]);
        }
    }
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
        {
            float s = _mm512_reduce_add_ps(acc[m][r]);
            if (T == YM_WT_INT8)
                s *= scale[r];
            float *c = C + (size_t)m * ldc + r;
            *c = beta != 0.0f ? *c + s : s;
        }
}

typedef void (*kblk_fn)(float *, int, const float *, int, const void *, int, const float *,
                        float);
#define KDEF(T, tn, mb, rn)                                                                    \
    T512 static void k_##tn##_##mb##_##rn(float *C, int ldc, const float *A, int lda,          \
                                          const void *W, int K, const float *s, float beta)    \
    {                                                                                          \
        kblk(C, ldc, A, lda, W, K, s, beta, mb, rn, T);                                        \
    }
#define KROW8(T, tn)                                                                           \
    KDEF(T, tn, 1, 1) KDEF(T, tn, 1, 2) KDEF(T, tn, 1, 3) KDEF(T, tn, 1, 4) KDEF(T, tn, 1, 5)  \
    KDEF(T, tn, 1, 6) KDEF(T, tn, 1, 7) KDEF(T, tn, 1, 8)
#define KROW4(T, tn, mb) KDEF(T, tn, mb, 1) KDEF(T, tn, mb, 2) KDEF(T, tn, mb, 3) KDEF(T, tn, mb, 4)
#define KTYPE(T, tn) KROW8(T, tn) KROW4(T, tn, 2) KROW4(T, tn, 3) KROW4(T, tn, 4)
KTYPE(YM_WT_F32, f32)
KTYPE(YM_WT_BF16, bf16)
KTYPE(YM_WT_INT8, i8)
#define KT8(tn, mb) {0, k_##tn##_##mb##_1, k_##tn##_##mb##_2, k_##tn##_##mb##_3, k_##tn##_##mb##_4, \
                     k_##tn##_##mb##_5, k_##tn##_##mb##_6, k_##tn##_##mb##_7, k_##tn##_##mb##_8}
#define KT4(tn, mb) {0, k_##tn##_##mb##_1, k_##tn##_##mb##_2, k_##tn##_##mb##_3, k_##tn##_##mb##_4, \
                     0, 0, 0, 0}
#define KTAB(tn) {{0}, KT8(tn, 1), KT4(tn, 2), KT4(tn, 3), KT4(tn, 4)}
/* [type][mb][rn] */
static const kblk_fn ktab[3][5][9] = {KTAB(f32), KTAB(bf16), KTAB(i8)};

static void mm_avx512(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                      int n0, int n1, float beta)
{
    const int K = W->n_cols, T = W->type;
    const size_t es = ym_wtype_size(W->type);
    const int RN = M == 1 ? 8 : 4;
    for (int n = n0; n < n1; n += RN) {
        int rn = n1 - n < RN ? n1 - n : RN;
        const void *w = (const char *)W->data + (size_t)n * K * es;
        const float *s = W->scale != NULL ? W->scale + n : NULL;
        for (int m = 0; m < M; m += 4) {
            int mb = M - m < 4 ? M - m : 4;
            ktab[T][mb][rn](C + (size_t)m * ldc + (n - n0), ldc, A + (size_t)m * lda, lda, w, K,
                            s, beta);
        }
    }
}

static int isa_checked, isa_avx512;
static int isa_has_avx512(void)
{
    if (!isa_checked) {
        __builtin_cpu_init();
        isa_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl");
        isa_checked = 1;
    }
    return isa_avx512;
}
#else
static int isa_has_avx512(void)
{
    return 0;
}
#endif

static int force_portable;

void ym_matmul_force_portable(int on)
{
    force_portable = on;
}

static int use_avx512(void)
{
    return !force_portable && isa_has_avx512();
}

const char *ym_matmul_isa(void)
{
    return use_avx512() ? "avx512" : "portable";
}

size_t ym_matmul_scratch(int K)
{
    return (size_t)TILE_N * (size_t)(K > 0 ? K : 1);
}

static void mm_small(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                     int n0, int n1, float beta)
{
#if HAVE_X86
    if (use_avx512()) {
        mm_avx512(C, ldc, A, lda, M, W, n0, n1, beta);
        return;
    }
#endif
    mm_portable(C, ldc, A, lda, M, W, n0, n1, beta);
}

void ym_matmul(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W, int n0,
               int n1, float beta, float *scratch)
{
    if (M <= 0 || n1 <= n0)
        return;
    const int K = W->n_cols;
    if (M <= YM_MATMUL_SMALL_M) {
        mm_small(C, ldc, A, lda, M, W, n0, n1, beta);
        return;
    }
    if (W->type == YM_WT_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, n1 - n0, K, 1.0f, A, lda,
                    (const float *)W->data + (size_t)n0 * K, K, beta, C, ldc);
        return;
    }
    if (scratch == NULL) {
        mm_small(C, ldc, A, lda, M, W, n0, n1, beta);
        return;
    }
    for (int n = n0; n < n1; n += TILE_N) {
        int tn = n1 - n < TILE_N ? n1 - n : TILE_N;
        for (int r = 0; r < tn; r++)
            ym_weight_row_f32(W, n + r, 0, K, scratch + (size_t)r * K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, tn, K, 1.0f, A, lda, scratch, K,
                    beta, C + (n - n0), ldc);
    }
}
