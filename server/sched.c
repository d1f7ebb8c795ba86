/* server/sched.c - the engine thread and its continuous-batching scheduler.
 *
 * Owns: the submit queue (mutex + condvar), the running set, one ym_ctx (model scratch and the
 * engine's worker pool), the logits buffer, and each running job's state, sampler and
 * detokenizer. Runs: admit -> build a ragged batch -> ym_forward -> sample -> publish, one step
 * after another while anything is queued or running; sleeps on the condvar otherwise.
 * Must not: touch libuv or libmicrohttpd (only the wake callback, which is uv_async_send), or
 * allocate per token (per-job objects are made once at admission; output buffers grow
 * geometrically).
 *
 * Step policy (vLLM's chunked prefill, simplified): every decoding sequence gets its one row
 * first, so streams keep their pace; then prefilling sequences in arrival order share at most
 * prefill_chunk prompt rows per step (and the rows left under max_batch_tokens). A long prompt thus
 * takes several steps, interleaved with everyone else's decoding. Logits are computed for every
 * sequence of the step (YM_LOGITS_LAST) and used only by those that sample.
 *
 * State cache (server/statecache.h): at admission a job looks for the longest cached state
 * its prompt extends (its session's, if the history hash matches; else the longest prefix
 * checkpoint) and copies it, so only the rest of the prompt runs; at least one prompt token is
 * always run, for the logits of the first sample. Prefill chunks end at checkpoint boundaries
 * and the state there is stored, so a checkpoint is the very state a cold run passes through;
 * boundaries reached while generating are stored too (the chain runs over every token fed).
 * When a job with a session ends (stop, length or cancel; not on an engine error), its state
 * and the hash of the tokens it consumed (prompt and fed generated tokens: the last sampled
 * token is never fed, it is kept as the session's pending token) become the session.
 * An append job (session_append) carries only the tokens after its session's history: it
 * starts from the session's state and running history hash, and makes no checkpoints (it
 * does not have the tokens their keys are made of). */
#include "server/sched.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/forward.h"
#include "engine/log.h"
#include "engine/state.h"
#include "engine/textout.h"

double ym_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const char *ym_finish_name(ym_finish f)
{
    switch (f) {
    case YM_FINISH_STOP:
        return "stop";
    case YM_FINISH_LENGTH:
        return "length";
    case YM_FINISH_CANCELLED:
        return "cancelled";
    case YM_FINISH_ERROR:
        return "error";
    default:
        return "none";
    }
}

struct ym_gen {
    atomic_int refs;
    atomic_int cancelled;
    char id[64];
    /* Inputs: written before submit, read-only afterwards. */
    int32_t *prompt; /* owned */
    int n_prompt;
    ym_sampling sampling;
    int64_t max_tokens;
    char **stops; /* owned */
    int n_stops;
    int ignore_eos;
    double t_arrival;
    ym_adapter_t *adapter; /* owned reference, or NULL: the version this job started with */
    char *tenant, *identity, *session; /* owned; session NULL when none */
    void *owner; /* loop thread only */

    /* Output: engine appends, loop takes; guarded by lock. */
    pthread_mutex_t lock;
    char *text;
    size_t text_len, text_cap, text_total;
    ym_gen_tok *toks;
    ym_logprob *tops;
    int n_toks, toks_cap;
    int n_gen;
    int n_cached;
    int started;
    ym_finish finish;
    ym_err error;

    /* Ready list: guarded by the scheduler's ready lock. */
    ym_gen *ready_next;
    int on_ready;

    /* Engine thread only, while running. */
    ym_state_t *state;
    ym_sampler_t *sampler;
    ym_textout_t *tout;
    int n_prefilled;
    ym_skey root;        /* the token chain's root (tenant, adapter identity) */
    ym_skey *chain;      /* owned [n_chain]: key of the state after (k+1) checkpoint blocks */
    int n_chain, n_chain_prompt, chain_cap; /* n_chain_prompt: the prompt's own boundaries */
    int32_t *fed;        /* owned: generated tokens run through the model (with a cache) */
    int n_fed, fed_cap;
    int no_record;       /* recording fed tokens failed: store nothing */
    int append;          /* prompt follows the session's history (append mode) */
    uint64_t append_serial;
    int64_t base;        /* context tokens before prompt[0]: the history in append mode, or 0 */
    ym_shist run0;       /* the history hash's running state before prompt[0] */
    int32_t pending;     /* the last sampled token (not fed yet), or -1 */
    int32_t next_token;
    double t_last;
    ym_gen *queue_next;
};

