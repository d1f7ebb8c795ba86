/* engine/sparse.c - builds the served layout of a sparse model from a dense model and a
 * sparsity profile (docs/ARCHITECTURE.md §4): a Mamba-1 model's kept channels in scan order with
 * masked scan plans, or a Mamba-2 model's kept heads with their SSD plans; and reads
 * per-channel state energies in either Mamba-1 layout.
 *
 * Owns: the pruned copies of every channel- (or head-) indexed tensor and the masked scan or
 * SSD plans (all on the new model's owned list), and a reference to the dense model for what stays shared.
 * Thread: runs where models load (CLI thread, libuv pool); the result is immutable.
 * Must not: change the dense model, or keep a pointer into the profile (it may be freed right
 * after). The forward pass (engine/forward.c) needs no other change than reading each layer's
 * own d_inner and scan plan. */
#include "engine/sparse.h"

#include <stdlib.h>
#include <string.h>

#include "engine/model_int.h"
#include "engine/ssd.h"

int ym_model_is_sparse(const ym_model_t *m)
{
    return m->base != NULL;
}

/* n floats owned by m, or NULL; n may be 0 (a layer with no channel left). */
static float *take(ym_model_t *m, size_t n)
{
    return ym__model_alloc(m, n > 0 ? n : 1);
}

/* The scan plan of one layer: blocks of YM_SCAN_BLOCK served channels, each with the union of
 * its channels' live entries, and A gathered into the blocked layout. */
static ym_err build_plan(ym_model_t *m, const ym_sparsity *sp, int l, const float *A_dense,
                         ym_scan_plan **out)
{
    const ym_sparsity_layer *S = &sp->layers[l];
    const int nk = S->n_kept, N = sp->d_state, nb = (nk + YM_SCAN_BLOCK - 1) / YM_SCAN_BLOCK;
    /* Count first: total union entries and lanes. */
    int64_t n_u_total = 0, lanes = 0;
    for (int b = 0; b < nb; b++) {
        int d0 = b * YM_SCAN_BLOCK, w = nk - d0 < YM_SCAN_BLOCK ? nk - d0 : YM_SCAN_BLOCK;
        for (int n = 0; n < N; n++) {
            int any = 0;
            for (int j = 0; j < w && !any; j++)
                any = S->state_logits[(size_t)S->kept[d0 + j] * N + n] > 0.0f;
            n_u_total += any;
            lanes += any ? w : 0;
        }
    }
    size_t bytes = sizeof(ym_scan_plan) + (size_t)nb * sizeof(ym_scan_block) +
                   (size_t)n_u_total * (sizeof(int32_t) + sizeof(uint16_t)) + 64;
    char *mem = (char *)take(m, (bytes + sizeof(float) - 1) / sizeof(float));
    float *Ab = take(m, (size_t)lanes);
    if (mem == NULL || Ab == NULL)
        return YM_ENOMEM;
    ym_scan_plan *pl = (ym_scan_plan *)mem;
    ym_scan_block *blocks = (ym_scan_block *)(pl + 1);
    int32_t *nidx = (int32_t *)(blocks + nb);
    uint16_t *lmask = (uint16_t *)(nidx + n_u_total);
    int64_t off = 0, live = 0;
    int64_t u_at = 0;
    for (int b = 0; b < nb; b++) {
        ym_scan_block *B = &blocks[b];
        B->d0 = b * YM_SCAN_BLOCK;
        B->w = nk - B->d0 < YM_SCAN_BLOCK ? nk - B->d0 : YM_SCAN_BLOCK;
        B->off = off;
        B->n_idx = nidx + u_at;
        B->lanes = lmask + u_at;
        int u = 0;
        for (int n = 0; n < N; n++) {
            unsigned bits = 0;
            for (int j = 0; j < B->w; j++) {
                int d = S->kept[B->d0 + j];
                if (S->state_logits[(size_t)d * N + n] > 0.0f)
                    bits |= 1u << j;
            }
            if (bits == 0)
                continue;
            nidx[u_at + u] = n;
            lmask[u_at + u] = (uint16_t)bits;
            for (int j = 0; j < B->w; j++) {
                int d = S->kept[B->d0 + j];
                Ab[off + (int64_t)u * B->w + j] =
                    (bits >> j) & 1 ? A_dense[(size_t)d * N + n] : 0.0f;
                live += (bits >> j) & 1;
            }
            u++;
        }
        B->n_u = u;
        u_at += u;
        off += (int64_t)u * B->w;
    }
    pl->n_blocks = nb;
    pl->blocks = blocks;
    pl->A = Ab;
    pl->n_lanes = off;
    pl->n_live = live;
    *out = pl;
    return YM_OK;
}

