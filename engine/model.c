/* engine/model.c - a Mamba-1 model in the engine's layout: loading and binding a Hugging Face
 * checkpoint by tensor name, and deterministic random models for benchmarks and tests.
 *
 * Owns: the ym_model_t, its layer table, converted tensors, A = -exp(A_log), and the mapping
 * (ym_st_set_t) that borrowed F32 tensors point into. Binding is strict, as llama.cpp's loader:
 * every expected tensor by full name, with its shape and a float dtype; any tensor left over is
 * an error, so a checkpoint of some other architecture never loads as a broken Mamba.
 * Thread: load and new_random run on the libuv pool (or the CLI's main thread); afterwards the
 * model is immutable and read by every thread; the refcount is atomic.
 * Must not: write into a mapping (it is PROT_READ), or keep a pointer into the set after a
 * failed load. */
#include "engine/model.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "engine/config_int.h"
#include "engine/model_int.h"
#include "engine/safetensors.h"

#define ALIGN_BYTES 64 /* converted buffers: a cache line, enough for any SIMD load */
#define HUGE_BYTES ((size_t)2 << 20)

static void model_destroy(ym_model_t *m)
{
    if (m == NULL)
        return;
    for (int i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    ym_st_set_free(m->st);
    ym_model_unref(m->base);
    free(m);
}

ym_model_t *ym_model_ref(ym_model_t *m)
{
    if (m != NULL)
        atomic_fetch_add_explicit(&m->refcount, 1, memory_order_relaxed);
    return m;
}

void ym_model_unref(ym_model_t *m)
{
    /* acq_rel: every thread's reads of the weights happen before the free. */
    if (m != NULL && atomic_fetch_sub_explicit(&m->refcount, 1, memory_order_acq_rel) == 1)
        model_destroy(m);
}

/* A new 64-byte aligned buffer of n floats, kept on m->owned. */
static float *owned_alloc(ym_model_t *m, size_t n);
float *ym__model_alloc(ym_model_t *m, size_t n)
{
    return owned_alloc(m, n);
}

static void *owned_alloc_bytes(ym_model_t *m, size_t bytes);
static float *owned_alloc(ym_model_t *m, size_t n)
{
    return owned_alloc_bytes(m, n * sizeof(float));
}

static void *owned_alloc_bytes(ym_model_t *m, size_t bytes)
{
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned > 0 ? 2 * m->cap_owned : 64;
        void **o = realloc(m->owned, (size_t)cap * sizeof(*o));
        if (o == NULL)
            return NULL;
        m->owned = o;
        m->cap_owned = cap;
    }
    /* Large buffers (the projections, the embedding) are 2 MiB aligned and asked to be backed
     * by transparent huge pages: the forward streams them once per token, and 4 KiB pages cost
     * a TLB miss every 4 KiB and a page fault each at first touch (docs/BENCHMARKS.md). The slack
     * of the alignment is never touched, so it costs address space only. */
    bytes = bytes > 0 ? (bytes + ALIGN_BYTES - 1) / ALIGN_BYTES * ALIGN_BYTES : ALIGN_BYTES;
    size_t align = bytes >= HUGE_BYTES ? HUGE_BYTES : ALIGN_BYTES;
    void *p = NULL;
    if (posix_memalign(&p, align, bytes) != 0)
        return NULL;
    if (align == HUGE_BYTES)
        (void)madvise(p, bytes & ~(HUGE_BYTES - 1), MADV_HUGEPAGE); /* a hint; may be refused */
    m->owned[m->n_owned++] = p;
    return p;
}

/* ---- loading --------------------------------------------------------------------------- */

typedef struct binder {
    ym_model_t *m;
    const ym_st_set_t *st;
    const ym_st_tensor **used; /* [n_used], tensors claimed so far */
    int n_used;
    ym_wtype wt;               /* the served type of the matrices */
    float *row;                /* owned scratch: one row of a matrix as f32 */
    ym_diag *diag;
} binder;

static void format_shape(char *buf, size_t cap, int n_dim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n_dim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
}

/* Find name, check its dtype and shape, claim it. *t = NULL (and YM_OK) when absent and not
 * required. */
static ym_err find_checked_i8(binder *b, const char *name, int n_dim, const int64_t *shape,
                              bool required, bool i8, const ym_st_tensor **out);
static ym_err find_checked(binder *b, const char *name, int n_dim, const int64_t *shape,
                           bool required, const ym_st_tensor **out)
{
    return find_checked_i8(b, name, n_dim, shape, required, false, out);
}

