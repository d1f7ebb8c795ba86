/* engine/adapt.h - what the forward pass needs of an adapter, applied unmerged
 * (docs/ARCHITECTURE.md §5).
 *
 * The engine does not parse adapters: adapters/ (yunmin_adapters) loads PEFT directories,
 * composes them and fills a ym_adapt; the engine only reads it. Dependencies therefore point
 * one way, adapters -> engine, and the engine library links without the adapters library.
 *
 * For every targeted projection y = W x + b (W [n_out, n_in]) of a layer, a ym_adapt makes
 * the forward compute, for the rows of the sequences that use it,
 *     x' = g_in ⊙ x                                  (IA³ on the input, feedforward_modules)
 *     y  = g_out ⊙ (W x' + b + Bt^T (At^T x'))       (LoRA deltas, then IA³ on the output)
 * where At [n_in, r] holds every composed lora_A transposed (ranks concatenated) and
 * Bt [r, n_out] every s_i * lora_B_i transposed, so the sum over adapters is one product of
 * rank r = sum r_i. This equals the merged weights W' = diag(g_out) (W + sum s_i B_i A_i)
 * diag(g_in), b' = g_out ⊙ b: PEFT's merge_and_unload() of the LoRA adapters, then of the IA³
 * ones. A ym_adapt is immutable and shared read-only by every thread; its owner (a refcounted
 * ym_adapter_t of adapters/) keeps it alive while any batch uses it. */
#ifndef YM_ENGINE_ADAPT_H
#define YM_ENGINE_ADAPT_H

#include "engine/config.h"

/* The four adaptable projections of a Mamba-1 mixer, in the order of ym_adapt.proj. */
typedef enum {
    YM_PROJ_IN = 0, /* mixer.in_proj   [2*d_inner, d_model]           */
    YM_PROJ_X,      /* mixer.x_proj    [dt_rank + 2*d_state, d_inner] */
    YM_PROJ_DT,     /* mixer.dt_proj   [d_inner, dt_rank]             */
    YM_PROJ_OUT,    /* mixer.out_proj  [d_model, d_inner]             */
    YM_PROJ_N,
} ym_proj;

typedef struct ym_adapt_proj {
    int r;              /* total LoRA rank, 0 = no LoRA on this projection                   */
    const float *At;    /* [n_in, r]  lora_A^T, ranks of composed adapters side by side      */
    const float *Bt;    /* [r, n_out] scale * lora_B^T                                       */
    const float *g_in;  /* [n_in]  IA³ input scale (product over adapters), or NULL          */
    const float *g_out; /* [n_out] IA³ output scale (product over adapters), or NULL         */
    const float *b_out; /* [n_out] g_out ⊙ the module's bias when both exist, else NULL      */
} ym_adapt_proj;

typedef struct ym_adapt {
    /* the model shape it was compiled for; the forward refuses any other */
    int n_layer, d_model, d_inner, d_state, dt_rank;
    /* The served sparse model whose channel layout it was compiled for (served channel p of a
     * layer at index p of every channel-indexed array, strides still the dense d_inner), or
     * NULL for the dense layout. The forward refuses a mismatch. */
    const void *layout;
    const ym_adapt_proj *proj; /* [n_layer * YM_PROJ_N], borrowed from the owner */
} ym_adapt;

/* Input and output sizes of a projection for this config. */
int ym_proj_n_in(const ym_config *cfg, ym_proj p);
int ym_proj_n_out(const ym_config *cfg, ym_proj p);
const char *ym_proj_name(ym_proj p); /* "in_proj", ...; static storage */

/* 1 when a was compiled for a model of this config's shape, else 0. */
int ym_adapt_fits(const ym_adapt *a, const ym_config *cfg);

/* ---- kernels (hot path; any thread; no allocation) --------------------------------------
 * LoRA on T consecutive rows, output columns [n0, n1):
 *   y[t, n] += sum_j Bt[j*ldb + n] * (sum_k At[k*r + j] * x[t*ldx + k])      k < n_in, j < r */
void ym_lora_rows_f32(float *y, int ldy, const float *x, int ldx, int T, const float *At, int r,
                      int n_in, const float *Bt, int ldb, int n0, int n1);
/* The same in two halves, for a product whose input is split over threads:
 *   u[t*ldu + j]  = sum_{k0 <= k < k1} At[k*r + j] * x[t*ldx + k]        (j < r)
 *   y[t*ldy + n] += sum_j Bt[j*ldb + n] * u[t*ldu + j]                     (n in [n0, n1))   */
void ym_lora_down_f32(float *u, int ldu, const float *x, int ldx, int T, const float *At, int r,
                      int k0, int k1);
void ym_lora_up_f32(float *y, int ldy, const float *u, int ldu, int T, const float *Bt, int r,
                    int ldb, int n0, int n1);
/* y[t*ldy + n] *= g[n]   for t < T, n in [n0, n1)                                           */
void ym_scale_rows_f32(float *y, int ldy, int T, const float *g, int n0, int n1);
/* dst[t*ld + n] = g[n] * src[t*ld + n]   for t < T, n in [n0, n1)                            */
void ym_scale_copy_rows_f32(float *dst, const float *src, int ld, int T, const float *g, int n0,
                            int n1);

#endif
