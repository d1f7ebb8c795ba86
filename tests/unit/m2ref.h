/* tests/unit/m2ref.h - a Mamba-2 fixture's reference logits and the three ways the Mamba-2
 * suites (test_mamba2.c, test_mamba2_sparse.c) run a model against them. Test code only: every
 * failure is a Check assertion. */
#ifndef YM_TESTS_M2REF_H
#define YM_TESTS_M2REF_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"
#include "engine/safetensors.h"

typedef struct m2_ref {
    ym_st_set_t *set; /* owned */
    int T, V;
    int32_t *ids;  /* owned [T] */
    float *logits; /* owned [T, V] */
    double scale;  /* max(1, max |logit|) */
} m2_ref;

/* Read a fixture's logits.safetensors ("ids" I32 [T], "logits" [T, V]); m2_ref_free frees. */
void m2_ref_load(const char *path, m2_ref *r);
void m2_ref_free(m2_ref *r);
double m2_maxdiff(const float *a, const float *b, size_t n);

/* m (dense or served sparse) on r->ids, on n_threads threads: err[0] = max |diff| of a
 * whole-prompt prefill, err[1] of token-by-token decode, err[2] of a ragged batch in which
 * sequence 0 prefills [0, T/2) and then [T/2, T) in one batch with sequence 1's decode row. */
void m2_run_modes(ym_model_t *m, const m2_ref *r, int n_threads, double err[3]);

#endif
