/* engine/weight.c - f32/bf16/int8 weight matrices and the matrix product over them. Hot path.
 *
 * Owns: conversion and quantization of rows into a type, and the kernels of ym_matmul:
 *   - small M (decode, batched decode): a block of RN weight rows meets a block of MB input
 *     rows; per 16 inputs, RN weight vectors are loaded (bf16/int8 widened to f32 in
 *     registers) and MB*RN FMAs accumulate; one horizontal sum per output at the end, times
 *     the row's int8 scale. The RN rows stay in L1 while the input blocks pass over them, so
 *     the weight streams from memory once per call, whatever M;
 *   - many rows (prefill): f32 goes straight to OpenBLAS's sgemm; bf16/int8 weights are
 *     widened a tile of TILE_N rows at a time into the caller's scratch, then sgemm;
 *   - int8 weights on a CPU with AVX512-VNNI (by default): every row count quantizes its
 *     input rows into the scratch and multiplies int8 by int8 (mm_vnni, below);
 *   - bf16 weights on a CPU with AVX512-BF16, when asked (off by default): every row count
 *     rounds its input rows to bf16 into the scratch and multiplies bf16 by bf16 (mm_bfdp).
 * The AVX-512 kernels are chosen at run time; the portable C loops run anywhere (and when
 * forced, for the tests). Runs on any thread; never allocates; never locks.
 * Must not: change what it reads (weights are shared by every thread). */
#include "engine/weight.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
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
#define VNNI_CHUNK 256 /* int8 x int8: input rows quantized at a time (into the scratch) */
#define TILE_N 128 /* weight rows widened per sgemm call (bf16/int8, many rows) */
#define MBMAX 4    /* input rows per block of the small-M kernel (8 spills registers) */
#define PFB 1      /* software prefetch distance of the small-M kernels, in row blocks */

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

/* Dot products in 8 independent lanes, so that the compiler vectorizes them: for the base ISA
 * and, chosen at load time on CPUs that have it, AVX2 + FMA (x86-64-v3): the path of CPUs
 * without AVX-512. Not under ThreadSanitizer: the clones' ifunc resolver is instrumented and
 * runs during relocation, before the sanitizer's runtime exists (the process dies at start). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif
#define DOT8(name, type, widen)                                                                \
    CLONES static float name(const float *a, const type *w, int K)                             \
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
                        size_t ld, int n0, int n1, float beta)
{
    const int K = W->n_cols;
    for (int n = n0; n < n1; n++) {
        size_t o = (size_t)n * ld;
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

/* Lane j of the result = the sum of v[j]'s 16 elements, for 16 vectors at once: four levels
 * of shuffles and adds instead of 16 horizontal reductions (as engine/kernels.c's scan). */
INLINE512 __m512 sum16(__m512 v[16])
{
    for (int k = 0; k < 8; k++)
        v[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xEE));
    for (int k = 0; k < 4; k++)
        v[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xDD));
    for (int k = 0; k < 2; k++)
        v[k] = _mm512_add_ps(_mm512_shuffle_ps(v[2 * k], v[2 * k + 1], 0x44),
                             _mm512_shuffle_ps(v[2 * k], v[2 * k + 1], 0xEE));
    __m512 t = _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], 0x88),
                             _mm512_shuffle_ps(v[0], v[1], 0xDD));
    const __m512i back = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(back, t);
}

/* C[m, r] (+)= sum_k A[m, k] W[r, k] for m < MB, r < RN; W points at row 0 of the block. */
INLINE512 void kblk(float *C, int ldc, const float *A, int lda, const void *W, int ldw, int K,
                    const float *scale, float beta, int MB, int RN, int T)
{
    __m512 acc[8][8];
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++) acc[m][r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 w[8];
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
        {
            /* the same place one block of rows ahead, once per cache line: rows are short
             * (768 bytes of int8 on the 130m shape) and the next block starts a new stream
             * the hardware prefetcher would pick up late */
            const size_t es = T == YM_WT_INT8 ? 1 : T == YM_WT_BF16 ? 2 : 4;
            if (((k * es) & 63) == 0)
                _mm_prefetch((const char *)W + ((size_t)(PFB * RN + r) * ldw + k) * es, _MM_HINT_T0);
            w[r] = wload(T, W, (size_t)r * ldw + k, 0xFFFF, 1);
        }
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
            w[r] = wload(T, W, (size_t)r * ldw + k, msk, 0);
        _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        {
            __m512 a = _mm512_maskz_loadu_ps(msk, A + (size_t)m * lda + k);
            _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
                acc[m][r] = _mm512_fmadd_ps(a, w[r], acc[m][r]);
        }
    }
    if (MB * RN >= 9 && MB * RN <= 16) { /* one transposing reduction for all outputs */
        __m512 v[16];
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) v[i] =
            i < MB * RN ? acc[i / RN][i % RN] : _mm512_setzero_ps();
        float out[16];
        _mm512_storeu_ps(out, sum16(v));
        _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
            _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
            {
                float s = out[m * RN + r];
                if (T == YM_WT_INT8)
                    s *= scale[r];
                float *c = C + (size_t)m * ldc + r;
                *c = beta != 0.0f ? *c + s : s;
            }
        return;
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

typedef void (*kblk_fn)(float *, int, const float *, int, const void *, int, int,
                        const float *, float);
#define KDEF(T, tn, mb, rn)                                                                    \
    T512 static void k_##tn##_##mb##_##rn(float *C, int ldc, const float *A, int lda,          \
                                          const void *W, int ldw, int K, const float *s,       \
                                          float beta)                                          \
    {                                                                                          \
        kblk(C, ldc, A, lda, W, ldw, K, s, beta, mb, rn, T);                                   \
    }
/* Row blocks of mb inputs meet rn_for[mb] weight rows: at most 20 accumulators, so that the
 * accumulators, the weight vectors and the input fit the 32 registers (blocks of 8 rows with
 * 3 weight rows spilled and ran at 0.55 of this on the EPYC host). */
