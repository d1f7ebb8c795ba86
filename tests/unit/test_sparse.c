/* tests/unit/test_sparse.c - the served sparse model against the reference semantics of its
 * profile (docs/ARCHITECTURE.md §4): the plain double-precision reference forward of the *dense* model
 * with x[d] := 0 for dropped channels and s[d, n] held at 0 for dropped entries
 * (ym_forward_ref_masked). Nothing here is a hand-typed number: every check compares two
 * computations, and one test makes sure the masks change the result (so the comparison can
 * fail). Covered: identity and shuffled scan orders, random masks of several densities, a layer
 * with every channel dropped, N not a multiple of 16, biases, both kernel sets, 1-3 threads,
 * single-row (sgemv) and batch (packed) contexts, prefill == token by token, batch == alone,
 * and the conformance fixtures' real checkpoints. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapter.h"
#include "engine/forward.h"
#include "engine/kernels.h"
#include "engine/model.h"
#include "engine/sparse.h"
#include "engine/sparsity.h"
#include "engine/state.h"
#include "engine/weight.h"
#include "testutil.h"

static ym_config cfg_of(int d_model, int n_layer, int d_state, int d_conv, int dt_rank,
                        int n_vocab, int bias)
{
    ym_config c;
    memset(&c, 0, sizeof(c));
    c.d_model = d_model;
    c.n_layer = n_layer;
    c.d_inner = 2 * d_model;
    c.d_state = d_state;
    c.d_conv = d_conv;
    c.dt_rank = dt_rank;
    c.n_vocab = n_vocab;
    c.use_bias = bias;
    c.use_conv_bias = 1;
    c.tie_embeddings = 1;
    c.norm_eps = 1e-5f;
    c.bos_id = c.eos_id = c.pad_id = -1;
    return c;
}

static uint64_t rs;
static double urand(void)
{
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rs >> 11) * (1.0 / 9007199254740992.0);
}

/* A random profile: channel kept with probability pc, entry with ps; order shuffled or not.
 * drop_layer >= 0 drops every channel of that layer. */
static ym_sparsity *random_profile(const ym_config *c, double pc, double ps, int shuffle,
                                   int drop_layer, uint64_t seed)
{
    ym_sparsity *sp = NULL;
    ck_assert_int_eq(ym_sparsity_new(c->n_layer, c->d_inner, c->d_state, "random", &sp), YM_OK);
    rs = seed;
    for (int l = 0; l < c->n_layer; l++) {
        ym_sparsity_layer *L = &sp->layers[l];
        for (int d = 0; d < c->d_inner; d++) {
            L->channel_logits[d] = (l == drop_layer || urand() >= pc) ? -1.0f : 1.0f;
            for (int n = 0; n < c->d_state; n++)
                L->state_logits[(size_t)d * c->d_state + n] = urand() < ps ? 0.5f : -0.5f;
        }
        if (shuffle)
            for (int k = c->d_inner - 1; k > 0; k--) {
                int j = (int)(urand() * (k + 1));
                int32_t t = L->scan_order[k];
                L->scan_order[k] = L->scan_order[j];
                L->scan_order[j] = t;
            }
    }
    ym_diag d = {0};
    ck_assert_msg(ym_sparsity_finish(sp, &d) == YM_OK, "%s", d.msg);
    return sp;
}

static float max_abs_diff(const float *a, const float *b, size_t n)
{
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m))
            m = d;
    }
    return m;
}

static const int32_t TOKS[20] = {3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3, 2, 38, 4, 6, 26, 4, 33, 8};
static const int STARTS[4] = {0, 7, 8, 20};

/* The served model (ragged batch of 3, twice in a row) against the masked reference of the
 * dense model; also the per-channel state energies of kept channels, mapped through
 * ym_sparsity_served_channel. Returns the largest logit difference. */
