/* engine/gemm.c - packed weight panels and the outer-product GEMM over them. Hot path.
 *
 * Owns ym_packed (the copy is made once, at context creation) and the micro-kernel that
 * batched decode runs: OpenBLAS's sgemm packs the whole weight on every call, which at a few
 * rows costs more than the arithmetic (docs/BENCHMARKS.md). Here a block of MB input rows
 * meets NP panels of 16 outputs: per input position k, NP contiguous 64-byte loads, MB
 * broadcasts and MB*NP FMAs into register accumulators; C rows are stored directly, with no
 * horizontal sums. Runs on any thread, never allocates in the kernel, never locks. */
#include "engine/gemm.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

#define PANEL 16

ym_err ym_pack_init(ym_packed *pk, const float *W, int ldw, int N, int K)
{
    memset(pk, 0, sizeof(*pk));
    if (W == NULL || N < 1 || K < 1 || ldw < K)
        return YM_EINVAL;
    int np = (N + PANEL - 1) / PANEL;
    size_t n = (size_t)np * K * PANEL;
    /* 2 MB-aligned and, where the kernel allows, backed by transparent huge pages: on this
     * VM first-touching 516 MB of 4 KB pages took 1.5 s, with huge pages 0.05 s, and the
     * kernel's streams walk fewer TLB entries. n * 4 is a multiple of 64 bytes. */
    const size_t huge = (size_t)2 << 20;
    size_t bytes = n * sizeof(float), align = bytes >= huge ? huge : 64;
    /* C11 aligned_alloc wants the size to be a multiple of the alignment. */
    float *p = aligned_alloc(align, (bytes + align - 1) / align * align);
    if (p == NULL)
        return YM_ENOMEM;
#ifdef MADV_HUGEPAGE
    if (n * sizeof(float) >= huge)
        (void)madvise(p, n * sizeof(float) / huge * huge, MADV_HUGEPAGE); /* advice only */
#endif
    /* 16 x 16 tiles: 16 rows read 64 bytes each, one kilobyte written, all within L1. */
    for (int q = 0; q < np; q++) {
        float *dst = p + (size_t)q * K * PANEL;
        int nr = N - q * PANEL < PANEL ? N - q * PANEL : PANEL;
        if (nr < PANEL)
            memset(dst, 0, sizeof(float) * (size_t)K * PANEL);
        const float *src = W + (size_t)q * PANEL * ldw;
        for (int k0 = 0; k0 < K; k0 += PANEL) {
            int k1 = k0 + PANEL < K ? k0 + PANEL : K;
            for (int j = 0; j < nr; j++)
                for (int k = k0; k < k1; k++)
                    dst[(size_t)k * PANEL + j] = src[(size_t)j * ldw + k];
        }
    }
    pk->p = p;
    pk->N = N;
    pk->K = K;
    pk->n_panels = np;
    return YM_OK;
}

void ym_pack_deinit(ym_packed *pk)
{
    if (pk == NULL)
        return;
    free(pk->p);
    memset(pk, 0, sizeof(*pk));
}

void ym_gemm_packed_ref(float *C, int ldc, const float *A, int lda, const ym_packed *pk, int n0,
                        int n1, int M, float beta)
{
    const int K = pk->K;
    for (int m = 0; m < M; m++)
        for (int n = n0; n < n1; n++) {
            const float *w = pk->p + (size_t)(n / PANEL) * K * PANEL + n % PANEL;
            float acc = 0.0f;
            for (int k = 0; k < K; k++)
                acc += A[(size_t)m * lda + k] * w[(size_t)k * PANEL];
            float *c = C + (size_t)m * ldc + (n - n0);
            *c = beta != 0.0f ? *c + acc : acc;
        }
}

#if HAVE_X86
#define T512 __attribute__((target("avx512f,fma")))
#define INLINE512 __attribute__((target("avx512f,fma"), always_inline)) static inline

/* Panels per block for a block of mb rows: at most about 24 accumulators, and NP divides
 * CHUNK so that every block of a chunk has the same shape. */
#define CHUNK 12
#ifndef YM_GEMM_PF
#define YM_GEMM_PF 32 /* software prefetch distance, in input positions (2 KB per panel) */
#endif

/* acc[m][q] += sum_k A[m, k] * Wp[q][k][:] over k in [0, K), then C stored (beta 0/1) with
 * lane mask `last` on panel np-1 (the others are whole). Hot loop: MB and NP are constants
 * after inlining, so the accumulators live in registers.                                   */