/* As find_checked; i8: an I8 tensor is allowed too (a quantized matrix). */
static ym_err find_checked_i8(binder *b, const char *name, int n_dim, const int64_t *shape,
                              bool required, bool i8, const ym_st_tensor **out)
{
    const ym_st_tensor *t = ym_st_set_find(b->st, name);
    char want[128], got[128];
    *out = NULL;
    format_shape(want, sizeof(want), n_dim, shape);
    if (t == NULL) {
        if (!required)
            return YM_OK;
        return ym_diag_set(b->diag, YM_EFORMAT, "tensor %s: missing (want shape %s)", name, want);
    }
    if (t->dtype != YM_DT_F32 && t->dtype != YM_DT_F16 && t->dtype != YM_DT_BF16 &&
        t->dtype != YM_DT_F64 && !(i8 && t->dtype == YM_DT_I8))
        return ym_diag_set(b->diag, YM_EFORMAT,
                           "tensor %s: dtype %s, want F32, F16, BF16 or F64%s", name,
                           ym_dtype_name(t->dtype), i8 ? " (or I8 with its scales)" : "");
    bool same = t->n_dim == n_dim;
    for (int i = 0; same && i < n_dim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        format_shape(got, sizeof(got), t->n_dim, t->shape);
        return ym_diag_set(b->diag, YM_EFORMAT, "tensor %s: shape %s, want %s", name, got, want);
    }
    b->used[b->n_used++] = t;
    *out = t;
    return YM_OK;
}

/* An f32 view of t: the mapping itself when F32 and aligned, else an owned converted copy. */
static ym_err f32_view(binder *b, const ym_st_tensor *t, const float **out)
{
    if (t->dtype == YM_DT_F32 && ((uintptr_t)t->data & 3) == 0) {
        *out = t->data;
        return YM_OK;
    }
    float *p = owned_alloc(b->m, (size_t)ym_st_tensor_numel(t));
    if (p == NULL)
        return ym_diag_set(b->diag, YM_ENOMEM, "tensor %s: out of memory", t->name);
    ym_err err = ym_st_tensor_to_f32(t, p, b->diag);
    *out = p;
    return err;
}

/* Bind a tensor the config says exists (used = true); with used = false, leave it unclaimed, so
 * a bias the config does not ask for is reported as unexpected below. */
static ym_err bind(binder *b, const char *name, int n_dim, const int64_t *shape, bool used,
                   const float **out)
{
    const ym_st_tensor *t;
    ym_err err;
    *out = NULL;
    if (!used)
        return YM_OK;
    if ((err = find_checked(b, name, n_dim, shape, true, &t)) != YM_OK)
        return err;
    return f32_view(b, t, out);
}

/* Row n of a float or I8 tensor [N, K] as f32 (scale: the I8 tensor's row scales). */
static void src_row(const ym_st_tensor *t, const float *scale, int64_t n, int64_t K, float *out)
{
    const unsigned char *p = (const unsigned char *)t->data + (size_t)(n * K) * ym_dtype_size(t->dtype);
    for (int64_t k = 0; k < K; k++) {
        switch (t->dtype) {
        case YM_DT_F32:
            memcpy(&out[k], p + 4 * k, 4);
            break;
        case YM_DT_F64: {
            double d;
            memcpy(&d, p + 8 * k, 8);
            out[k] = (float)d;
            break;
        }
        case YM_DT_BF16:
        case YM_DT_F16: {
            uint16_t v;
            memcpy(&v, p + 2 * k, 2);
            out[k] = t->dtype == YM_DT_BF16 ? ym_bf16_to_f32(v) : ym_f16_to_f32(v);
            break;
        }
        default: /* I8 */
            out[k] = (float)((const int8_t *)p)[k] * scale[n];
        }
    }
}

/* The scales of an I8 matrix: "<name>_scale", F32 [N], finite and >= 0; claimed. */
static ym_err bind_scale(binder *b, const char *name, int64_t N, const ym_st_tensor **out)
{
    char sname[160];
    snprintf(sname, sizeof(sname), "%s_scale", name);
    const ym_st_tensor *t = ym_st_set_find(b->st, sname);
    if (t == NULL)
        return ym_diag_set(b->diag, YM_EFORMAT, "tensor %s: I8 without its scale tensor %s",
                           name, sname);
    if (t->dtype != YM_DT_F32 || t->n_dim != 1 || t->shape[0] != N) {
        char got[128];
        format_shape(got, sizeof(got), t->n_dim, t->shape);
        return ym_diag_set(b->diag, YM_EFORMAT, "tensor %s: %s %s, want F32 [%lld] (one scale "
                           "per row of %s)", sname, ym_dtype_name(t->dtype), got, (long long)N,
                           name);
    }
    for (int64_t i = 0; i < N; i++) {
        float v;
        memcpy(&v, (const char *)t->data + 4 * i, 4);
        if (!isfinite(v) || v < 0.0f)
            return ym_diag_set(b->diag, YM_EFORMAT, "tensor %s: scale %lld is %g, want finite "
                               "and >= 0", sname, (long long)i, (double)v);
    }
    b->used[b->n_used++] = t;
    *out = t;
    return YM_OK;
}

