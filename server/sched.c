/* server/sched.c - the engine thread and its continuous-batching scheduler.
 *
 * Owns: the submit queue (mutex + condvar), the lookup threads and their queue, the running
 * set, one ym_ctx (model scratch and the engine's worker pool), the logits buffer, and each
 * running job's state, sampler and detokenizer. Runs: admit -> build a ragged batch ->
 * ym_forward -> sample -> publish, one step after another while anything is queued or running;
 * sleeps on the condvar otherwise. Must not: touch libuv or libmicrohttpd (only the wake
 * callback, which is uv_async_send), allocate per token (per-job objects are made once at
 * admission; output buffers grow geometrically), or read the disk or the store on the engine
 * thread (the lookup threads do, below).
 *
 * Step policy (vLLM's chunked prefill, simplified): every decoding sequence gets its one row
 * first, so streams keep their pace; then prefilling sequences in arrival order share at most
 * prefill_chunk prompt rows per step (and the rows left under max_batch_tokens). A long prompt thus
 * takes several steps, interleaved with everyone else's decoding. Logits are computed for every
 * sequence of the step (YM_LOGITS_LAST) and used only by those that sample; a prompt being
 * scored (echo with logprobs) gets them for every row of its chunk (at most SCORE_ROWS more
 * per step), each giving the next prompt token's score.
 *
 * The job object and its output are job.c's; what a job takes from and gives to the state
 * cache (resume at admission, prefix checkpoints, its session at the end) is jobcache.c's. The
 * scheduler calls them at admission, at checkpoint boundaries of prefill chunks, for each fed
 * token and when a job ends. A job's end rules (end-of-text, stop strings, max_tokens) and text
 * are the sequence unit's (engine/textout.h), shared with `yunmin generate`.
 *
 * Lookups before admission: with a disk tier or a shared store below the state cache, a RAM
 * miss is answered by file or network I/O, which must never stall the running sequences. A
 * job that may resume (it has a session, or a prompt long enough for a prefix checkpoint)
 * therefore goes from ym_sched_submit to the lookup threads (LOOKUP_THREADS, owned here; the
 * scheduler may not use libuv's pool), which look in every tier and pin what they find in the
 * job (jobcache.c), and joins the submit queue only then: hit, miss, refused entry or store
 * timeout alike. Admission then copies a state from memory. Meanwhile the job counts as
 * queued (max_queue, ym_sched_n_active, draining). */
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
#include "server/job_int.h"

/* --- the scheduler --- */

/* Rows of logits beyond one per sequence that a step may produce for prompts being scored
 * (echo with logprobs): a scored prompt's prefill chunk is cut to fit them. */
#define SCORE_ROWS 64
/* Two lookup threads: one request waiting for a slow store does not hold up another whose
 * state is in RAM or on disk (the store's reads share one connection, so two waiting for the
 * store still take turns). */
#define LOOKUP_THREADS 2

struct ym_sched {
    ym_model_t *model; /* ref */
    const ym_tok_t *tok;
    ym_metrics_t *metrics;
    ym_scache_t *cache; /* borrowed, or NULL */
    ym_jobcache jc;     /* the cache as jobs use it (jobcache.c) */
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

    /* The lookup threads' queue (under lock; linked through queue_next like the submit
     * queue): jobs whose cached state may need disk or store I/O before admission. */
    pthread_t lookup[LOOKUP_THREADS];
    int n_lookup;      /* threads started (set before any submit, then constant) */
    pthread_cond_t lookup_cond;
    ym_gen *lk_head, *lk_tail;
    int lk_stop;       /* ym_sched_free: drain the lookup queue, accept no more jobs */

    pthread_mutex_t ready_lock;
    ym_gen *ready_head, *ready_tail;