static float check_sparse_vs_ref(ym_model_t *dense, const ym_sparsity *sp, int n_rows_max,
                                 int n_threads, float tol)
{
    const ym_config *cfg = &dense->cfg;
    ym_model_t *m = NULL;
    ym_diag d = {0};
    ck_assert_msg(ym_model_new_sparse(dense, sp, &m, &d) == YM_OK, "%s", d.msg);
    ck_assert(ym_model_is_sparse(m));
    ym_ctx_t *ctx = NULL;
    ck_assert_int_eq(ym_ctx_new(m, n_rows_max, n_threads, &ctx), YM_OK);
    size_t V = (size_t)cfg->n_vocab;
    float *lf = calloc(20 * V, sizeof(float)), *lr = calloc(20 * V, sizeof(float));
    ym_state_t *sf[3], *sr[3];
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(ym_state_new(cfg, &sf[i]), YM_OK);
        ck_assert_int_eq(ym_state_new(cfg, &sr[i]), YM_OK);
    }
    float worst = 0, worst_e = 0;
    for (int round = 0; round < 2; round++) {
        ym_batch b = {.n_seq = 3, .tokens = TOKS, .seq_start = STARTS, .states = sr,
                      .logits = YM_LOGITS_ALL};
        ck_assert_int_eq(ym_forward_ref_masked(dense, sp, &b, lr), YM_OK);
        if (n_rows_max >= 20) {
            b.states = sf;
            ck_assert_msg(ym_forward(ctx, &b, lf, &d) == YM_OK, "%s", d.msg);
        } else {
            /* One token per call (single-row context): each sequence token by token. */
            int one[2] = {0, 1};
            for (int i = 0; i < 3; i++)
                for (int r = STARTS[i]; r < STARTS[i + 1]; r++) {
                    ym_batch s1 = {.n_seq = 1, .tokens = TOKS + r, .seq_start = one,
                                   .states = &sf[i], .logits = YM_LOGITS_LAST};
                    ck_assert_int_eq(ym_forward(ctx, &s1, lf + (size_t)r * V, NULL), YM_OK);
                }
        }
        float diff = max_abs_diff(lf, lr, 20 * V);
        if (diff > worst)
            worst = diff;
        /* States: energies of every kept channel, served layout vs dense layout. */
        double *es = calloc((size_t)cfg->d_inner, sizeof(double));
        double *ed = calloc((size_t)cfg->d_inner, sizeof(double));
        for (int i = 0; i < 3; i++)
            for (int l = 0; l < cfg->n_layer; l++) {
                ym_model_state_energy(m, l, ym_state_ssm(sf[i], l), es);
                ym_model_state_energy(dense, l, ym_state_ssm(sr[i], l), ed);
                for (int ch = 0; ch < cfg->d_inner; ch++) {
                    int p = ym_sparsity_served_channel(sp, l, ch);
                    double e_ref = ed[ch];
                    if (p < 0) {
                        ck_assert_msg(e_ref == 0.0, "dropped channel %d has state", ch);
                        continue;
                    }
                    float de = (float)(fabs(es[p] - e_ref) / (1.0 + e_ref));
                    if (de > worst_e)
                        worst_e = de;
                }
            }
        free(es);
        free(ed);
    }
    printf("sparse d_model=%d N=%d kept %lld/%lld ch, %lld live, %lld lanes, rows %d threads %d "
           "isa %s: max |served - masked ref| = %.3g, state energy %.3g\n",
           cfg->d_model, cfg->d_state, (long long)m->n_channels_kept,
           (long long)cfg->n_layer * cfg->d_inner, (long long)m->n_states_live,
           (long long)m->n_scan_lanes, n_rows_max, n_threads, ym_kernels_isa(), worst, worst_e);
    ck_assert_msg(worst < tol, "logits differ by %g >= %g", worst, tol);
    ck_assert_msg(worst_e < tol, "state energies differ by %g >= %g", worst_e, tol);
    for (int i = 0; i < 3; i++) {
        ym_state_free(sf[i]);
        ym_state_free(sr[i]);
    }
    free(lf);
    free(lr);
    ym_ctx_free(ctx);
    ym_model_unref(m);
    return worst;
}

static ym_model_t *random_model(const ym_config *c, uint64_t seed)
{
    ym_model_t *m = NULL;
    ym_diag d = {0};
    ck_assert_msg(ym_model_new_random(c, seed, &m, &d) == YM_OK, "%s", d.msg);
    return m;
}

