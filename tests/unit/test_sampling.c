/* tests/unit/test_sampling.c - validation, greedy, seeded draws, filters, penalties, logprobs.
 *
 * Expected values come from plain reimplementations written here (penalty formula then argmax,
 * log_softmax in double, softmax for the chi-square test), never from the sampler itself. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampling.h"
#include "testutil.h"

/* Test-local generator for logits (independent of the sampler's). */
static uint64_t lcg_state;
static float rnd_uniform(float lo, float hi)
{
    lcg_state = lcg_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (hi - lo) * (float)((lcg_state >> 40) * (1.0 / 16777216.0));
}

static void fill_random(float *l, int n, uint64_t seed)
{
    lcg_state = seed;
    for (int i = 0; i < n; i++)
        l[i] = rnd_uniform(-4.0f, 4.0f);
}

static int32_t plain_argmax(const float *l, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[best])
            best = i;
    return best;
}

static ym_sampler_t *new_sampler(const ym_sampling *s, int n_vocab)
{
    ym_sampler_t *sp = NULL;
    ck_assert_int_eq(ym_sampler_new(s, n_vocab, &sp), YM_OK);
    ck_assert_ptr_nonnull(sp);
    return sp;
}

/* ---- validation ------------------------------------------------------------------------ */

static void expect_invalid(ym_sampling s, const char *param)
{
    ym_diag diag = {0};
    ck_assert_int_eq(ym_sampling_validate(&s, &diag), YM_EINVAL);
    ck_assert_str_eq(diag.param, param);
    ck_assert(strlen(diag.msg) > 0);
    ym_sampler_t *sp = (ym_sampler_t *)1;
    ck_assert_int_eq(ym_sampler_new(&s, 10, &sp), YM_EINVAL);
    ck_assert_ptr_null(sp);
}

START_TEST(test_sampling_default_is_valid)
{
    ym_sampling s = ym_sampling_default();
    ck_assert_int_eq(ym_sampling_validate(&s, NULL), YM_OK);
    ck_assert_float_eq(s.temperature, 1.0f);
    ck_assert_float_eq(s.top_p, 1.0f);
    ck_assert_float_eq(s.repetition_penalty, 1.0f);
    ck_assert_int_eq(s.top_k, 0);
}
END_TEST

START_TEST(test_sampling_rejects_out_of_range_fields_naming_them)
{
    ym_sampling d = ym_sampling_default(), s;
    s = d, s.temperature = -0.1f, expect_invalid(s, "temperature");
    s = d, s.temperature = NAN, expect_invalid(s, "temperature");
    s = d, s.temperature = INFINITY, expect_invalid(s, "temperature");
    s = d, s.top_p = 0.0f, expect_invalid(s, "top_p");
    s = d, s.top_p = 1.5f, expect_invalid(s, "top_p");
    s = d, s.top_p = NAN, expect_invalid(s, "top_p");
    s = d, s.top_k = -2, expect_invalid(s, "top_k");
    s = d, s.min_p = -0.01f, expect_invalid(s, "min_p");
    s = d, s.min_p = 1.01f, expect_invalid(s, "min_p");
    s = d, s.presence_penalty = 2.5f, expect_invalid(s, "presence_penalty");
    s = d, s.presence_penalty = -2.5f, expect_invalid(s, "presence_penalty");
    s = d, s.frequency_penalty = 2.01f, expect_invalid(s, "frequency_penalty");
    s = d, s.frequency_penalty = NAN, expect_invalid(s, "frequency_penalty");
    s = d, s.repetition_penalty = 0.0f, expect_invalid(s, "repetition_penalty");
    s = d, s.repetition_penalty = -1.0f, expect_invalid(s, "repetition_penalty");
    s = d, s.n_logprobs = YM_MAX_LOGPROBS + 1, expect_invalid(s, "logprobs");
    s = d, s.n_logprobs = -1, expect_invalid(s, "logprobs");
}
END_TEST

START_TEST(test_sampling_accepts_boundary_values)
{
    ym_sampling s = ym_sampling_default();
    s.temperature = 0.0f;
    s.top_p = 1.0f;
    s.top_k = -1;
    s.min_p = 1.0f;
    s.presence_penalty = -2.0f;
    s.frequency_penalty = 2.0f;
    s.repetition_penalty = 0.5f;
    s.n_logprobs = YM_MAX_LOGPROBS;
    ck_assert_int_eq(ym_sampling_validate(&s, NULL), YM_OK);
    ym_sampler_t *sp = NULL;
    ck_assert_int_eq(ym_sampler_new(&s, 0, &sp), YM_EINVAL);
    ck_assert_ptr_null(sp);
    ym_sampler_free(NULL);
}
END_TEST

/* ---- greedy and its equivalents -------------------------------------------------------- */

