/* server/sched.h - the engine thread: a continuous-batching scheduler over generation jobs.
 *
 * The loop thread creates a ym_gen (prompt ids, sampling, limits), submits it, and later
 * takes its output with ym_gen_take(). The engine thread admits queued jobs between steps,
 * builds one ragged batch per step (one row per decoding sequence, then prefill chunks of at
 * most prefill_chunk tokens while the step has rows left), runs the model, samples, appends
 * text to each job's output and puts the job on the ready list; the wake callback (uv_async_send
 * in the server) tells the loop. Finished and cancelled jobs leave the batch at once. With a
 * disk tier or a store below the state cache, a job whose cached state may need I/O waits for
 * a lookup thread (it reads the tiers) before it joins the queue; the engine thread never does
 * file or network I/O.
 *
 * Threads: ym_sched_* and ym_gen_* may be called from any thread unless noted; the engine
 * thread alone runs the model. Ownership: a ym_gen is refcounted (loop, engine, ready list). */
#ifndef YM_SERVER_SCHED_H
#define YM_SERVER_SCHED_H
#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"
#include "engine/model.h"
#include "engine/sampling.h"
#include "adapters/adapter.h"
#include "engine/tokenizer.h"
#include "server/metrics.h"
#include "server/statecache.h"

typedef enum {
    YM_FINISH_NONE = 0,
    YM_FINISH_STOP,      /* end-of-text token or a stop string */
    YM_FINISH_LENGTH,    /* max_tokens reached */
    YM_FINISH_CANCELLED, /* client gone, or the server stopping */
    YM_FINISH_ERROR,     /* the engine failed (message in the log) */
} ym_finish;

const char *ym_finish_name(ym_finish f); /* "stop", "length", ... */

typedef struct ym_gen_params {
    int32_t *prompt;        /* taken over by ym_gen_new (free()d with the job) */
    size_t n_prompt;        /* >= 1 */
    ym_sampling sampling;
    int64_t max_tokens;     /* >= 0 */
    const char *const *stops; /* copied */
    int n_stops;
    int ignore_eos;
    double t_arrival;       /* ym_now() when the request arrived */
    const char *id;         /* request id for logs; copied */
    ym_adapter_t *adapter;  /* taken over by ym_gen_new (one reference), or NULL = base */
    /* State cache keys (copied): who runs it, the adapter identity (names and versions in
     * order, "" = base) and the session to resume and store, or NULL. */
    const char *tenant;
    const char *identity;
    const char *session_id;
    /* Append mode: prompt holds only what follows the session's history (its pending token
     * first, if any), checked by the loop against the session entry with this serial; the
     * history is append_base tokens. The engine re-checks the serial at admission. */
    int append;
    uint64_t append_serial;
    int64_t append_base;
    /* Score the prompt (echo with logprobs): every prompt token's raw log-probability given
     * the tokens before it, from a prefill that runs the whole prompt (nothing is resumed
     * from the state cache; checkpoints are still stored). With max_tokens 0 the job ends
     * after the prefill, having sampled nothing. */
    int score_prompt;
} ym_gen_params;

/* One generated token, as the loop sees it. */
typedef struct ym_gen_tok {
    int32_t id;
    float logprob;          /* raw log-probability (see sampling.h) */
    size_t text_start;      /* bytes of output text released before this token */
} ym_gen_tok;

/* The loop thread's copy of a job's new output (buffers owned by the struct, reused). */
typedef struct ym_gen_delta {
    char *text;             /* text released since the last take; not NUL-terminated */
    size_t text_len, text_cap;
    ym_gen_tok *toks;       /* tokens since the last take */
    ym_logprob *tops;       /* [n_toks * n_top] alternatives, when logprobs were asked */
    int n_toks, toks_cap, n_top;
    size_t text_total;      /* bytes of text released so far, this take included */
    int n_prompt, n_gen;    /* usage so far */
    int n_cached;           /* prompt tokens resumed from a cached state, not run */
    int started;            /* a first token exists */
    ym_finish finish;       /* != NONE once the job is over (then nothing more comes) */
    ym_err error;           /* with YM_FINISH_ERROR: YM_EEXIST when an appended turn's session
                             * changed before it started, else the engine failed */
} ym_gen_delta;
void ym_gen_delta_deinit(ym_gen_delta *d); /* NULL-safe */

typedef struct ym_gen ym_gen;

