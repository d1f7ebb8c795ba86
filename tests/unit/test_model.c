/* tests/unit/test_model.c - loading and binding model directories built here with ym_st_write,
 * and random models. */
#include <dirent.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/config.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "testutil.h"

/* ---- temp dirs ---------------------------------------------------------------------------- */

static char *tmpdir_new(void)
{
    char tmpl[] = "/tmp/ym-model-test-XXXXXX";
    char *d = mkdtemp(tmpl);
    ck_assert_ptr_nonnull(d);
    return strdup(d);
}

static void tmpdir_free(char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            ck_assert_int_eq(unlink(path), 0);
        }
    }
    closedir(d);
    ck_assert_int_eq(rmdir(dir), 0);
    free(dir);
}

/* ---- a tiny checkpoint, with its reference values --------------------------------------- */

enum { MAX_T = 64 };

typedef struct tiny {
    /* dimensions */
    int d_model, n_layer, n_vocab, d_state, d_conv, dt_rank, d_inner;
    bool tied, use_bias, state_spaces;
    ym_dtype dtype;
    /* tensors as written: name, shape, f32 values before the file's dtype */
    int n;
    char name[MAX_T][96];
    int n_dim[MAX_T];
    int64_t shape[MAX_T][4];
    float *val[MAX_T];
} tiny;

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static float frand(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float)((double)(rs >> 11) * 0x1p-53 * 2.0 - 1.0);
}

static void add(tiny *t, const char *name, int n_dim, int64_t a, int64_t b, int64_t c)
{
    ck_assert_int_lt(t->n, MAX_T);
    int i = t->n++;
    snprintf(t->name[i], sizeof(t->name[i]), "%s", name);
    t->n_dim[i] = n_dim;
    t->shape[i][0] = a;
    t->shape[i][1] = b;
    t->shape[i][2] = c;
    int64_t numel = 1;
    for (int d = 0; d < n_dim; d++)
        numel *= t->shape[i][d];
    t->val[i] = malloc((size_t)(numel > 0 ? numel : 1) * sizeof(float));
    for (int64_t k = 0; k < numel; k++)
        t->val[i][k] = frand();
}

static int find(const tiny *t, const char *name)
{
    for (int i = 0; i < t->n; i++)
        if (strcmp(t->name[i], name) == 0)
            return i;
    return -1;
}

static void drop(tiny *t, const char *name)
{
    int i = find(t, name);
    ck_assert_int_ge(i, 0);
    free(t->val[i]);
    t->n--;
    memmove(t->name[i], t->name[i + 1], (size_t)(t->n - i) * sizeof(t->name[0]));
    memmove(&t->n_dim[i], &t->n_dim[i + 1], (size_t)(t->n - i) * sizeof(t->n_dim[0]));
    memmove(t->shape[i], t->shape[i + 1], (size_t)(t->n - i) * sizeof(t->shape[0]));
    memmove(&t->val[i], &t->val[i + 1], (size_t)(t->n - i) * sizeof(t->val[0]));
}

static void tiny_init(tiny *t, ym_dtype dtype, bool tied)
{
    memset(t, 0, sizeof(*t));
    t->d_model = 12;
    t->n_layer = 2;
    t->n_vocab = 37;
    t->d_state = 4;
    t->d_conv = 3;
    t->dt_rank = 1; /* ceil(12 / 16) */
    t->d_inner = 24;
    t->tied = tied;
    t->dtype = dtype;
}

/* The tensor list for the current dimensions and flags. */
static void tiny_tensors(tiny *t)
{
    const int64_t dm = t->d_model, di = t->d_inner, ds = t->d_state, r = t->dt_rank;
    char n[96];
    add(t, t->state_spaces ? "backbone.embedding.weight" : "backbone.embeddings.weight", 2,
        t->n_vocab, dm, 0);
    for (int l = 0; l < t->n_layer; l++) {
#define L(s) (snprintf(n, sizeof(n), "backbone.layers.%d.%s", l, s), n)
        add(t, L("norm.weight"), 1, dm, 0, 0);
        add(t, L("mixer.in_proj.weight"), 2, 2 * di, dm, 0);
        if (t->use_bias)
            add(t, L("mixer.in_proj.bias"), 1, 2 * di, 0, 0);
        add(t, L("mixer.conv1d.weight"), 3, di, 1, t->d_conv);
        add(t, L("mixer.conv1d.bias"), 1, di, 0, 0);
        add(t, L("mixer.x_proj.weight"), 2, r + 2 * ds, di, 0);
        add(t, L("mixer.dt_proj.weight"), 2, di, r, 0);
        add(t, L("mixer.dt_proj.bias"), 1, di, 0, 0);
        add(t, L("mixer.A_log"), 2, di, ds, 0);
        add(t, L("mixer.D"), 1, di, 0, 0);
        add(t, L("mixer.out_proj.weight"), 2, dm, di, 0);
        if (t->use_bias)
            add(t, L("mixer.out_proj.bias"), 1, dm, 0, 0);
#undef L
    }
    add(t, "backbone.norm_f.weight", 1, dm, 0, 0);
    if (!t->tied)
        add(t, "lm_head.weight", 2, t->n_vocab, dm, 0);
}

