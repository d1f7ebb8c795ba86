/* server/chat.c - POST /v1/chat/completions and OpenAI's chat.completion shapes.
 *
 * Owns: turning a conversation into a prompt (the chat template parsed at load, main.c) and the
 * chat forms of the answer: chat.completion, chat.completion.chunk deltas, the chat logprobs
 * object. Everything else (parsing the shared fields, sessions, adapters, tokenizing,
 * submitting, collecting the output) is completions.c's path, shared. A session_id resumes
 * from the session's state when the new rendered prompt's tokens extend its history, as a
 * completion's prompt does.
 * Runs: loop thread only. Must not: touch the connection; it answers through completions.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/server.h"

/* The request id, as X-Request-Id carries it: "chatcmpl-" and hex when the server made it
 * (OpenAI's form), or a client's own X-Request-Id whole. */
static json_t *chat_id(const ym_hreq *r)
{
    return json_string(r->id);
}

json_t *ym__chat_chunk(ym_hreq *r, int index, json_t *delta, json_t *logprobs,
                       const char *finish)
{
    json_t *choices = json_array();
    if (delta != NULL)
        json_array_append_new(choices,
                              json_pack("{s:i,s:o,s:o,s:o}", "index", index, "delta", delta,
                                        "logprobs", logprobs ? logprobs : json_null(),
                                        "finish_reason",
                                        finish ? json_string(finish) : json_null()));
    json_t *obj = json_pack("{s:o,s:s,s:I,s:s,s:o}", "id", chat_id(r), "object",
                            "chat.completion.chunk", "created", (json_int_t)time(NULL), "model",
                            r->model[0] ? r->model : r->srv->model_name, "choices", choices);
    if (obj != NULL && r->include_usage)
        json_object_set_new(obj, "usage", json_null());
    return obj;
}

json_t *ym__chat_choice(int index, json_t *text, json_t *logprobs, const char *finish)
{
    return json_pack("{s:i,s:{s:s,s:o},s:o,s:o}", "index", index, "message", "role",
                     "assistant", "content", text, "logprobs", logprobs ? logprobs : json_null(),
                     "finish_reason", finish ? json_string(finish) : json_null());
}

json_t *ym__chat_completion(ym_hreq *r, json_t *choices)
{
    return json_pack("{s:o,s:s,s:I,s:s,s:o}", "id", chat_id(r), "object", "chat.completion",
                     "created", (json_int_t)time(NULL), "model",
                     r->model[0] ? r->model : r->srv->model_name, "choices", choices);
}

/* One {"token", "logprob", "bytes"} entry: the token's own bytes, its text with invalid UTF-8
 * replaced. */
static json_t *token_entry(const ym_tok_t *tok, int32_t id, float lp)
{
    size_t n = 0;
    const char *b = ym_tok_token_bytes(tok, id, &n);
    json_t *bytes = json_array();
    for (size_t i = 0; b != NULL && i < n; i++)
        json_array_append_new(bytes, json_integer((unsigned char)b[i]));
    return json_pack("{s:o,s:f,s:o}", "token", b ? ym_json_text(b, n) : json_string(""),
                     "logprob", isfinite(lp) ? (double)lp : -9999.0, "bytes", bytes);
}

json_t *ym__chat_logprobs(ym_hreq *r, const ym_gen_tok *toks, const ym_logprob *tops, int n,
                          int n_top)
{
    const ym_tok_t *tok = r->srv->tok;
    json_t *content = json_array();
    for (int i = 0; i < n; i++) {
        json_t *e = token_entry(tok, toks[i].id, toks[i].logprob);
        json_t *alt = json_array();
        for (int k = 0; k < n_top && k < r->logprobs; k++) {
            const ym_logprob *t = &tops[(size_t)i * (size_t)n_top + (size_t)k];
            json_array_append_new(alt, token_entry(tok, t->id, t->logprob));
        }
        json_object_set_new(e, "top_logprobs", alt);
        json_array_append_new(content, e);
    }
    return json_pack("{s:o}", "content", content);
}

/* POST /v1/chat/completions. */
ym_err ym_chat_create(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    (void)m;
    ym_server_t *srv = r->srv;
    ym_err err;
    if ((err = ym_server_ready(srv, diag)) != YM_OK)
        return err;
    r->chat = 1;
    ym_req_limits lim = {
        .max_tokens_cap = (int64_t)srv->conf.max_tokens_cap,
        .default_max_tokens = (int64_t)srv->conf.default_max_tokens,
        .max_prompt_tokens = (int64_t)srv->conf.max_prompt_tokens,
        .max_session_id_bytes = (int64_t)srv->conf.max_session_id_bytes,
    };
    ym_creq q;
    json_t *root = NULL;
    char *prompt = NULL;
    size_t prompt_len = 0;
    ym_adapter_t *adapter = NULL; /* a reference while this function holds it */
    if ((err = ym_chatreq_parse(r->body.p, r->body.len, &lim, &q, &root, diag)) != YM_OK)
        return err;
    if (srv->chat_template == NULL) {
        /* The load's own message names files on the server: it went to the log at start. */
        err = ym_diag_param(diag, YM_EINVAL, "model",
                            "the model %s %s: use /v1/completions, or start the server with "
                            "--chat-template FILE",
                            srv->model_name,
                            srv->chat_template_err == YM_ENOENT
                                ? "has no chat template"
                                : "has a chat template this server cannot run (see its log)");
        goto out;
    }
    if ((err = ym__gen_check_vocab(r, &q, diag)) != YM_OK)
        goto out;
    if ((err = ym__gen_take_session(r, &q, diag)) != YM_OK)
        goto out;
    if ((err = ym_adapters_resolve(r, q.model, q.adapters, &adapter, diag)) != YM_OK)
        goto out;
    if (q.model != NULL)
        snprintf(r->model, sizeof(r->model), "%s", q.model);
    ym_diag td = {0};
    err = ym_chat_template_apply(srv->chat_template, q.messages, 1, NULL, &prompt, &prompt_len,
                                 &td);
    if (err == YM_EINVAL && strcmp(td.param, YM_JINJA_RAISED) == 0) {
        ym_diag_param(diag, YM_EINVAL, "messages", "the chat template refused the messages: %s",
                      td.msg);
        goto out;
    } else if (err == YM_ENOMEM) {
        ym_diag_set(diag, err, "out of memory");
        goto out;
    } else if (err != YM_OK) {
        err = ym_diag_param(diag, YM_EINVAL, "messages",
                            "the chat template cannot render these messages: %s", td.msg);
        goto out;
    }
    q.prompt = prompt;
    q.prompt_len = prompt_len;
    err = ym__gen_tokenize_submit(r, &q, &root, adapter, prompt, diag);
    adapter = NULL;
    prompt = NULL; /* taken over */
out:
    free(prompt);
    ym_adapter_unref(adapter);
    ym_creq_deinit(&q);
    json_decref(root);
    return err;
}
