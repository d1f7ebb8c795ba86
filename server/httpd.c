/* server/httpd.c - the HTTP transport: libmicrohttpd inside the libuv loop
 * (docs/ARCHITECTURE.md §2).
 *
 * Owns: the MHD daemon and its uv_poll / uv_timer, each request's ym_hreq from MHD's first
 * access callback to its completed callback, request bodies, suspension and resumption, SSE
 * framing, the held early answers, CORS, and the one error writer (status, type and code from
 * err.h's table). Runs: loop thread only. Must not: know any route's behaviour: it matches a
 * request against the route table it was given (server/router.h; the table is routes.c's),
 * checks the key the route needs and the body limit, and calls the route's handler; handlers
 * answer through the ym_hreq_respond_* functions and never touch MHD.
 *
 * A request's life, one ym_phase (docs/ARCHITECTURE.md §2, "A request's phases"): HEADERS or
 * BODY, then WORK, then ANSWERED or STREAMING, then CLOSED; an early answer is HELD. The first
 * access callback matches the route, authenticates, and answers what needs no body
 * (preflight, 401/403, 404/405, a body announced too large); the body is
 * collected (413 past the route's limit) or handed to the route's body hooks as it arrives;
 * the final callback runs the handler. An answer given before the body has been read is held
 * until the rest of the body has been read and dropped (queue()). A generation suspends its
 * connection while it waits: a non-streaming one until the job finishes (the response is then
 * queued on the suspended connection and it is resumed), a stream whenever the SSE reader has
 * nothing to send. on_out_ready resumes connections whose jobs produced output, through the
 * request's on_output hook.
 *
 * A suspended connection is invisible to MHD, so it would not notice a client leaving; the
 * sweep timer peeks at each suspended socket (recv MSG_PEEK) and cancels the job of a client
 * that hung up. The same timer sends ': ping' to streams still waiting for their first token. */
#include "server/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "engine/log.h"
#include "engine/utf8.h"

#define SWEEP_MS 200
/* Body bytes an early answer drops at least before it gives up on the client (queue()). */
#define DRAIN_MIN (64ull << 20)

void ym_hreq_track(ym_hreq *r)
{
    ym_server_t *srv = r->srv;
    if (r->tracked)
        return;
    r->tracked = 1;
    r->prev = NULL;
    r->next = srv->gens;
    if (srv->gens)
        srv->gens->prev = r;
    srv->gens = r;
    srv->n_gens++;
}

void ym_hreq_untrack(ym_hreq *r)
{
    ym_server_t *srv = r->srv;
    if (!r->tracked)
        return;
    r->tracked = 0;
    if (r->prev)
        r->prev->next = r->next;
    else
        srv->gens = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    srv->n_gens--;
}

/* --- JSON text: a string body part, invalid UTF-8 replaced --- */

json_t *ym_json_text(const char *s, size_t len)
{
    json_t *v = json_stringn(s, len);
    if (v != NULL)
        return v;
    /* jansson takes valid UTF-8 only: each invalid subpart becomes U+FFFD (engine/utf8.h). */
    ym_buf clean = YM_BUF_INIT;
    ym_err err;
    ym_utf8_lossy(&clean, (const unsigned char *)s, len, true, &err);
    v = err == YM_OK ? json_stringn(clean.p, clean.len) : NULL;
    ym_buf_deinit(&clean);
    return v;
}

/* The request's Origin when allowed_origins lets it in, else NULL (borrowed from MHD). */
static const char *allowed_origin(ym_hreq *r)
{
    const char *origin = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Origin");
    const char *list = r->srv->conf.allowed_origins;
    if (origin == NULL || origin[0] == '\0' || list == NULL)
        return NULL;
    size_t n = strlen(origin);
    for (const char *p = list; *p;) {
        while (*p == ',' || *p == ' ')
            p++;
        size_t k = strcspn(p, ", ");
        if (k == 1 && p[0] == '*')
            return origin;
        if (k == n && strncmp(p, origin, n) == 0)
            return origin;
        p += k;
    }
    return NULL;
}

