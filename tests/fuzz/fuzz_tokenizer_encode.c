/* tests/fuzz/fuzz_tokenizer_encode.c - arbitrary bytes through the GPT-NeoX tokenizer.
 *
 * The tokenizer is loaded once. Every input must encode (invalid UTF-8 included) to ids in range
 * and decode to valid UTF-8; a valid UTF-8 input without "<|" (so no special token splits its
 * normalization) must decode back to its NFC form, the GPT-NeoX normalizer. */
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
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
    return 0;
}
