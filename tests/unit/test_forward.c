/* tests/unit/test_forward.c - the fast forward against the plain double-precision reference,
 * and the invariants the server relies on: batched == alone, prefill == token-by-token decode,
 * any thread count and either kernel set give the same result. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward.h"
#include "engine/kernels.h"
#include "engine/model.h"
#include "engine/state.h"
#include "engine/weight.h"
#include "testutil.h"

static ym_config tiny_config(int d_model, int n_layer, int d_state, int d_conv, int dt_rank,
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

static ym_wtype model_type = YM_WT_F32; /* the type tiny_model serves its matrices in */

static ym_model_t *tiny_model(const ym_config *c, uint64_t seed)
{
    ym_model_t *m = NULL;
    ym_diag d = {0};
    ck_assert_msg(ym_model_new_random_as(c, seed, model_type, &m, &d) == YM_OK, "%s", d.msg);
    ck_assert_int_eq(m->wtype, model_type);
    return m;
}

static ym_state_t **states_new(const ym_config *c, int n)
{
    ym_state_t **s = calloc((size_t)n, sizeof(*s));
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(ym_state_new(c, &s[i]), YM_OK);
    return s;
}

static void states_free(ym_state_t **s, int n)
{
    for (int i = 0; i < n; i++)
        ym_state_free(s[i]);
    free(s);
}

static float max_abs_diff(const float *a, const float *b, size_t n)
{
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m))
            m = d; /* NaN propagates as a failure */
    }
    return m;
}

/* Tokens of a ragged batch of three sequences with lengths 7, 1, 12. */
static const int32_t TOKS[20] = {3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3, 2, 38, 4, 6, 26, 4, 33, 8};
static const int STARTS[4] = {0, 7, 8, 20};

static void check_fast_vs_ref(const ym_config *cfg, int n_threads, float tol)
{
    ym_model_t *m = tiny_model(cfg, 42);
    ym_ctx_t *ctx = NULL;
    ck_assert_int_eq(ym_ctx_new(m, 32, n_threads, &ctx), YM_OK);
    ym_state_t **sf = states_new(cfg, 3), **sr = states_new(cfg, 3);
    size_t V = (size_t)cfg->n_vocab;
    float *lf = calloc(20 * V, sizeof(float)), *lr = calloc(20 * V, sizeof(float));
    ym_batch b = {.n_seq = 3, .tokens = TOKS, .seq_start = STARTS, .states = sf,
                  .logits = YM_LOGITS_ALL};
    ym_diag d = {0};
    /* Twice: the second call runs from the states the first one left. */
    for (int round = 0; round < 2; round++) {
        b.states = sf;
        ck_assert_msg(ym_forward(ctx, &b, lf, &d) == YM_OK, "%s", d.msg);
        b.states = sr;
        ck_assert_int_eq(ym_forward_ref(m, &b, lr), YM_OK);
        float diff = max_abs_diff(lf, lr, 20 * V);
        printf("forward d_model=%d N=%d K=%d threads=%d isa=%s round %d: max |fast - ref| = %.3g\n",
               cfg->d_model, cfg->d_state, cfg->d_conv, n_threads, ym_kernels_isa(), round, diff);
        ck_assert_msg(diff < tol, "max diff %g >= %g", diff, tol);
    }
    ck_assert_int_eq(sf[0]->n_tokens, 14);
    ck_assert_int_eq(sf[1]->n_tokens, 2);
    free(lf);
    free(lr);
    states_free(sf, 3);
    states_free(sr, 3);
    ym_ctx_free(ctx);
    ym_model_unref(m);
}

/* float32 against double over a few layers of O(1) activations: errors of a few 1e-6
 * relative per operation; 2e-4 absolute on logits of magnitude ~1 leaves a wide margin
 * while any real mistake (a wrong index, a missing term) is off by 1e-2 or more. */
START_TEST(test_forward_matches_reference_odd_shapes)
{
    ym_config c = tiny_config(40, 3, 16, 4, 3, 41, 0);
    check_fast_vs_ref(&c, 2, 2e-4f);
    c = tiny_config(24, 2, 5, 3, 2, 50, 1); /* N not a multiple of 16, bias, K=3 */
    check_fast_vs_ref(&c, 2, 2e-4f);
    c = tiny_config(36, 2, 20, 5, 4, 45, 0); /* N=20 (masked tail), K=5 */
    c.use_conv_bias = 0;
    check_fast_vs_ref(&c, 3, 2e-4f);
    c = tiny_config(20, 2, 16, 1, 2, 40, 0); /* K=1: no conv state at all */
    check_fast_vs_ref(&c, 1, 2e-4f);
}
END_TEST

