/* tests/unit/test_adapters.c - PEFT adapters (adapters/) applied unmerged by the engine.
 *
 * tests/fixtures/peft/ is made by tests/fixtures/make_peft_fixtures.py with peft 0.21 on the
 * conformance bases: LoRA on all four projections, rsLoRA with a regex target, rank_pattern /
 * alpha_pattern / layers_to_transform, IA³ output and input scaling, a hybrid set and a
 * composition of four adapters. Reference logits: float64 evaluation of the merged weights
 * (cross-checked there against PEFT's merge_and_unload()). Here:
 *   - every case's logits (one prefill, and token by token) are within the manifest's
 *     atol_tight (20 x the float32 rounding error measured there), largest difference printed;
 *   - a ragged batch mixing base rows, two adapters and a composition gives each sequence the
 *     logits it gets alone;
 *   - every malformed adapter the loader must refuse, written here, is refused with a message
 *     naming the problem. */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapters/adapter.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/state.h"
#include "testutil.h"

#define PEFT_DIR YM_FIXTURE_DIR "/peft"
#define M40 YM_FIXTURE_DIR "/conformance/m40-bias-k3-f32"

static double max_diff_f64(const float *c, const double *ref, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)c[i] - ref[i]);
        if (!(d <= m))
            m = d;
    }
    return m;
}

static double max_diff_f32(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m))
            m = d;
    }
    return m;
}

static ym_model_t *load_model(const char *dir)
{
    ym_model_t *m = NULL;
    ym_diag d = {0};
    ck_assert_msg(ym_model_load(dir, &m, &d) == YM_OK, "%s: %s", dir, d.msg);
    return m;
}

static ym_adapter_t *load_adapter(const char *dir, ym_model_t *m)
{
    ym_adapter_t *a = NULL;
    ym_diag d = {0};
    ym_err e = ym_adapter_load(dir, m, NULL, &a, &d);
    ck_assert_msg(e == YM_OK, "%s: %s (%s)", dir, d.msg, ym_err_name(e));
    return a;
}

/* Logits [T, V] of ids run as one prefill (or one token at a time) with adapter a. */
static void run_seq(ym_ctx_t *ctx, ym_model_t *m, const ym_adapt *a, const int32_t *ids, int T,
                    int token_by_token, float *logits)
{
    ym_state_t *s = NULL;
    ck_assert_int_eq(ym_state_new(&m->cfg, &s), YM_OK);
    ym_diag d = {0};
    const ym_adapt *ads[1] = {a};
    int V = m->cfg.n_vocab;
    if (!token_by_token) {
        int st[2] = {0, T};
        ym_batch b = {.n_seq = 1, .tokens = ids, .seq_start = st, .states = &s,
                      .logits = YM_LOGITS_ALL, .adapters = ads};
        ck_assert_msg(ym_forward(ctx, &b, logits, &d) == YM_OK, "%s", d.msg);
    } else {
        int one[2] = {0, 1};
        for (int t = 0; t < T; t++) {
            ym_batch b = {.n_seq = 1, .tokens = ids + t, .seq_start = one, .states = &s,
                          .logits = YM_LOGITS_LAST, .adapters = ads};
            ck_assert_msg(ym_forward(ctx, &b, logits + (size_t)t * V, &d) == YM_OK, "%s", d.msg);
        }
    }
    ym_state_free(s);
}

/* ---- conformance with PEFT ------------------------------------------------------------------ */