static void gen_destroy(ym_gen *g)
{
    free(g->prompt);
    for (int i = 0; i < g->n_stops; i++)
        free(g->stops[i]);
    free(g->stops);
    free(g->text);
    free(g->toks);
    free(g->tops);
    ym_state_free(g->state);
    ym_sampler_free(g->sampler);
    ym_textout_free(g->tout);
    ym_adapter_unref(g->adapter);
    free(g->tenant);
    free(g->identity);
    free(g->session);
    free(g->chain);
    free(g->fed);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

ym_err ym_gen_new(const ym_gen_params *p, ym_gen **out)
{
    ym_gen *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        free(p->prompt);
        ym_adapter_unref(p->adapter);
        return YM_ENOMEM;
    }
    g->adapter = p->adapter;
    atomic_init(&g->refs, 1);
    atomic_init(&g->cancelled, 0);
    pthread_mutex_init(&g->lock, NULL);
    g->prompt = p->prompt;
    g->n_prompt = (int)p->n_prompt;
    g->sampling = p->sampling;
    g->max_tokens = p->max_tokens;
    g->ignore_eos = p->ignore_eos;
    g->t_arrival = p->t_arrival;
    g->append = p->append;
    g->append_serial = p->append_serial;
    g->base = p->append ? p->append_base : 0;
    g->pending = -1;
    snprintf(g->id, sizeof(g->id), "%s", p->id ? p->id : "");
    if ((g->tenant = strdup(p->tenant ? p->tenant : "")) == NULL ||
        (g->identity = strdup(p->identity ? p->identity : "")) == NULL ||
        (p->session_id != NULL && (g->session = strdup(p->session_id)) == NULL))
        goto oom;
    if (p->n_stops > 0) {
        if ((g->stops = calloc((size_t)p->n_stops, sizeof(char *))) == NULL)
            goto oom;
        for (int i = 0; i < p->n_stops; i++) {
            if ((g->stops[i] = strdup(p->stops[i])) == NULL)
                goto oom;
            g->n_stops = i + 1;
        }
    }
    *out = g;
    return YM_OK;
oom:
    gen_destroy(g);
    return YM_ENOMEM;
}

ym_gen *ym_gen_ref(ym_gen *g)
{
    atomic_fetch_add(&g->refs, 1);
    return g;
}

void ym_gen_unref(ym_gen *g)
{
    if (g != NULL && atomic_fetch_sub(&g->refs, 1) == 1)
        gen_destroy(g);
}

void ym_gen_cancel(ym_gen *g)
{
    atomic_store(&g->cancelled, 1);
}

void ym_gen_set_owner(ym_gen *g, void *owner)
{
    g->owner = owner;
}

void *ym_gen_owner(const ym_gen *g)
{
    return g->owner;
}

const char *ym_gen_id(const ym_gen *g)
{
    return g->id;
}

void ym_gen_delta_deinit(ym_gen_delta *d)
{
    if (d == NULL)
        return;
    free(d->text);
    free(d->toks);
    free(d->tops);
    memset(d, 0, sizeof(*d));
}

static int grow(void **p, size_t elem, size_t need, size_t *cap)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (q == NULL)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

void ym_gen_take(ym_gen *g, ym_gen_delta *d)
{
    pthread_mutex_lock(&g->lock);
    int n_top = g->sampling.n_logprobs;
    size_t tcap = (size_t)d->toks_cap, tcap2 = (size_t)d->toks_cap;
    int ok = grow((void **)&d->text, 1, g->text_len, &d->text_cap) == 0 &&
             grow((void **)&d->toks, sizeof(ym_gen_tok), (size_t)g->n_toks, &tcap) == 0 &&
             (n_top == 0 || grow((void **)&d->tops, sizeof(ym_logprob) * (size_t)n_top,
                                 (size_t)g->n_toks, &tcap2) == 0);
    if (ok) {
        d->toks_cap = (int)tcap;
        if (g->text_len > 0)
            memcpy(d->text, g->text, g->text_len);
        d->text_len = g->text_len;
        if (g->n_toks > 0)
            memcpy(d->toks, g->toks, (size_t)g->n_toks * sizeof(ym_gen_tok));
        if (n_top > 0 && g->n_toks > 0)
            memcpy(d->tops, g->tops, (size_t)g->n_toks * (size_t)n_top * sizeof(ym_logprob));
        d->n_toks = g->n_toks;
        d->n_top = n_top;
        g->text_len = 0;
        g->n_toks = 0;
    } else {
        /* Out of memory: leave the output where it is for the next take. */
        d->text_len = 0;
        d->n_toks = 0;
    }
    d->text_total = g->text_total - g->text_len;
    d->n_prompt = (int)g->base + g->n_prompt;
    d->n_gen = g->n_gen;
    d->n_cached = g->n_cached;
    d->error = g->error;
    d->started = g->started;
    d->finish = g->text_len == 0 && g->n_toks == 0 ? g->finish : YM_FINISH_NONE;
    pthread_mutex_unlock(&g->lock);
}

/* --- the scheduler --- */

struct ym_sched {
    ym_model_t *model; /* ref */
    const ym_tok_t *tok;
    ym_metrics_t *metrics;
    ym_scache_t *cache; /* borrowed, or NULL */
    void (*wake)(void *);
    void *wake_arg;
    ym_sched_opts o;
    int n_vocab, n_real, eos;

