/* server/conf.c - the settings table and its four readers: defaults, the JSON file, YUNMIN_*
 * environment variables and flags (one table, like nginx's directive tables).
 *
 * Every setting is one row: its JSON key, variable, flag, type, bounds, default, whether a
 * reload may change it, and its --help line. Unknown keys in the file, unknown flags and
 * out-of-range values are errors naming the setting; nothing is silently ignored. */
#include "server/conf.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/log.h"

#ifndef YM_DEFAULT_MODEL
#define YM_DEFAULT_MODEL "models/shakespeare-mamba"
#endif

extern char **environ;

typedef enum { YM_CONF_UINT, YM_CONF_STR } ym_conf_type;

typedef struct ym_conf_def {
    const char *key;     /* JSON key; the flag is --key with '_' -> '-' */
    const char *env;     /* YUNMIN_* variable or NULL */
    ym_conf_type type;
    size_t off;
    uint64_t def_u;
    const char *def_s;
    uint64_t min, max;
    const char *choices; /* for strings: "a|b|c" or NULL */
    int reload;          /* SIGHUP may change it */
    const char *help;
} ym_conf_def;

#define U(k, e, field, d, lo, hi, rl, h)                                                           \
    { k, e, YM_CONF_UINT, offsetof(ym_conf, field), d, NULL, lo, hi, NULL, rl, h }
#define S(k, e, field, d, ch, rl, h)                                                               \
    { k, e, YM_CONF_STR, offsetof(ym_conf, field), 0, d, 0, 0, ch, rl, h }

