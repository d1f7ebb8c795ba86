/* server/statecache.c - the state cache: a hash table of entries on one LRU list.
 *
 * Owns: every entry and its state. Table: chained buckets indexed by the key's first 8 bytes
 * (the keys are BLAKE2b outputs, so they are uniform), doubled when the load passes 1. LRU:
 * an intrusive list, most recent at the head; eviction walks from the tail and skips pinned
 * entries. An entry leaves the table and the list when replaced, removed or evicted; it is
 * freed then, or at its last unpin if pinned. Bytes are counted while an entry is in the
 * table. */
#include "server/statecache.h"

#include <math.h>
#include <stdatomic.h>

#include "engine/ssd.h"
#include "server/disktier.h"
#include "server/redistier.h"
#include "server/writeq.h"
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

struct ym_sc_entry {
    ym_skey key;
    ym_sc_meta meta;
    uint64_t serial;
    ym_sc_kind kind;
    ym_state_t *st; /* owned */
    size_t bytes;
    int pins;
    int linked;     /* in the table and on the list */
    ym_sc_entry *hnext, *prev, *next;
};

struct ym_scache {
    pthread_mutex_t lock;
    ym_metrics_t *metrics; /* borrowed, may be NULL */
    ym_sc_entry **buckets;
    size_t n_buckets;      /* power of two */
    size_t n_entries;
    ym_sc_entry *head, *tail; /* LRU: head most recent */
    size_t bytes, budget;
    int n_kind[2];
    uint64_t evictions;
    uint64_t serial;
    ym_disktier_t *disk; /* owned, or NULL: the tier below RAM */
    ym_redistier_t *store; /* owned, or NULL: the shared tier below disk */
};

/* --- keys --- */

static void hash_parts(ym_skey *k, const char *tag, const void *a, size_t na, const void *b,
                       size_t nb)
{
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, sizeof(k->b));
    crypto_generichash_update(&h, (const unsigned char *)tag, strlen(tag) + 1);
    /* Lengths first, so ("ab","c") and ("a","bc") differ. */
    uint64_t len[2] = {na, nb};
    crypto_generichash_update(&h, (const unsigned char *)len, sizeof(len));
    if (na > 0)
        crypto_generichash_update(&h, a, na);
    if (nb > 0)
        crypto_generichash_update(&h, b, nb);
    crypto_generichash_final(&h, k->b, sizeof(k->b));
}

void ym_skey_session(ym_skey *k, const char *tenant, const char *session_id)
{
    hash_parts(k, "yunmin session", tenant, strlen(tenant), session_id, strlen(session_id));
}

void ym_skey_root(ym_skey *k, const char *tenant, const char *identity)
{
    hash_parts(k, "yunmin prefix", tenant, strlen(tenant), identity, strlen(identity));
}

/* BLAKE2b over tag, prev, then token ids as little-endian int32 (the host order: little-endian
 * only, checked at build). The tokens come last and unframed, so the hash can be computed as
 * they arrive (ym_shist); their count is implied by the input length, which BLAKE2b binds. */
static void tokens_begin(crypto_generichash_state *h, const char *tag, const ym_skey *prev)
{
    crypto_generichash_init(h, NULL, 0, sizeof(prev->b));
    crypto_generichash_update(h, (const unsigned char *)tag, strlen(tag) + 1);
    crypto_generichash_update(h, prev->b, sizeof(prev->b));
}

static void tokens_add(crypto_generichash_state *h, const int32_t *t, size_t n)
{
    if (n > 0)
        crypto_generichash_update(h, (const unsigned char *)t, n * sizeof(int32_t));
}

void ym_skey_chain(ym_skey *k, const ym_skey *prev, const int32_t *a, size_t na,
                   const int32_t *b, size_t nb)
{
    crypto_generichash_state h;
    tokens_begin(&h, "yunmin block", prev);
    tokens_add(&h, a, na);
    tokens_add(&h, b, nb);
    crypto_generichash_final(&h, k->b, sizeof(k->b));
}