static void add_common_headers(ym_hreq *r, struct MHD_Response *resp)
{
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    /* CORS (Fetch standard): an allowed origin may read the response and these headers. */
    const char *origin = allowed_origin(r);
    if (origin != NULL) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", origin);
        MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                                "X-Request-Id, Retry-After, ETag");
    }
    if (r->srv->conf.allowed_origins != NULL && r->srv->conf.allowed_origins[0] != '\0')
        MHD_add_response_header(resp, "Vary", "Origin");
}

/* A response goes out only once the request body has been read (or dropped), unless the
 * client waits for "100 Continue": a server that answers and closes while the client is still
 * sending makes the client's TCP stack see a reset, and the answer is lost (clients that do not
 * read before they finish sending, e.g. Node's fetch, lose it every time). So an early answer
 * is held, the rest of the body is read and dropped (up to drain_max bytes), and the held
 * answer is queued at MHD's final access callback. */
static void queue(ym_hreq *r, int status, struct MHD_Response *resp)
{
    if (resp == NULL) {
        ym_log(YM_LOG_ERROR, r->id, "out of memory for a response");
        return;
    }
    add_common_headers(r, resp);
    /* Only conditions that clear by themselves say when to retry (the OpenAI SDKs retry 429
     * and 5xx); permanent refusals use 4xx statuses they do not retry. */
    if (status == 503 || status == 429)
        MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 401)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (status == 405 && r->allow != NULL)
        MHD_add_response_header(resp, "Allow", r->allow);
    if (r->held != NULL) {
        MHD_destroy_response(resp); /* the first answer stands */
        return;
    }
    if (r->phase == YM_PHASE_BODY) {
        r->held = resp; /* our reference, queued at the final callback */
        r->held_status = status;
        r->status = status;
        r->phase = YM_PHASE_HELD;
        return;
    }
    if (MHD_queue_response(r->conn, (unsigned)status, resp) == MHD_YES) {
        r->status = status;
        r->phase = YM_PHASE_ANSWERED;
    }
    MHD_destroy_response(resp);
}

/* Queue a held answer (the body has ended). */
static void queue_held(ym_hreq *r)
{
    struct MHD_Response *resp = r->held;
    r->held = NULL;
    r->phase = MHD_queue_response(r->conn, (unsigned)r->held_status, resp) == MHD_YES
                   ? YM_PHASE_ANSWERED
                   : YM_PHASE_WORK;
    MHD_destroy_response(resp);
}

void ym_hreq_respond_text(ym_hreq *r, int status, const char *type, char *text, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(text);
        return;
    }
    MHD_add_response_header(resp, "Content-Type", type);
    queue(r, status, resp);
}

void ym_hreq_respond_static(ym_hreq *r, int status, const char *type, const void *data,
                            size_t len, const char *const *headers)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_PERSISTENT);
    if (resp == NULL) {
        ym_log(YM_LOG_ERROR, r->id, "out of memory for a response");
        return;
    }
    if (type != NULL)
        MHD_add_response_header(resp, "Content-Type", type);
    for (size_t i = 0; headers != NULL && headers[i] != NULL && headers[i + 1] != NULL; i += 2)
        MHD_add_response_header(resp, headers[i], headers[i + 1]);
    queue(r, status, resp);
}

void ym_hreq_respond_json(ym_hreq *r, int status, json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (s == NULL) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                  "\"server_error\",\"param\":null,\"code\":null}}";
        struct MHD_Response *resp = MHD_create_response_from_buffer(
            sizeof(oom) - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
        if (resp) {
            MHD_add_response_header(resp, "Content-Type", "application/json");
            queue(r, 503, resp);
        }
        return;
    }
    size_t n = strlen(s);
    s[n] = '\n'; /* replaces the NUL: a body ending in a newline reads well in curl */
    ym_hreq_respond_text(r, status, "application/json", s, n + 1);
}

/* Cuts server paths out of an error message: "ROOT/t/.tmp/up-1/adapter_config.json: bad"
 * becomes "adapter_config.json: bad", and ROOT alone becomes what (the setting's name). */
