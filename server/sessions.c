/* server/sessions.c - the session routes (docs/API.md "Sessions").
 *
 *   GET    /v1/sessions/{id}              the caller's session: tokens it holds, bytes
 *   DELETE /v1/sessions/{id}              forget it
 *   GET    /admin/sessions/{tenant}/{id}  a session's state as a blob (admin tenants only)
 *   PUT    /admin/sessions/{tenant}/{id}  store a blob as that session (admin tenants only)
 *
 * Loop thread, except one thing: a session that is not in RAM may be on disk or in the shared
 * store, and reading it blocks (the store's round trip, bounded by session_store_timeout_ms),
 * so with tiers set a RAM miss goes to the libuv pool (sess_work), and the loop answers from
 * the after-work callback (sess_after) while it serves every other connection meanwhile. The
 * pending read holds a reference to the request; a client gone meanwhile gets nothing. The
 * session_append check (ym_sessions_append) takes the entry its caller pinned, from RAM on the
 * loop or from the tiers on the pool (completions.c). The cache is shared with the engine
 * thread (its own lock); an entry read is pinned while it is described or serialized.
 * Importing validates the blob like any upload: magic, version, the model's fingerprint,
 * dimensions, size, checksum, finite values. Must not: call ym_scache_pin (it may block) on
 * the loop thread. */
#include <jansson.h>
#include <microhttpd.h>
#include <stdio.h>
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

static json_t *session_object(const char *id, int64_t n_tokens, size_t bytes)
{
    return json_pack("{s:s,s:s,s:I,s:I}", "id", id, "object", "session", "tokens",
                     (json_int_t)n_tokens, "bytes", (json_int_t)bytes);
}

/* The export blob of a pinned entry: *blob (new, malloc'd) and *n, or the error (*blob NULL).
 * Any thread. */
static ym_err export_blob(ym_server_t *srv, const ym_sc_entry *e, char **blob, size_t *n)
{
    const ym_state_t *st = ym_sc_entry_state(e);
    *n = ym_session_blob_size(st);
    if ((*blob = malloc(*n)) == NULL)
        return YM_ENOMEM;
    ym_err err = ym_session_blob_write(st, &ym_sc_entry_meta(e)->hist, srv->model_fp, *blob, *n);
    if (err != YM_OK) {
        free(*blob);
        *blob = NULL;
    }
    return err;
}

static ym_err export_error(ym_err err, ym_diag *diag)
{
    return ym_diag_param(diag, err == YM_ENOMEM ? YM_ENOMEM : YM_EIO, NULL,
                         "cannot export the session: %s", ym_strerror(err));
}

/* A session read that may go to the disk or the store: on the libuv pool. */
typedef struct ym_sess_job {
    uv_work_t work;
    ym_hreq *r;                   /* holds a reference */
    int export;                   /* the admin export (the blob), else GET's description */
    ym_skey key;
    char *id;                     /* owned */
    char tenant[YM_TENANT_NAME_MAX + 1];
    /* Written by sess_work, read by sess_after (uv_queue_work orders them): */
    ym_err err;                   /* YM_OK: answer 200 with what follows */
    ym_diag diag;
    int64_t n_tokens;
    size_t bytes;
    char *blob;                   /* owned: the export's bytes */
    size_t n_blob;
} ym_sess_job;

static void sess_work(uv_work_t *w) /* libuv pool: blocks on the disk or the store */
{
    ym_sess_job *job = w->data;
    ym_server_t *srv = job->r->srv; /* srv->cache and model_fp stay while requests run */
    ym_sc_entry *e = ym_scache_pin(srv->cache, &job->key);
    if (e == NULL) {
        if (job->export)
            job->err = ym_diag_param(&job->diag, YM_ENOSESSION, NULL,
                                     "tenant %s has no session '%s'", job->tenant, job->id);
        else
            job->err = ym_diag_param(&job->diag, YM_ENOSESSION, NULL, "no session '%s'",
                                     job->id);
        return;
    }
    job->n_tokens = ym_sc_entry_state(e)->n_tokens;
    job->bytes = ym_sc_entry_bytes(e);
    ym_err err = job->export ? export_blob(srv, e, &job->blob, &job->n_blob) : YM_OK;
    ym_scache_unpin(srv->cache, e);
    if (err != YM_OK)
        job->err = export_error(err, &job->diag);
}