/* dst[p, :] = src[kept[p], :] for rows of width w. */
static void gather_rows(float *dst, const float *src, const int32_t *kept, int nk, size_t w)
{
    for (int p = 0; p < nk; p++)
        memcpy(dst + (size_t)p * w, src + (size_t)kept[p] * w, w * sizeof(float));
}

/* A new block of m holding src's rows kept[0..nk) of width w (gather_rows), or NULL when m
 * cannot grow. */
static float *take_rows(ym_model_t *m, const float *src, const int32_t *kept, int nk, size_t w)
{
    float *t = take(m, (size_t)nk * w);
    if (t != NULL)
        gather_rows(t, src, kept, nk, w);
    return t;
}

/* The served model's counts: its parameters, and the bytes a token reads (floats plus the
 * matrices' own bytes) and holds (an untied embedding besides). */
static void set_sizes(ym_model_t *m, size_t params, size_t floats, size_t wbytes)
{
    m->n_params = params;
    m->weight_bytes = floats * sizeof(float) + wbytes;
    m->resident_bytes =
        m->weight_bytes + (m->cfg.tie_embeddings ? 0 : ym_weight_bytes(&m->embed));
}

/* Into data [n_out, n_in] (and sc [n_out] for int8), in W's type: rows row_off + keep[p]
 * (keep NULL: row_off + p) of W, and of those the columns cols[0..n_in) (NULL: all). int8
 * rows keep their scale, so the pruned values are the very same. */
static ym_err gather_into(const ym_weight *W, const int32_t *keep, int n_out, int row_off,
                          const int32_t *cols, int n_in, float *tmp, char *data, float *sc)
{
    const size_t es = ym_wtype_size(W->type);
    for (int p = 0; p < n_out; p++) {
        int r = row_off + (keep != NULL ? keep[p] : p);
        char *dst = data + (size_t)p * n_in * es;
        if (cols == NULL) {
            memcpy(dst, (const char *)W->data + (size_t)r * W->n_cols * es, (size_t)n_in * es);
            if (sc != NULL)
                sc[p] = W->scale[r];
            continue;
        }
        for (int j = 0; j < n_in; j++)
            tmp[j] = ym_weight_at(W, r, cols[j]);
        if (ym_weight_convert(W->type, tmp, (size_t)n_in, 1, n_in, dst, sc != NULL ? sc + p : NULL,
                              sc != NULL ? &W->scale[r] : NULL) != YM_OK)
            return YM_EINVAL;
    }
    return YM_OK;
}

/* A new weight in m: gather_into of all n_out rows. */
static ym_err gather_w(ym_model_t *m, const ym_weight *W, int n_out, const int32_t *cols, int n_in,
                       float *tmp, ym_weight *out)
{
    const size_t es = ym_wtype_size(W->type);
    char *data = (char *)take(m, ((size_t)n_out * n_in * es + 3) / 4);
    float *sc = W->type == YM_WT_INT8 ? take(m, (size_t)n_out) : NULL;
    if (data == NULL || (W->type == YM_WT_INT8 && sc == NULL))
        return YM_ENOMEM;
    *out = (ym_weight){W->type, n_out, n_in, data, sc};
    return gather_into(W, NULL, n_out, 0, cols, n_in, tmp, data, sc);
}

/* A new, empty sparse model over base (the shared tensors borrowed), or NULL
 * (Mamba-1 and Mamba-2 alike). */
static ym_model_t *sparse_shell(ym_model_t *base)
{
    ym_model_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->cfg = base->cfg;
    m->base = ym_model_ref(base);
    m->embed = base->embed;
    m->norm_f = base->norm_f;
    m->lm_head = base->lm_head;
    m->wtype = base->wtype;
    atomic_init(&m->refcount, 1);
    if ((m->layers = calloc((size_t)m->cfg.n_layer, sizeof(*m->layers))) == NULL) {
        ym_model_unref(m);
        return NULL;
    }
    return m;
}

