/* engine/utf8.h - the one UTF-8 decoder of the tree (RFC 3629; invalid input split as
 * Unicode §3.9 "maximal subparts", which is what Rust's String::from_utf8_lossy and so Hugging
 * Face tokenizers do).
 *
 * Pure functions, any thread. The tokenizer, the detokenizing text stream, the log writer and
 * the server's JSON strings all classify bytes here, so they cannot disagree on what is valid
 * or on how many U+FFFD a bad sequence becomes. */
#ifndef YM_ENGINE_UTF8_H
#define YM_ENGINE_UTF8_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/buf.h"

#define YM_UTF8_REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD, 3 bytes */

typedef enum {
    YM_UTF8_OK,    /* a whole valid sequence */
    YM_UTF8_BAD,   /* a maximal invalid subpart: replace it by one U+FFFD */
    YM_UTF8_SHORT, /* all remaining bytes are a valid but unfinished sequence */
} ym_utf8_status;

/* Classify the bytes at s[0..n) (n >= 1): *len gets the length of the sequence (OK), of the
 * invalid subpart (BAD), or n (SHORT). */
ym_utf8_status ym_utf8_next(const unsigned char *s, size_t n, size_t *len);
/* Whether s[0..n) is valid UTF-8 (fast on ASCII). */
bool ym_utf8_valid(const unsigned char *s, size_t n);
/* Append s[0..n) to out with each invalid subpart replaced by U+FFFD. Unless at_end, a valid
 * but unfinished sequence at the end is not converted: returns its length (0 when none); at
 * the end it becomes one U+FFFD too. *err gets YM_OK or YM_ENOMEM. */
size_t ym_utf8_lossy(ym_buf *out, const unsigned char *s, size_t n, bool at_end, ym_err *err);
/* The code point at s (valid UTF-8 only); *len gets its length. */
int32_t ym_utf8_decode(const unsigned char *s, size_t *len);
/* Code points in s[0..n): the bytes that are not continuation bytes (Python's len() of the
 * decoded text, for valid UTF-8). */
size_t ym_utf8_count(const unsigned char *s, size_t n);
/* Byte offset of code point number ci (from 0) of s[0..n), or n when it has ci or fewer. */
size_t ym_utf8_offset(const unsigned char *s, size_t n, size_t ci);
/* Start of the code point that ends just before s[i] (i > 0; valid UTF-8 only). */
size_t ym_utf8_prev(const unsigned char *s, size_t i);

#endif
