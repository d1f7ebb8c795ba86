/* server/completions.c - POST /v1/completions and OpenAI's text_completion shapes, and the
 * generation path /v1/chat/completions shares (chat.c renders the prompt and gives the chat
 * forms of the output).
 *
 * Owns: a completion's life on the loop thread: validate (request.c), resolve adapters and
 * session, tokenize (long prompts on the libuv pool), submit the generation job to the
 * scheduler, then turn the job's new output into SSE events (streaming) or one JSON body.
 * Runs: loop thread only. Must not: touch the connection or write an error itself; it answers
 * through ym_hreq_respond_json / ym_hreq_start_stream, returns a refusal as ym_err + diag (or,
 * once the handler has returned, hands it to ym_hreq_fail), and gives the transport its output
 * and ping hooks (r->on_output, r->on_ping). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/log.h"
#include "server/server.h"

static json_t *logprob_value(float lp)
{
    return json_real(isfinite(lp) ? (double)lp : -9999.0); /* OpenAI's stand-in for -inf */
}

static json_t *token_string(const ym_tok_t *tok, int32_t id, int as_id)
{
    if (as_id)
        return json_sprintf("token_id:%d", (int)id);
    size_t n = 0;
    const char *b = ym_tok_token_bytes(tok, id, &n);
    return b ? ym_json_text(b, n) : json_string("");
}

/* OpenAI's legacy logprobs object for n tokens starting at toks. */
static json_t *logprobs_json(ym_hreq *r, const ym_gen_tok *toks, const ym_logprob *tops, int n,
                             int n_top, size_t offset_base)
{
    const ym_tok_t *tok = r->srv->tok;
    json_t *tokens = json_array(), *lps = json_array(), *top = json_array(), *off = json_array();
    for (int i = 0; i < n; i++) {
        json_array_append_new(tokens, token_string(tok, toks[i].id, r->tokens_as_ids));
        json_array_append_new(lps, logprob_value(toks[i].logprob));
        json_array_append_new(off, json_integer((json_int_t)(offset_base + toks[i].text_start)));
        json_t *alt = json_object();
        /* The sampled token is always listed (OpenAI: up to logprobs + 1 entries). */
        for (int k = 0; k < n_top && k < r->logprobs; k++) {
            const ym_logprob *t = &tops[(size_t)i * (size_t)n_top + (size_t)k];
            json_t *key = token_string(tok, t->id, r->tokens_as_ids);
            json_object_set_new(alt, json_string_value(key), logprob_value(t->logprob));
            json_decref(key);
        }
        json_t *key = token_string(tok, toks[i].id, r->tokens_as_ids);
        if (json_object_get(alt, json_string_value(key)) == NULL)
            json_object_set_new(alt, json_string_value(key), logprob_value(toks[i].logprob));
        json_decref(key);
        json_array_append_new(top, alt);
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", tokens, "token_logprobs", lps, "top_logprobs",
                     top, "text_offset", off);
}

static json_t *usage_json(int n_prompt, int n_gen, int n_cached)
{
    return json_pack("{s:i,s:i,s:i,s:{s:i}}", "prompt_tokens", n_prompt, "completion_tokens",
                     n_gen, "total_tokens", n_prompt + n_gen, "prompt_tokens_details",
                     "cached_tokens", n_cached);
}

static json_t *completion_object(ym_hreq *r, json_t *choices)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:o}", "id", r->id, "object", "text_completion", "created",
                     (json_int_t)time(NULL), "model", r->model[0] ? r->model : r->srv->model_name,
                     "choices", choices);
}

static json_t *choice(int index, json_t *text, json_t *logprobs, const char *finish)
{
    return json_pack("{s:i,s:o,s:o,s:o}", "index", index, "text", text, "logprobs",
                     logprobs ? logprobs : json_null(), "finish_reason",
                     finish ? json_string(finish) : json_null());
}

void ym__gen_choices_free(ym_hreq *r)
{
    for (int i = 0; i < r->n_choices; i++) {
        ym_choice *c = &r->choices[i];
        ym_gen_delta_deinit(&c->delta);
        ym_buf_deinit(&c->text);
        free(c->toks);
        free(c->tops);
    }
    free(r->choices);
    r->choices = NULL;
    r->n_choices = 0;
}

/* An appended turn whose session another request replaced (or the cache evicted) between the
 * check and the start of the turn. */