/* Bind a matrix [N, K] in the served type b->wt: in place when the file holds it in that type
 * (aligned), else converted row by row into owned memory. */
static ym_err bind_w(binder *b, const char *name, int64_t N, int64_t K, ym_weight *out)
{
    const ym_st_tensor *t, *st = NULL;
    ym_err err;
    memset(out, 0, sizeof(*out));
    if ((err = find_checked_i8(b, name, 2, (const int64_t[]){N, K}, true, true, &t)) != YM_OK)
        return err;
    if (t->dtype == YM_DT_I8 && (err = bind_scale(b, name, N, &st)) != YM_OK)
        return err;
    out->type = b->wt;
    out->n_rows = (int)N;
    out->n_cols = (int)K;
    const float *scale = st != NULL ? st->data : NULL;
    bool same = (b->wt == YM_WT_F32 && t->dtype == YM_DT_F32) ||
                (b->wt == YM_WT_BF16 && t->dtype == YM_DT_BF16) ||
                (b->wt == YM_WT_INT8 && t->dtype == YM_DT_I8);
    if (same && ((uintptr_t)t->data & 3) == 0 && (scale == NULL || ((uintptr_t)scale & 3) == 0)) {
        out->data = t->data;
        out->scale = scale;
        return YM_OK;
    }
    size_t es = ym_wtype_size(b->wt), bytes = (size_t)N * (size_t)K * es;
    char *data = owned_alloc_bytes(b->m, bytes);
    float *sc = b->wt == YM_WT_INT8 ? owned_alloc(b->m, (size_t)N) : NULL;
    if (data == NULL || (b->wt == YM_WT_INT8 && sc == NULL))
        return ym_diag_set(b->diag, YM_ENOMEM, "tensor %s: out of memory", name);
    for (int64_t n = 0; n < N; n++) {
        src_row(t, scale, n, K, b->row);
        /* Re-quantizing an I8 row keeps its scale (and so its exact values). */
        const float *fixed = scale != NULL && b->wt == YM_WT_INT8 ? &scale[n] : NULL;
        if (ym_weight_convert(b->wt, b->row, (size_t)K, 1, (int)K, data + (size_t)n * K * es,
                              sc != NULL ? sc + n : NULL, fixed) != YM_OK)
            return ym_diag_set(b->diag, YM_EFORMAT, "tensor %s: row %lld has a non-finite "
                               "value", name, (long long)n);
    }
    out->data = data;
    out->scale = sc;
    return YM_OK;
}

#define SHAPE(...) ((const int64_t[]){ __VA_ARGS__ })
#define NDIM(...) ((int)(sizeof((const int64_t[]){ __VA_ARGS__ }) / sizeof(int64_t)))
#define BIND(b, name, req, out, ...)                                                               \
    bind((b), (name), NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__), (req), (out))

static ym_err bind_layer(binder *b, int l, ym_layer *L)
{
    const ym_config *c = &b->m->cfg;
    const int64_t dm = c->d_model, di = c->d_inner, ds = c->d_state, r = c->dt_rank;
    char name[128];
    ym_err err;
#define NAME(suffix) (snprintf(name, sizeof(name), "backbone.layers.%d.%s", l, suffix), name)
#define TRYB(x)                                                                                    \
    if ((err = (x)) != YM_OK)                                                                      \
        return err;
    L->d_inner = c->d_inner;
    TRYB(BIND(b, NAME("norm.weight"), true, &L->norm, dm));
    TRYB(bind_w(b, NAME("mixer.in_proj.weight"), 2 * di, dm, &L->in_proj));
    TRYB(BIND(b, NAME("mixer.in_proj.bias"), c->use_bias, &L->in_proj_b, 2 * di));
    TRYB(BIND(b, NAME("mixer.conv1d.weight"), true, &L->conv_w, di, 1, c->d_conv));
    TRYB(BIND(b, NAME("mixer.conv1d.bias"), c->use_conv_bias, &L->conv_b, di));
    TRYB(bind_w(b, NAME("mixer.x_proj.weight"), r + 2 * ds, di, &L->x_proj));
    TRYB(BIND(b, NAME("mixer.dt_proj.weight"), true, &L->dt_proj_w, di, r));
    TRYB(BIND(b, NAME("mixer.dt_proj.bias"), true, &L->dt_proj_b, di));
    TRYB(BIND(b, NAME("mixer.D"), true, &L->D, di));
    TRYB(bind_w(b, NAME("mixer.out_proj.weight"), dm, di, &L->out_proj));
    TRYB(BIND(b, NAME("mixer.out_proj.bias"), c->use_bias, &L->out_proj_b, dm));

    /* A = -exp(A_log), computed once here so the scan reads A directly (docs/ARCHITECTURE.md §3). */
    const ym_st_tensor *t;
    TRYB(find_checked(b, NAME("mixer.A_log"), 2, SHAPE(di, ds), true, &t));
    float *A = owned_alloc(b->m, (size_t)(di * ds));
    if (A == NULL)
        return ym_diag_set(b->diag, YM_ENOMEM, "tensor %s: out of memory", name);
    TRYB(ym_st_tensor_to_f32(t, A, b->diag));
    for (int64_t i = 0; i < di * ds; i++)
        A[i] = -expf(A[i]);
    L->A = A;
#undef NAME
#undef TRYB
    return YM_OK;
}