void ym_shist_init(ym_shist *hs, const ym_skey *root)
{
    crypto_generichash_state h; /* aligned here; ym_shist holds its bytes */
    tokens_begin(&h, "yunmin history", root);
    memcpy(hs->s, &h, sizeof(h));
}

void ym_shist_update(ym_shist *hs, const int32_t *tokens, size_t n)
{
    crypto_generichash_state h;
    memcpy(&h, hs->s, sizeof(h));
    tokens_add(&h, tokens, n);
    memcpy(hs->s, &h, sizeof(h));
}

void ym_shist_final(const ym_shist *hs, ym_skey *out)
{
    crypto_generichash_state h;
    memcpy(&h, hs->s, sizeof(h));
    crypto_generichash_final(&h, out->b, sizeof(out->b));
}

void ym_skey_history(ym_skey *k, const ym_skey *root, const int32_t *a, size_t na,
                     const int32_t *b, size_t nb)
{
    ym_shist h;
    ym_shist_init(&h, root);
    ym_shist_update(&h, a, na);
    ym_shist_update(&h, b, nb);
    ym_shist_final(&h, k);
}

int ym_skey_equal(const ym_skey *a, const ym_skey *b)
{
    return memcmp(a->b, b->b, sizeof(a->b)) == 0;
}

/* --- the table --- */

static size_t bucket_of(const ym_scache_t *c, const ym_skey *k)
{
    uint64_t h;
    memcpy(&h, k->b, sizeof(h));
    return (size_t)h & (c->n_buckets - 1);
}

static ym_sc_entry *find(const ym_scache_t *c, const ym_skey *k)
{
    for (ym_sc_entry *e = c->buckets[bucket_of(c, k)]; e != NULL; e = e->hnext)
        if (ym_skey_equal(&e->key, k))
            return e;
    return NULL;
}