#define SESSION_CHANGED                                                                            \
    "the session changed or was evicted before this turn started: send the whole prompt "        \
    "without session_append"

/* --- streaming output --- */

static void sse_event(ym_hreq *r, json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (s == NULL || ym_buf_put(&r->sse, "data: ", 6) || ym_buf_put(&r->sse, s, strlen(s)) ||
        ym_buf_put(&r->sse, "\n\n", 2)) {
        ym_log(YM_LOG_ERROR, r->id, "out of memory for a stream event; ending the stream");
        ym_hreq_stream_abort(r);
    }
    free(s);
}

static void on_ping(ym_hreq *r)
{
    if (ym_buf_put(&r->sse, ": ping\n\n", 8) != 0)
        ym_hreq_stream_abort(r);
}

static const char *public_finish(ym_finish f)
{
    return f == YM_FINISH_STOP ? "stop" : f == YM_FINISH_LENGTH ? "length" : NULL;
}

/* The events of choice i's new output (chunks of different choices interleave). */
static void stream_choice(ym_hreq *r, int i)
{
    ym_gen_delta *d = &r->choices[i].delta;
    int finished = d->finish != YM_FINISH_NONE;
    const char *fin = finished ? public_finish(d->finish) : NULL;
    if (r->chat) {
        if (d->text_len > 0 || d->n_toks > 0) {
            json_t *lp = NULL;
            if (r->logprobs >= 0 && d->n_toks > 0)
                lp = ym__chat_logprobs(r, d->toks, d->tops, d->n_toks, d->n_top);
            sse_event(r, ym__chat_chunk(r, i,
                                        json_pack("{s:o}", "content",
                                                  ym_json_text(d->text, d->text_len)),
                                        lp, NULL));
        }
        if (finished && fin != NULL)
            sse_event(r, ym__chat_chunk(r, i, json_object(), NULL, fin));
    } else if (d->text_len > 0 || d->n_toks > 0 || (finished && fin != NULL)) {
        json_t *lp = NULL;
        if (r->logprobs >= 0 && d->n_toks > 0)
            lp = logprobs_json(r, d->toks, d->tops, d->n_toks, d->n_top, r->echo_len);
        json_t *obj = completion_object(
            r, json_pack("[o]", choice(i, ym_json_text(d->text, d->text_len), lp, fin)));
        if (r->include_usage)
            json_object_set_new(obj, "usage", json_null());
        sse_event(r, obj);
    }
}

static void stream_output(ym_hreq *r, const ym_gen_delta *end)
{
    for (int i = 0; i < r->n_choices; i++)
        if (r->choices[i].took)
            stream_choice(r, i);
    if (end == NULL)
        return;
    if (end->finish == YM_FINISH_ERROR && end->error == YM_EEXIST) {
        sse_event(r, json_pack("{s:{s:s,s:s,s:s,s:s}}", "error", "message", SESSION_CHANGED,
                               "type", "invalid_request_error", "param", "session_append", "code",
                               "session_mismatch"));
    } else if (end->finish == YM_FINISH_ERROR) {
        sse_event(r, json_pack("{s:{s:s,s:s,s:n,s:n}}", "error", "message",
                               "the engine failed while generating; see the server log", "type",
                               "server_error", "param", "code"));
    } else if (end->finish == YM_FINISH_CANCELLED) {
        ym_hreq_stream_abort(r); /* the client is gone or the server is stopping: just end */
        return;
    }
    if (r->include_usage) {
        json_t *obj = r->chat ? ym__chat_chunk(r, 0, NULL, NULL, NULL)
                              : completion_object(r, json_array());
        json_object_set_new(obj, "usage", usage_json(r->n_prompt, r->n_gen, r->n_cached));
        sse_event(r, obj);
    }
    if (ym_buf_put(&r->sse, "data: [DONE]\n\n", 14) != 0)
        ym_hreq_stream_abort(r);
    ym_hreq_stream_end(r);
}

/* --- non-streaming output --- */

