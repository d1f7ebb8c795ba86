/* server/redistier.c - states in Redis: two hiredis connections (reads, writes), a write
 * queue and its thread, a backoff after failures.
 *
 * Owns: the connections, the queue, the writer thread. Runs: the caller's thread for reads,
 * the writer for SET/DEL. A connection that fails is freed; the next use after the backoff
 * reconnects (connect and every command bounded by timeout_ms). Must not: block longer than
 * timeout_ms per command; use the store while backing off. */
#include "server/redistier.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "engine/log.h"
#include "server/disktier.h"
#include "server/sched.h"
#include "server/writeq.h"

#define LOG_INTERVAL_S 60.0
#define BACKOFF_MIN_S 0.1
#define BACKOFF_MAX_S 5.0

typedef struct conn {
    pthread_mutex_t lock;
    redisContext *c; /* owned, or NULL: not connected */
    double retry_at; /* no attempt before this (ym_now) */
    double backoff;
} conn;

struct ym_redistier {
    char host[256];
    int port, db;
    uint64_t ttl_s, timeout_ms;
    unsigned char mac_key[32];
    unsigned char fp[32];
    ym_state_t *like;      /* owned */
    ym_metrics_t *metrics; /* borrowed, may be NULL */
    conn rd, wr;

    pthread_mutex_t llock; /* log limiting */
    double last_log;
    uint64_t quiet;

    ym_writeq q; /* SET and DEL, in order, on its thread */
};

int ym_redis_url_parse(const char *url, char *host, size_t host_cap, int *port, int *db,
                       ym_diag *diag)
{
    const char *p = url;
    if (strncmp(p, "redis://", 8) != 0) {
        ym_diag_set(diag, YM_EINVAL, "session_store: %s is not redis://host:port/db", url);
        return -1;
    }
    p += 8;
    size_t n = strcspn(p, ":/");
    if (n == 0 || n >= host_cap) {
        ym_diag_set(diag, YM_EINVAL, "session_store: no host in %s", url);
        return -1;
    }
    memcpy(host, p, n);
    host[n] = '\0';
    p += n;
    *port = 6379;
    *db = 0;
    if (*p == ':') {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || v < 1 || v > 65535) {
            ym_diag_set(diag, YM_EINVAL, "session_store: bad port in %s", url);
            return -1;
        }
        *port = (int)v;
        p = end;
    }
    if (*p == '/' && p[1] != '\0') {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || *end != '\0' || v < 0 || v > 1000000) {
            ym_diag_set(diag, YM_EINVAL, "session_store: bad database number in %s", url);
            return -1;
        }
        *db = (int)v;
        p = end;
    } else if (*p == '/') {
        p++;
    }
    if (*p != '\0') {
        ym_diag_set(diag, YM_EINVAL, "session_store: unexpected text after the host in %s",
                    url);
        return -1;
    }
    return 0;
}

static void log_limited(ym_redistier_t *r, const char *what, const char *detail)
{
    double now = ym_now();
    pthread_mutex_lock(&r->llock);
    int say = r->last_log == 0 || now - r->last_log >= LOG_INTERVAL_S;
    uint64_t n = r->quiet;
    if (say) {
        r->last_log = now;
        r->quiet = 0;
    } else {
        r->quiet++;
    }
    pthread_mutex_unlock(&r->llock);
    if (say)
        ym_log(YM_LOG_WARN, NULL,
               "session store %s:%d: %s: %s; requests run without it (%llu more since the last "
               "such line)",
               r->host, r->port, what, detail, (unsigned long long)n);
}

static void fail(ym_redistier_t *r, const char *what, const char *detail)
{
    if (r->metrics)
        ym_metrics_add(r->metrics, YM_M_STORE_ERRORS, 1);
    log_limited(r, what, detail);
}

static struct timeval tv_of(uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}

