/* server/conf.h - yunmind's settings: one table drives conf/yunmind.json, YUNMIN_* variables,
 * command-line flags, validation and --help (docs/ARCHITECTURE.md §8).
 *
 * Precedence: built-in defaults < the JSON file (--config / YUNMIN_CONFIG) < environment <
 * flags. A reload (SIGHUP) builds a new ym_conf the same way and swaps in the settings marked
 * reloadable. Loop thread only. */
#ifndef YM_SERVER_CONF_H
#define YM_SERVER_CONF_H
#include <stdint.h>
#include <stdio.h>

#include "engine/err.h"

typedef struct ym_conf {
    char *config;             /* owned; the JSON file read, or NULL */
    char *model;              /* owned; model directory */
    char *served_model_name;  /* owned; "" = the model directory's base name */
    char *chat_template;      /* owned; a Jinja2 chat template file overriding the model's, or "" */
    char *host;               /* owned */
    uint64_t port;
    uint64_t threads;         /* engine threads, 0 = one per core */
    uint64_t max_running;     /* sequences in the running batch */
    uint64_t max_batch_tokens;/* rows per engine step (decode rows + prefill chunks) */
    uint64_t prefill_chunk;   /* prompt tokens one sequence may prefill per step */
    uint64_t max_queue;       /* admitted-but-waiting requests before 503 */
    uint64_t max_tokens_cap;  /* largest max_tokens a request may ask for */
    uint64_t default_max_tokens;
    uint64_t max_prompt_tokens;
    uint64_t max_body_bytes;
    uint64_t max_connections;
    uint64_t connection_timeout_s;
    uint64_t stream_ping_ms;
    uint64_t drain_timeout_s;
    char *log_level;          /* owned; debug|info|warn|error */
    char *log_format;         /* owned; json|plain */
    char *tenants_file;       /* owned; "" = open mode (tenant "default", no keys) */
    char *adapter_dir;        /* owned; "" = adapter uploads disabled */
    uint64_t max_upload_bytes;
    uint64_t max_adapter_rank;
    char *sparsity;           /* owned; profile path, "auto" or "" (dense) */
    char *weights;            /* owned; auto|f32|bf16|int8 (engine/weight.h) */
    uint64_t cache_bytes;     /* state cache budget (sessions + prefix checkpoints) */
    uint64_t checkpoint_interval; /* tokens between prefix checkpoints, 0 = none */
    uint64_t max_session_id_bytes;
    char *state_dir;          /* owned; "" = no disk tier */
    uint64_t state_dir_bytes; /* the disk tier's budget, 0 = no limit */
    uint64_t state_fsync;     /* 1: fsync each state file */
    char *session_store;      /* owned; redis://host:port/db, "" = none */
    uint64_t session_store_ttl_s;
    uint64_t session_store_timeout_ms;
    char *state_secret;       /* owned; the state files' MAC key source; "" = random, kept in
                               * state_dir/state.key */
    char *allowed_origins;    /* owned; browser origins CORS lets in, "," separated; "*" = any;
                               * "" = none */
    uint64_t playground;      /* 1: serve the web playground at / */
} ym_conf;

/* Fill *conf from defaults, file, environment (envp-style array, NULL = environ) and argv.
 * --help / --version / --print-config / --new-key / --hash-key are reported in *action (0 none,
 * 1 help, 2 version, 3 print-config, 4 new-key, 5 hash-key) and still leave a valid *conf. On failure a one-line message is in diag
 * and *conf is left empty ({0}). */
ym_err ym_conf_load(ym_conf *conf, int argc, char **argv, char **envp, int *action,
                    ym_diag *diag);
/* Copy the reloadable settings (limits, timeouts, log level) of next into conf. Returns how
 * many changed; names of changed settings that need a restart are logged as warnings. */
int ym_conf_apply_reload(ym_conf *conf, const ym_conf *next);
void ym_conf_deinit(ym_conf *conf); /* NULL-safe; leaves {0} */
/* --help text, from the table. */
void ym_conf_usage(FILE *f);
/* The effective settings as a JSON object text (new string, free()). */
char *ym_conf_dump(const ym_conf *conf);
/* Parse only a JSON config text on top of the defaults (for the fuzz target and tests). */
ym_err ym_conf_parse_json(ym_conf *conf, const char *text, size_t len, ym_diag *diag);

#endif
