/* engine/sparsity.c - the sparsity profile file, both kinds (channels for Mamba-1, heads for
 * Mamba-2): strict parsing, the derived served layout (which original channel or head sits at
 * which served position), and writing.
 *
 * Owns: the profile and its per-layer arrays (copied out of the file's bytes, so nothing here
 * borrows from the caller's buffer after a parse returns). Thread: any; parsing runs where the
 * model loads (CLI thread or the libuv pool). Must not: trust a byte of the file; the
 * safetensors header checks (engine/safetensors.c) run first, then every rule of
 * docs/ARCHITECTURE.md §4 here. */
#include "engine/sparsity.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"

#define MAX_LAYERS 4096
#define MAX_D_INNER (1 << 20)
#define MAX_D_STATE 4096

void ym_sparsity_free(ym_sparsity *sp)
{
    if (sp == NULL)
        return;
    if (sp->layers != NULL) {
        for (int l = 0; l < sp->n_layer; l++) {
            ym_sparsity_layer *L = &sp->layers[l];
            free(L->channel_logits);
            free(L->head_logits);
            free(L->state_logits);
            free(L->scan_order);
            free(L->served);
            free(L->kept);
        }
        free(sp->layers);
    }
    free(sp);
}

/* A profile of this kind with n_layer layers of n_unit units (channels or heads) whose arrays
 * are allocated (zeroed; a head profile's scan_order the identity) or YM_ENOMEM. */
static ym_err alloc_profile(ym_sparsity_kind kind, int n_layer, int n_unit, int d_state,
                            ym_sparsity **out)
{
    *out = NULL;
    ym_sparsity *sp = calloc(1, sizeof(*sp));
    if (sp == NULL)
        return YM_ENOMEM;
    sp->kind = kind;
    sp->n_layer = n_layer;
    sp->d_inner = kind == YM_SPARSITY_HEADS ? 0 : n_unit;
    sp->n_head = kind == YM_SPARSITY_HEADS ? n_unit : 0;
    sp->d_state = d_state;
    if ((sp->layers = calloc((size_t)n_layer, sizeof(*sp->layers))) == NULL)
        goto oom;
    for (int l = 0; l < n_layer; l++) {
        ym_sparsity_layer *L = &sp->layers[l];
        float **ul = kind == YM_SPARSITY_HEADS ? &L->head_logits : &L->channel_logits;
        *ul = calloc((size_t)n_unit, sizeof(float));
        L->state_logits = calloc((size_t)n_unit * (size_t)d_state, sizeof(float));
        L->scan_order = calloc((size_t)n_unit, sizeof(int32_t));
        L->served = calloc((size_t)n_unit, sizeof(int32_t));
        L->kept = calloc((size_t)n_unit, sizeof(int32_t));
        if (!*ul || !L->state_logits || !L->scan_order || !L->served || !L->kept)
            goto oom;
        if (kind == YM_SPARSITY_HEADS)
            for (int h = 0; h < n_unit; h++)
                L->scan_order[h] = h;
    }
    *out = sp;
    return YM_OK;
oom:
    ym_sparsity_free(sp);
    return YM_ENOMEM;
}

