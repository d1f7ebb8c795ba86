/* engine/tokenizer_int.h - internals of engine/tokenizer.c shown to its tests only. */
#ifndef YM_ENGINE_TOKENIZER_INT_H
#define YM_ENGINE_TOKENIZER_INT_H

#include "engine/tokenizer.h"

/* The text after the tokenizer's normalizer steps (invalid UTF-8 replaced first, as encode
 * does), as a new malloc'd NUL-terminated string in *out (caller frees). Any thread. */
ym_err ym__tok_normalize(const ym_tok_t *tok, const char *text, size_t len, char **out,
                         size_t *out_len);
/* Whether the pre-tokenizer adds a prefix space (then decode(encode(x)) may gain spaces). */
int ym__tok_adds_prefix_space(const ym_tok_t *tok);

#endif
