/* engine/forward.c - the Mamba-1 forward over a ragged batch. Hot path; engine thread only.
 *
 * Work split (every thread runs the whole layer loop, meeting at barriers):
 *   - each thread owns a slice of the d_inner channels [c0, c1): its rows of in_proj (x and
 *     z halves), the conv and scan of those channels for every sequence, and its rows of
 *     dt_proj. A channel's state lives with the thread that owns the channel, so the scan
 *     needs no communication;
 *   - x_proj (which sums over all channels) is split by its output rows after a barrier;
 *   - out_proj is split by output rows (d_model) and accumulates into the residual stream;
 *   - rmsnorm is cheap and every thread computes it for all rows into its own buffer, which
 *     saves a barrier per layer;
 *   - lm_head is split by vocabulary rows.
 * Every projection is one ym_matmul over all rows of the batch (engine/weight.h): our GEMV /
 * small-M kernels on the weight in its served type (f32, bf16 or int8), sgemm for many rows.
 * Adapters (engine/adapt.h) are applied unmerged by the hooks marked "adapters": the base
 * product runs for all rows, then each sequence's rows get their LoRA product and IA³ scaling
 * on the same columns the thread owns; a batch without adapters takes none of these paths.
 * OpenBLAS itself runs single-threaded: this pool owns the cores (STYLE.md §5). Nothing here
 * allocates except ym_ctx_new. */
#include "engine/forward.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/blas.h"
#include "engine/kernels.h"
#include "engine/pool.h"
#include "engine/sparse.h"
#include "engine/weight.h"

#define ALIGN_CH 16 /* channel slices start on a 64-byte boundary */
/* Adapters: LoRA ranks up to this split their down-projection (x . At) over the threads that
 * own the input (x_proj, dt_proj, out_proj), so no thread reads all of At; larger ranks have
 * every thread compute the whole product for its columns. */
#define UP_MAX 64
struct ym_ctx {
    ym_model_t *model; /* owned reference */
    ym_pool_t *pool;   /* owned */
    int n_rows_max;
    int n_threads;
    float *wscratch; /* per-thread [n_threads][ym_matmul_scratch(K max)]: weight tiles widened
                        for sgemm (many-row products of bf16/int8 weights), or NULL */
    size_t wscratch_n;
    /* scratch, [n_rows_max, ...] row-major */
    float *h;   /* residual stream [R, d_model] */
    float *hn;  /* per-thread normed input [n_threads][R, d_model] */
    float *x;   /* conv input/output [R, d_inner] */
    float *z;   /* gate [R, d_inner] */
    float *dbc; /* x_proj output [R, dt_rank + 2*d_state] */
    float *dt;  /* [R, d_inner] */
    float *y;   /* scan output [R, d_inner] */
    float *xs;  /* adapters: x_proj input with IA³ input scaling [R, d_inner] */
    float *ob;  /* adapters: out_proj output before IA³ output scaling [R, d_model] */
    float *up;  /* adapters: per-thread partial LoRA down-products [n_threads][3][R][UP_MAX] */
    int *out_rows; /* [R] rows whose logits are wanted */
    /* per-thread slices */
    int *ch0, *ch1;   /* [n_layer][n_threads] served channels of each layer (own d_inner) */
    int *md0, *md1;   /* d_model rows of out_proj */
    int *p0, *p1;     /* x_proj output rows */
    int *v0, *v1;     /* vocab rows */
    /* the run in progress */
    const ym_batch *batch;
    float *logits;
    int n_rows;
    int n_out;
};