    pthread_t thread;
    pthread_mutex_t lock; /* queue, counts, stop, limits */
    pthread_cond_t cond;
    ym_gen *q_head, *q_tail;
    int n_queued;
    int n_running_pub; /* n_running as seen by other threads */
    int stop;

    pthread_mutex_t ready_lock;
    ym_gen *ready_head, *ready_tail;

    /* Engine thread only. */
    ym_ctx_t *ctx;
    ym_gen **running; /* [cap_running] */
    int n_running;
    int cap_running;  /* the per-running arrays' size: max_running may grow on a reload */
    float *logits;    /* [max_running, n_vocab] */
    int32_t *tokens;  /* [max_batch_tokens] */
    int *seq_start;   /* [max_running + 1] */
    ym_state_t **states;
    const ym_adapt **adapts; /* [max_running] */
    ym_gen **in_batch;
    int *samples;     /* per batch sequence: 1 if it samples after this step */
};

static void publish(ym_sched_t *s, ym_gen *g)
{
    pthread_mutex_lock(&s->ready_lock);
    if (!g->on_ready) {
        g->on_ready = 1;
        g->ready_next = NULL;
        ym_gen_ref(g);
        if (s->ready_tail)
            s->ready_tail->ready_next = g;
        else
            s->ready_head = g;
        s->ready_tail = g;
    }
    pthread_mutex_unlock(&s->ready_lock);
}

/* The detached list keeps on_ready set: publish() leaves a job alone (its ready_next too)
 * until ym_sched_ready_next() has read its link, so a job published again while the loop walks
 * the old list cannot splice the lists together. */
ym_gen *ym_sched_take_ready(ym_sched_t *s)
{
    pthread_mutex_lock(&s->ready_lock);
    ym_gen *head = s->ready_head;
    s->ready_head = s->ready_tail = NULL;
    pthread_mutex_unlock(&s->ready_lock);
    return head;
}

ym_gen *ym_sched_ready_next(ym_sched_t *s, ym_gen *g)
{
    pthread_mutex_lock(&s->ready_lock);
    ym_gen *next = g->ready_next;
    g->ready_next = NULL;
    g->on_ready = 0;
    pthread_mutex_unlock(&s->ready_lock);
    return next;
}

/* --- the state cache (engine thread) --- */

/* Keep g's state as its session's: the state moves into the cache. */
static void store_session(ym_sched_t *s, ym_gen *g)
{
    if (s->cache == NULL || g->session == NULL || g->state == NULL || g->state->n_tokens <= 0)
        return;
    if (g->state->n_tokens != g->base + g->n_prefilled + g->n_fed) {
        /* A token the job did not record reached the state: never store a history that
         * does not describe it. */
        ym_log(YM_LOG_ERROR, g->id, "session %s not stored: state history mismatch", g->session);
        return;
    }
    ym_skey key;
    ym_sc_meta meta = {.root = g->root, .run = g->run0, .appendable = 1, .pending = g->pending};
    ym_skey_session(&key, g->tenant, g->session);
    ym_shist_update(&meta.run, g->prompt, (size_t)g->n_prefilled);
    ym_shist_update(&meta.run, g->fed, (size_t)g->n_fed);
    ym_shist_final(&meta.run, &meta.hist);
    int rc = ym_scache_put(s->cache, &key, YM_SC_SESSION, &meta, g->state);
    g->state = NULL; /* the cache took it (or freed it) */
    if (rc == 1)
        ym_metrics_add(s->metrics, YM_M_CACHE_STORES, 1);
}

/* Store the state after checkpoint block k (1-based) of g's prompt, unless cached already. */
static void store_checkpoint(ym_sched_t *s, ym_gen *g, int k)
{
    if (ym_scache_touch(s->cache, &g->chain[k - 1]))
        return;
    ym_state_t *st = NULL;
    if (ym_state_new_like(g->state, &st) != YM_OK)
        return;
    ym_state_copy(st, g->state);
    if (ym_scache_put(s->cache, &g->chain[k - 1], YM_SC_PREFIX, NULL, st) == 1)
        ym_metrics_add(s->metrics, YM_M_CACHE_STORES, 1);
}

/* Record the token a decode row fed; at a checkpoint boundary, chain and store. 0, or -1 when
 * out of memory (then the job stops recording: no session or checkpoint from it). */