/* More rows than the small-batch kernel takes: the projections go through OpenBLAS sgemm. */
static void check_long_prefill(void)
{
    ym_config cfg = tiny_config(40, 2, 16, 4, 3, 41, 1);
    ym_model_t *m = tiny_model(&cfg, 9);
    ym_ctx_t *ctx = NULL;
    ck_assert_int_eq(ym_ctx_new(m, 80, 2, &ctx), YM_OK);
    enum { R = 73 };
    int32_t toks[R];
    for (int i = 0; i < R; i++)
        toks[i] = (int32_t)((i * 17 + 3) % cfg.n_vocab);
    int st[3] = {0, 64, R};
    ym_state_t **sf = states_new(&cfg, 2), **sr = states_new(&cfg, 2);
    size_t V = (size_t)cfg.n_vocab;
    float *lf = calloc(R * V, sizeof(float)), *lr = calloc(R * V, sizeof(float));
    ym_batch b = {.n_seq = 2, .tokens = toks, .seq_start = st, .states = sf,
                  .logits = YM_LOGITS_ALL};
    ck_assert_int_eq(ym_forward(ctx, &b, lf, NULL), YM_OK);
    b.states = sr;
    ck_assert_int_eq(ym_forward_ref(m, &b, lr), YM_OK);
    float diff = max_abs_diff(lf, lr, R * V);
    printf("forward 73-row prefill (sgemm path): max |fast - ref| = %.3g\n", diff);
    ck_assert_msg(diff < 2e-4f, "max diff %g", diff);
    free(lf);
    free(lr);
    states_free(sf, 2);
    states_free(sr, 2);
    ym_ctx_free(ctx);
    ym_model_unref(m);
}

START_TEST(test_forward_long_prefill_through_sgemm_matches_reference)
{
    check_long_prefill();
}
END_TEST

/* bf16 and int8 models against the reference forward of the same model (double, over the
 * dequantized weights): with f32 activations the kernels must add no error beyond f32
 * rounding, whatever the type (int8 activations are measured in test_conformance.c).
 * Ragged batches, one row at a time, the 73-row prefill (widened tiles + sgemm), portable
 * matmul kernels. */
START_TEST(test_forward_low_bit_types_match_reference)
{
    ym_matmul_int8_activations(0); /* f32 activations: exact up to f32 rounding */
    for (int t = YM_WT_BF16; t <= YM_WT_INT8; t++) {
        model_type = (ym_wtype)t;
        ym_config c = tiny_config(40, 3, 16, 4, 3, 41, 0);
        check_fast_vs_ref(&c, 2, 2e-4f);
        c = tiny_config(24, 2, 5, 3, 2, 50, 1);
        check_fast_vs_ref(&c, 1, 2e-4f);
        ym_matmul_force_portable(1);
        check_fast_vs_ref(&c, 2, 2e-4f);
        ym_matmul_force_portable(0);
        check_long_prefill();
        model_type = YM_WT_F32;
    }
    ym_matmul_int8_activations(1);
}
END_TEST

START_TEST(test_forward_portable_kernels_match_reference)
{
    ym_kernels_force_portable(1);
    ym_config c = tiny_config(40, 3, 16, 4, 3, 41, 1);
    check_fast_vs_ref(&c, 2, 2e-4f);
    c = tiny_config(24, 2, 5, 3, 2, 50, 0);
    check_fast_vs_ref(&c, 1, 2e-4f);
    ym_kernels_force_portable(0);
}
END_TEST

/* Each sequence alone equals the same sequence inside a ragged batch, and a prefill chunk
 * equals feeding the same tokens one decode step at a time. */