static const int rn_for[MBMAX + 1] = {0, 8, 8, 5, 4};
#define K8(T, tn, mb) KDEF(T, tn, mb, 1) KDEF(T, tn, mb, 2) KDEF(T, tn, mb, 3) KDEF(T, tn, mb, 4) \
    KDEF(T, tn, mb, 5) KDEF(T, tn, mb, 6) KDEF(T, tn, mb, 7) KDEF(T, tn, mb, 8)
#define K6(T, tn, mb) KDEF(T, tn, mb, 1) KDEF(T, tn, mb, 2) KDEF(T, tn, mb, 3) KDEF(T, tn, mb, 4) \
    KDEF(T, tn, mb, 5) KDEF(T, tn, mb, 6)
#define K5(T, tn, mb) KDEF(T, tn, mb, 1) KDEF(T, tn, mb, 2) KDEF(T, tn, mb, 3) KDEF(T, tn, mb, 4) \
    KDEF(T, tn, mb, 5)
#define KTYPE(T, tn) K8(T, tn, 1) K8(T, tn, 2) K6(T, tn, 3) K5(T, tn, 4)
KTYPE(YM_WT_F32, f32)
KTYPE(YM_WT_BF16, bf16)
KTYPE(YM_WT_INT8, i8)
#define E(tn, mb, rn) k_##tn##_##mb##_##rn
#define T8(tn, mb) {0, E(tn, mb, 1), E(tn, mb, 2), E(tn, mb, 3), E(tn, mb, 4), E(tn, mb, 5),  \
                    E(tn, mb, 6), E(tn, mb, 7), E(tn, mb, 8)}
#define T6(tn, mb) {0, E(tn, mb, 1), E(tn, mb, 2), E(tn, mb, 3), E(tn, mb, 4), E(tn, mb, 5),  \
                    E(tn, mb, 6), 0, 0}
#define T5(tn, mb) {0, E(tn, mb, 1), E(tn, mb, 2), E(tn, mb, 3), E(tn, mb, 4), E(tn, mb, 5),  \
                    0, 0, 0}
#define KTAB(tn) {{0}, T8(tn, 1), T8(tn, 2), T6(tn, 3), T5(tn, 4)}
/* [type][mb][rn] */
static const kblk_fn ktab[3][MBMAX + 1][9] = {KTAB(f32), KTAB(bf16), KTAB(i8)};

/* bf16, one input row: 32 weights per 64-byte load, widened without crossing lanes (the
 * even elements by a shift, the odd ones by a mask), the input's even and odd elements
 * gathered once per 32 and shared by the RN rows. */
INLINE512 void kgemv_bf16(float *C, const float *A, const uint16_t *W, int ldw, int K, float beta,
                          int RN)
{
    const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i io = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    __m512 acc[8], acc2[8];
    _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++) acc[r] = acc2[r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512 a0 = _mm512_loadu_ps(A + k), a1 = _mm512_loadu_ps(A + k + 16);
        __m512 ae = _mm512_permutex2var_ps(a0, ie, a1), ao = _mm512_permutex2var_ps(a0, io, a1);
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
        {
            _mm_prefetch((const char *)(W + (size_t)(PFB * RN + r) * ldw + k), _MM_HINT_T0);
            __m512i x = _mm512_loadu_si512((const void *)(W + (size_t)r * ldw + k));
            acc[r] = _mm512_fmadd_ps(ae, _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)), acc[r]);
            acc2[r] = _mm512_fmadd_ps(ao, _mm512_castsi512_ps(_mm512_and_si512(x, hi)), acc2[r]);
        }
    }
    if (k < K) {
        int n = K - k;
        __mmask32 m32 = (__mmask32)(n >= 32 ? 0xFFFFFFFFu : (1u << n) - 1u);
        __mmask16 m0 = (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1u);
        __mmask16 m1 = (__mmask16)(n > 16 ? (1u << (n - 16)) - 1u : 0);
        __m512 a0 = _mm512_maskz_loadu_ps(m0, A + k), a1 = _mm512_maskz_loadu_ps(m1, A + k + 16);
        __m512 ae = _mm512_permutex2var_ps(a0, ie, a1), ao = _mm512_permutex2var_ps(a0, io, a1);
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
        {
            __m512i x = _mm512_maskz_loadu_epi16(m32, W + (size_t)r * ldw + k);
            acc[r] = _mm512_fmadd_ps(ae, _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)), acc[r]);
            acc2[r] = _mm512_fmadd_ps(ao, _mm512_castsi512_ps(_mm512_and_si512(x, hi)), acc2[r]);
        }
    }
    _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
    {
        float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], acc2[r]));
        C[r] = beta != 0.0f ? C[r] + s : s;
    }
}

/* One input row, one weight row at a time: a single sequential stream (rows of a few KB read
 * 8 at a time, interleaved, streamed 35 % slower on the EPYC host: 20 against 31 GB/s). */
T512 static void gemv_f32_rows(float *C, const float *A, const float *W, int ldw, int K, int n_rows,
                               float beta)
{
    for (int r = 0; r < n_rows; r++) {
        const float *w = W + (size_t)r * ldw;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int k = 0;
        for (; k + 64 <= K; k += 64) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(A + k), _mm512_loadu_ps(w + k), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(A + k + 16), _mm512_loadu_ps(w + k + 16), a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(A + k + 32), _mm512_loadu_ps(w + k + 32), a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(A + k + 48), _mm512_loadu_ps(w + k + 48), a3);
        }
        for (; k < K; k += 16) {
            __mmask16 m = (__mmask16)(K - k >= 16 ? 0xFFFF : (1u << (K - k)) - 1u);
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, A + k), _mm512_maskz_loadu_ps(m, w + k),
                                 a0);
        }
        float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        C[r] = beta != 0.0f ? C[r] + s : s;
    }
}

/* bf16: 32 weights per 64-byte load, widened without crossing lanes (even elements by a
 * shift, odd ones by a mask) against the input's even and odd elements, which ap holds
 * de-interleaved per 32 (ap[32j + i] = A[32j + 2i], ap[32j + 16 + i] = A[32j + 2i + 1]),
 * zero past K. */
