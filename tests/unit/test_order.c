/* tests/unit/test_order.c - the scan-order math against independent derivations: the
 * correlation against a direct pairwise two-pass formula, the heuristic path against the
 * brute-force optimum over all orders of 7 channels, permutation validity, and block fill of
 * identity vs grouped orders on a mask built so the answer follows from counting. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/order.h"
#include "testutil.h"

static uint64_t rs = 88172645463325252ull;
static double urand(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (double)(rs >> 11) * (1.0 / 9007199254740992.0);
}

/* Pearson correlation of two series, straight from the definition. */
static double pearson(const double *a, const double *b, int T)
{
    double ma = 0, mb = 0;
    for (int t = 0; t < T; t++) {
        ma += a[t];
        mb += b[t];
    }
    ma /= T;
    mb /= T;
    double sab = 0, saa = 0, sbb = 0;
    for (int t = 0; t < T; t++) {
        sab += (a[t] - ma) * (b[t] - mb);
        saa += (a[t] - ma) * (a[t] - ma);
        sbb += (b[t] - mb) * (b[t] - mb);
    }
    return sab / sqrt(saa * sbb);
}

static int is_permutation(const int32_t *p, int n)
{
    int seen[64] = {0};
    for (int i = 0; i < n; i++) {
        if (p[i] < 0 || p[i] >= n || seen[p[i]])
            return 0;
        seen[p[i]] = 1;
    }
    return 1;
}

START_TEST(test_order_abs_corr_matches_pairwise_definition)
{
    enum { n = 6, T = 40 };
    double X[n * T], R[n * n];
    for (int t = 0; t < T; t++) {
        double base = urand();
        X[0 * T + t] = base;
        X[1 * T + t] = -3.0 * base + 2.0;      /* perfectly anti-correlated with 0 */
        X[2 * T + t] = base + 0.5 * urand();
        X[3 * T + t] = urand();
        X[4 * T + t] = 7.0;                    /* constant */
        X[5 * T + t] = urand() * urand();
    }
    ck_assert_int_eq(ym_order_abs_corr(X, n, T, R), YM_OK);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double want;
            if (i == j)
                want = 1.0;
            else if (i == 4 || j == 4)
                want = 0.0;
            else
                want = fabs(pearson(X + i * T, X + j * T, T));
            ck_assert_msg(fabs(R[i * n + j] - want) < 1e-12, "R[%d,%d] = %g, want %g", i, j,
                          R[i * n + j], want);
        }
    ck_assert(fabs(R[0 * n + 1] - 1.0) < 1e-12);
}
END_TEST

/* Every order of 7 nodes, for the optimum. */
static double brute_force_best(const double *R, int n, int32_t *p, int k, double best)
{
    if (k == n) {
        double c = ym_order_path_cost(R, n, p, n);
        return c < best ? c : best;
    }
    for (int i = k; i < n; i++) {
        int32_t t = p[k];
        p[k] = p[i];
        p[i] = t;
        best = brute_force_best(R, n, p, k + 1, best);
        t = p[k];
        p[k] = p[i];
        p[i] = t;
    }
    return best;
}

START_TEST(test_order_heuristics_are_permutations_no_better_than_optimum)
{
    enum { n = 7 };
    for (int trial = 0; trial < 20; trial++) {
        double R[n * n];
        for (int i = 0; i < n; i++) {
            R[i * n + i] = 1.0;
            for (int j = i + 1; j < n; j++)
                R[i * n + j] = R[j * n + i] = urand();
        }
        int32_t p[n];
        for (int i = 0; i < n; i++)
            p[i] = i;
        double opt = brute_force_best(R, n, p, 0, INFINITY);
        int32_t nn[n], d1[n], d2[n];
        ym_order_nn_path(R, n, 3, nn);
        ck_assert(is_permutation(nn, n));
        ck_assert_int_eq(nn[0], 3);
        ck_assert_int_eq(ym_order_derive(R, n, n, 0, d1), YM_OK);
        ck_assert_int_eq(ym_order_derive(R, n, n, 1, d2), YM_OK);
        ck_assert(is_permutation(d1, n) && is_permutation(d2, n));
        double c_nn = ym_order_path_cost(R, n, nn, n), c1 = ym_order_path_cost(R, n, d1, n);
        double c2 = ym_order_path_cost(R, n, d2, n);
        /* Costs are negative sums: the optimum is the smallest; best-of-starts <= one start;
         * 2-opt never makes a path worse. */
        ck_assert(opt <= c2 + 1e-12);
        ck_assert(c1 <= c_nn + 1e-12);
        ck_assert(c2 <= c1 + 1e-12);
        /* A 2-opt local optimum: no single reversal improves it (checked by trying them). */
        int32_t q[n];
        for (int i = -1; i < n - 1; i++)
            for (int j = i + 2; j < n; j++) {
                memcpy(q, d2, sizeof(q));
                for (int a = i + 1, b = j; a < b; a++, b--) {
                    int32_t t = q[a];
                    q[a] = q[b];
                    q[b] = t;
                }
                ck_assert(ym_order_path_cost(R, n, q, n) >= c2 - 1e-12);
            }
    }
}
END_TEST

