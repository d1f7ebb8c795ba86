/* engine/mamba2.c - the Mamba-2 (SSD) layer behind the layer interface of engine/layer.h.
 *
 * Per layer, for every row of the ragged batch (shapes: H heads of P channels, d_inner = H*P,
 * G groups of N state entries, conv over conv_ch = d_inner + 2*G*N channels x|B|C):
 *   [z | x B C | dt] = in_proj(rmsnorm(h))
 *   x B C := silu(causal_conv(x B C))
 *   dt := clamp(softplus(dt + dt_bias), time_step_limit)
 *   y := SSD(x, dt, A, B, C) + D x          a sequence of one row takes the decode step
 *        (ym_ssd_step_f32), a longer one the chunked SSD prefill (ym_ssd_prefill_f32, chunks
 *        of M2_CHUNK tokens)
 *   y := gated RMSNorm per group (y * silu(z))
 *   h += out_proj(y)
 * Work split, three barriers per layer (each costs a wait for the slowest thread, which on a
 * loaded machine is a descheduled one): each thread owns a range of heads, and computes for
 * it the in_proj columns of those heads' x and dt, the conv of those x channels and the dt
 * softplus, with no barrier between them (one thread produces and consumes them); it also
 * computes a slice of z's columns and of B|C's (with their conv). Barrier 1. Then the SSD of
 * its heads, the gate y * silu(z) of their channels and their partial sums of squares per
 * row and group. Barrier 2. Then every thread scales all rows of y by the groups' norms into
 * its own buffer (a multiply per element, repeated by each thread: cheaper than another
 * barrier) and computes its rows of out_proj from it into the residual. Barrier 3, before the
 * next layer's norm reads h. Adapters (PEFT LoRA and IA³ on in_proj and out_proj) are applied
 * unmerged on the columns or rows each thread owns, as in Mamba-1.
 * A model served under a head profile (engine/sparse.h) runs the same steps with each layer's
 * own widths: its kept heads (L->ssd_plan) set d_inner, in_proj's row layout and the head and z
 * slices (split per layer), the SSD follows the plan's live entries (ym_ssd_step_sparse_f32,
 * ym_ssd_prefill_sparse_f32) and the gated norm its groups; a layer with no head left adds
 * only out_proj's bias. The scratch is laid out for the dense widths, which bound every layer's.
 *
 * Owns: its scratch in c->fam (ctx_init): [z|xBC|dt] [R, n_in], y [R, d_inner], the partial
 * sums [n_threads][R, G], and per thread a block that is the SSD prefill's work during the
 * SSD and the normed y [R, d_inner] after it; its slices and the chunk length in
 * c->fam_slices.
 * Runs: on every thread of the context's pool, inside ym_forward (engine/forward.c).
 * Must not: allocate in the layer, or touch a head's state from another thread than its own. */
#include <stdlib.h>
#include <string.h>

#include "engine/adapt.h"
#include "engine/layer.h"
#include "engine/ssd.h"

/* The SSD prefill's chunk length on the CPU: the chunk's C.B^T and decay mask are Q x Q per
 * head; 16 was the fastest for the mamba2-130m shape (docs/BENCHMARKS.md). YUNMIN_SSD_CHUNK
 * (1..256, read once per context) overrides it, for measuring. */
#define M2_CHUNK 16
#define M2_CHUNK_MAX 256

static int chunk_len(void)
{
    const char *e = getenv("YUNMIN_SSD_CHUNK");
    long v = e != NULL ? strtol(e, NULL, 10) : 0;
    return v >= 1 && v <= M2_CHUNK_MAX ? (int)v : M2_CHUNK;
}

typedef struct m2dims {
    int R, dm, Di, H, P, G, N, K, GN, cd, n_in;
    size_t work_n; /* per thread: the SSD prefill's work (chunks up to M2_CHUNK_MAX), then
                      the normed y [R, Di] */
} m2dims;

/* 1 when the context's model is served under a head profile (its scratch then holds the
 * sparse prefill's gathered B and C too). */
static int is_sparse(const ym_ctx_t *c)
{
    return ym_model_is_sparse(c->model);
}

static m2dims dims_of(const ym_ctx_t *c)
{
    const ym_config *cfg = &c->model->cfg;
    m2dims d;
    d.R = c->n_rows_max;
    d.dm = cfg->d_model;
    d.Di = cfg->d_inner;
    d.H = cfg->n_head;
    d.P = cfg->head_dim;
    d.G = cfg->n_group;
    d.N = cfg->d_state;
    d.K = cfg->d_conv;
    d.GN = d.G * d.N;
    d.cd = d.Di + 2 * d.GN;
    d.n_in = d.Di + d.cd + d.H;
    ym_ssd_dims sd = {d.H, d.P, d.G, d.N};
    size_t w = is_sparse(c) ? ym_ssd_prefill_sparse_work(&sd, M2_CHUNK_MAX)
                                  : ym_ssd_prefill_work(&sd, M2_CHUNK_MAX);
    size_t yn = (size_t)d.R * d.Di;
    d.work_n = ((w > yn ? w : yn) + 15) / 16 * 16;
    return d;
}

