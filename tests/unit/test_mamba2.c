/* tests/unit/test_mamba2.c - the engine's Mamba-2 forward (engine/mamba2.c through ym_forward)
 * against the float64 reference logits of tests/fixtures/mamba2 (made by
 * tests/fixtures/make_mamba2_fixtures.py from tests/fixtures/mamba2_ref.py and cross-checked
 * with transformers): whole-prompt prefill (the chunked SSD), token-by-token decode, and a
 * ragged batch mixing a prefill and a decode row; each model in its own type, and the f32 ones
 * served as bf16 and int8. The tolerance is the manifest's (atol = 1e-3 * max |logit|) for the
 * checkpoint's own type; bf16/int8 serving takes the measured error with a margin. Set
 * YM_TEST_VERBOSE to print every max |diff|. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapter.h"
#include "engine/config.h"
#include "engine/forward.h"
#include "engine/layer.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/sparse.h"
#include "engine/sparsity.h"
#include "engine/ssd.h"
#include "engine/state.h"
#include "m2ref.h"
#include "testutil.h"

#define M2DIR YM_FIXTURE("mamba2")

static void ref_load(const char *name, m2_ref *r)
{
    char path[4096];
    const char *lsrc = strncmp(name, "ss-", 3) == 0 ? name + 3 : name; /* shares its source's */
    snprintf(path, sizeof(path), "%s/%s/logits.safetensors", M2DIR, lsrc);
    m2_ref_load(path, r);
}

static ym_model_t *load_arch(const char *name, ym_wtype wt, ym_arch arch)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/%s", M2DIR, name);
    ym_model_t *m = NULL;
    ym_diag d = { { 0 }, { 0 } };
    ck_assert_msg(ym_model_load_as(dir, wt, &m, &d) == YM_OK, "%s: %s", dir, d.msg);
    ck_assert_int_eq(m->cfg.arch, arch);
    return m;
}

static ym_model_t *load(const char *name, ym_wtype wt)
{
    return load_arch(name, wt, YM_ARCH_MAMBA2);
}

/* max |diff| of the three modes against the reference: prefill of the whole prompt (all rows'
 * logits), token by token, and a ragged batch (sequence 0: the prompt's second half as one
 * prefill chunk after its first half; sequence 1: one decode row at every position). */
static const char *const MODELS[] = { "m2-g1-k4-f32", "m2-g2-bias-untied-k3-bf16",
                                      "m2-g3-odd-k2-f32", "ss-m2-g1-k4-f32" };

START_TEST(test_mamba2_forward_matches_reference)
{
    const char *name = MODELS[_i];
    m2_ref r;
    ref_load(name, &r);
    const double atol = 1e-3 * r.scale; /* the manifest's rule */
    ym_model_t *m = load(name, YM_WT_AUTO);
    static const char *const mode[3] = { "prefill", "decode", "ragged" };
    for (int nt = 1; nt <= 3; nt += 2) {
        double e[3];
        m2_run_modes(m, &r, nt, e);
        for (int k = 0; k < 3; k++) {
            if (getenv("YM_TEST_VERBOSE") != NULL)
                fprintf(stderr, "mamba2 %s %s, %d threads: max |diff| %.3g (atol %.3g)\n", name,
                        mode[k], nt, e[k], atol);
            ck_assert_msg(e[k] < atol, "%s %s, %d threads: max |diff| %g, atol %g", name,
                          mode[k], nt, e[k], atol);
        }
    }
    ym_model_unref(m);
    m2_ref_free(&r);
}
END_TEST

