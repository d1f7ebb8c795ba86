/* server/router.h - the route table's shape and the matcher: method + path pattern -> route.
 *
 * A route names its handler, the authentication it needs and which body limit applies. A
 * pattern is a literal path with {param} segments: a {param} in the middle takes one path
 * segment, the last one takes the rest of the path (non-empty, slashes included), so a handler
 * can refuse a malformed name with a 400 instead of a 404. Matching is pure (no loop, no
 * socket): the unit tests and a fuzz target call it directly. The table itself is
 * server/routes.c's; the transport (httpd.c) gets it through the server object and never names
 * a handler. */
#ifndef YM_SERVER_ROUTER_H
#define YM_SERVER_ROUTER_H
#include <stddef.h>

#include "engine/err.h"

struct ym_hreq;
struct ym_match;

typedef enum {
    YM_AUTH_NONE,   /* probes and scrapers: /healthz, /readyz, /metrics */
    YM_AUTH_TENANT, /* /v1: a tenant's key (any key, or none, in open mode) */
    YM_AUTH_ADMIN,  /* /admin: an admin tenant's key, and a tenants file */
} ym_auth;

typedef enum {
    YM_BODY_REQUEST, /* max_body_bytes, collected whole before the handler runs */
    YM_BODY_UPLOAD,  /* max_upload_bytes, collected whole (e.g. a session state) */
    YM_BODY_STREAM,  /* max_upload_bytes, handed to the route's body hooks as it arrives */
} ym_body;

#define YM_ROUTE_MAX_PARAMS 2

typedef struct ym_route {
    const char *method;  /* "GET", "POST", "PUT", "DELETE" (HEAD is served by GET) */
    const char *pattern; /* "/v1/adapters/{name}"; also the metrics label */
    ym_auth auth;
    ym_body body;
    /* Runs once the body is in (loop thread). Returns YM_OK when it answered, or will (its
     * work goes on off the loop); else the error, with its detail in diag, which the
     * transport writes (status, type and code from err.h's table). */
    ym_err (*handler)(struct ym_hreq *r, const struct ym_match *m, ym_diag *diag);
    /* YM_BODY_STREAM only: the body as it arrives. begin returns YM_OK when it takes the body,
     * else the error (as handler). */
    ym_err (*body_begin)(struct ym_hreq *r, const struct ym_match *m, ym_diag *diag);
    void (*body_data)(struct ym_hreq *r, const char *data, size_t len);
    void (*body_abort)(struct ym_hreq *r); /* the connection ended first; may be NULL */
} ym_route;

/* A matched request: its route and the values of the pattern's {params}. */
typedef struct ym_match {
    const ym_route *route;         /* borrowed from the table, or NULL */
    const char *label;             /* the path's pattern (metrics), "other" when none matches */
    const char *method, *url;      /* borrowed from MHD, valid for the request */
    const char *params[YM_ROUTE_MAX_PARAMS]; /* point into buf, in the pattern's order */
    char buf[1024];
    char allow[64];                /* 405: the methods the path allows ("GET, PUT, DELETE") */
} ym_match;

/* Match method + url against table[0..n). Returns 0 (m->route set), 404 (no pattern matches
 * the path), or 405 (the path matches, the method does not: m->allow lists the methods).
 * Paths longer than m->buf are 404. */
int ym_router_match(const ym_route *table, size_t n, const char *method, const char *url,
                    ym_match *m);

#endif
