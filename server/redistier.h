/* server/redistier.h - the state cache's shared store tier: Redis 7 or Valkey through hiredis
 * (docs/SERVER.md "State tiers").
 *
 * Below RAM and disk: every state the cache stores is also SET (with a TTL) under
 * "yunmin:state:<64 hex digits of the key>", as the MAC'd state file of docs/FORMATS.md
 * "State files", so replicas sharing the store and the secret resume each other's sessions.
 * The store is optional help, never a dependency: every command has a bounded timeout; after a
 * failure the tier stays away for a backoff (doubling, up to a few seconds) and answers misses
 * at once meanwhile; errors are counted and logged at most once per interval; a refused entry
 * (bad MAC, checksum, model) is counted, logged and deleted. Requests then run cold.
 *
 * Threads: reads run in the caller's thread on a connection of their own (one mutex); writes
 * and deletions run on a writer thread with its own connection, in submission order. */
#ifndef YM_SERVER_REDISTIER_H
#define YM_SERVER_REDISTIER_H
#include <stdint.h>

#include "engine/err.h"
#include "engine/state.h"
#include "server/metrics.h"
#include "server/statecache.h"

typedef struct ym_redistier ym_redistier_t;

typedef struct ym_redistier_opts {
    const char *url;          /* redis://host:port/db (port 6379 and db 0 by default) */
    uint64_t ttl_s;           /* expiry of each entry, refreshed by each write; 0 = none */
    uint64_t timeout_ms;      /* bound on connecting and on each command */
    const unsigned char *mac_key; /* 32 bytes: the same on every replica */
} ym_redistier_opts;

/* Parse the URL and start the writer; the store need not be up. New object in *out. */
ym_err ym_redistier_open(const ym_redistier_opts *o, const ym_state_t *like,
                         const unsigned char fp[32], ym_metrics_t *metrics, ym_redistier_t **out,
                         ym_diag *diag);
void ym_redistier_close(ym_redistier_t *r); /* writes what is queued (bounded), NULL-safe */
void ym_redistier_flush(ym_redistier_t *r);
/* As ym_disktier_load: YM_OK, YM_ENOENT (none, or the store is down), YM_EFORMAT (refused). */
ym_err ym_redistier_load(ym_redistier_t *r, const ym_skey *key, ym_sc_kind *kind,
                         ym_sc_meta *meta, ym_state_t **st);
/* The first of keys[0..n) (the caller's order of preference) the store holds, loaded as
 * ym_redistier_load does; its index in *which (else -1). One pipelined round trip of EXISTS for
 * all n keys, then a GET of the first one held (the next one held if that one is gone or
 * refused). YM_OK, YM_ENOENT (none, or the store is down), YM_EFORMAT (every one held refused),
 * YM_ENOMEM. Blocks up to timeout_ms per reply; any thread. */
ym_err ym_redistier_load_first(ym_redistier_t *r, const ym_skey *keys, int n, int *which,
                               ym_sc_kind *kind, ym_sc_meta *meta, ym_state_t **st);
/* As ym_disktier_write: st borrowed until done(arg), which is always called once. */
void ym_redistier_write(ym_redistier_t *r, const ym_skey *key, ym_sc_kind kind,
                        const ym_sc_meta *meta, const ym_state_t *st, void (*done)(void *),
                        void *arg);
/* As ym_disktier_write_blob: the entry's bytes shared with the disk tier's file. */
typedef struct ym_wblob ym_wblob;
void ym_redistier_write_blob(ym_redistier_t *r, const ym_skey *key, ym_sc_kind kind,
                             const ym_sc_meta *meta, const ym_state_t *st, ym_wblob *blob,
                             void (*done)(void *), void *arg);
void ym_redistier_remove(ym_redistier_t *r, const ym_skey *key);
/* Parse redis://host:port/db: 0, or -1 with a message in diag. */
int ym_redis_url_parse(const char *url, char *host, size_t host_cap, int *port, int *db,
                       ym_diag *diag);

#endif
