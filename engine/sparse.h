/* engine/sparse.h - the served layout of a sparse model (docs/ARCHITECTURE.md §4).
 *
 * Given a dense model and a sparsity profile, ym_model_new_sparse builds a new model whose
 * layers hold only their kept channels, in scan order: in_proj's x and z halves, conv1d,
 * x_proj's columns, dt_proj's rows and bias, A, D and out_proj's columns are pruned copies;
 * every layer has its own d_inner (ym_layer.d_inner) and a masked scan plan (ym_layer.scan)
 * that computes live state entries only. Embedding, norms, lm_head and out_proj's bias are
 * borrowed from the dense model, of which the new model holds a reference.
 *
 * A Mamba-2 model takes a head profile instead (engine/sparsity.h): each layer holds only its
 * kept heads, in their original order (their rows of in_proj's z, x and dt parts, their conv
 * channels, dt_bias, A, D, gated-norm weights and out_proj columns; B and C whole), and a plan
 * (ym_layer.ssd_plan, engine/ssd.h) of their groups and live state entries, which the SSD
 * decode step and chunked prefill follow. Adapters do not run on it yet.
 *
 * The served model runs through the ordinary ym_forward. Its states have the dense model's
 * dimensions (same ym_state_new), but each layer's SSM state is stored in the scan plan's
 * blocked layout and its conv state by served channel: a state belongs to the model it was
 * made with (the dimensions alone do not tell a dense state from a sparse one). */
#ifndef YM_ENGINE_SPARSE_H
#define YM_ENGINE_SPARSE_H

#include "engine/err.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "engine/sparsity.h"

/* New reference in *out (ym_model_unref). The profile must fit base's config (checked:
 * YM_EFORMAT naming the kind or dimension: a channel profile for Mamba-1, a head profile for
 * Mamba-2); base must be a dense Mamba-1 or Mamba-2 model (YM_EINVAL otherwise). The
 * profile is not kept. Allocates about the pruned weights' size. Any thread; blocking. */
ym_err ym_model_new_sparse(ym_model_t *base, const ym_sparsity *sp, ym_model_t **out,
                           ym_diag *diag);

/* 1 when m is a served sparse model. */
int ym_model_is_sparse(const ym_model_t *m);

/* e[p] = sum_n s[p, n]^2 for every served channel p of layer l (e [L->d_inner]), read from
 * ssm, the layer's SSM state of a sequence run on m (ym_state_ssm(state, l)). Works for dense
 * and sparse models. */
void ym_model_state_energy(const ym_model_t *m, int l, const float *ssm, double *e);

/* out[p, n] = s[p, n] for every served channel p of layer l and entry n (out
 * [L->d_inner, d_state]; dead entries of a sparse layer read 0), from ssm as above. */
void ym_model_state_entries(const ym_model_t *m, int l, const float *ssm, float *out);

/* The reference semantics of a profile, for tests: the plain reference forward
 * (ym_forward_ref) of the dense model with x[d] := 0 after conv+silu for dropped channels and
 * s[d, n] held at 0 for dropped entries. sp NULL: the dense reference. dense must be dense. */
ym_err ym_forward_ref_masked(const ym_model_t *dense, const ym_sparsity *sp,
                             const ym_batch *batch, float *logits);

#endif
