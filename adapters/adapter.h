/* adapters/adapter.h - Hugging Face PEFT adapters (LoRA, IA³), hybrid adapter sets and their
 * composition, compiled for the engine's unmerged forward (docs/ARCHITECTURE.md §5,
 * docs/FORMATS.md).
 *
 * Dependencies: adapters -> engine. The engine knows only the plain ym_adapt of
 * engine/adapt.h; this library reads PEFT directories, validates them against a loaded model
 * and fills one. Nothing here touches a loop or a socket: the CLI, the unit tests and the
 * server's worker threads call it alike.
 *
 * Life cycle (what the server does):
 *     ym_adapter_t *a;
 *     ym_adapter_load(dir, model, NULL, &a, &diag);   // PEFT dir or adapter set; any thread
 *     ...                                             // publish; requests take ym_adapter_ref
 *     batch.adapters[i] = ym_adapter_applied(a);      // engine thread, while the ref is held
 *     ym_adapter_unref(a);                            // freed with the last reference
 * Several adapters for one request: ym_adapter_compose (LoRA deltas add, IA³ scales
 * multiply); the result is one more adapter, with its own reference. */
#ifndef YM_ADAPTERS_ADAPTER_H
#define YM_ADAPTERS_ADAPTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/adapt.h"
#include "engine/err.h"
#include "engine/model.h"

/* ---- adapter_config.json ----------------------------------------------------------------- */

typedef enum {
    YM_PEFT_LORA = 1,
    YM_PEFT_IA3 = 2,
} ym_peft_type;

typedef struct ym_peft_pattern {
    char *key;    /* owned; a regular expression matched as PEFT does: (.*\.)?(key)$ */
    double value;
} ym_peft_pattern;

typedef struct ym_peft_config {
    ym_peft_type type;
    int r;                 /* LoRA: default rank */
    double alpha;          /* LoRA: lora_alpha */
    bool rslora;           /* LoRA: use_rslora (scale alpha/sqrt(r) instead of alpha/r) */
    char **targets;        /* owned [n_targets]: target_modules as a list ... */
    int n_targets;
    char *target_regex;    /* ... or as a regular expression (owned), matched in full */
    char **ff;             /* IA³: feedforward_modules, a list ... */
    int n_ff;
    char *ff_regex;        /* ... or a regular expression */
    ym_peft_pattern *rank_pattern; /* owned [n_rank_pattern], in file order (first match wins) */
    int n_rank_pattern;
    ym_peft_pattern *alpha_pattern;
    int n_alpha_pattern;
    int *layers;           /* owned: layers_to_transform, or NULL for every layer */
    int n_layers;
} ym_peft_config;

/* Parse adapter_config.json bytes (no model needed). Unknown peft_type, wrong types, and the
 * features yunmin refuses (fan_in_fan_out, bias other than "none", modules_to_save, DoRA,
 * layer_replication, exclude_modules, ...) -> YM_EFORMAT with a message naming the key.
 * On failure *out is left safe to deinit. Any thread. */
ym_err ym_peft_config_parse(const char *json, size_t len, ym_peft_config *out, ym_diag *diag);
void ym_peft_config_deinit(ym_peft_config *c); /* NULL-safe, idempotent */

/* What a config means for one projection of one layer of a model with n_layer layers. */
typedef struct ym_peft_module {
    bool targeted;
    bool ff;      /* IA³: scales the input (feedforward_modules), else the output */
    int r;        /* LoRA rank after rank_pattern */
    double alpha; /* LoRA alpha after alpha_pattern */
} ym_peft_module;

/* Resolve targets, feedforward modules, layers_to_transform and the patterns for a model of
 * n_layer layers: out [n_layer * YM_PROJ_N] (index layer * YM_PROJ_N + ym_proj). A target
 * that names no module, or a module yunmin does not adapt (conv1d, embeddings, lm_head, ...),
 * a regex it cannot compile, a layer out of range -> YM_EFORMAT naming it. */
ym_err ym_peft_config_resolve(const ym_peft_config *c, int n_layer, ym_peft_module *out,
                              ym_diag *diag);

/* ---- adapter_set.json (docs/FORMATS.md) --------------------------------------------------- */

typedef struct ym_adapter_set_config {
    char **adapters; /* owned [n_adapters]: sub-directory names, composed in this order */
    int n_adapters;
} ym_adapter_set_config;

#define YM_ADAPTER_SET_MAX 16

ym_err ym_adapter_set_config_parse(const char *json, size_t len, ym_adapter_set_config *out,
                                   ym_diag *diag);
void ym_adapter_set_config_deinit(ym_adapter_set_config *c); /* NULL-safe, idempotent */

/* ---- loaded, compiled adapters ------------------------------------------------------------ */

typedef struct ym_adapter ym_adapter_t;

typedef struct ym_adapter_limits {
    int r_max;            /* largest LoRA rank of one module of one adapter (0: 256) */
    size_t max_bytes;     /* largest adapter_model.safetensors (0: 1 GiB) */
} ym_adapter_limits;

/* Load a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) or an adapter
 * set (adapter_set.json naming PEFT sub-directories), validate it against model and compile it.
 * Every problem -> YM_EFORMAT (YM_EIO for unreadable files) with a message naming the file,
 * tensor or key. Holds a reference to model. New reference in *out (ym_adapter_unref).
 * Blocking (file I/O); any thread. lim may be NULL (defaults). */
ym_err ym_adapter_load(const char *dir, ym_model_t *model, const ym_adapter_limits *lim,
                       ym_adapter_t **out, ym_diag *diag);

/* One adapter that applies parts[0..n) together: LoRA deltas add (ranks concatenate), IA³ scales
 * multiply; every LoRA applies before every IA³ (as merging the LoRA adapters, then the IA³
 * ones). Parts must be compiled for the same model; n >= 1. Takes its own references to the
 * parts; the caller keeps its own. New reference in *out. */
ym_err ym_adapter_compose(ym_adapter_t *const *parts, int n, ym_adapter_t **out, ym_diag *diag);

/* A LoRA adapter with random weights (for benchmarks and tests): rank r on the projections
 * of the mask (bit 1 << ym_proj) in every layer, A ~ U(-1/sqrt(n_in), 1/sqrt(n_in)),
 * B ~ U(-0.1, 0.1)/sqrt(r), lora_alpha = r. Deterministic in seed. New reference in *out. */
ym_err ym_adapter_new_random_lora(ym_model_t *model, int r, unsigned mask, uint64_t seed,
                                  ym_adapter_t **out, ym_diag *diag);

ym_adapter_t *ym_adapter_ref(ym_adapter_t *a); /* returns a; NULL-safe; atomic */
void ym_adapter_unref(ym_adapter_t *a);        /* NULL-safe; frees at zero; atomic */

/* What ym_batch.adapters takes. Borrowed: valid while a reference to a is held. */
const ym_adapt *ym_adapter_applied(const ym_adapter_t *a);

typedef struct ym_adapter_info {
    const char *kind;   /* "lora", "ia3", "set" or "composed"; static storage */
    int n_parts;        /* PEFT adapters it is made of */
    int r_max;          /* largest total LoRA rank of one projection (0: IA³ only) */
    unsigned targets;   /* bit (1 << ym_proj) for each projection it touches */
    size_t n_params;    /* trainable parameters of its PEFT adapters */
    size_t bytes;       /* memory of its compiled form */
} ym_adapter_info;
void ym_adapter_info_get(const ym_adapter_t *a, ym_adapter_info *out);

#endif