START_TEST(test_forward_batched_equals_alone_and_decode_equals_prefill)
{
    ym_config cfg = tiny_config(48, 2, 16, 4, 3, 60, 0);
    ym_model_t *m = tiny_model(&cfg, 7);
    ym_ctx_t *ctx = NULL;
    ck_assert_int_eq(ym_ctx_new(m, 32, 2, &ctx), YM_OK);
    size_t V = (size_t)cfg.n_vocab;
    ym_state_t **sb = states_new(&cfg, 3);
    float *lb = calloc(3 * V, sizeof(float));
    ym_batch b = {.n_seq = 3, .tokens = TOKS, .seq_start = STARTS, .states = sb,
                  .logits = YM_LOGITS_LAST};
    ck_assert_int_eq(ym_forward(ctx, &b, lb, NULL), YM_OK);
    float worst = 0;
    for (int i = 0; i < 3; i++) {
        /* alone, as one prefill chunk */
        ym_state_t **sa = states_new(&cfg, 1);
        float *la = calloc(V, sizeof(float));
        int st[2] = {0, STARTS[i + 1] - STARTS[i]};
        ym_batch a = {.n_seq = 1, .tokens = TOKS + STARTS[i], .seq_start = st, .states = sa,
                      .logits = YM_LOGITS_LAST};
        ck_assert_int_eq(ym_forward(ctx, &a, la, NULL), YM_OK);
        float d1 = max_abs_diff(la, lb + i * V, V);
        /* alone, one token per step */
        ym_state_t **sd = states_new(&cfg, 1);
        float *ld = calloc(V, sizeof(float));
        int one[2] = {0, 1};
        for (int r = STARTS[i]; r < STARTS[i + 1]; r++) {
            ym_batch dstep = {.n_seq = 1, .tokens = TOKS + r, .seq_start = one, .states = sd,
                              .logits = YM_LOGITS_LAST};
            ck_assert_int_eq(ym_forward(ctx, &dstep, ld, NULL), YM_OK);
        }
        float d2 = max_abs_diff(ld, lb + i * V, V);
        /* the states agree too */
        size_t ns = (size_t)cfg.n_layer * cfg.d_inner * cfg.d_state;
        float d3 = max_abs_diff(sd[0]->ssm, sb[i]->ssm, ns);
        if (d1 > worst)
            worst = d1;
        if (d2 > worst)
            worst = d2;
        if (d3 > worst)
            worst = d3;
        free(la);
        free(ld);
        states_free(sa, 1);
        states_free(sd, 1);
    }
    printf("batched vs alone vs token-by-token: max diff %.3g\n", worst);
    ck_assert_msg(worst < 1e-4f, "max diff %g", worst);
    free(lb);
    states_free(sb, 3);
    ym_ctx_free(ctx);
    ym_model_unref(m);
}
END_TEST

/* all_logits: a marked sequence gets a row of logits per token, the same rows YM_LOGITS_ALL
 * gives it, while the others keep their last row (a prompt scored beside decoding rows), in
 * the fast forward and in the reference. */
START_TEST(test_forward_all_logits_marks_give_every_row_of_their_sequence)
{
    ym_config cfg = tiny_config(48, 2, 16, 4, 3, 60, 0);
    ym_model_t *m = tiny_model(&cfg, 11);
    ym_ctx_t *ctx = NULL;
    ck_assert_int_eq(ym_ctx_new(m, 32, 2, &ctx), YM_OK);
    size_t V = (size_t)cfg.n_vocab;
    /* Sequences 0 (7 rows) and 2 (12 rows) marked, 1 (1 row) not: 7 + 1 + 12 rows out. */
    const unsigned char marks[3] = {1, 0, 1};
    for (int ref = 0; ref < 2; ref++) {
        ym_state_t **sm = states_new(&cfg, 3), **sa = states_new(&cfg, 3);
        float *lm = calloc(20 * V, sizeof(float)), *la = calloc(20 * V, sizeof(float));
        ym_batch b = {.n_seq = 3, .tokens = TOKS, .seq_start = STARTS, .states = sm,
                      .logits = YM_LOGITS_LAST, .all_logits = marks};
        ym_batch all = {.n_seq = 3, .tokens = TOKS, .seq_start = STARTS, .states = sa,
                        .logits = YM_LOGITS_ALL};
        if (ref) {
            ck_assert_int_eq(ym_forward_ref(m, &b, lm), YM_OK);
            ck_assert_int_eq(ym_forward_ref(m, &all, la), YM_OK);
        } else {
            ck_assert_int_eq(ym_forward(ctx, &b, lm, NULL), YM_OK);
            ck_assert_int_eq(ym_forward(ctx, &all, la, NULL), YM_OK);
        }
        /* every row equals YM_LOGITS_ALL's row of the same token, bit for bit or nearly */
        float d = max_abs_diff(lm, la, 7 * V);                      /* sequence 0, all rows */
        float d1 = max_abs_diff(lm + 7 * V, la + 7 * V, V);          /* sequence 1, its row */
        float d2 = max_abs_diff(lm + 8 * V, la + 8 * V, 12 * V);     /* sequence 2, all rows */
        printf("all_logits (%s): max |marked - all| = %.3g %.3g %.3g\n", ref ? "ref" : "fast",
               d, d1, d2);
        ck_assert_msg(d < 1e-5f && d1 < 1e-5f && d2 < 1e-5f, "diff %g %g %g", d, d1, d2);
        free(lm);
        free(la);
        states_free(sm, 3);
        states_free(sa, 3);
    }
    ym_ctx_free(ctx);
    ym_model_unref(m);
}
END_TEST

