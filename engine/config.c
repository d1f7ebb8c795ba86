/* engine/config.c - config.json of a Mamba model, in each of its published forms.
 *
 * Owns the mapping from the engine's short dimension names to the Hugging Face keys:
 * transformers' MambaConfig, Mamba2Config and FalconMambaConfig (hidden_size, state_size,
 * ...) and the original state-spaces mamba_ssm MambaConfig (d_model, n_layer, ssm_cfg {...},
 * with ssm_cfg.layer "Mamba1" or "Mamba2"). Defaults are those of the class that wrote the
 * file, so a config saved with default values reads as its writer meant it.
 * Thread: any (runs on the libuv pool at model load). Pure: no state kept between calls.
 * Must not: accept a model the engine would run differently from its reference implementation
 * (LayerNorm blocks, MLP or attention layers, other activations, Mamba-2 variants with an
 * ungated or pre-gate norm or a partial SSM): those are
 * YM_EFORMAT with a message saying what is unsupported. Keys the engine has no use for (dtype,
 * torch_dtype, architectures, initializer settings, ...) are ignored. */
#include "engine/config.h"

#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/config_int.h"
#include "engine/fileio.h"

#define MAX_CONFIG_BYTES ((size_t)16 << 20)

/* Each dimension, its HF keys in both forms, and its bounds. The upper bounds are far above any
 * published Mamba (mamba-2.8b: d_model 2560, 64 layers) and keep every product of two of them
 * well inside size_t and every single dimension inside int. */
typedef struct dim_def {
    const char *name;   /* engine name */
    const char *hf;     /* transformers MambaConfig key */
    const char *ss;     /* state-spaces key (ssm_cfg.* inside ssm_cfg) */
    size_t off;
    int lo, hi;
} dim_def;

static const dim_def dims[] = {
    { "d_model", "hidden_size", "d_model", offsetof(ym_config, d_model), 1, 65536 },
    { "n_layer", "num_hidden_layers", "n_layer", offsetof(ym_config, n_layer), 1, 1024 },
    { "d_inner", "intermediate_size", "ssm_cfg.expand * d_model", offsetof(ym_config, d_inner), 1,
      262144 },
    { "d_state", "state_size", "ssm_cfg.d_state", offsetof(ym_config, d_state), 1, 1024 },
    { "d_conv", "conv_kernel", "ssm_cfg.d_conv", offsetof(ym_config, d_conv), 1, 64 },
    { "dt_rank", "time_step_rank", "ssm_cfg.dt_rank", offsetof(ym_config, dt_rank), 1, 65536 },
    { "n_vocab", "vocab_size", "vocab_size", offsetof(ym_config, n_vocab), 1, 4 << 20 },
};
#define N_DIMS ((int)(sizeof(dims) / sizeof(dims[0])))

static const dim_def *dim_named(const char *name)
{
    for (int i = 0; i < N_DIMS; i++)
        if (strcmp(dims[i].name, name) == 0)
            return &dims[i];
    return NULL;
}

const char *ym_arch_name(ym_arch a)
{
    switch (a) {
    case YM_ARCH_MAMBA1:
        return "mamba";
    case YM_ARCH_MAMBA2:
        return "mamba2";
    case YM_ARCH_FALCON_MAMBA:
        return "falcon_mamba";
    }
    return "unknown";
}

static const char *arch_title(ym_arch a)
{
    return a == YM_ARCH_MAMBA2 ? "Mamba-2" : a == YM_ARCH_FALCON_MAMBA ? "Falcon-Mamba" : "Mamba";
}