static void scrub_root(char *msg, size_t cap, const char *root, const char *what)
{
    char r[4096];
    if (root == NULL)
        return;
    size_t rl = strlen(root);
    while (rl > 1 && root[rl - 1] == '/')
        rl--;
    if (rl == 0 || rl >= sizeof(r) || (rl == 1 && (root[0] == '.' || root[0] == '/')))
        return;
    memcpy(r, root, rl);
    r[rl] = '\0';
    char *p = msg;
    while ((p = strstr(p, r)) != NULL) {
        char *end = p + rl;
        char *q = end;
        while (*q && *q != ' ' && *q != ':' && *q != '\'' && *q != '"' && *q != ',' &&
               *q != ')' && *q != '\n')
            q++;
        int starts = p == msg || p[-1] == ' ' || p[-1] == '\'' || p[-1] == '"' ||
                     p[-1] == '(' || p[-1] == '=';
        /* Not a longer name that starts the same, nor a bare word ("adapters") in a sentence. */
        if (!starts || (q != end && *end != '/') || (q == end && strchr(r, '/') == NULL)) {
            p = end;
            continue;
        }
        char *last = NULL;
        for (char *s = end; s < q; s++)
            if (*s == '/')
                last = s;
        const char *repl = last != NULL ? "" : what;
        char *cut_to = last != NULL ? last + 1 : q;
        size_t rep = strlen(repl), tail = strlen(cut_to);
        if ((size_t)(p - msg) + rep + tail + 1 > cap)
            return;
        memmove(p + rep, cut_to, tail + 1);
        memcpy(p, repl, rep);
        p += rep;
    }
}

static void scrub_paths(const ym_server_t *srv, char *msg, size_t cap)
{
    const ym_conf *c = &srv->conf;
    const struct {
        const char *path, *what;
    } roots[] = {
        {c->adapter_dir, "adapter_dir"}, {c->model, "the model directory"},
        {c->tenants_file, "tenants_file"}, {c->config, "the settings file"},
        {srv->sparsity_path, "the sparsity profile"},
    };
    for (size_t i = 0; i < sizeof(roots) / sizeof(roots[0]); i++) {
        if (roots[i].path == NULL || roots[i].path[0] == '\0')
            continue;
        char real[PATH_MAX];
        if (realpath(roots[i].path, real) != NULL)
            scrub_root(msg, cap, real, roots[i].what);
        scrub_root(msg, cap, roots[i].path, roots[i].what);
    }
}

/* The one place that writes an error: status, OpenAI type and code come from err.h's table
 * (docs/API.md lists the same); the message is the caller's, without server paths. */
void ym_hreq_respond_error(ym_hreq *r, ym_err err, const char *param, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    scrub_paths(r->srv, msg, sizeof(msg)); /* no error names a path on this server */
    int status = ym_err_http_status(err);
    const char *code = ym_err_code(err);
    json_t *e = json_pack("{s:o,s:s,s:o,s:o}", "message", ym_json_text(msg, strlen(msg)), "type",
                          ym_err_type(err), "param",
                          param && param[0] ? json_string(param) : json_null(), "code",
                          code ? json_string(code) : json_null());
    ym_log(status >= 500 ? YM_LOG_WARN : YM_LOG_INFO, r->id, "%d %s", status, msg);
    ym_hreq_respond_json(r, status, json_pack("{s:o}", "error", e));
}

void ym_hreq_fail(ym_hreq *r, ym_err err, const ym_diag *diag)
{
    const char *msg = diag != NULL && diag->msg[0] ? diag->msg : ym_strerror(err);
    ym_hreq_respond_error(r, err, diag != NULL ? diag->param : NULL, "%s", msg);
}

/* Run a route's handler (or body hook) result: an error is written here, the one place. */
static void handled(ym_hreq *r, ym_err err, const ym_diag *diag)
{
    if (err != YM_OK && !ym_hreq_answered(r))
        ym_hreq_fail(r, err, diag);
}

/* --- streaming --- */

static ssize_t on_stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    ym_hreq *r = cls;
    if (r->sse_pos == r->sse.len && r->phase == YM_PHASE_STREAMING && r->on_output != NULL)
        r->on_output(r); /* anything new since the last wake-up */
    if (r->phase == YM_PHASE_STREAM_ABORT)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t avail = r->sse.len - r->sse_pos;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, r->sse.p + r->sse_pos, n);
        r->sse_pos += n;
        if (r->sse_pos == r->sse.len) {
            r->sse.len = r->sse_pos = 0; /* keep the allocation */
        }
        r->t_last_write = ym_now();
        return (ssize_t)n;
    }
    if (r->phase == YM_PHASE_STREAM_DONE)
        return MHD_CONTENT_READER_END_OF_STREAM;
    /* Nothing yet: sleep until on_out_ready or the sweep resumes us (MHD docs: returning 0
     * without suspending would spin). */
    MHD_suspend_connection(r->conn);
    r->suspended = 1;
    return 0;
}

