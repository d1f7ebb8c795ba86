/* server/multipart.c - streaming multipart/form-data.
 *
 * The body is treated as if it began with CRLF, so every delimiter, the first included, is
 * "\r\n--" boundary. States: PREAMBLE (skip to the first delimiter), AFTER_DELIM (either "--"
 * closes, or optional whitespace and CRLF open a part), HEADERS (up to the blank line),
 * BODY (hand bytes on until the next delimiter), DONE (epilogue ignored), FAILED.
 * Unprocessed bytes wait in `in` (engine/buf.h), which never holds more than a header block
 * or one delimiter's length plus the newest chunk. */
#include "server/multipart.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/buf.h"

#define MAX_BOUNDARY 70 /* RFC 2046 */
#define MAX_HEADERS 8192
#define MAX_NAME 1024

enum { PREAMBLE, AFTER_DELIM, HEADERS, BODY, DONE, FAILED };

struct ym_mp {
    ym_mp_cb cb;
    void *arg;
    char delim[MAX_BOUNDARY + 5]; /* "\r\n--" boundary */
    size_t dlen;
    int state;
    int n_parts;
    ym_buf in;      /* unprocessed bytes */
};

static ym_err fail(ym_mp_t *mp, ym_diag *diag, const char *msg)
{
    mp->state = FAILED;
    if (diag != NULL && diag->msg[0] == '\0')
        ym_diag_set(diag, YM_EINVAL, "multipart body: %s", msg);
    return YM_EINVAL;
}

/* The value of parameter `key` in a header value like `form-data; name="x"; filename=y`. */
static int header_param(const char *v, const char *key, char *out, size_t cap)
{
    size_t klen = strlen(key);
    const char *p = v;
    while ((p = strchr(p, ';')) != NULL) {
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        if (strncasecmp(p, key, klen) != 0 || p[klen] != '=')
            continue;
        p += klen + 1;
        size_t n = 0;
        if (*p == '"') {
            p++;
            while (*p && *p != '"') {
                if (*p == '\\' && p[1])
                    p++;
                if (n + 1 >= cap)
                    return -1;
                out[n++] = *p++;
            }
            if (*p != '"')
                return -1;
        } else {
            while (*p && *p != ';' && *p != ' ' && *p != '\t') {
                if (n + 1 >= cap)
                    return -1;
                out[n++] = *p++;
            }
        }
        out[n] = '\0';
        return 1;
    }
    return 0;
}

ym_err ym_mp_new(const char *content_type, const ym_mp_cb *cb, void *arg, ym_mp_t **out,
                 ym_diag *diag)
{
    *out = NULL;
    if (content_type == NULL || strncasecmp(content_type, "multipart/form-data", 19) != 0)
        return ym_diag_set(diag, YM_EINVAL,
                           "the body must be multipart/form-data (one part per file)");
    char b[MAX_BOUNDARY + 2];
    if (header_param(content_type, "boundary", b, sizeof(b)) != 1 || b[0] == '\0' ||
        strlen(b) > MAX_BOUNDARY)
        return ym_diag_set(diag, YM_EINVAL, "multipart/form-data without a valid boundary");
    ym_mp_t *mp = calloc(1, sizeof(*mp));
    if (mp == NULL)
        return YM_ENOMEM;
    mp->cb = *cb;
    mp->arg = arg;
    mp->dlen = (size_t)snprintf(mp->delim, sizeof(mp->delim), "\r\n--%s", b);
    mp->state = PREAMBLE;
    /* The virtual CRLF before the first delimiter. */
    if (ym_buf_put(&mp->in, "\r\n", 2) != YM_OK) {
        free(mp);
        return YM_ENOMEM;
    }
    *out = mp;
    return YM_OK;
}

void ym_mp_free(ym_mp_t *mp)
{
    if (mp == NULL)
        return;
    ym_buf_deinit(&mp->in);
    free(mp);
}

static void consume(ym_mp_t *mp, size_t n)
{
    ym_buf_drop_front(&mp->in, n);
}

/* Parse one header block (without the final blank line) and start the part. */
static ym_err begin_part(ym_mp_t *mp, char *block, ym_diag *diag)
{
    char name[MAX_NAME] = "";
    int have = 0;
    for (char *line = block; line != NULL;) {
        char *next = strstr(line, "\r\n");
        if (next != NULL) {
            *next = '\0';
            next += 2;
        }
        char *colon = strchr(line, ':');
        if (colon != NULL) {
            *colon = '\0';
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            if (strcasecmp(line, "Content-Disposition") == 0) {
                if (strncasecmp(v, "form-data", 9) != 0)
                    return fail(mp, diag, "a part's Content-Disposition is not form-data");
                int r = header_param(v, "name", name, sizeof(name));
                if (r <= 0 || name[0] == '\0')
                    r = header_param(v, "filename", name, sizeof(name));
                if (r < 0)
                    return fail(mp, diag, "a part's name is malformed or too long");
                have = r > 0 && name[0] != '\0';
            }
        } else if (line[0] != '\0') {
            return fail(mp, diag, "a part header line has no ':'");
        }
        line = next;
    }
    if (!have)
        return fail(mp, diag, "a part has no Content-Disposition name");
    if (mp->cb.part_begin(mp->arg, name, diag) != 0)
        return fail(mp, diag, "part refused");
    mp->n_parts++;
    return YM_OK;
}

