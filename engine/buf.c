/* engine/buf.c - the growable byte buffer (engine/buf.h).
 *
 * Owns: the buffer's heap storage. Runs: any thread, one buffer per thread at a time. Must not:
 * free or resize storage the caller lent (fixed). */
#include "engine/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ym_buf_init_with(ym_buf *b, char *storage, size_t cap)
{
    b->p = storage;
    b->len = 0;
    b->cap = cap;
    b->fixed = 1;
    b->oom = 0;
    if (cap > 0)
        storage[0] = '\0';
}

ym_err ym_buf_reserve(ym_buf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len - 1) {
        b->oom = 1;
        return YM_ENOMEM;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return YM_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            b->oom = 1;
            return YM_ENOMEM;
        }
        cap *= 2;
    }
    char *p = b->fixed ? malloc(cap) : realloc(b->p, cap);
    if (p == NULL) {
        b->oom = 1;
        return YM_ENOMEM;
    }
    if (b->fixed && b->len > 0)
        memcpy(p, b->p, b->len);
    b->fixed = 0;
    b->p = p;
    b->cap = cap;
    return YM_OK;
}

ym_err ym_buf_put(ym_buf *b, const void *s, size_t n)
{
    ym_err err = ym_buf_reserve(b, n);
    if (err != YM_OK)
        return err;
    if (n > 0)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return YM_OK;
}

ym_err ym_buf_read(ym_buf *b, FILE *f, size_t limit)
{
    size_t got = 0;
    for (;;) {
        if (b->cap <= b->len + 1) {
            ym_err err = ym_buf_reserve(b, b->cap > 4096 ? b->cap : 4096);
            if (err != YM_OK)
                return err;
        }
        size_t room = b->cap - b->len - 1;
        if (limit - got < room)
            room = limit - got + 1; /* one byte past the limit tells a larger file */
        size_t n = fread(b->p + b->len, 1, room, f);
        b->len += n;
        b->p[b->len] = '\0';
        got += n;
        if (got > limit)
            return YM_ETOOBIG;
        if (n < room)
            return ferror(f) ? YM_EIO : YM_OK;
    }
}

ym_err ym_buf_puts(ym_buf *b, const char *s)
{
    return ym_buf_put(b, s, strlen(s));
}

ym_err ym_buf_printf(ym_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return YM_EINVAL;
    ym_err err = ym_buf_reserve(b, (size_t)n);
    if (err != YM_OK)
        return err;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return YM_OK;
}

void ym_buf_drop_front(ym_buf *b, size_t n)
{
    if (n >= b->len) {
        ym_buf_clear(b);
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
    b->p[b->len] = '\0';
}

void ym_buf_clear(ym_buf *b)
{
    b->len = 0;
    if (b->p != NULL)
        b->p[0] = '\0';
}

char *ym_buf_take(ym_buf *b, size_t *len)
{
    char *p = b->p;
    size_t n = b->len;
    if (p == NULL)
        p = calloc(1, 1);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
    if (len != NULL)
        *len = p != NULL ? n : 0;
    return p;
}

void ym_buf_deinit(ym_buf *b)
{
    if (b == NULL)
        return;
    if (!b->fixed)
        free(b->p);
    memset(b, 0, sizeof(*b));
}