static const ym_conf_def defs[] = {
    S("config", "YUNMIN_CONFIG", config, NULL, NULL, 0,
      "JSON settings file (keys as below); read before the environment and flags"),
    S("model", "YUNMIN_MODEL", model, YM_DEFAULT_MODEL, NULL, 0,
      "model directory (config.json, *.safetensors, tokenizer.json)"),
    S("weights", "YUNMIN_WEIGHTS", weights, "auto", "auto|f32|bf16|int8", 0,
      "type the model's matrices are served in; auto = the checkpoint's own (BF16 stays bf16)"),
    S("chat_template", "YUNMIN_CHAT_TEMPLATE", chat_template, "", NULL, 0,
      "Jinja2 chat template file for /v1/chat/completions, instead of the model's own "
      "(chat_template.jinja or tokenizer_config.json); \"\" = the model's"),
    S("served_model_name", "YUNMIN_SERVED_MODEL_NAME", served_model_name, "", NULL, 0,
      "the model id clients use; default: the model directory's name"),
    S("host", "YUNMIN_HOST", host, "127.0.0.1", NULL, 0,
      "address to listen on (IPv4 or IPv6 literal; 0.0.0.0 for all)"),
    U("port", "YUNMIN_PORT", port, 8080, 0, 65535, 0,
      "TCP port; 0 picks a free one (printed in the 'listening' log line)"),
    U("threads", "YUNMIN_THREADS", threads, 0, 0, 1024, 0,
      "engine threads; 0 = one per online core"),
    U("max_running", "YUNMIN_MAX_RUNNING", max_running, 64, 1, 4096, 1,
      "sequences generating at once (continuous batch)"),
    U("max_batch_tokens", "YUNMIN_MAX_BATCH_TOKENS", max_batch_tokens, 256, 1, 65536, 0,
      "rows per engine step: one per decoding sequence plus prefill chunks"),
    U("prefill_chunk", "YUNMIN_PREFILL_CHUNK", prefill_chunk, 128, 1, 65536, 1,
      "prompt tokens per engine step, all prefilling sequences together (long prompts go in chunks)"),
    U("max_queue", "YUNMIN_MAX_QUEUE", max_queue, 256, 0, 1000000, 1,
      "requests waiting for a running slot before new ones get 503"),
    U("max_tokens_cap", "YUNMIN_MAX_TOKENS_CAP", max_tokens_cap, 8192, 1, 1u << 24, 1,
      "largest max_tokens a request may ask for (400 beyond)"),
    U("default_max_tokens", "YUNMIN_DEFAULT_MAX_TOKENS", default_max_tokens, 16, 0, 1u << 24, 1,
      "max_tokens when a request leaves it out (OpenAI's default is 16)"),
    U("max_prompt_tokens", "YUNMIN_MAX_PROMPT_TOKENS", max_prompt_tokens, 65536, 1, 1u << 26, 1,
      "longest prompt in tokens (400 beyond)"),
    U("max_body_bytes", "YUNMIN_MAX_BODY_BYTES", max_body_bytes, 4u << 20, 64, 1u << 30, 1,
      "largest request body (413 beyond)"),
    U("max_connections", "YUNMIN_MAX_CONNECTIONS", max_connections, 4096, 1, 1000000, 0,
      "open client connections"),
    U("connection_timeout_s", "YUNMIN_CONNECTION_TIMEOUT_S", connection_timeout_s, 60, 0, 86400,
      0, "close a connection idle this long (0 = never); suspended streams are exempt"),
    U("stream_ping_ms", "YUNMIN_STREAM_PING_MS", stream_ping_ms, 5000, 50, 3600000, 1,
      "SSE ': ping' comment this often while a stream waits for its first token"),
    U("drain_timeout_s", "YUNMIN_DRAIN_TIMEOUT_S", drain_timeout_s, 30, 0, 86400, 1,
      "on SIGTERM, wait this long for running requests before cancelling them"),
    S("log_level", "YUNMIN_LOG_LEVEL", log_level, "info", "debug|info|warn|error", 1,
      "least severe log lines written"),
    S("log_format", "YUNMIN_LOG_FORMAT", log_format, "json", "json|plain", 1,
      "json: one object per line on stderr; plain: readable lines"),
    S("tenants_file", "YUNMIN_TENANTS_FILE", tenants_file, "", NULL, 1,
      "API keys (hashed) and tenant limits; \"\" = open mode, every request is tenant "
      "\"default\""),
    S("adapter_dir", "YUNMIN_ADAPTER_DIR", adapter_dir, "", NULL, 0,
      "where uploaded adapters are stored (<dir>/<tenant>/<name>); \"\" = uploads disabled"),
    U("max_upload_bytes", "YUNMIN_MAX_UPLOAD_BYTES", max_upload_bytes, 256u << 20, 1024,
      1ull << 40, 1, "largest adapter upload (413 beyond); a tenant's max_adapter_bytes also "
      "applies"),
    U("max_adapter_rank", "YUNMIN_MAX_ADAPTER_RANK", max_adapter_rank, 256, 1, 65536, 1,
      "largest LoRA rank an adapter may have (422 beyond)"),
    S("sparsity", "YUNMIN_SPARSITY", sparsity, "", NULL, 0,
      "sparsity profile to serve (yunmin.sparsity.safetensors); \"auto\" = the model "
      "directory's, if it has one; \"\" = the dense model"),
    U("cache_bytes", "YUNMIN_CACHE_BYTES", cache_bytes, 1ull << 30, 0, 1ull << 44, 1,
      "state cache budget: sessions and prefix checkpoints, least recently used evicted "
      "(0 = keep none)"),
    U("checkpoint_interval", "YUNMIN_CHECKPOINT_INTERVAL", checkpoint_interval, 256, 0,
      1u << 20, 0, "prompt tokens between prefix checkpoints (0 = no checkpoints)"),
    S("state_dir", "YUNMIN_STATE_DIR", state_dir, "", NULL, 0,
      "disk tier of the state cache: every session and prefix checkpoint is also written "
      "here and survives restarts; \"\" = RAM only"),
    U("state_dir_bytes", "YUNMIN_STATE_DIR_BYTES", state_dir_bytes, 8ull << 30, 0, 1ull << 50,
      0, "byte budget of state_dir, least recently used files removed (0 = no limit)"),
    U("state_fsync", "YUNMIN_STATE_FSYNC", state_fsync, 0, 0, 1, 0,
      "1: fsync each state file and state_dir (survives power loss, slower writes)"),
    S("session_store", "YUNMIN_SESSION_STORE", session_store, "", NULL, 0,
      "shared store tier: redis://host:port/db (Redis 7 or Valkey); replicas with the same "
      "store and state_secret resume each other's sessions; \"\" = none"),
    U("session_store_ttl_s", "YUNMIN_SESSION_STORE_TTL_S", session_store_ttl_s, 86400, 0,
      1ull << 31, 0, "expiry of a state in the store, renewed by each write (0 = none)"),
    U("session_store_timeout_ms", "YUNMIN_SESSION_STORE_TIMEOUT_MS", session_store_timeout_ms,
      250, 1, 60000, 0, "bound on connecting to the store and on each command"),
    S("state_secret", "YUNMIN_STATE_SECRET", state_secret, "", NULL, 0,
      "secret keying the MAC of state files; \"\" = a random key kept in "
      "state_dir/state.key (mode 0600); never printed"),
    U("max_session_id_bytes", "YUNMIN_MAX_SESSION_ID_BYTES", max_session_id_bytes, 256, 1, 4096,
      1, "longest session_id (400 beyond)"),
    S("allowed_origins", "YUNMIN_ALLOWED_ORIGINS", allowed_origins, "", NULL, 1,
      "browser origins allowed by CORS, comma-separated (e.g. https://app.example.com); "
      "\"*\" = any; \"\" = none"),
    U("playground", "YUNMIN_PLAYGROUND", playground, 1, 0, 1, 1,
      "1: serve the web playground (a chat page using the /v1 routes) at /; 0: / answers 404"),
};
#define N_DEFS ((int)(sizeof(defs) / sizeof(defs[0])))

