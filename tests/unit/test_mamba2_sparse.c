/* tests/unit/test_mamba2_sparse.c - Mamba-2 models served under a head profile (engine/sparse.c
 * building the served layout, engine/mamba2.c and engine/ssd.c running it) against the
 * toolkit's float64 PyTorch Mamba-2 with the same head and state masks
 * (tests/fixtures/mamba2_sparse, made by tests/fixtures/make_mamba2_sparse_fixtures.py):
 * whole-prompt prefill (the chunked SSD, at the default chunk and at chunk 5), token-by-token
 * decode, and a ragged batch of a prefill and a decode row, on 1 and 3 threads. The tolerance is
 * the manifest's (atol = 1e-3 * max |logit|). A profile with one mask changed must miss the
 * reference, and a profile that keeps everything must give the dense model's logits. Set
 * YM_TEST_VERBOSE to print every max |diff|. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapters/adapter.h"
#include "engine/config.h"
#include "engine/kernels.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/sparse.h"
#include "engine/sparsity.h"
#include "engine/ssd.h"
#include "engine/state.h"
#include "m2ref.h"
#include "testutil.h"

#define SPDIR YM_FIXTURE("mamba2_sparse")
#define M2DIR YM_FIXTURE("mamba2")

/* case directory, its model under tests/fixtures/mamba2 */
static const char *const CASES[][2] = {
    { "state-g1-k4-f32", "m2-g1-k4-f32" },
    { "head-g2-bias-k3-bf16", "m2-g2-bias-untied-k3-bf16" },
    { "both-g3-odd-k2-f32", "m2-g3-odd-k2-f32" },
};
#define N_CASES 3

static ym_model_t *load_model(const char *name)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/%s", M2DIR, name);
    ym_model_t *m = NULL;
    ym_diag d = { { 0 }, { 0 } };
    ck_assert_msg(ym_model_load(dir, &m, &d) == YM_OK, "%s: %s", dir, d.msg);
    ck_assert_int_eq(m->cfg.arch, YM_ARCH_MAMBA2);
    return m;
}

static ym_sparsity *load_profile(int i)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s/" YM_SPARSITY_FILE, SPDIR, CASES[i][0]);
    ym_sparsity *sp = NULL;
    ym_diag d = { { 0 }, { 0 } };
    ck_assert_msg(ym_sparsity_load(path, &sp, &d) == YM_OK, "%s", d.msg);
    ck_assert_int_eq(sp->kind, YM_SPARSITY_HEADS);
    return sp;
}

static void load_ref(int i, m2_ref *r)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s/logits.safetensors", SPDIR, CASES[i][0]);
    m2_ref_load(path, r);
}

static ym_model_t *make_sparse(ym_model_t *dense, const ym_sparsity *sp)
{
    ym_model_t *m = NULL;
    ym_diag d = { { 0 }, { 0 } };
    ck_assert_msg(ym_model_new_sparse(dense, sp, &m, &d) == YM_OK, "%s", d.msg);
    ck_assert(ym_model_is_sparse(m));
    return m;
}

/* All logits of a whole-prompt prefill into got [T, V]. */
static void prefill(ym_model_t *m, const m2_ref *r, int n_threads, float *got)
{
    ym_ctx_t *ctx = NULL;
    ym_state_t *s = NULL;
    ym_diag d = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_ctx_new(m, r->T, n_threads, &ctx), YM_OK);
    ck_assert_int_eq(ym_state_new_for_model(m, &s), YM_OK);
    int ss[2] = { 0, r->T };
    ym_state_t *st[1] = { s };
    ym_batch b = { .n_seq = 1, .tokens = r->ids, .seq_start = ss, .states = st,
                   .logits = YM_LOGITS_ALL };
    ck_assert_msg(ym_forward(ctx, &b, got, &d) == YM_OK, "%s", d.msg);
    ym_state_free(s);
    ym_ctx_free(ctx);
}

/* max |diff| against the reference of: prefill, token by token, a ragged batch (sequence 0
 * prefills the prompt's second half after its first; sequence 1 decodes one row beside it). */