/* Keep choice c's new output. 0, or -1 out of memory. */
static int collect_choice(ym_hreq *r, ym_choice *c)
{
    ym_gen_delta *d = &c->delta;
    if (ym_buf_put(&c->text, d->text ? d->text : "", d->text_len) != 0)
        return -1;
    if (r->logprobs >= 0 && d->n_toks > 0) {
        if (c->n_all + d->n_toks > c->cap_all) {
            int cap = (c->cap_all ? c->cap_all : 64);
            while (cap < c->n_all + d->n_toks)
                cap *= 2;
            ym_gen_tok *t = realloc(c->toks, (size_t)cap * sizeof(*t));
            if (t == NULL)
                return -1;
            c->toks = t;
            if (d->n_top > 0) {
                ym_logprob *p = realloc(c->tops, (size_t)cap * (size_t)d->n_top * sizeof(*p));
                if (p == NULL)
                    return -1;
                c->tops = p;
            }
            c->cap_all = cap;
        }
        memcpy(c->toks + c->n_all, d->toks, (size_t)d->n_toks * sizeof(ym_gen_tok));
        if (d->n_top > 0)
            memcpy(c->tops + (size_t)c->n_all * (size_t)d->n_top, d->tops,
                   (size_t)d->n_toks * (size_t)d->n_top * sizeof(ym_logprob));
        c->n_all += d->n_toks;
    }
    return 0;
}

/* Choice i of the whole answer (a new reference, or NULL out of memory). */
static json_t *answer_choice(ym_hreq *r, int i)
{
    ym_choice *c = &r->choices[i];
    const char *fin = public_finish(c->finish);
    json_t *text;
    if (r->echo) {
        ym_buf all = {0};
        if (ym_buf_put(&all, r->echo_text, r->echo_len) ||
            ym_buf_put(&all, c->text.p ? c->text.p : "", c->text.len)) {
            ym_buf_deinit(&all);
            return NULL;
        }
        text = ym_json_text(all.p, all.len);
        ym_buf_deinit(&all);
    } else {
        text = ym_json_text(c->text.p ? c->text.p : "", c->text.len);
    }
    if (r->chat) {
        json_t *lp = r->logprobs >= 0
                         ? ym__chat_logprobs(r, c->toks, c->tops, c->n_all, c->delta.n_top)
                         : NULL;
        return ym__chat_choice(i, text, lp, fin);
    }
    json_t *lp = r->logprobs >= 0 ? logprobs_json(r, c->toks, c->tops, c->n_all, c->delta.n_top,
                                                  r->echo_len)
                                  : NULL;
    return choice(i, text, lp, fin);
}

static void collect_output(ym_hreq *r, const ym_gen_delta *end)
{
    ym_diag diag = {0};
    for (int i = 0; i < r->n_choices; i++)
        if (r->choices[i].took && collect_choice(r, &r->choices[i]) != 0)
            goto oom;
    if (end == NULL)
        return;
    if (end->finish == YM_FINISH_CANCELLED) {
        ym_diag_set(&diag, YM_ECANCELED,
                    "the request was cancelled (server stopping or client gone)");
        ym_hreq_fail(r, YM_ECANCELED, &diag);
        return;
    }
    if (end->finish == YM_FINISH_ERROR && end->error == YM_EEXIST) {
        ym_diag_param(&diag, YM_EEXIST, "session_append", "%s", SESSION_CHANGED);
        ym_hreq_fail(r, YM_EEXIST, &diag);
        return;
    }
    if (end->finish == YM_FINISH_ERROR) {
        ym_diag_set(&diag, YM_EIO, "the engine failed while generating; see the server log");
        ym_hreq_fail(r, YM_EIO, &diag);
        return;
    }
    json_t *choices = json_array();
    for (int i = 0; i < r->n_choices; i++) {
        json_t *c = answer_choice(r, i);
        if (c == NULL || json_array_append_new(choices, c) != 0) {
            json_decref(choices);
            goto oom;
        }
    }
    json_t *obj = r->chat ? ym__chat_completion(r, choices) : completion_object(r, choices);
    json_object_set_new(obj, "usage", usage_json(r->n_prompt, r->n_gen, r->n_cached));
    ym_hreq_respond_json(r, 200, obj);
    return;
oom:
    ym_gen_cancel(r->gen);
    ym_diag_set(&diag, YM_ENOMEM, "out of memory");
    ym_hreq_fail(r, YM_ENOMEM, &diag);
}

/* The request's end once every choice has finished: the first error, else the first
 * cancellation, else the first choice's (its delta: finish and error). */
