/* server/adapters.c - adapter upload, management and hot swap (docs/ARCHITECTURE.md §5, §6).
 *
 * Loop thread, except the work functions, which run on the libuv pool: an upload is streamed
 * part by part into a fresh directory of the store (server/store.c) as it arrives, never whole
 * in memory; at its end the pool validates and compiles it against the model
 * (ym_adapter_load), commits it on disk (atomic rename of a symlink), and the loop publishes
 * it in the registry. A failed upload removes its directory and changes nothing: the previous
 * version keeps serving. Requests hold a reference to the version they started with.
 *
 * Replicas sharing adapter_dir: a uv_fs_event watch on adapter_dir and each tenant directory
 * triggers a rescan (debounced), which loads versions it has not seen and drops removed names. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/log.h"
#include "server/multipart.h"
#include "server/server.h"

#define RESCAN_DELAY_MS 150

typedef struct ym_upload {
    uv_work_t work;
    ym_hreq *r; /* holds a reference while the work runs */
    ym_server_t *srv;
    char tenant[YM_TENANT_NAME_MAX + 1];
    char name[YM_ADAPTER_NAME_MAX + 1];
    char tmp[4096];
    ym_mp_t *mp;
    int fd;
    char part[256];
    size_t bytes, limit;
    int have_config, have_set;
    int failed; /* an error is in diag/err: answer it at the end */
    ym_err err;   /* the answer's status, type and code come from it (err.h) */
    ym_diag diag;
    /* results of the work */
    ym_adapter_t *adapter;
    uint64_t version;
    uint64_t replaced; /* the version this one replaced on disk, 0 if it is new */
    size_t disk_bytes;
    int committed;
} ym_upload;

static void upload_fail(ym_upload *u, ym_err err, const char *fmt, const char *arg)
{
    if (u->failed)
        return;
    u->failed = 1;
    u->err = err;
    if (fmt != NULL)
        snprintf(u->diag.msg, sizeof(u->diag.msg), fmt, arg);
}

/* --- multipart callbacks: each part becomes a file --- */

static int part_begin(void *arg, const char *name, ym_diag *diag)
{
    ym_upload *u = arg;
    if (!ym_store_valid_part(name)) {
        ym_diag_set(diag, YM_EINVAL,
                    "part \"%s\" is not a file of an adapter directory (adapter_config.json, "
                    "adapter_model.safetensors, adapter_set.json, SUB/...)",
                    name);
        return -1;
    }
    snprintf(u->part, sizeof(u->part), "%s", name);
    u->fd = ym_store_open_part(u->tmp, name, diag);
    if (u->fd < 0)
        return -1;
    u->have_config |= strcmp(name, "adapter_config.json") == 0;
    u->have_set |= strcmp(name, "adapter_set.json") == 0;
    return 0;
}

