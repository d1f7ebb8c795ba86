/* engine/config.h - Mamba model configuration from config.json.
 *
 * Accepts transformers' MambaConfig keys and the original state-spaces keys (docs/ARCHITECTURE.md §3);
 * each short name here is mapped to its HF key once, in engine/config.c. */
#ifndef YM_ENGINE_CONFIG_H
#define YM_ENGINE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/err.h"

/* The model family: which mixer each layer runs. */
typedef enum {
    YM_ARCH_MAMBA1 = 0, /* MambaForCausalLM, mamba_ssm Mamba (ssm_cfg.layer "Mamba1")       */
    YM_ARCH_MAMBA2,     /* Mamba2ForCausalLM, mamba_ssm Mamba2 (ssm_cfg.layer "Mamba2")     */
    YM_ARCH_FALCON_MAMBA, /* FalconMambaForCausalLM: Mamba-1 + weightless norms on dt, B, C */
} ym_arch;

/* "mamba", "mamba2", "falcon_mamba" (the model_type each is written with). */
const char *ym_arch_name(ym_arch a);

typedef struct ym_config {
    ym_arch arch;
    int d_model;      /* hidden_size | d_model */
    int n_layer;      /* num_hidden_layers | n_layer */
    int d_inner;      /* expand * hidden_size (intermediate_size if given) */
    int d_state;      /* state_size | ssm_cfg.d_state (16) */
    int d_conv;       /* conv_kernel | ssm_cfg.d_conv (4) */
    int dt_rank;      /* time_step_rank ("auto" = ceil(d_model / 16)); Mamba-2: unused, 0 */
    int n_vocab;      /* vocab_size as configured; state-spaces form: rounded up to
                         pad_vocab_size_multiple. The loader takes the embedding's row count. */
    bool use_bias;      /* in_proj / out_proj bias */
    bool use_conv_bias; /* conv1d bias */
    bool tie_embeddings;
    float norm_eps;     /* layer_norm_epsilon | 1e-5 */
    bool residual_in_fp32; /* recorded; the engine keeps the residual in f32 either way */
    int bos_id, eos_id, pad_id; /* -1 when absent */
    bool state_spaces;  /* true when read from the original state-spaces keys */
    /* Mamba-2 only (0 otherwise): d_inner = n_head * head_dim, heads of a group share B, C */
    int n_head;         /* num_heads | d_inner / ssm_cfg.headdim */
    int head_dim;       /* head_dim | ssm_cfg.headdim (64) */
    int n_group;        /* n_groups (8) | ssm_cfg.ngroups (1); divides n_head */
    int chunk_size;     /* chunk_size (256) | ssm_cfg.chunk_size (256): training's SSD chunk */
    float dt_min, dt_max; /* time_step_limit | ssm_cfg.dt_limit: dt clamp, (0, INFINITY) */
    float gated_norm_eps; /* the gated RMSNorm's eps: layer_norm_epsilon | 1e-5 (mamba_ssm) */
    /* Falcon-Mamba only (0 otherwise) */
    float mixer_rms_eps;  /* mixer_rms_eps (1e-6): the norms on dt, B and C */
} ym_config;

/* Parse config.json bytes: Mamba-1, Mamba-2 and Falcon-Mamba in transformers' form, Mamba-1 and
 * Mamba-2 in mamba_ssm's form. Missing required keys, wrong types, non-positive or absurd
 * sizes, an unsupported architecture (attention layers, MLP blocks, other model types) ->
 * YM_EFORMAT naming the key. */
ym_err ym_config_parse(const char *json, size_t len, ym_config *out, ym_diag *diag);
/* Read and parse a file (errors name the path). */
ym_err ym_config_load(const char *path, ym_config *out, ym_diag *diag);

/* Channels of one layer's conv window: d_inner, or Mamba-2's x|B|C (d_inner + 2*n_group*d_state). */
int ym_config_conv_channels(const ym_config *c);

/* Bytes of one sequence's recurrent state in f32. Mamba-1: n_layer * d_inner * (d_conv - 1 +
 * d_state) * 4; Mamba-2: n_layer * ((d_inner + 2 * n_group * d_state) * (d_conv - 1) + n_head *
 * head_dim * d_state) * 4. */
size_t ym_config_state_bytes(const ym_config *c);
/* Parameter count implied by the config (embedding counted once when tied). */
size_t ym_config_n_params(const ym_config *c);

#endif