static int record_fed(ym_sched_t *s, ym_gen *g, int32_t id)
{
    if (g->n_fed == g->fed_cap) {
        int cap = g->fed_cap ? 2 * g->fed_cap : 64;
        int32_t *f = realloc(g->fed, (size_t)cap * sizeof(int32_t));
        if (f == NULL)
            return -1;
        g->fed = f;
        g->fed_cap = cap;
    }
    g->fed[g->n_fed++] = id;
    int B = s->o.checkpoint_interval;
    if (g->append)
        return 0; /* no chain: the history's tokens are not here */
    int consumed = g->n_prompt + g->n_fed;
    if (B == 0 || consumed % B != 0)
        return 0;
    int k = consumed / B;
    if (k != g->n_chain + 1)
        return 0; /* an earlier block is missing (out of memory before) */
    if (g->n_chain == g->chain_cap) {
        int cap = g->chain_cap ? 2 * g->chain_cap : 8;
        ym_skey *c = realloc(g->chain, (size_t)cap * sizeof(ym_skey));
        if (c == NULL)
            return 0;
        g->chain = c;
        g->chain_cap = cap;
    }
    /* The block is [consumed - B, consumed): prompt tail, then fed tokens. */
    int start = consumed - B;
    int from_prompt = start < g->n_prompt ? g->n_prompt - start : 0;
    int fed_start = start < g->n_prompt ? 0 : start - g->n_prompt;
    ym_skey_chain(&g->chain[k - 1], k == 1 ? &g->root : &g->chain[k - 2],
                  g->prompt + start, (size_t)from_prompt, g->fed + fed_start,
                  (size_t)(B - from_prompt));
    g->n_chain = k;
    store_checkpoint(s, g, k);
    return 0;
}

/* Append mode: start from the session the loop checked, if it is still that one. */
static ym_err resume_append(ym_sched_t *s, ym_gen *g)
{
    ym_skey key;
    ym_skey_session(&key, g->tenant, g->session);
    ym_sc_entry *e = ym_scache_pin(s->cache, &key);
    ym_err err = YM_EEXIST;
    if (e != NULL && ym_sc_entry_serial(e) == g->append_serial &&
        ym_sc_entry_meta(e)->appendable && ym_skey_equal(&ym_sc_entry_meta(e)->root, &g->root) &&
        ym_sc_entry_state(e)->n_tokens == g->base &&
        ym_state_copy(g->state, ym_sc_entry_state(e)) == YM_OK) {
        g->run0 = ym_sc_entry_meta(e)->run;
        pthread_mutex_lock(&g->lock);
        g->n_cached = (int)g->base;
        pthread_mutex_unlock(&g->lock);
        ym_metrics_add(s->metrics, YM_M_CACHE_SESSION_HITS, 1);
        ym_metrics_add(s->metrics, YM_M_CACHE_SAVED_TOKENS, (uint64_t)g->base);
        err = YM_OK;
    } else {
        ym_log(YM_LOG_WARN, g->id,
               "session %s changed or was evicted before the appended turn started", g->session);
        free(g->session); /* do not overwrite the session that replaced it */
        g->session = NULL;
    }
    ym_scache_unpin(s->cache, e);
    return err;
}

/* Find the longest cached state g's prompt extends and start from it. */
static ym_err resume(ym_sched_t *s, ym_gen *g)
{
    int B = s->o.checkpoint_interval;
    ym_skey_root(&g->root, g->tenant, g->identity);
    ym_shist_init(&g->run0, &g->root);
    if (g->append)
        return resume_append(s, g);
    ym_sc_entry *src = NULL;
    int best = 0, from_session = 0;
    if (g->session != NULL) {
        ym_skey key;
        ym_skey_session(&key, g->tenant, g->session);
        ym_sc_entry *e = ym_scache_pin(s->cache, &key);
        int64_t m = e ? ym_sc_entry_state(e)->n_tokens : 0;
        if (m > 0 && m < g->n_prompt) {
            ym_skey h;
            ym_skey_history(&h, &g->root, g->prompt, (size_t)m, NULL, 0);
            if (ym_skey_equal(&h, &ym_sc_entry_meta(e)->hist)) {
                src = e;
                best = (int)m;
                from_session = 1;
            }
        }
        if (src == NULL)
            ym_scache_unpin(s->cache, e);
    }
    if (B > 0 && g->n_prompt / B > 0 &&
        (g->chain = malloc((size_t)(g->n_prompt / B) * sizeof(ym_skey))) != NULL) {
        g->n_chain = g->n_chain_prompt = g->chain_cap = g->n_prompt / B;
        for (int k = 1; k <= g->n_chain; k++)
            ym_skey_chain(&g->chain[k - 1], k == 1 ? &g->root : &g->chain[k - 2],
                          g->prompt + (size_t)(k - 1) * (size_t)B, (size_t)B, NULL, 0);
        /* Resuming must leave a prompt token to run: k * B < n_prompt. */
        for (int k = (g->n_prompt - 1) / B; k >= 1 && k * B > best; k--) {
            ym_sc_entry *e = ym_scache_pin(s->cache, &g->chain[k - 1]);
            if (e != NULL) {
                ym_scache_unpin(s->cache, src);
                src = e;
                best = k * B;
                from_session = 0;
                break;
            }
        }
    }
    if (src != NULL && ym_state_copy(g->state, ym_sc_entry_state(src)) == YM_OK &&
        g->state->n_tokens == best) {
        g->n_prefilled = best;
        pthread_mutex_lock(&g->lock);
        g->n_cached = best;
        pthread_mutex_unlock(&g->lock);
        ym_metrics_add(s->metrics,
                       from_session ? YM_M_CACHE_SESSION_HITS : YM_M_CACHE_PREFIX_HITS, 1);
        ym_metrics_add(s->metrics, YM_M_CACHE_SAVED_TOKENS, (uint64_t)best);
    } else {
        ym_state_reset(g->state);
        ym_metrics_add(s->metrics, YM_M_CACHE_MISSES, 1);
    }
    ym_scache_unpin(s->cache, src);
    return YM_OK;
}

