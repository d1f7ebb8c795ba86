/* adapters/peft_config.c - adapter_config.json (PEFT) and adapter_set.json (yunmin).
 *
 * Owns the meaning of PEFT's config keys for Mamba-1: which projections of which layers an
 * adapter targets, with which rank and alpha, and whether IA³ scales a module's input or its
 * output. The rules are PEFT's (peft 0.21): a target_modules list entry t matches a module
 * named k when k == t or k ends with "." t; a target_modules string is a regular expression
 * matched against the whole name; rank_pattern / alpha_pattern keys are regular expressions
 * matched as (.*\.)?(key)$ from the start of the name, the first key in file order winning;
 * layers_to_transform keeps only the listed layers, for list entries matched by suffix (a
 * full name is taken as is; with a regex target PEFT refuses layers_to_transform). Module names are those of
 * MambaForCausalLM: backbone.layers.{l}.mixer.{in_proj,x_proj,dt_proj,out_proj}.
 * Python regular expressions are run by POSIX extended ones after a small translation (\d,
 * \w, \s, (?:, lazy quantifiers); a construct without an equivalent is refused, never guessed.
 * Thread: any. Pure: parses bytes, keeps nothing. Must not: accept a feature whose numerics
 * yunmin would not reproduce (every such key is refused by name, see refused_keys). */
#include "adapters/adapter.h"

#include <jansson.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers --------------------------------------------------------------------- */

static void free_strv(char **v, int n)
{
    for (int i = 0; i < n && v != NULL; i++)
        free(v[i]);
    free(v);
}

/* Truthy as Python would see it: not null, not false, not 0, not an empty string/list/dict. */
static int truthy(const json_t *v)
{
    if (v == NULL || json_is_null(v) || json_is_false(v))
        return 0;
    if (json_is_string(v))
        return json_string_length(v) > 0;
    if (json_is_array(v))
        return json_array_size(v) > 0;
    if (json_is_object(v))
        return json_object_size(v) > 0;
    if (json_is_integer(v))
        return json_integer_value(v) != 0;
    if (json_is_real(v))
        return json_real_value(v) != 0.0;
    return 1;
}

/* A string (regex, into *regex) or a list of strings (into *list, *n). */
static ym_err read_modules(json_t *v, const char *key, char ***list, int *n, char **regex,
                           ym_diag *diag)
{
    if (json_is_string(v)) {
        if ((*regex = strdup(json_string_value(v))) == NULL)
            return YM_ENOMEM;
        return YM_OK;
    }
    if (!json_is_array(v))
        return ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: %s must be a list of module "
                           "names or a regular expression", key);
    size_t m = json_array_size(v);
    if (m > 64)
        return ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: %s has %zu entries", key, m);
    *list = calloc(m > 0 ? m : 1, sizeof(char *));
    if (*list == NULL)
        return YM_ENOMEM;
    for (size_t i = 0; i < m; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_string(e) || json_string_length(e) == 0)
            return ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: %s[%zu] is not a module "
                               "name", key, i);
        if (((*list)[i] = strdup(json_string_value(e))) == NULL)
            return YM_ENOMEM;
        (*n)++;
    }
    return YM_OK;
}

static ym_err read_pattern(json_t *root, const char *key, int integer, ym_peft_pattern **out,
                           int *n, ym_diag *diag)
{
    json_t *v = json_object_get(root, key);
    if (v == NULL || json_is_null(v))
        return YM_OK;
    if (!json_is_object(v))
        return ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: %s must be an object", key);
    size_t m = json_object_size(v);
    if (m > 4096)
        return ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: %s has %zu entries", key, m);
    *out = calloc(m > 0 ? m : 1, sizeof(**out));
    if (*out == NULL)
        return YM_ENOMEM;
    const char *k;
    json_t *e;
    json_object_foreach(v, k, e)
    {
        double val;
        if (integer ? !json_is_integer(e) : !json_is_number(e))
            return ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: %s[\"%s\"] must be %s",
                               key, k, integer ? "an integer" : "a number");
        val = json_number_value(e);
        if (!isfinite(val) || (integer && (val < 1 || val > 1e6)))
            return ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: %s[\"%s\"] = %g is out "
                               "of range", key, k, val);
        if (((*out)[*n].key = strdup(k)) == NULL)
            return YM_ENOMEM;
        (*out)[*n].value = val;
        (*n)++;
    }
    return YM_OK;
}