START_TEST(test_sampling_greedy_is_argmax_with_lowest_id_on_ties)
{
    ym_sampling s = ym_sampling_default();
    s.temperature = 0.0f;
    ym_sampler_t *sp = new_sampler(&s, 6);
    float l1[6] = {0.1f, 2.0f, -1.0f, 2.0f, 1.9f, 2.0f};
    ck_assert_int_eq(ym_sampler_sample(sp, l1, NULL), 1);
    float l2[6] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    ck_assert_int_eq(ym_sampler_sample(sp, l2, NULL), 0);
    float l3[6] = {-5.0f, -3.0f, -3.0f, -4.0f, -7.0f, -3.5f};
    ck_assert_int_eq(ym_sampler_sample(sp, l3, NULL), 1);
    ym_sampler_free(sp);

    float l[1000];
    sp = new_sampler(&s, 1000);
    for (uint64_t seed = 1; seed < 50; seed++) {
        fill_random(l, 1000, seed);
        int32_t want = plain_argmax(l, 1000);
        ck_assert_int_eq(ym_sampler_sample(sp, l, NULL), want);
    }
    ym_sampler_free(sp);
}
END_TEST

static void check_equals_greedy(ym_sampling s, int n_vocab)
{
    float *l = malloc(sizeof(float) * (size_t)n_vocab);
    ym_sampler_t *sp = new_sampler(&s, n_vocab);
    for (uint64_t seed = 1; seed < 200; seed++) {
        fill_random(l, n_vocab, seed);
        if (seed % 3 == 0) /* a tie for the maximum: the lower id must win */
            l[n_vocab / 2] = l[n_vocab / 3] = 10.0f;
        int32_t want = plain_argmax(l, n_vocab);
        ck_assert_int_eq(ym_sampler_sample(sp, l, NULL), want);
    }
    ym_sampler_free(sp);
    free(l);
}

START_TEST(test_sampling_top_k_one_is_greedy)
{
    ym_sampling s = ym_sampling_default();
    s.temperature = 1.5f;
    s.top_k = 1;
    s.seed = 7, s.has_seed = 1;
    check_equals_greedy(s, 5000);
    check_equals_greedy(s, 3);
}
END_TEST

START_TEST(test_sampling_tiny_top_p_is_greedy)
{
    ym_sampling s = ym_sampling_default();
    s.temperature = 2.0f;
    s.top_p = 1e-6f;
    s.seed = 11, s.has_seed = 1;
    check_equals_greedy(s, 5000);
    s.top_k = 50; /* top-k then top-p */
    check_equals_greedy(s, 5000);
}
END_TEST

/* ---- seeds ----------------------------------------------------------------------------- */

static void draw_seq(ym_sampling s, int32_t *ids, int n)
{
    float l[64];
    ym_sampler_t *sp = new_sampler(&s, 64);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < 64; j++)
            l[j] = (float)((j * 7 + i) % 13) * 0.1f;
        ids[i] = ym_sampler_sample(sp, l, NULL);
    }
    ym_sampler_free(sp);
}

START_TEST(test_sampling_same_seed_same_tokens_other_seed_differs)
{
    enum { N = 300 };
    int32_t a[N], b[N], c[N];
    ym_sampling configs[4];
    for (int k = 0; k < 4; k++) {
        configs[k] = ym_sampling_default();
        configs[k].has_seed = 1;
    }
    configs[1].top_k = 10;
    configs[2].top_p = 0.8f;
    configs[3].min_p = 0.5f, configs[3].temperature = 0.7f;
    for (int k = 0; k < 4; k++) {
        ym_sampling s = configs[k];
        s.seed = 1234;
        draw_seq(s, a, N);
        draw_seq(s, b, N);
        ck_assert_mem_eq(a, b, sizeof(a));
        s.seed = 1235;
        draw_seq(s, c, N);
        int differ = 0;
        for (int i = 0; i < N; i++)
            differ += a[i] != c[i];
        ck_assert_int_gt(differ, N / 10);
    }
    /* Unseeded samplers draw their seed from the OS: two of them disagree. */
    ym_sampling s = ym_sampling_default();
    draw_seq(s, a, N);
    draw_seq(s, b, N);
    ck_assert(memcmp(a, b, sizeof(a)) != 0);
}
END_TEST

/* ---- filters --------------------------------------------------------------------------- */

/* Draw n times from fixed logits; counts[id]++. */
static void draw_counts(ym_sampling s, const float *logits, int n_vocab, int n, int *counts)
{
    float *l = malloc(sizeof(float) * (size_t)n_vocab);
    ym_sampler_t *sp = new_sampler(&s, n_vocab);
    memset(counts, 0, sizeof(int) * (size_t)n_vocab);
    for (int i = 0; i < n; i++) {
        memcpy(l, logits, sizeof(float) * (size_t)n_vocab);
        int32_t id = ym_sampler_sample(sp, l, NULL);
        ck_assert(id >= 0 && id < n_vocab);
        counts[id]++;
    }
    ym_sampler_free(sp);
    free(l);
}