START_TEST(test_mamba2_sparse_matches_toolkit_reference)
{
    const int i = _i % N_CASES, chunk5 = _i / N_CASES; /* second pass: prefill chunks of 5 */
    m2_ref r;
    load_ref(i, &r);
    ym_model_t *dense = load_model(CASES[i][1]);
    ym_sparsity *sp = load_profile(i);
    if (chunk5)
        setenv("YUNMIN_SSD_CHUNK", "5", 1); /* read when a context is made */
    ym_model_t *m = make_sparse(dense, sp);
    const double atol = 1e-3 * r.scale;
    static const int threads[2] = { 1, 3 };
    for (int k = 0; k < 2; k++) {
        double err[3];
        m2_run_modes(m, &r, threads[k], err);
        if (getenv("YM_TEST_VERBOSE") != NULL)
            fprintf(stderr, "%s chunk %s, %d threads: prefill %.3g decode %.3g ragged %.3g "
                    "(atol %.3g)\n", CASES[i][0], chunk5 ? "5" : "default", threads[k], err[0],
                    err[1], err[2], atol);
        ck_assert_msg(err[0] <= atol, "%s prefill: max |diff| %g > %g", CASES[i][0], err[0], atol);
        ck_assert_msg(err[1] <= atol, "%s decode: max |diff| %g > %g", CASES[i][0], err[1], atol);
        ck_assert_msg(err[2] <= atol, "%s ragged: max |diff| %g > %g", CASES[i][0], err[2], atol);
    }
    unsetenv("YUNMIN_SSD_CHUNK");
    ym_model_unref(m);
    ym_sparsity_free(sp);
    ym_model_unref(dense);
    m2_ref_free(&r);
}
END_TEST

/* The test can fail: one live state entry dropped (case 0), one kept head dropped (case 1), or
 * one dropped head kept (case 2) moves the logits past the tolerance. */
START_TEST(test_mamba2_sparse_wrong_mask_misses_reference)
{
    const int i = _i;
    m2_ref r;
    load_ref(i, &r);
    ym_model_t *dense = load_model(CASES[i][1]);
    ym_sparsity *sp = load_profile(i);
    ym_sparsity_layer *L = &sp->layers[0];
    if (i == 0) {
        for (int n = 0; n < sp->d_state; n++) /* head 0's first live entry */
            if (L->state_logits[n] > 0.0f) {
                L->state_logits[n] = -1.0f;
                break;
            }
    } else {
        for (int h = 0; h < sp->n_head; h++)
            if ((L->head_logits[h] > 0.0f) == (i == 1)) {
                L->head_logits[h] = i == 1 ? -1.0f : 1.0f;
                break;
            }
    }
    ck_assert_int_eq(ym_sparsity_finish(sp, NULL), YM_OK);
    ym_model_t *m = make_sparse(dense, sp);
    float *got = malloc(sizeof(float) * (size_t)r.T * r.V);
    prefill(m, &r, 1, got);
    double e = m2_maxdiff(got, r.logits, (size_t)r.T * r.V), atol = 1e-3 * r.scale;
    if (getenv("YM_TEST_VERBOSE") != NULL)
        fprintf(stderr, "%s with one mask changed: max |diff| %.3g (atol %.3g)\n", CASES[i][0],
                e, atol);
    ck_assert_msg(e > 10 * atol, "%s: a changed mask still within tolerance (%g)", CASES[i][0], e);
    free(got);
    ym_model_unref(m);
    ym_sparsity_free(sp);
    ym_model_unref(dense);
    m2_ref_free(&r);
}
END_TEST

/* A head profile that keeps everything serves the dense model's logits (the sparse code path
 * with every head and entry live), and the dense fixture's reference with them. */