static void tiny_free(tiny *t)
{
    for (int i = 0; i < t->n; i++)
        free(t->val[i]);
    t->n = 0;
}

/* Write config.json and model.safetensors in t->dtype. The values in t become what a reader
 * gets after converting back to f32. */
static void tiny_write(tiny *t, const char *dir)
{
    char path[4096], cfg[1024];
    if (t->state_spaces)
        snprintf(cfg, sizeof(cfg),
                 "{\"d_model\":%d,\"n_layer\":%d,\"vocab_size\":%d,\"pad_vocab_size_multiple\":1,"
                 "\"ssm_cfg\":{\"d_state\":%d,\"d_conv\":%d,\"expand\":%d,\"bias\":%s},"
                 "\"tie_embeddings\":%s,\"rms_norm\":true}",
                 t->d_model, t->n_layer, t->n_vocab, t->d_state, t->d_conv,
                 t->d_inner / t->d_model, t->use_bias ? "true" : "false",
                 t->tied ? "true" : "false");
    else
        snprintf(cfg, sizeof(cfg),
                 "{\"model_type\":\"mamba\",\"hidden_size\":%d,\"num_hidden_layers\":%d,"
                 "\"vocab_size\":%d,\"state_size\":%d,\"conv_kernel\":%d,\"intermediate_size\":%d,"
                 "\"time_step_rank\":\"auto\",\"use_bias\":%s,\"tie_word_embeddings\":%s,"
                 "\"torch_dtype\":\"%s\"}",
                 t->d_model, t->n_layer, t->n_vocab, t->d_state, t->d_conv, t->d_inner,
                 t->use_bias ? "true" : "false", t->tied ? "true" : "false",
                 t->dtype == YM_DT_BF16 ? "bfloat16" : "float32");
    snprintf(path, sizeof(path), "%s/config.json", dir);
    FILE *fp = fopen(path, "w");
    ck_assert_ptr_nonnull(fp);
    fputs(cfg, fp);
    fclose(fp);

    ym_st_wtensor w[MAX_T];
    void *bufs[MAX_T];
    for (int i = 0; i < t->n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < t->n_dim[i]; d++)
            numel *= t->shape[i][d];
        w[i] = (ym_st_wtensor){ .name = t->name[i], .dtype = t->dtype, .n_dim = t->n_dim[i] };
        memcpy(w[i].shape, t->shape[i], sizeof(t->shape[i]));
        if (t->dtype == YM_DT_BF16) {
            uint16_t *b = malloc((size_t)numel * 2 + 2);
            for (int64_t k = 0; k < numel; k++) {
                b[k] = ym_f32_to_bf16(t->val[i][k]);
                t->val[i][k] = ym_bf16_to_f32(b[k]);
            }
            bufs[i] = b;
        } else if (t->dtype == YM_DT_I32) {
            int32_t *b = calloc((size_t)numel + 1, 4);
            for (int64_t k = 0; k < numel; k++)
                t->val[i][k] = 0.0f;
            bufs[i] = b;
        } else {
            bufs[i] = NULL;
        }
        w[i].data = bufs[i] != NULL ? bufs[i] : t->val[i];
    }
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_st_write(path, w, t->n, NULL, 0, &diag), YM_OK);
    for (int i = 0; i < t->n; i++)
        free(bufs[i]);
}

/* ---- mapping names to the model's pointers ---------------------------------------------- */

static const struct {
    const char *suffix;
    size_t off;
    bool w; /* a ym_weight (else const float *) */
} layer_fields[] = {
    { "norm.weight", offsetof(ym_layer, norm), false },
    { "mixer.in_proj.weight", offsetof(ym_layer, in_proj), true },
    { "mixer.in_proj.bias", offsetof(ym_layer, in_proj_b), false },
    { "mixer.conv1d.weight", offsetof(ym_layer, conv_w), false },
    { "mixer.conv1d.bias", offsetof(ym_layer, conv_b), false },
    { "mixer.x_proj.weight", offsetof(ym_layer, x_proj), true },
    { "mixer.dt_proj.weight", offsetof(ym_layer, dt_proj_w), false },
    { "mixer.dt_proj.bias", offsetof(ym_layer, dt_proj_b), false },
    { "mixer.A_log", offsetof(ym_layer, A), false },
    { "mixer.D", offsetof(ym_layer, D), false },
    { "mixer.out_proj.weight", offsetof(ym_layer, out_proj), true },
    { "mixer.out_proj.bias", offsetof(ym_layer, out_proj_b), false },
};

/* A tensor of the model: f32 (f) or a weight matrix (w). */
typedef struct mref {
    const float *f;
    const ym_weight *w;
} mref;

static float mval(mref r, int64_t k)
{
    if (r.f != NULL)
        return r.f[k];
    return ym_weight_at(r.w, (int)(k / r.w->n_cols), (int)(k % r.w->n_cols));
}

static const void *mdata(mref r)
{
    return r.f != NULL ? (const void *)r.f : r.w != NULL ? r.w->data : NULL;
}