/* Chi-square of counts against probabilities p (those with p == 0 must have no draws).
 * Returns the statistic; *df = categories with p > 0 minus one. */
static double chi_square(const int *counts, const double *p, int n_vocab, int n, int *df)
{
    double chi = 0.0;
    int k = 0;
    for (int i = 0; i < n_vocab; i++) {
        if (p[i] == 0.0) {
            ck_assert_msg(counts[i] == 0, "token %d drawn %d times but filtered out", i,
                          counts[i]);
            continue;
        }
        double e = p[i] * n;
        chi += (counts[i] - e) * (counts[i] - e) / e;
        k++;
    }
    *df = k - 1;
    return chi;
}

/* Softmax of logits / t in double, then keep only the ids with keep[i], renormalized. */
static void softmax_keep(const float *l, int n, double t, const int *keep, double *p)
{
    double m = -INFINITY, z = 0.0;
    for (int i = 0; i < n; i++)
        if (l[i] > m)
            m = l[i];
    for (int i = 0; i < n; i++) {
        p[i] = keep == NULL || keep[i] ? exp((l[i] - m) / t) : 0.0;
        z += p[i];
    }
    for (int i = 0; i < n; i++)
        p[i] /= z;
}

/* Upper 0.1 % points of chi-square for df 1..6: a correct sampler fails 1 in 1000 seeds,
 * and the seeds here are fixed. */
static const double chi_crit_001[] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46};

START_TEST(test_sampling_temperature_one_matches_softmax)
{
    const float l[5] = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f};
    enum { N = 20000 };
    int counts[5], df;
    double p[5];
    softmax_keep(l, 5, 1.0, NULL, p);
    ym_sampling s = ym_sampling_default();
    s.seed = 42, s.has_seed = 1;
    draw_counts(s, l, 5, N, counts);
    double chi = chi_square(counts, p, 5, N, &df);
    ck_assert_int_eq(df, 4);
    ck_assert_msg(chi < chi_crit_001[df], "chi-square %g >= %g (counts %d %d %d %d %d)", chi,
                  chi_crit_001[df], counts[0], counts[1], counts[2], counts[3], counts[4]);

    /* Temperature 0.5 is softmax(l / 0.5), not softmax(l). */
    s.temperature = 0.5f;
    s.seed = 43;
    draw_counts(s, l, 5, N, counts);
    softmax_keep(l, 5, 0.5, NULL, p);
    chi = chi_square(counts, p, 5, N, &df);
    ck_assert_msg(chi < chi_crit_001[df], "T=0.5: chi-square %g", chi);
    double p1[5];
    softmax_keep(l, 5, 1.0, NULL, p1);
    chi = chi_square(counts, p1, 5, N, &df);
    ck_assert_msg(chi > 100.0, "T=0.5 draws look like T=1 (chi %g)", chi);
}
END_TEST