static uint64_t *u_field(ym_conf *c, const ym_conf_def *d)
{
    return (uint64_t *)((char *)c + d->off);
}
static char **s_field(ym_conf *c, const ym_conf_def *d)
{
    return (char **)((char *)c + d->off);
}
static const uint64_t *u_cfield(const ym_conf *c, const ym_conf_def *d)
{
    return (const uint64_t *)((const char *)c + d->off);
}
static char *const *s_cfield(const ym_conf *c, const ym_conf_def *d)
{
    return (char *const *)((const char *)c + d->off);
}

void ym_conf_deinit(ym_conf *conf)
{
    if (conf == NULL)
        return;
    for (int i = 0; i < N_DEFS; i++)
        if (defs[i].type == YM_CONF_STR)
            free(*s_field(conf, &defs[i]));
    memset(conf, 0, sizeof(*conf));
}

static ym_err set_defaults(ym_conf *conf)
{
    memset(conf, 0, sizeof(*conf));
    for (int i = 0; i < N_DEFS; i++) {
        const ym_conf_def *d = &defs[i];
        if (d->type == YM_CONF_UINT) {
            *u_field(conf, d) = d->def_u;
        } else if (d->def_s != NULL) {
            if ((*s_field(conf, d) = strdup(d->def_s)) == NULL)
                return YM_ENOMEM;
        }
    }
    return YM_OK;
}

static int choice_ok(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0)
            return 1;
        p += len + (bar ? 1 : 0);
    }
    return 0;
}

/* Set one setting from text (environment or flag); `from` names the source for messages. */
static ym_err set_text(ym_conf *conf, const ym_conf_def *d, const char *v, const char *from,
                       ym_diag *diag)
{
    if (d->type == YM_CONF_UINT) {
        char *end;
        errno = 0;
        if (v[0] == '-' || v[0] == '\0')
            goto bad_uint;
        unsigned long long x = strtoull(v, &end, 10);
        if (*end != '\0' || errno == ERANGE)
            goto bad_uint;
        if (x < d->min || x > d->max)
            return ym_diag_param(diag, YM_EINVAL, d->key,
                                 "%s: %s=%s is out of range [%llu, %llu]", from, d->key, v,
                                 (unsigned long long)d->min, (unsigned long long)d->max);
        *u_field(conf, d) = x;
        return YM_OK;
    bad_uint:
        return ym_diag_param(diag, YM_EINVAL, d->key, "%s: %s=%s is not a non-negative integer",
                             from, d->key, v);
    }
    if (d->choices != NULL && !choice_ok(d->choices, v))
        return ym_diag_param(diag, YM_EINVAL, d->key, "%s: %s=%s is not one of %s", from, d->key,
                             v, d->choices);
    char *copy = strdup(v);
    if (copy == NULL)
        return YM_ENOMEM;
    free(*s_field(conf, d));
    *s_field(conf, d) = copy;
    return YM_OK;
}