T512 static void gemv_bf16_rows(float *C, const float *ap, const uint16_t *W, int ldw, int K,
                                int n_rows,
                                float beta)
{
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    for (int r = 0; r < n_rows; r++) {
        const uint16_t *w = W + (size_t)r * ldw;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int k = 0;
        for (; k + 64 <= K; k += 64) {
            __m512i x = _mm512_loadu_si512((const void *)(w + k));
            __m512i y = _mm512_loadu_si512((const void *)(w + k + 32));
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(ap + k),
                                 _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(ap + k + 16),
                                 _mm512_castsi512_ps(_mm512_and_si512(x, hi)), a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(ap + k + 32),
                                 _mm512_castsi512_ps(_mm512_slli_epi32(y, 16)), a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(ap + k + 48),
                                 _mm512_castsi512_ps(_mm512_and_si512(y, hi)), a3);
        }
        for (; k < K; k += 32) {
            int n = K - k;
            __mmask32 m = (__mmask32)(n >= 32 ? 0xFFFFFFFFu : (1u << n) - 1u);
            __m512i x = _mm512_maskz_loadu_epi16(m, w + k);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(ap + k),
                                 _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(ap + k + 16),
                                 _mm512_castsi512_ps(_mm512_and_si512(x, hi)), a1);
        }
        float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        C[r] = beta != 0.0f ? C[r] + s : s;
    }
}

/* int8 widened to f32, one row at a time. */
T512 static void gemv_i8_rows(float *C, const float *A, const int8_t *W, int ldw, int K,
                              const float *sw,
                              int n_rows, float beta)
{
    for (int r = 0; r < n_rows; r++) {
        const int8_t *w = W + (size_t)r * ldw;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int k = 0;
        for (; k + 64 <= K; k += 64) {
            __m512i x = _mm512_loadu_si512((const void *)(w + k));
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(A + k),
                                 _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(x))), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(A + k + 16),
                                 _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(x, 1))), a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(A + k + 32),
                                 _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(x, 2))), a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(A + k + 48),
                                 _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(x, 3))), a3);
        }
        for (; k < K; k += 16) {
            __mmask16 m = (__mmask16)(K - k >= 16 ? 0xFFFF : (1u << (K - k)) - 1u);
            __m128i b = _mm_maskz_loadu_epi8(m, w + k);
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, A + k),
                                 _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), a0);
        }
        float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        s *= sw[r];
        C[r] = beta != 0.0f ? C[r] + s : s;
    }
}

#define GEMV_KMAX 16384 /* de-interleaved bf16 input on the stack up to this K (64 KB) */

typedef void (*gemv16_fn)(float *, const float *, const uint16_t *, int, int, float);
#define GDEF(rn)                                                                               \
    T512 static void g_bf16_##rn(float *C, const float *A, const uint16_t *W, int ldw, int K, \
                                 float b)                                                      \
    {                                                                                          \
        kgemv_bf16(C, A, W, ldw, K, b, rn);                                                    \
    }
GDEF(1) GDEF(2) GDEF(3) GDEF(4) GDEF(5) GDEF(6) GDEF(7) GDEF(8)
static const gemv16_fn gtab_bf16[9] = {0, g_bf16_1, g_bf16_2, g_bf16_3, g_bf16_4,
                                       g_bf16_5, g_bf16_6, g_bf16_7, g_bf16_8};

static void mm_avx512(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                      size_t ld, int n0, int n1, float beta)
{
    const int K = W->n_cols, T = W->type;
    const size_t es = ym_wtype_size(W->type);
    if (M == 1 && T == YM_WT_F32) {
        gemv_f32_rows(C, A, (const float *)W->data + (size_t)n0 * ld, ld, K, n1 - n0, beta);
        return;
    }
    if (M == 1 && T == YM_WT_INT8) {
        gemv_i8_rows(C, A, (const int8_t *)W->data + (size_t)n0 * ld, ld, K, W->scale + n0, n1 - n0,
                     beta);
        return;
    }
    if (M == 1 && T == YM_WT_BF16 && K <= GEMV_KMAX) {
        float ap[GEMV_KMAX + 32] __attribute__((aligned(64)));
        int kp = (K + 31) & ~31;
        for (int j = 0; j < kp; j += 32)
            for (int i = 0; i < 16; i++) {
                ap[j + i] = j + 2 * i < K ? A[j + 2 * i] : 0.0f;
                ap[j + 16 + i] = j + 2 * i + 1 < K ? A[j + 2 * i + 1] : 0.0f;
            }
        gemv_bf16_rows(C, ap, (const uint16_t *)W->data + (size_t)n0 * ld, ld, K, n1 - n0, beta);
        return;
    }
    if (M == 1 && T == YM_WT_BF16) {
        for (int n = n0; n < n1; n += 8) {
            int rn = n1 - n < 8 ? n1 - n : 8;
            gtab_bf16[rn](C + (n - n0), A, (const uint16_t *)W->data + (size_t)n * ld, ld, K,
                          beta);
        }
        return;
    }
    /* Row blocks of near-equal size, at most MBMAX rows each; weight rows outermost, so each
     * block of weight rows comes from memory once and stays in L1 for every row block. K is
     * cut into chunks of kc such that every input row's chunk fits in 24 KB of L1 too (the
     * partial sums add into C: beta 1 after the first chunk). */
    const int nb = (M + MBMAX - 1) / MBMAX;
    int rn_min = 8;
    for (int b = 0; b < nb; b++) {
        int mb = (int)((long)M * (b + 1) / nb) - (int)((long)M * b / nb);
        rn_min = rn_for[mb] < rn_min ? rn_for[mb] : rn_min;
    }
    int kc = (int)(24576 / (sizeof(float) * (size_t)M)) & ~63;
    kc = kc < 256 ? 256 : kc;
    for (int k0 = 0; k0 < K; k0 += kc) {
        int kn = K - k0 < kc ? K - k0 : kc;
        float bk = k0 == 0 ? beta : 1.0f;
        for (int n = n0; n < n1; n += rn_min) {
            int rn = n1 - n < rn_min ? n1 - n : rn_min;
            const void *w = (const char *)W->data + ((size_t)n * ld + k0) * es;
            const float *s = W->scale != NULL ? W->scale + n : NULL;
            for (int b = 0; b < nb; b++) {
                int m0 = (int)((long)M * b / nb), mb = (int)((long)M * (b + 1) / nb) - m0;
                ktab[T][mb][rn](C + (size_t)m0 * ldc + (n - n0), ldc, A + (size_t)m0 * lda + k0,
                                lda, w, ld, kn, s, bk);
            }
        }
    }
}