static void grow_table(ym_scache_t *c)
{
    size_t n = c->n_buckets * 2;
    ym_sc_entry **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < c->n_buckets; i++) {
        ym_sc_entry *e = c->buckets[i];
        while (e != NULL) {
            ym_sc_entry *next = e->hnext;
            uint64_t h;
            memcpy(&h, e->key.b, sizeof(h));
            size_t j = (size_t)h & (n - 1);
            e->hnext = b[j];
            b[j] = e;
            e = next;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->n_buckets = n;
}

static void lru_unlink(ym_scache_t *c, ym_sc_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(ym_scache_t *c, ym_sc_entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    else
        c->tail = e;
    c->head = e;
}

static void entry_free(ym_sc_entry *e)
{
    ym_state_free(e->st);
    free(e);
}

static void publish_stats(ym_scache_t *c)
{
    if (c->metrics == NULL)
        return;
    ym_metrics_set(c->metrics, YM_G_CACHE_BYTES, (int64_t)c->bytes);
    ym_metrics_set(c->metrics, YM_G_CACHE_BUDGET, (int64_t)c->budget);
    ym_metrics_set(c->metrics, YM_G_CACHE_SESSIONS, c->n_kind[YM_SC_SESSION]);
    ym_metrics_set(c->metrics, YM_G_CACHE_PREFIXES, c->n_kind[YM_SC_PREFIX]);
}

/* Take e out of the table and the list; free it unless pinned. */
static void detach(ym_scache_t *c, ym_sc_entry *e)
{
    ym_sc_entry **pp = &c->buckets[bucket_of(c, &e->key)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    e->hnext = NULL;
    lru_unlink(c, e);
    e->linked = 0;
    c->n_entries--;
    c->bytes -= e->bytes;
    c->n_kind[e->kind]--;
    if (e->pins == 0)
        entry_free(e);
}

/* Evict least recently used unpinned entries until need more bytes fit. 1 if they fit. */
static int make_room(ym_scache_t *c, size_t need)
{
    if (need > c->budget)
        return 0;
    ym_sc_entry *e = c->tail;
    while (c->bytes + need > c->budget && e != NULL) {
        ym_sc_entry *prev = e->prev;
        if (e->pins == 0) {
            detach(c, e);
            c->evictions++;
            if (c->metrics)
                ym_metrics_add(c->metrics, YM_M_CACHE_EVICTIONS, 1);
        }
        e = prev;
    }
    return c->bytes + need <= c->budget;
}

ym_err ym_scache_new(size_t budget, ym_metrics_t *metrics, ym_scache_t **out)
{
    *out = NULL;
    ym_scache_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return YM_ENOMEM;
    c->n_buckets = 64;
    if ((c->buckets = calloc(c->n_buckets, sizeof(*c->buckets))) == NULL) {
        free(c);
        return YM_ENOMEM;
    }
    if (sodium_init() < 0) {
        free(c->buckets);
        free(c);
        return YM_ENOMEM;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->budget = budget;
    c->metrics = metrics;
    publish_stats(c);
    *out = c;
    return YM_OK;
}

void ym_scache_free(ym_scache_t *c)
{
    if (c == NULL)
        return;
    ym_disktier_close(c->disk); /* writes what is queued; its callbacks unpin entries here */
    c->disk = NULL;
    ym_redistier_close(c->store);
    c->store = NULL;
    while (c->head != NULL) {
        ym_sc_entry *e = c->head;
        e->pins = 0;
        detach(c, e);
    }
    free(c->buckets);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

void ym_scache_set_budget(ym_scache_t *c, size_t budget)
{
    pthread_mutex_lock(&c->lock);
    c->budget = budget;
    make_room(c, 0);
    publish_stats(c);
    pthread_mutex_unlock(&c->lock);
}

size_t ym_scache_budget(ym_scache_t *c)
{
    pthread_mutex_lock(&c->lock);
    size_t b = c->budget;
    pthread_mutex_unlock(&c->lock);
    return b;
}

ym_sc_entry *ym_scache_pin_ram(ym_scache_t *c, const ym_skey *key)
{
    pthread_mutex_lock(&c->lock);
    ym_sc_entry *e = find(c, key);
    if (e != NULL) {
        e->pins++;
        lru_unlink(c, e);
        lru_push_front(c, e);
    }
    pthread_mutex_unlock(&c->lock);
    return e;
}

static int insert(ym_scache_t *c, const ym_skey *key, ym_sc_kind kind, const ym_sc_meta *meta,
                  ym_state_t *st, int to_disk, void (*done)(void *), void *arg,
                  ym_sc_entry **pinned);

/* Link e (pinned once, its state read from disk) as most recent, or, when RAM has no room
 * (a budget smaller than a state, or everything pinned), lend it unlinked: freed at its unpin.
 * If another thread promoted the key meanwhile, that entry is pinned instead. */
static ym_sc_entry *promote(ym_scache_t *c, ym_sc_entry *e)
{
    pthread_mutex_lock(&c->lock);
    ym_sc_entry *had = find(c, &e->key);
    if (had != NULL) {
        had->pins++;
        lru_unlink(c, had);
        lru_push_front(c, had);
        pthread_mutex_unlock(&c->lock);
        entry_free(e);
        return had;
    }
    if (make_room(c, e->bytes)) {
        if (c->n_entries >= c->n_buckets)
            grow_table(c);
        size_t b = bucket_of(c, &e->key);
        e->hnext = c->buckets[b];
        c->buckets[b] = e;
        lru_push_front(c, e);
        e->linked = 1;
        e->serial = ++c->serial;
        c->n_entries++;
        c->bytes += e->bytes;
        c->n_kind[e->kind]++;
    }
    publish_stats(c);
    pthread_mutex_unlock(&c->lock);
    return e;
}

static void write_back(ym_scache_t *c, ym_sc_entry *e);

/* A state read from a lower tier (taken over) as a pinned entry under key, promoted into RAM;
 * one from the store is written back to the disk tier. NULL on no memory. */
static ym_sc_entry *adopt(ym_scache_t *c, const ym_skey *key, ym_sc_kind kind,
                          const ym_sc_meta *meta, ym_state_t *st, int from_store)
{
    ym_sc_entry *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        ym_state_free(st);
        return NULL;
    }
    e->key = *key;
    e->meta = *meta;
    e->kind = kind;
    e->st = st;
    e->bytes = ym_scache_entry_bytes(st);
    e->pins = 1;
    ym_sc_entry *got = promote(c, e);
    if (got == e && from_store && c->disk != NULL)
        write_back(c, e);
    return got;
}

ym_sc_entry *ym_scache_pin(ym_scache_t *c, const ym_skey *key)
{
    ym_sc_entry *e = ym_scache_pin_ram(c, key);
    if (e != NULL || !ym_scache_has_tiers(c))
        return e;
    /* A RAM miss: the disk tier, then the store, without the lock; a state found there is
     * promoted into RAM. */
    ym_sc_kind kind;
    ym_sc_meta meta;
    ym_state_t *st = NULL;
    int from_store = 0;
    if (c->disk == NULL || ym_disktier_load(c->disk, key, &kind, &meta, &st) != YM_OK) {
        if (c->store == NULL || ym_redistier_load(c->store, key, &kind, &meta, &st) != YM_OK)
            return NULL;
        from_store = 1;
    }
    return adopt(c, key, kind, &meta, st, from_store);
}

/* In RAM or in the disk tier's index: learning it takes no I/O. */
static int held_near(ym_scache_t *c, const ym_skey *key)
{
    pthread_mutex_lock(&c->lock);
    int r = find(c, key) != NULL;
    pthread_mutex_unlock(&c->lock);
    return r || (c->disk != NULL && ym_disktier_has(c->disk, key));
}

ym_sc_entry *ym_scache_pin_first(ym_scache_t *c, const ym_skey *keys, int n, int *which)
{
    *which = -1;
    for (int base = 0; base < n;) {
        /* keys[base..i0) are in neither RAM nor on disk: the store answers for all of them in
         * one round trip (ym_redistier_load_first), where pinning each would cost one. */
        int i0 = base;
        while (i0 < n && !held_near(c, &keys[i0]))
            i0++;
        if (c->store != NULL && i0 > base) {
            ym_sc_kind kind;
            ym_sc_meta meta;
            ym_state_t *st = NULL;
            int j;
            if (ym_redistier_load_first(c->store, keys + base, i0 - base, &j, &kind, &meta,
                                        &st) == YM_OK) {
                ym_sc_entry *e = adopt(c, &keys[base + j], kind, &meta, st, 1);
                if (e != NULL) {
                    *which = base + j;
                    return e;
                }
            }
        }
        if (i0 == n)
            return NULL;
        ym_sc_entry *e = ym_scache_pin(c, &keys[i0]);
        if (e != NULL) {
            *which = i0;
            return e;
        }
        base = i0 + 1; /* evicted or refused since: go on with the shorter ones */
    }
    return NULL;
}

void ym_scache_unpin(ym_scache_t *c, ym_sc_entry *e)
{
    if (e == NULL)
        return;
    pthread_mutex_lock(&c->lock);
    if (--e->pins == 0 && !e->linked)
        entry_free(e);
    pthread_mutex_unlock(&c->lock);
}

const ym_state_t *ym_sc_entry_state(const ym_sc_entry *e)
{
    return e->st;
}

const ym_sc_meta *ym_sc_entry_meta(const ym_sc_entry *e)
{
    return &e->meta;
}

uint64_t ym_sc_entry_serial(const ym_sc_entry *e)
{
    return e->serial;
}

ym_sc_kind ym_sc_entry_kind(const ym_sc_entry *e)
{
    return e->kind;
}

size_t ym_sc_entry_bytes(const ym_sc_entry *e)
{
    return e->bytes;
}

int ym_scache_touch(ym_scache_t *c, const ym_skey *key)
{
    pthread_mutex_lock(&c->lock);
    ym_sc_entry *e = find(c, key);
    if (e != NULL) {
        lru_unlink(c, e);
        lru_push_front(c, e);
    }
    pthread_mutex_unlock(&c->lock);
    return e != NULL || (c->disk != NULL && ym_disktier_has(c->disk, key));
}

size_t ym_scache_entry_bytes(const ym_state_t *st)
{
    size_t offs = st->conv_off != NULL ? 2 * ((size_t)st->n_layer + 1) * sizeof(int64_t) : 0;
    return ym_state_floats(st) * sizeof(float) + offs + sizeof(ym_sc_entry) + sizeof(ym_state_t);
}

/* A written state file: the entry it was written from may go. */
typedef struct written {
    ym_scache_t *c;
    ym_sc_entry *e;
    void (*done)(void *);
    void *arg;
    atomic_int left; /* tiers still writing it */
} written;

static void on_written(void *arg)
{
    written *w = arg;
    if (atomic_fetch_sub(&w->left, 1) != 1)
        return;
    ym_scache_unpin(w->c, w->e);
    if (w->done)
        w->done(w->arg);
    free(w);
}

/* A state the store answered (e, pinned by the caller) is also written to the disk tier, so
 * the next miss finds it on disk, and a restart of this replica keeps it even when the store
 * has lost it. Not to the store again: it came from there. Nobody waits for the write; e is
 * pinned once more until its file is written. The write is queued under the lock and only
 * while e is still the key's entry (in the table, or lent because RAM had no room and never
 * linked), so a newer state put or a removal meanwhile is never overwritten by this older
 * one: the disk tier writes in queue order. (Left open: with no room in RAM, a newer state
 * put in the instant between the store's answer and this check is not seen here either.) */
static void write_back(ym_scache_t *c, ym_sc_entry *e)
{
    written *w = malloc(sizeof(*w));
    if (w == NULL)
        return;
    w->c = c;
    w->e = e;
    w->done = NULL;
    w->arg = NULL;
    /* Two counts: the disk tier's callback and ours below, so the unpin never runs under the
     * lock (the tier calls back at once when it cannot queue). */
    atomic_init(&w->left, 2);
    pthread_mutex_lock(&c->lock);
    ym_sc_entry *cur = find(c, &e->key);
    int current = cur == e || (cur == NULL && !e->linked && e->serial == 0);
    if (current) {
        e->pins++;
        ym_disktier_write(c->disk, &e->key, e->kind, &e->meta, e->st, on_written, w);
    }
    pthread_mutex_unlock(&c->lock);
    if (current)
        on_written(w);
    else
        free(w);
}

int ym_scache_put(ym_scache_t *c, const ym_skey *key, ym_sc_kind kind, const ym_sc_meta *meta,
                  ym_state_t *st)
{
    return insert(c, key, kind, meta, st, 1, NULL, NULL, NULL);
}

int ym_scache_put_durable(ym_scache_t *c, const ym_skey *key, ym_sc_kind kind,
                          const ym_sc_meta *meta, ym_state_t *st, void (*done)(void *),
                          void *arg)
{
    return insert(c, key, kind, meta, st, 1, done, arg, NULL);
}

/* Hand e (pinned once for all of them) to every tier below RAM. */
static void write_tiers(ym_scache_t *c, written *w, ym_sc_entry *e, int n_tiers,
                        void (*done)(void *), void *arg)
{
    w->c = c;
    w->e = e;
    w->done = done;
    w->arg = arg;
    atomic_init(&w->left, n_tiers);
    /* With both tiers, one blob: the state is formatted (checksum, MAC) once for the two. */
    ym_wblob *b = n_tiers > 1 ? ym_wblob_new(n_tiers) : NULL;
    if (c->disk != NULL)
        ym_disktier_write_blob(c->disk, &e->key, e->kind, &e->meta, e->st, b, on_written, w);
    if (c->store != NULL)
        ym_redistier_write_blob(c->store, &e->key, e->kind, &e->meta, e->st, b, on_written, w);
}

/* Put st in RAM (pinned into *pinned if asked) and, with to_disk, queue its file; done(arg) is
 * called exactly once: when the file is written, or at once when none is queued. */
static int insert(ym_scache_t *c, const ym_skey *key, ym_sc_kind kind, const ym_sc_meta *meta,
                  ym_state_t *st, int to_disk, void (*done)(void *), void *arg,
                  ym_sc_entry **pinned)
{
    if (pinned)
        *pinned = NULL;
    ym_sc_entry *e = calloc(1, sizeof(*e));
    int n_tiers = to_disk ? (c->disk != NULL) + (c->store != NULL) : 0;
    written *w = n_tiers > 0 ? malloc(sizeof(*w)) : NULL;
    if (e == NULL || (n_tiers > 0 && w == NULL)) {
        free(e);
        free(w);
        ym_state_free(st);
        if (done)
            done(arg);
        return -1;
    }
    e->key = *key;
    if (meta != NULL)
        e->meta = *meta;
    else
        e->meta.pending = -1;
    e->kind = kind;
    e->st = st;
    e->bytes = ym_scache_entry_bytes(st);
    pthread_mutex_lock(&c->lock);
    ym_sc_entry *old = find(c, key);
    if (old != NULL)
        detach(c, old);
    if (!make_room(c, e->bytes)) {
        publish_stats(c);
        pthread_mutex_unlock(&c->lock);
        if (w != NULL) {
            /* Too big for RAM, or RAM all pinned: the disk may still keep it. */
            e->pins = 1;
            write_tiers(c, w, e, n_tiers, done, arg);
            return 0;
        }
        entry_free(e);
        if (done)
            done(arg);
        return 0;
    }
    if (c->n_entries >= c->n_buckets)
        grow_table(c);
    size_t b = bucket_of(c, key);
    e->hnext = c->buckets[b];
    c->buckets[b] = e;
    lru_push_front(c, e);
    e->linked = 1;
    e->serial = ++c->serial;
    c->n_entries++;
    c->bytes += e->bytes;
    c->n_kind[kind]++;
    if (pinned) {
        e->pins++;
        *pinned = e;
    }
    if (w != NULL)
        e->pins++; /* until its file is written */
    publish_stats(c);
    pthread_mutex_unlock(&c->lock);
    if (w != NULL) {
        write_tiers(c, w, e, n_tiers, done, arg);
    } else if (done) {
        done(arg);
    }
    return 1;
}

int ym_scache_remove(ym_scache_t *c, const ym_skey *key)
{
    pthread_mutex_lock(&c->lock);
    ym_sc_entry *e = find(c, key);
    if (e != NULL)
        detach(c, e);
    publish_stats(c);
    pthread_mutex_unlock(&c->lock);
    int on_disk = c->disk != NULL && ym_disktier_has(c->disk, key);
    if (c->disk != NULL)
        ym_disktier_remove(c->disk, key); /* after any write of it still queued */
    if (c->store != NULL)
        ym_redistier_remove(c->store, key);
    return e != NULL || on_disk;
}

int ym_scache_has_tiers(const ym_scache_t *c)
{
    return c != NULL && (c->disk != NULL || c->store != NULL);
}

void ym_scache_set_disk(ym_scache_t *c, ym_disktier_t *d)
{
    c->disk = d;
}

void ym_scache_set_store(ym_scache_t *c, ym_redistier_t *r)
{
    c->store = r;
}

void ym_scache_flush(ym_scache_t *c)
{
    if (c != NULL && c->disk != NULL)
        ym_disktier_flush(c->disk);
    if (c != NULL && c->store != NULL)
        ym_redistier_flush(c->store);
}

void ym_scache_get_stats(ym_scache_t *c, ym_scache_stats *out)
{
    pthread_mutex_lock(&c->lock);
    out->bytes = c->bytes;
    out->budget = c->budget;
    out->n_sessions = c->n_kind[YM_SC_SESSION];
    out->n_prefixes = c->n_kind[YM_SC_PREFIX];
    out->evictions = c->evictions;
    pthread_mutex_unlock(&c->lock);
}

/* --- session blobs --- */

static void hash_floats(crypto_generichash_state *h, const float *v, size_t n)
{
    /* Up to 4096 evenly spaced values of each tensor: cheap at start, and two checkpoints
     * of one architecture differ in them. */
    uint64_t len = n;
    crypto_generichash_update(h, (const unsigned char *)&len, sizeof(len));
    if (v == NULL || n == 0)
        return;
    size_t step = n > 4096 ? n / 4096 : 1;
    for (size_t i = 0; i < n; i += step)
        crypto_generichash_update(h, (const unsigned char *)&v[i], sizeof(float));
}

/* A weight matrix: its type, then a sample of its values as f32 (dequantized). */
static void hash_weight(crypto_generichash_state *h, const ym_weight *w)
{
    int32_t t = (int32_t)w->type;
    crypto_generichash_update(h, (const unsigned char *)&t, sizeof(t));
    size_t n = (size_t)w->n_rows * (size_t)w->n_cols;
    uint64_t len = n;
    crypto_generichash_update(h, (const unsigned char *)&len, sizeof(len));
    size_t step = n > 4096 ? n / 4096 : 1;
    for (size_t i = 0; i < n; i += step) {
        float v = ym_weight_at(w, (int)(i / (size_t)w->n_cols), (int)(i % (size_t)w->n_cols));
        crypto_generichash_update(h, (const unsigned char *)&v, sizeof(v));
    }
}

void ym_model_fingerprint(const ym_model_t *m, unsigned char out[32])
{
    const ym_config *c = &m->cfg;
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    int64_t dims[] = {c->n_vocab, c->d_model, c->n_layer, c->d_inner, c->d_state, c->d_conv,
                      c->dt_rank};
    crypto_generichash_update(&h, (const unsigned char *)dims, sizeof(dims));
    if (c->arch != YM_ARCH_MAMBA1) { /* the architecture; Mamba-1's hash stays as it was */
        int64_t more[] = {c->arch, c->n_head, c->head_dim, c->n_group};
        crypto_generichash_update(&h, (const unsigned char *)more, sizeof(more));
    }
    if (c->arch == YM_ARCH_MAMBA2) { /* its layer's own tensors (engine/model.h) at the widths
                                       * the layer serves: a head profile keeps fewer heads */
        hash_weight(&h, &m->embed);
        hash_floats(&h, m->norm_f, (size_t)c->d_model);
        for (int l = 0; l < c->n_layer; l++) {
            const ym_layer *L = &m->layers[l];
            size_t nh = L->ssd_plan != NULL ? (size_t)L->ssd_plan->n_head : (size_t)c->n_head;
            size_t di = (size_t)L->d_inner, cc = di + 2 * (size_t)c->n_group * (size_t)c->d_state;
            hash_floats(&h, L->norm, (size_t)c->d_model);
            hash_weight(&h, &L->in_proj);
            hash_floats(&h, L->conv_w, cc * (size_t)c->d_conv);
            hash_floats(&h, L->conv_b, L->conv_b ? cc : 0);
            hash_floats(&h, L->dt_bias, nh);
            hash_floats(&h, L->A, nh);
            hash_floats(&h, L->D, nh);
            hash_floats(&h, L->gnorm, di);
            hash_weight(&h, &L->out_proj);
        }
        crypto_generichash_final(&h, out, 32);
        return;
    }
    size_t dm = (size_t)c->d_model, ds = (size_t)c->d_state, dr = (size_t)c->dt_rank;
    hash_weight(&h, &m->embed);
    hash_floats(&h, m->norm_f, dm);
    for (int l = 0; l < c->n_layer; l++) {
        const ym_layer *L = &m->layers[l];
        size_t di = (size_t)L->d_inner;
        hash_floats(&h, L->norm, dm);
        hash_weight(&h, &L->in_proj);
        hash_floats(&h, L->conv_w, di * (size_t)c->d_conv);
        hash_floats(&h, L->conv_b, L->conv_b ? di : 0);
        hash_weight(&h, &L->x_proj);
        hash_floats(&h, L->dt_proj_w, di * dr);
        hash_floats(&h, L->dt_proj_b, di);
        hash_floats(&h, L->A, di * ds);
        hash_floats(&h, L->D, di);
        hash_weight(&h, &L->out_proj);
    }
    crypto_generichash_final(&h, out, 32);
}

#define BLOB_MAGIC "YMSS"
#define BLOB_VERSION 1u

size_t ym_session_blob_size(const ym_state_t *st)
{
    return YM_SESSION_BLOB_HEADER + ym_state_serialized_size(st);
}

ym_err ym_session_blob_write(const ym_state_t *st, const ym_skey *hist, const unsigned char fp[32],
                             void *buf, size_t cap)
{
    if (cap < ym_session_blob_size(st))
        return YM_EINVAL;
    unsigned char *p = buf;
    memcpy(p, BLOB_MAGIC, 4);
    for (int i = 0; i < 4; i++)
        p[4 + i] = (unsigned char)(BLOB_VERSION >> (8 * i));
    memcpy(p + 8, fp, 32);
    memcpy(p + 40, hist->b, 32);
    size_t n = 0;
    return ym_state_serialize(st, p + YM_SESSION_BLOB_HEADER, cap - YM_SESSION_BLOB_HEADER, &n);
}

ym_err ym_session_blob_read(const void *buf, size_t len, const ym_state_t *like,
                            const unsigned char fp[32], ym_state_t **st, ym_skey *hist,
                            ym_diag *diag)
{
    const unsigned char *p = buf;
    *st = NULL;
    if (len < YM_SESSION_BLOB_HEADER)
        return ym_diag_set(diag, YM_EFORMAT, "session state: %zu bytes, shorter than its header",
                           len);
    if (memcmp(p, BLOB_MAGIC, 4) != 0)
        return ym_diag_set(diag, YM_EFORMAT, "session state: not a yunmin session (bad magic)");
    uint32_t version = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                       (uint32_t)p[7] << 24;
    if (version != BLOB_VERSION)
        return ym_diag_set(diag, YM_EFORMAT, "session state: version %u, this server reads %u",
                           version, BLOB_VERSION);
    if (sodium_memcmp(p + 8, fp, 32) != 0)
        return ym_diag_set(diag, YM_EFORMAT,
                           "session state: made by another model than the one served here");
    ym_state_t *s = NULL;
    ym_err err = ym_state_new_like(like, &s);
    if (err != YM_OK)
        return err;
    if ((err = ym_state_deserialize(s, p + YM_SESSION_BLOB_HEADER, len - YM_SESSION_BLOB_HEADER,
                                    diag)) != YM_OK) {
        ym_state_free(s);
        return err;
    }
    size_t n = ym_state_floats(s);
    size_t nc = n - (s->ssm_off != NULL ? (size_t)s->ssm_off[s->n_layer]
                                       : (size_t)s->n_layer * s->d_inner * (size_t)s->d_state);
    for (size_t i = 0; i < n; i++) {
        float v = i < nc ? s->conv[i] : s->ssm[i - nc];
        if (!isfinite(v)) {
            ym_state_free(s);
            return ym_diag_set(diag, YM_EFORMAT, "session state: value %zu is not finite", i);
        }
    }
    if (s->n_tokens <= 0 || s->n_tokens > (int64_t)1 << 40) {
        ym_state_free(s);
        return ym_diag_set(diag, YM_EFORMAT, "session state: token count out of range");
    }
    memcpy(hist->b, p + 40, 32);
    *st = s;
    return YM_OK;
}