const char *ym_hreq_header(ym_hreq *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

void ym_hreq_close(ym_hreq *r)
{
    r->close_now = 1;
}

void ym_hreq_start_stream(ym_hreq *r)
{
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, on_stream_read, r, NULL);
    if (resp == NULL) {
        ym_hreq_respond_error(r, YM_ENOMEM, NULL, "out of memory");
        return;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no"); /* nginx: do not buffer SSE */
    r->t_last_write = ym_now();
    queue(r, 200, resp);
    if (r->phase == YM_PHASE_ANSWERED) /* sse.oom: aborted before it started */
        r->phase = r->sse.oom ? YM_PHASE_STREAM_ABORT : YM_PHASE_STREAMING;
}

void ym_hreq_stream_end(ym_hreq *r)
{
    if (r->phase == YM_PHASE_STREAMING)
        r->phase = YM_PHASE_STREAM_DONE;
}

void ym_hreq_stream_abort(ym_hreq *r)
{
    if (r->phase < YM_PHASE_STREAMING)
        r->sse.oom = 1; /* the stream's bytes are incomplete: ym_hreq_start_stream ends it */
    else if (r->phase < YM_PHASE_CLOSED)
        r->phase = YM_PHASE_STREAM_ABORT;
}

void ym_hreq_resume(ym_hreq *r)
{
    if (r->suspended && !ym_hreq_closed(r)) {
        r->suspended = 0;
        MHD_resume_connection(r->conn);
    }
}

void ym_hreq_suspend(ym_hreq *r)
{
    if (!r->suspended) {
        MHD_suspend_connection(r->conn);
        r->suspended = 1;
    }
}

static void hreq_free(ym_hreq *r)
{
    if (r->held != NULL)
        MHD_destroy_response(r->held);
    ym_buf_deinit(&r->body);
    ym_buf_deinit(&r->sse);
    ym__gen_choices_free(r);
    free(r->session_id);
    free(r);
}

void ym_hreq_unref(ym_hreq *r)
{
    if (--r->refs == 0)
        hreq_free(r);
}

static uint64_t *tenant_load(ym_server_t *srv, const char *name)
{
    for (int i = 0; i < srv->n_load; i++)
        if (strcmp(srv->load[i].name, name) == 0)
            return &srv->load[i].n;
    if (srv->n_load == srv->cap_load) {
        int cap = srv->cap_load ? srv->cap_load * 2 : 16;
        void *p = realloc(srv->load, (size_t)cap * sizeof(*srv->load));
        if (p == NULL)
            return NULL;
        srv->load = p;
        srv->cap_load = cap;
    }
    snprintf(srv->load[srv->n_load].name, sizeof(srv->load[0].name), "%s", name);
    srv->load[srv->n_load].n = 0;
    return &srv->load[srv->n_load++].n;
}

int ym_tenant_acquire(ym_server_t *srv, ym_hreq *r, uint64_t limit)
{
    uint64_t *n = tenant_load(srv, r->limits.name);
    if (n == NULL || (limit > 0 && *n >= limit))
        return -1;
    (*n)++;
    r->counted = 1;
    return 0;
}

void ym_tenant_release(ym_server_t *srv, ym_hreq *r)
{
    if (!r->counted)
        return;
    r->counted = 0;
    uint64_t *n = tenant_load(srv, r->limits.name);
    if (n != NULL && *n > 0)
        (*n)--;
}

/* --- MHD callbacks --- */

static int valid_request_id(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return n >= 1 && n <= 40;
}

static void new_id(char *dst, size_t cap, const char *prefix)
{
    static uint64_t counter;
    static uint64_t salt;
    if (salt == 0) {
        uv_random(NULL, NULL, &salt, sizeof(salt), 0, NULL);
        salt |= 1;
    }
    counter++;
    uint64_t x = (counter * 0x9E3779B97F4A7C15ull) ^ salt;
    snprintf(dst, cap, "%s%016llx%08llx", prefix, (unsigned long long)x,
             (unsigned long long)(counter & 0xffffffffu));
}

/* A generated request id names the resource as OpenAI's ids do: "cmpl-" for a completion,
 * "chatcmpl-" for a chat completion, "req-" otherwise. The id is both the X-Request-Id header
 * and the body's "id", so the two always agree. */
static const char *id_prefix(const char *route)
{
    if (strcmp(route, "/v1/completions") == 0)
        return "cmpl-";
    if (strcmp(route, "/v1/chat/completions") == 0)
        return "chatcmpl-";
    return "req-";
}

/* A CORS preflight (Fetch standard, "CORS-preflight fetch"): 204 with Allow; for an allowed
 * origin also the Access-Control-Allow-* headers, so the browser sends the real request.
 * Preflights carry no credentials, so they need none. */
static void preflight(ym_hreq *r)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (resp == NULL)
        return;
    char allow[128];
    snprintf(allow, sizeof(allow), "%s, OPTIONS", r->allow ? r->allow : "");
    MHD_add_response_header(resp, "Allow", allow);
    const char *want = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                   "Access-Control-Request-Method");
    if (allowed_origin(r) != NULL && want != NULL) {
        MHD_add_response_header(resp, "Access-Control-Allow-Methods", allow);
        const char *hdrs = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                       "Access-Control-Request-Headers");
        MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                hdrs != NULL && hdrs[0] ? hdrs
                                                        : "Authorization, Content-Type");
        MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
    }
    queue(r, 204, resp);
}