static ym_err check_mamba2(const ym_config *c, ym_diag *diag)
{
    const char *kh = c->state_spaces ? "ssm_cfg.headdim" : "head_dim";
    const char *kg = c->state_spaces ? "ssm_cfg.ngroups" : "n_groups";
    if (c->head_dim < 1 || c->head_dim > 4096)
        return ym_diag_set(diag, YM_EFORMAT, "%s: %d is outside [1, 4096]", kh, c->head_dim);
    if (c->n_head < 1 || (long long)c->n_head * c->head_dim != c->d_inner)
        return ym_diag_set(diag, YM_EFORMAT,
                           "%s: %d heads of %d channels do not make d_inner = expand * %s = %d",
                           c->state_spaces ? "ssm_cfg.headdim" : "num_heads", c->n_head,
                           c->head_dim, c->state_spaces ? "d_model" : "hidden_size", c->d_inner);
    if (c->n_group < 1 || c->n_head % c->n_group != 0)
        return ym_diag_set(diag, YM_EFORMAT, "%s: %d does not divide the %d heads", kg,
                           c->n_group, c->n_head);
    if (c->chunk_size < 1 || c->chunk_size > 65536)
        return ym_diag_set(diag, YM_EFORMAT, "%s: %d is outside [1, 65536]",
                           c->state_spaces ? "ssm_cfg.chunk_size" : "chunk_size", c->chunk_size);
    if (!(c->dt_min >= 0.0f && c->dt_min < c->dt_max && !isnan(c->dt_max)))
        return ym_diag_set(diag, YM_EFORMAT, "%s: [%g, %g] is not a range 0 <= min < max",
                           c->state_spaces ? "ssm_cfg.dt_limit" : "time_step_limit",
                           (double)c->dt_min, (double)c->dt_max);
    if (!(c->gated_norm_eps > 0.0f && c->gated_norm_eps < 1.0f))
        return ym_diag_set(diag, YM_EFORMAT, "layer_norm_epsilon: %g is outside (0, 1)",
                           (double)c->gated_norm_eps);
    return YM_OK;
}

ym_err ym__config_check(const ym_config *c, ym_diag *diag)
{
    if ((unsigned)c->arch > (unsigned)YM_ARCH_FALCON_MAMBA)
        return ym_diag_set(diag, YM_EFORMAT, "model_type: unknown architecture %d", (int)c->arch);
    for (int i = 0; i < N_DIMS; i++) {
        if (c->arch == YM_ARCH_MAMBA2 && dims[i].off == offsetof(ym_config, dt_rank))
            continue; /* Mamba-2 has no dt_proj */
        int v = *(const int *)((const char *)c + dims[i].off);
        if (v < dims[i].lo || v > dims[i].hi)
            return ym_diag_set(diag, YM_EFORMAT, "%s (%s): %d is outside [%d, %d]",
                               c->state_spaces ? dims[i].ss : dims[i].hf, dims[i].name, v,
                               dims[i].lo, dims[i].hi);
    }
    if (!(c->norm_eps > 0.0f && c->norm_eps < 1.0f))
        return ym_diag_set(diag, YM_EFORMAT, "layer_norm_epsilon: %g is outside (0, 1)",
                           (double)c->norm_eps);
    if (c->arch == YM_ARCH_MAMBA2)
        return check_mamba2(c, diag);
    if (c->arch == YM_ARCH_FALCON_MAMBA && !(c->mixer_rms_eps > 0.0f && c->mixer_rms_eps < 1.0f))
        return ym_diag_set(diag, YM_EFORMAT, "mixer_rms_eps: %g is outside (0, 1)",
                           (double)c->mixer_rms_eps);
    return YM_OK;
}

/* ---- typed key access; every error names the key as written in the file ---------------- */

/* "a" or "a.b" (one level of nesting: ssm_cfg). */
static json_t *lookup(json_t *root, const char *path)
{
    const char *dot = strchr(path, '.');
    if (dot == NULL)
        return json_object_get(root, path);
    char parent[32];
    size_t n = (size_t)(dot - path);
    if (n >= sizeof(parent))
        return NULL;
    memcpy(parent, path, n);
    parent[n] = '\0';
    json_t *p = json_object_get(root, parent);
    return json_is_object(p) ? json_object_get(p, dot + 1) : NULL;
}

static ym_err read_int(json_t *root, const char *key, int def, int lo, int hi, int *out,
                       ym_diag *diag)
{
    json_t *v = lookup(root, key);
    if (v == NULL) {
        if (def < lo)
            return ym_diag_set(diag, YM_EFORMAT, "config.json: missing key %s", key);
        *out = def;
        return YM_OK;
    }
    if (!json_is_integer(v))
        return ym_diag_set(diag, YM_EFORMAT, "config.json: key %s must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return ym_diag_set(diag, YM_EFORMAT, "config.json: key %s: %lld is outside [%d, %d]", key,
                           (long long)x, lo, hi);
    *out = (int)x;
    return YM_OK;
}