/* The f32 models served as bf16 and int8: the error of rounding the matrices. */
START_TEST(test_mamba2_lowbit_weights_within_measured_error)
{
    static const char *const f32_models[] = { "m2-g1-k4-f32", "m2-g3-odd-k2-f32" };
    /* max |diff| measured over the three modes (YM_TEST_VERBOSE) times 1.5, [model][bf16, int8]:
     * m2-g1 0.054, 0.256; m2-g3 (d_model 24, heads of 8, 3 layers) 0.325, 0.959 */
    static const double tol[2][2] = { { 0.081, 0.384 }, { 0.49, 1.44 } };
    const ym_wtype wts[2] = { YM_WT_BF16, YM_WT_INT8 };
    m2_ref r;
    ref_load(f32_models[_i], &r);
    for (int w = 0; w < 2; w++) {
        ym_model_t *m = load(f32_models[_i], wts[w]);
        double e[3];
        m2_run_modes(m, &r, 2, e);
        for (int k = 0; k < 3; k++) {
            if (getenv("YM_TEST_VERBOSE") != NULL)
                fprintf(stderr, "mamba2 %s as %s mode %d: max |diff| %.3g (scale %.3g)\n",
                        f32_models[_i], w ? "int8" : "bf16", k, e[k], r.scale);
            ck_assert_msg(e[k] < tol[_i][w], "%s as %s mode %d: max |diff| %g",
                          f32_models[_i], w ? "int8" : "bf16", k, e[k]);
        }
        ym_model_unref(m);
    }
    m2_ref_free(&r);
}
END_TEST

START_TEST(test_mamba2_state_is_sized_per_family)
{
    ym_model_t *m = load("m2-g2-bias-untied-k3-bf16", YM_WT_AUTO);
    const ym_config *c = &m->cfg;
    ym_state_t *s = NULL;
    ck_assert_int_eq(ym_state_new(c, &s), YM_OK);
    ck_assert_int_eq(s->conv_ch, c->d_inner + 2 * c->n_group * c->d_state);
    ck_assert_uint_eq(ym_state_floats(s) * sizeof(float), ym_config_state_bytes(c));
    /* a Mamba-1 state of the same dimensions does not run on it */
    ym_config c1 = *c;
    c1.arch = YM_ARCH_MAMBA1;
    ym_state_t *s1 = NULL;
    ck_assert_int_eq(ym_state_new(&c1, &s1), YM_OK);
    ym_ctx_t *ctx = NULL;
    ck_assert_int_eq(ym_ctx_new(m, 4, 1, &ctx), YM_OK);
    int32_t tok = 1;
    int ss[2] = { 0, 1 };
    ym_batch b = { .n_seq = 1, .tokens = &tok, .seq_start = ss,
                   .states = (ym_state_t *const[]){ s1 }, .logits = YM_LOGITS_NONE };
    ym_diag d = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_forward(ctx, &b, NULL, &d), YM_EINVAL);
    ck_assert_ptr_nonnull(strstr(d.msg, "does not fit"));
    /* nor does a serialized Mamba-1 state load into a Mamba-2 one */
    size_t n = ym_state_serialized_size(s1), w = 0;
    void *buf = malloc(n);
    ck_assert_int_eq(ym_state_serialize(s1, buf, n, &w), YM_OK);
    ck_assert_int_eq(ym_state_deserialize(s, buf, w, &d), YM_EFORMAT);
    free(buf);
    ym_ctx_free(ctx);
    ym_state_free(s);
    ym_state_free(s1);
    ym_model_unref(m);
}
END_TEST

/* Falcon-Mamba (the Mamba-1 layer with weightless RMS norms on dt, B and C): the same three
 * modes against its fixtures' float64 reference logits. */
START_TEST(test_falcon_mamba_forward_matches_reference)
{
    static const char *const fm[] = { "fm-bias-k3-f32", "fm-untied-k4-bf16" };
    m2_ref r;
    ref_load(fm[_i], &r);
    const double atol = 1e-3 * r.scale; /* the manifest's rule */
    ym_model_t *m = load_arch(fm[_i], YM_WT_AUTO, YM_ARCH_FALCON_MAMBA);
    static const char *const mode[3] = { "prefill", "decode", "ragged" };
    for (int nt = 1; nt <= 3; nt += 2) {
        double e[3];
        m2_run_modes(m, &r, nt, e);
        for (int k = 0; k < 3; k++) {
            if (getenv("YM_TEST_VERBOSE") != NULL)
                fprintf(stderr, "falcon_mamba %s %s, %d threads: max |diff| %.3g (atol %.3g)\n",
                        fm[_i], mode[k], nt, e[k], atol);
            ck_assert_msg(e[k] < atol, "%s %s, %d threads: max |diff| %g, atol %g", fm[_i],
                          mode[k], nt, e[k], atol);
        }
    }
    ym_model_unref(m);
    m2_ref_free(&r);
}
END_TEST

