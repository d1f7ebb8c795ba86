/* server/tenants.h - API keys and tenants (docs/ARCHITECTURE.md §6, conf/tenants.json).
 *
 * A tenants file maps hashed API keys to tenants and their limits:
 *   {"tenants": [{"name": "acme", "keys": ["sha256:<64 hex>", ...],
 *                 "max_concurrent": 8, "max_adapters": 16, "max_adapter_bytes": 104857600,
 *                 "admin": false}]}
 * An admin tenant's keys may also call the /admin routes (moving session states between
 * replicas).
 * Keys are stored as the SHA-256 of the key text (API keys are long random strings, so a fast
 * hash is the right one; `yunmind --new-key` makes a key and its line). A presented key is
 * hashed and compared with every stored hash in constant time (sodium_memcmp), all of them,
 * so neither timing nor early exit tells which part matched. Without a file the server runs
 * open: every request is tenant "default", with no limits.
 * A table is immutable after loading; a reload builds a new one. Loop thread. */
#ifndef YM_SERVER_TENANTS_H
#define YM_SERVER_TENANTS_H
#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

#define YM_TENANT_NAME_MAX 64

typedef struct ym_tenant {
    char name[YM_TENANT_NAME_MAX + 1]; /* [A-Za-z0-9._-]{1,64} */
    uint64_t max_concurrent;           /* requests in flight; 0 = no limit */
    uint64_t max_adapters;             /* 0 = no limit */
    uint64_t max_adapter_bytes;        /* 0 = no limit */
    int admin;                         /* may use the /admin routes (never in open mode) */
} ym_tenant;

typedef struct ym_tenants ym_tenants_t;

/* Parse a tenants file's text / read one. New table in *out (ym_tenants_free). */
ym_err ym_tenants_parse(const char *json, size_t len, ym_tenants_t **out, ym_diag *diag);
ym_err ym_tenants_load(const char *path, ym_tenants_t **out, ym_diag *diag);
/* The open table: one tenant "default" that every request belongs to. */
ym_err ym_tenants_open(ym_tenants_t **out);
void ym_tenants_free(ym_tenants_t *t); /* NULL-safe */
int ym_tenants_is_open(const ym_tenants_t *t);
int ym_tenants_count(const ym_tenants_t *t);
/* The tenant an Authorization header value ("Bearer KEY") belongs to, or NULL (missing,
 * malformed or unknown key). Borrowed from t. In open mode always "default". */
const ym_tenant *ym_tenants_auth(const ym_tenants_t *t, const char *authorization);
/* "sha256:<hex>" of a key, into out[72]. */
void ym_tenants_hash_key(const char *key, size_t len, char out[72]);
/* A new random key ("ym-" + 43 base64url characters), into out[48]. */
void ym_tenants_new_key(char out[48]);
/* Must run once before the above (sodium_init); 0 or -1. */
int ym_tenants_init(void);

#endif
