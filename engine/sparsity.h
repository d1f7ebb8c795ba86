/* engine/sparsity.h - the sparsity profile (docs/ARCHITECTURE.md §4): which channels (Mamba-1)
 * or heads (Mamba-2) and which state entries of each layer are kept, and the order the kept
 * Mamba-1 channels are served in.
 *
 * File `yunmin.sparsity.safetensors`, one of two kinds, told apart by the tensor names:
 * channels (Mamba-1 and Falcon-Mamba), per layer l:
 *   layers.{l}.channel_logits  F32 [d_inner]           channel d kept iff logit > 0
 *   layers.{l}.state_logits    F32 [d_inner, d_state]  entry (d, n) kept iff logit > 0
 *   layers.{l}.scan_order      I32 [d_inner]           a permutation: position k holds channel
 * heads (Mamba-2), per layer l:
 *   layers.{l}.head_logits     F32 [n_head]            head h kept iff logit > 0
 *   layers.{l}.state_logits    F32 [n_head, d_state]   entry n of head h kept iff logit > 0
 *   __metadata__: format = yunmin-sparsity, version = 1, method = <non-empty name>, others free.
 * Parsing is strict: layers.0.channel_logits makes a channel profile, layers.0.head_logits a
 * head profile (both: the other kind's tensors are unexpected); every layer from 0 up has all
 * of its kind's tensors with those dtypes and shapes, every layer has the same d_inner (or
 * n_head) and d_state, no other tensor, no NaN logit, scan_order a permutation of [0, d_inner).
 * Each failure is YM_EFORMAT with a message naming the tensor.
 *
 * The served layout: a channel profile's layer l serves its kept channels only, in scan order.
 * Served position p holds the p-th kept channel met walking scan_order from position 0.
 * Dropped channels vanish from every channel-indexed tensor (engine/sparse.h builds that
 * model). A head profile's layer serves its kept heads in their original order (a dropped
 * head's P channels vanish), and each kept head only its live state entries.
 *
 * In the code both kinds share one shape: a layer has n_unit units (channels, or heads), each
 * with a logit (channel_logits or head_logits), a row of state_logits, and a place in the
 * served layout (served, kept; a head profile's scan_order is the identity, not stored).
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

typedef enum {
    YM_SPARSITY_CHANNELS = 0, /* Mamba-1, Falcon-Mamba: channel_logits, state_logits, scan_order */
    YM_SPARSITY_HEADS,        /* Mamba-2: head_logits, state_logits                              */
} ym_sparsity_kind;

typedef struct ym_sparsity_layer { /* n_unit: d_inner (channels) or n_head (heads) */
    float *channel_logits; /* owned [d_inner] (channels), NULL (heads) */
    float *head_logits;    /* owned [n_head] (heads), NULL (channels) */
    float *state_logits;   /* owned [n_unit, d_state] */
    int32_t *scan_order;   /* owned [n_unit]: position k holds original unit scan_order[k]
                              (heads: the identity) */
    int32_t *served;       /* owned [n_unit]: original unit -> served position, or -1 */
    int32_t *kept;         /* owned [n_unit]: served position p -> original unit (n_kept) */
    int n_kept;            /* units with logit > 0 */
    int64_t n_live;        /* live state entries (unit, n) of kept units */
} ym_sparsity_layer;

typedef struct ym_sparsity {
    ym_sparsity_kind kind;
    int n_layer;
    int d_inner;               /* channels: channels per layer; heads: 0 */
    int n_head;                /* heads: heads per layer; channels: 0 */
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
/* YM_OK when the profile fits a model of this config (its kind: channels for Mamba-1 and
 * Falcon-Mamba, heads for Mamba-2; n_layer; d_inner or n_head; d_state), else YM_EFORMAT saying
 * which differs. */
ym_err ym_sparsity_check(const ym_sparsity *sp, const ym_config *cfg, ym_diag *diag);
void ym_sparsity_free(ym_sparsity *sp); /* NULL-safe */

/* A profile that keeps everything, identity order (logits +1). New object in *out. The caller
 * may then edit logits and scan_order and must call ym_sparsity_finish before any other use. */
ym_err ym_sparsity_new(int n_layer, int d_inner, int d_state, const char *method,
                       ym_sparsity **out);
/* The same for a head profile (Mamba-2): every head and entry kept (logits +1). */
ym_err ym_sparsity_new_heads(int n_layer, int n_head, int d_state, const char *method,
                             ym_sparsity **out);
/* Units per layer: d_inner (channels) or n_head (heads). */
static inline int ym_sparsity_n_unit(const ym_sparsity *sp)
{
    return sp->kind == YM_SPARSITY_HEADS ? sp->n_head : sp->d_inner;
}
/* Recompute served/kept/n_kept/n_live from the logits and order. YM_EINVAL (message names the
 * layer) when a scan_order is not a permutation or a logit is NaN. */
ym_err ym_sparsity_finish(ym_sparsity *sp, ym_diag *diag);
/* Write the profile (atomically, ym_st_write). extra: more metadata pairs (may be NULL). */
ym_err ym_sparsity_save(const ym_sparsity *sp, const char *path, const ym_st_meta *extra,
                        int n_extra, ym_diag *diag);

/* Where original channel d of layer l sits in the served layout: its position in
 * [0, n_kept), or -1 when the channel is dropped. For code that maps tensors indexed by the
 * model's original channels onto the served layout (LoRA rows of in_proj's x and z halves
 * and dt_proj, LoRA columns of x_proj and out_proj, IA³ vectors over d_inner). For a head
 * profile d is a head, and the result its served head. */
static inline int ym_sparsity_served_channel(const ym_sparsity *sp, int l, int d)
{
    return sp->layers[l].served[d];
}
/* 1 when state entry (d, n) of layer l is kept (unit d, a channel or a head, kept too),
 * else 0. */
static inline int ym_sparsity_state_kept(const ym_sparsity *sp, int l, int d, int n)
{
    const ym_sparsity_layer *L = &sp->layers[l];
    const float *u = sp->kind == YM_SPARSITY_HEADS ? L->head_logits : L->channel_logits;
    return u[d] > 0.0f && L->state_logits[(size_t)d * sp->d_state + n] > 0.0f;
}

#endif