ym_err ym_sparsity_finish(ym_sparsity *sp, ym_diag *diag)
{
    const int di = ym_sparsity_n_unit(sp), N = sp->d_state;
    const int heads = sp->kind == YM_SPARSITY_HEADS;
    for (int l = 0; l < sp->n_layer; l++) {
        ym_sparsity_layer *L = &sp->layers[l];
        const float *ul = heads ? L->head_logits : L->channel_logits;
        for (int d = 0; d < di; d++)
            L->served[d] = -1;
        /* served[] doubles as the "seen" mark while the permutation is checked. */
        for (int k = 0; k < di; k++) {
            int32_t d = L->scan_order[k];
            if (d < 0 || d >= di)
                return ym_diag_set(diag, YM_EINVAL,
                                   "layers.%d.scan_order: entry %d is %d, outside [0, %d)", l, k,
                                   (int)d, di);
            if (L->served[d] != -1)
                return ym_diag_set(diag, YM_EINVAL,
                                   "layers.%d.scan_order: channel %d appears twice (not a "
                                   "permutation)",
                                   l, (int)d);
            L->served[d] = -2;
        }
        for (size_t i = 0; i < (size_t)di * N; i++)
            if (isnan(L->state_logits[i]))
                return ym_diag_set(diag, YM_EINVAL, "layers.%d.state_logits: NaN at [%zu, %zu]",
                                   l, i / (size_t)N, i % (size_t)N);
        int n_kept = 0;
        int64_t n_live = 0;
        for (int k = 0; k < di; k++) {
            int32_t d = L->scan_order[k];
            float cl = ul[d];
            if (isnan(cl))
                return ym_diag_set(diag, YM_EINVAL, "layers.%d.%s: NaN at [%d]", l,
                                   heads ? "head_logits" : "channel_logits", (int)d);
            if (cl > 0.0f) {
                L->served[d] = n_kept;
                L->kept[n_kept++] = d;
                for (int n = 0; n < N; n++)
                    n_live += L->state_logits[(size_t)d * N + n] > 0.0f;
            } else {
                L->served[d] = -1;
            }
        }
        L->n_kept = n_kept;
        L->n_live = n_live;
    }
    return YM_OK;
}

/* Everything kept, identity order (arguments checked by the callers). */
static ym_err new_profile(ym_sparsity_kind kind, int n_layer, int n_unit, int d_state,
                          const char *method, ym_sparsity **out)
{
    ym_sparsity *sp;
    ym_err err = alloc_profile(kind, n_layer, n_unit, d_state, &sp);
    if (err != YM_OK)
        return err;
    snprintf(sp->method, sizeof(sp->method), "%s", method);
    for (int l = 0; l < n_layer; l++) {
        ym_sparsity_layer *L = &sp->layers[l];
        float *ul = kind == YM_SPARSITY_HEADS ? L->head_logits : L->channel_logits;
        for (int d = 0; d < n_unit; d++) {
            ul[d] = 1.0f;
            L->scan_order[d] = d;
        }
        for (size_t i = 0; i < (size_t)n_unit * d_state; i++)
            L->state_logits[i] = 1.0f;
    }
    ym_sparsity_finish(sp, NULL); /* cannot fail: identity order, finite logits */
    *out = sp;
    return YM_OK;
}

ym_err ym_sparsity_new(int n_layer, int d_inner, int d_state, const char *method,
                       ym_sparsity **out)
{
    *out = NULL;
    if (n_layer < 1 || n_layer > MAX_LAYERS || d_inner < 1 || d_inner > MAX_D_INNER ||
        d_state < 1 || d_state > MAX_D_STATE || method == NULL || method[0] == '\0' ||
        strlen(method) >= sizeof(((ym_sparsity *)0)->method))
        return YM_EINVAL;
    return new_profile(YM_SPARSITY_CHANNELS, n_layer, d_inner, d_state, method, out);
}

ym_err ym_sparsity_new_heads(int n_layer, int n_head, int d_state, const char *method,
                             ym_sparsity **out)
{
    *out = NULL;
    if (n_layer < 1 || n_layer > MAX_LAYERS || n_head < 1 || n_head > MAX_D_INNER ||
        d_state < 1 || d_state > MAX_D_STATE || method == NULL || method[0] == '\0' ||
        strlen(method) >= sizeof(((ym_sparsity *)0)->method))
        return YM_EINVAL;
    return new_profile(YM_SPARSITY_HEADS, n_layer, n_head, d_state, method, out);
}

/* ---- parsing --------------------------------------------------------------------------- */

static const char *shape_str(char *buf, size_t cap, const ym_st_tensor *t)
{
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < t->n_dim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
    return buf;
}

/* The tensor of layer l named suffix, checked for dtype and rank; its dims in dims[]. */
static ym_err find_tensor(const ym_st_header *h, int l, const char *suffix, ym_dtype dt,
                          int n_dim, const ym_st_tensor **out, ym_diag *diag)
{
    char name[96], sh[160];
    snprintf(name, sizeof(name), "layers.%d.%s", l, suffix);
    const ym_st_tensor *t = ym_st_header_find(h, name);
    *out = NULL;
    if (t == NULL)
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: missing", name);
    if (t->dtype != dt)
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: dtype %s, want %s", name,
                           ym_dtype_name(t->dtype), ym_dtype_name(dt));
    if (t->n_dim != n_dim)
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: shape %s, want %d dimensions", name,
                           shape_str(sh, sizeof(sh), t), n_dim);
    *out = t;
    return YM_OK;
}

