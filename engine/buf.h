/* engine/buf.h - the one growable byte buffer of the tree.
 *
 * What: bytes appended at the end (and, for streams, dropped at the front), always followed by
 * a NUL once anything was put, so text can be read as a C string. Storage is owned and grows by
 * doubling; a buffer may start in caller storage (e.g. a stack array) and moves to the heap
 * when it outgrows it. A put that cannot get memory appends nothing, returns YM_ENOMEM and sets
 * oom, so callers that cannot report an error (a log line) keep what fit. Any thread; one
 * buffer is used by one thread at a time. NULL-safe deinit. */
#ifndef YM_ENGINE_BUF_H
#define YM_ENGINE_BUF_H
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include "engine/err.h"

typedef struct ym_buf {
    char *p;    /* owned (unless it is still the caller's storage); NULL while nothing was put */
    size_t len; /* bytes held, without the NUL */
    size_t cap; /* bytes p can hold, NUL included */
    int fixed;  /* p is the caller's storage (ym_buf_init_with): never freed nor realloc'd */
    int oom;    /* a put failed for lack of memory */
} ym_buf;

#define YM_BUF_INIT {NULL, 0, 0, 0, 0}

/* Start in storage[0..cap) (borrowed until the buffer outgrows it or is deinit'd). */
void ym_buf_init_with(ym_buf *b, char *storage, size_t cap);
/* Room for extra more bytes and the NUL. YM_OK or YM_ENOMEM (oom set). */
ym_err ym_buf_reserve(ym_buf *b, size_t extra);
/* Append s[0..n) (s may be NULL when n is 0). YM_OK or YM_ENOMEM (oom set, nothing added). */
ym_err ym_buf_put(ym_buf *b, const void *s, size_t n);
ym_err ym_buf_puts(ym_buf *b, const char *s);
ym_err ym_buf_printf(ym_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append what f holds from its position to its end, at most limit bytes. YM_OK; YM_ETOOBIG
 * when f holds more than limit (the bytes read stay); YM_ENOMEM (oom set); YM_EIO on a read
 * error. */
ym_err ym_buf_read(ym_buf *b, FILE *f, size_t limit);
/* Remove the first n bytes (all of them when n >= len); keeps the memory. */
void ym_buf_drop_front(ym_buf *b, size_t n);
void ym_buf_clear(ym_buf *b); /* len = 0; keeps the memory */
/* Hand the bytes over: returns p (new string, free() it; "" allocated when empty, NULL when out
 * of memory) and leaves the buffer empty. Not for a buffer still in caller storage. */
char *ym_buf_take(ym_buf *b, size_t *len);
void ym_buf_deinit(ym_buf *b); /* frees; leaves YM_BUF_INIT; NULL-safe */

#endif
