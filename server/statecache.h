/* server/statecache.h - recurrent states kept between requests (docs/ARCHITECTURE.md §7,
 * docs/SERVER.md).
 *
 * A Mamba sequence's whole context is its fixed-size state, so a finished sequence can be
 * resumed later by copying its state back instead of re-reading its tokens. Two kinds of entry
 * share one LRU byte budget:
 *   - session: key = H(tenant, session_id); holds the state after the last token the model
 *     consumed and the hash of that token history (ym_skey_history);
 *   - prefix checkpoint: key = a hash chain over (tenant, adapter identity, tokens) at a fixed
 *     token boundary (ym_skey_root, ym_skey_chain); holds the state after those tokens (prompt
 *     tokens, and generated ones: a client that sends a conversation back resumes too).
 * Keys are BLAKE2b-256 (libsodium): a tenant cannot forge another's key or history, and two
 * histories that hash alike do not happen by accident.
 *
 * Threads: every call may come from any thread (one mutex). The engine thread pins an entry
 * from RAM (ym_scache_pin_ram), copies its state and unpins it; lookups that may read the disk
 * or the store run before admission, off the engine thread; the loop thread deletes,
 * describes, exports and imports. A pinned entry is never evicted or freed: replacing or
 * deleting it only unlinks it, and the last unpin frees it. Ownership: ym_scache_put takes the
 * state it is given. */
#ifndef YM_SERVER_STATECACHE_H
#define YM_SERVER_STATECACHE_H
#include <sodium.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"
#include "engine/model.h"
#include "engine/state.h"
#include "server/metrics.h"

typedef struct ym_skey {
    unsigned char b[32];
} ym_skey;

typedef enum {
    YM_SC_SESSION = 0,
    YM_SC_PREFIX = 1,
} ym_sc_kind;

/* The key of a tenant's session. */
void ym_skey_session(ym_skey *k, const char *tenant, const char *session_id);
/* The root of a token chain: who runs it (tenant) and with which adapters (identity: the
 * adapter names and versions in order, "" for the base model). */
void ym_skey_root(ym_skey *k, const char *tenant, const char *identity);
/* Chain one block of tokens (a then b, either may be empty) onto prev: the key of the state
 * after them. Only the token sequence counts, not where it is split. k may equal prev. */
void ym_skey_chain(ym_skey *k, const ym_skey *prev, const int32_t *a, size_t na,
                   const int32_t *b, size_t nb);
/* The hash of a whole token history a..b (two parts, either may be empty) under root. */
void ym_skey_history(ym_skey *k, const ym_skey *root, const int32_t *a, size_t na,
                     const int32_t *b, size_t nb);
int ym_skey_equal(const ym_skey *a, const ym_skey *b);

/* The same history hash, computed as tokens arrive: the result depends only on the tokens, not
 * on how they were fed. Plain bytes: copy it to fork. */
typedef struct ym_shist {
    unsigned char s[sizeof(crypto_generichash_state)];
} ym_shist;
void ym_shist_init(ym_shist *h, const ym_skey *root);
void ym_shist_update(ym_shist *h, const int32_t *tokens, size_t n);
void ym_shist_final(const ym_shist *h, ym_skey *out); /* h itself is left as it was */

/* What a session entry knows besides its state. */
typedef struct ym_sc_meta {
    ym_skey hist;      /* hash of the token history the state consumed */
    ym_skey root;      /* the chain root it ran under (tenant, adapters): appendable only */
    ym_shist run;      /* the running hash after that history: appendable only */
    int appendable;    /* root and run are known (not for imported sessions) */
    int32_t pending;   /* the last sampled token, which the state has not consumed, or -1 */
} ym_sc_meta;

typedef struct ym_scache ym_scache_t;
typedef struct ym_sc_entry ym_sc_entry;

/* A cache of at most budget bytes (0: keeps nothing). Borrows metrics (may be NULL), where it
 * keeps the bytes, entries and evictions. New object in *out (ym_scache_free). */
ym_err ym_scache_new(size_t budget, ym_metrics_t *metrics, ym_scache_t **out);
/* Frees every entry; none may be pinned. NULL-safe. */
void ym_scache_free(ym_scache_t *c);
/* A new budget (a reload): evicts least recently used entries down to it. */
void ym_scache_set_budget(ym_scache_t *c, size_t budget);
size_t ym_scache_budget(ym_scache_t *c);

/* The entry under key, pinned and made most recent, or NULL. Unpin it when done. On a RAM
 * miss this reads the disk tier, then the store (a network round trip, bounded by the store's
 * timeout) and promotes what it finds: it blocks, so the engine thread never calls it (the
 * scheduler's lookup thread does, before admission; server/sched.h). */