static ym_err run(ym_mp_t *mp, ym_diag *diag)
{
    for (;;) {
        if (mp->state == PREAMBLE || mp->state == BODY) {
            char *hit = memmem(mp->in.p, mp->in.len, mp->delim, mp->dlen);
            size_t upto = hit ? (size_t)(hit - mp->in.p)
                              : (mp->in.len >= mp->dlen ? mp->in.len - (mp->dlen - 1) : 0);
            if (mp->state == BODY && upto > 0 && mp->cb.part_data(mp->arg, mp->in.p, upto, diag))
                return fail(mp, diag, "part data refused");
            consume(mp, upto);
            if (hit == NULL)
                return YM_OK;
            consume(mp, mp->dlen);
            if (mp->state == BODY && mp->cb.part_end(mp->arg, diag) != 0)
                return fail(mp, diag, "part refused");
            mp->state = AFTER_DELIM;
        } else if (mp->state == AFTER_DELIM) {
            if (mp->in.len < 2)
                return YM_OK;
            if (mp->in.p[0] == '-' && mp->in.p[1] == '-') {
                mp->state = DONE;
                ym_buf_clear(&mp->in);
                return YM_OK;
            }
            /* Transport padding (spaces, tabs), then CRLF. */
            size_t i = 0;
            while (i < mp->in.len && (mp->in.p[i] == ' ' || mp->in.p[i] == '\t'))
                i++;
            if (i > 256)
                return fail(mp, diag, "too much padding after a delimiter");
            if (i + 2 > mp->in.len)
                return YM_OK;
            if (mp->in.p[i] != '\r' || mp->in.p[i + 1] != '\n')
                return fail(mp, diag, "a delimiter is not followed by CRLF or \"--\"");
            consume(mp, i + 2);
            mp->state = HEADERS;
        } else if (mp->state == HEADERS) {
            /* A part with no headers starts with the blank line at once. */
            char *end = NULL;
            size_t skip = 0;
            if (mp->in.len >= 2 && mp->in.p[0] == '\r' && mp->in.p[1] == '\n') {
                end = mp->in.p;
                skip = 2;
            } else {
                end = memmem(mp->in.p, mp->in.len, "\r\n\r\n", 4);
                skip = 4;
            }
            if (end == NULL) {
                if (mp->in.len > MAX_HEADERS)
                    return fail(mp, diag, "a part's headers exceed 8 KiB");
                return YM_OK;
            }
            size_t n = (size_t)(end - mp->in.p);
            if (n > MAX_HEADERS)
                return fail(mp, diag, "a part's headers exceed 8 KiB");
            char *block = malloc(n + 1);
            if (block == NULL)
                return fail(mp, diag, "out of memory");
            memcpy(block, mp->in.p, n);
            block[n] = '\0';
            if (memchr(block, '\0', n) != NULL) {
                free(block);
                return fail(mp, diag, "a part header contains a NUL byte");
            }
            ym_err err = begin_part(mp, block, diag);
            free(block);
            if (err != YM_OK)
                return err;
            consume(mp, n + skip);
            /* The body may be empty: the delimiter then follows at once, which BODY finds as
             * "\r\n--..." right at the start. */
            mp->state = BODY;
            /* Re-insert nothing: BODY searches for CRLF + "--" boundary, and an empty body is
             * exactly that. */
        } else {
            return YM_OK;
        }
    }
}

ym_err ym_mp_feed(ym_mp_t *mp, const char *data, size_t len, ym_diag *diag)
{
    if (mp->state == FAILED)
        return YM_EINVAL;
    if (mp->state == DONE)
        return YM_OK; /* the epilogue is ignored */
    if (ym_buf_put(&mp->in, data, len) != YM_OK)
        return fail(mp, diag, "out of memory");
    return run(mp, diag);
}

ym_err ym_mp_finish(ym_mp_t *mp, ym_diag *diag)
{
    if (mp->state == FAILED)
        return YM_EINVAL;
    if (mp->state != DONE)
        return fail(mp, diag, "the body ended before the closing delimiter");
    return YM_OK;
}
