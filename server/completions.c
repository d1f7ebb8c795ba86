/* server/completions.c - POST /v1/completions and OpenAI's text_completion shapes, and the
 * generation path /v1/chat/completions shares (chat.c renders the prompt and gives the chat
 * forms of the output).
 *
 * Owns: a completion's life on the loop thread: validate (request.c), resolve adapters and
 * session, tokenize (long prompts on the libuv pool; there too a session_append's read of
 * its session when RAM lacks it and disk or the store may hold it: that read blocks), submit
 * the generation jobs to the scheduler (one per prompt of the request, with its n choices
 * under it), then turn the jobs' new output into SSE events (streaming) or one JSON body, the
 * echoed prompts and their scores (echo with logprobs) first.
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
#include "engine/textout.h"
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

/* Append n tokens to OpenAI's legacy logprobs object lp; text_offset is offset_base plus each
 * token's text_start, or offsets[i] when offsets is given (a prompt's tokens). A token whose
 * logprob is NaN (a prompt's first: nothing precedes it) has null for its logprob and its
 * alternatives, as OpenAI's echo gives it. */
static void logprobs_add(ym_hreq *r, json_t *lp, const ym_gen_tok *toks, const ym_logprob *tops,
                         int n, int n_top, size_t offset_base, const size_t *offsets)
{
    const ym_tok_t *tok = r->srv->tok;
    json_t *tokens = json_object_get(lp, "tokens"), *lps = json_object_get(lp, "token_logprobs");
    json_t *top = json_object_get(lp, "top_logprobs"), *off = json_object_get(lp, "text_offset");
    for (int i = 0; i < n; i++) {
        json_array_append_new(tokens, token_string(tok, toks[i].id, r->tokens_as_ids));
        json_array_append_new(off, json_integer((json_int_t)(
                                       offsets ? offsets[i] : offset_base + toks[i].text_start)));
        if (isnan(toks[i].logprob)) {
            json_array_append_new(lps, json_null());
            json_array_append_new(top, json_null());
            continue;
        }
        json_array_append_new(lps, logprob_value(toks[i].logprob));
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
}

/* OpenAI's legacy logprobs object of n generated tokens. With echo (po: the choice's prompt)
 * their offsets follow the prompt's text, and with_prompt puts the prompt's scored tokens
 * first (when it has them). */
static json_t *logprobs_json(ym_hreq *r, const ym_prompt_out *po, int with_prompt,
                             const ym_gen_tok *toks, const ym_logprob *tops, int n, int n_top)
{
    json_t *lp = json_pack("{s:[],s:[],s:[],s:[]}", "tokens", "token_logprobs", "top_logprobs",
                           "text_offset");
    if (lp == NULL)
        return NULL;
    if (with_prompt && po != NULL && po->toks != NULL)
        logprobs_add(r, lp, po->toks, po->tops, po->n_toks, po->n_top, 0, po->offsets);
    logprobs_add(r, lp, toks, tops, n, n_top, po != NULL ? po->echo_len : 0, NULL);
    return lp;
}

/* Choices per prompt (n). */
static int per_prompt(const ym_hreq *r)
{
    return r->n_choices / (r->n_prompts > 0 ? r->n_prompts : 1);
}

/* Prompt p's scores, once its job has them: fill po (toks, tops, and the text offsets of its
 * tokens in the echoed text). 1 when po has them, 0 not yet (or out of memory: none shown). */
static int prompt_scores(ym_hreq *r, int p)
{
    ym_prompt_out *po = &r->prompts[p];
    if (po->toks != NULL)
        return 1;
    const ym_gen_tok *toks;
    const ym_logprob *tops;
    int n_top, n = ym_gen_prompt_scores(ym_gen_prompt(r->gen, p), &toks, &tops, &n_top);
    if (n == 0 || (po->offsets = malloc((size_t)n * sizeof(size_t))) == NULL)
        return 0;
    /* Each token's text starts where the text the detokenizer released before it ends (the
     * same rule as generated tokens' offsets). */
    ym_textout_t *to = NULL;
    size_t at = 0;
    if (ym_textout_new(r->srv->tok, NULL, 0, &to) != YM_OK) {
        free(po->offsets);
        po->offsets = NULL;
        return 0;
    }
    for (int i = 0; i < n; i++) {
        const char *piece;
        size_t len;
        po->offsets[i] = at;
        ym_textout_push(to, toks[i].id, &piece, &len);
        at += len;
    }
    ym_textout_free(to);
    po->toks = toks;
    po->tops = tops;
    po->n_toks = n;
    po->n_top = n_top;
    return 1;
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
    for (int p = 0; p < r->n_prompts; p++) {
        free(r->prompts[p].echo);
        free(r->prompts[p].offsets);
    }
    free(r->prompts);
    r->prompts = NULL;
    r->n_prompts = 0;
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
        ym_prompt_out *po = r->echo ? &r->prompts[i / per_prompt(r)] : NULL;
        if (r->logprobs >= 0 && d->n_toks > 0) /* the prompt's went with its echo chunk */
            lp = logprobs_json(r, po, 0, d->toks, d->tops, d->n_toks, d->n_top);
        json_t *obj = completion_object(
            r, json_pack("[o]", choice(i, ym_json_text(d->text, d->text_len), lp, fin)));
        if (r->include_usage)
            json_object_set_new(obj, "usage", json_null());
        sse_event(r, obj);
    }
}