/* PEFT features whose numerics yunmin does not reproduce: refused when set (truthy). */
static const struct {
    const char *key;
    const char *why;
} refused_keys[] = {
    {"modules_to_save", "replaces whole modules; yunmin applies adapters to one shared base"},
    {"use_dora", "DoRA is not supported"},
    {"lora_bias", "LoRA bias terms are not supported"},
    {"fan_in_fan_out", "Conv1D-style (transposed) weights do not occur in Mamba"},
    {"layer_replication", "layer replication changes the model's depth"},
    {"exclude_modules", "exclude_modules is not supported; list the targets instead"},
    {"target_parameters", "parameter targeting is not supported"},
    {"trainable_token_indices", "trainable tokens (embedding rows) are not supported"},
    {"alora_invocation_tokens", "activated LoRA is not supported"},
    {"use_qalora", "QA-LoRA is not supported"},
    {"use_bdlora", "BD-LoRA is not supported"},
};

ym_err ym_peft_config_parse(const char *json, size_t len, ym_peft_config *out, ym_diag *diag)
{
    memset(out, 0, sizeof(*out));
    json_error_t jerr;
    json_t *root = json_loadb(json != NULL ? json : "", len, JSON_REJECT_DUPLICATES, &jerr);
    ym_err err = YM_EFORMAT;
    if (root == NULL)
        return ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: line %d: %s", jerr.line,
                           jerr.text);
    if (!json_is_object(root)) {
        ym_diag_set(diag, err, "adapter_config.json is not a JSON object");
        goto fail;
    }
    json_t *pt = json_object_get(root, "peft_type");
    const char *type = json_string_value(pt);
    if (type == NULL) {
        ym_diag_set(diag, err, "adapter_config.json: peft_type missing or not a string");
        goto fail;
    }
    if (strcmp(type, "LORA") == 0) {
        out->type = YM_PEFT_LORA;
    } else if (strcmp(type, "IA3") == 0) {
        out->type = YM_PEFT_IA3;
    } else {
        ym_diag_set(diag, err, "adapter_config.json: peft_type \"%.64s\" is not supported "
                    "(LORA and IA3 are)", type);
        goto fail;
    }
    for (size_t i = 0; i < sizeof(refused_keys) / sizeof(refused_keys[0]); i++)
        if (truthy(json_object_get(root, refused_keys[i].key))) {
            ym_diag_set(diag, err, "adapter_config.json: %s is set: %s", refused_keys[i].key,
                        refused_keys[i].why);
            goto fail;
        }
    json_t *tm = json_object_get(root, "target_modules");
    if (tm == NULL || json_is_null(tm)) {
        ym_diag_set(diag, err, "adapter_config.json: target_modules missing (yunmin has no "
                    "default targets for Mamba)");
        goto fail;
    }
    if ((err = read_modules(tm, "target_modules", &out->targets, &out->n_targets,
                            &out->target_regex, diag)) != YM_OK)
        goto fail;
    err = YM_EFORMAT;
    if (out->target_regex == NULL && out->n_targets == 0) {
        ym_diag_set(diag, err, "adapter_config.json: target_modules is empty");
        goto fail;
    }

    json_t *lt = json_object_get(root, "layers_to_transform");
    if (lt != NULL && !json_is_null(lt)) {
        size_t m = json_is_array(lt) ? json_array_size(lt) : 1;
        if (!json_is_integer(lt) && !json_is_array(lt)) {
            ym_diag_set(diag, err, "adapter_config.json: layers_to_transform must be an integer "
                        "or a list of integers");
            goto fail;
        }
        if (m > 65536 || (out->layers = calloc(m > 0 ? m : 1, sizeof(int))) == NULL) {
            err = m > 65536 ? YM_EFORMAT : YM_ENOMEM;
            ym_diag_set(diag, err, "adapter_config.json: layers_to_transform too long");
            goto fail;
        }
        for (size_t i = 0; i < m; i++) {
            json_t *e = json_is_array(lt) ? json_array_get(lt, i) : lt;
            json_int_t v = json_integer_value(e);
            if (!json_is_integer(e) || v < 0 || v > 65535) {
                ym_diag_set(diag, err, "adapter_config.json: layers_to_transform[%zu] is not a "
                            "layer index", i);
                goto fail;
            }
            out->layers[out->n_layers++] = (int)v;
        }
    }
    /* PEFT finds the layer index with layers_pattern; Mamba's blocks are "layers". */
    json_t *lp = json_object_get(root, "layers_pattern");
    if (lp != NULL && !json_is_null(lp)) {
        json_t *one = json_is_array(lp) && json_array_size(lp) == 1 ? json_array_get(lp, 0) : lp;
        if (!json_is_string(one) || strcmp(json_string_value(one), "layers") != 0) {
            ym_diag_set(diag, err, "adapter_config.json: layers_pattern must be \"layers\" (the "
                        "name of Mamba's block list) or null");
            goto fail;
        }
    }

    if (out->type == YM_PEFT_LORA) {
        json_t *r = json_object_get(root, "r"), *a = json_object_get(root, "lora_alpha");
        if (!json_is_integer(r) || json_integer_value(r) < 1 || json_integer_value(r) > 1000000) {
            ym_diag_set(diag, err, "adapter_config.json: r must be a positive integer");
            goto fail;
        }
        out->r = (int)json_integer_value(r);
        if (a == NULL || json_is_null(a)) {
            out->alpha = 8; /* PEFT's default lora_alpha */
        } else if (!json_is_number(a) || !isfinite(json_number_value(a))) {
            ym_diag_set(diag, err, "adapter_config.json: lora_alpha must be a number");
            goto fail;
        } else {
            out->alpha = json_number_value(a);
        }
        json_t *rs = json_object_get(root, "use_rslora");
        if (rs != NULL && !json_is_null(rs) && !json_is_boolean(rs)) {
            ym_diag_set(diag, err, "adapter_config.json: use_rslora must be true or false");
            goto fail;
        }
        out->rslora = json_is_true(rs);
        json_t *bias = json_object_get(root, "bias");
        if (bias != NULL && !json_is_null(bias) &&
            (!json_is_string(bias) || strcmp(json_string_value(bias), "none") != 0)) {
            ym_diag_set(diag, err, "adapter_config.json: bias must be \"none\" (trained biases "
                        "would change the shared base model)");
            goto fail;
        }
        if ((err = read_pattern(root, "rank_pattern", 1, &out->rank_pattern,
                                &out->n_rank_pattern, diag)) != YM_OK ||
            (err = read_pattern(root, "alpha_pattern", 0, &out->alpha_pattern,
                                &out->n_alpha_pattern, diag)) != YM_OK)
            goto fail;
        if (json_object_get(root, "feedforward_modules") != NULL &&
            truthy(json_object_get(root, "feedforward_modules"))) {
            err = ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: feedforward_modules is an "
                              "IA3 key, peft_type is LORA");
            goto fail;
        }
    } else {
        json_t *ff = json_object_get(root, "feedforward_modules");
        if (ff == NULL || json_is_null(ff)) {
            ym_diag_set(diag, err, "adapter_config.json: feedforward_modules missing (yunmin has "
                        "no default for Mamba; use [] for output scaling only)");
            goto fail;
        }
        if ((err = read_modules(ff, "feedforward_modules", &out->ff, &out->n_ff, &out->ff_regex,
                                diag)) != YM_OK)
            goto fail;
        err = YM_EFORMAT;
        if (truthy(json_object_get(root, "rank_pattern")) || json_object_get(root, "r") != NULL) {
            ym_diag_set(diag, err, "adapter_config.json: LoRA keys (r, rank_pattern) in an IA3 "
                        "config");
            goto fail;
        }
    }
    json_decref(root);
    return YM_OK;