    /* Engine thread only. */
    ym_ctx_t *ctx;
    ym_gen **running; /* [cap_running] */
    int n_running;
    int cap_running;  /* the per-running arrays' size: max_running may grow on a reload */
    float *logits;    /* [max_running + SCORE_ROWS, n_vocab] */
    int32_t *tokens;  /* [max_batch_tokens] */
    int *seq_start;   /* [max_running + 1] */
    ym_state_t **states;
    const ym_adapt **adapts; /* [max_running] */
    ym_gen **in_batch;
    int *samples;     /* per batch sequence: 1 if it samples after this step */
    unsigned char *all_logits; /* per batch sequence: 1 if it scores its prompt rows */
    int *out_start;   /* per batch sequence: its first row of logits */
    float *row;       /* [n_vocab]: a first choice's logits row, copied for each further one */
};

static void publish(ym_sched_t *s, ym_gen *g)
{
    if (g->parent != NULL)
        g = g->parent; /* a further choice's output is read through the first choice */
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

/* A job's session state is durable (disk tier writer, or at once): let the loop finish it. */
typedef struct persisted {
    ym_sched_t *s;
    ym_gen *g;
} persisted;

static void on_persisted(void *arg)
{
    persisted *p = arg;
    atomic_store(&p->g->persisting, 0);
    publish(p->s, p->g);
    p->s->wake(p->s->wake_arg);
    ym_gen_unref(p->g);
    free(p);
}

/* Mark a job finished; its output and usage are final. Engine thread. */
static void finish(ym_sched_t *s, ym_gen *g, ym_finish why)
{
    /* The session first: once the loop can see the job finished, a client's next turn (or
     * GET /v1/sessions) must find the new state, and with a disk tier it is on disk (written
     * by the tier's thread; the loop holds the end of the response until then). */
    if (why != YM_FINISH_ERROR && g->parent == NULL) {
        persisted *p = g->session != NULL ? malloc(sizeof(*p)) : NULL;
        if (p != NULL) {
            *p = (persisted){s, ym_gen_ref(g)};
            atomic_store(&g->persisting, 1);
            ym__jobcache_store_session(&s->jc, g, on_persisted, p);
        } else {
            ym__jobcache_store_session(&s->jc, g, NULL, NULL);
        }
    }
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
    /* Further choices not forked yet end with their first choice. */
    for (int i = 0; !g->forked && i < g->n_kids; i++)
        if (g->kids[i]->finish == YM_FINISH_NONE)
            finish(s, g->kids[i], why);
    publish(s, g);
}

/* Count one generated token and append it (smp NULL: the end-of-text token, which is counted
 * but adds no output) with its released text. Engine thread. 0 or -1 on no memory. */
static ym_err admit(ym_sched_t *s, ym_gen *g)
{
    ym_err err;
    if ((err = ym_state_new_for_model(s->model, &g->state)) != YM_OK ||
        (err = ym_sampler_new(&g->sampling, s->n_vocab, &g->sampler)) != YM_OK ||
        (err = ym_textout_new(s->tok, (const char *const *)g->stops, g->n_stops, &g->tout)))
        return err;
    ym_textout_set_rules(g->tout, s->eos, g->ignore_eos, g->max_tokens);
    ym_sampler_add_prompt(g->sampler, g->prompt, (size_t)g->n_prompt);
    g->n_prefilled = 0;
    if (g->score_prompt && (err = ym__job_score_init(g)) != YM_OK)
        return err;
    if (s->cache != NULL)
        return ym__jobcache_resume(&s->jc, g);
    return g->append ? YM_EEXIST : YM_OK;
}

/* Append g to the singly linked queue *head .. *tail (through queue_next; lock held). */
static void queue_push(ym_gen **head, ym_gen **tail, ym_gen *g)
{
    g->queue_next = NULL;
    if (*tail)
        (*tail)->queue_next = g;
    else
        *head = g;
    *tail = g;
}

/* Append g to the submit queue and wake the engine (lock held). */
static void enqueue(ym_sched_t *s, ym_gen *g)
{
    queue_push(&s->q_head, &s->q_tail, g);
    pthread_cond_signal(&s->cond);
}

/* A lookup thread: look up each job's cached states in every tier, then queue it for
 * admission. While stopping, jobs are queued without a lookup (the engine cancels them). */
static void *lookup_main(void *arg)
{
    ym_sched_t *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (s->lk_head == NULL && !s->lk_stop)
            pthread_cond_wait(&s->lookup_cond, &s->lock);
        ym_gen *g = s->lk_head;
        if (g == NULL)
            break; /* stopping, and the queue is empty */
        s->lk_head = g->queue_next;
        if (s->lk_head == NULL)
            s->lk_tail = NULL;
        int skip = s->lk_stop;
        pthread_mutex_unlock(&s->lock);
        if (!skip && !atomic_load(&g->cancelled))
            ym__jobcache_prefetch(&s->jc, g);
        pthread_mutex_lock(&s->lock);
        enqueue(s, g); /* it still counts in n_queued, from ym_sched_submit */
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Does g need the lookup threads: may its resume read the disk or the store? Not when its
 * session is in RAM and no checkpoint boundary lies beyond the session's history (the common
 * next turn): then it skips the lookup queue and whatever waits there. Its resume still falls
 * back to checkpoints in RAM if the history does not match. Any thread, s->lock not held. */
static int needs_lookup(ym_sched_t *s, const ym_gen *g)
{
    int B = s->o.checkpoint_interval;
    if (s->n_lookup == 0 || !ym_scache_has_tiers(s->cache) || g->score_prompt)
        return 0; /* a scored prompt resumes nothing */
    if (g->session == NULL)
        return B > 0 && g->n_prompt > B;
    ym_skey key;
    ym_skey_session(&key, g->tenant, g->session);
    ym_sc_entry *e = ym_scache_pin_ram(s->cache, &key);
    int64_t m = e != NULL ? ym_sc_entry_state(e)->n_tokens : -1;
    ym_scache_unpin(s->cache, e);
    if (m < 0)
        return 1;
    return !g->append && B > 0 && (int64_t)((g->n_prompt - 1) / B) * B > m;
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
    /* The end rules (end-of-text, stop strings, max_tokens) and the text are the sequence
     * unit's (engine/textout.h), the same as `yunmin generate`'s. */
    const char *piece;
    size_t len;
    ym_seq_end end = ym_textout_step(g->tout, id, &piece, &len);
    int eos = end == YM_SEQ_EOS;
    g->pending = eos ? -1 : id; /* an end-of-text token ends the history, it is not part of it */
    if (ym__job_append(g, eos ? NULL : &smp, piece, len) != 0) {
        ym_log(YM_LOG_ERROR, g->id, "out of memory for the output");
        finish(s, g, YM_FINISH_ERROR);
        return;
    }
    if (eos)
        ym__job_append_text(g, piece, len); /* what the detokenizer held back */
    if (end != YM_SEQ_GOING) {
        finish(s, g, end == YM_SEQ_LENGTH ? YM_FINISH_LENGTH : YM_FINISH_STOP);
        return;
    }
    g->next_token = id;
    publish(s, g);
}

/* g's state and its logits row (not yet sampled) go to each of its further choices, which
 * sample their first token from it: the prompt is prefilled once for n choices. */
static void fork_choices(ym_sched_t *s, ym_gen *g, const float *row, double now)
{
    g->forked = 1;
    for (int i = 0; i < g->n_kids; i++) {
        ym_gen *c = g->kids[i];
        if (c->finish != YM_FINISH_NONE)
            continue;
        ym_err err;
        if ((err = ym_state_new_like(g->state, &c->state)) != YM_OK ||
            (err = ym_state_copy(c->state, g->state)) != YM_OK ||
            (err = ym_sampler_new(&c->sampling, s->n_vocab, &c->sampler)) != YM_OK ||
            (err = ym_textout_new(s->tok, (const char *const *)c->stops, c->n_stops,
                                  &c->tout)) != YM_OK) {
            ym_log(YM_LOG_ERROR, c->id, "cannot start a further choice: %s", ym_strerror(err));
            pthread_mutex_lock(&c->lock);
            c->error = err;
            pthread_mutex_unlock(&c->lock);
            finish(s, c, YM_FINISH_ERROR);
            continue;
        }
        ym_textout_set_rules(c->tout, s->eos, c->ignore_eos, c->max_tokens);
        ym_sampler_add_prompt(c->sampler, c->prompt, (size_t)c->n_prompt);
        c->n_prefilled = c->n_prompt;
        /* The loop thread reads these in ym_gen_take, under the job's lock. */
        pthread_mutex_lock(&c->lock);
        c->n_cached = g->n_cached;
        c->base = g->base;
        pthread_mutex_unlock(&c->lock);
        c->no_record = 1; /* a further choice stores nothing in the state cache */
        memcpy(s->row, row, (size_t)s->n_vocab * sizeof(float));
        sample(s, c, s->row, now);
    }
}

/* A finished first choice stays running (its slot held) until its further choices end. */
static int choices_running(const ym_gen *g)
{
    for (int i = 0; i < g->n_kids; i++)
        if (g->kids[i]->finish == YM_FINISH_NONE)
            return 1;
    return 0;
}

/* Remove running[i] (order kept: prefill fairness is by arrival). */
static void drop_running(ym_sched_t *s, int i)
{
    ym_gen *g = s->running[i];
    memmove(s->running + i, s->running + i + 1, (size_t)(s->n_running - i - 1) * sizeof(ym_gen *));
    s->n_running--;
    ym_gen_unref(g);
}

/* A scored prompt's chunk of n rows ran from position g->n_prefilled: row j's logits give the
 * score of prompt token n_prefilled + j + 1 (the last prompt row's are the first sample's). */
static void score_rows(ym_sched_t *s, ym_gen *g, float *rows, int n)
{
    ym_sample smp;
    for (int j = 0; j < n; j++) {
        int pos = g->n_prefilled + j + 1;
        if (pos >= g->n_prompt)
            break;
        float *row = rows + (size_t)j * (size_t)s->n_vocab;
        for (int i = s->n_real; i < s->n_vocab; i++)
            row[i] = -INFINITY;
        ym_sampler_score(g->sampler, row, g->prompt[pos], &smp);
        ym__job_score(g, pos, &smp);
    }
    if (g->n_prefilled + n == g->n_prompt)
        ym__job_scored(g);
}

static void step(ym_sched_t *s, int prefill_chunk)
{
    /* Cancelled and finished jobs leave first. */
    for (int i = 0; i < s->n_running;) {
        ym_gen *g = s->running[i];
        /* A further choice follows its first choice's cancellation (the transport cancels
         * only that one); the first choice is running while g has not finished. */
        if (g->finish == YM_FINISH_NONE &&
            (atomic_load(&g->cancelled) || (g->parent && atomic_load(&g->parent->cancelled))))
            finish(s, g, YM_FINISH_CANCELLED);
        if (g->finish != YM_FINISH_NONE && !choices_running(g))
            drop_running(s, i);
        else
            i++;
    }
    if (s->n_running == 0)
        return;

    /* Decode rows first, then prefill chunks in arrival order. */
    int n_seq = 0, rows = 0, budget = s->o.max_batch_tokens, any_adapter = 0, prefill_rows = 0;
    int score_left = SCORE_ROWS, any_score = 0, out = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < s->n_running; i++) {
            ym_gen *g = s->running[i];
            /* Skip a first choice waiting for its further ones, and those not forked yet. */
            if (g->finish != YM_FINISH_NONE || (g->parent != NULL && !g->parent->forked))
                continue;
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
                if (g->score_prompt && n - 1 > score_left)
                    n = score_left + 1; /* each row of the chunk has logits */
                prefill_rows += n;
                memcpy(s->tokens + rows, g->prompt + g->n_prefilled, (size_t)n * sizeof(int32_t));
                s->seq_start[n_seq] = rows;
                rows += n;
                s->samples[n_seq] = g->n_prefilled + n == g->n_prompt;
            } else {
                continue;
            }
            int score = pass == 1 && g->score_prompt;
            s->all_logits[n_seq] = (unsigned char)score;
            s->out_start[n_seq] = out;
            out += score ? rows - s->seq_start[n_seq] : 1;
            score_left -= score ? rows - s->seq_start[n_seq] - 1 : 0;
            any_score |= score;
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
        .all_logits = any_score ? s->all_logits : NULL,
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
        float *rows0 = s->logits + (size_t)s->out_start[k] * (size_t)s->n_vocab;
        if (s->all_logits[k])
            score_rows(s, g, rows0, n);
        if (g->n_prefilled < g->n_prompt) {
            g->n_prefilled += n;
            prefilled += n;
            int B = s->o.checkpoint_interval;
            if (g->n_chain_prompt > 0 && g->n_prefilled % B == 0 &&
                g->n_prefilled / B <= g->n_chain_prompt && g->n_prefilled > g->n_cached)
                ym__jobcache_store_checkpoint(&s->jc, g, g->n_prefilled / B);
        } else if (s->cache != NULL && !g->no_record) {
            /* The decode row fed next_token: it is part of the history now. Without the
             * record the state cannot be described, so the job stores nothing more. */
            if (ym__jobcache_record_fed(&s->jc, g, g->next_token) != 0) {
                g->no_record = 1;
                free(g->session);
                g->session = NULL;
            }
        }
        if (s->samples[k]) {
            float *row = rows0 + (s->all_logits[k] ? (size_t)(n - 1) * (size_t)s->n_vocab : 0);
            if (g->score_prompt && g->max_tokens == 0) {
                finish(s, g, YM_FINISH_LENGTH); /* scored: nothing to generate */
                continue;
            }
            if (g->n_kids > 0 && !g->forked)
                fork_choices(s, g, row, now);
            sample(s, g, row, now);
        }
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
        while (!stopping && s->q_head != NULL) {
            /* A request of n choices takes n slots at once (its further choices start after
             * its prefill); one larger than max_running (lowered by a reload) runs alone. */
            ym_gen *g = s->q_head;
            int need = 1 + g->n_kids;
            if (s->n_running + need > max_running &&
                !(s->n_running == 0 && need <= s->cap_running))
                break;
            s->q_head = g->queue_next;
            if (s->q_head == NULL)
                s->q_tail = NULL;
            s->n_queued--;
            g->queue_next = NULL;
            s->running[s->n_running++] = g;
            for (int i = 0; i < g->n_kids; i++)
                s->running[s->n_running++] = ym_gen_ref(g->kids[i]);
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
            ym__jobcache_release(&s->jc, g); /* what the lookup found and resume left */
            if (g->max_tokens == 0 && !g->score_prompt && err == YM_OK) {
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
                ym__jobcache_release(&s->jc, g);
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
    GROW(logits, (mr + SCORE_ROWS) * (size_t)s->n_vocab);
    GROW(seq_start, mr + 1);
    GROW(states, mr);
    GROW(adapts, mr);
    GROW(in_batch, mr);
    GROW(samples, mr);
    GROW(all_logits, mr);
    GROW(out_start, mr);
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
    free(s->all_logits);
    free(s->out_start);
    free(s->row);
    ym_model_unref(s->model);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    pthread_cond_destroy(&s->lookup_cond);
    pthread_mutex_destroy(&s->ready_lock);
    free(s);
}

/* Drain the lookup queue into the submit queue and join the lookup threads; afterwards
 * ym_sched_submit refuses jobs. */
static void stop_lookups(ym_sched_t *s)
{
    pthread_mutex_lock(&s->lock);
    s->lk_stop = 1;
    pthread_cond_broadcast(&s->lookup_cond);
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < s->n_lookup; i++)
        pthread_join(s->lookup[i], NULL); /* called once: by ym_sched_free or a failed new */
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
    s->wake = wake;
    s->wake_arg = wake_arg;
    s->o = *o;
    if (s->o.checkpoint_interval < 0)
        s->o.checkpoint_interval = 0;
    s->jc = (ym_jobcache){cache, metrics, s->o.checkpoint_interval};
    s->n_vocab = model->cfg.n_vocab;
    s->n_real = ym_tok_n_vocab(tok) < s->n_vocab ? ym_tok_n_vocab(tok) : s->n_vocab;
    s->eos = ym_tok_eos_id(tok);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    pthread_cond_init(&s->lookup_cond, NULL);
    pthread_mutex_init(&s->ready_lock, NULL);
    ym_err err;
    if ((err = ym_ctx_new(model, o->max_batch_tokens, o->n_threads, &s->ctx)) != YM_OK) {
        ym_diag_set(diag, err, "cannot set up the engine: %s", ym_strerror(err));
        goto fail;
    }
    s->tokens = malloc((size_t)o->max_batch_tokens * sizeof(int32_t));
    s->row = malloc((size_t)s->n_vocab * sizeof(float));
    if (s->tokens == NULL || s->row == NULL || grow_running(s, o->max_running) != 0) {
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory for the scheduler");
        goto fail;
    }
    for (int i = 0; cache != NULL && i < LOOKUP_THREADS; i++) {
        if (pthread_create(&s->lookup[i], NULL, lookup_main, s) != 0) {
            err = ym_diag_set(diag, YM_ENOMEM, "cannot start the state lookup threads");
            goto fail;
        }
        s->n_lookup++;
    }
    if (pthread_create(&s->thread, NULL, engine_main, s) != 0) {
        err = ym_diag_set(diag, YM_ENOMEM, "cannot start the engine thread");
        goto fail;
    }
    *out = s;
    return YM_OK;
fail:
    stop_lookups(s); /* nothing was submitted */
    sched_destroy(s);
    return err;
}

void ym_sched_free(ym_sched_t *s)
{
    if (s == NULL)
        return;
    /* Jobs still being looked up join the submit queue first; the engine cancels them. */
    stop_lookups(s);
    pthread_mutex_lock(&s->lock);
    s->stop = 1;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    ym_scache_flush(s->jc.cache); /* sessions still being written publish through s */
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
    return ym_sched_submit_n(s, &g, 1);
}

ym_err ym_sched_submit_n(ym_sched_t *s, ym_gen *const *gs, int n)
{
    /* Which of them may find their state on disk or in the store: decided before the lock
     * (it takes the cache's). */
    int lookup[YM_SCHED_SUBMIT_MAX];
    if (n < 1 || n > YM_SCHED_SUBMIT_MAX)
        return YM_EINVAL;
    for (int i = 0; i < n; i++)
        lookup[i] = needs_lookup(s, gs[i]);
    pthread_mutex_lock(&s->lock);
    /* A job waits in the queue only when every running slot is taken; the last of the n
     * decides (the queue only grows while they go in). */
    int waiting = s->n_queued + n - 1 + s->n_running_pub - s->o.max_running;
    if (s->stop || s->lk_stop || (waiting >= 0 && s->n_queued + n - 1 >= s->o.max_queue)) {
        pthread_mutex_unlock(&s->lock);
        return YM_EBUSY;
    }
    for (int i = 0; i < n; i++) {
        ym_gen *g = ym_gen_ref(gs[i]);
        if (lookup[i]) {
            /* Its cached state may be on disk or in the store: a lookup thread reads it,
             * then queues the job (lookup_main). */
            queue_push(&s->lk_head, &s->lk_tail, g);
            pthread_cond_signal(&s->lookup_cond);
        } else {
            enqueue(s, g);
        }
        s->n_queued++;
    }
    ym_metrics_set(s->metrics, YM_G_QUEUE, s->n_queued);
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
