/* engine/forward.c - the forward pass over a ragged batch, shared by every model family.
 * Hot path; engine thread only.
 *
 * Owns: the context (its pool and scratch), the embedding lookup, the final norm and lm_head,
 * the batch checks. The layers themselves are the model family's (engine/layer.h: Mamba-1 in
 * engine/mamba1.c, Mamba-2 in engine/mamba2.c), selected once, in ym_ctx_new.
 * Runs: ym_forward on the calling thread plus the context's workers; every thread runs the
 * whole layer loop, meeting at the layers' barriers; lm_head is split by vocabulary rows.
 * Every projection is one ym_matmul over all rows of the batch (engine/weight.h): our GEMV /
 * small-M kernels on the weight in its served type (f32, bf16 or int8), sgemm for many rows.
 * OpenBLAS itself runs single-threaded: this pool owns the cores (docs/ENGINE.md, "Forward pass").
 * Must not: allocate except in ym_ctx_new. */
#include "engine/forward.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/blas.h"
#include "engine/layer.h"

/* The model family's layer operations: the one place the architecture selects code. */
static const ym_layer_ops *layer_ops_for(ym_arch a)
{
    switch (a) {
    case YM_ARCH_MAMBA2:
        return &ym_mamba2_layer_ops;
    case YM_ARCH_FALCON_MAMBA:
        return &ym_falcon_mamba_layer_ops;
    case YM_ARCH_MAMBA1:
        return &ym_mamba1_layer_ops;
    }
    return NULL;
}

static float *falloc(size_t n)
{
    size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
    return aligned_alloc(64, bytes > 0 ? bytes : 64);
}

ym_err ym_ctx_new(ym_model_t *model, int n_rows_max, int n_threads, ym_ctx_t **out)
{
    *out = NULL;
    if (model == NULL || n_rows_max < 1)
        return YM_EINVAL;
    if (n_threads <= 0)
        n_threads = ym_n_cores();
    ym_ctx_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return YM_ENOMEM;
    const ym_config *cfg = &model->cfg;
    size_t R = (size_t)n_rows_max, P = (size_t)cfg->dt_rank + 2 * (size_t)cfg->d_state;
    ym_err err = YM_ENOMEM;
    c->model = ym_model_ref(model);
    if ((c->ops = layer_ops_for(cfg->arch)) == NULL) {
        err = YM_EINVAL;
        goto fail;
    }
    c->n_rows_max = n_rows_max;
    c->n_threads = n_threads;
    ym_blas_single_thread();
    (void)ym_matmul_isa(); /* the CPU check and YUNMIN_INT8_ACTIVATIONS, before any worker */
    if ((err = ym_pool_new(n_threads, &c->pool)) != YM_OK)
        goto fail;
    err = YM_ENOMEM;
    c->h = falloc(R * cfg->d_model);
    c->hn = falloc(R * cfg->d_model * (size_t)n_threads);
    const bool m1 = c->ops->mamba1_scratch; /* engine/layer.h: only the family's scratch */
    if (m1) {
        c->x = falloc(R * cfg->d_inner);
        c->z = falloc(R * cfg->d_inner);
        c->dbc = falloc(R * P);
        c->dt = falloc(R * cfg->d_inner);
        c->y = falloc(R * cfg->d_inner);
        c->xs = falloc(R * cfg->d_inner);
        c->up = falloc(R * (size_t)n_threads * 3 * UP_MAX);
    }
    c->ob = falloc(R * cfg->d_model);
    c->out_rows = calloc(R, sizeof(int));
    int *slices = calloc((size_t)n_threads * 6, sizeof(int));
    int *ch = calloc((size_t)n_threads * 2 * (size_t)cfg->n_layer, sizeof(int));
    if (!c->h || !c->hn ||
        (m1 && (!c->x || !c->z || !c->dbc || !c->dt || !c->y || !c->xs || !c->up)) || !c->ob ||
        !c->out_rows || !slices || !ch) {
        free(slices);
        free(ch);
        goto fail;
    }
    c->md0 = slices;
    c->md1 = slices + n_threads;
    c->p0 = slices + 2 * n_threads;
    c->p1 = slices + 3 * n_threads;
    c->v0 = slices + 4 * n_threads;
    c->v1 = slices + 5 * n_threads;
    c->ch0 = ch;
    c->ch1 = ch + (size_t)n_threads * cfg->n_layer;
    /* Channel slices per layer (a sparse layer has its own d_inner), 16-aligned: a slice
     * holds whole scan blocks (YM_SCAN_BLOCK == ALIGN_CH). */
    for (int l = 0; l < cfg->n_layer; l++)
        ym__split(model->layers[l].d_inner, n_threads, ALIGN_CH, c->ch0 + (size_t)l * n_threads,
              c->ch1 + (size_t)l * n_threads);
    ym__split(cfg->d_model, n_threads, ALIGN_CH, c->md0, c->md1);
    /* x_proj's slices are 16-aligned when packed (the packed kernel starts on a panel). */
    ym__split((int)P, n_threads, n_rows_max > 1 ? ALIGN_CH : 8, c->p0, c->p1);
    ym__split(cfg->n_vocab, n_threads, ALIGN_CH, c->v0, c->v1);
    /* bf16/int8: tiles widened for sgemm (many rows), int8 inputs for the VNNI kernel */
    if ((n_rows_max > 1 && model->wtype != YM_WT_F32) || model->wtype == YM_WT_INT8) {
        int kmax = cfg->d_model > cfg->d_inner ? cfg->d_model : cfg->d_inner;
        c->wscratch_n = ym_matmul_scratch(kmax);
        if ((c->wscratch = falloc(c->wscratch_n * (size_t)n_threads)) == NULL) {
            err = YM_ENOMEM;
            goto fail;
        }
    }
    if (c->ops->ctx_init != NULL && (err = c->ops->ctx_init(c)) != YM_OK)
        goto fail;
    *out = c;
    return YM_OK;
fail:
    ym_ctx_free(c);
    return err;
}

