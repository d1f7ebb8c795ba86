/* server/store.h - adapters on disk: adapter_dir/<tenant>/<name> (docs/ARCHITECTURE.md §5).
 *
 * Layout, all inside the tenant's directory:
 *     <name>                   symlink -> .v/<name>.<version>   (the current version)
 *     .v/<name>.<version>/     the files of one version (never changed once complete)
 *     .tmp/                    uploads in progress, and symlinks about to be renamed
 * An upload is written into a fresh .tmp/up-XXXXXX directory, each file fsynced; validated;
 * then renamed into .v/ and published by renaming a new symlink over <name> (atomic: readers
 * see the old version or the new one, never a mix), and the tenant directory is fsynced. A
 * failed or interrupted upload leaves only a .tmp entry, removed on the next start. The
 * version is the upload time in milliseconds, so replicas sharing the volume agree on it.
 * Blocking file I/O: run on the libuv pool, except the short steps noted. */
#ifndef YM_SERVER_STORE_H
#define YM_SERVER_STORE_H
#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

#define YM_ADAPTER_NAME_MAX 64

/* [A-Za-z0-9._-]{1,64}, not starting with '.'. */
int ym_store_valid_name(const char *name);
/* A part path allowed inside an adapter directory: adapter_config.json,
 * adapter_model.safetensors, adapter_set.json, README.md, or SUB/ one of the first two and
 * README.md, SUB a valid name. Anything else (.., absolute paths, other files) -> 0. */
int ym_store_valid_part(const char *path);

/* Create adapter_dir/<tenant>/.tmp/up-XXXXXX; its path into tmp[cap]. */
ym_err ym_store_begin(const char *adapter_dir, const char *tenant, char *tmp, size_t cap,
                      ym_diag *diag);
/* Open tmp/<part> for writing (sub-directory created); fd or -1 (diag set). Loop thread ok:
 * a create is short. */
int ym_store_open_part(const char *tmp, const char *part, ym_diag *diag);
/* fsync + close a part's fd; 0 or -1. */
int ym_store_close_part(int fd);
/* fsync every regular file under dir, and the directories. */
void ym_store_sync(const char *dir);
/* Bytes of the regular files under dir. */
size_t ym_store_bytes(const char *dir);
/* Make tmp the current version of <name>: returns its version in *version, and in *replaced
 * the version it replaced (0 when there was none). */
ym_err ym_store_commit(const char *adapter_dir, const char *tenant, const char *name,
                       const char *tmp, uint64_t *version, uint64_t *replaced, ym_diag *diag);
/* Remove the current version of <name>. YM_ENOENT when there is none. */
ym_err ym_store_remove(const char *adapter_dir, const char *tenant, const char *name,
                       ym_diag *diag);
/* rm -rf path (best effort). */
void ym_store_rmtree(const char *path);

/* One stored adapter, as a scan finds it. */
typedef struct ym_stored {
    char name[YM_ADAPTER_NAME_MAX + 1];
    uint64_t version;
    char path[4096]; /* the version directory */
} ym_stored;
/* The current adapters of a tenant (removing stale .tmp entries when clean_tmp). New array in
 * *out (free()), count in *n. A missing directory is an empty list. */
ym_err ym_store_scan(const char *adapter_dir, const char *tenant, int clean_tmp, ym_stored **out,
                     int *n, ym_diag *diag);
/* Tenant directories present under adapter_dir: new array of names (free() each and it). */
ym_err ym_store_tenants(const char *adapter_dir, char ***out, int *n);

#endif
