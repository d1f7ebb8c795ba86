/* engine/sparsity.h - the sparsity profile (docs/ARCHITECTURE.md §4): which channels and state
 * entries of each layer are kept, and the order the kept channels are served in.
 *
 * File `yunmin.sparsity.safetensors`, per layer l:
 *   layers.{l}.channel_logits  F32 [d_inner]           channel d kept iff logit > 0
 *   layers.{l}.state_logits    F32 [d_inner, d_state]  entry (d, n) kept iff logit > 0
 *   layers.{l}.scan_order      I32 [d_inner]           a permutation: position k holds channel
 *   __metadata__: format = yunmin-sparsity, version = 1, method = <non-empty name>, others free.
 * Parsing is strict: every layer from 0 up has all three tensors with those dtypes and shapes,
 * every layer has the same d_inner and d_state, no other tensor, no NaN logit, scan_order a
 * permutation of [0, d_inner). Each failure is YM_EFORMAT with a message naming the tensor.
 *
 * The served layout: layer l serves its kept channels only, in scan order. Served position p
 * holds the p-th kept channel met walking scan_order from position 0. Dropped channels vanish
 * from every channel-indexed tensor (engine/sparse.h builds that model).
 *
 * A profile is immutable once built (ym_sparsity_parse / _load / _new + ym_sparsity_finish);
 * any thread may then read it. */
#ifndef YM_ENGINE_SPARSITY_H
#define YM_ENGINE_SPARSITY_H

#include <stddef.h>
#include <stdint.h>

#include "engine/config.h"
#include "engine/err.h"
#include "engine/safetensors.h"

#define YM_SPARSITY_FILE "yunmin.sparsity.safetensors"
#define YM_SPARSITY_FORMAT "yunmin-sparsity"
#define YM_SPARSITY_VERSION "1"

typedef struct ym_sparsity_layer {
    float *channel_logits; /* owned [d_inner] */
    float *state_logits;   /* owned [d_inner, d_state] */
    int32_t *scan_order;   /* owned [d_inner]: position k holds original channel scan_order[k] */
    int32_t *served;       /* owned [d_inner]: original channel -> served position, or -1 */
    int32_t *kept;         /* owned [d_inner]: served position p -> original channel (n_kept) */
    int n_kept;            /* channels with logit > 0 */
    int64_t n_live;        /* live state entries of kept channels */
} ym_sparsity_layer;

typedef struct ym_sparsity {
    int n_layer;
    int d_inner;
    int d_state;
    char method[64];           /* __metadata__ "method" */
    ym_sparsity_layer *layers; /* owned [n_layer] */
} ym_sparsity;

/* Parse a whole profile file held in buf[0..size). New object in *out (ym_sparsity_free);
 * YM_EFORMAT with a message naming the tensor or key on any malformation. Never reads outside
 * buf. Any thread. */
ym_err ym_sparsity_parse(const uint8_t *buf, size_t size, ym_sparsity **out, ym_diag *diag);
/* Read and parse the file at path (YM_EIO when it cannot be read). New object in *out. */
ym_err ym_sparsity_load(const char *path, ym_sparsity **out, ym_diag *diag);
/* YM_OK when the profile fits a model of this config (n_layer, d_inner, d_state), else
 * YM_EFORMAT saying which dimension differs. */
ym_err ym_sparsity_check(const ym_sparsity *sp, const ym_config *cfg, ym_diag *diag);
void ym_sparsity_free(ym_sparsity *sp); /* NULL-safe */

/* A profile that keeps everything, identity order (logits +1). New object in *out. The caller
 * may then edit logits and scan_order and must call ym_sparsity_finish before any other use. */
ym_err ym_sparsity_new(int n_layer, int d_inner, int d_state, const char *method,
                       ym_sparsity **out);
/* Recompute served/kept/n_kept/n_live from the logits and order. YM_EINVAL (message names the
 * layer) when a scan_order is not a permutation or a logit is NaN. */
ym_err ym_sparsity_finish(ym_sparsity *sp, ym_diag *diag);
/* Write the profile (atomically, ym_st_write). extra: more metadata pairs (may be NULL). */
ym_err ym_sparsity_save(const ym_sparsity *sp, const char *path, const ym_st_meta *extra,
                        int n_extra, ym_diag *diag);

/* Where original channel d of layer l sits in the served layout: its position in
 * [0, n_kept), or -1 when the channel is dropped. For code that maps tensors indexed by the
 * model's original channels onto the served layout (LoRA rows of in_proj's x and z halves
 * and dt_proj, LoRA columns of x_proj and out_proj, IA³ vectors over d_inner). */
static inline int ym_sparsity_served_channel(const ym_sparsity *sp, int l, int d)
{
    return sp->layers[l].served[d];
}
/* 1 when state entry (d, n) of layer l is kept (channel d kept too), else 0. */
static inline int ym_sparsity_state_kept(const ym_sparsity *sp, int l, int d, int n)
{
    const ym_sparsity_layer *L = &sp->layers[l];
    return L->channel_logits[d] > 0.0f && L->state_logits[(size_t)d * sp->d_state + n] > 0.0f;
}

#endif