static ym_err apply_json(ym_conf *conf, json_t *root, const char *from, ym_diag *diag)
{
    if (!json_is_object(root))
        return ym_diag_set(diag, YM_EINVAL, "%s: the top level must be a JSON object", from);
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        const ym_conf_def *d = NULL;
        for (int i = 0; i < N_DEFS; i++)
            if (strcmp(defs[i].key, key) == 0)
                d = &defs[i];
        if (d == NULL || strcmp(key, "config") == 0)
            return ym_diag_param(diag, YM_EINVAL, key, "%s: unknown setting \"%s\"", from, key);
        if (d->type == YM_CONF_UINT) {
            if (!json_is_integer(val))
                return ym_diag_param(diag, YM_EINVAL, key, "%s: %s must be an integer", from,
                                     key);
            json_int_t x = json_integer_value(val);
            if (x < 0 || (uint64_t)x < d->min || (uint64_t)x > d->max)
                return ym_diag_param(diag, YM_EINVAL, key,
                                     "%s: %s=%lld is out of range [%llu, %llu]", from, key,
                                     (long long)x, (unsigned long long)d->min,
                                     (unsigned long long)d->max);
            *u_field(conf, d) = (uint64_t)x;
        } else {
            if (!json_is_string(val))
                return ym_diag_param(diag, YM_EINVAL, key, "%s: %s must be a string", from, key);
            const char *s = json_string_value(val);
            if (strlen(s) != json_string_length(val))
                return ym_diag_param(diag, YM_EINVAL, key, "%s: %s contains a NUL byte", from,
                                     key);
            ym_err err = set_text(conf, d, s, from, diag);
            if (err != YM_OK)
                return err;
        }
    }
    return YM_OK;
}

/* Relations between settings that single ranges cannot express. */
static ym_err check_relations(const ym_conf *c, ym_diag *diag)
{
    if (c->max_running > c->max_batch_tokens)
        return ym_diag_param(diag, YM_EINVAL, "max_running",
                             "max_running (%llu) must not exceed max_batch_tokens (%llu): every "
                             "running sequence needs a row in each step",
                             (unsigned long long)c->max_running,
                             (unsigned long long)c->max_batch_tokens);
    if (c->default_max_tokens > c->max_tokens_cap)
        return ym_diag_param(diag, YM_EINVAL, "default_max_tokens",
                             "default_max_tokens (%llu) must not exceed max_tokens_cap (%llu)",
                             (unsigned long long)c->default_max_tokens,
                             (unsigned long long)c->max_tokens_cap);
    if (c->model == NULL || c->model[0] == '\0')
        return ym_diag_param(diag, YM_EINVAL, "model", "model must not be empty");
    if (c->host == NULL || c->host[0] == '\0')
        return ym_diag_param(diag, YM_EINVAL, "host", "host must not be empty");
    return YM_OK;
}

ym_err ym_conf_parse_json(ym_conf *conf, const char *text, size_t len, ym_diag *diag)
{
    ym_err err = set_defaults(conf);
    if (err != YM_OK)
        goto fail;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        err = ym_diag_set(diag, YM_EINVAL, "config: line %d: %s", jerr.line, jerr.text);
        goto fail;
    }
    err = apply_json(conf, root, "config", diag);
    json_decref(root);
    if (err == YM_OK)
        err = check_relations(conf, diag);
    if (err != YM_OK)
        goto fail;
    return YM_OK;