static void sess_after(uv_work_t *w, int status) /* loop thread */
{
    ym_sess_job *job = w->data;
    ym_hreq *r = job->r;
    r->sess_job = NULL;
    /* Answered already: the client went away (the connection is closed) or the server
     * stopped while the read ran; nothing more is said. */
    if (!ym_hreq_answered(r)) {
        if (r->client_gone)
            ym_hreq_fail(r, YM_ECANCELED, NULL);
        else if (status != 0) {
            ym_diag d = {0};
            ym_hreq_fail(r, ym_diag_set(&d, YM_EIO, "the session read was cancelled"), &d);
        } else if (job->err != YM_OK)
            ym_hreq_fail(r, job->err, &job->diag);
        else if (job->export) {
            ym_hreq_respond_text(r, 200, "application/octet-stream", job->blob, job->n_blob);
            job->blob = NULL; /* taken */
        } else
            ym_hreq_respond_json(r, 200, session_object(job->id, job->n_tokens, job->bytes));
    }
    if (!ym_hreq_closed(r)) {
        ym_hreq_resume(r);
        ym_hreq_untrack(r);
        ym_httpd_kick(r->srv);
    }
    free(job->blob);
    free(job->id);
    free(job);
    ym_hreq_unref(r);
}

/* Read key's session on the pool and answer from there: YM_OK (under way), or the error. */
static ym_err sess_offload(ym_hreq *r, int export, const ym_skey *key, const char *tenant,
                           const char *id, ym_diag *diag)
{
    ym_sess_job *job = calloc(1, sizeof(*job));
    if (job == NULL || (job->id = strdup(id)) == NULL) {
        free(job);
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    }
    job->r = r;
    job->export = export;
    job->key = *key;
    snprintf(job->tenant, sizeof(job->tenant), "%s", tenant);
    job->work.data = job;
    r->refs++;
    r->sess_job = job;
    ym_hreq_track(r); /* a drain waits for it; the sweep notices a client leaving */
    ym_hreq_suspend(r);
    uv_queue_work(r->srv->loop, &job->work, sess_work, sess_after);
    return YM_OK;
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
    ym_sc_entry *e = ym_scache_pin_ram(srv->cache, &key);
    if (e == NULL && ym_scache_has_tiers(srv->cache))
        return sess_offload(r, 0, &key, r->limits.name, id, diag);
    if (e == NULL) {
        return ym_diag_param(diag, YM_ENOSESSION, NULL, "no session '%s'",
                             id);
    }
    json_t *obj = session_object(id, ym_sc_entry_state(e)->n_tokens, ym_sc_entry_bytes(e));
    ym_scache_unpin(srv->cache, e);
    ym_hreq_respond_json(r, 200, obj);
    return YM_OK;
}

/* Append mode: check the session exists and ran with the same adapters, and put its pending
 * token (the last one it sampled, never fed) before the new tokens. e is the session's entry,
 * pinned by the caller (taken over: unpinned here), or NULL when there is none. YM_OK, or the
 * error with diag (the caller answers it). */
ym_err ym_sessions_append(ym_hreq *r, ym_sc_entry *e, ym_ids *ids, ym_gen_params *p,
                          ym_diag *diag)
{
    ym_server_t *srv = r->srv;
    ym_skey root;
    ym_skey_root(&root, r->limits.name, r->identity);
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
    ym_sc_entry *e = ym_scache_pin_ram(srv->cache, &key);
    if (e == NULL && ym_scache_has_tiers(srv->cache))
        return sess_offload(r, 1, &key, tenant, id, diag);
    if (e == NULL) {
        return ym_diag_param(diag, YM_ENOSESSION, NULL,
                             "tenant %s has no session '%s'", tenant, id);
    }
    char *blob = NULL;
    size_t n = 0;
    ym_err err = export_blob(srv, e, &blob, &n);
    ym_scache_unpin(srv->cache, e);
    if (err != YM_OK)
        return export_error(err, diag);
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