/* A Mamba-2 layer (the same names in transformers' and mamba_ssm's forms). */
static ym_err bind_layer_m2(binder *b, int l, ym_layer *L)
{
    const ym_config *c = &b->m->cfg;
    const int64_t dm = c->d_model, di = c->d_inner, h = c->n_head;
    const int64_t cd = ym_config_conv_channels(c), n_in = di + cd + h;
    char name[128];
    ym_err err;
#define NAME(suffix) (snprintf(name, sizeof(name), "backbone.layers.%d.%s", l, suffix), name)
#define TRYB(x)                                                                                    \
    if ((err = (x)) != YM_OK)                                                                      \
        return err;
    L->d_inner = c->d_inner;
    TRYB(BIND(b, NAME("norm.weight"), true, &L->norm, dm));
    TRYB(bind_w(b, NAME("mixer.in_proj.weight"), n_in, dm, &L->in_proj));
    TRYB(BIND(b, NAME("mixer.in_proj.bias"), c->use_bias, &L->in_proj_b, n_in));
    TRYB(BIND(b, NAME("mixer.conv1d.weight"), true, &L->conv_w, cd, 1, c->d_conv));
    TRYB(BIND(b, NAME("mixer.conv1d.bias"), c->use_conv_bias, &L->conv_b, cd));
    TRYB(BIND(b, NAME("mixer.dt_bias"), true, &L->dt_bias, h));
    TRYB(BIND(b, NAME("mixer.D"), true, &L->D, h));
    TRYB(BIND(b, NAME("mixer.norm.weight"), true, &L->gnorm, di));
    TRYB(bind_w(b, NAME("mixer.out_proj.weight"), dm, di, &L->out_proj));
    TRYB(BIND(b, NAME("mixer.out_proj.bias"), c->use_bias, &L->out_proj_b, dm));
    /* A = -exp(A_log) per head, once here */
    const ym_st_tensor *t;
    TRYB(find_checked(b, NAME("mixer.A_log"), 1, SHAPE(h), true, &t));
    float *A = owned_alloc(b->m, (size_t)h);
    if (A == NULL)
        return ym_diag_set(b->diag, YM_ENOMEM, "tensor %s: out of memory", name);
    TRYB(ym_st_tensor_to_f32(t, A, b->diag));
    for (int64_t i = 0; i < h; i++)
        A[i] = -expf(A[i]);
    L->A = A;
#undef NAME
#undef TRYB
    return YM_OK;
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (const void *const *)a, y = (uintptr_t) * (const void *const *)b;
    return x < y ? -1 : x > y;
}