/* ---- Mamba-2: a head profile -------------------------------------------------------------- */

/* Slots of a head with k live entries of N: k rounded up to 16 (whole SIMD widths, aligned
 * rows), unless that would pass N (small states: the padding would outgrow the saving). */
static int pad_slots(int k, int N)
{
    int kp = (k + 15) / 16 * 16;
    return kp <= N ? kp : k;
}

/* Layer L of m from the dense layer D under S (kept heads in their order; docs/ARCHITECTURE.md
 * §4): the kept heads' rows of in_proj's z, x and dt parts, B and C's rows whole; their conv
 * channels (and B, C's); dt_bias, A, D of the kept heads; the gated norm's weights and
 * out_proj's columns of their channels; the plan (ssd.h) of their groups and live entries.
 * idx: scratch of max(n_in, n_head * d_state) int32; tmp: of d_inner floats. */
static ym_err m2_layer(ym_model_t *m, const ym_layer *D, const ym_sparsity_layer *S,
                       ym_layer *L, int32_t *idx, float *tmp, size_t *params, size_t *floats,
                       size_t *wbytes)
{
    const ym_config *c = &m->cfg;
    const int dm = c->d_model, H = c->n_head, P = c->head_dim, G = c->n_group, N = c->d_state;
    const int K = c->d_conv, Di = c->d_inner, GN = G * N, per = H / G;
    const int hk = S->n_kept, dk = hk * P, cdk = dk + 2 * GN, nin = dk + cdk + hk;
    const int32_t *kh = S->kept; /* served head -> original head */
    L->d_inner = dk;
    L->norm = D->norm;
    L->out_proj_b = D->out_proj_b;
    L->x_proj = D->x_proj; /* empty for Mamba-2 */
    /* in_proj rows, dense index of each served row: [z | x | B C | dt] */
    for (int i = 0; i < hk; i++)
        for (int p = 0; p < P; p++) {
            idx[i * P + p] = kh[i] * P + p;           /* z */
            idx[dk + i * P + p] = Di + kh[i] * P + p; /* x */
        }
    for (int j = 0; j < 2 * GN; j++)
        idx[2 * dk + j] = 2 * Di + j; /* B, C */
    for (int i = 0; i < hk; i++)
        idx[2 * dk + 2 * GN + i] = 2 * Di + 2 * GN + kh[i]; /* dt */
    {
        const size_t es = ym_wtype_size(D->in_proj.type);
        char *d = (char *)take(m, ((size_t)nin * dm * es + 3) / 4);
        float *sc = D->in_proj.type == YM_WT_INT8 ? take(m, (size_t)nin) : NULL;
        if (d == NULL || (D->in_proj.type == YM_WT_INT8 && sc == NULL) ||
            gather_into(&D->in_proj, idx, nin, 0, NULL, dm, tmp, d, sc) != YM_OK)
            return YM_ENOMEM;
        L->in_proj = (ym_weight){D->in_proj.type, nin, dm, d, sc};
    }
    if (D->in_proj_b != NULL) {
        if ((L->in_proj_b = take_rows(m, D->in_proj_b, idx, nin, 1)) == NULL)
            return YM_ENOMEM;
    }
    /* conv channels: the kept heads' x channels, then B and C's (dense conv index) */
    for (int i = 0; i < dk + 2 * GN; i++)
        idx[i] = i < dk ? kh[i / P] * P + i % P : Di + (i - dk);
    if ((L->conv_w = take_rows(m, D->conv_w, idx, cdk, (size_t)K)) == NULL)
        return YM_ENOMEM;
    if (D->conv_b != NULL) {
        if ((L->conv_b = take_rows(m, D->conv_b, idx, cdk, 1)) == NULL)
            return YM_ENOMEM;
    }
    const float *ph[3] = {D->dt_bias, D->A, D->D};
    const float **dst[3] = {&L->dt_bias, &L->A, &L->D};
    for (int j = 0; j < 3; j++) {
        if ((*dst[j] = take_rows(m, ph[j], kh, hk, 1)) == NULL)
            return YM_ENOMEM;
    }
    /* the kept heads' channels: gated norm weights and out_proj's columns (idx[0, dk) still
     * holds them, from the conv step) */
    if ((L->gnorm = take_rows(m, D->gnorm, idx, dk, 1)) == NULL)
        return YM_ENOMEM;
    if (gather_w(m, &D->out_proj, dm, idx, dk, tmp, &L->out_proj) != YM_OK)
        return YM_ENOMEM;
    /* the plan: int32 arrays head, group [hk], gofs [G+1], i0 [hk+1], then idx [slots]: each
     * head's live entries padded with -1 to a multiple of 16 where that stays within N
     * (engine/ssd.h); when every entry of every kept head is live, no idx and the dense state
     * layout */
    int64_t live = 0, slots = 0;
    for (int i = 0; i < hk; i++) {
        int k = 0;
        for (int n = 0; n < N; n++)
            k += S->state_logits[(size_t)kh[i] * N + n] > 0.0f;
        live += k;
        slots += pad_slots(k, N);
    }
    const int all_live = live == (int64_t)hk * N;
    size_t n_int = 2 * (size_t)hk + (size_t)G + 1 + (size_t)hk + 1 + (all_live ? 0 : (size_t)slots);
    size_t bytes = sizeof(ym_ssd_plan) + n_int * sizeof(int32_t);
    ym_ssd_plan *pl = (ym_ssd_plan *)take(m, (bytes + sizeof(float) - 1) / sizeof(float));
    if (pl == NULL)
        return YM_ENOMEM;
    int32_t *head = (int32_t *)(pl + 1), *group = head + hk, *gofs = group + hk;
    int32_t *i0 = gofs + G + 1, *ix = i0 + hk + 1;
    for (int g = 0; g <= G; g++)
        gofs[g] = 0;
    i0[0] = 0;
    for (int i = 0; i < hk; i++) {
        head[i] = kh[i];
        group[i] = kh[i] / per;
        gofs[group[i] + 1]++;
        if (all_live) {
            i0[i + 1] = (i + 1) * N;
            continue;
        }
        int k = 0;
        for (int n = 0; n < N; n++)
            if (S->state_logits[(size_t)kh[i] * N + n] > 0.0f)
                ix[i0[i] + k++] = n;
        for (const int kp = pad_slots(k, N); k < kp; k++)
            ix[i0[i] + k] = -1;
        i0[i + 1] = i0[i] + k;
    }
    for (int g = 0; g < G; g++)
        gofs[g + 1] += gofs[g];
    *pl = (ym_ssd_plan){.n_head = hk,
                        .head = head,
                        .group = group,
                        .gofs = gofs,
                        .group_width = Di / G,
                        .i0 = i0,
                        .idx = all_live ? NULL : ix,
                        .n_state = (int64_t)i0[hk] * P};
    L->ssd_plan = pl;
    m->n_channels_kept += dk;
    m->n_states_live += live * P; /* state floats, as a Mamba-1 layer's (channel, n) pairs */
    m->n_scan_lanes += (int64_t)i0[hk] * P; /* slots computed, padding included */
    size_t lf = (size_t)dm + (D->in_proj_b ? (size_t)nin : 0) + (size_t)cdk * K +
                (D->conv_b ? (size_t)cdk : 0) + 3 * (size_t)hk + (size_t)dk +
                (D->out_proj_b ? (size_t)dm : 0);
    *params += lf + (size_t)nin * dm + (size_t)dm * dk;
    *floats += lf;
    *wbytes += ym_weight_bytes(&L->in_proj) + ym_weight_bytes(&L->out_proj);
    return YM_OK;
}

