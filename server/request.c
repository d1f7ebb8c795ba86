/* server/request.c - the /v1 request bodies: JSON text -> validated C structs.
 *
 * Field rules follow OpenAI's legacy completions API where it has the field (types, ranges,
 * null meaning "default"), vLLM's where it extends it (top_k, min_p, repetition_penalty,
 * ignore_eos); the chat body follows OpenAI's chat completions API. Unknown fields are ignored,
 * as OpenAI-compatible servers do; fields we know but do not support (best_of > 1,
 * suffix; chat's tools, structured output, non-text parts) are refused so that a client never
 * gets an answer to a different question than it asked. Every error names its field. */
#include "server/request.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static json_t *get(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

static ym_err get_number(json_t *o, const char *key, double lo, double hi, int lo_open, float *dst,
                         ym_diag *diag)
{
    json_t *v = get(o, key);
    if (v == NULL)
        return YM_OK;
    if (!json_is_number(v))
        return ym_diag_param(diag, YM_EINVAL, key, "%s must be a number", key);
    double x = json_number_value(v);
    if (!isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo))
        return ym_diag_param(diag, YM_EINVAL, key, "%s must be in %s%g, %g]", key,
                             lo_open ? "(" : "[", lo, hi);
    *dst = (float)x;
    return YM_OK;
}

static ym_err get_bool(json_t *o, const char *key, int *dst, ym_diag *diag)
{
    json_t *v = get(o, key);
    if (v == NULL)
        return YM_OK;
    if (!json_is_boolean(v))
        return ym_diag_param(diag, YM_EINVAL, key, "%s must be true or false", key);
    *dst = json_is_true(v);
    return YM_OK;
}

static ym_err get_int(json_t *o, const char *key, int64_t lo, int64_t hi, int64_t *dst,
                      ym_diag *diag)
{
    json_t *v = get(o, key);
    if (v == NULL)
        return YM_OK;
    if (!json_is_integer(v))
        return ym_diag_param(diag, YM_EINVAL, key, "%s must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return ym_diag_param(diag, YM_EINVAL, key, "%s must be in [%lld, %lld]", key,
                             (long long)lo, (long long)hi);
    *dst = x;
    return YM_OK;
}

static ym_err get_string(json_t *o, const char *key, const char **dst, ym_diag *diag)
{
    json_t *v = get(o, key);
    if (v == NULL)
        return YM_OK;
    if (!json_is_string(v))
        return ym_diag_param(diag, YM_EINVAL, key, "%s must be a string", key);
    *dst = json_string_value(v);
    return YM_OK;
}

static json_t *load_object(const char *body, size_t len, ym_diag *diag, ym_err *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
    if (root == NULL) {
        *err = ym_diag_set(diag, YM_EINVAL,
                           "the body is not valid JSON: %s (line %d, column %d)", jerr.text,
                           jerr.line, jerr.column);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        *err = ym_diag_set(diag, YM_EINVAL, "the body must be a JSON object");
        return NULL;
    }
    return root;
}

/* A JSON array of token ids -> new int32 array. Ids are range-checked against the vocabulary
 * later (the parser does not know the model); here only the int32 range. */
static ym_err parse_ids(json_t *arr, const char *param, int64_t max_n, int32_t **ids, size_t *n,
                        ym_diag *diag)
{
    size_t len = json_array_size(arr);
    if (len == 0)
        return ym_diag_param(diag, YM_EINVAL, param, "%s must not be empty", param);
    if ((int64_t)len > max_n)
        return ym_diag_param(diag, YM_EINVAL, param,
                             "%s has %zu tokens, more than the limit of %lld", param, len,
                             (long long)max_n);
    int32_t *v = malloc(len * sizeof(*v));
    if (v == NULL)
        return YM_ENOMEM;
    for (size_t i = 0; i < len; i++) {
        json_t *e = json_array_get(arr, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 ||
            json_integer_value(e) > INT32_MAX) {
            free(v);
            return ym_diag_param(diag, YM_EINVAL, param,
                                 "%s[%zu] must be a non-negative integer token id", param, i);
        }
        v[i] = (int32_t)json_integer_value(e);
    }
    *ids = v;
    *n = len;
    return YM_OK;
}

