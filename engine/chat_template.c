/* engine/chat_template.c - finding a model's chat template and token strings, and applying it.
 *
 * Owns: the template (parsed once, engine/jinja.c) and copies of the bos/eos strings.
 * Runs: loading on whichever thread loads the model; applying on any thread.
 * Must not: change after loading (apply is called concurrently), or look anywhere but the
 *       model directory's tokenizer_config.json and chat_template.jinja. */
#include "engine/chat_template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/fileio.h"

struct ym_chat_template {
    ym_jinja_t *tmpl; /* owned */
    char *bos;        /* owned, or NULL */
    char *eos;        /* owned, or NULL */
};

#define TEMPLATE_LIMIT ((size_t)4 << 20)
#define CONFIG_LIMIT ((size_t)64 << 20)

static ym_err set_str(char **slot, const char *s)
{
    char *c = NULL;
    if (s != NULL && (c = strdup(s)) == NULL)
        return YM_ENOMEM;
    free(*slot);
    *slot = c;
    return YM_OK;
}

ym_err ym_chat_template_set_bos(ym_chat_template_t *ct, const char *bos_token)
{
    return set_str(&ct->bos, bos_token);
}
ym_err ym_chat_template_set_eos(ym_chat_template_t *ct, const char *eos_token)
{
    return set_str(&ct->eos, eos_token);
}
const char *ym_chat_template_bos(const ym_chat_template_t *ct) { return ct->bos; }
const char *ym_chat_template_eos(const ym_chat_template_t *ct) { return ct->eos; }

ym_err ym_chat_template_new(const char *src, size_t len, const char *bos_token,
                            const char *eos_token, ym_chat_template_t **out, ym_diag *diag)
{
    *out = NULL;
    ym_chat_template_t *ct = calloc(1, sizeof(*ct));
    if (ct == NULL)
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    ym_err err = ym_jinja_parse(src, len, &ct->tmpl, diag);
    if (err == YM_OK && (set_str(&ct->bos, bos_token) != YM_OK || set_str(&ct->eos, eos_token) != YM_OK))
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
    if (err != YM_OK) {
        ym_chat_template_free(ct);
        return err;
    }
    *out = ct;
    return YM_OK;
}

/* "bos_token": "<s>" or {"content": "<s>", ...}; absent or null: NULL. */
static ym_err token_string(const json_t *cfg, const char *key, const char **out, ym_diag *diag)
{
    const json_t *v = json_object_get(cfg, key);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return YM_OK;
    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!json_is_string(v))
        return ym_diag_set(diag, YM_EFORMAT,
                           "tokenizer_config.json: %s must be a string or {\"content\": string}", key);
    *out = json_string_value(v);
    return YM_OK;
}

/* chat_template: a string, or [{"name": ..., "template": ...}, ...] (the one named "default") */
static ym_err template_string(const json_t *cfg, const char **src, size_t *len, ym_diag *diag)
{
    const json_t *v = json_object_get(cfg, "chat_template");
    *src = NULL;
    if (v == NULL || json_is_null(v))
        return YM_OK;
    if (json_is_array(v)) {
        const json_t *found = NULL;
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            const json_t *name = json_object_get(e, "name"), *t = json_object_get(e, "template");
            if (!json_is_string(name) || !json_is_string(t))
                return ym_diag_set(diag, YM_EFORMAT, "tokenizer_config.json: chat_template[%zu] "
                                   "must be {\"name\": string, \"template\": string}", i);
            if (strcmp(json_string_value(name), "default") == 0)
                found = t;
        }
        if (found == NULL)
            return ym_diag_set(diag, YM_EFORMAT,
                               "tokenizer_config.json: chat_template has no template named 'default'");
        v = found;
    }
    if (!json_is_string(v))
        return ym_diag_set(diag, YM_EFORMAT,
                           "tokenizer_config.json: chat_template must be a string or a list of named templates");
    *src = json_string_value(v);
    *len = json_string_length(v);
    return YM_OK;
}