fail:
    json_decref(root);
    ym_peft_config_deinit(out);
    return err;
}

void ym_peft_config_deinit(ym_peft_config *c)
{
    if (c == NULL)
        return;
    free_strv(c->targets, c->n_targets);
    free_strv(c->ff, c->n_ff);
    free(c->target_regex);
    free(c->ff_regex);
    for (int i = 0; i < c->n_rank_pattern; i++)
        free(c->rank_pattern[i].key);
    free(c->rank_pattern);
    for (int i = 0; i < c->n_alpha_pattern; i++)
        free(c->alpha_pattern[i].key);
    free(c->alpha_pattern);
    free(c->layers);
    memset(c, 0, sizeof(*c));
}

/* ---- regular expressions ----------------------------------------------------------------- */

/* Python re -> POSIX ERE, wrapped as prefix(...)$ with prefix "^(" or "^(.*\.)?(". */
static ym_err regex_compile(regex_t *re, const char *py, int pattern_rule, const char *what,
                            ym_diag *diag)
{
    size_t n = strlen(py);
    /* glibc's regcomp copies a repeated subexpression once per repetition: stacked or large
     * repetitions cost memory exponentially, so (far above what module names need) refuse
     * long expressions, more than 16 quantifiers, a quantifier right after another (Python
     * refuses "multiple repeat" too, bar its lazy "?") and {m,n} bounds over 16. */
    if (n > 256)
        return ym_diag_set(diag, YM_EFORMAT, "%s: regular expression longer than 256", what);
    int n_quant = 0;
    for (size_t i = 0; i < n; i++) {
        if (py[i] == '\\' && i + 1 < n) {
            i++;
            continue;
        }
        int q = py[i] == '*' || py[i] == '+' || py[i] == '{' ||
                (py[i] == '?' && !(i > 0 && py[i - 1] == '('));
        if (!q)
            continue;
        if (py[i] == '{')
            for (size_t j = i + 1; j < n && py[j] != '}'; j++)
                if (py[j] >= '0' && py[j] <= '9' && (atoi(py + j) > 16))
                    return ym_diag_set(diag, YM_EFORMAT, "%s: repetition bound over 16", what);
        if (++n_quant > 16)
            return ym_diag_set(diag, YM_EFORMAT, "%s: more than 16 repetitions", what);
        size_t k = i + 1;
        if (py[i] == '{')
            while (k < n && py[k - 1] != '}')
                k++;
        if (k < n && (py[k] == '*' || py[k] == '+' || py[k] == '{'))
            return ym_diag_set(diag, YM_EFORMAT, "%s: multiple repeat in a regular expression",
                               what);
    }
    char *s = malloc(n * 12 + 32), *o = s;
    if (s == NULL)
        return YM_ENOMEM;
    o += sprintf(o, "%s", pattern_rule ? "^(.*\\.)?(" : "^(");
    char prev = 0; /* last emitted unescaped char, to spot lazy quantifiers */
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = py[i];
        if (ch == '\\' && i + 1 < n) {
            char e = py[++i];
            const char *rep = NULL;
            if (e == 'd')
                rep = in_class ? "0-9" : "[0-9]";
            else if (e == 'w')
                rep = in_class ? "A-Za-z0-9_" : "[A-Za-z0-9_]";
            else if (e == 's')
                rep = in_class ? "[:space:]" : "[[:space:]]";
            else if (strchr(".^$|()[]{}*+?\\/-", e) != NULL) {
                if (in_class) {
                    *o++ = e == '\\' ? '\\' : e;
                } else {
                    *o++ = '\\';
                    *o++ = e;
                }
            } else {
                free(s);
                return ym_diag_set(diag, YM_EFORMAT, "%s: regular expression escape \\%c is not "
                                   "supported", what, e);
            }
            if (rep != NULL)
                o += sprintf(o, "%s", rep);
            prev = 'a';
            continue;
        }
        if (!in_class && ch == '(' && i + 1 < n && py[i + 1] == '?') {
            if (i + 2 < n && py[i + 2] == ':') {
                *o++ = '(';
                i += 2;
                prev = '(';
                continue;
            }
            free(s);
            return ym_diag_set(diag, YM_EFORMAT, "%s: regular expression group (?%c is not "
                               "supported", what, i + 2 < n ? py[i + 2] : ' ');
        }
        if (!in_class && ch == '?' && (prev == '*' || prev == '+' || prev == '?' || prev == '}'))
            continue; /* lazy quantifier: the same language for a whole-name match */
        if (ch == '[' && !in_class)
            in_class = 1;
        else if (ch == ']' && in_class)
            in_class = 0;
        *o++ = ch;
        prev = ch;
    }
    o += sprintf(o, "%s", pattern_rule ? ")$" : ")$");
    *o = 0;
    int rc = regcomp(re, s, REG_EXTENDED | REG_NOSUB);
    free(s);
    if (rc != 0) {
        char buf[128];
        regerror(rc, re, buf, sizeof(buf));
        return ym_diag_set(diag, YM_EFORMAT, "%s: regular expression \"%.64s\": %s", what, py,
                           buf);
    }
    return YM_OK;
}