/* ---- int8 x int8 (AVX512-VNNI) -------------------------------------------------------
 * The input rows quantized too, symmetric with one scale per row (sa = max|a| / 127), into
 * the caller's scratch; then vpdpbusd multiplies 64 byte pairs per instruction into int32.
 * vpdpbusd wants one operand unsigned: the weight goes in as w + 128 (w XOR 0x80), and
 * sum_k (w + 128) q = sum_k w q + 128 sum_k q, the last term known per input row. Exact in
 * int32 for K < 2^31 / (255 * 127) = 66 000. The default for int8 weights where the CPU has
 * VNNI (2.5x the widening kernel's decode speed on the EPYC host, +0.09 % held-out
 * perplexity on the default model); YUNMIN_INT8_ACTIVATIONS=0 keeps activations in f32.
 * Every path scales the same way, so any row count gives the same bits: x = (float)d * sa[m]
 * for the exact int32 dot product d, then C = x * sw[n], or with beta C = fmaf(x, sw[n], C)
 * (written out: left to -ffp-contract, some outputs were fused and some not). */
#define T512V __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))
#define INLINE512V __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma"),      \
                                  always_inline)) static inline

/* sum16 (above) for int32 lanes: lane j = the sum of v[j]'s 16 elements. Integer sums are
 * exact, so the result equals 16 _mm512_reduce_add_epi32 at a quarter of the instructions
 * (at K = 768, the 16 separate reductions of a 4 x 4 block cost about as many instructions as
 * its 192 vpdpbusd). Where sum16 takes two shuffles per add, the first three levels here take
 * one shuffle and one or two blends (vpblendmd runs on any vector pipe, the lane-crossing
 * shuffles on fewer): 16 shuffles instead of 30. The second level leaves its 128-bit lanes 1
 * and 2 swapped, which the final permutation undoes. v is clobbered. */
INLINE512V __m512i sum16i(__m512i v[16])
{
#define PS_(x) _mm512_castsi512_ps(x)
#define SI_(x) _mm512_castps_si512(x)
    /* [a.0 a.1 b.2 b.3] + [a.2 a.3 b.0 b.1] (128-bit lanes) = [a.0+a.2 a.1+a.3 b.0+b.2 b.1+b.3] */
    for (int k = 0; k < 8; k++)
        v[k] = _mm512_add_epi32(_mm512_mask_blend_epi32(0xFF00, v[2 * k], v[2 * k + 1]),
                                _mm512_shuffle_i32x4(v[2 * k], v[2 * k + 1], 0x4E));
    /* [a.0 b.1 a.2 b.3] + swap([b.0 a.1 b.2 a.3]) = [a.0+a.1 b.0+b.1 a.2+a.3 b.2+b.3] */
    for (int k = 0; k < 4; k++)
        v[k] = _mm512_add_epi32(_mm512_mask_blend_epi32(0xF0F0, v[2 * k], v[2 * k + 1]),
                                _mm512_shuffle_i32x4(
                                    _mm512_mask_blend_epi32(0x0F0F, v[2 * k], v[2 * k + 1]),
                                    _mm512_mask_blend_epi32(0x0F0F, v[2 * k], v[2 * k + 1]),
                                    0xB1));
    /* within each 128-bit lane: [a0 a1 b2 b3] + [a2 a3 b0 b1] */
    for (int k = 0; k < 2; k++)
        v[k] = _mm512_add_epi32(_mm512_mask_blend_epi32(0xCCCC, v[2 * k], v[2 * k + 1]),
                                SI_(_mm512_shuffle_ps(PS_(v[2 * k]), PS_(v[2 * k + 1]), 0x4E)));
    __m512i t = _mm512_add_epi32(SI_(_mm512_shuffle_ps(PS_(v[0]), PS_(v[1]), 0x88)),
                                 SI_(_mm512_shuffle_ps(PS_(v[0]), PS_(v[1]), 0xDD)));
#undef PS_
#undef SI_
    const __m512i back = _mm512_set_epi32(15, 7, 11, 3, 14, 6, 10, 2, 13, 5, 9, 1, 12, 4, 8, 0);
    return _mm512_permutexvar_epi32(back, t);
}

/* acc += u (unsigned bytes) . s (signed bytes), in place: GCC 12 compiles the intrinsic
 * through a copy of the accumulator and back, which at 16 sums spills some to the stack */
#define DPBUSD_(acc, u, s) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s))