START_TEST(test_sparse_matches_masked_reference_random_models)
{
    const struct {
        ym_config c;
        double pc, ps;
        int shuffle, drop_layer, threads;
    } cases[] = {
        {cfg_of(40, 3, 16, 4, 3, 41, 0), 1.0, 1.0, 0, -1, 2},  /* all kept, identity */
        {cfg_of(40, 3, 16, 4, 3, 41, 0), 1.0, 1.0, 1, -1, 2},  /* all kept, shuffled */
        {cfg_of(40, 3, 16, 4, 3, 41, 0), 0.5, 0.5, 0, -1, 2},  /* masks, identity */
        {cfg_of(40, 3, 16, 4, 3, 41, 1), 0.6, 0.4, 1, 1, 3},   /* bias, a dead layer */
        {cfg_of(24, 2, 5, 3, 2, 50, 1), 0.7, 0.5, 1, -1, 1},   /* N = 5, K = 3 */
        {cfg_of(36, 2, 20, 5, 4, 45, 0), 0.3, 0.8, 1, 0, 2},   /* N = 20, first layer dead */
        {cfg_of(64, 2, 16, 4, 4, 50, 0), 0.9, 0.1, 1, -1, 2},  /* very sparse states */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ym_model_t *dense = random_model(&cases[i].c, 40 + i);
        ym_sparsity *sp = random_profile(&cases[i].c, cases[i].pc, cases[i].ps,
                                         cases[i].shuffle, cases[i].drop_layer, 7 + i);
        check_sparse_vs_ref(dense, sp, 32, cases[i].threads, 2e-4f);  /* packed / batch */
        check_sparse_vs_ref(dense, sp, 1, cases[i].threads, 2e-4f);   /* sgemv, token by token */
        ym_kernels_force_portable(1);
        check_sparse_vs_ref(dense, sp, 32, cases[i].threads, 2e-4f);
        ym_kernels_force_portable(0);
        ym_kernels_force_avx2(1); /* the masked scan's AVX2 version, where the CPU has it */
        check_sparse_vs_ref(dense, sp, 32, cases[i].threads, 2e-4f);
        ym_kernels_force_avx2(0);
        ym_sparsity_free(sp);
        ym_model_unref(dense);
    }
}
END_TEST

/* Pruned matrices stay in the served type: a bf16 or int8 dense model's sparse model against
 * the masked reference of that same dense model (its dequantized values), with the portable
 * matmul kernels too; int8 pruning keeps each row's scale, so the values are the very same. */
START_TEST(test_sparse_low_bit_models_match_their_masked_reference)
{
    ym_config c = cfg_of(40, 3, 16, 4, 3, 41, 1);
    ym_matmul_int8_activations(0); /* f32 activations: exact up to f32 rounding */
    for (int t = YM_WT_BF16; t <= YM_WT_INT8; t++) {
        ym_model_t *dense = NULL;
        ym_diag d = {0};
        ck_assert_msg(ym_model_new_random_as(&c, 77, (ym_wtype)t, &dense, &d) == YM_OK, "%s",
                      d.msg);
        ym_sparsity *sp = random_profile(&c, 0.6, 0.5, 1, -1, 5);
        check_sparse_vs_ref(dense, sp, 32, 2, 2e-4f);
        check_sparse_vs_ref(dense, sp, 1, 2, 2e-4f);
        ym_matmul_force_portable(1);
        check_sparse_vs_ref(dense, sp, 32, 2, 2e-4f);
        ym_matmul_force_portable(0);
        ym_model_t *m = NULL;
        ck_assert_int_eq(ym_model_new_sparse(dense, sp, &m, &d), YM_OK);
        ck_assert_int_eq(m->wtype, t);
        ck_assert_int_eq(m->layers[1].out_proj.type, t);
        ck_assert(m->weight_bytes < dense->weight_bytes);
        ym_model_unref(m);
        ym_sparsity_free(sp);
        ym_model_unref(dense);
    }
    ym_matmul_int8_activations(1);
}
END_TEST

/* The masks matter: the masked reference differs from the dense one by far more than the
 * tolerance above, so a served model that ignored its profile would fail. */