START_TEST(test_mamba2_sparse_all_kept_equals_dense)
{
    const int i = _i;
    m2_ref r;
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s/logits.safetensors", M2DIR, CASES[i][1]);
    m2_ref_load(path, &r);
    ym_model_t *dense = load_model(CASES[i][1]);
    ym_sparsity *sp = NULL;
    ck_assert_int_eq(ym_sparsity_new_heads(dense->cfg.n_layer, dense->cfg.n_head,
                                           dense->cfg.d_state, "none", &sp), YM_OK);
    ym_model_t *m = make_sparse(dense, sp);
    float *a = malloc(sizeof(float) * (size_t)r.T * r.V);
    float *b = malloc(sizeof(float) * (size_t)r.T * r.V);
    prefill(m, &r, 2, a);
    prefill(dense, &r, 2, b);
    double e = m2_maxdiff(a, b, (size_t)r.T * r.V), eref = m2_maxdiff(a, r.logits, (size_t)r.T * r.V);
    ck_assert_msg(e <= 1e-5 * r.scale, "%s all kept vs dense: %g", CASES[i][1], e);
    ck_assert_msg(eref <= 1e-3 * r.scale, "%s all kept vs reference: %g", CASES[i][1], eref);
    free(a);
    free(b);
    ym_model_unref(m);
    ym_sparsity_free(sp);
    ym_model_unref(dense);
    m2_ref_free(&r);
}
END_TEST

/* The served model holds only the kept heads' weights and its state only the live entries. */
START_TEST(test_mamba2_sparse_model_and_state_shrink)
{
    ym_model_t *dense = load_model(CASES[2][1]);
    ym_sparsity *sp = load_profile(2);
    ym_model_t *m = make_sparse(dense, sp);
    const ym_config *c = &dense->cfg;
    int64_t live = 0, kept = 0;
    for (int l = 0; l < c->n_layer; l++) {
        const ym_layer *L = &m->layers[l];
        ck_assert_ptr_nonnull(L->ssd_plan);
        ck_assert_int_eq(L->d_inner, sp->layers[l].n_kept * c->head_dim);
        ck_assert_int_eq(L->in_proj.n_rows, 2 * L->d_inner + 2 * c->n_group * c->d_state +
                                                sp->layers[l].n_kept);
        ck_assert_int_eq(L->out_proj.n_cols, L->d_inner);
        live += sp->layers[l].n_live;
        kept += L->d_inner;
    }
    ck_assert_int_eq(m->n_states_live, live * c->head_dim);
    ck_assert_int_eq(m->n_channels_kept, kept);
    ym_state_t *sd = NULL, *ss = NULL;
    ck_assert_int_eq(ym_state_new(c, &sd), YM_OK);
    ck_assert_int_eq(ym_state_new_for_model(m, &ss), YM_OK);
    ck_assert_uint_lt(ym_state_floats(ss), ym_state_floats(sd));
    ck_assert(m->weight_bytes < dense->weight_bytes);
    ym_state_free(sd);
    ym_state_free(ss);
    ym_model_unref(m);
    ym_sparsity_free(sp);
    ym_model_unref(dense);
}
END_TEST