/* A connected context (lock held), or NULL while down or backing off. */
static redisContext *use(ym_redistier_t *r, conn *k)
{
    if (k->c != NULL)
        return k->c;
    double now = ym_now();
    if (now < k->retry_at)
        return NULL;
    redisContext *c = redisConnectWithTimeout(r->host, r->port, tv_of(r->timeout_ms));
    if (c == NULL || c->err || redisSetTimeout(c, tv_of(r->timeout_ms)) != REDIS_OK) {
        fail(r, "cannot connect", c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        k->backoff = k->backoff == 0 ? BACKOFF_MIN_S : k->backoff * 2;
        if (k->backoff > BACKOFF_MAX_S)
            k->backoff = BACKOFF_MAX_S;
        k->retry_at = now + k->backoff;
        return NULL;
    }
    if (r->db != 0) {
        redisReply *rep = redisCommand(c, "SELECT %d", r->db);
        int ok = rep != NULL && rep->type != REDIS_REPLY_ERROR;
        if (rep)
            freeReplyObject(rep);
        if (!ok) {
            fail(r, "cannot select the database", c->err ? c->errstr : "refused");
            redisFree(c);
            k->retry_at = now + BACKOFF_MAX_S;
            return NULL;
        }
    }
    k->c = c;
    k->backoff = 0;
    return c;
}

/* After a failed command: drop the connection and back off. */
static void drop(ym_redistier_t *r, conn *k, const char *what)
{
    fail(r, what, k->c && k->c->err ? k->c->errstr : "no reply");
    if (k->c)
        redisFree(k->c);
    k->c = NULL;
    k->backoff = k->backoff == 0 ? BACKOFF_MIN_S : k->backoff * 2;
    if (k->backoff > BACKOFF_MAX_S)
        k->backoff = BACKOFF_MAX_S;
    k->retry_at = ym_now() + k->backoff;
}

static void store_key(const ym_skey *k, char out[80])
{
    static const char digits[] = "0123456789abcdef";
    memcpy(out, "yunmin:state:", 13);
    for (int i = 0; i < 32; i++) {
        out[13 + 2 * i] = digits[k->b[i] >> 4];
        out[13 + 2 * i + 1] = digits[k->b[i] & 15];
    }
    out[77] = '\0';
}

ym_err ym_redistier_load(ym_redistier_t *r, const ym_skey *key, ym_sc_kind *kind,
                         ym_sc_meta *meta, ym_state_t **st)
{
    *st = NULL;
    char name[80];
    store_key(key, name);
    pthread_mutex_lock(&r->rd.lock);
    redisContext *c = use(r, &r->rd);
    redisReply *rep = c ? redisCommand(c, "GET %s", name) : NULL;
    if (c != NULL && rep == NULL)
        drop(r, &r->rd, "GET failed");
    pthread_mutex_unlock(&r->rd.lock);
    if (rep == NULL || rep->type != REDIS_REPLY_STRING) {
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR)
            fail(r, "GET refused", rep->str);
        if (rep)
            freeReplyObject(rep);
        if (r->metrics)
            ym_metrics_add(r->metrics, YM_M_STORE_MISSES, 1);
        return YM_ENOENT;
    }
    ym_diag diag = {0};
    ym_err err = ym_state_file_parse((const unsigned char *)rep->str, rep->len, key, r->like,
                                     r->fp, r->mac_key, kind, meta, st, &diag);
    freeReplyObject(rep);
    if (err == YM_EFORMAT) {
        if (r->metrics)
            ym_metrics_add(r->metrics, YM_M_STORE_REFUSED, 1);
        char detail[700];
        snprintf(detail, sizeof(detail), "%s: %s", name, diag.msg);
        log_limited(r, "refused and deleted an entry", detail);
        ym_redistier_remove(r, key);
        return err;
    }
    if (err != YM_OK)
        return err;
    if (r->metrics)
        ym_metrics_add(r->metrics, YM_M_STORE_HITS, 1);
    return YM_OK;
}

ym_err ym_redistier_load_first(ym_redistier_t *r, const ym_skey *keys, int n, int *which,
                               ym_sc_kind *kind, ym_sc_meta *meta, ym_state_t **st)
{
    *st = NULL;
    *which = -1;
    if (n <= 0)
        return YM_ENOENT;
    /* One round trip for the whole walk: n EXISTS pipelined (replies of a few bytes), then a
     * GET for the first key held; a GET per key would cost n round trips, an MGET would move
     * every state held (up to n × 2.8 MB for a 130m model) to use one. */
    char(*names)[80] = malloc((size_t)n * sizeof(*names));
    unsigned char *held = calloc((size_t)n, 1);
    if (names == NULL || held == NULL) {
        free(names);
        free(held);
        return YM_ENOMEM;
    }
    for (int i = 0; i < n; i++)
        store_key(&keys[i], names[i]);
    pthread_mutex_lock(&r->rd.lock);
    redisContext *c = use(r, &r->rd);
    int ok = c != NULL;
    for (int i = 0; ok && i < n; i++)
        ok = redisAppendCommand(c, "EXISTS %s", names[i]) == REDIS_OK;
    for (int i = 0; ok && i < n; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(c, (void **)&rep) != REDIS_OK || rep == NULL) {
            ok = 0;
            break;
        }
        if (rep->type == REDIS_REPLY_INTEGER)
            held[i] = rep->integer > 0;
        else if (rep->type == REDIS_REPLY_ERROR)
            fail(r, "EXISTS refused", rep->str);
        freeReplyObject(rep);
    }
    if (c != NULL && !ok)
        drop(r, &r->rd, "EXISTS failed"); /* its replies may be half read: never reused */
    pthread_mutex_unlock(&r->rd.lock);
    free(names);
    ym_err err = YM_ENOENT;
    int n_missed = 0;
    for (int i = 0; i < n; i++) {
        if (!held[i]) {
            n_missed++;
            continue;
        }
        /* Gone since (expired, evicted) or refused: the next key held. */
        if ((err = ym_redistier_load(r, &keys[i], kind, meta, st)) == YM_OK) {
            *which = i;
            break;
        }
    }
    if (n_missed > 0 && r->metrics)
        ym_metrics_add(r->metrics, YM_M_STORE_MISSES, (uint64_t)n_missed);
    free(held);
    return *which >= 0 ? YM_OK : (err == YM_EFORMAT ? YM_EFORMAT : YM_ENOENT);
}