static void split(int n, int nth, int align, int *lo, int *hi)
{
    /* Contiguous slices of near-equal size, each starting on a multiple of align. */
    int units = (n + align - 1) / align;
    for (int i = 0; i < nth; i++) {
        int u0 = (int)((long)units * i / nth), u1 = (int)((long)units * (i + 1) / nth);
        lo[i] = u0 * align < n ? u0 * align : n;
        hi[i] = u1 * align < n ? u1 * align : n;
    }
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
    c->n_rows_max = n_rows_max;
    c->n_threads = n_threads;
    ym_blas_single_thread();
    (void)ym_matmul_isa(); /* the CPU check and YUNMIN_INT8_ACTIVATIONS, before any worker */
    if ((err = ym_pool_new(n_threads, &c->pool)) != YM_OK)
        goto fail;
    err = YM_ENOMEM;
    c->h = falloc(R * cfg->d_model);
    c->hn = falloc(R * cfg->d_model * (size_t)n_threads);
    c->x = falloc(R * cfg->d_inner);
    c->z = falloc(R * cfg->d_inner);
    c->dbc = falloc(R * P);
    c->dt = falloc(R * cfg->d_inner);
    c->y = falloc(R * cfg->d_inner);
    c->xs = falloc(R * cfg->d_inner);
    c->ob = falloc(R * cfg->d_model);
    c->up = falloc(R * (size_t)n_threads * 3 * UP_MAX);
    c->out_rows = calloc(R, sizeof(int));
    int *slices = calloc((size_t)n_threads * 6, sizeof(int));
    int *ch = calloc((size_t)n_threads * 2 * (size_t)cfg->n_layer, sizeof(int));
    if (!c->h || !c->hn || !c->x || !c->z || !c->dbc || !c->dt || !c->y || !c->xs || !c->ob ||
        !c->up || !c->out_rows || !slices || !ch) {
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
        split(model->layers[l].d_inner, n_threads, ALIGN_CH, c->ch0 + (size_t)l * n_threads,
              c->ch1 + (size_t)l * n_threads);
    split(cfg->d_model, n_threads, ALIGN_CH, c->md0, c->md1);
    /* x_proj's slices are 16-aligned when packed (the packed kernel starts on a panel). */
    split((int)P, n_threads, n_rows_max > 1 ? ALIGN_CH : 8, c->p0, c->p1);
    split(cfg->n_vocab, n_threads, ALIGN_CH, c->v0, c->v1);
    /* bf16/int8: tiles widened for sgemm (many rows), int8 inputs for the VNNI kernel */
    if ((n_rows_max > 1 && model->wtype != YM_WT_F32) || model->wtype == YM_WT_INT8) {
        int kmax = cfg->d_model > cfg->d_inner ? cfg->d_model : cfg->d_inner;
        c->wscratch_n = ym_matmul_scratch(kmax);
        if ((c->wscratch = falloc(c->wscratch_n * (size_t)n_threads)) == NULL) {
            err = YM_ENOMEM;
            goto fail;
        }
    }
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

/* C[M, n1 - n0] = A[M, K] . W[n0:n1, K]^T + beta * C (engine/weight.h), with this thread's
 * scratch for tiles of a low-bit weight. */
#define MATMUL(C, ldc, A, lda, M, W, n0, n1, beta)                                             \
    ym_matmul((C), (ldc), (A), (lda), (M), (W), (n0), (n1), (beta), wscr)

static void add_bias(float *C, int ldc, int M, const float *b, int n0, int n1)
{
    for (int r = 0; r < M; r++)
        for (int j = n0; j < n1; j++)
            C[(size_t)r * ldc + j] += b[j];
}

static void norm_rows(float *out, const float *h, const float *w, int d, float eps,
                      const int *rows, int n_rows)
{
    for (int i = 0; i < n_rows; i++) {
        int r = rows != NULL ? rows[i] : i;
        ym_rmsnorm_f32(out + (size_t)i * d, h + (size_t)r * d, w, d, eps);
    }
}


/* ---- adapters (engine/adapt.h): hooks of forward_task, each on this thread's columns ----- */

/* Projection p of layer l for sequence sq, or NULL when the sequence runs the base model. */
static inline const ym_adapt_proj *aproj(const ym_batch *b, int sq, int l, ym_proj p)
{
    const ym_adapt *a = b->adapters != NULL ? b->adapters[sq] : NULL;
    return a != NULL ? &a->proj[(size_t)l * YM_PROJ_N + p] : NULL;
}

/* 1 when some sequence has an IA³ input (g_out == 0) or output (1) scale on p of layer l. */
static int any_scale(const ym_batch *b, int l, ym_proj p, int out)
{
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, p);
        if (a != NULL && (out ? a->g_out : a->g_in) != NULL)
            return 1;
    }
    return 0;
}