/* ---- resolution against a model's module names ----------------------------------------- */

static int list_match(char **list, int n, const char *name)
{
    size_t ln = strlen(name);
    for (int i = 0; i < n; i++) {
        size_t lt = strlen(list[i]);
        if (strcmp(list[i], name) == 0 ||
            (ln > lt && name[ln - lt - 1] == '.' && strcmp(name + ln - lt, list[i]) == 0))
            return 1;
    }
    return 0;
}

/* A module matcher: a list (PEFT's suffix rule) or a compiled regex. */
typedef struct matcher {
    char **list;
    int n;
    regex_t re;
    int has_re;
} matcher;

static int m_match(const matcher *m, const char *name)
{
    if (m->has_re)
        return regexec(&m->re, name, 0, NULL, 0) == 0;
    return list_match(m->list, m->n, name);
}

/* Modules of MambaForCausalLM that yunmin does not adapt, with the layer index as %d. */
static const char *const other_modules[] = {
    "backbone.embeddings", "backbone.norm_f", "lm_head", "backbone.layers.%d",
    "backbone.layers.%d.norm", "backbone.layers.%d.mixer", "backbone.layers.%d.mixer.conv1d",
    "backbone.layers.%d.mixer.act",
};

/* Every target must name an adapted projection; none may name another module. */
static ym_err check_targets(const matcher *m, const char *key, int n_layer, ym_diag *diag)
{
    char name[128];
    for (size_t i = 0; i < sizeof(other_modules) / sizeof(other_modules[0]); i++) {
        for (int l = 0; l < (strstr(other_modules[i], "%d") ? n_layer : 1); l++) {
            snprintf(name, sizeof(name), other_modules[i], l);
            if (m_match(m, name))
                return ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: %s selects %s: "
                                   "yunmin adapts only in_proj, x_proj, dt_proj and out_proj",
                                   key, name);
        }
    }
    /* each list entry must match some projection (PEFT: "target modules not found") */
    for (int i = 0; !m->has_re && i < m->n; i++) {
        int hit = 0;
        for (int l = 0; l < n_layer && !hit; l++)
            for (int p = 0; p < YM_PROJ_N && !hit; p++) {
                snprintf(name, sizeof(name), "backbone.layers.%d.mixer.%s", l,
                         ym_proj_name((ym_proj)p));
                hit = list_match(&m->list[i], 1, name);
            }
        if (!hit)
            return ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: %s: unknown target "
                               "module \"%.64s\" (Mamba's are in_proj, x_proj, dt_proj, "
                               "out_proj)", key, m->list[i]);
    }
    return YM_OK;
}