static const ym_gen_delta *request_end(ym_hreq *r)
{
    const ym_gen_delta *end = &r->choices[0].delta;
    for (int i = 0; i < r->n_choices; i++) {
        const ym_gen_delta *d = &r->choices[i].delta;
        if (d->finish == YM_FINISH_NONE)
            return NULL;
        if (d->finish == YM_FINISH_ERROR && end->finish != YM_FINISH_ERROR)
            end = d;
        else if (d->finish == YM_FINISH_CANCELLED && end->finish != YM_FINISH_ERROR &&
                 end->finish != YM_FINISH_CANCELLED)
            end = d;
    }
    return end;
}

static void on_output(ym_hreq *r)
{
    if (r->gen == NULL || r->finish != YM_FINISH_NONE || r->choices == NULL)
        return;
    int n_gen = 0;
    for (int i = 0; i < r->n_choices; i++) {
        ym_choice *c = &r->choices[i];
        c->took = c->finish == YM_FINISH_NONE;
        if (c->took) {
            ym_gen_take(ym_gen_choice(r->gen, i), &c->delta);
            c->finish = c->delta.finish;
        }
        n_gen += c->delta.n_gen;
        r->started |= c->delta.started;
    }
    /* Usage: the prompt once (the first choice's), the completion tokens of every choice. */
    r->n_prompt = r->choices[0].delta.n_prompt;
    r->n_cached = r->choices[0].delta.n_cached;
    r->n_gen = n_gen;
    const ym_gen_delta *end = request_end(r);
    if (end != NULL)
        r->finish = end->finish;
    if (ym_hreq_streaming(r))
        stream_output(r, end);
    else
        collect_output(r, end);
    if (r->finish != YM_FINISH_NONE)
        ym_hreq_untrack(r);
}

/* Prompts longer than this are tokenized on the libuv pool so the loop keeps serving. */
#define TOKENIZE_INLINE_BYTES (32 * 1024)

typedef struct ym_tok_job {
    uv_work_t work;
    ym_hreq *r;    /* holds a reference */
    ym_creq q;     /* owned (with root) */
    json_t *root;  /* owned */
    char *text;    /* owned: the prompt bytes when not in root (a rendered chat), or NULL */
    ym_adapter_t *adapter; /* owned reference or NULL */
    ym_ids ids;    /* owned, the result */
    ym_err err;
} ym_tok_job;

/* Second half of a completion: the prompt is ids now. Takes ids->v and adapter over. YM_OK
 * when under way, else the error with diag (the caller answers it). */