/* Partial down-products for projection p (slot mod: 0 x_proj, 1 dt_proj, 2 out_proj) over
 * this thread's inputs [k0, k1) (an empty range writes zeros), before the layer's barrier. */
static void lora_partial(ym_ctx_t *c, int ith, int l, ym_proj p, int mod, const float *x,
                         int ldx, int k0, int k1)
{
    const ym_batch *b = c->batch;
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, p);
        int r0 = b->seq_start[sq], T = b->seq_start[sq + 1] - r0;
        if (a == NULL || a->r == 0 || a->r > UP_MAX)
            continue;
        float *u = c->up + (((size_t)ith * 3 + mod) * c->n_rows_max + r0) * UP_MAX;
        ym_lora_down_f32(u, UP_MAX, x + (size_t)r0 * ldx, ldx, T, a->At, a->r, k0,
                         k1 > k0 ? k1 : k0);
    }
}

/* After the barrier: y[rows, n0:n1] += Bt^T u, u = the sum of every thread's partial (in
 * thread order, so every thread gets the same bits); ranks over UP_MAX take the whole product
 * from x [.., n_in]. ldb = the projection's n_out. */
static void lora_finish(ym_ctx_t *c, int l, ym_proj p, int mod, float *y, int ldy, int ldb,
                        const float *x, int ldx, int n_in, int sq, int n0, int n1)
{
    const ym_batch *b = c->batch;
    const ym_adapt_proj *a = aproj(b, sq, l, p);
    int r0 = b->seq_start[sq], r1 = b->seq_start[sq + 1];
    if (a == NULL || a->r == 0)
        return;
    if (a->r > UP_MAX) {
        ym_lora_rows_f32(y + (size_t)r0 * ldy, ldy, x + (size_t)r0 * ldx, ldx, r1 - r0, a->At,
                         a->r, n_in, a->Bt, ldb, n0, n1);
        return;
    }
    for (int r = r0; r < r1; r++) {
        float u[UP_MAX];
        const float *u0 = c->up + ((size_t)mod * c->n_rows_max + r) * UP_MAX;
        for (int j = 0; j < a->r; j++)
            u[j] = u0[j];
        for (int th = 1; th < c->n_threads; th++) {
            const float *ut = c->up + (((size_t)th * 3 + mod) * c->n_rows_max + r) * UP_MAX;
            for (int j = 0; j < a->r; j++)
                u[j] += ut[j];
        }
        ym_lora_up_f32(y + (size_t)r * ldy, ldy, u, UP_MAX, 1, a->Bt, a->r, ldb, n0, n1);
    }
}

/* in_proj input: hn = g_in ⊙ hn (hn is this thread's own copy, all rows and columns). */
static void hook_in_input(const ym_batch *b, int l, float *hn, int dm)
{
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, YM_PROJ_IN);
        int r0 = b->seq_start[sq], r1 = b->seq_start[sq + 1];
        if (a != NULL && a->g_in != NULL)
            ym_scale_rows_f32(hn + (size_t)r0 * dm, dm, r1 - r0, a->g_in, 0, dm);
    }
}

