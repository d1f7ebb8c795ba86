/* tools/cli.c - helpers shared by the `yunmin` subcommands: errors, number and id parsing,
 * files, loading the model and tokenizer. CLI thread only; may print, never exits. */
#include "tools/cli.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "engine/buf.h"
#include "engine/sparse.h"
#include "engine/sparsity.h"

#ifndef YM_DEFAULT_MODEL
#define YM_DEFAULT_MODEL "models/shakespeare-mamba"
#endif

int cli_error(int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* One line, whatever the message held (a diag may quote user input). */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fflush(stdout);
    fprintf(stderr, "yunmin: %s\n", msg);
    return code;
}

int cli_bad_option(const char *cmd, char **argv, int c)
{
    extern int optind, optopt;
    /* After a failure getopt has moved past the offending element (for a short option in
     * a cluster like -xn, argv[optind - 1] still holds it; optopt names the letter). */
    const char *arg = optind > 0 ? argv[optind - 1] : "?";
    if (c == ':') {
        if (optopt != 0 && optopt < 128 && strncmp(arg, "--", 2) != 0)
            return cli_error(CLI_USAGE, "%s: option -%c needs a value", cmd, optopt);
        return cli_error(CLI_USAGE, "%s: option %s needs a value", cmd, arg);
    }
    if (optopt != 0 && optopt < 128 && strncmp(arg, "--", 2) != 0)
        return cli_error(CLI_USAGE, "%s: unknown option -%c (see yunmin %s --help)", cmd, optopt,
                         cmd);
    return cli_error(CLI_USAGE, "%s: unknown option %s (see yunmin %s --help)", cmd, arg, cmd);
}

int cli_extra_arg(const char *cmd, const char *arg)
{
    return cli_error(CLI_USAGE, "%s: unexpected argument '%s' (see yunmin %s --help)", cmd, arg,
                     cmd);
}

const char *cli_model_dir(const char *flag)
{
    if (flag != NULL)
        return flag;
    const char *env = getenv("YUNMIN_MODEL");
    if (env != NULL && env[0] != '\0')
        return env;
    return YM_DEFAULT_MODEL;
}

int cli_parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno == ERANGE)
        return cli_error(CLI_USAGE, "invalid value '%s' for %s: not an integer", s, opt);
    if (v < lo || v > hi)
        return cli_error(CLI_USAGE, "invalid value '%s' for %s: must be in [%ld, %ld]", s, opt,
                         lo, hi);
    *out = v;
    return 0;
}

int cli_parse_u64(const char *opt, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    while (*s == ' ')
        s++;
    if (*s == '-' || *s == '\0')
        return cli_error(CLI_USAGE, "invalid value '%s' for %s: not a non-negative integer", s,
                         opt);
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || errno == ERANGE)
        return cli_error(CLI_USAGE, "invalid value '%s' for %s: not a non-negative integer", s,
                         opt);
    *out = (uint64_t)v;
    return 0;
}

int cli_parse_double(const char *opt, const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno == ERANGE || !isfinite(v))
        return cli_error(CLI_USAGE, "invalid value '%s' for %s: not a number", s, opt);
    *out = v;
    return 0;
}

int cli_parse_ids(const char *opt, const char *s, int n_vocab, ym_ids *ids)
{
    const char *p = s;
    *ids = (ym_ids){0};
    while (*p == ' ')
        p++;
    int bracket = *p == '[';
    if (bracket)
        p++;
    for (;;) {
        while (*p == ' ')
            p++;
        if (bracket && *p == ']' && ids->n == 0)
            break; /* "[]" - caught as empty below */
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno == ERANGE) {
            ym_ids_deinit(ids);
            return cli_error(CLI_USAGE, "%s: '%s' is not a comma-separated list of token ids",
                             opt, s);
        }
        if (v < 0 || v >= n_vocab) {
            ym_ids_deinit(ids);
            return cli_error(CLI_USAGE, "%s: token id %ld out of range [0, %d)", opt, v, n_vocab);
        }
        if (ym_ids_push(ids, (int32_t)v) != YM_OK) {
            ym_ids_deinit(ids);
            return cli_error(CLI_FAIL, "out of memory");
        }
        p = end;
        while (*p == ' ')
            p++;
        if (*p == ',') {
            p++;
            continue;
        }
        break;
    }
    if (bracket) {
        if (*p != ']') {
            ym_ids_deinit(ids);
            return cli_error(CLI_USAGE, "%s: '%s' is not a comma-separated list of token ids",
                             opt, s);
        }
        p++;
        while (*p == ' ')
            p++;
    }
    if (*p != '\0') {
        ym_ids_deinit(ids);
        return cli_error(CLI_USAGE, "%s: '%s' is not a comma-separated list of token ids", opt,
                         s);
    }
    if (ids->n == 0)
        return cli_error(CLI_USAGE, "%s: no token ids given", opt);
    return 0;
}