/* A dimension by its engine name, from the key of the given form; required when def < 1. */
static ym_err read_dim(json_t *root, const char *name, bool ss, int def, int *out, ym_diag *diag)
{
    const dim_def *d = dim_named(name);
    return read_int(root, ss ? d->ss : d->hf, def, d->lo, d->hi, out, diag);
}

static ym_err read_bool(json_t *root, const char *key, bool def, bool *out, ym_diag *diag)
{
    json_t *v = lookup(root, key);
    if (v == NULL) {
        *out = def;
        return YM_OK;
    }
    if (!json_is_boolean(v))
        return ym_diag_set(diag, YM_EFORMAT, "config.json: key %s must be true or false", key);
    *out = json_is_true(v);
    return YM_OK;
}

static ym_err read_eps(json_t *root, const char *key, float *out, ym_diag *diag)
{
    json_t *v = lookup(root, key);
    if (v == NULL)
        return YM_OK;
    if (!json_is_number(v))
        return ym_diag_set(diag, YM_EFORMAT, "config.json: key %s must be a number", key);
    double x = json_number_value(v);
    if (!(x > 0.0 && x < 1.0))
        return ym_diag_set(diag, YM_EFORMAT, "config.json: key %s: %g is outside (0, 1)", key, x);
    *out = (float)x;
    return YM_OK;
}

/* bos/eos/pad: absent or null -> -1; an integer; or (newer transformers) a list, whose first
 * entry is taken. */
static ym_err read_token_id(json_t *root, const char *key, int *out, ym_diag *diag)
{
    json_t *v = lookup(root, key);
    *out = -1;
    if (json_is_array(v))
        v = json_array_get(v, 0);
    if (v == NULL || json_is_null(v))
        return YM_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 0x7fffffff)
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key %s must be a non-negative integer or null", key);
    *out = (int)json_integer_value(v);
    return YM_OK;
}

/* "auto" (or absent) = ceil(d_model / 16), as both implementations compute it. */
static ym_err read_dt_rank(json_t *root, bool ss, int d_model, int *out, ym_diag *diag)
{
    const dim_def *d = dim_named("dt_rank");
    const char *key = ss ? d->ss : d->hf;
    json_t *v = lookup(root, key);
    if (v == NULL || (json_is_string(v) && strcmp(json_string_value(v), "auto") == 0)) {
        *out = (d_model + 15) / 16;
        return YM_OK;
    }
    if (json_is_string(v))
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key %s must be \"auto\" or an integer, not \"%.32s\"", key,
                           json_string_value(v));
    return read_int(root, key, 0, d->lo, d->hi, out, diag);
}

/* ---- architecture checks --------------------------------------------------------------- */

static bool is_str(json_t *v, const char *s)
{
    return json_is_string(v) && strcmp(json_string_value(v), s) == 0;
}

/* Which family the file describes, from model_type or ssm_cfg.layer; refuses what is not one
 * of ours. Keys shared by every family (activation, norm kind, hybrid layers) are checked here
 * too. */