static mref model_ptr(const ym_model_t *m, const char *name)
{
    int l, off = 0;
    if (strcmp(name, "backbone.embeddings.weight") == 0 ||
        strcmp(name, "backbone.embedding.weight") == 0)
        return (mref){ NULL, &m->embed };
    if (strcmp(name, "backbone.norm_f.weight") == 0)
        return (mref){ m->norm_f, NULL };
    if (strcmp(name, "lm_head.weight") == 0)
        return (mref){ NULL, &m->lm_head };
    ck_assert_int_eq(sscanf(name, "backbone.layers.%d.%n", &l, &off), 1);
    ck_assert_int_lt(l, m->cfg.n_layer);
    for (size_t i = 0; i < sizeof(layer_fields) / sizeof(layer_fields[0]); i++)
        if (strcmp(name + off, layer_fields[i].suffix) == 0) {
            const char *base = (const char *)&m->layers[l] + layer_fields[i].off;
            if (layer_fields[i].w)
                return (mref){ NULL, (const ym_weight *)base };
            return (mref){ *(const float *const *)base, NULL };
        }
    ck_abort_msg("no field for %s", name);
    return (mref){ NULL, NULL };
}

/* Load dir and check every tensor against t, and the model's counts against t's shapes. */
static void check_loaded(const tiny *t, const char *dir)
{
    ym_model_t *m;
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_msg(ym_model_load(dir, &m, &diag) == YM_OK, "%s", diag.msg);
    ck_assert_int_eq(m->cfg.n_vocab, t->n_vocab);
    ck_assert_int_eq(m->cfg.d_inner, t->d_inner);
    size_t n_params = 0, file_bytes = 0, state_floats = 0;
    for (int i = 0; i < t->n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < t->n_dim[i]; d++)
            numel *= t->shape[i][d];
        n_params += (size_t)numel;
        file_bytes += (size_t)numel * ym_dtype_size(t->dtype);
        mref p = model_ptr(m, t->name[i]);
        ck_assert_ptr_nonnull(mdata(p));
        bool is_alog = strstr(t->name[i], "A_log") != NULL;
        for (int64_t k = 0; k < numel; k++) {
            float want = is_alog ? -expf(t->val[i][k]) : t->val[i][k];
            ck_assert_msg(mval(p, k) == want, "%s[%lld]: %g != %g", t->name[i], (long long)k,
                          (double)mval(p, k), (double)want);
        }
        /* F32 from an aligned mapping is used in place, and so are BF16 matrices (served as
         * bf16 by default); everything else is a converted copy. */
        const ym_st_tensor *st = ym_st_set_find(m->st, t->name[i]);
        ck_assert_ptr_nonnull(st);
        if ((t->dtype == YM_DT_F32 && !is_alog) || (t->dtype == YM_DT_BF16 && p.w != NULL))
            ck_assert_ptr_eq(mdata(p), st->data);
        else
            ck_assert_ptr_ne(mdata(p), st->data);
        if (strstr(t->name[i], "conv1d.weight") != NULL)
            state_floats += (size_t)(t->shape[i][0] * (t->shape[i][2] - 1));
        if (is_alog)
            state_floats += (size_t)numel;
    }
    if (t->tied) {
        ck_assert_ptr_eq(m->lm_head.data, m->embed.data);
        if (find(t, "lm_head.weight") >= 0) { /* present but ignored: counted on disk only */
            n_params -= (size_t)t->n_vocab * (size_t)t->d_model;
        }
    }
    ck_assert_uint_eq(m->n_params, n_params);
    ck_assert_uint_eq(ym_config_n_params(&m->cfg), n_params);
    ck_assert_uint_eq(m->file_bytes, file_bytes);
    ck_assert_uint_eq(ym_config_state_bytes(&m->cfg), state_floats * sizeof(float));
    size_t embed = t->tied ? 0 : (size_t)t->n_vocab * (size_t)t->d_model;
    if (t->dtype != YM_DT_BF16) {
        ck_assert_uint_eq(m->weight_bytes, (n_params - embed) * sizeof(float));
    } else { /* the matrices at 2 bytes, the rest at 4 */
        size_t mat = 0;
        for (int l = 0; l < m->cfg.n_layer; l++)
            mat += (size_t)(2 * m->cfg.d_inner * m->cfg.d_model +
                            (m->cfg.dt_rank + 2 * m->cfg.d_state) * m->cfg.d_inner +
                            m->cfg.d_model * m->cfg.d_inner);
        mat += (size_t)t->n_vocab * (size_t)t->d_model;
        ck_assert_uint_eq(m->weight_bytes, (n_params - embed - mat) * 4 + mat * 2);
    }
    ck_assert_ptr_eq(ym_model_ref(m), m);
    ck_assert_int_eq(atomic_load(&m->refcount), 2);
    ym_model_unref(m);
    ym_model_unref(m);
    ym_model_unref(NULL);
    ck_assert_ptr_null(ym_model_ref(NULL));
}

START_TEST(test_model_load_binds_every_tensor_f32_bf16_tied_untied)
{
    const ym_dtype dts[] = { YM_DT_F32, YM_DT_BF16 };
    for (int k = 0; k < 2; k++) {
        for (int tied = 0; tied < 2; tied++) {
            for (int bias = 0; bias < 2; bias++) {
                char *dir = tmpdir_new();
                tiny t;
                tiny_init(&t, dts[k], tied);
                t.use_bias = bias;
                tiny_tensors(&t);
                tiny_write(&t, dir);
                check_loaded(&t, dir);
                tiny_free(&t);
                tmpdir_free(dir);
            }
        }
    }
}
END_TEST