/* MHD's first access callback: the headers are in. Answers what needs no body (preflight,
 * authentication, unknown route, a body announced too large); the answer is held until the
 * body has been read if one follows (queue()). */
static void first_call(ym_server_t *srv, ym_hreq *r, struct MHD_Connection *conn,
                       const char *url, const char *method, int rc, const char *cl,
                       uint64_t n_cl)
{
    if (strcmp(method, "OPTIONS") == 0 && rc != 404) {
        preflight(r);
        return;
    }
    /* Who asks: the route says which key it needs (any key, or none, in open mode for
     * tenant routes; an admin tenant's key, and a tenants file, for admin routes). */
    const ym_route *rt = r->match.route;
    const ym_tenant *tenant = NULL;
    int v1 = rt != NULL && rt->auth == YM_AUTH_TENANT;
    int admin = rt != NULL && rt->auth == YM_AUTH_ADMIN;
    if (v1 || (admin && !ym_tenants_is_open(srv->tenants))) {
        tenant = ym_tenants_auth(srv->tenants, MHD_lookup_connection_value(
                                                   conn, MHD_HEADER_KIND, "Authorization"));
        if (tenant != NULL)
            r->limits = *tenant; /* a copy: a reload may free the table meanwhile */
    }
    if (admin && ym_tenants_is_open(srv->tenants)) {
        ym_hreq_respond_error(r, YM_EPERM, NULL,
                              "the admin routes need a tenants_file with an admin tenant");
    } else if ((v1 || admin) && tenant == NULL) {
        ym_hreq_respond_error(r, YM_EAUTH, NULL,
                              "missing or unknown API key: send Authorization: Bearer KEY");
    } else if (admin && !tenant->admin) {
        ym_hreq_respond_error(r, YM_EPERM, NULL,
                              "tenant %s may not use the admin routes", tenant->name);
    } else if (rc == 404) {
        ym_hreq_respond_error(r, YM_ENOENT, NULL, "no route %s %s", method,
                              url);
    } else if (rc == 405) {
        ym_hreq_respond_error(r, YM_EMETHOD, NULL,
                              "%s is not allowed on %s (allowed: %s)", method, url, r->allow);
    } else if (rt->body == YM_BODY_STREAM) {
        ym_diag diag = {0}; /* the route streams the body itself, with its own limits */
        handled(r, rt->body_begin(r, &r->match, &diag), &diag);
    } else if (cl != NULL && n_cl > r->body_limit) {
        r->body_err = YM_ETOOBIG;
        ym_metrics_add(srv->metrics, YM_M_BODY_TOO_LARGE, 1);
        ym_hreq_respond_error(r, YM_ETOOBIG, NULL,
                              "the request body is %s bytes; the limit is %llu", cl,
                              (unsigned long long)r->body_limit);
    }
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **req_cls)
{
    ym_server_t *srv = cls;
    ym_hreq *r = *req_cls;
    if (r == NULL) {
        if ((r = calloc(1, sizeof(*r))) == NULL)
            return MHD_NO;
        r->srv = srv;
        r->conn = conn;
        r->refs = 1;
        r->t_start = ym_now();
        r->finish = YM_FINISH_NONE;
        int rc = ym_router_match(srv->routes, srv->n_routes, method, url, &r->match);
        r->route = r->match.label;
        r->allow = r->match.allow;
        const char *given = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
        if (given != NULL && valid_request_id(given))
            snprintf(r->id, sizeof(r->id), "%s", given);
        else
            new_id(r->id, sizeof(r->id), id_prefix(r->route));
        *req_cls = r;
        srv->n_http++;
        ym_metrics_set(srv->metrics, YM_G_CONNECTIONS, srv->n_http);

        const ym_route *rt = r->match.route;
        r->body_limit = rt != NULL && rt->body != YM_BODY_REQUEST ? srv->conf.max_upload_bytes
                                                                   : srv->conf.max_body_bytes;
        /* An early answer waits for the body; past drain_max dropped bytes the client is
         * disconnected instead (see queue()). */
        r->drain_max = 2 * r->body_limit > DRAIN_MIN ? 2 * r->body_limit : DRAIN_MIN;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_TRANSFER_ENCODING);
        const char *expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                         MHD_HTTP_HEADER_EXPECT);
        uint64_t n_cl = cl != NULL ? strtoull(cl, NULL, 10) : 0;
        /* A body the server would read to deliver an early answer: such an answer is held
         * (BODY), unless the client sends nothing before "100 Continue", which MHD sends only
         * if this callback queues no answer: then the answer goes out at once (HEADERS). */
        int body_follows = (te != NULL || n_cl > 0) && n_cl <= r->drain_max;
        r->expect_continue = expect != NULL && strcasecmp(expect, "100-continue") == 0;
        r->phase = body_follows && !r->expect_continue ? YM_PHASE_BODY : YM_PHASE_HEADERS;
        first_call(srv, r, conn, url, method, rc, cl, n_cl);
        if (body_follows && r->phase == YM_PHASE_HEADERS)
            r->phase = YM_PHASE_BODY; /* unanswered: MHD says "100 Continue", the body comes */
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0; /* consumed, or discarded after an error */
        if (ym_hreq_answered(r)) {
            /* Answered early: drop the rest of the body so the answer can be read. */
            r->discarded += n;
            return r->discarded > r->drain_max ? MHD_NO : MHD_YES;
        }
        if (r->upload != NULL) { /* the route's body hook took the body */
            r->match.route->body_data(r, upload_data, n);
            return MHD_YES;
        }
        if (r->body.len + n > r->body_limit) {
            r->body_err = YM_ETOOBIG;
            r->discarded = r->body.len + n;
            ym_buf_deinit(&r->body);
            ym_metrics_add(srv->metrics, YM_M_BODY_TOO_LARGE, 1);
            ym_hreq_respond_error(r, YM_ETOOBIG, NULL,
                                  "the request body exceeds the limit of %llu bytes",
                                  (unsigned long long)r->body_limit);
            return MHD_YES;
        }
        if (ym_buf_put(&r->body, upload_data, n) != 0)
            r->body_err = YM_ENOMEM;
        return MHD_YES;
    }
    /* The final call: the body has ended. */
    if (r->phase == YM_PHASE_HELD) {
        queue_held(r);
        return MHD_YES;
    }
    if (r->phase < YM_PHASE_WORK)
        r->phase = YM_PHASE_WORK;
    if (!ym_hreq_answered(r) && r->body_err == YM_ETOOBIG) {
        ym_hreq_respond_error(r, YM_ETOOBIG, NULL,
                              "the request body exceeds the limit of %llu bytes",
                              (unsigned long long)r->body_limit);
        return MHD_YES;
    }
    if (!ym_hreq_answered(r) && r->body_err == YM_ENOMEM) {
        ym_hreq_respond_error(r, YM_ENOMEM, NULL, "out of memory for the body");
        return MHD_YES;
    }
    if (ym_hreq_answered(r))
        return MHD_YES;
    if (r->upload != NULL && !r->suspended && !ym_hreq_answered(r)) {
        /* A streamed body is complete: the handler answers at once, or suspends until its
         * work is done, or asks to close. */
        ym_diag diag = {0};
        handled(r, r->match.route->handler(r, &r->match, &diag), &diag);
        return r->close_now ? MHD_NO : MHD_YES;
    }
    if (r->gen != NULL || r->tok_job != NULL || r->sess_job != NULL || r->upload != NULL) {
        /* Resumed before its answer was ready: wait again, unless the server is stopping. */
        if (srv->stopping)
            ym_hreq_respond_error(r, YM_EDRAINING, NULL, "the server is stopping");
        else
            ym_hreq_suspend(r);
        return MHD_YES;
    }
    if (r->body.p == NULL)
        ym_buf_put(&r->body, "", 0);
    ym_diag diag = {0};
    handled(r, r->match.route->handler(r, &r->match, &diag), &diag);
    return r->close_now ? MHD_NO : MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    ym_server_t *srv = cls;
    ym_hreq *r = *req_cls;
    if (r == NULL)
        return;
    *req_cls = NULL;
    double ms = (ym_now() - r->t_start) * 1e3;
    int status = r->status;
    /* nginx's "client closed request"; also when the sweep saw the client leave and the
     * engine finished the cancelled request before this callback ran. */
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && r->gen != NULL &&
        (r->finish == YM_FINISH_NONE || r->client_gone))
        status = 499;
    if (r->route != NULL)
        ym_metrics_request(srv->metrics, r->route, status);
    if (r->gen != NULL) {
        if (r->finish == YM_FINISH_NONE)
            ym_gen_cancel(r->gen);
        ym_log(YM_LOG_INFO, r->id,
               "%s %d %.1f ms prompt_tokens=%d cached_tokens=%d completion_tokens=%d finish=%s%s",
               r->route, status, ms, r->n_prompt, r->n_cached, r->n_gen, ym_finish_name(r->finish),
               toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed early)");
        ym_gen_set_owner(r->gen, NULL);
        ym_gen_unref(r->gen);
        r->gen = NULL;
    } else if (r->route != NULL && strcmp(r->route, "/healthz") != 0 &&
               strcmp(r->route, "/readyz") != 0 && strcmp(r->route, "/metrics") != 0) {
        ym_log(YM_LOG_DEBUG, r->id, "%s %d %.1f ms", r->route, status, ms);
    }
    ym_hreq_untrack(r);
    ym_tenant_release(srv, r);
    if (r->match.route != NULL && r->match.route->body_abort != NULL)
        r->match.route->body_abort(r);
    r->phase = YM_PHASE_CLOSED;
    ym_hreq_unref(r); /* a running tokenization keeps it until its callback */
    srv->n_http--;
    ym_metrics_set(srv->metrics, YM_G_CONNECTIONS, srv->n_http);
}