static ym_err detect_arch(json_t *root, ym_arch *arch, ym_diag *diag)
{
    json_t *mt = json_object_get(root, "model_type");
    if (mt != NULL && !json_is_string(mt))
        return ym_diag_set(diag, YM_EFORMAT, "config.json: key model_type must be a string");
    json_t *ssm = json_object_get(root, "ssm_cfg");
    if (ssm != NULL && !json_is_object(ssm))
        return ym_diag_set(diag, YM_EFORMAT, "config.json: key ssm_cfg must be an object");
    json_t *layer = lookup(root, "ssm_cfg.layer");
    if (layer != NULL && !is_str(layer, "Mamba1") && !is_str(layer, "Mamba2"))
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key ssm_cfg.layer: only \"Mamba1\" and \"Mamba2\" are "
                           "supported");
    bool m2_keys = json_object_get(root, "n_groups") != NULL ||
                   json_object_get(root, "head_dim") != NULL ||
                   json_object_get(root, "num_heads") != NULL;
    if (is_str(mt, "mamba2") || (mt == NULL && m2_keys) || (mt == NULL && is_str(layer, "Mamba2")))
        *arch = YM_ARCH_MAMBA2;
    else if (is_str(mt, "falcon_mamba"))
        *arch = YM_ARCH_FALCON_MAMBA;
    else if (mt == NULL || is_str(mt, "mamba"))
        *arch = YM_ARCH_MAMBA1;
    else /* jamba, zamba2, falcon_h1, nemotron_h, ...: hybrids with attention or MLP layers */
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key model_type: \"%.32s\" is not supported (only mamba, "
                           "mamba2, falcon_mamba)",
                           json_string_value(mt));
    if (*arch != YM_ARCH_MAMBA2 && (m2_keys || is_str(layer, "Mamba2")))
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key model_type: \"%s\" with Mamba-2 keys (n_groups, "
                           "head_dim, num_heads or ssm_cfg.layer Mamba2)",
                           ym_arch_name(*arch));
    json_t *act = json_object_get(root, "hidden_act");
    if (act != NULL && !(json_is_string(act) && strcmp(json_string_value(act), "silu") == 0))
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key hidden_act: only \"silu\" is supported");
    json_t *rms = json_object_get(root, "rms_norm");
    if (rms != NULL && !json_is_boolean(rms))
        return ym_diag_set(diag, YM_EFORMAT, "config.json: key rms_norm must be true or false");
    if (json_is_false(rms))
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key rms_norm is false: LayerNorm blocks are not "
                           "supported (only RMSNorm)");
    json_t *dint = json_object_get(root, "d_intermediate");
    if (dint != NULL && !(json_is_integer(dint) && json_integer_value(dint) == 0))
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key d_intermediate: MLP blocks are not supported (must "
                           "be 0)");
    json_t *attn = json_object_get(root, "attn_layer_idx");
    if (attn != NULL && !(json_is_array(attn) && json_array_size(attn) == 0))
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key attn_layer_idx: attention layers are not supported");
    return YM_OK;
}

/* ---- the two forms ------------------------------------------------------------------------ */

#define TRY(x)                                                                                     \
    do {                                                                                           \
        ym_err e_ = (x);                                                                           \
        if (e_ != YM_OK)                                                                           \
            return e_;                                                                             \
    } while (0)

/* transformers MambaConfig; defaults from its __init__. */
static ym_err parse_hf(json_t *root, ym_config *c, ym_diag *diag)
{
    int expand;
    TRY(read_dim(root, "d_model", false, 0, &c->d_model, diag));
    TRY(read_dim(root, "n_layer", false, 0, &c->n_layer, diag));
    TRY(read_dim(root, "n_vocab", false, 0, &c->n_vocab, diag));
    TRY(read_dim(root, "d_state", false, 16, &c->d_state, diag));
    TRY(read_dim(root, "d_conv", false, 4, &c->d_conv, diag));
    TRY(read_int(root, "expand", 2, 1, 64, &expand, diag));
    /* transformers stores intermediate_size = int(expand * hidden_size) and its mixer uses
     * intermediate_size, so that wins when both are present. */
    TRY(read_dim(root, "d_inner", false, expand * c->d_model, &c->d_inner, diag));
    TRY(read_dt_rank(root, false, c->d_model, &c->dt_rank, diag));
    TRY(read_bool(root, "use_bias", false, &c->use_bias, diag));
    TRY(read_bool(root, "use_conv_bias", true, &c->use_conv_bias, diag));
    TRY(read_bool(root, "tie_word_embeddings", true, &c->tie_embeddings, diag));
    TRY(read_bool(root, "residual_in_fp32", true, &c->residual_in_fp32, diag));
    TRY(read_eps(root, "layer_norm_epsilon", &c->norm_eps, diag));
    TRY(read_token_id(root, "bos_token_id", &c->bos_id, diag));
    TRY(read_token_id(root, "eos_token_id", &c->eos_id, diag));
    TRY(read_token_id(root, "pad_token_id", &c->pad_id, diag));
    return YM_OK;
}

