/* engine/mamba1.c - the Mamba-1 layer (and Falcon-Mamba's, the same with norms) behind the layer interface of engine/layer.h, with its
 * adapter hooks and its plain reference.
 *
 * Owns: nothing; computes in the context's scratch (engine/layer.h).
 * Runs: on every thread of the context's pool, inside ym_forward (engine/forward.c).
 * Must not: allocate, or touch a state or a scratch column another thread owns before the
 * barrier that hands it over.
 *
 * Work split (every thread runs the whole layer, meeting at barriers):
 *   - each thread owns a slice of the d_inner channels [c0, c1): its rows of in_proj (x and
 *     z halves), the conv and scan of those channels for every sequence, and its rows of
 *     dt_proj. A channel's state lives with the thread that owns the channel, so the scan
 *     needs no communication;
 *   - x_proj (which sums over all channels) is split by its output rows after a barrier;
 *   - out_proj is split by output rows (d_model) and accumulates into the residual stream;
 *   - rmsnorm is cheap and every thread computes it for all rows into its own buffer, which
 *     saves a barrier per layer.
 * Adapters (engine/adapt.h) are applied unmerged by the hooks marked "adapters": the base
 * product runs for all rows, then each sequence's rows get their LoRA product and IA³ scaling
 * on the same columns the thread owns; a batch without adapters takes none of these paths. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/layer.h"
#include "engine/pool.h"
#include "engine/sparse.h"
#include "engine/weight.h"

/* ---- adapters (engine/adapt.h): hooks of mamba1_layer, each on this thread's columns ----- */

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

/* dt_proj's input: the IA³ input scaling of the dt_lo columns among [p0, p1) (dt_lo is read
 * by dt_proj only), then this thread's part of its LoRA down-product. Runs once dt_lo is
 * final: right after x_proj, or after Falcon-Mamba's norm of it. */
static void hook_dt_input(ym_ctx_t *c, int ith, int l, int p0, int p1)
{
    const ym_batch *b = c->batch;
    const ym_config *cfg = &c->model->cfg;
    const int dtr = cfg->dt_rank, P = dtr + 2 * cfg->d_state;
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *d = aproj(b, sq, l, YM_PROJ_DT);
        int r0 = b->seq_start[sq], T = b->seq_start[sq + 1] - r0;
        if (d != NULL && d->g_in != NULL && p0 < dtr)
            ym_scale_rows_f32(c->dbc + (size_t)r0 * P, P, T, d->g_in, p0, p1 < dtr ? p1 : dtr);
    }
    lora_partial(c, ith, l, YM_PROJ_DT, 1, c->dbc, P, p0 < dtr ? p0 : dtr, p1 < dtr ? p1 : dtr);
}

/* x_proj output columns [p0, p1) (input xin, all channels): LoRA and IA³ output scaling;
 * then, when dt_in (no norm between x_proj and dt_proj), hook_dt_input on the same columns. */
static void hook_x_output(ym_ctx_t *c, int ith, int l, const float *xin, int p0, int p1,
                          int dt_in)
{
    const ym_batch *b = c->batch;
    const ym_config *cfg = &c->model->cfg;
    const int di = cfg->d_inner, P = cfg->dt_rank + 2 * cfg->d_state;
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, YM_PROJ_X);
        int r0 = b->seq_start[sq], T = b->seq_start[sq + 1] - r0;
        float *o = c->dbc + (size_t)r0 * P;
        lora_finish(c, l, YM_PROJ_X, 0, c->dbc, P, P, xin, di, c->model->layers[l].d_inner, sq,
                    p0, p1);
        if (a != NULL && a->g_out != NULL)
            ym_scale_rows_f32(o, P, T, a->g_out, p0, p1);
    }
    if (dt_in)
        hook_dt_input(c, ith, l, p0, p1);
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


/* v := v / sqrt(mean(v^2) + eps) (Falcon-Mamba's rms_forward, no weight). */
static void rms_plain(float *v, int n, float eps)
{
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (double)v[i] * v[i];
    float r = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++)
        v[i] *= r;
}

/* ---- the layer without adapters: three barriers ----------------------------------------
 * x_proj is split by its inputs, the channels a thread owns, instead of by its outputs: after
 * conv, a thread multiplies its own channels of x into its share of every x_proj output
 * (ym_matmul_cols); one barrier makes every share visible, and every thread adds them all, in
 * thread order (so every thread gets the same bits), into its own copy of dbc. That drops the
 * barrier before x_proj, which needed all channels of x: 3 barriers a layer instead of 4. The
 * sums cost R * P additions per thread; x_proj is small (P = 80 rows on the 130m shape), so
 * reading half of each of its rows costs nothing measurable. out_proj stays split by output
 * rows: a thread's rows are one contiguous block of the matrix, read as one sequential
 * stream. Split by inputs as well (each thread half of every row, then a sum into per-thread
 * copies of h: 2 barriers a layer), batch-1 decode ran 0.65-0.86x the 4-barrier layer
 * (docs/BENCHMARKS.md, "What is left outside the products"). Batches with adapters keep the
 * output split below (their hooks add LoRA products to output columns a thread owns).
 *
 * c->fam, per thread: [xp | dbc], xp [R, P] its share of x_proj, dbc [R, P] the sum. */