ym_err ym_chat_template_load(const char *dir, ym_chat_template_t **out, ym_diag *diag)
{
    char path[4096];
    char *jinja = NULL, *cfg_text = NULL;
    size_t jinja_len = 0, cfg_len = 0;
    json_t *cfg = NULL;
    ym_err err;
    const char *src = NULL, *bos = NULL, *eos = NULL;
    size_t src_len = 0;
    *out = NULL;

    snprintf(path, sizeof(path), "%s/chat_template.jinja", dir);
    err = ym_read_file(path, TEMPLATE_LIMIT, &jinja, &jinja_len, diag);
    if (err != YM_OK && err != YM_ENOENT)
        goto done;
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    err = ym_read_file(path, CONFIG_LIMIT, &cfg_text, &cfg_len, diag);
    if (err != YM_OK && err != YM_ENOENT)
        goto done;
    if (cfg_text != NULL) {
        json_error_t je;
        /* real configs hold model_max_length = 1e30 as an integer; only strings are read */
        cfg = json_loadb(cfg_text, cfg_len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
        if (!json_is_object(cfg)) {
            err = ym_diag_set(diag, YM_EFORMAT, "tokenizer_config.json: %s",
                              cfg == NULL ? je.text : "must be a JSON object");
            goto done;
        }
        if ((err = token_string(cfg, "bos_token", &bos, diag)) != YM_OK ||
            (err = token_string(cfg, "eos_token", &eos, diag)) != YM_OK)
            goto done;
        if (jinja == NULL && (err = template_string(cfg, &src, &src_len, diag)) != YM_OK)
            goto done;
    }
    if (jinja != NULL) {
        src = jinja;
        src_len = jinja_len;
    }
    if (src == NULL) {
        err = ym_diag_set(diag, YM_ENOENT, "the model has no chat template (no chat_template in "
                                           "tokenizer_config.json, no chat_template.jinja)");
        goto done;
    }
    err = ym_chat_template_new(src, src_len, bos, eos, out, diag);
    if (err == YM_EINVAL) { /* a template that does not parse is a malformed model file */
        char msg[sizeof(diag->msg)];
        if (diag != NULL) {
            snprintf(msg, sizeof(msg), "%s: %.460s",
                     jinja != NULL ? "chat_template.jinja" : "tokenizer_config.json chat_template",
                     diag->msg);
            snprintf(diag->msg, sizeof(diag->msg), "%s", msg);
        }
        err = YM_EFORMAT;
    }
done:
    json_decref(cfg);
    free(cfg_text);
    free(jinja);
    return err;
}

ym_err ym_chat_template_apply(const ym_chat_template_t *ct, const json_t *messages,
                              int add_generation_prompt, const ym_jinja_opts *opts, char **out,
                              size_t *out_len, ym_diag *diag)
{
    *out = NULL;
    if (!json_is_array(messages))
        return ym_diag_param(diag, YM_EINVAL, "messages", "messages must be an array");
    json_t *vars = json_object();
    if (vars == NULL ||
        json_object_set(vars, "messages", (json_t *)messages) != 0 ||
        json_object_set_new(vars, "add_generation_prompt", json_boolean(add_generation_prompt)) != 0 ||
        json_object_set_new(vars, "tools", json_null()) != 0 ||
        json_object_set_new(vars, "documents", json_null()) != 0 ||
        (ct->bos != NULL && json_object_set_new(vars, "bos_token", json_string(ct->bos)) != 0) ||
        (ct->eos != NULL && json_object_set_new(vars, "eos_token", json_string(ct->eos)) != 0)) {
        json_decref(vars);
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    }
    ym_err err = ym_jinja_render(ct->tmpl, vars, opts, out, out_len, diag);
    json_decref(vars);
    return err;
}

void ym_chat_template_free(ym_chat_template_t *ct)
{
    if (ct == NULL)
        return;
    ym_jinja_free(ct->tmpl);
    free(ct->bos);
    free(ct->eos);
    free(ct);
}