/* Mark a job finished; its output and usage are final. Engine thread. */
static void finish(ym_sched_t *s, ym_gen *g, ym_finish why)
{
    /* The session first: once the loop can see the job finished, a client's next turn (or
     * GET /v1/sessions) must find the new state. */
    if (why != YM_FINISH_ERROR)
        store_session(s, g);
    pthread_mutex_lock(&g->lock);
    g->finish = why;
    pthread_mutex_unlock(&g->lock);
    if (why == YM_FINISH_CANCELLED)
        ym_metrics_add(s->metrics, YM_M_CANCELLED, 1);
    if (g->started)
        ym_metrics_observe(s->metrics, YM_H_E2E, ym_now() - g->t_arrival);
    ym_state_free(g->state);
    g->state = NULL;
    ym_sampler_free(g->sampler);
    g->sampler = NULL;
    ym_textout_free(g->tout);
    g->tout = NULL;
    publish(s, g);
}

/* Count one generated token and append it (smp NULL: the end-of-text token, which is counted
 * but adds no output) with its released text. Engine thread. 0 or -1 on no memory. */
static int append(ym_gen *g, const ym_sample *smp, const char *text, size_t len)
{
    int rc = 0;
    pthread_mutex_lock(&g->lock);
    g->n_gen++;
    g->started = 1;
    if (smp == NULL)
        goto out;
    size_t cap = (size_t)g->toks_cap, cap2 = (size_t)g->toks_cap;
    int n_top = g->sampling.n_logprobs;
    if (grow((void **)&g->text, 1, g->text_len + len, &g->text_cap) != 0 ||
        grow((void **)&g->toks, sizeof(ym_gen_tok), (size_t)g->n_toks + 1, &cap) != 0 ||
        (n_top > 0 && grow((void **)&g->tops, sizeof(ym_logprob) * (size_t)n_top,
                           (size_t)g->n_toks + 1, &cap2) != 0)) {
        rc = -1;
        goto out;
    }
    g->toks_cap = (int)cap;
    g->toks[g->n_toks] = (ym_gen_tok){smp->id, smp->logprob, g->text_total};
    if (n_top > 0)
        memcpy(g->tops + (size_t)g->n_toks * (size_t)n_top, smp->top,
               (size_t)n_top * sizeof(ym_logprob));
    g->n_toks++;
    if (len > 0)
        memcpy(g->text + g->text_len, text, len);
    g->text_len += len;
    g->text_total += len;
out:
    pthread_mutex_unlock(&g->lock);
    return rc;
}

/* Text released without a token (the held-back tail at the end). */
static void append_text(ym_gen *g, const char *text, size_t len)
{
    if (len == 0)
        return;
    pthread_mutex_lock(&g->lock);
    if (grow((void **)&g->text, 1, g->text_len + len, &g->text_cap) == 0) {
        memcpy(g->text + g->text_len, text, len);
        g->text_len += len;
        g->text_total += len;
    }
    pthread_mutex_unlock(&g->lock);
}

static ym_err admit(ym_sched_t *s, ym_gen *g)
{
    ym_err err;
    if ((err = ym_state_new_for_model(s->model, &g->state)) != YM_OK ||
        (err = ym_sampler_new(&g->sampling, s->n_vocab, &g->sampler)) != YM_OK ||
        (err = ym_textout_new(s->tok, (const char *const *)g->stops, g->n_stops, &g->tout)))
        return err;
    ym_sampler_add_prompt(g->sampler, g->prompt, (size_t)g->n_prompt);
    g->n_prefilled = 0;
    if (s->cache != NULL)
        return resume(s, g);
    return g->append ? YM_EEXIST : YM_OK;
}