/* PEFT adapters on Mamba-2's in_proj and out_proj (LoRA; IA³ with out_proj as a feedforward
 * module), applied unmerged: prefill and decode against the fixtures' float64 logits of the
 * adapted model (PEFT-checked), and a ragged batch of one adapted and one base sequence. */
START_TEST(test_mamba2_adapters_match_peft_reference)
{
    static const char *const ads[] = { "lora-m2-g2", "ia3-m2-g2" };
    const char *base = "m2-g2-bias-untied-k3-bf16";
    m2_ref ra, rb;
    ref_load(ads[_i], &ra);
    ref_load(base, &rb);
    ck_assert_int_eq(ra.T, rb.T);
    ck_assert_int_eq(memcmp(ra.ids, rb.ids, sizeof(int32_t) * ra.T), 0);
    const int T = ra.T, V = ra.V;
    ym_model_t *m = load(base, YM_WT_AUTO);
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/%s", M2DIR, ads[_i]);
    ym_adapter_t *ad = NULL;
    ym_diag d = { { 0 }, { 0 } };
    ck_assert_msg(ym_adapter_load(dir, m, NULL, &ad, &d) == YM_OK, "%s: %s", dir, d.msg);
    ym_ctx_t *ctx = NULL;
    ck_assert_int_eq(ym_ctx_new(m, 2 * T, 2, &ctx), YM_OK);
    ym_state_t *s0 = NULL, *s1 = NULL;
    ck_assert_int_eq(ym_state_new(&m->cfg, &s0), YM_OK);
    ck_assert_int_eq(ym_state_new(&m->cfg, &s1), YM_OK);
    float *got = malloc(sizeof(float) * 2 * (size_t)T * V);
    const ym_adapt *one[2] = { ym_adapter_applied(ad), NULL };
    ym_state_t *st[2] = { s0, s1 };
    double atol = 1e-3 * ra.scale, e[3] = { 0, 0, 0 };

    int ss[3] = { 0, T, 0 };
    ym_batch b = { .n_seq = 1, .tokens = ra.ids, .seq_start = ss, .states = st,
                   .logits = YM_LOGITS_ALL, .adapters = one };
    ck_assert_msg(ym_forward(ctx, &b, got, &d) == YM_OK, "%s", d.msg);
    e[0] = m2_maxdiff(got, ra.logits, (size_t)T * V);
    ym_state_reset(s0);
    b.logits = YM_LOGITS_LAST;
    ss[1] = 1;
    for (int t = 0; t < T; t++) {
        b.tokens = ra.ids + t;
        ck_assert_int_eq(ym_forward(ctx, &b, got, &d), YM_OK);
        e[1] = fmax(e[1], m2_maxdiff(got, ra.logits + (size_t)t * V, V));
    }
    /* ragged: the adapted sequence and a base one, each the whole prompt */
    ym_state_reset(s0);
    int32_t *tok = malloc(sizeof(int32_t) * 2 * (size_t)T);
    memcpy(tok, ra.ids, sizeof(int32_t) * T);
    memcpy(tok + T, ra.ids, sizeof(int32_t) * T);
    int s2[3] = { 0, T, 2 * T };
    ym_batch rb2 = { .n_seq = 2, .tokens = tok, .seq_start = s2, .states = st,
                     .logits = YM_LOGITS_ALL, .adapters = one };
    ck_assert_msg(ym_forward(ctx, &rb2, got, &d) == YM_OK, "%s", d.msg);
    e[2] = fmax(m2_maxdiff(got, ra.logits, (size_t)T * V),
                m2_maxdiff(got + (size_t)T * V, rb.logits, (size_t)T * V));
    for (int k = 0; k < 3; k++) {
        if (getenv("YM_TEST_VERBOSE") != NULL)
            fprintf(stderr, "mamba2 adapter %s mode %d: max |diff| %.3g (atol %.3g)\n", ads[_i],
                    k, e[k], atol);
        ck_assert_msg(e[k] < atol, "adapter %s mode %d: max |diff| %g, atol %g", ads[_i], k,
                      e[k], atol);
    }
    free(tok);
    free(got);
    ym_state_free(s0);
    ym_state_free(s1);
    ym_ctx_free(ctx);
    ym_adapter_unref(ad);
    ym_model_unref(m);
    m2_ref_free(&ra);
    m2_ref_free(&rb);
}
END_TEST