static ym_err new_sparse_mamba2(ym_model_t *base, const ym_sparsity *sp, ym_model_t **out,
                                ym_diag *diag)
{
    const ym_config *c = &base->cfg;
    const int dm = c->d_model, Di = c->d_inner, GN = c->n_group * c->d_state;
    const size_t n_idx = (size_t)(2 * Di + 2 * GN + c->n_head);
    ym_model_t *m = sparse_shell(base);
    int32_t *idx = malloc(sizeof(int32_t) * n_idx);
    float *tmp = malloc(sizeof(float) * (size_t)(dm > Di ? dm : Di));
    if (m == NULL || idx == NULL || tmp == NULL)
        goto oom;
    size_t floats = (size_t)dm, wbytes = ym_weight_bytes(&base->lm_head); /* norm_f, lm_head */
    size_t params = (size_t)c->n_vocab * dm * (c->tie_embeddings ? 1 : 2) + (size_t)dm;
    for (int l = 0; l < c->n_layer; l++)
        if (m2_layer(m, &base->layers[l], &sp->layers[l], &m->layers[l], idx, tmp, &params,
                     &floats, &wbytes) != YM_OK)
            goto oom;
    free(idx);
    free(tmp);
    set_sizes(m, params, floats, wbytes);
    *out = m;
    return YM_OK;
oom:
    free(idx);
    free(tmp);
    ym_model_unref(m);
    return ym_diag_set(diag, YM_ENOMEM, "out of memory building the sparse model");
}