INLINE512V void kvnni(float *C, int ldc, const int8_t *Aq, int Kp, const float *sa,
                      const int32_t *qs, const int8_t *W, int ldw, int K, const float *sw,
                      float beta, int MB, int RN)
{
    __m512i acc[4][8];
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++) acc[m][r] = _mm512_setzero_si512();
    int k = 0;
    for (; k + 64 <= K; k += 64) {
        __m512i w[8];
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
        {
            _mm_prefetch((const char *)(W + (size_t)(PFB * RN + r) * ldw + k), _MM_HINT_T0);
            w[r] = _mm512_xor_si512(_mm512_loadu_si512((const void *)(W + (size_t)r * ldw + k)),
                                    flip);
        }
        _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        {
            __m512i a = _mm512_loadu_si512((const void *)(Aq + (size_t)m * Kp + k));
            _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
                DPBUSD_(acc[m][r], w[r], a);
        }
    }
    if (k < K) { /* the padded input is 0 past K, so the weights' masked lanes do not count */
        __mmask64 msk = (__mmask64)(~0ull >> (64 - (K - k)));
        __m512i w[8];
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
            w[r] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(msk, W + (size_t)r * ldw + k), flip);
        _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        {
            __m512i a = _mm512_loadu_si512((const void *)(Aq + (size_t)m * Kp + k));
            _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
                DPBUSD_(acc[m][r], w[r], a);
        }
    }
    if (MB * RN >= 5 && MB * RN <= 16) { /* one transposing reduction for all outputs */
        __m512i v[16];
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) v[i] =
            i < MB * RN ? acc[i / RN][i % RN] : _mm512_setzero_si512();
        /* lane i = m RN + r: the scaling in vector registers, in the scalar code's order
         * ((float)(sum - 128 qs[m]) * sa[m]) * sw[r], so the results are the same bits */
#define IM_(i) ((i) < MB * RN ? (i) / RN : 0)
#define IR_(i) ((i) < MB * RN ? (i) % RN : 0)
        const __m512i im = _mm512_set_epi32(IM_(15), IM_(14), IM_(13), IM_(12), IM_(11), IM_(10),
                                            IM_(9), IM_(8), IM_(7), IM_(6), IM_(5), IM_(4),
                                            IM_(3), IM_(2), IM_(1), IM_(0));
        const __m512i ir = _mm512_set_epi32(IR_(15), IR_(14), IR_(13), IR_(12), IR_(11), IR_(10),
                                            IR_(9), IR_(8), IR_(7), IR_(6), IR_(5), IR_(4),
                                            IR_(3), IR_(2), IR_(1), IR_(0));
#undef IM_
#undef IR_
        const __mmask16 mm = (__mmask16)((1u << MB) - 1u), mr = (__mmask16)((1u << RN) - 1u);
        __m512i q = _mm512_permutexvar_epi32(im, _mm512_maskz_loadu_epi32(mm, qs));
        __m512 a = _mm512_permutexvar_ps(im, _mm512_maskz_loadu_ps(mm, sa));
        __m512 w = _mm512_permutexvar_ps(ir, _mm512_maskz_loadu_ps(mr, sw));
        __m512i d = _mm512_sub_epi32(sum16i(v), _mm512_slli_epi32(q, 7));
        __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(d), a);
        /* row m's RN outputs are lanes [m RN, m RN + RN): a masked store at C + m (ldc - RN)
         * puts lane m RN + r at C[m ldc + r] (ldc >= RN, so the address is inside C) */
        _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        {
            float *c = C + (size_t)m * (ldc - RN);
            __mmask16 km = (__mmask16)(mr << (m * RN));
            if (beta != 0.0f) /* C + x sw in one rounding, as every int8 x int8 path */
                _mm512_mask_storeu_ps(c, km, _mm512_fmadd_ps(x, w, _mm512_maskz_loadu_ps(km, c)));
            else
                _mm512_mask_storeu_ps(c, km, _mm512_mul_ps(x, w));
        }
        return;
    }
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
        {
            int32_t d = _mm512_reduce_add_epi32(acc[m][r]) - 128 * qs[m];
            float x = (float)d * sa[m], *c = C + (size_t)m * ldc + r;
            *c = beta != 0.0f ? fmaf(x, sw[r], *c) : x * sw[r];
        }
}

/* One input row, one weight row at a time (a sequential stream, as gemv_f32_rows). */
T512V static void gemv_vnni_rows(float *C, const int8_t *Aq, float sa, int32_t qs,
                                 const int8_t *W, int ldw, int K, const float *sw, int n_rows,
                                 float beta)
{
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int r = 0; r < n_rows; r++) {
        const int8_t *w = W + (size_t)r * ldw;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0;
        int k = 0;
        for (; k + 128 <= K; k += 128) {
            __m512i x = _mm512_xor_si512(_mm512_loadu_si512((const void *)(w + k)), flip);
            __m512i y = _mm512_xor_si512(_mm512_loadu_si512((const void *)(w + k + 64)), flip);
            a0 = _mm512_dpbusd_epi32(a0, x, _mm512_loadu_si512((const void *)(Aq + k)));
            a1 = _mm512_dpbusd_epi32(a1, y, _mm512_loadu_si512((const void *)(Aq + k + 64)));
        }
        for (; k < K; k += 64) { /* the padded input is 0 past K */
            __mmask64 m = (__mmask64)(K - k >= 64 ? ~0ull : ~0ull >> (64 - (K - k)));
            __m512i x = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, w + k), flip);
            a0 = _mm512_dpbusd_epi32(a0, x, _mm512_loadu_si512((const void *)(Aq + k)));
        }
        int32_t d = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1)) - 128 * qs;
        float x = (float)d * sa;
        C[r] = beta != 0.0f ? fmaf(x, sw[r], C[r]) : x * sw[r];
    }
}

typedef void (*kvnni_fn)(float *, int, const int8_t *, int, const float *, const int32_t *,
                         const int8_t *, int, int, const float *, float);
#define VDEF(mb, rn)                                                                           \
    T512V static void v_##mb##_##rn(float *C, int ldc, const int8_t *Aq, int Kp,               \
                                    const float *sa, const int32_t *qs, const int8_t *W,       \
                                    int ldw, int K, const float *sw, float beta)               \
    {                                                                                          \
        kvnni(C, ldc, Aq, Kp, sa, qs, W, ldw, K, sw, beta, mb, rn);                            \
    }
#define V8(mb) VDEF(mb, 1) VDEF(mb, 2) VDEF(mb, 3) VDEF(mb, 4) VDEF(mb, 5) VDEF(mb, 6)        \
    VDEF(mb, 7) VDEF(mb, 8)
V8(1) V8(2) V8(3) V8(4)
#define VT(mb) {0, v_##mb##_1, v_##mb##_2, v_##mb##_3, v_##mb##_4, v_##mb##_5, v_##mb##_6,    \
                v_##mb##_7, v_##mb##_8}
