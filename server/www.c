/* server/www.c - GET / and GET /playground/{file}: the web playground (server/playground/),
 * a page that talks to this server through the same /v1 routes any client uses.
 *
 * Owns: nothing (the files are static arrays made at build time). Runs: loop thread. Must not:
 * touch the connection (it answers through ym_hreq_respond_*), or need a key: the page asks
 * for one itself when the server has tenants, and keeps it in the browser. */
#include "server/playground.h"
#include "server/server.h"

/* The page loads only its own script and style sheet and talks only to its own origin; no
 * inline script or style runs, and no other site may frame it. */
#define CSP                                                                                        \
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "                \
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

ym_err ym_www_get(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    if (!r->srv->conf.playground)
        return ym_diag_set(diag, YM_ENOENT, "the playground is turned off (playground = 0)");
    const ym_asset *a = ym_playground_find(m->url);
    if (a == NULL)
        return ym_diag_set(diag, YM_ENOENT, "no playground file %s", m->url);
    /* no-cache: the browser keeps its copy but asks each time; the ETag (the file's hash)
     * makes that a 304 until a rebuilt binary serves a changed file. */
    const char *headers[] = {
        "ETag", a->etag,
        "Cache-Control", "no-cache",
        "X-Content-Type-Options", "nosniff",
        "Content-Security-Policy", CSP,
        "Referrer-Policy", "no-referrer",
        "X-Frame-Options", "DENY",
        NULL,
    };
    if (ym_etag_match(ym_hreq_header(r, "If-None-Match"), a->etag))
        ym_hreq_respond_static(r, 304, NULL, NULL, 0, headers);
    else
        ym_hreq_respond_static(r, 200, a->type, a->data, a->len, headers);
    return YM_OK;
}