static int part_data(void *arg, const char *data, size_t len, ym_diag *diag)
{
    ym_upload *u = arg;
    u->bytes += len;
    if (u->bytes > u->limit) {
        if (!u->failed) {
            upload_fail(u, YM_EUPLOADBIG, NULL, NULL);
            snprintf(u->diag.msg, sizeof(u->diag.msg),
                     "the upload exceeds the %zu bytes this tenant may store", u->limit);
        }
        return -1;
    }
    while (len > 0) {
        ssize_t n = write(u->fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = errno;
            upload_fail(u, e == ENOSPC ? YM_ENOSPC : YM_EIO, "cannot write the upload: %s",
                        strerror(e));
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int part_end(void *arg, ym_diag *diag)
{
    ym_upload *u = arg;
    int rc = close(u->fd); /* fsync happens on the pool, before the commit */
    u->fd = -1;
    if (rc != 0) {
        upload_fail(u, YM_EIO, "cannot write the upload: %s", strerror(errno));
        return -1;
    }
    return 0;
}

static const ym_mp_cb upload_cb = {part_begin, part_data, part_end};

static void upload_free(ym_upload *u)
{
    if (u->fd >= 0)
        close(u->fd);
    ym_mp_free(u->mp);
    if (!u->committed && u->tmp[0] != '\0')
        ym_store_rmtree(u->tmp);
    ym_adapter_unref(u->adapter);
    free(u);
}

static json_t *describe(const ym_reg_entry *e, const char *base)
{
    json_t *targets = json_array();
    for (int p = 0; p < YM_PROJ_N; p++)
        if (e->info.targets & (1u << p))
            json_array_append_new(targets, json_string(ym_proj_name((ym_proj)p)));
    return json_pack("{s:s,s:s,s:s,s:s,s:o,s:i,s:I,s:I,s:I,s:I,s:I}", "id", e->name, "object",
                     "adapter", "type", e->info.kind, "base_model", base, "targets", targets,
                     "rank", e->info.r_max, "trainable_params", (json_int_t)e->info.n_params,
                     "bytes", (json_int_t)e->disk_bytes, "memory_bytes",
                     (json_int_t)e->info.bytes, "version", (json_int_t)e->version, "created",
                     (json_int_t)(e->version / 1000));
}

static const char *adapter_name(const char *url)
{
    return url + strlen("/v1/adapters/");
}

/* PUT /v1/adapters/{name}, its start: checks what needs no body (name, quota, size), opens
 * the upload. */
ym_err ym_adapters_put_begin(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    const char *url = m->url;
    ym_server_t *srv = r->srv;
    const char *name = adapter_name(url);
    if (srv->conf.adapter_dir[0] == '\0') {
        /* Permanent until the operator sets adapter_dir: 403, not a retryable 503. */
        return ym_diag_param(diag, YM_EUPLOADS_OFF, NULL,
                             "adapter uploads are disabled on this server (the operator sets "
                             "adapter_dir to enable them)");
    }
    if (srv->model == NULL) {
        return ym_diag_param(diag, YM_ELOADING, NULL, "the model is still loading");
    }
    if (srv->draining) {
        return ym_diag_param(diag, YM_EDRAINING, NULL, "the server is shutting down");
    }
    if (!ym_store_valid_name(name)) {
        return ym_diag_param(diag, YM_EINVAL, "name",
                             "adapter names are 1-64 characters of [A-Za-z0-9._-], not "
                             "starting with '.'");
    }
    if (strcmp(name, srv->model_name) == 0) {
        /* Never clears by itself: 400, not a retryable 409. */
        return ym_diag_param(diag, YM_ENAME, "name",
                             "'%s' is the base model's name", name);
    }
    uint64_t max_adapters = r->limits.max_adapters, max_bytes = r->limits.max_adapter_bytes;
    const ym_reg_entry *cur = ym_registry_find(&srv->registry, r->limits.name, name);
    if (cur == NULL && max_adapters > 0 &&
        (uint64_t)ym_registry_count(&srv->registry, r->limits.name) >= max_adapters) {
        /* Stays full until the tenant deletes one: 403, not a retryable 429. */
        return ym_diag_param(diag, YM_EQUOTA, NULL,
                             "tenant %s already has %llu adapters (its limit); delete one first",
                             r->limits.name, (unsigned long long)max_adapters);
    }
    size_t limit = (size_t)srv->conf.max_upload_bytes;
    if (max_bytes > 0) {
        size_t used = ym_registry_bytes(&srv->registry, r->limits.name) - (cur ? cur->disk_bytes : 0);
        size_t left = used >= max_bytes ? 0 : (size_t)max_bytes - used;
        if (left < limit)
            limit = left;
    }
    const char *cl = ym_hreq_header(r, "Content-Length");
    if (cl != NULL && strtoull(cl, NULL, 10) > limit + 64 * 1024) {
        return ym_diag_param(diag, YM_EUPLOADBIG, NULL,
                             "the upload is %s bytes; this tenant may store %zu more", cl, limit);
    }
    ym_upload *u = calloc(1, sizeof(*u));
    if (u == NULL) {
        return ym_diag_param(diag, YM_ENOMEM, NULL, "out of memory");
    }
    u->fd = -1;
    u->srv = srv;
    u->limit = limit;
    snprintf(u->tenant, sizeof(u->tenant), "%s", r->limits.name);
    snprintf(u->name, sizeof(u->name), "%s", name);
    ym_diag d = {0};
    ym_err err = ym_mp_new(ym_hreq_header(r, "Content-Type"),
                           &upload_cb, u, &u->mp, &d);
    if (err == YM_OK)
        err = ym_store_begin(srv->conf.adapter_dir, r->limits.name, u->tmp, sizeof(u->tmp), &d);
    if (err != YM_OK) {
        upload_free(u);
        return ym_diag_param(diag, err, NULL, "%s", d.msg);
    }
    r->upload = u;
    ym_hreq_track(r); /* a drain waits for it; a stop resumes it if it is suspended */
    return YM_OK;
}

/* PUT /v1/adapters/{name}: the body as it arrives, streamed to disk. */
void ym_adapters_put_data(ym_hreq *r, const char *data, size_t len)
{
    ym_upload *u = r->upload;
    if (u->failed)
        return; /* discard the rest; answered at the end */
    ym_diag d = {0};
    if (ym_mp_feed(u->mp, data, len, &d) != YM_OK && !u->failed) {
        u->failed = 1;
        u->err = YM_EINVAL;
        u->diag = d;
    }
}

static void upload_work(uv_work_t *w) /* libuv pool */
{
    ym_upload *u = w->data;
    ym_server_t *srv = u->srv;
    ym_store_sync(u->tmp);
    u->disk_bytes = ym_store_bytes(u->tmp);
    ym_adapter_limits lim = {.r_max = (int)srv->conf.max_adapter_rank,
                             .max_bytes = (size_t)srv->conf.max_upload_bytes};
    ym_err err = ym_adapter_load(u->tmp, srv->model, &lim, &u->adapter, &u->diag);
    if (err != YM_OK) {
        u->err = err;
        /* Whatever the loader refused is the adapter's fault: 422 invalid_adapter. */
        if (err != YM_EIO && err != YM_ENOMEM)
            u->err = YM_EFORMAT;
        return;
    }
    err = ym_store_commit(srv->conf.adapter_dir, u->tenant, u->name, u->tmp, &u->version,
                          &u->replaced, &u->diag);
    if (err != YM_OK) {
        u->err = err == YM_ENOMEM ? YM_ENOMEM : YM_EIO;
        return;
    }
    u->committed = 1;
}

/* msg with the upload's temporary directory cut out: "TMP/a/b.json: bad" -> "a/b.json: bad",
 * a bare "TMP" -> "the upload". */
static void cut_upload_dir(char *out, size_t cap, const char *msg, const char *tmp)
{
    size_t tl = strlen(tmp), o = 0;
    while (*msg && o + 1 < cap) {
        if (tl > 0 && strncmp(msg, tmp, tl) == 0) {
            msg += tl;
            if (*msg == '/') {
                msg++;
            } else {
                int k = snprintf(out + o, cap - o, "the upload");
                o = o + (size_t)k < cap ? o + (size_t)k : cap - 1;
            }
            continue;
        }
        out[o++] = *msg++;
    }
    out[o] = '\0';
}

static void upload_after(uv_work_t *w, int status) /* loop thread */
{
    ym_upload *u = w->data;
    ym_hreq *r = u->r;
    ym_server_t *srv = u->srv;
    /* New or replaced is what the store saw at the commit. The registry cannot tell: the
     * store watcher may already have loaded and published this very version. */
    int existed = u->replaced != 0;
    ym_hreq_untrack(r);
    if (u->committed) {
        /* On disk now: publish even if the client left, so memory matches the store. */
        ym_registry_publish(&srv->registry, u->tenant, u->name, ym_adapter_ref(u->adapter),
                            u->version, u->disk_bytes);
        ym_log(YM_LOG_INFO, r->id, "adapter %s/%s version %llu %s (%zu bytes)", u->tenant,
               u->name, (unsigned long long)u->version, existed ? "replaced" : "added",
               u->disk_bytes);
    }
    r->upload = NULL;
    if (!ym_hreq_closed(r)) {
        if (u->committed) {
            const ym_reg_entry *e = ym_registry_find(&srv->registry, u->tenant, u->name);
            ym_hreq_respond_json(r, existed ? 200 : 201, describe(e, srv->model_name));
        } else {
            /* Messages name files by their path in the upload, not on this server: the error
             * path cuts adapter_dir (where the upload's temporary directory is) out. */
            ym_diag d = {0};
            cut_upload_dir(d.msg, sizeof(d.msg),
                           u->diag.msg[0] ? u->diag.msg : ym_strerror(u->err), u->tmp);
            ym_hreq_fail(r, u->err, &d);
        }
        ym_hreq_resume(r);
        ym_httpd_kick(srv);
    }
    upload_free(u);
    ym_hreq_unref(r);
}

/* PUT /v1/adapters/{name}, the body complete: answers at once, or validates on the pool and
 * answers then. */
ym_err ym_adapters_put(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    ym_upload *u = r->upload;
    ym_diag d = {0};
    if (u->r != NULL) {
        /* Resumed while the pool validates it: only a stop does that (MHD must not stop with
         * a suspended connection). Its outcome is not known yet, so no answer would be true:
         * close the connection. The store stays whole either way (commits are atomic). */
        if (r->srv->stopping)
            ym_hreq_close(r);
        else
            ym_hreq_suspend(r);
        return YM_OK;
    }
    if (!u->failed && ym_mp_finish(u->mp, &d) != YM_OK) {
        u->failed = 1;
        u->err = YM_EINVAL;
        u->diag = d;
    }
    if (!u->failed && !u->have_config && !u->have_set) {
        u->failed = 1;
        u->err = YM_EINVAL;
        snprintf(u->diag.msg, sizeof(u->diag.msg),
                 "the upload has no adapter_config.json (nor adapter_set.json)");
    }
    if (u->failed) {
        ym_err err = ym_diag_param(diag, u->err, NULL, "%s",
                                   u->diag.msg[0] ? u->diag.msg : ym_strerror(u->err));
        r->upload = NULL;
        upload_free(u);
        return err;
    }
    u->r = r;
    r->refs++;
    u->work.data = u;
    ym_hreq_suspend(r);
    uv_queue_work(r->srv->loop, &u->work, upload_work, upload_after);
    return YM_OK; /* upload_after answers */
}

/* The connection ended before the upload's answer. */
void ym_adapters_put_abort(ym_hreq *r)
{
    ym_upload *u = r->upload;
    if (u == NULL || u->r != NULL)
        return; /* none, or the work owns it now */
    r->upload = NULL;
    upload_free(u);
}

/* --- GET / DELETE --- */

static ym_err adapters(ym_hreq *r, const char *method, const char *url, ym_diag *diag)
{
    ym_server_t *srv = r->srv;
    if (strcmp(url, "/v1/adapters") == 0) {
        json_t *data = json_array();
        for (int i = 0; i < srv->registry.n; i++)
            if (strcmp(srv->registry.v[i].tenant, r->limits.name) == 0)
                json_array_append_new(data, describe(&srv->registry.v[i], srv->model_name));
        ym_hreq_respond_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
        return YM_OK;
    }
    const char *name = adapter_name(url);
    const ym_reg_entry *e = ym_registry_find(&srv->registry, r->limits.name, name);
    if (e == NULL) {
        /* Another tenant's adapter answers exactly as a missing one: names do not leak. */
        return ym_diag_param(diag, YM_ENOADAPTER, "name",
                             "no adapter '%s'", name);
    }
    if (strcmp(method, "DELETE") == 0) {
        ym_diag d = {0};
        ym_err err = ym_store_remove(srv->conf.adapter_dir, r->limits.name, name, &d);
        if (err != YM_OK && err != YM_ENOENT) {
            return ym_diag_param(diag, err, NULL, "%s", d.msg);
        }
        ym_log(YM_LOG_INFO, r->id, "adapter %s/%s deleted", r->limits.name, name);
        ym_registry_remove(&srv->registry, r->limits.name, name);
        ym_hreq_respond_json(r, 200, json_pack("{s:s,s:s,s:b}", "id", name, "object", "adapter",
                                               "deleted", 1));
        return YM_OK;
    }
    ym_hreq_respond_json(r, 200, describe(e, srv->model_name));
    return YM_OK;
}

json_t *ym_adapters_models(ym_hreq *r)
{
    ym_server_t *srv = r->srv;
    json_t *out = json_array();
    for (int i = 0; i < srv->registry.n; i++) {
        const ym_reg_entry *e = &srv->registry.v[i];
        if (strcmp(e->tenant, r->limits.name) == 0)
            json_array_append_new(out, json_pack("{s:s,s:s,s:I,s:s,s:s}", "id", e->name,
                                                 "object", "model", "created",
                                                 (json_int_t)(e->version / 1000), "owned_by",
                                                 e->tenant, "parent", srv->model_name));
    }
    return out;
}

/* Append "name@version" (comma-separated) to r->identity at offset at; the bytes written. Names
 * are at most 64 bytes and a request composes at most 17, so the buffer holds them all. */
static size_t identity_add(ym_hreq *r, size_t at, const ym_reg_entry *e)
{
    int n = snprintf(r->identity + at, sizeof(r->identity) - at, "%s%s@%llu", at ? "," : "",
                     e->name, (unsigned long long)e->version);
    return n > 0 && (size_t)n < sizeof(r->identity) - at ? (size_t)n : 0;
}

ym_err ym_adapters_resolve(ym_hreq *r, const char *model, json_t *list, ym_adapter_t **out,
                           ym_diag *diag)
{
    ym_server_t *srv = r->srv;
    ym_adapter_t *parts[YM_ADAPTER_SET_MAX + 1];
    int n = 0;
    size_t id_len = 0;
    *out = NULL;
    r->identity[0] = '\0';
    if (model != NULL && strcmp(model, srv->model_name) != 0) {
        const ym_reg_entry *e = ym_registry_find(&srv->registry, r->limits.name, model);
        if (e == NULL) {
            return ym_diag_param(diag, YM_ENOMODEL, "model",
                                 "the model '%s' does not exist (this server serves '%s' and "
                                 "your adapters)",
                                 model, srv->model_name);
        }
        parts[n++] = e->adapter;
        id_len += identity_add(r, id_len, e);
    }
    for (size_t i = 0; list != NULL && i < json_array_size(list); i++) {
        const char *name = json_string_value(json_array_get(list, i));
        const ym_reg_entry *e = ym_registry_find(&srv->registry, r->limits.name, name);
        if (e == NULL) {
            return ym_diag_param(diag, YM_ENOADAPTER, "adapters", "no adapter '%s'", name);
        }
        parts[n++] = e->adapter;
        id_len += identity_add(r, id_len, e);
    }
    if (n == 0)
        return YM_OK;
    if (n == 1) {
        *out = ym_adapter_ref(parts[0]);
        return YM_OK;
    }
    ym_diag d = {0};
    ym_err err = ym_adapter_compose(parts, n, out, &d);
    if (err != YM_OK)
        return ym_diag_param(diag, err == YM_ENOMEM ? YM_ENOMEM : YM_EINVAL, "adapters",
                             "cannot compose these adapters: %s", d.msg);
    return YM_OK;
}

/* --- the store at start and when another replica changes it --- */

typedef struct ym_load_job {
    uv_work_t work;
    ym_server_t *srv;
    char tenant[YM_TENANT_NAME_MAX + 1];
    ym_stored *stored; /* owned [n] */
    int n;
    ym_adapter_t **loaded; /* [n], NULL where it failed */
    size_t *bytes;
    struct ym_load_job *next;
} ym_load_job;

static void watch_dir(ym_server_t *srv, const char *tenant);
static void on_rescan_timer(uv_timer_t *t);

static void load_work(uv_work_t *w) /* libuv pool */
{
    ym_load_job *j = w->data;
    ym_adapter_limits lim = {.r_max = (int)j->srv->conf.max_adapter_rank,
                             .max_bytes = (size_t)j->srv->conf.max_upload_bytes};
    for (int i = 0; i < j->n; i++) {
        ym_diag d = {0};
        if (ym_adapter_load(j->stored[i].path, j->srv->model, &lim, &j->loaded[i], &d) != YM_OK) {
            j->loaded[i] = NULL;
            ym_log(YM_LOG_ERROR, NULL, "adapter %s/%s (version %llu) refused, not loaded: %s",
                   j->tenant, j->stored[i].name, (unsigned long long)j->stored[i].version, d.msg);
        } else {
            j->bytes[i] = ym_store_bytes(j->stored[i].path);
        }
    }
}

static void load_after(uv_work_t *w, int status) /* loop thread */
{
    ym_load_job *j = w->data;
    ym_server_t *srv = j->srv;
    for (int i = 0; i < j->n; i++) {
        if (j->loaded[i] == NULL)
            continue;
        const ym_reg_entry *e = ym_registry_find(&srv->registry, j->tenant, j->stored[i].name);
        if (!srv->stopping && (e == NULL || e->version < j->stored[i].version)) {
            ym_registry_publish(&srv->registry, j->tenant, j->stored[i].name, j->loaded[i],
                                j->stored[i].version, j->bytes[i]);
            ym_log(YM_LOG_INFO, NULL, "adapter %s/%s version %llu loaded from the store",
                   j->tenant, j->stored[i].name, (unsigned long long)j->stored[i].version);
        } else {
            ym_adapter_unref(j->loaded[i]);
        }
    }
    free(j->stored);
    free(j->loaded);
    free(j->bytes);
    free(j);
    if (--srv->rescan_running == 0 && srv->rescan_again && !srv->stopping) {
        srv->rescan_again = 0;
        uv_timer_start(&srv->rescan_timer, on_rescan_timer, 0, 0);
    }
}

/* Compare the store with the registry: load new versions (pool), drop removed names. */
static void rescan(ym_server_t *srv, int clean_tmp)
{
    if (srv->conf.adapter_dir[0] == '\0' || srv->model == NULL || srv->stopping)
        return;
    if (srv->rescan_running > 0) {
        srv->rescan_again = 1;
        return;
    }
    char **tenants = NULL;
    int n_tenants = 0;
    ym_store_tenants(srv->conf.adapter_dir, &tenants, &n_tenants);
    for (int t = 0; t < n_tenants; t++) {
        watch_dir(srv, tenants[t]);
        ym_stored *st = NULL;
        int n = 0;
        ym_diag d = {0};
        if (ym_store_scan(srv->conf.adapter_dir, tenants[t], clean_tmp, &st, &n, &d) != YM_OK) {
            ym_log(YM_LOG_ERROR, NULL, "adapter store: %s", d.msg);
            continue;
        }
        /* Names gone from disk leave the registry. */
        for (int i = 0; i < srv->registry.n;) {
            ym_reg_entry *e = &srv->registry.v[i];
            int found = strcmp(e->tenant, tenants[t]) != 0;
            for (int k = 0; k < n && !found; k++)
                found = strcmp(st[k].name, e->name) == 0;
            if (!found) {
                ym_log(YM_LOG_INFO, NULL, "adapter %s/%s removed from the store", e->tenant,
                       e->name);
                ym_registry_remove(&srv->registry, e->tenant, e->name);
            } else {
                i++;
            }
        }
        int m = 0;
        for (int k = 0; k < n; k++) {
            const ym_reg_entry *e = ym_registry_find(&srv->registry, tenants[t], st[k].name);
            if (e == NULL || e->version < st[k].version)
                st[m++] = st[k];
        }
        if (m == 0) {
            free(st);
            continue;
        }
        ym_load_job *j = calloc(1, sizeof(*j));
        if (j == NULL || (j->loaded = calloc((size_t)m, sizeof(*j->loaded))) == NULL ||
            (j->bytes = calloc((size_t)m, sizeof(*j->bytes))) == NULL) {
            if (j)
                free(j->loaded);
            free(j);
            free(st);
            continue;
        }
        j->srv = srv;
        snprintf(j->tenant, sizeof(j->tenant), "%s", tenants[t]);
        j->stored = st;
        j->n = m;
        j->work.data = j;
        srv->rescan_running++;
        uv_queue_work(srv->loop, &j->work, load_work, load_after);
    }
    for (int t = 0; t < n_tenants; t++)
        free(tenants[t]);
    free(tenants);
}

static void on_rescan_timer(uv_timer_t *t)
{
    rescan(t->data, 0);
}

static void on_store_event(uv_fs_event_t *h, const char *file, int events, int status)
{
    ym_server_t *srv = h->data;
    if (file != NULL && file[0] == '.')
        return; /* .tmp / .v churn: the symlink rename is the event that matters */
    uv_timer_start(&srv->rescan_timer, on_rescan_timer, RESCAN_DELAY_MS, 0);
}

static void watch_dir(ym_server_t *srv, const char *tenant)
{
    for (int i = 0; i < srv->n_watches; i++)
        if (strcmp(srv->watch_names[i], tenant) == 0)
            return;
    if (srv->n_watches == srv->cap_watches) {
        /* uv handles must not move: allocate each watch separately. */
        int cap = srv->cap_watches ? srv->cap_watches * 2 : 16;
        void *names = realloc(srv->watch_names, (size_t)cap * sizeof(*srv->watch_names));
        if (names == NULL)
            return;
        srv->watch_names = names;
        uv_fs_event_t **ws = realloc(srv->watches, (size_t)cap * sizeof(uv_fs_event_t *));
        if (ws == NULL)
            return;
        srv->watches = ws;
        srv->cap_watches = cap;
    }
    uv_fs_event_t *h = malloc(sizeof(*h));
    if (h == NULL)
        return;
    char path[4096];
    if (tenant[0] == '\0')
        snprintf(path, sizeof(path), "%s", srv->conf.adapter_dir);
    else
        snprintf(path, sizeof(path), "%s/%s", srv->conf.adapter_dir, tenant);
    uv_fs_event_init(srv->loop, h);
    h->data = srv;
    if (uv_fs_event_start(h, on_store_event, path, 0) != 0) {
        uv_close((uv_handle_t *)h, (uv_close_cb)free);
        return;
    }
    srv->watches[srv->n_watches] = h;
    snprintf(srv->watch_names[srv->n_watches], sizeof(srv->watch_names[0]), "%s", tenant);
    srv->n_watches++;
}

void ym_adapters_start(ym_server_t *srv)
{
    uv_timer_init(srv->loop, &srv->rescan_timer);
    srv->rescan_timer.data = srv;
    if (srv->conf.adapter_dir[0] == '\0')
        return;
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "%s", srv->conf.adapter_dir);
    if (mkdir(cmd, 0755) != 0 && errno != EEXIST)
        ym_log(YM_LOG_ERROR, NULL, "cannot create adapter_dir %s: %s", cmd, strerror(errno));
    watch_dir(srv, "");
    rescan(srv, 1);
}

void ym_adapters_rescan(ym_server_t *srv)
{
    rescan(srv, 0);
}

void ym_adapters_stop(ym_server_t *srv)
{
    uv_timer_stop(&srv->rescan_timer);
    uv_close((uv_handle_t *)&srv->rescan_timer, NULL);
    for (int i = 0; i < srv->n_watches; i++) {
        uv_fs_event_t *h = srv->watches[i];
        uv_fs_event_stop(h);
        uv_close((uv_handle_t *)h, (uv_close_cb)free);
    }
    srv->n_watches = 0;
}

/* GET /v1/adapters: the caller's adapters. */
ym_err ym_adapters_list(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    return adapters(r, m->method, m->url, diag);
}

/* GET /v1/adapters/{name}: one of them. */
ym_err ym_adapters_get(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    return adapters(r, m->method, m->url, diag);
}

/* DELETE /v1/adapters/{name}. */
ym_err ym_adapters_delete(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    return adapters(r, m->method, m->url, diag);
}