START_TEST(test_sparse_masks_change_the_result)
{
    ym_config c = cfg_of(40, 3, 16, 4, 3, 41, 0);
    ym_model_t *dense = random_model(&c, 3);
    ym_sparsity *sp = random_profile(&c, 0.7, 0.5, 1, -1, 5);
    size_t V = (size_t)c.n_vocab;
    float *a = calloc(20 * V, sizeof(float)), *b = calloc(20 * V, sizeof(float));
    ym_state_t *s1[3], *s2[3];
    for (int i = 0; i < 3; i++) {
        ym_state_new(&c, &s1[i]);
        ym_state_new(&c, &s2[i]);
    }
    ym_batch bt = {.n_seq = 3, .tokens = TOKS, .seq_start = STARTS, .states = s1,
                   .logits = YM_LOGITS_ALL};
    ck_assert_int_eq(ym_forward_ref_masked(dense, NULL, &bt, a), YM_OK);
    bt.states = s2;
    ck_assert_int_eq(ym_forward_ref_masked(dense, sp, &bt, b), YM_OK);
    float diff = max_abs_diff(a, b, 20 * V);
    printf("masked vs dense reference: max diff %.3g\n", diff);
    ck_assert_msg(diff > 1e-2f, "masks changed the logits by only %g", diff);
    /* A served model is refused by the reference, and a profile of other dims by the builder. */
    ym_model_t *m = NULL;
    ck_assert_int_eq(ym_model_new_sparse(dense, sp, &m, NULL), YM_OK);
    ck_assert_int_eq(ym_forward_ref(m, &bt, b), YM_EINVAL);
    ym_model_t *m2 = NULL;
    ck_assert_int_eq(ym_model_new_sparse(m, sp, &m2, NULL), YM_EINVAL);
    ym_config c2 = cfg_of(40, 2, 16, 4, 3, 41, 0);
    ym_model_t *other = random_model(&c2, 1);
    ym_diag d = {0};
    ck_assert_int_eq(ym_model_new_sparse(other, sp, &m2, &d), YM_EFORMAT);
    ck_assert(strstr(d.msg, "layers") != NULL);
    ck_assert_ptr_null(m2);
    for (int i = 0; i < 3; i++) {
        ym_state_free(s1[i]);
        ym_state_free(s2[i]);
    }
    ym_model_unref(other);
    ym_model_unref(m);
    ym_sparsity_free(sp);
    ym_model_unref(dense);
    free(a);
    free(b);
}
END_TEST

/* Batch == alone and prefill == token-by-token on the served model itself. */
START_TEST(test_sparse_batched_equals_alone_and_decode_equals_prefill)
{
    ym_config c = cfg_of(48, 2, 16, 4, 3, 60, 0);
    ym_model_t *dense = random_model(&c, 11);
    ym_sparsity *sp = random_profile(&c, 0.6, 0.5, 1, -1, 13);
    ym_model_t *m = NULL;
    ck_assert_int_eq(ym_model_new_sparse(dense, sp, &m, NULL), YM_OK);
    ym_ctx_t *ctx = NULL;
    ck_assert_int_eq(ym_ctx_new(m, 32, 2, &ctx), YM_OK);
    size_t V = (size_t)c.n_vocab;
    ym_state_t *sb[3];
    for (int i = 0; i < 3; i++)
        ym_state_new(&c, &sb[i]);
    float *lb = calloc(3 * V, sizeof(float));
    ym_batch b = {.n_seq = 3, .tokens = TOKS, .seq_start = STARTS, .states = sb,
                  .logits = YM_LOGITS_LAST};
    ck_assert_int_eq(ym_forward(ctx, &b, lb, NULL), YM_OK);
    float worst = 0;
    for (int i = 0; i < 3; i++) {
        ym_state_t *sa = NULL, *sd = NULL;
        ym_state_new(&c, &sa);
        ym_state_new(&c, &sd);
        float *la = calloc(V, sizeof(float)), *ld = calloc(V, sizeof(float));
        int st[2] = {0, STARTS[i + 1] - STARTS[i]};
        ym_batch a = {.n_seq = 1, .tokens = TOKS + STARTS[i], .seq_start = st, .states = &sa,
                      .logits = YM_LOGITS_LAST};
        ck_assert_int_eq(ym_forward(ctx, &a, la, NULL), YM_OK);
        int one[2] = {0, 1};
        for (int r = STARTS[i]; r < STARTS[i + 1]; r++) {
            ym_batch s1 = {.n_seq = 1, .tokens = TOKS + r, .seq_start = one, .states = &sd,
                           .logits = YM_LOGITS_LAST};
            ck_assert_int_eq(ym_forward(ctx, &s1, ld, NULL), YM_OK);
        }
        float d1 = max_abs_diff(la, lb + i * V, V), d2 = max_abs_diff(ld, lb + i * V, V);
        size_t ns = (size_t)c.n_layer * c.d_inner * c.d_state;
        float d3 = max_abs_diff(sd->ssm, sb[i]->ssm, ns);
        worst = fmaxf(worst, fmaxf(d1, fmaxf(d2, d3)));
        free(la);
        free(ld);
        ym_state_free(sa);
        ym_state_free(sd);
    }
    printf("sparse: batched vs alone vs token-by-token: max diff %.3g\n", worst);
    ck_assert_msg(worst < 1e-4f, "max diff %g", worst);
    for (int i = 0; i < 3; i++)
        ym_state_free(sb[i]);
    free(lb);
    ym_ctx_free(ctx);
    ym_model_unref(m);
    ym_sparsity_free(sp);
    ym_model_unref(dense);
}
END_TEST

/* The scan plan's bookkeeping against a direct count from the profile, and the weight bytes
 * of the served model against the dense model's minus what the profile removes. */