static ym_err bind_model(ym_model_t *m, ym_diag *diag)
{
    ym_config *c = &m->cfg;
    int n_all = ym_st_set_n_tensors(m->st);
    binder b = { .m = m, .st = m->st, .wt = m->wtype, .diag = diag };
    ym_err err;
    int64_t row_max = c->d_model > c->d_inner ? c->d_model : c->d_inner;
    if (ym_config_conv_channels(c) > row_max)
        row_max = ym_config_conv_channels(c);

    if ((b.used = calloc((size_t)n_all + 1, sizeof(*b.used))) == NULL ||
        (b.row = malloc(sizeof(float) * (size_t)row_max)) == NULL ||
        (m->layers = calloc((size_t)c->n_layer, sizeof(*m->layers))) == NULL) {
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
        goto done;
    }

    /* The vocabulary is the embedding's row count (checkpoints pad it past the tokenizer's and
     * sometimes past config.json's vocab_size): take it before checking anything against it. */
    const char *embed_name = "backbone.embeddings.weight"; /* transformers */
    const ym_st_tensor *et = ym_st_set_find(m->st, embed_name);
    if (et == NULL) {
        embed_name = "backbone.embedding.weight"; /* state-spaces */
        et = ym_st_set_find(m->st, embed_name);
    }
    if (et == NULL) {
        err = ym_diag_set(diag, YM_EFORMAT,
                          "tensor backbone.embeddings.weight (or backbone.embedding.weight): "
                          "missing");
        goto done;
    }
    int64_t rows = et->n_dim == 2 ? et->shape[0] : 0;
    if (rows < 1 || rows > (4 << 20)) {
        char got[128];
        format_shape(got, sizeof(got), et->n_dim, et->shape);
        err = ym_diag_set(diag, YM_EFORMAT, "tensor %s: shape %s, want [n_vocab, %d] with "
                                            "n_vocab in [1, %d]",
                          embed_name, got, c->d_model, 4 << 20);
        goto done;
    }
    c->n_vocab = (int)rows;
    const int64_t nv = rows, dm = c->d_model;
    if ((err = bind_w(&b, embed_name, nv, dm, &m->embed)) != YM_OK)
        goto done;
    for (int l = 0; l < c->n_layer; l++)
        if ((err = (c->arch == YM_ARCH_MAMBA2 ? bind_layer_m2 : bind_layer)(&b, l,
                                                                          &m->layers[l])) != YM_OK)
            goto done;
    if ((err = BIND(&b, "backbone.norm_f.weight", true, &m->norm_f, dm)) != YM_OK)
        goto done;
    if (c->tie_embeddings) {
        /* Some saves of tied models include lm_head.weight too; transformers then ties it to the
         * embedding anyway, so it is checked for shape and otherwise ignored. */
        const ym_st_tensor *t;
        if ((err = find_checked_i8(&b, "lm_head.weight", 2, SHAPE(nv, dm), false, true, &t)) !=
            YM_OK)
            goto done;
        if (t != NULL && t->dtype == YM_DT_I8 &&
            (err = bind_scale(&b, "lm_head.weight", nv, &t)) != YM_OK)
            goto done;
        m->lm_head = m->embed;
    } else if ((err = bind_w(&b, "lm_head.weight", nv, dm, &m->lm_head)) != YM_OK) {
        goto done;
    }

    /* Anything not claimed is unexpected. */
    qsort(b.used, (size_t)b.n_used, sizeof(*b.used), cmp_ptr);
    for (int i = 0; i < n_all; i++) {
        const ym_st_tensor *t = ym_st_set_tensor(m->st, i);
        if (bsearch(&t, b.used, (size_t)b.n_used, sizeof(*b.used), cmp_ptr) == NULL) {
            err = ym_diag_set(diag, YM_EFORMAT, "tensor %s: unexpected in a %s checkpoint "
                                                "with this config",
                              t->name, ym_arch_name(c->arch));
            goto done;
        }
    }

    m->n_params = ym_config_n_params(c);
    for (int i = 0; i < n_all; i++) {
        const ym_st_tensor *t = ym_st_set_tensor(m->st, i);
        m->file_bytes += t->end - t->begin;
    }
    err = YM_OK;
done:
    free(b.used);
    free(b.row);
    return err;
}

/* Per token the forward reads every weight once, except an untied embedding, of which it reads
 * one row: that table is not counted in weight_bytes, only in resident_bytes. The matrices
 * count in their served type, everything else as f32. */
static void count_bytes(ym_model_t *m)
{
    const ym_config *c = &m->cfg;
    size_t mat_params = 0, mat_bytes = 0;
    for (int l = 0; l < c->n_layer; l++) {
        const ym_layer *L = &m->layers[l];
        const ym_weight *w[] = {&L->in_proj, &L->x_proj, &L->out_proj};
        for (int i = 0; i < 3; i++) {
            mat_params += (size_t)w[i]->n_rows * (size_t)w[i]->n_cols;
            mat_bytes += ym_weight_bytes(w[i]);
        }
    }
    size_t head = (size_t)c->n_vocab * (size_t)c->d_model;
    size_t small = (m->n_params - mat_params - head * (c->tie_embeddings ? 1 : 2)) * sizeof(float);
    m->weight_bytes = small + mat_bytes + ym_weight_bytes(&m->lm_head);
    m->resident_bytes = m->weight_bytes + (c->tie_embeddings ? 0 : ym_weight_bytes(&m->embed));
}

/* The served type of a checkpoint loaded with YM_WT_AUTO: that of its first in_proj. */
static ym_wtype auto_type(const ym_st_set_t *st)
{
    const ym_st_tensor *t = ym_st_set_find(st, "backbone.layers.0.mixer.in_proj.weight");
    if (t == NULL)
        return YM_WT_F32;
    return t->dtype == YM_DT_BF16 ? YM_WT_BF16 : t->dtype == YM_DT_I8 ? YM_WT_INT8 : YM_WT_F32;
}

static void dense_counts(ym_model_t *m)
{
    const ym_config *c = &m->cfg;
    m->n_channels_kept = (int64_t)c->n_layer * c->d_inner;
    m->n_states_live = m->n_channels_kept * c->d_state;
    m->n_scan_lanes = m->n_states_live;
}