START_TEST(test_model_load_state_spaces_checkpoint)
{
    char *dir = tmpdir_new();
    tiny t;
    tiny_init(&t, YM_DT_F32, true);
    t.state_spaces = true;
    tiny_tensors(&t);
    tiny_write(&t, dir);
    check_loaded(&t, dir);
    tiny_free(&t);
    tmpdir_free(dir);
}
END_TEST

START_TEST(test_model_load_ignores_lm_head_of_a_tied_checkpoint)
{
    char *dir = tmpdir_new();
    tiny t;
    tiny_init(&t, YM_DT_BF16, true);
    tiny_tensors(&t);
    add(&t, "lm_head.weight", 2, t.n_vocab, t.d_model, 0);
    tiny_write(&t, dir);
    /* check_loaded compares lm_head against the file's lm_head values; a tied model's lm_head
     * is the embedding instead, so compare that directly. */
    ym_model_t *m;
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_msg(ym_model_load(dir, &m, &diag) == YM_OK, "%s", diag.msg);
    ck_assert_ptr_eq(m->lm_head.data, m->embed.data);
    ck_assert_uint_eq(m->n_params, ym_config_n_params(&m->cfg));
    ym_model_unref(m);
    tiny_free(&t);
    tmpdir_free(dir);
}
END_TEST

/* Build the tiny model, let edit change it, and expect YM_EFORMAT naming want (and want2). */
static void expect_bad_model(bool tied, void (*edit)(tiny *), const char *want, const char *want2)
{
    char *dir = tmpdir_new();
    tiny t;
    tiny_init(&t, YM_DT_F32, tied);
    tiny_tensors(&t);
    edit(&t);
    tiny_write(&t, dir);
    ym_model_t *m = (ym_model_t *)1;
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_model_load(dir, &m, &diag), YM_EFORMAT);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(diag.msg, want) != NULL, "'%s' lacks '%s'", diag.msg, want);
    if (want2 != NULL)
        ck_assert_msg(strstr(diag.msg, want2) != NULL, "'%s' lacks '%s'", diag.msg, want2);
    tiny_free(&t);
    tmpdir_free(dir);
}

static void edit_drop_D(tiny *t)
{
    drop(t, "backbone.layers.1.mixer.D");
}
static void edit_drop_embed(tiny *t)
{
    drop(t, "backbone.embeddings.weight");
}
static void edit_drop_norm_f(tiny *t)
{
    drop(t, "backbone.norm_f.weight");
}
static void edit_drop_lm_head(tiny *t)
{
    drop(t, "lm_head.weight");
}
static void edit_extra(tiny *t)
{
    add(t, "backbone.layers.0.mixer.extra.weight", 1, 3, 0, 0);
}
static void edit_extra_layer(tiny *t)
{
    add(t, "backbone.layers.2.norm.weight", 1, t->d_model, 0, 0);
}
static void edit_unwanted_bias(tiny *t)
{
    add(t, "backbone.layers.1.mixer.out_proj.bias", 1, t->d_model, 0, 0);
}
static void edit_both_embeddings(tiny *t)
{
    add(t, "backbone.embedding.weight", 2, t->n_vocab, t->d_model, 0);
}
static void edit_x_proj_shape(tiny *t)
{
    int i = find(t, "backbone.layers.0.mixer.x_proj.weight");
    t->shape[i][0] += 1;
    free(t->val[i]);
    t->val[i] = calloc((size_t)(t->shape[i][0] * t->shape[i][1]), sizeof(float));
}
static void edit_conv_rank(tiny *t)
{
    int i = find(t, "backbone.layers.1.mixer.conv1d.weight");
    t->n_dim[i] = 2; /* [d_inner, 1] instead of [d_inner, 1, d_conv]: fewer values, still valid */
}
static void edit_lm_head_rows(tiny *t)
{
    int i = find(t, "lm_head.weight");
    t->shape[i][0] += 1;
    free(t->val[i]);
    t->val[i] = calloc((size_t)(t->shape[i][0] * t->shape[i][1]), sizeof(float));
}
static void edit_embed_rank(tiny *t)
{
    int i = find(t, "backbone.embeddings.weight");
    t->n_dim[i] = 1;
}