/* Sample the next token of g from its logits row and decide whether it goes on. */
static void sample(ym_sched_t *s, ym_gen *g, float *row, double now)
{
    for (int i = s->n_real; i < s->n_vocab; i++)
        row[i] = -INFINITY;
    ym_sample smp;
    int32_t id = ym_sampler_sample(g->sampler, row, &smp);
    if (!g->started)
        ym_metrics_observe(s->metrics, YM_H_TTFT, now - g->t_arrival);
    else
        ym_metrics_observe(s->metrics, YM_H_ITL, now - g->t_last);
    g->t_last = now;
    ym_metrics_add(s->metrics, YM_M_GEN_TOKENS, 1);
    const char *piece = "";
    size_t len = 0;
    int eos = id == s->eos && !g->ignore_eos;
    g->pending = eos ? -1 : id; /* an end-of-text token ends the history, it is not part of it */
    int stop = eos ? 1 : ym_textout_push(g->tout, id, &piece, &len);
    if (append(g, eos ? NULL : &smp, piece, len) != 0) {
        ym_log(YM_LOG_ERROR, g->id, "out of memory for the output");
        finish(s, g, YM_FINISH_ERROR);
        return;
    }
    if (stop || g->n_gen >= g->max_tokens) {
        if (!stop || ym_textout_stop(g->tout) == NULL) {
            /* Not a stop string: release what the detokenizer held back. */
            ym_textout_finish(g->tout, &piece, &len);
            append_text(g, piece, len);
        }
        finish(s, g, stop ? YM_FINISH_STOP : YM_FINISH_LENGTH);
        return;
    }
    g->next_token = id;
    publish(s, g);
}

/* Remove running[i] (order kept: prefill fairness is by arrival). */
static void drop_running(ym_sched_t *s, int i)
{
    ym_gen *g = s->running[i];
    memmove(s->running + i, s->running + i + 1, (size_t)(s->n_running - i - 1) * sizeof(ym_gen *));
    s->n_running--;
    ym_gen_unref(g);
}

static void step(ym_sched_t *s, int prefill_chunk)
{
    /* Cancelled and finished jobs leave first. */
    for (int i = 0; i < s->n_running;) {
        ym_gen *g = s->running[i];
        if (atomic_load(&g->cancelled) && g->finish == YM_FINISH_NONE)
            finish(s, g, YM_FINISH_CANCELLED);
        if (g->finish != YM_FINISH_NONE)
            drop_running(s, i);
        else
            i++;
    }
    if (s->n_running == 0)
        return;

    /* Decode rows first, then prefill chunks in arrival order. */
    int n_seq = 0, rows = 0, budget = s->o.max_batch_tokens, any_adapter = 0, prefill_rows = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < s->n_running; i++) {
            ym_gen *g = s->running[i];
            int prefilling = g->n_prefilled < g->n_prompt;
            if (pass == 0 && !prefilling) {
                s->tokens[rows] = g->next_token;
                s->seq_start[n_seq] = rows;
                rows += 1;
                s->samples[n_seq] = 1;
            } else if (pass == 1 && prefilling && rows < budget && prefill_rows < prefill_chunk) {
                /* prefill_chunk bounds the prompt rows of the whole step, so a burst of new
                 * requests cannot stretch the running streams' step (their inter-token time). */
                int n = g->n_prompt - g->n_prefilled;
                if (n > prefill_chunk - prefill_rows)
                    n = prefill_chunk - prefill_rows;
                if (n > budget - rows)
                    n = budget - rows;
                if (g->n_chain_prompt > 0) {
                    /* End the chunk at the next checkpoint boundary still to be stored. */
                    int B = s->o.checkpoint_interval, next = (g->n_prefilled / B + 1) * B;
                    if (next <= g->n_chain_prompt * B && n > next - g->n_prefilled)
                        n = next - g->n_prefilled;
                }
                prefill_rows += n;
                memcpy(s->tokens + rows, g->prompt + g->n_prefilled, (size_t)n * sizeof(int32_t));
                s->seq_start[n_seq] = rows;
                rows += n;
                s->samples[n_seq] = g->n_prefilled + n == g->n_prompt;
            } else {
                continue;
            }
            s->states[n_seq] = g->state;
            s->adapts[n_seq] = g->adapter ? ym_adapter_applied(g->adapter) : NULL;
            any_adapter |= g->adapter != NULL;
            s->in_batch[n_seq] = g;
            n_seq++;
        }
    }
    s->seq_start[n_seq] = rows;
    ym_batch batch = {
        .n_seq = n_seq,
        .tokens = s->tokens,
        .seq_start = s->seq_start,
        .states = s->states,
        .logits = YM_LOGITS_LAST,
        .adapters = any_adapter ? s->adapts : NULL,
    };
    double t0 = ym_now();
    ym_diag diag = {0};
    ym_err err = ym_forward(s->ctx, &batch, s->logits, &diag);
    double now = ym_now();
    ym_metrics_add(s->metrics, YM_M_STEPS, 1);
    ym_metrics_observe(s->metrics, YM_H_STEP, now - t0);
    ym_metrics_observe(s->metrics, YM_H_BATCH_ROWS, rows);
    ym_metrics_observe(s->metrics, YM_H_BATCH_SEQS, n_seq);
    if (err != YM_OK) {
        ym_log(YM_LOG_ERROR, NULL, "engine step failed: %s",
               diag.msg[0] ? diag.msg : ym_strerror(err));
        for (int k = 0; k < n_seq; k++)
            finish(s, s->in_batch[k], YM_FINISH_ERROR);
        return;
    }
    int prefilled = 0;
    for (int k = 0; k < n_seq; k++) {
        ym_gen *g = s->in_batch[k];
        int n = s->seq_start[k + 1] - s->seq_start[k];
        if (g->n_prefilled < g->n_prompt) {
            g->n_prefilled += n;
            prefilled += n;
            int B = s->o.checkpoint_interval;
            if (g->n_chain_prompt > 0 && g->n_prefilled % B == 0 &&
                g->n_prefilled / B <= g->n_chain_prompt && g->n_prefilled > g->n_cached)
                store_checkpoint(s, g, g->n_prefilled / B);
        } else if (s->cache != NULL && !g->no_record) {
            /* The decode row fed next_token: it is part of the history now. Without the
             * record the state cannot be described, so the job stores nothing more. */
            if (record_fed(s, g, g->next_token) != 0) {
                g->no_record = 1;
                free(g->session);
                g->session = NULL;
            }
        }
        if (s->samples[k])
            sample(s, g, s->logits + (size_t)k * (size_t)s->n_vocab, now);
    }
    if (prefilled > 0)
        ym_metrics_add(s->metrics, YM_M_PREFILL_TOKENS, (uint64_t)prefilled);
}

