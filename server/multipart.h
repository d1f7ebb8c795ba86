/* server/multipart.h - a streaming multipart/form-data parser (RFC 7578, RFC 2046 §5.1) for
 * adapter uploads: each part's bytes are handed on as they arrive, so an upload is never held
 * whole in memory.
 *
 * Bounded: a part's header block is at most 8 KiB; the parser keeps at most one delimiter's
 * worth of body bytes between calls. Only Content-Disposition matters (its `name` parameter,
 * or `filename` when there is no name); other part headers are ignored. Any thread, one
 * parser per request. */
#ifndef YM_SERVER_MULTIPART_H
#define YM_SERVER_MULTIPART_H
#include <stddef.h>

#include "engine/err.h"

typedef struct ym_mp_cb {
    /* A part begins; name is NUL-terminated, borrowed for the call. Non-zero aborts. */
    int (*part_begin)(void *arg, const char *name, ym_diag *diag);
    /* Bytes of the current part (any split). Non-zero aborts. */
    int (*part_data)(void *arg, const char *data, size_t len, ym_diag *diag);
    /* The current part is complete. Non-zero aborts. */
    int (*part_end)(void *arg, ym_diag *diag);
} ym_mp_cb;

typedef struct ym_mp ym_mp_t;

/* content_type: the request's Content-Type header (multipart/form-data; boundary=...).
 * YM_EINVAL when it is not multipart or has no usable boundary. New parser in *out. */
ym_err ym_mp_new(const char *content_type, const ym_mp_cb *cb, void *arg, ym_mp_t **out,
                 ym_diag *diag);
/* Feed the next bytes of the body. YM_EINVAL on malformed input or when a callback aborted
 * (its diag message is kept); the parser then refuses more input. */
ym_err ym_mp_feed(ym_mp_t *mp, const char *data, size_t len, ym_diag *diag);
/* End of the body: YM_OK only when the closing delimiter was seen. */
ym_err ym_mp_finish(ym_mp_t *mp, ym_diag *diag);
void ym_mp_free(ym_mp_t *mp); /* NULL-safe */

#endif