/* One prompt: a non-empty string, or a non-empty array of token ids. param names it in
 * errors ("prompt", or "prompt[i]" for one of a list; the error's param is "prompt"). */
static ym_err parse_one_prompt(json_t *p, const char *param, const char **text, size_t *len,
                               int32_t **ids, size_t *n_ids, ym_diag *diag)
{
    if (json_is_string(p)) {
        if (json_string_length(p) == 0)
            return ym_diag_param(diag, YM_EINVAL, "prompt", "%s must not be empty", param);
        *text = json_string_value(p);
        *len = json_string_length(p);
        return YM_OK;
    }
    if (json_is_array(p)) {
        /* No length limit here: a prompt too long is refused after tokenization, with the
         * same code whether it came as text or ids (the body limit bounds the array). */
        ym_diag d = {0};
        ym_err err = parse_ids(p, param, INT64_MAX, ids, n_ids, &d);
        if (err != YM_OK)
            return ym_diag_param(diag, err, "prompt", "%s", d.msg);
        return YM_OK;
    }
    return ym_diag_param(diag, YM_EINVAL, "prompt",
                         "%s must be a string or an array of token ids", param);
}

/* OpenAI's forms: a string; an array of token ids (one prompt); an array of strings or an
 * array of id arrays (several prompts, all of one kind). */
static ym_err parse_prompt(json_t *root, ym_creq *r, ym_diag *diag)
{
    json_t *p = get(root, "prompt");
    r->n_prompts = 1;
    if (p == NULL)
        return ym_diag_param(diag, YM_EINVAL, "prompt", "prompt is required");
    json_t *first = json_array_get(p, 0); /* NULL unless p is a non-empty array */
    int is_list = json_is_string(first) || json_is_array(first);
    if (!is_list)
        return parse_one_prompt(p, "prompt", &r->prompt, &r->prompt_len, &r->prompt_ids,
                                &r->n_prompt_ids, diag);
    size_t n = json_array_size(p);
    if (n > YM_MAX_CHOICES)
        return ym_diag_param(diag, YM_EINVAL, "prompt",
                             "prompt lists %zu prompts; at most %d choices (prompts times n) "
                             "per request", n, YM_MAX_CHOICES);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(p, i);
        char param[32];
        snprintf(param, sizeof(param), "prompt[%zu]", i);
        if (json_is_string(e) != json_is_string(first) || !(json_is_string(e) || json_is_array(e)))
            return ym_diag_param(diag, YM_EINVAL, "prompt",
                                 "%s must be %s, as prompt[0] is (a list of prompts holds "
                                 "only strings or only token-id arrays)", param,
                                 json_is_string(first) ? "a string" : "an array of token ids");
        ym_err err;
        if (i == 0)
            err = parse_one_prompt(e, param, &r->prompt, &r->prompt_len, &r->prompt_ids,
                                   &r->n_prompt_ids, diag);
        else
            err = parse_one_prompt(e, param, &r->more[i - 1].text, &r->more[i - 1].len,
                                   &r->more[i - 1].ids, &r->more[i - 1].n_ids, diag);
        if (err != YM_OK)
            return err;
        r->n_prompts = (int)i + 1;
    }
    return YM_OK;
}

static ym_err parse_stop(json_t *root, ym_creq *r, ym_diag *diag)
{
    json_t *s = get(root, "stop");
    if (s == NULL)
        return YM_OK;
    json_t *one[1] = {s};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(s)) {
        n = json_array_size(s);
        if (n > YM_MAX_STOPS)
            return ym_diag_param(diag, YM_EINVAL, "stop", "stop has %zu strings; at most %d", n,
                                 YM_MAX_STOPS);
        items = NULL;
    } else if (!json_is_string(s)) {
        return ym_diag_param(diag, YM_EINVAL, "stop", "stop must be a string or a list of strings");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = items ? items[i] : json_array_get(s, i);
        if (!json_is_string(e))
            return ym_diag_param(diag, YM_EINVAL, "stop", "stop[%zu] must be a string", i);
        size_t len = json_string_length(e);
        if (len > YM_MAX_STOP_BYTES)
            return ym_diag_param(diag, YM_EINVAL, "stop", "stop strings are limited to %d bytes",
                                 YM_MAX_STOP_BYTES);
        if (strlen(json_string_value(e)) != len)
            return ym_diag_param(diag, YM_EINVAL, "stop", "stop strings must not contain NUL");
        if (len > 0)
            r->stops[r->n_stops++] = json_string_value(e);
    }
    return YM_OK;
}