/* mamba_ssm's MambaConfig dataclass and Mamba(...) mixer defaults. */
static ym_err parse_state_spaces(json_t *root, ym_config *c, ym_diag *diag)
{
    int expand, pad_multiple;
    bool fused;
    c->state_spaces = true;
    TRY(read_dim(root, "d_model", true, 0, &c->d_model, diag));
    TRY(read_dim(root, "n_layer", true, 0, &c->n_layer, diag));
    TRY(read_dim(root, "n_vocab", true, 0, &c->n_vocab, diag));
    TRY(read_int(root, "pad_vocab_size_multiple", 8, 1, 65536, &pad_multiple, diag));
    TRY(read_dim(root, "d_state", true, 16, &c->d_state, diag));
    TRY(read_dim(root, "d_conv", true, 4, &c->d_conv, diag));
    TRY(read_int(root, "ssm_cfg.expand", 2, 1, 64, &expand, diag));
    c->d_inner = expand * c->d_model;
    TRY(read_dt_rank(root, true, c->d_model, &c->dt_rank, diag));
    TRY(read_bool(root, "ssm_cfg.bias", false, &c->use_bias, diag));
    TRY(read_bool(root, "ssm_cfg.conv_bias", true, &c->use_conv_bias, diag));
    TRY(read_bool(root, "tie_embeddings", true, &c->tie_embeddings, diag));
    TRY(read_bool(root, "residual_in_fp32", true, &c->residual_in_fp32, diag));
    TRY(read_bool(root, "fused_add_norm", true, &fused, diag)); /* a kernel choice only */
    TRY(read_eps(root, "norm_epsilon", &c->norm_eps, diag));
    TRY(read_eps(root, "layer_norm_epsilon", &c->norm_eps, diag));
    TRY(read_token_id(root, "bos_token_id", &c->bos_id, diag));
    TRY(read_token_id(root, "eos_token_id", &c->eos_id, diag));
    TRY(read_token_id(root, "pad_token_id", &c->pad_id, diag));
    /* MixerModel allocates the embedding rounded up to the multiple (50277 -> 50280). */
    long long v = c->n_vocab;
    if (v % pad_multiple != 0)
        v += pad_multiple - v % pad_multiple;
    if (v > dim_named("n_vocab")->hi)
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key vocab_size: %lld after padding is too large", v);
    c->n_vocab = (int)v;
    return YM_OK;
}

/* time_step_limit / ssm_cfg.dt_limit: [min, max], each a number or transformers' encoding of
 * a non-finite float, {"__float__": "Infinity"} (json.dumps cannot write inf as JSON). */
static ym_err read_limit_value(json_t *v, const char *key, float *out, ym_diag *diag)
{
    if (json_is_number(v)) {
        *out = (float)json_number_value(v);
        return YM_OK;
    }
    json_t *f = json_is_object(v) ? json_object_get(v, "__float__") : NULL;
    if (json_is_object(v) && json_object_size(v) == 1 && is_str(f, "Infinity")) {
        *out = INFINITY;
        return YM_OK;
    }
    return ym_diag_set(diag, YM_EFORMAT,
                       "config.json: key %s: entries must be numbers or {\"__float__\": "
                       "\"Infinity\"}",
                       key);
}

static ym_err read_limit(json_t *root, const char *key, float *lo, float *hi, ym_diag *diag)
{
    json_t *v = lookup(root, key);
    *lo = 0.0f;
    *hi = INFINITY;
    if (v == NULL)
        return YM_OK;
    if (!json_is_array(v) || json_array_size(v) != 2)
        return ym_diag_set(diag, YM_EFORMAT, "config.json: key %s must be a list [min, max]",
                           key);
    TRY(read_limit_value(json_array_get(v, 0), key, lo, diag));
    TRY(read_limit_value(json_array_get(v, 1), key, hi, diag));
    if (!(*lo >= 0.0f && *lo < *hi && isfinite(*lo)))
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key %s: [%g, %g] is not a range 0 <= min < max", key,
                           (double)*lo, (double)*hi);
    return YM_OK;
}

/* A key the engine refuses unless it has the given boolean value. */
static ym_err need_bool(json_t *root, const char *key, bool want, const char *why, ym_diag *diag)
{
    bool v = want;
    TRY(read_bool(root, key, want, &v, diag));
    if (v != want)
        return ym_diag_set(diag, YM_EFORMAT, "config.json: key %s: %s is not supported (%s)",
                           key, v ? "true" : "false", why);
    return YM_OK;
}