static size_t fam_stride(const ym_ctx_t *c)
{
    const ym_config *cfg = &c->model->cfg;
    size_t R = (size_t)c->n_rows_max, P = (size_t)cfg->dt_rank + 2 * (size_t)cfg->d_state;
    return 2 * ((R * P + 15) & ~(size_t)15);
}

static ym_err mamba1_ctx_init(ym_ctx_t *c)
{
    size_t n = fam_stride(c) * (size_t)c->n_threads;
    if ((c->fam = aligned_alloc(64, n * sizeof(float))) == NULL)
        return YM_ENOMEM;
    return YM_OK;
}

static void mamba1_layer_split(ym_ctx_t *c, int ith, int nth, int l, float *hn, float *wscr)
{
    const ym_model_t *m = c->model;
    const ym_config *cfg = &m->cfg;
    const ym_batch *b = c->batch;
    const int R = c->n_rows, dm = cfg->d_model, di = cfg->d_inner, N = cfg->d_state;
    const int K = cfg->d_conv, dtr = cfg->dt_rank, P = dtr + 2 * N;
    const ym_layer *L = &m->layers[l];
    const int nk = L->d_inner;
    const int c0 = c->ch0[(size_t)l * nth + ith], c1 = c->ch1[(size_t)l * nth + ith];
    const size_t fs = fam_stride(c);
    float *xp = c->fam + (size_t)ith * fs, *dbc = xp + fs / 2;
    const int m0 = c->md0[ith], m1 = c->md1[ith];
    /* hn = rmsnorm(h) * norm.weight */
    norm_rows(hn, c->h, L->norm, dm, cfg->norm_eps, NULL, R);
    /* [x, z] = in_proj(hn), this thread's channels */
    MATMUL(c->x + c0, di, hn, dm, R, &L->in_proj, c0, c1, 0.0f);
    MATMUL(c->z + c0, di, hn, dm, R, &L->in_proj, nk + c0, nk + c1, 0.0f);
    if (L->in_proj_b != NULL) {
        add_bias(c->x, di, R, L->in_proj_b, c0, c1);
        add_bias(c->z, di, R, L->in_proj_b + nk, c0, c1);
    }
    /* x = silu(causal_conv(x)), per sequence segment, state of this thread's channels */
    for (int sq = 0; sq < b->n_seq; sq++) {
        int r0 = b->seq_start[sq], r1 = b->seq_start[sq + 1];
        ym_conv_silu_f32(c->x + (size_t)r0 * di, di, r1 - r0,
                         ym_state_conv(b->states[sq], l), L->conv_w, L->conv_b, K, c0, c1);
    }
    /* this thread's share of [dt_lo, B, C] = x_proj(x): its channels' columns */
    ym_matmul_cols(xp, P, c->x + c0, di, R, &L->x_proj, 0, P, c0, c1, 0.0f, wscr);
    ym_pool_barrier(c->pool);
    const float *xp0 = c->fam; /* thread 0's share */
    for (size_t i = 0; i < (size_t)R * P; i++) {
        float v = xp0[i];
        for (int th = 1; th < nth; th++)
            v += xp0[i + (size_t)th * fs];
        dbc[i] = v;
    }
    if (cfg->mixer_rms_eps > 0.0f) {
        /* Falcon-Mamba: weightless RMS norms on dt_lo, B and C of each row */
        for (int r = 0; r < R; r++) {
            float *o = dbc + (size_t)r * P;
            rms_plain(o, dtr, cfg->mixer_rms_eps);
            rms_plain(o + dtr, N, cfg->mixer_rms_eps);
            rms_plain(o + dtr + N, N, cfg->mixer_rms_eps);
        }
    }
    /* dt = softplus(dt_proj(dt_lo)), this thread's channels */
    const ym_weight dtw = {YM_WT_F32, nk, dtr, L->dt_proj_w, NULL}; /* stays f32 */
    MATMUL(c->dt + c0, di, dbc, P, R, &dtw, c0, c1, 0.0f);
    ym_softplus_bias_f32(c->dt, di, R, L->dt_proj_b, c0, c1);
    /* the selective scan and y = (C.s + D x) * silu(z), per segment */
    for (int sq = 0; sq < b->n_seq; sq++) {
        int r0 = b->seq_start[sq], r1 = b->seq_start[sq + 1];
        size_t o = (size_t)r0 * di;
        if (L->scan != NULL) /* sparse: live entries only, blocks of this slice */
            ym_scan_masked_f32(c->y + o, ym_state_ssm(b->states[sq], l), L->scan, L->D,
                               c->x + o, c->dt + o, c->z + o, dbc + (size_t)r0 * P + dtr,
                               P, r1 - r0, di, N, c0 / YM_SCAN_BLOCK,
                               (c1 + YM_SCAN_BLOCK - 1) / YM_SCAN_BLOCK);
        else
            ym_scan_f32(c->y + o, ym_state_ssm(b->states[sq], l), L->A, L->D, c->x + o,
                        c->dt + o, c->z + o, dbc + (size_t)r0 * P + dtr, P, r1 - r0, di,
                        N, c0, c1);
    }
    ym_pool_barrier(c->pool); /* y whole */
    /* h = h + out_proj(y), split by output rows (a contiguous block of the matrix) */
    MATMUL(c->h + m0, dm, c->y, di, R, &L->out_proj, m0, m1, 1.0f);
    if (L->out_proj_b != NULL)
        add_bias(c->h, dm, R, L->out_proj_b, m0, m1);
    ym_pool_barrier(c->pool);
}