/* c->fam_slices, per thread ith of nth (its z columns are the context's channel slices of
 * the layer, c->ch0 / c->ch1, since z has a layer's d_inner columns): */
#define S_B0 0 /* [b0, b1): its B|C channels, of 2*G*N      */
#define S_B1 1
#define S_H0 2 /* [h0, h1): its heads                       */
#define S_H1 3
#define S_N 4 /* slices; then one int: the chunk length    */

static ym_err mamba2_ctx_init(ym_ctx_t *c)
{
    m2dims d = dims_of(c);
    int nth = c->n_threads;
    size_t n = (size_t)d.R * d.n_in + (size_t)d.R * d.Di + (size_t)nth * d.R * d.G +
               d.work_n * (size_t)nth;
    size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
    if ((c->fam = aligned_alloc(64, bytes)) == NULL ||
        (c->fam_slices = calloc((size_t)nth * S_N + 1, sizeof(int))) == NULL)
        return YM_ENOMEM;
    int *s = c->fam_slices;
    s[S_N * nth] = chunk_len();
    ym__split(2 * d.GN, nth, ALIGN_CH, s + S_B0 * nth, s + S_B1 * nth);
    ym__split(d.H, nth, 1, s + S_H0 * nth, s + S_H1 * nth);
    return YM_OK;
}

/* ---- adapters (engine/adapt.h): PEFT LoRA / IA³ on in_proj and out_proj, unmerged ---------- */

static inline const ym_adapt_proj *aproj(const ym_batch *b, int sq, int l, ym_proj p)
{
    const ym_adapt *a = b->adapters != NULL ? b->adapters[sq] : NULL;
    return a != NULL ? &a->proj[(size_t)l * YM_PROJ_N + p] : NULL;
}

/* in_proj: its input scale on this thread's own hn (all rows) */
static void hook_in_input(const ym_batch *b, int l, float *hn, int dm)
{
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, YM_PROJ_IN);
        int r0 = b->seq_start[sq], r1 = b->seq_start[sq + 1];
        if (a != NULL && a->g_in != NULL)
            ym_scale_rows_f32(hn + (size_t)r0 * dm, dm, r1 - r0, a->g_in, 0, dm);
    }
}

/* in_proj output columns [n0, n1) of [z|xBC|dt]: LoRA, then the IA³ output scale (which
 * scales the bias too, as PEFT's base(x) * g) */
static void hook_in_output(const ym_batch *b, int l, float *zx, int n_in, const float *hn,
                           int dm, int n0, int n1)
{
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, YM_PROJ_IN);
        int r0 = b->seq_start[sq], T = b->seq_start[sq + 1] - r0;
        if (a == NULL)
            continue;
        float *o = zx + (size_t)r0 * n_in;
        ym_lora_rows_f32(o, n_in, hn + (size_t)r0 * dm, dm, T, a->At, a->r, dm, a->Bt, n_in, n0,
                         n1);
        if (a->g_out != NULL)
            ym_scale_rows_f32(o, n_in, T, a->g_out, n0, n1);
    }
}

/* out_proj output rows [m0, m1) into o ([R, d_model]): LoRA, and the IA³ output scale when o
 * is the separate buffer (scale) */
static void hook_out_output(const ym_batch *b, int l, float *o, int dm, const float *y, int Di,
                            int scale, int m0, int m1)
{
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, YM_PROJ_OUT);
        int r0 = b->seq_start[sq], T = b->seq_start[sq + 1] - r0;
        if (a == NULL)
            continue;
        ym_lora_rows_f32(o + (size_t)r0 * dm, dm, y + (size_t)r0 * Di, Di, T, a->At, a->r, Di,
                         a->Bt, dm, m0, m1);
        if (scale && a->g_out != NULL)
            ym_scale_rows_f32(o + (size_t)r0 * dm, dm, T, a->g_out, m0, m1);
    }
}

static int any_out_scale(const ym_batch *b, int l)
{
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, YM_PROJ_OUT);
        if (a != NULL && a->g_out != NULL)
            return 1;
    }
    return 0;
}