ym_err ym_model_load(const char *dir, ym_model_t **out, ym_diag *diag)
{
    return ym_model_load_as(dir, YM_WT_AUTO, out, diag);
}

ym_err ym_model_load_as(const char *dir, ym_wtype wt, ym_model_t **out, ym_diag *diag)
{
    ym_model_t *m;
    ym_err err;
    char *path = NULL;
    *out = NULL;
    if ((m = calloc(1, sizeof(*m))) == NULL)
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    size_t n = strlen(dir) + sizeof("/config.json");
    if ((path = malloc(n)) == NULL) {
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
        goto fail;
    }
    snprintf(path, n, "%s/config.json", dir);
    if ((err = ym_config_load(path, &m->cfg, diag)) != YM_OK)
        goto fail;
    ym_st_set_t *st;
    if ((err = ym_st_set_open_dir(dir, &st, diag)) != YM_OK)
        goto fail;
    m->st = st;
    m->wtype = wt == YM_WT_AUTO ? auto_type(st) : wt;
    if ((err = bind_model(m, diag)) != YM_OK)
        goto fail;
    count_bytes(m);
    dense_counts(m);
    atomic_init(&m->refcount, 1);
    free(path);
    *out = m;
    return YM_OK;
fail:
    free(path);
    model_destroy(m);
    return err;
}

/* ---- random models --------------------------------------------------------------------- */

/* splitmix64 in counter form: value i depends only on (seed, i), so the fill loop carries no
 * dependency from one element to the next. */
static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct rng {
    uint64_t seed;
    uint64_t ctr;
} rng;

/* Uniform in [0, 1) with 24 random bits: exactly representable in f32. */
static inline float u01(uint64_t bits)
{
    return (float)(bits >> 40) * (1.0f / 16777216.0f);
}

/* Hot for large random models (130M values): two floats per 64-bit draw. */
static void fill_uniform(rng *g, float *p, size_t n, float a)
{
    const uint64_t gamma = 0x9e3779b97f4a7c15ull;
    uint64_t base = g->seed + g->ctr * gamma;
    size_t pairs = n / 2;
    for (size_t i = 0; i < pairs; i++) {
        uint64_t z = mix64(base + (uint64_t)(i + 1) * gamma);
        p[2 * i] = a * (2.0f * u01(z << 24) - 1.0f);
        p[2 * i + 1] = a * (2.0f * u01(z) - 1.0f);
    }
    if (n & 1)
        p[n - 1] = a * (2.0f * u01(mix64(base + (uint64_t)(pairs + 1) * gamma)) - 1.0f);
    g->ctr += pairs + 2;
}

static void fill_const(float *p, size_t n, float v)
{
    for (size_t i = 0; i < n; i++)
        p[i] = v;
}

/* A random matrix [N, K] ~ U(-a, a) in type wt: filled in place when f32, else through tmp
 * (f32, at least N*K) and converted. */
static bool random_w(ym_model_t *m, rng *g, ym_wtype wt, int64_t N, int64_t K, float a,
                     float *tmp, ym_weight *out)
{
    size_t n = (size_t)N * (size_t)K;
    out->type = wt;
    out->n_rows = (int)N;
    out->n_cols = (int)K;
    out->scale = NULL;
    if (wt == YM_WT_F32) {
        float *p = owned_alloc(m, n);
        if (p == NULL)
            return false;
        fill_uniform(g, p, n, a);
        out->data = p;
        return true;
    }
    void *p = owned_alloc_bytes(m, n * ym_wtype_size(wt));
    float *sc = wt == YM_WT_INT8 ? owned_alloc(m, (size_t)N) : NULL;
    if (p == NULL || (wt == YM_WT_INT8 && sc == NULL))
        return false;
    fill_uniform(g, tmp, n, a);
    (void)ym_weight_convert(wt, tmp, (size_t)K, (int)N, (int)K, p, sc, NULL); /* finite */
    out->data = p;
    out->scale = sc;
    return true;
}

/* A random Mamba-2 model (m->cfg, m->wtype set): matrices ~ U(-1/sqrt(fan_in), ..), norms 1,
 * conv ~ U(-1/sqrt(d_conv), ..), A_log = log(1..n_head) spread as mamba_ssm's A_init_range
 * (1, 16), D = 1, dt_bias = softplus^-1 of a log-uniform dt in [1e-3, 1e-1]. */