ym_err ym__gen_submit(ym_hreq *r, const ym_creq *q, ym_ids *ids, ym_adapter_t *adapter,
                      ym_diag *diag)
{
    ym_server_t *srv = r->srv;
    ym_err err;
    ym_diag sd = {0};
    ym_gen_params p = {.adapter = adapter}; /* the reference goes to the job (or away) */
    const char *what = r->chat ? "messages" : "prompt";
    r->on_output = on_output; /* the transport calls these for the job's output */
    r->on_ping = on_ping;
    if (ids->n == 0) {
        err = ym_diag_param(diag, YM_EINVAL, what, "the prompt has no tokens");
        goto fail;
    }
    if (ids->n > srv->conf.max_prompt_tokens) {
        err = ym_diag_param(diag, YM_EPROMPT, what,
                            "the prompt has %zu tokens; this server allows at most %llu", ids->n,
                            (unsigned long long)srv->conf.max_prompt_tokens);
        goto fail;
    }
    if ((uint64_t)q->n_choices > srv->conf.max_running) {
        err = ym_diag_param(diag, YM_EINVAL, "n",
                            "n is %d; this server runs at most %llu sequences at once (max_running)",
                            q->n_choices, (unsigned long long)srv->conf.max_running);
        goto fail;
    }
    if (q->echo) {
        if (q->prompt != NULL) {
            r->echo_text = malloc(q->prompt_len + 1);
            if (r->echo_text)
                memcpy(r->echo_text, q->prompt, q->prompt_len);
            r->echo_len = q->prompt_len;
        } else {
            ym_tok_decode(srv->tok, ids->v, ids->n, &r->echo_text, &r->echo_len);
        }
        if (r->echo_text == NULL) {
            err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
            goto fail;
        }
    }
    if (r->session_append && (err = ym_sessions_append(r, ids, &p, &sd)) != YM_OK) {
        *diag = sd;
        goto fail;
    }
    if (ym_tenant_acquire(srv, r, r->limits.max_concurrent) != 0) {
        err = ym_diag_set(diag, YM_ELIMIT,
                          "tenant %s already has %llu requests running; retry when one ends",
                          r->limits.name, (unsigned long long)r->limits.max_concurrent);
        goto fail;
    }
    p.prompt = ids->v;
    p.n_prompt = ids->n;
    p.sampling = q->sampling;
    p.max_tokens = q->max_tokens;
    p.stops = q->stops;
    p.n_stops = q->n_stops;
    p.ignore_eos = q->ignore_eos;
    p.t_arrival = r->t_start;
    p.id = r->id;
    p.tenant = r->limits.name;
    p.identity = r->identity;
    p.session_id = r->session_id;
    size_t n_prompt = ids->n;
    ids->v = NULL; /* ym_gen_new takes the array */
    ids->n = ids->cap = 0;
    ym_gen *g = NULL;
    if ((err = ym_gen_new(&p, &g)) != YM_OK)
        return ym_diag_set(diag, err, "out of memory");
    /* Choices 1..n-1: their own jobs under g (forked from its state after the prefill);
     * choice i samples with seed + i when a seed is given. */
    for (int i = 1; i < q->n_choices; i++) {
        ym_gen_params pk = p;
        ym_gen *kid = NULL;
        pk.prompt = malloc(n_prompt * sizeof(int32_t));
        pk.adapter = ym_adapter_ref(p.adapter);
        pk.session_id = NULL;
        pk.append = 0;
        pk.sampling.seed = p.sampling.seed + (uint64_t)i;
        if (pk.prompt != NULL)
            memcpy(pk.prompt, p.prompt, n_prompt * sizeof(int32_t));
        if (pk.prompt == NULL || ym_gen_new(&pk, &kid) != YM_OK) {
            free(pk.prompt);
            ym_adapter_unref(pk.adapter);
            ym_gen_unref(g);
            return ym_diag_set(diag, YM_ENOMEM, "out of memory");
        }
        if (ym_gen_add_choice(g, kid) != 0) {
            ym_gen_unref(kid);
            ym_gen_unref(g);
            return ym_diag_set(diag, YM_ENOMEM, "out of memory");
        }
    }
    if ((r->choices = calloc((size_t)q->n_choices, sizeof(ym_choice))) == NULL) {
        ym_gen_unref(g);
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    }
    r->n_choices = q->n_choices;
    ym_gen_set_owner(g, r);
    if (srv->draining || srv->sched == NULL || (err = ym_sched_submit(srv->sched, g)) != YM_OK) {
        ym_gen_unref(g);
        ym_metrics_add(srv->metrics, YM_M_REJECTED_BUSY, 1);
        if (srv->draining || srv->sched == NULL)
            return ym_diag_set(diag, YM_EDRAINING,
                               "the server is shutting down; retry on another replica");
        return ym_diag_set(diag, YM_EBUSY,
                           "the server is busy (%llu requests waiting); retry shortly",
                           (unsigned long long)srv->conf.max_queue);
    }
    ym_metrics_add(srv->metrics, YM_M_PROMPT_TOKENS, n_prompt);
    r->gen = g;
    r->n_prompt = (int)(n_prompt + (size_t)p.append_base);
    r->include_usage = q->include_usage;
    r->echo = q->echo;
    r->logprobs = q->logprobs;
    r->tokens_as_ids = q->tokens_as_ids;
    ym_hreq_track(r);
    if (q->stream) {
        for (int i = 0; i < r->n_choices; i++) {
            if (r->chat) /* the role comes first, in a chunk of its own (as OpenAI sends it) */
                sse_event(r, ym__chat_chunk(r, i,
                                            json_pack("{s:s,s:s}", "role", "assistant",
                                                      "content", ""),
                                            NULL, NULL));
            if (r->echo) {
                json_t *obj = completion_object(
                    r, json_pack("[o]", choice(i, ym_json_text(r->echo_text, r->echo_len), NULL,
                                               NULL)));
                if (r->include_usage)
                    json_object_set_new(obj, "usage", json_null());
                sse_event(r, obj);
            }
        }
        ym_hreq_start_stream(r);
    } else {
        /* Wait for the job; on_out_ready queues the response and resumes us. */
        ym_hreq_suspend(r);
    }
    return YM_OK;
fail:
    ym_adapter_unref(adapter);
    return err;
}