/* in_proj output columns [n0, n1) for every row (bias, adapters): a no-op when empty. */
static void in_cols(ym_ctx_t *c, int l, float *zx, int n_in, const float *hn, int n0, int n1,
                    float *wscr)
{
    const ym_layer *L = &c->model->layers[l];
    const int R = c->n_rows, dm = c->model->cfg.d_model;
    if (n1 <= n0)
        return;
    MATMUL(zx + n0, n_in, hn, dm, R, &L->in_proj, n0, n1, 0.0f);
    if (L->in_proj_b != NULL)
        add_bias(zx, n_in, R, L->in_proj_b, n0, n1);
    if (c->batch->adapters != NULL)
        hook_in_output(c->batch, l, zx, n_in, hn, dm, n0, n1);
}

/* silu(causal_conv) of the x|B|C channels [k0, k1) (0 = x's first), every sequence. */
static void conv_cols(ym_ctx_t *c, int l, float *zx, int n_in, int Di, int K, int k0, int k1)
{
    const ym_batch *b = c->batch;
    const ym_layer *L = &c->model->layers[l];
    for (int sq = 0; sq < b->n_seq && k0 < k1; sq++) {
        int r0 = b->seq_start[sq], r1 = b->seq_start[sq + 1];
        ym_conv_silu_f32(zx + (size_t)r0 * n_in + Di, n_in, r1 - r0,
                         ym_state_conv(b->states[sq], l), L->conv_w, L->conv_b, K, k0, k1);
    }
}