/* in_proj output, channels [c0, c1) of the x half (outputs c) and z half (outputs di + c). */
static void hook_in_output(ym_ctx_t *c, int l, const float *hn, int c0, int c1)
{
    const ym_batch *b = c->batch;
    const int dm = c->model->cfg.d_model, di = c->model->cfg.d_inner;
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, YM_PROJ_IN);
        int r0 = b->seq_start[sq], T = b->seq_start[sq + 1] - r0;
        if (a == NULL)
            continue;
        float *x = c->x + (size_t)r0 * di, *z = c->z + (size_t)r0 * di;
        const float *in = hn + (size_t)r0 * dm;
        ym_lora_rows_f32(x, di, in, dm, T, a->At, a->r, dm, a->Bt, 2 * di, c0, c1);
        if (a->r > 0)
            ym_lora_rows_f32(z, di, in, dm, T, a->At, a->r, dm, a->Bt + di, 2 * di, c0, c1);
        if (a->g_out != NULL) {
            ym_scale_rows_f32(x, di, T, a->g_out, c0, c1);
            ym_scale_rows_f32(z, di, T, a->g_out + di, c0, c1);
        }
    }
}

/* x_proj input with IA³ input scaling: xs = g_in ⊙ x (or x), channels [c0, c1). */
static void hook_x_input(ym_ctx_t *c, int l, int c0, int c1)
{
    const ym_batch *b = c->batch;
    const int di = c->model->cfg.d_inner;
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, YM_PROJ_X);
        for (int r = b->seq_start[sq]; r < b->seq_start[sq + 1]; r++) {
            size_t o = (size_t)r * di;
            if (a != NULL && a->g_in != NULL)
                ym_scale_copy_rows_f32(c->xs + o, c->x + o, di, 1, a->g_in, c0, c1);
            else
                memcpy(c->xs + o + c0, c->x + o + c0, sizeof(float) * (size_t)(c1 - c0));
        }
    }
}

/* x_proj output columns [p0, p1) (input xin, all channels), then dt_proj's IA³ input
 * scaling of the dt_lo columns among them (dt_lo is read by dt_proj only). */
static void hook_x_output(ym_ctx_t *c, int ith, int l, const float *xin, int p0, int p1)
{
    const ym_batch *b = c->batch;
    const ym_config *cfg = &c->model->cfg;
    const int di = cfg->d_inner, dtr = cfg->dt_rank, P = dtr + 2 * cfg->d_state;
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, YM_PROJ_X);
        const ym_adapt_proj *d = aproj(b, sq, l, YM_PROJ_DT);
        int r0 = b->seq_start[sq], T = b->seq_start[sq + 1] - r0;
        float *o = c->dbc + (size_t)r0 * P;
        lora_finish(c, l, YM_PROJ_X, 0, c->dbc, P, P, xin, di, c->model->layers[l].d_inner, sq,
                    p0, p1);
        if (a != NULL && a->g_out != NULL)
            ym_scale_rows_f32(o, P, T, a->g_out, p0, p1);
        if (d != NULL && d->g_in != NULL && p0 < dtr)
            ym_scale_rows_f32(o, P, T, d->g_in, p0, p1 < dtr ? p1 : dtr);
    }
    /* dt_proj's input dt_lo: this thread's columns of it are final now */
    lora_partial(c, ith, l, YM_PROJ_DT, 1, c->dbc, P, p0 < dtr ? p0 : dtr, p1 < dtr ? p1 : dtr);
}

/* dt = softplus(dt_proj(dt_lo) + LoRA) with IA³ output scaling, channels [c0, c1): the bias
 * is scaled with the output (PEFT), so such rows take g_out ⊙ bias (ym_adapt_proj.b_out). */
