/* server/sessions.c - the session routes (docs/API.md "Sessions").
 *
 *   GET    /v1/sessions/{id}              the caller's session: tokens it holds, bytes
 *   DELETE /v1/sessions/{id}              forget it
 *   GET    /admin/sessions/{tenant}/{id}  a session's state as a blob (admin tenants only)
 *   PUT    /admin/sessions/{tenant}/{id}  store a blob as that session (admin tenants only)
 *
 * Loop thread. The cache is shared with the engine thread (its own lock); an entry read here
 * is pinned while it is serialized. Importing validates the blob like any upload: magic,
 * version, the model's fingerprint, dimensions, size, checksum, finite values. */
#include <jansson.h>
#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>

#include "server/request.h"
#include "server/sched.h"
#include "server/server.h"
#include "server/statecache.h"
#include "server/store.h"

size_t ym_server_state_bytes(const ym_server_t *srv)
{
    ym_state_t *st = NULL;
    if (ym_state_new_for_model(srv->model, &st) != YM_OK)
        return 0;
    size_t n = ym_scache_entry_bytes(st);
    ym_state_free(st);
    return n;
}

static ym_err cache_ready(ym_hreq *r, ym_diag *diag)
{
    if (r->srv->cache != NULL)
        return YM_OK;
    return ym_diag_param(diag, YM_ELOADING, NULL, "the model is still loading");
}

static ym_err check_id(ym_hreq *r, const char *id, ym_diag *diag)
{
    ym_diag d = {0};
    if (ym_session_id_check(id, strlen(id), (size_t)r->srv->conf.max_session_id_bytes, &d) ==
        YM_OK)
        return YM_OK;
    return ym_diag_param(diag, YM_EINVAL, "session_id", "%s", d.msg);
}

static json_t *session_object(const char *id, const ym_sc_entry *e)
{
    return json_pack("{s:s,s:s,s:I,s:I}", "id", id, "object", "session", "tokens",
                     (json_int_t)ym_sc_entry_state(e)->n_tokens, "bytes",
                     (json_int_t)ym_sc_entry_bytes(e));
}

static ym_err sessions(ym_hreq *r, const char *method, const char *url, ym_diag *diag)
{
    ym_server_t *srv = r->srv;
    const char *id = url + strlen("/v1/sessions/");
    ym_err err;
    if ((err = cache_ready(r, diag)) != YM_OK || (err = check_id(r, id, diag)) != YM_OK)
        return err;
    ym_skey key;
    ym_skey_session(&key, r->limits.name, id);
    if (strcmp(method, "DELETE") == 0) {
        if (ym_scache_remove(srv->cache, &key))
            ym_hreq_respond_json(r, 200, json_pack("{s:s,s:s,s:b}", "id", id, "object",
                                                   "session", "deleted", 1));
        else
            return ym_diag_param(diag, YM_ENOSESSION, NULL,
                                 "no session '%s'", id);
        return YM_OK;
    }
    ym_sc_entry *e = ym_scache_pin(srv->cache, &key);
    if (e == NULL) {
        return ym_diag_param(diag, YM_ENOSESSION, NULL, "no session '%s'",
                             id);
    }
    json_t *obj = session_object(id, e);
    ym_scache_unpin(srv->cache, e);
    ym_hreq_respond_json(r, 200, obj);
    return YM_OK;
}

/* Append mode: check the session exists and ran with the same adapters, and put its pending
 * token (the last one it sampled, never fed) before the new tokens. YM_OK, or the error with
 * diag (the caller answers it). */
ym_err ym_sessions_append(ym_hreq *r, ym_ids *ids, ym_gen_params *p, ym_diag *diag)
{
    ym_server_t *srv = r->srv;
    ym_skey key, root;
    ym_skey_session(&key, r->limits.name, r->session_id);
    ym_skey_root(&root, r->limits.name, r->identity);
    ym_sc_entry *e = srv->cache ? ym_scache_pin(srv->cache, &key) : NULL;
    if (e == NULL) {
        return ym_diag_param(diag, YM_ENOSESSION, "session_id",
                             "no session '%s' to append to (it may have been evicted): send "
                             "the whole prompt without session_append",
                             r->session_id);
    }
    const ym_sc_meta *m = ym_sc_entry_meta(e);
    int ok = m->appendable && ym_skey_equal(&m->root, &root);
    int32_t pending = m->pending;
    p->append = 1;
    p->append_serial = ym_sc_entry_serial(e);
    p->append_base = ym_sc_entry_state(e)->n_tokens;
    ym_scache_unpin(srv->cache, e);
    if (!ok)
        return ym_diag_param(diag, YM_EEXIST, "session_append",
                             "session '%s' ran with other adapters (or versions), or was "
                             "imported: send the whole prompt without session_append",
                             r->session_id);
    if (pending >= 0) {
        int32_t *v = realloc(ids->v, (ids->n + 1) * sizeof(int32_t));
        if (v == NULL)
            return ym_diag_set(diag, YM_ENOMEM, "out of memory");
        memmove(v + 1, v, ids->n * sizeof(int32_t));
        v[0] = pending;
        ids->v = v;
        ids->n++;
        ids->cap = ids->n;
    }
    return YM_OK;
}