/* transformers Mamba2Config; defaults from its __init__. */
static ym_err parse_hf_mamba2(json_t *root, ym_config *c, ym_diag *diag)
{
    int expand;
    c->arch = YM_ARCH_MAMBA2;
    TRY(read_dim(root, "d_model", false, 0, &c->d_model, diag));
    TRY(read_dim(root, "n_layer", false, 0, &c->n_layer, diag));
    TRY(read_dim(root, "n_vocab", false, 0, &c->n_vocab, diag));
    TRY(read_dim(root, "d_state", false, 128, &c->d_state, diag));
    TRY(read_dim(root, "d_conv", false, 4, &c->d_conv, diag));
    TRY(read_int(root, "expand", 2, 1, 64, &expand, diag));
    /* Mamba2Mixer uses int(expand * hidden_size); intermediate_size is not a Mamba2 key */
    if ((long long)expand * c->d_model > dim_named("d_inner")->hi)
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key expand: expand * hidden_size is too large");
    c->d_inner = expand * c->d_model;
    TRY(read_int(root, "num_heads", 128, 1, 65536, &c->n_head, diag));
    TRY(read_int(root, "head_dim", 64, 1, 4096, &c->head_dim, diag));
    TRY(read_int(root, "n_groups", 8, 1, 65536, &c->n_group, diag));
    TRY(read_int(root, "chunk_size", 256, 1, 65536, &c->chunk_size, diag));
    TRY(read_limit(root, "time_step_limit", &c->dt_min, &c->dt_max, diag));
    TRY(read_bool(root, "use_bias", false, &c->use_bias, diag));
    TRY(read_bool(root, "use_conv_bias", true, &c->use_conv_bias, diag));
    TRY(read_bool(root, "tie_word_embeddings", false, &c->tie_embeddings, diag));
    TRY(read_bool(root, "residual_in_fp32", true, &c->residual_in_fp32, diag));
    TRY(read_eps(root, "layer_norm_epsilon", &c->norm_eps, diag));
    c->gated_norm_eps = c->norm_eps; /* MambaRMSNormGated(eps=layer_norm_epsilon) */
    TRY(read_token_id(root, "bos_token_id", &c->bos_id, diag));
    TRY(read_token_id(root, "eos_token_id", &c->eos_id, diag));
    TRY(read_token_id(root, "pad_token_id", &c->pad_id, diag));
    c->dt_rank = 0;
    return YM_OK;
}

