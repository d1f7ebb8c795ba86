/* engine/mamba2.c - the Mamba-2 (SSD) layer behind the layer interface of engine/layer.h.
 *
 * Per layer, for every row of the ragged batch (shapes: H heads of P channels, d_inner = H*P,
 * G groups of N state entries, conv over conv_ch = d_inner + 2*G*N channels x|B|C):
 *   [z | x B C | dt] = in_proj(rmsnorm(h))        one ym_matmul, split by output columns
 *   x B C := silu(causal_conv(x B C))               split by conv channels, per sequence
 *   dt := clamp(softplus(dt + dt_bias), time_step_limit)          split by rows
 *   y := SSD(x, dt, A, B, C) + D x                  split by heads, per sequence: a sequence
 *        of one row takes the decode step (ym_ssd_step_f32), a longer one the chunked SSD
 *        prefill (ym_ssd_prefill_f32, chunks of M2_CHUNK tokens)
 *   y := gated RMSNorm per group (y * silu(z))      split by rows
 *   h += out_proj(y)                                split by output rows (d_model)
 * with a barrier between the steps, so 5 per layer. Adapters (PEFT LoRA and IA³ on in_proj
 * and out_proj) are applied unmerged on the columns or rows each thread owns, as in Mamba-1.
 *
 * Owns: its scratch in c->fam (ctx_init): [z|xBC|dt] [R, n_in], y [R, d_inner] and each
 * thread's prefill work; its slices and the chunk length in c->fam_slices.
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
    size_t work_n; /* prefill scratch per thread, for chunks up to M2_CHUNK_MAX */
} m2dims;

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
    d.work_n = (ym_ssd_prefill_work(&sd, M2_CHUNK_MAX) + 15) / 16 * 16;
    return d;
}

