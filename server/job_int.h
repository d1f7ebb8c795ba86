/* server/job_int.h - a generation job's fields, shared by the files that run it: job.c (its
 * life and output), jobcache.c (its state-cache glue) and sched.c (the scheduler).
 *
 * Internal to server/: everyone else sees the opaque ym_gen of server/sched.h. */
#ifndef YM_SERVER_JOB_INT_H
#define YM_SERVER_JOB_INT_H
#include <pthread.h>
#include <stdatomic.h>

#include "engine/sampling.h"
#include "engine/state.h"
#include "engine/textout.h"
#include "server/metrics.h"
#include "server/sched.h"
#include "server/statecache.h"

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
    ym_gen **kids; /* owned references [n_kids]: the further choices (ym_gen_add_choice) */
    int n_kids;
    ym_gen *parent; /* borrowed: the first choice's job, for a further choice; else NULL */
    ym_gen **groups; /* owned references [n_groups]: the request's further prompts' jobs */
    int n_groups;
    int score_prompt; /* score the prompt's tokens (ym_gen_params.score_prompt) */

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
    int scored;        /* score_prompt: ptoks and ptops are complete (read-only from then on) */
    ym_gen_tok *ptoks; /* score_prompt: [n_prompt], written by the engine while prefilling */
    ym_logprob *ptops; /* [n_prompt * sampling.n_logprobs] */

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
    int forked;          /* a first choice: its state went to its further choices */
    int32_t pending;     /* the last sampled token (not fed yet), or -1 */
    int32_t next_token;
    atomic_int persisting; /* its session's file is being written: the loop waits to finish */
    /* Found before admission by the lookup thread (ym__jobcache_prefetch), pinned: its session
     * entry and the longest prefix checkpoint, or NULL; written before the job joins the
     * submit queue, then the engine thread's (ym__jobcache_resume takes, release unpins). */
    ym_sc_entry *pre[2];
    ym_skey pre_key[2];
    double t_last;
    ym_gen *queue_next;
};

/* Output, engine thread: one generated token (smp NULL: it adds no token, e.g. end-of-text)
 * and its text / text alone. 0, or -1 out of memory. */
int ym__job_append(ym_gen *g, const ym_sample *smp, const char *text, size_t len);
void ym__job_append_text(ym_gen *g, const char *text, size_t len);
/* Prompt scores, engine thread: room for them (at admission; YM_ENOMEM), the score of prompt
 * token pos (>= 1) from the logits before it, and the end of the prompt (they are complete). */
ym_err ym__job_score_init(ym_gen *g);
void ym__job_score(ym_gen *g, int pos, const ym_sample *smp);
void ym__job_scored(ym_gen *g);

/* The state cache as jobs use it (engine thread); cache NULL: none. */
typedef struct ym_jobcache {
    ym_scache_t *cache;      /* borrowed */
    ym_metrics_t *metrics;   /* borrowed */
    int checkpoint_interval; /* tokens per prefix checkpoint, 0 = none */
} ym_jobcache;

/* Before admission, on the scheduler's lookup thread (never the engine thread): look up what
 * ym__jobcache_resume will want in every tier (RAM, disk, store: this blocks on their I/O) and
 * keep it pinned in g->pre, promoted into RAM, so admission reads memory only. */
void ym__jobcache_prefetch(const ym_jobcache *jc, ym_gen *g);
/* At admission: start g from the longest cached state its prompt extends (its session's, or
 * a prefix checkpoint; in append mode, its session's), from RAM or what ym__jobcache_prefetch
 * pinned; no I/O. YM_EEXIST: the appended-to session is gone. */
ym_err ym__jobcache_resume(const ym_jobcache *jc, ym_gen *g);
/* Unpin what ym__jobcache_prefetch kept and resume did not take (any thread that owns g;
 * idempotent). */
void ym__jobcache_release(const ym_jobcache *jc, ym_gen *g);
/* A decode row fed id: record it; at a checkpoint boundary store the state. 0, or -1 out of
 * memory (the job then stops recording). */
int ym__jobcache_record_fed(const ym_jobcache *jc, ym_gen *g, int32_t id);
/* Prefill reached checkpoint block k (1-based) of the prompt: store the state there. */
void ym__jobcache_store_checkpoint(const ym_jobcache *jc, ym_gen *g, int k);
/* g ended: its state becomes its session's (the cache takes the state). done(arg) is called
 * exactly once, when the state is durable (on disk with a disk tier; else at once). */
void ym__jobcache_store_session(const ym_jobcache *jc, ym_gen *g, void (*done)(void *),
                                void *arg);

#endif