static ym_err check_shape(const ym_st_tensor *t, int64_t d0, int64_t d1, ym_diag *diag)
{
    char sh[160];
    if (t->shape[0] == d0 && (t->n_dim == 1 || t->shape[1] == d1))
        return YM_OK;
    if (t->n_dim == 1)
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: shape %s, want [%lld]", t->name,
                           shape_str(sh, sizeof(sh), t), (long long)d0);
    return ym_diag_set(diag, YM_EFORMAT, "tensor %s: shape %s, want [%lld, %lld]", t->name,
                       shape_str(sh, sizeof(sh), t), (long long)d0, (long long)d1);
}

static ym_err check_meta(const ym_st_header *h, char *method, size_t cap, ym_diag *diag)
{
    const char *fmt = ym_st_header_meta(h, "format");
    const char *ver = ym_st_header_meta(h, "version");
    const char *meth = ym_st_header_meta(h, "method");
    if (fmt == NULL || strcmp(fmt, YM_SPARSITY_FORMAT) != 0)
        return ym_diag_set(diag, YM_EFORMAT, "__metadata__ format: %s%s%s, want \"%s\"",
                           fmt ? "\"" : "", fmt ? fmt : "missing", fmt ? "\"" : "",
                           YM_SPARSITY_FORMAT);
    if (ver == NULL || strcmp(ver, YM_SPARSITY_VERSION) != 0)
        return ym_diag_set(diag, YM_EFORMAT, "__metadata__ version: %s%s%s, want \"%s\"",
                           ver ? "\"" : "", ver ? ver : "missing", ver ? "\"" : "",
                           YM_SPARSITY_VERSION);
    if (meth == NULL || meth[0] == '\0' || strlen(meth) >= cap)
        return ym_diag_set(diag, YM_EFORMAT, "__metadata__ method: %s",
                           meth == NULL ? "missing" : meth[0] == '\0' ? "empty" : "too long");
    snprintf(method, cap, "%s", meth);
    return YM_OK;
}