START_TEST(test_model_load_rejects_missing_extra_and_misshaped_tensors)
{
    char want[128], want2[128];
    expect_bad_model(true, edit_drop_D, "backbone.layers.1.mixer.D", "missing");
    expect_bad_model(true, edit_drop_embed, "backbone.embeddings.weight", "missing");
    expect_bad_model(true, edit_drop_norm_f, "backbone.norm_f.weight", "missing");
    expect_bad_model(false, edit_drop_lm_head, "lm_head.weight", "missing");
    expect_bad_model(true, edit_extra, "backbone.layers.0.mixer.extra.weight", "unexpected");
    expect_bad_model(true, edit_extra_layer, "backbone.layers.2.norm.weight", "unexpected");
    expect_bad_model(true, edit_unwanted_bias, "backbone.layers.1.mixer.out_proj.bias",
                     "unexpected");
    expect_bad_model(true, edit_both_embeddings, "backbone.embedding.weight", "unexpected");
    /* Shape errors give both shapes, in PyTorch order. */
    tiny t;
    tiny_init(&t, YM_DT_F32, true);
    int rows = t.dt_rank + 2 * t.d_state;
    snprintf(want, sizeof(want), "shape [%d, %d]", rows + 1, t.d_inner);
    snprintf(want2, sizeof(want2), "want [%d, %d]", rows, t.d_inner);
    expect_bad_model(true, edit_x_proj_shape, want, want2);
    expect_bad_model(true, edit_x_proj_shape, "backbone.layers.0.mixer.x_proj.weight", NULL);
    snprintf(want, sizeof(want), "shape [%d, 1]", t.d_inner);
    snprintf(want2, sizeof(want2), "want [%d, 1, %d]", t.d_inner, t.d_conv);
    expect_bad_model(true, edit_conv_rank, want, want2);
    snprintf(want, sizeof(want), "shape [%d, %d]", t.n_vocab + 1, t.d_model);
    snprintf(want2, sizeof(want2), "want [%d, %d]", t.n_vocab, t.d_model);
    expect_bad_model(false, edit_lm_head_rows, "lm_head.weight", want);
    expect_bad_model(false, edit_lm_head_rows, want2, NULL);
    expect_bad_model(true, edit_embed_rank, "backbone.embeddings.weight", NULL);
}
END_TEST

START_TEST(test_model_load_rejects_non_float_dtype_and_bad_config)
{
    char *dir = tmpdir_new();
    tiny t;
    tiny_init(&t, YM_DT_I32, true);
    tiny_tensors(&t);
    tiny_write(&t, dir);
    ym_model_t *m;
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_model_load(dir, &m, &diag), YM_EFORMAT);
    ck_assert_ptr_nonnull(strstr(diag.msg, "I32"));
    ck_assert_ptr_nonnull(strstr(diag.msg, "backbone.embeddings.weight"));

    /* A config whose sizes disagree with the tensors: the first mismatch is named. */
    tiny_free(&t);
    tiny_init(&t, YM_DT_F32, true);
    tiny_tensors(&t);
    tiny_write(&t, dir);
    char path[4096];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    FILE *fp = fopen(path, "w");
    fputs("{\"hidden_size\":12,\"num_hidden_layers\":2,\"vocab_size\":37,\"state_size\":5}", fp);
    fclose(fp);
    ck_assert_int_eq(ym_model_load(dir, &m, &diag), YM_EFORMAT);
    ck_assert_ptr_nonnull(strstr(diag.msg, "backbone.layers.0.mixer"));

    fp = fopen(path, "w");
    fputs("{\"model_type\":\"mamba2\"}", fp);
    fclose(fp);
    ck_assert_int_eq(ym_model_load(dir, &m, &diag), YM_EFORMAT);
    ck_assert_ptr_nonnull(strstr(diag.msg, "Mamba-2"));
    unlink(path);
    ck_assert_int_eq(ym_model_load(dir, &m, &diag), YM_ENOENT);
    ck_assert_ptr_nonnull(strstr(diag.msg, "config.json"));
    tiny_free(&t);
    tmpdir_free(dir);
}
END_TEST

/* ---- random models ------------------------------------------------------------------------- */

static ym_config tiny_config(void)
{
    ym_config c = { .d_model = 12, .n_layer = 2, .d_inner = 24, .d_state = 4, .d_conv = 3,
                    .dt_rank = 1, .n_vocab = 37, .use_conv_bias = true, .tie_embeddings = false,
                    .norm_eps = 1e-5f, .bos_id = -1, .eos_id = -1, .pad_id = -1 };
    return c;
}

/* Every tensor of a model as (pointer, numel, fan_in) in a fixed order; returns the count. */
typedef struct view {
    const void *p;
    size_t n;
    const char *what;
} view;

static int model_views(const ym_model_t *m, view *v)
{
    const ym_config *c = &m->cfg;
    size_t dm = (size_t)c->d_model, di = (size_t)c->d_inner, ds = (size_t)c->d_state;
    size_t r = (size_t)c->dt_rank, k = (size_t)c->d_conv, nv = (size_t)c->n_vocab;
    int n = 0;
    v[n++] = (view){ m->embed.data, nv * dm, "embed" };
    for (int l = 0; l < c->n_layer; l++) {
        const ym_layer *L = &m->layers[l];
        v[n++] = (view){ L->norm, dm, "norm" };
        v[n++] = (view){ L->in_proj.data, 2 * di * dm, "in_proj" };
        if (c->use_bias)
            v[n++] = (view){ L->in_proj_b, 2 * di, "in_proj_b" };
        v[n++] = (view){ L->conv_w, di * k, "conv_w" };
        if (c->use_conv_bias)
            v[n++] = (view){ L->conv_b, di, "conv_b" };
        v[n++] = (view){ L->x_proj.data, (r + 2 * ds) * di, "x_proj" };
        v[n++] = (view){ L->dt_proj_w, di * r, "dt_proj_w" };
        v[n++] = (view){ L->dt_proj_b, di, "dt_proj_b" };
        v[n++] = (view){ L->A, di * ds, "A" };
        v[n++] = (view){ L->D, di, "D" };
        v[n++] = (view){ L->out_proj.data, dm * di, "out_proj" };
        if (c->use_bias)
            v[n++] = (view){ L->out_proj_b, dm, "out_proj_b" };
    }
    v[n++] = (view){ m->norm_f, dm, "norm_f" };
    v[n++] = (view){ m->lm_head.data, nv * dm, "lm_head" };
    return n;
}