/* Layer l (norm, mixer, residual) for every row of the batch; run by every thread of the pool,
 * which meet at its barriers. hn: this thread's normed-input buffer; wscr: its matmul scratch. */
static void mamba1_layer(ym_ctx_t *c, int ith, int nth, int l, float *hn, float *wscr)
{
    const ym_layer *Ld = &c->model->layers[l];
    if (Ld->d_inner == 0) {
        /* Every channel dropped: y = 0, so the mixer adds out_proj's bias only (each
         * thread its rows; the barrier makes h whole before the next layer's norm). Every
         * thread takes this branch for the layer, so the barriers stay paired. */
        if (Ld->out_proj_b != NULL) {
            add_bias(c->h, c->model->cfg.d_model, c->n_rows, Ld->out_proj_b, c->md0[ith],
                     c->md1[ith]);
            ym_pool_barrier(c->pool);
        }
        return;
    }
    int any_adapter = 0;
    for (int sq = 0; c->batch->adapters != NULL && sq < c->batch->n_seq; sq++)
        any_adapter |= c->batch->adapters[sq] != NULL;
    if (!any_adapter) {
        mamba1_layer_split(c, ith, nth, l, hn, wscr);
        return;
    }
    const ym_model_t *m = c->model;
    const ym_config *cfg = &m->cfg;
    const ym_batch *b = c->batch;
    /* di: the scratch rows' stride; each layer serves L->d_inner <= di channels. */
    const int R = c->n_rows, dm = cfg->d_model, di = cfg->d_inner, N = cfg->d_state;
    const int K = cfg->d_conv, dtr = cfg->dt_rank, P = dtr + 2 * N;
    const int m0 = c->md0[ith], m1 = c->md1[ith];
    const int p0 = c->p0[ith], p1 = c->p1[ith];
    const int ad = 1; /* adapters: take the hooks (a batch without any runs the split above) */
    const ym_layer *L = &m->layers[l];
    const int nk = L->d_inner; /* channels this layer serves (all of them when dense) */
    const int c0 = c->ch0[(size_t)l * nth + ith], c1 = c->ch1[(size_t)l * nth + ith];
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
    const int fm = cfg->mixer_rms_eps > 0.0f; /* Falcon-Mamba */
    if (ad)
        hook_x_output(c, ith, l, xin, p0, p1, !fm);
    ym_pool_barrier(c->pool);
    if (fm) {
        /* Falcon-Mamba: weightless RMS norms on dt_lo, B and C of each row, rows split. The
         * adapters of x_proj apply before them (to its output), dt_proj's after them (to its
         * input, the normed dt_lo), as in transformers' FalconMambaMixer under PEFT. */
        for (int r = ith; r < R; r += nth) {
            float *o = c->dbc + (size_t)r * P;
            rms_plain(o, dtr, cfg->mixer_rms_eps);
            rms_plain(o + dtr, N, cfg->mixer_rms_eps);
            rms_plain(o + dtr + N, N, cfg->mixer_rms_eps);
        }
        ym_pool_barrier(c->pool);
        if (ad) {
            hook_dt_input(c, ith, l, p0, p1);
            ym_pool_barrier(c->pool);
        }
    }
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


/* ---- reference -------------------------------------------------------------------------
 * One token at a time, plain loops, libm, accumulation in double: obviously docs/ARCHITECTURE.md §3. */

static double dsilu(double v)
{
    return v / (1.0 + exp(-v));
}

/* sp: the profile's masks applied with the meaning docs/ARCHITECTURE.md §4 gives them, or NULL. */
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

const ym_layer_ops ym_mamba1_layer_ops = {
    .name = "mamba1",
    .mamba1_scratch = true,
    .ctx_init = mamba1_ctx_init,
    .layer = mamba1_layer,
    .ref_token = ref_token,
    .adapters = true,
};

/* Falcon-Mamba: the same layer, with weightless RMS norms on dt_lo, B and C (its config's
 * mixer_rms_eps > 0 turns them on) and the same adapter targets, dt_proj's hooks placed after
 * the norm. The Mamba-1 reference has no norms: its tests use the float64 fixtures. */
const ym_layer_ops ym_falcon_mamba_layer_ops = {
    .name = "falcon_mamba",
    .mamba1_scratch = true,
    .ctx_init = mamba1_ctx_init,
    .layer = mamba1_layer,
    .ref_token = NULL,
    .adapters = true,
};