ym_err ym_model_new_sparse(ym_model_t *base, const ym_sparsity *sp, ym_model_t **out,
                           ym_diag *diag)
{
    *out = NULL;
    if (base == NULL || sp == NULL)
        return ym_diag_set(diag, YM_EINVAL, "no model or no profile");
    if (ym_model_is_sparse(base))
        return ym_diag_set(diag, YM_EINVAL, "the model is already sparse");
    if (base->cfg.arch == YM_ARCH_FALCON_MAMBA)
        return ym_diag_set(diag, YM_EINVAL, "sparsity profiles run on Mamba-1 and Mamba-2 "
                           "models, not yet on %s", ym_arch_name(base->cfg.arch));
    ym_err err = ym_sparsity_check(sp, &base->cfg, diag);
    if (err != YM_OK)
        return err;
    if (base->cfg.arch == YM_ARCH_MAMBA2)
        return new_sparse_mamba2(base, sp, out, diag);
    ym_model_t *m = sparse_shell(base);
    if (m == NULL)
        return ym_diag_set(diag, YM_ENOMEM, "out of memory building the sparse model");
    float *tmp = NULL;
    const ym_config *c = &m->cfg;
    const int dm = c->d_model, di = c->d_inner, N = c->d_state, K = c->d_conv;
    const int dtr = c->dt_rank, P = dtr + 2 * N;
    if ((tmp = malloc(sizeof(float) * (size_t)(dm > di ? dm : di))) == NULL)
        goto oom;
    /* Bytes the forward reads per token: the shared tensors, then each layer's pruned ones
     * (floats: f32 tensors; wbytes: the matrices in their type). */
    size_t floats = (size_t)dm, wbytes = ym_weight_bytes(&base->lm_head); /* norm_f, lm_head */
    size_t params = (size_t)c->n_vocab * dm * (c->tie_embeddings ? 1 : 2) + (size_t)dm;
    for (int l = 0; l < c->n_layer; l++) {
        const ym_layer *D = &base->layers[l];
        const ym_sparsity_layer *S = &sp->layers[l];
        ym_layer *L = &m->layers[l];
        const int nk = S->n_kept;
        const int32_t *kept = S->kept;
        float *t;
        L->d_inner = nk;
        /* The served -> original channel map, for code that maps tensors indexed by original
         * channels (adapters). Kept in the model's owned float memory: same size and alignment. */
        int32_t *chmap = (int32_t *)take(m, (size_t)nk);
        if (chmap == NULL)
            goto oom;
        memcpy(chmap, kept, sizeof(int32_t) * (size_t)nk);
        L->channel = chmap;
        L->norm = D->norm;
        L->out_proj_b = D->out_proj_b;
        /* in_proj [2*nk, dm]: the kept rows of the x half, then those of the z half. */
        {
            const size_t es = ym_wtype_size(D->in_proj.type), hb = (size_t)nk * dm * es;
            char *d = (char *)take(m, (2 * hb + 3) / 4);
            float *sc = D->in_proj.type == YM_WT_INT8 ? take(m, 2 * (size_t)nk) : NULL;
            if (d == NULL || (D->in_proj.type == YM_WT_INT8 && sc == NULL) ||
                gather_into(&D->in_proj, kept, nk, 0, NULL, dm, tmp, d, sc) != YM_OK ||
                gather_into(&D->in_proj, kept, nk, di, NULL, dm, tmp, d + hb,
                            sc != NULL ? sc + nk : NULL) != YM_OK)
                goto oom;
            L->in_proj = (ym_weight){D->in_proj.type, 2 * nk, dm, d, sc};
        }
        if (D->in_proj_b != NULL) {
            if ((t = take(m, 2 * (size_t)nk)) == NULL)
                goto oom;
            gather_rows(t, D->in_proj_b, kept, nk, 1);
            gather_rows(t + nk, D->in_proj_b + di, kept, nk, 1);
            L->in_proj_b = t;
        }
        if ((L->conv_w = take_rows(m, D->conv_w, kept, nk, (size_t)K)) == NULL)
            goto oom;
        if (D->conv_b != NULL) {
            if ((L->conv_b = take_rows(m, D->conv_b, kept, nk, 1)) == NULL)
                goto oom;
        }
        if (gather_w(m, &D->x_proj, P, kept, nk, tmp, &L->x_proj) != YM_OK)
            goto oom;
        if ((L->dt_proj_w = take_rows(m, D->dt_proj_w, kept, nk, (size_t)dtr)) == NULL)
            goto oom;
        if ((L->dt_proj_b = take_rows(m, D->dt_proj_b, kept, nk, 1)) == NULL)
            goto oom;
        if ((L->A = take_rows(m, D->A, kept, nk, (size_t)N)) == NULL)
            goto oom;
        if ((L->D = take_rows(m, D->D, kept, nk, 1)) == NULL)
            goto oom;
        if (gather_w(m, &D->out_proj, dm, kept, nk, tmp, &L->out_proj) != YM_OK)
            goto oom;
        ym_scan_plan *pl;
        if (build_plan(m, sp, l, D->A, &pl) != YM_OK)
            goto oom;
        L->scan = pl;
        m->n_channels_kept += nk;
        m->n_states_live += pl->n_live;
        m->n_scan_lanes += pl->n_lanes;
        size_t lf = (size_t)dm + (D->in_proj_b ? 2 * (size_t)nk : 0) + (size_t)nk * K +
                    (D->conv_b ? (size_t)nk : 0) + (size_t)nk * dtr + (size_t)nk + (size_t)nk +
                    (D->out_proj_b ? (size_t)dm : 0);
        size_t lw = 2 * (size_t)nk * dm + (size_t)P * nk + (size_t)dm * nk;
        params += lf + lw + (size_t)nk * N;
        floats += lf + (size_t)pl->n_lanes; /* the scan reads blocked A, not A */
        wbytes += ym_weight_bytes(&L->in_proj) + ym_weight_bytes(&L->x_proj) +
                  ym_weight_bytes(&L->out_proj);
    }
    free(tmp);
    tmp = NULL;
    set_sizes(m, params, floats, wbytes);
    *out = m;
    return YM_OK;
oom:
    free(tmp);
    ym_model_unref(m);
    return ym_diag_set(diag, YM_ENOMEM, "out of memory building the sparse model");
}

