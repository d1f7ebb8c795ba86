/* engine/state.h - one sequence's recurrent state: conv window and SSM state of every layer.
 *
 * conv: [n_layer][conv_ch][d_conv-1] last inputs of the causal conv (oldest first), conv_ch
 *       = d_inner (Mamba-1, Falcon-Mamba) or d_inner + 2*n_group*d_state (Mamba-2: x|B|C);
 * ssm:  [n_layer][d_inner][d_state] (Mamba-2: [n_layer][n_head][head_dim][d_state]).  Fixed size, independent of sequence length.
 * A compact state (ym_state_new_for_model of a served sparse model) holds only what that
 * model's layers serve: each layer's kept channels' conv windows and its scan plan's blocked
 * SSM entries, at per-layer offsets. Any model runs a full-size state of its dimensions; a
 * compact one only the model it was made for.
 * A state is owned by one sequence at a time and touched only by the thread running it. */
#ifndef YM_ENGINE_STATE_H
#define YM_ENGINE_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/config.h"
#include "engine/err.h"
#include "engine/model.h"

typedef struct ym_state {
    int n_layer, d_inner, d_conv, d_state; /* copied from the config at creation */
    int conv_ch;                           /* channels of a layer's conv window */
    int64_t n_tokens;                      /* tokens consumed since the last reset */
    float *conv;                           /* owned, [n_layer, d_inner, d_conv-1] (full size) */
    float *ssm;                            /* owned, [n_layer, d_inner, d_state]  (full size) */
    int64_t *conv_off, *ssm_off;           /* owned [n_layer + 1] float offsets of each layer
                                              (compact states), or NULL: the full strides */
    const void *layout;                    /* compact: the model it was made for, else NULL */
} ym_state_t;

/* New zeroed state for a model of this config. New object in *out (ym_state_free). */
ym_err ym_state_new(const ym_config *cfg, ym_state_t **out);
/* The smallest state m runs: compact for a served sparse model, full size otherwise. */
ym_err ym_state_new_for_model(const ym_model_t *m, ym_state_t **out);
/* A new zeroed state with src's dimensions and layout. */
ym_err ym_state_new_like(const ym_state_t *src, ym_state_t **out);
/* Floats the state holds (conv and SSM together). */
size_t ym_state_floats(const ym_state_t *s);
void ym_state_free(ym_state_t *s); /* NULL-safe */
void ym_state_reset(ym_state_t *s);
/* Copy src into dst; both must have the same dimensions and layout (else YM_EINVAL). */
ym_err ym_state_copy(ym_state_t *dst, const ym_state_t *src);
float *ym_state_conv(ym_state_t *s, int layer); /* [conv_ch, d_conv-1] of that layer */
float *ym_state_ssm(ym_state_t *s, int layer);  /* [d_inner, d_state]  of that layer */

/* Serialized form: a 48-byte header (magic "YMST", version, dims, n_tokens, payload checksum)
 * then conv and ssm as little-endian f32. Written as version 2 (XXH3-64 checksum); version 1
 * (FNV-1a-64) is read too. */
size_t ym_state_serialized_size(const ym_state_t *s);
/* Write into buf[0..cap). *n_written = ym_state_serialized_size(s). cap too small -> YM_EINVAL. */
ym_err ym_state_serialize(const ym_state_t *s, void *buf, size_t cap, size_t *n_written);
/* Read into s (dims must match s's), version 1 or 2: bad magic, version, dims, size or checksum
 * -> YM_EFORMAT, and s is left unchanged. */
ym_err ym_state_deserialize(ym_state_t *s, const void *buf, size_t len, ym_diag *diag);

#endif