static double pattern_value(const ym_peft_pattern *p, int n, regex_t *res, const char *name,
                            double def)
{
    for (int i = 0; i < n; i++)
        if (regexec(&res[i], name, 0, NULL, 0) == 0)
            return p[i].value;
    return def;
}

ym_err ym_peft_config_resolve(const ym_peft_config *c, int n_layer, ym_peft_module *out,
                              ym_diag *diag)
{
    matcher tm = {.list = c->targets, .n = c->n_targets};
    matcher fm = {.list = c->ff, .n = c->n_ff};
    regex_t *rank_re = NULL, *alpha_re = NULL;
    int n_rank_re = 0, n_alpha_re = 0;
    ym_err err = YM_OK;
    memset(out, 0, sizeof(*out) * (size_t)n_layer * YM_PROJ_N);
    if (c->target_regex != NULL) {
        if ((err = regex_compile(&tm.re, c->target_regex, 0, "target_modules", diag)) != YM_OK)
            goto done;
        tm.has_re = 1;
    }
    if (c->ff_regex != NULL) {
        if ((err = regex_compile(&fm.re, c->ff_regex, 0, "feedforward_modules", diag)) != YM_OK)
            goto done;
        fm.has_re = 1;
    }
    rank_re = calloc((size_t)c->n_rank_pattern + 1, sizeof(regex_t));
    alpha_re = calloc((size_t)c->n_alpha_pattern + 1, sizeof(regex_t));
    if (rank_re == NULL || alpha_re == NULL) {
        err = YM_ENOMEM;
        goto done;
    }
    for (; n_rank_re < c->n_rank_pattern; n_rank_re++)
        if ((err = regex_compile(&rank_re[n_rank_re], c->rank_pattern[n_rank_re].key, 1,
                                 "rank_pattern", diag)) != YM_OK)
            goto done;
    for (; n_alpha_re < c->n_alpha_pattern; n_alpha_re++)
        if ((err = regex_compile(&alpha_re[n_alpha_re], c->alpha_pattern[n_alpha_re].key, 1,
                                 "alpha_pattern", diag)) != YM_OK)
            goto done;
    if ((err = check_targets(&tm, "target_modules", n_layer, diag)) != YM_OK)
        goto done;
    if (c->type == YM_PEFT_IA3 && (err = check_targets(&fm, "feedforward_modules", n_layer,
                                                       diag)) != YM_OK)
        goto done;
    /* PEFT: as lists, feedforward_modules must be a subset of target_modules */
    for (int i = 0; c->type == YM_PEFT_IA3 && !tm.has_re && !fm.has_re && i < c->n_ff; i++) {
        int in = 0;
        for (int j = 0; j < c->n_targets; j++)
            in |= strcmp(c->ff[i], c->targets[j]) == 0;
        if (!in) {
            err = ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: feedforward_modules entry "
                              "\"%.64s\" is not in target_modules", c->ff[i]);
            goto done;
        }
    }
    /* PEFT (LoraConfig / IA3Config) refuses layers_to_transform with a regex target */
    if (tm.has_re && c->layers != NULL) {
        err = ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: layers_to_transform cannot be "
                          "used when target_modules is a regular expression");
        goto done;
    }
    for (int i = 0; i < c->n_layers; i++)
        if (c->layers[i] >= n_layer) {
            err = ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: layers_to_transform names "
                              "layer %d, the model has %d", c->layers[i], n_layer);
            goto done;
        }
    int any = 0;
    for (int l = 0; l < n_layer; l++) {
        int layer_ok = c->layers == NULL;
        for (int i = 0; i < c->n_layers; i++)
            layer_ok |= c->layers[i] == l;
        for (int p = 0; p < YM_PROJ_N; p++) {
            char name[96];
            snprintf(name, sizeof(name), "backbone.layers.%d.mixer.%s", l,
                     ym_proj_name((ym_proj)p));
            ym_peft_module *o = &out[(size_t)l * YM_PROJ_N + p];
            int ff = c->type == YM_PEFT_IA3 && m_match(&fm, name);
            /* as PEFT: a list entry naming the module in full bypasses layers_to_transform */
            int exact = 0;
            for (int i = 0; !tm.has_re && i < c->n_targets; i++)
                exact |= strcmp(c->targets[i], name) == 0;
            if (!m_match(&tm, name) || (!layer_ok && !exact))
                continue;
            o->targeted = true;
            o->ff = ff;
            any = 1;
            if (c->type == YM_PEFT_LORA) {
                o->r = (int)pattern_value(c->rank_pattern, n_rank_re, rank_re, name, c->r);
                o->alpha = pattern_value(c->alpha_pattern, n_alpha_re, alpha_re, name, c->alpha);
            }
        }
    }
    if (!any)
        err = ym_diag_set(diag, YM_EFORMAT, "adapter_config.json: target_modules and "
                          "layers_to_transform select no module of this model");
