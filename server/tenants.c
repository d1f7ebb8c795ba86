/* server/tenants.c - the tenants file, key hashing and constant-time key lookup.
 * libsodium provides SHA-256, the constant-time comparison and the random keys. */
#include "server/tenants.h"

#include <jansson.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/fileio.h"

typedef struct tenant_entry {
    ym_tenant t;
    int n_keys;
    unsigned char (*keys)[crypto_hash_sha256_BYTES]; /* owned */
} tenant_entry;

struct ym_tenants {
    int open;
    int n;
    tenant_entry *v; /* owned, [n] */
};

int ym_tenants_init(void)
{
    return sodium_init() < 0 ? -1 : 0;
}

void ym_tenants_free(ym_tenants_t *t)
{
    if (t == NULL)
        return;
    for (int i = 0; i < t->n; i++)
        free(t->v[i].keys);
    free(t->v);
    free(t);
}

int ym_tenants_is_open(const ym_tenants_t *t)
{
    return t->open;
}

int ym_tenants_count(const ym_tenants_t *t)
{
    return t->n;
}

ym_err ym_tenants_open(ym_tenants_t **out)
{
    ym_tenants_t *t = calloc(1, sizeof(*t));
    if (t == NULL || (t->v = calloc(1, sizeof(*t->v))) == NULL) {
        free(t);
        return YM_ENOMEM;
    }
    t->open = 1;
    t->n = 1;
    strcpy(t->v[0].t.name, "default");
    *out = t;
    return YM_OK;
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > YM_TENANT_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return strcmp(s, ".") != 0 && strcmp(s, "..") != 0; /* names become directories */
}

static ym_err get_limit(json_t *o, const char *key, const char *who, uint64_t *dst,
                        ym_diag *diag)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL || json_is_null(v))
        return YM_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return ym_diag_param(diag, YM_EINVAL, key, "tenant %s: %s must be a non-negative integer",
                             who, key);
    *dst = (uint64_t)json_integer_value(v);
    return YM_OK;
}

static ym_err parse_entry(json_t *o, int index, tenant_entry *e, ym_diag *diag)
{
    if (!json_is_object(o))
        return ym_diag_set(diag, YM_EINVAL, "tenants[%d] must be an object", index);
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val) {
        if (strcmp(key, "name") && strcmp(key, "keys") && strcmp(key, "max_concurrent") &&
            strcmp(key, "max_adapters") && strcmp(key, "max_adapter_bytes") &&
            strcmp(key, "admin"))
            return ym_diag_param(diag, YM_EINVAL, key, "tenants[%d]: unknown field \"%s\"",
                                 index, key);
    }
    json_t *name = json_object_get(o, "name");
    if (!json_is_string(name) || strlen(json_string_value(name)) != json_string_length(name) ||
        !valid_name(json_string_value(name)))
        return ym_diag_param(diag, YM_EINVAL, "name",
                             "tenants[%d]: name must be 1-64 characters of [A-Za-z0-9._-]", index);
    strcpy(e->t.name, json_string_value(name));
    ym_err err;
    if ((err = get_limit(o, "max_concurrent", e->t.name, &e->t.max_concurrent, diag)) ||
        (err = get_limit(o, "max_adapters", e->t.name, &e->t.max_adapters, diag)) ||
        (err = get_limit(o, "max_adapter_bytes", e->t.name, &e->t.max_adapter_bytes, diag)))
        return err;
    json_t *admin = json_object_get(o, "admin");
    if (admin != NULL && !json_is_boolean(admin))
        return ym_diag_param(diag, YM_EINVAL, "admin", "tenant %s: admin must be true or false",
                             e->t.name);
    e->t.admin = admin != NULL && json_is_true(admin);
    json_t *keys = json_object_get(o, "keys");
    if (!json_is_array(keys) || json_array_size(keys) == 0 || json_array_size(keys) > 1024)
        return ym_diag_param(diag, YM_EINVAL, "keys",
                             "tenant %s: keys must be a list of 1-1024 \"sha256:<hex>\" hashes",
                             e->t.name);
    e->n_keys = (int)json_array_size(keys);
    if ((e->keys = calloc((size_t)e->n_keys, sizeof(*e->keys))) == NULL)
        return YM_ENOMEM;
    for (int k = 0; k < e->n_keys; k++) {
        json_t *h = json_array_get(keys, (size_t)k);
        const char *s = json_is_string(h) ? json_string_value(h) : NULL;
        size_t bin_len = 0;
        if (s == NULL || strncmp(s, "sha256:", 7) != 0 || strlen(s) != 7 + 64 ||
            sodium_hex2bin(e->keys[k], sizeof(e->keys[k]), s + 7, 64, NULL, &bin_len, NULL) !=
                0 ||
            bin_len != sizeof(e->keys[k]))
            return ym_diag_param(diag, YM_EINVAL, "keys",
                                 "tenant %s: keys[%d] is not \"sha256:\" and 64 hex digits (store "
                                 "hashes, never keys: yunmind --new-key)",
                                 e->t.name, k);
    }
    return YM_OK;
}