fail:
    ym_conf_deinit(conf);
    return err;
}

static const char *env_get(char **envp, const char *name)
{
    size_t n = strlen(name);
    for (char **e = envp; e != NULL && *e != NULL; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

static void flag_name(const ym_conf_def *d, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", d->key);
    for (char *p = buf; *p; p++)
        if (*p == '_')
            *p = '-';
}

enum { OPT_HELP = 1000, OPT_VERSION, OPT_PRINT, OPT_NEW_KEY, OPT_HASH_KEY };

ym_err ym_conf_load(ym_conf *conf, int argc, char **argv, char **envp, int *action,
                    ym_diag *diag)
{
    static char names[N_DEFS][48];
    struct option opts[N_DEFS + 6];
    if (envp == NULL)
        envp = environ;
    *action = 0;
    for (int i = 0; i < N_DEFS; i++) {
        flag_name(&defs[i], names[i], sizeof(names[i]));
        opts[i] = (struct option){names[i], required_argument, NULL, i};
    }
    opts[N_DEFS] = (struct option){"help", no_argument, NULL, OPT_HELP};
    opts[N_DEFS + 1] = (struct option){"version", no_argument, NULL, OPT_VERSION};
    opts[N_DEFS + 2] = (struct option){"print-config", no_argument, NULL, OPT_PRINT};
    opts[N_DEFS + 3] = (struct option){"new-key", no_argument, NULL, OPT_NEW_KEY};
    opts[N_DEFS + 4] = (struct option){"hash-key", no_argument, NULL, OPT_HASH_KEY};
    opts[N_DEFS + 5] = (struct option){NULL, 0, NULL, 0};

    /* Pass 1: flags into a list (applied last), and find the config file. */
    const char *flag_val[N_DEFS] = {0};
    ym_err err = set_defaults(conf);
    if (err != YM_OK)
        return err;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (c >= 0 && c < N_DEFS) {
            flag_val[c] = optarg;
        } else if (c == OPT_HELP || c == 'h') {
            *action = 1;
        } else if (c == OPT_VERSION) {
            *action = 2;
        } else if (c == OPT_PRINT) {
            *action = 3;
        } else if (c == OPT_NEW_KEY) {
            *action = 4;
        } else if (c == OPT_HASH_KEY) {
            *action = 5;
        } else if (c == ':') {
            err = ym_diag_set(diag, YM_EINVAL, "option %s needs a value", argv[optind - 1]);
            goto fail;
        } else {
            err = ym_diag_set(diag, YM_EINVAL, "unknown option %s (see --help)",
                              argv[optind - 1]);
            goto fail;
        }
    }
    if (optind < argc) {
        err = ym_diag_set(diag, YM_EINVAL, "unexpected argument '%s' (see --help)", argv[optind]);
        goto fail;
    }
    if (*action == 1 || *action == 2 || *action == 4 || *action == 5)
        return YM_OK;

    const char *file = flag_val[0] ? flag_val[0] : env_get(envp, "YUNMIN_CONFIG");
    if (file != NULL && file[0] != '\0') {
        json_error_t jerr;
        json_t *root = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
        if (root == NULL) {
            err = ym_diag_set(diag, YM_EINVAL, "config %s: %s%s line %d", file, jerr.text,
                              jerr.line > 0 ? "," : "", jerr.line);
            goto fail;
        }
        err = apply_json(conf, root, file, diag);
        json_decref(root);
        if (err != YM_OK)
            goto fail;
        if ((conf->config = strdup(file)) == NULL) {
            err = YM_ENOMEM;
            goto fail;
        }
    }
    for (int i = 1; i < N_DEFS; i++) {
        const char *v = defs[i].env ? env_get(envp, defs[i].env) : NULL;
        if (v != NULL && v[0] != '\0' && (err = set_text(conf, &defs[i], v, defs[i].env, diag)))
            goto fail;
    }
    for (int i = 1; i < N_DEFS; i++) {
        if (flag_val[i] == NULL)
            continue;
        char from[64];
        snprintf(from, sizeof(from), "--%s", names[i]);
        if ((err = set_text(conf, &defs[i], flag_val[i], from, diag)) != YM_OK)
            goto fail;
    }
    if ((err = check_relations(conf, diag)) != YM_OK)
        goto fail;
    return YM_OK;
fail:
    ym_conf_deinit(conf);
    return err;
}

int ym_conf_apply_reload(ym_conf *conf, const ym_conf *next)
{
    int changed = 0;
    for (int i = 1; i < N_DEFS; i++) {
        const ym_conf_def *d = &defs[i];
        int differs;
        if (d->type == YM_CONF_UINT) {
            differs = *u_cfield(conf, d) != *u_cfield(next, d);
        } else {
            const char *a = *s_cfield(conf, d), *b = *s_cfield(next, d);
            differs = (a == NULL) != (b == NULL) || (a != NULL && strcmp(a, b) != 0);
        }
        if (!differs)
            continue;
        if (!d->reload) {
            ym_log(YM_LOG_WARN, NULL, "reload: %s changed but takes effect only at restart",
                   d->key);
            continue;
        }
        if (d->type == YM_CONF_UINT) {
            *u_field(conf, d) = *u_cfield(next, d);
        } else {
            char *copy = strdup(*s_cfield(next, d));
            if (copy == NULL)
                continue;
            free(*s_field(conf, d));
            *s_field(conf, d) = copy;
        }
        changed++;
        ym_log(YM_LOG_INFO, NULL, "reload: %s changed", d->key);
    }
    return changed;
}

void ym_conf_usage(FILE *f)
{
    fprintf(f, "usage: yunmind [options]\n"
               "Serves a Mamba model over HTTP (OpenAI-style /v1/completions).\n"
               "Each setting comes from, in rising precedence: its default, the --config JSON "
               "file\n(same key), the environment variable, the flag.\n\n");
    for (int i = 0; i < N_DEFS; i++) {
        const ym_conf_def *d = &defs[i];
        char flag[64], def[96];
        flag_name(d, flag, sizeof(flag));
        if (d->type == YM_CONF_UINT)
            snprintf(def, sizeof(def), "%llu", (unsigned long long)d->def_u);
        else
            snprintf(def, sizeof(def), "%s", d->def_s ? (d->def_s[0] ? d->def_s : "\"\"") : "none");
        fprintf(f, "  --%s %s\n      %s\n      env %s, default %s%s\n", flag,
                d->type == YM_CONF_UINT ? "N" : (d->choices ? d->choices : "TEXT"), d->help,
                d->env ? d->env : "-", def, d->reload ? ", reloaded on SIGHUP" : "");
    }
    fprintf(f, "  --print-config\n      print the effective settings as JSON and exit\n"
               "  --new-key\n      print a new random API key and its hash (for tenants_file)\n"
               "  --hash-key\n      read an API key on stdin and print its hash\n"
               "  --version\n      print the version and exit\n"
               "  -h, --help\n      this text\n\n"
               "Signals: SIGTERM/SIGINT drain (readyz turns 503, running requests finish within\n"
               "drain_timeout_s, exit 0); SIGHUP re-reads the config file, the environment and\n"
               "the tenants file and applies the settings marked 'reloaded on SIGHUP'.\n");
}

char *ym_conf_dump(const ym_conf *conf)
{
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    for (int i = 1; i < N_DEFS; i++) {
        const ym_conf_def *d = &defs[i];
        if (d->type == YM_CONF_UINT)
            json_object_set_new(o, d->key, json_integer((json_int_t)*u_cfield(conf, d)));
        else if (strcmp(d->key, "state_secret") == 0 && *s_cfield(conf, d) &&
                 **s_cfield(conf, d))
            json_object_set_new(o, d->key, json_string("(set)")); /* never printed */
        else
            json_object_set_new(o, d->key, json_string(*s_cfield(conf, d) ? *s_cfield(conf, d) : ""));
    }
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}