static void hook_dt_output(ym_ctx_t *c, int l, const float *bias, int c0, int c1)
{
    const ym_batch *b = c->batch;
    const ym_config *cfg = &c->model->cfg;
    const int di = cfg->d_inner, dtr = cfg->dt_rank, P = dtr + 2 * cfg->d_state;
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, YM_PROJ_DT);
        int r0 = b->seq_start[sq], T = b->seq_start[sq + 1] - r0;
        float *dt = c->dt + (size_t)r0 * di;
        const float *bs = bias;
        lora_finish(c, l, YM_PROJ_DT, 1, c->dt, di, di, c->dbc, P, dtr, sq, c0, c1);
        if (a != NULL) {
            if (a->g_out != NULL) {
                ym_scale_rows_f32(dt, di, T, a->g_out, c0, c1);
                bs = a->b_out;
            }
        }
        ym_softplus_bias_f32(dt, di, T, bs, c0, c1);
    }
}

/* out_proj input: y = g_in ⊙ y, channels [c0, c1) (y is read by out_proj only). */
static void hook_out_input(ym_ctx_t *c, int ith, int l, int c0, int c1)
{
    const ym_batch *b = c->batch;
    const int di = c->model->cfg.d_inner;
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, YM_PROJ_OUT);
        int r0 = b->seq_start[sq], T = b->seq_start[sq + 1] - r0;
        if (a != NULL && a->g_in != NULL)
            ym_scale_rows_f32(c->y + (size_t)r0 * di, di, T, a->g_in, c0, c1);
    }
    lora_partial(c, ith, l, YM_PROJ_OUT, 2, c->y, di, c0, c1);
}

/* out_proj LoRA (and IA³ output scaling when o is the separate output buffer), rows d_model
 * [m0, m1). o is c->h (no output scaling in this layer) or c->ob. */
static void hook_out_output(ym_ctx_t *c, int l, float *o, int scale, int m0, int m1)
{
    const ym_batch *b = c->batch;
    const int dm = c->model->cfg.d_model, di = c->model->cfg.d_inner;
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, YM_PROJ_OUT);
        int r0 = b->seq_start[sq], T = b->seq_start[sq + 1] - r0;
        if (a == NULL)
            continue;
        lora_finish(c, l, YM_PROJ_OUT, 2, o, dm, dm, c->y, di, c->model->layers[l].d_inner, sq,
                    m0, m1);
        if (scale && a->g_out != NULL)
            ym_scale_rows_f32(o + (size_t)r0 * dm, dm, T, a->g_out, m0, m1);
    }
}