static int grow_running(ym_sched_t *s, int n);

static void *engine_main(void *arg)
{
    ym_sched_t *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        while (!s->stop && s->q_head == NULL && s->n_running == 0)
            pthread_cond_wait(&s->cond, &s->lock);
        int stopping = s->stop;
        int prefill_chunk = s->o.prefill_chunk;
        /* Admission: queued jobs take free running slots, oldest first. */
        ym_gen *admitted = NULL, **tail = &admitted;
        /* A reload may have raised max_running: grow the arrays first (they are the engine
         * thread's; a failure keeps the old size). */
        if (s->o.max_running > s->cap_running && grow_running(s, s->o.max_running) != 0)
            ym_log(YM_LOG_WARN, NULL, "max_running %d: out of memory, running at most %d",
                   s->o.max_running, s->cap_running);
        int max_running = s->o.max_running < s->cap_running ? s->o.max_running : s->cap_running;
        while (!stopping && s->q_head != NULL && s->n_running < max_running) {
            ym_gen *g = s->q_head;
            s->q_head = g->queue_next;
            if (s->q_head == NULL)
                s->q_tail = NULL;
            s->n_queued--;
            g->queue_next = NULL;
            s->running[s->n_running++] = g;
            *tail = g;
            tail = &g->queue_next;
        }
        ym_gen *cancel_q = NULL;
        if (stopping) {
            cancel_q = s->q_head; /* everything still queued is cancelled below */
            s->q_head = s->q_tail = NULL;
            s->n_queued = 0;
        }
        s->n_running_pub = s->n_running;
        ym_metrics_set(s->metrics, YM_G_QUEUE, s->n_queued);
        ym_metrics_set(s->metrics, YM_G_RUNNING, s->n_running);
        pthread_mutex_unlock(&s->lock);

        for (ym_gen *g = admitted; g != NULL; g = g->queue_next) {
            ym_err err = admit(s, g);
            if (g->max_tokens == 0 && err == YM_OK) {
                finish(s, g, YM_FINISH_LENGTH);
            } else if (err != YM_OK) {
                if (err != YM_EEXIST)
                    ym_log(YM_LOG_ERROR, g->id, "cannot start the sequence: %s",
                           ym_strerror(err));
                pthread_mutex_lock(&g->lock);
                g->error = err;
                pthread_mutex_unlock(&g->lock);
                finish(s, g, YM_FINISH_ERROR);
            }
        }
        if (stopping) {
            while (cancel_q != NULL) {
                ym_gen *g = cancel_q;
                cancel_q = g->queue_next;
                finish(s, g, YM_FINISH_CANCELLED);
                ym_gen_unref(g);
            }
            for (int i = 0; i < s->n_running; i++)
                if (s->running[i]->finish == YM_FINISH_NONE)
                    finish(s, s->running[i], YM_FINISH_CANCELLED);
            while (s->n_running > 0)
                drop_running(s, s->n_running - 1);
            s->wake(s->wake_arg);
            break;
        }
        step(s, prefill_chunk);
        pthread_mutex_lock(&s->lock);
        s->n_running_pub = s->n_running;
        ym_metrics_set(s->metrics, YM_G_RUNNING, s->n_running);
        pthread_mutex_unlock(&s->lock);
        s->wake(s->wake_arg);
    }
    return NULL;
}

/* Free what ym_sched_new made (any part of it); the engine thread is not running. */
/* Size the per-running arrays for n sequences (engine thread, or before it starts). 0, or -1
 * with the arrays as they were. */