static const kvnni_fn vtab[MBMAX + 1][9] = {{0}, VT(1), VT(2), VT(3), VT(4)};


/* One input row quantized as weight.h defines it: q = round-to-nearest-even(a * (127 / amax))
 * (vcvtps2dq under the default rounding mode, as lrintf), clamped to +-127, zero from K to Kp;
 * its scale amax / 127 and the sum of its q. 16 at a time (as a scalar loop it took as long
 * as the int8 x int8 products at 16 rows on the 130m shape, by perf). */
T512V static void quant_row(const float *a, int K, int Kp, int8_t *q, float *sa, int32_t *qs)
{
    __m512 mx = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16)
        mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(a + k)));
    if (k < K)
        mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_maskz_loadu_ps(
                                   (__mmask16)((1u << (K - k)) - 1u), a + k)));
    float amax = _mm512_reduce_max_ps(mx);
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m512 vi = _mm512_set1_ps(inv);
    const __m512i hi = _mm512_set1_epi32(127), lo = _mm512_set1_epi32(-127);
    __m512i sum = _mm512_setzero_si512();
    for (k = 0; k < Kp; k += 16) {
        __mmask16 msk = (__mmask16)(K - k >= 16 ? 0xFFFF : K - k <= 0 ? 0 : (1u << (K - k)) - 1u);
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(msk, a + k), vi));
        v = _mm512_max_epi32(_mm512_min_epi32(v, hi), lo);
        sum = _mm512_add_epi32(sum, v);
        _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(v));
    }
    *sa = amax / 127.0f;
    *qs = _mm512_reduce_add_epi32(sum);
}

static void mm_vnni_chunk(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                          size_t ld, int n0, int n1, float beta, float *scratch);

static void mm_vnni(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                    size_t ld, int n0, int n1, float beta, float *scratch)
{
    for (int m = 0; m < M; m += VNNI_CHUNK)
        mm_vnni_chunk(C + (size_t)m * ldc, ldc, A + (size_t)m * lda, lda,
                      M - m < VNNI_CHUNK ? M - m : VNNI_CHUNK, W, ld, n0, n1, beta, scratch);
}

static void mm_vnni_chunk(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                          size_t ld, int n0, int n1, float beta, float *scratch)
{
    const int K = W->n_cols, Kp = (K + 63) & ~63;
    /* scratch: [M][Kp] int8, then [M] scales and [M] sums (ym_matmul_scratch is enough) */
    int8_t *Aq = (int8_t *)scratch;
    float *sa = (float *)(Aq + (size_t)M * Kp);
    int32_t *qs = (int32_t *)(sa + M);
    for (int m = 0; m < M; m++)
        quant_row(A + (size_t)m * lda, K, Kp, Aq + (size_t)m * Kp, sa + m, qs + m);
    if (M == 1) {
        gemv_vnni_rows(C, Aq, sa[0], qs[0], (const int8_t *)W->data + (size_t)n0 * ld, (int)ld, K,
                       W->scale + n0, n1 - n0, beta);
        return;
    }
    const int nb = (M + MBMAX - 1) / MBMAX;
    int rn_min = 8;
    for (int b = 0; b < nb; b++) {
        int mb = (int)((long)M * (b + 1) / nb) - (int)((long)M * b / nb);
        rn_min = rn_for[mb] < rn_min ? rn_for[mb] : rn_min;
    }
    for (int n = n0; n < n1; n += rn_min) {
        int rn = n1 - n < rn_min ? n1 - n : rn_min;
        const int8_t *w = (const int8_t *)W->data + (size_t)n * ld;
        for (int b = 0; b < nb; b++) {
            int m0 = (int)((long)M * b / nb), mb = (int)((long)M * (b + 1) / nb) - m0;
            vtab[mb][rn](C + (size_t)m0 * ldc + (n - n0), ldc, Aq + (size_t)m0 * Kp, Kp,
                         sa + m0, qs + m0, w, (int)ld, K, W->scale + n, beta);
        }
    }
}

/* ---- bf16 x bf16 (AVX512-BF16), opt-in --------------------------------------------------
 * The input rows rounded to bf16 (nearest even) into the caller's scratch; then vdpbf16ps
 * multiplies 32 pairs per instruction, exactly, adding into f32. Row-major bf16 weights pair
 * elements 2i and 2i + 1 of a row just as vdpbf16ps pairs them, so the kernels read the
 * stored rows directly: the int8 x int8 kernels' blocking, with f32 sums. Off by default: it
 * changes results (the inputs lose 16 bits of mantissa); YUNMIN_BF16_ACTIVATIONS=1 or
 * ym_matmul_bf16_activations(1) turns it on where the CPU has AVX512-BF16. */
#define T512B __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))
#define INLINE512B __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma"),      \
                                  always_inline)) static inline

INLINE512B __m512 dpbf(__m512 acc, __m512i a, __m512i b)
{
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

INLINE512B void kbfdp(float *C, int ldc, const uint16_t *Ab, int Kp, const uint16_t *W, int ldw,
                      int K, float beta, int MB, int RN)
{
    __m512 acc[4][8];
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++) acc[m][r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512i w[8];
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
        {
            _mm_prefetch((const char *)(W + (size_t)(PFB * RN + r) * ldw + k), _MM_HINT_T0);
            w[r] = _mm512_loadu_si512((const void *)(W + (size_t)r * ldw + k));
        }
        _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        {
            __m512i a = _mm512_loadu_si512((const void *)(Ab + (size_t)m * Kp + k));
            _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++) acc[m][r] = dpbf(acc[m][r], a, w[r]);
        }
    }
    if (k < K) { /* weights masked to 0 past K (the padded input is 0 there too) */
        __mmask32 msk = (__mmask32)(0xFFFFFFFFu >> (32 - (K - k)));
        __m512i w[8];
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
            w[r] = _mm512_maskz_loadu_epi16(msk, W + (size_t)r * ldw + k);
        _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        {
            __m512i a = _mm512_loadu_si512((const void *)(Ab + (size_t)m * Kp + k));
            _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++) acc[m][r] = dpbf(acc[m][r], a, w[r]);
        }
    }
    _Pragma("GCC unroll 8") for (int m = 0; m < MB; m++)
        _Pragma("GCC unroll 8") for (int r = 0; r < RN; r++)
        {
            float s = _mm512_reduce_add_ps(acc[m][r]);
            float *c = C + (size_t)m * ldc + r;
            *c = beta != 0.0f ? *c + s : s;
        }
}