static void check_case(json_t *e)
{
    const char *name = json_string_value(json_object_get(e, "name"));
    const char *base = json_string_value(json_object_get(e, "base"));
    const char *lpath = json_string_value(json_object_get(e, "logits"));
    const char *set = json_string_value(json_object_get(e, "set"));
    double atol = json_real_value(json_object_get(e, "atol_tight"));
    json_t *ads = json_object_get(e, "adapters");
    ck_assert_msg(name && base && lpath && atol > 0 && json_array_size(ads) >= 1,
                  "manifest entry incomplete");
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", PEFT_DIR, base);
    ym_model_t *m = load_model(path);

    /* the adapter: a set directory, one PEFT directory, or a composition of several */
    ym_adapter_t *a = NULL;
    ym_diag d = {0};
    int n = (int)json_array_size(ads);
    ym_adapter_t *parts[8] = {0};
    ck_assert_int_le(n, 8);
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/%s", PEFT_DIR, json_string_value(json_array_get(ads, i)));
        parts[i] = load_adapter(path, m);
    }
    if (set != NULL) {
        snprintf(path, sizeof(path), "%s/%s", PEFT_DIR, set);
        a = load_adapter(path, m);
    } else if (n == 1) {
        a = ym_adapter_ref(parts[0]);
    } else {
        ck_assert_msg(ym_adapter_compose(parts, n, &a, &d) == YM_OK, "%s", d.msg);
    }
    ym_adapter_info info;
    ym_adapter_info_get(a, &info);
    ck_assert_int_eq(info.n_parts, n);

    ym_st_set_t *ref = NULL;
    snprintf(path, sizeof(path), "%s/%s", PEFT_DIR, lpath);
    ck_assert_msg(ym_st_set_open_file(path, &ref, &d) == YM_OK, "%s", d.msg);
    const ym_st_tensor *ids_t = ym_st_set_find(ref, "ids"), *lg_t = ym_st_set_find(ref, "logits");
    ck_assert(ids_t != NULL && lg_t != NULL && ids_t->dtype == YM_DT_I32 &&
              lg_t->dtype == YM_DT_F64);
    int T = (int)ids_t->shape[0], V = (int)lg_t->shape[1];
    ck_assert_int_eq(V, m->cfg.n_vocab);
    const int32_t *ids = ids_t->data;
    const double *want = lg_t->data;

    float *lg = malloc(sizeof(float) * (size_t)T * V);
    double worst[3] = {0};
    /* a batch context (packed kernel), 2 threads; then a one-row context (sgemv path) */
    ym_ctx_t *ctx = NULL, *ctx1 = NULL;
    ck_assert_int_eq(ym_ctx_new(m, T, 2, &ctx), YM_OK);
    ck_assert_int_eq(ym_ctx_new(m, 1, 1, &ctx1), YM_OK);
    run_seq(ctx, m, ym_adapter_applied(a), ids, T, 0, lg);
    worst[0] = max_diff_f64(lg, want, (size_t)T * V);
    run_seq(ctx, m, ym_adapter_applied(a), ids, T, 1, lg);
    worst[1] = max_diff_f64(lg, want, (size_t)T * V);
    run_seq(ctx1, m, ym_adapter_applied(a), ids, T, 1, lg);
    worst[2] = max_diff_f64(lg, want, (size_t)T * V);
    /* the base model gives other logits: the comparison can fail */
    run_seq(ctx, m, NULL, ids, T, 0, lg);
    double base_diff = max_diff_f64(lg, want, (size_t)T * V);
    printf("adapters %-18s prefill max|diff| %.2e  decode %.2e  1-row %.2e  atol %.1e  "
           "(base model: %.2f)\n", name, worst[0], worst[1], worst[2], atol, base_diff);
    ck_assert_msg(worst[0] <= atol, "%s: prefill logits off by %g > %g", name, worst[0], atol);
    ck_assert_msg(worst[1] <= atol, "%s: decode logits off by %g > %g", name, worst[1], atol);
    ck_assert_msg(worst[2] <= atol, "%s: 1-row logits off by %g > %g", name, worst[2], atol);
    ck_assert_msg(base_diff > 100 * atol, "%s: the adapter changes nothing", name);
    free(lg);
    ym_st_set_free(ref);
    ym_ctx_free(ctx);
    ym_ctx_free(ctx1);
    ym_adapter_unref(a);
    for (int i = 0; i < n; i++)
        ym_adapter_unref(parts[i]);
    ym_model_unref(m);
}

START_TEST(test_adapters_every_peft_fixture_matches_merged_float64_reference)
{
    json_error_t je;
    json_t *man = json_load_file(PEFT_DIR "/manifest.json", 0, &je);
    ck_assert_msg(man != NULL, "tests/fixtures/peft/manifest.json: %s", je.text);
    json_t *cases = json_object_get(man, "cases");
    ck_assert_msg(json_array_size(cases) >= 7, "expected the fixture cases in the manifest");
    size_t i;
    json_t *e;
    json_array_foreach(cases, i, e) check_case(e);
    json_decref(man);
}
END_TEST

/* ---- mixed batches ----------------------------------------------------------------------- */

