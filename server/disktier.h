/* server/disktier.h - the state cache's disk tier (docs/SERVER.md "State tiers",
 * docs/FORMATS.md "State files").
 *
 * Below the RAM cache of server/statecache.h: every state the cache stores is also written to
 * one file of a directory, <64 hex digits of the key>.yst, by a writer thread (temp file +
 * rename, fsync only when asked), so sessions and prefix checkpoints survive a restart or a
 * crash. The files share a byte budget, least recently used removed first. A file carries a
 * keyed BLAKE2b MAC (the secret from the settings, or a random key kept in the directory as
 * state.key, mode 0600) over its whole content, on top of the state's own checksum: a file that
 * was corrupted or written without the key is refused, counted, logged (once per interval) and
 * deleted, and the request runs cold.
 *
 * Threads: any thread may call (one mutex for the index; reads are done by the caller, writes
 * and removals by the writer thread, in the order they were submitted). Must not: hold the
 * index lock during I/O; block the caller of ym_disktier_write on the disk. */
#ifndef YM_SERVER_DISKTIER_H
#define YM_SERVER_DISKTIER_H
#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"
#include "engine/state.h"
#include "server/metrics.h"
#include "server/statecache.h"

typedef struct ym_disktier ym_disktier_t;

typedef struct ym_disktier_opts {
    const char *dir;      /* created if missing (one level) */
    uint64_t budget;      /* bytes of files kept; 0 = no limit */
    int fsync;            /* fsync each file and the directory after the rename */
    const char *secret;   /* the MAC key's source; NULL or "" = a random key in dir/state.key */
} ym_disktier_opts;

/* Open (scan) the directory: stray temp files removed, the index rebuilt from the files there
 * (most recently modified = most recently used), the budget enforced; start the writer.
 * like: a state of the served model (copied: its dimensions); fp: the model's fingerprint.
 * metrics borrowed, may be NULL. New object in *out (ym_disktier_close). */
ym_err ym_disktier_open(const ym_disktier_opts *o, const ym_state_t *like,
                        const unsigned char fp[32], ym_metrics_t *metrics, ym_disktier_t **out,
                        ym_diag *diag);
/* Write everything queued, stop the writer, free. NULL-safe. */
void ym_disktier_close(ym_disktier_t *d);
/* Wait until every write and removal submitted so far is done. */
void ym_disktier_flush(ym_disktier_t *d);

/* 1 if a file for key is indexed. */
int ym_disktier_has(ym_disktier_t *d, const ym_skey *key);
/* Read key's state: YM_OK (new state in *st, kind and meta filled; the file becomes most
 * recent), YM_ENOENT (none), YM_EFORMAT (refused: bad MAC, checksum, model or dimensions; the
 * file is deleted), YM_EIO/YM_ENOMEM. */
ym_err ym_disktier_load(ym_disktier_t *d, const ym_skey *key, ym_sc_kind *kind,
                        ym_sc_meta *meta, ym_state_t **st);

/* Queue a write of st under key. st is borrowed until done(arg) is called (from the writer
 * thread, after the rename, or at once on failure to queue); done may be NULL only if st
 * outlives the tier. */
void ym_disktier_write(ym_disktier_t *d, const ym_skey *key, ym_sc_kind kind,
                       const ym_sc_meta *meta, const ym_state_t *st, void (*done)(void *),
                       void *arg);
/* As ym_disktier_write, with the file's bytes taken from (or formatted into) blob, which other
 * tiers writing the same state share (server/writeq.h). Takes over one reference of blob. */
typedef struct ym_wblob ym_wblob;
void ym_disktier_write_blob(ym_disktier_t *d, const ym_skey *key, ym_sc_kind kind,
                            const ym_sc_meta *meta, const ym_state_t *st, ym_wblob *blob,
                            void (*done)(void *), void *arg);
/* Queue the removal of key's file (after the writes queued before it). */
void ym_disktier_remove(ym_disktier_t *d, const ym_skey *key);

typedef struct ym_disktier_stats {
    uint64_t bytes, budget;
    int n_files;
    uint64_t writes, hits, misses, refused, errors, evictions;
} ym_disktier_stats;
void ym_disktier_get_stats(ym_disktier_t *d, ym_disktier_stats *out);

/* --- the file format, for tests and tools --- */
#define YM_STATE_FILE_HEADER 24
/* The file of a state: header, key, session meta, session blob, MAC. New buffer in *buf
 * (free()), its length in *len. mac_key: 32 bytes. */
ym_err ym_state_file_format(const ym_skey *key, ym_sc_kind kind, const ym_sc_meta *meta,
                            const ym_state_t *st, const unsigned char fp[32],
                            const unsigned char mac_key[32], unsigned char **buf, size_t *len);
/* Check and read a file's bytes (MAC first, then the key it names, then the blob). */
ym_err ym_state_file_parse(const unsigned char *buf, size_t len, const ym_skey *key,
                           const ym_state_t *like, const unsigned char fp[32],
                           const unsigned char mac_key[32], ym_sc_kind *kind, ym_sc_meta *meta,
                           ym_state_t **st, ym_diag *diag);
/* The MAC key made from a state_secret: BLAKE2b-256("yunmin state secret" NUL, secret). */
void ym_state_mac_key_from_secret(const char *secret, unsigned char out[32]);
/* The MAC key the tier uses (for tests: to forge or check a file). */
void ym_disktier_mac_key(const ym_disktier_t *d, unsigned char out[32]);

#endif