double cli_nll(const float *row, int nv, int32_t target)
{
    double m = -INFINITY;
    for (int v = 0; v < nv; v++)
        if (row[v] > m)
            m = row[v];
    double z = 0.0;
    for (int v = 0; v < nv; v++)
        z += exp((double)row[v] - m);
    return -((double)row[target] - m - log(z));
}

int cli_read_file(const char *path, char **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return cli_error(CLI_FAIL, "cannot open %s: %s", path, strerror(errno));
    ym_buf buf = YM_BUF_INIT;
    ym_err err = ym_buf_read(&buf, f, SIZE_MAX);
    fclose(f);
    if (err == YM_OK && (*data = ym_buf_take(&buf, len)) == NULL)
        err = YM_ENOMEM;
    ym_buf_deinit(&buf);
    if (err == YM_ENOMEM)
        return cli_error(CLI_FAIL, "out of memory reading %s", path);
    if (err != YM_OK)
        return cli_error(CLI_FAIL, "cannot read %s", path);
    return 0;
}

static int check_dir(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) != 0)
        return cli_error(CLI_FAIL, "model directory %s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return cli_error(CLI_FAIL, "model directory %s: not a directory", dir);
    return 0;
}

int cli_load_tokenizer(const char *dir, ym_tok_t **out)
{
    char path[PATH_MAX];
    ym_diag diag = {0};
    *out = NULL;
    if (check_dir(dir) != 0)
        return CLI_FAIL;
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    ym_err err = ym_tok_load(path, out, &diag);
    if (err != YM_OK)
        return cli_error(CLI_FAIL, "%s: %s", path, diag.msg[0] ? diag.msg : ym_strerror(err));
    return 0;
}

/* Synthetic shapes: name, d_model, n_layer, n_vocab, tied (d_inner = 2 d_model, d_state 16,
 * dt_rank = ceil(d_model / 16), as the published configs). */
static const struct {
    const char *name;
    int d_model, n_layer, n_vocab, tied;
} synthetic[] = {
    {CLI_SYNTHETIC_130M, 768, 24, 50280, 1},        /* state-spaces/mamba-130m-hf */
    {CLI_SYNTHETIC_1_4B, 2048, 48, 50280, 1},       /* state-spaces/mamba-1.4b-hf */
    {CLI_SYNTHETIC_FALCON_7B, 4096, 64, 65024, 0},  /* tiiuae/falcon-mamba-7b */
};

static int synthetic_index(const char *dir)
{
    for (size_t i = 0; dir != NULL && i < sizeof(synthetic) / sizeof(synthetic[0]); i++)
        if (strcmp(dir, synthetic[i].name) == 0)
            return (int)i;
    return -1;
}

int cli_is_synthetic(const char *dir)
{
    return synthetic_index(dir) >= 0;
}

/* A synthetic model's shapes, random weights made in process, in type wt. */
static ym_err synthetic_model(int i, ym_wtype wt, ym_model_t **out, ym_diag *diag)
{
    ym_config c;
    memset(&c, 0, sizeof(c));
    c.d_model = synthetic[i].d_model;
    c.n_layer = synthetic[i].n_layer;
    c.d_inner = 2 * c.d_model;
    c.d_state = 16;
    c.d_conv = 4;
    c.dt_rank = (c.d_model + 15) / 16;
    c.n_vocab = synthetic[i].n_vocab;
    c.use_conv_bias = 1;
    c.tie_embeddings = synthetic[i].tied;
    c.norm_eps = 1e-5f;
    c.bos_id = c.eos_id = c.pad_id = -1;
    return ym_model_new_random_as(&c, 1, wt, out, diag);
}