START_TEST(test_sampling_top_k_top_p_min_p_keep_the_right_tokens)
{
    /* Probabilities at T = 1: 0.4, 0.25, 0.15, 0.1, 0.06, 0.04 (ids shuffled). */
    const double pr[6] = {0.1, 0.4, 0.04, 0.25, 0.06, 0.15};
    float l[6];
    for (int i = 0; i < 6; i++)
        l[i] = (float)log(pr[i]);
    enum { N = 20000 };
    int counts[6], df;
    double p[6];
    ym_sampling s = ym_sampling_default();
    s.has_seed = 1;

    /* top_k = 3 keeps ids 1, 3, 5. */
    s.top_k = 3, s.seed = 100;
    draw_counts(s, l, 6, N, counts);
    softmax_keep(l, 6, 1.0, (const int[]){0, 1, 0, 1, 0, 1}, p);
    double chi = chi_square(counts, p, 6, N, &df);
    ck_assert_int_eq(df, 2);
    ck_assert_msg(chi < chi_crit_001[df], "top_k: chi-square %g", chi);

    /* top_p = 0.7: 0.4 + 0.25 = 0.65 < 0.7, so 0.15 joins: ids 1, 3, 5. top_p = 0.6: 1, 3. */
    s.top_k = 0, s.top_p = 0.7f, s.seed = 101;
    draw_counts(s, l, 6, N, counts);
    chi = chi_square(counts, p, 6, N, &df);
    ck_assert_int_eq(df, 2);
    ck_assert_msg(chi < chi_crit_001[df], "top_p: chi-square %g", chi);
    s.top_p = 0.6f, s.seed = 102;
    draw_counts(s, l, 6, N, counts);
    softmax_keep(l, 6, 1.0, (const int[]){0, 1, 0, 1, 0, 0}, p);
    chi = chi_square(counts, p, 6, N, &df);
    ck_assert_int_eq(df, 1);
    ck_assert_msg(chi < chi_crit_001[df], "top_p 0.6: chi-square %g", chi);

    /* min_p = 0.2: keep p >= 0.2 * 0.4 = 0.08: ids 1, 3, 5, 0. */
    s.top_p = 1.0f, s.min_p = 0.2f, s.seed = 103;
    draw_counts(s, l, 6, N, counts);
    softmax_keep(l, 6, 1.0, (const int[]){1, 1, 0, 1, 0, 1}, p);
    chi = chi_square(counts, p, 6, N, &df);
    ck_assert_int_eq(df, 3);
    ck_assert_msg(chi < chi_crit_001[df], "min_p: chi-square %g", chi);

    /* Applied in order top_k, top_p, min_p: top_k = 4 renormalizes to 0.4/0.9 = 0.444,
     * 0.25/0.9 = 0.278 (sum 0.722 >= 0.7) -> ids 1, 3; min_p 0.2 keeps both. */
    s.top_k = 4, s.top_p = 0.7f, s.min_p = 0.2f, s.seed = 104;
    draw_counts(s, l, 6, N, counts);
    softmax_keep(l, 6, 1.0, (const int[]){0, 1, 0, 1, 0, 0}, p);
    chi = chi_square(counts, p, 6, N, &df);
    ck_assert_int_eq(df, 1);
    ck_assert_msg(chi < chi_crit_001[df], "combined: chi-square %g", chi);

    /* min_p after top_k, on the filtered path: top 5 of them, then p >= 0.3 * 0.4 = 0.12
     * keeps ids 1, 3, 5. */
    s.top_k = 5, s.top_p = 1.0f, s.min_p = 0.3f, s.seed = 106;
    draw_counts(s, l, 6, N, counts);
    softmax_keep(l, 6, 1.0, (const int[]){0, 1, 0, 1, 0, 1}, p);
    chi = chi_square(counts, p, 6, N, &df);
    ck_assert_int_eq(df, 2);
    ck_assert_msg(chi < chi_crit_001[df], "top_k + min_p: chi-square %g", chi);

    /* Temperature 2 before top_p: probabilities flatten, so top_p = 0.7 keeps more ids. */
    s.top_k = 0, s.top_p = 0.7f, s.min_p = 0.0f, s.temperature = 2.0f, s.seed = 105;
    double pt[6];
    softmax_keep(l, 6, 2.0, NULL, pt);
    /* sorted desc: id1, id3, id5, id0, id4, id2; keep the shortest prefix reaching 0.7 */
    const int order[6] = {1, 3, 5, 0, 4, 2};
    int keep[6] = {0};
    double acc = 0.0;
    for (int i = 0; i < 6 && acc < 0.7; i++) {
        keep[order[i]] = 1;
        acc += pt[order[i]];
    }
    draw_counts(s, l, 6, N, counts);
    softmax_keep(l, 6, 2.0, keep, p);
    chi = chi_square(counts, p, 6, N, &df);
    ck_assert_int_ge(df, 3);
    ck_assert_msg(chi < chi_crit_001[df], "T=2 top_p: chi-square %g", chi);
}
END_TEST

START_TEST(test_sampling_top_p_on_a_large_vocabulary_keeps_the_nucleus)
{
    /* Against a plain full sort: the drawn ids must all lie in the nucleus. */
    enum { V = 50000, N = 500 };
    float *l = malloc(sizeof(float) * V), *w = malloc(sizeof(float) * V);
    int32_t *order = malloc(sizeof(int32_t) * V);
    int *in = calloc(V, sizeof(int));
    fill_random(l, V, 99);
    for (int i = 0; i < 20; i++)
        l[i * 997] += 6.0f; /* a peaked head */
    /* Selection sort on the head only is enough: the nucleus is small. */
    double m = -INFINITY, z = 0.0;
    for (int i = 0; i < V; i++)
        m = l[i] > m ? l[i] : m;
    for (int i = 0; i < V; i++)
        z += exp(l[i] - m);
    for (int i = 0; i < V; i++)
        order[i] = i;
    double acc = 0.0;
    int n_keep = 0;
    while (acc < 0.5 * z) {
        int best = n_keep;
        for (int j = n_keep + 1; j < V; j++)
            if (l[order[j]] > l[order[best]])
                best = j;
        int32_t t = order[n_keep];
        order[n_keep] = order[best];
        order[best] = t;
        in[order[n_keep]] = 1;
        acc += exp(l[order[n_keep]] - m);
        n_keep++;
    }
    ym_sampling s = ym_sampling_default();
    s.top_p = 0.5f, s.seed = 5, s.has_seed = 1;
    ym_sampler_t *sp = new_sampler(&s, V);
    int distinct = 0;
    int *seen = calloc(V, sizeof(int));
    for (int i = 0; i < N; i++) {
        memcpy(w, l, sizeof(float) * V);
        int32_t id = ym_sampler_sample(sp, w, NULL);
        ck_assert_msg(in[id], "drew %d outside the nucleus of %d ids", id, n_keep);
        distinct += !seen[id]++;
    }
    ck_assert_int_gt(distinct, 1);
    ym_sampler_free(sp);
    free(seen);
    free(in);
    free(order);
    free(w);
    free(l);
}
END_TEST

