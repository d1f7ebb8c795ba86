/* engine/weight.h - the weight matrices of the engine: one type for every projection and the
 * output head, in f32, bf16 or int8, and the one matrix product that reads them.
 *
 * A weight W [N, K] (PyTorch [out, in]) is stored row-major, row stride K, in its type:
 *   f32   4 bytes an element;
 *   bf16  the top 16 bits of the f32 (widened exactly: v = bits << 16);
 *   int8  symmetric, one f32 scale per output row: W[n, k] = q[n, k] * scale[n], with
 *         scale[n] = max_k |W[n, k]| / 127 and q = round(W / scale) in [-127, 127].
 * There is exactly one copy of each matrix: the kernels read this layout directly (a GEMV
 * and a small-M GEMM that widen bf16/int8 to f32 in registers; for many rows, tiles of the
 * weight widened into scratch then OpenBLAS's sgemm). Activations stay f32, except that int8
 * weights on a CPU with AVX512-VNNI meet int8 activations by default (ym_matmul_int8_activations)
 * and bf16 weights on a CPU with AVX512-BF16 meet bf16 activations when asked
 * (ym_matmul_bf16_activations, off by default).
 * The data is borrowed (from the checkpoint's mapping, or the model's owned memory). */
#ifndef YM_ENGINE_WEIGHT_H
#define YM_ENGINE_WEIGHT_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

typedef enum {
    YM_WT_AUTO = -1, /* when loading: the checkpoint's own type */
    YM_WT_F32 = 0,
    YM_WT_BF16 = 1,
    YM_WT_INT8 = 2,
} ym_wtype;

typedef struct ym_weight {
    ym_wtype type;
    int n_rows;         /* N: outputs */
    int n_cols;         /* K: inputs (the row stride, in elements) */
    const void *data;   /* borrowed, [N, K] in type's element */
    const float *scale; /* int8: borrowed [N]; else NULL */
} ym_weight;

const char *ym_wtype_name(ym_wtype t);             /* "f32", "bf16", "int8", "auto" */
/* "f32", "bf16", "int8" or "auto" -> *out; anything else YM_EINVAL (a message in diag). */
ym_err ym_wtype_parse(const char *s, ym_wtype *out, ym_diag *diag);
size_t ym_wtype_size(ym_wtype t);                  /* bytes per element: 4, 2, 1 */

/* Bytes of the data plus the scales. */
size_t ym_weight_bytes(const ym_weight *w);
/* W[n, k] as f32 (dequantized). */
float ym_weight_at(const ym_weight *w, int n, int k);
/* out[0 .. k1-k0) = W[n, k0 .. k1) as f32. */
void ym_weight_row_f32(const ym_weight *w, int n, int k0, int k1, float *out);

/* Converts the f32 rows src [N, K] (row stride lds) into type t: data [N, K] of t's element,
 * scale [N] for int8 (else unused, may be NULL). With int8 and fixed != NULL, fixed[n] is the
 * scale of row n (q = round(src / fixed[n]) clamped to +-127) instead of the row's max / 127:
 * re-quantizing values that came from an int8 row with the same scale gives back the same q.
 * Non-finite values are YM_EINVAL. */
ym_err ym_weight_convert(ym_wtype t, const float *src, size_t lds, int N, int K, void *data,
                         float *scale, const float *fixed);

/* C[m, n - n0] = sum_k A[m, k] * W[n, k] + beta * C[m, n - n0]  for m < M, n0 <= n < n1,
 * with C [M, ldc] pointing at column n0, A [M, lda] with K = W->n_cols columns; beta is 0
 * (C is not read) or 1. scratch: per-thread f32 space of ym_matmul_scratch(W->n_cols)
 * floats, or NULL (then many-row products of bf16/int8 run the small-M kernel). Any thread;
 * never allocates; threads may share W and write disjoint column ranges. Hot path. */
void ym_matmul(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W, int n0,
               int n1, float beta, float *scratch);
size_t ym_matmul_scratch(int K);
/* The same product over the inputs [k0, k1) only: C[m, n - n0] = sum_{k0 <= k < k1}
 * A[m, k - k0] * W[n, k] + beta * C[m, n - n0], with A [M, lda] pointing at input column k0
 * and W read in place (an int8 row keeps its one scale; int8 activations are quantized over
 * these k1 - k0 inputs). Partial products over disjoint column ranges add up to ym_matmul's
 * (up to rounding): a thread that owns some inputs computes their share of every output.
 * k1 <= k0 writes zeros (beta 0) or leaves C as it is (beta 1). scratch as ym_matmul's, for
 * W->n_cols. Hot path. */
void ym_matmul_cols(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                    int n0, int n1, int k0, int k1, float beta, float *scratch);

/* Plain loop version (double accumulation): the tests' reference. */
void ym_matmul_ref(float *C, int ldc, const float *A, int lda, int M, const ym_weight *W,
                   int n0, int n1, float beta);

/* Tests and benchmarks: 1 = run the portable C kernels even where AVX-512 is present. */
void ym_matmul_force_portable(int on);
/* 1 (default) = int8 weights meet int8 activations (each input row quantized with its own
 * scale, in f32: q = round-to-nearest-even(a * (127 / max|a|)), value q * (max|a| / 127)) in
 * AVX512-VNNI dot products, where the CPU has them and scratch is given; 0 = the
 * weights are widened to f32 and the activations stay f32 (also YUNMIN_INT8_ACTIVATIONS=0 in
 * the environment). Process-wide; set before use. */
void ym_matmul_int8_activations(int on);
/* 1 = bf16 weights meet bf16 activations (each input rounded to bf16, nearest even) in
 * AVX512-BF16 dot products (f32 sums), where the CPU has them and scratch is given; 0 (the
 * default: it changes results) = the weights are widened to f32 and the activations stay
 * f32. Also YUNMIN_BF16_ACTIVATIONS=1 in the environment. Process-wide; set before use. */
void ym_matmul_bf16_activations(int on);
/* "avx512+vnni-int8", "avx512+bf16-dot", "avx512+vnni-int8+bf16-dot", "avx512" or
 * "portable" */
const char *ym_matmul_isa(void);

#endif