/* One input row, one weight row at a time (a sequential stream, as gemv_f32_rows). */
T512B static void gemv_bfdp_rows(float *C, const uint16_t *Ab, const uint16_t *W, int ldw, int K,
                                 int n_rows, float beta)
{
    for (int r = 0; r < n_rows; r++) {
        const uint16_t *w = W + (size_t)r * ldw;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;
        int k = 0;
        for (; k + 64 <= K; k += 64) {
            a0 = dpbf(a0, _mm512_loadu_si512((const void *)(Ab + k)),
                      _mm512_loadu_si512((const void *)(w + k)));
            a1 = dpbf(a1, _mm512_loadu_si512((const void *)(Ab + k + 32)),
                      _mm512_loadu_si512((const void *)(w + k + 32)));
        }
        for (; k < K; k += 32) { /* the padded input is 0 past K */
            __mmask32 m = (__mmask32)(K - k >= 32 ? 0xFFFFFFFFu : 0xFFFFFFFFu >> (32 - (K - k)));
            a0 = dpbf(a0, _mm512_loadu_si512((const void *)(Ab + k)),
                      _mm512_maskz_loadu_epi16(m, w + k));
        }
        float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        C[r] = beta != 0.0f ? C[r] + s : s;
    }
}

typedef void (*kbfdp_fn)(float *, int, const uint16_t *, int, const uint16_t *, int, int, float);
#define BFDEF(mb, rn)                                                                          \
    T512B static void bfd_##mb##_##rn(float *C, int ldc, const uint16_t *Ab, int Kp,           \
                                      const uint16_t *W, int ldw, int K, float beta)           \
    {                                                                                          \
        kbfdp(C, ldc, Ab, Kp, W, ldw, K, beta, mb, rn);                                        \
    }
#define BF8(mb) BFDEF(mb, 1) BFDEF(mb, 2) BFDEF(mb, 3) BFDEF(mb, 4) BFDEF(mb, 5) BFDEF(mb, 6)  \
    BFDEF(mb, 7) BFDEF(mb, 8)
BF8(1) BF8(2) BF8(3) BF8(4)
#define BFT(mb) {0, bfd_##mb##_1, bfd_##mb##_2, bfd_##mb##_3, bfd_##mb##_4, bfd_##mb##_5,     \
                 bfd_##mb##_6, bfd_##mb##_7, bfd_##mb##_8}
static const kbfdp_fn bftab[MBMAX + 1][9] = {{0}, BFT(1), BFT(2), BFT(3), BFT(4)};

/* One input row rounded to bf16 exactly as ym_f32_to_bf16 does (nearest even, NaN kept a
 * quiet NaN), 16 at a time with integer operations, zero from K to Kp (a multiple of 16). */
T512B static void bf16_row(const float *a, int K, int Kp, uint16_t *q)
{
    const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff);
    const __m512i abs = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    const __m512i quiet = _mm512_set1_epi32(0x40);
    for (int k = 0; k < Kp; k += 16) {
        __mmask16 msk = (__mmask16)(K - k >= 16 ? 0xFFFF : K - k <= 0 ? 0 : (1u << (K - k)) - 1u);
        __m512i u = _mm512_maskz_loadu_epi32(msk, a + k);
        __m512i top = _mm512_srli_epi32(u, 16);
        __m512i r = _mm512_srli_epi32(
            _mm512_add_epi32(u, _mm512_add_epi32(half, _mm512_and_si512(top, one))), 16);
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs), inf);
        r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(top, quiet));
        _mm256_storeu_si256((__m256i *)(q + k), _mm512_cvtepi32_epi16(r));
    }
}

/* scratch: [M][Kp] bf16 inputs, Kp = K rounded up to 32 (ym_matmul_scratch is enough). */
static void mm_bfdp_chunk(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                          size_t ld, int n0, int n1, float beta, float *scratch)
{
    const int K = W->n_cols, Kp = (K + 31) & ~31;
    uint16_t *Ab = (uint16_t *)scratch;
    for (int m = 0; m < M; m++)
        bf16_row(A + (size_t)m * lda, K, Kp, Ab + (size_t)m * Kp);
    const uint16_t *Wd = (const uint16_t *)W->data;
    if (M == 1) {
        gemv_bfdp_rows(C, Ab, Wd + (size_t)n0 * ld, (int)ld, K, n1 - n0, beta);
        return;
    }
    const int nb = (M + MBMAX - 1) / MBMAX;
    int rn_min = 8;
    for (int b = 0; b < nb; b++) {
        int mb = (int)((long)M * (b + 1) / nb) - (int)((long)M * b / nb);
        rn_min = rn_for[mb] < rn_min ? rn_for[mb] : rn_min;
    }
    for (int n = n0; n < n1; n += rn_min) {
        int rn = n1 - n < rn_min ? n1 - n : rn_min;
        for (int b = 0; b < nb; b++) {
            int m0 = (int)((long)M * b / nb), mb = (int)((long)M * (b + 1) / nb) - m0;
            bftab[mb][rn](C + (size_t)m0 * ldc + (n - n0), ldc, Ab + (size_t)m0 * Kp, Kp,
                          Wd + (size_t)n * ld, (int)ld, K, beta);
        }
    }
}