/* An adapter directory under fixtures/<root>/<name> on base model mamba2/<base> of family
 * arch, against its logits.safetensors: prefill, decode and a ragged batch of the adapted
 * sequence beside a base one, on 1 and 3 threads (3 splits the columns, heads and rows
 * unevenly). */
static void check_adapter_case(const char *root, const char *name, const char *base,
                               ym_arch arch)
{
    char dir[4096], path[4096];
    snprintf(dir, sizeof(dir), "%s/%s/%s", YM_FIXTURE_DIR, root, name);
    snprintf(path, sizeof(path), "%s/%s/%s/logits.safetensors", YM_FIXTURE_DIR, root, name);
    m2_ref ra, rb;
    m2_ref_load(path, &ra);
    ref_load(base, &rb);
    ck_assert_int_eq(ra.T, rb.T);
    ck_assert_int_eq(memcmp(ra.ids, rb.ids, sizeof(int32_t) * ra.T), 0);
    const int T = ra.T, V = ra.V;
    ym_model_t *m = load_arch(base, YM_WT_AUTO, arch);
    ym_adapter_t *ad = NULL;
    ym_diag d = { { 0 }, { 0 } };
    ck_assert_msg(ym_adapter_load(dir, m, NULL, &ad, &d) == YM_OK, "%s: %s", dir, d.msg);
    const ym_adapt *one[2] = { ym_adapter_applied(ad), NULL };
    float *got = malloc(sizeof(float) * 2 * (size_t)T * V);
    int32_t *tok = malloc(sizeof(int32_t) * 2 * (size_t)T);
    memcpy(tok, ra.ids, sizeof(int32_t) * T);
    memcpy(tok + T, ra.ids, sizeof(int32_t) * T);
    const double atol = 1e-3 * ra.scale;
    for (int nt = 1; nt <= 3; nt += 2) {
        ym_ctx_t *ctx = NULL;
        ck_assert_int_eq(ym_ctx_new(m, 2 * T, nt, &ctx), YM_OK);
        ym_state_t *s0 = NULL, *s1 = NULL;
        ck_assert_int_eq(ym_state_new(&m->cfg, &s0), YM_OK);
        ck_assert_int_eq(ym_state_new(&m->cfg, &s1), YM_OK);
        ym_state_t *st[2] = { s0, s1 };
        double e[3] = { 0, 0, 0 };
        int ss[3] = { 0, T, 0 };
        ym_batch b = { .n_seq = 1, .tokens = ra.ids, .seq_start = ss, .states = st,
                       .logits = YM_LOGITS_ALL, .adapters = one };
        ck_assert_msg(ym_forward(ctx, &b, got, &d) == YM_OK, "%s", d.msg);
        e[0] = m2_maxdiff(got, ra.logits, (size_t)T * V);
        ym_state_reset(s0);
        b.logits = YM_LOGITS_LAST;
        ss[1] = 1;
        for (int t = 0; t < T; t++) {
            b.tokens = ra.ids + t;
            ck_assert_int_eq(ym_forward(ctx, &b, got, &d), YM_OK);
            e[1] = fmax(e[1], m2_maxdiff(got, ra.logits + (size_t)t * V, V));
        }
        ym_state_reset(s0);
        int s2[3] = { 0, T, 2 * T };
        ym_batch rb2 = { .n_seq = 2, .tokens = tok, .seq_start = s2, .states = st,
                         .logits = YM_LOGITS_ALL, .adapters = one };
        ck_assert_msg(ym_forward(ctx, &rb2, got, &d) == YM_OK, "%s", d.msg);
        e[2] = fmax(m2_maxdiff(got, ra.logits, (size_t)T * V),
                    m2_maxdiff(got + (size_t)T * V, rb.logits, (size_t)T * V));
        for (int k = 0; k < 3; k++) {
            if (getenv("YM_TEST_VERBOSE") != NULL)
                fprintf(stderr, "%s adapter %s mode %d, %d threads: max |diff| %.3g "
                        "(atol %.3g)\n", ym_arch_name(arch), name, k, nt, e[k], atol);
            ck_assert_msg(e[k] < atol, "adapter %s mode %d, %d threads: max |diff| %g, atol %g",
                          name, k, nt, e[k], atol);
        }
        ym_state_free(s0);
        ym_state_free(s1);
        ym_ctx_free(ctx);
    }
    free(tok);
    free(got);
    ym_adapter_unref(ad);
    ym_model_unref(m);
    m2_ref_free(&ra);
    m2_ref_free(&rb);
}