START_TEST(test_forward_rejects_bad_batches_without_touching_state)
{
    ym_config cfg = tiny_config(16, 1, 4, 4, 1, 20, 0);
    ym_model_t *m = tiny_model(&cfg, 1);
    ym_ctx_t *ctx = NULL;
    ck_assert_int_eq(ym_ctx_new(m, 4, 2, &ctx), YM_OK);
    ym_state_t **s = states_new(&cfg, 1);
    float logits[20];
    ym_diag d = {0};
    int32_t bad[2] = {3, 20};
    int st[2] = {0, 2};
    ym_batch b = {.n_seq = 1, .tokens = bad, .seq_start = st, .states = s,
                  .logits = YM_LOGITS_LAST};
    ck_assert_int_eq(ym_forward(ctx, &b, logits, &d), YM_EINVAL);
    ck_assert_ptr_nonnull(strstr(d.msg, "out of range"));
    ck_assert_int_eq(s[0]->n_tokens, 0);
    int32_t many[5] = {1, 2, 3, 4, 5};
    int st5[2] = {0, 5};
    b.tokens = many;
    b.seq_start = st5;
    ck_assert_int_eq(ym_forward(ctx, &b, logits, &d), YM_EINVAL); /* 5 rows > 4 */
    int empty[3] = {0, 1, 1};
    ym_state_t *two[2] = {s[0], s[0]};
    b.n_seq = 2;
    b.seq_start = empty;
    b.states = two;
    ck_assert_int_eq(ym_forward(ctx, &b, logits, &d), YM_EINVAL);
    ym_config other = tiny_config(16, 2, 4, 4, 1, 20, 0);
    ym_state_t **wrong = states_new(&other, 1);
    b.n_seq = 1;
    b.seq_start = st;
    b.tokens = many;
    b.states = wrong;
    ck_assert_int_eq(ym_forward(ctx, &b, logits, &d), YM_EINVAL);
    states_free(wrong, 1);
    states_free(s, 1);
    ym_ctx_free(ctx);
    ym_model_unref(m);
}
END_TEST

/* The vectorized softplus (exp + log1p polynomials) against libm in double over the range
 * dt_proj produces, including the far left tail where 1 + exp(x) would round to 1. */
START_TEST(test_softplus_kernel_accurate_over_the_range)
{
    enum { N = 100001 };
    static float v[N], bias[N], orig[N];
    for (int i = 0; i < N; i++)
        orig[i] = v[i] = -40.0f + 80.0f * (float)i / (N - 1);
    ym_softplus_bias_f32(v, N, 1, bias, 0, N);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        double x = orig[i], ref = x > 20 ? x : log1p(exp(x));
        double rel = fabs(v[i] - ref) / ref;
        if (!(rel <= worst))
            worst = rel;
    }
    printf("softplus (%s): max relative error %.3g\n", ym_kernels_isa(), worst);
    ck_assert_msg(worst < 1e-6, "softplus relative error %g", worst);
}
END_TEST

/* Uniform in [0, 1) from a 64-bit LCG (the high 24 bits). */
static float uniform01(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)(*s >> 40) / 16777216.0f;
}

/* The conv + silu kernel: the vectorized path (permute loads for d_conv 4, gathers otherwise)
 * against the portable loop, over channel slices that end mid-block and start on a later block,
 * 1 to 6 rows; channels outside the slice (x and state) must stay untouched. */
