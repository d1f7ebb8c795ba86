/* server/playground.h - the web playground's files, embedded at build time, and the ETag check
 * that lets a browser keep its copy until the binary's page changes.
 *
 * The files live in server/playground/ (index.html, app.js, style.css); the build turns them
 * into byte arrays (server/playground/embed.py). Pure: no loop, no socket; the unit tests and a
 * fuzz target call these directly. The route handler is server/www.c. */
#ifndef YM_SERVER_PLAYGROUND_H
#define YM_SERVER_PLAYGROUND_H
#include <stddef.h>

typedef struct ym_asset {
    const char *path;          /* "/" for index.html, else "/playground/<name>" */
    const char *type;          /* Content-Type, "text/html; charset=utf-8" */
    const char *etag;          /* "\"<32 hex of the SHA-256 of data>\"" (quotes included) */
    const unsigned char *data; /* len bytes, then a NUL (not counted) */
    size_t len;
} ym_asset;

extern const ym_asset ym_playground_assets[]; /* generated, static storage */
extern const size_t ym_playground_n_assets;

/* The asset served at path (exact match, no query string), or NULL. Borrowed: static. */
const ym_asset *ym_playground_find(const char *path);

/* Does an If-None-Match header value (RFC 9110 §13.1.2) name etag? "*" matches; tags compare
 * weakly (W/"x" matches "x"). A malformed value matches nothing, so the full answer goes out.
 * header may be NULL (no header: 0). */
int ym_etag_match(const char *header, const char *etag);

#endif