static void tok_work(uv_work_t *w) /* libuv pool: the tokenizer is read-only, shared safely */
{
    ym_tok_job *job = w->data;
    job->err = ym_tok_encode(job->r->srv->tok, job->q.prompt, job->q.prompt_len, &job->ids);
}

static void tok_after(uv_work_t *w, int status) /* loop thread */
{
    ym_tok_job *job = w->data;
    ym_hreq *r = job->r;
    r->tok_job = NULL;
    if (!ym_hreq_closed(r)) {
        ym_diag diag = {0};
        ym_err err;
        if (r->client_gone) {
            err = ym_diag_set(&diag, YM_ECANCELED, "the client went away");
        } else if (status != 0 || job->err != YM_OK) {
            err = job->err ? job->err : YM_EIO;
            ym_diag_param(&diag, err, r->chat ? "messages" : "prompt",
                          "cannot tokenize the prompt: %s", ym_strerror(err));
        } else {
            err = ym__gen_submit(r, &job->q, &job->ids, job->adapter, &diag);
            job->adapter = NULL; /* ym__gen_submit took it */
        }
        if (err != YM_OK) /* the handler has returned: the transport writes it now */
            ym_hreq_fail(r, err, &diag);
        if (ym_hreq_answered(r))
            ym_hreq_resume(r);
        if (r->gen == NULL)
            ym_hreq_untrack(r);
        ym_httpd_kick(r->srv);
    }
    ym_adapter_unref(job->adapter);
    ym_ids_deinit(&job->ids);
    ym_creq_deinit(&job->q);
    json_decref(job->root);
    free(job->text);
    free(job);
    ym_hreq_unref(r);
}

ym_err ym__gen_tokenize_submit(ym_hreq *r, ym_creq *q, json_t **root, ym_adapter_t *adapter,
                               char *text, ym_diag *diag)
{
    ym_err err = YM_OK;
    ym_ids ids = {0};
    if (q->prompt_len > TOKENIZE_INLINE_BYTES) {
        ym_tok_job *job = calloc(1, sizeof(*job));
        if (job == NULL) {
            err = ym_diag_param(diag, YM_ENOMEM, NULL, "out of memory");
            goto out;
        }
        job->r = r;
        job->adapter = adapter;
        adapter = NULL;
        job->q = *q; /* the strings stay valid: root and text move along */
        job->root = *root;
        job->text = text;
        job->work.data = job;
        memset(q, 0, sizeof(*q));
        *root = NULL;
        text = NULL;
        r->refs++;
        r->tok_job = job;
        ym_hreq_track(r); /* drain waits for it; a stop resumes it */
        ym_hreq_suspend(r);
        uv_queue_work(r->srv->loop, &job->work, tok_work, tok_after);
        goto out;
    }
    if ((err = ym_tok_encode(r->srv->tok, q->prompt, q->prompt_len, &ids)) != YM_OK) {
        ym_diag_param(diag, err, r->chat ? "messages" : "prompt", "cannot tokenize the prompt: %s",
                      ym_strerror(err));
        goto out;
    }
    err = ym__gen_submit(r, q, &ids, adapter, diag);
    adapter = NULL;
out:
    ym_adapter_unref(adapter);
    ym_ids_deinit(&ids);
    free(text);
    return err;
}

ym_err ym__gen_check_vocab(ym_hreq *r, const ym_creq *q, ym_diag *diag)
{
    /* The vocabulary is the tokenizer's: the embedding may have padding rows beyond it
     * (ids no tokenizer makes, nor /v1/detokenize takes). */
    ym_server_t *srv = r->srv;
    int n_vocab = ym_tok_n_vocab(srv->tok) < srv->model->cfg.n_vocab ? ym_tok_n_vocab(srv->tok)
                                                                       : srv->model->cfg.n_vocab;
    for (size_t i = 0; i < q->n_prompt_ids; i++)
        if (q->prompt_ids[i] >= n_vocab)
            return ym_diag_param(diag, YM_EINVAL, "prompt",
                                 "prompt[%zu] = %d is not a token id (vocabulary size %d)", i,
                                 q->prompt_ids[i], n_vocab);
    for (int i = 0; i < q->sampling.n_logit_bias; i++)
        if (q->sampling.logit_bias[i].id >= n_vocab)
            return ym_diag_param(diag, YM_EINVAL, "logit_bias",
                                 "logit_bias: %d is not a token id (vocabulary size %d)",
                                 (int)q->sampling.logit_bias[i].id, n_vocab);
    return YM_OK;
}