/* A profile of the other kind, or of other dimensions, is refused naming what differs. */
START_TEST(test_mamba2_sparse_refuses_mismatched_profiles)
{
    ym_model_t *m2 = load_model(CASES[0][1]);
    const ym_config *c = &m2->cfg;
    ym_sparsity *sp = NULL;
    ym_model_t *out = NULL;
    ym_diag d = { { 0 }, { 0 } };
    /* a channel (Mamba-1) profile on Mamba-2 */
    ck_assert_int_eq(ym_sparsity_new(c->n_layer, c->d_inner, c->d_state, "x", &sp), YM_OK);
    ck_assert_int_eq(ym_model_new_sparse(m2, sp, &out, &d), YM_EFORMAT);
    ck_assert_msg(strstr(d.msg, "channels") && strstr(d.msg, "mamba2"), "%s", d.msg);
    ck_assert_ptr_null(out);
    ym_sparsity_free(sp);
    /* heads, layers, d_state that differ */
    const int dims[3][3] = { { c->n_layer, c->n_head + 1, c->d_state },
                             { c->n_layer + 1, c->n_head, c->d_state },
                             { c->n_layer, c->n_head, c->d_state - 1 } };
    static const char *const what[3] = { "heads", "layers", "d_state" };
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(ym_sparsity_new_heads(dims[k][0], dims[k][1], dims[k][2], "x", &sp),
                         YM_OK);
        ck_assert_int_eq(ym_model_new_sparse(m2, sp, &out, &d), YM_EFORMAT);
        ck_assert_msg(strstr(d.msg, what[k]) != NULL, "%s", d.msg);
        ck_assert_ptr_null(out);
        ym_sparsity_free(sp);
    }
    /* a head profile on Mamba-1 */
    ym_config c1 = { .arch = YM_ARCH_MAMBA1, .d_model = 16, .n_layer = 1, .d_inner = 32,
                     .d_state = 4, .d_conv = 4, .dt_rank = 2, .n_vocab = 64, .norm_eps = 1e-5f,
                     .tie_embeddings = true, .bos_id = -1, .eos_id = -1, .pad_id = -1 };
    ym_model_t *m1 = NULL;
    ck_assert_int_eq(ym_model_new_random(&c1, 1, &m1, &d), YM_OK);
    ck_assert_int_eq(ym_sparsity_new_heads(1, 4, 4, "x", &sp), YM_OK);
    ck_assert_int_eq(ym_model_new_sparse(m1, sp, &out, &d), YM_EFORMAT);
    ck_assert_msg(strstr(d.msg, "heads") && strstr(d.msg, "mamba"), "%s", d.msg);
    ym_sparsity_free(sp);
    ym_model_unref(m1);
    ym_model_unref(m2);
}
END_TEST

/* A profile that drops every head of every layer leaves each mixer adding nothing (no bias
 * in this model): the logits are the head of norm_f of the token's embedding, computed here. */
START_TEST(test_mamba2_sparse_no_head_left_is_the_bare_head)
{
    ym_model_t *dense = load_model(CASES[0][1]); /* f32, no bias, tied */
    const ym_config *c = &dense->cfg;
    ck_assert(!c->use_bias);
    ym_sparsity *sp = NULL;
    ck_assert_int_eq(ym_sparsity_new_heads(c->n_layer, c->n_head, c->d_state, "none", &sp),
                     YM_OK);
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head; h++)
            sp->layers[l].head_logits[h] = -1.0f;
    ck_assert_int_eq(ym_sparsity_finish(sp, NULL), YM_OK);
    ym_model_t *m = make_sparse(dense, sp);
    ck_assert_int_eq(m->layers[0].d_inner, 0);
    m2_ref r = { 0 };
    int32_t ids[3] = { 5, 77, 5 };
    r.T = 3;
    r.V = c->n_vocab;
    r.ids = ids;
    float *got = malloc(sizeof(float) * 3 * (size_t)r.V), *x = malloc(sizeof(float) * c->d_model);
    float *e = malloc(sizeof(float) * c->d_model);
    prefill(m, &r, 2, got);
    double err = 0.0, scale = 1.0;
    for (int t = 0; t < 3; t++) {
        for (int j = 0; j < c->d_model; j++)
            e[j] = ym_weight_at(&dense->embed, ids[t], j);
        ym_rmsnorm_f32(x, e, dense->norm_f, c->d_model, c->norm_eps);
        for (int v = 0; v < r.V; v++) {
            double acc = 0.0;
            for (int j = 0; j < c->d_model; j++)
                acc += (double)ym_weight_at(&dense->lm_head, v, j) * x[j];
            err = fmax(err, fabs(acc - got[(size_t)t * r.V + v]));
            scale = fmax(scale, fabs(acc));
        }
    }
    ck_assert_msg(err <= 1e-5 * scale, "no head left: max |diff| %g", err);
    free(got);
    free(x);
    free(e);
    ym_model_unref(m);
    ym_sparsity_free(sp);
    ym_model_unref(dense);
}
END_TEST

/* Logits of the prompt r->ids on m: a batch of two whole-prompt sequences, the first with
 * adapter a, the second with none, into both [2T, V]; then the first again token by token
 * (decode steps, adapter a) into dec [T, V]. Returns ym_forward's first error. */
