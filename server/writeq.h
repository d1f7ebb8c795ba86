/* server/writeq.h - the ordered writer thread of a state tier (server/disktier.c,
 * server/redistier.c).
 *
 * A FIFO of state writes and removals run one at a time, in the order they were pushed, by one
 * thread the queue owns. After a job has run, its `done` callback (if any) is called on that
 * thread: the caller's response may end only then. Threads: push, flush and stop from any
 * thread; `run` is called on the writer thread only. Must not: run a job on the pushing thread.
 *
 * A write may carry a shared blob (ym_wblob): one state's file bytes, formatted once for all
 * the tiers that write it (disk and store carry the same bytes when their model fingerprint
 * and MAC key match), so the checksum and the MAC of a state are computed once, not per tier. */
#ifndef YM_SERVER_WRITEQ_H
#define YM_SERVER_WRITEQ_H
#include <pthread.h>

#include "engine/err.h"
#include "engine/state.h"
#include "server/statecache.h"

typedef struct ym_wblob ym_wblob;

typedef struct ym_writeq_job {
    int remove;           /* 1: remove key; 0: write st under key */
    ym_skey key;
    ym_sc_kind kind;
    ym_sc_meta meta;      /* meta.pending -1 when the writer gave none */
    const ym_state_t *st; /* borrowed until done is called */
    ym_wblob *blob;       /* one reference, dropped after run; or NULL */
    void (*done)(void *); /* or NULL */
    void *arg;
    struct ym_writeq_job *next;
} ym_writeq_job;

typedef struct ym_writeq {
    pthread_mutex_t lock;
    pthread_cond_t cond, idle;
    ym_writeq_job *head, *tail;
    int busy, stop;
    pthread_t thread;
    void (*run)(void *owner, const ym_writeq_job *j); /* does the write or removal */
    void *owner;                                      /* borrowed: outlives the queue */
} ym_writeq;

/* Starts the writer thread, named name (at most 15 characters: what top -H and
 * /proc/PID/task/TID/comm show, so its CPU can be told from the engine's). YM_OK, or
 * YM_ENOMEM with nothing left to undo. */
ym_err ym_writeq_start(ym_writeq *q, void (*run)(void *owner, const ym_writeq_job *j),
                       void *owner, const char *name);
/* Queue a write (meta may be NULL). Takes over one reference of blob (may be NULL), also on
 * failure. YM_ENOMEM: nothing queued and done NOT called. */
ym_err ym_writeq_write(ym_writeq *q, const ym_skey *key, ym_sc_kind kind, const ym_sc_meta *meta,
                       const ym_state_t *st, ym_wblob *blob, void (*done)(void *), void *arg);
/* Queue a removal. YM_ENOMEM: nothing queued. */
ym_err ym_writeq_remove(ym_writeq *q, const ym_skey *key);
/* Blocks until every job pushed before the call has run. */
void ym_writeq_flush(ym_writeq *q);
/* Runs what is queued, joins the thread, frees the queue's resources. */
void ym_writeq_stop(ym_writeq *q);

/* A blob for n_refs tier writes of one state (n_refs >= 1): new object, or NULL on no memory
 * (each tier then formats its own bytes). */
ym_wblob *ym_wblob_new(int n_refs);
void ym_wblob_unref(ym_wblob *b); /* NULL-safe; the last reference frees it */
/* The file bytes of write job j (ym_state_file_format with fp and mac_key), in *buf and *len.
 * With a blob, the first tier to ask formats them and the others wait for that and reuse them
 * (borrowed: valid until the job's reference is dropped, *own NULL); without one, or when this
 * tier's fp or key differ from the blob's, they are formatted here, *own a new buffer the
 * caller frees. */
ym_err ym_writeq_job_bytes(const ym_writeq_job *j, const unsigned char fp[32],
                           const unsigned char mac_key[32], const unsigned char **buf,
                           size_t *len, unsigned char **own);

#endif