static bool random_m2(ym_model_t *m, rng *g, float *tmp)
{
    const ym_config *c = &m->cfg;
    const ym_wtype wt = m->wtype;
    const size_t dm = (size_t)c->d_model, di = (size_t)c->d_inner, h = (size_t)c->n_head;
    const size_t cd = (size_t)ym_config_conv_channels(c), n_in = di + cd + h;
    const size_t k = (size_t)c->d_conv, nv = (size_t)c->n_vocab;
    const float bound_dm = 1.0f / sqrtf((float)dm), bound_di = 1.0f / sqrtf((float)di);
    const float bound_k = 1.0f / sqrtf((float)k);
    if (!random_w(m, g, wt, (int64_t)nv, (int64_t)dm, bound_dm, tmp, &m->embed))
        return false;
    for (int l = 0; l < c->n_layer; l++) {
        ym_layer *L = &m->layers[l];
        float *p;
        L->d_inner = c->d_inner;
        if ((p = owned_alloc(m, dm)) == NULL)
            return false;
        fill_const(p, dm, 1.0f);
        L->norm = p;
        if (!random_w(m, g, wt, (int64_t)n_in, (int64_t)dm, bound_dm, tmp, &L->in_proj))
            return false;
        if (c->use_bias) {
            if ((p = owned_alloc(m, n_in)) == NULL)
                return false;
            fill_uniform(g, p, n_in, bound_dm);
            L->in_proj_b = p;
        }
        if ((p = owned_alloc(m, cd * k)) == NULL)
            return false;
        fill_uniform(g, p, cd * k, bound_k);
        L->conv_w = p;
        if (c->use_conv_bias) {
            if ((p = owned_alloc(m, cd)) == NULL)
                return false;
            fill_uniform(g, p, cd, bound_k);
            L->conv_b = p;
        }
        float *dtb = owned_alloc(m, h), *A = owned_alloc(m, h), *D = owned_alloc(m, h);
        float *gn = owned_alloc(m, di);
        if (dtb == NULL || A == NULL || D == NULL || gn == NULL)
            return false;
        fill_uniform(g, dtb, h, 1.0f);
        for (size_t i = 0; i < h; i++) {
            double u = 0.5 * ((double)dtb[i] + 1.0);
            double dt = exp(u * (log(0.1) - log(1e-3)) + log(1e-3));
            dtb[i] = (float)(dt + log(-expm1(-dt)));
            A[i] = -(1.0f + 15.0f * (float)i / (float)(h > 1 ? h - 1 : 1));
        }
        fill_const(D, h, 1.0f);
        fill_const(gn, di, 1.0f);
        L->dt_bias = dtb;
        L->A = A;
        L->D = D;
        L->gnorm = gn;
        if (!random_w(m, g, wt, (int64_t)dm, (int64_t)di, bound_di, tmp, &L->out_proj))
            return false;
        if (c->use_bias) {
            if ((p = owned_alloc(m, dm)) == NULL)
                return false;
            fill_uniform(g, p, dm, bound_di);
            L->out_proj_b = p;
        }
    }
    float *nf = owned_alloc(m, dm);
    if (nf == NULL)
        return false;
    fill_const(nf, dm, 1.0f);
    m->norm_f = nf;
    if (c->tie_embeddings)
        m->lm_head = m->embed;
    else if (!random_w(m, g, wt, (int64_t)nv, (int64_t)dm, bound_dm, tmp, &m->lm_head))
        return false;
    return true;
}

ym_err ym_model_new_random(const ym_config *cfg, uint64_t seed, ym_model_t **out, ym_diag *diag)
{
    return ym_model_new_random_as(cfg, seed, YM_WT_F32, out, diag);
}