/* PEFT adapters on Falcon-Mamba's four projections (tests/fixtures/falcon_peft, made by
 * make_falcon_peft_fixtures.py: the float64 reference with the adapter applied unmerged as
 * PEFT's layers do, x_proj's before the dt/B/C norms and dt_proj's after them). */
START_TEST(test_falcon_mamba_adapters_match_peft_reference)
{
    static const char *const ads[] = { "lora-fm", "ia3-fm-dt-out-ff", "ia3-fm-in-x-ff",
                                       "lora-fm-r72-bf16" };
    static const char *const bases[] = { "fm-bias-k3-f32", "fm-bias-k3-f32", "fm-bias-k3-f32",
                                         "fm-untied-k4-bf16" };
    check_adapter_case("falcon_peft", ads[_i], bases[_i], YM_ARCH_FALCON_MAMBA);
}
END_TEST

/* The Mamba-2 adapter cases the PEFT-made fixtures leave out (tests/fixtures/mamba2_peft, made
 * by make_mamba2_peft_numpy.py): IA³ input scaling on in_proj with output scaling on out_proj
 * (its bias scaled, kept apart from the residual), and LoRA rank 72 on a 3-group model. */
START_TEST(test_mamba2_more_adapters_match_peft_reference)
{
    static const char *const ads[] = { "ia3-m2-in-ff", "lora-m2-g3-r72" };
    static const char *const bases[] = { "m2-g2-bias-untied-k3-bf16", "m2-g3-odd-k2-f32" };
    check_adapter_case("mamba2_peft", ads[_i], bases[_i], YM_ARCH_MAMBA2);
}
END_TEST

/* The gated norm in two halves (the layer's split by heads): ranges of channels that cut
 * groups, each with its own partial sums, then the scale of all channels, equal the float64
 * reference of the whole norm (1 and 3 groups; 2 and 4 ranges, one of them empty). */
START_TEST(test_gated_norm_split_by_channel_ranges_matches_reference)
{
    const int T = 5, Di = 48, groups[2] = { 1, 3 };
    float y[5 * 48], z[5 * 48], w[48], out[5 * 48], want[5 * 48], ss[4][5 * 3];
    unsigned r = 12345u;
    for (int i = 0; i < T * Di; i++) {
        r = r * 1103515245u + 12345u;
        y[i] = (float)((r >> 9) % 2001) / 500.0f - 2.0f;
        r = r * 1103515245u + 12345u;
        z[i] = (float)((r >> 9) % 2001) / 400.0f - 2.5f;
    }
    for (int c = 0; c < Di; c++)
        w[c] = 0.5f + (float)c / Di;
    for (int gi = 0; gi < 2; gi++) {
        const int G = groups[gi];
        ym_gated_rmsnorm_ref(want, Di, y, Di, z, Di, T, w, Di, G, 1e-5f);
        static const int cuts[2][5] = { { 0, 21, 48, 48, 48 }, { 0, 7, 7, 30, 48 } };
        for (int k = 0; k < 2; k++) {
            const int n_parts = k == 0 ? 2 : 4;
            float v[5 * 48];
            memcpy(v, y, sizeof(v));
            for (int p = 0; p < n_parts; p++)
                ym_gate_sumsq_f32(v, Di, z, Di, T, Di, G, cuts[k][p], cuts[k][p + 1], ss[p]);
            ym_group_scale_f32(out, Di, v, Di, T, &ss[0][0], n_parts, 5 * 3, w, Di, G, 1e-5f);
            double e = 0.0, sc = 1.0;
            for (int i = 0; i < T * Di; i++) {
                e = fmax(e, fabs((double)out[i] - want[i]));
                sc = fmax(sc, fabs((double)want[i]));
            }
            ck_assert_msg(e < 2e-6 * sc, "groups %d, %d ranges: max |diff| %g", G, n_parts, e);
        }
    }
}
END_TEST

