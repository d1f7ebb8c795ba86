/* engine/utf8.c - UTF-8 classification, validation and lossy conversion (engine/utf8.h).
 *
 * Owns: nothing (pure). Runs: any thread; hot in the tokenizer, so ASCII takes one branch.
 * Must not: read past n. */
#include "engine/utf8.h"

ym_utf8_status ym_utf8_next(const unsigned char *s, size_t n, size_t *len)
{
    unsigned c = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
        *len = 1;
        return YM_UTF8_OK;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        lo = c == 0xE0 ? 0xA0 : 0x80; /* no overlongs */
        hi = c == 0xED ? 0x9F : 0xBF; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        lo = c == 0xF0 ? 0x90 : 0x80; /* no overlongs */
        hi = c == 0xF4 ? 0x8F : 0xBF; /* nothing above U+10FFFF */
    } else {
        *len = 1;
        return YM_UTF8_BAD;
    }
    for (size_t i = 1; i < need; i++) {
        if (i >= n) {
            *len = i;
            return YM_UTF8_SHORT;
        }
        unsigned b = s[i];
        if (b < lo || b > hi) {
            *len = i;
            return YM_UTF8_BAD;
        }
        lo = 0x80, hi = 0xBF; /* only the second byte has a narrower range */
    }
    *len = need;
    return YM_UTF8_OK;
}

bool ym_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0, len;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        if (ym_utf8_next(s + i, n - i, &len) != YM_UTF8_OK)
            return false;
        i += len;
    }
    return true;
}

size_t ym_utf8_lossy(ym_buf *out, const unsigned char *s, size_t n, bool at_end, ym_err *err)
{
    size_t i = 0;
    *err = YM_OK;
    if (n == 0) { /* s may be NULL; out still ends up holding a string */
        *err = ym_buf_put(out, NULL, 0);
        return 0;
    }
    while (i < n) {
        /* Copy a run of ASCII and valid sequences in one go. */
        size_t start = i, len = 0;
        ym_utf8_status st = YM_UTF8_OK;
        while (i < n && (st = ym_utf8_next(s + i, n - i, &len)) == YM_UTF8_OK)
            i += len;
        if (i > start && (*err = ym_buf_put(out, s + start, i - start)) != YM_OK)
            return 0;
        if (i >= n)
            break;
        if (st == YM_UTF8_SHORT && !at_end)
            return n - i;
        if ((*err = ym_buf_put(out, YM_UTF8_REPLACEMENT, 3)) != YM_OK)
            return 0;
        i += len;
    }
    return 0;
}

int32_t ym_utf8_decode(const unsigned char *s, size_t *len)
{
    unsigned b = s[0];
    if (b < 0x80) {
        *len = 1;
        return (int32_t)b;
    }
    if (b < 0xE0) {
        *len = 2;
        return (int32_t)(((b & 0x1F) << 6) | (s[1] & 0x3F));
    }
    if (b < 0xF0) {
        *len = 3;
        return (int32_t)(((b & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F));
    }
    *len = 4;
    return (int32_t)(((b & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) |
                     (s[3] & 0x3F));
}

size_t ym_utf8_prev(const unsigned char *s, size_t i)
{
    do
        i--;
    while (i > 0 && (s[i] & 0xC0) == 0x80);
    return i;
}

size_t ym_utf8_count(const unsigned char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += (s[i] & 0xC0) != 0x80;
    return k;
}

size_t ym_utf8_offset(const unsigned char *s, size_t n, size_t ci)
{
    for (size_t i = 0; i < n; i++)
        if ((s[i] & 0xC0) != 0x80 && ci-- == 0)
            return i;
    return n;
}