static ym_err run_adapted(ym_model_t *m, const m2_ref *r, const ym_adapt *a, int n_threads,
                          float *both, float *dec)
{
    ym_ctx_t *ctx = NULL;
    ym_state_t *s[2] = { NULL, NULL };
    ym_diag d = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_ctx_new(m, 2 * r->T, n_threads, &ctx), YM_OK);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(ym_state_new_for_model(m, &s[i]), YM_OK);
    int32_t *toks = malloc(sizeof(int32_t) * 2 * (size_t)r->T);
    memcpy(toks, r->ids, sizeof(int32_t) * (size_t)r->T);
    memcpy(toks + r->T, r->ids, sizeof(int32_t) * (size_t)r->T);
    int ss[3] = { 0, r->T, 2 * r->T };
    const ym_adapt *ads[2] = { a, NULL };
    ym_batch b = { .n_seq = 2, .tokens = toks, .seq_start = ss, .states = s,
                   .logits = YM_LOGITS_ALL, .adapters = ads };
    ym_err err = ym_forward(ctx, &b, both, &d);
    ym_state_reset(s[0]);
    for (int t = 0; t < r->T && err == YM_OK; t++) {
        int s1[2] = { 0, 1 };
        ym_batch b1 = { .n_seq = 1, .tokens = r->ids + t, .seq_start = s1, .states = s,
                        .logits = YM_LOGITS_ALL, .adapters = ads };
        err = ym_forward(ctx, &b1, dec + (size_t)t * r->V, &d);
    }
    free(toks);
    for (int i = 0; i < 2; i++)
        ym_state_free(s[i]);
    ym_ctx_free(ctx);
    return err;
}

/* PEFT adapters (a LoRA and an IA³ with in_proj's bias scaled, tests/fixtures/mamba2) compiled
 * against the model served under a head profile, against the toolkit's masked forward of the
 * model with the adapter merged into its float64 weights (logits_ADAPTER.safetensors): in a
 * batch beside a sequence without it (which must stay the plain masked reference), and token by
 * token, on 1 and 3 threads. The adapter compiled for the dense model is refused there. */
START_TEST(test_mamba2_sparse_adapters_match_toolkit)
{
    static const char *const ADS[2] = { "lora-m2-g2", "ia3-m2-g2" };
    ym_model_t *dense = load_model(CASES[1][1]);
    ym_sparsity *sp = load_profile(1);
    ym_model_t *m = make_sparse(dense, sp);
    m2_ref base;
    load_ref(1, &base);
    for (int k = 0; k < 2; k++) {
        char dir[4096], path[4096];
        snprintf(dir, sizeof(dir), "%s/%s", M2DIR, ADS[k]);
        snprintf(path, sizeof(path), "%s/%s/logits_%s.safetensors", SPDIR, CASES[1][0], ADS[k]);
        m2_ref r;
        m2_ref_load(path, &r);
        ym_adapter_t *ad = NULL, *adense = NULL;
        ym_diag d = { { 0 }, { 0 } };
        ck_assert_msg(ym_adapter_load(dir, m, NULL, &ad, &d) == YM_OK, "%s", d.msg);
        ck_assert_msg(ym_adapter_load(dir, dense, NULL, &adense, &d) == YM_OK, "%s", d.msg);
        const size_t n = (size_t)r.T * r.V;
        float *both = malloc(sizeof(float) * 2 * n), *dec = malloc(sizeof(float) * n);
        const double atol = 1e-3 * r.scale;
        ck_assert_msg(m2_maxdiff(r.logits, base.logits, n) > 10 * atol,
                      "%s moves the logits too little to test", ADS[k]);
        static const int threads[2] = { 1, 3 };
        for (int t = 0; t < 2; t++) {
            ck_assert_int_eq(run_adapted(m, &r, ym_adapter_applied(ad), threads[t], both, dec),
                             YM_OK);
            double e0 = m2_maxdiff(both, r.logits, n), e1 = m2_maxdiff(both + n, base.logits, n);
            double e2 = m2_maxdiff(dec, r.logits, n);
            if (getenv("YM_TEST_VERBOSE") != NULL)
                fprintf(stderr, "%s on the pruned model, %d threads: batch %.3g (beside it, "
                        "none: %.3g) decode %.3g (atol %.3g)\n", ADS[k], threads[t], e0, e1, e2,
                        atol);
            ck_assert_msg(e0 <= atol, "%s: max |diff| %g > %g", ADS[k], e0, atol);
            ck_assert_msg(e1 <= 1e-3 * base.scale, "no adapter beside it: %g", e1);
            ck_assert_msg(e2 <= atol, "%s decode: max |diff| %g > %g", ADS[k], e2, atol);
        }
        ck_assert_int_eq(run_adapted(m, &r, ym_adapter_applied(adense), 1, both, dec),
                         YM_EINVAL);
        free(both);
        free(dec);
        ym_adapter_unref(ad);
        ym_adapter_unref(adense);
        m2_ref_free(&r);
    }
    m2_ref_free(&base);
    ym_model_unref(m);
    ym_sparsity_free(sp);
    ym_model_unref(dense);
}
END_TEST