void ym_ctx_free(ym_ctx_t *c)
{
    if (c == NULL)
        return;
    free(c->wscratch);
    free(c->fam);
    free(c->fam_slices);
    ym_pool_free(c->pool);
    free(c->h);
    free(c->hn);
    free(c->x);
    free(c->z);
    free(c->dbc);
    free(c->dt);
    free(c->y);
    free(c->xs);
    free(c->ob);
    free(c->up);
    free(c->out_rows);
    free(c->ch0);
    free(c->md0);
    ym_model_unref(c->model);
    free(c);
}

int ym_ctx_n_rows_max(const ym_ctx_t *c)
{
    return c->n_rows_max;
}

int ym_ctx_n_threads(const ym_ctx_t *c)
{
    return c->n_threads;
}

static void forward_task(void *arg, int ith, int nth)
{
    ym_ctx_t *c = arg;
    const ym_model_t *m = c->model;
    const ym_config *cfg = &m->cfg;
    const ym_batch *b = c->batch;
    const int R = c->n_rows, dm = cfg->d_model;
    float *hn = c->hn + (size_t)ith * c->n_rows_max * dm;
    float *wscr = c->wscratch != NULL ? c->wscratch + (size_t)ith * c->wscratch_n : NULL;

    /* h[r] = embed[token[r]], rows split over threads. */
    for (int r = ith; r < R; r += nth)
        ym_weight_row_f32(&m->embed, b->tokens[r], 0, dm, c->h + (size_t)r * dm);
    ym_pool_barrier(c->pool);

    /* h += layer_l(h): the model family's layer (engine/layer.h) */
    for (int l = 0; l < cfg->n_layer; l++)
        c->ops->layer(c, ith, nth, l, hn, wscr);
    if (c->n_out == 0)
        return;
    /* logits = lm_head(rmsnorm(h) * norm_f), rows wanted only, split by vocab rows */
    norm_rows(hn, c->h, m->norm_f, dm, cfg->norm_eps, c->out_rows, c->n_out);
    int v0 = c->v0[ith], v1 = c->v1[ith], nv = cfg->n_vocab;
    MATMUL(c->logits + v0, nv, hn, dm, c->n_out, &m->lm_head, v0, v1, 0.0f);
}

