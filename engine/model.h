/* engine/model.h - a Mamba-1, Mamba-2 or Falcon-Mamba model in the engine's layout, row-major [out, in].
 *
 * Loaded from a Hugging Face model directory (config.json + model.safetensors, maybe sharded),
 * or made with random weights for benchmarks. Tensors are looked up by their full HF name
 * and checked for shape and dtype; a missing, extra or mis-shaped tensor is YM_EFORMAT with a
 * message naming it and both shapes.
 * The matrices (embedding, in_proj, x_proj, out_proj, lm_head) are ym_weight (engine/weight.h)
 * in the served type: f32, bf16 or int8, by default the checkpoint's own (BF16 stays bf16, I8
 * with its scales stays int8, F32/F16/F64 give f32). A tensor already in the served type and
 * aligned is used in place from the mapping (borrowed); anything else is converted into owned
 * memory, once. The small tensors (norms, conv, dt_proj, A, D, biases) are always f32: they
 * are under 3 % of the bytes and the scan and conv kernels read them as f32.
 * A loaded model is immutable and shared read-only by every thread; refcounted. */
#ifndef YM_ENGINE_MODEL_H
#define YM_ENGINE_MODEL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/config.h"
#include "engine/err.h"
#include "engine/weight.h"

/* The masked scan of a served sparse layer (engine/sparse.h, docs/ARCHITECTURE.md §4). Served channels
 * are cut into blocks of YM_SCAN_BLOCK consecutive channels; a block computes, for each state
 * entry n live in at least one of its channels, one SIMD lane per channel (a lane mask keeps
 * the entries that are dead for a channel at 0). The layer's SSM state is stored blocked:
 * block b's entries at s[off_b + u*w_b + j] for its u-th live entry and channel d0_b + j. */
#define YM_SCAN_BLOCK 16
typedef struct ym_scan_block {
    int d0;                /* first served channel of the block */
    int w;                 /* channels in the block, 1..YM_SCAN_BLOCK */
    int n_u;               /* state entries live in at least one channel of the block */
    int64_t off;           /* where the block's state and A start, in floats; [n_u, w] */
    const int32_t *n_idx;  /* [n_u] which state entry (n), ascending */
    const uint16_t *lanes; /* [n_u] bit j set: entry live for channel d0 + j */
} ym_scan_block;

typedef struct ym_scan_plan {
    int n_blocks;
    const ym_scan_block *blocks; /* [n_blocks], block b starts at channel b*YM_SCAN_BLOCK */
    const float *A;              /* A in the blocked layout (dead lanes 0) */
    int64_t n_lanes;             /* sum over blocks of w * n_u: lanes computed per token */
    int64_t n_live;              /* live entries of the layer */
} ym_scan_plan;

typedef struct ym_layer {      /* names relative to backbone.layers.%d. Shapes in the served
                                  layout: d_inner is this layer's own channel count */
    int d_inner;              /* channels served: cfg.d_inner, or the kept ones (sparse)     */
    const ym_scan_plan *scan; /* masked scan plan (sparse model), or NULL: dense scan        */
    const int32_t *channel;   /* sparse: [d_inner] the original channel each served one is
                                 (scan order); NULL when dense                              */
    const float *norm;        /* norm.weight                 [d_model]                      */
    ym_weight in_proj;        /* mixer.in_proj.weight        [2*d_inner, d_model]           */
    const float *in_proj_b;   /* mixer.in_proj.bias          [2*d_inner]  (use_bias) or NULL */
    const float *conv_w;      /* mixer.conv1d.weight         [d_inner, 1, d_conv]           */
    const float *conv_b;      /* mixer.conv1d.bias           [d_inner] (use_conv_bias) or NULL */
    ym_weight x_proj;         /* mixer.x_proj.weight         [dt_rank + 2*d_state, d_inner] */
    const float *dt_proj_w;   /* mixer.dt_proj.weight        [d_inner, dt_rank]             */
    const float *dt_proj_b;   /* mixer.dt_proj.bias          [d_inner]                      */
    const float *A;           /* -exp(mixer.A_log), at load  [d_inner, d_state]             */
    const float *D;           /* mixer.D                     [d_inner]                      */
    ym_weight out_proj;       /* mixer.out_proj.weight       [d_model, d_inner]             */
    const float *out_proj_b;  /* mixer.out_proj.bias         [d_model] (use_bias) or NULL   */
    /* Mamba-2 (engine/mamba2.c): in_proj [d_inner + conv_ch + n_head, d_model] as [z|x|B|C|dt],
     * conv_w/conv_b over conv_ch = d_inner + 2*n_group*d_state, A = -exp(A_log) and D [n_head];
     * x_proj and dt_proj_* unused (empty / NULL). */
    const float *dt_bias;     /* mixer.dt_bias               [n_head]                       */
    const float *gnorm;       /* mixer.norm.weight (gated)   [d_inner]                      */
    /* Mamba-2 served sparse (engine/sparse.h): the kept heads, their groups and live state
     * entries (engine/ssd.h), or NULL: dense. d_inner is then kept heads * head_dim, and
     * in_proj [2*d_inner + 2*n_group*d_state + kept heads, d_model], conv over
     * d_inner + 2*n_group*d_state channels, dt_bias, A, D over the kept heads. */
    const struct ym_ssd_plan *ssd_plan;
} ym_layer;