static void mamba2_layer(ym_ctx_t *c, int ith, int nth, int l, float *hn, float *wscr)
{
    const ym_model_t *m = c->model;
    const ym_config *cfg = &m->cfg;
    const ym_batch *b = c->batch;
    const ym_layer *L = &m->layers[l];
    const ym_ssd_plan *pl = L->ssd_plan; /* served sparse: kept heads, live entries */
    const m2dims d = dims_of(c);
    const int P = d.P, G = d.G, GN = d.GN, dm = d.dm;
    /* this layer's served widths: the dense ones, or the kept heads' (the buffers below are
     * laid out for the dense widths, which bound them) */
    const int H = pl != NULL ? pl->n_head : d.H, Di = H * P, cd = Di + 2 * GN;
    const int n_in = Di + cd + H, R = c->n_rows;
    const ym_ssd_dims sd = {d.H, P, G, d.N};
    const int *s = c->fam_slices;
    const int z0 = c->ch0[(size_t)l * nth + ith], z1 = c->ch1[(size_t)l * nth + ith];
    const int b0 = s[S_B0 * nth + ith], b1 = s[S_B1 * nth + ith];
    int h0 = s[S_H0 * nth + ith], h1 = s[S_H1 * nth + ith];
    const int m0 = c->md0[ith], m1 = c->md1[ith];
    float *zx = c->fam, *y = zx + (size_t)d.R * d.n_in;
    float *ss = y + (size_t)d.R * d.Di; /* [nth][R, G] */
    float *work = ss + (size_t)nth * d.R * G + d.work_n * (size_t)ith;
    const int ad = b->adapters != NULL; /* adapters: take the hooks */

    if (pl != NULL) {
        ym__slice(H, nth, 1, ith, &h0, &h1);
        if (H == 0) { /* every head dropped: the mixer's output is out_proj's bias (an IA³
                       * output scale's g_out ⊙ bias for a sequence whose adapter has one;
                       * LoRA adds nothing to a zero input) */
            for (int sq = 0; sq < b->n_seq && L->out_proj_b != NULL; sq++) {
                const ym_adapt_proj *a = ad ? aproj(b, sq, l, YM_PROJ_OUT) : NULL;
                int r0 = b->seq_start[sq], r1 = b->seq_start[sq + 1];
                add_bias(c->h + (size_t)r0 * dm, dm, r1 - r0,
                         a != NULL && a->b_out != NULL ? a->b_out : L->out_proj_b, m0, m1);
            }
            ym_pool_barrier(c->pool);
            return;
        }
    }
    /* hn = rmsnorm(h) * norm.weight (every thread, all rows) */
    norm_rows(hn, c->h, L->norm, dm, cfg->norm_eps, NULL, R);
    if (ad)
        hook_in_input(b, l, hn, dm);
    /* [z | x B C | dt] = in_proj(hn): this thread's z slice, its heads' x and dt, its B|C
     * slice; then the conv of the x|B|C channels it made, and its heads' dt */
    in_cols(c, l, zx, n_in, hn, z0, z1, wscr);
    in_cols(c, l, zx, n_in, hn, Di + h0 * P, Di + h1 * P, wscr);
    in_cols(c, l, zx, n_in, hn, 2 * Di + b0, 2 * Di + b1, wscr);
    in_cols(c, l, zx, n_in, hn, Di + cd + h0, Di + cd + h1, wscr);
    conv_cols(c, l, zx, n_in, Di, d.K, h0 * P, h1 * P);
    conv_cols(c, l, zx, n_in, Di, d.K, Di + b0, Di + b1);
    if (h0 < h1)
        ym_ssd_dt_f32(zx + Di + cd + h0, n_in, R, L->dt_bias + h0, h1 - h0, cfg->dt_min,
                      cfg->dt_max);
    ym_pool_barrier(c->pool);
    /* y = SSD(x, dt, A, B, C) + D x, this thread's heads; then v = y * silu(z) on their
     * channels and the partial sums of v^2 per row and group */
    for (int sq = 0; sq < b->n_seq && h0 < h1; sq++) {
        int r0 = b->seq_start[sq], T = b->seq_start[sq + 1] - r0;
        float *st = ym_state_ssm(b->states[sq], l);
        const float *xr = zx + (size_t)r0 * n_in + Di;
        if (pl != NULL && T == 1)
            ym_ssd_step_sparse_f32(y + (size_t)r0 * Di, st, xr, xr + cd, L->A, L->D, xr + Di,
                                   xr + Di + GN, &sd, pl, h0, h1, work);
        else if (pl != NULL)
            ym_ssd_prefill_sparse_f32(y + (size_t)r0 * Di, Di, st, xr, n_in, xr + cd, n_in,
                                      xr + Di, xr + Di + GN, n_in, L->A, L->D, T, &sd, pl,
                                      s[S_N * nth], h0, h1, work);
        else if (T == 1)
            ym_ssd_step_f32(y + (size_t)r0 * Di, st, xr, xr + cd, L->A, L->D, xr + Di,
                            xr + Di + GN, &sd, h0, h1);
        else
            ym_ssd_prefill_f32(y + (size_t)r0 * Di, Di, st, xr, n_in, xr + cd, n_in, xr + Di,
                               xr + Di + GN, n_in, L->A, L->D, T, &sd, s[S_N * nth], h0, h1,
                               work);
    }
    if (pl != NULL)
        ym_gate_sumsq_sparse_f32(y, Di, zx, n_in, R, pl, P, G, h0 * P, h1 * P,
                                 ss + (size_t)ith * d.R * G);
    else
        ym_gate_sumsq_f32(y, Di, zx, n_in, R, Di, G, h0 * P, h1 * P, ss + (size_t)ith * d.R * G);
    ym_pool_barrier(c->pool);
    /* yn = v / rms per group * norm.weight, all rows, into this thread's own buffer (the
     * prefill work is done); adapters: then out_proj's IA³ input scale, g_in ⊙ yn */
    float *yn = work;
    if (pl != NULL)
        ym_group_scale_sparse_f32(yn, Di, y, Di, R, ss, nth, (size_t)d.R * G, L->gnorm, pl, P, G,
                                  cfg->gated_norm_eps);
    else
        ym_group_scale_f32(yn, Di, y, Di, R, ss, nth, (size_t)d.R * G, L->gnorm, Di, G,
                           cfg->gated_norm_eps);
    for (int sq = 0; ad && sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = aproj(b, sq, l, YM_PROJ_OUT);
        int r0 = b->seq_start[sq], T = b->seq_start[sq + 1] - r0;
        if (a != NULL && a->g_in != NULL)
            ym_scale_rows_f32(yn + (size_t)r0 * Di, Di, T, a->g_in, 0, Di);
    }
    /* h = h + out_proj(yn), split by output rows; with an IA³ output scale in the batch,
     * out_proj's output goes through c->ob so that the scale does not touch h */
    if (ad && any_out_scale(b, l)) {
        MATMUL(c->ob + m0, dm, yn, Di, R, &L->out_proj, m0, m1, 0.0f);
        if (L->out_proj_b != NULL)
            add_bias(c->ob, dm, R, L->out_proj_b, m0, m1);
        hook_out_output(b, l, c->ob, dm, yn, Di, 1, m0, m1);
        for (int r = 0; r < R; r++)
            for (int j = m0; j < m1; j++)
                c->h[(size_t)r * dm + j] += c->ob[(size_t)r * dm + j];
    } else {
        MATMUL(c->h + m0, dm, yn, Di, R, &L->out_proj, m0, m1, 1.0f);
        if (L->out_proj_b != NULL)
            add_bias(c->h, dm, R, L->out_proj_b, m0, m1);
        if (ad)
            hook_out_output(b, l, c->h, dm, yn, Di, 0, m0, m1);
    }
    ym_pool_barrier(c->pool);
}

const ym_layer_ops ym_mamba2_layer_ops = {
    .name = "mamba2",
    .ctx_init = mamba2_ctx_init,
    .layer = mamba2_layer,
    .ref_token = NULL, /* tested against the float64 fixtures (tests/fixtures/mamba2) */
    .adapters = true,
};