INLINE512 void kern(float *C, int ldc, const float *A, int lda, const float *wp, int K,
                    float beta, __mmask16 last, int MB, int NP, int pf)
{
    __m512 acc[8][6];
    _Pragma("GCC unroll 8")
    for (int m = 0; m < MB; m++)
        _Pragma("GCC unroll 8")
        for (int q = 0; q < NP; q++)
            acc[m][q] = _mm512_setzero_ps();
    const size_t ps = (size_t)K * PANEL;
    for (int k = 0; k < K; k++) {
        __m512 w[6];
        _Pragma("GCC unroll 8")
        for (int q = 0; q < NP; q++) {
            if (pf)
                _mm_prefetch((const char *)(wp + q * ps + (size_t)(k + YM_GEMM_PF) * PANEL),
                             _MM_HINT_T0);
            w[q] = _mm512_load_ps(wp + q * ps + (size_t)k * PANEL);
        }
        _Pragma("GCC unroll 8")
        for (int m = 0; m < MB; m++) {
            __m512 a = _mm512_set1_ps(A[(size_t)m * lda + k]);
            _Pragma("GCC unroll 8")
            for (int q = 0; q < NP; q++)
                acc[m][q] = _mm512_fmadd_ps(a, w[q], acc[m][q]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int m = 0; m < MB; m++)
        _Pragma("GCC unroll 8")
        for (int q = 0; q < NP; q++) {
            float *c = C + (size_t)m * ldc + q * PANEL;
            __mmask16 msk = q == NP - 1 ? last : (__mmask16)0xFFFF;
            __m512 v = acc[m][q];
            if (beta != 0.0f)
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(msk, c));
            _mm512_mask_storeu_ps(c, msk, v);
        }
}

typedef void (*kern_fn)(float *, int, const float *, int, const float *, int, float, __mmask16,
                        int);

#define KDEF(mb, np)                                                                        \
    T512 static void kern_##mb##_##np(float *C, int ldc, const float *A, int lda,             \
                                      const float *wp, int K, float beta, __mmask16 last,   \
                                      int pf)                                               \
    {                                                                                       \
        if (pf)                                                                             \
            kern(C, ldc, A, lda, wp, K, beta, last, mb, np, 1);                             \
        else                                                                                \
            kern(C, ldc, A, lda, wp, K, beta, last, mb, np, 0);                             \
    }
#define KROW(mb)                                                                            \
    KDEF(mb, 1) KDEF(mb, 2) KDEF(mb, 3) KDEF(mb, 4) KDEF(mb, 5) KDEF(mb, 6)
KROW(1) KROW(2) KROW(3) KROW(4) KROW(5) KROW(6) KROW(7) KROW(8)
#define KTAB(mb)                                                                            \
    {0, kern_##mb##_1, kern_##mb##_2, kern_##mb##_3, kern_##mb##_4, kern_##mb##_5, kern_##mb##_6}
static const kern_fn kern_tab[9][7] = {{0}, KTAB(1), KTAB(2), KTAB(3), KTAB(4),
                                       KTAB(5), KTAB(6), KTAB(7), KTAB(8)};
/* panels per block for mb rows (divides CHUNK) */
static const int np_for_mb[9] = {0, 6, 6, 6, 6, 4, 4, 3, 3};

T512 static void gemm_packed_avx512(float *C, int ldc, const float *A, int lda,
                                    const ym_packed *pk, int n0, int n1, int M, float beta)
{
    const int K = pk->K;
    const int q0 = n0 / PANEL, q1 = (n1 + PANEL - 1) / PANEL;
    const int rem = n1 - (q1 - 1) * PANEL; /* live lanes of the last panel, 1..16 */
    const __mmask16 last = (__mmask16)((1u << rem) - 1u);
    /* Row blocks of near-equal size, at most 8 rows each. */
    const int nb = (M + 7) / 8;
    /* Weight panels outermost: a chunk of CHUNK panels comes from memory once (prefetched by
     * the first row block) and stays in L2 while the other row blocks pass over it. */
    for (int qc = q0; qc < q1; qc += CHUNK) {
        int qe = qc + CHUNK < q1 ? qc + CHUNK : q1;
        for (int b = 0; b < nb; b++) {
            int m0 = (int)((long)M * b / nb), m1 = (int)((long)M * (b + 1) / nb), mb = m1 - m0;
            int np = np_for_mb[mb];
            for (int q = qc; q < qe; q += np) {
                int n = qe - q < np ? qe - q : np;
                __mmask16 lm = q + n == q1 ? last : (__mmask16)0xFFFF;
                kern_tab[mb][n](C + (size_t)m0 * ldc + (size_t)(q - q0) * PANEL, ldc,
                                A + (size_t)m0 * lda, lda, pk->p + (size_t)q * K * PANEL, K,
                                beta, lm, b == 0);
            }
        }
    }
}

static int isa_checked, isa_avx512;

int ym_gemm_packed_available(void)
{
    if (!isa_checked) {
        __builtin_cpu_init();
        isa_avx512 = __builtin_cpu_supports("avx512f");
        isa_checked = 1;
    }
    return isa_avx512;
}
#else
int ym_gemm_packed_available(void)
{
    return 0;
}
#endif

int ym_gemm_packed(float *C, int ldc, const float *A, int lda, const ym_packed *pk, int n0,
                   int n1, int M, float beta)
{
    if (M <= 0 || n1 <= n0)
        return 1;
    if (n0 % PANEL != 0 || n0 < 0 || n1 > pk->N || pk->p == NULL)
        return 0;
#if HAVE_X86
    if (ym_gemm_packed_available()) {
        gemm_packed_avx512(C, ldc, A, lda, pk, n0, n1, M, beta);
        return 1;
    }
#endif
    return 0;
}
