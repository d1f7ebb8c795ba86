/* engine/order.h - the math of the correlation scan order (docs/ARCHITECTURE.md §4):
 * |Pearson| correlation of channel series, the path cost of an order, a nearest-neighbour
 * Hamiltonian path, 2-opt improvement, and the block fill of an order under a state mask.
 * Pure functions of their inputs, no global state; any thread. Used by `yunmin calibrate`. */
#ifndef YM_ENGINE_ORDER_H
#define YM_ENGINE_ORDER_H

#include <stdint.h>

#include "engine/err.h"

/* R[i, j] = |corr(X[i, :], X[j, :])| (Pearson, over T samples); X [n, T], R [n, n].
 * A series with zero variance correlates 0 with every other one (R[i, i] = 1 still).
 * Returns YM_ENOMEM or YM_OK. Blocking (one BLAS product, O(n^2 T)). */
ym_err ym_order_abs_corr(const double *X, int n, int T, double *R);

/* R[i, j] = Jaccard similarity of the live sets of items i and j: |a & b| / |a | b| (1 when
 * both are empty); live [n, N] of 0/1. For the mask-similarity order, the comparison that
 * shows what block fill an order can reach under a given state mask. */
void ym_order_mask_similarity(const uint8_t *live, int n, int N, double *R);

/* The cost of visiting perm[0..m) in that order: -sum_k R[perm[k], perm[k+1]]  (R [n, n]). */
double ym_order_path_cost(const double *R, int n, const int32_t *perm, int m);

/* Nearest-neighbour path from start: repeatedly step to the unvisited node of largest R
 * (ties to the lowest index). perm [n] receives a permutation of [0, n). */
void ym_order_nn_path(const double *R, int n, int start, int32_t *perm);

/* 2-opt on an open path: reverse a segment perm[i+1..j] whenever that lowers the cost (the
 * path's two ends may move too), until no reversal helps or max_passes passes were made.
 * Returns the number of reversals applied. O(n^2) per pass. */
int ym_order_two_opt(const double *R, int n, int32_t *perm, int max_passes);

/* The derived order: the nearest-neighbour path from each of n_starts start nodes (all nodes
 * when n_starts >= n; else nodes spread evenly, node 0 first) and the cheapest one kept, then
 * 2-opt when two_opt. perm [n]. YM_ENOMEM or YM_OK. */
ym_err ym_order_derive(const double *R, int n, int n_starts, int two_opt, int32_t *perm);

/* Block fill of an order: items perm[0..m) are cut into blocks of W consecutive ones; a block
 * computes W' x |union of its items' live entries| lanes (W' its width). live [.., N] holds
 * 0/1 per (item, entry), indexed by perm's values. Returns live entries / lanes (1 when no
 * lane is computed); *n_lanes and *n_live (may be NULL) get the two counts.                 */
double ym_order_block_fill(const uint8_t *live, int N, const int32_t *perm, int m, int W,
                           int64_t *n_lanes, int64_t *n_live);

#endif