static ym_err check_batch(const ym_model_t *m, const ym_batch *b, int n_rows_max, ym_diag *diag)
{
    if (b->n_seq < 1 || b->seq_start == NULL || b->tokens == NULL || b->states == NULL)
        return ym_diag_set(diag, YM_EINVAL, "empty batch");
    if (b->seq_start[0] != 0)
        return ym_diag_set(diag, YM_EINVAL, "batch rows must start at 0");
    for (int i = 0; i < b->n_seq; i++) {
        if (b->seq_start[i + 1] <= b->seq_start[i])
            return ym_diag_set(diag, YM_EINVAL, "sequence %d of the batch has no rows", i);
        const ym_state_t *s = b->states[i];
        if (s == NULL || s->n_layer != m->cfg.n_layer || s->d_inner != m->cfg.d_inner ||
            s->d_conv != m->cfg.d_conv || s->d_state != m->cfg.d_state ||
            s->conv_ch != ym_config_conv_channels(&m->cfg) ||
            (s->layout != NULL && s->layout != (const void *)m))
            return ym_diag_set(diag, YM_EINVAL, "state of sequence %d does not fit the model", i);
    }
    for (int i = 0; b->adapters != NULL && i < b->n_seq; i++) {
        const ym_adapt *a = b->adapters[i];
        if (a == NULL)
            continue;
        if (!layer_ops_for(m->cfg.arch)->adapters)
            return ym_diag_set(diag, YM_EINVAL, "adapter of sequence %d: adapters do not run on "
                               "%s models yet", i, ym_arch_name(m->cfg.arch));
        if (!ym_adapt_fits(a, &m->cfg))
            return ym_diag_set(diag, YM_EINVAL, "adapter of sequence %d was compiled for another "
                               "model shape", i);
        /* A sparse model serves a permuted, pruned channel layout: the adapter must have been
         * compiled for this very model (adapters/ does that when loaded against it). */
        if (a->layout != (ym_model_is_sparse(m) ? (const void *)m : NULL))
            return ym_diag_set(diag, YM_EINVAL, "adapter of sequence %d was compiled for another "
                               "channel layout (dense or another sparsity profile)", i);
        for (int l = 0; l < m->cfg.n_layer; l++) { /* dt_proj's bias is fused into softplus */
            const ym_adapt_proj *d = &a->proj[(size_t)l * YM_PROJ_N + YM_PROJ_DT];
            if (d->g_out != NULL && d->b_out == NULL)
                return ym_diag_set(diag, YM_EINVAL, "adapter of sequence %d: dt_proj output "
                                   "scale without its scaled bias (layer %d)", i, l);
        }
    }
    int R = b->seq_start[b->n_seq];
    if (R > n_rows_max)
        return ym_diag_set(diag, YM_EINVAL, "batch of %d rows, context holds %d", R, n_rows_max);
    for (int r = 0; r < R; r++)
        if (b->tokens[r] < 0 || b->tokens[r] >= m->cfg.n_vocab)
            return ym_diag_set(diag, YM_EINVAL, "token id %d out of range [0, %d)", b->tokens[r],
                               m->cfg.n_vocab);
    return YM_OK;
}

ym_err ym_forward(ym_ctx_t *c, const ym_batch *b, float *logits, ym_diag *diag)
{
    ym_err err = check_batch(c->model, b, c->n_rows_max, diag);
    if (err != YM_OK)
        return err;
    int R = b->seq_start[b->n_seq];
    c->batch = b;
    c->logits = logits;
    c->n_rows = R;
    c->n_out = 0;
    if (b->logits == YM_LOGITS_ALL) {
        for (int r = 0; r < R; r++)
            c->out_rows[c->n_out++] = r;
    } else if (b->logits == YM_LOGITS_LAST) {
        for (int i = 0; i < b->n_seq; i++) {
            int r0 = b->all_logits != NULL && b->all_logits[i] ? b->seq_start[i]
                                                               : b->seq_start[i + 1] - 1;
            for (int r = r0; r < b->seq_start[i + 1]; r++)
                c->out_rows[c->n_out++] = r;
        }
    }
    ym_pool_run(c->pool, forward_task, c);
    for (int i = 0; i < b->n_seq; i++)
        b->states[i]->n_tokens += b->seq_start[i + 1] - b->seq_start[i];
    c->batch = NULL;
    return YM_OK;
}

/* ---- reference -------------------------------------------------------------------------
 * The family's ref_token (engine/layer.h), one token at a time. */

ym_err ym_forward_ref(const ym_model_t *m, const ym_batch *b, float *logits)
{
    for (int i = 0; b->adapters != NULL && i < b->n_seq; i++)
        if (b->adapters[i] != NULL)
            return YM_EINVAL;
    return ym_forward_ref_masked(m, NULL, b, logits);
}

ym_err ym_forward_ref_masked(const ym_model_t *m, const ym_sparsity *sp, const ym_batch *b,
                             float *logits)
{
    const ym_layer_ops *ops = layer_ops_for(m->cfg.arch);
    for (int i = 0; b->adapters != NULL && i < b->n_seq; i++)
        if (b->adapters[i] != NULL)
            return YM_EINVAL;
    if (ops == NULL || ops->ref_token == NULL)
        return YM_EINVAL; /* no plain reference for this family: its tests use the fixtures */
    if (ym_model_is_sparse(m))
        return YM_EINVAL; /* the reference reads the dense layout */
    if (sp != NULL && ym_sparsity_check(sp, &m->cfg, NULL) != YM_OK)
        return YM_EINVAL;
    ym_err err = check_batch(m, b, b->seq_start[b->n_seq] > 0 ? b->seq_start[b->n_seq] : 1, NULL);
    if (err != YM_OK)
        return err;
    int out = 0;
    for (int i = 0; i < b->n_seq; i++) {
        for (int r = b->seq_start[i]; r < b->seq_start[i + 1]; r++) {
            int want = b->logits == YM_LOGITS_ALL ||
                       (b->logits == YM_LOGITS_LAST &&
                        (r == b->seq_start[i + 1] - 1 || (b->all_logits && b->all_logits[i])));
            ops->ref_token(m, sp, b->states[i], b->tokens[r],
                           want ? logits + (size_t)(out++) * m->cfg.n_vocab : NULL);
        }
    }
    return YM_OK;
}