static void mm_bfdp(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                    size_t ld, int n0, int n1, float beta, float *scratch)
{
    for (int m = 0; m < M; m += VNNI_CHUNK)
        mm_bfdp_chunk(C + (size_t)m * ldc, ldc, A + (size_t)m * lda, lda,
                      M - m < VNNI_CHUNK ? M - m : VNNI_CHUNK, W, ld, n0, n1, beta, scratch);
}

static int isa_checked, isa_avx512, isa_vnni, isa_bf16;
static int bf16_act; /* off: it rounds the activations (docs/ENGINE.md) */

void ym_matmul_bf16_activations(int on)
{
    bf16_act = on;
}
static int int8_act = 1; /* the faster of the two on the EPYC host (docs/BENCHMARKS.md) */

void ym_matmul_int8_activations(int on)
{
    int8_act = on;
}

static int isa_has_avx512(void)
{
    if (!isa_checked) {
        __builtin_cpu_init();
        isa_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl");
        isa_vnni = isa_avx512 && __builtin_cpu_supports("avx512vnni");
        isa_bf16 = isa_avx512 && __builtin_cpu_supports("avx512bf16");
        const char *e = getenv("YUNMIN_INT8_ACTIVATIONS"); /* docs/ENGINE.md */
        if (e != NULL && strcmp(e, "0") == 0)
            int8_act = 0;
        e = getenv("YUNMIN_BF16_ACTIVATIONS");
        if (e != NULL && strcmp(e, "1") == 0)
            bf16_act = 1;
        isa_checked = 1;
    }
    return isa_avx512;
}
#else
static int isa_has_avx512(void)
{
    return 0;
}
void ym_matmul_int8_activations(int on)
{
    (void)on;
}
void ym_matmul_bf16_activations(int on)
{
    (void)on;
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

#if HAVE_X86
static int use_vnni(void)
{
    return use_avx512() && isa_vnni && int8_act; /* use_avx512 first: it reads the env */
}

static int use_bfdp(void)
{
    return use_avx512() && isa_bf16 && bf16_act;
}
#endif

const char *ym_matmul_isa(void)
{
#if HAVE_X86
    if (use_vnni() && use_bfdp())
        return "avx512+vnni-int8+bf16-dot";
    if (use_vnni())
        return "avx512+vnni-int8";
    if (use_bfdp())
        return "avx512+bf16-dot";
#endif
    return use_avx512() ? "avx512" : "portable";
}

size_t ym_matmul_scratch(int K)
{
    /* sgemm tiles of TILE_N rows, or VNNI_CHUNK int8 input rows padded to 64 and their
     * scales and sums */
    size_t k = (size_t)(K > 0 ? K : 1), kp = (k + 63) & ~(size_t)63;
    size_t tiles = TILE_N * k, vnni = (VNNI_CHUNK * kp + 8 * VNNI_CHUNK + 3) / 4;
    size_t bf = VNNI_CHUNK * ((k + 31) & ~(size_t)31) / 2; /* bf16 inputs, 2 per float */
    size_t most = tiles > vnni ? tiles : vnni;
    return (bf > most ? bf : most) + 16;
}

static void mm_small(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                     size_t ld, int n0, int n1, float beta)
{
#if HAVE_X86
    if (use_avx512()) {
        mm_avx512(C, ldc, A, lda, M, W, ld, n0, n1, beta);
        return;
    }
#endif
    mm_portable(C, ldc, A, lda, M, W, ld, n0, n1, beta);
}

/* W: the weight, or a view of some of its columns (ym_matmul_cols) whose rows are ld elements
 * apart in memory. */
static void matmul_ld(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                      size_t ld, int n0, int n1, float beta, float *scratch)
{
    const int K = W->n_cols;
#if HAVE_X86
    if (W->type == YM_WT_INT8 && scratch != NULL && use_vnni()) {
        mm_vnni(C, ldc, A, lda, M, W, ld, n0, n1, beta, scratch);
        return;
    }
    if (W->type == YM_WT_BF16 && scratch != NULL && use_bfdp()) {
        mm_bfdp(C, ldc, A, lda, M, W, ld, n0, n1, beta, scratch);
        return;
    }
#endif
    if (M <= YM_MATMUL_SMALL_M) {
        mm_small(C, ldc, A, lda, M, W, ld, n0, n1, beta);
        return;
    }
    if (W->type == YM_WT_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, n1 - n0, K, 1.0f, A, lda,
                    (const float *)W->data + (size_t)n0 * ld, (int)ld, beta, C, ldc);
        return;
    }
    if (scratch == NULL) {
        mm_small(C, ldc, A, lda, M, W, ld, n0, n1, beta);
        return;
    }
    /* the tiles widen the view's columns: row n + r of a weight of ld columns */
    const ym_weight whole = {W->type, W->n_rows, (int)ld, W->data, W->scale};
    for (int n = n0; n < n1; n += TILE_N) {
        int tn = n1 - n < TILE_N ? n1 - n : TILE_N;
        for (int r = 0; r < tn; r++)
            ym_weight_row_f32(&whole, n + r, 0, K, scratch + (size_t)r * K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, tn, K, 1.0f, A, lda, scratch, K,
                    beta, C + (n - n0), ldc);
    }
}

void ym_matmul(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W, int n0,
               int n1, float beta, float *scratch)
{
    if (M <= 0 || n1 <= n0)
        return;
    matmul_ld(C, ldc, A, lda, M, W, (size_t)W->n_cols, n0, n1, beta, scratch);
}

void ym_matmul_cols(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                    int n0, int n1, int k0, int k1, float beta, float *scratch)
{
    if (M <= 0 || n1 <= n0)
        return;
    if (k1 <= k0) { /* an empty sum */
        for (int m = 0; m < M && beta == 0.0f; m++)
            memset(C + (size_t)m * ldc, 0, sizeof(float) * (size_t)(n1 - n0));
        return;
    }
    ym_weight v = *W;
    v.data = (const char *)W->data + (size_t)k0 * ym_wtype_size(W->type);
    v.n_cols = k1 - k0;
    matmul_ld(C, ldc, A, lda, M, &v, (size_t)W->n_cols, n0, n1, beta, scratch);
}