done:
    if (tm.has_re)
        regfree(&tm.re);
    if (fm.has_re)
        regfree(&fm.re);
    for (int i = 0; i < n_rank_re; i++)
        regfree(&rank_re[i]);
    for (int i = 0; i < n_alpha_re; i++)
        regfree(&alpha_re[i]);
    free(rank_re);
    free(alpha_re);
    return err;
}

/* ---- adapter_set.json ---------------------------------------------------------------------- */

static int safe_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

ym_err ym_adapter_set_config_parse(const char *json, size_t len, ym_adapter_set_config *out,
                                   ym_diag *diag)
{
    memset(out, 0, sizeof(*out));
    json_error_t jerr;
    json_t *root = json_loadb(json != NULL ? json : "", len, JSON_REJECT_DUPLICATES, &jerr);
    ym_err err = YM_EFORMAT;
    if (root == NULL)
        return ym_diag_set(diag, YM_EFORMAT, "adapter_set.json: line %d: %s", jerr.line,
                           jerr.text);
    if (!json_is_object(root)) {
        ym_diag_set(diag, err, "adapter_set.json is not a JSON object");
        goto fail;
    }
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v)
    {
        if (strcmp(k, "format") != 0 && strcmp(k, "version") != 0 &&
            strcmp(k, "adapters") != 0 && strcmp(k, "description") != 0) {
            ym_diag_set(diag, err, "adapter_set.json: unknown key \"%.64s\"", k);
            goto fail;
        }
    }
    const char *fmt = json_string_value(json_object_get(root, "format"));
    if (fmt == NULL || strcmp(fmt, "yunmin-adapter-set") != 0) {
        ym_diag_set(diag, err, "adapter_set.json: format must be \"yunmin-adapter-set\"");
        goto fail;
    }
    json_t *ver = json_object_get(root, "version");
    if (!json_is_integer(ver) || json_integer_value(ver) != 1) {
        ym_diag_set(diag, err, "adapter_set.json: version must be 1");
        goto fail;
    }
    json_t *desc = json_object_get(root, "description");
    if (desc != NULL && !json_is_string(desc)) {
        ym_diag_set(diag, err, "adapter_set.json: description must be a string");
        goto fail;
    }
    json_t *ads = json_object_get(root, "adapters");
    size_t n = json_array_size(ads);
    if (!json_is_array(ads) || n < 1 || n > YM_ADAPTER_SET_MAX) {
        ym_diag_set(diag, err, "adapter_set.json: adapters must be a list of 1 to %d "
                    "sub-directory names", YM_ADAPTER_SET_MAX);
        goto fail;
    }
    if ((out->adapters = calloc(n, sizeof(char *))) == NULL) {
        err = YM_ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(ads, i));
        if (s == NULL || !safe_name(s)) {
            ym_diag_set(diag, err, "adapter_set.json: adapters[%zu] must be a sub-directory name "
                        "of [A-Za-z0-9._-]{1,64}", i);
            goto fail;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(out->adapters[j], s) == 0) {
                ym_diag_set(diag, err, "adapter_set.json: \"%s\" is listed twice", s);
                goto fail;
            }
        if ((out->adapters[i] = strdup(s)) == NULL) {
            err = YM_ENOMEM;
            goto fail;
        }
        out->n_adapters++;
    }
    json_decref(root);
    return YM_OK;
fail:
    json_decref(root);
    ym_adapter_set_config_deinit(out);
    return err;
}

void ym_adapter_set_config_deinit(ym_adapter_set_config *c)
{
    if (c == NULL)
        return;
    free_strv(c->adapters, c->n_adapters);
    memset(c, 0, sizeof(*c));
}