ym_err ym_sparsity_parse(const uint8_t *buf, size_t size, ym_sparsity **out, ym_diag *diag)
{
    ym_st_header h;
    ym_sparsity *sp = NULL;
    ym_err err;
    ym_diag inner = {0};
    *out = NULL;
    if ((err = ym_st_header_parse(buf, size, &h, &inner)) != YM_OK) {
        ym_st_header_deinit(&h);
        return ym_diag_set(diag, err, "%s", inner.msg);
    }
    char method[64];
    if ((err = check_meta(&h, method, sizeof(method), diag)) != YM_OK)
        goto fail;

    /* The kind from layer 0's unit tensor; then layers 0, 1, ... while layers.{l}.<unit>
     * exists; dims from layer 0. */
    const int heads = ym_st_header_find(&h, "layers.0.channel_logits") == NULL &&
                      ym_st_header_find(&h, "layers.0.head_logits") != NULL;
    const char *unit = heads ? "head_logits" : "channel_logits";
    const int per_layer = heads ? 2 : 3; /* tensors per layer */
    int n_layer = 0;
    for (;;) {
        char name[64];
        snprintf(name, sizeof(name), "layers.%d.%s", n_layer, unit);
        if (ym_st_header_find(&h, name) == NULL)
            break;
        if (++n_layer > MAX_LAYERS) {
            err = ym_diag_set(diag, YM_EFORMAT, "more than %d layers", MAX_LAYERS);
            goto fail;
        }
    }
    if (n_layer == 0) {
        err = ym_diag_set(diag, YM_EFORMAT,
                          "tensor layers.0.channel_logits (or layers.0.head_logits): missing");
        goto fail;
    }
    if (h.n_tensors != per_layer * n_layer) {
        /* Name the first tensor that is not one of this kind's. */
        for (int i = 0; i < h.n_tensors; i++) {
            int l = -1, pos = 0;
            const char *nm = h.tensors[i].name;
            char rest[32];
            if (sscanf(nm, "layers.%d.%n", &l, &pos) == 1 && pos > 0 && l >= 0 && l < n_layer &&
                strlen(nm + pos) < sizeof(rest)) {
                snprintf(rest, sizeof(rest), "%s", nm + pos);
                char canon[96];
                snprintf(canon, sizeof(canon), "layers.%d.%s", l, rest);
                if (strcmp(canon, nm) == 0 &&
                    (!strcmp(rest, unit) || !strcmp(rest, "state_logits") ||
                     (!heads && !strcmp(rest, "scan_order"))))
                    continue;
            }
            err = ym_diag_set(diag, YM_EFORMAT, "tensor %s: unexpected in a sparsity profile of "
                                                "%d layers of %s",
                              nm, n_layer, heads ? "heads" : "channels");
            goto fail;
        }
        /* All names are ours, so some layer lacks a tensor: the loop below names it. */
    }
    const ym_st_tensor *cl, *sl, *so = NULL;
    if ((err = find_tensor(&h, 0, unit, YM_DT_F32, 1, &cl, diag)) != YM_OK ||
        (err = find_tensor(&h, 0, "state_logits", YM_DT_F32, 2, &sl, diag)) != YM_OK)
        goto fail;
    int64_t di = cl->shape[0], N = sl->shape[1];
    if (di < 1 || di > MAX_D_INNER || N < 1 || N > MAX_D_STATE) {
        err = ym_diag_set(diag, YM_EFORMAT,
                          "layer 0: %s %lld, d_state %lld: want [1, %d] and [1, %d]",
                          heads ? "n_head" : "d_inner", (long long)di, (long long)N, MAX_D_INNER,
                          MAX_D_STATE);
        goto fail;
    }
    if ((err = alloc_profile(heads ? YM_SPARSITY_HEADS : YM_SPARSITY_CHANNELS, n_layer, (int)di,
                             (int)N, &sp)) != YM_OK) {
        ym_diag_set(diag, err, "out of memory");
        goto fail;
    }
    snprintf(sp->method, sizeof(sp->method), "%s", method);
    for (int l = 0; l < n_layer; l++) {
        ym_sparsity_layer *L = &sp->layers[l];
        if ((err = find_tensor(&h, l, unit, YM_DT_F32, 1, &cl, diag)) != YM_OK ||
            (err = check_shape(cl, di, 0, diag)) != YM_OK ||
            (err = find_tensor(&h, l, "state_logits", YM_DT_F32, 2, &sl, diag)) != YM_OK ||
            (err = check_shape(sl, di, N, diag)) != YM_OK ||
            (!heads &&
             ((err = find_tensor(&h, l, "scan_order", YM_DT_I32, 1, &so, diag)) != YM_OK ||
              (err = check_shape(so, di, 0, diag)) != YM_OK)))
            goto fail;
        /* The data may sit at any byte offset: copy, never cast. */
        memcpy(heads ? L->head_logits : L->channel_logits, cl->data, (size_t)di * sizeof(float));
        memcpy(L->state_logits, sl->data, (size_t)(di * N) * sizeof(float));
        if (!heads)
            memcpy(L->scan_order, so->data, (size_t)di * sizeof(int32_t));
    }
    ym_diag fd = {0};
    if ((err = ym_sparsity_finish(sp, &fd)) != YM_OK) {
        err = ym_diag_set(diag, YM_EFORMAT, "%s", fd.msg);
        goto fail;
    }
    ym_st_header_deinit(&h);
    *out = sp;
    return YM_OK;
fail:
    ym_sparsity_free(sp);
    ym_st_header_deinit(&h);
    return err;
}

ym_err ym_sparsity_load(const char *path, ym_sparsity **out, ym_diag *diag)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return ym_diag_set(diag, YM_EIO, "%s: %s", path, strerror(errno));
    ym_buf buf = YM_BUF_INIT;
    ym_err err = ym_buf_read(&buf, f, SIZE_MAX);
    fclose(f);
    if (err != YM_OK) {
        ym_buf_deinit(&buf);
        return err == YM_ENOMEM ? ym_diag_set(diag, YM_ENOMEM, "%s: out of memory", path)
                                : ym_diag_set(diag, YM_EIO, "%s: read error", path);
    }
    ym_diag d = {0};
    err = ym_sparsity_parse((const uint8_t *)buf.p, buf.len, out, &d);
    ym_buf_deinit(&buf);
    if (err != YM_OK)
        return ym_diag_set(diag, err, "%s: %s", path, d.msg);
    return YM_OK;
}

