/* engine/log.c - structured log lines on stderr.
 *
 * Any thread. Each line is formatted into one buffer and written with a single write(2), so
 * lines from different threads never interleave (POSIX keeps a write to a pipe of up to
 * PIPE_BUF bytes atomic; longer lines to a terminal or file are in practice whole too).
 * No locks, no allocation unless a message is longer than the stack buffer. Never exits. */
#include "engine/log.h"

#include "engine/buf.h"
#include "engine/utf8.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = YM_LOG_INFO;
static atomic_int log_plain = 0;

void ym_log_set_level(ym_log_level level)
{
    atomic_store(&log_level, (int)level);
}

void ym_log_set_plain(int plain)
{
    atomic_store(&log_plain, plain != 0);
}

static const char *level_name(ym_log_level level)
{
    switch (level) {
    case YM_LOG_DEBUG:
        return "debug";
    case YM_LOG_INFO:
        return "info";
    case YM_LOG_WARN:
        return "warn";
    case YM_LOG_ERROR:
        return "error";
    }
    return "info";
}

/* Lines go into the tree's growable buffer (engine/buf.h), started on the stack. A put that
 * finds no memory adds nothing: the line is cut short rather than lost. */
typedef ym_buf line_buf;

static void lb_put(line_buf *b, const char *s, size_t n)
{
    (void)ym_buf_put(b, s, n);
}

static void lb_puts(line_buf *b, const char *s)
{
    (void)ym_buf_puts(b, s);
}

/* Append s as the inside of a JSON string: quotes, backslashes and control characters
 * escaped, invalid UTF-8 replaced by U+FFFD so the line always parses. */
static void lb_put_json(line_buf *b, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str);
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            lb_put(b, esc, 2);
            i++;
        } else if (c < 0x20 || c == 0x7F) {
            char esc[8];
            const char *e = NULL;
            switch (c) {
            case '\n':
                e = "\\n";
                break;
            case '\r':
                e = "\\r";
                break;
            case '\t':
                e = "\\t";
                break;
            default:
                snprintf(esc, sizeof(esc), "\\u%04x", c);
                e = esc;
            }
            lb_puts(b, e);
            i++;
        } else {
            size_t len;
            if (ym_utf8_next(s + i, n - i, &len) != YM_UTF8_OK) {
                lb_puts(b, YM_UTF8_REPLACEMENT); /* one per maximal invalid subpart */
                i += len;
            } else {
                lb_put(b, (const char *)s + i, len);
                i += len;
            }
        }
    }
}

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report it */
        }
        p += w;
        n -= (size_t)w;
    }
}

void ym_log(ym_log_level level, const char *req, const char *fmt, ...)
{
    if ((int)level < atomic_load(&log_level))
        return;

    /* The message itself, formatted first (it may need the heap). */
    char msg_stack[1024];
    char *msg = msg_stack;
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(msg_stack, sizeof(msg_stack), fmt, ap);
    va_end(ap);
    if (len < 0) {
        msg_stack[0] = '\0';
    } else if ((size_t)len >= sizeof(msg_stack)) {
        char *heap = malloc((size_t)len + 1);
        if (heap != NULL) {
            va_start(ap, fmt);
            vsnprintf(heap, (size_t)len + 1, fmt, ap);
            va_end(ap);
            msg = heap;
        }
    }

    char line_stack[2048];
    line_buf b;
    ym_buf_init_with(&b, line_stack, sizeof(line_stack));
    if (atomic_load(&log_plain)) {
        lb_puts(&b, "yunmin: ");
        /* Plain lines are for people: drop a trailing newline so there is exactly one. */
        size_t mlen = strlen(msg);
        while (mlen > 0 && msg[mlen - 1] == '\n')
            mlen--;
        lb_put(&b, msg, mlen);
    } else {
        struct timespec ts;
        struct tm tm;
        char tbuf[96];
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        snprintf(tbuf, sizeof(tbuf), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (long)(ts.tv_nsec / 1000000L) % 1000);
        lb_puts(&b, "{\"ts\":\"");
        lb_puts(&b, tbuf);
        lb_puts(&b, "\",\"level\":\"");
        lb_puts(&b, level_name(level));
        lb_puts(&b, "\"");
        if (req != NULL) {
            lb_puts(&b, ",\"req\":\"");
            lb_put_json(&b, req);
            lb_puts(&b, "\"");
        }
        lb_puts(&b, ",\"msg\":\"");
        lb_put_json(&b, msg);
        lb_puts(&b, "\"}");
    }
    /* The newline always fits (the buffer keeps room for a NUL): a cut-short line still ends
     * the line. */
    b.p[b.len++] = '\n';
    write_all(b.p, b.len);
    ym_buf_deinit(&b);
    if (msg != msg_stack)
        free(msg);
}