START_TEST(test_model_new_random_is_deterministic_per_seed)
{
    ym_config c = tiny_config();
    c.use_bias = true;
    ym_model_t *a, *b, *o;
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_model_new_random(&c, 42, &a, &diag), YM_OK);
    ck_assert_int_eq(ym_model_new_random(&c, 42, &b, &diag), YM_OK);
    ck_assert_int_eq(ym_model_new_random(&c, 43, &o, &diag), YM_OK);
    view va[64], vb[64], vd[64];
    int n = model_views(a, va);
    ck_assert_int_eq(model_views(b, vb), n);
    ck_assert_int_eq(model_views(o, vd), n);
    size_t total = 0;
    int n_differ = 0;
    for (int i = 0; i < n; i++) {
        total += va[i].n;
        ck_assert_int_eq(memcmp(va[i].p, vb[i].p, va[i].n * sizeof(float)), 0);
        n_differ += memcmp(va[i].p, vd[i].p, va[i].n * sizeof(float)) != 0;
    }
    /* Untied: the head is its own table; every random tensor changes with the seed. */
    ck_assert_ptr_ne(a->lm_head.data, a->embed.data);
    ck_assert_int_eq(n_differ, 2 + c.n_layer * 9); /* all but norms, A and D */
    ck_assert_uint_eq(a->n_params, total);
    ck_assert_uint_eq(a->n_params, ym_config_n_params(&c));
    ck_assert_uint_eq(a->file_bytes, 0);

    /* Mamba's init: A = -(n + 1), D = 1, norms = 1, softplus(dt bias) in [1e-3, 1e-1], weights
     * inside +-1/sqrt(fan_in). */
    for (int l = 0; l < c.n_layer; l++) {
        const ym_layer *L = &a->layers[l];
        for (int d = 0; d < c.d_inner; d++) {
            for (int s = 0; s < c.d_state; s++)
                ck_assert_float_eq_tol(L->A[d * c.d_state + s], -(float)(s + 1), 1e-5f);
            ck_assert(L->D[d] == 1.0f);
            double dt = log1p(exp((double)L->dt_proj_b[d]));
            ck_assert_msg(dt > 0.999e-3 && dt < 1.001e-1, "dt %g", dt);
        }
        for (int i = 0; i < c.d_model; i++)
            ck_assert(L->norm[i] == 1.0f);
        float bound = 1.0f / sqrtf((float)c.d_model);
        float mx = 0;
        for (size_t i = 0; i < (size_t)(2 * c.d_inner * c.d_model); i++)
            mx = fmaxf(mx, fabsf(((const float *)L->in_proj.data)[i]));
        ck_assert(mx <= bound && mx > 0.5f * bound);
    }
    ym_model_unref(a);
    ym_model_unref(b);
    ym_model_unref(o);

    c.d_state = 0;
    ck_assert_int_eq(ym_model_new_random(&c, 1, &a, &diag), YM_EFORMAT);
    ck_assert_ptr_null(a);
    ck_assert_ptr_nonnull(strstr(diag.msg, "state_size"));
}
END_TEST

START_TEST(test_model_new_random_allocates_mamba_130m_shapes)
{
    static const char *json =
        "{\"hidden_size\":768,\"num_hidden_layers\":24,\"vocab_size\":50280,\"state_size\":16,"
        "\"expand\":2,\"conv_kernel\":4,\"time_step_rank\":\"auto\"}";
    ym_config c;
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_config_parse(json, strlen(json), &c, &diag), YM_OK);
    ym_model_t *m;
    ck_assert_int_eq(ym_model_new_random(&c, 7, &m, &diag), YM_OK);
    ck_assert_uint_eq(m->n_params, ym_config_n_params(&c));
    ck_assert_uint_eq(m->weight_bytes, m->n_params * sizeof(float)); /* tied */
    /* The last tensor written is filled too (the allocation was carved to the end). */
    ck_assert(m->norm_f[c.d_model - 1] == 1.0f);
    ck_assert(((const float *)m->layers[23].out_proj.data)[(size_t)c.d_model * (size_t)c.d_inner - 1] !=
              0.0f);
    ym_model_unref(m);
}
END_TEST

/* ---- int8 checkpoints (docs/FORMATS.md) --------------------------------------------------- */

enum { Q_OK, Q_NO_SCALE, Q_SCALE_SHAPE, Q_SCALE_DTYPE, Q_SCALE_NEG, Q_SCALE_NAN, Q_I8_NORM };