START_TEST(test_sparse_plan_counts_and_weight_bytes)
{
    ym_config c = cfg_of(40, 3, 16, 4, 3, 41, 0);
    ym_model_t *dense = random_model(&c, 2);
    ym_sparsity *sp = random_profile(&c, 0.5, 0.5, 1, -1, 9);
    ym_model_t *m = NULL;
    ck_assert_int_eq(ym_model_new_sparse(dense, sp, &m, NULL), YM_OK);
    int64_t kept = 0, live = 0;
    for (int l = 0; l < c.n_layer; l++) {
        kept += sp->layers[l].n_kept;
        live += sp->layers[l].n_live;
        ck_assert_int_eq(m->layers[l].d_inner, sp->layers[l].n_kept);
        const ym_scan_plan *pl = m->layers[l].scan;
        int64_t lanes = 0;
        for (int b = 0; b < pl->n_blocks; b++) {
            const ym_scan_block *B = &pl->blocks[b];
            ck_assert_int_eq(B->d0, b * YM_SCAN_BLOCK);
            /* n_u = entries live in some channel of the block, counted directly. */
            int nu = 0;
            for (int n = 0; n < c.d_state; n++) {
                int any = 0;
                for (int j = 0; j < B->w; j++)
                    any |= ym_sparsity_state_kept(sp, l, sp->layers[l].kept[B->d0 + j], n);
                nu += any;
            }
            ck_assert_int_eq(B->n_u, nu);
            lanes += (int64_t)B->w * nu;
        }
        ck_assert_int_eq(pl->n_lanes, lanes);
        ck_assert_int_eq(pl->n_live, sp->layers[l].n_live);
    }
    ck_assert_int_eq(m->n_channels_kept, kept);
    ck_assert_int_eq(m->n_states_live, live);
    /* Per layer a dense channel costs 2*dm (in_proj) + K + 1 (conv) + P (x_proj) + dtr + 1
     * (dt_proj) + 1 (D) + dm (out_proj) floats, and the scan reads one A per lane. */
    int P = c.dt_rank + 2 * c.d_state;
    size_t per_ch = 2 * (size_t)c.d_model + c.d_conv + 1 + P + c.dt_rank + 1 + 1 + c.d_model;
    size_t removed = (size_t)(c.n_layer * c.d_inner - kept) * per_ch * 4 +
                     (size_t)(c.n_layer * c.d_inner * c.d_state - m->n_scan_lanes) * 4;
    ck_assert_uint_eq(m->weight_bytes, dense->weight_bytes - removed);
    ym_model_unref(m);
    ym_sparsity_free(sp);
    ym_model_unref(dense);
}
END_TEST

/* Real checkpoints (the conformance fixtures: biases, untied head, K = 3 and 5, BF16, odd
 * sizes, state-spaces layout) under a random profile with a shuffled order. */
START_TEST(test_sparse_matches_masked_reference_on_conformance_models)
{
    const char *dir = YM_FIXTURE_DIR "/conformance";
    DIR *dp = opendir(dir);
    ck_assert_ptr_nonnull(dp);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(dp)) != NULL) {
        if (e->d_name[0] == '.' || strstr(e->d_name, ".json") != NULL)
            continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        ym_model_t *dense = NULL;
        ym_diag d = {0};
        ck_assert_msg(ym_model_load(path, &dense, &d) == YM_OK, "%s: %s", path, d.msg);
        ym_sparsity *sp = random_profile(&dense->cfg, 0.6, 0.6, 1, -1, 100 + n);
        /* Logits of these models reach about 10: 5e-3 is the manifest's atol rule
         * (1e-3 * max(1, max|logit|)) at that scale; float32 error here is about 1e-5. */
        check_sparse_vs_ref(dense, sp, 32, 2, 5e-3f);
        ym_sparsity_free(sp);
        ym_model_unref(dense);
        n++;
    }
    closedir(dp);
    ck_assert_int_ge(n, 4);
}
END_TEST


/* ---- adapters on the served layout ---------------------------------------------------------- */

/* W [n_out, n_in] += Bt^T At^T for every LoRA module of a (compiled for the dense layout):
 * the merged weights PEFT's merge_and_unload() makes, written into m's own weights. */
