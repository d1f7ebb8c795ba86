/* tests/fuzz/fuzz_tokenizer_json.c - arbitrary bytes as tokenizer.json.
 *
 * Must never crash or leak; a rejected file says why; an accepted tokenizer encodes a few probe
 * texts (and the head of the input itself) to ids that all have bytes, and decodes them. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer.h"

static void probe(const ym_tok_t *tok, const char *text, size_t len)
{
    ym_ids ids = {0};
    ym_err err = ym_tok_encode(tok, text, len, &ids);
    YM_ASSERT(err == YM_OK || err == YM_ENOMEM);
    for (size_t i = 0; i < ids.n; i++) {
        size_t n;
        YM_ASSERT(ids.v[i] >= 0 && ids.v[i] < ym_tok_n_vocab(tok));
        YM_ASSERT(ym_tok_token_bytes(tok, ids.v[i], &n) != NULL);
    }
    char *out = NULL;
    size_t out_len = 0;
    if (ym_tok_decode(tok, ids.v, ids.n, &out, &out_len) == YM_OK)
        YM_ASSERT(out != NULL && out[out_len] == '\0');
    free(out);
    ym_ids_deinit(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const texts[] = {
        "Hello world",  "  a  b\n\n\t c",      "ab<|endoftext|>cd",
        "\xff\xfe\xc3", "It's 33 caf\xc3\xa9", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    };
    ym_tok_t *tok = NULL;
    ym_diag diag = {{0}, {0}};
    ym_err err = ym_tok_parse((const char *)data, size, &tok, &diag);
    if (err != YM_OK) {
        YM_ASSERT(tok == NULL && (err == YM_ENOMEM || diag.msg[0] != '\0'));
        return 0;
    }
    YM_ASSERT(ym_tok_n_vocab(tok) >= 0);
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        probe(tok, texts[i], strlen(texts[i]));
    probe(tok, (const char *)data, size < 256 ? size : 256);
    int32_t eos = ym_tok_eos_id(tok);
    YM_ASSERT(eos == -1 || (eos >= 0 && eos < ym_tok_n_vocab(tok)));
    ym_tok_free(tok);
    return 0;
}