START_TEST(test_sampling_top_k_on_a_large_vocabulary_keeps_the_k_best)
{
    enum { V = 50280, K = 50, N = 2000 };
    float *l = malloc(sizeof(float) * V), *w = malloc(sizeof(float) * V);
    int *in = calloc(V, sizeof(int)), *hits = calloc(V, sizeof(int));
    fill_random(l, V, 4242);
    for (int i = 0; i < 30; i++)
        l[V - 1 - i * 13] = 3.999f; /* ties across the cut: lower ids must win them */
    /* The K best by (logit desc, id asc): K passes of a plain scan. */
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int i = 0; i < V; i++)
            if (!in[i] && (best < 0 || l[i] > l[best]))
                best = i;
        in[best] = 1;
    }
    ym_sampling s = ym_sampling_default();
    s.top_k = K, s.temperature = 5.0f, s.seed = 8, s.has_seed = 1;
    ym_sampler_t *sp = new_sampler(&s, V);
    int distinct = 0;
    for (int i = 0; i < N; i++) {
        memcpy(w, l, sizeof(float) * V);
        int32_t id = ym_sampler_sample(sp, w, NULL);
        ck_assert_msg(in[id], "drew %d (logit %g), not among the %d best", id, (double)l[id], K);
        distinct += !hits[id]++;
    }
    ck_assert_int_gt(distinct, K * 3 / 4); /* temperature 5 flattens: most of them appear */
    ym_sampler_free(sp);
    free(hits);
    free(in);
    free(w);
    free(l);
}
END_TEST

START_TEST(test_sampling_never_picks_nan_logits)
{
    enum { V = 300 };
    float l[V];
    ym_sampling s = ym_sampling_default();
    s.seed = 1, s.has_seed = 1;
    for (int mode = 0; mode < 4; mode++) {
        s.temperature = mode == 0 ? 0.0f : 1.0f;
        s.top_k = mode == 2 ? 10 : 0;
        s.top_p = mode == 3 ? 0.9f : 1.0f;
        ym_sampler_t *sp = new_sampler(&s, V);
        for (int it = 0; it < 200; it++) {
            fill_random(l, V, (uint64_t)it + 1);
            for (int i = 0; i < V; i += 3)
                l[i] = NAN;
            int32_t id = ym_sampler_sample(sp, l, NULL);
            ck_assert_msg(id % 3 != 0, "mode %d picked NaN id %d", mode, id);
        }
        ym_sampler_free(sp);
    }
}
END_TEST

/* ---- penalties ------------------------------------------------------------------------- */

/* The penalties written out plainly, as in the header, then argmax. */
static int32_t reference_penalized_argmax(const float *base, int n, const int *in_prompt,
                                          const int *count, float rep, float freq, float pres)
{
    float *l = malloc(sizeof(float) * (size_t)n);
    for (int i = 0; i < n; i++) {
        double v = base[i];
        if (in_prompt[i] || count[i] > 0)
            v = v > 0 ? v / rep : v * rep;
        v -= count[i] * (double)freq + (count[i] > 0 ? (double)pres : 0.0);
        l[i] = (float)v;
    }
    int32_t id = plain_argmax(l, n);
    free(l);
    return id;
}

static void run_penalty_case(float rep, float freq, float pres, float shift)
{
    enum { V = 40, STEPS = 60 };
    float base[V], l[V];
    int in_prompt[V] = {0}, count[V] = {0};
    fill_random(base, V, 777);
    /* A close race at the top between prompt tokens (3, 7) and others (21, 30), so every
     * penalty changes the winner; shift < 0 makes all logits negative (the other branch). */
    base[21] = 5.0f, base[7] = 4.9f, base[3] = 4.8f, base[30] = 4.7f;
    for (int i = 0; i < V; i++)
        base[i] += shift;
    const int32_t prompt[] = {3, 7, 7, 12, 39, 0};
    for (size_t i = 0; i < sizeof(prompt) / sizeof(prompt[0]); i++)
        in_prompt[prompt[i]] = 1;
    ym_sampling s = ym_sampling_default();
    s.temperature = 0.0f;
    s.repetition_penalty = rep;
    s.frequency_penalty = freq;
    s.presence_penalty = pres;
    ym_sampler_t *sp = new_sampler(&s, V);
    ym_sampler_add_prompt(sp, prompt, sizeof(prompt) / sizeof(prompt[0]));
    int changed = 0;
    for (int step = 0; step < STEPS; step++) {
        int32_t want = reference_penalized_argmax(base, V, in_prompt, count, rep, freq, pres);
        changed += want != plain_argmax(base, V);
        memcpy(l, base, sizeof(l));
        int32_t got = ym_sampler_sample(sp, l, NULL);
        ck_assert_msg(got == want, "rep %g freq %g pres %g step %d: got %d want %d", (double)rep,
                      (double)freq, (double)pres, step, got, want);
        count[got]++;
    }
    ck_assert_msg(changed > 0, "the penalty never mattered: the test proves nothing");
    ym_sampler_free(sp);
}

