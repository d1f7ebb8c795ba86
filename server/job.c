/* server/job.c - a generation job (ym_gen): its life and its output.
 *
 * Owns: the job object (refcounted: the HTTP request, the engine and the ready list each hold a
 * reference while they use it), its inputs (copied at creation, read-only afterwards) and its
 * output buffers. Runs: created and read on the loop thread, appended to by the engine thread;
 * the output is guarded by the job's lock. Must not: run the model or touch the scheduler. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/job_int.h"

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

static void gen_destroy(ym_gen *g)
{
    for (int i = 0; i < g->n_kids; i++)
        ym_gen_unref(g->kids[i]);
    free(g->kids);
    for (int i = 0; i < g->n_groups; i++)
        ym_gen_unref(g->groups[i]);
    free(g->groups);
    free(g->ptoks);
    free(g->ptops);
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
    g->score_prompt = p->score_prompt;
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
    for (int i = 0; i < g->n_groups; i++)
        atomic_store(&g->groups[i]->cancelled, 1);
}

void ym_gen_set_owner(ym_gen *g, void *owner)
{
    g->owner = owner;
    for (int i = 0; i < g->n_groups; i++)
        g->groups[i]->owner = owner;
}

void *ym_gen_owner(const ym_gen *g)
{
    return g->owner;
}

const char *ym_gen_id(const ym_gen *g)
{
    return g->id;
}

int ym_gen_add_choice(ym_gen *g, ym_gen *kid)
{
    ym_gen **k = realloc(g->kids, (size_t)(g->n_kids + 1) * sizeof(*k));
    if (k == NULL)
        return -1;
    g->kids = k;
    g->kids[g->n_kids++] = kid;
    kid->parent = g;
    return 0;
}

int ym_gen_add_prompt(ym_gen *g, ym_gen *other)
{
    ym_gen **k = realloc(g->groups, (size_t)(g->n_groups + 1) * sizeof(*k));
    if (k == NULL)
        return -1;
    g->groups = k;
    g->groups[g->n_groups++] = other;
    return 0;
}

int ym_gen_n_prompts(const ym_gen *g)
{
    return 1 + g->n_groups;
}

ym_gen *ym_gen_prompt(ym_gen *g, int p)
{
    return p == 0 ? g : g->groups[p - 1];
}

int ym_gen_prompt_scores(ym_gen *g, const ym_gen_tok **toks, const ym_logprob **tops,
                         int *n_top)
{
    pthread_mutex_lock(&g->lock);
    int scored = g->scored;
    pthread_mutex_unlock(&g->lock);
    if (!scored)
        return 0;
    *toks = g->ptoks;
    *tops = g->ptops;
    *n_top = g->sampling.n_logprobs;
    return g->n_prompt;
}

ym_err ym__job_score_init(ym_gen *g)
{
    size_t n = (size_t)g->n_prompt, k = (size_t)g->sampling.n_logprobs;
    if ((g->ptoks = calloc(n, sizeof(*g->ptoks))) == NULL ||
        (k > 0 && (g->ptops = calloc(n * k, sizeof(*g->ptops))) == NULL))
        return YM_ENOMEM;
    for (size_t i = 0; i < n; i++)
        g->ptoks[i] = (ym_gen_tok){g->prompt[i], NAN, 0};
    return YM_OK;
}

void ym__job_score(ym_gen *g, int pos, const ym_sample *smp)
{
    size_t k = (size_t)g->sampling.n_logprobs;
    g->ptoks[pos].logprob = smp->logprob;
    if (k > 0)
        memcpy(g->ptops + (size_t)pos * k, smp->top, k * sizeof(ym_logprob));
}

void ym__job_scored(ym_gen *g)
{
    pthread_mutex_lock(&g->lock); /* publishes ptoks and ptops to the loop thread */
    g->scored = 1;
    pthread_mutex_unlock(&g->lock);
}

int ym_gen_n_choices(const ym_gen *g)
{
    return 1 + g->n_kids;
}

ym_gen *ym_gen_choice(ym_gen *g, int i)
{
    return i == 0 ? g : g->kids[i - 1];
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
    d->finish = g->text_len == 0 && g->n_toks == 0 && !atomic_load(&g->persisting)
                    ? g->finish
                    : YM_FINISH_NONE;
    pthread_mutex_unlock(&g->lock);
}

int ym__job_append(ym_gen *g, const ym_sample *smp, const char *text, size_t len)
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
void ym__job_append_text(ym_gen *g, const char *text, size_t len)
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