ym_err ym_tenants_parse(const char *json, size_t len, ym_tenants_t **out, ym_diag *diag)
{
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return ym_diag_set(diag, YM_EINVAL, "tenants file: %s (line %d)", jerr.text, jerr.line);
    ym_err err = YM_OK;
    ym_tenants_t *t = calloc(1, sizeof(*t));
    json_t *arr = json_object_get(root, "tenants");
    if (t == NULL) {
        err = YM_ENOMEM;
        goto fail;
    }
    if (!json_is_object(root) || json_object_size(root) != 1 || !json_is_array(arr) ||
        json_array_size(arr) == 0 || json_array_size(arr) > 100000) {
        err = ym_diag_set(diag, YM_EINVAL,
                          "tenants file: want {\"tenants\": [{\"name\": ..., \"keys\": [...]}]} "
                          "with at least one tenant");
        goto fail;
    }
    t->n = (int)json_array_size(arr);
    if ((t->v = calloc((size_t)t->n, sizeof(*t->v))) == NULL) {
        err = YM_ENOMEM;
        goto fail;
    }
    for (int i = 0; i < t->n; i++) {
        if ((err = parse_entry(json_array_get(arr, (size_t)i), i, &t->v[i], diag)) != YM_OK)
            goto fail;
        for (int j = 0; j < i; j++) {
            if (strcmp(t->v[j].t.name, t->v[i].t.name) == 0) {
                err = ym_diag_param(diag, YM_EINVAL, "name", "tenant %s appears twice",
                                    t->v[i].t.name);
                goto fail;
            }
            for (int a = 0; a < t->v[j].n_keys; a++)
                for (int b = 0; b < t->v[i].n_keys; b++)
                    if (memcmp(t->v[j].keys[a], t->v[i].keys[b], sizeof(t->v[i].keys[b])) == 0) {
                        err = ym_diag_param(diag, YM_EINVAL, "keys",
                                            "tenants %s and %s share a key", t->v[j].t.name,
                                            t->v[i].t.name);
                        goto fail;
                    }
        }
    }
    json_decref(root);
    *out = t;
    return YM_OK;
fail:
    json_decref(root);
    ym_tenants_free(t);
    return err;
}

ym_err ym_tenants_load(const char *path, ym_tenants_t **out, ym_diag *diag)
{
    *out = NULL;
    char *buf;
    size_t len;
    ym_err err = ym_read_file(path, (size_t)64 << 20, &buf, &len, diag);
    if (err != YM_OK)
        return err == YM_ENOENT ? YM_EIO : err; /* the message names the file */
    err = ym_tenants_parse(buf, len, out, diag);
    free(buf);
    return err;
}

void ym_tenants_hash_key(const char *key, size_t len, char out[72])
{
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)key, len);
    memcpy(out, "sha256:", 7);
    sodium_bin2hex(out + 7, 65, h, sizeof(h));
}

void ym_tenants_new_key(char out[48])
{
    unsigned char raw[32];
    randombytes_buf(raw, sizeof(raw));
    memcpy(out, "ym-", 3);
    sodium_bin2base64(out + 3, 45, raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

const ym_tenant *ym_tenants_auth(const ym_tenants_t *t, const char *authorization)
{
    if (t->open)
        return &t->v[0].t;
    if (authorization == NULL || strncasecmp(authorization, "Bearer ", 7) != 0)
        return NULL;
    const char *key = authorization + 7;
    while (*key == ' ')
        key++;
    size_t n = strlen(key);
    while (n > 0 && key[n - 1] == ' ')
        n--;
    if (n == 0 || n > 4096)
        return NULL;
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)key, n);
    /* Compare against every stored hash, whatever matched before. */
    const ym_tenant *found = NULL;
    for (int i = 0; i < t->n; i++)
        for (int k = 0; k < t->v[i].n_keys; k++)
            if (sodium_memcmp(h, t->v[i].keys[k], sizeof(h)) == 0)
                found = &t->v[i].t;
    return found;
}