/* A layer with no head left has a mixer output of out_proj's bias alone (its input is 0). An
 * IA³ adapter that scales out_proj's output (out_proj not a feedforward module) scales that
 * bias, as PEFT scales W x + b; a LoRA adds nothing (B A 0 = 0, and in_proj is not run). On the
 * bias model with every head dropped the logits are therefore lm_head(norm_f(e + Σ_l s_l ⊙ b_l))
 * for each token's embedding e, s_l the sequence's scale of layer l (1 without the IA³
 * adapter), computed here: for a sequence with each adapter, one beside it without, and token
 * by token. The IA³ adapter is written here (its values by a formula), in PEFT's layout. */
static void write_file(const char *dir, const char *name, const char *text)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

static float out_scale(int l, int j)
{
    return 0.4f + 0.15f * (float)((j * 7 + l * 3) % 11);
}

START_TEST(test_mamba2_sparse_no_head_left_scales_the_bias)
{
    ym_model_t *dense = load_model(CASES[1][1]); /* out_proj bias, untied, BF16 */
    const ym_config *c = &dense->cfg;
    const int dm = c->d_model, L = c->n_layer, V = c->n_vocab;
    ck_assert(c->use_bias && L <= 4);
    ym_sparsity *sp = NULL;
    ck_assert_int_eq(ym_sparsity_new_heads(L, c->n_head, c->d_state, "none", &sp), YM_OK);
    for (int l = 0; l < L; l++)
        for (int h = 0; h < c->n_head; h++)
            sp->layers[l].head_logits[h] = -1.0f;
    ck_assert_int_eq(ym_sparsity_finish(sp, NULL), YM_OK);
    ym_model_t *m = make_sparse(dense, sp);

    char tmpl[] = "/tmp/ym-m2-ia3out-XXXXXX";
    char *dir = mkdtemp(tmpl);
    ck_assert_ptr_nonnull(dir);
    write_file(dir, "adapter_config.json",
               "{\"peft_type\": \"IA3\", \"task_type\": \"CAUSAL_LM\", \"target_modules\": "
               "[\"out_proj\"], \"feedforward_modules\": [], \"fan_in_fan_out\": false}");
    float *g = malloc(sizeof(float) * (size_t)L * dm);
    static char names[4][96];
    ym_st_wtensor t[4];
    for (int l = 0; l < L; l++) {
        for (int j = 0; j < dm; j++)
            g[(size_t)l * dm + j] = out_scale(l, j);
        snprintf(names[l], sizeof(names[l]),
                 "base_model.model.backbone.layers.%d.mixer.out_proj.ia3_l", l);
        t[l] = (ym_st_wtensor){ names[l], YM_DT_F32, 2, { dm, 1 }, g + (size_t)l * dm };
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    ym_diag d = { { 0 }, { 0 } };
    ck_assert_msg(ym_st_write(path, t, L, NULL, 0, &d) == YM_OK, "%s", d.msg);
    ym_adapter_t *ads[2] = { NULL, NULL };
    ck_assert_msg(ym_adapter_load(dir, m, NULL, &ads[0], &d) == YM_OK, "%s", d.msg);
    snprintf(path, sizeof(path), "%s/lora-m2-g2", M2DIR);
    ck_assert_msg(ym_adapter_load(path, m, NULL, &ads[1], &d) == YM_OK, "%s", d.msg);

    int32_t ids[4] = { 5, 77, 5, 1000 };
    m2_ref r = { 0 };
    r.T = 4;
    r.V = V;
    r.ids = ids;
    const size_t n = (size_t)r.T * V;
    /* want[k]: the logits with scales (k = 0: the IA³ adapter's, k = 1: none) */
    float *want[2] = { malloc(sizeof(float) * n), malloc(sizeof(float) * n) };
    float *h = malloc(sizeof(float) * dm), *x = malloc(sizeof(float) * dm);
    double scale = 1.0;
    for (int k = 0; k < 2; k++)
        for (int tk = 0; tk < r.T; tk++) {
            for (int j = 0; j < dm; j++) {
                double acc = ym_weight_at(&dense->embed, ids[tk], j);
                for (int l = 0; l < L; l++)
                    acc += (double)(k == 0 ? out_scale(l, j) : 1.0f) *
                           dense->layers[l].out_proj_b[j];
                h[j] = (float)acc;
            }
            ym_rmsnorm_f32(x, h, dense->norm_f, dm, c->norm_eps);
            for (int v = 0; v < V; v++) {
                double acc = 0.0;
                for (int j = 0; j < dm; j++)
                    acc += (double)ym_weight_at(&dense->lm_head, v, j) * x[j];
                want[k][(size_t)tk * V + v] = (float)acc;
                scale = fmax(scale, fabs(acc));
            }
        }
    const double tol = 1e-5 * scale;
    ck_assert_msg(m2_maxdiff(want[0], want[1], n) > 100 * tol, "the scale moves too little");
    float *both = malloc(sizeof(float) * 2 * n), *dec = malloc(sizeof(float) * n);
    for (int a = 0; a < 2; a++) {
        const float *wa = a == 0 ? want[0] : want[1]; /* the LoRA: as without an adapter */
        ck_assert_int_eq(run_adapted(m, &r, ym_adapter_applied(ads[a]), 2, both, dec), YM_OK);
        double e0 = m2_maxdiff(both, wa, n), e1 = m2_maxdiff(both + n, want[1], n);
        double e2 = m2_maxdiff(dec, wa, n);
        ck_assert_msg(e0 <= tol && e1 <= tol && e2 <= tol,
                      "%s, no head left: batch %g, beside it %g, decode %g (tol %g)",
                      a == 0 ? "IA³ out_proj output scale" : "LoRA", e0, e1, e2, tol);
    }
    free(both);
    free(dec);
    free(h);
    free(x);
    free(want[0]);
    free(want[1]);
    free(g);
    ym_adapter_unref(ads[0]);
    ym_adapter_unref(ads[1]);
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    remove(path);
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    remove(path);
    rmdir(dir);
    ym_model_unref(m);
    ym_sparsity_free(sp);
    ym_model_unref(dense);
}
END_TEST

Suite *mamba2_sparse_suite(void)
{
    Suite *s = suite_create("mamba2_sparse");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_mamba2_sparse_matches_toolkit_reference, 0, 2 * N_CASES);
    tcase_add_loop_test(tc, test_mamba2_sparse_wrong_mask_misses_reference, 0, N_CASES);
    tcase_add_loop_test(tc, test_mamba2_sparse_all_kept_equals_dense, 0, N_CASES);
    tcase_add_test(tc, test_mamba2_sparse_model_and_state_shrink);
    tcase_add_test(tc, test_mamba2_sparse_refuses_mismatched_profiles);
    tcase_add_test(tc, test_mamba2_sparse_no_head_left_is_the_bare_head);
    tcase_add_test(tc, test_mamba2_sparse_adapters_match_toolkit);
    tcase_add_test(tc, test_mamba2_sparse_no_head_left_scales_the_bias);
    suite_add_tcase(s, tc);
    return s;
}