/* mamba_ssm's MambaConfig with ssm_cfg.layer "Mamba2": Mamba2(...) mixer defaults. */
static ym_err parse_ss_mamba2(json_t *root, ym_config *c, ym_diag *diag)
{
    int expand, pad_multiple, d_ssm;
    bool fused;
    c->arch = YM_ARCH_MAMBA2;
    c->state_spaces = true;
    TRY(read_dim(root, "d_model", true, 0, &c->d_model, diag));
    TRY(read_dim(root, "n_layer", true, 0, &c->n_layer, diag));
    TRY(read_dim(root, "n_vocab", true, 0, &c->n_vocab, diag));
    TRY(read_int(root, "pad_vocab_size_multiple", 8, 1, 65536, &pad_multiple, diag));
    TRY(read_int(root, "ssm_cfg.d_state", 128, 1, 1024, &c->d_state, diag));
    TRY(read_int(root, "ssm_cfg.d_conv", 4, 1, 64, &c->d_conv, diag));
    TRY(read_int(root, "ssm_cfg.expand", 2, 1, 64, &expand, diag));
    if ((long long)expand * c->d_model > dim_named("d_inner")->hi)
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key ssm_cfg.expand: expand * d_model is too large");
    c->d_inner = expand * c->d_model;
    TRY(read_int(root, "ssm_cfg.headdim", 64, 1, 4096, &c->head_dim, diag));
    TRY(read_int(root, "ssm_cfg.ngroups", 1, 1, 65536, &c->n_group, diag));
    TRY(read_int(root, "ssm_cfg.chunk_size", 256, 1, 65536, &c->chunk_size, diag));
    TRY(read_int(root, "ssm_cfg.d_ssm", c->d_inner, 1, 1 << 30, &d_ssm, diag));
    if (d_ssm != c->d_inner)
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key ssm_cfg.d_ssm: a partial SSM (d_ssm %d < d_inner %d, "
                           "the rest a gated MLP) is not supported",
                           d_ssm, c->d_inner);
    if (c->d_inner % c->head_dim != 0)
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key ssm_cfg.headdim: %d does not divide d_inner %d",
                           c->head_dim, c->d_inner);
    c->n_head = c->d_inner / c->head_dim;
    TRY(read_limit(root, "ssm_cfg.dt_limit", &c->dt_min, &c->dt_max, diag));
    TRY(need_bool(root, "ssm_cfg.rmsnorm", true, "the gated norm is required", diag));
    TRY(need_bool(root, "ssm_cfg.norm_before_gate", false, "the norm comes after the gate",
                  diag));
    TRY(need_bool(root, "ssm_cfg.D_has_hdim", false, "D is one value per head", diag));
    TRY(read_bool(root, "ssm_cfg.bias", false, &c->use_bias, diag));
    TRY(read_bool(root, "ssm_cfg.conv_bias", true, &c->use_conv_bias, diag));
    TRY(read_bool(root, "tie_embeddings", true, &c->tie_embeddings, diag));
    TRY(read_bool(root, "residual_in_fp32", true, &c->residual_in_fp32, diag));
    TRY(read_bool(root, "fused_add_norm", true, &fused, diag)); /* a kernel choice only */
    TRY(read_eps(root, "norm_epsilon", &c->norm_eps, diag));
    TRY(read_eps(root, "layer_norm_epsilon", &c->norm_eps, diag));
    c->gated_norm_eps = 1e-5f; /* Mamba2: RMSNormGated(d_ssm, eps=1e-5, group_size=...) */
    TRY(read_token_id(root, "bos_token_id", &c->bos_id, diag));
    TRY(read_token_id(root, "eos_token_id", &c->eos_id, diag));
    TRY(read_token_id(root, "pad_token_id", &c->pad_id, diag));
    c->dt_rank = 0;
    long long v = c->n_vocab;
    if (v % pad_multiple != 0)
        v += pad_multiple - v % pad_multiple;
    if (v > dim_named("n_vocab")->hi)
        return ym_diag_set(diag, YM_EFORMAT,
                           "config.json: key vocab_size: %lld after padding is too large", v);
    c->n_vocab = (int)v;
    return YM_OK;
}

/* transformers FalconMambaConfig: MambaConfig's keys and defaults plus mixer_rms_eps. */
static ym_err parse_hf_falcon(json_t *root, ym_config *c, ym_diag *diag)
{
    TRY(parse_hf(root, c, diag));
    c->arch = YM_ARCH_FALCON_MAMBA;
    c->mixer_rms_eps = 1e-6f;
    return read_eps(root, "mixer_rms_eps", &c->mixer_rms_eps, diag);
}

/* The form is decided by hidden_size: the converted "-hf" checkpoints carry both key sets
 * (d_model, n_layer, ssm_cfg and rms_norm beside hidden_size, ...), and transformers reads only
 * its own keys, so those win. Without hidden_size, d_model or ssm_cfg mean state-spaces. */