static void do_job(void *owner, const ym_writeq_job *j)
{
    ym_redistier_t *r = owner;
    char name[80];
    store_key(&j->key, name);
    const unsigned char *buf = NULL;
    unsigned char *own = NULL;
    size_t len = 0;
    double t0 = ym_now();
    if (!j->remove) {
        ym_err err = ym_writeq_job_bytes(j, r->fp, r->mac_key, &buf, &len, &own);
        if (err != YM_OK) {
            free(own);
            fail(r, "cannot format a state", ym_strerror(err));
            return;
        }
    }
    pthread_mutex_lock(&r->wr.lock);
    redisContext *c = use(r, &r->wr);
    redisReply *rep = NULL;
    if (c != NULL && j->remove)
        rep = redisCommand(c, "DEL %s", name);
    else if (c != NULL && r->ttl_s > 0)
        rep = redisCommand(c, "SET %s %b EX %llu", name, buf, len, (unsigned long long)r->ttl_s);
    else if (c != NULL)
        rep = redisCommand(c, "SET %s %b", name, buf, len);
    if (c != NULL && rep == NULL)
        drop(r, &r->wr, j->remove ? "DEL failed" : "SET failed");
    pthread_mutex_unlock(&r->wr.lock);
    free(own);
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR)
        fail(r, "the store refused a write", rep->str);
    else if (rep != NULL && !j->remove && r->metrics) {
        ym_metrics_add(r->metrics, YM_M_STORE_WRITES, 1);
        ym_metrics_observe(r->metrics, YM_H_STORE_WRITE, ym_now() - t0);
    }
    if (rep)
        freeReplyObject(rep);
}

void ym_redistier_write(ym_redistier_t *r, const ym_skey *key, ym_sc_kind kind,
                        const ym_sc_meta *meta, const ym_state_t *st, void (*done)(void *),
                        void *arg)
{
    ym_redistier_write_blob(r, key, kind, meta, st, NULL, done, arg);
}

void ym_redistier_write_blob(ym_redistier_t *r, const ym_skey *key, ym_sc_kind kind,
                             const ym_sc_meta *meta, const ym_state_t *st, ym_wblob *blob,
                             void (*done)(void *), void *arg)
{
    if (ym_writeq_write(&r->q, key, kind, meta, st, blob, done, arg) != YM_OK) {
        fail(r, "cannot queue a write", "out of memory");
        if (done)
            done(arg);
    }
}

void ym_redistier_remove(ym_redistier_t *r, const ym_skey *key)
{
    ym_writeq_remove(&r->q, key); /* out of memory: the entry stays until its TTL, if any */
}

void ym_redistier_flush(ym_redistier_t *r)
{
    ym_writeq_flush(&r->q);
}

ym_err ym_redistier_open(const ym_redistier_opts *o, const ym_state_t *like,
                         const unsigned char fp[32], ym_metrics_t *metrics, ym_redistier_t **out,
                         ym_diag *diag)
{
    *out = NULL;
    ym_redistier_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return YM_ENOMEM;
    if (ym_redis_url_parse(o->url, r->host, sizeof(r->host), &r->port, &r->db, diag) != 0) {
        free(r);
        return YM_EINVAL;
    }
    ym_err err = ym_state_new_like(like, &r->like);
    if (err != YM_OK) {
        free(r);
        return err;
    }
    r->ttl_s = o->ttl_s;
    r->timeout_ms = o->timeout_ms;
    memcpy(r->mac_key, o->mac_key, 32);
    memcpy(r->fp, fp, 32);
    r->metrics = metrics;
    pthread_mutex_init(&r->rd.lock, NULL);
    pthread_mutex_init(&r->wr.lock, NULL);
    pthread_mutex_init(&r->llock, NULL);
    if (ym_writeq_start(&r->q, do_job, r, "ym-store-writer") != YM_OK) {
        ym_state_free(r->like);
        free(r);
        return YM_ENOMEM;
    }
    *out = r;
    return YM_OK;
}

void ym_redistier_close(ym_redistier_t *r)
{
    if (r == NULL)
        return;
    ym_writeq_stop(&r->q); /* what is queued is sent first */
    if (r->rd.c)
        redisFree(r->rd.c);
    if (r->wr.c)
        redisFree(r->wr.c);
    ym_state_free(r->like);
    pthread_mutex_destroy(&r->rd.lock);
    pthread_mutex_destroy(&r->wr.lock);
    pthread_mutex_destroy(&r->llock);
    free(r);
}