/* --- the loop side --- */

static void on_mhd_timer(uv_timer_t *t)
{
    ym_httpd_kick(t->data);
}

void ym_httpd_kick(ym_server_t *srv)
{
    if (srv->mhd == NULL)
        return;
    MHD_run(srv->mhd);
    MHD_UNSIGNED_LONG_LONG to = 0;
    if (MHD_get_timeout(srv->mhd, &to) == MHD_YES)
        uv_timer_start(&srv->mhd_timer, on_mhd_timer, to, 0);
    else
        uv_timer_stop(&srv->mhd_timer);
}

static void on_mhd_fd(uv_poll_t *p, int status, int events)
{
    ym_httpd_kick(p->data);
}

/* The engine produced output: hand it to the connections. */
static void on_out_ready(uv_async_t *a)
{
    ym_server_t *srv = a->data;
    if (srv->sched == NULL)
        return;
    ym_gen *g = ym_sched_take_ready(srv->sched);
    while (g != NULL) {
        ym_gen *next = ym_sched_ready_next(srv->sched, g);
        ym_hreq *r = ym_gen_owner(g);
        if (r != NULL) {
            if (r->on_output != NULL)
                r->on_output(r);
            /* A stream wakes to send its events; a plain request only once its response is
             * queued (MHD may not be given a response for a running connection). */
            if (ym_hreq_answered(r))
                ym_hreq_resume(r);
        }
        ym_gen_unref(g);
        g = next;
    }
    ym_httpd_kick(srv);
}

