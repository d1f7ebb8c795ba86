/* engine/forward.h - the forward pass over a ragged batch, any family (docs/ARCHITECTURE.md §3).
 *
 * A batch is any mix of sequences, each contributing one token (decode) or a chunk (prefill),
 * each with its own state. Every projection is one GEMM over all rows (GEMV for a single
 * row); conv and scan run per sequence segment; the work is split over the context's threads
 * by channel (see forward.c). A context is used by one thread at a time (the engine thread). */
#ifndef YM_ENGINE_FORWARD_H
#define YM_ENGINE_FORWARD_H

#include <stdint.h>

#include "engine/adapt.h"
#include "engine/err.h"
#include "engine/model.h"
#include "engine/state.h"

typedef enum {
    YM_LOGITS_LAST, /* one row of logits per sequence: its last token's */
    YM_LOGITS_ALL,  /* one row per token of the batch */
    YM_LOGITS_NONE, /* states only (e.g. prefill chunks that are not the last) */
} ym_logits_mode;

typedef struct ym_batch {
    int n_seq;
    const int32_t *tokens;       /* [n_rows], grouped by sequence */
    const int *seq_start;        /* [n_seq + 1]; rows of sequence i are [seq_start[i], seq_start[i+1]) */
    ym_state_t *const *states;   /* [n_seq], borrowed, updated in place */
    ym_logits_mode logits;
    /* Optional: the adapter each sequence runs with, applied unmerged (engine/adapt.h); NULL,
     * or a NULL entry, is the base model. [n_seq], borrowed for the duration of the call. */
    const ym_adapt *const *adapters;
    /* Optional, with YM_LOGITS_LAST: [n_seq] or NULL; a sequence marked non-zero gets a row of
     * logits for every one of its tokens (scoring a prompt), the others their last token's. */
    const unsigned char *all_logits;
} ym_batch;

typedef struct ym_ctx ym_ctx_t;

/* Scratch for batches up to n_rows_max rows, and a pool of n_threads workers (0 = one per
 * online core). Borrows model (holds a ref). New object in *out (ym_ctx_free). */
ym_err ym_ctx_new(ym_model_t *model, int n_rows_max, int n_threads, ym_ctx_t **out);
void ym_ctx_free(ym_ctx_t *ctx); /* NULL-safe */
int ym_ctx_n_rows_max(const ym_ctx_t *ctx);
int ym_ctx_n_threads(const ym_ctx_t *ctx);

/* Run the batch. logits: [n_out, n_vocab] where n_out = n_seq (LAST; plus each all_logits
 * sequence's rows but one), n_rows (ALL) or 0 (NONE), in batch row order.
 * Token ids outside [0, n_vocab), more rows than n_rows_max, empty segments, an adapter compiled
 * for another model shape -> YM_EINVAL with nothing changed. Blocking; runs on the calling thread plus the context's workers. */
ym_err ym_forward(ym_ctx_t *ctx, const ym_batch *batch, float *logits, ym_diag *diag);

/* The plain single-threaded reference: same semantics, one token at a time, no BLAS.
 * For tests. Dense models and base rows only: a served sparse model or a batch with adapters
 * -> YM_EINVAL; the reference of a sparsity profile is ym_forward_ref_masked (engine/sparse.h). */
ym_err ym_forward_ref(const ym_model_t *model, const ym_batch *batch, float *logits);

#endif
