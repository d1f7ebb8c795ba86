/* engine/config.h - Mamba model configuration from config.json.
 *
 * Accepts transformers' MambaConfig keys and the original state-spaces keys (DESIGN.md §3);
 * each short name here is mapped to its HF key once, in engine/config.c. */
#ifndef YM_ENGINE_CONFIG_H
#define YM_ENGINE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/err.h"

typedef struct ym_config {
    int d_model;      /* hidden_size | d_model */
    int n_layer;      /* num_hidden_layers | n_layer */
    int d_inner;      /* expand * hidden_size (intermediate_size if given) */
    int d_state;      /* state_size | ssm_cfg.d_state (16) */
    int d_conv;       /* conv_kernel | ssm_cfg.d_conv (4) */
    int dt_rank;      /* time_step_rank ("auto" = ceil(d_model / 16)) */
    int n_vocab;      /* vocab_size as configured; state-spaces form: rounded up to
                         pad_vocab_size_multiple. The loader takes the embedding's row count. */
    bool use_bias;      /* in_proj / out_proj bias */
    bool use_conv_bias; /* conv1d bias */
    bool tie_embeddings;
    float norm_eps;     /* layer_norm_epsilon | 1e-5 */
    bool residual_in_fp32; /* recorded; the engine keeps the residual in f32 either way */
    int bos_id, eos_id, pad_id; /* -1 when absent */
    bool state_spaces;  /* true when read from the original state-spaces keys */
} ym_config;

/* Parse config.json bytes. Missing required keys, wrong types, non-positive or absurd sizes,
 * an unsupported architecture (e.g. Mamba-2's "ssm_cfg.layer": "Mamba2") -> YM_EFORMAT naming
 * the key. */
ym_err ym_config_parse(const char *json, size_t len, ym_config *out, ym_diag *diag);
ym_err ym_config_load(const char *path, ym_config *out, ym_diag *diag);

/* Bytes of one sequence's recurrent state in f32: n_layer * d_inner * (d_conv - 1 + d_state) * 4. */
size_t ym_config_state_bytes(const ym_config *c);
/* Parameter count implied by the config (embedding counted once when tied). */
size_t ym_config_n_params(const ym_config *c);

#endif