START_TEST(test_sampling_repetition_penalty_matches_plain_formula)
{
    run_penalty_case(1.3f, 0.0f, 0.0f, 0.0f);
    run_penalty_case(3.0f, 0.0f, 0.0f, 0.0f);
    run_penalty_case(0.7f, 0.0f, 0.0f, 0.0f); /* < 1 favours repeats */
    run_penalty_case(1.3f, 0.0f, 0.0f, -12.0f);
    run_penalty_case(0.9f, 0.0f, 0.0f, -12.0f);
}
END_TEST

START_TEST(test_sampling_presence_and_frequency_penalties_match_plain_formula)
{
    run_penalty_case(1.0f, 0.5f, 0.0f, 0.0f);
    run_penalty_case(1.0f, 0.0f, 1.5f, 0.0f);
    run_penalty_case(1.0f, 0.3f, 0.4f, 0.0f);
    run_penalty_case(1.2f, 0.3f, 0.4f, -12.0f);
    run_penalty_case(1.0f, -0.5f, 1.0f, 0.0f);
}
END_TEST

START_TEST(test_sampling_presence_penalty_ignores_prompt_tokens)
{
    /* Prompt tokens count for repetition_penalty only: a presence penalty alone must leave
     * a prompt token that is the argmax alone. */
    float l[4] = {0.0f, 3.0f, 2.9f, 0.0f};
    const int32_t prompt[] = {1};
    ym_sampling s = ym_sampling_default();
    s.temperature = 0.0f;
    s.presence_penalty = 2.0f;
    ym_sampler_t *sp = new_sampler(&s, 4);
    ym_sampler_add_prompt(sp, prompt, 1);
    ck_assert_int_eq(ym_sampler_sample(sp, l, NULL), 1);
    float l2[4] = {0.0f, 3.0f, 2.9f, 0.0f};
    ck_assert_int_eq(ym_sampler_sample(sp, l2, NULL), 2); /* now 1 was generated */
    ym_sampler_free(sp);
}
END_TEST

/* ---- logit_bias ------------------------------------------------------------------------ */

/* Sampling with a logit_bias equals sampling the same seed without one from logits the test
 * biased itself (after the penalties of the plain formula), step by step. */
static void run_bias_case(float temperature, int top_k, float top_p, float freq, uint64_t seed)
{
    enum { V = 500, STEPS = 200 };
    float *base = malloc(sizeof(float) * V), *l = malloc(sizeof(float) * V);
    float *ref = malloc(sizeof(float) * V);
    int *count = calloc(V, sizeof(int));
    fill_random(base, V, 4242 + seed);
    ym_sampling s = ym_sampling_default(), plain;
    s.temperature = temperature;
    s.top_k = top_k;
    s.top_p = top_p;
    s.has_seed = 1;
    s.seed = seed;
    plain = s;
    const int32_t ids[] = {0, 17, 123, 250, 499, 77};
    const float bias[] = {3.5f, -2.25f, 100.0f * (temperature > 0 ? 0.05f : 1.0f), -100.0f,
                          1.0f, 0.5f};
    s.n_logit_bias = 6;
    for (int i = 0; i < 6; i++)
        s.logit_bias[i] = (ym_logit_bias){ids[i], bias[i]};
    s.frequency_penalty = freq;
    ym_sampler_t *a = new_sampler(&s, V);
    ym_sampler_t *b = new_sampler(&plain, V); /* no penalty either: the test applies both */
    int differs = 0;
    for (int step = 0; step < STEPS; step++) {
        /* The header's formulas, in float as the sampler computes them. */
        for (int i = 0; i < V; i++)
            ref[i] = count[i] > 0 ? base[i] - ((float)count[i] * freq + 0.0f) : base[i];
        for (int i = 0; i < 6; i++)
            ref[ids[i]] += bias[i];
        memcpy(l, base, sizeof(float) * V);
        int32_t got = ym_sampler_sample(a, l, NULL);
        int32_t want = ym_sampler_sample(b, ref, NULL);
        ck_assert_msg(got == want, "T %g k %d p %g freq %g step %d: got %d want %d",
                      (double)temperature, top_k, (double)top_p, (double)freq, step, got, want);
        ck_assert_int_ne(got, 250); /* -100 */
        count[got]++;
        memcpy(l, base, sizeof(float) * V);
        for (int i = 0; i < V; i++)
            l[i] = (float)((double)base[i] - count[i] * (double)freq);
        differs += plain_argmax(l, V) != got;
    }
    if (temperature == 0.0f)
        ck_assert_int_eq(count[123], STEPS); /* +100 at greedy: always */
    ck_assert_msg(differs > 0, "the bias never mattered: the test proves nothing");
    ym_sampler_free(a);
    ym_sampler_free(b);
    free(base);
    free(l);
    free(ref);
    free(count);
}