START_TEST(test_order_nn_follows_a_planted_chain)
{
    /* Correlation high only between consecutive members of the chain 4-1-6-0-3-5-2. */
    enum { n = 7 };
    const int chain[n] = {4, 1, 6, 0, 3, 5, 2};
    double R[n * n];
    for (int i = 0; i < n * n; i++)
        R[i] = 0.1;
    for (int i = 0; i < n; i++)
        R[i * n + i] = 1.0;
    for (int k = 0; k + 1 < n; k++)
        R[chain[k] * n + chain[k + 1]] = R[chain[k + 1] * n + chain[k]] = 0.9;
    int32_t p[n];
    ck_assert_int_eq(ym_order_derive(R, n, n, 1, p), YM_OK);
    double c = ym_order_path_cost(R, n, p, n);
    ck_assert(fabs(c - (-0.9 * (n - 1))) < 1e-12);
    int fwd = 1, bwd = 1;
    for (int k = 0; k < n; k++) {
        fwd &= p[k] == chain[k];
        bwd &= p[k] == chain[n - 1 - k];
    }
    ck_assert(fwd || bwd);
}
END_TEST

START_TEST(test_order_block_fill_identity_vs_grouped)
{
    /* 8 channels, 4 entries; even channels live on entries {0, 1}, odd ones on {2, 3}.
     * Blocks of 4 in identity order mix both kinds: union 4 entries, 4*4 = 16 lanes per block
     * for 4*2 = 8 live -> fill 1/2. Grouped (evens, then odds): union 2, 8 lanes, fill 1. */
    enum { n = 8, N = 4 };
    uint8_t live[n * N];
    for (int d = 0; d < n; d++)
        for (int q = 0; q < N; q++)
            live[d * N + q] = (d % 2 == 0) ? q < 2 : q >= 2;
    int32_t id[n] = {0, 1, 2, 3, 4, 5, 6, 7}, grouped[n] = {0, 2, 4, 6, 1, 3, 5, 7};
    int64_t lanes, lv;
    double f = ym_order_block_fill(live, N, id, n, 4, &lanes, &lv);
    ck_assert_int_eq(lanes, 32);
    ck_assert_int_eq(lv, 16);
    ck_assert(fabs(f - 0.5) < 1e-12);
    f = ym_order_block_fill(live, N, grouped, n, 4, &lanes, &lv);
    ck_assert_int_eq(lanes, 16);
    ck_assert(fabs(f - 1.0) < 1e-12);
    /* A partial last block (6 of 8 channels, width 4): channels 4 and 5 are one even and one
     * odd, so their union is all 4 entries: lanes 4*4 + 2*4. */
    f = ym_order_block_fill(live, N, id, 6, 4, &lanes, &lv);
    ck_assert_int_eq(lanes, 24);
    ck_assert_int_eq(lv, 12);
    /* Nothing live: no lane computed, fill defined as 1. */
    memset(live, 0, sizeof(live));
    ck_assert(ym_order_block_fill(live, N, id, n, 4, &lanes, &lv) == 1.0);
    ck_assert_int_eq(lanes, 0);
}
END_TEST

START_TEST(test_order_mask_similarity_groups_equal_masks)
{
    /* Rows: {0,1}, {2,3}, {0,1}, {0}, {} -> Jaccard by counting. */
    enum { n = 5, N = 4 };
    const uint8_t live[n * N] = {1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0};
    double R[n * n];
    ym_order_mask_similarity(live, n, N, R);
    ck_assert(R[0 * n + 2] == 1.0 && R[0 * n + 1] == 0.0 && R[0 * n + 3] == 0.5);
    ck_assert(R[3 * n + 4] == 0.0 && R[4 * n + 4] == 1.0 && R[1 * n + 3] == 0.0);
    /* On the alternating mask of the fill test, the mask-similarity path groups the two kinds:
     * fill 1 where identity had 1/2. */
    enum { m = 8, M = 4 };
    uint8_t lv[m * M];
    for (int d = 0; d < m; d++)
        for (int q = 0; q < M; q++)
            lv[d * M + q] = (d % 2 == 0) ? q < 2 : q >= 2;
    double S[m * m];
    ym_order_mask_similarity(lv, m, M, S);
    int32_t p[m];
    ck_assert_int_eq(ym_order_derive(S, m, m, 1, p), YM_OK);
    ck_assert(is_permutation(p, m));
    ck_assert(ym_order_block_fill(lv, M, p, m, 4, NULL, NULL) == 1.0);
}
END_TEST

Suite *order_suite(void)
{
    Suite *s = suite_create("order");
    TCase *tc = tcase_create("math");
    tcase_set_timeout(tc, 120); /* fast, but a loaded machine under ASan can stall a fork */
    tcase_add_test(tc, test_order_abs_corr_matches_pairwise_definition);
    tcase_add_test(tc, test_order_heuristics_are_permutations_no_better_than_optimum);
    tcase_add_test(tc, test_order_nn_follows_a_planted_chain);
    tcase_add_test(tc, test_order_block_fill_identity_vs_grouped);
    tcase_add_test(tc, test_order_mask_similarity_groups_equal_masks);
    suite_add_tcase(s, tc);
    return s;
}