/* The session: the body's session_id or the X-Session-Id header (which a load balancer can
 * hash on to pin a conversation to a replica); both present must agree. YM_OK, or the error
 * with diag (the caller answers it). */
ym_err ym__gen_take_session(ym_hreq *r, const ym_creq *q, ym_diag *diag)
{
    const char *h = ym_hreq_header(r, "X-Session-Id");
    if (h != NULL) {
        ym_diag d = {0};
        if (ym_session_id_check(h, strlen(h), (size_t)r->srv->conf.max_session_id_bytes, &d) !=
            YM_OK)
            return ym_diag_param(diag, YM_EINVAL, "X-Session-Id", "X-Session-Id: %s", d.msg);
        if (q->session_id != NULL && strcmp(q->session_id, h) != 0)
            return ym_diag_param(diag, YM_EINVAL, "session_id",
                                 "session_id and the X-Session-Id header differ");
    }
    const char *id = q->session_id ? q->session_id : h;
    if (id != NULL && (r->session_id = strdup(id)) == NULL)
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    if (q->session_append && id == NULL)
        return ym_diag_param(diag, YM_EINVAL, "session_append",
                             "session_append needs a session_id (or an X-Session-Id header)");
    if (q->session_append && q->sampling.repetition_penalty != 1.0f) {
        /* The penalty covers the prompt's tokens, which an appended turn does not carry. */
        return ym_diag_param(diag, YM_EINVAL, "repetition_penalty",
                             "repetition_penalty is not available with session_append (it "
                             "needs the whole history): send the whole prompt instead");
    }
    r->session_append = q->session_append;
    return YM_OK;
}

/* POST /v1/completions. Refusals found here, or by the helpers it calls, are returned; those
 * of a tokenization or a generation that ends after it returned go to ym_hreq_fail. */
ym_err ym_completions_create(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    r->on_output = on_output; /* the transport calls these for the job's output */
    r->on_ping = on_ping;
    ym_server_t *srv = r->srv;
    ym_err err;
    if ((err = ym_server_ready(srv, diag)) != YM_OK)
        return err;
    ym_req_limits lim = {
        .max_tokens_cap = (int64_t)srv->conf.max_tokens_cap,
        .default_max_tokens = (int64_t)srv->conf.default_max_tokens,
        .max_prompt_tokens = (int64_t)srv->conf.max_prompt_tokens,
        .max_session_id_bytes = (int64_t)srv->conf.max_session_id_bytes,
    };
    ym_creq q;
    json_t *root = NULL;
    ym_ids ids = {0};
    ym_adapter_t *adapter = NULL; /* a reference while this function holds it */
    if ((err = ym_creq_parse(r->body.p, r->body.len, &lim, &q, &root, diag)) != YM_OK)
        return err;
    if ((err = ym__gen_take_session(r, &q, diag)) != YM_OK)
        goto out;
    if ((err = ym_adapters_resolve(r, q.model, q.adapters, &adapter, diag)) != YM_OK)
        goto out;
    if (q.model != NULL)
        snprintf(r->model, sizeof(r->model), "%s", q.model);
    if (q.echo && q.logprobs >= 0) {
        err = ym_diag_param(diag, YM_EINVAL, "echo",
                            "echo together with logprobs is not supported");
        goto out;
    }
    if ((err = ym__gen_check_vocab(r, &q, diag)) != YM_OK)
        goto out;
    if (q.prompt_ids != NULL) {
        ids.v = q.prompt_ids;
        ids.n = ids.cap = q.n_prompt_ids;
        q.prompt_ids = NULL; /* moved */
        err = ym__gen_submit(r, &q, &ids, adapter, diag);
        adapter = NULL;
        goto out;
    }
    err = ym__gen_tokenize_submit(r, &q, &root, adapter, NULL, diag);
    adapter = NULL;
out:
    ym_adapter_unref(adapter);
    ym_ids_deinit(&ids);
    ym_creq_deinit(&q);
    json_decref(root);
    return err;
}