static void merge_lora(ym_model_t *m, const ym_adapt *a)
{
    const ym_config *c = &m->cfg;
    for (int l = 0; l < c->n_layer; l++) {
        ym_layer *L = &m->layers[l];
        float *w[YM_PROJ_N] = {(float *)L->in_proj.data, (float *)L->x_proj.data, (float *)L->dt_proj_w,
                               (float *)L->out_proj.data};
        for (int pj = 0; pj < YM_PROJ_N; pj++) {
            const ym_adapt_proj *P = &a->proj[(size_t)l * YM_PROJ_N + pj];
            int ni = ym_proj_n_in(c, (ym_proj)pj), no = ym_proj_n_out(c, (ym_proj)pj);
            ck_assert_ptr_null(P->g_in);
            ck_assert_ptr_null(P->g_out);
            for (int o = 0; o < no; o++)
                for (int i = 0; i < ni; i++) {
                    double acc = 0;
                    for (int j = 0; j < P->r; j++)
                        acc += (double)P->At[(size_t)i * P->r + j] * P->Bt[(size_t)j * no + o];
                    w[pj][(size_t)o * ni + i] += (float)acc;
                }
        }
    }
}

/* Run a 3-sequence ragged batch on ctx with adapter a on every sequence; logits in out. */
static ym_err run_with(ym_ctx_t *ctx, const ym_config *cfg, const ym_adapt *a, float *out,
                       ym_diag *d)
{
    ym_state_t *st[3];
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(ym_state_new(cfg, &st[i]), YM_OK);
    const ym_adapt *ads[3] = {a, a, a};
    ym_batch b = {.n_seq = 3, .tokens = TOKS, .seq_start = STARTS, .states = st,
                  .logits = YM_LOGITS_ALL, .adapters = ads};
    ym_err err = ym_forward(ctx, &b, out, d);
    for (int i = 0; i < 3; i++)
        ym_state_free(st[i]);
    return err;
}

/* LoRA on every projection, compiled against a served sparse model (shuffled order, dropped
 * channels and entries, biases), against the masked reference of the dense model with the same
 * LoRA merged into its weights. */
START_TEST(test_sparse_lora_matches_masked_reference_of_merged_weights)
{
    ym_config c = cfg_of(16, 3, 5, 4, 2, 40, 1);
    ym_model_t *dense = random_model(&c, 7), *merged = random_model(&c, 7), *m = NULL;
    ym_sparsity *sp = random_profile(&c, 0.6, 0.6, 1, -1, 99);
    ym_diag d = {0};
    ck_assert_msg(ym_model_new_sparse(dense, sp, &m, &d) == YM_OK, "%s", d.msg);
    ym_adapter_t *ad = NULL, *as = NULL;
    ck_assert_int_eq(ym_adapter_new_random_lora(dense, 3, 0xf, 11, &ad, &d), YM_OK);
    ck_assert_int_eq(ym_adapter_new_random_lora(m, 3, 0xf, 11, &as, &d), YM_OK);
    merge_lora(merged, ym_adapter_applied(ad));
    size_t V = (size_t)c.n_vocab;
    float *ref = calloc(20 * V, sizeof(float)), *base = calloc(20 * V, sizeof(float));
    float *got = calloc(20 * V, sizeof(float));
    ym_state_t *st[3];
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(ym_state_new(&c, &st[i]), YM_OK);
    ym_batch b = {.n_seq = 3, .tokens = TOKS, .seq_start = STARTS, .states = st,
                  .logits = YM_LOGITS_ALL};
    ck_assert_int_eq(ym_forward_ref_masked(merged, sp, &b, ref), YM_OK);
    for (int i = 0; i < 3; i++)
        ym_state_reset(st[i]);
    ck_assert_int_eq(ym_forward_ref_masked(dense, sp, &b, base), YM_OK);
    for (int threads = 1; threads <= 2; threads++) {
            ym_ctx_t *ctx = NULL;
            ck_assert_int_eq(ym_ctx_new(m, 20, threads, &ctx), YM_OK);
            ck_assert_msg(run_with(ctx, &c, ym_adapter_applied(as), got, &d) == YM_OK, "%s",
                          d.msg);
            float diff = max_abs_diff(got, ref, 20 * V), moved = max_abs_diff(base, ref, 20 * V);
            printf("sparse + LoRA, %d threads: max |served - merged masked ref| = %.3g (the LoRA "
                   "moves the logits by %.3g)\n", threads, diff, moved);
            ck_assert_msg(diff < 2e-4f, "differs by %g", diff);
            ck_assert_msg(moved > 100 * diff, "the adapter changes nothing measurable");
            /* The dense-layout compilation is refused on the sparse model, and vice versa. */
            ck_assert_int_eq(run_with(ctx, &c, ym_adapter_applied(ad), got, &d), YM_EINVAL);
            ym_ctx_free(ctx);
        }
    ym_ctx_t *dctx = NULL;
    ck_assert_int_eq(ym_ctx_new(dense, 20, 1, &dctx), YM_OK);
    ck_assert_int_eq(run_with(dctx, &c, ym_adapter_applied(as), got, &d), YM_EINVAL);
    ym_ctx_free(dctx);
    for (int i = 0; i < 3; i++)
        ym_state_free(st[i]);
    free(ref);
    free(base);
    free(got);
    ym_adapter_unref(ad);
    ym_adapter_unref(as);
    ym_model_unref(m);
    ym_model_unref(merged);
    ym_model_unref(dense);
    ym_sparsity_free(sp);
}
END_TEST

