/* server/registry.h - (tenant, adapter name) -> the current compiled adapter
 * (docs/ARCHITECTURE.md §5).
 *
 * Loop thread only: lookups at request admission, publishing after an upload or a rescan of
 * the store. An entry holds one reference to its adapter; a request takes its own at
 * admission and keeps the version it started with however often the entry is replaced, and
 * the old adapter is freed when its last request ends (ym_adapter_unref). */
#ifndef YM_SERVER_REGISTRY_H
#define YM_SERVER_REGISTRY_H
#include <stddef.h>
#include <stdint.h>

#include "adapters/adapter.h"
#include "server/store.h"
#include "server/tenants.h"

typedef struct ym_reg_entry {
    char tenant[YM_TENANT_NAME_MAX + 1];
    char name[YM_ADAPTER_NAME_MAX + 1];
    ym_adapter_t *adapter; /* one reference, owned */
    uint64_t version;      /* the store's version (upload time in ms) */
    size_t disk_bytes;     /* bytes of its files */
    ym_adapter_info info;
} ym_reg_entry;

typedef struct ym_registry {
    ym_reg_entry *v; /* owned [n] */
    int n, cap;
} ym_registry;

void ym_registry_deinit(ym_registry *reg); /* drops every reference */
/* The entry, or NULL. Borrowed until the registry changes. */
const ym_reg_entry *ym_registry_find(const ym_registry *reg, const char *tenant,
                                     const char *name);
/* Make `a` current for (tenant, name); takes over the caller's reference to a and drops the
 * old version's. 0, or -1 on no memory (then a is released). */
int ym_registry_publish(ym_registry *reg, const char *tenant, const char *name, ym_adapter_t *a,
                        uint64_t version, size_t disk_bytes);
/* Remove (tenant, name); 1 if it existed. */
int ym_registry_remove(ym_registry *reg, const char *tenant, const char *name);
/* A tenant's adapters: count and bytes on disk. */
int ym_registry_count(const ym_registry *reg, const char *tenant);
size_t ym_registry_bytes(const ym_registry *reg, const char *tenant);

#endif