int cli_parse_weights(const char *s, ym_wtype *out)
{
    ym_diag diag = {0};
    if (ym_wtype_parse(s, out, &diag) != YM_OK)
        return cli_error(CLI_USAGE, "--weights: '%s' is not one of f32, bf16, int8, auto", s);
    return 0;
}

int cli_apply_sparsity(const char *path, ym_model_t **model)
{
    if (path == NULL)
        return 0;
    ym_sparsity *sp = NULL;
    ym_model_t *m = NULL;
    ym_diag diag = {0};
    ym_err err = ym_sparsity_load(path, &sp, &diag);
    if (err == YM_OK)
        err = ym_model_new_sparse(*model, sp, &m, &diag);
    ym_sparsity_free(sp);
    if (err != YM_OK)
        return cli_error(CLI_FAIL, "sparsity profile %s: %s", path,
                         diag.msg[0] ? diag.msg : ym_strerror(err));
    ym_model_unref(*model);
    *model = m;
    return 0;
}

int cli_load_model(const char *dir, ym_model_t **out)
{
    return cli_load_model_as(dir, NULL, out);
}

int cli_load_model_as(const char *dir, const char *weights, ym_model_t **out)
{
    ym_diag diag = {0};
    ym_wtype wt = YM_WT_AUTO;
    *out = NULL;
    if (weights != NULL && cli_parse_weights(weights, &wt) != 0)
        return CLI_USAGE;
    if (cli_is_synthetic(dir)) {
        ym_err err = synthetic_model(synthetic_index(dir), wt, out, &diag);
        if (err != YM_OK)
            return cli_error(CLI_FAIL, "model %s: %s", dir,
                             diag.msg[0] ? diag.msg : ym_strerror(err));
        return 0;
    }
    if (check_dir(dir) != 0)
        return CLI_FAIL;
    ym_err err = ym_model_load_as(dir, wt, out, &diag);
    if (err != YM_OK)
        return cli_error(CLI_FAIL, "model %s: %s", dir, diag.msg[0] ? diag.msg : ym_strerror(err));
    return 0;
}

int cli_load_adapters(ym_model_t *model, const char *const *dirs, int n, ym_adapter_t **out)
{
    ym_adapter_t *parts[CLI_MAX_ADAPTERS] = {0};
    ym_diag diag = {0};
    int rc = 0;
    *out = NULL;
    if (n <= 0)
        return 0;
    for (int i = 0; i < n && rc == 0; i++) {
        ym_err err = ym_adapter_load(dirs[i], model, NULL, &parts[i], &diag);
        if (err != YM_OK)
            rc = diag.msg[0] ? cli_error(CLI_FAIL, "adapter: %s", diag.msg)
                             : cli_error(CLI_FAIL, "adapter %s: %s", dirs[i], ym_strerror(err));
    }
    if (rc == 0 && n == 1) {
        *out = ym_adapter_ref(parts[0]);
    } else if (rc == 0) {
        ym_err err = ym_adapter_compose(parts, n, out, &diag);
        if (err != YM_OK)
            rc = cli_error(CLI_FAIL, "adapters: %s", diag.msg[0] ? diag.msg : ym_strerror(err));
    }
    for (int i = 0; i < n; i++)
        ym_adapter_unref(parts[i]);
    return rc;
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t cli_heldout_count(size_t n_win, double frac)
{
    size_t n = (size_t)llround(frac * (double)n_win);
    return n < 1 ? 1 : n;
}

void cli_heldout_windows(size_t n_win, size_t n_held, size_t *out)
{
    for (size_t i = 0; i < n_held; i++)
        out[i] = (size_t)(((unsigned long long)(2 * i + 1) * n_win) / (2ull * n_held));
}

void cli_print_double(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.17g", v);
    else
        fputs("null", f);
}