static int peer_closed(ym_hreq *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci == NULL)
        return 0;
    char c;
    ssize_t n = recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static void on_sweep(uv_timer_t *t)
{
    ym_server_t *srv = t->data;
    double now = ym_now();
    double ping = (double)srv->conf.stream_ping_ms * 1e-3;
    for (ym_hreq *r = srv->gens; r != NULL; r = r->next) {
        if (r->suspended && !r->client_gone && r->finish == YM_FINISH_NONE && peer_closed(r)) {
            r->client_gone = 1;
            if (r->gen != NULL)
                ym_gen_cancel(r->gen);
            ym_log(YM_LOG_INFO, r->id, "client went away; cancelling");
            continue;
        }
        if (r->phase == YM_PHASE_STREAMING && !r->started && r->finish == YM_FINISH_NONE &&
            now - r->t_last_write >= ping) {
            if (r->on_ping != NULL)
                r->on_ping(r);
            r->t_last_write = now;
            ym_hreq_resume(r);
        }
    }
    /* Run MHD on every sweep, not only after a ping. At max_connections (or when accept()
     * runs out of descriptors) MHD takes its listening socket out of its epoll set and puts it
     * back only at the start of a later MHD_run, once below the limit. When the connections
     * that close are the last activity, no event would come to run it again and new clients
     * would wait in the backlog forever; this bounds their wait to one sweep. */
    ym_httpd_kick(srv);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    ym_log(YM_LOG_DEBUG, NULL, "http: %s", msg);
}

