/* server/registry.c - the adapter registry: a small array, searched linearly (a server holds
 * hundreds of adapters at most; a lookup is a few string compares). Loop thread only. */
#include "server/registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ym_registry_deinit(ym_registry *reg)
{
    for (int i = 0; i < reg->n; i++)
        ym_adapter_unref(reg->v[i].adapter);
    free(reg->v);
    memset(reg, 0, sizeof(*reg));
}

static int index_of(const ym_registry *reg, const char *tenant, const char *name)
{
    for (int i = 0; i < reg->n; i++)
        if (strcmp(reg->v[i].tenant, tenant) == 0 && strcmp(reg->v[i].name, name) == 0)
            return i;
    return -1;
}

const ym_reg_entry *ym_registry_find(const ym_registry *reg, const char *tenant,
                                     const char *name)
{
    int i = index_of(reg, tenant, name);
    return i < 0 ? NULL : &reg->v[i];
}

int ym_registry_publish(ym_registry *reg, const char *tenant, const char *name, ym_adapter_t *a,
                        uint64_t version, size_t disk_bytes)
{
    int i = index_of(reg, tenant, name);
    if (i < 0) {
        if (reg->n == reg->cap) {
            int cap = reg->cap ? reg->cap * 2 : 16;
            ym_reg_entry *p = realloc(reg->v, (size_t)cap * sizeof(*p));
            if (p == NULL) {
                ym_adapter_unref(a);
                return -1;
            }
            reg->v = p;
            reg->cap = cap;
        }
        i = reg->n++;
        memset(&reg->v[i], 0, sizeof(reg->v[i]));
        snprintf(reg->v[i].tenant, sizeof(reg->v[i].tenant), "%s", tenant);
        snprintf(reg->v[i].name, sizeof(reg->v[i].name), "%s", name);
    }
    ym_reg_entry *e = &reg->v[i];
    ym_adapter_t *old = e->adapter;
    e->adapter = a;
    e->version = version;
    e->disk_bytes = disk_bytes;
    ym_adapter_info_get(a, &e->info);
    ym_adapter_unref(old); /* freed when its last running request ends */
    return 0;
}

int ym_registry_remove(ym_registry *reg, const char *tenant, const char *name)
{
    int i = index_of(reg, tenant, name);
    if (i < 0)
        return 0;
    ym_adapter_unref(reg->v[i].adapter);
    reg->v[i] = reg->v[--reg->n];
    return 1;
}

int ym_registry_count(const ym_registry *reg, const char *tenant)
{
    int n = 0;
    for (int i = 0; i < reg->n; i++)
        n += strcmp(reg->v[i].tenant, tenant) == 0;
    return n;
}

size_t ym_registry_bytes(const ym_registry *reg, const char *tenant)
{
    size_t n = 0;
    for (int i = 0; i < reg->n; i++)
        if (strcmp(reg->v[i].tenant, tenant) == 0)
            n += reg->v[i].disk_bytes;
    return n;
}