START_TEST(test_sampling_logit_bias_matches_biased_logits)
{
    run_bias_case(0.0f, 0, 1.0f, 0.0f, 1);
    run_bias_case(0.8f, 0, 1.0f, 0.0f, 2);
    run_bias_case(1.0f, 40, 1.0f, 0.0f, 3);
    run_bias_case(0.7f, 0, 0.9f, 0.0f, 4);
    run_bias_case(1.2f, 50, 0.8f, 0.3f, 5);
}
END_TEST

START_TEST(test_sampling_logit_bias_bans_and_forces)
{
    enum { V = 64, DRAWS = 3000 };
    float base[V], l[V];
    fill_random(base, V, 99);
    base[5] = 6.0f; /* by far the likeliest token */
    ym_sampling s = ym_sampling_default();
    s.has_seed = 1;
    s.seed = 11;
    s.n_logit_bias = 1;
    s.logit_bias[0] = (ym_logit_bias){5, -100.0f};
    ym_sampler_t *sp = new_sampler(&s, V);
    for (int i = 0; i < DRAWS; i++) {
        memcpy(l, base, sizeof(l));
        ck_assert_int_ne(ym_sampler_sample(sp, l, NULL), 5);
    }
    ym_sampler_free(sp);
    s.logit_bias[0] = (ym_logit_bias){40, 100.0f};
    s.n_logprobs = 2;
    sp = new_sampler(&s, V);
    /* The reported logprob is the raw one: log_softmax of the unbiased logits, in double. */
    double mx = -INFINITY, z = 0.0;
    for (int i = 0; i < V; i++)
        mx = base[i] > mx ? base[i] : mx;
    for (int i = 0; i < V; i++)
        z += exp((double)base[i] - mx);
    double want_lp = (double)base[40] - mx - log(z);
    for (int i = 0; i < 200; i++) {
        memcpy(l, base, sizeof(l));
        ym_sample out;
        ck_assert_int_eq(ym_sampler_sample(sp, l, &out), 40);
        ck_assert_double_eq_tol(out.logprob, want_lp, 1e-4);
        ck_assert_int_eq(out.top[0].id, 5); /* the alternatives are raw too */
    }
    ym_sampler_free(sp);
}
END_TEST

START_TEST(test_sampling_logit_bias_validation)
{
    ym_sampling s = ym_sampling_default();
    s.n_logit_bias = 1;
    s.logit_bias[0] = (ym_logit_bias){3, 100.5f};
    expect_invalid(s, "logit_bias");
    s.logit_bias[0] = (ym_logit_bias){3, NAN};
    expect_invalid(s, "logit_bias");
    s.logit_bias[0] = (ym_logit_bias){-1, 1.0f};
    expect_invalid(s, "logit_bias");
    s.n_logit_bias = 2;
    s.logit_bias[0] = (ym_logit_bias){3, 1.0f};
    s.logit_bias[1] = (ym_logit_bias){3, 2.0f};
    expect_invalid(s, "logit_bias");
    s.n_logit_bias = YM_MAX_LOGIT_BIAS + 1;
    expect_invalid(s, "logit_bias");
    s.n_logit_bias = 1;
    s.logit_bias[0] = (ym_logit_bias){10, -100.0f}; /* valid, but not in a vocabulary of 10 */
    ck_assert_int_eq(ym_sampling_validate(&s, NULL), YM_OK);
    ym_sampler_t *sp = (ym_sampler_t *)1;
    ck_assert_int_eq(ym_sampler_new(&s, 10, &sp), YM_EINVAL);
    ck_assert_ptr_null(sp);
}
END_TEST

/* ---- logprobs -------------------------------------------------------------------------- */