/* A context has its family's scratch only (engine/layer.h): a Mamba-2 context none of the
 * Mamba-1 layer's per-row buffers, a Falcon-Mamba context all of them and the split layer's
 * per-thread block (x_proj's partial sums). */
START_TEST(test_context_allocates_only_its_family_scratch)
{
    ym_model_t *m2 = load("m2-g1-k4-f32", YM_WT_AUTO);
    ym_model_t *fm = load_arch("fm-bias-k3-f32", YM_WT_AUTO, YM_ARCH_FALCON_MAMBA);
    ym_ctx_t *c2 = NULL, *cf = NULL;
    ck_assert_int_eq(ym_ctx_new(m2, 64, 2, &c2), YM_OK);
    ck_assert_int_eq(ym_ctx_new(fm, 64, 2, &cf), YM_OK);
    ck_assert(!c2->ops->mamba1_scratch && cf->ops->mamba1_scratch);
    ck_assert(c2->x == NULL && c2->z == NULL && c2->dbc == NULL && c2->dt == NULL &&
              c2->y == NULL && c2->xs == NULL && c2->up == NULL);
    ck_assert(c2->h != NULL && c2->hn != NULL && c2->ob != NULL && c2->fam != NULL);
    ck_assert(cf->x != NULL && cf->z != NULL && cf->dbc != NULL && cf->dt != NULL &&
              cf->y != NULL && cf->xs != NULL && cf->up != NULL && cf->fam != NULL);
    ym_ctx_free(c2);
    ym_ctx_free(cf);
    ym_model_unref(m2);
    ym_model_unref(fm);
}
END_TEST

/* What does not fit Mamba-2 is refused by name: a channel (Mamba-1) sparsity profile (head
 * profiles: test_mamba2_sparse.c), an adapter module the layer does not have. */
START_TEST(test_mamba2_refuses_sparsity_and_missing_modules)
{
    ym_model_t *m = load("m2-g1-k4-f32", YM_WT_AUTO);
    ym_sparsity sp;
    memset(&sp, 0, sizeof(sp));
    ym_model_t *s = NULL;
    ym_diag d = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_model_new_sparse(m, &sp, &s, &d), YM_EFORMAT);
    ck_assert_msg(strstr(d.msg, "channels") && strstr(d.msg, "mamba2"), "%s", d.msg);
    ck_assert_ptr_null(s);
    ck_assert_int_eq(ym_proj_n_out(&m->cfg, YM_PROJ_X), 0);
    ck_assert_int_eq(ym_proj_n_out(&m->cfg, YM_PROJ_DT), 0);
    ck_assert_int_eq(ym_proj_n_out(&m->cfg, YM_PROJ_IN),
                     m->cfg.d_inner + ym_config_conv_channels(&m->cfg) + m->cfg.n_head);
    ym_model_unref(m);
}
END_TEST

Suite *mamba2_suite(void)
{
    Suite *s = suite_create("mamba2");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_mamba2_forward_matches_reference, 0, 4);
    tcase_add_loop_test(tc, test_mamba2_lowbit_weights_within_measured_error, 0, 2);
    tcase_add_test(tc, test_mamba2_state_is_sized_per_family);
    tcase_add_loop_test(tc, test_falcon_mamba_forward_matches_reference, 0, 2);
    tcase_add_loop_test(tc, test_mamba2_adapters_match_peft_reference, 0, 2);
    tcase_add_loop_test(tc, test_falcon_mamba_adapters_match_peft_reference, 0, 4);
    tcase_add_loop_test(tc, test_mamba2_more_adapters_match_peft_reference, 0, 2);
    tcase_add_test(tc, test_gated_norm_split_by_channel_ranges_matches_reference);
    tcase_add_test(tc, test_context_allocates_only_its_family_scratch);
    tcase_add_test(tc, test_mamba2_refuses_sparsity_and_missing_modules);
    suite_add_tcase(s, tc);
    return s;
}