static ym_err get_max_tokens(json_t *root, const char *key, const ym_req_limits *lim,
                             int64_t *dst, ym_diag *diag)
{
    json_t *v = get(root, key);
    if (v == NULL)
        return YM_OK;
    if (!json_is_integer(v))
        return ym_diag_param(diag, YM_EINVAL, key, "%s must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < 0)
        return ym_diag_param(diag, YM_EINVAL, key, "%s must be >= 0", key);
    if (x > lim->max_tokens_cap)
        return ym_diag_param(diag, YM_EINVAL, key, "%s is %lld; this server allows at most %lld",
                             key, (long long)x, (long long)lim->max_tokens_cap);
    *dst = x;
    return YM_OK;
}

/* OpenAI's logit_bias: {"token id": bias in [-100, 100]}, keys in decimal without leading zeros
 * (so each id appears once). The ids are checked against the vocabulary later. */
static ym_err parse_logit_bias(json_t *root, ym_sampling *s, ym_diag *diag)
{
    json_t *o = get(root, "logit_bias"), *v;
    const char *key;
    if (o == NULL)
        return YM_OK;
    if (!json_is_object(o))
        return ym_diag_param(diag, YM_EINVAL, "logit_bias",
                             "logit_bias must be an object mapping token ids to biases");
    if (json_object_size(o) > YM_MAX_LOGIT_BIAS)
        return ym_diag_param(diag, YM_EINVAL, "logit_bias",
                             "logit_bias lists %zu tokens; at most %d", json_object_size(o),
                             YM_MAX_LOGIT_BIAS);
    json_object_foreach(o, key, v) {
        size_t n = strlen(key);
        int ok = n > 0 && n <= 10 && (key[0] != '0' || n == 1);
        for (size_t i = 0; ok && i < n; i++)
            ok = key[i] >= '0' && key[i] <= '9';
        long long id = ok ? strtoll(key, NULL, 10) : -1;
        if (!ok || id > INT32_MAX)
            return ym_diag_param(diag, YM_EINVAL, "logit_bias",
                                 "logit_bias: \"%.32s\" is not a token id (a non-negative "
                                 "integer in decimal)", key);
        if (!json_is_number(v) || !(json_number_value(v) >= -100.0 &&
                                    json_number_value(v) <= 100.0))
            return ym_diag_param(diag, YM_EINVAL, "logit_bias",
                                 "logit_bias[\"%s\"] must be a number in [-100, 100]", key);
        s->logit_bias[s->n_logit_bias++] =
            (ym_logit_bias){.id = (int32_t)id, .bias = (float)json_number_value(v)};
    }
    return YM_OK;
}

/* The fields /v1/completions and /v1/chat/completions share: sampling, stop, stream, seed,
 * adapters, session_id, n and logit_bias. */
static ym_err parse_shared(json_t *root, const ym_req_limits *lim, ym_creq *r, ym_diag *diag)
{
    ym_err err;
    json_t *v;
    if ((err = get_string(root, "model", &r->model, diag)) != YM_OK)
        return err;
    ym_sampling *s = &r->sampling;
    int64_t top_k = 0, n = 1;
    if ((err = get_number(root, "temperature", 0, 2, 0, &s->temperature, diag)) != YM_OK ||
        (err = get_number(root, "top_p", 0, 1, 1, &s->top_p, diag)) != YM_OK ||
        (err = get_number(root, "min_p", 0, 1, 0, &s->min_p, diag)) != YM_OK ||
        (err = get_number(root, "presence_penalty", -2, 2, 0, &s->presence_penalty, diag)) ||
        (err = get_number(root, "frequency_penalty", -2, 2, 0, &s->frequency_penalty, diag)) ||
        (err = get_number(root, "repetition_penalty", 0, 100, 1, &s->repetition_penalty, diag)) ||
        (err = get_int(root, "top_k", -1, INT32_MAX, &top_k, diag)) != YM_OK ||
        (err = get_int(root, "n", 1, YM_MAX_CHOICES, &n, diag)) != YM_OK ||
        (err = get_bool(root, "stream", &r->stream, diag)) != YM_OK ||
        (err = get_bool(root, "ignore_eos", &r->ignore_eos, diag)) != YM_OK ||
        (err = get_string(root, "user", &r->user, diag)) != YM_OK ||
        (err = parse_stop(root, r, diag)) != YM_OK)
        return err;
    s->top_k = (int)top_k;
    r->n_choices = (int)n;
    if ((v = get(root, "seed")) != NULL) {
        if (!json_is_integer(v))
            return ym_diag_param(diag, YM_EINVAL, "seed", "seed must be an integer");
        s->seed = (uint64_t)json_integer_value(v);
        s->has_seed = 1;
    }
    if ((v = get(root, "stream_options")) != NULL) {
        if (!json_is_object(v))
            return ym_diag_param(diag, YM_EINVAL, "stream_options",
                                 "stream_options must be an object");
        if (!r->stream)
            return ym_diag_param(diag, YM_EINVAL, "stream_options",
                                 "stream_options is only allowed when stream is true");
        if ((err = get_bool(v, "include_usage", &r->include_usage, diag)) != YM_OK) {
            snprintf(diag->param, sizeof(diag->param), "stream_options.include_usage");
            return err;
        }
    }
    if ((err = parse_logit_bias(root, s, diag)) != YM_OK)
        return err;
    if ((v = get(root, "adapters")) != NULL) {
        if (!json_is_array(v) || json_array_size(v) > 16)
            return ym_diag_param(diag, YM_EINVAL, "adapters",
                                 "adapters must be a list of at most 16 adapter names");
        for (size_t i = 0; i < json_array_size(v); i++)
            if (!json_is_string(json_array_get(v, i)))
                return ym_diag_param(diag, YM_EINVAL, "adapters", "adapters[%zu] must be a string",
                                     i);
        r->adapters = json_array_size(v) > 0 ? v : NULL;
    }
    if ((v = get(root, "session_id")) != NULL) {
        if (!json_is_string(v))
            return ym_diag_param(diag, YM_EINVAL, "session_id", "session_id must be a string");
        size_t max = lim->max_session_id_bytes > 0 ? (size_t)lim->max_session_id_bytes : 256;
        if ((err = ym_session_id_check(json_string_value(v), json_string_length(v), max,
                                       diag)) != YM_OK)
            return err;
        r->session_id = json_string_value(v);
    }
    return YM_OK;
}

static ym_err parse_completion(json_t *root, const ym_req_limits *lim, ym_creq *r, ym_diag *diag)
{
    ym_err err;
    if ((err = parse_prompt(root, r, diag)) != YM_OK ||
        (err = get_max_tokens(root, "max_tokens", lim, &r->max_tokens, diag)) != YM_OK ||
        (err = parse_shared(root, lim, r, diag)) != YM_OK)
        return err;

    json_t *v;
    ym_sampling *s = &r->sampling;
    int64_t best_of = 1, logprobs = -1;
    if ((err = get_int(root, "best_of", 1, INT32_MAX, &best_of, diag)) != YM_OK ||
        (err = get_int(root, "logprobs", 0, YM_MAX_LOGPROBS, &logprobs, diag)) != YM_OK ||
        (err = get_bool(root, "echo", &r->echo, diag)) != YM_OK ||
        (err = get_bool(root, "return_tokens_as_token_ids", &r->tokens_as_ids, diag)) != YM_OK ||
        (err = get_bool(root, "session_append", &r->session_append, diag)) != YM_OK)
        return err;
    r->logprobs = (int)logprobs;
    s->n_logprobs = logprobs > 0 ? (int)logprobs : 0;
    if (best_of != 1)
        return ym_diag_param(diag, YM_EINVAL, "best_of", "best_of > 1 is not supported");
    if (r->n_prompts * r->n_choices > YM_MAX_CHOICES)
        return ym_diag_param(diag, YM_EINVAL, "prompt",
                             "%d prompts times n = %d is %d choices; at most %d per request",
                             r->n_prompts, r->n_choices, r->n_prompts * r->n_choices,
                             YM_MAX_CHOICES);
    if ((v = get(root, "suffix")) != NULL && !(json_is_string(v) && json_string_length(v) == 0))
        return ym_diag_param(diag, YM_EINVAL, "suffix", "suffix is not supported");
    return ym_sampling_validate(s, diag);
}

/* One message's content: a string, or a list of text parts joined into one string (what the
 * template sees). Other part types are refused by name. New string in *out. */
static ym_err chat_content(json_t *c, size_t i, json_t **out, ym_diag *diag)
{
    char param[64];
    snprintf(param, sizeof(param), "messages[%zu].content", i);
    if (json_is_string(c)) {
        *out = json_incref(c);
        return YM_OK;
    }
    if (!json_is_array(c))
        return ym_diag_param(diag, YM_EINVAL, param,
                             "%s must be a string or a list of text parts", param);
    size_t total = 0;
    for (size_t k = 0; k < json_array_size(c); k++) {
        json_t *part = json_array_get(c, k);
        const char *type = json_string_value(json_object_get(part, "type"));
        snprintf(param, sizeof(param), "messages[%zu].content[%zu]", i, k);
        if (!json_is_object(part) || type == NULL)
            return ym_diag_param(diag, YM_EINVAL, param,
                                 "%s must be an object with a \"type\"", param);
        if (strcmp(type, "text") != 0)
            return ym_diag_param(diag, YM_EINVAL, param,
                                 "%s is a part of type \"%.32s\": only text parts are supported",
                                 param, type);
        json_t *t = json_object_get(part, "text");
        if (!json_is_string(t))
            return ym_diag_param(diag, YM_EINVAL, param, "%s.text must be a string", param);
        total += json_string_length(t);
    }
    char *buf = malloc(total + 1);
    if (buf == NULL)
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    size_t at = 0;
    for (size_t k = 0; k < json_array_size(c); k++) {
        json_t *t = json_object_get(json_array_get(c, k), "text");
        memcpy(buf + at, json_string_value(t), json_string_length(t));
        at += json_string_length(t);
    }
    *out = json_stringn_nocheck(buf, at);
    free(buf);
    return *out ? YM_OK : YM_ENOMEM;
}

/* messages -> a new array of {"role", "content": string[, "name"]}, checked. */
static ym_err chat_messages(json_t *root, json_t **out, ym_diag *diag)
{
    static const char *const roles[] = {"system", "developer", "user", "assistant"};
    json_t *m = get(root, "messages");
    *out = NULL;
    if (m == NULL)
        return ym_diag_param(diag, YM_EINVAL, "messages", "messages is required");
    if (!json_is_array(m) || json_array_size(m) == 0)
        return ym_diag_param(diag, YM_EINVAL, "messages",
                             "messages must be a non-empty list of messages");
    json_t *norm = json_array();
    if (norm == NULL)
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    ym_err err = YM_OK;
    char param[64];
    for (size_t i = 0; i < json_array_size(m); i++) {
        json_t *msg = json_array_get(m, i), *content = NULL;
        snprintf(param, sizeof(param), "messages[%zu]", i);
        if (!json_is_object(msg)) {
            err = ym_diag_param(diag, YM_EINVAL, param, "%s must be an object", param);
            goto fail;
        }
        const char *role = json_string_value(json_object_get(msg, "role"));
        snprintf(param, sizeof(param), "messages[%zu].role", i);
        if (role == NULL) {
            err = ym_diag_param(diag, YM_EINVAL, param, "%s must be a string", param);
            goto fail;
        }
        int known = 0;
        for (size_t k = 0; k < sizeof(roles) / sizeof(roles[0]); k++)
            known |= strcmp(role, roles[k]) == 0;
        if (!known) {
            err = ym_diag_param(diag, YM_EINVAL, param,
                                "%s is \"%.32s\": the roles are system, developer, user and "
                                "assistant (tools are not supported)", param, role);
            goto fail;
        }
        if (get(msg, "tool_calls") != NULL || get(msg, "function_call") != NULL) {
            snprintf(param, sizeof(param), "messages[%zu].tool_calls", i);
            err = ym_diag_param(diag, YM_EINVAL, param, "%s: tool calls are not supported",
                                param);
            goto fail;
        }
        if (get(msg, "audio") != NULL) {
            snprintf(param, sizeof(param), "messages[%zu].audio", i);
            err = ym_diag_param(diag, YM_EINVAL, param, "%s: audio is not supported", param);
            goto fail;
        }
        json_t *c = get(msg, "content");
        if (c == NULL) {
            snprintf(param, sizeof(param), "messages[%zu].content", i);
            err = ym_diag_param(diag, YM_EINVAL, param, "%s is required", param);
            goto fail;
        }
        if ((err = chat_content(c, i, &content, diag)) != YM_OK)
            goto fail;
        json_t *o = json_pack("{s:s,s:o}", "role", role, "content", content);
        json_t *name = get(msg, "name");
        if (o != NULL && json_is_string(name))
            json_object_set(o, "name", name);
        if (o == NULL || json_array_append_new(norm, o) != 0) {
            err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
            goto fail;
        }
    }
    *out = norm;
    return YM_OK;
fail:
    json_decref(norm);
    return err;
}

/* Fields of OpenAI's chat API that ask for what yunmin does not do: refused by name. */
static ym_err chat_refusals(json_t *root, ym_diag *diag)
{
    json_t *v;
    if ((v = get(root, "tools")) != NULL && !(json_is_array(v) && json_array_size(v) == 0))
        return ym_diag_param(diag, YM_EINVAL, "tools", "tools are not supported");
    if ((v = get(root, "tool_choice")) != NULL &&
        !(json_is_string(v) && strcmp(json_string_value(v), "none") == 0))
        return ym_diag_param(diag, YM_EINVAL, "tool_choice",
                             "tool_choice is not supported (tools are not)");
    if (get(root, "functions") != NULL)
        return ym_diag_param(diag, YM_EINVAL, "functions", "functions are not supported");
    if (get(root, "function_call") != NULL)
        return ym_diag_param(diag, YM_EINVAL, "function_call", "function_call is not supported");
    if ((v = get(root, "response_format")) != NULL) {
        const char *type = json_string_value(json_object_get(v, "type"));
        if (!json_is_object(v) || type == NULL || strcmp(type, "text") != 0)
            return ym_diag_param(diag, YM_EINVAL, "response_format",
                                 "response_format: only {\"type\": \"text\"} is supported");
    }
    if (get(root, "audio") != NULL)
        return ym_diag_param(diag, YM_EINVAL, "audio", "audio output is not supported");
    if ((v = get(root, "modalities")) != NULL) {
        for (size_t i = 0; json_is_array(v) && i < json_array_size(v); i++) {
            const char *m = json_string_value(json_array_get(v, i));
            if (m == NULL || strcmp(m, "text") != 0)
                return ym_diag_param(diag, YM_EINVAL, "modalities",
                                     "modalities: only \"text\" is supported");
        }
        if (!json_is_array(v))
            return ym_diag_param(diag, YM_EINVAL, "modalities",
                                 "modalities must be a list of strings");
    }
    if (get(root, "prediction") != NULL)
        return ym_diag_param(diag, YM_EINVAL, "prediction", "prediction is not supported");
    if (get(root, "session_append") != NULL)
        return ym_diag_param(diag, YM_EINVAL, "session_append",
                             "session_append is for /v1/completions; a chat with session_id "
                             "resumes from the session by itself");
    return YM_OK;
}

static ym_err parse_chat(json_t *root, const ym_req_limits *lim, ym_creq *r, ym_diag *diag)
{
    ym_err err;
    int64_t top_logprobs = -1;
    int logprobs = 0;
    if ((err = chat_messages(root, &r->messages, diag)) != YM_OK ||
        (err = chat_refusals(root, diag)) != YM_OK ||
        (err = get_max_tokens(root, "max_tokens", lim, &r->max_tokens, diag)) != YM_OK ||
        (err = get_max_tokens(root, "max_completion_tokens", lim, &r->max_tokens, diag)) ||
        (err = parse_shared(root, lim, r, diag)) != YM_OK ||
        (err = get_bool(root, "logprobs", &logprobs, diag)) != YM_OK ||
        (err = get_int(root, "top_logprobs", 0, YM_MAX_LOGPROBS, &top_logprobs, diag)) != YM_OK)
        return err;
    if (top_logprobs >= 0 && !logprobs)
        return ym_diag_param(diag, YM_EINVAL, "top_logprobs",
                             "top_logprobs needs logprobs set to true");
    r->logprobs = logprobs ? (top_logprobs > 0 ? (int)top_logprobs : 0) : -1;
    r->sampling.n_logprobs = r->logprobs > 0 ? r->logprobs : 0;
    return ym_sampling_validate(&r->sampling, diag);
}

/* The body as a JSON object, read by one of the request parsers above into *out. */
static ym_err parse_body(const char *body, size_t len, const ym_req_limits *lim,
                         ym_err (*parse)(json_t *, const ym_req_limits *, ym_creq *, ym_diag *),
                         ym_creq *out, json_t **root, ym_diag *diag)
{
    memset(out, 0, sizeof(*out));
    out->sampling = ym_sampling_default();
    out->max_tokens = lim->default_max_tokens;
    out->logprobs = -1;
    out->n_prompts = 1;
    *root = NULL;
    ym_err err = YM_OK;
    json_t *doc = load_object(body, len, diag, &err);
    if (doc == NULL)
        return err;
    if ((err = parse(doc, lim, out, diag)) != YM_OK) {
        ym_creq_deinit(out);
        json_decref(doc);
        return err;
    }
    *root = doc;
    return YM_OK;
}

ym_err ym_chatreq_parse(const char *body, size_t len, const ym_req_limits *lim, ym_creq *out,
                        json_t **root, ym_diag *diag)
{
    return parse_body(body, len, lim, parse_chat, out, root, diag);
}

ym_err ym_session_id_check(const char *id, size_t len, size_t max, ym_diag *diag)
{
    if (len == 0 || len > max)
        return ym_diag_param(diag, YM_EINVAL, "session_id",
                             "session_id must have 1 to %zu characters (it has %zu)", max, len);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c != '\0' && strchr("-._~:@+=", c) != NULL)))
            return ym_diag_param(diag, YM_EINVAL, "session_id",
                                 "session_id may only hold letters, digits and -._~:@+= "
                                 "(character %zu is not one)", i);
    }
    return YM_OK;
}