static void forward_task(void *arg, int ith, int nth)
{
    ym_ctx_t *c = arg;
    const ym_model_t *m = c->model;
    const ym_config *cfg = &m->cfg;
    const ym_batch *b = c->batch;
    /* di: the scratch rows' stride; each layer serves L->d_inner <= di channels. */
    const int R = c->n_rows, dm = cfg->d_model, di = cfg->d_inner, N = cfg->d_state;
    const int K = cfg->d_conv, dtr = cfg->dt_rank, P = dtr + 2 * N;
    const int m0 = c->md0[ith], m1 = c->md1[ith];
    const int p0 = c->p0[ith], p1 = c->p1[ith];
    float *hn = c->hn + (size_t)ith * c->n_rows_max * dm;
    const int ad = b->adapters != NULL; /* adapters: take the hooks */
    float *wscr = c->wscratch != NULL ? c->wscratch + (size_t)ith * c->wscratch_n : NULL;

    /* h[r] = embed[token[r]], rows split over threads. */
    for (int r = ith; r < R; r += nth)
        ym_weight_row_f32(&m->embed, b->tokens[r], 0, dm, c->h + (size_t)r * dm);
    ym_pool_barrier(c->pool);

    for (int l = 0; l < cfg->n_layer; l++) {
        const ym_layer *L = &m->layers[l];
        const int nk = L->d_inner; /* channels this layer serves (all of them when dense) */
        const int c0 = c->ch0[(size_t)l * nth + ith], c1 = c->ch1[(size_t)l * nth + ith];
        if (nk == 0) {
            /* Every channel dropped: y = 0, so the mixer adds out_proj's bias only (each
             * thread its rows; the barrier makes h whole before the next layer's norm). Every
             * thread takes this branch for the layer, so the barriers stay paired. */
            if (L->out_proj_b != NULL) {
                add_bias(c->h, dm, R, L->out_proj_b, m0, m1);
                ym_pool_barrier(c->pool);
            }
            continue;
        }
        /* hn = rmsnorm(h) * norm.weight  (every thread, all rows: no barrier needed) */
        norm_rows(hn, c->h, L->norm, dm, cfg->norm_eps, NULL, R);
        if (ad)
            hook_in_input(b, l, hn, dm);
        /* [x, z] = in_proj(hn), this thread's channels */
        MATMUL(c->x + c0, di, hn, dm, R, &L->in_proj, c0, c1, 0.0f);
        MATMUL(c->z + c0, di, hn, dm, R, &L->in_proj, nk + c0, nk + c1, 0.0f);
        if (L->in_proj_b != NULL) {
            add_bias(c->x, di, R, L->in_proj_b, c0, c1);
            add_bias(c->z, di, R, L->in_proj_b + nk, c0, c1);
        }
        if (ad)
            hook_in_output(c, l, hn, c0, c1);
        /* x = silu(causal_conv(x)), per sequence segment, state of this thread's channels */
        for (int sq = 0; sq < b->n_seq; sq++) {
            int r0 = b->seq_start[sq], r1 = b->seq_start[sq + 1];
            ym_conv_silu_f32(c->x + (size_t)r0 * di, di, r1 - r0,
                             ym_state_conv(b->states[sq], l), L->conv_w, L->conv_b, K, c0, c1);
        }
        const float *xin = c->x;
        if (ad && any_scale(b, l, YM_PROJ_X, 0)) {
            hook_x_input(c, l, c0, c1);
            xin = c->xs;
        }
        if (ad)
            lora_partial(c, ith, l, YM_PROJ_X, 0, xin, di, c0, c1);
        ym_pool_barrier(c->pool);
        /* [dt_lo, B, C] = x_proj(x), split by output rows */
        MATMUL(c->dbc + p0, P, xin, di, R, &L->x_proj, p0, p1, 0.0f);
        if (ad)
            hook_x_output(c, ith, l, xin, p0, p1);
        ym_pool_barrier(c->pool);
        /* dt = softplus(dt_proj(dt_lo)), this thread's channels */
        const ym_weight dtw = {YM_WT_F32, nk, dtr, L->dt_proj_w, NULL}; /* stays f32 */
        MATMUL(c->dt + c0, di, c->dbc, P, R, &dtw, c0, c1, 0.0f);
        if (ad)
            hook_dt_output(c, l, L->dt_proj_b, c0, c1);
        else
            ym_softplus_bias_f32(c->dt, di, R, L->dt_proj_b, c0, c1);
        /* the selective scan and y = (C.s + D x) * silu(z), per segment */
        for (int sq = 0; sq < b->n_seq; sq++) {
            int r0 = b->seq_start[sq], r1 = b->seq_start[sq + 1];
            size_t o = (size_t)r0 * di;
            if (L->scan != NULL) /* sparse: live entries only, blocks of this slice */
                ym_scan_masked_f32(c->y + o, ym_state_ssm(b->states[sq], l), L->scan, L->D,
                                   c->x + o, c->dt + o, c->z + o, c->dbc + (size_t)r0 * P + dtr,
                                   P, r1 - r0, di, N, c0 / YM_SCAN_BLOCK,
                                   (c1 + YM_SCAN_BLOCK - 1) / YM_SCAN_BLOCK);
            else
                ym_scan_f32(c->y + o, ym_state_ssm(b->states[sq], l), L->A, L->D, c->x + o,
                            c->dt + o, c->z + o, c->dbc + (size_t)r0 * P + dtr, P, r1 - r0, di,
                            N, c0, c1);
        }
        if (ad)
            hook_out_input(c, ith, l, c0, c1);
        ym_pool_barrier(c->pool);
        /* h = h + out_proj(y), split by output rows; with an IA³ output scale in the batch,
         * out_proj's output goes through c->ob so that the scale does not touch h */
        if (ad && any_scale(b, l, YM_PROJ_OUT, 1)) {
            MATMUL(c->ob + m0, dm, c->y, di, R, &L->out_proj, m0, m1, 0.0f);
            if (L->out_proj_b != NULL)
                add_bias(c->ob, dm, R, L->out_proj_b, m0, m1);
            hook_out_output(c, l, c->ob, 1, m0, m1);
            for (int r = 0; r < R; r++)
                for (int j = m0; j < m1; j++)
                    c->h[(size_t)r * dm + j] += c->ob[(size_t)r * dm + j];
        } else {
            MATMUL(c->h + m0, dm, c->y, di, R, &L->out_proj, m0, m1, 1.0f);
            if (L->out_proj_b != NULL)
                add_bias(c->h, dm, R, L->out_proj_b, m0, m1);
            if (ad)
                hook_out_output(c, l, c->h, 0, m0, m1);
        }
        ym_pool_barrier(c->pool);
    }
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
            (s->layout != NULL && s->layout != (const void *)m))
            return ym_diag_set(diag, YM_EINVAL, "state of sequence %d does not fit the model", i);
    }
    for (int i = 0; b->adapters != NULL && i < b->n_seq; i++) {
        const ym_adapt *a = b->adapters[i];
        if (a == NULL)
            continue;
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
        for (int i = 0; i < b->n_seq; i++)
            c->out_rows[c->n_out++] = b->seq_start[i + 1] - 1;
    }
    ym_pool_run(c->pool, forward_task, c);
    for (int i = 0; i < b->n_seq; i++)
        b->states[i]->n_tokens += b->seq_start[i + 1] - b->seq_start[i];
    c->batch = NULL;
    return YM_OK;
}