/* /admin/sessions/{tenant}/{id}: split and check. */
static ym_err admin_target(ym_hreq *r, const char *url, char tenant[YM_TENANT_NAME_MAX + 1],
                           const char **id, ym_diag *diag)
{
    const char *t = url + strlen("/admin/sessions/");
    const char *slash = strchr(t, '/');
    size_t tl = slash ? (size_t)(slash - t) : 0;
    if (slash == NULL || tl == 0 || tl > YM_TENANT_NAME_MAX) {
        return ym_diag_param(diag, YM_EINVAL, NULL,
                             "the path must be /admin/sessions/{tenant}/{session_id}");
    }
    memcpy(tenant, t, tl);
    tenant[tl] = '\0';
    if (!ym_store_valid_name(tenant)) {
        return ym_diag_param(diag, YM_EINVAL, NULL,
                             "'%s' is not a tenant name", tenant);
    }
    *id = slash + 1;
    return check_id(r, *id, diag);
}

static ym_err admin_export(ym_hreq *r, const char *tenant, const char *id,
                          ym_diag *diag)
{
    ym_server_t *srv = r->srv;
    ym_skey key;
    ym_skey_session(&key, tenant, id);
    ym_sc_entry *e = ym_scache_pin(srv->cache, &key);
    if (e == NULL) {
        return ym_diag_param(diag, YM_ENOSESSION, NULL,
                             "tenant %s has no session '%s'", tenant, id);
    }
    const ym_state_t *st = ym_sc_entry_state(e);
    size_t n = ym_session_blob_size(st);
    char *blob = malloc(n);
    ym_err err = blob ? ym_session_blob_write(st, &ym_sc_entry_meta(e)->hist, srv->model_fp,
                                              blob, n)
                      : YM_ENOMEM;
    ym_scache_unpin(srv->cache, e);
    if (err != YM_OK) {
        free(blob);
        return ym_diag_param(diag, err == YM_ENOMEM ? YM_ENOMEM : YM_EIO, NULL,
                             "cannot export the session: %s",
                             ym_strerror(err));
    }
    ym_hreq_respond_text(r, 200, "application/octet-stream", blob, n);
    return YM_OK;
}

static ym_err admin_import(ym_hreq *r, const char *tenant, const char *id,
                          ym_diag *diag)
{
    ym_server_t *srv = r->srv;
    ym_state_t *st = NULL, *like = NULL;
    ym_skey key;
    ym_sc_meta meta = {.pending = -1}; /* not appendable: only the history hash travels */
    ym_diag d = {0};
    ym_err err = ym_state_new_for_model(srv->model, &like);
    if (err == YM_OK)
        err = ym_session_blob_read(r->body.p, r->body.len, like, srv->model_fp, &st, &meta.hist,
                                   &d);
    ym_state_free(like);
    if (err != YM_OK) {
        return ym_diag_param(diag, err == YM_ENOMEM ? YM_ENOMEM : YM_ESTATE, NULL,
                             "%s", d.msg[0] ? d.msg : ym_strerror(err));
    }
    int64_t n_tokens = st->n_tokens;
    size_t bytes = ym_scache_entry_bytes(st);
    ym_skey_session(&key, tenant, id);
    int rc = ym_scache_put(srv->cache, &key, YM_SC_SESSION, &meta, st); /* takes st */
    if (rc != 1) {
        return ym_diag_param(diag, YM_ECACHEFULL, NULL,
                             "the state cache cannot hold this session (%zu bytes; budget %zu)",
                             bytes, ym_scache_budget(srv->cache));
    }
    ym_metrics_add(srv->metrics, YM_M_CACHE_STORES, 1);
    ym_hreq_respond_json(r, 201, json_pack("{s:s,s:s,s:s,s:I,s:I}", "id", id, "object",
                                           "session", "tenant", tenant, "tokens",
                                           (json_int_t)n_tokens, "bytes", (json_int_t)bytes));
    return YM_OK;
}

static ym_err admin_sessions(ym_hreq *r, const char *method, const char *url, ym_diag *diag)
{
    char tenant[YM_TENANT_NAME_MAX + 1];
    const char *id = NULL;
    ym_err err;
    if ((err = cache_ready(r, diag)) != YM_OK ||
        (err = admin_target(r, url, tenant, &id, diag)) != YM_OK)
        return err;
    if (strcmp(method, "PUT") == 0)
        return admin_import(r, tenant, id, diag);
    return admin_export(r, tenant, id, diag);
}

/* GET /v1/sessions/{id}: the caller's session (tokens and bytes it holds). */
ym_err ym_sessions_get(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    return sessions(r, m->method, m->url, diag);
}

/* DELETE /v1/sessions/{id}: forget it. */
ym_err ym_sessions_delete(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    return sessions(r, m->method, m->url, diag);
}

/* GET /admin/sessions/{tenant}/{id}: export a session's state (admin tenants). */
ym_err ym_sessions_export(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    return admin_sessions(r, m->method, m->url, diag);
}

/* PUT /admin/sessions/{tenant}/{id}: import one. */
ym_err ym_sessions_import(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    return admin_sessions(r, m->method, m->url, diag);
}