/* Prompt p's echo: one chunk per choice of it with the prompt's text (and, when echo scores
 * the prompt, its logprobs: then only once they exist, before the choice's first text). */
static void stream_echo(ym_hreq *r, int p)
{
    ym_prompt_out *po = &r->prompts[p];
    int score = r->logprobs >= 0;
    if (po->sent || (score && !prompt_scores(r, p)))
        return;
    po->sent = 1;
    for (int j = 0; j < per_prompt(r); j++) {
        int i = p * per_prompt(r) + j;
        json_t *lp = score ? logprobs_json(r, po, 1, NULL, NULL, 0, 0) : NULL;
        json_t *obj = completion_object(
            r, json_pack("[o]", choice(i, ym_json_text(po->echo, po->echo_len), lp, NULL)));
        if (r->include_usage)
            json_object_set_new(obj, "usage", json_null());
        sse_event(r, obj);
    }
}

static void stream_output(ym_hreq *r, const ym_gen_delta *end)
{
    for (int p = 0; r->echo && p < r->n_prompts; p++)
        stream_echo(r, p);
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
    ym_prompt_out *po = r->echo ? &r->prompts[i / per_prompt(r)] : NULL;
    if (po != NULL) {
        ym_buf all = {0};
        if (r->logprobs >= 0)
            prompt_scores(r, i / per_prompt(r));
        if (ym_buf_put(&all, po->echo, po->echo_len) ||
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
    json_t *lp = r->logprobs >= 0
                     ? logprobs_json(r, po, 1, c->toks, c->tops, c->n_all, c->delta.n_top)
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
    int n_gen = 0, n_prompt = 0, n_cached = 0, per = per_prompt(r);
    for (int i = 0; i < r->n_choices; i++) {
        ym_choice *c = &r->choices[i];
        c->took = c->finish == YM_FINISH_NONE;
        if (c->took) {
            ym_gen_take(ym_gen_choice(ym_gen_prompt(r->gen, i / per), i % per), &c->delta);
            c->finish = c->delta.finish;
        }
        n_gen += c->delta.n_gen;
        r->started |= c->delta.started;
        if (i % per == 0) {
            n_prompt += c->delta.n_prompt;
            n_cached += c->delta.n_cached;
        }
    }
    /* Usage: each prompt once (its first choice's), the completion tokens of every choice. */
    r->n_prompt = n_prompt;
    r->n_cached = n_cached;
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

/* Work before submission that must not run on the loop: tokenizing a long prompt, and
 * session_append's look for its session when RAM lacks it (the disk and the store block,
 * up to session_store_timeout_ms). */
typedef struct ym_tok_job {
    uv_work_t work;
    ym_hreq *r;    /* holds a reference */
    ym_creq q;     /* owned (with root) */
    json_t *root;  /* owned */
    char *text;    /* owned: the prompt bytes when not in root (a rendered chat), or NULL */
    ym_adapter_t *adapter; /* owned reference or NULL */
    int tokenize;  /* ids are the result; else they came with the request */
    ym_ids ids[YM_MAX_CHOICES]; /* owned: one per prompt */
    int lookup;    /* read session from the tiers (ym_scache_pin) */
    ym_skey key;   /* the session's key, when lookup */
    ym_sc_entry *session; /* pinned or NULL: session_append's entry */
    ym_err err;
} ym_tok_job;

/* Prompt p's text as echo shows it: the request's text, or the ids decoded. 0, or -1 out of
 * memory. */
static int echo_text(ym_hreq *r, const ym_creq *q, int p, const ym_ids *ids)
{
    ym_prompt_out *po = &r->prompts[p];
    const char *text = p == 0 ? q->prompt : q->more[p - 1].text;
    size_t len = p == 0 ? q->prompt_len : q->more[p - 1].len;
    if (text != NULL) {
        if ((po->echo = malloc(len + 1)) == NULL)
            return -1;
        memcpy(po->echo, text, len);
        po->echo_len = len;
        return 0;
    }
    ym_tok_decode(r->srv->tok, ids->v, ids->n, &po->echo, &po->echo_len);
    return po->echo != NULL ? 0 : -1;
}

/* Prompt p's jobs: its first choice's, with the further choices under it (forked from its
 * state after the prefill; choice j samples with seed + j when a seed is given). Takes
 * base->prompt (the ids) and base->adapter (one reference) over, also on failure. */
static ym_err prompt_job(const ym_gen_params *base, int n_choices, ym_gen **out)
{
    ym_gen *g = NULL;
    ym_gen_params p = *base;
    *out = NULL;
    if (ym_gen_new(&p, &g) != YM_OK)
        return YM_ENOMEM;
    for (int i = 1; i < n_choices; i++) {
        ym_gen_params pk = p;
        ym_gen *kid = NULL;
        pk.prompt = malloc(p.n_prompt * sizeof(int32_t));
        pk.adapter = ym_adapter_ref(p.adapter);
        pk.session_id = NULL;
        pk.append = 0;
        pk.score_prompt = 0; /* the first choice scores the prompt they share */
        pk.sampling.seed = p.sampling.seed + (uint64_t)i;
        if (pk.prompt != NULL)
            memcpy(pk.prompt, p.prompt, p.n_prompt * sizeof(int32_t));
        if (pk.prompt == NULL || ym_gen_new(&pk, &kid) != YM_OK) {
            free(pk.prompt);
            ym_adapter_unref(pk.adapter);
            ym_gen_unref(g);
            return YM_ENOMEM;
        }
        if (ym_gen_add_choice(g, kid) != 0) {
            ym_gen_unref(kid);
            ym_gen_unref(g);
            return YM_ENOMEM;
        }
    }
    *out = g;
    return YM_OK;
}

/* Second half of a completion: the prompts are ids now (ids[q->n_prompts]). Takes each
 * ids[p].v and adapter over. YM_OK when under way, else the error with diag (the caller
 * answers it). */
ym_err ym__gen_submit(ym_hreq *r, const ym_creq *q, ym_ids *ids, ym_adapter_t *adapter,
                      ym_sc_entry *session, ym_diag *diag)
{
    ym_server_t *srv = r->srv;
    ym_err err;
    ym_diag sd = {0};
    ym_gen_params p = {.adapter = adapter}; /* the reference goes to the jobs (or away) */
    const char *what = r->chat ? "messages" : "prompt";
    int n_prompts = q->n_prompts > 0 ? q->n_prompts : 1;
    r->on_output = on_output; /* the transport calls these for the job's output */
    r->on_ping = on_ping;
    for (int k = 0; k < n_prompts; k++) {
        char name[32] = "the prompt";
        if (n_prompts > 1)
            snprintf(name, sizeof(name), "prompt[%d]", k);
        if (ids[k].n == 0) {
            err = ym_diag_param(diag, YM_EINVAL, what, "%s has no tokens", name);
            goto fail;
        }
        if (ids[k].n > srv->conf.max_prompt_tokens) {
            err = ym_diag_param(diag, YM_EPROMPT, what,
                                "%s has %zu tokens; this server allows at most %llu", name,
                                ids[k].n, (unsigned long long)srv->conf.max_prompt_tokens);
            goto fail;
        }
    }
    if ((uint64_t)q->n_choices > srv->conf.max_running) {
        err = ym_diag_param(diag, YM_EINVAL, "n",
                            "n is %d; this server runs at most %llu sequences at once (max_running)",
                            q->n_choices, (unsigned long long)srv->conf.max_running);
        goto fail;
    }
    if ((r->prompts = calloc((size_t)n_prompts, sizeof(ym_prompt_out))) == NULL) {
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
        goto fail;
    }
    r->n_prompts = n_prompts;
    for (int k = 0; q->echo && k < n_prompts; k++) {
        if (echo_text(r, q, k, &ids[k]) != 0) {
            err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
            goto fail;
        }
    }
    if (r->session_append) {
        err = ym_sessions_append(r, session, &ids[0], &p, &sd);
        session = NULL; /* unpinned */
        if (err != YM_OK) {
            *diag = sd;
            goto fail;
        }
    }
    if (ym_tenant_acquire(srv, r, r->limits.max_concurrent) != 0) {
        err = ym_diag_set(diag, YM_ELIMIT,
                          "tenant %s already has %llu requests running; retry when one ends",
                          r->limits.name, (unsigned long long)r->limits.max_concurrent);
        goto fail;
    }
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
    /* echo with logprobs scores each prompt's tokens (a prompt's first token has none). */
    p.score_prompt = q->echo && q->logprobs >= 0;
    size_t n_prompt = 0;
    ym_gen *g = NULL; /* prompt 0's job; it holds the other prompts' */
    for (int k = 0; k < n_prompts; k++) {
        ym_gen_params pp = p;
        ym_gen *gk = NULL;
        pp.prompt = ids[k].v; /* taken over by prompt_job */
        pp.n_prompt = ids[k].n;
        n_prompt += ids[k].n;
        if (k > 0) {
            pp.adapter = ym_adapter_ref(p.adapter);
            pp.session_id = NULL;
        }
        ids[k].v = NULL;
        ids[k].n = ids[k].cap = 0;
        if (prompt_job(&pp, q->n_choices, &gk) != YM_OK ||
            (k > 0 && ym_gen_add_prompt(g, gk) != 0)) {
            ym_gen_unref(gk);
            ym_gen_unref(g);
            for (int j = k + 1; j < n_prompts; j++) /* (the jobs took the adapter) */
                ym_ids_deinit(&ids[j]);
            return ym_diag_set(diag, YM_ENOMEM, "out of memory");
        }
        if (k == 0)
            g = gk;
    }
    p.adapter = NULL; /* the jobs hold it */
    if ((r->choices = calloc((size_t)(n_prompts * q->n_choices), sizeof(ym_choice))) == NULL) {
        ym_gen_unref(g);
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    }
    r->n_choices = n_prompts * q->n_choices;
    ym_gen_set_owner(g, r);
    /* Each prompt is its own job; they go into the queue at once (all or none), so they are
     * admitted together when the running slots allow, and their prefills and decodes share
     * the batch's steps. */
    ym_gen *gs[YM_MAX_CHOICES];
    for (int k = 0; k < n_prompts; k++)
        gs[k] = ym_gen_prompt(g, k);
    err = srv->draining || srv->sched == NULL ? YM_EDRAINING
                                              : ym_sched_submit_n(srv->sched, gs, n_prompts);
    if (err != YM_OK) {
        ym_gen_set_owner(g, NULL);
        ym_gen_unref(g);
        ym_metrics_add(srv->metrics, YM_M_REJECTED_BUSY, 1);
        if (err == YM_EDRAINING)
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
        for (int i = 0; r->chat && i < r->n_choices; i++) {
            /* The role comes first, in a chunk of its own (as OpenAI sends it). */
            sse_event(r, ym__chat_chunk(r, i,
                                        json_pack("{s:s,s:s}", "role", "assistant", "content", ""),
                                        NULL, NULL));
        }
        /* The prompts' echo at once, unless it waits for the prompts' scores. */
        for (int k = 0; r->echo && r->logprobs < 0 && k < n_prompts; k++)
            stream_echo(r, k);
        ym_hreq_start_stream(r);
    } else {
        /* Wait for the job; on_out_ready queues the response and resumes us. */
        ym_hreq_suspend(r);
    }
    return YM_OK;
fail:
    if (session != NULL)
        ym_scache_unpin(srv->cache, session);
    ym_adapter_unref(adapter);
    return err;
}

/* Each text prompt of q into ids[] (one per prompt). */
static ym_err tokenize_all(const ym_tok_t *tok, const ym_creq *q, ym_ids *ids)
{
    ym_err err = ym_tok_encode(tok, q->prompt, q->prompt_len, &ids[0]);
    for (int k = 1; err == YM_OK && k < q->n_prompts; k++)
        err = ym_tok_encode(tok, q->more[k - 1].text, q->more[k - 1].len, &ids[k]);
    return err;
}

static void tok_work(uv_work_t *w) /* libuv pool: the tokenizer is read-only, shared safely */
{
    ym_tok_job *job = w->data;
    if (job->lookup) /* may block on the disk or the store; the cache has its own lock */
        job->session = ym_scache_pin(job->r->srv->cache, &job->key);
    if (job->tokenize)
        job->err = tokenize_all(job->r->srv->tok, &job->q, job->ids);
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
            err = ym__gen_submit(r, &job->q, job->ids, job->adapter, job->session, &diag);
            job->adapter = NULL; /* ym__gen_submit took them */
            job->session = NULL;
        }
        if (err != YM_OK) /* the handler has returned: the transport writes it now */
            ym_hreq_fail(r, err, &diag);
        if (ym_hreq_answered(r))
            ym_hreq_resume(r);
        if (r->gen == NULL)
            ym_hreq_untrack(r);
        ym_httpd_kick(r->srv);
    }
    if (job->session != NULL)
        ym_scache_unpin(r->srv->cache, job->session);
    ym_adapter_unref(job->adapter);
    for (int k = 0; k < YM_MAX_CHOICES; k++)
        ym_ids_deinit(&job->ids[k]);
    ym_creq_deinit(&job->q);
    json_decref(job->root);
    free(job->text);
    free(job);
    ym_hreq_unref(r);
}

/* session_append's entry: pinned from RAM (*e), or NULL with *key filled and 1 returned when
 * it may be on disk or in the store (a read that blocks: the pool's). Loop thread. */
static int session_entry(ym_hreq *r, ym_skey *key, ym_sc_entry **e)
{
    ym_scache_t *cache = r->srv->cache;
    *e = NULL;
    if (!r->session_append || cache == NULL)
        return 0;
    ym_skey_session(key, r->limits.name, r->session_id);
    *e = ym_scache_pin_ram(cache, key);
    return *e == NULL && ym_scache_has_tiers(cache);
}

/* Move the request's parts into a pool job (tokenize it when ids is NULL, look its session up
 * when lookup), suspend the request and queue the job; tok_after submits it. Takes q's
 * contents, *root, adapter, text, ids' arrays and session over. YM_OK, or YM_ENOMEM. */
static ym_err offload(ym_hreq *r, ym_creq *q, json_t **root, ym_adapter_t *adapter, char *text,
                      ym_ids *ids, int lookup, const ym_skey *key, ym_sc_entry *session,
                      ym_diag *diag)
{
    ym_tok_job *job = calloc(1, sizeof(*job));
    if (job == NULL) {
        if (session != NULL)
            ym_scache_unpin(r->srv->cache, session);
        ym_adapter_unref(adapter);
        free(text);
        return ym_diag_param(diag, YM_ENOMEM, NULL, "out of memory");
    }
    job->r = r;
    job->adapter = adapter;
    job->q = *q; /* the strings stay valid: root and text move along */
    job->root = *root;
    job->text = text;
    job->tokenize = ids == NULL;
    for (int k = 0; ids != NULL && k < YM_MAX_CHOICES; k++) {
        job->ids[k] = ids[k];
        memset(&ids[k], 0, sizeof(ids[k]));
    }
    job->lookup = lookup;
    if (lookup)
        job->key = *key;
    job->session = session;
    job->work.data = job;
    memset(q, 0, sizeof(*q));
    *root = NULL;
    r->refs++;
    r->tok_job = job;
    ym_hreq_track(r); /* drain waits for it; a stop resumes it */
    ym_hreq_suspend(r);
    uv_queue_work(r->srv->loop, &job->work, tok_work, tok_after);
    return YM_OK;
}

ym_err ym__gen_tokenize_submit(ym_hreq *r, ym_creq *q, json_t **root, ym_adapter_t *adapter,
                               char *text, ym_diag *diag)
{
    ym_err err = YM_OK;
    ym_ids ids[YM_MAX_CHOICES] = {{0}};
    ym_skey key;
    ym_sc_entry *session = NULL;
    int lookup = session_entry(r, &key, &session);
    size_t bytes = q->prompt_len;
    for (int k = 1; k < q->n_prompts; k++)
        bytes += q->more[k - 1].len;
    if (bytes > TOKENIZE_INLINE_BYTES || lookup)
        return offload(r, q, root, adapter, text, NULL, lookup, &key, session, diag);
    if ((err = tokenize_all(r->srv->tok, q, ids)) != YM_OK) {
        ym_diag_param(diag, err, r->chat ? "messages" : "prompt", "cannot tokenize the prompt: %s",
                      ym_strerror(err));
        goto out;
    }
    err = ym__gen_submit(r, q, ids, adapter, session, diag);
    adapter = NULL;
    session = NULL;
out:
    if (session != NULL)
        ym_scache_unpin(r->srv->cache, session);
    ym_adapter_unref(adapter);
    for (int k = 0; k < YM_MAX_CHOICES; k++)
        ym_ids_deinit(&ids[k]);
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
    for (int k = 0; k < q->n_prompts; k++) {
        const int32_t *v = k == 0 ? q->prompt_ids : q->more[k - 1].ids;
        size_t n = k == 0 ? q->n_prompt_ids : q->more[k - 1].n_ids;
        char at[24] = "";
        if (q->n_prompts > 1)
            snprintf(at, sizeof(at), "[%d]", k);
        for (size_t i = 0; i < n; i++)
            if (v[i] >= n_vocab)
                return ym_diag_param(diag, YM_EINVAL, "prompt",
                                     "prompt%s[%zu] = %d is not a token id (vocabulary size %d)",
                                     at, i, v[i], n_vocab);
    }
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
    ym_ids ids[YM_MAX_CHOICES] = {{0}};
    ym_adapter_t *adapter = NULL; /* a reference while this function holds it */
    if ((err = ym_creq_parse(r->body.p, r->body.len, &lim, &q, &root, diag)) != YM_OK)
        return err;
    if ((err = ym__gen_take_session(r, &q, diag)) != YM_OK)
        goto out;
    if ((err = ym_adapters_resolve(r, q.model, q.adapters, &adapter, diag)) != YM_OK)
        goto out;
    if (q.model != NULL)
        snprintf(r->model, sizeof(r->model), "%s", q.model);
    if (r->session_id != NULL && q.n_prompts > 1) {
        err = ym_diag_param(diag, YM_EINVAL, "session_id",
                            "a session continues one conversation: send one prompt with "
                            "session_id (this request has %d)", q.n_prompts);
        goto out;
    }
    if (r->session_id != NULL && q.echo && q.logprobs >= 0) {
        /* A resumed state has no logits for the tokens it holds, and the score of every
         * prompt token is what echo with logprobs asks for. */
        err = ym_diag_param(diag, YM_EINVAL, "session_id",
                            "echo with logprobs scores the whole prompt and cannot resume a "
                            "session: leave out session_id (and X-Session-Id)");
        goto out;
    }
    if ((err = ym__gen_check_vocab(r, &q, diag)) != YM_OK)
        goto out;
    if (q.prompt_ids != NULL) {
        ids[0].v = q.prompt_ids;
        ids[0].n = ids[0].cap = q.n_prompt_ids;
        q.prompt_ids = NULL; /* moved */
        for (int k = 1; k < q.n_prompts; k++) {
            ids[k].v = q.more[k - 1].ids;
            ids[k].n = ids[k].cap = q.more[k - 1].n_ids;
            q.more[k - 1].ids = NULL;
        }
        ym_skey key;
        ym_sc_entry *session = NULL;
        if (session_entry(r, &key, &session))
            err = offload(r, &q, &root, adapter, NULL, ids, 1, &key, NULL, diag);
        else
            err = ym__gen_submit(r, &q, ids, adapter, session, diag);
        adapter = NULL;
        goto out;
    }
    err = ym__gen_tokenize_submit(r, &q, &root, adapter, NULL, diag);
    adapter = NULL;
out:
    ym_adapter_unref(adapter);
    for (int k = 0; k < YM_MAX_CHOICES; k++)
        ym_ids_deinit(&ids[k]);
    ym_creq_deinit(&q);
    json_decref(root);
    return err;
}