START_TEST(test_adapters_mixed_batch_rows_equal_each_sequence_alone)
{
    ym_model_t *m = load_model(M40);
    ym_adapter_t *x = load_adapter(PEFT_DIR "/lora-all4-m40", m);
    ym_adapter_t *y = load_adapter(PEFT_DIR "/ia3-ff-m40", m);
    ym_adapter_t *io = load_adapter(PEFT_DIR "/ia3-out-m40", m);
    ym_adapter_t *lx = load_adapter(PEFT_DIR "/lora-x-m40", m);
    ym_adapter_t *parts[3] = {lx, io, x}, *z = NULL;
    ym_diag d = {0};
    ck_assert_int_eq(ym_adapter_compose(parts, 3, &z, &d), YM_OK);
    ym_adapter_t *hy = load_adapter(PEFT_DIR "/hybrid-m40", m);

    enum { NS = 6 };
    const ym_adapt *ads[NS] = {NULL, ym_adapter_applied(x), ym_adapter_applied(y),
                               ym_adapter_applied(z), NULL, ym_adapter_applied(hy)};
    const int len[NS] = {3, 1, 4, 2, 1, 5};
    int32_t toks[32];
    int st[NS + 1] = {0};
    for (int i = 0; i < NS; i++)
        st[i + 1] = st[i] + len[i];
    int R = st[NS], V = m->cfg.n_vocab;
    for (int r = 0; r < R; r++)
        toks[r] = (int32_t)((r * 977 + 13) % 4000);
    ym_ctx_t *ctx = NULL;
    ck_assert_int_eq(ym_ctx_new(m, R, 2, &ctx), YM_OK);
    ym_state_t *s[NS];
    for (int i = 0; i < NS; i++)
        ck_assert_int_eq(ym_state_new(&m->cfg, &s[i]), YM_OK);
    float *lg = malloc(sizeof(float) * (size_t)R * V), *alone = malloc(sizeof(float) * 8 * V);
    ym_batch b = {.n_seq = NS, .tokens = toks, .seq_start = st, .states = s,
                  .logits = YM_LOGITS_ALL, .adapters = ads};
    ck_assert_msg(ym_forward(ctx, &b, lg, &d) == YM_OK, "%s", d.msg);
    double worst = 0, scale = 0;
    for (int i = 0; i < NS; i++) {
        run_seq(ctx, m, ads[i], toks + st[i], len[i], 0, alone);
        double dd = max_diff_f32(lg + (size_t)st[i] * V, alone, (size_t)len[i] * V);
        for (size_t k = 0; k < (size_t)len[i] * V; k++)
            scale = fmax(scale, fabs(alone[k]));
        if (dd > worst)
            worst = dd;
    }
    /* a decode step on top of those states, still mixed: equals each sequence's own decode */
    int one_st[NS + 1];
    int32_t next[NS];
    for (int i = 0; i <= NS; i++)
        one_st[i] = i;
    for (int i = 0; i < NS; i++)
        next[i] = (int32_t)(100 + 37 * i);
    ym_batch b2 = {.n_seq = NS, .tokens = next, .seq_start = one_st, .states = s,
                   .logits = YM_LOGITS_LAST, .adapters = ads};
    ck_assert_msg(ym_forward(ctx, &b2, lg, &d) == YM_OK, "%s", d.msg);
    double worst2 = 0;
    for (int i = 0; i < NS; i++) {
        int32_t seq[8];
        memcpy(seq, toks + st[i], sizeof(int32_t) * len[i]);
        seq[len[i]] = next[i];
        run_seq(ctx, m, ads[i], seq, len[i] + 1, 0, alone);
        double dd = max_diff_f32(lg + (size_t)i * V, alone + (size_t)len[i] * V, V);
        if (dd > worst2)
            worst2 = dd;
    }
    /* rows of different adapters really differ (the test can fail) */
    run_seq(ctx, m, NULL, toks + st[1], len[1], 0, alone);
    run_seq(ctx, m, ads[1], toks + st[1], len[1], 0, alone + V);
    double differ = max_diff_f32(alone, alone + V, V);
    printf("adapters mixed batch: prefill max|diff| vs alone %.2e, decode %.2e (scale %.1f; "
           "adapter vs base %.2f)\n", worst, worst2, scale, differ);
    ck_assert_msg(worst <= 1e-5 * fmax(1.0, scale), "mixed prefill differs by %g", worst);
    ck_assert_msg(worst2 <= 1e-5 * fmax(1.0, scale), "mixed decode differs by %g", worst2);
    ck_assert(differ > 0.1);
    for (int i = 0; i < NS; i++)
        ym_state_free(s[i]);
    free(lg);
    free(alone);
    ym_ctx_free(ctx);
    ym_adapter_unref(hy);
    ym_adapter_unref(z);
    ym_adapter_unref(lx);
    ym_adapter_unref(io);
    ym_adapter_unref(y);
    ym_adapter_unref(x);
    ym_model_unref(m);
}
END_TEST

START_TEST(test_adapters_set_equals_composition_of_its_parts_and_refs_outlive_callers)
{
    ym_model_t *m = load_model(M40);
    ym_adapter_t *set = load_adapter(PEFT_DIR "/hybrid-m40", m);
    ym_adapter_t *p[2] = {load_adapter(PEFT_DIR "/hybrid-m40/lora", m),
                          load_adapter(PEFT_DIR "/hybrid-m40/ia3", m)};
    ym_adapter_t *c = NULL;
    ck_assert_int_eq(ym_adapter_compose(p, 2, &c, NULL), YM_OK);
    ym_adapter_unref(p[0]); /* the composition keeps its own references */
    ym_adapter_unref(p[1]);
    ym_model_unref(m);      /* and the adapters keep the model */
    const ym_adapt *A = ym_adapter_applied(set), *B = ym_adapter_applied(c);
    ck_assert_int_eq(A->n_layer, B->n_layer);
    ym_config cfg = {.d_model = A->d_model, .d_inner = A->d_inner, .d_state = A->d_state,
                     .dt_rank = A->dt_rank, .n_layer = A->n_layer};
    for (int k = 0; k < A->n_layer * YM_PROJ_N; k++) {
        const ym_adapt_proj *a = &A->proj[k], *b = &B->proj[k];
        ym_proj pj = (ym_proj)(k % YM_PROJ_N);
        size_t ni = (size_t)ym_proj_n_in(&cfg, pj), no = (size_t)ym_proj_n_out(&cfg, pj);
        ck_assert_int_eq(a->r, b->r);
        ck_assert_int_eq(a->g_in == NULL, b->g_in == NULL);
        ck_assert_int_eq(a->g_out == NULL, b->g_out == NULL);
        if (a->r > 0) {
            ck_assert(memcmp(a->At, b->At, sizeof(float) * ni * a->r) == 0);
            ck_assert(memcmp(a->Bt, b->Bt, sizeof(float) * no * a->r) == 0);
        }
        if (a->g_out)
            ck_assert(memcmp(a->g_out, b->g_out, sizeof(float) * no) == 0);
    }
    ym_adapter_info info;
    ym_adapter_info_get(set, &info);
    ck_assert_str_eq(info.kind, "set");
    ck_assert_int_eq(info.n_parts, 2);
    ck_assert(info.n_params > 0 && info.r_max == 4);
    ym_adapter_unref(set);
    ym_adapter_unref(c);
}
END_TEST

/* ---- rejections: adapters written here ------------------------------------------------------
 * A small LoRA for m40-bias-k3-f32 (d_model 40, d_inner 80, dt_rank 3, 2 layers): r = 2 on
 * in_proj of both layers, unless a test changes the config or the tensors. */