ym_err ym_config_parse(const char *json, size_t len, ym_config *out, ym_diag *diag)
{
    ym_config c = {
        .norm_eps = 1e-5f,
        .bos_id = -1,
        .eos_id = -1,
        .pad_id = -1,
    };
    json_error_t jerr;
    memset(out, 0, sizeof(*out));
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return ym_diag_set(diag, YM_EFORMAT, "config.json is not valid JSON: %s (line %d)",
                           jerr.text, jerr.line);
    ym_err err;
    ym_arch arch = YM_ARCH_MAMBA1;
    bool ss = false;
    if (!json_is_object(root))
        err = ym_diag_set(diag, YM_EFORMAT, "config.json is not a JSON object");
    else if ((err = detect_arch(root, &arch, diag)) != YM_OK)
        ;
    else if ((ss = json_object_get(root, "hidden_size") == NULL &&
                   (json_object_get(root, "d_model") != NULL ||
                    json_object_get(root, "ssm_cfg") != NULL)) &&
             arch == YM_ARCH_FALCON_MAMBA)
        err = ym_diag_set(diag, YM_EFORMAT, "config.json: falcon_mamba: missing key hidden_size");
    else if (arch == YM_ARCH_MAMBA2)
        err = ss ? parse_ss_mamba2(root, &c, diag) : parse_hf_mamba2(root, &c, diag);
    else if (arch == YM_ARCH_FALCON_MAMBA)
        err = parse_hf_falcon(root, &c, diag);
    else if (ss)
        err = parse_state_spaces(root, &c, diag);
    else
        err = parse_hf(root, &c, diag);
    json_decref(root);
    if (err == YM_OK)
        err = ym__config_check(&c, diag);
    if (err != YM_OK && arch != YM_ARCH_MAMBA1 && diag != NULL) {
        /* say which family the keys were read as: "Mamba-2 model: missing key hidden_size" */
        char msg[sizeof(diag->msg)];
        snprintf(msg, sizeof(msg), "%s", diag->msg);
        ym_diag_set(diag, err, "%s model: %s", arch_title(arch), msg);
    }
    if (err == YM_OK)
        *out = c;
    return err;
}

ym_err ym_config_load(const char *path, ym_config *out, ym_diag *diag)
{
    memset(out, 0, sizeof(*out));
    char *buf;
    size_t n;
    ym_err err = ym_read_file(path, MAX_CONFIG_BYTES, &buf, &n, diag);
    if (err != YM_OK)
        return err;
    ym_diag d = { { 0 }, { 0 } };
    err = ym_config_parse(buf, n, out, &d);
    if (err != YM_OK) {
        ym_diag_set(diag, err, "%s: %s", path, d.msg);
    }
    free(buf);
    return err;
}

int ym_config_conv_channels(const ym_config *c)
{
    if (c->arch == YM_ARCH_MAMBA2)
        return c->d_inner + 2 * c->n_group * c->d_state;
    return c->d_inner;
}

size_t ym_config_state_bytes(const ym_config *c)
{
    if (c->arch == YM_ARCH_MAMBA2) {
        size_t conv_dim = (size_t)c->d_inner + 2 * (size_t)c->n_group * (size_t)c->d_state;
        return (size_t)c->n_layer *
               (conv_dim * (size_t)(c->d_conv - 1) + (size_t)c->d_inner * (size_t)c->d_state) *
               sizeof(float);
    }
    return (size_t)c->n_layer * (size_t)c->d_inner * (size_t)(c->d_conv - 1 + c->d_state) *
           sizeof(float);
}

size_t ym_config_n_params(const ym_config *c)
{
    size_t dm = (size_t)c->d_model, di = (size_t)c->d_inner, ds = (size_t)c->d_state;
    size_t r = (size_t)c->dt_rank, k = (size_t)c->d_conv, nv = (size_t)c->n_vocab;
    if (c->arch == YM_ARCH_MAMBA2) {
        size_t h = (size_t)c->n_head, conv = di + 2 * (size_t)c->n_group * ds;
        size_t n_in = di + conv + h;
        size_t l2 = dm                                              /* norm */
                    + n_in * dm + (c->use_bias ? n_in : 0)          /* in_proj [z|xBC|dt] */
                    + conv * k + (c->use_conv_bias ? conv : 0)      /* conv1d over x|B|C */
                    + 3 * h                                         /* dt_bias, A_log, D */
                    + di                                            /* norm (gated) */
                    + dm * di + (c->use_bias ? dm : 0);             /* out_proj */
        return nv * dm * (c->tie_embeddings ? 1 : 2) + (size_t)c->n_layer * l2 + dm;
    }
    size_t layer = dm                                 /* norm */
                   + 2 * di * dm + (c->use_bias ? 2 * di : 0) /* in_proj */
                   + di * k + (c->use_conv_bias ? di : 0)     /* conv1d */
                   + (r + 2 * ds) * di                /* x_proj */
                   + di * r + di                      /* dt_proj */
                   + di * ds + di                     /* A_log, D */
                   + dm * di + (c->use_bias ? dm : 0); /* out_proj */
    return nv * dm * (c->tie_embeddings ? 1 : 2) + (size_t)c->n_layer * layer + dm;
}