/* PEFT's own adapters (LoRA, IA³ on inputs and on outputs with biases, a hybrid set) on the
 * conformance model, under a profile that only reorders the channels: the served model with
 * the adapter compiled against it equals the dense model with the adapter, up to float
 * reassociation. Checks the permutation of every channel-indexed tensor and bias. */
START_TEST(test_sparse_peft_adapters_under_a_shuffled_order_equal_dense)
{
    ym_model_t *dense = NULL, *m = NULL;
    ym_diag d = {0};
    ck_assert_msg(ym_model_load(YM_FIXTURE("conformance/m40-bias-k3-f32"), &dense, &d) == YM_OK,
                  "%s", d.msg);
    const ym_config *c = &dense->cfg;
    ym_sparsity *sp = random_profile(c, 1.0, 1.0, 1, -1, 5);
    ck_assert_msg(ym_model_new_sparse(dense, sp, &m, &d) == YM_OK, "%s", d.msg);
    static const char *names[] = {"lora-all4-m40", "ia3-ff-m40", "ia3-out-m40", "hybrid-m40"};
    size_t V = (size_t)c->n_vocab;
    float *want = calloc(20 * V, sizeof(float)), *got = calloc(20 * V, sizeof(float));
    ym_ctx_t *cd = NULL, *cs = NULL;
    ck_assert_int_eq(ym_ctx_new(dense, 20, 2, &cd), YM_OK);
    ck_assert_int_eq(ym_ctx_new(m, 20, 2, &cs), YM_OK);
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s/peft/%s", YM_FIXTURE_DIR, names[k]);
        ym_adapter_t *ad = NULL, *as = NULL;
        ck_assert_msg(ym_adapter_load(dir, dense, NULL, &ad, &d) == YM_OK, "%s", d.msg);
        ck_assert_msg(ym_adapter_load(dir, m, NULL, &as, &d) == YM_OK, "%s", d.msg);
        ck_assert_int_eq(run_with(cd, c, ym_adapter_applied(ad), want, &d), YM_OK);
        ck_assert_msg(run_with(cs, c, ym_adapter_applied(as), got, &d) == YM_OK, "%s", d.msg);
        float diff = max_abs_diff(got, want, 20 * V);
        printf("%s on a reordered served model: max |served - dense| = %.3g\n", names[k], diff);
        ck_assert_msg(diff < 1e-4f, "%s differs by %g", names[k], diff);
        ym_adapter_unref(ad);
        ym_adapter_unref(as);
    }
    ym_ctx_free(cd);
    ym_ctx_free(cs);
    free(want);
    free(got);
    ym_model_unref(m);
    ym_model_unref(dense);
    ym_sparsity_free(sp);
}
END_TEST

/* A compact state (ym_state_new_for_model) runs the served model bit for bit like a full-size
 * one, holds only the kept channels' conv windows and the plan's blocked entries, round-trips
 * through serialization, and no other model takes it. */