ym_sc_entry *ym_scache_pin(ym_scache_t *c, const ym_skey *key);
/* The first of keys[0..n) (the caller's order of preference, e.g. the longest prefix first)
 * cached in any tier, pinned as ym_scache_pin pins it; its index in *which (else -1). The same
 * answer as ym_scache_pin on each key in turn, but the keys that neither RAM nor the disk tier
 * holds cost one store round trip together, not one each. Blocks as ym_scache_pin does. */
ym_sc_entry *ym_scache_pin_first(ym_scache_t *c, const ym_skey *keys, int n, int *which);
/* As ym_scache_pin, RAM only: never blocks on I/O (one mutex). The engine thread's lookup. */
ym_sc_entry *ym_scache_pin_ram(ym_scache_t *c, const ym_skey *key);
void ym_scache_unpin(ym_scache_t *c, ym_sc_entry *e); /* NULL-safe */
/* A pinned entry's contents (stable while pinned). */
const ym_state_t *ym_sc_entry_state(const ym_sc_entry *e);
const ym_sc_meta *ym_sc_entry_meta(const ym_sc_entry *e); /* sessions; zeros for prefixes */
uint64_t ym_sc_entry_serial(const ym_sc_entry *e); /* unique per put: tells replacements apart */
ym_sc_kind ym_sc_entry_kind(const ym_sc_entry *e);
size_t ym_sc_entry_bytes(const ym_sc_entry *e);
/* 1 if key is cached (and makes it most recent), else 0. */
int ym_scache_touch(ym_scache_t *c, const ym_skey *key);

/* Store st (taken over) under key, replacing what was there; meta may be NULL. Evicts least
 * recently used unpinned entries to make room. 1 stored; 0 not stored (larger than the budget,
 * or everything else pinned; st freed); -1 on no memory (st freed). */
int ym_scache_put(ym_scache_t *c, const ym_skey *key, ym_sc_kind kind, const ym_sc_meta *meta,
                  ym_state_t *st);
/* As ym_scache_put; with a disk tier, done(arg) is called once the state's file is written
 * (from the disk tier's writer thread), else at once. Called exactly once, whatever happens. */
int ym_scache_put_durable(ym_scache_t *c, const ym_skey *key, ym_sc_kind kind,
                          const ym_sc_meta *meta, ym_state_t *st, void (*done)(void *),
                          void *arg);
/* Drop key's entry (and its file): 1 if there was one. */
int ym_scache_remove(ym_scache_t *c, const ym_skey *key);

/* The tier below RAM (server/disktier.h), taken over (closed by ym_scache_free): every put is
 * written to it, a RAM miss reads from it and promotes what it finds. Set before use. */
typedef struct ym_disktier ym_disktier_t;
void ym_scache_set_disk(ym_scache_t *c, ym_disktier_t *d);
/* The shared store tier (server/redistier.h), taken over likewise: below disk. */
typedef struct ym_redistier ym_redistier_t;
void ym_scache_set_store(ym_scache_t *c, ym_redistier_t *r);
/* 1 if a disk tier or a store is set (a RAM miss may then be answered by I/O); c may be NULL. */
int ym_scache_has_tiers(const ym_scache_t *c);
/* Wait until every state put so far is on disk and in the store (no-op without them). */
void ym_scache_flush(ym_scache_t *c);

/* Memory a state of these dimensions takes in the cache (state plus bookkeeping). */
size_t ym_scache_entry_bytes(const ym_state_t *st);

typedef struct ym_scache_stats {
    size_t bytes, budget;
    int n_sessions, n_prefixes;
    uint64_t evictions;
} ym_scache_stats;
void ym_scache_get_stats(ym_scache_t *c, ym_scache_stats *out);

/* --- moving a session between replicas (docs/FORMATS.md "Session state") ---
 * A blob: "YMSS", version (u32 LE), the model's fingerprint (32 bytes), the history hash
 * (32 bytes), then the state as ym_state_serialize writes it. */
#define YM_SESSION_BLOB_HEADER 72

/* A fingerprint of a loaded model: its dimensions and a sample of every weight tensor. States
 * only move between replicas serving the same model. */
void ym_model_fingerprint(const ym_model_t *m, unsigned char out[32]);
size_t ym_session_blob_size(const ym_state_t *st);
/* Write the blob of st into buf (cap >= ym_session_blob_size). */
ym_err ym_session_blob_write(const ym_state_t *st, const ym_skey *hist, const unsigned char fp[32],
                             void *buf, size_t cap);
/* Read a blob for a model with this fingerprint whose states look like `like` (dimensions and
 * layout: ym_state_new_for_model): wrong magic, version, model, dimensions, size, checksum, a
 * non-finite value or an empty history -> YM_EFORMAT with a message. New state in *st
 * (ym_state_free). */
ym_err ym_session_blob_read(const void *buf, size_t len, const ym_state_t *like,
                            const unsigned char fp[32], ym_state_t **st, ym_skey *hist,
                            ym_diag *diag);

#endif
