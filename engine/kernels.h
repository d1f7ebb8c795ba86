/* engine/kernels.h - the element-wise and scan kernels of the Mamba forward (internal).
 *
 * Each kernel has an AVX-512 version and a portable one (the masked scan an AVX2 one too),
 * chosen at run time from the CPU's features; ym_kernels_force_portable(1) selects the
 * portable ones (tests compare them all).
 * Layouts are row-major; "ld" is the row stride in floats; channels [c0, c1) of each row. */
#ifndef YM_ENGINE_KERNELS_H
#define YM_ENGINE_KERNELS_H

#include "engine/model.h"

void ym_kernels_force_portable(int on);
/* Tests: behave as on a CPU with AVX2 but no AVX-512 (the masked scan's AVX2 version; the
 * other kernels then run portable). */
void ym_kernels_force_avx2(int on);
const char *ym_kernels_isa(void); /* "avx512", "avx2" or "portable" */

/* out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]                                  [n] */
void ym_rmsnorm_f32(float *out, const float *x, const float *w, int n, float eps);

/* Causal depthwise conv then silu, in place, for T consecutive rows of one sequence:
 *   x[t,d] := silu(b[d] + sum_k w[d,k] * in[t-K+1+k, d])  where in[<0] comes from the state.
 * cstate [d_inner, K-1] holds the last K-1 inputs of each channel (oldest first), updated.
 * x [T, ld]; w [d_inner, K]; b [d_inner] or NULL.                                          */
void ym_conv_silu_f32(float *x, int ld, int T, float *cstate, const float *w, const float *b,
                      int K, int c0, int c1);

/* dt[t,d] := softplus(dt[t,d] + bias[d])  (PyTorch's softplus: x for x > 20)    [T, ld] */
void ym_softplus_bias_f32(float *dt, int ld, int T, const float *bias, int c0, int c1);

/* Selective scan for T consecutive rows of one sequence, channels [c0, c1):
 *   s[d,n] = exp(dt[t,d]*A[d,n])*s[d,n] + dt[t,d]*B[t,n]*x[t,d]
 *   y[t,d] = (sum_n C[t,n]*s[d,n] + D[d]*x[t,d]) * silu(z[t,d])
 * s, A [d_inner, N]; x, dt, z, y [T, ld]; B = bc + t*ldbc, C = bc + t*ldbc + N.            */
void ym_scan_f32(float *y, float *s, const float *A, const float *D, const float *x,
                 const float *dt, const float *z, const float *bc, int ldbc, int T, int ld,
                 int N, int c0, int c1);

/* The masked scan over the blocks [b0, b1) of a sparse layer's plan (engine/model.h), T
 * consecutive rows of one sequence. For each block, each entry n live in it, and each channel
 * d of the block (lane j):
 *   s[d,n] = live(d,n) ? exp(dt[t,d]*A[d,n])*s[d,n] + dt[t,d]*B[t,n]*x[t,d] : 0
 *   y[t,d] = (sum over the block's entries of C[t,n]*s[d,n] + D[d]*x[t,d]) * silu(z[t,d])
 * s: the layer's state in the plan's blocked layout; D [d_inner]; x, dt, z, y [T, ld];
 * B = bc + t*ldbc, C = bc + t*ldbc + N. Vectorized over the channels of a block.            */
void ym_scan_masked_f32(float *y, float *s, const ym_scan_plan *plan, const float *D,
                        const float *x, const float *dt, const float *z, const float *bc,
                        int ldbc, int T, int ld, int N, int b0, int b1);

#endif