static ym_err mamba2_ctx_init(ym_ctx_t *c)
{
    m2dims d = dims_of(c);
    int nth = c->n_threads;
    size_t n = (size_t)d.R * d.n_in + (size_t)d.R * d.Di + d.work_n * (size_t)nth;
    size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
    if ((c->fam = aligned_alloc(64, bytes)) == NULL ||
        (c->fam_slices = calloc((size_t)nth * 6 + 1, sizeof(int))) == NULL)
        return YM_ENOMEM;
    int *s = c->fam_slices;
    s[6 * nth] = chunk_len();
    ym__split(d.n_in, nth, ALIGN_CH, s, s + nth);            /* in_proj columns */
    ym__split(d.cd, nth, ALIGN_CH, s + 2 * nth, s + 3 * nth); /* conv channels */
    ym__split(d.H, nth, 1, s + 4 * nth, s + 5 * nth);        /* heads */
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

static void mamba2_layer(ym_ctx_t *c, int ith, int nth, int l, float *hn, float *wscr)
{
    const ym_model_t *m = c->model;
    const ym_config *cfg = &m->cfg;
    const ym_batch *b = c->batch;
    const ym_layer *L = &m->layers[l];
    const m2dims d = dims_of(c);
    const int R = c->n_rows, Di = d.Di, n_in = d.n_in, cd = d.cd, GN = d.GN, dm = d.dm;
    const ym_ssd_dims sd = {d.H, d.P, d.G, d.N};
    const int *s = c->fam_slices;
    const int n0 = s[ith], n1 = s[nth + ith], k0 = s[2 * nth + ith], k1 = s[3 * nth + ith];
    const int h0 = s[4 * nth + ith], h1 = s[5 * nth + ith];
    const int m0 = c->md0[ith], m1 = c->md1[ith];
    float *zx = c->fam, *y = zx + (size_t)d.R * n_in;
    float *work = y + (size_t)d.R * Di + d.work_n * (size_t)ith;
    const int ad = b->adapters != NULL; /* adapters: take the hooks */

    /* hn = rmsnorm(h) * norm.weight (every thread, all rows); [z|xBC|dt] = in_proj(hn) */
    norm_rows(hn, c->h, L->norm, dm, cfg->norm_eps, NULL, R);
    if (ad)
        hook_in_input(b, l, hn, dm);
    MATMUL(zx + n0, n_in, hn, dm, R, &L->in_proj, n0, n1, 0.0f);
    if (L->in_proj_b != NULL)
        add_bias(zx, n_in, R, L->in_proj_b, n0, n1);
    if (ad)
        hook_in_output(b, l, zx, n_in, hn, dm, n0, n1);
    ym_pool_barrier(c->pool);
    /* xBC = silu(causal_conv(xBC)), this thread's conv channels, per sequence */
    for (int sq = 0; sq < b->n_seq; sq++) {
        int r0 = b->seq_start[sq], r1 = b->seq_start[sq + 1];
        ym_conv_silu_f32(zx + (size_t)r0 * n_in + Di, n_in, r1 - r0,
                         ym_state_conv(b->states[sq], l), L->conv_w, L->conv_b, d.K, k0, k1);
    }
    for (int r = ith; r < R; r += nth)
        ym_ssd_dt_f32(zx + (size_t)r * n_in + Di + cd, n_in, 1, L->dt_bias, d.H, cfg->dt_min,
                      cfg->dt_max);
    ym_pool_barrier(c->pool);
    /* y = SSD(x, dt, A, B, C) + D x, this thread's heads */
    for (int sq = 0; sq < b->n_seq && h0 < h1; sq++) {
        int r0 = b->seq_start[sq], T = b->seq_start[sq + 1] - r0;
        float *st = ym_state_ssm(b->states[sq], l);
        const float *xr = zx + (size_t)r0 * n_in + Di;
        if (T == 1)
            ym_ssd_step_f32(y + (size_t)r0 * Di, st, xr, xr + cd, L->A, L->D, xr + Di,
                            xr + Di + GN, &sd, h0, h1);
        else
            ym_ssd_prefill_f32(y + (size_t)r0 * Di, Di, st, xr, n_in, xr + cd, n_in, xr + Di,
                               xr + Di + GN, n_in, L->A, L->D, T, &sd, s[6 * nth], h0, h1, work);
    }
    ym_pool_barrier(c->pool);
    /* y = gated RMSNorm per group of y * silu(z), rows split (adapters: then out_proj's IA³
     * input scale, g_in ⊙ y) */
    for (int sq = 0; sq < b->n_seq; sq++) {
        const ym_adapt_proj *a = ad ? aproj(b, sq, l, YM_PROJ_OUT) : NULL;
        for (int r = b->seq_start[sq]; r < b->seq_start[sq + 1]; r++) {
            if (r % nth != ith)
                continue;
            ym_gated_rmsnorm_f32(y + (size_t)r * Di, Di, y + (size_t)r * Di, Di,
                                 zx + (size_t)r * n_in, n_in, 1, L->gnorm, Di, d.G,
                                 cfg->gated_norm_eps);
            if (a != NULL && a->g_in != NULL)
                ym_scale_rows_f32(y + (size_t)r * Di, Di, 1, a->g_in, 0, Di);
        }
    }
    ym_pool_barrier(c->pool);
    /* h = h + out_proj(y), split by output rows; with an IA³ output scale in the batch,
     * out_proj's output goes through c->ob so that the scale does not touch h */
    if (ad && any_out_scale(b, l)) {
        MATMUL(c->ob + m0, dm, y, Di, R, &L->out_proj, m0, m1, 0.0f);
        if (L->out_proj_b != NULL)
            add_bias(c->ob, dm, R, L->out_proj_b, m0, m1);
        hook_out_output(b, l, c->ob, dm, y, Di, 1, m0, m1);
        for (int r = 0; r < R; r++)
            for (int j = m0; j < m1; j++)
                c->h[(size_t)r * dm + j] += c->ob[(size_t)r * dm + j];
    } else {
        MATMUL(c->h + m0, dm, y, Di, R, &L->out_proj, m0, m1, 1.0f);
        if (L->out_proj_b != NULL)
            add_bias(c->h, dm, R, L->out_proj_b, m0, m1);
        if (ad)
            hook_out_output(b, l, c->h, dm, y, Di, 0, m0, m1);
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