ym_err ym_creq_parse(const char *body, size_t len, const ym_req_limits *lim, ym_creq *out,
                     json_t **root, ym_diag *diag)
{
    return parse_body(body, len, lim, parse_completion, out, root, diag);
}

void ym_creq_deinit(ym_creq *r)
{
    if (r == NULL)
        return;
    free(r->prompt_ids);
    r->prompt_ids = NULL;
    for (int i = 0; i < YM_MAX_CHOICES - 1; i++) {
        free(r->more[i].ids);
        r->more[i].ids = NULL;
        r->more[i].n_ids = 0;
    }
    json_decref(r->messages);
    r->messages = NULL;
    r->n_prompt_ids = 0;
}

ym_err ym_tokreq_parse(const char *body, size_t len, const char **text, size_t *text_len,
                       const char **model, json_t **root, ym_diag *diag)
{
    ym_err err = YM_OK;
    *root = NULL;
    *model = NULL;
    json_t *doc = load_object(body, len, diag, &err);
    if (doc == NULL)
        return err;
    json_t *p = get(doc, "prompt");
    if ((err = get_string(doc, "model", model, diag)) != YM_OK)
        goto fail;
    if (p == NULL || !json_is_string(p)) {
        err = ym_diag_param(diag, YM_EINVAL, "prompt", "prompt must be a string");
        goto fail;
    }
    *text = json_string_value(p);
    *text_len = json_string_length(p);
    *root = doc;
    return YM_OK;
fail:
    json_decref(doc);
    return err;
}

ym_err ym_detokreq_parse(const char *body, size_t len, int32_t **ids, size_t *n,
                         const char **model, json_t **root, ym_diag *diag)
{
    ym_err err = YM_OK;
    *root = NULL;
    *model = NULL;
    *ids = NULL;
    *n = 0;
    json_t *doc = load_object(body, len, diag, &err);
    if (doc == NULL)
        return err;
    json_t *t = get(doc, "tokens");
    if ((err = get_string(doc, "model", model, diag)) != YM_OK)
        goto fail;
    if (t == NULL || !json_is_array(t)) {
        err = ym_diag_param(diag, YM_EINVAL, "tokens", "tokens must be an array of token ids");
        goto fail;
    }
    if (json_array_size(t) == 0) {
        *root = doc;
        return YM_OK;
    }
    if ((err = parse_ids(t, "tokens", 1 << 24, ids, n, diag)) != YM_OK)
        goto fail;
    *root = doc;
    return YM_OK;
fail:
    json_decref(doc);
    return err;
}
