/* engine/order.c - correlation, path cost, nearest-neighbour path, 2-opt and block fill for
 * the scan order (engine/order.h, docs/ARCHITECTURE.md §4).
 *
 * Owns nothing beyond temporary buffers of one call. Thread: any (calibration runs it on the
 * CLI thread). Not a hot path: sizes are d_inner (1536 for mamba-130m) per layer, so O(n^2)
 * loops and one O(n^2 T) BLAS product per layer are fine; it must not be O(n^3). */
#include "engine/order.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

ym_err ym_order_abs_corr(const double *X, int n, int T, double *R)
{
    if (n <= 0)
        return YM_OK;
    double *Z = malloc(sizeof(double) * (size_t)n * (size_t)(T > 0 ? T : 1));
    if (Z == NULL)
        return YM_ENOMEM;
    /* Standardize each series: z = (x - mean) / sqrt(sum (x - mean)^2); then R = Z Z^T. */
    for (int i = 0; i < n; i++) {
        const double *x = X + (size_t)i * T;
        double *z = Z + (size_t)i * T, mean = 0, ss = 0;
        for (int t = 0; t < T; t++)
            mean += x[t];
        mean = T > 0 ? mean / T : 0;
        for (int t = 0; t < T; t++) {
            z[t] = x[t] - mean;
            ss += z[t] * z[t];
        }
        /* A constant series (or one so flat that rounding dominates) carries no signal. */
        double scale = ss > 1e-300 ? 1.0 / sqrt(ss) : 0.0;
        for (int t = 0; t < T; t++)
            z[t] *= scale;
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, T, 1.0, Z, T, Z, T, 0.0, R, n);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            double v = fabs(R[(size_t)i * n + j]);
            R[(size_t)i * n + j] = v > 1.0 ? 1.0 : v;
        }
        R[(size_t)i * n + i] = 1.0;
    }
    free(Z);
    return YM_OK;
}

void ym_order_mask_similarity(const uint8_t *live, int n, int N, double *R)
{
    for (int i = 0; i < n; i++)
        for (int j = i; j < n; j++) {
            int both = 0, any = 0;
            for (int q = 0; q < N; q++) {
                int a = live[(size_t)i * N + q] != 0, b = live[(size_t)j * N + q] != 0;
                both += a & b;
                any += a | b;
            }
            R[(size_t)i * n + j] = R[(size_t)j * n + i] = any > 0 ? (double)both / any : 1.0;
        }
}

double ym_order_path_cost(const double *R, int n, const int32_t *perm, int m)
{
    double c = 0;
    for (int k = 0; k + 1 < m; k++)
        c -= R[(size_t)perm[k] * n + perm[k + 1]];
    return c;
}

void ym_order_nn_path(const double *R, int n, int start, int32_t *perm)
{
    /* perm doubles as the list of unvisited nodes: positions [k, n) hold them. */
    for (int i = 0; i < n; i++)
        perm[i] = i;
    if (n == 0)
        return;
    perm[0] = start;
    perm[start] = 0;
    for (int k = 1; k < n; k++) {
        const double *row = R + (size_t)perm[k - 1] * n;
        int best = k;
        for (int j = k + 1; j < n; j++)
            if (row[perm[j]] > row[perm[best]] ||
                (row[perm[j]] == row[perm[best]] && perm[j] < perm[best]))
                best = j;
        int32_t t = perm[k];
        perm[k] = perm[best];
        perm[best] = t;
    }
}

static void reverse(int32_t *p, int i, int j)
{
    for (; i < j; i++, j--) {
        int32_t t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
}

int ym_order_two_opt(const double *R, int n, int32_t *perm, int max_passes)
{
#define W_(a, b) R[(size_t)(a) * n + (b)]
    int applied = 0;
    const double eps = 1e-12; /* only real improvements: no cycling on rounding noise */
    for (int pass = 0; pass < max_passes; pass++) {
        int improved = 0;
        /* Reversing perm[i+1..j] replaces edges (i, i+1) and (j, j+1) by (i, j) and
         * (i+1, j+1); i = -1 or j = n-1 means that side is a path end with no edge. */
        for (int i = -1; i < n - 1; i++) {
            for (int j = i + 2; j < n; j++) {
                if (i == -1 && j == n - 1)
                    continue; /* reversing everything changes nothing */
                double before = 0, after = 0;
                if (i >= 0) {
                    before += W_(perm[i], perm[i + 1]);
                    after += W_(perm[i], perm[j]);
                }
                if (j + 1 < n) {
                    before += W_(perm[j], perm[j + 1]);
                    after += W_(perm[i + 1], perm[j + 1]);
                }
                if (after > before + eps) {
                    reverse(perm, i + 1, j);
                    improved = 1;
                    applied++;
                }
            }
        }
        if (!improved)
            break;
    }
#undef W_
    return applied;
}

ym_err ym_order_derive(const double *R, int n, int n_starts, int two_opt, int32_t *perm)
{
    if (n <= 0)
        return YM_OK;
    int32_t *tmp = malloc(sizeof(int32_t) * (size_t)n);
    if (tmp == NULL)
        return YM_ENOMEM;
    if (n_starts < 1)
        n_starts = 1;
    if (n_starts > n)
        n_starts = n;
    double best = INFINITY;
    for (int s = 0; s < n_starts; s++) {
        int start = (int)((long)s * n / n_starts);
        ym_order_nn_path(R, n, start, tmp);
        double c = ym_order_path_cost(R, n, tmp, n);
        if (c < best) {
            best = c;
            memcpy(perm, tmp, sizeof(int32_t) * (size_t)n);
        }
    }
    if (two_opt)
        ym_order_two_opt(R, n, perm, 50);
    free(tmp);
    return YM_OK;
}

double ym_order_block_fill(const uint8_t *live, int N, const int32_t *perm, int m, int W,
                           int64_t *n_lanes, int64_t *n_live)
{
    int64_t lanes = 0, lv = 0;
    for (int b = 0; b < m; b += W) {
        int w = m - b < W ? m - b : W;
        for (int q = 0; q < N; q++) {
            int any = 0;
            for (int j = 0; j < w; j++) {
                int v = live[(size_t)perm[b + j] * N + q] != 0;
                any |= v;
                lv += v;
            }
            lanes += any ? w : 0;
        }
    }
    if (n_lanes != NULL)
        *n_lanes = lanes;
    if (n_live != NULL)
        *n_live = lv;
    return lanes > 0 ? (double)lv / (double)lanes : 1.0;
}