int ym_httpd_start(ym_server_t *srv, ym_diag *diag)
{
    const ym_conf *c = &srv->conf;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    const char *host = strcmp(c->host, "localhost") == 0 ? "127.0.0.1" : c->host;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)c->port);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)c->port);
        flags |= MHD_USE_IPv6;
    } else {
        ym_diag_param(diag, YM_EINVAL, "host", "host %s is not an IPv4 or IPv6 address",
                      c->host);
        return -1;
    }
    srv->mhd = MHD_start_daemon(
        flags, (uint16_t)c->port, NULL, NULL, on_access, srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
        srv, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&ss, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)c->connection_timeout_s, MHD_OPTION_END);
    if (srv->mhd == NULL) {
        ym_diag_set(diag, YM_EIO, "cannot listen on %s port %llu (in use, or not permitted)",
                    c->host, (unsigned long long)c->port);
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : (int)c->port;
    di = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (di == NULL) {
        ym_diag_set(diag, YM_EIO, "libmicrohttpd has no epoll fd");
        MHD_stop_daemon(srv->mhd);
        srv->mhd = NULL;
        return -1;
    }
    uv_poll_init(srv->loop, &srv->mhd_poll, di->epoll_fd);
    srv->mhd_poll.data = srv;
    uv_poll_start(&srv->mhd_poll, UV_READABLE, on_mhd_fd);
    uv_timer_init(srv->loop, &srv->mhd_timer);
    srv->mhd_timer.data = srv;
    uv_timer_init(srv->loop, &srv->sweep_timer);
    srv->sweep_timer.data = srv;
    uv_timer_start(&srv->sweep_timer, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_async_init(srv->loop, &srv->ready_async, on_out_ready);
    srv->ready_async.data = srv;
    ym_httpd_kick(srv);
    return 0;
}

void ym_httpd_stop(ym_server_t *srv)
{
    if (srv->mhd == NULL)
        return;
    /* MHD requires every suspended connection resumed before it stops. */
    for (ym_hreq *r = srv->gens; r != NULL; r = r->next) {
        if (ym_hreq_streaming(r) && r->finish == YM_FINISH_NONE)
            ym_hreq_stream_abort(r); /* a stream still running ends without [DONE] */
        ym_hreq_resume(r);
    }
    MHD_run(srv->mhd);
    uv_poll_stop(&srv->mhd_poll);
    MHD_stop_daemon(srv->mhd);
    srv->mhd = NULL;
    uv_close((uv_handle_t *)&srv->mhd_poll, NULL);
    uv_close((uv_handle_t *)&srv->mhd_timer, NULL);
    uv_close((uv_handle_t *)&srv->sweep_timer, NULL);
    uv_close((uv_handle_t *)&srv->ready_async, NULL);
}