typedef struct ym_model {
    ym_config cfg;           /* cfg.n_vocab = rows of the embedding */
    ym_layer *layers;        /* owned, [n_layer] */
    ym_weight embed;         /* backbone.embeddings.weight | backbone.embedding.weight [n_vocab, d_model] */
    const float *norm_f;     /* backbone.norm_f.weight   [d_model] */
    ym_weight lm_head;       /* lm_head.weight [n_vocab, d_model], same data as embed when tied */
    ym_wtype wtype;          /* the type of every ym_weight above (never YM_WT_AUTO) */
    size_t n_params;         /* parameters actually loaded (tied head counted once) */
    size_t weight_bytes;     /* bytes of weights the forward reads per token (served types) */
    size_t resident_bytes;   /* bytes of every weight of the model, the embedding included */
    size_t file_bytes;       /* bytes of the checkpoint's tensors on disk */
    void **owned;            /* owned buffers (converted tensors), freed with the model */
    int n_owned;
    int cap_owned;
    void *st;                /* owned ym_st_set_t * (the mapping), or NULL */
    struct ym_model *base;   /* owned reference: the dense model a served sparse model borrows
                                its unpruned tensors (embedding, norms, head) from, or NULL */
    int64_t n_channels_kept; /* sparse: kept channels over all layers (else n_layer*d_inner) */
    int64_t n_states_live;   /* sparse: live state entries over all layers */
    int64_t n_scan_lanes;    /* sparse: lanes the masked scan computes per token */
    atomic_int refcount;
} ym_model_t;

/* Load a model directory with its matrices in type wt (YM_WT_AUTO: the checkpoint's own).
 * New reference in *out (ym_model_unref). An I8 matrix needs its scale tensor
 * "<name>_scale" (F32 [rows], finite, >= 0; docs/FORMATS.md), else YM_EFORMAT naming it. */
ym_err ym_model_load_as(const char *dir, ym_wtype wt, ym_model_t **out, ym_diag *diag);
ym_err ym_model_load(const char *dir, ym_model_t **out, ym_diag *diag); /* _as YM_WT_AUTO */
/* A model with the given config and deterministic random weights (for benchmarks and tests):
 * weights ~ U(-a, a) with a = 1/sqrt(fan_in), A_log = log(1..d_state) as Mamba's init, D = 1,
 * dt bias as Mamba's init. New reference in *out. */
ym_err ym_model_new_random(const ym_config *cfg, uint64_t seed, ym_model_t **out, ym_diag *diag);
/* The same values, the matrices converted to wt (YM_WT_AUTO: f32) one tensor at a time, so
 * peak memory is the served model plus one f32 matrix. */
ym_err ym_model_new_random_as(const ym_config *cfg, uint64_t seed, ym_wtype wt, ym_model_t **out,
                              ym_diag *diag);
ym_model_t *ym_model_ref(ym_model_t *m);  /* returns m; NULL-safe */
void ym_model_unref(ym_model_t *m);       /* NULL-safe; frees at zero */

#endif