void ym_model_state_energy(const ym_model_t *m, int l, const float *ssm, double *e)
{
    const ym_layer *L = &m->layers[l];
    const int N = m->cfg.d_state;
    if (L->scan == NULL) {
        for (int d = 0; d < L->d_inner; d++) {
            double acc = 0;
            for (int n = 0; n < N; n++)
                acc += (double)ssm[(size_t)d * N + n] * ssm[(size_t)d * N + n];
            e[d] = acc;
        }
        return;
    }
    for (int b = 0; b < L->scan->n_blocks; b++) {
        const ym_scan_block *B = &L->scan->blocks[b];
        for (int j = 0; j < B->w; j++) {
            double acc = 0;
            for (int u = 0; u < B->n_u; u++) {
                double v = ssm[B->off + (int64_t)u * B->w + j];
                acc += v * v;
            }
            e[B->d0 + j] = acc;
        }
    }
}

void ym_model_state_entries(const ym_model_t *m, int l, const float *ssm, float *out)
{
    const ym_layer *L = &m->layers[l];
    const int N = m->cfg.d_state;
    if (L->scan == NULL) {
        memcpy(out, ssm, sizeof(float) * (size_t)L->d_inner * N);
        return;
    }
    memset(out, 0, sizeof(float) * (size_t)L->d_inner * N);
    for (int b = 0; b < L->scan->n_blocks; b++) {
        const ym_scan_block *B = &L->scan->blocks[b];
        for (int u = 0; u < B->n_u; u++)
            for (int j = 0; j < B->w; j++)
                out[(size_t)(B->d0 + j) * N + B->n_idx[u]] = ssm[B->off + (int64_t)u * B->w + j];
    }
}