/* ---- reference -------------------------------------------------------------------------
 * One token at a time, plain loops, libm, accumulation in double: obviously DESIGN.md §3. */

static double dsilu(double v)
{
    return v / (1.0 + exp(-v));
}

/* sp: the profile's masks applied with the meaning DESIGN.md §4 gives them, or NULL. */
static void ref_token(const ym_model_t *m, const ym_sparsity *sp, ym_state_t *st, int32_t tok,
                      float *logits)
{
    const ym_config *cfg = &m->cfg;
    int dm = cfg->d_model, di = cfg->d_inner, N = cfg->d_state, K = cfg->d_conv;
    int dtr = cfg->dt_rank, P = dtr + 2 * N;
    double *h = calloc((size_t)dm, sizeof(double)), *hn = calloc((size_t)dm, sizeof(double));
    double *xz = calloc(2 * (size_t)di, sizeof(double)), *dbc = calloc((size_t)P, sizeof(double));
    double *y = calloc((size_t)di, sizeof(double));
    float *w = calloc((size_t)(dm > di ? dm : di), sizeof(float)); /* one row, dequantized */
    YM_ASSERT(h && hn && xz && dbc && y && w);
    ym_weight_row_f32(&m->embed, tok, 0, dm, w);
    for (int i = 0; i < dm; i++)
        h[i] = w[i];
    for (int l = 0; l < cfg->n_layer; l++) {
        const ym_layer *L = &m->layers[l];
        double ss = 0;
        for (int i = 0; i < dm; i++)
            ss += h[i] * h[i];
        double rs = 1.0 / sqrt(ss / dm + cfg->norm_eps);
        for (int i = 0; i < dm; i++)
            hn[i] = h[i] * rs * L->norm[i];
        for (int o = 0; o < 2 * di; o++) {
            double acc = L->in_proj_b != NULL ? L->in_proj_b[o] : 0.0;
            ym_weight_row_f32(&L->in_proj, o, 0, dm, w);
            for (int i = 0; i < dm; i++)
                acc += (double)w[i] * hn[i];
            xz[o] = acc;
        }
        float *cs = ym_state_conv(st, l), *ssm = ym_state_ssm(st, l);
        for (int d = 0; d < di; d++) {
            double acc = L->conv_b != NULL ? L->conv_b[d] : 0.0;
            for (int k = 0; k < K - 1; k++)
                acc += (double)L->conv_w[(size_t)d * K + k] * cs[(size_t)d * (K - 1) + k];
            acc += (double)L->conv_w[(size_t)d * K + K - 1] * xz[d];
            for (int k = 0; k + 1 < K - 1; k++)
                cs[(size_t)d * (K - 1) + k] = cs[(size_t)d * (K - 1) + k + 1];
            if (K > 1)
                cs[(size_t)d * (K - 1) + K - 2] = (float)xz[d];
            xz[d] = dsilu(acc);
            if (sp != NULL && !(sp->layers[l].channel_logits[d] > 0.0f))
                xz[d] = 0.0; /* a dropped channel: x[d] := 0 right after conv + silu */
        }
        for (int p = 0; p < P; p++) {
            double acc = 0;
            ym_weight_row_f32(&L->x_proj, p, 0, di, w);
            for (int d = 0; d < di; d++)
                acc += (double)w[d] * xz[d];
            dbc[p] = acc;
        }
        for (int d = 0; d < di; d++) {
            double dt = L->dt_proj_b[d];
            for (int r = 0; r < dtr; r++)
                dt += (double)L->dt_proj_w[(size_t)d * dtr + r] * dbc[r];
            dt = dt > 20.0 ? dt : log1p(exp(dt));
            double acc = 0;
            for (int n = 0; n < N; n++) {
                size_t i = (size_t)d * N + n;
                double s = exp(dt * L->A[i]) * ssm[i] + dt * dbc[dtr + n] * xz[d];
                if (sp != NULL && !ym_sparsity_state_kept(sp, l, d, n))
                    s = 0.0; /* a dropped entry: s[d, n] stays 0 */
                ssm[i] = (float)s;
                acc += dbc[dtr + N + n] * s;
            }
            y[d] = (acc + L->D[d] * xz[d]) * dsilu(xz[di + d]);
        }
        for (int o = 0; o < dm; o++) {
            double acc = L->out_proj_b != NULL ? L->out_proj_b[o] : 0.0;
            ym_weight_row_f32(&L->out_proj, o, 0, di, w);
            for (int d = 0; d < di; d++)
                acc += (double)w[d] * y[d];
            h[o] += acc;
        }
    }
    if (logits != NULL) {
        double ss = 0;
        for (int i = 0; i < dm; i++)
            ss += h[i] * h[i];
        double rs = 1.0 / sqrt(ss / dm + cfg->norm_eps);
        for (int i = 0; i < dm; i++)
            hn[i] = h[i] * rs * m->norm_f[i];
        for (int v = 0; v < cfg->n_vocab; v++) {
            double acc = 0;
            ym_weight_row_f32(&m->lm_head, v, 0, dm, w);
            for (int i = 0; i < dm; i++)
                acc += (double)w[i] * hn[i];
            logits[v] = (float)acc;
        }
    }
    st->n_tokens++;
    free(h);
    free(hn);
    free(xz);
    free(dbc);
    free(y);
    free(w);
}

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
    for (int i = 0; b->adapters != NULL && i < b->n_seq; i++)
        if (b->adapters[i] != NULL)
            return YM_EINVAL;
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
                       (b->logits == YM_LOGITS_LAST && r == b->seq_start[i + 1] - 1);
            ref_token(m, sp, b->states[i], b->tokens[r],
                      want ? logits + (size_t)(out++) * m->cfg.n_vocab : NULL);
        }
    }
    return YM_OK;
}