/* New job with one reference (the caller's). */
ym_err ym_gen_new(const ym_gen_params *p, ym_gen **out);
ym_gen *ym_gen_ref(ym_gen *g);
void ym_gen_unref(ym_gen *g); /* NULL-safe; frees on the last reference */
/* Ask the engine to drop the job (any thread; takes effect at the next step). */
void ym_gen_cancel(ym_gen *g);
/* Move the output produced since the last call into d (d's old contents are replaced). */
void ym_gen_take(ym_gen *g, ym_gen_delta *d);
/* The loop thread's back pointer (the HTTP request); the engine never reads it. */
void ym_gen_set_owner(ym_gen *g, void *owner);
void *ym_gen_owner(const ym_gen *g);
const char *ym_gen_id(const ym_gen *g);
/* Several choices of one request (n): g, the first choice's job, takes kid (one reference) as
 * its next choice, before submit. The scheduler admits the group when a running slot is free
 * for each choice, prefills the prompt once (g's), then copies g's state and last logits row
 * into each further choice, which decodes in the same batch. A further choice follows g's
 * cancellation; it resumes nothing from the state cache and stores nothing there (a session
 * keeps the first choice's state); g stays running until every choice has finished. Its
 * output is published through g. 0, or -1 out of memory (kid not taken). Loop thread. */
int ym_gen_add_choice(ym_gen *g, ym_gen *kid);
int ym_gen_n_choices(const ym_gen *g);        /* 1 + the further choices */
ym_gen *ym_gen_choice(ym_gen *g, int i);      /* borrowed: choice i (0: g itself) */
/* Several prompts of one request: g, the first prompt's job, takes other (one reference), the
 * first choice's job of its next prompt. Each is submitted on its own and runs in the batch
 * beside the others; g only ties them to the request: ym_gen_cancel(g) and
 * ym_gen_set_owner(g, ...) reach every prompt's jobs. 0, or -1 out of memory (other not
 * taken). Loop thread, before submit. */
int ym_gen_add_prompt(ym_gen *g, ym_gen *other);
int ym_gen_n_prompts(const ym_gen *g);        /* 1 + the further prompts */
ym_gen *ym_gen_prompt(ym_gen *g, int p);      /* borrowed: prompt p's job (0: g itself) */
/* A score_prompt job's prompt scores, once its prefill has run them all: *toks [n] (id and
 * logprob of each prompt token; the first has no logprob: NaN) and *tops [n * *n_top] (the
 * most likely tokens at each position), borrowed while g lives. Returns n (the prompt's
 * tokens), or 0 while not scored (or without score_prompt). Loop thread. */
int ym_gen_prompt_scores(ym_gen *g, const ym_gen_tok **toks, const ym_logprob **tops,
                         int *n_top);

typedef struct ym_sched_opts {
    int max_running;
    int max_batch_tokens;
    int prefill_chunk;
    int max_queue;
    int n_threads;          /* engine threads, 0 = one per core */
    int checkpoint_interval;/* prompt tokens between prefix checkpoints, 0 = none */
} ym_sched_opts;

typedef struct ym_sched ym_sched_t;

/* Start the engine thread. Borrows tok, metrics and cache (must outlive the scheduler; cache
 * may be NULL: nothing is resumed or stored), holds a ref on model. wake(arg) is called from
 * the engine thread when the ready list gains jobs.
 * With a cache, a job resumes from the longest cached state its prompt extends (its session's,
 * or a prefix checkpoint), stores a checkpoint at every checkpoint_interval boundary of its
 * prompt, and, with a session id, stores its final state under the session when it ends. */
ym_err ym_sched_new(ym_model_t *model, const ym_tok_t *tok, const ym_sched_opts *o,
                    ym_metrics_t *metrics, ym_scache_t *cache, void (*wake)(void *),
                    void *wake_arg, ym_sched_t **out, ym_diag *diag);
/* Stop: cancel every job (each appears on the ready list finished), join the thread, free. */
void ym_sched_free(ym_sched_t *s); /* NULL-safe */
/* Queue a job (takes a reference of its own). YM_EBUSY when max_queue jobs already wait
 * (counting those at the lookup threads). Does no I/O: the lookups run on their threads. */
ym_err ym_sched_submit(ym_sched_t *s, ym_gen *g);
/* Queue n jobs at once (a request's prompts), so that they are admitted in the same pass when
 * the running slots allow; all or none: YM_EBUSY when they do not all fit in the queue,
 * YM_EINVAL unless 1 <= n <= YM_SCHED_SUBMIT_MAX (a request has at most 16 choices). */
#define YM_SCHED_SUBMIT_MAX 64
ym_err ym_sched_submit_n(ym_sched_t *s, ym_gen *const *gs, int n);
/* New limits for max_running (at most max_batch_tokens), prefill_chunk and max_queue (a
 * reload); values out of range are ignored; the others are fixed at start. */
void ym_sched_set_limits(ym_sched_t *s, int max_running, int prefill_chunk, int max_queue);
/* Detach the ready list. Walk it with ym_sched_ready_next(), called for each job BEFORE its
 * output is taken (it unlinks the job, so the engine may publish it again); each job holds
 * one reference that the caller drops with ym_gen_unref() after handling it. */
ym_gen *ym_sched_take_ready(ym_sched_t *s);
ym_gen *ym_sched_ready_next(ym_sched_t *s, ym_gen *g);
/* Jobs queued or running. */
int ym_sched_n_active(ym_sched_t *s);

double ym_now(void); /* monotonic seconds */

#endif