ym_err ym_sparsity_check(const ym_sparsity *sp, const ym_config *cfg, ym_diag *diag)
{
    const int heads = cfg->arch == YM_ARCH_MAMBA2;
    if (heads != (sp->kind == YM_SPARSITY_HEADS))
        return ym_diag_set(diag, YM_EFORMAT, "sparsity profile of %s (%s), the model is %s",
                           sp->kind == YM_SPARSITY_HEADS ? "heads" : "channels",
                           sp->kind == YM_SPARSITY_HEADS ? "Mamba-2" : "Mamba-1",
                           ym_arch_name(cfg->arch));
    if (sp->n_layer != cfg->n_layer)
        return ym_diag_set(diag, YM_EFORMAT, "sparsity profile has %d layers, the model %d",
                           sp->n_layer, cfg->n_layer);
    if (heads && sp->n_head != cfg->n_head)
        return ym_diag_set(diag, YM_EFORMAT, "sparsity profile has %d heads, the model %d",
                           sp->n_head, cfg->n_head);
    if (!heads && sp->d_inner != cfg->d_inner)
        return ym_diag_set(diag, YM_EFORMAT, "sparsity profile has d_inner %d, the model %d",
                           sp->d_inner, cfg->d_inner);
    if (sp->d_state != cfg->d_state)
        return ym_diag_set(diag, YM_EFORMAT, "sparsity profile has d_state %d, the model %d",
                           sp->d_state, cfg->d_state);
    return YM_OK;
}

/* ---- writing --------------------------------------------------------------------------- */

ym_err ym_sparsity_save(const ym_sparsity *sp, const char *path, const ym_st_meta *extra,
                        int n_extra, ym_diag *diag)
{
    const int heads = sp->kind == YM_SPARSITY_HEADS, per = heads ? 2 : 3;
    const int nu = ym_sparsity_n_unit(sp), nt = per * sp->n_layer;
    ym_st_wtensor *t = calloc((size_t)nt, sizeof(*t));
    char *names = calloc((size_t)nt, 64);
    ym_st_meta *meta = calloc((size_t)n_extra + 3, sizeof(*meta));
    ym_err err;
    if (t == NULL || names == NULL || meta == NULL) {
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
        goto done;
    }
    for (int l = 0; l < sp->n_layer; l++) {
        const ym_sparsity_layer *L = &sp->layers[l];
        const char *suffix[3] = {heads ? "head_logits" : "channel_logits", "state_logits",
                                 "scan_order"};
        for (int j = 0; j < per; j++) {
            ym_st_wtensor *w = &t[per * l + j];
            char *nm = names + (size_t)(per * l + j) * 64;
            snprintf(nm, 64, "layers.%d.%s", l, suffix[j]);
            w->name = nm;
            w->shape[0] = nu;
            w->n_dim = 1;
            w->dtype = YM_DT_F32;
        }
        t[per * l].data = heads ? L->head_logits : L->channel_logits;
        t[per * l + 1].n_dim = 2;
        t[per * l + 1].shape[1] = sp->d_state;
        t[per * l + 1].data = L->state_logits;
        if (!heads) {
            t[per * l + 2].dtype = YM_DT_I32;
            t[per * l + 2].data = L->scan_order;
        }
    }
    meta[0] = (ym_st_meta){(char *)"format", (char *)YM_SPARSITY_FORMAT};
    meta[1] = (ym_st_meta){(char *)"version", (char *)YM_SPARSITY_VERSION};
    meta[2] = (ym_st_meta){(char *)"method", (char *)sp->method};
    for (int i = 0; i < n_extra; i++)
        meta[3 + i] = extra[i];
    err = ym_st_write(path, t, nt, meta, n_extra + 3, diag);
done:
    free(t);
    free(names);
    free(meta);
    return err;
}