static char *tmp_new(void)
{
    char tmpl[] = "/tmp/ym-adapter-test-XXXXXX";
    char *d = mkdtemp(tmpl);
    ck_assert_ptr_nonnull(d);
    return strdup(d);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void tmp_free(char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static const char *LORA_CFG =
    "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"in_proj\"],"
    " \"bias\": \"none\", \"fan_in_fan_out\": false, \"modules_to_save\": null,"
    " \"use_rslora\": false, \"rank_pattern\": {}, \"alpha_pattern\": {}}";

enum { MUT_NONE, MUT_NAN, MUT_INF, MUT_SHAPE, MUT_MISSING, MUT_EXTRA, MUT_EMBED, MUT_RANK2_3 };

/* LoRA tensors for in_proj of layers 0 and 1 (r = 2), changed as mut says. */
static void write_lora_tensors(const char *dir, int mut)
{
    static float A[2][3 * 41], B[2][160 * 3], E[8];
    ym_st_wtensor t[6];
    int n = 0;
    for (int i = 0; i < 3 * 41; i++)
        A[0][i] = A[1][i] = 0.01f * (float)((i * 7) % 13 - 6);
    for (int i = 0; i < 160 * 3; i++)
        B[0][i] = B[1][i] = 0.02f * (float)((i * 5) % 11 - 5);
    for (int l = 0; l < 2; l++) {
        if (mut == MUT_MISSING && l == 1)
            break;
        int r = mut == MUT_RANK2_3 ? 3 : 2, in = mut == MUT_SHAPE && l == 1 ? 41 : 40;
        static char names[4][128];
        snprintf(names[2 * l], 128, "base_model.model.backbone.layers.%d.mixer.in_proj.lora_A.weight", l);
        snprintf(names[2 * l + 1], 128, "base_model.model.backbone.layers.%d.mixer.in_proj.lora_B.weight", l);
        t[n++] = (ym_st_wtensor){names[2 * l], YM_DT_F32, 2, {r, in}, A[l]};
        t[n++] = (ym_st_wtensor){names[2 * l + 1], YM_DT_F32, 2, {160, r}, B[l]};
    }
    if (mut == MUT_NAN)
        A[1][5] = NAN;
    if (mut == MUT_INF)
        B[0][7] = -INFINITY;
    if (mut == MUT_EXTRA)
        t[n++] = (ym_st_wtensor){"base_model.model.backbone.layers.0.mixer.x_proj.lora_A.weight",
                                 YM_DT_F32, 2, {2, 4}, E};
    if (mut == MUT_EMBED)
        t[n++] = (ym_st_wtensor){"base_model.model.backbone.embeddings.lora_embedding_A",
                                 YM_DT_F32, 2, {2, 4}, E};
    char path[4096];
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    ym_diag d = {0};
    ck_assert_msg(ym_st_write(path, t, n, NULL, 0, &d) == YM_OK, "%s", d.msg);
}

/* Load dir against m40 and expect err with a message containing want. */
static void expect_refused(const char *dir, const ym_adapter_limits *lim, ym_err err,
                           const char *want)
{
    ym_model_t *m = load_model(M40);
    ym_adapter_t *a = (ym_adapter_t *)1;
    ym_diag d = {0};
    ym_err e = ym_adapter_load(dir, m, lim, &a, &d);
    ck_assert_msg(e == err, "want %s (%s), got %s: %s", ym_err_name(err), want, ym_err_name(e),
                  d.msg);
    ck_assert_ptr_null(a);
    ck_assert_msg(strstr(d.msg, want) != NULL, "message \"%s\" does not mention \"%s\"", d.msg,
                  want);
    ym_model_unref(m);
}

static void refuse_config(const char *cfg, const char *want)
{
    char *dir = tmp_new();
    write_text(dir, "adapter_config.json", cfg);
    write_lora_tensors(dir, MUT_NONE);
    expect_refused(dir, NULL, YM_EFORMAT, want);
    tmp_free(dir);
}

static void refuse_tensors(int mut, const char *want)
{
    char *dir = tmp_new();
    write_text(dir, "adapter_config.json", LORA_CFG);
    write_lora_tensors(dir, mut);
    expect_refused(dir, NULL, YM_EFORMAT, want);
    tmp_free(dir);
}

START_TEST(test_adapters_written_lora_loads_and_changes_logits)
{
    char *dir = tmp_new();
    write_text(dir, "adapter_config.json", LORA_CFG);
    write_lora_tensors(dir, MUT_NONE);
    ym_model_t *m = load_model(M40);
    ym_adapter_t *a = load_adapter(dir, m);
    ym_adapter_info info;
    ym_adapter_info_get(a, &info);
    ck_assert_str_eq(info.kind, "lora");
    ck_assert_int_eq(info.r_max, 2);
    ck_assert_uint_eq(info.targets, 1u << YM_PROJ_IN);
    ck_assert_uint_eq(info.n_params, 2 * (2 * 40 + 160 * 2));
    /* the limit on the rank */
    ym_adapter_limits lim = {.r_max = 1};
    expect_refused(dir, &lim, YM_EFORMAT, "over the limit");
    ym_adapter_unref(a);
    ym_model_unref(m);
    tmp_free(dir);
}
END_TEST

START_TEST(test_adapters_refuse_bad_configs)
{
    refuse_config("{\"peft_type\": \"LOHA\", \"r\": 2, \"target_modules\": [\"in_proj\"]}",
                  "peft_type");
    refuse_config("{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": [\"q_proj\"]}",
                  "unknown target module \"q_proj\"");
    refuse_config("{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": [\"conv1d\"]}",
                  "conv1d");
    refuse_config("{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": \".*\"}",
                  "yunmin adapts only");
    refuse_config("{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": [\"in_proj\"],"
                  " \"modules_to_save\": [\"lm_head\"]}", "modules_to_save");
    refuse_config("{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": [\"in_proj\"],"
                  " \"fan_in_fan_out\": true}", "fan_in_fan_out");
    refuse_config("{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": [\"in_proj\"],"
                  " \"bias\": \"all\"}", "bias");
    refuse_config("{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": [\"in_proj\"],"
                  " \"use_dora\": true}", "use_dora");
    refuse_config("{\"peft_type\": \"LORA\", \"r\": 0, \"target_modules\": [\"in_proj\"]}",
                  "r must be");
    refuse_config("{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": [\"in_proj\"],"
                  " \"layers_to_transform\": [0, 2]}", "layers_to_transform");
    refuse_config("{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": \"(?P<x>in_proj)\"}",
                  "not supported");
    refuse_config("{\"peft_type\": \"IA3\", \"target_modules\": [\"in_proj\"],"
                  " \"feedforward_modules\": [\"out_proj\"]}", "not in target_modules");
    refuse_config("{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": [\"in_proj\"]", "line");
    /* rank of the tensors disagrees with the config's (rank_pattern applied) */
    refuse_config("{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": [\"in_proj\"],"
                  " \"rank_pattern\": {\"layers.1.mixer.in_proj\": 4}}", "adapter_config.json says 4");
}
END_TEST

START_TEST(test_adapters_refuse_bad_tensors)
{
    refuse_tensors(MUT_NAN, "NaN");
    refuse_tensors(MUT_INF, "infinite");
    refuse_tensors(MUT_SHAPE, "the base model wants [2, 40]");
    refuse_tensors(MUT_MISSING, "missing tensor base_model.model.backbone.layers.1.mixer.in_proj");
    refuse_tensors(MUT_EXTRA, "extra tensor");
    refuse_tensors(MUT_EMBED, "embeddings");
    refuse_tensors(MUT_RANK2_3, "rank 3");
}
END_TEST

START_TEST(test_adapters_refuse_lying_safetensors_and_missing_files)
{
    char *dir = tmp_new();
    write_text(dir, "adapter_config.json", LORA_CFG);
    write_lora_tensors(dir, MUT_NONE);
    /* cut the file short: the header's offsets now point past its end */
    char path[4096];
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(truncate(path, st.st_size - 4), 0);
    expect_refused(dir, NULL, YM_EFORMAT, "adapter_model.safetensors");
    /* a header claiming more bytes than the file has */
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    unsigned char big[8] = {0xff, 0xff, 0xff, 0, 0, 0, 0, 0};
    fwrite(big, 1, 8, f);
    fclose(f);
    expect_refused(dir, NULL, YM_EFORMAT, "adapter_model.safetensors");
    unlink(path);
    write_text(dir, "adapter_model.bin", "pickle");
    expect_refused(dir, NULL, YM_EFORMAT, "pickle");
    unlink(path);
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    unlink(path);
    expect_refused(dir, NULL, YM_EFORMAT, "neither adapter_config.json");
    tmp_free(dir);
}
END_TEST

START_TEST(test_adapters_refuse_bad_sets)
{
    char *dir = tmp_new(), sub[1024];
    snprintf(sub, sizeof(sub), "%s/a", dir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    write_text(sub, "adapter_config.json", LORA_CFG);
    write_lora_tensors(sub, MUT_NONE);
    write_text(dir, "adapter_set.json",
               "{\"format\": \"yunmin-adapter-set\", \"version\": 1, \"adapters\": [\"../a\"]}");
    expect_refused(dir, NULL, YM_EFORMAT, "sub-directory name");
    write_text(dir, "adapter_set.json",
               "{\"format\": \"yunmin-adapter-set\", \"version\": 2, \"adapters\": [\"a\"]}");
    expect_refused(dir, NULL, YM_EFORMAT, "version");
    write_text(dir, "adapter_set.json",
               "{\"format\": \"yunmin-adapter-set\", \"version\": 1, \"adapters\": [\"a\", \"b\"]}");
    expect_refused(dir, NULL, YM_EFORMAT, "/b");
    write_text(dir, "adapter_set.json", "{\"format\": \"yunmin-adapter-set\", \"version\": 1, "
                                        "\"adapters\": [\"a\"], \"extra\": 1}");
    expect_refused(dir, NULL, YM_EFORMAT, "unknown key");
    write_text(dir, "adapter_set.json",
               "{\"format\": \"yunmin-adapter-set\", \"version\": 1, \"adapters\": [\"a\"]}");
    ym_model_t *m = load_model(M40);
    ym_adapter_t *a = load_adapter(dir, m);
    ym_adapter_unref(a);
    ym_model_unref(m);
    tmp_free(dir);
}
END_TEST

START_TEST(test_adapters_forward_refuses_adapter_of_another_model)
{
    ym_model_t *m40 = load_model(M40);
    ym_model_t *m37 = load_model(YM_FIXTURE_DIR "/conformance/m37-odd-n5-k2-f32");
    ym_adapter_t *a = load_adapter(PEFT_DIR "/lora-all4-m40", m40);
    /* loading it against the other model is refused too */
    ym_adapter_t *b = NULL;
    ym_diag d = {0};
    ck_assert_int_eq(ym_adapter_load(PEFT_DIR "/lora-all4-m40", m37, NULL, &b, &d), YM_EFORMAT);
    ck_assert_msg(strstr(d.msg, "the base model wants") != NULL, "%s", d.msg);
    ym_ctx_t *ctx = NULL;
    ck_assert_int_eq(ym_ctx_new(m37, 4, 1, &ctx), YM_OK);
    ym_state_t *s = NULL;
    ck_assert_int_eq(ym_state_new(&m37->cfg, &s), YM_OK);
    const ym_adapt *ads[1] = {ym_adapter_applied(a)};
    int32_t tok = 5;
    int st[2] = {0, 1};
    float *lg = malloc(sizeof(float) * m37->cfg.n_vocab);
    ym_batch bt = {.n_seq = 1, .tokens = &tok, .seq_start = st, .states = &s,
                   .logits = YM_LOGITS_LAST, .adapters = ads};
    ck_assert_int_eq(ym_forward(ctx, &bt, lg, &d), YM_EINVAL);
    ck_assert_int_eq(s->n_tokens, 0);
    free(lg);
    ym_state_free(s);
    ym_ctx_free(ctx);
    ym_adapter_unref(a);
    ym_model_unref(m37);
    ym_model_unref(m40);
}
END_TEST

START_TEST(test_adapters_config_resolution_follows_peft_rules)
{
    /* regex target (Python syntax), first-match rank_pattern, alpha_pattern */
    const char *cfg =
        "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": "
        "\"(?:backbone\\\\.)?layers\\\\.\\\\d+\\\\.mixer\\\\.(in|out)_proj\", "
        "\"rank_pattern\": {\"layers\\\\.[02]\\\\..*\": 8, \"in_proj\": 2}, "
        "\"alpha_pattern\": {\"out_proj\": 3.5}, \"layers_pattern\": [\"layers\"]}";
    ym_peft_config pc;
    ym_diag d = {0};
    ck_assert_msg(ym_peft_config_parse(cfg, strlen(cfg), &pc, &d) == YM_OK, "%s", d.msg);
    ym_peft_module mods[3 * YM_PROJ_N];
    ck_assert_msg(ym_peft_config_resolve(&pc, 3, mods, &d) == YM_OK, "%s", d.msg);
    /* layer 0: "layers.[02]..*" wins over "in_proj" (file order); layer 1: in_proj -> 2 */
    ck_assert(mods[0 * YM_PROJ_N + YM_PROJ_IN].targeted && mods[0 * YM_PROJ_N + YM_PROJ_IN].r == 8);
    ck_assert(mods[0 * YM_PROJ_N + YM_PROJ_OUT].r == 8);
    ck_assert(mods[1 * YM_PROJ_N + YM_PROJ_IN].r == 2 && mods[1 * YM_PROJ_N + YM_PROJ_OUT].r == 4);
    ck_assert(mods[1 * YM_PROJ_N + YM_PROJ_OUT].alpha == 3.5 &&
              mods[1 * YM_PROJ_N + YM_PROJ_IN].alpha == 8);
    ck_assert(!mods[0 * YM_PROJ_N + YM_PROJ_X].targeted && !mods[0 * YM_PROJ_N + YM_PROJ_DT].targeted);
    ck_assert(mods[2 * YM_PROJ_N + YM_PROJ_IN].targeted && mods[2 * YM_PROJ_N + YM_PROJ_IN].r == 8);
    ym_peft_config_deinit(&pc);
    /* layers_to_transform: suffix matches only; a full name is taken as is; not with a regex */
    const char *lt = "{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": [\"in_proj\", "
                     "\"backbone.layers.2.mixer.x_proj\"], \"layers_to_transform\": [0, 1]}";
    ck_assert_msg(ym_peft_config_parse(lt, strlen(lt), &pc, &d) == YM_OK, "%s", d.msg);
    ck_assert_msg(ym_peft_config_resolve(&pc, 3, mods, &d) == YM_OK, "%s", d.msg);
    ck_assert(mods[1 * YM_PROJ_N + YM_PROJ_IN].targeted && !mods[2 * YM_PROJ_N + YM_PROJ_IN].targeted);
    ck_assert(mods[2 * YM_PROJ_N + YM_PROJ_X].targeted && !mods[0 * YM_PROJ_N + YM_PROJ_X].targeted);
    ym_peft_config_deinit(&pc);
    const char *ltre = "{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": \".*in_proj\", "
                       "\"layers_to_transform\": 0}";
    ck_assert_int_eq(ym_peft_config_parse(ltre, strlen(ltre), &pc, &d), YM_OK);
    ck_assert_int_eq(ym_peft_config_resolve(&pc, 3, mods, &d), YM_EFORMAT);
    ck_assert_msg(strstr(d.msg, "layers_to_transform") != NULL, "%s", d.msg);
    ym_peft_config_deinit(&pc);
    /* list targets use PEFT's suffix rule: "mixer.x_proj" matches, "_proj" does not */
    const char *ia3 = "{\"peft_type\": \"IA3\", \"target_modules\": [\"mixer.x_proj\", "
                      "\"layers.2.mixer.out_proj\"], \"feedforward_modules\": \".*out_proj\"}";
    ck_assert_msg(ym_peft_config_parse(ia3, strlen(ia3), &pc, &d) == YM_OK, "%s", d.msg);
    ck_assert_msg(ym_peft_config_resolve(&pc, 3, mods, &d) == YM_OK, "%s", d.msg);
    for (int l = 0; l < 3; l++) {
        ck_assert(mods[l * YM_PROJ_N + YM_PROJ_X].targeted && !mods[l * YM_PROJ_N + YM_PROJ_X].ff);
        ck_assert_int_eq(mods[l * YM_PROJ_N + YM_PROJ_OUT].targeted, l == 2);
    }
    ck_assert(mods[2 * YM_PROJ_N + YM_PROJ_OUT].ff);
    ym_peft_config_deinit(&pc);
    const char *bad = "{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": [\"_proj\"]}";
    ck_assert_int_eq(ym_peft_config_parse(bad, strlen(bad), &pc, &d), YM_OK);
    ck_assert_int_eq(ym_peft_config_resolve(&pc, 3, mods, &d), YM_EFORMAT);
    ck_assert_msg(strstr(d.msg, "unknown target module \"_proj\"") != NULL, "%s", d.msg);
    ym_peft_config_deinit(&pc);
}
END_TEST

/* Any rank, any split: a random LoRA applied unmerged equals the double-precision reference
 * forward of a copy of the model with the adapter merged into its weights. Ranks 80 (above
 * the forward's split-product limit of 64: whole products per thread) and 24 (not a multiple
 * of the kernels' 8/16 lanes), 1 to 3 threads, decode and prefill. */
START_TEST(test_adapters_random_lora_any_rank_equals_merged_weights)
{
    const int ranks[2] = {80, 24};
    for (int ri = 0; ri < 2; ri++) {
        ym_config cfg;
        memset(&cfg, 0, sizeof(cfg));
        cfg.d_model = 32;
        cfg.n_layer = 2;
        cfg.d_inner = 64;
        cfg.d_state = 8;
        cfg.d_conv = 4;
        cfg.dt_rank = 4;
        cfg.n_vocab = 50;
        cfg.use_bias = 1;
        cfg.use_conv_bias = 1;
        cfg.tie_embeddings = 1;
        cfg.norm_eps = 1e-5f;
        cfg.bos_id = cfg.eos_id = cfg.pad_id = -1;
        ym_model_t *m = NULL, *merged = NULL;
        ym_diag d = {0};
        ck_assert_int_eq(ym_model_new_random(&cfg, 7, &m, &d), YM_OK);
        ck_assert_int_eq(ym_model_new_random(&cfg, 7, &merged, &d), YM_OK);
        ym_adapter_t *a = NULL;
        ck_assert_msg(ym_adapter_new_random_lora(m, ranks[ri], (1u << YM_PROJ_N) - 1, 3, &a,
                                                 &d) == YM_OK, "%s", d.msg);
        const ym_adapt *ad = ym_adapter_applied(a);
        /* W += Bt^T At^T (the scale is inside Bt); the random model owns its weights */
        for (int l = 0; l < cfg.n_layer; l++) {
            ym_layer *L = &merged->layers[l];
            float *W[YM_PROJ_N] = {(float *)L->in_proj.data, (float *)L->x_proj.data,
                                   (float *)L->dt_proj_w, (float *)L->out_proj.data};
            for (int p = 0; p < YM_PROJ_N; p++) {
                const ym_adapt_proj *P = &ad->proj[l * YM_PROJ_N + p];
                int ni = ym_proj_n_in(&cfg, (ym_proj)p), no = ym_proj_n_out(&cfg, (ym_proj)p);
                ck_assert_int_eq(P->r, ranks[ri]);
                for (int o = 0; o < no; o++)
                    for (int i = 0; i < ni; i++) {
                        double acc = 0;
                        for (int j = 0; j < P->r; j++)
                            acc += (double)P->Bt[(size_t)j * no + o] * P->At[(size_t)i * P->r + j];
                        W[p][(size_t)o * ni + i] += (float)acc;
                    }
            }
        }
        enum { T = 7 };
        int32_t toks[T] = {3, 14, 15, 9, 26, 5, 35};
        float want[T * 50], got[T * 50];
        ym_state_t *s = NULL;
        ck_assert_int_eq(ym_state_new(&cfg, &s), YM_OK);
        int st[2] = {0, T};
        ym_batch b = {.n_seq = 1, .tokens = toks, .seq_start = st, .states = &s,
                      .logits = YM_LOGITS_ALL};
        ck_assert_int_eq(ym_forward_ref(merged, &b, want), YM_OK);
        double scale = 0, worst = 0;
        for (int i = 0; i < T * 50; i++)
            scale = fmax(scale, fabs(want[i]));
        for (int nth = 1; nth <= 3; nth++) {
            ym_ctx_t *ctx = NULL;
            ck_assert_int_eq(ym_ctx_new(m, T, nth, &ctx), YM_OK);
            run_seq(ctx, m, ad, toks, T, 0, got);
            worst = fmax(worst, max_diff_f32(got, want, T * 50));
            run_seq(ctx, m, ad, toks, T, 1, got);
            worst = fmax(worst, max_diff_f32(got, want, T * 50));
            if (nth == 3) /* the adapter matters: the base model is far off */
                run_seq(ctx, m, NULL, toks, T, 0, got);
            ym_ctx_free(ctx);
        }
        double base_diff = max_diff_f32(got, want, T * 50);
        ck_assert_msg(base_diff > 1e-2 * fmax(1.0, scale), "r=%d: adapter too weak (%g)",
                      ranks[ri], base_diff);
        printf("adapters random LoRA r=%d vs merged weights: max|diff| %.2e (scale %.2f, "
               "base model off by %.2f)\n", ranks[ri], worst, scale, base_diff);
        ck_assert_msg(worst <= 2e-5 * fmax(1.0, scale), "r=%d: off by %g", ranks[ri], worst);
        ym_state_free(s);
        ym_adapter_unref(a);
        ym_model_unref(m);
        ym_model_unref(merged);
    }
}
END_TEST

START_TEST(test_adapters_compose_nests_and_refuses_mismatched_parts)
{
    ym_model_t *m = load_model(M40);
    ym_model_t *m37 = load_model(YM_FIXTURE_DIR "/conformance/m37-odd-n5-k2-f32");
    ym_adapter_t *x = load_adapter(PEFT_DIR "/lora-all4-m40", m);
    ym_adapter_t *y = load_adapter(PEFT_DIR "/ia3-ff-m40", m);
    ym_adapter_t *z = load_adapter(PEFT_DIR "/lora-x-m40", m);
    ym_adapter_t *o = load_adapter(PEFT_DIR "/rslora-regex-m37", m37);
    ym_adapter_t *xy = NULL, *nested = NULL, *flat = NULL, *bad = NULL;
    ym_diag d = {0};
    ym_adapter_t *p2[2] = {x, y}, *p3[3] = {x, y, z};
    ck_assert_int_eq(ym_adapter_compose(p2, 2, &xy, &d), YM_OK);
    ym_adapter_t *pn[2] = {xy, z};
    ck_assert_int_eq(ym_adapter_compose(pn, 2, &nested, &d), YM_OK);
    ck_assert_int_eq(ym_adapter_compose(p3, 3, &flat, &d), YM_OK);
    ym_adapter_info in, fl;
    ym_adapter_info_get(nested, &in);
    ym_adapter_info_get(flat, &fl);
    ck_assert_int_eq(in.n_parts, 3);
    ck_assert_int_eq(fl.n_parts, 3);
    ck_assert_uint_eq(in.n_params, fl.n_params);
    ck_assert_int_eq(in.r_max, 4 + 2); /* in_proj: r 4 + r 2 */
    const ym_adapt *A = ym_adapter_applied(nested), *B = ym_adapter_applied(flat);
    for (int k = 0; k < A->n_layer * YM_PROJ_N; k++) {
        ym_proj pj = (ym_proj)(k % YM_PROJ_N);
        size_t ni = (size_t)ym_proj_n_in(&m->cfg, pj), no = (size_t)ym_proj_n_out(&m->cfg, pj);
        ck_assert_int_eq(A->proj[k].r, B->proj[k].r);
        if (A->proj[k].r > 0) {
            ck_assert(memcmp(A->proj[k].At, B->proj[k].At, sizeof(float) * ni * A->proj[k].r) == 0);
            ck_assert(memcmp(A->proj[k].Bt, B->proj[k].Bt, sizeof(float) * no * A->proj[k].r) == 0);
        }
        ck_assert_int_eq(A->proj[k].g_in == NULL, B->proj[k].g_in == NULL);
        if (A->proj[k].g_in != NULL)
            ck_assert(memcmp(A->proj[k].g_in, B->proj[k].g_in, sizeof(float) * ni) == 0);
    }
    /* parts for different models, no parts, a NULL part */
    ym_adapter_t *mixed[2] = {x, o}, *withnull[2] = {x, NULL};
    ck_assert_int_eq(ym_adapter_compose(mixed, 2, &bad, &d), YM_EINVAL);
    ck_assert_msg(strstr(d.msg, "another model") != NULL, "%s", d.msg);
    ck_assert_ptr_null(bad);
    ck_assert_int_eq(ym_adapter_compose(p2, 0, &bad, &d), YM_EINVAL);
    ck_assert_int_eq(ym_adapter_compose(withnull, 2, &bad, &d), YM_EINVAL);
    ck_assert_ptr_null(bad);
    ym_adapter_unref(NULL);
    ck_assert_ptr_null(ym_adapter_ref(NULL));
    ck_assert_ptr_null(ym_adapter_applied(NULL));
    ym_adapter_unref(nested);
    ym_adapter_unref(flat);
    ym_adapter_unref(xy);
    ym_adapter_unref(o);
    ym_adapter_unref(z);
    ym_adapter_unref(y);
    ym_adapter_unref(x);
    ym_model_unref(m37);
    ym_model_unref(m);
}
END_TEST

Suite *adapters_suite(void)
{
    Suite *s = suite_create("adapters");
    TCase *tc = tcase_create("peft");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_adapters_every_peft_fixture_matches_merged_float64_reference);
    tcase_add_test(tc, test_adapters_mixed_batch_rows_equal_each_sequence_alone);
    tcase_add_test(tc, test_adapters_set_equals_composition_of_its_parts_and_refs_outlive_callers);
    tcase_add_test(tc, test_adapters_written_lora_loads_and_changes_logits);
    tcase_add_test(tc, test_adapters_refuse_bad_configs);
    tcase_add_test(tc, test_adapters_refuse_bad_tensors);
    tcase_add_test(tc, test_adapters_refuse_lying_safetensors_and_missing_files);
    tcase_add_test(tc, test_adapters_refuse_bad_sets);
    tcase_add_test(tc, test_adapters_forward_refuses_adapter_of_another_model);
    tcase_add_test(tc, test_adapters_config_resolution_follows_peft_rules);
    tcase_add_test(tc, test_adapters_random_lora_any_rank_equals_merged_weights);
    tcase_add_test(tc, test_adapters_compose_nests_and_refuses_mismatched_parts);
    suite_add_tcase(s, tc);
    return s;
}
