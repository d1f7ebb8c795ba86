/* tests/fuzz/fuzz_tokenizer_encode.c - arbitrary bytes through the GPT-NeoX tokenizer.
 *
 * The tokenizer is loaded once. Every input is encoded twice:
 *   1. as it is: any bytes, invalid UTF-8 included (most mutations of a valid seed are not
 *      valid UTF-8 any more);
 *   2. read as a list of code points and written out as valid UTF-8 (utf8_from_bytes below),
 *      so that every run also tries a valid string, across scripts, combining marks, Hangul,
 *      emoji, unusual white space and unassigned code points.
 * Each must encode to ids in range and decode to valid UTF-8; a valid UTF-8 text without "<|"
 * (so no special token splits its normalization) must decode back to its NFC form, the
 * GPT-NeoX normalizer. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "engine/tokenizer.h"

static ym_tok_t *tok;

static int valid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k <= 0)
            return 0;
        i += (size_t)k;
    }
    return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ym_diag diag = {{0}, {0}};
    if (ym_tok_load(YM_FIXTURE_DIR "/gpt-neox/tokenizer.json", &tok, &diag) != YM_OK) {
        fprintf(stderr, "fuzz_tokenizer_encode: %s\n", diag.msg);
        abort();
    }
    return 0;
}

/* Ranges the code points of mode 2 are drawn from: [first, last], ends included. */
static const struct {
    uint32_t first, last;
} ranges[] = {
    {0x0080, 0x07FF},   /* Latin-1 and extended Latin, Greek, Cyrillic, Hebrew, Arabic */
    {0x0300, 0x036F},   /* combining diacritical marks: what NFC composes */
    {0x0800, 0xD7FF},   /* the rest of the BMP below the surrogates: Indic, CJK, ... */
    {0xAC00, 0xD7A3},   /* Hangul syllables */
    {0x1100, 0x11FF},   /* Hangul jamo: NFC composes them into syllables */
    {0xE000, 0xFFFF},   /* private use, compatibility forms, specials (U+FFFD) */
    {0x1F300, 0x1FAFF}, /* emoji */
    {0x10000, 0x10FFFF}, /* all of the supplementary planes, mostly unassigned */
    {0x2000, 0x206F},   /* general punctuation: spaces, ZWJ, separators */
};
#define N_RANGES (sizeof(ranges) / sizeof(ranges[0]))

/* Mode 2: each input byte below 0x80 is that ASCII character; any other byte picks a range
 * (its low bits) and the next two bytes an offset in it. The result is valid UTF-8 whatever
 * the input; out needs 4 bytes per input byte. Returns the length written. */
static size_t utf8_from_bytes(const uint8_t *d, size_t n, uint8_t *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t c = d[i++];
        if (c >= 0x80) {
            uint32_t off = 0;
            for (int k = 0; k < 2 && i < n; k++)
                off = off << 8 | d[i++];
            uint32_t r = (c & 0x7F) % N_RANGES;
            c = ranges[r].first + off % (ranges[r].last - ranges[r].first + 1);
        }
        if (c >= 0xD800 && c <= 0xDFFF)
            c = 0xFFFD; /* surrogates are not characters */
        o += (size_t)utf8proc_encode_char((utf8proc_int32_t)c, out + o);
    }
    return o;
}

static void check(const uint8_t *data, size_t size)
{
    ym_ids ids = {0};
    YM_ASSERT(ym_tok_encode(tok, (const char *)data, size, &ids) == YM_OK);
    YM_ASSERT(size == 0 || ids.n > 0);
    for (size_t i = 0; i < ids.n; i++)
        YM_ASSERT(ids.v[i] >= 0 && ids.v[i] < ym_tok_n_vocab(tok));
    char *text;
    size_t len;
    YM_ASSERT(ym_tok_decode(tok, ids.v, ids.n, &text, &len) == YM_OK);
    YM_ASSERT(text[len] == '\0' && valid_utf8((const uint8_t *)text, len));
    if (valid_utf8(data, size) && (size < 2 || memmem(data, size, "<|", 2) == NULL)) {
        utf8proc_uint8_t *nfc = NULL;
        utf8proc_ssize_t m = size == 0 ? 0
                                       : utf8proc_map(data, (utf8proc_ssize_t)size, &nfc,
                                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        YM_ASSERT(m >= 0);
        YM_ASSERT((size_t)m == len && (m == 0 || memcmp(nfc, text, len) == 0));
        free(nfc);
    }
    free(text);
    ym_ids_deinit(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check(data, size);
    uint8_t *u = malloc(4 * size + 1);
    YM_ASSERT(u != NULL);
    size_t n = utf8_from_bytes(data, size, u);
    YM_ASSERT(valid_utf8(u, n));
    check(u, n);
    free(u);
    return 0;
}