START_TEST(test_conv_kernel_matches_portable_on_every_slice)
{
    enum { LD = 96, TMAX = 6, KMAX = 5 };
    static const int widths[] = {1, 5, 15, 16, 17, 31, 33, 48, 64};
    static const int rows[] = {1, 2, 3, 6};
    float w[LD * KMAX], b[LD], x0[TMAX * LD], st0[LD * (KMAX - 1)];
    float xa[TMAX * LD], sa[LD * (KMAX - 1)], xb[TMAX * LD], sb[LD * (KMAX - 1)];
    uint64_t seed = 7;
    double worst = 0;
    for (int K = 2; K <= KMAX; K++)
        for (int c0 = 0; c0 <= 16; c0 += 16)
            for (size_t wi = 0; wi < sizeof(widths) / sizeof(widths[0]); wi++)
                for (size_t ti = 0; ti < sizeof(rows) / sizeof(rows[0]); ti++) {
                    int c1 = c0 + widths[wi], T = rows[ti];
                    if (c1 > LD)
                        continue;
                    for (int i = 0; i < LD * K; i++)
                        w[i] = uniform01(&seed) - 0.5f;
                    for (int i = 0; i < LD; i++)
                        b[i] = uniform01(&seed) - 0.5f;
                    for (int i = 0; i < T * LD; i++)
                        x0[i] = 4.0f * uniform01(&seed) - 2.0f;
                    for (int i = 0; i < LD * (K - 1); i++)
                        st0[i] = 4.0f * uniform01(&seed) - 2.0f;
                    memcpy(xa, x0, sizeof(x0));
                    memcpy(xb, x0, sizeof(x0));
                    memcpy(sa, st0, sizeof(st0));
                    memcpy(sb, st0, sizeof(st0));
                    ym_conv_silu_f32(xa, LD, T, sa, w, b, K, c0, c1);
                    ym_kernels_force_portable(1);
                    ym_conv_silu_f32(xb, LD, T, sb, w, b, K, c0, c1);
                    ym_kernels_force_portable(0);
                    for (int t = 0; t < T; t++)
                        for (int d = 0; d < LD; d++) {
                            size_t i = (size_t)t * LD + d;
                            if (d < c0 || d >= c1) {
                                ck_assert_msg(xa[i] == x0[i], "K=%d [%d,%d) T=%d: x[%d,%d] touched",
                                              K, c0, c1, T, t, d);
                                continue;
                            }
                            double e = fabs((double)xa[i] - xb[i]);
                            worst = e > worst ? e : worst;
                            ck_assert_msg(e <= 1e-5, "K=%d [%d,%d) T=%d x[%d,%d]: %g vs %g", K,
                                          c0, c1, T, t, d, xa[i], xb[i]);
                        }
                    for (int d = 0; d < LD; d++)
                        for (int j = 0; j < K - 1; j++) {
                            size_t i = (size_t)d * (K - 1) + j;
                            int inside = d >= c0 && d < c1;
                            ck_assert_msg(sa[i] == sb[i] && (inside || sa[i] == st0[i]),
                                          "K=%d [%d,%d) T=%d: state[%d][%d] %g vs %g", K, c0, c1,
                                          T, d, j, sa[i], sb[i]);
                        }
                }
    printf("conv (%s) vs portable: max |diff| %.3g\n", ym_kernels_isa(), worst);
}
END_TEST

Suite *forward_suite(void)
{
    Suite *s = suite_create("forward");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_forward_matches_reference_odd_shapes);
    tcase_add_test(tc, test_forward_long_prefill_through_sgemm_matches_reference);
    tcase_add_test(tc, test_forward_low_bit_types_match_reference);
    tcase_add_test(tc, test_forward_portable_kernels_match_reference);
    tcase_add_test(tc, test_forward_batched_equals_alone_and_decode_equals_prefill);
    tcase_add_test(tc, test_forward_all_logits_marks_give_every_row_of_their_sequence);
    tcase_add_test(tc, test_forward_rejects_bad_batches_without_touching_state);
    tcase_add_test(tc, test_softplus_kernel_accurate_over_the_range);
    tcase_add_test(tc, test_conv_kernel_matches_portable_on_every_slice);
    suite_add_tcase(s, tc);
    return s;
}