START_TEST(test_sparse_compact_states)
{
    ym_config c = cfg_of(32, 3, 16, 4, 2, 40, 1);
    ym_model_t *dense = random_model(&c, 3), *m = NULL, *m2 = NULL;
    ym_sparsity *sp = random_profile(&c, 0.5, 0.5, 1, 1, 17);
    ym_diag d = {0};
    ck_assert_msg(ym_model_new_sparse(dense, sp, &m, &d) == YM_OK, "%s", d.msg);
    ck_assert_msg(ym_model_new_sparse(dense, sp, &m2, &d) == YM_OK, "%s", d.msg);
    ym_state_t *full[3], *cs[3];
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(ym_state_new(&c, &full[i]), YM_OK);
        ck_assert_int_eq(ym_state_new_for_model(m, &cs[i]), YM_OK);
    }
    size_t expect = 0;
    for (int l = 0; l < c.n_layer; l++)
        expect += (size_t)m->layers[l].d_inner * (c.d_conv - 1) +
                  (size_t)(m->layers[l].scan ? m->layers[l].scan->n_lanes : 0);
    size_t nfull = ym_state_floats(full[0]), ncs = ym_state_floats(cs[0]);
    printf("compact state: %zu floats (%zu used by the layout) vs %zu full size\n", ncs, expect,
           nfull);
    ck_assert_uint_ge(ncs, expect);
    ck_assert_uint_lt(ncs, expect + (size_t)c.n_layer * 2 * 16); /* only 16-float padding */
    ck_assert_uint_lt(2 * ncs, nfull);
    size_t V = (size_t)c.n_vocab;
    float *a = calloc(20 * V, sizeof(float)), *b = calloc(20 * V, sizeof(float));
    ym_ctx_t *ctx = NULL;
    ck_assert_int_eq(ym_ctx_new(m, 20, 2, &ctx), YM_OK);
    for (int round = 0; round < 2; round++) {
        ym_batch bf = {.n_seq = 3, .tokens = TOKS, .seq_start = STARTS, .states = full,
                       .logits = YM_LOGITS_ALL};
        ym_batch bc = bf;
        bc.states = cs;
        ck_assert_int_eq(ym_forward(ctx, &bf, a, NULL), YM_OK);
        ck_assert_int_eq(ym_forward(ctx, &bc, b, NULL), YM_OK);
        ck_assert_int_eq(memcmp(a, b, 20 * V * sizeof(float)), 0);
    }
    /* Serialization round trip; a full-size state does not take a compact one's bytes. */
    size_t n = ym_state_serialized_size(cs[1]), w = 0;
    unsigned char *buf = malloc(n);
    ck_assert_int_eq(ym_state_serialize(cs[1], buf, n, &w), YM_OK);
    ym_state_t *back = NULL;
    ck_assert_int_eq(ym_state_new_like(cs[1], &back), YM_OK);
    ck_assert_int_eq(ym_state_deserialize(back, buf, n, NULL), YM_OK);
    ck_assert_int_eq(memcmp(back->ssm, cs[1]->ssm, ncs - (size_t)cs[1]->conv_off[c.n_layer]), 0);
    ck_assert_int_eq(ym_state_deserialize(full[1], buf, n, NULL), YM_EFORMAT);
    ck_assert_int_eq(ym_state_copy(full[1], cs[1]), YM_EINVAL);
    /* Only the model it was made for runs it. */
    int one[2] = {0, 1};
    ym_batch b1 = {.n_seq = 1, .tokens = TOKS, .seq_start = one, .states = &back,
                   .logits = YM_LOGITS_LAST};
    ym_ctx_t *c2 = NULL, *cd = NULL;
    ck_assert_int_eq(ym_ctx_new(m2, 1, 1, &c2), YM_OK);
    ck_assert_int_eq(ym_ctx_new(dense, 1, 1, &cd), YM_OK);
    ck_assert_int_eq(ym_forward(c2, &b1, a, NULL), YM_EINVAL);
    ck_assert_int_eq(ym_forward(cd, &b1, a, NULL), YM_EINVAL);
    ym_ctx_free(c2);
    ym_ctx_free(cd);
    ym_state_free(back);
    free(buf);
    for (int i = 0; i < 3; i++) {
        ym_state_free(full[i]);
        ym_state_free(cs[i]);
    }
    free(a);
    free(b);
    ym_ctx_free(ctx);
    ym_model_unref(m);
    ym_model_unref(m2);
    ym_model_unref(dense);
    ym_sparsity_free(sp);
}
END_TEST

Suite *sparse_suite(void)
{
    Suite *s = suite_create("sparse");
    TCase *tc = tcase_create("served");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_sparse_matches_masked_reference_random_models);
    tcase_add_test(tc, test_sparse_low_bit_models_match_their_masked_reference);
    tcase_add_test(tc, test_sparse_masks_change_the_result);
    tcase_add_test(tc, test_sparse_batched_equals_alone_and_decode_equals_prefill);
    tcase_add_test(tc, test_sparse_plan_counts_and_weight_bytes);
    tcase_add_test(tc, test_sparse_matches_masked_reference_on_conformance_models);
    tcase_add_test(tc, test_sparse_lora_matches_masked_reference_of_merged_weights);
    tcase_add_test(tc, test_sparse_peft_adapters_under_a_shuffled_order_equal_dense);
    tcase_add_test(tc, test_sparse_compact_states);
    suite_add_tcase(s, tc);
    return s;
}
