/* server/writeq.c - the ordered writer thread of a state tier.
 *
 * Owns: the queue, its lock and conditions, the writer thread, the jobs until they have run;
 * a shared blob and its bytes until its last job has run (refcount).
 * Runs: push/flush/stop on any thread; jobs on the writer thread. Must not: call `run` or `done`
 * with the queue's lock held (a job does I/O). */
#include "server/writeq.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "server/disktier.h"

struct ym_wblob {
    pthread_mutex_t lock; /* held while the bytes are formatted */
    atomic_int refs;
    int formatted;
    ym_err err;
    unsigned char fp[32], mac_key[32]; /* what the bytes were formatted with */
    unsigned char *buf;                /* owned */
    size_t len;
};

ym_wblob *ym_wblob_new(int n_refs)
{
    ym_wblob *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    pthread_mutex_init(&b->lock, NULL);
    atomic_init(&b->refs, n_refs);
    return b;
}

void ym_wblob_unref(ym_wblob *b)
{
    if (b == NULL || atomic_fetch_sub(&b->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&b->lock);
    free(b->buf);
    free(b);
}

ym_err ym_writeq_job_bytes(const ym_writeq_job *j, const unsigned char fp[32],
                           const unsigned char mac_key[32], const unsigned char **buf,
                           size_t *len, unsigned char **own)
{
    *buf = *own = NULL;
    *len = 0;
    ym_wblob *b = j->blob;
    if (b != NULL) {
        pthread_mutex_lock(&b->lock);
        if (!b->formatted) {
            b->err = ym_state_file_format(&j->key, j->kind, &j->meta, j->st, fp, mac_key,
                                          &b->buf, &b->len);
            memcpy(b->fp, fp, 32);
            memcpy(b->mac_key, mac_key, 32);
            b->formatted = 1;
        }
        int same = memcmp(b->fp, fp, 32) == 0 && memcmp(b->mac_key, mac_key, 32) == 0;
        ym_err err = b->err;
        pthread_mutex_unlock(&b->lock);
        if (same) {
            /* Formatted once, never changed after: safe to read without the lock. */
            *buf = b->buf;
            *len = b->len;
            return err;
        }
    }
    ym_err err = ym_state_file_format(&j->key, j->kind, &j->meta, j->st, fp, mac_key, own, len);
    *buf = *own;
    return err;
}

static void *writer_main(void *arg)
{
    ym_writeq *q = arg;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (q->head == NULL && !q->stop)
            pthread_cond_wait(&q->cond, &q->lock);
        if (q->head == NULL)
            break; /* stopping, and everything has run */
        ym_writeq_job *j = q->head;
        q->head = j->next;
        if (q->head == NULL)
            q->tail = NULL;
        q->busy = 1;
        pthread_mutex_unlock(&q->lock);
        q->run(q->owner, j);
        ym_wblob_unref(j->blob);
        /* Only now, with the job done (or given up): the caller's response may end and its
         * entry be unpinned. */
        if (j->done)
            j->done(j->arg);
        free(j);
        pthread_mutex_lock(&q->lock);
        q->busy = 0;
        if (q->head == NULL)
            pthread_cond_broadcast(&q->idle);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

ym_err ym_writeq_start(ym_writeq *q, void (*run)(void *owner, const ym_writeq_job *j),
                       void *owner, const char *name)
{
    q->head = q->tail = NULL;
    q->busy = q->stop = 0;
    q->run = run;
    q->owner = owner;
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    pthread_cond_init(&q->idle, NULL);
    if (pthread_create(&q->thread, NULL, writer_main, q) != 0) {
        pthread_mutex_destroy(&q->lock);
        pthread_cond_destroy(&q->cond);
        pthread_cond_destroy(&q->idle);
        return YM_ENOMEM;
    }
    pthread_setname_np(q->thread, name); /* a longer name is refused and the thread keeps its
                                            process's: only a label */
    return YM_OK;
}

static void push(ym_writeq *q, ym_writeq_job *j)
{
    pthread_mutex_lock(&q->lock);
    j->next = NULL;
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

ym_err ym_writeq_write(ym_writeq *q, const ym_skey *key, ym_sc_kind kind, const ym_sc_meta *meta,
                       const ym_state_t *st, ym_wblob *blob, void (*done)(void *), void *arg)
{
    ym_writeq_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        ym_wblob_unref(blob);
        return YM_ENOMEM;
    }
    j->key = *key;
    j->kind = kind;
    if (meta != NULL)
        j->meta = *meta;
    else
        j->meta.pending = -1;
    j->st = st;
    j->blob = blob;
    j->done = done;
    j->arg = arg;
    push(q, j);
    return YM_OK;
}

ym_err ym_writeq_remove(ym_writeq *q, const ym_skey *key)
{
    ym_writeq_job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return YM_ENOMEM;
    j->remove = 1;
    j->key = *key;
    push(q, j);
    return YM_OK;
}

void ym_writeq_flush(ym_writeq *q)
{
    pthread_mutex_lock(&q->lock);
    while (q->head != NULL || q->busy)
        pthread_cond_wait(&q->idle, &q->lock);
    pthread_mutex_unlock(&q->lock);
}

void ym_writeq_stop(ym_writeq *q)
{
    pthread_mutex_lock(&q->lock);
    q->stop = 1;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    pthread_join(q->thread, NULL);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    pthread_cond_destroy(&q->idle);
}
