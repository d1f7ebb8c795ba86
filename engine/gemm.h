/* engine/gemm.h - weight matrices packed once into 16-column panels, and the small-M GEMM
 * that reads them (batched decode: a few rows against a large weight). Internal.
 *
 * A weight W [N, K] (PyTorch [out, in], row stride ldw) is stored as
 *   Wp[p][k][j] = W[16p + j][k]   for p < ceil(N/16), zero past N,
 * so that 16 consecutive outputs of one input position are one 64-byte vector. */
#ifndef YM_ENGINE_GEMM_H
#define YM_ENGINE_GEMM_H

#include "engine/err.h"

typedef struct ym_packed {
    float *p;     /* owned, [n_panels, K, 16], 64-byte aligned; NULL when empty */
    int N;
    int K;
    int n_panels; /* ceil(N / 16) */
} ym_packed;

/* Packs W [N, K] (row stride ldw). Returns YM_OK, YM_EINVAL (N or K < 1, ldw < K) or
 * YM_ENOMEM; *pk is zeroed on failure. Allocates N rounded up to 16 times K floats.         */
ym_err ym_pack_init(ym_packed *pk, const float *W, int ldw, int N, int K);
/* Frees pk->p and zeroes *pk; NULL-safe and idempotent on a zeroed struct.                  */
void ym_pack_deinit(ym_packed *pk);

/* Output columns [n0, n1) of the packed weight, C pointing at column n0 (C [M, ldc]):
 *   C[m, n - n0] = sum_k A[m, k] * W[n, k] + beta * C[m, n - n0]      for n0 <= n < n1,
 * A [M, lda] with K = pk->K columns; beta is 0 or 1 (0 never reads C). n0 must be a multiple
 * of 16; 0 <= n0 <= n1 <= pk->N. Any thread; no allocation; threads may share pk and write
 * disjoint column ranges. Returns 1 when done, 0 when this CPU lacks AVX-512 (nothing
 * written: the caller falls back to BLAS on the unpacked weight).                          */
int ym_gemm_packed(float *C, int ldc, const float *A, int lda, const ym_packed *pk, int n0,
                   int n1, int M, float beta);

/* Plain loop version of ym_gemm_packed (the tests' reference, and any CPU).                 */
void ym_gemm_packed_ref(float *C, int ldc, const float *A, int lda, const ym_packed *pk, int n0,
                        int n1, int M, float beta);

/* 1 when ym_gemm_packed runs on this CPU (AVX-512F), else 0.                                 */
int ym_gemm_packed_available(void);

#endif