static int grow_running(ym_sched_t *s, int n)
{
    size_t mr = (size_t)n;
#define GROW(field, count)                                                                         \
    do {                                                                                           \
        void *p_ = realloc(s->field, (count) * sizeof(*s->field));                                 \
        if (p_ == NULL)                                                                            \
            return -1;                                                                             \
        s->field = p_;                                                                             \
    } while (0)
    GROW(running, mr);
    GROW(logits, mr * (size_t)s->n_vocab);
    GROW(seq_start, mr + 1);
    GROW(states, mr);
    GROW(adapts, mr);
    GROW(in_batch, mr);
    GROW(samples, mr);
#undef GROW
    s->cap_running = n;
    return 0;
}

static void sched_destroy(ym_sched_t *s)
{
    ym_ctx_free(s->ctx);
    free(s->running);
    free(s->logits);
    free(s->tokens);
    free(s->seq_start);
    free(s->states);
    free(s->adapts);
    free(s->in_batch);
    free(s->samples);
    ym_model_unref(s->model);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->ready_lock);
    free(s);
}

ym_err ym_sched_new(ym_model_t *model, const ym_tok_t *tok, const ym_sched_opts *o,
                    ym_metrics_t *metrics, ym_scache_t *cache, void (*wake)(void *),
                    void *wake_arg, ym_sched_t **out, ym_diag *diag)
{
    if (o->max_running < 1 || o->max_batch_tokens < o->max_running || o->prefill_chunk < 1)
        return ym_diag_set(diag, YM_EINVAL, "scheduler limits out of range");
    ym_sched_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return YM_ENOMEM;
    s->model = ym_model_ref(model);
    s->tok = tok;
    s->metrics = metrics;
    s->cache = cache;
    if (s->o.checkpoint_interval < 0)
        s->o.checkpoint_interval = 0;
    s->wake = wake;
    s->wake_arg = wake_arg;
    s->o = *o;
    s->n_vocab = model->cfg.n_vocab;
    s->n_real = ym_tok_n_vocab(tok) < s->n_vocab ? ym_tok_n_vocab(tok) : s->n_vocab;
    s->eos = ym_tok_eos_id(tok);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    pthread_mutex_init(&s->ready_lock, NULL);
    ym_err err;
    if ((err = ym_ctx_new(model, o->max_batch_tokens, o->n_threads, &s->ctx)) != YM_OK) {
        ym_diag_set(diag, err, "cannot set up the engine: %s", ym_strerror(err));
        goto fail;
    }
    s->tokens = malloc((size_t)o->max_batch_tokens * sizeof(int32_t));
    if (s->tokens == NULL || grow_running(s, o->max_running) != 0) {
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory for the scheduler");
        goto fail;
    }
    if (pthread_create(&s->thread, NULL, engine_main, s) != 0) {
        err = ym_diag_set(diag, YM_ENOMEM, "cannot start the engine thread");
        goto fail;
    }
    *out = s;
    return YM_OK;
fail:
    sched_destroy(s);
    return err;
}

void ym_sched_free(ym_sched_t *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop = 1;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    ym_gen *g = ym_sched_take_ready(s);
    while (g != NULL) {
        ym_gen *next = ym_sched_ready_next(s, g);
        ym_gen_unref(g);
        g = next;
    }
    sched_destroy(s);
}

ym_err ym_sched_submit(ym_sched_t *s, ym_gen *g)
{
    pthread_mutex_lock(&s->lock);
    /* A job waits in the queue only when every running slot is taken. */
    int waiting = s->n_queued + s->n_running_pub - s->o.max_running;
    if (s->stop || (waiting >= 0 && s->n_queued >= s->o.max_queue)) {
        pthread_mutex_unlock(&s->lock);
        return YM_EBUSY;
    }
    ym_gen_ref(g);
    g->queue_next = NULL;
    if (s->q_tail)
        s->q_tail->queue_next = g;
    else
        s->q_head = g;
    s->q_tail = g;
    s->n_queued++;
    ym_metrics_set(s->metrics, YM_G_QUEUE, s->n_queued);
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return YM_OK;
}

void ym_sched_set_limits(ym_sched_t *s, int max_running, int prefill_chunk, int max_queue)
{
    pthread_mutex_lock(&s->lock);
    /* Sequences running beyond a lowered limit finish; new ones wait for a slot. */
    if (max_running >= 1 && max_running <= s->o.max_batch_tokens)
        s->o.max_running = max_running;
    pthread_cond_signal(&s->cond);
    if (prefill_chunk >= 1)
        s->o.prefill_chunk = prefill_chunk;
    if (max_queue >= 0)
        s->o.max_queue = max_queue;
    pthread_mutex_unlock(&s->lock);
}

int ym_sched_n_active(ym_sched_t *s)
{
    pthread_mutex_lock(&s->lock);
    int n = s->n_queued + s->n_running_pub;
    pthread_mutex_unlock(&s->lock);
    return n;
}