static bool is_matrix(const char *name)
{
    return strstr(name, "in_proj.weight") || strstr(name, "x_proj.weight") ||
           strstr(name, "out_proj.weight") || strstr(name, "embeddings.weight") ||
           strstr(name, "lm_head.weight");
}

/* Write into dir the tiny model t as an int8 checkpoint (matrices quantized as m holds them,
 * m loaded with int8 matrices), spoiled as `how` says. */
static void write_int8(tiny *t, const ym_model_t *m, const char *dir, int how)
{
    tiny_write(t, dir); /* config.json (and an f32 file, replaced below) */
    ym_st_wtensor w[2 * MAX_T];
    static float bad_scale[64];
    static int8_t norm_q[64];
    int n = 0;
    char names[MAX_T][112];
    for (int i = 0; i < t->n; i++) {
        const ym_weight *mw = NULL;
        int l = -1;
        if (sscanf(t->name[i], "backbone.layers.%d.", &l) == 1 && is_matrix(t->name[i])) {
            const ym_layer *L = &m->layers[l];
            mw = strstr(t->name[i], "in_proj") ? &L->in_proj
                 : strstr(t->name[i], "x_proj") ? &L->x_proj : &L->out_proj;
        } else if (is_matrix(t->name[i])) {
            mw = strstr(t->name[i], "lm_head") ? &m->lm_head : &m->embed;
        }
        w[n] = (ym_st_wtensor){ .name = t->name[i], .dtype = YM_DT_F32, .n_dim = t->n_dim[i],
                                .data = t->val[i] };
        memcpy(w[n].shape, t->shape[i], sizeof(t->shape[i]));
        if (how == Q_I8_NORM && strcmp(t->name[i], "backbone.layers.1.norm.weight") == 0) {
            w[n].dtype = YM_DT_I8;
            w[n].data = norm_q;
        }
        n++;
        if (mw == NULL)
            continue;
        ck_assert_int_eq(mw->type, YM_WT_INT8);
        w[n - 1].dtype = YM_DT_I8;
        w[n - 1].data = mw->data;
        bool target = strcmp(t->name[i], "backbone.layers.1.mixer.x_proj.weight") == 0;
        if (target && how == Q_NO_SCALE)
            continue;
        snprintf(names[i], sizeof(names[i]), "%s_scale", t->name[i]);
        w[n] = (ym_st_wtensor){ .name = names[i], .dtype = YM_DT_F32, .n_dim = 1,
                                .shape = { mw->n_rows }, .data = mw->scale };
        if (target && how == Q_SCALE_SHAPE)
            w[n].shape[0] = mw->n_rows - 1;
        if (target && how == Q_SCALE_DTYPE)
            w[n].dtype = YM_DT_I32;
        if (target && (how == Q_SCALE_NEG || how == Q_SCALE_NAN)) {
            memcpy(bad_scale, mw->scale, sizeof(float) * (size_t)mw->n_rows);
            bad_scale[2] = how == Q_SCALE_NEG ? -1.0f : NAN;
            w[n].data = bad_scale;
        }
        n++;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_msg(ym_st_write(path, w, n, NULL, 0, &diag) == YM_OK, "%s", diag.msg);
}

START_TEST(test_model_load_int8_checkpoint_in_place_and_validated)
{
    char *src = tmpdir_new(), *dir = tmpdir_new();
    tiny t;
    tiny_init(&t, YM_DT_F32, false);
    tiny_tensors(&t);
    tiny_write(&t, src);
    ym_model_t *q, *m, *f;
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_model_load_as(src, YM_WT_INT8, &q, &diag), YM_OK);
    ck_assert_int_eq(q->wtype, YM_WT_INT8);
    /* Every int8 value within half a step of the f32 one, the step max|row| / 127. */
    const ym_weight *w = &q->layers[0].in_proj;
    const float *ref = t.val[find(&t, "backbone.layers.0.mixer.in_proj.weight")];
    for (int r = 0; r < w->n_rows; r++) {
        float amax = 0;
        for (int k = 0; k < w->n_cols; k++)
            amax = fmaxf(amax, fabsf(ref[(size_t)r * w->n_cols + k]));
        ck_assert_float_eq_tol(w->scale[r], amax / 127.0f, 1e-7f);
        for (int k = 0; k < w->n_cols; k++)
            ck_assert(fabsf(ym_weight_at(w, r, k) - ref[(size_t)r * w->n_cols + k]) <=
                      0.5001f * w->scale[r]);
    }

    /* The checkpoint loads as int8 by default, in place, with the very same values. */
    write_int8(&t, q, dir, Q_OK);
    ck_assert_msg(ym_model_load(dir, &m, &diag) == YM_OK, "%s", diag.msg);
    ck_assert_int_eq(m->wtype, YM_WT_INT8);
    const ym_st_tensor *st = ym_st_set_find(m->st, "backbone.layers.1.mixer.out_proj.weight");
    ck_assert_ptr_eq(m->layers[1].out_proj.data, st->data);
    ck_assert_uint_eq(m->weight_bytes, q->weight_bytes);
    for (int l = 0; l < t.n_layer; l++) {
        const ym_weight *a[] = { &q->layers[l].in_proj, &q->layers[l].x_proj,
                                 &q->layers[l].out_proj };
        const ym_weight *b[] = { &m->layers[l].in_proj, &m->layers[l].x_proj,
                                 &m->layers[l].out_proj };
        for (int j = 0; j < 3; j++) {
            ck_assert_int_eq(memcmp(a[j]->data, b[j]->data, ym_weight_bytes(a[j]) -
                                    sizeof(float) * (size_t)a[j]->n_rows), 0);
            ck_assert_int_eq(memcmp(a[j]->scale, b[j]->scale,
                                    sizeof(float) * (size_t)a[j]->n_rows), 0);
        }
    }
    /* Loaded as f32: each value is q * scale exactly. */
    ck_assert_int_eq(ym_model_load_as(dir, YM_WT_F32, &f, &diag), YM_OK);
    w = &m->layers[1].x_proj;
    for (int r = 0; r < w->n_rows; r++)
        for (int k = 0; k < w->n_cols; k++)
            ck_assert(ym_weight_at(&f->layers[1].x_proj, r, k) == ym_weight_at(w, r, k));
    ym_model_unref(f);
    ym_model_unref(m);

    static const struct {
        int how;
        const char *want, *want2;
    } bad[] = {
        { Q_NO_SCALE, "backbone.layers.1.mixer.x_proj.weight", "without its scale" },
        { Q_SCALE_SHAPE, "backbone.layers.1.mixer.x_proj.weight_scale", "want F32 [" },
        { Q_SCALE_DTYPE, "backbone.layers.1.mixer.x_proj.weight_scale", "I32" },
        { Q_SCALE_NEG, "backbone.layers.1.mixer.x_proj.weight_scale", ">= 0" },
        { Q_SCALE_NAN, "backbone.layers.1.mixer.x_proj.weight_scale", "finite" },
        { Q_I8_NORM, "backbone.layers.1.norm.weight", "I8" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_int8(&t, q, dir, bad[i].how);
        m = (ym_model_t *)1;
        ck_assert_int_eq(ym_model_load(dir, &m, &diag), YM_EFORMAT);
        ck_assert_ptr_null(m);
        ck_assert_msg(strstr(diag.msg, bad[i].want) && strstr(diag.msg, bad[i].want2),
                      "case %zu: '%s'", i, diag.msg);
    }
    ym_model_unref(q);
    tiny_free(&t);
    tmpdir_free(src);
    tmpdir_free(dir);
}
END_TEST

START_TEST(test_model_types_count_their_bytes)
{
    ym_config c = tiny_config();
    ym_model_t *m[3];
    ym_diag diag = { { 0 }, { 0 } };
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(ym_model_new_random_as(&c, 9, (ym_wtype)i, &m[i], &diag), YM_OK);
    size_t mat = 0;
    for (int l = 0; l < c.n_layer; l++)
        mat += (size_t)(2 * c.d_inner * c.d_model + (c.dt_rank + 2 * c.d_state) * c.d_inner +
                        c.d_model * c.d_inner);
    size_t head = (size_t)c.n_vocab * c.d_model, rows = (size_t)c.n_layer *
                  (2 * c.d_inner + c.dt_rank + 2 * c.d_state + c.d_model) + c.n_vocab;
    size_t rest = m[0]->weight_bytes - 4 * (mat + head);
    ck_assert_uint_eq(m[1]->weight_bytes, rest + 2 * (mat + head));
    ck_assert_uint_eq(m[2]->weight_bytes, rest + (mat + head) + 4 * rows);
    /* Same random values: bf16 and int8 are roundings of the f32 ones. */
    const ym_weight *w0 = &m[0]->layers[1].out_proj, *w2 = &m[2]->layers[1].out_proj;
    for (int r = 0; r < w0->n_rows; r++)
        for (int k = 0; k < w0->n_cols; k++) {
            ck_assert(fabsf(ym_weight_at(w0, r, k) - ym_weight_at(w2, r, k)) <=
                      0.5001f * w2->scale[r]);
            float b = ym_weight_at(&m[1]->layers[1].out_proj, r, k), a = ym_weight_at(w0, r, k);
            ck_assert(fabsf(b - a) <= fabsf(a) * (1.0f / 256.0f));
        }
    for (int i = 0; i < 3; i++)
        ym_model_unref(m[i]);
}
END_TEST

Suite *model_suite(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_model_load_binds_every_tensor_f32_bf16_tied_untied);
    tcase_add_test(tc, test_model_load_state_spaces_checkpoint);
    tcase_add_test(tc, test_model_load_ignores_lm_head_of_a_tied_checkpoint);
    tcase_add_test(tc, test_model_load_rejects_missing_extra_and_misshaped_tensors);
    tcase_add_test(tc, test_model_load_rejects_non_float_dtype_and_bad_config);
    tcase_add_test(tc, test_model_new_random_is_deterministic_per_seed);
    tcase_add_test(tc, test_model_new_random_allocates_mamba_130m_shapes);
    tcase_add_test(tc, test_model_load_int8_checkpoint_in_place_and_validated);
    tcase_add_test(tc, test_model_types_count_their_bytes);
    suite_add_tcase(s, tc);
    return s;
}