START_TEST(test_sampling_logprobs_are_raw_log_softmax)
{
    enum { V = 3000 };
    float *base = malloc(sizeof(float) * V), *l = malloc(sizeof(float) * V);
    double *ls = malloc(sizeof(double) * V);
    ym_sampling s = ym_sampling_default();
    s.temperature = 0.7f;
    s.top_k = 40;
    s.repetition_penalty = 1.5f;
    s.frequency_penalty = 1.0f;
    s.presence_penalty = 0.5f;
    s.n_logprobs = 5;
    s.seed = 9, s.has_seed = 1;
    ym_sampler_t *sp = new_sampler(&s, V);
    const int32_t prompt[] = {1, 2, 3};
    ym_sampler_add_prompt(sp, prompt, 3);
    double max_err = 0.0;
    for (uint64_t step = 0; step < 40; step++) {
        fill_random(base, V, 1000 + step % 4); /* repeats, so penalties hit chosen tokens */
        /* log_softmax in double */
        double m = -INFINITY, z = 0.0;
        for (int i = 0; i < V; i++)
            m = base[i] > m ? base[i] : m;
        for (int i = 0; i < V; i++)
            z += exp((double)base[i] - m);
        for (int i = 0; i < V; i++)
            ls[i] = (double)base[i] - m - log(z);
        memcpy(l, base, sizeof(float) * V);
        ym_sample out;
        memset(&out, 0xAB, sizeof(out));
        int32_t id = ym_sampler_sample(sp, l, &out);
        ck_assert_int_eq(out.id, id);
        ck_assert_int_eq(out.n_top, 5);
        double err = fabs(out.logprob - ls[id]);
        max_err = err > max_err ? err : max_err;
        /* top 5 best first: compare with a plain scan for the i-th largest */
        int used[5] = {-1, -1, -1, -1, -1};
        for (int k = 0; k < 5; k++) {
            int best = -1;
            for (int i = 0; i < V; i++) {
                int taken = 0;
                for (int j = 0; j < k; j++)
                    taken |= used[j] == i;
                if (!taken && (best < 0 || base[i] > base[best]))
                    best = i;
            }
            used[k] = best;
            ck_assert_int_eq(out.top[k].id, best);
            err = fabs(out.top[k].logprob - ls[best]);
            max_err = err > max_err ? err : max_err;
        }
    }
    ck_assert_msg(max_err < 1e-5, "largest logprob difference %g", max_err);
    ym_sampler_free(sp);
    free(ls);
    free(l);
    free(base);
}
END_TEST

START_TEST(test_sampling_greedy_logprob_and_zero_alternatives)
{
    float l[3] = {1.0f, 2.0f, 0.5f};
    ym_sampling s = ym_sampling_default();
    s.temperature = 0.0f;
    s.repetition_penalty = 2.0f;
    ym_sampler_t *sp = new_sampler(&s, 3);
    const int32_t prompt[] = {1};
    ym_sampler_add_prompt(sp, prompt, 1);
    ym_sample out;
    /* 2.0 / 2 = 1.0 ties with id 0, which wins; its logprob is the raw one. */
    ck_assert_int_eq(ym_sampler_sample(sp, l, &out), 0);
    double z = exp(1.0) + exp(2.0) + exp(0.5);
    ck_assert_double_eq_tol(out.logprob, 1.0 - log(z), 1e-6);
    ck_assert_int_eq(out.n_top, 0);
    float l2[3] = {1.0f, 2.0f, 0.5f};
    /* now 0 and 1 are both seen: 0.5, 1.0, 0.5 -> id 1, raw logprob of 2.0 */
    ck_assert_int_eq(ym_sampler_sample(sp, l2, &out), 1);
    ck_assert_double_eq_tol(out.logprob, 2.0 - log(z), 1e-6);
    ym_sampler_free(sp);
}
END_TEST

Suite *sampling_suite(void)
{
    Suite *s = suite_create("sampling");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_sampling_default_is_valid);
    tcase_add_test(tc, test_sampling_rejects_out_of_range_fields_naming_them);
    tcase_add_test(tc, test_sampling_accepts_boundary_values);
    tcase_add_test(tc, test_sampling_greedy_is_argmax_with_lowest_id_on_ties);
    tcase_add_test(tc, test_sampling_top_k_one_is_greedy);
    tcase_add_test(tc, test_sampling_tiny_top_p_is_greedy);
    tcase_add_test(tc, test_sampling_same_seed_same_tokens_other_seed_differs);
    tcase_add_test(tc, test_sampling_temperature_one_matches_softmax);
    tcase_add_test(tc, test_sampling_top_k_top_p_min_p_keep_the_right_tokens);
    tcase_add_test(tc, test_sampling_top_p_on_a_large_vocabulary_keeps_the_nucleus);
    tcase_add_test(tc, test_sampling_top_k_on_a_large_vocabulary_keeps_the_k_best);
    tcase_add_test(tc, test_sampling_never_picks_nan_logits);
    tcase_add_test(tc, test_sampling_repetition_penalty_matches_plain_formula);
    tcase_add_test(tc, test_sampling_presence_and_frequency_penalties_match_plain_formula);
    tcase_add_test(tc, test_sampling_presence_penalty_ignores_prompt_tokens);
    tcase_add_test(tc, test_sampling_logprobs_are_raw_log_softmax);
    tcase_add_test(tc, test_sampling_greedy_logprob_and_zero_alternatives);
    tcase_add_test(tc, test_sampling_logit_bias_matches_biased_logits);
    tcase_add_test(tc, test_sampling_logit_bias_bans_and_forces);
    tcase_add_test(tc, test_sampling_logit_bias_validation);
    suite_add_tcase(s, tc);
    return s;
}