ym_err ym_model_new_random_as(const ym_config *cfg, uint64_t seed, ym_wtype wt, ym_model_t **out,
                              ym_diag *diag)
{
    ym_model_t *m;
    ym_err err;
    float *tmp = NULL;
    *out = NULL;
    if ((err = ym__config_check(cfg, diag)) != YM_OK)
        return err;
    if ((m = calloc(1, sizeof(*m))) == NULL)
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    m->cfg = *cfg;
    m->wtype = wt == YM_WT_AUTO ? YM_WT_F32 : wt;
    wt = m->wtype;
    const ym_config *c = &m->cfg;
    const size_t dm = (size_t)c->d_model, di = (size_t)c->d_inner, ds = (size_t)c->d_state;
    const size_t r = (size_t)c->dt_rank, k = (size_t)c->d_conv, nv = (size_t)c->n_vocab;
    if ((m->layers = calloc((size_t)c->n_layer, sizeof(*m->layers))) == NULL)
        goto oom;
    if (wt != YM_WT_F32) {
        size_t big = nv * dm > 2 * di * dm ? nv * dm : 2 * di * dm;
        size_t n_in = di + (size_t)ym_config_conv_channels(c) + (size_t)c->n_head;
        if (c->arch == YM_ARCH_MAMBA2 && n_in * dm > big)
            big = n_in * dm;
        if ((tmp = malloc(sizeof(float) * big)) == NULL)
            goto oom;
    }
    if (c->arch == YM_ARCH_MAMBA2) {
        rng g2 = { .seed = mix64(seed ^ 0x6a09e667f3bcc909ull), .ctr = 0 };
        if (!random_m2(m, &g2, tmp))
            goto oom;
        goto done;
    }

    /* The small tensors, each rounded up to a cache line, in one allocation; the matrices
     * one by one in the served type. */
#define PAD(n) (((n) + 15) & ~(size_t)15)
    size_t per_layer = PAD(dm) + (c->use_bias ? PAD(2 * di) : 0) + PAD(di * k) +
                       (c->use_conv_bias ? PAD(di) : 0) + PAD(di * r) + PAD(di) + PAD(di * ds) +
                       PAD(di) + (c->use_bias ? PAD(dm) : 0);
    size_t total = PAD(dm) + per_layer * (size_t)c->n_layer;
    float *p = owned_alloc(m, total);
    if (p == NULL)
        goto oom;
    rng g = { .seed = mix64(seed ^ 0x6a09e667f3bcc909ull), .ctr = 0 };
#define TAKE(n) (p += PAD(n), p - PAD(n))
    const float bound_dm = 1.0f / sqrtf((float)dm), bound_di = 1.0f / sqrtf((float)di);
    if (!random_w(m, &g, wt, (int64_t)nv, (int64_t)dm, bound_dm, tmp, &m->embed))
        goto oom;
    for (int l = 0; l < c->n_layer; l++) {
        ym_layer *L = &m->layers[l];
        float *t;
        L->d_inner = c->d_inner;
        fill_const(t = TAKE(dm), dm, 1.0f);
        L->norm = t;
        if (!random_w(m, &g, wt, (int64_t)(2 * di), (int64_t)dm, bound_dm, tmp, &L->in_proj))
            goto oom;
        if (c->use_bias) {
            fill_uniform(&g, t = TAKE(2 * di), 2 * di, bound_dm);
            L->in_proj_b = t;
        }
        /* Conv1d with groups = d_inner: fan_in = 1 * d_conv, as PyTorch's default init. */
        const float bound_k = 1.0f / sqrtf((float)k);
        fill_uniform(&g, t = TAKE(di * k), di * k, bound_k);
        L->conv_w = t;
        if (c->use_conv_bias) {
            fill_uniform(&g, t = TAKE(di), di, bound_k);
            L->conv_b = t;
        }
        if (!random_w(m, &g, wt, (int64_t)(r + 2 * ds), (int64_t)di, bound_di, tmp, &L->x_proj))
            goto oom;
        fill_uniform(&g, t = TAKE(di * r), di * r, 1.0f / sqrtf((float)r));
        L->dt_proj_w = t;
        /* Mamba's dt init: dt log-uniform in [1e-3, 1e-1], floored at 1e-4, and the bias set to
         * softplus^-1(dt) = dt + log(-expm1(-dt)), so softplus(bias) starts at dt. */
        t = TAKE(di);
        fill_uniform(&g, t, di, 1.0f);
        for (size_t d = 0; d < di; d++) {
            double u = 0.5 * ((double)t[d] + 1.0);
            double dt = exp(u * (log(0.1) - log(1e-3)) + log(1e-3));
            if (dt < 1e-4)
                dt = 1e-4;
            t[d] = (float)(dt + log(-expm1(-dt)));
        }
        L->dt_proj_b = t;
        /* A_log[d, n] = log(n + 1) (S4D-real), so A[d, n] = -(n + 1). */
        t = TAKE(di * ds);
        for (size_t d = 0; d < di; d++)
            for (size_t n = 0; n < ds; n++)
                t[d * ds + n] = -expf(logf((float)(n + 1)));
        L->A = t;
        fill_const(t = TAKE(di), di, 1.0f);
        L->D = t;
        if (!random_w(m, &g, wt, (int64_t)dm, (int64_t)di, bound_di, tmp, &L->out_proj))
            goto oom;
        if (c->use_bias) {
            fill_uniform(&g, t = TAKE(dm), dm, bound_di);
            L->out_proj_b = t;
        }
    }
    float *nf = TAKE(dm);
    fill_const(nf, dm, 1.0f);
    m->norm_f = nf;
    if (c->tie_embeddings) {
        m->lm_head = m->embed;
    } else if (!random_w(m, &g, wt, (int64_t)nv, (int64_t)dm, bound_dm, tmp, &m->lm_head)) {
        goto oom;
    }
#undef TAKE
#undef PAD
done:
    free(tmp);
    m->n_params = ym_config_n_params(c);
    count_bytes(m);
    dense_counts(m);
    m->file_bytes = 0;
    atomic_init(&m->refcount, 1);
    *out = m;
    return YM_OK;
oom:
    free(tmp);
    model_destroy(m);
    return ym_diag_set(diag, YM_ENOMEM, "out of memory for a random model (%zu parameters)",
                       ym_config_n_params(cfg));
}
